//! What a workspace gets, on the real Docker engine (ADR 0048): the persistent `/workspace`
//! volume (kept across a restart, removed on delete), a claude-code workspace's session volume,
//! the baseline env inside the container, and the initial prompt sent once — its marker in the
//! config volume stops a re-send after the restart.

mod common;

use std::io::{Read, Write};
use std::sync::Mutex;

use common::{Backend, Cleanup, Server, apply, docker, eventually, exists, get, ok, phase, tail};
use serde_json::Value;

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

fn wait_phase(s: &Server, ns: &str, name: &str, want: &str, secs: u64) {
    assert!(
        eventually(secs, || phase(s, ns, name) == want),
        "{name} did not reach {want} (now {:?}):\n{}\nserver log:\n{}",
        phase(s, ns, name),
        get(s, ns, name)["status"],
        tail(s)
    );
}

/// GET `url` (plain http on 127.0.0.1) as JSON.
fn get_json(url: &str) -> Value {
    let rest = url.strip_prefix("http://").expect("http url");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(mut s) = std::net::TcpStream::connect(authority) else {
        return Value::Null;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return Value::Null;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// The container's env as NAME=value lines.
fn env_of(container: &str) -> Vec<String> {
    let out = docker(&["inspect", "-f", "{{json .Config.Env}}", container]).1;
    serde_json::from_str(&out).unwrap_or_default()
}

/// `volume:destination` of every named volume the container mounts.
fn mounts_of(container: &str) -> Vec<String> {
    docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{if .Name}}{{.Name}}:{{.Destination}} {{end}}{{end}}",
        container,
    ])
    .1
    .split_whitespace()
    .map(String::from)
    .collect()
}

/// Reads a file out of a (possibly `FROM scratch`) container.
fn read_file(container: &str, path: &str) -> Option<String> {
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path().join("f");
    let (ok, _) = docker(&[
        "cp",
        &format!("{container}:{path}"),
        &dest.to_string_lossy(),
    ]);
    ok.then(|| std::fs::read_to_string(dest).unwrap_or_default())
}

