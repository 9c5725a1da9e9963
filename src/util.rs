//! Small helpers shared across modules.

use std::path::Path;

/// Now as RFC 3339 with second precision and `Z`, as Kubernetes prints timestamps.
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Now as a MicroTime (6 fractional digits), as Event.eventTime uses.
pub fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Fsyncs a directory, so that a file created or renamed into it survives a power loss, not
/// only a process crash (ADR 0042). A no-op where directories cannot be opened (non-Unix).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `contents` to a temp file beside `path` (mode `mode` on Unix), fsyncs it, renames it
/// over `path` and fsyncs the directory: after this returns, a crash or power loss leaves
/// either the old file or the whole new one (ADR 0042).
fn write_atomic(path: &Path, contents: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    use std::io::Write;
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp{}-{}",
        std::process::id(),
        random_suffix(6)
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(m) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(m);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Writes a file readable only by its owner (0600), replacing it atomically and durably
/// (file and directory fsynced; ADR 0042). Used for the data dir's `token`, `secret.key`,
/// `instance-id`, the kubeconfig and the serving key.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, Some(0o600))
}

/// Writes a file (default mode), replacing it atomically and durably (ADR 0042).
pub fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic(path, contents, None)
}

/// Writes a completion marker (`.complete`) and makes it durable: the file is fsynced, then its
/// directory, so a marker that survives a power loss names content that was there before it
/// (ADR 0042). Not atomic by rename on purpose: a crash leaves no temp file inside the tree the
/// marker describes; a torn marker is an empty one, which readers treat as present.
pub fn write_marker(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(contents)?;
    f.sync_all()?;
    sync_dir(parent_dir(path))
}

/// `n` random characters from `[a-z0-9]`, as generateName suffixes use.
pub fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// A random token: 32 bytes as lowercase hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// An installation id (`--instance`): a Docker label value, 1-63 chars of `[a-z0-9-]`, starting
/// and ending alphanumeric.
pub fn valid_instance_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_kubernetes_shape() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && !t.contains('.'), "{t}");
        let m = now_micro();
        assert_eq!(m.split('.').nth(1).map(str::len), Some(7), "{m}");
    }

    #[test]
    fn suffix_and_token_shapes() {
        assert_eq!(random_suffix(5).len(), 5);
        let t = random_token();
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(valid_instance_id(&random_suffix(12)));
    }

    #[test]
    fn synced_writes_replace_atomically_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("sub").join("token");
        write_private_file(&p, b"one").expect("write");
        write_private_file(&p, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let q = dir.path().join("sub").join("plain");
        write_synced(&q, b"x").expect("write synced");
        assert_eq!(std::fs::read(&q).expect("read"), b"x");
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A failed write (the target is a directory) leaves no temp file either.
        std::fs::create_dir(dir.path().join("sub").join("d")).expect("mkdir");
        assert!(write_synced(&dir.path().join("sub").join("d"), b"x").is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub"))
                .expect("ls")
                .count(),
            3
        );
    }

    #[test]
    fn markers_are_written_and_directories_sync() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = dir.path().join(".complete");
        write_marker(&m, b"abc\n").expect("marker");
        write_marker(&m, b"def\n").expect("marker again");
        assert_eq!(std::fs::read(&m).expect("read"), b"def\n");
        sync_dir(dir.path()).expect("sync dir");
        assert!(sync_dir(&dir.path().join("missing")).is_err());
        assert!(write_marker(&dir.path().join("missing").join(".complete"), b"").is_err());
    }

    #[test]
    fn instance_ids_are_label_safe() {
        for ok in ["a", "dev-1", "3f2a9c1e7b4d"] {
            assert!(valid_instance_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a b", "a=b", &"x".repeat(64)] {
            assert!(!valid_instance_id(bad), "{bad}");
        }
    }
}
