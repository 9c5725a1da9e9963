//! What makes a workspace act on its own and answer the outside world: cron schedules that send
//! it a prompt, and chat channels that bridge users to it. Both are desired state on the
//! Workspace (`spec.schedules`, `spec.channels`) with their observed state in status, so
//! `kubectl`, the REST shim and org imports all edit one list.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeySelector;

/// One cron schedule: at each fire, `prompt` is sent to the workspace as an A2A message.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Unique within the workspace; the REST routes use it as the schedule's id.
    #[schemars(length(min = 1, max = 128), pattern(r"^[^/]+$"))]
    pub name: String,
    /// Five-field cron expression (minute hour day-of-month month day-of-week) or a
    /// descriptor such as `@daily`.
    #[schemars(
        length(min = 1, max = 200),
        pattern(r"^\s*(@[a-z]+|\S+(\s+\S+){4})\s*$")
    )]
    pub cron_expr: String,
    /// IANA time zone the expression is read in; UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(r"^[A-Za-z0-9/_+-]*$"))]
    pub timezone: Option<String>,
    /// The message sent at each fire.
    #[schemars(length(min = 1, max = 65536))]
    pub prompt: String,
    /// A disabled schedule keeps its history but does not fire.
    #[serde(default = "enabled_default", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

/// Observed state of one schedule, keyed by `name`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<String>,
    #[serde(default)]
    pub run_count: i64,
    /// `ok`, `error` or `skipped` for the last fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    /// Sanitized error of the last fire (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One chat channel bridged to the workspace (e.g. a Telegram bot).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// Adapter type, e.g. `telegram`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Where the channel's token lives; tokens are never kept in `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_from: Option<SecretKeySelector>,
    /// Non-secret adapter settings (e.g. `chat_id`, `base_url`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// User ids allowed to talk to the workspace; messages from anyone else are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,
    #[serde(default = "enabled_default", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

/// Observed state of one channel, in the order of `spec.channels`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    #[serde(rename = "type")]
    pub type_: String,
    /// `Connected`, `Connecting`, `Disabled` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// One CamelCase word saying why the channel is not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_at: Option<String>,
    #[serde(default)]
    pub message_count: i64,
    /// Messages from users not in `allowedUsers`, ignored.
    #[serde(default)]
    pub ignored_count: i64,
    /// Where the adapter resumes after a restart (Telegram: the last `update_id` handled), so
    /// no inbound message is delivered twice (ADR 0054).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_id: Option<i64>,
}

fn enabled_default() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}
