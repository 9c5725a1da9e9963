//! The activity log (ADR 0050): `POST /workspaces/:id/activity` (an agent reports its own
//! work) and `GET /workspaces/:id/activity?type=&source=&limit=` (newest first), the
//! [`ActivityLog`] the A2A proxy writes its `a2a_send` / `a2a_receive` rows through, its
//! `ACTIVITY_LOGGED` stream message, and age-based retention.
//!
//! Auth: POST takes the admin token or the workspace's own token; GET also takes the token of
//! a workspace that may talk to it (the hierarchy rule, ADR 0038).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::cache::Outgoing;
use super::error::{ShimError, ShimResult};
use super::input::{Fields, check_id};
use super::teams::{Caller, Served};
use crate::store::{ActivityFilter, ActivityRow, ActivitySource, Store, StoreError};
use crate::teams::activity::{self as rules, MAX_SUMMARY};

/// Largest accepted `POST /workspaces/:id/activity` body (it may carry two capped bodies).
pub const MAX_POST: usize = 256 * 1024;
/// Default and largest `limit` of `GET /workspaces/:id/activity`.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 500;
/// Default retention of activity rows.
pub const DEFAULT_RETENTION_DAYS: u64 = 7;

/// The stream message of a new row.
pub const ACTIVITY_LOGGED: &str = "ACTIVITY_LOGGED";
/// The stream message of a canvas-originated A2A call's answer.
pub const A2A_RESPONSE: &str = "A2A_RESPONSE";

/// Where activity rows go and whom they are announced to; cheap to clone. Without a store
/// (an operator without `DATABASE_URL`) rows only reach the log.
#[derive(Clone, Default)]
pub struct ActivityLog {
    store: Option<Arc<dyn Store>>,
    events: Option<broadcast::Sender<Arc<Outgoing>>>,
}

impl ActivityLog {
    /// Rows go to `store` and are announced on `events` (the live stream), when given.
    pub fn new(
        store: Option<Arc<dyn Store>>,
        events: Option<broadcast::Sender<Arc<Outgoing>>>,
    ) -> Self {
        ActivityLog { store, events }
    }

    /// Appends a row and broadcasts `ACTIVITY_LOGGED` on its workspace.
    pub async fn record(&self, row: &ActivityRow) -> Result<(), StoreError> {
        if let Some(store) = &self.store {
            store.activity_insert(row).await?;
        } else {
            tracing::info!(workspace = %row.workspace_id, activity = %row.activity_type, summary = row.summary.as_deref().unwrap_or(""), "activity");
        }
        self.broadcast(
            ACTIVITY_LOGGED,
            &row.workspace_id,
            json!({
                "activity_type": row.activity_type,
                "method": row.method,
                "summary": row.summary,
                "status": row.status,
                "source_id": row.source_id,
                "target_id": row.target_id,
                "duration_ms": row.duration_ms,
            }),
        );
        Ok(())
    }

    /// Sends one stream message `{event, workspace_id, timestamp, payload}`; nobody listening
    /// is fine.
    pub fn broadcast(&self, event: &'static str, workspace_id: &str, payload: Value) {
        let Some(events) = &self.events else { return };
        let text = json!({
            "event": event,
            "workspace_id": workspace_id,
            "timestamp": crate::util::now_micro(),
            "payload": payload,
        })
        .to_string();
        let _ = events.send(Arc::new(Outgoing {
            event,
            workspace_id: workspace_id.to_string(),
            text: text.into(),
        }));
    }

    /// The rows `filter` selects, newest first; none without a store.
    pub async fn query(&self, filter: &ActivityFilter) -> Result<Vec<ActivityRow>, StoreError> {
        match &self.store {
            Some(s) => s.activity_query(filter).await,
            None => Ok(vec![]),
        }
    }

    /// Deletes rows older than `keep` now and then every `every`, until `shutdown`.
    pub fn spawn_retention(
        &self,
        keep: std::time::Duration,
        every: std::time::Duration,
        shutdown: crate::shutdown::Shutdown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let store = self.store.clone()?;
        Some(tokio::spawn(async move {
            let stop = shutdown.wait();
            tokio::pin!(stop);
            loop {
                let cutoff = crate::store::audit_cutoff(keep);
                match store.activity_prune(&cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(removed = n, before = %cutoff, "activity retention removed old rows")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "activity retention failed; retrying later")
                    }
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }))
    }
}

/// The routes (on both listeners; see `teams::router`).
pub fn router(served: Served) -> Router {
    Router::new()
        .route("/workspaces/{id}/activity", get(list).post(report))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_POST))
        .with_state(served)
}

