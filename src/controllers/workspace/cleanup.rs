//! Delete (ADR 0006, 0035): the finalizer's cleanup step. Docker: remove the container, then
//! the volume only if the container is really gone; a failure is reported and the finalizer
//! released anyway — the orphan reaper removes what is left (no uid of a live record owns it
//! any more). Control plane: terminate the instance; until the control plane confirms (2xx,
//! or 404: already gone) the finalizer is kept, the Ready condition says why, and the call is
//! retried with backoff.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::report::{event, write};
use super::{Context, FINALIZER, WorkspaceError, kind_label, plan, wref};
use crate::backends::{BackendError, WorkspaceRef};
use crate::resources::{Backend, Condition, ConditionStatus, Workspace};

/// The cleanup of one record being deleted.
pub(super) async fn cleanup(
    cached: Arc<Workspace>,
    ctx: Arc<Context>,
) -> Result<Action, WorkspaceError> {
    // Like apply, from the record as it is now: a pass queued by a Docker event (the container
    // this very cleanup removed) can run on a cached copy of a record that an earlier pass has
    // already released; it must not remove, notify and audit the deletion a second time.
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &wref(&cached)?.namespace);
    let ws = match crate::controllers::report::fresh(&api, &cached).await? {
        Some(fresh) if fresh.finalizers().iter().any(|f| f == FINALIZER) => fresh,
        _ => return Ok(Action::await_change()),
    };
    let w = wref(&ws)?;
    let kind = ctx.backends.kind_of(ws.spec.backend);
    if ws.spec.runtime.as_deref() != Some("external") {
        match kind {
            Backend::Docker => remove_container(&ctx, &ws, &w).await,
            Backend::Kubernetes => remove_pod(&ctx, &ws, &w).await?,
            Backend::ControlPlane => {}
        }
    }
    // An instance on record (a control-plane workspace, or one switched to Docker before its
    // instance could be stopped) must be confirmed gone.
    if w.instance_id
        .as_deref()
        .is_some_and(|i| !i.trim().is_empty())
    {
        stop_instance(&ctx, &ws, &w).await?;
    }
    ctx.forget_restart(&w.uid);
    ctx.audit
        .record(
            "workspace.deleted",
            &w.namespace,
            &w.name,
            json!({"uid": w.uid, "runtime": ws.spec.runtime.as_deref().unwrap_or("echo"), "backend": kind_label(kind)}),
        )
        .await;
    Ok(Action::await_change())
}

/// Removes the container and volume; a failure is left to the orphan reaper.
async fn remove_container(ctx: &Context, ws: &Workspace, w: &WorkspaceRef) {
    match ctx.backends.docker.remove(w, true).await {
        Ok(()) => {
            tracing::info!(event = "delete.done", workspace = %w.name, uid = %w.uid, "container and volume removed");
            let note = "container and volume removed".into();
            event(ctx, ws, EventType::Normal, "Deleted", note);
        }
        Err(e) => {
            tracing::warn!(event = "delete.partial", workspace = %w.name, error = %e, "removal failed; leaving the rest to the orphan reaper");
            let note = "the container could not be removed now; the volume is kept and the orphan reaper will remove both".into();
            event(ctx, ws, EventType::Warning, "CleanupIncomplete", note);
        }
    }
}

/// Removes the Pod, Service, Secrets and claims; until that is confirmed, the finalizer stays
/// and the Ready condition says why (a Pod's objects are not left to the GC alone).
async fn remove_pod(ctx: &Context, ws: &Workspace, w: &WorkspaceRef) -> Result<(), WorkspaceError> {
    let removal = Removal {
        not_configured: "the workspace ran on the kubernetes backend, which this operator does not run",
        done: "Pod, Service, Secrets and volume claims removed",
    };
    confirm(ctx, ws, w, ctx.backends.kubernetes.as_ref(), removal).await
}

/// Terminates the recorded instance; until that is confirmed, the finalizer stays and the
/// Ready condition says why.
async fn stop_instance(
    ctx: &Context,
    ws: &Workspace,
    w: &WorkspaceRef,
) -> Result<(), WorkspaceError> {
    let removal = Removal {
        not_configured: "an instance is on record but no control plane is configured to stop it",
        done: "instance terminated",
    };
    confirm(ctx, ws, w, ctx.backends.control_plane.as_ref(), removal).await
}

/// What a confirmed removal says.
struct Removal {
    not_configured: &'static str,
    done: &'static str,
}

/// Removes everything of `w` on `backend`; a failure keeps the finalizer, sets `StopFailed`
/// and is retried with backoff.
async fn confirm(
    ctx: &Context,
    ws: &Workspace,
    w: &WorkspaceRef,
    backend: Option<&std::sync::Arc<dyn crate::backends::WorkspaceBackend>>,
    removal: Removal,
) -> Result<(), WorkspaceError> {
    let result = match backend {
        Some(b) => b.remove(w, true).await,
        None => Err(BackendError::Config(removal.not_configured.into())),
    };
    if let Err(e) = result {
        tracing::warn!(event = "delete.stop_failed", workspace = %w.name, uid = %w.uid, error = %e, "the removal failed; keeping the finalizer and retrying");
        report_stop_failed(ctx, ws, &plan::stop_failure_message(&e)).await?;
        return Err(e.into());
    }
    tracing::info!(event = "delete.done", workspace = %w.name, uid = %w.uid, "{}", removal.done);
    event(ctx, ws, EventType::Normal, "Deleted", removal.done.into());
    Ok(())
}

async fn report_stop_failed(
    ctx: &Context,
    ws: &Workspace,
    message: &str,
) -> Result<(), WorkspaceError> {
    let before = ws.status.clone().unwrap_or_default();
    let mut next = before.clone();
    let generation = ws.metadata.generation.unwrap_or(1);
    let mut c = Condition::new("Ready", ConditionStatus::False, "StopFailed", message);
    c.observed_generation = Some(generation);
    Condition::upsert(&mut next.conditions, c, &crate::util::now_rfc3339());
    next.message = Some(message.to_string());
    write(ctx, ws, &next, None).await?;
    if before.message.as_deref() != Some(message) {
        event(
            ctx,
            ws,
            EventType::Warning,
            "StopFailed",
            message.to_string(),
        );
    }
    Ok(())
}
