//! The pure step of the schedule controller (ADR 0053): from a Workspace's spec, its
//! `status.schedules` and the run-now requests, the next `status.schedules`, the fires to
//! start now and when to look again.
//!
//! Level-triggered: the next fire is kept in `status.nextRunAt`. A stored `nextRunAt` that the
//! expression still produces is kept (so a restart neither loses nor repeats a fire); one
//! the expression does not produce (a new or edited schedule) is recomputed from now. A due
//! fire sets `lastRunAt` to now and `nextRunAt` to the first fire after now, so fires missed
//! while the process was down collapse into one.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::cron::{Cron, zone};
use crate::resources::{ScheduleSpec, ScheduleStatus};

/// A run-now request older than this is ignored (e.g. one made just before a pause).
pub const RUN_REQUEST_TTL: Duration = Duration::from_secs(600);

/// What the plan looks at.
pub struct Input<'a> {
    pub specs: &'a [ScheduleSpec],
    pub statuses: &'a [ScheduleStatus],
    /// Schedule name → RFC 3339 time of a run-now request.
    pub run_requests: &'a BTreeMap<String, String>,
    /// The workspace is paused, failed or being deleted: nothing fires, nothing is next.
    pub stopped: bool,
    pub now: Timestamp,
}

/// One fire to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fire {
    pub name: String,
    pub prompt: String,
    /// Asked for through run-now rather than due.
    pub manual: bool,
}

/// The outcome of [`plan`].
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The next `status.schedules`, in the order of `spec.schedules`.
    pub statuses: Vec<ScheduleStatus>,
    pub fires: Vec<Fire>,
    /// The earliest `nextRunAt`.
    pub wake: Option<Timestamp>,
}

fn parse(ts: Option<&str>) -> Option<Timestamp> {
    ts.and_then(|t| t.parse().ok())
}

/// Whether `at` is a fire time of `cron` in `tz`.
fn is_fire_time(cron: &Cron, tz: &jiff::tz::TimeZone, at: Timestamp) -> bool {
    at.checked_sub(jiff::SignedDuration::from_nanos(1))
        .ok()
        .and_then(|before| cron.next_after(before, tz))
        == Some(at)
}

/// A pending run-now request of `name`: newer than its last run and not stale.
fn run_requested(input: &Input<'_>, name: &str, last_run: Option<Timestamp>) -> bool {
    let Some(at) = parse(input.run_requests.get(name).map(String::as_str)) else {
        return false;
    };
    let fresh = input
        .now
        .duration_since(at)
        .as_secs()
        .unsigned_abs()
        .min(i64::MAX as u64)
        < RUN_REQUEST_TTL.as_secs();
    fresh && last_run.is_none_or(|l| at > l)
}

/// The next status of every schedule, the fires to start and the next wake-up.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut out = Plan {
        statuses: vec![],
        fires: vec![],
        wake: None,
    };
    for spec in input.specs {
        let mut st = input
            .statuses
            .iter()
            .find(|s| s.name == spec.name)
            .cloned()
            .unwrap_or_else(|| ScheduleStatus {
                name: spec.name.clone(),
                ..Default::default()
            });
        let (next, fire) = step(input, spec, &mut st);
        if let Some(n) = next {
            out.wake = Some(out.wake.map_or(n, |w| w.min(n)));
        }
        if let Some(manual) = fire {
            out.fires.push(Fire {
                name: spec.name.clone(),
                prompt: spec.prompt.clone(),
                manual,
            });
        }
        out.statuses.push(st);
    }
    out
}

