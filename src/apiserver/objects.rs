//! The object state of the embedded API server.
//!
//! All live objects are held in memory (like the real apiserver's watch cache) and persisted
//! through a [`Store`]. Writes are closures run by one writer task over a [`Txn`]: the writer
//! takes every queued write, runs each one against the state as left by the ones before it,
//! commits the whole batch to the store in one transaction (group commit), and only then
//! applies it in memory, broadcasts the watch events and answers the callers. One global,
//! strictly increasing counter is the resourceVersion of every kind.
//!
//! Bounds (ADR 0041): a write that leaves an object larger than `max_object_bytes` (serialized)
//! is refused with 413, and the watch history is bounded by the bytes of its objects as well as
//! by its length; a watcher whose resourceVersion fell out of it gets 410.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::error::ApiError;
use super::selectors::{FieldSelector, LabelSelector};
use crate::store::{ChangeKind, ChangeRow, CommitOutcome, SecretKey, Store, StoreError};

/// (storage, namespace, name); namespace is "" for cluster-scoped kinds.
pub type Key = (Arc<str>, String, String);

/// Storage key of Secrets, the one kind sealed at rest.
pub const SECRETS: &str = "core/secrets";

/// One stored version of an object: its JSON text, shared by the live objects, the watch
/// history and every watcher, plus the few fields lookups and label filters read without
/// parsing it (ADR 0058). A Workspace of about 650 bytes of JSON takes about 1 KB here; as a
/// `serde_json::Value` tree it took 8 to 10 KB.
#[derive(Debug)]
pub struct Stored {
    json: Bytes,
    uid: Box<str>,
    labels: Box<[(Box<str>, Box<str>)]>,
    owners: Box<[Box<str>]>,
}

impl Stored {
    /// A version whose text was made from `v`.
    fn new(v: &Value, text: String) -> Self {
        let labels = v
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
                    .collect()
            })
            .unwrap_or_default();
        Stored {
            json: Bytes::from(text),
            uid: uid_of(v).unwrap_or_default().into(),
            labels,
            owners: owner_uids(v).into_iter().map(Into::into).collect(),
        }
    }

    /// A version read back from its text.
    fn parse(text: String) -> Result<Self, serde_json::Error> {
        let v: Value = serde_json::from_str(&text)?;
        Ok(Stored::new(&v, text))
    }

    /// The object as JSON text.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The object, parsed. The text was written from a `Value`, so it parses.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    pub fn uid(&self) -> Option<&str> {
        Some(&*self.uid).filter(|u| !u.is_empty())
    }

    /// The uids its ownerReferences name.
    pub fn owner_uids(&self) -> impl Iterator<Item = &str> {
        self.owners.iter().map(|o| &**o)
    }

    /// Whether it passes a label and a field selector. Labels are read from the index; a
    /// field selector (rare: `metadata.name`, an Event's `involvedObject`) parses the text.
    pub fn matches(&self, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        let label = |k: &str| {
            self.labels
                .iter()
                .find(|(n, _)| &**n == k)
                .map(|(_, v)| &**v)
        };
        labels.matches_with(label) && (fields.is_empty() || fields.matches(&self.value()))
    }
}

/// One change, as seen by watchers.
#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: ChangeKind,
    pub key: Key,
    /// The object before the change, when known.
    pub old: Option<Arc<Stored>>,
    /// The object after the change (for DELETED: its last state, at the deletion RV).
    pub obj: Arc<Stored>,
}

/// A committed batch of changes, in RV order.
pub type Batch = Arc<Vec<Arc<WatchEvent>>>;

/// Objects of one storage, by (namespace, name).
type Bucket = BTreeMap<(String, String), Arc<Stored>>;

#[derive(Default)]
struct Inner {
    rv: u64,
    /// History covers every change with rv in (compacted, rv].
    compacted: u64,
    objects: HashMap<Arc<str>, Bucket>,
    history: VecDeque<Arc<WatchEvent>>,
    /// Bytes of the history's objects (their JSON text).
    history_bytes: usize,
    by_uid: HashMap<String, Key>,
    dependents: HashMap<String, BTreeSet<Key>>,
}

fn uid_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/uid").and_then(Value::as_str)
}

