//! The busy queue and delegations end to end (ADR 0051), on the test org of
//! `support/org.rs`: real `serve`, real echo agents, a counter in front of each.

mod common;
#[path = "support/org.rs"]
mod org;

use std::time::Duration;

use common::Backend;
use org::{Org, a2a, eventually, reply_text};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_agent_queues_and_delegations_complete() {
    let org = Org::new(
        Backend::Sqlite,
        &[
            ("lead", None),
            ("a", Some("lead")),
            ("b", Some("lead")),
            ("a1", Some("a")),
            ("b1", Some("b")),
        ],
    )
    .await;
    org.wait_online().await;

    // The queue: while `sleep` holds the agent, the next call gets 202 and is delivered once
    // the first is done.
    let a = org.uid("a");
    let first = {
        let port = org.s.port;
        let admin = org.s.token();
        let path = format!("/workspaces/{a}/a2a");
        std::thread::spawn(move || {
            common::post_url(
                &format!("http://127.0.0.1:{port}{path}"),
                &a2a("sleep 1500 first").to_string(),
                Some(&admin),
            )
            .expect("first call")
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, queued) = org.send("a", "second");
    assert_eq!(code, 202, "{queued}");
    assert_eq!(queued["queued"], true);
    assert_eq!(queued["queue_depth"], 1);
    let queue_id = queued["queue_id"].as_str().expect("queue_id").to_string();
    let (code, body) = first.join().expect("join");
    assert_eq!(code, 200, "{body}");
    eventually(20, "the queued call to be delivered", || {
        org.queue("a")["items"].as_array().is_some_and(|l| {
            l.iter()
                .any(|i| i["queue_id"] == queue_id.as_str() && i["status"] == "completed")
        })
    })
    .await;
    let q = org.queue("a");
    let item = &q["items"][0];
    assert_eq!(item["response_preview"], "second", "{q}");
    assert_eq!(q["queue_depth"], 0);
    assert_eq!(
        org.seen("a"),
        vec!["sleep 1500 first", "second"],
        "in order, once each"
    );

    // A delegation completes, with its events' statuses on record.
    let lead = org.uid("lead");
    let b = org.uid("b");
    let (code, d) = org.call(
        "POST",
        &format!("/workspaces/{lead}/delegate"),
        Some(&org.token("lead")),
        &json!({"target_id": b, "task": "hello b", "idempotency_key": "k-1"}),
    );
    assert_eq!(code, 202, "{d}");
    assert_eq!(d["status"], "delegated");
    let id = d["delegation_id"].as_str().expect("id").to_string();
    eventually(20, "the delegation to complete", || {
        org.delegations("lead")
            .iter()
            .any(|x| x["delegation_id"] == id.as_str() && x["status"] == "completed")
    })
    .await;
    let row = org
        .delegations("lead")
        .into_iter()
        .find(|x| x["delegation_id"] == id.as_str())
        .expect("listed");
    assert_eq!(
        (row["response_preview"].clone(), row["direction"].clone()),
        (json!("hello b"), json!("out"))
    );
    let theirs = org.delegations("b");
    assert_eq!(theirs[0]["direction"], "in", "the target lists it too");
    // The idempotent retry gets the same delegation, and nothing is sent again.
    let (code, again) = org.call(
        "POST",
        &format!("/workspaces/{lead}/delegate"),
        Some(&org.token("lead")),
        &json!({"target_id": b, "task": "hello b", "idempotency_key": "k-1"}),
    );
    assert_eq!(
        (
            code,
            again["delegation_id"].clone(),
            again["idempotent_hit"].clone()
        ),
        (200, json!(id), json!(true)),
        "{again}"
    );
    assert_eq!(org.seen("b"), vec!["hello b"]);

    // Refusals: each precise, none writes anything.
    let a1 = org.uid("a1");
    let b1 = org.uid("b1");
    let cases: Vec<(&str, String, Option<String>, Value, u16)> = vec![
        (
            "self",
            lead.clone(),
            Some(org.token("lead")),
            json!({"target_id": lead, "task": "x"}),
            400,
        ),
        (
            "cousin",
            a1.clone(),
            Some(org.token("a1")),
            json!({"target_id": b1, "task": "x"}),
            403,
        ),
        (
            "unknown target",
            lead.clone(),
            None,
            json!({"target_id": "no-such-uid", "task": "x"}),
            404,
        ),
        ("no task", lead.clone(), None, json!({"target_id": b}), 400),
        ("not an object", lead.clone(), None, json!(["x"]), 400),
        (
            "bad key",
            lead.clone(),
            None,
            json!({"target_id": b, "task": "x", "idempotency_key": "a b"}),
            400,
        ),
        (
            "another's token",
            lead.clone(),
            Some(org.token("b")),
            json!({"target_id": b, "task": "x"}),
            403,
        ),
        (
            "a wrong token",
            lead.clone(),
            Some("nope".into()),
            json!({"target_id": b, "task": "x"}),
            401,
        ),
    ];
    for (why, source, token, body, want) in cases {
        let (code, v) = org.call(
            "POST",
            &format!("/workspaces/{source}/delegate"),
            token.as_deref(),
            &body,
        );
        assert_eq!(code, want, "{why}: {v}");
        assert!(v["error"].is_string(), "{why}: {v}");
    }
    assert!(
        org.delegations("a1").is_empty(),
        "the refused delegation left nothing"
    );
    assert_eq!(org.delegations("lead").len(), 1);

    // An agent records a delegation it sent itself and reports how it ended.
    let (code, r) = org.call(
        "POST",
        &format!("/workspaces/{a}/delegations/record"),
        Some(&org.token("a")),
        &json!({"target_id": a1, "task": "direct", "delegation_id": "task-77"}),
    );
    assert_eq!((code, r["status"].clone()), (202, json!("recorded")), "{r}");
    let update = format!("/workspaces/{a}/delegations/task-77/update");
    let (code, _) = org.call(
        "POST",
        &update,
        Some(&org.token("a")),
        &json!({"status": "done"}),
    );
    assert_eq!(code, 400);
    let (code, u) = org.call(
        "POST",
        &update,
        Some(&org.token("a")),
        &json!({"status": "completed", "response_preview": "all good"}),
    );
    assert_eq!(
        (code, u["status"].clone()),
        (200, json!("completed")),
        "{u}"
    );
    let (code, _) = org.call(
        "POST",
        &update,
        Some(&org.token("a")),
        &json!({"status": "failed"}),
    );
    assert_eq!(code, 409, "a finished delegation stays finished");
    let (code, _) = org.call(
        "POST",
        &format!("/workspaces/{lead}/delegations/task-77/update"),
        Some(&org.token("lead")),
        &json!({"status": "failed"}),
    );
    assert_eq!(code, 404, "only its source updates it");

    // The echo agent delegates through the platform and answers with the peer's reply.
    let (code, reply) = org.send("lead", "delegate b: ping from lead");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply_text(&reply), "ping from lead", "{reply}");
    assert!(org.seen("b").contains(&"ping from lead".to_string()));
    let (code, reply) = org.send("a1", "delegate b1: you are my cousin");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        reply["error"]["code"], -32000,
        "a cousin is out of reach: {reply}"
    );
}

