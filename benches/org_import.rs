//! Benchmark of org imports. Run with `cargo bench --bench org_import`. A generated tree of 200
//! workspaces on 4 levels, every workspace in its own file pulled in by `!include`, with a
//! files_dir each. Every figure is measured in the same run as its baseline:
//!
//! 1. parse and plan (`orgtemplate::load_plan`: includes, confinement, defaults, env files) vs
//!    parsing the same tree flattened into one YAML document, and vs reading and parsing the
//!    201 files without any processing — target < 200 ms;
//! 2. OrgImport applied → all 200 Workspace records exist, with a backend that does nothing
//!    (`serve --controllers org_import`: records only), vs `kubectl apply` of the same 200
//!    Workspace manifests (same parents, same files_dir) — target < 2 s;
//! 3. with Docker (`serve --controllers all`): OrgImport → all Online, vs `kubectl apply` of the
//!    200 plain Workspaces → all Online, and vs plain `docker run` of the same containers from a
//!    shell loop (timed until the loop ends). `MOLECULE_BENCH_ORG_DOCKER=N` changes the size of
//!    this phase (0 skips it).

#[path = "common/docker.rs"]
mod docker;
#[path = "common/proc.rs"]
mod proc;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOTAL: usize = 200;

/// The tree: 2 roots → 4 children each → 4 each → the rest as leaves (200 in all, 4 levels).
fn generate(root: &Path, total: usize, plugins: bool) -> (Vec<(usize, Option<usize>)>, String) {
    let mut nodes: Vec<(usize, Option<usize>)> = (0..total.min(2)).map(|i| (i, None)).collect();
    let mut level: Vec<usize> = (0..nodes.len()).collect();
    for fanout in [4, 4] {
        let mut next = vec![];
        for p in &level {
            for _ in 0..fanout {
                if nodes.len() < total {
                    let id = nodes.len();
                    nodes.push((id, Some(*p)));
                    next.push(id);
                }
            }
        }
        if !next.is_empty() {
            level = next;
        }
    }
    let mut i = 0;
    while nodes.len() < total {
        let id = nodes.len();
        nodes.push((id, Some(level[i % level.len()])));
        i += 1;
    }
    let dir = root.join("bench");
    std::fs::create_dir_all(dir.join("roles")).expect("roles");
    let children = |p: usize| -> Vec<usize> {
        nodes
            .iter()
            .filter(|(_, parent)| *parent == Some(p))
            .map(|(id, _)| *id)
            .collect()
    };
    let defaults = if plugins {
        "name: Bench Org\ndefaults:\n  runtime: echo\n  plugins: [memory, search]\nworkspaces:\n"
    } else {
        "name: Bench Org\ndefaults:\n  runtime: echo\nworkspaces:\n"
    };
    let own = |id: usize| {
        if plugins {
            format!("plugins: [\"!search\", tool-{id}]\n")
        } else {
            String::new()
        }
    };
    let mut flat = String::from(defaults);
    fn flat_node(
        out: &mut String,
        id: usize,
        depth: usize,
        children: &dyn Fn(usize) -> Vec<usize>,
        own: &dyn Fn(usize) -> String,
    ) {
        let pad = "  ".repeat(depth);
        out.push_str(&format!(
            "{pad}  - name: Role {id}\n{pad}    role: role number {id}\n{pad}    files_dir: prompts/w{id}\n"
        ));
        let plugins = own(id);
        if !plugins.is_empty() {
            out.push_str(&format!("{pad}    {plugins}"));
        }
        let kids = children(id);
        if !kids.is_empty() {
            out.push_str(&format!("{pad}    children:\n"));
            for k in kids {
                flat_node(out, k, depth + 2, children, own);
            }
        }
    }
    for (id, parent) in &nodes {
        let kids = children(*id);
        let mut f = format!(
            "name: Role {id}\nrole: role number {id}\nfiles_dir: prompts/w{id}\n{}",
            own(*id)
        );
        if !kids.is_empty() {
            f.push_str("children:\n");
            for k in &kids {
                f.push_str(&format!("  - !include w{k}.yaml\n"));
            }
        }
        std::fs::write(dir.join(format!("roles/w{id}.yaml")), f).expect("role");
        let p = dir.join(format!("prompts/w{id}"));
        std::fs::create_dir_all(&p).expect("prompts");
        std::fs::write(p.join("system-prompt.md"), format!("You are role {id}.\n"))
            .expect("prompt");
        if parent.is_none() {
            flat_node(&mut flat, *id, 0, &children, &own);
        }
    }
    let mut org = String::from(defaults);
    for (id, parent) in &nodes {
        if parent.is_none() {
            org.push_str(&format!("  - !include roles/w{id}.yaml\n"));
        }
    }
    std::fs::write(dir.join("org.yaml"), org).expect("org");
    (nodes, flat)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A running `serve`; dropping it (also on a panic) stops it and removes whatever containers
/// and volumes of its installation are left.
struct Serve {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
        let instance = std::fs::read_to_string(self.dir.join("instance-id")).unwrap_or_default();
        let instance = instance.trim();
        if instance.is_empty() {
            return;
        }
        let filter = format!("label=molecule.ai/instance={instance}");
        let list = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        for c in list(&["ps", "-aq", "--filter", &filter]) {
            let _ = Command::new("docker").args(["rm", "-f", &c]).output();
        }
        for v in list(&["volume", "ls", "-q", "--filter", &filter]) {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", &v])
                .output();
        }
    }
}

