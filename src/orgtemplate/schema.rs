//! The typed org.yaml. Every value is checked for its type and range, and every error
//! names the file and YAML path; unknown keys are tolerated with a warning.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::node::{FileInfo, Kind, Node};
use super::{ErrorKind, MAX_WORKSPACES, Pos, TemplateError};

/// Deepest workspace tree.
const MAX_TREE_DEPTH: usize = 64;

/// A required env entry: a name, or a group of which any one satisfies it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    Name(String),
    AnyOf(Vec<String>),
}

impl Requirement {
    /// `NAME`, or `A|B` for a group.
    pub fn render(&self) -> String {
        match self {
            Requirement::Name(n) => n.clone(),
            Requirement::AnyOf(names) => names.join("|"),
        }
    }

    /// Whether `has(name)` holds for the name, or for one name of the group.
    pub fn satisfied_by(&self, has: impl Fn(&str) -> bool) -> bool {
        match self {
            Requirement::Name(n) => has(n),
            Requirement::AnyOf(names) => names.iter().any(|n| has(n)),
        }
    }
}

/// Position on the canvas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Canvas {
    pub x: f64,
    pub y: f64,
}

/// Where a value was written.
#[derive(Clone, Debug)]
pub(crate) struct Loc {
    pub file: Arc<FileInfo>,
    pub path: String,
    pub pos: Option<Pos>,
}

impl Loc {
    pub fn of(n: &Node) -> Loc {
        Loc {
            file: n.file.clone(),
            path: n.path.clone(),
            pos: n.pos,
        }
    }
    pub fn err(&self, kind: ErrorKind, message: impl Into<String>) -> TemplateError {
        TemplateError::new(kind, self.file.name.clone(), self.path.clone(), message).at(self.pos)
    }
    /// `file:line:column: path` (what is known), for messages about a skipped entry.
    pub fn place(&self) -> String {
        let mut out = self.file.name.clone();
        if let Some(Pos { line, column }) = self.pos {
            out.push_str(&format!(":{line}:{column}"));
        }
        if !self.path.is_empty() {
            out.push_str(": ");
            out.push_str(&self.path);
        }
        out
    }

    pub fn display(&self) -> String {
        if self.path.is_empty() {
            self.file.name.clone()
        } else {
            format!("{}: {}", self.file.name, self.path)
        }
    }
}

/// A prompt given inline or as a file.
#[derive(Clone, Debug)]
pub(crate) enum Prompt {
    Text(String),
    /// Path relative to the file's scope base.
    File(String, Loc),
}

/// A plugin list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PluginEntry {
    pub name: String,
    /// `!name` or `-name`: remove a default.
    pub opt_out: bool,
}

/// `defaults:`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Defaults {
    pub runtime: Option<String>,
    pub tier: Option<i32>,
    pub model: Option<String>,
    pub plugins: Vec<PluginEntry>,
    pub initial_prompt: Option<Prompt>,
    pub idle_prompt: Option<Prompt>,
    pub idle_interval_seconds: Option<i64>,
    pub category_routing: BTreeMap<String, serde_json::Value>,
    pub required_env: Vec<Requirement>,
    /// `defaults:` or one of its values came from git (ADR 0039).
    pub from_git: bool,
}

/// One workspace entry (with its children).
#[derive(Clone, Debug)]
pub(crate) struct WorkspaceDef {
    pub loc: Loc,
    pub name: String,
    pub role: Option<String>,
    pub runtime: Option<String>,
    pub tier: Option<i32>,
    pub model: Option<String>,
    pub files_dir: Option<(String, Loc)>,
    pub system_prompt: Option<String>,
    pub plugins: Vec<PluginEntry>,
    /// `schedules:` entries as written; checked (and skipped or refused) by the plan.
    pub schedules: Vec<Node>,
    /// `channels:` entries as written; checked (and skipped or refused) by the plan.
    pub channels: Vec<Node>,
    /// As written (`${VAR}` not yet expanded).
    pub workspace_dir: Option<(String, Loc)>,
    /// `none`, `read-only` or `read-write` (the template's `read_only` / `read_write`).
    pub workspace_access: Option<(String, Loc)>,
    pub external: bool,
    pub url: Option<String>,
    pub required_env: Vec<Requirement>,
    pub recommended_env: Vec<Requirement>,
    pub max_concurrent_tasks: Option<i32>,
    pub canvas: Option<Canvas>,
    pub spawning: bool,
    pub initial_prompt: Option<Prompt>,
    pub idle_prompt: Option<Prompt>,
    pub idle_interval_seconds: Option<i64>,
    pub category_routing: BTreeMap<String, serde_json::Value>,
    pub children: Vec<WorkspaceDef>,
    /// The entry or one of its own values (children aside) came from git (ADR 0039).
    pub from_git: bool,
}

