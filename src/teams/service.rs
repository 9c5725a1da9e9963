//! The busy queue and delegations at run time (ADR 0051).
//!
//! [`Teams`] watches Workspace records for two things: where each agent is (its URL, its
//! `maxConcurrentTasks`, whether it is paused) and its heartbeats (every heartbeat writes
//! `status.lastHeartbeat`; the watch sees it). The A2A proxy asks [`Teams::admit`] before it
//! forwards a call: a busy workspace gets the call queued (202) instead. The queue is drained
//! on the workspace's heartbeats and whenever a call to it finishes, one drainer per workspace,
//! highest priority first, then first in first out; items expire.
//!
//! Delegations (`POST /workspaces/:id/delegate`) are stored `pending`, then sent by the
//! platform to the target exactly like a queued call: straight away when the target has room
//! (`dispatched`, then `completed` or `failed`), through the queue otherwise (`queued`).
//! Every state change is written before the next step runs, and a restart settles whatever
//! a dead server left half-done (`TeamsStore::teams_recover`), so no delegation stays in
//! flight forever and nothing is sent twice.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::queue::{Drainers, Loads, max_concurrent};
use crate::feed::Change;
use crate::net::http::{Client as HttpClient, Timeouts};
use crate::resources::Workspace;
use crate::store::Store;
use crate::store::teams::{
    Delegation, NewDelegation, NewQueueItem, PRIORITY_MAX, PRIORITY_TASK, QueueItem, QueueOutcome,
    now_ms,
};
use crate::telemetry::Metrics;

/// Publishes one live-stream event `(event, workspace_id, payload)`.
pub type Publish = Arc<dyn Fn(&'static str, &str, Value) + Send + Sync>;

/// Longest response text kept with a queue item or a delegation.
pub const PREVIEW_CHARS: usize = 2_000;

/// Tunables of the queue.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A queued call not delivered within this long expires.
    pub queue_ttl: Duration,
    /// Deliveries of one item that could not reach the agent before it fails.
    pub max_attempts: i64,
    /// How often expired items are swept.
    pub sweep_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue_ttl: Duration::from_secs(3600),
            max_attempts: 5,
            sweep_every: Duration::from_secs(15),
        }
    }
}

impl Settings {
    /// The defaults, with `MOLECULE_A2A_QUEUE_TTL_SECONDS` when set.
    pub fn from_env() -> Self {
        let mut s = Settings::default();
        if let Some(t) = std::env::var("MOLECULE_A2A_QUEUE_TTL_SECONDS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| *t > 0)
        {
            s.queue_ttl = Duration::from_secs(t);
        }
        s
    }
}

/// Bounds of one delivery to an agent: like the A2A proxy's, a slow agent may take minutes.
pub(super) const DELIVERY_TIMEOUTS: Timeouts = Timeouts {
    dial: Duration::from_secs(10),
    tls: Duration::from_secs(10),
    response_header: Duration::from_secs(300),
    body: Duration::from_secs(600),
};
/// Largest agent answer a delivery reads.
const MAX_ANSWER: usize = 10 * 1024 * 1024;

/// The queue and delegations of one server.
pub struct Teams {
    store: Arc<dyn Store>,
    admin_hash: [u8; 32],
    by_uid: RwLock<HashMap<String, Arc<Workspace>>>,
    /// The last `lastHeartbeat` seen per workspace: a new one is a heartbeat.
    beats: RwLock<HashMap<String, String>>,
    pub(super) loads: Loads,
    drainers: Drainers,
    http: HttpClient,
    publish: Option<Publish>,
    metrics: Arc<Metrics>,
    settings: Settings,
    ready: tokio::sync::watch::Sender<bool>,
}

/// A slot of a workspace's concurrency, held while a call is delivered; giving it back wakes
/// the workspace's queue.
pub struct Slot {
    pub(super) teams: Arc<Teams>,
    pub(super) uid: String,
    pub(super) wake: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.teams.loads.release(&self.uid);
        if self.wake {
            self.teams.wake(&self.uid);
        }
    }
}

