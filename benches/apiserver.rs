//! Benchmark of the embedded API server (issue: foundation). Run with
//! `cargo bench --bench apiserver` (add MOLECULE_TEST_DATABASE_URL for a Postgres run).
//!
//! Measures, in one run: creates/s of 10,000 Workspaces from concurrent kube-rs clients, a
//! Table list of all of them (paged like kubectl, and through the real `kubectl get`), the cost
//! of the first and the last page, watch delivery latency to 10 watchers during the creates and
//! to 100 watchers during a burst of 1,000 writes/s, and the RSS of `serve` idle, holding the
//! objects, after repeated full lists and after the burst. `BENCH_OBJECTS=100000` runs it at
//! 100,000 objects. Baseline measured in the same run: the store alone (the same rows committed
//! straight to SQLite, one transaction each), so the ratio shows what the API layer costs on top
//! of the database.

#[path = "common/proc.rs"]
mod proc;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use molecule::resources::{Workspace, WorkspaceSpec};
use molecule::store::{ChangeKind, ChangeRow, SqliteStore, Store};

const CONCURRENCY: usize = 32;
const WATCHERS: usize = 10;
/// Watchers and write rate of the burst phase.
const BURST_WATCHERS: usize = 100;
const BURST_PER_S: usize = 1_000;
const BURST_SECS: usize = 5;

