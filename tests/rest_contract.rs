//! The REST contract of the original's clients and scripts (ADR 0049), against the real
//! `molecule serve` with `--controllers none`: `/registry/*` on the main port with workspace
//! tokens, development-mode test tokens (several live at once, revoked by a new own token,
//! refused in production), register / heartbeat / update-card with their answers and bad
//! input, the answer shapes of PATCH / DELETE / GET, and the original event names of
//! `GET /events`. Status is written the way the controllers write it (the status subresource).

mod common;

use common::{Backend, Server, eventually};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const API: &str = "/apis/molecule.ai/v1alpha1";

fn call(s: &Server, token: Option<&str>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let raw = if body.is_null() {
        vec![]
    } else {
        body.to_string().into_bytes()
    };
    let (code, b) = s.http_as(method, path, token, &raw);
    let v = if b.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&b).unwrap_or(Value::String(b))
    };
    (code, v)
}

fn raw(s: &Server, token: &str, path: &str, body: &str) -> (u16, Value) {
    let (code, b) = s.http_as("POST", path, Some(token), body.as_bytes());
    (code, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

fn record(s: &Server, name: &str) -> Value {
    let (code, b) = s.http(
        "GET",
        &format!("{API}/namespaces/default/workspaces/{name}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{b}");
    serde_json::from_str(&b).expect("json")
}

fn patch_status(s: &Server, name: &str, status: Value) {
    let (code, b) = s.http(
        "PATCH",
        &format!("{API}/namespaces/default/workspaces/{name}/status"),
        Some("application/merge-patch+json"),
        json!({ "status": status }).to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{b}");
}

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

fn create(s: &Server, name: &str) -> (String, String) {
    let (code, b) = call(
        s,
        Some(&s.token()),
        "POST",
        "/workspaces",
        json!({"name": name}),
    );
    assert_eq!(code, 201, "{b}");
    (
        b["id"].as_str().expect("id").to_string(),
        b["k8s_name"].as_str().expect("name").to_string(),
    )
}

fn mint(s: &Server, id: &str) -> String {
    let (code, b) = call(
        s,
        Some(&s.token()),
        "GET",
        &format!("/admin/workspaces/{id}/test-token"),
        Value::Null,
    );
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["workspace_id"], id);
    b["auth_token"].as_str().expect("auth_token").to_string()
}

#[test]
fn registry_on_the_main_port_with_minted_tokens_and_the_original_answers() {
    let s = Server::start(Backend::Sqlite);
    let admin = s.token();
    let (id, name) = create(&s, "Agent One");
    let (other, other_name) = create(&s, "Agent Two");

    // Before registration the card is null (19).
    let (code, w) = call(
        &s,
        Some(&admin),
        "GET",
        &format!("/workspaces/{id}"),
        Value::Null,
    );
    assert_eq!(code, 200, "{w}");
    assert!(w["agent_card"].is_null(), "{w}");

    // The test-token route: admin only; several live tokens; only digests on record (17).
    let path = format!("/admin/workspaces/{id}/test-token");
    assert_eq!(call(&s, None, "GET", &path, Value::Null).0, 401);
    assert_eq!(call(&s, Some("nope"), "GET", &path, Value::Null).0, 401);
    let t1 = mint(&s, &id);
    let t2 = mint(&s, &id);
    assert_ne!(t1, t2);
    assert_eq!(
        call(&s, Some(&t1), "GET", &path, Value::Null).0,
        403,
        "a workspace token cannot mint"
    );
    assert_eq!(
        call(
            &s,
            Some(&admin),
            "GET",
            "/admin/workspaces/00000000-0000-0000-0000-000000000000/test-token",
            Value::Null
        )
        .0,
        404
    );
    let rec = record(&s, &name);
    let on_record = rec.to_string();
    assert!(!on_record.contains(&t1) && !on_record.contains(&t2));
    assert_eq!(
        rec["status"]["extraTokens"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(rec["status"]["extraTokens"][0]["hash"], sha(&t1).as_str());
    let t_other = mint(&s, &other);
    // Both minted tokens act as the workspace on the shim's own routes.
    for t in [&t1, &t2] {
        let (code, b) = call(
            &s,
            Some(t),
            "GET",
            &format!("/workspaces/{id}"),
            Value::Null,
        );
        assert_eq!(code, 200, "{b}");
    }

    // Register on the main port (16, 18): bad input first — nothing is written.
    let reg = "/registry/register";
    for bad_url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]:8000",
        "http://metadata.google.internal/",
        "http://[::ffff:169.254.169.254]/",
        "ftp://agent:1",
    ] {
        let (code, b) = raw(
            &s,
            &t1,
            reg,
            &json!({"id": id, "url": bad_url, "agent_card": {"name": "a"}}).to_string(),
        );
        assert_eq!(code, 400, "{bad_url}: {b}");
    }
    let (code, b) = raw(&s, &t1, reg, "{not json");
    assert_eq!(code, 400, "{b}");
    assert!(
        b["error"].as_str().unwrap_or("").contains("invalid body"),
        "{b}"
    );
    let (code, b) = raw(&s, &t1, reg, &json!({"url": "http://a:1"}).to_string());
    assert_eq!(code, 400, "missing id: {b}");
    assert!(b["error"].as_str().unwrap_or("").contains("id"), "{b}");
    let (code, b) = raw(
        &s,
        &t1,
        reg,
        &json!({"id": id, "url": "http://agent-one:8000", "agent_card": "not an object"})
            .to_string(),
    );
    assert_eq!(code, 400, "{b}");
    assert_eq!(b["error"], "agent_card must be a JSON object");
    let good = json!({"id": id, "url": "http://agent-one:8000", "agent_card": {"name": "one"}})
        .to_string();
    assert_eq!(s.http_as("POST", reg, None, good.as_bytes()).0, 401);
    assert_eq!(raw(&s, "wrong-token", reg, &good).0, 401);
    assert_eq!(
        raw(&s, &t_other, reg, &good).0,
        401,
        "another workspace's token"
    );
    assert_eq!(
        raw(&s, &admin, reg, &good).0,
        401,
        "the admin is not an agent"
    );
    let st = &record(&s, &name)["status"];
    assert!(
        st.get("agentUrl").is_none() && st.get("agentCard").is_none(),
        "refused calls wrote nothing: {st}"
    );
    let (code, b) = raw(&s, &t1, reg, &good);
    assert_eq!(
        (code, b["status"].clone()),
        (200, json!("registered")),
        "{b}"
    );
    let st = record(&s, &name)["status"].clone();
    assert_eq!(st["agentUrl"], "http://agent-one:8000");
    assert_eq!(st["agentCard"]["name"], "one");
    assert!(eventually(5, || call(
        &s,
        Some(&admin),
        "GET",
        &format!("/workspaces/{id}"),
        Value::Null
    )
    .1["agent_card"]["name"]
        == "one"));

    // update-card (18): any live token of the workspace; a bad card writes nothing.
    let uc = "/registry/update-card";
    let (code, b) = raw(
        &s,
        &t2,
        uc,
        &json!({"workspace_id": id, "agent_card": [1]}).to_string(),
    );
    assert_eq!(code, 400, "{b}");
    let (code, b) = raw(&s, &t2, uc, &json!({"workspace_id": id}).to_string());
    assert_eq!(code, 400, "{b}");
    assert_eq!(record(&s, &name)["status"]["agentCard"]["name"], "one");
    let (code, b) = raw(
        &s,
        &t2,
        uc,
        &json!({"workspace_id": id, "agent_card": {"name": "one", "skills": [{"id": "s"}]}})
            .to_string(),
    );
    assert_eq!((code, b), (200, json!({"status": "updated"})));
    assert_eq!(
        record(&s, &name)["status"]["agentCard"]["skills"][0]["id"],
        "s"
    );

    // Heartbeats (18): the original's fields; out-of-range numbers are refused.
    let hb = "/registry/heartbeat";
    for bad in [
        json!({"workspace_id": id, "error_rate": 1.5}),
        json!({"workspace_id": id, "error_rate": "high"}),
        json!({"workspace_id": id, "active_tasks": -1}),
        json!({"error_rate": 0.1}),
    ] {
        let (code, b) = raw(&s, &t1, hb, &bad.to_string());
        assert_eq!(code, 400, "{bad}: {b}");
    }
    assert!(record(&s, &name)["status"].get("errorRate").is_none());
    let (code, b) = raw(
        &s,
        &t2,
        hb,
        &json!({"workspace_id": id, "error_rate": 0.6, "sample_error": "upstream 500", "active_tasks": 2, "uptime_seconds": 30, "current_task": "summarise"}).to_string(),
    );
    assert_eq!((code, b), (200, json!({"status": "ok"})));
    let st = record(&s, &name)["status"].clone();
    assert_eq!(st["errorRate"], 0.6);
    assert_eq!(st["activeTasks"], 2);
    assert_eq!(st["currentTask"], "summarise");
    assert_eq!(st["uptimeSeconds"], 30);

    // A new own token (what the controller writes on every provision, so on every restart)
    // revokes every minted token, on the registry and on the shim (17).
    patch_status(&s, &name, json!({"tokenHash": sha("the-new-own-token")}));
    assert!(eventually(5, || call(
        &s,
        Some(&t1),
        "GET",
        &format!("/workspaces/{id}"),
        Value::Null
    )
    .0 == 401));
    for t in [&t1, &t2] {
        let beat = json!({"workspace_id": id, "error_rate": 0.0}).to_string();
        assert_eq!(raw(&s, t, hb, &beat).0, 401);
    }
    let beat = json!({"workspace_id": id, "error_rate": 0.0}).to_string();
    assert_eq!(raw(&s, "the-new-own-token", hb, &beat).0, 200);
    let t3 = mint(&s, &id);
    assert_eq!(
        raw(&s, &t3, hb, &beat).0,
        200,
        "a token minted after it is live"
    );
    let rec = record(&s, &name);
    assert_eq!(
        rec["status"]["extraTokens"].as_array().map(Vec::len),
        Some(1),
        "dead tokens are dropped at the next mint: {rec}"
    );

    // Answer shapes (19).
    let (code, b) = call(
        &s,
        Some(&admin),
        "PATCH",
        &format!("/workspaces/{other}"),
        json!({"name": "Agent 2"}),
    );
    assert_eq!((code, b), (200, json!({"status": "updated"})));
    let (code, b) = call(
        &s,
        Some(&admin),
        "DELETE",
        &format!("/workspaces/{other}"),
        Value::Null,
    );
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["status"], "removed");
    assert!(eventually(10, || s
        .http(
            "GET",
            &format!("{API}/namespaces/default/workspaces/{other_name}"),
            None,
            b""
        )
        .0
        == 404));
    assert_eq!(
        raw(
            &s,
            &t_other,
            hb,
            &json!({"workspace_id": other}).to_string()
        )
        .0,
        404,
        "the tokens of a deleted workspace are gone with it"
    );

    // GET /events and GET /events/:id use the original names (20).
    let (code, b) = s.http(
        "POST",
        "/api/v1/namespaces/default/events",
        Some("application/json"),
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "agent-one.online", "namespace": "default"},
            "involvedObject": {"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "name": name, "namespace": "default", "uid": id},
            "reason": "Online", "type": "Normal", "message": "the agent is registered and heartbeating",
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
            "source": {"component": "molecule-workspace"},
        })
        .to_string()
        .as_bytes(),
    );
    assert_eq!(code, 201, "{b}");
    let (code, all) = call(&s, Some(&admin), "GET", "/events", Value::Null);
    assert_eq!(code, 200, "{all}");
    let types = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|r| r["event_type"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let all_types = types(&all);
    for want in [
        "WORKSPACE_PROVISIONING",
        "WORKSPACE_ONLINE",
        "WORKSPACE_REMOVED",
    ] {
        assert!(
            all_types.iter().any(|t| t == want),
            "{want} in {all_types:?}"
        );
    }
    assert!(
        all_types.iter().all(|t| !t.starts_with("workspace.")),
        "{all_types:?}"
    );
    let (code, mine) = call(&s, Some(&t3), "GET", &format!("/events/{id}"), Value::Null);
    assert_eq!(code, 200, "{mine}");
    let mine_types = types(&mine);
    assert!(
        mine_types.contains(&"WORKSPACE_ONLINE".to_string()),
        "{mine_types:?}"
    );
    assert!(
        mine_types.contains(&"WORKSPACE_PROVISIONING".to_string()),
        "{mine_types:?}"
    );
    let online = mine
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["event_type"] == "WORKSPACE_ONLINE")
        .expect("online row");
    assert_eq!(online["payload"]["reason"], "Online");
    assert_eq!(online["workspace_id"], id.as_str());
}

#[test]
fn production_serves_no_test_tokens() {
    let s = Server::start_with_env(Backend::Sqlite, &[], &[("MOLECULE_ENV", "production")]);
    let (id, name) = create(&s, "Prod");
    let (code, b) = call(
        &s,
        Some(&s.token()),
        "GET",
        &format!("/admin/workspaces/{id}/test-token"),
        Value::Null,
    );
    assert_eq!(code, 404, "{b}");
    assert!(record(&s, &name)["status"].get("extraTokens").is_none());
}
