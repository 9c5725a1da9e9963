//! The A2A JSON-RPC 2.0 server: `message/send` echoes the text parts back on `POST /` and
//! `POST /a2a`, beside `GET /health`, the agent card and `GET /plugins`.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::plugins::plugins;
use super::state::AgentState;
use super::team::{Command, command};
use super::truncate_text;

/// Largest accepted A2A request body.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

pub(super) fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/", post(a2a))
        .route("/a2a", post(a2a))
        .route("/health", get(health))
        .route("/plugins", get(plugins))
        .route("/activity", get(activity))
        .route("/.well-known/agent.json", get(agent_card))
        .route("/.well-known/agent-card.json", get(agent_card))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The messages received (newest last) and what became of the initial prompt (ADR 0048).
async fn activity(State(state): State<Arc<AgentState>>) -> Json<Value> {
    Json(state.activity())
}

async fn agent_card(State(state): State<Arc<AgentState>>) -> Json<Value> {
    Json(state.card.clone())
}

async fn a2a(State(state): State<Arc<AgentState>>, body: Bytes) -> Response {
    // `sleep` and `delegate` (ADR 0051).
    if let Some(reply) = super::delegate::handle(&state, &body).await {
        return Json(reply).into_response();
    }
    match handle_rpc(&state, &body).await {
        Some(reply) => Json(reply).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// A JSON-RPC error to answer with.
struct RpcFailure {
    code: i64,
    message: &'static str,
    data: Option<String>,
}

impl RpcFailure {
    fn new(code: i64, message: &'static str, data: impl Into<String>) -> Self {
        Self {
            code,
            message,
            data: Some(data.into()),
        }
    }
}

/// Handles one JSON-RPC request body; `None` for a notification (no `id`).
pub(super) async fn handle_rpc(state: &AgentState, body: &[u8]) -> Option<Value> {
    state.record_request();
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let failure = RpcFailure::new(PARSE_ERROR, "Parse error", e.to_string());
            return Some(rpc_error(state, Value::Null, failure));
        }
    };
    let Value::Object(request) = request else {
        let failure = RpcFailure::new(INVALID_REQUEST, "Invalid Request", "expected an object");
        return Some(rpc_error(state, Value::Null, failure));
    };
    let id = request.get("id").cloned();
    let reply_id = match &id {
        None => Value::Null,
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => v.clone(),
        Some(_) => {
            let failure = RpcFailure::new(
                INVALID_REQUEST,
                "Invalid Request",
                "id must be a string, a number or null",
            );
            return Some(rpc_error(state, Value::Null, failure));
        }
    };
    let outcome = if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        Err(RpcFailure::new(
            INVALID_REQUEST,
            "Invalid Request",
            "jsonrpc must be \"2.0\"",
        ))
    } else {
        match request.get("method").and_then(Value::as_str) {
            None => Err(RpcFailure::new(
                INVALID_REQUEST,
                "Invalid Request",
                "method must be a string",
            )),
            Some("message/send") => message_send(state, request.get("params")).await,
            Some(other) => Err(RpcFailure::new(
                METHOD_NOT_FOUND,
                "Method not found",
                format!("unknown method {}", truncate_text(other, 64)),
            )),
        }
    };
    let reply = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": reply_id, "result": result}),
        Err(failure) => rpc_error(state, reply_id, failure),
    };
    id.map(|_| reply)
}

