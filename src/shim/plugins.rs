//! Plugin routes over the PluginInstall and PluginUpdate records; the plugin controller does
//! the installing. `GET /plugins` lists the local plugin registry (the directories of the
//! plugin root with their `plugin.yaml`) and where each plugin is installed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::Shim;
use super::auth::{Caller, bearer};
use super::error::{ShimError, ShimResult};
use super::input::{self, Fields};
use crate::resources::names::REQUESTED_BY_LABEL;
use crate::resources::{
    ConditionStatus, LocalObjectReference, PluginDecision, PluginInstall, PluginInstallSpec,
    PluginUpdate, UpdatePolicy, Workspace,
};

/// Label on a PluginInstall naming its plugin.
pub const PLUGIN_LABEL: &str = "molecule.ai/plugin";
/// Label on a PluginInstall naming its workspace.
pub const WORKSPACE_LABEL: &str = crate::resources::names::PLUGIN_WORKSPACE_LABEL;

/// Plugin names: `^[a-z0-9][a-z0-9._-]{0,127}$`.
pub fn valid_plugin_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        })
        && !n.contains("..")
}

/// The plugin a source installs: `local://<name>`, or the last path segment of a git URL.
pub fn plugin_name(source: &str) -> Result<String, ShimError> {
    let bad =
        || ShimError::bad("field `source` must be local://<name> or an https git repository URL");
    let name = if let Some(n) = source.strip_prefix("local://") {
        n.to_string()
    } else if let Some(rest) = source.strip_prefix("https://") {
        let path = rest.split(['?', '#']).next().unwrap_or("");
        let mut segs = path.split('/').filter(|s| !s.is_empty());
        let host = segs.next().ok_or_else(bad)?;
        if host.contains('@') {
            return Err(bad());
        }
        let last = segs.next_back().ok_or_else(bad)?;
        last.trim_end_matches(".git").to_ascii_lowercase()
    } else {
        return Err(bad());
    };
    if !valid_plugin_name(&name) {
        return Err(ShimError::bad(
            "invalid plugin name: use lower-case letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(name)
}

/// `tag:<x>`, `sha:<hex>` or a branch name; bare `latest`/`main` are refused.
pub fn check_track(t: &str) -> Result<(), ShimError> {
    let ref_ok = |r: &str| {
        !r.is_empty()
            && r.len() <= 200
            && !r.contains("..")
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b))
    };
    let ok = if let Some(sha) = t.strip_prefix("sha:") {
        sha.len() >= 7 && sha.len() <= 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())
    } else if let Some(tag) = t.strip_prefix("tag:") {
        ref_ok(tag)
    } else {
        ref_ok(t) && !matches!(t, "latest" | "main" | "master" | "none")
    };
    if ok {
        Ok(())
    } else {
        Err(ShimError::bad(
            "field `track` must be tag:<tag>, sha:<commit> or a branch name (bare latest/main need a prefix)",
        ))
    }
}

/// The record name of a plugin in a workspace (a DNS subdomain).
fn record_name(workspace: &str, plugin: &str) -> String {
    let slug: String = plugin
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    let n = format!("{workspace}-{slug}");
    if n.len() <= 240 && slug == plugin {
        n
    } else {
        let h = super::auth::sha256_hex(plugin);
        let cut: String = slug.chars().take(40).collect();
        format!("{workspace}-{}-{}", cut.trim_matches(['-', '.']), &h[..8])
    }
}

pub fn plugin_of(p: &PluginInstall) -> String {
    p.labels()
        .get(PLUGIN_LABEL)
        .cloned()
        .or_else(|| plugin_name(&p.spec.source).ok())
        .unwrap_or_else(|| p.name_any())
}

fn install_state(p: &PluginInstall) -> (&'static str, Option<String>) {
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == ConditionStatus::True => ("installed", c.message.clone()),
        Some(c)
            if c.reason.as_deref().is_some_and(|r| {
                r.contains("Fail") || r.contains("Invalid") || r.contains("Refused")
            }) =>
        {
            ("failed", c.message.clone())
        }
        Some(c) => ("installing", c.message.clone()),
        None => ("installing", None),
    }
}

fn install_json(p: &PluginInstall) -> Value {
    let (status, message) = install_state(p);
    let st = p.status.clone().unwrap_or_default();
    json!({
        "name": plugin_of(p),
        "source": p.spec.source,
        "track": p.spec.track.clone().unwrap_or_else(|| "none".into()),
        "update_policy": if p.spec.update_policy == UpdatePolicy::Auto { "auto" } else { "manual" },
        "installed_sha": st.installed_sha,
        "restart_class": st.last_restart_class,
        "status": status,
        "message": message,
        "id": p.uid(),
        "k8s_name": p.name_any(),
    })
}