fn owner_uids(v: &Value) -> Vec<String> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl Inner {
    fn get(&self, key: &Key) -> Option<&Arc<Stored>> {
        self.objects
            .get(&key.0)?
            .get(&(key.1.clone(), key.2.clone()))
    }

    fn unindex(&mut self, key: &Key, v: &Stored) {
        if let Some(uid) = v.uid() {
            self.by_uid.remove(uid);
        }
        for owner in v.owner_uids() {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
    }

    fn index(&mut self, key: &Key, v: &Stored) {
        if let Some(uid) = v.uid() {
            self.by_uid.insert(uid.to_string(), key.clone());
        }
        for owner in v.owner_uids() {
            self.dependents
                .entry(owner.to_string())
                .or_default()
                .insert(key.clone());
        }
    }

    fn push_history(&mut self, e: Arc<WatchEvent>) {
        self.history_bytes += e.obj.json.len();
        self.history.push_back(e);
    }

    /// Drops the oldest changes until the history fits both bounds.
    fn trim_history(&mut self, max_len: usize, max_bytes: usize) {
        while self.history.len() > max_len || self.history_bytes > max_bytes {
            let Some(e) = self.history.pop_front() else {
                break;
            };
            self.compacted = e.rv;
            self.history_bytes = self.history_bytes.saturating_sub(e.obj.json.len());
        }
    }

    fn set(&mut self, key: &Key, v: Option<Arc<Stored>>) {
        let map = self.objects.entry(key.0.clone()).or_default();
        let old = match &v {
            Some(v) => map.insert((key.1.clone(), key.2.clone()), v.clone()),
            None => map.remove(&(key.1.clone(), key.2.clone())),
        };
        if let Some(old) = old {
            self.unindex(key, &old);
        }
        if let Some(v) = v {
            self.index(key, &v);
        }
    }
}

/// A change the running operation made, before it is measured and serialized.
struct Pending {
    rv: u64,
    kind: ChangeKind,
    key: Key,
    old: Option<Arc<Stored>>,
    obj: Arc<Value>,
}

/// A write transaction: reads see the state left by earlier operations of the batch.
/// Operations work on parsed values; what an operation leaves is serialized once, when it is
/// measured, and held as [`Stored`] text from then on.
pub struct Txn<'a> {
    base: &'a Inner,
    /// What earlier operations of this batch left.
    batch: HashMap<Key, Option<Arc<Stored>>>,
    /// What the running operation has written so far.
    op: HashMap<Key, Option<Arc<Value>>>,
    events: Vec<Arc<WatchEvent>>,
    op_events: Vec<Pending>,
    /// The running operation's changes once measured, with their text.
    op_measured: Vec<(Arc<WatchEvent>, String)>,
    /// The serialized objects of `events`, in step with them: what the store gets.
    texts: Vec<String>,
    rv: u64,
    op_start_rv: u64,
    now: String,
}

impl<'a> Txn<'a> {
    fn new(base: &'a Inner) -> Self {
        Txn {
            base,
            batch: HashMap::new(),
            op: HashMap::new(),
            events: vec![],
            op_events: vec![],
            op_measured: vec![],
            texts: vec![],
            rv: base.rv,
            op_start_rv: base.rv,
            now: crate::util::now_rfc3339(),
        }
    }

    /// The time stamp of this batch (RFC 3339, seconds).
    pub fn now(&self) -> &str {
        &self.now
    }

