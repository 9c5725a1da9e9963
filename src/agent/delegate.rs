//! The echo agent as a team player (ADR 0051): two commands in a `message/send` text, so that
//! the platform's busy queue and delegations run for real without a model.
//!
//! - `sleep <ms> [text]` holds a task for `ms` milliseconds (at most ten minutes), reported in
//!   the heartbeats' `active_tasks`, then echoes the text;
//! - `delegate <peer name>: <text>` finds the peer among the workspaces this one may talk to
//!   (`GET /registry/:id/peers`, else `GET /workspaces`), delegates `text` to it through the
//!   platform (`POST /workspaces/:id/delegate`, the message id as idempotency key), waits for
//!   the delegation to finish (`GET /workspaces/:id/delegations`) and answers with the peer's
//!   reply, or a JSON-RPC error when it failed.
//!
//! Anything else is not a command and goes to the plain echo.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hyper::http::Method;
use serde_json::{Value, json};

use super::config::read_token;
use super::state::AgentState;
use crate::net::http::{Client, Timeouts};

/// Longest `sleep`.
pub const MAX_SLEEP_MS: u64 = 600_000;
/// How long `delegate` waits for the peer's answer.
pub const DELEGATION_WAIT: Duration = Duration::from_secs(300);
const POLL_EVERY: Duration = Duration::from_millis(200);
const MAX_ANSWER: usize = 4 << 20;

/// How the agent reaches the platform for team work.
pub(super) struct Delegator {
    workspace_id: String,
    platform_url: String,
    token_path: PathBuf,
    http: Client,
}

/// A command found in a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Command {
    Sleep { ms: u64 },
    Delegate { peer: String, text: String },
}

/// The command a message text holds, if any.
pub(super) fn parse(text: &str) -> Option<Command> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("sleep ") {
        let ms = rest.split_whitespace().next()?.parse::<u64>().ok()?;
        return Some(Command::Sleep {
            ms: ms.min(MAX_SLEEP_MS),
        });
    }
    let rest = t.strip_prefix("delegate ")?;
    let (peer, text) = rest.split_once(':')?;
    let (peer, text) = (peer.trim(), text.trim());
    (!peer.is_empty() && !text.is_empty()).then(|| Command::Delegate {
        peer: peer.to_string(),
        text: text.to_string(),
    })
}

