//! Delegations and the busy queue over HTTP (ADR 0051), served on the main port and on the
//! agent listener (agents delegate from inside their containers):
//!
//! - `POST /workspaces/:id/delegate {target_id, task, idempotency_key?}` → 202
//!   `{delegation_id, status: "delegated", target_id}` (an idempotent retry: 200 with the
//!   existing delegation and `idempotent_hit: true`);
//! - `GET /workspaces/:id/delegations[?limit=]`: the delegations it sent and received;
//! - `POST /workspaces/:id/delegations/record {target_id, task, delegation_id}` and
//!   `POST /workspaces/:id/delegations/:delegation_id/update {status, error?, response_preview?}`
//!   for agents that call a peer themselves;
//! - `GET /workspaces/:id/queue[?limit=]`: the calls queued for a busy workspace.
//!
//! Every route takes the admin token or the token of workspace `:id`; the target of a
//! delegation must be one `:id` may talk to (the hierarchy rule).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::ResourceExt;
use serde_json::{Map, Value, json};

use crate::store::teams::{Delegation, NewDelegation, QueueItem};
use crate::teams::service::{Publish, Teams, valid_key};

/// Largest accepted request body.
pub const MAX_BODY: usize = 512 * 1024;
/// Longest task text.
pub const MAX_TASK: usize = 256 * 1024;
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

type Served = Option<Arc<Teams>>;

/// The routes; `None` answers 503.
pub fn router(teams: Served) -> Router {
    Router::new()
        .route("/workspaces/{id}/delegate", post(delegate))
        .route("/workspaces/{id}/delegations", get(list))
        .route("/workspaces/{id}/delegations/record", post(record))
        .route(
            "/workspaces/{id}/delegations/{delegation_id}/update",
            post(update),
        )
        .route("/workspaces/{id}/queue", get(queue))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(teams)
}

/// Publishes on the shim's live stream, in its message shape.
pub fn publisher(shim: &super::Shim) -> Publish {
    let events = shim.events.clone();
    Arc::new(move |event, workspace_id, payload| {
        let text = json!({
            "event": event,
            "workspace_id": workspace_id,
            "timestamp": crate::util::now_micro(),
            "payload": payload,
        })
        .to_string();
        let _ = events.send(Arc::new(super::cache::Outgoing {
            event,
            workspace_id: workspace_id.to_string(),
            text: text.into(),
        }));
    })
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

/// A refusal of a field or query, rendered like [`error`].
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

fn refuse(code: StatusCode, msg: &str) -> Refusal {
    Refusal(code, msg.to_string())
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "delegations are unavailable on this server",
    )
}

fn store_error(e: crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "delegations: the store failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the delegation store is unavailable; retry",
    )
}

/// The admin token, or the token of workspace `id` (401 without a valid token, 403 with
/// another workspace's, 404 for an unknown workspace with the admin token).
async fn authorize(t: &Teams, id: &str, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = crate::tokens::bearer(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    if !valid_key(id, 64) {
        return Err(error(StatusCode::BAD_REQUEST, "invalid workspace id"));
    }
    if !t.wait_ready().await {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the workspace list is not loaded yet; retry",
        ));
    }
    let ws = t.workspace(id);
    if t.is_admin(token) {
        return match ws {
            Some(_) => Ok(()),
            None => Err(error(StatusCode::NOT_FOUND, "workspace not found")),
        };
    }
    let owns =
        |w: &crate::resources::Workspace| crate::workspace_tokens::accepts_workspace(w, token);
    if ws.as_deref().is_some_and(owns) {
        return Ok(());
    }
    let anyone = t.token_owner(token).is_some();
    if anyone {
        Err(error(
            StatusCode::FORBIDDEN,
            "this token belongs to another workspace",
        ))
    } else {
        Err(error(StatusCode::UNAUTHORIZED, "invalid token"))
    }
}

fn body_object(body: &Bytes) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        )),
    }
}

/// A required string field of at most `max` bytes.
fn field(m: &Map<String, Value>, key: &str, max: usize) -> Result<String, Refusal> {
    match m.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= max => Ok(s.clone()),
        Some(Value::String(s)) if s.len() > max => Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("`{key}` is longer than {max} bytes"),
        )),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("`{key}` is required and must be a non-empty string"),
        )),
    }
}

