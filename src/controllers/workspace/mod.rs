//! The Workspace controller: converges each Workspace record to a running agent — a Docker
//! container, or an EC2 instance through the control plane (`spec.backend`; ADR 0006,
//! ADR 0035). `reconcile` is a thin driver: read the record, its Secrets and the runtime's
//! presence; decide with the pure `plan`; act on the workspace's backend; write status and
//! Events. The finalizer guards the container and volume, or the instance.

pub mod env;
pub mod files;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalize, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::backends::{
    BackendError, Backends, ConfigFile, Presence, StartSpec, Tier, WorkspaceBackend, WorkspaceRef,
};
use crate::resources::names::RESTART_ANNOTATION;
use crate::resources::{
    Backend, Condition, ConditionStatus, Runtime, Workspace, WorkspacePhase, WorkspaceStatus,
};
use crate::telemetry::Metrics;
use plan::{ProvisionReason, Step};

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
    #[error("finalizer error: {0}")]
    Finalizer(String),
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
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub backends: Backends,
    pub docker: bollard::Docker,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::Audit,
    /// Image resolution, shared with the Runtime controller (ADR 0030).
    pub images: Arc<crate::images::Images>,
    /// Earliest time of the next automatic restart, per uid.
    backoff: Mutex<HashMap<String, Instant>>,
    /// Retry delays after failed reconciles, per object; dropped on the next success.
    retries: Mutex<HashMap<String, backon::ExponentialBackoff>>,
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
            client,
            backends,
            docker: images.docker.clone(),
            recorder,
            settings,
            metrics,
            audit,
            images,
            backoff: Mutex::default(),
            retries: Mutex::default(),
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What the record asks the backend to run.
enum Target {
    External,
    /// A container (or instance) from the image `want` resolves to when it is provisioned;
    /// `key` stands for that image in the desired hash (the explicit image, the echo tag, or
    /// the runtime name — a runtime's new image reaches running workspaces through a roll, one
    /// at a time, not through every workspace noticing at once).
    Image {
        want: ImageWant,
        key: String,
    },
}

/// Where a workspace's image comes from.
enum ImageWant {
    /// `spec.image`.
    Explicit(String),
    /// The runtime's resolution (through the Runtime record, if any).
    Runtime {
        name: String,
        record: Option<Box<Runtime>>,
    },
    /// The control plane picks the machine image by runtime name (and `spec.image`, if set):
    /// nothing is pulled or built here.
    ControlPlane(Option<String>),
}

/// What a workspace's Runtime record asks of it.
struct RuntimeNeeds {
    /// Env names every workspace of the runtime must have, checked before anything is created.
    required_env: Vec<String>,
    /// The runtime's own provision timeout (e.g. hermes 30 min), overriding the default.
    provision_timeout: Option<Duration>,
}

/// A permanent problem with the record: Failed until the record changes.
struct Permanent {
    reason: &'static str,
    message: String,
    missing_env: Vec<String>,
}

fn permanent(reason: &'static str, message: impl Into<String>) -> Permanent {
    Permanent {
        reason,
        message: message.into(),
        missing_env: vec![],
    }
}

/// Entry point for kube-runtime.
pub async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, WorkspaceError> {
    let started = Instant::now();
    let ns = ws.namespace().unwrap_or_else(|| "default".into());
    let name = ws.name_any();
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ws, |event| async {
        match event {
            Finalize::Apply(ws) => apply(ws, ctx.clone()).await,
            Finalize::Cleanup(ws) => cleanup(ws, ctx.clone()).await,
        }
    })
    .await
    .or_else(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => Err(e),
        // A queued pass over a record that another pass already released: it is gone, which is
        // what the cleanup was for.
        kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(e)) if e.code == 404 => {
            Ok(Action::await_change())
        }
        other => Err(WorkspaceError::Finalizer(other.to_string())),
    });
    let outcome = if result.is_ok() {
        ctx.retries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&retry_key(&ns, &name));
        "ok"
    } else {
        "error"
    };
    ctx.metrics.inc(
        "molecule_reconcile_total",
        &[("controller", "workspace"), ("result", outcome)],
    );
    ctx.metrics.observe(
        "molecule_reconcile_seconds",
        &[("controller", "workspace")],
        started.elapsed().as_secs_f64(),
    );
    result
}

