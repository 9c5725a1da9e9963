//! `GET /registry/plugins/{namespace}/{name}/download` (W17): an external agent (runtime
//! `external`, no container to install into) downloads the plugin a PluginInstall names, as a
//! tar of `<plugin>/…` plus its `.complete` marker, authenticating with its workspace token.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::Client;
use kube::api::Api;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::plugins::{Fetcher, Origin, Source};
use crate::resources::{PluginInstall, Workspace};

/// What the handler needs; set once the plugin controller has started.
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

/// Filled by the plugin controller when it starts.
pub type Slot = Arc<OnceLock<Arc<DownloadState>>>;

/// The route of a PluginInstall's download.
pub fn download_path(namespace: &str, name: &str) -> String {
    format!("/registry/plugins/{namespace}/{name}/download")
}

/// The download route.
pub fn router(slot: Slot) -> Router {
    Router::new()
        .route(
            "/registry/plugins/{namespace}/{name}/download",
            get(download),
        )
        .with_state(slot)
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

async fn download(
    State(slot): State<Slot>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(state) = slot.get().cloned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the plugin controller is not running",
        );
    };
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return error(StatusCode::UNAUTHORIZED, "missing bearer token");
    };
    let installs: Api<PluginInstall> = Api::namespaced(state.client.clone(), &namespace);
    let pi = match installs.get_opt(&name).await {
        Ok(Some(pi)) => pi,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such plugin install"),
        Err(e) => {
            tracing::warn!(error = %e, "plugin download: API error");
            return error(StatusCode::SERVICE_UNAVAILABLE, "the API is unavailable");
        }
    };
    let workspaces: Api<Workspace> = Api::namespaced(state.client.clone(), &namespace);
    let ws = match workspaces.get_opt(&pi.spec.workspace_ref.name).await {
        Ok(Some(ws)) => ws,
        Ok(None) => return error(StatusCode::UNAUTHORIZED, "invalid token"),
        Err(e) => {
            tracing::warn!(error = %e, "plugin download: API error");
            return error(StatusCode::SERVICE_UNAVAILABLE, "the API is unavailable");
        }
    };
    let presented = hex::encode(Sha256::digest(token.as_bytes()));
    if ws.status.as_ref().and_then(|s| s.token_hash.as_deref()) != Some(presented.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "invalid token");
    }
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
    let mut tar = crate::backends::docker::TarBuilder::new(mtime);
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