/// A row as the original's API shows it.
pub fn row_json(r: &ActivityRow) -> Value {
    let body = |b: &Option<String>| {
        b.as_deref()
            .map(|s| serde_json::from_str::<Value>(s).unwrap_or_else(|_| json!(s)))
    };
    json!({
        "id": r.id.to_string(),
        "workspace_id": r.workspace_id,
        "activity_type": r.activity_type,
        "source_id": r.source_id,
        "target_id": r.target_id,
        "method": r.method,
        "summary": r.summary,
        "request_body": body(&r.request_body),
        "response_body": body(&r.response_body),
        "duration_ms": r.duration_ms,
        "status": r.status,
        "error_detail": r.error_detail,
        "created_at": r.created_at,
    })
}

/// The query of `GET …/activity`, checked.
fn filter_of(id: &str, q: Option<String>) -> Result<ActivityFilter, ShimError> {
    let mut f = ActivityFilter {
        workspace_id: id.to_string(),
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match &*k {
            "type" if !v.is_empty() => {
                f.activity_type = Some(rules::check_type(&v).map_err(ShimError::bad)?.into());
            }
            "source" if !v.is_empty() => {
                f.source = Some(match &*v {
                    "canvas" => ActivitySource::Canvas,
                    "agent" => ActivitySource::Agent,
                    _ => return Err(ShimError::bad("query `source` must be canvas or agent")),
                });
            }
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| ShimError::bad("query `limit` must be a positive integer"))?
                    .min(MAX_LIMIT);
            }
            _ => {}
        }
    }
    Ok(f)
}

