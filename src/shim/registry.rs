//! `POST /registry/register`, `POST /registry/heartbeat` and `POST /registry/update-card`
//! (ADR 0006, ADR 0049): agents authenticate with a live token of their workspace (only
//! digests are on record, `crate::workspace_tokens`) and drive the Workspace status. The same
//! routes are served on the agent listener, on the operator's port and on `serve`'s main port;
//! only the index the caller's workspace is looked up in differs ([`WorkspaceIndex`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::resources::Workspace;
use crate::telemetry::Metrics;
use crate::tokens::bearer;

/// Largest accepted registry request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Largest accepted agent card (serialized).
pub const MAX_CARD: usize = 16 * 1024;

/// Where the registry finds a workspace by uid.
#[derive(Clone)]
pub enum WorkspaceIndex {
    /// The controllers' shared Workspace cache (agent listener, operator port).
    Store(Store<Workspace>),
    /// The shim's index (`serve`'s main port, which serves it whatever controllers run).
    Shim(Arc<super::cache::Cache>),
}

impl WorkspaceIndex {
    async fn get(&self, uid: &str) -> Option<Workspace> {
        match self {
            WorkspaceIndex::Store(s) => s
                .state()
                .into_iter()
                .find(|w| w.uid().as_deref() == Some(uid))
                .map(|w| (*w).clone()),
            WorkspaceIndex::Shim(c) => {
                // Before the first list nothing is known: wait for it (bounded).
                let _ = c.wait_ready().await;
                c.get(uid).map(|w| (*w).clone())
            }
        }
    }
}

impl From<Store<Workspace>> for WorkspaceIndex {
    fn from(s: Store<Workspace>) -> Self {
        WorkspaceIndex::Store(s)
    }
}

/// What the handlers need; built by `host`.
pub struct RegistryState {
    pub client: Client,
    pub workspaces: WorkspaceIndex,
    pub metrics: Arc<Metrics>,
}

/// What the routes serve: `None` when the Workspace controller does not run (503).
type Served = Option<Arc<RegistryState>>;

/// The `/registry/*` routes.
pub fn router(state: Served) -> Router {
    Router::new()
        .route("/registry/register", post(register))
        .route("/registry/heartbeat", post(heartbeat))
        .route("/registry/update-card", post(update_card))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

#[derive(Deserialize)]
struct RegisterBody {
    id: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    agent_card: Option<Value>,
}

#[derive(Deserialize)]
struct UpdateCardBody {
    workspace_id: String,
    agent_card: Value,
}

#[derive(Deserialize)]
struct HeartbeatBody {
    workspace_id: String,
    #[serde(default)]
    error_rate: Option<f64>,
    #[serde(default)]
    sample_error: Option<String>,
    #[serde(default)]
    active_tasks: Option<i64>,
    #[serde(default)]
    current_task: Option<String>,
    #[serde(default)]
    uptime_seconds: Option<i64>,
    #[serde(default)]
    runtime_state: Option<String>,
}

fn truncate(s: Option<String>, n: usize) -> Option<String> {
    s.map(|s| s.chars().take(n).collect())
}

pub use crate::net::agent_url::validate_agent_url;

/// Finds the workspace by uid and checks the token against its live digests. A stale index
/// entry is re-checked against the API (the controller may have just rotated the token, or a
/// token may have just been minted).
async fn authenticate(
    st: &RegistryState,
    id: &str,
    token: Option<&str>,
) -> Result<Workspace, Response> {
    let Some(token) = token else {
        return Err(error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    let cached = st.workspaces.get(id).await;
    let matches = |w: &Workspace| crate::workspace_tokens::accepts_workspace(w, token);
    let ws = match cached {
        Some(w) if matches(&w) => w,
        Some(w) => {
            let api: Api<Workspace> =
                Api::namespaced(st.client.clone(), &w.namespace().unwrap_or_default());
            match api.get_opt(&w.name_any()).await {
                Ok(Some(fresh)) if fresh.uid().as_deref() == Some(id) && matches(&fresh) => fresh,
                Ok(Some(fresh)) if fresh.uid().as_deref() == Some(id) => {
                    return Err(error(
                        StatusCode::UNAUTHORIZED,
                        "invalid token for this workspace",
                    ));
                }
                Ok(_) => return Err(error(StatusCode::NOT_FOUND, "unknown workspace")),
                Err(_) => {
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the API is unavailable; retry",
                    ));
                }
            }
        }
        None => return Err(error(StatusCode::NOT_FOUND, "unknown workspace")),
    };
    if ws.metadata.deletion_timestamp.is_some() {
        return Err(error(StatusCode::GONE, "the workspace is being deleted"));
    }
    if ws.spec.paused {
        return Err(error(StatusCode::CONFLICT, "the workspace is paused"));
    }
    Ok(ws)
}

async fn patch_status(st: &RegistryState, ws: &Workspace, status: Value) -> Result<(), Response> {
    let api: Api<Workspace> =
        Api::namespaced(st.client.clone(), &ws.namespace().unwrap_or_default());
    api.patch_status(
        &ws.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "could not record the call; retry",
        )
    })
}

/// The body as `T`, or the message of a 400 naming what is wrong with it (serde's message
/// names the field and position, never a value).
fn parse<T: DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, String> {
    serde_json::from_slice::<T>(body).map_err(|e| format!("invalid body: {e}; expected {expected}"))
}

/// An agent card is a JSON object of at most [`MAX_CARD`] bytes.
pub fn check_card(card: &Value) -> Result<(), &'static str> {
    if !card.is_object() {
        return Err("agent_card must be a JSON object");
    }
    if card.to_string().len() > MAX_CARD {
        return Err("agent_card is larger than 16 KiB");
    }
    Ok(())
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the workspace controller is not running",
    )
}

