//! Benchmark of the REST shim and the live event stream (issue: canvas). Run with
//! `cargo bench --bench canvas`. `serve` runs with `--controllers none` (records only, no
//! containers); status changes are written through the status subresource, as the controllers
//! write them.
//!
//! 1. `GET /workspaces` with 1,000 workspaces: latency p50/p99. Baseline, same run: the API
//!    server's own list of the same records (`GET /apis/molecule.ai/v1alpha1/workspaces`).
//! 2. Fan-out: 50 WebSocket clients on `/ws` while 200 workspaces change status (5 rounds,
//!    1,000 changes, 50,000 deliveries): delivery latency from the status write to each
//!    client, p50/p99, and the operator's CPU over the run. Baseline, same run: 50 plain
//!    Kubernetes watch clients receiving the same 1,000 changes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use molecule::resources::{Workspace, WorkspaceSpec};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WORKSPACES: usize = 1_000;
const GETS: usize = 300;
const CHANGING: usize = 200;
const ROUNDS: usize = 5;
const CLIENTS: usize = 50;
const WRITERS: usize = 16;
const PHASES: [&str; ROUNDS] = ["Online", "Degraded", "Online", "Offline", "Online"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn start_server(dir: &Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["serve", "--controllers", "none", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("MOLECULE_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if dir.join("kubeconfig").exists()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve did not start");
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One plain HTTP/1.0 GET; returns (status, response, elapsed).
fn get(port: u16, path: &str, token: &str) -> (u16, Vec<u8>, Duration) {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    )
    .expect("write");
    let mut buf = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut buf).expect("read");
    let elapsed = t.elapsed();
    let text = String::from_utf8_lossy(&buf[..buf.len().min(64)]).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, buf, elapsed)
}

fn latencies_ms(port: u16, path: &str, token: &str) -> (f64, f64, usize) {
    for _ in 0..20 {
        get(port, path, token);
    }
    let mut v = vec![];
    let mut size = 0;
    for _ in 0..GETS {
        let (code, body, d) = get(port, path, token);
        assert_eq!(code, 200, "{path}");
        size = body.len();
        v.push(d.as_secs_f64() * 1000.0);
    }
    (percentile(&mut v, 0.5), percentile(&mut v, 0.99), size)
}

async fn client(dir: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(dir.join("kubeconfig")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

/// When each (workspace, round) change was written.
type Sent = Arc<Mutex<HashMap<(String, usize), Instant>>>;
/// Delivery latencies (ms) collected by every client.
type Samples = Arc<Mutex<Vec<f64>>>;

fn round_of(message: &str) -> Option<usize> {
    message.strip_prefix("bench-round-")?.parse().ok()
}

/// Writes the 1,000 status changes (200 workspaces × 5 rounds) with `WRITERS` writers.
async fn change_statuses(api: &Api<Workspace>, sent: &Sent) -> Duration {
    let start = Instant::now();
    for (round, phase) in PHASES.iter().enumerate() {
        futures::stream::iter(0..CHANGING)
            .for_each_concurrent(WRITERS, |i| {
                let api = api.clone();
                let sent = sent.clone();
                async move {
                    let name = format!("w{i:04}");
                    let patch = serde_json::json!({"status": {"phase": phase, "message": format!("bench-round-{round}")}});
                    sent.lock()
                        .expect("sent")
                        .insert((name.clone(), round), Instant::now());
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .expect("patch status");
                }
            })
            .await;
    }
    start.elapsed()
}

async fn wait_for(samples: &Samples, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = samples.lock().expect("samples").len();
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kube_watchers(
    kc: &kube::Client,
    sent: &Sent,
    samples: &Samples,
) -> Vec<tokio::task::JoinHandle<()>> {
    let api: Api<Workspace> = Api::namespaced(kc.clone(), "default");
    let rv = api
        .list_metadata(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut tasks = vec![];
    for _ in 0..CLIENTS {
        let api = api.clone();
        let (sent, samples, rv) = (sent.clone(), samples.clone(), rv.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default().timeout(290), &rv)
                .await
                .expect("watch")
                .boxed();
            while let Some(Ok(ev)) = s.next().await {
                let now = Instant::now();
                if let WatchEvent::Modified(w) = ev {
                    let round = w
                        .status
                        .as_ref()
                        .and_then(|s| s.message.as_deref())
                        .and_then(round_of);
                    if let Some(r) = round
                        && let Some(t) = sent
                            .lock()
                            .expect("sent")
                            .get(&(w.metadata.name.clone().unwrap_or_default(), r))
                    {
                        samples
                            .lock()
                            .expect("samples")
                            .push(now.saturating_duration_since(*t).as_secs_f64() * 1000.0);
                    }
                }
            }
        }));
    }
    tasks
}

/// Milliseconds from a message's `timestamp` (when the shim published it) to now.
fn since_published(ts: &str) -> Option<f64> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    let now = jiff::Timestamp::now();
    Some((now.as_microsecond() - t.as_microsecond()) as f64 / 1000.0)
}

