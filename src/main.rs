//! The `molecule` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use molecule::apiserver::ApiConfig;
use molecule::controllers::Selection;

#[derive(Parser)]
#[command(name = "molecule", version, about = "Run teams of AI agents as a Kubernetes-style operator.", long_about = None)]
struct Cli {
    /// Log line format on stderr: `text`, or `json` (one object per line with timestamp,
    /// level, target, message, fields).
    #[arg(
        long,
        global = true,
        env = "MOLECULE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: molecule::telemetry::LogFormat,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info,molecule=debug` (default: RUST_LOG,
    /// else info).
    #[arg(long, global = true, env = "MOLECULE_LOG", value_name = "FILTER")]
    log_filter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Environment names read before the `MOLECULE_` prefix was used throughout (ADR 0043):
/// `(old, new, deprecated)`. An old name is honoured only when the new one is unset; a
/// deprecated one is warned about once at start.
const ENV_FALLBACKS: &[(&str, &str, bool)] = &[
    ("DATABASE_URL", "MOLECULE_DATABASE_URL", true),
    ("IMAGE_AUTO_REFRESH", "MOLECULE_IMAGE_AUTO_REFRESH", true),
    ("POD_NAMESPACE", "MOLECULE_POD_NAMESPACE", true),
    // The tracing ecosystem's own name: kept without a warning.
    ("RUST_LOG", "MOLECULE_LOG", false),
];

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Points every argument whose `env` is a new name at the old name when only the old one is
/// set, so clap reads it; returns the warnings to log once logging is up.
fn with_env_fallbacks(
    cmd: clap::Command,
    lookup: &dyn Fn(&str) -> bool,
) -> (clap::Command, Vec<String>) {
    let mut warnings = vec![];
    let mut cmd = cmd;
    for (old, new, deprecated) in ENV_FALLBACKS {
        if lookup(new) || !lookup(old) {
            continue;
        }
        if *deprecated {
            warnings.push(format!(
                "environment variable {old} is deprecated: rename it to {new} (ADR 0043)"
            ));
        }
        cmd = redirect_env(cmd, new, old);
    }
    (cmd, warnings)
}

fn redirect_env(cmd: clap::Command, new: &'static str, old: &'static str) -> clap::Command {
    cmd.mut_args(|a| {
        if a.get_env() == Some(std::ffi::OsStr::new(new)) {
            a.env(old)
        } else {
            a
        }
    })
    .mut_subcommands(|sc| redirect_env(sc, new, old))
}

/// Starts logging and reports the deprecated environment names in use.
fn start_logging(
    cli_format: molecule::telemetry::LogFormat,
    filter: Option<&str>,
    warnings: &[String],
) {
    molecule::telemetry::init_logging(cli_format, filter);
    for w in warnings {
        tracing::warn!("{w}");
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("molecule");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/molecule"),
        None => PathBuf::from(".molecule"),
    }
}

/// Flags of the workspace controller and the orphan reaper.
#[derive(clap::Args, Clone, Debug)]
struct WorkspaceFlags {
    /// Heartbeat interval agents are told to use, in seconds.
    #[arg(long, default_value_t = 30)]
    agent_heartbeat_seconds: u64,
    /// No heartbeat for this many seconds: the workspace goes Offline and is restarted.
    #[arg(long, default_value_t = 180)]
    heartbeat_timeout_seconds: u64,
    /// Not Online this many seconds after provisioning: Failed (ProvisionTimeout).
    #[arg(long, default_value_t = 600)]
    provision_timeout_seconds: u64,
    /// Seconds between orphan-reaper resyncs (Docker events trigger it sooner).
    #[arg(long, default_value_t = 30)]
    reap_interval_seconds: u64,
    /// Installation id labelled on every managed container and volume; the orphan reaper only
    /// touches objects carrying it. Default: `serve` keeps a random one in DATA_DIR/instance-id,
    /// `operator` uses the uid of the API server's `default` Namespace.
    #[arg(long, env = "MOLECULE_INSTANCE", value_parser = parse_instance)]
    instance: Option<String>,
    /// Workspace backend: `docker`, or `simulated` (no container work; for benchmarks).
    #[arg(long, hide = true, default_value = "docker", value_parser = molecule::backends::BackendChoice::parse)]
    backend: molecule::backends::BackendChoice,
    #[command(flatten)]
    control_plane: ControlPlaneFlags,
    #[command(flatten)]
    template_policy: TemplatePolicyFlags,
}

/// What org templates may ask of the host (ADR 0039): operator-wide defaults of an OrgImport's
/// `spec.policy`. System directories are refused whatever these say.
#[derive(clap::Args, Clone, Debug)]
struct TemplatePolicyFlags {
    /// Highest tier a template's workspace may ask for (1-4).
    #[arg(long, default_value_t = molecule::orgtemplate::policy::DEFAULT_MAX_TIER as i64, value_parser = clap::value_parser!(i64).range(1..=4))]
    template_max_tier: i64,
    /// Highest tier for workspaces defined in git (a git source or an `!external`; 1-4).
    #[arg(long, default_value_t = molecule::orgtemplate::policy::DEFAULT_GIT_MAX_TIER as i64, value_parser = clap::value_parser!(i64).range(1..=4))]
    template_git_max_tier: i64,
    /// Comma list of absolute host dirs a template's `workspace_dir` may be in (empty: none).
    #[arg(long, default_value = "", value_parser = parse_roots)]
    template_workspace_dir_roots: RootList,
    /// The same for workspaces defined in git (empty: none).
    #[arg(long, default_value = "", value_parser = parse_roots)]
    template_git_workspace_dir_roots: RootList,
}

/// A parsed `--template-*-workspace-dir-roots` list.
#[derive(Clone, Debug)]
struct RootList(Vec<PathBuf>);

fn parse_roots(s: &str) -> Result<RootList, String> {
    molecule::orgtemplate::policy::parse_roots(s)
        .map(RootList)
        .map_err(|e| e.to_string())
}

impl TemplatePolicyFlags {
    fn policy(&self) -> molecule::orgtemplate::policy::Policy {
        molecule::orgtemplate::policy::Policy {
            max_tier: self.template_max_tier as i32,
            git_max_tier: self.template_git_max_tier as i32,
            workspace_dir_roots: self.template_workspace_dir_roots.0.clone(),
            git_workspace_dir_roots: self.template_git_workspace_dir_roots.0.clone(),
            protected: vec![],
        }
    }
}

/// Where org templates may come from besides the template root (ADR 0043).
#[derive(clap::Args, Clone, Debug)]
struct TemplateSourceFlags {
    /// Comma list of repository prefixes `!external` org templates and git sources may name.
    #[arg(
        long,
        env = "MOLECULE_EXTERNAL_REPO_ALLOWLIST",
        value_name = "PREFIXES"
    )]
    external_repo_allowlist: Option<String>,
    /// Default git host of `!external` org templates.
    #[arg(long, env = "MOLECULE_EXTERNAL_GITEA_URL", value_name = "URL")]
    external_gitea_url: Option<String>,
    /// Directory of persona env files for org templates.
    #[arg(long, env = "MOLECULE_PERSONA_ROOT", value_name = "DIR",
          default_value = molecule::orgtemplate::DEFAULT_PERSONA_ROOT)]
    persona_root: PathBuf,
}