/// The PluginInstall of `plugin` in `ws` (`spec.workspaceRef` is filled in): named after both,
/// labelled with both, owned by the workspace, so deleting the workspace uninstalls it.
pub fn install_record(ws: &Workspace, plugin: &str, spec: PluginInstallSpec) -> PluginInstall {
    let mut record = PluginInstall::new(
        &record_name(&ws.name_any(), plugin),
        PluginInstallSpec {
            workspace_ref: LocalObjectReference {
                name: ws.name_any(),
            },
            ..spec
        },
    );
    record.metadata.labels = Some(
        [
            (PLUGIN_LABEL.to_string(), plugin.chars().take(63).collect()),
            (WORKSPACE_LABEL.to_string(), ws.name_any()),
        ]
        .into(),
    );
    record.metadata.owner_references = ws.owner_ref(&()).map(|o| vec![o]);
    record
}

/// The PluginInstalls of one workspace.
pub async fn installs_of(shim: &Shim, ws: &Workspace) -> Result<Vec<PluginInstall>, ShimError> {
    let api: Api<PluginInstall> =
        Api::namespaced(shim.client.clone(), &ws.namespace().unwrap_or_default());
    let name = ws.name_any();
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.spec.workspace_ref.name == name)
        .collect())
}

/// `GET /plugins` (admin): the local registry, each entry with the workspaces it is
/// installed in; plugins installed from git appear too.
pub async fn catalog(State(shim): State<Arc<Shim>>, headers: HeaderMap) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    shim.cache.wait_ready().await?;
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (name, manifest) in read_registry(&shim.plugin_root) {
        let s = |k: &str| {
            manifest
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let list = |k: &str| -> Vec<String> {
            manifest
                .get(k)
                .and_then(|v| v.as_array())
                .map(|q| {
                    q.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        out.insert(
            name.clone(),
            json!({
                "name": name, "version": s("version"), "description": s("description"),
                "author": s("author"), "tags": list("tags"), "skills": list("skills"),
                "runtimes": list("runtimes"), "source": format!("local://{name}"), "installed_in": [],
            }),
        );
    }
    let tree = shim.cache.tree();
    let api: Api<PluginInstall> = Api::all(shim.client.clone());
    for p in api.list(&ListParams::default()).await?.items {
        let name = plugin_of(&p);
        let ws_uid = tree
            .uid_of(
                &p.namespace().unwrap_or_default(),
                &p.spec.workspace_ref.name,
            )
            .map(String::from);
        let entry = out.entry(name.clone()).or_insert_with(|| {
            json!({"name": name, "version": "", "description": "", "author": "", "tags": [],
                   "skills": [], "runtimes": [], "source": p.spec.source, "installed_in": []})
        });
        if let (Some(uid), Some(list)) = (ws_uid, entry["installed_in"].as_array_mut()) {
            list.push(json!(uid));
        }
    }
    Ok(axum::Json(out.into_values().collect::<Vec<_>>()).into_response())
}

/// Plugin directories of the registry root with their parsed `plugin.yaml` (lenient).
fn read_registry(
    root: &std::path::Path,
) -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
    let Ok(dir) = std::fs::read_dir(root) else {
        return vec![];
    };
    let mut out = vec![];
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !valid_plugin_name(&name) || !e.path().is_dir() {
            continue;
        }
        let manifest = std::fs::read(e.path().join("plugin.yaml"))
            .ok()
            .filter(|b| b.len() <= 64 * 1024)
            .and_then(|b| crate::yaml::from_slice::<serde_json::Map<_, _>>(&b).ok())
            .unwrap_or_default();
        out.push((name, manifest));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `GET /workspaces/:id/plugins`.
pub async fn list(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    let (_, ws) = shim
        .require_workspace(bearer(&headers).as_deref(), &id)
        .await?;
    let mut items: Vec<Value> = installs_of(&shim, &ws)
        .await?
        .iter()
        .map(install_json)
        .collect();
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(axum::Json(items).into_response())
}

/// `POST /workspaces/:id/plugins {source, track?, update_policy?, allow_unpinned?}` → 201 (200
/// `reinstalling` when the plugin is already installed: [`reinstall`]);
/// the PluginInstall is owned by the workspace, so deleting the workspace uninstalls it. The
/// workspace's own token may use `local://` sources and git sources on the allowed hosts only
/// (403 otherwise); the admin token any source.
pub async fn install(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ShimResult {
    let (caller, ws) = shim
        .require_live_workspace(bearer(&headers).as_deref(), &id)
        .await?;
    let m = input::object(body, false).await?;
    let f = Fields(&m);
    let source = f.required_str("source", 2048)?;
    let plugin = plugin_name(&source)?;
    // A git source makes the operator fetch a URL with its own network position and git
    // credentials: from a workspace's token only hosts an admin allowed (ADR 0038).
    let by_workspace = caller != Caller::Admin;
    if by_workspace && !source.starts_with("local://") && !shim.plugin_git_hosts.allows(&source) {
        return Err(ShimError::Forbidden(
            "a workspace token may install git plugins only from the hosts of --plugin-git-hosts; use local://<name> or the admin token",
        ));
    }
    let track = f.str("track", 210)?;
    if let Some(t) = &track {
        check_track(t)?;
    }
    let policy = match f.str("update_policy", 16)?.as_deref() {
        None | Some("manual") | Some("Manual") => UpdatePolicy::Manual,
        Some("auto") | Some("Auto") => UpdatePolicy::Auto,
        Some(_) => {
            return Err(ShimError::bad(
                "field `update_policy` must be manual or auto",
            ));
        }
    };
    let allow_unpinned = f.bool("allow_unpinned")?.unwrap_or(false);
    if ws.spec.runtime.as_deref() == Some("external") {
        return Err(ShimError::Body(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "external workspaces cannot install plugins: the agent runs elsewhere; download the plugin and install it there"}),
        ));
    }
    let ns = ws.namespace().unwrap_or_default();
    if let Some(existing) = installs_of(&shim, &ws)
        .await?
        .into_iter()
        .find(|p| plugin_of(p) == plugin)
    {
        return reinstall(&shim, &id, &existing, &source, track).await;
    }
    let mut record = install_record(
        &ws,
        &plugin,
        PluginInstallSpec {
            source: source.clone(),
            track,
            update_policy: policy,
            allow_unpinned,
            ..Default::default()
        },
    );
    if by_workspace && let Some(labels) = record.metadata.labels.as_mut() {
        labels.insert(REQUESTED_BY_LABEL.to_string(), "workspace".to_string());
    }
    let api: Api<PluginInstall> = Api::namespaced(shim.client.clone(), &ns);
    let created = match api.create(&PostParams::default(), &record).await {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(ShimError::Conflict(format!(
                "plugin {plugin} is already installed in this workspace"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    shim.audit
        .record(
            "plugin.install_requested",
            &ns,
            &created.name_any(),
            json!({"workspace_uid": id, "plugin": plugin, "source": source}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"status": "installing", "plugin": plugin, "source": source, "id": created.uid(), "k8s_name": created.name_any()})),
    )
        .into_response())
}

/// An install of a plugin that is already installed re-installs it now, as the original does:
/// the record's source and track become the requested ones and `spec.reinstallRequestedAt` a
/// new value, so the controller fetches the source's current content and installs it, hot or
/// cold as classified (ADR 0049). 200 `{status: "reinstalling", …}`.
async fn reinstall(
    shim: &Shim,
    id: &str,
    existing: &PluginInstall,
    source: &str,
    track: Option<String>,
) -> ShimResult {
    if existing.metadata.deletion_timestamp.is_some() {
        return Err(ShimError::Conflict(
            "the plugin is being uninstalled; install it again once it is gone".into(),
        ));
    }
    let ns = existing.namespace().unwrap_or_default();
    let plugin = plugin_of(existing);
    let api: Api<PluginInstall> = Api::namespaced(shim.client.clone(), &ns);
    let patch = json!({
        "metadata": {"resourceVersion": existing.resource_version()},
        "spec": {
            "source": source,
            "track": track,
            "reinstallRequestedAt": crate::util::now_micro(),
        },
    });
    let updated = api
        .patch(
            &existing.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    shim.audit
        .record(
            "plugin.reinstall_requested",
            &ns,
            &updated.name_any(),
            json!({"workspace_uid": id, "plugin": plugin, "source": source}),
        )
        .await;
    Ok(axum::Json(json!({"status": "reinstalling", "plugin": plugin, "source": source, "id": updated.uid(), "k8s_name": updated.name_any()})).into_response())
}

/// `DELETE /workspaces/:id/plugins/:name`: deletes the PluginInstall (the controller removes
/// the files).
pub async fn uninstall(
    State(shim): State<Arc<Shim>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ShimResult {
    let (_, ws) = shim
        .require_workspace(bearer(&headers).as_deref(), &id)
        .await?;
    if !valid_plugin_name(&name) {
        return Err(ShimError::bad(
            "invalid plugin name: use lower-case letters, digits, '.', '_' and '-'",
        ));
    }
    let Some(p) = installs_of(&shim, &ws)
        .await?
        .into_iter()
        .find(|p| plugin_of(p) == name)
    else {
        return Err(ShimError::NotFound("plugin"));
    };
    let ns = ws.namespace().unwrap_or_default();
    let api: Api<PluginInstall> = Api::namespaced(shim.client.clone(), &ns);
    match api.delete(&p.name_any(), &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    shim.audit
        .record(
            "plugin.uninstall_requested",
            &ns,
            &p.name_any(),
            json!({"workspace_uid": id, "plugin": name}),
        )
        .await;
    Ok(axum::Json(json!({"status": "uninstalling", "plugin": name})).into_response())
}

fn update_phase(u: &PluginUpdate) -> &str {
    u.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// `GET /admin/plugin-updates-pending` (admin): queued updates nobody decided on yet.
pub async fn pending(State(shim): State<Arc<Shim>>, headers: HeaderMap) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    shim.cache.wait_ready().await?;
    let updates: Api<PluginUpdate> = Api::all(shim.client.clone());
    let installs: Api<PluginInstall> = Api::all(shim.client.clone());
    let installs: BTreeMap<(String, String), PluginInstall> = installs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p))
        .collect();
    let tree = shim.cache.tree();
    let mut out = vec![];
    for u in updates.list(&ListParams::default()).await?.items {
        if u.spec.decision != PluginDecision::Pending
            || matches!(update_phase(&u), "Applied" | "Dismissed")
        {
            continue;
        }
        let ns = u.namespace().unwrap_or_default();
        let install = installs.get(&(ns.clone(), u.spec.plugin_install_ref.name.clone()));
        let ws_uid = install.and_then(|p| tree.uid_of(&ns, &p.spec.workspace_ref.name));
        out.push(json!({
            "id": u.uid(),
            "workspace_id": ws_uid,
            "plugin_name": install.map(plugin_of),
            "plugin_install": u.spec.plugin_install_ref.name,
            "from_sha": u.spec.from_sha,
            "to_sha": u.spec.to_sha,
            "status": "pending",
            "detected_at": u.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            "namespace": ns,
            "k8s_name": u.name_any(),
        }));
    }
    Ok(axum::Json(out).into_response())
}

/// `POST /admin/plugin-updates/:id/apply` (admin): approves the update (the plugin controller
/// applies it). Idempotent: already approved → 202 again, already applied → 200.
pub async fn apply(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    super::input::check_id(&id)
        .map_err(|_| ShimError::bad("invalid update id: expected a UUID"))?;
    let updates: Api<PluginUpdate> = Api::all(shim.client.clone());
    let Some(u) = updates
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|u| u.uid().as_deref() == Some(id.as_str()))
    else {
        return Err(ShimError::NotFound("plugin update"));
    };
    if update_phase(&u) == "Applied" {
        return Ok(axum::Json(json!({"status": "already_applied", "id": id})).into_response());
    }
    if u.spec.decision == PluginDecision::Dismissed || update_phase(&u) == "Dismissed" {
        return Err(ShimError::Conflict("the update was dismissed".into()));
    }
    let ns = u.namespace().unwrap_or_default();
    if u.spec.decision != PluginDecision::Approved {
        let api: Api<PluginUpdate> = Api::namespaced(shim.client.clone(), &ns);
        api.patch(
            &u.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"decision": "Approved"}})),
        )
        .await?;
        shim.audit
            .record(
                "plugin.update_approved",
                &ns,
                &u.name_any(),
                json!({"uid": id, "to_sha": u.spec.to_sha}),
            )
            .await;
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "approved", "id": id})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_their_plugin() {
        assert_eq!(
            plugin_name("local://skills-pack").expect("l"),
            "skills-pack"
        );
        assert_eq!(
            plugin_name("https://git.example/org/My-Plugin.git").expect("g"),
            "my-plugin"
        );
        for bad in [
            "local://../../etc",
            "local://",
            "file:///etc/passwd",
            "https://user:pw@host/x",
            "https://",
            "local://A B",
        ] {
            assert!(plugin_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tracks_and_record_names() {
        for ok in ["tag:v1.2.0", "tag:latest", "sha:0123abcd", "release/1.x"] {
            assert!(check_track(ok).is_ok(), "{ok}");
        }
        for bad in ["latest", "main", "tag:", "sha:xyz", "a..b", "tag:$(x)"] {
            assert!(check_track(bad).is_err(), "{bad}");
        }
        assert_eq!(record_name("lead", "skills-pack"), "lead-skills-pack");
        let n = record_name("lead", "under_score");
        assert!(
            n.starts_with("lead-under-score-") && n.len() == "lead-under-score-".len() + 8,
            "{n}"
        );
    }
}
