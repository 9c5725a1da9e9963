//! The generated `/configs/config.yaml` (ADR 0048): the original platform's shape first — `name`,
//! `description` (the role), `version`, `tier`, `runtime`, `model`, `runtime_config` — then the
//! routing and prompt blocks, then what this platform's agents read (workspace id, platform URL,
//! heartbeat period, agent card). Pure; the prompts and routing are checked before anything is
//! written, since they come from templates and are hostile until checked.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::files::{FilesError, MAX_FILE_BYTES};
use crate::resources::Workspace;

/// `idle_interval_seconds` when a workspace has an idle prompt but no interval.
pub const DEFAULT_IDLE_INTERVAL_SECONDS: i64 = 600;
/// Most categories in `categoryRouting`, and most role names per category.
pub const MAX_ROUTES: usize = 256;
/// Longest category or role name in `categoryRouting`.
pub const MAX_ROUTE_NAME: usize = 253;

/// Settings the agent reads from config.yaml besides the workspace's own.
pub struct AgentSettings<'a> {
    pub platform_url: &'a str,
    pub heartbeat_seconds: u64,
}

/// A prompt, written as a literal block scalar when that reads back the same.
struct Prompt<'a> {
    text: &'a str,
    block: bool,
}

impl Serialize for Prompt<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.block {
            serde_saphyr::LitStr(self.text).serialize(s)
        } else {
            s.serialize_str(self.text)
        }
    }
}

#[derive(Serialize)]
struct RuntimeConfig {
    timeout: u64,
}

/// The document, in the order the original writes it.
#[derive(Serialize)]
struct Doc<'a> {
    name: &'a str,
    description: &'a str,
    version: &'static str,
    tier: i32,
    runtime: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime_config: Option<RuntimeConfig>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    category_routing: &'a BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_prompt: Option<Prompt<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_prompt: Option<Prompt<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_interval_seconds: Option<i64>,
    workspace_id: &'a str,
    platform_url: &'a str,
    agent_url: String,
    heartbeat_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent_tasks: Option<i32>,
    agent_card: serde_json::Value,
}

/// The model a runtime gets when the workspace names none: the original platform's defaults
/// (`sonnet` for claude-code, its default Anthropic model otherwise); the built-in echo agent
/// uses no model.
pub fn default_model(runtime: &str) -> Option<&'static str> {
    match runtime {
        "echo" | "external" => None,
        "claude-code" => Some("sonnet"),
        _ => Some("anthropic:claude-opus-4-7"),
    }
}

/// Whether the original writes `runtime_config: {timeout: 0}` for this runtime.
fn has_runtime_config(runtime: &str) -> bool {
    !matches!(runtime, "langgraph" | "deepagents")
}

fn non_empty(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|t| !t.trim().is_empty())
}

fn prompt(text: Option<&String>, block: bool) -> Option<Prompt<'_>> {
    non_empty(text).map(|text| Prompt { text, block })
}

/// Checks what the spec puts into config.yaml: prompts within the file size limit, an idle
/// interval of at least one second, routing names that are short, printable and not empty.
pub fn check(ws: &Workspace) -> Result<(), FilesError> {
    let spec = &ws.spec;
    for (field, text) in [
        ("initialPrompt", &spec.initial_prompt),
        ("idlePrompt", &spec.idle_prompt),
    ] {
        if text.as_ref().is_some_and(|t| t.len() > MAX_FILE_BYTES) {
            return Err(FilesError::TooLarge(field.into()));
        }
    }
    if spec.idle_interval_seconds.is_some_and(|s| s < 1) {
        return Err(FilesError::BadSetting(
            "idleIntervalSeconds must be at least 1".into(),
        ));
    }
    let routing = &spec.category_routing;
    if routing.len() > MAX_ROUTES || routing.values().any(|r| r.len() > MAX_ROUTES) {
        return Err(FilesError::BadSetting(format!(
            "categoryRouting holds more than {MAX_ROUTES} categories or roles per category"
        )));
    }
    let bad = |n: &String| {
        n.trim().is_empty() || n.len() > MAX_ROUTE_NAME || n.chars().any(char::is_control)
    };
    if routing.keys().any(bad) || routing.values().flatten().any(bad) {
        return Err(FilesError::BadSetting(format!(
            "categoryRouting names must be 1-{MAX_ROUTE_NAME} printable characters"
        )));
    }
    Ok(())
}

