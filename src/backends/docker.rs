//! Docker engine backend (bollard), ADR 0006: one container `ws-<id12>` and one config
//! volume `ws-<id12>-configs` per workspace on the `molecule-core-net` bridge network, all
//! labelled as managed. Config files go into the volume before the container first starts:
//! straight into the volume's directory when the operator shares the engine's host (ADR 0034),
//! else through the archive API (a tar body, no shell needed in the image).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    ExecConfig, HostConfig, Mount, MountType, NetworkCreateRequest, NetworkInspect,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptions, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{
    BackendError, ConfigFile, ExecOutput, Managed, ManagedKind, Presence, StartSpec, Started, Tier,
    WorkspaceBackend, WorkspaceRef, normalize_line_endings, validate_file_path, volume_dir,
};

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

    /// Creates the bridge network if missing (labelled managed) and returns its IPv4 gateway.
    ///
    /// Serialised within this backend: the 1.41 API has no server-side duplicate check by
    /// default, so two concurrent creates could make two networks with one name.
    pub async fn ensure_network(&self) -> Result<NetworkInfo, BackendError> {
        let _guard = self.network_lock.lock().await;
        let info = self.ensure_network_locked().await?;
        self.network_ready
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(info)
    }

    /// [`DockerBackend::ensure_network`] unless this backend already saw the network exist (the
    /// provisioning hot path skips the inspect; a create that finds it gone clears the flag).
    async fn ensure_network_once(&self) -> Result<(), BackendError> {
        if !self
            .network_ready
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.ensure_network().await?;
        }
        Ok(())
    }

    async fn ensure_network_locked(&self) -> Result<NetworkInfo, BackendError> {
        match self.inspect_network().await? {
            Some(net) => Ok(self.network_info(&net)),
            None => {
                let request = NetworkCreateRequest {
                    name: self.network.clone(),
                    driver: Some("bridge".to_string()),
                    labels: Some(HashMap::from([(
                        LABEL_MANAGED.to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                };
                match self.timed(self.docker.create_network(request)).await {
                    Ok(_) => tracing::info!(network = %self.network, "created docker network"),
                    Err(e) if status_of(&e) == Some(409) => {}
                    Err(e) => return Err(map_error("create network", e)),
                }
                match self.inspect_network().await? {
                    Some(net) => Ok(self.network_info(&net)),
                    None => Err(BackendError::Transient(format!(
                        "network {} vanished right after being created",
                        self.network
                    ))),
                }
            }
        }
    }

    async fn inspect_network(&self) -> Result<Option<NetworkInspect>, BackendError> {
        match self
            .timed(self.docker.inspect_network(&self.network, None))
            .await
        {
            Ok(net) => Ok(Some(net)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error("inspect network", e)),
        }
    }

    fn network_info(&self, net: &NetworkInspect) -> NetworkInfo {
        let gateways: Vec<IpAddr> = net
            .ipam
            .as_ref()
            .and_then(|ipam| ipam.config.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.gateway.as_deref())
            .filter_map(|g| g.split('/').next())
            .filter_map(|g| g.parse::<IpAddr>().ok())
            .collect();
        let gateway_ip = gateways
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(gateways.first())
            .copied();
        NetworkInfo {
            name: self.network.clone(),
            gateway_ip,
        }
    }

    /// CPUs of the engine's host (asked once). The engine rejects NanoCpus above it.
    async fn host_cpus(&self) -> Result<i64, BackendError> {
        self.host_cpus
            .get_or_try_init(|| async {
                let info = self
                    .timed(self.docker.info())
                    .await
                    .map_err(|e| map_error("read engine info", e))?;
                Ok(info.ncpu.filter(|n| *n > 0).unwrap_or(1))
            })
            .await
            .copied()
    }

    /// Runs one engine call under the call timeout; the timeout becomes a request-timeout error.
    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, DockerError> {
        bounded(self.call_timeout, fut).await
    }

    async fn lookup_container(&self, ws: &WorkspaceRef) -> Result<Lookup, BackendError> {
        let name = ws.container_name();
        match self.timed(self.docker.inspect_container(&name, None)).await {
            Ok(c) => {
                let labels = c.config.as_ref().and_then(|cfg| cfg.labels.as_ref());
                if labels.is_some_and(|l| self.owned_by(l, ws)) {
                    Ok(Lookup::Owned(Box::new(c)))
                } else {
                    tracing::warn!(container = %name, "a container with the workspace's name exists but is not managed for this workspace; leaving it alone");
                    Ok(Lookup::Foreign)
                }
            }
            Err(e) if is_not_found(&e) => Ok(Lookup::Absent),
            Err(e) => Err(map_error("inspect container", e)),
        }
    }

    /// Creates the config volume if missing (one call: the engine returns an existing volume
    /// as it is); an existing volume must be ours. The volume's directory when it is a plain
    /// `local` volume, for direct writes ([`DockerBackend::write_before_start`]).
    async fn ensure_volume(&self, ws: &WorkspaceRef) -> Result<Option<PathBuf>, BackendError> {
        let name = ws.volume_name();
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(self.workspace_labels(ws)),
            ..Default::default()
        };
        let v = self
            .timed(self.docker.create_volume(request))
            .await
            .map_err(|e| map_error("create volume", e))?;
        if !self.owned_by(&v.labels, ws) {
            return Err(BackendError::Permanent(format!(
                "volume {name} exists but is not managed by molecule for this workspace"
            )));
        }
        let plain_local = v.driver == "local" && v.options.values().all(|o| o.is_empty());
        let dir = PathBuf::from(&v.mountpoint);
        let usable =
            plain_local && dir.is_absolute() && dir.ends_with(Path::new(&name).join("_data"));
        Ok(usable.then_some(dir))
    }

    /// Writes the config files while no container of the workspace runs: straight into the
    /// volume's directory when it is reachable (ADR 0034), else through the archive API into
    /// `container`, which has the volume mounted.
    async fn write_before_start(
        &self,
        container: &str,
        volume_dir: Option<PathBuf>,
        payload: ConfigPayload,
    ) -> Result<(), BackendError> {
        let ConfigPayload { tar, entries } = payload;
        if let Some(dir) = volume_dir.filter(|_| self.direct_writes.load(Ordering::Relaxed)) {
            let written = tokio::task::spawn_blocking(move || volume_dir::write(&dir, &entries))
                .await
                .map_err(|e| BackendError::Transient(format!("write config files: {e}")))?;
            match written {
                Ok(()) => {
                    self.writes.direct.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(r) if r.unreachable => {
                    if self.direct_writes.swap(false, Ordering::Relaxed) {
                        tracing::info!(reason = %r.reason, "volume directories are not reachable from this process; config files go through the archive API");
                    }
                }
                Err(r) => {
                    tracing::info!(container, reason = %r.reason, "config volume holds something unexpected; writing through the archive API instead");
                }
            }
        }
        self.upload(container, tar).await
    }

    /// The local image id of `image`, or None when the engine does not have it.
    async fn local_image_id(&self, image: &str) -> Result<Option<String>, BackendError> {
        match self.timed(self.docker.inspect_image(image)).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error("inspect image", e)),
        }
    }

    async fn upload(&self, container: &str, tar: Vec<u8>) -> Result<(), BackendError> {
        self.writes.archive.fetch_add(1, Ordering::Relaxed);
        let options = UploadToContainerOptionsBuilder::default()
            .path(CONFIG_MOUNT)
            .build();
        self.timed(self.docker.upload_to_container(
            container,
            Some(options),
            bollard::body_full(tar.into()),
        ))
        .await
        .map_err(|e| map_error("write config files", e))
    }

    /// Force-removes one container; gone / already being removed is success.
    async fn force_remove(&self, id_or_name: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(false)
            .build();
        match self
            .timed(self.docker.remove_container(id_or_name, Some(options)))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) || is_removal_in_progress(&e) => Ok(()),
            Err(e) => Err(map_error("remove container", e)),
        }
    }

    /// Polls until no container with this id exists, up to `wait`. Returns whether it is gone.
    async fn wait_container_gone(&self, id: &str, wait: Duration) -> Result<bool, BackendError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.timed(self.docker.inspect_container(id, None)).await {
                Err(e) if is_not_found(&e) => return Ok(true),
                Err(e) => return Err(map_error("inspect container", e)),
                Ok(_) if tokio::time::Instant::now() >= deadline => return Ok(false),
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Ids of every container labelled for this workspace (workspace container and helpers).
    async fn labelled_containers(&self, ws: &WorkspaceRef) -> Result<Vec<String>, BackendError> {
        let mut label = self.managed_filter();
        label.push(format!("{LABEL_UID}={}", ws.uid));
        let filters = HashMap::from([("label", label)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .timed(self.docker.list_containers(Some(options)))
            .await
            .map_err(|e| map_error("list containers", e))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    fn container_body(
        &self,
        spec: &StartSpec,
        env: &[(String, String)],
        limits: Limits,
        hash: &str,
    ) -> ContainerCreateBody {
        let ws = &spec.workspace;
        let mut labels = self.workspace_labels(ws);
        labels.insert(LABEL_SPEC_HASH.to_string(), hash.to_string());
        labels.insert(LABEL_ROLE.to_string(), ROLE_WORKSPACE.to_string());
        let attempt = crate::backends::attempt_of(&spec.files);
        if !attempt.is_empty() {
            labels.insert(LABEL_ATTEMPT.to_string(), attempt);
        }

        let mut mounts = vec![Mount {
            typ: Some(MountType::VOLUME),
            source: Some(ws.volume_name()),
            target: Some(CONFIG_MOUNT.to_string()),
            ..Default::default()
        }];
        let mut host = HostConfig {
            memory: limits.memory_bytes,
            nano_cpus: limits.nano_cpus,
            network_mode: Some(self.network.clone()),
            port_bindings: Some(HashMap::from([(
                AGENT_PORT.to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some(String::new()),
                }]),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            ..Default::default()
        };
        match spec.tier {
            Tier::Sandboxed => {
                host.readonly_rootfs = Some(true);
                host.tmpfs = Some(HashMap::from([(
                    "/tmp".to_string(),
                    "size=64m,noexec".to_string(),
                )]));
                if spec.workspace_dir.is_some() {
                    tracing::warn!(workspace = %ws.container_name(), "tier 1 never mounts a workspace dir; ignoring it");
                }
            }
            Tier::Standard | Tier::PrivilegedLite | Tier::FullHost => {
                if let Some((dir, read_only)) = &spec.workspace_dir {
                    mounts.push(Mount {
                        typ: Some(MountType::BIND),
                        source: Some(dir.to_string_lossy().into_owned()),
                        target: Some(WORKSPACE_MOUNT.to_string()),
                        read_only: Some(*read_only),
                        ..Default::default()
                    });
                }
            }
        }
        if spec.tier == Tier::FullHost {
            mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(DOCKER_SOCKET.to_string()),
                target: Some(DOCKER_SOCKET.to_string()),
                ..Default::default()
            });
        }
        host.mounts = Some(mounts);

        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(vec![AGENT_PORT.to_string()]),
            host_config: Some(host),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings::default(),
                )])),
            }),
            ..Default::default()
        }
    }

    async fn create_workspace_container(
        &self,
        spec: &StartSpec,
        body: ContainerCreateBody,
    ) -> Result<String, BackendError> {
        let name = spec.workspace.container_name();
        let mut options = CreateContainerOptionsBuilder::default().name(&name);
        if let Some(p) = spec.platform.as_deref().filter(|p| !p.is_empty()) {
            options = options.platform(p);
        }
        let options = options.build();
        match self
            .timed(self.docker.create_container(Some(options), body))
            .await
        {
            Ok(created) => {
                for w in &created.warnings {
                    tracing::warn!(container = %name, warning = %redact(w, &spec.env), "docker create warning");
                }
                tracing::info!(container = %name, id = %created.id, image = %spec.image, "created workspace container");
                Ok(created.id)
            }
            Err(e) if status_of(&e) == Some(409) => Err(BackendError::Transient(format!(
                "container name {name} is still in use (a previous container is being removed or was created concurrently)"
            ))),
            Err(DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.to_ascii_lowercase().contains("network") => {
                // Removed behind our back: the next attempt re-creates it.
                self.network_ready
                    .store(false, std::sync::atomic::Ordering::Release);
                Err(BackendError::Transient(format!(
                    "network {} is missing; it is re-created on the next attempt",
                    self.network
                )))
            }
            Err(e) => Err(map_create_error(e, &spec.image, &spec.env)),
        }
    }

    /// Reads the published host URL of port 8000, waiting briefly for a just-started container.
    async fn wait_host_url(&self, id: &str) -> Result<String, BackendError> {
        let mut last_state = String::from("unknown");
        for attempt in 0..15 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let c = self
                .timed(self.docker.inspect_container(id, None))
                .await
                .map_err(|e| map_error("inspect container", e))?;
            if let Some(url) = host_url(&c) {
                return Ok(url);
            }
            last_state = c
                .state
                .as_ref()
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".to_string());
        }
        Err(BackendError::Transient(format!(
            "container {id} has no published port {AGENT_PORT} (state {last_state})"
        )))
    }

    async fn write_with_helper(&self, ws: &WorkspaceRef, tar: Vec<u8>) -> Result<(), BackendError> {
        let Some(image) = self.helper_image.clone() else {
            return Err(BackendError::Permanent(format!(
                "workspace {} has no container and no helper image is configured to write its config volume",
                ws.container_name()
            )));
        };
        self.ensure_volume(ws).await?;
        let name = format!("{}-files-{}", ws.container_name(), unique_suffix());
        let mut labels = self.workspace_labels(ws);
        labels.insert(LABEL_ROLE.to_string(), ROLE_FILE_WRITER.to_string());
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec![HELPER_ENTRYPOINT.to_string()]),
            labels: Some(labels),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                mounts: Some(vec![Mount {
                    typ: Some(MountType::VOLUME),
                    source: Some(ws.volume_name()),
                    target: Some(CONFIG_MOUNT.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .timed(self.docker.create_container(Some(options), body))
            .await
            .map_err(|e| map_create_error(e, &image, &[]))?;
        let uploaded = self.upload(&created.id, tar).await;
        let removed = self.force_remove(&created.id).await;
        uploaded?;
        if let Err(e) = removed {
            tracing::warn!(container = %name, error = %e, "could not remove the file-writer helper; it will be reaped");
        }
        Ok(())
    }
}

/// What sits under a workspace's container name.
enum Lookup {
    Absent,
    /// A container with the name exists but does not carry our labels for this uid.
    Foreign,
    Owned(Box<ContainerInspectResponse>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    memory_bytes: Option<i64>,
    nano_cpus: Option<i64>,
}

#[async_trait::async_trait]
impl WorkspaceBackend for DockerBackend {
    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %spec.workspace.container_name()))]
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        let ws = &spec.workspace;
        check_ref(ws)?;
        let payload = config_payload(&spec.files)?;
        let env = normalized_env(&spec.env)?;
        let limits = limits(spec)?;
        let hash = spec_hash(spec, &env, limits, &self.network);

        // Independent engine calls, issued together: they dominate the time before the create.
        let (network, volume, host_cpus, image_id, lookup) = tokio::join!(
            self.ensure_network_once(),
            self.ensure_volume(ws),
            self.host_cpus(),
            self.local_image_id(&spec.image),
            self.lookup_container(ws),
        );
        network?;
        let volume_dir = volume?;
        let host_cpus = host_cpus?;
        let image_id = image_id?;

        let mut existing = match lookup? {
            Lookup::Absent => None,
            Lookup::Foreign => {
                return Err(BackendError::Permanent(format!(
                    "container name {} is taken by a container molecule does not manage",
                    ws.container_name()
                )));
            }
            Lookup::Owned(c) => Some(c),
        };
        if let Some(c) = &existing {
            let id = c.id.clone().unwrap_or_else(|| ws.container_name());
            let same_spec = c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.as_ref())
                .and_then(|l| l.get(LABEL_SPEC_HASH))
                .is_some_and(|h| *h == hash);
            let same_image = match (&image_id, &c.image) {
                (Some(want), Some(have)) => want == have,
                // Tag gone locally: keep a container that otherwise matches.
                (None, _) => true,
                (Some(_), None) => false,
            };
            let status = c.state.as_ref().and_then(|s| s.status);
            let unusable = matches!(
                status,
                Some(ContainerStateStatusEnum::DEAD | ContainerStateStatusEnum::REMOVING)
            );
            if !same_spec || !same_image || unusable {
                tracing::info!(container = %id, same_spec, same_image, ?status, "replacing workspace container");
                self.force_remove(&id).await?;
                if !self
                    .wait_container_gone(&id, Duration::from_secs(15))
                    .await?
                {
                    return Err(BackendError::Transient(format!(
                        "old container {id} is still being removed"
                    )));
                }
                existing = None;
            }
        }

        let (id, running, image_id) = match existing {
            Some(c) => {
                let id = c.id.clone().unwrap_or_else(|| ws.container_name());
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let image = c.image.clone().or(image_id).unwrap_or_default();
                if let Some(payload) = payload {
                    if running {
                        self.upload(&id, payload.tar).await?;
                    } else {
                        self.write_before_start(&id, volume_dir, payload).await?;
                    }
                }
                (id, running, image)
            }
            None => {
                let Some(image_id) = image_id else {
                    return Err(BackendError::ImageMissing(spec.image.clone()));
                };
                // The hash keeps the requested limit; the engine gets at most the host's CPUs
                // (tier 4 asks for 4, a 2-CPU host would refuse the create otherwise).
                let host_nano = host_cpus.saturating_mul(1_000_000_000);
                let applied = Limits {
                    nano_cpus: limits.nano_cpus.map(|n| {
                        if n > host_nano {
                            tracing::debug!(
                                requested = n,
                                applied = host_nano,
                                "capping CPU limit to the host's CPUs"
                            );
                        }
                        n.min(host_nano)
                    }),
                    ..limits
                };
                let body = self.container_body(spec, &env, applied, &hash);
                let id = self.create_workspace_container(spec, body).await?;
                if let Some(payload) = payload {
                    // Before the first start (no token race, ADR 0006). A failure leaves a created
                    // container with the right hash; the retry writes again and starts it.
                    self.write_before_start(&id, volume_dir, payload).await?;
                }
                (id, false, image_id)
            }
        };

        if !running {
            let _permit = self.starts.acquire().await;
            self.timed(self.docker.start_container(&id, None))
                .await
                .map_err(|e| map_error("start container", e))?;
            tracing::info!(container = %id, "started workspace container");
        }
        let host_url = self.wait_host_url(&id).await?;
        Ok(Started {
            container_id: id,
            host_url,
            image_id,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        check_ref(ws)?;
        let id = match self.lookup_container(ws).await? {
            Lookup::Absent | Lookup::Foreign => return Ok(()),
            Lookup::Owned(c) => c.id.clone().unwrap_or_else(|| ws.container_name()),
        };
        let secs = i32::try_from(self.stop_timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        let bound = self.stop_timeout + self.call_timeout;
        match bounded(bound, self.docker.stop_container(&id, Some(options))).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_error("stop container", e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn remove(&self, ws: &WorkspaceRef, remove_volume: bool) -> Result<(), BackendError> {
        check_ref(ws)?;
        let mut ids = BTreeSet::new();
        if let Lookup::Owned(c) = self.lookup_container(ws).await? {
            ids.insert(c.id.clone().unwrap_or_else(|| ws.container_name()));
        }
        ids.extend(self.labelled_containers(ws).await?);
        for id in &ids {
            self.force_remove(id).await?;
        }
        if !remove_volume {
            return Ok(());
        }
        for id in &ids {
            if !self.wait_container_gone(id, Duration::from_secs(5)).await? {
                tracing::warn!(container = %id, "container still being removed; keeping the volume for a later pass");
                return Ok(());
            }
        }
        let name = ws.volume_name();
        match self.timed(self.docker.inspect_volume(&name)).await {
            Ok(v) if self.owned_by(&v.labels, ws) => {}
            Ok(_) => {
                tracing::warn!(volume = %name, "volume is not managed for this workspace; leaving it alone");
                return Ok(());
            }
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(map_error("inspect volume", e)),
        }
        remove_volume_by_name(self, &name).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError> {
        check_ref(ws)?;
        let c = match self.lookup_container(ws).await? {
            Lookup::Absent | Lookup::Foreign => return Ok(Presence::Absent),
            Lookup::Owned(c) => c,
        };
        Ok(presence_of(&c, &ws.container_name()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn write_files(
        &self,
        ws: &WorkspaceRef,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        check_ref(ws)?;
        let Some(tar) = config_tar(files)? else {
            return Ok(());
        };
        match self.lookup_container(ws).await? {
            Lookup::Owned(c) => {
                let id = c.id.clone().unwrap_or_else(|| ws.container_name());
                self.upload(&id, tar).await
            }
            Lookup::Foreign => Err(BackendError::Permanent(format!(
                "container name {} is taken by a container molecule does not manage",
                ws.container_name()
            ))),
            Lookup::Absent => self.write_with_helper(ws, tar).await,
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %ws.container_name()))]
    async fn exec(&self, ws: &WorkspaceRef, cmd: &[String]) -> Result<ExecOutput, BackendError> {
        check_ref(ws)?;
        if cmd.is_empty() {
            return Err(BackendError::Permanent("exec needs a command".to_string()));
        }
        let id = match self.lookup_container(ws).await? {
            Lookup::Owned(c) => c.id.clone().unwrap_or_else(|| ws.container_name()),
            Lookup::Absent | Lookup::Foreign => {
                return Err(BackendError::Permanent(format!(
                    "workspace container {} does not exist",
                    ws.container_name()
                )));
            }
        };
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            ..Default::default()
        };
        let exec = self
            .timed(self.docker.create_exec(&id, config))
            .await
            .map_err(|e| map_error("create exec", e))?;
        let run = async {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            match self.docker.start_exec(&exec.id, None).await? {
                bollard::exec::StartExecResults::Attached { mut output, .. } => {
                    while let Some(chunk) = output.next().await {
                        match chunk? {
                            bollard::container::LogOutput::StdErr { message } => {
                                stderr.extend_from_slice(&message)
                            }
                            bollard::container::LogOutput::StdOut { message }
                            | bollard::container::LogOutput::Console { message } => {
                                stdout.extend_from_slice(&message)
                            }
                            bollard::container::LogOutput::StdIn { .. } => {}
                        }
                    }
                }
                bollard::exec::StartExecResults::Detached => {}
            }
            Ok::<_, DockerError>((stdout, stderr))
        };
        let (stdout, stderr) = bounded(self.exec_timeout, run)
            .await
            .map_err(|e| map_error("run exec", e))?;
        // The stream ends when the process exits; the exit code can lag by a moment.
        for attempt in 0..25 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let info = self
                .timed(self.docker.inspect_exec(&exec.id))
                .await
                .map_err(|e| map_error("inspect exec", e))?;
            if info.running != Some(true)
                && let Some(exit_code) = info.exit_code
            {
                return Ok(ExecOutput {
                    exit_code,
                    stdout,
                    stderr,
                });
            }
        }
        Err(BackendError::Transient(format!(
            "exec in {id} finished its output but reported no exit code"
        )))
    }

    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        let filters = HashMap::from([("label", self.managed_filter())]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .timed(self.docker.list_containers(Some(options)))
            .await
            .map_err(|e| map_error("list containers", e))?;
        let mut out = Vec::new();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            if !managed_here(&labels, &self.instance) {
                continue;
            }
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .or(c.id)
            else {
                continue;
            };
            out.push(managed_from(ManagedKind::Container, name, &labels));
        }
        let options = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let volumes = self
            .timed(self.docker.list_volumes(Some(options)))
            .await
            .map_err(|e| map_error("list volumes", e))?;
        for v in volumes.volumes.unwrap_or_default() {
            if !managed_here(&v.labels, &self.instance) {
                continue;
            }
            out.push(managed_from(ManagedKind::Volume, v.name.clone(), &v.labels));
        }
        out.sort_by(|a, b| (kind_order(&a.kind), &a.name).cmp(&(kind_order(&b.kind), &b.name)));
        Ok(out)
    }

    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError> {
        match m.kind {
            ManagedKind::Container => {
                let c = match self
                    .timed(self.docker.inspect_container(&m.name, None))
                    .await
                {
                    Ok(c) => c,
                    Err(e) if is_not_found(&e) => return Ok(()),
                    Err(e) => return Err(map_error("inspect container", e)),
                };
                let labels = c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.labels.clone())
                    .unwrap_or_default();
                check_managed_labels(&labels, m, &self.instance)?;
                let id = c.id.unwrap_or_else(|| m.name.clone());
                self.force_remove(&id).await
            }
            ManagedKind::Volume => {
                let v = match self.timed(self.docker.inspect_volume(&m.name)).await {
                    Ok(v) => v,
                    Err(e) if is_not_found(&e) => return Ok(()),
                    Err(e) => return Err(map_error("inspect volume", e)),
                };
                check_managed_labels(&v.labels, m, &self.instance)?;
                remove_volume_by_name(self, &m.name).await
            }
            ManagedKind::Instance => Err(BackendError::Permanent(format!(
                "{} is a control-plane instance, not a Docker object",
                m.name
            ))),
        }
    }

    /// The last 2000 lines of the container's stdout and stderr, capped at
    /// [`super::MAX_CONSOLE_BYTES`] (the newest bytes are kept).
    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        check_ref(ws)?;
        let id = match self.lookup_container(ws).await? {
            Lookup::Owned(c) => c.id.clone().unwrap_or_else(|| ws.container_name()),
            Lookup::Absent | Lookup::Foreign => {
                return Err(BackendError::Permanent(format!(
                    "workspace container {} does not exist",
                    ws.container_name()
                )));
            }
        };
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: "2000".to_string(),
            ..Default::default()
        };
        let read = async {
            let mut out: Vec<u8> = Vec::new();
            let mut s = self.docker.logs(&id, Some(options));
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk?.into_bytes());
                if out.len() > 2 * super::MAX_CONSOLE_BYTES {
                    out.drain(..out.len() - super::MAX_CONSOLE_BYTES);
                }
            }
            Ok::<_, DockerError>(out)
        };
        let mut out = bounded(self.call_timeout, read)
            .await
            .map_err(|e| map_error("read container logs", e))?;
        if out.len() > super::MAX_CONSOLE_BYTES {
            out.drain(..out.len() - super::MAX_CONSOLE_BYTES);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

async fn remove_volume_by_name(backend: &DockerBackend, name: &str) -> Result<(), BackendError> {
    match backend
        .timed(
            backend
                .docker
                .remove_volume(name, None::<RemoveVolumeOptions>),
        )
        .await
    {
        Ok(()) => {
            tracing::info!(volume = %name, "removed config volume");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        // In use: a container is still going away (or a stray holds it); retry later.
        Err(e) if status_of(&e) == Some(409) => Err(BackendError::Transient(format!(
            "volume {name} is still in use"
        ))),
        Err(e) => Err(map_error("remove volume", e)),
    }
}

fn kind_order(k: &ManagedKind) -> u8 {
    match k {
        ManagedKind::Container => 0,
        ManagedKind::Volume => 1,
        ManagedKind::Instance => 2,
    }
}

fn managed_from(kind: ManagedKind, name: String, labels: &HashMap<String, String>) -> Managed {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Managed {
        kind,
        name,
        uid: get(LABEL_UID),
        namespace: get(LABEL_NAMESPACE),
        workspace: get(LABEL_NAME),
        attempt: String::new(),
    }
}

fn check_managed_labels(
    labels: &HashMap<String, String>,
    m: &Managed,
    instance: &str,
) -> Result<(), BackendError> {
    let managed = managed_here(labels, instance);
    let same_uid = labels.get(LABEL_UID).map(String::as_str).unwrap_or("") == m.uid;
    if managed && same_uid {
        Ok(())
    } else {
        Err(BackendError::Permanent(format!(
            "refusing to remove {}: it does not carry the managed labels it was listed with",
            m.name
        )))
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

fn presence_of(c: &ContainerInspectResponse, fallback_id: &str) -> Presence {
    let container_id = c.id.clone().unwrap_or_else(|| fallback_id.to_string());
    let state = c.state.clone().unwrap_or_default();
    let running = state.running.unwrap_or(false) && !state.restarting.unwrap_or(false);
    if running {
        Presence::Running {
            container_id,
            host_url: host_url(c),
            started_at: state.started_at.filter(|s| !s.is_empty()),
            attempt: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.as_ref())
                .and_then(|l| l.get(LABEL_ATTEMPT))
                .cloned(),
        }
    } else {
        Presence::Stopped {
            container_id,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
        }
    }
}

/// `http://<ip>:<port>` of the published agent port, from inspect.
fn host_url(c: &ContainerInspectResponse) -> Option<String> {
    let bindings = c
        .network_settings
        .as_ref()?
        .ports
        .as_ref()?
        .get(AGENT_PORT)?
        .as_ref()?;
    bindings.iter().find_map(|b| {
        let port = b
            .host_port
            .as_deref()
            .filter(|p| !p.is_empty() && *p != "0")?;
        let ip = match b.host_ip.as_deref() {
            None | Some("") | Some("0.0.0.0") => "127.0.0.1",
            Some(ip) => ip,
        };
        if ip.contains(':') {
            Some(format!("http://[{ip}]:{port}"))
        } else {
            Some(format!("http://{ip}:{port}"))
        }
    })
}

/// Env as the engine will see it: names checked, later duplicates win, sorted by name.
fn normalized_env(env: &[(String, String)]) -> Result<Vec<(String, String)>, BackendError> {
    let mut map = BTreeMap::new();
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(BackendError::Permanent(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(BackendError::Permanent(format!(
                "environment variable {k} contains a NUL byte"
            )));
        }
        map.insert(k.clone(), v.clone());
    }
    Ok(map.into_iter().collect())
}

fn limits(spec: &StartSpec) -> Result<Limits, BackendError> {
    let memory_bytes = match spec.effective_memory_mib() {
        None => None,
        Some(mib) if mib > 0 && mib <= i64::MAX / MIB => Some(mib * MIB),
        Some(mib) => {
            return Err(BackendError::Permanent(format!(
                "invalid memory limit {mib} MiB"
            )));
        }
    };
    let nano_cpus = match spec.effective_cpus() {
        None => None,
        Some(cpus) if cpus.is_finite() && cpus > 0.0 && cpus <= 4096.0 => {
            // Bounded above, so the cast cannot saturate.
            Some((cpus * 1e9).round() as i64)
        }
        Some(cpus) => {
            return Err(BackendError::Permanent(format!("invalid CPU limit {cpus}")));
        }
    };
    Ok(Limits {
        memory_bytes,
        nano_cpus,
    })
}

/// sha256 over everything that requires a new container when it changes.
fn spec_hash(spec: &StartSpec, env: &[(String, String)], limits: Limits, network: &str) -> String {
    fn field(h: &mut Sha256, tag: &str, value: &[u8]) {
        h.update(tag.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
    }
    let mut h = Sha256::new();
    field(&mut h, "version", SPEC_HASH_VERSION.as_bytes());
    field(&mut h, "image", spec.image.as_bytes());
    for (k, v) in env {
        field(&mut h, "env.name", k.as_bytes());
        field(&mut h, "env.value", v.as_bytes());
    }
    field(&mut h, "tier", &spec.tier.number().to_be_bytes());
    field(
        &mut h,
        "memory",
        &limits.memory_bytes.unwrap_or(0).to_be_bytes(),
    );
    field(&mut h, "cpus", &limits.nano_cpus.unwrap_or(0).to_be_bytes());
    if spec.tier != Tier::Sandboxed
        && let Some((dir, read_only)) = &spec.workspace_dir
    {
        field(&mut h, "workspace_dir", dir.to_string_lossy().as_bytes());
        field(&mut h, "workspace_ro", &[u8::from(*read_only)]);
    }
    for host in &spec.extra_hosts {
        field(&mut h, "extra_host", host.as_bytes());
    }
    field(&mut h, "network", network.as_bytes());
    hex::encode(h.finalize())
}

/// Replaces every env value of 4+ bytes in `message` (engine errors may echo the request).
fn redact(message: &str, env: &[(String, String)]) -> String {
    let mut values: Vec<&str> = env
        .iter()
        .map(|(_, v)| v.as_str())
        .filter(|v| v.len() >= 4)
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_string();
    for v in values {
        out = out.replace(v, "<redacted>");
    }
    out
}

/// Tar of the config files (parents created as needed, modes from the files, CRLF→LF for scripts),
/// or None when there are no files. Later duplicates of a path win.
fn config_tar(files: &[ConfigFile]) -> Result<Option<Vec<u8>>, BackendError> {
    Ok(config_payload(files)?.map(|p| p.tar))
}

/// The config files both as a tar for the archive API and as entries for a direct write into the
/// volume's directory ([`volume_dir`]); the same validation and normalisation for both.
struct ConfigPayload {
    tar: Vec<u8>,
    entries: Vec<volume_dir::Entry>,
}

fn config_payload(files: &[ConfigFile]) -> Result<Option<ConfigPayload>, BackendError> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut last: BTreeMap<&str, &ConfigFile> = BTreeMap::new();
    for f in files {
        validate_file_path(&f.path)
            .map_err(|e| BackendError::Permanent(format!("invalid config file path: {e}")))?;
        last.insert(f.path.as_str(), f);
    }
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut tar = TarBuilder::new(mtime);
    let mut entries = Vec::with_capacity(last.len());
    for f in files {
        // Keep the caller's order but write each path once, with its last content.
        if last
            .get(f.path.as_str())
            .is_some_and(|l| std::ptr::eq(*l, f))
        {
            let content = normalize_line_endings(&f.path, &f.content);
            tar.file(&f.path, f.mode, &content)?;
            entries.push(volume_dir::Entry {
                path: f.path.clone(),
                mode: f.mode,
                content,
            });
        }
    }
    Ok(Some(ConfigPayload {
        tar: tar.finish(),
        entries,
    }))
}

/// Minimal in-memory tar writer (ustar headers, PAX records for long paths), regular files and
/// directories only, owned by 0:0. Parent directories are added automatically (0755).
pub(crate) struct TarBuilder {
    buf: Vec<u8>,
    mtime: u64,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl TarBuilder {
    pub(crate) fn new(mtime: u64) -> Self {
        Self {
            buf: Vec::new(),
            mtime,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    /// Adds a directory entry (and its parents); `path` is relative, without trailing "/".
    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> Result<(), BackendError> {
        if self.dirs.contains(path) {
            return Ok(());
        }
        if self.files.contains(path) {
            return Err(BackendError::Permanent(format!(
                "{path} is both a file and a directory"
            )));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        self.entry(&format!("{path}/"), b'5', mode, &[])?;
        self.dirs.insert(path.to_string());
        Ok(())
    }

    /// Adds a regular file (and its parent directories).
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), BackendError> {
        if self.dirs.contains(path) {
            return Err(BackendError::Permanent(format!(
                "{path} is both a file and a directory"
            )));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        self.entry(path, b'0', mode, data)?;
        self.files.insert(path.to_string());
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&[0u8; 1024]);
        self.buf
    }

    fn entry(&mut self, path: &str, kind: u8, mode: u32, data: &[u8]) -> Result<(), BackendError> {
        let (prefix, name) = match ustar_split(path) {
            Some(split) => split,
            None => {
                let record = pax_record("path", path);
                let header = tar_header(
                    "",
                    "././@PaxHeader",
                    b'x',
                    0o644,
                    record.len() as u64,
                    self.mtime,
                )?;
                self.buf.extend_from_slice(&header);
                push_padded(&mut self.buf, &record);
                // The ustar name is ignored by readers that understand the PAX path.
                ("", truncate_utf8(path, 100))
            }
        };
        let header = tar_header(
            prefix,
            name,
            kind,
            mode & 0o7777,
            data.len() as u64,
            self.mtime,
        )?;
        self.buf.extend_from_slice(&header);
        push_padded(&mut self.buf, data);
        Ok(())
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Splits a path into ustar (prefix ≤ 155, name ≤ 100) at a "/", if it fits.
fn ustar_split(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    path.char_indices()
        .filter(|(_, c)| *c == '/')
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= 155 && !name.is_empty() && name.len() <= 100)
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    // "<len> <key>=<value>\n" where <len> counts the whole record including its own digits.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

fn push_padded(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(data);
    let rem = data.len() % 512;
    if rem != 0 {
        buf.resize(buf.len() + 512 - rem, 0);
    }
}

fn write_octal(field: &mut [u8], value: u64) -> Result<(), BackendError> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        return Err(BackendError::Permanent(format!(
            "value {value} does not fit a tar header field"
        )));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

fn tar_header(
    prefix: &str,
    name: &str,
    kind: u8,
    mode: u32,
    size: u64,
    mtime: u64,
) -> Result<[u8; 512], BackendError> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    write_octal(&mut h[100..108], u64::from(mode))?;
    write_octal(&mut h[108..116], 0)?;
    write_octal(&mut h[116..124], 0)?;
    write_octal(&mut h[124..136], size)?;
    write_octal(&mut h[136..148], mtime)?;
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let chk = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(chk.as_bytes());
    Ok(h)
}

/// A process-unique suffix for helper container names.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(std::process::id().to_be_bytes());
    h.update(nanos.to_be_bytes());
    h.update(n.to_be_bytes());
    hex::encode(&h.finalize()[..5])
}

/// Runs `fut` for at most `limit`; running out of time is a request timeout.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, DockerError>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(DockerError::RequestTimeoutError),
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &DockerError) -> bool {
    status_of(e) == Some(404)
}

fn is_removal_in_progress(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 409, message }
        if message.to_ascii_lowercase().contains("already in progress"))
}

/// Maps a bollard error: unreachable engine, timeouts and 5xx are Transient; everything else is
/// Permanent.
pub(crate) fn map_error(op: &str, e: DockerError) -> BackendError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let message = message.trim();
            if status_code >= 500 {
                BackendError::Transient(format!("{op}: HTTP {status_code}: {message}"))
            } else {
                BackendError::Permanent(format!("{op}: {message} (HTTP {status_code})"))
            }
        }
        DockerError::RequestTimeoutError => {
            BackendError::Transient(format!("{op}: the engine did not answer in time"))
        }
        e @ (DockerError::HyperResponseError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::IOError { .. }
        | DockerError::SocketNotFoundError(_)) => BackendError::Transient(format!("{op}: {e}")),
        other => BackendError::Permanent(format!("{op}: {other}")),
    }
}

