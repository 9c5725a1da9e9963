//! Plugin sources and tracked refs, parsed and validated without I/O.
//!
//! A source is `local://<name>` (a directory in the operator's plugin registry dir) or a git
//! repository URL. A git source tracks one ref: `tag:<name>`, `tag:latest` (the highest version
//! tag), `sha:<full sha>` (a pin, never drifts) or `branch:<name>`. A bare `latest`, `main` or
//! `v1.2` is refused because it is ambiguous; a git source without a track is unpinned and
//! refused unless `allowUnpinned` is set.

use std::fmt;

use super::Refusal;

/// Longest accepted plugin name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest accepted git URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest accepted ref name (tag or branch).
pub const MAX_REF_LEN: usize = 255;

/// Whether `name` is a valid plugin name: `^[a-z0-9][a-z0-9._-]{0,127}$`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Checks a plugin name, saying what is wrong without echoing hostile input at length.
pub fn check_name(name: &str) -> Result<(), Refusal> {
    if valid_name(name) {
        return Ok(());
    }
    Err(Refusal::new(
        "InvalidName",
        format!(
            "plugin name {:?} is invalid: it must match ^[a-z0-9][a-z0-9._-]{{0,127}}$",
            shorten(name, 64)
        ),
    ))
}

/// Where a plugin comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `local://<name>`: `<plugin registry dir>/<name>/`.
    Local(String),
    /// A git repository URL (`https://`, `http://`, `ssh://`, `git://`, `file:///`, or
    /// `user@host:path`).
    Git(String),
}

impl Source {
    /// Parses and validates a `spec.source`.
    pub fn parse(s: &str) -> Result<Source, Refusal> {
        if let Some(name) = s.strip_prefix("local://") {
            check_name(name).map_err(|r| {
                Refusal::new("InvalidSource", format!("source local://…: {}", r.message))
            })?;
            return Ok(Source::Local(name.to_string()));
        }
        check_git_url(s)?;
        Ok(Source::Git(s.to_string()))
    }

    pub fn is_git(&self) -> bool {
        matches!(self, Source::Git(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local(n) => write!(f, "local://{n}"),
            Source::Git(u) => f.write_str(u),
        }
    }
}

fn invalid_source(why: impl Into<String>) -> Refusal {
    Refusal::new("InvalidSource", why)
}

/// A git URL we are willing to hand to `git`: a known transport, no option injection, no
/// whitespace or control characters, and no credentials (they would end up in status and logs;
/// use an SSH key instead: git runs without credential helpers, ADR 0040).
pub fn check_git_url(url: &str) -> Result<(), Refusal> {
    if url.is_empty() {
        return Err(invalid_source("source is empty"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(invalid_source(format!(
            "source is {} bytes long (max {MAX_URL_LEN})",
            url.len()
        )));
    }
    if url.starts_with('-') {
        return Err(invalid_source("source must not start with '-'"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid_source(
            "source must not contain whitespace or control characters",
        ));
    }
    if url.contains("::") {
        return Err(invalid_source(
            "git remote helpers (\"<transport>::<address>\") are not allowed",
        ));
    }
    const SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://", "file://"];
    if let Some(scheme) = SCHEMES.iter().find(|s| url.starts_with(**s)) {
        let rest = &url[scheme.len()..];
        if *scheme == "file://" {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(invalid_source(
                    "a file:// source needs an absolute path (file:///path/to/repo)",
                ));
            }
            return Ok(());
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(invalid_source("the source URL has no host"));
        }
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && (userinfo.contains(':') || *scheme != "ssh://")
        {
            return Err(invalid_source(
                "credentials in the source URL are not allowed; use an SSH key (git runs without credential helpers)",
            ));
        }
        return Ok(());
    }
    // scp-like syntax: user@host:path
    if let Some((user_host, path)) = url.split_once(':')
        && let Some((user, host)) = user_host.split_once('@')
        && !user.is_empty()
        && !host.is_empty()
        && !path.is_empty()
        && !user_host.contains('/')
    {
        return Ok(());
    }
    Err(invalid_source(format!(
        "unsupported source {:?}: use local://<name> or a git URL (https://, ssh://, git://, file:///, user@host:path)",
        shorten(url, 80)
    )))
}

/// What a git source follows upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Track {
    /// No ref: the remote's default branch, installed once and never tracked (`allowUnpinned`).
    Unpinned,
    Tag(String),
    /// The highest version tag.
    LatestTag,
    /// A full commit sha: a pin.
    Sha(String),
    Branch(String),
}

impl Track {
    /// Parses a `spec.track` (absent = unpinned).
    pub fn parse(track: Option<&str>) -> Result<Track, Refusal> {
        let Some(t) = track
            .map(str::trim)
            .filter(|t| !t.is_empty() && *t != "none")
        else {
            return Ok(Track::Unpinned);
        };
        let bad = |why: String| Refusal::new("InvalidTrack", why);
        if let Some(tag) = t.strip_prefix("tag:") {
            if tag == "latest" {
                return Ok(Track::LatestTag);
            }
            check_ref_name(tag).map_err(|w| bad(format!("track {t:?}: {w}")))?;
            return Ok(Track::Tag(tag.to_string()));
        }
        if let Some(branch) = t.strip_prefix("branch:") {
            check_ref_name(branch).map_err(|w| bad(format!("track {t:?}: {w}")))?;
            return Ok(Track::Branch(branch.to_string()));
        }
        if let Some(sha) = t.strip_prefix("sha:") {
            if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Track::Sha(sha.to_ascii_lowercase()));
            }
            return Err(bad(format!(
                "track {:?}: sha: needs the full 40-character commit sha",
                shorten(t, 60)
            )));
        }
        Err(bad(format!(
            "track {:?} is ambiguous: use tag:<name>, tag:latest, sha:<full sha> or branch:<name> (a bare \"latest\" or \"main\" is refused)",
            shorten(t, 60)
        )))
    }

