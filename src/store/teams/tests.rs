//! The queue and delegation rows on every backend (SQLite always, Postgres when
//! `MOLECULE_TEST_DATABASE_URL` is set).

use super::*;
use crate::store::{PostgresStore, SqliteStore, Store};

fn item(ws: &str, body: &str, priority: i64) -> NewQueueItem {
    NewQueueItem {
        workspace_id: ws.into(),
        priority,
        body: body.into(),
        method: Some("message/send".into()),
        ..Default::default()
    }
}

fn answered(preview: &str) -> QueueOutcome {
    QueueOutcome::Answered {
        status: 200,
        ok: true,
        preview: preview.into(),
        error: None,
    }
}

async fn queue_order_idempotency_and_retry(s: &dyn Store) {
    let (a, d1, _) = s
        .queue_push(&item("w", "a", PRIORITY_TASK), 1)
        .await
        .expect("a");
    let (b, d2, _) = s
        .queue_push(&item("w", "b", PRIORITY_TASK), 2)
        .await
        .expect("b");
    let (urgent, d3, _) = s
        .queue_push(&item("w", "u", PRIORITY_MAX), 3)
        .await
        .expect("u");
    let (_, other, _) = s
        .queue_push(&item("v", "x", PRIORITY_TASK), 3)
        .await
        .expect("x");
    assert_eq!((d1, d2, d3, other), (1, 2, 3, 1));
    // The same key while the first is live: the same item, nothing added.
    let keyed = NewQueueItem {
        idempotency_key: Some("k".into()),
        ..item("w", "c", PRIORITY_TASK)
    };
    let (c, _, existed) = s.queue_push(&keyed, 4).await.expect("c");
    assert!(!existed);
    let (c2, depth, existed) = s.queue_push(&keyed, 5).await.expect("c again");
    assert_eq!((c2.as_str(), depth, existed), (c.as_str(), 4, true));
    let mut busy = s.queue_busy_workspaces().await.expect("busy");
    busy.sort();
    assert_eq!(busy, vec!["v", "w"]);

    // Priority first, then first in, first out.
    let order: Vec<String> = {
        let mut v = vec![];
        for _ in 0..2 {
            let it = s
                .queue_claim("w", 10)
                .await
                .expect("claim")
                .expect("an item");
            assert_eq!((it.status.as_str(), it.attempts), ("dispatched", 1));
            v.push(it.id.clone());
            s.queue_finish(&it.id, &answered("ok"), 11)
                .await
                .expect("finish");
        }
        v
    };
    assert_eq!(order, vec![urgent.clone(), a.clone()]);
    assert_eq!(s.queue_depth("w").await.expect("depth"), 2);

    // Not delivered: back in its place at the front, until it used up its attempts.
    let it = s.queue_claim("w", 12).await.expect("claim").expect("b");
    assert_eq!(it.id, b);
    let retry = QueueOutcome::Retry {
        error: "connection refused".into(),
        max_attempts: 2,
    };
    let (after, _) = s.queue_finish(&b, &retry, 13).await.expect("retry");
    assert_eq!(after.expect("row").status, "queued");
    let it = s
        .queue_claim("w", 14)
        .await
        .expect("claim")
        .expect("b again");
    assert_eq!((it.id.as_str(), it.attempts), (b.as_str(), 2));
    let (after, _) = s.queue_finish(&b, &retry, 15).await.expect("retry 2");
    let after = after.expect("row");
    assert_eq!(after.status, "failed");
    assert_eq!(after.last_error.as_deref(), Some("connection refused"));
    // A finished item is not finished twice.
    let (again, d) = s
        .queue_finish(&b, &answered("late"), 16)
        .await
        .expect("noop");
    assert_eq!((again.expect("row").status.as_str(), d), ("failed", None));

    let it = s.queue_claim("w", 17).await.expect("claim").expect("c");
    assert_eq!(it.id, c);
    // Once dispatched the key still guards; once finished it is free again.
    assert!(s.queue_push(&keyed, 18).await.expect("dup").2);
    s.queue_finish(&c, &answered("done"), 19)
        .await
        .expect("finish c");
    assert!(!s.queue_push(&keyed, 20).await.expect("fresh").2);
    let list = s.queue_list("w", 10).await.expect("list");
    assert_eq!(list.len(), 5);
    assert_eq!(list[0].status, "queued", "newest first");
    let done = list.iter().find(|i| i.id == c).expect("c listed");
    assert_eq!(
        (done.response_status, done.response_preview.as_deref()),
        (Some(200), Some("done"))
    );
}

