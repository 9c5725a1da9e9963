//! The pure decision of how a runtime gets its image (ADR 0030): built in, pulled
//! from a registry, or built locally from its template repository. No I/O; every input is
//! validated here, before anything reaches git, Docker or the network.

use crate::resources::{ImageSource, RuntimeSpec};

use super::reference::{self, ImageRef};

/// The built-in runtime whose image the operator builds from its own binary.
pub const BUILTIN_ECHO: &str = "echo";

/// Installation-wide inputs of the decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanSettings {
    /// `MOLECULE_IMAGE_REGISTRY`: registry mode for every runtime without its own source.
    pub registry: Option<String>,
    /// `MOLECULE_LOCAL_TEMPLATE_REPO_PREFIX`: the allowlisted template repository prefix.
    pub template_prefix: String,
}

/// How a runtime's image is obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The echo image, built from the operator's own binary (ADR 0033).
    Builtin,
    /// Pulled from a registry: `image.canonical()` is what Docker pulls and runs.
    Registry {
        image: ImageRef,
        /// A pinned digest replaced the tag.
        pinned: bool,
    },
    /// Built from a template repository (ADR 0031).
    LocalBuild {
        /// The repository URL (may carry credentials in its userinfo: display it with
        /// [`super::git::display_url`]).
        repo: String,
        git_ref: String,
        /// A digest pin in the spec that local-build mode skips (a local override skips pins).
        skipped_pin: bool,
    },
}

impl Plan {
    pub fn source(&self) -> ImageSource {
        match self {
            Plan::Builtin => ImageSource::Builtin,
            Plan::Registry { .. } => ImageSource::Registry,
            Plan::LocalBuild { .. } => ImageSource::LocalBuild,
        }
    }
}

/// Why a runtime's spec cannot be planned; permanent until the record (or the settings) change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidSpec(String),
}

impl PlanError {
    pub fn category(&self) -> &'static str {
        match self {
            PlanError::InvalidName(_) => "InvalidName",
            PlanError::InvalidSpec(_) => "InvalidSpec",
        }
    }
}

