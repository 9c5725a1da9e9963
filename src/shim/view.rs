//! Pure translation of Workspace records into the original platform's JSON shapes: the
//! workspace object of `GET /workspaces`, its lower-case status, and the event-stream messages
//! a change between two observations produces. No I/O; unit-tested below.

use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use crate::resources::{Condition, Workspace, WorkspacePhase};

/// Canvas position (x) of a workspace; an annotation, so moving a node never restarts it.
pub const ANN_X: &str = "molecule.ai/canvas-x";
/// Canvas position (y).
pub const ANN_Y: &str = "molecule.ai/canvas-y";
/// Whether the node's subtree is folded on the canvas.
pub const ANN_COLLAPSED: &str = "molecule.ai/canvas-collapsed";
/// Monthly budget ceiling, as set at creation.
pub const ANN_BUDGET: &str = "molecule.ai/budget-limit";

/// Event names of the original platform's stream, plus `WORKSPACE_UPDATED` for changes of
/// name, role, tier, parent or position (the original broadcast nothing for those).
pub mod names {
    pub const PROVISIONING: &str = "WORKSPACE_PROVISIONING";
    pub const ONLINE: &str = "WORKSPACE_ONLINE";
    pub const OFFLINE: &str = "WORKSPACE_OFFLINE";
    pub const DEGRADED: &str = "WORKSPACE_DEGRADED";
    pub const PAUSED: &str = "WORKSPACE_PAUSED";
    pub const PROVISION_FAILED: &str = "WORKSPACE_PROVISION_FAILED";
    pub const REMOVED: &str = "WORKSPACE_REMOVED";
    pub const AGENT_CARD_UPDATED: &str = "AGENT_CARD_UPDATED";
    pub const TASK_UPDATED: &str = "TASK_UPDATED";
    pub const HEARTBEAT: &str = "WORKSPACE_HEARTBEAT";
    pub const UPDATED: &str = "WORKSPACE_UPDATED";
}

/// The workspace object of the REST shim. The first block of fields is the original shape;
/// `phase` and `conditions` come from status; the rest are additions a client may ignore.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub role: Option<String>,
    pub tier: i32,
    pub status: &'static str,
    pub runtime: String,
    pub agent_card: Option<Value>,
    pub url: String,
    pub parent_id: Option<String>,
    pub active_tasks: i64,
    pub current_task: String,
    pub last_error_rate: f64,
    pub last_sample_error: String,
    pub uptime_seconds: i64,
    pub x: f64,
    pub y: f64,
    pub collapsed: bool,
    pub budget_limit: Option<i64>,
    pub provision_timeout_ms: Option<i64>,
    pub phase: String,
    pub conditions: Vec<Condition>,
    /// The record: `kubectl get ws <k8s_name> -n <namespace>`.
    pub namespace: String,
    pub k8s_name: String,
    /// The status message (why it is in this phase); the last error when failed.
    pub message: Option<String>,
    /// `spec.paused`: asked to pause (status follows once the controller stopped it).
    pub paused: bool,
    /// The OrgImport that owns this workspace (its `molecule.ai/org` label), if any: deleting
    /// the workspace alone would see the import recreate it (ADR 0052).
    pub org: Option<String>,
    /// Lets a client order a snapshot against stream messages.
    pub resource_version: u64,
    #[serde(skip)]
    pub last_heartbeat: Option<String>,
    #[serde(skip)]
    pub created: String,
}

/// The original's lower-case status of a record.
pub fn status_of(ws: &Workspace) -> &'static str {
    if ws.metadata.deletion_timestamp.is_some() {
        return "removed";
    }
    match ws.status.as_ref().and_then(|s| s.phase) {
        None | Some(WorkspacePhase::Pending) | Some(WorkspacePhase::Provisioning) => "provisioning",
        Some(WorkspacePhase::Online) => "online",
        Some(WorkspacePhase::Degraded) => "degraded",
        Some(WorkspacePhase::Offline) => "offline",
        Some(WorkspacePhase::Paused) => "paused",
        Some(WorkspacePhase::Failed) => "failed",
        Some(WorkspacePhase::Terminating) => "removed",
    }
}

/// The stream event announcing that a workspace reached `status`.
pub fn status_event(status: &str) -> &'static str {
    match status {
        "online" => names::ONLINE,
        "offline" => names::OFFLINE,
        "degraded" => names::DEGRADED,
        "paused" => names::PAUSED,
        "failed" => names::PROVISION_FAILED,
        "removed" => names::REMOVED,
        _ => names::PROVISIONING,
    }
}

