//! The git side of local-build mode (ADR 0031): the template repository's HEAD in one
//! `git ls-remote` call with its answer capped at 64 KiB, a shallow fetch into the build cache,
//! and the commit's tree as a tar (`git archive`) for the Docker build context.
//!
//! git runs sealed by [`crate::git`] (ADR 0040): a cleared environment, no user or system config,
//! no credential helpers, never a prompt, and the token as an `http.<repo url>.extraHeader`
//! through `GIT_CONFIG_*` variables — scoped to the repository, never in argv, a URL or a file.
//! Every message that leaves this module passes through a [`Masker`].

use std::path::Path;
use std::time::Duration;

use base64::Engine;

/// Largest accepted answer of the HEAD lookup.
pub const LOOKUP_CAP: usize = 64 * 1024;
/// Largest file a clone may write (its pack, each checked-out file): the build-context cap
/// plus room for pack overhead.
pub const CLONE_FILE_CAP: u64 = (super::CONTEXT_CAP as u64) + (super::CONTEXT_CAP as u64) / 8;

/// Errors of git calls; messages are already masked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The repository does not exist (or is hidden from these credentials) at the host.
    #[error("repository {repo} was not found")]
    NotFound { repo: String },
    /// The ref does not exist in the repository.
    #[error("ref {git_ref} was not found in {repo}")]
    RefNotFound { repo: String, git_ref: String },
    #[error("the git host refused the credentials for {repo}: {detail}")]
    AuthFailed { repo: String, detail: String },
    #[error("the git host of {repo} is unreachable: {detail}")]
    Unreachable { repo: String, detail: String },
    #[error("git did not finish {what} within {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error("the answer for {what} exceeded {cap} bytes")]
    TooLarge { what: String, cap: usize },
    #[error("git {what} failed: {detail}")]
    Failed { what: String, detail: String },
}

impl GitError {
    /// Whether retrying soon may help (network trouble), as opposed to a fix being needed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitError::Unreachable { .. } | GitError::Timeout { .. }
        )
    }
}

/// Replaces secrets in text: the token, its encoded header value, and any URL userinfo.
#[derive(Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} secrets)", self.secrets.len())
    }
}

impl Masker {
    /// A masker for `token` (if any) and the credentials embedded in `urls`.
    pub fn new(token: Option<&str>, urls: &[&str]) -> Masker {
        let mut secrets = Vec::new();
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            secrets.push(t.to_string());
            secrets.push(basic_credentials(t));
        }
        for u in urls {
            if let Some(info) = userinfo(u) {
                secrets.push(info.to_string());
                if let Some((_, password)) = info.split_once(':') {
                    secrets.push(password.to_string());
                }
            }
        }
        secrets.retain(|s| s.len() >= 3);
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker { secrets }
    }

    /// `text` with every secret replaced by `***` and URL userinfo removed.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "***");
        }
        strip_userinfo(&out)
    }
}

fn userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    authority.rsplit_once('@').map(|(info, _)| info)
}

/// A URL for display: any `user:password@` removed.
pub fn display_url(url: &str) -> String {
    strip_userinfo(url)
}

fn strip_userinfo(text: &str) -> String {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\x22]+@").expect("static regex")
    });
    re.replace_all(text, "$1").into_owned()
}

/// The `Authorization` header value for a token: Basic with the token as password, which
/// Gitea, GitHub and GitLab all accept for git over HTTP.
fn basic_credentials(token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
}

