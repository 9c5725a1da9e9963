//! The EC2 control-plane backend (ADR 0035): workspaces with `backend: controlPlane`
//! run on instances that the control-plane service provisions. The routes are the original's:
//!
//! | call | route | credential |
//! |---|---|---|
//! | start | `POST /cp/workspaces/provision` → 201 `{instance_id, private_ip, state}` | shared secret |
//! | stop | `DELETE /cp/workspaces/:id?instance_id=` | shared secret |
//! | status | `GET /cp/workspaces/:id/status?instance_id=` | shared secret |
//! | console | `GET /cp/admin/workspaces/:id/console` | admin token |
//! | list (reaper) | `GET /cp/admin/workspaces?org_id=&installation=` | admin token |
//!
//! Every call also carries the tenant token, when configured, as `X-Molecule-Admin-Token`.
//!
//! `:id` is the workspace uid; `instance_id` is always the id the provision call returned, kept
//! in `status.instanceId` and handed back through [`WorkspaceRef::instance_id`] — never the
//! workspace id. With no instance, stop is a no-op and status is "not running". The
//! admin token falls back to the shared secret. Response bodies are read up to 64 KiB
//! (console 256 KiB); errors carry the status and at most 512 bytes of body with credentials
//! redacted, for the operator log only.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hyper::http::Method;
use serde::{Deserialize, Serialize};

use super::{
    BackendError, ConfigFile, ExecOutput, MAX_CONSOLE_BYTES, Managed, ManagedKind, Presence,
    StartSpec, Started, WorkspaceBackend, WorkspaceRef,
};
use crate::net::http::{Client, Error as HttpError, Response, Timeouts, first_json};

/// Largest response body read from the control plane.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest instance list read by the reaper.
pub const MAX_LIST_BODY: usize = 4 * 1024 * 1024;
/// Most bytes of an error body kept in an error.
pub const MAX_ERROR_EXCERPT: usize = 512;
/// How long credentials read from a Secret are used before reading it again.
pub const CREDENTIALS_TTL: Duration = Duration::from_secs(30);
/// Key of the shared secret in the credentials Secret.
pub const KEY_SHARED_SECRET: &str = "sharedSecret";
/// Key of the admin API token in the credentials Secret (optional).
pub const KEY_ADMIN_TOKEN: &str = "adminToken";
/// Key of the tenant token in the credentials Secret (optional).
pub const KEY_TENANT_TOKEN: &str = "tenantToken";
/// Header carrying the tenant token on every control-plane call.
pub const TENANT_HEADER: &str = "x-molecule-admin-token";

/// The credentials. `Debug` never prints them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Bearer of the provision routes (`/cp/workspaces/*`).
    pub shared_secret: String,
    /// Bearer of the admin routes (`/cp/admin/*`); the shared secret when unset.
    pub admin_token: Option<String>,
    /// The per-tenant token the control plane issued to this installation: it says which
    /// tenant calls, so a leaked shared secret cannot provision for another tenant. Sent as
    /// `X-Molecule-Admin-Token` on every route, provision and admin alike (ADR 0049).
    pub tenant_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("shared_secret", &"<redacted>")
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "tenant_token",
                &self.tenant_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// The bearer for a route class.
    pub fn bearer(&self, class: RouteClass) -> &str {
        match class {
            RouteClass::Provision => &self.shared_secret,
            RouteClass::Admin => self
                .admin_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .unwrap_or(&self.shared_secret),
        }
    }

    /// The tenant token, when set and not empty.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant_token.as_deref().filter(|t| !t.is_empty())
    }

    fn secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.shared_secret.as_str())
            .chain(self.admin_token.as_deref())
            .chain(self.tenant_token.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// Where the credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// Fixed values (from the environment).
    Static(Credentials),
    /// A Secret with the keys `sharedSecret` and (optionally) `adminToken`; read again every
    /// [`CREDENTIALS_TTL`] and after a 401, so a rotation needs no restart.
    Secret { namespace: String, name: String },
}

/// The two classes of control-plane routes, each with its own credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    /// `/cp/workspaces/*`: the shared secret.
    Provision,
    /// `/cp/admin/*`: the admin API token.
    Admin,
}

/// Settings of the control-plane backend.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// Base URL, e.g. `https://cp.example.com` (no trailing slash).
    pub base_url: String,
    /// The org this operator provisions for; every instance is tagged with it.
    pub org_id: String,
    pub credentials: CredentialSource,
    /// Port of the agent on an instance; the workspace URL is `http://<private_ip>:<port>`.
    pub agent_port: u16,
    pub timeouts: Timeouts,
    /// Extra PEM CA certificates trusted for the control plane (besides the system roots).
    pub ca_pem: Option<Vec<u8>>,
}

