//! Runtime → image resolution (ADR 0030): which image a workspace of a runtime starts
//! from, and getting it onto the Docker engine.
//!
//! - `plan`: the pure decision — built in (`echo`), registry mode, or local build.
//! - `reference`: image references, the moving-tag classifier, the allowlists.
//! - `registry`: a Docker Registry v2 client (token endpoint + manifest HEAD digests).
//! - `git`: the template repository's HEAD (one capped `ls-remote`), shallow fetch, archive.
//! - `echo`: the built-in echo image, `FROM scratch` with the operator's own binary.
//! - `refresh`: pull/rebuild and roll a runtime's workspaces one at a time; the auto-refresh
//!   bookkeeping (first observation seeds, a failure rolls the seen digest back).
//!
//! [`Images`] is the one service both the Runtime and the Workspace controllers (and the refresh
//! route of the shim) use, so a workspace start and `kubectl get runtimes` agree.

mod build;
pub mod echo;
pub mod git;
pub mod plan;
pub mod progress;
mod pull;
pub mod reference;
pub mod refresh;
pub mod registry;

pub use echo::{
    BINARY_PATH, ECHO_ENTRYPOINT, ECHO_REPOSITORY, LABEL_MANAGED_IMAGE, content_tag,
    ensure_echo_image, ensure_image_for,
};
pub use pull::credentials_from_secret;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, ListImagesOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;

use crate::backends::BackendError;
use crate::backends::docker::map_error;
use crate::resources::{ImageSource, Runtime, RuntimeSpec};
use crate::telemetry::Metrics;
use git::{GitError, Masker};
use plan::{Plan, PlanError, PlanSettings};
use pull::status_of;
use reference::ImageRef;
use registry::{Credentials, RegistryClient, RegistryError};

/// The allowlisted template repository prefix (forks override it).
pub const DEFAULT_TEMPLATE_PREFIX: &str =
    "https://git.moleculesai.app/molecule-ai/molecule-ai-workspace-template-";
/// Largest accepted build context (the template's tree as a tar).
pub const CONTEXT_CAP: usize = 512 * 1024 * 1024;

/// Installation-wide image settings.
#[derive(Clone)]
pub struct ImageSettings {
    /// `MOLECULE_IMAGE_REGISTRY`.
    pub registry: Option<String>,
    /// `MOLECULE_IMAGE_PLATFORM` (ADR 0030), for pulls, template builds and container creates.
    pub platform: Option<String>,
    /// `MOLECULE_LOCAL_TEMPLATE_REPO_PREFIX`.
    pub template_prefix: String,
    /// `MOLECULE_GITEA_TOKEN`: sent to the template host as a header, masked everywhere.
    pub template_token: Option<String>,
    /// `MOLECULE_LOCAL_BUILD_CACHE`: where template clones live.
    pub build_cache: PathBuf,
    /// The binary packed into the echo image.
    pub agent_binary: PathBuf,
    /// Bound of every lookup (registry HEAD with its token call, `git ls-remote`).
    pub lookup_timeout: Duration,
    /// Bound of a clone + build, and of a pull.
    pub build_timeout: Duration,
    /// How long a rolled workspace may take to come back Online.
    pub roll_timeout: Duration,
    /// Installation id (temporary build tags carry it).
    pub instance: String,
    /// No engine work: a start takes its image as given (the simulated backend, which creates
    /// no container, so nothing is pulled or built for it).
    pub simulated: bool,
    /// Token realm hosts trusted with pull credentials besides each registry's own host
    /// (`MOLECULE_REGISTRY_REALM_HOSTS`, ADR 0040).
    pub realm_hosts: Vec<String>,
}

impl std::fmt::Debug for ImageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSettings")
            .field("registry", &self.registry)
            .field("platform", &self.platform)
            .field("template_prefix", &git::display_url(&self.template_prefix))
            .field(
                "template_token",
                &self.template_token.as_ref().map(|_| "***"),
            )
            .field("build_cache", &self.build_cache)
            .finish_non_exhaustive()
    }
}

impl ImageSettings {
    /// Defaults for everything but the binary and the instance.
    pub fn new(agent_binary: PathBuf, instance: String) -> ImageSettings {
        ImageSettings {
            registry: None,
            platform: None,
            template_prefix: DEFAULT_TEMPLATE_PREFIX.into(),
            template_token: None,
            build_cache: default_build_cache(),
            agent_binary,
            lookup_timeout: Duration::from_secs(10),
            build_timeout: Duration::from_secs(1200),
            roll_timeout: Duration::from_secs(900),
            instance,
            simulated: false,
            realm_hosts: Vec::new(),
        }
    }

