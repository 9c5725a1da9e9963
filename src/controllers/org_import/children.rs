//! The act step of an OrgImport pass: what the namespace holds now, and applying and pruning
//! the children (Workspaces, their env Secrets and PluginInstalls) with server-side apply.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use super::build::{self, Child, Existing, TREE_PATH};
use super::{APPLY_CONCURRENCY, Context, FIELD_MANAGER, OrgImportError, owned_by};
use crate::resources::{OrgImportCounts, Workspace};

/// How applying one child went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applied {
    Created,
    Updated,
    Unchanged,
}

async fn apply_child(
    ctx: &Context,
    ns: &str,
    child: &Child,
    before: Option<&Workspace>,
    secret_before: Option<&Secret>,
    plugins_before: &[crate::resources::PluginInstall],
) -> Result<Applied, OrgImportError> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut secret_changed = false;
    if let Some(secret) = &child.secret {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let after = api
            .patch(&child.secret_name(), &pp, &Patch::Apply(secret))
            .await?;
        secret_changed = secret_before.is_none_or(|b| b.data != after.data);
    }
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), ns);
    let after = api
        .patch(&child.name, &pp, &Patch::Apply(&child.workspace))
        .await?;
    apply_plugins(ctx, ns, child, &after, plugins_before).await?;
    Ok(match before {
        None => Applied::Created,
        Some(b)
            if b.metadata.generation != after.metadata.generation
                || b.metadata.labels != after.metadata.labels
                || b.metadata.annotations != after.metadata.annotations
                || secret_changed =>
        {
            Applied::Updated
        }
        Some(_) => Applied::Unchanged,
    })
}

/// Label on the PluginInstalls an import creates for its children's `plugins:` (its value is
/// the plugin name), so that a plugin dropped from the template is uninstalled again.
pub const ORG_PLUGIN_LABEL: &str = crate::resources::names::ORG_PLUGIN_LABEL;

