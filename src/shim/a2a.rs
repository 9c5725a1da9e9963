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
//! Between workspaces (ADR 0050): a caller names itself with `X-Workspace-ID` and proves it
//! with that workspace's token, and the hierarchy rule must let it talk to the target (403,
//! nothing delivered). Without the header the caller is the canvas (the admin token, main port
//! only) or the workspace itself (its own token). The body must be a JSON-RPC 2.0 request
//! (400 otherwise; at most [`MAX_REQUEST`]); the agent gets [`DEFAULT_IDLE`] (or `X-Timeout`
//! seconds) to answer and its answer is capped at [`MAX_RESPONSE`]. An answer whose 2xx status
//! and first bytes arrived counts as delivered even when the connection then broke. Every
//! delivered or attempted call is logged: `a2a_send` on the caller, `a2a_receive` on the
//! target; a canvas call's answer is also broadcast as `A2A_RESPONSE`.
//!
//! The console needs the admin token.

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
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::ShimError;
use super::teams::{self, AdminHash, TeamsState};
use crate::backends::{BackendError, Backends, Presence, WorkspaceRef};
use crate::late::Late;
use crate::net::http::{Client as HttpClient, Error as NetError, Timeouts};
use crate::resources::{Workspace, WorkspacePhase};
use crate::telemetry::Metrics;

/// Largest accepted A2A request body.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Largest A2A response passed back; a longer one is refused with 502.
pub const MAX_RESPONSE: usize = 10 * 1024 * 1024;
/// How long the agent may stay silent (before its answer's headers, then before the end of its
/// body) unless `X-Timeout` says otherwise.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Largest `X-Timeout`, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
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
    /// Callers, the hierarchy rule and the activity log (ADR 0050).
    pub teams: Arc<TeamsState>,
    /// The busy queue (ADR 0051); `None`: calls are never queued.
    pub queue: Option<Arc<crate::teams::Teams>>,
}

impl A2aState {
    pub fn new(
        client: Client,
        workspaces: Store<Workspace>,
        backends: Backends,
        metrics: Arc<Metrics>,
        teams: Arc<TeamsState>,
    ) -> Self {
        A2aState {
            client,
            workspaces,
            backends,
            metrics,
            teams,
            queue: None,
        }
    }

    /// Queues calls to busy workspaces through `teams` (ADR 0051).
    pub fn with_queue(mut self, queue: Option<Arc<crate::teams::Teams>>) -> Self {
        self.queue = queue;
        self
    }
}

#[derive(Clone)]
struct Shared {
    state: Late<A2aState>,
    /// The admin token's digest on the main port; `None` on the agent listener.
    admin_hash: AdminHash,
}

/// The routes of the main port. `admin_token` is the API bearer token (DATA_DIR/token).
pub fn router(state: Late<A2aState>, admin_token: &str) -> Router {
    let shared = Shared {
        state,
        admin_hash: Some(Arc::new(Sha256::digest(admin_token.as_bytes()).into())),
    };
    Router::new()
        .route("/workspaces/{id}/a2a", post(a2a))
        .route("/workspaces/{id}/console", get(console))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(shared)
}

