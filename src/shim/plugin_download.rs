//! `GET /registry/plugins/{namespace}/{name}/download` (ADR 0015): an external agent (runtime
//! `external`, no container to install into) downloads the plugin a PluginInstall names, as a
//! tar of `<plugin>/…` plus its `.complete` marker, authenticating with its workspace token.
//! The token is checked before anything about the record is answered (ADR 0038): 401 for a
//! bad token, 404 only to a workspace of the namespace, and only about its own installs.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::plugins::{Fetcher, Origin, Source};
use crate::resources::{PluginInstall, Workspace};

/// What the handler needs; built by `host` when the plugin controller runs.
pub struct DownloadState {
    pub client: Client,
    pub fetcher: Fetcher,
}

impl std::fmt::Debug for DownloadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadState")
            .field("fetcher", &self.fetcher)
            .finish_non_exhaustive()
    }
}

/// What the route serves: `None` when the plugin controller does not run (503).
type Served = Option<Arc<DownloadState>>;

/// The download route.
pub fn router(state: Served) -> Router {
    Router::new()
        .route(crate::resources::names::DOWNLOAD_ROUTE, get(download))
        .with_state(state)
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

async fn download(
    State(state): State<Served>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(state) = state else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the plugin controller is not running",
        );
    };
    let Some(token) = crate::tokens::bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "missing bearer token");
    };
    // The path is checked before it reaches the API (ADR 0038): the namespace is a DNS label,
    // the record name a DNS subdomain (record names of plugins such as `a.b` carry dots).
    if crate::apiserver::validation::validate_dns1123_label(&namespace).is_some() {
        return error(StatusCode::BAD_REQUEST, "the namespace must be a DNS label");
    }
    if crate::apiserver::validation::validate_dns1123_subdomain(&name).is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "the plugin install name must be a DNS subdomain",
        );
    }
    // The token first: only a workspace of this namespace learns whether a record exists, and
    // only about its own records (another workspace's install answers 404 like a missing one).
    let workspaces: Api<Workspace> = Api::namespaced(state.client.clone(), &namespace);
    let ws = match workspaces.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .find(|w| crate::workspace_tokens::accepts_workspace(w, token)),
        Err(e) => {
            tracing::warn!(error = %e, "plugin download: API error");
            return error(StatusCode::SERVICE_UNAVAILABLE, "the API is unavailable");
        }
    };
    let Some(ws) = ws else {
        return error(StatusCode::UNAUTHORIZED, "invalid token");
    };
    let installs: Api<PluginInstall> = Api::namespaced(state.client.clone(), &namespace);
    let pi = match installs.get_opt(&name).await {
        Ok(Some(pi)) if pi.spec.workspace_ref.name == ws.name_any() => pi,
        Ok(_) => return error(StatusCode::NOT_FOUND, "no such plugin install"),
        Err(e) => {
            tracing::warn!(error = %e, "plugin download: API error");
            return error(StatusCode::SERVICE_UNAVAILABLE, "the API is unavailable");
        }
    };
    let origin = match Origin::parse(
        &pi.spec.source,
        pi.spec.track.as_deref(),
        pi.spec.allow_unpinned,
    ) {
        Ok(o) => o,
        Err(r) => return error(StatusCode::UNPROCESSABLE_ENTITY, &r.to_string()),
    };
    let fetched = async {
        let (sha, ref_name) = match &origin.source {
            Source::Git(_) => {
                let r = state.fetcher.resolve(&origin).await?;
                (Some(r.sha), r.ref_name)
            }
            Source::Local(_) => (None, None),
        };
        state
            .fetcher
            .fetch(&origin, sha.as_deref(), ref_name.as_deref())
            .await
    }
    .await;
    let f = match fetched {
        Ok(f) => f,
        Err(r) if r.is_retryable() => return error(StatusCode::BAD_GATEWAY, &r.to_string()),
        Err(r) => return error(StatusCode::UNPROCESSABLE_ENTITY, &r.to_string()),
    };
    let mtime = jiff::Timestamp::now().as_second().max(0) as u64;
    let mut tar = crate::archive::TarBuilder::new(mtime);
    for file in f.tree.files() {
        if let Err(e) = tar.file(
            &format!("{}/{}", f.meta.name, file.path),
            file.mode,
            &file.content,
        ) {
            tracing::warn!(error = %e, "plugin download: could not build the tar");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the plugin could not be packed",
            );
        }
    }
    let marker = format!("{}\n", f.sha);
    if tar
        .file(
            &format!("{}/{}", f.meta.name, crate::plugins::MARKER),
            0o644,
            marker.as_bytes(),
        )
        .is_err()
    {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the plugin could not be packed",
        );
    }
    (
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.tar\"", f.meta.name),
            ),
            (
                header::HeaderName::from_static("x-molecule-plugin-sha"),
                f.sha.clone(),
            ),
        ],
        tar.finish(),
    )
        .into_response()
}
