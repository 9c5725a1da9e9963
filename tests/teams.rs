//! The busy queue and delegations end to end (ADR 0051): the real `molecule serve` (Workspace
//! controller, simulated container backend), external workspaces whose agents are the real echo
//! agent (`molecule::agent::run`) on 127.0.0.1, each behind a counter that records every A2A
//! request it passes on — so "delivered exactly once" is checked where the agent sees it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Server};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use molecule::resources::{LocalObjectReference, Workspace, WorkspaceSpec};
use serde_json::{Value, json};

/// Texts an agent received, in order.
type Seen = Arc<Mutex<Vec<String>>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The text parts of an A2A request.
fn text_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["params"]["message"]["parts"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A counter in front of an agent: records each request's text, then forwards it.
async fn counter(listen: u16, agent: u16, seen: Seen) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
        .await
        .expect("bind counter");
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.lock().expect("lock").push(text_of(&body));
            let client = molecule::net::http::Client::new(molecule::net::http::Timeouts::uniform(
                Duration::from_secs(60),
            ));
            match client
                .send(
                    hyper::http::Method::POST,
                    &format!("http://127.0.0.1:{agent}/"),
                    &[],
                    Some((body, "application/json")),
                    1 << 20,
                )
                .await
            {
                Ok(r) => (
                    axum::http::StatusCode::from_u16(r.status).expect("status"),
                    r.body,
                ),
                Err(_) => (
                    axum::http::StatusCode::BAD_GATEWAY,
                    axum::body::Bytes::new(),
                ),
            }
        }
    });
    let _ = axum::serve(listener, app).await;
}

struct Member {
    uid: String,
    token: String,
    seen: Seen,
}

/// A server and an org of external workspaces, each with a running echo agent.
struct Org {
    s: Server,
    dir: tempfile::TempDir,
    members: HashMap<String, Member>,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

fn start_server(backend: Backend) -> Server {
    Server::start_with(
        backend,
        &["--controllers", "workspace", "--backend", "simulated"],
    )
}

impl Org {
    /// `(name, parent)` pairs, parents first.
    async fn new(backend: Backend, members: &[(&str, Option<&str>)]) -> Org {
        let s = tokio::task::block_in_place(|| start_server(backend));
        let client = s.client().await;
        let api: Api<Workspace> = Api::namespaced(client.clone(), "default");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        let dir = tempfile::tempdir().expect("tmp");
        let mut org = Org {
            s,
            dir,
            members: HashMap::new(),
            _stops: vec![],
        };
        for (name, parent) in members {
            let (front, agent) = (free_port(), free_port());
            let ws = Workspace::new(
                name,
                WorkspaceSpec {
                    runtime: Some("external".into()),
                    url: Some(format!("http://127.0.0.1:{front}")),
                    parent_ref: parent.map(|p| LocalObjectReference { name: p.into() }),
                    ..Default::default()
                },
            );
            let created = api
                .create(&PostParams::default(), &ws)
                .await
                .expect("create workspace");
            let uid = created.uid().expect("uid");
            let token = wait_token(&secrets, name).await;
            let seen: Seen = Arc::default();
            tokio::spawn(counter(front, agent, seen.clone()));
            let cfg = org.dir.path().join(format!("{name}.yaml"));
            let tok = org.dir.path().join(format!("{name}.token"));
            std::fs::write(
                &cfg,
                format!(
                    "workspace_id: {uid}\nname: {name}\nruntime: echo\nplatform_url: http://127.0.0.1:{}\nagent_url: http://127.0.0.1:{front}\nheartbeat_seconds: 1\n",
                    org.s.port
                ),
            )
            .expect("config");
            std::fs::write(&tok, &token).expect("token file");
            org._stops.push(spawn_agent(cfg, tok, agent));
            org.members.insert(
                name.to_string(),
                Member { uid, token, seen },
            );
        }
        org
    }

    fn uid(&self, name: &str) -> String {
        self.members[name].uid.clone()
    }

    fn token(&self, name: &str) -> String {
        self.members[name].token.clone()
    }

    fn seen(&self, name: &str) -> Vec<String> {
        self.members[name].seen.lock().expect("lock").clone()
    }