/// Decides how runtime `name` with `spec` gets its image.
///
/// Precedence: the built-in echo (unless the spec names another source) → `spec.localBuild` →
/// `spec.image` → `MOLECULE_IMAGE_REGISTRY` → local build from `<prefix><name>`. Local-build
/// mode never falls back to a registry.
pub fn plan(name: &str, spec: &RuntimeSpec, s: &PlanSettings) -> Result<Plan, PlanError> {
    if name == BUILTIN_ECHO && spec.image.is_none() && spec.local_build.is_none() {
        return Ok(Plan::Builtin);
    }
    reference::validate_runtime_name(name).map_err(PlanError::InvalidName)?;
    if let Some(t) = &spec.tag {
        reference::validate_tag(t).map_err(|e| PlanError::InvalidSpec(format!("spec.tag: {e}")))?;
    }
    if let Some(d) = &spec.digest {
        reference::validate_digest(d)
            .map_err(|e| PlanError::InvalidSpec(format!("spec.digest: {e}")))?;
    }
    let repository = match (&spec.local_build, &spec.image, &s.registry) {
        (None, Some(image), _) => image.clone(),
        (None, None, Some(registry)) => reference::registry_repository(registry, name),
        (local, _, _) => {
            let (repo, git_ref) = local
                .as_ref()
                .map(|lb| (lb.repo.clone(), lb.git_ref.clone()))
                .unwrap_or_default();
            let repo = repo.unwrap_or_else(|| format!("{}{name}", s.template_prefix));
            reference::validate_template_repo(&repo, &s.template_prefix)
                .map_err(|e| PlanError::InvalidSpec(format!("spec.localBuild.repo: {e}")))?;
            let git_ref = git_ref.unwrap_or_else(|| "HEAD".into());
            reference::validate_git_ref(&git_ref)
                .map_err(|e| PlanError::InvalidSpec(format!("spec.localBuild.ref: {e}")))?;
            return Ok(Plan::LocalBuild {
                repo,
                git_ref,
                skipped_pin: spec.digest.is_some(),
            });
        }
    };
    let parsed = ImageRef::parse(&repository)
        .map_err(|e| PlanError::InvalidSpec(format!("image repository: {e}")))?;
    if parsed.tag.is_some() || parsed.digest.is_some() {
        return Err(PlanError::InvalidSpec(format!(
            "spec.image {repository:?} must be a repository without a tag or digest; use spec.tag or spec.digest"
        )));
    }
    let image = ImageRef {
        tag: Some(spec.tag.clone().unwrap_or_else(|| "latest".into())),
        digest: spec.digest.clone(),
        ..parsed
    };
    if image.is_local() {
        return Err(PlanError::InvalidSpec(format!(
            "spec.image may not name the local image namespace {}",
            reference::LOCAL_PREFIX
        )));
    }
    Ok(Plan::Registry {
        pinned: image.digest.is_some(),
        image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::LocalBuildSource;

    fn settings(registry: Option<&str>) -> PlanSettings {
        PlanSettings {
            registry: registry.map(str::to_string),
            template_prefix: "https://git.example/org/workspace-template-".into(),
        }
    }

    #[test]
    fn echo_is_builtin_unless_the_spec_names_a_source() {
        let s = settings(Some("ghcr.io/m"));
        assert_eq!(
            plan("echo", &RuntimeSpec::default(), &s).unwrap(),
            Plan::Builtin
        );
        let spec = RuntimeSpec {
            image: Some("ghcr.io/m/echo-fork".into()),
            ..Default::default()
        };
        assert!(matches!(
            plan("echo", &spec, &s).unwrap(),
            Plan::Registry { .. }
        ));
    }

    #[test]
    fn registry_mode_from_the_setting_or_the_spec() {
        let s = settings(Some("ghcr.io/m/"));
        match plan("hermes", &RuntimeSpec::default(), &s).unwrap() {
            Plan::Registry { image, pinned } => {
                assert_eq!(
                    image.canonical(),
                    "ghcr.io/m/workspace-template-hermes:latest"
                );
                assert!(!pinned);
                assert!(image.is_moving());
            }
            other => panic!("{other:?}"),
        }
        let spec = RuntimeSpec {
            image: Some("127.0.0.1:5000/custom".into()),
            tag: Some("v1.2.3".into()),
            ..Default::default()
        };
        match plan("hermes", &spec, &settings(None)).unwrap() {
            Plan::Registry { image, .. } => {
                assert_eq!(image.canonical(), "127.0.0.1:5000/custom:v1.2.3");
                assert!(!image.is_moving());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pinned_digest_wins_over_the_tag() {
        let d = format!("sha256:{}", "e".repeat(64));
        let spec = RuntimeSpec {
            tag: Some("latest".into()),
            digest: Some(d.clone()),
            ..Default::default()
        };
        match plan("hermes", &spec, &settings(Some("ghcr.io/m"))).unwrap() {
            Plan::Registry { image, pinned } => {
                assert!(pinned);
                assert_eq!(
                    image.canonical(),
                    format!("ghcr.io/m/workspace-template-hermes@{d}")
                );
                assert!(!image.is_moving());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_build_without_a_registry_and_for_explicit_sources() {
        let s = settings(None);
        assert_eq!(
            plan("hermes", &RuntimeSpec::default(), &s).unwrap(),
            Plan::LocalBuild {
                repo: "https://git.example/org/workspace-template-hermes".into(),
                git_ref: "HEAD".into(),
                skipped_pin: false,
            }
        );
        // An explicit local build wins over the registry, and skips a pin.
        let spec = RuntimeSpec {
            local_build: Some(LocalBuildSource {
                repo: Some("https://git.example/org/workspace-template-hermes-fork".into()),
                git_ref: Some("release/1".into()),
            }),
            digest: Some(format!("sha256:{}", "1".repeat(64))),
            ..Default::default()
        };
        assert_eq!(
            plan("hermes", &spec, &settings(Some("ghcr.io/m"))).unwrap(),
            Plan::LocalBuild {
                repo: "https://git.example/org/workspace-template-hermes-fork".into(),
                git_ref: "release/1".into(),
                skipped_pin: true,
            }
        );
    }

    #[test]
    fn bad_input_is_refused_with_a_category() {
        let s = settings(None);
        let e = plan("evil.name", &RuntimeSpec::default(), &s).unwrap_err();
        assert_eq!(e.category(), "InvalidName");
        let cases = [
            RuntimeSpec {
                local_build: Some(LocalBuildSource {
                    repo: None,
                    git_ref: Some("main..x".into()),
                }),
                ..Default::default()
            },
            RuntimeSpec {
                local_build: Some(LocalBuildSource {
                    repo: Some("https://evil.example/x".into()),
                    git_ref: None,
                }),
                ..Default::default()
            },
            RuntimeSpec {
                tag: Some("bad tag".into()),
                ..Default::default()
            },
            RuntimeSpec {
                digest: Some("md5:abc".into()),
                ..Default::default()
            },
            RuntimeSpec {
                image: Some("ghcr.io/m/x:v1".into()),
                ..Default::default()
            },
            RuntimeSpec {
                image: Some("molecule-local/echo".into()),
                ..Default::default()
            },
        ];
        for spec in cases {
            let e = plan("hermes", &spec, &s).unwrap_err();
            assert_eq!(e.category(), "InvalidSpec", "{spec:?}: {e}");
        }
        let e = plan(
            "hermes",
            &RuntimeSpec {
                local_build: Some(LocalBuildSource {
                    repo: None,
                    git_ref: Some("main..x".into()),
                }),
                ..Default::default()
            },
            &s,
        )
        .unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
    }
}
