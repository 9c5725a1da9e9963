//! The pure decisions of the PluginInstall controller: which revision the record wants, which
//! queued update applies, whether canaries hold production back (ADR 0016), the phase each queued
//! update shows, and whether an install restarts the workspace (ADR 0015).

use std::time::Duration;

use crate::plugins::{Change, Refusal};
use crate::resources::{PluginDecision, PluginInstallStatus, PluginUpdate, Workspace};

/// Check interval when the record sets none (ADR 0016).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest accepted check interval.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Workspace label naming its update tier (ADR 0016): `canary`, anything else is production.
pub const UPDATE_TIER_LABEL: &str = "molecule.ai/update-tier";
pub const CANARY: &str = "canary";
pub const PRODUCTION: &str = "production";

/// `spec.checkInterval` (`30s`, `15m`, `1h`, `PT1H`), default 1 h.
pub fn check_interval(spec: Option<&str>) -> Result<Duration, Refusal> {
    let Some(s) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(DEFAULT_CHECK_INTERVAL);
    };
    let bad = || {
        Refusal::new(
            "InvalidCheckInterval",
            format!(
                "checkInterval {:?} is not a duration of at least 1s (e.g. 30s, 15m, 1h)",
                crate::plugins::source::shorten(s, 40)
            ),
        )
    };
    let d: jiff::SignedDuration = s.parse().map_err(|_| bad())?;
    let d = Duration::try_from(d).map_err(|_| bad())?;
    if d < MIN_CHECK_INTERVAL {
        return Err(bad());
    }
    Ok(d)
}

/// The update tier of a workspace.
pub fn tier_of(ws: &Workspace) -> &'static str {
    match ws
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(UPDATE_TIER_LABEL))
    {
        Some(t) if t == CANARY => CANARY,
        _ => PRODUCTION,
    }
}

/// The fields of a queued update the decisions look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateView {
    pub name: String,
    /// The PluginInstall it belongs to.
    pub install: String,
    pub decision: PluginDecision,
    pub from_sha: String,
    pub to_sha: String,
    pub ref_name: Option<String>,
    pub source: Option<String>,
    pub tier: String,
    pub phase: Option<String>,
    /// creationTimestamp, RFC 3339 (orders detections).
    pub created: String,
}

impl UpdateView {
    pub fn of(u: &PluginUpdate) -> Self {
        UpdateView {
            name: u.metadata.name.clone().unwrap_or_default(),
            install: u.spec.plugin_install_ref.name.clone(),
            decision: u.spec.decision,
            from_sha: u.spec.from_sha.clone(),
            to_sha: u.spec.to_sha.clone(),
            ref_name: u.spec.ref_name.clone(),
            source: u.spec.source.clone(),
            tier: u.spec.tier.clone().unwrap_or_else(|| PRODUCTION.into()),
            phase: u.status.as_ref().and_then(|s| s.phase.clone()),
            created: u
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        }
    }
}

/// What revision the record wants now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nothing installed for the current spec: resolve the track (or read the local plugin).
    Resolve,
    /// Keep or install this sha; `update` names the approved PluginUpdate being applied.
    Sha {
        sha: String,
        ref_name: Option<String>,
        update: Option<String>,
    },
}

/// The approved update to apply: approved, starting from the installed sha, going elsewhere;
/// the newest detection wins when several are approved in one batch.
pub fn applicable<'a>(installed: &str, updates: &'a [UpdateView]) -> Option<&'a UpdateView> {
    updates
        .iter()
        .filter(|u| {
            u.decision == PluginDecision::Approved
                && u.from_sha == installed
                && u.to_sha != installed
        })
        .max_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)))
}

/// Canaries first (ADR 0016): a production update waits while a canary update of the same source
/// and target sha is neither applied nor dismissed — also while it is still pending, so approving a
/// batch in any order (`kubectl patch pu a b`) lands on canaries first. Returns why it waits.
pub fn canary_hold(update: &UpdateView, all: &[UpdateView]) -> Option<String> {
    if update.tier == CANARY {
        return None;
    }
    let blocking: Vec<&UpdateView> = all
        .iter()
        .filter(|u| {
            u.tier == CANARY
                && u.decision != PluginDecision::Dismissed
                && u.to_sha == update.to_sha
                && u.source.is_some()
                && u.source == update.source
                && u.phase.as_deref() != Some("Applied")
                && u.phase.as_deref() != Some("Superseded")
        })
        .collect();
    let first = blocking.first()?;
    let failed = blocking
        .iter()
        .find(|u| u.phase.as_deref() == Some("Failed"));
    let pending = blocking
        .iter()
        .find(|u| u.decision == PluginDecision::Pending);
    Some(match (failed, pending) {
        (Some(f), _) => format!(
            "waiting for canary update {} (it failed; fix or dismiss it to release production)",
            f.name
        ),
        (None, Some(p)) => format!(
            "waiting for canary update {} to be approved and applied (or dismissed) first",
            p.name
        ),
        (None, None) => format!(
            "waiting for {} canary update(s) to apply first (e.g. {})",
            blocking.len(),
            first.name
        ),
    })
}

