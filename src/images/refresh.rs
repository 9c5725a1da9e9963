//! Refresh and roll (ADR 0032, issue point 5): make a runtime's newest image available
//! (pull, or rebuild when the template moved) and move its workspaces onto it one at a time,
//! each back Online before the next. The same machinery serves the auto-refresh ticks of the
//! Runtime controller and `POST /admin/workspace-images/refresh`.
//!
//! Auto-refresh bookkeeping ([`Seen`], [`tick`]) follows the original: the last observed
//! fingerprint per runtime is kept in memory, the first observation only seeds, and a failed
//! refresh rolls the seen value back so that the next tick retries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::{ImageError, Images, Purpose, Resolved};
use crate::resources::names::RESTART_ANNOTATION;
use crate::resources::{Runtime, Workspace, WorkspacePhase, WorkspaceStatus};

/// Last observed fingerprint (registry digest, template commit) per runtime.
#[derive(Default)]
pub struct Seen(Mutex<HashMap<String, String>>);

/// What one observation means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The first one for this runtime: recorded, nothing else.
    Seeded,
    Unchanged,
    /// Different from the last one, which is returned for a roll-back.
    Changed {
        previous: String,
    },
}

impl Seen {
    /// Records `fingerprint` for `runtime` and says how it compares with the last one.
    pub fn observe(&self, runtime: &str, fingerprint: &str) -> Observation {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match m.insert(runtime.to_string(), fingerprint.to_string()) {
            None => Observation::Seeded,
            Some(p) if p == fingerprint => Observation::Unchanged,
            Some(previous) => Observation::Changed { previous },
        }
    }

    /// Puts `previous` back (after a failed refresh), so the next tick sees the change again.
    pub fn roll_back(&self, runtime: &str, previous: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(runtime.to_string(), previous.to_string());
    }

    /// Drops a runtime (deleted, or auto-refresh turned off).
    pub fn forget(&self, runtime: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(runtime);
    }

    pub fn get(&self, runtime: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(runtime)
            .cloned()
    }
}

/// The outcome of one auto-refresh tick.
#[derive(Debug)]
pub enum Tick<T, E> {
    Seeded,
    Unchanged,
    Refreshed(T),
    /// The refresh failed; the seen fingerprint was rolled back.
    Failed(E),
}

/// One auto-refresh tick for `runtime` having observed `fingerprint`: seeds, does nothing, or
/// runs `refresh` — rolling the seen value back when it fails.
pub async fn tick<T, E, F, Fut>(
    seen: &Seen,
    runtime: &str,
    fingerprint: &str,
    refresh: F,
) -> Tick<T, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match seen.observe(runtime, fingerprint) {
        Observation::Seeded => Tick::Seeded,
        Observation::Unchanged => Tick::Unchanged,
        Observation::Changed { previous } => match refresh().await {
            Ok(t) => Tick::Refreshed(t),
            Err(e) => {
                seen.roll_back(runtime, &previous);
                Tick::Failed(e)
            }
        },
    }
}

/// What `POST /admin/workspace-images/refresh` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefreshReport {
    /// Images made available (pulled, rebuilt or found current), one per refreshed runtime.
    pub pulled: Vec<String>,
    pub failed: Vec<RefreshFailure>,
    /// Workspaces (`namespace/name`) moved onto the new image.
    pub recreated: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefreshFailure {
    pub runtime: String,
    pub reason: String,
    pub error: String,
}

/// Whether a workspace runs something other than `target`.
pub fn outdated(status: &WorkspaceStatus, target: &Resolved) -> bool {
    status.image.as_deref() != Some(target.image.as_str())
        || (target.digest.is_some() && status.image_digest != target.digest)
}

/// The workspaces of `runtime` a roll onto `target` restarts, in a stable order: up (Online or
/// Degraded), not paused, not being deleted, without their own `spec.image`, and outdated.
/// Others pick the new image up at their next start.
pub fn roll_candidates(
    workspaces: &[Workspace],
    runtime: &str,
    target: &Resolved,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = workspaces
        .iter()
        .filter(|w| w.spec.runtime.as_deref().unwrap_or("echo") == runtime)
        .filter(|w| w.spec.image.as_deref().is_none_or(str::is_empty))
        .filter(|w| !w.spec.paused && w.metadata.deletion_timestamp.is_none())
        .filter(|w| {
            w.status.as_ref().is_some_and(|s| {
                matches!(
                    s.phase,
                    Some(WorkspacePhase::Online | WorkspacePhase::Degraded)
                ) && outdated(s, target)
            })
        })
        .map(|w| (w.namespace().unwrap_or_default(), w.name_any()))
        .collect();
    out.sort();
    out
}

