//! Benchmark of plugins as desired state, against the real Docker engine and real git
//! repositories in a temp dir. Run with `cargo bench --bench plugins`. Every figure is measured
//! in the same run as its baseline:
//!
//! - install latency of a 10-file plugin into a running echo workspace, hot (a SKILL.md change)
//!   and cold (a hook change), from `kubectl patch … decision: Approved` to the record saying
//!   installed, split into fetch / stage / prepare / swap (the controller's own metrics) and
//!   restart (until the workspace is Online again in its new container, plugin in place);
//!   baselines: a plain `docker cp` of the same 10 files (non-atomic, no classification) and a
//!   plain workspace restart (`molecule.ai/restartedAt`) without any plugin work;
//! - one full drift pass over 200 tracked PluginInstalls, each on its own local git repository
//!   that moved (200 `git ls-remote`s, 200 PluginUpdates created), then a second pass (nothing
//!   new: every create deduplicates); baseline: a sequential `git ls-remote` loop over the same
//!   200 repositories, as a naive sweeper would run it. Target: a pass under 10 s.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.email=b@example.com",
            "-c",
            "user.name=b",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
}

/// A 10-file plugin.
fn ten_files(root: &Path, skill_rev: u32, hook_rev: u32) {
    write(
        root,
        "plugin.yaml",
        "name: bench\nversion: 1.0.0\nskills: [a, b, c, d]\n",
    );
    for s in ["a", "b", "c", "d"] {
        write(
            root,
            &format!("skills/{s}/SKILL.md"),
            &format!("# {s} rev {skill_rev}\n{}\n", "text ".repeat(200)),
        );
    }
    write(root, "rules/one.md", "Rule one.\n");
    write(root, "rules/two.md", "Rule two.\n");
    write(
        root,
        "hooks/start.sh",
        &format!("#!/bin/sh\necho {hook_rev}\n"),
    );
    write(root, "hooks/stop.sh", "#!/bin/sh\necho stop\n");
    write(root, "settings-fragment.json", "{\"hooks\": {}}\n");
}