impl TemplateSourceFlags {
    fn settings(&self, images: &ImageFlags) -> molecule::orgtemplate::SourceSettings {
        molecule::orgtemplate::SourceSettings {
            external_repo_allowlist: self.external_repo_allowlist.clone(),
            external_gitea_url: self.external_gitea_url.clone(),
            gitea_token: images.gitea_token.clone(),
            persona_root: Some(self.persona_root.clone()),
        }
    }
}

/// Audit retention (ADR 0042), shared by `serve` and `operator`.
#[derive(clap::Args, Clone, Debug)]
struct AuditFlags {
    /// Days audit rows are kept: older ones are deleted at start and every hour. 0 keeps them
    /// forever.
    #[arg(long, env = "MOLECULE_AUDIT_RETENTION_DAYS", default_value_t = 30)]
    audit_retention_days: u64,
}

impl AuditFlags {
    fn retention(&self) -> Option<std::time::Duration> {
        (self.audit_retention_days > 0).then(|| {
            std::time::Duration::from_secs(self.audit_retention_days.saturating_mul(86_400))
        })
    }
}

/// Flags of the EC2 control-plane backend (workspaces with `backend: controlPlane`).
#[derive(clap::Args, Clone, Debug)]
struct ControlPlaneFlags {
    /// Base URL of the EC2 control plane (https://…). Unset: controlPlane workspaces fail with
    /// ControlPlaneNotConfigured.
    #[arg(long, env = "MOLECULE_CONTROL_PLANE_URL")]
    control_plane_url: Option<String>,
    /// The org id instances are provisioned for (required with --control-plane-url).
    #[arg(long, env = "MOLECULE_ORG_ID")]
    control_plane_org: Option<String>,
    /// `[namespace/]name` of the Secret holding the credentials: key `sharedSecret` (provision
    /// routes) and optionally `adminToken` (admin routes; defaults to the shared secret). Read
    /// again every 30 s and after a 401. Without it the credentials come from the environment
    /// variables MOLECULE_CP_SHARED_SECRET and MOLECULE_CP_ADMIN_TOKEN.
    #[arg(long, env = "MOLECULE_CONTROL_PLANE_SECRET")]
    control_plane_secret: Option<String>,
    /// Shared secret of the control plane's provision routes when --control-plane-secret is
    /// not given (prefer the environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "MOLECULE_CP_SHARED_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    control_plane_shared_secret: Option<String>,
    /// Token of the control plane's admin routes (default: the shared secret).
    #[arg(
        long,
        env = "MOLECULE_CP_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    control_plane_admin_token: Option<String>,
    /// URL agents on instances use to reach this platform's /registry/* (default for `serve`:
    /// its own plain-http URL, right only when the control plane runs on this host).
    #[arg(long, env = "MOLECULE_CONTROL_PLANE_PLATFORM_URL")]
    control_plane_platform_url: Option<String>,
    /// Port of the agent on an instance: the workspace URL is http://<private_ip>:<port>.
    #[arg(long, default_value_t = 8000)]
    control_plane_agent_port: u16,
    /// Seconds the control plane gets to send its response headers (dial and TLS handshake
    /// are bounded at 10 s each).
    #[arg(long, default_value_t = 30)]
    control_plane_timeout_seconds: u64,
    /// PEM file of extra CA certificates trusted for the control plane (besides the system's).
    #[arg(long)]
    control_plane_ca: Option<PathBuf>,
}