/// Refreshes the named runtimes (all Runtime records when `runtimes` is empty): each gets its
/// newest image and, with `recreate`, a roll. One runtime's failure never stops the others.
pub async fn refresh(
    images: &Images,
    runtimes: &[String],
    recreate: bool,
) -> Result<RefreshReport, ImageError> {
    let api: Api<Runtime> = Api::all(images.client.clone());
    let records = api.list(&ListParams::default()).await?.items;
    let mut names: Vec<String> = if runtimes.is_empty() {
        records.iter().map(|r| r.name_any()).collect()
    } else {
        runtimes.to_vec()
    };
    names.sort();
    names.dedup();
    let mut report = RefreshReport::default();
    for name in names {
        let Some(record) = records.iter().find(|r| r.name_any() == name) else {
            report.failed.push(RefreshFailure {
                runtime: name.clone(),
                reason: "UnknownRuntime".into(),
                error: format!("no Runtime named {name:?}"),
            });
            continue;
        };
        match refresh_one(images, record, recreate).await {
            Ok((resolved, recreated)) => {
                report.pulled.push(resolved.image);
                report.recreated.extend(recreated);
            }
            Err(e) => report.failed.push(RefreshFailure {
                runtime: name.clone(),
                reason: e.category().into(),
                error: images.mask(&e.to_string()),
            }),
        }
    }
    Ok(report)
}

/// Refreshes one runtime: its newest image (always pulled; rebuilt when the template moved)
/// and, with `recreate`, a roll of its outdated workspaces. Returns the image and the rolled
/// workspaces.
pub async fn refresh_one(
    images: &Images,
    record: &Runtime,
    recreate: bool,
) -> Result<(Resolved, Vec<String>), ImageError> {
    let name = record.name_any();
    let resolved = images.ensure(&name, Some(record), Purpose::Refresh).await?;
    let recreated = if recreate {
        roll(images, &name, &resolved).await?
    } else {
        vec![]
    };
    Ok((resolved, recreated))
}

