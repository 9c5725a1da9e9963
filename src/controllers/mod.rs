//! The controllers and their leadership loop: given a `kube::Client` (to the embedded API
//! server or an external one) and the services `host` built for them (ADR 0044), runs the
//! selected controllers until shutdown. Controllers never know which API server they talk to.
//!
//! Every controller is gated uniformly behind leadership (`leader`): caches (`cache`) stay warm
//! on every replica, controllers run only on the Lease holder. `rbac` declares the API
//! permissions all of it needs.

use std::sync::Arc;

use crate::backends::Backends;
use crate::resources::Workspace;
use crate::shutdown::Shutdown;
use kube::Client;
use kube::runtime::reflector::ObjectRef;

use crate::telemetry::Metrics;

pub mod cache;
pub mod channel;
#[cfg(test)]
mod inproc;
pub mod kit;
pub mod leader;
pub mod org_import;
pub mod plugin;
pub mod rbac;
pub mod reaper;
pub mod report;
pub mod runtime;
pub mod schedule;
pub mod workspace;

/// Names of the controllers this build has, in start order.
pub const KNOWN: &[&str] = &[
    "workspace",
    "reaper",
    "plugin",
    "org_import",
    "runtime",
    "channel",
    "schedule",
];

/// Settings of the controllers.
#[derive(Clone)]
pub struct HostSettings {
    /// Workspace controller settings; an empty `platform_url` is filled in by `host` once the
    /// agent listener is bound (a set one, e.g. a Service address in a cluster, is kept).
    pub workspace: workspace::Settings,
    /// Periodic resync of the orphan reaper.
    pub reap_every: std::time::Duration,
    /// Where controllers record audit rows (the store in embedded mode; Postgres from
    /// DATABASE_URL in cluster mode; the log alone otherwise).
    pub audit: crate::audit::Audit,
    /// Leader election; `None` runs the controllers unconditionally (embedded mode).
    pub election: Option<leader::Settings>,
    /// How long in-flight reconciles may take to finish on shutdown.
    pub shutdown_grace: std::time::Duration,
    /// Set once the caches are synced.
    pub ready: Readiness,
    /// PluginInstall controller settings (plugin registry dir, fetch limits).
    pub plugins: plugin::Settings,
    /// OrgImport controller settings (template root, `!external` settings).
    pub org_import: org_import::Settings,
}

/// What `host` built for the controllers (ADR 0044).
pub struct Services {
    /// The workspace backends; `None` when no selected controller drives one.
    pub backends: Option<Backends>,
    /// The image service; `None` when no selected controller drives a backend.
    pub images: Option<Arc<crate::images::Images>>,
    /// The Workspace cache, warm on every replica.
    pub workspaces: Arc<cache::SharedCache<Workspace>>,
    /// The PluginInstall cache, where the plugin or Workspace controller runs.
    pub installs: Option<Arc<cache::SharedCache<crate::resources::PluginInstall>>>,
    /// Fast triggers fed by the backend's events (every replica; heard only while leading).
    pub triggers: Triggers,
    /// The URL agents are told to call; `Some` once the agent listener is bound.
    pub platform_url: Option<String>,
    /// The path of platform-originated messages (schedules, ADR 0053; channels, ADR 0054);
    /// `None` where this process does not run the Teams service.
    pub teams: Option<Arc<crate::teams::Teams>>,
}

/// Fast triggers of the Workspace controller and the reaper.
#[derive(Clone, Default)]
pub struct Triggers {
    /// A managed container changed.
    pub workspaces: cache::Relay<ObjectRef<Workspace>>,
    /// Something the reaper may have to remove appeared or went away.
    pub reaper: cache::Relay<()>,
    /// The uids of live Workspaces (events about them do not wake the reaper).
    pub live: reaper::LiveUids,
}

/// Which controllers to run (`--controllers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection(pub Vec<String>);

