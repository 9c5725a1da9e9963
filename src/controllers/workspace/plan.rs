//! The pure decision step of the Workspace controller: from what was observed (spec, status,
//! the container's presence, the clock) to what to do and which phase to report (ADR 0006),
//! and what a failed backend call means for the record (ADR 0035).

use crate::backends::{BackendError, Presence};
use crate::resources::{WorkspacePhase, WorkspaceStatus};

/// Why a (new) container is provisioned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvisionReason {
    /// Nothing was ever provisioned (or a provision was interrupted).
    Initial,
    /// `molecule.ai/restartedAt` changed.
    Restart,
    /// Image, env, tier or files changed.
    ConfigChanged,
    /// The container exited or vanished while the workspace was up.
    Died,
    /// Heartbeats stopped for longer than the timeout.
    HeartbeatLost,
    /// A container runs that this status did not record (e.g. a crash mid-provision): its token
    /// is unknown, so it is replaced.
    Unrecorded,
}

impl ProvisionReason {
    /// Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProvisionReason::Initial => "Provisioning",
            ProvisionReason::Restart => "Restarting",
            ProvisionReason::ConfigChanged => "Reconfiguring",
            ProvisionReason::Died => "AgentDied",
            ProvisionReason::HeartbeatLost => "HeartbeatLost",
            ProvisionReason::Unrecorded => "Reprovisioning",
        }
    }
    /// Whether this is an automatic recovery (subject to backoff, phase Offline first).
    pub fn is_recovery(&self) -> bool {
        matches!(self, ProvisionReason::Died | ProvisionReason::HeartbeatLost)
    }
}

/// What the reconcile does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Provision(ProvisionReason),
    /// The running container was created by the current provision attempt (its token is the
    /// one on record) but its id never reached status — the operator died or a slow engine call
    /// timed out between start and the status write. Record it instead of replacing it.
    Adopt {
        container_id: String,
    },
    /// Report the phase; nothing to change in the backend.
    Observe {
        phase: WorkspacePhase,
        reason: &'static str,
        message: String,
    },
}

/// Everything `decide` looks at.
pub struct Observed<'a> {
    pub status: &'a WorkspaceStatus,
    pub presence: &'a Presence,
    /// What the record says runs: `status.containerId` (Docker) or `status.instanceId`
    /// (control plane).
    pub recorded: Option<&'a str>,
    pub desired_hash: &'a str,
    pub restart_annotation: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: i64,
    pub heartbeat_timeout_secs: i64,
    pub provision_timeout_secs: i64,
}

fn secs(ts: Option<&String>) -> Option<i64> {
    ts.and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

/// The last heartbeat (seconds since the epoch) if the agent reported since the last provision.
/// Compared at microsecond precision: a heartbeat of the previous container in the same second
/// as the new provision must not count as the new agent's registration.
pub fn heartbeat_since_provision(st: &WorkspaceStatus) -> Option<i64> {
    let micros = |ts: Option<&String>| {
        ts.and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_microsecond())
    };
    let provisioned = micros(st.provisioned_at.as_ref()).unwrap_or(i64::MIN);
    micros(st.last_heartbeat.as_ref())
        .filter(|h| *h >= provisioned)
        .map(|h| h.div_euclid(1_000_000))
}

