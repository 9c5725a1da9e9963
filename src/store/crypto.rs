//! Encryption at rest for Secret objects: AES-256-GCM with a random 96-bit nonce, versioned
//! envelope `enc:v1:<base64(nonce || ciphertext)>`. The key comes from `MOLECULE_SECRET_KEY`
//! (base64 of 32 bytes) or from a key file created with mode 0600 on first start.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;

const PREFIX: &str = "enc:v1:";

/// Why a key could not be had, or a value not opened. Never carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("MOLECULE_SECRET_KEY must be the base64 encoding of exactly 32 bytes")]
    BadEnvKey,
    #[error(
        "the key file {0} is not 32 bytes of base64; remove it only if no secrets were stored with it"
    )]
    BadKeyFile(String),
    #[error("cannot read or create the key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("a stored secret could not be decrypted (wrong key or corrupt data)")]
    Decrypt,
}

/// The AES-256-GCM key for secrets at rest.
#[derive(Clone)]
pub struct SecretKey(Aes256Gcm);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() == 32)
            .then(|| Aes256Gcm::new_from_slice(b).ok())
            .flatten()
            .map(SecretKey)
    }

    /// From `MOLECULE_SECRET_KEY` when set, else from `key_file` (created 0600 when missing).
    pub fn load(env_value: Option<&str>, key_file: &Path) -> Result<Self, SecretKeyError> {
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            let bytes = B64
                .decode(v.trim())
                .map_err(|_| SecretKeyError::BadEnvKey)?;
            return Self::from_bytes(&bytes).ok_or(SecretKeyError::BadEnvKey);
        }
        let io = |source| SecretKeyError::Io {
            path: key_file.display().to_string(),
            source,
        };
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let bytes = B64
                    .decode(text.trim())
                    .map_err(|_| SecretKeyError::BadKeyFile(key_file.display().to_string()))?;
                Self::from_bytes(&bytes)
                    .ok_or_else(|| SecretKeyError::BadKeyFile(key_file.display().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                crate::util::write_private_file(key_file, B64.encode(bytes).as_bytes())
                    .map_err(io)?;
                Self::from_bytes(&bytes).ok_or(SecretKeyError::BadEnvKey)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Seals a plaintext value.
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption with a fresh nonce cannot fail for inputs of this size.
        let ct = self
            .0
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!("{PREFIX}{}", B64.encode(blob))
    }

    /// Opens a sealed value.
    pub fn open(&self, sealed: &str) -> Result<String, SecretKeyError> {
        let blob = B64
            .decode(sealed.strip_prefix(PREFIX).ok_or(SecretKeyError::Decrypt)?)
            .map_err(|_| SecretKeyError::Decrypt)?;
        if blob.len() < 12 {
            return Err(SecretKeyError::Decrypt);
        }
        let (nonce, ct) = blob.split_at(12);
        let pt = self
            .0
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SecretKeyError::Decrypt)?;
        String::from_utf8(pt).map_err(|_| SecretKeyError::Decrypt)
    }

    /// Whether a stored value is sealed.
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("secret.key");
        let k1 = SecretKey::load(None, &path).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
                0o600
            );
        }
        let sealed = k1.seal("hunter2");
        assert!(!sealed.contains("hunter2"));
        assert!(SecretKey::is_sealed(&sealed));
        let k2 = SecretKey::load(None, &path).expect("reuse");
        assert_eq!(k2.open(&sealed).expect("open"), "hunter2");
    }

    #[test]
    fn wrong_key_or_tampering_fails_closed() {
        let dir = tempfile::tempdir().expect("tmp");
        let k1 = SecretKey::load(None, &dir.path().join("a")).expect("a");
        let k2 = SecretKey::load(None, &dir.path().join("b")).expect("b");
        let sealed = k1.seal("v");
        assert!(k2.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(k1.open(&tampered).is_err() || k1.open(&tampered).ok() != Some("v".into()));
    }

    #[test]
    fn env_key_must_be_32_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(SecretKey::load(Some("c2hvcnQ="), &dir.path().join("k")).is_err());
        let good = B64.encode([7u8; 32]);
        let k = SecretKey::load(Some(&good), &dir.path().join("k")).expect("env key");
        assert_eq!(k.open(&k.seal("x")).expect("rt"), "x");
        assert!(
            !dir.path().join("k").exists(),
            "no key file when the env supplies the key"
        );
    }
}