fn retry_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Requeue policy for errors (permanent problems never get here: they set a condition and wait
/// for a change). Each object backs off on its own — 500 ms, 1 s, 2 s … capped at 5 min, with
/// jitter — and starts over after its next successful reconcile.
pub fn error_policy(ws: Arc<Workspace>, err: &WorkspaceError, ctx: Arc<Context>) -> Action {
    ctx.metrics.inc(
        "molecule_reconcile_errors_total",
        &[("controller", "workspace"), ("category", err.category())],
    );
    let key = retry_key(&ws.namespace().unwrap_or_default(), &ws.name_any());
    let delay = ctx
        .retries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert_with(|| {
            use backon::BackoffBuilder;
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(300))
                .with_jitter()
                .without_max_times()
                .build()
        })
        .next()
        .unwrap_or(Duration::from_secs(300));
    tracing::warn!(workspace = %ws.name_any(), category = err.category(), error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed; will retry");
    Action::requeue(delay)
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
    }
}

fn kind_label(kind: Backend) -> &'static str {
    match kind {
        Backend::Docker => "docker",
        Backend::ControlPlane => "controlPlane",
    }
}

/// What the record says runs on `kind`: the container id or the instance id.
fn recorded(st: &WorkspaceStatus, kind: Backend) -> Option<&str> {
    match kind {
        Backend::Docker => st.container_id.as_deref(),
        Backend::ControlPlane => st.instance_id.as_deref().filter(|i| !i.trim().is_empty()),
    }
}

async fn load_secrets(client: &Client, ns: &str) -> Result<env::Secrets, WorkspaceError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut out = env::Secrets::new();
    for s in api.list(&ListParams::default()).await?.items {
        let mut kv = BTreeMap::new();
        for (k, v) in s.data.unwrap_or_default() {
            if let Ok(text) = String::from_utf8(v.0) {
                kv.insert(k, text);
            }
        }
        out.insert(s.metadata.name.unwrap_or_default(), kv);
    }
    Ok(out)
}

/// Resolves the runtime to an image (or none, for external agents).
async fn target(
    ws: &Workspace,
    ctx: &Context,
    kind: Backend,
) -> Result<Result<(Target, RuntimeNeeds), Permanent>, WorkspaceError> {
    let runtime = ws.spec.runtime.as_deref().unwrap_or("echo");
    let runtimes: Api<Runtime> = Api::all(ctx.client.clone());
    // Only a possible object name is looked up: anything else (`../x`, spaces, ...) is simply
    // an unknown runtime, never part of an API path.
    let nameable = !runtime.is_empty()
        && runtime.len() <= 253
        && runtime
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let record = if nameable {
        runtimes.get_opt(runtime).await?
    } else {
        None
    };
    let required = RuntimeNeeds {
        required_env: record
            .as_ref()
            .map(|r| r.spec.required_env.clone())
            .unwrap_or_default(),
        provision_timeout: record
            .as_ref()
            .and_then(|r| r.spec.provision_timeout_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64)),
    };
    if runtime == "external" {
        return Ok(Ok((Target::External, required)));
    }
    let explicit = ws.spec.image.clone().filter(|i| !i.is_empty());
    let is_builtin_echo = runtime == crate::images::plan::BUILTIN_ECHO
        && record
            .as_ref()
            .is_none_or(|r| r.spec.image.is_none() && r.spec.local_build.is_none());
    if kind == Backend::ControlPlane && (is_builtin_echo || record.is_some() || explicit.is_some())
    {
        let key = explicit
            .clone()
            .unwrap_or_else(|| format!("runtime:{runtime}"));
        return Ok(Ok((
            Target::Image {
                want: ImageWant::ControlPlane(explicit),
                key,
            },
            required,
        )));
    }
    if let Some(img) = explicit {
        return Ok(Ok((
            Target::Image {
                want: ImageWant::Explicit(img.clone()),
                key: img,
            },
            required,
        )));
    }
    if is_builtin_echo {
        return match ctx.images.echo_image().await {
            Ok(tag) => Ok(Ok((
                Target::Image {
                    want: ImageWant::Runtime {
                        name: runtime.to_string(),
                        record: record.map(Box::new),
                    },
                    key: tag,
                },
                required,
            ))),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => Ok(Err(permanent(
                "ImageBuildFailed",
                format!(
                    "the built-in echo image could not be built: {}",
                    e.category()
                ),
            ))),
        };
    }
    if record.is_some() {
        return Ok(Ok((
            Target::Image {
                want: ImageWant::Runtime {
                    name: runtime.to_string(),
                    record: record.map(Box::new),
                },
                key: format!("runtime:{runtime}"),
            },
            required,
        )));
    }
    let mut known: Vec<String> = BUILTIN_RUNTIMES.iter().map(|s| s.to_string()).collect();
    for r in runtimes.list(&ListParams::default()).await?.items {
        known.push(r.name_any());
    }
    known.sort();
    known.dedup();
    let shown: String = runtime.chars().take(80).collect();
    let why = format!(
        "unknown runtime {shown:?}; known runtimes: {}",
        known.join(", ")
    );
    Ok(Err(permanent("UnknownRuntime", why)))
}