    /// The current object at `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        if let Some(v) = self.op.get(key) {
            return v.clone();
        }
        if let Some(v) = self.batch.get(key) {
            return v.as_ref().map(|s| Arc::new(s.value()));
        }
        self.base.get(key).map(|s| Arc::new(s.value()))
    }

    /// The current version at `key`, as stored (what a change records as its `old`).
    fn stored(&self, key: &Key) -> Option<Arc<Stored>> {
        if let Some(v) = self.op.get(key) {
            // Written twice by one operation: the first write is serialized here.
            return v.as_ref().map(|v| Arc::new(Stored::new(v, v.to_string())));
        }
        if let Some(v) = self.batch.get(key) {
            return v.clone();
        }
        self.base.get(key).cloned()
    }

    /// Every current object of one storage, optionally in one namespace, sorted by (ns, name).
    pub fn list(&self, storage: &str, ns: Option<&str>) -> Vec<(Key, Arc<Value>)> {
        let mut out: BTreeMap<(String, String), Option<Arc<Value>>> = BTreeMap::new();
        if let Some(m) = self.base.objects.get(storage) {
            for ((n, name), v) in m {
                if ns.is_none_or(|x| x == n) {
                    out.insert((n.clone(), name.clone()), Some(Arc::new(v.value())));
                }
            }
        }
        for (k, v) in &self.batch {
            if &*k.0 == storage && ns.is_none_or(|x| x == k.1) {
                out.insert(
                    (k.1.clone(), k.2.clone()),
                    v.as_ref().map(|s| Arc::new(s.value())),
                );
            }
        }
        for (k, v) in &self.op {
            if &*k.0 == storage && ns.is_none_or(|x| x == k.1) {
                out.insert((k.1.clone(), k.2.clone()), v.clone());
            }
        }
        let s: Arc<str> = Arc::from(storage);
        out.into_iter()
            .filter_map(|((n, name), v)| v.map(|v| ((s.clone(), n, name), v)))
            .collect()
    }

    /// The current objects of one storage that have ownerReferences, with their owners' uids,
    /// read from the index: the garbage collector parses only those it acts on.
    pub fn owned(&self, storage: &str) -> Vec<(Key, Vec<String>)> {
        let mut out: BTreeMap<Key, Vec<String>> = BTreeMap::new();
        let s: Arc<str> = Arc::from(storage);
        if let Some(m) = self.base.objects.get(storage) {
            for ((n, name), v) in m {
                if v.owners.is_empty() {
                    continue;
                }
                let k = (s.clone(), n.clone(), name.clone());
                if !self.batch.contains_key(&k) && !self.op.contains_key(&k) {
                    out.insert(k, v.owner_uids().map(String::from).collect());
                }
            }
        }
        for (k, v) in &self.batch {
            if &*k.0 == storage
                && !self.op.contains_key(k)
                && let Some(v) = v
                && !v.owners.is_empty()
            {
                out.insert(k.clone(), v.owner_uids().map(String::from).collect());
            }
        }
        for (k, v) in &self.op {
            if &*k.0 == storage
                && let Some(v) = v
            {
                let owners = owner_uids(v);
                if !owners.is_empty() {
                    out.insert(k.clone(), owners);
                }
            }
        }
        out.into_iter().collect()
    }

    /// The object with this uid, if it exists.
    pub fn find_uid(&self, uid: &str) -> Option<(Key, Arc<Value>)> {
        for (k, v) in &self.op {
            if let Some(v) = v
                && uid_of(v) == Some(uid)
            {
                return Some((k.clone(), v.clone()));
            }
        }
        for (k, v) in &self.batch {
            if let Some(v) = v
                && v.uid() == Some(uid)
                && !self.op.contains_key(k)
            {
                return self.get(k).map(|v| (k.clone(), v));
            }
        }
        let key = self.base.by_uid.get(uid)?;
        let v = self.get(key)?;
        (uid_of(&v) == Some(uid)).then(|| (key.clone(), v))
    }

    /// Whether an object with this uid exists (without parsing it).
    pub fn uid_exists(&self, uid: &str) -> bool {
        if self
            .op
            .values()
            .any(|v| v.as_ref().is_some_and(|v| uid_of(v) == Some(uid)))
        {
            return true;
        }
        if self.batch.iter().any(|(k, v)| {
            !self.op.contains_key(k) && v.as_ref().is_some_and(|v| v.uid() == Some(uid))
        }) {
            return true;
        }
        self.base.by_uid.get(uid).is_some_and(|k| {
            !self.op.contains_key(k)
                && !self.batch.contains_key(k)
                && self.base.get(k).is_some_and(|v| v.uid() == Some(uid))
        })
    }

    /// Current objects whose ownerReferences name `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<(Key, Arc<Value>)> {
        let mut keys: BTreeSet<Key> = self.base.dependents.get(uid).cloned().unwrap_or_default();
        keys.extend(self.batch.keys().cloned());
        keys.extend(self.op.keys().cloned());
        keys.into_iter()
            .filter(|k| self.owned_by(k, uid))
            .filter_map(|k| self.get(&k).map(|v| (k, v)))
            .collect()
    }

    /// Whether the current object at `key` names `uid` as an owner, read from the index for
    /// stored versions: only dependents are parsed.
    fn owned_by(&self, key: &Key, uid: &str) -> bool {
        if let Some(v) = self.op.get(key) {
            return v
                .as_ref()
                .is_some_and(|v| owner_uids(v).iter().any(|o| o == uid));
        }
        let stored = match self.batch.get(key) {
            Some(v) => v.as_ref(),
            None => self.base.get(key),
        };
        stored.is_some_and(|s| s.owner_uids().any(|o| o == uid))
    }

    /// Stores `obj` at `key` with a new resourceVersion; returns what was stored.
    pub fn put(&mut self, key: &Key, mut obj: Value) -> Arc<Value> {
        let old = self.stored(key);
        self.rv += 1;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        }
        let obj = Arc::new(obj);
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.op_events.push(Pending {
            rv: self.rv,
            kind,
            key: key.clone(),
            old,
            obj: obj.clone(),
        });
        self.op.insert(key.clone(), Some(obj.clone()));
        obj
    }

    /// Removes the object at `key`; returns its last state (at the deletion RV).
    pub fn remove(&mut self, key: &Key) -> Option<Arc<Value>> {
        let old = self.stored(key)?;
        let mut last = (*self.get(key)?).clone();
        self.rv += 1;
        if let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        }
        let last = Arc::new(last);
        self.op_events.push(Pending {
            rv: self.rv,
            kind: ChangeKind::Deleted,
            key: key.clone(),
            old: Some(old),
            obj: last.clone(),
        });
        self.op.insert(key.clone(), None);
        Some(last)
    }

    /// Serializes what the operation wrote (once: the text is what the store gets and what is
    /// held) and refuses it when an object it leaves is larger than `max` bytes (ADR 0041).
    /// Deletions always pass.
    fn measure_op(&mut self, max: usize) -> Result<(), ApiError> {
        let texts: Vec<String> = self.op_events.iter().map(|p| p.obj.to_string()).collect();
        for (p, text) in self.op_events.iter().zip(&texts) {
            if p.kind != ChangeKind::Deleted && text.len() > max {
                return Err(ApiError::object_too_large(text.len(), max));
            }
        }
        for (p, text) in self.op_events.drain(..).zip(texts) {
            let obj = Arc::new(Stored::new(&p.obj, text.clone()));
            let e = WatchEvent {
                rv: p.rv,
                kind: p.kind,
                key: p.key,
                old: p.old,
                obj,
            };
            self.op_measured.push((Arc::new(e), text));
        }
        Ok(())
    }

    fn commit_op(&mut self) {
        // What each key holds now: its last change's object, or nothing after a deletion.
        let mut last: HashMap<&Key, &Arc<Stored>> = HashMap::new();
        for (e, _) in &self.op_measured {
            last.insert(&e.key, &e.obj);
        }
        for (k, v) in self.op.drain() {
            let stored = v.and_then(|_| last.get(&k).map(|s| (*s).clone()));
            self.batch.insert(k, stored);
        }
        for (e, text) in self.op_measured.drain(..) {
            self.events.push(e);
            self.texts.push(text);
        }
        self.op_start_rv = self.rv;
    }

    fn abort_op(&mut self) {
        self.op.clear();
        self.op_events.clear();
        self.op_measured.clear();
        self.rv = self.op_start_rv;
    }
}

