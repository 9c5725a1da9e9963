//! What a Pod's status says about the workspace (ADR 0057): Pending and waiting containers are
//! a workspace still starting, with the Pod's reason; a Failed or Succeeded Pod (evicted,
//! out of memory, exited) is a stopped workspace the controller replaces with backoff.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::spec::agent_url;
use crate::backends::docker::LABEL_ATTEMPT;
use crate::backends::{Presence, Waiting, WorkspaceRef};

/// The condition reasons a Pod's own reason maps to; anything else is `PodNotReady` (the
/// Pod's words stay in the message).
const KNOWN: &[&str] = &[
    "ContainerCreating",
    "PodInitializing",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "Unschedulable",
    "Evicted",
    "OOMKilled",
    "Error",
    "Completed",
    "DeadlineExceeded",
];

fn known(reason: &str) -> &'static str {
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("PodNotReady")
}

fn waiting(pod_name: &str, reason: &str, message: &str) -> Waiting {
    let message = if message.is_empty() {
        format!("Pod {pod_name}: {reason}")
    } else {
        format!("Pod {pod_name}: {reason}: {message}")
    };
    Waiting {
        reason: known(reason),
        message,
    }
}

/// The first waiting or terminated reason among the init and the app containers.
fn container_reason(statuses: &[ContainerStatus]) -> Option<(String, String)> {
    statuses.iter().find_map(|s| {
        let state = s.state.as_ref()?;
        if let Some(w) = state.waiting.as_ref().filter(|w| w.reason.is_some()) {
            return Some((
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default(),
            ));
        }
        let t = state.terminated.as_ref()?;
        (t.exit_code != 0).then(|| {
            (
                t.reason.clone().unwrap_or_else(|| "Error".into()),
                t.message.clone().unwrap_or_default(),
            )
        })
    })
}

/// The workspace's presence from its Pod (`None`: no Pod).
pub fn presence(ws: &WorkspaceRef, pod: Option<&Pod>) -> Presence {
    let Some(pod) = pod else {
        return Presence::Absent;
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let container_id = pod.metadata.uid.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let init = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let app = status.container_statuses.as_deref().unwrap_or_default();
    let agent = app.first();
    if pod.metadata.deletion_timestamp.is_some() || matches!(phase, "Failed" | "Succeeded") {
        let terminated = agent
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.terminated.as_ref());
        let (reason, message) = match (&status.reason, terminated) {
            (Some(r), _) => (r.clone(), status.message.clone().unwrap_or_default()),
            (None, Some(t)) => (
                t.reason.clone().unwrap_or_else(|| phase.to_string()),
                t.message.clone().unwrap_or_default(),
            ),
            (None, None) if pod.metadata.deletion_timestamp.is_some() => {
                ("Terminating".into(), String::new())
            }
            (None, None) => (phase.to_string(), String::new()),
        };
        return Presence::Stopped {
            container_id,
            exit_code: terminated.map(|t| i64::from(t.exit_code)),
            oom_killed: terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled"),
            reason: Some(waiting(&name, &reason, &message)),
        };
    }
    let why = match phase {
        "Running" => container_reason(app).filter(|_| !agent_ready(agent)),
        _ => container_reason(init)
            .or_else(|| container_reason(app))
            .or_else(|| unschedulable(pod))
            .or_else(|| Some(("ContainerCreating".into(), String::new()))),
    };
    Presence::Running {
        container_id,
        host_url: Some(pod_url(status.pod_ip.as_deref()).unwrap_or_else(|| agent_url(ws))),
        started_at: status.start_time.map(|t| t.0.to_string()),
        attempt: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LABEL_ATTEMPT))
            .cloned(),
        waiting: why.map(|(r, m)| waiting(&name, &r, &m)),
    }
}

/// The agent at its Pod's IP, once the kubelet reported one: the operator reaches Pods
/// directly on the pod network, and a replaced Pod's new IP is recorded by the next pass.
fn pod_url(ip: Option<&str>) -> Option<String> {
    let ip: std::net::IpAddr = ip?.parse().ok()?;
    Some(match ip {
        std::net::IpAddr::V4(v4) => format!("http://{v4}:{}", super::spec::AGENT_PORT),
        std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{}", super::spec::AGENT_PORT),
    })
}

