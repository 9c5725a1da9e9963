//! Docker engine backend (bollard), ADR 0006: one container `ws-<id12>` and one config
//! volume `ws-<id12>-configs` per workspace on the `molecule-core-net` bridge network, all
//! labelled as managed. Config files go into the volume before the container first starts:
//! straight into the volume's directory when the operator shares the engine's host (ADR 0034),
//! else through the archive API (a tar body, no shell needed in the image).
//!
//! The parts: `spec` (what a container looks like and its spec hash), `containers` (the
//! workspace container's lifecycle), `volumes` (the config volume and writing files into it),
//! `exec` (commands and console output), `listing` (managed objects, reaping), `network` (the
//! bridge network) and `errors` (engine errors to [`BackendError`]). The tests that need an
//! engine live in `tests/docker_backend.rs`.

mod containers;
mod errors;
mod exec;
mod listing;
mod network;
mod spec;
mod volumes;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerInspectResponse;

use super::{
    BackendError, ConfigFile, ExecOutput, Managed, Presence, StartSpec, Started, WorkspaceBackend,
    WorkspaceRef,
};
use errors::bounded;
pub(crate) use errors::map_error;
pub(crate) use volumes::config_tar;

/// Label carried by every container, volume and network this backend creates.
pub const LABEL_MANAGED: &str = "molecule.platform.managed";
pub const LABEL_UID: &str = "molecule.ai/uid";
pub const LABEL_NAMESPACE: &str = "molecule.ai/namespace";
pub const LABEL_NAME: &str = "molecule.ai/name";
/// Which molecule installation owns the object: one Docker engine can serve several (two
/// `serve` data dirs, a test run beside a dev server), and each reaps only its own.
pub const LABEL_INSTANCE: &str = "molecule.ai/instance";
/// sha256 of everything that needs a new container when it changes (image, env, tier, limits,
/// mounts, extra hosts, network).
pub const LABEL_SPEC_HASH: &str = "molecule.ai/spec-hash";
/// The provision attempt a container was created by ([`crate::backends::attempt_of`]).
pub const LABEL_ATTEMPT: &str = "molecule.ai/attempt";
/// "workspace" for the workspace container, "file-writer" for a short-lived helper.
pub const LABEL_ROLE: &str = "molecule.ai/role";
/// The production network name (the original platform's).
pub const DEFAULT_NETWORK: &str = "molecule-core-net";
/// The agent's port inside the container.
pub const AGENT_PORT: &str = "8000/tcp";
pub const CONFIG_MOUNT: &str = "/configs";
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Where a claude-code workspace keeps its sessions (its own volume, ADR 0048).
pub const SESSIONS_MOUNT: &str = "/root/.claude/sessions";
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

const ROLE_WORKSPACE: &str = "workspace";
const ROLE_FILE_WRITER: &str = "file-writer";
/// Entrypoint given to helper containers; they are never started, so it never runs.
const HELPER_ENTRYPOINT: &str = "/molecule-file-writer";
const SPEC_HASH_VERSION: &str = "molecule-spec-v1";
const MIB: i64 = 1024 * 1024;
const DEFAULT_START_CONCURRENCY: usize = 4;

/// The bridge network workspaces are attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    pub name: String,
    /// IPv4 gateway of the network (the host side), where the operator binds its agent listener.
    pub gateway_ip: Option<IpAddr>,
}

/// [`WorkspaceBackend`] on a local Docker engine.
pub struct DockerBackend {
    docker: Docker,
    network: String,
    instance: String,
    helper_image: Option<String>,
    stop_timeout: Duration,
    call_timeout: Duration,
    exec_timeout: Duration,
    network_lock: tokio::sync::Mutex<()>,
    /// Set once the network is known to exist; cleared when a create says it is gone.
    network_ready: std::sync::atomic::AtomicBool,
    host_cpus: tokio::sync::OnceCell<i64>,
    /// Bounds concurrent container starts (see [`DockerBackend::with_start_concurrency`]).
    starts: tokio::sync::Semaphore,
    /// Config files go straight into a local volume's directory before a first start (ADR 0034);
    /// cleared for good once the volume directories turn out not to be reachable from here.
    direct_writes: std::sync::atomic::AtomicBool,
    writes: ConfigWriteCounts,
}

/// How config files reached volumes so far: straight into the volume's directory, or through
/// the engine's archive API ([`DockerBackend::config_writes`]).
#[derive(Debug, Default)]
pub struct ConfigWriteCounts {
    pub direct: AtomicU64,
    pub archive: AtomicU64,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("network", &self.network)
            .field("instance", &self.instance)
            .field("helper_image", &self.helper_image)
            .field("stop_timeout", &self.stop_timeout)
            .finish_non_exhaustive()
    }
}

impl DockerBackend {
    /// Connects with the local defaults (DOCKER_HOST or the unix socket) and negotiates the API
    /// version down to the engine's (Docker 20.10 speaks 1.41).
    pub async fn connect(network: &str, instance: &str) -> Result<Self, BackendError> {
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| map_error("connect to docker", e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| map_error("negotiate docker API version", e))?;
        Ok(Self::new(docker, network, instance, None))
    }

