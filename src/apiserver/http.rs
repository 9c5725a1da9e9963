//! HTTP front of the embedded API server: path routing, auth, content negotiation, body limits,
//! and the read verbs (get, list, watch). Write verbs are parsed here and run by `verbs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiServer;
use super::apply::{self, Scope};
use super::discovery;
use super::error::{ApiError, StatusCause};
use super::objects::{Key, WriteReply};
use super::registry::ResourceDef;
use super::selectors::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use super::verbs::{self, FieldValidation, Part, Propagation, Writer, to_storage, to_view};
use super::watch::{self, Format, WatchRequest};

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
                [("content-type", "text/plain; version=0.0.4")],
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

fn get(api: &ApiServer, t: Target, q: &Query, want: Want) -> Result<Response, ApiError> {
    let name = t.name.unwrap_or_default();
    let key: Key = (
        t.def.storage.clone(),
        t.ns.clone().unwrap_or_default(),
        name.clone(),
    );
    let obj = api
        .objects
        .get(&key)
        .ok_or_else(|| verbs::not_found(&t.def, &name))?;
    let view = to_view(&t.def, &obj);
    let body = match want {
        Want::Json => view,
        Want::Meta => table::partial_metadata(&view),
        Want::Table => {
            let rv = view
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            table::table(
                &t.def,
                &[&view],
                IncludeObject::parse(q.get("includeObject")),
                &rv,
                true,
            )
        }
    };
    Ok(json_response(200, &body, &[]))
}

fn list(api: &ApiServer, t: Target, q: &Query, want: Want) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(&t.def, q)?;
    let (rv, items) = api.objects.list(&t.def.storage, t.ns.as_deref());
    if q.get("resourceVersionMatch") == Some("Exact")
        && let Some(asked) = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok())
        && asked != rv
    {
        return Err(ApiError::gone(format!(
            "too old resource version: {asked} ({rv})"
        )));
    }
    let views: Vec<Value> = items
        .iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| to_view(&t.def, o))
        .collect();
    let rv_s = rv.to_string();
    let body = match want {
        Want::Table => {
            let refs: Vec<&Value> = views.iter().collect();
            table::table(
                &t.def,
                &refs,
                IncludeObject::parse(q.get("includeObject")),
                &rv_s,
                true,
            )
        }
        Want::Meta => json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv_s},
            "items": views.iter().map(table::partial_metadata).collect::<Vec<_>>()
        }),
        Want::Json => {
            json!({"kind": format!("{}List", t.def.kind), "apiVersion": t.def.api_version(), "metadata": {"resourceVersion": rv_s}, "items": views})
        }
    };
    Ok(json_response(200, &body, &[]))
}

fn watch(api: &ApiServer, t: Target, q: &Query, want: Want) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(&t.def, q)?;
    let send_initial = q.flag("sendInitialEvents");
    if send_initial
        && (!q.flag("allowWatchBookmarks") || q.get("resourceVersionMatch") != Some("NotOlderThan"))
    {
        return Err(ApiError::invalid(
            "sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
            vec![StatusCause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden".into(),
                field: "sendInitialEvents".into(),
            }],
        ));
    }
    let from = match q.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))?,
        ),
    };
    let timeout = match q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()) {
        Some(s) => Duration::from_secs(s),
        // kubectl get -w sends none and exits when the stream ends: 30-60 min like the real server.
        None => Duration::from_secs(1800 + u64::from(rand::random::<u16>() % 1800)),
    };
    let format = match want {
        Want::Json => Format::Json,
        Want::Meta => Format::Meta,
        Want::Table => Format::Table(IncludeObject::parse(q.get("includeObject"))),
    };
    Ok(watch::start(
        api.objects.clone(),
        WatchRequest {
            def: t.def,
            ns: t.ns,
            labels,
            fields,
            from,
            bookmarks: q.flag("allowWatchBookmarks"),
            send_initial,
            timeout,
            bookmark_every: api.bookmark_every,
            format,
        },
    ))
}

