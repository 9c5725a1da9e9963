//! The TLS roots of outbound calls: the system's certificates, read once per process, plus an
//! optional private CA bundle per client.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a TLS client configuration could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading the CA bundle: {0}")]
    BadPem(String),
    #[error("adding a CA certificate: {0}")]
    BadCertificate(String),
    #[error("the CA bundle holds no PEM certificate")]
    EmptyBundle,
    #[error("TLS setup: {0}")]
    Protocols(String),
}

/// The system roots, read on first use and shared by every client.
fn native_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            tracing::warn!("no system CA certificates; HTTPS servers will fail verification");
        }
        roots
    })
}

fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Protocols(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configuration trusting the system roots only: built once, shared by every client.
pub fn system_config() -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, TlsSetupError>> = OnceLock::new();
    CONFIG
        .get_or_init(|| client_config(native_roots().clone()))
        .clone()
}

/// The system roots plus the PEM certificates in `extra_ca` (a private CA), when given.
pub fn tls_config(extra_ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let Some(pem) = extra_ca else {
        return system_config();
    };
    let mut roots = native_roots().clone();
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsSetupError::BadPem(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsSetupError::BadCertificate(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsSetupError::EmptyBundle);
    }
    client_config(roots)
}