async fn expiry(s: &dyn Store) {
    let short = NewQueueItem {
        expires_ms: Some(100),
        ..item("e", "old", PRIORITY_TASK)
    };
    let (old, _, _) = s.queue_push(&short, 1).await.expect("old");
    let (young, _, _) = s
        .queue_push(&item("e", "young", PRIORITY_TASK), 2)
        .await
        .expect("y");
    // An expired item is never claimed, even before the sweep marks it.
    let it = s
        .queue_claim("e", 200)
        .await
        .expect("claim")
        .expect("young");
    assert_eq!(it.id, young);
    let gone = s.queue_expire(200).await.expect("expire");
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (gone[0].0.id.as_str(), gone[0].0.status.as_str()),
        (old.as_str(), "expired")
    );
    assert!(s.queue_expire(300).await.expect("again").is_empty());
}

fn new_delegation(source: &str, target: &str, key: Option<&str>) -> NewDelegation {
    NewDelegation {
        source_id: source.into(),
        target_id: target.into(),
        task: "do it".into(),
        idempotency_key: key.map(String::from),
        origin: "platform",
        ..Default::default()
    }
}

async fn delegations(s: &dyn Store) {
    let (d, created) = s
        .delegation_create(&new_delegation("lead", "a", Some("key-1")), 1)
        .await
        .expect("create");
    assert!(created);
    assert_eq!(
        (d.status.as_str(), d.origin.as_str()),
        ("pending", "platform")
    );
    let (same, created) = s
        .delegation_create(&new_delegation("lead", "a", Some("key-1")), 2)
        .await
        .expect("retry");
    assert_eq!((same.id.as_str(), created), (d.id.as_str(), false));
    // Another source may use the same key.
    let (other, created) = s
        .delegation_create(&new_delegation("b", "a", Some("key-1")), 2)
        .await
        .expect("other source");
    assert!(created && other.id != d.id);

    // Only from an allowed status.
    assert!(
        s.delegation_transition(&d.id, &["dispatched"], "completed", None, None, 3)
            .await
            .expect("refused")
            .is_none()
    );
    let moved = s
        .delegation_transition(&d.id, &["pending"], "dispatched", None, None, 3)
        .await
        .expect("dispatched")
        .expect("moved");
    assert_eq!(moved.status, "dispatched");
    let failed = s
        .delegation_transition(&d.id, &["dispatched"], "failed", Some("boom"), None, 4)
        .await
        .expect("failed")
        .expect("moved");
    assert_eq!(failed.error.as_deref(), Some("boom"));
    // A failed delegation gives its key up: the retry is a new delegation.
    let (fresh, created) = s
        .delegation_create(&new_delegation("lead", "a", Some("key-1")), 5)
        .await
        .expect("after failure");
    assert!(created && fresh.id != d.id);

    // An agent records the delegation it sent itself, under its own id, once.
    let rec = NewDelegation {
        id: Some("agent-task-1".into()),
        origin: "agent",
        ..new_delegation("a", "lead", None)
    };
    let (r, created) = s.delegation_create(&rec, 6).await.expect("record");
    assert_eq!(
        (r.id.as_str(), r.status.as_str(), created),
        ("agent-task-1", "dispatched", true)
    );
    assert!(!s.delegation_create(&rec, 7).await.expect("record again").1);

    // Both directions are listed, newest first.
    let list = s.delegation_list("a", 10).await.expect("list");
    assert_eq!(
        list.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec![
            "agent-task-1",
            fresh.id.as_str(),
            other.id.as_str(),
            d.id.as_str()
        ]
    );

    // A queued delegation follows its queue item.
    let (q, _) = s
        .delegation_create(&new_delegation("lead", "b", None), 8)
        .await
        .expect("queued one");
    let push = NewQueueItem {
        delegation_id: Some(q.id.clone()),
        ..item("b", "{}", PRIORITY_TASK)
    };
    let (qid, _, _) = s.queue_push(&push, 9).await.expect("push");
    let got = s.delegation_get(&q.id).await.expect("get").expect("row");
    assert_eq!(
        (got.status.as_str(), got.queue_id.as_deref()),
        ("queued", Some(qid.as_str()))
    );
    s.queue_claim("b", 10).await.expect("claim").expect("item");
    assert_eq!(
        s.delegation_get(&q.id)
            .await
            .expect("get")
            .expect("row")
            .status,
        "dispatched"
    );
    let (_, d) = s
        .queue_finish(&qid, &answered("hello back"), 11)
        .await
        .expect("finish");
    let d = d.expect("the delegation moved with its item");
    assert_eq!(
        (d.status.as_str(), d.response_preview.as_deref()),
        ("completed", Some("hello back"))
    );
}

