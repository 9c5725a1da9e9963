//! The built-in `echo` workspace runtime (`molecule agent`).
//!
//! This is the process that runs inside a workspace container when its runtime is `echo`. It is
//! deliberately small: the image is `FROM scratch`, so there is no shell and no CA bundle; it
//! talks to the platform through the shared outbound client (ADR 0046) over plain `http://` only.
//!
//! What [`run`] does:
//!
//! 1. reads the operator-generated `config.yaml` ([`AgentConfig`]; `WORKSPACE_ID`,
//!    `PLATFORM_URL` and `HEARTBEAT_SECONDS` override it) and the bearer token file;
//! 2. serves A2A JSON-RPC 2.0 (`message/send` echoes the text parts back) on `POST /` and
//!    `POST /a2a`, plus `GET /health`, `GET /.well-known/agent.json` and `GET /plugins` (the
//!    installed plugins, read from `plugins/` beside the config file on every request: only
//!    directories holding the `.complete` marker count, so a half-installed plugin is never
//!    loaded and a hot `SKILL.md` change shows without a restart);
//! 3. registers with the platform (`POST {platform_url}/registry/register`), retrying forever
//!    with capped exponential backoff;
//! 4. sends itself config.yaml's `initial_prompt` once (a `.initial_prompt_done` marker beside
//!    the config stops a re-send after restarts) and `idle_prompt` after
//!    `idle_interval_seconds` without work; `GET /activity` lists the messages received
//!    (ADR 0048);
//! 5. heartbeats every `heartbeat_seconds` (`POST {platform_url}/registry/heartbeat`) with the
//!    error rate, in-flight tasks and uptime; a 404/410 answer sends it back to registering.
//!
//! A message's text may carry a command (ADR 0050): `ask <peer name>: <text>` finds the peer
//! among the workspaces this one may talk to (`GET /registry/:id/peers`), sends it `text`
//! through the platform's A2A proxy and answers with its reply; `sleep <ms>` holds a task that
//! long. Every task is reported as the workspace's own activity (`agent_log`).
//!
//! Every platform call carries `Authorization: Bearer <token>`. On a 401 the token file is read
//! again (the operator may have rotated it) and the call is retried once. The token is never
//! logged.

mod a2a;
mod config;
mod delegate;
mod platform;
mod plugins;
mod prompts;
mod state;
mod team;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

pub use a2a::MAX_REQUEST_BYTES;
pub use config::{AgentConfig, ConfigError, read_token};
pub use platform::{CallError, HTTP_TIMEOUT, MAX_RESPONSE_BYTES};

use platform::{Platform, platform_loop};
use state::AgentState;

/// Default location of the operator-generated configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/configs/config.yaml";
/// Default location of the bearer token used for platform calls.
pub const DEFAULT_TOKEN_PATH: &str = "/configs/.auth_token";
/// Default A2A listen address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8000));
/// Default heartbeat period, in seconds.
pub const DEFAULT_HEARTBEAT_SECONDS: u64 = 30;
/// How long in-flight A2A requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to start the agent.
#[derive(Debug)]
pub struct AgentOptions {
    /// The operator-generated configuration (default [`DEFAULT_CONFIG_PATH`]).
    pub config_path: PathBuf,
    /// The bearer token file (default [`DEFAULT_TOKEN_PATH`]); re-read on every 401.
    pub token_path: PathBuf,
    /// A2A listen address (default [`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// Stops the agent when it fires or its sender is dropped; `None` = run until SIGTERM/SIGINT.
    pub shutdown: Option<oneshot::Receiver<()>>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from(DEFAULT_CONFIG_PATH),
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            listen: DEFAULT_LISTEN,
            shutdown: None,
        }
    }
}

