//! Where a request goes and how the connection is opened: one TCP connection per request, TLS
//! on top for https, each phase under its own bound.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::http::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Error;

/// A parsed `http(s)://host[:port][/path][?query]` URL. Credentials in the URL are refused, the
/// fragment is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `host[:port]` as written: the `Host` header, and the name errors give the server.
    pub authority: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, Error> {
        let uri: Uri = url.parse().map_err(|_| Error::BadUrl("not a URL".into()))?;
        let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(Error::BadUrl("the scheme must be http or https".into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| Error::BadUrl("no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(Error::BadUrl("credentials in URLs are not accepted".into()));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(Error::BadUrl("no host".into()));
        }
        let port = port_of(authority.as_str(), https)?;
        let path = match uri.query() {
            Some(q) => format!("{}?{q}", uri.path()),
            None => uri.path().to_string(),
        };
        Ok(Url {
            https,
            host,
            port,
            path,
            authority: authority.as_str().to_string(),
        })
    }
}

/// The port written after the host (which may be a bracketed IPv6 literal), or the scheme's.
fn port_of(authority: &str, https: bool) -> Result<u16, Error> {
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    match after_host.rsplit_once(':') {
        None if https => Ok(443),
        None => Ok(80),
        Some((_, port)) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::BadUrl("invalid port".into())),
    }
}

/// A connection, plain or TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Resolves and connects within `dial`, then (https) shakes hands within `tls`.
pub(super) async fn open(
    url: &Url,
    dial: Duration,
    tls: Duration,
    config: impl FnOnce() -> Result<Arc<rustls::ClientConfig>, Error>,
) -> Result<Stream, Error> {
    let tcp =
        match tokio::time::timeout(dial, TcpStream::connect((url.host.as_str(), url.port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Error::Dial(url.authority.clone(), e.to_string())),
            Err(_) => return Err(Error::DialTimeout(url.authority.clone(), dial)),
        };
    let _ = tcp.set_nodelay(true);
    if !url.https {
        return Ok(Stream::Plain(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|_| Error::BadUrl("invalid TLS server name".into()))?;
    let connector = tokio_rustls::TlsConnector::from(config()?);
    match tokio::time::timeout(tls, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => Err(Error::Tls(url.authority.clone(), e.to_string())),
        Err(_) => Err(Error::TlsTimeout(url.authority.clone(), tls)),
    }
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
