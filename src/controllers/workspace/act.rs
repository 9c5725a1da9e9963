//! Act: what the Workspace controller does on the backend once a pass has decided — pause,
//! run an external agent's token, adopt a container, schedule a recovery, leave the other
//! backend. Provisioning itself is in [`provision`](super::provision).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::observe::{ImageWant, Pass, Target};
use super::plan::{self, ProvisionReason};
use super::report::{self, event, set_valid, write};
use super::{Context, RESTART_ANNOTATION, WorkspaceError, noun, sha256_hex};
use crate::backends::{ConfigFile, Presence, Tier, WorkspaceBackend, WorkspaceRef};
use crate::resources::{Backend, ConditionStatus, WorkspacePhase, WorkspaceStatus};

pub(super) use super::provision::provision;

/// What a provision starts: the image, tier, env and files, and their hash (`status.specHash`).
pub(super) struct Desired {
    pub hash: String,
    pub want: ImageWant,
    pub tier: Tier,
    pub env: BTreeMap<String, String>,
    pub files: Vec<ConfigFile>,
}

/// Pause: stop the container and keep the volume; terminate the instance.
pub(super) async fn pause(
    ctx: &Context,
    mut pass: Pass,
    backend: &dyn WorkspaceBackend,
    target: &Target,
) -> Result<Action, WorkspaceError> {
    if matches!(target, Target::Image { .. }) {
        backend.stop(&pass.w).await?;
    }
    let message = match pass.kind {
        Backend::Docker => "paused: the container is stopped and the volume kept",
        Backend::Kubernetes => "paused: the Pod is deleted and the volume claims kept",
        Backend::ControlPlane => {
            pass.next.instance_id = None;
            "paused: the instance is terminated; resuming provisions a new one"
        }
    };
    pass.next.phase = Some(WorkspacePhase::Paused);
    pass.next.message = Some(message.into());
    set_valid(
        &mut pass,
        (ConditionStatus::False, "Paused", "paused by spec.paused"),
    );
    write(ctx, &pass.ws, &pass.next, None).await?;
    if pass.before.phase != Some(WorkspacePhase::Paused) {
        let note = match pass.kind {
            Backend::Docker => "container stopped; volume kept",
            Backend::Kubernetes => "Pod deleted; volume claims kept",
            Backend::ControlPlane => "instance terminated",
        };
        event(ctx, &pass.ws, EventType::Normal, "Paused", note.into());
    }
    Ok(Action::await_change())
}

/// An invalid configuration stops what runs (a container keeps its volume; an instance is
/// terminated).
pub(super) async fn stop_invalid(
    pass: &mut Pass,
    backend: &dyn WorkspaceBackend,
    target: &Target,
) -> Result<(), WorkspaceError> {
    if matches!(target, Target::Image { .. }) {
        backend.stop(&pass.w).await?;
        if pass.kind == Backend::ControlPlane {
            pass.next.instance_id = None;
        }
    }
    Ok(())
}

/// Records a container of the current provision whose id was never written.
pub(super) async fn adopt(
    ctx: &Context,
    mut pass: Pass,
    presence: &Presence,
    container_id: String,
) -> Result<Action, WorkspaceError> {
    tracing::info!(event = "provision.adopt", workspace = %pass.w.name, container = %container_id, "recording a container of the current provision whose id was never written");
    match pass.kind {
        Backend::Docker | Backend::Kubernetes => pass.next.container_id = Some(container_id),
        Backend::ControlPlane => pass.next.instance_id = Some(container_id),
    }
    if let Presence::Running {
        host_url: Some(u), ..
    } = presence
    {
        pass.next.url = Some(u.clone());
    }
    if let Some(a) = pass.ws.annotations().get(RESTART_ANNOTATION) {
        pass.next.restarted_at = Some(a.clone());
    }
    write(ctx, &pass.ws, &pass.next, None).await?;
    Ok(Action::requeue(Duration::from_millis(100)))
}