impl ControlPlaneFlags {
    fn config(
        &self,
    ) -> anyhow::Result<Option<molecule::backends::controlplane::ControlPlaneConfig>> {
        use molecule::backends::controlplane::{ControlPlaneConfig, CredentialSource, Credentials};
        let Some(url) = self.control_plane_url.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let org = self
            .control_plane_org
            .clone()
            .filter(|o| !o.is_empty())
            .context(
                "--control-plane-org (MOLECULE_ORG_ID) is required with --control-plane-url",
            )?;
        let credentials = match self
            .control_plane_secret
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            Some(r) => {
                let (namespace, name) = r.split_once('/').unwrap_or(("default", r));
                CredentialSource::Secret {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                }
            }
            None => {
                let shared = self.control_plane_shared_secret.clone().unwrap_or_default();
                if shared.trim().is_empty() {
                    anyhow::bail!(
                        "the control plane needs credentials: --control-plane-secret NAME, or MOLECULE_CP_SHARED_SECRET"
                    );
                }
                CredentialSource::Static(Credentials {
                    shared_secret: shared.trim().to_string(),
                    admin_token: self
                        .control_plane_admin_token
                        .as_deref()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty()),
                })
            }
        };
        let ca_pem = match &self.control_plane_ca {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        let timeouts = molecule::net::http::Timeouts {
            response_header: std::time::Duration::from_secs(
                self.control_plane_timeout_seconds.max(1),
            ),
            ..Default::default()
        };
        let cfg = ControlPlaneConfig {
            base_url: url,
            org_id: org,
            credentials,
            agent_port: self.control_plane_agent_port,
            timeouts,
            ca_pem,
        }
        .validated()
        .map_err(anyhow::Error::msg)?;
        Ok(Some(cfg))
    }
}

