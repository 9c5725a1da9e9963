//! The read verbs: get, list and watch.

use std::time::Duration;

use axum::response::Response;
use serde_json::{Value, json};

use super::{Query, Target, Want, json_response, selectors};
use crate::apiserver::ApiServer;
use crate::apiserver::error::{ApiError, StatusCause};
use crate::apiserver::objects::Key;
use crate::apiserver::registry::View;
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
    let stored = api
        .objects
        .get(&key)
        .ok_or_else(|| verbs::not_found(&t.def, &name))?;
    if want == Want::Json && t.def.view == View::Plain {
        return Ok(text_response(stored.json().clone()));
    }
    let view = to_view(&t.def, &stored.value());
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
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Ok(_) => None,
            Err(_) => return Err(ApiError::bad_request(format!("invalid limit {l:?}"))),
        },
    };
    let cont = match q.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(Continue::decode(c)?),
    };
    if cont.is_some()
        && q.get("resourceVersion")
            .is_some_and(|r| !r.is_empty() && r != "0")
    {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    let after = cont.as_ref().map(|c| (c.namespace.clone(), c.name.clone()));
    let page = api.objects.list_page(
        &t.def.storage,
        t.ns.as_deref(),
        after.as_ref(),
        limit,
        |o| o.matches(&labels, &fields),
    );
    let rv = match &cont {
        // Later pages answer at the first page's resourceVersion: a watch from it replays
        // whatever changed while the pages were read, which the history must still hold.
        Some(c) if c.rv < page.compacted => {
            return Err(ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ));
        }
        Some(c) => c.rv,
        None => page.rv,
    };
    if cont.is_none()
        && q.get("resourceVersionMatch") == Some("Exact")
        && let Some(asked) = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok())
        && asked != rv
    {
        return Err(ApiError::gone(format!(
            "too old resource version: {asked} ({rv})"
        )));
    }
    let next = page.next.map(|(namespace, name)| {
        Continue {
            rv,
            namespace,
            name,
        }
        .encode()
    });
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(n) = &next {
        meta["continue"] = json!(n);
    }
    // The body is written object by object: the stored text as it is for JSON, else one object
    // parsed, turned into its view (a Table row, its metadata) and written before the next, so
    // a list holds one parsed object at a time whatever its length (ADR 0058).
    let plain = t.def.view == View::Plain;
    let mut body = match want {
        Want::Table => {
            let head = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                "columnDefinitions": table::column_definitions(&t.def)});
            open_array(&head, "rows")
        }
        Want::Meta => {
            let head = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta});
            open_array(&head, "items")
        }
        Want::Json => {
            let head = json!({"kind": format!("{}List", t.def.kind), "apiVersion": t.def.api_version(), "metadata": meta});
            open_array(&head, "items")
        }
    };
    let include = IncludeObject::parse(q.get("includeObject"));
    let now = jiff::Timestamp::now().as_second();
    for (i, o) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        if want == Want::Json && plain {
            body.extend_from_slice(o.json());
            continue;
        }
        let value = o.value();
        let view = verbs::view(&t.def, &value);
        // Writing into a Vec cannot fail.
        let _ = match want {
            Want::Table => {
                serde_json::to_writer(&mut body, &table::row(&t.def, &view, include, now))
            }
            Want::Meta => serde_json::to_writer(&mut body, &table::partial_metadata(&view)),
            Want::Json => serde_json::to_writer(&mut body, &*view),
        };
    }
    body.extend_from_slice(b"]}");
    Ok(text_response(body))
}

/// `head` serialized up to an opened array under `field`: `{…,"field":[`.
fn open_array(head: &Value, field: &str) -> Vec<u8> {
    let mut out = head.to_string().into_bytes();
    out.pop(); // the closing brace
    out.extend_from_slice(format!(",{}:[", json!(field)).as_bytes());
    out
}

fn text_response(body: impl Into<axum::body::Body>) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap_or_else(|_| {
            axum::response::IntoResponse::into_response(ApiError::internal("response"))
        })
}

/// A list's continue token: where the next page starts and the resourceVersion of the first
/// page. Base64 (URL-safe, unpadded) of JSON, like the real server's; opaque to clients.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    #[serde(rename = "ns")]
    namespace: String,
    name: String,
}

impl Continue {
    fn encode(&self) -> String {
        use base64::Engine;
        let text = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        use base64::Engine;
        let bad = || {
            ApiError::bad_request(
                "continue key is not valid: start a new list without the continue parameter",
            )
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
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