impl Selection {
    /// Parses `all`, `none`, or a comma-separated list of known names.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" | "" => Ok(Selection(KNOWN.iter().map(|s| s.to_string()).collect())),
            "none" => Ok(Selection(vec![])),
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect();
                if let Some(bad) = names.iter().find(|n| !KNOWN.contains(&n.as_str())) {
                    return Err(format!(
                        "unknown controller {bad:?}; known controllers: {}",
                        if KNOWN.is_empty() {
                            "(none in this build)".to_string()
                        } else {
                            KNOWN.join(", ")
                        }
                    ));
                }
                Ok(Selection(names))
            }
        }
    }
}

/// Checks that the molecule.ai kinds are served, with an install hint when they are not.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let resources = client.list_api_group_resources(crate::resources::API_VERSION).await.map_err(|e| {
        anyhow::anyhow!("the API server does not serve {} ({e}); install the CRDs first: kubectl apply -f crds/", crate::resources::API_VERSION)
    })?;
    for crd in crate::resources::all_crds() {
        if !resources
            .resources
            .iter()
            .any(|r| r.name == crd.spec.names.plural)
        {
            anyhow::bail!(
                "the API server does not serve {}; install the CRDs first: kubectl apply -f crds/",
                crd.spec.names.plural
            );
        }
    }
    Ok(())
}

/// The default installation id in cluster mode: the uid of the `default` Namespace, which is
/// stable for the life of a cluster and the same for every replica.
pub async fn cluster_instance_id(client: &Client) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let ns = kube::Api::<Namespace>::all(client.clone())
        .get("default")
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading the default Namespace for the instance id ({e}); set --instance"
            )
        })?;
    let uid: String = ns
        .metadata
        .uid
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    if uid.len() < 12 {
        anyhow::bail!("the default Namespace has no usable uid; set --instance");
    }
    Ok(uid)
}

/// Whether the host is ready: CRDs served and caches synced (the operator's `/readyz`).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<std::sync::atomic::AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Maps a Secret to the workspaces whose env reads it (a Secret change restarts them once).
fn secret_dependents(
    workspaces: kube::runtime::reflector::Store<crate::resources::Workspace>,
) -> impl Fn(
    k8s_openapi::api::core::v1::Secret,
) -> Vec<kube::runtime::reflector::ObjectRef<crate::resources::Workspace>>
+ Send
+ Sync
+ 'static {
    use kube::ResourceExt;
    move |secret| {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        workspaces
            .state()
            .into_iter()
            .filter(|w| {
                w.metadata.namespace.as_deref() == Some(ns.as_str())
                    && workspace::env::referenced_secrets(&w.name_any(), &w.spec).contains(&name)
            })
            .map(|w| kube::runtime::reflector::ObjectRef::from_obj(&*w))
            .collect()
    }
}

/// Wakes the reaper on every Workspace deletion: a record that disappears (deleted, finalizer
/// stripped, store wiped) leaves orphans at once, not at the next resync. The same changes keep
/// `live` current, which lets Docker events about live Workspaces pass without a reaper pass.
/// They come from the shared Workspace cache (ADR 0025), not a watch of their own.
async fn reap_on_deletions(
    mut feed: crate::feed::Feed<crate::resources::Workspace>,
    triggers: cache::Relay<()>,
    live: reaper::LiveUids,
    stop: Shutdown,
) {
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            change = feed.recv() => match change {
                Some(change) => {
                    if live.apply(&change) {
                        triggers.send(());
                    }
                }
                None => return,
            },
            _ = &mut stop => return,
        }
    }
}

