//! The channel controller (ADR 0054): chat channels as desired state. For every enabled channel
//! of a running workspace it keeps one adapter task (keyed by workspace uid and channel index),
//! restarts it when the channel's spec changes, and stops it when the channel is disabled or
//! the workspace is paused, failed or deleted. Each channel's state, counters and resume
//! cursor land in `status.channels`, summed up by the `ChannelsReady` condition, written
//! coalesced by `status`.
//!
//! A pass is a thin driver over named steps: `plan` (pure: what each channel should be doing),
//! `converge` (start, restart and stop tasks), and the periodic `flush` of the board.

pub mod adapter;
pub mod status;
pub mod telegram;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::reflector::Store;

use crate::controllers::kit::{Backoff, Failure, Reconciler, Reporter};
use crate::feed::Change;
use crate::resources::{ChannelSpec, Workspace, WorkspacePhase};
use crate::shutdown::Shutdown;
use crate::teams::{PlatformMessage, Teams};
use crate::telemetry::Metrics;
use adapter::Deliver;
use status::{Board, Slot, state};

/// How often changed statuses are written (the coalescing period).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often every workspace is looked at again without a watch event.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How long an inbound message waits for a busy workspace.
const BUSY_WAIT: Duration = Duration::from_secs(30);
/// How long the agent may take to answer a chat message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a pass of the channel controller failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} channel status write(s) failed; retrying")]
    StatusWrite(usize),
}

impl Failure for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::StatusWrite(_) => "StatusWrite",
        }
    }
}

/// What one channel should be doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    /// An adapter task runs; a new fingerprint (changed spec) restarts it.
    Run { fingerprint: u64 },
    /// No task; the status says why.
    Idle {
        state: &'static str,
        reason: &'static str,
        message: String,
    },
}

fn idle(state: &'static str, reason: &'static str, message: impl Into<String>) -> Desired {
    Desired::Idle {
        state,
        reason,
        message: message.into(),
    }
}