impl Delegator {
    pub(super) fn new(
        workspace_id: String,
        platform_url: String,
        token_path: PathBuf,
    ) -> Delegator {
        Delegator {
            workspace_id,
            platform_url,
            token_path,
            http: Client::new(Timeouts::uniform(super::HTTP_TIMEOUT)),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Bytes), String> {
        let token = read_token(&self.token_path)
            .await
            .map_err(|e| format!("no token: {e}"))?;
        let auth = format!("Bearer {token}");
        let headers = [
            ("authorization", auth.as_str()),
            ("accept", "application/json"),
        ];
        let url = format!("{}{}", self.platform_url, path);
        let body = body.map(|b| (Bytes::from(b.to_string()), "application/json"));
        let r = tokio::time::timeout(
            super::HTTP_TIMEOUT,
            self.http.send(method, &url, &headers, body, MAX_ANSWER),
        )
        .await
        .map_err(|_| format!("the platform did not answer {path} in time"))?
        .map_err(|e| format!("the platform could not be reached: {e}"))?;
        Ok((r.status, r.body))
    }

    /// The id of the peer called `name` (its name or display name, any case).
    async fn find_peer(&self, name: &str) -> Result<String, String> {
        let want = name.to_lowercase();
        let paths = [
            format!("/registry/{}/peers", self.workspace_id),
            "/workspaces".to_string(),
        ];
        for path in paths {
            let Ok((200, body)) = self.call(Method::GET, &path, None).await else {
                continue;
            };
            let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&body) else {
                continue;
            };
            let found = list.iter().find(|p| {
                p.get("id").and_then(Value::as_str) != Some(self.workspace_id.as_str())
                    && ["name", "k8s_name", "display_name"].iter().any(|k| {
                        p.get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|n| n.to_lowercase() == want)
                    })
            });
            if let Some(id) = found.and_then(|p| p.get("id")).and_then(Value::as_str) {
                return Ok(id.to_string());
            }
        }
        Err(format!(
            "no peer called {name:?} is reachable from this workspace"
        ))
    }

    /// Delegates `text` to the peer called `peer` and waits for its answer.
    async fn delegate(&self, peer: &str, text: &str, key: &str) -> Result<String, String> {
        let target = self.find_peer(peer).await?;
        let path = format!("/workspaces/{}/delegate", self.workspace_id);
        let (status, body) = self
            .call(
                Method::POST,
                &path,
                Some(json!({"target_id": target, "task": text, "idempotency_key": key})),
            )
            .await?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(format!(
                "the platform refused the delegation (HTTP {status}): {}",
                v.get("error").and_then(Value::as_str).unwrap_or("")
            ));
        }
        let id = v
            .get("delegation_id")
            .and_then(Value::as_str)
            .ok_or("the platform answered without a delegation id")?
            .to_string();
        let list = format!("/workspaces/{}/delegations?limit=500", self.workspace_id);
        let deadline = tokio::time::Instant::now() + DELEGATION_WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok((200, body)) = self.call(Method::GET, &list, None).await
                && let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(&body)
                && let Some(row) = rows
                    .iter()
                    .find(|r| r.get("delegation_id").and_then(Value::as_str) == Some(id.as_str()))
            {
                match row.get("status").and_then(Value::as_str) {
                    Some("completed") => {
                        return Ok(row
                            .get("response_preview")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string());
                    }
                    Some("failed") => {
                        return Err(format!(
                            "the delegation to {peer} failed: {}",
                            row.get("error")
                                .and_then(Value::as_str)
                                .unwrap_or("unknown")
                        ));
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        Err(format!("no answer from {peer} within {DELEGATION_WAIT:?}"))
    }
}

/// The request's id and text when it is a well-formed `message/send` with an id.
fn request_text(body: &[u8]) -> Option<(Value, String, Option<String>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("jsonrpc").and_then(Value::as_str) != Some("2.0")
        || v.get("method").and_then(Value::as_str) != Some("message/send")
    {
        return None;
    }
    let id = v
        .get("id")
        .filter(|i| i.is_string() || i.is_number())?
        .clone();
    let message = v.get("params")?.get("message")?;
    let text: String = message
        .get("parts")?
        .as_array()?
        .iter()
        .filter(|p| {
            p.get("kind")
                .or_else(|| p.get("type"))
                .and_then(Value::as_str)
                == Some("text")
        })
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    let message_id = message
        .get("messageId")
        .and_then(Value::as_str)
        .map(String::from);
    Some((id, text, message_id))
}

/// Handles a team command; `None` when the request holds none.
pub(super) async fn handle(state: &AgentState, body: &[u8]) -> Option<Value> {
    let (id, text, message_id) = request_text(body)?;
    let command = parse(&text)?;
    state.record_request();
    let _task = state.start_task(&text);
    let answer = match command {
        Command::Sleep { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(text.clone())
        }
        Command::Delegate { peer, text } => match &state.delegator {
            None => Err("this agent has no platform to delegate through".to_string()),
            Some(delegator) => {
                let key = message_id
                    .filter(|k| k.len() <= 100)
                    .unwrap_or_else(super::a2a::new_message_id);
                delegator.delegate(&peer, &text, &key).await
            }
        },
    };
    Some(match answer {
        Ok(reply) => json!({"jsonrpc": "2.0", "id": id, "result": {
            "kind": "message",
            "role": "agent",
            "messageId": super::a2a::new_message_id(),
            "parts": [{"kind": "text", "text": reply}],
        }}),
        Err(why) => {
            state.record_error(why.clone());
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": why}})
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_the_text() {
        assert_eq!(parse("sleep 250"), Some(Command::Sleep { ms: 250 }));
        assert_eq!(parse("  sleep 10 #3 "), Some(Command::Sleep { ms: 10 }));
        assert_eq!(
            parse("sleep 99999999"),
            Some(Command::Sleep { ms: MAX_SLEEP_MS })
        );
        assert_eq!(parse("sleep soon"), None);
        assert_eq!(
            parse("delegate Research Lead: find the papers: all of them"),
            Some(Command::Delegate {
                peer: "Research Lead".into(),
                text: "find the papers: all of them".into()
            })
        );
        assert_eq!(parse("delegate nobody"), None);
        assert_eq!(parse("delegate : x"), None);
        assert_eq!(parse("hello"), None);
    }

    #[tokio::test]
    async fn sleep_holds_a_task_and_echoes() {
        let state = std::sync::Arc::new(AgentState::new(json!({})));
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"message/send","params":{"message":{"parts":[{"kind":"text","text":"sleep 300 hi"}]}}}"#;
        let s = state.clone();
        let run = tokio::spawn(async move { handle(&s, body).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let hb = state.heartbeat_body("w", &Default::default());
        assert_eq!(hb["active_tasks"], 1);
        assert_eq!(hb["current_task"], "sleep 300 hi");
        let reply = run.await.expect("join").expect("a command");
        assert_eq!(reply["id"], 7);
        assert_eq!(reply["result"]["parts"][0]["text"], "sleep 300 hi");
        let hb = state.heartbeat_body("w", &Default::default());
        assert_eq!(hb["active_tasks"], 0);
        // Not a command: left to the echo.
        let plain = br#"{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"parts":[{"kind":"text","text":"hi"}]}}}"#;
        assert!(handle(&state, plain).await.is_none());
        // No platform to delegate through: a JSON-RPC error.
        let d = br#"{"jsonrpc":"2.0","id":2,"method":"message/send","params":{"message":{"parts":[{"kind":"text","text":"delegate b: x"}]}}}"#;
        let reply = handle(&state, d).await.expect("a command");
        assert_eq!(reply["error"]["code"], -32000);
    }
}