/// Runs the echo agent until `opts.shutdown` fires (or SIGTERM/SIGINT when it is `None`).
///
/// Fails early if the configuration or token cannot be read or the listen address cannot be
/// bound; platform outages are retried forever and never make it fail.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let AgentOptions {
        config_path,
        token_path,
        listen,
        shutdown,
    } = opts;
    let config = AgentConfig::load(&config_path, |key| std::env::var(key).ok())
        .await
        .with_context(|| format!("loading {}", config_path.display()))?;
    let token = read_token(&token_path).await?;
    let stop = shutdown_signal(shutdown)?;

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the listen address")?;
    let agent_url = config
        .agent_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", hostname(), local.port()));
    info!(
        name = %config.name,
        workspace_id = %config.workspace_id,
        role = config.role.as_deref().unwrap_or(""),
        platform_url = %config.platform_url,
        agent_url = %agent_url,
        listen = %local,
        heartbeat_seconds = config.heartbeat_seconds,
        "echo agent starting"
    );
    if config.runtime != "echo" {
        warn!(runtime = %config.runtime, "configured runtime is not `echo`; running the echo agent anyway");
    }

    let mut state = AgentState::new(config.agent_card.clone());
    if let Some(dir) = config_path.parent() {
        state.plugins_dir = dir.join("plugins");
    }
    state.team = Some(Arc::new(team::Team::new(
        config.platform_url.clone(),
        config.workspace_id.clone(),
        token_path.clone(),
        token.clone(),
    )));
    state.delegator = Some(delegate::Delegator::new(
        config.workspace_id.clone(),
        config.platform_url.clone(),
        token_path.clone(),
    ));
    let state = Arc::new(state);
    let (stop_tx, stop_rx) = watch::channel(false);
    let serve =
        axum::serve(listener, a2a::router(state.clone())).with_graceful_shutdown(async move {
            let mut stop_rx = stop_rx;
            // An error means the sender is gone, which also means "stop".
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
        });
    let mut server = tokio::spawn(async move { serve.await });
    let mut prompt_tasks = Vec::new();
    let config_dir = config_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    if let Some(text) = config.initial_prompt.clone() {
        let task = prompts::initial(state.clone(), local.port(), config_dir, text);
        prompt_tasks.push(tokio::spawn(task));
    }
    if let Some(text) = config.idle_prompt.clone() {
        let task = prompts::idle(state.clone(), local.port(), text, config.idle_interval);
        prompt_tasks.push(tokio::spawn(task));
    }

    let mut platform = Platform::new(config.platform_url.clone(), token_path, token);
    let register_body = json!({
        "id": config.workspace_id,
        "url": agent_url,
        "agent_card": config.agent_card,
    });
    let period = Duration::from_secs(config.heartbeat_seconds);

    let outcome = tokio::select! {
        () = stop => Ok(()),
        () = platform_loop(&mut platform, &state, &config.workspace_id, &register_body, period) => Ok(()),
        res = &mut server => Err(match res {
            Ok(Ok(())) => anyhow::anyhow!("the A2A server stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the A2A server failed"),
            Err(e) => anyhow::Error::new(e).context("the A2A server task failed"),
        }),
    };
    info!(workspace_id = %config.workspace_id, "echo agent stopping");
    for t in &prompt_tasks {
        t.abort();
    }
    let _ = stop_tx.send(true);
    if outcome.is_ok() {
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "A2A server error during shutdown"),
            Ok(Err(e)) => warn!(error = %e, "A2A server task failed during shutdown"),
            Err(_) => warn!("A2A server did not drain within {SHUTDOWN_GRACE:?}"),
        }
    }
    outcome
}

/// The future that resolves when the agent should stop.
fn shutdown_signal(
    rx: Option<oneshot::Receiver<()>>,
) -> anyhow::Result<Pin<Box<dyn Future<Output = ()> + Send>>> {
    match rx {
        Some(rx) => Ok(Box::pin(async move {
            // A dropped sender also means "stop".
            let _ = rx.await;
        })),
        None => {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term =
                signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
            let mut int =
                signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
            Ok(Box::pin(async move {
                tokio::select! {
                    _ = term.recv() => info!("received SIGTERM"),
                    _ = int.recv() => info!("received SIGINT"),
                }
            }))
        }
    }
}

/// The container's host name: `$HOSTNAME` (Docker sets it), else `/etc/hostname`, else the
/// kernel's, else `localhost`.
fn hostname() -> String {
    if let Some(h) = std::env::var("HOSTNAME")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
    {
        return h;
    }
    ["/etc/hostname", "/proc/sys/kernel/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `text` cut to at most `max` characters.
fn truncate_text(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests;
