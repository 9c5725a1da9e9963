//! The report step of an OrgImport pass: status (Ready and PolicyRefused conditions, counts,
//! inventory), Events and audit rows (ADR 0010, 0039).

use std::collections::BTreeSet;
use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::build::{self, Child};
use super::children::Observed;
use super::{Context, OrgImportError, POLICY_CONDITION, POLICY_MESSAGE_ITEMS};
use crate::orgtemplate::policy::{self, Refusal};
use crate::orgtemplate::{self, Plan};
use crate::resources::{
    Condition, ConditionStatus, OrgImport, OrgImportCounts, OrgImportMode, OrgImportStatus,
    ResolvedRevision,
};

/// What a pass is about, for status, Events and audit rows.
pub(super) struct Pass<'a> {
    pub(super) ctx: &'a Context,
    pub(super) org: &'a OrgImport,
    pub(super) ns: String,
    pub(super) generation: i64,
    pub(super) prev: OrgImportStatus,
    /// A new import (spec or template result changed): audit rows are recorded.
    pub(super) is_new: bool,
    started: Instant,
    pub(super) template_name: String,
    /// Digest of the planned children, once the template loaded.
    pub(super) digest: Option<String>,
    /// Workspaces the template policy refused (ADR 0039).
    pub(super) refusals: Vec<Refusal>,
}

impl<'a> Pass<'a> {
    pub(super) fn new(ctx: &'a Context, org: &'a OrgImport) -> Self {
        Pass {
            ctx,
            org,
            ns: org.namespace().unwrap_or_else(|| "default".into()),
            generation: org.metadata.generation.unwrap_or(1),
            prev: org.status.clone().unwrap_or_default(),
            is_new: false,
            started: Instant::now(),
            template_name: String::new(),
            digest: None,
            refusals: vec![],
        }
    }
}

impl Pass<'_> {
    pub(super) fn mode(&self) -> &'static str {
        match self.org.spec.mode {
            OrgImportMode::Merge => "merge",
            OrgImportMode::Reconcile => "reconcile",
        }
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) async fn audit(&self, event: &str, data: Value) {
        self.ctx
            .audit
            .record(event, &self.ns, &self.org.name_any(), data)
            .await;
    }

    pub(super) async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx.report.event(self.org, type_, reason, note);
    }

    /// Writes `next` unless nothing changed.
    pub(super) async fn write(&self, next: &OrgImportStatus) -> Result<(), OrgImportError> {
        self.ctx
            .report
            .status(self.org, &self.prev, next, None)
            .await?;
        Ok(())
    }

    /// Ready=False with `reason`; an Event when the reason or message changed; the failed row
    /// when this pass recorded a started row. Children are left as they are.
    pub(super) async fn fail(
        &self,
        reason: &str,
        message: String,
        missing_env: Vec<String>,
        plan: Option<&Plan>,
    ) -> Result<(), OrgImportError> {
        let mut next = self.prev.clone();
        next.observed_generation = Some(self.generation);
        next.import_in_progress = None;
        next.missing_env = missing_env;
        if let Some(d) = &self.digest {
            next.plan_digest = Some(d.clone());
        }
        if let Some(p) = plan {
            next.warnings = p.warnings.iter().take(20).cloned().collect();
            next.channels_skipped = channels_skipped(p);
            next.revisions = revisions(p);
        }
        let changed = ready(&self.prev).is_none_or(|c| {
            c.reason.as_deref() != Some(reason) || c.message.as_deref() != Some(message.as_str())
        });
        set_ready(
            &mut next,
            ConditionStatus::False,
            reason,
            &message,
            self.generation,
        );
        self.set_policy(&mut next);
        self.write(&next).await?;
        self.policy_event(&next).await;
        if changed {
            tracing::info!(org = %self.org.name_any(), reason, "org import failed");
            self.event(EventType::Warning, reason, message.clone())
                .await;
        }
        if self.is_new {
            self.audit(
                "org.import.failed",
                json!({"name": self.template_name, "mode": self.mode(), "error": message, "reason": reason, "duration_ms": self.ms()}),
            )
            .await;
        }
        Ok(())
    }
}

impl Pass<'_> {
    /// The `PolicyRefused` condition: True naming every refused workspace and field, or gone
    /// when nothing was refused.
    fn set_policy(&self, next: &mut OrgImportStatus) {
        if self.refusals.is_empty() {
            next.conditions.retain(|c| c.type_ != POLICY_CONDITION);
            return;
        }
        let (reason, message) = policy_summary(&self.refusals);
        let mut c = Condition::new(POLICY_CONDITION, ConditionStatus::True, reason, message);
        c.observed_generation = Some(self.generation);
        Condition::upsert(&mut next.conditions, c, &crate::util::now_rfc3339());
    }

    /// Names of the refused workspaces (ADR 0039).
    pub(super) fn held(&self) -> BTreeSet<String> {
        self.refusals
            .iter()
            .map(|r| orgtemplate::workspace_name(&self.org.name_any(), &r.key))
            .collect()
    }

    /// A Warning Event when the refusals changed.
    async fn policy_event(&self, next: &OrgImportStatus) {
        let msg = |s: &OrgImportStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == POLICY_CONDITION)
                .and_then(|c| c.message.clone())
        };
        let now = msg(next);
        if let Some(m) = now.clone()
            && msg(&self.prev) != now
        {
            tracing::info!(org = %self.org.name_any(), refused = self.refusals.len(), "template policy refused workspaces");
            self.event(EventType::Warning, POLICY_CONDITION, m).await;
        }
    }
}

