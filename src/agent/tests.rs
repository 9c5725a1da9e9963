//! The agent end to end: a fake platform on 127.0.0.1, the agent on a free port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::{Json, Router};
use hyper::http::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::net::http::{self, Client, Timeouts};

/// One request to the agent (or the fake), JSON when a body is given.
async fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> Result<http::Response, http::Error> {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let body = body.map(|b| (Bytes::copy_from_slice(b), "application/json"));
    Client::new(Timeouts::uniform(Duration::from_secs(10)))
        .send(method, url, &[], body, MAX_RESPONSE_BYTES)
        .await
}

fn json_of(resp: &http::Response) -> Value {
    serde_json::from_slice(&resp.body).expect("json body")
}

// ----- fake platform ---------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Call {
    path: String,
    token: Option<String>,
    status: u16,
    body: Value,
}

#[derive(Debug, Default)]
struct Fake {
    /// The only token accepted; anything else gets 401.
    accept: String,
    calls: Vec<Call>,
    /// Status for the next authorized heartbeat (then back to 200).
    next_heartbeat_status: Option<u16>,
    /// How many authorized registrations to answer 503 first.
    fail_registrations: u32,
}

type FakeHandle = Arc<Mutex<Fake>>;

async fn fake_endpoint(
    State(fake): State<FakeHandle>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut fake = fake.lock().unwrap();
    let path = uri.path().to_string();
    let status = if token.as_deref() != Some(fake.accept.as_str()) {
        401
    } else if path.ends_with("/heartbeat") {
        fake.next_heartbeat_status.take().unwrap_or(200)
    } else if fake.fail_registrations > 0 {
        fake.fail_registrations -= 1;
        503
    } else {
        200
    };
    fake.calls.push(Call {
        path,
        token,
        status,
        body,
    });
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"status": status})),
    )
}