fn phase_name(p: Option<WorkspacePhase>) -> String {
    match p {
        Some(p) => format!("{p:?}"),
        None => "Pending".into(),
    }
}

fn annotation_f64(ws: &Workspace, key: &str) -> f64 {
    ws.annotations()
        .get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

/// A canvas coordinate: the position set on the canvas (`PATCH x/y`) or else the one the org
/// template gave (`canvas: {x, y}`, kept as JSON in one annotation by the OrgImport).
fn position(ws: &Workspace, key: &str, axis: &str) -> f64 {
    if ws.annotations().contains_key(key) {
        return annotation_f64(ws, key);
    }
    ws.annotations()
        .get(crate::resources::names::CANVAS_ANNOTATION)
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .and_then(|v| v.get(axis).and_then(Value::as_f64))
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

/// The card the agent registered, or else the one it was imported with from a bundle (ADR 0055).
pub fn agent_card(ws: &Workspace) -> Option<Value> {
    ws.status
        .as_ref()
        .and_then(|s| s.agent_card.clone())
        .filter(|c| !c.is_null())
        .or_else(|| {
            ws.annotations()
                .get(crate::resources::names::AGENT_CARD_ANNOTATION)
                .and_then(|v| serde_json::from_str::<Value>(v).ok())
                .filter(Value::is_object)
        })
}

/// Renders a record. `parent_id` is the uid of the parent record (resolved by the caller from
/// `spec.parentRef`), `provision_timeout_secs` the Runtime's override, if any.
pub fn render(
    ws: &Workspace,
    parent_id: Option<String>,
    provision_timeout_secs: Option<i64>,
) -> WorkspaceView {
    let st = ws.status.clone().unwrap_or_default();
    let failed = st.phase == Some(WorkspacePhase::Failed);
    WorkspaceView {
        id: ws.uid().unwrap_or_default(),
        name: ws
            .spec
            .display_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ws.name_any()),
        role: ws.spec.role.clone().filter(|r| !r.is_empty()),
        tier: ws.spec.tier.unwrap_or(2),
        status: status_of(ws),
        runtime: ws.spec.runtime.clone().unwrap_or_else(|| "echo".into()),
        agent_card: agent_card(ws),
        url: st.url.clone().unwrap_or_default(),
        parent_id,
        active_tasks: st.active_tasks.unwrap_or(0),
        current_task: st.current_task.clone().unwrap_or_default(),
        last_error_rate: st.error_rate.unwrap_or(0.0),
        last_sample_error: st
            .sample_error
            .clone()
            .or_else(|| if failed { st.message.clone() } else { None })
            .unwrap_or_default(),
        uptime_seconds: st.uptime_seconds.unwrap_or(0),
        x: position(ws, ANN_X, "x"),
        y: position(ws, ANN_Y, "y"),
        collapsed: ws.annotations().get(ANN_COLLAPSED).map(String::as_str) == Some("true"),
        budget_limit: ws
            .annotations()
            .get(ANN_BUDGET)
            .and_then(|v| v.parse().ok()),
        provision_timeout_ms: provision_timeout_secs.map(|s| s.saturating_mul(1000)),
        phase: if ws.metadata.deletion_timestamp.is_some() {
            "Terminating".into()
        } else {
            phase_name(st.phase)
        },
        conditions: st.conditions.clone(),
        namespace: ws.namespace().unwrap_or_default(),
        k8s_name: ws.name_any(),
        message: st.message.clone(),
        paused: ws.spec.paused,
        org: ws
            .labels()
            .get(crate::resources::names::ORG_LABEL)
            .cloned()
            .filter(|o| !o.is_empty()),
        resource_version: ws
            .resource_version()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        last_heartbeat: st.last_heartbeat.clone(),
        created: ws
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}

/// The stream events one change produces (`None` = absent before / deleted after). A status
/// change wins; a heartbeat alone gives `WORKSPACE_HEARTBEAT`; other visible changes
/// `WORKSPACE_UPDATED`; a resourceVersion bump alone gives nothing.
pub fn transitions(old: Option<&WorkspaceView>, new: Option<&WorkspaceView>) -> Vec<&'static str> {
    changes(
        old.map(Fingerprint::of).as_ref(),
        new.map(Fingerprint::of).as_ref(),
    )
}

/// What the stream needs to remember of a sent view to name the next change: its status and
/// hashes of the parts each message is about. A few dozen bytes instead of the view (ADR 0058).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    status: &'static str,
    card: u64,
    task: u64,
    heartbeat: u64,
    /// Everything else but the resourceVersion.
    rest: u64,
}