impl Serve {
    fn rss_mb(&self) -> f64 {
        proc::rss_mb(self.child.as_ref().map_or(0, Child::id))
    }
}

/// Answers one request on `conn` with 200 `{}` and closes it (as `benches/workspaces.rs`'
/// stand-in platform does).
fn answer_ok(mut conn: TcpStream) {
    let mut buf = [0u8; 8192];
    let _ = conn.read(&mut buf);
    let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
}

/// A command's stdout, or nothing.
fn sh_out(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn start(dir: &Path, port: u16, templates: &Path, controllers: &str) -> Serve {
    Serve {
        child: Some(spawn(dir, port, templates, controllers)),
        dir: dir.to_path_buf(),
    }
}

fn spawn(dir: &Path, port: u16, templates: &Path, controllers: &str) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--controllers",
            controllers,
            "--agent-heartbeat-seconds",
            "5",
            "--reap-interval-seconds",
            "60",
            "--org-templates",
        ])
        .arg(templates)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if dir.join("kubeconfig").exists() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("serve did not start");
}

fn stop(mut c: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let _ = c.wait();
}

fn kubectl(kc: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kc)
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

/// GET with the bearer token over plain HTTP; the body as JSON.
fn get(port: u16, token: &str, path: &str) -> Value {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Value::Null;
    };
    let _ = s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

fn workspaces(port: u16, token: &str, ns: &str) -> Vec<Value> {
    get(
        port,
        token,
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces"),
    )["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn org_manifest(name: &str) -> String {
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: {name}\nspec:\n  source:\n    dir: bench\n"
    )
}

fn plain_manifests(nodes: &[(usize, Option<usize>)]) -> String {
    nodes
        .iter()
        .map(|(id, parent)| {
            let parent = parent
                .map(|p| format!("  parentRef:\n    name: w{p}\n"))
                .unwrap_or_default();
            format!(
                "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: w{id}\nspec:\n  runtime: echo\n  displayName: Role {id}\n  role: role number {id}\n  files:\n    filesDir: bench/prompts/w{id}\n{parent}---\n"
            )
        })
        .collect()
}