/// Builds an error reply and counts it.
fn rpc_error(state: &AgentState, id: Value, failure: RpcFailure) -> Value {
    let summary = match &failure.data {
        Some(data) => format!("{} {}: {data}", failure.code, failure.message),
        None => format!("{} {}", failure.code, failure.message),
    };
    state.record_error(summary);
    let mut error = json!({"code": failure.code, "message": failure.message});
    if let Some(data) = failure.data {
        error["data"] = Value::String(data);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// `message/send`: answers with an agent message carrying the request's text, or what its
/// command did (`ask <peer>: <text>`, `sleep <ms>`; ADR 0050), and reports the task as its own
/// activity.
async fn message_send(state: &AgentState, params: Option<&Value>) -> Result<Value, RpcFailure> {
    let text =
        echo_text(params).map_err(|why| RpcFailure::new(INVALID_PARAMS, "Invalid params", why))?;
    let _task = state.start_task(&text);
    let message_id = params
        .and_then(|p| p.get("message"))
        .and_then(|m| m.get("messageId"))
        .and_then(Value::as_str)
        .map(|id| truncate_text(id, 128));
    state.record_message(message_id.as_deref(), &text);
    let started = std::time::Instant::now();
    let (reply, status) = match command(&text) {
        Command::Echo => (text.clone(), "ok"),
        Command::Sleep(ms) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            (format!("slept {ms} ms"), "ok")
        }
        Command::Ask { peer, text: said } => match &state.team {
            Some(team) => match team.ask(peer, said).await {
                Ok(answer) => (answer, "ok"),
                Err(why) => (format!("ask failed: {why}"), "error"),
            },
            None => (
                "ask failed: no platform to ask through".to_string(),
                "error",
            ),
        },
    };
    if let Some(team) = &state.team {
        team.report(json!({
            "activity_type": "agent_log",
            "method": "message/send",
            "summary": truncate_text(&format!("{} -> {}", text, reply), 200),
            "status": status,
            "duration_ms": started.elapsed().as_millis() as u64,
        }));
    }
    let mut message = json!({
        "kind": "message",
        "role": "agent",
        "messageId": new_message_id(),
        "parts": [{"kind": "text", "text": reply}],
    });
    if let Some(context) = params
        .and_then(|p| p.get("message"))
        .and_then(|m| m.get("contextId"))
        .filter(|c| c.is_string())
    {
        message["contextId"] = context.clone();
    }
    Ok(message)
}

/// The concatenated text parts of `params.message` (`kind` or the older `type` form).
fn echo_text(params: Option<&Value>) -> Result<String, String> {
    let message = params
        .and_then(|p| p.get("message"))
        .filter(|m| m.is_object())
        .ok_or("params.message must be an object")?;
    let parts = message
        .get("parts")
        .and_then(Value::as_array)
        .ok_or("params.message.parts must be an array")?;
    let mut text = String::new();
    let mut found = false;
    for (i, part) in parts.iter().enumerate() {
        let kind = part
            .get("kind")
            .or_else(|| part.get("type"))
            .and_then(Value::as_str);
        if kind != Some("text") {
            continue;
        }
        let piece = part
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("params.message.parts[{i}].text must be a string"))?;
        text.push_str(piece);
        found = true;
    }
    if found {
        Ok(text)
    } else {
        Err("params.message has no text parts".to_string())
    }
}

/// A fresh UUID-v4-shaped id (random enough to be unique; not for security).
pub(super) fn new_message_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(count);
        hasher.write_u128(nanos);
        hasher.write_usize(i);
        *half = hasher.finish();
    }
    let hi = (halves[0] & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (halves[1] & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::state::Window;

    #[tokio::test]
    async fn rpc_edge_cases() {
        let state = AgentState::new(json!({}));
        // Notification: handled, no reply.
        let note = br#"{"jsonrpc":"2.0","method":"message/send","params":{"message":{"parts":[{"kind":"text","text":"x"}]}}}"#;
        assert_eq!(handle_rpc(&state, note).await, None);
        let reply = handle_rpc(&state, b"[1,2]").await.unwrap();
        assert_eq!(reply["error"]["code"], -32600);
        let reply = handle_rpc(&state, br#"{"jsonrpc":"1.0","id":3,"method":"x"}"#)
            .await
            .unwrap();
        assert_eq!(
            (reply["id"].clone(), reply["error"]["code"].clone()),
            (json!(3), json!(-32600))
        );
        let reply = handle_rpc(&state, br#"{"jsonrpc":"2.0","id":4,"method":"message/send","params":{"message":{"parts":[{"kind":"text","text":5}]}}}"#,
        ).await
        .unwrap();
        assert_eq!(reply["error"]["code"], -32602);
        let reply = handle_rpc(&state, br#"{"jsonrpc":"2.0","id":5,"method":"message/send","params":{"message":{"parts":[{"kind":"file"}]}}}"#,
        ).await
        .unwrap();
        assert_eq!(reply["error"]["code"], -32602);

        let window = state.take_window();
        assert_eq!((window.requests, window.errors), (5, 4));
        assert!(window.last_error.as_deref().unwrap().starts_with("-32602"));
        let hb = state.heartbeat_body("w", &window);
        assert_eq!(hb["error_rate"], json!(0.8));
        // An undelivered window is merged into the next one.
        state.restore_window(window);
        assert_eq!(state.take_window().requests, 5);
        assert_eq!(state.take_window(), Window::default());
    }
}
