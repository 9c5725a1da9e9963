//! Cluster-mode benchmark (issue 9). Run with `cargo bench --bench operator`. `molecule serve
//! --controllers none` plays the external API server; every figure has a baseline from the same
//! run:
//!
//! 1. Reconcile throughput: 1,000 Workspaces already stored, then the controllers start with
//!    the simulated backend (no Docker work; each "container" registers like the echo agent), and
//!    the clock runs until all 1,000 are Online. `molecule operator` (external API, kubeconfig,
//!    leader election) against the embedded baseline (`serve --controllers all`, same backend).
//!    Target ≥ 200 workspaces/s; Flux, the original's peer, manages about 4 objects/s.
//! 2. Failover: two operator replicas; the leader is killed (`kill -9`), a workspace is applied
//!    at once, and the clock runs until the new leader's first reconcile of it (its status
//!    appears). Median of 5, against the median of 5 graceful handovers (SIGTERM: the leader
//!    releases the Lease).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, PostParams};
use molecule::resources::Workspace;

/// Workspaces in the throughput run (`MOLECULE_BENCH_WORKSPACES` to try a smaller one).
fn n() -> usize {
    std::env::var("MOLECULE_BENCH_WORKSPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Handovers of each kind (`MOLECULE_BENCH_ROUNDS`).
fn rounds() -> usize {
    std::env::var("MOLECULE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn get_ok(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf.split_whitespace().nth(1)?;
    (code == "200")
        .then(|| buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))
        .flatten()
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

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(p: &Proc) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.0.id())).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    f.iter().sum::<f64>() / hz
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, port: u16, controllers: &str) -> Proc {
    let p = Proc(
        Command::new(env!("CARGO_BIN_EXE_molecule"))
            .args([
                "serve",
                "--controllers",
                controllers,
                "--backend",
                "simulated",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("MOLECULE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve"),
    );
    wait("serve", 60, || get_ok(port, "/readyz").is_some());
    p
}

fn operator(kubeconfig: &Path, agent_port: u16) -> (Proc, u16) {
    let port = free_port();
    let p = Proc(
        Command::new(env!("CARGO_BIN_EXE_molecule"))
            .args(["operator", "--backend", "simulated"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agent-address", "127.0.0.1"])
            .args(["--agent-port", &agent_port.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("MOLECULE_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("operator"),
    );
    wait("operator", 60, || get_ok(port, "/readyz").is_some());
    (p, port)
}

fn leads(port: u16) -> bool {
    get_ok(port, "/metrics")
        .is_some_and(|m| m.contains("molecule_leader{lease=\"molecule-operator\"} 1"))
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn workspace(name: &str) -> Workspace {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": name},
        "spec": {"runtime": "echo", "image": "molecule-bench/simulated:1"},
    }))
    .expect("workspace")
}

async fn create_all(api: &Api<Workspace>, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &workspace(&format!("w{i:04}")))
                    .await
                    .expect("create")
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// Stores N workspaces with no controller running; returns the data dir.
fn prepare(root: &Path, name: &str, rt: &tokio::runtime::Runtime) -> PathBuf {
    let dir = root.join(name);
    let port = free_port();
    let mut s = serve(&dir, port, "none");
    rt.block_on(async {
        let c = client(&dir.join("kubeconfig")).await;
        create_all(&Api::namespaced(c, "bench"), n()).await;
    });
    s.terminate();
    dir
}

/// Seconds from `start` until all N are Online, seen through a watch: the waiter neither loads
/// the server nor adds the granularity of a polling interval to the figure.
fn until_online(kubeconfig: &Path, rt: &tokio::runtime::Runtime, start: Instant) -> f64 {
    use kube::runtime::watcher::{self, Event};
    rt.block_on(async {
        let api: Api<Workspace> = Api::namespaced(client(kubeconfig).await, "bench");
        let mut online = std::collections::HashSet::new();
        let is_online = |w: &Workspace| {
            w.status.as_ref().and_then(|s| s.phase)
                == Some(molecule::resources::WorkspacePhase::Online)
        };
        let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
        let deadline = tokio::time::sleep(Duration::from_secs(600));
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                _ = &mut deadline => None,
            };
            match event {
                Some(Ok(Event::Apply(w) | Event::InitApply(w))) => {
                    let name = w.metadata.name.clone().unwrap_or_default();
                    if is_online(&w) {
                        online.insert(name);
                    } else {
                        online.remove(&name);
                    }
                }
                Some(Ok(Event::Delete(w))) => {
                    online.remove(&w.metadata.name.clone().unwrap_or_default());
                }
                Some(Ok(Event::Init | Event::InitDone)) | Some(Err(_)) => {}
                None => panic!("the workspaces did not all come Online"),
            }
            if online.len() == n() {
                return start.elapsed().as_secs_f64();
            }
        }
    })
}

/// One throughput measurement: wall seconds to all Online, and CPU seconds spent by the
/// API server and the controllers (separate processes in cluster mode).
struct Run {
    wall: f64,
    cpu: f64,
}

fn throughput(root: &Path, rt: &tokio::runtime::Runtime) -> (Run, Run) {
    // Embedded baseline: the same binary, controllers in-process with the API server.
    let dir = prepare(root, "embedded", rt);
    let port = free_port();
    let t = Instant::now();
    let s = serve(&dir, port, "all");
    let wall = until_online(&dir.join("kubeconfig"), rt, t);
    let embedded = Run {
        wall,
        cpu: cpu_secs(&s),
    };
    drop(s);

    // Cluster mode: the API server alone, the operator against it through the kubeconfig.
    let dir = prepare(root, "cluster", rt);
    let port = free_port();
    let s = serve(&dir, port, "none");
    let idle = cpu_secs(&s);
    let t = Instant::now();
    let (op, _) = operator(&dir.join("kubeconfig"), free_port());
    let wall = until_online(&dir.join("kubeconfig"), rt, t);
    let cluster = Run {
        wall,
        cpu: cpu_secs(&s) - idle + cpu_secs(&op),
    };
    (embedded, cluster)
}

/// One handover: stop the leader (`kill9` or SIGTERM), apply a workspace, wait for its first
/// reconcile by the other replica. Returns the seconds and the respawned replica.
fn handover(
    ops: &mut [(Proc, u16); 2],
    kubeconfig: &Path,
    agent_port: u16,
    api: &Api<Workspace>,
    rt: &tokio::runtime::Runtime,
    round: &str,
    kill9: bool,
) -> f64 {
    let mut leader = None;
    wait("a leader", 30, || {
        leader = (0..2).find(|i| leads(ops[*i].1));
        leader.is_some()
    });
    let l = leader.expect("leader");
    let t = Instant::now();
    if kill9 {
        let _ = ops[l].0.0.kill();
        let _ = ops[l].0.0.wait();
    } else {
        ops[l].0.terminate();
    }
    let secs = rt.block_on(async {
        api.create(&PostParams::default(), &workspace(round))
            .await
            .expect("create");
        loop {
            let w = api.get(round).await.expect("get");
            if w.status.as_ref().and_then(|s| s.phase).is_some() {
                return t.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    ops[l] = operator(kubeconfig, agent_port);
    secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn failover(root: &Path, rt: &tokio::runtime::Runtime) -> (Vec<f64>, Vec<f64>) {
    let dir = root.join("failover");
    let port = free_port();
    let _s = serve(&dir, port, "none");
    let kubeconfig = dir.join("kubeconfig");
    let agent_port = free_port();
    let mut ops = [
        operator(&kubeconfig, agent_port),
        operator(&kubeconfig, agent_port),
    ];
    let api: Api<Workspace> =
        rt.block_on(async { Api::namespaced(client(&kubeconfig).await, "bench") });
    let mut graceful = vec![];
    let mut killed = vec![];
    for i in 0..rounds() {
        graceful.push(handover(
            &mut ops,
            &kubeconfig,
            agent_port,
            &api,
            rt,
            &format!("g{i}"),
            false,
        ));
        killed.push(handover(
            &mut ops,
            &kubeconfig,
            agent_port,
            &api,
            rt,
            &format!("k{i}"),
            true,
        ));
    }
    (graceful, killed)
}

fn main() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let (embedded, cluster) = throughput(tmp.path(), &rt);
    let n = n();
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1) as f64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "reconcile throughput, {n} workspaces to Online (simulated backend; {cores} cores, load average {}):",
        load.split_whitespace().next().unwrap_or("?")
    );
    for (what, r, note) in [
        (
            "embedded (serve --controllers all)",
            &embedded,
            "(baseline)".to_string(),
        ),
        (
            "operator (external API, kubeconfig)",
            &cluster,
            format!(
                "({:.2}x the embedded rate; target >= 200/s; Flux ~4/s)",
                embedded.wall / cluster.wall
            ),
        ),
    ] {
        println!(
            "  {what}: {:.2} s = {:.0} workspaces/s {note}; CPU {:.2} s = {:.1} ms per workspace, {:.0} workspaces/s per fully used {cores}-core machine",
            r.wall,
            n as f64 / r.wall,
            r.cpu,
            1000.0 * r.cpu / n as f64,
            n as f64 * cores / r.cpu
        );
    }

    let (graceful, killed) = failover(tmp.path(), &rt);
    println!("failover (leader stopped -> first reconcile by the new leader), lease 15 s:");
    println!(
        "  SIGTERM (lease released): median {:.2} s of {:?} (baseline)",
        median(graceful.clone()),
        graceful
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
    );
    println!(
        "  kill -9 (lease expires):  median {:.2} s of {:?} ({:.1}x the graceful handover; requirement <= 20 s)",
        median(killed.clone()),
        killed.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>(),
        median(killed.clone()) / median(graceful)
    );
}