async fn ws_clients(
    port: u16,
    token: &str,
    sent: &Sent,
    samples: &Samples,
    fanout: &Samples,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![];
    for _ in 0..CLIENTS {
        let mut req = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .expect("req");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("h"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
        let (sent, samples, fanout) = (sent.clone(), samples.clone(), fanout.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let now = Instant::now();
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                    continue;
                };
                if let Some(ms) = v["timestamp"].as_str().and_then(since_published) {
                    fanout.lock().expect("fanout").push(ms);
                }
                let p = &v["payload"];
                let round = p["message"].as_str().and_then(round_of);
                let name = p["k8s_name"].as_str().unwrap_or("").to_string();
                if let Some(r) = round
                    && let Some(t) = sent.lock().expect("sent").get(&(name, r))
                {
                    samples
                        .lock()
                        .expect("samples")
                        .push(now.saturating_duration_since(*t).as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    tasks
}

/// Resets the 200 workspaces so the next phase's first round is a status change again.
async fn reset(api: &Api<Workspace>) {
    futures::stream::iter(0..CHANGING)
        .for_each_concurrent(WRITERS, |i| {
            let api = api.clone();
            async move {
                let patch =
                    serde_json::json!({"status": {"phase": "Provisioning", "message": "reset"}});
                api.patch_status(
                    &format!("w{i:04}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .expect("reset");
            }
        })
        .await;
}

struct Phase {
    p50: f64,
    p99: f64,
    delivered: usize,
    writes: Duration,
    cpu: f64,
    wall: f64,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("data");
        let port = free_port();
        let mut server = start_server(&dir, port);
        let pid = server.id();
        let token = std::fs::read_to_string(dir.join("token"))
            .expect("token")
            .trim()
            .to_string();
        let kc = client(&dir).await;
        let api: Api<Workspace> = Api::namespaced(kc.clone(), "default");

        // 1,000 records, a tree of 50 teams of 20.
        futures::stream::iter(0..WORKSPACES)
            .for_each_concurrent(32, |i| {
                let api = api.clone();
                async move {
                    let spec = WorkspaceSpec {
                        display_name: Some(format!("Workspace {i}")),
                        role: Some("agent".into()),
                        runtime: Some("echo".into()),
                        parent_ref: (i % 20 != 0).then(|| molecule::resources::LocalObjectReference {
                            name: format!("w{:04}", i - i % 20),
                        }),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &Workspace::new(&format!("w{i:04}"), spec))
                        .await
                        .expect("create");
                }
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body, _) = get(port, "/workspaces", &token);
            let n = String::from_utf8_lossy(&body).matches("\"k8s_name\"").count();
            if n == WORKSPACES || Instant::now() > deadline {
                assert_eq!(n, WORKSPACES, "the shim lists every workspace");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let (shim_p50, shim_p99, shim_size) = tokio::task::spawn_blocking({
            let token = token.clone();
            move || latencies_ms(port, "/workspaces", &token)
        })
        .await
        .expect("gets");
        let (kube_p50, kube_p99, kube_size) = tokio::task::spawn_blocking({
            let token = token.clone();
            move || latencies_ms(port, "/apis/molecule.ai/v1alpha1/workspaces", &token)
        })
        .await
        .expect("gets");

        let mut phases = vec![];
        let fanout: Samples = Arc::default();
        for shim in [false, true] {
            reset(&api).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let sent: Sent = Arc::default();
            let samples: Samples = Arc::default();
            let tasks = if shim {
                ws_clients(port, &token, &sent, &samples, &fanout).await
            } else {
                kube_watchers(&kc, &sent, &samples).await
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu0 = cpu_seconds(pid);
            let t0 = Instant::now();
            let writes = change_statuses(&api, &sent).await;
            let delivered = wait_for(&samples, CHANGING * ROUNDS * CLIENTS).await;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid) - cpu0;
            for t in tasks {
                t.abort();
            }
            let mut v = samples.lock().expect("samples").clone();
            phases.push(Phase {
                p50: percentile(&mut v, 0.5),
                p99: percentile(&mut v, 0.99),
                delivered,
                writes,
                cpu,
                wall,
            });
        }
        let metrics = String::from_utf8_lossy(&get(port, "/metrics", &token).1).to_string();
        let metric = |name: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let publish_ms = 1000.0 * metric("molecule_shim_publish_seconds_sum")
            / metric("molecule_shim_publish_seconds_count");
        let mut fan = fanout.lock().expect("fanout").clone();
        let (fan_p50, fan_p99) = (percentile(&mut fan, 0.5), percentile(&mut fan, 0.99));
        let _ = server.kill();
        let _ = server.wait();

        let (k, s) = (&phases[0], &phases[1]);
        println!("canvas benchmark (serve --controllers none, SQLite, {WORKSPACES} workspaces)");
        println!(
            "GET /workspaces ({WORKSPACES} workspaces, {shim_size} bytes): p50 {shim_p50:.2} ms, p99 {shim_p99:.2} ms"
        );
        println!(
            "  baseline, same run: GET /apis/molecule.ai/v1alpha1/workspaces ({kube_size} bytes): p50 {kube_p50:.2} ms, p99 {kube_p99:.2} ms; shim/API ratio p50 {:.2}, p99 {:.2}",
            shim_p50 / kube_p50,
            shim_p99 / kube_p99
        );
        let want = CHANGING * ROUNDS * CLIENTS;
        println!(
            "fan-out, {CLIENTS} WebSocket clients, {CHANGING} workspaces × {ROUNDS} status changes: {}/{want} delivered, write→client p50 {:.1} ms, p99 {:.1} ms; writes took {:.2}s; operator CPU {:.2}s over {:.2}s = {:.0}% of one core",
            s.delivered, s.p50, s.p99, s.writes.as_secs_f64(), s.cpu, s.wall, 100.0 * s.cpu / s.wall
        );
        println!(
            "  baseline, same run: {CLIENTS} Kubernetes watch clients: {}/{want} delivered, p50 {:.1} ms, p99 {:.1} ms; writes took {:.2}s; CPU {:.2}s over {:.2}s = {:.0}% of one core",
            k.delivered, k.p50, k.p99, k.writes.as_secs_f64(), k.cpu, k.wall, 100.0 * k.cpu / k.wall
        );
        println!(
            "  of which: the shim's work per watch event {publish_ms:.3} ms on average; publish→client p50 {fan_p50:.1} ms, p99 {fan_p99:.1} ms"
        );
        println!(
            "  shim/watch ratio: p99 {:.2}, CPU {:.2}",
            s.p99 / k.p99,
            s.cpu / k.cpu.max(0.01)
        );
    });
}
