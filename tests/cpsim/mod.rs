//! A control-plane simulator: the API `backends::controlplane` calls (ADR 0035; plus the admin list
//! route the reaper uses) on 127.0.0.1, with the behaviour of the real service where the operator
//! can tell the difference:
//!
//! - credentials: provision routes want `Bearer <shared secret>`, admin routes
//!   `Bearer <admin token>` (the shared secret when no admin token is set); anything else is 401;
//! - instance ids look like EC2's (`i-` + 17 hex digits); a malformed one is 400
//!   `InvalidInstanceID.Malformed`, an unknown one (or one of another workspace) 404;
//! - instances go `pending` → `running` after the start delay; terminated ones stay listed in
//!   status answers as `terminated`, as EC2 keeps them visible for a while;
//! - every instance gets its own loopback "private IP" (127.B.x.y) and, when running, a real
//!   in-process echo agent (`molecule::agent`) that registers and heartbeats with the platform
//!   URL it was given — behind a "tunnel" listener on `<private ip>:<agent port>` that answers
//!   502 when the agent is dead (the shape of a tunnel whose origin is gone);
//! - injectable faults per route: an error status (with a body, optionally echoing the
//!   Authorization header), a delay (the work is done, the answer is late), malformed JSON
//!   (the work is done, the answer is garbage); instances can be killed or made to answer 502
//!   while alive.
//!
//! Tests use it in-process ([`Sim::start`]); `cargo run --example cpsim -- --help` runs it by
//! hand, with the same controls over HTTP under `/_sim/*`.
// Not every user of this module uses every helper; handler helpers return early answers as
// `Err(Response)`, like axum extractors do.
#![allow(dead_code, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub shared_secret: String,
    /// `None`: admin routes accept the shared secret.
    pub admin_token: Option<String>,
    /// pending → running after this long.
    pub start_delay: Duration,
    /// Port of the agent on each instance's private IP (0: pick a free one).
    pub agent_port: u16,
    /// Run a real echo agent on every running instance.
    pub run_agents: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared_secret: "sim-shared-secret".into(),
            admin_token: Some("sim-admin-token".into()),
            start_delay: Duration::from_millis(300),
            agent_port: 0,
            run_agents: true,
        }
    }
}

/// One injected fault. It applies to requests of `route` (`provision`, `stop`, `status`,
/// `console`, `list` or `*`), `times` times (unlimited when `None`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Fault {
    pub route: String,
    /// Answer with this status instead of doing the work.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body: Option<String>,
    /// Put the request's Authorization header into the error body (a leaky upstream).
    #[serde(default)]
    pub echo_auth: bool,
    /// Do the work, then wait this long before answering.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Do the work, then answer with truncated JSON.
    #[serde(default)]
    pub malformed: bool,
    #[serde(default)]
    pub times: Option<u32>,
}

/// A request the simulator saw.
#[derive(Clone, Debug, Serialize)]
pub struct Seen {
    pub route: &'static str,
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

/// What a test can see of an instance.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub workspace_id: String,
    pub org_id: String,
    pub installation: String,
    pub attempt: String,
    pub namespace: String,
    pub name: String,
    pub runtime: String,
    pub state: String,
    pub private_ip: String,
    pub env_names: Vec<String>,
}

