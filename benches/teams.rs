//! Benchmark of the A2A proxy between workspaces (ADR 0050) against the real Docker engine:
//! `molecule serve` with two sibling echo workspaces; the same `message/send` is sent N times
//! straight to the target agent and N times through `POST /workspaces/:id/a2a` with
//! `X-Workspace-ID` (caller auth, the hierarchy rule, the JSON-RPC check, the activity rows).
//! Both paths use the same client (one HTTP/1.0 connection per call), so the difference of the
//! percentiles is what the platform adds. Run with `cargo bench --bench teams`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CALLS: usize = 1000;

fn sh(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ),
        Err(_) => (false, String::new()),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// One HTTP/1.0 request to `authority`; (status, body).
fn request(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(authority).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut all = req.into_bytes();
    all.extend_from_slice(body);
    c.write_all(&all).expect("write");
    let mut buf = vec![];
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn kubectl_apply(kubeconfig: &Path, home: &Path, ns: &str, yaml: &str) {
    let mut c = Command::new("kubectl")
        .args(["apply", "-n", ns, "-f", "-"])
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("yaml");
    assert!(c.wait().expect("kubectl").success(), "kubectl apply failed");
}

fn workspace(authority: &str, token: &str, ns: &str, name: &str) -> serde_json::Value {
    let auth = format!("Bearer {token}");
    let (_, body) = request(
        authority,
        "GET",
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces/{name}"),
        &[("Authorization", &auth)],
        b"",
    );
    serde_json::from_str(&body).unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Serve(Child, String);

impl Drop for Serve {
    fn drop(&mut self) {
        // The server first, so its controller cannot re-create what is removed.
        let _ = self.0.kill();
        let _ = self.0.wait();
        let filter = format!("label=molecule.ai/namespace={}", self.1);
        let (_, ids) = sh(&["docker", "ps", "-aq", "--filter", &filter]);
        for id in ids.lines().filter(|l| !l.is_empty()) {
            sh(&["docker", "rm", "-f", id]);
        }
        let (_, vols) = sh(&["docker", "volume", "ls", "-q", "--filter", &filter]);
        for v in vols.lines().filter(|l| !l.is_empty()) {
            sh(&["docker", "volume", "rm", "-f", v]);
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let port = free_port();
    let authority = format!("127.0.0.1:{port}");
    let ns = format!("bench{}", molecule::util::random_suffix(6));
    let child = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["serve", "--listen", &authority, "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let _serve = Serve(child, ns.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("kubeconfig").exists() || std::net::TcpStream::connect(&authority).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = std::fs::read_to_string(data.join("token"))
        .expect("token")
        .trim()
        .to_string();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let yaml = "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: lead\nspec:\n  runtime: echo\n---\napiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: a\nspec:\n  runtime: echo\n  parentRef:\n    name: lead\n---\napiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: b\nspec:\n  runtime: echo\n  parentRef:\n    name: lead\n";
    kubectl_apply(&data.join("kubeconfig"), &home, &ns, yaml);
    let deadline = Instant::now() + Duration::from_secs(300);
    let online = |n: &str| workspace(&authority, &admin, &ns, n)["status"]["phase"] == "Online";
    while !["lead", "a", "b"].iter().all(|n| online(n)) {
        assert!(
            Instant::now() < deadline,
            "the workspaces did not come Online"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let a = workspace(&authority, &admin, &ns, "a");
    let b = workspace(&authority, &admin, &ns, "b");
    let a_uid = a["metadata"]["uid"].as_str().expect("uid").to_string();
    let b_uid = b["metadata"]["uid"].as_str().expect("uid").to_string();
    let b_url = b["status"]["url"].as_str().expect("url").to_string();
    let container = format!("ws-{}", &a_uid.replace('-', "")[..12]);
    let tok = dir.path().join("a-token");
    assert!(
        sh(&[
            "docker",
            "cp",
            &format!("{container}:/configs/.auth_token"),
            &tok.to_string_lossy()
        ])
        .0,
        "docker cp of the token"
    );
    let a_token = std::fs::read_to_string(&tok)
        .expect("token")
        .trim()
        .to_string();
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {"role": "user", "messageId": "m", "parts": [{"kind": "text", "text": "bench"}]}}}).to_string();
    let direct_authority = b_url
        .strip_prefix("http://")
        .expect("http url")
        .split('/')
        .next()
        .expect("authority")
        .to_string();
    let auth = format!("Bearer {a_token}");
    let proxied_path = format!("/workspaces/{b_uid}/a2a");
    let direct = |_: usize| request(&direct_authority, "POST", "/", &[], body.as_bytes());
    let proxied = |_: usize| {
        request(
            &authority,
            "POST",
            &proxied_path,
            &[("Authorization", &auth), ("X-Workspace-ID", &a_uid)],
            body.as_bytes(),
        )
    };
    // Warm up both paths, then interleave them so drift hits both alike.
    for i in 0..50 {
        assert_eq!(direct(i).0, 200);
        let (code, text) = proxied(i);
        assert_eq!(code, 200, "{text}");
    }
    let (mut d, mut p) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for i in 0..CALLS {
        let t = Instant::now();
        assert_eq!(direct(i).0, 200);
        d.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(proxied(i).0, 200);
        p.push(t.elapsed());
    }
    d.sort();
    p.sort();
    let (d50, d99, p50, p99) = (
        percentile(&d, 0.5),
        percentile(&d, 0.99),
        percentile(&p, 0.5),
        percentile(&p, 0.99),
    );
    println!("A2A between workspaces, {CALLS} calls each (one connection per call):");
    println!(
        "  direct to the agent:    p50 {:.3} ms  p99 {:.3} ms",
        ms(d50),
        ms(d99)
    );
    println!(
        "  through the proxy:      p50 {:.3} ms  p99 {:.3} ms",
        ms(p50),
        ms(p99)
    );
    println!(
        "  added by the platform:  p50 {:.3} ms  p99 {:.3} ms  (target: < 2 ms at p50)",
        ms(p50.saturating_sub(d50)),
        ms(p99.saturating_sub(d99))
    );
}
