//! Cluster mode (issue 9): `molecule serve --controllers none` plays the external API server and
//! `molecule operator` processes run the controllers against it through a kubeconfig, with the
//! real Docker engine and, for audit rows, a real Postgres (`MOLECULE_TEST_DATABASE_URL`).
//!
//! - the Workspace lifecycle converges through `operator`, audit rows land in Postgres, and every
//!   API call the run made is covered by the declared RBAC (and every declared rule was needed);
//! - two replicas: one leads; `kill -9` of the leader → takeover within 20 s, a workspace applied
//!   meanwhile goes Online, no container is ever created twice;
//! - SIGTERM during a burst: exit 0 within the bound, Lease released, the other replica takes
//!   over at once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    Backend, Cleanup, Server, apply, cleanup, docker, eventually, exists, get, managed_in, ok,
    phase, post_url, text, ws_yaml,
};
use serde_json::{Value, json};

static DOCKER: Mutex<()> = Mutex::new(());

const FAST: &[&str] = &[
    "--agent-heartbeat-seconds",
    "1",
    "--heartbeat-timeout-seconds",
    "8",
    "--reap-interval-seconds",
    "2",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    let t = String::from_utf8_lossy(&buf).to_string();
    let code = t.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, t.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?))
}

/// The value of one sample (`name{labels}`) in Prometheus text, if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A running `molecule operator`.
struct Operator {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(s: &Server, name: &str, agent_port: u16, extra: &[&str], db: Option<&str>) -> Self {
        let port = free_port();
        let log = s.dir.path().join(format!("operator-{name}.log"));
        let f = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_molecule"));
        cmd.arg("operator")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agent-port", &agent_port.to_string()])
            .args(FAST)
            .args(extra)
            .env("KUBECONFIG", s.kubeconfig())
            .env_remove("DATABASE_URL")
            .env_remove("MOLECULE_DATABASE_URL")
            .env_remove("MOLECULE_INSTANCE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f);
        if let Some(url) = db {
            cmd.env("MOLECULE_DATABASE_URL", url);
        }
        let o = Operator {
            child: Some(cmd.spawn().expect("spawn molecule operator")),
            port,
            log,
        };
        assert!(
            eventually(60, || matches!(http_get(port, "/readyz"), Some((200, _)))),
            "operator {name} did not become ready:\n{}",
            o.log()
        );
        o
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn leads(&self) -> bool {
        sample(
            &self.metrics(),
            "molecule_leader{lease=\"molecule-operator\"}",
        ) == Some(1.0)
    }

    fn reconciles(&self) -> f64 {
        let m = self.metrics();
        ["ok", "error"]
            .iter()
            .filter_map(|r| {
                sample(
                    &m,
                    &format!("molecule_reconcile_total{{controller=\"workspace\",result=\"{r}\"}}"),
                )
            })
            .sum()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; the exit code and how long the exit took (None: still running after 30 s).
    fn terminate(&mut self) -> Option<(Option<i32>, Duration)> {
        let c = self.child.as_mut()?;
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some((st.code(), t.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn ns() -> String {
    format!("op{}", molecule::util::random_suffix(8))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn wait_phase(s: &Server, ops: &[&Operator], ns: &str, name: &str, want: &str, secs: u64) {
    let reached = eventually(secs, || phase(s, ns, name) == want);
    assert!(
        reached,
        "{name} did not reach {want} (now {:?}):\n{}\noperator logs:\n{}",
        phase(s, ns, name),
        serde_json::to_string_pretty(&get(s, ns, name)["status"]).unwrap_or_default(),
        ops.iter()
            .map(|o| tail(&o.log()))
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
}

fn container_of(s: &Server, ns: &str, name: &str) -> String {
    let uid = get(s, ns, name)["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .replace('-', "");
    format!("ws-{}", &uid[..12.min(uid.len())])
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Docker's container-create events for one namespace, streamed from the start of a test (the
/// engine keeps only its last few hundred events, too few on a shared engine to ask afterwards).
struct Creations {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Creations {
    fn watch(ns: &str) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("events");
        let f = std::fs::File::create(&out).expect("events file");
        let child = Command::new("docker")
            .args([
                "events",
                "--since",
                &unix_now().saturating_sub(1).to_string(),
                "--filter",
                "type=container",
                "--filter",
                "event=create",
                "--filter",
                &format!("label=molecule.ai/namespace={ns}"),
                "--format",
                "{{.Actor.Attributes.name}}",
            ])
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        Creations {
            child,
            out,
            _dir: dir,
        }
    }

    /// How many times each container was created so far.
    fn counts(&self) -> BTreeMap<String, usize> {
        std::thread::sleep(Duration::from_millis(500)); // let the stream catch up
        let mut counts = BTreeMap::new();
        for name in std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
        {
            *counts.entry(name.to_string()).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Creations {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_leader<'a>(ops: &'a [&'a Operator]) -> usize {
    let mut leader = None;
    assert!(
        eventually(30, || {
            let leading: Vec<usize> = (0..ops.len()).filter(|i| ops[*i].leads()).collect();
            leader = leading.first().copied();
            leading.len() == 1
        }),
        "no single leader:\n{}",
        ops.iter()
            .map(|o| tail(&o.log()))
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    leader.expect("leader")
}

fn a2a(url: &str, text: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "message/send", "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": text}], "messageId": "m1"}}});
    let (code, resp) = post_url(url, &body.to_string(), None).expect("a2a call");
    assert_eq!(code, 200, "{resp}");
    serde_json::from_str(&resp).expect("json-rpc response")
}

fn token_of(container: &str) -> String {
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path().join("t");
    let (copied, _) = docker(&[
        "cp",
        &format!("{container}:/configs/.auth_token"),
        &dest.to_string_lossy(),
    ]);
    assert!(copied, "docker cp of the token failed");
    std::fs::read_to_string(dest)
        .expect("token")
        .trim()
        .to_string()
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default()
}

/// The (group, resource[/subresource], verb) calls one client made, from the API server's
/// per-client request counter.
fn calls_of(s: &Server, client: &str) -> BTreeSet<(String, String, String)> {
    let (_, metrics) = s.http("GET", "/metrics", None, b"");
    let prefix = "molecule_apiserver_resource_requests_total{";
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let Some((labels, _)) = rest.split_once('}') else {
            continue;
        };
        let mut l = BTreeMap::new();
        for kv in labels.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                l.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        if l.get("client").map(String::as_str) != Some(client) {
            continue;
        }
        let sub = l.get("subresource").cloned().unwrap_or_default();
        let resource = match sub.as_str() {
            "" => l["resource"].clone(),
            sub => format!("{}/{sub}", l["resource"]),
        };
        out.insert((l["group"].clone(), resource, l["verb"].clone()));
    }
    out
}

#[test]
fn operator_lifecycle_converges_with_audit_in_postgres_and_declared_rbac_covers_every_call() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let Some(Backend::Postgres(pg)) = rt.block_on(Backend::get(true)) else {
        eprintln!("MOLECULE_TEST_DATABASE_URL is not set: skipping (CI sets it)");
        return;
    };
    let ns = ns();
    // Dropped last: removes what a failing test left behind, after the operators are gone.
    let _cleanup = Cleanup(ns.clone());
    let s = Server::start(Backend::Sqlite);
    let op = Operator::start(&s, "a", free_port(), &[], Some(&pg));
    let ops = [&op];
    assert!(eventually(30, || op.leads()), "a lone replica leads");

    // Online, A2A, through the operator.
    apply(&s, &ns, &ws_yaml("alpha", "  role: researcher\n"));
    wait_phase(&s, &ops, &ns, "alpha", "Online", 120);
    let url = get(&s, &ns, "alpha")["status"]["url"]
        .as_str()
        .expect("url")
        .to_string();
    assert_eq!(
        a2a(&url, "hello operator")["result"]["parts"][0]["text"],
        "hello operator"
    );
    let container = container_of(&s, &ns, "alpha");
    let volume = format!("{container}-configs");

    // Pause keeps the volume; resume brings the workspace back.
    let patch = |paused: bool| {
        ok(
            &s,
            &[
                "patch",
                "ws",
                "alpha",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                &format!(r#"{{"spec":{{"paused":{paused}}}}}"#),
            ],
        )
    };
    patch(true);
    wait_phase(&s, &ops, &ns, "alpha", "Paused", 60);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &container]).1,
        "false"
    );
    assert!(exists("volume", &volume));
    patch(false);
    wait_phase(&s, &ops, &ns, "alpha", "Online", 90);

    // Restart annotation: a new container and token; the old token is refused by the
    // operator's own registry endpoints.
    let before = get(&s, &ns, "alpha");
    let old_id = before["status"]["containerId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let old_token = token_of(&container);
    ok(
        &s,
        &[
            "annotate",
            "ws",
            "alpha",
            "-n",
            &ns,
            "--overwrite",
            "molecule.ai/restartedAt=2026-11-23T10:00:00Z",
        ],
    );
    assert!(
        eventually(90, || {
            let w = get(&s, &ns, "alpha");
            w["status"]["containerId"]
                .as_str()
                .is_some_and(|c| c != old_id)
                && w["status"]["phase"] == "Online"
        }),
        "restart did not converge:\n{}",
        tail(&op.log())
    );
    let uid = get(&s, &ns, "alpha")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let (code, _) = post_url(
        &format!("http://127.0.0.1:{}/registry/heartbeat", op.port),
        &json!({"workspace_id": uid}).to_string(),
        Some(&old_token),
    )
    .expect("heartbeat");
    assert_eq!(code, 401, "the old token is refused after a restart");

    // docker kill: Offline, then Online again.
    assert!(docker(&["kill", &container]).0);
    assert!(
        eventually(30, || phase(&s, &ns, "alpha") == "Offline"),
        "not Offline after docker kill:\n{}",
        tail(&op.log())
    );
    wait_phase(&s, &ops, &ns, "alpha", "Online", 90);

    // An external agent registers through the operator; an unknown runtime fails precisely.
    apply(
        &s,
        &ns,
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: remote\nspec:\n  runtime: external\n  url: https://agent.example.com/a2a\n",
    );
    wait_phase(&s, &ops, &ns, "remote", "Provisioning", 60);
    let token = String::from_utf8(base64_decode(&ok(
        &s,
        &[
            "get",
            "secret",
            "remote-agent-token",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.token}",
        ],
    )))
    .expect("token");
    let remote_uid = get(&s, &ns, "remote")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let (code, body) = post_url(
        &format!("http://127.0.0.1:{}/registry/register", op.port),
        &json!({"id": remote_uid, "url": "https://agent.example.com/a2a"}).to_string(),
        Some(&token),
    )
    .expect("register");
    assert_eq!(code, 200, "{body}");
    wait_phase(&s, &ops, &ns, "remote", "Online", 30);
    apply(
        &s,
        &ns,
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: odd\nspec:\n  runtime: nosuch\n",
    );
    // Pending until the provision timeout (ADR 0048).
    wait_phase(&s, &ops, &ns, "odd", "Pending", 60);

    // Delete: container, volume and record gone; the audit row is in Postgres.
    ok(&s, &["delete", "ws", "--all", "-n", &ns, "--timeout=60s"]);
    assert!(
        !exists("container", &container) && !exists("volume", &volume),
        "leftovers after delete"
    );
    let rows = rt.block_on(async {
        let store = molecule::store::open(Some(&pg), std::path::Path::new("unused.db"))
            .await
            .expect("open postgres");
        assert_eq!(store.backend(), "postgres");
        store
            .audit_rows(Some("workspace.deleted"))
            .await
            .expect("audit rows")
    });
    let mine: Vec<&str> = rows
        .iter()
        .filter(|r| r.namespace == ns)
        .map(|r| r.name.as_str())
        .collect();
    for name in ["alpha", "remote", "odd"] {
        assert!(mine.contains(&name), "no audit row for {name}: {rows:?}");
    }
    // Every call the operator made is declared, and every declared rule of the exercised
    // controllers (host, workspace, registry endpoints, reaper) was needed.
    let calls = calls_of(&s, "molecule-operator");
    assert!(!calls.is_empty(), "no calls recorded for molecule-operator");
    let undeclared: Vec<_> = calls
        .iter()
        .filter(|(g, r, v)| !molecule::controllers::rbac::allows(g, r, v))
        .collect();
    assert!(
        undeclared.is_empty(),
        "the operator made calls deploy/10-rbac.yaml does not grant (declare them in controllers::rbac::RULES): {undeclared:?}"
    );
    let unused: Vec<_> =
        molecule::controllers::rbac::grants(Some(&["host", "workspace", "registry", "reaper"]))
            .into_iter()
            .filter(|(_, g, r, v)| !calls.contains(&(g.clone(), r.clone(), v.clone())))
            .collect();
    assert!(
        unused.is_empty(),
        "declared permissions this run never needed (least privilege): {unused:?}\ncalls: {calls:?}"
    );
    cleanup(&ns);
}

#[test]
fn two_replicas_one_leads_kill9_fails_over_within_20s_and_no_container_is_created_twice() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let ns = ns();
    // Dropped last: removes what a failing test left behind, after the operators are gone.
    let _cleanup = Cleanup(ns.clone());
    let s = Server::start(Backend::Sqlite);
    let agent_port = free_port();
    let mut a = Operator::start(&s, "a", agent_port, &[], None);
    let mut b = Operator::start(&s, "b", agent_port, &[], None);
    let creations = Creations::watch(&ns);
    let first = wait_for_leader(&[&a, &b]);
    let (leader, follower) = if first == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    apply(&s, &ns, &(ws_yaml("w1", "") + "---\n" + &ws_yaml("w2", "")));
    wait_phase(&s, &[leader, follower], &ns, "w1", "Online", 120);
    wait_phase(&s, &[leader, follower], &ns, "w2", "Online", 120);
    assert!(leader.reconciles() > 0.0, "the leader reconciles");
    let fm = follower.metrics();
    assert_eq!(
        sample(&fm, "molecule_leader{lease=\"molecule-operator\"}"),
        Some(0.0),
        "the follower's metrics say it does not lead:\n{fm}"
    );
    assert_eq!(follower.reconciles(), 0.0, "the follower never reconciles");
    assert!(
        !fm.contains("call=\"ensure_started\""),
        "the follower never touches the backend:\n{fm}"
    );
    let ids: Vec<String> = ["w1", "w2"]
        .iter()
        .map(|n| {
            get(&s, &ns, n)["status"]["containerId"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();

    // kill -9 the leader and apply a workspace while nobody leads.
    let killed = Instant::now();
    leader.kill9();
    apply(&s, &ns, &ws_yaml("w3", ""));
    assert!(
        eventually(25, || follower.leads()),
        "the follower did not take over:\n{}",
        tail(&follower.log())
    );
    let takeover = killed.elapsed();
    assert!(
        takeover <= Duration::from_secs(20),
        "takeover took {takeover:?}"
    );
    eprintln!("takeover after kill -9: {takeover:?}");
    wait_phase(&s, &[follower], &ns, "w3", "Online", 120);
    assert!(follower.reconciles() > 0.0);

    // The earlier workspaces keep heartbeating through the surviving replica (one shared agent
    // address): past the heartbeat timeout they are still Online in their first container.
    std::thread::sleep(Duration::from_secs(10));
    for (n, id) in ["w1", "w2"].iter().zip(&ids) {
        let w = get(&s, &ns, n);
        assert_eq!(w["status"]["phase"], "Online", "{n}: {}", w["status"]);
        assert_eq!(
            w["status"]["containerId"].as_str(),
            Some(id.as_str()),
            "{n} got a new container; the new leader's log:\n{}",
            tail(&follower.log())
        );
    }
    let created = creations.counts();
    assert_eq!(created.len(), 3, "{created:?}");
    assert!(
        created.values().all(|n| *n == 1),
        "a container was created twice: {created:?}"
    );
    ok(&s, &["delete", "ws", "--all", "-n", &ns, "--timeout=60s"]);
    assert!(eventually(30, || managed_in(&ns, "container").is_empty()));
    cleanup(&ns);
}

#[test]
fn sigterm_during_a_burst_exits_zero_releases_the_lease_and_the_next_replica_takes_over_at_once() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let ns = ns();
    // Dropped last: removes what a failing test left behind, after the operators are gone.
    let _cleanup = Cleanup(ns.clone());
    let s = Server::start(Backend::Sqlite);
    let agent_port = free_port();
    let grace = ["--shutdown-grace-seconds", "10"];
    let mut a = Operator::start(&s, "a", agent_port, &grace, None);
    let mut b = Operator::start(&s, "b", agent_port, &grace, None);
    let creations = Creations::watch(&ns);
    let first = wait_for_leader(&[&a, &b]);
    let (leader, follower) = if first == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let names: Vec<String> = (0..6).map(|i| format!("burst{i}")).collect();
    let yaml: String = names.iter().map(|n| ws_yaml(n, "") + "---\n").collect();
    apply(&s, &ns, &yaml);
    assert!(
        eventually(30, || leader.metrics().contains("call=\"ensure_started\"")),
        "the burst never reached the backend"
    );

    let (code, took) = leader.terminate().expect("the leader exits after SIGTERM");
    assert_eq!(code, Some(0), "exit code:\n{}", tail(&leader.log()));
    assert!(
        took <= Duration::from_secs(15),
        "SIGTERM exit took {took:?} (grace 10 s)"
    );
    assert!(
        leader.log().contains("released the lease"),
        "{}",
        tail(&leader.log())
    );
    let exited = Instant::now();
    assert!(
        eventually(10, || follower.leads()),
        "the follower did not take over:\n{}",
        tail(&follower.log())
    );
    let pickup = exited.elapsed();
    eprintln!("SIGTERM exit {took:?}; takeover {pickup:?} after the exit");
    assert!(
        pickup < Duration::from_secs(5),
        "the next replica waited {pickup:?}: the lease was not released"
    );
    for n in &names {
        wait_phase(&s, &[follower], &ns, n, "Online", 120);
    }
    let created = creations.counts();
    assert_eq!(created.len(), names.len(), "{created:?}");
    assert!(
        created.values().all(|n| *n == 1),
        "a container was created twice: {created:?}"
    );
    ok(&s, &["delete", "ws", "--all", "-n", &ns, "--timeout=60s"]);
    assert!(eventually(30, || managed_in(&ns, "container").is_empty()));
    cleanup(&ns);
}

#[test]
fn operator_fails_fast_with_an_install_hint_when_the_crds_are_not_served() {
    // An API server that answers but serves no molecule.ai group: a plain HTTP listener
    // speaking just enough of the discovery protocol (404 for the group).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (code, body) = if path.starts_with("/api/v1/namespaces/default") {
                (
                    200,
                    json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default","uid":"0123456789ab-cdef-0123-4567-89abcdef0123"}}),
                )
            } else {
                (
                    404,
                    json!({"apiVersion":"v1","kind":"Status","status":"Failure","reason":"NotFound","code":404,"message":"the server could not find the requested resource"}),
                )
            };
            let body = body.to_string();
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .expect("kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["operator", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("DATABASE_URL")
        .env_remove("MOLECULE_DATABASE_URL")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run operator");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("install the CRDs first") && t.contains("molecule.ai/v1alpha1"),
        "{t}"
    );
}
