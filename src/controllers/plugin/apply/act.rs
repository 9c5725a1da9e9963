//! The act and report steps of a PluginInstall pass: install the fetched revision (ADR 0015),
//! then write status, request the restart of a cold change, and publish metrics, Events and
//! the audit row.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::super::install::{self, InstallError, Installed};
use super::super::plan;
use super::super::{RESYNC, short};
use super::{Container, Download, Pass, Planned, Stop};
use crate::plugins::{Change, Fetched, Origin, Refusal};
use crate::resources::{ConditionStatus, PendingInstall, PluginInstall, RestartClass, Workspace};

/// A finished install and whether it ends with a restart.
pub(super) struct Outcome {
    done: Installed,
    restart: bool,
}

impl Outcome {
    /// `cold`, `hot` or `unchanged`: the metric label.
    fn class_label(&self) -> &'static str {
        match (self.done.change, self.restart) {
            (_, true) => "cold",
            (Change::Hot, false) => "hot",
            _ => "unchanged",
        }
    }

    /// How the status message describes the change.
    fn how(&self) -> &'static str {
        match self.class_label() {
            "cold" => "cold: the workspace restarts",
            "hot" => "hot: no restart",
            _ => "unchanged",
        }
    }

    /// Whether this pass changed anything worth an Event and an audit row.
    fn changed(&self, changed_sha: bool) -> bool {
        self.done.change != Change::Unchanged || changed_sha || self.restart
    }
}

impl Pass {
    /// Act: install (ADR 0015). The pending record, written first, makes an install
    /// interrupted after its swap finish cold on the retry.
    pub(super) async fn install(
        &mut self,
        ws: &Workspace,
        c: &Container,
        planned: &Planned,
        download: &Download,
    ) -> Result<Outcome, Stop> {
        let fetched = &download.fetched;
        let interrupted = self.interrupted_uncovered(ws, c, fetched);
        self.next.pending = Some(PendingInstall {
            sha: fetched.sha.clone(),
            container_id: c.id.clone(),
            started_at: self.now.clone(),
        });
        let installing = format!(
            "installing {} at {}",
            fetched.meta.name,
            short(&fetched.sha)
        );
        self.set_ready(ConditionStatus::False, "Installing", &installing);
        self.write(&self.next).await?;
        self.pi = Arc::new(PluginInstall {
            status: Some(self.next.clone()),
            ..(*self.pi).clone()
        });
        let result = install::install(
            self.ctx.backend.as_ref(),
            &c.w,
            c.method,
            &fetched.meta.name,
            &fetched.sha,
            &fetched.tree,
            self.ctx.settings.failpoints,
        )
        .await;
        match result {
            // Without its marker the new version is not loaded: the restart waits for the
            // retry that writes it (the kept pending record makes that retry restart).
            Ok(done) => Ok(Outcome {
                restart: !done.marker_missing && plan::restart_needed(done.change, interrupted),
                done,
            }),
            Err(InstallError::Backend(e)) => Err(e.into()),
            Err(InstallError::Step(f)) => {
                self.ctx.metrics.inc(
                    "molecule_plugin_install_failures_total",
                    &[("reason", f.reason)],
                );
                Err(self.backing_off(planned, Refusal::new(f.reason, f.message)))
            }
        }
    }

