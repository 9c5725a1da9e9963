//! Serving: TLS with a self-signed CA kept in the data dir (kubectl only sends bearer tokens
//! over TLS), plus plain HTTP on the same port for scripts and agents. The first byte of a
//! connection tells them apart (0x16 starts a TLS handshake). HTTP/2 is negotiated by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
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

/// Accepts connections until `shutdown`, serving `app` over TLS or plain HTTP.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: Shutdown,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let app = app.clone();
                    let acceptor = acceptor.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move { connection(stream, app, acceptor, watcher).await });
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
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

async fn connection(
    stream: TcpStream,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    let service = TowerToHyperService::new(
        app.map_request(|req: axum::http::Request<hyper::body::Incoming>| req.map(Body::new)),
    );
    let builder = Builder::new(TokioExecutor::new());
    let result = if first[0] == 0x16 {
        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
        {
            Ok(Ok(s)) => s,
            _ => return,
        };
        watcher
            .watch(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .into_owned(),
            )
            .await
    } else {
        watcher
            .watch(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned(),
            )
            .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
