//! The orphan reaper on the harness: orphans go, live workspaces stay, a failed pass is retried
//! with the kit's backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::{create, metric_line, object, wait_for};
use crate::backends::simulated::SimulatedBackend;
use crate::backends::{
    BackendError, ConfigFile, ExecOutput, Managed, Presence, StartSpec, Started, Tier,
    WorkspaceBackend, WorkspaceRef,
};
use crate::controllers::reaper;
use crate::resources::Workspace;
use crate::testing::harness::Harness;

fn start_spec(uid: &str, name: &str) -> StartSpec {
    StartSpec {
        workspace: WorkspaceRef {
            uid: uid.into(),
            namespace: "default".into(),
            name: name.into(),
            instance_id: None,
        },
        runtime: "echo".into(),
        image: "registry.example.com/agents/echo:1".into(),
        env: vec![],
        tier: Tier::Standard,
        memory_mib: None,
        cpus: None,
        files: vec![],
        workspace_dir: None,
        extra_hosts: vec![],
        platform: None,
    }
}

/// A record the reaper sees as live (no controller runs: it only has to exist).
async fn live_record(h: &Harness, name: &str) -> String {
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let ws: Workspace = object(json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"image": "registry.example.com/agents/echo:1"},
    }));
    create(&api, &ws).await.uid().expect("uid")
}

async fn uids(backend: &dyn WorkspaceBackend) -> Vec<String> {
    let mut v: Vec<String> = backend
        .list_managed()
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.uid)
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_pass_removes_orphans_and_keeps_live_workspaces() {
    let mut h = Harness::start().await;
    let live = live_record(&h, "kept").await;
    let orphan = "0badc0de-0000-4000-8000-000000000001";
    for (uid, name) in [(live.as_str(), "kept"), (orphan, "gone")] {
        h.backend
            .ensure_started(&start_spec(uid, name))
            .await
            .expect("start");
    }
    let trigger = h.run_reaper(Duration::from_secs(3600));
    trigger.send(()).await.expect("trigger");
    let cleaned = Harness::eventually(Duration::from_secs(10), || async {
        (uids(h.backend.as_ref()).await == vec![live.clone()]).then_some(())
    })
    .await;
    assert!(
        cleaned.is_some(),
        "left: {:?}",
        uids(h.backend.as_ref()).await
    );
    assert!(
        metric_line(&h, "molecule_reaper_removed_total", &["kind=\"container\""])
            .is_some_and(|l| l.ends_with(" 1")),
        "{}",
        h.metrics.render()
    );
    // A second pass finds nothing more to do.
    let n = reaper::reap_once(&h.client, &h.backends().all(), &h.metrics)
        .await
        .expect("pass");
    assert_eq!(n, 0);
    assert_eq!(uids(h.backend.as_ref()).await, vec![live]);
}

#[tokio::test]
async fn a_record_whose_finalizer_was_stripped_leaves_an_orphan_the_reaper_removes() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let uid = live_record(&h, "stripped").await;
    wait_for(&api, "stripped", |w| {
        w.status
            .as_ref()
            .and_then(|s| s.container_id.clone())
            .is_some()
    })
    .await;
    // Deleted without its cleanup (the finalizer removed by hand): the container stays behind.
    api.patch(
        "stripped",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("strip");
    api.delete("stripped", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(uids(h.backend.as_ref()).await, vec![uid]);
    let n = reaper::reap_once(&h.client, &h.backends().all(), &h.metrics)
        .await
        .expect("pass");
    assert_eq!(n, 1);
    assert!(uids(h.backend.as_ref()).await.is_empty());
}

/// The simulated backend, whose listing fails the first `failures` times.
struct Flaky {
    inner: SimulatedBackend,
    failures: AtomicU32,
}

#[async_trait::async_trait]
impl WorkspaceBackend for Flaky {
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        self.inner.ensure_started(spec).await
    }
    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        self.inner.stop(ws).await
    }
    async fn remove(&self, ws: &WorkspaceRef, volume: bool) -> Result<(), BackendError> {
        self.inner.remove(ws, volume).await
    }
    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError> {
        self.inner.inspect(ws).await
    }
    async fn write_files(&self, ws: &WorkspaceRef, f: &[ConfigFile]) -> Result<(), BackendError> {
        self.inner.write_files(ws, f).await
    }
    async fn exec(&self, ws: &WorkspaceRef, cmd: &[String]) -> Result<ExecOutput, BackendError> {
        self.inner.exec(ws, cmd).await
    }
    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(BackendError::Transient("the engine is restarting".into()));
        }
        self.inner.list_managed().await
    }
    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError> {
        self.inner.remove_managed(m).await
    }
    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        self.inner.console(ws).await
    }
}

#[tokio::test]
async fn a_failed_pass_is_retried_with_backoff_before_the_next_resync() {
    let h = Harness::start().await;
    let flaky = Arc::new(Flaky {
        inner: SimulatedBackend::new(),
        failures: AtomicU32::new(1),
    });
    flaky
        .ensure_started(&start_spec("0badc0de-0000-4000-8000-000000000002", "gone"))
        .await
        .expect("start");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let backends: Vec<Arc<dyn WorkspaceBackend>> = vec![flaky.clone()];
    // A resync far away: only the kit's retry can run the second pass.
    tokio::spawn(reaper::run(
        h.client.clone(),
        backends,
        Duration::from_secs(3600),
        rx,
        h.metrics.clone(),
        h.shutdown(),
    ));
    let _keep = tx;
    let cleaned = Harness::eventually(Duration::from_secs(10), || async {
        uids(&flaky.inner).await.is_empty().then_some(())
    })
    .await;
    assert!(cleaned.is_some(), "the failed pass was not retried");
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0);
    assert!(
        metric_line(
            &h,
            "molecule_reconcile_errors_total",
            &["controller=\"reaper\"", "category=\"Transient\""]
        )
        .is_some(),
        "{}",
        h.metrics.render()
    );
}
