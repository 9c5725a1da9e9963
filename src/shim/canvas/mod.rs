//! The built-in canvas page (`/`, `/canvas/app.js`, `/canvas/ui.js`, `/canvas/tabs.js`,
//! `/canvas/style.css`: plain HTML, CSS and JS embedded in the binary, no build step) and
//! `GET|PUT /canvas/viewport`, which keeps the canvas scroll position and zoom in an annotation
//! of the shim's Namespace.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use super::input::{self, Fields};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const UI_JS: &str = include_str!("ui.js");
const TABS_JS: &str = include_str!("tabs.js");
const STYLE: &str = include_str!("style.css");

/// Annotation of the shim's Namespace holding `{x, y, zoom}`.
pub const VIEWPORT_ANNOTATION: &str = "molecule.ai/canvas-viewport";

/// Only our own script, styles and stream; no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page (public; it asks for the token and calls the API with it).
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /canvas/{app,ui,tabs}.js`, `GET /canvas/style.css`.
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "ui.js" => page("text/javascript; charset=utf-8", UI_JS),
        "tabs.js" => page("text/javascript; charset=utf-8", TABS_JS),
        "style.css" => page("text/css; charset=utf-8", STYLE),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not found"})),
        )
            .into_response(),
    }
}

fn default_viewport() -> serde_json::Value {
    json!({"x": 0, "y": 0, "zoom": 1})
}

/// `GET /canvas/viewport` (admin) → `{x, y, zoom}`.
pub async fn get_viewport(State(shim): State<Arc<Shim>>, headers: HeaderMap) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let api: Api<Namespace> = Api::all(shim.client.clone());
    let v = api
        .get_opt(&shim.namespace)
        .await?
        .and_then(|ns| ns.annotations().get(VIEWPORT_ANNOTATION).cloned())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .filter(|v| v.is_object())
        .unwrap_or_else(default_viewport);
    Ok(axum::Json(v).into_response())
}

/// `PUT /canvas/viewport {x, y, zoom}` (admin).
pub async fn put_viewport(
    State(shim): State<Arc<Shim>>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let m = input::object(body, false).await?;
    let f = Fields(&m);
    let x = f.num("x")?.unwrap_or(0.0);
    let y = f.num("y")?.unwrap_or(0.0);
    let zoom = f.num("zoom")?.unwrap_or(1.0);
    if !(0.05..=20.0).contains(&zoom) {
        return Err(ShimError::bad("field `zoom` must be between 0.05 and 20"));
    }
    let value = json!({"x": x, "y": y, "zoom": zoom}).to_string();
    let api: Api<Namespace> = Api::all(shim.client.clone());
    api.patch(
        &shim.namespace,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {VIEWPORT_ANNOTATION: value}}})),
    )
    .await?;
    Ok(axum::Json(json!({"status": "saved"})).into_response())
}
