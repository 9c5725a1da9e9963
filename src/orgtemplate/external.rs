//! `!external {repo, ref, path, url?}` and git sources (O03): validation, the repository
//! allowlist, and a content-addressed cache `<root>/.external-cache/<host>/<owner>/<repo>/<sha>/`
//! filled with the real `git` CLI.
//!
//! - `repo` must match the allowlist (`MOLECULE_EXTERNAL_REPO_ALLOWLIST`, comma-separated
//!   `host/path` prefixes ending in `/` or `/*`, or exact repositories);
//! - `ref` matches `^[a-zA-Z0-9_./-]+$`, has no `..` and does not start with `-`;
//! - `path` is relative and downward only;
//! - a fetch goes into a temp dir, is renamed into place, and only then gets its `.complete`
//!   marker: a directory without the marker is a partial cache and is fetched again;
//! - the token is sent as an `Authorization` http header through git's environment
//!   (`GIT_CONFIG_*`), never in a URL, an argument or a file, and is masked in every message.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{CACHE_DIR, ErrorKind, TemplateError};

/// Default git host (and the default allowlist's host).
pub const DEFAULT_HOST: &str = "git.moleculesai.app";
/// Default allowlist: the molecule-ai organisation on the default host.
pub const DEFAULT_ALLOWLIST: &str = "git.moleculesai.app/molecule-ai/";
/// Marker written into a cache dir once it is complete.
pub const COMPLETE_MARKER: &str = ".complete";
/// Largest checkout accepted into the cache.
pub const MAX_CHECKOUT_BYTES: u64 = 100 * 1024 * 1024;

/// Settings of `!external` and git sources.
#[derive(Clone)]
pub struct ExternalConfig {
    /// `host/path` prefixes (ending in `/` or `/*`) or exact `host/owner/repo` entries.
    pub allowlist: Vec<String>,
    /// Host (or `scheme://host/prefix`) used when a ref has no `url`.
    pub default_url: String,
    /// Sent as `Authorization: token <t>` on http(s) fetches; never logged or stored.
    pub token: Option<String>,
    /// The cache; must be under the template root so workspaces can read files_dir from it.
    pub cache_dir: PathBuf,
    /// Bound on each git command.
    pub timeout: Duration,
    /// Never run git: only complete cache entries resolve (the template listing).
    pub offline: bool,
}

impl std::fmt::Debug for ExternalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalConfig")
            .field("allowlist", &self.allowlist)
            .field("default_url", &self.default_url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("cache_dir", &self.cache_dir)
            .field("timeout", &self.timeout)
            .field("offline", &self.offline)
            .finish()
    }
}

impl ExternalConfig {
    /// Defaults for a template root: the molecule-ai allowlist, no token, 5 minute timeout.
    pub fn for_root(root: &Path) -> Self {
        ExternalConfig {
            allowlist: vec![DEFAULT_ALLOWLIST.to_string()],
            default_url: DEFAULT_HOST.to_string(),
            token: None,
            cache_dir: root.join(CACHE_DIR),
            timeout: Duration::from_secs(300),
            offline: false,
        }
    }

    /// [`for_root`](Self::for_root) with `MOLECULE_EXTERNAL_REPO_ALLOWLIST`,
    /// `MOLECULE_EXTERNAL_GITEA_URL` and `MOLECULE_GITEA_TOKEN` applied.
    pub fn from_env(root: &Path) -> Self {
        let mut c = Self::for_root(root);
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(list) = var("MOLECULE_EXTERNAL_REPO_ALLOWLIST") {
            c.allowlist = list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(u) = var("MOLECULE_EXTERNAL_GITEA_URL") {
            c.default_url = u.trim().to_string();
        }
        c.token = var("MOLECULE_GITEA_TOKEN").map(|t| t.trim().to_string());
        c
    }
}

/// One `!external` mapping (or a git source).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalRef {
    /// `owner/name` on the host.
    pub repo: String,
    pub git_ref: String,
    /// The file (or, for a git source, a dir holding org.yaml) inside the repository.
    pub path: String,
    /// Host or `scheme://host[/prefix]`; default [`ExternalConfig::default_url`].
    pub url: Option<String>,
}

