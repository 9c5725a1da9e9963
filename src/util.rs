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

/// Writes a file readable only by its owner (0600), replacing it atomically.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
    fn instance_ids_are_label_safe() {
        for ok in ["a", "dev-1", "3f2a9c1e7b4d"] {
            assert!(valid_instance_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a b", "a=b", &"x".repeat(64)] {
            assert!(!valid_instance_id(bad), "{bad}");
        }
    }
}