impl ControlPlaneConfig {
    /// Checks the URL and org id; returns the config with the URL normalised.
    pub fn validated(mut self) -> Result<Self, String> {
        let url = self.base_url.trim().trim_end_matches('/').to_string();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or("the control-plane URL must start with http:// or https://")?;
        if rest.is_empty() || rest.contains('@') || rest.contains(['?', '#']) {
            return Err("the control-plane URL must be scheme://host[:port][/path]".into());
        }
        if !valid_label(&self.org_id, 128) {
            return Err(
                "the control-plane org id must be 1-128 characters of [A-Za-z0-9._:-]".into(),
            );
        }
        if let CredentialSource::Static(c) = &self.credentials
            && c.shared_secret.trim().is_empty()
        {
            return Err("the control-plane shared secret is empty".into());
        }
        self.base_url = url;
        Ok(self)
    }

    /// Whether credentials would cross the network in clear text (http to a non-loopback host).
    pub fn is_cleartext_remote(&self) -> bool {
        let Some(rest) = self.base_url.strip_prefix("http://") else {
            return false;
        };
        let host = rest.split(['/', ':']).next().unwrap_or("");
        !(host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    }
}

/// `[A-Za-z0-9][A-Za-z0-9._:-]*`, at most `max` bytes.
fn valid_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Whether `id` may be sent to the control plane as the instance id of workspace `uid`: a
/// well-formed id that is not the workspace id itself.
pub fn usable_instance_id(id: Option<&str>, uid: &str) -> Option<String> {
    let id = id?.trim();
    if id.is_empty() || id.eq_ignore_ascii_case(uid) || !valid_label(id, 128) {
        return None;
    }
    Some(id.to_string())
}

pub use super::attempt_of;

/// At most [`MAX_ERROR_EXCERPT`] bytes of `body`, with the credentials and any bearer token
/// replaced by `[redacted]` (before truncating, so a secret on the boundary cannot leak in
/// part) and control characters flattened.
pub fn excerpt(body: &[u8], creds: Option<&Credentials>) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if let Some(c) = creds {
        for s in c.secrets() {
            text = text.replace(s, "[redacted]");
        }
    }
    static BEARER: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = BEARER.get_or_init(|| {
        regex::Regex::new(r"(?i)(bearer|token|secret)([\s:=]+)[^\s,;]+").expect("static regex")
    });
    text = re.replace_all(&text, "$1$2[redacted]").into_owned();
    let mut out = String::new();
    for ch in text.chars() {
        if out.len() + ch.len_utf8() > MAX_ERROR_EXCERPT {
            break;
        }
        out.push(if ch.is_control() { ' ' } else { ch });
    }
    out
}

/// Maps a control-plane instance state to a [`Presence`].
pub fn presence_of_state(
    instance_id: &str,
    state: &str,
    host_url: Option<String>,
) -> Result<Presence, BackendError> {
    match state {
        "pending" | "running" => Ok(Presence::Running {
            attempt: None,
            container_id: instance_id.to_string(),
            host_url,
            started_at: None,
            waiting: None,
        }),
        "stopping" | "stopped" => Ok(Presence::Stopped {
            container_id: instance_id.to_string(),
            exit_code: None,
            oom_killed: false,
            reason: None,
        }),
        "shutting-down" | "terminated" => Ok(Presence::Absent),
        other => Err(BackendError::Transient(format!(
            "control plane status: unknown instance state {:?}",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// Checks a private IP the control plane handed out: never link-local (cloud metadata),
/// unspecified, multicast or broadcast — the A2A proxy will call it.
pub fn usable_private_ip(ip: &str) -> Option<IpAddr> {
    let ip: IpAddr = ip.trim().parse().ok()?;
    let bad = match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified() || v6.is_multicast()
        }
    };
    (!bad).then_some(ip)
}

fn agent_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Serialize)]
struct ProvisionFile<'a> {
    path: &'a str,
    mode: u32,
    content_base64: String,
}

#[derive(Serialize)]
struct ProvisionRequest<'a> {
    workspace_id: &'a str,
    org_id: &'a str,
    installation: &'a str,
    attempt: String,
    namespace: &'a str,
    name: &'a str,
    runtime: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    tier: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mib: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<f64>,
    agent_port: u16,
    env: std::collections::BTreeMap<&'a str, &'a str>,
    files: Vec<ProvisionFile<'a>>,
}

