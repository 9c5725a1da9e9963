//! The one way Molecule runs `git` (ADR 0040). Every call site — plugin sources, local-build
//! template clones, `!external` org templates — builds a [`Spec`] and runs it here, so all git
//! runs are sealed the same way:
//!
//! - a cleared environment: only `PATH`, the proxy and CA variables, `GIT_SSH_COMMAND` and
//!   `LC_ALL=C` survive; `HOME` is a fresh empty directory per run;
//! - no system or global gitconfig (`GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`),
//!   no credential helpers (`credential.helper=`), never a prompt (`GIT_TERMINAL_PROMPT=0`);
//! - an allowed-protocols list: `protocol.allow=never`, then `https` plus only what the caller
//!   allows explicitly (`http`, `file`, `ssh`, `git`); `ext` never;
//! - no http redirects (`http.followRedirects=false`), no hooks, no submodules, no auto-gc;
//! - secret headers only through `GIT_CONFIG_*` variables (never argv) and scoped to one URL
//!   (`http.<url>.extraHeader`), never a global `http.extraHeader`;
//! - a timeout, a cap on what is read from stdout, and optionally a cap on the size of any file
//!   git writes (`RLIMIT_FSIZE` through `sh -c 'ulimit -f'`, with `SIGXFSZ` ignored so the
//!   write fails with `EFBIG`): a fetched pack is bounded while it streams in, not measured
//!   after the fact.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest kept stderr of one run.
const STDERR_CAP: usize = 64 * 1024;

/// Environment variables passed through to git; everything else is cleared.
pub const KEPT_ENV: &[&str] = &[
    "PATH",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// A git transport a caller may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Https,
    Http,
    Ssh,
    Git,
    File,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Https => "https",
            Protocol::Http => "http",
            Protocol::Ssh => "ssh",
            Protocol::Git => "git",
            Protocol::File => "file",
        }
    }

    /// The transport `url` would use: its scheme, or ssh for scp-like `user@host:path`.
    /// `None` for anything else (`ext::`, local paths, unknown schemes).
    pub fn of_url(url: &str) -> Option<Protocol> {
        if let Some((scheme, _)) = url.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "https" => Some(Protocol::Https),
                "http" => Some(Protocol::Http),
                "ssh" | "git+ssh" | "ssh+git" => Some(Protocol::Ssh),
                "git" => Some(Protocol::Git),
                "file" => Some(Protocol::File),
                _ => None,
            };
        }
        let (head, _) = url.split_once(':')?;
        (!head.is_empty() && !head.contains('/') && head.contains('@')).then_some(Protocol::Ssh)
    }
}

/// One git invocation, before it is sealed.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// Arguments after `git` (and after the seal's `-c` options).
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Transports allowed besides https.
    pub allow: Vec<Protocol>,
    /// `(url, header)`: sent as `http.<url>.extraHeader` through `GIT_CONFIG_*` variables.
    pub headers: Vec<(String, String)>,
    /// Cap on the size of any one file git (and its children) write, in bytes.
    pub max_file_bytes: Option<u64>,
}

impl Spec {
    pub fn new<I, S>(args: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Spec {
            args: args.into_iter().map(Into::into).collect(),
            ..Spec::default()
        }
    }

    pub fn cwd(mut self, dir: &Path) -> Spec {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Allows the transport of `url` (besides https), if it has a known one.
    pub fn allow_url(mut self, url: &str) -> Spec {
        if let Some(p) = Protocol::of_url(url)
            && !self.allow.contains(&p)
        {
            self.allow.push(p);
        }
        self
    }

    pub fn header(mut self, url: &str, header: String) -> Spec {
        self.headers.push((url.to_string(), header));
        self
    }

    pub fn max_file_bytes(mut self, cap: u64) -> Spec {
        self.max_file_bytes = Some(cap);
        self
    }
}

/// A sealed invocation: program, argv and the complete environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The environment may hold header values.
        f.debug_struct("Invocation")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &format_args!("{} variables", self.env.len()))
            .finish()
    }
}

