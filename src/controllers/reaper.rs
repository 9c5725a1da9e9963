//! The orphan reaper (ADR 0007, 0035): any managed container or volume whose uid belongs to no live
//! Workspace is removed, and any control-plane instance of this org and installation that no
//! live Workspace accounts for is terminated. Triggered by record deletions and by Docker events
//! about objects of no known Workspace (fast path), and by a periodic resync (safety net); it
//! also heals a wiped store. Only objects carrying the managed label (or listed for this
//! installation) are ever touched, and a removal is decided against the API itself: the watched
//! set of live uids ([`LiveUids`]) only filters triggers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use super::kit::{Backoff, Reconciler};
use crate::backends::{Managed, ManagedKind, WorkspaceBackend};
use crate::resources::Workspace;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Errors of one reaper pass.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] crate::backends::BackendError),
}

impl super::kit::Failure for ReaperError {
    fn category(&self) -> &'static str {
        match self {
            ReaperError::Kube(_) => "ApiError",
            ReaperError::Backend(e) => e.category(),
        }
    }
}

/// What a live record says about its instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// `status.instanceId`.
    pub instance_id: Option<String>,
    /// `status.tokenHash`: rotated and written before every provision call.
    pub token_hash: Option<String>,
}

/// The uids of the Workspaces that exist, kept current from the shared Workspace cache. A Docker event
/// about an object of a live Workspace cannot make an orphan (only the record's deletion can,
/// and that wakes the reaper itself), so such events do not trigger a pass: a burst of
/// provisions no longer makes the reaper list every container again and again.
#[derive(Clone, Debug, Default)]
pub struct LiveUids(Arc<std::sync::RwLock<LiveState>>);

#[derive(Debug, Default)]
struct LiveState {
    /// None until the first full list arrived: every event counts until then.
    known: Option<HashSet<String>>,
}

impl LiveUids {
    /// Whether `uid` belongs to a Workspace that exists (false while unknown).
    pub fn contains(&self, uid: &str) -> bool {
        self.0
            .read()
            .map(|s| s.known.as_ref().is_some_and(|k| k.contains(uid)))
            .unwrap_or(false)
    }

    /// Folds one change of the shared Workspace cache in (ADR 0025); true when a record went
    /// away, by a deletion or missing from a relist (a pass is due).
    pub fn apply(&self, change: &crate::feed::Change<Workspace>) -> bool {
        use crate::feed::Change;
        let Ok(mut s) = self.0.write() else {
            return !matches!(change, Change::Applied(_));
        };
        match change {
            Change::Relisted(all) => {
                let now: HashSet<String> = all.iter().filter_map(|w| w.uid()).collect();
                let vanished = s
                    .known
                    .as_ref()
                    .is_some_and(|k| k.iter().any(|u| !now.contains(u)));
                s.known = Some(now);
                vanished
            }
            Change::Applied(w) => {
                if let (Some(u), Some(k)) = (w.uid(), s.known.as_mut()) {
                    k.insert(u);
                }
                false
            }
            Change::Deleted(w) => {
                if let (Some(u), Some(k)) = (w.uid(), s.known.as_mut()) {
                    k.remove(&u);
                }
                true
            }
        }
    }
}

/// Whether `m` is an orphan given the live records by uid. Containers and volumes: their uid
/// has no live record. Instances: additionally, the record neither names it in
/// `status.instanceId` nor is its current provision attempt the one that created it — so an
/// instance whose provision answer was lost (a crash or timeout before the id was written) is
/// reaped once a newer attempt has started, while an instance whose id is about to be
/// written (same attempt) is left alone.
pub fn is_orphan(m: &Managed, live: &HashMap<String, Live>) -> bool {
    let Some(record) = live.get(&m.uid) else {
        return true;
    };
    if m.kind != ManagedKind::Instance {
        return false;
    }
    let named = record.instance_id.as_deref() == Some(m.name.as_str());
    let current_attempt = m.attempt.len() == 16
        && record
            .token_hash
            .as_deref()
            .is_some_and(|h| h.starts_with(m.attempt.as_str()));
    !named && !current_attempt
}