    /// A request as `token` (admin when `None`); (status, JSON body).
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let admin = self.s.token();
        let token = token.unwrap_or(&admin);
        let body = if body.is_null() {
            vec![]
        } else {
            body.to_string().into_bytes()
        };
        let (code, text) = tokio::task::block_in_place(|| {
            self.s.http_as(method, path, Some(token), &body)
        });
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `message/send` of `text` to workspace `name` through the platform (admin token).
    fn send(&self, name: &str, text: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/workspaces/{}/a2a", self.uid(name)),
            None,
            &a2a(text),
        )
    }

    fn delegations(&self, name: &str) -> Vec<Value> {
        let (code, v) = self.call(
            "GET",
            &format!("/workspaces/{}/delegations?limit=500", self.uid(name)),
            None,
            &Value::Null,
        );
        assert_eq!(code, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    fn queue(&self, name: &str) -> Value {
        let (code, v) = self.call(
            "GET",
            &format!("/workspaces/{}/queue?limit=500", self.uid(name)),
            None,
            &Value::Null,
        );
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Waits until every agent heartbeats (its workspace is Online).
    async fn wait_online(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, list) = self.call("GET", "/workspaces", None, &Value::Null);
            let online = list
                .as_array()
                .map(|l| l.iter().filter(|w| w["status"] == "online").count())
                .unwrap_or(0);
            if online == self.members.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agents did not come online: {list}\n{}",
                self.s.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn a2a(text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {
        "role": "user", "parts": [{"kind": "text", "text": text}]}}})
}

async fn wait_token(secrets: &Api<Secret>, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(s)) = secrets.get_opt(&format!("{name}-agent-token")).await
            && let Some(t) = s.data.as_ref().and_then(|d| d.get("token"))
        {
            return String::from_utf8(t.0.clone()).expect("utf-8 token");
        }
        assert!(Instant::now() < deadline, "no token Secret for {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_agent(config: PathBuf, token: PathBuf, port: u16) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let opts = molecule::agent::AgentOptions {
            config_path: config,
            token_path: token,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            shutdown: Some(rx),
        };
        if let Err(e) = molecule::agent::run(opts).await {
            eprintln!("echo agent failed: {e:#}");
        }
    });
    tx
}

