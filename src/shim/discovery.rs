//! Registry discovery (ADR 0050): how an agent finds the workspaces it may talk to.
//!
//! - `GET /registry/discover/:id`: `X-Workspace-ID` (400 without it) with that workspace's
//!   token; 403 unless the hierarchy rule lets it talk to `:id`; `{id, name, url, agent_card,
//!   status}`.
//! - `GET /registry/:id/peers`: the admin or `:id`'s own token; every other live workspace
//!   `:id` may talk to, `[{id, name, role, status, url, agent_card}]`, by name.
//! - `POST /registry/check-access {caller_id, target_id}`: the admin, or the token of
//!   `caller_id`; `{allowed}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::error::{ShimError, ShimResult};
use super::input::{Fields, check_id};
use super::teams::{Caller, Served, claimed_workspace};
use crate::resources::Workspace;

/// Largest accepted `check-access` body.
const MAX_BODY: usize = 4 * 1024;

pub fn router(served: Served) -> Router {
    Router::new()
        .route("/registry/discover/{id}", get(discover))
        .route("/registry/{id}/peers", get(peers))
        .route("/registry/check-access", post(check_access))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(served)
}

/// The name a peer is asked for by: the display name, else the record's name.
pub fn display_name(ws: &Workspace) -> String {
    ws.spec
        .display_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| ws.name_any())
}

fn card(ws: &Workspace) -> Value {
    let st = ws.status.as_ref();
    json!({
        "id": ws.uid(),
        "name": display_name(ws),
        "role": ws.spec.role.clone().filter(|r| !r.is_empty()),
        "status": super::view::status_of(ws),
        "url": st.and_then(|s| s.url.clone()),
        "agent_card": st.and_then(|s| s.agent_card.clone()),
    })
}

async fn discover(
    State(served): State<Served>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    check_id(&id)?;
    let st = served.get()?;
    let me = claimed_workspace(&headers)?
        .ok_or_else(|| ShimError::bad("X-Workspace-ID header is required"))?;
    let token = crate::tokens::bearer(&headers).ok_or(ShimError::Unauthenticated)?;
    st.workspace_by_token(&me, token).await?;
    let tree = st.tree();
    let Some(target) = tree.get(&id).cloned() else {
        return Err(ShimError::NotFound("workspace"));
    };
    if !tree.can_communicate(&me, &id) {
        return Err(ShimError::Forbidden(
            "this workspace may not talk to that workspace",
        ));
    }
    let mut v = card(&target);
    if let Some(o) = v.as_object_mut() {
        o.remove("role");
    }
    Ok(axum::Json(v).into_response())
}

async fn peers(
    State(served): State<Served>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    check_id(&id)?;
    let st = served.get()?;
    let caller = st
        .owner_or_admin(&served.admin, crate::tokens::bearer(&headers), &id)
        .await?;
    let tree = st.tree();
    if matches!(caller, Caller::Admin) && tree.get(&id).is_none() {
        return Err(ShimError::NotFound("workspace"));
    }
    let mut list: Vec<Arc<Workspace>> = st
        .workspaces
        .state()
        .into_iter()
        .filter(|w| w.metadata.deletion_timestamp.is_none())
        .filter(|w| {
            w.uid()
                .is_some_and(|u| u != id && tree.can_communicate(&id, &u))
        })
        .collect();
    list.sort_by_key(|w| (display_name(w), w.uid()));
    Ok(axum::Json(list.iter().map(|w| card(w)).collect::<Vec<_>>()).into_response())
}

async fn check_access(State(served): State<Served>, headers: HeaderMap, body: Bytes) -> ShimResult {
    let st = served.get()?;
    let b = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(ShimError::bad(
                "invalid body: expected {caller_id, target_id}",
            ));
        }
    };
    let f = Fields(&b);
    let caller_id = f.required_str("caller_id", 64)?;
    let target_id = f.required_str("target_id", 64)?;
    for (key, v) in [("caller_id", &caller_id), ("target_id", &target_id)] {
        check_id(v).map_err(|_| ShimError::bad(format!("field `{key}` must be a workspace id")))?;
    }
    st.owner_or_admin(&served.admin, crate::tokens::bearer(&headers), &caller_id)
        .await?;
    let allowed = st.tree().can_communicate(&caller_id, &target_id);
    Ok(axum::Json(json!({"allowed": allowed})).into_response())
}
