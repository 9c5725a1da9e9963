//! The shared Workspace cache's feed (ADR 0025), which the Teams service and the controllers
//! follow instead of a watch each: changes and deletions in order, the cache's own records (no
//! second copy), a late subscriber starting from what the cache holds, and a subscriber replaced
//! by one of the same name.

use std::sync::Arc;

use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::{CONVERGE, create, object};
use crate::feed::{Change, Feed};
use crate::resources::Workspace;
use crate::testing::harness::Harness;

async fn next(feed: &mut Feed<Workspace>) -> Change<Workspace> {
    tokio::time::timeout(CONVERGE, feed.recv())
        .await
        .expect("a change in time")
        .expect("the feed is open")
}

fn names(list: &[Arc<Workspace>]) -> Vec<String> {
    list.iter()
        .map(|w| w.metadata.name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn the_feed_tells_changes_deletions_and_a_late_subscriber_what_the_cache_holds() {
    let h = Harness::start().await;
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let (mut early, reader) = h.workspace_feed("early");
    match next(&mut early).await {
        Change::Relisted(list) => assert!(list.is_empty(), "{:?}", names(&list)),
        other => panic!("the first change is the first list: {other:?}"),
    }
    let ws: Workspace = object(json!({
        "apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "a", "namespace": "default"},
        "spec": {"runtime": "external", "url": "http://127.0.0.1:9/a"},
    }));
    create(&api, &ws).await;
    let applied = match next(&mut early).await {
        Change::Applied(w) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!(applied.metadata.name.as_deref(), Some("a"));
    let cached = reader
        .get(&ObjectRef::new("a").within("default"))
        .expect("cached");
    assert!(
        Arc::ptr_eq(&applied, &cached),
        "the feed hands out the cache's own record"
    );

    // A subscriber that comes later starts from what the cache holds.
    let (mut late, _) = h.workspace_feed("late");
    match next(&mut late).await {
        Change::Relisted(list) => assert_eq!(names(&list), ["a"]),
        other => panic!("{other:?}"),
    }

    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    for feed in [&mut early, &mut late] {
        match next(feed).await {
            Change::Deleted(w) => assert_eq!(w.metadata.name.as_deref(), Some("a")),
            other => panic!("{other:?}"),
        }
    }

    // A subscriber of the same name replaces the earlier one, whose feed ends.
    let (_again, _) = h.workspace_feed("early");
    let ended = tokio::time::timeout(CONVERGE, early.recv())
        .await
        .expect("the replaced feed ends");
    assert!(ended.is_none(), "{ended:?}");
}

async fn next_of<S: futures::Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(CONVERGE, futures::StreamExt::next(s))
        .await
        .expect("a trigger in time")
        .expect("the stream is open")
}

#[tokio::test]
async fn a_filtered_trigger_skips_heartbeats_and_passes_container_changes_and_deletions() {
    use kube::api::{Patch, PatchParams};
    let h = Harness::start().await;
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let mut touched = Box::pin(h.workspace_cache().touched_filtered(
        "plugin-test",
        crate::controllers::plugin::workspace_trigger_hash,
    ));
    let ws: Workspace = object(json!({
        "apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "b", "namespace": "default"},
        "spec": {"image": "registry.example.com/echo:1"},
    }));
    create(&api, &ws).await;
    let first = next_of(&mut touched).await;
    assert_eq!(first.metadata.name.as_deref(), Some("b"));
    let status = |v: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch_status(
                "b",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": v })),
            )
            .await
            .expect("status")
        }
    };
    // Heartbeats change nothing the plugin controller acts on: no trigger.
    status(json!({"lastHeartbeat": "2026-12-06T00:00:01Z", "uptimeSeconds": 1})).await;
    status(json!({"lastHeartbeat": "2026-12-06T00:00:06Z", "uptimeSeconds": 6})).await;
    // A new container does.
    status(json!({"containerId": "c-1"})).await;
    let woken = next_of(&mut touched).await;
    assert_eq!(
        woken
            .status
            .as_ref()
            .and_then(|s| s.container_id.as_deref()),
        Some("c-1"),
        "the heartbeats before it passed the filter"
    );
    api.delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = next_of(&mut touched).await;
    assert_eq!(gone.metadata.name.as_deref(), Some("b"));
}
