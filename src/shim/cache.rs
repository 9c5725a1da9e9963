//! The shim's view of the org: one watch on Workspace records (and one on Runtimes, for their
//! provision timeouts) keeps an in-memory index that `GET /workspaces` reads, and every change
//! it observes is turned into stream messages (`view::transitions`) on a broadcast channel.
//! Because the messages come from the watch, a change made with kubectl or by a controller
//! reaches the canvas exactly like one made through the shim. The broadcast never waits for a
//! receiver: a slow client only ever hurts itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{broadcast, watch};

use super::error::ShimError;
use super::tree::Tree;
use super::view::{self, WorkspaceView};
use crate::resources::{Runtime, Workspace};

/// How long a request waits for the first list before answering 503.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One stream message, serialized once for every client.
#[derive(Debug)]
pub struct Outgoing {
    pub event: &'static str,
    pub workspace_id: String,
    pub text: axum::extract::ws::Utf8Bytes,
}

#[derive(Default)]
struct Inner {
    ready: bool,
    by_uid: HashMap<String, Arc<Workspace>>,
    by_token: HashMap<String, String>,
    /// Runtime name → provision timeout override (seconds).
    timeouts: HashMap<String, i64>,
}

/// The index; `generation` ticks on every change so writers can wait to read their writes.
pub struct Cache {
    inner: RwLock<Inner>,
    generation: watch::Sender<u64>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            inner: RwLock::default(),
            generation: watch::channel(0).0,
        }
    }
}

fn token_of(ws: &Workspace) -> Option<String> {
    ws.status.as_ref().and_then(|s| s.token_hash.clone())
}

impl Cache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn get(&self, uid: &str) -> Option<Arc<Workspace>> {
        self.read().by_uid.get(uid).cloned()
    }

    pub fn owner_of_token_hash(&self, hash: &str) -> Option<String> {
        self.read().by_token.get(hash).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live record, as an org tree.
    pub fn tree(&self) -> Tree {
        Tree::new(self.read().by_uid.values().cloned())
    }

    /// The provision timeout override of a runtime, in seconds.
    pub fn timeout_of(&self, runtime: &str) -> Option<i64> {
        self.read().timeouts.get(runtime).copied()
    }

    /// Renders one record with its parent resolved.
    pub fn view(&self, tree: &Tree, ws: &Workspace) -> WorkspaceView {
        let runtime = ws.spec.runtime.as_deref().unwrap_or("echo");
        view::render(ws, tree.parent_of(ws), self.timeout_of(runtime))
    }

    /// Every workspace not being deleted, oldest first (the original's list order).
    pub fn views(&self) -> Vec<WorkspaceView> {
        let tree = self.tree();
        let timeouts = self.read().timeouts.clone();
        let mut out: Vec<WorkspaceView> = self
            .read()
            .by_uid
            .values()
            .filter(|w| w.metadata.deletion_timestamp.is_none())
            .map(|w| {
                let rt = w.spec.runtime.as_deref().unwrap_or("echo");
                view::render(w, tree.parent_of(w), timeouts.get(rt).copied())
            })
            .collect();
        out.sort_by(|a, b| {
            a.created
                .cmp(&b.created)
                .then_with(|| a.k8s_name.cmp(&b.k8s_name))
        });
        out
    }

    /// Waits for the first complete list (503 after `READY_TIMEOUT`).
    pub async fn wait_ready(&self) -> Result<(), ShimError> {
        if self.wait_until(READY_TIMEOUT, |c| c.read().ready).await {
            Ok(())
        } else {
            Err(ShimError::Unavailable(
                "the workspace list is not loaded yet; retry",
            ))
        }
    }

    /// Waits until `pred` holds (re-checked on every change), at most `timeout`.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Cache) -> bool) -> bool {
        let mut rx = self.generation.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return pred(self),
            }
        }
    }

    /// Read-your-writes: waits until the index holds `uid` at `resource_version` or later.
    pub async fn wait_for_version(&self, uid: &str, resource_version: Option<&str>) {
        let Some(want) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        self.wait_until(Duration::from_secs(3), |c| {
            c.get(uid)
                .and_then(|w| w.resource_version())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|have| have >= want)
        })
        .await;
    }

    /// Waits until `uid` is gone from the index (or marked for deletion).
    pub async fn wait_gone(&self, uid: &str) {
        self.wait_until(Duration::from_secs(3), |c| {
            c.get(uid)
                .is_none_or(|w| w.metadata.deletion_timestamp.is_some())
        })
        .await;
    }

    fn upsert(&self, ws: Workspace) {
        let Some(uid) = ws.uid() else { return };
        let mut g = self.write();
        if let Some(old) = g.by_uid.get(&uid)
            && let Some(t) = token_of(old)
        {
            g.by_token.remove(&t);
        }
        if let Some(t) = token_of(&ws) {
            g.by_token.insert(t, uid.clone());
        }
        g.by_uid.insert(uid, Arc::new(ws));
    }

    fn remove(&self, ws: &Workspace) {
        let Some(uid) = ws.uid() else { return };
        let mut g = self.write();
        if let Some(old) = g.by_uid.remove(&uid)
            && let Some(t) = token_of(&old)
        {
            g.by_token.remove(&t);
        }
    }

    fn replace_all(&self, list: Vec<Workspace>) {
        let mut g = self.write();
        g.by_uid.clear();
        g.by_token.clear();
        for ws in list {
            let Some(uid) = ws.uid() else { continue };
            if let Some(t) = token_of(&ws) {
                g.by_token.insert(t, uid.clone());
            }
            g.by_uid.insert(uid, Arc::new(ws));
        }
        g.ready = true;
    }
}

