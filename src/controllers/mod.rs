//! The controller host: builds a `kube::Client` (from the serve-written kubeconfig in embedded
//! mode, or KUBECONFIG/in-cluster config in cluster mode) and runs the selected controllers
//! until shutdown. Controllers never know which API server they talk to.
//!
//! The host gates every controller uniformly behind leadership (`leader`): caches (`cache`)
//! stay warm on every replica, controllers run only on the Lease holder. `rbac` declares the
//! API permissions all of it needs.

use std::sync::Arc;

use crate::backends::WorkspaceBackend;
use crate::backends::metered::MeteredBackend;
use crate::shutdown::Shutdown;
use kube::Client;

pub use crate::backends::BackendChoice;
use crate::telemetry::Metrics;

pub mod cache;
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
pub mod workspace;

/// Names of the controllers this build has, in start order.
pub const KNOWN: &[&str] = &["workspace", "reaper", "plugin", "org_import", "runtime"];

/// The Docker network every workspace joins (the original platform's name).
pub const NETWORK: &str = "molecule-core-net";

/// Settings of the controller host.
#[derive(Clone)]
pub struct HostSettings {
    /// Workspace controller settings; an empty `platform_url` is filled in once the agent
    /// listener is bound (a set one, e.g. a Service address in a cluster, is kept).
    pub workspace: workspace::Settings,
    /// Port of the agent listener on the Docker network's gateway (0: any).
    pub agent_port: u16,
    /// Periodic resync of the orphan reaper.
    pub reap_every: std::time::Duration,
    /// Where the registry endpoints find the controller's state.
    pub registry: crate::shim::registry::Slot,
    /// Where controllers record audit rows (the store in embedded mode; Postgres from
    /// DATABASE_URL in cluster mode; the log alone otherwise).
    pub audit: crate::audit::Audit,
    /// Installation id labelled on every container and volume; the reaper only touches its own.
    pub instance: String,
    /// The workspace backend (`docker`, or `simulated` for benchmarks).
    pub backend: BackendChoice,
    /// Address of the agent listener (default: the Docker network's gateway).
    pub agent_address: Option<std::net::IpAddr>,
    /// Leader election; `None` runs the controllers unconditionally (embedded mode).
    pub election: Option<leader::Settings>,
    /// How long in-flight reconciles may take to finish on shutdown.
    pub shutdown_grace: std::time::Duration,
    /// Set once the caches are synced.
    pub ready: Readiness,
    /// PluginInstall controller settings (plugin registry dir, fetch limits).
    pub plugins: plugin::Settings,
    /// The EC2 control plane, when configured (`--control-plane-url`).
    pub control_plane: Option<crate::backends::controlplane::ControlPlaneConfig>,
    /// Where the A2A proxy finds the controller's state.
    pub a2a: crate::shim::a2a::Slot,
    /// OrgImport controller settings (template root, `!external` settings).
    pub org_import: org_import::Settings,
    /// Image resolution settings (registry, template prefix and token, build cache, platform).
    pub images: crate::images::ImageSettings,
    /// Where the shim's refresh route finds the image service.
    pub images_slot: crate::shim::images::Slot,
    /// Timeouts and connection cap of the agent listener (ADR 0041).
    pub listen_limits: crate::apiserver::listener::Limits,
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

/// Binds the agent listener with SO_REUSEPORT, so every replica of one installation can share
/// one address agents are told about (the kernel spreads connections over live replicas).
fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The backend the host runs, with the Docker client the echo image is built with and the
/// gateway agents reach the host on. Docker events feed the relays (every replica). `None`
/// when shutdown came while waiting for the Docker engine.
async fn connect_backend(
    host: &HostSettings,
    ws_triggers: &cache::Relay<kube::runtime::reflector::ObjectRef<crate::resources::Workspace>>,
    reap_triggers: &cache::Relay<()>,
    live: &reaper::LiveUids,
    background: &mut tokio::task::JoinSet<()>,
    shutdown: &Shutdown,
) -> anyhow::Result<
    Option<(
        Arc<dyn WorkspaceBackend>,
        bollard::Docker,
        Option<std::net::IpAddr>,
    )>,
> {
    use futures::StreamExt;
    use kube::runtime::reflector::ObjectRef;
    if host.backend == BackendChoice::Simulated {
        tracing::warn!("simulated backend: no container is created (benchmarking only)");
        let docker = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| anyhow::anyhow!("Docker client: {e}"))?;
        return Ok(Some((
            Arc::new(crate::backends::simulated::SimulatedBackend::new()),
            docker,
            Some(std::net::IpAddr::from([127, 0, 0, 1])),
        )));
    }
    // The Docker engine may come up after us: retry until it answers.
    let backend = loop {
        match crate::backends::docker::DockerBackend::connect(NETWORK, &host.instance).await {
            Ok(b) => break b,
            Err(e) => {
                tracing::warn!(error = %e, "Docker is not reachable; workspaces cannot be provisioned until it is (retrying)");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    _ = shutdown.clone().wait() => return Ok(None),
                }
            }
        }
    };
    let network = backend.ensure_network().await?;
    let docker = backend.docker().clone();
    background.spawn({
        let docker = docker.clone();
        let instance = host.instance.clone();
        let (ws_triggers, reap_triggers) = (ws_triggers.clone(), reap_triggers.clone());
        let live = live.clone();
        async move {
            let mut s = std::pin::pin!(crate::backends::events::managed_events(docker, instance));
            while let Some(ev) = s.next().await {
                if ev.kind == crate::backends::ManagedKind::Container
                    && !ev.name.is_empty()
                    && matches!(
                        ev.action.as_str(),
                        "die" | "stop" | "kill" | "oom" | "destroy" | "start"
                    )
                {
                    ws_triggers.send(ObjectRef::new(&ev.name).within(&ev.namespace));
                }
                if matches!(ev.action.as_str(), "create" | "start" | "destroy" | "die")
                    && !live.contains(&ev.uid)
                {
                    reap_triggers.send(());
                }
            }
        }
    });
    Ok(Some((Arc::new(backend), docker, network.gateway_ip)))
}