/// One git invocation's result.
struct Output {
    success: bool,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs git sealed by [`crate::git`] (ADR 0040), bounded in time and output. `remote` is the
/// repository URL a network call talks to: its transport is the only one allowed besides
/// https, and the token header is scoped to it (`http.<url>.extraHeader`).
#[allow(clippy::too_many_arguments)]
async fn run(
    args: &[&str],
    cwd: Option<&Path>,
    remote: Option<&str>,
    token: Option<&str>,
    masker: &Masker,
    timeout: Duration,
    stdout_cap: usize,
    what: &str,
) -> Result<Output, GitError> {
    let mut spec = crate::git::Spec::new(args.iter().copied());
    if let Some(dir) = cwd {
        // Calls inside the clone write the pack and the checkout: no file may outgrow the
        // build-context cap, enforced while it is written (ADR 0040).
        spec = spec.cwd(dir).max_file_bytes(CLONE_FILE_CAP);
    }
    if let Some(url) = remote {
        spec = spec.allow_url(url);
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            spec = spec.header(
                url,
                format!("Authorization: Basic {}", basic_credentials(t)),
            );
        }
    }
    let secs = timeout.as_secs().max(1);
    let out = crate::git::run(&spec, None, stdout_cap, timeout)
        .await
        .map_err(|e| match e {
            crate::git::RunError::Timeout { .. } => GitError::Timeout {
                what: what.to_string(),
                secs,
            },
            crate::git::RunError::TooLarge { cap } => GitError::TooLarge {
                what: what.to_string(),
                cap,
            },
            crate::git::RunError::Spawn(detail) => GitError::Failed {
                what: what.to_string(),
                detail: format!("could not run git: {detail}"),
            },
        })?;
    if cwd.is_some() && out.hit_file_limit() {
        return Err(GitError::TooLarge {
            what: what.to_string(),
            cap: CLONE_FILE_CAP as usize,
        });
    }
    Ok(Output {
        success: out.success,
        stdout: out.stdout,
        stderr: masker.mask(out.stderr.trim()),
    })
}

/// Maps a failed remote call's stderr to an error.
fn classify(repo: &str, stderr: &str, what: &str) -> GitError {
    let repo = display_url(repo);
    let lower = stderr.to_ascii_lowercase();
    let detail = last_line(stderr);
    if lower.contains("authentication failed")
        || lower.contains("could not read username")
        || lower.contains("could not read password")
        || lower.contains("the requested url returned error: 401")
        || lower.contains("the requested url returned error: 403")
        || lower.contains("permission denied")
    {
        GitError::AuthFailed { repo, detail }
    } else if lower.contains("not found")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("does not exist")
        || lower.contains("returned error: 404")
    {
        GitError::NotFound { repo }
    } else if lower.contains("could not resolve")
        || lower.contains("failed to connect")
        || lower.contains("connection refused")
        || lower.contains("connection reset")
        || lower.contains("timed out")
        || lower.contains("network is unreachable")
        || lower.contains("returned error: 5")
        || lower.contains("unable to access")
    {
        GitError::Unreachable { repo, detail }
    } else {
        GitError::Failed {
            what: what.to_string(),
            detail,
        }
    }
}

fn last_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no output");
    line.chars().take(300).collect()
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The commit `git_ref` names in `repo`, with one `git ls-remote` call whose answer is capped
/// at [`LOOKUP_CAP`]. A full 40-hex sha is returned as is (no call).
pub async fn head_sha(
    repo: &str,
    git_ref: &str,
    token: Option<&str>,
    masker: &Masker,
    timeout: Duration,
) -> Result<String, GitError> {
    if is_sha(git_ref) {
        return Ok(git_ref.to_string());
    }
    let what = format!("the lookup of {git_ref} in {}", display_url(repo));
    let out = run(
        &["ls-remote", "--", repo, git_ref],
        None,
        Some(repo),
        token,
        masker,
        timeout,
        LOOKUP_CAP,
        &what,
    )
    .await?;
    if !out.success {
        return Err(classify(repo, &out.stderr, &what));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    pick_ref(&text, git_ref).ok_or_else(|| GitError::RefNotFound {
        repo: display_url(repo),
        git_ref: git_ref.to_string(),
    })
}

/// Picks the commit of `git_ref` from `ls-remote` output: the exact name, else the branch,
/// else the (peeled) tag.
pub fn pick_ref(ls_remote: &str, git_ref: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = ls_remote
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(sha, _)| is_sha(sha))
        .collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, n)| *n == name)
            .map(|(s, _)| s.to_string())
    };
    find(&format!("{git_ref}^{{}}"))
        .or_else(|| find(git_ref))
        .or_else(|| find(&format!("refs/heads/{git_ref}")))
        .or_else(|| find(&format!("refs/tags/{git_ref}^{{}}")))
        .or_else(|| find(&format!("refs/tags/{git_ref}")))
}