    /// Act, on a Pod workspace: the plugin's files (with their `.complete` marker) go into the
    /// workspace's files Secret; the restart the report requests lets the init container place
    /// them in `/configs/plugins/<name>` (ADR 0057). Always cold.
    pub(super) async fn place_for_next_start(
        &mut self,
        ws: &Workspace,
        planned: &Planned,
        download: &Download,
    ) -> Result<(Container, Outcome), Stop> {
        let fetched = &download.fetched;
        let Some((backend, w)) = self.ctx.kubernetes.clone().zip(super::super::wref(ws)) else {
            return Err(Stop::refused(Refusal::new(
                "BackendUnsupported",
                format!(
                    "workspace {} runs as a Pod, but this process does not run the kubernetes backend",
                    ws.name_any()
                ),
            )));
        };
        let id = match backend.inspect(&w).await? {
            crate::backends::Presence::Running { container_id, .. } => container_id,
            _ => String::new(),
        };
        let files =
            crate::controllers::plugin::seed::files_of(std::slice::from_ref(fetched), usize::MAX);
        if files.is_empty() {
            return Err(self.backing_off(
                planned,
                Refusal::new("StageFailed", "the plugin has a path that cannot be placed"),
            ));
        }
        backend.write_files(&w, &files).await?;
        let done = Installed {
            change: Change::Cold,
            digest: crate::plugins::tree::tree_digest(&fetched.tree.hashes()),
            marker_missing: false,
            timings: Default::default(),
        };
        let container = Container {
            w,
            id,
            method: install::Method::Shell,
            pod: true,
        };
        Ok((
            container,
            Outcome {
                done,
                restart: true,
            },
        ))
    }

    /// An earlier attempt at this sha in this container stopped after its swap and no restart
    /// has covered it since.
    fn interrupted_uncovered(&self, ws: &Workspace, c: &Container, fetched: &Fetched) -> bool {
        let restarted_at = ws
            .annotations()
            .get(crate::resources::names::RESTART_ANNOTATION)
            .map(String::as_str);
        self.before
            .pending
            .as_ref()
            .filter(|p| p.container_id == c.id && p.sha == fetched.sha)
            .is_some_and(|p| !plan::restart_covers(restarted_at, &p.started_at))
    }

    /// Report: status, restart request, removal of a plugin the source no longer names,
    /// metrics, Events, audit row, the queued updates' phases.
    pub(super) async fn report(
        &mut self,
        ws: &Workspace,
        c: &Container,
        planned: &Planned,
        origin: &Origin,
        download: &Download,
        outcome: Outcome,
    ) -> Result<Action, Stop> {
        let changed_sha = self.before.installed_sha.as_ref() != Some(&download.fetched.sha);
        let msg = self.record_installed(c, origin, download, &outcome, changed_sha);
        let action = self.settle(planned, &outcome, &msg);
        if outcome.restart {
            // A Pod's plugin lands only with a restart that follows its write: two within a
            // second must not collapse into one annotation value.
            let stamp = if c.pod {
                crate::util::now_micro()
            } else {
                self.now.clone()
            };
            super::super::request_restart(&self.ctx, ws, &stamp).await?;
        }
        self.write(&self.next).await?;
        self.remove_previous(c, &download.fetched.meta.name).await;
        self.observe(ws, download, &outcome);
        self.announce(ws, planned, download, &outcome, changed_sha, msg)
            .await;
        self.sync_updates(Some(&download.fetched.sha)).await?;
        Ok(action)
    }

    /// The installed revision into the status; returns the Ready message.
    fn record_installed(
        &mut self,
        c: &Container,
        origin: &Origin,
        download: &Download,
        outcome: &Outcome,
        changed_sha: bool,
    ) -> String {
        let (fetched, done, next) = (&download.fetched, &outcome.done, &mut self.next);
        let meta = &fetched.meta;
        if !done.marker_missing {
            next.pending = None;
        }
        next.installed_sha = Some(fetched.sha.clone());
        next.installed_from = Some(origin.key());
        next.installed_ref = download.ref_name.clone();
        next.plugin_name = Some(meta.name.clone());
        next.version = meta.version.clone();
        next.content_digest = Some(done.digest.clone());
        next.installed_container_id = Some(c.id.clone());
        if done.change != Change::Unchanged || outcome.restart {
            next.last_restart_class = Some(if outcome.restart {
                RestartClass::Cold
            } else {
                RestartClass::Hot
            });
        }
        if done.change != Change::Unchanged || changed_sha {
            next.installed_at = Some(self.now.clone());
        }
        let version = meta
            .version
            .as_deref()
            .map(|v| format!("{v} "))
            .unwrap_or_default();
        format!(
            "installed {} {version}at {} ({})",
            meta.name,
            short(&fetched.sha),
            outcome.how()
        )
    }

