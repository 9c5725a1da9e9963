//! The shim's view of the org: one watch on Workspace records (and one on Runtimes, for their
//! provision timeouts) keeps an in-memory index that `GET /workspaces` reads, and every change
//! it observes is turned into stream messages (`view::transitions`) on a broadcast channel.
//! Because the messages come from the watch, a change made with kubectl or by a controller
//! reaches the canvas exactly like one made through the shim. The broadcast never waits for a
//! receiver: a slow client only ever hurts itself.

use std::collections::{HashMap, HashSet};
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
use crate::feed::Change;
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

/// (namespace, name) of a record.
type Key = (String, String);

/// The index, maintained incrementally so one change costs O(its children), not O(org).
#[derive(Default)]
struct Inner {
    ready: bool,
    by_uid: HashMap<String, Arc<Workspace>>,
    by_token: HashMap<String, String>,
    by_name: HashMap<Key, String>,
    /// Parent (namespace, name) → uids whose `parentRef` names it (whether it exists or not).
    kids: HashMap<Key, HashSet<String>>,
    /// Runtime name → provision timeout override (seconds).
    timeouts: HashMap<String, i64>,
}

fn key_of(ws: &Workspace) -> Key {
    (ws.namespace().unwrap_or_default(), ws.name_any())
}

fn parent_key(ws: &Workspace) -> Option<Key> {
    ws.spec
        .parent_ref
        .as_ref()
        .map(|p| (ws.namespace().unwrap_or_default(), p.name.clone()))
}

impl Inner {
    fn insert(&mut self, uid: String, ws: Arc<Workspace>) {
        self.unlink(&uid);
        for t in tokens_of(&ws) {
            self.by_token.insert(t, uid.clone());
        }
        self.by_name.insert(key_of(&ws), uid.clone());
        if let Some(p) = parent_key(&ws) {
            self.kids.entry(p).or_default().insert(uid.clone());
        }
        self.by_uid.insert(uid, ws);
    }

    fn unlink(&mut self, uid: &str) -> Option<Arc<Workspace>> {
        let old = self.by_uid.remove(uid)?;
        for t in tokens_of(&old) {
            if self.by_token.get(&t).map(String::as_str) == Some(uid) {
                self.by_token.remove(&t);
            }
        }
        let k = key_of(&old);
        if self.by_name.get(&k).map(String::as_str) == Some(uid) {
            self.by_name.remove(&k);
        }
        if let Some(p) = parent_key(&old)
            && let Some(set) = self.kids.get_mut(&p)
        {
            set.remove(uid);
            if set.is_empty() {
                self.kids.remove(&p);
            }
        }
        Some(old)
    }

    fn parent_uid(&self, ws: &Workspace) -> Option<String> {
        parent_key(ws).and_then(|p| self.by_name.get(&p).cloned())
    }