/// The control-plane backend, when one is configured.
fn control_plane_backend(
    host: &HostSettings,
    client: &Client,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<dyn WorkspaceBackend>>> {
    let Some(cfg) = &host.control_plane else {
        return Ok(None);
    };
    let cp = crate::backends::controlplane::ControlPlaneBackend::new(
        cfg.clone(),
        &host.instance,
        Some(client.clone()),
    )
    .map_err(|e| anyhow::anyhow!("control plane: {e}"))?;
    if cp.config().is_cleartext_remote() {
        tracing::warn!(url = %cp.config().base_url, "the control-plane URL is plain http to a remote host: its credentials cross the network in clear text");
    }
    tracing::info!(url = %cp.config().base_url, org = %cp.config().org_id, "control-plane backend ready");
    Ok(Some(Arc::new(MeteredBackend::new(
        Arc::new(cp),
        metrics.clone(),
        "controlPlane",
    ))))
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
/// stripped, store wiped) leaves orphans at once, not at the next resync. The same watch keeps
/// `live` current, which lets Docker events about live Workspaces pass without a reaper pass.
async fn reap_on_deletions(
    client: Client,
    triggers: cache::Relay<()>,
    live: reaper::LiveUids,
    stop: Shutdown,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<crate::resources::Workspace> = kube::Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(ev)) => {
                    if live.apply(&ev) {
                        triggers.send(());
                    }
                }
                Some(Err(_)) => {}
                None => return,
            },
            _ = &mut stop => return,
        }
    }
}

