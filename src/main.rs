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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("molecule {}", env!("CARGO_PKG_VERSION"));
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
            workspaces,
            org_templates,
        } => {
            molecule::telemetry::init_logging();
            let controllers = Selection::parse(&controllers).map_err(anyhow::Error::msg)?;
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
            }))
        }
        Command::Operator {
            controllers,
            workspaces,
            org_templates,
        } => {
            molecule::telemetry::init_logging();
            let controllers = Selection::parse(&controllers).map_err(anyhow::Error::msg)?;
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
                        template_root: org_templates.clone(),
                        agent_binary: std::env::current_exe()?,
                    },
                    org_import: molecule::controllers::org_import::Settings::from_env(
                        org_templates,
                    ),
                    agent_port: 0,
                    reap_every: opts.reap_every,
                    registry: std::sync::Arc::default(),
                    audit: molecule::audit::Audit::log_only(),
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