#[derive(Deserialize)]
struct ProvisionResponse {
    instance_id: String,
    #[serde(default)]
    private_ip: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Deserialize)]
struct StatusResponse {
    state: String,
    #[serde(default)]
    private_ip: Option<String>,
}

#[derive(Deserialize)]
struct ListResponse {
    #[serde(default)]
    instances: Vec<ListedInstance>,
}

#[derive(Deserialize)]
struct ListedInstance {
    instance_id: String,
    workspace_id: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    installation: String,
    #[serde(default)]
    attempt: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct ConsoleResponse {
    #[serde(default)]
    output: String,
}

/// [`super::WorkspaceBackend`] over the control-plane HTTP API.
pub struct ControlPlaneBackend {
    cfg: ControlPlaneConfig,
    installation: String,
    http: Client,
    kube: Option<kube::Client>,
    cached: tokio::sync::Mutex<Option<(Credentials, Instant)>>,
    /// The instance list answered 404/405 once (warned once).
    list_unserved: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ControlPlaneBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneBackend")
            .field("base_url", &self.cfg.base_url)
            .field("org_id", &self.cfg.org_id)
            .field("installation", &self.installation)
            .finish_non_exhaustive()
    }
}

impl ControlPlaneBackend {
    /// A backend for installation `installation` (ADR 0007). `kube` reads the credentials
    /// Secret; it may be `None` for static credentials.
    pub fn new(
        cfg: ControlPlaneConfig,
        installation: &str,
        kube: Option<kube::Client>,
    ) -> Result<Self, String> {
        let cfg = cfg.validated()?;
        if matches!(cfg.credentials, CredentialSource::Secret { .. }) && kube.is_none() {
            return Err("reading the control-plane credentials Secret needs an API client".into());
        }
        let tls = crate::net::http::tls_config(cfg.ca_pem.as_deref()).map_err(|e| e.to_string())?;
        Ok(ControlPlaneBackend {
            http: Client::with_tls(cfg.timeouts, tls),
            cfg,
            installation: installation.to_string(),
            kube,
            cached: tokio::sync::Mutex::new(None),
            list_unserved: Default::default(),
        })
    }

    pub fn config(&self) -> &ControlPlaneConfig {
        &self.cfg
    }

    /// The current credentials: static, or from the Secret (cached for [`CREDENTIALS_TTL`];
    /// `refresh` forces a read).
    async fn credentials(&self, refresh: bool) -> Result<Credentials, BackendError> {
        let (namespace, name) = match &self.cfg.credentials {
            CredentialSource::Static(c) => return Ok(c.clone()),
            CredentialSource::Secret { namespace, name } => (namespace, name),
        };
        let mut cached = self.cached.lock().await;
        if !refresh
            && let Some((c, at)) = cached.as_ref()
            && at.elapsed() < CREDENTIALS_TTL
        {
            return Ok(c.clone());
        }
        let Some(client) = self.kube.clone() else {
            return Err(BackendError::Config(
                "no API client to read the control-plane credentials".into(),
            ));
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client, namespace);
        let secret = api.get_opt(name).await.map_err(|e| {
            BackendError::Transient(format!(
                "reading the control-plane credentials Secret {namespace}/{name}: {e}"
            ))
        })?;
        let Some(secret) = secret else {
            return Err(BackendError::Config(format!(
                "the Secret {namespace}/{name} holding the control-plane credentials does not exist"
            )));
        };
        let data = secret.data.unwrap_or_default();
        let get = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(shared_secret) = get(KEY_SHARED_SECRET) else {
            return Err(BackendError::Config(format!(
                "the Secret {namespace}/{name} has no {KEY_SHARED_SECRET} key"
            )));
        };
        let creds = Credentials {
            shared_secret,
            admin_token: get(KEY_ADMIN_TOKEN),
            tenant_token: get(KEY_TENANT_TOKEN),
        };
        *cached = Some((creds.clone(), Instant::now()));
        Ok(creds)
    }

