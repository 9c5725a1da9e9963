//! Workspace runtime backends: the [`WorkspaceBackend`] trait that controllers drive, the shared
//! value types (identity, tiers, config files, presence) and the pure helpers every backend uses.
//! `docker` is the local Docker engine (bollard); `controlplane` provisions EC2 instances through
//! the control-plane service and implements the same trait. `events` narrows Docker's event
//! stream to managed objects; `http` is the bounded HTTP client the control plane and the A2A
//! proxy use.

pub mod controlplane;
pub mod docker;
pub mod events;
pub mod files_dir;
pub mod kubernetes;
pub mod metered;
pub mod simulated;
pub mod unavailable;
pub mod volume_dir;

use std::path::PathBuf;
use std::sync::Arc;

/// Identity of one workspace's actual state: from the Workspace record's metadata, plus the
/// handle a backend handed out and the record keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The control plane's instance id as recorded in `status.instanceId` (ADR 0035). Only the
    /// control-plane backend reads it; Docker derives everything from the uid. `None` means no
    /// instance is known: stop is a no-op and the workspace is not running.
    pub instance_id: Option<String>,
}

impl WorkspaceRef {
    /// First 12 hex chars of the uid with dashes removed, e.g. "3f2a9c1e7b4d".
    ///
    /// Only ASCII hex digits are kept (lower-cased), so a malformed uid can never put anything
    /// but `[0-9a-f]` into a container or volume name.
    pub fn id12(&self) -> String {
        self.uid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .take(12)
            .collect()
    }

    /// "ws-<id12>"
    pub fn container_name(&self) -> String {
        format!("ws-{}", self.id12())
    }

    /// "ws-<id12>-configs"
    pub fn volume_name(&self) -> String {
        format!("ws-{}-configs", self.id12())
    }

    /// The uid as it goes into the names of the `/workspace` and session volumes: its hex
    /// digits and dashes only, lower-cased (ADR 0048).
    fn uid_for_names(&self) -> String {
        self.uid
            .chars()
            .filter(|c| c.is_ascii_hexdigit() || *c == '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    }

    /// "ws-<uid>-workspace": the persistent `/workspace` of a workspace without a host
    /// directory (the original platform names it by the full id).
    pub fn workspace_volume_name(&self) -> String {
        format!("ws-{}-workspace", self.uid_for_names())
    }

    /// "ws-<uid>-claude-sessions": a claude-code workspace's session directory.
    pub fn sessions_volume_name(&self) -> String {
        format!("ws-{}-claude-sessions", self.uid_for_names())
    }
}

/// One file to place under /configs (path relative, no "..", no leading "/"), with its mode.
///
/// `Debug` prints the length of the content, never the content (it may be a token).
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .field("len", &self.content.len())
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish()
    }
}

/// Resource tier.
///
/// 1 sandboxed (read-only rootfs, tmpfs /tmp 64m noexec, only /configs mounted, no workspace
/// dir, no default limits), 2 standard (512 MiB, 1 CPU) — the default, 3 privileged-lite
/// (2048 MiB, 2 CPU), 4 full host (4096 MiB, 4 CPU, docker socket mounted). Memory/CPU limits are
/// overridable through [`StartSpec`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tier {
    Sandboxed,
    #[default]
    Standard,
    PrivilegedLite,
    FullHost,
}

impl Tier {
    /// Tier from its number (1-4); anything else is `None`.
    pub fn from_number(n: i32) -> Option<Tier> {
        match n {
            1 => Some(Tier::Sandboxed),
            2 => Some(Tier::Standard),
            3 => Some(Tier::PrivilegedLite),
            4 => Some(Tier::FullHost),
            _ => None,
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Tier::Sandboxed => 1,
            Tier::Standard => 2,
            Tier::PrivilegedLite => 3,
            Tier::FullHost => 4,
        }
    }

