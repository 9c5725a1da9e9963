//! A test org for the teams suites and benchmarks (ADR 0051): the real `molecule serve`
//! (Workspace controller, simulated container backend) and external workspaces whose agents
//! are the real echo agent (`molecule::agent::run`) on 127.0.0.1, each behind a counter that
//! records every A2A request it passes on, so "delivered exactly once" is checked where the
//! agent sees it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Backend, Server};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use molecule::resources::{LocalObjectReference, Workspace, WorkspaceSpec};
use serde_json::{Value, json};

/// Texts an agent received, in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

pub fn free_port() -> u16 {
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

pub struct Member {
    uid: String,
    token: String,
    seen: Seen,
}

/// A server and an org of external workspaces, each with a running echo agent.
pub struct Org {
    pub s: Server,
    dir: tempfile::TempDir,
    members: HashMap<String, Member>,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

fn start_server(backend: Backend, controllers: &str) -> Server {
    Server::start_with(
        backend,
        &["--controllers", controllers, "--backend", "simulated"],
    )
}

impl Org {
    /// `(name, parent)` pairs, parents first.
    pub async fn new(backend: Backend, members: &[(&str, Option<&str>)]) -> Org {
        Self::with_controllers(backend, "workspace", members).await
    }

    /// [`Org::new`] with the server running `controllers` (`--controllers`).
    pub async fn with_controllers(
        backend: Backend,
        controllers: &str,
        members: &[(&str, Option<&str>)],
    ) -> Org {
        let s = tokio::task::block_in_place(|| start_server(backend, controllers));
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
            org.members
                .insert(name.to_string(), Member { uid, token, seen });
        }
        org
    }

    pub fn uid(&self, name: &str) -> String {
        self.members[name].uid.clone()
    }

    pub fn token(&self, name: &str) -> String {
        self.members[name].token.clone()
    }

    pub fn seen(&self, name: &str) -> Vec<String> {
        self.members[name].seen.lock().expect("lock").clone()
    }

    /// A request as `token` (admin when `None`); (status, JSON body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let admin = self.s.token();
        let token = token.unwrap_or(&admin);
        let body = if body.is_null() {
            vec![]
        } else {
            body.to_string().into_bytes()
        };
        let (code, text) =
            tokio::task::block_in_place(|| self.s.http_as(method, path, Some(token), &body));
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `message/send` of `text` to workspace `name` through the platform (admin token).
    pub fn send(&self, name: &str, text: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/workspaces/{}/a2a", self.uid(name)),
            None,
            &a2a(text),
        )
    }

    pub fn delegations(&self, name: &str) -> Vec<Value> {
        let (code, v) = self.call(
            "GET",
            &format!("/workspaces/{}/delegations?limit=500", self.uid(name)),
            None,
            &Value::Null,
        );
        assert_eq!(code, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    pub fn queue(&self, name: &str) -> Value {
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
    pub async fn wait_online(&self) {
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

pub fn a2a(text: &str) -> Value {
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
pub async fn eventually(secs: u64, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !tokio::task::block_in_place(&mut probe) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn reply_text(v: &Value) -> String {
    v["result"]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
