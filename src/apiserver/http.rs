//! HTTP front of the embedded API server: path routing, auth, content negotiation, body limits.
//! The read verbs (get, list, watch) are in `read`; the write verbs are parsed in `write` and
//! run by `verbs`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::ApiServer;
use super::discovery;
use super::error::ApiError;
use super::registry::ResourceDef;
use super::selectors::{FieldSelector, LabelSelector};

mod read;
mod write;

use read::{get, list, watch};
use write::{create, delete, delete_collection, patch, put};

/// Parsed query string (lenient: kube-rs sends `?&a=b`).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .filter(|(k, _)| !k.is_empty())
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// What the client wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Json,
    Table,
    Meta,
}

fn negotiate(headers: &HeaderMap) -> Result<Want, ApiError> {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("as=Table") {
        return Ok(Want::Table);
    }
    if accept.contains("as=PartialObjectMetadata") {
        return Ok(Want::Meta);
    }
    if accept.is_empty()
        || accept.contains("json")
        || accept.contains("*/*")
        || accept.contains("yaml")
    {
        return Ok(Want::Json);
    }
    Err(ApiError::not_acceptable(format!(
        "only the following media types are accepted: application/json (asked for {accept})"
    )))
}

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response {
    let mut r = Response::builder()
        .status(code)
        .header("content-type", "application/json");
    for w in warnings {
        r = r.header("warning", format!("299 - {w:?}"));
    }
    r.body(Body::from(body.to_string()))
        .unwrap_or_else(|_| ApiError::internal("response").into_response())
}

fn authorized(api: &ApiServer, headers: &HeaderMap) -> bool {
    let got = crate::tokens::bearer(headers).unwrap_or("");
    crate::tokens::same_token(got, &api.token)
}

/// The single entry point for every Kubernetes API path.
pub async fn handle(
    State(api): State<Arc<ApiServer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let path = uri.path().to_string();
    // A fixed set of method labels: the raw method is the client's choice (ADR 0041).
    let verb = crate::telemetry::method_label(&method);
    let resp = match route(&api, method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.code >= 500 {
                tracing::warn!(path = %path, code = e.code, reason = e.reason, "api error");
            }
            e.into_response()
        }
    };
    let code = resp.status().as_u16().to_string();
    api.metrics.inc(
        "molecule_apiserver_requests_total",
        &[("verb", verb), ("code", &code)],
    );
    api.metrics.observe(
        "molecule_apiserver_request_seconds",
        &[("verb", verb)],
        started.elapsed().as_secs_f64(),
    );
    resp
}

