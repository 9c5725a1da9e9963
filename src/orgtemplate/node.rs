//! Reading template files and expanding `!include` and `!external` (ADR 0011) into one tree
//! whose every value remembers the file and YAML path it came from, so that later steps can
//! name both in their errors.
//!
//! Confinement: an included path is resolved relative to the including file, lexically
//! normalised, and must stay under its scope's root (the template root, or the checkout of a
//! fetched repository); then its canonical path (symlinks resolved) must too. A directory
//! symlink whose target is inside the root works; one pointing outside is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::external::{self, ExternalRef};
use super::raw::{self, Raw, Value};
use super::{
    CACHE_DIR, Confinement, ErrorKind, MAX_EXTERNAL_DEPTH, MAX_FILE_BYTES, MAX_INCLUDE_DEPTH,
    MAX_TOTAL_BYTES, ORG_FILE, Options, Pos, Revision, Source, TemplateError, confined, join_rel,
    normalize_rel, slash,
};

/// Deepest nesting of YAML values across all included files.
const MAX_NESTING: usize = 256;

/// A subtree that shares one confinement root and one files_dir base: the template root, or
/// one fetched repository.
#[derive(Debug)]
pub(crate) struct Scope {
    /// Directory every path of this subtree is confined to.
    pub confine: PathBuf,
    /// files_dir values are relative to this dir (relative to the template root).
    pub base_rel: PathBuf,
    /// Prefix of file names in messages (`""` or `host/owner/repo@sha12/`).
    pub display: String,
}

/// The file a value came from.
#[derive(Debug)]
pub(crate) struct FileInfo {
    /// Name in messages.
    pub name: String,
    pub scope: Arc<Scope>,
}

/// A YAML value with its origin.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub file: Arc<FileInfo>,
    /// YAML path inside `file`, e.g. `workspaces[0].children[1]`.
    pub path: String,
    /// Where in `file` the value was written (None for a value made up while loading).
    pub pos: Option<Pos>,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
    /// A tag this step does not expand (`!name` plugin opt-outs; anything else is an error
    /// where it is used).
    Tagged(String, Box<Node>),
    /// An `!external` that could not be resolved offline (template listing only).
    Unresolved,
}

impl Node {
    pub fn err(&self, kind: ErrorKind, message: impl Into<String>) -> TemplateError {
        TemplateError::new(kind, self.file.name.clone(), self.path.clone(), message).at(self.pos)
    }

    pub fn invalid(&self, message: impl Into<String>) -> TemplateError {
        self.err(ErrorKind::Invalid, message)
    }

    /// What the value is, for "expected X, got Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Tagged(..) => "a tagged value",
            Kind::Unresolved => "an unresolved !external",
        }
    }

    fn expected(&self, what: &str) -> TemplateError {
        if let Kind::Tagged(tag, _) = &self.kind {
            return self.err(
                ErrorKind::UnknownTag,
                format!("unknown tag {tag} (only !include and !external are supported)"),
            );
        }
        self.invalid(format!("expected {what}, got {}", self.type_name()))
    }

    pub fn map(&self) -> Result<&[(String, Node)], TemplateError> {
        match &self.kind {
            Kind::Map(m) => Ok(m),
            _ => Err(self.expected("a mapping")),
        }
    }

    pub fn seq(&self) -> Result<&[Node], TemplateError> {
        match &self.kind {
            Kind::Seq(s) => Ok(s),
            Kind::Null => Ok(&[]),
            _ => Err(self.expected("a list")),
        }
    }

    /// A string; numbers are accepted and printed (YAML reads `model: 4` as a number).
    pub fn string(&self) -> Result<String, TemplateError> {
        match &self.kind {
            Kind::Str(s) => Ok(s.clone()),
            Kind::Int(i) => Ok(i.to_string()),
            Kind::Float(f) => Ok(f.to_string()),
            _ => Err(self.expected("a string")),
        }
    }

    pub fn int(&self) -> Result<i64, TemplateError> {
        match &self.kind {
            Kind::Int(i) => Ok(*i),
            _ => Err(self.expected("an integer")),
        }
    }

    pub fn number(&self) -> Result<f64, TemplateError> {
        match &self.kind {
            Kind::Int(i) => Ok(*i as f64),
            Kind::Float(f) => Ok(*f),
            _ => Err(self.expected("a number")),
        }
    }

    pub fn bool(&self) -> Result<bool, TemplateError> {
        match &self.kind {
            Kind::Bool(b) => Ok(*b),
            _ => Err(self.expected("true or false")),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }

    /// Whether the value was read from a git checkout (a git source or an `!external`): the
    /// stricter template policy applies to it (ADR 0039).
    pub fn is_from_git(&self) -> bool {
        !self.file.scope.display.is_empty()
    }

    /// Free-form data (schedules, channels, routing values) as JSON; tags are refused.
    pub fn to_json(&self) -> Result<serde_json::Value, TemplateError> {
        use serde_json::Value as J;
        Ok(match &self.kind {
            Kind::Null => J::Null,
            Kind::Bool(b) => J::Bool(*b),
            Kind::Int(i) => J::from(*i),
            Kind::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Kind::Str(s) => J::String(s.clone()),
            Kind::Seq(s) => J::Array(s.iter().map(Node::to_json).collect::<Result<_, _>>()?),
            Kind::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), v.to_json()?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            Kind::Tagged(..) | Kind::Unresolved => return Err(self.expected("plain data")),
        })
    }
}

