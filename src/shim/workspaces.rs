//! `/workspaces` routes: list, get, create, patch, delete (with the children confirmation),
//! restart, pause and resume. Each turns into a record write; the controllers do the rest and
//! the status comes back through the watch.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::Shim;
use super::auth::{Caller, bearer};
use super::error::{ShimError, ShimResult};
use super::input::{self, Fields, check_label_text, check_runtime};
use super::tree::Tree;
use super::view::{ANN_BUDGET, ANN_COLLAPSED, ANN_X, ANN_Y};
use crate::resources::names::RESTART_ANNOTATION;
use crate::resources::{LocalObjectReference, Workspace, WorkspaceSpec};

const MAX_NAME: usize = 255;
const MAX_ROLE: usize = 1000;
const MAX_MODEL: usize = 100;

fn api(shim: &Shim, ws: &Workspace) -> Api<Workspace> {
    Api::namespaced(shim.client.clone(), &ws.namespace().unwrap_or_default())
}

/// Patches one record (merge patch) and waits until the index has seen the write.
async fn patch(shim: &Shim, ws: &Workspace, body: Value) -> Result<Workspace, ShimError> {
    let out = api(shim, ws)
        .patch(
            &ws.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await?;
    if let Some(uid) = out.uid() {
        shim.cache
            .wait_for_version(&uid, out.resource_version().as_deref())
            .await;
    }
    Ok(out)
}

/// A DNS-1123 name from a display name: `research-lead-x7k2p`.
pub fn generated_name(display: &str) -> String {
    let mut slug = String::new();
    for c in display.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "ws" } else { slug };
    format!("{slug}-{}", crate::util::random_suffix(5))
}

fn ancestor_paused(tree: &Tree, uid: &str) -> Option<String> {
    tree.ancestors(uid)
        .into_iter()
        .find(|a| a.spec.paused)
        .map(|a| display_name(&a))
}

fn display_name(ws: &Workspace) -> String {
    ws.spec
        .display_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| ws.name_any())
}

fn paused_parent_error(name: &str) -> ShimError {
    ShimError::Conflict(format!(
        "parent workspace \"{name}\" is paused — resume it first"
    ))
}

/// `GET /workspaces`: every workspace for the admin; for a workspace's own token, the ones
/// it may talk to (itself, parent, children, siblings, ancestors, descendants; ADR 0038).
pub async fn list(State(shim): State<Arc<Shim>>, headers: HeaderMap) -> ShimResult {
    let caller = shim.caller(bearer(&headers).as_deref())?;
    shim.cache.wait_ready().await?;
    let mut views = shim.cache.views();
    if let Caller::Workspace(me) = &caller {
        let tree = shim.cache.tree();
        views.retain(|v| tree.can_communicate(me, &v.id));
    }
    Ok(axum::Json(views).into_response())
}

/// `GET /workspaces/:id`: the admin token, or the token of a workspace that may talk to it.
pub async fn get(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    let (_, ws) = shim
        .require_reader(bearer(&headers).as_deref(), &id)
        .await?;
    Ok(axum::Json(shim.cache.view(&ws)).into_response())
}

