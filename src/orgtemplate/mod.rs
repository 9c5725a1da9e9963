//! Org templates (ADR 0010, 0011): a tree of workspaces in `org.yaml`, with
//! `!include` of other files, `!external` subtrees fetched from git, defaults, plugin opt-outs,
//! `spawning: false` subtrees, required env and layered `.env` files.
//!
//! Pure apart from reading files and running the `git` CLI. The result of [`load_plan`] is a
//! [`Plan`]: a flat list of desired workspaces in tree order (parents first), each keyed by its
//! position in the tree, with the files_dir, prompts, plugins and layered env it needs. The
//! OrgImport controller turns a plan into child Workspace records; the canvas shim uses
//! [`list_templates`] and [`preflight`].
//!
//! Steps, each in its own file:
//! - `node`: read a file and expand `!include` / `!external` into one annotated tree, keeping
//!   for every value the file and YAML path it came from (confinement, cycles, depth, size);
//! - `external`: validate and fetch `!external` refs into the content-addressed git cache;
//! - `schema`: the typed org.yaml, with a precise error for every bad value;
//! - `plan`: defaults merge, plugin union with `!name` opt-outs, `spawning: false` subtrees,
//!   names and keys;
//! - `env`: `.env` layering and the env preflight;
//! - `listing`: every template under the root with its counts;
//! - `policy`: the tier and host-directory limits a template must keep (ADR 0039).

mod channels;
mod env;
mod external;
mod listing;
mod node;
mod plan;
pub mod policy;
mod raw;
pub mod report;
#[cfg(test)]
mod rules_tests;
mod schedules;
mod schema;
mod vars;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

pub use channels::{ADAPTERS, is_secret_key};
pub use env::{Preflight, preflight};
pub use external::{ExternalConfig, ExternalRef, Fetched, fetch};
pub use listing::{TemplateInfo, list_templates, list_templates_with};
pub use plan::{max_name_len, tree_label, workspace_name};
pub use schedules::check_cron;
pub use schema::{Canvas, GlobalMemory, Requirement};
pub use vars::SYSTEM_DIRS;

/// The org file inside a template dir (`org.yml` is accepted too).
pub const ORG_FILE: &str = "org.yaml";
/// Deepest `!include` chain (ADR 0011).
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// Deepest `!external` chain (ADR 0011).
pub const MAX_EXTERNAL_DEPTH: usize = 4;
/// Largest single template file (org.yaml, an included file, an inline template).
pub const MAX_FILE_BYTES: u64 = 512 * 1024;
/// Largest total of all template files read for one import.
pub const MAX_TOTAL_BYTES: u64 = 8 * 1024 * 1024;
/// Most workspaces in one template (spawning or not).
pub const MAX_WORKSPACES: usize = 2000;
/// Largest prompt file (`*_prompt_file`) and `.env` file.
pub const MAX_AUX_FILE_BYTES: u64 = 256 * 1024;
/// Folder under the template root that holds fetched `!external` and git sources.
pub const CACHE_DIR: &str = ".external-cache";
/// Persona env root when `MOLECULE_PERSONA_ROOT` is unset.
pub const DEFAULT_PERSONA_ROOT: &str = "/etc/molecule-bootstrap/personas";

/// Where an org template comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A directory (holding `org.yaml`) under the template root.
    Dir(String),
    /// An inline org.yaml; `!include` and `files_dir` are relative to the template root.
    Inline(String),
    /// A git repository; `path` names the org file or a dir holding `org.yaml`.
    Git(ExternalRef),
}

impl Source {
    /// Short name for logs and audit rows: `dir`, `inline` or `git`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Dir(_) => "dir",
            Source::Inline(_) => "inline",
            Source::Git(_) => "git",
        }
    }
}

/// Everything loading needs besides the source.
#[derive(Clone, Debug)]
pub struct Options {
    /// The template root (`serve --org-templates`); every path is confined to it.
    pub root: PathBuf,
    /// `!external` and git settings (allowlist, token, cache).
    pub external: ExternalConfig,
    /// Persona env root (lowest `.env` layer); None disables persona env.
    pub persona_root: Option<PathBuf>,
    /// Whether `${VAR}` falls back to the process environment after the `.env` files (never
    /// for git content nor `MOLECULE_*` names; ADR 0047).
    pub process_env: bool,
}

