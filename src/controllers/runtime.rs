//! The Runtime controller (ADR 0030): resolves each cluster-scoped Runtime to an image
//! and says why in its status (`resolvedImage`, `digest`, `source`, `builtFromSha`, conditions
//! `Ready`, `ImageAvailable`, `RolledOut`). With `spec.autoRefresh` it polls the source on an
//! interval — the registry's manifest digest or the template's HEAD — and rolls the runtime's
//! workspaces onto a changed image one at a time (ADR 0032). `serve` seeds the known runtimes.
//!
//! `reconcile` is a thin driver: probe through [`Images`] (one lookup), tick the auto-refresh
//! bookkeeping, compute the next status with the pure [`next_status`], write it if it changed.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, ResourceExt};

use super::kit::{self, Backoff, Reconciler, Reporter};

use crate::images::refresh::{self, Seen, Tick};
use crate::images::{ImageError, Images, Resolved};
use crate::resources::{
    AutoRefresh, Condition, ConditionStatus, Runtime, RuntimeSpec, RuntimeStatus,
};
use crate::telemetry::Metrics;

/// The runtimes `serve` creates unless they exist: the template runtimes and the built-in echo.
pub const KNOWN_RUNTIMES: &[&str] = &[
    "claude-code",
    "langgraph",
    "crewai",
    "autogen",
    "deepagents",
    "hermes",
    "gemini-cli",
    "openclaw",
    "codex",
    "echo",
];
/// Label on seeded records.
pub const LABEL_SEEDED: &str = "molecule.ai/seeded";
/// Default poll interval of auto-refresh (5 min, ADR 0032).
pub const DEFAULT_REFRESH_SECONDS: i64 = 300;
/// Resync of runtimes without auto-refresh, so `kubectl get runtimes` stays honest.
const RESYNC: Duration = Duration::from_secs(1800);
/// Re-check of permanently failing runtimes (a repository may get mirrored without any change
/// of the record).
const RECHECK_FAILED: Duration = Duration::from_secs(300);

/// Errors of the Runtime controller that abort a reconcile (image problems do not: they are
/// reported in status).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl RuntimeError {
    pub fn category(&self) -> &'static str {
        match self {
            RuntimeError::Kube(_) => "ApiError",
        }
    }
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub images: Arc<Images>,
    pub metrics: Arc<Metrics>,
    /// Auto-refresh: the last observed fingerprint per runtime (first observation seeds).
    pub seen: Seen,
    /// Span, metrics and per-runtime backoff (ADR 0045). Retries of an unreachable source wait
    /// 5 s … 5 min. Not faster: no workspace start waits on this controller (a start resolves
    /// its image itself), and on a host without network every built-in runtime fails its probe
    /// at once, so 500 ms steps spawned dozens of `git ls-remote` processes in an operator's
    /// first seconds. A pass resets it itself: a successful pass may still be retrying.
    pub kit: Reconciler,
    /// Status writes and Events.
    pub report: Reporter,
}

/// The status fields the controller owns.
const STATUS_FIELDS: &[&str] = &[
    "observedGeneration",
    "conditions",
    "resolvedImage",
    "digest",
    "source",
    "builtFromSha",
    "resolvedAt",
];

