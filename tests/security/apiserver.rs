//! Security tests: apiserver. The bounds of ADR 0041: metrics labels a client cannot mint,
//! header and idle timeouts, a connection cap, an object size cap, a watch history bounded by
//! bytes, and `--require-tls`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Backend, Server, text};

const WS: &str = "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces";

fn ws(name: &str, pad: usize) -> Value {
    json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": name},
        "spec": {"runtime": "echo", "files": {"inline": {"pad": "x".repeat(pad)}}}
    })
}

/// One HTTP/1.0 request with a free-form method and User-Agent; returns the status code (0:
/// no answer).
fn request(port: u16, method: &str, path: &str, token: Option<&str>, agent: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\nUser-Agent: {agent}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Whether the server closes `s` (EOF or reset) within `wait`, reading whatever it sends.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_labels_are_a_fixed_set_and_capped() {
    let s = Server::start(Backend::Sqlite);
    let token = s.token();
    // Unauthenticated requests with long, distinct methods.
    for i in 0..100 {
        let method = format!("{}{i}", "LONGMETHOD".repeat(50));
        let code = request(s.port, &method, WS, None, "probe/1");
        assert!(code >= 400, "method {i}: {code}");
    }
    // Authenticated requests from more distinct clients than the cap holds.
    let cap = molecule::telemetry::MAX_SERIES;
    for i in 0..cap + 100 {
        let code = request(s.port, "GET", WS, Some(&token), &format!("client{i}/1.0"));
        assert_eq!(code, 200, "request {i}");
    }
    let (code, metrics) = s.http("GET", "/metrics", None, b"");
    assert_eq!(code, 200);
    assert!(
        !metrics.contains("LONGMETHOD"),
        "a raw method became a label"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("molecule_apiserver_requests_total{")
                && l.contains("verb=\"OTHER\"")),
        "unknown methods are not labelled OTHER:\n{}",
        &metrics[..metrics.len().min(4000)]
    );
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("molecule_apiserver_resource_requests_total{"))
        .count();
    assert!(series <= cap + 1, "{series} series of one metric");
    assert!(
        metrics.contains("molecule_apiserver_resource_requests_total{overflow=\"true\"}"),
        "no overflow series"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_and_idle_connections_are_closed() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            "--header-timeout-seconds",
            "1",
            "--idle-timeout-seconds",
            "1",
        ],
    );
    // Slowloris: a request head that trickles in, one byte at a time, never finishing.
    let mut slow = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cut = false;
    while Instant::now() < deadline {
        if slow.write_all(b"X").is_err() || closed_within(&mut slow, Duration::from_millis(300)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "a connection trickling its headers was never closed");

    // Idle keep-alive: one complete request, then silence.
    let mut idle = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut head = [0u8; 12];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    idle.read_exact(&mut head).expect("response");
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    assert!(
        closed_within(&mut idle, Duration::from_secs(30)),
        "an idle keep-alive connection was never closed"
    );

    // Normal requests still work.
    let (code, _) = s.http("GET", WS, None, b"");
    assert_eq!(code, 200);
}

