//! From a parsed template to the flat plan: defaults merge and plugin union with opt-outs,
//! `spawning: false` subtrees counted but not emitted, identity by tree position, files_dir
//! confinement (ADR 0011), prompt files and the layered env.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::node::Loaded;
use super::schema::{Defaults, OrgTemplate, PluginEntry, Prompt, Requirement, WorkspaceDef};
use super::vars::{self, Lookup};
use super::{
    Confinement, DesiredWorkspace, ErrorKind, MAX_AUX_FILE_BYTES, Options, Plan, TemplateError,
    channels, confined, env, join_rel, schedules, slash,
};

/// Idle interval when an idle prompt is set and no interval is given (as in the original).
pub const DEFAULT_IDLE_INTERVAL_SECONDS: i64 = 600;

/// The slug of a workspace name: lowercase letters and digits, other runs become `-`.
pub(crate) fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// Longest workspace name this module produces (its Secret adds a suffix).
pub fn max_name_len() -> usize {
    200
}

/// The Workspace name of a tree key in an import: `<org>.<slug>.<slug>…` (slugs never contain
/// `.`, so distinct keys give distinct names); cut with a hash suffix past [`max_name_len`].
pub fn workspace_name(org: &str, key: &str) -> String {
    let full = format!("{org}.{}", key.replace('/', "."));
    if full.len() <= max_name_len() {
        return full;
    }
    let keep = max_name_len() - 9;
    let mut cut = full[..keep].trim_end_matches(['-', '.']).to_string();
    cut.push('-');
    cut.push_str(&short_hash(&full));
    cut
}

/// A label value for a tree key: slugs joined by `.`, at most 63 characters.
pub fn tree_label(key: &str) -> String {
    let full = key.replace('/', ".");
    if full.len() <= 63 {
        return full;
    }
    let mut cut = full[..54].trim_end_matches(['-', '.']).to_string();
    cut.push('-');
    cut.push_str(&short_hash(&full));
    cut
}

/// Defaults ∪ own, minus opt-outs, in order (defaults first), without duplicates.
pub(crate) fn merge_plugins(defaults: &[PluginEntry], own: &[PluginEntry]) -> Vec<String> {
    let removed = |n: &str| own.iter().any(|p| p.opt_out && p.name == n);
    let mut out: Vec<String> = vec![];
    for p in defaults.iter().chain(own.iter()) {
        if p.opt_out || removed(&p.name) || out.contains(&p.name) {
            continue;
        }
        out.push(p.name.clone());
    }
    out
}

struct Builder<'a> {
    opts: &'a Options,
    defaults: &'a Defaults,
    /// The top level's `required_env` and `recommended_env`.
    top_required: &'a [Requirement],
    top_recommended: &'a [Requirement],
    /// The org root `.env`, shared by every workspace.
    org_env: BTreeMap<String, String>,
    out: Vec<DesiredWorkspace>,
    skipped: usize,
}

/// Builds the plan.
pub(crate) fn build(
    opts: &Options,
    t: &OrgTemplate,
    loaded: &Loaded,
) -> Result<Plan, TemplateError> {
    let mut b = Builder {
        opts,
        defaults: &t.defaults,
        top_required: &t.required_env,
        top_recommended: &t.recommended_env,
        org_env: env::org_root(opts, &loaded.org_dir_rel)?,
        out: vec![],
        skipped: 0,
    };
    b.level(&t.workspaces, None)?;
    let warnings = b
        .out
        .iter()
        .flat_map(|w| w.schedules_skipped.iter().chain(&w.channels_skipped))
        .cloned()
        .collect();
    Ok(Plan {
        name: t
            .name
            .clone()
            .unwrap_or_else(|| loaded.default_name.clone()),
        description: t.description.clone(),
        workspaces: b.out,
        total: t.total,
        skipped: b.skipped,
        revisions: vec![],
        unresolved_externals: 0,
        warnings,
        global_memories: t.global_memories.clone(),
    })
}