    /// Default memory limit in MiB; `None` = no limit (tier 1 has no default limit).
    pub fn memory_mib(self) -> Option<i64> {
        match self {
            Tier::Sandboxed => None,
            Tier::Standard => Some(512),
            Tier::PrivilegedLite => Some(2048),
            Tier::FullHost => Some(4096),
        }
    }

    /// Default CPU limit; `None` = no limit.
    pub fn cpus(self) -> Option<f64> {
        match self {
            Tier::Sandboxed => None,
            Tier::Standard => Some(1.0),
            Tier::PrivilegedLite => Some(2.0),
            Tier::FullHost => Some(4.0),
        }
    }
}

/// Everything a backend needs to bring one workspace up.
///
/// `Debug` prints env names and file paths only: env values are secrets.
#[derive(Clone)]
pub struct StartSpec {
    pub workspace: WorkspaceRef,
    /// The runtime name (echo, claude-code, ...): the control plane picks its machine image by it.
    pub runtime: String,
    /// The image to run; empty means the backend's default for `runtime` (control plane only).
    pub image: String,
    pub env: Vec<(String, String)>,
    pub tier: Tier,
    /// Overrides of the tier's memory limit (MiB).
    pub memory_mib: Option<i64>,
    /// Overrides of the tier's CPU limit.
    pub cpus: Option<f64>,
    /// Written into the config volume BEFORE the container starts.
    pub files: Vec<ConfigFile>,
    /// Host directory bind-mounted at /workspace, and whether read-only (ignored for tier 1).
    pub workspace_dir: Option<(PathBuf, bool)>,
    /// e.g. "host.docker.internal:host-gateway"
    pub extra_hosts: Vec<String>,
    /// Platform of the image (`MOLECULE_IMAGE_PLATFORM`, ADR 0030), for the create.
    pub platform: Option<String>,
}

impl std::fmt::Debug for StartSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("StartSpec")
            .field("workspace", &self.workspace)
            .field("runtime", &self.runtime)
            .field("image", &self.image)
            .field("env", &env_names)
            .field("tier", &self.tier)
            .field("memory_mib", &self.memory_mib)
            .field("cpus", &self.cpus)
            .field("files", &self.files)
            .field("workspace_dir", &self.workspace_dir)
            .field("extra_hosts", &self.extra_hosts)
            .field("platform", &self.platform)
            .finish()
    }
}

impl StartSpec {
    /// Effective memory limit (override, else tier default), in MiB.
    pub fn effective_memory_mib(&self) -> Option<i64> {
        self.memory_mib.or(self.tier.memory_mib())
    }

    /// Effective CPU limit (override, else tier default).
    pub fn effective_cpus(&self) -> Option<f64> {
        self.cpus.or(self.tier.cpus())
    }
}

/// Result of a successful [`WorkspaceBackend::ensure_started`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// What runs: the Docker container id, or the control plane's instance id.
    pub container_id: String,
    /// Where the agent's A2A port is reachable: for Docker its published host port
    /// (http://127.0.0.1:<port>), for the control plane http://<private ip>:<agent port>.
    pub host_url: String,
    /// The local image id (Docker); empty when the backend does not know it.
    pub image_id: String,
}

/// What exists for a workspace. Running/Stopped/Absent are facts; a transient engine error is an
/// Err, never "Absent". `container_id` is the Docker container id, or for the control plane
/// the instance id; a control-plane instance that is still booting (`pending`) is Running.
#[derive(Clone, Debug, PartialEq)]
pub enum Presence {
    Running {
        container_id: String,
        host_url: Option<String>,
        started_at: Option<String>,
        /// The provision attempt that created it ([`attempt_of`] of its files), when the
        /// backend can tell: lets the controller adopt a container whose id it never recorded.
        attempt: Option<String>,
        /// Why it is not serving yet, when the platform says (a Pending Pod's reason, a
        /// crash loop); `None` on Docker and the control plane.
        waiting: Option<Waiting>,
    },
    Stopped {
        container_id: String,
        exit_code: Option<i64>,
        oom_killed: bool,
        /// Why it stopped, when the platform says (an evicted or failed Pod).
        reason: Option<Waiting>,
    },
    Absent,
}