/// A loaded, fully expanded template.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub root: Node,
    pub revisions: Vec<Revision>,
    pub unresolved_externals: usize,
    /// The org dir relative to the template root (its `.env` is the org root layer).
    pub org_dir_rel: PathBuf,
    /// Name of the org when org.yaml has none: the dir name, or `inline`.
    pub default_name: String,
}

/// Loads and expands the template named by `source`.
pub(crate) fn load(opts: &Options, source: &Source) -> Result<Loaded, TemplateError> {
    let mut ex = Expander {
        opts,
        total: 0,
        stack: vec![],
        revisions: vec![],
        unresolved: 0,
    };
    let (root, org_dir_rel, default_name) = match source {
        Source::Dir(dir) => {
            let rel = checked_dir(dir)?;
            let not_found = || {
                TemplateError::new(
                    ErrorKind::NotFound,
                    "",
                    "",
                    "the org template directory was not found under the template root",
                )
            };
            match confined(&opts.root, &rel) {
                Ok(p) if p.is_dir() => {}
                Ok(_) | Err(Confinement::Missing) => return Err(not_found()),
                Err(Confinement::Escapes) => {
                    return Err(TemplateError::new(
                        ErrorKind::Include,
                        "",
                        "",
                        "the org template directory resolves outside the template root",
                    ));
                }
            }
            let file = [ORG_FILE, "org.yml"]
                .iter()
                .map(|f| rel.join(f))
                .find(|p| opts.root.join(p).is_file())
                .ok_or_else(|| {
                    TemplateError::new(
                        ErrorKind::NotFound,
                        slash(&rel.join(ORG_FILE)),
                        "",
                        "the org template has no org.yaml",
                    )
                })?;
            let scope = Arc::new(Scope {
                confine: opts.root.clone(),
                base_rel: rel.clone(),
                display: String::new(),
            });
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (ex.file(&scope, &file, 0, 0, None)?, rel, name)
        }
        Source::Inline(text) => {
            if text.len() as u64 > MAX_FILE_BYTES {
                return Err(TemplateError::new(
                    ErrorKind::TooLarge,
                    "(inline template)",
                    "",
                    format!("the inline template is larger than {MAX_FILE_BYTES} bytes"),
                ));
            }
            ex.total = text.len() as u64;
            let scope = Arc::new(Scope {
                confine: opts.root.clone(),
                base_rel: PathBuf::new(),
                display: String::new(),
            });
            let info = Arc::new(FileInfo {
                name: "(inline template)".into(),
                scope,
            });
            let root = ex.parse_text(&info, Path::new(""), text, 0, 0)?;
            (root, PathBuf::new(), "inline".to_string())
        }
        Source::Git(r) => {
            let fetched = external::fetch(&opts.external, r)?.ok_or_else(|| {
                TemplateError::new(
                    ErrorKind::Fetch,
                    "",
                    "",
                    "the git source is not in the cache and fetching is disabled",
                )
            })?;
            ex.revisions.push(Revision {
                repo: fetched.repo.clone(),
                git_ref: r.git_ref.clone(),
                sha: fetched.sha.clone(),
            });
            let scope = ex.external_scope(&fetched)?;
            let mut file = normalize_rel(Path::new(&r.path)).unwrap_or_default();
            if scope.confine.join(&file).is_dir() {
                file = file.join(ORG_FILE);
            }
            let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
            let scope = Arc::new(Scope {
                base_rel: scope.base_rel.join(&dir),
                confine: scope.confine.clone(),
                display: scope.display.clone(),
            });
            let base = scope.base_rel.clone();
            let name = r.repo.rsplit('/').next().unwrap_or("").to_string();
            (ex.file(&scope, &file, 0, 0, None)?, base, name)
        }
    };
    Ok(Loaded {
        root,
        revisions: ex.revisions,
        unresolved_externals: ex.unresolved,
        org_dir_rel,
        default_name,
    })
}