/// Turns the watch into index updates and stream messages until `shutdown`.
pub async fn run(
    client: kube::Client,
    cache: Arc<Cache>,
    events: broadcast::Sender<Arc<Outgoing>>,
    metrics: Arc<crate::telemetry::Metrics>,
    shutdown: crate::shutdown::Shutdown,
) {
    let workspaces = watcher::watcher(
        Api::<Workspace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let runtimes =
        watcher::watcher(Api::<Runtime>::all(client), watcher::Config::default()).default_backoff();
    let mut workspaces = std::pin::pin!(workspaces);
    let mut runtimes = std::pin::pin!(runtimes);
    let mut views: HashMap<String, WorkspaceView> = HashMap::new();
    let mut buffer: Option<Vec<Workspace>> = None;
    let mut runtime_buffer: Option<HashMap<String, i64>> = None;
    let stop = shutdown.wait();
    let mut stop = std::pin::pin!(stop);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = workspaces.next() => {
                let Some(ev) = ev else { break };
                let ev = match ev {
                    Ok(ev) => { failures = 0; ev }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(error = %e, "shim: the workspace watch failed; retrying");
                        }
                        continue;
                    }
                };
                let changed: Vec<String> = match ev {
                    Event::Init => { buffer = Some(vec![]); continue }
                    Event::InitApply(w) => { buffer.get_or_insert_with(Vec::new).push(w); continue }
                    Event::InitDone => {
                        let list = buffer.take().unwrap_or_default();
                        let was_ready = cache.read().ready;
                        cache.replace_all(list);
                        cache.bump();
                        let all: Vec<String> = views.keys().cloned().chain(cache.read().by_uid.keys().cloned()).collect();
                        // The first list only seeds; after a re-list, announce what changed
                        // while the watch was down.
                        publish(&cache, &mut views, all, was_ready.then_some(&events), &metrics);
                        continue;
                    }
                    Event::Apply(w) => {
                        let name_is_new = w.uid().is_some_and(|u| !views.contains_key(&u));
                        let key = (w.namespace().unwrap_or_default(), w.name_any());
                        cache.upsert(w);
                        cache.bump();
                        affected(&cache, &key, name_is_new)
                    }
                    Event::Delete(w) => {
                        let key = (w.namespace().unwrap_or_default(), w.name_any());
                        cache.remove(&w);
                        cache.bump();
                        let mut a = affected(&cache, &key, true);
                        a.extend(w.uid());
                        a
                    }
                };
                publish(&cache, &mut views, changed, Some(&events), &metrics);
            }
            ev = runtimes.next() => {
                let Some(Ok(ev)) = ev else { continue };
                let timeout = |r: &Runtime| r.spec.provision_timeout_seconds.map(|t| (r.name_any(), t));
                match ev {
                    Event::Init => runtime_buffer = Some(HashMap::new()),
                    Event::InitApply(r) => {
                        if let Some((n, t)) = timeout(&r) {
                            runtime_buffer.get_or_insert_with(HashMap::new).insert(n, t);
                        }
                    }
                    Event::InitDone => cache.write().timeouts = runtime_buffer.take().unwrap_or_default(),
                    Event::Apply(r) => {
                        let mut g = cache.write();
                        match timeout(&r) {
                            Some((n, t)) => { g.timeouts.insert(n, t); }
                            None => { g.timeouts.remove(&r.name_any()); }
                        }
                    }
                    Event::Delete(r) => { cache.write().timeouts.remove(&r.name_any()); }
                }
            }
        }
    }
    tracing::info!("shim: workspace watch stopped");
}

/// The uids whose rendering may change when the record `key` changed: itself, plus its
/// children when the name appeared or disappeared (their `parent_id` follows it).
fn affected(cache: &Cache, key: &(String, String), name_changed: bool) -> Vec<String> {
    let g = cache.read();
    let mut out: Vec<String> = g
        .by_uid
        .iter()
        .filter(|(_, w)| w.namespace().unwrap_or_default() == key.0 && w.name_any() == key.1)
        .map(|(u, _)| u.clone())
        .collect();
    if name_changed {
        out.extend(
            g.by_uid
                .iter()
                .filter(|(_, w)| {
                    w.namespace().unwrap_or_default() == key.0
                        && w.spec.parent_ref.as_ref().is_some_and(|p| p.name == key.1)
                })
                .map(|(u, _)| u.clone()),
        );
    }
    out
}

fn publish(
    cache: &Cache,
    views: &mut HashMap<String, WorkspaceView>,
    mut uids: Vec<String>,
    events: Option<&broadcast::Sender<Arc<Outgoing>>>,
    metrics: &crate::telemetry::Metrics,
) {
    uids.sort();
    uids.dedup();
    let tree = cache.tree();
    let now = crate::util::now_micro();
    for uid in uids {
        let new = tree.get(&uid).map(|w| cache.view(&tree, w));
        let old = views.get(&uid);
        let names = view::transitions(old, new.as_ref());
        let payload = match (&new, old) {
            (Some(n), _) => Some(n.clone()),
            (None, Some(o)) => {
                let mut gone = o.clone();
                gone.status = "removed";
                gone.phase = "Terminating".into();
                Some(gone)
            }
            (None, None) => None,
        };
        if let (Some(p), Some(events)) = (&payload, events) {
            for name in names {
                metrics.inc("molecule_shim_events_total", &[("event", name)]);
                // No receivers is fine: nobody is watching the canvas.
                let _ = events.send(Arc::new(Outgoing {
                    event: name,
                    workspace_id: uid.clone(),
                    text: view::message(name, p, &now).into(),
                }));
            }
        }
        match new {
            Some(n) => {
                views.insert(uid, n);
            }
            None => {
                views.remove(&uid);
            }
        }
    }
}