struct Serve {
    child: Child,
    port: u16,
    dir: PathBuf,
    token: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Serve {
    let port = free_port();
    let log = std::fs::File::create(dir.join("serve.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("serve");
    // Owned (and killed on drop) from here on.
    let mut s = Serve {
        child,
        port,
        dir: dir.to_path_buf(),
        token: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(dir.join("data/token")).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.token = std::fs::read_to_string(dir.join("data/token"))
        .expect("token")
        .trim()
        .to_string();
    while s.request("GET", "/readyz", None).0 != 200 {
        assert!(Instant::now() < deadline, "serve did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

/// Removes the containers and volumes of a namespace when dropped (also on a panic).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=molecule.ai/namespace={}", self.0);
        let ids = |args: &[&str]| -> Vec<String> {
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
        for c in ids(&["ps", "-aq", "--filter", &filter]) {
            let _ = Command::new("docker").args(["rm", "-f", &c]).output();
        }
        for v in ids(&["volume", "ls", "-q", "--filter", &filter]) {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", &v])
                .output();
        }
    }
}

impl Serve {
    fn request(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        let (ct, b) = body.unwrap_or(("application/json", ""));
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{b}",
            self.token,
            b.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        let code = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            code,
            buf.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    }

    fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.request("GET", path, None).1).unwrap_or(Value::Null)
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut c = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.dir.join("data/kubeconfig"))
            .env("HOME", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let (Some(input), Some(mut si)) = (stdin, c.stdin.take()) {
            si.write_all(input.as_bytes()).expect("stdin");
        }
        let o = c.wait_with_output().expect("kubectl");
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// (count, sum) of molecule_plugin_install_seconds by (step, change).
    fn install_metrics(&self) -> BTreeMap<(String, String), (f64, f64)> {
        let (_, text) = self.request("GET", "/metrics", None);
        let mut out: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("molecule_plugin_install_seconds_") else {
                continue;
            };
            let (kind, rest) = rest.split_once('{').unwrap_or(("", ""));
            let (labels, value) = rest.split_once("} ").unwrap_or(("", ""));
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let e = out.entry((label("step"), label("change"))).or_default();
            let v: f64 = value.trim().parse().unwrap_or(0.0);
            if kind == "count" {
                e.0 = v;
            } else {
                e.1 = v;
            }
        }
        out
    }
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out: {what}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// One install run: approve → installed, approve → settled (ms), the step split, and whether
/// the container stayed.
type Run = (f64, f64, Split, bool);

struct Split {
    fetch: f64,
    stage: f64,
    prepare: f64,
    swap: f64,
}

fn split(
    before: &BTreeMap<(String, String), (f64, f64)>,
    after: &BTreeMap<(String, String), (f64, f64)>,
    change: &str,
) -> Split {
    let d = |step: &str| {
        let k = (step.to_string(), change.to_string());
        let a = after.get(&k).copied().unwrap_or_default();
        let b = before.get(&k).copied().unwrap_or_default();
        if a.0 > b.0 {
            (a.1 - b.1) * 1000.0 / (a.0 - b.0)
        } else {
            0.0
        }
    };
    Split {
        fetch: d("fetch"),
        stage: d("stage"),
        prepare: d("prepare"),
        swap: d("swap"),
    }
}

fn install_latency(work: &Path) {
    let ns = &format!("bench-plugins-{}", std::process::id());
    let _cleanup = Cleanup(ns.to_string());
    let s = serve(
        work,
        &[
            "--agent-heartbeat-seconds",
            "1",
            "--plugin-drift-tick-seconds",
            "1",
            "--reap-interval-seconds",
            "60",
        ],
    );
    let repo = work.join("repo");
    std::fs::create_dir_all(&repo).expect("repo");
    git(&repo, &["init", "-q", "-b", "main"]);
    ten_files(&repo, 0, 0);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "v0"]);
    s.kubectl(&["create", "namespace", ns], None);
    s.kubectl(
        &["apply", "-n", ns, "-f", "-"],
        Some(&format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata: {{name: bench}}\nspec: {{runtime: echo}}\n---\napiVersion: molecule.ai/v1alpha1\nkind: PluginInstall\nmetadata: {{name: bench}}\nspec:\n  workspaceRef: {{name: bench}}\n  source: file://{}\n  track: branch:main\n  checkInterval: 1s\n",
            repo.display()
        )),
    );
    let ws_path = format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces/bench");
    let pi_path = format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/plugininstalls/bench");
    let pu_path = format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/pluginupdates");
    let settled = || {
        let ws = s.get(&ws_path);
        let pi = s.get(&pi_path);
        let asked = &ws["metadata"]["annotations"]["molecule.ai/restartedAt"];
        ws["status"]["phase"] == "Online"
            && (asked.is_null() || *asked == ws["status"]["restartedAt"])
            && pi["status"]["installedContainerId"] == ws["status"]["containerId"]
            && pi["status"]["conditions"][0]["status"] == "True"
    };
    wait("the first install", 180, settled);
    let container = s.get(&ws_path)["status"]["containerName"]
        .as_str()
        .unwrap_or("")
        .to_string();

    let approve_and_wait = |skill_rev: u32, hook_rev: u32, change: &str| -> Run {
        ten_files(&repo, skill_rev, hook_rev);
        git(&repo, &["commit", "-q", "-am", "next"]);
        let sha = git(&repo, &["rev-parse", "HEAD"]);
        let mut name = String::new();
        wait("a PluginUpdate", 60, || {
            let list = s.get(&pu_path);
            name = list["items"]
                .as_array()
                .and_then(|l| l.iter().find(|u| u["spec"]["toSha"] == sha.as_str()))
                .and_then(|u| u["metadata"]["name"].as_str())
                .unwrap_or("")
                .to_string();
            !name.is_empty()
        });
        let id_before = s.get(&ws_path)["status"]["containerId"].clone();
        let m0 = s.install_metrics();
        let t = Instant::now();
        s.kubectl(
            &[
                "patch",
                "pluginupdate",
                &name,
                "-n",
                ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"decision":"Approved"}}"#,
            ],
            None,
        );
        wait("installed", 120, || {
            let pi = s.get(&pi_path);
            pi["status"]["installedSha"] == sha.as_str()
                && pi["status"]["conditions"][0]["status"] == "True"
        });
        let installed = t.elapsed();
        wait("settled", 180, settled);
        let total = t.elapsed();
        let m1 = s.install_metrics();
        let same = s.get(&ws_path)["status"]["containerId"] == id_before;
        (ms(installed), ms(total), split(&m0, &m1, change), same)
    };

