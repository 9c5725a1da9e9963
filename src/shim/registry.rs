//! `POST /registry/register` and `POST /registry/heartbeat` (ADR 0006): agents authenticate
//! with their workspace token (only its sha256 is on record) and drive the Workspace status.

use std::net::IpAddr;
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
use serde_json::{Value, json};

use crate::resources::Workspace;
use crate::telemetry::Metrics;
use crate::tokens::bearer;

/// Largest accepted registry request body.
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers need; built by `host` when the Workspace controller runs.
pub struct RegistryState {
    pub client: Client,
    pub workspaces: Store<Workspace>,
    pub metrics: Arc<Metrics>,
}

/// What the routes serve: `None` when the Workspace controller does not run (503).
type Served = Option<Arc<RegistryState>>;

/// The `/registry/*` routes.
pub fn router(state: Served) -> Router {
    Router::new()
        .route("/registry/register", post(register))
        .route("/registry/heartbeat", post(heartbeat))
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

/// Agent URLs must be http(s) and never point at link-local or cloud metadata addresses.
pub fn validate_agent_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("the agent url must be http or https")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("the agent url must not carry credentials");
    }
    let host = if let Some(h) = authority.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    if host.is_empty() {
        return Err("the agent url has no host");
    }
    let lower = host.to_ascii_lowercase();
    if lower == "metadata"
        || lower == "metadata.google.internal"
        || lower.ends_with(".metadata.google.internal")
    {
        return Err("the agent url points at a metadata service");
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let bad = match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified(),
        };
        if bad {
            return Err("the agent url points at a link-local or unspecified address");
        }
    }
    Ok(())
}

/// Finds the workspace by uid and checks the token against the recorded hash. A cache miss or
/// a stale hash is re-checked against the API (the controller may have just rotated the token).
async fn authenticate(
    st: &RegistryState,
    id: &str,
    token: Option<&str>,
) -> Result<Workspace, Response> {
    let cached = st
        .workspaces
        .state()
        .into_iter()
        .find(|w| w.uid().as_deref() == Some(id))
        .map(|w| (*w).clone());
    let Some(token) = token else {
        return Err(error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    let matches = |w: &Workspace| {
        w.status
            .as_ref()
            .and_then(|s| s.token_hash.as_deref())
            .is_some_and(|recorded| crate::tokens::matches_hex_digest(token, recorded))
    };
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

async fn register(State(state): State<Served>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(st) = state.as_deref() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the workspace controller is not running",
        );
    };
    let Ok(b) = serde_json::from_slice::<RegisterBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid register body: expected {id, url, agent_card}",
        );
    };
    let ws = match authenticate(st, &b.id, bearer(&headers)).await {
        Ok(w) => w,
        Err(r) => {
            st.metrics.inc(
                "molecule_registry_calls_total",
                &[("call", "register"), ("result", "refused")],
            );
            return r;
        }
    };
    if let Some(u) = &b.url
        && let Err(why) = validate_agent_url(u)
    {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let card = b
        .agent_card
        .filter(|c| c.is_object() && c.to_string().len() <= 16 * 1024);
    let status =
        json!({"lastHeartbeat": crate::util::now_micro(), "agentUrl": b.url, "agentCard": card});
    if let Err(r) = patch_status(st, &ws, status).await {
        return r;
    }
    st.metrics.inc(
        "molecule_registry_calls_total",
        &[("call", "register"), ("result", "ok")],
    );
    tracing::info!(event = "agent.registered", workspace = %ws.name_any(), "agent registered");
    (
        StatusCode::OK,
        axum::Json(json!({"status": "registered", "workspace_id": b.id})),
    )
        .into_response()
}

async fn heartbeat(State(state): State<Served>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(st) = state.as_deref() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the workspace controller is not running",
        );
    };
    let Ok(b) = serde_json::from_slice::<HeartbeatBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid heartbeat body: expected {workspace_id, ...}",
        );
    };
    let ws = match authenticate(st, &b.workspace_id, bearer(&headers)).await {
        Ok(w) => w,
        Err(r) => {
            st.metrics.inc(
                "molecule_registry_calls_total",
                &[("call", "heartbeat"), ("result", "refused")],
            );
            return r;
        }
    };
    let rate = b
        .error_rate
        .filter(|r| r.is_finite())
        .map(|r| r.clamp(0.0, 1.0));
    let status = json!({
        "lastHeartbeat": crate::util::now_micro(),
        "errorRate": rate,
        "sampleError": truncate(b.sample_error, 512),
        "activeTasks": b.active_tasks,
        "currentTask": truncate(b.current_task, 512),
        "uptimeSeconds": b.uptime_seconds,
        "runtimeState": truncate(b.runtime_state, 64),
    });
    if let Err(r) = patch_status(st, &ws, status).await {
        return r;
    }
    st.metrics.inc(
        "molecule_registry_calls_total",
        &[("call", "heartbeat"), ("result", "ok")],
    );
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert!(validate_agent_url(bad).is_err(), "{bad}");
        }
    }
}
