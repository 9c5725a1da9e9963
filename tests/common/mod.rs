//! Test harness: starts the real `molecule serve` binary on a free port, drives the real
//! kubectl binaries and plain HTTP against it, and kills it on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which store the server uses.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// SQLite, or a fresh Postgres database (None when Postgres is not configured outside CI).
    pub async fn get(postgres: bool) -> Option<Backend> {
        if postgres {
            molecule::testing::postgres_url()
                .await
                .map(Backend::Postgres)
        } else {
            Some(Backend::Sqlite)
        }
    }
}

/// A running `molecule serve`.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub backend: Backend,
    child: Option<Child>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

/// The kubectl binary of a minor version (`1.27`, `1.33`), or the default dispatcher.
pub fn kubectl_bin(version: &str) -> PathBuf {
    let base = Path::new("/usr/lib/google-cloud-sdk/bin");
    let p = base.join(format!("kubectl.{version}"));
    if p.exists() {
        return p;
    }
    PathBuf::from(format!("kubectl.{version}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Self::start_with(backend, &[])
    }

    pub fn start_with(backend: Backend, extra: &[&str]) -> Server {
        Self::start_with_env(backend, extra, &[])
    }

    /// Like `start_with`, with extra environment variables for the server process.
    pub fn start_with_env(backend: Backend, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            dir,
            port: free_port(),
            backend,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("kubeconfig")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("token"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// (Re)starts the process on the same data dir and port, and waits until ready.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_molecule"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        if !self.extra.iter().any(|a| a == "--controllers") {
            cmd.arg("--controllers").arg("none");
        }
        cmd.args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("DATABASE_URL")
            .env_remove("MOLECULE_DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Backend::Postgres(url) = &self.backend {
            cmd.env("MOLECULE_DATABASE_URL", url);
        }
        self.child = Some(cmd.spawn().expect("spawn molecule serve"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.http_raw("GET", "/readyz", None, &[], false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("serve did not become ready; log:\n{}", self.log());
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Runs kubectl (of `version`) against this server, with its own HOME (discovery cache).
    pub fn kubectl(&self, version: &str, args: &[&str]) -> Output {
        self.kubectl_stdin(version, args, None)
    }

    pub fn kubectl_stdin(&self, version: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let home = self.dir.path().join(format!("home-{version}"));
        let _ = std::fs::create_dir_all(&home);
        let mut cmd = Command::new(kubectl_bin(version));
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &home)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin
            && let Some(mut si) = child.stdin.take()
        {
            si.write_all(input.as_bytes()).expect("stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// A background kubectl (e.g. `get -w`), its output going to a file.
    pub fn kubectl_spawn(&self, version: &str, args: &[&str], out: &Path) -> Child {
        let home = self.dir.path().join(format!("home-{version}"));
        let _ = std::fs::create_dir_all(&home);
        let f = std::fs::File::create(out).expect("out file");
        Command::new(kubectl_bin(version))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("f"))
            .stderr(f)
            .spawn()
            .expect("spawn kubectl")
    }

    /// A plain-HTTP/1.0 request with the bearer token (or without, when `auth` is false).
    /// Returns (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        self.http_raw(method, path, content_type, body, true)
            .expect("http request")
    }

    pub fn http_raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        auth: bool,
    ) -> std::io::Result<(u16, String)> {
        let token = auth.then(|| self.token());
        raw_request(
            &format!("127.0.0.1:{}", self.port),
            method,
            path,
            content_type,
            token.as_deref(),
            body,
        )
    }

    /// A plain-HTTP/1.0 request with the given bearer token (or none). Returns (status, body).
    pub fn http_as(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        raw_request(
            &format!("127.0.0.1:{}", self.port),
            method,
            path,
            (!body.is_empty()).then_some("application/json"),
            token,
            body,
        )
        .expect("http request")
    }

    /// A JSON request with the given bearer token and extra headers (e.g. `X-Workspace-ID`).
    pub fn http_headers(
        &self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        raw_request_with(
            &format!("127.0.0.1:{}", self.port),
            method,
            path,
            Some("application/json"),
            Some(token),
            headers,
            body,
        )
        .expect("http request")
    }

    /// A kube-rs client built from the kubeconfig (TLS + token), exactly as the controllers do.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("config");
        kube::Client::try_from(cfg).expect("client")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Output as text, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One HTTP/1.0 request over a fresh connection; returns (status, body).
fn raw_request(
    authority: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    token: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    raw_request_with(authority, method, path, content_type, token, &[], body)
}

/// [`raw_request`] with extra request headers.
fn raw_request_with(
    authority: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(authority)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A large body may be refused before it is all sent.
    let _ = s.write_all(body);
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
    Ok((
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// A plain HTTP/1.0 POST to an absolute `http://host:port/path` URL; returns (status, body).
pub fn post_url(url: &str, body: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("http only"))?;
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    raw_request(
        authority,
        "POST",
        &path,
        Some("application/json"),
        token,
        body.as_bytes(),
    )
}

/// Runs `docker` with args; returns (success, stdout).
pub fn docker(args: &[&str]) -> (bool, String) {
    match Command::new("docker").args(args).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ),
        Err(_) => (false, String::new()),
    }
}

/// Polls `f` until it is true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The managed Docker objects of one test namespace: `kind` is `container` or `volume`.
pub fn managed_in(ns: &str, kind: &str) -> Vec<String> {
    let filter = format!("label=molecule.ai/namespace={ns}");
    let out = if kind == "container" {
        docker(&["ps", "-aq", "--filter", &filter]).1
    } else {
        docker(&["volume", "ls", "-q", "--filter", &filter]).1
    };
    out.lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Removes every managed container and volume of a test namespace.
pub fn cleanup(ns: &str) {
    for c in managed_in(ns, "container") {
        docker(&["rm", "-f", &c]);
    }
    for v in managed_in(ns, "volume") {
        docker(&["volume", "rm", "-f", &v]);
    }
}

/// Removes the namespace's containers and volumes when dropped (also when a test fails).
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup(&self.0);
    }
}

/// Whether the Docker object `name` of `kind` (`container`, `volume`) exists.
pub fn exists(kind: &str, name: &str) -> bool {
    docker(&[kind, "inspect", name]).0
}

/// The last lines of the server's log, for assertion messages.
pub fn tail(s: &Server) -> String {
    let log = s.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// kubectl 1.33 with `args`; asserts success (printing the server log's tail) and returns stdout.
pub fn ok(s: &Server, args: &[&str]) -> String {
    let o = s.kubectl("1.33", args);
    assert!(
        o.status.success(),
        "kubectl {args:?} failed:\n{}\nserver log:\n{}",
        text(&o),
        tail(s)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Copies the directory tree `from` to `to` (created), files and folders only.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// `kubectl apply -n ns -f -` of `yaml`; asserts success.
pub fn apply(s: &Server, ns: &str, yaml: &str) {
    let o = s.kubectl_stdin("1.33", &["apply", "-n", ns, "-f", "-"], Some(yaml));
    assert!(o.status.success(), "apply failed:\n{}", text(&o));
}

/// The Workspace `ns/name` as JSON over plain HTTP (`Null` when it is not there).
pub fn get(s: &Server, ns: &str, name: &str) -> serde_json::Value {
    let (code, body) = s.http(
        "GET",
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces/{name}"),
        None,
        b"",
    );
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// The Workspace's `status.phase` (empty when unset).
pub fn phase(s: &Server, ns: &str, name: &str) -> String {
    get(s, ns, name)["status"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// An echo Workspace manifest; `extra` is appended to its spec (indented two spaces).
pub fn ws_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  runtime: echo\n{extra}"
    )
}

/// A server whose Docker objects are removed by installation (`molecule.ai/instance`) when it
/// is dropped, after the server is stopped (also when a test fails): for workspaces in a
/// namespace other installations may share, such as `default`.
pub struct Installation(pub Server);

impl std::ops::Deref for Installation {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        self.0.kill9();
        let id = std::fs::read_to_string(self.0.data_dir().join("instance-id")).unwrap_or_default();
        let id = id.trim();
        if id.is_empty() {
            return;
        }
        let filter = format!("label=molecule.ai/instance={id}");
        for c in docker(&["ps", "-aq", "--filter", &filter]).1.lines() {
            docker(&["rm", "-f", c]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &filter])
            .1
            .lines()
        {
            docker(&["volume", "rm", "-f", v]);
        }
    }
}
