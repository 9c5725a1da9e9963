//! The built-in `echo` workspace runtime (`molecule agent`).
//!
//! This is the process that runs inside a workspace container when its runtime is `echo`. It is
//! deliberately small: the image is `FROM scratch`, so there is no shell, no CA bundle and no
//! HTTP client crate; talking to the platform goes through the tiny HTTP/1.1 client at the bottom
//! of this module ([`http_request`], [`post_json`]), which speaks plain `http://` only.
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
//! 4. heartbeats every `heartbeat_seconds` (`POST {platform_url}/registry/heartbeat`) with the
//!    error rate, in-flight tasks and uptime; a 404/410 answer sends it back to registering.
//!
//! Every platform call carries `Authorization: Bearer <token>`. On a 401 the token file is read
//! again (the operator may have rotated it) and the call is retried once. The token is never
//! logged.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

/// Default location of the operator-generated configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/configs/config.yaml";
/// Default location of the bearer token used for platform calls.
pub const DEFAULT_TOKEN_PATH: &str = "/configs/.auth_token";
/// Default A2A listen address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8000));
/// Default heartbeat period, in seconds.
pub const DEFAULT_HEARTBEAT_SECONDS: u64 = 30;
/// Largest accepted A2A request body.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Largest accepted response body for the HTTP client.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Overall deadline of one HTTP client call (resolve + connect + write + read).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// First registration retry delay.
const REGISTER_BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest registration retry delay.
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long in-flight A2A requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest response head (status line + headers) the client accepts.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest text kept for `current_task` / `sample_error` in heartbeats.
const MAX_REPORTED_TEXT: usize = 256;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

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

/// Why the configuration or the token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `config.yaml` is not valid YAML of the expected shape.
    #[error("cannot parse the agent configuration: {0}")]
    Parse(#[from] crate::yaml::Error),
    /// Neither the file nor `WORKSPACE_ID` gives a workspace id.
    #[error("workspace_id is missing (set it in config.yaml or WORKSPACE_ID)")]
    MissingWorkspaceId,
    /// Neither the file nor `PLATFORM_URL` gives a platform URL.
    #[error("platform_url is missing (set it in config.yaml or PLATFORM_URL)")]
    MissingPlatformUrl,
    /// The platform URL is not a plain `http://host[:port][/path]` URL.
    #[error("invalid platform_url: {0}")]
    PlatformUrl(#[source] HttpError),
    /// `heartbeat_seconds` / `HEARTBEAT_SECONDS` is not a positive integer.
    #[error("invalid heartbeat period {0:?}: expected a positive number of seconds")]
    HeartbeatSeconds(String),
    /// `agent_card` is present but not a mapping.
    #[error("agent_card must be a mapping")]
    AgentCard,
    /// The token file is unusable (its content is never included).
    #[error("token file {}: {reason}", path.display())]
    Token { path: PathBuf, reason: &'static str },
}

/// `config.yaml` as written by the operator; unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    workspace_id: Option<String>,
    name: Option<String>,
    role: Option<String>,
    runtime: Option<String>,
    platform_url: Option<String>,
    agent_url: Option<String>,
    heartbeat_seconds: Option<u64>,
    agent_card: Option<Value>,
}

/// The resolved agent configuration (file + environment overrides + defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Workspace id (`workspace_id` / `WORKSPACE_ID`).
    pub workspace_id: String,
    /// Display name; defaults to the workspace id.
    pub name: String,
    /// Free-form role, if any.
    pub role: Option<String>,
    /// Runtime name; defaults to `echo`.
    pub runtime: String,
    /// Base URL of the platform, without a trailing slash (`platform_url` / `PLATFORM_URL`).
    pub platform_url: String,
    /// URL other agents use to reach this one; `None` = `http://<hostname>:<listen port>`.
    pub agent_url: Option<String>,
    /// Heartbeat period (`heartbeat_seconds` / `HEARTBEAT_SECONDS`), at least 1.
    pub heartbeat_seconds: u64,
    /// The A2A agent card served and registered.
    pub agent_card: Value,
}

impl AgentConfig {
    /// Parses `config.yaml` text, applying overrides from `env` (`WORKSPACE_ID`, `PLATFORM_URL`,
    /// `HEARTBEAT_SECONDS`; empty values count as unset).
    pub fn from_yaml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            crate::yaml::from_str(text)?
        };
        let env = |key: &str| {
            env(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let non_empty =
            |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());

        let workspace_id = env("WORKSPACE_ID")
            .or_else(|| non_empty(file.workspace_id))
            .ok_or(ConfigError::MissingWorkspaceId)?;
        let platform_url = env("PLATFORM_URL")
            .or_else(|| non_empty(file.platform_url))
            .ok_or(ConfigError::MissingPlatformUrl)?;
        HttpUrl::parse(&platform_url).map_err(ConfigError::PlatformUrl)?;
        let platform_url = platform_url.trim_end_matches('/').to_string();

        let heartbeat_seconds = match env("HEARTBEAT_SECONDS") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| ConfigError::HeartbeatSeconds(v.clone()))?,
            None => file.heartbeat_seconds.unwrap_or(DEFAULT_HEARTBEAT_SECONDS),
        };
        if heartbeat_seconds == 0 {
            return Err(ConfigError::HeartbeatSeconds("0".to_string()));
        }

        let name = non_empty(file.name).unwrap_or_else(|| workspace_id.clone());
        let agent_card = match file.agent_card {
            None | Some(Value::Null) => json!({
                "name": name,
                "description": "Echo agent",
                "skills": [{"id": "echo", "name": "Echo"}],
            }),
            Some(card @ Value::Object(_)) => card,
            Some(_) => return Err(ConfigError::AgentCard),
        };

        Ok(Self {
            workspace_id,
            name,
            role: non_empty(file.role),
            runtime: non_empty(file.runtime).unwrap_or_else(|| "echo".to_string()),
            platform_url,
            agent_url: non_empty(file.agent_url),
            heartbeat_seconds,
            agent_card,
        })
    }

    /// Reads and parses `path` (see [`AgentConfig::from_yaml`]).
    pub async fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_yaml(&text, env)
    }
}