    /// One call; a 401 re-reads the credentials (they may have been rotated) and retries once.
    async fn call(
        &self,
        call: &'static str,
        class: RouteClass,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        cap: usize,
    ) -> Result<(Response, Credentials), BackendError> {
        let url = format!("{}{}", self.cfg.base_url, path);
        let mut refresh = false;
        loop {
            let creds = self.credentials(refresh).await?;
            let auth = format!("Bearer {}", creds.bearer(class));
            let mut headers = vec![
                ("authorization", auth.as_str()),
                ("accept", "application/json"),
                (
                    "user-agent",
                    concat!("molecule/", env!("CARGO_PKG_VERSION")),
                ),
            ];
            if let Some(t) = creds.tenant() {
                headers.push((TENANT_HEADER, t));
            }
            let started = Instant::now();
            let resp = self
                .http
                .send(
                    method.clone(),
                    &url,
                    &headers,
                    body.clone().map(|b| (b, "application/json")),
                    cap,
                )
                .await
                .map_err(|e| transport_error(call, &e))?;
            tracing::debug!(
                call,
                status = resp.status,
                ms = started.elapsed().as_millis() as u64,
                "control plane call"
            );
            if resp.status == 401
                && !refresh
                && matches!(self.cfg.credentials, CredentialSource::Secret { .. })
            {
                refresh = true;
                continue;
            }
            return Ok((resp, creds));
        }
    }

    fn workspace_path(uid: &str) -> Result<String, BackendError> {
        if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(BackendError::Permanent(
                "the workspace uid is not a UUID".into(),
            ));
        }
        Ok(enc(uid))
    }

    fn instance_of(ws: &WorkspaceRef) -> Option<String> {
        let id = usable_instance_id(ws.instance_id.as_deref(), &ws.uid);
        if id.is_none()
            && let Some(raw) = ws.instance_id.as_deref().filter(|s| !s.trim().is_empty())
        {
            tracing::warn!(workspace = %ws.name, len = raw.len(), "status.instanceId is not a usable instance id; treating the workspace as having no instance");
        }
        id
    }

    async fn terminate(&self, uid: &str, instance: &str) -> Result<(), BackendError> {
        let path = format!(
            "/cp/workspaces/{}?instance_id={}",
            Self::workspace_path(uid)?,
            enc(instance)
        );
        let (resp, creds) = self
            .call(
                "control plane stop",
                RouteClass::Provision,
                Method::DELETE,
                &path,
                None,
                MAX_BODY,
            )
            .await?;
        match resp.status {
            200..=299 => {
                tracing::info!(event = "provision.ec2_stopped", uid = %uid, instance = %instance, "instance terminated");
                Ok(())
            }
            404 => {
                tracing::info!(event = "provision.ec2_gone", uid = %uid, instance = %instance, "instance already gone");
                Ok(())
            }
            _ => Err(upstream("control plane stop", &resp, &creds)),
        }
    }
}

fn transport_error(call: &'static str, e: &HttpError) -> BackendError {
    BackendError::Transient(format!("{call}: {e}"))
}

fn upstream(call: &'static str, resp: &Response, creds: &Credentials) -> BackendError {
    BackendError::Upstream {
        call,
        status: resp.status,
        detail: excerpt(&resp.body, Some(creds)),
    }
}

