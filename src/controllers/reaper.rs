//! The orphan reaper (W12): any managed container or volume whose uid belongs to no live
//! Workspace is removed. Triggered by Docker events (fast path) and a periodic resync (safety
//! net); it also heals a wiped store. Only objects carrying the managed label are ever touched,
//! and liveness is checked against the API itself, not a cache.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::backends::{ManagedKind, WorkspaceBackend};
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

/// One pass: returns how many objects were removed.
pub async fn reap_once(
    client: &Client,
    backend: &dyn WorkspaceBackend,
    metrics: &Metrics,
) -> Result<usize, ReaperError> {
    let managed = backend.list_managed().await?;
    if managed.is_empty() {
        return Ok(0);
    }
    let api: Api<Workspace> = Api::all(client.clone());
    let live: HashSet<String> = api
        .list_metadata(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|w| w.uid())
        .collect();
    let mut removed = 0;
    // Containers before volumes: a volume in use cannot be removed.
    for kind in [ManagedKind::Container, ManagedKind::Volume] {
        for m in managed
            .iter()
            .filter(|m| m.kind == kind && !live.contains(&m.uid))
        {
            match backend.remove_managed(m).await {
                Ok(()) => {
                    removed += 1;
                    metrics.inc(
                        "molecule_reaper_removed_total",
                        &[(
                            "kind",
                            if kind == ManagedKind::Container {
                                "container"
                            } else {
                                "volume"
                            },
                        )],
                    );
                    tracing::info!(event = "reaper.removed", kind = ?kind, name = %m.name, uid = %m.uid, workspace = %m.workspace, "removed an orphan");
                }
                Err(e) => {
                    tracing::warn!(event = "reaper.failed", name = %m.name, error = %e, "could not remove an orphan; will retry")
                }
            }
        }
    }
    Ok(removed)
}

/// Runs passes on every trigger (debounced) and every `every`, until shutdown.
pub async fn run(
    client: Client,
    backend: Arc<dyn WorkspaceBackend>,
    every: Duration,
    mut triggers: mpsc::Receiver<()>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = triggers.recv() => {
                // Coalesce a burst of Docker events into one pass.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while triggers.try_recv().is_ok() {}
            }
            _ = &mut stop => return,
        }
        let t = Instant::now();
        match reap_once(&client, backend.as_ref(), &metrics).await {
            Ok(n) => {
                metrics.observe(
                    "molecule_reconcile_seconds",
                    &[("controller", "reaper")],
                    t.elapsed().as_secs_f64(),
                );
                if n > 0 {
                    tracing::info!(removed = n, "reaper pass");
                }
            }
            Err(e) => {
                metrics.inc(
                    "molecule_reconcile_errors_total",
                    &[("controller", "reaper"), ("category", "pass")],
                );
                tracing::warn!(error = %e, "reaper pass failed; will retry");
            }
        }
    }
}