/// Which revision to converge to.
pub fn target(
    status: &PluginInstallStatus,
    origin_key: &str,
    updates: &[UpdateView],
    all: &[UpdateView],
) -> (Target, Option<String>) {
    let installed = match (&status.installed_sha, &status.installed_from) {
        (Some(sha), Some(from)) if from == origin_key => sha.clone(),
        _ => return (Target::Resolve, None),
    };
    let keep = Target::Sha {
        sha: installed.clone(),
        ref_name: status.installed_ref.clone(),
        update: None,
    };
    let Some(u) = applicable(&installed, updates) else {
        return (keep, None);
    };
    if let Some(why) = canary_hold(u, all) {
        return (keep, Some(why));
    }
    (
        Target::Sha {
            sha: u.to_sha.clone(),
            ref_name: u.ref_name.clone(),
            update: Some(u.name.clone()),
        },
        None,
    )
}

/// The phase (and message) a queued update shows, given what is installed.
pub fn update_phase(u: &UpdateView, installed: Option<&str>) -> (&'static str, Option<String>) {
    match (u.decision, installed) {
        (PluginDecision::Dismissed, _) => ("Dismissed", None),
        (_, Some(i)) if i == u.to_sha => ("Applied", None),
        (PluginDecision::Approved, Some(i)) if i != u.from_sha => (
            "Superseded",
            Some("the installed revision moved on; this update no longer applies".into()),
        ),
        (PluginDecision::Approved, _) => ("Applying", None),
        (PluginDecision::Pending, _) => ("Pending", None),
    }
}

/// Whether an install ends with a workspace restart. An unchanged tree restarts only when an
/// earlier attempt was interrupted after its swap (its class is unknown: conservative cold) and
/// no restart has covered it since.
pub fn restart_needed(change: Change, interrupted_uncovered: bool) -> bool {
    match change {
        Change::Cold => true,
        Change::Hot => false,
        Change::Unchanged => interrupted_uncovered,
    }
}

/// Whether a restart requested at `restarted_at` (the workspace's restart annotation) happened
/// at or after `started_at` (both RFC 3339).
pub fn restart_covers(restarted_at: Option<&str>, started_at: &str) -> bool {
    let parse = |s: &str| s.parse::<jiff::Timestamp>().ok();
    match (restarted_at.and_then(parse), parse(started_at)) {
        (Some(r), Some(s)) => r >= s,
        _ => false,
    }
}

/// The PluginUpdate name for an install and a target sha: `<install>-<sha12>` (≤ 253 chars).
pub fn update_name(install: &str, to_sha: &str) -> String {
    let short: String = to_sha.chars().take(12).collect();
    let base: String = install.chars().take(253 - 13).collect();
    format!("{}-{short}", base.trim_end_matches(['-', '.']))
}