fn optional(m: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, Refusal> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => field(m, key, max).map(Some),
    }
}

fn limit_of(q: Option<String>) -> Result<i64, Refusal> {
    match form_urlencoded::parse(q.unwrap_or_default().as_bytes()).find(|(k, _)| k == "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some((_, v)) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("query `limit` must be between 1 and {MAX_LIMIT}"),
                )
            }),
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// One delegation as listed, from the point of view of workspace `me`.
pub fn delegation_json(d: &Delegation, me: &str) -> Value {
    let summary = if d.source_id == me {
        format!("Delegating to {}", d.target_id)
    } else {
        format!("Delegated by {}", d.source_id)
    };
    let mut v = json!({
        "id": d.id,
        "delegation_id": d.id,
        "type": "delegation",
        "direction": if d.source_id == me { "out" } else { "in" },
        "source_id": d.source_id,
        "target_id": d.target_id,
        "summary": summary,
        "task_preview": d.task.chars().take(200).collect::<String>(),
        "status": d.status,
        "origin": d.origin,
        "created_at": rfc3339(d.created_ms),
        "updated_at": rfc3339(d.updated_ms),
    });
    if let Some(e) = &d.error {
        v["error"] = json!(e);
    }
    if let Some(p) = &d.response_preview {
        v["response_preview"] = json!(p.chars().take(300).collect::<String>());
    }
    if let Some(q) = &d.queue_id {
        v["queue_id"] = json!(q);
    }
    v
}

fn item_json(i: &QueueItem) -> Value {
    json!({
        "queue_id": i.id,
        "workspace_id": i.workspace_id,
        "caller_id": i.caller_id,
        "priority": i.priority,
        "method": i.method,
        "delegation_id": i.delegation_id,
        "status": i.status,
        "attempts": i.attempts,
        "enqueued_at": rfc3339(i.enqueued_ms),
        "expires_at": i.expires_ms.map(rfc3339),
        "finished_at": i.finished_ms.map(rfc3339),
        "response_status": i.response_status,
        "response_preview": i.response_preview,
        "error": i.last_error,
    })
}

