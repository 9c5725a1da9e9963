//! What the team routes share (ADR 0050): registry discovery (`discovery`), the activity log
//! (`activity`) and the caller checks of the A2A proxy (`a2a`). They are served on the main
//! port and on the agent listener, where agents reach them with their workspace token; only
//! the main port also takes the admin token.
//!
//! Who a caller is: the admin token, or a workspace token — which must be the token of the
//! workspace the caller claims to be (the route's `:id`, or `X-Workspace-ID`). Whom it may
//! reach: the hierarchy rule (`crate::teams::can_communicate`) over the live Workspace
//! records.

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use super::activity::ActivityLog;
use super::error::ShimError;
use super::tree::Tree;
use crate::resources::Workspace;
use crate::telemetry::Metrics;

/// The header naming the calling workspace.
pub const WORKSPACE_HEADER: &str = "x-workspace-id";

/// What the team routes need; built by `host` when a Workspace cache runs.
pub struct TeamsState {
    pub client: Client,
    pub workspaces: Store<Workspace>,
    pub activity: ActivityLog,
    pub metrics: Arc<Metrics>,
}

/// An authenticated caller of a team route.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The admin token (the canvas, an operator): main port only.
    Admin,
    /// A workspace, proven by its own token.
    Workspace(Arc<Workspace>),
}

impl Caller {
    /// The calling workspace's uid; `None` for the admin.
    pub fn uid(&self) -> Option<String> {
        match self {
            Caller::Admin => None,
            Caller::Workspace(w) => w.uid(),
        }
    }
}

/// Whether `token` is one of the workspace's live tokens (ADR 0049; only digests are on
/// record).
pub fn token_matches(ws: &Workspace, token: &str) -> bool {
    crate::workspace_tokens::accepts_workspace(ws, token)
}

/// The admin token's digest where a listener accepts it (the main port), or `None`.
pub type AdminHash = Option<Arc<[u8; 32]>>;

/// Whether `token` is the admin token on a listener that accepts it.
pub fn is_admin(admin: &AdminHash, token: &str) -> bool {
    admin
        .as_deref()
        .is_some_and(|h| crate::tokens::same_digest(&crate::tokens::digest(token), h))
}

/// The `X-Workspace-ID` header: `None` when absent; 400 when it is not a workspace id.
pub fn claimed_workspace(headers: &HeaderMap) -> Result<Option<String>, ShimError> {
    let Some(v) = headers.get(WORKSPACE_HEADER) else {
        return Ok(None);
    };
    let id = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| super::input::check_id(s).is_ok())
        .ok_or_else(|| ShimError::bad("X-Workspace-ID must be a workspace id (a UUID)"))?;
    Ok(Some(id.to_string()))
}

impl TeamsState {
    /// The live record of `uid`, from the cache.
    pub fn get(&self, uid: &str) -> Option<Arc<Workspace>> {
        self.workspaces
            .state()
            .into_iter()
            .find(|w| w.uid().as_deref() == Some(uid))
    }

    /// Every live record as an org tree.
    pub fn tree(&self) -> Tree {
        Tree::new(self.workspaces.state())
    }

    /// The workspace `uid`, when `token` is its token. The cached record first; on a mismatch
    /// the record is read again (the controller may have just rotated the token). A workspace
    /// that is unknown or whose token does not match is the same 401, so a token never learns
    /// which ids exist.
    pub async fn workspace_by_token(
        &self,
        uid: &str,
        token: &str,
    ) -> Result<Arc<Workspace>, ShimError> {
        let Some(ws) = self.get(uid) else {
            return Err(ShimError::BadToken);
        };
        if token_matches(&ws, token) {
            return Ok(ws);
        }
        let api: Api<Workspace> =
            Api::namespaced(self.client.clone(), &ws.namespace().unwrap_or_default());
        match api.get_opt(&ws.name_any()).await? {
            Some(fresh) if fresh.uid().as_deref() == Some(uid) && token_matches(&fresh, token) => {
                Ok(Arc::new(fresh))
            }
            _ => Err(ShimError::BadToken),
        }
    }

    /// The caller of a route about workspace `uid`: the admin token (where accepted), or that
    /// workspace's own token.
    pub async fn owner_or_admin(
        &self,
        admin: &AdminHash,
        token: Option<&str>,
        uid: &str,
    ) -> Result<Caller, ShimError> {
        let token = token.ok_or(ShimError::Unauthenticated)?;
        if is_admin(admin, token) {
            return Ok(Caller::Admin);
        }
        self.workspace_by_token(uid, token)
            .await
            .map(Caller::Workspace)
    }
}

/// The team routes of one listener: discovery and the activity log. `admin` is the admin
/// token's digest on the main port, `None` on the agent listener.
pub fn router(state: Option<Arc<TeamsState>>, admin: AdminHash) -> Router {
    let served = Served { state, admin };
    super::discovery::router(served.clone()).merge(super::activity::router(served))
}

/// The state of the team routes: `None` when no Workspace cache runs (503).
#[derive(Clone)]
pub struct Served {
    pub state: Option<Arc<TeamsState>>,
    pub admin: AdminHash,
}

impl Served {
    pub fn get(&self) -> Result<&Arc<TeamsState>, ShimError> {
        self.state.as_ref().ok_or(ShimError::Unavailable(
            "the workspace controller is not running",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_header_is_a_uuid_or_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(claimed_workspace(&h).expect("absent"), None);
        h.insert(
            WORKSPACE_HEADER,
            "3f2a9c1e-7b4d-4e5f-8a9b-0c1d2e3f4a5b".parse().expect("h"),
        );
        assert_eq!(
            claimed_workspace(&h).expect("ok").as_deref(),
            Some("3f2a9c1e-7b4d-4e5f-8a9b-0c1d2e3f4a5b")
        );
        h.insert(WORKSPACE_HEADER, "../../etc".parse().expect("h"));
        let e = claimed_workspace(&h).expect_err("bad");
        assert!(e.to_string().contains("X-Workspace-ID"), "{e}");
        let admin: AdminHash = Some(Arc::new(crate::tokens::digest("adm")));
        assert!(is_admin(&admin, "adm"));
        assert!(!is_admin(&admin, "other"));
        assert!(
            !is_admin(&None, "adm"),
            "the agent listener takes no admin token"
        );
    }
}