/// Exponential backoff for failed installs: 2 s, 4 s, 8 s … capped at 5 min.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.clamp(1, 9)).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(name: &str, decision: PluginDecision, from: &str, to: &str, created: &str) -> UpdateView {
        UpdateView {
            name: name.into(),
            install: "i".into(),
            decision,
            from_sha: from.into(),
            to_sha: to.into(),
            ref_name: None,
            source: Some("file:///r".into()),
            tier: PRODUCTION.into(),
            phase: None,
            created: created.into(),
        }
    }

    fn installed(sha: &str) -> PluginInstallStatus {
        PluginInstallStatus {
            installed_sha: Some(sha.into()),
            installed_from: Some("k".into()),
            ..Default::default()
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(check_interval(None).unwrap(), DEFAULT_CHECK_INTERVAL);
        assert_eq!(
            check_interval(Some("30s")).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            check_interval(Some("1h 30m")).unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            check_interval(Some("PT2M")).unwrap(),
            Duration::from_secs(120)
        );
        for bad in ["0s", "-5m", "soon", "500ms"] {
            assert_eq!(
                check_interval(Some(bad)).unwrap_err().reason,
                "InvalidCheckInterval",
                "{bad}"
            );
        }
    }

    #[test]
    fn targets() {
        use PluginDecision::*;
        // Never installed, or installed from another spec: resolve.
        let none = PluginInstallStatus::default();
        assert_eq!(target(&none, "k", &[], &[]).0, Target::Resolve);
        assert_eq!(
            target(&installed("a"), "other", &[], &[]).0,
            Target::Resolve
        );
        // Nothing approved: keep.
        let pending = vec![u("p", Pending, "a", "b", "1")];
        assert_eq!(
            target(&installed("a"), "k", &pending, &pending).0,
            Target::Sha {
                sha: "a".into(),
                ref_name: None,
                update: None
            }
        );
        // Two approved in one batch: the newest detection wins, the other is superseded later.
        let batch = vec![
            u("b", Approved, "a", "b", "1"),
            u("c", Approved, "a", "c", "2"),
        ];
        let (t, hold) = target(&installed("a"), "k", &batch, &batch);
        assert_eq!(hold, None);
        assert!(
            matches!(t, Target::Sha { ref sha, update: Some(ref n), .. } if sha == "c" && n == "c")
        );
        // Already at the target: idempotent.
        let done = vec![u("b", Approved, "a", "b", "1")];
        assert!(
            matches!(target(&installed("b"), "k", &done, &done).0, Target::Sha { ref sha, update: None, .. } if sha == "b")
        );
        // Dismissed never applies.
        let dismissed = vec![u("b", Dismissed, "a", "b", "1")];
        assert!(
            matches!(target(&installed("a"), "k", &dismissed, &dismissed).0, Target::Sha { ref sha, update: None, .. } if sha == "a")
        );
    }

    #[test]
    fn canaries_go_first() {
        use PluginDecision::*;
        let mine = u("prod", Approved, "a", "b", "1");
        let mut canary = u("can", Approved, "a", "b", "1");
        canary.install = "other".into();
        canary.tier = CANARY.into();
        let all = vec![mine.clone(), canary.clone()];
        let (t, hold) = target(&installed("a"), "k", std::slice::from_ref(&mine), &all);
        assert!(hold.unwrap().contains("can"));
        assert!(matches!(t, Target::Sha { ref sha, update: None, .. } if sha == "a"));
        // A failed canary keeps holding, and says so.
        let mut failed = canary.clone();
        failed.phase = Some("Failed".into());
        assert!(canary_hold(&mine, &[failed]).unwrap().contains("failed"));
        // Applied canary releases production.
        let mut applied = canary.clone();
        applied.phase = Some("Applied".into());
        assert_eq!(canary_hold(&mine, &[mine.clone(), applied]), None);
        // A pending canary holds production too (a batch approved in any order); a dismissed
        // one does not.
        let mut pending = canary.clone();
        pending.decision = Pending;
        assert!(canary_hold(&mine, &[pending]).unwrap().contains("approved"));
        let mut dismissed = canary.clone();
        dismissed.decision = Dismissed;
        assert_eq!(canary_hold(&mine, &[dismissed]), None);
        // Another source or sha does not hold it either.
        let mut other = canary.clone();
        other.source = Some("file:///other".into());
        assert_eq!(canary_hold(&mine, &[other]), None);
        // Canaries never wait.
        assert_eq!(canary_hold(&canary, &all), None);
    }

    #[test]
    fn phases() {
        use PluginDecision::*;
        let p = u("x", Pending, "a", "b", "1");
        assert_eq!(update_phase(&p, Some("a")).0, "Pending");
        let a = u("x", Approved, "a", "b", "1");
        assert_eq!(update_phase(&a, Some("a")).0, "Applying");
        assert_eq!(update_phase(&a, Some("b")).0, "Applied");
        assert_eq!(update_phase(&a, Some("c")).0, "Superseded");
        let d = u("x", Dismissed, "a", "b", "1");
        assert_eq!(update_phase(&d, Some("b")).0, "Dismissed");
    }

    #[test]
    fn restarts() {
        assert!(restart_needed(Change::Cold, false));
        assert!(!restart_needed(Change::Hot, true));
        assert!(!restart_needed(Change::Unchanged, false));
        assert!(restart_needed(Change::Unchanged, true));
        assert!(restart_covers(
            Some("2025-01-01T00:00:10Z"),
            "2025-01-01T00:00:10Z"
        ));
        assert!(!restart_covers(
            Some("2025-01-01T00:00:09Z"),
            "2025-01-01T00:00:10Z"
        ));
        assert!(!restart_covers(None, "2025-01-01T00:00:10Z"));
        assert!(!restart_covers(Some("junk"), "2025-01-01T00:00:10Z"));
    }

    #[test]
    fn names_and_backoff() {
        assert_eq!(update_name("hello", &"ab".repeat(20)), "hello-abababababab");
        let long = "x".repeat(300);
        assert!(update_name(&long, &"a".repeat(40)).len() <= 253);
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
