//! `molecule serve`: the embedded mode. One process runs the API server (with its SQLite or
//! Postgres store), writes a kubeconfig, and hosts the controllers against it through a real
//! `kube::Client` whose requests go to the API router in process (ADR 0058).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::apiserver::{ApiConfig, ApiServer};
use crate::controllers::{self, Selection};
use crate::store::{self, SecretKey};
use crate::telemetry::Metrics;

/// Options of `serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub controllers: Selection,
    pub database_url: Option<String>,
    pub secret_key: Option<String>,
    pub api: ApiConfig,
    pub workspaces: WorkspaceOptions,
    /// Live-stream messages a client may fall behind before it is dropped.
    pub stream_backlog: usize,
    pub plugins: PluginOptions,
    /// Image settings (the agent binary and instance are filled in by `run`).
    pub images: crate::images::ImageSettings,
    /// Seed the known runtimes with auto-refresh on (`IMAGE_AUTO_REFRESH`).
    pub seed_auto_refresh: bool,
    /// `--audit-retention-days`: audit rows older than this are deleted (None: kept forever).
    pub audit_retention: Option<std::time::Duration>,
    /// `--activity-retention-days`: activity rows older than this are deleted (ADR 0050).
    pub activity_retention: Option<std::time::Duration>,
    /// Timeouts and connection cap of every listener (ADR 0041).
    pub listen_limits: crate::apiserver::listener::Limits,
    /// `--require-tls`: TLS only on `listen`; refuse to start if anything needs plain HTTP.
    pub require_tls: bool,
    /// Org template sources besides the root (ADR 0043).
    pub template_sources: crate::orgtemplate::SourceSettings,
    /// Whether the admin routes are served (`shim::images::admin_routes_enabled`).
    pub admin_routes: bool,
    /// Development mode (`shim::test_tokens::development`).
    pub development: bool,
}

/// Refuses `--require-tls` when something would still be reached over plain HTTP, and warns
/// when a non-loopback listener answers plain HTTP (ADR 0041).
fn check_plain_http(opts: &ServeOptions) -> anyhow::Result<()> {
    if opts.require_tls {
        if opts.workspaces.control_plane.is_some()
            && !opts
                .workspaces
                .control_plane_platform_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        {
            anyhow::bail!(
                "--require-tls: agents on control-plane instances would reach this server over plain HTTP; set --control-plane-platform-url to an https:// URL"
            );
        }
    } else if !opts.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %opts.listen,
            "serving plain HTTP beside TLS on a non-loopback address: the admin token and workspace tokens can cross the network in clear; use https:// or --require-tls"
        );
    }
    Ok(())
}

/// How often audit retention runs (ADR 0042).
pub const AUDIT_RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Options of the PluginInstall controller.
#[derive(Clone, Debug, Default)]
pub struct PluginOptions {
    /// `--plugins`: the `local://` plugin registry (default DATA_DIR/plugins).
    pub dir: Option<PathBuf>,
    /// Bound on one git resolve or fetch (default 5 min).
    pub fetch_timeout: Option<std::time::Duration>,
    /// Scan period of the drift loop.
    pub drift_tick: Option<std::time::Duration>,
    /// Tests only: honour in-container failpoints.
    pub failpoints: bool,
    /// `--plugin-git-hosts`: git hosts a workspace's own token may install from (ADR 0038).
    pub git_hosts: crate::plugins::git_hosts::GitHosts,
}

impl PluginOptions {
    /// The controller settings; `scratch` holds throwaway git repositories.
    pub fn settings(
        &self,
        default_dir: PathBuf,
        scratch: PathBuf,
    ) -> crate::controllers::plugin::Settings {
        let mut s =
            crate::controllers::plugin::Settings::new(self.dir.clone().unwrap_or(default_dir));
        s.scratch = scratch;
        if let Some(t) = self.fetch_timeout {
            s.fetch_timeout = t;
        }
        if let Some(t) = self.drift_tick {
            s.drift_tick = t;
        }
        s.failpoints = self.failpoints;
        s.git_hosts = self.git_hosts.clone();
        s
    }
}

/// Options of the workspace controller and reaper.
#[derive(Clone, Debug)]
pub struct WorkspaceOptions {
    pub heartbeat_seconds: u64,
    pub heartbeat_timeout: std::time::Duration,
    pub provision_timeout: std::time::Duration,
    /// `--org-templates`: the root `filesDir` is confined to (default DATA_DIR/org-templates).
    pub template_root: Option<PathBuf>,
    pub reap_every: std::time::Duration,
    /// `--instance`: the installation id on every managed container and volume (default: a
    /// random id kept in DATA_DIR/instance-id).
    pub instance: Option<String>,
    /// `--control-plane-url` and friends: the EC2 control plane, if any.
    pub control_plane: Option<crate::backends::controlplane::ControlPlaneConfig>,
    /// `--control-plane-platform-url`: where agents on instances reach `/registry/*` (default:
    /// this server's own plain-http URL, right for a control plane on the same host).
    pub control_plane_platform_url: Option<String>,
    /// `--backend` (hidden): `simulated` does no container work, for benchmarks.
    pub backend: crate::backends::BackendChoice,
    /// `--template-max-tier` and friends: what org templates may ask of the host (ADR 0039).
    pub template_policy: crate::orgtemplate::policy::Policy,
}

