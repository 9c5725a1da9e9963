//! What the A2A server and the heartbeats share: request counters since the last delivered
//! heartbeat and the in-flight tasks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{Value, json};

use super::truncate_text;

/// Longest text kept for `current_task` / `sample_error` in heartbeats.
pub(super) const MAX_REPORTED_TEXT: usize = 256;

/// A2A request counters since the last delivered heartbeat.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Window {
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Stats {
    window: Window,
    next_task: u64,
    /// In-flight `message/send` calls by start order, with their text.
    tasks: BTreeMap<u64, String>,
}

pub(super) struct AgentState {
    started: Instant,
    pub(super) card: Value,
    stats: Mutex<Stats>,
    /// Where installed plugins live (`/configs/plugins`).
    pub(super) plugins_dir: PathBuf,
    /// The platform, for `delegate` (ADR 0051).
    pub(super) team: Option<super::team::Team>,
}

/// Removes an in-flight task when dropped.
pub(super) struct TaskGuard<'a> {
    state: &'a AgentState,
    id: u64,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.state.stats().tasks.remove(&self.id);
    }
}

impl AgentState {
    pub(super) fn new(card: Value) -> Self {
        Self {
            started: Instant::now(),
            card,
            stats: Mutex::new(Stats::default()),
            plugins_dir: PathBuf::from("/configs/plugins"),
            team: None,
        }
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn record_request(&self) {
        self.stats().window.requests += 1;
    }

    pub(super) fn record_error(&self, error: String) {
        let mut stats = self.stats();
        stats.window.errors += 1;
        stats.window.last_error = Some(truncate_text(&error, MAX_REPORTED_TEXT));
    }

    pub(super) fn start_task(&self, text: &str) -> TaskGuard<'_> {
        let mut stats = self.stats();
        let id = stats.next_task;
        stats.next_task += 1;
        stats
            .tasks
            .insert(id, truncate_text(text, MAX_REPORTED_TEXT));
        TaskGuard { state: self, id }
    }

    /// Takes the counters of the current interval, starting a new one.
    pub(super) fn take_window(&self) -> Window {
        std::mem::take(&mut self.stats().window)
    }

    /// Puts back an interval whose heartbeat was not delivered.
    pub(super) fn restore_window(&self, old: Window) {
        let mut stats = self.stats();
        stats.window.requests += old.requests;
        stats.window.errors += old.errors;
        if stats.window.last_error.is_none() {
            stats.window.last_error = old.last_error;
        }
    }

    pub(super) fn heartbeat_body(&self, workspace_id: &str, window: &Window) -> Value {
        let stats = self.stats();
        let error_rate = if window.requests == 0 {
            0.0
        } else {
            window.errors as f64 / window.requests as f64
        };
        json!({
            "workspace_id": workspace_id,
            "error_rate": error_rate,
            "sample_error": window.last_error,
            "active_tasks": stats.tasks.len(),
            "current_task": stats.tasks.values().next_back(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "runtime_state": "ok",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_tasks_are_reported() {
        let state = AgentState::new(json!({}));
        let first = state.start_task("first");
        let second = state.start_task(&"y".repeat(1000));
        let hb = state.heartbeat_body("w", &Window::default());
        assert_eq!(hb["active_tasks"], 2);
        assert_eq!(
            hb["current_task"].as_str().unwrap().chars().count(),
            MAX_REPORTED_TEXT + 1
        );
        drop(second);
        let hb = state.heartbeat_body("w", &Window::default());
        assert_eq!(
            (hb["active_tasks"].clone(), hb["current_task"].clone()),
            (json!(1), json!("first"))
        );
        drop(first);
        let hb = state.heartbeat_body("w", &Window::default());
        assert_eq!(
            (hb["active_tasks"].clone(), hb["current_task"].clone()),
            (json!(0), Value::Null)
        );
    }
}
