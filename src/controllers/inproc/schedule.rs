//! The schedule controller on the harness (ADR 0053): two fires at once on a workspace that
//! takes one task at a time — one is sent, the other waits for the busy wait and is skipped
//! (`CRON_SKIPPED`, `lastStatus: skipped`); nothing reaches the agent twice; a paused
//! workspace has no next fire.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{create, object, wait_for};
use crate::controllers::schedule;
use crate::resources::Workspace;
use crate::resources::names::RUN_SCHEDULES_ANNOTATION;
use crate::testing::harness::Harness;

/// An A2A agent on 127.0.0.1 that takes `delay` per message; counts what it was sent.
async fn slow_agent(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let app = axum::Router::new().fallback(move || {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            axum::Json(json!({"jsonrpc": "2.0", "id": 1, "result": {
                "kind": "message", "role": "agent", "parts": [{"kind": "text", "text": "done"}]}}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

fn schedule_status(ws: &Workspace, name: &str) -> Option<crate::resources::ScheduleStatus> {
    ws.status
        .as_ref()?
        .schedules
        .iter()
        .find(|s| s.name == name)
        .cloned()
}

#[tokio::test]
async fn a_busy_workspace_skips_the_second_fire_and_a_paused_one_has_none() {
    let mut h = Harness::start().await;
    let events = h.run_schedule(schedule::Settings {
        max_fires: 10,
        busy_wait: Duration::from_millis(300),
        timeout: Duration::from_secs(10),
    });
    let (url, seen) = slow_agent(Duration::from_millis(1500)).await;
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let yearly = |name: &str| json!({"name": name, "cronExpr": "0 0 1 1 *", "prompt": format!("prompt {name}")});
    let ws: Workspace = object(json!({
        "apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "w", "namespace": "default"},
        "spec": {"runtime": "external", "url": url, "maxConcurrentTasks": 1,
                 "schedules": [yearly("a"), yearly("b")]},
    }));
    create(&api, &ws).await;
    // No Workspace controller here: the agent's URL is set as a registration would.
    api.patch_status(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"url": url}})),
    )
    .await
    .expect("status url");
    let ws = wait_for(&api, "w", |w| {
        schedule_status(w, "a").is_some_and(|s| s.next_run_at.is_some())
            && schedule_status(w, "b").is_some_and(|s| s.next_run_at.is_some())
    })
    .await;
    let next_a = schedule_status(&ws, "a").unwrap().next_run_at;

    // Both asked to run now: they fire together on a one-task workspace.
    let now = jiff::Timestamp::now().to_string();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            RUN_SCHEDULES_ANNOTATION: json!({"a": now, "b": now}).to_string()}}})),
    )
    .await
    .expect("run now");
    let done = wait_for(&api, "w", |w| {
        ["a", "b"]
            .iter()
            .all(|n| schedule_status(w, n).is_some_and(|s| s.last_status.is_some()))
    })
    .await;
    let statuses: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| schedule_status(&done, n).unwrap())
        .collect();
    let mut outcomes: Vec<&str> = statuses
        .iter()
        .map(|s| s.last_status.as_deref().unwrap())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["ok", "skipped"], "{statuses:#?}");
    let skipped = statuses
        .iter()
        .find(|s| s.last_status.as_deref() == Some("skipped"))
        .unwrap();
    assert!(
        skipped.last_error.as_deref().unwrap_or("").contains("busy"),
        "{skipped:?}"
    );
    assert!(statuses.iter().all(|s| s.run_count == 1), "{statuses:#?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the skipped fire never reached the agent"
    );
    let uid = ws.uid().expect("uid");
    assert_eq!(events.named("CRON_EXECUTED").len(), 1);
    let skipped_events = events.named("CRON_SKIPPED");
    assert_eq!(skipped_events.len(), 1);
    assert_eq!(skipped_events[0].0, uid);
    assert_eq!(skipped_events[0].1["schedule"], json!(skipped.name));
    // Run-now leaves the cron's next fire where it was.
    assert_eq!(schedule_status(&done, "a").unwrap().next_run_at, next_a);

    // Paused: no next fire.
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .expect("pause");
    wait_for(&api, "w", |w| {
        ["a", "b"]
            .iter()
            .all(|n| schedule_status(w, n).is_some_and(|s| s.next_run_at.is_none()))
    })
    .await;
}
