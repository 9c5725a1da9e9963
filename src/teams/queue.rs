//! How busy a workspace is, as the platform sees it (ADR 0051): the calls it has in flight to
//! the agent right now (exact), plus whatever the agent's last heartbeat reported beyond those
//! (work that did not come through the platform). A workspace is busy when that load reaches
//! its `maxConcurrentTasks` (default 1), or — so that nobody overtakes the queue — while calls
//! are queued for it.
//!
//! Pure bookkeeping under one lock; the service around it (`super::service`) stores the queue
//! and delivers it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::resources::Workspace;

/// The concurrency a workspace accepts: `spec.maxConcurrentTasks`, at least 1.
pub fn max_concurrent(ws: &Workspace) -> u32 {
    ws.spec
        .max_concurrent_tasks
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Load {
    /// Calls the platform is delivering to the agent now.
    in_flight: u32,
    /// Tasks the last heartbeat reported beyond those in flight then.
    extra: u32,
    /// Calls wait in the queue.
    queued: bool,
}

impl Load {
    fn total(&self) -> u32 {
        self.in_flight.saturating_add(self.extra)
    }
}

/// The load of every workspace, by uid.
#[derive(Debug, Default)]
pub struct Loads {
    map: Mutex<HashMap<String, Load>>,
}

impl Loads {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Load>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one slot when the workspace has room; with `behind_queue`, a workspace with
    /// queued calls has none (a new call waits its turn).
    pub fn try_acquire(&self, uid: &str, max: u32, behind_queue: bool) -> bool {
        let mut map = self.lock();
        let load = map.entry(uid.to_string()).or_default();
        if load.total() >= max.max(1) || (behind_queue && load.queued) {
            return false;
        }
        load.in_flight += 1;
        true
    }

    /// Gives a slot back.
    pub fn release(&self, uid: &str) {
        let mut map = self.lock();
        if let Some(load) = map.get_mut(uid) {
            load.in_flight = load.in_flight.saturating_sub(1);
        }
    }

    /// A heartbeat reported `active_tasks`: what exceeds the calls in flight is the agent's
    /// own work.
    pub fn heartbeat(&self, uid: &str, active_tasks: i64) {
        let mut map = self.lock();
        let load = map.entry(uid.to_string()).or_default();
        let reported = u32::try_from(active_tasks.max(0)).unwrap_or(u32::MAX);
        load.extra = reported.saturating_sub(load.in_flight);
    }

    pub fn set_queued(&self, uid: &str, queued: bool) {
        self.lock().entry(uid.to_string()).or_default().queued = queued;
    }

    pub fn is_queued(&self, uid: &str) -> bool {
        self.lock().get(uid).is_some_and(|l| l.queued)
    }

    /// Calls in flight to `uid`.
    pub fn in_flight(&self, uid: &str) -> u32 {
        self.lock().get(uid).map_or(0, |l| l.in_flight)
    }

    /// Forgets a deleted workspace.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

/// One drainer per workspace: `start` says whether the caller should start one; a drainer that
/// finds nothing more to do asks `finish`, which says whether it was woken meanwhile (then it
/// goes round again), so a wake-up between its last look and its exit is never lost.
#[derive(Debug, Default)]
pub struct Drainers {
    /// uid → woken again while running.
    running: Mutex<HashMap<String, bool>>,
}

impl Drainers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, bool>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the drainer of `uid`; true when none runs and the caller must start one.
    pub fn start(&self, uid: &str) -> bool {
        let mut m = self.lock();
        match m.get_mut(uid) {
            Some(woken) => {
                *woken = true;
                false
            }
            None => {
                m.insert(uid.to_string(), false);
                true
            }
        }
    }

    /// The drainer is out of work: true when it must go round again.
    pub fn finish(&self, uid: &str) -> bool {
        let mut m = self.lock();
        match m.get_mut(uid) {
            Some(woken) if *woken => {
                *woken = false;
                true
            }
            _ => {
                m.remove(uid);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::WorkspaceSpec;

    #[test]
    fn the_default_concurrency_is_one() {
        let mut ws = Workspace::new("w", WorkspaceSpec::default());
        assert_eq!(max_concurrent(&ws), 1);
        ws.spec.max_concurrent_tasks = Some(0);
        assert_eq!(max_concurrent(&ws), 1);
        ws.spec.max_concurrent_tasks = Some(-3);
        assert_eq!(max_concurrent(&ws), 1);
        ws.spec.max_concurrent_tasks = Some(4);
        assert_eq!(max_concurrent(&ws), 4);
    }

    #[test]
    fn in_flight_calls_and_reported_work_add_up() {
        let l = Loads::default();
        assert!(l.try_acquire("w", 1, true));
        assert!(!l.try_acquire("w", 1, true), "one call in flight fills it");
        // The agent reports the task the platform has in flight: nothing extra.
        l.heartbeat("w", 1);
        l.release("w");
        assert!(
            l.try_acquire("w", 1, true),
            "free again at once, before any heartbeat"
        );
        l.release("w");
        // Work the platform did not send counts until a heartbeat says it is done.
        l.heartbeat("w", 2);
        assert!(!l.try_acquire("w", 2, true));
        l.heartbeat("w", 1);
        assert!(l.try_acquire("w", 2, true));
        assert!(!l.try_acquire("w", 2, true));
        assert_eq!(l.in_flight("w"), 1);
        l.release("w");
        l.release("w");
        l.release("w");
        assert_eq!(l.in_flight("w"), 0, "never below zero");
        l.heartbeat("w", -5);
        assert!(l.try_acquire("w", 1, true));
    }

    #[test]
    fn queued_calls_are_not_overtaken() {
        let l = Loads::default();
        l.set_queued("w", true);
        assert!(
            !l.try_acquire("w", 3, true),
            "a new call waits behind the queue"
        );
        assert!(
            l.try_acquire("w", 3, false),
            "the drainer takes the queue's turn"
        );
        assert!(l.is_queued("w"));
        l.set_queued("w", false);
        assert!(l.try_acquire("w", 3, true));
        l.forget("w");
        assert!(!l.is_queued("w"));
        assert_eq!(l.in_flight("w"), 0);
    }

    #[test]
    fn a_wake_up_while_draining_is_never_lost() {
        let d = Drainers::default();
        assert!(d.start("w"), "the first wake-up starts a drainer");
        assert!(!d.start("w"), "a running drainer is only woken");
        assert!(d.finish("w"), "woken meanwhile: once more");
        assert!(!d.finish("w"), "nothing new: it stops");
        assert!(d.start("w"), "and the next wake-up starts one again");
        assert!(d.start("v"));
    }
}
