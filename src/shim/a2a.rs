//! `POST /workspaces/:id/a2a`: a plain proxy of an A2A call to the workspace's agent, with
//! dead-agent recovery (ADR 0036), and `GET /workspaces/:id/console`: the tail of the
//! workspace's console. `:id` is the record's `metadata.uid`.
//!
//! When the agent answers 502/503/504 (or cannot be reached at all), the proxy asks the
//! workspace's backend whether the agent still runs — the one read a shim handler makes of a
//! backend. Dead: the record's restart annotation is set, which wakes the controller to mark it
//! Offline and restart it, and the caller gets 503 `{"restarting": true}` with `Retry-After`. Alive,
//! or the probe itself failed: the upstream answer is passed through, so a healthy agent is
//! never recycled over a transient hiccup.
//!
//! Auth: the admin bearer token, or that workspace's own token (its sha256 is
//! `status.tokenHash`). The console needs the admin token.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::backends::{BackendError, Backends, Presence, WorkspaceRef};
use crate::late::Late;
use crate::net::http::{Client as HttpClient, Timeouts};
use crate::resources::{Workspace, WorkspacePhase};
use crate::telemetry::Metrics;

/// Largest accepted A2A request body.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Largest A2A response passed back; a longer one is refused with 502.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;
/// `Retry-After` of a `{restarting: true}` answer, in seconds.
pub const RETRY_AFTER_SECS: u64 = 15;

/// Bounds of the upstream call. No overall deadline beyond these: a slow agent may take
/// minutes to produce its answer, but a black-holed address fails within the dial timeout.
pub const UPSTREAM_TIMEOUTS: Timeouts = Timeouts {
    dial: Duration::from_secs(10),
    tls: Duration::from_secs(10),
    response_header: Duration::from_secs(120),
    body: Duration::from_secs(600),
};

/// What the handlers need; built by `host` once the backends answer.
pub struct A2aState {
    pub client: Client,
    pub workspaces: Store<Workspace>,
    pub backends: Backends,
    pub metrics: Arc<Metrics>,
    http: HttpClient,
    /// The busy queue (ADR 0051); `None`: calls are never queued.
    pub teams: Option<Arc<crate::teams::Teams>>,
}

impl A2aState {
    pub fn new(
        client: Client,
        workspaces: Store<Workspace>,
        backends: Backends,
        metrics: Arc<Metrics>,
    ) -> Self {
        A2aState {
            client,
            workspaces,
            backends,
            metrics,
            http: HttpClient::new(UPSTREAM_TIMEOUTS),
            teams: None,
        }
    }

    /// Queues calls to busy workspaces through `teams` (ADR 0051).
    pub fn with_teams(mut self, teams: Option<Arc<crate::teams::Teams>>) -> Self {
        self.teams = teams;
        self
    }
}

#[derive(Clone)]
struct Shared {
    state: Late<A2aState>,
    admin_hash: Arc<[u8; 32]>,
}