/// Parses a request body (JSON, or YAML for apply patches and YAML content types).
fn parse_body(ct: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::unsupported_media_type(
            "application/json, application/yaml",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if ct.contains("yaml") {
        return crate::yaml::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        });
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn manager(q: &Query) -> String {
    q.get("fieldManager")
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

async fn create(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    ct: &str,
    bytes: &[u8],
    dry_run: bool,
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let mut obj = if ct.contains("protobuf") && !def.custom {
        super::protobuf::decode(&def.kind, bytes)?
    } else {
        parse_body(ct, bytes)?
    };
    verbs::check_type_meta(&def, &mut obj)?;
    let ns = verbs::check_namespace(&def, t.ns.as_deref(), &mut obj)?;
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    let name = match obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(g) => format!("{g}{}", crate::util::random_suffix(5)),
            None => {
                return Err(verbs::invalid(
                    &def,
                    "",
                    vec![StatusCause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        },
    };
    obj["metadata"]["name"] = json!(name);
    let warnings = verbs::validate(&def, &mut obj, fv)?;
    verbs::normalize(&def, &mut obj);
    let obj = to_storage(&def, obj);
    let key: Key = (def.storage.clone(), ns, name);
    let manager = manager(q);
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let stored = verbs::create(txn, &def, &key, obj, &manager, None)?;
                Ok(WriteReply {
                    code: 201,
                    body: to_view(&def, &stored),
                    warnings,
                })
            }),
        )
        .await
}

async fn put(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    ct: &str,
    bytes: &[u8],
    dry_run: bool,
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let name = t.name.unwrap_or_default();
    let mut obj = parse_body(ct, bytes)?;
    verbs::check_type_meta(&def, &mut obj)?;
    let ns = verbs::check_namespace(&def, t.ns.as_deref(), &mut obj)?;
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    if obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        obj["metadata"]["name"] = json!(name);
    }
    let Some(rv) = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(String::from)
    else {
        return Err(verbs::invalid(
            &def,
            &name,
            vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: 0x0: must be specified for an update".into(),
                field: "metadata.resourceVersion".into(),
            }],
        ));
    };
    let warnings = verbs::validate(&def, &mut obj, fv)?;
    verbs::normalize(&def, &mut obj);
    let obj = to_storage(&def, obj);
    let part = if t.sub.is_some() {
        Part::Status
    } else {
        Part::Main
    };
    let key: Key = (def.storage.clone(), ns, name.clone());
    let manager = manager(q);
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let old = txn.get(&key).ok_or_else(|| verbs::not_found(&def, &name))?;
                if old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    != Some(rv.as_str())
                {
                    return Err(verbs::conflict(&def, &name));
                }
                let mut r = verbs::update(
                    txn,
                    &reg,
                    &def,
                    &key,
                    &old,
                    obj,
                    part,
                    Writer::Update(&manager),
                )?;
                r.warnings = warnings;
                Ok(r)
            }),
        )
        .await
}

enum PatchKind {
    Merge,
    Json,
    Apply,
}

async fn patch(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    ct: &str,
    bytes: &[u8],
    dry_run: bool,
) -> Result<WriteReply, ApiError> {
    const ACCEPTED: &str =
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";
    let def = t.def;
    let kind = match ct {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/json-patch+json" => PatchKind::Json,
        "application/apply-patch+yaml" => PatchKind::Apply,
        "application/strategic-merge-patch+json" if !def.custom => PatchKind::Merge,
        _ => return Err(ApiError::unsupported_media_type(ACCEPTED)),
    };
    let name = t.name.unwrap_or_default();
    let ns = if def.namespaced {
        t.ns.clone().unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    let part = if t.sub.is_some() {
        Part::Status
    } else {
        Part::Main
    };
    let patch = parse_body(
        if matches!(kind, PatchKind::Apply) {
            "yaml"
        } else {
            "json"
        },
        bytes,
    )?;
    let manager = manager(q);
    let force = q.flag("force");
    let mut warnings = vec![];
    if matches!(kind, PatchKind::Apply) {
        if q.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                vec![StatusCause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: is required for apply patch".into(),
                    field: "fieldManager".into(),
                }],
            ));
        }
        if !patch.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
    }
    let mut applied = patch.clone();
    if matches!(kind, PatchKind::Apply) {
        verbs::check_type_meta(&def, &mut applied)?;
        verbs::check_namespace(&def, t.ns.as_deref(), &mut applied)?;
        if applied
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            applied["metadata"]["name"] = json!(name);
        }
        warnings = verbs::validate_partial(&def, &mut applied, fv)?;
    }
    let key: Key = (def.storage.clone(), ns, name.clone());
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let Some(old) = txn.get(&key) else {
                    if matches!(kind, PatchKind::Apply) && part == Part::Main {
                        let mut obj = applied.clone();
                        verbs::normalize(&def, &mut obj);
                        let stored = verbs::create(
                            txn,
                            &def,
                            &key,
                            to_storage(&def, obj.clone()),
                            &manager,
                            Some((&to_storage(&def, obj), force)),
                        )?;
                        return Ok(WriteReply {
                            code: 201,
                            body: to_view(&def, &stored),
                            warnings,
                        });
                    }
                    return Err(verbs::not_found(&def, &name));
                };
                let old_view = to_view(&def, &old);
                let mut new = match kind {
                    PatchKind::Merge => {
                        let mut d = old_view.clone();
                        json_patch::merge(&mut d, &patch);
                        d
                    }
                    PatchKind::Json => {
                        let mut d = old_view.clone();
                        verbs::json_patch(&mut d, &patch)?;
                        d
                    }
                    PatchKind::Apply => {
                        let scope = if part == Part::Status {
                            Scope::Status
                        } else {
                            Scope::Main
                        };
                        apply::apply(Some(&old_view), &applied, &manager, force, scope, txn.now())
                            .map_err(|e| match e {
                            apply::ApplyError::Conflicts(cs) => {
                                let msg = apply::conflict_message(&cs);
                                let causes = cs
                                    .iter()
                                    .map(|c| StatusCause {
                                        reason: "FieldManagerConflict".into(),
                                        message: format!("conflict with {:?}", c.manager),
                                        field: c.field.clone(),
                                    })
                                    .collect();
                                ApiError::new(409, "Conflict", msg)
                                    .with_details(&def.group, &def.plural, &name)
                                    .with_causes(causes)
                            }
                            apply::ApplyError::Invalid(m) => ApiError::bad_request(m),
                        })?
                    }
                };
                if new.pointer("/metadata/resourceVersion")
                    != old_view.pointer("/metadata/resourceVersion")
                {
                    return Err(verbs::conflict(&def, &name));
                }
                verbs::check_type_meta(&def, &mut new)?;
                let mut w = verbs::validate(&def, &mut new, fv)?;
                verbs::normalize(&def, &mut new);
                let writer = if matches!(kind, PatchKind::Apply) {
                    Writer::Apply
                } else {
                    Writer::Update(&manager)
                };
                let mut r = verbs::update(
                    txn,
                    &reg,
                    &def,
                    &key,
                    &old,
                    to_storage(&def, new),
                    part,
                    writer,
                )?;
                w.extend(warnings);
                w.dedup();
                r.warnings = w;
                Ok(r)
            }),
        )
        .await
}