fn parse_instance(s: &str) -> Result<String, String> {
    if molecule::util::valid_instance_id(s) {
        Ok(s.to_string())
    } else {
        Err(
            "an instance id is 1-63 characters of [a-z0-9-], starting and ending alphanumeric"
                .into(),
        )
    }
}

impl WorkspaceFlags {
    fn options(
        &self,
        template_root: Option<PathBuf>,
    ) -> anyhow::Result<molecule::serve::WorkspaceOptions> {
        Ok(molecule::serve::WorkspaceOptions {
            heartbeat_seconds: self.agent_heartbeat_seconds.max(1),
            heartbeat_timeout: std::time::Duration::from_secs(
                self.heartbeat_timeout_seconds.max(2),
            ),
            provision_timeout: std::time::Duration::from_secs(
                self.provision_timeout_seconds.max(1),
            ),
            template_root,
            reap_every: std::time::Duration::from_secs(self.reap_interval_seconds.max(1)),
            instance: self.instance.clone(),
            backend: self.backend,
            control_plane: self.control_plane.config()?,
            control_plane_platform_url: self.control_plane.control_plane_platform_url.clone(),
            template_policy: self.template_policy.policy(),
        })
    }
}

/// Flags bounding the HTTP listeners and refusing plain HTTP (ADR 0041).
#[derive(clap::Args, Clone, Debug)]
struct ListenFlags {
    /// Seconds a client gets to send a whole request head (and TLS handshake) once it began.
    #[arg(long, default_value_t = 30)]
    header_timeout_seconds: u64,
    /// Seconds a connection with no request in flight may stay silent before it is closed.
    #[arg(long, default_value_t = 120)]
    idle_timeout_seconds: u64,
    /// Open connections per listener; beyond it new connections are closed at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Refuse to serve plain HTTP: `serve` speaks TLS only on --listen, and a listener that
    /// can only speak plain HTTP stops the process at start.
    #[arg(long, env = "MOLECULE_REQUIRE_TLS")]
    require_tls: bool,
}

impl ListenFlags {
    fn limits(&self) -> molecule::apiserver::listener::Limits {
        molecule::apiserver::listener::Limits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_seconds.max(1)),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_seconds.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }
}

/// Flags of the PluginInstall controller.
#[derive(clap::Args, Clone, Debug)]
struct PluginFlags {
    /// The local plugin registry: `local://<name>` installs DIR/<name>/ (default: DATA_DIR/plugins
    /// for `serve`, ./plugins for `operator`).
    #[arg(long = "plugins", value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Bound on one git resolve or fetch of a plugin, in seconds.
    #[arg(long, default_value_t = 300)]
    plugin_fetch_timeout_seconds: u64,
    /// Seconds between scans for PluginInstalls whose drift check interval elapsed.
    #[arg(long, default_value_t = 5)]
    plugin_drift_tick_seconds: u64,
    /// Tests only: honour /configs/plugins/.failpoint in the in-container install steps.
    #[arg(long, hide = true)]
    plugin_failpoints: bool,
    /// Hosts a workspace's own token may install git plugins from (comma list of host or
    /// host:port, https only; ADR 0038). Empty (the default): the local registry only. The
    /// admin token is not limited.
    #[arg(long = "plugin-git-hosts", env = "MOLECULE_PLUGIN_GIT_HOSTS", value_name = "HOSTS",
          value_parser = |s: &str| molecule::plugins::git_hosts::GitHosts::parse(s).map_err(|e| e.to_string()))]
    plugin_git_hosts: Option<molecule::plugins::git_hosts::GitHosts>,
}

impl PluginFlags {
    fn options(&self) -> molecule::serve::PluginOptions {
        molecule::serve::PluginOptions {
            dir: self.plugins.clone(),
            fetch_timeout: Some(std::time::Duration::from_secs(
                self.plugin_fetch_timeout_seconds.max(1),
            )),
            drift_tick: Some(std::time::Duration::from_secs(
                self.plugin_drift_tick_seconds.max(1),
            )),
            failpoints: self.plugin_failpoints,
            git_hosts: self.plugin_git_hosts.clone().unwrap_or_default(),
        }
    }
}