    pub fn plan_settings(&self) -> PlanSettings {
        PlanSettings {
            registry: self.registry.clone(),
            template_prefix: self.template_prefix.clone(),
        }
    }
}

/// `$XDG_CACHE_HOME/molecule/workspace-template-build` or `~/.cache/molecule/...`.
pub fn default_build_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("molecule").join("workspace-template-build")
}

/// Errors of image resolution; `category` is the condition reason, Event reason and metric label.
/// Messages never carry a token (they pass through the template [`Masker`]).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "runtime {runtime} is not mirrored at {repo}: mirror the template repository there, point MOLECULE_LOCAL_TEMPLATE_REPO_PREFIX (or spec.localBuild.repo) at a fork that has it, or configure a registry (MOLECULE_IMAGE_REGISTRY or spec.image)"
    )]
    NotMirrored { runtime: String, repo: String },
    #[error("local build of runtime {runtime}: {source}")]
    Git { runtime: String, source: GitError },
    #[error("runtime {runtime}: {source}")]
    Registry {
        runtime: String,
        source: RegistryError,
    },
    #[error("building {image} failed: {detail}")]
    BuildFailed { image: String, detail: String },
    #[error("pulling {image} failed: {detail}")]
    PullFailed {
        image: String,
        detail: String,
        transient: bool,
    },
    #[error("pull secret {secret}: {detail}")]
    PullSecret { secret: String, detail: String },
    #[error("image {0} is not present on the engine")]
    Missing(String),
    #[error("rolling runtime {runtime}: {detail}")]
    Roll { runtime: String, detail: String },
    #[error(transparent)]
    Engine(#[from] BackendError),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl ImageError {
    pub fn category(&self) -> &'static str {
        match self {
            ImageError::Plan(e) => e.category(),
            ImageError::NotMirrored { .. } => "NotMirrored",
            ImageError::Git { source, .. } => match source {
                GitError::NotFound { .. } => "NotMirrored",
                GitError::RefNotFound { .. } => "RefNotFound",
                GitError::AuthFailed { .. } => "TemplateAuthFailed",
                GitError::Unreachable { .. } | GitError::Timeout { .. } => "TemplateUnreachable",
                GitError::TooLarge { .. } => "ResponseTooLarge",
                GitError::Failed { .. } => "TemplateLookupFailed",
            },
            ImageError::Registry { source, .. } => match source {
                RegistryError::Timeout { .. } | RegistryError::Unreachable { .. } => {
                    "RegistryUnreachable"
                }
                RegistryError::AuthFailed { .. } => "RegistryAuthFailed",
                RegistryError::ManifestUnknown { .. } => "ManifestUnknown",
                RegistryError::TooLarge { .. } => "ResponseTooLarge",
                _ => "RegistryError",
            },
            ImageError::BuildFailed { .. } => "BuildFailed",
            ImageError::PullFailed { .. } => "PullFailed",
            ImageError::PullSecret { .. } => "PullSecretInvalid",
            ImageError::Missing(_) => "ImageMissing",
            ImageError::Roll { .. } => "RollFailed",
            ImageError::Engine(e) => e.category(),
            ImageError::Kube(_) => "ApiError",
        }
    }

    /// Whether a retry soon may help; permanent errors wait for a change of the record.
    pub fn is_transient(&self) -> bool {
        match self {
            ImageError::Git { source, .. } => source.is_transient(),
            ImageError::Registry { source, .. } => source.is_transient(),
            ImageError::PullFailed { transient, .. } => *transient,
            ImageError::Engine(e) => e.is_transient(),
            ImageError::Kube(_) => true,
            _ => false,
        }
    }
}

/// What a runtime resolves to right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The reference workspaces start from.
    pub image: String,
    /// Registry mode: the manifest digest (probe) or the pulled repo digest (ensure); otherwise
    /// the local image id.
    pub digest: Option<String>,
    pub source: ImageSource,
    /// Local-build mode: the template commit.
    pub built_from_sha: Option<String>,
    /// Whether the image is on the engine.
    pub available: bool,
    /// What changes when the source moves: the registry digest, the template commit, the echo
    /// tag. Auto-refresh compares these.
    pub fingerprint: String,
    /// A caveat worth an Event (a failed re-pull with a cached image, a skipped pin, ...).
    pub note: Option<String>,
}

