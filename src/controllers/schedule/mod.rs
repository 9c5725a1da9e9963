//! The schedule controller (ADR 0053): fires each Workspace's `spec.schedules` as an A2A
//! `message/send` through [`Teams::send_platform_message`] (slot accounting, `a2a_receive`
//! activity row, `ACTIVITY_LOGGED`) and keeps `status.schedules`.
//!
//! `reconcile` is a thin driver: [`plan::plan`] over the cached object, written on the condition
//! of its resourceVersion (a stale cache is refused, and the plan is made again on a fresh
//! read) — the claim of a fire (`lastRunAt`, `runCount`, the next `nextRunAt`) is stored BEFORE the
//! message is sent, so a kill -9 at any point never fires twice and a restart fires a missed
//! fire once. Fires run off the reconcile, at most [`MAX_FIRES`] sends at once; each publishes a
//! `CRON_EXECUTED` or `CRON_SKIPPED` live event when it ends, and its `lastStatus`/`lastError`
//! are written by [`outcomes`] once the burst of fires is over.

pub mod outcomes;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::kit::{self, Backoff, Reconciler, Reporter};
use crate::resources::names::RUN_SCHEDULES_ANNOTATION;
use crate::resources::{ScheduleStatus, Workspace, WorkspacePhase};
use crate::teams::{PlatformMessage, SendError, Teams};
use crate::telemetry::Metrics;

/// Fires in flight at once, over all workspaces.
pub const MAX_FIRES: usize = 10;
/// How long a fire waits for a busy workspace before it is skipped.
pub const BUSY_WAIT: Duration = Duration::from_secs(120);
/// How long the agent may take to answer a fire.
pub const FIRE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest sleep between two looks at a workspace (a clock that jumped is noticed).
const RESYNC: Duration = Duration::from_secs(600);

/// Errors that end a reconcile (a fire's own failure is reported in status, not here).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("the workspace changed while its schedules were written; retrying")]
    Conflict,
}

impl kit::Failure for ScheduleError {
    fn category(&self) -> &'static str {
        match self {
            ScheduleError::Kube(_) => "ApiError",
            ScheduleError::Conflict => "Conflict",
        }
    }
}

/// Fire settings (the bench and tests shorten nothing: these are the contract).
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_fires: usize,
    pub busy_wait: Duration,
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_fires: MAX_FIRES,
            busy_wait: BUSY_WAIT,
            timeout: FIRE_TIMEOUT,
        }
    }
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub teams: Arc<Teams>,
    pub kit: Reconciler,
    pub report: Reporter,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    fires: Arc<tokio::sync::Semaphore>,
    /// Fires' outcomes waiting to be written (off the fire path).
    pub outcomes: Arc<outcomes::Outcomes>,
}

impl Context {
    pub fn new(
        client: Client,
        teams: Arc<Teams>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        Context {
            report: Reporter::new(client.clone(), "molecule-schedule", "Fire", &["schedules"]),
            kit: Reconciler::new(
                "schedule",
                metrics.clone(),
                Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            ),
            fires: Arc::new(tokio::sync::Semaphore::new(settings.max_fires.max(1))),
            outcomes: Arc::default(),
            client,
            teams,
            metrics,
            settings,
        }
    }
}

/// What of a Workspace wakes the controller: its spec, deletion, a Failed phase and run-now
/// requests. Its own status writes do not (the next fire is a requeue).
pub fn trigger_hash(ws: &Workspace) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        ws.metadata.generation,
        ws.metadata.deletion_timestamp.is_some(),
        failed(ws),
        ws.annotations().get(RUN_SCHEDULES_ANNOTATION),
    )
        .hash(&mut h);
    Some(h.finish())
}

fn failed(ws: &Workspace) -> bool {
    ws.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&WorkspacePhase::Failed)
}

/// Observe: a paused, failed or deleted workspace has no fires.
fn stopped(ws: &Workspace) -> bool {
    ws.spec.paused || ws.metadata.deletion_timestamp.is_some() || failed(ws)
}