/// What a write answers: an HTTP code, a body and `Warning` headers.
#[derive(Debug, Clone)]
pub struct WriteReply {
    pub code: u16,
    pub body: Value,
    pub warnings: Vec<String>,
}

impl WriteReply {
    pub fn ok(body: Value) -> Self {
        WriteReply {
            code: 200,
            body,
            warnings: vec![],
        }
    }
    pub fn created(body: Value) -> Self {
        WriteReply {
            code: 201,
            body,
            warnings: vec![],
        }
    }
}

/// A write: runs once, in the writer, against the batch's transaction.
pub type WriteFn = Box<dyn FnOnce(&mut Txn<'_>) -> Result<WriteReply, ApiError> + Send>;

struct Job {
    f: WriteFn,
    dry_run: bool,
    reply: oneshot::Sender<Result<WriteReply, ApiError>>,
}

/// Tunables of the object state.
#[derive(Clone, Debug)]
pub struct ObjectsConfig {
    /// How many changes watchers can resume from.
    pub history: usize,
    /// Bytes of serialized objects the watch history may hold (ADR 0041).
    pub history_bytes: usize,
    /// Largest object a write may leave, serialized (ADR 0041).
    pub max_object_bytes: usize,
    /// Most writes committed in one store transaction.
    pub max_batch: usize,
}

/// Default bound of the watch history in bytes: 64 MiB (ADR 0041).
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;

/// Largest stored object: etcd's default request limit, 1.5 MiB (ADR 0041).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

impl Default for ObjectsConfig {
    fn default() -> Self {
        ObjectsConfig {
            history: 20_000,
            history_bytes: DEFAULT_HISTORY_BYTES,
            max_object_bytes: MAX_OBJECT_BYTES,
            max_batch: 512,
        }
    }
}

/// Counters exported on /metrics.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
}

