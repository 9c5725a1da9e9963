//! The clap definitions of the `molecule` command line: the top-level options and the
//! subcommands; the flag groups they share are in `flags`.

mod flags;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use flags::{
    AuditFlags, ImageFlags, KubernetesFlags, ListenFlags, PluginFlags, TemplateSourceFlags,
    WorkspaceFlags,
};

#[derive(Parser)]
#[command(name = "molecule", version, about = "Run teams of AI agents as a Kubernetes-style operator.", long_about = None)]
pub struct Cli {
    /// Log line format on stderr: `text`, or `json` (one object per line with timestamp,
    /// level, target, message, fields).
    #[arg(
        long,
        global = true,
        env = "MOLECULE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: molecule::telemetry::LogFormat,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info,molecule=debug` (default: RUST_LOG,
    /// else info).
    #[arg(long, global = true, env = "MOLECULE_LOG", value_name = "FILTER")]
    pub log_filter: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("molecule");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/molecule"),
        None => PathBuf::from(".molecule"),
    }
}

#[derive(Subcommand)]
pub enum Command {
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
        /// --admin-routes is given, and always turns development mode off (no
        /// `GET /admin/workspaces/:id/test-token`).
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
        #[command(flatten)]
        kubernetes: KubernetesFlags,
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
    /// Org templates offline: `molecule org plan DIR`.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
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

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Dry-run a template directory (ADR 0047): print its workspace tree (names, parents,
    /// runtime, tier, plugins), counts, warnings and the env that is required and missing.
    /// Nothing is created and no `!external` is fetched. Exits 1 with `file:line:column` of
    /// the first error.
    Plan {
        /// The template directory (holding org.yaml).
        dir: PathBuf,
        /// The template root includes and files_dir are confined to (default: DIR's parent).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}