impl Fingerprint {
    pub fn of(v: &WorkspaceView) -> Self {
        use std::hash::{Hash, Hasher};
        let hash = |f: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            f(&mut h);
            h.finish()
        };
        let mut rest = v.clone();
        rest.resource_version = 0;
        Fingerprint {
            status: v.status,
            card: hash(&|h| v.agent_card.as_ref().map(Value::to_string).hash(h)),
            task: hash(&|h| (v.active_tasks, &v.current_task).hash(h)),
            heartbeat: hash(&|h| v.last_heartbeat.hash(h)),
            rest: hash(&|h| {
                serde_json::to_string(&rest).unwrap_or_default().hash(h);
                (&rest.last_heartbeat, &rest.created).hash(h);
            }),
        }
    }
}

/// The messages a change from `old` to `new` makes.
pub fn changes(old: Option<&Fingerprint>, new: Option<&Fingerprint>) -> Vec<&'static str> {
    let (o, n) = match (old, new) {
        (None, None) => return vec![],
        (None, Some(n)) => return vec![status_event(n.status)],
        (Some(o), None) if o.status == "removed" => return vec![],
        (Some(_), None) => return vec![names::REMOVED],
        (Some(o), Some(n)) => (o, n),
    };
    let mut out = vec![];
    if o.status != n.status {
        out.push(status_event(n.status));
    }
    if o.card != n.card {
        out.push(names::AGENT_CARD_UPDATED);
    }
    if o.task != n.task {
        out.push(names::TASK_UPDATED);
    }
    if out.is_empty() {
        if o.heartbeat != n.heartbeat {
            out.push(names::HEARTBEAT);
        } else if o.rest != n.rest {
            out.push(names::UPDATED);
        }
    }
    out
}

