//! `molecule operator`: cluster mode. The controllers alone, against an external API server
//! (KUBECONFIG, else the in-cluster service account), with audit rows in the store named by
//! `DATABASE_URL` (Postgres), workspaces on the Docker engine of `DOCKER_HOST`, and leader
//! election so several replicas can run (ADR 0025, 0026). Its own HTTP listener serves
//! `/healthz`, `/readyz`, `/metrics` and the agent-facing `/registry/*`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::controllers::{self, HostSettings, Readiness, Selection, leader};
use crate::serve::WorkspaceOptions;
use crate::telemetry::Metrics;

/// The User-Agent of the operator's API client (the API server's per-client request metric,
/// and hence the RBAC drift test, tells its calls apart by it).
pub const USER_AGENT: &str = concat!("molecule-operator/", env!("CARGO_PKG_VERSION"));

/// Options of `operator`.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub controllers: Selection,
    /// Health, readiness, metrics and registry endpoints.
    pub listen: SocketAddr,
    /// `DATABASE_URL`: where audit rows go (log only when unset).
    pub database_url: Option<String>,
    pub workspaces: WorkspaceOptions,
    /// Root that workspace `filesDir` paths are confined to.
    pub template_root: PathBuf,
    /// Agent listener address (default: the Docker network's gateway) and port (0: any).
    pub agent_address: Option<IpAddr>,
    pub agent_port: u16,
    /// What agents are told to call (default: the agent listener's own address).
    pub platform_url: Option<String>,
    /// Lease name, namespace (default: the client's namespace) and holder identity.
    pub lease_name: String,
    pub lease_namespace: Option<String>,
    pub identity: Option<String>,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// Bound on in-flight reconciles at shutdown.
    pub shutdown_grace: Duration,
    /// The PluginInstall controller's options (registry dir, fetch limits).
    pub plugins: crate::serve::PluginOptions,
    /// Image resolution (registry, template prefix and token, build cache, platform).
    pub images: crate::images::ImageSettings,
    /// `--audit-retention-days`: audit rows older than this are deleted (None: kept forever).
    pub audit_retention: Option<Duration>,
    /// `--activity-retention-days`: activity rows older than this are deleted (ADR 0050).
    pub activity_retention: Option<Duration>,
    /// Timeouts and connection cap of both listeners (ADR 0041).
    pub listen_limits: crate::apiserver::listener::Limits,
    /// `--require-tls`: both listeners speak plain HTTP only, so the operator refuses to start.
    pub require_tls: bool,
    /// Org template sources besides the root (ADR 0043).
    pub template_sources: crate::orgtemplate::SourceSettings,
    /// The kubernetes backend's options (ADR 0057).
    pub kubernetes: KubernetesOptions,
}

/// `--default-backend` and the `--kubernetes-*` flags.
#[derive(Clone, Debug)]
pub struct KubernetesOptions {
    /// The backend of Workspaces that name none.
    pub default_backend: crate::resources::Backend,
    /// Whether the kubernetes backend runs (`--kubernetes-backend`, or the default).
    pub enabled: bool,
    /// Where agents in Pods reach `/registry/*` (default: `--platform-url`).
    pub platform_url: Option<String>,
    pub settings: crate::backends::kubernetes::KubernetesSettings,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            default_backend: crate::resources::Backend::Docker,
            enabled: false,
            platform_url: None,
            settings: Default::default(),
        }
    }
}

/// A client from KUBECONFIG (or ~/.kube/config), else the in-cluster service account; nothing
/// in-process. Requests carry [`USER_AGENT`].
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("building a client from KUBECONFIG or the in-cluster config")?;
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(USER_AGENT),
    ));
    kube::Client::try_from(config).context("building the API client")
}

