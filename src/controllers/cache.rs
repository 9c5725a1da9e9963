//! What every replica keeps warm, and how the leader's controllers plug into it (ADR 0025).
//!
//! - [`SharedCache`] runs one watch + reflector per kind for the life of the process, on every
//!   replica, leader or not: the registry endpoints read it, and a replica that becomes leader
//!   starts reconciling from a synced cache instead of listing everything first.
//! - A controller started for one leadership term subscribes to the cache ([`SharedCache::controller`]):
//!   it gets every later change plus one reconcile of everything already cached.
//! - [`Relay`] does the same for other trigger sources (Docker events): while no controller
//!   listens, triggers are dropped, not queued.
//! - [`WorkQueue`] counts what is waiting: objects triggered but not yet picked up
//!   (`molecule_workqueue_depth`) and reconciles running (`molecule_reconcile_in_flight`).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::feed::{Change, Feed};
use crate::telemetry::Metrics;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Triggered-but-not-started objects and running reconciles of one controller.
pub struct WorkQueue {
    controller: &'static str,
    pending: Mutex<HashSet<String>>,
    in_flight: std::sync::atomic::AtomicI64,
    metrics: Arc<Metrics>,
}

/// Held while one reconcile runs (also when it is aborted).
pub struct InFlight(Arc<WorkQueue>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
            - 1;
        self.0.metrics.set(
            "molecule_reconcile_in_flight",
            &[("controller", self.0.controller)],
            n as f64,
        );
    }
}

impl WorkQueue {
    pub fn new(controller: &'static str, metrics: Arc<Metrics>) -> Arc<Self> {
        let q = Arc::new(WorkQueue {
            controller,
            pending: Mutex::default(),
            in_flight: Default::default(),
            metrics,
        });
        q.publish(0);
        q.metrics.set(
            "molecule_reconcile_in_flight",
            &[("controller", controller)],
            0.0,
        );
        q
    }

    fn publish(&self, depth: usize) {
        self.metrics.set(
            "molecule_workqueue_depth",
            &[("controller", self.controller)],
            depth as f64,
        );
    }

    /// The key of an object: `namespace/name` (or `name`).
    pub fn key(namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        }
    }

    /// An object was triggered.
    pub fn add(&self, key: String) {
        let mut p = lock(&self.pending);
        p.insert(key);
        self.publish(p.len());
    }

    /// A reconcile of `key` starts; the returned guard ends it.
    pub fn begin(self: &Arc<Self>, key: &str) -> InFlight {
        {
            let mut p = lock(&self.pending);
            p.remove(key);
            self.publish(p.len());
        }
        let n = self
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.metrics.set(
            "molecule_reconcile_in_flight",
            &[("controller", self.controller)],
            n as f64,
        );
        InFlight(self.clone())
    }

    /// The term ended: nothing is waiting any more.
    pub fn clear(&self) {
        let mut p = lock(&self.pending);
        p.clear();
        self.publish(0);
    }

    /// Objects waiting.
    pub fn depth(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// A trigger source whose items reach the current subscriber, or nobody.
pub struct Relay<T> {
    slot: Arc<Mutex<Option<mpsc::Sender<T>>>>,
}

impl<T> Clone for Relay<T> {
    fn clone(&self) -> Self {
        Relay {
            slot: self.slot.clone(),
        }
    }
}

impl<T> Default for Relay<T> {
    fn default() -> Self {
        Relay {
            slot: Arc::default(),
        }
    }
}

impl<T: Send + 'static> Relay<T> {
    /// Hands `item` to the subscriber, if any (dropped when it is full: triggers are hints).
    pub fn send(&self, item: T) {
        if let Some(tx) = lock(&self.slot).as_ref() {
            let _ = tx.try_send(item);
        }
    }

    /// Replaces the subscriber.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel(capacity);
        *lock(&self.slot) = Some(tx);
        rx
    }
}

/// The named subscribers of a cache; a closed one is dropped at the next change.
type Subscribers<K> = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Change<K>>>>>;

/// One kind, watched for the life of the process; see the module docs.
pub struct SharedCache<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    reader: Store<K>,
    subscribers: Subscribers<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Drop for SharedCache<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the cache tells its subscribers about one watch event, once the store applied it: the
