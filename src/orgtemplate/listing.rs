//! The template listing: every org dir under the root with its name, description,
//! workspace count (`spawning: false` subtrees included) and required env. Never fetches:
//! `!external`s resolve only from complete cache entries.

use std::path::Path;

use super::{ORG_FILE, Options, Source, load_plan};

/// One template under the root, as the canvas lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TemplateInfo {
    /// `name:` of org.yaml, or the dir name.
    pub name: String,
    pub description: String,
    /// The dir under the root (what `OrgImport.spec.source.dir` takes).
    pub dir: String,
    /// Every workspace in the tree, `spawning: false` subtrees included.
    pub workspaces: usize,
    /// Workspaces an import would create.
    pub spawning: usize,
    /// Requirements of the spawning workspaces (`NAME` or `A|B`), sorted.
    pub required_env: Vec<String>,
    /// `!external`s not in the cache (their workspaces are not counted).
    pub unresolved_externals: usize,
    /// Why the template cannot be imported as it is, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Lists the templates under `root` with the default source settings.
pub fn list_templates(root: &Path) -> Vec<TemplateInfo> {
    list_templates_with(&Options::with_sources(root, &Default::default()))
}

/// Lists the templates under `opts.root` (sorted by dir; hidden dirs skipped).
pub fn list_templates_with(opts: &Options) -> Vec<TemplateInfo> {
    let mut opts = opts.clone();
    opts.external.offline = true;
    let Ok(rd) = std::fs::read_dir(&opts.root) else {
        return vec![];
    };
    let mut dirs: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            let has_org = p.join(ORG_FILE).is_file() || p.join("org.yml").is_file();
            (!name.starts_with('.') && p.is_dir() && has_org).then_some(name)
        })
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| match load_plan(&opts, &Source::Dir(dir.clone())) {
            Ok(p) => TemplateInfo {
                name: p.name.clone(),
                description: p.description.clone(),
                required_env: p.required_env(),
                workspaces: p.total,
                spawning: p.workspaces.len(),
                unresolved_externals: p.unresolved_externals,
                dir,
                error: None,
            },
            Err(e) => TemplateInfo {
                name: dir.clone(),
                description: String::new(),
                dir,
                workspaces: 0,
                spawning: 0,
                required_env: vec![],
                unresolved_externals: 0,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Tree;
    use super::*;

    #[test]
    fn lists_every_template_with_counts_and_env() {
        let t = Tree::new(&[
            (
                "alpha/org.yaml",
                "name: Alpha Team\ndescription: first\ndefaults: {required_env: [A_KEY]}\nworkspaces:\n  - name: Lead\n    children:\n      - name: Off\n        spawning: false\n        required_env: [NOT_LISTED]\n        children: [{name: Deep}]\n",
            ),
            (
                "beta/org.yml",
                "workspaces:\n  - name: x\n    tier: wrong\n",
            ),
            ("not-a-template/readme.md", "hi"),
            (".external-cache/x/org.yaml", "name: hidden\n"),
        ]);
        let list = list_templates_with(&t.options());
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(
            list[0],
            TemplateInfo {
                name: "Alpha Team".into(),
                description: "first".into(),
                dir: "alpha".into(),
                workspaces: 3,
                spawning: 1,
                required_env: vec!["A_KEY".into()],
                unresolved_externals: 0,
                error: None,
            }
        );
        assert_eq!(list[1].dir, "beta");
        assert!(
            list[1]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("workspaces[0].tier")),
            "{:?}",
            list[1]
        );
    }

    #[test]
    fn uncached_externals_are_not_fetched() {
        let t = Tree::new(&[(
            "ext/org.yaml",
            "workspaces:\n  - name: Lead\n    children:\n      - !external {repo: molecule-ai/dept, ref: main, path: lead.yaml}\n",
        )]);
        let list = list_templates_with(&t.options());
        assert_eq!((list[0].workspaces, list[0].unresolved_externals), (1, 1));
        assert_eq!(list[0].error, None);
    }
}