/// A resolved and cached checkout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The cache dir holding the checkout.
    pub dir: PathBuf,
    /// Full commit sha.
    pub sha: String,
    /// `host[/prefix]/owner/name`, without scheme or credentials.
    pub repo: String,
    /// True when the checkout was already complete in the cache.
    pub cache_hit: bool,
}

fn refused(msg: impl Into<String>) -> TemplateError {
    TemplateError::new(ErrorKind::ExternalRefused, "", "", msg)
}

fn fetch_failed(msg: impl Into<String>) -> TemplateError {
    TemplateError::new(ErrorKind::Fetch, "", "", msg)
}

fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `owner/name` (up to four segments of `[A-Za-z0-9_.-]`).
pub(crate) fn validate_repo(repo: &str) -> Result<(), TemplateError> {
    let segs: Vec<&str> = repo.split('/').collect();
    if repo.is_empty() {
        return Err(refused("!external needs a repo"));
    }
    if segs.len() < 2 || segs.len() > 4 || !segs.iter().all(|s| safe_segment(s)) {
        return Err(refused(format!(
            "repo {repo:?} must look like owner/name (letters, digits, `_`, `.`, `-`)"
        )));
    }
    Ok(())
}

/// `^[a-zA-Z0-9_./-]+$`, no `..`, not an option.
pub(crate) fn validate_ref(r: &str) -> Result<(), TemplateError> {
    if r.is_empty() {
        return Err(refused("!external needs a ref"));
    }
    let shape_ok = r.len() <= 200
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'));
    if !shape_ok || r.contains("..") || r.starts_with('-') || r.starts_with('/') {
        return Err(refused(
            "ref must match ^[a-zA-Z0-9_./-]+$, must not contain `..` and must not start with `-` or `/`",
        ));
    }
    Ok(())
}

/// Relative and downward only.
pub(crate) fn validate_path(p: &str) -> Result<(), TemplateError> {
    if p.trim().is_empty() {
        return Err(refused("!external needs a path"));
    }
    let ok = p.len() <= 512
        && !Path::new(p).is_absolute()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(refused(
            "path must be relative and point downward inside the repository (no `..`, no leading `/`)",
        ));
    }
    Ok(())
}

/// The clone URL and the scheme-less identity of `r`.
pub(crate) fn locate(
    cfg: &ExternalConfig,
    r: &ExternalRef,
) -> Result<(String, String), TemplateError> {
    let base = r.url.as_deref().unwrap_or(&cfg.default_url).trim();
    let (scheme, rest) = match base.split_once("://") {
        Some((s, rest)) => (s.to_ascii_lowercase(), rest),
        None => ("https".to_string(), base),
    };
    if !matches!(scheme.as_str(), "https" | "http" | "git" | "file") {
        return Err(refused(format!(
            "url scheme {scheme:?} is not supported (https, http, git, file)"
        )));
    }
    let rest = rest.trim_end_matches('/');
    let authority = rest.split('/').next().unwrap_or("");
    let bad_char = rest
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'));
    if bad_char || authority.contains('@') || rest.split('/').any(|s| s == "..") {
        return Err(refused(
            "url must be a plain host or scheme://host/path without credentials, query or `..`",
        ));
    }
    if rest.is_empty() && scheme != "file" {
        return Err(refused("url has no host"));
    }
    let identity = format!("{rest}/{}", r.repo);
    let suffix = if r.repo.ends_with(".git") { "" } else { ".git" };
    Ok((format!("{scheme}://{identity}{suffix}"), identity))
}

/// Whether `identity` (`host/owner/name`) is allowlisted.
pub(crate) fn allowed(allowlist: &[String], identity: &str) -> bool {
    let strip = |s: &str| -> String {
        let s = s.trim();
        let s = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
        s.to_string()
    };
    let id = identity.trim_end_matches(".git");
    allowlist.iter().any(|entry| {
        let e = strip(entry);
        if let Some(prefix) = e.strip_suffix("/*").or_else(|| e.strip_suffix('/')) {
            !prefix.is_empty() && id.starts_with(&format!("{prefix}/"))
        } else {
            !e.is_empty() && id == e.trim_end_matches(".git")
        }
    })
}