/// Waits until the OrgImport reports every child applied; returns the elapsed time.
fn wait_imported(port: u16, token: &str, ns: &str, name: &str, n: usize, t: Instant) -> Duration {
    while t.elapsed() < Duration::from_secs(120) {
        let o = get(
            port,
            token,
            &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/orgimports/{name}"),
        );
        if o["status"]["counts"]["created"].as_u64() == Some(n as u64) {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the import did not finish");
}

fn wait_online(port: u16, token: &str, ns: &str, n: usize, t: Instant) -> Duration {
    while t.elapsed() < Duration::from_secs(1800) {
        let ws = workspaces(port, token, ns);
        if ws.len() == n && ws.iter().all(|w| w["status"]["phase"] == "Online") {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("workspaces did not come Online");
}

fn wait_gone(port: u16, token: &str, ns: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(600) && !workspaces(port, token, ns).is_empty() {
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn main() {
    let tmp = tempfile::tempdir().expect("tmp");
    let templates = tmp.path().join("templates");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let (nodes, flat) = generate(&templates, TOTAL, true);

    // 1. Parse and plan.
    let opts = molecule::orgtemplate::Options {
        root: templates.clone(),
        external: molecule::orgtemplate::ExternalConfig::for_root(&templates),
        persona_root: None,
        process_env: false,
    };
    let source = molecule::orgtemplate::Source::Dir("bench".into());
    let t = Instant::now();
    let plan = molecule::orgtemplate::load_plan(&opts, &source).expect("plan");
    let cold = t.elapsed();
    assert_eq!(plan.workspaces.len(), TOTAL);
    let depth = plan
        .workspaces
        .iter()
        .map(|w| w.tree_path.len())
        .max()
        .unwrap_or(0);
    assert_eq!(depth, 4);
    let runs = 20;
    let plan_t = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let _ = molecule::orgtemplate::load_plan(&opts, &source).expect("plan");
                t.elapsed()
            })
            .collect(),
    );
    let flat_t = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let _: serde_json::Value = molecule::yaml::from_str(&flat).expect("flat");
                t.elapsed()
            })
            .collect(),
    );
    let files: Vec<PathBuf> = std::iter::once(templates.join("bench/org.yaml"))
        .chain((0..TOTAL).map(|i| templates.join(format!("bench/roles/w{i}.yaml"))))
        .collect();
    let files_t = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                for f in &files {
                    let text = std::fs::read_to_string(f).expect("read");
                    let _: serde_json::Value = molecule::yaml::from_str(&text).expect("yaml");
                }
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "org_import bench: {TOTAL} workspaces, 4 levels, one !include per workspace, a files_dir each"
    );
    println!(
        "  parse+plan:            {:8.1} ms median of {runs} (cold {:.1} ms)  target < 200 ms: {}",
        ms(plan_t),
        ms(cold),
        if plan_t < Duration::from_millis(200) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  baseline flat parse:   {:8.1} ms  (one YAML document, no includes)   ratio {:.1}x",
        ms(flat_t),
        plan_t.as_secs_f64() / flat_t.as_secs_f64()
    );
    println!(
        "  baseline read+parse:   {:8.1} ms  (201 files, no processing)         ratio {:.1}x",
        ms(files_t),
        plan_t.as_secs_f64() / files_t.as_secs_f64()
    );

    // 2. Records, with a backend that does nothing (no workspace controller).
    let port = free_port();
    let dir = tmp.path().join("data-records");
    let serve = start(&dir, port, &templates, "org_import");
    let kc = dir.join("kubeconfig");
    let token = std::fs::read_to_string(dir.join("token"))
        .expect("token")
        .trim()
        .to_string();
    // Warm kubectl's discovery cache.
    kubectl(&kc, &home, &["get", "ws", "-n", "warm"], None);
    let t = Instant::now();
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "records", "-f", "-"],
        Some(&org_manifest("bench")),
    );
    let records_t = wait_imported(port, &token, "records", "bench", TOTAL, t);
    assert_eq!(workspaces(port, &token, "records").len(), TOTAL);
    let audit = get(
        port,
        &token,
        "/audit?event=org.import.completed&namespace=records",
    );
    let reconcile_ms = audit["items"][0]["data"]["duration_ms"]
        .as_u64()
        .unwrap_or(0);
    let t = Instant::now();
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "plain", "-f", "-"],
        Some(&plain_manifests(&nodes)),
    );
    let plain_t = t.elapsed();
    assert_eq!(workspaces(port, &token, "plain").len(), TOTAL);
    // Re-import of the same tree (a spec change forces a pass): everything unchanged.
    let t = Instant::now();
    kubectl(
        &kc,
        &home,
        &[
            "patch",
            "orgimport",
            "bench",
            "-n",
            "records",
            "--type=merge",
            "-p",
            r#"{"spec":{"force":true}}"#,
        ],
        None,
    );
    let reapply_t = loop {
        let o = get(
            port,
            &token,
            "/apis/molecule.ai/v1alpha1/namespaces/records/orgimports/bench",
        );
        if o["status"]["observedGeneration"] == 2
            && o["status"]["counts"]["unchanged"] == TOTAL as u64
        {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(60) {
            panic!("re-import did not finish");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    drop(serve);
    println!(
        "  records (no backend):  {:8.1} ms  apply → all {TOTAL} Workspace records exist (reconcile {reconcile_ms} ms)  target < 2 s: {}",
        ms(records_t),
        if records_t < Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  baseline kubectl apply:{:8.1} ms  (the same {TOTAL} Workspaces as plain manifests)  ratio {:.2}x",
        ms(plain_t),
        records_t.as_secs_f64() / plain_t.as_secs_f64()
    );
    println!(
        "  re-import, no changes: {:8.1} ms  ({TOTAL} unchanged, nothing written)",
        ms(reapply_t)
    );

    // 3. With Docker, up to all Online.
    let n: usize = std::env::var("MOLECULE_BENCH_ORG_DOCKER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TOTAL);
    if n == 0 {
        return;
    }
    // Every agent talks to the platform on the network's gateway, so the host keeps an ARP
    // entry per container. Past the kernel's neighbour-table threshold (gc_thresh2, 512 by
    // default) entries are evicted and new agents' connections time out: the run would measure
    // the host's table, not the platform.
    let thresh = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh2")
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok());
    if let Some(t) = thresh.filter(|t| *t < n + 64) {
        println!(
            "  docker phase skipped: {n} containers need more ARP entries than the host keeps (gc_thresh2 = {t}); raise it with `sysctl -w net.ipv4.neigh.default.gc_thresh2={} net.ipv4.neigh.default.gc_thresh3={}`",
            (n + 64).next_power_of_two(),
            2 * (n + 64).next_power_of_two()
        );
        return;
    }
    let docker_templates = tmp.path().join("templates-docker");
    // `MOLECULE_BENCH_ORG_PLUGINS=0`: the same tree without `plugins:` (the loop's and the
    // plain manifests' workload), to tell the plugins' share of the import's time.
    let plugins = std::env::var("MOLECULE_BENCH_ORG_PLUGINS").map_or(true, |v| v != "0");
    let (docker_nodes, _) = generate(&docker_templates, n, plugins);
    let port = free_port();
    let dir = tmp.path().join("data-docker");
    let serve = start(&dir, port, &docker_templates, "all");
    let kc = dir.join("kubeconfig");
    let token = std::fs::read_to_string(dir.join("token"))
        .expect("token")
        .trim()
        .to_string();
    // Warm-up: the echo image is built once.
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "warm", "-f", "-"],
        Some(
            "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: warm\nspec:\n  runtime: echo\n",
        ),
    );
    wait_online(port, &token, "warm", 1, Instant::now());
    kubectl(&kc, &home, &["delete", "ws", "--all", "-n", "warm"], None);
    wait_gone(port, &token, "warm");

    let t = Instant::now();
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "org", "-f", "-"],
        Some(&org_manifest("bench")),
    );
    let org_online = wait_online(port, &token, "org", n, t);
    let org_rss = serve.rss_mb();
    kubectl(
        &kc,
        &home,
        &["delete", "orgimport", "bench", "-n", "org"],
        None,
    );
    wait_gone(port, &token, "org");

    let t = Instant::now();
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "plain", "-f", "-"],
        Some(&plain_manifests(&docker_nodes)),
    );
    let plain_online = wait_online(port, &token, "plain", n, t);
    kubectl(&kc, &home, &["delete", "ws", "--all", "-n", "plain"], None);
    wait_gone(port, &token, "plain");
    drop(serve);

    // Plain `docker run` of the same containers from a shell loop (the options the operator
    // gives a tier-2 echo workspace), timed until the loop ends: no registration is waited for.
    let image = sh_out(&[
        "docker",
        "images",
        "molecule-local/echo",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    let image = image.lines().next().unwrap_or("").to_string();
    // A stand-in platform on the network's gateway answers every registration and heartbeat
    // with 200, so the loop's agents run like the operator's instead of exiting and restarting.
    let gateway = docker::network_gateway();
    let platform = TcpListener::bind((gateway.as_str(), 0)).expect("bind gateway");
    let platform_url = format!("http://{}", platform.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in platform.incoming().flatten() {
            std::thread::spawn(move || answer_ok(conn));
        }
    });
    let cfg = tmp.path().join("loop-configs");
    std::fs::create_dir_all(&cfg).expect("configs");
    std::fs::write(
        cfg.join("config.yaml"),
        format!("workspace_id: loop\nplatform_url: {platform_url}\n"),
    )
    .expect("config");
    std::fs::write(cfg.join(".auth_token"), "bench").expect("token");
    let script = format!(
        "for i in $(seq 1 {n}); do docker run -d --name mbenchloop-$i --network molecule-core-net -p 127.0.0.1::8000 --memory 512m --cpus 1 --restart unless-stopped --add-host host.docker.internal:host-gateway -v {}:/configs:ro {image} >/dev/null || exit 1; done",
        cfg.display()
    );
    let t = Instant::now();
    let loop_ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    let docker_loop = t.elapsed();
    let _ = Command::new("sh")
        .args([
            "-c",
            "docker ps -aq --filter name=mbenchloop- | xargs -r docker rm -f >/dev/null",
        ])
        .status();
    println!(
        "  docker, all Online:    {:8.1} s   OrgImport of {n} workspaces ({}); serve RSS with them Online {org_rss:.1} MB",
        org_online.as_secs_f64(),
        if plugins {
            "two plugins each"
        } else {
            "no plugins"
        }
    );
    println!(
        "  baseline docker run:   {:8.1} s   the same {n} containers from a shell loop (started, not registered){}   ratio {:.2}x (target <= 1.0)",
        docker_loop.as_secs_f64(),
        if loop_ok { "" } else { " FAILED" },
        org_online.as_secs_f64() / docker_loop.as_secs_f64()
    );
    println!(
        "  baseline kubectl apply:{:8.1} s   the same {n} plain Workspaces → Online   ratio {:.2}x",
        plain_online.as_secs_f64(),
        org_online.as_secs_f64() / plain_online.as_secs_f64()
    );
}