/// What a `kill -9` leaves: a pending delegation (never sent), a dispatched one, a queued one
/// whose item was being delivered, a queued one still waiting, and a plain queued call.
async fn recovery(s: &dyn Store) {
    let create = |t: &'static str| new_delegation("src", t, None);
    let (pending, _) = s.delegation_create(&create("t1"), 1).await.expect("p");
    let (dispatched, _) = s.delegation_create(&create("t2"), 1).await.expect("d");
    s.delegation_transition(&dispatched.id, &["pending"], "dispatched", None, None, 2)
        .await
        .expect("dispatch");
    let (in_delivery, _) = s.delegation_create(&create("t3"), 1).await.expect("q1");
    let (waiting, _) = s.delegation_create(&create("t3"), 1).await.expect("q2");
    let push = |d: &Delegation| NewQueueItem {
        delegation_id: Some(d.id.clone()),
        ..item("t3", "{}", PRIORITY_TASK)
    };
    let (first, _, _) = s.queue_push(&push(&in_delivery), 3).await.expect("push 1");
    s.queue_push(&push(&waiting), 3).await.expect("push 2");
    let (plain, _, _) = s
        .queue_push(&item("t3", "plain", PRIORITY_TASK), 3)
        .await
        .expect("plain");
    let claimed = s.queue_claim("t3", 4).await.expect("claim").expect("item");
    assert_eq!(claimed.id, first);
    let agent = NewDelegation {
        id: Some("by-agent".into()),
        origin: "agent",
        ..create("t4")
    };
    s.delegation_create(&agent, 4).await.expect("agent");

    let r = s.teams_recover(5).await.expect("recover");
    // (The earlier suites left pending delegations of other sources.)
    let ours = |list: &[Delegation]| -> Vec<String> {
        list.iter()
            .filter(|d| d.source_id == "src")
            .map(|d| d.id.clone())
            .collect()
    };
    assert_eq!(ours(&r.pending), vec![pending.id.clone()]);
    let interrupted: Vec<&String> = r
        .interrupted
        .iter()
        .filter(|i| i.workspace_id == "t3")
        .map(|i| &i.id)
        .collect();
    assert_eq!(interrupted, vec![&first]);
    let mut failed: Vec<&str> = r.failed.iter().map(|d| d.id.as_str()).collect();
    failed.sort();
    let mut want = vec![dispatched.id.as_str(), in_delivery.id.as_str()];
    want.sort();
    assert_eq!(failed, want);
    for d in &r.failed {
        assert_eq!(
            (d.status.as_str(), d.error.as_deref()),
            ("failed", Some(INTERRUPTED))
        );
    }
    // What still waits keeps waiting, and drains in order; the agent's own record is its own.
    assert_eq!(
        s.delegation_get(&waiting.id)
            .await
            .expect("g")
            .expect("r")
            .status,
        "queued"
    );
    assert_eq!(
        s.delegation_get("by-agent")
            .await
            .expect("g")
            .expect("r")
            .status,
        "dispatched"
    );
    let next = s.queue_claim("t3", 6).await.expect("claim").expect("next");
    assert_eq!(next.delegation_id.as_deref(), Some(waiting.id.as_str()));
    s.queue_finish(&next.id, &answered("x"), 7)
        .await
        .expect("finish");
    assert_eq!(
        s.queue_claim("t3", 8)
            .await
            .expect("claim")
            .expect("plain")
            .id,
        plain
    );
    // A second recovery finds nothing new to fail.
    let again = s.teams_recover(9).await.expect("again");
    assert!(again.failed.is_empty());
    assert_eq!(ours(&again.pending), vec![pending.id.clone()]);
}

async fn suite(s: &dyn Store) {
    queue_order_idempotency_and_retry(s).await;
    expiry(s).await;
    delegations(s).await;
    recovery(s).await;
}

#[test]
fn placeholders_are_numbered_for_postgres() {
    assert_eq!(
        numbered("a = ? AND b IN (?, ?)"),
        "a = $1 AND b IN ($2, $3)"
    );
}

#[tokio::test]
async fn teams_store_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = SqliteStore::open(&dir.path().join("m.db"))
        .await
        .expect("open");
    suite(&s).await;
}

#[tokio::test]
async fn teams_store_postgres() {
    let Some(url) = crate::testing::postgres_url().await else {
        return;
    };
    let s = PostgresStore::connect(&url).await.expect("connect");
    suite(&s).await;
}