/// `kill -9` of serve while calls wait in the queue and a delegation is in flight: after the
/// restart every queued call and queued delegation is delivered exactly once, and the one in
/// flight ends failed (never stuck in dispatched, never sent again).
async fn kill9_during_queue_and_delegations(postgres: bool) {
    let Some(backend) = Backend::get(postgres).await else {
        return;
    };
    let mut org = Org::new(
        backend,
        &[
            ("lead", None),
            ("worker", Some("lead")),
            ("other", Some("lead")),
        ],
    )
    .await;
    org.wait_online().await;
    let (lead, worker, other) = (org.uid("lead"), org.uid("worker"), org.uid("other"));
    let hold = {
        let port = org.s.port;
        let admin = org.s.token();
        std::thread::spawn(move || {
            let _ = common::post_url(
                &format!("http://127.0.0.1:{port}/workspaces/{worker}/a2a"),
                &a2a("sleep 2500 hold").to_string(),
                Some(&admin),
            );
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..5 {
        let (code, v) = org.send("worker", &format!("q{i}"));
        assert_eq!(code, 202, "{v}");
    }
    let delegate = |target: &str, task: &str| {
        let (code, v) = org.call(
            "POST",
            &format!("/workspaces/{lead}/delegate"),
            Some(&org.token("lead")),
            &json!({"target_id": target, "task": task}),
        );
        assert_eq!(code, 202, "{v}");
        v["delegation_id"].as_str().expect("id").to_string()
    };
    let queued: Vec<String> = (0..3)
        .map(|i| delegate(&org.uid("worker"), &format!("d{i}")))
        .collect();
    let in_flight = delegate(&other, "sleep 5000 inflight");
    eventually(
        10,
        "the delegations to settle into queued and dispatched (and at the agent)",
        || {
            let list = org.delegations("lead");
            let status = |id: &str| {
                list.iter()
                    .find(|d| d["delegation_id"] == id)
                    .map(|d| d["status"].clone())
            };
            // The in-flight one has reached its agent: "dispatched" is written before the
            // send, so a kill right after it may come before the agent has the message.
            queued.iter().all(|id| status(id) == Some(json!("queued")))
                && status(&in_flight) == Some(json!("dispatched"))
                && !org.seen("other").is_empty()
        },
    )
    .await;

    org.s.kill9();
    let _ = hold.join();
    tokio::task::block_in_place(|| org.s.spawn());

    eventually(
        40,
        "every queued call and delegation to finish after the restart",
        || {
            let q = org.queue("worker");
            let items = q["items"].as_array().cloned().unwrap_or_default();
            let done = items.iter().all(|i| i["status"] == "completed");
            let delegations = org.delegations("lead");
            let settled = delegations
                .iter()
                .all(|d| d["status"] == "completed" || d["status"] == "failed");
            done && items.len() == 8 && settled
        },
    )
    .await;
    let list = org.delegations("lead");
    for id in &queued {
        let d = list
            .iter()
            .find(|d| d["delegation_id"] == id.as_str())
            .expect("listed");
        assert_eq!(d["status"], "completed", "{d}");
    }
    let d = list
        .iter()
        .find(|d| d["delegation_id"] == in_flight.as_str())
        .expect("listed");
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"].as_str().unwrap_or("").contains("restarted"),
        "{d}"
    );

    // At the agents: each text exactly once; the queue in order.
    // The calls drain in the order they were queued; the three delegations were queued by
    // their own background tasks, so their relative order is not defined.
    let mut seen = org.seen("worker");
    let mut want: Vec<String> = vec!["sleep 2500 hold".into()];
    want.extend((0..5).map(|i| format!("q{i}")));
    want.extend((0..3).map(|i| format!("d{i}")));
    assert_eq!(seen.len(), want.len(), "delivered once each: {seen:?}");
    seen[6..].sort();
    assert_eq!(seen, want, "delivered once each, in order");
    assert_eq!(
        org.seen("other"),
        vec!["sleep 5000 inflight"],
        "not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_sqlite_loses_and_repeats_nothing() {
    kill9_during_queue_and_delegations(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_postgres_loses_and_repeats_nothing() {
    kill9_during_queue_and_delegations(true).await;
}
