//! Bearer tokens: reading them from a request and comparing them. Every route that checks a
//! token goes through here, so there is one constant-time comparison (the `subtle` crate) and
//! one parser of the `Authorization` header.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The bearer token of a request (`Authorization: Bearer <token>`), if any and not empty.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The sha256 of a token: what is kept on record instead of the token itself.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// [`digest`] as lowercase hex (`status.tokenHash`).
pub fn digest_hex(token: &str) -> String {
    hex::encode(digest(token))
}

/// Whether two digests are equal, in time independent of where they differ.
pub fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Whether a presented token equals the expected one. Both are hashed first, so neither the
/// length nor the matching prefix of the expected token shows in the time taken.
pub fn same_token(presented: &str, expected: &str) -> bool {
    same_digest(&digest(presented), &digest(expected))
}

/// Whether a presented token hashes to a recorded hex digest (`status.tokenHash`).
pub fn matches_hex_digest(presented: &str, recorded_hex: &str) -> bool {
    match hex::decode(recorded_hex) {
        Ok(recorded) => same_digest(&digest(presented), &recorded),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_and_digests() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("", "abc"));
        assert!(!same_token("abcd", "abc"));
        let hex = digest_hex("tok");
        assert!(matches_hex_digest("tok", &hex));
        assert!(!matches_hex_digest("tok2", &hex));
        assert!(!matches_hex_digest("tok", "not hex"));
        assert!(!same_digest(&[1, 2], &[1, 2, 3]));
    }

    #[test]
    fn reads_the_bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer  abc ".parse().expect("h"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Bearer ".parse().expect("h"));
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Basic abc".parse().expect("h"));
        assert_eq!(bearer(&h), None);
    }
}
