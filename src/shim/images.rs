//! `POST /admin/workspace-images/refresh?runtime=a,b&recreate=true` (issue 7, point 5): pulls
//! (or rebuilds) the named runtimes' images — every Runtime when `runtime` is empty — and, with
//! `recreate`, rolls their outdated workspaces one at a time. Answers
//! `{pulled, failed, recreated}`. Authenticated with the API bearer token (DATA_DIR/token);
//! refused in production (`MOLECULE_ENV=production`) unless enabled.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use crate::images::Images;
use crate::images::refresh;
use crate::late::Late;

#[derive(Clone)]
struct RouteState {
    images: Late<Images>,
    token: Arc<String>,
    enabled: bool,
}

/// Whether admin routes are allowed: always outside production; in production (`--environment
/// production`, `MOLECULE_ENV`) only with `--admin-routes` (`MOLECULE_ADMIN_ROUTES=1`).
pub fn admin_routes_enabled(environment: Option<&str>, admin_routes: bool) -> bool {
    environment != Some("production") || admin_routes
}

/// The refresh route.
pub fn router(images: Late<Images>, token: String, enabled: bool) -> Router {
    Router::new()
        .route("/admin/workspace-images/refresh", post(refresh_route))
        .with_state(RouteState {
            images,
            token: Arc::new(token),
            enabled,
        })
}

#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    recreate: Option<String>,
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, axum::Json(json!({"error": msg}))).into_response()
}

fn authorized(headers: &HeaderMap, want: &str) -> bool {
    let got = crate::tokens::bearer(headers).unwrap_or("");
    crate::tokens::same_token(got, want)
}

/// Parses `recreate` (`true`/`false`/`1`/`0`, default false) and the runtime list.
fn parse(p: &Params) -> Result<(Vec<String>, bool), String> {
    let recreate = match p.recreate.as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(format!(
                "recreate must be true or false, not {:?}",
                other.chars().take(20).collect::<String>()
            ));
        }
    };
    let runtimes: Vec<String> = p
        .runtime
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if runtimes.len() > 100 {
        return Err("at most 100 runtimes per call".into());
    }
    for r in &runtimes {
        crate::images::reference::validate_runtime_name(r)?;
    }
    Ok((runtimes, recreate))
}

async fn refresh_route(
    State(st): State<RouteState>,
    headers: HeaderMap,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&headers, &st.token) {
        return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    if !st.enabled {
        return error(
            StatusCode::FORBIDDEN,
            "admin routes are disabled in production; set MOLECULE_ADMIN_ROUTES=1 to enable them",
        );
    }
    let Ok(Query(params)) = params else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let (runtimes, recreate) = match parse(&params) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let Some(images) = st.images.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the image service is not running (controllers disabled or Docker unreachable)",
        );
    };
    tracing::info!(runtimes = ?runtimes, recreate, "admin: workspace image refresh");
    match refresh::refresh(&images, &runtimes, recreate).await {
        Ok(report) => (StatusCode::OK, axum::Json(report)).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "admin refresh could not list runtimes");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not list the runtimes; see the operator log",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_validated() {
        let p = |r: Option<&str>, c: Option<&str>| Params {
            runtime: r.map(str::to_string),
            recreate: c.map(str::to_string),
        };
        assert_eq!(parse(&p(None, None)).unwrap(), (vec![], false));
        assert_eq!(
            parse(&p(Some("hermes, langgraph,"), Some("true"))).unwrap(),
            (vec!["hermes".to_string(), "langgraph".to_string()], true)
        );
        assert!(parse(&p(None, Some("yes"))).is_err());
        assert!(parse(&p(Some("../etc"), None)).is_err());
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "tok"));
        h.insert("authorization", "Bearer tok".parse().unwrap());
        assert!(authorized(&h, "tok"));
        assert!(!authorized(&h, "tok2"));
    }
}
