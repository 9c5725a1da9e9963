//! Image references and the names that go into them: parsing (`[host[:port]/]path[:tag][@digest]`),
//! the moving-tag classifier (ADR 0030) and the allowlist checks every name, tag, digest and
//! git ref passes before it reaches git, Docker or a registry. Pure.

/// Tags that move: re-pulled on every start (ADR 0030). Everything else is pinned.
pub const MOVING_TAGS: &[&str] = &[
    "latest", "main", "dev", "edge", "nightly", "rolling", "staging",
];

/// Repository prefix of locally built images; they have no registry to move from.
pub const LOCAL_PREFIX: &str = "molecule-local/";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` when the first path component names one (has `.` or `:`, or is `localhost`).
    pub domain: Option<String>,
    /// The repository path below the domain, e.g. `molecule-ai/workspace-template-hermes`.
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and validates a reference.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        if s.is_empty() || s.len() > 512 {
            return Err("an image reference is 1-512 characters".into());
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("image reference {s:?} contains whitespace"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                validate_digest(d)?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|sl| i > sl) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                validate_domain(first)?;
                (Some(first.to_string()), rest)
            }
            _ => (None, name),
        };
        validate_path(path)?;
        Ok(ImageRef {
            domain,
            path: path.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `domain/path` (or `path`), without tag or digest.
    pub fn repository(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// Whether the reference can point at different content over time (ADR 0030): no digest, and
    /// no tag or a well-known moving one. Local builds never move.
    pub fn is_moving(&self) -> bool {
        if self.digest.is_some() || self.is_local() {
            return false;
        }
        match &self.tag {
            None => true,
            Some(t) => MOVING_TAGS.contains(&t.as_str()),
        }
    }

    /// A locally built image (`molecule-local/...`).
    pub fn is_local(&self) -> bool {
        self.domain.is_none() && self.path.starts_with(LOCAL_PREFIX)
    }

    /// The registry host to talk to (Docker Hub for references without a domain).
    pub fn registry_host(&self) -> String {
        match self.domain.as_deref() {
            None | Some("docker.io") | Some("index.docker.io") => "registry-1.docker.io".into(),
            Some(d) => d.to_string(),
        }
    }

    /// The repository path as the registry API names it (`library/x` for Docker Hub images).
    pub fn api_path(&self) -> String {
        if self.registry_host() == "registry-1.docker.io" && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        }
    }

    /// What the manifest is looked up by: the digest if pinned, else the tag (`latest` if none).
    pub fn manifest_ref(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }

    /// The reference Docker is asked to pull or run: `repo@digest` (a pin wins over the tag),
    /// else `repo:tag`.
    pub fn canonical(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.repository()),
            (None, Some(t)) => format!("{}:{t}", self.repository()),
            (None, None) => format!("{}:latest", self.repository()),
        }
    }
}

/// The moving-tag classifier over a reference string (ADR 0030). Unparseable references count as
/// moving: misclassifying a moving tag as pinned would strand a fleet on a stale image.
pub fn is_moving(reference: &str) -> bool {
    ImageRef::parse(reference).map_or(true, |r| r.is_moving())
}

/// A runtime name usable in image and repository names: a DNS-1123 label (lower-case
/// alphanumerics and `-`, 1-63 characters, alphanumeric at both ends).
pub fn validate_runtime_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "runtime name {:?} is not allowed: use 1-63 lower-case letters, digits and '-'",
            truncate(name, 80)
        ))
    }
}

/// A Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let mut bytes = tag.bytes();
    let ok = tag.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {:?} is not a valid image tag",
            truncate(tag, 80)
        ))
    }
}

/// A content digest: `sha256:` and 64 lower-case hex digits.
pub fn validate_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(())
        }
        _ => Err(format!(
            "digest {:?} is not sha256:<64 hex digits>",
            truncate(d, 80)
        )),
    }
}

fn validate_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !host.starts_with(['.', '-']);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("registry host {:?} is not valid", truncate(d, 80)))
    }
}

/// Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, separated by `/`.
fn validate_path(p: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        let (mut i, mut need_alnum) = (0, true);
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                need_alnum = false;
                continue;
            }
            if need_alnum {
                return false;
            }
            let run = b[i..].iter().take_while(|&&x| x == b[i]).count();
            let ok = match b[i] {
                b'.' => run == 1,
                b'_' => run <= 2,
                b'-' => true,
                _ => false,
            };
            if !ok {
                return false;
            }
            i += run;
            need_alnum = true;
        }
        !need_alnum
    };
    if !p.is_empty() && p.len() <= 255 && p.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "repository {:?} is not a valid image repository",
            truncate(p, 80)
        ))
    }
}

/// A git ref: `[A-Za-z0-9_./-]+`, no `..`, not starting with `-` or `/`, no `//`, at most 200
/// characters (the `!external` ref rule, ADR 0011; a leading `-` would be read as an option by
/// git).
pub fn validate_git_ref(r: &str) -> Result<(), String> {
    let ok = !r.is_empty()
        && r.len() <= 200
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
        && !r.contains("..")
        && !r.contains("//")
        && !r.starts_with(['-', '/'])
        && !r.ends_with(['/', '.'])
        && !r.ends_with(".lock");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "git ref {:?} is not allowed: use letters, digits, '_', '.', '/', '-' without '..'",
            truncate(r, 80)
        ))
    }
}