/// Authenticates a registry call and counts refusals.
async fn caller(
    st: &RegistryState,
    call: &'static str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Workspace, Response> {
    authenticate(st, id, bearer(headers))
        .await
        .inspect_err(|_| {
            st.metrics.inc(
                "molecule_registry_calls_total",
                &[("call", call), ("result", "refused")],
            );
        })
}

fn counted_ok(st: &RegistryState, call: &'static str, answer: Value) -> Response {
    st.metrics.inc(
        "molecule_registry_calls_total",
        &[("call", call), ("result", "ok")],
    );
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// `POST /registry/register {id, url, agent_card}` → `{status: "registered"}`.
async fn register(State(state): State<Served>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(st) = state.as_deref() else {
        return unavailable();
    };
    let b: RegisterBody = match parse(&body, "{id, url, agent_card}") {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let ws = match caller(st, "register", &b.id, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Some(u) = &b.url
        && let Err(why) = validate_agent_url(u)
    {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let card = b.agent_card.filter(|c| !c.is_null());
    if let Some(c) = &card
        && let Err(why) = check_card(c)
    {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let status =
        json!({"lastHeartbeat": crate::util::now_micro(), "agentUrl": b.url, "agentCard": card});
    if let Err(r) = patch_status(st, &ws, status).await {
        return r;
    }
    tracing::info!(event = "agent.registered", workspace = %ws.name_any(), "agent registered");
    counted_ok(
        st,
        "register",
        json!({"status": "registered", "workspace_id": b.id}),
    )
}

/// `POST /registry/update-card {workspace_id, agent_card}` → `{status: "updated"}`; the stream
/// announces `AGENT_CARD_UPDATED` (from the watch, like every change).
async fn update_card(State(state): State<Served>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(st) = state.as_deref() else {
        return unavailable();
    };
    let b: UpdateCardBody = match parse(&body, "{workspace_id, agent_card}") {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let ws = match caller(st, "update_card", &b.workspace_id, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Err(why) = check_card(&b.agent_card) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    if let Err(r) = patch_status(st, &ws, json!({"agentCard": b.agent_card})).await {
        return r;
    }
    counted_ok(st, "update_card", json!({"status": "updated"}))
}

/// Checks the numbers of a heartbeat: a rate in 0…1, counts not negative.
fn check_heartbeat(b: &HeartbeatBody) -> Result<(), &'static str> {
    if b.error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return Err("error_rate must be between 0 and 1");
    }
    if b.active_tasks.is_some_and(|n| n < 0) {
        return Err("active_tasks must not be negative");
    }
    if b.uptime_seconds.is_some_and(|n| n < 0) {
        return Err("uptime_seconds must not be negative");
    }
    Ok(())
}

/// `POST /registry/heartbeat {workspace_id, error_rate, sample_error, active_tasks,
/// uptime_seconds, current_task?, runtime_state?}` → `{status: "ok"}`. The Workspace
/// controller derives the phase from it: Degraded at `error_rate >= 0.5` (or a wedged
/// runtime), Online again below 0.1.
async fn heartbeat(State(state): State<Served>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(st) = state.as_deref() else {
        return unavailable();
    };
    let b: HeartbeatBody = match parse(&body, "{workspace_id, error_rate, ...}") {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let ws = match caller(st, "heartbeat", &b.workspace_id, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Err(why) = check_heartbeat(&b) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let status = json!({
        "lastHeartbeat": crate::util::now_micro(),
        "errorRate": b.error_rate,
        "sampleError": truncate(b.sample_error, 512),
        "activeTasks": b.active_tasks,
        "currentTask": truncate(b.current_task, 512),
        "uptimeSeconds": b.uptime_seconds,
        "runtimeState": truncate(b.runtime_state, 64),
    });
    if let Err(r) = patch_status(st, &ws, status).await {
        return r;
    }
    counted_ok(st, "heartbeat", json!({"status": "ok"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_and_heartbeat_numbers_are_checked() {
        assert!(check_card(&json!({"name": "x"})).is_ok());
        assert!(check_card(&json!("x")).is_err());
        assert!(check_card(&json!([1])).is_err());
        assert!(check_card(&json!({"d": "x".repeat(MAX_CARD)})).is_err());
        let hb = |v: Value| serde_json::from_value::<HeartbeatBody>(v).expect("body");
        assert!(check_heartbeat(&hb(json!({"workspace_id": "u", "error_rate": 0.5}))).is_ok());
        assert!(check_heartbeat(&hb(json!({"workspace_id": "u", "error_rate": 1.5}))).is_err());
        assert!(check_heartbeat(&hb(json!({"workspace_id": "u", "active_tasks": -1}))).is_err());
        assert!(check_heartbeat(&hb(json!({"workspace_id": "u", "uptime_seconds": -1}))).is_err());
    }

    #[test]
    fn agent_urls_are_validated() {
        assert!(validate_agent_url("http://ws-3f2a9c1e7b4d:8000").is_ok());
        assert!(validate_agent_url("https://agent.example.com/a2a").is_ok());
        assert!(validate_agent_url("http://10.0.0.5:8000").is_ok());
        for bad in [
            "ftp://x",
            "http://169.254.169.254/latest",
            "http://[fe80::1]:80",
            "http://metadata.google.internal",
            "http://user:pw@host",
            "http://0.0.0.0:1",
            "http://",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
        ] {
            assert!(validate_agent_url(bad).is_err(), "{bad}");
        }
    }
}
