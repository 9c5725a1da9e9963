//! Benchmark of the control-plane backend: 100 workspaces with `backend: controlPlane`
//! converge on the control-plane simulator (instance start delay 0), measuring the operator's
//! overhead per workspace. Run with `cargo bench --bench controlplane`. Target (issue 8): all
//! 100 records Online in under 5 s.
//!
//! The records are created through the API, 8 requests at a time (kubectl apply of 100 objects
//! spends ~2 s in kubectl itself, one object after another; it is reported on its own line).
//!
//! Baseline, measured in the same run: the same 100 provision calls made directly to the
//! simulator (8 at a time too) with their agents registering at a stand-in platform listener of
//! this bench — the cost of the control plane and the agents themselves, with no operator, API
//! server or records involved. Rounds are interleaved.

#[path = "../tests/cpsim/mod.rs"]
mod cpsim;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

const N: usize = 100;
const ROUNDS: usize = 3;

fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl");
    if let (Some(input), Some(mut si)) = (stdin, c.stdin.take()) {
        si.write_all(input.as_bytes()).expect("stdin");
    }
    String::from_utf8_lossy(&c.wait_with_output().expect("kubectl").stdout).to_string()
}

fn start_serve(dir: &Path, port: u16, sim: &cpsim::Sim) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--control-plane-url", &sim.url()])
        .args(["--control-plane-org", "bench"])
        .args(["--control-plane-agent-port", &sim.agent_port().to_string()])
        .args(["--reap-interval-seconds", "60", "--data-dir"])
        .arg(dir)
        .env("MOLECULE_CP_SHARED_SECRET", sim.shared_secret())
        .env("MOLECULE_CP_ADMIN_TOKEN", sim.admin_token().unwrap_or(""))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if dir.join("kubeconfig").exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("serve did not start");
}

