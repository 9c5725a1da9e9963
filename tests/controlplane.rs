//! Workspaces on the EC2 control plane (issue 8; ADR 0035), against the control-plane
//! simulator in `tests/cpsim` (real HTTP on 127.0.0.1, real in-process echo agents that
//! register with the real `molecule serve`), and the same lifecycle scenario on the real Docker
//! engine to keep the parity table in `docs/backends.md` honest.

mod common;
mod cpsim;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Backend, Server, apply, docker, eventually, get, ok, phase, tail};
use cpsim::{Fault, Sim, SimConfig};
use serde_json::{Value, json};

const ORG: &str = "org-test";

fn ns() -> String {
    format!("c{}", molecule::util::random_suffix(8))
}

fn sim() -> Sim {
    Sim::start(SimConfig::default())
}

/// `serve` with its controllers, fast heartbeats, and the simulator as its control plane
/// (credentials from the Secret `cp-creds` in `ns`).
fn start(sim: &Sim, ns: &str, extra: &[&str]) -> Server {
    let url = sim.url();
    let port = sim.agent_port().to_string();
    let secret = format!("{ns}/cp-creds");
    let mut args = vec![
        "--controllers",
        "all",
        "--agent-heartbeat-seconds",
        "1",
        "--heartbeat-timeout-seconds",
        "8",
        "--reap-interval-seconds",
        "2",
        "--control-plane-url",
        &url,
        "--control-plane-org",
        ORG,
        "--control-plane-secret",
        &secret,
        "--control-plane-agent-port",
        &port,
    ];
    args.extend_from_slice(extra);
    let s = Server::start_with(Backend::Sqlite, &args);
    let mut create = vec![
        "create".to_string(),
        "secret".into(),
        "generic".into(),
        "cp-creds".into(),
        "-n".into(),
        ns.into(),
        format!("--from-literal=sharedSecret={}", sim.shared_secret()),
    ];
    if let Some(admin) = sim.admin_token() {
        create.push(format!("--from-literal=adminToken={admin}"));
    }
    let refs: Vec<&str> = create.iter().map(String::as_str).collect();
    ok(&s, &refs);
    s
}

fn status_str(s: &Server, ns: &str, name: &str, field: &str) -> String {
    get(s, ns, name)["status"][field]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn uid(s: &Server, ns: &str, name: &str) -> String {
    get(s, ns, name)["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn wait_for(s: &Server, ns: &str, name: &str, secs: u64, what: &str, f: impl Fn(&Value) -> bool) {
    let ok = eventually(secs, || f(&get(s, ns, name)));
    assert!(
        ok,
        "{name}: {what} did not happen within {secs}s; status:\n{}\nserver log:\n{}",
        serde_json::to_string_pretty(&get(s, ns, name)["status"]).unwrap_or_default(),
        tail(s)
    );
}

fn wait_phase(s: &Server, ns: &str, name: &str, want: &str, secs: u64) {
    wait_for(s, ns, name, secs, &format!("phase {want}"), |w| {
        w["status"]["phase"] == want
    });
}

fn ws_yaml(name: &str, backend: &str) -> String {
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  runtime: echo\n  role: tester\n  backend: {backend}\n"
    )
}

fn patch(s: &Server, ns: &str, name: &str, json: &str) {
    ok(
        s,
        &["patch", "ws", name, "-n", ns, "--type=merge", "-p", json],
    );
}

fn patch_status(s: &Server, ns: &str, name: &str, json: &str) {
    ok(
        s,
        &[
            "patch",
            "ws",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            json,
        ],
    );
}

fn restart(s: &Server, ns: &str, name: &str, stamp: &str) {
    ok(
        s,
        &[
            "annotate",
            "ws",
            name,
            "-n",
            ns,
            "--overwrite",
            &format!("molecule.ai/restartedAt={stamp}"),
        ],
    );
}

/// An HTTP/1.0 request to the server: (status, headers lower-cased, body).
fn request(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.write_all(req.as_bytes()).expect("write");
    let mut buf = vec![];
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

fn a2a_body(text: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "message/send", "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": text}], "messageId": "m1"}}}).to_string()
}

/// A2A through the shim's proxy, with the admin token.
fn a2a(s: &Server, uid: &str, text: &str) -> (u16, String, String) {
    request(
        s,
        "POST",
        &format!("/workspaces/{uid}/a2a"),
        Some(&s.token()),
        &a2a_body(text),
    )
}