/// Opens a connection holding a watch; `Some` when the server answered it.
fn hold_watch(port: u16, token: &str) -> Option<TcpStream> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req =
        format!("GET {WS}?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    c.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    c.read_exact(&mut head).ok()?;
    head.starts_with(b"HTTP/1.1 200").then_some(c)
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_are_refused() {
    // The server's own clients (shim, controller host) hold some of the slots too.
    let cap = 10;
    let s = Server::start_with(Backend::Sqlite, &["--max-connections", &cap.to_string()]);
    let token = s.token();
    let mut held = vec![];
    let mut refused = false;
    for _ in 0..=cap {
        match hold_watch(s.port, &token) {
            Some(c) => held.push(c),
            None => {
                refused = true;
                break;
            }
        }
    }
    assert!(
        refused,
        "{} watches held open with --max-connections {cap}",
        held.len()
    );
    assert!(!held.is_empty(), "no connection was served at all");
    drop(held);
    assert!(
        crate::common::eventually(10, || request(s.port, "GET", "/healthz", None, "p/1")
            == 200),
        "connections were not served again once the held ones closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_over_the_size_cap_are_refused() {
    let s = Server::start(Backend::Sqlite);
    let j = Some("application/json");
    let status = |body: &str| -> Value {
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not a Status: {body}"))
    };

    // A 2 MiB object (under the 3 MiB body limit) is refused.
    let big = ws("big", 2 * 1024 * 1024).to_string();
    let (code, body) = s.http("POST", WS, j, big.as_bytes());
    assert_eq!(code, 413, "{}", &body[..body.len().min(500)]);
    let st = status(&body);
    assert_eq!(
        (st["kind"].as_str(), st["reason"].as_str()),
        (Some("Status"), Some("RequestEntityTooLarge"))
    );

    // A patch that grows an object past the cap is refused, and leaves it as it was.
    let (code, _) = s.http("POST", WS, j, ws("grow", 10).to_string().as_bytes());
    assert_eq!(code, 201);
    let mb = "y".repeat(1024 * 1024);
    let patch = json!({"spec": {"files": {"inline": {"a": mb}}}}).to_string();
    let merge = Some("application/merge-patch+json");
    let (code, _) = s.http("PATCH", &format!("{WS}/grow"), merge, patch.as_bytes());
    assert_eq!(code, 200, "a 1 MiB object is under the cap");
    let (_, before) = s.http("GET", &format!("{WS}/grow"), None, b"");
    let patch = json!({"spec": {"files": {"inline": {"b": mb}}}}).to_string();
    let (code, body) = s.http("PATCH", &format!("{WS}/grow"), merge, patch.as_bytes());
    assert_eq!(code, 413, "{}", &body[..body.len().min(500)]);
    assert_eq!(status(&body)["reason"], "RequestEntityTooLarge");
    let (_, after) = s.http("GET", &format!("{WS}/grow"), None, b"");
    assert_eq!(
        status(&before)["metadata"]["resourceVersion"],
        status(&after)["metadata"]["resourceVersion"]
    );

    // The same through the real kubectl: create, server-side apply and patch.
    let dir = s.dir.path();
    let big_file = dir.join("big.json");
    std::fs::write(&big_file, &big).expect("write");
    let file = big_file.to_string_lossy().to_string();
    for args in [
        vec!["create", "-f", file.as_str()],
        vec!["apply", "--server-side", "-f", file.as_str()],
    ] {
        let o = s.kubectl("1.33", &args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} stored a 2 MiB object"
        );
        assert!(
            text(&o).contains("RequestEntityTooLarge")
                || text(&o).contains("Request entity too large"),
            "kubectl {args:?}: {}",
            text(&o)
        );
    }
    let patch_file = dir.join("patch.json");
    std::fs::write(&patch_file, &patch).expect("write");
    let patch_arg = patch_file.to_string_lossy().to_string();
    let o = s.kubectl(
        "1.33",
        &[
            "patch",
            "workspace",
            "grow",
            "--type",
            "merge",
            "--patch-file",
            patch_arg.as_str(),
        ],
    );
    assert!(
        !o.status.success(),
        "kubectl patch grew the object past the cap"
    );
    assert!(text(&o).contains("RequestEntityTooLarge"), "{}", text(&o));
    let (code, _) = s.http("GET", &format!("{WS}/big"), None, b"");
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_history_is_bounded_by_bytes() {
    let s = Server::start_with(Backend::Sqlite, &["--watch-history-bytes", "200000"]);
    let j = Some("application/json");
    let (code, body) = s.http("POST", WS, j, ws("first", 10).to_string().as_bytes());
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).expect("json");
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    // Ten changes of about 50 KB each: far fewer than the count bound, over the byte bound.
    for i in 0..10 {
        let (code, _) = s.http(
            "POST",
            WS,
            j,
            ws(&format!("pad-{i}"), 50_000).to_string().as_bytes(),
        );
        assert_eq!(code, 201);
    }
    let (code, body) = s.http(
        "GET",
        &format!("{WS}?watch=true&resourceVersion={rv}&timeoutSeconds=2"),
        None,
        b"",
    );
    assert_eq!(code, 200);
    let first: Value = serde_json::from_str(body.lines().next().unwrap_or(""))
        .unwrap_or_else(|_| panic!("watch line: {}", &body[..body.len().min(300)]));
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["code"].as_u64(),
            first["object"]["reason"].as_str()
        ),
        (Some("ERROR"), Some(410), Some("Expired")),
        "{}",
        &body[..body.len().min(300)]
    );
    // A recent resourceVersion still resumes.
    let (_, list) = s.http("GET", WS, None, b"");
    let now: Value = serde_json::from_str(&list).expect("list");
    let rv = now["metadata"]["resourceVersion"].as_str().expect("rv");
    let (code, body) = s.http(
        "GET",
        &format!("{WS}?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        None,
        b"",
    );
    assert_eq!(code, 200);
    assert!(
        !body.contains("\"ERROR\""),
        "{}",
        &body[..body.len().min(300)]
    );
}