fn http_get(port: u16, token: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let req =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// (records, Online) in `ns`, with one cheap HTTP GET.
fn online(port: u16, token: &str, ns: &str) -> (usize, usize) {
    let body = http_get(
        port,
        token,
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces"),
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let up = items
        .iter()
        .filter(|i| i["status"]["phase"] == "Online")
        .count();
    (items.len(), up)
}

fn wait_online(port: u16, token: &str, ns: &str, n: usize) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(300) {
        if online(port, token, ns) == (n, n) {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "workspaces did not come Online: {:?}",
        online(port, token, ns)
    );
}

fn wait_gone(port: u16, token: &str, ns: &str) {
    let t = Instant::now();
    while online(port, token, ns).0 > 0 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ws(name: &str) -> String {
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  runtime: echo\n  backend: controlPlane\n---\n"
    )
}

/// A stand-in platform: counts agent registrations, answers every call 200.
async fn platform(registered: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new()
        .route(
            "/registry/register",
            axum::routing::post(move || {
                let registered = registered.clone();
                async move {
                    registered.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"status": "registered"}))
                }
            }),
        )
        .route(
            "/registry/heartbeat",
            axum::routing::post(|| async { axum::Json(json!({"status": "ok"})) }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    url
}

/// The baseline: N provision calls straight to the simulator, until every agent registered.
async fn direct(
    sim_url: &str,
    secret: &str,
    platform: &str,
    registered: &AtomicUsize,
    round: usize,
) -> (Duration, Vec<(String, String)>) {
    let client = molecule::net::http::Client::new(Default::default());
    let b64 = base64::engine::general_purpose::STANDARD;
    let before = registered.load(Ordering::SeqCst);
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = vec![];
    for i in 0..N {
        let client = client.clone();
        let sem = sem.clone();
        let url = format!("{sim_url}/cp/workspaces/provision");
        let auth = format!("Bearer {secret}");
        let uid = format!("00000000-0000-4000-8000-{round:04}{i:08}");
        let config =
            format!("workspace_id: {uid}\nplatform_url: {platform}\nheartbeat_seconds: 30\n");
        let body = json!({
            "workspace_id": uid, "org_id": "bench-direct", "installation": "direct",
            "runtime": "echo", "tier": 2, "agent_port": 8000, "env": {},
            "files": [
                {"path": "config.yaml", "mode": 420, "content_base64": b64.encode(config)},
                {"path": ".auth_token", "mode": 384, "content_base64": b64.encode("bench-token")},
            ],
        })
        .to_string();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("permit");
            let r = client
                .send(
                    hyper::http::Method::POST,
                    &url,
                    &[("authorization", auth.as_str())],
                    Some((body.into(), "application/json")),
                    64 * 1024,
                )
                .await
                .expect("provision");
            assert_eq!(r.status, 201);
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
            (uid, v["instance_id"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut ids = vec![];
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    while registered.load(Ordering::SeqCst) < before + N && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t.elapsed();
    // Clean up: terminate them.
    for (uid, id) in &ids {
        let _ = client
            .send(
                hyper::http::Method::DELETE,
                &format!("{sim_url}/cp/workspaces/{uid}?instance_id={id}"),
                &[("authorization", format!("Bearer {secret}").as_str())],
                None,
                64 * 1024,
            )
            .await;
    }
    (took, ids)
}

/// Creates `n` controlPlane Workspaces in `ns` through the API, 8 requests at a time.
async fn create_records(port: u16, token: &str, ns: &str, n: usize) {
    let client = molecule::net::http::Client::new(Default::default());
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = vec![];
    for i in 0..n {
        let client = client.clone();
        let sem = sem.clone();
        let url =
            format!("http://127.0.0.1:{port}/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces");
        let auth = format!("Bearer {token}");
        let body = json!({
            "apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace",
            "metadata": {"name": format!("w{i}")},
            "spec": {"runtime": "echo", "backend": "controlPlane"},
        })
        .to_string();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("permit");
            let r = client
                .send(
                    hyper::http::Method::POST,
                    &url,
                    &[("authorization", auth.as_str())],
                    Some((body.into(), "application/json")),
                    64 * 1024,
                )
                .await
                .expect("create");
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let sim = cpsim::Sim::start(cpsim::SimConfig {
        start_delay: Duration::ZERO,
        ..Default::default()
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut serve = start_serve(&dir, port, &sim);
    let kc = dir.join("kubeconfig");
    let token = std::fs::read_to_string(dir.join("token")).expect("token");
    let token = token.trim().to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let registered = Arc::new(AtomicUsize::new(0));
    let platform_url = rt.block_on(platform(registered.clone()));

    // Warm-up: kubectl's discovery cache, the controller's first reconcile.
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "warm", "-f", "-"],
        Some(&ws("warm")),
    );
    wait_online(port, &token, "warm", 1);
    kubectl(&kc, &home, &["delete", "ws", "--all", "-n", "warm"], None);

    let yaml: String = (0..N).map(|i| ws(&format!("w{i}"))).collect();
    let (mut ours, mut base, mut creates, mut kubectl_total, mut applies) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (took, _) = rt.block_on(direct(
            &sim.url(),
            sim.shared_secret(),
            &platform_url,
            &registered,
            round,
        ));
        base.push(took);

        let ns = format!("api-{round}");
        let t = Instant::now();
        rt.block_on(create_records(port, &token, &ns, N));
        creates.push(t.elapsed());
        wait_online(port, &token, &ns, N);
        ours.push(t.elapsed());
        kubectl(
            &kc,
            &home,
            &["delete", "ws", "--all", "-n", &ns, "--wait=false"],
            None,
        );
        wait_gone(port, &token, &ns);

        // As a user would: one kubectl apply of the 100 records.
        let ns = format!("kubectl-{round}");
        let t = Instant::now();
        kubectl(&kc, &home, &["apply", "-n", &ns, "-f", "-"], Some(&yaml));
        applies.push(t.elapsed());
        wait_online(port, &token, &ns, N);
        kubectl_total.push(t.elapsed());
        kubectl(
            &kc,
            &home,
            &["delete", "ws", "--all", "-n", &ns, "--wait=false"],
            None,
        );
        wait_gone(port, &token, &ns);
    }
    let (ours_m, base_m, create_m, kubectl_m, apply_m) = (
        median(ours.clone()),
        median(base.clone()),
        median(creates),
        median(kubectl_total.clone()),
        median(applies),
    );
    let per_ws = (ours_m.saturating_sub(base_m)).as_secs_f64() * 1e3 / N as f64;
    let _ = serve.kill();
    let _ = serve.wait();
    let leaked = sim.live().len();

    println!(
        "control-plane benchmark ({N} workspaces, instance start delay 0, {ROUNDS} rounds, medians)"
    );
    println!(
        "  create {N} records → all Online (operator): {:>8.0} ms   (rounds: {:?} ms)",
        ms(ours_m),
        ours.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "    of which creating the records:            {:>8.0} ms",
        ms(create_m)
    );
    println!(
        "  baseline: {N} direct provisions → all registered: {:>4.0} ms   (rounds: {:?} ms)",
        ms(base_m),
        base.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "  ratio operator / baseline:                  {:>8.2}x",
        ours_m.as_secs_f64() / base_m.as_secs_f64().max(1e-9)
    );
    println!(
        "  operator overhead per workspace:            {:>8.1} ms",
        per_ws
    );
    println!(
        "  kubectl apply of {N} → all Online:           {:>8.0} ms   (rounds: {:?} ms; the apply alone {:.0} ms)",
        ms(kubectl_m),
        kubectl_total
            .iter()
            .map(|d| ms(*d).round())
            .collect::<Vec<_>>(),
        ms(apply_m)
    );
    println!(
        "  target: all Online in < 5000 ms — {}",
        if ours_m < Duration::from_secs(5) && kubectl_m < Duration::from_secs(5) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("  instances left running on the simulator after the run: {leaked}");
}