/// Why an image is being made available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A workspace start: moving tags are re-pulled, pinned ones only pulled when missing
    /// (ADR 0030).
    Start,
    /// A refresh: always pull (or rebuild when the template moved).
    Refresh,
}

/// The image service shared by the controllers and the shim.
pub struct Images {
    pub docker: Docker,
    pub client: Client,
    pub settings: ImageSettings,
    pub metrics: Arc<Metrics>,
    registry: RegistryClient,
    masker: Masker,
    echo: tokio::sync::OnceCell<String>,
    /// One build/pull at a time per runtime (a second start waits and then hits the cache).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One roll at a time per runtime.
    roll_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tells the Runtime controller that a runtime's resolution changed outside its reconcile.
    notify: Mutex<Option<tokio::sync::mpsc::Sender<String>>>,
}

fn lock_of(
    map: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    name: &str,
) -> Arc<tokio::sync::Mutex<()>> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone()
}

impl Images {
    pub fn new(
        docker: Docker,
        client: Client,
        settings: ImageSettings,
        metrics: Arc<Metrics>,
    ) -> Images {
        let masker = Masker::new(
            settings.template_token.as_deref(),
            &[settings.template_prefix.as_str()],
        );
        Images {
            registry: RegistryClient::new(settings.lookup_timeout)
                .with_realm_hosts(settings.realm_hosts.clone()),
            docker,
            client,
            settings,
            metrics,
            masker,
            echo: tokio::sync::OnceCell::new(),
            locks: Mutex::default(),
            roll_locks: Mutex::default(),
            notify: Mutex::default(),
        }
    }

    /// Where resolution changes are reported (the Runtime controller's trigger).
    pub fn set_notify(&self, tx: tokio::sync::mpsc::Sender<String>) {
        *self.notify.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    fn notify(&self, runtime: &str) {
        if let Some(tx) = self
            .notify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.try_send(runtime.to_string());
        }
    }

    /// Masks the template token and URL credentials in `text`.
    pub fn mask(&self, text: &str) -> String {
        self.masker.mask(text)
    }

    pub(crate) fn roll_lock(&self, runtime: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock_of(&self.roll_locks, runtime)
    }

    /// The plan of a runtime record.
    pub fn plan(&self, name: &str, spec: &RuntimeSpec) -> Result<Plan, ImageError> {
        Ok(plan::plan(name, spec, &self.settings.plan_settings())?)
    }

    /// The built-in echo image, built from our own binary on first use (ADR 0033).
    pub async fn echo_image(&self) -> Result<String, ImageError> {
        let tag = self
            .echo
            .get_or_try_init(|| async {
                if self.settings.simulated {
                    // No engine behind the simulated backend: the tag names the content and
                    // nothing is built (a build would be engine work inside a measurement).
                    let binary = self.settings.agent_binary.clone();
                    let memo = self.settings.build_cache.clone();
                    return tokio::task::spawn_blocking(move || {
                        echo::content_tag_memo(&binary, &memo)
                    })
                    .await
                    .map_err(|e| BackendError::Permanent(format!("resolving image contents: {e}")))?;
                }
                let t = Instant::now();
                let tag = echo::ensure_echo_image_memo(
                    &self.docker,
                    &self.settings.agent_binary,
                    &self.settings.build_cache,
                )
                .await?;
                tracing::info!(image = %tag, ms = t.elapsed().as_millis() as u64, "echo image ready");
                // Images of earlier binaries would otherwise pile up with every upgrade.
                let (docker, keep) = (self.docker.clone(), tag.clone());
                tokio::spawn(async move {
                    let removed = echo::prune_superseded(&docker, &keep).await;
                    if !removed.is_empty() {
                        tracing::info!(images = ?removed, "removed superseded echo images");
                    }
                });
                Ok::<_, BackendError>(tag)
            })
            .await?;
        Ok(tag.clone())
    }