/// One stream message `{event, workspace_id, timestamp, payload}`; the payload is the
/// workspace object after the change (with status `removed` once it is gone).
pub fn message(event: &str, view: &WorkspaceView, timestamp: &str) -> String {
    serde_json::json!({
        "event": event,
        "workspace_id": view.id,
        "timestamp": timestamp,
        "payload": view,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{WorkspaceSpec, WorkspaceStatus};

    fn ws(phase: Option<WorkspacePhase>) -> Workspace {
        let mut w = Workspace::new(
            "lead",
            WorkspaceSpec {
                display_name: Some("Research Lead".into()),
                role: Some("lead".into()),
                ..Default::default()
            },
        );
        w.metadata.uid = Some("u-1".into());
        w.metadata.namespace = Some("default".into());
        w.metadata.resource_version = Some("7".into());
        w.status = Some(WorkspaceStatus {
            phase,
            ..Default::default()
        });
        w
    }

    #[test]
    fn the_owning_org_and_the_template_position_are_shown() {
        let mut w = ws(Some(WorkspacePhase::Online));
        let v = render(&w, None, None);
        assert_eq!((v.org, v.x, v.y), (None, 0.0, 0.0));
        w.metadata.labels = Some([("molecule.ai/org".to_string(), "lab".to_string())].into());
        w.metadata.annotations = Some(
            [(
                "molecule.ai/canvas".to_string(),
                r#"{"x":400,"y":40}"#.to_string(),
            )]
            .into(),
        );
        let v = render(&w, None, None);
        assert_eq!((v.org.as_deref(), v.x, v.y), (Some("lab"), 400.0, 40.0));
        // A position set on the canvas wins over the template's, axis by axis.
        w.metadata
            .annotations
            .get_or_insert_default()
            .insert(ANN_X.into(), "12.5".into());
        let v = render(&w, None, None);
        assert_eq!((v.x, v.y), (12.5, 40.0));
        // A broken annotation is ignored, not an error.
        w.metadata.annotations =
            Some([("molecule.ai/canvas".to_string(), "{x:".to_string())].into());
        assert_eq!(render(&w, None, None).x, 0.0);
    }

    #[test]
    fn phases_map_to_the_original_lower_case_statuses() {
        use WorkspacePhase::*;
        for (p, s) in [
            (None, "provisioning"),
            (Some(Pending), "provisioning"),
            (Some(Provisioning), "provisioning"),
            (Some(Online), "online"),
            (Some(Degraded), "degraded"),
            (Some(Offline), "offline"),
            (Some(Paused), "paused"),
            (Some(Failed), "failed"),
            (Some(Terminating), "removed"),
        ] {
            assert_eq!(status_of(&ws(p)), s, "{p:?}");
        }
        let mut w = ws(Some(Online));
        w.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(status_of(&w), "removed");
        assert_eq!(render(&w, None, None).phase, "Terminating");
    }

    #[test]
    fn render_has_every_original_field_with_defaults() {
        let mut w = ws(Some(WorkspacePhase::Online));
        w.annotations_mut().insert(ANN_X.into(), "12.5".into());
        w.annotations_mut().insert(ANN_Y.into(), "nope".into());
        w.annotations_mut()
            .insert(ANN_COLLAPSED.into(), "true".into());
        let v = serde_json::to_value(render(&w, Some("p-1".into()), Some(1800))).expect("json");
        for k in [
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
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["id"], "u-1");
        assert_eq!(v["name"], "Research Lead");
        assert_eq!(v["tier"], 2);
        assert_eq!(v["runtime"], "echo");
        assert_eq!(v["status"], "online");
        assert_eq!(v["phase"], "Online");
        assert_eq!(v["parent_id"], "p-1");
        assert_eq!(v["x"], 12.5);
        assert_eq!(v["y"], 0.0);
        assert_eq!(v["collapsed"], true);
        assert_eq!(v["provision_timeout_ms"], 1_800_000);
        assert!(v["budget_limit"].is_null() && v["agent_card"].is_null());
        assert!(
            v.get("last_heartbeat").is_none(),
            "internal fields stay out"
        );
    }

    #[test]
    fn a_failed_workspace_shows_its_message_as_the_last_error() {
        let mut w = ws(Some(WorkspacePhase::Failed));
        if let Some(s) = w.status.as_mut() {
            s.message = Some("missing required env: OPENAI_API_KEY".into());
        }
        let v = render(&w, None, None);
        assert_eq!(v.last_sample_error, "missing required env: OPENAI_API_KEY");
        assert_eq!(
            transitions(Some(&render(&ws(None), None, None)), Some(&v)),
            vec![names::PROVISION_FAILED]
        );
    }

    #[test]
    fn transitions_name_what_changed() {
        let base = render(&ws(Some(WorkspacePhase::Provisioning)), None, None);
        assert_eq!(transitions(None, Some(&base)), vec![names::PROVISIONING]);
        assert_eq!(transitions(Some(&base), None), vec![names::REMOVED]);
        assert!(transitions(None, None).is_empty());

        let mut online = base.clone();
        online.status = "online";
        online.agent_card = Some(serde_json::json!({"name": "echo"}));
        assert_eq!(
            transitions(Some(&base), Some(&online)),
            vec![names::ONLINE, names::AGENT_CARD_UPDATED]
        );

        let mut beat = online.clone();
        beat.last_heartbeat = Some("t2".into());
        beat.uptime_seconds = 30;
        assert_eq!(
            transitions(Some(&online), Some(&beat)),
            vec![names::HEARTBEAT]
        );

        let mut task = beat.clone();
        task.last_heartbeat = Some("t3".into());
        task.active_tasks = 1;
        task.current_task = "summarise".into();
        assert_eq!(
            transitions(Some(&beat), Some(&task)),
            vec![names::TASK_UPDATED]
        );

        let mut moved = task.clone();
        moved.x = 40.0;
        moved.resource_version += 1;
        assert_eq!(transitions(Some(&task), Some(&moved)), vec![names::UPDATED]);
        let mut bumped = moved.clone();
        bumped.resource_version += 1;
        assert!(transitions(Some(&moved), Some(&bumped)).is_empty());

        let mut gone = moved.clone();
        gone.status = "removed";
        assert_eq!(transitions(Some(&moved), Some(&gone)), vec![names::REMOVED]);
        assert!(
            transitions(Some(&gone), None).is_empty(),
            "removed is announced once"
        );
        for (s, e) in [
            ("degraded", names::DEGRADED),
            ("offline", names::OFFLINE),
            ("paused", names::PAUSED),
        ] {
            let mut x = moved.clone();
            x.status = s;
            assert_eq!(transitions(Some(&moved), Some(&x)), vec![e]);
        }
    }

    #[test]
    fn messages_have_the_original_envelope() {
        let v = render(&ws(Some(WorkspacePhase::Online)), None, None);
        let m: Value = serde_json::from_str(&message(names::ONLINE, &v, "2026-01-01T00:00:00Z"))
            .expect("json");
        assert_eq!(m["event"], "WORKSPACE_ONLINE");
        assert_eq!(m["workspace_id"], "u-1");
        assert_eq!(m["timestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(m["payload"]["status"], "online");
    }
}
