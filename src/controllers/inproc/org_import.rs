//! The OrgImport controller on the harness (ADR 0010): a template directory becomes child
//! Workspaces, a bad template is refused precisely, a converged import writes nothing, and
//! deleting the import takes its children with it.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use super::{condition, create, object, wait_event, wait_for, wait_gone};
use crate::backends::WorkspaceBackend;
use crate::controllers::org_import::{self, build::ORG_LABEL};
use crate::resources::{ConditionStatus, OrgImport, Runtime, Workspace, WorkspacePhase};
use crate::testing::harness::Harness;

/// A small org: a lead and two children, on the `sim` runtime (the built-in echo image cannot
/// be built without an engine).
const SMALL: &str = "name: Small\ndefaults:\n  runtime: sim\nworkspaces:\n  - name: Lead\n    children:\n      - name: Dev\n      - name: QA\n";
/// The children `SMALL` makes for an import named `small`.
const CHILDREN: [&str; 3] = ["small.lead", "small.lead.dev", "small.lead.qa"];

fn org(name: &str, source: serde_json::Value) -> OrgImport {
    object(json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "OrgImport",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"source": source},
    }))
}

/// Writes `SMALL` as the template directory `small` under the harness template root.
fn small_template(h: &Harness) {
    let dir = h.org_import_settings().options.root.join("small");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("org.yaml"), SMALL).expect("write org.yaml");
}

/// The Ready condition's (status, reason, message) once the current generation was seen.
fn ready(o: &OrgImport) -> Option<(ConditionStatus, String, String)> {
    let st = o.status.as_ref()?;
    if st.observed_generation != o.metadata.generation {
        return None;
    }
    let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((
        c.status,
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

fn reason_is(o: &OrgImport, reason: &str) -> bool {
    ready(o).is_some_and(|(_, r, _)| r == reason)
}

fn imports(h: &Harness) -> Api<OrgImport> {
    Api::namespaced(h.client.clone(), "default")
}

fn workspaces(h: &Harness) -> Api<Workspace> {
    Api::namespaced(h.client.clone(), "default")
}

/// Names of the Workspaces made by org imports, sorted.
async fn children(h: &Harness) -> Vec<String> {
    let mut names: Vec<String> = workspaces(h)
        .list(&ListParams::default().labels(ORG_LABEL))
        .await
        .expect("list workspaces")
        .items
        .iter()
        .map(|w| w.name_any())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_template_dir_becomes_child_workspaces_owned_by_the_import() {
    let mut h = Harness::start().await;
    h.run_org_import();
    small_template(&h);
    let api = imports(&h);
    create(&api, &org("small", json!({"dir": "small"}))).await;

    let done = wait_for(&api, "small", |o| reason_is(o, "Imported")).await;
    let st = done.status.clone().expect("status");
    assert_eq!(
        condition(&st.conditions, "Ready").status,
        ConditionStatus::True
    );
    let counts = st.counts.expect("counts");
    assert_eq!((counts.desired, counts.created), (3, 3), "{counts:?}");
    assert_eq!(children(&h).await, CHILDREN);
    let uid = done.uid().expect("uid");
    let dev = workspaces(&h).get("small.lead.dev").await.expect("dev");
    assert!(
        dev.owner_references().iter().any(|o| o.uid == uid),
        "owned by the import: {dev:#?}"
    );
    assert_eq!(
        dev.spec.parent_ref.as_ref().map(|p| p.name.as_str()),
        Some("small.lead")
    );
    let (type_, _) = wait_event(&h, Some("default"), "small", "Imported").await;
    assert_eq!(type_, "Normal");
}

#[tokio::test]
async fn a_bad_template_gets_a_precise_condition_and_event_and_creates_nothing() {
    let mut h = Harness::start().await;
    h.run_org_import();
    let api = imports(&h);
    let template =
        "workspaces:\n  - name: lead\n    children:\n      - name: a\n        tier: high\n";
    create(&api, &org("bad-tier", json!({"template": template}))).await;

    let failed = wait_for(&api, "bad-tier", |o| reason_is(o, "InvalidTemplate")).await;
    let (status, _, message) = ready(&failed).expect("Ready");
    let expected = "(inline template):5:15: workspaces[0].children[0].tier: tier must be an integer 1-4, got a string";
    assert_eq!(status, ConditionStatus::False);
    assert!(message.starts_with(expected), "{message}");
    let (type_, note) = wait_event(&h, Some("default"), "bad-tier", "InvalidTemplate").await;
    assert_eq!(type_, "Warning");
    assert_eq!(note, message);
    assert!(children(&h).await.is_empty(), "nothing is created");
}

#[tokio::test]
async fn a_second_pass_over_a_converged_import_writes_nothing() {
    let mut h = Harness::start().await;
    let ctx = h.run_org_import();
    small_template(&h);
    let api = imports(&h);
    create(&api, &org("small", json!({"dir": "small"}))).await;
    let done = wait_for(&api, "small", |o| reason_is(o, "Imported")).await;
    let rv = done.resource_version();
    let child_rvs = child_versions(&h).await;
    for _ in 0..2 {
        org_import::reconcile(Arc::new(done.clone()), ctx.clone())
            .await
            .expect("reconcile");
    }
    let after = api.get("small").await.expect("get");
    assert_eq!(after.resource_version(), rv, "no write: {after:#?}");
    assert_eq!(child_versions(&h).await, child_rvs, "no child rewritten");
}

/// (name, resourceVersion) of every child, sorted by name.
async fn child_versions(h: &Harness) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = workspaces(h)
        .list(&ListParams::default().labels(ORG_LABEL))
        .await
        .expect("list workspaces")
        .items
        .iter()
        .map(|w| (w.name_any(), w.resource_version()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn deleting_the_import_removes_its_children_and_their_containers() {
    let mut h = Harness::start().await;
    h.run_workspace();
    h.run_org_import();
    small_template(&h);
    create(
        &Api::<Runtime>::all(h.client.clone()),
        &object(json!({
            "apiVersion": "molecule.ai/v1alpha1",
            "kind": "Runtime",
            "metadata": {"name": "sim"},
            "spec": {"image": "registry.example.com/agents/sim:1"},
        })),
    )
    .await;
    let api = imports(&h);
    create(&api, &org("small", json!({"dir": "small"}))).await;
    wait_for(&api, "small", |o| reason_is(o, "Imported")).await;
    let ws = workspaces(&h);
    for name in CHILDREN {
        wait_for(&ws, name, |w| {
            w.status.as_ref().and_then(|s| s.phase) == Some(WorkspacePhase::Online)
        })
        .await;
    }
    assert_eq!(h.backend.list_managed().await.expect("list").len(), 3);

    api.delete("small", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "small").await;
    for name in CHILDREN {
        wait_gone(&ws, name).await;
    }
    let managed = h.backend.list_managed().await.expect("list");
    assert!(managed.is_empty(), "containers left behind: {managed:?}");
}
