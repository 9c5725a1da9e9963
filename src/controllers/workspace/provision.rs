//! Act, provisioning: a new container (or instance) for a workspace — its image resolved,
//! a new token recorded before anything exists (ADR 0006), the previous one removed, the new
//! one started and recorded (ADR 0035).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::act::Desired;
use super::observe::{ImageWant, Pass};
use super::plan::{self, ProvisionReason};
use super::report::{event, fail, set_valid, write};
use super::validate::permanent;
use super::{Context, RESTART_ANNOTATION, WorkspaceError, kind_label, noun, sha256_hex};
use crate::backends::{ConfigFile, Presence, StartSpec, WorkspaceBackend};
use crate::controllers::plugin::seed::FirstStart;
use crate::images::Resolved;
use crate::resources::{Backend, ConditionStatus, WorkspacePhase};

/// Provisions: resolve the image, record the attempt, remove what ran, start, record.
pub(super) async fn provision(
    ctx: &Context,
    backend: &dyn WorkspaceBackend,
    mut pass: Pass,
    reason: ProvisionReason,
    presence: &Presence,
    desired: Desired,
) -> Result<Action, WorkspaceError> {
    // The plugins of the first start (ADR 0056), looked up before anything is recorded: a
    // first start waits (briefly) for the PluginInstalls its OrgImport announced.
    let plugins = if reason == ProvisionReason::Initial
        && matches!(pass.kind, Backend::Docker | Backend::Kubernetes)
    {
        match first_start_plugins(ctx, &pass, &desired.files).await {
            FirstStart::Files(f) => f,
            // The PluginInstall cache wakes this workspace when one of them appears; the
            // requeue only ends the wait.
            FirstStart::Waiting(left) => return Ok(Action::requeue(left)),
        }
    } else {
        vec![]
    };
    let prepared = match prepare_image(ctx, &desired.want).await {
        Ok(p) => p,
        Err(e) => return image_not_ready(ctx, pass, e).await,
    };
    let (image, platform) = image_of(ctx, &mut pass, prepared.as_ref(), &desired.want);
    let token = record_attempt(ctx, &mut pass, &reason, &image, desired.hash.clone()).await?;
    if !matches!(presence, Presence::Absent) {
        tracing::info!(event = "restart.pre_stop", workspace = %pass.w.name, backend = kind_label(pass.kind), "removing the previous {} (a volume is kept)", noun(pass.kind));
        backend.remove(&pass.w, false).await?;
    }
    if pass.kind == Backend::ControlPlane {
        pass.next.instance_id = None;
    }
    let mut spec = start_spec(&pass, desired, image, platform, token);
    spec.files.extend(plugins);
    start(ctx, backend, pass, &spec).await
}

/// The config files (plugins included) a Pod's first start may carry, leaving room in its
/// Secret for the env and the tar's headers.
const POD_PLUGIN_BUDGET: usize = 512 * 1024;

/// The plugins placed before a workspace's first start (ADR 0056), within what is left of the
/// config files' size limit (and room for the token file).
async fn first_start_plugins(ctx: &Context, pass: &Pass, files: &[ConfigFile]) -> FirstStart {
    let Some(plugins) = &ctx.plugins else {
        return FirstStart::Files(vec![]);
    };
    let used: usize = files.iter().map(|f| f.content.len()).sum::<usize>() + 1024;
    // A Pod's config files travel in one Secret (at most 1 MiB, with the env; ADR 0057).
    let total = match pass.kind {
        Backend::Kubernetes => POD_PLUGIN_BUDGET,
        _ => super::files::MAX_TOTAL_BYTES,
    };
    let budget = total.saturating_sub(used);
    let seed = crate::controllers::plugin::seed::Seed {
        client: &ctx.client,
        fetcher: &plugins.fetcher,
        installs: &plugins.installs,
    };
    seed.first_start(&pass.ws, budget).await
}