/// Flags of runtime image resolution (ADR 0030).
#[derive(clap::Args, Clone, Debug)]
struct ImageFlags {
    /// Registry mode: images are `<registry>/workspace-template-<runtime>:<tag>`. Unset (the
    /// default): images are built locally from the template repositories.
    #[arg(long, env = "MOLECULE_IMAGE_REGISTRY")]
    image_registry: Option<String>,
    /// Platform of pulls, template builds and creates, e.g. linux/amd64 (empty: the engine's).
    #[arg(long, env = "MOLECULE_IMAGE_PLATFORM")]
    image_platform: Option<String>,
    /// Allowlisted prefix of template repositories (`<prefix><runtime>`); point it at a fork.
    #[arg(long, env = "MOLECULE_LOCAL_TEMPLATE_REPO_PREFIX", default_value = molecule::images::DEFAULT_TEMPLATE_PREFIX)]
    template_repo_prefix: String,
    /// Where template clones are kept (default ~/.cache/molecule/workspace-template-build).
    #[arg(long, env = "MOLECULE_LOCAL_BUILD_CACHE")]
    build_cache: Option<PathBuf>,
    /// Bound of each registry or template lookup, in seconds.
    #[arg(long, default_value_t = 10)]
    image_lookup_timeout_seconds: u64,
    /// Bound of each template clone + build and each pull, in seconds.
    #[arg(long, default_value_t = 1200)]
    image_build_timeout_seconds: u64,
    /// Seed the known runtimes with auto-refresh enabled.
    #[arg(long, env = "MOLECULE_IMAGE_AUTO_REFRESH", default_value_t = false)]
    image_auto_refresh: bool,
    /// Token realm hosts (`host[:port]`, comma-separated) trusted with registry pull
    /// credentials besides each registry's own host (ADR 0040); always over https.
    #[arg(long, env = "MOLECULE_REGISTRY_REALM_HOSTS", value_delimiter = ',')]
    registry_realm_hosts: Vec<String>,
    /// Token for cloning template repositories and `!external` org templates (prefer the
    /// environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "MOLECULE_GITEA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    gitea_token: Option<String>,
}