/// A template repository must start with the allowed prefix, and the rest must be a plain
/// repository name (no `/`, no `..`, no whitespace or options).
pub fn validate_template_repo(repo: &str, prefix: &str) -> Result<(), String> {
    let Some(rest) = repo.strip_prefix(prefix) else {
        return Err(format!(
            "template repository {} is outside the allowed prefix {}",
            crate::images::git::display_url(&truncate(repo, 200)),
            crate::images::git::display_url(prefix)
        ));
    };
    let ok = !rest.is_empty()
        && rest.len() <= 200
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !rest.contains("..")
        && !rest.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "template repository name {:?} after the prefix is not allowed",
            truncate(rest, 80)
        ))
    }
}

/// The registry image of a runtime: `<registry>/workspace-template-<runtime>` (ADR 0030).
pub fn registry_repository(registry: &str, runtime: &str) -> String {
    format!(
        "{}/workspace-template-{runtime}",
        registry.trim_end_matches('/')
    )
}

/// The locally built image repository of a runtime (ADR 0031).
pub fn local_repository(runtime: &str) -> String {
    format!("{LOCAL_PREFIX}workspace-template-{runtime}")
}

/// The locally built image tag of a runtime at a commit: `<repo>:<first 12 of the sha>`.
pub fn local_tag(runtime: &str, sha: &str) -> String {
    format!(
        "{}:{}",
        local_repository(runtime),
        &sha[..sha.len().min(12)]
    )
}