/// Where org templates may come from besides the template root, as the operator set it
/// (flags or their `MOLECULE_*` environment variables; ADR 0043).
#[derive(Clone, Default)]
pub struct SourceSettings {
    /// `MOLECULE_EXTERNAL_REPO_ALLOWLIST`: comma list of allowed repository prefixes.
    pub external_repo_allowlist: Option<String>,
    /// `MOLECULE_EXTERNAL_GITEA_URL`: the default git host of `!external`s.
    pub external_gitea_url: Option<String>,
    /// `MOLECULE_GITEA_TOKEN`.
    pub gitea_token: Option<String>,
    /// `MOLECULE_PERSONA_ROOT` (default [`DEFAULT_PERSONA_ROOT`]).
    pub persona_root: Option<PathBuf>,
}

impl std::fmt::Debug for SourceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSettings")
            .field("external_repo_allowlist", &self.external_repo_allowlist)
            .field("external_gitea_url", &self.external_gitea_url)
            .field("gitea_token", &self.gitea_token.as_ref().map(|_| "***"))
            .field("persona_root", &self.persona_root)
            .finish()
    }
}

impl Options {
    /// Options for `root` with the operator's source settings.
    pub fn with_sources(root: impl Into<PathBuf>, sources: &SourceSettings) -> Self {
        let root = root.into();
        Options {
            external: ExternalConfig::with_sources(&root, sources),
            persona_root: Some(
                sources
                    .persona_root
                    .clone()
                    .filter(|v| !v.as_os_str().is_empty())
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PERSONA_ROOT)),
            ),
            process_env: true,
            root,
        }
    }
}

/// What kind of problem a template has; `category` is the condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The source dir or org file does not exist.
    NotFound,
    /// The YAML does not parse.
    InvalidYaml,
    /// A tag other than `!include` / `!external` (or a plugin opt-out).
    UnknownTag,
    /// A value has the wrong type or is out of range.
    Invalid,
    /// Two siblings (or two tree paths) map to the same workspace.
    Duplicate,
    /// An `!include` or files_dir escapes its root, is missing, loops, or nests too deep.
    Include,
    /// An `!external` (or git source) is refused: allowlist, ref, path, depth.
    ExternalRefused,
    /// Fetching from git failed (may be transient).
    Fetch,
    /// A file, the whole template, or the workspace count exceeds its limit.
    TooLarge,
    /// A `.env` file is malformed.
    EnvFile,
    /// A `${VAR}` the value needs is set nowhere (ADR 0047).
    UnresolvedVariable,
    /// A `workspace_dir` that is relative, climbs with `..` or names a system directory.
    InvalidWorkspaceDir,
}

impl ErrorKind {
    /// The condition reason / Event reason / metric label.
    pub fn category(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "TemplateNotFound",
            ErrorKind::InvalidYaml => "InvalidYaml",
            ErrorKind::UnknownTag => "UnknownTag",
            ErrorKind::Invalid => "InvalidTemplate",
            ErrorKind::Duplicate => "DuplicateName",
            ErrorKind::Include => "IncludeFailed",
            ErrorKind::ExternalRefused => "ExternalRefused",
            ErrorKind::Fetch => "FetchFailed",
            ErrorKind::TooLarge => "TemplateTooLarge",
            ErrorKind::EnvFile => "InvalidEnvFile",
            ErrorKind::UnresolvedVariable => "UnresolvedVariable",
            ErrorKind::InvalidWorkspaceDir => "InvalidWorkspaceDir",
        }
    }
}