/// A recovery (the container died, heartbeats stopped) waits for its restart backoff: the
/// first notice reports Offline and schedules the restart; until then the pass waits. `None`:
/// restart now.
pub(super) async fn recovery_wait(
    ctx: &Context,
    pass: &mut Pass,
    reason: &ProvisionReason,
    presence: &Presence,
) -> Result<Option<Duration>, WorkspaceError> {
    if pass.before.phase != Some(WorkspacePhase::Offline) {
        return first_notice(ctx, pass, reason, presence).await.map(Some);
    }
    Ok(ctx
        .restart_at(&pass.w.uid)
        .and_then(|at| at.checked_duration_since(Instant::now()))
        .filter(|d| !d.is_zero()))
}

/// Reports Offline and schedules the restart with backoff; returns the delay.
async fn first_notice(
    ctx: &Context,
    pass: &mut Pass,
    reason: &ProvisionReason,
    presence: &Presence,
) -> Result<Duration, WorkspaceError> {
    let n = pass.before.restart_count.unwrap_or(0) + 1;
    let delay = Duration::from_secs(plan::restart_backoff_secs(n) as u64);
    ctx.schedule_restart(&pass.w.uid, Instant::now() + delay);
    pass.next.phase = Some(WorkspacePhase::Offline);
    pass.next.restart_count = Some(n);
    // A platform that says why (an evicted or failed Pod) gives the condition its reason.
    let (cause, why) = match presence {
        Presence::Stopped {
            reason: Some(w), ..
        } => (
            w.reason,
            format!("{}; replacing it in {}s", w.message, delay.as_secs()),
        ),
        _ => (
            reason.reason(),
            offline_message(ctx, pass.kind, reason, presence, delay),
        ),
    };
    pass.next.message = Some(why.clone());
    set_valid(pass, (ConditionStatus::False, cause, &why));
    write(ctx, &pass.ws, &pass.next, None).await?;
    event(ctx, &pass.ws, EventType::Warning, cause, why);
    Ok(delay)
}

fn offline_message(
    ctx: &Context,
    kind: Backend,
    reason: &ProvisionReason,
    presence: &Presence,
    delay: Duration,
) -> String {
    match (reason, presence) {
        (ProvisionReason::HeartbeatLost, _) => format!(
            "no heartbeat for {}s; restarting in {}s",
            ctx.settings.heartbeat_timeout.as_secs(),
            delay.as_secs()
        ),
        (_, Presence::Stopped { .. }) if kind == Backend::ControlPlane => {
            format!("the instance stopped; restarting in {}s", delay.as_secs())
        }
        (
            _,
            Presence::Stopped {
                exit_code,
                oom_killed,
                ..
            },
        ) => format!(
            "the container exited (code {}{}); restarting in {}s",
            exit_code.unwrap_or(-1),
            if *oom_killed { ", out of memory" } else { "" },
            delay.as_secs()
        ),
        _ => format!(
            "the {} is gone; restarting in {}s",
            noun(kind),
            delay.as_secs()
        ),
    }
}