/// Reads the bearer token from `path`, trimming surrounding whitespace.
///
/// Fails if the file is unreadable, empty, or the token contains control characters (it goes
/// into an HTTP header verbatim).
pub async fn read_token(path: &Path) -> Result<String, ConfigError> {
    let raw = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let token = raw.trim();
    let fail = |reason| ConfigError::Token {
        path: path.to_path_buf(),
        reason,
    };
    if token.is_empty() {
        return Err(fail("the token is empty"));
    }
    if token.chars().any(char::is_control) {
        return Err(fail("the token contains control characters"));
    }
    Ok(token.to_string())
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
    let state = Arc::new(state);
    let (stop_tx, stop_rx) = watch::channel(false);
    let serve = axum::serve(listener, router(state.clone())).with_graceful_shutdown(async move {
        let mut stop_rx = stop_rx;
        // An error means the sender is gone, which also means "stop".
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
    });
    let mut server = tokio::spawn(async move { serve.await });

    let mut platform = Platform {
        base: config.platform_url.clone(),
        token_path,
        token,
        limits: HttpLimits::default(),
    };
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

// ---------------------------------------------------------------------------------------------
// Platform side: registration and heartbeats.
// ---------------------------------------------------------------------------------------------

/// Authenticated calls to the platform.
struct Platform {
    base: String,
    token_path: PathBuf,
    token: String,
    limits: HttpLimits,
}

impl Platform {
    /// POSTs `body` to `{base}{path}`; on 401 re-reads the token file and retries once.
    async fn post(&mut self, path: &str, body: &Value) -> Result<HttpResponse, HttpError> {
        let url = format!("{}{}", self.base, path);
        let resp = post_json(&url, Some(&self.token), body, self.limits).await?;
        if resp.status != 401 {
            return Ok(resp);
        }
        match read_token(&self.token_path).await {
            Ok(token) if token != self.token => {
                info!(
                    path,
                    "platform answered 401; retrying with the rotated token"
                );
                self.token = token;
            }
            Ok(_) => debug!(
                path,
                "platform answered 401; token file unchanged, retrying once"
            ),
            Err(e) => {
                warn!(path, error = %e, "platform answered 401 and the token cannot be re-read")
            }
        }
        post_json(&url, Some(&self.token), body, self.limits).await
    }
}

/// Registers, then heartbeats; goes back to registering when the platform forgets us.
async fn platform_loop(
    platform: &mut Platform,
    state: &AgentState,
    workspace_id: &str,
    register_body: &Value,
    period: Duration,
) {
    loop {
        register(platform, register_body).await;
        heartbeat_until_forgotten(platform, state, workspace_id, period).await;
    }
}

/// Registers, retrying forever with capped exponential backoff.
async fn register(platform: &mut Platform, body: &Value) {
    let mut delay = REGISTER_BACKOFF_START;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        match platform.post("/registry/register", body).await {
            Ok(resp) if resp.is_success() => {
                info!(attempt, "registered with the platform");
                return;
            }
            Ok(resp) => warn!(
                status = resp.status,
                body = %snippet(&resp.body),
                attempt,
                retry_in = ?delay,
                "registration rejected"
            ),
            Err(e) => warn!(error = %e, attempt, retry_in = ?delay, "registration failed"),
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(REGISTER_BACKOFF_MAX);
    }
}

/// Sends a heartbeat every `period`; returns when the platform answers 404 or 410.
async fn heartbeat_until_forgotten(
    platform: &mut Platform,
    state: &AgentState,
    workspace_id: &str,
    period: Duration,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let window = state.take_window();
        let body = state.heartbeat_body(workspace_id, &window);
        match platform.post("/registry/heartbeat", &body).await {
            Ok(resp) if resp.is_success() => debug!("heartbeat sent"),
            Ok(resp) if resp.status == 404 || resp.status == 410 => {
                warn!(
                    status = resp.status,
                    "the platform does not know this workspace; registering again"
                );
                state.restore_window(window);
                return;
            }
            Ok(resp) => {
                warn!(status = resp.status, body = %snippet(&resp.body), "heartbeat rejected");
                state.restore_window(window);
            }
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                state.restore_window(window);
            }
        }
    }
}

/// The start of a response body, for logs.
fn snippet(body: &[u8]) -> String {
    truncate_text(&String::from_utf8_lossy(body), 200)
}

/// `text` cut to at most `max` characters.
fn truncate_text(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Agent state shared by the A2A server and the heartbeats.
// ---------------------------------------------------------------------------------------------

/// A2A request counters since the last delivered heartbeat.
#[derive(Debug, Default, Clone, PartialEq)]
struct Window {
    requests: u64,
    errors: u64,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Stats {
    window: Window,
    next_task: u64,
    /// In-flight `message/send` calls by start order, with their text.
    tasks: BTreeMap<u64, String>,
}

struct AgentState {
    started: Instant,
    card: Value,
    stats: Mutex<Stats>,
    /// Where installed plugins live (`/configs/plugins`).
    plugins_dir: PathBuf,
}

/// Removes an in-flight task when dropped.
struct TaskGuard<'a> {
    state: &'a AgentState,
    id: u64,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.state.stats().tasks.remove(&self.id);
    }
}

impl AgentState {
    fn new(card: Value) -> Self {
        Self {
            started: Instant::now(),
            card,
            stats: Mutex::new(Stats::default()),
            plugins_dir: PathBuf::from("/configs/plugins"),
        }
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_request(&self) {
        self.stats().window.requests += 1;
    }

    fn record_error(&self, error: String) {
        let mut stats = self.stats();
        stats.window.errors += 1;
        stats.window.last_error = Some(truncate_text(&error, MAX_REPORTED_TEXT));
    }

    fn start_task(&self, text: &str) -> TaskGuard<'_> {
        let mut stats = self.stats();
        let id = stats.next_task;
        stats.next_task += 1;
        stats
            .tasks
            .insert(id, truncate_text(text, MAX_REPORTED_TEXT));
        TaskGuard { state: self, id }
    }

    /// Takes the counters of the current interval, starting a new one.
    fn take_window(&self) -> Window {
        std::mem::take(&mut self.stats().window)
    }

    /// Puts back an interval whose heartbeat was not delivered.
    fn restore_window(&self, old: Window) {
        let mut stats = self.stats();
        stats.window.requests += old.requests;
        stats.window.errors += old.errors;
        if stats.window.last_error.is_none() {
            stats.window.last_error = old.last_error;
        }
    }

