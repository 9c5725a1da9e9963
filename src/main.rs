//! The `molecule` command line.

mod cli;

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};
use molecule::apiserver::ApiConfig;
use molecule::controllers::Selection;

/// The process's allocator (ADR 0059): the API server's writer and the controllers allocate
/// and free many small JSON buffers, where glibc's malloc spent about an eighth of serve's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, which mimalloc keeps
/// stable: retired options stay as placeholders).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS at once instead of after mimalloc's default second, so RSS
/// after a burst of large list responses is what the process holds (ADR 0059).
fn purge_freed_memory_at_once() {
    // SAFETY: mi_option_set only stores an integer option; any value of this option is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
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

fn main() -> anyhow::Result<()> {
    purge_freed_memory_at_once();
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
        Command::Org {
            command: cli::OrgCommand::Plan { dir, root },
        } => {
            use molecule::orgtemplate::report;
            let planned = report::PlanTarget::new(&dir, root.as_deref()).and_then(|t| t.plan());
            match planned {
                Ok(plan) => {
                    print!("{}", report::render(&plan, &report::process_env_names()));
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
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
            let development = molecule::shim::test_tokens::development(environment.as_deref());
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
                activity_retention: audit.activity_retention(),
                listen_limits: listen_flags.limits(),
                require_tls: listen_flags.require_tls,
                template_sources,
                admin_routes,
                development,
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
            kubernetes,
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
                activity_retention: audit.activity_retention(),
                listen_limits: listen_flags.limits(),
                require_tls: listen_flags.require_tls,
                template_sources,
                kubernetes: kubernetes.options(),
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
