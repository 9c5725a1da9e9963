//! Who is calling. Admin routes take the admin token (the API bearer token the kubeconfig
//! carries); workspace routes also take a live token of that workspace, of which only the
//! sha256 is on record (`crate::workspace_tokens`, ADR 0049). Browsers cannot set headers on a WebSocket, so the
//! stream also reads the token from the Kubernetes-style subprotocol
//! `base64url.bearer.authorization.k8s.io.<base64url token>`, and (for EventSource) from an
//! `access_token` query parameter on the stream routes only.
//!
//! What a workspace's own token may do (ADR 0038): read what its workspace may talk to (the
//! hierarchy rule of `crate::teams`), change the presentation of its own workspace, delete it,
//! and install plugins from the allowed sources into it. Everything else takes the admin token;
//! `docs/api-auth.md` lists every route.

use std::sync::Arc;

use axum::http::HeaderMap;
use base64::Engine;
use kube::ResourceExt;
use kube::api::Api;

use super::Shim;
use super::error::ShimError;
use crate::resources::Workspace;

/// The prefix of the bearer-token WebSocket subprotocol.
pub const WS_TOKEN_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A workspace, by uid.
    Workspace(String),
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    crate::tokens::bearer(headers).map(String::from)
}

/// The token carried in the WebSocket subprotocol list, if any.
pub fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let list = headers.get("sec-websocket-protocol")?.to_str().ok()?;
    list.split(',').map(str::trim).find_map(|p| {
        let b64 = p.strip_prefix(WS_TOKEN_PROTOCOL)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()?;
        String::from_utf8(raw).ok().filter(|t| !t.is_empty())
    })
}

pub fn sha256_hex(token: &str) -> String {
    crate::tokens::digest_hex(token)
}

impl Shim {
    /// Constant-time comparison through the digests.
    pub fn is_admin_token(&self, token: &str) -> bool {
        crate::tokens::same_digest(&crate::tokens::digest(token), &self.admin_hash)
    }

    /// Admin routes: the admin token only.
    pub fn require_admin(&self, token: Option<&str>) -> Result<(), ShimError> {
        match token {
            None => Err(ShimError::Unauthenticated),
            Some(t) if self.is_admin_token(t) => Ok(()),
            Some(t) if self.cache.owner_of_token_hash(&sha256_hex(t)).is_some() => Err(
                ShimError::Forbidden("a workspace token cannot call an admin route"),
            ),
            Some(_) => Err(ShimError::BadToken),
        }
    }

    /// Who holds `token`: the admin, or the workspace whose token it is (by the index).
    pub fn caller(&self, token: Option<&str>) -> Result<Caller, ShimError> {
        let Some(token) = token else {
            return Err(ShimError::Unauthenticated);
        };
        if self.is_admin_token(token) {
            return Ok(Caller::Admin);
        }
        match self.cache.owner_of_token_hash(&sha256_hex(token)) {
            Some(uid) => Ok(Caller::Workspace(uid)),
            None => Err(ShimError::BadToken),
        }
    }

    /// Admin routes about one workspace: the admin token, then the live record (404 when
    /// unknown, 409 while it is being deleted).
    pub async fn require_admin_on(
        &self,
        token: Option<&str>,
        uid: &str,
    ) -> Result<Arc<Workspace>, ShimError> {
        self.require_admin(token)?;
        let ws = self.workspace(uid).await?;
        if ws.metadata.deletion_timestamp.is_some() {
            return Err(ShimError::Conflict("the workspace is being deleted".into()));
        }
        Ok(ws)
    }

    /// Reading a workspace: the admin token, its own token, or the token of a workspace that
    /// may talk to it under the hierarchy rule (ADR 0038). Any other workspace token gets 403,
    /// also for an unknown uid, so a workspace never learns what exists beyond its reach.
    pub async fn require_reader(
        &self,
        token: Option<&str>,
        uid: &str,
    ) -> Result<(Caller, Arc<Workspace>), ShimError> {
        match self.require_workspace(token, uid).await {
            Err(ShimError::Forbidden(_)) => {}
            other => return other,
        }
        let Caller::Workspace(me) = self.caller(token)? else {
            return Err(ShimError::Forbidden(
                "this token cannot read that workspace",
            ));
        };
        let tree = self.cache.tree();
        match tree.get(uid) {
            Some(target) if tree.can_communicate(&me, uid) => {
                Ok((Caller::Workspace(me), target.clone()))
            }
            _ => Err(ShimError::Forbidden(
                "this workspace may not read that workspace",
            )),
        }
    }

    /// [`Self::require_workspace`] for routes that change a workspace: one being deleted is
    /// refused (409) rather than changed under its finalizer.
    pub async fn require_live_workspace(
        &self,
        token: Option<&str>,
        uid: &str,
    ) -> Result<(Caller, Arc<Workspace>), ShimError> {
        let (caller, ws) = self.require_workspace(token, uid).await?;
        if ws.metadata.deletion_timestamp.is_some() {
            return Err(ShimError::Conflict("the workspace is being deleted".into()));
        }
        Ok((caller, ws))
    }

    /// Workspace routes: the admin token, or the token of workspace `uid`. Returns the record.
    /// A non-admin caller never learns whether another uid exists (401/403, never 404).
    pub async fn require_workspace(
        &self,
        token: Option<&str>,
        uid: &str,
    ) -> Result<(Caller, Arc<Workspace>), ShimError> {
        let Some(token) = token else {
            return Err(ShimError::Unauthenticated);
        };
        super::input::check_id(uid)?;
        if self.is_admin_token(token) {
            let ws = self.workspace(uid).await?;
            return Ok((Caller::Admin, ws));
        }
        let matches = |w: &Workspace| crate::workspace_tokens::accepts_workspace(w, token);
        if let Some(w) = self.cache.get(uid) {
            if matches(&w) {
                return Ok((Caller::Workspace(uid.to_string()), w));
            }
            // The controller may have just rotated the token: re-read the record.
            let api: Api<Workspace> =
                Api::namespaced(self.client.clone(), &w.namespace().unwrap_or_default());
            if let Some(fresh) = api.get_opt(&w.name_any()).await?
                && fresh.uid().as_deref() == Some(uid)
                && matches(&fresh)
            {
                return Ok((Caller::Workspace(uid.to_string()), Arc::new(fresh)));
            }
        }
        if self.cache.owner_of_token_hash(&sha256_hex(token)).is_some() {
            return Err(ShimError::Forbidden(
                "this token belongs to another workspace",
            ));
        }
        Err(ShimError::BadToken)
    }

    /// A live record by uid (waits for the first list; 404 when unknown).
    pub async fn workspace(&self, uid: &str) -> Result<Arc<Workspace>, ShimError> {
        super::input::check_id(uid)?;
        self.cache.wait_ready().await?;
        self.cache.get(uid).ok_or(ShimError::NotFound("workspace"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_headers_and_subprotocols() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().expect("h"));
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("tok-1");
        h.insert(
            "sec-websocket-protocol",
            format!("molecule.v1, {WS_TOKEN_PROTOCOL}{b64}")
                .parse()
                .expect("h"),
        );
        assert_eq!(protocol_token(&h).as_deref(), Some("tok-1"));
        h.insert("sec-websocket-protocol", "molecule.v1".parse().expect("h"));
        assert_eq!(protocol_token(&h), None);
    }
}