fn is_full_sha(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.chars().all(|c| c.is_ascii_hexdigit())
}

/// Where a repository's checkouts live in the cache.
pub(crate) fn cache_repo_dir(cfg: &ExternalConfig, identity: &str) -> PathBuf {
    let mut p = cfg.cache_dir.clone();
    for seg in identity.split('/').filter(|s| !s.is_empty()) {
        let clean: String = seg
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        p.push(if clean == "." || clean == ".." {
            "_".to_string()
        } else {
            clean
        });
    }
    p
}

/// Validates `r`, resolves its ref to a sha and returns the cached checkout, fetching it when
/// the cache has no complete copy. `Ok(None)`: offline and not cached.
pub fn fetch(cfg: &ExternalConfig, r: &ExternalRef) -> Result<Option<Fetched>, TemplateError> {
    validate_repo(&r.repo)?;
    validate_ref(&r.git_ref)?;
    validate_path(&r.path)?;
    let (url, identity) = locate(cfg, r)?;
    if !allowed(&cfg.allowlist, &identity) {
        return Err(refused(format!(
            "repository {identity} is not in the allowlist (MOLECULE_EXTERNAL_REPO_ALLOWLIST)"
        )));
    }
    let git = Git {
        token: cfg.token.as_deref(),
        timeout: cfg.timeout,
    };
    let repo_dir = cache_repo_dir(cfg, &identity);
    let (sha, want) = if is_full_sha(&r.git_ref) {
        let sha = r.git_ref.to_ascii_lowercase();
        (sha.clone(), sha)
    } else if cfg.offline {
        return Ok(None);
    } else {
        git.resolve(&url, &identity, &r.git_ref)?
    };
    let dir = repo_dir.join(&sha);
    if dir.join(COMPLETE_MARKER).is_file() {
        tracing::debug!(repo = %identity, sha = %sha, "external cache hit");
        return Ok(Some(Fetched {
            dir,
            sha,
            repo: identity,
            cache_hit: true,
        }));
    }
    if cfg.offline {
        return Ok(None);
    }
    let io = |what: &str| fetch_failed(format!("cache for {identity}: could not {what}"));
    std::fs::create_dir_all(&repo_dir).map_err(|_| io("create the cache dir"))?;
    if dir.exists() {
        tracing::info!(repo = %identity, sha = %sha, "partial external cache (no .complete marker); fetching again");
        std::fs::remove_dir_all(&dir).map_err(|_| io("remove a partial cache"))?;
    }
    let tmp = repo_dir.join(format!(
        ".tmp-{}-{}",
        &sha[..12],
        crate::util::random_suffix(8)
    ));
    let result = git.checkout(&url, &identity, &want, &sha, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(COMPLETE_MARKER).is_file() {
            tracing::warn!(repo = %identity, error = %e, "could not move a fetched checkout into the cache");
            return Err(io("move the checkout into place"));
        }
        // Another import fetched the same sha at the same time: theirs is complete.
    } else {
        // The checkout's rename must be durable before the marker that vouches for it
        // (ADR 0042).
        crate::util::sync_dir(&repo_dir)
            .and_then(|()| {
                crate::util::write_marker(&dir.join(COMPLETE_MARKER), format!("{sha}\n").as_bytes())
            })
            .map_err(|_| io("write the .complete marker"))?;
    }
    tracing::info!(repo = %identity, sha = %sha, "external fetched into the cache");
    Ok(Some(Fetched {
        dir,
        sha,
        repo: identity,
        cache_hit: false,
    }))
}

/// The git CLI with a bounded runtime and a masked token.
struct Git<'a> {
    token: Option<&'a str>,
    timeout: Duration,
}

