//! The one outbound HTTP client (ADR 0046), used by the echo agent, the control-plane backend,
//! the A2A proxy and the registry client.
//!
//! - **One connection per request** over hyper's HTTP/1.1 connection API, sent with
//!   `Connection: close`: these calls are rare enough that a pool would only add state to get
//!   wrong, and it lets every phase have its own bound.
//! - **Bounds**: dial (resolve + TCP connect), TLS handshake, response headers and body each
//!   have a timeout ([`Timeouts`]); the body is read up to a cap given per request, the rest is
//!   discarded and [`Response::truncated`] set, so each caller decides whether a cut body is an
//!   error.
//! - **TLS**: the system roots are read once per process and shared; a client may add a private
//!   CA bundle ([`tls_config`]). Plain-http clients never read the roots.
//! - **Redirects are never followed**: a 3xx is returned like any other status. No caller wants
//!   its credentials sent to another host.
//! - **Errors carry no secrets**: they name the server by `host[:port]` only — never the URL's
//!   path or query, a header value or a body — and `Authorization` is marked sensitive.

mod connect;
mod tls;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::{Method, Request};
use hyper_util::rt::TokioIo;

pub use connect::Url;
pub use tls::{TlsSetupError, system_config, tls_config};

/// Bounds of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Name resolution plus TCP connect.
    pub dial: Duration,
    /// TLS handshake (https only).
    pub tls: Duration,
    /// From the request being written to the response status line and headers.
    pub response_header: Duration,
    /// Reading the (capped) body once the headers arrived.
    pub body: Duration,
}

impl Timeouts {
    /// The same bound for every phase.
    pub const fn uniform(d: Duration) -> Timeouts {
        Timeouts {
            dial: d,
            tls: d,
            response_header: d,
            body: d,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            dial: Duration::from_secs(10),
            tls: Duration::from_secs(10),
            response_header: Duration::from_secs(30),
            body: Duration::from_secs(30),
        }
    }
}

/// Why a request produced no response. The text names the server by `host[:port]` only and
/// never contains a header value or a body.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid URL: {0}")]
    BadUrl(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("could not connect to {0}: {1}")]
    Dial(String, String),
    #[error("connecting to {0} timed out after {1:?}")]
    DialTimeout(String, Duration),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, String),
    #[error("TLS handshake with {0} timed out after {1:?}")]
    TlsTimeout(String, Duration),
    #[error("{0} sent no response headers within {1:?}")]
    HeaderTimeout(String, Duration),
    #[error("{0} did not finish its response body within {1:?}")]
    BodyTimeout(String, Duration),
    #[error("HTTP exchange with {0} failed: {1}")]
    Protocol(String, String),
}

impl Error {
    /// Whether nothing reached the server (safe to retry even a non-idempotent call).
    pub fn before_sending(&self) -> bool {
        matches!(
            self,
            Error::BadUrl(_)
                | Error::BadRequest(_)
                | Error::Dial(..)
                | Error::DialTimeout(..)
                | Error::Tls(..)
                | Error::TlsTimeout(..)
        )
    }
}

/// A response with its body read up to the request's cap.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body was longer than the cap; `body` holds its first `cap` bytes.
    pub truncated: bool,
    /// Only from a client made with [`Client::keeping_partial`]: the status was 2xx and part of
    /// the body arrived, then reading the rest failed (why is here; `body` holds what came).
    pub incomplete: Option<Error>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A header's value, when it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Content-Type`, at most 256 characters.
    pub fn content_type(&self) -> Option<String> {
        self.short_header(header::CONTENT_TYPE.as_str())
    }

    /// `Retry-After`, at most 256 characters.
    pub fn retry_after(&self) -> Option<String> {
        self.short_header(header::RETRY_AFTER.as_str())
    }

    fn short_header(&self, name: &str) -> Option<String> {
        self.header(name).map(|s| s.chars().take(256).collect())
    }
}