/// A platform's own reason for a workspace that exists but does not serve (Kubernetes: the
/// Pod's reason, mapped onto a fixed set of condition reasons, and its message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagedKind {
    /// A container, or a Pod.
    Container,
    /// A volume, or a PersistentVolumeClaim.
    Volume,
    /// A control-plane instance (`name` is its instance id).
    Instance,
    /// A workspace's Service (Kubernetes).
    Service,
    /// A workspace's Secret (Kubernetes).
    Secret,
}

/// One object carrying the managed label, with the workspace labels it carries ("" if missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Managed {
    pub kind: ManagedKind,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub workspace: String,
    /// For instances: the provision attempt that created it — the first 16 hex digits of the
    /// sha256 of the token it was given, i.e. of `status.tokenHash` at that time. "" otherwise.
    pub attempt: String,
}

/// Output of [`WorkspaceBackend::exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine could not be reached / timed out / 5xx: retry later.
    #[error("container engine unavailable: {0}")]
    Transient(String),
    /// The request itself is wrong (bad image, bad path, conflict that will not heal by retrying).
    #[error("{0}")]
    Permanent(String),
    #[error("image {0} is not present locally and no registry is reachable")]
    ImageMissing(String),
    /// A remote service (the control plane) answered with an error status. `detail` holds at
    /// most 512 bytes of its body with credentials redacted: for the operator log, never for
    /// status, Events or HTTP answers (ADR 0035).
    #[error("{call}: HTTP {status}: {detail}")]
    Upstream {
        call: &'static str,
        status: u16,
        detail: String,
    },
    /// The backend is not usable as configured (e.g. its credentials Secret is missing). Retried:
    /// the fix does not touch the Workspace record. The text never holds a secret.
    #[error("{0}")]
    Config(String),
}

/// A tar entry that cannot be written is the request's fault (a path both file and directory).
impl From<crate::archive::ArchiveError> for BackendError {
    fn from(e: crate::archive::ArchiveError) -> Self {
        BackendError::Permanent(e.to_string())
    }
}

impl BackendError {
    /// Worth retrying as is: an unreachable engine or service, or a 5xx / 408 / 429 answer.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Transient(_) | BackendError::Config(_) => true,
            BackendError::Upstream { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// Short category for metrics/Event reasons: "Transient", "Permanent", "ImageMissing",
    /// "Upstream", "Config".
    pub fn category(&self) -> &'static str {
        match self {
            BackendError::Transient(_) => "Transient",
            BackendError::Permanent(_) => "Permanent",
            BackendError::ImageMissing(_) => "ImageMissing",
            BackendError::Upstream { .. } => "Upstream",
            BackendError::Config(_) => "Config",
        }
    }
}

/// Which backend the controller host runs (`--backend`, hidden: `simulated` is for benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// The local (or `DOCKER_HOST`) Docker engine.
    #[default]
    Docker,
    /// No container work at all; see [`simulated`].
    Simulated,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(BackendChoice::Docker),
            "simulated" => Ok(BackendChoice::Simulated),
            other => Err(format!(
                "unknown backend {other:?}; known backends: docker, simulated"
            )),
        }
    }

    /// The `backend` metric label.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Docker => "docker",
            BackendChoice::Simulated => "simulated",
        }
    }
}

/// The provision attempt of a set of files: the first 16 hex digits of sha256(token), the same
/// as `status.tokenHash[..16]` after the provision that generated it ("" without a token).
pub fn attempt_of(files: &[ConfigFile]) -> String {
    use sha2::Digest;
    files
        .iter()
        .find(|f| f.path == ".auth_token")
        .map(|f| hex::encode(sha2::Sha256::digest(&f.content))[..16].to_string())
        .unwrap_or_default()
}

