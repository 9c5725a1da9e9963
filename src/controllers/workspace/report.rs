//! Report: the Workspace controller's status writes and Events, through the kit's
//! [`Reporter`](crate::controllers::kit::Reporter) (ADR 0045). The controller owns the fields
//! in [`STATUS_FIELDS`]; the registry endpoints own the heartbeat fields and agent card.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::Value;

use super::observe::Pass;
use super::validate::Permanent;
use super::{Context, WorkspaceError};
use crate::backends::Presence;
use crate::resources::{Condition, ConditionStatus, Workspace, WorkspacePhase, WorkspaceStatus};

/// The controller-owned part of status (fields the registry endpoints write — heartbeats,
/// agent card — are left alone).
pub const STATUS_FIELDS: &[&str] = &[
    "phase",
    "observedGeneration",
    "conditions",
    "message",
    "containerName",
    "containerId",
    "instanceId",
    "volumeName",
    "image",
    "imageDigest",
    "url",
    "missingEnv",
    "tokenHash",
    "restartedAt",
    "provisionedAt",
    "specHash",
    "restartCount",
    "tier",
];

/// Writes `next` unless nothing the controller owns changed (no write, no watch event);
/// `extra` fields are merged into the patch and force the write.
pub(super) async fn write(
    ctx: &Context,
    ws: &Workspace,
    next: &WorkspaceStatus,
    extra: Option<Value>,
) -> Result<(), WorkspaceError> {
    let before = ws.status.clone().unwrap_or_default();
    ctx.report.status(ws, &before, next, extra).await?;
    Ok(())
}

/// Publishes an Event about `ws` in the background.
pub(super) fn event(ctx: &Context, ws: &Workspace, type_: EventType, reason: &str, note: String) {
    ctx.report.event(ws, type_, reason, note);
}

/// Sets the `Ready` and `ConfigReady` conditions.
pub(super) fn set_conditions(
    next: &mut WorkspaceStatus,
    generation: i64,
    now: &str,
    ready: (ConditionStatus, &str, &str),
    config: (ConditionStatus, &str, &str),
) {
    for (type_, (status, reason, message)) in [("Ready", ready), ("ConfigReady", config)] {
        let mut c = Condition::new(type_, status, reason, message);
        c.observed_generation = Some(generation);
        Condition::upsert(&mut next.conditions, c, now);
    }
}

/// `Ready` as given, `ConfigReady` True: the configuration is valid.
pub(super) fn set_valid(pass: &mut Pass, ready: (ConditionStatus, &str, &str)) {
    set_conditions(
        &mut pass.next,
        pass.generation,
        &pass.now,
        ready,
        (ConditionStatus::True, "Valid", "configuration is valid"),
    );
}

/// Reports a permanent problem: phase Failed, conditions, an Event on change; no container.
pub(super) async fn fail(
    ctx: &Context,
    mut pass: Pass,
    p: Permanent,
) -> Result<Action, WorkspaceError> {
    let ws = pass.ws.clone();
    let before = ws.status.clone().unwrap_or_default();
    let next = &mut pass.next;
    next.phase = Some(WorkspacePhase::Failed);
    next.message = Some(p.message.clone());
    next.missing_env = p.missing_env;
    set_conditions(
        next,
        pass.generation,
        &pass.now,
        (ConditionStatus::False, p.reason, &p.message),
        (ConditionStatus::False, p.reason, &p.message),
    );
    write(ctx, &ws, next, None).await?;
    if before.phase != Some(WorkspacePhase::Failed)
        || before.message.as_deref() != Some(p.message.as_str())
    {
        tracing::info!(workspace = %ws.name_any(), reason = p.reason, "workspace failed");
        event(ctx, &ws, EventType::Warning, p.reason, p.message);
    }
    Ok(Action::await_change())
}

