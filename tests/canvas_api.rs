//! The REST shim and the live event stream (issue: canvas), against the real `molecule serve`
//! with `--controllers none`: records are written by the shim and by the real kubectl, status
//! is written the way the controllers write it (the status subresource). Covers every route's
//! status codes, JSON shapes and auth, bad input, kubectl changes reaching a WebSocket client
//! within 1 s, the SSE twin, and slow stream clients being dropped.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Server, eventually, text};
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const API: &str = "/apis/molecule.ai/v1alpha1";

fn j(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn call(s: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let raw = if body.is_null() {
        vec![]
    } else {
        body.to_string().into_bytes()
    };
    let (code, b) = s.http_as(method, path, Some(&s.token()), &raw);
    (code, if b.is_empty() { Value::Null } else { j(&b) })
}

fn call_as(s: &Server, token: Option<&str>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let raw = if body.is_null() {
        vec![]
    } else {
        body.to_string().into_bytes()
    };
    let (code, b) = s.http_as(method, path, token, &raw);
    (code, if b.is_empty() { Value::Null } else { j(&b) })
}

fn ok(s: &Server, args: &[&str]) -> String {
    let o = s.kubectl("1.33", args);
    assert!(o.status.success(), "kubectl {args:?}:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn apply(s: &Server, yaml: &str) {
    let o = s.kubectl_stdin("1.33", &["apply", "-f", "-"], Some(yaml));
    assert!(o.status.success(), "apply:\n{}", text(&o));
}

/// The record behind a shim id.
fn record(s: &Server, ns: &str, name: &str) -> Value {
    let (code, b) = s.http(
        "GET",
        &format!("{API}/namespaces/{ns}/workspaces/{name}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{b}");
    j(&b)
}

/// Writes status the way the controllers and the registry endpoints do.
fn patch_status(s: &Server, ns: &str, name: &str, status: Value) {
    let (code, b) = s.http(
        "PATCH",
        &format!("{API}/namespaces/{ns}/workspaces/{name}/status"),
        Some("application/merge-patch+json"),
        json!({ "status": status }).to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{b}");
}

/// A record of `plural` in `default` by name.
fn record_of(s: &Server, plural: &str, name: &Value) -> Value {
    let name = name.as_str().expect("a name");
    let (code, b) = s.http(
        "GET",
        &format!("{API}/namespaces/default/{plural}/{name}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{b}");
    j(&b)
}

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

/// Creates a workspace through the shim; returns (id, k8s name).
fn create(s: &Server, body: Value) -> (String, String) {
    let (code, b) = call(s, "POST", "/workspaces", body);
    assert_eq!(code, 201, "{b}");
    assert_eq!(b["status"], "provisioning");
    (
        b["id"].as_str().expect("id").to_string(),
        b["k8s_name"].as_str().expect("name").to_string(),
    )
}

fn count(s: &Server, kind: &str) -> usize {
    ok(s, &["get", kind, "-A", "-o", "name"])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "role",
    "tier",
    "status",
    "runtime",
    "agent_card",
    "url",
    "parent_id",
    "active_tasks",
    "current_task",
    "last_error_rate",
    "last_sample_error",
    "uptime_seconds",
    "x",
    "y",
    "collapsed",
    "budget_limit",
    "provision_timeout_ms",
    "conditions",
    "phase",
];

fn contract(s: &Server) {
    let admin = s.token();
    // Health is public; everything else wants a token.
    let (code, b) = call_as(s, None, "GET", "/health", Value::Null);
    assert_eq!((code, b), (200, json!({"status": "ok"})));
    let (code, b) = call_as(s, None, "GET", "/workspaces", Value::Null);
    assert_eq!(code, 401);
    assert_eq!(b["error"], "missing bearer token");
    assert_eq!(
        call_as(s, Some("nope"), "GET", "/workspaces", Value::Null).0,
        401
    );
    let (code, b) = call(s, "GET", "/workspaces", Value::Null);
    assert_eq!((code, b), (200, json!([])));

    // Create: a record with a generated DNS name and the display name.
    let (lead, lead_name) = create(
        s,
        json!({"name": "Research Lead", "role": "lead", "tier": 3, "runtime": "echo", "x": 10, "y": 20, "budget_limit": 500}),
    );
    assert!(lead_name.starts_with("research-lead-"), "{lead_name}");
    let r = record(s, "default", &lead_name);
    assert_eq!(r["metadata"]["uid"], lead.as_str());
    assert_eq!(r["spec"]["displayName"], "Research Lead");
    assert_eq!(r["spec"]["tier"], 3);
    let (child, child_name) = create(
        s,
        json!({"name": "Analyst", "parent_id": lead, "canvas": {"x": 5, "y": 6}}),
    );
    assert_eq!(
        record(s, "default", &child_name)["spec"]["parentRef"]["name"],
        lead_name.as_str()
    );

    let (code, w) = call(s, "GET", &format!("/workspaces/{lead}"), Value::Null);
    assert_eq!(code, 200, "{w}");
    for f in FIELDS {
        assert!(w.get(*f).is_some(), "GET /workspaces/:id lacks {f}: {w}");
    }
    assert_eq!(w["name"], "Research Lead");
    assert_eq!(w["role"], "lead");
    assert_eq!(w["tier"], 3);
    assert_eq!(w["status"], "provisioning");
    assert_eq!(w["runtime"], "echo");
    assert_eq!(w["x"], 10.0);
    assert_eq!(w["y"], 20.0);
    assert_eq!(w["budget_limit"], 500);
    assert!(w["parent_id"].is_null());
    let (_, list) = call(s, "GET", "/workspaces", Value::Null);
    let list = list.as_array().expect("array").clone();
    assert_eq!(list.len(), 2);
    let listed_child = list
        .iter()
        .find(|w| w["id"] == child.as_str())
        .expect("child listed");
    assert_eq!(listed_child["parent_id"], lead.as_str());
    assert_eq!(listed_child["x"], 5.0);

    // Status comes from the record, in the original's lower case.
    patch_status(
        s,
        "default",
        &lead_name,
        json!({"phase": "Online", "url": "http://127.0.0.1:1", "activeTasks": 2, "currentTask": "summarise", "errorRate": 0.25, "uptimeSeconds": 42, "agentCard": {"name": "echo"}, "conditions": [{"type": "Ready", "status": "True", "reason": "Online", "message": "ok"}]}),
    );
    assert!(eventually(5, || call(
        s,
        "GET",
        &format!("/workspaces/{lead}"),
        Value::Null
    )
    .1["status"]
        == "online"));
    let (_, w) = call(s, "GET", &format!("/workspaces/{lead}"), Value::Null);
    assert_eq!(w["phase"], "Online");
    assert_eq!(w["active_tasks"], 2);
    assert_eq!(w["current_task"], "summarise");
    assert_eq!(w["last_error_rate"], 0.25);
    assert_eq!(w["uptime_seconds"], 42);
    assert_eq!(w["agent_card"]["name"], "echo");
    assert_eq!(w["url"], "http://127.0.0.1:1");
    assert_eq!(w["conditions"][0]["type"], "Ready");

    // PATCH: position and collapse are annotations (no spec change: the generation stays).
    let gen0 = record(s, "default", &lead_name)["metadata"]["generation"].clone();
    let (code, b) = call(
        s,
        "PATCH",
        &format!("/workspaces/{lead}"),
        json!({"x": 99.5, "y": -3, "collapsed": true}),
    );
    assert_eq!((code, b), (200, json!({"status": "updated"})));
    let r = record(s, "default", &lead_name);
    assert_eq!(
        r["metadata"]["generation"], gen0,
        "moving a node must not restart it"
    );
    assert_eq!(r["metadata"]["annotations"]["molecule.ai/canvas-x"], "99.5");
    let (_, w) = call(s, "GET", &format!("/workspaces/{lead}"), Value::Null);
    assert_eq!(
        (w["x"].clone(), w["y"].clone(), w["collapsed"].clone()),
        (json!(99.5), json!(-3.0), json!(true))
    );
    let (code, _) = call(
        s,
        "PATCH",
        &format!("/workspaces/{child}"),
        json!({"name": "Senior Analyst", "role": "analyst", "tier": 1, "runtime": "echo"}),
    );
    assert_eq!(code, 200);
    let r = record(s, "default", &child_name);
    assert_eq!(r["spec"]["displayName"], "Senior Analyst");
    assert_eq!(r["spec"]["tier"], 1);
    // Re-parenting: not under its own descendant; null detaches.
    let (code, b) = call(
        s,
        "PATCH",
        &format!("/workspaces/{lead}"),
        json!({"parent_id": child}),
    );
    assert_eq!(code, 400, "{b}");
    assert!(
        b["error"].as_str().unwrap_or("").contains("own ancestor"),
        "{b}"
    );
    let (code, _) = call(
        s,
        "PATCH",
        &format!("/workspaces/{child}"),
        json!({"parent_id": null}),
    );
    assert_eq!(code, 200);
    assert!(
        record(s, "default", &child_name)["spec"]
            .get("parentRef")
            .is_none()
    );
    let (code, _) = call(
        s,
        "PATCH",
        &format!("/workspaces/{child}"),
        json!({"parent_id": lead}),
    );
    assert_eq!(code, 200);
    assert_eq!(
        call(s, "GET", &format!("/workspaces/{child}"), Value::Null).1["parent_id"],
        lead.as_str()
    );

    // Workspace tokens: only the sha256 is on record.
    patch_status(
        s,
        "default",
        &lead_name,
        json!({"tokenHash": sha("tok-lead")}),
    );
    patch_status(
        s,
        "default",
        &child_name,
        json!({"tokenHash": sha("tok-child")}),
    );
    assert!(eventually(5, || call_as(
        s,
        Some("tok-lead"),
        "GET",
        &format!("/workspaces/{lead}"),
        Value::Null
    )
    .0 == 200));
    // ADR 0038: a workspace's token reads what its workspace may talk to (a child its parent)
    // and lists those workspaces only.
    let (code, b) = call_as(
        s,
        Some("tok-child"),
        "GET",
        &format!("/workspaces/{lead}"),
        Value::Null,
    );
    assert_eq!(code, 200, "the parent, read with the child's token: {b}");
    let (code, b) = call_as(s, Some("tok-lead"), "GET", "/workspaces", Value::Null);
    assert_eq!(code, 200, "{b}");
    assert_eq!(b.as_array().map(Vec::len), Some(2), "{b}");
    assert_eq!(
        call_as(
            s,
            Some("tok-lead"),
            "POST",
            "/workspaces",
            json!({"name": "x"})
        )
        .0,
        403
    );
    assert_eq!(
        call_as(
            s,
            Some("tok-child"),
            "DELETE",
            &format!("/workspaces/{lead}"),
            Value::Null
        )
        .0,
        403,
        "a workspace deletes itself only (ADR 0038)"
    );
    assert_eq!(
        call_as(
            s,
            Some("random"),
            "GET",
            &format!("/workspaces/{lead}"),
            Value::Null
        )
        .0,
        401
    );
    assert_eq!(
        call_as(
            s,
            None,
            "POST",
            &format!("/workspaces/{lead}/restart"),
            Value::Null
        )
        .0,
        401
    );
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        call_as(
            s,
            Some("tok-lead"),
            "GET",
            &format!("/workspaces/{unknown}"),
            Value::Null
        )
        .0,
        403,
        "no existence oracle for workspace tokens"
    );
    assert_eq!(
        call_as(
            s,
            Some("tok-lead"),
            "PATCH",
            &format!("/workspaces/{lead}"),
            json!({"x": 1})
        )
        .0,
        200
    );

    // Restart sets the restart annotation; it takes the admin token (ADR 0038).
    assert_eq!(
        call_as(
            s,
            Some("tok-lead"),
            "POST",
            &format!("/workspaces/{lead}/restart"),
            Value::Null,
        )
        .0,
        403
    );
    let (code, b) = call(
        s,
        "POST",
        &format!("/workspaces/{lead}/restart"),
        Value::Null,
    );
    assert_eq!((code, b), (200, json!({"status": "provisioning"})));
    assert!(
        record(s, "default", &lead_name)["metadata"]["annotations"]["molecule.ai/restartedAt"]
            .is_string()
    );

    // Pause cascades; a child cannot resume or restart under a paused parent.
    let (code, b) = call(s, "POST", &format!("/workspaces/{lead}/pause"), Value::Null);
    assert_eq!(
        (code, b),
        (200, json!({"status": "paused", "paused_count": 2}))
    );
    assert_eq!(record(s, "default", &child_name)["spec"]["paused"], true);
    let (code, b) = call(
        s,
        "POST",
        &format!("/workspaces/{child}/resume"),
        Value::Null,
    );
    assert_eq!(code, 409, "{b}");
    assert!(
        b["error"].as_str().unwrap_or("").contains("Research Lead"),
        "{b}"
    );
    assert_eq!(
        call(
            s,
            "POST",
            &format!("/workspaces/{child}/restart"),
            Value::Null
        )
        .0,
        409
    );
    assert_eq!(
        call(s, "POST", &format!("/workspaces/{lead}/pause"), Value::Null).0,
        409,
        "already paused"
    );
    let (code, b) = call(
        s,
        "POST",
        &format!("/workspaces/{lead}/resume"),
        Value::Null,
    );
    assert_eq!(
        (code, b),
        (200, json!({"status": "provisioning", "resumed_count": 2}))
    );
    assert!(
        record(s, "default", &child_name)["spec"]
            .get("paused")
            .is_none_or(|p| p == false)
    );
    assert_eq!(
        call(
            s,
            "POST",
            &format!("/workspaces/{lead}/resume"),
            Value::Null
        )
        .0,
        409,
        "not paused"
    );

    // Secrets: values go in, never come out; a change restarts the workspace once.
    let before =
        record(s, "default", &child_name)["metadata"]["annotations"]["molecule.ai/restartedAt"]
            .clone();
    let (code, b) = call(
        s,
        "PUT",
        &format!("/workspaces/{child}/secrets"),
        json!({"key": "API_KEY", "value": "s3cret-value"}),
    );
    assert_eq!(
        (code, b),
        (200, json!({"status": "saved", "key": "API_KEY"}))
    );
    assert!(before.is_null(), "{before}");
    assert!(
        record(s, "default", &child_name)["metadata"]["annotations"]["molecule.ai/restartedAt"]
            .is_string(),
        "a secret change restarts the workspace"
    );
    let secret = j(&ok(
        s,
        &[
            "get",
            "secret",
            &format!("{child_name}-secrets"),
            "-o",
            "json",
        ],
    ));
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["name"],
        child_name.as_str()
    );
    assert_eq!(
        call(
            s,
            "POST",
            &format!("/workspaces/{child}/secrets"),
            json!({"key": "OTHER", "value": "v"})
        )
        .0,
        200
    );
    let (code, b) = call(
        s,
        "PUT",
        "/settings/secrets",
        json!({"key": "GLOBAL_KEY", "value": "global-value"}),
    );
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["status"], "saved");
    assert_eq!(b["scope"], "global");
    assert_eq!(
        call(
            s,
            "PUT",
            "/settings/secrets",
            json!({"key": "API_KEY", "value": "shadowed"})
        )
        .0,
        200
    );
    let (code, raw) = s.http_as(
        "GET",
        &format!("/workspaces/{child}/secrets"),
        Some(&admin),
        b"",
    );
    assert_eq!(code, 200);
    assert!(
        !raw.contains("s3cret-value") && !raw.contains("global-value"),
        "values leak: {raw}"
    );
    let list = j(&raw);
    let scope = |k: &str| {
        list.as_array()
            .expect("a")
            .iter()
            .filter(|e| e["key"] == k)
            .map(|e| {
                (
                    e["scope"].as_str().unwrap_or("").to_string(),
                    e["has_value"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        scope("API_KEY"),
        [("workspace".to_string(), json!(true))],
        "{list}"
    );
    assert_eq!(
        scope("GLOBAL_KEY"),
        [("global".to_string(), json!(true))],
        "{list}"
    );
    assert!(list[0]["created_at"].is_string() && list[0]["updated_at"].is_string());
    let (code, raw) = s.http_as("GET", "/settings/secrets", Some(&admin), b"");
    assert_eq!(code, 200);
    assert!(!raw.contains("global-value"));
    assert_eq!(j(&raw).as_array().map(Vec::len), Some(2));
    assert_eq!(
        call_as(
            s,
            Some("tok-child"),
            "GET",
            "/settings/secrets",
            Value::Null
        )
        .0,
        403
    );
    assert_eq!(
        call_as(
            s,
            Some("tok-child"),
            "GET",
            &format!("/workspaces/{child}/secrets"),
            Value::Null
        )
        .0,
        403,
        "secrets take the admin token (ADR 0038)"
    );
    let (code, b) = call(
        s,
        "DELETE",
        &format!("/workspaces/{child}/secrets/API_KEY"),
        Value::Null,
    );
    assert_eq!(
        (code, b),
        (200, json!({"status": "deleted", "key": "API_KEY"}))
    );
    assert_eq!(
        call(
            s,
            "DELETE",
            &format!("/workspaces/{child}/secrets/API_KEY"),
            Value::Null
        )
        .0,
        404
    );
    assert_eq!(
        call(s, "DELETE", "/settings/secrets/NOPE", Value::Null).0,
        404
    );
    assert_eq!(
        call(s, "DELETE", "/settings/secrets/GLOBAL_KEY", Value::Null).0,
        200
    );

    // Viewport.
    let (code, b) = call(s, "GET", "/canvas/viewport", Value::Null);
    assert_eq!((code, b), (200, json!({"x": 0, "y": 0, "zoom": 1})));
    let (code, b) = call(
        s,
        "PUT",
        "/canvas/viewport",
        json!({"x": 120.5, "y": 40, "zoom": 1.5}),
    );
    assert_eq!((code, b), (200, json!({"status": "saved"})));
    assert_eq!(
        call(s, "GET", "/canvas/viewport", Value::Null).1,
        json!({"x": 120.5, "y": 40.0, "zoom": 1.5})
    );
    assert_eq!(
        call(s, "PUT", "/canvas/viewport", json!({"zoom": 0})).0,
        400
    );

    // Events: the audit log plus the workspaces' Kubernetes Events, newest first.
    apply(
        s,
        &format!(
            "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata:\n  name: ev-online\n  namespace: default\nregarding:\n  kind: Workspace\n  apiVersion: molecule.ai/v1alpha1\n  name: {lead_name}\n  namespace: default\n  uid: {lead}\nreason: Online\nnote: the agent registered\ntype: Normal\naction: Reconcile\nreportingController: molecule-workspace\nreportingInstance: test\neventTime: \"2026-01-01T00:00:00.000000Z\"\n"
        ),
    );
    let (code, evs) = call(s, "GET", "/events", Value::Null);
    assert_eq!(code, 200);
    let evs = evs.as_array().expect("array").clone();
    for e in &evs {
        for k in ["id", "event_type", "workspace_id", "payload", "created_at"] {
            assert!(e.get(k).is_some(), "event lacks {k}: {e}");
        }
    }
    assert!(
        evs.iter()
            .any(|e| e["event_type"] == "WORKSPACE_PROVISIONING"
                && e["payload"]["action"] == "workspace.created"
                && e["workspace_id"] == lead.as_str()),
        "{evs:?}"
    );
    assert!(
        evs.iter().any(|e| e["event_type"] == "WORKSPACE_PAUSED"),
        "{evs:?}"
    );
    let (code, mine) = call_as(
        s,
        Some("tok-lead"),
        "GET",
        &format!("/events/{lead}"),
        Value::Null,
    );
    assert_eq!(code, 200, "{mine}");
    let mine = mine.as_array().expect("array").clone();
    assert!(
        mine.iter().all(|e| e["workspace_id"] == lead.as_str()),
        "{mine:?}"
    );
    assert!(
        mine.iter().any(|e| e["event_type"] == "WORKSPACE_ONLINE"
            && e["payload"]["reason"] == "Online"
            && e["payload"]["message"] == "the agent registered"),
        "{mine:?}"
    );
    assert!(
        mine.iter()
            .any(|e| e["payload"]["action"] == "workspace.restart_requested"
                && e["event_type"] == "WORKSPACE_PROVISIONING"),
        "{mine:?}"
    );
    assert_eq!(
        call_as(
            s,
            Some("tok-child"),
            "GET",
            &format!("/events/{lead}"),
            Value::Null
        )
        .0,
        403
    );
    assert_eq!(
        call(s, "GET", &format!("/events/{unknown}"), Value::Null).0,
        404
    );
    assert_eq!(
        call(s, "GET", "/events?limit=1", Value::Null)
            .1
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(call(s, "GET", "/events?limit=0", Value::Null).0, 400);

    // Plugins: PluginInstall records owned by the workspace.
    let reg = s.data_dir().join("plugins/skills-pack");
    std::fs::create_dir_all(&reg).expect("plugin dir");
    std::fs::write(reg.join("plugin.yaml"), "name: skills-pack\nversion: 1.2.0\ndescription: Skills\nruntimes: [echo]\nskills: [summarise]\n").expect("manifest");
    assert_eq!(
        call(
            s,
            "GET",
            &format!("/workspaces/{lead}/plugins"),
            Value::Null
        )
        .1,
        json!([])
    );
    let (code, b) = call(
        s,
        "POST",
        &format!("/workspaces/{lead}/plugins"),
        json!({"source": "local://skills-pack", "track": "tag:v1.2.0"}),
    );
    assert_eq!(code, 201, "{b}");
    assert_eq!(b["status"], "installing");
    assert_eq!(b["plugin"], "skills-pack");
    let rec = j(&ok(
        s,
        &[
            "get",
            "plugininstall",
            b["k8s_name"].as_str().expect("n"),
            "-o",
            "json",
        ],
    ));
    assert_eq!(rec["spec"]["workspaceRef"]["name"], lead_name.as_str());
    assert_eq!(rec["spec"]["source"], "local://skills-pack");
    assert_eq!(rec["metadata"]["ownerReferences"][0]["uid"], lead.as_str());
    let (_, installed) = call(
        s,
        "GET",
        &format!("/workspaces/{lead}/plugins"),
        Value::Null,
    );
    assert_eq!(installed[0]["name"], "skills-pack");
    assert_eq!(installed[0]["status"], "installing");
    assert_eq!(installed[0]["track"], "tag:v1.2.0");
    // Installing it again re-installs it now from the source (ADR 0049): a new request stamp.
    let (code, b) = call(
        s,
        "POST",
        &format!("/workspaces/{lead}/plugins"),
        json!({"source": "local://skills-pack"}),
    );
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["status"], "reinstalling");
    assert_eq!(b["plugin"], "skills-pack");
    let again = record_of(s, "plugininstalls", &b["k8s_name"]);
    let stamp = again["spec"]["reinstallRequestedAt"].clone();
    assert!(stamp.is_string(), "{again}");
    assert!(again["spec"].get("track").is_none(), "{again}");
    let (code, _) = call(
        s,
        "POST",
        &format!("/workspaces/{lead}/plugins"),
        json!({"source": "local://skills-pack"}),
    );
    assert_eq!(code, 200);
    assert_ne!(
        record_of(s, "plugininstalls", &b["k8s_name"])["spec"]["reinstallRequestedAt"],
        stamp,
        "every repeated install is a new request"
    );
    let (code, cat) = call(s, "GET", "/plugins", Value::Null);
    assert_eq!(code, 200);
    let entry = cat
        .as_array()
        .expect("a")
        .iter()
        .find(|p| p["name"] == "skills-pack")
        .cloned()
        .expect("in catalog");
    assert_eq!(entry["version"], "1.2.0");
    assert_eq!(entry["installed_in"], json!([lead]));
    assert_eq!(
        call_as(s, Some("tok-lead"), "GET", "/plugins", Value::Null).0,
        403
    );

    // The drift queue: pending updates, approve (idempotent), applied, dismissed.
    let install_name = rec["metadata"]["name"].as_str().expect("n").to_string();
    let pu = |name: &str, decision: &str| {
        format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: PluginUpdate\nmetadata:\n  name: {name}\nspec:\n  pluginInstallRef:\n    name: {install_name}\n  fromSha: aaaaaaa\n  toSha: bbbbbbb\n  decision: {decision}\n"
        )
    };
    apply(s, &pu("pu-1", "Pending"));
    apply(s, &pu("pu-2", "Dismissed"));
    let (code, pending) = call(s, "GET", "/admin/plugin-updates-pending", Value::Null);
    assert_eq!(code, 200);
    let pending = pending.as_array().expect("a").clone();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["workspace_id"], lead.as_str());
    assert_eq!(pending[0]["plugin_name"], "skills-pack");
    assert_eq!(pending[0]["to_sha"], "bbbbbbb");
    let pu1 = pending[0]["id"].as_str().expect("id").to_string();
    let (code, b) = call(
        s,
        "POST",
        &format!("/admin/plugin-updates/{pu1}/apply"),
        Value::Null,
    );
    assert_eq!((code, b["status"].clone()), (202, json!("approved")));
    assert_eq!(
        j(&ok(s, &["get", "pluginupdate", "pu-1", "-o", "json"]))["spec"]["decision"],
        "Approved"
    );
    assert_eq!(
        call(
            s,
            "POST",
            &format!("/admin/plugin-updates/{pu1}/apply"),
            Value::Null
        )
        .0,
        202,
        "idempotent"
    );
    assert_eq!(
        call(s, "GET", "/admin/plugin-updates-pending", Value::Null).1,
        json!([])
    );
    let (code, b) = s.http(
        "PATCH",
        &format!("{API}/namespaces/default/pluginupdates/pu-1/status"),
        Some("application/merge-patch+json"),
        br#"{"status":{"phase":"Applied"}}"#,
    );
    assert_eq!(code, 200, "{b}");
    let (code, b) = call(
        s,
        "POST",
        &format!("/admin/plugin-updates/{pu1}/apply"),
        Value::Null,
    );
    assert_eq!((code, b["status"].clone()), (200, json!("already_applied")));
    let pu2 = j(&ok(s, &["get", "pluginupdate", "pu-2", "-o", "json"]))["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    assert_eq!(
        call(
            s,
            "POST",
            &format!("/admin/plugin-updates/{pu2}/apply"),
            Value::Null
        )
        .0,
        409
    );
    assert_eq!(
        call(
            s,
            "POST",
            &format!("/admin/plugin-updates/{unknown}/apply"),
            Value::Null
        )
        .0,
        404
    );
    assert_eq!(
        call_as(
            s,
            Some("tok-lead"),
            "POST",
            &format!("/admin/plugin-updates/{pu1}/apply"),
            Value::Null
        )
        .0,
        403
    );
    let (code, b) = call(
        s,
        "DELETE",
        &format!("/workspaces/{lead}/plugins/skills-pack"),
        Value::Null,
    );
    assert_eq!(
        (code, b),
        (
            200,
            json!({"status": "uninstalling", "plugin": "skills-pack"})
        )
    );
    assert_eq!(
        call(
            s,
            "DELETE",
            &format!("/workspaces/{lead}/plugins/skills-pack"),
            Value::Null
        )
        .0,
        404
    );
    let (ext, _) = create(
        s,
        json!({"name": "Outside", "runtime": "external", "url": "https://agent.example/a2a"}),
    );
    let (code, b) = call(
        s,
        "POST",
        &format!("/workspaces/{ext}/plugins"),
        json!({"source": "local://skills-pack"}),
    );
    assert_eq!(code, 422, "{b}");
    assert!(
        b["error"].as_str().unwrap_or("").contains("download"),
        "{b}"
    );

    // Unknown ids are 404 on every workspace route (admin).
    for (m, p) in [
        ("GET", format!("/workspaces/{unknown}")),
        ("PATCH", format!("/workspaces/{unknown}")),
        ("DELETE", format!("/workspaces/{unknown}")),
        ("POST", format!("/workspaces/{unknown}/restart")),
        ("POST", format!("/workspaces/{unknown}/pause")),
        ("POST", format!("/workspaces/{unknown}/resume")),
        ("GET", format!("/workspaces/{unknown}/secrets")),
        ("GET", format!("/workspaces/{unknown}/plugins")),
    ] {
        let body = if m == "PATCH" {
            json!({"x": 1})
        } else {
            Value::Null
        };
        let (code, b) = call(s, m, &p, body);
        assert_eq!(code, 404, "{m} {p}: {b}");
        assert_eq!(b["error"], "workspace not found");
    }

    // Delete: 409 with the children unless confirmed; then the subtree goes.
    let (code, b) = call(s, "DELETE", &format!("/workspaces/{lead}"), Value::Null);
    assert_eq!(code, 409, "{b}");
    assert_eq!(b["error"], "confirmation_required");
    assert_eq!(
        b["children"],
        json!([{"id": child, "name": "Senior Analyst"}])
    );
    assert_eq!(
        count(s, "workspaces"),
        3,
        "nothing deleted without confirmation"
    );
    let (code, b) = call(
        s,
        "DELETE",
        &format!("/workspaces/{lead}?confirm=true"),
        Value::Null,
    );
    assert_eq!(
        (code, b),
        (200, json!({"status": "removed", "cascade_deleted": 1}))
    );
    assert!(eventually(5, || count(s, "workspaces") == 1));
    assert!(eventually(5, || call(
        s,
        "GET",
        &format!("/workspaces/{child}"),
        Value::Null
    )
    .0 == 404));
    let (code, b) = call(s, "DELETE", &format!("/workspaces/{ext}"), Value::Null);
    assert_eq!(
        (code, b),
        (200, json!({"status": "removed", "cascade_deleted": 0}))
    );
    // The audit history of a deleted workspace stays readable.
    assert_eq!(
        call(s, "GET", &format!("/events/{lead}"), Value::Null).0,
        200
    );
}

#[test]
fn rest_contract_sqlite() {
    let s = Server::start(Backend::Sqlite);
    contract(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_contract_postgres() {
    let Some(backend) = Backend::get(true).await else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let s = Server::start(backend);
        contract(&s);
    })
    .await
    .expect("contract");
}

#[test]
fn bad_input_gets_a_clear_4xx_and_creates_nothing() {
    let s = Server::start(Backend::Sqlite);
    let (lead, lead_name) = create(&s, json!({"name": "Lead"}));
    let before = (
        count(&s, "workspaces"),
        count(&s, "secrets"),
        count(&s, "plugininstalls"),
    );
    let admin = s.token();
    let raw = |m: &str, p: &str, body: &[u8]| {
        let (code, b) = s.http_as(m, p, Some(&admin), body);
        (code, j(&b))
    };
    let expect = |got: (u16, Value), code: u16, needle: &str| {
        assert_eq!(got.0, code, "{}", got.1);
        let msg = got.1["error"].as_str().unwrap_or("").to_string();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        msg
    };
    // Malformed JSON and non-objects.
    expect(
        raw("POST", "/workspaces", b"{\"name\": \"x\""),
        400,
        "malformed JSON",
    );
    expect(
        raw("POST", "/workspaces", b"{name: x}"),
        400,
        "malformed JSON at line 1",
    );
    expect(
        raw("POST", "/workspaces", b"[1,2]"),
        400,
        "must be a JSON object",
    );
    expect(raw("POST", "/workspaces", b""), 400, "malformed JSON");
    // Wrong types and values, each naming the field (and never echoing the value).
    for (body, needle) in [
        (json!({}), "`name` is required"),
        (json!({"name": 5}), "`name` must be a string"),
        (
            json!({"name": "x", "tier": "2"}),
            "`tier` must be an integer between 1 and 4",
        ),
        (
            json!({"name": "x", "tier": 9}),
            "`tier` must be an integer between 1 and 4",
        ),
        (json!({"name": "x", "x": "left"}), "`x` must be a number"),
        (
            json!({"name": "x", "runtime": "Evil Runtime"}),
            "`runtime` must be a lower-case name",
        ),
        (
            json!({"name": "payload-{{inject}}"}),
            "`name` must not contain",
        ),
        (
            json!({"name": "x\ny"}),
            "`name` must not contain control characters",
        ),
        (
            json!({"name": "x", "parent_id": "00000000-0000-4000-8000-000000000000"}),
            "`parent_id` does not name a workspace",
        ),
        (
            json!({"name": "x", "url": "http://169.254.169.254/latest"}),
            "link-local",
        ),
        (
            json!({"name": "x", "canvas": 3}),
            "`canvas` must be an object",
        ),
    ] {
        let msg = expect(
            raw("POST", "/workspaces", body.to_string().as_bytes()),
            400,
            needle,
        );
        assert!(
            !msg.contains("Evil Runtime") && !msg.contains("inject"),
            "echoes input: {msg}"
        );
    }
    let p = format!("/workspaces/{lead}");
    expect(
        raw("PATCH", &p, br#"{"collapsed": "yes"}"#),
        400,
        "`collapsed` must be true or false",
    );
    expect(
        raw("PATCH", &p, br#"{"unrelated": 1}"#),
        400,
        "nothing to update",
    );
    expect(
        raw("PATCH", &p, br#"{"parent_id": "nope"}"#),
        400,
        "`parent_id` does not name a workspace",
    );
    expect(
        raw("PUT", "/canvas/viewport", br#"{"zoom": "big"}"#),
        400,
        "`zoom` must be a number",
    );
    // Unknown and malformed ids, including path traversal.
    expect(
        raw("GET", "/workspaces/..%2F..%2Fetc%2Fpasswd", b""),
        400,
        "invalid workspace id",
    );
    expect(
        raw("GET", "/workspaces/not-a-uuid", b""),
        400,
        "invalid workspace id",
    );
    expect(
        raw(
            "GET",
            "/workspaces/00000000-0000-4000-8000-000000000000",
            b"",
        ),
        404,
        "workspace not found",
    );
    expect(
        raw("POST", "/admin/plugin-updates/../apply", b""),
        400,
        "invalid update id",
    );
    // Secrets: bad keys and values.
    let sp = format!("/workspaces/{lead}/secrets");
    expect(
        raw("PUT", &sp, br#"{"key": "../x", "value": "v"}"#),
        400,
        "invalid secret key",
    );
    expect(
        raw("PUT", &sp, br#"{"key": "K", "value": 7}"#),
        400,
        "`value` must be a string",
    );
    expect(
        raw("PUT", &sp, br#"{"key": "K"}"#),
        400,
        "`value` is required",
    );
    expect(
        raw("DELETE", &format!("{sp}/..%2F..%2Fetc"), b""),
        400,
        "invalid secret key",
    );
    // Plugins: path traversal and unpinned sources.
    let pp = format!("/workspaces/{lead}/plugins");
    expect(
        raw("POST", &pp, br#"{"source": "local://../../etc"}"#),
        400,
        "invalid plugin name",
    );
    expect(
        raw("POST", &pp, br#"{"source": "file:///etc/passwd"}"#),
        400,
        "`source` must be local://",
    );
    expect(
        raw(
            "POST",
            &pp,
            br#"{"source": "local://ok", "track": "latest"}"#,
        ),
        400,
        "`track` must be",
    );
    expect(
        raw("DELETE", &format!("{pp}/..%2F..%2Fetc"), b""),
        400,
        "invalid plugin name",
    );
    // An oversized body is refused before it is parsed.
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(70 * 1024));
    expect(
        raw("POST", "/workspaces", big.as_bytes()),
        413,
        "request body too large",
    );
    expect(
        raw(
            "PUT",
            &sp,
            format!("{{\"key\":\"K\",\"value\":\"{}\"}}", "v".repeat(40 * 1024)).as_bytes(),
        ),
        400,
        "at most",
    );

    let after = (
        count(&s, "workspaces"),
        count(&s, "secrets"),
        count(&s, "plugininstalls"),
    );
    assert_eq!(before, after, "bad input created something");
    let r = record(&s, "default", &lead_name);
    assert!(
        r["metadata"]["annotations"]
            .get("molecule.ai/canvas-x")
            .is_none()
    );
    // The server is fine afterwards.
    assert_eq!(s.http("GET", "/workspaces", None, b"").0, 200);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(port: u16, token: &str) -> Ws {
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .expect("req");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("h"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("connect /ws")
        .0
}

/// Reads messages in the background, stamping their arrival.
fn collect(mut ws: Ws) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m
                && let Ok(v) = serde_json::from_str::<Value>(&t)
            {
                let _ = tx.send((Instant::now(), v));
            }
        }
    });
    rx
}

/// The first message named `event` about `name` (by k8s name); panics after `secs`.
async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
    event: &str,
    name: &str,
    secs: u64,
) -> (Instant, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((t, v))) if v["event"] == event && v["payload"]["k8s_name"] == name => {
                return (t, v);
            }
            Ok(Some(_)) => {}
            _ => panic!("no {event} for {name} within {secs}s"),
        }
    }
}

/// Runs kubectl; returns when it started and when it exited (the change is committed).
async fn kubectl_async(
    s: &std::sync::Arc<Server>,
    args: &[&str],
    stdin: Option<&str>,
) -> (Instant, Instant) {
    let s = s.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.map(String::from);
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let o = s.kubectl_stdin("1.33", &a, stdin.as_deref());
        assert!(o.status.success(), "kubectl {a:?}:\n{}", text(&o));
        (started, Instant::now())
    })
    .await
    .expect("kubectl")
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_changes_reach_websocket_clients_within_a_second() {
    let s = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| Server::start(Backend::Sqlite))
            .await
            .expect("start"),
    );
    // The handshake wants the admin token.
    let req = format!("ws://127.0.0.1:{}/ws", s.port)
        .into_client_request()
        .expect("req");
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!(
            "unauthenticated /ws must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    let mut rx = collect(ws_connect(s.port, &s.token()).await);
    // Browsers pass the token as a subprotocol; the server picks `molecule.v1`.
    use base64::Engine;
    let mut req = format!("ws://127.0.0.1:{}/ws", s.port)
        .into_client_request()
        .expect("req");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.token());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("molecule.v1, base64url.bearer.authorization.k8s.io.{b64}")
            .parse()
            .expect("h"),
    );
    let (browser, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol auth");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or("")),
        Some("molecule.v1")
    );
    let mut brx = collect(browser);

    let mut latencies = vec![];
    let yaml = "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: x\nspec:\n  displayName: X\n  runtime: echo\n";
    let (started, done) = kubectl_async(&s, &["apply", "-f", "-"], Some(yaml)).await;
    let (at, m) = wait_for(&mut rx, "WORKSPACE_PROVISIONING", "x", 5).await;
    latencies.push((
        at.saturating_duration_since(done),
        at.saturating_duration_since(started),
    ));
    assert_eq!(m["payload"]["name"], "X");
    assert!(m["workspace_id"].is_string() && m["timestamp"].is_string());
    wait_for(&mut brx, "WORKSPACE_PROVISIONING", "x", 5).await;

    // Status changes the controller and the agent make, written through kubectl.
    for (patch, event) in [
        (r#"{"status":{"phase":"Online"}}"#, "WORKSPACE_ONLINE"),
        (
            r#"{"status":{"agentCard":{"name":"echo","skills":[]}}}"#,
            "AGENT_CARD_UPDATED",
        ),
        (
            r#"{"status":{"activeTasks":1,"currentTask":"summarise"}}"#,
            "TASK_UPDATED",
        ),
        (
            r#"{"status":{"lastHeartbeat":"2026-01-01T00:00:00Z","uptimeSeconds":30}}"#,
            "WORKSPACE_HEARTBEAT",
        ),
        (
            r#"{"status":{"phase":"Degraded","errorRate":0.6}}"#,
            "WORKSPACE_DEGRADED",
        ),
        (r#"{"status":{"phase":"Offline"}}"#, "WORKSPACE_OFFLINE"),
        (r#"{"status":{"phase":"Paused"}}"#, "WORKSPACE_PAUSED"),
        (
            r#"{"status":{"phase":"Failed","message":"missing required env: K"}}"#,
            "WORKSPACE_PROVISION_FAILED",
        ),
        (
            r#"{"status":{"phase":"Provisioning"}}"#,
            "WORKSPACE_PROVISIONING",
        ),
    ] {
        let (started, done) = kubectl_async(
            &s,
            &[
                "patch",
                "ws",
                "x",
                "--subresource=status",
                "--type=merge",
                "-p",
                patch,
            ],
            None,
        )
        .await;
        let (at, m) = wait_for(&mut rx, event, "x", 5).await;
        latencies.push((
            at.saturating_duration_since(done),
            at.saturating_duration_since(started),
        ));
        if event == "WORKSPACE_PROVISION_FAILED" {
            assert_eq!(m["payload"]["last_sample_error"], "missing required env: K");
        }
    }
    let (started, done) = kubectl_async(
        &s,
        &["annotate", "ws", "x", "molecule.ai/canvas-x=42"],
        None,
    )
    .await;
    let (at, m) = wait_for(&mut rx, "WORKSPACE_UPDATED", "x", 5).await;
    latencies.push((
        at.saturating_duration_since(done),
        at.saturating_duration_since(started),
    ));
    assert_eq!(m["payload"]["x"], 42.0);
    let (started, done) = kubectl_async(&s, &["delete", "ws", "x"], None).await;
    let (at, m) = wait_for(&mut rx, "WORKSPACE_REMOVED", "x", 5).await;
    latencies.push((
        at.saturating_duration_since(done),
        at.saturating_duration_since(started),
    ));
    assert_eq!(m["payload"]["status"], "removed");
    wait_for(&mut brx, "WORKSPACE_REMOVED", "x", 5).await;
    let worst = latencies.iter().map(|l| l.0).max().unwrap_or_default();
    let worst_from_start = latencies.iter().map(|l| l.1).max().unwrap_or_default();
    println!(
        "kubectl change → WebSocket over {} changes: worst {worst:?} after kubectl returned, worst {worst_from_start:?} from kubectl's start (its own run included)",
        latencies.len()
    );
    assert!(
        worst <= Duration::from_secs(1),
        "a change took {worst:?} to reach the client: {latencies:?}"
    );
}

#[test]
fn sse_twin_streams_the_same_messages() {
    use std::io::{BufRead, BufReader, Write};
    let s = Server::start(Backend::Sqlite);
    let (code, _) = s.http_as("GET", "/events/stream", None, b"");
    assert_eq!(code, 401);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // EventSource cannot set headers: the token may come as ?access_token=.
    write!(conn, "GET /events/stream?access_token={} HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", s.token()).expect("write");
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status");
    assert!(status.contains("200"), "{status}");
    let (lead, _) = create(&s, json!({"name": "Streamed"}));
    let mut event = None;
    let mut data = None;
    for _ in 0..200 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(e) = line.strip_prefix("event: ") {
            event = Some(e.trim().to_string());
        } else if let Some(d) = line.strip_prefix("data: ") {
            data = Some(j(d.trim()));
            break;
        }
    }
    assert_eq!(event.as_deref(), Some("WORKSPACE_PROVISIONING"));
    let data = data.expect("data line");
    assert_eq!(data["workspace_id"], lead.as_str());
    assert_eq!(data["payload"]["name"], "Streamed");
    // The per-workspace twin takes that workspace's token.
    assert_eq!(
        s.http_as(
            "GET",
            &format!("/workspaces/{lead}/events/stream"),
            Some("nope"),
            b""
        )
        .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_stream_clients_are_dropped_and_never_hold_others_back() {
    let s = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| {
            Server::start_with(Backend::Sqlite, &["--stream-backlog", "32"])
        })
        .await
        .expect("start"),
    );
    // A client that never reads, with a tiny receive window.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(2048).expect("rcvbuf");
    let stream = sock
        .connect(([127, 0, 0, 1], s.port).into())
        .await
        .expect("connect");
    let mut req = format!("ws://127.0.0.1:{}/ws", s.port)
        .into_client_request()
        .expect("req");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.token()).parse().expect("h"),
    );
    let (mut slow, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("slow handshake");
    let mut fast = collect(ws_connect(s.port, &s.token()).await);

    // Messages carry the workspace object: a 64 KiB agent card makes every one large, so the
    // few hundred the stalled socket's kernel buffers can hold are soon exceeded.
    const N: usize = 10;
    const ROUNDS: usize = 12;
    let card = json!({"name": "big", "description": "d".repeat(64 * 1024)});
    let s2 = s.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        for i in 0..N {
            let (code, b) = s2.http(
                "POST",
                &format!("{API}/namespaces/default/workspaces"),
                Some("application/json"),
                json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "metadata": {"name": format!("w{i}")}, "spec": {"role": "x".repeat(200)}}).to_string().as_bytes(),
            );
            assert_eq!(code, 201, "{b}");
            patch_status(&s2, "default", &format!("w{i}"), json!({"agentCard": card}));
        }
        for r in 0..ROUNDS {
            for i in 0..N {
                patch_status(&s2, "default", &format!("w{i}"), json!({"lastHeartbeat": format!("2026-01-01T00:{:02}:{:02}Z", r / 60, r % 60), "uptimeSeconds": r}));
            }
        }
    })
    .await
    .expect("writes");
    let writes = started.elapsed();
    // The fast client sees every message, in order, although the slow one stalls.
    let mut beats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while beats < N * ROUNDS {
        match tokio::time::timeout_at(deadline, fast.recv()).await {
            Ok(Some((_, v))) if v["event"] == "WORKSPACE_HEARTBEAT" => beats += 1,
            Ok(Some(_)) => {}
            _ => panic!(
                "the fast client got only {beats} of {} heartbeats",
                N * ROUNDS
            ),
        }
    }
    // The slow client is dropped: after what its buffers held, the stream ends.
    let mut got = 0usize;
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    let close_code = loop {
        match tokio::time::timeout_at(end, slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => got += 1,
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => break None,
            Err(_) => panic!("the slow client was not dropped (read {got} messages)"),
        }
    };
    let _ = slow.close(None).await;
    assert!(
        got < 2 * N + N * ROUNDS,
        "the slow client got everything ({got}); it was never behind"
    );
    let metrics = s.http("GET", "/metrics", None, b"").1;
    assert!(
        metrics.contains("molecule_shim_stream_dropped_total"),
        "{metrics}"
    );
    println!(
        "slow client dropped (close code {:?}) after {got} messages; {} writes took {writes:?}",
        close_code,
        2 * N + N * ROUNDS
    );
}

