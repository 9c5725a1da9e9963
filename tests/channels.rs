//! Chat channels (ADR 0054), for real: `molecule serve` with its controllers on the real Docker
//! engine and a real echo agent, bridged to a fake Telegram Bot API on 127.0.0.1 that speaks
//! the real wire protocol. A user writes, the agent's answer arrives in the chat; a stranger
//! is ignored and counted; a refused token, a missing Secret and an unsupported type each give
//! a precise status and condition that never carry the token; a kill -9 resumes after the
//! last update handled; disabling a channel through the REST route stops its polling; a token
//! rotated in its Secret reaches the connected adapter.

mod common;
mod fakes;

use std::sync::Mutex;
use std::time::Duration;

use common::{Backend, Cleanup, Server, apply, eventually, get, ok, phase, tail, ws_yaml};
use fakes::telegram::FakeTelegram;
use serde_json::Value;

static DOCKER: Mutex<()> = Mutex::new(());

const GOOD: &str = "111111:GOOD-token-abcdef";
const BAD: &str = "222222:BAD-token-uvwxyz";

const FAST: &[&str] = &[
    "--controllers",
    "all",
    "--agent-heartbeat-seconds",
    "1",
    "--heartbeat-timeout-seconds",
    "8",
];

fn channel(s: &Server, ns: &str, name: &str, i: usize) -> Value {
    get(s, ns, name)["status"]["channels"][i].clone()
}