/// Validates `MOLECULE_IMAGE_REGISTRY`: `host[:port][/path]`.
pub fn validate_registry(registry: &str) -> Result<(), String> {
    ImageRef::parse(&format!("{}/x:latest", registry.trim_end_matches('/')))
        .and_then(|r| {
            if r.domain.is_some() {
                Ok(())
            } else {
                Err(format!(
                    "registry {:?} must start with a host (e.g. ghcr.io/org or 127.0.0.1:5000)",
                    truncate(registry, 80)
                ))
            }
        })
        .map_err(|e| format!("MOLECULE_IMAGE_REGISTRY: {e}"))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_tag_classifier() {
        let digest = format!("ghcr.io/m/x@sha256:{}", "a".repeat(64));
        let tagged_digest = format!("ghcr.io/m/x:latest@sha256:{}", "b".repeat(64));
        let table: &[(&str, bool)] = &[
            ("ghcr.io/m/workspace-template-hermes:latest", true),
            ("ghcr.io/m/workspace-template-hermes", true),
            ("ghcr.io/m/x:main", true),
            ("ghcr.io/m/x:nightly", true),
            ("ghcr.io/m/x:staging", true),
            ("ghcr.io/m/x:dev", true),
            ("ghcr.io/m/x:edge", true),
            ("ghcr.io/m/x:rolling", true),
            ("ghcr.io/m/x:v1.2.3", false),
            ("ghcr.io/m/x:sha-abc", false),
            ("ghcr.io/m/x:2026-05-01", false),
            ("ghcr.io/m/x:build-4711", false),
            (&digest, false),
            // A digest pins even when a moving-looking tag is present.
            (&tagged_digest, false),
            // The port is not a tag: no tag, so it moves.
            ("host:5000/img", true),
            ("localhost:5000/foo/bar", true),
            ("host:5000/img:v2", false),
            ("127.0.0.1:5000/img:latest", true),
            // Local builds have no registry to move from.
            (
                "molecule-local/workspace-template-hermes:abc123def456",
                false,
            ),
            ("molecule-local/echo:latest", false),
            ("busybox", true),
            ("library/busybox:1.36", false),
            // Garbage counts as moving (the safe side).
            ("Not A Ref", true),
        ];
        for (r, want) in table {
            assert_eq!(is_moving(r), *want, "{r}");
        }
    }

    #[test]
    fn references_parse_into_parts() {
        let r = ImageRef::parse("127.0.0.1:5000/org/workspace-template-x:v1").unwrap();
        assert_eq!(r.domain.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.path, "org/workspace-template-x");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.repository(), "127.0.0.1:5000/org/workspace-template-x");
        assert_eq!(r.manifest_ref(), "v1");
        assert_eq!(r.canonical(), "127.0.0.1:5000/org/workspace-template-x:v1");

        let d = format!("sha256:{}", "c".repeat(64));
        let pinned = ImageRef::parse(&format!("ghcr.io/m/x:latest@{d}")).unwrap();
        assert_eq!(pinned.manifest_ref(), d);
        assert_eq!(pinned.canonical(), format!("ghcr.io/m/x@{d}"));

        let hub = ImageRef::parse("busybox").unwrap();
        assert_eq!(hub.registry_host(), "registry-1.docker.io");
        assert_eq!(hub.api_path(), "library/busybox");
        assert_eq!(hub.canonical(), "busybox:latest");

        for bad in [
            "",
            "UPPER/case",
            "a b",
            "x:tag with space",
            "x:-bad",
            "x@sha256:short",
            "host:99999/x",
            "a/../b",
            "a//b",
            "x\n",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn names_refs_and_repos_are_allowlisted() {
        for ok in ["claude-code", "echo", "a", "gemini-cli", "x1"] {
            assert!(validate_runtime_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "x-",
            "Evil",
            "a.b",
            "a/b",
            "a;rm -rf /",
            "../etc",
            &"a".repeat(64),
        ] {
            assert!(validate_runtime_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["HEAD", "main", "v1.2.3", "release/2026-05", "feature_x"] {
            assert!(validate_git_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "main..evil",
            "..",
            "-upload-pack=x",
            "--upload-pack=touch",
            "/abs",
            "a//b",
            "a b",
            "a;b",
            "x.lock",
            "a/",
        ] {
            assert!(validate_git_ref(bad).is_err(), "{bad:?}");
        }
        let prefix = "https://git.example/org/workspace-template-";
        assert!(validate_template_repo(&format!("{prefix}hermes"), prefix).is_ok());
        assert!(validate_template_repo("https://evil.example/x", prefix).is_err());
        assert!(validate_template_repo(&format!("{prefix}a/../../b"), prefix).is_err());
        assert!(validate_template_repo(&format!("{prefix}-x"), prefix).is_err());
        assert!(validate_template_repo(prefix, prefix).is_err());
        assert!(validate_registry("ghcr.io/molecule-ai").is_ok());
        assert!(validate_registry("127.0.0.1:5000").is_ok());
        assert!(validate_registry("noregistryhost").is_err());
        assert!(validate_registry("bad host/x").is_err());
        assert_eq!(
            local_tag("hermes", "0123456789abcdef0123"),
            "molecule-local/workspace-template-hermes:0123456789ab"
        );
        assert_eq!(
            registry_repository("ghcr.io/m/", "hermes"),
            "ghcr.io/m/workspace-template-hermes"
        );
    }
}