fn live_of(sim: &Sim, uid: &str) -> Vec<cpsim::InstanceInfo> {
    sim.live()
        .into_iter()
        .filter(|i| i.workspace_id == uid)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The shared lifecycle scenario: apply → Online → restart → pause → resume → delete → nothing.
// ---------------------------------------------------------------------------------------------

/// What the scenario needs to know about a backend.
trait Runtime {
    fn backend(&self) -> &'static str;
    /// The runtime id on record (containerId or instanceId).
    fn id_field(&self) -> &'static str;
    /// Whether the workspace's runtime unit runs now.
    fn running(&self, s: &Server, ns: &str, name: &str) -> bool;
    /// Nothing of the namespace is left on the backend.
    fn nothing_left(&self, ns: &str, uid: &str) -> bool;
    /// The runtime unit dies (outside the operator's control).
    fn kill(&self, s: &Server, ns: &str, name: &str);
}

struct DockerRuntime;

impl Runtime for DockerRuntime {
    fn backend(&self) -> &'static str {
        "docker"
    }
    fn id_field(&self) -> &'static str {
        "containerId"
    }
    fn running(&self, s: &Server, ns: &str, name: &str) -> bool {
        let id = status_str(s, ns, name, "containerId");
        !id.is_empty() && docker(&["inspect", "-f", "{{.State.Running}}", &id]).1 == "true"
    }
    fn nothing_left(&self, ns: &str, _uid: &str) -> bool {
        let filter = format!("label=molecule.ai/namespace={ns}");
        docker(&["ps", "-aq", "--filter", &filter]).1.is_empty()
            && docker(&["volume", "ls", "-q", "--filter", &filter])
                .1
                .is_empty()
    }
    fn kill(&self, s: &Server, ns: &str, name: &str) {
        let id = status_str(s, ns, name, "containerId");
        assert!(docker(&["stop", "-t", "1", &id]).0, "docker stop {id}");
    }
}

struct ControlPlaneRuntime<'a>(&'a Sim);

impl Runtime for ControlPlaneRuntime<'_> {
    fn backend(&self) -> &'static str {
        "controlPlane"
    }
    fn id_field(&self) -> &'static str {
        "instanceId"
    }
    fn running(&self, s: &Server, ns: &str, name: &str) -> bool {
        let id = status_str(s, ns, name, "instanceId");
        self.0
            .live()
            .iter()
            .any(|i| i.instance_id == id && i.state == "running")
    }
    fn nothing_left(&self, _ns: &str, uid: &str) -> bool {
        live_of(self.0, uid).is_empty()
    }
    fn kill(&self, s: &Server, ns: &str, name: &str) {
        assert!(self.0.kill(&status_str(s, ns, name, "instanceId")));
    }
}