/// Where in a file a value was written: 1-based line and column (ADR 0046).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// A template problem, naming the file (relative to the template root, or `<repo>@<sha>/…`
/// inside a fetched repository), the line and column when known, and the YAML path. Never
/// holds a secret or a host path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct TemplateError {
    pub kind: ErrorKind,
    /// The file, e.g. `demo/teams/research.yaml`; empty when no file is involved.
    pub file: String,
    /// Line and column in `file` of the value at fault.
    pub pos: Option<Pos>,
    /// The YAML path, e.g. `workspaces[0].children[2].tier`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl TemplateError {
    pub fn new(
        kind: ErrorKind,
        file: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        TemplateError {
            kind,
            file: file.into(),
            pos: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error, placed at `pos` in its file.
    pub fn at(mut self, pos: Option<Pos>) -> Self {
        self.pos = pos;
        self
    }

    /// The condition reason.
    pub fn category(&self) -> &'static str {
        self.kind.category()
    }

    /// Worth retrying without a change (a git fetch that failed on the network).
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Fetch
    }

    /// `file:line:column: path: message`, leaving out what is unknown.
    fn render(&self) -> String {
        if self.file.is_empty() {
            return self.message.clone();
        }
        let mut out = self.file.clone();
        if let Some(Pos { line, column }) = self.pos {
            out.push_str(&format!(":{line}:{column}"));
        }
        if !self.path.is_empty() {
            out.push_str(": ");
            out.push_str(&self.path);
        }
        format!("{out}: {}", self.message)
    }
}

/// A git reference resolved while loading (the git source and every `!external`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// `host/owner/name` (never with credentials).
    pub repo: String,
    pub git_ref: String,
    pub sha: String,
}

/// Values of a workspace's layered `.env`: secret. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvMap(pub BTreeMap<String, String>);

impl std::fmt::Debug for EnvMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// One workspace the template asks for, with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredWorkspace {
    /// Display names from the root down to this workspace.
    pub tree_path: Vec<String>,
    /// Identity: the slugs of `tree_path` joined by `/` (unique in the plan).
    pub key: String,
    /// Key of the parent, None for roots.
    pub parent_key: Option<String>,
    pub display_name: String,
    pub role: Option<String>,
    pub runtime: String,
    pub tier: Option<i32>,
    pub model: Option<String>,
    /// files_dir relative to the template root (normalised, inside it).
    pub files_dir: Option<String>,
    /// Final plugin list: defaults ∪ own, minus `!name` / `-name` opt-outs.
    pub plugins: Vec<String>,
    pub system_prompt: Option<String>,
    pub initial_prompt: Option<String>,
    pub idle_prompt: Option<String>,
    pub idle_interval_seconds: Option<i64>,
    pub category_routing: BTreeMap<String, serde_json::Value>,
    /// Schedules that passed (invalid cron or empty prompt: see `schedules_skipped`).
    pub schedules: Vec<crate::resources::ScheduleSpec>,
    /// `file:line: path: schedule "x" skipped: why`.
    pub schedules_skipped: Vec<String>,
    /// Channels that resolved; a `configFrom` with an empty name means the workspace's env
    /// Secret (ADR 0047).
    pub channels: Vec<crate::resources::ChannelSpec>,
    /// `file:line: path: channel telegram skipped: why`.
    pub channels_skipped: Vec<String>,
    /// The host dir to bind at `/workspace`, expanded and checked; None: no bind (access
    /// `none`, or the dir expanded to nothing).
    pub workspace_dir: Option<String>,
    /// `read-only` or `read-write` when `workspace_dir` is bound; None otherwise.
    pub workspace_access: Option<String>,
    pub url: Option<String>,
    pub max_concurrent_tasks: Option<i32>,
    pub canvas: Option<Canvas>,
    /// The top level's, the defaults' and the workspace's own requirements.
    pub required_env: Vec<Requirement>,
    /// The top level's and the workspace's recommendations (warn-only).
    pub recommended_env: Vec<Requirement>,
    /// Layered `.env` (persona → org root → files_dir), later wins.
    pub env: EnvMap,
    /// Where it is defined, for messages: `file: yaml path`.
    pub origin: String,
    /// Defined in git (a git source or an `!external`), or given values from git: the
    /// template policy's git limits apply (ADR 0039).
    pub from_git: bool,
}

/// A loaded template: what to create, in tree order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    pub description: String,
    /// Spawning workspaces, parents before children.
    pub workspaces: Vec<DesiredWorkspace>,
    /// Every workspace in the tree, `spawning: false` subtrees included.
    pub total: usize,
    /// Workspaces left out by `spawning: false` (the subtree roots and their descendants).
    pub skipped: usize,
    /// The git source and every `!external`, in the order they were resolved.
    pub revisions: Vec<Revision>,
    /// `!external`s that could not be resolved offline (template listing only).
    pub unresolved_externals: usize,
    /// Tolerated problems (unknown keys, skipped schedules and channels), each naming file
    /// and path.
    pub warnings: Vec<String>,
    /// `global_memories:`, seeded on the first root workspace.
    pub global_memories: Vec<GlobalMemory>,
}