/// Validates a source dir: relative, no `..`, no hidden components (the cache is hidden).
fn checked_dir(dir: &str) -> Result<PathBuf, TemplateError> {
    let bad = |why: &str| TemplateError::new(ErrorKind::Include, "", "", why.to_string());
    let p = Path::new(dir.trim());
    if dir.trim().is_empty() {
        return Err(bad("the org template directory is empty"));
    }
    if p.is_absolute() {
        return Err(bad(
            "the org template directory must be relative to the template root",
        ));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) if !s.to_string_lossy().starts_with('.') => out.push(s),
            std::path::Component::CurDir => {}
            _ => {
                return Err(bad(
                    "the org template directory must stay inside the template root (no `..` or hidden dirs)",
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("the org template directory is empty"));
    }
    Ok(out)
}

struct Expander<'a> {
    opts: &'a Options,
    /// Bytes read so far.
    total: u64,
    /// Canonical paths and names of the files being expanded (cycle detection).
    stack: Vec<(PathBuf, String)>,
    revisions: Vec<Revision>,
    unresolved: usize,
}

/// Where an `!include` / `!external` was written, for errors about it.
type At<'x> = Option<(&'x FileInfo, &'x str, Option<Pos>)>;

fn at_err(at: At<'_>, kind: ErrorKind, message: String) -> TemplateError {
    match at {
        Some((f, p, pos)) => {
            TemplateError::new(kind, f.name.clone(), p.to_string(), message).at(pos)
        }
        None => TemplateError::new(kind, "", "", message),
    }
}