/// The hash of what a container is started from (`status.specHash`): the image key, the
/// tier, the env and every config file. A change provisions a new container.
pub fn desired_hash(
    image_key: &str,
    tier: crate::backends::Tier,
    env: &std::collections::BTreeMap<String, String>,
    files: &[crate::backends::ConfigFile],
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(image_key.as_bytes());
    h.update(tier.number().to_le_bytes());
    for (k, v) in env {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    for f in files {
        h.update(f.path.as_bytes());
        h.update(hex::encode(Sha256::digest(&f.content)).as_bytes());
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// When the record started waiting for `reason` to resolve (seconds since the epoch): the
/// transition time of a ConfigReady condition that already says `reason` for this generation.
/// `None`: the wait starts now (first notice, or the spec changed since).
pub fn waiting_since(
    conditions: &[crate::resources::Condition],
    reason: &str,
    generation: i64,
) -> Option<i64> {
    conditions
        .iter()
        .find(|c| c.type_ == "ConfigReady")
        .filter(|c| c.reason.as_deref() == Some(reason))
        .filter(|c| c.observed_generation == Some(generation))
        .and_then(|c| secs(c.last_transition_time.as_ref()))
}

/// Seconds left of a wait that started at `since`, or `None` once `timeout` has passed.
pub fn pending_step(since: i64, now: i64, timeout: i64) -> Option<i64> {
    let left = timeout - (now - since);
    (left > 0).then_some(left)
}

/// Error-rate thresholds with hysteresis.
pub const DEGRADED_AT: f64 = 0.5;
pub const RECOVERED_BELOW: f64 = 0.1;

/// Decides the next step.
pub fn decide(o: &Observed<'_>) -> Step {
    let st = o.status;
    let was_up = matches!(
        st.phase,
        Some(WorkspacePhase::Online | WorkspacePhase::Degraded)
    );
    let (running_id, attempt) = match o.presence {
        Presence::Running {
            container_id,
            attempt,
            ..
        } => (Some(container_id), attempt.as_deref()),
        _ => (None, None),
    };
    // A platform that reports why the runtime stopped (an evicted Pod) has seen it fail: a
    // restart with backoff, even before the agent ever came up.
    let failed = matches!(
        o.presence,
        Presence::Stopped {
            reason: Some(_),
            ..
        }
    );
    let Some(running_id) = running_id else {
        return if was_up
            || failed
            || (st.phase == Some(WorkspacePhase::Offline) && o.recorded.is_some())
        {
            Step::Provision(ProvisionReason::Died)
        } else {
            Step::Provision(ProvisionReason::Initial)
        };
    };
    if o.recorded != Some(running_id.as_str()) {
        let current_attempt = st
            .token_hash
            .as_deref()
            .zip(attempt)
            .is_some_and(|(hash, a)| a.len() == 16 && hash.starts_with(a));
        if current_attempt && st.spec_hash.as_deref() == Some(o.desired_hash) {
            return Step::Adopt {
                container_id: running_id.clone(),
            };
        }
        return Step::Provision(ProvisionReason::Unrecorded);
    }
    if st.spec_hash.as_deref() != Some(o.desired_hash) {
        return Step::Provision(ProvisionReason::ConfigChanged);
    }
    if let Some(a) = o.restart_annotation
        && st.restarted_at.as_deref() != Some(a)
    {
        return Step::Provision(ProvisionReason::Restart);
    }
    let provisioned = secs(st.provisioned_at.as_ref()).unwrap_or(0);
    let Some(hb) = heartbeat_since_provision(st) else {
        if o.now - provisioned > o.provision_timeout_secs {
            return Step::Observe {
                phase: WorkspacePhase::Failed,
                reason: "ProvisionTimeout",
                message: format!(
                    "the agent did not register within {}s of provisioning",
                    o.provision_timeout_secs
                ),
            };
        }
        if let Presence::Running {
            waiting: Some(w), ..
        } = o.presence
        {
            return Step::Observe {
                phase: WorkspacePhase::Provisioning,
                reason: w.reason,
                message: w.message.clone(),
            };
        }
        return Step::Observe {
            phase: WorkspacePhase::Provisioning,
            reason: "WaitingForAgent",
            message: "container started; waiting for the agent to register".into(),
        };
    };
    if o.now - hb > o.heartbeat_timeout_secs {
        return Step::Provision(ProvisionReason::HeartbeatLost);
    }
    let (phase, reason, message) = reported_health(st);
    Step::Observe {
        phase,
        reason,
        message,
    }
}

/// The phase of an agent that is registered and heartbeating, from what it reports:
/// Degraded at an error rate ≥ 0.5 or when the runtime says it is wedged; back to Online only
/// below 0.1 (hysteresis). Shared by container and external workspaces.
pub fn reported_health(st: &WorkspaceStatus) -> (WorkspacePhase, &'static str, String) {
    let rate = st.error_rate.unwrap_or(0.0);
    let wedged = st.runtime_state.as_deref() == Some("wedged");
    if wedged || rate >= DEGRADED_AT {
        let why = if wedged {
            "the runtime reports it is wedged".to_string()
        } else {
            format!("error rate {:.0}% over the last interval", rate * 100.0)
        };
        return (WorkspacePhase::Degraded, "Degraded", why);
    }
    if st.phase == Some(WorkspacePhase::Degraded) && rate >= RECOVERED_BELOW {
        return (
            WorkspacePhase::Degraded,
            "Degraded",
            format!("error rate {:.0}%, recovering", rate * 100.0),
        );
    }
    (
        WorkspacePhase::Online,
        "Online",
        "the agent is registered and heartbeating".into(),
    )
}

/// What in a Workspace needs a reconcile when it changes: the spec (generation), deletion,
/// finalizers, the restart annotation, and the *classes* of what agents report (registered since
/// the last provision or not; error rate low/middling/high; wedged). Heartbeats that change none
/// of these — nearly all of them — do not wake the controller; lost heartbeats are found by the
/// periodic requeue. Used as the controller's watch predicate.
pub fn trigger_hash(ws: &crate::resources::Workspace) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = &ws.metadata;
    let st = ws.status.as_ref();
    let registered = st.is_some_and(|s| heartbeat_since_provision(s).is_some());
    let rate_class = match st.and_then(|s| s.error_rate).unwrap_or(0.0) {
        r if r >= DEGRADED_AT => 2u8,
        r if r >= RECOVERED_BELOW => 1,
        _ => 0,
    };
    let wedged = st.and_then(|s| s.runtime_state.as_deref()) == Some("wedged");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        meta.generation,
        meta.deletion_timestamp.is_some(),
        &meta.finalizers,
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(super::RESTART_ANNOTATION)),
        registered,
        rate_class,
        wedged,
    )
        .hash(&mut h);
    Some(h.finish())
}