/// Like [`map_error`] for container create: a 404 about the image is ImageMissing, and env values
/// never reach the message.
pub(crate) fn map_create_error(
    e: DockerError,
    image: &str,
    env: &[(String, String)],
) -> BackendError {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.to_ascii_lowercase().contains("image") => {
            BackendError::ImageMissing(image.to_string())
        }
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => map_error(
            "create container",
            DockerError::DockerResponseServerError {
                status_code,
                message: redact(&message, env),
            },
        ),
        other => map_error("create container", other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ensure_image_for;
    use bollard::query_parameters::{
        DownloadFromContainerOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptions,
    };
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    // ---- pure parts -------------------------------------------------------------------------

    /// One tar entry as read back: (path, typeflag, mode, content).
    type Entry = (String, u8, u32, Vec<u8>);

    fn octal(field: &[u8]) -> u64 {
        let s: String = field
            .iter()
            .take_while(|b| **b != 0 && **b != b' ')
            .map(|b| *b as char)
            .collect();
        u64::from_str_radix(s.trim(), 8).unwrap_or(0)
    }

    fn cstr(field: &[u8]) -> String {
        let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
        String::from_utf8_lossy(&field[..end]).into_owned()
    }

    /// Minimal tar reader (ustar + PAX path) for checking what we write and what Docker returns.
    fn read_tar(bytes: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut pax_path: Option<String> = None;
        let mut off = 0;
        while off + 512 <= bytes.len() {
            let h = &bytes[off..off + 512];
            if h.iter().all(|b| *b == 0) {
                break;
            }
            let stored: u64 = octal(&h[148..156]);
            let mut copy = [0u8; 512];
            copy.copy_from_slice(h);
            copy[148..156].copy_from_slice(b"        ");
            assert_eq!(
                stored,
                copy.iter().map(|b| u64::from(*b)).sum::<u64>(),
                "checksum"
            );
            let size = octal(&h[124..136]) as usize;
            let kind = h[156];
            let data = bytes[off + 512..off + 512 + size].to_vec();
            off += 512 + size.div_ceil(512) * 512;
            match kind {
                b'x' => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    for rec in text.lines() {
                        if let Some((_, kv)) = rec.split_once(' ')
                            && let Some(p) = kv.strip_prefix("path=")
                        {
                            pax_path = Some(p.to_string());
                        }
                    }
                }
                b'g' => {}
                _ => {
                    let prefix = cstr(&h[345..500]);
                    let name = cstr(&h[0..100]);
                    let path = pax_path.take().unwrap_or_else(|| {
                        if prefix.is_empty() {
                            name
                        } else {
                            format!("{prefix}/{name}")
                        }
                    });
                    out.push((path, kind, octal(&h[100..108]) as u32, data));
                }
            }
        }
        out
    }

    fn file(path: &str, content: &[u8], mode: u32) -> ConfigFile {
        ConfigFile {
            path: path.to_string(),
            content: content.to_vec(),
            mode,
        }
    }

    #[test]
    fn config_tar_has_parents_modes_and_normalised_scripts() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let longer = vec!["x".repeat(200); 5].join("/");
        let tar = config_tar(&[
            file(".auth_token", b"tok", 0o600),
            file("a/b/c.txt", b"hello", 0o644),
            file("run.sh", b"echo 1\r\n", 0o755),
            file("a/b/c.txt", b"second", 0o640),
            file(&long, b"split", 0o644),
            file(&longer, b"pax", 0o644),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(tar.len() % 512, 0);
        let entries = read_tar(&tar);
        let find = |p: &str| entries.iter().find(|e| e.0 == p).cloned();
        assert_eq!(
            find(".auth_token"),
            Some((".auth_token".into(), b'0', 0o600, b"tok".to_vec()))
        );
        assert_eq!(find("a/"), Some(("a/".into(), b'5', 0o755, vec![])));
        assert_eq!(find("a/b/"), Some(("a/b/".into(), b'5', 0o755, vec![])));
        assert_eq!(
            find("a/b/c.txt").map(|e| (e.2, e.3)),
            Some((0o640, b"second".to_vec()))
        );
        assert_eq!(entries.iter().filter(|e| e.0 == "a/b/c.txt").count(), 1);
        assert_eq!(find("run.sh").map(|e| e.3), Some(b"echo 1\n".to_vec()));
        assert_eq!(find(&long).map(|e| e.3), Some(b"split".to_vec()));
        assert_eq!(find(&longer).map(|e| e.3), Some(b"pax".to_vec()));
        // Parents come before children.
        let pos = |p: &str| entries.iter().position(|e| e.0 == p).unwrap();
        assert!(pos("a/") < pos("a/b/") && pos("a/b/") < pos("a/b/c.txt"));

        assert_eq!(config_tar(&[]).unwrap(), None);
        assert!(config_tar(&[file("../x", b"", 0o644)]).is_err());
        assert!(config_tar(&[file("a", b"", 0o644), file("a/b", b"", 0o644)]).is_err());
        assert!(config_tar(&[file("a/b", b"", 0o644), file("a", b"", 0o644)]).is_err());
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for n in [1usize, 80, 89, 90, 95, 990, 995, 4000] {
            let rec = pax_record("path", &"p".repeat(n));
            let (len, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), rec.len(), "n={n}");
        }
    }

    #[test]
    fn docker_errors_are_classified() {
        let server = |status_code: u16, message: &str| DockerError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        let missing = map_create_error(server(404, "No such image: nope:1"), "nope:1", &[]);
        assert!(matches!(&missing, BackendError::ImageMissing(i) if i == "nope:1"));
        assert_eq!(missing.category(), "ImageMissing");
        assert!(
            map_create_error(server(404, "network x not found"), "i", &[]).category()
                == "Permanent"
        );
        assert!(map_error("x", server(500, "boom")).is_transient());
        assert!(map_error("x", server(503, "busy")).is_transient());
        assert_eq!(map_error("x", server(400, "bad")).category(), "Permanent");
        assert_eq!(
            map_error("x", server(409, "conflict")).category(),
            "Permanent"
        );
        assert!(map_error("x", DockerError::RequestTimeoutError).is_transient());
        assert!(map_error("x", DockerError::SocketNotFoundError("/s".into())).is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(map_error("x", DockerError::from(io)).is_transient());
        assert!(is_removal_in_progress(&server(
            409,
            "removal of container abc is already in progress"
        )));

        // Env values never reach an error message.
        let env = vec![("API_KEY".to_string(), "sk-supersecret".to_string())];
        let e = map_create_error(
            server(400, "invalid env API_KEY=sk-supersecret"),
            "img",
            &env,
        );
        assert!(!e.to_string().contains("sk-supersecret"), "{e}");
        assert!(e.to_string().contains("<redacted>"));
    }

    fn base_spec(uid: &str) -> StartSpec {
        StartSpec {
            workspace: WorkspaceRef {
                uid: uid.to_string(),
                namespace: "default".to_string(),
                name: "alpha".to_string(),
                instance_id: None,
            },
            runtime: "echo".to_string(),
            image: "img:1".to_string(),
            env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            tier: Tier::Standard,
            memory_mib: None,
            cpus: None,
            files: vec![],
            workspace_dir: None,
            extra_hosts: vec![],
            platform: None,
        }
    }

    #[test]
    fn spec_hash_tracks_what_needs_a_new_container() {
        let hash = |s: &StartSpec| {
            let env = normalized_env(&s.env).unwrap();
            spec_hash(s, &env, limits(s).unwrap(), "net")
        };
        let a = base_spec("3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab");
        let base = hash(&a);
        // Env order does not matter; files do not matter.
        let mut b = a.clone();
        b.env.reverse();
        b.files.push(file("x", b"y", 0o644));
        assert_eq!(hash(&b), base);
        for change in [
            |s: &mut StartSpec| s.image = "img:2".into(),
            |s: &mut StartSpec| s.env[0].1 = "3".into(),
            |s: &mut StartSpec| s.tier = Tier::PrivilegedLite,
            |s: &mut StartSpec| s.memory_mib = Some(1024),
            |s: &mut StartSpec| s.cpus = Some(0.5),
            |s: &mut StartSpec| s.workspace_dir = Some((PathBuf::from("/w"), true)),
            |s: &mut StartSpec| s.extra_hosts.push("h:1.2.3.4".into()),
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert_ne!(hash(&c), base);
        }
    }

    #[test]
    fn env_and_limits_are_checked() {
        let env = normalized_env(&[
            ("B".into(), "1".into()),
            ("A".into(), "x".into()),
            ("B".into(), "2".into()),
        ])
        .unwrap();
        assert_eq!(
            env,
            vec![("A".into(), "x".into()), ("B".into(), "2".into())]
        );
        assert!(normalized_env(&[("".into(), "1".into())]).is_err());
        assert!(normalized_env(&[("A=B".into(), "1".into())]).is_err());
        let mut s = base_spec("3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab");
        assert_eq!(
            limits(&s).unwrap(),
            Limits {
                memory_bytes: Some(512 * MIB),
                nano_cpus: Some(1_000_000_000)
            }
        );
        s.cpus = Some(1.5);
        assert_eq!(limits(&s).unwrap().nano_cpus, Some(1_500_000_000));
        s.cpus = Some(f64::NAN);
        assert!(limits(&s).is_err());
        s.cpus = None;
        s.memory_mib = Some(0);
        assert!(limits(&s).is_err());
        s.memory_mib = None;
        s.tier = Tier::Sandboxed;
        assert_eq!(
            limits(&s).unwrap(),
            Limits {
                memory_bytes: None,
                nano_cpus: None
            }
        );
    }

    // ---- real Docker ------------------------------------------------------------------------

    /// One test's world: a unique 8-hex prefix for every uid (so names are `ws-<prefix>....`),
    /// its own network and image repository, all removed by `cleanup`.
    struct TestEnv {
        docker: Docker,
        prefix: String,
        network: String,
        repo: String,
        image: String,
    }

    impl TestEnv {
        async fn new() -> Self {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let prefix = hex::encode(
                &Sha256::digest(format!(
                    "{}-{nanos}-{}",
                    std::process::id(),
                    unique_suffix()
                ))[..4],
            );
            let docker = Docker::connect_with_local_defaults()
                .unwrap()
                .negotiate_version()
                .await
                .unwrap();
            let repo = format!("molecule-test-{prefix}/sleep");
            let image = ensure_image_for(
                &docker,
                Path::new("/bin/sleep"),
                &repo,
                &["/molecule", "300"],
            )
            .await
            .unwrap();
            Self {
                docker,
                network: format!("molecule-test-{prefix}"),
                prefix,
                repo,
                image,
            }
        }

        async fn backend(&self) -> DockerBackend {
            DockerBackend::connect(&self.network, &self.prefix)
                .await
                .unwrap()
                .with_stop_timeout(Duration::from_secs(1))
        }

        fn ws(&self, n: u16) -> WorkspaceRef {
            WorkspaceRef {
                uid: format!("{}-{n:04x}-4abc-8def-0123456789ab", self.prefix),
                namespace: "team-a".to_string(),
                name: format!("agent-{n}"),
                instance_id: None,
            }
        }

        fn spec(&self, n: u16, tier: Tier) -> StartSpec {
            StartSpec {
                workspace: self.ws(n),
                runtime: "echo".to_string(),
                image: self.image.clone(),
                env: vec![
                    ("WORKSPACE_ID".into(), self.ws(n).uid),
                    ("SECRET".into(), "s3cr3t-value".into()),
                ],
                tier,
                memory_mib: None,
                cpus: None,
                files: vec![
                    file(".auth_token", b"token-123", 0o600),
                    file("a/b.txt", b"nested", 0o644),
                    file("run.sh", b"echo hi\r\n", 0o755),
                ],
                workspace_dir: None,
                extra_hosts: vec!["host.docker.internal:host-gateway".into()],
                platform: None,
            }
        }

        async fn cleanup(&self) {
            let name_filter = HashMap::from([("name", vec![format!("ws-{}", self.prefix)])]);
            let containers = self
                .docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&name_filter)
                        .build(),
                ))
                .await
                .unwrap_or_default();
            for c in containers {
                if let Some(id) = c.id {
                    let _ = self
                        .docker
                        .remove_container(
                            &id,
                            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                        )
                        .await;
                }
            }
            let volumes = self
                .docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&name_filter)
                        .build(),
                ))
                .await
                .map(|v| v.volumes.unwrap_or_default())
                .unwrap_or_default();
            for v in volumes {
                let _ = self
                    .docker
                    .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                    .await;
            }
            let _ = self.docker.remove_network(&self.network).await;
            let ref_filter = HashMap::from([("reference", vec![self.repo.clone()])]);
            let images = self
                .docker
                .list_images(Some(
                    ListImagesOptionsBuilder::default()
                        .filters(&ref_filter)
                        .build(),
                ))
                .await
                .unwrap_or_default();
            // By tag, never by id: identical content gives other tests' images the same id.
            let own = format!("{}:", self.repo);
            for tag in images
                .iter()
                .flat_map(|i| i.repo_tags.iter())
                .filter(|t| t.starts_with(&own))
            {
                let _ = self
                    .docker
                    .remove_image(tag, None::<RemoveImageOptions>, None)
                    .await;
            }
        }

        /// Files under /configs of a container, read through the archive API.
        async fn configs_of(&self, container: &str) -> Vec<Entry> {
            let chunks: Vec<_> = self
                .docker
                .download_from_container(
                    container,
                    Some(
                        DownloadFromContainerOptionsBuilder::default()
                            .path(CONFIG_MOUNT)
                            .build(),
                    ),
                )
                .collect()
                .await;
            let mut bytes = Vec::new();
            for c in chunks {
                bytes.extend_from_slice(&c.unwrap());
            }
            read_tar(&bytes)
        }

        async fn volume_exists(&self, name: &str) -> bool {
            self.docker.inspect_volume(name).await.is_ok()
        }

        async fn container(&self, name: &str) -> Option<ContainerInspectResponse> {
            self.docker.inspect_container(name, None).await.ok()
        }
    }

    /// Runs `body` against a fresh [`TestEnv`] and always cleans up, even when it panics.
    async fn with_env<F, Fut>(body: F)
    where
        F: FnOnce(Arc<TestEnv>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let env = Arc::new(TestEnv::new().await);
        let outcome = tokio::spawn(body(env.clone())).await;
        env.cleanup().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    fn find<'a>(entries: &'a [Entry], path: &str) -> Option<&'a Entry> {
        entries.iter().find(|e| e.0 == path)
    }

    #[tokio::test]
    async fn workspace_lifecycle_on_real_docker() {
        with_env(|env| async move {
            let backend = env.backend().await;
            let ws = env.ws(1);
            let spec = env.spec(1, Tier::Standard);
            assert_eq!(backend.inspect(&ws).await.unwrap(), Presence::Absent);

            let started = backend.ensure_started(&spec).await.unwrap();
            let c = env.container(&ws.container_name()).await.unwrap();
            assert_eq!(c.id.as_deref(), Some(started.container_id.as_str()));
            assert_eq!(c.image.as_deref(), Some(started.image_id.as_str()));
            assert_eq!(c.state.as_ref().and_then(|s| s.running), Some(true));
            let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap();
            assert_eq!(labels[LABEL_MANAGED], "true");
            assert_eq!(labels[LABEL_UID], ws.uid);
            assert_eq!(labels[LABEL_NAMESPACE], "team-a");
            assert_eq!(labels[LABEL_NAME], "agent-1");
            assert_eq!(labels[LABEL_SPEC_HASH].len(), 64);
            let env_list = c.config.as_ref().and_then(|c| c.env.clone()).unwrap();
            assert!(env_list.contains(&"SECRET=s3cr3t-value".to_string()));
            let host = c.host_config.clone().unwrap();
            assert_eq!(host.memory, Some(512 * MIB));
            assert_eq!(host.nano_cpus, Some(1_000_000_000));
            assert_eq!(
                host.restart_policy.and_then(|r| r.name),
                Some(RestartPolicyNameEnum::UNLESS_STOPPED)
            );
            assert_eq!(host.readonly_rootfs, Some(false));
            assert_eq!(
                host.extra_hosts,
                Some(vec!["host.docker.internal:host-gateway".to_string()])
            );
            let mounts = host.mounts.unwrap_or_default();
            assert_eq!(mounts.len(), 1);
            assert_eq!(mounts[0].source.as_deref(), Some(ws.volume_name().as_str()));
            assert_eq!(mounts[0].target.as_deref(), Some("/configs"));
            let networks = c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.clone())
                .unwrap();
            assert!(networks.contains_key(&env.network), "{networks:?}");
            let binding = c
                .network_settings
                .as_ref()
                .and_then(|n| n.ports.as_ref())
                .and_then(|p| p.get(AGENT_PORT).cloned().flatten())
                .and_then(|b| b.first().cloned())
                .unwrap();
            assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
            let port = binding.host_port.unwrap();
            assert!(port.parse::<u16>().unwrap() > 0);
            assert_eq!(started.host_url, format!("http://127.0.0.1:{port}"));

            // The files are in the volume, with their modes; scripts got LF endings.
            let files = env.configs_of(&started.container_id).await;
            let token = find(&files, "configs/.auth_token").unwrap();
            assert_eq!(
                (token.2 & 0o7777, token.3.as_slice()),
                (0o600, &b"token-123"[..])
            );
            assert_eq!(find(&files, "configs/a/b.txt").unwrap().3, b"nested");
            assert_eq!(find(&files, "configs/run.sh").unwrap().3, b"echo hi\n");

            match backend.inspect(&ws).await.unwrap() {
                Presence::Running {
                    container_id,
                    host_url,
                    started_at,
                    attempt,
                } => {
                    assert_eq!(
                        attempt,
                        Some(crate::backends::attempt_of(&spec.files)),
                        "the container carries its provision attempt"
                    );
                    assert_eq!(container_id, started.container_id);
                    assert_eq!(host_url.as_deref(), Some(started.host_url.as_str()));
                    assert!(started_at.is_some());
                }
                other => panic!("expected Running, got {other:?}"),
            }

            // Idempotent.
            let again = backend.ensure_started(&spec).await.unwrap();
            assert_eq!(again, started);

            // write_files on a running container; the file survives a recreate (same volume).
            backend
                .write_files(&ws, &[file("extra/notes.md", b"# hi\r\n", 0o640)])
                .await
                .unwrap();
            assert!(
                backend
                    .write_files(&ws, &[file("/abs", b"", 0o644)])
                    .await
                    .is_err()
            );

            // exec without a shell: /molecule is sleep.
            let ok = backend
                .exec(&ws, &["/molecule".into(), "0".into()])
                .await
                .unwrap();
            assert_eq!(ok.exit_code, 0);
            let bad = backend.exec(&ws, &["/molecule".into()]).await.unwrap();
            assert_eq!(bad.exit_code, 1);
            assert!(String::from_utf8_lossy(&bad.stderr).contains("missing operand"));

            // Changed env → new container, same volume.
            let mut changed = spec.clone();
            changed.env.push(("NEW".into(), "1".into()));
            let recreated = backend.ensure_started(&changed).await.unwrap();
            assert_ne!(recreated.container_id, started.container_id);
            assert!(env.container(&started.container_id).await.is_none());
            let files = env.configs_of(&recreated.container_id).await;
            let notes = find(&files, "configs/extra/notes.md").unwrap();
            assert_eq!(
                (notes.2 & 0o7777, notes.3.as_slice()),
                (0o640, &b"# hi\n"[..])
            );

            // Stop keeps container and volume.
            backend.stop(&ws).await.unwrap();
            match backend.inspect(&ws).await.unwrap() {
                Presence::Stopped { container_id, .. } => {
                    assert_eq!(container_id, recreated.container_id)
                }
                other => panic!("expected Stopped, got {other:?}"),
            }
            assert!(env.volume_exists(&ws.volume_name()).await);
            backend.stop(&ws).await.unwrap();
            // write_files into a stopped container.
            backend
                .write_files(&ws, &[file(".auth_token", b"token-456", 0o600)])
                .await
                .unwrap();
            let restarted = backend.ensure_started(&changed).await.unwrap();
            assert_eq!(restarted.container_id, recreated.container_id);
            assert!(matches!(
                backend.inspect(&ws).await.unwrap(),
                Presence::Running { .. }
            ));
            let files = env.configs_of(&restarted.container_id).await;
            assert_eq!(find(&files, "configs/.auth_token").unwrap().3, b"token-123");

            // Remove with the volume; twice is fine.
            backend.remove(&ws, true).await.unwrap();
            assert!(env.container(&ws.container_name()).await.is_none());
            assert!(!env.volume_exists(&ws.volume_name()).await);
            backend.remove(&ws, true).await.unwrap();
            backend.stop(&ws).await.unwrap();
            assert_eq!(backend.inspect(&ws).await.unwrap(), Presence::Absent);
        })
        .await;
    }

    #[tokio::test]
    async fn tiers_shape_the_host_config() {
        with_env(|env| async move {
            let backend = env.backend().await;
            let dir = tempfile::tempdir().unwrap();

            // Tier 1: read-only rootfs, tmpfs /tmp, no limits, no workspace dir, files still land.
            let mut t1 = env.spec(1, Tier::Sandboxed);
            t1.workspace_dir = Some((dir.path().to_path_buf(), false));
            let s1 = backend.ensure_started(&t1).await.unwrap();
            let host = env
                .container(&s1.container_id)
                .await
                .unwrap()
                .host_config
                .unwrap();
            assert_eq!(host.readonly_rootfs, Some(true));
            assert_eq!(
                host.tmpfs
                    .unwrap_or_default()
                    .get("/tmp")
                    .map(String::as_str),
                Some("size=64m,noexec")
            );
            assert!(host.memory.unwrap_or(0) == 0 && host.nano_cpus.unwrap_or(0) == 0);
            let mounts = host.mounts.unwrap_or_default();
            assert_eq!(mounts.len(), 1, "{mounts:?}");
            let files = env.configs_of(&s1.container_id).await;
            assert_eq!(find(&files, "configs/.auth_token").unwrap().3, b"token-123");

            // Tier 3 with a memory override and a read-only workspace dir.
            let mut t3 = env.spec(3, Tier::PrivilegedLite);
            t3.memory_mib = Some(1024);
            t3.workspace_dir = Some((dir.path().to_path_buf(), true));
            let s3 = backend.ensure_started(&t3).await.unwrap();
            let host = env
                .container(&s3.container_id)
                .await
                .unwrap()
                .host_config
                .unwrap();
            assert_eq!(host.memory, Some(1024 * MIB));
            let cpus = backend.host_cpus().await.unwrap();
            assert_eq!(host.nano_cpus, Some(cpus.min(2) * 1_000_000_000));
            let ws_mount = host
                .mounts
                .unwrap_or_default()
                .into_iter()
                .find(|m| m.target.as_deref() == Some(WORKSPACE_MOUNT))
                .unwrap();
            assert_eq!(ws_mount.typ, Some(MountType::BIND));
            assert_eq!(ws_mount.read_only, Some(true));
            assert_eq!(
                ws_mount.source.as_deref(),
                Some(dir.path().to_string_lossy().as_ref())
            );

            // Tier 4: docker socket, 4 GiB, 4 CPUs.
            let s4 = backend
                .ensure_started(&env.spec(4, Tier::FullHost))
                .await
                .unwrap();
            let host = env
                .container(&s4.container_id)
                .await
                .unwrap()
                .host_config
                .unwrap();
            assert_eq!(host.memory, Some(4096 * MIB));
            // Capped to the host's CPUs (this machine may have fewer than 4).
            assert_eq!(host.nano_cpus, Some(cpus.min(4) * 1_000_000_000));
            assert!(host.mounts.unwrap_or_default().iter().any(|m| {
                m.source.as_deref() == Some(DOCKER_SOCKET)
                    && m.target.as_deref() == Some(DOCKER_SOCKET)
            }));

            // Changing the tier recreates the container.
            let mut t4b = env.spec(4, Tier::Standard);
            t4b.files.clear();
            let s4b = backend.ensure_started(&t4b).await.unwrap();
            assert_ne!(s4b.container_id, s4.container_id);

            for n in [1, 3, 4] {
                backend.remove(&env.ws(n), true).await.unwrap();
            }
        })
        .await;
    }

    #[tokio::test]
    async fn managed_objects_are_listed_and_reaped_but_strangers_are_not() {
        with_env(|env| async move {
            let backend = env.backend().await;
            let ours = env.ws(1);
            backend
                .ensure_started(&env.spec(1, Tier::Standard))
                .await
                .unwrap();

            // A labelled stray volume (its workspace is gone).
            let stray = env.ws(2);
            env.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(stray.volume_name()),
                    labels: Some(workspace_labels(&stray, &env.prefix)),
                    ..Default::default()
                })
                .await
                .unwrap();
            // An unlabelled container that happens to carry a ws- name.
            let stranger = env.ws(3);
            env.docker
                .create_container(
                    Some(
                        CreateContainerOptionsBuilder::default()
                            .name(&stranger.container_name())
                            .build(),
                    ),
                    ContainerCreateBody {
                        image: Some(env.image.clone()),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();

            let prefix = format!("ws-{}", env.prefix);
            let listed: Vec<Managed> = backend
                .list_managed()
                .await
                .unwrap()
                .into_iter()
                .filter(|m| m.name.starts_with(&prefix))
                .collect();
            let expected = vec![
                Managed {
                    kind: ManagedKind::Container,
                    name: ours.container_name(),
                    uid: ours.uid.clone(),
                    namespace: "team-a".into(),
                    workspace: "agent-1".into(),
                    attempt: String::new(),
                },
                Managed {
                    kind: ManagedKind::Volume,
                    name: ours.volume_name(),
                    uid: ours.uid.clone(),
                    namespace: "team-a".into(),
                    workspace: "agent-1".into(),
                    attempt: String::new(),
                },
                Managed {
                    kind: ManagedKind::Volume,
                    name: stray.volume_name(),
                    uid: stray.uid.clone(),
                    namespace: "team-a".into(),
                    workspace: "agent-2".into(),
                    attempt: String::new(),
                },
            ];
            assert_eq!(listed, expected);

            backend.remove_managed(&expected[2]).await.unwrap();
            assert!(!env.volume_exists(&stray.volume_name()).await);
            backend.remove_managed(&expected[2]).await.unwrap();

            // The stranger is never touched.
            let fake = Managed {
                kind: ManagedKind::Container,
                name: stranger.container_name(),
                uid: stranger.uid.clone(),
                namespace: "team-a".into(),
                workspace: "agent-3".into(),
                attempt: String::new(),
            };
            assert_eq!(
                backend.remove_managed(&fake).await.unwrap_err().category(),
                "Permanent"
            );
            assert_eq!(backend.inspect(&stranger).await.unwrap(), Presence::Absent);
            backend.stop(&stranger).await.unwrap();
            backend.remove(&stranger, true).await.unwrap();
            assert!(
                backend
                    .write_files(&stranger, &[file("x", b"y", 0o644)])
                    .await
                    .is_err()
            );
            let err = backend
                .ensure_started(&env.spec(3, Tier::Standard))
                .await
                .unwrap_err();
            assert_eq!(err.category(), "Permanent", "{err}");
            assert!(env.container(&stranger.container_name()).await.is_some());

            // Reaping our own container and volume through the same path.
            backend.remove_managed(&expected[0]).await.unwrap();
            backend.remove_managed(&expected[1]).await.unwrap();
            assert!(env.container(&ours.container_name()).await.is_none());
            assert!(!env.volume_exists(&ours.volume_name()).await);
        })
        .await;
    }

    #[tokio::test]
    async fn direct_volume_writes_match_the_archive_api_and_never_follow_symlinks() {
        use std::os::unix::fs::MetadataExt;
        with_env(|env| async move {
            let sorted = |mut v: Vec<Entry>| {
                v.sort();
                v
            };
            // The same spec through both paths: the container sees the same tree.
            let direct = env.backend().await;
            let archive = env.backend().await.with_direct_volume_writes(false);
            let a = direct
                .ensure_started(&env.spec(1, Tier::Standard))
                .await
                .unwrap();
            let b = archive
                .ensure_started(&env.spec(2, Tier::Standard))
                .await
                .unwrap();
            assert_eq!(direct.config_writes().direct.load(Ordering::Relaxed), 1);
            assert_eq!(direct.config_writes().archive.load(Ordering::Relaxed), 0);
            assert_eq!(archive.config_writes().direct.load(Ordering::Relaxed), 0);
            assert_eq!(archive.config_writes().archive.load(Ordering::Relaxed), 1);
            let seen_a = sorted(env.configs_of(&a.container_id).await);
            assert_eq!(seen_a, sorted(env.configs_of(&b.container_id).await));
            let token = find(&seen_a, "configs/.auth_token").unwrap();
            assert_eq!(
                (token.2 & 0o7777, token.3.as_slice()),
                (0o600, &b"token-123"[..])
            );
            assert_eq!(find(&seen_a, "configs/run.sh").unwrap().3, b"echo hi\n");
            // Owned by the container's root, like the archive API's 0:0.
            let dir = env
                .docker
                .inspect_volume(&env.ws(1).volume_name())
                .await
                .unwrap()
                .mountpoint;
            let root = std::fs::metadata(&dir).unwrap();
            let nested = std::fs::metadata(Path::new(&dir).join("a/b.txt")).unwrap();
            assert_eq!((nested.uid(), nested.gid()), (root.uid(), root.gid()));

            // An earlier container left a symlink to a host file where the token goes: the
            // direct path refuses it, the archive API writes inside the container's view, and
            // the host file is untouched.
            let victim = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(victim.path(), "host file").unwrap();
            direct.stop(&env.ws(1)).await.unwrap();
            std::fs::remove_file(Path::new(&dir).join(".auth_token")).unwrap();
            std::os::unix::fs::symlink(victim.path(), Path::new(&dir).join(".auth_token")).unwrap();
            let mut changed = env.spec(1, Tier::Standard);
            changed.files[0].content = b"token-456".to_vec();
            direct.ensure_started(&changed).await.unwrap();
            assert_eq!(std::fs::read(victim.path()).unwrap(), b"host file");
            let token_path = Path::new(&dir).join(".auth_token");
            let meta = std::fs::symlink_metadata(&token_path).unwrap();
            assert!(meta.file_type().is_file(), "{meta:?}");
            assert_eq!(std::fs::read(&token_path).unwrap(), b"token-456");
            assert_eq!(direct.config_writes().archive.load(Ordering::Relaxed), 1);
            // Direct writes stay on for the next workspace.
            direct
                .ensure_started(&env.spec(3, Tier::Standard))
                .await
                .unwrap();
            assert_eq!(direct.config_writes().direct.load(Ordering::Relaxed), 2);
        })
        .await;
    }

    #[tokio::test]
    async fn files_before_first_start_and_missing_images() {
        with_env(|env| async move {
            // No container yet: write_files needs the helper image.
            let ws = env.ws(1);
            let plain = env.backend().await;
            let err = plain
                .write_files(&ws, &[file("x", b"y", 0o644)])
                .await
                .unwrap_err();
            assert_eq!(err.category(), "Permanent");

            let backend = env.backend().await.with_helper_image(env.image.clone());
            backend
                .write_files(&ws, &[file("pre/seed.txt", b"seeded", 0o600)])
                .await
                .unwrap();
            // The helper is gone; the volume is labelled and holds the file.
            let helpers = backend.labelled_containers(&ws).await.unwrap();
            assert!(helpers.is_empty(), "{helpers:?}");
            let vol = env.docker.inspect_volume(&ws.volume_name()).await.unwrap();
            assert_eq!(vol.labels.get(LABEL_UID), Some(&ws.uid));

            let started = backend
                .ensure_started(&env.spec(1, Tier::Standard))
                .await
                .unwrap();
            let files = env.configs_of(&started.container_id).await;
            let seed = find(&files, "configs/pre/seed.txt").unwrap();
            assert_eq!(
                (seed.2 & 0o7777, seed.3.as_slice()),
                (0o600, &b"seeded"[..])
            );

            // A missing image is ImageMissing and creates no container.
            let mut missing = env.spec(2, Tier::Standard);
            missing.image = format!("molecule-test-{}/absent:nope", env.prefix);
            let err = backend.ensure_started(&missing).await.unwrap_err();
            assert!(
                matches!(&err, BackendError::ImageMissing(i) if *i == missing.image),
                "{err}"
            );
            assert!(!err.to_string().contains("s3cr3t"));
            assert_eq!(backend.inspect(&env.ws(2)).await.unwrap(), Presence::Absent);

            // A bad workspace dir is Permanent and its message carries no env value.
            let mut bad = env.spec(5, Tier::Standard);
            bad.workspace_dir = Some((PathBuf::from("/nonexistent/molecule-test"), false));
            let err = backend.ensure_started(&bad).await.unwrap_err();
            assert_eq!(err.category(), "Permanent", "{err}");
            assert!(!err.to_string().contains("s3cr3t"), "{err}");

            let net = backend.ensure_network().await.unwrap();
            assert_eq!(net.name, env.network);
            assert!(matches!(net.gateway_ip, Some(IpAddr::V4(_))), "{net:?}");
        })
        .await;
    }
}
