//! The kubernetes backend at scale (issue 21; ADR 0057). Run with `cargo bench --bench
//! kubernetes`. `molecule serve --controllers none` plays the cluster's API server (it stores
//! Pods and runs nothing, like envtest); 1,000 Workspaces are stored first, then `molecule
//! operator` starts and the clock runs until every Workspace has its runtime unit recorded
//! (`status.containerId`):
//!
//! - `--default-backend kubernetes`: each Workspace becomes a Pod, two PVCs, a Service and a
//!   Secret through the API (target ≥ 200 workspaces/s);
//! - baseline from the same run: the same operator with `--default-backend docker` on the
//!   simulated backend (the same reconcile path, no objects besides the status write).
//!
//! Reports workspaces/s, the ratio, and the operator's RSS (current and peak).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use molecule::resources::Workspace;

fn n() -> usize {
    std::env::var("MOLECULE_BENCH_WORKSPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1) == Some("200")
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (current, peak) resident set of a process, in MiB.
fn rss_mib(p: &Proc) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.0.id())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn serve(dir: &Path, port: u16) -> Proc {
    let p = Proc(
        Command::new(env!("CARGO_BIN_EXE_molecule"))
            .args(["serve", "--controllers", "none"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .env_remove("MOLECULE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve"),
    );
    wait("serve", 60, || ready(port));
    p
}

fn operator(kubeconfig: &Path, default_backend: &str) -> Proc {
    let port = free_port();
    let p = Proc(
        Command::new(env!("CARGO_BIN_EXE_molecule"))
            .args(["operator", "--backend", "simulated"])
            .args(["--default-backend", default_backend])
            .args(["--controllers", "workspace"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agent-address", "127.0.0.1", "--agent-port", "0"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .env_remove("MOLECULE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("operator"),
    );
    wait("operator", 60, || ready(port));
    p
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

async fn create_all(api: &Api<Workspace>, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let w: Workspace = serde_json::from_value(serde_json::json!({
                    "apiVersion": "molecule.ai/v1alpha1",
                    "kind": "Workspace",
                    "metadata": {"name": format!("w{i:04}")},
                    "spec": {"runtime": "echo", "image": "registry.example.com/agents/echo:1"},
                }))
                .expect("workspace");
                api.create(&PostParams::default(), &w)
                    .await
                    .expect("create")
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

async fn recorded(api: &Api<Workspace>) -> usize {
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|w| {
                    w.status
                        .as_ref()
                        .and_then(|s| s.container_id.as_deref())
                        .is_some_and(|c| !c.is_empty())
                })
                .count()
        })
        .unwrap_or(0)
}

struct Run {
    secs: f64,
    rss: (f64, f64),
    pods: usize,
}

/// N Workspaces stored, then the operator with `default_backend`: seconds until all have their
/// runtime unit recorded.
fn run(root: &Path, default_backend: &str, rt: &tokio::runtime::Runtime) -> Run {
    let dir: PathBuf = root.join(default_backend);
    let port = free_port();
    let _serve = serve(&dir, port);
    let kubeconfig = dir.join("kubeconfig");
    rt.block_on(async {
        let c = client(&kubeconfig).await;
        create_all(&Api::namespaced(c, "bench"), n()).await;
    });
    let t = Instant::now();
    let op = operator(&kubeconfig, default_backend);
    rt.block_on(async {
        let c = client(&kubeconfig).await;
        let api: Api<Workspace> = Api::namespaced(c.clone(), "bench");
        while recorded(&api).await < n() {
            assert!(
                t.elapsed() < Duration::from_secs(900),
                "the workspaces were not all provisioned"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let pods: Api<Pod> = Api::namespaced(c, "bench");
        let pods = pods
            .list(&ListParams::default())
            .await
            .map_or(0, |l| l.items.len());
        Run {
            secs,
            rss: rss_mib(&op),
            pods,
        }
    })
}

fn main() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let n = n();
    let base = run(tmp.path(), "docker", &rt);
    let pods = run(tmp.path(), "kubernetes", &rt);
    assert_eq!(pods.pods, n, "one Pod per Workspace");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{n} Workspaces reconciled by `molecule operator` against `serve --controllers none` (load average {}):",
        load.split_whitespace().next().unwrap_or("?")
    );
    println!(
        "  --default-backend docker, simulated containers: {:.2} s = {:.0} workspaces/s; operator RSS {:.0} MiB (peak {:.0}) (baseline)",
        base.secs,
        n as f64 / base.secs,
        base.rss.0,
        base.rss.1
    );
    println!(
        "  --default-backend kubernetes, Pods: {:.2} s = {:.0} workspaces/s ({:.2}x the baseline's time; target >= 200/s); operator RSS {:.0} MiB (peak {:.0}); {} Pods",
        pods.secs,
        n as f64 / pods.secs,
        pods.secs / base.secs,
        pods.rss.0,
        pods.rss.1,
        pods.pods
    );
}