/// The Runtime controller for one leadership term: spec changes, requeues and nudges from
/// workspace starts (a rebuilt template) wake it; its own status writes do not.
async fn runtime_controller(
    client: Client,
    images: Arc<crate::images::Images>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    use futures::StreamExt;
    use kube::runtime::controller::Controller;
    use kube::runtime::reflector::ObjectRef;
    use kube::runtime::{WatchStreamExt, watcher};
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
    let api: kube::Api<crate::resources::Runtime> = kube::Api::all(client);
    let (reader, writer) = kube::runtime::reflector::store();
    let trigger = kube::runtime::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects()
        .predicate_filter(kube::runtime::predicates::generation, Default::default());
    Controller::for_stream(trigger, reader)
        .reconcile_on(nudges)
        .graceful_shutdown_on(stop.wait())
        .run(runtime::reconcile, runtime::error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Binds the agent listener and decides the URL agents are told to call.
fn agent_listener(
    host: &HostSettings,
    gateway: Option<std::net::IpAddr>,
) -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let ip = host
        .agent_address
        .or(gateway)
        .ok_or_else(|| anyhow::anyhow!("the Docker network {NETWORK} has no IPv4 gateway"))?;
    // Embedded mode may fall back to any port; replicas must share the one they were given.
    let embedded = host.election.is_none() && host.workspace.platform_url.is_empty();
    let listener = match bind_shared((ip, host.agent_port).into()) {
        Ok(l) => l,
        Err(_) if embedded => bind_shared((ip, 0).into())?,
        Err(e) => {
            return Err(anyhow::anyhow!(
                "binding the agent listener on {ip}:{}: {e}",
                host.agent_port
            ));
        }
    };
    let platform_url = if host.workspace.platform_url.is_empty() {
        format!("http://{}", listener.local_addr()?)
    } else {
        host.workspace.platform_url.clone()
    };
    tracing::info!(listen = %listener.local_addr()?, url = %platform_url, "agent listener ready (registry endpoints for containers)");
    Ok((listener, platform_url))
}

/// Reconciles one controller runs at once. Unbounded, a backlog of 1,000 objects opens as many
/// API connections (and TLS handshakes) at once; a bound keeps connections reused.
pub const MAX_CONCURRENT_RECONCILES: u16 = 64;

/// Why one leadership term of the controllers ended.
enum TermEnd {
    Lost,
    ElectorGone,
    Shutdown,
}

/// Runs the selected controllers until `shutdown` fires.
///
/// Every replica connects the backend, keeps the caches warm and serves the agent endpoints;
/// only while it leads (always, without `host.election`) does it run the controllers. Losing
/// the lease aborts them at once; shutdown lets in-flight reconciles finish within
/// `host.shutdown_grace`, then releases the lease (ADR 0025).
pub async fn run(
    client: Client,
    selection: Selection,
    host: HostSettings,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::reflector::ObjectRef;

    check_crds(&client).await?;
    metrics.set(
        "molecule_controllers_running",
        &[],
        selection.0.len() as f64,
    );
    let wants = |n: &str| selection.0.iter().any(|s| s == n);
    if selection.0.is_empty() {
        host.ready.set(true);
        tracing::info!("controller host started with no controllers");
        shutdown.wait().await;
        return Ok(());
    }
    // Workspaces, the reaper and plugins drive a backend; org imports only write records.
    let needs_backend =
        wants("workspace") || wants("reaper") || wants("plugin") || wants("runtime");
    let names: Vec<&str> = workspace::env::mutators().iter().map(|m| m.name).collect();
    tracing::info!(mutators = ?names, "env mutator chain");

    // The backend, and its fast triggers (every replica; nobody listens to them until it leads).
    let ws_triggers: cache::Relay<ObjectRef<crate::resources::Workspace>> = cache::Relay::default();
    let reap_triggers: cache::Relay<()> = cache::Relay::default();
    let live_uids = reaper::LiveUids::default();
    let mut background = tokio::task::JoinSet::new();
    let mut backends = None;
    let mut docker_gateway = None;
    let mut images = None;
    if needs_backend {
        let Some((backend, docker, gateway)) = connect_backend(
            &host,
            &ws_triggers,
            &reap_triggers,
            &live_uids,
            &mut background,
            &shutdown,
        )
        .await?
        else {
            return Ok(()); // shut down while waiting for Docker
        };
        let backend: Arc<dyn WorkspaceBackend> = Arc::new(MeteredBackend::new(
            backend,
            metrics.clone(),
            host.backend.name(),
        ));
        backends = Some(crate::backends::Backends {
            docker: backend,
            control_plane: control_plane_backend(&host, &client, &metrics)?,
        });
        let service = Arc::new(crate::images::Images::new(
            docker.clone(),
            client.clone(),
            crate::images::ImageSettings {
                simulated: host.backend == BackendChoice::Simulated,
                ..host.images.clone()
            },
            metrics.clone(),
        ));
        let _ = host.images_slot.set(service.clone());
        images = Some(service);
        docker_gateway = Some((docker, gateway));
    }

    // Caches, warm on every replica.
    let workspaces = cache::SharedCache::<crate::resources::Workspace>::start(
        kube::Api::all(client.clone()),
        kube::runtime::watcher::Config::default(),
    );

    // The agent listener: every replica serves /registry/* (it only writes status via the API).
    let mut ws_ctx = None;
    if wants("workspace")
        && let (Some(backends), Some((_, gateway)), Some(images)) =
            (&backends, docker_gateway.clone(), &images)
    {
        let (listener, platform_url) = agent_listener(&host, gateway)?;
        let agent_app = crate::shim::registry::router(host.registry.clone()).merge(
            crate::shim::plugin_download::router(host.plugins.downloads.clone()),
        );
        // Bounded like every listener (ADR 0041).
        background.spawn(crate::apiserver::listener::serve(
            listener,
            agent_app,
            crate::apiserver::listener::Protocols::Plain,
            host.listen_limits,
            shutdown.clone(),
        ));
        let _ = host
            .registry
            .set(Arc::new(crate::shim::registry::RegistryState {
                client: client.clone(),
                workspaces: workspaces.reader(),
                metrics: metrics.clone(),
            }));
        let _ = host.a2a.set(Arc::new(crate::shim::a2a::A2aState::new(
            client.clone(),
            workspaces.reader(),
            backends.clone(),
            metrics.clone(),
        )));
        let reporter = kube::runtime::events::Reporter {
            controller: "molecule-workspace".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        ws_ctx = Some(Arc::new(workspace::Context::new(
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
        )));
    }
    tokio::select! {
        _ = workspaces.ready() => {}
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
                    kube::runtime::watcher::Config::default(),
                    secret_dependents(workspaces.reader()),
                )
                .reconcile_on(triggers)
                .with_config(
                    kube::runtime::controller::Config::default()
                        .concurrency(MAX_CONCURRENT_RECONCILES),
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
                client.clone(),
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
        {
            tasks.spawn(plugin::run(
                client.clone(),
                backends.docker.clone(),
                host.plugins.clone(),
                metrics.clone(),
                host.audit.clone(),
                term.clone(),
            ));
        }
        if wants("runtime")
            && let Some(images) = &images
        {
            tasks.spawn(runtime_controller(
                client.clone(),
                images.clone(),
                metrics.clone(),
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
    background.abort_all();
    tracing::info!("controller host stopped");
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
