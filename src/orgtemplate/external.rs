//! `!external {repo, ref, path, url?}` and git sources (ADR 0011, 0040): validation, the repository
//! allowlist, and a content-addressed cache `<root>/.external-cache/<host>/<owner>/<repo>/<sha>/`
//! filled with the real `git` CLI.
//!
//! - `repo` must match the allowlist (`MOLECULE_EXTERNAL_REPO_ALLOWLIST`, comma-separated
//!   `host/path` prefixes ending in `/` or `/*`, or exact repositories); entries without a
//!   scheme admit https only, `http://…` and `file://…` entries must be written out (ADR 0040);
//! - `ref` matches `^[a-zA-Z0-9_./-]+$`, has no `..` and does not start with `-`;
//! - `path` is relative and downward only;
//! - a fetch goes into a temp dir, is renamed into place, and only then gets its `.complete`
//!   marker: a directory without the marker is a partial cache and is fetched again;
//! - the token is sent as an `Authorization` http header scoped to the repository URL
//!   (`http.<url>.extraHeader`) through git's environment (`GIT_CONFIG_*`), never in a URL, an
//!   argument or a file, and is masked in every message;
//! - git runs sealed by [`crate::git`]; the pack and the checkout are bounded while they are
//!   written ([`ExternalConfig::max_checkout_bytes`]).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

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
    /// Largest checkout, enforced while fetching and before checking out (ADR 0040).
    pub max_checkout_bytes: u64,
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
            .field("max_checkout_bytes", &self.max_checkout_bytes)
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
            max_checkout_bytes: MAX_CHECKOUT_BYTES,
        }
    }

    /// [`for_root`](Self::for_root) with the operator's settings applied (`--external-repo-allowlist`,
    /// `--external-gitea-url`, `--gitea-token`; ADR 0043).
    pub fn with_sources(root: &Path, sources: &super::SourceSettings) -> Self {
        let mut c = Self::for_root(root);
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        if let Some(list) = set(&sources.external_repo_allowlist) {
            c.allowlist = list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(u) = set(&sources.external_gitea_url) {
            c.default_url = u;
        }
        c.token = set(&sources.gitea_token);
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

/// Whether the clone URL `url` (`scheme://host/owner/name.git`) is allowlisted. Entries are
/// scheme-aware (ADR 0040): without a scheme they admit https only; `http://`, `file://` and
/// `git://` entries admit exactly that scheme and must be written explicitly.
pub(crate) fn allowed(allowlist: &[String], url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    let id = rest.trim_end_matches(".git");
    allowlist.iter().any(|entry| {
        let entry = entry.trim();
        let (e_scheme, e) = match entry.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("https".to_string(), entry),
        };
        if e_scheme != scheme {
            return false;
        }
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
    if !allowed(&cfg.allowlist, &url) {
        return Err(refused(format!(
            "repository {identity} is not in the allowlist (MOLECULE_EXTERNAL_REPO_ALLOWLIST) for {}; entries without a scheme admit https only",
            url.split_once("://").map_or("", |(s, _)| s)
        )));
    }
    let git = Git {
        token: cfg.token.as_deref(),
        timeout: cfg.timeout,
        max_bytes: cfg.max_checkout_bytes,
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
    /// Largest checkout.
    max_bytes: u64,
}

/// Why a git run failed.
enum RunFailure {
    /// A written file reached its cap.
    TooLarge,
    /// A masked one-line reason.
    Failed(String),
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunFailure::TooLarge => f.write_str("a file exceeded its size limit"),
            RunFailure::Failed(r) => f.write_str(r),
        }
    }
}

/// Largest stdout of one git run (ref listings, tree listings).
const STDOUT_CAP: usize = 16 * 1024 * 1024;

fn too_large(identity: &str, max: u64) -> TemplateError {
    TemplateError::new(
        ErrorKind::TooLarge,
        "",
        "",
        format!("{identity} is larger than {max} bytes"),
    )
}

/// The total size of the blobs in `git ls-tree -r -l -z` output.
fn tree_bytes(listing: &str) -> u64 {
    listing
        .split('\0')
        .filter_map(|rec| rec.split_once('\t'))
        .filter_map(|(meta, _)| {
            let parts: Vec<&str> = meta.split_whitespace().collect();
            match parts[..] {
                [_, "blob", _, size] => Some(size.parse::<u64>().unwrap_or(u64::MAX)),
                _ => None,
            }
        })
        .fold(0u64, u64::saturating_add)
}

/// Whether the token may travel to `url`: over https, or over plain http only when an
/// allowlist entry names `http://` explicitly (which [`allowed`] has checked); never to
/// `file://`, `git://` or ssh (ADR 0040).
fn sends_token(url: &str) -> bool {
    matches!(
        crate::git::Protocol::of_url(url),
        Some(crate::git::Protocol::Https | crate::git::Protocol::Http)
    )
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
            .run(None, Some(url), &["ls-remote", "--", url, r, &peeled], None)
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
        let failed = |step: &str, e: RunFailure| match e {
            RunFailure::TooLarge => too_large(identity, self.max_bytes),
            RunFailure::Failed(e) => fetch_failed(format!("{step} {identity} failed: {e}")),
        };
        // The pack may be a little larger than the files it holds; anything beyond this is
        // refused while it streams in (ADR 0040).
        let pack_cap = self
            .max_bytes
            .saturating_add(self.max_bytes / 8)
            .saturating_add(1024 * 1024);
        self.run(None, None, &["init", "-q", &tmp_s], None)
            .map_err(|e| failed("preparing the cache for", e))?;
        self.run(
            Some(tmp),
            Some(url),
            &["fetch", "-q", "--depth", "1", "--no-tags", "--", url, want],
            Some(pack_cap),
        )
        .map_err(|e| failed("fetching", e))?;
        let got = self
            .run(Some(tmp), None, &["rev-parse", "FETCH_HEAD^{commit}"], None)
            .map_err(|e| failed("reading the fetched commit of", e))?;
        if got.trim() != sha {
            return Err(fetch_failed(format!(
                "{identity} moved while it was fetched; will retry"
            )));
        }
        // The checkout is bounded before it is written: the sizes of its blobs, from the
        // object store, must fit; each written file is capped as well.
        let listing = self
            .run(
                Some(tmp),
                None,
                &["ls-tree", "-r", "-l", "-z", "--full-tree", "FETCH_HEAD"],
                None,
            )
            .map_err(|e| failed("listing", e))?;
        if tree_bytes(&listing) > self.max_bytes {
            return Err(too_large(identity, self.max_bytes));
        }
        self.run(
            Some(tmp),
            None,
            &["checkout", "-q", "FETCH_HEAD"],
            Some(self.max_bytes),
        )
        .map_err(|e| failed("checking out", e))?;
        std::fs::remove_dir_all(tmp.join(".git"))
            .map_err(|_| fetch_failed(format!("cleaning the checkout of {identity} failed")))?;
        Ok(())
    }

    /// Runs git sealed by [`crate::git`] (ADR 0040); Ok(stdout) on success, Err(a masked
    /// one-line reason) otherwise. `remote`: the URL a network call talks to — its transport
    /// is allowed and the token header is scoped to it. `max_file`: a bound on every file git
    /// writes (the pack, each checked-out file).
    fn run(
        &self,
        cwd: Option<&Path>,
        remote: Option<&str>,
        args: &[&str],
        max_file: Option<u64>,
    ) -> Result<String, RunFailure> {
        let mut spec = crate::git::Spec::new(args.iter().copied());
        if let Some(dir) = cwd {
            spec = spec.cwd(dir);
        }
        if let Some(url) = remote {
            spec = spec.allow_url(url);
            if let Some(t) = self.token.filter(|t| !t.is_empty())
                && sends_token(url)
            {
                spec = spec.header(url, format!("Authorization: token {t}"));
            }
        }
        if let Some(cap) = max_file {
            spec = spec.max_file_bytes(cap);
        }
        tracing::debug!(command = %args.first().copied().unwrap_or(""), "running git");
        match crate::git::run_blocking(&spec, STDOUT_CAP, self.timeout) {
            Ok(o) if o.success => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) if max_file.is_some() && o.hit_file_limit() => Err(RunFailure::TooLarge),
            Ok(o) => Err(RunFailure::Failed(self.reason(&o.stderr))),
            Err(crate::git::RunError::Timeout { .. }) => Err(RunFailure::Failed(format!(
                "timed out after {}s",
                self.timeout.as_secs()
            ))),
            Err(crate::git::RunError::TooLarge { cap }) => Err(RunFailure::Failed(format!(
                "git wrote more than {cap} bytes"
            ))),
            Err(crate::git::RunError::Spawn(_)) => Err(RunFailure::Failed(
                "the git CLI could not be started".to_string(),
            )),
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
            "http://127.0.0.1:9418/team/*".to_string(),
            "https://example.com/solo/repo".to_string(),
            "file:///srv/git/team/".to_string(),
        ];
        let https = |id: &str| format!("https://{id}.git");
        assert!(allowed(
            &list,
            &https("git.moleculesai.app/molecule-ai/dev")
        ));
        assert!(!allowed(
            &list,
            &https("git.moleculesai.app/molecule-ai-evil/dev")
        ));
        assert!(!allowed(&list, &https("github.com/foo/bar")));
        assert!(allowed(&list, "http://127.0.0.1:9418/team/x.git"));
        assert!(allowed(&list, &https("example.com/solo/repo")));
        assert!(allowed(&list, "https://example.com/solo/repo.git"));
        assert!(!allowed(&list, &https("example.com/solo/repo2")));
        assert!(allowed(&list, "file:///srv/git/team/x.git"));
        // Scheme-aware (ADR 0040): a scheme-less entry admits https only, an explicit one only
        // its own scheme.
        assert!(!allowed(
            &list,
            "http://git.moleculesai.app/molecule-ai/dev.git"
        ));
        assert!(!allowed(
            &list,
            "git://git.moleculesai.app/molecule-ai/dev.git"
        ));
        assert!(!allowed(
            &list,
            "file:///git.moleculesai.app/molecule-ai/dev.git"
        ));
        assert!(!allowed(&list, "https://127.0.0.1:9418/team/x.git"));
        assert!(!allowed(&list, "http://example.com/solo/repo.git"));
        assert!(!allowed(&list, "no-scheme/solo/repo"));
    }

    #[test]
    fn tokens_go_over_http_only_and_checkouts_are_sized_from_the_tree() {
        assert!(sends_token("https://h/o/r.git"));
        assert!(sends_token("http://h/o/r.git"));
        assert!(!sends_token("file:///srv/o/r.git"));
        assert!(!sends_token("git://h/o/r.git"));
        let listing = [
            "100644 blob aaaa      10\tREADME",
            "040000 tree bbbb       -\tdir",
            "100755 blob cccc 5\tdir/run.sh",
            "120000 blob dddd 3\tlink",
            "",
        ]
        .join("\0");
        assert_eq!(tree_bytes(&listing), 18);
        assert_eq!(tree_bytes("100644 blob a huge\tx\0"), u64::MAX);
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