/// store's own `Arc`s, so a subscriber that keeps them holds no second copy.
fn changes_of<K>(event: &watcher::Event<K>, reader: &Store<K>) -> Option<Change<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    match event {
        watcher::Event::Apply(o) => reader.get(&ObjectRef::from_obj(o)).map(Change::Applied),
        watcher::Event::Delete(o) => Some(Change::Deleted(Arc::new(o.clone()))),
        watcher::Event::Init | watcher::Event::InitApply(_) => None,
        watcher::Event::InitDone => Some(Change::Relisted(reader.state())),
    }
}

/// Drops what no controller reads and a cached object would otherwise carry: managedFields
/// (the API server's bookkeeping, about half of a cached Workspace) and kubectl's
/// last-applied-configuration (a second copy of the object as it was applied).
pub fn slim<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

impl<K> SharedCache<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    /// Starts watching `api`.
    pub fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (reader, mut writer) = reflector::store();
        let subscribers: Subscribers<K> = Arc::default();
        let task = tokio::spawn({
            let (subscribers, reader) = (subscribers.clone(), reader.clone());
            async move {
                let stream = watcher(api, config).default_backoff().modify(slim);
                let mut stream = std::pin::pin!(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => {
                            writer.apply_watcher_event(&event);
                            if let Some(change) = changes_of(&event, &reader) {
                                lock(&subscribers).retain(|_, tx| tx.send(change.clone()).is_ok());
                            }
                        }
                        Err(e) => {
                            tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying with backoff")
                        }
                    }
                }
            }
        });
        SharedCache {
            reader,
            subscribers,
            task,
        }
    }

    /// The cache itself.
    pub fn reader(&self) -> Store<K> {
        self.reader.clone()
    }

    /// Resolves once the first list is in.
    pub async fn ready(&self) {
        let _ = self.reader.wait_until_ready().await;
    }

    /// Every change from now on, for the subscriber `name` (replacing an earlier subscriber of
    /// that name). A subscriber that starts after the first list gets what the cache holds as
    /// one [`Change::Relisted`] first.
    pub fn feed(&self, name: &str) -> Feed<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = lock(&self.subscribers);
        // Under the lock: a change the snapshot misses is sent to the new subscriber after it
        // (one it already holds may come twice; applying a change twice is harmless).
        let ready = futures::FutureExt::now_or_never(self.reader.wait_until_ready())
            .is_some_and(|r| r.is_ok());
        if ready {
            let _ = tx.send(Change::Relisted(self.reader.state()));
        }
        subs.insert(name.to_string(), tx);
        rx
    }

    /// Every object created or changed from now on (one per relisted object after a relist),
    /// for the subscriber `name`.
    fn subscribe(&self, name: &str) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers).insert(name.to_string(), tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).flat_map(|c| {
            futures::stream::iter(match c {
                Change::Applied(o) => vec![o],
                Change::Relisted(all) => all,
                Change::Deleted(_) => vec![],
            })
        })
    }

    /// Every object a change touches (applied, deleted, or in a relist), for `name`, which
    /// replaces an earlier subscriber of that name: a trigger for a controller of another kind
    /// (`Controller::watches_shared_stream`) without a watch of its own.
    pub fn touched(&self, name: &str) -> impl Stream<Item = Arc<K>> + Send + 'static {
        tokio_stream::wrappers::UnboundedReceiverStream::new(self.feed(name)).flat_map(|c| {
            futures::stream::iter(match c {
                Change::Applied(o) | Change::Deleted(o) => vec![o],
                Change::Relisted(all) => all,
            })
        })
    }

    /// Like [`SharedCache::touched`], but an applied or relisted object passes only when
    /// `predicate` hashes it differently from the last time it was seen (`None` always passes);
    /// a deletion always passes. A controller of another kind that acts on a few fields of this
    /// one (not, say, on every heartbeat written to its status) is woken only when they change.
    pub fn touched_filtered(
        &self,
        name: &str,
        predicate: impl Fn(&K) -> Option<u64> + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let mut seen = Seen::new(predicate);
        tokio_stream::wrappers::UnboundedReceiverStream::new(self.feed(name)).flat_map(move |c| {
            futures::stream::iter(match c {
                Change::Applied(o) => seen.changed(&o).then_some(o).into_iter().collect(),
                Change::Relisted(all) => all.into_iter().filter(|o| seen.changed(o)).collect(),
                Change::Deleted(o) => {
                    seen.forget(&o);
                    vec![o]
                }
            })
        })
    }

    /// A controller over this cache for one leadership term: it reconciles everything cached
    /// now, then every change, and reports what waits on `queue`.
    pub fn controller(&self, queue: &Arc<WorkQueue>) -> Controller<K> {
        self.controller_filtered(queue, |_: &K| None)
    }

    /// Like [`SharedCache::controller`], but a change only triggers a reconcile when
    /// `predicate` hashes the object differently from the last time it was seen (`None` always
    /// triggers), as kube-runtime's `predicate_filter` does for a plain watch.
    pub fn controller_filtered(
        &self,
        queue: &Arc<WorkQueue>,
        predicate: impl Fn(&K) -> Option<u64> + Send + 'static,
    ) -> Controller<K> {
        let changes = {
            let queue = queue.clone();
            let mut seen = Seen::new(predicate);
            self.subscribe(queue.controller)
                .filter(move |o| futures::future::ready(seen.changed(o)))
                .inspect(move |o| {
                    queue.add(WorkQueue::key(o.namespace().as_deref(), &o.name_any()))
                })
        };
        let existing: Vec<ObjectRef<K>> = self
            .reader
            .state()
            .iter()
            .map(|o| {
                queue.add(WorkQueue::key(o.namespace().as_deref(), &o.name_any()));
                ObjectRef::from_obj(o.as_ref())
            })
            .collect();
        Controller::for_shared_stream(changes, self.reader.clone())
            .reconcile_on(futures::stream::iter(existing))
    }
}