impl Plan {
    /// Every requirement of the spawning workspaces, rendered (`NAME` or `A|B`), sorted.
    pub fn required_env(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .workspaces
            .iter()
            .flat_map(|w| w.required_env.iter().map(Requirement::render))
            .collect();
        set.into_iter().collect()
    }

    /// Every recommendation of the spawning workspaces, rendered, sorted.
    pub fn recommended_env(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .workspaces
            .iter()
            .flat_map(|w| w.recommended_env.iter().map(Requirement::render))
            .collect();
        set.into_iter().collect()
    }

    /// Every skipped schedule and channel, in tree order.
    pub fn skipped_entries(&self) -> impl Iterator<Item = &String> {
        self.workspaces
            .iter()
            .flat_map(|w| w.schedules_skipped.iter().chain(w.channels_skipped.iter()))
    }
}

/// Loads a template from `source` and plans it: parse, expand, merge defaults, read env files.
pub fn load_plan(opts: &Options, source: &Source) -> Result<Plan, TemplateError> {
    let loaded = node::load(opts, source)?;
    let tmpl = schema::parse(&loaded.root)?;
    let mut plan = plan::build(opts, &tmpl, &loaded)?;
    plan.revisions = loaded.revisions;
    plan.unresolved_externals = loaded.unresolved_externals;
    plan.warnings.extend(tmpl.warnings);
    Ok(plan)
}

/// The env preflight of a template before any OrgImport exists (what the canvas shim answers
/// with 412): loads `source`, then checks it against `available` — the names with a non-empty
/// value in the namespace's `molecule-global-secrets`.
pub fn check_env(
    opts: &Options,
    source: &Source,
    available: &BTreeSet<String>,
) -> Result<Preflight, TemplateError> {
    Ok(preflight(&load_plan(opts, source)?, available))
}

/// Why [`read_limited`] gave no content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file holds more than the limit: at most `limit + 1` bytes were read.
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the file could not be read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the file at `path`, refusing it once more than `limit` bytes arrive: the size is
/// enforced while reading (a file that grows after a size check, or a huge sparse file, is
/// never read whole). Symlinks are followed; callers confine the path first.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::File::open(path)?;
    read_limited_from(file, limit)
}

/// [`read_limited`] over any reader.
pub fn read_limited_from(reader: impl std::io::Read, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let mut out = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(out)
}