/// Shallow-fetches `sha` (or, where the server refuses fetching by sha, `git_ref`) into a new
/// repository at `dest` and checks it out; returns the fetched commit.
pub async fn shallow_fetch(
    repo: &str,
    sha: &str,
    git_ref: &str,
    dest: &Path,
    token: Option<&str>,
    masker: &Masker,
    timeout: Duration,
) -> Result<String, GitError> {
    let what = format!("the shallow clone of {}", display_url(repo));
    let dest_s = dest.to_string_lossy().to_string();
    std::fs::create_dir_all(dest).map_err(|e| GitError::Failed {
        what: what.clone(),
        detail: format!("creating the clone directory: {e}"),
    })?;
    local(
        &["init", "-q", "-b", "main", &dest_s],
        dest,
        timeout,
        "git init",
    )
    .await?;
    let mut fetched = run(
        &["fetch", "-q", "--depth", "1", "--no-tags", "--", repo, sha],
        Some(dest),
        Some(repo),
        token,
        masker,
        timeout,
        1024 * 1024,
        &what,
    )
    .await?;
    if !fetched.success {
        let first = classify(repo, &fetched.stderr, &what);
        if first.is_transient() || matches!(first, GitError::AuthFailed { .. }) {
            return Err(first);
        }
        // Servers that refuse `want <sha>` still serve the ref.
        fetched = run(
            &[
                "fetch",
                "-q",
                "--depth",
                "1",
                "--no-tags",
                "--",
                repo,
                git_ref,
            ],
            Some(dest),
            Some(repo),
            token,
            masker,
            timeout,
            1024 * 1024,
            &what,
        )
        .await?;
        if !fetched.success {
            return Err(classify(repo, &fetched.stderr, &what));
        }
    }
    let head = local(&["rev-parse", "FETCH_HEAD"], dest, timeout, "git rev-parse").await?;
    let got = String::from_utf8_lossy(&head.stdout).trim().to_string();
    if !is_sha(&got) {
        return Err(GitError::Failed {
            what,
            detail: "the fetch produced no commit".into(),
        });
    }
    local(
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            "FETCH_HEAD",
        ],
        dest,
        timeout,
        "git checkout",
    )
    .await?;
    Ok(got)
}

/// A git call inside the clone (no network, no token).
async fn local(
    args: &[&str],
    dir: &Path,
    timeout: Duration,
    what: &str,
) -> Result<Output, GitError> {
    let out = run(
        args,
        Some(dir),
        None,
        None,
        &Masker::default(),
        timeout,
        1024 * 1024,
        what,
    )
    .await?;
    if out.success {
        Ok(out)
    } else {
        Err(GitError::Failed {
            what: what.to_string(),
            detail: last_line(&out.stderr),
        })
    }
}

