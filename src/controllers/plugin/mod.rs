//! The PluginInstall controller (ADR 0015, 0016): lands a plugin in a running workspace
//! atomically, restarts the workspace only for a cold change, re-applies the plugin whenever
//! the workspace gets a new container, applies approved `PluginUpdate`s (canaries first), and
//! removes the plugin when the record is deleted (finalizer).
//!
//! `reconcile` runs a pass under the finalizer: `apply` as named steps — observe (the record,
//! the workspace, its container), validate (spec, workspace, fetched plugin), plan (the target
//! revision, `plan::target`), act (fetch through `crate::plugins`, install through
//! `install::install`: stage → prepare → classify → swap; a cold change requests a restart
//! through the workspace's `molecule.ai/restartedAt` annotation) and report (`status`: status,
//! Events, audit rows and the queued updates' phases) — or `cleanup`. The drift queue is filled
//! by `drift::run`.
//!
//! Restarts are never done here: the Workspace controller owns them and coalesces them (ADR 0006).

mod apply;
mod cleanup;
pub mod drift;
pub mod install;
pub mod plan;
pub mod seed;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalize;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::cache::{SharedCache, WorkQueue};
use super::kit::{self, Backoff, Reconciler, Reporter};
use crate::backends::{BackendError, WorkspaceBackend, WorkspaceRef};
use crate::plugins::{Fetcher, Limits, Origin, Refusal, Source, git::Git};
use crate::resources::{
    OrgImport, PluginDecision, PluginInstall, PluginInstallSpec, PluginUpdate, Workspace,
};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use install::Method;
use plan::UpdateView;

/// Finalizer guarding the files in the container.
pub const FINALIZER: &str = "molecule.ai/plugin-cleanup";
/// Label on PluginUpdates naming their PluginInstall (when the name fits a label value).
pub const INSTALL_LABEL: &str = "molecule.ai/plugin-install";
/// Label on PluginInstalls made for a workspace (org import).
pub const WORKSPACE_LABEL: &str = crate::resources::names::PLUGIN_WORKSPACE_LABEL;
/// Periodic resync of an installed record (drift has its own loop).
const RESYNC: Duration = Duration::from_secs(600);
/// Backoff of a record whose pass failed (API or container engine unavailable).
const RETRY_MIN: Duration = Duration::from_secs(3);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The status fields this controller owns (upstreamSha belongs to the drift loop: never
/// written or cleared here).
const STATUS_FIELDS: &[&str] = &[
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
];

/// Errors of the PluginInstall controller; `category` is the Event reason and metric label.
/// Refusals (bad spec, bad plugin, failed steps) are not errors: they are conditions.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Finalizer(#[from] kit::FinalizerError),
}

impl kit::Failure for PluginError {
    fn category(&self) -> &'static str {
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
    /// The backend of Workspaces that name none (`--default-backend`).
    pub default_backend: crate::resources::Backend,
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
            default_backend: crate::resources::Backend::Docker,
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
    /// The kubernetes backend, when this operator runs it: Pod workspaces get their plugins
    /// through its files Secret and a restart (ADR 0057).
    pub kubernetes: Option<Arc<dyn WorkspaceBackend>>,
    /// Span, metrics and error policy of every pass (ADR 0045).
    pub kit: Reconciler,
    /// Status writes and Events.
    pub report: Reporter,
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
    /// Whether `ws` runs as a Pod (its `spec.backend`, or the operator's default).
    fn on_pods(&self, ws: &Workspace) -> bool {
        ws.spec.backend.unwrap_or(self.settings.default_backend)
            == crate::resources::Backend::Kubernetes
    }

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

/// What of a Workspace this controller acts on: its identity and spec, its labels and owners
/// (the org's allowlist), its deletion, and the container (or instance) and phase it reports.
/// Heartbeats, which change none of these, do not wake the workspace's PluginInstalls: at
/// 1,000 agents they were hundreds of passes a second that found nothing to do.
pub fn workspace_trigger_hash(ws: &Workspace) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = &ws.metadata;
    let st = ws.status.as_ref();
    let owners: Vec<(&str, &str, &str)> = ws
        .owner_references()
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str(), o.uid.as_str()))
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &meta.uid,
        meta.generation,
        meta.deletion_timestamp.is_some(),
        &meta.labels,
        owners,
        st.and_then(|s| s.container_id.as_deref()),
        st.and_then(|s| s.instance_id.as_deref()),
        st.and_then(|s| s.phase).map(|p| p as u8),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// The PluginInstalls in `installs` that name `ws` (those being deleted too).
pub fn naming(
    installs: &Store<PluginInstall>,
    ws: &Workspace,
) -> impl Iterator<Item = Arc<PluginInstall>> {
    let ns = ws.namespace();
    let name = ws.name_any();
    installs
        .state()
        .into_iter()
        .filter(move |p| p.namespace() == ns && p.spec.workspace_ref.name == name)
}

/// The Workspace a PluginInstall names.
pub fn workspace_of(pi: &PluginInstall) -> ObjectRef<Workspace> {
    let r = ObjectRef::new(&pi.spec.workspace_ref.name);
    match pi.namespace() {
        Some(ns) => r.within(&ns),
        None => r,
    }
}

/// A PluginInstall as a trigger of the Workspace it names: its uid only, so a new record
/// counts and its status writes do not (ADR 0056: a first start waits for new records).
pub fn appeared_hash(pi: &PluginInstall) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pi.metadata.uid.hash(&mut h);
    Some(h.finish())
}