/// The controller-owned part of status, as a merge patch (fields the registry endpoints write —
/// heartbeats, agent card — are left alone).
fn status_patch(s: &WorkspaceStatus) -> Value {
    json!({ "status": super::report::owned_fields(s, &[
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
    ]) })
}

async fn write_status(
    ctx: &Context,
    ws: &Workspace,
    next: &WorkspaceStatus,
    extra: Option<Value>,
) -> Result<(), WorkspaceError> {
    let mut patch = status_patch(next);
    if extra.is_none() && patch == status_patch(&ws.status.clone().unwrap_or_default()) {
        return Ok(()); // nothing the controller owns changed: no write, no watch event
    }
    let api: Api<Workspace> = Api::namespaced(
        ctx.client.clone(),
        &ws.namespace().unwrap_or_else(|| "default".into()),
    );
    if let Some(Value::Object(extra)) = extra
        && let Some(st) = patch["status"].as_object_mut()
    {
        st.extend(extra);
    }
    api.patch_status(
        &ws.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// Publishes a k8s Event in the background: Events explain, they never gate progress, so the
/// reconcile does not wait for the API round trip.
async fn event(ctx: &Context, ws: &Workspace, type_: EventType, reason: &str, note: String) {
    super::report::publish(
        &ctx.recorder,
        ws.object_ref(&()),
        type_,
        reason,
        note,
        "Reconcile",
    );
}

fn set_conditions(
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

/// Reports a permanent problem: phase Failed, conditions, an Event on change; no container.
async fn fail(
    ctx: &Context,
    ws: &Workspace,
    mut next: WorkspaceStatus,
    p: Permanent,
    generation: i64,
    now: &str,
) -> Result<Action, WorkspaceError> {
    let before = ws.status.clone().unwrap_or_default();
    next.phase = Some(WorkspacePhase::Failed);
    next.message = Some(p.message.clone());
    next.missing_env = p.missing_env;
    set_conditions(
        &mut next,
        generation,
        now,
        (ConditionStatus::False, p.reason, &p.message),
        (ConditionStatus::False, p.reason, &p.message),
    );
    write_status(ctx, ws, &next, None).await?;
    if before.phase != Some(WorkspacePhase::Failed)
        || before.message.as_deref() != Some(p.message.as_str())
    {
        tracing::info!(workspace = %ws.name_any(), reason = p.reason, "workspace failed");
        event(ctx, ws, EventType::Warning, p.reason, p.message).await;
    }
    Ok(Action::await_change())
}

/// The user-supplied config files: `filesDir` (confined to the template root) plus inline files.
fn user_files(
    ws: &Workspace,
    template_root: &std::path::Path,
) -> Result<Vec<ConfigFile>, files::FilesError> {
    let mut out = match ws.spec.files.as_ref().and_then(|f| f.files_dir.as_deref()) {
        Some(dir) => files::read_files_dir(&files::resolve_files_dir(template_root, dir)?)?,
        None => vec![],
    };
    out.extend(files::inline_files(ws)?);
    Ok(out)
}

async fn apply(cached: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, WorkspaceError> {
    // Decide from the record as it is now, not as the watch cache last saw it: a reconcile
    // queued by a Docker event can run before the cache has our own previous status write, and
    // a stale `containerId` would make a fresh container look unrecorded and get replaced.
    let w = wref(&cached)?;
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &w.namespace);
    let ws = match super::report::fresh(&api, &cached).await? {
        Some(fresh) if fresh.metadata.deletion_timestamp.is_none() => Arc::new(fresh),
        // Gone or re-created (its own events follow), or being deleted (the deletion's watch
        // event runs cleanup).
        _ => return Ok(Action::await_change()),
    };
    let generation = ws.metadata.generation.unwrap_or(1);
    let now = crate::util::now_rfc3339();
    let now_s = jiff::Timestamp::now().as_second();
    let before = ws.status.clone().unwrap_or_default();
    let mut next = before.clone();
    next.observed_generation = Some(generation);
    let kind = ws.spec.backend.unwrap_or_default();
    let Some(backend) = ctx.backends.get(kind).cloned() else {
        return fail(
            &ctx,
            &ws,
            next,
            permanent(
                "ControlPlaneNotConfigured",
                "spec.backend is controlPlane but this operator has no control plane configured (serve --control-plane-url)",
            ),
            generation,
            &now,
        )
        .await;
    };
    leave_other_backend(&ctx, &w, kind, &mut next).await?;
    if kind == Backend::Docker {
        next.container_name = Some(w.container_name());
        next.volume_name = Some(w.volume_name());
    }

    let (target, needs) = match target(&ws, &ctx, kind).await? {
        Ok(t) => t,
        Err(p) => return fail(&ctx, &ws, next, p, generation, &now).await,
    };
    let runtime_required = needs.required_env;
    let provision_timeout = needs
        .provision_timeout
        .unwrap_or(ctx.settings.provision_timeout);
    if kind == Backend::ControlPlane && ws.spec.workspace_dir.is_some() {
        return fail(
            &ctx,
            &ws,
            next,
            permanent(
                "InvalidConfig",
                "workspaceDir mounts a host directory and is not available with backend controlPlane",
            ),
            generation,
            &now,
        )
        .await;
    }
    let Some(tier) = Tier::from_number(ws.spec.tier.unwrap_or(2)) else {
        return fail(
            &ctx,
            &ws,
            next,
            permanent("InvalidConfig", "tier must be between 1 and 4"),
            generation,
            &now,
        )
        .await;
    };

    // Pause: stop the container and keep the volume; terminate the instance.
    if ws.spec.paused {
        if matches!(target, Target::Image { .. }) {
            backend.stop(&w).await?;
        }
        let message = match kind {
            Backend::Docker => "paused: the container is stopped and the volume kept",
            Backend::ControlPlane => {
                next.instance_id = None;
                "paused: the instance is terminated; resuming provisions a new one"
            }
        };
        next.phase = Some(WorkspacePhase::Paused);
        next.message = Some(message.into());
        set_conditions(
            &mut next,
            generation,
            &now,
            (ConditionStatus::False, "Paused", "paused by spec.paused"),
            (ConditionStatus::True, "Valid", "configuration is valid"),
        );
        write_status(&ctx, &ws, &next, None).await?;
        if before.phase != Some(WorkspacePhase::Paused) {
            event(
                &ctx,
                &ws,
                EventType::Normal,
                "Paused",
                match kind {
                    Backend::Docker => "container stopped; volume kept",
                    Backend::ControlPlane => "instance terminated",
                }
                .into(),
            )
            .await;
        }
        return Ok(Action::await_change());
    }

    // Config files and env, before anything is created.
    let mut config_files = match user_files(&ws, &ctx.settings.template_root) {
        Ok(f) => f,
        Err(e) => {
            return fail(
                &ctx,
                &ws,
                next,
                permanent("InvalidConfig", e.to_string()),
                generation,
                &now,
            )
            .await;
        }
    };
    let secrets = load_secrets(&ctx.client, &w.namespace).await?;
    let platform_url = match kind {
        Backend::Docker => ctx.settings.platform_url.as_str(),
        Backend::ControlPlane => ctx
            .settings
            .control_plane_platform_url
            .as_deref()
            .unwrap_or(&ctx.settings.platform_url),
    };
    let env_ctx = env::EnvContext {
        workspace: &w.name,
        workspace_id: &w.uid,
        platform_url,
        tier: tier.number(),
        runtime_required: &runtime_required,
    };
    let env = match env::assemble(&ws.spec, &secrets, &env_ctx) {
        Ok(e) => e,
        Err(problems) => {
            let missing = problems
                .iter()
                .find_map(|p| {
                    if let env::EnvProblem::Missing(m) = p {
                        Some(m.clone())
                    } else {
                        None
                    }
                })
                .unwrap_or_default();
            let message = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let reason = if missing.is_empty() {
                "InvalidEnv"
            } else {
                "MissingEnv"
            };
            if matches!(target, Target::Image { .. }) {
                backend.stop(&w).await?;
                if kind == Backend::ControlPlane {
                    next.instance_id = None;
                }
            }
            return fail(
                &ctx,
                &ws,
                next,
                Permanent {
                    reason,
                    message,
                    missing_env: missing,
                },
                generation,
                &now,
            )
            .await;
        }
    };
    next.missing_env = vec![];

    let (want, image_key) = match target {
        Target::External => return external(&ctx, &ws, &w, next, generation, &now, now_s).await,
        Target::Image { want, key } => (want, key),
    };
    let agent = files::AgentConfig {
        platform_url,
        heartbeat_seconds: ctx.settings.heartbeat_seconds,
    };
    config_files.push(ConfigFile {
        path: "config.yaml".into(),
        content: files::config_yaml(&ws, &w.uid, &agent).into_bytes(),
        mode: 0o644,
    });
    let desired_hash = {
        let mut h = Sha256::new();
        h.update(image_key.as_bytes());
        h.update(tier.number().to_le_bytes());
        for (k, v) in &env {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        for f in &config_files {
            h.update(f.path.as_bytes());
            h.update(sha256_hex(&f.content).as_bytes());
        }
        hex::encode(h.finalize())[..16].to_string()
    };

    let presence = backend.inspect(&w).await?;
    let observed = plan::Observed {
        status: &before,
        presence: &presence,
        recorded: recorded(&before, kind),
        desired_hash: &desired_hash,
        restart_annotation: ws.annotations().get(RESTART_ANNOTATION).map(String::as_str),
        now: now_s,
        heartbeat_timeout_secs: ctx.settings.heartbeat_timeout.as_secs() as i64,
        provision_timeout_secs: provision_timeout.as_secs() as i64,
    };
    let step = plan::decide(&observed);
    match step {
        Step::Observe {
            phase,
            reason,
            message,
        } => {
            let ready = if matches!(phase, WorkspacePhase::Online | WorkspacePhase::Degraded) {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            next.phase = Some(phase);
            next.message = Some(message.clone());
            if phase == WorkspacePhase::Online {
                next.restart_count = None;
                ctx.backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&w.uid);
            }
            if let Presence::Running {
                host_url: Some(u), ..
            } = &presence
            {
                next.url = Some(u.clone());
            }
            set_conditions(
                &mut next,
                generation,
                &now,
                (ready, reason, &message),
                (ConditionStatus::True, "Valid", "configuration is valid"),
            );
            write_status(&ctx, &ws, &next, None).await?;
            if before.phase != Some(phase) {
                let t = if matches!(phase, WorkspacePhase::Failed | WorkspacePhase::Degraded) {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                tracing::info!(workspace = %w.name, phase = ?phase, "phase changed");
                event(&ctx, &ws, t, reason, message).await;
            }
            Ok(match phase {
                // Registration wakes the controller through the watch; this requeue only
                // enforces the provision timeout.
                WorkspacePhase::Provisioning => {
                    let provisioned = next
                        .provisioned_at
                        .as_ref()
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                        .map_or(now_s, |t| t.as_second());
                    let left = provision_timeout.as_secs() as i64 - (now_s - provisioned);
                    Action::requeue(Duration::from_secs(left.clamp(1, 30) as u64))
                }
                WorkspacePhase::Failed => Action::await_change(),
                _ => Action::requeue(
                    (ctx.settings.heartbeat_timeout / 3)
                        .clamp(Duration::from_secs(1), Duration::from_secs(60)),
                ),
            })
        }
        Step::Adopt { container_id } => {
            tracing::info!(event = "provision.adopt", workspace = %w.name, container = %container_id, "recording a container of the current provision whose id was never written");
            match kind {
                Backend::Docker => next.container_id = Some(container_id),
                Backend::ControlPlane => next.instance_id = Some(container_id),
            }
            if let Presence::Running {
                host_url: Some(u), ..
            } = &presence
            {
                next.url = Some(u.clone());
            }
            if let Some(a) = ws.annotations().get(RESTART_ANNOTATION) {
                next.restarted_at = Some(a.clone());
            }
            write_status(&ctx, &ws, &next, None).await?;
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Step::Provision(reason) => {
            if reason.is_recovery() {
                let n = before.restart_count.unwrap_or(0) + 1;
                if before.phase != Some(WorkspacePhase::Offline) {
                    // First notice: report Offline and schedule the restart with backoff.
                    let delay = Duration::from_secs(plan::restart_backoff_secs(n) as u64);
                    ctx.backoff
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(w.uid.clone(), Instant::now() + delay);
                    next.phase = Some(WorkspacePhase::Offline);
                    next.restart_count = Some(n);
                    let why = match (&reason, &presence) {
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
                        ) => {
                            format!(
                                "the container exited (code {}{}); restarting in {}s",
                                exit_code.unwrap_or(-1),
                                if *oom_killed { ", out of memory" } else { "" },
                                delay.as_secs()
                            )
                        }
                        _ => format!(
                            "the {} is gone; restarting in {}s",
                            noun(kind),
                            delay.as_secs()
                        ),
                    };
                    next.message = Some(why.clone());
                    set_conditions(
                        &mut next,
                        generation,
                        &now,
                        (ConditionStatus::False, reason.reason(), &why),
                        (ConditionStatus::True, "Valid", "configuration is valid"),
                    );
                    write_status(&ctx, &ws, &next, None).await?;
                    event(&ctx, &ws, EventType::Warning, reason.reason(), why).await;
                    return Ok(Action::requeue(delay));
                }
                let wait = ctx
                    .backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&w.uid)
                    .copied();
                if let Some(at) = wait
                    && at > Instant::now()
                {
                    return Ok(Action::requeue(at - Instant::now()));
                }
            }
            provision(
                &ctx,
                backend.as_ref(),
                kind,
                &ws,
                &w,
                next,
                reason,
                &presence,
                want,
                tier,
                env,
                config_files,
                desired_hash,
                generation,
                &now,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn provision(
    ctx: &Context,
    backend: &dyn WorkspaceBackend,
    kind: Backend,
    ws: &Workspace,
    w: &WorkspaceRef,
    mut next: WorkspaceStatus,
    reason: ProvisionReason,
    presence: &Presence,
    want: ImageWant,
    tier: Tier,
    env: BTreeMap<String, String>,
    mut config_files: Vec<ConfigFile>,
    desired_hash: String,
    generation: i64,
    now: &str,
) -> Result<Action, WorkspaceError> {
    // The image: a fresh resolution per start — moving tags re-pulled, pinned ones only when
    // missing, a template cache hit or clone + build — and its running digest (ADR 0030).
    // Control-plane instances take their machine image from the control plane.
    let prepared = match &want {
        ImageWant::ControlPlane(_) => Ok(None),
        _ if ctx.images.settings.simulated => Ok(None),
        ImageWant::Explicit(image) => ctx.images.ensure_explicit(image).await.map(Some),
        ImageWant::Runtime { name, record } => ctx
            .images
            .ensure(name, record.as_deref(), crate::images::Purpose::Start)
            .await
            .map(Some),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let message = ctx.images.mask(&e.to_string());
            tracing::warn!(workspace = %w.name, category = e.category(), error = %message, "image not ready");
            if e.is_transient() {
                event(
                    ctx,
                    ws,
                    EventType::Warning,
                    e.category(),
                    format!("{message}; retrying"),
                )
                .await;
                return Err(e.into());
            }
            return fail(
                ctx,
                ws,
                next,
                permanent(e.category(), message),
                generation,
                now,
            )
            .await;
        }
    };
    let (image, platform) = match &prepared {
        Some(p) => {
            if let Some(note) = &p.note {
                event(ctx, ws, EventType::Warning, "ImageNote", note.clone()).await;
            }
            next.image_digest = p.digest.clone();
            let platform = match p.source {
                crate::resources::ImageSource::Builtin => None,
                _ => ctx.images.settings.platform.clone(),
            };
            (p.image.clone(), platform)
        }
        // The control plane's own machine image for the runtime, or the explicit `spec.image`.
        None => match &want {
            ImageWant::ControlPlane(image) => (image.clone().unwrap_or_default(), None),
            ImageWant::Explicit(image) => (image.clone(), None),
            _ => (String::new(), None),
        },
    };
    // A new token per provision; only its hash is kept, and it is written to status before the
    // container exists, so a crash at any point is healed by the next pass (ADR 0006).
    let token = crate::util::random_token();
    next.token_hash = Some(sha256_hex(token.as_bytes()));
    next.spec_hash = Some(desired_hash);
    next.provisioned_at = Some(crate::util::now_micro());
    next.phase = Some(WorkspacePhase::Provisioning);
    next.image = Some(image.clone()).filter(|i| !i.is_empty());
    let msg = match kind {
        Backend::Docker => format!("{}: starting a container from {image}", reason.reason()),
        Backend::ControlPlane => format!(
            "{}: provisioning an instance through the control plane",
            reason.reason()
        ),
    };
    next.message = Some(msg.clone());
    set_conditions(
        &mut next,
        generation,
        now,
        (ConditionStatus::False, reason.reason(), &msg),
        (ConditionStatus::True, "Valid", "configuration is valid"),
    );
    // Heartbeat fields of the previous container no longer apply.
    let reset = json!({"errorRate": null, "sampleError": null, "runtimeState": null, "activeTasks": null, "currentTask": null});
    write_status(ctx, ws, &next, Some(reset)).await?;
    tracing::info!(event = "provision.start", workspace = %w.name, uid = %w.uid, reason = reason.reason(), image = %image, "provisioning");
    event(ctx, ws, EventType::Normal, reason.reason(), msg).await;
    if !matches!(presence, Presence::Absent) {
        tracing::info!(event = "restart.pre_stop", workspace = %w.name, backend = kind_label(kind), "removing the previous {} (a volume is kept)", noun(kind));
        backend.remove(w, false).await?;
    }
    if kind == Backend::ControlPlane {
        next.instance_id = None;
    }
    config_files.push(ConfigFile {
        path: ".auth_token".into(),
        content: token.into_bytes(),
        mode: 0o600,
    });
    let spec = StartSpec {
        workspace: w.clone(),
        runtime: ws.spec.runtime.clone().unwrap_or_else(|| "echo".into()),
        image,
        env: env.into_iter().collect(),
        tier,
        memory_mib: None,
        cpus: None,
        files: config_files,
        workspace_dir: ws.spec.workspace_dir.as_ref().map(|d| {
            (
                PathBuf::from(d),
                !matches!(
                    ws.spec.workspace_access,
                    Some(crate::resources::WorkspaceAccess::ReadWrite)
                ),
            )
        }),
        extra_hosts: vec!["host.docker.internal:host-gateway".into()],
        platform,
    };
    let t = Instant::now();
    let started = match backend.ensure_started(&spec).await {
        Ok(s) => s,
        Err(e) => {
            let Some(f) = plan::start_failure(kind == Backend::ControlPlane, &e) else {
                return Err(e.into());
            };
            tracing::warn!(workspace = %w.name, backend = kind_label(kind), error = %e, "provision failed");
            fail(
                ctx,
                ws,
                next,
                permanent(f.reason, f.message),
                generation,
                now,
            )
            .await?;
            return if f.retry {
                Err(e.into())
            } else {
                Ok(Action::await_change())
            };
        }
    };
    match kind {
        Backend::Docker => next.container_id = Some(started.container_id.clone()),
        // Recorded at once: every later call uses it (ADR 0035).
        Backend::ControlPlane => next.instance_id = Some(started.container_id.clone()),
    }
    next.url = Some(started.host_url.clone());
    if let Some(a) = ws.annotations().get(RESTART_ANNOTATION) {
        next.restarted_at = Some(a.clone());
    }
    write_status(ctx, ws, &next, None).await?;
    tracing::info!(event = "provision.started", workspace = %w.name, backend = kind_label(kind), id = %started.container_id, ms = t.elapsed().as_millis() as u64, "{} started", noun(kind));
    Ok(Action::requeue(
        ctx.settings.provision_timeout.min(Duration::from_secs(30)),
    ))
}

/// `runtime: external`: no container; a token Secret the external agent uses; Online once
/// it registers.
async fn external(
    ctx: &Context,
    ws: &Workspace,
    w: &WorkspaceRef,
    mut next: WorkspaceStatus,
    generation: i64,
    now: &str,
    now_s: i64,
) -> Result<Action, WorkspaceError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &w.namespace);
    let secret_name = format!("{}-agent-token", w.name);
    let existing = secrets.get_opt(&secret_name).await?;
    let token_matches = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get("token"))
        .map(|t| sha256_hex(&t.0))
        .is_some_and(|h| Some(h) == next.token_hash);
    if !token_matches {
        let token = crate::util::random_token();
        next.token_hash = Some(sha256_hex(token.as_bytes()));
        next.provisioned_at = Some(crate::util::now_micro());
        let owner = ws.controller_owner_ref(&()).map(|o| vec![o]);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(secret_name.clone()),
                owner_references: owner,
                labels: Some([("molecule.ai/workspace".to_string(), w.name.clone())].into()),
                ..Default::default()
            },
            string_data: Some(
                [
                    ("token".to_string(), token),
                    ("workspace_id".to_string(), w.uid.clone()),
                    (
                        "platform_url".to_string(),
                        ctx.settings.platform_url.clone(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply("molecule-workspace").force(),
                &Patch::Apply(&secret),
            )
            .await?;
    }
    next.url = ws.spec.url.clone();
    next.container_id = None;
    let timeout = ctx.settings.heartbeat_timeout.as_secs() as i64;
    let (phase, reason, message) = match plan::heartbeat_since_provision(&next) {
        Some(hb) if now_s - hb <= timeout => plan::reported_health(&next),
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
    };
    let before = next.phase;
    next.phase = Some(phase);
    next.message = Some(message.clone());
    let ready = if matches!(phase, WorkspacePhase::Online | WorkspacePhase::Degraded) {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    set_conditions(
        &mut next,
        generation,
        now,
        (ready, reason, &message),
        (ConditionStatus::True, "Valid", "configuration is valid"),
    );
    write_status(ctx, ws, &next, None).await?;
    if before != Some(phase) {
        let t = if matches!(phase, WorkspacePhase::Online | WorkspacePhase::Provisioning) {
            EventType::Normal
        } else {
            EventType::Warning
        };
        event(ctx, ws, t, reason, message).await;
    }
    Ok(Action::requeue(
        (ctx.settings.heartbeat_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(60)),
    ))
}

/// Delete (ADR 0006, 0035). Docker: remove the container, then the volume only if the container is
/// really gone; a failure is reported and the finalizer released anyway — the orphan reaper
/// removes what is left (no uid of a live record owns it any more). Control plane: terminate
/// the instance; until the control plane confirms (2xx, or 404: already gone) the finalizer is
/// kept, the Ready condition says why, and the call is retried with backoff.
async fn cleanup(cached: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, WorkspaceError> {
    // Like apply, from the record as it is now: a pass queued by a Docker event (the container
    // this very cleanup removed) can run on a cached copy of a record that an earlier pass has
    // already released; it must not remove, notify and audit the deletion a second time.
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &wref(&cached)?.namespace);
    let ws = match super::report::fresh(&api, &cached).await? {
        Some(fresh) if fresh.finalizers().iter().any(|f| f == FINALIZER) => Arc::new(fresh),
        _ => return Ok(Action::await_change()),
    };
    let w = wref(&ws)?;
    let external = ws.spec.runtime.as_deref() == Some("external");
    let kind = ws.spec.backend.unwrap_or_default();
    if !external && kind == Backend::Docker {
        match ctx.backends.docker.remove(&w, true).await {
            Ok(()) => {
                tracing::info!(event = "delete.done", workspace = %w.name, uid = %w.uid, "container and volume removed");
                event(
                    &ctx,
                    &ws,
                    EventType::Normal,
                    "Deleted",
                    "container and volume removed".into(),
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(event = "delete.partial", workspace = %w.name, error = %e, "removal failed; leaving the rest to the orphan reaper");
                event(&ctx, &ws, EventType::Warning, "CleanupIncomplete", "the container could not be removed now; the volume is kept and the orphan reaper will remove both".into()).await;
            }
        }
    }
    // An instance on record (a control-plane workspace, or one switched to Docker before its
    // instance could be stopped) must be confirmed gone.
    if w.instance_id
        .as_deref()
        .is_some_and(|i| !i.trim().is_empty())
    {
        let result = match ctx.backends.control_plane.as_ref() {
            Some(cp) => cp.remove(&w, true).await,
            None => Err(BackendError::Config(
                "an instance is on record but no control plane is configured to stop it".into(),
            )),
        };
        if let Err(e) = result {
            let message = plan::stop_failure_message(&e);
            tracing::warn!(event = "delete.stop_failed", workspace = %w.name, uid = %w.uid, error = %e, "the instance could not be stopped; keeping the finalizer and retrying");
            let before = ws.status.clone().unwrap_or_default();
            let mut next = before.clone();
            let generation = ws.metadata.generation.unwrap_or(1);
            let mut c = Condition::new("Ready", ConditionStatus::False, "StopFailed", &message);
            c.observed_generation = Some(generation);
            Condition::upsert(&mut next.conditions, c, &crate::util::now_rfc3339());
            next.message = Some(message.clone());
            write_status(&ctx, &ws, &next, None).await?;
            if before.message.as_deref() != Some(message.as_str()) {
                event(&ctx, &ws, EventType::Warning, "StopFailed", message).await;
            }
            return Err(e.into());
        }
        tracing::info!(event = "delete.done", workspace = %w.name, uid = %w.uid, "instance terminated");
        event(
            &ctx,
            &ws,
            EventType::Normal,
            "Deleted",
            "instance terminated".into(),
        )
        .await;
    }
    ctx.backoff
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&w.uid);
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

/// A workspace whose `spec.backend` changed leaves nothing running on the other one: the
/// recorded instance is terminated (Docker now), or the container and volume removed
/// (control plane now).
async fn leave_other_backend(
    ctx: &Context,
    w: &WorkspaceRef,
    kind: Backend,
    next: &mut WorkspaceStatus,
) -> Result<(), WorkspaceError> {
    match kind {
        Backend::Docker => {
            if next
                .instance_id
                .as_deref()
                .is_some_and(|i| !i.trim().is_empty())
                && let Some(cp) = ctx.backends.control_plane.as_ref()
            {
                tracing::info!(workspace = %w.name, "backend changed to docker: terminating the instance");
                cp.remove(w, true).await?;
                next.instance_id = None;
            }
        }
        Backend::ControlPlane => {
            if next.container_id.is_some() || next.container_name.is_some() {
                tracing::info!(workspace = %w.name, "backend changed to controlPlane: removing the container and volume");
                ctx.backends.docker.remove(w, true).await?;
                next.container_id = None;
                next.container_name = None;
                next.volume_name = None;
            }
        }
    }
    Ok(())
}