fn lifecycle(s: &Server, ns: &str, rt: &dyn Runtime) {
    let name = "alpha";
    apply(s, ns, &ws_yaml(name, rt.backend()));
    wait_phase(s, ns, name, "Online", 120);
    assert!(rt.running(s, ns, name), "{} runs", rt.id_field());
    let uid = uid(s, ns, name);

    // A2A through the platform's proxy reaches the agent.
    let (code, _, body) = a2a(s, &uid, "hello parity");
    assert_eq!(code, 200, "{body}\n{}", tail(s));
    let reply: Value = serde_json::from_str(&body).expect("json-rpc");
    assert_eq!(
        reply["result"]["parts"][0]["text"], "hello parity",
        "{reply}"
    );
    // The console shows what the runtime printed.
    let (code, _, console) = request(
        s,
        "GET",
        &format!("/workspaces/{uid}/console"),
        Some(&s.token()),
        "",
    );
    assert_eq!(code, 200, "{console}");
    assert!(!console.trim().is_empty());

    // The agent dies: an A2A call gets 503 {restarting: true} and the workspace comes back on a
    // new runtime unit (ADR 0036).
    let dead = status_str(s, ns, name, rt.id_field());
    rt.kill(s, ns, name);
    let (code, head, body) = a2a(s, &uid, "anyone?");
    assert_eq!(code, 503, "{body}\n{}", tail(s));
    assert!(head.contains("retry-after: 15"), "{head}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["restarting"],
        true
    );
    wait_for(s, ns, name, 120, "recovery from a dead agent", |w| {
        w["status"][rt.id_field()]
            .as_str()
            .is_some_and(|i| !i.is_empty() && i != dead)
            && w["status"]["phase"] == "Online"
    });

    // Restart: a new runtime unit, Online again.
    let first = status_str(s, ns, name, rt.id_field());
    restart(s, ns, name, "2026-01-01T00:00:00Z");
    wait_for(s, ns, name, 120, "restart", |w| {
        w["status"][rt.id_field()]
            .as_str()
            .is_some_and(|i| !i.is_empty() && i != first)
            && w["status"]["phase"] == "Online"
    });
    assert!(rt.running(s, ns, name));

    // Pause: nothing runs.
    patch(s, ns, name, r#"{"spec":{"paused":true}}"#);
    wait_phase(s, ns, name, "Paused", 60);
    assert!(
        eventually(30, || !rt.running(s, ns, name)),
        "paused but running"
    );

    // Resume: Online again.
    patch(s, ns, name, r#"{"spec":{"paused":false}}"#);
    wait_phase(s, ns, name, "Online", 120);
    assert!(rt.running(s, ns, name));

    // Delete: the record goes, and nothing is left behind.
    ok(
        s,
        &[
            "delete",
            "ws",
            name,
            "-n",
            ns,
            "--wait=true",
            "--timeout=60s",
        ],
    );
    assert!(get(s, ns, name).is_null());
    assert!(
        eventually(30, || rt.nothing_left(ns, &uid)),
        "something was left on {}\n{}",
        rt.backend(),
        tail(s)
    );
}

#[test]
fn lifecycle_parity_on_docker() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    lifecycle(&s, &ns, &DockerRuntime);
    // The control plane was never asked to provision anything.
    assert!(sim.instances().is_empty());
}

#[test]
fn lifecycle_parity_on_control_plane() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    lifecycle(&s, &ns, &ControlPlaneRuntime(&sim));
    // Nothing of this workspace ran on Docker.
    let filter = format!("label=molecule.ai/namespace={ns}");
    assert!(docker(&["ps", "-aq", "--filter", &filter]).1.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Instance identity and credentials (ADR 0035).
// ---------------------------------------------------------------------------------------------

#[test]
fn instance_ids_stale_empty_and_404_on_stop() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    apply(&s, &ns, &ws_yaml("beta", "controlPlane"));
    wait_phase(&s, &ns, "beta", "Online", 60);
    let uid = uid(&s, &ns, "beta");
    let first = status_str(&s, &ns, "beta", "instanceId");
    assert!(first.starts_with("i-"), "{first}");
    assert_eq!(live_of(&sim, &uid).len(), 1);

    // An empty id: no instance known, so "not running" — the workspace is re-provisioned, and
    // the instance nobody accounts for any more is reaped.
    patch_status(&s, &ns, "beta", r#"{"status":{"instanceId":""}}"#);
    restart(&s, &ns, "beta", "2026-01-01T00:00:01Z"); // wake the controller now
    wait_for(
        &s,
        &ns,
        "beta",
        60,
        "a new instance after an empty id",
        |w| {
            w["status"]["instanceId"]
                .as_str()
                .is_some_and(|i| i.starts_with("i-") && i != first)
                && w["status"]["phase"] == "Online"
        },
    );
    let second = status_str(&s, &ns, "beta", "instanceId");
    assert!(
        eventually(30, || live_of(&sim, &uid)
            .iter()
            .map(|i| i.instance_id.clone())
            .collect::<Vec<_>>()
            == vec![second.clone()]),
        "the unaccounted instance was not reaped: {:?}",
        live_of(&sim, &uid)
    );

    // A stale id the control plane does not know (404 on status): not running, re-provisioned.
    // The workspace id itself is never sent as an instance id.
    for stale in ["i-00000000000000001", uid.as_str()] {
        let before = status_str(&s, &ns, "beta", "instanceId");
        patch_status(
            &s,
            &ns,
            "beta",
            &json!({"status": {"instanceId": stale}}).to_string(),
        );
        restart(
            &s,
            &ns,
            "beta",
            &format!("2026-01-01T00:00:0{}Z", stale.len() % 10),
        );
        wait_for(
            &s,
            &ns,
            "beta",
            60,
            "a new instance after a stale id",
            |w| {
                w["status"]["instanceId"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("i-") && i != before && i != stale)
                    && w["status"]["phase"] == "Online"
            },
        );
    }
    let uid_q = format!("instance_id={uid}");
    assert!(
        !sim.requests().iter().any(|r| r.path.contains(&uid_q)),
        "the workspace id was sent as an instance id"
    );
    let current = status_str(&s, &ns, "beta", "instanceId");
    assert!(eventually(30, || live_of(&sim, &uid).len() == 1
        && live_of(&sim, &uid)[0].instance_id == current));

    // A 404 on stop means the instance is already gone: the delete completes.
    sim.add_fault(Fault {
        route: "stop".into(),
        status: Some(404),
        times: Some(1),
        ..Default::default()
    });
    ok(
        &s,
        &[
            "delete",
            "ws",
            "beta",
            "-n",
            &ns,
            "--wait=true",
            "--timeout=30s",
        ],
    );
    assert!(get(&s, &ns, "beta").is_null());
    // (The simulator's 404 was a lie: the instance still ran. With no record left, the reaper
    // terminates it.)
    assert!(
        eventually(30, || live_of(&sim, &uid).is_empty()),
        "{:?}",
        live_of(&sim, &uid)
    );
}

#[test]
fn credentials_split_by_route_class() {
    let sim = sim();
    assert_ne!(Some(sim.shared_secret()), sim.admin_token());
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    // The example file (its Secret matches the simulator's default credentials).
    let example = format!("{}/examples/controlplane.yaml", env!("CARGO_MANIFEST_DIR"));
    ok(&s, &["apply", "-n", &ns, "-f", &example]);
    wait_phase(&s, &ns, "ec2-1", "Online", 60);
    let ec2 = uid(&s, &ns, "ec2-1");
    let (code, _, console) = request(
        &s,
        "GET",
        &format!("/workspaces/{ec2}/console"),
        Some(&s.token()),
        "",
    );
    assert_eq!(code, 200, "{console}");
    assert!(console.contains("cloud-init"), "{console}");
    assert!(
        eventually(20, || sim.requests().iter().any(|r| r.route == "list")),
        "the reaper never listed"
    );
    // A host mount cannot follow a workspace to EC2: a precise condition, no provision call.
    apply(
        &s,
        &ns,
        &format!(
            "{}  workspaceDir: /tmp\n",
            ws_yaml("mounted", "controlPlane")
        ),
    );
    wait_for(&s, &ns, "mounted", 30, "InvalidConfig", |w| {
        w["status"]["phase"] == "Failed"
            && w["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("workspaceDir"))
    });
    let mounted = uid(&s, &ns, "mounted");
    assert!(!sim.instances().iter().any(|i| i.workspace_id == mounted));
    ok(
        &s,
        &[
            "delete",
            "ws",
            "--all",
            "-n",
            &ns,
            "--wait=true",
            "--timeout=30s",
        ],
    );

    let shared = format!("Bearer {}", sim.shared_secret());
    let admin = format!("Bearer {}", sim.admin_token().unwrap_or_default());
    let seen = sim.requests();
    for class in ["provision", "status", "stop", "console", "list"] {
        let of: Vec<_> = seen.iter().filter(|r| r.route == class).collect();
        assert!(!of.is_empty(), "no {class} call seen");
        let want = if matches!(class, "console" | "list") {
            &admin
        } else {
            &shared
        };
        for r in of {
            assert_eq!(
                r.authorization.as_deref(),
                Some(want.as_str()),
                "{class}: {}",
                r.path
            );
        }
    }
    // The console route needs the admin token; a workspace token is refused.
    let (code, _, _) = request(
        &s,
        "GET",
        &format!("/workspaces/{ec2}/console"),
        Some("not-the-admin"),
        "",
    );
    assert!(code == 401 || code == 404, "{code}");
}

/// Without an admin token the admin routes carry the shared secret, straight from the
/// client (no server needed).
#[test]
fn admin_routes_fall_back_to_the_shared_secret() {
    use molecule::backends::WorkspaceBackend;
    use molecule::backends::controlplane::{
        ControlPlaneBackend, ControlPlaneConfig, CredentialSource, Credentials,
    };
    let sim = Sim::start(SimConfig {
        admin_token: None,
        ..Default::default()
    });
    let cfg = |admin: Option<&str>| ControlPlaneConfig {
        base_url: sim.url(),
        org_id: ORG.into(),
        credentials: CredentialSource::Static(Credentials {
            shared_secret: sim.shared_secret().into(),
            admin_token: admin.map(String::from),
            tenant_token: None,
        }),
        agent_port: sim.agent_port(),
        timeouts: Default::default(),
        ca_pem: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let cp = ControlPlaneBackend::new(cfg(None), "inst1", None).expect("backend");
        assert_eq!(cp.list_managed().await.expect("list").len(), 0);
        // A wrong admin token is refused by the control plane: the error carries the status.
        let cp = ControlPlaneBackend::new(cfg(Some("wrong")), "inst1", None).expect("backend");
        let e = cp.list_managed().await.expect_err("401");
        assert!(
            matches!(
                e,
                molecule::backends::BackendError::Upstream { status: 401, .. }
            ),
            "{e}"
        );
    });
    let seen = sim.requests();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {}", sim.shared_secret()).as_str())
    );
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer wrong"));
}

// ---------------------------------------------------------------------------------------------
// Faults (ADR 0035): error statuses, timeouts, malformed answers, crashes, dying instances.
// ---------------------------------------------------------------------------------------------

#[test]
fn provision_500_is_a_canned_failed_condition_and_the_body_stays_private() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    sim.add_fault(Fault {
        route: "provision".into(),
        status: Some(500),
        body: Some("RAW-UPSTREAM-BODY-7731 stack trace follows".into()),
        echo_auth: true,
        ..Default::default()
    });
    apply(&s, &ns, &ws_yaml("delta", "controlPlane"));
    wait_for(&s, &ns, "delta", 30, "a Failed condition", |w| {
        w["status"]["phase"] == "Failed"
            && w["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["reason"] == "ProvisionFailed")
            })
    });
    let st = get(&s, &ns, "delta")["status"].clone();
    assert_eq!(
        st["message"],
        "the control plane could not provision an instance (HTTP 500); retrying"
    );
    // Nothing user-facing carries the body or the credentials.
    let yaml = ok(&s, &["get", "ws", "delta", "-n", &ns, "-o", "yaml"]);
    let events = ok(&s, &["get", "events", "-n", &ns, "-o", "yaml"]);
    let describe = ok(&s, &["describe", "ws", "delta", "-n", &ns]);
    for text in [&yaml, &events, &describe] {
        assert!(
            !text.contains("RAW-UPSTREAM-BODY"),
            "the raw body leaked:\n{text}"
        );
        assert!(
            !text.contains(sim.shared_secret()),
            "a credential leaked:\n{text}"
        );
    }
    assert!(describe.contains("ProvisionFailed"), "{describe}");
    // The operator log has the status and the excerpt, but the echoed credential is redacted.
    assert!(
        eventually(10, || s.log().contains("RAW-UPSTREAM-BODY-7731")),
        "the log lacks the excerpt"
    );
    assert!(
        !s.log().contains(sim.shared_secret()),
        "the log holds the shared secret"
    );
    // Once the control plane recovers, the retry converges.
    sim.clear_faults();
    wait_phase(&s, &ns, "delta", "Online", 60);
    assert_eq!(live_of(&sim, &uid(&s, &ns, "delta")).len(), 1);
}

