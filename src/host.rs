//! The wiring point (ADR 0044): builds every service once — the workspace backends, the image
//! service, the states of the registry, A2A and plugin-download routes, the agent listener and
//! the routers — and hands the controllers and the HTTP routes what they need. `serve` and
//! `operator` call it; `controllers` and `shim` never import each other.
//!
//! Startup runs in this order: [`Host::new`] starts the Workspace cache and builds what needs
//! no Docker engine (the registry and download states), so the listeners can serve at once;
//! [`Host::run`] then connects the backends (retrying until Docker answers), builds the image
//! service and the A2A state from them, binds the agent listener (its address is the URL agents
//! are told), and runs the controllers. The two services that need the engine reach their
//! routes through [`crate::late`], which only this module fills.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use kube::Client;
use kube::runtime::reflector::ObjectRef;

use crate::backends::controlplane::{ControlPlaneBackend, ControlPlaneConfig};
use crate::backends::kubernetes::{KubernetesBackend, KubernetesSettings};
use crate::backends::metered::MeteredBackend;
use crate::backends::{BackendChoice, Backends, WorkspaceBackend};
use crate::controllers::{self, HostSettings, Readiness, Selection, Triggers, cache};
use crate::images::{ImageSettings, Images};
use crate::late::{self, Fill, Late};
use crate::resources::Workspace;
use crate::shim::a2a::A2aState;
use crate::shim::activity::ActivityLog;
use crate::shim::plugin_download::DownloadState;
use crate::shim::registry::RegistryState;
use crate::shim::teams::TeamsState;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// The Docker network every workspace joins (the original platform's name).
pub const NETWORK: &str = "molecule-core-net";

/// What `serve` and `operator` decide for the host.
#[derive(Clone)]
pub struct Settings {
    /// Which controllers run.
    pub selection: Selection,
    /// The controllers' own settings.
    pub controllers: HostSettings,
    /// Port of the agent listener on the Docker network's gateway (0: any).
    pub agent_port: u16,
    /// Address of the agent listener (default: the Docker network's gateway).
    pub agent_address: Option<IpAddr>,
    /// Installation id labelled on every container and volume; the reaper only touches its own.
    pub instance: String,
    /// The workspace backend (`docker`, or `simulated` for benchmarks).
    pub backend: BackendChoice,
    /// The EC2 control plane, when configured (`--control-plane-url`).
    pub control_plane: Option<ControlPlaneConfig>,
    /// The kubernetes backend, when this process runs it (the operator does; ADR 0057).
    pub kubernetes: Option<KubernetesSettings>,
    /// The backend of Workspaces that name none (`--default-backend`).
    pub default_backend: crate::resources::Backend,
    /// Image resolution settings (registry, template prefix and token, build cache, platform).
    pub images: ImageSettings,
    /// Timeouts and connection cap of the agent listener (ADR 0041).
    pub listen_limits: crate::apiserver::listener::Limits,
    /// Where activity rows go and the stream they are announced on (ADR 0050).
    pub activity: ActivityLog,
}

impl Settings {
    fn wants(&self, name: &str) -> bool {
        self.selection.0.iter().any(|s| s == name)
    }

    /// Workspaces, the reaper, plugins and runtimes drive a backend; org imports only write
    /// records.
    fn needs_backend(&self) -> bool {
        ["workspace", "reaper", "plugin", "runtime"]
            .iter()
            .any(|n| self.wants(n))
    }
}

/// What the HTTP routes serve, built once.
#[derive(Clone)]
pub struct Routes {
    /// `/registry/*`; `None` (503) when the Workspace controller does not run.
    pub registry: Option<Arc<RegistryState>>,
    /// Plugin downloads of external agents; `None` (503) when the plugin controller does not run.
    pub downloads: Option<Arc<DownloadState>>,
    /// The A2A proxy and console, once the backends answer.
    pub a2a: Late<A2aState>,
    /// The image refresh route, once the Docker engine answers.
    pub images: Late<Images>,
    /// Discovery, the activity log and the A2A callers (ADR 0050); `None` (503) when no
    /// Workspace cache runs.
    pub teams: Option<Arc<TeamsState>>,
    /// Delegations and the busy queue (ADR 0051), when this process runs them.
    pub delegations: Option<Arc<crate::teams::Teams>>,
}

