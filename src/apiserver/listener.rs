//! Serving: TLS with a self-signed CA kept in the data dir (kubectl only sends bearer tokens
//! over TLS), plus plain HTTP on the same port for scripts and agents. The first byte of a
//! connection tells them apart (0x16 starts a TLS handshake). HTTP/2 is negotiated by ALPN.
//!
//! Every listener the process opens goes through [`serve`], which bounds what one client can
//! hold (ADR 0041): a connection that has sent part of a request (or of a TLS handshake) gets
//! `header_timeout` to finish it, one with no request in flight and nothing sent is closed after
//! `idle_timeout`, and beyond `max_connections` open connections new ones are closed at once.
//! Requests in flight, watches included, are never cut by these timers.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// The serving certificate: a CA (whose PEM goes into the kubeconfig) and a leaf it signed.
pub struct ServingCert {
    pub ca_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

/// Errors preparing TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading or writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the serving certificate in {0} is unusable; delete ca.crt, tls.crt and tls.key to regenerate"
    )]
    Bad(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ServingCert {
    /// Loads `ca.crt`, `tls.crt`, `tls.key` from `dir`, generating them on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let (ca_p, crt_p, key_p) = (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
        if !(ca_p.exists() && crt_p.exists() && key_p.exists()) {
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "molecule local CA");
            ca_params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let ca_key = rcgen::KeyPair::generate()?;
            let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
            let mut leaf = rcgen::CertificateParams::new(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ])?;
            leaf.distinguished_name
                .push(rcgen::DnType::CommonName, "molecule");
            leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let leaf_key = rcgen::KeyPair::generate()?;
            let cert = leaf.signed_by(&leaf_key, &ca)?;
            std::fs::write(&ca_p, ca.pem()).map_err(io(&ca_p))?;
            std::fs::write(&crt_p, cert.pem()).map_err(io(&crt_p))?;
            crate::util::write_private_file(&key_p, leaf_key.serialize_pem().as_bytes())
                .map_err(io(&key_p))?;
        }
        let ca_pem = std::fs::read_to_string(&ca_p).map_err(io(&ca_p))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt_p)
            .map_err(|_| TlsError::Bad(crt_p.clone()))?
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Bad(crt_p.clone()))?;
        let key = PrivateKeyDer::from_pem_file(&key_p).map_err(|_| TlsError::Bad(key_p.clone()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| TlsError::Bad(crt_p.clone()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|_| TlsError::Bad(crt_p.clone()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServingCert {
            ca_pem,
            config: Arc::new(config),
        })
    }
}

/// What one listener bounds per client (ADR 0041).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to send a whole request head (and TLS handshake) once its first byte arrived.
    pub header_timeout: Duration,
    /// Time a connection with no request in flight may send nothing.
    pub idle_timeout: Duration,
    /// Open connections (upgraded ones included); more are closed on accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
        }
    }
}

