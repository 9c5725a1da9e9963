//! The echo agent as a team player (ADR 0050): the commands a message may carry, asking a peer
//! through the platform (discovery by name, then the A2A proxy with `X-Workspace-ID`), and
//! reporting its own activity. Every call carries the workspace token; a 401 re-reads the
//! token file once.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::http::Method;
use serde_json::{Value, json};
use tracing::debug;

use super::config::read_token;
use super::truncate_text;
use crate::net::http::{Client, Response, Timeouts};

/// Longest `sleep` a message may ask for.
pub const MAX_SLEEP_MS: u64 = 600_000;
/// How long a peer may take to answer an `ask` (the proxy's own idle bound is 5 min).
const ASK_TIMEOUT: Duration = Duration::from_secs(310);
/// Largest answer read from the platform.
const MAX_ANSWER: usize = 10 << 20;

/// What a message asks the echo agent to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Answer with the text itself.
    Echo,
    /// `ask <peer name>: <text>`: send `text` to the peer, answer with its reply.
    Ask { peer: &'a str, text: &'a str },
    /// `sleep <ms>`: hold a task that long, to exercise the busy queue.
    Sleep(u64),
}

/// Reads the command of a message's text; anything else is echoed.
pub fn command(text: &str) -> Command<'_> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("ask ")
        && let Some((peer, said)) = rest.split_once(':')
        && !peer.trim().is_empty()
    {
        return Command::Ask {
            peer: peer.trim(),
            text: said.trim(),
        };
    }
    if let Some(ms) = t.strip_prefix("sleep ")
        && let Ok(ms) = ms.trim().parse::<u64>()
    {
        return Command::Sleep(ms.min(MAX_SLEEP_MS));
    }
    Command::Echo
}

/// The platform as a teammate sees it.
pub struct Team {
    base: String,
    me: String,
    token_path: PathBuf,
    token: Mutex<String>,
    http: Client,
}

impl Team {
    pub fn new(base: String, me: String, token_path: PathBuf, token: String) -> Team {
        Team {
            base,
            me,
            token_path,
            token: Mutex::new(token),
            http: Client::new(Timeouts {
                response_header: ASK_TIMEOUT,
                body: ASK_TIMEOUT,
                ..Timeouts::default()
            }),
        }
    }

    fn token(&self) -> String {
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One call with the token (and `X-Workspace-ID`); a 401 re-reads the token file once.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, String> {
        let url = format!("{}{}", self.base, path);
        let body = body.map(|b| Bytes::from(b.to_string()));
        let mut answer = None;
        for attempt in 0..2 {
            let auth = format!("Bearer {}", self.token());
            let headers = [
                ("authorization", auth.as_str()),
                ("accept", "application/json"),
                ("x-workspace-id", self.me.as_str()),
            ];
            let r = self
                .http
                .send(
                    method.clone(),
                    &url,
                    &headers,
                    body.clone().map(|b| (b, "application/json")),
                    MAX_ANSWER,
                )
                .await
                .map_err(|e| e.to_string())?;
            if r.status == 401 && attempt == 0 {
                if let Ok(t) = read_token(&self.token_path).await {
                    *self.token.lock().unwrap_or_else(PoisonError::into_inner) = t;
                }
                answer = Some(r);
                continue;
            }
            return Ok(r);
        }
        answer.ok_or_else(|| "no answer".to_string())
    }

    /// Finds the peer named `peer` (display name, case-insensitive) among the workspaces this
    /// one may talk to, sends it `text` through the proxy and returns the text of its answer.
    pub async fn ask(&self, peer: &str, text: &str) -> Result<String, String> {
        let r = self
            .call(Method::GET, &format!("/registry/{}/peers", self.me), None)
            .await?;
        if !r.is_success() {
            return Err(format!(
                "discovery answered HTTP {}: {}",
                r.status,
                snippet(&r.body)
            ));
        }
        let peers: Vec<Value> = serde_json::from_slice(&r.body)
            .map_err(|_| "discovery answered something other than a list".to_string())?;
        let found = peers.iter().find(|p| {
            p.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(peer))
        });
        let Some(id) = found.and_then(|p| p.get("id")).and_then(Value::as_str) else {
            return Err(format!(
                "no peer named {} is reachable from here",
                truncate_text(peer, 64)
            ));
        };
        let request = json!({
            "jsonrpc": "2.0",
            "id": super::a2a::new_message_id(),
            "method": "message/send",
            "params": {"message": {
                "role": "user",
                "messageId": super::a2a::new_message_id(),
                "parts": [{"kind": "text", "text": text}],
            }},
        });
        let r = self
            .call(
                Method::POST,
                &format!("/workspaces/{id}/a2a"),
                Some(&request),
            )
            .await?;
        if !r.is_success() || r.status == 202 {
            return Err(format!(
                "the proxy answered HTTP {}: {}",
                r.status,
                snippet(&r.body)
            ));
        }
        let answer: Value = crate::net::http::first_json(&r.body)?;
        if let Some(e) = answer.get("error") {
            return Err(format!(
                "the peer answered an error: {}",
                snippet(e.to_string().as_bytes())
            ));
        }
        crate::teams::activity::text_of(&answer)
            .ok_or_else(|| "the peer's answer has no text".to_string())
    }

    /// Reports one activity row of this workspace, in the background; failures are only
    /// logged (the log is best effort, the answer is not held for it).
    pub fn report(self: &std::sync::Arc<Self>, row: Value) {
        let team = self.clone();
        tokio::spawn(async move {
            let path = format!("/workspaces/{}/activity", team.me);
            match team.call(Method::POST, &path, Some(&row)).await {
                Ok(r) if r.is_success() => {}
                Ok(r) => debug!(status = r.status, "the activity report was refused"),
                Err(e) => debug!(error = %e, "the activity report failed"),
            }
        });
    }
}

fn snippet(body: &[u8]) -> String {
    truncate_text(&String::from_utf8_lossy(body), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_the_text() {
        assert_eq!(
            command("ask Research Lead: what is new?"),
            Command::Ask {
                peer: "Research Lead",
                text: "what is new?"
            }
        );
        assert_eq!(command("  sleep 250 "), Command::Sleep(250));
        assert_eq!(command("sleep 99999999"), Command::Sleep(MAX_SLEEP_MS));
        for plain in [
            "hello",
            "ask nobody",
            "ask : x",
            "sleep soon",
            "asking x: y",
        ] {
            assert_eq!(command(plain), Command::Echo, "{plain}");
        }
    }
}
