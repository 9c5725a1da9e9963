//! Workspaces converge to real Docker containers (issue: Workspace/Docker). Every test runs
//! `molecule serve` with its controllers against the real Docker engine, in its own namespace,
//! one at a time (the orphan reaper of one server would reap another server's containers).

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{
    Backend, Server, apply, cleanup, docker, eventually, exists, get, managed_in, ok, phase,
    post_url, tail, text, ws_yaml,
};
use serde_json::{Value, json};

static DOCKER: Mutex<()> = Mutex::new(());

const FAST: &[&str] = &[
    "--controllers",
    "all",
    "--agent-heartbeat-seconds",
    "1",
    "--heartbeat-timeout-seconds",
    "8",
    "--reap-interval-seconds",
    "2",
];

fn start() -> Server {
    Server::start_with(Backend::Sqlite, FAST)
}

fn ns() -> String {
    format!("t{}", molecule::util::random_suffix(8))
}

fn wait_phase(s: &Server, ns: &str, name: &str, want: &str, secs: u64) {
    let ok = eventually(secs, || phase(s, ns, name) == want);
    assert!(
        ok,
        "{name} did not reach {want} (now {:?}):\n{}\nserver log:\n{}",
        phase(s, ns, name),
        serde_json::to_string_pretty(&get(s, ns, name)["status"]).unwrap_or_default(),
        tail(s)
    );
}

fn container_of(s: &Server, ns: &str, name: &str) -> String {
    let uid = get(s, ns, name)["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .replace('-', "");
    format!("ws-{}", &uid[..12.min(uid.len())])
}

/// The image reference the workspace's container was created from.
fn image_of(s: &Server, ns: &str, name: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &container_of(s, ns, name),
    ])
    .1
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
    let (ok, _) = docker(&[
        "cp",
        &format!("{container}:/configs/.auth_token"),
        &dest.to_string_lossy(),
    ]);
    assert!(ok, "docker cp of the token failed");
    std::fs::read_to_string(dest)
        .expect("token")
        .trim()
        .to_string()
}

#[test]
fn lifecycle_online_a2a_pause_restart_kill_delete() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    apply(&s, &ns, &ws_yaml("alpha", "  role: researcher\n"));
    wait_phase(&s, &ns, "alpha", "Online", 120);
    let ws = get(&s, &ns, "alpha");
    let url = ws["status"]["url"].as_str().expect("url").to_string();
    let reply = a2a(&url, "hello molecule");
    assert_eq!(reply["id"], 7);
    assert_eq!(
        reply["result"]["parts"][0]["text"], "hello molecule",
        "{reply}"
    );
    let describe = ok(&s, &["describe", "ws", "alpha", "-n", &ns]);
    assert!(
        describe.contains("Provisioning") && describe.contains("Online"),
        "{describe}"
    );
    let container = container_of(&s, &ns, "alpha");
    let volume = format!("{container}-configs");
    let labels = docker(&["inspect", "-f", "{{index .Config.Labels \"molecule.platform.managed\"}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.Memory}}", &container]).1;
    assert_eq!(
        labels, "true unless-stopped 536870912",
        "labels, restart policy, tier-2 memory"
    );
    assert!(ok(&s, &["get", "ws", "alpha", "-n", &ns]).contains("True"));

    // Pause keeps the volume; resume brings it back with the same volume.
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
            r#"{"spec":{"paused":true}}"#,
        ],
    );
    wait_phase(&s, &ns, "alpha", "Paused", 60);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &container]).1,
        "false"
    );
    assert!(exists("volume", &volume));
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
            r#"{"spec":{"paused":false}}"#,
        ],
    );
    wait_phase(&s, &ns, "alpha", "Online", 90);
    assert!(exists("volume", &volume));

    // Restart annotation: a new container, the same volume, a new token; the old one is refused.
    let before = get(&s, &ns, "alpha");
    let old_id = before["status"]["containerId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let old_hash = before["status"]["tokenHash"]
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
        tail(&s)
    );
    let after = get(&s, &ns, "alpha");
    assert_ne!(
        after["status"]["tokenHash"].as_str().unwrap_or(""),
        old_hash
    );
    assert!(exists("volume", &volume));
    let uid = after["metadata"]["uid"].as_str().expect("uid").to_string();
    let hb = json!({"workspace_id": uid, "error_rate": 0.0}).to_string();
    let (code, _) = s
        .http_raw(
            "POST",
            "/registry/heartbeat",
            Some("application/json"),
            hb.as_bytes(),
            false,
        )
        .expect("hb");
    assert_eq!(code, 401, "a heartbeat without a token is refused");
    let (code, _) = post_url(
        &format!("http://127.0.0.1:{}/registry/heartbeat", s.port),
        &hb,
        Some(&old_token),
    )
    .expect("hb");
    assert_eq!(code, 401, "the old token is refused after a restart");

    // docker kill: Offline, then Online again without anyone acting.
    let (killed, _) = docker(&["kill", &container]);
    assert!(killed);
    assert!(
        eventually(30, || phase(&s, &ns, "alpha") == "Offline"),
        "not Offline after docker kill:\n{}",
        tail(&s)
    );
    wait_phase(&s, &ns, "alpha", "Online", 90);

    // Delete: container, volume and record are gone.
    ok(&s, &["delete", "ws", "alpha", "-n", &ns, "--timeout=60s"]);
    assert!(
        !exists("container", &container) && !exists("volume", &volume),
        "leftovers after delete"
    );
    assert!(get(&s, &ns, "alpha").is_null());
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