    /// Whether upstream can move (and drift is checked).
    pub fn is_tracked(&self) -> bool {
        matches!(self, Track::Tag(_) | Track::LatestTag | Track::Branch(_))
    }
}

impl fmt::Display for Track {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Track::Unpinned => f.write_str("none"),
            Track::Tag(t) => write!(f, "tag:{t}"),
            Track::LatestTag => f.write_str("tag:latest"),
            Track::Sha(s) => write!(f, "sha:{s}"),
            Track::Branch(b) => write!(f, "branch:{b}"),
        }
    }
}

/// A tag or branch name: `[A-Za-z0-9_./-]`, no `..`, no leading `-` or `/`, no trailing `/`,
/// `.` or `.lock`, no empty component (the safe subset of `git check-ref-format`).
pub fn check_ref_name(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("the ref name is empty".into());
    }
    if r.len() > MAX_REF_LEN {
        return Err(format!("the ref name is longer than {MAX_REF_LEN} bytes"));
    }
    if !r
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
    {
        return Err("a ref name may only contain [A-Za-z0-9_./-]".into());
    }
    if r.starts_with('-') || r.starts_with('/') || r.starts_with('.') {
        return Err("a ref name must not start with '-', '/' or '.'".into());
    }
    if r.ends_with('/') || r.ends_with('.') || r.ends_with(".lock") {
        return Err("a ref name must not end with '/', '.' or '.lock'".into());
    }
    if r.contains("..") || r.contains("//") || r.contains("/.") {
        return Err("a ref name must not contain '..', '//' or '/.'".into());
    }
    Ok(())
}

/// A validated source + track pair, with the unpinned policy applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    pub track: Track,
    /// `spec.reinstallRequestedAt`: a new value is a new origin, so the plugin is fetched and
    /// installed again (ADR 0049).
    pub request: Option<String>,
}

impl Origin {
    /// Validates `spec.source`, `spec.track` and `spec.allowUnpinned` together.
    pub fn parse(source: &str, track: Option<&str>, allow_unpinned: bool) -> Result<Self, Refusal> {
        let source = Source::parse(source)?;
        let track = Track::parse(track)?;
        match (&source, &track) {
            (Source::Local(_), Track::Unpinned) => {}
            (Source::Local(_), _) => {
                return Err(Refusal::new(
                    "InvalidTrack",
                    "a local:// source has no refs to track; remove spec.track",
                ));
            }
            (Source::Git(_), Track::Unpinned) if !allow_unpinned => {
                return Err(Refusal::new(
                    "Unpinned",
                    "the git source has no track: set spec.track (tag:<name>, tag:latest, sha:<full sha> or branch:<name>) or spec.allowUnpinned: true",
                ));
            }
            _ => {}
        }
        Ok(Origin {
            source,
            track,
            request: None,
        })
    }