/// The proxy on the agent listener: workspace tokens only, no console.
pub fn agent_router(state: Late<A2aState>) -> Router {
    let shared = Shared {
        state,
        admin_hash: None,
    };
    Router::new()
        .route("/workspaces/{id}/a2a", post(a2a))
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
    let is_admin = sh
        .admin_hash
        .as_deref()
        .is_some_and(|h| same_digest(&digest, h));
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
    let Some(backend) = st.backends.get(st.backends.kind_of(ws.spec.backend)) else {
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

/// A call the proxy accepted: who calls, whom, what, and how long the agent may be silent.
struct Admitted {
    caller: teams::Caller,
    target: Arc<Workspace>,
    url: String,
    method: String,
    request: Value,
    idle: Duration,
}

/// `X-Timeout`: whole seconds, 1 to [`MAX_TIMEOUT_SECS`].
fn idle_of(headers: &HeaderMap) -> Result<Duration, ShimError> {
    let Some(v) = headers.get("x-timeout") else {
        return Ok(DEFAULT_IDLE);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|n| (1..=MAX_TIMEOUT_SECS).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ShimError::bad(format!(
                "X-Timeout must be a whole number of seconds between 1 and {MAX_TIMEOUT_SECS}"
            ))
        })
}

/// Checks a call before anything is delivered: the caller, the target, the hierarchy rule,
/// the target's state and the input.
async fn admit(
    sh: &Shared,
    st: &A2aState,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Admitted, ShimError> {
    let token = bearer(headers).ok_or(ShimError::Unauthenticated)?;
    let claimed = teams::claimed_workspace(headers)?;
    super::input::check_id(id)?;
    let tm = &st.teams;
    let caller = match claimed {
        Some(me) => teams::Caller::Workspace(tm.workspace_by_token(&me, token).await.map_err(
            |e| match e {
                ShimError::BadToken => ShimError::Body(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "the token is not that of the X-Workspace-ID workspace"}),
                ),
                e => e,
            },
        )?),
        None if teams::is_admin(&sh.admin_hash, token) => teams::Caller::Admin,
        None => match tm.workspace_by_token(id, token).await {
            Ok(me) => teams::Caller::Workspace(me),
            Err(ShimError::BadToken)
                if tm
                    .workspaces
                    .state()
                    .iter()
                    .any(|w| teams::token_matches(w, token)) =>
            {
                return Err(ShimError::bad(
                    "X-Workspace-ID header is required for a call from one workspace to another",
                ));
            }
            Err(e) => return Err(e),
        },
    };
    let tree = tm.tree();
    let target = tree
        .get(id)
        .cloned()
        .ok_or(ShimError::NotFound("workspace"))?;
    if let Some(me) = caller.uid()
        && !tree.can_communicate(&me, id)
    {
        return Err(ShimError::Forbidden(
            "the hierarchy does not let this workspace talk to that workspace",
        ));
    }
    let idle = idle_of(headers)?;
    let (request, method) = crate::teams::activity::check_jsonrpc(body).map_err(ShimError::bad)?;
    if target.metadata.deletion_timestamp.is_some() {
        return Err(ShimError::Body(
            StatusCode::GONE,
            json!({"error": "the workspace is being deleted"}),
        ));
    }
    if target.spec.paused {
        return Err(ShimError::Conflict("the workspace is paused".into()));
    }
    let url = target
        .status
        .as_ref()
        .and_then(|s| s.url.clone())
        .ok_or(ShimError::Unavailable("the workspace has no agent URL yet"))?;
    if crate::shim::registry::validate_agent_url(&url).is_err() {
        return Err(ShimError::Body(
            StatusCode::BAD_GATEWAY,
            json!({"error": "the workspace URL is not allowed"}),
        ));
    }
    Ok(Admitted {
        caller,
        target,
        url,
        method,
        request,
        idle,
    })
}

/// How a call ended, for the activity log.
struct Outcome {
    status: &'static str,
    error: Option<String>,
    response: Option<Bytes>,
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
    let call = match admit(&sh, &st, &id, &headers, &body).await {
        Ok(c) => c,
        Err(e) => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "refused")]);
            return e.into_response();
        }
    };
    // A busy workspace: the call is queued (202); otherwise hold a slot while it runs (ADR 0051).
    let _slot = match &st.queue {
        Some(q) => match q.admit(&call.target, &headers, &body).await {
            Ok(slot) => Some(slot),
            Err(queued) => return queued,
        },
        None => None,
    };
    let started = std::time::Instant::now();
    let (response, outcome) = deliver(&st, &call, &headers, body.clone()).await;
    log_call(&st, &call, &body, outcome, started.elapsed());
    response
}