fn condition(s: &Server, ns: &str, name: &str, kind: &str) -> Value {
    get(s, ns, name)["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or(Value::Null)
}

fn j(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The manifest: one good channel, a refused token, a missing Secret, an unsupported type.
fn manifests(name: &str, base: &str) -> (String, String) {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tg\nstringData:\n  token: \"{GOOD}\"\n  bad: \"{BAD}\"\n"
    );
    let config = format!("      base_url: \"{base}\"\n      poll_timeout_seconds: \"1\"\n");
    let ws = ws_yaml(
        name,
        &format!(
            "  channels:\n\
             \x20 - type: telegram\n    configFrom: {{name: tg, key: token}}\n    config:\n{config}    allowedUsers: [\"42\", \"@alice\"]\n\
             \x20 - type: telegram\n    configFrom: {{name: tg, key: bad}}\n    config:\n{config}    allowedUsers: [\"42\"]\n\
             \x20 - type: telegram\n    configFrom: {{name: missing, key: token}}\n    config:\n{config}\
             \x20 - type: slack\n    configFrom: {{name: tg, key: token}}\n"
        ),
    );
    (secret, ws)
}

#[test]
fn a_telegram_chat_reaches_the_agent_and_bad_channels_say_why() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let ns = format!("c{}", molecule::util::random_suffix(8));
    let _clean = Cleanup(ns.clone());
    let tg = FakeTelegram::start(GOOD);
    let mut s = Server::start_with(Backend::Sqlite, FAST);
    let (secret, ws) = manifests("bot", &tg.base);
    apply(&s, &ns, &secret);
    apply(&s, &ns, &ws);
    assert!(
        eventually(180, || phase(&s, &ns, "bot") == "Online"),
        "bot did not come Online:\n{}",
        tail(&s)
    );
    assert!(
        eventually(30, || channel(&s, &ns, "bot", 0)["state"] == "Connected"),
        "channel 0: {}\n{}",
        channel(&s, &ns, "bot", 0),
        tail(&s)
    );

    // Bad channels, each with its reason; the token appears nowhere.
    assert!(eventually(30, || channel(&s, &ns, "bot", 1)["reason"]
        == "InvalidToken"));
    assert!(eventually(30, || channel(&s, &ns, "bot", 2)["reason"]
        == "SecretNotFound"));
    let bad = channel(&s, &ns, "bot", 1);
    assert_eq!(bad["state"], "Failed");
    assert!(
        bad["message"]
            .as_str()
            .unwrap_or("")
            .contains("refused the bot token"),
        "{bad}"
    );
    let missing = channel(&s, &ns, "bot", 2);
    assert!(
        missing["message"]
            .as_str()
            .unwrap_or("")
            .contains("missing"),
        "{missing}"
    );
    let other = channel(&s, &ns, "bot", 3);
    assert_eq!(
        (other["state"].as_str(), other["reason"].as_str()),
        (Some("Failed"), Some("UnsupportedChannelType")),
        "{other}"
    );
    assert!(
        other["message"]
            .as_str()
            .unwrap_or("")
            .contains("supported: telegram"),
        "{other}"
    );
    let c = condition(&s, &ns, "bot", "ChannelsReady");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("InvalidToken")),
        "{c}"
    );

    // An allowed user (by id, then by username) gets the agent's answer in the chat.
    let first = tg.user_writes(42, "carol", 500, "hello bot");
    assert!(
        eventually(60, || tg.sent().contains(&(500, "hello bot".into()))),
        "no answer in the chat: {:?}\n{}",
        tg.sent(),
        tail(&s)
    );
    tg.user_writes(7, "alice", 501, "hi from alice");
    assert!(
        eventually(60, || tg.sent().contains(&(501, "hi from alice".into()))),
        "{:?}",
        tg.sent()
    );
    // A stranger is ignored and counted.
    let last = tg.user_writes(99, "mallory", 502, "let me in");
    assert!(
        eventually(30, || channel(&s, &ns, "bot", 0)["ignoredCount"] == 1),
        "{}",
        channel(&s, &ns, "bot", 0)
    );
    assert!(eventually(
        10,
        || channel(&s, &ns, "bot", 0)["lastUpdateId"] == last
    ));
    let ch = channel(&s, &ns, "bot", 0);
    assert_eq!(ch["messageCount"], 2, "{ch}");
    assert!(ch["lastMessageAt"].is_string(), "{ch}");
    assert!(
        !tg.sent().iter().any(|(chat, _)| *chat == 502),
        "{:?}",
        tg.sent()
    );
    assert!(first < last);

    // The message went the platform's way: an a2a_receive row naming the channel.
    let uid = get(&s, &ns, "bot")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let (code, body) = s.http(
        "GET",
        &format!("/workspaces/{uid}/activity?type=a2a_receive"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        j(&body).as_array().is_some_and(|rows| rows
            .iter()
            .any(|r| r["summary"] == "channel:telegram: hello bot")),
        "{body}"
    );

    // The canvas's list: every channel with its state, no token.
    let path = format!("/workspaces/{uid}/channels");
    let (code, body) = s.http("GET", &path, None, b"");
    assert_eq!(code, 200, "{body}");
    let list = j(&body);
    assert_eq!(list.as_array().map(Vec::len), Some(4), "{body}");
    assert_eq!(list[0]["state"], "Connected", "{body}");
    assert_eq!(
        (
            list[0]["message_count"].as_i64(),
            list[0]["ignored_count"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(list[0]["allowed_users"][1], "@alice");
    assert_eq!(list[0]["config"]["poll_timeout_seconds"], "1");
    assert_eq!(list[1]["reason"], "InvalidToken");
    assert!(!body.contains(GOOD) && !body.contains(BAD), "{body}");
    let (code, _) = s.http_raw("GET", &path, None, b"", false).expect("http");
    assert_eq!(code, 401);

    // kill -9: the restarted adapter resumes after the last update handled, nothing twice.
    let polls_before = tg.offsets().len();
    s.kill9();
    s.spawn();
    assert!(
        eventually(60, || tg.offsets().len() > polls_before),
        "no poll after the restart\n{}",
        tail(&s)
    );
    assert_eq!(
        tg.offsets()[polls_before],
        Some(last + 1),
        "{:?}",
        tg.offsets()
    );
    tg.user_writes(42, "carol", 500, "after restart");
    assert!(
        eventually(60, || tg.sent().contains(&(500, "after restart".into()))),
        "{:?}",
        tg.sent()
    );
    assert_eq!(
        tg.sent().iter().filter(|(_, t)| t == "hello bot").count(),
        1,
        "{:?}",
        tg.sent()
    );

    // Disabling through the canvas's route stops the polling.
    let (code, body) = s.http(
        "PATCH",
        &format!("{path}/0"),
        Some("application/json"),
        br#"{"enabled": false}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(j(&body)["enabled"], false, "{body}");
    assert!(
        eventually(30, || channel(&s, &ns, "bot", 0)["state"] == "Disabled"),
        "{}",
        channel(&s, &ns, "bot", 0)
    );
    std::thread::sleep(Duration::from_secs(3));
    let polls = tg.polls();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(tg.polls(), polls, "a disabled channel still polls");
    // Bad edits are precise and change nothing.
    for (p, b, want) in [
        (format!("{path}/9"), r#"{"enabled": true}"#, 404),
        (format!("{path}/x"), r#"{"enabled": true}"#, 400),
        (format!("{path}/0"), r#"{"enabled": "yes"}"#, 400),
        (
            format!("{path}/0"),
            r#"{"enabled": true, "type": "slack"}"#,
            400,
        ),
    ] {
        let (code, body) = s.http("PATCH", &p, Some("application/json"), b.as_bytes());
        assert_eq!(code, want, "{p} {b}: {body}");
    }
    assert_eq!(get(&s, &ns, "bot")["spec"]["channels"][0]["enabled"], false);
    // Enabled again, it answers again.
    let (code, body) = s.http(
        "PATCH",
        &format!("{path}/0"),
        Some("application/json"),
        br#"{"enabled": true}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(eventually(30, || channel(&s, &ns, "bot", 0)["state"] == "Connected"));
    let started = std::time::Instant::now();
    tg.user_writes(42, "carol", 500, "back again");
    assert!(
        eventually(60, || tg.sent().contains(&(500, "back again".into()))),
        "{:?}",
        tg.sent()
    );
    eprintln!(
        "measurement: chat -> agent -> chat round trip {} ms",
        started.elapsed().as_millis()
    );

    // A spec change restarts the adapter with it (a new getMe): mallory is allowed now.
    let get_me = || {
        tg.paths()
            .iter()
            .filter(|p| p.as_str() == "/bot<token>/getMe")
            .count()
    };
    let connects = get_me();
    ok(
        &s,
        &[
            "patch",
            "workspace",
            "bot",
            "-n",
            &ns,
            "--type",
            "json",
            "-p",
            r#"[{"op": "add", "path": "/spec/channels/0/allowedUsers/-", "value": "99"}]"#,
        ],
    );
    assert!(eventually(30, || get_me() > connects), "no restart");
    tg.user_writes(99, "mallory", 502, "now?");
    assert!(
        eventually(60, || tg.sent().contains(&(502, "now?".into()))),
        "{:?}\n{}",
        tg.sent(),
        tail(&s)
    );

    // A token rotated in the Secret reaches the connected adapter: given the refused token, the
    // channel says so; given the good one back, it connects again.
    let secret_with = |token: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tg\nstringData:\n  token: \"{token}\"\n  bad: \"{BAD}\"\n"
        )
    };
    apply(&s, &ns, &secret_with(BAD));
    assert!(
        eventually(60, || channel(&s, &ns, "bot", 0)["reason"]
            == "InvalidToken"),
        "the rotated token was not used: {}\n{}",
        channel(&s, &ns, "bot", 0),
        tail(&s)
    );
    apply(&s, &ns, &secret_with(GOOD));
    assert!(
        eventually(90, || channel(&s, &ns, "bot", 0)["state"] == "Connected"),
        "the token rotated back was not used: {}\n{}",
        channel(&s, &ns, "bot", 0),
        tail(&s)
    );

    // The refused token is in no Event and no log line.
    let (code, events) = s.http("GET", &format!("/api/v1/namespaces/{ns}/events"), None, b"");
    assert_eq!(code, 200, "{events}");
    assert!(events.contains("InvalidToken"), "{events}");
    let log = s.log();
    for text in [&events, &log] {
        assert!(
            !text.contains(BAD) && !text.contains(GOOD),
            "a token leaked"
        );
    }

    // Deleted, its adapter stops: the channel controller handles the change of that one
    // workspace (ADR 0025), with no pass over the others.
    ok(
        &s,
        &["delete", "workspace", "bot", "-n", &ns, "--timeout=120s"],
    );
    std::thread::sleep(Duration::from_secs(3));
    let polls = tg.polls();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        tg.polls(),
        polls,
        "a deleted workspace's channel still polls"
    );
}

/// Workspaces of `ns` as JSON.
fn workspaces(s: &Server, ns: &str) -> Vec<Value> {
    let (code, body) = s.http(
        "GET",
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    j(&body)["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn an_imported_org_brings_its_channel_with_the_token_in_a_secret() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let ns = format!("c{}", molecule::util::random_suffix(8));
    let _clean = Cleanup(ns.clone());
    let tg = FakeTelegram::start(GOOD);
    let templates = tempfile::tempdir().expect("templates");
    let desk = templates.path().join("desk");
    std::fs::create_dir_all(&desk).expect("mkdir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/org-templates/desk/org.yaml");
    std::fs::copy(fixture, desk.join("org.yaml")).expect("copy");
    std::fs::write(
        desk.join(".env"),
        format!("TG_BOT_TOKEN={GOOD}\nTG_BASE={}\n", tg.base),
    )
    .expect(".env");
    let root = templates.path().to_string_lossy().to_string();
    let mut args = FAST.to_vec();
    args.extend(["--org-templates", &root]);
    let s = Server::start_with(Backend::Sqlite, &args);
    apply(
        &s,
        &ns,
        "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: desk\nspec:\n  source:\n    dir: desk\n",
    );
    assert!(
        eventually(60, || workspaces(&s, &ns).len() == 1),
        "{:?}\n{}",
        workspaces(&s, &ns),
        tail(&s)
    );
    let name = workspaces(&s, &ns)[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let ws = get(&s, &ns, &name);
    // The unknown adapter was skipped and reported; the token is a Secret reference.
    let (_, import) = s.http(
        "GET",
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/orgimports/desk"),
        None,
        b"",
    );
    assert!(import.contains("carrier-pigeon"), "{import}");
    let channels = ws["spec"]["channels"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(channels.len(), 1, "{ws}");
    assert_eq!(channels[0]["configFrom"]["key"], "TG_BOT_TOKEN", "{ws}");
    assert!(
        !ws.to_string().contains(GOOD),
        "the token is in the Workspace: {ws}"
    );
    assert!(
        eventually(180, || phase(&s, &ns, &name) == "Online"),
        "{name} did not come Online:\n{}",
        tail(&s)
    );
    assert!(
        eventually(30, || channel(&s, &ns, &name, 0)["state"] == "Connected"),
        "{}\n{}",
        channel(&s, &ns, &name, 0),
        tail(&s)
    );
    tg.user_writes(42, "carol", 77, "hello desk");
    assert!(
        eventually(60, || tg.sent().contains(&(77, "hello desk".into()))),
        "{:?}",
        tg.sent()
    );
}