async fn delegate(
    State(teams): State<Served>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = teams else { return unavailable() };
    if let Err(r) = authorize(&t, &id, &headers).await {
        return r;
    }
    let m = match body_object(&body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let (target, task, key) = match (
        field(&m, "target_id", 64),
        field(&m, "task", MAX_TASK),
        optional(&m, "idempotency_key", 128),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r.into_response(),
    };
    if !valid_key(&target, 64) {
        return error(StatusCode::BAD_REQUEST, "`target_id` is not a workspace id");
    }
    if key.as_deref().is_some_and(|k| !valid_key(k, 128)) {
        return error(
            StatusCode::BAD_REQUEST,
            "`idempotency_key` may hold letters, digits and - _ . : only",
        );
    }
    if target == id {
        return error(StatusCode::BAD_REQUEST, "self-delegation not permitted");
    }
    let tree = t.tree();
    match tree.get(&target) {
        None => return error(StatusCode::NOT_FOUND, "target workspace not found"),
        Some(w) if w.metadata.deletion_timestamp.is_some() => {
            return error(
                StatusCode::CONFLICT,
                "the target workspace is being deleted",
            );
        }
        Some(_) if !tree.can_communicate(&id, &target) => {
            return error(
                StatusCode::FORBIDDEN,
                "access denied: workspaces cannot communicate per hierarchy rules",
            );
        }
        Some(_) => {}
    }
    let new = NewDelegation {
        id: None,
        source_id: id.clone(),
        target_id: target.clone(),
        task,
        idempotency_key: key,
        origin: "platform",
    };
    match t.delegate(&new).await {
        Ok((d, true)) => (
            StatusCode::ACCEPTED,
            axum::Json(
                json!({"delegation_id": d.id, "status": "delegated", "target_id": d.target_id}),
            ),
        )
            .into_response(),
        Ok((d, false)) => (
            StatusCode::OK,
            axum::Json(json!({
                "delegation_id": d.id, "status": d.status, "target_id": d.target_id,
                "idempotent_hit": true,
            })),
        )
            .into_response(),
        Err(e) => store_error(e),
    }
}

async fn list(
    State(teams): State<Served>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(t) = teams else { return unavailable() };
    if let Err(r) = authorize(&t, &id, &headers).await {
        return r;
    }
    let limit = match limit_of(q) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    match t.store().delegation_list(&id, limit).await {
        Ok(rows) => axum::Json(
            rows.iter()
                .map(|d| delegation_json(d, &id))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => store_error(e),
    }
}

async fn record(
    State(teams): State<Served>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = teams else { return unavailable() };
    if let Err(r) = authorize(&t, &id, &headers).await {
        return r;
    }
    let m = match body_object(&body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let (target, task, delegation_id) = match (
        field(&m, "target_id", 64),
        field(&m, "task", MAX_TASK),
        field(&m, "delegation_id", 128),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r.into_response(),
    };
    if !valid_key(&target, 64) || !valid_key(&delegation_id, 128) {
        return error(
            StatusCode::BAD_REQUEST,
            "`target_id` and `delegation_id` may hold letters, digits and - _ . : only",
        );
    }
    if target == id {
        return error(StatusCode::BAD_REQUEST, "self-delegation not permitted");
    }
    if t.workspace(&target).is_none() {
        return error(StatusCode::NOT_FOUND, "target workspace not found");
    }
    if !t.tree().can_communicate(&id, &target) {
        return error(
            StatusCode::FORBIDDEN,
            "access denied: workspaces cannot communicate per hierarchy rules",
        );
    }
    // An id already used by another workspace's delegation is not this workspace's to record.
    match t.store().delegation_get(&delegation_id).await {
        Ok(Some(d)) if d.source_id != id => {
            return error(StatusCode::CONFLICT, "that delegation id is already in use");
        }
        Ok(_) => {}
        Err(e) => return store_error(e),
    }
    let new = NewDelegation {
        id: Some(delegation_id),
        source_id: id,
        target_id: target,
        task,
        idempotency_key: None,
        origin: "agent",
    };
    match t.delegate(&new).await {
        Ok((d, created)) => (
            if created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            },
            axum::Json(json!({"delegation_id": d.id, "status": "recorded"})),
        )
            .into_response(),
        Err(e) => store_error(e),
    }
}

async fn update(
    State(teams): State<Served>,
    Path((id, delegation_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = teams else { return unavailable() };
    if let Err(r) = authorize(&t, &id, &headers).await {
        return r;
    }
    let m = match body_object(&body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let status = match field(&m, "status", 16) {
        Ok(s) if s == "completed" || s == "failed" => s,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "status must be 'completed' or 'failed'",
            );
        }
        Err(r) => return r.into_response(),
    };
    let (err, preview) = match (
        optional(&m, "error", 4096),
        optional(&m, "response_preview", 16 * 1024),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let existing = match t.store().delegation_get(&delegation_id).await {
        Ok(Some(d)) if d.source_id == id => d,
        Ok(_) => return error(StatusCode::NOT_FOUND, "delegation not found"),
        Err(e) => return store_error(e),
    };
    if existing.status == status {
        return axum::Json(json!({"status": status, "delegation_id": delegation_id}))
            .into_response();
    }
    match t
        .report(&delegation_id, &status, err.as_deref(), preview.as_deref())
        .await
    {
        Ok(Some(d)) => {
            axum::Json(json!({"status": d.status, "delegation_id": d.id})).into_response()
        }
        Ok(None) => error(
            StatusCode::CONFLICT,
            &format!("the delegation is already {}", existing.status),
        ),
        Err(e) => store_error(e),
    }
}

async fn queue(
    State(teams): State<Served>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(t) = teams else { return unavailable() };
    if let Err(r) = authorize(&t, &id, &headers).await {
        return r;
    }
    let limit = match limit_of(q) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let depth = match t.store().queue_depth(&id).await {
        Ok(d) => d,
        Err(e) => return store_error(e),
    };
    match t.store().queue_list(&id, limit).await {
        Ok(items) => axum::Json(json!({
            "workspace_id": id,
            "name": t.workspace(&id).map(|w| w.name_any()),
            "queue_depth": depth,
            "items": items.iter().map(item_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}