/// What one delivery to an agent came to.
#[derive(Debug)]
enum Sent {
    Answered {
        status: u16,
        body: Bytes,
    },
    /// Not delivered: the agent could not be reached (or its gateway said so).
    Unreachable(String),
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

/// A delegation or queue id, caller id or idempotency key: short printable ASCII.
pub fn valid_key(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The text of an A2A answer: the first text part of `result` (or of its artifacts), else
/// the body itself; cut to [`PREVIEW_CHARS`].
pub fn answer_text(body: &[u8]) -> String {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return cut(&String::from_utf8_lossy(body)),
    };
    let text_of = |parts: Option<&Value>| {
        parts?
            .as_array()?
            .iter()
            .find(|p| {
                p.get("kind")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str)
                    == Some("text")
            })
            .and_then(|p| p.get("text"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let result = v.get("result");
    let found = text_of(result.and_then(|r| r.get("parts"))).or_else(|| {
        result
            .and_then(|r| r.get("artifacts"))
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find_map(|art| text_of(art.get("parts"))))
    });
    cut(&found.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()))
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(PREVIEW_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The JSON-RPC error message of an answer, if it carries one.
pub(super) fn rpc_error(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    Some(cut(e
        .get("message")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| e.to_string())
        .as_str()))
}

/// The A2A request that carries a delegation's task (its id is the message id, so an agent
/// that sees it twice can tell).
pub fn delegation_request(d: &Delegation) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": d.id,
        "method": "message/send",
        "params": {"message": {
            "role": "user",
            "messageId": d.id,
            "parts": [{"kind": "text", "text": d.task}],
        }},
    })
    .to_string()
}

impl Teams {
    /// Starts following the workspaces (the process's shared Workspace cache, ADR 0025: no
    /// watch of its own, and the records held are the cache's), the expiry sweep and the
    /// recovery of what a previous run left.
    pub fn start(
        workspaces: crate::feed::Feed<Workspace>,
        store: Arc<dyn Store>,
        admin_token: &str,
        publish: Option<Publish>,
        metrics: Arc<Metrics>,
        settings: Settings,
        shutdown: crate::shutdown::Shutdown,
    ) -> Arc<Teams> {
        let teams = Arc::new(Teams {
            store,
            admin_hash: crate::tokens::digest(admin_token),
            by_uid: RwLock::default(),
            beats: RwLock::default(),
            loads: Loads::default(),
            drainers: Drainers::default(),
            http: HttpClient::new(DELIVERY_TIMEOUTS),
            publish,
            metrics,
            settings,
            ready: tokio::sync::watch::channel(false).0,
        });
        tokio::spawn(teams.clone().follow(workspaces, shutdown.clone()));
        tokio::spawn(teams.clone().sweep(shutdown));
        tokio::spawn(teams.clone().recover());
        teams
    }

    /// The live record of a workspace.
    pub fn workspace(&self, uid: &str) -> Option<Arc<Workspace>> {
        self.by_uid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    /// Every live record, as an org tree.
    pub fn tree(&self) -> crate::teams::tree::Tree {
        crate::teams::tree::Tree::new(
            self.by_uid
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        )
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The workspace whose token `token` is.
    pub fn token_owner(&self, token: &str) -> Option<String> {
        self.by_uid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, w)| crate::workspace_tokens::accepts_workspace(w, token))
            .map(|(uid, _)| uid.clone())
    }

    /// Whether `token` is the admin token.
    pub fn is_admin(&self, token: &str) -> bool {
        crate::tokens::same_digest(&crate::tokens::digest(token), &self.admin_hash)
    }

    /// Waits (at most 10 s) for the first list of workspaces.
    pub async fn wait_ready(&self) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes one live-stream event, when this server has a stream.
    pub fn publish_event(&self, event: &'static str, workspace: &str, payload: Value) {
        self.emit(event, workspace, payload);
    }

    fn emit(&self, event: &'static str, workspace: &str, payload: Value) {
        self.metrics
            .inc("molecule_teams_events_total", &[("event", event)]);
        if let Some(p) = &self.publish {
            p(event, workspace, payload);
        }
    }

    /// The live-stream events of a delegation that moved to `d.status`.
    fn emit_delegation(&self, d: &Delegation) {
        let (event, payload) = match d.status.as_str() {
            "completed" => (
                "DELEGATION_COMPLETE",
                json!({"delegation_id": d.id, "target_id": d.target_id, "response_preview": d.response_preview}),
            ),
            "failed" => (
                "DELEGATION_FAILED",
                json!({"delegation_id": d.id, "target_id": d.target_id, "error": d.error}),
            ),
            other => (
                "DELEGATION_STATUS",
                json!({"delegation_id": d.id, "target_id": d.target_id, "status": other}),
            ),
        };
        self.emit(event, &d.source_id, payload);
    }

