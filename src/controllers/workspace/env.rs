//! Environment assembly for a workspace, as pure functions over the spec and
//! the Secrets it references. Later layers win:
//!
//! 1. global secrets (the Secret `molecule-global-secrets` in the namespace),
//! 2. workspace secrets (the Secret `<workspace>-secrets`), then `spec.envFrom`, then `spec.env`,
//! 3. git identity (set only if absent),
//! 4. model env (`MODEL`: spec.model, else the MODEL secret, else MODEL_PROVIDER),
//! 5. `MOLECULE_AGENT_ROLE`,
//! 6. the env mutator chain (ordered, named; the first error fails the provision),
//! 7. the baseline of the original platform (ADR 0048): WORKSPACE_ID, WORKSPACE_CONFIG_PATH,
//!    PLATFORM_URL, MOLECULE_URL and TIER, which nothing overrides; PLUGINS_DIR and PYTHONPATH,
//!    which an explicit value (a Secret, `spec.env`) may replace.

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

/// What a mutator sees of the workspace besides its env.
pub struct MutatorInput<'a> {
    /// `spec.role`, if set.
    pub role: Option<&'a str>,
    /// The workspace's uid (`WORKSPACE_ID`).
    pub workspace_id: &'a str,
}

/// A mutator function: the workspace and its env in, env changed in place.
pub type MutatorFn =
    fn(input: &MutatorInput<'_>, env: &mut BTreeMap<String, String>) -> Result<(), String>;

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

/// The agent-identity mutator of the original platform (ADR 0048): a no-op for a workspace
/// without a role (nothing is invented, the agent's `gh` wrapper then passes through); with
/// one, the role in its canonical form, the workspace id for the audit trail and the
/// attribution badge. `MOLECULE_OWNER` (the human `@me` is rewritten to) is never derived: it
/// is whatever the workspace's Secrets or `spec.env` say, else absent.
fn gh_identity(input: &MutatorInput<'_>, env: &mut BTreeMap<String, String>) -> Result<(), String> {
    let Some(raw) = input.role else {
        return Ok(());
    };
    if raw.chars().any(|c| c.is_control()) {
        return Err("the role contains control characters".into());
    }
    let role = canonical_role(raw);
    if role.is_empty() {
        return Ok(());
    }
    let short: String = input.workspace_id.chars().take(8).collect();
    env.insert("MOLECULE_AGENT_ROLE".into(), role.clone());
    env.insert(
        "MOLECULE_WORKSPACE_ID".into(),
        input.workspace_id.to_string(),
    );
    env.insert(
        "MOLECULE_ATTRIBUTION_BADGE".into(),
        format!("🤖 [Agent: {role} · ws-{short}]"),
    );
    Ok(())
}

/// The role as the original's mutator writes it: trimmed, each `-`-separated part starting
/// with a capital (`pmm-lead` → `Pmm-Lead`; `ResearchLead` stays).
fn canonical_role(raw: &str) -> String {
    raw.trim()
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
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

/// Where the original platform's runtimes look for shared plugins and adapter modules.
pub const PLUGINS_DIR: &str = "/plugins";
pub const PYTHONPATH: &str = "/app";

/// The baseline every workspace container gets (ADR 0048): identity and platform addresses
/// win over anything else; the two search paths are defaults.
fn baseline(env: &mut BTreeMap<String, String>, ctx: &EnvContext<'_>) {
    env.insert("WORKSPACE_ID".into(), ctx.workspace_id.to_string());
    env.insert("WORKSPACE_CONFIG_PATH".into(), "/configs".into());
    env.insert("PLATFORM_URL".into(), ctx.platform_url.to_string());
    env.insert("MOLECULE_URL".into(), ctx.platform_url.to_string());
    env.insert("TIER".into(), ctx.tier.to_string());
    for (k, v) in [("PLUGINS_DIR", PLUGINS_DIR), ("PYTHONPATH", PYTHONPATH)] {
        if env.get(k).is_none_or(|old| old.is_empty()) {
            env.insert(k.into(), v.into());
        }
    }
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
    if let Some(role) = spec.role.as_ref().filter(|r| !r.trim().is_empty()) {
        env.insert("MOLECULE_AGENT_ROLE".into(), role.clone());
    }
    let input = MutatorInput {
        role: spec.role.as_deref().filter(|r| !r.trim().is_empty()),
        workspace_id: ctx.workspace_id,
    };
    for m in mutators() {
        if let Err(msg) = (m.apply)(&input, &mut env) {
            problems.push(EnvProblem::Mutator(m.name.to_string(), msg));
            break;
        }
    }
    baseline(&mut env, ctx);
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
        assert_eq!(env["GIT_AUTHOR_NAME"], "alpha");
    }

    #[test]
    fn the_baseline_of_the_original_is_always_there() {
        let s = secrets(&[(
            GLOBAL_SECRET,
            &[
                ("MOLECULE_URL", "http://evil"),
                ("TIER", "4"),
                ("PYTHONPATH", "/opt/mine"),
            ],
        )]);
        let env = assemble(&WorkspaceSpec::default(), &s, &ctx(&[])).expect("env");
        for (k, v) in [
            ("WORKSPACE_ID", "uid-1"),
            ("WORKSPACE_CONFIG_PATH", "/configs"),
            ("PLATFORM_URL", "http://p:1"),
            ("MOLECULE_URL", "http://p:1"),
            ("TIER", "2"),
            ("PLUGINS_DIR", "/plugins"),
            // An explicit search path is kept.
            ("PYTHONPATH", "/opt/mine"),
        ] {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
        let env = assemble(&WorkspaceSpec::default(), &Secrets::new(), &ctx(&[])).expect("env");
        assert_eq!(env["PYTHONPATH"], "/app");
    }

    #[test]
    fn gh_identity_is_a_no_op_without_a_role_and_never_invents_an_owner() {
        let identity = [
            "MOLECULE_AGENT_ROLE",
            "MOLECULE_OWNER",
            "MOLECULE_ATTRIBUTION_BADGE",
            "MOLECULE_WORKSPACE_ID",
        ];
        for role in [None, Some(""), Some("   ")] {
            let spec = WorkspaceSpec {
                role: role.map(str::to_string),
                ..Default::default()
            };
            let env = assemble(&spec, &Secrets::new(), &ctx(&[])).expect("env");
            for k in identity {
                assert!(!env.contains_key(k), "{k} set for role {role:?}: {env:?}");
            }
        }
        let spec = WorkspaceSpec {
            role: Some("  pmm-lead ".into()),
            ..Default::default()
        };
        let ctx = EnvContext {
            workspace_id: "3f2a9c1e-7b4d-4a00-8000-000000000000",
            ..ctx(&[])
        };
        let env = assemble(&spec, &Secrets::new(), &ctx).expect("env");
        assert_eq!(env["MOLECULE_AGENT_ROLE"], "Pmm-Lead");
        assert_eq!(
            env["MOLECULE_WORKSPACE_ID"],
            "3f2a9c1e-7b4d-4a00-8000-000000000000"
        );
        assert_eq!(
            env["MOLECULE_ATTRIBUTION_BADGE"],
            "🤖 [Agent: Pmm-Lead · ws-3f2a9c1e]"
        );
        assert!(!env.contains_key("MOLECULE_OWNER"), "no owner is invented");
        // An owner the user supplied is passed through.
        let s = secrets(&[(GLOBAL_SECRET, &[("MOLECULE_OWNER", "octocat")])]);
        assert_eq!(
            assemble(&spec, &s, &ctx).expect("env")["MOLECULE_OWNER"],
            "octocat"
        );
        assert_eq!(canonical_role("ResearchLead"), "ResearchLead");
        assert_eq!(canonical_role("multi-part-role"), "Multi-Part-Role");
        let bad = WorkspaceSpec {
            role: Some("lead\u{7}".into()),
            ..Default::default()
        };
        assert!(
            assemble(&bad, &Secrets::new(), &ctx)
                .expect_err("control chars")
                .iter()
                .any(|p| matches!(p, EnvProblem::Mutator(m, _) if m == "gh-identity"))
        );
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
