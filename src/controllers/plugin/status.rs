//! Status, Events and queued-update phases of the PluginInstall controller (the report step).

use std::collections::HashMap;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use super::plan::{self, UpdateView};
use super::{Context, PluginError};
use crate::resources::{
    Condition, ConditionStatus, PluginInstall, PluginInstallStatus, PluginUpdate,
};

/// Phases (and messages) of queued updates that differ from what `plan::update_phase` gives:
/// WaitingForCanary, Applying, Failed with a message.
pub(super) type Overrides = HashMap<String, (&'static str, Option<String>)>;

/// Whether the Ready condition is True.
pub(super) fn ready_true(s: &PluginInstallStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
}

/// Sets the Ready condition of `next`.
pub(super) fn set_ready(
    next: &mut PluginInstallStatus,
    generation: i64,
    now: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) {
    let mut c = Condition::new("Ready", status, reason, message);
    c.observed_generation = Some(generation);
    Condition::upsert(&mut next.conditions, c, now);
}

/// Reason and message of the Ready condition.
pub(super) fn ready_reason(s: &PluginInstallStatus) -> Option<(String, String)> {
    s.conditions.iter().find(|c| c.type_ == "Ready").map(|c| {
        (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    })
}

/// Writes `next` unless the record already shows it.
pub(super) async fn write_status(
    ctx: &Context,
    pi: &PluginInstall,
    next: &PluginInstallStatus,
) -> Result<(), PluginError> {
    let before = pi.status.clone().unwrap_or_default();
    ctx.report.status(pi, &before, next, None).await?;
    Ok(())
}

/// Publishes an Event about the record (in the background).
pub(super) fn event(
    ctx: &Context,
    pi: &PluginInstall,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.report.event(pi, type_, reason, note);
}

/// Brings every queued update of this install to the phase `plan::update_phase` gives,
/// except those in `overrides` (WaitingForCanary, Failed with a message).
pub(super) async fn sync_updates(
    ctx: &Context,
    pi: &PluginInstall,
    installed: Option<&str>,
    overrides: &Overrides,
    now: &str,
) -> Result<(), PluginError> {
    let ns = pi.namespace().unwrap_or_default();
    let name = pi.name_any();
    let api: Api<PluginUpdate> = Api::namespaced(ctx.client.clone(), &ns);
    for u in ctx.updates.state() {
        if u.namespace().as_deref() != Some(ns.as_str())
            || u.spec.plugin_install_ref.name != name
            || u.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let view = UpdateView::of(&u);
        let (phase, message) = overrides
            .get(&view.name)
            .cloned()
            .unwrap_or_else(|| plan::update_phase(&view, installed));
        let st = u.status.clone().unwrap_or_default();
        let generation = u.metadata.generation;
        if st.phase.as_deref() == Some(phase)
            && st.message == message
            && st.observed_generation == generation
        {
            continue;
        }
        let applied_at = if phase == "Applied" {
            st.applied_at.clone().or_else(|| Some(now.to_string()))
        } else {
            None
        };
        let patch = json!({"status": {"phase": phase, "message": message, "appliedAt": applied_at, "observedGeneration": generation}});
        match api
            .patch_status(&view.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                if st.phase.as_deref() != Some(phase) {
                    tracing::info!(pluginupdate = %view.name, phase, "plugin update phase");
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patch_clears_unset_fields_and_leaves_upstream_sha() {
        let s = PluginInstallStatus {
            installed_sha: Some("a".into()),
            upstream_sha: Some("b".into()),
            ..Default::default()
        };
        let p = crate::controllers::report::owned_fields(&s, super::super::STATUS_FIELDS);
        assert_eq!(p["installedSha"], "a");
        assert!(p["pending"].is_null());
        assert!(p.as_object().unwrap().contains_key("pending"));
        assert!(!p.as_object().unwrap().contains_key("upstreamSha"));
    }
}
