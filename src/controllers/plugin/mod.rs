//! The PluginInstall controller (ADR 0015, 0016): lands a plugin in a running workspace
//! atomically, restarts the workspace only for a cold change, re-applies the plugin whenever
//! the workspace gets a new container, applies approved `PluginUpdate`s (canaries first), and
//! removes the plugin when the record is deleted (finalizer).
//!
//! `reconcile` is a thin driver: validate the spec and the workspace (pure checks), pick the
//! target revision (`plan::target`), fetch it (`crate::plugins`), install it
//! (`install::install`: stage → prepare → classify → swap), request a restart through the
//! workspace's `molecule.ai/restartedAt` annotation when cold, write status, Events, audit rows
//! and the queued updates' phases. The drift queue is filled by `drift::run`.
//!
//! Restarts are never done here: the Workspace controller owns them and coalesces them (ADR 0006).

pub mod drift;
pub mod install;
pub mod plan;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalize, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::backends::{BackendError, Presence, WorkspaceBackend, WorkspaceRef};
use crate::plugins::{Change, Fetcher, Limits, Origin, Refusal, Source, git::Git};
use crate::resources::{
    Condition, ConditionStatus, OrgImport, PendingInstall, PluginDecision, PluginInstall,
    PluginInstallSpec, PluginInstallStatus, PluginUpdate, RestartClass, Workspace,
};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use install::{InstallError, Method};
use plan::{Target, UpdateView};

/// Finalizer guarding the files in the container.
pub const FINALIZER: &str = "molecule.ai/plugin-cleanup";
/// Label on PluginUpdates naming their PluginInstall (when the name fits a label value).
pub const INSTALL_LABEL: &str = "molecule.ai/plugin-install";
/// Label on PluginInstalls made for a workspace (org import).
pub const WORKSPACE_LABEL: &str = "molecule.ai/workspace";
/// Periodic resync of an installed record (drift has its own loop).
const RESYNC: Duration = Duration::from_secs(600);

/// Errors of the PluginInstall controller; `category` is the Event reason and metric label.
/// Refusals (bad spec, bad plugin, failed steps) are not errors: they are conditions.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("finalizer error: {0}")]
    Finalizer(String),
}

impl PluginError {
    pub fn category(&self) -> &'static str {
        match self {
            PluginError::Kube(_) => "ApiError",
            PluginError::Backend(e) => e.category(),
            PluginError::Finalizer(_) => "FinalizerError",
        }
    }
}

/// Tunables of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `local://` plugin registry dir (`serve --plugins DIR`).
    pub registry: PathBuf,
    /// Bound on one git resolve or fetch (5 min).
    pub fetch_timeout: Duration,
    /// Where throwaway git repositories are made.
    pub scratch: PathBuf,
    pub limits: Limits,
    /// How often the drift loop looks for records whose check interval elapsed.
    pub drift_tick: Duration,
    /// Honour `/configs/plugins/.failpoint` in the in-container steps (tests only).
    pub failpoints: bool,
    /// Git hosts a record requested by a workspace's own token may name (ADR 0038).
    pub git_hosts: crate::plugins::git_hosts::GitHosts,
}

impl Settings {
    /// Defaults around a registry dir.
    pub fn new(registry: PathBuf) -> Self {
        Settings {
            registry,
            fetch_timeout: crate::plugins::git::DEFAULT_TIMEOUT,
            scratch: std::env::temp_dir(),
            limits: Limits::default(),
            drift_tick: Duration::from_secs(5),
            failpoints: false,
            git_hosts: Default::default(),
        }
    }

    pub fn fetcher(&self) -> Fetcher {
        Fetcher {
            registry: self.registry.clone(),
            git: Git::new(self.fetch_timeout, self.scratch.clone()),
            limits: self.limits,
        }
    }
}

/// A failed attempt, to back off on.
struct Attempt {
    key: String,
    reason: &'static str,
    count: u32,
    not_before: Instant,
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub backend: Arc<dyn WorkspaceBackend>,
    pub recorder: Recorder,
    pub settings: Settings,
    pub fetcher: Fetcher,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::Audit,
    pub workspaces: Store<Workspace>,
    pub updates: Store<PluginUpdate>,
    pub installs: Store<PluginInstall>,
    methods: Mutex<HashMap<String, Method>>,
    attempts: Mutex<HashMap<String, Attempt>>,
}

impl Context {
    fn lock_attempts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attempt>> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long to wait before retrying the same failed attempt.
    fn backoff_wait(&self, uid: &str, key: &str) -> Option<Duration> {
        let a = self.lock_attempts();
        let at = a.get(uid).filter(|a| a.key == key)?.not_before;
        at.checked_duration_since(Instant::now())
    }

    /// Records a failed attempt; the backoff grows while the same attempt fails the same way
    /// (a new kind of failure is news, and starts over).
    fn failed(&self, uid: &str, key: &str, reason: &'static str) -> Duration {
        let mut a = self.lock_attempts();
        let count = match a.get(uid) {
            Some(prev) if prev.key == key && prev.reason == reason => prev.count + 1,
            _ => 1,
        };
        let wait = plan::backoff(count);
        a.insert(
            uid.to_string(),
            Attempt {
                key: key.to_string(),
                reason,
                count,
                not_before: Instant::now() + wait,
            },
        );
        wait
    }