/// What channel `ch` of `ws` should be doing.
pub fn plan(ws: &Workspace, ch: &ChannelSpec) -> Desired {
    let phase = ws.status.as_ref().and_then(|s| s.phase);
    if !ch.enabled {
        return idle(
            state::DISABLED,
            "ChannelDisabled",
            "the channel is disabled",
        );
    }
    if !adapter::SUPPORTED.contains(&ch.type_.as_str()) {
        return idle(
            state::FAILED,
            "UnsupportedChannelType",
            adapter::unsupported(&ch.type_),
        );
    }
    if ws.spec.paused || phase == Some(WorkspacePhase::Paused) {
        return idle(
            state::DISABLED,
            "WorkspacePaused",
            "the workspace is paused",
        );
    }
    if phase == Some(WorkspacePhase::Failed) {
        return idle(
            state::DISABLED,
            "WorkspaceFailed",
            "the workspace failed; the channel resumes once it runs",
        );
    }
    if !matches!(
        phase,
        Some(WorkspacePhase::Online) | Some(WorkspacePhase::Degraded)
    ) {
        return idle(
            state::CONNECTING,
            "WaitingForWorkspace",
            "the workspace is not running yet",
        );
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(ch).unwrap_or_default().hash(&mut h);
    Desired::Run {
        fingerprint: h.finish(),
    }
}

/// A running adapter task; dropping it stops the task.
struct Running {
    fingerprint: u64,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The controller's state for one leadership term.
struct Supervisor {
    client: Client,
    board: Arc<Board>,
    teams: Arc<Teams>,
    running: HashMap<Slot, Running>,
}

impl Supervisor {
    /// Brings the tasks and the board in line with `workspaces`, the whole set (a relist or
    /// the periodic resync).
    fn converge(&mut self, workspaces: &[Arc<Workspace>]) {
        let mut live: HashSet<String> = HashSet::new();
        let mut wanted: HashSet<Slot> = HashSet::new();
        for ws in workspaces {
            if let Some(uid) = self.visit(ws, &mut wanted) {
                live.insert(uid);
            }
        }
        self.running.retain(|slot, _| wanted.contains(slot));
        for uid in self.board.tracked() {
            if !live.contains(&uid) {
                self.board.forget(&uid);
            }
        }
    }

    /// Brings one workspace's tasks and board entry in line with `ws`, as it was just
    /// changed: the cost of a watch event does not grow with the team.
    fn converge_one(&mut self, ws: &Workspace) {
        let Some(uid) = ws.metadata.uid.clone() else {
            return;
        };
        let mut wanted: HashSet<Slot> = HashSet::new();
        let live = self.visit(ws, &mut wanted).is_some();
        self.running
            .retain(|slot, _| slot.uid != uid || wanted.contains(slot));
        if !live {
            self.board.forget(&uid);
        }
    }

    /// Forgets a deleted workspace: its tasks stop, its board entry goes.
    fn forget(&mut self, ws: &Workspace) {
        let Some(uid) = ws.metadata.uid.as_deref() else {
            return;
        };
        self.running.retain(|slot, _| slot.uid != uid);
        self.board.forget(uid);
    }

    /// Plans and starts `ws`'s channels, adding the slots that should run to `wanted`.
    /// Returns the uid when the workspace has channels to look after (in spec or status).
    fn visit(&mut self, ws: &Workspace, wanted: &mut HashSet<Slot>) -> Option<String> {
        let uid = ws.metadata.uid.clone()?;
        if ws.metadata.deletion_timestamp.is_some()
            || (ws.spec.channels.is_empty()
                && ws.status.as_ref().is_none_or(|s| s.channels.is_empty()))
        {
            return None;
        }
        self.board.track(ws, &uid);
        for (index, ch) in ws.spec.channels.iter().enumerate() {
            let slot = Slot {
                uid: uid.clone(),
                index,
            };
            match plan(ws, ch) {
                Desired::Run { fingerprint } => {
                    wanted.insert(slot.clone());
                    self.ensure(ws, ch, slot, fingerprint);
                }
                Desired::Idle {
                    state,
                    reason,
                    message,
                } => self.board.set_state(&slot, state, reason, &message),
            }
        }
        self.board.compare(ws, &uid);
        Some(uid)
    }

    /// Starts the task of `slot` unless one with `fingerprint` runs.
    fn ensure(&mut self, ws: &Workspace, ch: &ChannelSpec, slot: Slot, fingerprint: u64) {
        if self
            .running
            .get(&slot)
            .is_some_and(|r| r.fingerprint == fingerprint && !r.handle.is_finished())
        {
            return;
        }
        let task = adapter::Task {
            client: self.client.clone(),
            namespace: ws.metadata.namespace.clone().unwrap_or_default(),
            spec: ch.clone(),
            slot: slot.clone(),
            board: self.board.clone(),
            deliver: deliver(self.teams.clone(), slot.uid.clone(), &ch.type_),
        };
        tracing::info!(workspace = %ws.metadata.name.as_deref().unwrap_or(""), channel = slot.index, kind = %ch.type_, "starting channel");
        self.running.insert(
            slot,
            Running {
                fingerprint,
                handle: tokio::spawn(adapter::run(task)),
            },
        );
    }
}

/// Inbound messages of workspace `uid`'s channel of type `kind`, sent the platform's way.
fn deliver(teams: Arc<Teams>, uid: String, kind: &str) -> Deliver {
    let origin = format!("channel:{kind}");
    Arc::new(move |text| {
        let teams = teams.clone();
        let uid = uid.clone();
        let msg = PlatformMessage {
            text,
            origin: origin.clone(),
            busy_wait: BUSY_WAIT,
            timeout: ANSWER_TIMEOUT,
        };
        Box::pin(async move {
            teams
                .send_platform_message(&uid, &msg)
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// Writes every changed workspace's channel status.
async fn flush(client: &Client, reporter: &Reporter, board: &Board) -> Result<(), Error> {
    let mut failed = 0;
    for p in board.take_dirty() {
        if !status::write(client, reporter, &p).await {
            failed += 1;
            board.redo(p);
        }
    }
    if failed > 0 {
        return Err(Error::StatusWrite(failed));
    }
    Ok(())
}

/// Runs the channel controller until `stop` fires (one leadership term).
/// The channel controller for one leadership term, following the shared Workspace cache
/// (`feed` and the cache `reader`, ADR 0025).
pub async fn run(
    mut feed: crate::feed::Feed<Workspace>,
    reader: Store<Workspace>,
    client: Client,
    teams: Arc<Teams>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    let reconciler = Reconciler::new(
        "channel",
        metrics,
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
    );
    let reporter = Reporter::new(client.clone(), "molecule-channel", "Channel", &["channels"]);
    let mut sup = Supervisor {
        client: client.clone(),
        board: Arc::new(Board::default()),
        teams,
        running: HashMap::new(),
    };
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    let stop = stop.wait();
    tokio::pin!(stop);
    let mut ready = false;
    loop {
        tokio::select! {
            change = feed.recv() => match change {
                Some(change) => {
                    // A burst at once: a relist in it makes one pass over the cache (which
                    // holds what arrived meanwhile); otherwise each change touches its own
                    // workspace only.
                    let mut burst = vec![change];
                    while let Ok(more) = feed.try_recv() {
                        burst.push(more);
                    }
                    let relisted = burst
                        .iter()
                        .any(|c| matches!(c, Change::Relisted(_)));
                    ready |= relisted;
                    if relisted {
                        pass(&reconciler, &mut sup, &reader).await;
                    } else if ready {
                        changed(&reconciler, &mut sup, &burst).await;
                    }
                }
                None => break,
            },
            _ = resync.tick(), if ready => pass(&reconciler, &mut sup, &reader).await,
            _ = flush_tick.tick() => {
                let r = reconciler.run_keyed("status", flush(&client, &reporter, &sup.board)).await;
                if let Err(e) = r {
                    reconciler.retry_keyed("status", &e);
                }
            }
            _ = &mut stop => break,
        }
    }
    // The term ends: stop every adapter and write what is left.
    sup.running.clear();
    let _ = flush(&client, &reporter, &sup.board).await;
}

/// One converge pass over the cached workspaces.
async fn pass(reconciler: &Reconciler, sup: &mut Supervisor, reader: &Store<Workspace>) {
    let workspaces = reader.state();
    let _ = reconciler
        .run_keyed("channels", async {
            sup.converge(&workspaces);
            Ok::<(), Error>(())
        })
        .await;
}

/// The changes of a burst, one workspace at a time, in the order they arrived.
async fn changed(reconciler: &Reconciler, sup: &mut Supervisor, burst: &[Change<Workspace>]) {
    let _ = reconciler
        .run_keyed("channels", async {
            for change in burst {
                match change {
                    Change::Applied(ws) => sup.converge_one(ws),
                    Change::Deleted(ws) => sup.forget(ws),
                    Change::Relisted(_) => {}
                }
            }
            Ok::<(), Error>(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::WorkspaceStatus;

    fn ws(phase: Option<WorkspacePhase>, paused: bool) -> Workspace {
        let mut w = Workspace::new("w", Default::default());
        w.spec.paused = paused;
        w.status = Some(WorkspaceStatus {
            phase,
            ..Default::default()
        });
        w
    }

    fn ch(kind: &str, enabled: bool) -> ChannelSpec {
        ChannelSpec {
            type_: kind.into(),
            enabled,
            ..Default::default()
        }
    }

    fn reason(d: Desired) -> &'static str {
        match d {
            Desired::Idle { reason, .. } => reason,
            Desired::Run { .. } => "Run",
        }
    }

    #[test]
    fn only_enabled_supported_channels_of_running_workspaces_run() {
        let online = ws(Some(WorkspacePhase::Online), false);
        assert_eq!(reason(plan(&online, &ch("telegram", true))), "Run");
        assert_eq!(
            reason(plan(
                &ws(Some(WorkspacePhase::Degraded), false),
                &ch("telegram", true)
            )),
            "Run"
        );
        assert_eq!(
            reason(plan(&online, &ch("telegram", false))),
            "ChannelDisabled"
        );
        assert_eq!(
            reason(plan(&online, &ch("slack", true))),
            "UnsupportedChannelType"
        );
        assert_eq!(
            reason(plan(
                &ws(Some(WorkspacePhase::Online), true),
                &ch("telegram", true)
            )),
            "WorkspacePaused"
        );
        assert_eq!(
            reason(plan(
                &ws(Some(WorkspacePhase::Failed), false),
                &ch("telegram", true)
            )),
            "WorkspaceFailed"
        );
        assert_eq!(
            reason(plan(
                &ws(Some(WorkspacePhase::Provisioning), false),
                &ch("telegram", true)
            )),
            "WaitingForWorkspace"
        );
    }

    #[test]
    fn a_spec_change_changes_the_fingerprint_and_a_phase_change_does_not() {
        let a = ch("telegram", true);
        let mut b = a.clone();
        b.allowed_users = vec!["42".into()];
        let fp = |w: &Workspace, c: &ChannelSpec| match plan(w, c) {
            Desired::Run { fingerprint } => fingerprint,
            d => panic!("{d:?}"),
        };
        let online = ws(Some(WorkspacePhase::Online), false);
        let degraded = ws(Some(WorkspacePhase::Degraded), false);
        assert_ne!(fp(&online, &a), fp(&online, &b));
        assert_eq!(fp(&online, &a), fp(&degraded, &a));
    }
}