/// The image: a fresh resolution per start — moving tags re-pulled, pinned ones only when
/// missing, a template cache hit or clone + build — and its running digest (ADR 0030).
/// Control-plane instances take their machine image from the control plane; the simulated
/// backend needs none.
async fn prepare_image(
    ctx: &Context,
    want: &ImageWant,
) -> Result<Option<Resolved>, crate::images::ImageError> {
    match want {
        ImageWant::ControlPlane(_) | ImageWant::Reference(_) => Ok(None),
        _ if ctx.images.settings.simulated => Ok(None),
        ImageWant::Explicit(image) => ctx.images.ensure_explicit(image).await.map(Some),
        ImageWant::Runtime { name, record } => ctx
            .images
            .ensure(name, record.as_deref(), crate::images::Purpose::Start)
            .await
            .map(Some),
    }
}

/// A transient image problem is retried (with an Event); a permanent one fails the record.
async fn image_not_ready(
    ctx: &Context,
    pass: Pass,
    e: crate::images::ImageError,
) -> Result<Action, WorkspaceError> {
    let message = ctx.images.mask(&e.to_string());
    tracing::warn!(workspace = %pass.w.name, category = e.category(), error = %message, "image not ready");
    if e.is_transient() {
        let note = format!("{message}; retrying");
        event(ctx, &pass.ws, EventType::Warning, e.category(), note);
        return Err(e.into());
    }
    fail(ctx, pass, permanent(e.category(), message)).await
}

/// The image to start and its platform; records the digest.
fn image_of(
    ctx: &Context,
    pass: &mut Pass,
    prepared: Option<&Resolved>,
    want: &ImageWant,
) -> (String, Option<String>) {
    match prepared {
        Some(p) => {
            if let Some(note) = &p.note {
                event(ctx, &pass.ws, EventType::Warning, "ImageNote", note.clone());
            }
            pass.next.image_digest = p.digest.clone();
            let platform = match p.source {
                crate::resources::ImageSource::Builtin => None,
                _ => ctx.images.settings.platform.clone(),
            };
            (p.image.clone(), platform)
        }
        // The control plane's own machine image for the runtime, or the explicit `spec.image`.
        None => match want {
            ImageWant::ControlPlane(image) => (image.clone().unwrap_or_default(), None),
            ImageWant::Explicit(image) | ImageWant::Reference(image) => (image.clone(), None),
            _ => (String::new(), None),
        },
    }
}

/// A new token per provision; only its hash is kept, and it is written to status before the
/// container exists, so a crash at any point is healed by the next pass (ADR 0006). Returns
/// the token.
async fn record_attempt(
    ctx: &Context,
    pass: &mut Pass,
    reason: &ProvisionReason,
    image: &str,
    desired_hash: String,
) -> Result<String, WorkspaceError> {
    let token = crate::util::random_token();
    let next = &mut pass.next;
    next.token_hash = Some(sha256_hex(token.as_bytes()));
    next.spec_hash = Some(desired_hash);
    next.provisioned_at = Some(crate::util::now_micro());
    next.phase = Some(WorkspacePhase::Provisioning);
    next.image = Some(image.to_string()).filter(|i| !i.is_empty());
    let msg = match pass.kind {
        Backend::Docker => format!("{}: starting a container from {image}", reason.reason()),
        Backend::Kubernetes => format!("{}: starting a Pod from {image}", reason.reason()),
        Backend::ControlPlane => format!(
            "{}: provisioning an instance through the control plane",
            reason.reason()
        ),
    };
    next.message = Some(msg.clone());
    set_valid(pass, (ConditionStatus::False, reason.reason(), &msg));
    // Heartbeat fields of the previous container no longer apply.
    let reset = json!({"errorRate": null, "sampleError": null, "runtimeState": null, "activeTasks": null, "currentTask": null});
    write(ctx, &pass.ws, &pass.next, Some(reset)).await?;
    tracing::info!(event = "provision.start", workspace = %pass.w.name, uid = %pass.w.uid, reason = reason.reason(), image = %image, "provisioning");
    event(ctx, &pass.ws, EventType::Normal, reason.reason(), msg);
    Ok(token)
}