impl WorkspaceDef {
    /// This workspace and all its descendants.
    pub fn size(&self) -> usize {
        1 + self.children.iter().map(WorkspaceDef::size).sum::<usize>()
    }
}

/// One `global_memories:` entry: seeded on the first root workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalMemory {
    pub content: String,
    /// As written; `GLOBAL` when unset.
    pub scope: String,
}

/// A parsed org.yaml.
#[derive(Clone, Debug)]
pub(crate) struct OrgTemplate {
    pub name: Option<String>,
    pub description: String,
    pub defaults: Defaults,
    /// Top-level `required_env`: every spawning workspace needs it.
    pub required_env: Vec<Requirement>,
    /// Top-level `recommended_env`: warned about, never blocking.
    pub recommended_env: Vec<Requirement>,
    pub global_memories: Vec<GlobalMemory>,
    pub workspaces: Vec<WorkspaceDef>,
    pub warnings: Vec<String>,
    /// Workspaces in the tree (spawning or not).
    pub total: usize,
}

/// Parses the expanded tree.
pub(crate) fn parse(root: &Node) -> Result<OrgTemplate, TemplateError> {
    let mut p = Parser {
        warnings: vec![],
        total: 0,
    };
    let mut t = OrgTemplate {
        name: None,
        description: String::new(),
        defaults: Defaults::default(),
        required_env: vec![],
        recommended_env: vec![],
        global_memories: vec![],
        workspaces: vec![],
        warnings: vec![],
        total: 0,
    };
    if root.is_null() {
        return Err(root.invalid("the template is empty"));
    }
    for (k, v) in root.map()? {
        match k.as_str() {
            "name" => t.name = Some(p.text(v, 200)?),
            "description" => t.description = p.text(v, 4096)?,
            "defaults" => t.defaults = p.defaults(v)?,
            "workspaces" => t.workspaces = p.workspaces(v, 1)?,
            "required_env" => t.required_env = p.required_env(v)?,
            "recommended_env" => t.recommended_env = p.required_env(v)?,
            "global_memories" => t.global_memories = p.memories(v)?,
            "template_schema_version" => {
                let at = Loc::of(v).display();
                p.warnings.push(format!(
                    "{at}: template_schema_version is not used (every template is read by the same rules)"
                ));
            }
            _ => p.unknown(v, k),
        }
    }
    t.warnings = p.warnings;
    t.total = p.total;
    Ok(t)
}

struct Parser {
    warnings: Vec<String>,
    total: usize,
}

/// `^[A-Z][A-Z0-9_]{0,127}$`.
pub(crate) fn valid_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

impl Parser {
    fn unknown(&mut self, v: &Node, key: &str) {
        let at = Loc::of(v).display();
        tracing::debug!(at = %at, key, "unknown key in org template");
        self.warnings
            .push(format!("{at}: unknown key {key:?} ignored"));
    }