    let mut hot = vec![];
    for i in 1..=5 {
        hot.push(approve_and_wait(i, 0, "hot"));
    }
    let mut cold = vec![];
    for i in 1..=3 {
        cold.push(approve_and_wait(100, i, "cold"));
    }
    assert!(
        hot.iter().all(|h| h.3),
        "a hot change replaced the container"
    );
    assert!(
        cold.iter().all(|c| !c.3),
        "a cold change kept the container"
    );

    // Baseline, hot: docker cp of the same ten files (no staging, no snapshot, no marker).
    let mut cp = vec![];
    for i in 0..5 {
        let t = Instant::now();
        let o = Command::new("docker")
            .args([
                "cp",
                &format!("{}/.", repo.display()),
                &format!("{container}:/configs/baseline-{i}"),
            ])
            .output()
            .expect("docker cp");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        cp.push(ms(t.elapsed()));
    }
    // Baseline, cold: a plain workspace restart through the same annotation.
    let mut restarts = vec![];
    for i in 0..3 {
        let id = s.get(&ws_path)["status"]["containerId"].clone();
        let t = Instant::now();
        s.kubectl(
            &[
                "annotate",
                "ws",
                "bench",
                "-n",
                ns,
                "--overwrite",
                &format!("molecule.ai/restartedAt=2030-01-01T00:00:0{i}Z"),
            ],
            None,
        );
        wait("restart", 180, || {
            let ws = s.get(&ws_path);
            ws["status"]["containerId"] != id && ws["status"]["phase"] == "Online"
        });
        restarts.push(ms(t.elapsed()));
    }
    s.kubectl(&["delete", "ws", "bench", "-n", ns, "--timeout=120s"], None);

    let col = |v: &[Run], f: &dyn Fn(&Run) -> f64| mean(&v.iter().map(f).collect::<Vec<_>>());
    println!(
        "\n== install latency, 10-file plugin (mean ms; {} hot, {} cold runs) ==",
        hot.len(),
        cold.len()
    );
    println!(
        "{:<6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "class", "fetch", "stage", "prepare", "swap", "installed", "restart", "total"
    );
    for (label, v) in [("hot", &hot), ("cold", &cold)] {
        let installed = col(v, &|x| x.0);
        let total = col(v, &|x| x.1);
        let restart = if label == "cold" {
            total - installed
        } else {
            0.0
        };
        println!(
            "{label:<6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>10.1} {:>10.1}",
            col(v, &|x| x.2.fetch),
            col(v, &|x| x.2.stage),
            col(v, &|x| x.2.prepare),
            col(v, &|x| x.2.swap),
            installed,
            restart,
            total
        );
    }
    let cp_mean = mean(&cp);
    let restart_mean = mean(&restarts);
    println!("baseline: docker cp of the 10 files      {cp_mean:>8.1} ms");
    println!("baseline: plain workspace restart         {restart_mean:>8.1} ms");
    let hot_installed = col(&hot, &|x| x.0);
    let cold_total = col(&cold, &|x| x.1);
    println!(
        "ratio: hot install (approve → installed) / docker cp        = {:.2}",
        hot_installed / cp_mean.max(0.001)
    );
    println!(
        "ratio: cold install (approve → Online again) / plain restart = {:.2}",
        cold_total / restart_mean.max(0.001)
    );
}

