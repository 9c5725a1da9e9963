//! Secrets routes. A workspace's secrets live in the Secret `<workspace>-secrets`, the global
//! ones in `molecule-global-secrets` of the shim's namespace: exactly the layers the
//! Workspace controller assembles env from. Values go in and never come out: lists
//! carry names and `has_value` only. A change restarts the workspaces it affects, once.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use super::input::{self, Fields, check_secret_key};
use crate::resources::Workspace;
use crate::resources::names::{GLOBAL_SECRET, RESTART_ANNOTATION, workspace_secret};

/// Largest secret value accepted.
const MAX_VALUE: usize = 32 * 1024;
const UPDATED_AT: &str = "molecule.ai/updatedAt";

fn entries(secret: &Secret, scope: &str, skip: &BTreeMap<String, ()>) -> Vec<Value> {
    let created = secret
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let updated = secret
        .annotations()
        .get(UPDATED_AT)
        .cloned()
        .unwrap_or_else(|| created.clone());
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .chain(secret.string_data.iter().flatten().map(|(k, _)| k))
        .filter(|k| !skip.contains_key(*k))
        .map(|k| {
            json!({"key": k, "has_value": true, "scope": scope, "created_at": created, "updated_at": updated})
        })
        .collect()
}

fn keys(secret: &Option<Secret>) -> BTreeMap<String, ()> {
    secret
        .iter()
        .flat_map(|s| s.data.iter().flatten().map(|(k, _)| (k.clone(), ())))
        .collect()
}

/// `{key, value}` of a set request.
fn key_value(m: &serde_json::Map<String, Value>) -> Result<(String, String), ShimError> {
    let f = Fields(m);
    let key = f.required_str("key", 128)?;
    check_secret_key(&key)?;
    let value = match m.get("value") {
        Some(Value::String(v)) if !v.is_empty() && v.len() <= MAX_VALUE => v.clone(),
        Some(Value::String(v)) if v.len() > MAX_VALUE => {
            return Err(ShimError::bad(format!(
                "field `value` must be at most {MAX_VALUE} bytes"
            )));
        }
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ShimError::bad("field `value` is required"));
        }
        Some(_) => return Err(ShimError::bad("field `value` must be a string")),
    };
    Ok((key, value))
}

/// Writes one key, creating the Secret (owned by `owner`, if given) when it does not exist.
async fn upsert(
    shim: &Shim,
    namespace: &str,
    name: &str,
    owner: Option<&Workspace>,
    key: &str,
    value: &str,
) -> Result<(), ShimError> {
    let api: Api<Secret> = Api::namespaced(shim.client.clone(), namespace);
    let now = crate::util::now_rfc3339();
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    let patch = json!({"metadata": {"annotations": {UPDATED_AT: now}}, "data": {key: b64}});
    for _ in 0..3 {
        if api.get_opt(name).await?.is_some() {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                annotations: Some([(UPDATED_AT.to_string(), now.clone())].into()),
                labels: owner.map(|w| [("molecule.ai/workspace".to_string(), w.name_any())].into()),
                owner_references: owner
                    .and_then(|w| w.controller_owner_ref(&()))
                    .map(|o| vec![o]),
                ..Default::default()
            },
            data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ShimError::Conflict(
        "the secret changed concurrently; retry".into(),
    ))
}

