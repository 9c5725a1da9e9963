//! Workspace bundles (ADR 0055): the portable JSON of one workspace that `GET
//! /bundles/export/:id` writes and `POST /bundles/import` reads. The shape is the original
//! platform's `.bundle.json` (`schema`, `id`, `name`, `description`, `tier`, `model`,
//! `system_prompt`, `skills`, `tools`, `prompts`, `sub_workspaces`, `agent_card`, `author`,
//! `version`) with this platform's additions (`role`, `runtime`, `files`, `files_dir`,
//! `plugins`, `schedules`, `required_env`, the prompts and routing of config.yaml), so a bundle
//! the original exported imports here and the original's importer reads ours.
//!
//! Pure: [`export`] turns a record (and its PluginInstalls) into a bundle; [`plan`] checks a
//! bundle as hostile input and turns it into the Workspace specs to create, parents first.
//! Nothing here writes; the shim creates the records only once the whole bundle passed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resources::{
    ConfigFiles, PluginInstall, ScheduleSpec, UpdatePolicy, Workspace, WorkspaceSpec,
};

/// Largest accepted bundle (the request body of an import).
pub const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;
/// Largest single config file (the Workspace controller's limit).
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Largest total of one workspace's config files: they live in its record, which the API
/// server caps at 1.5 MiB.
pub const MAX_WORKSPACE_FILES_BYTES: usize = 1024 * 1024;
/// Largest spec of one imported workspace (files, prompts, schedules together), below the API
/// server's 1.5 MiB per record with room for metadata and status.
pub const MAX_SPEC_BYTES: usize = 1280 * 1024;
/// Most config files of one workspace.
pub const MAX_FILES: usize = 1000;
/// Most workspaces in one bundle (the workspace and its `sub_workspaces`).
pub const MAX_WORKSPACES: usize = 100;
/// Deepest nesting of `sub_workspaces`.
pub const MAX_DEPTH: usize = 10;
/// Most plugins, schedules or required env names of one workspace.
pub const MAX_ITEMS: usize = 100;
/// Files the Workspace controller generates; a bundle may not supply them.
pub const RESERVED_FILES: [&str; 2] = ["config.yaml", ".auth_token"];
const SYSTEM_PROMPT_FILE: &str = "system-prompt.md";
const MAX_NAME: usize = 255;
const MAX_ROLE: usize = 1000;
const MAX_MODEL: usize = 100;

/// One workspace as a bundle; unknown fields are ignored, as the original did.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Bundle {
    pub schema: String,
    /// The exported workspace's id (kept on the import as `molecule.ai/source-bundle-id`).
    pub id: String,
    pub name: String,
    /// The role (the original's field name).
    pub description: String,
    /// The role again, under this platform's name; wins over `description` when both are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// 1-4; 0 is unset (the default tier).
    pub tier: i64,
    /// Empty: the runtime of `prompts["config.yaml"]`, else the default runtime (echo).
    pub runtime: String,
    pub model: String,
    /// `/configs/system-prompt.md`.
    pub system_prompt: String,
    /// `/configs/skills/<id>/<path>`.
    pub skills: Vec<BundleSkill>,
    /// The original's built-in tool references; kept on export as empty, ignored on import.
    pub tools: Vec<Value>,
    /// The original keeps its `config.yaml` here; only `runtime` and `model` are read from it
    /// (this platform generates config.yaml itself).
    pub prompts: BTreeMap<String, String>,
    /// Further files of `/configs`: relative path → content.
    pub files: BTreeMap<String, String>,
    /// A directory under the template root (valid on the installation that exported it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_dir: Option<String>,
    pub plugins: Vec<BundlePlugin>,
    pub schedules: Vec<BundleSchedule>,
    /// Names of env the workspace needs; never values.
    pub required_env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_interval_seconds: Option<i64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub category_routing: BTreeMap<String, Vec<String>>,
    /// 1-1000 concurrent tasks the agent accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_tasks: Option<i64>,
    pub agent_card: Option<Value>,
    pub sub_workspaces: Vec<Bundle>,
    pub author: String,
    pub version: String,
}

/// A skill: its files land under `skills/<id>/`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct BundleSkill {
    pub id: String,
    pub name: String,
    pub description: String,
    pub files: BTreeMap<String, String>,
}

/// A plugin to install (a PluginInstall of the new workspace).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct BundlePlugin {
    /// The plugin's name (informational; the source decides it).
    pub name: String,
    /// `local://<name>` or an https git URL.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    /// `manual` (default) or `auto`.
    pub update_policy: String,
    pub allow_unpinned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_interval: Option<String>,
}

