//! `GET /events` and `GET /events/:workspace_id`: the audit log (structure events recorded by
//! controllers and the shim) merged with the Kubernetes Events of workspaces (the transition
//! log the Workspace controller writes), newest first, in the original's row shape
//! `{id, event_type, workspace_id, payload, created_at}`. `event_type` is the original's event
//! name — the same names the live stream uses (`view::names`) — wherever the row says what
//! happened to a workspace; the recorded reason or action stays in the payload (ADR 0049).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use super::tree::Tree;
use super::view::names;
use crate::store::{AuditFilter, AuditRow, WorkspaceRef};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// One row of the merged log.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub at: jiff::Timestamp,
    pub json: Value,
}

fn parse_time(s: &str) -> jiff::Timestamp {
    s.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The original's event name of a Workspace controller Event, by its reason: what the phase
/// became. Reasons with no counterpart (notes, cleanup problems) are `WORKSPACE_UPDATED`.
pub fn kube_event_name(reason: &str) -> &'static str {
    match reason {
        "Online" => names::ONLINE,
        "Degraded" => names::DEGRADED,
        "Paused" => names::PAUSED,
        "Deleted" => names::REMOVED,
        "HeartbeatLost" | "AgentDied" | "Offline" => names::OFFLINE,
        "Provisioning" | "Reconfiguring" | "Restarting" | "Reprovisioning" | "WaitingForAgent"
        | "Resumed" => names::PROVISIONING,
        "ProvisionFailed"
        | "ProvisionTimeout"
        | "ProvisionRejected"
        | "InvalidConfig"
        | "UnknownRuntime"
        | "MissingEnv"
        | "ImageMissing"
        | "ImageBuildFailed"
        | "ControlPlaneAuth"
        | "ControlPlaneUnavailable"
        | "ControlPlaneNotConfigured" => names::PROVISION_FAILED,
        _ => names::UPDATED,
    }
}

/// The original's event name of an audit action about a workspace; `None` for actions the
/// original has no name for (org imports, secrets, plugins keep their own action name).
pub fn audit_event_name(action: &str) -> Option<&'static str> {
    Some(match action {
        "workspace.created" | "workspace.restart_requested" | "workspace.resumed" => {
            names::PROVISIONING
        }
        "workspace.paused" => names::PAUSED,
        "workspace.deleted" | "workspace.delete_requested" => names::REMOVED,
        "workspace.test_token_minted" => names::UPDATED,
        _ => return None,
    })
}

/// An audit row as a log row (id `audit-<row id>`); `workspace_id` from its data (`uid`,
/// `workspace_uid`) or, for `workspace.*` events, from the live record of that name.
pub fn audit_row(r: &AuditRow, tree: &Tree) -> Row {
    let mut data: Value = serde_json::from_str(&r.data).unwrap_or_else(|_| json!({}));
    let ws = data
        .get("uid")
        .or_else(|| data.get("workspace_uid"))
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            r.event
                .starts_with("workspace.")
                .then(|| tree.uid_of(&r.namespace, &r.name).map(String::from))
                .flatten()
        });
    if let Some(o) = data.as_object_mut() {
        o.insert("namespace".into(), json!(r.namespace));
        o.insert("name".into(), json!(r.name));
        o.insert("source".into(), json!("audit"));
        o.insert("action".into(), json!(r.event));
    }
    Row {
        at: parse_time(&r.at),
        json: json!({
            "id": format!("audit-{}", r.id),
            "event_type": audit_event_name(&r.event).unwrap_or(&r.event),
            "workspace_id": ws,
            "payload": data,
            "created_at": r.at,
        }),
    }
}

/// A Kubernetes Event about a workspace as a log row (`event_type` from its reason).
pub fn kube_row(e: &KubeEvent) -> Row {
    // A repeated Event is one record with a series: its last observation is the newest.
    let when = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let obj = &e.involved_object;
    Row {
        at: when,
        json: json!({
            "id": e.metadata.uid,
            "event_type": kube_event_name(e.reason.as_deref().unwrap_or("")),
            "workspace_id": obj.uid,
            "payload": {
                "type": e.type_, "reason": e.reason, "message": e.message,
                "count": e.series.as_ref().and_then(|s| s.count).or(e.count), "namespace": obj.namespace, "name": obj.name,
                "reporting_controller": e.reporting_component.clone().or_else(|| e.source.as_ref().and_then(|s| s.component.clone())),
                "source": "kubernetes",
            },
            "created_at": when.to_string(),
        }),
    }
}

/// Newest first, at most `limit`.
pub fn newest(mut rows: Vec<Row>, limit: usize) -> Vec<Value> {
    rows.sort_by_key(|r| std::cmp::Reverse(r.at));
    rows.into_iter().take(limit).map(|r| r.json).collect()
}

fn limit_of(q: Option<String>) -> Result<usize, ShimError> {
    match form_urlencoded::parse(q.unwrap_or_default().as_bytes()).find(|(k, _)| k == "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ShimError::bad(format!("query `limit` must be between 1 and {MAX_LIMIT}"))
            }),
    }
}

