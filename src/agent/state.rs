//! What the A2A server and the heartbeats share: request counters since the last delivered
//! heartbeat, the in-flight tasks, and the activity log (the messages received, and what
//! became of the initial prompt; ADR 0048).

use std::collections::{BTreeMap, VecDeque};
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

/// Most messages the activity log keeps (the oldest go first).
pub(super) const MAX_ACTIVITY: usize = 100;
/// Longest text kept per message in the activity log.
pub(super) const MAX_ACTIVITY_TEXT: usize = 4096;

/// What became of the initial prompt in this process.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(super) struct InitialPrompt {
    /// config.yaml has one.
    pub(super) configured: bool,
    /// The marker of an earlier send was there at start: not sent again.
    pub(super) already_done: bool,
    /// Sent (and answered) by this process.
    pub(super) sent: bool,
    /// Where the marker is (written after the send).
    pub(super) marker: Option<String>,
}

#[derive(Debug)]
struct Stats {
    window: Window,
    next_task: u64,
    /// In-flight `message/send` calls by start order, with their text.
    tasks: BTreeMap<u64, String>,
    /// The last messages received, oldest first.
    activity: VecDeque<serde_json::Value>,
    /// When the last task ended (or the agent started): the idle clock.
    last_work: Instant,
    initial: InitialPrompt,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            window: Window::default(),
            next_task: 0,
            tasks: BTreeMap::new(),
            activity: VecDeque::new(),
            last_work: Instant::now(),
            initial: InitialPrompt::default(),
        }
    }
}

pub(super) struct AgentState {
    started: Instant,
    pub(super) card: Value,
    stats: Mutex<Stats>,
    /// Where installed plugins live (`/configs/plugins`).
    pub(super) plugins_dir: PathBuf,
    /// The platform, for `ask` and activity reports (ADR 0050); `None` in unit tests.
    pub(super) team: Option<std::sync::Arc<super::team::Team>>,
    /// The platform, for `delegate` (ADR 0051).
    pub(super) delegator: Option<super::delegate::Delegator>,
}

/// Removes an in-flight task when dropped.
pub(super) struct TaskGuard<'a> {
    state: &'a AgentState,
    id: u64,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        let mut stats = self.state.stats();
        stats.tasks.remove(&self.id);
        stats.last_work = Instant::now();
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
            delegator: None,
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

    /// Records a received message in the activity log.
    pub(super) fn record_message(&self, message_id: Option<&str>, text: &str) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut stats = self.stats();
        if stats.activity.len() == MAX_ACTIVITY {
            stats.activity.pop_front();
        }
        stats.activity.push_back(json!({
            "message_id": message_id,
            "text": truncate_text(text, MAX_ACTIVITY_TEXT),
            "at": at,
        }));
    }

    /// How long the agent has had no work: zero while a task runs.
    pub(super) fn idle_for(&self) -> std::time::Duration {
        let stats = self.stats();
        if stats.tasks.is_empty() {
            stats.last_work.elapsed()
        } else {
            std::time::Duration::ZERO
        }
    }

    pub(super) fn update_initial(&self, f: impl FnOnce(&mut InitialPrompt)) {
        f(&mut self.stats().initial);
    }

    /// `GET /activity`: the messages received and what became of the initial prompt.
    pub(super) fn activity(&self) -> Value {
        let stats = self.stats();
        json!({
            "messages": stats.activity,
            "initial_prompt": stats.initial,
            "active_tasks": stats.tasks.len(),
        })
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
