//! Plugins (ADR 0015, 0016): what a plugin is, where it comes from, and how an update is
//! classified. Everything here is independent of Kubernetes; the PluginInstall controller
//! (`controllers::plugin`) drives it.
//!
//! - [`source`]: `local://<name>` and git sources, tracked refs, the unpinned policy;
//! - [`git`]: resolving refs and reading one commit through the real `git` CLI (ADR 0040);
//! - [`tree`]: a plugin's files under the staging limits;
//! - [`format`]: the plugin dir format and manifest integrity;
//! - [`classify`]: the pure hot/cold classifier (ADR 0015);
//! - [`fs`] and [`shell`]: the atomic in-container swap (ADR 0015), as operator-binary steps and as
//!   a POSIX `sh` script.

pub mod classify;
pub mod format;
pub mod fs;
pub mod git;
pub mod git_hosts;
pub mod shell;
pub mod source;
pub mod tree;

use std::path::PathBuf;

pub use classify::{Change, classify};
pub use format::PluginMeta;
pub use source::{Origin, Source, Track};
pub use tree::{Limits, PluginTree};

/// The marker written last into a live plugin dir; loaders skip dirs without it.
pub const MARKER: &str = ".complete";

/// Why a plugin cannot be installed as asked: a condition reason (one CamelCase word) and a
/// message safe to show (no secrets, no host paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// Whether retrying later may help (the network, a ref that may appear): the controller
    /// retries these with backoff; the others wait for the record to change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.reason,
            "FetchFailed" | "FetchTimeout" | "RefNotFound" | "PluginNotFound"
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// A fetched, validated plugin at one revision.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub meta: PluginMeta,
    pub tree: PluginTree,
    /// Full commit sha (git) or tree digest (`local://`).
    pub sha: String,
}

/// Fetches plugins from the registry dir and git.
#[derive(Clone, Debug)]
pub struct Fetcher {
    /// The `local://` registry (`serve --plugins DIR`).
    pub registry: PathBuf,
    pub git: git::Git,
    pub limits: Limits,
}

impl Fetcher {
    /// What the origin points at now: the commit its track names (git), or the digest of the
    /// registry dir's content (`local://`, whose content is its only "ref").
    pub async fn resolve(&self, origin: &Origin) -> Result<git::Resolved, Refusal> {
        match &origin.source {
            Source::Git(url) => self.git.resolve(url, &origin.track).await,
            Source::Local(_) => Ok(git::Resolved {
                sha: self.fetch(origin, None, None).await?.sha,
                ref_name: None,
            }),
        }
    }

    /// Reads and validates the plugin: a git source at `sha` (`ref_hint`: the tag or branch it
    /// came from, for servers that refuse unadvertised shas), a local source as it is now.
    pub async fn fetch(
        &self,
        origin: &Origin,
        sha: Option<&str>,
        ref_hint: Option<&str>,
    ) -> Result<Fetched, Refusal> {
        let (tree, sha, expected) = match &origin.source {
            Source::Local(name) => {
                let dir = self.registry.join(name);
                if !std::fs::metadata(&dir).map(|m| m.is_dir()).unwrap_or(false) {
                    return Err(Refusal::new(
                        "PluginNotFound",
                        format!("plugin {name:?} is not in the plugin registry"),
                    ));
                }
                let limits = self.limits;
                let tree = tokio::task::spawn_blocking(move || PluginTree::from_dir(&dir, &limits))
                    .await
                    .map_err(|_| {
                        Refusal::new("FetchFailed", "reading the plugin was interrupted")
                    })??;
                let digest = tree::tree_digest(&tree.hashes());
                (tree, digest, Some(name.as_str()))
            }
            Source::Git(url) => {
                let sha = match sha {
                    Some(s) => s.to_string(),
                    None => self.git.resolve(url, &origin.track).await?.sha,
                };
                let hint = ref_hint
                    .map(|r| r.to_string())
                    .or_else(|| match &origin.track {
                        Track::Branch(b) => Some(format!("refs/heads/{b}")),
                        Track::Tag(t) => Some(format!("refs/tags/{t}")),
                        _ => None,
                    });
                let tree = self
                    .git
                    .fetch_tree(url, &sha, hint.as_deref(), &self.limits)
                    .await?;
                (tree, sha, None)
            }
        };
        let meta = format::validate(&tree, expected)?;
        Ok(Fetched { meta, tree, sha })
    }
}
