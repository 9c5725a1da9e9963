//! The drift queue (ADR 0016): every tracked, installed PluginInstall is re-resolved
//! upstream once its check interval elapsed (1 h by default): git sources with a `tag:`,
//! `tag:latest` or `branch:` track, and `local://` sources (whose "sha" is the digest of the
//! registry dir's content, so an edit there is queued like an upstream commit). A `sha:` pin
//! and an unpinned git source never drift. A new sha creates exactly one
//! `PluginUpdate` named `<install>-<sha12>`: the name is the dedup key, so a second pass, a
//! second replica or a restart never queues it twice, and a dismissed update is never proposed
//! again (its record stays). `updatePolicy: Auto` creates it already approved.
//!
//! A pass resolves each distinct (source, track) once, several at a time, with `git ls-remote`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::plan;
use crate::plugins::{Fetcher, Origin, Refusal};
use crate::resources::{
    LocalObjectReference, PluginDecision, PluginInstall, PluginUpdate, PluginUpdateSpec,
    UpdatePolicy,
};
use crate::shutdown::Shutdown;

/// How many upstreams are resolved at once.
pub const CONCURRENCY: usize = 16;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Tracked installs looked at.
    pub checked: usize,
    /// Distinct upstreams resolved.
    pub resolved: usize,
    /// PluginUpdates created.
    pub created: usize,
    /// Upstreams that could not be resolved.
    pub failed: usize,
}

/// Whether an install is tracked and installed from its current spec: (origin, installed sha).
pub fn tracked(pi: &PluginInstall) -> Option<(Origin, String)> {
    if pi.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let origin = Origin::parse(
        &pi.spec.source,
        pi.spec.track.as_deref(),
        pi.spec.allow_unpinned,
    )
    .and_then(|o| o.requested(pi.spec.reinstall_requested_at.as_deref()))
    .ok()?;
    if origin.source.is_git() && !origin.track.is_tracked() {
        return None;
    }
    let st = pi.status.as_ref()?;
    if st.installed_from.as_deref() != Some(origin.key().as_str()) {
        return None;
    }
    Some((origin, st.installed_sha.clone()?))
}

/// The PluginUpdate a detected change becomes.
pub fn proposal(
    pi: &PluginInstall,
    from: &str,
    to: &str,
    ref_name: Option<String>,
    tier: &str,
) -> PluginUpdate {
    let name = plan::update_name(&pi.name_any(), to);
    let mut u = PluginUpdate::new(
        &name,
        PluginUpdateSpec {
            plugin_install_ref: LocalObjectReference {
                name: pi.name_any(),
            },
            from_sha: from.to_string(),
            to_sha: to.to_string(),
            decision: if pi.spec.update_policy == UpdatePolicy::Auto {
                PluginDecision::Approved
            } else {
                PluginDecision::Pending
            },
            plugin: pi.status.as_ref().and_then(|s| s.plugin_name.clone()),
            workspace: Some(pi.spec.workspace_ref.name.clone()),
            tier: Some(tier.to_string()),
            source: Some(pi.spec.source.clone()),
            ref_name,
        },
    );
    u.metadata.namespace = pi.namespace();
    u.metadata.owner_references = pi.controller_owner_ref(&()).map(|o| vec![o]);
    let install = pi.name_any();
    if install.len() <= 63 {
        u.metadata.labels = Some([(super::INSTALL_LABEL.to_string(), install)].into());
    }
    if pi.spec.update_policy == UpdatePolicy::Auto {
        u.metadata.annotations = Some(
            [(
                "molecule.ai/approved-by".to_string(),
                "updatePolicy: Auto".to_string(),
            )]
            .into(),
        );
    }
    u
}

