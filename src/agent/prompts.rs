//! The prompts an agent sends itself (ADR 0048), as the original platform's runtimes do: the
//! initial prompt once, as its first message, once its A2A server answers — a marker file in
//! the config directory (it persists with the config volume; `/workspace` when the config
//! directory is not writable) stops a re-send after restarts; the idle prompt after
//! `idle_interval` without work. Each goes through the agent's own A2A endpoint, like any
//! other message, so the activity log records it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::http::Method;
use serde_json::json;
use tracing::{info, warn};

use super::state::AgentState;
use crate::net::http::{Client, Timeouts};

/// The marker's file name (the original's).
pub const MARKER: &str = ".initial_prompt_done";
/// Where the marker goes when the config directory is not writable.
const FALLBACK_DIR: &str = "/workspace";
/// Deadline of one self-sent message.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at the initial prompt before giving up until the next start.
const ATTEMPTS: u32 = 30;

/// Where the marker of `config_dir` is, if any: the config directory's, else the fallback's.
fn existing_marker(config_dir: &Path) -> Option<PathBuf> {
    [config_dir, Path::new(FALLBACK_DIR)]
        .into_iter()
        .map(|d| d.join(MARKER))
        .find(|p| p.exists())
}

/// Writes the marker: into the config directory, else the fallback.
fn write_marker(config_dir: &Path) -> Option<PathBuf> {
    for dir in [config_dir, Path::new(FALLBACK_DIR)] {
        let path = dir.join(MARKER);
        match std::fs::write(&path, b"done\n") {
            Ok(()) => return Some(path),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot write the initial-prompt marker")
            }
        }
    }
    None
}

/// Sends `text` to the agent's own A2A endpoint as `message/send`; true when it answered with
/// a result.
async fn send(client: &Client, port: u16, id: &str, text: &str) -> bool {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "message/send",
        "params": {"message": {
            "role": "user",
            "messageId": id,
            "parts": [{"kind": "text", "text": text}],
        }},
    });
    let url = format!("http://127.0.0.1:{port}/");
    let call = client.send(
        Method::POST,
        &url,
        &[],
        Some((Bytes::from(body.to_string()), "application/json")),
        super::MAX_REQUEST_BYTES,
    );
    match tokio::time::timeout(SEND_TIMEOUT, call).await {
        Ok(Ok(resp)) if resp.is_success() => {
            serde_json::from_slice::<serde_json::Value>(&resp.body)
                .map(|v| v.get("result").is_some())
                .unwrap_or(false)
        }
        Ok(Ok(resp)) => {
            warn!(status = resp.status, id, "self-sent prompt refused");
            false
        }
        Ok(Err(e)) => {
            warn!(error = %e, id, "self-sent prompt failed");
            false
        }
        Err(_) => {
            warn!(id, "self-sent prompt timed out");
            false
        }
    }
}

/// Sends the initial prompt unless its marker says it was sent before, then writes the
/// marker; retried while the server is not answering yet.
pub(super) async fn initial(state: Arc<AgentState>, port: u16, config_dir: PathBuf, text: String) {
    state.update_initial(|i| i.configured = true);
    if let Some(marker) = existing_marker(&config_dir) {
        info!(marker = %marker.display(), "initial prompt already sent before; not sending it again");
        state.update_initial(|i| {
            i.already_done = true;
            i.marker = Some(marker.display().to_string());
        });
        return;
    }
    let client = Client::new(Timeouts::uniform(SEND_TIMEOUT));
    let id = format!("initial-{}", super::a2a::new_message_id());
    for attempt in 1..=ATTEMPTS {
        if send(&client, port, &id, &text).await {
            let marker = write_marker(&config_dir);
            info!(attempt, "initial prompt sent");
            state.update_initial(|i| {
                i.sent = true;
                i.marker = marker.map(|m| m.display().to_string());
            });
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    warn!("initial prompt not sent after {ATTEMPTS} attempts; it is tried again on the next start");
}

/// Sends the idle prompt whenever the agent has had no work for `interval`, forever.
pub(super) async fn idle(state: Arc<AgentState>, port: u16, text: String, interval: Duration) {
    let client = Client::new(Timeouts::uniform(SEND_TIMEOUT));
    loop {
        let idle_for = state.idle_for();
        if idle_for >= interval {
            let id = format!("idle-{}", super::a2a::new_message_id());
            if !send(&client, port, &id, &text).await {
                tokio::time::sleep(interval.min(Duration::from_secs(5))).await;
            }
            continue;
        }
        // Looked at again within a second: a task may end meanwhile.
        let wait = (interval - idle_for).clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::time::sleep(wait).await;
    }
}