fn agent_ready(agent: Option<&ContainerStatus>) -> bool {
    agent.is_some_and(|s| s.ready && s.state.as_ref().is_some_and(|st| st.running.is_some()))
}

/// A `PodScheduled=False` condition's reason and message.
fn unschedulable(pod: &Pod) -> Option<(String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ws() -> WorkspaceRef {
        WorkspaceRef {
            uid: "3f2a9c1e-7b4d".into(),
            namespace: "team".into(),
            name: "alpha".into(),
            instance_id: None,
        }
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "ws-3f2a9c1e7b4d", "uid": "pod-uid",
                         "annotations": {"molecule.ai/attempt": "abcd"}},
            "spec": {"containers": [{"name": "agent", "image": "i"}]},
            "status": status
        }))
        .expect("pod")
    }

    fn wait_of(p: Presence) -> Option<(&'static str, String)> {
        match p {
            Presence::Running { waiting, .. } => waiting.map(|w| (w.reason, w.message)),
            Presence::Stopped { reason, .. } => reason.map(|w| (w.reason, w.message)),
            Presence::Absent => None,
        }
    }

    #[test]
    fn no_pod_is_absent() {
        assert_eq!(presence(&ws(), None), Presence::Absent);
    }

    #[test]
    fn a_pending_pod_is_starting_with_its_reason() {
        let p = presence(&ws(), Some(&pod(json!({"phase": "Pending"}))));
        assert!(
            matches!(&p, Presence::Running { host_url: Some(u), .. } if u == "http://ws-3f2a9c1e7b4d.team.svc:8000"),
            "before the kubelet reports an IP, the Service: {p:?}"
        );
        assert_eq!(wait_of(p).map(|w| w.0), Some("ContainerCreating"));
        let pulling = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"i\""}}}]}));
        let p = presence(&ws(), Some(&pulling));
        let (reason, message) = wait_of(p).expect("waiting");
        assert_eq!(reason, "ImagePullBackOff");
        assert!(message.contains("Back-off pulling image"), "{message}");
        let unsched = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}),
        );
        assert_eq!(
            wait_of(presence(&ws(), Some(&unsched))).map(|w| w.0),
            Some("Unschedulable")
        );
    }

    #[test]
    fn a_running_pod_is_running_and_a_crash_loop_says_so() {
        let up = pod(
            json!({"phase": "Running", "startTime": "2026-12-04T00:00:00Z", "podIP": "10.1.2.3",
            "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-12-04T00:00:01Z"}}}]}),
        );
        match presence(&ws(), Some(&up)) {
            Presence::Running {
                container_id,
                host_url,
                attempt,
                waiting,
                ..
            } => {
                assert_eq!(container_id, "pod-uid");
                assert_eq!(host_url.as_deref(), Some("http://10.1.2.3:8000"));
                assert_eq!(attempt.as_deref(), Some("abcd"));
                assert_eq!(waiting, None);
            }
            other => panic!("{other:?}"),
        }
        let looping = pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "agent",
            "image": "i", "imageID": "", "ready": false, "restartCount": 5,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}}]}),
        );
        assert_eq!(
            wait_of(presence(&ws(), Some(&looping))).map(|w| w.0),
            Some("CrashLoopBackOff")
        );
    }

    #[test]
    fn failed_and_evicted_pods_are_stopped_with_the_pods_reason() {
        let evicted = pod(json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory."}));
        let p = presence(&ws(), Some(&evicted));
        assert!(matches!(p, Presence::Stopped { .. }), "{p:?}");
        let (reason, message) = wait_of(p).expect("reason");
        assert_eq!(reason, "Evicted");
        assert!(message.contains("low on resource"));
        let oom = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "agent",
            "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        );
        match presence(&ws(), Some(&oom)) {
            Presence::Stopped {
                exit_code,
                oom_killed,
                ..
            } => assert_eq!((exit_code, oom_killed), (Some(137), true)),
            other => panic!("{other:?}"),
        }
        let odd = pod(json!({"phase": "Failed", "reason": "SomethingNew"}));
        assert_eq!(
            wait_of(presence(&ws(), Some(&odd))).map(|w| w.0),
            Some("PodNotReady")
        );
    }
}