async fn start_platform(token: &str) -> (String, FakeHandle) {
    let fake = Arc::new(Mutex::new(Fake {
        accept: token.to_string(),
        ..Fake::default()
    }));
    let app = Router::new()
        .route("/registry/register", post(fake_endpoint))
        .route("/registry/heartbeat", post(fake_endpoint))
        .with_state(fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/"), fake)
}

fn calls(fake: &FakeHandle, path: &str) -> Vec<Call> {
    fake.lock()
        .unwrap()
        .calls
        .iter()
        .filter(|c| c.path == path)
        .cloned()
        .collect()
}

fn all_calls(fake: &FakeHandle) -> Vec<Call> {
    fake.lock().unwrap().calls.clone()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- agent harness ---------------------------------------------------------------------

struct Agent {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn token_path(&self) -> PathBuf {
        self.dir.path().join(".auth_token")
    }

    /// Replaces the token file atomically.
    fn rotate_token(&self, token: &str) {
        let tmp = self.dir.path().join(".auth_token.tmp");
        std::fs::write(&tmp, format!("{token}\n")).unwrap();
        std::fs::rename(&tmp, self.token_path()).unwrap();
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent did not stop")
            .unwrap()
            .unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_agent(platform_url: &str, token: &str) -> Agent {
    start_agent_in(tempfile::tempdir().unwrap(), platform_url, token, "").await
}

/// The agent on `dir` (its config directory), with `extra` appended to config.yaml.
async fn start_agent_in(
    dir: tempfile::TempDir,
    platform_url: &str,
    token: &str,
    extra: &str,
) -> Agent {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "workspace_id: \"ws-test-1\"\nname: alpha\nrole: researcher\nruntime: echo\n\
         platform_url: \"{platform_url}\"\nagent_url: \"http://{addr}\"\n\
         heartbeat_seconds: 1\nsomething_new: [1, 2, 3]\n{extra}"
    );
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    std::fs::write(dir.path().join(".auth_token"), format!("  {token}\n")).unwrap();
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(run(AgentOptions {
        config_path,
        token_path: dir.path().join(".auth_token"),
        listen: addr,
        shutdown: Some(rx),
    }));
    let agent = Agent {
        addr,
        dir,
        stop,
        task,
    };
    let health = agent.url("/health");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(resp) = request("GET", &health, None).await
            && resp.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "agent never became healthy");
        assert!(!agent.task.is_finished(), "agent exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
}

#[tokio::test]
async fn lists_only_complete_plugins_and_rereads_skills() {
    let (platform, _fake) = start_platform("tok").await;
    let agent = start_agent(&platform, "tok").await;
    let plugins = agent.dir.path().join("plugins");
    let write = |rel: &str, text: &str| {
        let p = plugins.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("hello/plugin.yaml", "name: hello\nversion: 1.0.0\n");
    write("hello/skills/greet/SKILL.md", "# Greet v1");
    write("hello/hooks/on-start.sh", "#!/bin/sh");
    write("hello/.complete", "abc123\n");
    write("half/plugin.yaml", "name: half\n");
    write(".staging/hello.1/plugin.yaml", "name: hello\n");
    let get = |url: String| async move {
        let r = request("GET", &url, None).await.unwrap();
        assert_eq!(r.status, 200);
        json_of(&r)
    };
    let body: Value = get(agent.url("/plugins")).await;
    let list = body["plugins"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["version"], "1.0.0");
    assert_eq!(list[0]["sha"], "abc123");
    assert_eq!(list[0]["skills"][0]["content"], "# Greet v1");
    assert_eq!(list[0]["hooks"][0], "on-start.sh");
    // A SKILL.md change is visible on the next request, no restart.
    write("hello/skills/greet/SKILL.md", "# Greet v2");
    let body: Value = get(agent.url("/plugins")).await;
    assert_eq!(body["plugins"][0]["skills"][0]["content"], "# Greet v2");
    agent.stop().await;
}

fn default_card() -> Value {
    json!({
        "name": "alpha",
        "description": "Echo agent",
        "skills": [{"id": "echo", "name": "Echo"}],
    })
}

async fn rpc(url: &str, body: &Value) -> Value {
    let resp = request("POST", url, Some(body.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    json_of(&resp)
}

// ----- agent tests -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_then_heartbeats_with_the_token() {
    let (platform, fake) = start_platform("tok-1").await;
    let agent = start_agent(&platform, "tok-1").await;

    wait_until("two accepted heartbeats", || {
        calls(&fake, "/registry/heartbeat")
            .iter()
            .filter(|c| c.status == 200)
            .count()
            >= 2
    })
    .await;

    let all = all_calls(&fake);
    assert_eq!(all[0].path, "/registry/register", "registers first");
    let registers = calls(&fake, "/registry/register");
    assert_eq!(registers.len(), 1);
    assert_eq!(registers[0].token.as_deref(), Some("tok-1"));
    assert_eq!(registers[0].status, 200);
    assert_eq!(
        registers[0].body,
        json!({
            "id": "ws-test-1",
            "url": format!("http://{}", agent.addr),
            "agent_card": default_card(),
        })
    );
    for hb in calls(&fake, "/registry/heartbeat") {
        assert_eq!(hb.token.as_deref(), Some("tok-1"));
        assert_eq!(hb.body["workspace_id"], "ws-test-1");
        assert_eq!(hb.body["error_rate"], json!(0.0));
        assert_eq!(hb.body["sample_error"], Value::Null);
        assert_eq!(hb.body["active_tasks"], json!(0));
        assert_eq!(hb.body["current_task"], Value::Null);
        assert!(hb.body["uptime_seconds"].is_u64());
        assert_eq!(hb.body["runtime_state"], "ok");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a2a_json_rpc() {
    let (platform, fake) = start_platform("tok-1").await;
    let agent = start_agent(&platform, "tok-1").await;

    // Echo on `/`, numeric id kept.
    let reply = rpc(
        &agent.url("/"),
        &json!({
            "jsonrpc": "2.0", "id": 7, "method": "message/send",
            "params": {"message": {"role": "user", "messageId": "m-1",
                "parts": [{"kind": "text", "text": "hi"}]}},
        }),
    )
    .await;
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["id"], 7);
    let result = &reply["result"];
    assert_eq!(result["kind"], "message");
    assert_eq!(result["role"], "agent");
    assert_eq!(result["parts"], json!([{"kind": "text", "text": "hi"}]));
    let first_id = result["messageId"].as_str().unwrap().to_string();
    assert_eq!(first_id.len(), 36);
    assert_ne!(first_id, "m-1");

    // Echo on `/a2a`, string id, the older `type` form, parts concatenated.
    let reply = rpc(
        &agent.url("/a2a"),
        &json!({
            "jsonrpc": "2.0", "id": "req-abc", "method": "message/send",
            "params": {"message": {"role": "user", "messageId": "m-2", "contextId": "ctx-1",
                "parts": [{"type": "text", "text": "hello, "},
                          {"kind": "data", "data": {"x": 1}},
                          {"kind": "text", "text": "world"}]}},
        }),
    )
    .await;
    assert_eq!(reply["id"], "req-abc");
    assert_eq!(
        reply["result"]["parts"],
        json!([{"kind": "text", "text": "hello, world"}])
    );
    assert_eq!(reply["result"]["contextId"], "ctx-1");
    assert_ne!(reply["result"]["messageId"].as_str().unwrap(), first_id);

    // Unknown method.
    let reply = rpc(
        &agent.url("/"),
        &json!({"jsonrpc": "2.0", "id": 8, "method": "tasks/frobnicate", "params": {}}),
    )
    .await;
    assert_eq!(reply["id"], 8);
    assert_eq!(reply["error"]["code"], -32601);
    assert!(reply.get("result").is_none());

    // Invalid params.
    let reply = rpc(
        &agent.url("/"),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "message/send",
                "params": {"message": {"role": "user"}}}),
    )
    .await;
    assert_eq!(reply["id"], 9);
    assert_eq!(reply["error"]["code"], -32602);

    // Malformed JSON.
    let resp = request(
        "POST",
        &agent.url("/"),
        Some(b"{\"jsonrpc\": \"2.0\", \"id\": 1, "),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    let reply = json_of(&resp);
    assert_eq!(reply["error"]["code"], -32700);
    assert_eq!(reply["id"], Value::Null);

    // Body cap.
    let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
    let resp = request("POST", &agent.url("/a2a"), Some(&huge))
        .await
        .unwrap();
    assert_eq!(resp.status, 413);

    // Health and agent card.
    let resp = request("GET", &agent.url("/health"), None).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(json_of(&resp), json!({"status": "ok"}));
    let resp = request("GET", &agent.url("/.well-known/agent.json"), None)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(json_of(&resp), default_card());

    // The errors show up in a heartbeat.
    wait_until("a heartbeat reporting errors", || {
        calls(&fake, "/registry/heartbeat").iter().any(|c| {
            c.status == 200
                && c.body["error_rate"].as_f64().unwrap_or(0.0) > 0.0
                && c.body["sample_error"].is_string()
        })
    })
    .await;
    let total_errors: f64 = calls(&fake, "/registry/heartbeat")
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.body["error_rate"].as_f64().unwrap())
        .sum();
    assert!(total_errors > 0.0 && total_errors <= 4.0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rereads_a_rotated_token_on_401() {
    let (platform, fake) = start_platform("tok-old").await;
    let agent = start_agent(&platform, "tok-old").await;
    wait_until("a heartbeat with the old token", || {
        calls(&fake, "/registry/heartbeat")
            .iter()
            .any(|c| c.status == 200)
    })
    .await;

    // The operator rotates the token: new file first, then the platform flips.
    agent.rotate_token("tok-new");
    let before = {
        let mut fake = fake.lock().unwrap();
        fake.accept = "tok-new".to_string();
        fake.calls.len()
    };

    wait_until("a heartbeat with the new token", || {
        calls(&fake, "/registry/heartbeat")
            .iter()
            .any(|c| c.status == 200 && c.token.as_deref() == Some("tok-new"))
    })
    .await;
    let after: Vec<Call> = all_calls(&fake).into_iter().skip(before).collect();
    // Rejected with the old token, then retried at once with the new one.
    assert_eq!(after[0].path, "/registry/heartbeat");
    assert_eq!(after[0].status, 401);
    assert_eq!(after[0].token.as_deref(), Some("tok-old"));
    assert_eq!(after[1].path, "/registry/heartbeat");
    assert_eq!(after[1].status, 200);
    assert_eq!(after[1].token.as_deref(), Some("tok-new"));
    assert_eq!(after[1].body["workspace_id"], "ws-test-1");
    assert_eq!(
        calls(&fake, "/registry/register").len(),
        1,
        "no re-registration"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_again_after_a_404_heartbeat() {
    let (platform, fake) = start_platform("tok-1").await;
    let agent = start_agent(&platform, "tok-1").await;
    wait_until("a first heartbeat", || {
        calls(&fake, "/registry/heartbeat")
            .iter()
            .any(|c| c.status == 200)
    })
    .await;
    fake.lock().unwrap().next_heartbeat_status = Some(404);

    wait_until("a second registration", || {
        calls(&fake, "/registry/register").len() >= 2
    })
    .await;
    let all = all_calls(&fake);
    let forgotten = all
        .iter()
        .position(|c| c.path == "/registry/heartbeat" && c.status == 404)
        .unwrap();
    assert_eq!(all[forgotten + 1].path, "/registry/register");
    assert_eq!(all[forgotten + 1].status, 200);
    assert_eq!(all[forgotten + 1].body["id"], "ws-test-1");

    wait_until("heartbeats after re-registering", || {
        let all = all_calls(&fake);
        all.iter()
            .skip(forgotten + 2)
            .any(|c| c.path == "/registry/heartbeat" && c.status == 200)
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_retries_and_picks_up_a_new_token() {
    let (platform, fake) = start_platform("tok-right").await;
    fake.lock().unwrap().fail_registrations = 1;
    let agent = start_agent(&platform, "tok-wrong").await;

    // 401, immediate retry after re-reading (still wrong), then backoff, ...
    wait_until("rejected registrations", || {
        calls(&fake, "/registry/register")
            .iter()
            .filter(|c| c.status == 401)
            .count()
            >= 4
    })
    .await;
    let rejected = calls(&fake, "/registry/register");
    assert!(
        rejected
            .iter()
            .all(|c| c.token.as_deref() == Some("tok-wrong"))
    );

    agent.rotate_token("tok-right");
    wait_until("a successful registration", || {
        calls(&fake, "/registry/register")
            .iter()
            .any(|c| c.status == 200)
    })
    .await;
    let registers = calls(&fake, "/registry/register");
    let statuses: Vec<u16> = registers.iter().map(|c| c.status).collect();
    // The first authorized attempt got 503 and was retried after a backoff.
    let first_ok_token = registers
        .iter()
        .position(|c| c.token.as_deref() == Some("tok-right"))
        .unwrap();
    assert_eq!(statuses[first_ok_token], 503, "{statuses:?}");
    assert_eq!(*statuses.last().unwrap(), 200, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn fails_fast_without_workspace_id_or_token() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, "platform_url: http://127.0.0.1:1\n").unwrap();
    std::fs::write(dir.path().join(".auth_token"), "t").unwrap();
    let opts = AgentOptions {
        config_path: config_path.clone(),
        token_path: dir.path().join(".auth_token"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shutdown: None,
    };
    let err = run(opts).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("workspace_id is missing"),
        "{err:#}"
    );

    std::fs::write(
        &config_path,
        "workspace_id: w\nplatform_url: http://127.0.0.1:1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".auth_token"), " \n").unwrap();
    let opts = AgentOptions {
        config_path,
        token_path: dir.path().join(".auth_token"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shutdown: None,
    };
    let err = run(opts).await.unwrap_err();
    assert!(format!("{err:#}").contains("empty"), "{err:#}");
}

async fn activity(agent: &Agent) -> Value {
    json_of(
        &request("GET", &agent.url("/activity"), None)
            .await
            .expect("activity"),
    )
}

async fn wait_activity(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = activity(agent).await;
        if pred(&a) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {a}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn texts(a: &Value) -> Vec<String> {
    a["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn the_initial_prompt_is_sent_once_and_never_again_after_a_restart() {
    let (platform, _fake) = start_platform("tok").await;
    let prompt = "initial_prompt: |\n  Read the brief.\n  Then plan.\n";
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let agent = start_agent_in(dir, &platform, "tok", prompt).await;
    let a = wait_activity(&agent, "the initial prompt", |a| {
        a["initial_prompt"]["sent"] == true
    })
    .await;
    assert_eq!(texts(&a), vec!["Read the brief.\nThen plan.\n".to_string()]);
    let id = a["messages"][0]["message_id"].as_str().unwrap_or("");
    assert!(id.starts_with("initial-"), "{a}");
    assert!(keep.join(prompts::MARKER).exists(), "the marker is written");
    // A restart (same config directory, a new process) does not send it again.
    let dir = tempfile::TempDir::new_in(keep.parent().unwrap()).unwrap();
    for f in ["config.yaml", ".auth_token", prompts::MARKER] {
        std::fs::copy(keep.join(f), dir.path().join(f)).unwrap();
    }
    agent.stop().await;
    let again = start_agent_in(dir, &platform, "tok", prompt).await;
    let a = wait_activity(&again, "the marker to be seen", |a| {
        a["initial_prompt"]["already_done"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a2 = activity(&again).await;
    assert!(texts(&a2).is_empty(), "not sent again: {a2}");
    assert_eq!(a["initial_prompt"]["sent"], false);
    again.stop().await;
}

#[tokio::test]
async fn the_idle_prompt_is_sent_after_the_interval_without_work() {
    let (platform, _fake) = start_platform("tok").await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent_in(
        dir,
        &platform,
        "tok",
        "idle_prompt: anything new?\nidle_interval_seconds: 1\n",
    )
    .await;
    assert!(
        texts(&activity(&agent).await).is_empty(),
        "not before the interval"
    );
    let a = wait_activity(&agent, "an idle prompt", |a| !texts(a).is_empty()).await;
    assert_eq!(texts(&a)[0], "anything new?");
    assert!(
        a["messages"][0]["message_id"]
            .as_str()
            .unwrap_or("")
            .starts_with("idle-")
    );
    // And again after another interval without work.
    wait_activity(&agent, "a second idle prompt", |a| texts(a).len() >= 2).await;
    assert_eq!(
        activity(&agent).await["initial_prompt"]["configured"],
        false
    );
    agent.stop().await;
}