    fn render(&self, ws: &Workspace) -> WorkspaceView {
        let runtime = ws.spec.runtime.as_deref().unwrap_or("echo");
        view::render(ws, self.parent_uid(ws), self.timeouts.get(runtime).copied())
    }
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

/// Every live token digest of a record (ADR 0049).
fn tokens_of(ws: &Workspace) -> Vec<String> {
    ws.status
        .as_ref()
        .map(crate::workspace_tokens::live_hashes)
        .unwrap_or_default()
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
    pub fn view(&self, ws: &Workspace) -> WorkspaceView {
        self.read().render(ws)
    }

    /// Every workspace not being deleted, oldest first (the original's list order).
    pub fn views(&self) -> Vec<WorkspaceView> {
        let mut out: Vec<WorkspaceView> = {
            let g = self.read();
            g.by_uid
                .values()
                .filter(|w| w.metadata.deletion_timestamp.is_none())
                .map(|w| g.render(w))
                .collect()
        };
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

    fn upsert(&self, ws: Arc<Workspace>) {
        let Some(uid) = ws.uid() else { return };
        self.write().insert(uid, ws);
    }

    fn remove(&self, ws: &Workspace) {
        let Some(uid) = ws.uid() else { return };
        self.write().unlink(&uid);
    }

    fn replace_all(&self, list: Vec<Arc<Workspace>>) {
        let mut g = self.write();
        let timeouts = std::mem::take(&mut g.timeouts);
        *g = Inner {
            timeouts,
            ..Inner::default()
        };
        for ws in list {
            if let Some(uid) = ws.uid() {
                g.insert(uid, ws);
            }
        }
        g.ready = true;
    }
}

/// Turns the workspace changes of the shared Workspace cache (`feed`, ADR 0025) into index
/// updates and stream messages until `shutdown`.
pub async fn run(
    client: kube::Client,
    feed: crate::feed::Feed<Workspace>,
    cache: Arc<Cache>,
    events: broadcast::Sender<Arc<Outgoing>>,
    metrics: Arc<crate::telemetry::Metrics>,
    shutdown: crate::shutdown::Shutdown,
) {
    let workspaces = tokio_stream::wrappers::UnboundedReceiverStream::new(feed);
    let runtimes =
        watcher::watcher(Api::<Runtime>::all(client), watcher::Config::default()).default_backoff();
    let mut workspaces = std::pin::pin!(workspaces);
    let mut runtimes = std::pin::pin!(runtimes);
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut runtime_buffer: Option<HashMap<String, i64>> = None;
    let stop = shutdown.wait();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            change = workspaces.next() => {
                let Some(change) = change else { break };
                let changed: Vec<String> = match change {
                    Change::Relisted(list) => {
                        let was_ready = cache.read().ready;
                        cache.replace_all(list);
                        cache.bump();
                        let all: Vec<String> = sent.keys().cloned().chain(cache.read().by_uid.keys().cloned()).collect();
                        // The first list only seeds; after a re-list, announce what changed
                        // while the watch was down.
                        publish(&cache, &mut sent, all, was_ready.then_some(&events), &metrics);
                        continue;
                    }
                    Change::Applied(w) => {
                        let name_is_new = w.uid().is_some_and(|u| !sent.contains_key(&u));
                        let key = key_of(&w);
                        cache.upsert(w);
                        cache.bump();
                        affected(&cache, &key, name_is_new)
                    }
                    Change::Deleted(w) => {
                        let key = key_of(&w);
                        cache.remove(&w);
                        cache.bump();
                        let mut a = affected(&cache, &key, true);
                        a.extend(w.uid());
                        a
                    }
                };
                publish(&cache, &mut sent, changed, Some(&events), &metrics);
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
fn affected(cache: &Cache, key: &Key, name_changed: bool) -> Vec<String> {
    let g = cache.read();
    let mut out: Vec<String> = g.by_name.get(key).cloned().into_iter().collect();
    if name_changed {
        out.extend(g.kids.get(key).into_iter().flatten().cloned());
    }
    out
}

/// What the stream last sent about one workspace: the view's fingerprint, and what renders its
/// removal message (the record is the cache's own `Arc` while it lives).
struct Sent {
    print: view::Fingerprint,
    record: Arc<Workspace>,
    parent: Option<String>,
    timeout: Option<i64>,
}

fn publish(
    cache: &Cache,
    sent: &mut HashMap<String, Sent>,
    mut uids: Vec<String>,
    events: Option<&broadcast::Sender<Arc<Outgoing>>>,
    metrics: &crate::telemetry::Metrics,
) {
    uids.sort();
    uids.dedup();
    let started = std::time::Instant::now();
    let now = crate::util::now_micro();
    for uid in uids {
        let new = {
            let g = cache.read();
            g.by_uid.get(&uid).map(|w| {
                let parent = g.parent_uid(w);
                let runtime = w.spec.runtime.as_deref().unwrap_or("echo");
                let timeout = g.timeouts.get(runtime).copied();
                let view = view::render(w, parent.clone(), timeout);
                let sent = Sent {
                    print: view::Fingerprint::of(&view),
                    record: w.clone(),
                    parent,
                    timeout,
                };
                (view, sent)
            })
        };
        let old = sent.get(&uid);
        let names = view::changes(old.map(|o| &o.print), new.as_ref().map(|(_, s)| &s.print));
        let payload = match (&new, old) {
            (Some((n, _)), _) => Some(n.clone()),
            (None, Some(o)) => {
                let mut gone = view::render(&o.record, o.parent.clone(), o.timeout);
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
            Some((_, s)) => {
                sent.insert(uid, s);
            }
            None => {
                sent.remove(&uid);
            }
        }
    }
    metrics.observe(
        "molecule_shim_publish_seconds",
        &[],
        started.elapsed().as_secs_f64(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{LocalObjectReference, WorkspaceSpec, WorkspaceStatus};

    fn ws(name: &str, uid: &str, parent: Option<&str>, token: Option<&str>) -> Arc<Workspace> {
        let mut w = Workspace::new(
            name,
            WorkspaceSpec {
                parent_ref: parent.map(|p| LocalObjectReference { name: p.into() }),
                ..Default::default()
            },
        );
        w.metadata.uid = Some(uid.into());
        w.metadata.namespace = Some("ns".into());
        w.status = Some(WorkspaceStatus {
            token_hash: token.map(String::from),
            ..Default::default()
        });
        Arc::new(w)
    }

    fn parent(c: &Cache, uid: &str) -> Option<String> {
        c.view(&c.get(uid).expect("present")).parent_id
    }

    #[test]
    fn the_index_follows_parents_recreations_and_tokens() {
        let c = Cache::default();
        c.upsert(ws("a", "u2", Some("lead"), Some("t2")));
        assert_eq!(parent(&c, "u2"), None, "the parent does not exist yet");
        c.upsert(ws("lead", "u1", None, None));
        assert_eq!(parent(&c, "u2").as_deref(), Some("u1"));
        let lead = ("ns".to_string(), "lead".to_string());
        assert_eq!(affected(&c, &lead, true), vec!["u1", "u2"]);
        assert_eq!(affected(&c, &lead, false), vec!["u1"]);

        // The parent is deleted and re-created under the same name: a new uid.
        c.remove(&ws("lead", "u1", None, None));
        assert_eq!(parent(&c, "u2"), None);
        assert_eq!(affected(&c, &lead, true), vec!["u2"]);
        c.upsert(ws("lead", "u3", None, None));
        assert_eq!(parent(&c, "u2").as_deref(), Some("u3"));

        // Re-parenting and token rotation replace the old index entries.
        c.upsert(ws("a", "u2", None, Some("t2b")));
        assert!(affected(&c, &lead, true) == vec!["u3"]);
        assert_eq!(c.owner_of_token_hash("t2"), None);
        assert_eq!(c.owner_of_token_hash("t2b").as_deref(), Some("u2"));

        c.replace_all(vec![ws("x", "u9", None, None)]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.owner_of_token_hash("t2b"), None);
        assert!(c.read().ready);
    }
}