/// The tree of `commit` in the repository at `dir` as a tar (the build context), at most `cap`
/// bytes.
pub async fn archive(
    dir: &Path,
    commit: &str,
    cap: usize,
    timeout: Duration,
) -> Result<Vec<u8>, GitError> {
    let out = run(
        &["archive", "--format=tar", commit],
        Some(dir),
        None,
        None,
        &Masker::default(),
        timeout,
        cap,
        "git archive",
    )
    .await?;
    if !out.success {
        return Err(GitError::Failed {
            what: "git archive".into(),
            detail: last_line(&out.stderr),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masker_hides_tokens_encodings_and_userinfo() {
        let m = Masker::new(
            Some("tok-s3cret-value"),
            &["https://bob:pa55word@git.example/org/x-"],
        );
        let text = format!(
            "failed for https://bob:pa55word@git.example/org/x-hermes with tok-s3cret-value and {} and pa55word",
            basic_credentials("tok-s3cret-value")
        );
        let masked = m.mask(&text);
        assert!(!masked.contains("tok-s3cret-value"), "{masked}");
        assert!(!masked.contains("pa55word"), "{masked}");
        assert!(
            !masked.contains(&basic_credentials("tok-s3cret-value")),
            "{masked}"
        );
        assert!(
            masked.contains("https://git.example/org/x-hermes"),
            "{masked}"
        );
        assert!(format!("{m:?}").starts_with("Masker("));
        assert_eq!(
            display_url("http://x-access-token:abc@127.0.0.1:9/r"),
            "http://127.0.0.1:9/r"
        );
        assert_eq!(display_url("file:///tmp/r"), "file:///tmp/r");
    }

    #[test]
    fn ls_remote_output_is_picked_by_ref() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let d = "d".repeat(40);
        let out = format!(
            "{a}\tHEAD\n{b}\trefs/heads/main\n{c}\trefs/tags/v1\n{d}\trefs/tags/v1^{{}}\n{a}\trefs/heads/x/HEAD\n"
        );
        assert_eq!(pick_ref(&out, "HEAD"), Some(a.clone()));
        assert_eq!(pick_ref(&out, "main"), Some(b));
        assert_eq!(pick_ref(&out, "v1"), Some(d));
        assert_eq!(pick_ref(&out, "nope"), None);
        assert_eq!(pick_ref("garbage\tHEAD\n", "HEAD"), None);
    }

    #[test]
    fn failures_are_classified() {
        let r = "https://u:p@git.example/r";
        assert!(matches!(
            classify(r, "remote: Not Found\nfatal: repository 'https://git.example/r/' not found", "x"),
            GitError::NotFound { repo } if repo == "https://git.example/r"
        ));
        assert!(matches!(
            classify(
                r,
                "fatal: '/tmp/r' does not appear to be a git repository",
                "x"
            ),
            GitError::NotFound { .. }
        ));
        assert!(matches!(
            classify(
                r,
                "fatal: Authentication failed for 'https://git.example/r/'",
                "x"
            ),
            GitError::AuthFailed { .. }
        ));
        let e = classify(
            r,
            "fatal: unable to access 'https://git.example/r/': Could not resolve host: git.example",
            "x",
        );
        assert!(e.is_transient(), "{e:?}");
        assert!(matches!(
            classify(r, "fatal: something odd", "x"),
            GitError::Failed { .. }
        ));
    }

    async fn git(dir: &Path, args: &[&str]) {
        let st = tokio::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .await
            .unwrap();
        assert!(st.status.success(), "{args:?}: {st:?}");
    }

    #[tokio::test]
    async fn lookup_fetch_and_archive_a_real_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]).await;
        std::fs::write(repo.join("Dockerfile"), "FROM scratch\n").unwrap();
        git(&repo, &["add", "."]).await;
        git(&repo, &["commit", "-q", "-m", "one"]).await;
        let url = format!("file://{}", repo.display());
        let m = Masker::default();
        let t = Duration::from_secs(20);
        let sha = head_sha(&url, "HEAD", None, &m, t).await.unwrap();
        assert!(is_sha(&sha));
        assert_eq!(head_sha(&url, "main", None, &m, t).await.unwrap(), sha);
        assert!(matches!(
            head_sha(&url, "nope", None, &m, t).await,
            Err(GitError::RefNotFound { .. })
        ));
        let missing = format!("file://{}/missing", tmp.path().display());
        assert!(matches!(
            head_sha(&missing, "HEAD", None, &m, t).await,
            Err(GitError::NotFound { .. })
        ));

        let dest = tmp.path().join("clone");
        let got = shallow_fetch(&url, &sha, "HEAD", &dest, None, &m, t)
            .await
            .unwrap();
        assert_eq!(got, sha);
        assert!(dest.join("Dockerfile").is_file());
        let tar = archive(&dest, &sha, 1 << 20, t).await.unwrap();
        assert!(tar.windows(10).any(|w| w == b"Dockerfile"));
        assert!(matches!(
            archive(&dest, &sha, 16, t).await,
            Err(GitError::TooLarge { .. })
        ));
    }
}
