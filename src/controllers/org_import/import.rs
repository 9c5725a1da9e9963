//! One pass of the OrgImport controller as named steps (ADR 0010):
//!
//! - **validate**: the source and the policy overrides of the spec;
//! - **plan**: load and plan the template (blocking I/O on a worker thread), leave out what the
//!   template policy refuses (ADR 0039), build the children; mark the pass as begun;
//! - **validate**: the env preflight, then the names the children need (after **observe**ing
//!   the namespace);
//! - **act**: apply every child, prune (mode `reconcile`);
//! - **report**: status, Events, audit rows (`Pass::finish`).
//!
//! A step that ends the pass returns a [`Stop`]; a refusal has been reported by `Pass::fail`.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::build::{self, Child};
use super::children::{self, Observed};
use super::pass::Pass;
use super::{OrgImportError, global_env};
use crate::orgtemplate::policy::{self, Policy};
use crate::orgtemplate::{self, Plan, Source};
use crate::resources::{OrgImport, OrgImportCounts, OrgImportMode};

/// How long a MissingEnv import waits before it looks again.
const MISSING_ENV_RETRY: Duration = Duration::from_secs(60);

/// Why a pass ends before its last step.
pub(super) enum Stop {
    /// Nothing more to do in this pass (a refusal is already reported).
    Done(Action),
    /// For the error policy.
    Failed(OrgImportError),
}

impl From<OrgImportError> for Stop {
    fn from(e: OrgImportError) -> Self {
        Stop::Failed(e)
    }
}

impl From<kube::Error> for Stop {
    fn from(e: kube::Error) -> Self {
        Stop::Failed(e.into())
    }
}

/// A planned template and the children it makes.
struct Planned {
    plan: Plan,
    children: Vec<Child>,
}

/// One pass over one record (read fresh by `reconcile`).
pub(super) async fn import(
    org: &OrgImport,
    ctx: &super::Context,
) -> Result<Action, OrgImportError> {
    if org.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children.
        return Ok(Action::await_change());
    }
    let uid = org.uid().ok_or(OrgImportError::NoUid)?;
    let mut pass = Pass::new(ctx, org);
    match run(&mut pass, &uid).await {
        Ok(action) | Err(Stop::Done(action)) => Ok(action),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// The steps, in order; each either hands its result on or ends the pass.
async fn run(pass: &mut Pass<'_>, uid: &str) -> Result<Action, Stop> {
    let (source, policy) = validate_spec(pass).await?;
    let planned = plan(pass, source, policy).await?;
    begin(pass, &planned).await?;
    preflight(pass, &planned.plan).await?;
    let seen = children::observe(pass.ctx, &pass.ns, uid).await?;
    check_names(pass, &planned, &seen, uid).await?;
    let mut counts = apply(pass, &planned, &seen).await?;
    let prune = prune(pass, &planned.children, &seen, uid, &mut counts).await?;
    pass.finish(&planned.plan, &planned.children, counts, &prune, &seen)
        .await?;
    Ok(if inline(pass.org) {
        Action::await_change()
    } else {
        Action::requeue(pass.ctx.settings.resync)
    })
}

/// An inline template changes only with the record; dir and git sources are read again after
/// a while (files do not trigger watches).
fn inline(org: &OrgImport) -> bool {
    org.spec.source.template.is_some()
}

/// The next pass after a refusal the template or the namespace may lift.
fn retry(org: &OrgImport) -> Action {
    if inline(org) {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(60))
    }
}

/// Reports `reason` (Ready False) and ends the pass with `action`.
async fn refuse(
    pass: &Pass<'_>,
    reason: &str,
    message: String,
    missing_env: Vec<String>,
    plan: Option<&Plan>,
    action: Action,
) -> Stop {
    match pass.fail(reason, message, missing_env, plan).await {
        Ok(()) => Stop::Done(action),
        Err(e) => Stop::Failed(e),
    }
}

/// Validate: where the template comes from, and the record's policy overrides.
async fn validate_spec(pass: &Pass<'_>) -> Result<(Source, Policy), Stop> {
    let org = pass.org;
    let source = match build::source_of(&org.spec) {
        Ok(s) => s,
        Err(msg) => {
            let wait = Action::await_change();
            return Err(refuse(pass, "InvalidSource", msg, vec![], None, wait).await);
        }
    };
    match pass.ctx.settings.policy.with(&overrides(org)) {
        Ok(p) => Ok((source, p)),
        Err(e) => {
            let msg = format!("spec.policy: {e}");
            let wait = Action::await_change();
            Err(refuse(pass, "InvalidPolicy", msg, vec![], None, wait).await)
        }
    }
}

/// The record's `spec.policy` as overrides of the operator defaults.
fn overrides(org: &OrgImport) -> policy::Overrides {
    let p = org.spec.policy.clone().unwrap_or_default();
    policy::Overrides {
        max_tier: p.max_tier,
        git_max_tier: p.git_max_tier,
        workspace_dir_roots: p.workspace_dir_roots,
        git_workspace_dir_roots: p.git_workspace_dir_roots,
    }
}

