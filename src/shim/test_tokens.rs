//! `GET /admin/workspaces/:id/test-token` (ADR 0049): in development mode, the admin mints a
//! further live token of a workspace — for scripts and tests that act as its agent — and gets
//! `{auth_token, workspace_id}`. Only the digest is kept (`crate::workspace_tokens`); the token
//! dies with the workspace's next provision (every restart) or its deletion. In production
//! (`MOLECULE_ENV=production`) the route answers 404 like any unknown route.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use kube::ResourceExt;
use serde_json::json;

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use crate::workspace_tokens::{self, MintError};

/// Development mode: on unless the environment is `production`.
pub fn development(environment: Option<&str>) -> bool {
    environment != Some("production")
}

/// `GET /admin/workspaces/:id/test-token` (admin token, development mode only).
pub async fn mint(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    if !shim.development {
        return Err(ShimError::NotFound("route"));
    }
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let token = workspace_tokens::mint(&shim.client, &ws)
        .await
        .map_err(|e| match e {
            MintError::NotFound => ShimError::NotFound("workspace"),
            MintError::Deleting => ShimError::Conflict("the workspace is being deleted".into()),
            MintError::Contended => ShimError::Unavailable("the workspace kept changing; retry"),
            MintError::Api(e) => ShimError::Kube(e),
        })?;
    shim.audit
        .record(
            "workspace.test_token_minted",
            &ws.namespace().unwrap_or_default(),
            &ws.name_any(),
            json!({"uid": id}),
        )
        .await;
    tracing::info!(workspace = %ws.name_any(), "development mode: a workspace test token was minted");
    Ok(axum::Json(json!({"auth_token": token, "workspace_id": id})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_mode_is_on_unless_production() {
        assert!(development(None));
        assert!(development(Some("development")));
        assert!(development(Some("staging")));
        assert!(!development(Some("production")));
    }
}