/// The generated config.yaml (call [`check`] first).
pub fn render(ws: &Workspace, uid: &str, agent: &AgentSettings<'_>) -> String {
    // Prompts as block scalars; should the emitter not round-trip some text that way (odd
    // indentation, trailing blanks), as quoted scalars, which always do.
    let text = doc_text(ws, uid, agent, true);
    // Only the prompts differ between the two forms: without them there is nothing to check
    // (a parse per pass was a measurable part of a reconcile).
    let prompts = [&ws.spec.initial_prompt, &ws.spec.idle_prompt];
    if prompts.iter().all(|p| non_empty(p.as_ref()).is_none()) || round_trips(ws, &text) {
        text
    } else {
        doc_text(ws, uid, agent, false)
    }
}

fn doc_text(ws: &Workspace, uid: &str, agent: &AgentSettings<'_>, block: bool) -> String {
    let spec = &ws.spec;
    let name = ws.metadata.name.as_deref().unwrap_or_default();
    let display = spec.display_name.as_deref().unwrap_or(name);
    let role = spec.role.as_deref().unwrap_or_default();
    let runtime = spec.runtime.as_deref().unwrap_or("echo");
    let id12: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    let idle_prompt = prompt(spec.idle_prompt.as_ref(), block);
    let card_description = if role.is_empty() {
        "Molecule echo agent".to_string()
    } else {
        format!("{role} (Molecule echo agent)")
    };
    let doc = Doc {
        name: display,
        description: role,
        version: "1.0.0",
        tier: spec.tier.unwrap_or(2),
        runtime,
        model: non_empty(spec.model.as_ref()).or(default_model(runtime)),
        runtime_config: has_runtime_config(runtime).then_some(RuntimeConfig { timeout: 0 }),
        category_routing: &spec.category_routing,
        initial_prompt: prompt(spec.initial_prompt.as_ref(), block),
        idle_interval_seconds: idle_prompt.as_ref().map(|_| {
            spec.idle_interval_seconds
                .unwrap_or(DEFAULT_IDLE_INTERVAL_SECONDS)
        }),
        idle_prompt,
        workspace_id: uid,
        platform_url: agent.platform_url,
        agent_url: format!("http://ws-{id12}:8000"),
        heartbeat_seconds: agent.heartbeat_seconds,
        max_concurrent_tasks: spec.max_concurrent_tasks,
        agent_card: serde_json::json!({
            "name": display,
            "description": card_description,
            "skills": [{"id": "echo", "name": "Echo"}]
        }),
    };
    crate::yaml::to_string(&doc).unwrap_or_default()
}

