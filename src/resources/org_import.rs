//! `OrgImport` (`org`): a whole agent org as desired state.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Import an org template; its workspaces become child Workspaces owned by this record.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "molecule.ai",
    version = "v1alpha1",
    kind = "OrgImport",
    plural = "orgimports",
    shortname = "org",
    category = "molecule",
    namespaced,
    status = "OrgImportStatus",
    doc = "An OrgImport turns an org template (a tree of workspaces) into child Workspace records.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.counts.desired"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.dir",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OrgImportSpec {
    pub source: OrgImportSource,
    /// `merge` keeps children that left the tree; `reconcile` prunes them.
    #[serde(default)]
    pub mode: OrgImportMode,
    /// Skip the env preflight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Plugins children of this import may install (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_plugins: Vec<String>,
    /// What the template may ask of the host; unset fields take the operator's defaults
    /// (`--template-max-tier` …). Only the admin writes OrgImports, so a value here may raise a
    /// default (ADR 0039).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<TemplatePolicy>,
    /// Workspace records (by `metadata.name`) taken out of the org: neither created nor
    /// recreated, with their subtrees; one that exists stays unless mode `reconcile` prunes it
    /// (the canvas's "remove from the org" adds the name, then deletes the workspace; ADR 0052).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Limits on what an org template may ask of the host (ADR 0039). A workspace over a limit is
/// refused (condition `PolicyRefused`), with its subtree; the rest of the org is imported.
/// System directories (`/`, `/etc`, `/proc`, the Docker socket, the data dir, …) are refused
/// whatever this says.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplatePolicy {
    /// Highest tier a workspace may ask for (default `--template-max-tier`, 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4))]
    pub max_tier: Option<i32>,
    /// Highest tier for workspaces defined in git (a git source or an `!external`; default
    /// `--template-git-max-tier`, 2); never above maxTier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4))]
    pub git_max_tier: Option<i32>,
    /// Absolute host directories a `workspace_dir` may be in (default
    /// `--template-workspace-dir-roots`, empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_dir_roots: Option<Vec<String>>,
    /// The same for workspaces defined in git (default `--template-git-workspace-dir-roots`,
    /// empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_workspace_dir_roots: Option<Vec<String>>,
}

/// Exactly one of dir, template or git.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrgImportSource {
    /// A directory under the org template root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// An inline org.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A git repository holding the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
}

/// A template in a git repository (validated and allowlisted like `!external`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct GitSource {
    /// `owner/name` on the host.
    pub repo: String,
    /// Branch, tag or full commit sha (default `main`).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The org file, or a dir holding `org.yaml` (default: the repository root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Host or `scheme://host[/prefix]` (default `MOLECULE_EXTERNAL_GITEA_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// How children that left the tree are treated.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OrgImportMode {
    #[default]
    Merge,
    Reconcile,
}

/// Observed state of an import.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrgImportStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<OrgImportCounts>,
    /// Resolved revision of every `!external` and of a git source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<ResolvedRevision>,
    /// Tree paths of the workspaces this import owns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_env: Vec<String>,
    /// Digest of the last planned children (changes when the template's result changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    /// Set (to the plan digest) while an import pass runs, before its `org.import.started`
    /// audit row; a pass that finds it set after a crash records the interrupted pass as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_in_progress: Option<String>,
    /// Tolerated template problems (unknown keys), each naming file and YAML path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Channels left out because they could not be resolved (unknown adapter, unset
    /// variable, a token not from a `.env` file), each naming file, line and reason (ADR 0047).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels_skipped: Vec<String>,
}

/// Counts of the last import pass.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct OrgImportCounts {
    /// Workspaces the template asks for (`spawning: false` subtrees excluded).
    pub desired: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    /// Children removed because they left the tree (mode `reconcile`).
    pub pruned: i64,
    /// Workspaces left out by `spawning: false`.
    pub skipped: i64,
    /// Workspaces refused by the template policy, subtrees included (ADR 0039).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A git reference resolved to a full sha.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct ResolvedRevision {
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
}