    fn succeeded(&self, uid: &str) {
        self.lock_attempts().remove(uid);
    }

    async fn method(
        &self,
        w: &WorkspaceRef,
        container: &str,
    ) -> Result<Option<Method>, BackendError> {
        if let Some(m) = self
            .methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container)
        {
            return Ok(Some(*m));
        }
        let m = install::detect(self.backend.as_ref(), w).await?;
        if let Some(m) = m {
            let mut cache = self.methods.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 4096 {
                cache.clear();
            }
            cache.insert(container.to_string(), m);
        }
        Ok(m)
    }
}

/// Builds the PluginInstall that installs `plugin` into `ws` — what an org import makes for
/// each `plugins:` entry of a workspace (after the defaults merge). `plugin` is a registry name
/// (`local://<plugin>`) unless `source` is given (a git URL, with `track`). The record is named
/// `<workspace>-<plugin>`, lives in the workspace's namespace, is owned by the Workspace (it
/// goes away with it) and labelled `molecule.ai/workspace=<workspace>`.
pub fn install_for_workspace(
    ws: &Workspace,
    plugin: &str,
    source: Option<&str>,
    track: Option<&str>,
) -> Result<PluginInstall, Refusal> {
    crate::plugins::source::check_name(plugin)?;
    let source = source
        .map(str::to_string)
        .unwrap_or_else(|| format!("local://{plugin}"));
    Origin::parse(&source, track, false)?;
    let ws_name = ws.name_any();
    let name = format!("{ws_name}-{plugin}")
        .chars()
        .take(253)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string();
    let mut pi = PluginInstall::new(
        &name,
        PluginInstallSpec {
            workspace_ref: crate::resources::LocalObjectReference {
                name: ws_name.clone(),
            },
            source,
            track: track.map(str::to_string),
            ..Default::default()
        },
    );
    pi.metadata.namespace = ws.namespace();
    pi.metadata.owner_references = ws.controller_owner_ref(&()).map(|o| vec![o]);
    if ws_name.len() <= 63 {
        pi.metadata.labels = Some([(WORKSPACE_LABEL.to_string(), ws_name)].into());
    }
    Ok(pi)
}