/// The HTTP client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    timeouts: Timeouts,
    /// `None`: the shared system roots, read at the first https request.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Answer a 2xx whose body broke off after some bytes with what arrived
    /// ([`Response::incomplete`]) instead of an error.
    keep_partial: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client trusting the system roots.
    pub fn new(timeouts: Timeouts) -> Client {
        Client {
            timeouts,
            tls: None,
            keep_partial: false,
        }
    }

    /// A client trusting the roots of `tls` (see [`tls_config`]).
    pub fn with_tls(timeouts: Timeouts, tls: std::sync::Arc<rustls::ClientConfig>) -> Client {
        Client {
            timeouts,
            tls: Some(tls),
            keep_partial: false,
        }
    }

    /// This client, answering a 2xx whose body broke off after some bytes with the part that
    /// arrived and [`Response::incomplete`] set, rather than an error: a caller for whom a
    /// delivered answer counts even when the connection then failed (the A2A proxy, ADR 0050).
    pub fn keeping_partial(mut self) -> Client {
        self.keep_partial = true;
        self
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn tls_for(&self, authority: &str) -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
        match &self.tls {
            Some(c) => Ok(c.clone()),
            None => system_config().map_err(|e| Error::Tls(authority.to_string(), e.to_string())),
        }
    }

    /// Sends one request. `headers` are added as given (`Host`, `Connection` and
    /// `Content-Length` are set here); `body` is `(bytes, content type)`. The response body is
    /// read up to `max_body` bytes; the rest is discarded and `truncated` set.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(Bytes, &str)>,
        max_body: usize,
    ) -> Result<Response, Error> {
        let url = Url::parse(url)?;
        let request = build_request(method, &url, headers, body)?;
        let stream = connect::open(&url, self.timeouts.dial, self.timeouts.tls, || {
            self.tls_for(&url.authority)
        })
        .await?;
        self.exchange(stream, request, &url.authority, max_body)
            .await
    }

    /// Writes the request on a fresh connection and reads the answer, each phase bounded.
    async fn exchange(
        &self,
        stream: connect::Stream,
        request: Request<Full<Bytes>>,
        authority: &str,
        max_body: usize,
    ) -> Result<Response, Error> {
        let protocol = |e: hyper::Error| Error::Protocol(authority.to_string(), e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(protocol)?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let bound = self.timeouts.response_header;
        let head = tokio::time::timeout(bound, sender.send_request(request)).await;
        let resp = match head {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                driver.abort();
                return Err(protocol(e));
            }
            Err(_) => {
                driver.abort();
                return Err(Error::HeaderTimeout(authority.to_string(), bound));
            }
        };
        let (parts, incoming) = resp.into_parts();
        let bound = self.timeouts.body;
        let mut buf = BytesMut::new();
        let read = tokio::time::timeout(bound, read_capped(incoming, max_body, &mut buf)).await;
        driver.abort();
        let failure = match read {
            Ok(Ok(truncated)) => {
                return Ok(Response {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: buf.freeze(),
                    truncated,
                    incomplete: None,
                });
            }
            Ok(Err(e)) => protocol(e),
            Err(_) => Error::BodyTimeout(authority.to_string(), bound),
        };
        if self.keep_partial && parts.status.is_success() && !buf.is_empty() {
            return Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: buf.freeze(),
                truncated: false,
                incomplete: Some(failure),
            });
        }
        Err(failure)
    }
}

/// The request as sent: origin-form target, `Host`, `Connection: close`, the caller's headers
/// (`Authorization` marked sensitive) and the body with its type.
fn build_request(
    method: Method,
    url: &Url,
    headers: &[(&str, &str)],
    body: Option<(Bytes, &str)>,
) -> Result<Request<Full<Bytes>>, Error> {
    let host =
        HeaderValue::from_str(&url.authority).map_err(|_| Error::BadUrl("invalid host".into()))?;
    let mut req = Request::builder()
        .method(method)
        .uri(url.path.as_str())
        .header(header::HOST, host)
        .header(header::CONNECTION, "close");
    for (name, value) in headers {
        let (name, value) = header_pair(name, value)?;
        req = req.header(name, value);
    }
    let body = match body {
        Some((bytes, content_type)) => {
            let (name, value) = header_pair(header::CONTENT_TYPE.as_str(), content_type)?;
            req = req.header(name, value);
            bytes
        }
        None => Bytes::new(),
    };
    req.body(Full::new(body))
        .map_err(|_| Error::BadUrl("invalid path or method".into()))
}

/// A header, refused by name only (the value may be a credential).
fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Error::BadRequest("invalid header name".into()))?;
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::BadRequest(format!("the value of header {name} is not valid")))?;
    if name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION {
        value.set_sensitive(true);
    }
    Ok((name, value))
}

/// Reads `body` into `buf` up to `cap` bytes; `true` when there was more. On an error `buf`
/// keeps what arrived before it.
async fn read_capped(
    mut body: Incoming,
    cap: usize,
    buf: &mut BytesMut,
) -> Result<bool, hyper::Error> {
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let room = cap.saturating_sub(buf.len());
        if data.len() > room {
            buf.extend_from_slice(&data[..room]);
            return Ok(true);
        }
        buf.extend_from_slice(&data);
    }
    Ok(false)
}

/// Parses the first JSON value of a (possibly truncated or padded) body, like a streaming
/// decoder would: trailing bytes after one complete value are ignored. The error names the
/// kind of problem, never the body.
pub fn first_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut it = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    match it.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("malformed JSON ({})", category(&e))),
        None => Err("empty body".into()),
    }
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Eof => "truncated",
    }
}

#[cfg(test)]
mod tests;
