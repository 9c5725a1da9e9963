//! One pass of the PluginInstall controller as named steps (ADR 0015, 0016):
//!
//! - **observe**: the record as stored now, its workspace, the workspace's container;
//! - **validate**: the spec (source, track, interval, requester), the workspace (not external,
//!   not on the control plane, the org's allowlist), then the fetched plugin;
//! - **plan**: the target revision (drift, canaries first) and whether anything is to do;
//! - **act**: reuse what a new container still holds, or fetch and install;
//! - **report**: status, restart request, Events, audit rows, the queued updates' phases.
//!
//! A step that ends the pass returns a [`Stop`]: a refusal (reported as Ready False by
//! [`Pass::refuse`]), a finished pass, or an error for the error policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

mod act;

use super::install::{self, InstallError, Method};
use super::plan::{self, Target, UpdateView};
use super::status::{self, Overrides};
use super::{Context, PluginError, RESYNC, short};
use crate::backends::{BackendError, Presence, WorkspaceRef};
use crate::plugins::{Fetched, Origin, Refusal, Source};
use crate::resources::{ConditionStatus, PluginInstall, PluginInstallStatus, Workspace};

/// Why a pass ends before its last step.
pub(super) enum Stop {
    /// Ready False with the refusal; the update being applied (if any) is marked Failed.
    Refused {
        refusal: Refusal,
        update: Option<String>,
        action: Action,
    },
    /// Nothing more to do in this pass.
    Done(Action),
    /// For the error policy.
    Failed(PluginError),
}

impl Stop {
    /// A refusal that waits for a change of the record or the workspace.
    fn refused(refusal: Refusal) -> Stop {
        Stop::Refused {
            refusal,
            update: None,
            action: Action::await_change(),
        }
    }
}

impl From<PluginError> for Stop {
    fn from(e: PluginError) -> Self {
        Stop::Failed(e)
    }
}

impl From<kube::Error> for Stop {
    fn from(e: kube::Error) -> Self {
        Stop::Failed(e.into())
    }
}

impl From<BackendError> for Stop {
    fn from(e: BackendError) -> Self {
        Stop::Failed(e.into())
    }
}

/// The revision this pass converges to.
struct Planned {
    target: Target,
    /// The approved PluginUpdate being applied.
    update: Option<String>,
    /// Identifies the attempt for the per-record backoff.
    attempt_key: String,
    /// The container the workspace reports now.
    container_now: Option<String>,
}

/// The running container to install into.
struct Container {
    w: WorkspaceRef,
    id: String,
    method: Method,
    /// A Pod workspace: files go through the kubernetes backend's files Secret and land at the
    /// next start (ADR 0057); `method` is not used.
    pod: bool,
}

/// A fetched revision and how long the fetch took.
struct Download {
    fetched: Fetched,
    ref_name: Option<String>,
    took: Duration,
}

/// One pass over one record.
pub(super) struct Pass {
    ctx: Arc<Context>,
    /// The record with the status as last written in this pass.
    pi: Arc<PluginInstall>,
    ns: String,
    uid: String,
    generation: i64,
    now: String,
    /// The status the pass started from.
    before: PluginInstallStatus,
    /// The status being built.
    next: PluginInstallStatus,
    /// Phases of queued updates that differ from `plan::update_phase`.
    overrides: Overrides,
}