/// The `-c` options every run gets (no secrets).
fn seal_config(allow: &[Protocol]) -> Vec<String> {
    let mut c = vec![
        "protocol.allow=never".to_string(),
        "protocol.https.allow=always".to_string(),
    ];
    let mut allow: Vec<Protocol> = allow
        .iter()
        .copied()
        .filter(|p| *p != Protocol::Https)
        .collect();
    allow.sort();
    allow.dedup();
    for p in allow {
        c.push(format!("protocol.{}.allow=always", p.name()));
    }
    c.extend(
        [
            "protocol.ext.allow=never",
            "credential.helper=",
            "http.followRedirects=false",
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "core.askPass=",
            "submodule.recurse=false",
            "fetch.recurseSubmodules=false",
            "fetch.unpackLimit=1",
            "transfer.unpackLimit=1",
            "gc.auto=0",
            "maintenance.auto=false",
            "advice.detachedHead=false",
        ]
        .map(String::from),
    );
    c
}

/// Seals `spec` with `home` as the (empty) `HOME`; `inherited(name)` reads the caller's
/// environment (only [`KEPT_ENV`] and `GIT_SSH_COMMAND` are asked for).
pub fn seal(spec: &Spec, home: &Path, inherited: impl Fn(&str) -> Option<String>) -> Invocation {
    let mut git_args = vec![];
    for c in seal_config(&spec.allow) {
        git_args.push("-c".to_string());
        git_args.push(c);
    }
    git_args.extend(spec.args.iter().cloned());

    let mut env: Vec<(String, String)> = vec![];
    for k in KEPT_ENV {
        if let Some(v) = inherited(k) {
            env.push((k.to_string(), v));
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    let ssh = inherited("GIT_SSH_COMMAND").unwrap_or_else(|| "ssh -o BatchMode=yes".to_string());
    let home_s = home.to_string_lossy().to_string();
    env.extend(
        [
            ("HOME", home_s.as_str()),
            ("XDG_CONFIG_HOME", home_s.as_str()),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_SSH_COMMAND", ssh.as_str()),
            ("LC_ALL", "C"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env.push((
        "GIT_CONFIG_COUNT".to_string(),
        spec.headers.len().to_string(),
    ));
    for (i, (url, header)) in spec.headers.iter().enumerate() {
        env.push((
            format!("GIT_CONFIG_KEY_{i}"),
            format!("http.{url}.extraHeader"),
        ));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), header.clone()));
    }

    let (program, args) = match spec.max_file_bytes {
        // POSIX `ulimit -f` counts 512-byte blocks. SIGXFSZ is ignored (ignored signals
        // survive exec) so an oversized write fails with EFBIG ("File too large") instead of
        // killing the writer without a message.
        Some(cap) => {
            let blocks = cap.div_ceil(512).max(1);
            let mut a = vec![
                "-c".to_string(),
                format!("trap '' XFSZ; ulimit -f {blocks} || exit 125; exec git \"$@\""),
                "git".to_string(),
            ];
            a.extend(git_args);
            ("sh".to_string(), a)
        }
        None => ("git".to_string(), git_args),
    };
    Invocation {
        program,
        args,
        env,
        cwd: spec.cwd.clone(),
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    /// At most 64 KiB, lossily decoded; not masked (callers mask).
    pub stderr: String,
}

impl Output {
    /// Whether git failed because a file grew past [`Spec::max_file_bytes`].
    pub fn hit_file_limit(&self) -> bool {
        !self.success && {
            let e = self.stderr.to_ascii_lowercase();
            e.contains("file too large") || e.contains("signal 25")
        }
    }
}

/// Why a run produced no [`Output`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("the git CLI could not be started: {0}")]
    Spawn(String),
    #[error("git did not finish within {secs}s")]
    Timeout { secs: u64 },
    #[error("git wrote more than {cap} bytes")]
    TooLarge { cap: usize },
}

/// An empty `HOME`, removed when dropped.
struct Home(PathBuf);

impl Home {
    fn new() -> Result<Home, RunError> {
        let dir = std::env::temp_dir().join(format!(
            "molecule-git-home-{}",
            crate::util::random_suffix(12)
        ));
        std::fs::create_dir(&dir)
            .map_err(|e| RunError::Spawn(format!("cannot create an empty HOME: {e}")))?;
        Ok(Home(dir))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Runs `spec` sealed, bounded by `timeout`; stdout beyond `stdout_cap` kills git.
pub async fn run(
    spec: &Spec,
    stdin: Option<Vec<u8>>,
    stdout_cap: usize,
    timeout: Duration,
) -> Result<Output, RunError> {
    let home = Home::new()?;
    let inv = seal(spec, &home.0, process_env);
    let mut cmd = tokio::process::Command::new(&inv.program);
    cmd.args(&inv.args)
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(d) = &inv.cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn(e.to_string()))?;
    if let Some((mut si, data)) = child.stdin.take().zip(stdin) {
        // Written concurrently with reading stdout so large batches cannot deadlock.
        tokio::spawn(async move {
            let _ = si.write_all(&data).await;
            let _ = si.shutdown().await;
        });
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(STDERR_CAP as u64).read_to_end(&mut buf).await;
            // Drain the rest so git never blocks on a full pipe.
            let _ = tokio::io::copy(s, &mut tokio::io::sink()).await;
        }
        buf
    });
    let read_out = async {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > stdout_cap {
                    return Err(());
                }
            }
        }
        Ok(buf)
    };
    let secs = timeout.as_secs().max(1);
    let deadline = tokio::time::Instant::now() + timeout;
    let stdout = match tokio::time::timeout_at(deadline, read_out).await {
        Ok(Ok(b)) => b,
        Ok(Err(())) => {
            let _ = child.start_kill();
            err_task.abort();
            return Err(RunError::TooLarge { cap: stdout_cap });
        }
        Err(_) => {
            let _ = child.start_kill();
            err_task.abort();
            return Err(RunError::Timeout { secs });
        }
    };
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = child.start_kill();
            err_task.abort();
            return Err(RunError::Timeout { secs });
        }
    };
    let err = match tokio::time::timeout(Duration::from_secs(5), err_task).await {
        Ok(Ok(e)) => e,
        _ => Vec::new(),
    };
    drop(home);
    Ok(Output {
        success: status.success(),
        code: status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

/// [`run`] for synchronous callers (threads instead of tasks).
pub fn run_blocking(spec: &Spec, stdout_cap: usize, timeout: Duration) -> Result<Output, RunError> {
    let home = Home::new()?;
    let inv = seal(spec, &home.0, process_env);
    let mut cmd = std::process::Command::new(&inv.program);
    cmd.args(&inv.args)
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = &inv.cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn(e.to_string()))?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let over_w = over.clone();
    // The reader answers `Err` once stdout passes the cap; the flag only lets the wait loop
    // below kill git early instead of waiting for it to finish.
    let out_t = std::thread::spawn(move || -> Result<Vec<u8>, ()> {
        let mut buf = Vec::new();
        if let Some(o) = stdout.as_mut() {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let n = o.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > stdout_cap {
                    over_w.store(true, std::sync::atomic::Ordering::SeqCst);
                    // Keep draining (and discarding) until git is killed.
                    let _ = std::io::copy(o, &mut std::io::sink());
                    return Err(());
                }
            }
        }
        Ok(buf)
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(STDERR_CAP as u64).read_to_end(&mut buf);
            let _ = std::io::copy(e, &mut std::io::sink());
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    enum End {
        Exited(std::process::ExitStatus),
        Timeout,
        TooLarge,
    }
    let end = loop {
        if over.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            break End::TooLarge;
        }
        match child.try_wait() {
            Ok(Some(st)) => break End::Exited(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break End::Timeout;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break End::Timeout;
            }
        }
    };
    let out = out_t.join().unwrap_or(Ok(Vec::new()));
    let err = err_t.join().unwrap_or_default();
    drop(home);
    // git may exit before the reader sees the end of an over-long stdout; the reader decides.
    let Ok(out) = out else {
        return Err(RunError::TooLarge { cap: stdout_cap });
    };
    match end {
        End::Exited(st) => Ok(Output {
            success: st.success(),
            code: st.code(),
            stdout: out,
            stderr: String::from_utf8_lossy(&err).into_owned(),
        }),
        End::Timeout => Err(RunError::Timeout {
            secs: timeout.as_secs().max(1),
        }),
        End::TooLarge => Err(RunError::TooLarge { cap: stdout_cap }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(inv: &'a Invocation, k: &str) -> Option<&'a str> {
        inv.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn configs(inv: &Invocation) -> Vec<&str> {
        inv.args
            .windows(2)
            .filter(|w| w[0] == "-c")
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn transports_of_urls() {
        for (url, want) in [
            ("https://h/o/r.git", Some(Protocol::Https)),
            ("HTTP://h/o/r", Some(Protocol::Http)),
            ("ssh://git@h/o/r", Some(Protocol::Ssh)),
            ("git@github.com:o/r.git", Some(Protocol::Ssh)),
            ("git://h/o/r", Some(Protocol::Git)),
            ("file:///srv/r", Some(Protocol::File)),
            ("ext::sh -c evil", None),
            ("/srv/r", None),
            ("./a:b", None),
            ("fd::3", None),
        ] {
            assert_eq!(Protocol::of_url(url), want, "{url}");
        }
    }

    #[test]
    fn the_seal_clears_config_credentials_and_environment() {
        let home = Path::new("/tmp/empty-home");
        let inherited = |k: &str| match k {
            "PATH" => Some("/opt/bin:/usr/bin".to_string()),
            "HTTPS_PROXY" => Some("http://proxy:3128".to_string()),
            // Never asked for: everything else is cleared.
            "HOME" | "GIT_CONFIG_PARAMETERS" | "GIT_ASKPASS" | "GIT_SSL_NO_VERIFY" => {
                panic!("asked for {k}")
            }
            _ => None,
        };
        let inv = seal(
            &Spec::new(["ls-remote", "--", "https://h/o/r"]),
            home,
            inherited,
        );
        assert_eq!(inv.program, "git");
        let c = configs(&inv);
        assert_eq!(
            &c[..2],
            ["protocol.allow=never", "protocol.https.allow=always"]
        );
        for want in [
            "credential.helper=",
            "http.followRedirects=false",
            "core.hooksPath=/dev/null",
            "protocol.ext.allow=never",
        ] {
            assert!(c.contains(&want), "{want} in {c:?}");
        }
        assert!(!c.iter().any(|k| k.starts_with("protocol.file")
            || k.starts_with("protocol.http.")
            || k.starts_with("protocol.ssh")));
        assert!(
            !c.iter()
                .any(|k| k.to_ascii_lowercase().contains("extraheader"))
        );
        assert_eq!(
            &inv.args[inv.args.len() - 3..],
            ["ls-remote", "--", "https://h/o/r"]
        );
        assert_eq!(env_of(&inv, "HOME"), Some("/tmp/empty-home"));
        assert_eq!(env_of(&inv, "GIT_CONFIG_NOSYSTEM"), Some("1"));
        assert_eq!(env_of(&inv, "GIT_CONFIG_GLOBAL"), Some("/dev/null"));
        assert_eq!(env_of(&inv, "GIT_TERMINAL_PROMPT"), Some("0"));
        assert_eq!(env_of(&inv, "GIT_CONFIG_COUNT"), Some("0"));
        assert_eq!(env_of(&inv, "PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(env_of(&inv, "HTTPS_PROXY"), Some("http://proxy:3128"));
        assert_eq!(
            env_of(&inv, "GIT_SSH_COMMAND"),
            Some("ssh -o BatchMode=yes")
        );
        let names: Vec<&str> = inv.env.iter().map(|(k, _)| k.as_str()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len(), "{names:?}");
        assert!(!format!("{inv:?}").contains("proxy:3128"));
    }

    #[test]
    fn protocols_are_allowed_only_explicitly_and_headers_are_scoped_in_env() {
        let spec = Spec::new(["fetch", "--", "http://h:8/o/r.git", "main"])
            .allow_url("http://h:8/o/r.git")
            .allow_url("ext::sh")
            .allow_url("https://x/y")
            .header("http://h:8/o/r.git", "Authorization: token s3cret".into());
        let inv = seal(&spec, Path::new("/h"), |_| None);
        let c = configs(&inv);
        assert!(c.contains(&"protocol.http.allow=always"), "{c:?}");
        assert!(
            !c.iter()
                .any(|k| k.starts_with("protocol.file")
                    || k.starts_with("protocol.ext.allow=always"))
        );
        assert!(
            !inv.args.iter().any(|a| a.contains("s3cret")),
            "the header never reaches argv"
        );
        assert_eq!(env_of(&inv, "GIT_CONFIG_COUNT"), Some("1"));
        assert_eq!(
            env_of(&inv, "GIT_CONFIG_KEY_0"),
            Some("http.http://h:8/o/r.git.extraHeader")
        );
        assert_eq!(
            env_of(&inv, "GIT_CONFIG_VALUE_0"),
            Some("Authorization: token s3cret")
        );
        assert_eq!(env_of(&inv, "PATH"), Some("/usr/local/bin:/usr/bin:/bin"));
    }

    #[test]
    fn a_file_size_cap_wraps_git_in_ulimit() {
        let inv = seal(
            &Spec::new(["fetch", "-q"]).max_file_bytes(1024 * 1024 + 1),
            Path::new("/h"),
            |_| None,
        );
        assert_eq!(inv.program, "sh");
        assert_eq!(inv.args[0], "-c");
        assert!(inv.args[1].contains("ulimit -f 2049"), "{}", inv.args[1]);
        assert!(inv.args[1].contains("trap '' XFSZ"));
        assert_eq!(inv.args[2], "git");
        assert_eq!(inv.args[3], "-c");
        assert_eq!(&inv.args[inv.args.len() - 2..], ["fetch", "-q"]);
    }

    #[tokio::test]
    async fn runs_are_bounded_and_report_the_file_limit() {
        let tmp =
            std::env::temp_dir().join(format!("molecule-git-t-{}", crate::util::random_suffix(8)));
        std::fs::create_dir_all(&tmp).expect("tmp");
        let out = run(
            &Spec::new(["init", "-q", "r"]).cwd(&tmp),
            None,
            1024,
            Duration::from_secs(30),
        )
        .await
        .expect("init");
        assert!(out.success, "{}", out.stderr);
        // hash-object -w writes one loose object; a 1 KiB cap refuses a 64 KiB random blob.
        let blob: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let spec = Spec::new(["hash-object", "-w", "--stdin"])
            .cwd(&tmp.join("r"))
            .max_file_bytes(1024);
        let out = run(&spec, Some(blob.clone()), 1024, Duration::from_secs(30))
            .await
            .expect("ran");
        assert!(out.hit_file_limit(), "{out:?}");
        let blocking = run_blocking(
            &Spec::new(["rev-parse", "--git-dir"]).cwd(&tmp.join("r")),
            4,
            Duration::from_secs(30),
        );
        assert_eq!(blocking.unwrap_err(), RunError::TooLarge { cap: 4 });
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
