//! The platform side: registration and heartbeats over the shared outbound client (ADR 0046),
//! each call bounded by one deadline and a body cap, with the token file read again on a 401.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hyper::http::Method;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::config::read_token;
use super::state::AgentState;
use super::truncate_text;
use crate::net::http::{self, Client, Response, Timeouts};

/// Largest accepted response body of a platform call.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Overall deadline of one platform call (resolve + connect + write + read).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// First registration retry delay.
const REGISTER_BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest registration retry delay.
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// `User-Agent` of platform calls.
const USER_AGENT: &str = "molecule-agent";

/// Why a platform call got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Http(#[from] http::Error),
    /// The call did not complete within the deadline.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The response body exceeds the cap.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// Authenticated calls to the platform.
pub(super) struct Platform {
    base: String,
    token_path: PathBuf,
    token: String,
    http: Client,
    /// Deadline of one call ([`HTTP_TIMEOUT`]).
    deadline: Duration,
}

impl Platform {
    pub(super) fn new(base: String, token_path: PathBuf, token: String) -> Platform {
        Platform {
            base,
            token_path,
            token,
            http: Client::new(Timeouts::uniform(HTTP_TIMEOUT)),
            deadline: HTTP_TIMEOUT,
        }
    }

    /// POSTs `body` to `{base}{path}`; on 401 re-reads the token file and retries once.
    async fn post(&mut self, path: &str, body: &Value) -> Result<Response, CallError> {
        let url = format!("{}{}", self.base, path);
        let body = Bytes::from(body.to_string());
        let resp = self.post_once(&url, body.clone()).await?;
        if resp.status != 401 {
            return Ok(resp);
        }
        match read_token(&self.token_path).await {
            Ok(token) if token != self.token => {
                info!(
                    path,
                    "platform answered 401; retrying with the rotated token"
                );
                self.token = token;
            }
            Ok(_) => debug!(
                path,
                "platform answered 401; token file unchanged, retrying once"
            ),
            Err(e) => {
                warn!(path, error = %e, "platform answered 401 and the token cannot be re-read")
            }
        }
        self.post_once(&url, body).await
    }

    /// One JSON POST with the bearer token, within [`HTTP_TIMEOUT`] and [`MAX_RESPONSE_BYTES`].
    async fn post_once(&self, url: &str, body: Bytes) -> Result<Response, CallError> {
        let auth = format!("Bearer {}", self.token);
        let headers = [
            ("authorization", auth.as_str()),
            ("accept", "application/json"),
            ("user-agent", USER_AGENT),
        ];
        let call = self.http.send(
            Method::POST,
            url,
            &headers,
            Some((body, "application/json")),
            MAX_RESPONSE_BYTES,
        );
        let resp = tokio::time::timeout(self.deadline, call)
            .await
            .map_err(|_| CallError::Timeout(self.deadline))??;
        if resp.truncated {
            return Err(CallError::TooLarge(MAX_RESPONSE_BYTES));
        }
        Ok(resp)
    }
}

/// Registers, then heartbeats; goes back to registering when the platform forgets us.
pub(super) async fn platform_loop(
    platform: &mut Platform,
    state: &AgentState,
    workspace_id: &str,
    register_body: &Value,
    period: Duration,
) {
    loop {
        register(platform, register_body).await;
        heartbeat_until_forgotten(platform, state, workspace_id, period).await;
    }
}

/// Registers, retrying forever with capped exponential backoff.
async fn register(platform: &mut Platform, body: &Value) {
    let mut delay = REGISTER_BACKOFF_START;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        match platform.post("/registry/register", body).await {
            Ok(resp) if resp.is_success() => {
                info!(attempt, "registered with the platform");
                return;
            }
            Ok(resp) => warn!(
                status = resp.status,
                body = %snippet(&resp.body),
                attempt,
                retry_in = ?delay,
                "registration rejected"
            ),
            Err(e) => warn!(error = %e, attempt, retry_in = ?delay, "registration failed"),
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(REGISTER_BACKOFF_MAX);
    }
}

/// Sends a heartbeat every `period`; returns when the platform answers 404 or 410.
async fn heartbeat_until_forgotten(
    platform: &mut Platform,
    state: &AgentState,
    workspace_id: &str,
    period: Duration,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let window = state.take_window();
        let body = state.heartbeat_body(workspace_id, &window);
        match platform.post("/registry/heartbeat", &body).await {
            Ok(resp) if resp.is_success() => debug!("heartbeat sent"),
            Ok(resp) if resp.status == 404 || resp.status == 410 => {
                warn!(
                    status = resp.status,
                    "the platform does not know this workspace; registering again"
                );
                state.restore_window(window);
                return;
            }
            Ok(resp) => {
                warn!(status = resp.status, body = %snippet(&resp.body), "heartbeat rejected");
                state.restore_window(window);
            }
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                state.restore_window(window);
            }
        }
    }
}

/// The start of a response body, for logs.
fn snippet(body: &[u8]) -> String {
    truncate_text(&String::from_utf8_lossy(body), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn platform_at(app: axum::Router) -> Platform {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Platform::new(
            format!("http://{addr}"),
            PathBuf::from("/nonexistent"),
            "t".into(),
        )
    }

    #[tokio::test]
    async fn answers_over_the_cap_are_refused() {
        let app = axum::Router::new().route(
            "/big",
            axum::routing::post(|| async { vec![b'z'; MAX_RESPONSE_BYTES + 1] }),
        );
        let mut platform = platform_at(app).await;
        let e = platform.post("/big", &Value::Null).await.unwrap_err();
        assert!(matches!(e, CallError::TooLarge(MAX_RESPONSE_BYTES)), "{e}");
    }

    #[tokio::test]
    async fn a_silent_platform_hits_the_deadline() {
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let mut platform = platform_at(app).await;
        platform.deadline = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let e = platform.post("/slow", &Value::Null).await.unwrap_err();
        assert!(matches!(e, CallError::Timeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