/// The routes. `admin_token` is the API bearer token (DATA_DIR/token).
pub fn router(state: Late<A2aState>, admin_token: &str) -> Router {
    let shared = Shared {
        state,
        admin_hash: Arc::new(Sha256::digest(admin_token.as_bytes()).into()),
    };
    Router::new()
        .route("/workspaces/{id}/a2a", post(a2a))
        .route("/workspaces/{id}/console", get(console))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(shared)
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

use crate::tokens::{bearer, same_digest};

enum Caller {
    Admin,
    Workspace,
}

/// Finds the workspace by uid and authenticates the caller (admin token, or this workspace's
/// token — re-checked against the API when the cached hash does not match: it may have just
/// been rotated).
async fn authorize(
    sh: &Shared,
    st: &A2aState,
    id: &str,
    headers: &HeaderMap,
) -> Result<(Workspace, Caller), Response> {
    let Some(token) = bearer(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let cached = st
        .workspaces
        .state()
        .into_iter()
        .find(|w| w.uid().as_deref() == Some(id))
        .map(|w| (*w).clone());
    let is_admin = same_digest(&digest, sh.admin_hash.as_ref());
    let Some(ws) = cached else {
        return Err(if is_admin {
            error(StatusCode::NOT_FOUND, "unknown workspace")
        } else {
            error(StatusCode::UNAUTHORIZED, "invalid token")
        });
    };
    if is_admin {
        return Ok((ws, Caller::Admin));
    }
    let matches = |w: &Workspace| crate::workspace_tokens::accepts_workspace(w, token);
    if matches(&ws) {
        return Ok((ws, Caller::Workspace));
    }
    let api: Api<Workspace> =
        Api::namespaced(st.client.clone(), &ws.namespace().unwrap_or_default());
    match api.get_opt(&ws.name_any()).await {
        Ok(Some(fresh)) if fresh.uid().as_deref() == Some(id) && matches(&fresh) => {
            Ok((fresh, Caller::Workspace))
        }
        Ok(_) => Err(error(StatusCode::UNAUTHORIZED, "invalid token")),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API is unavailable; retry",
        )),
    }
}

fn wref(ws: &Workspace) -> WorkspaceRef {
    WorkspaceRef {
        uid: ws.uid().unwrap_or_default(),
        namespace: ws.namespace().unwrap_or_else(|| "default".into()),
        name: ws.name_any(),
        instance_id: ws.status.as_ref().and_then(|s| s.instance_id.clone()),
    }
}

/// What the probe found.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Alive,
    Dead,
    /// No backend to ask (external agents) or the probe failed: treated as alive.
    Unknown,
}

async fn probe(st: &A2aState, ws: &Workspace) -> Probe {
    if ws.spec.runtime.as_deref() == Some("external") {
        return Probe::Unknown;
    }
    let Some(backend) = st.backends.get(ws.spec.backend.unwrap_or_default()) else {
        return Probe::Unknown;
    };
    match backend.inspect(&wref(ws)).await {
        Ok(Presence::Running { .. }) => Probe::Alive,
        Ok(Presence::Stopped { .. } | Presence::Absent) => Probe::Dead,
        Err(e) => {
            tracing::warn!(workspace = %ws.name_any(), error = %e, "A2A proxy: the liveness probe failed; passing the upstream answer through");
            Probe::Unknown
        }
    }
}

/// Asks the controller for a restart by setting the restart annotation. The controller, woken
/// by it, finds the runtime gone and takes its usual recovery path at once: the phase goes
/// Offline (with an Event), and a new container or instance follows after the recovery backoff,
/// so a crash-looping agent is not restarted faster than any other. Skipped when the workspace
/// is already Offline: a burst of calls to one dead agent restarts it once.
async fn request_restart(st: &A2aState, ws: &Workspace, upstream: u16) {
    let phase = ws.status.as_ref().and_then(|s| s.phase);
    if phase == Some(WorkspacePhase::Offline) {
        return;
    }
    let api: Api<Workspace> =
        Api::namespaced(st.client.clone(), &ws.namespace().unwrap_or_default());
    let name = ws.name_any();
    let restart = json!({"metadata": {"annotations": {
        crate::resources::names::RESTART_ANNOTATION: crate::util::now_rfc3339()
    }}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(restart))
        .await
    {
        Ok(_) => {
            tracing::info!(event = "a2a.agent_dead", workspace = %name, upstream, "the agent is not running; restart requested")
        }
        Err(e) => {
            tracing::warn!(workspace = %name, error = %e, "A2A proxy: could not request the restart")
        }
    }
}

fn restarting() -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "error": "the agent is not running; it is being restarted",
            "restarting": true,
            "retry_after": RETRY_AFTER_SECS,
        })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}

