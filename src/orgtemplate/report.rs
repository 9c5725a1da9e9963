//! `molecule org plan DIR` (ADR 0047): an offline dry run of a template directory, the
//! `kustomize build` of org templates. It loads and plans the template exactly as the importer
//! does (no `!external` is fetched: only the cache is read), and renders the tree, the counts,
//! the warnings and the env that is required and missing. Nothing is created.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{ErrorKind, Options, Plan, Source, TemplateError, load_plan, preflight};

/// Where `org plan` reads a template directory from.
#[derive(Clone, Debug)]
pub struct PlanTarget {
    /// The template root: includes and files_dir are confined to it.
    pub root: PathBuf,
    /// The template dir relative to the root.
    pub dir: String,
}

impl PlanTarget {
    /// `dir` inside `root`, or (without a root) inside its own parent directory.
    pub fn new(dir: &Path, root: Option<&Path>) -> Result<PlanTarget, TemplateError> {
        let missing =
            |what: &str| TemplateError::new(ErrorKind::NotFound, "", "", what.to_string());
        let dir = dir
            .canonicalize()
            .map_err(|_| missing("the template directory was not found"))?;
        let root = match root {
            Some(r) => r
                .canonicalize()
                .map_err(|_| missing("the template root was not found"))?,
            None => dir
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| missing("the template directory has no parent"))?,
        };
        let rel = dir.strip_prefix(&root).map_err(|_| {
            TemplateError::new(
                ErrorKind::Include,
                "",
                "",
                "the template directory is not inside the template root",
            )
        })?;
        Ok(PlanTarget {
            dir: super::slash(rel),
            root,
        })
    }

    /// Load options: the cache only for `!external`, the process env as the last layer.
    pub fn options(&self) -> Options {
        let mut o = Options::with_sources(&self.root, &Default::default());
        o.external.offline = true;
        o.persona_root = None;
        o
    }

    /// Loads and plans the template.
    pub fn plan(&self) -> Result<Plan, TemplateError> {
        load_plan(&self.options(), &Source::Dir(self.dir.clone()))
    }
}

/// Names with a non-empty value in the process environment: what `org plan` counts as set.
pub fn process_env_names() -> BTreeSet<String> {
    std::env::vars_os()
        .filter(|(_, v)| !v.is_empty())
        .filter_map(|(k, _)| k.into_string().ok())
        .collect()
}

fn depth(key: &str) -> usize {
    key.matches('/').count() + 1
}

/// The text `org plan` prints for a planned template; `available` are the env names counted
/// as set (besides each workspace's own `.env` layers).
pub fn render(plan: &Plan, available: &BTreeSet<String>) -> String {
    let mut out = String::new();
    let levels = plan
        .workspaces
        .iter()
        .map(|w| depth(&w.key))
        .max()
        .unwrap_or(0);
    let _ = writeln!(out, "org {:?}", plan.name);
    for w in &plan.workspaces {
        let prefix = "  ".repeat(depth(&w.key) - 1);
        let plugins = if w.plugins.is_empty() {
            String::new()
        } else {
            format!(" plugins: {}", w.plugins.join(", "))
        };
        let tier = w
            .tier
            .map_or_else(|| "2 (default)".to_string(), |t| t.to_string());
        let parent = w.parent_key.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "{prefix}- {} [{}] runtime {} tier {tier} parent {parent}{plugins}",
            w.display_name, w.key, w.runtime
        );
    }
    let schedules: usize = plan.workspaces.iter().map(|w| w.schedules.len()).sum();
    let channels: usize = plan.workspaces.iter().map(|w| w.channels.len()).sum();
    let skipped_s: usize = plan
        .workspaces
        .iter()
        .map(|w| w.schedules_skipped.len())
        .sum();
    let skipped_c: usize = plan
        .workspaces
        .iter()
        .map(|w| w.channels_skipped.len())
        .sum();
    let binds = plan
        .workspaces
        .iter()
        .filter(|w| w.workspace_dir.is_some())
        .count();
    let _ = writeln!(
        out,
        "\n{} workspaces on {levels} levels ({} in the tree, {} left out by spawning: false)",
        plan.workspaces.len(),
        plan.total,
        plan.skipped
    );
    let _ = writeln!(
        out,
        "{schedules} schedules ({skipped_s} skipped), {channels} channels ({skipped_c} skipped), {binds} workspace_dir binds, {} global memories",
        plan.global_memories.len()
    );
    if plan.unresolved_externals > 0 {
        let _ = writeln!(
            out,
            "{} !external subtrees not in the cache (not fetched by a dry run)",
            plan.unresolved_externals
        );
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in &plan.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    let pf = preflight(plan, available);
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(out, "\nrequired env: {}", list(&pf.required_env));
    let _ = writeln!(out, "missing env: {}", list(&pf.missing_env));
    if !pf.recommended_env.is_empty() {
        let _ = writeln!(out, "recommended env: {}", list(&pf.recommended_env));
        let _ = writeln!(
            out,
            "missing recommended env: {}",
            list(&pf.missing_recommended)
        );
    }
    out
}