    /// A backend over an existing client. `helper_image` is any local image (it is never run, it
    /// only has to exist) used to create a short-lived container that mounts the config volume
    /// when [`WorkspaceBackend::write_files`] finds no workspace container.
    pub fn new(
        docker: Docker,
        network: &str,
        instance: &str,
        helper_image: Option<String>,
    ) -> Self {
        Self {
            docker,
            network: network.to_string(),
            instance: instance.to_string(),
            helper_image,
            stop_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            exec_timeout: Duration::from_secs(300),
            network_lock: tokio::sync::Mutex::new(()),
            network_ready: std::sync::atomic::AtomicBool::new(false),
            host_cpus: tokio::sync::OnceCell::new(),
            starts: tokio::sync::Semaphore::new(DEFAULT_START_CONCURRENCY),
            direct_writes: std::sync::atomic::AtomicBool::new(true),
            writes: ConfigWriteCounts::default(),
        }
    }

    /// How config files were written so far (diagnostics; ADR 0034).
    pub fn config_writes(&self) -> &ConfigWriteCounts {
        &self.writes
    }

    /// Whether config files may be written straight into a `local` volume's directory when it is
    /// reachable from this process (default on; off, every write uses the archive API).
    pub fn with_direct_volume_writes(self, on: bool) -> Self {
        self.direct_writes.store(on, Ordering::Relaxed);
        self
    }

    /// Sets the helper image (see [`DockerBackend::new`]).
    pub fn with_helper_image(mut self, image: impl Into<String>) -> Self {
        self.helper_image = Some(image.into());
        self
    }

    /// Grace period between SIGTERM and SIGKILL on stop (default 10 s).
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Bound on every single engine call (default 30 s); a call that takes longer is Transient.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How many container starts run at once (default 4). The engine serialises much of a start
    /// (network sandbox, port mapping, iptables); a burst of 50 concurrent starts makes every
    /// one of them slow, while a small bound brings the first workspaces up at once and keeps
    /// the total the same or better.
    pub fn with_start_concurrency(mut self, n: usize) -> Self {
        self.starts = tokio::sync::Semaphore::new(n.max(1));
        self
    }

    /// Bound on one [`WorkspaceBackend::exec`] (default 300 s).
    pub fn with_exec_timeout(mut self, timeout: Duration) -> Self {
        self.exec_timeout = timeout;
        self
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    /// The installation id every object of this backend is labelled with.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Labels every container and volume of a workspace carries.
    pub fn workspace_labels(&self, ws: &WorkspaceRef) -> HashMap<String, String> {
        workspace_labels(ws, &self.instance)
    }

    /// Whether `labels` mark an object of this installation for `ws`.
    fn owned_by(&self, labels: &HashMap<String, String>, ws: &WorkspaceRef) -> bool {
        managed_here(labels, &self.instance) && labels.get(LABEL_UID) == Some(&ws.uid)
    }

    /// The label filter selecting this installation's managed objects.
    fn managed_filter(&self) -> Vec<String> {
        vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_INSTANCE}={}", self.instance),
        ]
    }

    /// Runs one engine call under the call timeout; the timeout becomes a request-timeout error.
    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, DockerError> {
        bounded(self.call_timeout, fut).await
    }
}

/// What sits under a workspace's container name.
enum Lookup {
    Absent,
    /// A container with the name exists but does not carry our labels for this uid.
    Foreign,
    Owned(Box<ContainerInspectResponse>),
}

#[async_trait::async_trait]
impl WorkspaceBackend for DockerBackend {
    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %spec.workspace.container_name()))]
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        check_ref(&spec.workspace)?;
        self.start_workspace(spec).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        check_ref(ws)?;
        self.stop_workspace(ws).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn remove(&self, ws: &WorkspaceRef, remove_volume: bool) -> Result<(), BackendError> {
        check_ref(ws)?;
        self.remove_workspace(ws, remove_volume).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError> {
        check_ref(ws)?;
        self.inspect_workspace(ws).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn write_files(
        &self,
        ws: &WorkspaceRef,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        check_ref(ws)?;
        self.write_config_files(ws, files).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn exec(&self, ws: &WorkspaceRef, cmd: &[String]) -> Result<ExecOutput, BackendError> {
        check_ref(ws)?;
        self.run_exec(ws, cmd).await
    }

    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        self.list_managed_objects().await
    }

    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError> {
        self.remove_managed_object(m).await
    }

    /// The last 2000 lines of the container's stdout and stderr, capped at
    /// [`super::MAX_CONSOLE_BYTES`] (the newest bytes are kept).
    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        check_ref(ws)?;
        self.read_console(ws).await
    }
}

/// Labels every container and volume of a workspace of installation `instance` carries.
pub fn workspace_labels(ws: &WorkspaceRef, instance: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_UID.to_string(), ws.uid.clone()),
        (LABEL_NAMESPACE.to_string(), ws.namespace.clone()),
        (LABEL_NAME.to_string(), ws.name.clone()),
    ])
}

/// Whether `labels` mark a managed object of installation `instance`.
fn managed_here(labels: &HashMap<String, String>, instance: &str) -> bool {
    labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
        && labels.get(LABEL_INSTANCE).map(String::as_str) == Some(instance)
}

fn check_ref(ws: &WorkspaceRef) -> Result<(), BackendError> {
    if ws.id12().len() == 12 {
        Ok(())
    } else {
        Err(BackendError::Permanent(format!(
            "workspace uid {:?} has fewer than 12 hex digits",
            ws.uid
        )))
    }
}