    /// Looks a runtime up without building or pulling: the echo tag, the registry digest (one
    /// manifest HEAD), or the template HEAD (one `ls-remote`) and whether its image is cached.
    pub async fn probe(&self, name: &str, spec: &RuntimeSpec) -> Result<Resolved, ImageError> {
        let started = Instant::now();
        let plan = self.plan(name, spec)?;
        let result = match &plan {
            Plan::Builtin => self.builtin().await,
            Plan::Registry { image, pinned } => {
                let digest = if *pinned {
                    image.digest.clone().unwrap_or_default()
                } else {
                    let creds = self.credentials(spec, image).await?;
                    self.registry
                        .manifest_digest(image, creds.as_ref())
                        .await
                        .map_err(|source| ImageError::Registry {
                            runtime: name.to_string(),
                            source,
                        })?
                };
                let available = self.local_id(&image.canonical()).await?.is_some();
                Ok(Resolved {
                    image: image.canonical(),
                    digest: Some(digest.clone()),
                    source: ImageSource::Registry,
                    built_from_sha: None,
                    available,
                    fingerprint: digest,
                    note: None,
                })
            }
            Plan::LocalBuild {
                repo,
                git_ref,
                skipped_pin,
            } => {
                let sha = self.head(name, repo, git_ref).await?;
                let tag = reference::local_tag(name, &sha);
                let id = self.local_id(&tag).await?;
                Ok(Resolved {
                    image: tag,
                    available: id.is_some(),
                    digest: id,
                    source: ImageSource::LocalBuild,
                    built_from_sha: Some(sha.clone()),
                    fingerprint: sha,
                    note: skipped_pin.then(|| {
                        "spec.digest is ignored in local-build mode (a local build skips pins)"
                            .to_string()
                    }),
                })
            }
        };
        self.metrics.observe(
            "molecule_image_probe_seconds",
            &[("source", plan.source().as_str())],
            started.elapsed().as_secs_f64(),
        );
        result
    }