/// Reads the API token of a data dir, creating it (0600) on first start.
pub fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let p = data_dir.join("token");
    match std::fs::read_to_string(&p) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    }
    let t = crate::util::random_token();
    crate::util::write_private_file(&p, t.as_bytes())
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(t)
}

/// The installation id of a data dir, created on first start. It lives beside the store, not in
/// it, so a wiped store still reaps the containers the data dir's earlier life created.
pub fn load_or_create_instance(data_dir: &Path) -> anyhow::Result<String> {
    let p = data_dir.join("instance-id");
    match std::fs::read_to_string(&p) {
        Ok(t) if crate::util::valid_instance_id(t.trim()) => return Ok(t.trim().to_string()),
        Ok(t) if !t.trim().is_empty() => {
            anyhow::bail!("{} does not hold a valid instance id", p.display())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    }
    let id = crate::util::random_suffix(12);
    crate::util::write_private_file(&p, id.as_bytes())
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(id)
}

/// What `run` has decided by the time the host is built.
struct HostInputs {
    instance: String,
    audit: crate::audit::Audit,
    plugins: crate::controllers::plugin::Settings,
    template_root: PathBuf,
    /// This server's own plain-http URL.
    plain_url: String,
    agent_port: u16,
    activity: crate::shim::activity::ActivityLog,
}

/// The host's settings in embedded mode: no election, agents told the agent listener's address.
fn host_settings(opts: &ServeOptions, i: HostInputs) -> anyhow::Result<crate::host::Settings> {
    let workspace = controllers::workspace::Settings {
        platform_url: String::new(),
        heartbeat_seconds: opts.workspaces.heartbeat_seconds,
        heartbeat_timeout: opts.workspaces.heartbeat_timeout,
        provision_timeout: opts.workspaces.provision_timeout,
        template_root: i.template_root.clone(),
        agent_binary: std::env::current_exe()?,
        control_plane_platform_url: Some(
            opts.workspaces
                .control_plane_platform_url
                .clone()
                .unwrap_or(i.plain_url),
        ),
        kubernetes_platform_url: None,
        kubernetes_allow_privileged: false,
    };
    let org_import = {
        // The data dir and the template root are never a workspace_dir (ADR 0039).
        let mut s =
            controllers::org_import::Settings::new(i.template_root.clone(), &opts.template_sources);
        s.policy = opts.workspaces.template_policy.clone();
        let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        s.policy.protected = vec![real(&opts.data_dir), real(&i.template_root)];
        s
    };
    Ok(crate::host::Settings {
        selection: opts.controllers.clone(),
        controllers: controllers::HostSettings {
            workspace,
            org_import,
            reap_every: opts.workspaces.reap_every,
            audit: i.audit,
            plugins: i.plugins,
            election: None,
            shutdown_grace: std::time::Duration::from_secs(8),
            ready: Default::default(),
        },
        agent_port: i.agent_port,
        activity: i.activity,
        agent_address: None,
        images: crate::images::ImageSettings {
            agent_binary: std::env::current_exe()?,
            instance: i.instance.clone(),
            roll_timeout: opts.workspaces.provision_timeout + std::time::Duration::from_secs(60),
            ..opts.images.clone()
        },
        instance: i.instance,
        backend: opts.workspaces.backend,
        control_plane: opts.workspaces.control_plane.clone(),
        // Workspaces run on Docker here; the kubernetes backend is the operator's (ADR 0057).
        kubernetes: None,
        default_backend: crate::resources::Backend::Docker,
        listen_limits: opts.listen_limits,
    })
}

/// Runs until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    check_plain_http(&opts)?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let token = load_or_create_token(&opts.data_dir)?;
    let instance = match &opts.workspaces.instance {
        Some(i) => i.clone(),
        None => load_or_create_instance(&opts.data_dir)?,
    };
    let key = SecretKey::load(
        opts.secret_key.as_deref(),
        &opts.data_dir.join("secret.key"),
    )?;
    // The writer's open: on Postgres it takes the writer lock, or refuses (ADR 0042).
    let store = store::open_writer(
        opts.database_url.as_deref(),
        &opts.data_dir.join("molecule.db"),
    )
    .await
    .context("opening the store")?;
    let backend = store.backend();
    let audit = crate::audit::Audit::new(store.clone());
    let teams_store = store.clone();
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let api = ApiServer::start(
        store,
        key,
        token.clone(),
        addr.to_string(),
        opts.api.clone(),
        metrics.clone(),
    )
    .await
    .context("loading the API state")?;
    let cert = crate::apiserver::listener::ServingCert::load_or_create(&opts.data_dir)?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let server_url = format!("https://{host}:{}", addr.port());
    let plain_url = format!("http://{host}:{}", addr.port());
    let page_url = if opts.require_tls {
        &server_url
    } else {
        &plain_url
    };
    let kubeconfig = crate::kubeconfig::write(&opts.data_dir, &server_url, &token, &cert.ca_pem)?;
    tracing::info!(listen = %addr, store = backend, objects = api.objects.count(), "molecule API server ready");
    if opts.require_tls {
        println!("molecule is serving on {server_url} (TLS only)");
    } else {
        println!("molecule is serving on {server_url} (plain http on the same port)");
    }
    println!("kubeconfig: {}", kubeconfig.display());
    println!(
        "try: KUBECONFIG={} kubectl get workspaces",
        kubeconfig.display()
    );

    let (trigger, shutdown) = crate::shutdown::channel();
    if let Some(keep) = opts.audit_retention {
        audit.spawn_retention(keep, AUDIT_RETENTION_EVERY, shutdown.clone());
    }
    // Throwaway git repositories of plugin fetches; whatever a killed process left is removed.
    let scratch = opts.data_dir.join("tmp").join("plugins");
    let _ = std::fs::remove_dir_all(&scratch);
    let plugins = opts
        .plugins
        .settings(opts.data_dir.join("plugins"), scratch);
    let _ = std::fs::create_dir_all(&plugins.registry);
    let template_root = opts
        .workspaces
        .template_root
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("org-templates"));
    let _ = std::fs::create_dir_all(&template_root);
    // One Workspace watch for the process (ADR 0025): the shim, the Teams service and the
    // controllers all follow this cache.
    let workspace_cache =
        std::sync::Arc::new(crate::host::Host::workspace_cache(&api.in_process_client()));
    let shim = crate::shim::Shim::start(
        crate::shim::ShimSettings {
            workspaces: workspace_cache.feed("shim"),
            client: api.in_process_client(),
            token: token.clone(),
            audit: audit.clone(),
            namespace: "default".into(),
            plugin_root: plugins.registry.clone(),
            plugin_git_hosts: plugins.git_hosts.clone(),
            org_templates: crate::orgtemplate::Options::with_sources(
                template_root.clone(),
                &opts.template_sources,
            ),
            metrics: metrics.clone(),
            backlog: opts.stream_backlog,
            development: opts.development,
        },
        shutdown.clone(),
    );
    let client = api.in_process_client();
    let activity =
        crate::shim::activity::ActivityLog::new(audit.store(), Some(shim.events.clone()));
    if let Some(keep) = opts.activity_retention {
        activity.spawn_retention(keep, AUDIT_RETENTION_EVERY, shutdown.clone());
    }
    let settings = host_settings(
        &opts,
        HostInputs {
            instance,
            audit: audit.clone(),
            plugins,
            template_root,
            plain_url: plain_url.clone(),
            agent_port: addr.port(),
            activity,
        },
    )?;
    let host = crate::host::Host::on_cache(
        client.clone(),
        settings,
        metrics.clone(),
        workspace_cache.clone(),
    );
    // Delegations and the busy queue (ADR 0051), on the shared Workspace cache when there is one.
    let teams = crate::teams::Teams::start(
        workspace_cache.feed("teams"),
        teams_store,
        &token,
        Some(crate::shim::delegations::publisher(&shim)),
        metrics.clone(),
        crate::teams::service::Settings::from_env(),
        shutdown.clone(),
    );
    let host = host.with_teams(teams);
    println!("canvas: {page_url}/ (molecule canvas-url prints a signed-in link)");
    let server = {
        let shutdown = shutdown.clone();
        let admin = opts.admin_routes;
        tracing::info!(
            enabled = admin,
            "admin routes: POST /admin/workspace-images/refresh"
        );
        tracing::info!(
            enabled = opts.development,
            "development mode (MOLECULE_ENV is not production): GET /admin/workspaces/:id/test-token"
        );
        let app = crate::host::router(
            &host.routes(),
            crate::host::Listener::Public {
                api: api.router(),
                shim: &shim,
                audit: &audit,
                token: &token,
                admin_routes: admin,
            },
        );
        let protocols = if opts.require_tls {
            crate::apiserver::listener::Protocols::TlsOnly(cert.config.clone())
        } else {
            crate::apiserver::listener::Protocols::TlsAndPlain(cert.config.clone())
        };
        tokio::spawn(crate::apiserver::listener::serve(
            listener,
            app,
            protocols,
            opts.listen_limits,
            shutdown,
        ))
    };
    let controllers_task = {
        let shutdown = shutdown.clone();
        let seed_auto_refresh = opts.seed_auto_refresh;
        tokio::spawn(async move {
            // The known runtimes, unless they exist (a deleted one comes back on restart).
            if let Err(e) = controllers::runtime::seed(&client, seed_auto_refresh).await {
                tracing::warn!(error = %e, "could not seed the known runtimes");
            }
            host.run(shutdown).await
        })
    };

    crate::shutdown::signal().await;
    tracing::info!("shutting down");
    trigger.trigger();
    match tokio::time::timeout(std::time::Duration::from_secs(10), controllers_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "controller host ended with an error"),
        Err(_) => tracing::warn!("controllers did not stop within 10s"),
        _ => {}
    }
    // Watches are long-lived streams; give in-flight requests a moment, then exit.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    tracing::info!("stopped");
    Ok(())
}