async fn route(
    api: &Arc<ApiServer>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = uri.path().trim_end_matches('/');
    match path {
        "/healthz" | "/livez" => return Ok("ok".into_response()),
        "/readyz" => {
            return Ok(if api.is_ready() {
                "ok".into_response()
            } else {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
            });
        }
        "/version" => return Ok(json_response(200, &discovery::version(), &[])),
        "/metrics" => {
            return Ok((
                [("content-type", crate::telemetry::CONTENT_TYPE)],
                api.render_metrics(),
            )
                .into_response());
        }
        _ => {}
    }
    if !authorized(api, headers) {
        return Err(ApiError::unauthorized());
    }
    let query = Query::parse(uri.query());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Aggregated discovery only for clients that accept v2; older ones (kubectl 1.27 asks for
    // v2beta1 only) get the legacy documents.
    let aggregated = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|t| {
                t.contains("as=APIGroupDiscoveryList") && t.split(';').any(|p| p.trim() == "v=v2")
            })
        });
    let get = method == Method::GET;
    match segs.as_slice() {
        ["api"] if get => Ok(if aggregated {
            discovery_response(&discovery::aggregated(&api.registry, true))
        } else {
            json_response(200, &discovery::api_versions(&api.server_addr), &[])
        }),
        ["apis"] if get => Ok(if aggregated {
            discovery_response(&discovery::aggregated(&api.registry, false))
        } else {
            json_response(200, &discovery::api_group_list(&api.registry), &[])
        }),
        ["api", "v1"] if get => Ok(json_response(
            200,
            &discovery::resource_list(&api.registry, "", "v1"),
            &[],
        )),
        ["apis", g] if get => {
            let (_, v) = api
                .registry
                .group_versions()
                .into_iter()
                .find(|(x, _)| x == g)
                .ok_or_else(ApiError::not_found_path)?;
            Ok(json_response(200, &discovery::api_group(g, &v), &[]))
        }
        ["apis", g, v] if get => {
            if api.registry.in_group_version(g, v).next().is_none() {
                return Err(ApiError::not_found_path());
            }
            Ok(json_response(
                200,
                &discovery::resource_list(&api.registry, g, v),
                &[],
            ))
        }
        ["openapi", "v2"]
            if get
                && headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("protobuf")) =>
        {
            Ok(Response::builder()
                .status(200)
                .header("content-type", super::openapi_v2::CONTENT_TYPE)
                .body(Body::from(api.openapi_v2.clone()))
                .unwrap_or_else(|_| ApiError::internal("response").into_response()))
        }
        // A JSON v2 document breaks kubectl (kubectl fails to parse it): only protobuf is offered.
        ["openapi", "v2"] => Err(ApiError::not_found_path()),
        ["openapi", "v3"] if get => Ok(json_response(200, &api.openapi.root(), &[])),
        ["openapi", "v3", rest @ ..] if get => {
            let key = rest.join("/");
            let (_, doc) = api
                .openapi
                .docs
                .get(&key)
                .ok_or_else(ApiError::not_found_path)?;
            let mut r = json_response(200, doc, &[]);
            if query.get("hash").is_some()
                && let Ok(v) = "public, immutable".parse()
            {
                r.headers_mut().insert("cache-control", v);
            }
            Ok(r)
        }
        ["api", "v1", rest @ ..] => {
            resource(api, "", "v1", rest, method, &query, headers, body).await
        }
        ["apis", g, v, rest @ ..] => resource(api, g, v, rest, method, &query, headers, body).await,
        _ => Err(ApiError::not_found_path()),
    }
}

fn discovery_response(v: &Value) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", discovery::AGGREGATED_CT)
        .body(Body::from(v.to_string()))
        .unwrap_or_else(|_| ApiError::internal("response").into_response())
}

/// A resolved resource request.
struct Target {
    def: Arc<ResourceDef>,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn resolve(api: &ApiServer, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let find = |plural: &str| {
        api.registry
            .find(group, version, plural)
            .ok_or_else(ApiError::not_found_path)
    };
    let namespaced_plural = |p: &str| {
        api.registry
            .find(group, version, p)
            .is_some_and(|d| d.namespaced)
    };
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_plural(plural) => {
            let def = find(plural)?;
            match tail {
                [] => Target {
                    def,
                    ns: Some(ns.to_string()),
                    name: None,
                    sub: None,
                },
                [name] => Target {
                    def,
                    ns: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    sub: None,
                },
                [name, sub] => Target {
                    def,
                    ns: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    sub: Some(sub.to_string()),
                },
                _ => return Err(ApiError::not_found_path()),
            }
        }
        [plural, tail @ ..] => {
            let def = find(plural)?;
            match tail {
                [] => Target {
                    def,
                    ns: None,
                    name: None,
                    sub: None,
                },
                [name] if !def.namespaced => Target {
                    def,
                    ns: None,
                    name: Some(name.to_string()),
                    sub: None,
                },
                [name, sub] if !def.namespaced => Target {
                    def,
                    ns: None,
                    name: Some(name.to_string()),
                    sub: Some(sub.to_string()),
                },
                _ => return Err(ApiError::not_found_path()),
            }
        }
        _ => return Err(ApiError::not_found_path()),
    };
    if let Some(sub) = &t.sub
        && (sub != "status" || !t.def.status_subresource)
    {
        return Err(ApiError::not_found_path());
    }
    Ok(t)
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    api: &Arc<ApiServer>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: Method,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = resolve(api, group, version, rest)?;
    record_resource_request(api, &t, &method, q, headers);
    if let Some(ns) = &t.ns
        && let Some(msg) = super::validation::validate_dns1123_label(ns)
    {
        return Err(ApiError::bad_request(format!(
            "invalid namespace {ns:?}: {msg}"
        )));
    }
    let want = negotiate(headers)?;
    match (method, t.name.is_some()) {
        (Method::GET, false) if q.flag("watch") => watch(api, t, q, want),
        (Method::GET, false) => list(api, t, q, want),
        (Method::GET, true) => get(api, t, q, want),
        (m, _)
            if m == Method::POST
                || m == Method::PUT
                || m == Method::PATCH
                || m == Method::DELETE =>
        {
            let bytes = read_body(api, headers, body).await?;
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let dry_run = q.get("dryRun") == Some("All");
            let reply = match (m.as_str(), t.name.is_some()) {
                ("POST", false) => create(api, t, q, &ct, &bytes, dry_run).await?,
                ("PUT", true) => put(api, t, q, &ct, &bytes, dry_run).await?,
                ("PATCH", true) => patch(api, t, q, &ct, &bytes, dry_run).await?,
                ("DELETE", true) => delete(api, t, q, &bytes).await?,
                ("DELETE", false) => delete_collection(api, t, q, &bytes).await?,
                (other, _) => return Err(ApiError::method_not_allowed(other)),
            };
            Ok(json_response(reply.code, &reply.body, &reply.warnings))
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

/// The Kubernetes verb of a resource request (what RBAC authorizes).
pub fn kube_verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "other",
    }
}

/// The product token of a User-Agent (`kubectl.1.33/v1.33.1 (linux/amd64)` → `kubectl.1.33`),
/// or `unknown`: a bounded metric label naming the client.
pub fn client_name(headers: &HeaderMap) -> String {
    let ua = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let product = ua.split(['/', ' ']).next().unwrap_or("");
    if product.is_empty()
        || product.len() > 40
        || !product
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return "unknown".into();
    }
    product.to_string()
}

