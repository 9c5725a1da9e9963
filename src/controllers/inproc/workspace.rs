//! The Workspace controller on the harness: create, update, delete, bad specs, idempotence.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::{condition, create, object, wait_event, wait_for, wait_gone};
use crate::backends::WorkspaceBackend;
use crate::controllers::workspace::{self, FINALIZER};
use crate::resources::{ConditionStatus, Runtime, Workspace, WorkspacePhase};
use crate::testing::harness::Harness;

const IMAGE: &str = "registry.example.com/agents/echo:1";

fn ws(name: &str, spec: serde_json::Value) -> Workspace {
    object(json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
}

fn phase(w: &Workspace) -> Option<WorkspacePhase> {
    w.status.as_ref().and_then(|s| s.phase)
}

fn api(h: &Harness) -> Api<Workspace> {
    Api::namespaced(h.client.clone(), "default")
}

#[tokio::test]
async fn a_workspace_is_provisioned_goes_online_and_is_reconfigured_on_change() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api = api(&h);
    create(&api, &ws("alpha", json!({"image": IMAGE}))).await;

    let online = wait_for(&api, "alpha", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    assert!(online.finalizers().iter().any(|f| f == FINALIZER));
    let st = online.status.clone().expect("status");
    let first_container = st.container_id.clone().expect("container id recorded");
    assert!(first_container.starts_with("sim-"), "{first_container}");
    assert_eq!(st.image.as_deref(), Some(IMAGE));
    assert!(st.token_hash.is_some() && st.spec_hash.is_some());
    assert_eq!(
        condition(&st.conditions, "Ready").status,
        ConditionStatus::True
    );
    assert_eq!(h.backend.created(), 1);
    let (type_, note) = wait_event(&h, Some("default"), "alpha", "Provisioning").await;
    assert_eq!(type_, "Normal");
    assert!(note.contains(IMAGE), "{note}");

    // A new env value is a new configuration: a new container, a new spec hash.
    api.patch(
        "alpha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"env": [{"name": "GREETING", "value": "hi"}]}})),
    )
    .await
    .expect("update");
    let changed = wait_for(&api, "alpha", |w| {
        w.status.as_ref().and_then(|s| s.spec_hash.clone()) != st.spec_hash
            && phase(w) == Some(WorkspacePhase::Online)
    })
    .await;
    let changed = changed.status.expect("status");
    assert_ne!(
        changed.container_id.as_deref(),
        Some(first_container.as_str())
    );
    assert_eq!(h.backend.created(), 2);
    wait_event(&h, Some("default"), "alpha", "Reconfiguring").await;
}

#[tokio::test]
async fn a_second_pass_over_a_converged_workspace_writes_nothing() {
    let mut h = Harness::start().await;
    let ctx = h.run_workspace();
    let api = api(&h);
    create(&api, &ws("steady", json!({"image": IMAGE}))).await;
    let online = wait_for(&api, "steady", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    let rv = online.resource_version();
    for _ in 0..2 {
        workspace::reconcile(Arc::new(online.clone()), ctx.clone())
            .await
            .expect("reconcile");
    }
    let after = api.get("steady").await.expect("get");
    assert_eq!(after.resource_version(), rv, "no write: {after:#?}");
    assert_eq!(h.backend.created(), 1, "no new container");
}

#[tokio::test]
async fn missing_env_a_runtime_requires_is_named_and_nothing_starts() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let runtimes: Api<Runtime> = Api::all(h.client.clone());
    create(
        &runtimes,
        &object(json!({
            "apiVersion": "molecule.ai/v1alpha1",
            "kind": "Runtime",
            "metadata": {"name": "needy"},
            "spec": {"image": "registry.example.com/needy", "requiredEnv": ["API_KEY"]},
        })),
    )
    .await;
    let api = api(&h);
    create(&api, &ws("needs-key", json!({"runtime": "needy"}))).await;
    let failed = wait_for(&api, "needs-key", |w| {
        phase(w) == Some(WorkspacePhase::Failed)
    })
    .await;
    let st = failed.status.expect("status");
    assert_eq!(st.missing_env, vec!["API_KEY".to_string()]);
    let ready = condition(&st.conditions, "Ready");
    assert_eq!(ready.reason.as_deref(), Some("MissingEnv"));
    assert!(
        ready.message.as_deref().unwrap_or("").contains("API_KEY"),
        "{ready:?}"
    );
    wait_event(&h, Some("default"), "needs-key", "MissingEnv").await;
    assert_eq!(h.backend.created(), 0);

    // Supplying it lets the workspace start.
    api.patch(
        "needs-key",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"env": [{"name": "API_KEY", "value": "k"}]}})),
    )
    .await
    .expect("update");
    let online = wait_for(&api, "needs-key", |w| {
        phase(w) == Some(WorkspacePhase::Online)
    })
    .await;
    assert!(online.status.expect("status").missing_env.is_empty());
}

#[tokio::test]
async fn deleting_a_workspace_runs_the_finalizer_and_removes_its_container() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api = api(&h);
    create(&api, &ws("doomed", json!({"image": IMAGE}))).await;
    let online = wait_for(&api, "doomed", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    let uid = online.uid().expect("uid");
    let managed = h.backend.list_managed().await.expect("list");
    assert!(managed.iter().any(|m| m.uid == uid), "{managed:?}");

    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "doomed").await;
    let managed = h.backend.list_managed().await.expect("list");
    assert!(
        managed.iter().all(|m| m.uid != uid),
        "the finalizer removed the container: {managed:?}"
    );
    let rows = h
        .audit
        .query(&Default::default(), 100)
        .await
        .expect("audit rows");
    assert!(
        rows.iter()
            .any(|r| r.event == "workspace.deleted" && r.name == "doomed"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_paused_workspace_stops_its_container_and_resumes() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api = api(&h);
    create(&api, &ws("napper", json!({"image": IMAGE}))).await;
    let online = wait_for(&api, "napper", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    let w = crate::backends::WorkspaceRef {
        uid: online.uid().expect("uid"),
        namespace: "default".into(),
        name: "napper".into(),
        instance_id: None,
    };
    api.patch(
        "napper",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .expect("pause");
    wait_for(&api, "napper", |w| phase(w) == Some(WorkspacePhase::Paused)).await;
    assert!(matches!(
        h.backend.inspect(&w).await.expect("inspect"),
        crate::backends::Presence::Stopped { .. }
    ));
    wait_event(&h, Some("default"), "napper", "Paused").await;
}

#[tokio::test]
async fn a_secret_reference_no_secret_can_have_is_an_unresolved_reference() {
    // Names reach the API's URL path as they are, so `../x`, `x?watch=true` or an empty name
    // is never fetched: each is reported like any Secret that does not exist.
    let mut h = Harness::start().await;
    h.run_workspace();
    let api = api(&h);
    create(
        &api,
        &ws(
            "escaper",
            json!({"image": IMAGE, "envFrom": [
                {"secretRef": {"name": "../../../apis/x"}},
                {"secretRef": {"name": "x?watch=true"}},
                {"secretRef": {"name": ""}}
            ]}),
        ),
    )
    .await;
    let failed = wait_for(&api, "escaper", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.message.as_deref().unwrap_or("").contains("x?watch=true"))
    })
    .await;
    let st = failed.status.expect("status");
    assert_eq!(
        condition(&st.conditions, "ConfigReady").reason.as_deref(),
        Some("InvalidEnv"),
        "{st:?}"
    );
    assert_eq!(h.backend.created(), 0);
}
