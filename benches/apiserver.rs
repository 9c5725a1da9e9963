//! Benchmark of the embedded API server (issue: foundation). Run with
//! `cargo bench --bench apiserver` (add MOLECULE_TEST_DATABASE_URL for a Postgres run).
//!
//! Measures, in one run: creates/s of 10,000 Workspaces from concurrent kube-rs clients, a
//! Table list of all of them, watch delivery latency to 10 watchers, and the RSS of `serve`
//! idle and holding 10,000 objects. Baseline measured in the same run: the store alone
//! (the same 10,000 rows committed straight to SQLite, one transaction each), so the ratio
//! shows what the API layer costs on top of the database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use molecule::resources::{Workspace, WorkspaceSpec};
use molecule::store::{ChangeKind, ChangeRow, SqliteStore, Store};

const N: usize = 10_000;
const CONCURRENCY: usize = 32;
const WATCHERS: usize = 10;

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn start_server(dir: &Path, port: u16, database_url: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_molecule"));
    cmd.args([
        "serve",
        "--controllers",
        "none",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir)
    .env("RUST_LOG", "warn")
    .env_remove("DATABASE_URL")
    .env_remove("MOLECULE_DATABASE_URL")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(u) = database_url {
        cmd.env("MOLECULE_DATABASE_URL", u);
    }
    let mut child = cmd.spawn().expect("spawn serve");
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

async fn client(dir: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(dir.join("kubeconfig")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn baseline_store(dir: &Path) -> f64 {
    let store = SqliteStore::open(&dir.join("baseline.db"))
        .await
        .expect("baseline store");
    let value = serde_json::to_string(&Workspace::new(
        "x",
        WorkspaceSpec {
            runtime: Some("echo".into()),
            ..Default::default()
        },
    ))
    .expect("json");
    let start = Instant::now();
    for i in 0..N {
        let rv = i as i64 + 1;
        let row = ChangeRow {
            rv,
            resource: "molecule.ai/workspaces".into(),
            namespace: "default".into(),
            name: format!("w{i}"),
            kind: ChangeKind::Added,
            value: value.clone(),
        };
        store.commit(rv, &[row]).await.expect("commit");
    }
    N as f64 / start.elapsed().as_secs_f64()
}

async fn run(label: &str, database_url: Option<&str>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut server = start_server(&dir, port, database_url);
    let pid = server.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mb(pid);
    let client = client(&dir).await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), "default");

    // Watchers: latency from the creator's send time (annotation) to delivery.
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut watchers = vec![];
    for _ in 0..WATCHERS {
        let api = api.clone();
        let lat = latencies.clone();
        let mut stream = api
            .watch(&WatchParams::default().timeout(290), "0")
            .await
            .expect("watch")
            .boxed();
        watchers.push(tokio::spawn(async move {
            let mut seen = 0;
            while let Ok(Some(ev)) = stream.try_next().await {
                if let WatchEvent::Added(o) = ev {
                    if let Some(sent) = o
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("bench/sent"))
                        .and_then(|s| s.parse::<u128>().ok())
                    {
                        lat.lock()
                            .expect("lock")
                            .push((now_micros().saturating_sub(sent)) as f64 / 1000.0);
                    }
                    seen += 1;
                    if seen >= N {
                        return;
                    }
                }
            }
        }));
    }

    let start = Instant::now();
    let mut tasks = vec![];
    for t in 0..CONCURRENCY {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < N {
                let mut ws = Workspace::new(
                    &format!("bench-{i}"),
                    WorkspaceSpec {
                        runtime: Some("echo".into()),
                        tier: Some(2),
                        role: Some("researcher".into()),
                        ..Default::default()
                    },
                );
                ws.metadata.labels = Some([("team".to_string(), format!("t{}", i % 10))].into());
                ws.metadata.annotations =
                    Some([("bench/sent".to_string(), now_micros().to_string())].into());
                api.create(&PostParams::default(), &ws)
                    .await
                    .expect("create");
                i += CONCURRENCY;
            }
        }));
    }
    for t in tasks {
        t.await.expect("creator");
    }
    let create_secs = start.elapsed().as_secs_f64();
    let creates_per_s = N as f64 / create_secs;
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }

    // Table list of every object (what `kubectl get ws` does).
    let mut list_ms = vec![];
    let mut rows = 0;
    for _ in 0..5 {
        let req = axum::http::Request::get(
            "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces?limit=500",
        )
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .expect("request");
        let t = Instant::now();
        let body = client.request_text(req).await.expect("table list");
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        rows = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["rows"].as_array().map(Vec::len))
            .unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full_rss = rss_mb(pid);
    let _ = server.kill();
    let _ = server.wait();

    let mut lat = latencies.lock().expect("lock").clone();
    let (p50, p99) = (percentile(&mut lat, 0.50), percentile(&mut lat, 0.99));
    let table_ms = percentile(&mut list_ms, 0.5);
    println!("== {label} ==");
    println!(
        "creates: {N} in {create_secs:.2}s = {creates_per_s:.0}/s with {CONCURRENCY} clients   (target >= 2000/s: ratio {:.2})",
        creates_per_s / 2000.0
    );
    println!(
        "table list of {rows} rows: median {table_ms:.0} ms                  (target < 1000 ms: ratio {:.2})",
        table_ms / 1000.0
    );
    println!(
        "watch delivery to {WATCHERS} watchers: {} samples, p50 {p50:.1} ms, p99 {p99:.1} ms (target p99 < 50 ms: ratio {:.2})",
        lat.len(),
        p99 / 50.0
    );
    println!(
        "RSS idle {idle_rss:.1} MB (target < 50 MB: ratio {:.2}); with {N} objects {full_rss:.1} MB",
        idle_rss / 50.0
    );
    if database_url.is_none() {
        let base = baseline_store(tmp.path()).await;
        println!(
            "baseline, same run: SQLite store alone, one transaction per row: {base:.0}/s; API creates/s vs store alone: {:.2}",
            creates_per_s / base
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run("SQLite", None).await;
        if let Ok(base) = std::env::var("MOLECULE_TEST_DATABASE_URL") {
            let url = molecule::testing::postgres_url().await.unwrap_or(base);
            run("Postgres", Some(&url)).await;
        }
    });
}