/// The host's settings in cluster mode: leader election, agents told `--platform-url` or the
/// agent listener's address.
fn host_settings(
    opts: &OperatorOptions,
    instance: String,
    audit: crate::audit::Audit,
    plugins: controllers::plugin::Settings,
    election: leader::Settings,
    ready: Readiness,
) -> anyhow::Result<crate::host::Settings> {
    let workspace = controllers::workspace::Settings {
        platform_url: opts.platform_url.clone().unwrap_or_default(),
        heartbeat_seconds: opts.workspaces.heartbeat_seconds,
        heartbeat_timeout: opts.workspaces.heartbeat_timeout,
        provision_timeout: opts.workspaces.provision_timeout,
        template_root: opts.template_root.clone(),
        agent_binary: std::env::current_exe()?,
        control_plane_platform_url: opts.workspaces.control_plane_platform_url.clone(),
        kubernetes_platform_url: opts.kubernetes.platform_url.clone(),
        kubernetes_allow_privileged: opts.kubernetes.settings.allow_privileged,
    };
    let org_import = {
        // The template root is never a workspace_dir (ADR 0039).
        let mut s = controllers::org_import::Settings::new(
            opts.template_root.clone(),
            &opts.template_sources,
        );
        s.policy = opts.workspaces.template_policy.clone();
        s.policy.protected = vec![
            opts.template_root
                .canonicalize()
                .unwrap_or_else(|_| opts.template_root.clone()),
        ];
        s
    };
    Ok(crate::host::Settings {
        selection: opts.controllers.clone(),
        controllers: HostSettings {
            workspace,
            org_import,
            plugins,
            reap_every: opts.workspaces.reap_every,
            audit: audit.clone(),
            election: Some(election),
            shutdown_grace: opts.shutdown_grace,
            ready,
        },
        images: crate::images::ImageSettings {
            agent_binary: std::env::current_exe()?,
            instance: instance.clone(),
            roll_timeout: opts.workspaces.provision_timeout + Duration::from_secs(60),
            ..opts.images.clone()
        },
        agent_port: opts.agent_port,
        activity: crate::shim::activity::ActivityLog::new(audit.store(), None),
        instance,
        backend: opts.workspaces.backend,
        agent_address: opts.agent_address,
        control_plane: opts.workspaces.control_plane.clone(),
        kubernetes: opts
            .kubernetes
            .enabled
            .then(|| opts.kubernetes.settings.clone()),
        default_backend: opts.kubernetes.default_backend,
        listen_limits: opts.listen_limits,
    })
}