/// The object state: in-memory objects, the watch history and the writer's queue.
pub struct Objects {
    inner: RwLock<Inner>,
    queue: mpsc::Sender<Job>,
    events: broadcast::Sender<Batch>,
    pub stats: WriteStats,
}

/// Errors loading the persisted state.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::store::SecretKeyError),
    #[error("stored object {0} is not valid JSON")]
    Json(String),
}

fn decode(storage: &str, value: &str, key: &SecretKey) -> Result<Stored, LoadError> {
    let text = if storage == SECRETS {
        key.open(value)?
    } else {
        value.to_string()
    };
    Stored::parse(text).map_err(|_| LoadError::Json(storage.to_string()))
}

/// The stored form of a serialized object (Secrets are sealed).
fn encode(storage: &str, text: String, key: &SecretKey) -> String {
    if storage == SECRETS {
        key.seal(&text)
    } else {
        text
    }
}

impl Objects {
    /// Loads the persisted state and starts the writer task.
    pub async fn start(
        store: Arc<dyn Store>,
        key: SecretKey,
        config: ObjectsConfig,
    ) -> Result<Arc<Self>, LoadError> {
        let snap = store.load(config.history).await?;
        let mut inner = Inner {
            rv: u64::try_from(snap.rv).unwrap_or(0),
            ..Default::default()
        };
        for row in snap.objects {
            let v = decode(&row.resource, &row.value, &key)?;
            inner.set(
                &(Arc::from(row.resource.as_str()), row.namespace, row.name),
                Some(Arc::new(v)),
            );
        }
        // Rebuild the watch history; `old` is known for keys seen earlier in the history.
        let mut last: HashMap<Key, Arc<Stored>> = HashMap::new();
        inner.compacted = snap
            .history
            .first()
            .map(|c| u64::try_from(c.rv - 1).unwrap_or(0))
            .unwrap_or(inner.rv);
        for c in snap.history {
            let k: Key = (Arc::from(c.resource.as_str()), c.namespace, c.name);
            let obj = Arc::new(decode(&k.0, &c.value, &key)?);
            let old = last.get(&k).cloned();
            if c.kind == ChangeKind::Deleted {
                last.remove(&k);
            } else {
                last.insert(k.clone(), obj.clone());
            }
            inner.push_history(Arc::new(WatchEvent {
                rv: u64::try_from(c.rv).unwrap_or(0),
                kind: c.kind,
                key: k,
                old,
                obj,
            }));
        }
        inner.trim_history(config.history, config.history_bytes);
        let (queue, rx) = mpsc::channel(4096);
        let (events, _) = broadcast::channel(16_384);
        let objects = Arc::new(Objects {
            inner: RwLock::new(inner),
            queue,
            events,
            stats: WriteStats::default(),
        });
        tokio::spawn(writer(objects.clone(), store, key, config, rx));
        Ok(objects)
    }