/// Whether `text` reads back with the spec's prompts and identity unchanged.
fn round_trips(ws: &Workspace, text: &str) -> bool {
    let Ok(v) = crate::yaml::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let same = |key: &str, want: Option<&String>| {
        v.get(key).and_then(serde_json::Value::as_str) == non_empty(want)
    };
    same("initial_prompt", ws.spec.initial_prompt.as_ref())
        && same("idle_prompt", ws.spec.idle_prompt.as_ref())
        && same("description", ws.spec.role.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::WorkspaceSpec;
    use serde_json::{Value, json};

    const UID: &str = "3f2a9c1e-7b4d-4a00-8000-000000000000";

    fn agent() -> AgentSettings<'static> {
        AgentSettings {
            platform_url: "http://172.18.0.1:8080",
            heartbeat_seconds: 5,
        }
    }

    fn parse(y: &str) -> Value {
        crate::yaml::from_str(y).expect("yaml")
    }

    #[test]
    fn the_original_shape_comes_first_then_routing_and_prompts() {
        let ws = Workspace::new(
            "alpha",
            WorkspaceSpec {
                display_name: Some("Alpha Lead".into()),
                role: Some("researcher".into()),
                runtime: Some("claude-code".into()),
                initial_prompt: Some("Read the brief.\nThen plan the week.\n".into()),
                idle_prompt: Some("anything new?".into()),
                category_routing: [("bugs".to_string(), vec!["qa".to_string()])].into(),
                ..Default::default()
            },
        );
        check(&ws).expect("valid");
        let y = render(&ws, UID, &agent());
        let keys: Vec<&str> = y
            .lines()
            .filter(|l| !l.starts_with(' ') && l.contains(':'))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert_eq!(
            &keys[..11],
            &[
                "name",
                "description",
                "version",
                "tier",
                "runtime",
                "model",
                "runtime_config",
                "category_routing",
                "initial_prompt",
                "idle_prompt",
                "idle_interval_seconds"
            ],
            "{y}"
        );
        assert!(y.contains("initial_prompt: |"), "a block scalar: {y}");
        let v = parse(&y);
        assert_eq!(v["name"], "Alpha Lead");
        assert_eq!(v["description"], "researcher");
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(v["tier"], 2, "the effective tier");
        assert_eq!(v["model"], "sonnet", "the runtime's default model");
        assert_eq!(v["runtime_config"], json!({"timeout": 0}));
        assert_eq!(v["category_routing"], json!({"bugs": ["qa"]}));
        assert_eq!(
            v["initial_prompt"],
            "Read the brief.\nThen plan the week.\n"
        );
        assert_eq!(v["idle_interval_seconds"], 600);
        // What this platform's agents read is still there.
        assert_eq!(v["workspace_id"], UID);
        assert_eq!(v["platform_url"], "http://172.18.0.1:8080");
        assert_eq!(v["agent_url"], "http://ws-3f2a9c1e7b4d:8000");
        assert_eq!(v["heartbeat_seconds"], 5);
    }

    #[test]
    fn langgraph_has_no_runtime_config_and_empty_prompts_are_left_out() {
        let ws = Workspace::new(
            "b",
            WorkspaceSpec {
                runtime: Some("langgraph".into()),
                model: Some("openai:gpt-x".into()),
                tier: Some(3),
                initial_prompt: Some("   ".into()),
                idle_interval_seconds: Some(30),
                ..Default::default()
            },
        );
        let v = parse(&render(&ws, UID, &agent()));
        assert!(v.get("runtime_config").is_none());
        assert_eq!(v["model"], "openai:gpt-x");
        assert_eq!(v["tier"], 3);
        assert_eq!(v["name"], "b");
        assert_eq!(v["description"], "");
        for k in ["initial_prompt", "idle_prompt", "idle_interval_seconds"] {
            assert!(v.get(k).is_none(), "{k}");
        }
    }

    #[test]
    fn hostile_prompts_cannot_add_keys() {
        for text in [
            "x\nworkspace_id: spoofed\n",
            "  leading indent\nplatform_url: http://evil\n",
            "trailing blanks   \n\n\n",
            "\"quoted\": 'x' # not a comment\n---\nsecond: doc\n",
            "tab\there\u{85}nel",
        ] {
            let ws = Workspace::new(
                "h",
                WorkspaceSpec {
                    initial_prompt: Some(text.into()),
                    role: Some("r: x\n  nested: y".into()),
                    ..Default::default()
                },
            );
            let v = parse(&render(&ws, UID, &agent()));
            assert_eq!(v["initial_prompt"], text, "{text:?}");
            assert_eq!(v["workspace_id"], UID);
            assert_eq!(v["platform_url"], "http://172.18.0.1:8080");
            assert_eq!(v["description"], "r: x\n  nested: y");
        }
    }

    #[test]
    fn bad_settings_are_refused_precisely() {
        let with = |spec: WorkspaceSpec| check(&Workspace::new("w", spec));
        assert_eq!(
            with(WorkspaceSpec {
                initial_prompt: Some("x".repeat(MAX_FILE_BYTES + 1)),
                ..Default::default()
            }),
            Err(FilesError::TooLarge("initialPrompt".into()))
        );
        assert!(matches!(
            with(WorkspaceSpec {
                idle_interval_seconds: Some(0),
                ..Default::default()
            }),
            Err(FilesError::BadSetting(m)) if m.contains("idleIntervalSeconds")
        ));
        for routing in [
            [("".to_string(), vec!["qa".to_string()])].into(),
            [("bugs".to_string(), vec!["q\na".to_string()])].into(),
        ] {
            assert!(matches!(
                with(WorkspaceSpec {
                    category_routing: routing,
                    ..Default::default()
                }),
                Err(FilesError::BadSetting(m)) if m.contains("categoryRouting")
            ));
        }
    }
}
