//! How fires' outcomes reach `status.schedules` (ADR 0053): off the fire path.
//!
//! A fire's claim (`lastRunAt`, `runCount`, `nextRunAt`) is written before its message is
//! sent; its outcome (`lastStatus`, `lastError`) only once the agent answered. Written at once,
//! the outcome writes of a burst (1,000 schedules due the same minute) compete with the claims
//! and sends still to come and delay them. So outcomes wait here, coalesced per workspace,
//! until no claim or outcome arrived for [`QUIET`] (or at most [`MAX_DELAY`]), and are then
//! written with one status write per workspace. The live event (`CRON_EXECUTED` or
//! `CRON_SKIPPED`) and the activity row are not delayed: only the status fields are.
//!
//! An outcome belongs to the claim it was sent for: it is written only while the schedule's
//! `lastRunAt` is still that claim's (a later fire's claim makes it stale). A kill before the
//! write loses the outcome fields of that fire, never the claim: the fire is not repeated.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;

use super::{ScheduleError, fresh, statuses, write};
use crate::resources::{ScheduleStatus, Workspace};

/// Outcomes are written once nothing new arrived for this long.
pub const QUIET: Duration = Duration::from_millis(200);
/// ... or at the latest this long after the oldest waiting one arrived.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Conditional writes tried per workspace before an outcome is given up.
const TRIES: usize = 5;

/// One fire's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub schedule: String,
    /// `lastRunAt` as the fire's claim wrote it.
    pub claimed_at: Option<String>,
    pub status: String,
    pub error: Option<String>,
}

/// The outcomes of one workspace waiting to be written.
struct Waiting {
    /// The workspace as the newest claim wrote it: the first write is tried on its version.
    ws: Workspace,
    outcomes: Vec<Outcome>,
}

/// The outcomes waiting to be written, and when the fire path was last busy.
#[derive(Default)]
pub struct Outcomes {
    state: Mutex<State>,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    waiting: HashMap<String, Waiting>,
    /// When a claim or outcome last arrived.
    last_busy: Option<Instant>,
    /// When the oldest waiting outcome arrived.
    oldest: Option<Instant>,
}

impl Outcomes {
    /// A claim was written: outcomes keep waiting while claims go on.
    pub fn busy(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.last_busy = Some(Instant::now());
        }
    }

    /// Queues `outcome` of a fire of `uid`, claimed in `ws`.
    pub fn push(&self, uid: &str, ws: &Workspace, outcome: Outcome) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        s.last_busy = Some(now);
        s.oldest.get_or_insert(now);
        let entry = s.waiting.entry(uid.to_string()).or_insert_with(|| Waiting {
            ws: ws.clone(),
            outcomes: vec![],
        });
        if newer(ws, &entry.ws) {
            entry.ws = ws.clone();
        }
        entry.outcomes.push(outcome);
        drop(s);
        self.notify.notify_one();
    }

    /// How long to wait before the waiting outcomes are due (`None`: nothing waits).
    fn due_in(&self, now: Instant) -> Option<Duration> {
        let s = self.state.lock().ok()?;
        let oldest = s.oldest?;
        let quiet = s.last_busy.map_or(Duration::ZERO, |b| {
            QUIET.saturating_sub(now.saturating_duration_since(b))
        });
        let latest = MAX_DELAY.saturating_sub(now.saturating_duration_since(oldest));
        Some(quiet.min(latest))
    }

    /// Takes every waiting outcome.
    fn take(&self) -> Vec<(String, Waiting)> {
        let Ok(mut s) = self.state.lock() else {
            return vec![];
        };
        s.oldest = None;
        s.waiting.drain().collect()
    }

    /// Writes outcomes as they fall due, until `stop`; then writes what still waits.
    pub async fn run(&self, client: Client, stop: crate::shutdown::Shutdown) {
        let stop = stop.wait();
        tokio::pin!(stop);
        loop {
            match self.due_in(Instant::now()) {
                None => {
                    tokio::select! {
                        _ = self.notify.notified() => continue,
                        _ = &mut stop => break,
                    }
                }
                Some(d) if !d.is_zero() => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => continue,
                        _ = &mut stop => break,
                    }
                }
                Some(_) => self.flush(&client).await,
            }
        }
        self.flush(&client).await;
    }

    /// Writes every waiting outcome, a few workspaces at once.
    async fn flush(&self, client: &Client) {
        use futures::StreamExt;
        futures::stream::iter(self.take())
            .for_each_concurrent(4, |(uid, w)| async move {
                if let Err(e) = record(client, w.ws, &w.outcomes).await {
                    tracing::warn!(error = %e, workspace = %uid, "could not record the outcome of a fire");
                }
            })
            .await;
    }
}