    /// The Ready condition and the next pass: installed (resync later), or in place without
    /// its `.complete` marker (retry with backoff).
    fn settle(&mut self, planned: &Planned, outcome: &Outcome, msg: &str) -> Action {
        if outcome.done.marker_missing {
            let wait = self
                .ctx
                .failed(&self.uid, &planned.attempt_key, "MarkerMissing");
            self.set_ready(
                ConditionStatus::False,
                "MarkerMissing",
                "the new version is in place but its .complete marker could not be written; retrying",
            );
            Action::requeue(wait)
        } else {
            self.ctx.succeeded(&self.uid);
            self.set_ready(ConditionStatus::True, "Installed", msg);
            Action::requeue(RESYNC)
        }
    }

    /// The source now names another plugin: the old one leaves.
    async fn remove_previous(&self, c: &Container, name: &str) {
        let Some(old) = self.before.plugin_name.as_ref().filter(|o| *o != name) else {
            return;
        };
        let removed = match (&self.ctx.kubernetes, c.pod) {
            (Some(k), true) => install::tombstone(k.as_ref(), &c.w, old)
                .await
                .map_err(InstallError::from),
            _ => install::uninstall(self.ctx.backend.as_ref(), &c.w, c.method, old).await,
        };
        if let Err(e) = removed {
            tracing::warn!(plugininstall = %self.pi.name_any(), old = %old, error = %e, "could not remove the previous plugin");
        }
    }

    /// Step timings as metrics and a log line.
    fn observe(&self, ws: &Workspace, download: &Download, outcome: &Outcome) {
        let t = outcome.done.timings;
        for (step, d) in [
            ("fetch", download.took),
            ("stage", t.stage),
            ("prepare", t.prepare),
            ("swap", t.swap),
        ] {
            self.ctx.metrics.observe(
                "molecule_plugin_install_seconds",
                &[("step", step), ("change", outcome.class_label())],
                d.as_secs_f64(),
            );
        }
        tracing::info!(
            event = "plugin.installed",
            plugininstall = %self.pi.name_any(),
            workspace = %ws.name_any(),
            plugin = %download.fetched.meta.name,
            sha = %download.fetched.sha,
            change = ?outcome.done.change,
            restart = outcome.restart,
            fetch_ms = download.took.as_millis() as u64,
            stage_ms = t.stage.as_millis() as u64,
            prepare_ms = t.prepare.as_millis() as u64,
            swap_ms = t.swap.as_millis() as u64,
            "plugin installed"
        );
    }

    /// The Installed (or Updated) Event and audit row when something changed; a Warning when
    /// the marker is missing.
    async fn announce(
        &self,
        ws: &Workspace,
        planned: &Planned,
        download: &Download,
        outcome: &Outcome,
        changed_sha: bool,
        msg: String,
    ) {
        let name = &download.fetched.meta.name;
        if outcome.changed(changed_sha) {
            let reason = if planned.update.is_some() {
                "Updated"
            } else {
                "Installed"
            };
            self.event(EventType::Normal, reason, msg);
            let restart = if outcome.restart { "cold" } else { "hot" };
            self.ctx
                .audit
                .record(
                    "plugin.installed",
                    &self.ns,
                    &self.pi.name_any(),
                    json!({"workspace": ws.name_any(), "plugin": name, "sha": download.fetched.sha, "restart": restart, "update": planned.update}),
                )
                .await;
        }
        if outcome.done.marker_missing {
            self.event(EventType::Warning, "MarkerMissing", format!("{name} is in place without its .complete marker; loaders skip it until the retry writes it"));
        }
    }
}
