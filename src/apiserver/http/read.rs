//! The read verbs: get, list and watch.

use std::time::Duration;

use axum::response::Response;
use serde_json::{Value, json};

use super::{Query, Target, Want, json_response, selectors};
use crate::apiserver::ApiServer;
use crate::apiserver::error::{ApiError, StatusCause};
use crate::apiserver::objects::Key;
use crate::apiserver::table::{self, IncludeObject};
use crate::apiserver::verbs::{self, to_view};
use crate::apiserver::watch::{self, Format, WatchRequest};

pub(super) fn get(api: &ApiServer, t: Target, q: &Query, want: Want) -> Result<Response, ApiError> {
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

pub(super) fn list(
    api: &ApiServer,
    t: Target,
    q: &Query,
    want: Want,
) -> Result<Response, ApiError> {
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

pub(super) fn watch(
    api: &ApiServer,
    t: Target,
    q: &Query,
    want: Want,
) -> Result<Response, ApiError> {
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