/// Whether `a` is a later version of the record than `b`.
fn newer(a: &Workspace, b: &Workspace) -> bool {
    let rv = |w: &Workspace| {
        w.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    rv(a) > rv(b)
}

/// `list` with `outcomes` applied: each to its schedule while that schedule's `lastRunAt` is
/// still the one the fire claimed. `None` when nothing changes.
pub fn apply(list: &[ScheduleStatus], outcomes: &[Outcome]) -> Option<Vec<ScheduleStatus>> {
    let mut next = list.to_vec();
    for o in outcomes {
        if let Some(entry) = next
            .iter_mut()
            .find(|s| s.name == o.schedule && s.last_run_at == o.claimed_at)
        {
            entry.last_status = Some(o.status.clone());
            entry.last_error = o.error.clone();
        }
    }
    (next != list).then_some(next)
}

/// Writes `outcomes` into the workspace's status: first on `ws`'s version, then on fresh reads.
async fn record(client: &Client, ws: Workspace, outcomes: &[Outcome]) -> Result<(), ScheduleError> {
    let mut current = Some(ws);
    for _ in 0..TRIES {
        let Some(ws) = current.take() else {
            return Ok(()); // the workspace is gone
        };
        let Some(list) = apply(statuses(&ws), outcomes) else {
            return Ok(());
        };
        match write(client, &ws, &list).await {
            Ok(_) => return Ok(()),
            Err(ScheduleError::Conflict) => current = fresh(client, &ws).await?,
            Err(e) => return Err(e),
        }
    }
    Err(ScheduleError::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, last_run: &str) -> ScheduleStatus {
        ScheduleStatus {
            name: name.into(),
            last_run_at: Some(last_run.into()),
            run_count: 1,
            ..Default::default()
        }
    }

    fn outcome(name: &str, claimed: &str, status: &str) -> Outcome {
        Outcome {
            schedule: name.into(),
            claimed_at: Some(claimed.into()),
            status: status.into(),
            error: (status != "ok").then(|| format!("{name} failed")),
        }
    }

    #[test]
    fn outcomes_of_one_workspace_are_written_together() {
        let list = [status("a", "t1"), status("b", "t1")];
        let next = apply(
            &list,
            &[outcome("a", "t1", "ok"), outcome("b", "t1", "error")],
        )
        .expect("a change");
        assert_eq!(next[0].last_status.as_deref(), Some("ok"));
        assert_eq!(next[0].last_error, None);
        assert_eq!(next[1].last_status.as_deref(), Some("error"));
        assert_eq!(next[1].last_error.as_deref(), Some("b failed"));
    }

    #[test]
    fn a_stale_or_removed_schedules_outcome_changes_nothing() {
        // `a` was claimed again since (t2), `gone` was removed from the spec.
        let list = [status("a", "t2")];
        assert_eq!(
            apply(
                &list,
                &[outcome("a", "t1", "ok"), outcome("gone", "t1", "ok")]
            ),
            None
        );
        // The same outcome twice: the second write would change nothing.
        let once = apply(&list, &[outcome("a", "t2", "ok")]).expect("a change");
        assert_eq!(apply(&once, &[outcome("a", "t2", "ok")]), None);
    }

    #[test]
    fn outcomes_wait_for_a_quiet_moment_but_not_forever() {
        let o = Outcomes::default();
        let t0 = Instant::now();
        assert_eq!(o.due_in(t0), None);
        let ws = Workspace::new("w", Default::default());
        o.push("u", &ws, outcome("a", "t1", "ok"));
        // Just pushed: due after the quiet time.
        let d = o.due_in(Instant::now()).expect("waiting");
        assert!(d > Duration::ZERO && d <= QUIET);
        // Claims going on keep it waiting, up to the latest time.
        let later = Instant::now() + MAX_DELAY;
        o.busy();
        assert_eq!(o.due_in(later), Some(Duration::ZERO));
        assert_eq!(o.take().len(), 1);
        assert_eq!(o.due_in(Instant::now()), None);
    }
}
