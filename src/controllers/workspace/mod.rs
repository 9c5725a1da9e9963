//! The Workspace controller: converges each Workspace record to a running agent — a Docker
//! container, or an EC2 instance through the control plane (`spec.backend`; ADR 0006,
//! ADR 0035). The finalizer guards the container and volume, or the instance.
//!
//! A pass reads as named steps (ADR 0045): [`observe`] (the record, its runtime, Secrets and
//! what runs), [`validate`] (a permanent problem fails the record until it changes), [`plan`]
//! (pure: what to do), [`act`] (on the workspace's backend) and [`report`] (status and Events).
//! The controller kit wraps every pass (span, metrics, finalizer, backoff).

mod act;
mod cleanup;
pub mod config_yaml;
pub mod env;
pub mod files;
mod observe;
pub mod plan;
mod provision;
mod report;
mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::Event as Finalize;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use super::kit::{self, Backoff, FinalizerError, Reconciler, Reporter};
use crate::backends::{BackendError, Backends, Presence, WorkspaceRef};
use crate::resources::names::RESTART_ANNOTATION;
use crate::resources::{Backend, Workspace, WorkspaceStatus};
use crate::telemetry::Metrics;
use observe::{Pass, Target};
use plan::Step;
use validate::permanent;

/// Finalizer guarding the container and volume.
pub const FINALIZER: &str = "molecule.ai/workspace-cleanup";
/// Runtimes that need no Runtime record.
pub const BUILTIN_RUNTIMES: &[&str] = &["echo", "external"];

/// Errors of the Workspace controller; `category` is the Event reason and metric label.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Finalizer(#[from] FinalizerError),
    #[error("the record has no uid")]
    NoUid,
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
}

impl WorkspaceError {
    pub fn category(&self) -> &'static str {
        match self {
            WorkspaceError::Kube(_) => "ApiError",
            WorkspaceError::Backend(e) => e.category(),
            WorkspaceError::Finalizer(_) => "FinalizerError",
            WorkspaceError::NoUid => "NoUid",
            WorkspaceError::Image(e) => e.category(),
        }
    }
}

impl kit::Failure for WorkspaceError {
    fn category(&self) -> &'static str {
        WorkspaceError::category(self)
    }
}

/// Tunables of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where agents reach `/registry/*`.
    pub platform_url: String,
    /// Heartbeat interval agents are told to use.
    pub heartbeat_seconds: u64,
    /// No heartbeat for this long: Offline, then restart (180 s by default).
    pub heartbeat_timeout: Duration,
    /// Not Online this long after provisioning: Failed (10 min by default).
    pub provision_timeout: Duration,
    /// Root that `spec.files.filesDir` is confined to.
    pub template_root: PathBuf,
    /// The binary packed into the echo image.
    pub agent_binary: PathBuf,
    /// Where agents on control-plane instances reach `/registry/*` (`None`: `platform_url`).
    pub control_plane_platform_url: Option<String>,
    /// Where agents in Pods reach `/registry/*` (`None`: `platform_url`; ADR 0057).
    pub kubernetes_platform_url: Option<String>,
    /// Tiers 3 and 4 may run as privileged Pods (`--kubernetes-allow-privileged`).
    pub kubernetes_allow_privileged: bool,
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub backends: Backends,
    pub docker: bollard::Docker,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::Audit,
    /// Image resolution, shared with the Runtime controller (ADR 0030).
    pub images: Arc<crate::images::Images>,
    /// Span, metrics and per-object retry backoff of every pass (ADR 0045): 500 ms, 1 s, 2 s …
    /// capped at 5 min, with jitter, started over after the next successful pass.
    pub kit: Reconciler,
    /// Status writes and Events.
    pub report: Reporter,
    /// Earliest time of the next automatic restart, per uid.
    restarts: Mutex<HashMap<String, Instant>>,
    /// The plugin registry and the PluginInstall cache: the `local://` plugins of a
    /// workspace's PluginInstalls are placed before its first start (ADR 0056). `None`: they
    /// land only through their installs.
    pub plugins: Option<FirstStartPlugins>,
    /// The process's Runtime cache (ADR 0025); `None`: each pass reads the record from the API.
    pub runtimes: Option<kube::runtime::reflector::Store<crate::resources::Runtime>>,
}

/// What a first start reads its plugins from (ADR 0056).
pub struct FirstStartPlugins {
    pub fetcher: crate::plugins::Fetcher,
    /// The process's one PluginInstall cache (ADR 0025).
    pub installs: kube::runtime::reflector::Store<crate::resources::PluginInstall>,
}