/// The run-now requests in the annotation (an unreadable one is no request).
fn run_requests(ws: &Workspace) -> BTreeMap<String, String> {
    ws.annotations()
        .get(RUN_SCHEDULES_ANNOTATION)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

fn statuses(ws: &Workspace) -> &[ScheduleStatus] {
    ws.status.as_ref().map_or(&[], |s| s.schedules.as_slice())
}

/// Plan: the pure step over one object at `now`.
fn plan_of(ws: &Workspace, now: Timestamp) -> plan::Plan {
    let requests = run_requests(ws);
    plan::plan(&plan::Input {
        specs: &ws.spec.schedules,
        statuses: statuses(ws),
        run_requests: &requests,
        stopped: stopped(ws),
        now,
    })
}

fn wants_work(ws: &Workspace, p: &plan::Plan) -> bool {
    !p.fires.is_empty() || p.statuses != statuses(ws)
}

/// When to look at the workspace again.
fn requeue(wake: Option<Timestamp>, now: Timestamp) -> Action {
    let Some(w) = wake else {
        return Action::requeue(RESYNC);
    };
    let wait = Duration::try_from(w.duration_since(now)).unwrap_or(Duration::ZERO);
    Action::requeue(wait.clamp(Duration::from_millis(50), RESYNC))
}

fn api(client: &Client, ws: &Workspace) -> Api<Workspace> {
    Api::namespaced(client.clone(), &ws.namespace().unwrap_or_default())
}

/// Writes `schedules` as the workspace's `status.schedules`, on the condition that the record
/// is still at `ws`'s resourceVersion.
async fn write(
    client: &Client,
    ws: &Workspace,
    schedules: &[ScheduleStatus],
) -> Result<Workspace, ScheduleError> {
    let body = json!({
        "metadata": {"resourceVersion": ws.resource_version()},
        "status": {"schedules": schedules},
    });
    match api(client, ws)
        .patch_status(
            &ws.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(w) => Ok(w),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(ScheduleError::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// A fresh read of `ws` (`None`: it is gone).
async fn fresh(client: &Client, ws: &Workspace) -> Result<Option<Workspace>, ScheduleError> {
    Ok(api(client, ws).get_opt(&ws.name_any()).await?)
}

/// One pass over a workspace.
pub async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, ScheduleError> {
    ctx.kit
        .run(ws.as_ref(), pass(ws.clone(), ctx.clone()))
        .await
}

pub fn error_policy(ws: Arc<Workspace>, err: &ScheduleError, ctx: Arc<Context>) -> Action {
    ctx.kit.retry(ws.as_ref(), err)
}

async fn pass(cached: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, ScheduleError> {
    let now = Timestamp::now();
    let plan = plan_of(&cached, now);
    if !wants_work(&cached, &plan) {
        return Ok(requeue(plan.wake, now));
    }
    // Act: the write is conditional on the version planned on. The cache may not have seen
    // the last claim yet; then the write is refused and the plan is made again on a fresh read.
    let (written, plan, now) = match write(&ctx.client, &cached, &plan.statuses).await {
        Ok(w) => (w, plan, now),
        Err(ScheduleError::Conflict) => {
            let Some(fresh) = fresh(&ctx.client, &cached).await? else {
                return Ok(Action::await_change());
            };
            let now = Timestamp::now();
            let plan = plan_of(&fresh, now);
            if !wants_work(&fresh, &plan) {
                return Ok(requeue(plan.wake, now));
            }
            (write(&ctx.client, &fresh, &plan.statuses).await?, plan, now)
        }
        Err(e) => return Err(e),
    };
    let Some(uid) = written.uid() else {
        return Ok(requeue(plan.wake, now));
    };
    if !plan.fires.is_empty() {
        ctx.outcomes.busy();
    }
    for fire in plan.fires {
        tokio::spawn(run_fire(ctx.clone(), written.clone(), uid.clone(), fire));
    }
    Ok(requeue(plan.wake, now))
}

/// How a fire ended: `lastStatus`, `lastError`.
fn outcome(result: &Result<String, SendError>) -> (&'static str, Option<String>) {
    match result {
        Ok(_) => ("ok", None),
        Err(e @ SendError::Busy(_)) => ("skipped", Some(e.to_string())),
        Err(e) => ("error", Some(e.to_string())),
    }
}

/// Sends one claimed fire and reports how it went: the live event and the Event at once, the
/// status fields through [`outcomes::Outcomes`].
async fn run_fire(ctx: Arc<Context>, ws: Workspace, uid: String, fire: plan::Fire) {
    let Ok(permit) = ctx.fires.clone().acquire_owned().await else {
        return;
    };
    let msg = PlatformMessage {
        text: fire.prompt.clone(),
        origin: format!("schedule:{}", fire.name),
        busy_wait: ctx.settings.busy_wait,
        timeout: ctx.settings.timeout,
    };
    // After a restart the claim may come before the Teams' own view of the workspaces
    // (`wait_ready` waits at most 10 s).
    ctx.teams.wait_ready().await;
    let mut result = ctx.teams.send_platform_message(&uid, &msg).await;
    if result == Err(SendError::Gone) {
        // A workspace created a moment ago may not have reached the Teams' watch yet.
        tokio::time::sleep(Duration::from_secs(1)).await;
        result = ctx.teams.send_platform_message(&uid, &msg).await;
    }
    drop(permit);
    let (status, error) = outcome(&result);
    ctx.metrics
        .inc("molecule_schedule_fires_total", &[("status", status)]);
    let event = if status == "skipped" {
        "CRON_SKIPPED"
    } else {
        "CRON_EXECUTED"
    };
    ctx.teams.publish_event(
        event,
        &uid,
        json!({"schedule": fire.name, "status": status, "error": error, "manual": fire.manual}),
    );
    if let Some(e) = &error {
        ctx.report.event(
            &ws,
            EventType::Warning,
            if status == "skipped" {
                "ScheduleSkipped"
            } else {
                "ScheduleFailed"
            },
            format!("schedule {:?}: {e}", fire.name),
        );
    }
    let claimed_at = statuses(&ws)
        .iter()
        .find(|s| s.name == fire.name)
        .and_then(|s| s.last_run_at.clone());
    ctx.outcomes.push(
        &uid,
        &ws,
        outcomes::Outcome {
            schedule: fire.name,
            claimed_at,
            status: status.to_string(),
            error,
        },
    );
}

/// The schedule controller for one leadership term, over `controller`: the shared Workspace
/// cache's controller woken by what [`trigger_hash`] covers (ADR 0025); `queue` counts what
/// waits.
pub async fn run(
    controller: kube::runtime::Controller<Workspace>,
    queue: Arc<crate::controllers::cache::WorkQueue>,
    client: Client,
    teams: Arc<Teams>,
    metrics: Arc<Metrics>,
    settings: Settings,
    stop: crate::shutdown::Shutdown,
) {
    use futures::StreamExt;
    use kube::ResourceExt;
    let ctx = Arc::new(Context::new(client.clone(), teams, metrics, settings));
    let outcomes = ctx.outcomes.clone();
    // Runs beside the controller, and writes what still waits once the stop fired.
    let recorder = outcomes.run(client, stop.clone());
    let controller = controller
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(super::MAX_CONCURRENT_RECONCILES),
        )
        .graceful_shutdown_on(stop.wait())
        .run(
            move |ws, ctx| {
                let guard = queue.begin(&crate::controllers::cache::WorkQueue::key(
                    ws.namespace().as_deref(),
                    &ws.name_any(),
                ));
                async move {
                    let _guard = guard;
                    reconcile(ws, ctx).await
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|_| async {});
    tokio::join!(controller, recorder);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_busy_to_skipped_and_failures_to_error() {
        assert_eq!(outcome(&Ok("hi".into())), ("ok", None));
        let (s, e) = outcome(&Err(SendError::Busy(BUSY_WAIT)));
        assert_eq!(s, "skipped");
        assert!(e.unwrap().contains("busy for 120s"));
        assert_eq!(outcome(&Err(SendError::NotReady)).0, "error");
    }

    #[test]
    fn paused_failed_and_deleted_workspaces_are_stopped() {
        let mut ws = Workspace::new("w", Default::default());
        assert!(!stopped(&ws));
        ws.spec.paused = true;
        assert!(stopped(&ws));
        ws.spec.paused = false;
        ws.status = Some(crate::resources::WorkspaceStatus {
            phase: Some(WorkspacePhase::Failed),
            ..Default::default()
        });
        assert!(stopped(&ws));
    }

    #[test]
    fn the_trigger_ignores_status_writes_but_sees_run_requests() {
        let mut ws = Workspace::new("w", Default::default());
        let before = trigger_hash(&ws);
        ws.status = Some(crate::resources::WorkspaceStatus {
            schedules: vec![ScheduleStatus {
                name: "a".into(),
                run_count: 1,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(trigger_hash(&ws), before);
        ws.metadata.annotations =
            Some([(RUN_SCHEDULES_ANNOTATION.to_string(), "{}".to_string())].into());
        assert_ne!(trigger_hash(&ws), before);
    }
}