/// DeleteOptions from the body and the query.
fn delete_options(
    q: &Query,
    bytes: &[u8],
) -> Result<(Propagation, Option<String>, Option<String>, bool), ApiError> {
    let opts: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?
    };
    let policy = Propagation::parse(
        opts.get("propagationPolicy")
            .and_then(Value::as_str)
            .or(q.get("propagationPolicy")),
    )?;
    let uid = opts
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        .map(String::from);
    let rv = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .map(String::from);
    let dry = q.get("dryRun") == Some("All")
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    Ok((policy, uid, rv, dry))
}

fn success_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": uid}})
}

async fn delete(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    bytes: &[u8],
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let name = t.name.unwrap_or_default();
    let (policy, pre_uid, pre_rv, dry_run) = delete_options(q, bytes)?;
    let key: Key = (
        def.storage.clone(),
        if def.namespaced {
            t.ns.unwrap_or_else(|| "default".into())
        } else {
            String::new()
        },
        name.clone(),
    );
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let old = txn.get(&key).ok_or_else(|| verbs::not_found(&def, &name))?;
                let uid = old.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
                if pre_uid.as_ref().is_some_and(|u| *u != uid) {
                    return Err(ApiError::new(409, "Conflict", format!("Precondition failed: UID in precondition: {}, UID in object meta: {uid}", pre_uid.unwrap_or_default())).with_details(&def.group, &def.plural, &name));
                }
                if pre_rv.as_ref().is_some_and(|r| Some(r.as_str()) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str)) {
                    return Err(verbs::conflict(&def, &name));
                }
                Ok(match verbs::delete(txn, &reg, &key, policy)? {
                    verbs::Deleted::Pending(obj) => WriteReply::ok(to_view(&def, &obj)),
                    verbs::Deleted::Gone(_) => WriteReply::ok(success_status(&def, &name, &uid)),
                })
            }),
        )
        .await
}

async fn delete_collection(
    api: &Arc<ApiServer>,
    t: Target,
    q: &Query,
    bytes: &[u8],
) -> Result<WriteReply, ApiError> {
    let def = t.def;
    let (labels, fields) = selectors(&def, q)?;
    let (policy, _, _, dry_run) = delete_options(q, bytes)?;
    let ns = t.ns;
    let reg = api.registry.clone();
    api.objects
        .write(
            dry_run,
            Box::new(move |txn| {
                let mut items = vec![];
                for (k, v) in txn.list(&def.storage, ns.as_deref()) {
                    if !(labels.matches(&v) && fields.matches(&v)) || txn.get(&k).is_none() {
                        continue;
                    }
                    match verbs::delete(txn, &reg, &k, policy)? {
                        verbs::Deleted::Pending(obj) | verbs::Deleted::Gone(obj) => items.push(to_view(&def, &obj)),
                    }
                }
                Ok(WriteReply::ok(json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {}, "items": items})))
            }),
        )
        .await
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