fn molecule(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_molecule"));
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("DATABASE_URL")
        .env_remove("MOLECULE_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn require_tls_refuses_plain_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir
        .path()
        .join("no-kubeconfig")
        .to_string_lossy()
        .to_string();

    // The operator's listeners speak plain HTTP only: it refuses to start.
    let o = molecule(
        &["operator", "--require-tls"],
        &[("KUBECONFIG", missing.as_str())],
    )
    .output()
    .expect("run operator");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--require-tls") && text(&o).contains("plain HTTP"),
        "{}",
        text(&o)
    );

    // serve with a control plane whose agents would call back over plain HTTP: refused.
    let data = dir.path().join("cp").to_string_lossy().to_string();
    let o = molecule(
        &[
            "serve",
            "--require-tls",
            "--controllers",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--control-plane-url",
            "https://cp.invalid",
            "--control-plane-org",
            "org",
        ],
        &[
            ("MOLECULE_DATA_DIR", data.as_str()),
            ("MOLECULE_CP_SHARED_SECRET", "s3cret"),
        ],
    )
    .output()
    .expect("run serve");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--require-tls") && text(&o).contains("--control-plane-platform-url"),
        "{}",
        text(&o)
    );

    // serve --require-tls: kubectl works over TLS, a plain-HTTP request is not served.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let data = dir.path().join("tls");
    let data_arg = data.to_string_lossy().to_string();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let mut child = molecule(
        &[
            "serve",
            "--require-tls",
            "--controllers",
            "none",
            "--listen",
            listen.as_str(),
        ],
        &[("MOLECULE_DATA_DIR", data_arg.as_str())],
    )
    .stdout(log.try_clone().expect("log"))
    .stderr(log)
    .spawn()
    .expect("spawn serve");
    let home = dir.path().join("home");
    let kubectl = || {
        Command::new(crate::common::kubectl_bin("1.33"))
            .args(["get", "workspaces"])
            .env("KUBECONFIG", data.join("kubeconfig"))
            .env("HOME", &home)
            .output()
            .expect("kubectl")
    };
    let served = crate::common::eventually(30, || kubectl().status.success());
    let plain = request(port, "GET", "/healthz", None, "probe/1");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert!(served, "kubectl over TLS failed; log:\n{log}");
    assert_ne!(plain, 200, "plain HTTP was served; log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_on_a_non_loopback_listen_warns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let data = dir.path().join("data").to_string_lossy().to_string();
    let listen = format!("0.0.0.0:{port}");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = molecule(
        &[
            "serve",
            "--controllers",
            "none",
            "--listen",
            listen.as_str(),
        ],
        &[("MOLECULE_DATA_DIR", data.as_str())],
    )
    .stdout(log.try_clone().expect("log"))
    .stderr(log)
    .spawn()
    .expect("spawn serve");
    let warned = crate::common::eventually(20, || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("non-loopback")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        warned,
        "no warning; log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}