    /// Queues a write and waits for it to be committed (or refused).
    pub async fn write(&self, dry_run: bool, f: WriteFn) -> Result<WriteReply, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Job {
                f,
                dry_run,
                reply: tx,
            })
            .await
            .map_err(|_| ApiError::unavailable("the API server is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::unavailable("the API server is shutting down"))?
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.read().rv
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Option<Arc<Stored>> {
        self.read().get(key).cloned()
    }

    /// One page of a list: the objects of `storage` (in `ns` when given) that come after
    /// `after` in (namespace, name) order and pass `keep`, at most `limit` of them. The cost is
    /// that of the page, not of the whole kind: the walk starts at `after` (ADR 0058).
    pub fn list_page(
        &self,
        storage: &str,
        ns: Option<&str>,
        after: Option<&(String, String)>,
        limit: Option<usize>,
        keep: impl Fn(&Stored) -> bool,
    ) -> Page {
        use std::ops::Bound;
        let inner = self.read();
        let mut page = Page {
            rv: inner.rv,
            compacted: inner.compacted,
            items: vec![],
            next: None,
        };
        let Some(m) = inner.objects.get(storage) else {
            return page;
        };
        let start = match (after, ns) {
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(n)) => Bound::Included((n.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let limit = limit.unwrap_or(usize::MAX);
        let mut last: Option<&(String, String)> = None;
        for (k, v) in m.range((start, Bound::Unbounded)) {
            if ns.is_some_and(|n| n != k.0) {
                break;
            }
            if page.items.len() == limit {
                // Something comes after the page: the next one starts after its last object.
                page.next = last.cloned();
                break;
            }
            if keep(v) {
                page.items.push(v.clone());
                last = Some(k);
            }
        }
        page
    }

    /// Number of live objects of all kinds.
    pub fn count(&self) -> usize {
        self.read().objects.values().map(BTreeMap::len).sum()
    }

    /// Starts a watch: subscribes, then (consistently with the subscription) returns either a
    /// snapshot of the current objects (`from` None) or the history after `from`.
    /// `Err(oldest)` when `from` is older than the retained history.
    pub fn subscribe(
        &self,
        storage: &str,
        ns: Option<&str>,
        from: Option<u64>,
    ) -> Result<WatchStart, (u64, u64)> {
        let inner = self.read();
        let rx = self.events.subscribe();
        let start = match from {
            None => {
                let snapshot = inner
                    .objects
                    .get(storage)
                    .map(|m| {
                        m.iter()
                            .filter(|((n, _), _)| ns.is_none_or(|x| x == n))
                            .map(|((n, _), v)| (n.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                WatchStart {
                    rx,
                    rv: inner.rv,
                    snapshot,
                    backlog: vec![],
                }
            }
            Some(n) if n >= inner.rv => WatchStart {
                rx,
                rv: inner.rv,
                snapshot: vec![],
                backlog: vec![],
            },
            Some(n) if n < inner.compacted => return Err((n, inner.compacted)),
            Some(n) => {
                let backlog = inner
                    .history
                    .iter()
                    .filter(|e| e.rv > n && &*e.key.0 == storage)
                    .cloned()
                    .collect();
                WatchStart {
                    rx,
                    rv: inner.rv,
                    snapshot: vec![],
                    backlog,
                }
            }
        };
        Ok(start)
    }
}

/// One page of a list (see [`Objects::list_page`]).
pub struct Page {
    /// The resourceVersion the page was read at.
    pub rv: u64,
    /// The history starts after this resourceVersion: a list continued from an older one can
    /// no longer be completed consistently by a watch.
    pub compacted: u64,
    pub items: Vec<Arc<Stored>>,
    /// The (namespace, name) the next page starts after, when more objects may follow.
    pub next: Option<(String, String)>,
}

/// What a new watcher starts from.
pub struct WatchStart {
    pub rx: broadcast::Receiver<Batch>,
    /// Events with rv <= this are covered by `snapshot`/`backlog`.
    pub rv: u64,
    /// The current objects, with their namespaces.
    pub snapshot: Vec<(String, Arc<Stored>)>,
    pub backlog: Vec<Arc<WatchEvent>>,
}

/// Applies a committed batch in memory, trims the history and wakes the watchers.
fn apply_committed(objects: &Objects, batch: Batch, rv: u64, config: &ObjectsConfig) {
    let mut inner = objects.inner.write().unwrap_or_else(|p| p.into_inner());
    for e in batch.iter() {
        let v = (e.kind != ChangeKind::Deleted).then(|| e.obj.clone());
        inner.set(&e.key, v);
        inner.push_history(e.clone());
    }
    inner.rv = rv;
    inner.trim_history(config.history, config.history_bytes);
    let _ = objects.events.send(batch);
}

/// A batch whose commit failed without the writer learning whether it landed (ADR 0042).
struct Unsettled {
    prev: u64,
    rv: u64,
    batch: Batch,
}

async fn writer(
    objects: Arc<Objects>,
    store: Arc<dyn Store>,
    key: SecretKey,
    config: ObjectsConfig,
    mut rx: mpsc::Receiver<Job>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut store_compacted = objects.read().compacted;
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    // A commit whose outcome is unknown blocks every later write until the database says
    // whether it landed: the next batch would reuse its resourceVersions (ADR 0042).
    let mut unsettled: Option<Unsettled> = None;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < config.max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if let Some(u) = unsettled.take() {
            match crate::store::commit_outcome(&*store, as_i64(u.prev), as_i64(u.rv)).await {
                CommitOutcome::Landed => {
                    tracing::warn!(
                        rv = u.rv,
                        "an earlier commit reported as failed did land; applying it"
                    );
                    apply_committed(&objects, u.batch, u.rv, &config);
                }
                CommitOutcome::NotLanded => {
                    tracing::info!(rv = u.rv, "an earlier failed commit did not land");
                }
                CommitOutcome::Unknown(why) => {
                    tracing::error!(error = %why, "the outcome of an earlier commit is still unknown; writes wait");
                    objects.stats.failures.fetch_add(1, Relaxed);
                    for job in jobs {
                        let _ = job.reply.send(Err(ApiError::unavailable(
                            "the store is unavailable; retry",
                        )));
                    }
                    unsettled = Some(u);
                    continue;
                }
            }
        }
        // Run every write against one transaction; a refused write leaves no trace.
        let (replies, events, texts, rv, prev) = {
            let inner = objects.read();
            let prev = inner.rv;
            let mut txn = Txn::new(&inner);
            let mut replies = Vec::with_capacity(jobs.len());
            for job in jobs {
                let result = (job.f)(&mut txn)
                    .and_then(|r| txn.measure_op(config.max_object_bytes).map(|()| r));
                if result.is_err() || job.dry_run {
                    txn.abort_op();
                } else {
                    txn.commit_op();
                }
                replies.push((job.reply, result));
            }
            (replies, txn.events, txn.texts, txn.rv, prev)
        };
        objects.stats.batches.fetch_add(1, Relaxed);
        objects
            .stats
            .writes
            .fetch_add(replies.len() as u64, Relaxed);
        if !events.is_empty() {
            let rows: Vec<ChangeRow> = events
                .iter()
                .zip(texts)
                .map(|(e, text)| ChangeRow {
                    rv: as_i64(e.rv),
                    resource: e.key.0.to_string(),
                    namespace: e.key.1.clone(),
                    name: e.key.2.clone(),
                    kind: e.kind,
                    value: encode(&e.key.0, text, &key),
                })
                .collect();
            let batch: Batch = Arc::new(events);
            if let Err(err) = store.commit(as_i64(rv), &rows).await {
                // The error may hide a commit that landed (its reply lost): ask the database
                // before answering, so memory and store never disagree (ADR 0042).
                let outcome = crate::store::commit_outcome(&*store, as_i64(prev), as_i64(rv)).await;
                if matches!(outcome, CommitOutcome::Landed) {
                    tracing::warn!(error = %err, rv, "store commit reported an error but landed");
                } else {
                    tracing::error!(error = %err, "store commit failed; the batch is refused");
                    objects.stats.failures.fetch_add(1, Relaxed);
                    if let CommitOutcome::Unknown(why) = outcome {
                        tracing::error!(error = %why, "the commit's outcome is unknown; writes wait until the database answers");
                        unsettled = Some(Unsettled { prev, rv, batch });
                    }
                    for (reply, result) in replies {
                        let _ = reply.send(result.and(Err(ApiError::internal(
                            "the write could not be persisted; retry",
                        ))));
                    }
                    continue;
                }
            }
            apply_committed(&objects, batch, rv, &config);
            let floor = objects.read().compacted;
            if floor > store_compacted + (config.history as u64).max(1000) {
                match store.compact(as_i64(floor)).await {
                    Ok(()) => store_compacted = floor,
                    Err(err) => {
                        tracing::warn!(error = %err, "change-log compaction failed; will retry")
                    }
                }
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(ns: &str, name: &str, labels: Value, owners: &[&str]) -> Value {
        let refs: Vec<Value> = owners.iter().map(|u| json!({"uid": u})).collect();
        json!({"metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"),
            "labels": labels, "ownerReferences": refs}})
    }

    async fn objects(dir: &std::path::Path) -> Arc<Objects> {
        let store = crate::store::SqliteStore::open(&dir.join("m.db"))
            .await
            .expect("store");
        let key = SecretKey::load(None, &dir.join("key")).expect("key");
        Objects::start(Arc::new(store), key, ObjectsConfig::default())
            .await
            .expect("objects")
    }

    async fn put(o: &Objects, ns: &str, name: &str, labels: Value, owners: &[&str]) {
        let v = obj(ns, name, labels, owners);
        let key: Key = (Arc::from("t/things"), ns.to_string(), name.to_string());
        o.write(
            false,
            Box::new(move |txn| {
                txn.put(&key, v);
                Ok(WriteReply::ok(Value::Null))
            }),
        )
        .await
        .expect("write");
    }

    #[test]
    fn selectors_read_the_index_and_parse_only_for_fields() {
        let v = obj("a", "x", json!({"team": "core", "n": "1"}), &["o1"]);
        let s = Stored::new(&v, v.to_string());
        let labels = |q: &str| LabelSelector::parse(q).expect("labels");
        let fields = |q: &str| {
            FieldSelector::parse(q, &[("metadata.name", "/metadata/name")]).expect("fields")
        };
        let none = fields("");
        assert!(s.matches(&labels("team=core"), &none));
        assert!(s.matches(&labels("team in (core,edge),n"), &none));
        assert!(!s.matches(&labels("team=edge"), &none));
        assert!(!s.matches(&labels("!n"), &none));
        assert!(s.matches(&labels(""), &fields("metadata.name=x")));
        assert!(!s.matches(&labels(""), &fields("metadata.name=y")));
        assert_eq!(s.uid(), Some("uid-x"));
        assert_eq!(s.owner_uids().collect::<Vec<_>>(), ["o1"]);
        assert_eq!(s.value(), v);
    }

    #[tokio::test]
    async fn pages_walk_from_the_cursor_within_a_namespace() {
        let dir = tempfile::tempdir().expect("tmp");
        let o = objects(dir.path()).await;
        for (ns, name) in [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("b", "2")] {
            put(&o, ns, name, json!({}), &[]).await;
        }
        let names = |p: &Page| -> Vec<String> {
            p.items
                .iter()
                .map(|s| {
                    s.value()["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        };
        let p = o.list_page("t/things", Some("a"), None, Some(2), |_| true);
        assert_eq!(names(&p), ["1", "2"]);
        assert_eq!(p.next, Some(("a".into(), "2".into())));
        let p = o.list_page("t/things", Some("a"), p.next.as_ref(), Some(2), |_| true);
        assert_eq!(names(&p), ["3"]);
        assert_eq!(p.next, None, "the walk stops at the namespace's end");
        let all = o.list_page("t/things", None, None, None, |_| true);
        assert_eq!(all.items.len(), 5);
        let p = o.list_page(
            "t/things",
            None,
            Some(&("a".into(), "3".into())),
            Some(1),
            |_| true,
        );
        assert_eq!(names(&p), ["1"]);
        assert_eq!(p.next, Some(("b".into(), "1".into())));
    }

    #[tokio::test]
    async fn the_collector_sees_owners_through_the_index_and_batch_layers() {
        let dir = tempfile::tempdir().expect("tmp");
        let o = objects(dir.path()).await;
        put(&o, "a", "owner", json!({}), &[]).await;
        put(&o, "a", "kept", json!({}), &["uid-owner"]).await;
        put(&o, "a", "orphan", json!({}), &["uid-gone"]).await;
        put(&o, "a", "free", json!({}), &[]).await;
        let reply = o
            .write(
                true,
                Box::new(|txn| {
                    let owned: Vec<String> = txn
                        .owned("t/things")
                        .into_iter()
                        .map(|(k, _)| k.2)
                        .collect();
                    assert_eq!(owned, ["kept", "orphan"]);
                    assert!(txn.uid_exists("uid-owner") && !txn.uid_exists("uid-gone"));
                    // A removal earlier in the same transaction is seen.
                    txn.remove(&(Arc::from("t/things"), "a".into(), "owner".into()));
                    assert!(!txn.uid_exists("uid-owner"));
                    let v = obj("a", "late", json!({}), &["uid-free"]);
                    txn.put(&(Arc::from("t/things"), "a".into(), "late".into()), v);
                    let owned: Vec<String> = txn
                        .owned("t/things")
                        .into_iter()
                        .map(|(k, _)| k.2)
                        .collect();
                    assert_eq!(owned, ["kept", "late", "orphan"]);
                    Ok(WriteReply::ok(Value::Null))
                }),
            )
            .await;
        assert!(reply.is_ok());
    }
}
