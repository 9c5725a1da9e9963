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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::kit::{self, Backoff, Reconciler, Reporter};
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
/// Backoff of a record whose pass failed.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The status fields this controller owns: all of them, written whole.
const STATUS_FIELDS: &[&str] = &[
    "observedGeneration",
    "conditions",
    "counts",
    "revisions",
    "inventory",
    "missingEnv",
    "planDigest",
    "importInProgress",
    "warnings",
    "channelsSkipped",
];

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

impl kit::Failure for OrgImportError {
    fn category(&self) -> &'static str {
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
    /// Span, metrics and error policy of every pass (ADR 0045).
    pub kit: Reconciler,
    /// Status writes and Events.
    pub report: Reporter,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::Audit,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        audit: crate::audit::Audit,
    ) -> Self {
        Context {
            kit: Reconciler::new(
                "org_import",
                metrics.clone(),
                Backoff::new(RETRY_MIN, RETRY_MAX),
            ),
            report: Reporter::new(
                client.clone(),
                "molecule-org-import",
                "Import",
                STATUS_FIELDS,
            ),
            client,
            settings,
            metrics,
            audit,
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
    let ctx = Arc::new(Context::new(client, settings, metrics, audit));
    run_with(ctx, shutdown).await;
}

/// Runs the controller on `ctx` until `shutdown` fires (the in-process harness shares `ctx`
/// with its tests, ADR 0045).
pub async fn run_with(ctx: Arc<Context>, shutdown: Shutdown) {
    let client = ctx.client.clone();
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
                crate::resources::names::GLOBAL_SECRET
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

/// Entry point for kube-runtime, wrapped by the kit.
pub async fn reconcile(org: Arc<OrgImport>, ctx: Arc<Context>) -> Result<Action, OrgImportError> {
    ctx.kit.run(org.as_ref(), pass(&org, &ctx)).await
}

/// One pass. It starts from the record as stored, not the watch cache: the cache may still
/// hold this controller's previous status write unseen (an in-progress mark would read as a
/// pass interrupted by a crash, and a finished pass as a new one).
async fn pass(org: &OrgImport, ctx: &Context) -> Result<Action, OrgImportError> {
    let api: Api<OrgImport> =
        Api::namespaced(ctx.client.clone(), &org.namespace().unwrap_or_default());
    let org = match api.get_opt(&org.name_any()).await? {
        Some(fresh) if fresh.uid() == org.uid() => fresh,
        _ => return Ok(Action::await_change()),
    };
    match import::import(&org, ctx).await {
        // The record went away under this pass (deleted, its cascade running): a write to it
        // found nothing. Nothing is left to converge; its children go by garbage collection.
        Err(OrgImportError::Kube(kube::Error::Api(e)))
            if e.code == 404 && gone(ctx, &org).await =>
        {
            Ok(Action::await_change())
        }
        other => other,
    }
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

/// Transient errors back off per object: from 1 s, doubling (with jitter), capped at 5
/// minutes, started over after a success.
pub fn error_policy(org: Arc<OrgImport>, err: &OrgImportError, ctx: Arc<Context>) -> Action {
    ctx.kit.retry(org.as_ref(), err)
}

/// Names of the namespace's global secrets with a non-empty value: what the env preflight
/// (`orgtemplate::preflight` / `check_env`) takes as available.
pub async fn global_env(client: &Client, ns: &str) -> Result<BTreeSet<String>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get_opt(crate::resources::names::GLOBAL_SECRET).await?;
    Ok(s.as_ref()
        .map(crate::resources::names::non_empty_keys)
        .unwrap_or_default())
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid)
}