/// What a failed start means for the record: a reason and a canned message for the condition
/// and the Event (never the backend's error text: it may quote a remote body), and whether to
/// retry with backoff (else wait for the record to change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartFailure {
    pub reason: &'static str,
    pub message: String,
    pub retry: bool,
}

/// Maps a failed `ensure_started`. `None`: retry quietly (a Docker engine hiccup; the phase
/// stays Provisioning). Control-plane failures are always reported, since the user cannot see
/// the remote side.
pub fn start_failure(control_plane: bool, e: &BackendError) -> Option<StartFailure> {
    let f = |reason, message: String, retry| {
        Some(StartFailure {
            reason,
            message,
            retry,
        })
    };
    if !control_plane {
        return match e {
            _ if e.is_transient() => None,
            BackendError::ImageMissing(img) => f(
                "ImageMissing",
                format!("image {img} is not present locally and no registry is configured"),
                false,
            ),
            _ => f(
                "ProvisionFailed",
                "the container engine refused the container; see the operator log".into(),
                false,
            ),
        };
    }
    match e {
        BackendError::Upstream {
            status: status @ (401 | 403),
            ..
        } => f(
            "ControlPlaneAuth",
            format!(
                "the control plane refused this operator's credentials (HTTP {status}); check the credentials Secret; retrying"
            ),
            true,
        ),
        BackendError::Upstream { status, .. } if e.is_transient() => f(
            "ProvisionFailed",
            format!("the control plane could not provision an instance (HTTP {status}); retrying"),
            true,
        ),
        BackendError::Upstream { status, .. } => f(
            "ProvisionRejected",
            format!(
                "the control plane rejected the provision request (HTTP {status}); see the operator log"
            ),
            false,
        ),
        BackendError::Config(msg) => f("ControlPlaneConfig", format!("{msg}; retrying"), true),
        BackendError::Transient(_) => f(
            "ControlPlaneUnavailable",
            "the control plane could not be reached or gave an unusable answer; retrying".into(),
            true,
        ),
        BackendError::Permanent(_) | BackendError::ImageMissing(_) => f(
            "ProvisionFailed",
            "the control plane backend refused the workspace; see the operator log".into(),
            false,
        ),
    }
}

