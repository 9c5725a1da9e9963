//! A change of one kind as a process-wide cache saw it (ADR 0025): the one shape in which the
//! shared Workspace cache hands its changes to the controllers and the Teams service, so that a
//! process holds and decodes each object once. Objects are the cache's own `Arc`s.

use std::sync::Arc;

/// One change.
#[derive(Debug)]
pub enum Change<K> {
    /// Created or changed.
    Applied(Arc<K>),
    /// Deleted; the object as it was last seen.
    Deleted(Arc<K>),
    /// A (re)list ended: exactly these objects exist now (the first list, and each relist
    /// after the watch was lost, when deletions may have been missed).
    Relisted(Vec<Arc<K>>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(o.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
            Change::Relisted(v) => Change::Relisted(v.clone()),
        }
    }
}

/// A receiver of changes.
pub type Feed<K> = tokio::sync::mpsc::UnboundedReceiver<Change<K>>;
