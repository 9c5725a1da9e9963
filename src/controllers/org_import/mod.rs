//! The OrgImport controller (ADR 0010): an org template becomes child Workspaces (and
//! Secrets for their layered env), owned by the OrgImport, applied with server-side apply so
//! that re-applying changes nothing.
//!
//! `reconcile` reads the record as stored and runs a pass (`import`) as named steps: validate
//! the spec, load and plan the template (`crate::orgtemplate`) and build the children (`build`),
//! check the env preflight and the names, apply and prune the children (`children`), and write
//! status, Events and audit rows (`pass`). Its child Workspaces trigger it too (`watch`).
//! Deleting the OrgImport removes its children through ownerReference garbage collection.

pub mod build;
mod children;
mod import;
mod pass;
mod watch;

pub use children::ORG_PLUGIN_LABEL;
pub use pass::policy_summary;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::orgtemplate::policy::Policy;
use crate::orgtemplate::{self, TemplateError};
use crate::resources::OrgImport;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Field manager of every child this controller applies.
pub const FIELD_MANAGER: &str = "molecule-org-import";
/// At most this many children are applied at once.
const APPLY_CONCURRENCY: usize = 8;
/// Condition type of a template-policy refusal (ADR 0039).
pub const POLICY_CONDITION: &str = "PolicyRefused";
/// Refusals named one by one in the condition message; the rest are counted.
const POLICY_MESSAGE_ITEMS: usize = 10;

/// Errors of the OrgImport controller; `category` is the Event reason and metric label.
#[derive(Debug, thiserror::Error)]
pub enum OrgImportError {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// A transient template problem (a git fetch that failed).
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the record has no uid")]
    NoUid,
    #[error("loading the template was interrupted")]
    Interrupted,
}

impl OrgImportError {
    pub fn category(&self) -> &'static str {
        match self {
            OrgImportError::Kube(_) => "ApiError",
            OrgImportError::Template(e) => e.category(),
            OrgImportError::NoUid => "NoUid",
            OrgImportError::Interrupted => "Interrupted",
        }
    }
}

/// Tunables of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Template root, `!external` settings and persona root.
    pub options: orgtemplate::Options,
    /// Periodic re-read of dir and git sources (files do not trigger watches).
    pub resync: Duration,
    /// Template policy defaults (`--template-max-tier` …); a record's `spec.policy` overrides
    /// them (ADR 0039).
    pub policy: Policy,
}

impl Settings {
    /// Settings for a template root, with the operator's `!external` and persona settings.
    pub fn new(
        template_root: impl Into<std::path::PathBuf>,
        sources: &orgtemplate::SourceSettings,
    ) -> Self {
        Settings {
            options: orgtemplate::Options::with_sources(template_root, sources),
            resync: Duration::from_secs(300),
            policy: Policy::default(),
        }
    }
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::Audit,
    /// Consecutive failures per uid (exponential backoff, reset on success).
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        audit: crate::audit::Audit,
    ) -> Self {
        let reporter = Reporter {
            controller: "molecule-org-import".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            audit,
            failures: Mutex::default(),
        }
    }
}

/// Runs the controller until `shutdown` fires.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    audit: crate::audit::Audit,
    shutdown: Shutdown,
) {
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics, audit));
    let controller = Controller::new(
        Api::<OrgImport>::all(client.clone()),
        watcher::Config::default(),
    );
    let imports = controller.store();
    controller
        // A new global secret may satisfy a MissingEnv import in its namespace.
        .watches(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields(&format!(
                "metadata.name={}",
                crate::controllers::workspace::env::GLOBAL_SECRET
            )),
            move |s: Secret| {
                let ns = s.namespace();
                imports
                    .state()
                    .into_iter()
                    .filter(|o| o.namespace() == ns)
                    .map(|o| ObjectRef::from_obj(&*o))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(watch::child_triggers(client))
        .graceful_shutdown_on(shutdown.wait())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Entry point for kube-runtime.
pub async fn reconcile(org: Arc<OrgImport>, ctx: Arc<Context>) -> Result<Action, OrgImportError> {
    let started = Instant::now();
    // The pass starts from the record as stored, not the watch cache: the cache may still hold
    // this controller's previous status write unseen (an in-progress mark would read as a pass
    // interrupted by a crash, and a finished pass as a new one).
    let api: Api<OrgImport> =
        Api::namespaced(ctx.client.clone(), &org.namespace().unwrap_or_default());
    let org = match api.get_opt(&org.name_any()).await? {
        Some(fresh) if fresh.uid() == org.uid() => Arc::new(fresh),
        _ => return Ok(Action::await_change()),
    };
    let result = match import::import(&org, &ctx).await {
        // The record went away under this pass (deleted, its cascade running): a write to it
        // found nothing. Nothing is left to converge; its children go by garbage collection.
        Err(OrgImportError::Kube(kube::Error::Api(e)))
            if e.code == 404 && gone(&ctx, &org).await =>
        {
            Ok(Action::await_change())
        }
        other => other,
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.inc(
        "molecule_reconcile_total",
        &[("controller", "org_import"), ("result", outcome)],
    );
    ctx.metrics.observe(
        "molecule_reconcile_seconds",
        &[("controller", "org_import")],
        started.elapsed().as_secs_f64(),
    );
    if result.is_ok()
        && let Some(uid) = org.uid()
    {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }
    result
}

/// Whether the OrgImport no longer exists (or exists with another uid).
async fn gone(ctx: &Context, org: &OrgImport) -> bool {
    let api: Api<OrgImport> =
        Api::namespaced(ctx.client.clone(), &org.namespace().unwrap_or_default());
    match api.get_opt(&org.name_any()).await {
        Ok(Some(now)) => now.uid() != org.uid(),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Transient errors back off per object: 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn error_policy(org: Arc<OrgImport>, err: &OrgImportError, ctx: Arc<Context>) -> Action {
    ctx.metrics.inc(
        "molecule_reconcile_errors_total",
        &[("controller", "org_import"), ("category", err.category())],
    );
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(org.uid().unwrap_or_default()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay =
        Duration::from_secs(1u64 << n.min(9).saturating_sub(1)).min(Duration::from_secs(300));
    tracing::warn!(org = %org.name_any(), category = err.category(), error = %err, retry_in = ?delay, "org import failed; will retry");
    Action::requeue(delay)
}

/// Names of the namespace's global secrets with a non-empty value: what the env preflight
/// (`orgtemplate::preflight` / `check_env`) takes as available.
pub async fn global_env(client: &Client, ns: &str) -> Result<BTreeSet<String>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api
        .get_opt(crate::controllers::workspace::env::GLOBAL_SECRET)
        .await?;
    let mut out = BTreeSet::new();
    if let Some(s) = s {
        for (k, v) in s.data.unwrap_or_default() {
            if !v.0.is_empty() {
                out.insert(k);
            }
        }
        for (k, v) in s.string_data.unwrap_or_default() {
            if !v.is_empty() {
                out.insert(k);
            }
        }
    }
    Ok(out)
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid)
}
