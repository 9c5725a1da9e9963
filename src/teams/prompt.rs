//! Messages the platform itself sends to a workspace: a schedule's prompt, a chat channel's
//! inbound message. They travel like any A2A call to the workspace: they take one of its
//! concurrency slots (so they never overlap its `maxConcurrentTasks`), they are logged as an
//! `a2a_receive` activity row and an `ACTIVITY_LOGGED` event, and the answer's text comes back
//! to the sender. There is no calling workspace, so the row has no `source_id`; its summary
//! names the origin (`schedule:<name>`, `channel:telegram`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::json;

use super::Teams;
use super::activity as rules;
use super::queue::max_concurrent;
use super::service::{Slot, answer_text};
use crate::net::http::{Client as HttpClient, Timeouts};
use crate::store::ActivityRow;

/// One message from the platform to a workspace.
#[derive(Clone, Debug)]
pub struct PlatformMessage {
    /// The text sent as the message's one text part.
    pub text: String,
    /// Who sends it, for the activity log and errors: `schedule:<name>`, `channel:telegram`.
    pub origin: String,
    /// How long to wait for a free slot of a busy workspace before giving up with
    /// [`SendError::Busy`].
    pub busy_wait: Duration,
    /// How long the agent may take to answer.
    pub timeout: Duration,
}

/// Why a platform message was not answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the workspace does not exist")]
    Gone,
    #[error("the workspace is paused or being deleted")]
    Stopped,
    #[error("the workspace has no agent URL yet")]
    NotReady,
    #[error("the workspace stayed busy for {}s", .0.as_secs())]
    Busy(Duration),
    #[error("the agent did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// Delivery or the agent failed; the text is safe to show (no secrets, no bodies).
    #[error("{0}")]
    Failed(String),
}

/// How often a busy workspace is looked at again while a message waits for a slot.
const BUSY_POLL: Duration = Duration::from_millis(250);
/// Largest answer read.
const MAX_ANSWER: usize = 10 * 1024 * 1024;

/// The JSON-RPC `message/send` carrying `text`.
pub fn message_send(text: &str, message_id: &str) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": message_id,
        "method": "message/send",
        "params": {"message": {
            "role": "user",
            "messageId": message_id,
            "parts": [{"kind": "text", "text": text}],
        }},
    })
    .to_string()
}

impl Teams {
    /// Sends `msg` to workspace `uid` and answers the agent's reply text. Waits up to
    /// `msg.busy_wait` for a free slot; never queues (a schedule skips, a channel says so).
    pub async fn send_platform_message(
        self: &Arc<Self>,
        uid: &str,
        msg: &PlatformMessage,
    ) -> Result<String, SendError> {
        let waited = Instant::now();
        let (url, _slot) = loop {
            let ws = self.workspace(uid).ok_or(SendError::Gone)?;
            if ws.spec.paused || ws.metadata.deletion_timestamp.is_some() {
                return Err(SendError::Stopped);
            }
            let url = ws
                .status
                .as_ref()
                .and_then(|s| s.url.clone())
                .ok_or(SendError::NotReady)?;
            if self.loads.try_acquire(uid, max_concurrent(&ws), true) {
                let slot = Slot {
                    teams: self.clone(),
                    uid: uid.to_string(),
                    wake: true,
                };
                break (url, slot);
            }
            if waited.elapsed() >= msg.busy_wait {
                return Err(SendError::Busy(msg.busy_wait));
            }
            tokio::time::sleep(BUSY_POLL).await;
        };
        if crate::net::agent_url::validate_agent_url(&url).is_err() {
            return Err(SendError::Failed("the workspace URL is not allowed".into()));
        }
        let id = format!("{}-{}", msg.origin, uuid::Uuid::new_v4());
        let body = message_send(&msg.text, &id);
        let http = HttpClient::new(Timeouts {
            response_header: msg.timeout,
            body: msg.timeout,
            ..super::service::DELIVERY_TIMEOUTS
        });
        let started = Instant::now();
        let sent = http
            .send(
                hyper::http::Method::POST,
                &url,
                &[("accept", "application/json")],
                Some((Bytes::from(body.clone()), "application/json")),
                MAX_ANSWER,
            )
            .await;
        let took = started.elapsed();
        let (result, response) = match sent {
            Ok(r) if r.is_success() => match super::service::rpc_error(&r.body) {
                None => (Ok(answer_text(&r.body)), Some(r.body)),
                Some(e) => (Err(SendError::Failed(e)), Some(r.body)),
            },
            Ok(r) => (
                Err(SendError::Failed(format!(
                    "the agent answered HTTP {}",
                    r.status
                ))),
                Some(r.body),
            ),
            Err(
                crate::net::http::Error::HeaderTimeout(..)
                | crate::net::http::Error::BodyTimeout(..),
            ) => (Err(SendError::Timeout(msg.timeout)), None),
            Err(e) => (
                Err(SendError::Failed(format!(
                    "the agent could not be reached: {e}"
                ))),
                None,
            ),
        };
        self.log_platform_message(uid, msg, &body, response.as_deref(), &result, took)
            .await;
        result
    }

    async fn log_platform_message(
        &self,
        uid: &str,
        msg: &PlatformMessage,
        request: &str,
        response: Option<&[u8]>,
        result: &Result<String, SendError>,
        took: Duration,
    ) {
        let row = ActivityRow {
            workspace_id: uid.to_string(),
            activity_type: "a2a_receive".into(),
            source_id: None,
            target_id: Some(uid.to_string()),
            method: Some("message/send".into()),
            summary: Some(rules::cut(
                &format!("{}: {}", msg.origin, msg.text),
                rules::MAX_SUMMARY,
            )),
            request_body: rules::stored_body(request.as_bytes()),
            response_body: response.and_then(rules::stored_body),
            duration_ms: Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX)),
            status: match result {
                Ok(_) => "ok",
                Err(SendError::Timeout(_)) => "timeout",
                Err(_) => "error",
            }
            .into(),
            error_detail: result.as_ref().err().map(|e| e.to_string()),
            created_at: crate::util::now_micro(),
            ..Default::default()
        };
        if let Err(e) = self.store().activity_insert(&row).await {
            tracing::warn!(error = %e, workspace = %uid, "could not write a platform message's activity row");
        }
        self.publish_event(
            "ACTIVITY_LOGGED",
            uid,
            json!({
                "activity_type": row.activity_type,
                "method": row.method,
                "summary": row.summary,
                "status": row.status,
                "source_id": row.source_id,
                "target_id": row.target_id,
                "duration_ms": row.duration_ms,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_message_is_a_message_send_with_one_text_part() {
        let v: serde_json::Value =
            serde_json::from_str(&message_send("run the report", "schedule:daily-1")).unwrap();
        assert_eq!(v["method"], "message/send");
        assert_eq!(v["params"]["message"]["messageId"], "schedule:daily-1");
        assert_eq!(v["params"]["message"]["parts"][0]["text"], "run the report");
    }
}