/// `POST /workspaces {name, role, tier, runtime, model, parent_id, x, y}` (admin) → 201.
pub async fn create(State(shim): State<Arc<Shim>>, headers: HeaderMap, body: Body) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let m = input::object(body, false).await?;
    let f = Fields(&m);
    let name = f.required_str("name", MAX_NAME)?;
    check_label_text("name", &name)?;
    let role = f.str("role", MAX_ROLE)?;
    if let Some(r) = &role {
        check_label_text("role", r)?;
    }
    let tier = f.int("tier", 1, 4)?;
    let runtime = f.str("runtime", 63)?;
    if let Some(r) = &runtime {
        check_runtime(r)?;
    }
    let model = f.str("model", MAX_MODEL)?;
    let parent_id = f.str("parent_id", 64)?;
    let (mut x, mut y) = (f.num("x")?, f.num("y")?);
    if let Some(canvas) = m.get("canvas") {
        let Some(c) = canvas.as_object() else {
            return Err(ShimError::bad("field `canvas` must be an object {x, y}"));
        };
        let c = Fields(c);
        x = x.or(c.num("x")?);
        y = y.or(c.num("y")?);
    }
    let budget = f.int("budget_limit", 0, i64::MAX)?;
    let url = f.str("url", 2048)?;
    if let Some(u) = &url {
        super::registry::validate_agent_url(u).map_err(ShimError::bad)?;
    }

    shim.cache.wait_ready().await?;
    let tree = shim.cache.tree();
    let namespace = match &parent_id {
        Some(pid) => {
            let parent = tree
                .get(pid)
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .ok_or_else(|| ShimError::bad("field `parent_id` does not name a workspace"))?;
            parent.namespace().unwrap_or_default()
        }
        None => shim.namespace.clone(),
    };
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(x) = x {
        annotations.insert(ANN_X.to_string(), x.to_string());
    }
    if let Some(y) = y {
        annotations.insert(ANN_Y.to_string(), y.to_string());
    }
    if let Some(b) = budget {
        annotations.insert(ANN_BUDGET.to_string(), b.to_string());
    }
    let spec = WorkspaceSpec {
        display_name: Some(name.clone()),
        role,
        runtime,
        tier: tier.map(|t| t as i32),
        model,
        url,
        parent_ref: parent_id
            .as_deref()
            .and_then(|p| tree.get(p))
            .map(|p| LocalObjectReference { name: p.name_any() }),
        ..Default::default()
    };
    let api: Api<Workspace> = Api::namespaced(shim.client.clone(), &namespace);
    let mut created = None;
    for _ in 0..3 {
        let mut ws = Workspace::new(&generated_name(&name), spec.clone());
        ws.metadata.annotations = (!annotations.is_empty()).then(|| annotations.clone());
        ws.metadata.labels =
            Some([("molecule.ai/created-by".to_string(), "rest".to_string())].into());
        match api.create(&PostParams::default(), &ws).await {
            Ok(w) => {
                created = Some(w);
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let ws =
        created.ok_or_else(|| ShimError::Conflict("could not pick a free name; retry".into()))?;
    let uid = ws.uid().unwrap_or_default();
    shim.cache
        .wait_for_version(&uid, ws.resource_version().as_deref())
        .await;
    shim.audit
        .record(
            "workspace.created",
            &namespace,
            &ws.name_any(),
            json!({"uid": uid, "via": "rest"}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": uid,
            "status": "provisioning",
            "namespace": namespace,
            "k8s_name": ws.name_any(),
        })),
    )
        .into_response())
}

/// What a workspace's own token may change of its workspace: presentation only (ADR 0038).
pub const PRESENTATION: [&str; 4] = ["name", "x", "y", "collapsed"];

