//! Plugins in place before a workspace's first start (ADR 0056).
//!
//! A PluginInstall lands in a running container, and a cold plugin (hooks, settings) then
//! restarts the workspace. For a workspace created together with its PluginInstalls (an org
//! import, a bundle, one `kubectl apply`) that meant every new workspace started, came up, and
//! restarted once its plugins landed. So the first start of a workspace already carries the
//! `local://` plugins its PluginInstalls name, as files under `/configs/plugins/<name>/` with the
//! `.complete` marker the install's swap writes: the agent loads them at its first boot, and when
//! the PluginInstall controller then installs into the running container, the live tree equals
//! the staged one — unchanged, no restart.
//!
//! The same refusals as an install apply (source, runtime, the owning OrgImport's allowlist, two
//! records naming one plugin): a plugin the install would refuse is not placed. Git sources are
//! never fetched here (no network on the workspace's start path); they land the usual way.
//! Anything that fails here only means the plugin lands the usual way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use crate::backends::{ConfigFile, validate_file_path};
use crate::plugins::{Fetched, Fetcher, MARKER, Origin, Source};
use crate::resources::names::{ORG_PLUGIN_LABEL, ORG_PLUGINS_ANNOTATION};
use crate::resources::{PluginInstall, Workspace};

/// How long a first start waits for the PluginInstalls an OrgImport announced on the workspace
/// (it creates them just after the workspace, which must exist first to own them).
pub const ANNOUNCED_WAIT: Duration = Duration::from_secs(10);

/// What a workspace's first start carries.
#[derive(Debug)]
pub enum FirstStart {
    /// These files (possibly none).
    Files(Vec<ConfigFile>),
    /// Not yet: a plugin its OrgImport announced has no PluginInstall yet. The wait ends when
    /// one appears (the cache wakes the workspace) or after this long at the latest.
    Waiting(Duration),
}

/// The plugins an OrgImport announced on `ws` (`molecule.ai/plugins`, names it can install).
pub fn announced(ws: &Workspace) -> Vec<String> {
    ws.annotations()
        .get(ORG_PLUGINS_ANNOTATION)
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| crate::plugins::source::check_name(p).is_ok())
        .collect()
}

/// How much of [`ANNOUNCED_WAIT`] is left for `ws` (none: unknown age, or over).
fn wait_left(ws: &Workspace) -> Option<Duration> {
    let created = ws.metadata.creation_timestamp.as_ref()?.0;
    let age = jiff::Timestamp::now().duration_since(created);
    let left = jiff::SignedDuration::try_from(ANNOUNCED_WAIT).ok()? - age;
    Duration::try_from(left).ok().filter(|d| !d.is_zero())
}

/// Whether a plugin its OrgImport announced on `ws` has no record among `mine` yet, and
/// `ws` is young enough to wait for it: how long at most.
pub fn waiting_for(ws: &Workspace, mine: &[Arc<PluginInstall>]) -> Option<Duration> {
    let present: Vec<&str> = mine
        .iter()
        .filter_map(|pi| pi.labels().get(ORG_PLUGIN_LABEL).map(String::as_str))
        .collect();
    if announced(ws).iter().all(|p| present.contains(&p.as_str())) {
        return None;
    }
    wait_left(ws)
}

/// What a first start reads its plugins from: the API (the org's allowlist), the plugin
/// registry, and the process's PluginInstall cache (ADR 0025).
pub struct Seed<'a> {
    pub client: &'a Client,
    pub fetcher: &'a Fetcher,
    pub installs: &'a Store<PluginInstall>,
}

impl Seed<'_> {
    /// The files of the `local://` plugins `ws`'s PluginInstalls name, within `budget` bytes of
    /// content (a plugin that does not fit is left to its install); or [`FirstStart::Waiting`]
    /// while a plugin its OrgImport announced has no record in the cache yet, for at most
    /// [`ANNOUNCED_WAIT`] after the workspace was created.
    pub async fn first_start(&self, ws: &Workspace, budget: usize) -> FirstStart {
        let mine: Vec<Arc<PluginInstall>> = super::naming(self.installs, ws)
            .filter(|pi| pi.metadata.deletion_timestamp.is_none())
            .collect();
        if let Some(left) = waiting_for(ws, &mine) {
            return FirstStart::Waiting(left);
        }
        let mine: Vec<&PluginInstall> = mine.iter().map(Arc::as_ref).collect();
        FirstStart::Files(files_for(self.client, self.fetcher, ws, &mine, budget).await)
    }
}

async fn files_for(
    client: &Client,
    fetcher: &Fetcher,
    ws: &Workspace,
    mine: &[&PluginInstall],
    budget: usize,
) -> Vec<ConfigFile> {
    let name = ws.name_any();
    if mine.is_empty() {
        return vec![];
    }
    let allowed = match super::allowlist_of(client, ws).await {
        Ok(a) => a,
        Err(_) => return vec![],
    };
    let mut fetched = vec![];
    for pi in mine.iter().copied() {
        let Ok(origin) = Origin::parse(
            &pi.spec.source,
            pi.spec.track.as_deref(),
            pi.spec.allow_unpinned,
        ) else {
            continue;
        };
        if !matches!(origin.source, Source::Local(_)) {
            continue;
        }
        let Ok(f) = fetcher.fetch(&origin, None, None).await else {
            continue;
        };
        if super::apply::not_allowed_or_unsupported(ws, allowed.as_deref(), &f).is_none() {
            fetched.push(f);
        }
    }
    let files = files_of(&fetched, budget);
    if !files.is_empty() {
        tracing::info!(workspace = %name, files = files.len(), "plugins placed for the first start");
    }
    files
}