/// The canned message of a stop that failed while deleting (the finalizer is kept and retried).
pub fn stop_failure_message(e: &BackendError) -> String {
    match e {
        BackendError::Upstream { status, .. } => format!(
            "the control plane did not confirm that the instance was stopped (HTTP {status}); retrying"
        ),
        BackendError::Config(msg) => format!("{msg}; retrying"),
        _ => "the control plane could not be reached to stop the instance; retrying".into(),
    }
}

/// Backoff before automatic restart number `n` (1-based): 1s, 2s, 4s … capped at 5 min.
pub fn restart_backoff_secs(n: i64) -> i64 {
    let exp = n.saturating_sub(1).clamp(0, 16) as u32;
    (1i64 << exp).min(300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> String {
        jiff::Timestamp::from_second(s)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    fn running() -> Presence {
        Presence::Running {
            container_id: "c1".into(),
            host_url: None,
            started_at: None,
            attempt: None,
            waiting: None,
        }
    }

    #[test]
    fn a_container_of_the_current_attempt_is_adopted_not_replaced() {
        // The provision wrote tokenHash and specHash, created and started the container, and
        // died (or timed out) before writing containerId.
        let st = WorkspaceStatus {
            phase: Some(WorkspacePhase::Provisioning),
            token_hash: Some("0123456789abcdef0123".into()),
            spec_hash: Some("h".into()),
            provisioned_at: Some(ts(1000)),
            ..Default::default()
        };
        let ours = |attempt: &str| Presence::Running {
            container_id: "c9".into(),
            host_url: None,
            started_at: None,
            attempt: Some(attempt.into()),
            waiting: None,
        };
        let p = ours("0123456789abcdef");
        assert_eq!(
            decide(&obs(&st, &p, 1001)),
            Step::Adopt {
                container_id: "c9".into()
            }
        );
        // An older attempt's container (its token is no longer on record) is replaced.
        let p = ours("fedcba9876543210");
        assert_eq!(
            decide(&obs(&st, &p, 1001)),
            Step::Provision(ProvisionReason::Unrecorded)
        );
        // So is one whose spec no longer matches, and one that carries no attempt.
        let p = ours("0123456789abcdef");
        let o = Observed {
            desired_hash: "other",
            ..obs(&st, &p, 1001)
        };
        assert_eq!(decide(&o), Step::Provision(ProvisionReason::Unrecorded));
        assert_eq!(
            decide(&obs(&st, &running(), 1001)),
            Step::Provision(ProvisionReason::Unrecorded)
        );
    }

    fn up(phase: WorkspacePhase) -> WorkspaceStatus {
        WorkspaceStatus {
            phase: Some(phase),
            container_id: Some("c1".into()),
            spec_hash: Some("h".into()),
            provisioned_at: Some(ts(1000)),
            last_heartbeat: Some(ts(1010)),
            ..Default::default()
        }
    }

    fn obs<'a>(status: &'a WorkspaceStatus, presence: &'a Presence, now: i64) -> Observed<'a> {
        Observed {
            status,
            presence,
            recorded: status.container_id.as_deref(),
            desired_hash: "h",
            restart_annotation: None,
            now,
            heartbeat_timeout_secs: 180,
            provision_timeout_secs: 600,
        }
    }

    #[test]
    fn heartbeats_wake_the_controller_only_when_their_class_changes() {
        use crate::resources::{Workspace, WorkspaceSpec};
        let mut ws = Workspace::new("a", WorkspaceSpec::default());
        ws.metadata.generation = Some(1);
        ws.status = Some(WorkspaceStatus {
            provisioned_at: Some(ts(1000)),
            ..Default::default()
        });
        let waiting = trigger_hash(&ws);
        let beat = |ws: &mut Workspace, at: i64, rate: f64| {
            let st = ws.status.as_mut().expect("status");
            st.last_heartbeat = Some(ts(at));
            st.error_rate = Some(rate);
            st.uptime_seconds = Some(at);
        };
        // A heartbeat of the previous container does not count as registration, not even in
        // the same second as the provision.
        beat(&mut ws, 999, 0.0);
        assert_eq!(trigger_hash(&ws), waiting);
        ws.status.as_mut().expect("status").provisioned_at = Some("1970-01-01T00:16:40.5Z".into());
        ws.status.as_mut().expect("status").last_heartbeat = Some("1970-01-01T00:16:40.2Z".into());
        assert_eq!(trigger_hash(&ws), waiting);
        ws.status.as_mut().expect("status").provisioned_at = Some(ts(1000));
        beat(&mut ws, 1001, 0.0);
        let registered = trigger_hash(&ws);
        assert_ne!(registered, waiting, "first registration wakes it");
        beat(&mut ws, 1031, 0.05);
        assert_eq!(
            trigger_hash(&ws),
            registered,
            "a routine heartbeat does not"
        );
        beat(&mut ws, 1061, 0.7);
        assert_ne!(
            trigger_hash(&ws),
            registered,
            "crossing the degraded threshold does"
        );
        beat(&mut ws, 1091, 0.0);
        assert_eq!(trigger_hash(&ws), registered);
        ws.metadata.annotations = Some(
            [(
                super::super::RESTART_ANNOTATION.to_string(),
                "now".to_string(),
            )]
            .into(),
        );
        assert_ne!(trigger_hash(&ws), registered, "the restart annotation does");
    }

    #[test]
    fn first_provision_and_death() {
        let st = WorkspaceStatus::default();
        assert_eq!(
            decide(&obs(&st, &Presence::Absent, 0)),
            Step::Provision(ProvisionReason::Initial)
        );
        let st = up(WorkspacePhase::Online);
        let dead = Presence::Stopped {
            container_id: "c1".into(),
            exit_code: Some(137),
            oom_killed: false,
            reason: None,
        };
        assert_eq!(
            decide(&obs(&st, &dead, 1020)),
            Step::Provision(ProvisionReason::Died)
        );
        assert_eq!(
            decide(&obs(&st, &Presence::Absent, 1020)),
            Step::Provision(ProvisionReason::Died)
        );
        // A platform-reported failure (an evicted Pod) is a death even before the agent came
        // up, so it is restarted with backoff rather than at once.
        let evicted = Presence::Stopped {
            container_id: "pod".into(),
            exit_code: None,
            oom_killed: false,
            reason: Some(crate::backends::Waiting {
                reason: "Evicted",
                message: "Pod ws-1: Evicted".into(),
            }),
        };
        let provisioning = WorkspaceStatus {
            phase: Some(WorkspacePhase::Provisioning),
            ..WorkspaceStatus::default()
        };
        assert_eq!(
            decide(&obs(&provisioning, &evicted, 1020)),
            Step::Provision(ProvisionReason::Died)
        );
    }

    #[test]
    fn unrecorded_container_config_change_and_restart() {
        let st = WorkspaceStatus {
            container_id: Some("other".into()),
            ..up(WorkspacePhase::Online)
        };
        assert_eq!(
            decide(&obs(&st, &running(), 1020)),
            Step::Provision(ProvisionReason::Unrecorded)
        );
        let st = up(WorkspacePhase::Online);
        let run = running();
        let o = Observed {
            desired_hash: "new",
            ..obs(&st, &run, 1020)
        };
        assert_eq!(decide(&o), Step::Provision(ProvisionReason::ConfigChanged));
        let o = Observed {
            restart_annotation: Some("2026-01-01T00:00:00Z"),
            ..obs(&st, &run, 1020)
        };
        assert_eq!(decide(&o), Step::Provision(ProvisionReason::Restart));
        // The same annotation value acted upon before is not a new restart (coalescing).
        let st = WorkspaceStatus {
            restarted_at: Some("2026-01-01T00:00:00Z".into()),
            ..up(WorkspacePhase::Online)
        };
        let o = Observed {
            restart_annotation: Some("2026-01-01T00:00:00Z"),
            ..obs(&st, &run, 1020)
        };
        assert!(matches!(
            decide(&o),
            Step::Observe {
                phase: WorkspacePhase::Online,
                ..
            }
        ));
    }

    #[test]
    fn provisioning_online_timeout_and_heartbeat_loss() {
        let st = WorkspaceStatus {
            last_heartbeat: Some(ts(900)),
            ..up(WorkspacePhase::Provisioning)
        };
        assert!(
            matches!(
                decide(&obs(&st, &running(), 1100)),
                Step::Observe {
                    phase: WorkspacePhase::Provisioning,
                    ..
                }
            ),
            "a heartbeat older than the provision does not count"
        );
        assert!(matches!(
            decide(&obs(&st, &running(), 1601)),
            Step::Observe {
                phase: WorkspacePhase::Failed,
                reason: "ProvisionTimeout",
                ..
            }
        ));
        let st = up(WorkspacePhase::Provisioning);
        assert!(matches!(
            decide(&obs(&st, &running(), 1020)),
            Step::Observe {
                phase: WorkspacePhase::Online,
                ..
            }
        ));
        // A registration that arrives after the timeout still wins.
        assert!(matches!(
            decide(&obs(&st, &running(), 1100)),
            Step::Observe {
                phase: WorkspacePhase::Online,
                ..
            }
        ));
        assert_eq!(
            decide(&obs(&st, &running(), 1191)),
            Step::Provision(ProvisionReason::HeartbeatLost)
        );
    }

    #[test]
    fn degraded_with_hysteresis() {
        let st = WorkspaceStatus {
            error_rate: Some(0.6),
            ..up(WorkspacePhase::Online)
        };
        assert!(matches!(
            decide(&obs(&st, &running(), 1020)),
            Step::Observe {
                phase: WorkspacePhase::Degraded,
                ..
            }
        ));
        let st = WorkspaceStatus {
            error_rate: Some(0.3),
            ..up(WorkspacePhase::Degraded)
        };
        assert!(matches!(
            decide(&obs(&st, &running(), 1020)),
            Step::Observe {
                phase: WorkspacePhase::Degraded,
                ..
            }
        ));
        let st = WorkspaceStatus {
            error_rate: Some(0.3),
            ..up(WorkspacePhase::Online)
        };
        assert!(matches!(
            decide(&obs(&st, &running(), 1020)),
            Step::Observe {
                phase: WorkspacePhase::Online,
                ..
            }
        ));
        let st = WorkspaceStatus {
            error_rate: Some(0.05),
            ..up(WorkspacePhase::Degraded)
        };
        assert!(matches!(
            decide(&obs(&st, &running(), 1020)),
            Step::Observe {
                phase: WorkspacePhase::Online,
                ..
            }
        ));
        let st = WorkspaceStatus {
            runtime_state: Some("wedged".into()),
            ..up(WorkspacePhase::Online)
        };
        assert!(matches!(
            decide(&obs(&st, &running(), 1020)),
            Step::Observe {
                phase: WorkspacePhase::Degraded,
                ..
            }
        ));
    }

    #[test]
    fn a_wait_keeps_its_clock_until_the_spec_changes() {
        use crate::resources::{Condition, ConditionStatus};
        let mut c = Condition::new("ConfigReady", ConditionStatus::False, "UnknownRuntime", "x");
        c.observed_generation = Some(3);
        c.last_transition_time = Some(ts(1000));
        let cs = vec![c];
        assert_eq!(waiting_since(&cs, "UnknownRuntime", 3), Some(1000));
        assert_eq!(
            waiting_since(&cs, "UnknownRuntime", 4),
            None,
            "spec changed"
        );
        assert_eq!(waiting_since(&cs, "MissingEnv", 3), None, "another problem");
        assert_eq!(waiting_since(&[], "UnknownRuntime", 3), None);
        assert_eq!(pending_step(1000, 1000, 600), Some(600));
        assert_eq!(pending_step(1000, 1599, 600), Some(1));
        assert_eq!(pending_step(1000, 1600, 600), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(
            (
                restart_backoff_secs(1),
                restart_backoff_secs(2),
                restart_backoff_secs(4)
            ),
            (1, 2, 8)
        );
        assert_eq!(restart_backoff_secs(50), 300);
    }

    #[test]
    fn a_control_plane_instance_is_matched_by_its_recorded_instance_id() {
        // The record keeps the instance id, not a container id.
        let st = WorkspaceStatus {
            phase: Some(WorkspacePhase::Online),
            instance_id: Some("i-0abc".into()),
            spec_hash: Some("h".into()),
            provisioned_at: Some(ts(1000)),
            last_heartbeat: Some(ts(1010)),
            ..Default::default()
        };
        let run = Presence::Running {
            container_id: "i-0abc".into(),
            host_url: None,
            started_at: None,
            attempt: None,
            waiting: None,
        };
        let o = Observed {
            recorded: st.instance_id.as_deref(),
            ..obs(&st, &run, 1020)
        };
        assert!(matches!(
            decide(&o),
            Step::Observe {
                phase: WorkspacePhase::Online,
                ..
            }
        ));
        // Another instance running for this workspace (a crash before the id was recorded).
        let other = Presence::Running {
            container_id: "i-0def".into(),
            host_url: None,
            started_at: None,
            attempt: None,
            waiting: None,
        };
        let o = Observed {
            recorded: st.instance_id.as_deref(),
            ..obs(&st, &other, 1020)
        };
        assert_eq!(decide(&o), Step::Provision(ProvisionReason::Unrecorded));
        // Marked Offline (by the A2A proxy) with an instance on record that is gone: it died.
        let offline = WorkspaceStatus {
            phase: Some(WorkspacePhase::Offline),
            ..st.clone()
        };
        let o = Observed {
            recorded: offline.instance_id.as_deref(),
            ..obs(&offline, &Presence::Absent, 1020)
        };
        assert_eq!(decide(&o), Step::Provision(ProvisionReason::Died));
        // Nothing recorded, nothing running: a first provision.
        let empty = WorkspaceStatus::default();
        let o = Observed {
            recorded: None,
            ..obs(&empty, &Presence::Absent, 1020)
        };
        assert_eq!(decide(&o), Step::Provision(ProvisionReason::Initial));
    }

    #[test]
    fn start_failures_get_canned_messages() {
        let secret_body = "upstream said: Authorization Bearer sk-live-123 <html>boom</html>";
        let up = |status| BackendError::Upstream {
            call: "control plane provision",
            status,
            detail: secret_body.into(),
        };
        let f = start_failure(true, &up(500)).expect("reported");
        assert_eq!(f.reason, "ProvisionFailed");
        assert!(f.retry);
        assert!(f.message.contains("HTTP 500"), "{}", f.message);
        let f = start_failure(true, &up(400)).expect("reported");
        assert_eq!((f.reason, f.retry), ("ProvisionRejected", false));
        let f = start_failure(true, &up(401)).expect("reported");
        assert_eq!((f.reason, f.retry), ("ControlPlaneAuth", true));
        let f =
            start_failure(true, &BackendError::Transient(secret_body.into())).expect("reported");
        assert_eq!((f.reason, f.retry), ("ControlPlaneUnavailable", true));
        let f = start_failure(
            true,
            &BackendError::Config("the Secret x/y does not exist".into()),
        )
        .expect("reported");
        assert_eq!(f.reason, "ControlPlaneConfig");
        assert!(f.message.starts_with("the Secret x/y does not exist"));
        for e in [
            up(500),
            up(400),
            up(401),
            BackendError::Transient(secret_body.into()),
            BackendError::Permanent(secret_body.into()),
        ] {
            let m = start_failure(true, &e).expect("reported").message;
            assert!(!m.contains("sk-live") && !m.contains("boom"), "{m}");
            let m = stop_failure_message(&e);
            assert!(!m.contains("sk-live") && !m.contains("boom"), "{m}");
        }
        // Docker keeps its behaviour: engine hiccups retry quietly.
        assert_eq!(
            start_failure(false, &BackendError::Transient("x".into())),
            None
        );
        assert_eq!(
            start_failure(false, &BackendError::ImageMissing("img:1".into()))
                .expect("reported")
                .reason,
            "ImageMissing"
        );
    }
}