impl Context {
    pub fn new(
        client: Client,
        backends: Backends,
        images: Arc<crate::images::Images>,
        recorder: Recorder,
        settings: Settings,
        metrics: Arc<Metrics>,
        audit: crate::audit::Audit,
    ) -> Self {
        Context {
            report: Reporter::with_recorder(
                client.clone(),
                recorder,
                "Reconcile",
                report::STATUS_FIELDS,
            ),
            kit: Reconciler::new(
                "workspace",
                metrics.clone(),
                Backoff::new(Duration::from_millis(500), Duration::from_secs(300)),
            ),
            client,
            backends,
            docker: images.docker.clone(),
            settings,
            metrics,
            audit,
            images,
            restarts: Mutex::default(),
            plugins: None,
            runtimes: None,
        }
    }

    /// This context, placing plugins from `fetcher`'s registry before first starts, for the
    /// PluginInstalls `installs` holds.
    pub fn with_plugins(
        mut self,
        fetcher: crate::plugins::Fetcher,
        installs: kube::runtime::reflector::Store<crate::resources::PluginInstall>,
    ) -> Self {
        self.plugins = Some(FirstStartPlugins { fetcher, installs });
        self
    }

    /// This context, reading Runtime records from `cache` instead of the API.
    pub fn with_runtimes(
        mut self,
        cache: kube::runtime::reflector::Store<crate::resources::Runtime>,
    ) -> Self {
        self.runtimes = Some(cache);
        self
    }

    /// When the next automatic restart of `uid` may happen (`None`: at once).
    fn restart_at(&self, uid: &str) -> Option<Instant> {
        self.restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .copied()
    }

    fn schedule_restart(&self, uid: &str, at: Instant) {
        self.restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), at);
    }

    fn forget_restart(&self, uid: &str) {
        self.restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}

/// The Workspaces that name `runtime` (those with no `spec.runtime` run `echo`): the ones a
/// Runtime record's arrival, change or deletion concerns.
pub fn naming_runtime(
    workspaces: &kube::runtime::reflector::Store<Workspace>,
    runtime: &str,
) -> Vec<kube::runtime::reflector::ObjectRef<Workspace>> {
    workspaces
        .state()
        .iter()
        .filter(|w| w.spec.runtime.as_deref().unwrap_or("echo") == runtime)
        .map(|w| kube::runtime::reflector::ObjectRef::from_obj(w.as_ref()))
        .collect()
}

/// Entry point for kube-runtime: one pass under the finalizer, wrapped by the kit.
pub async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, WorkspaceError> {
    let ns = ws.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &ns);
    let object = ws.clone();
    ctx.kit
        .run(
            object.as_ref(),
            kit::finalized(&api, FINALIZER, ws, |event| async {
                match event {
                    Finalize::Apply(ws) => apply(ws, ctx.clone()).await,
                    Finalize::Cleanup(ws) => cleanup::cleanup(ws, ctx.clone()).await,
                }
            }),
        )
        .await
}

/// Requeue policy for errors (permanent problems never get here: they set a condition and wait
/// for a change). Each object backs off on its own (see [`Context::kit`]).
pub fn error_policy(ws: Arc<Workspace>, err: &WorkspaceError, ctx: Arc<Context>) -> Action {
    ctx.kit.retry(ws.as_ref(), err)
}