#[test]
fn timeouts_are_bounded_and_malformed_answers_leak_nothing() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &["--control-plane-timeout-seconds", "1"]);
    // The control plane does the work but answers after 8 s: the client gives up after 1 s.
    sim.add_fault(Fault {
        route: "provision".into(),
        delay_ms: Some(8000),
        times: Some(1),
        ..Default::default()
    });
    let t = Instant::now();
    apply(&s, &ns, &ws_yaml("eps", "controlPlane"));
    // The failure is reported (as an Event: the condition lasts only until the retry).
    let reported = eventually(30, || {
        ok(&s, &["get", "events", "-n", &ns, "-o", "yaml"]).contains("ControlPlaneUnavailable")
    });
    assert!(
        reported,
        "no ControlPlaneUnavailable Event
{}",
        tail(&s)
    );
    assert!(
        t.elapsed() < Duration::from_secs(7),
        "the provision call was not bounded by the 1 s timeout ({:?})",
        t.elapsed()
    );
    wait_phase(&s, &ns, "eps", "Online", 60);
    let uid_eps = uid(&s, &ns, "eps");
    let recorded = status_str(&s, &ns, "eps", "instanceId");
    // The instance of the timed-out call was created all the same; the reaper takes it.
    assert!(
        sim.instances()
            .iter()
            .filter(|i| i.workspace_id == uid_eps)
            .count()
            >= 2
    );
    assert!(
        eventually(30, || live_of(&sim, &uid_eps)
            .iter()
            .map(|i| i.instance_id.clone())
            .collect::<Vec<_>>()
            == vec![recorded.clone()]),
        "{:?}",
        live_of(&sim, &uid_eps)
    );

    // Malformed JSON: the instance exists but its id is unreadable; retried, and reaped.
    sim.add_fault(Fault {
        route: "provision".into(),
        malformed: true,
        times: Some(1),
        ..Default::default()
    });
    apply(&s, &ns, &ws_yaml("zeta", "controlPlane"));
    wait_phase(&s, &ns, "zeta", "Online", 60);
    let uid_z = uid(&s, &ns, "zeta");
    let recorded = status_str(&s, &ns, "zeta", "instanceId");
    assert!(
        eventually(30, || live_of(&sim, &uid_z)
            .iter()
            .map(|i| i.instance_id.clone())
            .collect::<Vec<_>>()
            == vec![recorded.clone()]),
        "{:?}",
        live_of(&sim, &uid_z)
    );
    // A slow status answer is bounded too: the workspace stays as it was, nothing is torn down.
    sim.add_fault(Fault {
        route: "status".into(),
        delay_ms: Some(5000),
        times: Some(2),
        ..Default::default()
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(phase(&s, &ns, "zeta"), "Online");
    assert_eq!(status_str(&s, &ns, "zeta", "instanceId"), recorded);
}

#[test]
fn crash_between_provision_and_status_write_leaks_nothing() {
    let sim = sim();
    let ns = ns();
    let mut s = start(&sim, &ns, &["--control-plane-timeout-seconds", "60"]);
    // The provision is done, its answer takes 30 s; the operator dies meanwhile.
    sim.add_fault(Fault {
        route: "provision".into(),
        delay_ms: Some(30_000),
        times: Some(1),
        ..Default::default()
    });
    apply(&s, &ns, &ws_yaml("eta", "controlPlane"));
    let uid = uid(&s, &ns, "eta");
    assert!(
        eventually(30, || live_of(&sim, &uid).len() == 1),
        "no provision call"
    );
    let lost = live_of(&sim, &uid)[0].instance_id.clone();
    s.kill9();
    s.spawn();
    wait_phase(&s, &ns, "eta", "Online", 60);
    let recorded = status_str(&s, &ns, "eta", "instanceId");
    assert_ne!(recorded, lost);
    assert!(
        eventually(30, || live_of(&sim, &uid)
            .iter()
            .map(|i| i.instance_id.clone())
            .collect::<Vec<_>>()
            == vec![recorded.clone()]),
        "the lost instance leaked: {:?}",
        live_of(&sim, &uid)
    );
}

#[test]
fn an_instance_dying_mid_run_is_restarted() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    apply(&s, &ns, &ws_yaml("theta", "controlPlane"));
    wait_phase(&s, &ns, "theta", "Online", 60);
    let first = status_str(&s, &ns, "theta", "instanceId");
    assert!(sim.kill(&first));
    wait_for(&s, &ns, "theta", 60, "a restart on a new instance", |w| {
        w["status"]["instanceId"]
            .as_str()
            .is_some_and(|i| i.starts_with("i-") && i != first)
            && w["status"]["phase"] == "Online"
    });
    let describe = ok(&s, &["describe", "ws", "theta", "-n", &ns]);
    assert!(
        describe.contains("AgentDied") || describe.contains("HeartbeatLost"),
        "{describe}"
    );
    // The dead instance was terminated, not left stopped.
    assert!(eventually(30, || sim
        .instances()
        .iter()
        .any(|i| i.instance_id == first && i.state == "terminated")));
}