#[test]
fn bad_input_missing_env_unknown_runtime_paths_and_tokens() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    apply(
        &s,
        &ns,
        &ws_yaml(
            "needs-env",
            "  requiredEnv: [OPENAI_API_KEY, ANTHROPIC_API_KEY]\n",
        ),
    );
    wait_phase(&s, &ns, "needs-env", "Failed", 60);
    let w = get(&s, &ns, "needs-env");
    assert_eq!(
        w["status"]["missingEnv"],
        json!(["ANTHROPIC_API_KEY", "OPENAI_API_KEY"])
    );
    let ready = w["status"]["conditions"]
        .as_array()
        .expect("conds")
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["reason"], "MissingEnv");
    assert_eq!(ready["observedGeneration"], w["metadata"]["generation"]);
    assert!(
        managed_in(&ns, "container").is_empty() && managed_in(&ns, "volume").is_empty(),
        "nothing may be created before the env is complete"
    );
    assert!(ok(&s, &["describe", "ws", "needs-env", "-n", &ns]).contains("MissingEnv"));

    apply(
        &s,
        &ns,
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: odd\nspec:\n  runtime: nosuch\n",
    );
    // A Runtime record of that name may still be created: Pending until the provision
    // timeout, with the reason and message in `kubectl get ws` (ADR 0048).
    wait_phase(&s, &ns, "odd", "Pending", 60);
    let row = ok(&s, &["get", "ws", "odd", "-n", &ns]);
    assert!(
        row.contains("Pending") && row.contains("UnknownRuntime"),
        "{row}"
    );
    let msg = get(&s, &ns, "odd")["status"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("unknown runtime \"nosuch\"") && msg.contains("echo"),
        "{msg}"
    );

    apply(
        &s,
        &ns,
        &ws_yaml(
            "escape",
            "  files:\n    inline:\n      ../../etc/passwd: pwned\n",
        ),
    );
    wait_phase(&s, &ns, "escape", "Failed", 60);
    assert!(
        get(&s, &ns, "escape")["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("invalid path")
    );
    let big = "x".repeat(300 * 1024);
    // `create`, not `apply`: client-side apply would copy the file into an annotation, which the
    // API server itself caps at 256 KiB.
    let big_yaml = ws_yaml(
        "big",
        &format!("  files:\n    inline:\n      notes.md: {big}\n"),
    );
    let o = s.kubectl_stdin("1.33", &["create", "-n", &ns, "-f", "-"], Some(&big_yaml));
    assert!(o.status.success(), "{}", text(&o));
    wait_phase(&s, &ns, "big", "Failed", 60);
    assert!(
        get(&s, &ns, "big")["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("larger than")
    );
    let e = s.kubectl_stdin(
        "1.33",
        &["apply", "-n", &ns, "-f", "-"],
        Some(&ws_yaml("t9", "  tier: 9\n")),
    );
    assert!(
        !e.status.success() && text(&e).contains("spec.tier"),
        "{}",
        text(&e)
    );
    assert!(
        managed_in(&ns, "container").is_empty(),
        "no container for invalid workspaces"
    );

    // Registry calls with a wrong token or for an unknown workspace.
    let uid = get(&s, &ns, "odd")["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let url = format!("http://127.0.0.1:{}/registry/heartbeat", s.port);
    let (code, _) = post_url(
        &url,
        &json!({"workspace_id": uid}).to_string(),
        Some("wrong"),
    )
    .expect("hb");
    assert_eq!(code, 401);
    let (code, _) = post_url(
        &url,
        &json!({"workspace_id": "00000000-0000-0000-0000-000000000000"}).to_string(),
        Some("x"),
    )
    .expect("hb");
    assert_eq!(code, 404);
    let (code, _) = post_url(&url, "{not json", Some("x")).expect("hb");
    assert_eq!(code, 400);
    assert!(
        !s.log().contains(&"x".repeat(64)),
        "file contents leaked into the log"
    );
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

#[test]
fn external_runtime_goes_online_when_its_agent_registers() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    apply(
        &s,
        &ns,
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: remote\nspec:\n  runtime: external\n  url: https://agent.example.com/a2a\n",
    );
    wait_phase(&s, &ns, "remote", "Provisioning", 60);
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
    let uid = get(&s, &ns, "remote")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let url = format!("http://127.0.0.1:{}/registry/register", s.port);
    let (code, body) = post_url(
        &url,
        &json!({"id": uid, "url": "http://169.254.169.254/"}).to_string(),
        Some(&token),
    )
    .expect("register");
    assert_eq!(code, 400, "metadata addresses are refused: {body}");
    let (code, body) = post_url(&url, &json!({"id": uid, "url": "https://agent.example.com/a2a", "agent_card": {"name": "remote"}}).to_string(), Some(&token)).expect("register");
    assert_eq!(code, 200, "{body}");
    wait_phase(&s, &ns, "remote", "Online", 30);
    assert!(
        managed_in(&ns, "container").is_empty(),
        "external workspaces have no container"
    );

    // The phase from what the agent reports: Degraded at ≥ 50 % errors, still Degraded at 30 %
    // (hysteresis), Online again below 10 %; a wedged runtime is Degraded at any rate.
    let beat = |body: Value| {
        let url = format!("http://127.0.0.1:{}/registry/heartbeat", s.port);
        let (code, resp) = post_url(&url, &body.to_string(), Some(&token)).expect("heartbeat");
        assert_eq!(code, 200, "{resp}");
    };
    beat(json!({"workspace_id": uid, "error_rate": 0.7, "sample_error": "upstream 500"}));
    wait_phase(&s, &ns, "remote", "Degraded", 30);
    beat(json!({"workspace_id": uid, "error_rate": 0.3}));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(phase(&s, &ns, "remote"), "Degraded", "hysteresis");
    beat(json!({"workspace_id": uid, "error_rate": 0.05}));
    wait_phase(&s, &ns, "remote", "Online", 30);
    beat(json!({"workspace_id": uid, "error_rate": 0.0, "runtime_state": "wedged"}));
    wait_phase(&s, &ns, "remote", "Degraded", 30);
    let describe = ok(&s, &["describe", "ws", "remote", "-n", &ns]);
    assert!(describe.contains("wedged"), "{describe}");
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default()
}

#[test]
fn kill9_mid_provisioning_converges_to_exactly_ten() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let mut s = start();
    let ns = ns();
    let yaml: String = (0..10)
        .map(|i| ws_yaml(&format!("w{i}"), "") + "---\n")
        .collect();
    apply(&s, &ns, &yaml);
    assert!(
        eventually(60, || !managed_in(&ns, "container").is_empty()),
        "provisioning never started"
    );
    s.kill9();
    s.spawn();
    for i in 0..10 {
        wait_phase(&s, &ns, &format!("w{i}"), "Online", 180);
    }
    assert!(
        eventually(20, || managed_in(&ns, "container").len() == 10),
        "expected exactly 10 containers, found {:?}",
        managed_in(&ns, "container")
    );
    ok(&s, &["delete", "ws", "--all", "-n", &ns, "--timeout=120s"]);
    assert!(eventually(30, || managed_in(&ns, "container").is_empty()
        && managed_in(&ns, "volume").is_empty()));
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

#[test]
fn wiped_store_and_strays_are_reaped_unlabelled_untouched() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let mut s = start();
    let ns = ns();
    apply(&s, &ns, &(ws_yaml("a", "") + "---\n" + &ws_yaml("b", "")));
    wait_phase(&s, &ns, "a", "Online", 120);
    wait_phase(&s, &ns, "b", "Online", 120);
    let image = image_of(&s, &ns, "a");
    let unlabelled = format!("ws-unlabelled-{}", molecule::util::random_suffix(6));
    assert!(docker(&["create", "--name", &unlabelled, &image]).0);

    // A stray labelled container of this installation, for a uid with no record, is reaped
    // quickly; one labelled for another installation on the same engine is not ours to touch.
    let instance = std::fs::read_to_string(s.data_dir().join("instance-id")).expect("instance-id");
    let stray_of = |instance: &str, namespace: &str| {
        let name = format!("ws-stray{}", molecule::util::random_suffix(5));
        let made = docker(&[
            "create",
            "--name",
            &name,
            "--label",
            "molecule.platform.managed=true",
            "--label",
            &format!("molecule.ai/instance={instance}"),
            "--label",
            "molecule.ai/uid=0000dead-0000-0000-0000-000000000000",
            "--label",
            &format!("molecule.ai/namespace={namespace}"),
            "--label",
            "molecule.ai/name=ghost",
            &image,
        ])
        .0;
        assert!(made);
        name
    };
    let stray = stray_of(instance.trim(), &ns);
    let foreign = stray_of("another-installation", &format!("{ns}-elsewhere"));
    assert!(
        eventually(15, || !exists("container", &stray)),
        "stray labelled container not reaped"
    );

    // Wipe the store while the containers run, then restart.
    s.kill9();
    for f in ["molecule.db", "molecule.db-wal", "molecule.db-shm"] {
        let _ = std::fs::remove_file(s.data_dir().join(f));
    }
    s.spawn();
    assert!(
        eventually(60, || managed_in(&ns, "container").is_empty()
            && managed_in(&ns, "volume").is_empty()),
        "managed objects survived a wiped store: {:?}",
        managed_in(&ns, "container")
    );
    assert!(
        exists("container", &unlabelled),
        "an unlabelled container was touched"
    );
    assert!(
        exists("container", &foreign),
        "another installation's container was touched"
    );
    docker(&["rm", "-f", &unlabelled, &foreign]);
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

#[test]
fn examples_apply_and_come_online() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    let root = env!("CARGO_MANIFEST_DIR");
    for f in [
        "examples/workspace.yaml",
        "examples/secret.yaml",
        "examples/team.yaml",
    ] {
        ok(&s, &["apply", "-n", &ns, "-f", &format!("{root}/{f}")]);
    }
    for name in ["echo-1", "lead", "analyst", "writer"] {
        wait_phase(&s, &ns, name, "Online", 180);
    }
    assert!(ok(&s, &["get", "ws", "-n", &ns, "-o", "wide"]).contains("lead"));
    ok(&s, &["delete", "ws", "--all", "-n", &ns, "--timeout=120s"]);
    assert!(eventually(30, || managed_in(&ns, "container").is_empty()));
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
    let _ = Duration::from_secs(0);
}

/// Pins a file in a container's writable layer with `chattr +i`, so that the engine really
/// fails to remove the container ("failed to remove root filesystem: operation not
/// permitted"); unpins on drop, so a failing test leaves nothing unremovable behind.
struct PinnedLayer {
    file: std::path::PathBuf,
}

impl PinnedLayer {
    fn pin(container: &str) -> PinnedLayer {
        let upper = docker(&["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", container]).1;
        assert!(!upper.is_empty(), "the storage driver has no UpperDir");
        let file = std::path::Path::new(&upper).join("molecule-test-pin");
        std::fs::write(&file, b"pin").expect("write into the container's layer (needs root)");
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&file)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chattr +i failed (the test needs root and chattr)");
        PinnedLayer { file }
    }

    fn unpin(&self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.file)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for PinnedLayer {
    fn drop(&mut self) {
        self.unpin();
    }
}

#[test]
fn delete_whose_removal_fails_keeps_the_volume_and_the_reaper_finishes() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    apply(&s, &ns, &ws_yaml("stuck", ""));
    wait_phase(&s, &ns, "stuck", "Online", 120);
    let container = container_of(&s, &ns, "stuck");
    let volume = format!("{container}-configs");
    let pin = PinnedLayer::pin(&container);

    // The engine refuses to remove the container: the record still goes (the finalizer is
    // released with a Warning Event), the volume is kept because the container is not gone.
    ok(&s, &["delete", "ws", "stuck", "-n", &ns, "--timeout=60s"]);
    assert!(get(&s, &ns, "stuck").is_null(), "the record is gone");
    let events = ok(
        &s,
        &[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "involvedObject.name=stuck",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    assert!(events.contains("CleanupIncomplete"), "{events}");
    assert!(exists("container", &container), "removal really failed");
    assert!(exists("volume", &volume), "the volume is kept");
    // Reaper passes keep failing on it (every 2 s here) without touching anything else.
    std::thread::sleep(Duration::from_secs(3));
    assert!(exists("volume", &volume));

    // Once removal can succeed, a later reaper pass removes the container and then the volume.
    pin.unpin();
    assert!(
        eventually(30, || !exists("container", &container)
            && !exists("volume", &volume)),
        "the reaper did not finish the cleanup:\n{}",
        tail(&s)
    );
    drop(pin);
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

#[test]
fn secret_change_restarts_once_with_the_new_env() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    let secret = |v: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: keyed-secrets\nstringData:\n  GREETING: {v}\n"
        )
    };
    apply(&s, &ns, &secret("hello"));
    apply(&s, &ns, &ws_yaml("keyed", ""));
    wait_phase(&s, &ns, "keyed", "Online", 120);
    let env_of = |c: &str| docker(&["inspect", "-f", "{{json .Config.Env}}", c]).1;
    let first = get(&s, &ns, "keyed")["status"]["containerId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(env_of(&first).contains("GREETING=hello"));

    apply(&s, &ns, &secret("bonjour"));
    assert!(
        eventually(60, || {
            let st = &get(&s, &ns, "keyed")["status"];
            st["phase"] == "Online" && st["containerId"].as_str().is_some_and(|c| c != first)
        }),
        "the Secret change did not restart the workspace:\n{}",
        tail(&s)
    );
    let second = get(&s, &ns, "keyed")["status"]["containerId"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(env_of(&second).contains("GREETING=bonjour"));
    // Exactly one restart: no further container replaces it, and one Reconfiguring Event.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        get(&s, &ns, "keyed")["status"]["containerId"].as_str(),
        Some(second.as_str())
    );
    // Repeats of one Event are folded into its series: count occurrences through it.
    let events: Value = serde_json::from_str(&ok(
        &s,
        &["get", "events.events.k8s.io", "-n", &ns, "-o", "json"],
    ))
    .expect("events json");
    let reconfigured: i64 = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == "keyed" && e["reason"] == "Reconfiguring")
        .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
        .sum();
    assert_eq!(reconfigured, 1, "{events}");
    ok(&s, &["delete", "ws", "keyed", "-n", &ns, "--timeout=60s"]);
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

#[test]
fn a_running_container_whose_id_never_reached_status_is_adopted_not_replaced() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    apply(&s, &ns, &ws_yaml("adoptee", ""));
    wait_phase(&s, &ns, "adoptee", "Online", 120);
    let container = get(&s, &ns, "adoptee")["status"]["containerId"]
        .as_str()
        .expect("containerId")
        .to_string();
    // The state a crash (or a timed-out engine call) between the start and the status write
    // leaves: tokenHash and specHash of this attempt on record, containerId not.
    let (code, body) = s.http(
        "PATCH",
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces/adoptee/status"),
        Some("application/merge-patch+json"),
        br#"{"status":{"containerId":null}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        eventually(30, || get(&s, &ns, "adoptee")["status"]["containerId"]
            .as_str()
            .is_some()),
        "the container was not recorded again:\n{}",
        tail(&s)
    );
    assert_eq!(
        get(&s, &ns, "adoptee")["status"]["containerId"].as_str(),
        Some(container.as_str()),
        "adopted, not replaced"
    );
    assert_eq!(managed_in(&ns, "container").len(), 1);
    assert_eq!(phase(&s, &ns, "adoptee"), "Online");
    ok(&s, &["delete", "ws", "adoptee", "-n", &ns, "--timeout=60s"]);
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

