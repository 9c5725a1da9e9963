//! The `molecule` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use molecule::apiserver::ApiConfig;
use molecule::controllers::Selection;

#[derive(Parser)]
#[command(name = "molecule", version, about = "Run teams of AI agents as a Kubernetes-style operator.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    fn options(&self, template_root: Option<PathBuf>) -> molecule::serve::WorkspaceOptions {
        molecule::serve::WorkspaceOptions {
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
        }
    }
}

/// Flags of runtime image resolution (FEATURES I01–I06).
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
    #[arg(long, env = "IMAGE_AUTO_REFRESH", default_value_t = false)]
    image_auto_refresh: bool,
}

impl ImageFlags {
    /// The settings (the template token comes from MOLECULE_GITEA_TOKEN, never from a flag).
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
        s.template_token = std::env::var("MOLECULE_GITEA_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        if let Some(c) = &self.build_cache {
            s.build_cache = c.clone();
        }
        s.lookup_timeout = std::time::Duration::from_secs(self.image_lookup_timeout_seconds.max(1));
        s.build_timeout = std::time::Duration::from_secs(self.image_build_timeout_seconds.max(1));
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
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
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
        #[command(flatten)]
        workspaces: WorkspaceFlags,
        #[command(flatten)]
        images: ImageFlags,
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
    /// Run the controllers alone against an external API server (KUBECONFIG or in-cluster).
    Operator {
        /// Controllers to run: `all`, `none` or a comma-separated list.
        #[arg(long, env = "MOLECULE_CONTROLLERS", default_value = "all")]
        controllers: String,
        #[command(flatten)]
        workspaces: WorkspaceFlags,
        #[command(flatten)]
        images: ImageFlags,
        /// Root that workspace `filesDir` paths are confined to.
        #[arg(long, default_value = "org-templates")]
        org_templates: PathBuf,
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
    /// Print the version.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("molecule {}", env!("CARGO_PKG_VERSION"));
            Ok(())
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
            workspaces,
            org_templates,
            images,
        } => {
            molecule::telemetry::init_logging();
            let controllers = Selection::parse(&controllers).map_err(anyhow::Error::msg)?;
            let image_settings = images.settings()?;
            let api = ApiConfig {
                max_body: max_body_bytes,
                bookmark_every: std::time::Duration::from_secs(bookmark_seconds.max(1)),
                objects: molecule::apiserver::objects::ObjectsConfig {
                    history: watch_history.max(1),
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
                workspaces: workspaces.options(org_templates),
                images: image_settings,
                seed_auto_refresh: images.image_auto_refresh,
            }))
        }
        Command::Operator {
            controllers,
            workspaces,
            org_templates,
            images,
        } => {
            molecule::telemetry::init_logging();
            let controllers = Selection::parse(&controllers).map_err(anyhow::Error::msg)?;
            let image_settings = images.settings()?;
            let opts = workspaces.options(Some(org_templates.clone()));
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let client = kube::Client::try_default()
                    .await
                    .context("building a client from KUBECONFIG or the in-cluster config")?;
                let instance = match opts.instance.clone() {
                    Some(i) => i,
                    None => molecule::controllers::cluster_instance_id(&client).await?,
                };
                let (trigger, shutdown) = molecule::shutdown::channel();
                let metrics = std::sync::Arc::new(molecule::telemetry::Metrics::default());
                let host = molecule::controllers::HostSettings {
                    workspace: molecule::controllers::workspace::Settings {
                        platform_url: String::new(),
                        heartbeat_seconds: opts.heartbeat_seconds,
                        heartbeat_timeout: opts.heartbeat_timeout,
                        provision_timeout: opts.provision_timeout,
                        template_root: org_templates,
                        agent_binary: std::env::current_exe()?,
                    },
                    agent_port: 0,
                    reap_every: opts.reap_every,
                    registry: std::sync::Arc::default(),
                    audit: molecule::audit::Audit::log_only(),
                    images: molecule::images::ImageSettings {
                        agent_binary: std::env::current_exe()?,
                        instance: instance.clone(),
                        roll_timeout: opts.provision_timeout + std::time::Duration::from_secs(60),
                        ..image_settings
                    },
                    images_slot: std::sync::Arc::default(),
                    instance,
                };
                let mut task = tokio::spawn(molecule::controllers::run(
                    client,
                    controllers,
                    host,
                    metrics,
                    shutdown,
                ));
                tokio::select! {
                    _ = molecule::shutdown::signal() => trigger.trigger(),
                    done = &mut task => return done.context("controller host panicked")?,
                }
                task.await.context("controller host panicked")?
            })
        }
        Command::Agent {
            config,
            token,
            listen,
        } => {
            molecule::telemetry::init_logging();
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