#[async_trait::async_trait]
impl WorkspaceBackend for ControlPlaneBackend {
    /// Provisions a new instance (the controller removes the previous one first) and returns
    /// as soon as the control plane answers: the instance is usually still `pending`.
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        let ws = &spec.workspace;
        Self::workspace_path(&ws.uid)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let req = ProvisionRequest {
            workspace_id: &ws.uid,
            org_id: &self.cfg.org_id,
            installation: &self.installation,
            attempt: attempt_of(&spec.files),
            namespace: &ws.namespace,
            name: &ws.name,
            runtime: &spec.runtime,
            image: Some(spec.image.as_str()).filter(|i| !i.is_empty()),
            tier: spec.tier.number(),
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
            agent_port: self.cfg.agent_port,
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            files: spec
                .files
                .iter()
                .map(|f| ProvisionFile {
                    path: &f.path,
                    mode: f.mode,
                    content_base64: b64.encode(super::normalize_line_endings(&f.path, &f.content)),
                })
                .collect(),
        };
        let body = serde_json::to_vec(&req)
            .map_err(|e| BackendError::Permanent(format!("encoding the provision request: {e}")))?;
        let (resp, creds) = self
            .call(
                "control plane provision",
                RouteClass::Provision,
                Method::POST,
                "/cp/workspaces/provision",
                Some(Bytes::from(body)),
                MAX_BODY,
            )
            .await?;
        if !(200..=299).contains(&resp.status) {
            return Err(upstream("control plane provision", &resp, &creds));
        }
        // An instance may exist now whose id we cannot read: the reaper finds it by its attempt.
        let parsed: ProvisionResponse = first_json(&resp.body).map_err(|why| {
            BackendError::Transient(format!("control plane provision: {why} in the response"))
        })?;
        let Some(instance) = usable_instance_id(Some(&parsed.instance_id), &ws.uid) else {
            return Err(BackendError::Transient(
                "control plane provision: the response carries no usable instance_id".into(),
            ));
        };
        let ip = parsed.private_ip.as_deref().and_then(usable_private_ip);
        let Some(ip) = ip else {
            // Unusable: give the instance back rather than leak it.
            let _ = self.terminate(&ws.uid, &instance).await;
            return Err(BackendError::Transient(
                "control plane provision: the response carries no usable private_ip".into(),
            ));
        };
        tracing::info!(event = "provision.ec2_started", workspace = %ws.name, uid = %ws.uid, instance = %instance, state = parsed.state.as_deref().unwrap_or(""), "instance provisioned");
        Ok(Started {
            container_id: instance,
            host_url: agent_url(ip, self.cfg.agent_port),
            image_id: String::new(),
        })
    }

    /// Terminates the instance: a control-plane instance has no stopped-but-kept state here.
    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        match Self::instance_of(ws) {
            Some(id) => self.terminate(&ws.uid, &id).await,
            None => Ok(()),
        }
    }

    async fn remove(&self, ws: &WorkspaceRef, _remove_volume: bool) -> Result<(), BackendError> {
        self.stop(ws).await
    }

    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError> {
        let Some(id) = Self::instance_of(ws) else {
            return Ok(Presence::Absent);
        };
        let path = format!(
            "/cp/workspaces/{}/status?instance_id={}",
            Self::workspace_path(&ws.uid)?,
            enc(&id)
        );
        let (resp, creds) = self
            .call(
                "control plane status",
                RouteClass::Provision,
                Method::GET,
                &path,
                None,
                MAX_BODY,
            )
            .await?;
        match resp.status {
            200..=299 => {}
            404 => return Ok(Presence::Absent),
            _ => return Err(upstream("control plane status", &resp, &creds)),
        }
        let st: StatusResponse = first_json(&resp.body).map_err(|why| {
            BackendError::Transient(format!("control plane status: {why} in the response"))
        })?;
        let host_url = st
            .private_ip
            .as_deref()
            .and_then(usable_private_ip)
            .map(|ip| agent_url(ip, self.cfg.agent_port));
        presence_of_state(&id, &st.state, host_url)
    }

    async fn write_files(
        &self,
        _ws: &WorkspaceRef,
        _files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        Err(BackendError::Permanent(
            "files cannot be written into a control-plane instance; a change of files provisions a new one".into(),
        ))
    }

    async fn exec(&self, _ws: &WorkspaceRef, _cmd: &[String]) -> Result<ExecOutput, BackendError> {
        Err(BackendError::Permanent(
            "exec is not available on control-plane instances".into(),
        ))
    }

    /// The instances of this org and installation that are not terminated.
    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        let path = format!(
            "/cp/admin/workspaces?org_id={}&installation={}",
            enc(&self.cfg.org_id),
            enc(&self.installation)
        );
        let (resp, creds) = self
            .call(
                "control plane list",
                RouteClass::Admin,
                Method::GET,
                &path,
                None,
                MAX_LIST_BODY,
            )
            .await?;
        if matches!(resp.status, 404 | 405) {
            // The original control plane is not known to serve this route: without it there
            // is nothing to reap from here (docs/backends.md), which is not a failure to retry.
            if !self
                .list_unserved
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    status = resp.status,
                    "the control plane does not serve GET /cp/admin/workspaces: orphan instances are not reaped"
                );
            }
            return Ok(vec![]);
        }
        if !(200..=299).contains(&resp.status) {
            return Err(upstream("control plane list", &resp, &creds));
        }
        if resp.truncated {
            return Err(BackendError::Transient(format!(
                "control plane list: the instance list exceeds {MAX_LIST_BODY} bytes"
            )));
        }
        let list: ListResponse = first_json(&resp.body).map_err(|why| {
            BackendError::Transient(format!("control plane list: {why} in the response"))
        })?;
        let mut out: Vec<Managed> = list
            .instances
            .into_iter()
            .filter(|i| i.installation == self.installation)
            .filter(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
            .filter(|i| usable_instance_id(Some(&i.instance_id), &i.workspace_id).is_some())
            .map(|i| Managed {
                kind: ManagedKind::Instance,
                name: i.instance_id,
                uid: i.workspace_id,
                namespace: i.namespace,
                workspace: i.name,
                attempt: i.attempt,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError> {
        if m.kind != ManagedKind::Instance {
            return Err(BackendError::Permanent(format!(
                "{} is not a control-plane instance",
                m.name
            )));
        }
        let Some(id) = usable_instance_id(Some(&m.name), &m.uid) else {
            return Err(BackendError::Permanent(format!(
                "refusing to terminate {:?}: not an instance id",
                m.name
            )));
        };
        self.terminate(&m.uid, &id).await
    }

    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        let path = format!(
            "/cp/admin/workspaces/{}/console",
            Self::workspace_path(&ws.uid)?
        );
        let (resp, creds) = self
            .call(
                "control plane console",
                RouteClass::Admin,
                Method::GET,
                &path,
                None,
                MAX_CONSOLE_BYTES + 4096,
            )
            .await?;
        if !(200..=299).contains(&resp.status) {
            return Err(upstream("control plane console", &resp, &creds));
        }
        let json = resp
            .content_type()
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"));
        let mut text = if json {
            first_json::<ConsoleResponse>(&resp.body)
                .map_err(|why| {
                    BackendError::Transient(format!("control plane console: {why} in the response"))
                })?
                .output
        } else {
            String::from_utf8_lossy(&resp.body).into_owned()
        };
        if text.len() > MAX_CONSOLE_BYTES {
            let mut cut = text.len() - MAX_CONSOLE_BYTES;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            shared_secret: "shh-shared-123".into(),
            admin_token: Some("adm-token-456".into()),
            tenant_token: Some("tenant-789".into()),
        }
    }

    #[test]
    fn each_route_class_gets_its_credential_and_admin_falls_back() {
        let c = creds();
        assert_eq!(c.bearer(RouteClass::Provision), "shh-shared-123");
        assert_eq!(c.bearer(RouteClass::Admin), "adm-token-456");
        let only_shared = Credentials {
            shared_secret: "s".into(),
            ..Default::default()
        };
        assert_eq!(only_shared.bearer(RouteClass::Admin), "s");
        let empty_admin = Credentials {
            shared_secret: "s".into(),
            admin_token: Some(String::new()),
            tenant_token: Some(String::new()),
        };
        assert_eq!(empty_admin.tenant(), None);
        assert_eq!(empty_admin.bearer(RouteClass::Admin), "s");
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("shh") && !printed.contains("adm-") && !printed.contains("tenant-"),
            "{printed}"
        );
    }

    #[test]
    fn excerpts_are_capped_redacted_and_flat() {
        let c = creds();
        let body = format!(
            "upstream exploded; echoing headers: Authorization: Bearer {} X-Admin: adm-token-456\n{}",
            c.shared_secret,
            "x".repeat(2000)
        );
        let e = excerpt(body.as_bytes(), Some(&c));
        assert!(e.len() <= MAX_ERROR_EXCERPT, "{}", e.len());
        assert!(!e.contains("shh-shared") && !e.contains("adm-token"), "{e}");
        assert!(e.contains("upstream exploded"), "{e}");
        assert!(!e.contains('\n'));
        // A secret straddling the cut is redacted before the cut, not cut in half.
        let pad = "y".repeat(MAX_ERROR_EXCERPT - 5);
        let e = excerpt(format!("{pad}{}", c.shared_secret).as_bytes(), Some(&c));
        assert!(!e.contains("shh-s"), "{e}");
        // Unknown bearer tokens are redacted too.
        let e = excerpt(b"auth failed for token=abc123xyz", None);
        assert!(!e.contains("abc123xyz"), "{e}");
        // Multi-byte text is cut on a char boundary.
        let e = excerpt("é".repeat(600).as_bytes(), None);
        assert!(e.len() <= MAX_ERROR_EXCERPT && e.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn instance_ids_are_never_the_workspace_id_or_garbage() {
        let uid = "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab";
        assert_eq!(
            usable_instance_id(Some("i-0abc123def4567890"), uid).as_deref(),
            Some("i-0abc123def4567890")
        );
        assert_eq!(usable_instance_id(None, uid), None);
        assert_eq!(usable_instance_id(Some(""), uid), None);
        assert_eq!(usable_instance_id(Some("   "), uid), None);
        assert_eq!(usable_instance_id(Some(uid), uid), None);
        assert_eq!(usable_instance_id(Some(&uid.to_uppercase()), uid), None);
        for bad in ["i-1&x=2", "../i-1", "i 1", "-i1", "i-1/2"] {
            assert_eq!(usable_instance_id(Some(bad), uid), None, "{bad}");
        }
        assert_eq!(
            usable_instance_id(Some(&"i".repeat(129)), uid),
            None,
            "too long"
        );
    }

    #[test]
    fn states_map_to_presence() {
        let url = Some("http://10.0.0.5:8000".to_string());
        assert!(matches!(
            presence_of_state("i-1", "pending", url.clone()),
            Ok(Presence::Running { .. })
        ));
        assert!(matches!(
            presence_of_state("i-1", "running", url.clone()),
            Ok(Presence::Running {
                host_url: Some(_),
                ..
            })
        ));
        assert!(matches!(
            presence_of_state("i-1", "stopped", None),
            Ok(Presence::Stopped { .. })
        ));
        assert!(matches!(
            presence_of_state("i-1", "stopping", None),
            Ok(Presence::Stopped { .. })
        ));
        assert_eq!(
            presence_of_state("i-1", "terminated", None).ok(),
            Some(Presence::Absent)
        );
        assert_eq!(
            presence_of_state("i-1", "shutting-down", None).ok(),
            Some(Presence::Absent)
        );
        let e = presence_of_state("i-1", "exploded", None).expect_err("unknown");
        assert!(
            e.is_transient(),
            "an unknown state is not evidence of death"
        );
    }

    #[test]
    fn private_ips_are_checked() {
        assert!(usable_private_ip("10.0.3.7").is_some());
        assert!(usable_private_ip("127.0.4.2").is_some());
        assert!(usable_private_ip("fd00::1").is_some());
        for bad in [
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "fe80::1",
            "::",
            "ec2.internal",
            "",
        ] {
            assert!(usable_private_ip(bad).is_none(), "{bad}");
        }
        assert_eq!(
            agent_url("fd00::1".parse().expect("ip"), 8000),
            "http://[fd00::1]:8000"
        );
    }

    #[test]
    fn the_attempt_is_the_token_hash_prefix() {
        let token = b"tok-abc";
        let files = vec![ConfigFile {
            path: ".auth_token".into(),
            content: token.to_vec(),
            mode: 0o600,
        }];
        let full = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token));
        assert_eq!(attempt_of(&files), full[..16]);
        assert_eq!(attempt_of(&[]), "");
    }

    #[test]
    fn config_is_validated() {
        let cfg = |url: &str, org: &str| ControlPlaneConfig {
            base_url: url.into(),
            org_id: org.into(),
            credentials: CredentialSource::Static(creds()),
            agent_port: 8000,
            timeouts: Timeouts::default(),
            ca_pem: None,
        };
        let ok = cfg("https://cp.example.com/", "acme")
            .validated()
            .expect("ok");
        assert_eq!(ok.base_url, "https://cp.example.com");
        assert!(!ok.is_cleartext_remote());
        assert!(
            !cfg("http://127.0.0.1:9000", "acme")
                .validated()
                .expect("ok")
                .is_cleartext_remote()
        );
        assert!(
            cfg("http://cp.internal:9000", "acme")
                .validated()
                .expect("ok")
                .is_cleartext_remote()
        );
        for (url, org) in [
            ("ftp://cp", "acme"),
            ("https://user:pw@cp", "acme"),
            ("https://cp?x=1", "acme"),
            ("https://", "acme"),
            ("https://cp", ""),
            ("https://cp", "a b"),
        ] {
            assert!(cfg(url, org).validated().is_err(), "{url} {org}");
        }
        let mut empty = cfg("https://cp", "acme");
        empty.credentials = CredentialSource::Static(Credentials {
            shared_secret: " ".into(),
            ..Default::default()
        });
        assert!(empty.validated().is_err());
    }

    #[test]
    fn the_provision_request_carries_what_the_instance_needs() {
        let req = ProvisionRequest {
            workspace_id: "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab",
            org_id: "acme",
            installation: "k3x9a1b2c3d4",
            attempt: "0123456789abcdef".into(),
            namespace: "default",
            name: "alpha",
            runtime: "echo",
            image: None,
            tier: 2,
            memory_mib: None,
            cpus: None,
            agent_port: 8000,
            env: [("WORKSPACE_ID", "3f2a")].into_iter().collect(),
            files: vec![ProvisionFile {
                path: "config.yaml",
                mode: 0o644,
                content_base64: "eDox".into(),
            }],
        };
        let v = serde_json::to_value(&req).expect("json");
        assert_eq!(v["workspace_id"], "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab");
        assert_eq!(v["installation"], "k3x9a1b2c3d4");
        assert_eq!(v["env"]["WORKSPACE_ID"], "3f2a");
        assert_eq!(v["files"][0]["mode"], 420);
        assert!(
            v.get("image").is_none(),
            "no image: the control plane's default"
        );
    }

    /// A control plane on 127.0.0.1 that records each call's route, bearer and tenant header.
    #[tokio::test]
    async fn every_route_carries_the_tenant_token_beside_its_bearer() {
        use axum::http::HeaderMap;
        use std::sync::{Arc, Mutex};
        type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
        let seen: Seen = Arc::default();
        let record = |seen: &Seen, route: &str, h: &HeaderMap| {
            let get = |k: &str| {
                h.get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            seen.lock().expect("lock").push((
                route.into(),
                get("authorization"),
                get(TENANT_HEADER),
            ));
        };
        let uid = "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab";
        let app = {
            let (a, b, c, d, e) = (
                seen.clone(),
                seen.clone(),
                seen.clone(),
                seen.clone(),
                seen.clone(),
            );
            axum::Router::new()
                .route(
                    "/cp/workspaces/provision",
                    axum::routing::post(move |h: HeaderMap| async move {
                        record(&a, "provision", &h);
                        (
                            axum::http::StatusCode::CREATED,
                            axum::Json(serde_json::json!({"instance_id": "i-0abc", "private_ip": "10.0.0.5", "state": "pending"})),
                        )
                    }),
                )
                .route(
                    "/cp/workspaces/{id}/status",
                    axum::routing::get(move |h: HeaderMap| async move {
                        record(&b, "status", &h);
                        axum::Json(serde_json::json!({"state": "running", "private_ip": "10.0.0.5"}))
                    }),
                )
                .route(
                    "/cp/workspaces/{id}",
                    axum::routing::delete(move |h: HeaderMap| async move {
                        record(&c, "stop", &h);
                        axum::Json(serde_json::json!({}))
                    }),
                )
                .route(
                    "/cp/admin/workspaces/{id}/console",
                    axum::routing::get(move |h: HeaderMap| async move {
                        record(&d, "console", &h);
                        axum::Json(serde_json::json!({"output": "boot"}))
                    }),
                )
                .route(
                    "/cp/admin/workspaces",
                    axum::routing::get(move |h: HeaderMap| async move {
                        record(&e, "list", &h);
                        axum::Json(serde_json::json!({"instances": []}))
                    }),
                )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let cfg = ControlPlaneConfig {
            base_url: format!("http://{addr}"),
            org_id: "acme".into(),
            credentials: CredentialSource::Static(creds()),
            agent_port: 8000,
            timeouts: Default::default(),
            ca_pem: None,
        };
        let cp = ControlPlaneBackend::new(cfg, "k3x9a1b2c3d4", None).expect("backend");
        let ws = WorkspaceRef {
            uid: uid.into(),
            namespace: "default".into(),
            name: "alpha".into(),
            instance_id: Some("i-0abc".into()),
        };
        let spec = StartSpec {
            workspace: ws.clone(),
            runtime: "echo".into(),
            image: String::new(),
            env: vec![],
            tier: crate::backends::Tier::Standard,
            memory_mib: None,
            cpus: None,
            files: vec![],
            workspace_dir: None,
            extra_hosts: vec![],
            platform: None,
        };
        cp.ensure_started(&spec).await.expect("provision");
        cp.inspect(&ws).await.expect("status");
        cp.console(&ws).await.expect("console");
        cp.list_managed().await.expect("list");
        cp.stop(&ws).await.expect("stop");
        server.abort();
        let seen = seen.lock().expect("lock").clone();
        let routes: Vec<&str> = seen.iter().map(|(r, _, _)| r.as_str()).collect();
        assert_eq!(routes, ["provision", "status", "console", "list", "stop"]);
        // A control plane without the list route: nothing to reap, not an error.
        let bare = axum::Router::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let bare_addr = listener.local_addr().expect("addr");
        let bare_server = tokio::spawn(async move {
            let _ = axum::serve(listener, bare).await;
        });
        let cfg = ControlPlaneConfig {
            base_url: format!("http://{bare_addr}"),
            org_id: "acme".into(),
            credentials: CredentialSource::Static(creds()),
            agent_port: 8000,
            timeouts: Default::default(),
            ca_pem: None,
        };
        let cp = ControlPlaneBackend::new(cfg, "k3x9a1b2c3d4", None).expect("backend");
        assert!(cp.list_managed().await.expect("no list route").is_empty());
        bare_server.abort();
        for (route, bearer, tenant) in &seen {
            assert_eq!(tenant, "tenant-789", "{route}");
            let want = if matches!(route.as_str(), "console" | "list") {
                "Bearer adm-token-456"
            } else {
                "Bearer shh-shared-123"
            };
            assert_eq!(bearer, want, "{route}");
        }
    }
}