/// Restarts the outdated workspaces of `runtime` one at a time through the restart annotation,
/// waiting for each to be back Online (on the new image) before the next. A workspace that
/// fails or times out stops the roll: a bad image never takes the whole runtime down.
pub async fn roll(
    images: &Images,
    runtime: &str,
    target: &Resolved,
) -> Result<Vec<String>, ImageError> {
    let lock = images.roll_lock(runtime);
    let _guard = lock.lock().await;
    let all: Api<Workspace> = Api::all(images.client.clone());
    let list = all.list(&ListParams::default()).await?.items;
    let candidates = roll_candidates(&list, runtime, target);
    let mut done = vec![];
    for (ns, name) in candidates {
        let api: Api<Workspace> = Api::namespaced(images.client.clone(), &ns);
        let stamp = crate::util::now_micro();
        let patch = json!({"metadata": {"annotations": {RESTART_ANNOTATION: stamp}}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        tracing::info!(runtime, workspace = %format!("{ns}/{name}"), image = %target.image, "roll: restarting onto the new image");
        images.metrics.inc(
            "molecule_image_rolled_workspaces_total",
            &[("runtime", runtime)],
        );
        if wait_online(images, &api, &name, &stamp, runtime).await? {
            done.push(format!("{ns}/{name}"));
        }
    }
    Ok(done)
}

/// Waits until the workspace acted on restart `stamp` and is Online (or Degraded) again.
/// `Ok(false)` when it was deleted meanwhile.
async fn wait_online(
    images: &Images,
    api: &Api<Workspace>,
    name: &str,
    stamp: &str,
    runtime: &str,
) -> Result<bool, ImageError> {
    let deadline = Instant::now() + images.settings.roll_timeout;
    let roll_error = |detail: String| ImageError::Roll {
        runtime: runtime.to_string(),
        detail,
    };
    loop {
        let ws = match api.get_opt(name).await? {
            Some(w) if w.meta().deletion_timestamp.is_none() => w,
            _ => return Ok(false),
        };
        let st = ws.status.clone().unwrap_or_default();
        if st.restarted_at.as_deref() == Some(stamp) {
            match st.phase {
                Some(WorkspacePhase::Online | WorkspacePhase::Degraded) => return Ok(true),
                Some(WorkspacePhase::Failed) => {
                    return Err(roll_error(format!(
                        "workspace {name} failed after the restart: {}",
                        st.message.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        } else if st.phase == Some(WorkspacePhase::Failed)
            && ws.annotations().get(RESTART_ANNOTATION).map(String::as_str) == Some(stamp)
        {
            return Err(roll_error(format!(
                "workspace {name} failed before it restarted: {}",
                st.message.unwrap_or_default()
            )));
        }
        if Instant::now() >= deadline {
            return Err(roll_error(format!(
                "workspace {name} was not back Online within {}s",
                images.settings.roll_timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ImageSource, WorkspaceSpec};

    fn target(image: &str, digest: Option<&str>) -> Resolved {
        Resolved {
            image: image.into(),
            digest: digest.map(str::to_string),
            source: ImageSource::Registry,
            built_from_sha: None,
            available: true,
            fingerprint: digest.unwrap_or(image).into(),
            note: None,
        }
    }

    fn ws(
        name: &str,
        runtime: Option<&str>,
        phase: WorkspacePhase,
        image: &str,
        digest: &str,
    ) -> Workspace {
        let mut w = Workspace::new(
            name,
            WorkspaceSpec {
                runtime: runtime.map(str::to_string),
                ..Default::default()
            },
        );
        w.metadata.namespace = Some("ns".into());
        w.status = Some(WorkspaceStatus {
            phase: Some(phase),
            image: Some(image.into()),
            image_digest: Some(digest.into()),
            ..Default::default()
        });
        w
    }

    #[test]
    fn the_first_observation_seeds_and_a_change_is_reported_once() {
        let s = Seen::default();
        assert_eq!(s.observe("a", "d1"), Observation::Seeded);
        assert_eq!(s.observe("a", "d1"), Observation::Unchanged);
        assert_eq!(
            s.observe("a", "d2"),
            Observation::Changed {
                previous: "d1".into()
            }
        );
        assert_eq!(s.observe("a", "d2"), Observation::Unchanged);
        // Runtimes are independent.
        assert_eq!(s.observe("b", "d9"), Observation::Seeded);
        s.forget("a");
        assert_eq!(s.observe("a", "d3"), Observation::Seeded);
    }

    #[tokio::test]
    async fn a_failed_refresh_rolls_back_so_the_next_tick_retries() {
        let s = Seen::default();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let run = |ok: bool| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { if ok { Ok(()) } else { Err("pull failed") } }
        };
        assert!(matches!(
            tick(&s, "a", "d1", || run(true)).await,
            Tick::Seeded
        ));
        assert!(matches!(
            tick(&s, "a", "d1", || run(true)).await,
            Tick::Unchanged
        ));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(matches!(
            tick(&s, "a", "d2", || run(false)).await,
            Tick::Failed("pull failed")
        ));
        assert_eq!(s.get("a").as_deref(), Some("d1"), "rolled back");
        // Another runtime's failure does not touch this one.
        assert!(matches!(
            tick(&s, "b", "x1", || run(true)).await,
            Tick::Seeded
        ));
        assert!(matches!(
            tick(&s, "b", "x2", || run(false)).await,
            Tick::Failed(_)
        ));
        assert!(matches!(
            tick(&s, "a", "d2", || run(true)).await,
            Tick::Refreshed(())
        ));
        assert_eq!(s.get("a").as_deref(), Some("d2"));
        assert!(matches!(
            tick(&s, "a", "d2", || run(true)).await,
            Tick::Unchanged
        ));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn roll_candidates_are_the_outdated_up_workspaces_of_the_runtime() {
        let t = target("reg/x:latest", Some("sha256:new"));
        let mut paused = ws(
            "paused",
            Some("x"),
            WorkspacePhase::Online,
            "reg/x:latest",
            "sha256:old",
        );
        paused.spec.paused = true;
        let mut own_image = ws(
            "own",
            Some("x"),
            WorkspacePhase::Online,
            "reg/x:latest",
            "sha256:old",
        );
        own_image.spec.image = Some("other/img:1".into());
        let list = vec![
            ws(
                "b-old",
                Some("x"),
                WorkspacePhase::Online,
                "reg/x:latest",
                "sha256:old",
            ),
            ws(
                "a-degraded",
                Some("x"),
                WorkspacePhase::Degraded,
                "reg/x:latest",
                "sha256:old",
            ),
            ws(
                "current",
                Some("x"),
                WorkspacePhase::Online,
                "reg/x:latest",
                "sha256:new",
            ),
            ws(
                "starting",
                Some("x"),
                WorkspacePhase::Provisioning,
                "reg/x:latest",
                "sha256:old",
            ),
            ws(
                "other-runtime",
                Some("y"),
                WorkspacePhase::Online,
                "reg/x:latest",
                "sha256:old",
            ),
            ws(
                "echo-default",
                None,
                WorkspacePhase::Online,
                "reg/x:latest",
                "sha256:old",
            ),
            paused,
            own_image,
        ];
        assert_eq!(
            roll_candidates(&list, "x", &t),
            vec![
                ("ns".to_string(), "a-degraded".to_string()),
                ("ns".to_string(), "b-old".to_string())
            ]
        );
        assert_eq!(
            roll_candidates(&list, "echo", &t),
            vec![("ns".to_string(), "echo-default".to_string())]
        );
        // A local build changes the tag: the image decides.
        let local = target("molecule-local/workspace-template-x:bbbbbbbbbbbb", None);
        let on_old = ws(
            "w",
            Some("x"),
            WorkspacePhase::Online,
            "molecule-local/workspace-template-x:aaaaaaaaaaaa",
            "sha256:id",
        );
        assert!(outdated(on_old.status.as_ref().unwrap(), &local));
        let on_new = ws(
            "w",
            Some("x"),
            WorkspacePhase::Online,
            "molecule-local/workspace-template-x:bbbbbbbbbbbb",
            "sha256:id",
        );
        assert!(!outdated(on_new.status.as_ref().unwrap(), &local));
    }
}
