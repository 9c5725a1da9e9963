//! Environment assembly for a workspace, as pure functions over the spec and
//! the Secrets it references. Later layers win:
//!
//! 1. global secrets (the Secret `molecule-global-secrets` in the namespace),
//! 2. workspace secrets (the Secret `<workspace>-secrets`), then `spec.envFrom`, then `spec.env`,
//! 3. git identity (set only if absent),
//! 4. model env (`MODEL`: spec.model, else the MODEL secret, else MODEL_PROVIDER),
//! 5. `MOLECULE_AGENT_ROLE`,
//! 6. the env mutator chain (ordered, named; the first error fails the provision),
//! 7. the baseline (WORKSPACE_ID, PLATFORM_URL, WORKSPACE_CONFIG_PATH, TIER), which nothing overrides.

use std::collections::{BTreeMap, BTreeSet};

use crate::resources::WorkspaceSpec;
use crate::resources::names::{GLOBAL_SECRET, workspace_secret};

/// Names of the Secrets (in the workspace's namespace) whose content feeds a workspace's env:
/// the global one, its own, and every `envFrom` / `valueFrom` reference. A change to any of them
/// wakes the controller for that workspace (one restart per change that needs one, ADR 0006).
pub fn referenced_secrets(workspace: &str, spec: &WorkspaceSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::from([GLOBAL_SECRET.to_string(), workspace_secret(workspace)]);
    out.extend(spec.env_from.iter().map(|f| f.secret_ref.name.clone()));
    out.extend(
        spec.env
            .iter()
            .filter_map(|e| e.value_from.as_ref())
            .map(|v| v.secret_key_ref.name.clone()),
    );
    out
}

/// Secrets of the namespace, decoded: name → key → value.
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// Where the assembled env goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvProblem {
    /// Required names (spec.requiredEnv, the Runtime's requiredEnv) with no non-empty value.
    Missing(Vec<String>),
    /// A non-optional secret reference that does not resolve: (env name, secret, key).
    UnresolvedRef {
        env: String,
        secret: String,
        key: Option<String>,
    },
    /// A mutator failed; (mutator, message).
    Mutator(String, String),
    /// An env name that is not a valid identifier.
    BadName(String),
}

impl std::fmt::Display for EnvProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvProblem::Missing(names) => write!(f, "missing required env: {}", names.join(", ")),
            EnvProblem::UnresolvedRef {
                env,
                secret,
                key: Some(key),
            } => {
                write!(
                    f,
                    "env {env} refers to key {key:?} of Secret {secret:?}, which does not exist"
                )
            }
            EnvProblem::UnresolvedRef {
                env,
                secret,
                key: None,
            } => write!(
                f,
                "env {env} refers to Secret {secret:?}, which does not exist"
            ),
            EnvProblem::Mutator(m, msg) => write!(f, "env mutator {m} failed: {msg}"),
            EnvProblem::BadName(n) => write!(
                f,
                "invalid env name {n:?}: use letters, digits and underscores"
            ),
        }
    }
}

/// A mutator function: role and env in, env changed in place.
pub type MutatorFn =
    fn(role: Option<&str>, env: &mut BTreeMap<String, String>) -> Result<(), String>;

/// One named step of the env mutator chain.
pub struct Mutator {
    pub name: &'static str,
    pub apply: MutatorFn,
}

/// The chain, in order; `serve` logs it at boot.
pub fn mutators() -> Vec<Mutator> {
    vec![Mutator {
        name: "gh-identity",
        apply: gh_identity,
    }]
}

/// Adds MOLECULE_OWNER and MOLECULE_ATTRIBUTION_BADGE derived from the role (if absent).
fn gh_identity(role: Option<&str>, env: &mut BTreeMap<String, String>) -> Result<(), String> {
    let role = role.unwrap_or("agent");
    if role.chars().any(|c| c.is_control()) {
        return Err("the role contains control characters".into());
    }
    env.entry("MOLECULE_OWNER".into())
        .or_insert_with(|| format!("molecule-{}", slug(role)));
    env.entry("MOLECULE_ATTRIBUTION_BADGE".into())
        .or_insert_with(|| format!("🤖 {role} (Molecule)"));
    Ok(())
}

fn slug(s: &str) -> String {
    let s: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.trim_matches('-').to_string()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The inputs that are not in the spec.
pub struct EnvContext<'a> {
    pub workspace: &'a str,
    pub workspace_id: &'a str,
    pub platform_url: &'a str,
    pub tier: i32,
    /// requiredEnv of the workspace's Runtime.
    pub runtime_required: &'a [String],
}