impl Context {
    pub fn new(
        client: Client,
        images: Arc<Images>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Context {
        Context {
            report: Reporter::with_recorder(client.clone(), recorder, "Resolve", STATUS_FIELDS),
            kit: Reconciler::new(
                "runtime",
                metrics.clone(),
                Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            )
            .manual_reset(),
            client,
            images,
            metrics,
            seen: Seen::default(),
        }
    }

    fn backoff(&self, name: &str) -> Duration {
        self.kit.backoff().next(name)
    }

    fn reset_backoff(&self, name: &str) {
        self.kit.backoff().reset(name)
    }
}

/// Creates the known runtimes that do not exist yet (existing records are left alone).
pub async fn seed(client: &Client, auto_refresh: bool) -> Result<usize, kube::Error> {
    let api: Api<Runtime> = Api::all(client.clone());
    let mut created = 0;
    for name in KNOWN_RUNTIMES {
        if api.get_opt(name).await?.is_some() {
            continue;
        }
        let mut rt = Runtime::new(name, seeded_spec(name, auto_refresh));
        rt.metadata.labels = Some([(LABEL_SEEDED.to_string(), "true".to_string())].into());
        match api.create(&PostParams::default(), &rt).await {
            Ok(_) => created += 1,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    if created > 0 {
        tracing::info!(created, "seeded the known runtimes");
    }
    Ok(created)
}

/// The spec a known runtime is seeded with.
pub fn seeded_spec(name: &str, auto_refresh: bool) -> RuntimeSpec {
    RuntimeSpec {
        // hermes installs a large toolchain on first start (30 min, as in the original).
        provision_timeout_seconds: (name == "hermes").then_some(1800),
        auto_refresh: (auto_refresh && name != "echo").then_some(AutoRefresh {
            enabled: true,
            interval_seconds: None,
        }),
        ..Default::default()
    }
}

/// What the auto-refresh (or a resumed roll) did in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollOutcome {
    /// A roll is starting (written before it runs, so a crash resumes it).
    Rolling {
        target: String,
    },
    Rolled {
        image: String,
        workspaces: usize,
    },
    Failed {
        reason: String,
        message: String,
    },
}

/// The probe result as status sees it: the resolution, or (category, masked message).
pub type Probe = Result<Resolved, (String, String)>;

const REASON_ROLLING: &str = "Rolling";

/// The next status from the previous one and what was observed (pure).
pub fn next_status(
    before: &RuntimeStatus,
    generation: i64,
    probe: &Probe,
    roll: Option<&RollOutcome>,
    now: &str,
) -> RuntimeStatus {
    let mut next = before.clone();
    next.observed_generation = Some(generation);
    let mut set = |type_: &str, status: ConditionStatus, reason: &str, message: String| {
        let mut c = Condition::new(type_, status, reason, message);
        c.observed_generation = Some(generation);
        Condition::upsert(&mut next.conditions, c, now);
    };
    match probe {
        Ok(r) => {
            let what = match (r.source, &r.built_from_sha, &r.digest) {
                (crate::resources::ImageSource::LocalBuild, Some(sha), _) => {
                    format!("built locally from template commit {sha}")
                }
                (crate::resources::ImageSource::Registry, _, Some(d)) => {
                    format!("registry image, currently {d}")
                }
                (crate::resources::ImageSource::Builtin, _, _) => {
                    "built in: the operator's own binary".to_string()
                }
                _ => "resolved".to_string(),
            };
            let message = match &r.note {
                Some(n) => format!("{}: {what}; {n}", r.image),
                None => format!("{}: {what}", r.image),
            };
            set("Ready", ConditionStatus::True, "Resolved", message);
            if r.available {
                set(
                    "ImageAvailable",
                    ConditionStatus::True,
                    "Present",
                    "the image is on the engine".into(),
                );
            } else {
                set(
                    "ImageAvailable",
                    ConditionStatus::False,
                    "NotYetFetched",
                    "the image is pulled or built when the first workspace starts".into(),
                );
            }
            let changed = before.resolved_image.as_deref() != Some(r.image.as_str())
                || before.digest != r.digest;
            next.resolved_image = Some(r.image.clone());
            next.digest = r.digest.clone();
            next.source = Some(r.source);
            next.built_from_sha = r.built_from_sha.clone();
            if changed || before.resolved_at.is_none() {
                next.resolved_at = Some(now.to_string());
            }
        }
        Err((reason, message)) => {
            // The last good resolution stays: workspaces already running are not affected.
            set("Ready", ConditionStatus::False, reason, message.clone());
        }
    }
    match roll {
        Some(RollOutcome::Rolling { target }) => set(
            "RolledOut",
            ConditionStatus::Unknown,
            REASON_ROLLING,
            format!("rolling this runtime's workspaces onto {target}, one at a time"),
        ),
        Some(RollOutcome::Rolled { image, workspaces }) => set(
            "RolledOut",
            ConditionStatus::True,
            "RolledOut",
            format!("{workspaces} workspace(s) restarted onto {image}"),
        ),
        Some(RollOutcome::Failed { reason, message }) => {
            set("RolledOut", ConditionStatus::False, reason, message.clone())
        }
        None => {}
    }
    next
}

/// Whether a previous process left a roll unfinished (the condition says Rolling).
pub fn interrupted_roll(status: &RuntimeStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "RolledOut" && c.reason.as_deref() == Some(REASON_ROLLING))
}

fn ready_of(s: &RuntimeStatus) -> Option<(ConditionStatus, Option<String>)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status, c.reason.clone()))
}