/// Removes one key; false when there was none.
async fn remove_key(
    shim: &Shim,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<bool, ShimError> {
    let api: Api<Secret> = Api::namespaced(shim.client.clone(), namespace);
    let Some(s) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !s.data.as_ref().is_some_and(|d| d.contains_key(key)) {
        return Ok(false);
    }
    let patch = json!({"metadata": {"annotations": {UPDATED_AT: crate::util::now_rfc3339()}}, "data": {key: null}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

/// Whether a secret change should restart `ws` (not for paused, external or deleted ones,
/// nor under a paused ancestor).
fn restartable(shim: &Shim, ws: &Workspace) -> bool {
    let uid = ws.uid().unwrap_or_default();
    ws.metadata.deletion_timestamp.is_none()
        && !ws.spec.paused
        && ws.spec.runtime.as_deref() != Some("external")
        && !shim
            .cache
            .tree()
            .ancestors(&uid)
            .iter()
            .any(|a| a.spec.paused)
}

/// Sets the restart annotation (the env changed; one restart picks it up).
async fn restart(shim: &Shim, ws: &Workspace) -> Result<(), ShimError> {
    let api: Api<Workspace> =
        Api::namespaced(shim.client.clone(), &ws.namespace().unwrap_or_default());
    let patch =
        json!({"metadata": {"annotations": {RESTART_ANNOTATION: crate::util::now_rfc3339()}}});
    api.patch(
        &ws.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn workspace_and_global(
    shim: &Shim,
    ws: &Workspace,
) -> Result<(Option<Secret>, Option<Secret>), ShimError> {
    let api: Api<Secret> =
        Api::namespaced(shim.client.clone(), &ws.namespace().unwrap_or_default());
    Ok((
        api.get_opt(&workspace_secret(&ws.name_any())).await?,
        api.get_opt(GLOBAL_SECRET).await?,
    ))
}

/// `GET /workspaces/:id/secrets` (admin; ADR 0038): the workspace's keys plus the inherited global ones.
pub async fn list(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let ws = shim.workspace(&id).await?;
    let (own, global) = workspace_and_global(&shim, &ws).await?;
    let own_keys = keys(&own);
    let mut out = vec![];
    if let Some(s) = &own {
        out.extend(entries(s, "workspace", &BTreeMap::new()));
    }
    if let Some(g) = &global {
        out.extend(entries(g, "global", &own_keys));
    }
    Ok(axum::Json(out).into_response())
}

/// `POST|PUT /workspaces/:id/secrets {key, value}` (admin: secrets become the workspace's env).
pub async fn set(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let (key, value) = key_value(&input::object(body, false).await?)?;
    let ns = ws.namespace().unwrap_or_default();
    upsert(
        &shim,
        &ns,
        &workspace_secret(&ws.name_any()),
        Some(&ws),
        &key,
        &value,
    )
    .await?;
    let restarted = restartable(&shim, &ws);
    if restarted {
        restart(&shim, &ws).await?;
    }
    shim.audit
        .record(
            "secret.set",
            &ns,
            &ws.name_any(),
            json!({"uid": id, "key": key, "scope": "workspace", "restarted": restarted}),
        )
        .await;
    Ok(axum::Json(json!({"status": "saved", "key": key})).into_response())
}

/// `DELETE /workspaces/:id/secrets/:key` (admin).
pub async fn remove(
    State(shim): State<Arc<Shim>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let ws = shim.workspace(&id).await?;
    check_secret_key(&key)?;
    let ns = ws.namespace().unwrap_or_default();
    if !remove_key(&shim, &ns, &workspace_secret(&ws.name_any()), &key).await? {
        return Err(ShimError::NotFound("secret"));
    }
    let restarted = restartable(&shim, &ws);
    if restarted {
        restart(&shim, &ws).await?;
    }
    shim.audit
        .record(
            "secret.deleted",
            &ns,
            &ws.name_any(),
            json!({"uid": id, "key": key, "scope": "workspace", "restarted": restarted}),
        )
        .await;
    Ok(axum::Json(json!({"status": "deleted", "key": key})).into_response())
}

/// `GET /settings/secrets` (admin).
pub async fn list_global(State(shim): State<Arc<Shim>>, headers: HeaderMap) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let api: Api<Secret> = Api::namespaced(shim.client.clone(), &shim.namespace);
    let out = match api.get_opt(GLOBAL_SECRET).await? {
        Some(s) => entries(&s, "global", &BTreeMap::new()),
        None => vec![],
    };
    Ok(axum::Json(out).into_response())
}

/// Restarts every workspace of the namespace that inherits global `key` (no override).
async fn restart_inheritors(shim: &Shim, key: &str) -> Result<usize, ShimError> {
    shim.cache.wait_ready().await?;
    let api: Api<Secret> = Api::namespaced(shim.client.clone(), &shim.namespace);
    let overridden: BTreeMap<String, ()> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key(key)))
        .map(|s| (s.name_any(), ()))
        .collect();
    let tree = shim.cache.tree();
    let mut n = 0;
    for v in shim.cache.views() {
        let Some(ws) = tree.get(&v.id) else { continue };
        if ws.namespace().as_deref() != Some(shim.namespace.as_str())
            || overridden.contains_key(&workspace_secret(&ws.name_any()))
            || !restartable(shim, ws)
        {
            continue;
        }
        restart(shim, ws).await?;
        n += 1;
    }
    Ok(n)
}

/// `PUT|POST /settings/secrets {key, value}` (admin).
pub async fn set_global(
    State(shim): State<Arc<Shim>>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let (key, value) = key_value(&input::object(body, false).await?)?;
    upsert(&shim, &shim.namespace, GLOBAL_SECRET, None, &key, &value).await?;
    let n = restart_inheritors(&shim, &key).await?;
    shim.audit
        .record(
            "secret.set",
            &shim.namespace,
            GLOBAL_SECRET,
            json!({"key": key, "scope": "global", "restarted": n}),
        )
        .await;
    Ok(global_reply("saved", &key, n))
}

/// `DELETE /settings/secrets/:key` (admin).
pub async fn remove_global(
    State(shim): State<Arc<Shim>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    check_secret_key(&key)?;
    if !remove_key(&shim, &shim.namespace, GLOBAL_SECRET, &key).await? {
        return Err(ShimError::NotFound("secret"));
    }
    let n = restart_inheritors(&shim, &key).await?;
    shim.audit
        .record(
            "secret.deleted",
            &shim.namespace,
            GLOBAL_SECRET,
            json!({"key": key, "scope": "global", "restarted": n}),
        )
        .await;
    Ok(global_reply("deleted", &key, n))
}

fn global_reply(status: &str, key: &str, restarted: usize) -> Response {
    axum::Json(json!({"status": status, "key": key, "scope": "global", "restarted": restarted}))
        .into_response()
}
