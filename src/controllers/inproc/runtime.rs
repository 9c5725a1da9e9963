//! The Runtime controller on the harness: resolution, a bad spec, updates, idempotence.
//! The harness engine has no image, so a resolved runtime is never "available".

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::{condition, create, object, wait_event, wait_for, wait_gone};
use crate::controllers::runtime;
use crate::resources::{ConditionStatus, ImageSource, Runtime};
use crate::testing::harness::Harness;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn rt(name: &str, spec: serde_json::Value) -> Runtime {
    object(json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "Runtime",
        "metadata": {"name": name},
        "spec": spec,
    }))
}

fn ready_reason(r: &Runtime) -> Option<String> {
    r.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.reason.clone())
}

#[tokio::test]
async fn a_pinned_runtime_resolves_and_follows_a_new_digest() {
    let mut h = Harness::start().await;
    h.run_runtime();
    let api: Api<Runtime> = Api::all(h.client.clone());
    let spec = json!({"image": "registry.example.com/agents/pinned", "digest": digest('a')});
    create(&api, &rt("pinned", spec)).await;

    let resolved = wait_for(&api, "pinned", |r| {
        ready_reason(r).as_deref() == Some("Resolved")
    })
    .await;
    let st = resolved.status.expect("status");
    assert_eq!(st.digest, Some(digest('a')));
    assert_eq!(st.source, Some(ImageSource::Registry));
    assert_eq!(
        st.resolved_image.as_deref(),
        Some(format!("registry.example.com/agents/pinned@{}", digest('a')).as_str()),
    );
    assert_eq!(st.observed_generation, Some(1));
    let available = condition(&st.conditions, "ImageAvailable");
    assert_eq!(available.status, ConditionStatus::False);
    assert_eq!(available.reason.as_deref(), Some("NotYetFetched"));
    let (type_, _) = wait_event(&h, None, "pinned", "Resolved").await;
    assert_eq!(type_, "Normal");

    api.patch(
        "pinned",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"digest": digest('b')}})),
    )
    .await
    .expect("update");
    let moved = wait_for(&api, "pinned", |r| {
        r.status.as_ref().and_then(|s| s.digest.clone()) == Some(digest('b'))
    })
    .await;
    let moved = moved.status.expect("status");
    assert_eq!(moved.observed_generation, Some(2));
    assert!(moved.resolved_at.is_some());
}

#[tokio::test]
async fn an_image_with_a_tag_is_refused_with_a_precise_condition_and_event() {
    let mut h = Harness::start().await;
    h.run_runtime();
    let api: Api<Runtime> = Api::all(h.client.clone());
    create(
        &api,
        &rt(
            "tagged",
            json!({"image": "registry.example.com/agents/tagged:1.0"}),
        ),
    )
    .await;
    let refused = wait_for(&api, "tagged", |r| {
        ready_reason(r).as_deref() == Some("InvalidSpec")
    })
    .await;
    let st = refused.status.expect("status");
    let ready = condition(&st.conditions, "Ready");
    assert_eq!(ready.status, ConditionStatus::False);
    let message = ready.message.clone().unwrap_or_default();
    assert!(
        message.contains("must be a repository without a tag or digest"),
        "{message}"
    );
    assert!(st.resolved_image.is_none(), "nothing resolved");
    let (type_, note) = wait_event(&h, None, "tagged", "InvalidSpec").await;
    assert_eq!(
        (type_.as_str(), note.as_str()),
        ("Warning", message.as_str())
    );
}

#[tokio::test]
async fn a_second_pass_writes_nothing_and_a_deleted_runtime_is_let_go() {
    let mut h = Harness::start().await;
    let ctx = h.run_runtime();
    let api: Api<Runtime> = Api::all(h.client.clone());
    let spec = json!({"image": "registry.example.com/agents/steady", "digest": digest('c')});
    create(&api, &rt("steady", spec)).await;
    let resolved = wait_for(&api, "steady", |r| {
        ready_reason(r).as_deref() == Some("Resolved")
    })
    .await;
    let rv = resolved.resource_version();
    runtime::reconcile(Arc::new(resolved.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(api.get("steady").await.expect("get").resource_version(), rv);

    api.delete("steady", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "steady").await;
    let action = runtime::reconcile(Arc::new(resolved), ctx.clone())
        .await
        .expect("a pass over a deleted runtime succeeds");
    assert_eq!(
        action,
        kube::runtime::controller::Action::await_change(),
        "nothing to look at again"
    );
    assert!(
        super::metric_line(
            &h,
            "molecule_reconcile_total",
            &["controller=\"runtime\"", "result=\"ok\""]
        )
        .is_some(),
        "{}",
        h.metrics.render()
    );
}