    fn heartbeat_body(&self, workspace_id: &str, window: &Window) -> Value {
        let stats = self.stats();
        let error_rate = if window.requests == 0 {
            0.0
        } else {
            window.errors as f64 / window.requests as f64
        };
        json!({
            "workspace_id": workspace_id,
            "error_rate": error_rate,
            "sample_error": window.last_error,
            "active_tasks": stats.tasks.len(),
            "current_task": stats.tasks.values().next_back(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "runtime_state": "ok",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A2A JSON-RPC server.
// ---------------------------------------------------------------------------------------------

fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/", post(a2a))
        .route("/a2a", post(a2a))
        .route("/health", get(health))
        .route("/plugins", get(plugins))
        .route("/.well-known/agent.json", get(agent_card))
        .route("/.well-known/agent-card.json", get(agent_card))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn plugins(State(state): State<Arc<AgentState>>) -> Json<Value> {
    let dir = state.plugins_dir.clone();
    let list = tokio::task::spawn_blocking(move || installed_plugins(&dir))
        .await
        .unwrap_or_default();
    Json(json!({ "plugins": list }))
}

/// Longest skill text `GET /plugins` returns per skill.
const MAX_SKILL_TEXT: usize = 16 * 1024;

/// The complete plugins under `dir`: name, version, installed sha (the marker), skills with
/// their SKILL.md text, hook file names. Directories without `.complete` are skipped.
fn installed_plugins(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let list_dir = |p: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut out = vec![];
    for name in names {
        let root = dir.join(&name);
        let Ok(marker) = std::fs::read_to_string(root.join(".complete")) else {
            continue;
        };
        let meta: Value = std::fs::read(root.join("plugin.yaml"))
            .ok()
            .and_then(|b| crate::yaml::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let skills: Vec<Value> = list_dir(root.join("skills"))
            .into_iter()
            .filter_map(|s| {
                let text = std::fs::read(root.join("skills").join(&s).join("SKILL.md")).ok()?;
                let text =
                    String::from_utf8_lossy(&text[..text.len().min(MAX_SKILL_TEXT)]).into_owned();
                Some(json!({"name": s, "content": text}))
            })
            .collect();
        out.push(json!({
            "name": name,
            "version": meta.get("version").cloned().unwrap_or(Value::Null),
            "sha": marker.trim(),
            "skills": skills,
            "hooks": list_dir(root.join("hooks")),
        }));
    }
    out
}

async fn agent_card(State(state): State<Arc<AgentState>>) -> Json<Value> {
    Json(state.card.clone())
}

async fn a2a(State(state): State<Arc<AgentState>>, body: Bytes) -> Response {
    match handle_rpc(&state, &body) {
        Some(reply) => Json(reply).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// A JSON-RPC error to answer with.
struct RpcFailure {
    code: i64,
    message: &'static str,
    data: Option<String>,
}

impl RpcFailure {
    fn new(code: i64, message: &'static str, data: impl Into<String>) -> Self {
        Self {
            code,
            message,
            data: Some(data.into()),
        }
    }
}

/// Handles one JSON-RPC request body; `None` for a notification (no `id`).
fn handle_rpc(state: &AgentState, body: &[u8]) -> Option<Value> {
    state.record_request();
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let failure = RpcFailure::new(PARSE_ERROR, "Parse error", e.to_string());
            return Some(rpc_error(state, Value::Null, failure));
        }
    };
    let Value::Object(request) = request else {
        let failure = RpcFailure::new(INVALID_REQUEST, "Invalid Request", "expected an object");
        return Some(rpc_error(state, Value::Null, failure));
    };
    let id = request.get("id").cloned();
    let reply_id = match &id {
        None => Value::Null,
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => v.clone(),
        Some(_) => {
            let failure = RpcFailure::new(
                INVALID_REQUEST,
                "Invalid Request",
                "id must be a string, a number or null",
            );
            return Some(rpc_error(state, Value::Null, failure));
        }
    };
    let outcome = if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        Err(RpcFailure::new(
            INVALID_REQUEST,
            "Invalid Request",
            "jsonrpc must be \"2.0\"",
        ))
    } else {
        match request.get("method").and_then(Value::as_str) {
            None => Err(RpcFailure::new(
                INVALID_REQUEST,
                "Invalid Request",
                "method must be a string",
            )),
            Some("message/send") => message_send(state, request.get("params")),
            Some(other) => Err(RpcFailure::new(
                METHOD_NOT_FOUND,
                "Method not found",
                format!("unknown method {}", truncate_text(other, 64)),
            )),
        }
    };
    let reply = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": reply_id, "result": result}),
        Err(failure) => rpc_error(state, reply_id, failure),
    };
    id.map(|_| reply)
}

/// Builds an error reply and counts it.
fn rpc_error(state: &AgentState, id: Value, failure: RpcFailure) -> Value {
    let summary = match &failure.data {
        Some(data) => format!("{} {}: {data}", failure.code, failure.message),
        None => format!("{} {}", failure.code, failure.message),
    };
    state.record_error(summary);
    let mut error = json!({"code": failure.code, "message": failure.message});
    if let Some(data) = failure.data {
        error["data"] = Value::String(data);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// `message/send`: answers with an agent message carrying the request's text.
fn message_send(state: &AgentState, params: Option<&Value>) -> Result<Value, RpcFailure> {
    let text =
        echo_text(params).map_err(|why| RpcFailure::new(INVALID_PARAMS, "Invalid params", why))?;
    let _task = state.start_task(&text);
    let mut message = json!({
        "kind": "message",
        "role": "agent",
        "messageId": new_message_id(),
        "parts": [{"kind": "text", "text": text}],
    });
    if let Some(context) = params
        .and_then(|p| p.get("message"))
        .and_then(|m| m.get("contextId"))
        .filter(|c| c.is_string())
    {
        message["contextId"] = context.clone();
    }
    Ok(message)
}

/// The concatenated text parts of `params.message` (`kind` or the older `type` form).
fn echo_text(params: Option<&Value>) -> Result<String, String> {
    let message = params
        .and_then(|p| p.get("message"))
        .filter(|m| m.is_object())
        .ok_or("params.message must be an object")?;
    let parts = message
        .get("parts")
        .and_then(Value::as_array)
        .ok_or("params.message.parts must be an array")?;
    let mut text = String::new();
    let mut found = false;
    for (i, part) in parts.iter().enumerate() {
        let kind = part
            .get("kind")
            .or_else(|| part.get("type"))
            .and_then(Value::as_str);
        if kind != Some("text") {
            continue;
        }
        let piece = part
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("params.message.parts[{i}].text must be a string"))?;
        text.push_str(piece);
        found = true;
    }
    if found {
        Ok(text)
    } else {
        Err("params.message has no text parts".to_string())
    }
}

/// A fresh UUID-v4-shaped id (random enough to be unique; not for security).
fn new_message_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(count);
        hasher.write_u128(nanos);
        hasher.write_usize(i);
        *half = hasher.finish();
    }
    let hi = (halves[0] & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (halves[1] & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client for plain `http://` URLs.
// ---------------------------------------------------------------------------------------------

/// Bounds of one HTTP client call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Deadline for the whole call (resolve, connect, send, receive).
    pub timeout: Duration,
    /// Largest accepted response body, in bytes.
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            timeout: HTTP_TIMEOUT,
            max_body: MAX_RESPONSE_BYTES,
        }
    }
}

/// Why an HTTP client call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not a plain `http://host[:port][/path]` URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// The method or a header value cannot be sent.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// Name resolution failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// No resolved address accepted the connection.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The call did not complete within the deadline.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The response body exceeds the cap.
    #[error("response body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The response is not valid HTTP/1.x.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

/// A received response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (chunked transfer coding already removed).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A parsed `http://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses a plain `http://` URL; `https`, credentials and fragments-only oddities are refused.
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let invalid = |reason| HttpError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let rest = match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
            _ => return Err(invalid("only plain http:// URLs are supported")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let tail = tail.split('#').next().unwrap_or_default();
        let path = match tail {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "the path contains whitespace or control characters",
            ));
        }
        if authority.contains('@') {
            return Err(invalid("credentials in URLs are not supported"));
        }
        let parse_port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("invalid port"))
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unterminated IPv6 address"))?;
            let port = match after {
                "" => 80,
                p => parse_port(p.strip_prefix(':').ok_or_else(|| invalid("invalid port"))?)?,
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, parse_port(port)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(invalid("invalid host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// POSTs `body` as JSON to `url`, with `Authorization: Bearer <bearer>` when given.
pub async fn post_json(
    url: &str,
    bearer: Option<&str>,
    body: &Value,
    limits: HttpLimits,
) -> Result<HttpResponse, HttpError> {
    let bytes = serde_json::to_vec(body)
        .map_err(|_| HttpError::InvalidRequest("the body cannot be serialized"))?;
    http_request("POST", url, bearer, Some(&bytes), limits).await
}

/// One HTTP/1.1 request with `Connection: close`, bounded by `limits`.
///
/// A `body`, when given, is sent as `application/json`. The response body is read by
/// `Content-Length`, chunked transfer coding, or until the server closes the connection.
pub async fn http_request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
    limits: HttpLimits,
) -> Result<HttpResponse, HttpError> {
    match tokio::time::timeout(
        limits.timeout,
        request_inner(method, url, bearer, body, limits.max_body),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout(limits.timeout)),
    }
}

async fn request_inner(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
    max_body: usize,
) -> Result<HttpResponse, HttpError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::InvalidRequest(
            "the method must be an uppercase token",
        ));
    }
    if bearer.is_some_and(|t| t.chars().any(char::is_control)) {
        return Err(HttpError::InvalidRequest(
            "the bearer token contains control characters",
        ));
    }
    let target = HttpUrl::parse(url)?;
    let authority = target.authority();

    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|source| HttpError::Resolve {
            host: target.host.clone(),
            source,
        })?;
    let mut last_error = None;
    let mut connected = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let mut stream = connected.ok_or_else(|| HttpError::Connect {
        authority: authority.clone(),
        source: last_error
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses")),
    })?;
    let _ = stream.set_nodelay(true);

    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: molecule-agent\r\nAccept: application/json\r\nConnection: close\r\n",
        target.path
    );
    if let Some(token) = bearer {
        head.push_str("Authorization: Bearer ");
        head.push_str(token);
        head.push_str("\r\n");
    }
    match body {
        Some(b) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            b.len()
        )),
        None if method == "POST" || method == "PUT" => head.push_str("Content-Length: 0\r\n\r\n"),
        None => head.push_str("\r\n"),
    }
    stream.write_all(head.as_bytes()).await?;
    if let Some(b) = body {
        stream.write_all(b).await?;
    }
    stream.flush().await?;

    read_response(&mut stream, max_body).await
}