/// Reason and message of the `PolicyRefused` condition: the field's reason when every direct
/// refusal is about one field, else `PolicyRefused`; the direct refusals one by one, then how
/// many workspaces went with them.
pub fn policy_summary(refusals: &[Refusal]) -> (&'static str, String) {
    let direct: Vec<&Refusal> = refusals
        .iter()
        .filter(|r| r.field != policy::Field::Parent)
        .collect();
    let reason = match direct.first() {
        Some(first) if direct.iter().all(|r| r.field == first.field) => first.field.reason(),
        _ => POLICY_CONDITION,
    };
    let mut parts: Vec<String> = direct
        .iter()
        .take(POLICY_MESSAGE_ITEMS)
        .map(|r| r.message.clone())
        .collect();
    if direct.len() > POLICY_MESSAGE_ITEMS {
        parts.push(format!("and {} more", direct.len() - POLICY_MESSAGE_ITEMS));
    }
    let under = refusals.len() - direct.len();
    let mut message = parts.join("; ");
    if under > 0 {
        message.push_str(&format!(
            " ({under} workspaces under them not created either)"
        ));
    }
    (reason, message)
}

fn ready(s: &OrgImportStatus) -> Option<&Condition> {
    s.conditions.iter().find(|c| c.type_ == "Ready")
}

fn set_ready(
    s: &mut OrgImportStatus,
    st: ConditionStatus,
    reason: &str,
    msg: &str,
    generation: i64,
) {
    let mut c = Condition::new("Ready", st, reason, msg);
    c.observed_generation = Some(generation);
    Condition::upsert(&mut s.conditions, c, &crate::util::now_rfc3339());
}

fn revisions(p: &Plan) -> Vec<ResolvedRevision> {
    p.revisions
        .iter()
        .map(|r| ResolvedRevision {
            repo: r.repo.clone(),
            git_ref: r.git_ref.clone(),
            sha: r.sha.clone(),
        })
        .collect()
}

impl Pass<'_> {
    pub(super) fn started_data(&self, plan: &Plan, resync: bool) -> Value {
        let mut d = json!({"name": plan.name, "mode": self.mode(), "source": org_source_kind(self.org), "desired": plan.workspaces.len(), "skipped": plan.skipped});
        if resync {
            d["resync"] = json!(true);
        }
        d
    }

    /// Writes the successful status; the Imported Event and the completed row when this was an
    /// import (or a resync that changed something, which then gets its started row too).
    pub(super) async fn finish(
        &self,
        plan: &Plan,
        children: &[Child],
        counts: OrgImportCounts,
        prune: &build::Prune,
        seen: &Observed,
    ) -> Result<(), OrgImportError> {
        let mut next = self.prev.clone();
        next.observed_generation = Some(self.generation);
        next.import_in_progress = None;
        next.plan_digest = self.digest.clone();
        next.missing_env = vec![];
        next.revisions = revisions(plan);
        next.warnings = plan.warnings.iter().take(20).cloned().collect();
        next.channels_skipped = channels_skipped(plan);
        next.inventory = build::inventory(children, &seen.existing, &prune.keep);
        let changed = counts.created + counts.updated + counts.pruned > 0;
        let was_ready = ready(&self.prev).is_some_and(|c| c.status == ConditionStatus::True);
        // Counts are those of the last pass that did something; a quiet resync keeps them.
        if self.is_new || changed || self.prev.counts.is_none() {
            next.counts = Some(counts.clone());
        }
        let shown = next.counts.clone().unwrap_or_else(|| counts.clone());
        // Refused workspaces kept from an earlier pass are counted as refused, not as kept.
        let held = self.held();
        let kept = if prune.guarded {
            0
        } else {
            prune.keep.iter().filter(|n| !held.contains(*n)).count()
        };
        set_ready(
            &mut next,
            ConditionStatus::True,
            "Imported",
            &build::summary(&shown, kept),
            self.generation,
        );
        self.set_policy(&mut next);
        self.write(&next).await?;
        self.policy_event(&next).await;
        if self.prev.warnings != next.warnings && !next.warnings.is_empty() {
            self.event(EventType::Warning, "UnknownKeys", next.warnings.join("; "))
                .await;
        }
        if self.is_new || changed || !was_ready {
            let summary = build::summary(&counts, kept);
            self.event(EventType::Normal, "Imported", summary.clone())
                .await;
            if !self.is_new {
                // A resync that changed something (a child deleted by hand, an env file
                // edited) is an import too: record the pair.
                self.audit("org.import.started", self.started_data(plan, true))
                    .await;
            }
            let mut data = json!({"name": plan.name, "mode": self.mode(), "desired": counts.desired, "created": counts.created, "updated": counts.updated, "unchanged": counts.unchanged, "skipped": counts.skipped, "removed": counts.pruned, "duration_ms": self.ms()});
            if counts.refused > 0 {
                data["refused"] = json!(counts.refused);
            }
            self.audit("org.import.completed", data).await;
            tracing::info!(org = %self.org.name_any(), summary = %summary, "org imported");
        }
        Ok(())
    }
}

fn org_source_kind(org: &OrgImport) -> &'static str {
    build::source_of(&org.spec)
        .map(|s| s.kind())
        .unwrap_or("invalid")
}

/// Every skipped channel of the plan (ADR 0047), at most 100.
fn channels_skipped(plan: &Plan) -> Vec<String> {
    plan.workspaces
        .iter()
        .flat_map(|w| w.channels_skipped.iter().cloned())
        .take(100)
        .collect()
}