fn drift_pass(work: &Path) {
    const N: usize = 200;
    let s = serve(work, &["--controllers", "none"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    // 200 repositories: one template, copied, so each has the same first commit.
    let template = work.join("template");
    std::fs::create_dir_all(&template).expect("template");
    git(&template, &["init", "-q", "-b", "main"]);
    ten_files(&template, 0, 0);
    git(&template, &["add", "-A"]);
    git(&template, &["commit", "-q", "-m", "v0"]);
    let c0 = git(&template, &["rev-parse", "HEAD"]);
    let repos: Vec<PathBuf> = (0..N).map(|i| work.join(format!("repo-{i:03}"))).collect();
    for r in &repos {
        let o = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(r)
            .output()
            .expect("cp");
        assert!(o.status.success());
    }
    let ns = "bench-drift";
    s.kubectl(&["create", "namespace", ns], None);
    let client = rt.block_on(async {
        let kc =
            kube::config::Kubeconfig::read_from(work.join("data/kubeconfig")).expect("kubeconfig");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("config");
        kube::Client::try_from(cfg).expect("client")
    });
    let api: kube::Api<molecule::resources::PluginInstall> =
        kube::Api::namespaced(client.clone(), ns);
    rt.block_on(async {
        for (i, r) in repos.iter().enumerate() {
            let source = format!("file://{}", r.display());
            let pi: molecule::resources::PluginInstall = serde_json::from_value(json!({
                "apiVersion": "molecule.ai/v1alpha1", "kind": "PluginInstall",
                "metadata": {"name": format!("p{i:03}"), "namespace": ns},
                "spec": {"workspaceRef": {"name": format!("w{i:03}")}, "source": source, "track": "branch:main"}
            }))
            .expect("install");
            api.create(&Default::default(), &pi).await.expect("create");
            let status = json!({"status": {"installedSha": c0, "installedFrom": format!("{source}#branch:main"), "pluginName": "bench"}});
            api.patch_status(&format!("p{i:03}"), &Default::default(), &kube::api::Patch::Merge(status)).await.expect("status");
        }
    });
    // Every upstream moves.
    for r in &repos {
        git(r, &["commit", "-q", "--allow-empty", "-m", "moved"]);
    }
    let installs: Vec<Arc<molecule::resources::PluginInstall>> = rt
        .block_on(api.list(&Default::default()))
        .expect("list")
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    assert_eq!(installs.len(), N);

    // Baseline: a sequential ls-remote loop.
    let t = Instant::now();
    for r in &repos {
        let o = Command::new("git")
            .args([
                "ls-remote",
                "--exit-code",
                "--",
                &format!("file://{}", r.display()),
                "refs/heads/main",
            ])
            .output()
            .expect("ls-remote");
        assert!(o.status.success());
    }
    let baseline = t.elapsed();

    let scratch = work.join("scratch");
    let fetcher = molecule::plugins::Fetcher {
        registry: work.join("registry"),
        git: molecule::plugins::git::Git::new(Duration::from_secs(300), scratch),
        limits: Default::default(),
    };
    let pass = |concurrency: usize| {
        let t = Instant::now();
        let r = rt
            .block_on(molecule::controllers::plugin::drift::pass(
                &client,
                &fetcher,
                &installs,
                |_, _| "production",
                concurrency,
            ))
            .expect("pass");
        (t.elapsed(), r)
    };
    let (first, r1) = pass(molecule::controllers::plugin::drift::CONCURRENCY);
    assert_eq!(r1.created, N, "{r1:?}");
    let (second, r2) = pass(molecule::controllers::plugin::drift::CONCURRENCY);
    assert_eq!(r2.created, 0, "duplicates: {r2:?}");
    let (serial, r3) = pass(1);
    assert_eq!(r3.created, 0);
    let queued = rt
        .block_on(
            kube::Api::<molecule::resources::PluginUpdate>::namespaced(client.clone(), ns)
                .list(&Default::default()),
        )
        .expect("list")
        .items
        .len();
    assert_eq!(queued, N);

    println!("\n== drift detection, {N} tracked PluginInstalls on {N} local git repos ==");
    println!(
        "baseline: sequential git ls-remote loop          {:>8.0} ms",
        ms(baseline)
    );
    println!(
        "pass, {} at a time, {N} updates created        {:>8.0} ms  ({:.2}x baseline){}",
        molecule::controllers::plugin::drift::CONCURRENCY,
        ms(first),
        first.as_secs_f64() / baseline.as_secs_f64(),
        if first < Duration::from_secs(10) {
            "  target < 10 s: met"
        } else {
            "  target < 10 s: MISSED"
        }
    );
    println!(
        "second pass (all deduplicated, 0 created)       {:>8.0} ms  ({:.2}x baseline)",
        ms(second),
        second.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "pass, 1 at a time (0 created)                   {:>8.0} ms  ({:.2}x baseline)",
        ms(serial),
        serial.as_secs_f64() / baseline.as_secs_f64()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let docker_ok = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let work = tempfile::tempdir().expect("work");
    let a = work.path().join("install");
    std::fs::create_dir_all(&a).expect("dir");
    if docker_ok {
        install_latency(&a);
    } else {
        println!("docker is not available: skipping the install latency benchmark");
    }
    let b = work.path().join("drift");
    std::fs::create_dir_all(&b).expect("dir");
    drift_pass(&b);
}