impl ImageFlags {
    /// The settings of the image service.
    fn settings(&self) -> anyhow::Result<molecule::images::ImageSettings> {
        let registry = self
            .image_registry
            .clone()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if let Some(r) = &registry {
            molecule::images::reference::validate_registry(r).map_err(anyhow::Error::msg)?;
        }
        let mut s = molecule::images::ImageSettings::new(PathBuf::new(), String::new());
        s.registry = registry;
        s.platform = self
            .image_platform
            .clone()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty());
        s.template_prefix = self.template_repo_prefix.trim().to_string();
        s.template_token = self.gitea_token.clone().filter(|t| !t.trim().is_empty());
        if let Some(c) = &self.build_cache {
            s.build_cache = c.clone();
        }
        s.lookup_timeout = std::time::Duration::from_secs(self.image_lookup_timeout_seconds.max(1));
        s.build_timeout = std::time::Duration::from_secs(self.image_build_timeout_seconds.max(1));
        s.realm_hosts = self
            .registry_realm_hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(s)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: the embedded API server, its store and the controllers.
    Serve {
        /// Where the store, token, secret key and kubeconfig live.
        #[arg(long, env = "MOLECULE_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
        /// Address of the API server (and later the REST shim and canvas).
        #[arg(long, env = "MOLECULE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Controllers to run: `all`, `none` (API server only) or a comma-separated list.
        #[arg(long, env = "MOLECULE_CONTROLLERS", default_value = "all")]
        controllers: String,
        /// Postgres URL (postgres://…); the default is SQLite in the data dir.
        #[arg(long, env = "MOLECULE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Root that workspace `filesDir` paths are confined to (default DATA_DIR/org-templates).
        #[arg(long)]
        org_templates: Option<PathBuf>,
        /// Base64 of a 32-byte key for secrets at rest; default: DATA_DIR/secret.key (created 0600).
        #[arg(long, env = "MOLECULE_SECRET_KEY", hide_env_values = true)]
        secret_key: Option<String>,
        /// Largest accepted request body, in bytes.
        #[arg(long, default_value_t = molecule::apiserver::DEFAULT_MAX_BODY)]
        max_body_bytes: usize,
        /// Seconds between watch bookmarks.
        #[arg(long, default_value_t = 60)]
        bookmark_seconds: u64,
        /// How many changes watchers can resume from; older resourceVersions get 410 Expired.
        #[arg(long, default_value_t = 20_000)]
        watch_history: usize,
        /// Bytes of changes (serialized objects) watchers can resume from; older
        /// resourceVersions get 410 Expired (ADR 0041).
        #[arg(long, default_value_t = molecule::apiserver::objects::DEFAULT_HISTORY_BYTES)]
        watch_history_bytes: usize,
        /// How many live-stream (/ws, SSE) messages a client may fall behind before it is
        /// dropped (it reconnects and reloads the list).
        #[arg(long, default_value_t = molecule::shim::STREAM_BACKLOG)]
        stream_backlog: usize,
        #[command(flatten)]
        workspaces: WorkspaceFlags,
        #[command(flatten)]
        plugins: PluginFlags,
        #[command(flatten)]
        images: ImageFlags,
        #[command(flatten)]
        audit: AuditFlags,
        #[command(flatten)]
        listen_flags: ListenFlags,
        #[command(flatten)]
        template_sources: TemplateSourceFlags,
        /// Deployment environment; `production` turns the admin routes off unless
        /// --admin-routes is given.
        #[arg(long, env = "MOLECULE_ENV", value_name = "NAME")]
        environment: Option<String>,
        /// Serve the admin routes (POST /admin/workspace-images/refresh) in production too.
        #[arg(long, env = "MOLECULE_ADMIN_ROUTES", value_parser = clap::builder::BoolishValueParser::new())]
        admin_routes: bool,
    },
    /// Run the built-in echo agent (inside a workspace container).
    Agent {
        #[arg(long, default_value = "/configs/config.yaml")]
        config: PathBuf,
        #[arg(long, default_value = "/configs/.auth_token")]
        token: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8000")]
        listen: SocketAddr,
    },
    /// Run the controllers alone against an external API server (KUBECONFIG or in-cluster),
    /// with leader election among replicas.
    Operator {
        /// Controllers to run: `all`, `none` or a comma-separated list.
        #[arg(long, env = "MOLECULE_CONTROLLERS", default_value = "all")]
        controllers: String,
        /// Address of /healthz, /readyz, /metrics and the agent-facing /registry/*.
        #[arg(long, env = "MOLECULE_LISTEN", default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Where audit rows go (postgres://…); without it they only reach the log.
        #[arg(long, env = "MOLECULE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[command(flatten)]
        workspaces: WorkspaceFlags,
        #[command(flatten)]
        images: ImageFlags,
        /// Root that workspace `filesDir` paths are confined to.
        #[arg(long, default_value = "org-templates")]
        org_templates: PathBuf,
        /// Address the agent listener binds (default: the Docker network's gateway).
        #[arg(long, env = "MOLECULE_AGENT_ADDRESS")]
        agent_address: Option<std::net::IpAddr>,
        /// Port of the agent listener; replicas share it (SO_REUSEPORT). 0: any (one replica).
        #[arg(long, env = "MOLECULE_AGENT_PORT", default_value_t = 0)]
        agent_port: u16,
        /// URL agents are told to call (e.g. a Service in front of every replica); default:
        /// the agent listener's own address.
        #[arg(long, env = "MOLECULE_PLATFORM_URL")]
        platform_url: Option<String>,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "molecule-operator")]
        lease_name: String,
        /// Namespace of the Lease (default: the kubeconfig's or the pod's namespace).
        #[arg(long, env = "MOLECULE_POD_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Holder identity (default: hostname plus a random suffix).
        #[arg(long)]
        identity: Option<String>,
        /// Seconds a Lease that stopped being renewed stays held.
        #[arg(long, default_value_t = 15)]
        lease_duration_seconds: u64,
        /// Seconds the leader keeps trying to renew before it steps down.
        #[arg(long, default_value_t = 10)]
        renew_deadline_seconds: u64,
        /// Seconds between renewals and re-checks.
        #[arg(long, default_value_t = 2)]
        retry_period_seconds: u64,
        /// Seconds in-flight reconciles get to finish on SIGTERM.
        #[arg(long, default_value_t = 20)]
        shutdown_grace_seconds: u64,
        #[command(flatten)]
        plugins: PluginFlags,
        #[command(flatten)]
        audit: AuditFlags,
        #[command(flatten)]
        listen_flags: ListenFlags,
        #[command(flatten)]
        template_sources: TemplateSourceFlags,
    },
    /// Validate a plugin directory and print its manifest.json (sha256 of every file), for
    /// plugin authors who want integrity checks.
    PluginManifest {
        /// The plugin directory (holding plugin.yaml).
        dir: PathBuf,
    },
    /// One atomic plugin install step inside a workspace container (run by the operator
    /// through `docker exec`; the echo image has no shell).
    #[command(name = "plugin-fs", hide = true)]
    PluginFs {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write the CRD manifests (one file per kind) into a directory.
    Crds {
        #[arg(long, default_value = "crds")]
        out: PathBuf,
        /// Print to stdout instead of writing files.
        #[arg(long)]
        stdout: bool,
    },
    /// Print the path of the kubeconfig `serve` writes for a data dir.
    Kubeconfig {
        #[arg(long, env = "MOLECULE_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// Print a link that opens the canvas signed in (the token travels in the URL fragment,
    /// which browsers never send to a server).
    CanvasUrl {
        #[arg(long, env = "MOLECULE_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// List audit rows (org.import.started, org.import.completed, …) of a running `serve`.
    Audit {
        #[arg(long, env = "MOLECULE_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
        /// Only this event, e.g. org.import.completed.
        #[arg(long)]
        event: Option<String>,
        /// Only rows about objects in this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
    /// Print a shell completion script to stdout, e.g.
    /// `molecule completions bash > /etc/bash_completion.d/molecule`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> anyhow::Result<()> {
    let (cmd, env_warnings) = with_env_fallbacks(Cli::command(), &env_set);
    let cli = match Cli::from_arg_matches(&cmd.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let (log_format, log_filter) = (cli.log_format, cli.log_filter.clone());
    let start_logging = || start_logging(log_format, log_filter.as_deref(), &env_warnings);
    if !matches!(
        cli.command,
        Command::Serve { .. } | Command::Operator { .. } | Command::Agent { .. }
    ) {
        for w in &env_warnings {
            eprintln!("warning: {w}");
        }
    }
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "molecule",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Version => {
            println!("molecule {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::CanvasUrl { data_dir } => {
            println!("{}", molecule::kubeconfig::canvas_url(&data_dir)?);
            Ok(())
        }
        Command::Audit {
            data_dir,
            event,
            namespace,
            json,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(audit(data_dir, event, namespace, json))
        }
        Command::Kubeconfig { data_dir } => {
            println!("{}", molecule::kubeconfig::path(&data_dir).display());
            Ok(())
        }
        Command::Crds { out, stdout } => {
            for crd in molecule::resources::all_crds() {
                let yaml = molecule::resources::crd_yaml(&crd)?;
                if stdout {
                    println!("---\n{yaml}");
                } else {
                    std::fs::create_dir_all(&out)?;
                    let p = out.join(molecule::resources::crd_file_name(&crd));
                    std::fs::write(&p, yaml).with_context(|| format!("writing {}", p.display()))?;
                    println!("wrote {}", p.display());
                }
            }
            Ok(())
        }
        Command::Serve {
            data_dir,
            listen,
            controllers,
            database_url,
            secret_key,
            max_body_bytes,
            bookmark_seconds,
            watch_history,
            watch_history_bytes,
            workspaces,
            org_templates,
            stream_backlog,
            plugins,
            images,
            audit,
            listen_flags,
            template_sources,
            environment,
            admin_routes,
        } => {
            start_logging();
            let controllers = Selection::parse(&controllers).map_err(anyhow::Error::msg)?;
            let template_sources = template_sources.settings(&images);
            let admin_routes =
                molecule::shim::images::admin_routes_enabled(environment.as_deref(), admin_routes);
            let image_settings = images.settings()?;
            let api = ApiConfig {
                max_body: max_body_bytes,
                bookmark_every: std::time::Duration::from_secs(bookmark_seconds.max(1)),
                objects: molecule::apiserver::objects::ObjectsConfig {
                    history: watch_history.max(1),
                    history_bytes: watch_history_bytes.max(1),
                    ..Default::default()
                },
                ..ApiConfig::default()
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(molecule::serve::run(molecule::serve::ServeOptions {
                data_dir,
                listen,
                controllers,
                database_url,
                secret_key,
                api,
                workspaces: workspaces.options(org_templates)?,
                stream_backlog: stream_backlog.max(1),
                plugins: plugins.options(),
                images: image_settings,
                seed_auto_refresh: images.image_auto_refresh,
                audit_retention: audit.retention(),
                listen_limits: listen_flags.limits(),
                require_tls: listen_flags.require_tls,
                template_sources,
                admin_routes,
            }))
        }
        Command::PluginFs { args } => std::process::exit(molecule::plugins::fs::main(&args)),
        Command::PluginManifest { dir } => {
            let mut tree = molecule::plugins::PluginTree::from_dir(&dir, &Default::default())
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            tree.remove(molecule::plugins::format::MANIFEST_JSON);
            molecule::plugins::format::validate(&tree, None).map_err(|r| anyhow::anyhow!("{r}"))?;
            println!("{}", molecule::plugins::format::manifest_for(&tree));
            Ok(())
        }
        Command::Operator {
            controllers,
            listen,
            database_url,
            workspaces,
            org_templates,
            plugins,
            images,
            agent_address,
            agent_port,
            platform_url,
            lease_name,
            lease_namespace,
            identity,
            lease_duration_seconds,
            renew_deadline_seconds,
            retry_period_seconds,
            shutdown_grace_seconds,
            audit,
            listen_flags,
            template_sources,
        } => {
            start_logging();
            let controllers = Selection::parse(&controllers).map_err(anyhow::Error::msg)?;
            let template_sources = template_sources.settings(&images);
            let secs = std::time::Duration::from_secs;
            let opts = molecule::operator::OperatorOptions {
                controllers,
                listen,
                database_url,
                workspaces: workspaces.options(Some(org_templates.clone()))?,
                plugins: plugins.options(),
                images: images.settings()?,
                template_root: org_templates,
                agent_address,
                agent_port,
                platform_url,
                lease_name,
                lease_namespace,
                identity,
                lease_duration: secs(lease_duration_seconds),
                renew_deadline: secs(renew_deadline_seconds),
                retry_period: secs(retry_period_seconds),
                shutdown_grace: secs(shutdown_grace_seconds),
                audit_retention: audit.retention(),
                listen_limits: listen_flags.limits(),
                require_tls: listen_flags.require_tls,
                template_sources,
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(molecule::operator::run(opts))
        }
        Command::Agent {
            config,
            token,
            listen,
        } => {
            start_logging();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(molecule::agent::run(molecule::agent::AgentOptions {
                config_path: config,
                token_path: token,
                listen,
                shutdown: None,
            }))
        }
    }
}

/// `molecule audit`: GET /audit on the server named by the data dir's kubeconfig.
async fn audit(
    data_dir: PathBuf,
    event: Option<String>,
    namespace: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let path = molecule::kubeconfig::path(&data_dir);
    let kc = kube::config::Kubeconfig::read_from(&path).with_context(|| {
        format!(
            "reading {} (is `molecule serve` running on this data dir?)",
            path.display()
        )
    })?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(e) = &event {
        query.append_pair("event", e);
    }
    if let Some(n) = &namespace {
        query.append_pair("namespace", n);
    }
    let req = axum::http::Request::get(format!("/audit?{}", query.finish())).body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("listing audit rows")?;
    let body: serde_json::Value = serde_json::from_str(&text).context("the server's answer")?;
    let items = body["items"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    println!(
        "{:<27} {:<22} {:<16} {:<24} DATA",
        "AT", "EVENT", "NAMESPACE", "NAME"
    );
    for r in items {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        println!(
            "{:<27} {:<22} {:<16} {:<24} {}",
            s("at"),
            s("event"),
            s("namespace"),
            s("name"),
            r["data"]
        );
    }
    Ok(())
}