/// The listener a router is for.
pub enum Listener<'a> {
    /// `serve`'s one port: the Kubernetes API, the REST shim with its canvas and stream, the
    /// audit log, the admin route and the agent routes. `/registry/*` here looks workspaces up
    /// in the shim's index, so it is served whatever controllers run (ADR 0049).
    Public {
        api: Router,
        shim: &'a Arc<crate::shim::Shim>,
        audit: &'a crate::audit::Audit,
        /// The API bearer token, which the admin and A2A routes accept.
        token: &'a str,
        /// Whether the admin routes are served (`shim::images::admin_routes_enabled`).
        admin_routes: bool,
    },
    /// The agent listener on the Docker network: `/registry/*` and plugin downloads.
    Agent,
    /// The operator's own port: probes, metrics and the agent routes.
    Operator {
        metrics: Arc<Metrics>,
        ready: Readiness,
    },
}

/// The one place routers are composed.
pub fn router(routes: &Routes, listener: Listener<'_>) -> Router {
    let agent = || {
        crate::shim::registry::router(routes.registry.clone())
            .merge(crate::shim::plugin_download::router(
                routes.downloads.clone(),
            ))
            .merge(crate::shim::delegations::router(routes.delegations.clone()))
    };
    // Agents also find their peers, call them through the proxy and report their activity
    // there, with their own tokens only (ADR 0050).
    let team = || {
        crate::shim::teams::router(routes.teams.clone(), None)
            .merge(crate::shim::a2a::agent_router(routes.a2a.clone()))
    };
    match listener {
        Listener::Agent => agent().merge(team()),
        Listener::Operator { metrics, ready } => {
            probes(metrics, ready).merge(agent()).merge(team())
        }
        Listener::Public {
            api,
            shim,
            audit,
            token,
            admin_routes,
        } => crate::shim::registry::router(Some(shim.registry()))
            .merge(crate::shim::plugin_download::router(
                routes.downloads.clone(),
            ))
            .merge(crate::shim::delegations::router(routes.delegations.clone()))
            .merge(crate::shim::images::router(
                routes.images.clone(),
                token.to_string(),
                admin_routes,
            ))
            .merge(shim.router())
            .merge(crate::shim::a2a::router(routes.a2a.clone(), token))
            .merge(crate::shim::teams::router(
                routes.teams.clone(),
                Some(Arc::new(crate::tokens::digest(token))),
            ))
            .merge(crate::audit::router(audit.clone(), token.to_string()))
            .merge(api),
    }
}

