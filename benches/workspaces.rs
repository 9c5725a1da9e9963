//! Benchmark of the Workspace controller against the real Docker engine. Run with
//! `cargo bench --bench workspaces`. Every figure is measured in the same run as its baseline:
//!
//! - apply → Online of one echo workspace, vs `docker run` of the same image plus waiting for
//!   its first registration (a listener of this bench plays the platform);
//! - 50 workspaces converging to Online, vs `docker compose up -d` of 50 equivalent services;
//! - orphan reap latency after a stray labelled container appears (the original swept every 60 s);
//! - RSS of `serve` with 50 live workspaces.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ),
        Err(_) => (false, String::new()),
    }
}

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

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn start(dir: &Path, port: u16) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--agent-heartbeat-seconds",
            "1",
            "--reap-interval-seconds",
            "60",
            "--data-dir",
        ])
        .arg(dir)
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

fn phases(kc: &Path, home: &Path, ns: &str) -> Vec<String> {
    kubectl(
        kc,
        home,
        &[
            "get",
            "ws",
            "-n",
            ns,
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        None,
    )
    .split_whitespace()
    .map(String::from)
    .collect()
}

fn wait_online(kc: &Path, home: &Path, ns: &str, n: usize) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(600) {
        let p = phases(kc, home, ns);
        if p.len() == n && p.iter().all(|x| x == "Online") {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("workspaces did not come Online");
}

fn ws(name: &str) -> String {
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  runtime: echo\n---\n"
    )
}

/// A config dir for running the echo image by hand, pointed at `platform`.
fn agent_dir(root: &Path, i: usize, platform: &str) -> std::path::PathBuf {
    let d = root.join(format!("agent-{i}"));
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::write(
        d.join("config.yaml"),
        format!("workspace_id: bench-{i}\nplatform_url: {platform}\nheartbeat_seconds: 1\n"),
    )
    .expect("config");
    std::fs::write(d.join(".auth_token"), "bench").expect("token");
    d
}

fn main() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut serve = start(&dir, port);
    let kc = dir.join("kubeconfig");
    let ns = "bench";

    // Warm-up: builds the echo image once (cached by content hash afterwards).
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "warm", "-f", "-"],
        Some(&ws("warm")),
    );
    wait_online(&kc, &home, "warm", 1);
    let image = sh(&[
        "docker",
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &format!(
            "ws-{}",
            &kubectl(
                &kc,
                &home,
                &[
                    "get",
                    "ws",
                    "warm",
                    "-n",
                    "warm",
                    "-o",
                    "jsonpath={.metadata.uid}"
                ],
                None
            )
            .replace('-', "")[..12]
        ),
    ])
    .1;
    kubectl(&kc, &home, &["delete", "ws", "--all", "-n", "warm"], None);

    // 1. One workspace: apply → Online.
    let t = Instant::now();
    kubectl(
        &kc,
        &home,
        &["apply", "-n", ns, "-f", "-"],
        Some(&ws("one")),
    );
    wait_online(&kc, &home, ns, 1);
    let ours_one = t.elapsed();

    // Baseline: docker run of the same image + its first registration at a listener of ours.
    let gateway = sh(&[
        "docker",
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        "molecule-core-net",
    ])
    .1;
    let listener = TcpListener::bind((gateway.as_str(), 0)).expect("bind gateway");
    let platform = format!("http://{}", listener.local_addr().expect("addr"));
    let d = agent_dir(tmp.path(), 0, &platform);
    let t = Instant::now();
    let (ok, _) = sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        "bench-raw-0",
        "--network",
        "molecule-core-net",
        "-v",
        &format!("{}:/configs", d.display()),
        &image,
    ]);
    assert!(ok, "docker run failed");
    let (mut conn, _) = listener.accept().expect("registration");
    let mut buf = [0u8; 4096];
    let _ = conn.read(&mut buf);
    let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    let raw_one = t.elapsed();
    sh(&["docker", "rm", "-f", "bench-raw-0"]);

    // 2. Fifty workspaces.
    let yaml: String = (0..50).map(|i| ws(&format!("w{i}"))).collect();
    let t = Instant::now();
    kubectl(
        &kc,
        &home,
        &["apply", "-n", "fifty", "-f", "-"],
        Some(&yaml),
    );
    wait_online(&kc, &home, "fifty", 50);
    let ours_fifty = t.elapsed();
    let rss = rss_mb(serve.id());

    // Baseline: docker compose up -d of 50 equivalent services.
    let mut compose = String::from("services:\n");
    for i in 0..50 {
        let d = agent_dir(tmp.path(), i + 1, &platform);
        compose.push_str(&format!(
            "  a{i}:\n    image: {image}\n    networks: [net]\n    volumes: [\"{}:/configs\"]\n",
            d.display()
        ));
    }
    compose.push_str("networks:\n  net:\n    external: true\n    name: molecule-core-net\n");
    let cdir = tmp.path().join("compose");
    std::fs::create_dir_all(&cdir).expect("compose dir");
    std::fs::write(cdir.join("docker-compose.yml"), compose).expect("compose file");
    let cfile = cdir.join("docker-compose.yml");
    let cpath = cfile.to_string_lossy().to_string();
    let t = Instant::now();
    let (ok, _) = sh(&[
        "docker-compose",
        "-p",
        "moleculebench",
        "-f",
        &cpath,
        "up",
        "-d",
    ]);
    let compose_fifty = t.elapsed();
    sh(&[
        "docker-compose",
        "-p",
        "moleculebench",
        "-f",
        &cpath,
        "down",
        "-t",
        "1",
    ]);
    drop(listener);

    // 3. Reap latency of a stray labelled container.
    let instance = std::fs::read_to_string(dir.join("instance-id")).expect("instance-id");
    let instance = instance.trim();
    let t = Instant::now();
    sh(&[
        "docker",
        "create",
        "--name",
        "bench-stray",
        "--label",
        "molecule.platform.managed=true",
        "--label",
        &format!("molecule.ai/instance={instance}"),
        "--label",
        "molecule.ai/uid=0000beef-0000-0000-0000-000000000000",
        "--label",
        "molecule.ai/namespace=bench",
        "--label",
        "molecule.ai/name=ghost",
        &image,
    ]);
    while sh(&["docker", "inspect", "bench-stray"]).0 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let reap = t.elapsed();

    kubectl(&kc, &home, &["delete", "ws", "--all", "-n", ns], None);
    kubectl(
        &kc,
        &home,
        &["delete", "ws", "--all", "-n", "fifty", "--timeout=300s"],
        None,
    );
    let _ = serve.kill();
    let _ = serve.wait();

    println!(
        "apply→Online, one echo workspace: {:.0} ms; docker run + first registration: {:.0} ms; ratio {:.2} (target ≤ 1.3)",
        ours_one.as_secs_f64() * 1e3,
        raw_one.as_secs_f64() * 1e3,
        ours_one.as_secs_f64() / raw_one.as_secs_f64()
    );
    println!(
        "50 workspaces to Online: {:.2} s; docker compose up -d of 50 services{}: {:.2} s; ratio {:.2} (target < 1)",
        ours_fifty.as_secs_f64(),
        if ok { "" } else { " (FAILED)" },
        compose_fifty.as_secs_f64(),
        ours_fifty.as_secs_f64() / compose_fifty.as_secs_f64()
    );
    println!(
        "orphan reap latency after a stray labelled container: {:.0} ms (target < 2000 ms; the original swept every 60 s)",
        reap.as_secs_f64() * 1e3
    );
    println!("serve RSS with 50 live workspaces: {rss:.1} MB");
}