/// One pass over a live record: observe → validate → plan → act → report.
async fn apply(cached: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, WorkspaceError> {
    let Some(mut pass) = observe::record(&ctx, &cached).await? else {
        return Ok(Action::await_change());
    };
    let backend = match validate::backend(&ctx, pass.kind) {
        Ok(b) => b,
        Err(p) => return report::fail(&ctx, pass, p).await,
    };
    act::leave_other_backend(&ctx, &pass.w, pass.kind, &mut pass.next).await?;
    match pass.kind {
        Backend::Docker => {
            pass.next.container_name = Some(pass.w.container_name());
            pass.next.volume_name = Some(pass.w.volume_name());
        }
        Backend::Kubernetes => {
            pass.next.container_name = Some(act::pod_reference(&pass.w));
            pass.next.volume_name = Some(pass.w.volume_name());
        }
        Backend::ControlPlane => {}
    }
    let (target, needs) = match observe::target(&pass.ws, &ctx, pass.kind).await? {
        Ok(t) => t,
        Err(p) if p.pending => {
            let timeout = ctx.settings.provision_timeout;
            return report::unresolved(&ctx, pass, p, timeout).await;
        }
        Err(p) => return report::fail(&ctx, pass, p).await,
    };
    let tier = match validate::placement(&pass, ctx.settings.kubernetes_allow_privileged) {
        Ok(t) => t,
        Err(p) => return report::fail(&ctx, pass, p).await,
    };
    if pass.ws.spec.paused {
        return act::pause(&ctx, pass, backend.as_ref(), &target).await;
    }
    let mut config_files = match validate::user_files(&pass.ws, &ctx.settings.template_root) {
        Ok(f) => f,
        Err(e) => return report::fail(&ctx, pass, permanent("InvalidConfig", e.to_string())).await,
    };
    let referenced = env::referenced_secrets(&pass.w.name, &pass.ws.spec);
    let secrets = observe::load_secrets(&ctx.client, &pass.w.namespace, &referenced).await?;
    let platform_url = platform_url(&ctx.settings, pass.kind);
    let env = match validate::env(&pass, &secrets, platform_url, tier, &needs.required_env) {
        Ok(e) => e,
        Err(p) => {
            act::stop_invalid(&mut pass, backend.as_ref(), &target).await?;
            return report::fail(&ctx, pass, p).await;
        }
    };
    pass.next.missing_env = vec![];
    let (want, image_key) = match target {
        Target::External => return act::external(&ctx, pass).await,
        Target::Image { want, key } => (want, key),
    };
    match files::agent_config(
        &pass.ws,
        &pass.w.uid,
        platform_url,
        ctx.settings.heartbeat_seconds,
    ) {
        Ok(f) => config_files.push(f),
        Err(e) => return report::fail(&ctx, pass, permanent("InvalidConfig", e.to_string())).await,
    }
    let desired = act::Desired {
        hash: plan::desired_hash(&image_key, tier, &env, &config_files),
        want,
        tier,
        env,
        files: config_files,
    };
    let provision_timeout = needs
        .provision_timeout
        .unwrap_or(ctx.settings.provision_timeout);
    let presence = backend.inspect(&pass.w).await?;
    let step = decide(&ctx, &pass, &presence, &desired.hash, provision_timeout);
    match step {
        Step::Observe {
            phase,
            reason,
            message,
        } => {
            let seen = report::Seen {
                phase,
                reason,
                message,
            };
            report::phase(&ctx, pass, &presence, seen, provision_timeout).await
        }
        Step::Adopt { container_id } => act::adopt(&ctx, pass, &presence, container_id).await,
        Step::Provision(reason) => {
            if reason.is_recovery()
                && let Some(wait) = act::recovery_wait(&ctx, &mut pass, &reason, &presence).await?
            {
                return Ok(Action::requeue(wait));
            }
            act::provision(&ctx, backend.as_ref(), pass, reason, &presence, desired).await
        }
    }
}

/// Plan: what to do, from what was observed (pure; see [`plan::decide`]).
fn decide(
    ctx: &Context,
    pass: &Pass,
    presence: &Presence,
    desired_hash: &str,
    provision_timeout: Duration,
) -> Step {
    plan::decide(&plan::Observed {
        status: &pass.before,
        presence,
        recorded: recorded(&pass.before, pass.kind),
        desired_hash,
        restart_annotation: pass
            .ws
            .annotations()
            .get(RESTART_ANNOTATION)
            .map(String::as_str),
        now: pass.now_s,
        heartbeat_timeout_secs: ctx.settings.heartbeat_timeout.as_secs() as i64,
        provision_timeout_secs: provision_timeout.as_secs() as i64,
    })
}

/// Where the workspace's agent reports to.
fn platform_url(settings: &Settings, kind: Backend) -> &str {
    match kind {
        Backend::Docker => settings.platform_url.as_str(),
        Backend::ControlPlane => settings
            .control_plane_platform_url
            .as_deref()
            .unwrap_or(&settings.platform_url),
        Backend::Kubernetes => settings
            .kubernetes_platform_url
            .as_deref()
            .unwrap_or(&settings.platform_url),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn wref(ws: &Workspace) -> Result<WorkspaceRef, WorkspaceError> {
    Ok(WorkspaceRef {
        uid: ws.uid().ok_or(WorkspaceError::NoUid)?,
        namespace: ws.namespace().unwrap_or_else(|| "default".into()),
        name: ws.name_any(),
        instance_id: ws.status.as_ref().and_then(|s| s.instance_id.clone()),
    })
}

/// How the controller talks about one backend's runtime unit.
fn noun(kind: Backend) -> &'static str {
    match kind {
        Backend::Docker => "container",
        Backend::ControlPlane => "instance",
        Backend::Kubernetes => "Pod",
    }
}

fn kind_label(kind: Backend) -> &'static str {
    match kind {
        Backend::Docker => "docker",
        Backend::ControlPlane => "controlPlane",
        Backend::Kubernetes => "kubernetes",
    }
}

/// What the record says runs on `kind`: the container id or the instance id.
fn recorded(st: &WorkspaceStatus, kind: Backend) -> Option<&str> {
    match kind {
        Backend::Docker | Backend::Kubernetes => st.container_id.as_deref(),
        Backend::ControlPlane => st.instance_id.as_deref().filter(|i| !i.trim().is_empty()),
    }
}