    /// A string without control characters (newlines and tabs allowed), at most `max` bytes.
    fn text(&self, v: &Node, max: usize) -> Result<String, TemplateError> {
        let s = v.string()?;
        if s.len() > max {
            return Err(v.invalid(format!("longer than {max} bytes")));
        }
        if s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(v.invalid("contains control characters"));
        }
        Ok(s)
    }

    fn opt_text(&self, v: &Node, max: usize) -> Result<Option<String>, TemplateError> {
        if v.is_null() {
            return Ok(None);
        }
        Ok(Some(self.text(v, max)?).filter(|s| !s.is_empty()))
    }

    fn runtime(&self, v: &Node) -> Result<Option<String>, TemplateError> {
        let Some(s) = self.opt_text(v, 63)? else {
            return Ok(None);
        };
        let ok = s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            });
        if !ok {
            return Err(v.invalid(format!(
                "runtime {s:?} must be lowercase letters, digits, `-`, `_` or `.`"
            )));
        }
        Ok(Some(s))
    }

    fn tier(&self, v: &Node) -> Result<Option<i32>, TemplateError> {
        if v.is_null() {
            return Ok(None);
        }
        match v.int() {
            Ok(t @ 1..=4) => Ok(Some(t as i32)),
            Ok(t) => Err(v.invalid(format!("tier must be 1, 2, 3 or 4, got {t}"))),
            Err(e) if e.kind == ErrorKind::UnknownTag => Err(e),
            Err(_) => Err(v.invalid(format!(
                "tier must be an integer 1-4, got {}",
                v.type_name()
            ))),
        }
    }

    fn int_range(
        &self,
        v: &Node,
        lo: i64,
        hi: i64,
        what: &str,
    ) -> Result<Option<i64>, TemplateError> {
        if v.is_null() {
            return Ok(None);
        }
        let i = v.int()?;
        if !(lo..=hi).contains(&i) {
            return Err(v.invalid(format!("{what} must be between {lo} and {hi}, got {i}")));
        }
        Ok(Some(i))
    }

    fn plugins(&self, v: &Node) -> Result<Vec<PluginEntry>, TemplateError> {
        let mut out = vec![];
        for item in v.seq()? {
            let (raw, tagged) = match &item.kind {
                // `- !name` is a YAML tag with an empty value: an opt-out.
                Kind::Tagged(tag, inner)
                    if inner.is_null() || matches!(&inner.kind, Kind::Str(s) if s.is_empty()) =>
                {
                    (tag.clone(), true)
                }
                _ => (self.text(item, 200)?, false),
            };
            let (name, opt_out) = match raw.strip_prefix('!').or_else(|| raw.strip_prefix('-')) {
                Some(rest) => (rest.to_string(), true),
                None => (raw.clone(), tagged),
            };
            let ok = !name.is_empty()
                && name.len() <= 128
                && name.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')
                });
            if !ok {
                return Err(item.invalid(format!("invalid plugin name {raw:?}")));
            }
            out.push(PluginEntry { name, opt_out });
        }
        Ok(out)
    }

    fn prompt(
        &self,
        text: Option<&Node>,
        file: Option<&Node>,
    ) -> Result<Option<Prompt>, TemplateError> {
        if let Some(t) = text
            && let Some(s) = self.opt_text(t, 64 * 1024)?
        {
            return Ok(Some(Prompt::Text(s)));
        }
        if let Some(f) = file
            && let Some(s) = self.opt_text(f, 512)?
        {
            return Ok(Some(Prompt::File(s, Loc::of(f))));
        }
        Ok(None)
    }

    fn routing(&self, v: &Node) -> Result<BTreeMap<String, serde_json::Value>, TemplateError> {
        if v.is_null() {
            return Ok(BTreeMap::new());
        }
        v.map()?
            .iter()
            .map(|(k, val)| Ok((k.clone(), val.to_json()?)))
            .collect()
    }

    fn required_env(&self, v: &Node) -> Result<Vec<Requirement>, TemplateError> {
        let mut out = vec![];
        for item in v.seq()? {
            let check = |n: &Node| -> Result<String, TemplateError> {
                let s = n.string()?;
                if valid_env_name(&s) {
                    Ok(s)
                } else {
                    Err(n.invalid(format!(
                        "env name {s:?} must match ^[A-Z][A-Z0-9_]{{0,127}}$"
                    )))
                }
            };
            match &item.kind {
                Kind::Map(m) => {
                    let mut group = None;
                    for (k, val) in m {
                        if k == "any_of" {
                            let names = val
                                .seq()?
                                .iter()
                                .map(check)
                                .collect::<Result<Vec<_>, _>>()?;
                            if names.is_empty() {
                                return Err(val.invalid("any_of needs at least one name"));
                            }
                            group = Some(names);
                        } else {
                            return Err(val.invalid(format!(
                                "unknown key {k:?} in a required_env group (only any_of)"
                            )));
                        }
                    }
                    match group {
                        Some(g) => out.push(Requirement::AnyOf(g)),
                        None => return Err(item.invalid("a required_env group needs any_of")),
                    }
                }
                _ => out.push(Requirement::Name(check(item)?)),
            }
        }
        Ok(out)
    }

    /// `global_memories: [{content, scope}]`.
    fn memories(&self, v: &Node) -> Result<Vec<GlobalMemory>, TemplateError> {
        let mut out = vec![];
        for item in v.seq()? {
            let mut content = None;
            let mut scope = None;
            for (k, val) in item.map()? {
                match k.as_str() {
                    "content" => content = self.opt_text(val, 64 * 1024)?,
                    "scope" => scope = self.opt_text(val, 64)?,
                    other => {
                        return Err(val.invalid(format!(
                            "unknown key {other:?} in a global memory (content, scope)"
                        )));
                    }
                }
            }
            let Some(content) = content else {
                return Err(item.invalid("a global memory needs a non-empty content"));
            };
            out.push(GlobalMemory {
                content,
                scope: scope.unwrap_or_else(|| "GLOBAL".into()),
            });
        }
        Ok(out)
    }

    fn defaults(&mut self, v: &Node) -> Result<Defaults, TemplateError> {
        let mut d = Defaults::default();
        if v.is_null() {
            return Ok(d);
        }
        let m = v.map()?;
        let get = |k: &str| m.iter().find(|(key, _)| key == k).map(|(_, n)| n);
        d.from_git = v.is_from_git() || m.iter().any(|(_, n)| n.is_from_git());
        for (k, val) in m {
            match k.as_str() {
                "runtime" => d.runtime = self.runtime(val)?,
                "tier" => d.tier = self.tier(val)?,
                "model" => d.model = self.opt_text(val, 200)?,
                "plugins" => d.plugins = self.plugins(val)?,
                "initial_prompt" | "initial_prompt_file" | "idle_prompt" | "idle_prompt_file" => {}
                "idle_interval_seconds" => {
                    d.idle_interval_seconds =
                        self.int_range(val, 1, 7 * 86400, "idle_interval_seconds")?
                }
                "category_routing" => d.category_routing = self.routing(val)?,
                "required_env" => d.required_env = self.required_env(val)?,
                _ => self.unknown(val, k),
            }
        }
        d.initial_prompt = self.prompt(get("initial_prompt"), get("initial_prompt_file"))?;
        d.idle_prompt = self.prompt(get("idle_prompt"), get("idle_prompt_file"))?;
        Ok(d)
    }

    fn workspaces(&mut self, v: &Node, depth: usize) -> Result<Vec<WorkspaceDef>, TemplateError> {
        if depth > MAX_TREE_DEPTH {
            return Err(v.invalid(format!(
                "the workspace tree is deeper than {MAX_TREE_DEPTH} levels"
            )));
        }
        let mut out = vec![];
        for item in v.seq()? {
            if matches!(item.kind, Kind::Unresolved) {
                continue;
            }
            out.push(self.workspace(item, depth)?);
        }
        Ok(out)
    }

    fn workspace(&mut self, v: &Node, depth: usize) -> Result<WorkspaceDef, TemplateError> {
        self.total += 1;
        if self.total > MAX_WORKSPACES {
            return Err(v.err(
                ErrorKind::TooLarge,
                format!("the template has more than {MAX_WORKSPACES} workspaces"),
            ));
        }
        let m = v.map()?;
        let get = |k: &str| m.iter().find(|(key, _)| key == k).map(|(_, n)| n);
        let name = match get("name") {
            Some(n) => self.text(n, 200)?,
            None => return Err(v.invalid("a workspace needs a name")),
        };
        if name.trim().is_empty() {
            return Err(v.invalid("a workspace needs a non-empty name"));
        }
        let mut w = WorkspaceDef {
            loc: Loc::of(v),
            name: name.trim().to_string(),
            role: None,
            runtime: None,
            tier: None,
            model: None,
            files_dir: None,
            system_prompt: None,
            plugins: vec![],
            schedules: vec![],
            channels: vec![],
            workspace_dir: None,
            workspace_access: None,
            external: false,
            url: None,
            required_env: vec![],
            recommended_env: vec![],
            max_concurrent_tasks: None,
            canvas: None,
            spawning: true,
            initial_prompt: self.prompt(get("initial_prompt"), get("initial_prompt_file"))?,
            idle_prompt: self.prompt(get("idle_prompt"), get("idle_prompt_file"))?,
            idle_interval_seconds: None,
            category_routing: BTreeMap::new(),
            children: vec![],
            from_git: v.is_from_git() || m.iter().any(|(k, n)| k != "children" && n.is_from_git()),
        };
        for (k, val) in m {
            match k.as_str() {
                "name"
                | "initial_prompt"
                | "initial_prompt_file"
                | "idle_prompt"
                | "idle_prompt_file" => {}
                "role" => w.role = self.opt_text(val, 8192)?,
                "runtime" => w.runtime = self.runtime(val)?,
                "tier" => w.tier = self.tier(val)?,
                "model" => w.model = self.opt_text(val, 200)?,
                "files_dir" => w.files_dir = self.opt_text(val, 512)?.map(|s| (s, Loc::of(val))),
                "system_prompt" => w.system_prompt = self.opt_text(val, 64 * 1024)?,
                "plugins" => w.plugins = self.plugins(val)?,
                "schedules" => w.schedules = val.seq()?.to_vec(),
                "channels" => w.channels = val.seq()?.to_vec(),
                "workspace_dir" => {
                    w.workspace_dir = self.opt_text(val, 1024)?.map(|s| (s, Loc::of(val)))
                }
                "workspace_access" => {
                    let access = match self.opt_text(val, 20)?.as_deref() {
                        None => None,
                        Some("none") => Some("none"),
                        Some("read_only" | "read-only") => Some("read-only"),
                        Some("read_write" | "read-write") => Some("read-write"),
                        Some(a) => {
                            return Err(val.invalid(format!(
                                "workspace_access must be none, read_only or read_write, got {a:?}"
                            )));
                        }
                    };
                    w.workspace_access = access.map(|a| (a.to_string(), Loc::of(val)));
                }
                "external" => w.external = val.bool()?,
                "url" => w.url = self.opt_text(val, 2048)?,
                "required_env" => w.required_env = self.required_env(val)?,
                "recommended_env" => w.recommended_env = self.required_env(val)?,
                "max_concurrent_tasks" => {
                    w.max_concurrent_tasks = self
                        .int_range(val, 1, 1000, "max_concurrent_tasks")?
                        .map(|i| i as i32)
                }
                "canvas" => {
                    if !val.is_null() {
                        let cm = val.map()?;
                        let coord = |k: &str| -> Result<f64, TemplateError> {
                            match cm.iter().find(|(key, _)| key == k) {
                                Some((_, n)) => n.number(),
                                None => Ok(0.0),
                            }
                        };
                        w.canvas = Some(Canvas {
                            x: coord("x")?,
                            y: coord("y")?,
                        });
                    }
                }
                "spawning" => w.spawning = val.is_null() || val.bool()?,
                "idle_interval_seconds" => {
                    w.idle_interval_seconds =
                        self.int_range(val, 1, 7 * 86400, "idle_interval_seconds")?
                }
                "category_routing" => w.category_routing = self.routing(val)?,
                "children" => w.children = self.workspaces(val, depth + 1)?,
                _ => self.unknown(val, k),
            }
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Tree;
    use super::super::{ErrorKind, Source, load_plan};

    fn inline(yaml: &str) -> Result<super::super::Plan, super::super::TemplateError> {
        let t = Tree::new(&[]);
        load_plan(&t.options(), &Source::Inline(yaml.into()))
    }

    #[test]
    fn a_wrong_type_for_tier_is_named_precisely() {
        let e = inline(
            "workspaces:\n  - name: a\n    children:\n      - name: b\n        tier: high\n",
        )
        .expect_err("tier");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert_eq!(e.path, "workspaces[0].children[0].tier");
        assert_eq!(e.message, "tier must be an integer 1-4, got a string");
        let e = inline("workspaces:\n  - name: a\n    tier: 9\n").expect_err("range");
        assert_eq!(e.message, "tier must be 1, 2, 3 or 4, got 9");
    }

    #[test]
    fn missing_names_and_bad_values_are_refused() {
        let cases = [
            (
                "workspaces:\n  - role: x\n",
                "workspaces[0]",
                "a workspace needs a name",
            ),
            (
                "workspaces: 3\n",
                "workspaces",
                "expected a list, got an integer",
            ),
            (
                "workspaces:\n  - name: a\n    runtime: Claude Code\n",
                "workspaces[0].runtime",
                "runtime",
            ),
            (
                "workspaces:\n  - name: a\n    required_env: [lower]\n",
                "workspaces[0].required_env[0]",
                "env name",
            ),
            (
                "workspaces:\n  - name: a\n    workspace_access: all\n",
                "workspaces[0].workspace_access",
                "workspace_access",
            ),
            (
                "workspaces:\n  - name: a\n    spawning: maybe\n",
                "workspaces[0].spawning",
                "true or false",
            ),
            ("- just a list\n", "", "expected a mapping"),
        ];
        for (yaml, path, msg) in cases {
            let e = inline(yaml).expect_err(yaml);
            assert_eq!(e.path, path, "{yaml}: {e}");
            assert!(e.message.contains(msg), "{yaml}: {e}");
            assert_eq!(e.file, "(inline template)");
        }
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let p = inline("name: o\ncolour: red\nworkspaces:\n  - name: a\n    favourite: 3\n")
            .expect("ok");
        assert_eq!(
            p.warnings,
            vec![
                "(inline template): colour: unknown key \"colour\" ignored".to_string(),
                "(inline template): workspaces[0].favourite: unknown key \"favourite\" ignored"
                    .to_string()
            ]
        );
    }

    #[test]
    fn every_o01_field_is_read() {
        let p = inline(
            r##"
name: Full
description: every field
defaults:
  runtime: echo
  tier: 3
  model: m-default
  idle_interval_seconds: 900
  category_routing: {bugs: qa, docs: writer}
workspaces:
  - name: Lead
    role: "leads\nthe team"
    runtime: langgraph
    tier: 1
    model: m-own
    system_prompt: be kind
    schedules: [{cron_expr: "0 9 * * *", prompt: standup}]
    channels: [{type: slack, config: {channel: "#team"}}]
    workspace_dir: /srv/work
    workspace_access: read_only
    max_concurrent_tasks: 4
    canvas: {x: 10, y: 20.5}
    initial_prompt: hello
    idle_prompt: anything new?
    category_routing: {bugs: lead}
  - name: Remote
    external: true
    url: http://agent.example:9000
"##,
        )
        .expect("ok");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let lead = &p.workspaces[0];
        assert_eq!(lead.runtime, "langgraph");
        assert_eq!(lead.tier, Some(1));
        assert_eq!(lead.model.as_deref(), Some("m-own"));
        assert_eq!(lead.role.as_deref(), Some("leads\nthe team"));
        assert_eq!(lead.workspace_access.as_deref(), Some("read-only"));
        assert_eq!(lead.max_concurrent_tasks, Some(4));
        assert_eq!(lead.canvas, Some(super::Canvas { x: 10.0, y: 20.5 }));
        assert_eq!(lead.schedules[0].cron_expr, "0 9 * * *");
        assert_eq!(lead.schedules[0].prompt, "standup");
        assert_eq!(lead.channels[0].config["channel"], "#team");
        assert_eq!(lead.workspace_dir.as_deref(), Some("/srv/work"));
        assert_eq!(lead.initial_prompt.as_deref(), Some("hello"));
        assert_eq!(lead.idle_interval_seconds, Some(900));
        // category_routing merges per key: own wins, defaults fill the rest.
        assert_eq!(lead.category_routing["bugs"], "lead");
        assert_eq!(lead.category_routing["docs"], "writer");
        let remote = &p.workspaces[1];
        assert_eq!(remote.runtime, "external");
        assert_eq!(remote.url.as_deref(), Some("http://agent.example:9000"));
        assert_eq!(remote.tier, Some(3));
        assert_eq!(remote.model.as_deref(), Some("m-default"));
    }
}