struct AgentRun {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

struct Instance {
    info: InstanceInfo,
    ip: Ipv4Addr,
    files: Vec<(String, u32, Vec<u8>)>,
    console: String,
    agent: Option<AgentRun>,
    tunnel: Option<tokio::task::JoinHandle<()>>,
    unhealthy: bool,
    created: Instant,
}

#[derive(Default)]
struct SimState {
    instances: BTreeMap<String, Instance>,
    faults: Vec<Fault>,
    seen: Vec<Seen>,
    next: u64,
}

struct Inner {
    cfg: SimConfig,
    agent_port: u16,
    octet: u8,
    state: Mutex<SimState>,
    rt: tokio::runtime::Handle,
    /// What the tunnels forward with.
    http: molecule::net::http::Client,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulator; stops (and kills its agents) when dropped.
pub struct Sim {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Sim {
    /// Starts the simulator on its own runtime (so sync tests can drive it).
    pub fn start(cfg: SimConfig) -> Sim {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("simulator runtime");
        let agent_port = if cfg.agent_port == 0 {
            free_port()
        } else {
            cfg.agent_port
        };
        let octet = 16 + (rand::random::<u8>() % 230);
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            agent_port,
            octet,
            state: Mutex::default(),
            rt: rt.handle().clone(),
            http: molecule::net::http::Client::new(molecule::net::http::Timeouts {
                dial: Duration::from_secs(2),
                tls: Duration::from_secs(2),
                response_header: Duration::from_secs(60),
                body: Duration::from_secs(60),
            }),
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(cfg.listen))
            .expect("bind the simulator");
        let addr = listener.local_addr().expect("simulator address");
        let app = router(inner.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sim {
            addr,
            inner,
            rt: Some(rt),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn agent_port(&self) -> u16 {
        self.inner.agent_port
    }

    pub fn shared_secret(&self) -> &str {
        &self.inner.cfg.shared_secret
    }

    pub fn admin_token(&self) -> Option<&str> {
        self.inner.cfg.admin_token.as_deref()
    }

    pub fn add_fault(&self, f: Fault) {
        self.inner.lock().faults.push(f);
    }

    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.inner.lock().seen.clone()
    }

    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.inner
            .lock()
            .instances
            .values()
            .map(|i| i.info.clone())
            .collect()
    }

    /// Instances that are not terminated.
    pub fn live(&self) -> Vec<InstanceInfo> {
        self.instances()
            .into_iter()
            .filter(|i| i.state != "terminated")
            .collect()
    }

    /// The instance dies: its agent stops, its state becomes `stopped`, its tunnel answers 502.
    pub fn kill(&self, id: &str) -> bool {
        kill(&self.inner, id)
    }

    /// The tunnel answers 502 while the agent keeps running (or not, with `false`).
    pub fn set_unhealthy(&self, id: &str, unhealthy: bool) -> bool {
        match self.inner.lock().instances.get_mut(id) {
            Some(i) => {
                i.unhealthy = unhealthy;
                true
            }
            None => false,
        }
    }

