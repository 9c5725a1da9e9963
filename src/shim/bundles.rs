//! `/bundles` routes (ADR 0055): `GET /bundles/export/:id` writes the portable JSON of one
//! workspace (`crate::teams::bundle`), `POST /bundles/import` creates a new workspace (and its
//! `sub_workspaces`) from one. Export takes the admin token or the workspace's own token (its
//! own bundle only: nothing in it is beyond what its agent reads in /configs); import takes the
//! admin token. A bundle is hostile input: the whole of it is checked before the first write,
//! and should a write fail half-way, what was created is deleted again.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use super::Shim;
use super::auth::bearer;
use super::error::{ShimError, ShimResult};
use super::plugins::{check_track, install_record, installs_of, plugin_name, plugin_of};
use super::workspaces::generated_name;
use crate::resources::names::{AGENT_CARD_ANNOTATION, SOURCE_BUNDLE_ANNOTATION};
use crate::resources::{
    LocalObjectReference, PluginInstall, PluginInstallSpec, UpdatePolicy, Workspace,
};
use crate::teams::bundle::{self, Bundle, BundlePlugin, MAX_BUNDLE_BYTES, Planned};

/// Label value of `molecule.ai/created-by` on imported workspaces.
const CREATED_BY: &str = "bundle";

/// `GET /bundles/export/:id` → 200 the bundle (admin, or the workspace's own token).
pub async fn export(
    State(shim): State<Arc<Shim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ShimResult {
    let (_, ws) = shim
        .require_workspace(bearer(&headers).as_deref(), &id)
        .await?;
    let installs = installs_of(&shim, &ws).await?;
    let dir_files = match ws.spec.files.as_ref().and_then(|f| f.files_dir.clone()) {
        Some(dir) => {
            let root = shim.org_templates.root.clone();
            let inline_bytes: usize = ws
                .spec
                .files
                .as_ref()
                .map(|f| f.inline.values().map(String::len).sum())
                .unwrap_or(0);
            tokio::task::spawn_blocking(move || files_dir_text(&root, &dir, inline_bytes))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let mut b = bundle::export(&ws, &installs, super::view::agent_card(&ws), dir_files);
    let live = installs
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none());
    for (out, p) in b.plugins.iter_mut().zip(live) {
        out.name = plugin_of(p);
    }
    Ok(axum::Json(b).into_response())
}

/// The files of a `filesDir` as text, to travel inline in the bundle; `None` (the bundle keeps
/// the `files_dir` reference) when the dir cannot be read, holds a file that is not UTF-8, or
/// would not fit an imported record beside the `inline_bytes` of the spec's own files.
fn files_dir_text(
    root: &std::path::Path,
    dir: &str,
    inline_bytes: usize,
) -> Option<BTreeMap<String, String>> {
    use crate::backends::files_dir;
    let path = files_dir::resolve(root, dir).ok()?;
    let files = files_dir::read(&path, bundle::MAX_FILE_BYTES, bundle::MAX_FILES).ok()?;
    let total: usize = files.iter().map(|f| f.content.len()).sum();
    if total + inline_bytes > bundle::MAX_WORKSPACE_FILES_BYTES {
        return None;
    }
    files
        .into_iter()
        .map(|f| String::from_utf8(f.content).ok().map(|c| (f.path, c)))
        .collect()
}

/// A plugin of the bundle as a PluginInstall spec (without `workspaceRef`), and its name.
fn plugin_spec(p: &BundlePlugin) -> Result<(String, PluginInstallSpec), String> {
    let name = plugin_name(&p.source).map_err(|e| format!("plugin: {e}"))?;
    if let Some(t) = &p.track {
        check_track(t).map_err(|e| format!("plugin {name}: {e}"))?;
    }
    let update_policy = match p.update_policy.as_str() {
        "" | "manual" | "Manual" => UpdatePolicy::Manual,
        "auto" | "Auto" => UpdatePolicy::Auto,
        _ => {
            return Err(format!(
                "plugin {name}: `update_policy` must be manual or auto"
            ));
        }
    };
    if let Some(i) = &p.check_interval {
        let ok = i.len() >= 2
            && i.len() <= 8
            && i[..i.len() - 1].bytes().all(|b| b.is_ascii_digit())
            && matches!(i.as_bytes()[i.len() - 1], b's' | b'm' | b'h');
        if !ok {
            return Err(format!(
                "plugin {name}: `check_interval` must be a number of s, m or h (e.g. 15m)"
            ));
        }
    }
    let spec = PluginInstallSpec {
        workspace_ref: LocalObjectReference::default(),
        source: p.source.clone(),
        track: p.track.clone(),
        update_policy,
        allow_unpinned: p.allow_unpinned,
        check_interval: p.check_interval.clone(),
        reinstall_requested_at: None,
    };
    Ok((name, spec))
}

/// The checks of the plan that need the shim's rules: plugin sources and tracks (as `POST
/// /workspaces/:id/plugins`), no plugin twice, none on an external workspace, and the agent
/// card (as `/registry/register`).
fn check_plan(plan: &[Planned]) -> Result<Vec<Vec<(String, PluginInstallSpec)>>, ShimError> {
    let mut out = vec![];
    for p in plan {
        let bad = |why: String| ShimError::bad(format!("{}: {why}", p.at));
        let mut specs: Vec<(String, PluginInstallSpec)> = vec![];
        for plugin in &p.plugins {
            let (name, spec) = plugin_spec(plugin).map_err(bad)?;
            if specs.iter().any(|(n, _)| *n == name) {
                return Err(bad(format!("plugin {name} is listed twice")));
            }
            specs.push((name, spec));
        }
        if !specs.is_empty() && p.spec.runtime.as_deref() == Some("external") {
            return Err(bad(
                "an external workspace cannot have plugins (the agent runs elsewhere)".into(),
            ));
        }
        if let Some(card) = &p.agent_card {
            super::registry::check_card(card).map_err(|e| bad(e.to_string()))?;
        }
        out.push(specs);
    }
    Ok(out)
}

/// Reads and parses the body: 413 above [`MAX_BUNDLE_BYTES`], 400 for malformed JSON or a body
/// of the wrong shape (position only, never a value).
async fn read_bundle(body: Body) -> Result<Bundle, ShimError> {
    let bytes = axum::body::to_bytes(body, MAX_BUNDLE_BYTES)
        .await
        .map_err(|_| ShimError::TooLarge(MAX_BUNDLE_BYTES))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return Err(ShimError::bad("the bundle must be a JSON object")),
        Err(e) if e.is_eof() => {
            return Err(ShimError::bad("malformed JSON: the body ends early"));
        }
        Err(e) => {
            return Err(ShimError::bad(format!(
                "malformed JSON at line {} column {}",
                e.line(),
                e.column()
            )));
        }
    }
    serde_json::from_slice::<Bundle>(&bytes).map_err(|e| {
        ShimError::bad(format!(
            "the body is not a bundle: a field has the wrong type at line {} column {}",
            e.line(),
            e.column()
        ))
    })
}

/// What one import created so far, to delete again should a later write fail.
#[derive(Default)]
struct Created {
    workspaces: Vec<Workspace>,
    plugins: Vec<PluginInstall>,
}

impl Created {
    async fn roll_back(&self, shim: &Shim, ns: &str) {
        let plugins: Api<PluginInstall> = Api::namespaced(shim.client.clone(), ns);
        for p in self.plugins.iter().rev() {
            let _ = plugins
                .delete(&p.name_any(), &DeleteParams::background())
                .await;
        }
        let workspaces: Api<Workspace> = Api::namespaced(shim.client.clone(), ns);
        for w in self.workspaces.iter().rev() {
            let _ = workspaces
                .delete(&w.name_any(), &DeleteParams::background())
                .await;
        }
    }
}

/// The record of one planned workspace: a new generated name (the REST `name` is
/// `spec.displayName`, so the same name as the exported workspace never collides), its parent
/// by the name just created, the card and source id as annotations.
fn record_of(p: &Planned, parent: Option<&Workspace>) -> Workspace {
    let display = p.spec.display_name.clone().unwrap_or_default();
    let mut spec = p.spec.clone();
    spec.parent_ref = parent.map(|w| LocalObjectReference { name: w.name_any() });
    let mut ws = Workspace::new(&generated_name(&display), spec);
    let mut ann = BTreeMap::new();
    if let Some(card) = &p.agent_card {
        ann.insert(AGENT_CARD_ANNOTATION.to_string(), card.to_string());
    }
    if let Some(id) = &p.source_id {
        ann.insert(SOURCE_BUNDLE_ANNOTATION.to_string(), id.clone());
    }
    ws.metadata.annotations = (!ann.is_empty()).then_some(ann);
    ws.metadata.labels =
        Some([("molecule.ai/created-by".to_string(), CREATED_BY.to_string())].into());
    ws
}

/// Creates one workspace (a fresh name on the rare collision) and its PluginInstalls.
async fn create_one(
    shim: &Shim,
    ns: &str,
    p: &Planned,
    plugins: &[(String, PluginInstallSpec)],
    parent: Option<&Workspace>,
    created: &mut Created,
) -> Result<Workspace, ShimError> {
    let api: Api<Workspace> = Api::namespaced(shim.client.clone(), ns);
    let mut ws = None;
    for _ in 0..3 {
        match api
            .create(&PostParams::default(), &record_of(p, parent))
            .await
        {
            Ok(w) => {
                ws = Some(w);
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let ws = ws.ok_or_else(|| ShimError::Conflict("could not pick a free name; retry".into()))?;
    created.workspaces.push(ws.clone());
    let installs: Api<PluginInstall> = Api::namespaced(shim.client.clone(), ns);
    for (name, spec) in plugins {
        let record = install_record(&ws, name, spec.clone());
        let made = installs.create(&PostParams::default(), &record).await?;
        created.plugins.push(made);
    }
    Ok(ws)
}

/// `{workspace_id, name, status, k8s_name, children}` of the workspace at `i` of the plan.
fn result_tree(plan: &[Planned], made: &[Workspace], i: usize) -> Value {
    let children: Vec<Value> = (0..plan.len())
        .filter(|&c| plan[c].parent == Some(i))
        .map(|c| result_tree(plan, made, c))
        .collect();
    json!({
        "workspace_id": made[i].uid(),
        "name": plan[i].spec.display_name,
        "status": "provisioning",
        "k8s_name": made[i].name_any(),
        "children": children,
    })
}

/// `POST /bundles/import <bundle>` (admin) → 201 `{status: "provisioning", workspace_id, name,
/// namespace, k8s_name, children}`: new workspaces with new ids and the bundle's names, in the
/// namespace of workspaces created without a parent.
pub async fn import(State(shim): State<Arc<Shim>>, headers: HeaderMap, body: Body) -> ShimResult {
    shim.require_admin(bearer(&headers).as_deref())?;
    let b = read_bundle(body).await?;
    let plan = bundle::plan(&b).map_err(|e| ShimError::bad(e.to_string()))?;
    let plugins = check_plan(&plan)?;
    shim.cache.wait_ready().await?;
    let ns = shim.namespace.clone();
    let mut created = Created::default();
    for (i, p) in plan.iter().enumerate() {
        let parent = p.parent.map(|j| created.workspaces[j].clone());
        if let Err(e) = create_one(&shim, &ns, p, &plugins[i], parent.as_ref(), &mut created).await
        {
            created.roll_back(&shim, &ns).await;
            return Err(e);
        }
    }
    let made = created.workspaces;
    if let Some(last) = made.last() {
        shim.cache
            .wait_for_version(
                &last.uid().unwrap_or_default(),
                last.resource_version().as_deref(),
            )
            .await;
    }
    for w in &made {
        shim.audit
            .record(
                "workspace.created",
                &ns,
                &w.name_any(),
                json!({"uid": w.uid(), "via": "bundle", "source_bundle_id": plan[0].source_id}),
            )
            .await;
    }
    let mut out = result_tree(&plan, &made, 0);
    out["namespace"] = json!(ns);
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}