/// Entry point of the Apply branch of the finalizer.
pub(super) async fn apply(
    cached: Arc<PluginInstall>,
    ctx: Arc<Context>,
) -> Result<Action, PluginError> {
    let Some(pi) = observe_record(&ctx, &cached).await? else {
        return Ok(Action::await_change()); // gone, re-created or being deleted: events follow
    };
    let mut pass = Pass::new(ctx, pi);
    match pass.run().await {
        Ok(action) | Err(Stop::Done(action)) => Ok(action),
        Err(Stop::Refused {
            refusal,
            update,
            action,
        }) => pass.refuse(refusal, update.as_deref(), action).await,
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Observe: the record as it is now (as the Workspace controller does, ADR 0028). A pass
/// queued while the previous one ran can start before the watch cache holds that pass's status
/// write, and a status built on the stale copy would clear what it recorded (the owned fields
/// are written whole, lastRestartClass among them). None when gone, re-created or deleting.
async fn observe_record(
    ctx: &Context,
    cached: &PluginInstall,
) -> Result<Option<Arc<PluginInstall>>, PluginError> {
    let ns = cached.namespace().unwrap_or_else(|| "default".into());
    let api: Api<PluginInstall> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(crate::controllers::report::fresh(&api, cached)
        .await?
        .filter(|fresh| fresh.metadata.deletion_timestamp.is_none())
        .map(Arc::new))
}

/// Validate: the spec alone (source and tracked ref, check interval, who asked).
fn validate_spec(
    pi: &PluginInstall,
    hosts: &crate::plugins::git_hosts::GitHosts,
) -> Result<Origin, Refusal> {
    let origin = Origin::parse(
        &pi.spec.source,
        pi.spec.track.as_deref(),
        pi.spec.allow_unpinned,
    )?
    .requested(pi.spec.reinstall_requested_at.as_deref())?;
    plan::check_interval(pi.spec.check_interval.as_deref())?;
    super::check_requester(pi, &origin, hosts)?;
    Ok(origin)
}

impl Pass {
    fn new(ctx: Arc<Context>, pi: Arc<PluginInstall>) -> Self {
        let generation = pi.metadata.generation.unwrap_or(1);
        let before = pi.status.clone().unwrap_or_default();
        let mut next = before.clone();
        next.observed_generation = Some(generation);
        Pass {
            ns: pi.namespace().unwrap_or_else(|| "default".into()),
            uid: pi.uid().unwrap_or_default(),
            generation,
            now: crate::util::now_rfc3339(),
            before,
            next,
            overrides: HashMap::new(),
            ctx,
            pi,
        }
    }

    /// The steps, in order; each either hands its result on or ends the pass.
    async fn run(&mut self) -> Result<Action, Stop> {
        let origin =
            validate_spec(&self.pi, &self.ctx.settings.git_hosts).map_err(Stop::refused)?;
        let ws = self.observe_workspace().await?;
        let allowed = self.validate_workspace(&ws, &origin).await?;
        let planned = self.plan(&ws, &origin);
        let on_pods = self.ctx.on_pods(&ws);
        self.skip_if_current(&planned, on_pods).await?;
        self.skip_if_backing_off(&planned)?;
        if on_pods {
            // A Pod: no exec; the plugin waits in the workspace's files Secret and the
            // restart's init container places it (ADR 0057).
            let download = self
                .fetch_valid(&ws, allowed.as_deref(), &planned, &origin)
                .await?;
            let (container, done) = self.place_for_next_start(&ws, &planned, &download).await?;
            return self
                .report(&ws, &container, &planned, &origin, &download, done)
                .await;
        }
        // A registry plugin is read before the container is touched: a local read costs less
        // than the exec that probes the container, so a plugin the registry lacks or refuses
        // costs the container nothing (an org naming one for 1,000 workspaces made 1,000
        // probes, each a process started in a container).
        let early = match origin.source {
            Source::Local(_) => Some(
                self.fetch_valid(&ws, allowed.as_deref(), &planned, &origin)
                    .await?,
            ),
            Source::Git(_) => None,
        };
        let container = self.observe_container(&ws).await?;
        self.reuse_if_in_place(&planned, &container).await?;
        let download = match early {
            Some(d) => d,
            None => {
                self.fetch_valid(&ws, allowed.as_deref(), &planned, &origin)
                    .await?
            }
        };
        let done = self.install(&ws, &container, &planned, &download).await?;
        self.report(&ws, &container, &planned, &origin, &download, done)
            .await
    }

    /// A refusal of `planned`'s attempt that backs off (fetch failures, refused plugins,
    /// failed steps), so a refused plugin is not fetched again on every workspace heartbeat.
    fn backing_off(&self, planned: &Planned, refusal: Refusal) -> Stop {
        let wait = self
            .ctx
            .failed(&self.uid, &planned.attempt_key, refusal.reason);
        Stop::Refused {
            refusal,
            update: planned.update.clone(),
            action: Action::requeue(wait),
        }
    }

    /// Observe: the workspace the record names (one being deleted ends the pass).
    async fn observe_workspace(&self) -> Result<Arc<Workspace>, Stop> {
        let ws_name = &self.pi.spec.workspace_ref.name;
        let Some(ws) = super::workspace(&self.ctx, &self.ns, ws_name).await? else {
            return Err(Stop::refused(Refusal::new(
                "WorkspaceNotFound",
                format!("workspace {ws_name:?} does not exist"),
            )));
        };
        if ws.metadata.deletion_timestamp.is_some() {
            return Err(Stop::Done(Action::await_change()));
        }
        Ok(ws)
    }

    /// Validate: molecule installs into this workspace (not external, ADR 0015) and its org
    /// allows the plugin, when the name is known before fetching. Returns the org's allowlist.
    async fn validate_workspace(
        &self,
        ws: &Workspace,
        origin: &Origin,
    ) -> Result<Option<Vec<String>>, Stop> {
        if let Some(r) = super::unmanaged(ws, &self.pi, self.ctx.settings.default_backend) {
            return Err(Stop::refused(r));
        }
        let allowed = super::allowlist(&self.ctx, ws).await?;
        let known_name = self.before.plugin_name.clone().or(match &origin.source {
            Source::Local(n) => Some(n.clone()),
            Source::Git(_) => None,
        });
        match (&allowed, &known_name) {
            (Some(list), Some(name)) if !list.contains(name) => {
                Err(Stop::refused(super::not_allowed(name, list)))
            }
            _ => Ok(allowed),
        }
    }

    /// Plan: the revision to converge to (ADR 0016: drift, canaries first), and the phases the
    /// queued updates show meanwhile.
    fn plan(&mut self, ws: &Workspace, origin: &Origin) -> Planned {
        let all = super::updates_in(&self.ctx, &self.ns);
        let name = self.pi.name_any();
        let mine: Vec<UpdateView> = all.iter().filter(|u| u.install == name).cloned().collect();
        let (target, hold) = plan::target(&self.before, &origin.key(), &mine, &all);
        if let (Some(why), Some(installed)) = (&hold, &self.before.installed_sha)
            && let Some(u) = plan::applicable(installed, &mine)
        {
            self.overrides
                .insert(u.name.clone(), ("WaitingForCanary", Some(why.clone())));
        }
        let container_now = ws.status.as_ref().and_then(|s| s.container_id.clone());
        let update = match &target {
            Target::Sha { update, .. } => update.clone(),
            Target::Resolve => None,
        };
        Planned {
            attempt_key: format!("{}/{target:?}/{container_now:?}", self.generation),
            target,
            update,
            container_now,
        }
    }

    /// Act: nothing to do when the target is installed in the current container. On a Pod
    /// workspace any Pod holds it (every new Pod unpacks the files Secret; ADR 0057), so a new
    /// Pod is only recorded: installing again would restart it again, for ever.
    async fn skip_if_current(&mut self, planned: &Planned, on_pods: bool) -> Result<(), Stop> {
        let b = &self.before;
        if let Target::Sha {
            sha, update: None, ..
        } = &planned.target
            && b.installed_sha.as_ref() == Some(sha)
            && (on_pods
                || (b.installed_container_id.is_some()
                    && b.installed_container_id == planned.container_now))
            && b.pending.is_none()
            && status::ready_true(b)
        {
            let sha = sha.clone();
            if on_pods {
                self.next.installed_container_id = planned.container_now.clone();
            }
            self.write(&self.next).await?;
            self.sync_updates(Some(&sha)).await?;
            return Err(Stop::Done(Action::requeue(RESYNC)));
        }
        Ok(())
    }

    /// Plan: the same attempt failed a moment ago; wait out its backoff. Otherwise the update
    /// being applied shows Applying.
    fn skip_if_backing_off(&mut self, planned: &Planned) -> Result<(), Stop> {
        if let Some(left) = self.ctx.backoff_wait(&self.uid, &planned.attempt_key) {
            return Err(Stop::Done(Action::requeue(left)));
        }
        if let Some(u) = &planned.update {
            self.overrides.insert(u.clone(), ("Applying", None));
        }
        Ok(())
    }

    /// Observe: the workspace's running container and how to install into it.
    async fn observe_container(&self, ws: &Workspace) -> Result<Container, Stop> {
        let Some(w) = super::wref(ws) else {
            return Err(Stop::Done(Action::await_change()));
        };
        let id = match self.ctx.backend.inspect(&w).await? {
            Presence::Running { container_id, .. } => container_id,
            _ => {
                let refusal = Refusal::new(
                    "WaitingForWorkspace",
                    format!("waiting for workspace {} to run a container", ws.name_any()),
                );
                return Err(Stop::Refused {
                    refusal,
                    update: None,
                    action: Action::requeue(Duration::from_secs(15)),
                });
            }
        };
        let Some(method) = self.ctx.method(&w, &id).await? else {
            return Err(Stop::refused(Refusal::new(
                "NoInstallMethod",
                "the workspace image has neither the molecule binary nor a shell with find and sha256sum to install with",
            )));
        };
        Ok(Container {
            w,
            id,
            method,
            pod: false,
        })
    }

    /// Act: a new container of an installed workspace; the volume normally still holds the
    /// plugin, and then only the container id is recorded.
    async fn reuse_if_in_place(&mut self, planned: &Planned, c: &Container) -> Result<(), Stop> {
        let b = &self.before;
        let Target::Sha {
            sha, update: None, ..
        } = &planned.target
        else {
            return Ok(());
        };
        let (Some(name), Some(digest)) = (&b.plugin_name, &b.content_digest) else {
            return Ok(());
        };
        if b.installed_sha.as_ref() != Some(sha) || b.pending.is_some() {
            return Ok(());
        }
        match install::inspect(self.ctx.backend.as_ref(), &c.w, c.method, name).await {
            Ok((Some(live), true)) if &live == digest => {
                let msg = format!(
                    "installed {name} at {} (still in place in container {})",
                    short(sha),
                    short(&c.id)
                );
                self.next.installed_container_id = Some(c.id.clone());
                self.set_ready(ConditionStatus::True, "Installed", &msg);
                self.write(&self.next).await?;
                self.sync_updates(Some(sha)).await?;
                self.ctx.succeeded(&self.uid);
                Err(Stop::Done(Action::requeue(RESYNC)))
            }
            Ok(_) | Err(InstallError::Step(_)) => {
                tracing::info!(plugininstall = %self.pi.name_any(), container = %c.id, "re-applying the plugin into the workspace's new container");
                Ok(())
            }
            Err(InstallError::Backend(e)) => Err(e.into()),
        }
    }

    /// Act: fetch the target revision (size and time bounded).
    async fn fetch(&self, planned: &Planned, origin: &Origin) -> Result<Download, Stop> {
        let t = Instant::now();
        let fetched = async {
            let (sha, ref_name) = match (&planned.target, &origin.source) {
                (Target::Sha { sha, ref_name, .. }, Source::Git(_)) => {
                    (Some(sha.clone()), ref_name.clone())
                }
                (Target::Resolve, Source::Git(_)) => {
                    let r = self.ctx.fetcher.resolve(origin).await?;
                    (Some(r.sha), r.ref_name)
                }
                (_, Source::Local(_)) => (None, None),
            };
            let f = self
                .ctx
                .fetcher
                .fetch(origin, sha.as_deref(), ref_name.as_deref())
                .await?;
            Ok::<_, Refusal>((f, ref_name))
        }
        .await;
        match fetched {
            Ok((fetched, ref_name)) => Ok(Download {
                fetched,
                ref_name,
                took: t.elapsed(),
            }),
            Err(r) => Err(self.backing_off(planned, r)),
        }
    }

    /// Act and validate: the fetched plugin, once the checks that need it pass.
    async fn fetch_valid(
        &self,
        ws: &Workspace,
        allowed: Option<&[String]>,
        planned: &Planned,
        origin: &Origin,
    ) -> Result<Download, Stop> {
        let download = self.fetch(planned, origin).await?;
        self.validate_fetched(ws, allowed, planned, origin, &download.fetched)?;
        Ok(download)
    }

    /// Validate: checks that need the fetched plugin (they back off like fetch failures).
    fn validate_fetched(
        &self,
        ws: &Workspace,
        allowed: Option<&[String]>,
        planned: &Planned,
        origin: &Origin,
        fetched: &Fetched,
    ) -> Result<(), Stop> {
        let refusal = source_changed(planned, origin, fetched)
            .or_else(|| not_allowed_or_unsupported(ws, allowed, fetched))
            .or_else(|| self.conflict(ws, fetched));
        match refusal {
            Some(r) => Err(self.backing_off(planned, r)),
            None => Ok(()),
        }
    }

    /// Another record already installs the same plugin into the same workspace.
    fn conflict(&self, ws: &Workspace, fetched: &Fetched) -> Option<Refusal> {
        let ws_name = ws.name_any();
        let name = fetched.meta.name.as_str();
        let other = self.ctx.installs.state().into_iter().find(|o| {
            o.namespace().as_deref() == Some(self.ns.as_str())
                && o.uid() != self.pi.uid()
                && o.spec.workspace_ref.name == ws_name
                && o.metadata.deletion_timestamp.is_none()
                && o.status.as_ref().and_then(|s| s.plugin_name.as_deref()) == Some(name)
        })?;
        Some(Refusal::new(
            "Conflict",
            format!(
                "PluginInstall {} already installs plugin {name} into workspace {ws_name}",
                other.name_any(),
            ),
        ))
    }
}

/// The registry changed again after the update being applied was queued; the drift loop queues
/// the newer content as its own update.
fn source_changed(planned: &Planned, origin: &Origin, fetched: &Fetched) -> Option<Refusal> {
    match (&planned.target, &origin.source) {
        (
            Target::Sha {
                sha,
                update: Some(_),
                ..
            },
            Source::Local(_),
        ) if *sha != fetched.sha => Some(Refusal::new(
            "SourceChanged",
            format!(
                "the registry content of {} changed again since this update was queued ({} now); approve the newer update",
                fetched.meta.name,
                short(&fetched.sha)
            ),
        )),
        _ => None,
    }
}

/// The org's allowlist and the plugin's runtimes, now that the name is known.
pub(super) fn not_allowed_or_unsupported(
    ws: &Workspace,
    allowed: Option<&[String]>,
    fetched: &Fetched,
) -> Option<Refusal> {
    let meta = &fetched.meta;
    let runtime = ws.spec.runtime.clone().unwrap_or_else(|| "echo".into());
    if let Some(list) = allowed.filter(|l| !l.contains(&meta.name)) {
        Some(super::not_allowed(&meta.name, list))
    } else if !meta.runtimes.is_empty() && !meta.runtimes.contains(&runtime) {
        Some(Refusal::new(
            "UnsupportedRuntime",
            format!(
                "plugin {} supports runtimes {} but workspace {} runs {runtime}",
                meta.name,
                meta.runtimes.join(", "),
                ws.name_any()
            ),
        ))
    } else {
        None
    }
}

/// Status and Events of a pass.
impl Pass {
    fn set_ready(&mut self, status: ConditionStatus, reason: &str, message: &str) {
        status::set_ready(
            &mut self.next,
            self.generation,
            &self.now,
            status,
            reason,
            message,
        );
    }

    /// Writes `next` unless the record already shows it.
    async fn write(&self, next: &PluginInstallStatus) -> Result<(), PluginError> {
        status::write_status(&self.ctx, &self.pi, next).await
    }

    fn event(&self, type_: EventType, reason: &str, note: String) {
        status::event(&self.ctx, &self.pi, type_, reason, note);
    }

    /// Brings the record's queued updates to their phases, `installed` being the sha in place.
    async fn sync_updates(&self, installed: Option<&str>) -> Result<(), PluginError> {
        status::sync_updates(&self.ctx, &self.pi, installed, &self.overrides, &self.now).await
    }

    /// Report a refusal: Ready False with the reason, a Warning Event when it is new, the
    /// update being applied (if any) marked Failed.
    async fn refuse(
        &mut self,
        r: Refusal,
        update: Option<&str>,
        action: Action,
    ) -> Result<Action, PluginError> {
        let shown = status::ready_reason(&self.pi.status.clone().unwrap_or_default());
        self.next.pending = None;
        self.set_ready(ConditionStatus::False, r.reason, &r.message);
        self.write(&self.next).await?;
        if shown != Some((r.reason.to_string(), r.message.clone())) {
            tracing::info!(plugininstall = %self.pi.name_any(), reason = r.reason, message = %r.message, "plugin install not done");
            let t = if r.reason == "WaitingForWorkspace" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            self.event(t, r.reason, r.message.clone());
        }
        let mut overrides = Overrides::new();
        if let Some(u) = update {
            overrides.insert(
                u.to_string(),
                ("Failed", Some(format!("{}: {}", r.reason, r.message))),
            );
        }
        status::sync_updates(
            &self.ctx,
            &self.pi,
            self.next.installed_sha.as_deref(),
            &overrides,
            &self.now,
        )
        .await?;
        Ok(action)
    }
}