#[test]
fn a_stop_failure_on_delete_is_a_condition_and_is_retried() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    apply(&s, &ns, &ws_yaml("iota", "controlPlane"));
    wait_phase(&s, &ns, "iota", "Online", 60);
    let uid = uid(&s, &ns, "iota");
    sim.add_fault(Fault {
        route: "stop".into(),
        status: Some(503),
        body: Some("SECRET-ISH-BODY".into()),
        ..Default::default()
    });
    ok(&s, &["delete", "ws", "iota", "-n", &ns, "--wait=false"]);
    wait_for(&s, &ns, "iota", 30, "a StopFailed condition", |w| {
        w["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["reason"] == "StopFailed"))
    });
    let yaml = ok(&s, &["get", "ws", "iota", "-n", &ns, "-o", "yaml"]);
    assert!(
        yaml.contains("HTTP 503") && !yaml.contains("SECRET-ISH-BODY"),
        "{yaml}"
    );
    assert_eq!(
        live_of(&sim, &uid).len(),
        1,
        "still running while the stop fails"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !get(&s, &ns, "iota").is_null(),
        "the finalizer was released on a failed stop"
    );
    // Retried until the control plane confirms; then the record goes.
    sim.clear_faults();
    assert!(
        eventually(60, || get(&s, &ns, "iota").is_null()),
        "{}",
        tail(&s)
    );
    assert!(live_of(&sim, &uid).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Dead-agent recovery (ADR 0036) through POST /workspaces/:id/a2a.
// ---------------------------------------------------------------------------------------------

#[test]
fn dead_agent_502_restarts_and_live_agent_502_passes_through() {
    let sim = sim();
    let ns = ns();
    let s = start(&sim, &ns, &[]);
    apply(&s, &ns, &ws_yaml("kappa", "controlPlane"));
    wait_phase(&s, &ns, "kappa", "Online", 60);
    let uid = uid(&s, &ns, "kappa");
    let first = status_str(&s, &ns, "kappa", "instanceId");
    let path = format!("/workspaces/{uid}/a2a");

    // Auth: no token and a wrong token are refused; the workspace's own token is accepted.
    assert_eq!(request(&s, "POST", &path, None, &a2a_body("x")).0, 401);
    assert_eq!(
        request(&s, "POST", &path, Some("nope"), &a2a_body("x")).0,
        401
    );
    let token = String::from_utf8(sim.files_of(&first)[".auth_token"].clone()).expect("token");
    let (code, _, body) = request(
        &s,
        "POST",
        &path,
        Some(token.trim()),
        &a2a_body("own token"),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("own token"), "{body}");

    // A live agent answering 502 (through its tunnel) is passed through, and left alone.
    assert!(sim.set_unhealthy(&first, true));
    let (code, head, body) = a2a(&s, &uid, "are you there");
    assert_eq!(code, 502, "{body}");
    assert!(!head.contains("retry-after"), "{head}");
    assert!(body.contains("error code: 502"), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(phase(&s, &ns, "kappa"), "Online");
    assert_eq!(status_str(&s, &ns, "kappa", "instanceId"), first);
    assert!(sim.set_unhealthy(&first, false));

    // A dead agent: 503 {restarting: true} with Retry-After; Offline at once; then restarted.
    assert!(sim.kill(&first));
    let (code, head, body) = a2a(&s, &uid, "hello?");
    assert_eq!(code, 503, "{body}\n{}", tail(&s));
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["restarting"], true, "{v}");
    assert!(head.contains("retry-after: 15"), "{head}");
    // Marked Offline by the controller the restart request woke (with an AgentDied Event).
    let offline_seen = eventually(5, || {
        let p = phase(&s, &ns, "kappa");
        p == "Offline" || p == "Provisioning"
    });
    assert!(offline_seen, "phase {}", phase(&s, &ns, "kappa"));
    assert!(
        eventually(10, || ok(&s, &["get", "events", "-n", &ns])
            .contains("AgentDied")),
        "no AgentDied Event"
    );
    wait_for(&s, &ns, "kappa", 60, "a restart on a new instance", |w| {
        w["status"]["instanceId"]
            .as_str()
            .is_some_and(|i| i.starts_with("i-") && i != first)
            && w["status"]["phase"] == "Online"
    });
    let (code, _, body) = a2a(&s, &uid, "back again");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("back again"));
}

#[test]
fn control_plane_workspaces_without_a_control_plane_fail_precisely() {
    let ns = ns();
    let s = Server::start_with(Backend::Sqlite, &["--controllers", "all"]);
    apply(&s, &ns, &ws_yaml("lonely", "controlPlane"));
    wait_for(&s, &ns, "lonely", 30, "ControlPlaneNotConfigured", |w| {
        w["status"]["phase"] == "Failed"
            && w["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["reason"] == "ControlPlaneNotConfigured")
            })
    });
    ok(
        &s,
        &[
            "delete",
            "ws",
            "lonely",
            "-n",
            &ns,
            "--wait=true",
            "--timeout=30s",
        ],
    );
}