/// `runtime: external`: no container; a token Secret the external agent uses; Online once
/// it registers.
pub(super) async fn external(ctx: &Context, mut pass: Pass) -> Result<Action, WorkspaceError> {
    let secret_name = format!("{}-agent-token", pass.w.name);
    ensure_token_secret(ctx, &mut pass, &secret_name).await?;
    pass.next.url = pass.ws.spec.url.clone();
    pass.next.container_id = None;
    let (phase, reason, message) = external_health(ctx, &pass, &secret_name);
    pass.next.phase = Some(phase);
    pass.next.message = Some(message.clone());
    let ready = if matches!(phase, WorkspacePhase::Online | WorkspacePhase::Degraded) {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    set_valid(&mut pass, (ready, reason, &message));
    write(ctx, &pass.ws, &pass.next, None).await?;
    if pass.before.phase != Some(phase) {
        let t = if matches!(phase, WorkspacePhase::Online | WorkspacePhase::Provisioning) {
            EventType::Normal
        } else {
            EventType::Warning
        };
        event(ctx, &pass.ws, t, reason, message);
    }
    Ok(report::heartbeat_look(ctx))
}

/// The external agent's phase: its health while it heartbeats, Offline once it stopped,
/// Provisioning until it registers.
fn external_health(
    ctx: &Context,
    pass: &Pass,
    secret_name: &str,
) -> (WorkspacePhase, &'static str, String) {
    let timeout = ctx.settings.heartbeat_timeout.as_secs() as i64;
    match plan::heartbeat_since_provision(&pass.next) {
        Some(hb) if pass.now_s - hb <= timeout => plan::reported_health(&pass.next),
        Some(_) => (
            WorkspacePhase::Offline,
            "HeartbeatLost",
            "the external agent stopped heartbeating".to_string(),
        ),
        None => (
            WorkspacePhase::Provisioning,
            "WaitingForAgent",
            format!(
                "waiting for the external agent to register with the token in Secret {secret_name}"
            ),
        ),
    }
}

/// The external agent's token Secret: a new token unless the Secret holds the one on record.
async fn ensure_token_secret(
    ctx: &Context,
    pass: &mut Pass,
    secret_name: &str,
) -> Result<(), WorkspaceError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &pass.w.namespace);
    let existing = secrets.get_opt(secret_name).await?;
    let token_matches = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get("token"))
        .map(|t| sha256_hex(&t.0))
        .is_some_and(|h| Some(h) == pass.next.token_hash);
    if token_matches {
        return Ok(());
    }
    let token = crate::util::random_token();
    pass.next.token_hash = Some(sha256_hex(token.as_bytes()));
    pass.next.provisioned_at = Some(crate::util::now_micro());
    let secret = token_secret(ctx, pass, secret_name, token);
    secrets
        .patch(
            secret_name,
            &PatchParams::apply("molecule-workspace").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

fn token_secret(ctx: &Context, pass: &Pass, secret_name: &str, token: String) -> Secret {
    let owner = pass.ws.controller_owner_ref(&()).map(|o| vec![o]);
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret_name.to_string()),
            owner_references: owner,
            labels: Some([("molecule.ai/workspace".to_string(), pass.w.name.clone())].into()),
            ..Default::default()
        },
        string_data: Some(
            [
                ("token".to_string(), token),
                ("workspace_id".to_string(), pass.w.uid.clone()),
                (
                    "platform_url".to_string(),
                    ctx.settings.platform_url.clone(),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// How a Kubernetes workspace's `status.containerName` names its Pod ("pod/ws-<id12>"), so a
/// later pass can tell which backend the record's container is on.
pub(super) fn pod_reference(w: &WorkspaceRef) -> String {
    format!("pod/{}", w.container_name())
}

/// A workspace whose `spec.backend` changed leaves nothing running on the other ones: a
/// recorded instance is terminated, a recorded container (`containerName` "ws-<id12>") or Pod
/// ("pod/ws-<id12>") removed with its volumes.
pub(super) async fn leave_other_backend(
    ctx: &Context,
    w: &WorkspaceRef,
    kind: Backend,
    next: &mut WorkspaceStatus,
) -> Result<(), WorkspaceError> {
    if kind != Backend::ControlPlane
        && next
            .instance_id
            .as_deref()
            .is_some_and(|i| !i.trim().is_empty())
        && let Some(cp) = ctx.backends.control_plane.as_ref()
    {
        tracing::info!(workspace = %w.name, backend = ?kind, "backend changed: terminating the instance");
        cp.remove(w, true).await?;
        next.instance_id = None;
    }
    let on_pod = next
        .container_name
        .as_deref()
        .is_some_and(|n| n.starts_with("pod/"));
    let on_docker = !on_pod && (next.container_name.is_some() || next.container_id.is_some());
    let leave = match kind {
        Backend::Docker => on_pod.then_some(ctx.backends.kubernetes.as_ref()).flatten(),
        Backend::Kubernetes => on_docker.then_some(&ctx.backends.docker),
        Backend::ControlPlane if on_pod => ctx.backends.kubernetes.as_ref(),
        Backend::ControlPlane => on_docker.then_some(&ctx.backends.docker),
    };
    if let Some(other) = leave {
        tracing::info!(workspace = %w.name, backend = ?kind, "backend changed: removing what ran on the previous one, with its volumes");
        other.remove(w, true).await?;
        next.container_id = None;
        next.container_name = None;
        next.volume_name = None;
    }
    Ok(())
}