async fn write_status(
    ctx: &Context,
    rt: &Runtime,
    before: &RuntimeStatus,
    next: &RuntimeStatus,
) -> Result<(), RuntimeError> {
    ctx.report.status(rt, before, next, None).await?;
    Ok(())
}

fn event(ctx: &Context, rt: &Runtime, type_: EventType, reason: &str, note: String) {
    ctx.report.event(rt, type_, reason, note);
}

/// Entry point for kube-runtime, wrapped by the kit.
pub async fn reconcile(cached: Arc<Runtime>, ctx: Arc<Context>) -> Result<Action, RuntimeError> {
    let name = cached.name_any();
    ctx.kit
        .run(cached.as_ref(), reconcile_inner(&name, &ctx))
        .await
}

/// One pass: observe (the record, its source) → act (auto-refresh, or a roll a crashed process
/// left unfinished) → report (status, Events) → the next look.
async fn reconcile_inner(name: &str, ctx: &Arc<Context>) -> Result<Action, RuntimeError> {
    let api: Api<Runtime> = Api::all(ctx.client.clone());
    let Some(rt) = api.get_opt(name).await? else {
        ctx.seen.forget(name);
        ctx.reset_backoff(name);
        return Ok(Action::await_change());
    };
    let auto = auto_refresh_every(&rt);
    if auto.is_none() {
        ctx.seen.forget(name);
    }
    let probed = ctx.images.probe(name, &rt.spec).await;
    let pass = Pass {
        ctx,
        rt: &rt,
        name,
        generation: rt.metadata.generation.unwrap_or(1),
        before: rt.status.clone().unwrap_or_default(),
        probe: probed
            .as_ref()
            .map(Clone::clone)
            .map_err(|e| (e.category().to_string(), ctx.images.mask(&e.to_string()))),
        now: crate::util::now_rfc3339(),
    };
    let roll = match &probed {
        Ok(p) => pass.roll(p, auto.is_some()).await?,
        Err(_) => None,
    };
    pass.report(&api, roll).await?;
    Ok(next_look(ctx, name, &probed, auto))
}

/// The auto-refresh interval, when `spec.autoRefresh` is on.
fn auto_refresh_every(rt: &Runtime) -> Option<Duration> {
    rt.spec
        .auto_refresh
        .as_ref()
        .filter(|a| a.enabled)
        .map(|a| {
            Duration::from_secs(a.interval_seconds.unwrap_or(DEFAULT_REFRESH_SECONDS).max(1) as u64)
        })
}

/// What one pass observed.
struct Pass<'a> {
    ctx: &'a Context,
    rt: &'a Runtime,
    name: &'a str,
    generation: i64,
    before: RuntimeStatus,
    probe: Probe,
    now: String,
}

