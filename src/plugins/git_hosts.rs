//! Which git hosts a workspace's own token may install plugins from (ADR 0038). An SSRF guard:
//! a PluginInstall makes the operator fetch its source with the operator's network position
//! and git credentials, so a workspace may only name hosts an admin listed
//! (`--plugin-git-hosts`, env `MOLECULE_PLUGIN_GIT_HOSTS`). The list is empty by default: a
//! workspace installs from the local registry (`local://`) only. The admin token is not
//! limited.
//!
//! An entry is `host` or `host:port`, matched against `https://` sources only: `host` allows
//! the default port, `host:port` that port. Host names compare case-insensitively; no
//! wildcards, no other schemes (http would send whatever the fetch carries in the clear).

use std::fmt;

/// Why a host list does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GitHostsError {
    #[error("plugin git host {0:?}: expected host or host:port (letters, digits, '.', '-')")]
    BadEntry(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    host: String,
    port: Option<u16>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// The allowlist; `Default` is empty (nothing allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitHosts(Vec<Entry>);

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && !h.starts_with(['.', '-'])
        && !h.ends_with(['.', '-'])
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `host` or `host:port`, lower-cased; `None` when it is not one.
fn host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)),
        None => (authority, None),
    };
    let host = host.to_ascii_lowercase();
    valid_host(&host).then_some((host, port))
}

impl GitHosts {
    /// A comma-separated list (`git.example.com, git.internal:8443`); blanks are skipped.
    pub fn parse(list: &str) -> Result<Self, GitHostsError> {
        let mut out = vec![];
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (host, port) = host_port(raw)
                .ok_or_else(|| GitHostsError::BadEntry(raw.chars().take(80).collect()))?;
            let e = Entry { host, port };
            if !out.contains(&e) {
                out.push(e);
            }
        }
        Ok(GitHosts(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a git source may be fetched for a workspace: an `https://` URL without
    /// credentials whose host (and port) is listed.
    pub fn allows(&self, source: &str) -> bool {
        let Some(rest) = source.strip_prefix("https://") else {
            return false;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return false;
        }
        let Some((host, port)) = host_port(authority) else {
            return false;
        };
        let port = port.filter(|p| *p != 443);
        self.0
            .iter()
            .any(|e| e.host == host && e.port.filter(|p| *p != 443) == port)
    }
}

impl fmt::Display for GitHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(Entry::to_string).collect();
        f.write_str(&list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_allows_nothing() {
        let none = GitHosts::default();
        assert!(none.is_empty());
        assert!(!none.allows("https://github.com/org/plugin.git"));
        assert_eq!(GitHosts::parse(" , ").expect("blank"), none);
    }

    #[test]
    fn hosts_and_ports_are_matched_exactly() {
        let hosts = GitHosts::parse("Git.Example.com, git.internal:8443").expect("parse");
        assert_eq!(hosts.to_string(), "git.example.com,git.internal:8443");
        for (url, want) in [
            ("https://git.example.com/org/p.git", true),
            ("https://GIT.example.com/org/p", true),
            ("https://git.example.com:443/org/p", true),
            ("https://git.example.com:8080/org/p", false),
            ("https://git.internal:8443/p", true),
            ("https://git.internal/p", false),
            ("http://git.example.com/org/p", false),
            ("ssh://git@git.example.com/org/p", false),
            ("git@git.example.com:org/p", false),
            ("file:///srv/p", false),
            ("https://user@git.example.com/p", false),
            ("https://git.example.com.evil.io/p", false),
            ("https://evil.io/git.example.com/p", false),
            ("https://127.0.0.1/p", false),
            ("https://git.example.com", true),
            ("local://p", false),
        ] {
            assert_eq!(hosts.allows(url), want, "{url}");
        }
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "https://git.example.com",
            "host/path",
            "h:0",
            "h:x",
            "-h",
            "a b",
            "*.example.com",
        ] {
            assert!(GitHosts::parse(bad).is_err(), "{bad}");
        }
        assert!(
            GitHosts::parse("127.0.0.1:3000")
                .expect("ip")
                .allows("https://127.0.0.1:3000/p")
        );
    }
}