/// Runs the controller and the drift loop until shutdown. Workspaces and PluginInstalls come
/// from the process's one cache of each (ADR 0025): their stores for lookups, their changes as
/// triggers.
#[allow(clippy::too_many_arguments)]
pub fn run(
    client: Client,
    backend: Arc<dyn WorkspaceBackend>,
    kubernetes: Option<Arc<dyn WorkspaceBackend>>,
    settings: Settings,
    metrics: Arc<Metrics>,
    audit: crate::audit::Audit,
    caches: (&SharedCache<Workspace>, &SharedCache<PluginInstall>),
    shutdown: Shutdown,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (workspaces, installs_cache) = caches;
    let ws_store = workspaces.reader();
    let ws_stream = workspaces.touched_filtered("plugin", workspace_trigger_hash);
    let queue = WorkQueue::new("plugin", metrics.clone());
    let controller = installs_cache
        .controller(&queue)
        .graceful_shutdown_on(shutdown.clone().wait());
    let installs = installs_cache.reader();
    async move {
        let cfg = watcher::Config::default();
        let (pu_store, pu_writer) = reflector::store::<PluginUpdate>();
        let pu_stream = reflector::reflector(
            pu_writer,
            watcher(Api::<PluginUpdate>::all(client.clone()), cfg.clone()),
        )
        .default_backoff()
        .touched_objects();
        let by_workspace = installs.clone();
        let related = pu_store.clone();
        let controller = controller
            .watches_shared_stream(ws_stream, move |ws: Arc<Workspace>| {
                naming(&by_workspace, &ws)
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            })
            .watches_stream(pu_stream, move |u: PluginUpdate| {
                let ns = u.namespace().unwrap_or_default();
                let mut out = vec![
                    ObjectRef::<PluginInstall>::new(&u.spec.plugin_install_ref.name).within(&ns),
                ];
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
            kit: Reconciler::new(
                "plugin",
                metrics.clone(),
                Backoff::new(RETRY_MIN, RETRY_MAX),
            ),
            report: Reporter::new(
                client.clone(),
                "molecule-plugin",
                "Reconcile",
                STATUS_FIELDS,
            ),
            client,
            backend,
            kubernetes,
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
            .run(
                move |pi, ctx| {
                    let guard =
                        queue.begin(&WorkQueue::key(pi.namespace().as_deref(), &pi.name_any()));
                    async move {
                        let _guard = guard;
                        reconcile(pi, ctx).await
                    }
                },
                error_policy,
                ctx,
            )
            .for_each(|_| async {})
            .await;
        drift.abort();
    }
}

/// Entry point for kube-runtime: a pass under the finalizer, wrapped by the kit.
pub async fn reconcile(pi: Arc<PluginInstall>, ctx: Arc<Context>) -> Result<Action, PluginError> {
    let ns = pi.namespace().unwrap_or_else(|| "default".into());
    let api: Api<PluginInstall> = Api::namespaced(ctx.client.clone(), &ns);
    let object = pi.clone();
    ctx.kit
        .run(
            object.as_ref(),
            kit::finalized(&api, FINALIZER, pi, |event| async {
                match event {
                    Finalize::Apply(pi) => apply::apply(pi, ctx.clone()).await,
                    Finalize::Cleanup(pi) => cleanup::cleanup(pi, ctx.clone()).await,
                }
            }),
        )
        .await
}

/// Requeue policy for errors (API or container engine unavailable): each record backs off on
/// its own (refusals are not errors: they are conditions, with their own backoff).
pub fn error_policy(pi: Arc<PluginInstall>, err: &PluginError, ctx: Arc<Context>) -> Action {
    ctx.kit.retry(pi.as_ref(), err)
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
    allowlist_of(&ctx.client, ws).await
}

/// [`allowlist`] through `client`.
async fn allowlist_of(client: &Client, ws: &Workspace) -> Result<Option<Vec<String>>, PluginError> {
    let owner = ws
        .owner_references()
        .iter()
        .find(|o| o.kind == "OrgImport" && o.api_version == crate::resources::API_VERSION)
        .map(|o| o.name.clone())
        .or_else(|| ws.labels().get("molecule.ai/org").cloned());
    let Some(org) = owner else {
        return Ok(None);
    };
    let api: Api<OrgImport> = Api::namespaced(client.clone(), &ws.namespace().unwrap_or_default());
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

/// A workspace molecule does not install into (ADR 0015): its agent downloads the plugin
/// itself.
fn unmanaged(
    ws: &Workspace,
    pi: &PluginInstall,
    default_backend: crate::resources::Backend,
) -> Option<Refusal> {
    let ns = pi.namespace().unwrap_or_else(|| "default".into());
    let ws_name = &pi.spec.workspace_ref.name;
    if ws.spec.runtime.as_deref() == Some("external") {
        let r = Refusal::new(
            "ExternalRuntime",
            format!(
                "workspace {ws_name} runs an external agent (runtime: external) and has no container to install into; the agent downloads the plugin itself: GET {} with its workspace token as Bearer",
                crate::resources::names::download_path(&ns, &pi.name_any())
            ),
        );
        return Some(r);
    }
    if ws.spec.backend.unwrap_or(default_backend) == crate::resources::Backend::ControlPlane {
        let r = Refusal::new(
            "BackendUnsupported",
            format!(
                "workspace {ws_name} runs on the control plane (EC2), where molecule cannot swap files in place; its agent downloads the plugin itself: GET {} with its workspace token as Bearer",
                crate::resources::names::download_path(&ns, &pi.name_any())
            ),
        );
        return Some(r);
    }
    None
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
}
