//! The live event stream: `GET /ws` (WebSocket) and its Server-Sent Events twins
//! `GET /events/stream` (every workspace) and `GET /workspaces/:id/events/stream` (one).
//! Every client reads the shared broadcast; a client that falls `STREAM_BACKLOG` messages
//! behind, or whose socket does not take a message within `SEND_TIMEOUT`, is dropped (it
//! reconnects and re-reads the list). Nothing a client does can block the watch.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::Shim;
use super::auth::{bearer, protocol_token};
use super::cache::Outgoing;
use super::error::ShimResult;

/// A socket that does not accept a message within this long is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Subprotocol the server selects (the token travels in a second one).
pub const PROTOCOL: &str = "molecule.v1";
const PING_EVERY: Duration = Duration::from_secs(25);

fn query_token(q: &Option<String>) -> Option<String> {
    form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty())
}

/// `GET /ws` (admin; the token in `Authorization` or in the subprotocol list).
pub async fn websocket(
    State(shim): State<Arc<Shim>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> ShimResult {
    let token = bearer(&headers).or_else(|| protocol_token(&headers));
    shim.require_admin(token.as_deref())?;
    let rx = shim.events.subscribe();
    Ok(upgrade
        .protocols([PROTOCOL])
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve_socket(shim, socket, rx))
        .into_response())
}

async fn serve_socket(
    shim: Arc<Shim>,
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<Arc<Outgoing>>,
) {
    let clients = shim.events.receiver_count();
    shim.metrics
        .set("molecule_shim_stream_clients", &[], clients as f64);
    let stop = shim.shutdown.clone().wait();
    let mut stop = std::pin::pin!(stop);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let reason = loop {
        tokio::select! {
            _ = &mut stop => break Some((1001, "the server is shutting down")),
            msg = rx.recv() => match msg {
                Ok(m) => {
                    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(m.text.clone()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break None,
                        Err(_) => {
                            shim.metrics.inc("molecule_shim_stream_dropped_total", &[("reason", "send_timeout")]);
                            break None;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    shim.metrics.inc("molecule_shim_stream_dropped_total", &[("reason", "lagged")]);
                    break Some((1013, "too slow: reconnect and reload the list"));
                }
                Err(RecvError::Closed) => break Some((1001, "the server is shutting down")),
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    break None;
                }
            }
        }
    };
    if let Some((code, why)) = reason {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(CloseFrame {
                code,
                reason: why.into(),
            }))),
        )
        .await;
    }
    drop(rx);
    shim.metrics.set(
        "molecule_shim_stream_clients",
        &[],
        shim.events.receiver_count() as f64,
    );
}

fn sse_response(shim: &Shim, only: Option<String>) -> axum::response::Response {
    let stop = shim.shutdown.clone().wait();
    let stream = BroadcastStream::new(shim.events.subscribe())
        // A lagging client ends its stream (and reconnects); it never holds the others back.
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(move |m| {
            let keep = m
                .ok()
                .filter(|m| only.as_deref().is_none_or(|u| m.workspace_id == u));
            std::future::ready(keep.map(|m| {
                Ok::<_, std::convert::Infallible>(
                    SseEvent::default().event(m.event).data(m.text.as_str()),
                )
            }))
        })
        .take_until(stop);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(PING_EVERY))
        .into_response()
}

/// `GET /events/stream` (admin; `Authorization` or `?access_token=` for EventSource).
pub async fn sse(
    State(shim): State<Arc<Shim>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ShimResult {
    let token = bearer(&headers).or_else(|| query_token(&q));
    shim.require_admin(token.as_deref())?;
    Ok(sse_response(&shim, None))
}

/// `GET /workspaces/:id/events/stream`: one workspace's messages (its token or the admin's).
pub async fn sse_workspace(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ShimResult {
    let token = bearer(&headers).or_else(|| query_token(&q));
    shim.require_workspace(token.as_deref(), &id).await?;
    Ok(sse_response(&shim, Some(id)))
}