/// Plan: load and plan the template (reads files, may run git) with the policy check (it
/// resolves host paths: blocking I/O, on a worker thread). Refused workspaces (and their
/// subtrees) are left out of the plan; the rest of the org is imported (ADR 0039).
async fn plan(pass: &mut Pass<'_>, source: Source, policy: Policy) -> Result<Planned, Stop> {
    let options = pass.ctx.settings.options.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        orgtemplate::load_plan(&options, &source).map(|plan| {
            let refusals = policy::check(&policy, &plan, |p| std::fs::canonicalize(p).ok());
            (plan, refusals)
        })
    })
    .await
    .map_err(|_| OrgImportError::Interrupted)?;
    let mut plan = match loaded {
        Ok((p, refusals)) => {
            pass.refusals = refusals;
            p
        }
        Err(e) => {
            tracing::info!(org = %pass.org.name_any(), category = e.category(), error = %e, "org template could not be loaded");
            let transient = e.is_transient();
            let stop = refuse(
                pass,
                e.category(),
                e.to_string(),
                vec![],
                None,
                retry(pass.org),
            );
            return Err(match stop.await {
                Stop::Done(_) if transient => Stop::Failed(e.into()),
                other => other,
            });
        }
    };
    plan.workspaces
        .retain(|w| !pass.refusals.iter().any(|r| r.key == w.key));
    // Taken out of the org by the admin (spec.exclude, ADR 0052).
    let excluded = build::excluded(pass.org, &plan);
    plan.workspaces.retain(|w| !excluded.contains(&w.key));
    pass.template_name = plan.name.clone();
    let children = build::children(pass.org, &plan);
    Ok(Planned { plan, children })
}

/// Plan: a new import when the spec or the template's result changed. Its started row is
/// recorded after the parse (ADR 0010) and after the in-progress mark (crash-safe pairing); a
/// pass that died between its started row and its end (kill -9) is closed first.
async fn begin(pass: &mut Pass<'_>, planned: &Planned) -> Result<(), Stop> {
    let digest = build::digest(&planned.children);
    pass.is_new = pass.prev.observed_generation != Some(pass.generation)
        || pass.prev.plan_digest.as_deref() != Some(digest.as_str());
    pass.digest = Some(digest.clone());
    if pass.prev.import_in_progress.is_some() {
        pass.audit(
            "org.import.failed",
            json!({"name": planned.plan.name, "mode": pass.mode(), "error": "interrupted: the controller stopped during the import", "reason": "Interrupted"}),
        )
        .await;
        pass.prev.import_in_progress = None;
        pass.is_new = true;
    }
    if pass.is_new {
        let mut marked = pass.prev.clone();
        marked.import_in_progress = Some(digest);
        pass.write(&marked).await?;
        pass.prev = marked;
        pass.audit(
            "org.import.started",
            pass.started_data(&planned.plan, false),
        )
        .await;
    }
    Ok(())
}

/// Validate: the env preflight over the whole tree, before anything is created (skipped with
/// `spec.force`).
async fn preflight(pass: &Pass<'_>, plan: &Plan) -> Result<(), Stop> {
    if pass.org.spec.force {
        return Ok(());
    }
    let available = global_env(&pass.ctx.client, &pass.ns).await?;
    let pf = orgtemplate::preflight(plan, &available);
    if !pf.missing_recommended.is_empty() {
        // Recommended env is warn-only (ADR 0047).
        let msg = format!(
            "recommended env not set: {}",
            pf.missing_recommended.join(", ")
        );
        pass.event(EventType::Warning, "RecommendedEnvMissing", msg)
            .await;
    }
    if pf.ok() {
        return Ok(());
    }
    let msg = format!("missing required env: {}", pf.missing_env.join(", "));
    let wait = Action::requeue(MISSING_ENV_RETRY);
    Err(refuse(pass, "MissingEnv", msg, pf.missing_env, Some(plan), wait).await)
}

/// Validate: nothing is applied when a name belongs to someone else.
async fn check_names(
    pass: &Pass<'_>,
    planned: &Planned,
    seen: &Observed,
    uid: &str,
) -> Result<(), Stop> {
    let taken = children::clashes(&planned.children, seen, uid);
    if taken.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "these names are already used by objects this import does not own: {}",
        taken.join(", ")
    );
    let wait = retry(pass.org);
    Err(refuse(pass, "NameConflict", msg, vec![], Some(&planned.plan), wait).await)
}

/// Act: apply every child (server-side apply: re-applying the same tree is a no-op).
async fn apply(
    pass: &Pass<'_>,
    planned: &Planned,
    seen: &Observed,
) -> Result<OrgImportCounts, Stop> {
    let mut counts =
        match children::apply_children(pass.ctx, &pass.ns, &planned.children, seen).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("applying the children failed: {e}");
                pass.fail("ApplyFailed", msg, vec![], Some(&planned.plan))
                    .await?;
                return Err(Stop::Failed(e));
            }
        };
    counts.skipped = planned.plan.skipped as i64;
    counts.refused = pass.refusals.len() as i64;
    counts.desired += counts.refused;
    Ok(counts)
}

/// Act: prune (mode reconcile) only what this import owns, never all because the tree came
/// out empty (ADR 0010). A refused workspace that exists from an earlier pass is neither
/// changed nor deleted.
async fn prune(
    pass: &Pass<'_>,
    children: &[Child],
    seen: &Observed,
    uid: &str,
    counts: &mut OrgImportCounts,
) -> Result<build::Prune, Stop> {
    let reconcile = pass.org.spec.mode == OrgImportMode::Reconcile;
    let mut prune = build::prune(reconcile, children, &seen.existing);
    let held = pass.held();
    let (hold, delete): (Vec<String>, Vec<String>) = std::mem::take(&mut prune.delete)
        .into_iter()
        .partition(|n| held.contains(n));
    prune.delete = delete;
    prune.keep.extend(hold);
    counts.pruned =
        children::prune_children(pass.ctx, &pass.ns, uid, children, &prune, seen).await?;
    if prune.guarded {
        pass.event(
            EventType::Warning,
            "PruneSkipped",
            format!(
                "the template asks for no workspaces; {} existing children were kept (an empty tree never deletes everything)",
                prune.keep.len()
            ),
        )
        .await;
    }
    Ok(prune)
}