/// Runs until SIGTERM/SIGINT, then stops the controllers (bounded), releases the Lease and
/// returns `Ok` (exit 0).
pub async fn run(opts: OperatorOptions) -> anyhow::Result<()> {
    // ADR 0041: no TLS here; refuse rather than serve tokens in clear against the operator's wish.
    if opts.require_tls {
        anyhow::bail!(
            "--require-tls: the operator serves plain HTTP only (on --listen {} and on the agent listener); terminate TLS in front of it (an ingress or a mesh) and drop --require-tls",
            opts.listen
        );
    }
    if !opts.listen.ip().is_loopback() {
        tracing::warn!(listen = %opts.listen, "the operator answers plain HTTP on a non-loopback address: workspace tokens sent to /registry/* travel in clear unless TLS is terminated in front of it");
    }
    let client = client().await?;
    let instance = match opts.workspaces.instance.clone() {
        Some(i) => i,
        None => controllers::cluster_instance_id(&client).await?,
    };
    let audit = match opts.database_url.as_deref() {
        Some(url) => {
            let store = crate::store::open(Some(url), std::path::Path::new("molecule.db"))
                .await
                .context("opening the audit store from DATABASE_URL")?;
            tracing::info!(store = store.backend(), "audit rows go to the store");
            crate::audit::Audit::new(store)
        }
        None => {
            tracing::warn!("DATABASE_URL is not set: audit rows only reach the log");
            crate::audit::Audit::log_only()
        }
    };
    let identity = opts
        .identity
        .clone()
        .unwrap_or_else(leader::default_identity);
    let election = leader::Settings {
        namespace: opts
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string()),
        name: opts.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: opts.lease_duration,
        renew_deadline: opts.renew_deadline,
        retry_period: opts.retry_period,
    };
    election.validate().map_err(anyhow::Error::msg)?;

    if opts.agent_port == 0 && opts.platform_url.is_none() {
        tracing::warn!(
            "--agent-port 0: each replica picks its own agent address, so a new leader would recreate every container; set --agent-port (shared by all replicas) or --platform-url when running more than one replica"
        );
    }
    let metrics = Arc::new(Metrics::default());
    metrics.set("molecule_leader", &[("lease", &election.name)], 0.0);
    let ready = Readiness::default();
    // Plugin fetches use throwaway git repositories in a private temp dir.
    let scratch = std::env::temp_dir().join(format!("molecule-plugins-{}", std::process::id()));
    let mut plugins = opts.plugins.settings(PathBuf::from("plugins"), scratch);
    plugins.default_backend = opts.kubernetes.default_backend;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    tracing::info!(listen = %listener.local_addr()?, identity = %identity, lease = %format!("{}/{}", election.namespace, election.name), instance = %instance, "molecule operator starting");

    let (trigger, shutdown) = crate::shutdown::channel();
    // Every replica prunes; the deletes are idempotent (ADR 0042).
    if let Some(keep) = opts.audit_retention {
        audit.spawn_retention(keep, crate::serve::AUDIT_RETENTION_EVERY, shutdown.clone());
    }
    if let Some(keep) = opts.activity_retention {
        crate::shim::activity::ActivityLog::new(audit.store(), None).spawn_retention(
            keep,
            crate::serve::AUDIT_RETENTION_EVERY,
            shutdown.clone(),
        );
    }
    let store = audit.store();
    let settings = host_settings(&opts, instance, audit, plugins, election, ready.clone())?;
    let mut host = crate::host::Host::new(client.clone(), settings, metrics.clone());
    // Schedules and channels send their messages through the Teams service (ADR 0053, ADR 0054),
    // which needs the store; it follows the shared Workspace cache.
    let platform = match store {
        Some(store)
            if opts
                .controllers
                .0
                .iter()
                .any(|c| c == "channel" || c == "schedule") =>
        {
            // The host keeps the Workspace cache whenever a controller runs.
            host.workspace_feed("teams").map(|workspaces| {
                crate::teams::Teams::start(
                    workspaces,
                    store,
                    &crate::util::random_token(),
                    None,
                    metrics.clone(),
                    crate::teams::service::Settings::from_env(),
                    shutdown.clone(),
                )
            })
        }
        _ => None,
    };
    if let Some(teams) = platform {
        host = host.with_platform_messages(teams);
    }
    let http = {
        let app = crate::host::router(
            &host.routes(),
            crate::host::Listener::Operator { metrics, ready },
        );
        tokio::spawn(crate::apiserver::listener::serve(
            listener,
            app,
            crate::apiserver::listener::Protocols::Plain,
            opts.listen_limits,
            shutdown.clone(),
        ))
    };
    let mut controllers = tokio::spawn(host.run(shutdown));
    let result = tokio::select! {
        _ = crate::shutdown::signal() => {
            tracing::info!("shutting down: no new reconciles; waiting for in-flight ones");
            trigger.trigger();
            // The host bounds the drain by the grace period and the release by 10 s.
            match tokio::time::timeout(opts.shutdown_grace + Duration::from_secs(15), &mut controllers).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(anyhow::anyhow!("controller host panicked: {e}")),
                Err(_) => {
                    tracing::warn!("the controller host did not stop in time");
                    controllers.abort();
                    Ok(())
                }
            }
        }
        done = &mut controllers => {
            trigger.trigger();
            match done {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("controller host panicked: {e}")),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    tracing::info!("stopped");
    result
}
