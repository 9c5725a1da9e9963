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
    ),
    printcolumn(
        name = "Plugin",
        type_ = "string",
        json_path = ".status.pluginName",
        priority = "1"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
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
    /// How often the tracked ref is re-resolved upstream, e.g. `30s`, `15m`, `1h` (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_interval: Option<String>,
    /// A new value re-installs the plugin now from the source's current content (the tracked
    /// ref resolved again; a `local://` plugin read again), hot or cold as classified. The REST
    /// shim sets it to the time of a repeated install (ADR 0049).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinstall_requested_at: Option<String>,
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
    /// The plugin's name (from plugin.yaml): it lives in `/configs/plugins/<pluginName>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_name: Option<String>,
    /// The plugin's version (from plugin.yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `<source>#<track>` of the installed revision (a spec change re-resolves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_from: Option<String>,
    /// The tag or branch the installed sha came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_ref: Option<String>,
    /// The container the plugin was last installed into; a new container gets it re-applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_container_id: Option<String>,
    /// Digest of the installed tree as hashed inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<String>,
    /// The newest sha seen upstream by the drift check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_sha: Option<String>,
    /// An install that started but whose outcome was not recorded yet (crash safety: an
    /// interrupted install is finished conservatively, with a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingInstall>,
}

/// An install in flight.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingInstall {
    pub sha: String,
    pub container_id: String,
    /// RFC 3339; a restart requested at or after this time covers the install.
    pub started_at: String,
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
    printcolumn(name = "Plugin", type_ = "string", json_path = ".spec.plugin"),
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Ref", type_ = "string", json_path = ".spec.ref"),
    printcolumn(name = "To", type_ = "string", json_path = ".spec.toSha"),
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Install",
        type_ = "string",
        json_path = ".spec.pluginInstallRef.name",
        priority = "1"
    ),
    printcolumn(
        name = "From",
        type_ = "string",
        json_path = ".spec.fromSha",
        priority = "1"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginUpdateSpec {
    pub plugin_install_ref: LocalObjectReference,
    pub from_sha: String,
    pub to_sha: String,
    #[serde(default)]
    pub decision: PluginDecision,
    /// The plugin's name (for display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The workspace the install targets (for display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// `canary` or `production` (the workspace's `molecule.ai/update-tier` label when detected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The source the update comes from; canary ordering groups updates by source and toSha.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The tag or branch that moved to toSha.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_name: Option<String>,
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
    /// Pending, Applying, WaitingForCanary, Applied, Dismissed, Superseded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}