async fn live_records(
    client: &Client,
    with_status: bool,
) -> Result<HashMap<String, Live>, ReaperError> {
    let api: Api<Workspace> = Api::all(client.clone());
    if !with_status {
        return Ok(api
            .list_metadata(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(|w| w.uid())
            .map(|u| (u, Live::default()))
            .collect());
    }
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|w| {
            let st = w.status.clone().unwrap_or_default();
            w.uid().map(|u| {
                (
                    u,
                    Live {
                        instance_id: st.instance_id,
                        token_hash: st.token_hash,
                    },
                )
            })
        })
        .collect())
}

fn kind_label(k: &ManagedKind) -> &'static str {
    match k {
        ManagedKind::Container => "container",
        ManagedKind::Volume => "volume",
        ManagedKind::Instance => "instance",
        ManagedKind::Service => "service",
        ManagedKind::Secret => "secret",
    }
}

/// One pass over every backend: returns how many objects were removed. A backend that cannot
/// list (e.g. the control plane is down) does not stop the others; its error is returned after
/// the others were reaped.
pub async fn reap_once(
    client: &Client,
    backends: &[Arc<dyn WorkspaceBackend>],
    metrics: &Metrics,
) -> Result<usize, ReaperError> {
    let mut listed = Vec::new();
    let mut first_error = None;
    for b in backends {
        match b.list_managed().await {
            Ok(m) if !m.is_empty() => listed.push((b.clone(), m)),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = "reaper.list_failed", error = %e, "could not list managed objects; will retry");
                first_error.get_or_insert(ReaperError::from(e));
            }
        }
    }
    if listed.is_empty() {
        return first_error.map_or(Ok(0), Err);
    }
    let with_status = listed
        .iter()
        .any(|(_, m)| m.iter().any(|m| m.kind == ManagedKind::Instance));
    let live = live_records(client, with_status).await?;
    let mut removed = 0;
    // Containers before volumes: a volume in use cannot be removed.
    for kind in [
        ManagedKind::Container,
        ManagedKind::Volume,
        ManagedKind::Instance,
        ManagedKind::Service,
        ManagedKind::Secret,
    ] {
        for (backend, managed) in &listed {
            for m in managed
                .iter()
                .filter(|m| m.kind == kind && is_orphan(m, &live))
            {
                match backend.remove_managed(m).await {
                    Ok(()) => {
                        removed += 1;
                        metrics.inc(
                            "molecule_reaper_removed_total",
                            &[("kind", kind_label(&kind))],
                        );
                        tracing::info!(event = "reaper.removed", kind = ?kind, name = %m.name, uid = %m.uid, workspace = %m.workspace, "removed an orphan");
                    }
                    Err(e) => {
                        tracing::warn!(event = "reaper.failed", name = %m.name, error = %e, "could not remove an orphan; will retry")
                    }
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// The kit's wrapper of reaper passes (ADR 0045): a failed pass is retried after 1 s, 2 s, 4 s …
/// (at most `every`), besides the periodic resync and triggers.
fn reconciler(metrics: Arc<Metrics>, every: Duration) -> Reconciler {
    let min = Duration::from_secs(1).min(every);
    Reconciler::new("reaper", metrics, Backoff::new(min, every))
}

/// Runs passes on every trigger (debounced), every `every` and after a failed pass's backoff,
/// until shutdown.
pub async fn run(
    client: Client,
    backends: Vec<Arc<dyn WorkspaceBackend>>,
    every: Duration,
    mut triggers: mpsc::Receiver<()>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let kit = reconciler(metrics.clone(), every);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let retry_at = retry.unwrap_or_else(|| tokio::time::Instant::now() + every);
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(retry_at), if retry.is_some() => {}
            Some(()) = triggers.recv() => {
                // Coalesce a burst of Docker events into one pass.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while triggers.try_recv().is_ok() {}
            }
            _ = &mut stop => return,
        }
        retry = pass(&kit, &client, &backends, &metrics)
            .await
            .map(|delay| tokio::time::Instant::now() + delay);
    }
}

/// One pass through the kit; the delay of its retry when it failed.
async fn pass(
    kit: &Reconciler,
    client: &Client,
    backends: &[Arc<dyn WorkspaceBackend>],
    metrics: &Metrics,
) -> Option<Duration> {
    match kit
        .run_keyed(PASS_KEY, reap_once(client, backends, metrics))
        .await
    {
        Ok(n) => {
            if n > 0 {
                tracing::info!(removed = n, "reaper pass");
            }
            None
        }
        Err(e) => Some(kit.retry_keyed(PASS_KEY, &e)),
    }
}

/// The reaper's passes are about no one object: one key for the span and the backoff.
const PASS_KEY: &str = "orphans";

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(uid: &str) -> Workspace {
        let mut w = Workspace::new("w", Default::default());
        w.metadata.uid = Some(uid.into());
        w
    }

    #[test]
    fn live_uids_follow_the_cache_and_know_nothing_before_the_first_list() {
        use crate::feed::Change;
        let ws = |u: &str| Arc::new(ws(u));
        let live = LiveUids::default();
        assert!(!live.apply(&Change::Applied(ws("a"))));
        assert!(
            !live.contains("a"),
            "unknown until the first list is complete"
        );
        assert!(!live.apply(&Change::Relisted(vec![ws("a"), ws("b")])));
        assert!(live.contains("a") && live.contains("b"));
        live.apply(&Change::Applied(ws("c")));
        assert!(live.contains("c"));
        assert!(
            live.apply(&Change::Deleted(ws("b"))),
            "a deletion is due a pass"
        );
        assert!(!live.contains("b"));
        // A relist replaces the set: what vanished meanwhile is gone, and due a pass.
        assert!(!live.apply(&Change::Relisted(vec![ws("a"), ws("c")])));
        assert!(live.apply(&Change::Relisted(vec![ws("c")])));
        assert!(!live.contains("a") && live.contains("c"));
    }

    fn m(kind: ManagedKind, name: &str, uid: &str, attempt: &str) -> Managed {
        Managed {
            kind,
            name: name.into(),
            uid: uid.into(),
            namespace: "ns".into(),
            workspace: "w".into(),
            attempt: attempt.into(),
        }
    }

    #[test]
    fn containers_and_volumes_are_orphans_only_without_a_live_record() {
        let live: HashMap<String, Live> = [("u1".to_string(), Live::default())].into();
        assert!(!is_orphan(
            &m(ManagedKind::Container, "ws-u1", "u1", ""),
            &live
        ));
        assert!(!is_orphan(
            &m(ManagedKind::Volume, "ws-u1-configs", "u1", ""),
            &live
        ));
        assert!(is_orphan(
            &m(ManagedKind::Container, "ws-u2", "u2", ""),
            &live
        ));
    }

    #[test]
    fn instances_must_be_named_by_their_record_or_be_its_current_attempt() {
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let live: HashMap<String, Live> = [(
            "u1".to_string(),
            Live {
                instance_id: Some("i-current".into()),
                token_hash: Some(hash.into()),
            },
        )]
        .into();
        // Recorded: kept, whatever its attempt.
        assert!(!is_orphan(
            &m(ManagedKind::Instance, "i-current", "u1", "ffffffffffffffff"),
            &live
        ));
        // Not yet recorded but of the current attempt (its id is being written): kept.
        assert!(!is_orphan(
            &m(ManagedKind::Instance, "i-new", "u1", &hash[..16]),
            &live
        ));
        // An older attempt whose answer was lost (crash, timeout): reaped.
        assert!(is_orphan(
            &m(ManagedKind::Instance, "i-lost", "u1", "ffffffffffffffff"),
            &live
        ));
        // No attempt tag and not recorded: reaped.
        assert!(is_orphan(
            &m(ManagedKind::Instance, "i-untagged", "u1", ""),
            &live
        ));
        // A short tag never matches by prefix.
        assert!(is_orphan(
            &m(ManagedKind::Instance, "i-short", "u1", "0"),
            &live
        ));
        // No live record at all: reaped.
        assert!(is_orphan(
            &m(ManagedKind::Instance, "i-current", "u9", &hash[..16]),
            &live
        ));
    }
}
