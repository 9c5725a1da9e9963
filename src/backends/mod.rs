//! Workspace runtime backends: the [`WorkspaceBackend`] trait that controllers drive, the shared
//! value types (identity, tiers, config files, presence) and the pure helpers every backend uses.
//! `docker` is the local Docker engine (bollard); an EC2 control-plane backend implements the same
//! trait. `events` narrows Docker's event stream to managed objects.

pub mod docker;
pub mod events;

use std::path::PathBuf;

/// Identity of one workspace's actual state: from the Workspace record's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
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

/// Resource tier (FEATURES W02).
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

    /// Default memory limit in MiB; `None` = no limit (tier 1 has no default limit in W02).
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
    /// Platform of the image (`MOLECULE_IMAGE_PLATFORM`, FEATURES I05), for the create.
    pub platform: Option<String>,
}

impl std::fmt::Debug for StartSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("StartSpec")
            .field("workspace", &self.workspace)
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
    pub container_id: String,
    /// URL of the agent's port 8000 as published on the host: http://127.0.0.1:<port>
    pub host_url: String,
    pub image_id: String,
}

/// What exists for a workspace. Running/Stopped/Absent are facts; a transient engine error is an
/// Err, never "Absent".
#[derive(Clone, Debug, PartialEq)]
pub enum Presence {
    Running {
        container_id: String,
        host_url: Option<String>,
        started_at: Option<String>,
    },
    Stopped {
        container_id: String,
        exit_code: Option<i64>,
        oom_killed: bool,
    },
    Absent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagedKind {
    Container,
    Volume,
}

/// One object carrying the managed label, with the workspace labels it carries ("" if missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Managed {
    pub kind: ManagedKind,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub workspace: String,
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
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }

    /// Short category for metrics/Event reasons: "Transient", "Permanent", "ImageMissing".
    pub fn category(&self) -> &'static str {
        match self {
            BackendError::Transient(_) => "Transient",
            BackendError::Permanent(_) => "Permanent",
            BackendError::ImageMissing(_) => "ImageMissing",
        }
    }
}

/// A workspace runtime backend.
#[async_trait::async_trait]
pub trait WorkspaceBackend: Send + Sync + 'static {
    /// Idempotent: ensures network, volume, (re)writes the files into the volume, creates the
    /// container if absent (if one exists with a different image or env, it is removed and
    /// recreated), and starts it if not running. Files land in the volume before the container
    /// first starts.
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError>;
    /// Stops the container (bounded timeout ~10 s), keeping it and the volume. Absent container = Ok.
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

/// Converts CRLF to LF for `.sh`, `.py` and `.md` files (FEATURES W03, extension matched
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
        }
    }

    #[test]
    fn names_come_from_the_uid() {
        let w = ws("3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab");
        assert_eq!(w.id12(), "3f2a9c1e7b4d");
        assert_eq!(w.container_name(), "ws-3f2a9c1e7b4d");
        assert_eq!(w.volume_name(), "ws-3f2a9c1e7b4d-configs");
        assert_eq!(ws("3F2A9C1E-7B4D-XYZ").id12(), "3f2a9c1e7b4d");
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
