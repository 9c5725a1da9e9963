//! Workspace tokens with the real Workspace controller (ADR 0049): minted tokens are live
//! beside the agent's own, the registry takes any of them, heartbeats drive Degraded/Online,
//! and a restart revokes every one.

use bytes::Bytes;
use hyper::http::Method;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::{create, object, wait_for};
use crate::net::http::{Client, Timeouts};
use crate::resources::{Workspace, WorkspacePhase};
use crate::testing::harness::Harness;
use crate::workspace_tokens;

fn phase(w: &Workspace) -> Option<WorkspacePhase> {
    w.status.as_ref().and_then(|s| s.phase)
}

/// POSTs `body` to the harness's `/registry/<call>` with `token`; returns (status, body).
async fn registry(h: &Harness, call: &str, token: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let resp = Client::new(Timeouts::uniform(std::time::Duration::from_secs(10)))
        .send(
            Method::POST,
            &format!("{}/registry/{call}", h.url),
            &[("authorization", auth.as_str())],
            Some((Bytes::from(body.to_string()), "application/json")),
            64 * 1024,
        )
        .await
        .expect("registry call");
    let json = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, json)
}

#[tokio::test]
async fn minted_tokens_live_beside_the_own_one_drive_health_and_die_on_restart() {
    let mut h = Harness::start().await;
    h.run_workspace();
    let api: Api<Workspace> = Api::namespaced(h.client.clone(), "default");
    create(
        &api,
        &object(json!({
            "apiVersion": "molecule.ai/v1alpha1",
            "kind": "Workspace",
            "metadata": {"name": "tok", "namespace": "default"},
            "spec": {"image": "registry.example.com/agents/echo:1"},
        })),
    )
    .await;
    let online = wait_for(&api, "tok", |w| phase(w) == Some(WorkspacePhase::Online)).await;
    let uid = online.uid().expect("uid");
    let own_hash = online.status.clone().and_then(|s| s.token_hash);

    // Two minted tokens, both live beside the agent's own.
    let t1 = workspace_tokens::mint(&h.client, &online)
        .await
        .expect("mint");
    let t2 = workspace_tokens::mint(&h.client, &online)
        .await
        .expect("mint");
    assert_ne!(t1, t2);
    let fresh = api.get("tok").await.expect("get");
    assert!(workspace_tokens::accepts_workspace(&fresh, &t1));
    assert!(workspace_tokens::accepts_workspace(&fresh, &t2));
    assert_eq!(
        fresh.status.clone().and_then(|s| s.token_hash),
        own_hash,
        "minting leaves the agent's own token alone"
    );
    let raw = serde_json::to_string(&fresh).expect("json");
    assert!(
        !raw.contains(&t1) && !raw.contains(&t2),
        "only digests on record"
    );

    // Heartbeats with a minted token drive the phase: Degraded at >= 0.5, still Degraded at
    // 0.3 (hysteresis), Online again below 0.1.
    let beat = |token: String, rate: f64| {
        let h = &h;
        let uid = uid.clone();
        async move {
            registry(
                h,
                "heartbeat",
                &token,
                json!({"workspace_id": uid, "error_rate": rate, "sample_error": "upstream 500", "active_tasks": 1, "uptime_seconds": 5, "current_task": "t"}),
            )
            .await
        }
    };
    assert_eq!(beat(t1.clone(), 0.6).await, (200, json!({"status": "ok"})));
    wait_for(&api, "tok", |w| phase(w) == Some(WorkspacePhase::Degraded)).await;
    assert_eq!(beat(t2.clone(), 0.3).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        phase(&api.get("tok").await.expect("get")),
        Some(WorkspacePhase::Degraded),
        "hysteresis"
    );
    assert_eq!(beat(t1.clone(), 0.05).await.0, 200);
    wait_for(&api, "tok", |w| phase(w) == Some(WorkspacePhase::Online)).await;

    // A restart issues a new own token: every minted token is refused from then on.
    api.patch(
        "tok",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            crate::resources::names::RESTART_ANNOTATION: crate::util::now_micro(),
        }}})),
    )
    .await
    .expect("restart");
    let restarted = wait_for(&api, "tok", |w| {
        w.status.as_ref().and_then(|s| s.token_hash.clone()) != own_hash
    })
    .await;
    assert!(!workspace_tokens::accepts_workspace(&restarted, &t1));
    assert!(!workspace_tokens::accepts_workspace(&restarted, &t2));
    for t in [&t1, &t2] {
        let (code, body) = beat(t.to_string(), 0.0).await;
        assert_eq!(code, 401, "a minted token outlived the restart: {body}");
    }
    // The agent of the new container registered with the new own token.
    wait_for(&api, "tok", |w| phase(w) == Some(WorkspacePhase::Online)).await;
}