    /// The origin with a re-install request (`spec.reinstallRequestedAt`, at most 64
    /// characters of `[A-Za-z0-9:.+-]`).
    pub fn requested(mut self, request: Option<&str>) -> Result<Self, Refusal> {
        if let Some(r) = request.map(str::trim).filter(|r| !r.is_empty()) {
            if r.len() > 64
                || !r
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '+' | '-'))
            {
                return Err(Refusal::new(
                    "InvalidReinstallRequest",
                    "spec.reinstallRequestedAt must be a timestamp (at most 64 characters)",
                ));
            }
            self.request = Some(r.to_string());
        }
        Ok(self)
    }

    /// `<source>#<track>[@<request>]`: what an install came from, compared to notice spec
    /// changes and re-install requests.
    pub fn key(&self) -> String {
        match &self.request {
            Some(r) => format!("{}#{}@{r}", self.source, self.track),
            None => format!("{}#{}", self.source, self.track),
        }
    }
}

/// At most `max` characters of `s`, with `…` when cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "hello-skills", "x1.2_3", &"a".repeat(128)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a;b",
            "A",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            &"a".repeat(129),
        ] {
            assert!(!valid_name(bad), "{bad}");
            assert_eq!(check_name(bad).unwrap_err().reason, "InvalidName");
        }
    }

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("local://hello").unwrap(),
            Source::Local("hello".into())
        );
        for hostile in ["local://../x", "local://a;b", "local://", "local://a/b"] {
            let r = Source::parse(hostile).unwrap_err();
            assert_eq!(r.reason, "InvalidSource", "{hostile}");
        }
        for ok in [
            "https://github.com/org/plugin.git",
            "http://example.com/p",
            "ssh://git@host/org/p.git",
            "git://host/p",
            "file:///tmp/repo",
            "git@github.com:org/p.git",
        ] {
            assert!(Source::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-uhack",
            "ext::sh -c x",
            "https://user:tok@github.com/p",
            "https://tok@github.com/p",
            "file://relative",
            "https:///nohost",
            "/tmp/repo",
            "repo",
            "https://a b",
            "https://x\n",
        ] {
            assert_eq!(
                Source::parse(bad).unwrap_err().reason,
                "InvalidSource",
                "{bad:?}"
            );
        }
        // Credentials never come back in the message.
        let r = Source::parse("https://user:s3cret@github.com/p").unwrap_err();
        assert!(!r.message.contains("s3cret"), "{}", r.message);
    }

    #[test]
    fn tracks() {
        assert_eq!(Track::parse(None).unwrap(), Track::Unpinned);
        assert_eq!(Track::parse(Some("none")).unwrap(), Track::Unpinned);
        assert_eq!(
            Track::parse(Some("tag:v1.2.0")).unwrap(),
            Track::Tag("v1.2.0".into())
        );
        assert_eq!(Track::parse(Some("tag:latest")).unwrap(), Track::LatestTag);
        assert_eq!(
            Track::parse(Some("branch:main")).unwrap(),
            Track::Branch("main".into())
        );
        let sha = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(
            Track::parse(Some(&format!("sha:{sha}"))).unwrap(),
            Track::Sha(sha.to_ascii_lowercase())
        );
        for bad in [
            "latest",
            "main",
            "v1.2",
            "sha:abc123",
            "tag:",
            "tag:../x",
            "branch:-x",
            "branch:a..b",
            "tag:x.lock",
            "branch:a b",
            "tag:a;b",
        ] {
            assert_eq!(
                Track::parse(Some(bad)).unwrap_err().reason,
                "InvalidTrack",
                "{bad}"
            );
        }
        assert!(Track::LatestTag.is_tracked() && !Track::Sha(sha.into()).is_tracked());
        assert_eq!(Track::Branch("dev".into()).to_string(), "branch:dev");
    }

    #[test]
    fn unpinned_and_local_tracks() {
        assert_eq!(
            Origin::parse("file:///r", None, false).unwrap_err().reason,
            "Unpinned"
        );
        assert!(Origin::parse("file:///r", None, true).is_ok());
        assert!(Origin::parse("local://x", None, false).is_ok());
        assert_eq!(
            Origin::parse("local://x", Some("tag:v1"), false)
                .unwrap_err()
                .reason,
            "InvalidTrack"
        );
        assert_eq!(
            Origin::parse("file:///r", Some("branch:main"), false)
                .unwrap()
                .key(),
            "file:///r#branch:main"
        );
    }
}