/// Polls `probe` until it holds, at most `secs`.
async fn eventually(secs: u64, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !tokio::task::block_in_place(&mut probe) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn reply_text(v: &Value) -> String {
    v["result"]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_agent_queues_and_delegations_complete() {
    let org = Org::new(
        Backend::Sqlite,
        &[
            ("lead", None),
            ("a", Some("lead")),
            ("b", Some("lead")),
            ("a1", Some("a")),
            ("b1", Some("b")),
        ],
    )
    .await;
    org.wait_online().await;

    // The queue: while `sleep` holds the agent, the next call gets 202 and is delivered once
    // the first is done.
    let a = org.uid("a");
    let first = {
        let port = org.s.port;
        let admin = org.s.token();
        let path = format!("/workspaces/{a}/a2a");
        std::thread::spawn(move || {
            common::post_url(
                &format!("http://127.0.0.1:{port}{path}"),
                &a2a("sleep 1500 first").to_string(),
                Some(&admin),
            )
            .expect("first call")
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, queued) = org.send("a", "second");
    assert_eq!(code, 202, "{queued}");
    assert_eq!(queued["queued"], true);
    assert_eq!(queued["queue_depth"], 1);
    let queue_id = queued["queue_id"].as_str().expect("queue_id").to_string();
    let (code, body) = first.join().expect("join");
    assert_eq!(code, 200, "{body}");
    eventually(20, "the queued call to be delivered", || {
        org.queue("a")["items"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["queue_id"] == queue_id.as_str() && i["status"] == "completed"))
    })
    .await;
    let q = org.queue("a");
    let item = &q["items"][0];
    assert_eq!(item["response_preview"], "second", "{q}");
    assert_eq!(q["queue_depth"], 0);
    assert_eq!(org.seen("a"), vec!["sleep 1500 first", "second"], "in order, once each");

    // A delegation completes, with its events' statuses on record.
    let lead = org.uid("lead");
    let b = org.uid("b");
    let (code, d) = org.call(
        "POST",
        &format!("/workspaces/{lead}/delegate"),
        Some(&org.token("lead")),
        &json!({"target_id": b, "task": "hello b", "idempotency_key": "k-1"}),
    );
    assert_eq!(code, 202, "{d}");
    assert_eq!(d["status"], "delegated");
    let id = d["delegation_id"].as_str().expect("id").to_string();
    eventually(20, "the delegation to complete", || {
        org.delegations("lead")
            .iter()
            .any(|x| x["delegation_id"] == id.as_str() && x["status"] == "completed")
    })
    .await;
    let row = org
        .delegations("lead")
        .into_iter()
        .find(|x| x["delegation_id"] == id.as_str())
        .expect("listed");
    assert_eq!((row["response_preview"].clone(), row["direction"].clone()), (json!("hello b"), json!("out")));
    let theirs = org.delegations("b");
    assert_eq!(theirs[0]["direction"], "in", "the target lists it too");
    // The idempotent retry gets the same delegation, and nothing is sent again.
    let (code, again) = org.call(
        "POST",
        &format!("/workspaces/{lead}/delegate"),
        Some(&org.token("lead")),
        &json!({"target_id": b, "task": "hello b", "idempotency_key": "k-1"}),
    );
    assert_eq!((code, again["delegation_id"].clone(), again["idempotent_hit"].clone()), (200, json!(id), json!(true)), "{again}");
    assert_eq!(org.seen("b"), vec!["hello b"]);

    // Refusals: each precise, none writes anything.
    let a1 = org.uid("a1");
    let b1 = org.uid("b1");
    let cases: Vec<(&str, String, Option<String>, Value, u16)> = vec![
        ("self", lead.clone(), Some(org.token("lead")), json!({"target_id": lead, "task": "x"}), 400),
        ("cousin", a1.clone(), Some(org.token("a1")), json!({"target_id": b1, "task": "x"}), 403),
        ("unknown target", lead.clone(), None, json!({"target_id": "no-such-uid", "task": "x"}), 404),
        ("no task", lead.clone(), None, json!({"target_id": b}), 400),
        ("not an object", lead.clone(), None, json!(["x"]), 400),
        ("bad key", lead.clone(), None, json!({"target_id": b, "task": "x", "idempotency_key": "a b"}), 400),
        ("another's token", lead.clone(), Some(org.token("b")), json!({"target_id": b, "task": "x"}), 403),
        ("a wrong token", lead.clone(), Some("nope".into()), json!({"target_id": b, "task": "x"}), 401),
    ];
    for (why, source, token, body, want) in cases {
        let (code, v) = org.call(
            "POST",
            &format!("/workspaces/{source}/delegate"),
            token.as_deref(),
            &body,
        );
        assert_eq!(code, want, "{why}: {v}");
        assert!(v["error"].is_string(), "{why}: {v}");
    }
    assert!(org.delegations("a1").is_empty(), "the refused delegation left nothing");
    assert_eq!(org.delegations("lead").len(), 1);

    // An agent records a delegation it sent itself and reports how it ended.
    let (code, r) = org.call(
        "POST",
        &format!("/workspaces/{a}/delegations/record"),
        Some(&org.token("a")),
        &json!({"target_id": a1, "task": "direct", "delegation_id": "task-77"}),
    );
    assert_eq!((code, r["status"].clone()), (202, json!("recorded")), "{r}");
    let update = format!("/workspaces/{a}/delegations/task-77/update");
    let (code, _) = org.call("POST", &update, Some(&org.token("a")), &json!({"status": "done"}));
    assert_eq!(code, 400);
    let (code, u) = org.call(
        "POST",
        &update,
        Some(&org.token("a")),
        &json!({"status": "completed", "response_preview": "all good"}),
    );
    assert_eq!((code, u["status"].clone()), (200, json!("completed")), "{u}");
    let (code, _) = org.call("POST", &update, Some(&org.token("a")), &json!({"status": "failed"}));
    assert_eq!(code, 409, "a finished delegation stays finished");
    let (code, _) = org.call(
        "POST",
        &format!("/workspaces/{lead}/delegations/task-77/update"),
        Some(&org.token("lead")),
        &json!({"status": "failed"}),
    );
    assert_eq!(code, 404, "only its source updates it");

    // The echo agent delegates through the platform and answers with the peer's reply.
    let (code, reply) = org.send("lead", "delegate b: ping from lead");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply_text(&reply), "ping from lead", "{reply}");
    assert!(org.seen("b").contains(&"ping from lead".to_string()));
    let (code, reply) = org.send("a1", "delegate b1: you are my cousin");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["error"]["code"], -32000, "a cousin is out of reach: {reply}");
}

/// `kill -9` of serve while calls wait in the queue and a delegation is in flight: after the
/// restart every queued call and queued delegation is delivered exactly once, and the one in
/// flight ends failed (never stuck in dispatched, never sent again).
async fn kill9_during_queue_and_delegations(postgres: bool) {
    let Some(backend) = Backend::get(postgres).await else {
        return;
    };
    let mut org = Org::new(
        backend,
        &[("lead", None), ("worker", Some("lead")), ("other", Some("lead"))],
    )
    .await;
    org.wait_online().await;
    let (lead, worker, other) = (org.uid("lead"), org.uid("worker"), org.uid("other"));
    let hold = {
        let port = org.s.port;
        let admin = org.s.token();
        std::thread::spawn(move || {
            let _ = common::post_url(
                &format!("http://127.0.0.1:{port}/workspaces/{worker}/a2a"),
                &a2a("sleep 2500 hold").to_string(),
                Some(&admin),
            );
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..5 {
        let (code, v) = org.send("worker", &format!("q{i}"));
        assert_eq!(code, 202, "{v}");
    }
    let delegate = |target: &str, task: &str| {
        let (code, v) = org.call(
            "POST",
            &format!("/workspaces/{lead}/delegate"),
            Some(&org.token("lead")),
            &json!({"target_id": target, "task": task}),
        );
        assert_eq!(code, 202, "{v}");
        v["delegation_id"].as_str().expect("id").to_string()
    };
    let queued: Vec<String> = (0..3).map(|i| delegate(&org.uid("worker"), &format!("d{i}"))).collect();
    let in_flight = delegate(&other, "sleep 5000 inflight");
    eventually(10, "the delegations to settle into queued and dispatched", || {
        let list = org.delegations("lead");
        let status = |id: &str| list.iter().find(|d| d["delegation_id"] == id).map(|d| d["status"].clone());
        queued.iter().all(|id| status(id) == Some(json!("queued")))
            && status(&in_flight) == Some(json!("dispatched"))
    })
    .await;

    org.s.kill9();
    let _ = hold.join();
    tokio::task::block_in_place(|| org.s.spawn());

    eventually(40, "every queued call and delegation to finish after the restart", || {
        let q = org.queue("worker");
        let items = q["items"].as_array().cloned().unwrap_or_default();
        let done = items.iter().all(|i| i["status"] == "completed");
        let delegations = org.delegations("lead");
        let settled = delegations
            .iter()
            .all(|d| d["status"] == "completed" || d["status"] == "failed");
        done && items.len() == 8 && settled
    })
    .await;
    let list = org.delegations("lead");
    for id in &queued {
        let d = list.iter().find(|d| d["delegation_id"] == id.as_str()).expect("listed");
        assert_eq!(d["status"], "completed", "{d}");
    }
    let d = list.iter().find(|d| d["delegation_id"] == in_flight.as_str()).expect("listed");
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap_or("").contains("restarted"), "{d}");

    // At the agents: each text exactly once; the queue in order.
    let seen = org.seen("worker");
    let mut want: Vec<String> = vec!["sleep 2500 hold".into()];
    want.extend((0..5).map(|i| format!("q{i}")));
    want.extend((0..3).map(|i| format!("d{i}")));
    assert_eq!(seen, want, "delivered once each, in order");
    assert_eq!(org.seen("other"), vec!["sleep 5000 inflight"], "not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_sqlite_loses_and_repeats_nothing() {
    kill9_during_queue_and_delegations(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_postgres_loses_and_repeats_nothing() {
    kill9_during_queue_and_delegations(true).await;
}