/// The canvas page's parts are served without a token (the page asks for it), and the
/// workspace objects carry what the page shows about orgs: the owning OrgImport and the
/// template's position until one is set on the canvas (ADR 0052).
#[test]
fn the_canvas_page_and_its_org_facts() {
    let s = Server::start(Backend::Sqlite);
    let (code, page) = s.http_raw("GET", "/", None, b"", false).expect("page");
    assert_eq!(code, 200);
    assert!(page.contains("/canvas/app.js") && page.contains("/canvas/ui.js"));
    let (code, ui) = s
        .http_raw("GET", "/canvas/ui.js", None, b"", false)
        .expect("ui.js");
    assert_eq!(code, 200);
    assert!(ui.contains("window.moleculeUi"), "not the page's ui.js");
    assert_eq!(
        s.http_raw("GET", "/canvas/nope.js", None, b"", false)
            .expect("probe")
            .0,
        404
    );
    apply(
        &s,
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: boss\n  namespace: default\n  labels:\n    molecule.ai/org: tiny-lab\n  annotations:\n    molecule.ai/canvas: '{\"x\":400,\"y\":40}'\nspec:\n  displayName: Boss\n",
    );
    let find = |s: &Server| {
        call(s, "GET", "/workspaces", Value::Null)
            .1
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["k8s_name"] == "boss")
            .cloned()
    };
    assert!(eventually(10, || find(&s).is_some()));
    let w = find(&s).expect("boss");
    assert_eq!(
        (w["org"].clone(), w["x"].clone(), w["y"].clone()),
        (json!("tiny-lab"), json!(400.0), json!(40.0))
    );
    // Dragged on the canvas: the new place wins.
    let id = w["id"].as_str().expect("id").to_string();
    assert_eq!(
        call(
            &s,
            "PATCH",
            &format!("/workspaces/{id}"),
            json!({"x": 7, "y": 8})
        )
        .0,
        200
    );
    assert!(eventually(10, || find(&s)
        .is_some_and(|w| w["x"] == json!(7.0) && w["y"] == json!(8.0))));
}