/// `PATCH /workspaces/:id` (name, role, tier, parent_id, runtime, x, y, collapsed). Position
/// and collapse are annotations: changing them never restarts the workspace. The workspace's
/// own token may change the presentation fields only; any other field takes the admin token
/// (403, nothing written), so an agent cannot raise its tier (tier 4 mounts the Docker socket),
/// swap its runtime or move itself in the org.
pub async fn update(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    let (caller, ws) = shim
        .require_live_workspace(bearer(&headers).as_deref(), &id)
        .await?;
    let m = input::object(body, false).await?;
    if caller != Caller::Admin
        && let Some(field) = m.keys().find(|k| !PRESENTATION.contains(&k.as_str()))
    {
        return Err(ShimError::Body(
            StatusCode::FORBIDDEN,
            json!({
                "error": format!("field `{}` needs the admin token; a workspace token may change only {}", field.chars().take(64).collect::<String>(), PRESENTATION.join(", ")),
            }),
        ));
    }
    let f = Fields(&m);
    const UPDATABLE: [&str; 8] = [
        "name",
        "role",
        "tier",
        "parent_id",
        "runtime",
        "x",
        "y",
        "collapsed",
    ];
    if !UPDATABLE.iter().any(|k| f.has(k)) {
        return Err(ShimError::bad(format!(
            "nothing to update; updatable fields: {}",
            UPDATABLE.join(", ")
        )));
    }
    let mut spec = serde_json::Map::new();
    let mut ann = serde_json::Map::new();
    if let Some(n) = f.str("name", MAX_NAME)? {
        check_label_text("name", &n)?;
        if n.trim().is_empty() {
            return Err(ShimError::bad("field `name` must not be empty"));
        }
        spec.insert("displayName".into(), json!(n));
    }
    if let Some(r) = f.nullable_str("role", MAX_ROLE)? {
        if let Some(r) = &r {
            check_label_text("role", r)?;
        }
        spec.insert("role".into(), json!(r));
    }
    if let Some(t) = f.int("tier", 1, 4)? {
        spec.insert("tier".into(), json!(t));
    }
    if let Some(r) = f.str("runtime", 63)? {
        check_runtime(&r)?;
        spec.insert("runtime".into(), json!(r));
    }
    if let Some(p) = f.nullable_str("parent_id", 64)? {
        let tree = shim.cache.tree();
        let parent = match p {
            None => Value::Null,
            Some(pid) => {
                let parent = tree
                    .get(&pid)
                    .filter(|w| w.metadata.deletion_timestamp.is_none())
                    .ok_or_else(|| ShimError::bad("field `parent_id` does not name a workspace"))?;
                if parent.namespace() != ws.namespace() {
                    return Err(ShimError::bad(
                        "field `parent_id` must name a workspace in the same namespace",
                    ));
                }
                if pid == id
                    || tree
                        .descendants(&id)
                        .iter()
                        .any(|d| d.uid().as_deref() == Some(pid.as_str()))
                {
                    return Err(ShimError::bad(
                        "field `parent_id` would make the workspace its own ancestor",
                    ));
                }
                json!({"name": parent.name_any()})
            }
        };
        spec.insert("parentRef".into(), parent);
    }
    if let Some(x) = f.num("x")? {
        ann.insert(ANN_X.into(), json!(x.to_string()));
    }
    if let Some(y) = f.num("y")? {
        ann.insert(ANN_Y.into(), json!(y.to_string()));
    }
    if let Some(c) = f.bool("collapsed")? {
        ann.insert(ANN_COLLAPSED.into(), json!(c.to_string()));
    }
    let mut body = serde_json::Map::new();
    if !spec.is_empty() {
        body.insert("spec".into(), Value::Object(spec));
    }
    if !ann.is_empty() {
        body.insert("metadata".into(), json!({"annotations": ann}));
    }
    patch(&shim, &ws, Value::Object(body)).await?;
    Ok(axum::Json(json!({"status": "updated"})).into_response())
}