fn start_spec(
    pass: &Pass,
    desired: Desired,
    image: String,
    platform: Option<String>,
    token: String,
) -> StartSpec {
    let ws = &pass.ws;
    let mut files = desired.files;
    files.push(ConfigFile {
        path: ".auth_token".into(),
        content: token.into_bytes(),
        mode: 0o600,
    });
    StartSpec {
        workspace: pass.w.clone(),
        runtime: ws.spec.runtime.clone().unwrap_or_else(|| "echo".into()),
        image,
        env: desired.env.into_iter().collect(),
        tier: desired.tier,
        memory_mib: None,
        cpus: None,
        files,
        workspace_dir: host_bind(&ws.spec),
        extra_hosts: vec!["host.docker.internal:host-gateway".into()],
        platform,
    }
}

/// The host dir bound at `/workspace` and whether it is read-only: `workspaceAccess: none`
/// binds nothing, unset keeps the read-only default (ADR 0047).
fn host_bind(spec: &crate::resources::WorkspaceSpec) -> Option<(PathBuf, bool)> {
    use crate::resources::WorkspaceAccess;
    let dir = spec.workspace_dir.as_ref()?;
    match spec.workspace_access {
        Some(WorkspaceAccess::None) => None,
        Some(WorkspaceAccess::ReadWrite) => Some((PathBuf::from(dir), false)),
        Some(WorkspaceAccess::ReadOnly) | None => Some((PathBuf::from(dir), true)),
    }
}

/// Starts and records the container (or instance); a failure the backend calls permanent
/// fails the record (and is retried when it may pass).
async fn start(
    ctx: &Context,
    backend: &dyn WorkspaceBackend,
    mut pass: Pass,
    spec: &StartSpec,
) -> Result<Action, WorkspaceError> {
    let t = Instant::now();
    let started = match backend.ensure_started(spec).await {
        Ok(s) => s,
        Err(e) => {
            let Some(f) = plan::start_failure(pass.kind == Backend::ControlPlane, &e) else {
                return Err(e.into());
            };
            tracing::warn!(workspace = %pass.w.name, backend = kind_label(pass.kind), error = %e, "provision failed");
            fail(ctx, pass, permanent(f.reason, f.message)).await?;
            return if f.retry {
                Err(e.into())
            } else {
                Ok(Action::await_change())
            };
        }
    };
    match pass.kind {
        Backend::Docker | Backend::Kubernetes => {
            pass.next.container_id = Some(started.container_id.clone())
        }
        // Recorded at once: every later call uses it (ADR 0035).
        Backend::ControlPlane => pass.next.instance_id = Some(started.container_id.clone()),
    }
    pass.next.url = Some(started.host_url.clone());
    if let Some(a) = pass.ws.annotations().get(RESTART_ANNOTATION) {
        pass.next.restarted_at = Some(a.clone());
    }
    write(ctx, &pass.ws, &pass.next, None).await?;
    tracing::info!(event = "provision.started", workspace = %pass.w.name, backend = kind_label(pass.kind), id = %started.container_id, ms = t.elapsed().as_millis() as u64, "{} started", noun(pass.kind));
    Ok(Action::requeue(
        ctx.settings.provision_timeout.min(Duration::from_secs(30)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{WorkspaceAccess, WorkspaceSpec};

    #[test]
    fn access_none_binds_nothing() {
        let spec = |access| WorkspaceSpec {
            workspace_dir: Some("/srv/w".into()),
            workspace_access: access,
            ..Default::default()
        };
        assert_eq!(host_bind(&spec(Some(WorkspaceAccess::None))), None);
        assert_eq!(
            host_bind(&spec(Some(WorkspaceAccess::ReadWrite))),
            Some((PathBuf::from("/srv/w"), false))
        );
        assert_eq!(
            host_bind(&spec(Some(WorkspaceAccess::ReadOnly))),
            Some((PathBuf::from("/srv/w"), true))
        );
        assert_eq!(
            host_bind(&spec(None)),
            Some((PathBuf::from("/srv/w"), true))
        );
        assert_eq!(host_bind(&WorkspaceSpec::default()), None);
    }
}
