//! `Workspace` (`ws`): one agent runtime in its own container or EC2 instance.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Desired state of one agent workspace.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "molecule.ai",
    version = "v1alpha1",
    kind = "Workspace",
    plural = "workspaces",
    shortname = "ws",
    category = "molecule",
    namespaced,
    status = "WorkspaceStatus",
    doc = "A Workspace is one agent runtime (claude-code, langgraph, echo, ...) running in its own container or EC2 instance.",
    printcolumn(
        name = "Runtime",
        type_ = "string",
        json_path = ".spec.runtime",
        description = "Agent runtime"
    ),
    printcolumn(
        name = "Tier",
        type_ = "integer",
        json_path = ".status.tier",
        description = "Effective resource tier (1-4; 2 when spec.tier is unset)"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Ready condition"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the workspace is (not) ready"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        description = "Summary of the current phase"
    ),
    printcolumn(
        name = "Parent",
        type_ = "string",
        json_path = ".spec.parentRef.name",
        description = "Parent workspace",
        priority = "1"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.image",
        description = "Running image",
        priority = "1"
    ),
    printcolumn(
        name = "Backend",
        type_ = "string",
        json_path = ".spec.backend",
        description = "docker, controlPlane or kubernetes",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// Name shown on the canvas; defaults to metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The agent's role in the org, e.g. "researcher".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Name of a Runtime (claude-code, langgraph, echo, external, ...). Defaults to echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Resource tier: 1 sandboxed, 2 standard (default), 3 privileged-lite, 4 full host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4))]
    pub tier: Option<i32>,
    /// Model passed to the runtime (wins over the MODEL secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Image override; when unset the Runtime's resolved image is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The parent workspace in the org tree (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<LocalObjectReference>,
    /// Config files written to /configs before the container starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<ConfigFiles>,
    /// Environment variables; later entries win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Whole Secrets imported as environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Names that must resolve to a value before anything is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_env: Vec<String>,
    /// Where the workspace runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Host directory mounted as the agent's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_dir: Option<String>,
    /// Access to workspaceDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_access: Option<WorkspaceAccess>,
    /// Paused workspaces keep their volume but run no container.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Upper bound on concurrent tasks the agent accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_tasks: Option<i32>,
    /// For runtime `external`: the agent's own URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Cron schedules that send the workspace a prompt (names unique: a map list keyed by
    /// `name`; cron and zone are checked by the API server, ADR 0053).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schedules: Vec<super::ScheduleSpec>,
    /// Chat channels bridged to the workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<super::ChannelSpec>,
    /// Sent once as the agent's first message; a marker in /configs stops a re-send after
    /// restarts (ADR 0048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_prompt: Option<String>,
    /// Sent to the agent after `idleIntervalSeconds` without work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_prompt: Option<String>,
    /// Seconds without work before `idlePrompt` is sent (600 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub idle_interval_seconds: Option<i64>,
    /// Category → role names the agent routes that category of work to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub category_routing: BTreeMap<String, Vec<String>>,
}

/// A reference to an object by name in the same namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct LocalObjectReference {
    pub name: String,
}

/// Where config files come from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFiles {
    /// A directory under the org template root whose files are copied to /configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_dir: Option<String>,
    /// Inline files: relative path → content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inline: BTreeMap<String, String>,
}

/// One environment variable.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Where an environment variable's value comes from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    pub secret_key_ref: SecretKeySelector,
}

/// A key of a Secret in the workspace's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct SecretKeySelector {
    pub name: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// A whole Secret imported as environment variables.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    pub secret_ref: SecretReference,
    /// Prefix added to every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A Secret by name in the workspace's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct SecretReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Where a workspace runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// A container on the local Docker engine.
    #[default]
    Docker,
    /// An EC2 instance provisioned by the control plane.
    ControlPlane,
    /// A Pod, PersistentVolumeClaims and a Service in the Workspace's namespace, on the cluster
    /// the operator runs against (ADR 0057).
    Kubernetes,
}

/// Access mode of the host workspace directory.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceAccess {
    None,
    ReadOnly,
    ReadWrite,
}

/// Lifecycle phase of a workspace.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum WorkspacePhase {
    #[default]
    Pending,
    Provisioning,
    Online,
    Degraded,
    Offline,
    Paused,
    Failed,
    Terminating,
}

/// Observed state of a workspace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkspacePhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Sanitized human-readable summary of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Docker container name (`ws-<uid12>`), written before the container is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Control-plane instance id, written as soon as the provision call returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Where the agent's A2A endpoint is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Names listed by requiredEnv that did not resolve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_tasks: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<i64>,
    /// The agent card the agent registered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::resources::workspace::any_object")]
    pub agent_card: Option<serde_json::Value>,
    /// sha256 of the current workspace token (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// Further live tokens of this workspace (minted in development mode), by sha256. Each is
    /// bound to the `tokenHash` current when it was minted, so a new token (every provision,
    /// hence every restart) revokes them all (ADR 0049).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_tokens: Vec<ExtraToken>,
    /// The restartedAt annotation value last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<String>,
    /// When the current container was provisioned (a registration after this counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_at: Option<String>,
    /// Hash of the desired container (image, env, tier, files); a change recreates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// URL the agent registered for agent-to-agent calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
    /// runtime_state from the last heartbeat (`ok`, `wedged`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_state: Option<String>,
    /// Consecutive automatic restarts since the workspace was last Online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i64>,
    /// Observed state of each schedule in spec.schedules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<super::ScheduleStatus>,
    /// Observed state of each channel in spec.channels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<super::ChannelStatus>,
    /// The effective tier: spec.tier, or 2 when unset (the Tier column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<i32>,
}

/// One further token of a workspace: its sha256 and the `tokenHash` it is bound to ("" when the
/// workspace had no token yet).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExtraToken {
    pub hash: String,
    #[serde(default)]
    pub bound_to: String,
}

/// Schema of a free-form JSON object.
pub fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