/// `DELETE /workspaces/:id[?confirm=true]` (the admin token or the workspace's own, as the
/// original allows): 409 with the children unless confirmed; then the whole subtree is
/// deleted.
pub async fn delete(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ShimResult {
    let (caller, ws) = shim
        .require_workspace(bearer(&headers).as_deref(), &id)
        .await?;
    let confirm = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "confirm" && v == "true");
    let tree = shim.cache.tree();
    let children = tree.children(&id);
    if !children.is_empty() && !confirm {
        let list: Vec<Value> = children
            .iter()
            .map(|c| json!({"id": c.uid(), "name": display_name(c)}))
            .collect();
        return Err(ShimError::Body(
            StatusCode::CONFLICT,
            json!({
                "error": "confirmation_required",
                "status": "confirmation_required",
                "message": "This workspace has sub-workspaces. Delete with ?confirm=true to cascade delete.",
                "children": list,
                "children_count": list.len(),
            }),
        ));
    }
    let descendants: Vec<Arc<Workspace>> = tree
        .descendants(&id)
        .into_iter()
        .filter(|d| d.metadata.deletion_timestamp.is_none())
        .collect();
    // Leaves first, so a child never outlives its parent on the canvas.
    for w in descendants.iter().rev().chain(std::iter::once(&ws)) {
        match api(&shim, w)
            .delete(&w.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    shim.cache.wait_gone(&id).await;
    shim.audit
        .record(
            "workspace.delete_requested",
            &ws.namespace().unwrap_or_default(),
            &ws.name_any(),
            json!({"uid": id, "cascade_deleted": descendants.len(), "via": "rest", "by_admin": caller == Caller::Admin}),
        )
        .await;
    Ok(
        axum::Json(json!({"status": "removed", "cascade_deleted": descendants.len()}))
            .into_response(),
    )
}

/// `POST /workspaces/:id/restart` (admin; ADR 0038): sets `molecule.ai/restartedAt` (requests within the same
/// second coalesce into one restart).
pub async fn restart(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    if let Some(p) = ancestor_paused(&shim.cache.tree(), &id) {
        return Err(paused_parent_error(&p));
    }
    if ws.spec.paused {
        return Err(ShimError::Conflict(
            "the workspace is paused; resume it instead".into(),
        ));
    }
    let at = crate::util::now_rfc3339();
    patch(
        &shim,
        &ws,
        json!({"metadata": {"annotations": {RESTART_ANNOTATION: at}}}),
    )
    .await?;
    shim.audit
        .record(
            "workspace.restart_requested",
            &ws.namespace().unwrap_or_default(),
            &ws.name_any(),
            json!({"uid": id, "via": "rest"}),
        )
        .await;
    Ok(axum::Json(json!({"status": "provisioning"})).into_response())
}

/// Sets `spec.paused` on `targets`; returns how many changed.
async fn set_paused(
    shim: &Shim,
    targets: &[Arc<Workspace>],
    paused: bool,
) -> Result<usize, ShimError> {
    for w in targets {
        patch(shim, w, json!({"spec": {"paused": paused}})).await?;
    }
    Ok(targets.len())
}

/// `POST /workspaces/:id/pause` (admin): pauses the workspace and its whole subtree.
pub async fn pause(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    if ws.spec.paused {
        return Err(ShimError::Conflict(
            "the workspace is already paused".into(),
        ));
    }
    let tree = shim.cache.tree();
    let mut targets = vec![ws.clone()];
    targets.extend(
        tree.descendants(&id)
            .into_iter()
            .filter(|d| !d.spec.paused && d.metadata.deletion_timestamp.is_none()),
    );
    let n = set_paused(&shim, &targets, true).await?;
    shim.audit
        .record(
            "workspace.paused",
            &ws.namespace().unwrap_or_default(),
            &ws.name_any(),
            json!({"uid": id, "paused_count": n}),
        )
        .await;
    Ok(axum::Json(json!({"status": "paused", "paused_count": n})).into_response())
}

/// `POST /workspaces/:id/resume` (admin): resumes the workspace and its paused subtree (409 while an
/// ancestor is paused: resume from the top down).
pub async fn resume(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    let ws = shim
        .require_admin_on(bearer(&headers).as_deref(), &id)
        .await?;
    if !ws.spec.paused {
        return Err(ShimError::Conflict("the workspace is not paused".into()));
    }
    let tree = shim.cache.tree();
    if let Some(p) = ancestor_paused(&tree, &id) {
        return Err(paused_parent_error(&p));
    }
    let mut targets = vec![ws.clone()];
    targets.extend(
        tree.descendants(&id)
            .into_iter()
            .filter(|d| d.spec.paused && d.metadata.deletion_timestamp.is_none()),
    );
    let n = set_paused(&shim, &targets, false).await?;
    shim.audit
        .record(
            "workspace.resumed",
            &ws.namespace().unwrap_or_default(),
            &ws.name_any(),
            json!({"uid": id, "resumed_count": n}),
        )
        .await;
    Ok(axum::Json(json!({"status": "provisioning", "resumed_count": n})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_dns_labels() {
        for (display, prefix) in [
            ("Research Lead", "research-lead-"),
            ("  ??? ", "ws-"),
            ("Ünïcode Team", "n-code-team-"),
        ] {
            let n = generated_name(display);
            assert!(n.starts_with(prefix), "{display} -> {n}");
            assert!(n.len() <= 63);
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{n}"
            );
        }
        let long = generated_name(&"x".repeat(300));
        assert!(long.len() <= 46, "{long}");
    }
}