#[test]
fn workspace_volume_env_and_initial_prompt_survive_a_restart_and_go_on_delete() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let s = Server::start_with(Backend::Sqlite, FAST);
    let ns = format!("wsgets{}", molecule::util::random_suffix(6));
    let _cleanup = Cleanup(ns.clone());
    let prompt = "Read the brief.\nThen plan the week.\n";
    apply(
        &s,
        &ns,
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: alpha\nspec:\n  runtime: echo\n  role: researcher\n  initialPrompt: |\n    Read the brief.\n    Then plan the week.\n",
    );
    wait_phase(&s, &ns, "alpha", "Online", 120);
    let ws = get(&s, &ns, "alpha");
    let uid = ws["metadata"]["uid"].as_str().expect("uid").to_string();
    let container = ws["status"]["containerId"]
        .as_str()
        .expect("container")
        .to_string();
    let url = ws["status"]["url"].as_str().expect("url").to_string();
    let volume = format!("ws-{uid}-workspace");

    // 10: a persistent /workspace volume, labelled as managed.
    assert!(exists("volume", &volume), "{volume} missing");
    assert!(
        mounts_of(&container).contains(&format!("{volume}:/workspace")),
        "{:?}",
        mounts_of(&container)
    );
    // 11: the baseline env of the original, inside the container.
    let env = env_of(&container);
    let platform = env
        .iter()
        .find_map(|e| e.strip_prefix("PLATFORM_URL="))
        .expect("PLATFORM_URL")
        .to_string();
    for want in [
        format!("WORKSPACE_ID={uid}"),
        "WORKSPACE_CONFIG_PATH=/configs".to_string(),
        format!("MOLECULE_URL={platform}"),
        "TIER=2".to_string(),
        "PLUGINS_DIR=/plugins".to_string(),
        "PYTHONPATH=/app".to_string(),
        "MOLECULE_AGENT_ROLE=Researcher".to_string(),
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    // 9: the generated config.yaml in the original's shape.
    let config = read_file(&container, "/configs/config.yaml").expect("config.yaml");
    assert!(
        config.starts_with("name: alpha\ndescription: researcher\nversion: \"1.0.0\"\ntier: 2\n"),
        "{config}"
    );
    // 12: the initial prompt was the agent's first message, and its marker is written.
    let activity_url = format!("{url}/activity");
    assert!(
        eventually(60, || get_json(&activity_url)["initial_prompt"]["sent"]
            == true),
        "initial prompt not sent: {}",
        get_json(&activity_url)
    );
    let a = get_json(&activity_url);
    assert_eq!(a["messages"][0]["text"], prompt, "{a}");
    assert!(read_file(&container, "/configs/.initial_prompt_done").is_some());
    // Something the agent keeps in /workspace.
    let tmp = tempfile::tempdir().expect("tmp");
    let keep = tmp.path().join("notes.txt");
    std::fs::write(&keep, "kept across restarts\n").expect("write");
    let (copied, _) = docker(&[
        "cp",
        &keep.to_string_lossy(),
        &format!("{container}:/workspace/notes.txt"),
    ]);
    assert!(copied, "docker cp into /workspace");

    // Restart: a new container; the volume, its content and the marker stay; no re-send.
    ok(
        &s,
        &[
            "annotate",
            "ws",
            "alpha",
            "-n",
            &ns,
            "--overwrite",
            "molecule.ai/restartedAt=2026-12-03T10:00:00Z",
        ],
    );
    assert!(
        eventually(90, || {
            let w = get(&s, &ns, "alpha");
            w["status"]["containerId"]
                .as_str()
                .is_some_and(|c| c != container)
                && w["status"]["phase"] == "Online"
        }),
        "restart did not converge:\n{}",
        tail(&s)
    );
    let after = get(&s, &ns, "alpha");
    let container2 = after["status"]["containerId"]
        .as_str()
        .expect("container")
        .to_string();
    let url2 = after["status"]["url"].as_str().expect("url").to_string();
    assert_eq!(
        read_file(&container2, "/workspace/notes.txt").as_deref(),
        Some("kept across restarts\n")
    );
    let activity2 = format!("{url2}/activity");
    assert!(
        eventually(
            30,
            || get_json(&activity2)["initial_prompt"]["already_done"] == true
        ),
        "the restarted agent did not see the marker: {}",
        get_json(&activity2)
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let a = get_json(&activity2);
    assert_eq!(a["initial_prompt"]["sent"], false, "{a}");
    assert_eq!(a["messages"], Value::Array(vec![]), "not sent again: {a}");

    // A claude-code workspace also gets its session volume (the echo image stands in for it).
    let image = after["status"]["image"]
        .as_str()
        .expect("image")
        .to_string();
    apply(
        &s,
        &ns,
        &format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: coder\nspec:\n  runtime: claude-code\n  image: {image}\n"
        ),
    );
    wait_phase(&s, &ns, "coder", "Online", 120);
    let coder = get(&s, &ns, "coder");
    let coder_uid = coder["metadata"]["uid"].as_str().expect("uid").to_string();
    let coder_container = coder["status"]["containerId"].as_str().expect("id");
    let sessions = format!("ws-{coder_uid}-claude-sessions");
    assert!(
        mounts_of(coder_container).contains(&format!("{sessions}:/root/.claude/sessions")),
        "{:?}",
        mounts_of(coder_container)
    );

    // Delete: every volume of the workspace goes with it.
    ok(&s, &["delete", "ws", "--all", "-n", &ns, "--timeout=60s"]);
    for v in [
        volume.clone(),
        sessions.clone(),
        format!("ws-{coder_uid}-workspace"),
    ] {
        assert!(!exists("volume", &v), "{v} left after delete");
    }
    drop(s);
}