    /// The decoded files a provision sent (path → content).
    pub fn files_of(&self, id: &str) -> BTreeMap<String, Vec<u8>> {
        self.inner
            .lock()
            .instances
            .get(id)
            .map(|i| {
                i.files
                    .iter()
                    .map(|(p, _, c)| (p.clone(), c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Blocks until Ctrl-C (for the by-hand runner).
    pub fn wait_for_ctrl_c(&self) {
        if let Some(rt) = &self.rt {
            let _ = rt.block_on(tokio::signal::ctrl_c());
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let ids: Vec<String> = self.inner.lock().instances.keys().cloned().collect();
        for id in ids {
            terminate(&self.inner, &id);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/cp/workspaces/provision", post(provision))
        .route("/cp/workspaces/{id}", axum::routing::delete(stop))
        .route("/cp/workspaces/{id}/status", get(status))
        .route("/cp/admin/workspaces/{id}/console", get(console))
        .route("/cp/admin/workspaces", get(list))
        .route("/_sim/faults", post(sim_add_fault).delete(sim_clear_faults))
        .route("/_sim/instances", get(sim_instances))
        .route("/_sim/instances/{id}/die", post(sim_die))
        .route("/_sim/instances/{id}/unhealthy", post(sim_unhealthy))
        .route("/_sim/instances/{id}/healthy", post(sim_healthy))
        .route("/_sim/requests", get(sim_requests))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(inner)
}

fn err(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

/// Records the request, checks the credential of its route class, and takes the first
/// matching fault.
fn admit(
    inner: &Inner,
    route: &'static str,
    method: &str,
    path: String,
    headers: &HeaderMap,
) -> Result<Option<Fault>, Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let admin = matches!(route, "console" | "list");
    let want = if admin {
        inner
            .cfg
            .admin_token
            .clone()
            .unwrap_or_else(|| inner.cfg.shared_secret.clone())
    } else {
        inner.cfg.shared_secret.clone()
    };
    let mut st = inner.lock();
    st.seen.push(Seen {
        route,
        method: method.to_string(),
        path,
        authorization: auth.clone(),
    });
    if auth.as_deref() != Some(format!("Bearer {want}").as_str()) {
        return Err(err(StatusCode::UNAUTHORIZED, "unauthorized"));
    }
    let pos = st
        .faults
        .iter()
        .position(|f| f.route == route || f.route == "*");
    let Some(pos) = pos else {
        return Ok(None);
    };
    let fault = st.faults[pos].clone();
    if let Some(t) = st.faults[pos].times.as_mut() {
        *t = t.saturating_sub(1);
        if *t == 0 {
            st.faults.remove(pos);
        }
    }
    Ok(Some(fault))
}

/// An error answer for a status fault, if the fault has one.
fn fault_answer(f: &Option<Fault>, headers: &HeaderMap) -> Option<Response> {
    let f = f.as_ref()?;
    let code = f.status?;
    let mut body = f.body.clone().unwrap_or_else(|| "simulated failure".into());
    if f.echo_auth
        && let Some(a) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
    {
        body.push_str(&format!(" (request headers: Authorization: {a})"));
    }
    Some(
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    )
}

/// The answer after the work: delayed and/or garbled per the fault.
async fn finish(f: &Option<Fault>, code: StatusCode, body: Value) -> Response {
    if let Some(ms) = f.as_ref().and_then(|f| f.delay_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if f.as_ref().is_some_and(|f| f.malformed) {
        let text = body.to_string();
        let cut = &text[..text.len() / 2];
        return (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            cut.to_string(),
        )
            .into_response();
    }
    (code, axum::Json(body)).into_response()
}

fn valid_instance_id(id: &str) -> bool {
    id.len() == 19
        && id.starts_with("i-")
        && id[2..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[derive(Deserialize)]
struct ProvisionFile {
    path: String,
    mode: u32,
    content_base64: String,
}

#[derive(Deserialize)]
struct ProvisionBody {
    workspace_id: String,
    org_id: String,
    installation: String,
    #[serde(default)]
    attempt: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    runtime: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<ProvisionFile>,
}

async fn provision(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = match admit(
        &inner,
        "provision",
        "POST",
        "/cp/workspaces/provision".into(),
        &headers,
    ) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(delay) = fault.as_ref().and_then(|f| f.status.and(f.delay_ms)) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(r) = fault_answer(&fault, &headers) {
        return r;
    }
    let Ok(b) = serde_json::from_slice::<ProvisionBody>(&body) else {
        return err(StatusCode::BAD_REQUEST, "invalid provision request");
    };
    if b.workspace_id.is_empty() || b.org_id.is_empty() || b.installation.is_empty() {
        return err(
            StatusCode::BAD_REQUEST,
            "workspace_id, org_id and installation are required",
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut files = vec![];
    for f in &b.files {
        if f.path.is_empty() || f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return err(StatusCode::BAD_REQUEST, "invalid file path");
        }
        let Ok(content) = b64.decode(&f.content_base64) else {
            return err(StatusCode::BAD_REQUEST, "invalid base64 file content");
        };
        files.push((f.path.clone(), f.mode, content));
    }
    let (id, ip) = {
        let mut st = inner.lock();
        st.next += 1;
        let n = st.next;
        let id = format!("i-{:017x}", 0x0a5e_0000_0000_0000u64 + n * 7919);
        let ip = Ipv4Addr::new(127, inner.octet, (n / 250) as u8, (n % 250) as u8 + 1);
        st.instances.insert(
            id.clone(),
            Instance {
                info: InstanceInfo {
                    instance_id: id.clone(),
                    workspace_id: b.workspace_id.clone(),
                    org_id: b.org_id.clone(),
                    installation: b.installation.clone(),
                    attempt: b.attempt.clone(),
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                    runtime: b.runtime.clone(),
                    state: "pending".into(),
                    private_ip: ip.to_string(),
                    env_names: b.env.keys().cloned().collect(),
                },
                ip,
                files,
                console: format!(
                    "[    0.000000] Linux version 6.1.0-sim (molecule control-plane simulator)\ncloud-init: provisioning workspace {} ({})\n",
                    b.workspace_id, b.runtime
                ),
                agent: None,
                tunnel: None,
                unhealthy: false,
                created: Instant::now(),
            },
        );
        (id, ip)
    };
    let tunnel = inner.rt.spawn(tunnel(inner.clone(), id.clone(), ip));
    if let Some(i) = inner.lock().instances.get_mut(&id) {
        i.tunnel = Some(tunnel);
    }
    inner.rt.spawn(boot(inner.clone(), id.clone()));
    finish(
        &fault,
        StatusCode::CREATED,
        json!({"instance_id": id, "private_ip": ip.to_string(), "state": "pending"}),
    )
    .await
}

/// pending → running after the start delay, then the agent starts.
async fn boot(inner: Arc<Inner>, id: String) {
    tokio::time::sleep(inner.cfg.start_delay).await;
    let files = {
        let mut st = inner.lock();
        let Some(i) = st.instances.get_mut(&id) else {
            return;
        };
        if i.info.state != "pending" {
            return;
        }
        i.info.state = "running".into();
        i.console.push_str("cloud-init: instance running\n");
        (i.files.clone(), i.ip)
    };
    if inner.cfg.run_agents {
        start_agent(&inner, &id, files.0, files.1).await;
    }
}

async fn start_agent(
    inner: &Arc<Inner>,
    id: &str,
    files: Vec<(String, u32, Vec<u8>)>,
    ip: Ipv4Addr,
) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(_) => return,
    };
    for (path, _mode, content) in &files {
        let p = dir.path().join(path);
        if let Some(parent) = p.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let mut content = content.clone();
        if path == "config.yaml" {
            // The instance knows its own address: the agent registers the tunnel's URL.
            let mut doc: serde_json::Value =
                molecule::yaml::from_slice(&content).unwrap_or(serde_json::Value::Null);
            if let serde_json::Value::Object(m) = &mut doc {
                m.insert(
                    "agent_url".into(),
                    format!("http://{ip}:{}", inner.agent_port).into(),
                );
            }
            content = molecule::yaml::to_string(&doc)
                .unwrap_or_default()
                .into_bytes();
        }
        let _ = std::fs::write(&p, content);
    }
    // The agent listens on its own port of the instance's IP; the tunnel forwards to it.
    let port = std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    let addr = SocketAddr::new(IpAddr::V4(ip), port);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let opts = molecule::agent::AgentOptions {
        config_path: dir.path().join("config.yaml"),
        token_path: dir.path().join(".auth_token"),
        listen: addr,
        shutdown: Some(rx),
    };
    {
        let mut st = inner.lock();
        let Some(i) = st.instances.get_mut(id) else {
            return;
        };
        if i.info.state != "running" {
            return;
        }
        i.console.push_str("molecule agent starting\n");
        i.agent = Some(AgentRun {
            stop: Some(tx),
            addr,
            _dir: dir,
        });
    }
    let inner2 = inner.clone();
    let id2 = id.to_string();
    inner.rt.spawn(async move {
        if let Err(e) = molecule::agent::run(opts).await {
            let mut st = inner2.lock();
            if let Some(i) = st.instances.get_mut(&id2) {
                i.console.push_str(&format!("RUNTIME CRASHED: {e:#}\n"));
            }
        }
    });
}

/// The instance's front door on `<private ip>:<agent port>`: forwards to the agent while it
/// runs and is healthy; otherwise 502, like a tunnel whose origin is gone.
async fn tunnel(inner: Arc<Inner>, id: String, ip: Ipv4Addr) {
    let Ok(listener) = tokio::net::TcpListener::bind((ip, inner.agent_port)).await else {
        let mut st = inner.lock();
        if let Some(i) = st.instances.get_mut(&id) {
            i.console
                .push_str("network: could not bind the instance address\n");
        }
        return;
    };
    let client = inner.http.clone();
    let app = Router::new()
        .fallback(
            move |State(inner): State<Arc<Inner>>,
                  method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: Bytes| {
                let id = id.clone();
                let client = client.clone();
                async move {
                    let target = {
                        let st = inner.lock();
                        st.instances.get(&id).and_then(|i| {
                            (i.info.state == "running" && !i.unhealthy)
                                .then(|| i.agent.as_ref().map(|a| a.addr))
                                .flatten()
                        })
                    };
                    let Some(addr) = target else {
                        return (StatusCode::BAD_GATEWAY, "error code: 502").into_response();
                    };
                    let ct = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/json")
                        .to_string();
                    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    match client
                        .send(
                            method,
                            &format!("http://{addr}{path}"),
                            &[],
                            Some((body, ct.as_str())),
                            8 << 20,
                        )
                        .await
                    {
                        Ok(r) => {
                            let content_type = r.content_type();
                            let mut out = Response::new(Body::from(r.body));
                            *out.status_mut() =
                                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
                            if let Some(ct) = content_type
                                && let Ok(v) = ct.parse()
                            {
                                out.headers_mut().insert(header::CONTENT_TYPE, v);
                            }
                            out
                        }
                        Err(_) => (StatusCode::BAD_GATEWAY, "error code: 502").into_response(),
                    }
                }
            },
        )
        .with_state(inner);
    let _ = axum::serve(listener, app).await;
}

fn stop_agent(i: &mut Instance) {
    if let Some(mut a) = i.agent.take()
        && let Some(tx) = a.stop.take()
    {
        let _ = tx.send(());
    }
}

fn kill(inner: &Inner, id: &str) -> bool {
    let mut st = inner.lock();
    let Some(i) = st.instances.get_mut(id) else {
        return false;
    };
    if i.info.state == "terminated" {
        return false;
    }
    stop_agent(i);
    i.info.state = "stopped".into();
    i.console
        .push_str("RUNTIME CRASHED: the instance stopped unexpectedly\n");
    true
}

fn terminate(inner: &Inner, id: &str) {
    let mut st = inner.lock();
    if let Some(i) = st.instances.get_mut(id) {
        stop_agent(i);
        if let Some(t) = i.tunnel.take() {
            t.abort();
        }
        i.info.state = "terminated".into();
        i.console.push_str("instance terminated\n");
    }
}

#[derive(Deserialize)]
struct InstanceQuery {
    #[serde(default)]
    instance_id: Option<String>,
}

/// Looks up `instance_id` for workspace `ws`: 400 when missing or malformed, 404 when unknown
/// or another workspace's.
fn lookup(inner: &Inner, ws: &str, q: &InstanceQuery) -> Result<String, Response> {
    let Some(id) = q.instance_id.as_deref().filter(|i| !i.is_empty()) else {
        return Err(err(StatusCode::BAD_REQUEST, "instance_id is required"));
    };
    if !valid_instance_id(id) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidInstanceID.Malformed: the instance id is malformed",
        ));
    }
    let st = inner.lock();
    match st.instances.get(id) {
        Some(i) if i.info.workspace_id == ws => Ok(id.to_string()),
        _ => Err(err(StatusCode::NOT_FOUND, "InvalidInstanceID.NotFound")),
    }
}

async fn stop(
    State(inner): State<Arc<Inner>>,
    Path(ws): Path<String>,
    Query(q): Query<InstanceQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!(
        "/cp/workspaces/{ws}?instance_id={}",
        q.instance_id.as_deref().unwrap_or("")
    );
    let fault = match admit(&inner, "stop", "DELETE", path, &headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(r) = fault_answer(&fault, &headers) {
        return r;
    }
    let id = match lookup(&inner, &ws, &q) {
        Ok(id) => id,
        Err(r) => return r,
    };
    terminate(&inner, &id);
    finish(
        &fault,
        StatusCode::OK,
        json!({"instance_id": id, "state": "terminated"}),
    )
    .await
}

async fn status(
    State(inner): State<Arc<Inner>>,
    Path(ws): Path<String>,
    Query(q): Query<InstanceQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!(
        "/cp/workspaces/{ws}/status?instance_id={}",
        q.instance_id.as_deref().unwrap_or("")
    );
    let fault = match admit(&inner, "status", "GET", path, &headers) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(r) = fault_answer(&fault, &headers) {
        return r;
    }
    let id = match lookup(&inner, &ws, &q) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (state, ip) = {
        let st = inner.lock();
        let i = &st.instances[&id];
        (i.info.state.clone(), i.info.private_ip.clone())
    };
    finish(
        &fault,
        StatusCode::OK,
        json!({"instance_id": id, "state": state, "private_ip": ip}),
    )
    .await
}

async fn console(
    State(inner): State<Arc<Inner>>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Response {
    let fault = match admit(
        &inner,
        "console",
        "GET",
        format!("/cp/admin/workspaces/{ws}/console"),
        &headers,
    ) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(r) = fault_answer(&fault, &headers) {
        return r;
    }
    let output = {
        let st = inner.lock();
        let mut of_ws: Vec<&Instance> = st
            .instances
            .values()
            .filter(|i| i.info.workspace_id == ws)
            .collect();
        of_ws.sort_by_key(|i| i.created);
        of_ws.last().map(|i| i.console.clone())
    };
    match output {
        Some(output) => finish(&fault, StatusCode::OK, json!({"output": output})).await,
        None => err(StatusCode::NOT_FOUND, "no instance for this workspace"),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    org_id: String,
    #[serde(default)]
    installation: Option<String>,
}

async fn list(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let fault = match admit(
        &inner,
        "list",
        "GET",
        format!("/cp/admin/workspaces?org_id={}", q.org_id),
        &headers,
    ) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(r) = fault_answer(&fault, &headers) {
        return r;
    }
    if q.org_id.is_empty() {
        return err(StatusCode::BAD_REQUEST, "org_id is required");
    }
    let instances: Vec<Value> = inner
        .lock()
        .instances
        .values()
        .filter(|i| i.info.org_id == q.org_id && i.info.state != "terminated")
        .filter(|i| {
            q.installation
                .as_deref()
                .is_none_or(|inst| i.info.installation == inst)
        })
        .map(|i| {
            json!({
                "instance_id": i.info.instance_id,
                "workspace_id": i.info.workspace_id,
                "state": i.info.state,
                "installation": i.info.installation,
                "attempt": i.info.attempt,
                "namespace": i.info.namespace,
                "name": i.info.name,
            })
        })
        .collect();
    finish(&fault, StatusCode::OK, json!({"instances": instances})).await
}

async fn sim_add_fault(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(f) => {
            inner.lock().faults.push(f);
            (StatusCode::OK, axum::Json(json!({"ok": true}))).into_response()
        }
        Err(e) => err(StatusCode::BAD_REQUEST, &format!("invalid fault: {e}")),
    }
}

async fn sim_clear_faults(State(inner): State<Arc<Inner>>) -> Response {
    inner.lock().faults.clear();
    (StatusCode::OK, axum::Json(json!({"ok": true}))).into_response()
}

async fn sim_instances(State(inner): State<Arc<Inner>>) -> Response {
    let v: Vec<InstanceInfo> = inner
        .lock()
        .instances
        .values()
        .map(|i| i.info.clone())
        .collect();
    axum::Json(v).into_response()
}

async fn sim_requests(State(inner): State<Arc<Inner>>) -> Response {
    let v = inner.lock().seen.clone();
    axum::Json(v).into_response()
}

async fn sim_die(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    if kill(&inner, &id) {
        (StatusCode::OK, axum::Json(json!({"state": "stopped"}))).into_response()
    } else {
        err(StatusCode::NOT_FOUND, "no such live instance")
    }
}

async fn sim_unhealthy(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    set_health(&inner, &id, true)
}

async fn sim_healthy(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    set_health(&inner, &id, false)
}

fn set_health(inner: &Inner, id: &str, unhealthy: bool) -> Response {
    match inner.lock().instances.get_mut(id) {
        Some(i) => {
            i.unhealthy = unhealthy;
            (StatusCode::OK, axum::Json(json!({"unhealthy": unhealthy}))).into_response()
        }
        None => err(StatusCode::NOT_FOUND, "no such instance"),
    }
}