impl Builder<'_> {
    fn level(
        &mut self,
        defs: &[WorkspaceDef],
        parent: Option<(&str, &[String])>,
    ) -> Result<(), TemplateError> {
        let mut seen: BTreeMap<String, &WorkspaceDef> = BTreeMap::new();
        for d in defs {
            let s = slug(&d.name);
            if s.is_empty() {
                return Err(d.loc.err(
                    ErrorKind::Invalid,
                    format!("workspace name {:?} needs a letter or digit", d.name),
                ));
            }
            if let Some(first) = seen.get(&s) {
                return Err(d.loc.err(
                    ErrorKind::Duplicate,
                    format!(
                        "duplicate sibling name {:?} (same as {:?} at {})",
                        d.name,
                        first.name,
                        first.loc.display()
                    ),
                ));
            }
            seen.insert(s, d);
        }
        for d in defs {
            if !d.spawning {
                self.skipped += d.size();
                continue;
            }
            let key = match parent {
                Some((pk, _)) => format!("{pk}/{}", slug(&d.name)),
                None => slug(&d.name),
            };
            let mut tree_path: Vec<String> = parent.map(|(_, p)| p.to_vec()).unwrap_or_default();
            tree_path.push(d.name.clone());
            let w = self.desired(
                d,
                key.clone(),
                parent.map(|(k, _)| k.to_string()),
                tree_path.clone(),
            )?;
            self.out.push(w);
            self.level(&d.children, Some((&key, &tree_path)))?;
        }
        Ok(())
    }

    fn desired(
        &self,
        d: &WorkspaceDef,
        key: String,
        parent_key: Option<String>,
        tree_path: Vec<String>,
    ) -> Result<DesiredWorkspace, TemplateError> {
        let df = self.defaults;
        let files_dir = match &d.files_dir {
            Some((fd, loc)) => Some(self.files_dir(fd, loc)?),
            None => None,
        };
        // A workspace's own prompt file is relative to its files_dir; a defaults' one to the
        // org root (ADR 0047).
        let own_base = files_dir.as_deref();
        let prompt = |own: Option<&Prompt>, dflt: Option<&Prompt>| match own {
            Some(p) => self.prompt(Some(p), own_base),
            None => self.prompt(dflt, None),
        };
        let idle_prompt = prompt(d.idle_prompt.as_ref(), df.idle_prompt.as_ref())?;
        let initial_prompt = prompt(d.initial_prompt.as_ref(), df.initial_prompt.as_ref())?;
        let idle_interval_seconds = d
            .idle_interval_seconds
            .or(df.idle_interval_seconds)
            .or(idle_prompt.as_ref().map(|_| DEFAULT_IDLE_INTERVAL_SECONDS));
        let mut category_routing = df.category_routing.clone();
        category_routing.extend(d.category_routing.clone());
        let mut required_env: Vec<Requirement> = vec![];
        for r in self
            .top_required
            .iter()
            .chain(&df.required_env)
            .chain(&d.required_env)
        {
            if !required_env.contains(r) {
                required_env.push(r.clone());
            }
        }
        let mut recommended_env: Vec<Requirement> = vec![];
        for r in self.top_recommended.iter().chain(&d.recommended_env) {
            if !recommended_env.contains(r) && !required_env.contains(r) {
                recommended_env.push(r.clone());
            }
        }
        let env = env::layered(
            self.opts,
            &self.org_env,
            d.files_dir.as_ref().map(|(fd, _)| fd.as_str()),
            files_dir.as_deref(),
        )?;
        let from_git = d.from_git || df.from_git;
        let lookup = Lookup {
            env: &env,
            process: self.opts.process_env && !from_git,
        };
        let workspace_dir = vars::workspace_dir(
            d.workspace_dir.as_ref(),
            d.workspace_access.as_ref(),
            &lookup,
        )?;
        let workspace_access = workspace_dir
            .as_ref()
            .and(d.workspace_access.as_ref())
            .map(|(a, _)| a.clone());
        let drafts = schedules::parse(&d.schedules)?;
        let texts = drafts
            .iter()
            .map(|s| self.prompt(s.prompt.as_ref(), own_base))
            .collect::<Result<Vec<_>, _>>()?;
        let (schedules, schedules_skipped) = schedules::finish(drafts, texts);
        let (channels, channels_skipped) = channels::resolve(&d.channels, &lookup)?;
        let runtime = if d.external {
            "external".to_string()
        } else {
            d.runtime
                .clone()
                .or_else(|| df.runtime.clone())
                .unwrap_or_else(|| "echo".to_string())
        };
        Ok(DesiredWorkspace {
            tree_path,
            key,
            parent_key,
            display_name: d.name.clone(),
            role: d.role.clone(),
            runtime,
            tier: d.tier.or(df.tier),
            model: d.model.clone().or_else(|| df.model.clone()),
            files_dir,
            plugins: merge_plugins(&df.plugins, &d.plugins),
            system_prompt: d.system_prompt.clone(),
            initial_prompt,
            idle_prompt,
            idle_interval_seconds,
            category_routing,
            schedules,
            schedules_skipped,
            channels,
            channels_skipped,
            workspace_dir,
            workspace_access,
            url: d.url.clone(),
            max_concurrent_tasks: d.max_concurrent_tasks,
            canvas: d.canvas,
            required_env,
            recommended_env,
            env,
            origin: d.loc.display(),
            from_git,
        })
    }

    /// files_dir relative to the scope base → relative to the template root, confined to the
    /// scope (the template root, or the fetched repository) with symlinks resolved (ADR 0011).
    fn files_dir(&self, fd: &str, loc: &super::schema::Loc) -> Result<String, TemplateError> {
        let scope = &loc.file.scope;
        let p = Path::new(fd);
        if p.is_absolute() {
            return Err(loc.err(ErrorKind::Include, "files_dir must be a relative path"));
        }
        let Some(rel) = join_rel(&scope.base_rel, p) else {
            return Err(loc.err(
                ErrorKind::Include,
                format!("files_dir {fd:?} escapes the template root"),
            ));
        };
        // Lexically inside the scope (a fetched repository may not reach into its neighbours).
        let scope_rel = scope
            .confine
            .strip_prefix(&self.opts.root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if !rel.starts_with(&scope_rel) {
            return Err(loc.err(
                ErrorKind::Include,
                format!("files_dir {fd:?} escapes its repository"),
            ));
        }
        let canon = match confined(&scope.confine, rel.strip_prefix(&scope_rel).unwrap_or(&rel)) {
            Ok(c) => c,
            Err(Confinement::Missing) => {
                return Err(loc.err(
                    ErrorKind::Include,
                    format!("files_dir {fd:?} was not found"),
                ));
            }
            Err(Confinement::Escapes) => {
                return Err(loc.err(
                    ErrorKind::Include,
                    format!(
                        "files_dir {fd:?} resolves (through a symlink) outside the template root"
                    ),
                ));
            }
        };
        if !canon.is_dir() {
            return Err(loc.err(
                ErrorKind::Include,
                format!("files_dir {fd:?} is not a directory"),
            ));
        }
        Ok(slash(&rel))
    }

    /// A prompt's text; `*_prompt_file` is relative to `base` (a files_dir relative to the
    /// template root) or else to its file's base (the org root), and confined like files_dir.
    fn prompt(
        &self,
        p: Option<&Prompt>,
        base: Option<&str>,
    ) -> Result<Option<String>, TemplateError> {
        let (path, loc) = match p {
            None => return Ok(None),
            Some(Prompt::Text(t)) => return Ok(Some(t.clone())),
            Some(Prompt::File(path, loc)) => (path, loc),
        };
        let scope = &loc.file.scope;
        let scope_rel = scope
            .confine
            .strip_prefix(&self.opts.root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let base = base.map(Path::new).unwrap_or(&scope.base_rel);
        let rel = join_rel(base, Path::new(path))
            .filter(|r| r.starts_with(&scope_rel))
            .ok_or_else(|| {
                loc.err(
                    ErrorKind::Include,
                    format!("{path:?} escapes the template root"),
                )
            })?;
        let canon = confined(&scope.confine, rel.strip_prefix(&scope_rel).unwrap_or(&rel))
            .map_err(|c| match c {
                Confinement::Missing => {
                    loc.err(ErrorKind::Include, format!("{path:?} was not found"))
                }
                Confinement::Escapes => loc.err(
                    ErrorKind::Include,
                    format!("{path:?} resolves (through a symlink) outside the template root"),
                ),
            })?;
        let meta = std::fs::metadata(&canon)
            .map_err(|_| loc.err(ErrorKind::Include, format!("{path:?} could not be read")))?;
        if meta.len() > MAX_AUX_FILE_BYTES {
            return Err(loc.err(
                ErrorKind::TooLarge,
                format!("{path:?} is larger than {MAX_AUX_FILE_BYTES} bytes"),
            ));
        }
        let unreadable = || {
            loc.err(
                ErrorKind::Include,
                format!("{path:?} is not readable UTF-8 text"),
            )
        };
        // Bounded while reading too: the file may have grown since (ADR 0039).
        let bytes = super::read_limited(&canon, MAX_AUX_FILE_BYTES).map_err(|e| match e {
            super::ReadError::TooLarge(_) => loc.err(
                ErrorKind::TooLarge,
                format!("{path:?} is larger than {MAX_AUX_FILE_BYTES} bytes"),
            ),
            super::ReadError::Io(_) => unreadable(),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| unreadable())?;
        Ok(Some(text))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Tree;
    use super::super::{ErrorKind, Requirement};
    use super::*;

    #[test]
    fn slugs_names_and_labels() {
        assert_eq!(slug("Dev Lead (Core)"), "dev-lead-core");
        assert_eq!(slug("  QA  "), "qa");
        assert_eq!(slug("!!!"), "");
        assert_eq!(
            workspace_name("demo", "lead/research-lead"),
            "demo.lead.research-lead"
        );
        // `a-b` under the root and `b` under `a` never collide.
        assert_ne!(workspace_name("o", "a-b"), workspace_name("o", "a/b"));
        let long_key = ["segment-with-a-long-name"; 12].join("/");
        let n = workspace_name("org", &long_key);
        assert!(n.len() <= max_name_len(), "{}", n.len());
        assert_ne!(n, workspace_name("org", &format!("{long_key}/x")));
        let l = tree_label(&long_key);
        assert!(
            l.len() <= 63 && l.ends_with(|c: char| c.is_ascii_alphanumeric()),
            "{l}"
        );
    }

    #[test]
    fn defaults_and_opt_outs_merge() {
        let t = Tree::new(&[(
            "org/org.yaml",
            r#"
name: Merge
defaults:
  runtime: echo
  tier: 3
  model: default-model
  plugins: [memory, web-search, github]
  required_env: [ORG_KEY]
  idle_prompt: "anything to do?"
workspaces:
  - name: Lead
    plugins: [planner]
    children:
      - name: Reviewer
        runtime: langgraph
        tier: 1
        plugins: ["!web-search", "-github", code-review, memory]
        required_env: [{any_of: [OPENAI_API_KEY, ANTHROPIC_API_KEY]}, ORG_KEY]
      - name: Tagged Opt Out
        plugins:
          - !memory
          - extra
"#,
        )]);
        let p = t.plan("org").expect("plan");
        let by = |n: &str| p.workspaces.iter().find(|w| w.display_name == n).expect(n);
        let lead = by("Lead");
        assert_eq!(lead.plugins, ["memory", "web-search", "github", "planner"]);
        assert_eq!((lead.runtime.as_str(), lead.tier), ("echo", Some(3)));
        assert_eq!(lead.model.as_deref(), Some("default-model"));
        assert_eq!(
            lead.idle_interval_seconds,
            Some(DEFAULT_IDLE_INTERVAL_SECONDS)
        );
        let rev = by("Reviewer");
        assert_eq!(rev.plugins, ["memory", "code-review"]);
        assert_eq!((rev.runtime.as_str(), rev.tier), ("langgraph", Some(1)));
        assert_eq!(
            rev.required_env,
            vec![
                Requirement::Name("ORG_KEY".into()),
                Requirement::AnyOf(vec!["OPENAI_API_KEY".into(), "ANTHROPIC_API_KEY".into()])
            ]
        );
        assert_eq!(
            by("Tagged Opt Out").plugins,
            ["web-search", "github", "extra"]
        );
        assert_eq!(rev.key, "lead/reviewer");
        assert_eq!(rev.parent_key.as_deref(), Some("lead"));
        assert_eq!(rev.tree_path, ["Lead", "Reviewer"]);
    }

    #[test]
    fn spawning_false_is_counted_but_not_emitted() {
        let t = Tree::new(&[(
            "org/org.yaml",
            r#"
workspaces:
  - name: Lead
    children:
      - name: Ops
        spawning: false
        children:
          - name: Oncall
            children: [{name: Pager}]
      - name: Dev
        spawning: true
  - name: Marketing
    spawning: false
"#,
        )]);
        let p = t.plan("org").expect("plan");
        let keys: Vec<&str> = p.workspaces.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["lead", "lead/dev"]);
        assert_eq!((p.total, p.skipped), (6, 4));
    }

    #[test]
    fn duplicate_siblings_are_refused_with_both_places() {
        let t = Tree::new(&[
            (
                "org/org.yaml",
                "workspaces:\n  - name: Lead\n    children:\n      - name: QA\n      - !include qa.yaml\n",
            ),
            ("org/qa.yaml", "name: qa\n"),
        ]);
        let e = t.plan("org").expect_err("dup");
        assert_eq!(e.kind, ErrorKind::Duplicate);
        assert_eq!((e.file.as_str(), e.path.as_str()), ("org/qa.yaml", ""));
        assert!(
            e.message
                .contains("org/org.yaml: workspaces[0].children[0]"),
            "{e}"
        );
        // The same name under different parents is fine.
        let t = Tree::new(&[(
            "org/org.yaml",
            "workspaces:\n  - name: A\n    children: [{name: QA}]\n  - name: B\n    children: [{name: QA}]\n",
        )]);
        assert_eq!(t.plan("org").expect("ok").workspaces.len(), 4);
    }

    #[test]
    fn files_dir_is_confined_like_includes() {
        let t = Tree::new(&[
            (
                "org/org.yaml",
                "workspaces:\n  - name: A\n    files_dir: prompts/a\n    initial_prompt_file: start.md\n",
            ),
            ("org/prompts/a/system.md", "hi"),
            ("org/prompts/a/start.md", "start here"),
            (
                "up/org.yaml",
                "workspaces:\n  - name: A\n    files_dir: ../../x\n",
            ),
            (
                "abs/org.yaml",
                "workspaces:\n  - name: A\n    files_dir: /etc\n",
            ),
            (
                "sib/org.yaml",
                "workspaces:\n  - name: A\n    files_dir: ../org/prompts/a\n",
            ),
            (
                "link/org.yaml",
                "workspaces:\n  - name: A\n    files_dir: alias\n",
            ),
            (
                "out/org.yaml",
                "workspaces:\n  - name: A\n    files_dir: leak\n",
            ),
            (
                "miss/org.yaml",
                "workspaces:\n  - name: A\n    files_dir: nope\n",
            ),
        ]);
        let p = t.plan("org").expect("ok");
        assert_eq!(p.workspaces[0].files_dir.as_deref(), Some("org/prompts/a"));
        assert_eq!(
            p.workspaces[0].initial_prompt.as_deref(),
            Some("start here")
        );
        for (dir, msg) in [
            ("up", "escapes the template root"),
            ("abs", "must be a relative path"),
            ("miss", "was not found"),
        ] {
            let e = t.plan(dir).expect_err(dir);
            assert_eq!(
                (e.kind, e.path.as_str()),
                (ErrorKind::Include, "workspaces[0].files_dir"),
                "{dir}"
            );
            assert!(e.message.contains(msg), "{dir}: {e}");
        }
        assert_eq!(
            t.plan("sib").expect("inside").workspaces[0]
                .files_dir
                .as_deref(),
            Some("org/prompts/a")
        );
        // A files_dir that is itself a symlink inside the root ships (the original allows it) …
        std::os::unix::fs::symlink(t.root().join("org/prompts/a"), t.root().join("link/alias"))
            .expect("ln");
        assert_eq!(
            t.plan("link").expect("alias").workspaces[0]
                .files_dir
                .as_deref(),
            Some("link/alias")
        );
        // … one pointing outside the root does not.
        std::os::unix::fs::symlink(t.outside(), t.root().join("out/leak")).expect("ln");
        let e = t.plan("out").expect_err("leak");
        assert!(e.message.contains("outside the template root"), "{e}");
    }
}
