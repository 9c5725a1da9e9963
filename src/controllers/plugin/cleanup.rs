//! The Cleanup branch of the finalizer: remove the files from the container (a tombstone when
//! it is stopped), restart the workspace so hooks and settings unload, and drop the tracking
//! (queued updates are garbage-collected with the record).

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::install::{self, InstallError};
use super::{Context, PluginError};
use crate::backends::{Presence, WorkspaceRef};
use crate::resources::{PluginInstall, Workspace};

/// Delete: observe the workspace, remove the plugin when there is a container to remove it
/// from, report (audit row, log).
pub(super) async fn cleanup(
    pi: Arc<PluginInstall>,
    ctx: Arc<Context>,
) -> Result<Action, PluginError> {
    let ns = pi.namespace().unwrap_or_else(|| "default".into());
    let name = pi.status.as_ref().and_then(|s| s.plugin_name.clone());
    let ws = super::workspace(&ctx, &ns, &pi.spec.workspace_ref.name).await?;
    let removed = match (ws.as_deref().and_then(target), name.as_deref()) {
        (Some((ws, w)), Some(name)) => remove(&ctx, &pi, ws, &w, name).await?,
        _ => false,
    };
    ctx.succeeded(&pi.uid().unwrap_or_default());
    ctx.audit
        .record(
            "plugin.uninstalled",
            &ns,
            &pi.name_any(),
            json!({"workspace": pi.spec.workspace_ref.name, "plugin": name, "removed": removed}),
        )
        .await;
    tracing::info!(event = "plugin.uninstalled", plugininstall = %pi.name_any(), removed, "plugin install deleted");
    Ok(Action::await_change())
}

/// The workspace to remove the plugin from: not being deleted (its volume goes with it), not
/// external (nothing of molecule's inside).
fn target(ws: &Workspace) -> Option<(&Workspace, WorkspaceRef)> {
    if ws.metadata.deletion_timestamp.is_some() || ws.spec.runtime.as_deref() == Some("external") {
        return None;
    }
    Some((ws, super::wref(ws)?))
}

/// Removes `name` from a running container (then restarts the workspace) or tombstones it in a
/// stopped one; returns whether it is gone. Only transient failures are errors.
async fn remove(
    ctx: &Context,
    pi: &PluginInstall,
    ws: &Workspace,
    w: &WorkspaceRef,
    name: &str,
) -> Result<bool, PluginError> {
    if ctx.on_pods(ws) {
        // A Pod: the tombstone waits in the files Secret; the restart's init container
        // removes the directory (ADR 0057).
        let Some(k) = &ctx.kubernetes else {
            return Ok(false);
        };
        install::tombstone(k.as_ref(), w, name).await?;
        super::request_restart(ctx, ws, &crate::util::now_micro()).await?;
        return Ok(true);
    }
    match ctx.backend.inspect(w).await? {
        Presence::Running { container_id, .. } => {
            let result = match ctx.method(w, &container_id).await? {
                Some(m) => install::uninstall(ctx.backend.as_ref(), w, m, name).await,
                // No way to run a step inside: the archive API still replaces the dir.
                None => install::tombstone(ctx.backend.as_ref(), w, name)
                    .await
                    .map_err(InstallError::from),
            };
            match result {
                Ok(()) => {
                    super::request_restart(ctx, ws, &crate::util::now_rfc3339()).await?;
                    Ok(true)
                }
                Err(InstallError::Backend(e)) if e.is_transient() => Err(e.into()),
                Err(e) => {
                    tracing::warn!(plugininstall = %pi.name_any(), error = %e, "uninstall failed; the files stay");
                    super::status::event(
                        ctx,
                        pi,
                        EventType::Warning,
                        "UninstallFailed",
                        format!("{name} could not be removed from the container: {e}"),
                    );
                    Ok(false)
                }
            }
        }
        Presence::Stopped { .. } => match install::tombstone(ctx.backend.as_ref(), w, name).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => {
                tracing::warn!(plugininstall = %pi.name_any(), error = %e, "offline uninstall failed");
                Ok(false)
            }
        },
        Presence::Absent => Ok(false),
    }
}