/// Counts one request per (client, verb, group, resource, subresource), like kube-apiserver's
/// `apiserver_request_total`: what a client really used, from which RBAC rules are checked.
fn record_resource_request(
    api: &ApiServer,
    t: &Target,
    method: &Method,
    q: &Query,
    headers: &HeaderMap,
) {
    let verb = kube_verb(method, t.name.is_some(), q.flag("watch"));
    api.metrics.inc(
        "molecule_apiserver_resource_requests_total",
        &[
            ("client", &client_name(headers)),
            ("verb", verb),
            ("group", &t.def.group),
            ("resource", &t.def.plural),
            ("subresource", t.sub.as_deref().unwrap_or("")),
        ],
    );
}

async fn read_body(
    api: &ApiServer,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > api.max_body) {
        return Err(ApiError::too_large(api.max_body));
    }
    axum::body::to_bytes(body, api.max_body)
        .await
        .map_err(|_| ApiError::too_large(api.max_body))
}

fn selectors(def: &ResourceDef, q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
        FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), &def.field_selectors)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_verbs_follow_rbac_names() {
        assert_eq!(kube_verb(&Method::GET, false, true), "watch");
        assert_eq!(kube_verb(&Method::GET, false, false), "list");
        assert_eq!(kube_verb(&Method::GET, true, false), "get");
        assert_eq!(kube_verb(&Method::POST, false, false), "create");
        assert_eq!(kube_verb(&Method::PUT, true, false), "update");
        assert_eq!(kube_verb(&Method::PATCH, true, false), "patch");
        assert_eq!(kube_verb(&Method::DELETE, true, false), "delete");
        assert_eq!(kube_verb(&Method::DELETE, false, false), "deletecollection");
    }

    #[test]
    fn client_names_are_bounded_product_tokens() {
        let with = |ua: &str| {
            let mut h = HeaderMap::new();
            h.insert("user-agent", ua.parse().expect("header"));
            client_name(&h)
        };
        assert_eq!(
            with("kubectl.1.33/v1.33.1 (linux/amd64) kubernetes/8adc0f0"),
            "kubectl.1.33"
        );
        assert_eq!(with("molecule-operator/0.1.0"), "molecule-operator");
        assert_eq!(with("evil\"label{x}"), "unknown");
        assert_eq!(with(&"a".repeat(80)), "unknown");
        assert_eq!(client_name(&HeaderMap::new()), "unknown");
    }
}
