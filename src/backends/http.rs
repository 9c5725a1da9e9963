//! A small HTTP/1.1 client for talking to services we do not control (the EC2 control plane,
//! workspace agents behind the A2A proxy). Every phase has its own bound — dial (resolve +
//! TCP connect), TLS handshake, response headers, and body — and bodies are read only up to a
//! cap. One connection per request: these calls are rare enough that a pool would only add
//! state to get wrong.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::http::{HeaderValue, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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

/// Why a request produced no response. The text never contains a request or response body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("invalid URL: {0}")]
    BadUrl(String),
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

impl HttpError {
    /// Whether nothing reached the server (safe to retry even a non-idempotent call).
    pub fn before_sending(&self) -> bool {
        matches!(
            self,
            HttpError::BadUrl(_)
                | HttpError::Dial(..)
                | HttpError::DialTimeout(..)
                | HttpError::Tls(..)
                | HttpError::TlsTimeout(..)
        )
    }
}

/// A response with its body read up to the request's cap.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub body: Bytes,
    /// The body was longer than the cap; `body` holds its first `cap` bytes.
    pub truncated: bool,
}

/// The HTTP client.
#[derive(Clone)]
pub struct HttpClient {
    timeouts: Timeouts,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// The TLS roots: the system's, plus the PEM certificates in `extra_ca` (a private CA).
pub fn tls_config(extra_ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(pem) = extra_ca {
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| format!("reading the CA bundle: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("adding a CA certificate: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err("the CA bundle holds no PEM certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
    authority: String,
}

fn parse_url(url: &str) -> Result<Target, HttpError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| HttpError::BadUrl("not a URL".into()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(HttpError::BadUrl("the scheme must be http or https".into())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| HttpError::BadUrl("no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(HttpError::BadUrl(
            "credentials in URLs are not accepted".into(),
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(HttpError::BadUrl("no host".into()));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        https,
        host,
        port,
        path,
        authority: authority.as_str().to_string(),
    })
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl HttpClient {
    pub fn new(timeouts: Timeouts, tls: Arc<rustls::ClientConfig>) -> Self {
        HttpClient { timeouts, tls }
    }

    /// A client trusting the system roots.
    pub fn with_system_roots(timeouts: Timeouts) -> Result<Self, String> {
        Ok(Self::new(timeouts, tls_config(None)?))
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    async fn connect(&self, t: &Target) -> Result<Stream, HttpError> {
        let tcp = match tokio::time::timeout(
            self.timeouts.dial,
            TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(HttpError::Dial(t.authority.clone(), e.kind().to_string())),
            Err(_) => {
                return Err(HttpError::DialTimeout(
                    t.authority.clone(),
                    self.timeouts.dial,
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        if !t.https {
            return Ok(Stream::Plain(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|_| HttpError::BadUrl("invalid TLS server name".into()))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        match tokio::time::timeout(self.timeouts.tls, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
            Ok(Err(e)) => Err(HttpError::Tls(t.authority.clone(), e.to_string())),
            Err(_) => Err(HttpError::TlsTimeout(
                t.authority.clone(),
                self.timeouts.tls,
            )),
        }
    }

    /// Sends one request. `headers` are added as given (`Host` and `Content-Length` are set
    /// here); `body` is `(bytes, content type)`. The response body is read up to `max_body`
    /// bytes; the rest is discarded and `truncated` set.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(Bytes, &str)>,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let t = parse_url(url)?;
        let stream = self.connect(&t).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Protocol(t.authority.clone(), e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder().method(method).uri(t.path.as_str());
        req = req.header(
            hyper::header::HOST,
            HeaderValue::from_str(&t.authority)
                .map_err(|_| HttpError::BadUrl("invalid host".into()))?,
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some((b, ct)) => {
                req = req.header(hyper::header::CONTENT_TYPE, ct);
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|_| HttpError::BadUrl("invalid request header".into()))?;
        let resp =
            match tokio::time::timeout(self.timeouts.response_header, sender.send_request(req))
                .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    driver.abort();
                    return Err(HttpError::Protocol(t.authority.clone(), e.to_string()));
                }
                Err(_) => {
                    driver.abort();
                    return Err(HttpError::HeaderTimeout(
                        t.authority.clone(),
                        self.timeouts.response_header,
                    ));
                }
            };
        let status = resp.status().as_u16();
        let header = |name: hyper::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect::<String>())
        };
        let content_type = header(hyper::header::CONTENT_TYPE);
        let retry_after = header(hyper::header::RETRY_AFTER);
        let mut incoming = resp.into_body();
        let read = async {
            let mut buf = BytesMut::new();
            let mut truncated = false;
            while let Some(frame) = incoming.frame().await {
                let frame =
                    frame.map_err(|e| HttpError::Protocol(t.authority.clone(), e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    let room = max_body.saturating_sub(buf.len());
                    if data.len() > room {
                        buf.extend_from_slice(&data[..room]);
                        truncated = true;
                        break;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok::<_, HttpError>((buf.freeze(), truncated))
        };
        let result = tokio::time::timeout(self.timeouts.body, read).await;
        driver.abort();
        let (body, truncated) = match result {
            Ok(r) => r?,
            Err(_) => {
                return Err(HttpError::BodyTimeout(
                    t.authority.clone(),
                    self.timeouts.body,
                ));
            }
        };
        Ok(Response {
            status,
            content_type,
            retry_after,
            body,
            truncated,
        })
    }
}

/// Parses the first JSON value of a (possibly truncated or padded) body, like a streaming
/// decoder would: trailing bytes after one complete value are ignored.
pub fn first_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut it = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    match it.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("malformed JSON ({})", e.classify_name())),
        None => Err("empty body".into()),
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn client(ms: u64) -> HttpClient {
        let t = Duration::from_millis(ms);
        HttpClient::new(
            Timeouts {
                dial: t,
                tls: t,
                response_header: t,
                body: t,
            },
            tls_config(None).expect("tls"),
        )
    }

    /// A server that answers every connection with `reply` after reading the request head.
    async fn server(reply: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn reads_status_headers_and_a_capped_body() {
        let base = server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 15\r\nContent-Length: 20\r\n\r\n{\"a\":1}             ").await;
        let r = client(2000)
            .send(Method::GET, &format!("{base}/x?y=1"), &[], None, 7)
            .await
            .expect("response");
        assert_eq!(r.status, 503);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.retry_after.as_deref(), Some("15"));
        assert_eq!(&r.body[..], b"{\"a\":1}");
        assert!(r.truncated);
        let v: serde_json::Value = first_json(&r.body).expect("json prefix");
        assert_eq!(v["a"], 1);
    }

    #[tokio::test]
    async fn a_silent_server_hits_the_header_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = l.accept().await {
                held.push(s); // accept, never answer
            }
        });
        let e = client(200)
            .send(Method::GET, &format!("http://{addr}/"), &[], None, 10)
            .await
            .expect_err("timeout");
        assert!(matches!(e, HttpError::HeaderTimeout(..)), "{e}");
        assert!(!e.before_sending());
    }

    #[tokio::test]
    async fn a_silent_tls_server_hits_the_handshake_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let e = client(200)
            .send(
                Method::GET,
                &format!("https://localhost:{}/", addr.port()),
                &[],
                None,
                10,
            )
            .await
            .expect_err("timeout");
        assert!(matches!(e, HttpError::TlsTimeout(..)), "{e}");
        assert!(e.before_sending());
    }

    #[tokio::test]
    async fn refused_connections_and_bad_urls_are_dial_errors() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let e = client(2000)
            .send(
                Method::GET,
                &format!("http://127.0.0.1:{port}/"),
                &[],
                None,
                10,
            )
            .await
            .expect_err("refused");
        assert!(matches!(e, HttpError::Dial(..)), "{e}");
        for bad in ["ftp://x/", "http://user:pw@host/", "not a url", "http:///x"] {
            let e = client(100)
                .send(Method::GET, bad, &[], None, 10)
                .await
                .expect_err(bad);
            assert!(matches!(e, HttpError::BadUrl(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn first_json_ignores_trailing_bytes_and_names_the_problem() {
        let v: serde_json::Value = first_json(b"{\"x\":2} trailing junk").expect("prefix");
        assert_eq!(v["x"], 2);
        let e = first_json::<serde_json::Value>(b"{\"x\":").expect_err("eof");
        assert!(e.contains("truncated"), "{e}");
        let e = first_json::<serde_json::Value>(b"<html>").expect_err("syntax");
        assert!(e.contains("syntax"), "{e}");
        assert!(!e.contains("html"), "the body is never echoed: {e}");
    }
}