    /// Makes the runtime's image available on the engine for `purpose` and returns it with
    /// its running digest: the echo build, a pull (moving tags re-pulled), or a cache hit /
    /// clone + build (ADR 0031). Falls back to the last built image only when the template host
    /// is unreachable — never to a registry.
    pub async fn ensure(
        &self,
        name: &str,
        record: Option<&Runtime>,
        purpose: Purpose,
    ) -> Result<Resolved, ImageError> {
        let default_spec = RuntimeSpec::default();
        let spec = record.map_or(&default_spec, |r| &r.spec);
        let started = Instant::now();
        let plan = self.plan(name, spec)?;
        let lock = lock_of(&self.locks, name);
        let _guard = lock.lock().await;
        let result = match &plan {
            Plan::Builtin => self.builtin().await,
            Plan::Registry { image, .. } => {
                let creds = self.credentials(spec, image).await?;
                self.ensure_registry(name, image, creds.as_ref(), purpose)
                    .await
            }
            Plan::LocalBuild { repo, git_ref, .. } => {
                let previous = record
                    .and_then(|r| r.status.as_ref())
                    .and_then(|s| s.resolved_image.clone());
                self.ensure_local(name, repo, git_ref, previous.as_deref())
                    .await
            }
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.observe(
            "molecule_image_resolve_seconds",
            &[("source", plan.source().as_str()), ("result", outcome)],
            started.elapsed().as_secs_f64(),
        );
        if let Ok(r) = &result {
            let recorded = record.and_then(|r| r.status.as_ref());
            if recorded.and_then(|s| s.resolved_image.as_deref()) != Some(r.image.as_str())
                || recorded.and_then(|s| s.digest.as_deref()) != r.digest.as_deref()
            {
                self.notify(name);
            }
        }
        result
    }

    /// A workspace's explicit `spec.image`: pulled like a runtime image, moving tags re-pulled
    /// (no credentials), local images as is.
    pub async fn ensure_explicit(&self, image: &str) -> Result<Resolved, ImageError> {
        let parsed = ImageRef::parse(image)
            .map_err(|e| ImageError::Plan(PlanError::InvalidSpec(format!("spec.image: {e}"))))?;
        if parsed.is_local() {
            let id = self
                .local_id(image)
                .await?
                .ok_or_else(|| ImageError::Missing(image.to_string()))?;
            return Ok(Resolved {
                image: image.to_string(),
                digest: Some(id),
                source: ImageSource::LocalBuild,
                built_from_sha: None,
                available: true,
                fingerprint: image.to_string(),
                note: None,
            });
        }
        let lock = lock_of(&self.locks, &format!("image:{}", parsed.repository()));
        let _guard = lock.lock().await;
        let mut r = self
            .ensure_registry("(spec.image)", &parsed, None, Purpose::Start)
            .await?;
        // Keep the reference as the user wrote it.
        r.image = image.to_string();
        Ok(r)
    }

    async fn builtin(&self) -> Result<Resolved, ImageError> {
        let tag = self.echo_image().await?;
        if self.settings.simulated {
            return Ok(Resolved {
                image: tag.clone(),
                available: true,
                digest: None,
                source: ImageSource::Builtin,
                built_from_sha: None,
                fingerprint: tag,
                note: None,
            });
        }
        let mut id = self.local_id(&tag).await?;
        if id.is_none() {
            // Removed under us (another installation pruned it, or `docker rmi`): build again.
            echo::ensure_echo_image_memo(
                &self.docker,
                &self.settings.agent_binary,
                &self.settings.build_cache,
            )
            .await?;
            id = self.local_id(&tag).await?;
        }
        Ok(Resolved {
            image: tag.clone(),
            available: id.is_some(),
            digest: id,
            source: ImageSource::Builtin,
            built_from_sha: None,
            fingerprint: tag,
            note: None,
        })
    }

    /// The local image id of a reference, if present.
    pub async fn local_id(&self, reference: &str) -> Result<Option<String>, ImageError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_error("inspect image", e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::prune_cache;
    use super::pull::pull_failed;
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn pull_credentials_from_secrets() {
        let plain = secret(&[("username", "u"), ("password", "p")]);
        assert_eq!(
            credentials_from_secret(&plain, "ghcr.io").unwrap(),
            Credentials {
                username: "u".into(),
                password: "p".into()
            }
        );
        let cfg = secret(&[(
            ".dockerconfigjson",
            r#"{"auths":{"https://ghcr.io":{"auth":"dTI6cDI="},"127.0.0.1:5000":{"username":"a","password":"b"}}}"#,
        )]);
        assert_eq!(
            credentials_from_secret(&cfg, "ghcr.io").unwrap().username,
            "u2"
        );
        assert_eq!(
            credentials_from_secret(&cfg, "127.0.0.1:5000")
                .unwrap()
                .password,
            "b"
        );
        let e = credentials_from_secret(&cfg, "other.example").unwrap_err();
        assert!(e.contains("no entry for other.example"), "{e}");
        assert!(credentials_from_secret(&secret(&[("x", "y")]), "h").is_err());
        assert!(credentials_from_secret(&secret(&[(".dockerconfigjson", "nope")]), "h").is_err());
    }

    #[test]
    fn pull_errors_are_classified() {
        assert!(!pull_failed("x", "manifest unknown: manifest unknown").is_transient());
        assert!(!pull_failed("x", "unauthorized: authentication required").is_transient());
        assert!(pull_failed("x", "Get \"https://h/v2/\": dial tcp: i/o timeout").is_transient());
        assert_eq!(pull_failed("x", "y").category(), "PullFailed");
    }

    #[test]
    fn not_mirrored_is_actionable_and_settings_hide_the_token() {
        let e = ImageError::NotMirrored {
            runtime: "crewai".into(),
            repo: "https://git.example/org/workspace-template-crewai".into(),
        };
        let m = e.to_string();
        assert!(
            m.starts_with("runtime crewai is not mirrored at https://git.example/org/workspace-template-crewai"),
            "{m}"
        );
        assert!(m.contains("MOLECULE_LOCAL_TEMPLATE_REPO_PREFIX"));
        assert_eq!(e.category(), "NotMirrored");
        assert!(!e.is_transient());
        let mut s = ImageSettings::new("/bin/true".into(), "i".into());
        s.template_token = Some("tok-never-printed".into());
        s.template_prefix = "https://u:pw-never-printed@git.example/x-".into();
        let printed = format!("{s:?}");
        assert!(!printed.contains("never-printed"), "{printed}");
    }

    #[test]
    fn the_cache_keeps_only_the_current_clone() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["aaaaaaaaaaaa", "bbbbbbbbbbbb", ".tmp-cccccccccccc-x"] {
            std::fs::create_dir_all(tmp.path().join(d).join(".git")).unwrap();
        }
        prune_cache(tmp.path(), "bbbbbbbbbbbb");
        let left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec!["bbbbbbbbbbbb".to_string()]);
    }
}
