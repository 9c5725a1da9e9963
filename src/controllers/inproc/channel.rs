//! The channel controller on the harness (ADR 0054): a channel of a workspace that is not
//! running waits, an unsupported type fails with a clear reason, a missing Secret is named,
//! pausing disables every channel, and a shortened list shortens the status. No Bot API is
//! needed for any of it (the round trip runs in tests/channels.rs).

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::{create, object, wait_for};
use crate::controllers::channel;
use crate::resources::Workspace;
use crate::testing::harness::Harness;

fn channel_state(ws: &Workspace, i: usize) -> (String, String) {
    let c = ws
        .status
        .as_ref()
        .and_then(|s| s.channels.get(i).cloned())
        .unwrap_or_default();
    (c.state.unwrap_or_default(), c.reason.unwrap_or_default())
}

async fn set_status(api: &Api<Workspace>, name: &str, status: Value) {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .expect("status patch");
}

#[tokio::test]
async fn channels_follow_the_workspace_and_say_why_they_do_not_run() {
    let mut h = Harness::start().await;
    let store = h.audit.store().expect("the harness has a store");
    let teams = crate::teams::Teams::start(
        h.workspace_feed("teams").0,
        store,
        &h.token,
        None,
        h.metrics.clone(),
        Default::default(),
        h.shutdown(),
    );
    let (client, metrics) = (h.client.clone(), h.metrics.clone());
    let (feed, reader) = h.workspace_feed("channel");
    h.spawn(move |stop| channel::run(feed, reader, client, teams, metrics, stop));
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    let ws: Workspace = object(json!({
        "apiVersion": "molecule.ai/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": "chatty", "namespace": "default"},
        "spec": {"runtime": "echo", "channels": [
            {"type": "telegram", "configFrom": {"name": "absent", "key": "token"}, "allowedUsers": ["1"]},
            {"type": "lark"},
            {"type": "telegram", "enabled": false},
        ]},
    }));
    create(&api, &ws).await;
    // Not running yet: the telegram channel waits, the unknown type fails at once.
    let got = wait_for(&api, "chatty", |w| {
        channel_state(w, 0).1 == "WaitingForWorkspace"
            && channel_state(w, 1).1 == "UnsupportedChannelType"
    })
    .await;
    assert_eq!(
        channel_state(&got, 2),
        ("Disabled".into(), "ChannelDisabled".into())
    );
    let msg = got.status.as_ref().unwrap().channels[1]
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        msg.contains("\"lark\"") && msg.contains("supported: telegram"),
        "{msg}"
    );

    // Online: the adapter starts and names the missing Secret; the condition says so.
    set_status(
        &api,
        "chatty",
        json!({"phase": "Online", "url": "http://127.0.0.1:9"}),
    )
    .await;
    let got = wait_for(&api, "chatty", |w| {
        channel_state(w, 0).1 == "SecretNotFound"
    })
    .await;
    let c0 = &got.status.as_ref().unwrap().channels[0];
    assert_eq!(c0.state.as_deref(), Some("Failed"));
    assert!(
        c0.message
            .as_deref()
            .unwrap_or("")
            .contains("default/absent"),
        "{c0:?}"
    );
    let cond = got
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == channel::status::CONDITION)
        .cloned()
        .expect("ChannelsReady");
    assert_eq!(cond.reason.as_deref(), Some("SecretNotFound"));
    assert!(
        cond.message
            .as_deref()
            .unwrap_or("")
            .starts_with("channel 0 (telegram)")
    );

    // Paused: every enabled channel is disabled for that reason.
    api.patch(
        "chatty",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"paused": true}})),
    )
    .await
    .expect("pause");
    wait_for(&api, "chatty", |w| {
        channel_state(w, 0) == ("Disabled".into(), "WorkspacePaused".into())
    })
    .await;

    // A shorter list, a shorter status.
    api.patch(
        "chatty",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"channels": [{"type": "lark"}]}})),
    )
    .await
    .expect("shorten");
    let got = wait_for(&api, "chatty", |w| {
        w.status.as_ref().is_some_and(|s| s.channels.len() == 1)
    })
    .await;
    assert_eq!(channel_state(&got, 0).1, "UnsupportedChannelType");
    // Another writer of the conditions (the Workspace controller, from a stale copy) drops
    // ChannelsReady: it comes back, and the other's condition stays.
    set_status(
        &api,
        "chatty",
        json!({"conditions": [
            {"type": "Ready", "status": "True", "reason": "Online", "message": "ok"},
        ]}),
    )
    .await;
    wait_for(&api, "chatty", |w| {
        let cs = w
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        cs.iter().any(|c| c.type_ == "Ready")
            && cs.iter().any(|c| {
                c.type_ == "ChannelsReady" && c.reason.as_deref() == Some("UnsupportedChannelType")
            })
    })
    .await;
    api.patch(
        "chatty",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"channels": []}})),
    )
    .await
    .expect("empty");
    let got = wait_for(&api, "chatty", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.channels.is_empty() && !s.conditions.iter().any(|c| c.type_ == "ChannelsReady")
        })
    })
    .await;
    assert!(
        got.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready")
    );
}
