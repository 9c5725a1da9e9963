//! `PluginInstall` (`plug`) and the `PluginUpdate` (`pu`) drift queue.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference};

/// A plugin (skills, rules, hooks) installed into one workspace.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "molecule.ai",
    version = "v1alpha1",
    kind = "PluginInstall",
    plural = "plugininstalls",
    shortname = "plug",
    category = "molecule",
    namespaced,
    status = "PluginInstallStatus",
    doc = "A PluginInstall lands a plugin in a workspace atomically and tracks it against its upstream.",
    printcolumn(
        name = "Workspace",
        type_ = "string",
        json_path = ".spec.workspaceRef.name"
    ),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(
        name = "Installed",
        type_ = "string",
        json_path = ".status.installedSha"
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
        name = "Track",
        type_ = "string",
        json_path = ".spec.track",
        priority = "1"
    ),
    printcolumn(
        name = "Restart",
        type_ = "string",
        json_path = ".status.lastRestartClass",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginInstallSpec {
    pub workspace_ref: LocalObjectReference,
    /// `local://<name>` or a git repository URL.
    pub source: String,
    /// `tag:vX`, `tag:latest`, `sha:<full>` or a branch name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    #[serde(default)]
    pub update_policy: UpdatePolicy,
    /// Allow a source with no pinned or tracked ref.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unpinned: bool,
}

/// How upstream changes are applied.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum UpdatePolicy {
    #[default]
    Manual,
    Auto,
}

/// Whether the last install needed a restart.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RestartClass {
    Hot,
    Cold,
}

/// Observed state of a plugin install.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginInstallStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_class: Option<RestartClass>,
}

/// One detected upstream change of a tracked plugin, waiting for a decision.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "molecule.ai",
    version = "v1alpha1",
    kind = "PluginUpdate",
    plural = "pluginupdates",
    shortname = "pu",
    category = "molecule",
    namespaced,
    status = "PluginUpdateStatus",
    doc = "A PluginUpdate is one queued upstream change of a PluginInstall; approve or dismiss it with kubectl.",
    printcolumn(
        name = "Plugin",
        type_ = "string",
        json_path = ".spec.pluginInstallRef.name"
    ),
    printcolumn(name = "From", type_ = "string", json_path = ".spec.fromSha"),
    printcolumn(name = "To", type_ = "string", json_path = ".spec.toSha"),
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginUpdateSpec {
    pub plugin_install_ref: LocalObjectReference,
    pub from_sha: String,
    pub to_sha: String,
    #[serde(default)]
    pub decision: PluginDecision,
}

/// What a person decided about a queued update.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PluginDecision {
    #[default]
    Pending,
    Approved,
    Dismissed,
}

/// Observed state of a queued update.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginUpdateStatus {
    /// Pending, Applied, Dismissed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}