/// A workspace runtime backend.
#[async_trait::async_trait]
pub trait WorkspaceBackend: Send + Sync + 'static {
    /// Docker — idempotent: ensures network, volume, (re)writes the files into the volume,
    /// creates the container if absent (if one exists with a different image or env, it is
    /// removed and recreated), and starts it if not running. Files land in the volume before
    /// the container first starts. Control plane — provisions a new instance with the files and
    /// returns as soon as the control plane answers (the controller removes the previous one
    /// first).
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError>;
    /// Docker: stops the container (bounded timeout ~10 s), keeping it and the volume. Control
    /// plane: terminates the instance. Nothing there = Ok.
    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError>;
    /// Force-removes the container (bounded timeout); then, if `remove_volume` AND the container
    /// is really gone, removes the volume. "No such container"/"No such volume"/"removal already
    /// in progress" are success.
    async fn remove(&self, ws: &WorkspaceRef, remove_volume: bool) -> Result<(), BackendError>;
    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError>;
    /// Writes files into the config volume (works whether or not the container runs; when no
    /// container exists, a short-lived helper container or the existing stopped container is
    /// used).
    async fn write_files(
        &self,
        ws: &WorkspaceRef,
        files: &[ConfigFile],
    ) -> Result<(), BackendError>;
    async fn exec(&self, ws: &WorkspaceRef, cmd: &[String]) -> Result<ExecOutput, BackendError>;
    /// Every container and volume carrying the managed label.
    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError>;
    /// Removes one managed object found by list_managed (only if it carries the managed label).
    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError>;
    /// The tail of the workspace's console: container logs (Docker), the instance's serial
    /// console (control plane). At most [`MAX_CONSOLE_BYTES`].
    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError>;
}

/// Largest console output returned by [`WorkspaceBackend::console`] (256 KiB).
pub const MAX_CONSOLE_BYTES: usize = 256 * 1024;

/// The backends this operator runs, by `spec.backend`.
#[derive(Clone)]
pub struct Backends {
    pub docker: Arc<dyn WorkspaceBackend>,
    /// `None` when no control plane is configured (`--control-plane-url`).
    pub control_plane: Option<Arc<dyn WorkspaceBackend>>,
    /// `None` unless the operator runs the kubernetes backend (ADR 0057).
    pub kubernetes: Option<Arc<dyn WorkspaceBackend>>,
    /// The backend of Workspaces that do not name one (`--default-backend`).
    pub default_kind: crate::resources::Backend,
}

impl Backends {
    /// Docker only, the default for Workspaces without `spec.backend`.
    pub fn docker(docker: Arc<dyn WorkspaceBackend>) -> Self {
        Backends {
            docker,
            control_plane: None,
            kubernetes: None,
            default_kind: crate::resources::Backend::Docker,
        }
    }

    /// The backend of a `spec.backend` value; `None` for one that is not configured.
    pub fn get(&self, kind: crate::resources::Backend) -> Option<&Arc<dyn WorkspaceBackend>> {
        match kind {
            crate::resources::Backend::Docker => Some(&self.docker),
            crate::resources::Backend::ControlPlane => self.control_plane.as_ref(),
            crate::resources::Backend::Kubernetes => self.kubernetes.as_ref(),
        }
    }

    /// What `spec.backend` means: its value, or the operator's default.
    pub fn kind_of(
        &self,
        spec_backend: Option<crate::resources::Backend>,
    ) -> crate::resources::Backend {
        spec_backend.unwrap_or(self.default_kind)
    }

    /// Every configured backend, Docker first.
    pub fn all(&self) -> Vec<Arc<dyn WorkspaceBackend>> {
        let mut v = vec![self.docker.clone()];
        v.extend(self.control_plane.clone());
        v.extend(self.kubernetes.clone());
        v
    }
}