/// Runs the controller and the drift loop until shutdown.
pub async fn run(
    client: Client,
    backend: Arc<dyn WorkspaceBackend>,
    settings: Settings,
    metrics: Arc<Metrics>,
    audit: crate::audit::Audit,
    shutdown: Shutdown,
) {
    let reporter = Reporter {
        controller: "molecule-plugin".into(),
        instance: std::env::var("HOSTNAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let cfg = watcher::Config::default();
    let (ws_store, ws_writer) = reflector::store::<Workspace>();
    let ws_stream = reflector::reflector(
        ws_writer,
        watcher(Api::<Workspace>::all(client.clone()), cfg.clone()),
    )
    .default_backoff()
    .touched_objects();
    let (pu_store, pu_writer) = reflector::store::<PluginUpdate>();
    let pu_stream = reflector::reflector(
        pu_writer,
        watcher(Api::<PluginUpdate>::all(client.clone()), cfg.clone()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(Api::<PluginInstall>::all(client.clone()), cfg)
        .graceful_shutdown_on(shutdown.clone().wait());
    let installs = controller.store();
    let by_workspace = installs.clone();
    let related = pu_store.clone();
    let controller = controller
        .watches_stream(ws_stream, move |ws: Workspace| {
            let ns = ws.namespace();
            let name = ws.name_any();
            by_workspace
                .state()
                .iter()
                .filter(|p| p.namespace() == ns && p.spec.workspace_ref.name == name)
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(pu_stream, move |u: PluginUpdate| {
            let ns = u.namespace().unwrap_or_default();
            let mut out =
                vec![ObjectRef::<PluginInstall>::new(&u.spec.plugin_install_ref.name).within(&ns)];
            // A canary's progress releases the production installs of the same batch.
            for other in related.state() {
                if other.namespace().as_deref() == Some(ns.as_str())
                    && other.spec.to_sha == u.spec.to_sha
                    && other.spec.decision == PluginDecision::Approved
                    && other.spec.plugin_install_ref.name != u.spec.plugin_install_ref.name
                {
                    out.push(ObjectRef::new(&other.spec.plugin_install_ref.name).within(&ns));
                }
            }
            out
        });
    let ctx = Arc::new(Context {
        client,
        backend,
        recorder,
        fetcher: settings.fetcher(),
        settings,
        metrics,
        audit,
        workspaces: ws_store,
        updates: pu_store,
        installs,
        methods: Mutex::default(),
        attempts: Mutex::default(),
    });
    let drift = tokio::spawn(drift::run(ctx.clone(), shutdown.clone()));
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    drift.abort();
}

/// Entry point for kube-runtime.
pub async fn reconcile(pi: Arc<PluginInstall>, ctx: Arc<Context>) -> Result<Action, PluginError> {
    let started = Instant::now();
    let ns = pi.namespace().unwrap_or_else(|| "default".into());
    let api: Api<PluginInstall> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, pi, |event| async {
        match event {
            Finalize::Apply(pi) => apply(pi, ctx.clone()).await,
            Finalize::Cleanup(pi) => cleanup(pi, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => PluginError::Finalizer(other.to_string()),
    });
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.inc(
        "molecule_reconcile_total",
        &[("controller", "plugin"), ("result", outcome)],
    );
    ctx.metrics.observe(
        "molecule_reconcile_seconds",
        &[("controller", "plugin")],
        started.elapsed().as_secs_f64(),
    );
    result
}

/// Requeue policy for errors (API or container engine unavailable): retry soon.
pub fn error_policy(pi: Arc<PluginInstall>, err: &PluginError, ctx: Arc<Context>) -> Action {
    ctx.metrics.inc(
        "molecule_reconcile_errors_total",
        &[("controller", "plugin"), ("category", err.category())],
    );
    tracing::warn!(plugininstall = %pi.name_any(), category = err.category(), error = %err, "reconcile failed; will retry");
    Action::requeue(Duration::from_secs(3))
}

fn wref(ws: &Workspace) -> Option<WorkspaceRef> {
    Some(WorkspaceRef {
        uid: ws.uid()?,
        namespace: ws.namespace().unwrap_or_else(|| "default".into()),
        name: ws.name_any(),
        instance_id: None,
    })
}

async fn workspace(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<Workspace>>, PluginError> {
    if let Some(ws) = ctx.workspaces.get(&ObjectRef::new(name).within(ns)) {
        return Ok(Some(ws));
    }
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

/// The plugin names an owning OrgImport allows (`None`: no OrgImport, or it allows any).
async fn allowlist(ctx: &Context, ws: &Workspace) -> Result<Option<Vec<String>>, PluginError> {
    let owner = ws
        .owner_references()
        .iter()
        .find(|o| o.kind == "OrgImport" && o.api_version == crate::resources::API_VERSION)
        .map(|o| o.name.clone())
        .or_else(|| ws.labels().get("molecule.ai/org").cloned());
    let Some(org) = owner else {
        return Ok(None);
    };
    let api: Api<OrgImport> =
        Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default());
    Ok(api
        .get_opt(&org)
        .await?
        .map(|o| o.spec.allowed_plugins)
        .filter(|l| !l.is_empty()))
}

fn updates_in(ctx: &Context, ns: &str) -> Vec<UpdateView> {
    ctx.updates
        .state()
        .iter()
        .filter(|u| u.namespace().as_deref() == Some(ns) && u.metadata.deletion_timestamp.is_none())
        .map(|u| UpdateView::of(u))
        .collect()
}

fn ready_true(s: &PluginInstallStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
}

fn set_ready(
    next: &mut PluginInstallStatus,
    generation: i64,
    now: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) {
    let mut c = Condition::new("Ready", status, reason, message);
    c.observed_generation = Some(generation);
    Condition::upsert(&mut next.conditions, c, now);
}

fn ready_reason(s: &PluginInstallStatus) -> Option<(String, String)> {
    s.conditions.iter().find(|c| c.type_ == "Ready").map(|c| {
        (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    })
}

/// Every status field this reconcile owns, `null` when unset, so a merge patch also clears
/// fields.
fn status_patch(s: &PluginInstallStatus) -> Value {
    // upstreamSha belongs to the drift loop: never written (or cleared) here.
    json!({ "status": crate::controllers::report::owned_fields(s, &[
        "observedGeneration",
        "conditions",
        "installedSha",
        "lastRestartClass",
        "pluginName",
        "version",
        "installedFrom",
        "installedRef",
        "installedContainerId",
        "contentDigest",
        "installedAt",
        "pending",
    ]) })
}

async fn write_status(
    ctx: &Context,
    pi: &PluginInstall,
    next: &PluginInstallStatus,
) -> Result<(), PluginError> {
    if pi.status.as_ref() == Some(next) {
        return Ok(());
    }
    let api: Api<PluginInstall> =
        Api::namespaced(ctx.client.clone(), &pi.namespace().unwrap_or_default());
    api.patch_status(
        &pi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(status_patch(next)),
    )
    .await?;
    Ok(())
}

async fn event(ctx: &Context, pi: &PluginInstall, type_: EventType, reason: &str, note: String) {
    crate::controllers::report::publish(
        &ctx.recorder,
        pi.object_ref(&()),
        type_,
        reason,
        note,
        "Reconcile",
    );
}

/// Brings every queued update of this install to the phase `plan::update_phase` gives,
/// except those in `overrides` (WaitingForCanary, Failed with a message).
async fn sync_updates(
    ctx: &Context,
    pi: &PluginInstall,
    installed: Option<&str>,
    overrides: &HashMap<String, (&'static str, Option<String>)>,
    now: &str,
) -> Result<(), PluginError> {
    let ns = pi.namespace().unwrap_or_default();
    let name = pi.name_any();
    let api: Api<PluginUpdate> = Api::namespaced(ctx.client.clone(), &ns);
    for u in ctx.updates.state() {
        if u.namespace().as_deref() != Some(ns.as_str())
            || u.spec.plugin_install_ref.name != name
            || u.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let view = UpdateView::of(&u);
        let (phase, message) = overrides
            .get(&view.name)
            .cloned()
            .unwrap_or_else(|| plan::update_phase(&view, installed));
        let st = u.status.clone().unwrap_or_default();
        let generation = u.metadata.generation;
        if st.phase.as_deref() == Some(phase)
            && st.message == message
            && st.observed_generation == generation
        {
            continue;
        }
        let applied_at = if phase == "Applied" {
            st.applied_at.clone().or_else(|| Some(now.to_string()))
        } else {
            None
        };
        let patch = json!({"status": {"phase": phase, "message": message, "appliedAt": applied_at, "observedGeneration": generation}});
        match api
            .patch_status(&view.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                if st.phase.as_deref() != Some(phase) {
                    tracing::info!(pluginupdate = %view.name, phase, "plugin update phase");
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reports a refusal: Ready False with the reason, a Warning Event when it is new, the failing
/// update (if any) marked Failed.
#[allow(clippy::too_many_arguments)]
async fn refuse(
    ctx: &Context,
    pi: &PluginInstall,
    mut next: PluginInstallStatus,
    r: Refusal,
    generation: i64,
    now: &str,
    update: Option<&str>,
    action: Action,
) -> Result<Action, PluginError> {
    let before = pi.status.clone().unwrap_or_default();
    next.pending = None;
    set_ready(
        &mut next,
        generation,
        now,
        ConditionStatus::False,
        r.reason,
        &r.message,
    );
    write_status(ctx, pi, &next).await?;
    if ready_reason(&before) != Some((r.reason.to_string(), r.message.clone())) {
        tracing::info!(plugininstall = %pi.name_any(), reason = r.reason, message = %r.message, "plugin install not done");
        let t = if r.reason == "WaitingForWorkspace" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        event(ctx, pi, t, r.reason, r.message.clone()).await;
    }
    let mut overrides = HashMap::new();
    if let Some(u) = update {
        overrides.insert(
            u.to_string(),
            ("Failed", Some(format!("{}: {}", r.reason, r.message))),
        );
    }
    sync_updates(ctx, pi, next.installed_sha.as_deref(), &overrides, now).await?;
    Ok(action)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

async fn request_restart(ctx: &Context, ws: &Workspace, now: &str) -> Result<(), PluginError> {
    let api: Api<Workspace> =
        Api::namespaced(ctx.client.clone(), &ws.namespace().unwrap_or_default());
    let patch =
        json!({"metadata": {"annotations": {crate::resources::names::RESTART_ANNOTATION: now}}});
    api.patch(
        &ws.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

async fn apply(cached: Arc<PluginInstall>, ctx: Arc<Context>) -> Result<Action, PluginError> {
    let ns = cached.namespace().unwrap_or_else(|| "default".into());
    // Decide from the record as it is now (as the Workspace controller does, ADR 0028): a pass
    // queued while the previous one ran can start before the watch cache holds that pass's
    // status write, and a status built on the stale copy would clear what it recorded (the
    // owned fields are written whole, lastRestartClass among them).
    let api: Api<PluginInstall> = Api::namespaced(ctx.client.clone(), &ns);
    let pi = match crate::controllers::report::fresh(&api, cached.as_ref()).await? {
        Some(fresh) if fresh.metadata.deletion_timestamp.is_none() => Arc::new(fresh),
        _ => return Ok(Action::await_change()), // gone, re-created or being deleted: events follow
    };
    let uid = pi.uid().unwrap_or_default();
    let generation = pi.metadata.generation.unwrap_or(1);
    let now = crate::util::now_rfc3339();
    let before = pi.status.clone().unwrap_or_default();
    let mut next = before.clone();
    next.observed_generation = Some(generation);
    let wait = Action::await_change();

    // The spec: source and tracked ref.
    let origin = match Origin::parse(
        &pi.spec.source,
        pi.spec.track.as_deref(),
        pi.spec.allow_unpinned,
    ) {
        Ok(o) => o,
        Err(r) => return refuse(&ctx, &pi, next, r, generation, &now, None, wait).await,
    };
    if let Err(r) = plan::check_interval(pi.spec.check_interval.as_deref()) {
        return refuse(&ctx, &pi, next, r, generation, &now, None, wait).await;
    }
    if let Err(r) = check_requester(&pi, &origin, &ctx.settings.git_hosts) {
        return refuse(&ctx, &pi, next, r, generation, &now, None, wait).await;
    }

    // The workspace (not external, ADR 0015; allowlist).
    let ws_name = &pi.spec.workspace_ref.name;
    let Some(ws) = workspace(&ctx, &ns, ws_name).await? else {
        let r = Refusal::new(
            "WorkspaceNotFound",
            format!("workspace {ws_name:?} does not exist"),
        );
        return refuse(&ctx, &pi, next, r, generation, &now, None, wait).await;
    };
    if ws.metadata.deletion_timestamp.is_some() {
        return Ok(wait);
    }
    if ws.spec.runtime.as_deref() == Some("external") {
        let r = Refusal::new(
            "ExternalRuntime",
            format!(
                "workspace {ws_name} runs an external agent (runtime: external) and has no container to install into; the agent downloads the plugin itself: GET {} with its workspace token as Bearer",
                crate::resources::names::download_path(&ns, &pi.name_any())
            ),
        );
        return refuse(&ctx, &pi, next, r, generation, &now, None, wait).await;
    }
    if ws.spec.backend == Some(crate::resources::Backend::ControlPlane) {
        let r = Refusal::new(
            "BackendUnsupported",
            format!(
                "workspace {ws_name} runs on the control plane (EC2), where molecule cannot swap files in place; its agent downloads the plugin itself: GET {} with its workspace token as Bearer",
                crate::resources::names::download_path(&ns, &pi.name_any())
            ),
        );
        return refuse(&ctx, &pi, next, r, generation, &now, None, wait).await;
    }
    let allowed = allowlist(&ctx, &ws).await?;
    let known_name = before.plugin_name.clone().or(match &origin.source {
        Source::Local(n) => Some(n.clone()),
        Source::Git(_) => None,
    });
    if let (Some(list), Some(name)) = (&allowed, &known_name)
        && !list.contains(name)
    {
        return refuse(
            &ctx,
            &pi,
            next,
            not_allowed(name, list),
            generation,
            &now,
            None,
            wait,
        )
        .await;
    }

    // The revision (ADR 0016: drift, canaries first).
    let all = updates_in(&ctx, &ns);
    let mine: Vec<UpdateView> = all
        .iter()
        .filter(|u| u.install == pi.name_any())
        .cloned()
        .collect();
    let (target, hold) = plan::target(&before, &origin.key(), &mine, &all);
    let mut overrides: HashMap<String, (&'static str, Option<String>)> = HashMap::new();
    if let (Some(why), Some(installed)) = (&hold, &before.installed_sha)
        && let Some(u) = plan::applicable(installed, &mine)
    {
        overrides.insert(u.name.clone(), ("WaitingForCanary", Some(why.clone())));
    }
    let container_now = ws.status.as_ref().and_then(|s| s.container_id.clone());

    // Nothing to do: installed at the target in the current container.
    if let Target::Sha {
        sha, update: None, ..
    } = &target
        && before.installed_sha.as_ref() == Some(sha)
        && before.installed_container_id.is_some()
        && before.installed_container_id == container_now
        && before.pending.is_none()
        && ready_true(&before)
    {
        write_status(&ctx, &pi, &next).await?;
        sync_updates(&ctx, &pi, Some(sha), &overrides, &now).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let attempt_key = format!("{generation}/{target:?}/{container_now:?}");
    if let Some(left) = ctx.backoff_wait(&uid, &attempt_key) {
        return Ok(Action::requeue(left));
    }
    let update = match &target {
        Target::Sha { update, .. } => update.clone(),
        Target::Resolve => None,
    };
    if let Some(u) = &update {
        overrides.insert(u.clone(), ("Applying", None));
    }

    // The container.
    let Some(w) = wref(&ws) else {
        return Ok(wait);
    };
    let container_id = match ctx.backend.inspect(&w).await? {
        Presence::Running { container_id, .. } => container_id,
        _ => {
            let r = Refusal::new(
                "WaitingForWorkspace",
                format!("waiting for workspace {ws_name} to run a container"),
            );
            return refuse(
                &ctx,
                &pi,
                next,
                r,
                generation,
                &now,
                None,
                Action::requeue(Duration::from_secs(15)),
            )
            .await;
        }
    };
    let Some(method) = ctx.method(&w, &container_id).await? else {
        let r = Refusal::new(
            "NoInstallMethod",
            "the workspace image has neither the molecule binary nor a shell with find and sha256sum to install with",
        );
        return refuse(&ctx, &pi, next, r, generation, &now, None, wait).await;
    };

    // A new container of an installed workspace: the volume normally still holds the plugin.
    if let Target::Sha {
        sha, update: None, ..
    } = &target
        && before.installed_sha.as_ref() == Some(sha)
        && before.pending.is_none()
        && let (Some(name), Some(digest)) = (&before.plugin_name, &before.content_digest)
    {
        match install::inspect(ctx.backend.as_ref(), &w, method, name).await {
            Ok((Some(live), true)) if &live == digest => {
                next.installed_container_id = Some(container_id.clone());
                let msg = format!(
                    "installed {name} at {} (still in place in container {})",
                    short(sha),
                    short(&container_id)
                );
                set_ready(
                    &mut next,
                    generation,
                    &now,
                    ConditionStatus::True,
                    "Installed",
                    &msg,
                );
                write_status(&ctx, &pi, &next).await?;
                sync_updates(&ctx, &pi, Some(sha), &overrides, &now).await?;
                ctx.succeeded(&uid);
                return Ok(Action::requeue(RESYNC));
            }
            Ok(_) | Err(InstallError::Step(_)) => {
                tracing::info!(plugininstall = %pi.name_any(), container = %container_id, "re-applying the plugin into the workspace's new container");
            }
            Err(InstallError::Backend(e)) => return Err(e.into()),
        }
    }

    // Fetch (size and time bounded).
    let t = Instant::now();
    let fetched = async {
        let (sha, ref_name) = match (&target, &origin.source) {
            (Target::Sha { sha, ref_name, .. }, Source::Git(_)) => {
                (Some(sha.clone()), ref_name.clone())
            }
            (Target::Resolve, Source::Git(_)) => {
                let r = ctx.fetcher.resolve(&origin).await?;
                (Some(r.sha), r.ref_name)
            }
            (_, Source::Local(_)) => (None, None),
        };
        let f = ctx
            .fetcher
            .fetch(&origin, sha.as_deref(), ref_name.as_deref())
            .await?;
        Ok::<_, Refusal>((f, ref_name))
    }
    .await;
    let fetch_time = t.elapsed();
    let (fetched, ref_name) = match fetched {
        Ok(f) => f,
        Err(r) => {
            let wait = ctx.failed(&uid, &attempt_key, r.reason);
            return refuse(
                &ctx,
                &pi,
                next,
                r,
                generation,
                &now,
                update.as_deref(),
                Action::requeue(wait),
            )
            .await;
        }
    };
    let meta = &fetched.meta;
    // Checks that need the fetched plugin; they back off like fetch failures, so a refused
    // plugin is not fetched again on every workspace heartbeat.
    let conflict = ctx.installs.state().into_iter().find(|o| {
        o.namespace().as_deref() == Some(ns.as_str())
            && o.uid() != pi.uid()
            && o.spec.workspace_ref.name == *ws_name
            && o.metadata.deletion_timestamp.is_none()
            && o.status.as_ref().and_then(|s| s.plugin_name.as_deref()) == Some(meta.name.as_str())
    });
    let runtime = ws.spec.runtime.clone().unwrap_or_else(|| "echo".into());
    let refusal = if let (
        Target::Sha {
            sha,
            update: Some(_),
            ..
        },
        Source::Local(_),
    ) = (&target, &origin.source)
        && *sha != fetched.sha
    {
        // The registry changed again after this update was queued; the drift loop queues the
        // newer content as its own update.
        Some(Refusal::new(
            "SourceChanged",
            format!(
                "the registry content of {} changed again since this update was queued ({} now); approve the newer update",
                meta.name,
                short(&fetched.sha)
            ),
        ))
    } else if let Some(list) = allowed.as_ref().filter(|l| !l.contains(&meta.name)) {
        Some(not_allowed(&meta.name, list))
    } else if !meta.runtimes.is_empty() && !meta.runtimes.contains(&runtime) {
        Some(Refusal::new(
            "UnsupportedRuntime",
            format!(
                "plugin {} supports runtimes {} but workspace {ws_name} runs {runtime}",
                meta.name,
                meta.runtimes.join(", ")
            ),
        ))
    } else {
        conflict.map(|other| {
            Refusal::new(
                "Conflict",
                format!(
                    "PluginInstall {} already installs plugin {} into workspace {ws_name}",
                    other.name_any(),
                    meta.name
                ),
            )
        })
    };
    if let Some(r) = refusal {
        let wait = ctx.failed(&uid, &attempt_key, r.reason);
        return refuse(
            &ctx,
            &pi,
            next,
            r,
            generation,
            &now,
            update.as_deref(),
            Action::requeue(wait),
        )
        .await;
    }

    // Install (ADR 0015); the pending record makes an interrupted install finish cold.
    let interrupted = before
        .pending
        .as_ref()
        .filter(|p| p.container_id == container_id && p.sha == fetched.sha)
        .is_some_and(|p| {
            !plan::restart_covers(
                ws.annotations()
                    .get(crate::resources::names::RESTART_ANNOTATION)
                    .map(String::as_str),
                &p.started_at,
            )
        });
    next.pending = Some(PendingInstall {
        sha: fetched.sha.clone(),
        container_id: container_id.clone(),
        started_at: now.clone(),
    });
    let installing = format!("installing {} at {}", meta.name, short(&fetched.sha));
    set_ready(
        &mut next,
        generation,
        &now,
        ConditionStatus::False,
        "Installing",
        &installing,
    );
    write_status(&ctx, &pi, &next).await?;
    let pi_now = PluginInstall {
        status: Some(next.clone()),
        ..(*pi).clone()
    };
    let result = install::install(
        ctx.backend.as_ref(),
        &w,
        method,
        &meta.name,
        &fetched.sha,
        &fetched.tree,
        ctx.settings.failpoints,
    )
    .await;
    let done = match result {
        Ok(d) => d,
        Err(InstallError::Backend(e)) => return Err(e.into()),
        Err(InstallError::Step(f)) => {
            ctx.metrics.inc(
                "molecule_plugin_install_failures_total",
                &[("reason", f.reason)],
            );
            let wait = ctx.failed(&uid, &attempt_key, f.reason);
            let r = Refusal::new(f.reason, f.message);
            return refuse(
                &ctx,
                &pi_now,
                next,
                r,
                generation,
                &now,
                update.as_deref(),
                Action::requeue(wait),
            )
            .await;
        }
    };

    // Without its marker the new version is not loaded: the restart waits for the retry that
    // writes it (the kept pending record makes that retry restart).
    let restart = !done.marker_missing && plan::restart_needed(done.change, interrupted);
    let class = if restart {
        RestartClass::Cold
    } else {
        RestartClass::Hot
    };
    let changed_sha = before.installed_sha.as_ref() != Some(&fetched.sha);
    if !done.marker_missing {
        next.pending = None;
    }
    next.installed_sha = Some(fetched.sha.clone());
    next.installed_from = Some(origin.key());
    next.installed_ref = ref_name.clone();
    next.plugin_name = Some(meta.name.clone());
    next.version = meta.version.clone();
    next.content_digest = Some(done.digest.clone());
    next.installed_container_id = Some(container_id.clone());
    if done.change != Change::Unchanged || restart {
        next.last_restart_class = Some(class);
    }
    if done.change != Change::Unchanged || changed_sha {
        next.installed_at = Some(now.clone());
    }
    let how = match (done.change, restart) {
        (_, true) => "cold: the workspace restarts",
        (Change::Hot, false) => "hot: no restart",
        _ => "unchanged",
    };
    let msg = format!(
        "installed {} {}at {} ({how})",
        meta.name,
        meta.version
            .as_deref()
            .map(|v| format!("{v} "))
            .unwrap_or_default(),
        short(&fetched.sha)
    );
    let wait_next = if done.marker_missing {
        let w = ctx.failed(&uid, &attempt_key, "MarkerMissing");
        set_ready(
            &mut next,
            generation,
            &now,
            ConditionStatus::False,
            "MarkerMissing",
            "the new version is in place but its .complete marker could not be written; retrying",
        );
        Action::requeue(w)
    } else {
        ctx.succeeded(&uid);
        set_ready(
            &mut next,
            generation,
            &now,
            ConditionStatus::True,
            "Installed",
            &msg,
        );
        Action::requeue(RESYNC)
    };
    if restart {
        request_restart(&ctx, &ws, &now).await?;
    }
    write_status(&ctx, &pi_now, &next).await?;
    if let Some(old) = before.plugin_name.as_ref().filter(|o| **o != meta.name) {
        // The source now names another plugin: the old one leaves.
        if let Err(e) = install::uninstall(ctx.backend.as_ref(), &w, method, old).await {
            tracing::warn!(plugininstall = %pi.name_any(), old = %old, error = %e, "could not remove the previous plugin");
        }
    }
    let t = done.timings;
    let class_label = match (done.change, restart) {
        (_, true) => "cold",
        (Change::Hot, false) => "hot",
        _ => "unchanged",
    };
    for (step, d) in [
        ("fetch", fetch_time),
        ("stage", t.stage),
        ("prepare", t.prepare),
        ("swap", t.swap),
    ] {
        ctx.metrics.observe(
            "molecule_plugin_install_seconds",
            &[("step", step), ("change", class_label)],
            d.as_secs_f64(),
        );
    }
    tracing::info!(
        event = "plugin.installed",
        plugininstall = %pi.name_any(),
        workspace = %ws_name,
        plugin = %meta.name,
        sha = %fetched.sha,
        change = ?done.change,
        restart,
        fetch_ms = fetch_time.as_millis() as u64,
        stage_ms = t.stage.as_millis() as u64,
        prepare_ms = t.prepare.as_millis() as u64,
        swap_ms = t.swap.as_millis() as u64,
        "plugin installed"
    );
    if done.change != Change::Unchanged || changed_sha || restart {
        let reason = if update.is_some() {
            "Updated"
        } else {
            "Installed"
        };
        event(&ctx, &pi, EventType::Normal, reason, msg.clone()).await;
        ctx.audit
            .record(
                "plugin.installed",
                &ns,
                &pi.name_any(),
                json!({"workspace": ws_name, "plugin": meta.name, "sha": fetched.sha, "restart": if restart {"cold"} else {"hot"}, "update": update}),
            )
            .await;
    }
    if done.marker_missing {
        event(&ctx, &pi, EventType::Warning, "MarkerMissing", format!("{} is in place without its .complete marker; loaders skip it until the retry writes it", meta.name)).await;
    }
    sync_updates(&ctx, &pi, Some(&fetched.sha), &overrides, &now).await?;
    Ok(wait_next)
}

/// A record the REST shim made for a workspace's own token (label `molecule.ai/requested-by:
/// workspace`) may name a git source only on the allowed hosts (ADR 0038): the same rule the
/// shim applies, held here too so the operator enforces it whoever serves the shim.
fn check_requester(
    pi: &PluginInstall,
    origin: &Origin,
    hosts: &crate::plugins::git_hosts::GitHosts,
) -> Result<(), Refusal> {
    let by_workspace = pi
        .labels()
        .get(crate::resources::names::REQUESTED_BY_LABEL)
        .is_some_and(|v| v == "workspace");
    match &origin.source {
        Source::Git(url) if by_workspace && !hosts.allows(url) => Err(Refusal::new(
            "SourceNotAllowed",
            "a plugin requested by a workspace may come from the local registry or the hosts of --plugin-git-hosts only",
        )),
        _ => Ok(()),
    }
}

fn not_allowed(name: &str, list: &[String]) -> Refusal {
    Refusal::new(
        "NotAllowed",
        format!(
            "plugin {name} is not in the org's allowed plugins ({})",
            list.join(", ")
        ),
    )
}

/// Delete: remove the files from the container (a tombstone when it is stopped), restart
/// the workspace so hooks and settings unload, and drop the tracking (queued updates are
/// garbage-collected with the record).
async fn cleanup(pi: Arc<PluginInstall>, ctx: Arc<Context>) -> Result<Action, PluginError> {
    let ns = pi.namespace().unwrap_or_else(|| "default".into());
    let status = pi.status.clone().unwrap_or_default();
    let ws = workspace(&ctx, &ns, &pi.spec.workspace_ref.name).await?;
    let name = status.plugin_name.clone();
    let mut removed = false;
    if let (Some(ws), Some(name)) = (ws.as_ref(), name.as_ref())
        && ws.metadata.deletion_timestamp.is_none()
        && ws.spec.runtime.as_deref() != Some("external")
        && let Some(w) = wref(ws)
    {
        match ctx.backend.inspect(&w).await? {
            Presence::Running { container_id, .. } => {
                let result = match ctx.method(&w, &container_id).await? {
                    Some(m) => install::uninstall(ctx.backend.as_ref(), &w, m, name).await,
                    // No way to run a step inside: the archive API still replaces the dir.
                    None => install::tombstone(ctx.backend.as_ref(), &w, name)
                        .await
                        .map_err(InstallError::from),
                };
                match result {
                    Ok(()) => {
                        removed = true;
                        request_restart(&ctx, ws, &crate::util::now_rfc3339()).await?;
                    }
                    Err(InstallError::Backend(e)) if e.is_transient() => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(plugininstall = %pi.name_any(), error = %e, "uninstall failed; the files stay");
                        event(
                            &ctx,
                            &pi,
                            EventType::Warning,
                            "UninstallFailed",
                            format!("{name} could not be removed from the container: {e}"),
                        )
                        .await;
                    }
                }
            }
            Presence::Stopped { .. } => {
                match install::tombstone(ctx.backend.as_ref(), &w, name).await {
                    Ok(()) => removed = true,
                    Err(e) if e.is_transient() => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(plugininstall = %pi.name_any(), error = %e, "offline uninstall failed")
                    }
                }
            }
            Presence::Absent => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_a_workspace_asked_for_keep_to_the_allowed_git_hosts() {
        let hosts = crate::plugins::git_hosts::GitHosts::parse("git.allowed.example").unwrap();
        let record = |source: &str, by_workspace: bool| {
            let mut pi = PluginInstall::new(
                "p",
                PluginInstallSpec {
                    source: source.into(),
                    ..Default::default()
                },
            );
            if by_workspace {
                pi.metadata.labels = Some(
                    [(
                        crate::resources::names::REQUESTED_BY_LABEL.to_string(),
                        "workspace".to_string(),
                    )]
                    .into(),
                );
            }
            let track = (!source.starts_with("local://")).then_some("tag:v1");
            let origin = Origin::parse(source, track, false).unwrap();
            check_requester(&pi, &origin, &hosts)
        };
        let r = record("https://10.0.0.1/org/p.git", true).unwrap_err();
        assert_eq!(r.reason, "SourceNotAllowed");
        assert!(record("https://git.allowed.example/org/p.git", true).is_ok());
        assert!(record("local://p", true).is_ok());
        assert!(
            record("https://10.0.0.1/org/p.git", false).is_ok(),
            "admin records are not limited"
        );
    }

    #[test]
    fn install_for_an_org_workspace() {
        let mut ws = Workspace::new("lead", Default::default());
        ws.metadata.namespace = Some("team".into());
        ws.metadata.uid = Some("1234".into());
        let pi = install_for_workspace(&ws, "hello-skills", None, None).unwrap();
        assert_eq!(pi.metadata.name.as_deref(), Some("lead-hello-skills"));
        assert_eq!(pi.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(pi.spec.source, "local://hello-skills");
        assert_eq!(pi.spec.workspace_ref.name, "lead");
        let owner = &pi.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Workspace", "1234")
        );
        let git = install_for_workspace(&ws, "x", Some("file:///r"), Some("tag:latest")).unwrap();
        assert_eq!(git.spec.track.as_deref(), Some("tag:latest"));
        assert_eq!(
            install_for_workspace(&ws, "../x", None, None)
                .unwrap_err()
                .reason,
            "InvalidName"
        );
        assert_eq!(
            install_for_workspace(&ws, "x", Some("file:///r"), None)
                .unwrap_err()
                .reason,
            "Unpinned"
        );
    }

    #[test]
    fn status_patch_clears_unset_fields() {
        let s = PluginInstallStatus {
            installed_sha: Some("a".into()),
            ..Default::default()
        };
        let p = status_patch(&s);
        assert_eq!(p["status"]["installedSha"], "a");
        assert!(p["status"]["pending"].is_null());
        assert!(p["status"].as_object().unwrap().contains_key("pending"));
    }
}
