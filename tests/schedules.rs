//! Schedules end to end (ADR 0053), on the test org of `support/org.rs`: the real `serve` with
//! the Workspace and schedule controllers, and a real echo agent behind a counter that records
//! every message it is sent — so "the agent sees the prompt" and "fired once" are checked where
//! the agent sees them. REST create/run-now/disable/delete, a zone's nextRunAt, bad input (422
//! naming the field, from REST and from the Kubernetes API), a paused workspace, and a kill -9
//! of the server across a due time.

mod common;
#[path = "support/org.rs"]
mod org;

use std::time::Duration;

use common::Backend;
use kube::api::{Api, Patch, PatchParams};
use molecule::resources::Workspace;
use org::{Org, eventually};
use serde_json::{Value, json};

async fn start() -> Org {
    start_on(Backend::Sqlite).await
}

async fn start_on(backend: Backend) -> Org {
    let org = Org::with_controllers(backend, "workspace,schedule", &[("cron", None)]).await;
    org.wait_online().await;
    org
}

fn path(org: &Org, rest: &str) -> String {
    format!("/workspaces/{}/schedules{rest}", org.uid("cron"))
}

fn list(org: &Org) -> Vec<Value> {
    let (code, v) = org.call("GET", &path(org, ""), None, &Value::Null);
    assert_eq!(code, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

fn one(org: &Org, id: &str) -> Value {
    list(org)
        .into_iter()
        .find(|s| s["id"] == id)
        .unwrap_or(Value::Null)
}

fn history(org: &Org, id: &str) -> (u16, Value) {
    org.call(
        "GET",
        &path(org, &format!("/{id}/history")),
        None,
        &Value::Null,
    )
}

fn times_seen(org: &Org, text: &str) -> usize {
    org.seen("cron").iter().filter(|t| *t == text).count()
}

fn expected_next(expr: &str, tz: Option<&str>) -> String {
    molecule::cron::next_fire(expr, tz, jiff::Timestamp::now())
        .expect("valid")
        .expect("a next fire")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_now_zones_disable_delete_pause_and_bad_input() {
    let org = start().await;
    // Create: 201 with the schedule, its id the name, nextRunAt read in the zone.
    let (code, v) = org.call(
        "POST",
        &path(&org, ""),
        None,
        &json!({"name": "tokyo", "cron_expr": "0 9 * * *", "timezone": "Asia/Tokyo", "prompt": "tokyo report"}),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        (&v["id"], &v["timezone"], &v["enabled"]),
        (&json!("tokyo"), &json!("Asia/Tokyo"), &json!(true))
    );
    eventually(20, "tokyo's nextRunAt", || {
        one(&org, "tokyo")["next_run_at"] == expected_next("0 9 * * *", Some("Asia/Tokyo"))
    })
    .await;
    let next = one(&org, "tokyo")["next_run_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        next.ends_with("T00:00:00Z"),
        "09:00 in Tokyo is 00:00 UTC: {next}"
    );

    // Bad input: 422 naming the field, nothing written.
    for (body, field) in [
        (
            json!({"name": "b", "cron_expr": "61 * * * *", "prompt": "x"}),
            "cron_expr",
        ),
        (
            json!({"name": "b", "cron_expr": "@daily", "timezone": "Mars/Base", "prompt": "x"}),
            "timezone",
        ),
        (
            json!({"name": "tokyo", "cron_expr": "@daily", "prompt": "x"}),
            "name",
        ),
    ] {
        let (code, v) = org.call("POST", &path(&org, ""), None, &body);
        assert_eq!((code, v["field"].as_str()), (422, Some(field)), "{v}");
    }
    let (code, v) = org.call(
        "PATCH",
        &path(&org, "/tokyo"),
        None,
        &json!({"cron_expr": "* *"}),
    );
    assert_eq!((code, v["field"].as_str()), (422, Some("cron_expr")), "{v}");
    assert_eq!(list(&org).len(), 1);
    // The same rules hold for kubectl and any API client: 422 naming spec.schedules[i].<field>.
    let api: Api<Workspace> = Api::namespaced(org.s.client().await, "default");
    for (bad, field) in [
        (
            json!({"name": "k", "cronExpr": "* * * 13 *", "prompt": "x"}),
            "spec.schedules[1].cronExpr",
        ),
        (
            json!({"name": "k", "cronExpr": "@daily", "timezone": "Nowhere/Town", "prompt": "x"}),
            "spec.schedules[1].timezone",
        ),
        (
            json!({"name": "tokyo", "cronExpr": "@daily", "prompt": "x"}),
            "spec.schedules[1].name",
        ),
    ] {
        let tokyo = json!({"name": "tokyo", "cronExpr": "0 9 * * *", "timezone": "Asia/Tokyo", "prompt": "tokyo report"});
        let err = api
            .patch(
                "cron",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"schedules": [tokyo, bad]}})),
            )
            .await
            .expect_err("refused");
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{s:?}");
                assert!(s.message.contains(field), "{field}: {}", s.message);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(list(&org).len(), 1);

    // Run now: the agent gets the prompt once; status and history say so.
    let (code, v) = org.call("POST", &path(&org, "/tokyo/run"), None, &Value::Null);
    assert_eq!(code, 202, "{v}");
    eventually(20, "the run-now fire", || {
        let s = one(&org, "tokyo");
        s["run_count"] == 1 && s["last_status"] == "ok"
    })
    .await;
    assert_eq!(times_seen(&org, "tokyo report"), 1);
    let (code, h) = history(&org, "tokyo");
    assert_eq!(code, 200, "{h}");
    let rows = h.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{h}");
    assert_eq!(rows[0]["status"], "ok");
    assert_eq!(
        one(&org, "tokyo")["next_run_at"],
        next.as_str(),
        "run-now keeps the next fire"
    );

    // Disable: no next fire; the history stays.
    let (code, v) = org.call(
        "PATCH",
        &path(&org, "/tokyo"),
        None,
        &json!({"enabled": false}),
    );
    assert_eq!((code, &v["enabled"]), (200, &json!(false)), "{v}");
    eventually(20, "no next fire when disabled", || {
        one(&org, "tokyo")["next_run_at"].is_null()
    })
    .await;
    assert_eq!(one(&org, "tokyo")["run_count"], 1);

    // Delete: gone from spec and status; its routes answer 404.
    let (code, v) = org.call("DELETE", &path(&org, "/tokyo"), None, &Value::Null);
    assert_eq!(code, 200, "{v}");
    assert!(list(&org).is_empty());
    assert_eq!(history(&org, "tokyo").0, 404);
    assert_eq!(
        org.call("POST", &path(&org, "/tokyo/run"), None, &Value::Null)
            .0,
        404
    );
    eventually(20, "status.schedules emptied", || {
        let ws = org
            .call(
                "GET",
                "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces/cron",
                None,
                &Value::Null,
            )
            .1;
        ws["status"]["schedules"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    })
    .await;

    // A workspace token may not manage schedules.
    let (code, _) = org.call(
        "GET",
        &path(&org, ""),
        Some(&org.token("cron")),
        &Value::Null,
    );
    assert_eq!(code, 403);

    // Paused: no next fire, run-now refused.
    let (code, v) = org.call(
        "POST",
        &path(&org, ""),
        None,
        &json!({"name": "minutely", "cron_expr": "* * * * *", "prompt": "tick"}),
    );
    assert_eq!(code, 201, "{v}");
    eventually(20, "minutely's nextRunAt", || {
        one(&org, "minutely")["next_run_at"].is_string()
    })
    .await;
    let (code, v) = org.call(
        "POST",
        &format!("/workspaces/{}/pause", org.uid("cron")),
        None,
        &Value::Null,
    );
    assert_eq!(code, 200, "{v}");
    eventually(20, "no next fire when paused", || {
        one(&org, "minutely")["next_run_at"].is_null()
    })
    .await;
    let (code, v) = org.call("POST", &path(&org, "/minutely/run"), None, &Value::Null);
    assert_eq!(code, 409, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_minute_fires_and_kill9_across_a_due_time_fires_once_after_restart_sqlite() {
    kill9_across_a_due_time(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_minute_fires_and_kill9_across_a_due_time_fires_once_after_restart_postgres() {
    kill9_across_a_due_time(true).await;
}

/// An every-minute schedule; serve is killed before its due time and restarted after it: the
/// missed fire reaches the agent once, and the next fire is after it.
async fn kill9_across_a_due_time(postgres: bool) {
    let Some(backend) = Backend::get(postgres).await else {
        return;
    };
    let mut org = start_on(backend).await;
    let (code, v) = org.call(
        "POST",
        &path(&org, ""),
        None,
        &json!({"name": "every", "cron_expr": "* * * * *", "prompt": "tick"}),
    );
    assert_eq!(code, 201, "{v}");
    // A due time at least 3 s ahead, so the kill lands before it.
    let due = loop {
        let mut next = None;
        eventually(20, "every's nextRunAt", || {
            next = one(&org, "every")["next_run_at"].as_str().map(String::from);
            next.is_some()
        })
        .await;
        let due: jiff::Timestamp = next.unwrap().parse().expect("timestamp");
        if due.duration_since(jiff::Timestamp::now()).as_secs() >= 3 {
            break due;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
    };
    // A due time skipped above may have fired already: count from here.
    let before = times_seen(&org, "tick");
    // One claimed run per message the agent saw.
    let runs_before = before as i64;
    eventually(10, "the earlier runs in status", || {
        one(&org, "every")["run_count"] == runs_before
    })
    .await;
    tokio::task::block_in_place(|| org.s.kill9());
    let wait = due.duration_since(jiff::Timestamp::now()).as_secs().max(0) as u64 + 2;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        times_seen(&org, "tick"),
        before,
        "nothing fires while the server is down"
    );
    tokio::task::block_in_place(|| org.s.spawn());
    // The missed fire runs once after the restart, and the agent sees it.
    eventually(30, "the missed fire", || {
        times_seen(&org, "tick") == before + 1
    })
    .await;
    eventually(20, "its status", || {
        let s = one(&org, "every");
        s["run_count"] == runs_before + 1 && s["last_status"] == "ok"
    })
    .await;
    let s = one(&org, "every");
    let next: jiff::Timestamp = s["next_run_at"]
        .as_str()
        .expect("next")
        .parse()
        .expect("ts");
    assert!(next > due, "the next fire is after the missed one: {s}");
    // No second fire of the same due time (the next is a minute later).
    tokio::time::sleep(Duration::from_secs(3)).await;
    if jiff::Timestamp::now() < next {
        assert_eq!(times_seen(&org, "tick"), before + 1);
        assert_eq!(
            history(&org, "every").1.as_array().map(Vec::len),
            Some(before + 1)
        );
    }
}

/// On Docker, end to end: an echo container's every-minute schedule fires within a minute, the
/// agent in the container answers (its echo of the prompt is in the `a2a_receive` activity
/// row), and `status.schedules` and the history route say `ok`.
#[test]
fn an_every_minute_schedule_reaches_an_echo_container_on_docker() {
    use common::{Cleanup, Server, apply, eventually, get, phase, ws_yaml};
    let ns = format!("s{}", molecule::util::random_suffix(8));
    let _clean = Cleanup(ns.clone());
    let s = Server::start_with(
        Backend::Sqlite,
        &["--controllers", "all", "--agent-heartbeat-seconds", "1"],
    );
    apply(
        &s,
        &ns,
        &ws_yaml(
            "cron",
            "  schedules:\n  - name: tick\n    cronExpr: \"* * * * *\"\n    prompt: \"docker tick\"\n",
        ),
    );
    assert!(
        eventually(180, || phase(&s, &ns, "cron") == "Online"),
        "the workspace did not come Online:\n{}",
        common::tail(&s)
    );
    let status = || get(&s, &ns, "cron")["status"]["schedules"][0].clone();
    assert!(
        eventually(80, || status()["lastStatus"] == "ok"),
        "the schedule did not fire within a minute: {}\n{}",
        status(),
        common::tail(&s)
    );
    assert!(
        status()["runCount"].as_i64().unwrap_or(0) >= 1,
        "{}",
        status()
    );
    let uid = get(&s, &ns, "cron")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let (code, body) = s.http_as(
        "GET",
        &format!("/workspaces/{uid}/activity?type=a2a_receive"),
        Some(&s.token()),
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body).expect("rows");
    let fire = rows
        .iter()
        .find(|r| r["summary"] == "schedule:tick: docker tick")
        .unwrap_or_else(|| panic!("no fire in the activity log: {body}"));
    assert_eq!(fire["status"], "ok", "{fire}");
    assert!(
        fire["response_body"].to_string().contains("docker tick"),
        "the agent's answer is not in the row: {fire}"
    );
    let (code, body) = s.http_as(
        "GET",
        &format!("/workspaces/{uid}/schedules/tick/history"),
        Some(&s.token()),
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let history: Vec<Value> = serde_json::from_str(&body).expect("history");
    assert!(
        history.iter().any(|h| h["status"] == "ok"),
        "the history has no fire: {body}"
    );
}
