//! The OrgImport controller (ADR 0010): an org template becomes child Workspaces (and
//! Secrets for their layered env), owned by the OrgImport, applied with server-side apply so
//! that re-applying changes nothing.
//!
//! `reconcile` is a thin driver over pure steps: load and plan the template
//! (`crate::orgtemplate`, blocking I/O on a worker thread), build the children (`build`), check
//! the env preflight, apply, prune (mode `reconcile`), write status, Events and audit rows.
//! Deleting the OrgImport removes its children through ownerReference garbage collection.

pub mod build;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::orgtemplate::policy::{self, Policy, Refusal};
use crate::orgtemplate::{self, Plan, TemplateError};
use crate::resources::{
    Condition, ConditionStatus, OrgImport, OrgImportCounts, OrgImportMode, OrgImportStatus,
    ResolvedRevision, Workspace,
};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use build::{Child, Existing, ORG_LABEL, TREE_PATH};

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
        .reconcile_on(child_triggers(client))
        .graceful_shutdown_on(shutdown.wait())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The owning OrgImport of a child whose spec changed (generation) or that was deleted: the
/// import puts it back. Status updates (heartbeats) do not trigger anything.
fn child_triggers(client: Client) -> impl futures::Stream<Item = ObjectRef<OrgImport>> + Send {
    let api: Api<Workspace> = Api::all(client);
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    watcher(api, watcher::Config::default().labels(ORG_LABEL)).filter_map(move |ev| {
        let owner = |w: &Workspace| {
            w.owner_references()
                .iter()
                .find(|o| o.kind == "OrgImport" && o.api_version == crate::resources::API_VERSION)
                .map(|o| ObjectRef::new(&o.name).within(&w.namespace().unwrap_or_default()))
        };
        let out = match ev {
            Ok(watcher::Event::InitApply(w)) => {
                generations.insert(w.uid().unwrap_or_default(), w.metadata.generation);
                None
            }
            Ok(watcher::Event::Apply(w)) => {
                let before = generations.insert(w.uid().unwrap_or_default(), w.metadata.generation);
                (before != Some(w.metadata.generation))
                    .then(|| owner(&w))
                    .flatten()
            }
            Ok(watcher::Event::Delete(w)) => {
                generations.remove(&w.uid().unwrap_or_default());
                owner(&w)
            }
            _ => None,
        };
        futures::future::ready(out)
    })
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
    let result = match import(&org, &ctx).await {
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

/// What a pass is about, for status, Events and audit rows.
struct Pass<'a> {
    ctx: &'a Context,
    org: &'a OrgImport,
    ns: String,
    generation: i64,
    prev: OrgImportStatus,
    /// A new import (spec or template result changed): audit rows are recorded.
    is_new: bool,
    started: Instant,
    template_name: String,
    /// Digest of the planned children, once the template loaded.
    digest: Option<String>,
    /// Workspaces the template policy refused (ADR 0039).
    refusals: Vec<Refusal>,
}

impl Pass<'_> {
    fn mode(&self) -> &'static str {
        match self.org.spec.mode {
            OrgImportMode::Merge => "merge",
            OrgImportMode::Reconcile => "reconcile",
        }
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn audit(&self, event: &str, data: Value) {
        self.ctx
            .audit
            .record(event, &self.ns, &self.org.name_any(), data)
            .await;
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        crate::controllers::report::publish(
            &self.ctx.recorder,
            self.org.object_ref(&()),
            type_,
            reason,
            note,
            "Import",
        );
    }

    /// Writes `next` unless nothing changed.
    async fn write(&self, next: &OrgImportStatus) -> Result<(), OrgImportError> {
        if *next == self.prev {
            return Ok(());
        }
        let api: Api<OrgImport> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        api.patch_status(
            &self.org.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status_patch(next) })),
        )
        .await?;
        Ok(())
    }

    /// Ready=False with `reason`; an Event when the reason or message changed; the failed row
    /// when this pass recorded a started row. Children are left as they are.
    async fn fail(
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
    fn held(&self) -> BTreeSet<String> {
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

/// The whole status as a merge patch (every field set or nulled).
fn status_patch(s: &OrgImportStatus) -> Value {
    crate::controllers::report::owned_fields(
        s,
        &[
            "observedGeneration",
            "conditions",
            "counts",
            "revisions",
            "inventory",
            "missingEnv",
            "planDigest",
            "importInProgress",
            "warnings",
        ],
    )
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
pub const ORG_PLUGIN_LABEL: &str = "molecule.ai/org-plugin";

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
struct Observed {
    workspaces: BTreeMap<String, Workspace>,
    secrets: BTreeMap<String, Secret>,
    /// Every Workspace, with whether this import owns it.
    existing: Vec<Existing>,
    /// PluginInstalls made from templates' `plugins:` lists, by workspace name.
    plugins: BTreeMap<String, Vec<crate::resources::PluginInstall>>,
}

async fn observe(ctx: &Context, ns: &str, uid: &str) -> Result<Observed, OrgImportError> {
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
fn clashes(children: &[Child], seen: &Observed, uid: &str) -> Vec<String> {
    let mut out = build::conflicts(children, &seen.existing);
    out.extend(children.iter().filter_map(|c| {
        let s = seen.secrets.get(&c.secret_name())?;
        (c.secret.is_some() && !owned_by(&s.metadata, uid)).then(|| c.secret_name())
    }));
    out
}

/// Applies every child, `APPLY_CONCURRENCY` at a time; counts what happened.
async fn apply_children(
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
async fn prune_children(
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

async fn import(org: &OrgImport, ctx: &Context) -> Result<Action, OrgImportError> {
    if org.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children.
        return Ok(Action::await_change());
    }
    let uid = org.uid().ok_or(OrgImportError::NoUid)?;
    let ns = org.namespace().unwrap_or_else(|| "default".into());
    let mut pass = Pass {
        ctx,
        org,
        ns: ns.clone(),
        generation: org.metadata.generation.unwrap_or(1),
        prev: org.status.clone().unwrap_or_default(),
        is_new: false,
        started: Instant::now(),
        template_name: String::new(),
        digest: None,
        refusals: vec![],
    };
    // Files do not trigger watches: dir and git sources are read again after a while.
    let inline = org.spec.source.template.is_some();
    let retry = if inline {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(60))
    };

    // 1. Load and plan the template (reads files, may run git) and build the children.
    let source = match build::source_of(&org.spec) {
        Ok(s) => s,
        Err(msg) => {
            pass.fail("InvalidSource", msg, vec![], None).await?;
            return Ok(Action::await_change());
        }
    };
    let policy = match ctx.settings.policy.with(&overrides(org)) {
        Ok(p) => p,
        Err(e) => {
            pass.fail("InvalidPolicy", format!("spec.policy: {e}"), vec![], None)
                .await?;
            return Ok(Action::await_change());
        }
    };
    let options = ctx.settings.options.clone();
    // The template policy is checked with the plan (it resolves host paths: blocking I/O).
    let loaded = tokio::task::spawn_blocking(move || {
        orgtemplate::load_plan(&options, &source).map(|plan| {
            let refusals = policy::check(&policy, &plan, |p| std::fs::canonicalize(p).ok());
            (plan, refusals)
        })
    })
    .await
    .map_err(|_| OrgImportError::Interrupted)?;
    let plan = match loaded {
        Ok((mut p, refusals)) => {
            // 1b. Refused workspaces (and their subtrees) are left out of the plan; the rest
            // of the org is imported (ADR 0039).
            p.workspaces
                .retain(|w| !refusals.iter().any(|r| r.key == w.key));
            pass.refusals = refusals;
            p
        }
        Err(e) => {
            tracing::info!(org = %org.name_any(), category = e.category(), error = %e, "org template could not be loaded");
            pass.fail(e.category(), e.to_string(), vec![], None).await?;
            return if e.is_transient() {
                Err(e.into())
            } else {
                Ok(retry)
            };
        }
    };
    pass.template_name = plan.name.clone();
    let children = build::children(org, &plan);
    let digest = build::digest(&children);

    // 2. A new pass when the spec or the template's result changed; started is recorded after
    // the parse (ADR 0010) and after the in-progress mark (crash-safe pairing).
    pass.is_new = pass.prev.observed_generation != Some(pass.generation)
        || pass.prev.plan_digest.as_deref() != Some(digest.as_str());
    pass.digest = Some(digest.clone());
    if pass.prev.import_in_progress.is_some() {
        // The last pass died between its started row and its end (kill -9): close it.
        pass.audit(
            "org.import.failed",
            json!({"name": plan.name, "mode": pass.mode(), "error": "interrupted: the controller stopped during the import", "reason": "Interrupted"}),
        )
        .await;
        pass.prev.import_in_progress = None;
        pass.is_new = true;
    }
    if pass.is_new {
        let mut marked = pass.prev.clone();
        marked.import_in_progress = Some(digest.clone());
        pass.write(&marked).await?;
        pass.prev = marked;
        pass.audit("org.import.started", pass.started_data(&plan, false))
            .await;
    }

    // 3. Env preflight over the whole tree before anything is created.
    if !org.spec.force {
        let available = global_env(&ctx.client, &ns).await?;
        let pf = orgtemplate::preflight(&plan, &available);
        if !pf.ok() {
            let msg = format!("missing required env: {}", pf.missing_env.join(", "));
            pass.fail("MissingEnv", msg, pf.missing_env, Some(&plan))
                .await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    }

    // 4. Nothing is applied when a name belongs to someone else.
    let seen = observe(ctx, &ns, &uid).await?;
    let taken = clashes(&children, &seen, &uid);
    if !taken.is_empty() {
        let msg = format!(
            "these names are already used by objects this import does not own: {}",
            taken.join(", ")
        );
        pass.fail("NameConflict", msg, vec![], Some(&plan)).await?;
        return Ok(retry);
    }

    // 5. Apply every child (server-side apply: re-applying the same tree is a no-op).
    let mut counts = match apply_children(ctx, &ns, &children, &seen).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("applying the children failed: {e}");
            pass.fail("ApplyFailed", msg, vec![], Some(&plan)).await?;
            return Err(e);
        }
    };
    counts.skipped = plan.skipped as i64;
    counts.refused = pass.refusals.len() as i64;
    counts.desired += counts.refused;

    // 6. Prune (mode reconcile): only what this import owns, never all because the tree came
    // out empty (ADR 0010).
    let mut prune = build::prune(
        org.spec.mode == OrgImportMode::Reconcile,
        &children,
        &seen.existing,
    );
    // A refused workspace that exists from an earlier pass is neither changed nor deleted.
    let held = pass.held();
    let (hold, delete): (Vec<String>, Vec<String>) = std::mem::take(&mut prune.delete)
        .into_iter()
        .partition(|n| held.contains(n));
    prune.delete = delete;
    prune.keep.extend(hold);
    counts.pruned = prune_children(ctx, &ns, &uid, &children, &prune, &seen).await?;
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

    // 7. Status, Events, audit.
    pass.finish(&plan, &children, counts, &prune, &seen).await?;
    Ok(if inline {
        Action::await_change()
    } else {
        Action::requeue(ctx.settings.resync)
    })
}

impl Pass<'_> {
    fn started_data(&self, plan: &Plan, resync: bool) -> Value {
        let mut d = json!({"name": plan.name, "mode": self.mode(), "source": org_source_kind(self.org), "desired": plan.workspaces.len(), "skipped": plan.skipped});
        if resync {
            d["resync"] = json!(true);
        }
        d
    }

    /// Writes the successful status; the Imported Event and the completed row when this was an
    /// import (or a resync that changed something, which then gets its started row too).
    async fn finish(
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
