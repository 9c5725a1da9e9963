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