/// Makes the child's PluginInstalls match its `plugins:` list (P-integration of issue 5): one
/// record per plugin, owned by the Workspace (it goes with it), applied idempotently; records
/// this import made for plugins no longer listed are deleted. Records made by hand or through
/// the REST shim are never touched. A plugin name the plugin module refuses is skipped with a
/// warning (the template listing shows the same refusal on the record when created by hand).
async fn apply_plugins(
    ctx: &Context,
    ns: &str,
    child: &Child,
    ws: &Workspace,
    before: &[crate::resources::PluginInstall],
) -> Result<(), OrgImportError> {
    use crate::resources::PluginInstall;
    let api: Api<PluginInstall> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for plugin in &child.plugins {
        let mut pi = match crate::controllers::plugin::install_for_workspace(ws, plugin, None, None)
        {
            Ok(pi) => pi,
            Err(refusal) => {
                tracing::warn!(workspace = %child.name, plugin = %plugin, reason = %refusal, "skipping a plugin the template lists");
                continue;
            }
        };
        pi.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(ORG_PLUGIN_LABEL.into(), plugin.clone());
        pi.metadata.managed_fields = None;
        let name = pi.name_any();
        api.patch(&name, &pp, &Patch::Apply(&pi)).await?;
    }
    for pi in before {
        let listed = pi
            .labels()
            .get(ORG_PLUGIN_LABEL)
            .is_some_and(|p| child.plugins.contains(p));
        if !listed {
            match api
                .delete(&pi.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The namespace as this pass found it.
pub(super) struct Observed {
    workspaces: BTreeMap<String, Workspace>,
    secrets: BTreeMap<String, Secret>,
    /// Every Workspace, with whether this import owns it.
    pub(super) existing: Vec<Existing>,
    /// PluginInstalls made from templates' `plugins:` lists, by workspace name.
    plugins: BTreeMap<String, Vec<crate::resources::PluginInstall>>,
}

pub(super) async fn observe(
    ctx: &Context,
    ns: &str,
    uid: &str,
) -> Result<Observed, OrgImportError> {
    let ws_api: Api<Workspace> = Api::namespaced(ctx.client.clone(), ns);
    let workspaces: BTreeMap<String, Workspace> = ws_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|w| (w.name_any(), w))
        .collect();
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: BTreeMap<String, Secret> = secret_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
    let existing = workspaces
        .values()
        .map(|w| Existing {
            name: w.name_any(),
            owned: owned_by(&w.metadata, uid),
            tree_path: w.annotations().get(TREE_PATH).cloned(),
        })
        .collect();
    let pi_api: Api<crate::resources::PluginInstall> = Api::namespaced(ctx.client.clone(), ns);
    let mut plugins: BTreeMap<String, Vec<crate::resources::PluginInstall>> = BTreeMap::new();
    for pi in pi_api
        .list(&ListParams::default().labels(ORG_PLUGIN_LABEL))
        .await?
        .items
    {
        plugins
            .entry(pi.spec.workspace_ref.name.clone())
            .or_default()
            .push(pi);
    }
    Ok(Observed {
        workspaces,
        secrets,
        existing,
        plugins,
    })
}

/// Names the children need that objects this import does not own already use.
pub(super) fn clashes(children: &[Child], seen: &Observed, uid: &str) -> Vec<String> {
    let mut out = build::conflicts(children, &seen.existing);
    out.extend(children.iter().filter_map(|c| {
        let s = seen.secrets.get(&c.secret_name())?;
        (c.secret.is_some() && !owned_by(&s.metadata, uid)).then(|| c.secret_name())
    }));
    out
}

/// Applies every child, `APPLY_CONCURRENCY` at a time; counts what happened.
pub(super) async fn apply_children(
    ctx: &Context,
    ns: &str,
    children: &[Child],
    seen: &Observed,
) -> Result<OrgImportCounts, OrgImportError> {
    // (Collected first: a stream closure over borrowed children trips the Send check.)
    let applies: Vec<_> = children
        .iter()
        .map(|c| {
            apply_child(
                ctx,
                ns,
                c,
                seen.workspaces.get(&c.name),
                seen.secrets.get(&c.secret_name()),
                seen.plugins.get(&c.name).map_or(&[][..], Vec::as_slice),
            )
        })
        .collect();
    let results: Vec<Result<Applied, OrgImportError>> = futures::stream::iter(applies)
        .buffered(APPLY_CONCURRENCY)
        .collect()
        .await;
    let mut counts = OrgImportCounts {
        desired: children.len() as i64,
        ..Default::default()
    };
    for r in results {
        match r? {
            Applied::Created => counts.created += 1,
            Applied::Updated => counts.updated += 1,
            Applied::Unchanged => counts.unchanged += 1,
        }
    }
    Ok(counts)
}

/// Deletes `prune.delete`, and every owned env Secret that no desired or kept child refers to.
/// Returns how many Workspaces were deleted.
pub(super) async fn prune_children(
    ctx: &Context,
    ns: &str,
    uid: &str,
    children: &[Child],
    prune: &build::Prune,
    seen: &Observed,
) -> Result<i64, OrgImportError> {
    let ws_api: Api<Workspace> = Api::namespaced(ctx.client.clone(), ns);
    let mut pruned = 0;
    for name in &prune.delete {
        // Already going (its finalizer still runs): deleted by an earlier pass, not again, and
        // not counted again (a pass that only sees it go is a quiet one).
        if seen
            .workspaces
            .get(name)
            .is_some_and(|w| w.metadata.deletion_timestamp.is_some())
        {
            continue;
        }
        match ws_api.delete(name, &DeleteParams::background()).await {
            Ok(_) => pruned += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let wanted: BTreeSet<String> = children
        .iter()
        .filter(|c| c.secret.is_some())
        .map(Child::secret_name)
        .chain(prune.keep.iter().map(|k| build::env_secret_name(k)))
        .collect();
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for (name, s) in &seen.secrets {
        if build::is_env_secret(name) && owned_by(&s.metadata, uid) && !wanted.contains(name) {
            match secret_api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(pruned)
}