#[test]
fn an_agent_that_never_registers_fails_with_the_runtimes_provision_timeout() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = start();
    let ns = ns();
    // An image whose process runs but never registers: `sleep`, packed FROM scratch.
    let image = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
            molecule::images::ensure_image_for(
                &docker,
                std::path::Path::new("/bin/sleep"),
                "molecule-test/sleeper",
                &["/molecule", "600"],
            )
            .await
        })
        .expect("sleep image");
    let (repo, tag) = image.rsplit_once(':').expect("a tagged image");
    let runtime = format!("sleepy-{}", molecule::util::random_suffix(6));
    // The default provision timeout is 10 min; this runtime's own is 4 s (like hermes' 30 min).
    let o = s.kubectl_stdin(
        "1.33",
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: Runtime\nmetadata:\n  name: {runtime}\nspec:\n  image: {repo}\n  tag: {tag}\n  provisionTimeoutSeconds: 4\n"
        )),
    );
    assert!(o.status.success(), "{}", text(&o));
    apply(
        &s,
        &ns,
        &format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: mute\nspec:\n  runtime: {runtime}\n"
        ),
    );
    wait_phase(&s, &ns, "mute", "Failed", 90);
    let st = &get(&s, &ns, "mute")["status"];
    let ready = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(ready["reason"], "ProvisionTimeout", "{st}");
    assert!(
        ready["message"].as_str().unwrap_or("").contains("4s"),
        "{ready}"
    );
    let describe = ok(&s, &["describe", "ws", "mute", "-n", &ns]);
    assert!(describe.contains("ProvisionTimeout"), "{describe}");
    ok(&s, &["delete", "ws", "mute", "-n", &ns, "--timeout=60s"]);
    ok(&s, &["delete", "runtime", &runtime]);
    drop(s); // stop the server first: its controller would re-create what cleanup removes
    cleanup(&ns);
}