impl Expander<'_> {
    /// Reads and expands the file `rel` (relative to `scope.confine`, already normalised).
    fn file(
        &mut self,
        scope: &Arc<Scope>,
        rel: &Path,
        depth: usize,
        ext_depth: usize,
        at: At<'_>,
    ) -> Result<Node, TemplateError> {
        let name = format!("{}{}", scope.display, slash(rel));
        let canon = match confined(&scope.confine, rel) {
            Ok(p) => p,
            Err(Confinement::Missing) => {
                return Err(at_err(
                    at,
                    if at.is_some() {
                        ErrorKind::Include
                    } else {
                        ErrorKind::NotFound
                    },
                    format!("{name} was not found"),
                ));
            }
            Err(Confinement::Escapes) => {
                return Err(at_err(
                    at,
                    ErrorKind::Include,
                    format!("{name} resolves (through a symlink) outside the template root"),
                ));
            }
        };
        if let Some(pos) = self.stack.iter().position(|(p, _)| *p == canon) {
            let mut chain: Vec<&str> = self.stack[pos..].iter().map(|(_, n)| n.as_str()).collect();
            chain.push(&name);
            return Err(at_err(
                at,
                ErrorKind::Include,
                format!("include cycle: {}", chain.join(" → ")),
            ));
        }
        if depth > MAX_INCLUDE_DEPTH {
            return Err(at_err(
                at,
                ErrorKind::Include,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH} levels"),
            ));
        }
        let meta = std::fs::metadata(&canon)
            .map_err(|_| at_err(at, ErrorKind::Include, format!("{name} could not be read")))?;
        if !meta.is_file() {
            return Err(at_err(
                at,
                ErrorKind::Include,
                format!("{name} is not a file"),
            ));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(TemplateError::new(
                ErrorKind::TooLarge,
                name,
                "",
                format!("the file is larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        self.total += meta.len();
        if self.total > MAX_TOTAL_BYTES {
            return Err(TemplateError::new(
                ErrorKind::TooLarge,
                name,
                "",
                format!("the template's files exceed {MAX_TOTAL_BYTES} bytes in total"),
            ));
        }
        // Bounded while reading too: the file may have grown since the check (ADR 0039).
        let bytes = super::read_limited(&canon, MAX_FILE_BYTES).map_err(|e| match e {
            super::ReadError::TooLarge(_) => TemplateError::new(
                ErrorKind::TooLarge,
                name.clone(),
                "",
                format!("the file is larger than {MAX_FILE_BYTES} bytes"),
            ),
            super::ReadError::Io(_) => {
                at_err(at, ErrorKind::Include, format!("{name} could not be read"))
            }
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            TemplateError::new(ErrorKind::InvalidYaml, name.clone(), "", "not UTF-8 text")
        })?;
        let info = Arc::new(FileInfo {
            name: name.clone(),
            scope: scope.clone(),
        });
        self.stack.push((canon, name));
        let node = self.parse_text(&info, rel, &text, depth, ext_depth);
        self.stack.pop();
        node
    }

    fn parse_text(
        &mut self,
        info: &Arc<FileInfo>,
        rel: &Path,
        text: &str,
        depth: usize,
        ext_depth: usize,
    ) -> Result<Node, TemplateError> {
        let value = raw::parse(text).map_err(|e| {
            TemplateError::new(
                ErrorKind::InvalidYaml,
                info.name.clone(),
                "",
                format!("invalid YAML: {}", raw::error_message(&e)),
            )
            .at(e.location().and_then(Pos::of))
        })?;
        let ctx = FileCtx {
            info,
            rel,
            depth,
            ext_depth,
        };
        self.convert(value, &ctx, String::new(), 0)
    }

    fn convert(
        &mut self,
        v: Raw,
        ctx: &FileCtx<'_>,
        path: String,
        nesting: usize,
    ) -> Result<Node, TemplateError> {
        let pos = Pos::of(v.referenced);
        let node = |kind| Node {
            kind,
            file: ctx.info.clone(),
            path: path.clone(),
            pos,
        };
        if nesting > MAX_NESTING {
            return Err(TemplateError::new(
                ErrorKind::TooLarge,
                ctx.info.name.clone(),
                path,
                format!("values nest deeper than {MAX_NESTING} levels"),
            )
            .at(pos));
        }
        let (value, tag) = raw::untag(v.value);
        if let Some(tag) = tag {
            return match tag.as_str() {
                "!include" => self.include(value, ctx, &path, pos),
                "!external" => self.external(value, ctx, &path, pos),
                _ => {
                    let inner = self.convert_value(value, ctx, &path, nesting + 1)?;
                    Ok(node(Kind::Tagged(tag, Box::new(node(inner)))))
                }
            };
        }
        Ok(node(self.convert_value(value, ctx, &path, nesting)?))
    }

    /// The untagged part of a value, its children converted.
    fn convert_value(
        &mut self,
        v: Value,
        ctx: &FileCtx<'_>,
        path: &str,
        nesting: usize,
    ) -> Result<Kind, TemplateError> {
        Ok(match v {
            Value::Null => Kind::Null,
            Value::Bool(b) => Kind::Bool(b),
            Value::Int(i) => Kind::Int(i),
            Value::Float(f) => Kind::Float(f),
            Value::Str(s) => Kind::Str(s),
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    out.push(self.convert(item, ctx, format!("{path}[{i}]"), nesting + 1)?);
                }
                Kind::Seq(out)
            }
            Value::Map(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (key, val) in m {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    out.push((key, self.convert(val, ctx, child, nesting + 1)?));
                }
                Kind::Map(out)
            }
        })
    }

    /// `!include <relative path>`: the parsed content of that file, resolved relative to the
    /// including file.
    fn include(
        &mut self,
        v: Value,
        ctx: &FileCtx<'_>,
        path: &str,
        pos: Option<Pos>,
    ) -> Result<Node, TemplateError> {
        let at: At<'_> = Some((ctx.info, path, pos));
        let Value::Str(target) = v else {
            return Err(at_err(
                at,
                ErrorKind::Include,
                "!include takes a relative file path".into(),
            ));
        };
        let target_path = Path::new(target.trim());
        if target.trim().is_empty() {
            return Err(at_err(
                at,
                ErrorKind::Include,
                "!include path is empty".into(),
            ));
        }
        if target_path.is_absolute() {
            return Err(at_err(
                at,
                ErrorKind::Include,
                format!("!include {target:?}: absolute paths are refused"),
            ));
        }
        let dir = ctx.rel.parent().unwrap_or(Path::new(""));
        let Some(rel) = join_rel(dir, target_path) else {
            return Err(at_err(
                at,
                ErrorKind::Include,
                format!("!include {target:?} escapes the template root"),
            ));
        };
        let scope = ctx.info.scope.clone();
        self.file(&scope, &rel, ctx.depth + 1, ctx.ext_depth, at)
    }

    /// `!external {repo, ref, path, url?}`: fetch the repository at ref into the cache and
    /// expand `path` inside it; its files_dir values are relative to the checkout.
    fn external(
        &mut self,
        v: Value,
        ctx: &FileCtx<'_>,
        path: &str,
        pos: Option<Pos>,
    ) -> Result<Node, TemplateError> {
        let at: At<'_> = Some((ctx.info, path, pos));
        let refused = |msg: String| at_err(at, ErrorKind::ExternalRefused, msg);
        let Value::Map(m) = v else {
            return Err(refused(
                "!external takes a mapping {repo, ref, path, url?}".into(),
            ));
        };
        let mut r = ExternalRef::default();
        for (k, val) in m {
            let (Value::Str(val), None) = raw::untag(val.value) else {
                return Err(refused(
                    "!external fields repo, ref, path and url must be strings".into(),
                ));
            };
            match k.as_str() {
                "repo" => r.repo = val,
                "ref" => r.git_ref = val,
                "path" => r.path = val,
                "url" => r.url = Some(val),
                other => return Err(refused(format!("!external has an unknown field {other:?}"))),
            }
        }
        if ctx.ext_depth + 1 > MAX_EXTERNAL_DEPTH {
            return Err(refused(format!(
                "!external nests deeper than {MAX_EXTERNAL_DEPTH} levels"
            )));
        }
        let fetched = external::fetch(&self.opts.external, &r).map_err(|mut e| {
            e.file = ctx.info.name.clone();
            e.path = path.to_string();
            e.at(pos)
        })?;
        let Some(fetched) = fetched else {
            self.unresolved += 1;
            return Ok(Node {
                kind: Kind::Unresolved,
                file: ctx.info.clone(),
                path: path.to_string(),
                pos,
            });
        };
        self.revisions.push(Revision {
            repo: fetched.repo.clone(),
            git_ref: r.git_ref.clone(),
            sha: fetched.sha.clone(),
        });
        let scope = Arc::new(self.external_scope(&fetched)?);
        let rel = normalize_rel(Path::new(&r.path)).unwrap_or_default();
        self.file(&scope, &rel, ctx.depth + 1, ctx.ext_depth + 1, at)
    }

    fn external_scope(&self, f: &external::Fetched) -> Result<Scope, TemplateError> {
        let base_rel = f
            .dir
            .strip_prefix(&self.opts.root)
            .map(Path::to_path_buf)
            .map_err(|_| {
                TemplateError::new(
                    ErrorKind::ExternalRefused,
                    "",
                    "",
                    format!("the external cache must be under the template root ({CACHE_DIR})"),
                )
            })?;
        Ok(Scope {
            confine: f.dir.clone(),
            base_rel,
            display: format!("{}@{}/", f.repo, &f.sha[..f.sha.len().min(12)]),
        })
    }
}