impl Pass<'_> {
    /// Act: the auto-refresh tick (or a resumed roll), and what it did.
    async fn roll(
        &self,
        probed: &Resolved,
        auto: bool,
    ) -> Result<Option<RollOutcome>, RuntimeError> {
        let resume = interrupted_roll(&self.before);
        let run = || self.start_roll(&probed.fingerprint);
        let outcome = if auto {
            match refresh::tick(&self.ctx.seen, self.name, &probed.fingerprint, run).await {
                Tick::Seeded | Tick::Unchanged if resume => Some(run().await),
                Tick::Seeded => {
                    tracing::info!(runtime = self.name, fingerprint = %probed.fingerprint, "auto-refresh: first observation (seed only)");
                    None
                }
                Tick::Unchanged => None,
                Tick::Refreshed(r) => Some(Ok(r)),
                Tick::Failed(e) => Some(Err(e)),
            }
        } else if resume {
            Some(run().await)
        } else {
            None
        };
        match outcome {
            None => Ok(None),
            Some(Ok((resolved, recreated))) => Ok(Some(self.rolled(resolved, recreated.len()))),
            Some(Err(RollError::Kube(e))) => Err(e.into()),
            Some(Err(RollError::Image(e))) => Ok(Some(self.roll_failed(&e))),
        }
    }

    /// Marks the roll as started (so a crash resumes it), then refreshes and rolls.
    async fn start_roll(&self, target: &str) -> Result<(Resolved, Vec<String>), RollError> {
        let rolling = next_status(
            &self.before,
            self.generation,
            &self.probe,
            Some(&RollOutcome::Rolling {
                target: target.to_string(),
            }),
            &self.now,
        );
        write_status(self.ctx, self.rt, &self.before, &rolling).await?;
        refresh::refresh_one(&self.ctx.images, self.rt, true)
            .await
            .map_err(RollError::Image)
    }

    fn rolled(&self, resolved: Resolved, n: usize) -> RollOutcome {
        self.ctx.metrics.inc(
            "molecule_image_refresh_total",
            &[("runtime", self.name), ("result", "rolled")],
        );
        tracing::info!(runtime = self.name, image = %resolved.image, workspaces = n, "refreshed and rolled");
        let note = format!(
            "{} is current; {n} workspace(s) rolled onto it",
            resolved.image
        );
        event(self.ctx, self.rt, EventType::Normal, "Refreshed", note);
        RollOutcome::Rolled {
            image: resolved.image,
            workspaces: n,
        }
    }

    fn roll_failed(&self, e: &ImageError) -> RollOutcome {
        self.ctx.metrics.inc(
            "molecule_image_refresh_total",
            &[("runtime", self.name), ("result", "failed")],
        );
        let message = self.ctx.images.mask(&e.to_string());
        tracing::warn!(runtime = self.name, category = e.category(), error = %message, "refresh failed; the next tick retries");
        event(
            self.ctx,
            self.rt,
            EventType::Warning,
            "RefreshFailed",
            message.clone(),
        );
        RollOutcome::Failed {
            reason: e.category().to_string(),
            message,
        }
    }

    /// Report: the next status (on top of what a roll wrote), and an Event when Ready changed.
    async fn report(
        &self,
        api: &Api<Runtime>,
        roll: Option<RollOutcome>,
    ) -> Result<(), RuntimeError> {
        let base = match &roll {
            Some(_) => api
                .get_opt(self.name)
                .await?
                .and_then(|r| r.status)
                .unwrap_or_else(|| self.before.clone()),
            None => self.before.clone(),
        };
        let next = next_status(
            &base,
            self.generation,
            &self.probe,
            roll.as_ref(),
            &self.now,
        );
        write_status(self.ctx, self.rt, &base, &next).await?;
        if ready_of(&self.before) != ready_of(&next) {
            self.ready_changed();
        }
        Ok(())
    }

    fn ready_changed(&self) {
        let (ctx, rt, name) = (self.ctx, self.rt, self.name);
        match &self.probe {
            Ok(r) => {
                tracing::info!(runtime = name, image = %r.image, source = r.source.as_str(), "runtime resolved");
                let note = format!("{} ({})", r.image, r.source.as_str());
                event(ctx, rt, EventType::Normal, "Resolved", note);
            }
            Err((reason, message)) => {
                tracing::warn!(runtime = name, reason = %reason, error = %message, "runtime does not resolve");
                event(ctx, rt, EventType::Warning, reason, message.clone());
            }
        }
    }
}

/// When to look again: the refresh interval or the resync when resolved; the runtime's backoff
/// when its source is unreachable; the failed-runtime recheck otherwise.
fn next_look(
    ctx: &Context,
    name: &str,
    probed: &Result<Resolved, ImageError>,
    auto: Option<Duration>,
) -> Action {
    match (probed, auto) {
        (Ok(_), Some(every)) => {
            ctx.reset_backoff(name);
            Action::requeue(every)
        }
        (Ok(_), None) => {
            ctx.reset_backoff(name);
            Action::requeue(RESYNC)
        }
        (Err(e), auto) if e.is_transient() => {
            let delay = ctx.backoff(name);
            Action::requeue(auto.map_or(delay, |every| delay.min(every)))
        }
        (Err(_), auto) => Action::requeue(auto.map_or(RECHECK_FAILED, |e| e.min(RECHECK_FAILED))),
    }
}

/// What the refresh closure fails with.
enum RollError {
    Image(ImageError),
    Kube(kube::Error),
}

impl From<RuntimeError> for RollError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Kube(k) => RollError::Kube(k),
        }
    }
}

/// Requeue policy for API errors (image problems never get here).
pub fn error_policy(rt: Arc<Runtime>, err: &RuntimeError, ctx: Arc<Context>) -> Action {
    ctx.kit.retry(rt.as_ref(), err)
}