/// One pass over `installs`: resolves every distinct upstream, creates the PluginUpdates that
/// do not exist yet and records the newest upstream sha in status. `tier` gives the update tier
/// of a workspace (namespace, name).
pub async fn pass(
    client: &Client,
    fetcher: &Fetcher,
    installs: &[Arc<PluginInstall>],
    tier: impl Fn(&str, &str) -> &'static str,
    concurrency: usize,
) -> Result<PassReport, kube::Error> {
    let mut report = PassReport::default();
    let mut upstreams: BTreeMap<String, Origin> = BTreeMap::new();
    let mut work = vec![];
    for pi in installs {
        if let Some((origin, installed)) = tracked(pi) {
            report.checked += 1;
            upstreams.insert(origin.key(), origin.clone());
            work.push((pi.clone(), origin.key(), installed));
        }
    }
    let resolved: HashMap<String, Result<crate::plugins::git::Resolved, Refusal>> =
        futures::stream::iter(upstreams)
            .map(|(key, origin)| async move { (key, fetcher.resolve(&origin).await) })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    report.resolved = resolved.values().filter(|r| r.is_ok()).count();
    report.failed = resolved.len() - report.resolved;
    for (key, r) in &resolved {
        if let Err(e) = r {
            tracing::warn!(upstream = %key, reason = e.reason, message = %e.message, "drift check could not resolve the upstream");
        }
    }
    for (pi, key, installed) in work {
        let Some(Ok(up)) = resolved.get(&key) else {
            continue;
        };
        let ns = pi.namespace().unwrap_or_default();
        if up.sha != installed {
            let u = proposal(
                &pi,
                &installed,
                &up.sha,
                up.ref_name.clone(),
                tier(&ns, &pi.spec.workspace_ref.name),
            );
            let api: Api<PluginUpdate> = Api::namespaced(client.clone(), &ns);
            match api.create(&PostParams::default(), &u).await {
                Ok(_) => {
                    report.created += 1;
                    tracing::info!(event = "plugin.drift", plugininstall = %pi.name_any(), from = %installed, to = %up.sha, decision = ?u.spec.decision, "upstream moved: queued a PluginUpdate");
                }
                // Already queued (or dismissed): never a duplicate.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        if pi.status.as_ref().and_then(|s| s.upstream_sha.as_deref()) != Some(up.sha.as_str()) {
            let api: Api<PluginInstall> = Api::namespaced(client.clone(), &ns);
            let patch = json!({"status": {"upstreamSha": up.sha}});
            if let Err(e) = api
                .patch_status(
                    &pi.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                tracing::debug!(error = %e, "could not record the upstream sha");
            }
        }
    }
    Ok(report)
}

/// Runs passes until shutdown: every `drift_tick`, the installs whose interval elapsed.
pub async fn run(ctx: Arc<super::Context>, shutdown: Shutdown) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(ctx.settings.drift_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let now = Instant::now();
        let all = ctx.installs.state();
        let live: std::collections::HashSet<String> = all.iter().filter_map(|p| p.uid()).collect();
        last.retain(|uid, _| live.contains(uid));
        let due: Vec<Arc<PluginInstall>> = all
            .into_iter()
            .filter(|p| tracked(p).is_some())
            .filter(|p| {
                let every = plan::check_interval(p.spec.check_interval.as_deref())
                    .unwrap_or(plan::DEFAULT_CHECK_INTERVAL);
                p.uid()
                    .and_then(|u| last.get(&u))
                    .is_none_or(|at| now.duration_since(*at) >= every)
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        let t = Instant::now();
        let workspaces = ctx.workspaces.clone();
        let tier = move |ns: &str, name: &str| {
            workspaces
                .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                .map(|w| plan::tier_of(&w))
                .unwrap_or(plan::PRODUCTION)
        };
        match pass(&ctx.client, &ctx.fetcher, &due, tier, CONCURRENCY).await {
            Ok(r) => {
                for p in &due {
                    if let Some(uid) = p.uid() {
                        last.insert(uid, now);
                    }
                }
                ctx.metrics.observe(
                    "molecule_plugin_drift_pass_seconds",
                    &[],
                    t.elapsed().as_secs_f64(),
                );
                if r.created > 0 || r.failed > 0 {
                    tracing::info!(
                        checked = r.checked,
                        resolved = r.resolved,
                        created = r.created,
                        failed = r.failed,
                        ms = t.elapsed().as_millis() as u64,
                        "drift pass"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "drift pass failed; will retry"),
        }
    }
}
