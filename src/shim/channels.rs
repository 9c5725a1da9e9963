//! Channel routes for the canvas's Channels tab (ADR 0054), admin bearer only: a workspace's
//! channels with their observed state, and switching one on or off. The list never carries a
//! token: only `config` (non-secret settings by construction, secret-looking keys are dropped
//! anyway) and the name of the Secret key the token is read from.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use super::input;
use crate::resources::{ChannelSpec, ChannelStatus, Workspace};

/// One channel as the canvas shows it.
pub fn view(index: usize, spec: &ChannelSpec, status: Option<&ChannelStatus>) -> Value {
    let config: serde_json::Map<String, Value> = spec
        .config
        .iter()
        .filter(|(k, _)| !crate::orgtemplate::is_secret_key(k))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let status = status.filter(|s| s.type_ == spec.type_);
    json!({
        "index": index,
        "type": spec.type_,
        "enabled": spec.enabled,
        "allowed_users": spec.allowed_users,
        "config": config,
        "token_from": spec.config_from.as_ref().map(|s| json!({"secret": s.name, "key": s.key})),
        "state": status.and_then(|s| s.state.clone()),
        "reason": status.and_then(|s| s.reason.clone()),
        "message": status.and_then(|s| s.message.clone()),
        "last_message_at": status.and_then(|s| s.last_message_at.clone()),
        "message_count": status.map_or(0, |s| s.message_count),
        "ignored_count": status.map_or(0, |s| s.ignored_count),
    })
}

fn list_of(ws: &Workspace) -> Vec<Value> {
    let observed = ws
        .status
        .as_ref()
        .map(|s| s.channels.as_slice())
        .unwrap_or(&[]);
    ws.spec
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| view(i, c, observed.get(i)))
        .collect()
}

/// `GET /workspaces/:id/channels` (admin).
pub async fn list(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let ws = shim.workspace(&id).await?;
    Ok(axum::Json(list_of(&ws)).into_response())
}

/// `PATCH /workspaces/:id/channels/:index {enabled: bool}` (admin): edits
/// `spec.channels[index].enabled`; the channel controller starts or stops the adapter.
pub async fn set_enabled(
    State(shim): State<Arc<Shim>>,
    Path((id, index)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    let cached = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    let index: usize = index
        .parse()
        .map_err(|_| ShimError::bad("the channel index must be a non-negative integer"))?;
    let m = input::object(body, false).await?;
    if let Some(k) = m.keys().find(|k| k.as_str() != "enabled") {
        return Err(ShimError::bad(format!(
            "unknown field `{k}` (only `enabled` may be changed)"
        )));
    }
    let enabled = match m.get("enabled") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ShimError::bad("field `enabled` must be a boolean")),
        None => return Err(ShimError::bad("field `enabled` is required")),
    };
    let api: Api<Workspace> =
        Api::namespaced(shim.client.clone(), &cached.namespace().unwrap_or_default());
    for _ in 0..3 {
        let ws = api
            .get_opt(&cached.name_any())
            .await?
            .filter(|w| w.metadata.uid == cached.metadata.uid)
            .ok_or(ShimError::NotFound("workspace"))?;
        if index >= ws.spec.channels.len() {
            return Err(ShimError::NotFound("channel"));
        }
        let mut channels = ws.spec.channels.clone();
        channels[index].enabled = enabled;
        let patch = json!({
            "metadata": {"resourceVersion": ws.metadata.resource_version},
            "spec": {"channels": channels},
        });
        match api
            .patch(
                &ws.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                shim.audit
                    .record(
                        "workspace.channel.updated",
                        &updated.namespace().unwrap_or_default(),
                        &updated.name_any(),
                        json!({"uid": id, "index": index, "enabled": enabled}),
                    )
                    .await;
                let observed = updated.status.as_ref().and_then(|s| s.channels.get(index));
                let spec = updated.spec.channels.get(index).unwrap_or(&channels[index]);
                return Ok(axum::Json(view(index, spec, observed)).into_response());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ShimError::Conflict(
        "the workspace changed concurrently; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SecretKeySelector;

    #[test]
    fn the_view_never_shows_a_secret_and_ignores_a_stale_status() {
        let spec = ChannelSpec {
            type_: "telegram".into(),
            config_from: Some(SecretKeySelector {
                name: "s".into(),
                key: "BOT_TOKEN".into(),
                optional: false,
            }),
            config: [
                ("chat_id".to_string(), "-1".to_string()),
                ("bot_token".to_string(), "123:abc".to_string()),
            ]
            .into(),
            allowed_users: vec!["42".into()],
            enabled: true,
        };
        let status = ChannelStatus {
            type_: "telegram".into(),
            state: Some("Connected".into()),
            message_count: 3,
            ..Default::default()
        };
        let v = view(0, &spec, Some(&status));
        assert_eq!(v["config"], json!({"chat_id": "-1"}));
        assert!(!v.to_string().contains("123:abc"));
        assert_eq!(
            (v["state"].as_str(), v["message_count"].as_i64()),
            (Some("Connected"), Some(3))
        );
        let stale = ChannelStatus {
            type_: "slack".into(),
            message_count: 9,
            ..Default::default()
        };
        assert_eq!(view(0, &spec, Some(&stale))["message_count"], 0);
    }
}