impl Git<'_> {
    /// `git ls-remote`: the commit sha of `r` and the ref name to fetch.
    fn resolve(
        &self,
        url: &str,
        identity: &str,
        r: &str,
    ) -> Result<(String, String), TemplateError> {
        // The `^{}` pattern lists the commit an annotated tag points at.
        let peeled = format!("{r}^{{}}");
        let out = self
            .run(None, &["ls-remote", url, r, &peeled])
            .map_err(|e| fetch_failed(format!("could not list refs of {identity}: {e}")))?;
        let refs: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
        let find = |name: &str| {
            refs.iter()
                .find(|(_, n)| *n == name)
                .map(|(s, _)| s.to_string())
        };
        let candidates = [
            (r.to_string(), r.to_string()),
            (format!("refs/heads/{r}"), format!("refs/heads/{r}")),
            (format!("refs/tags/{r}^{{}}"), format!("refs/tags/{r}")),
            (format!("refs/tags/{r}"), format!("refs/tags/{r}")),
        ];
        for (listed, fetch_as) in candidates {
            if let Some(sha) = find(&listed).filter(|s| is_full_sha(s)) {
                return Ok((sha.to_ascii_lowercase(), fetch_as));
            }
        }
        Err(refused(format!("ref {r:?} was not found in {identity}")))
    }

    /// Fetches `want` (a ref name or sha) at depth 1 into `tmp` and checks out `sha` there,
    /// without a `.git` dir.
    fn checkout(
        &self,
        url: &str,
        identity: &str,
        want: &str,
        sha: &str,
        tmp: &Path,
    ) -> Result<(), TemplateError> {
        let tmp_s = tmp.to_string_lossy().to_string();
        let failed = |step: &str, e: String| fetch_failed(format!("{step} {identity} failed: {e}"));
        self.run(None, &["init", "-q", &tmp_s])
            .map_err(|e| failed("preparing the cache for", e))?;
        self.run(
            Some(tmp),
            &["fetch", "-q", "--depth", "1", "--no-tags", url, want],
        )
        .map_err(|e| failed("fetching", e))?;
        let got = self
            .run(Some(tmp), &["rev-parse", "FETCH_HEAD^{commit}"])
            .map_err(|e| failed("reading the fetched commit of", e))?;
        if got.trim() != sha {
            return Err(fetch_failed(format!(
                "{identity} moved while it was fetched; will retry"
            )));
        }
        self.run(
            Some(tmp),
            &[
                "-c",
                "advice.detachedHead=false",
                "checkout",
                "-q",
                "FETCH_HEAD",
            ],
        )
        .map_err(|e| failed("checking out", e))?;
        std::fs::remove_dir_all(tmp.join(".git"))
            .map_err(|_| fetch_failed(format!("cleaning the checkout of {identity} failed")))?;
        if tree_size(tmp) > MAX_CHECKOUT_BYTES {
            return Err(TemplateError::new(
                ErrorKind::TooLarge,
                "",
                "",
                format!("{identity} is larger than {MAX_CHECKOUT_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// Runs git; Ok(stdout) on success, Err(a masked one-line reason) otherwise.
    fn run(&self, cwd: Option<&Path>, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("git");
        if let Some(dir) = cwd {
            cmd.arg("-C").arg(dir);
        }
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", "https:http:git:file")
            .env("LC_ALL", "C")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match self.token {
            Some(t) => {
                cmd.env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                    .env("GIT_CONFIG_VALUE_0", format!("Authorization: token {t}"));
            }
            None => {
                cmd.env("GIT_CONFIG_COUNT", "0");
            }
        }
        tracing::debug!(command = %args.first().copied().unwrap_or(""), "running git");
        let mut child = cmd
            .spawn()
            .map_err(|_| "the git CLI could not be started".to_string())?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = stdout.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.take(64 * 1024).read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        let out = out_t.join().unwrap_or_default();
        let err = err_t.join().unwrap_or_default();
        match status {
            Some(st) if st.success() => Ok(out),
            Some(_) => Err(self.reason(&err)),
            None => Err(format!("timed out after {}s", self.timeout.as_secs())),
        }
    }

    /// The last meaningful stderr line, masked and bounded.
    fn reason(&self, stderr: &str) -> String {
        let line = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("git exited with an error");
        let line = line.strip_prefix("fatal: ").unwrap_or(line);
        let mut s = mask(line, self.token);
        if s.len() > 300 {
            let mut cut = 300;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

/// `text` with every occurrence of `token` replaced by `***`.
pub(crate) fn mask(text: &str, token: Option<&str>) -> String {
    match token {
        Some(t) if !t.is_empty() => text.replace(t, "***"),
        _ => text.to_string(),
    }
}

fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(e.path()),
                Ok(ft) if ft.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ExternalConfig {
        ExternalConfig::for_root(Path::new("/tmp/root"))
    }

    fn r(repo: &str, git_ref: &str, path: &str) -> ExternalRef {
        ExternalRef {
            repo: repo.into(),
            git_ref: git_ref.into(),
            path: path.into(),
            url: None,
        }
    }

    #[test]
    fn refs_repos_and_paths_are_validated_before_git() {
        for bad in [
            "main; rm -rf /",
            "..",
            "a..b",
            "-upload-pack=x",
            "/main",
            "",
            "a b",
        ] {
            let e = validate_ref(bad).expect_err(bad);
            assert_eq!(e.kind, ErrorKind::ExternalRefused, "{bad}");
        }
        for good in [
            "main",
            "v1.2.3",
            "release/2026-05",
            "refs/heads/main",
            "HEAD",
        ] {
            validate_ref(good).expect(good);
        }
        for bad in ["", "one", "a/../b", "a/b c", "a/b/c/d/e", "../x"] {
            assert!(validate_repo(bad).is_err(), "{bad}");
        }
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        validate_path("dev-lead/workspace.yaml").expect("ok");
    }

    #[test]
    fn allowlist_matches_prefixes_and_exact_repos() {
        let list = vec![
            "git.moleculesai.app/molecule-ai/".to_string(),
            "127.0.0.1:9418/team/*".to_string(),
            "https://example.com/solo/repo".to_string(),
        ];
        assert!(allowed(&list, "git.moleculesai.app/molecule-ai/dev"));
        assert!(!allowed(&list, "git.moleculesai.app/molecule-ai-evil/dev"));
        assert!(!allowed(&list, "github.com/foo/bar"));
        assert!(allowed(&list, "127.0.0.1:9418/team/x"));
        assert!(allowed(&list, "example.com/solo/repo"));
        assert!(allowed(&list, "example.com/solo/repo.git"));
        assert!(!allowed(&list, "example.com/solo/repo2"));
    }

    #[test]
    fn urls_never_carry_credentials() {
        let (url, id) = locate(&cfg(), &r("molecule-ai/dev", "main", "x")).expect("default");
        assert_eq!(url, "https://git.moleculesai.app/molecule-ai/dev.git");
        assert_eq!(id, "git.moleculesai.app/molecule-ai/dev");
        let mut with = r("o/r", "main", "x");
        with.url = Some("https://user:pw@host".into());
        assert!(locate(&cfg(), &with).is_err());
        with.url = Some("ext::sh -c evil".into());
        assert!(locate(&cfg(), &with).is_err());
        with.url = Some("file:///srv/git".into());
        assert_eq!(
            locate(&cfg(), &with).expect("file").0,
            "file:///srv/git/o/r.git"
        );
    }

    #[test]
    fn cache_paths_are_content_addressed_and_safe() {
        let c = cfg();
        assert_eq!(
            cache_repo_dir(&c, "127.0.0.1:9418/o/r"),
            PathBuf::from("/tmp/root/.external-cache/127.0.0.1_9418/o/r")
        );
        assert_eq!(
            cache_repo_dir(&c, "/srv/../git/o/r"),
            PathBuf::from("/tmp/root/.external-cache/srv/_/git/o/r")
        );
    }

    #[test]
    fn tokens_are_masked_and_not_in_debug() {
        assert_eq!(
            mask("auth tok-123 failed", Some("tok-123")),
            "auth *** failed"
        );
        let mut c = cfg();
        c.token = Some("tok-123".into());
        assert!(!format!("{c:?}").contains("tok-123"));
    }
}