#[derive(Clone)]
struct Probes {
    metrics: Arc<Metrics>,
    ready: Readiness,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(p): State<Probes>) -> axum::response::Response {
    if p.ready.get() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn metrics(State(p): State<Probes>) -> axum::response::Response {
    (
        [("content-type", crate::telemetry::CONTENT_TYPE)],
        p.metrics.render(),
    )
        .into_response()
}

/// `/healthz`, `/livez`, `/readyz` and `/metrics`.
fn probes(metrics: Arc<Metrics>, ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(Probes { metrics, ready })
}

/// The writing halves of the late services; only the host fills them.
struct Fills {
    a2a: Fill<A2aState>,
    images: Fill<Images>,
}

/// The services of one process, built in startup order.
pub struct Host {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// The Workspace cache; `None` when no controller runs and none was handed in.
    workspaces: Option<Arc<cache::SharedCache<Workspace>>>,
    routes: Routes,
    fills: Fills,
    /// The path of platform-originated messages the schedule and channel controllers use
    /// (ADR 0053, ADR 0054).
    platform: Option<Arc<crate::teams::Teams>>,
}

impl Host {
    /// Starts the Workspace cache (every replica) and builds what the routes can serve before
    /// the Docker engine answers.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Host {
        let workspaces =
            (!settings.selection.0.is_empty()).then(|| Arc::new(Self::workspace_cache(&client)));
        Self::build(client, settings, metrics, workspaces)
    }

    /// Like [`Host::new`], on a Workspace cache the caller started (and shares with the REST
    /// shim: one Workspace watch per process, ADR 0025).
    pub fn on_cache(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        workspaces: Arc<cache::SharedCache<Workspace>>,
    ) -> Host {
        Self::build(client, settings, metrics, Some(workspaces))
    }

    /// A Workspace cache watching every namespace through `client`.
    pub fn workspace_cache(client: &Client) -> cache::SharedCache<Workspace> {
        cache::SharedCache::<Workspace>::start(
            kube::Api::all(client.clone()),
            kube::runtime::watcher::Config::default(),
        )
    }

    fn build(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        workspaces: Option<Arc<cache::SharedCache<Workspace>>>,
    ) -> Host {
        // The routes of the controllers are served only where controllers run.
        let serving = workspaces
            .as_ref()
            .filter(|_| !settings.selection.0.is_empty());
        let registry = serving.filter(|_| settings.wants("workspace")).map(|w| {
            Arc::new(RegistryState {
                client: client.clone(),
                workspaces: w.reader().into(),
                metrics: metrics.clone(),
            })
        });
        let teams = serving.map(|w| {
            Arc::new(TeamsState {
                client: client.clone(),
                workspaces: w.reader(),
                activity: settings.activity.clone(),
                metrics: metrics.clone(),
            })
        });
        let downloads = settings.wants("plugin").then(|| {
            Arc::new(DownloadState {
                client: client.clone(),
                fetcher: settings.controllers.plugins.fetcher(),
            })
        });
        let (a2a_fill, a2a) = late::pair();
        let (images_fill, images) = late::pair();
        Host {
            client,
            settings,
            metrics,
            workspaces,
            routes: Routes {
                registry,
                downloads,
                a2a,
                images,
                teams,
                delegations: None,
            },
            fills: Fills {
                a2a: a2a_fill,
                images: images_fill,
            },
            platform: None,
        }
    }

    /// Runs delegations and queues calls to busy workspaces through `teams` (ADR 0051).
    pub fn with_teams(mut self, teams: Arc<crate::teams::Teams>) -> Host {
        self.routes.delegations = Some(teams.clone());
        self.platform = Some(teams);
        self
    }

    /// Lets the schedule and channel controllers send platform messages through `teams`
    /// without serving the delegation routes (the operator; ADR 0053, ADR 0054).
    pub fn with_platform_messages(mut self, teams: Arc<crate::teams::Teams>) -> Host {
        self.platform = Some(teams);
        self
    }

    /// The changes of the shared Workspace cache for the subscriber `name` (ADR 0025); `None`
    /// when this process keeps no cache (no controller runs).
    pub fn workspace_feed(&self, name: &str) -> Option<crate::feed::Feed<Workspace>> {
        self.workspaces.as_ref().map(|w| w.feed(name))
    }

    /// What the routes serve; compose them with [`router`].
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// Connects the backends, fills the late services, binds the agent listener and runs the
    /// selected controllers until `shutdown` fires.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Host {
            client,
            settings,
            metrics,
            workspaces,
            routes,
            fills,
            platform,
        } = self;
        controllers::check_crds(&client).await?;
        let selection = settings.selection.clone();
        metrics.set(
            "molecule_controllers_running",
            &[],
            selection.0.len() as f64,
        );
        let Some(workspaces) = workspaces.filter(|_| !selection.0.is_empty()) else {
            settings.controllers.ready.set(true);
            tracing::info!("controller host started with no controllers");
            shutdown.wait().await;
            return Ok(());
        };
        let triggers = Triggers::default();
        let mut background = tokio::task::JoinSet::new();
        let mut started = Started::default();
        if settings.needs_backend() {
            let Some(s) = start_backends(
                &client,
                &settings,
                &metrics,
                &triggers,
                &mut background,
                &shutdown,
            )
            .await?
            else {
                return Ok(()); // shut down while waiting for Docker
            };
            started = s;
        }
        if let Some(images) = &started.images {
            fills.images.fill(images.clone());
        }
        // The agent listener: every replica serves /registry/* (it only writes status via the API).
        let mut platform_url = None;
        if settings.wants("workspace")
            && let Some(backends) = &started.backends
        {
            let (listener, url) = agent_listener(&settings, started.gateway)?;
            // Bounded like every listener (ADR 0041).
            background.spawn(crate::apiserver::listener::serve(
                listener,
                router(&routes, Listener::Agent),
                crate::apiserver::listener::Protocols::Plain,
                settings.listen_limits,
                shutdown.clone(),
            ));
            let teams = routes
                .teams
                .clone()
                .ok_or_else(|| anyhow::anyhow!("the team routes need the Workspace cache"))?;
            fills.a2a.fill(Arc::new(
                A2aState::new(
                    client.clone(),
                    workspaces.reader(),
                    backends.clone(),
                    metrics.clone(),
                    teams,
                )
                .with_queue(routes.delegations.clone()),
            ));
            platform_url = Some(url);
        }
        // One PluginInstall cache for the plugin controller and the Workspace controller's
        // first starts (ADR 0056), where either runs.
        let installs = (settings.wants("plugin") || settings.wants("workspace")).then(|| {
            Arc::new(
                cache::SharedCache::<crate::resources::PluginInstall>::start(
                    kube::Api::all(client.clone()),
                    kube::runtime::watcher::Config::default(),
                ),
            )
        });
        let services = controllers::Services {
            backends: started.backends,
            images: started.images,
            workspaces,
            installs,
            triggers,
            platform_url,
            teams: platform,
        };
        let result = controllers::run(
            client,
            selection,
            settings.controllers,
            services,
            metrics,
            shutdown,
        )
        .await;
        background.abort_all();
        tracing::info!("controller host stopped");
        result
    }
}