/// `GET /workspaces/:id/activity`: the admin (any id; an unknown one has no rows), the
/// workspace itself, or a workspace that may talk to it.
async fn list(
    State(served): State<Served>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ShimResult {
    check_id(&id)?;
    let st = served.get()?;
    let token = crate::tokens::bearer(&headers).ok_or(ShimError::Unauthenticated)?;
    let filter = filter_of(&id, q)?;
    if !super::teams::is_admin(&served.admin, token) {
        let me = st
            .workspaces
            .state()
            .into_iter()
            .find(|w| super::teams::token_matches(w, token))
            .and_then(|w| kube::ResourceExt::uid(&*w))
            .ok_or(ShimError::BadToken)?;
        if me != id && !st.tree().can_communicate(&me, &id) {
            return Err(ShimError::Forbidden(
                "this workspace may not read that workspace's activity",
            ));
        }
    }
    let rows = st.activity.query(&filter).await.map_err(|e| {
        tracing::warn!(error = %e, "reading the activity log failed");
        ShimError::Unavailable("the activity log is unavailable; retry")
    })?;
    Ok(axum::Json(rows.iter().map(row_json).collect::<Vec<_>>()).into_response())
}

/// The row an agent (or the admin) reports, checked field by field.
fn reported_row(
    id: &str,
    caller: &Caller,
    b: &Map<String, Value>,
) -> Result<ActivityRow, ShimError> {
    let f = Fields(b);
    let activity_type = rules::check_type(&f.required_str("activity_type", 64)?)
        .map_err(ShimError::bad)?
        .to_string();
    let ids = |key: &str| -> Result<Option<String>, ShimError> {
        match f.str(key, 64)? {
            Some(v) => check_id(&v)
                .map(|_| Some(v))
                .map_err(|_| ShimError::bad(format!("field `{key}` must be a workspace id"))),
            None => Ok(None),
        }
    };
    let source_id = match (caller, ids("source_id")?) {
        // A workspace reports as itself, never as another one.
        (Caller::Workspace(_), Some(s)) if s != id => {
            return Err(ShimError::bad(
                "field `source_id` must be this workspace's id",
            ));
        }
        (Caller::Workspace(_), _) => Some(id.to_string()),
        (Caller::Admin, s) => s,
    };
    let body = |key: &str| b.get(key).and_then(rules::stored_value);
    Ok(ActivityRow {
        id: 0,
        workspace_id: id.to_string(),
        activity_type,
        source_id,
        target_id: ids("target_id")?,
        method: f.str("method", 128)?,
        summary: f
            .str("summary", 4096)?
            .map(|s| rules::cut(&s, MAX_SUMMARY * 4)),
        request_body: body("request_body").or_else(|| body("metadata")),
        response_body: body("response_body"),
        duration_ms: f.int("duration_ms", 0, 7 * 86_400_000)?,
        status: f.str("status", 32)?.unwrap_or_else(|| "ok".into()),
        error_detail: f.str("error_detail", 4096)?,
        created_at: crate::util::now_micro(),
    })
}

/// `POST /workspaces/:id/activity`: the admin or the workspace itself.
async fn report(
    State(served): State<Served>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ShimResult {
    check_id(&id)?;
    let st = served.get()?;
    let caller = st
        .owner_or_admin(&served.admin, crate::tokens::bearer(&headers), &id)
        .await?;
    let obj = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(ShimError::bad("the body must be a JSON object")),
        Err(e) => {
            return Err(ShimError::bad(format!(
                "malformed JSON at line {} column {}",
                e.line(),
                e.column()
            )));
        }
    };
    let row = reported_row(&id, &caller, &obj)?;
    if matches!(caller, Caller::Admin) && st.get(&id).is_none() {
        return Err(ShimError::NotFound("workspace"));
    }
    st.activity.record(&row).await.map_err(|e| {
        tracing::warn!(error = %e, "writing an activity row failed");
        ShimError::Unavailable("the activity log is unavailable; retry")
    })?;
    st.metrics.inc(
        "molecule_activity_rows_total",
        &[(
            "type",
            rules::check_type(&row.activity_type).unwrap_or("other"),
        )],
    );
    Ok(axum::Json(json!({"status": "logged"})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1e-7b4d-4e5f-8a9b-0c1d2e3f4a5b";
    const OTHER: &str = "00000000-7b4d-4e5f-8a9b-0c1d2e3f4a5b";

    fn ws_caller() -> Caller {
        Caller::Workspace(Arc::new(crate::resources::Workspace::new(
            "w",
            Default::default(),
        )))
    }

    #[test]
    fn queries_are_checked() {
        let f = filter_of(ID, Some("type=a2a_send&source=canvas&limit=900".into())).expect("ok");
        assert_eq!(f.activity_type.as_deref(), Some("a2a_send"));
        assert_eq!(f.source, Some(ActivitySource::Canvas));
        assert_eq!(f.limit, MAX_LIMIT);
        assert_eq!(filter_of(ID, None).expect("default").limit, DEFAULT_LIMIT);
        for (q, needle) in [
            ("type=nope", "invalid activity_type"),
            ("source=x", "`source`"),
            ("limit=0", "`limit`"),
            ("limit=ten", "`limit`"),
        ] {
            let e = filter_of(ID, Some(q.into())).expect_err(q).to_string();
            assert!(e.contains(needle), "{q}: {e}");
        }
    }

    #[test]
    fn reported_rows_are_checked_and_never_spoof_their_source() {
        let body = json!({"activity_type": "agent_log", "summary": "did a thing", "duration_ms": 5, "metadata": {"k": 1}});
        let r = reported_row(ID, &ws_caller(), body.as_object().expect("o")).expect("ok");
        assert_eq!(r.source_id.as_deref(), Some(ID));
        assert_eq!(r.status, "ok");
        assert_eq!(r.request_body.as_deref(), Some(r#"{"k":1}"#));
        for (b, needle) in [
            (json!({}), "`activity_type` is required"),
            (
                json!({"activity_type": "bogus"}),
                "invalid activity_type, must be one of",
            ),
            (
                json!({"activity_type": "error", "source_id": OTHER}),
                "`source_id` must be this",
            ),
            (
                json!({"activity_type": "error", "target_id": "x"}),
                "`target_id` must be a workspace id",
            ),
            (
                json!({"activity_type": "error", "duration_ms": -1}),
                "`duration_ms`",
            ),
        ] {
            let e = reported_row(ID, &ws_caller(), b.as_object().expect("o"))
                .expect_err(needle)
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        // The admin may name the source.
        let b = json!({"activity_type": "a2a_receive", "source_id": OTHER});
        let r = reported_row(ID, &Caller::Admin, b.as_object().expect("o")).expect("admin");
        assert_eq!(r.source_id.as_deref(), Some(OTHER));
    }

    #[test]
    fn rows_render_with_their_bodies_as_json() {
        let r = ActivityRow {
            id: 7,
            workspace_id: ID.into(),
            activity_type: "a2a_send".into(),
            request_body: Some(r#"{"a":1}"#.into()),
            status: "ok".into(),
            ..Default::default()
        };
        let v = row_json(&r);
        assert_eq!(v["id"], "7");
        assert_eq!(v["request_body"]["a"], 1);
        assert!(v["response_body"].is_null());
    }

    #[tokio::test]
    async fn recording_broadcasts_activity_logged() {
        let (tx, mut rx) = broadcast::channel(4);
        let log = ActivityLog::new(None, Some(tx));
        let row = ActivityRow {
            workspace_id: ID.into(),
            activity_type: "agent_log".into(),
            summary: Some("hi".into()),
            status: "ok".into(),
            ..Default::default()
        };
        log.record(&row).await.expect("record");
        let m = rx.recv().await.expect("message");
        assert_eq!((m.event, m.workspace_id.as_str()), (ACTIVITY_LOGGED, ID));
        let v: Value = serde_json::from_str(m.text.as_str()).expect("json");
        assert_eq!(v["payload"]["summary"], "hi");
        assert_eq!(v["event"], ACTIVITY_LOGGED);
    }
}
