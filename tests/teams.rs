//! Agents work as a team (ADR 0050), for real: `molecule serve` with its controllers on the
//! real Docker engine and real echo agents. A 3-level org — the lead asks a grandchild through
//! its child, siblings talk, a cousin is refused with 403 and nothing is delivered, a wrong
//! token is refused — the activity rows on both sides of a call, discovery, and bad input
//! (each a precise 4xx that writes nothing).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use common::{Backend, Cleanup, Server, apply, docker, eventually, get, phase, tail, ws_yaml};
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

/// One HTTP/1.0 request to the server with any headers; (status, body).
fn call(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let authority = format!("127.0.0.1:{}", s.port);
    let mut c = TcpStream::connect(&authority).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).expect("write");
    let _ = c.write_all(body);
    let mut buf = vec![];
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn j(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn send(text: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {"role": "user", "messageId": "m1", "parts": [{"kind": "text", "text": text}]}}})
        .to_string()
        .into_bytes()
}

/// A member of the test org: its uid and token.
struct Member {
    uid: String,
    token: String,
}

fn member(s: &Server, ns: &str, name: &str) -> Member {
    let uid = get(s, ns, name)["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let container = format!("ws-{}", &uid.replace('-', "")[..12]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path().join("t");
    let (ok, _) = docker(&[
        "cp",
        &format!("{container}:/configs/.auth_token"),
        &dest.to_string_lossy(),
    ]);
    assert!(ok, "docker cp of {name}'s token failed");
    let token = std::fs::read_to_string(dest)
        .expect("token")
        .trim()
        .to_string();
    Member { uid, token }
}

/// `from` calls `to` through the proxy (as itself).
fn ask(s: &Server, from: &Member, to: &Member, text: &str) -> (u16, String) {
    let auth = format!("Bearer {}", from.token);
    call(
        s,
        "POST",
        &format!("/workspaces/{}/a2a", to.uid),
        &[("Authorization", &auth), ("X-Workspace-ID", &from.uid)],
        &send(text),
    )
}

fn reply_text(body: &str) -> String {
    j(body)["result"]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The activity rows of a workspace (admin token), newest first.
fn activity(s: &Server, m: &Member, query: &str) -> Vec<Value> {
    let auth = format!("Bearer {}", s.token());
    let (code, body) = call(
        s,
        "GET",
        &format!("/workspaces/{}/activity?{query}", m.uid),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(code, 200, "{body}");
    j(&body).as_array().cloned().unwrap_or_default()
}

#[test]
fn a_three_level_org_talks_by_the_hierarchy_rule_and_logs_both_sides() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let ns = format!("t{}", molecule::util::random_suffix(8));
    // Dropped after the server: nothing can re-create a container once it is cleaned up.
    let _clean = Cleanup(ns.clone());
    let s = Server::start_with(Backend::Sqlite, FAST);
    //   lead ─┬─ a ── a1
    //         └─ b ── b1
    let org = [
        ("lead", None),
        ("a", Some("lead")),
        ("b", Some("lead")),
        ("a1", Some("a")),
        ("b1", Some("b")),
    ];
    for (name, parent) in org {
        let extra = match parent {
            Some(p) => format!(
                "  displayName: {}\n  parentRef:\n    name: {p}\n",
                name.to_uppercase()
            ),
            None => format!("  displayName: {}\n", name.to_uppercase()),
        };
        apply(&s, &ns, &ws_yaml(name, &extra));
    }
    for (name, _) in org {
        assert!(
            eventually(180, || phase(&s, &ns, name) == "Online"),
            "{name} did not come Online:\n{}",
            tail(&s)
        );
    }
    let [lead, a, b, a1, b1] = ["lead", "a", "b", "a1", "b1"].map(|n| member(&s, &ns, n));

    // The lead asks its grandchild through its child: a's agent discovers A1 and calls it
    // through the proxy with its own token.
    let (code, body) = ask(&s, &lead, &a, "ask A1: hello grandchild");
    assert_eq!(code, 200, "{body}\n{}", tail(&s));
    assert_eq!(reply_text(&body), "hello grandchild", "{body}");
    // An ancestor may also call a descendant directly; siblings talk.
    let (code, body) = ask(&s, &lead, &a1, "straight down");
    assert_eq!(
        (code, reply_text(&body)),
        (200, "straight down".into()),
        "{body}"
    );
    let (code, body) = ask(&s, &a, &b, "hi sibling");
    assert_eq!(
        (code, reply_text(&body)),
        (200, "hi sibling".into()),
        "{body}"
    );

    // A cousin is refused, and its agent never sees the call.
    let (code, body) = ask(&s, &a1, &b1, "hi cousin");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("hierarchy"), "{body}");
    // An agent asked to reach a cousin gets the refusal as its answer.
    let (code, body) = ask(&s, &lead, &a1, "ask B1: are you there");
    assert_eq!(code, 200, "{body}");
    assert!(
        reply_text(&body).starts_with("ask failed: no peer named B1"),
        "{body}"
    );
    // A wrong token: a's id with b's token.
    let wrong = format!("Bearer {}", b.token);
    let (code, body) = call(
        &s,
        "POST",
        &format!("/workspaces/{}/a2a", a1.uid),
        &[("Authorization", &wrong), ("X-Workspace-ID", &a.uid)],
        &send("forged"),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("X-Workspace-ID"), "{body}");

    // Activity on both sides of every delivered call, and the agents' own rows.
    let sent = |m: &Member, target: &Member| {
        activity(&s, m, "type=a2a_send")
            .iter()
            .any(|r| r["target_id"] == target.uid.as_str() && r["status"] == "ok")
    };
    assert!(eventually(10, || sent(&a, &b)), "a2a_send a -> b");
    assert!(
        eventually(10, || sent(&a, &a1)),
        "a2a_send a -> a1 (the agent's own ask)"
    );
    assert!(eventually(10, || sent(&lead, &a)), "a2a_send lead -> a");
    let received = activity(&s, &b, "type=a2a_receive");
    assert!(
        received.iter().any(|r| r["source_id"] == a.uid.as_str()
            && r["method"] == "message/send"
            && r["summary"] == "message/send: hi sibling"
            && r["request_body"]["params"]["message"]["parts"][0]["text"] == "hi sibling"
            && r["response_body"]["result"]["parts"][0]["text"] == "hi sibling"
            && r["duration_ms"].is_number()),
        "{received:?}"
    );
    assert!(
        eventually(10, || activity(&s, &b, "type=agent_log")
            .iter()
            .any(|r| r["summary"] == "hi sibling -> hi sibling")),
        "b's agent reports its own task"
    );
    // Nothing of the refused call reached b1: no receive row, no task of its agent.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        activity(&s, &b1, "").is_empty(),
        "{:?}",
        activity(&s, &b1, "")
    );

    // A canvas call (admin token, no X-Workspace-ID) is a receive row without a source.
    let admin = format!("Bearer {}", s.token());
    let (code, body) = call(
        &s,
        "POST",
        &format!("/workspaces/{}/a2a", b1.uid),
        &[("Authorization", &admin)],
        &send("from the canvas"),
    );
    assert_eq!(
        (code, reply_text(&body)),
        (200, "from the canvas".into()),
        "{body}"
    );
    assert!(eventually(10, || activity(&s, &b1, "source=canvas")
        .iter()
        .any(
            |r| r["activity_type"] == "a2a_receive" && r["source_id"].is_null()
        )));

    // Discovery by the hierarchy rule.
    let a_auth = format!("Bearer {}", a.token);
    let (code, body) = call(
        &s,
        "GET",
        &format!("/registry/discover/{}", b.uid),
        &[("Authorization", &a_auth), ("X-Workspace-ID", &a.uid)],
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(j(&body)["name"], "B");
    assert_eq!(j(&body)["status"], "online");
    let (code, body) = call(
        &s,
        "GET",
        &format!("/registry/discover/{}", b1.uid),
        &[("Authorization", &a_auth), ("X-Workspace-ID", &a.uid)],
        b"",
    );
    assert_eq!(code, 403, "a may not talk to its nephew: {body}");
    let (code, body) = call(
        &s,
        "GET",
        &format!("/registry/discover/{}", b.uid),
        &[("Authorization", &a_auth)],
        b"",
    );
    assert_eq!(
        (code, j(&body)["error"].clone()),
        (400, json!("X-Workspace-ID header is required"))
    );
    let a1_auth = format!("Bearer {}", a1.token);
    let (code, body) = call(
        &s,
        "GET",
        &format!("/registry/{}/peers", a1.uid),
        &[("Authorization", &a1_auth)],
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let mut names: Vec<String> = j(&body)
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["A", "LEAD"],
        "a1 reaches its parent and its grandparent"
    );
    let (code, body) = call(
        &s,
        "POST",
        "/registry/check-access",
        &[("Authorization", &admin)],
        json!({"caller_id": a1.uid, "target_id": b1.uid})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        (code, j(&body)["allowed"].clone()),
        (200, json!(false)),
        "{body}"
    );

    bad_input_writes_nothing(&s, &a, &b);
}

/// A bad call: what it is, path, headers, body, the status and a needle of its message.
type BadCall<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

/// Each bad call gets a precise 4xx, and neither side's activity log changes.
fn bad_input_writes_nothing(s: &Server, a: &Member, b: &Member) {
    std::thread::sleep(Duration::from_secs(1));
    let before = (
        activity(s, a, "limit=500").len(),
        activity(s, b, "limit=500").len(),
    );
    let a_auth = format!("Bearer {}", a.token);
    let b_auth = format!("Bearer {}", b.token);
    let to_b = format!("/workspaces/{}/a2a", b.uid);
    let unknown = "00000000-0000-4000-8000-000000000000";
    let big = vec![b'x'; 1024 * 1024 + 10];
    let cases: Vec<BadCall> = vec![
        (
            "oversized body",
            to_b.clone(),
            vec![("Authorization", &a_auth), ("X-Workspace-ID", &a.uid)],
            big,
            413,
            "",
        ),
        (
            "missing X-Workspace-ID",
            to_b.clone(),
            vec![("Authorization", &a_auth)],
            send("x"),
            400,
            "X-Workspace-ID header is required",
        ),
        (
            "malformed X-Workspace-ID",
            to_b.clone(),
            vec![("Authorization", &a_auth), ("X-Workspace-ID", "../etc")],
            send("x"),
            400,
            "X-Workspace-ID must be a workspace id",
        ),
        (
            "forged X-Workspace-ID",
            to_b.clone(),
            vec![("Authorization", &b_auth), ("X-Workspace-ID", &a.uid)],
            send("x"),
            401,
            "not that of the X-Workspace-ID",
        ),
        (
            "unknown target",
            format!("/workspaces/{unknown}/a2a"),
            vec![("Authorization", &a_auth), ("X-Workspace-ID", &a.uid)],
            send("x"),
            404,
            "workspace not found",
        ),
        (
            "malformed JSON-RPC",
            to_b.clone(),
            vec![("Authorization", &a_auth), ("X-Workspace-ID", &a.uid)],
            b"{\"jsonrpc\":\"1.0\",\"method\":\"m\"}".to_vec(),
            400,
            "`jsonrpc` must be",
        ),
        (
            "not JSON",
            to_b.clone(),
            vec![("Authorization", &a_auth), ("X-Workspace-ID", &a.uid)],
            b"{oops".to_vec(),
            400,
            "malformed JSON-RPC",
        ),
        (
            "bad X-Timeout",
            to_b.clone(),
            vec![
                ("Authorization", &a_auth),
                ("X-Workspace-ID", &a.uid),
                ("X-Timeout", "forever"),
            ],
            send("x"),
            400,
            "X-Timeout must be",
        ),
        (
            "bad activity type",
            format!("/workspaces/{}/activity", a.uid),
            vec![("Authorization", &a_auth)],
            json!({"activity_type": "gossip", "summary": "x"})
                .to_string()
                .into_bytes(),
            400,
            "invalid activity_type, must be one of: a2a_send, a2a_receive",
        ),
        (
            "activity for another workspace",
            format!("/workspaces/{}/activity", b.uid),
            vec![("Authorization", &a_auth)],
            json!({"activity_type": "agent_log"})
                .to_string()
                .into_bytes(),
            401,
            "invalid token",
        ),
        (
            "spoofed activity source",
            format!("/workspaces/{}/activity", a.uid),
            vec![("Authorization", &a_auth)],
            json!({"activity_type": "agent_log", "source_id": b.uid})
                .to_string()
                .into_bytes(),
            400,
            "`source_id` must be this",
        ),
    ];
    for (what, path, headers, body, want, needle) in cases {
        let (code, text) = call(s, "POST", &path, &headers, &body);
        assert_eq!(code, want, "{what}: {text}");
        assert!(text.contains(needle), "{what}: {text} lacks {needle:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = (
        activity(s, a, "limit=500").len(),
        activity(s, b, "limit=500").len(),
    );
    assert_eq!(before, after, "bad input wrote activity rows");
    // A good report is logged.
    let (code, text) = call(
        s,
        "POST",
        &format!("/workspaces/{}/activity", a.uid),
        &[("Authorization", &a_auth)],
        json!({"activity_type": "task_update", "summary": "half way"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        (code, j(&text)["status"].clone()),
        (200, json!("logged")),
        "{text}"
    );
    let rows = activity(s, a, "type=task_update");
    assert_eq!(rows[0]["source_id"], a.uid.as_str());
    assert_eq!(rows[0]["summary"], "half way");
}