/// The newest `limit` audit rows (of one workspace, when `uid` is given; filtered and limited
/// in SQL, ADR 0042) and the Kubernetes Events of workspaces.
async fn gather(shim: &Shim, uid: Option<&str>, limit: usize) -> Result<Vec<Row>, ShimError> {
    shim.cache.wait_ready().await?;
    let tree = shim.cache.tree();
    let filter = AuditFilter {
        workspace: uid.map(|u| WorkspaceRef {
            uid: u.to_string(),
            object: tree
                .get(u)
                .map(|w| (w.namespace().unwrap_or_default(), w.name_any())),
        }),
        ..Default::default()
    };
    let audit = shim.audit.query(&filter, limit).await.map_err(|e| {
        tracing::warn!(error = %e, "shim: reading the audit log failed");
        ShimError::Unavailable("the audit log is unavailable; retry")
    })?;
    // The SQL filter matches by uid in the data, or by name for `workspace.*` rows; the same
    // rule as `audit_row`'s `workspace_id`, checked once more on the result.
    let mut rows: Vec<Row> = audit
        .iter()
        .map(|r| audit_row(r, &tree))
        .filter(|r| uid.is_none_or(|u| r.json["workspace_id"].as_str() == Some(u)))
        .collect();
    let selector = match uid {
        Some(u) => format!("involvedObject.kind=Workspace,involvedObject.uid={u}"),
        None => "involvedObject.kind=Workspace".to_string(),
    };
    let events: Api<KubeEvent> = Api::all(shim.client.clone());
    rows.extend(
        events
            .list(&ListParams::default().fields(&selector))
            .await?
            .items
            .iter()
            .map(kube_row),
    );
    Ok(rows)
}

/// `GET /events[?limit=N]` (admin).
pub async fn list(
    State(shim): State<Arc<Shim>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let limit = limit_of(q)?;
    Ok(axum::Json(newest(gather(&shim, None, limit).await?, limit)).into_response())
}

/// `GET /events/:workspace_id[?limit=N]`: the admin token or that workspace's token. A deleted
/// workspace's history stays readable by the admin.
pub async fn for_workspace(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ShimResult {
    let token = bearer(&headers);
    let limit = limit_of(q)?;
    super::input::check_id(&id)?;
    let live = match shim.require_workspace(token.as_deref(), &id).await {
        Ok(_) => true,
        Err(ShimError::NotFound(_)) => false,
        Err(e) => return Err(e),
    };
    let rows = gather(&shim, Some(&id), limit).await?;
    if !live && rows.is_empty() {
        return Err(ShimError::NotFound("workspace"));
    }
    Ok(axum::Json(newest(rows, limit)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_rows_find_their_workspace_and_sort_newest_first() {
        let tree = Tree::new([]);
        let a = AuditRow {
            id: 1,
            at: "2026-01-01T00:00:01.000000Z".into(),
            event: "workspace.deleted".into(),
            namespace: "ns".into(),
            name: "lead".into(),
            data: r#"{"uid":"u-1"}"#.into(),
        };
        let b = AuditRow {
            id: 2,
            at: "2026-01-01T00:00:02.000000Z".into(),
            event: "org.import.started".into(),
            namespace: "ns".into(),
            name: "team".into(),
            data: "not json".into(),
        };
        let rows = newest(vec![audit_row(&a, &tree), audit_row(&b, &tree)], 10);
        assert_eq!(rows[0]["event_type"], "org.import.started");
        assert_eq!(rows[1]["event_type"], "WORKSPACE_REMOVED");
        assert_eq!(rows[1]["payload"]["action"], "workspace.deleted");
        assert!(rows[0]["workspace_id"].is_null());
        assert_eq!(rows[0]["payload"]["name"], "team");
        assert_eq!(rows[1]["workspace_id"], "u-1");
        assert_eq!(rows[1]["id"], "audit-1");
        assert_eq!(newest(vec![audit_row(&a, &tree)], 0).len(), 0);
    }

    #[test]
    fn controller_reasons_become_the_original_event_names() {
        for (reason, name) in [
            ("Provisioning", "WORKSPACE_PROVISIONING"),
            ("Online", "WORKSPACE_ONLINE"),
            ("HeartbeatLost", "WORKSPACE_OFFLINE"),
            ("Degraded", "WORKSPACE_DEGRADED"),
            ("Paused", "WORKSPACE_PAUSED"),
            ("Deleted", "WORKSPACE_REMOVED"),
            ("ProvisionTimeout", "WORKSPACE_PROVISION_FAILED"),
            ("ImageNote", "WORKSPACE_UPDATED"),
        ] {
            assert_eq!(kube_event_name(reason), name, "{reason}");
        }
        assert_eq!(
            audit_event_name("workspace.created"),
            Some("WORKSPACE_PROVISIONING")
        );
        assert_eq!(audit_event_name("secret.set"), None);
    }
}
