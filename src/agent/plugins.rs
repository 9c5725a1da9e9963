//! `GET /plugins`: the installed plugins, read from `plugins/` beside the config file on every
//! request. Only directories holding the `.complete` marker count, so a half-installed plugin is
//! never listed and a hot `SKILL.md` change shows without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::state::AgentState;

pub(super) async fn plugins(State(state): State<Arc<AgentState>>) -> Json<Value> {
    let dir = state.plugins_dir.clone();
    let list = tokio::task::spawn_blocking(move || installed_plugins(&dir))
        .await
        .unwrap_or_default();
    Json(json!({ "plugins": list }))
}

/// Longest skill text `GET /plugins` returns per skill.
const MAX_SKILL_TEXT: usize = 16 * 1024;

/// The complete plugins under `dir`: name, version, installed sha (the marker), skills with
/// their SKILL.md text, hook file names. Directories without `.complete` are skipped.
fn installed_plugins(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let list_dir = |p: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut out = vec![];
    for name in names {
        let root = dir.join(&name);
        let Ok(marker) = std::fs::read_to_string(root.join(".complete")) else {
            continue;
        };
        let meta: Value = std::fs::read(root.join("plugin.yaml"))
            .ok()
            .and_then(|b| crate::yaml::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let skills: Vec<Value> = list_dir(root.join("skills"))
            .into_iter()
            .filter_map(|s| {
                let text = std::fs::read(root.join("skills").join(&s).join("SKILL.md")).ok()?;
                let text =
                    String::from_utf8_lossy(&text[..text.len().min(MAX_SKILL_TEXT)]).into_owned();
                Some(json!({"name": s, "content": text}))
            })
            .collect();
        out.push(json!({
            "name": name,
            "version": meta.get("version").cloned().unwrap_or(Value::Null),
            "sha": marker.trim(),
            "skills": skills,
            "hooks": list_dir(root.join("hooks")),
        }));
    }
    out
}