/// Longest accepted config file path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Checks that `p` is a safe, normalised, relative path to place under /configs: non-empty, not
/// absolute, no NUL, no empty, "." or ".." components (so no "a//b", no trailing "/"),
/// ≤ 255 bytes per component and ≤ 4096 bytes in total.
pub fn validate_file_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("file path is empty".to_string());
    }
    if p.len() > MAX_PATH_BYTES {
        return Err(format!(
            "file path is {} bytes long (max {MAX_PATH_BYTES})",
            p.len()
        ));
    }
    if p.contains('\0') {
        return Err("file path contains a NUL byte".to_string());
    }
    if p.starts_with('/') {
        return Err(format!("file path {p:?} is absolute"));
    }
    if p.contains('\\') {
        return Err(format!("file path {p:?} contains a backslash"));
    }
    for component in p.split('/') {
        match component {
            "" => return Err(format!("file path {p:?} has an empty component")),
            "." => return Err(format!("file path {p:?} is not normalised (\".\")")),
            ".." => return Err(format!("file path {p:?} escapes its root (\"..\")")),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "file path {p:?} has a component longer than {MAX_COMPONENT_BYTES} bytes"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Converts CRLF to LF for `.sh`, `.py` and `.md` files (as the original does, extension matched
/// case-insensitively); any other file is returned unchanged. A lone CR is kept.
pub fn normalize_line_endings(path: &str, content: &[u8]) -> Vec<u8> {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    let ext = match file_name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return content.to_vec(),
    };
    if !matches!(ext.as_str(), "sh" | "py" | "md") {
        return content.to_vec();
    }
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        if content[i] == b'\r' && content.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(content[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(uid: &str) -> WorkspaceRef {
        WorkspaceRef {
            uid: uid.to_string(),
            namespace: "default".to_string(),
            name: "alpha".to_string(),
            instance_id: None,
        }
    }

    #[test]
    fn names_come_from_the_uid() {
        let w = ws("3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab");
        assert_eq!(w.id12(), "3f2a9c1e7b4d");
        assert_eq!(w.container_name(), "ws-3f2a9c1e7b4d");
        assert_eq!(w.volume_name(), "ws-3f2a9c1e7b4d-configs");
        assert_eq!(
            w.workspace_volume_name(),
            format!("ws-{}-workspace", w.uid.to_ascii_lowercase())
        );
        assert_eq!(ws("3F2A9C1E-7B4D-XYZ").id12(), "3f2a9c1e7b4d");
        // Nothing but hex digits and dashes reaches a volume name.
        assert_eq!(
            ws("3F2A9C1E-7B4D/../x y").sessions_volume_name(),
            "ws-3f2a9c1e-7b4d-claude-sessions"
        );
    }

    #[test]
    fn tiers_round_trip_and_carry_w02_limits() {
        for n in 1..=4 {
            let t = Tier::from_number(n).unwrap();
            assert_eq!(t.number(), n);
        }
        assert_eq!(Tier::from_number(0), None);
        assert_eq!(Tier::from_number(5), None);
        assert_eq!(Tier::default(), Tier::Standard);
        assert_eq!(Tier::Sandboxed.memory_mib(), None);
        assert_eq!(Tier::Standard.memory_mib(), Some(512));
        assert_eq!(Tier::Standard.cpus(), Some(1.0));
        assert_eq!(Tier::PrivilegedLite.memory_mib(), Some(2048));
        assert_eq!(Tier::PrivilegedLite.cpus(), Some(2.0));
        assert_eq!(Tier::FullHost.memory_mib(), Some(4096));
        assert_eq!(Tier::FullHost.cpus(), Some(4.0));
    }

    #[test]
    fn overrides_win_over_tier_limits() {
        let spec = StartSpec {
            workspace: ws("3f2a9c1e-7b4d"),
            runtime: "echo".to_string(),
            image: "img".to_string(),
            env: vec![],
            tier: Tier::Standard,
            memory_mib: Some(1024),
            cpus: None,
            files: vec![],
            workspace_dir: None,
            extra_hosts: vec![],
            platform: None,
        };
        assert_eq!(spec.effective_memory_mib(), Some(1024));
        assert_eq!(spec.effective_cpus(), Some(1.0));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let spec = StartSpec {
            workspace: ws("3f2a9c1e-7b4d"),
            runtime: "echo".to_string(),
            image: "img".to_string(),
            env: vec![("API_KEY".to_string(), "sk-very-secret".to_string())],
            tier: Tier::Standard,
            memory_mib: None,
            cpus: None,
            files: vec![ConfigFile {
                path: ".auth_token".to_string(),
                content: b"tok-very-secret".to_vec(),
                mode: 0o600,
            }],
            workspace_dir: None,
            extra_hosts: vec![],
            platform: None,
        };
        let printed = format!("{spec:?}");
        assert!(printed.contains("API_KEY") && printed.contains(".auth_token"));
        assert!(printed.contains("0o600"));
        assert!(!printed.contains("very-secret"), "{printed}");
    }

    #[test]
    fn error_categories() {
        assert!(BackendError::Transient("x".into()).is_transient());
        assert!(!BackendError::Permanent("x".into()).is_transient());
        assert_eq!(BackendError::Transient("x".into()).category(), "Transient");
        assert_eq!(BackendError::Permanent("x".into()).category(), "Permanent");
        assert_eq!(
            BackendError::ImageMissing("x".into()).category(),
            "ImageMissing"
        );
        let up = |status| BackendError::Upstream {
            call: "provision",
            status,
            detail: String::new(),
        };
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(up(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!up(s).is_transient(), "{s}");
        }
        assert_eq!(up(500).category(), "Upstream");
    }

    #[test]
    fn valid_paths_are_accepted() {
        for p in [
            "config.yaml",
            ".auth_token",
            "a/b.txt",
            "plugins/x/y/z.py",
            "..hidden",
            "a..b",
            "dir.d/file",
        ] {
            assert_eq!(validate_file_path(p), Ok(()), "{p}");
        }
        let component = "c".repeat(255);
        assert_eq!(validate_file_path(&component), Ok(()));
        let long = vec!["d".repeat(200); 20].join("/");
        assert!(long.len() <= 4096);
        assert_eq!(validate_file_path(&long), Ok(()));
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "..",
            ".",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            "a\\b",
        ] {
            assert!(validate_file_path(p).is_err(), "{p:?} should be rejected");
        }
        assert!(validate_file_path(&"c".repeat(256)).is_err());
        let too_long = vec!["d".repeat(200); 21].join("/");
        assert!(too_long.len() > 4096);
        assert!(validate_file_path(&too_long).is_err());
    }

    #[test]
    fn crlf_is_normalised_for_scripts_and_docs_only() {
        let crlf = b"echo hi\r\necho there\r\n";
        assert_eq!(
            normalize_line_endings("run.sh", crlf),
            b"echo hi\necho there\n"
        );
        assert_eq!(
            normalize_line_endings("a/b/tool.py", crlf),
            b"echo hi\necho there\n"
        );
        assert_eq!(
            normalize_line_endings("README.MD", crlf),
            b"echo hi\necho there\n"
        );
        assert_eq!(normalize_line_endings("config.yaml", crlf), crlf.to_vec());
        assert_eq!(normalize_line_endings("data.bin", crlf), crlf.to_vec());
        assert_eq!(normalize_line_endings(".sh", crlf), crlf.to_vec());
        assert_eq!(normalize_line_endings("sh", crlf), crlf.to_vec());
        // A lone CR and a trailing CR are kept; already-LF content is unchanged.
        assert_eq!(normalize_line_endings("x.sh", b"a\rb\r"), b"a\rb\r");
        assert_eq!(normalize_line_endings("x.sh", b"a\nb\n"), b"a\nb\n");
        assert_eq!(normalize_line_endings("x.sh", b"a\r\r\nb"), b"a\r\nb");
    }
}