/// The files of `fetched` under `plugins/<name>/`, each tree with its marker; a name fetched
/// twice is placed for neither record, and a tree that would pass `budget` is left out.
pub fn files_of(fetched: &[Fetched], budget: usize) -> Vec<ConfigFile> {
    let mut by_name: BTreeMap<&str, Vec<&Fetched>> = BTreeMap::new();
    for f in fetched {
        by_name.entry(f.meta.name.as_str()).or_default().push(f);
    }
    let mut out = vec![];
    let mut used = 0usize;
    for (name, list) in by_name {
        let [f] = list.as_slice() else {
            continue;
        };
        let mut files = super::install::files_under(&f.tree, &format!("plugins/{name}"));
        files.push(ConfigFile {
            path: format!("plugins/{name}/{MARKER}"),
            content: format!("{}\n", f.sha).into_bytes(),
            mode: 0o644,
        });
        let bytes: usize = files.iter().map(|f| f.content.len()).sum();
        if used + bytes > budget || files.iter().any(|f| validate_file_path(&f.path).is_err()) {
            continue;
        }
        used += bytes;
        out.extend(files);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{Limits, PluginTree};

    fn fetched(dir: &std::path::Path, name: &str, extra: &str) -> Fetched {
        let root = dir.join(name);
        std::fs::create_dir_all(root.join("hooks")).unwrap();
        std::fs::write(
            root.join("plugin.yaml"),
            format!("name: {name}\nversion: 1.0.0\ndescription: test\n"),
        )
        .unwrap();
        std::fs::write(root.join("hooks/start.sh"), format!("echo {extra}\n")).unwrap();
        let tree = PluginTree::from_dir(&root, &Limits::default()).unwrap();
        let meta = crate::plugins::format::validate(&tree, Some(name)).unwrap();
        let sha = crate::plugins::tree::tree_digest(&tree.hashes());
        Fetched { meta, tree, sha }
    }

    #[test]
    fn each_plugin_is_placed_whole_with_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let a = fetched(dir.path(), "alpha", "a");
        let files = files_of(std::slice::from_ref(&a), usize::MAX);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&"plugins/alpha/plugin.yaml"), "{paths:?}");
        assert!(paths.contains(&"plugins/alpha/hooks/start.sh"), "{paths:?}");
        let marker = files
            .iter()
            .find(|f| f.path == "plugins/alpha/.complete")
            .expect("marker");
        assert_eq!(marker.content, format!("{}\n", a.sha).into_bytes());
        // What an install would hash inside the container equals the tree it fetches: the
        // classifier finds it unchanged, so no restart follows.
        let placed: BTreeMap<String, String> = files
            .iter()
            .filter_map(|f| {
                let rel = f.path.strip_prefix("plugins/alpha/")?;
                use sha2::Digest;
                Some((
                    rel.to_string(),
                    hex::encode(sha2::Sha256::digest(&f.content)),
                ))
            })
            .collect();
        assert_eq!(
            crate::plugins::classify(&a.tree.hashes(), Some(&placed)),
            crate::plugins::Change::Unchanged
        );
    }

    #[test]
    fn the_announced_plugins_are_the_valid_names_of_the_import_annotation() {
        let mut ws = Workspace::new("w", Default::default());
        assert!(announced(&ws).is_empty());
        ws.metadata.annotations = Some(
            [(
                ORG_PLUGINS_ANNOTATION.to_string(),
                r#"["hello", "../bad", "session-hooks"]"#.to_string(),
            )]
            .into(),
        );
        assert_eq!(announced(&ws), ["hello", "session-hooks"]);
        // No creation time known: not young, so a start never waits for it.
        assert_eq!(wait_left(&ws), None);
    }

    fn install(ws: &str, plugin: &str) -> Arc<PluginInstall> {
        let mut pi = PluginInstall::new(&format!("{ws}-{plugin}"), Default::default());
        pi.spec.workspace_ref.name = ws.into();
        pi.metadata.labels = Some([(ORG_PLUGIN_LABEL.to_string(), plugin.to_string())].into());
        Arc::new(pi)
    }

    #[test]
    fn a_young_workspace_waits_for_its_announced_installs_at_most_until_ten_seconds_old() {
        let mut ws = Workspace::new("w", Default::default());
        ws.metadata.annotations = Some(
            [(
                ORG_PLUGINS_ANNOTATION.to_string(),
                r#"["hello", "bye"]"#.to_string(),
            )]
            .into(),
        );
        let age = |secs: i64| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs),
            )
        };
        ws.metadata.creation_timestamp = Some(age(3));
        let hello = install("w", "hello");
        let left = waiting_for(&ws, std::slice::from_ref(&hello)).expect("bye is missing");
        assert!(
            left <= Duration::from_secs(7) && left > Duration::from_secs(5),
            "{left:?}"
        );
        assert_eq!(
            waiting_for(&ws, &[hello.clone(), install("w", "bye")]),
            None
        );
        // Past the wait, a start goes ahead with what there is.
        ws.metadata.creation_timestamp = Some(age(11));
        assert_eq!(waiting_for(&ws, &[hello]), None);
    }

    #[test]
    fn a_name_fetched_twice_and_a_tree_past_the_budget_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let one = tempfile::tempdir().unwrap();
        let a1 = fetched(dir.path(), "alpha", "1");
        let a2 = fetched(one.path(), "alpha", "2");
        let b = fetched(dir.path(), "beta", "b");
        let files = files_of(&[a1, a2, b.clone()], usize::MAX);
        assert!(files.iter().all(|f| f.path.starts_with("plugins/beta/")));
        assert!(!files.is_empty());
        assert!(files_of(&[b], 10).is_empty());
    }
}