/// A cron schedule (the REST shape of the original's schedules).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct BundleSchedule {
    pub name: String,
    pub cron_expr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub prompt: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Why a bundle is refused; `at` names the workspace (`bundle`, `bundle.sub_workspaces[1]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("{at}: {why}")]
    Invalid { at: String, why: String },
    #[error("the bundle holds more than {MAX_WORKSPACES} workspaces")]
    TooManyWorkspaces,
    #[error("the bundle nests sub_workspaces deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// One workspace to create: its spec (without `parentRef`), the index of its parent in the
/// plan, its plugins and the agent card to show until its agent registers one.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Where in the bundle it is (`bundle`, `bundle.sub_workspaces[0]`), for messages.
    pub at: String,
    pub parent: Option<usize>,
    pub spec: WorkspaceSpec,
    pub plugins: Vec<BundlePlugin>,
    pub agent_card: Option<Value>,
    pub source_id: Option<String>,
}

/// The bundle of one workspace. `installs` are its PluginInstalls, `card` its agent card,
/// `dir_files` the files of its `filesDir` when they could be read (then they travel inline,
/// under the inline files of the spec, and `files_dir` is left out); secrets, env values and
/// tokens are never read.
pub fn export(
    ws: &Workspace,
    installs: &[PluginInstall],
    card: Option<Value>,
    dir_files: Option<BTreeMap<String, String>>,
) -> Bundle {
    let spec = &ws.spec;
    let name = spec
        .display_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| ws.metadata.name.clone().unwrap_or_default());
    let role = spec.role.clone().unwrap_or_default();
    let runtime = spec.runtime.clone().unwrap_or_else(|| "echo".into());
    let tier = spec.tier.unwrap_or(2);
    let inlined_dir = dir_files.is_some();
    let mut files = dir_files.unwrap_or_default();
    files.extend(
        spec.files
            .as_ref()
            .map(|f| f.inline.clone())
            .unwrap_or_default(),
    );
    let system_prompt = files.remove(SYSTEM_PROMPT_FILE).unwrap_or_default();
    let mut skills: BTreeMap<String, BundleSkill> = BTreeMap::new();
    for path in files.keys().cloned().collect::<Vec<_>>() {
        let Some((id, rel)) = path.strip_prefix("skills/").and_then(|r| r.split_once('/')) else {
            continue;
        };
        let (id, rel) = (id.to_string(), rel.to_string());
        let content = files.remove(&path).unwrap_or_default();
        let skill = skills.entry(id.clone()).or_insert_with(|| BundleSkill {
            id: id.clone(),
            name: id.clone(),
            ..Default::default()
        });
        if rel == "SKILL.md" {
            skill.description = skill_description(&content);
        }
        skill.files.insert(rel, content);
    }
    // The original's importer reads the runtime from `prompts["config.yaml"]`.
    let config = serde_json::json!({
        "name": name, "description": role, "version": "1.0.0", "tier": tier,
        "runtime": runtime, "model": spec.model,
    });
    let plugins = installs
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| BundlePlugin {
            name: p
                .status
                .as_ref()
                .and_then(|s| s.plugin_name.clone())
                .unwrap_or_default(),
            source: p.spec.source.clone(),
            track: p.spec.track.clone(),
            update_policy: match p.spec.update_policy {
                UpdatePolicy::Auto => "auto".into(),
                UpdatePolicy::Manual => "manual".into(),
            },
            allow_unpinned: p.spec.allow_unpinned,
            check_interval: p.spec.check_interval.clone(),
        })
        .collect();
    Bundle {
        schema: "1.0".into(),
        id: ws.metadata.uid.clone().unwrap_or_default(),
        name,
        description: role.clone(),
        role: spec.role.clone(),
        tier: tier.into(),
        runtime,
        model: spec.model.clone().unwrap_or_default(),
        system_prompt,
        skills: skills.into_values().collect(),
        tools: vec![],
        prompts: [(
            "config.yaml".to_string(),
            crate::yaml::to_string(&config).unwrap_or_default(),
        )]
        .into(),
        files,
        files_dir: spec
            .files
            .as_ref()
            .and_then(|f| f.files_dir.clone())
            .filter(|_| !inlined_dir),
        plugins,
        schedules: spec
            .schedules
            .iter()
            .map(|s| BundleSchedule {
                name: s.name.clone(),
                cron_expr: s.cron_expr.clone(),
                timezone: s.timezone.clone(),
                prompt: s.prompt.clone(),
                enabled: s.enabled,
            })
            .collect(),
        required_env: spec.required_env.clone(),
        initial_prompt: spec.initial_prompt.clone(),
        idle_prompt: spec.idle_prompt.clone(),
        idle_interval_seconds: spec.idle_interval_seconds,
        category_routing: spec.category_routing.clone(),
        max_concurrent_tasks: spec.max_concurrent_tasks.map(i64::from),
        agent_card: card,
        sub_workspaces: vec![],
        author: String::new(),
        version: "1.0.0".into(),
    }
}

/// The first line of a SKILL.md after its front matter that is not a heading.
fn skill_description(content: &str) -> String {
    let mut front = false;
    for line in content.lines() {
        if line == "---" {
            front = !front;
        } else if !front && !line.is_empty() && !line.starts_with('#') {
            return line.chars().take(200).collect();
        }
    }
    String::new()
}

/// Checks the whole bundle and returns the workspaces to create, parents before children.
pub fn plan(b: &Bundle) -> Result<Vec<Planned>, BundleError> {
    let mut out = vec![];
    walk(b, None, "bundle".into(), 0, &mut out)?;
    Ok(out)
}

fn walk(
    b: &Bundle,
    parent: Option<usize>,
    at: String,
    depth: usize,
    out: &mut Vec<Planned>,
) -> Result<(), BundleError> {
    if depth > MAX_DEPTH {
        return Err(BundleError::TooDeep);
    }
    if out.len() >= MAX_WORKSPACES {
        return Err(BundleError::TooManyWorkspaces);
    }
    let planned = one(b, parent, &at).map_err(|why| BundleError::Invalid {
        at: at.clone(),
        why,
    })?;
    out.push(planned);
    let me = out.len() - 1;
    for (i, sub) in b.sub_workspaces.iter().enumerate() {
        walk(
            sub,
            Some(me),
            format!("{at}.sub_workspaces[{i}]"),
            depth + 1,
            out,
        )?;
    }
    Ok(())
}

/// A string of at most `max` characters without control characters.
fn short_text(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.chars().count() > max {
        return Err(format!("`{field}` must be at most {max} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("`{field}` must not contain control characters"));
    }
    Ok(())
}

/// Display names and roles: no YAML/shell specials (as `POST /workspaces`).
fn label_text(field: &str, s: &str, max: usize) -> Result<(), String> {
    short_text(field, s, max)?;
    if s.contains(['{', '}', '[', ']', '|', '>', '*', '&', '!']) {
        return Err(format!("`{field}` must not contain any of {{}}[]|>*&!"));
    }
    Ok(())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.to_string())
}

/// `runtime` and `model` of the original's `prompts["config.yaml"]` (empty when absent or
/// not a YAML mapping).
fn from_config_yaml(b: &Bundle) -> (String, String) {
    let Some(text) = b.prompts.get("config.yaml") else {
        return (String::new(), String::new());
    };
    if text.len() > MAX_FILE_BYTES {
        return (String::new(), String::new());
    }
    let v: Value = crate::yaml::from_str(text).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    (s("runtime"), s("model"))
}

fn runtime_name(r: &str) -> Result<(), String> {
    let ok = r.len() <= 63
        && r.as_bytes()[0].is_ascii_alphanumeric()
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("`runtime` must be a lower-case name of letters, digits, '-' or '_'".into())
    }
}

/// An env-style name.
fn env_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn one(b: &Bundle, parent: Option<usize>, at: &str) -> Result<Planned, String> {
    let name = b.name.trim();
    if name.is_empty() {
        return Err("`name` is required".into());
    }
    label_text("name", name, MAX_NAME)?;
    let role = b
        .role
        .clone()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| non_empty(&b.description));
    if let Some(r) = &role {
        label_text("description", r, MAX_ROLE)?;
    }
    let tier = match b.tier {
        0 => None,
        t @ 1..=4 => Some(t as i32),
        _ => return Err("`tier` must be between 1 and 4 (0: the default)".into()),
    };
    let (cfg_runtime, cfg_model) = from_config_yaml(b);
    let runtime = non_empty(&b.runtime).or_else(|| non_empty(&cfg_runtime));
    if let Some(r) = &runtime {
        runtime_name(r)?;
    }
    let model = non_empty(&b.model).or_else(|| non_empty(&cfg_model));
    if let Some(m) = &model {
        short_text("model", m, MAX_MODEL)?;
    }
    let files = files_of(b)?;
    if let Some(d) = &b.files_dir {
        crate::backends::validate_file_path(d).map_err(|why| format!("`files_dir`: {why}"))?;
    }
    for (field, text) in [
        ("initial_prompt", &b.initial_prompt),
        ("idle_prompt", &b.idle_prompt),
    ] {
        if text.as_ref().is_some_and(|t| t.len() > MAX_FILE_BYTES) {
            return Err(format!("`{field}` is larger than {MAX_FILE_BYTES} bytes"));
        }
    }
    if b.idle_interval_seconds.is_some_and(|s| s < 1) {
        return Err("`idle_interval_seconds` must be at least 1".into());
    }
    check_routing(&b.category_routing)?;
    let max_concurrent_tasks = match b.max_concurrent_tasks {
        None => None,
        Some(n @ 1..=1000) => Some(n as i32),
        Some(_) => return Err("`max_concurrent_tasks` must be between 1 and 1000".into()),
    };
    let schedules = schedules_of(&b.schedules)?;
    if b.required_env.len() > MAX_ITEMS || !b.required_env.iter().all(|n| env_name(n)) {
        return Err(format!(
            "`required_env` must hold at most {MAX_ITEMS} names of letters, digits and underscores"
        ));
    }
    if b.plugins.len() > MAX_ITEMS {
        return Err(format!("more than {MAX_ITEMS} plugins"));
    }
    let source_id = Some(b.id.clone()).filter(|id| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    });
    let spec = WorkspaceSpec {
        display_name: Some(name.to_string()),
        role,
        runtime,
        tier,
        model,
        files: (!files.is_empty() || b.files_dir.is_some()).then(|| ConfigFiles {
            files_dir: b.files_dir.clone(),
            inline: files,
        }),
        required_env: b.required_env.clone(),
        schedules,
        initial_prompt: b.initial_prompt.clone().filter(|p| !p.trim().is_empty()),
        idle_prompt: b.idle_prompt.clone().filter(|p| !p.trim().is_empty()),
        idle_interval_seconds: b.idle_interval_seconds,
        category_routing: b.category_routing.clone(),
        max_concurrent_tasks,
        ..Default::default()
    };
    if serde_json::to_vec(&spec).map_or(0, |v| v.len()) > MAX_SPEC_BYTES {
        return Err(format!(
            "the workspace (files, prompts and schedules together) is larger than {MAX_SPEC_BYTES} bytes"
        ));
    }
    Ok(Planned {
        at: at.to_string(),
        parent,
        spec,
        plugins: b.plugins.clone(),
        agent_card: b.agent_card.clone().filter(|c| !c.is_null()),
        source_id,
    })
}

/// `files`, `system_prompt` and the skills' files as one map of `/configs`, each path relative
/// and inside (no `..`, not absolute), none reserved or given twice, within the size limits.
fn files_of(b: &Bundle) -> Result<BTreeMap<String, String>, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut total = 0usize;
    let mut add = |path: String, content: &str| -> Result<(), String> {
        crate::backends::validate_file_path(&path).map_err(|why| {
            let why: String = why.chars().take(200).collect();
            format!("file: {why}")
        })?;
        if RESERVED_FILES.contains(&path.as_str()) {
            return Err("config.yaml and .auth_token are generated and cannot be supplied".into());
        }
        if content.len() > MAX_FILE_BYTES {
            return Err(format!("a file is larger than {MAX_FILE_BYTES} bytes"));
        }
        total += content.len();
        if total > MAX_WORKSPACE_FILES_BYTES {
            return Err(format!(
                "the files exceed {MAX_WORKSPACE_FILES_BYTES} bytes in total"
            ));
        }
        if out.len() >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} files"));
        }
        if out.insert(path, content.to_string()).is_some() {
            return Err("a file is given twice (files, system_prompt or skills)".into());
        }
        Ok(())
    };
    for (path, content) in &b.files {
        add(path.clone(), content)?;
    }
    if !b.system_prompt.is_empty() {
        add(SYSTEM_PROMPT_FILE.into(), &b.system_prompt)?;
    }
    for skill in &b.skills {
        if skill.id.is_empty()
            || skill.id.contains('/')
            || crate::backends::validate_file_path(&skill.id).is_err()
        {
            return Err("a skill `id` must be one path component (no '/', '..')".into());
        }
        for (rel, content) in &skill.files {
            add(format!("skills/{}/{rel}", skill.id), content)?;
        }
    }
    Ok(out)
}

fn check_routing(routing: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
    let bad = |n: &String| n.trim().is_empty() || n.len() > 253 || n.chars().any(char::is_control);
    if routing.len() > 256
        || routing.values().any(|r| r.len() > 256)
        || routing.keys().any(bad)
        || routing.values().flatten().any(bad)
    {
        return Err(
            "`category_routing` must hold at most 256 categories of at most 256 printable names"
                .into(),
        );
    }
    Ok(())
}

fn schedules_of(list: &[BundleSchedule]) -> Result<Vec<ScheduleSpec>, String> {
    if list.len() > MAX_ITEMS {
        return Err(format!("more than {MAX_ITEMS} schedules"));
    }
    let mut out: Vec<ScheduleSpec> = vec![];
    for s in list {
        if s.name.trim().is_empty() {
            return Err("a schedule needs a `name`".into());
        }
        short_text("schedules[].name", &s.name, 128)?;
        crate::orgtemplate::check_cron(&s.cron_expr).map_err(|why| {
            let why: String = why.chars().take(200).collect();
            format!("schedule: {why}")
        })?;
        if let Some(tz) = &s.timezone {
            short_text("schedules[].timezone", tz, 64)?;
            // The API server refuses an unknown zone (ADR 0053): refused here, before anything
            // is created.
            crate::cron::zone(Some(tz)).map_err(|why| format!("schedule: {why}"))?;
        }
        if s.name.contains('/') {
            return Err("a schedule's `name` must not contain '/'".into());
        }
        if s.prompt.trim().is_empty() || s.prompt.len() > MAX_FILE_BYTES {
            return Err(format!(
                "a schedule's `prompt` must be 1-{MAX_FILE_BYTES} bytes"
            ));
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err("two schedules have the same name".into());
        }
        out.push(ScheduleSpec {
            name: s.name.clone(),
            cron_expr: s.cron_expr.clone(),
            timezone: s.timezone.clone(),
            prompt: s.prompt.clone(),
            enabled: s.enabled,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(v: Value) -> Bundle {
        serde_json::from_value(v).expect("bundle")
    }

    fn refused(v: Value) -> String {
        plan(&bundle(v)).expect_err("refused").to_string()
    }

    #[test]
    fn the_originals_bundle_plans_with_runtime_from_config_yaml_and_children() {
        let b = bundle(json!({
            "schema": "1.0", "id": "0b6c0d7e-1111-2222-3333-444455556666", "name": "Research Lead",
            "description": "lead", "tier": 3, "system_prompt": "You lead.",
            "skills": [{"id": "search", "name": "search", "files": {"SKILL.md": "# S\nFinds.", "lib/x.py": "x=1"}}],
            "tools": [{"id": "web"}], "prompts": {"config.yaml": "name: R\nruntime: claude-code\nmodel: opus\n"},
            "sub_workspaces": [{"name": "Analyst", "tier": 0, "agent_card": null}],
            "agent_card": {"name": "Research Lead", "skills": []}, "author": "", "version": "1.0.0",
            "unknown": true
        }));
        let p = plan(&b).expect("plan");
        assert_eq!(p.len(), 2);
        let lead = &p[0].spec;
        assert_eq!(lead.display_name.as_deref(), Some("Research Lead"));
        assert_eq!(lead.role.as_deref(), Some("lead"));
        assert_eq!(lead.tier, Some(3));
        assert_eq!(lead.runtime.as_deref(), Some("claude-code"));
        assert_eq!(lead.model.as_deref(), Some("opus"));
        let files = &lead.files.as_ref().expect("files").inline;
        assert_eq!(files["system-prompt.md"], "You lead.");
        assert_eq!(files["skills/search/lib/x.py"], "x=1");
        assert_eq!(
            p[0].agent_card,
            Some(json!({"name": "Research Lead", "skills": []}))
        );
        assert_eq!(
            p[0].source_id.as_deref(),
            Some("0b6c0d7e-1111-2222-3333-444455556666")
        );
        assert_eq!(p[1].parent, Some(0));
        assert_eq!(p[1].spec.tier, None);
        assert_eq!(p[1].spec.runtime, None);
        assert_eq!(p[1].agent_card, None);
    }

    #[test]
    fn export_then_plan_gives_the_same_spec_without_secrets() {
        let mut ws = Workspace::new(
            "lead-x1",
            WorkspaceSpec {
                display_name: Some("Lead".into()),
                role: Some("leads".into()),
                runtime: Some("echo".into()),
                tier: Some(1),
                max_concurrent_tasks: Some(3),
                files: Some(ConfigFiles {
                    files_dir: None,
                    inline: [
                        ("system-prompt.md".to_string(), "Be brief.".to_string()),
                        (
                            "skills/a/SKILL.md".to_string(),
                            "---\nx: y\n---\nDoes A.".to_string(),
                        ),
                        ("notes/n.md".to_string(), "n".to_string()),
                    ]
                    .into(),
                }),
                env: vec![crate::resources::EnvVar {
                    name: "API_KEY".into(),
                    value: Some("sk-secret-value".into()),
                    value_from: None,
                }],
                schedules: vec![ScheduleSpec {
                    name: "daily".into(),
                    cron_expr: "0 9 * * *".into(),
                    timezone: None,
                    prompt: "report".into(),
                    enabled: true,
                }],
                ..Default::default()
            },
        );
        ws.metadata.uid = Some("u-1".into());
        let b = export(&ws, &[], Some(json!({"name": "Lead"})), None);
        let text = serde_json::to_string(&b).expect("json");
        assert!(
            !text.contains("sk-secret-value") && !text.contains("API_KEY"),
            "{text}"
        );
        assert_eq!(b.skills[0].description, "Does A.");
        assert!(b.prompts["config.yaml"].contains("runtime: echo"));
        let back: Bundle = serde_json::from_str(&text).expect("parse");
        let p = plan(&back).expect("plan");
        let mut want = ws.spec.clone();
        want.env.clear();
        assert_eq!(p[0].spec, want);
        assert_eq!(p[0].agent_card, Some(json!({"name": "Lead"})));
    }

    #[test]
    fn hostile_bundles_are_refused_with_the_place_named() {
        for (v, want) in [
            (
                json!({"name": "x", "files": {"../etc/passwd": "x"}}),
                "escapes its root",
            ),
            (
                json!({"name": "x", "files": {"/etc/passwd": "x"}}),
                "absolute",
            ),
            (
                json!({"name": "x", "files": {"config.yaml": "x"}}),
                "generated",
            ),
            (
                json!({"name": "x", "skills": [{"id": "..", "files": {"a": "b"}}]}),
                "one path component",
            ),
            (
                json!({"name": "x", "skills": [{"id": "a/b", "files": {"a": "b"}}]}),
                "one path component",
            ),
            (json!({"name": "x", "tier": 5}), "between 1 and 4"),
            (json!({"name": ""}), "`name` is required"),
            (json!({"name": "a{b}"}), "must not contain"),
            (json!({"name": "x", "runtime": "Bad Runtime"}), "lower-case"),
            (json!({"name": "x", "files_dir": "../up"}), "files_dir"),
            (
                json!({"name": "x", "system_prompt": "a", "files": {"system-prompt.md": "b"}}),
                "given twice",
            ),
            (
                json!({"name": "x", "files": {"big": "x".repeat(MAX_FILE_BYTES + 1)}}),
                "larger than",
            ),
            (
                json!({"name": "x", "schedules": [{"name": "s", "cron_expr": "61 * * * *", "prompt": "p"}]}),
                "cron",
            ),
            (
                json!({"name": "x", "required_env": ["A-B"]}),
                "required_env",
            ),
            (
                json!({"name": "x", "sub_workspaces": [{"name": "y", "tier": 9}]}),
                "bundle.sub_workspaces[0]",
            ),
            (
                json!({"name": "x", "max_concurrent_tasks": 0}),
                "between 1 and 1000",
            ),
            (
                json!({"name": "x", "schedules": (0..6).map(|i| json!({"name": format!("s{i}"), "cron_expr": "@daily", "prompt": "p".repeat(MAX_FILE_BYTES)})).collect::<Vec<_>>()}),
                "larger than",
            ),
        ] {
            let got = refused(v.clone());
            assert!(got.contains(want), "{v}: {got}");
        }
        let mut deep = json!({"name": "leaf"});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"name": "n", "sub_workspaces": [deep]});
        }
        assert_eq!(plan(&bundle(deep)), Err(BundleError::TooDeep));
        let many: Vec<Value> = (0..MAX_WORKSPACES)
            .map(|i| json!({"name": format!("w{i}")}))
            .collect();
        assert_eq!(
            plan(&bundle(json!({"name": "r", "sub_workspaces": many}))),
            Err(BundleError::TooManyWorkspaces)
        );
    }
}