impl Limits {
    /// How often a connection's timers are checked.
    fn tick(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

/// Which protocols a listener speaks.
#[derive(Clone)]
pub enum Protocols {
    /// Plain HTTP only (the operator's and the agent listeners).
    Plain,
    /// TLS and plain HTTP on one port, told apart by the first byte (ADR 0004).
    TlsAndPlain(Arc<rustls::ServerConfig>),
    /// TLS only (`--require-tls`): a plain-HTTP client gets a 400 saying so.
    TlsOnly(Arc<rustls::ServerConfig>),
}

/// Accepts connections until `shutdown`, serving `app` with `protocols` within `limits`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    protocols: Protocols,
    limits: Limits,
    shutdown: Shutdown,
) {
    let (acceptor, plain) = match protocols {
        Protocols::Plain => (None, true),
        Protocols::TlsAndPlain(c) => (Some(tokio_rustls::TlsAcceptor::from(c)), true),
        Protocols::TlsOnly(c) => (Some(tokio_rustls::TlsAcceptor::from(c)), false),
    };
    let max = limits.max_connections.clamp(1, 1 << 24);
    let slots = Arc::new(Semaphore::new(max));
    let mut last_refusal: Option<Instant> = None;
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Over the cap: closed unanswered; logged at most every 10 s.
                        if last_refusal.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            tracing::warn!(max_connections = max, "connection limit reached; refusing new connections");
                            last_refusal = Some(Instant::now());
                        }
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let app = app.clone();
                    let acceptor = acceptor.clone();
                    let stop = shutdown.clone();
                    tokio::spawn(async move {
                        connection(stream, permit, app, acceptor, plain, limits, stop).await
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    // In-flight requests get a bounded grace period; watches are ended.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
}

/// Activity of one connection, shared by its IO, its requests and its timer.
struct ConnState {
    base: Instant,
    /// Requests in flight (until their response body is done or dropped).
    active: AtomicUsize,
    /// Milliseconds since `base` when the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// 1 + milliseconds since `base` of the first byte read while no request was in flight; 0
    /// while none is pending.
    pending_since: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            pending_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Bytes arrived: with no request in flight they begin one (or a handshake).
    fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && self.pending_since.load(Ordering::Relaxed) == 0
        {
            self.pending_since.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now();
        let pending = self.pending_since.load(Ordering::Relaxed);
        if pending > 0 {
            let waited = now.saturating_sub(pending - 1);
            return (u128::from(waited) >= limits.header_timeout.as_millis())
                .then_some("request head not received within the header timeout");
        }
        let idle = now.saturating_sub(self.idle_since.load(Ordering::Relaxed));
        (u128::from(idle) >= limits.idle_timeout.as_millis()).then_some("idle")
    }
}

/// Marks one request in flight until dropped (with its response body).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(st: &Arc<ConnState>) -> Self {
        st.active.fetch_add(1, Ordering::Relaxed);
        st.pending_since.store(0, Ordering::Relaxed);
        InFlight(st.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now(), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted in flight until it is done.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The TCP stream of one connection: notes reads, and holds the connection's slot until it is
/// dropped (an upgraded connection keeps it).
struct Counted {
    io: TcpStream,
    st: Arc<ConnState>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.st.on_read();
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Either side of a connection, as one type for hyper.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// What a plain-HTTP client of a TLS-only listener is told.
const TLS_REQUIRED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 49\r\n\r\nthis server requires TLS: use https:// instead.\r\n";

async fn connection(
    stream: TcpStream,
    slot: OwnedSemaphorePermit,
    app: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    plain: bool,
    limits: Limits,
    stop: Shutdown,
) {
    let opened = Instant::now();
    let tls = match &acceptor {
        Some(_) => {
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(1)) => first[0] == 0x16,
                _ => return,
            }
        }
        None => false,
    };
    let st = Arc::new(ConnState::new());
    st.on_read();
    let mut io = Counted {
        io: stream,
        st: st.clone(),
        _slot: slot,
    };
    let io: Box<dyn Stream> = match acceptor {
        Some(acceptor) if tls => {
            let left = limits.header_timeout.saturating_sub(opened.elapsed());
            match tokio::time::timeout(left, acceptor.accept(io)).await {
                Ok(Ok(s)) => Box::new(s),
                _ => return,
            }
        }
        _ if plain => Box::new(io),
        _ => {
            // TLS only: say so, then drain what the client sent so the close is clean.
            let grace = Duration::from_secs(1);
            let _ = tokio::time::timeout(grace, io.write_all(TLS_REQUIRED)).await;
            let _ = tokio::time::timeout(grace, io.shutdown()).await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(grace, async {
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            return;
        }
    };
    let requests = st.clone();
    let service = TowerToHyperService::new(tower::service_fn(
        move |req: axum::http::Request<hyper::body::Incoming>| {
            let in_flight = InFlight::start(&requests);
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(Body::new)).await;
                resp.map(|r| {
                    r.map(|inner| {
                        Body::new(Tracked {
                            inner,
                            _in_flight: in_flight,
                        })
                    })
                })
            }
        },
    ));
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stop = stop.wait();
    tokio::pin!(stop);
    let mut stopping = false;
    let mut hard_stop: Option<Instant> = None;
    let mut tick = tokio::time::interval(limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut stop, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if let Some(at) = hard_stop {
                    if Instant::now() >= at {
                        return;
                    }
                } else if !stopping && let Some(why) = st.expired(&limits) {
                    // A clean close first (GOAWAY on HTTP/2); dropped if that does not end it.
                    tracing::debug!(reason = why, "closing connection");
                    conn.as_mut().graceful_shutdown();
                    hard_stop = Some(Instant::now() + limits.header_timeout.min(Duration::from_secs(5)));
                }
            }
        }
    }
}