/// The file being expanded.
struct FileCtx<'a> {
    info: &'a Arc<FileInfo>,
    /// Its path relative to the scope root.
    rel: &'a Path,
    depth: usize,
    ext_depth: usize,
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Tree;
    use super::super::{ErrorKind, Pos, Source, load_plan};

    fn chain(n: usize) -> Tree {
        // org.yaml includes f1.yaml, f1 includes f2, ... fn holds the workspace list.
        let mut files = vec![(
            "org/org.yaml".to_string(),
            "name: deep\nworkspaces: !include f1.yaml\n".to_string(),
        )];
        for i in 1..n {
            files.push((
                format!("org/f{i}.yaml"),
                format!("!include f{}.yaml\n", i + 1),
            ));
        }
        files.push((format!("org/f{n}.yaml"), "- name: leaf\n".to_string()));
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        Tree::new(&refs)
    }

    #[test]
    fn includes_at_depth_16_succeed_and_17_fail() {
        let ok = chain(16).plan("org").expect("depth 16");
        assert_eq!(ok.workspaces.len(), 1);
        assert_eq!(ok.workspaces[0].display_name, "leaf");
        let e = chain(17).plan("org").expect_err("depth 17");
        assert_eq!(e.kind, ErrorKind::Include);
        assert!(e.message.contains("deeper than 16"), "{e}");
        assert_eq!(e.file, "org/f16.yaml", "{e}");
    }

    #[test]
    fn a_cycle_is_detected_and_named() {
        let t = Tree::new(&[
            ("org/org.yaml", "workspaces:\n  - !include a.yaml\n"),
            (
                "org/a.yaml",
                "name: A\nchildren:\n  - !include sub/b.yaml\n",
            ),
            (
                "org/sub/b.yaml",
                "name: B\nchildren:\n  - !include ../a.yaml\n",
            ),
        ]);
        let e = t.plan("org").expect_err("cycle");
        assert_eq!(e.kind, ErrorKind::Include);
        assert_eq!(
            e.message,
            "include cycle: org/a.yaml → org/sub/b.yaml → org/a.yaml"
        );
        assert_eq!(e.file, "org/sub/b.yaml");
        assert_eq!(e.path, "children[0]");
    }

    #[test]
    fn escapes_and_absolute_includes_are_refused() {
        let t = Tree::new(&[
            (
                "org/org.yaml",
                "workspaces:\n  - !include ../../secret.yaml\n",
            ),
            ("abs/org.yaml", "workspaces:\n  - !include /etc/passwd\n"),
            (
                "up/org.yaml",
                "workspaces:\n  - !include ../shared/w.yaml\n",
            ),
            ("shared/w.yaml", "name: shared\n"),
        ]);
        std::fs::write(t.outside().join("secret.yaml"), "name: leak\n").expect("w");
        let e = t.plan("org").expect_err("escape");
        assert_eq!(
            (e.kind, e.file.as_str(), e.path.as_str()),
            (ErrorKind::Include, "org/org.yaml", "workspaces[0]")
        );
        assert!(e.message.contains("escapes the template root"), "{e}");
        let e = t.plan("abs").expect_err("absolute");
        assert!(e.message.contains("absolute paths are refused"), "{e}");
        // `..` that stays inside the root is fine.
        assert_eq!(t.plan("up").expect("inside").workspaces.len(), 1);
    }

    #[test]
    fn directory_symlinks_inside_work_and_outside_are_refused() {
        let t = Tree::new(&[
            (
                "org/org.yaml",
                "workspaces:\n  - !include linked/lead.yaml\n",
            ),
            (
                "dept/lead.yaml",
                "name: Lead\nchildren:\n  - !include ./qa.yaml\n",
            ),
            ("dept/qa.yaml", "name: QA\n"),
            ("bad/org.yaml", "workspaces:\n  - !include out/w.yaml\n"),
        ]);
        // A sibling department composed in through a symlink, as the seed's dev-lead was.
        std::os::unix::fs::symlink(t.root().join("dept"), t.root().join("org/linked"))
            .expect("symlink");
        let p = t.plan("org").expect("symlink inside the root");
        let names: Vec<&str> = p
            .workspaces
            .iter()
            .map(|w| w.display_name.as_str())
            .collect();
        assert_eq!(names, ["Lead", "QA"]);
        std::fs::create_dir_all(t.outside().join("elsewhere")).expect("mkdir");
        std::fs::write(t.outside().join("elsewhere/w.yaml"), "name: leak\n").expect("w");
        std::os::unix::fs::symlink(t.outside().join("elsewhere"), t.root().join("bad/out"))
            .expect("symlink");
        let e = t.plan("bad").expect_err("symlink outside");
        assert_eq!(e.kind, ErrorKind::Include);
        assert!(e.message.contains("outside the template root"), "{e}");
    }

    #[test]
    fn source_dirs_are_confined_and_not_echoed() {
        let t = Tree::new(&[("org/org.yaml", "workspaces: []\n")]);
        for bad in ["../x", "/etc", ".external-cache/x", ""] {
            let e = t.plan(bad).expect_err(bad);
            assert_eq!(e.kind, ErrorKind::Include, "{bad}: {e}");
        }
        let e = t.plan("missing").expect_err("missing");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(!e.to_string().contains("missing"), "{e}");
        let e = load_plan(&t.options(), &Source::Inline("a: [".into())).expect_err("yaml");
        assert_eq!(e.kind, ErrorKind::InvalidYaml);
        assert_eq!(e.file, "(inline template)");
    }

    #[test]
    fn unknown_tags_and_bad_yaml_name_the_file() {
        let t = Tree::new(&[
            (
                "a/org.yaml",
                "workspaces:\n  - name: x\n    tier: !secret 3\n",
            ),
            ("b/org.yaml", "workspaces:\n  - name: x\n    children: [\n"),
        ]);
        let e = t.plan("a").expect_err("tag");
        assert_eq!(e.kind, ErrorKind::UnknownTag);
        assert_eq!(
            (e.file.as_str(), e.path.as_str()),
            ("a/org.yaml", "workspaces[0].tier")
        );
        assert!(e.message.contains("!secret"), "{e}");
        let e = t.plan("b").expect_err("yaml");
        assert_eq!(e.kind, ErrorKind::InvalidYaml);
        assert_eq!(e.file, "b/org.yaml");
        assert_eq!(e.pos.map(|p| p.line), Some(3), "{e}");
    }

    #[test]
    fn a_type_error_in_an_included_file_names_its_line_and_column() {
        let t = Tree::new(&[
            (
                "org/org.yaml",
                "name: typed\nworkspaces:\n  - !include teams/research.yaml\n",
            ),
            (
                "org/teams/research.yaml",
                "# The research team.\nname: Research\nchildren:\n  - name: Analyst\n    tier: [high]\n",
            ),
        ]);
        let e = t.plan("org").expect_err("tier is a list");
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        assert_eq!(
            (e.file.as_str(), e.path.as_str()),
            ("org/teams/research.yaml", "children[0].tier")
        );
        assert_eq!(
            e.pos,
            Some(Pos {
                line: 5,
                column: 11
            }),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("org/teams/research.yaml:5:11: children[0].tier: "),
            "{e}"
        );
        // A bad `!include` is placed where it was written, in the including file.
        t.write(
            "org/org.yaml",
            "workspaces:\n  - name: a\n  - !include missing.yaml\n",
        );
        let e = t.plan("org").expect_err("missing include");
        assert_eq!(
            (e.file.as_str(), e.pos),
            (
                "org/org.yaml",
                Some(Pos {
                    line: 3,
                    column: 14
                })
            )
        );
    }

    #[test]
    fn oversized_files_are_refused() {
        let big = format!("name: big\ndescription: \"{}\"\n", "x".repeat(600 * 1024));
        let t = Tree::new(&[("big/org.yaml", &big)]);
        let e = t.plan("big").expect_err("big");
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert_eq!(e.file, "big/org.yaml");
        let e = load_plan(&t.options(), &Source::Inline(big)).expect_err("inline");
        assert_eq!(e.kind, ErrorKind::TooLarge);
    }
}