/// Appends one read to `buf`; returns the number of bytes read (0 = end of stream).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, HttpError> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_response(stream: &mut TcpStream, max_body: usize) -> Result<HttpResponse, HttpError> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(HttpError::Malformed("response head too large"));
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the response head",
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HttpError::Malformed("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut fields = status_line.splitn(3, ' ');
    let version = fields.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status = fields
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or(HttpError::Malformed("invalid status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("invalid header line"));
        };
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("content-length") {
            let len = value
                .parse::<usize>()
                .map_err(|_| HttpError::Malformed("invalid Content-Length"))?;
            content_length = Some(len);
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .split(',')
                .any(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let mut body = buf.split_off(head_end + 4);

    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(HttpResponse {
            status,
            body: Vec::new(),
        });
    }
    if chunked {
        // Connection: close, so the server ends the stream after the last chunk. The raw cap
        // leaves room for chunk framing; the decoded size is checked against `max_body`.
        let raw_cap = max_body.saturating_mul(2).saturating_add(MAX_RESPONSE_HEAD);
        loop {
            if body.len() > raw_cap {
                return Err(HttpError::TooLarge { limit: max_body });
            }
            if let Some(decoded) = decode_chunked(&body, max_body)? {
                return Ok(HttpResponse {
                    status,
                    body: decoded,
                });
            }
            if read_more(stream, &mut body).await? == 0 {
                return Err(HttpError::Malformed("truncated chunked body"));
            }
        }
    }
    if let Some(len) = content_length {
        if len > max_body {
            return Err(HttpError::TooLarge { limit: max_body });
        }
        while body.len() < len {
            if read_more(stream, &mut body).await? == 0 {
                return Err(HttpError::Malformed(
                    "connection closed before the whole body",
                ));
            }
        }
        body.truncate(len);
        return Ok(HttpResponse { status, body });
    }
    loop {
        if body.len() > max_body {
            return Err(HttpError::TooLarge { limit: max_body });
        }
        if read_more(stream, &mut body).await? == 0 {
            return Ok(HttpResponse { status, body });
        }
    }
}

/// Decodes a chunked body; `Ok(None)` when more data is needed.
fn decode_chunked(data: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[pos..pos + line_len])
            .map_err(|_| HttpError::Malformed("invalid chunk size"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed("invalid chunk size"))?;
        pos += line_len + 2;
        if size == 0 {
            // Trailers (if any) follow; the body is complete.
            return Ok(Some(out));
        }
        if out.len().saturating_add(size) > max_body {
            return Err(HttpError::TooLarge { limit: max_body });
        }
        let Some(end) = pos.checked_add(size) else {
            return Err(HttpError::Malformed("invalid chunk size"));
        };
        if data.len() < end + 2 {
            return Ok(None);
        }
        if &data[end..end + 2] != b"\r\n" {
            return Err(HttpError::Malformed("missing CRLF after a chunk"));
        }
        out.extend_from_slice(&data[pos..end]);
        pos = end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, Uri};
    use tokio::task::JoinHandle;

    // ----- fake platform ---------------------------------------------------------------------

    #[derive(Debug, Clone)]
    struct Call {
        path: String,
        token: Option<String>,
        status: u16,
        body: Value,
    }

    #[derive(Debug, Default)]
    struct Fake {
        /// The only token accepted; anything else gets 401.
        accept: String,
        calls: Vec<Call>,
        /// Status for the next authorized heartbeat (then back to 200).
        next_heartbeat_status: Option<u16>,
        /// How many authorized registrations to answer 503 first.
        fail_registrations: u32,
    }

    type FakeHandle = Arc<Mutex<Fake>>;

    async fn fake_endpoint(
        State(fake): State<FakeHandle>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, Json<Value>) {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut fake = fake.lock().unwrap();
        let path = uri.path().to_string();
        let status = if token.as_deref() != Some(fake.accept.as_str()) {
            401
        } else if path.ends_with("/heartbeat") {
            fake.next_heartbeat_status.take().unwrap_or(200)
        } else if fake.fail_registrations > 0 {
            fake.fail_registrations -= 1;
            503
        } else {
            200
        };
        fake.calls.push(Call {
            path,
            token,
            status,
            body,
        });
        (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"status": status})),
        )
    }

    async fn start_platform(token: &str) -> (String, FakeHandle) {
        let fake = Arc::new(Mutex::new(Fake {
            accept: token.to_string(),
            ..Fake::default()
        }));
        let app = Router::new()
            .route("/registry/register", post(fake_endpoint))
            .route("/registry/heartbeat", post(fake_endpoint))
            .with_state(fake.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/"), fake)
    }

    fn calls(fake: &FakeHandle, path: &str) -> Vec<Call> {
        fake.lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }

    fn all_calls(fake: &FakeHandle) -> Vec<Call> {
        fake.lock().unwrap().calls.clone()
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ----- agent harness ---------------------------------------------------------------------

    struct Agent {
        addr: SocketAddr,
        dir: tempfile::TempDir,
        stop: oneshot::Sender<()>,
        task: JoinHandle<anyhow::Result<()>>,
    }

    impl Agent {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn token_path(&self) -> PathBuf {
            self.dir.path().join(".auth_token")
        }

        /// Replaces the token file atomically.
        fn rotate_token(&self, token: &str) {
            let tmp = self.dir.path().join(".auth_token.tmp");
            std::fs::write(&tmp, format!("{token}\n")).unwrap();
            std::fs::rename(&tmp, self.token_path()).unwrap();
        }

        async fn stop(self) {
            self.stop.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("agent did not stop")
                .unwrap()
                .unwrap();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn start_agent(platform_url: &str, token: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "workspace_id: \"ws-test-1\"\nname: alpha\nrole: researcher\nruntime: echo\n\
             platform_url: \"{platform_url}\"\nagent_url: \"http://{addr}\"\n\
             heartbeat_seconds: 1\nsomething_new: [1, 2, 3]\n"
        );
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        std::fs::write(dir.path().join(".auth_token"), format!("  {token}\n")).unwrap();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(run(AgentOptions {
            config_path,
            token_path: dir.path().join(".auth_token"),
            listen: addr,
            shutdown: Some(rx),
        }));
        let agent = Agent {
            addr,
            dir,
            stop,
            task,
        };
        let health = agent.url("/health");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(resp) = http_request("GET", &health, None, None, HttpLimits::default()).await
                && resp.status == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "agent never became healthy");
            assert!(!agent.task.is_finished(), "agent exited early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent
    }

    #[tokio::test]
    async fn lists_only_complete_plugins_and_rereads_skills() {
        let (platform, _fake) = start_platform("tok").await;
        let agent = start_agent(&platform, "tok").await;
        let plugins = agent.dir.path().join("plugins");
        let write = |rel: &str, text: &str| {
            let p = plugins.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("hello/plugin.yaml", "name: hello\nversion: 1.0.0\n");
        write("hello/skills/greet/SKILL.md", "# Greet v1");
        write("hello/hooks/on-start.sh", "#!/bin/sh");
        write("hello/.complete", "abc123\n");
        write("half/plugin.yaml", "name: half\n");
        write(".staging/hello.1/plugin.yaml", "name: hello\n");
        let get = |url: String| async move {
            let r = http_request("GET", &url, None, None, HttpLimits::default())
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            r.json().unwrap()
        };
        let body: Value = get(agent.url("/plugins")).await;
        let list = body["plugins"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{body}");
        assert_eq!(list[0]["name"], "hello");
        assert_eq!(list[0]["version"], "1.0.0");
        assert_eq!(list[0]["sha"], "abc123");
        assert_eq!(list[0]["skills"][0]["content"], "# Greet v1");
        assert_eq!(list[0]["hooks"][0], "on-start.sh");
        // A SKILL.md change is visible on the next request, no restart.
        write("hello/skills/greet/SKILL.md", "# Greet v2");
        let body: Value = get(agent.url("/plugins")).await;
        assert_eq!(body["plugins"][0]["skills"][0]["content"], "# Greet v2");
        agent.stop().await;
    }

    fn default_card() -> Value {
        json!({
            "name": "alpha",
            "description": "Echo agent",
            "skills": [{"id": "echo", "name": "Echo"}],
        })
    }

    async fn rpc(url: &str, body: &Value) -> Value {
        let resp = post_json(url, None, body, HttpLimits::default())
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        resp.json().unwrap()
    }

    // ----- agent tests -------------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registers_then_heartbeats_with_the_token() {
        let (platform, fake) = start_platform("tok-1").await;
        let agent = start_agent(&platform, "tok-1").await;

        wait_until("two accepted heartbeats", || {
            calls(&fake, "/registry/heartbeat")
                .iter()
                .filter(|c| c.status == 200)
                .count()
                >= 2
        })
        .await;

        let all = all_calls(&fake);
        assert_eq!(all[0].path, "/registry/register", "registers first");
        let registers = calls(&fake, "/registry/register");
        assert_eq!(registers.len(), 1);
        assert_eq!(registers[0].token.as_deref(), Some("tok-1"));
        assert_eq!(registers[0].status, 200);
        assert_eq!(
            registers[0].body,
            json!({
                "id": "ws-test-1",
                "url": format!("http://{}", agent.addr),
                "agent_card": default_card(),
            })
        );
        for hb in calls(&fake, "/registry/heartbeat") {
            assert_eq!(hb.token.as_deref(), Some("tok-1"));
            assert_eq!(hb.body["workspace_id"], "ws-test-1");
            assert_eq!(hb.body["error_rate"], json!(0.0));
            assert_eq!(hb.body["sample_error"], Value::Null);
            assert_eq!(hb.body["active_tasks"], json!(0));
            assert_eq!(hb.body["current_task"], Value::Null);
            assert!(hb.body["uptime_seconds"].is_u64());
            assert_eq!(hb.body["runtime_state"], "ok");
        }
        agent.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_a2a_json_rpc() {
        let (platform, fake) = start_platform("tok-1").await;
        let agent = start_agent(&platform, "tok-1").await;

        // Echo on `/`, numeric id kept.
        let reply = rpc(
            &agent.url("/"),
            &json!({
                "jsonrpc": "2.0", "id": 7, "method": "message/send",
                "params": {"message": {"role": "user", "messageId": "m-1",
                    "parts": [{"kind": "text", "text": "hi"}]}},
            }),
        )
        .await;
        assert_eq!(reply["jsonrpc"], "2.0");
        assert_eq!(reply["id"], 7);
        let result = &reply["result"];
        assert_eq!(result["kind"], "message");
        assert_eq!(result["role"], "agent");
        assert_eq!(result["parts"], json!([{"kind": "text", "text": "hi"}]));
        let first_id = result["messageId"].as_str().unwrap().to_string();
        assert_eq!(first_id.len(), 36);
        assert_ne!(first_id, "m-1");

        // Echo on `/a2a`, string id, the older `type` form, parts concatenated.
        let reply = rpc(
            &agent.url("/a2a"),
            &json!({
                "jsonrpc": "2.0", "id": "req-abc", "method": "message/send",
                "params": {"message": {"role": "user", "messageId": "m-2", "contextId": "ctx-1",
                    "parts": [{"type": "text", "text": "hello, "},
                              {"kind": "data", "data": {"x": 1}},
                              {"kind": "text", "text": "world"}]}},
            }),
        )
        .await;
        assert_eq!(reply["id"], "req-abc");
        assert_eq!(
            reply["result"]["parts"],
            json!([{"kind": "text", "text": "hello, world"}])
        );
        assert_eq!(reply["result"]["contextId"], "ctx-1");
        assert_ne!(reply["result"]["messageId"].as_str().unwrap(), first_id);

        // Unknown method.
        let reply = rpc(
            &agent.url("/"),
            &json!({"jsonrpc": "2.0", "id": 8, "method": "tasks/frobnicate", "params": {}}),
        )
        .await;
        assert_eq!(reply["id"], 8);
        assert_eq!(reply["error"]["code"], -32601);
        assert!(reply.get("result").is_none());

        // Invalid params.
        let reply = rpc(
            &agent.url("/"),
            &json!({"jsonrpc": "2.0", "id": 9, "method": "message/send",
                    "params": {"message": {"role": "user"}}}),
        )
        .await;
        assert_eq!(reply["id"], 9);
        assert_eq!(reply["error"]["code"], -32602);

        // Malformed JSON.
        let resp = http_request(
            "POST",
            &agent.url("/"),
            None,
            Some(b"{\"jsonrpc\": \"2.0\", \"id\": 1, "),
            HttpLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200);
        let reply = resp.json().unwrap();
        assert_eq!(reply["error"]["code"], -32700);
        assert_eq!(reply["id"], Value::Null);

        // Body cap.
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        let resp = http_request(
            "POST",
            &agent.url("/a2a"),
            None,
            Some(&huge),
            HttpLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 413);

        // Health and agent card.
        let resp = http_request(
            "GET",
            &agent.url("/health"),
            None,
            None,
            HttpLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json().unwrap(), json!({"status": "ok"}));
        let resp = http_request(
            "GET",
            &agent.url("/.well-known/agent.json"),
            None,
            None,
            HttpLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json().unwrap(), default_card());

        // The errors show up in a heartbeat.
        wait_until("a heartbeat reporting errors", || {
            calls(&fake, "/registry/heartbeat").iter().any(|c| {
                c.status == 200
                    && c.body["error_rate"].as_f64().unwrap_or(0.0) > 0.0
                    && c.body["sample_error"].is_string()
            })
        })
        .await;
        let total_errors: f64 = calls(&fake, "/registry/heartbeat")
            .iter()
            .filter(|c| c.status == 200)
            .map(|c| c.body["error_rate"].as_f64().unwrap())
            .sum();
        assert!(total_errors > 0.0 && total_errors <= 4.0);
        agent.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rereads_a_rotated_token_on_401() {
        let (platform, fake) = start_platform("tok-old").await;
        let agent = start_agent(&platform, "tok-old").await;
        wait_until("a heartbeat with the old token", || {
            calls(&fake, "/registry/heartbeat")
                .iter()
                .any(|c| c.status == 200)
        })
        .await;

        // The operator rotates the token: new file first, then the platform flips.
        agent.rotate_token("tok-new");
        let before = {
            let mut fake = fake.lock().unwrap();
            fake.accept = "tok-new".to_string();
            fake.calls.len()
        };

        wait_until("a heartbeat with the new token", || {
            calls(&fake, "/registry/heartbeat")
                .iter()
                .any(|c| c.status == 200 && c.token.as_deref() == Some("tok-new"))
        })
        .await;
        let after: Vec<Call> = all_calls(&fake).into_iter().skip(before).collect();
        // Rejected with the old token, then retried at once with the new one.
        assert_eq!(after[0].path, "/registry/heartbeat");
        assert_eq!(after[0].status, 401);
        assert_eq!(after[0].token.as_deref(), Some("tok-old"));
        assert_eq!(after[1].path, "/registry/heartbeat");
        assert_eq!(after[1].status, 200);
        assert_eq!(after[1].token.as_deref(), Some("tok-new"));
        assert_eq!(after[1].body["workspace_id"], "ws-test-1");
        assert_eq!(
            calls(&fake, "/registry/register").len(),
            1,
            "no re-registration"
        );
        agent.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registers_again_after_a_404_heartbeat() {
        let (platform, fake) = start_platform("tok-1").await;
        let agent = start_agent(&platform, "tok-1").await;
        wait_until("a first heartbeat", || {
            calls(&fake, "/registry/heartbeat")
                .iter()
                .any(|c| c.status == 200)
        })
        .await;
        fake.lock().unwrap().next_heartbeat_status = Some(404);

        wait_until("a second registration", || {
            calls(&fake, "/registry/register").len() >= 2
        })
        .await;
        let all = all_calls(&fake);
        let forgotten = all
            .iter()
            .position(|c| c.path == "/registry/heartbeat" && c.status == 404)
            .unwrap();
        assert_eq!(all[forgotten + 1].path, "/registry/register");
        assert_eq!(all[forgotten + 1].status, 200);
        assert_eq!(all[forgotten + 1].body["id"], "ws-test-1");

        wait_until("heartbeats after re-registering", || {
            let all = all_calls(&fake);
            all.iter()
                .skip(forgotten + 2)
                .any(|c| c.path == "/registry/heartbeat" && c.status == 200)
        })
        .await;
        agent.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registration_retries_and_picks_up_a_new_token() {
        let (platform, fake) = start_platform("tok-right").await;
        fake.lock().unwrap().fail_registrations = 1;
        let agent = start_agent(&platform, "tok-wrong").await;

        // 401, immediate retry after re-reading (still wrong), then backoff, ...
        wait_until("rejected registrations", || {
            calls(&fake, "/registry/register")
                .iter()
                .filter(|c| c.status == 401)
                .count()
                >= 4
        })
        .await;
        let rejected = calls(&fake, "/registry/register");
        assert!(
            rejected
                .iter()
                .all(|c| c.token.as_deref() == Some("tok-wrong"))
        );

        agent.rotate_token("tok-right");
        wait_until("a successful registration", || {
            calls(&fake, "/registry/register")
                .iter()
                .any(|c| c.status == 200)
        })
        .await;
        let registers = calls(&fake, "/registry/register");
        let statuses: Vec<u16> = registers.iter().map(|c| c.status).collect();
        // The first authorized attempt got 503 and was retried after a backoff.
        let first_ok_token = registers
            .iter()
            .position(|c| c.token.as_deref() == Some("tok-right"))
            .unwrap();
        assert_eq!(statuses[first_ok_token], 503, "{statuses:?}");
        assert_eq!(*statuses.last().unwrap(), 200, "{statuses:?}");
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        agent.stop().await;
    }

    #[tokio::test]
    async fn fails_fast_without_workspace_id_or_token() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, "platform_url: http://127.0.0.1:1\n").unwrap();
        std::fs::write(dir.path().join(".auth_token"), "t").unwrap();
        let opts = AgentOptions {
            config_path: config_path.clone(),
            token_path: dir.path().join(".auth_token"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown: None,
        };
        let err = run(opts).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("workspace_id is missing"),
            "{err:#}"
        );

        std::fs::write(
            &config_path,
            "workspace_id: w\nplatform_url: http://127.0.0.1:1\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".auth_token"), " \n").unwrap();
        let opts = AgentOptions {
            config_path,
            token_path: dir.path().join(".auth_token"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown: None,
        };
        let err = run(opts).await.unwrap_err();
        assert!(format!("{err:#}").contains("empty"), "{err:#}");
    }

    // ----- unit tests --------------------------------------------------------------------------

    #[test]
    fn config_defaults_env_overrides_and_unknown_keys() {
        let yaml = "workspace_id: ws-1\nplatform_url: http://172.18.0.1:8080/\nextra: {a: 1}\n";
        let cfg = AgentConfig::from_yaml(yaml, |_| None).unwrap();
        assert_eq!(cfg.workspace_id, "ws-1");
        assert_eq!(cfg.name, "ws-1");
        assert_eq!(cfg.runtime, "echo");
        assert_eq!(cfg.platform_url, "http://172.18.0.1:8080");
        assert_eq!(cfg.agent_url, None);
        assert_eq!(cfg.heartbeat_seconds, DEFAULT_HEARTBEAT_SECONDS);
        assert_eq!(cfg.agent_card["description"], "Echo agent");
        assert_eq!(cfg.agent_card["skills"][0]["id"], "echo");

        let env = |k: &str| match k {
            "WORKSPACE_ID" => Some("ws-env".to_string()),
            "PLATFORM_URL" => Some("http://platform:9000".to_string()),
            "HEARTBEAT_SECONDS" => Some("5".to_string()),
            _ => None,
        };
        let yaml = "workspace_id: ws-1\nname: alpha\nrole: researcher\nplatform_url: http://x:1\n\
                    heartbeat_seconds: 30\nagent_url: http://ws-3f2a:8000\n\
                    agent_card: {name: Alpha, description: Custom, skills: [{id: s}]}\n";
        let cfg = AgentConfig::from_yaml(yaml, env).unwrap();
        assert_eq!(cfg.workspace_id, "ws-env");
        assert_eq!(cfg.platform_url, "http://platform:9000");
        assert_eq!(cfg.heartbeat_seconds, 5);
        assert_eq!(cfg.name, "alpha");
        assert_eq!(cfg.role.as_deref(), Some("researcher"));
        assert_eq!(cfg.agent_url.as_deref(), Some("http://ws-3f2a:8000"));
        assert_eq!(
            cfg.agent_card,
            json!({"name": "Alpha", "description": "Custom", "skills": [{"id": "s"}]})
        );

        // Empty environment values do not override.
        let cfg = AgentConfig::from_yaml(yaml, |_| Some(String::new())).unwrap();
        assert_eq!(cfg.workspace_id, "ws-1");
    }

    #[test]
    fn config_errors() {
        let missing = AgentConfig::from_yaml("platform_url: http://x:1\n", |_| None);
        assert!(matches!(missing, Err(ConfigError::MissingWorkspaceId)));
        let missing = AgentConfig::from_yaml("workspace_id: w\n", |_| None);
        assert!(matches!(missing, Err(ConfigError::MissingPlatformUrl)));
        let https = AgentConfig::from_yaml("workspace_id: w\nplatform_url: https://x\n", |_| None);
        assert!(matches!(https, Err(ConfigError::PlatformUrl(_))));
        let zero = AgentConfig::from_yaml(
            "workspace_id: w\nplatform_url: http://x\nheartbeat_seconds: 0\n",
            |_| None,
        );
        assert!(matches!(zero, Err(ConfigError::HeartbeatSeconds(_))));
        let bad_env = AgentConfig::from_yaml("workspace_id: w\nplatform_url: http://x\n", |k| {
            (k == "HEARTBEAT_SECONDS").then(|| "soon".to_string())
        });
        assert!(matches!(bad_env, Err(ConfigError::HeartbeatSeconds(_))));
        let card = AgentConfig::from_yaml(
            "workspace_id: w\nplatform_url: http://x\nagent_card: [1]\n",
            |_| None,
        );
        assert!(matches!(card, Err(ConfigError::AgentCard)));
        assert!(matches!(
            AgentConfig::from_yaml("workspace_id: [", |_| None),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn url_parsing() {
        let u = HttpUrl::parse("http://172.18.0.1:8080/registry/register").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("172.18.0.1", 8080, "/registry/register")
        );
        assert_eq!(u.authority(), "172.18.0.1:8080");
        let u = HttpUrl::parse("HTTP://ws-3f2a9c1e7b4d").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert_eq!(u.authority(), "ws-3f2a9c1e7b4d");
        let u = HttpUrl::parse("http://[::1]:9000?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/?x=1")
        );
        assert_eq!(u.authority(), "[::1]:9000");
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://:80/",
            "http://x:0/",
            "http://x:99999/",
            "http://u:p@x/",
            "http://[::1/",
            "http://x/a b",
        ] {
            assert!(
                matches!(HttpUrl::parse(bad), Err(HttpError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rpc_edge_cases() {
        let state = AgentState::new(json!({}));
        // Notification: handled, no reply.
        let note = br#"{"jsonrpc":"2.0","method":"message/send","params":{"message":{"parts":[{"kind":"text","text":"x"}]}}}"#;
        assert_eq!(handle_rpc(&state, note), None);
        let reply = handle_rpc(&state, b"[1,2]").unwrap();
        assert_eq!(reply["error"]["code"], -32600);
        let reply = handle_rpc(&state, br#"{"jsonrpc":"1.0","id":3,"method":"x"}"#).unwrap();
        assert_eq!(
            (reply["id"].clone(), reply["error"]["code"].clone()),
            (json!(3), json!(-32600))
        );
        let reply = handle_rpc(
            &state,
            br#"{"jsonrpc":"2.0","id":4,"method":"message/send","params":{"message":{"parts":[{"kind":"text","text":5}]}}}"#,
        )
        .unwrap();
        assert_eq!(reply["error"]["code"], -32602);
        let reply = handle_rpc(
            &state,
            br#"{"jsonrpc":"2.0","id":5,"method":"message/send","params":{"message":{"parts":[{"kind":"file"}]}}}"#,
        )
        .unwrap();
        assert_eq!(reply["error"]["code"], -32602);

        let window = state.take_window();
        assert_eq!((window.requests, window.errors), (5, 4));
        assert!(window.last_error.as_deref().unwrap().starts_with("-32602"));
        let hb = state.heartbeat_body("w", &window);
        assert_eq!(hb["error_rate"], json!(0.8));
        // An undelivered window is merged into the next one.
        state.restore_window(window);
        assert_eq!(state.take_window().requests, 5);
        assert_eq!(state.take_window(), Window::default());
    }

    #[test]
    fn in_flight_tasks_are_reported() {
        let state = AgentState::new(json!({}));
        let first = state.start_task("first");
        let second = state.start_task(&"y".repeat(1000));
        let hb = state.heartbeat_body("w", &Window::default());
        assert_eq!(hb["active_tasks"], 2);
        assert_eq!(
            hb["current_task"].as_str().unwrap().chars().count(),
            MAX_REPORTED_TEXT + 1
        );
        drop(second);
        let hb = state.heartbeat_body("w", &Window::default());
        assert_eq!(
            (hb["active_tasks"].clone(), hb["current_task"].clone()),
            (json!(1), json!("first"))
        );
        drop(first);
        let hb = state.heartbeat_body("w", &Window::default());
        assert_eq!(
            (hb["active_tasks"].clone(), hb["current_task"].clone()),
            (json!(0), Value::Null)
        );
    }

    // ----- HTTP client tests -----------------------------------------------------------------

    /// Serves one canned response per connection, after reading the request head. Returns the
    /// base URL and a channel carrying each request head.
    async fn canned_server(
        response: Vec<u8>,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let response = response.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while find(&buf, b"\r\n\r\n").is_none() {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                    let _ = sock.write_all(&response).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), rx)
    }

    fn small_limits() -> HttpLimits {
        HttpLimits {
            timeout: Duration::from_secs(5),
            max_body: 1024,
        }
    }

    #[tokio::test]
    async fn client_sends_a_proper_request_and_reads_content_length() {
        let (url, mut heads) = canned_server(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}trailing-garbage".to_vec(),
        )
        .await;
        let resp = post_json(
            &format!("{url}/registry/register"),
            Some("s3cret"),
            &json!({"a": 1}),
            small_limits(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 201);
        assert!(resp.is_success());
        assert_eq!(resp.json().unwrap(), json!({"ok": true}));
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with("POST /registry/register HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nAuthorization: Bearer s3cret\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 7\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: application/json\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn client_reads_chunked_and_close_delimited_bodies() {
        let (url, _heads) = canned_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec(),
        )
        .await;
        let resp = http_request("GET", &url, None, None, small_limits())
            .await
            .unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, &b"hello, world"[..])
        );

        let (url, _heads) =
            canned_server(b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy".to_vec()).await;
        let resp = http_request("GET", &url, None, None, small_limits())
            .await
            .unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (503, &b"busy"[..]));
        assert!(!resp.is_success());
    }

    #[tokio::test]
    async fn client_rejects_bodies_over_the_cap() {
        let big = vec![b'x'; 4096];
        // Declared by Content-Length.
        let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n".to_vec();
        response.extend_from_slice(&big);
        let (url, _heads) = canned_server(response).await;
        let err = http_request("GET", &url, None, None, small_limits())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { limit: 1024 }), "{err}");

        // Read until close.
        let mut response = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        response.extend_from_slice(&big);
        let (url, _heads) = canned_server(response).await;
        let err = http_request("GET", &url, None, None, small_limits())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { .. }), "{err}");

        // Chunked.
        let mut response =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
        response.extend_from_slice(&big);
        response.extend_from_slice(b"\r\n0\r\n\r\n");
        let (url, _heads) = canned_server(response).await;
        let err = http_request("GET", &url, None, None, small_limits())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { .. }), "{err}");

        // The real default cap (1 MiB) over a real axum server.
        let app = Router::new().route(
            "/big",
            post(|| async { vec![b'z'; MAX_RESPONSE_BYTES + 1] }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let err = post_json(
            &format!("http://{addr}/big"),
            None,
            &json!({}),
            HttpLimits::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::TooLarge {
                    limit: MAX_RESPONSE_BYTES
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn client_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock); // accept, never answer
            }
        });
        let limits = HttpLimits {
            timeout: Duration::from_millis(300),
            max_body: 1024,
        };
        let started = Instant::now();
        let err = post_json(&format!("http://{addr}/"), None, &json!({}), limits)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn client_reports_malformed_and_refused() {
        let (url, _heads) = canned_server(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()).await;
        let err = http_request("GET", &url, None, None, small_limits())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Malformed(_)), "{err}");

        let (url, _heads) =
            canned_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()).await;
        let err = http_request("GET", &url, None, None, small_limits())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Malformed(_)), "{err}");

        let port = free_port();
        let err = http_request(
            "GET",
            &format!("http://127.0.0.1:{port}/"),
            None,
            None,
            small_limits(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");

        let err = http_request(
            "GET",
            "http://127.0.0.1:1/",
            Some("a\r\nb"),
            None,
            small_limits(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HttpError::InvalidRequest(_)), "{err}");
    }
}