/// Reports something that may still resolve (a Runtime record not created yet, ADR 0048):
/// phase Pending with Ready and ConfigReady False, the reason and message, one Event, and a
/// look again soon; once the provision timeout has passed since the record started waiting,
/// [`fail`]. Nothing is created meanwhile.
pub(super) async fn unresolved(
    ctx: &Context,
    mut pass: Pass,
    p: Permanent,
    timeout: Duration,
) -> Result<Action, WorkspaceError> {
    let waiting = super::plan::waiting_since(&pass.before.conditions, p.reason, pass.generation);
    let since = waiting.unwrap_or(pass.now_s);
    let step = super::plan::pending_step(since, pass.now_s, timeout.as_secs() as i64);
    let Some(left) = step else {
        let message = format!(
            "{}; gave up after {}s (the provision timeout)",
            p.message,
            timeout.as_secs()
        );
        return fail(ctx, pass, Permanent { message, ..p }).await;
    };
    let message = format!(
        "{}; waiting up to {}s for it to be created",
        p.message,
        timeout.as_secs()
    );
    if waiting.is_none() {
        // A new wait starts its clock now (ConfigReady's transition time keeps it).
        pass.next.conditions.retain(|c| c.type_ != "ConfigReady");
    }
    pass.next.phase = Some(WorkspacePhase::Pending);
    pass.next.message = Some(message.clone());
    set_conditions(
        &mut pass.next,
        pass.generation,
        &pass.now,
        (ConditionStatus::False, p.reason, &message),
        (ConditionStatus::False, p.reason, &message),
    );
    write(ctx, &pass.ws, &pass.next, None).await?;
    if waiting.is_none() {
        tracing::info!(workspace = %pass.w.name, reason = p.reason, "workspace pending");
        event(ctx, &pass.ws, EventType::Warning, p.reason, message);
    }
    // Looked at again soon: a Runtime record created meanwhile is found by the next pass.
    Ok(Action::requeue(Duration::from_secs(
        left.clamp(1, 10) as u64
    )))
}

/// The phase `plan` observed, nothing to change in the backend.
pub(super) struct Seen {
    pub phase: WorkspacePhase,
    pub reason: &'static str,
    pub message: String,
}

/// Reports an observed phase: status, an Event when the phase changed, and the next look
/// (the provision timeout while Provisioning, heartbeats while up, none once Failed).
pub(super) async fn phase(
    ctx: &Context,
    mut pass: Pass,
    presence: &Presence,
    seen: Seen,
    provision_timeout: Duration,
) -> Result<Action, WorkspaceError> {
    let Seen {
        phase,
        reason,
        message,
    } = seen;
    let ready = if matches!(phase, WorkspacePhase::Online | WorkspacePhase::Degraded) {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    pass.next.phase = Some(phase);
    pass.next.message = Some(message.clone());
    if phase == WorkspacePhase::Online {
        pass.next.restart_count = None;
        ctx.forget_restart(&pass.w.uid);
    }
    if let Presence::Running {
        host_url: Some(u), ..
    } = presence
    {
        pass.next.url = Some(u.clone());
    }
    set_valid(&mut pass, (ready, reason, &message));
    write(ctx, &pass.ws, &pass.next, None).await?;
    if pass.before.phase != Some(phase) {
        let t = if matches!(phase, WorkspacePhase::Failed | WorkspacePhase::Degraded) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        tracing::info!(workspace = %pass.w.name, phase = ?phase, "phase changed");
        event(ctx, &pass.ws, t, reason, message);
    }
    Ok(next_look(ctx, &pass, phase, provision_timeout))
}

fn next_look(
    ctx: &Context,
    pass: &Pass,
    phase: WorkspacePhase,
    provision_timeout: Duration,
) -> Action {
    match phase {
        // Registration wakes the controller through the watch; this requeue only enforces the
        // provision timeout.
        WorkspacePhase::Provisioning => {
            let provisioned = pass
                .next
                .provisioned_at
                .as_ref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(pass.now_s, |t| t.as_second());
            let left = provision_timeout.as_secs() as i64 - (pass.now_s - provisioned);
            Action::requeue(Duration::from_secs(left.clamp(1, 30) as u64))
        }
        WorkspacePhase::Failed => Action::await_change(),
        _ => heartbeat_look(ctx),
    }
}

/// How often an up workspace is looked at: a third of the heartbeat timeout, 1 s … 60 s.
pub(super) fn heartbeat_look(ctx: &Context) -> Action {
    Action::requeue(
        (ctx.settings.heartbeat_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(60)),
    )
}