/// How many Workspaces the run creates (`BENCH_OBJECTS`, 10,000 by default).
fn objects() -> usize {
    std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
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

async fn baseline_store(dir: &Path, n: usize) -> f64 {
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
    for i in 0..n {
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
    n as f64 / start.elapsed().as_secs_f64()
}

/// Every page of a Table list (500 rows a page, as kubectl asks): rows, and each page's time.
async fn table_list(client: &kube::Client) -> (usize, Vec<f64>) {
    let mut rows = 0;
    let mut pages = vec![];
    let mut token = String::new();
    loop {
        let mut uri =
            "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces?limit=500".to_string();
        if !token.is_empty() {
            uri.push_str("&continue=");
            uri.push_str(&token);
        }
        let req = axum::http::Request::get(uri)
            .header(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Vec::new())
            .expect("request");
        let t = Instant::now();
        let body = client.request_text(req).await.expect("table list");
        pages.push(t.elapsed().as_secs_f64() * 1000.0);
        let v: serde_json::Value = serde_json::from_str(&body).expect("table");
        rows += v["rows"].as_array().map_or(0, Vec::len);
        token = v["metadata"]["continue"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            return (rows, pages);
        }
    }
}

/// `kubectl get ws` end to end (discovery, every page, printing), in ms. kubectl pages by 500
/// and limits itself to 5 requests/s after a burst of 10, whatever the server: 20 pages cost it
/// at least 2 s. `--chunk-size=0` asks for one page: what the server itself takes.
fn kubectl_get(dir: &Path, chunk: &str) -> f64 {
    let t = Instant::now();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(["get", "ws", "-n", "default", chunk])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("kubectl");
    assert!(out.success(), "kubectl get failed");
    t.elapsed().as_secs_f64() * 1000.0
}

/// A watcher from `rv` that records, for each of the first `count` events `wanted` picks,
/// the delay from the time stamp in its `annotation` to delivery.
async fn watch_latency(
    api: &Api<Workspace>,
    rv: &str,
    annotation: &'static str,
    count: usize,
    lat: Arc<Mutex<Vec<f64>>>,
    wanted: fn(&WatchEvent<Workspace>) -> bool,
) -> tokio::task::JoinHandle<()> {
    let mut stream = api
        .watch(&WatchParams::default().timeout(290), rv)
        .await
        .expect("watch")
        .boxed();
    tokio::spawn(async move {
        let mut seen = 0;
        while let Ok(Some(ev)) = stream.try_next().await {
            if !wanted(&ev) {
                continue;
            }
            if let WatchEvent::Added(o) | WatchEvent::Modified(o) = &ev
                && let Some(sent) = o
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(annotation))
                    .and_then(|s| s.parse::<u128>().ok())
            {
                lat.lock()
                    .expect("lock")
                    .push((now_micros().saturating_sub(sent)) as f64 / 1000.0);
            }
            seen += 1;
            if seen >= count {
                return;
            }
        }
    })
}

/// Watch delivery during a burst: `BURST_WATCHERS` watchers from the current resourceVersion,
/// `BURST_PER_S` annotation patches a second for `BURST_SECS`. Returns (deliveries, p50, p99).
async fn burst(api: &Api<Workspace>, n: usize) -> (usize, f64, f64) {
    let rv = api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .expect("rv")
        .metadata
        .resource_version
        .unwrap_or_default();
    let total = BURST_PER_S * BURST_SECS;
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut watchers = vec![];
    for _ in 0..BURST_WATCHERS {
        watchers.push(
            watch_latency(api, &rv, "bench/burst", total, latencies.clone(), |e| {
                matches!(e, WatchEvent::Modified(_))
            })
            .await,
        );
    }
    // Paced writers: each sends its share of the rate on its own ticker.
    let writers = 20;
    let mut tasks = vec![];
    for w in 0..writers {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(
                (1_000_000 * writers / BURST_PER_S) as u64,
            ));
            let mut i = w;
            while i < total {
                tick.tick().await;
                let patch = serde_json::json!({"metadata": {"annotations": {"bench/burst": now_micros().to_string()}}});
                api.patch(
                    &format!("bench-{}", i % n),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .expect("patch");
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    let mut lat = latencies.lock().expect("lock").clone();
    let (p50, p99) = (percentile(&mut lat, 0.50), percentile(&mut lat, 0.99));
    (lat.len(), p50, p99)
}

async fn run(label: &str, database_url: Option<&str>) {
    let n = objects();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut server = start_server(&dir, port, database_url);
    let pid = server.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = proc::rss_mb(pid);
    let client = client(&dir).await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), "default");

    // Watchers: latency from the creator's send time (annotation) to delivery.
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut watchers = vec![];
    for _ in 0..WATCHERS {
        watchers.push(
            watch_latency(&api, "0", "bench/sent", n, latencies.clone(), |e| {
                matches!(e, WatchEvent::Added(_))
            })
            .await,
        );
    }

    let start = Instant::now();
    let mut tasks = vec![];
    for t in 0..CONCURRENCY {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
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
    let creates_per_s = n as f64 / create_secs;
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let created_rss = proc::rss_mb(pid);

    // Table list of every object, paged as kubectl pages it; and the real kubectl.
    let mut list_ms = vec![];
    let mut rows = 0;
    let (mut first_page, mut last_page) = (vec![], vec![]);
    for _ in 0..5 {
        let t = Instant::now();
        let (r, pages) = table_list(&client).await;
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        rows = r;
        first_page.push(pages[0]);
        last_page.push(pages[pages.len() - 1]);
    }
    let mut kubectl_ms: Vec<f64> = (0..3)
        .map(|_| kubectl_get(&dir, "--chunk-size=500"))
        .collect();
    let mut whole_ms: Vec<f64> = (0..3)
        .map(|_| kubectl_get(&dir, "--chunk-size=0"))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed_rss = proc::rss_mb(pid);
    for _ in 0..5 {
        table_list(&client).await;
        kubectl_get(&dir, "--chunk-size=0");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let relisted_rss = proc::rss_mb(pid);
    let (burst_n, burst_p50, burst_p99) = burst(&api, n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full_rss = proc::rss_mb(pid);
    let db_mb = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("molecule.db"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len() as f64 / 1e6)
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    let _ = server.kill();
    let _ = server.wait();

    let mut lat = latencies.lock().expect("lock").clone();
    let (p50, p99) = (percentile(&mut lat, 0.50), percentile(&mut lat, 0.99));
    let table_ms = percentile(&mut list_ms, 0.5);
    let kubectl_ms = percentile(&mut kubectl_ms, 0.5);
    let whole_ms = percentile(&mut whole_ms, 0.5);
    let (first_ms, last_ms) = (
        percentile(&mut first_page, 0.5),
        percentile(&mut last_page, 0.5),
    );
    let (list_target, rss_target) = if n > 10_000 {
        (10_000.0, 600.0)
    } else {
        (1_500.0, 150.0)
    };
    println!("== {label}, {n} Workspaces ==");
    println!(
        "creates: {n} in {create_secs:.2}s = {creates_per_s:.0}/s with {CONCURRENCY} clients   (target >= 3000/s: ratio {:.2})",
        creates_per_s / 3000.0
    );
    println!(
        "table list of {rows} rows in pages of 500: median {table_ms:.0} ms; first page {first_ms:.1} ms, last page {last_ms:.1} ms (last/first {:.2})",
        last_ms / first_ms
    );
    println!(
        "kubectl get ws (discovery, printing) in one page: median {whole_ms:.0} ms (target < {list_target:.0} ms: ratio {:.2}); in pages of 500 (kubectl's 5 requests/s): {kubectl_ms:.0} ms",
        whole_ms / list_target
    );
    println!(
        "watch delivery to {WATCHERS} watchers during the creates: {} samples, p50 {p50:.1} ms, p99 {p99:.1} ms (target p99 < 50 ms: ratio {:.2})",
        lat.len(),
        p99 / 50.0
    );
    println!(
        "watch delivery to {BURST_WATCHERS} watchers during {BURST_PER_S} writes/s: {burst_n} samples, p50 {burst_p50:.1} ms, p99 {burst_p99:.1} ms (target p99 < 100 ms: ratio {:.2})",
        burst_p99 / 100.0
    );
    println!(
        "RSS idle {idle_rss:.1} MB; with {n} objects {created_rss:.1} MB (target < {rss_target:.0} MB: ratio {:.2}); after 5 lists and 6 kubectl gets {listed_rss:.1} MB, after 5 more of each {relisted_rss:.1} MB, after the burst {full_rss:.1} MB; store files {db_mb:.1} MB",
        created_rss / rss_target
    );
    if database_url.is_none() {
        let base = baseline_store(tmp.path(), n).await;
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