/// Assembles the final env; every problem is reported (not just the first).
pub fn assemble(
    spec: &WorkspaceSpec,
    secrets: &Secrets,
    ctx: &EnvContext<'_>,
) -> Result<BTreeMap<String, String>, Vec<EnvProblem>> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = vec![];
    for layer in [GLOBAL_SECRET.to_string(), workspace_secret(ctx.workspace)] {
        if let Some(s) = secrets.get(&layer) {
            env.extend(
                s.iter()
                    .filter(|(k, _)| valid_name(k))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
    }
    for from in &spec.env_from {
        match secrets.get(&from.secret_ref.name) {
            Some(s) => {
                let prefix = from.prefix.clone().unwrap_or_default();
                for (k, v) in s {
                    env.insert(format!("{prefix}{k}"), v.clone());
                }
            }
            None if from.secret_ref.optional => {}
            None => problems.push(EnvProblem::UnresolvedRef {
                env: format!("envFrom {}", from.secret_ref.name),
                secret: from.secret_ref.name.clone(),
                key: None,
            }),
        }
    }
    for e in &spec.env {
        if !valid_name(&e.name) {
            problems.push(EnvProblem::BadName(e.name.clone()));
            continue;
        }
        if let Some(v) = &e.value {
            env.insert(e.name.clone(), v.clone());
        } else if let Some(src) = &e.value_from {
            let r = &src.secret_key_ref;
            match secrets.get(&r.name).and_then(|s| s.get(&r.key)) {
                Some(v) => {
                    env.insert(e.name.clone(), v.clone());
                }
                None if r.optional => {}
                None => problems.push(EnvProblem::UnresolvedRef {
                    env: e.name.clone(),
                    secret: r.name.clone(),
                    key: Some(r.key.clone()),
                }),
            }
        }
    }
    // Git identity, only if absent.
    let who = spec
        .display_name
        .clone()
        .unwrap_or_else(|| ctx.workspace.to_string());
    env.entry("GIT_AUTHOR_NAME".into())
        .or_insert_with(|| who.clone());
    env.entry("GIT_COMMITTER_NAME".into()).or_insert(who);
    let email = format!("{}@agents.molecule.local", slug(ctx.workspace));
    env.entry("GIT_AUTHOR_EMAIL".into())
        .or_insert_with(|| email.clone());
    env.entry("GIT_COMMITTER_EMAIL".into()).or_insert(email);
    // MODEL precedence: spec.model, else the MODEL secret, else MODEL_PROVIDER. A provider
    // slug never overwrites an explicit MODEL.
    if let Some(m) = spec.model.as_ref().filter(|m| !m.is_empty()) {
        env.insert("MODEL".into(), m.clone());
    } else if env.get("MODEL").is_none_or(|m| m.is_empty())
        && let Some(p) = env.get("MODEL_PROVIDER").filter(|p| !p.is_empty()).cloned()
    {
        env.insert("MODEL".into(), p);
    }
    if let Some(role) = spec.role.as_ref().filter(|r| !r.is_empty()) {
        env.insert("MOLECULE_AGENT_ROLE".into(), role.clone());
    }
    for m in mutators() {
        if let Err(msg) = (m.apply)(spec.role.as_deref(), &mut env) {
            problems.push(EnvProblem::Mutator(m.name.to_string(), msg));
            break;
        }
    }
    env.insert("WORKSPACE_ID".into(), ctx.workspace_id.to_string());
    env.insert("PLATFORM_URL".into(), ctx.platform_url.to_string());
    env.insert("WORKSPACE_CONFIG_PATH".into(), "/configs".into());
    env.insert("TIER".into(), ctx.tier.to_string());
    let required: BTreeSet<&String> = spec
        .required_env
        .iter()
        .chain(ctx.runtime_required.iter())
        .collect();
    let missing: Vec<String> = required
        .into_iter()
        .filter(|n| env.get(*n).is_none_or(|v| v.is_empty()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        problems.insert(0, EnvProblem::Missing(missing));
    }
    if problems.is_empty() {
        Ok(env)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{
        EnvFromSource, EnvVar, EnvVarSource, SecretKeySelector, SecretReference,
    };

    fn ctx<'a>(req: &'a [String]) -> EnvContext<'a> {
        EnvContext {
            workspace: "alpha",
            workspace_id: "uid-1",
            platform_url: "http://p:1",
            tier: 2,
            runtime_required: req,
        }
    }

    fn secrets(list: &[(&str, &[(&str, &str)])]) -> Secrets {
        list.iter()
            .map(|(n, kv)| {
                (
                    n.to_string(),
                    kv.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn layers_later_win_and_baseline_is_final() {
        let s = secrets(&[
            (
                GLOBAL_SECRET,
                &[
                    ("A", "global"),
                    ("B", "global"),
                    ("WORKSPACE_ID", "spoofed"),
                ],
            ),
            ("alpha-secrets", &[("B", "workspace"), ("C", "workspace")]),
            ("extra", &[("D", "from")]),
        ]);
        let spec = WorkspaceSpec {
            env_from: vec![EnvFromSource {
                secret_ref: SecretReference {
                    name: "extra".into(),
                    optional: false,
                },
                prefix: Some("X_".into()),
            }],
            env: vec![EnvVar {
                name: "C".into(),
                value: Some("spec".into()),
                value_from: None,
            }],
            role: Some("Research Lead".into()),
            ..Default::default()
        };
        let env = assemble(&spec, &s, &ctx(&[])).expect("env");
        assert_eq!(env["A"], "global");
        assert_eq!(env["B"], "workspace");
        assert_eq!(env["C"], "spec");
        assert_eq!(env["X_D"], "from");
        assert_eq!(env["WORKSPACE_ID"], "uid-1");
        assert_eq!(env["TIER"], "2");
        assert_eq!(env["WORKSPACE_CONFIG_PATH"], "/configs");
        assert_eq!(env["MOLECULE_AGENT_ROLE"], "Research Lead");
        assert_eq!(env["MOLECULE_OWNER"], "molecule-research-lead");
        assert_eq!(env["GIT_AUTHOR_NAME"], "alpha");
    }

    #[test]
    fn model_precedence_never_clobbers_model_with_provider() {
        let s = secrets(&[(
            GLOBAL_SECRET,
            &[("MODEL", "claude-x"), ("MODEL_PROVIDER", "anthropic")],
        )]);
        assert_eq!(
            assemble(&WorkspaceSpec::default(), &s, &ctx(&[])).expect("e")["MODEL"],
            "claude-x"
        );
        let spec = WorkspaceSpec {
            model: Some("gpt-y".into()),
            ..Default::default()
        };
        assert_eq!(assemble(&spec, &s, &ctx(&[])).expect("e")["MODEL"], "gpt-y");
        let s = secrets(&[(GLOBAL_SECRET, &[("MODEL_PROVIDER", "anthropic")])]);
        assert_eq!(
            assemble(&WorkspaceSpec::default(), &s, &ctx(&[])).expect("e")["MODEL"],
            "anthropic"
        );
    }

    #[test]
    fn required_env_reports_every_missing_name_and_refs() {
        let spec = WorkspaceSpec {
            required_env: vec!["OPENAI_API_KEY".into(), "EMPTY".into()],
            env: vec![
                EnvVar {
                    name: "EMPTY".into(),
                    value: Some(String::new()),
                    value_from: None,
                },
                EnvVar {
                    name: "TOKEN".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: SecretKeySelector {
                            name: "nope".into(),
                            key: "k".into(),
                            optional: false,
                        },
                    }),
                },
                EnvVar {
                    name: "OPT".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: SecretKeySelector {
                            name: "nope".into(),
                            key: "k".into(),
                            optional: true,
                        },
                    }),
                },
            ],
            ..Default::default()
        };
        let problems = assemble(
            &spec,
            &Secrets::new(),
            &ctx(&["ANTHROPIC_API_KEY".to_string()]),
        )
        .expect_err("missing");
        assert_eq!(
            problems[0],
            EnvProblem::Missing(vec![
                "ANTHROPIC_API_KEY".into(),
                "EMPTY".into(),
                "OPENAI_API_KEY".into()
            ])
        );
        assert!(
            problems
                .iter()
                .any(|p| matches!(p, EnvProblem::UnresolvedRef { env, .. } if env == "TOKEN"))
        );
        assert!(
            !problems
                .iter()
                .any(|p| matches!(p, EnvProblem::UnresolvedRef { env, .. } if env == "OPT"))
        );
        // Messages name the variables, never values.
        assert!(problems[0].to_string().contains("OPENAI_API_KEY"));
    }

    #[test]
    fn bad_env_names_are_reported() {
        let spec = WorkspaceSpec {
            env: vec![EnvVar {
                name: "1BAD-NAME".into(),
                value: Some("x".into()),
                value_from: None,
            }],
            ..Default::default()
        };
        assert!(
            assemble(&spec, &Secrets::new(), &ctx(&[]))
                .expect_err("bad")
                .contains(&EnvProblem::BadName("1BAD-NAME".into()))
        );
    }
}