/// Builds a tiny labelled image in the echo repository (what an earlier operator binary left).
fn old_echo_image(tag: &str, cmd: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker build");
    let dockerfile =
        format!("FROM scratch\nLABEL molecule.platform.managed-image=true\nCMD [\"{cmd}\"]\n");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("dockerfile");
    assert!(child.wait().expect("build").success(), "building {tag}");
}

#[test]
fn echo_images_of_earlier_binaries_are_removed_unless_a_container_uses_them() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let id = molecule::util::random_suffix(8);
    let unused = format!("molecule-local/echo:old{id}a");
    let in_use = format!("molecule-local/echo:old{id}b");
    let holder = format!("molecule-test-holder-{id}");
    old_echo_image(&unused, "/unused");
    old_echo_image(&in_use, "/in-use");
    assert!(docker(&["create", "--name", &holder, &in_use]).0);

    let s = start();
    let ns = ns();
    apply(&s, &ns, &ws_yaml("fresh", ""));
    wait_phase(&s, &ns, "fresh", "Online", 90);
    let current = image_of(&s, &ns, "fresh");
    let gone = eventually(30, || !exists("image", &unused));
    let kept = exists("image", &in_use);
    let current_kept = exists("image", &current);
    ok(&s, &["delete", "ws", "fresh", "-n", &ns, "--timeout=60s"]);
    drop(s);
    cleanup(&ns);
    docker(&["rm", "-f", &holder]);
    docker(&["rmi", &in_use]);
    docker(&["rmi", &unused]);
    assert!(gone, "the superseded echo image {unused} was not removed");
    assert!(kept, "an image a container was created from was removed");
    assert!(current_kept, "the current echo image {current} was removed");
}