/// Sends the call and decides the answer, with dead-agent recovery (ADR 0036).
async fn deliver(
    st: &A2aState,
    call: &Admitted,
    headers: &HeaderMap,
    body: Bytes,
) -> (Response, Outcome) {
    let ws = &call.target;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let caller_uid = call.caller.uid();
    let mut forwarded = vec![("accept", "application/json")];
    if let Some(me) = &caller_uid {
        forwarded.push((teams::WORKSPACE_HEADER, me.as_str()));
    }
    let http = HttpClient::new(Timeouts {
        response_header: call.idle,
        body: call.idle,
        ..UPSTREAM_TIMEOUTS
    })
    .keeping_partial();
    let upstream = http
        .send(
            hyper::http::Method::POST,
            &call.url,
            &forwarded,
            Some((body, content_type.as_str())),
            MAX_RESPONSE + 1,
        )
        .await;
    let failed = |status, error: String| Outcome {
        status,
        error: Some(error),
        response: None,
    };
    let (status, passthrough, why) = match upstream {
        Ok(r) if r.truncated => {
            return (
                error(StatusCode::BAD_GATEWAY, "the agent's answer is too large"),
                failed("error", format!("the answer exceeds {MAX_RESPONSE} bytes")),
            );
        }
        Ok(r) if r.incomplete.is_some() => {
            // Delivered: the agent did the work and its answer started to arrive.
            st.metrics.inc(
                "molecule_a2a_calls_total",
                &[("result", "delivered_partial")],
            );
            let why = r
                .incomplete
                .as_ref()
                .map(|e| format!("delivered; the connection failed while reading the answer: {e}"));
            let outcome = Outcome {
                status: "ok",
                error: why,
                response: Some(r.body.clone()),
            };
            return (relay(r), outcome);
        }
        Ok(r) if !matches!(r.status, 502..=504) => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "proxied")]);
            let outcome = Outcome {
                status: if r.is_success() { "ok" } else { "error" },
                error: (!r.is_success()).then(|| format!("the agent answered HTTP {}", r.status)),
                response: Some(r.body.clone()),
            };
            return (relay(r), outcome);
        }
        Ok(r) => (r.status, Some(r), None),
        Err(e) => {
            tracing::info!(workspace = %ws.name_any(), error = %e, "A2A proxy: the agent could not be reached");
            (502, None, Some(e))
        }
    };
    let timed_out = matches!(
        why,
        Some(NetError::HeaderTimeout(..) | NetError::BodyTimeout(..))
    );
    let detail = why
        .map(|e| e.to_string())
        .unwrap_or_else(|| format!("the agent answered HTTP {status}"));
    match probe(st, ws).await {
        Probe::Dead => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "restarting")]);
            request_restart(st, ws, status).await;
            (restarting(), failed("error", detail))
        }
        Probe::Alive | Probe::Unknown => {
            st.metrics
                .inc("molecule_a2a_calls_total", &[("result", "upstream_error")]);
            let kind = if timed_out { "timeout" } else { "error" };
            let answer = match passthrough {
                Some(r) => relay(r),
                None if timed_out => error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("the agent did not answer within {}s", call.idle.as_secs()),
                ),
                None => error(StatusCode::BAD_GATEWAY, "the agent could not be reached"),
            };
            (answer, failed(kind, detail))
        }
    }
}

/// Writes `a2a_send` on the caller and `a2a_receive` on the target, off the answer's path;
/// a canvas call's answer is also broadcast as `A2A_RESPONSE`.
fn log_call(st: &A2aState, call: &Admitted, request: &[u8], outcome: Outcome, took: Duration) {
    use crate::teams::activity as rules;
    let target = call.target.uid().unwrap_or_default();
    let source = call.caller.uid();
    let duration_ms = Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX));
    let response_body = outcome.response.as_deref().and_then(rules::stored_body);
    let row = crate::store::ActivityRow {
        workspace_id: target.clone(),
        activity_type: "a2a_receive".into(),
        source_id: source.clone(),
        target_id: Some(target.clone()),
        method: Some(call.method.clone()),
        summary: Some(rules::a2a_summary(&call.method, &call.request)),
        request_body: rules::stored_body(request),
        response_body,
        duration_ms,
        status: outcome.status.into(),
        error_detail: outcome.error,
        created_at: crate::util::now_micro(),
        ..Default::default()
    };
    let log = st.teams.activity.clone();
    if source.is_none() {
        let answer = outcome
            .response
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok());
        log.broadcast(
            super::activity::A2A_RESPONSE,
            &target,
            json!({"response_body": answer, "method": call.method, "duration_ms": duration_ms}),
        );
    }
    tokio::spawn(async move {
        let mut rows = vec![];
        if let Some(me) = &source {
            rows.push(crate::store::ActivityRow {
                workspace_id: me.clone(),
                activity_type: "a2a_send".into(),
                ..row.clone()
            });
        }
        rows.push(row);
        for r in rows {
            if let Err(e) = log.record(&r).await {
                tracing::warn!(error = %e, workspace = %r.workspace_id, "could not write an A2A activity row");
            }
        }
    });
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
    let Some(backend) = st.backends.get(st.backends.kind_of(ws.spec.backend)) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the workspace's backend is not configured in this process",
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