    // ---- the watch: where agents are, and their heartbeats ----

    async fn follow(
        self: Arc<Self>,
        mut feed: crate::feed::Feed<Workspace>,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let stop = shutdown.wait();
        let mut stop = std::pin::pin!(stop);
        loop {
            let change = tokio::select! {
                _ = &mut stop => return,
                c = feed.recv() => c,
            };
            let Some(change) = change else { return };
            self.apply(change);
        }
    }

    /// Takes in one change of the workspaces.
    fn apply(self: &Arc<Self>, change: Change<Workspace>) {
        match change {
            Change::Relisted(list) => {
                let gone: Vec<String> = {
                    let mut map = self.by_uid.write().unwrap_or_else(|p| p.into_inner());
                    let old = std::mem::take(&mut *map);
                    for w in &list {
                        if let Some(uid) = w.uid() {
                            map.insert(uid, w.clone());
                        }
                    }
                    old.into_keys().filter(|u| !map.contains_key(u)).collect()
                };
                for uid in gone {
                    self.forget(&uid);
                }
                for w in &list {
                    self.observe(w);
                }
                self.ready.send_replace(true);
            }
            Change::Applied(w) => {
                if let Some(uid) = w.uid() {
                    self.by_uid
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(uid, w.clone());
                }
                self.observe(&w);
            }
            Change::Deleted(w) => {
                if let Some(uid) = w.uid() {
                    self.by_uid
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&uid);
                    self.forget(&uid);
                }
            }
        }
    }

    /// Drops what is kept about a workspace that is gone.
    fn forget(&self, uid: &str) {
        self.beats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        self.loads.forget(uid);
    }

    /// A record changed: a new `lastHeartbeat` is a heartbeat, which updates the load and
    /// wakes the queue.
    fn observe(self: &Arc<Self>, w: &Workspace) {
        let Some(uid) = w.uid() else { return };
        let Some(st) = &w.status else { return };
        let Some(beat) = st.last_heartbeat.clone() else {
            self.wake(&uid);
            return;
        };
        let new = {
            let mut beats = self.beats.write().unwrap_or_else(|p| p.into_inner());
            beats.insert(uid.clone(), beat.clone()).as_deref() != Some(beat.as_str())
        };
        if new {
            self.loads.heartbeat(&uid, st.active_tasks.unwrap_or(0));
            self.wake(&uid);
        }
    }

    // ---- admission and the queue ----

    /// Called by the A2A proxy before it forwards a call to `ws` (already authenticated): a
    /// slot to hold while the call runs, or the 202 `{queued, queue_id, queue_depth}` of a
    /// call queued because the workspace is busy.
    pub async fn admit(
        self: &Arc<Self>,
        ws: &Workspace,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Slot, Response> {
        let uid = ws.uid().unwrap_or_default();
        if self.loads.try_acquire(&uid, max_concurrent(ws), true) {
            return Ok(Slot {
                teams: self.clone(),
                uid,
                wake: true,
            });
        }
        let Ok(Value::Object(rpc)) = serde_json::from_slice::<Value>(body) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "the A2A body must be a JSON-RPC request object",
            ));
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let priority = match header("x-queue-priority") {
            None => PRIORITY_TASK,
            Some(p) => match p.trim().parse::<i64>() {
                Ok(n) if (0..=PRIORITY_MAX).contains(&n) => n,
                _ => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "X-Queue-Priority must be an integer from 0 to 100",
                    ));
                }
            },
        };
        let item = NewQueueItem {
            workspace_id: uid.clone(),
            caller_id: header("x-workspace-id")
                .filter(|c| valid_key(c, 64))
                .map(String::from),
            priority,
            body: String::from_utf8_lossy(body).into_owned(),
            method: rpc
                .get("method")
                .and_then(Value::as_str)
                .filter(|m| m.len() <= 64)
                .map(String::from),
            idempotency_key: rpc
                .get("params")
                .and_then(|p| p.get("message"))
                .and_then(|m| m.get("messageId"))
                .and_then(Value::as_str)
                .filter(|k| valid_key(k, 128))
                .map(String::from),
            delegation_id: None,
            expires_ms: Some(now_ms() + self.ttl_ms()),
        };
        match self.enqueue(&item).await {
            Ok((id, depth)) => {
                self.metrics
                    .inc("molecule_a2a_calls_total", &[("result", "queued")]);
                Err((
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"queued": true, "queue_id": id, "queue_depth": depth})),
                )
                    .into_response())
            }
            Err(e) => {
                tracing::warn!(error = %e, "teams: could not queue a call for a busy workspace");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the workspace is busy and its queue is unavailable; retry",
                ))
            }
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.settings.queue_ttl.as_millis()).unwrap_or(i64::MAX / 2)
    }

    async fn enqueue(
        self: &Arc<Self>,
        item: &NewQueueItem,
    ) -> Result<(String, i64), crate::store::StoreError> {
        let (id, depth, _) = self.store.queue_push(item, now_ms()).await?;
        self.loads.set_queued(&item.workspace_id, true);
        self.wake(&item.workspace_id);
        Ok((id, depth))
    }

    /// Wakes the queue of `uid` (a drainer starts unless one runs).
    pub fn wake(self: &Arc<Self>, uid: &str) {
        if !self.loads.is_queued(uid) {
            return;
        }
        if self.drainers.start(uid) {
            tokio::spawn(self.clone().drain(uid.to_string()));
        }
    }

    async fn drain(self: Arc<Self>, uid: String) {
        loop {
            self.drain_once(&uid).await;
            if !self.drainers.finish(&uid) {
                return;
            }
        }
    }

    /// Hands queued items to deliveries while the workspace has room.
    async fn drain_once(self: &Arc<Self>, uid: &str) {
        loop {
            let Some(ws) = self.workspace(uid) else {
                return;
            };
            if ws.spec.paused || ws.metadata.deletion_timestamp.is_some() {
                return;
            }
            let Some(url) = ws.status.as_ref().and_then(|s| s.url.clone()) else {
                return;
            };
            if !self.loads.try_acquire(uid, max_concurrent(&ws), false) {
                return;
            }
            let slot = Slot {
                teams: self.clone(),
                uid: uid.to_string(),
                wake: false,
            };
            match self.store.queue_claim(uid, now_ms()).await {
                Ok(Some(item)) => {
                    self.loads.set_queued(uid, true);
                    tokio::spawn(self.clone().deliver(item, url, slot));
                }
                Ok(None) => {
                    self.loads.set_queued(uid, false);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "teams: could not take the next queued call; retrying at the next heartbeat");
                    return;
                }
            }
        }
    }

    /// Delivers one claimed queue item and settles it (with its delegation).
    async fn deliver(self: Arc<Self>, item: QueueItem, url: String, mut slot: Slot) {
        let sent = self.send(&url, Bytes::from(item.body.clone())).await;
        let outcome = match sent {
            Sent::Answered { status, body } => {
                let rpc = rpc_error(&body);
                QueueOutcome::Answered {
                    status: i64::from(status),
                    ok: (200..300).contains(&status) && rpc.is_none(),
                    preview: answer_text(&body),
                    error: rpc.or_else(|| {
                        (!(200..300).contains(&status))
                            .then(|| format!("the agent answered HTTP {status}"))
                    }),
                }
            }
            Sent::Unreachable(e) => QueueOutcome::Retry {
                error: e,
                max_attempts: self.settings.max_attempts,
            },
        };
        // A delivered item frees the slot for the next at once; an undelivered one waits for
        // the next heartbeat (the agent is down or restarting).
        slot.wake = matches!(outcome, QueueOutcome::Answered { .. });
        match self.store.queue_finish(&item.id, &outcome, now_ms()).await {
            Ok((after, d)) => {
                let status = after.map(|i| i.status).unwrap_or_default();
                self.metrics.inc(
                    "molecule_a2a_queue_deliveries_total",
                    &[(
                        "result",
                        if status.is_empty() {
                            "unknown"
                        } else {
                            status.as_str()
                        },
                    )],
                );
                if let Some(d) = d {
                    self.emit_delegation(&d);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, queue_id = %item.id, "teams: could not record a queue delivery")
            }
        }
        drop(slot);
    }

    /// One POST of an A2A request to an agent.
    async fn send(&self, url: &str, body: Bytes) -> Sent {
        if crate::net::agent_url::validate_agent_url(url).is_err() {
            return Sent::Unreachable("the workspace URL is not allowed".into());
        }
        match self
            .http
            .send(
                hyper::http::Method::POST,
                url,
                &[("accept", "application/json")],
                Some((body, "application/json")),
                MAX_ANSWER,
            )
            .await
        {
            Ok(r) if matches!(r.status, 502..=504) => {
                Sent::Unreachable(format!("the agent's gateway answered HTTP {}", r.status))
            }
            Ok(r) => Sent::Answered {
                status: r.status,
                body: r.body,
            },
            Err(e) => Sent::Unreachable(format!("the agent could not be reached: {e}")),
        }
    }

    /// Marks expired items now and then (their delegations fail).
    async fn sweep(self: Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        let stop = shutdown.wait();
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.settings.sweep_every) => {}
            }
            match self.store.queue_expire(now_ms()).await {
                Ok(gone) => {
                    for (item, d) in gone {
                        tracing::info!(queue_id = %item.id, workspace = %item.workspace_id, "teams: a queued call expired");
                        self.metrics.inc(
                            "molecule_a2a_queue_deliveries_total",
                            &[("result", "expired")],
                        );
                        if let Some(d) = d {
                            self.emit_delegation(&d);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "teams: the queue expiry sweep failed"),
            }
        }
    }

    /// Settles what the previous run left in flight, then sends the delegations it never sent
    /// and wakes every queue once the workspaces are known.
    async fn recover(self: Arc<Self>) {
        let r = loop {
            match self.store.teams_recover(now_ms()).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, "teams: recovery failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        if !r.interrupted.is_empty() || !r.failed.is_empty() || !r.pending.is_empty() {
            tracing::info!(
                interrupted = r.interrupted.len(),
                failed = r.failed.len(),
                resent = r.pending.len(),
                "teams: settled what the previous run left in flight"
            );
        }
        for d in &r.failed {
            self.emit_delegation(d);
        }
        self.wait_ready().await;
        for d in r.pending {
            tokio::spawn(self.clone().execute(d));
        }
        match self.store.queue_busy_workspaces().await {
            Ok(list) => {
                for uid in list {
                    self.loads.set_queued(&uid, true);
                    self.wake(&uid);
                }
            }
            Err(e) => tracing::warn!(error = %e, "teams: could not list the queues to drain"),
        }
    }

    // ---- delegations ----

    /// Creates a delegation from `source` (the caller checked the rules) and sends it in the
    /// background; an idempotent retry returns the existing one (`false`).
    pub async fn delegate(
        self: &Arc<Self>,
        new: &NewDelegation,
    ) -> Result<(Delegation, bool), crate::store::StoreError> {
        let (d, created) = self.store.delegation_create(new, now_ms()).await?;
        if created {
            self.metrics
                .inc("molecule_delegations_total", &[("origin", new.origin)]);
            let preview: String = d.task.chars().take(100).collect();
            self.emit(
                "DELEGATION_SENT",
                &d.source_id,
                json!({"delegation_id": d.id, "target_id": d.target_id, "task_preview": preview}),
            );
            if new.origin == "platform" {
                tokio::spawn(self.clone().execute(d.clone()));
            }
        }
        Ok((d, created))
    }

    /// An agent reports the outcome of a delegation it recorded.
    pub async fn report(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
        preview: Option<&str>,
    ) -> Result<Option<Delegation>, crate::store::StoreError> {
        let d = self
            .store
            .delegation_transition(
                id,
                &["dispatched", "pending", "queued"],
                status,
                error,
                preview,
                now_ms(),
            )
            .await?;
        if let Some(d) = &d {
            self.emit_delegation(d);
        }
        Ok(d)
    }

    async fn fail(&self, d: &Delegation, from: &[&str], why: &str) {
        match self
            .store
            .delegation_transition(&d.id, from, "failed", Some(why), None, now_ms())
            .await
        {
            Ok(Some(d)) => self.emit_delegation(&d),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, delegation = %d.id, "teams: could not record a failed delegation")
            }
        }
    }

    /// Sends a pending delegation: straight away when the target has room, else through its
    /// queue.
    async fn execute(self: Arc<Self>, d: Delegation) {
        let Some(ws) = self.workspace(&d.target_id) else {
            self.fail(&d, &["pending"], "the target workspace does not exist")
                .await;
            return;
        };
        if ws.metadata.deletion_timestamp.is_some() {
            self.fail(&d, &["pending"], "the target workspace is being deleted")
                .await;
            return;
        }
        let url = ws.status.as_ref().and_then(|s| s.url.clone());
        let direct = url.is_some()
            && !ws.spec.paused
            && self
                .loads
                .try_acquire(&d.target_id, max_concurrent(&ws), true);
        if !direct {
            let item = NewQueueItem {
                workspace_id: d.target_id.clone(),
                caller_id: Some(d.source_id.clone()),
                priority: PRIORITY_TASK,
                body: delegation_request(&d),
                method: Some("message/send".into()),
                idempotency_key: Some(d.id.clone()),
                delegation_id: Some(d.id.clone()),
                expires_ms: Some(now_ms() + self.ttl_ms()),
            };
            match self.enqueue(&item).await {
                Ok(_) => {
                    if let Ok(Some(now)) = self.store.delegation_get(&d.id).await {
                        self.emit_delegation(&now);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, delegation = %d.id, "teams: could not queue a delegation");
                    self.fail(
                        &d,
                        &["pending"],
                        "the target is busy and its queue is unavailable",
                    )
                    .await;
                }
            }
            return;
        }
        let slot = Slot {
            teams: self.clone(),
            uid: d.target_id.clone(),
            wake: true,
        };
        let dispatched = match self
            .store
            .delegation_transition(&d.id, &["pending"], "dispatched", None, None, now_ms())
            .await
        {
            Ok(Some(x)) => x,
            Ok(None) => return, // settled meanwhile
            Err(e) => {
                tracing::warn!(error = %e, delegation = %d.id, "teams: could not mark a delegation dispatched");
                return;
            }
        };
        self.emit_delegation(&dispatched);
        let sent = self
            .send(
                url.as_deref().unwrap_or_default(),
                Bytes::from(delegation_request(&d)),
            )
            .await;
        drop(slot);
        let (to, err, preview) = match sent {
            Sent::Answered { status, body } => match rpc_error(&body) {
                None if (200..300).contains(&status) => {
                    ("completed", None, Some(answer_text(&body)))
                }
                Some(e) => ("failed", Some(e), None),
                None => (
                    "failed",
                    Some(format!("the target answered HTTP {status}")),
                    None,
                ),
            },
            Sent::Unreachable(e) => ("failed", Some(e), None),
        };
        match self
            .store
            .delegation_transition(
                &d.id,
                &["dispatched"],
                to,
                err.as_deref(),
                preview.as_deref(),
                now_ms(),
            )
            .await
        {
            Ok(Some(x)) => self.emit_delegation(&x),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, delegation = %d.id, "teams: could not record a delegation's outcome")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_for_their_text() {
        let a = br#"{"jsonrpc":"2.0","id":1,"result":{"kind":"message","parts":[{"kind":"text","text":"hi"}]}}"#;
        assert_eq!(answer_text(a), "hi");
        let art =
            br#"{"result":{"artifacts":[{"parts":[{"type":"text","text":"from artifact"}]}]}}"#;
        assert_eq!(answer_text(art), "from artifact");
        assert_eq!(answer_text(b"plain"), "plain");
        let long = "x".repeat(PREVIEW_CHARS + 10);
        assert_eq!(
            answer_text(long.as_bytes()).chars().count(),
            PREVIEW_CHARS + 1
        );
        assert_eq!(
            rpc_error(br#"{"error":{"code":-32602,"message":"Invalid params"}}"#).as_deref(),
            Some("Invalid params")
        );
        assert_eq!(rpc_error(a), None);
    }

    #[test]
    fn keys_are_short_printable_ascii() {
        assert!(valid_key("0b5e-41aa_x.y:z", 64));
        assert!(!valid_key("", 64));
        assert!(!valid_key("a b", 64));
        assert!(!valid_key(&"a".repeat(65), 64));
        assert!(!valid_key("é", 64));
    }

    #[test]
    fn a_delegation_travels_as_a_message_send() {
        let d = Delegation {
            seq: 1,
            id: "d-1".into(),
            source_id: "s".into(),
            target_id: "t".into(),
            task: "summarise".into(),
            status: "pending".into(),
            origin: "platform".into(),
            idempotency_key: None,
            queue_id: None,
            error: None,
            response_preview: None,
            created_ms: 0,
            updated_ms: 0,
        };
        let v: Value = serde_json::from_str(&delegation_request(&d)).expect("json");
        assert_eq!(v["method"], "message/send");
        assert_eq!(v["params"]["message"]["messageId"], "d-1");
        assert_eq!(v["params"]["message"]["parts"][0]["text"], "summarise");
    }
}