/// The backends and the image service, once the Docker engine answered.
#[derive(Default)]
struct Started {
    backends: Option<Backends>,
    images: Option<Arc<Images>>,
    /// Where agents on the Docker network reach this host.
    gateway: Option<IpAddr>,
}

/// Connects the workspace backends and builds the image service. `None` when shutdown came
/// while waiting for the Docker engine.
async fn start_backends(
    client: &Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    triggers: &Triggers,
    background: &mut tokio::task::JoinSet<()>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Started>> {
    let Some((backend, docker, gateway)) =
        connect_docker(settings, triggers, background, shutdown).await?
    else {
        return Ok(None);
    };
    let backend: Arc<dyn WorkspaceBackend> = Arc::new(MeteredBackend::new(
        backend,
        metrics.clone(),
        settings.backend.name(),
    ));
    let kubernetes = settings.kubernetes.clone().map(|k| {
        background.spawn(relay_pod_events(
            client.clone(),
            settings.instance.clone(),
            triggers.clone(),
        ));
        let b = KubernetesBackend::new(client.clone(), &settings.instance, k);
        Arc::new(MeteredBackend::new(
            Arc::new(b),
            metrics.clone(),
            "kubernetes",
        )) as Arc<dyn WorkspaceBackend>
    });
    let backends = Backends {
        docker: backend,
        control_plane: control_plane_backend(settings, client, metrics)?,
        kubernetes,
        default_kind: settings.default_backend,
    };
    let images = Arc::new(Images::new(
        docker,
        client.clone(),
        ImageSettings {
            simulated: settings.backend == BackendChoice::Simulated,
            ..settings.images.clone()
        },
        metrics.clone(),
    ));
    Ok(Some(Started {
        backends: Some(backends),
        images: Some(images),
        gateway,
    }))
}

/// The Docker (or simulated) backend, with the Docker client the echo image is built with and
/// the gateway agents reach the host on. Docker events feed the triggers (every replica).
/// `None` when shutdown came while waiting for the Docker engine.
async fn connect_docker(
    settings: &Settings,
    triggers: &Triggers,
    background: &mut tokio::task::JoinSet<()>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<(Arc<dyn WorkspaceBackend>, bollard::Docker, Option<IpAddr>)>> {
    if settings.backend == BackendChoice::Simulated {
        tracing::warn!("simulated backend: no container is created (benchmarking only)");
        let docker = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| anyhow::anyhow!("Docker client: {e}"))?;
        return Ok(Some((
            Arc::new(crate::backends::simulated::SimulatedBackend::new()),
            docker,
            Some(IpAddr::from([127, 0, 0, 1])),
        )));
    }
    // The Docker engine may come up after us: retry until it answers. An operator whose
    // workspaces are Pods by default asks once and goes on without it (ADR 0057).
    let backend = loop {
        match crate::backends::docker::DockerBackend::connect(NETWORK, &settings.instance).await {
            Ok(b) => break b,
            Err(e) if settings.default_backend == crate::resources::Backend::Kubernetes => {
                tracing::info!(error = %e, "no Docker engine: workspaces run as Pods only (spec.backend docker is refused)");
                let docker = bollard::Docker::connect_with_local_defaults()
                    .map_err(|e| anyhow::anyhow!("Docker client: {e}"))?;
                let none = crate::backends::unavailable::Unavailable::new(
                    "no Docker engine is reachable from this operator (it runs workspaces as Pods)",
                );
                return Ok(Some((Arc::new(none), docker, None)));
            }
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
    background.spawn(relay_docker_events(
        docker.clone(),
        settings.instance.clone(),
        triggers.clone(),
    ));
    Ok(Some((Arc::new(backend), docker, network.gateway_ip)))
}

/// Wakes the Workspace controller when a managed container changes, and the reaper when
/// something appears or goes away that no live Workspace owns.
async fn relay_docker_events(docker: bollard::Docker, instance: String, triggers: Triggers) {
    let mut s = std::pin::pin!(crate::backends::events::managed_events(docker, instance));
    while let Some(ev) = s.next().await {
        if ev.kind == crate::backends::ManagedKind::Container
            && !ev.name.is_empty()
            && matches!(
                ev.action.as_str(),
                "die" | "stop" | "kill" | "oom" | "destroy" | "start"
            )
        {
            triggers
                .workspaces
                .send(ObjectRef::new(&ev.name).within(&ev.namespace));
        }
        if matches!(ev.action.as_str(), "create" | "start" | "destroy" | "die")
            && !triggers.live.contains(&ev.uid)
        {
            triggers.reaper.send(());
        }
    }
}

/// Wakes the Workspace controller when one of this installation's workspace Pods changes (a
/// kubelet's status write), and the reaper when a Pod of no live Workspace appears or goes.
async fn relay_pod_events(client: Client, instance: String, triggers: Triggers) {
    let mut s = std::pin::pin!(crate::backends::kubernetes::pod_changes(client, &instance));
    while let Some(change) = s.next().await {
        if let Some(name) = &change.workspace {
            triggers
                .workspaces
                .send(ObjectRef::new(name).within(&change.namespace));
        }
        if change.uid.is_some_and(|uid| !triggers.live.contains(&uid)) {
            triggers.reaper.send(());
        }
    }
}

/// The control-plane backend, when one is configured.
fn control_plane_backend(
    settings: &Settings,
    client: &Client,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<dyn WorkspaceBackend>>> {
    let Some(cfg) = &settings.control_plane else {
        return Ok(None);
    };
    let cp = ControlPlaneBackend::new(cfg.clone(), &settings.instance, Some(client.clone()))
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

/// Binds the agent listener with SO_REUSEPORT, so every replica of one installation can share
/// one address agents are told about (the kernel spreads connections over live replicas).
fn bind_shared(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
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

/// Binds the agent listener and decides the URL agents are told to call.
fn agent_listener(
    settings: &Settings,
    gateway: Option<IpAddr>,
) -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let ip = settings
        .agent_address
        .or(gateway)
        .ok_or_else(|| anyhow::anyhow!("the Docker network {NETWORK} has no IPv4 gateway"))?;
    let configured = &settings.controllers.workspace.platform_url;
    // Embedded mode may fall back to any port; replicas must share the one they were given.
    let embedded = settings.controllers.election.is_none() && configured.is_empty();
    let listener = match bind_shared((ip, settings.agent_port).into()) {
        Ok(l) => l,
        Err(_) if embedded => bind_shared((ip, 0).into())?,
        Err(e) => {
            return Err(anyhow::anyhow!(
                "binding the agent listener on {ip}:{}: {e}",
                settings.agent_port
            ));
        }
    };
    let platform_url = if configured.is_empty() {
        format!("http://{}", listener.local_addr()?)
    } else {
        configured.clone()
    };
    tracing::info!(listen = %listener.local_addr()?, url = %platform_url, "agent listener ready (registry endpoints for containers)");
    Ok((listener, platform_url))
}