impl kit::Failure for RuntimeError {
    fn category(&self) -> &'static str {
        RuntimeError::category(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ImageSource;

    fn resolved(image: &str, digest: &str, available: bool) -> Resolved {
        Resolved {
            image: image.into(),
            digest: Some(digest.into()),
            source: ImageSource::Registry,
            built_from_sha: None,
            available,
            fingerprint: digest.into(),
            note: None,
        }
    }

    fn cond<'a>(s: &'a RuntimeStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).expect(t)
    }

    #[test]
    fn status_reports_the_resolution_and_is_stable() {
        let p: Probe = Ok(resolved("reg/x:latest", "sha256:a", false));
        let s1 = next_status(&RuntimeStatus::default(), 3, &p, None, "t1");
        assert_eq!(s1.resolved_image.as_deref(), Some("reg/x:latest"));
        assert_eq!(s1.digest.as_deref(), Some("sha256:a"));
        assert_eq!(s1.source, Some(ImageSource::Registry));
        assert_eq!(s1.resolved_at.as_deref(), Some("t1"));
        assert_eq!(cond(&s1, "Ready").status, ConditionStatus::True);
        assert_eq!(cond(&s1, "Ready").observed_generation, Some(3));
        assert_eq!(cond(&s1, "ImageAvailable").status, ConditionStatus::False);
        // Same observation later: nothing changes (no write, no storm).
        assert_eq!(next_status(&s1, 3, &p, None, "t2"), s1);
        // A new digest: resolvedAt moves, transition times stay.
        let s2 = next_status(
            &s1,
            3,
            &Ok(resolved("reg/x:latest", "sha256:b", true)),
            None,
            "t3",
        );
        assert_eq!(s2.resolved_at.as_deref(), Some("t3"));
        assert_eq!(
            cond(&s2, "Ready").last_transition_time.as_deref(),
            Some("t1")
        );
        assert_eq!(cond(&s2, "ImageAvailable").status, ConditionStatus::True);
    }

    #[test]
    fn a_failure_keeps_the_last_good_resolution() {
        let good = next_status(
            &RuntimeStatus::default(),
            1,
            &Ok(resolved("reg/x:latest", "sha256:a", true)),
            None,
            "t1",
        );
        let bad = next_status(
            &good,
            1,
            &Err((
                "RegistryUnreachable".into(),
                "registry 127.0.0.1:1 did not answer within 2s".into(),
            )),
            None,
            "t2",
        );
        assert_eq!(bad.resolved_image.as_deref(), Some("reg/x:latest"));
        let ready = cond(&bad, "Ready");
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason.as_deref(), Some("RegistryUnreachable"));
        assert_eq!(ready.last_transition_time.as_deref(), Some("t2"));
    }

    #[test]
    fn rolls_are_recorded_and_an_interrupted_one_is_recognised() {
        let p: Probe = Ok(resolved("reg/x:latest", "sha256:b", true));
        let rolling = next_status(
            &RuntimeStatus::default(),
            1,
            &p,
            Some(&RollOutcome::Rolling {
                target: "sha256:b".into(),
            }),
            "t1",
        );
        assert!(interrupted_roll(&rolling));
        let done = next_status(
            &rolling,
            1,
            &p,
            Some(&RollOutcome::Rolled {
                image: "reg/x:latest".into(),
                workspaces: 2,
            }),
            "t2",
        );
        assert!(!interrupted_roll(&done));
        assert_eq!(cond(&done, "RolledOut").status, ConditionStatus::True);
        let failed = next_status(
            &done,
            1,
            &p,
            Some(&RollOutcome::Failed {
                reason: "PullFailed".into(),
                message: "pulling reg/x:latest failed".into(),
            }),
            "t3",
        );
        assert_eq!(
            cond(&failed, "RolledOut").reason.as_deref(),
            Some("PullFailed")
        );
        assert!(!interrupted_roll(&failed));
    }

    #[test]
    fn seeds_cover_the_known_runtimes() {
        assert!(KNOWN_RUNTIMES.contains(&"echo") && KNOWN_RUNTIMES.len() == 10);
        assert_eq!(
            seeded_spec("hermes", false).provision_timeout_seconds,
            Some(1800)
        );
        assert!(seeded_spec("codex", true).auto_refresh.is_some());
        assert!(seeded_spec("echo", true).auto_refresh.is_none());
        assert_eq!(seeded_spec("codex", false), RuntimeSpec::default());
    }
}