/// Lexically normalises `rel` (no filesystem access): `.` dropped, `..` pops; None when it is
/// absolute or climbs above its start.
pub(crate) fn normalize_rel(rel: &Path) -> Option<PathBuf> {
    let mut out: Vec<std::ffi::OsString> = vec![];
    for c in rel.components() {
        match c {
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

/// `rel` joined to `base` (both relative to the same root), normalised; None if it climbs
/// above the root.
pub(crate) fn join_rel(base: &Path, rel: &Path) -> Option<PathBuf> {
    if rel.is_absolute() {
        return None;
    }
    normalize_rel(&base.join(rel))
}

/// A relative path as a `/`-separated string.
pub(crate) fn slash(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Resolves `rel` (relative to `root`) on disk: its canonical path must stay inside the
/// canonical `root` — symlinks are resolved, and one whose target leaves the root is refused.
pub(crate) fn confined(root: &Path, rel: &Path) -> Result<PathBuf, Confinement> {
    let canon_root = root.canonicalize().map_err(|_| Confinement::Missing)?;
    let target = root
        .join(rel)
        .canonicalize()
        .map_err(|_| Confinement::Missing)?;
    if target.starts_with(&canon_root) {
        Ok(target)
    } else {
        Err(Confinement::Escapes)
    }
}

/// Why a path could not be resolved inside its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Confinement {
    Missing,
    Escapes,
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Fixture trees for the unit tests: files written into a temp dir.
    use std::path::{Path, PathBuf};

    pub struct Tree {
        pub dir: tempfile::TempDir,
    }

    impl Tree {
        pub fn new(files: &[(&str, &str)]) -> Tree {
            let t = Tree {
                dir: tempfile::tempdir().expect("tempdir"),
            };
            std::fs::create_dir_all(t.root()).expect("root");
            for (p, c) in files {
                t.write(p, c);
            }
            t
        }
        /// The template root (a subdirectory, so tests can put things beside it).
        pub fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }
        pub fn write(&self, rel: &str, content: &str) {
            let p = self.root().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, content).expect("write");
        }
        pub fn outside(&self) -> &Path {
            self.dir.path()
        }
        pub fn options(&self) -> super::Options {
            super::Options {
                root: self.root(),
                external: super::ExternalConfig::for_root(&self.root()),
                persona_root: None,
                process_env: false,
            }
        }
        pub fn plan(&self, dir: &str) -> Result<super::Plan, super::TemplateError> {
            super::load_plan(&self.options(), &super::Source::Dir(dir.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_and_path() {
        let e = TemplateError::new(
            ErrorKind::Invalid,
            "org/teams.yaml",
            "workspaces[1].tier",
            "expected an integer 1-4",
        );
        assert_eq!(
            e.to_string(),
            "org/teams.yaml: workspaces[1].tier: expected an integer 1-4"
        );
        assert_eq!(e.category(), "InvalidTemplate");
        assert!(!e.is_transient());
        let e = e.at(Some(Pos {
            line: 7,
            column: 11,
        }));
        assert_eq!(
            e.to_string(),
            "org/teams.yaml:7:11: workspaces[1].tier: expected an integer 1-4"
        );
    }

    #[test]
    fn relative_paths_normalise_without_escaping() {
        assert_eq!(
            normalize_rel(Path::new("a/./b/../c")),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(normalize_rel(Path::new("../a")), None);
        assert_eq!(normalize_rel(Path::new("/etc")), None);
        assert_eq!(
            join_rel(Path::new("org"), Path::new("../shared/x")),
            Some(PathBuf::from("shared/x"))
        );
        assert_eq!(join_rel(Path::new("org"), Path::new("../../x")), None);
    }

    #[test]
    fn the_example_org_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/org-templates");
        let opts = Options {
            external: ExternalConfig::for_root(&root),
            root,
            persona_root: None,
            process_env: false,
        };
        let p = load_plan(&opts, &Source::Dir("research-lab".into())).expect("example");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let keys: Vec<&str> = p.workspaces.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "lab-lead",
                "lab-lead/research-lead",
                "lab-lead/research-lead/analyst",
                "lab-lead/research-lead/writer",
                "lab-lead/reviewer"
            ]
        );
        assert_eq!((p.total, p.skipped), (7, 2));
        let by = |k: &str| p.workspaces.iter().find(|w| w.key.ends_with(k)).expect(k);
        assert_eq!(by("reviewer").plugins, ["hello-skills"]);
        assert_eq!(by("analyst").env.0["REPORT_STYLE"], "tables");
        assert_eq!(by("writer").env.0["REPORT_STYLE"], "brief");
        assert_eq!(
            by("analyst").files_dir.as_deref(),
            Some("research-lab/research/analyst")
        );
        assert!(by("writer").idle_prompt.is_some());
        let listed = list_templates(&opts.root);
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].workspaces, listed[0].spawning), (7, 5));
    }

    #[test]
    fn reads_stop_past_the_limit() {
        /// An endless reader that counts what was taken from it.
        struct Endless(u64);
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0 += buf.len() as u64;
                buf.fill(b'x');
                Ok(buf.len())
            }
        }
        let mut r = Endless(0);
        let e = read_limited_from(&mut r, 1000).expect_err("endless");
        assert!(matches!(e, ReadError::TooLarge(1000)), "{e}");
        assert!(r.0 <= 1001 + 8192, "read {} bytes", r.0);
        assert_eq!(read_limited_from(&b"12345"[..], 5).expect("fits"), b"12345");
        assert!(read_limited_from(&b"123456"[..], 5).is_err());
    }

    #[test]
    fn env_map_debug_hides_values() {
        let m = EnvMap([("TOKEN".to_string(), "s3cret".to_string())].into());
        let d = format!("{m:?}");
        assert!(d.contains("TOKEN") && !d.contains("s3cret"), "{d}");
    }
}