/// Updates one schedule's status; answers its next fire and whether it fires now (`Some(true)`
/// for a run-now request).
fn step(
    input: &Input<'_>,
    spec: &ScheduleSpec,
    st: &mut ScheduleStatus,
) -> (Option<Timestamp>, Option<bool>) {
    if input.stopped {
        st.next_run_at = None;
        return (None, None);
    }
    let (cron, tz) = match (Cron::parse(&spec.cron_expr), zone(spec.timezone.as_deref())) {
        (Ok(c), Ok(z)) => (c, z),
        (Err(e), _) | (_, Err(e)) => {
            st.next_run_at = None;
            st.last_status = Some("error".into());
            st.last_error = Some(e);
            return (None, None);
        }
    };
    let last_run = parse(st.last_run_at.as_deref());
    let manual = run_requested(input, &spec.name, last_run);
    let stored = parse(st.next_run_at.as_deref()).filter(|n| is_fire_time(&cron, &tz, *n));
    let due = spec.enabled && stored.is_some_and(|n| n <= input.now);
    if due || manual {
        st.last_run_at = Some(input.now.to_string());
        st.run_count += 1;
    }
    let next = if !spec.enabled {
        None
    } else if due || stored.is_none() {
        cron.next_after(input.now, &tz)
    } else {
        stored
    };
    st.next_run_at = next.map(|n| n.to_string());
    (next, (due || manual).then_some(manual && !due))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(name: &str, expr: &str) -> ScheduleSpec {
        ScheduleSpec {
            name: name.into(),
            cron_expr: expr.into(),
            timezone: None,
            prompt: format!("prompt of {name}"),
            enabled: true,
        }
    }

    fn run(specs: &[ScheduleSpec], statuses: &[ScheduleStatus], now: &str) -> Plan {
        plan(&Input {
            specs,
            statuses,
            run_requests: &BTreeMap::new(),
            stopped: false,
            now: ts(now),
        })
    }

    #[test]
    fn a_new_schedule_gets_its_next_fire_and_does_not_fire() {
        let p = run(&[spec("a", "*/5 * * * *")], &[], "2026-01-01T10:01:30Z");
        assert!(p.fires.is_empty());
        assert_eq!(
            p.statuses[0].next_run_at.as_deref(),
            Some("2026-01-01T10:05:00Z")
        );
        assert_eq!(p.wake, Some(ts("2026-01-01T10:05:00Z")));
    }

    #[test]
    fn a_due_fire_is_claimed_once_and_missed_ones_collapse() {
        let specs = [spec("a", "* * * * *")];
        let before = [ScheduleStatus {
            name: "a".into(),
            next_run_at: Some("2026-01-01T10:00:00Z".into()),
            run_count: 3,
            ..Default::default()
        }];
        // Down for an hour: one fire, the next is the next minute after now.
        let p = run(&specs, &before, "2026-01-01T11:00:10Z");
        assert_eq!(p.fires.len(), 1);
        assert_eq!(p.fires[0].prompt, "prompt of a");
        let st = &p.statuses[0];
        assert_eq!(st.run_count, 4);
        assert_eq!(st.last_run_at.as_deref(), Some("2026-01-01T11:00:10Z"));
        assert_eq!(st.next_run_at.as_deref(), Some("2026-01-01T11:01:00Z"));
        // The claimed status planned again at the same instant fires nothing.
        let again = run(&specs, &p.statuses, "2026-01-01T11:00:10Z");
        assert!(again.fires.is_empty());
        assert_eq!(again.statuses, p.statuses);
    }

    #[test]
    fn an_edited_expression_recomputes_the_next_fire_without_firing() {
        let before = [ScheduleStatus {
            name: "a".into(),
            next_run_at: Some("2026-01-01T10:05:00Z".into()),
            ..Default::default()
        }];
        let p = run(&[spec("a", "0 9 * * *")], &before, "2026-01-01T10:06:00Z");
        assert!(
            p.fires.is_empty(),
            "10:05 is no fire time of the new expression"
        );
        assert_eq!(
            p.statuses[0].next_run_at.as_deref(),
            Some("2026-01-02T09:00:00Z")
        );
    }

    #[test]
    fn disabled_and_stopped_schedules_have_no_next_fire() {
        let mut s = spec("a", "* * * * *");
        s.enabled = false;
        let before = [ScheduleStatus {
            name: "a".into(),
            next_run_at: Some("2026-01-01T10:00:00Z".into()),
            ..Default::default()
        }];
        let p = run(&[s], &before, "2026-01-01T10:00:30Z");
        assert!(p.fires.is_empty());
        assert_eq!(p.statuses[0].next_run_at, None);
        let stopped = plan(&Input {
            specs: &[spec("a", "* * * * *")],
            statuses: &before,
            run_requests: &BTreeMap::new(),
            stopped: true,
            now: ts("2026-01-01T10:00:30Z"),
        });
        assert!(stopped.fires.is_empty());
        assert_eq!(stopped.statuses[0].next_run_at, None);
        assert_eq!(stopped.wake, None);
    }

    #[test]
    fn run_now_fires_once_even_when_disabled_and_stale_requests_are_ignored() {
        let mut s = spec("a", "0 9 * * *");
        s.enabled = false;
        let requests: BTreeMap<String, String> =
            [("a".to_string(), "2026-01-01T10:00:00Z".to_string())].into();
        let input = |statuses, now| {
            plan(&Input {
                specs: std::slice::from_ref(&s),
                statuses,
                run_requests: &requests,
                stopped: false,
                now: ts(now),
            })
        };
        let p = input(&[], "2026-01-01T10:00:01Z");
        assert_eq!(p.fires.len(), 1);
        assert!(input(&p.statuses, "2026-01-01T10:00:02Z").fires.is_empty());
        assert!(input(&[], "2026-01-01T10:30:00Z").fires.is_empty(), "stale");
    }

    #[test]
    fn a_bad_expression_is_an_error_in_status_and_removed_schedules_go() {
        let before = [ScheduleStatus {
            name: "gone".into(),
            ..Default::default()
        }];
        let p = run(&[spec("a", "61 * * * *")], &before, "2026-01-01T10:00:00Z");
        assert_eq!(p.statuses.len(), 1);
        assert_eq!(p.statuses[0].last_status.as_deref(), Some("error"));
        assert!(
            p.statuses[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("minute")
        );
    }

    #[test]
    fn zones_shift_the_next_fire() {
        let mut s = spec("a", "0 9 * * *");
        s.timezone = Some("Asia/Tokyo".into());
        let p = run(&[s], &[], "2026-01-10T12:00:00Z");
        assert_eq!(
            p.statuses[0].next_run_at.as_deref(),
            Some("2026-01-11T00:00:00Z")
        );
    }
}