/// The Runtime controller for one leadership term, over the process's Runtime cache
/// (ADR 0025): spec changes, requeues and nudges from workspace starts (a rebuilt template)
/// wake it; its own status writes do not.
async fn runtime_controller(
    client: Client,
    images: Arc<crate::images::Images>,
    controller: kube::runtime::Controller<crate::resources::Runtime>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    use futures::StreamExt;
    use kube::runtime::reflector::ObjectRef;
    let reporter = kube::runtime::events::Reporter {
        controller: "molecule-runtime".into(),
        instance: std::env::var("HOSTNAME").ok(),
    };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(runtime::Context::new(
        client.clone(),
        images.clone(),
        recorder,
        metrics,
    ));
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(256);
    images.set_notify(tx);
    let nudges = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|name| ObjectRef::<crate::resources::Runtime>::new(&name));
    controller
        .reconcile_on(nudges)
        .graceful_shutdown_on(stop.wait())
        .run(runtime::reconcile, runtime::error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Reconciles one controller runs at once. Unbounded, a backlog of 1,000 objects opens as many
/// API connections (and TLS handshakes) at once; a bound keeps connections reused.
pub const MAX_CONCURRENT_RECONCILES: u16 = 64;

/// The Workspace controller's context, telling agents to call `platform_url`, reading the
/// PluginInstall and Runtime caches where the process has them (ADR 0025).
fn workspace_context(
    client: &Client,
    host: &HostSettings,
    backends: &Backends,
    images: &Arc<crate::images::Images>,
    platform_url: String,
    metrics: &Arc<Metrics>,
    (installs, runtimes): (
        Option<&cache::SharedCache<crate::resources::PluginInstall>>,
        Option<&cache::SharedCache<crate::resources::Runtime>>,
    ),
) -> Arc<workspace::Context> {
    let reporter = kube::runtime::events::Reporter {
        controller: "molecule-workspace".into(),
        instance: std::env::var("HOSTNAME").ok(),
    };
    let ctx = workspace::Context::new(
        client.clone(),
        backends.clone(),
        images.clone(),
        kube::runtime::events::Recorder::new(client.clone(), reporter),
        workspace::Settings {
            platform_url,
            ..host.workspace.clone()
        },
        metrics.clone(),
        host.audit.clone(),
    );
    let ctx = match installs {
        Some(i) => ctx.with_plugins(host.plugins.fetcher(), i.reader()),
        None => ctx,
    };
    Arc::new(match runtimes {
        Some(r) => ctx.with_runtimes(r.reader()),
        None => ctx,
    })
}

/// Why one leadership term of the controllers ended.
enum TermEnd {
    Lost,
    ElectorGone,
    Shutdown,
}

/// Runs the selected controllers until `shutdown` fires.
///
/// Every replica keeps the caches warm; only while it leads (always, without
/// `host.election`) does it run the controllers. Losing the lease aborts them at once; shutdown
/// lets in-flight reconciles finish within `host.shutdown_grace`, then releases the lease
/// (ADR 0025).
pub async fn run(
    client: Client,
    selection: Selection,
    host: HostSettings,
    services: Services,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    use futures::StreamExt;

    let wants = |n: &str| selection.0.iter().any(|s| s == n);
    let names: Vec<&str> = workspace::env::mutators().iter().map(|m| m.name).collect();
    tracing::info!(mutators = ?names, "env mutator chain");
    let Services {
        backends,
        images,
        workspaces,
        installs,
        triggers,
        platform_url,
        teams,
    } = services;
    for c in ["channel", "schedule"] {
        if wants(c) && teams.is_none() {
            tracing::warn!(
                controller = c,
                "this controller sends through the Teams service, which this process does not run (the operator runs it with DATABASE_URL): it stays idle"
            );
        }
    }
    let ws_triggers = triggers.workspaces;
    let reap_triggers = triggers.reaper;
    let live_uids = triggers.live;
    // One Runtime cache (ADR 0025) for the Runtime controller and the Workspace controller's
    // image resolution: a workspace pass reads no Runtime record from the API.
    let runtimes = (wants("workspace") || wants("runtime")).then(|| {
        cache::SharedCache::start(
            kube::Api::<crate::resources::Runtime>::all(client.clone()),
            kube::runtime::watcher::Config::default(),
        )
    });
    let ws_ctx = match (&backends, &images, platform_url) {
        (Some(backends), Some(images), Some(platform_url)) if wants("workspace") => {
            Some(workspace_context(
                &client,
                &host,
                backends,
                images,
                platform_url,
                &metrics,
                (installs.as_deref(), runtimes.as_ref()),
            ))
        }
        _ => None,
    };
    let caches_ready = async {
        workspaces.ready().await;
        if let Some(i) = &installs {
            i.ready().await;
        }
        if let Some(r) = &runtimes {
            r.ready().await;
        }
    };
    tokio::select! {
        _ = caches_ready => {}
        _ = shutdown.clone().wait() => return Ok(()),
    }
    host.ready.set(true);

    // Leadership: without an election this process always leads (embedded mode).
    let (lead_tx, mut leading) = tokio::sync::watch::channel(host.election.is_none());
    let (release_trigger, release) = crate::shutdown::channel();
    // Without an election the sender stays here, so "leading" never changes.
    let (elector, _always) = match host.election.clone() {
        Some(s) => (
            Some(tokio::spawn(
                leader::Elector::new(client.clone(), s, metrics.clone()).run(lead_tx, release),
            )),
            None,
        ),
        None => (None, Some(lead_tx)),
    };
    let ws_queue = cache::WorkQueue::new("workspace", metrics.clone());
    let schedule_queue = cache::WorkQueue::new("schedule", metrics.clone());
    let runtime_queue = cache::WorkQueue::new("runtime", metrics.clone());
    tracing::info!(controllers = ?selection.0, "controller host started");
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
            _ = shutdown.clone().wait() => break,
        }
        // One leadership term.
        let (term_trigger, term) = crate::shutdown::channel();
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(ctx) = &ws_ctx {
            let triggers = {
                let queue = ws_queue.clone();
                tokio_stream::wrappers::ReceiverStream::new(ws_triggers.subscribe(1024)).inspect(
                    move |r: &ObjectRef<crate::resources::Workspace>| {
                        queue.add(cache::WorkQueue::key(r.namespace.as_deref(), &r.name))
                    },
                )
            };
            // Status writes of the controller itself and routine heartbeats do not wake it:
            // only what `trigger_hash` covers does (plus requeues, Docker events and Secrets).
            let controller = workspaces
                .controller_filtered(&ws_queue, workspace::plan::trigger_hash)
                .watches(
                    kube::Api::<k8s_openapi::api::core::v1::Secret>::all(client.clone()),
                    // Not the Secrets the backends make per workspace (ADR 0057): no env
                    // reads them, and a team of Pods has one each.
                    kube::runtime::watcher::Config::default()
                        .labels(&format!("!{}", crate::backends::docker::LABEL_MANAGED)),
                    secret_dependents(workspaces.reader()),
                )
                .reconcile_on(triggers);
            // A first start waiting for its announced PluginInstalls (ADR 0056) is woken when
            // one appears (a new uid), not by their status writes.
            let controller = match &installs {
                Some(i) => {
                    let queue = ws_queue.clone();
                    controller.watches_shared_stream(
                        i.touched_filtered("workspace", plugin::appeared_hash),
                        move |pi: Arc<crate::resources::PluginInstall>| {
                            let r = plugin::workspace_of(&pi);
                            queue.add(cache::WorkQueue::key(r.namespace.as_deref(), &r.name));
                            Some(r)
                        },
                    )
                }
                None => controller,
            };
            // A Runtime record that appears, changes its spec or goes wakes the Workspaces
            // that name it: they read it from the cache (ADR 0025).
            let controller = match &runtimes {
                Some(r) => {
                    let (queue, reader) = (ws_queue.clone(), workspaces.reader());
                    controller.watches_shared_stream(
                        r.touched_filtered("workspace", kube::runtime::predicates::generation),
                        move |rt: Arc<crate::resources::Runtime>| {
                            use kube::ResourceExt;
                            let named = workspace::naming_runtime(&reader, &rt.name_any());
                            for w in &named {
                                queue.add(cache::WorkQueue::key(w.namespace.as_deref(), &w.name));
                            }
                            named
                        },
                    )
                }
                None => controller,
            }
            .with_config(
                kube::runtime::controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES),
            )
            .graceful_shutdown_on(term.clone().wait());
            let queue = ws_queue.clone();
            tasks.spawn(
                controller
                    .run(
                        move |ws, ctx| {
                            use kube::ResourceExt;
                            let guard = queue.begin(&cache::WorkQueue::key(
                                ws.namespace().as_deref(),
                                &ws.name_any(),
                            ));
                            async move {
                                let _guard = guard;
                                workspace::reconcile(ws, ctx).await
                            }
                        },
                        workspace::error_policy,
                        ctx.clone(),
                    )
                    .for_each(|_| async {}),
            );
        }
        if wants("reaper")
            && let Some(backends) = &backends
        {
            let triggers = reap_triggers.subscribe(64);
            tasks.spawn(reap_on_deletions(
                workspaces.feed("reaper"),
                reap_triggers.clone(),
                live_uids.clone(),
                term.clone(),
            ));
            tasks.spawn(reaper::run(
                client.clone(),
                backends.all(),
                host.reap_every,
                triggers,
                metrics.clone(),
                term.clone(),
            ));
        }
        if wants("plugin")
            && let Some(backends) = &backends
            && let Some(installs) = &installs
        {
            tasks.spawn(plugin::run(
                client.clone(),
                backends.docker.clone(),
                backends.kubernetes.clone(),
                host.plugins.clone(),
                metrics.clone(),
                host.audit.clone(),
                (&workspaces, installs),
                term.clone(),
            ));
        }
        if wants("runtime")
            && let Some(images) = &images
            && let Some(runtimes) = &runtimes
        {
            tasks.spawn(runtime_controller(
                client.clone(),
                images.clone(),
                runtimes.controller_filtered(&runtime_queue, kube::runtime::predicates::generation),
                metrics.clone(),
                term.clone(),
            ));
        }
        if wants("channel")
            && let Some(teams) = &teams
        {
            tasks.spawn(channel::run(
                workspaces.feed("channel"),
                workspaces.reader(),
                client.clone(),
                teams.clone(),
                metrics.clone(),
                term.clone(),
            ));
        }
        if wants("schedule")
            && let Some(teams) = &teams
        {
            tasks.spawn(schedule::run(
                workspaces.controller_filtered(&schedule_queue, schedule::trigger_hash),
                schedule_queue.clone(),
                client.clone(),
                teams.clone(),
                metrics.clone(),
                schedule::Settings::default(),
                term.clone(),
            ));
        }
        if wants("org_import") {
            tasks.spawn(org_import::run(
                client.clone(),
                host.org_import.clone(),
                metrics.clone(),
                host.audit.clone(),
                term.clone(),
            ));
        }
        metrics.set("molecule_controllers_active", &[], 1.0);
        tracing::info!(
            event = "controllers.started",
            "controllers started: this replica leads"
        );
        let end = tokio::select! {
            r = leading.wait_for(|l| !*l) => if r.is_ok() { TermEnd::Lost } else { TermEnd::ElectorGone },
            _ = shutdown.clone().wait() => TermEnd::Shutdown,
        };
        match end {
            TermEnd::Lost | TermEnd::ElectorGone => {
                // Stop writing at once: in-flight reconciles are dropped where they stand.
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                ws_queue.clear();
                schedule_queue.clear();
                metrics.set("molecule_controllers_active", &[], 0.0);
                tracing::warn!(
                    event = "controllers.stopped",
                    "leadership lost: controllers stopped"
                );
                if matches!(end, TermEnd::ElectorGone) {
                    tracing::error!(
                        "leader election stopped unexpectedly; the controllers stay stopped"
                    );
                    break;
                }
            }
            TermEnd::Shutdown => {
                term_trigger.trigger();
                let drained = tokio::time::timeout(host.shutdown_grace, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(
                        grace_s = host.shutdown_grace.as_secs_f64(),
                        "in-flight reconciles did not finish within the grace period; aborting them"
                    );
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
                metrics.set("molecule_controllers_active", &[], 0.0);
                break;
            }
        }
    }
    // Only once nothing writes any more may another replica take over.
    release_trigger.trigger();
    if let Some(e) = elector {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), e).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_parses_all_none_and_rejects_unknown() {
        assert_eq!(Selection::parse("none").expect("none").0.len(), 0);
        assert_eq!(Selection::parse("all").expect("all").0.len(), KNOWN.len());
        let e = Selection::parse("bogus").expect_err("unknown");
        assert!(e.contains("unknown controller \"bogus\""), "{e}");
    }
}