/// The upstream answer as is: status, body, content type and Retry-After.
fn relay(r: crate::net::http::Response) -> Response {
    let kept = [
        (header::CONTENT_TYPE, r.content_type()),
        (header::RETRY_AFTER, r.retry_after()),
    ];
    let mut out = Response::new(Body::from(r.body));
    *out.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in kept {
        if let Some(v) = value.and_then(|c| HeaderValue::from_str(&c).ok()) {
            out.headers_mut().insert(name, v);
        }
    }
    out
}

async fn a2a(
    State(sh): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(st) = sh.state.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the workspace controller is not running",
        );
    };
    let (ws, _caller) = match authorize(&sh, &st, &id, &headers).await {
        Ok(x) => x,
        Err(r) => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "refused")]);
            return r;
        }
    };
    if ws.metadata.deletion_timestamp.is_some() {
        return error(StatusCode::GONE, "the workspace is being deleted");
    }
    if ws.spec.paused {
        return error(StatusCode::CONFLICT, "the workspace is paused");
    }
    // A busy workspace: the call is queued (202); otherwise hold a slot while it runs.
    let _slot = match &st.teams {
        Some(t) => match t.admit(&ws, &headers, &body).await {
            Ok(slot) => Some(slot),
            Err(queued) => return queued,
        },
        None => None,
    };
    let Some(url) = ws.status.as_ref().and_then(|s| s.url.clone()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the workspace has no agent URL yet",
        );
    };
    if crate::shim::registry::validate_agent_url(&url).is_err() {
        return error(StatusCode::BAD_GATEWAY, "the workspace URL is not allowed");
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let upstream = st
        .http
        .send(
            hyper::http::Method::POST,
            &url,
            &[("accept", "application/json")],
            Some((body, content_type.as_str())),
            MAX_RESPONSE + 1,
        )
        .await;
    let (status, passthrough) = match upstream {
        Ok(r) if r.truncated => {
            return error(StatusCode::BAD_GATEWAY, "the agent's answer is too large");
        }
        Ok(r) if !matches!(r.status, 502..=504) => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "proxied")]);
            return relay(r);
        }
        Ok(r) => (r.status, Some(r)),
        Err(e) => {
            tracing::info!(workspace = %ws.name_any(), error = %e, "A2A proxy: the agent could not be reached");
            (502, None)
        }
    };
    match probe(&st, &ws).await {
        Probe::Dead => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "restarting")]);
            request_restart(&st, &ws, status).await;
            restarting()
        }
        Probe::Alive | Probe::Unknown => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "upstream_error")]);
            match passthrough {
                Some(r) => relay(r),
                None => error(StatusCode::BAD_GATEWAY, "the agent could not be reached"),
            }
        }
    }
}

async fn console(State(sh): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(st) = sh.state.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the workspace controller is not running",
        );
    };
    let ws = match authorize(&sh, &st, &id, &headers).await {
        Ok((ws, Caller::Admin)) => ws,
        Ok((_, Caller::Workspace)) => {
            return error(StatusCode::FORBIDDEN, "the console needs the admin token");
        }
        Err(r) => return r,
    };
    let Some(backend) = st.backends.get(ws.spec.backend.unwrap_or_default()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no control plane is configured",
        );
    };
    match backend.console(&wref(&ws)).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(workspace = %ws.name_any(), error = %e, "console unavailable");
            match e {
                BackendError::Upstream { status, .. } => error(
                    StatusCode::BAD_GATEWAY,
                    &format!("the control plane could not return the console (HTTP {status})"),
                ),
                e if e.is_transient() => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the console could not be read now; retry",
                ),
                _ => error(
                    StatusCode::NOT_FOUND,
                    "no console output for this workspace",
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_in_full() {
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        assert!(same_digest(&a, &a));
        assert!(!same_digest(&a, &b));
        assert!(!same_digest(&a[..31], &a));
    }

    #[test]
    fn the_restarting_answer_is_structured() {
        let r = restarting();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("15")
        );
    }
}