/// The last hash a predicate gave each object, as kube-runtime's `predicate_filter` keeps it.
struct Seen<K: Resource, P>
where
    K::DynamicType: Eq + Hash + Clone,
{
    hashes: HashMap<ObjectRef<K>, u64>,
    predicate: P,
}

impl<K, P> Seen<K, P>
where
    K: Resource,
    K::DynamicType: Default + Eq + Hash + Clone,
    P: Fn(&K) -> Option<u64>,
{
    fn new(predicate: P) -> Self {
        Seen {
            hashes: HashMap::new(),
            predicate,
        }
    }

    /// Whether `o` hashes differently from the last time (always, for a `None` hash).
    fn changed(&mut self, o: &K) -> bool {
        match (self.predicate)(o) {
            Some(h) => self.hashes.insert(ObjectRef::from_obj(o), h) != Some(h),
            None => true,
        }
    }

    fn forget(&mut self, o: &K) {
        self.hashes.remove(&ObjectRef::from_obj(o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_distinct_waiting_objects_and_in_flight_reconciles() {
        let m = Arc::new(Metrics::default());
        let q = WorkQueue::new("workspace", m.clone());
        q.add("ns/a".into());
        q.add("ns/a".into());
        q.add("ns/b".into());
        assert_eq!(q.depth(), 2);
        assert!(
            m.render()
                .contains("molecule_workqueue_depth{controller=\"workspace\"} 2")
        );
        let g = q.begin("ns/a");
        assert_eq!(q.depth(), 1);
        assert!(
            m.render()
                .contains("molecule_reconcile_in_flight{controller=\"workspace\"} 1")
        );
        drop(g);
        assert!(
            m.render()
                .contains("molecule_reconcile_in_flight{controller=\"workspace\"} 0")
        );
        q.clear();
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn relays_reach_only_the_current_subscriber() {
        let r: Relay<u32> = Relay::default();
        r.send(1); // nobody listens: dropped
        let mut first = r.subscribe(4);
        r.send(2);
        let mut second = r.subscribe(4);
        r.send(3);
        assert_eq!(first.recv().await, Some(2));
        assert_eq!(first.recv().await, None, "replaced subscribers are closed");
        assert_eq!(second.recv().await, Some(3));
    }
}
