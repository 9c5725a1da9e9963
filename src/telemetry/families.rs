//! Every metric family the binary exports: its kind, HELP text and histogram buckets, and the
//! controller-runtime names some of them are mirrored to (ADR 0046).
//!
//! A name that is not listed still works: its kind follows the first call (`inc` a counter,
//! `set` a float gauge, `observe` a histogram with [`LATENCY`] buckets) and its HELP says it is
//! undocumented. List it here instead.

/// Request-sized durations (the Prometheus client defaults), in seconds.
pub const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One reconcile: usually milliseconds, up to a minute when it starts containers.
pub const RECONCILE: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Image builds, pulls, plugin installs and drift passes: seconds to minutes.
pub const SLOW: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// What a family holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Only goes up ([`super::Metrics::inc`]); the name ends in `_total`.
    Counter,
    /// A whole number that is set ([`super::Metrics::set`]; the value is rounded).
    Gauge,
    /// A number that is set, fractions kept.
    FloatGauge,
    /// Observations counted into these bucket bounds ([`super::Metrics::observe`]).
    Histogram(&'static [f64]),
}

/// One metric family.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

use Kind::{Counter, Gauge, Histogram};

/// The families, by area.
pub const FAMILIES: &[Family] = &[
    // Controllers.
    family(
        "molecule_reconcile_total",
        Counter,
        "Reconciles by controller and result (ok or error)",
    ),
    family(
        "molecule_reconcile_errors_total",
        Counter,
        "Failed reconciles by controller and error category",
    ),
    family(
        "molecule_reconcile_seconds",
        Histogram(RECONCILE),
        "Time one reconcile took, by controller",
    ),
    family(
        "molecule_reconcile_in_flight",
        Gauge,
        "Reconciles running now, by controller",
    ),
    family(
        "molecule_workqueue_depth",
        Gauge,
        "Objects waiting for a reconcile, by controller",
    ),
    family(
        "molecule_controllers_running",
        Gauge,
        "Controllers running in this process",
    ),
    family(
        "molecule_controllers_active",
        Gauge,
        "1 while this process runs the controllers (it holds the lease or needs none), else 0",
    ),
    family(
        "molecule_leader",
        Gauge,
        "1 while this process holds the leader lease, else 0",
    ),
    family(
        "molecule_leader_transitions_total",
        Counter,
        "Times this process became the leader",
    ),
    family(
        "molecule_leader_errors_total",
        Counter,
        "Leader election rounds that failed",
    ),
    family(
        "molecule_reaper_removed_total",
        Counter,
        "Orphaned containers and volumes the reaper removed, by kind",
    ),
    family(
        "molecule_plugin_install_seconds",
        Histogram(SLOW),
        "Time one plugin install step took, by step and kind of change",
    ),
    family(
        "molecule_plugin_install_failures_total",
        Counter,
        "Failed plugin installs, by reason",
    ),
    family(
        "molecule_plugin_drift_pass_seconds",
        Histogram(SLOW),
        "Time one pass of the plugin drift check took",
    ),
    // Workspace backends.
    family(
        "molecule_backend_call_seconds",
        Histogram(LATENCY),
        "Time one workspace backend call took, by backend and call",
    ),
    family(
        "molecule_backend_call_errors_total",
        Counter,
        "Failed workspace backend calls, by backend, call and error category",
    ),
    // Images.
    family(
        "molecule_image_lookups_total",
        Counter,
        "Runtime image lookups, by runtime and result",
    ),
    family(
        "molecule_image_pulls_total",
        Counter,
        "Image pulls, by runtime and result",
    ),
    family(
        "molecule_image_builds_total",
        Counter,
        "Image builds, by runtime and result",
    ),
    family(
        "molecule_image_build_seconds",
        Histogram(SLOW),
        "Time one image build took, by runtime",
    ),
    family(
        "molecule_image_cache_hits_total",
        Counter,
        "Image builds skipped because the image was already built, by runtime",
    ),
    family(
        "molecule_image_clones_total",
        Counter,
        "Git clones of runtime image sources, by runtime",
    ),
    family(
        "molecule_image_probe_seconds",
        Histogram(SLOW),
        "Time one registry probe for an image took, by source",
    ),
    family(
        "molecule_image_resolve_seconds",
        Histogram(SLOW),
        "Time resolving a runtime's image took, by source and result",
    ),
    family(
        "molecule_image_refresh_total",
        Counter,
        "Scheduled image refreshes, by runtime and result",
    ),
    family(
        "molecule_image_rolled_workspaces_total",
        Counter,
        "Workspaces recreated onto a refreshed image, by runtime",
    ),
    // The embedded API server and its store.
    family(
        "molecule_apiserver_requests_total",
        Counter,
        "API server requests, by method and status code",
    ),
    family(
        "molecule_apiserver_request_seconds",
        Histogram(LATENCY),
        "Time one API server request took, by method",
    ),
    family(
        "molecule_apiserver_resource_requests_total",
        Counter,
        "Authenticated resource requests, by client, verb, group, resource, subresource and code",
    ),
    family(
        "molecule_apiserver_objects",
        Gauge,
        "Objects the API server holds",
    ),
    family(
        "molecule_apiserver_resource_version",
        Gauge,
        "The API server's current resourceVersion",
    ),
    family(
        "molecule_store_batches",
        Gauge,
        "Write batches the store committed since the process started",
    ),
    family(
        "molecule_store_writes",
        Gauge,
        "Object writes the store committed since the process started",
    ),
    family(
        "molecule_store_failures",
        Gauge,
        "Store commits that failed or whose outcome is unknown, since the process started",
    ),
    // The platform shim.
    family(
        "molecule_shim_requests_total",
        Counter,
        "Platform shim requests, by method, route and status code",
    ),
    family(
        "molecule_shim_events_total",
        Counter,
        "Events the shim published to canvas clients, by event",
    ),
    family(
        "molecule_shim_publish_seconds",
        Histogram(LATENCY),
        "Time publishing one change to canvas clients took",
    ),
    family(
        "molecule_shim_stream_clients",
        Gauge,
        "Canvas clients connected to the event stream",
    ),
    family(
        "molecule_shim_stream_dropped_total",
        Counter,
        "Canvas stream clients dropped for falling behind, by reason",
    ),
    family(
        "molecule_registry_calls_total",
        Counter,
        "Agent registry calls, by call and result",
    ),
    // The names controller-runtime exports, mirrored from the molecule_ ones (see MIRRORS).
    family(
        "controller_runtime_reconcile_total",
        Counter,
        "Total number of reconciliations per controller",
    ),
    family(
        "controller_runtime_reconcile_errors_total",
        Counter,
        "Total number of reconciliation errors per controller",
    ),
    family(
        "controller_runtime_reconcile_time_seconds",
        Histogram(RECONCILE),
        "Length of time per reconciliation per controller",
    ),
    family(
        "controller_runtime_active_workers",
        Gauge,
        "Number of currently used workers per controller",
    ),
    family(
        "molecule_schedule_fires_total",
        Counter,
        "Schedule fires by outcome (ok, error or skipped; ADR 0053)",
    ),
];

/// A family recorded again under another name: the labels in `keep` are copied (the others
/// dropped), and label values are renamed through `values`.
#[derive(Debug)]
pub struct Mirror {
    pub from: &'static str,
    pub to: &'static str,
    pub keep: &'static [&'static str],
    pub values: &'static [(&'static str, &'static str)],
}

/// controller-runtime's names, so its users' dashboards and alerts work unchanged.
pub const MIRRORS: &[Mirror] = &[
    Mirror {
        from: "molecule_reconcile_total",
        to: "controller_runtime_reconcile_total",
        keep: &["controller", "result"],
        values: &[("ok", "success")],
    },
    Mirror {
        from: "molecule_reconcile_errors_total",
        to: "controller_runtime_reconcile_errors_total",
        keep: &["controller"],
        values: &[],
    },
    Mirror {
        from: "molecule_reconcile_seconds",
        to: "controller_runtime_reconcile_time_seconds",
        keep: &["controller"],
        values: &[],
    },
    Mirror {
        from: "molecule_reconcile_in_flight",
        to: "controller_runtime_active_workers",
        keep: &["controller"],
        values: &[],
    },
];

/// The listed family called `name`.
pub fn find(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// The mirror of `name`, if it has one.
pub fn mirror_of(name: &str) -> Option<&'static Mirror> {
    MIRRORS.iter().find(|m| m.from == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family is listed twice");
        for f in FAMILIES {
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                f.name
            );
            assert!(!f.help.is_empty() && !f.help.ends_with('.'), "{}", f.name);
            if let Kind::Histogram(b) = f.kind {
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{}", f.name);
            }
        }
        for m in MIRRORS {
            let (from, to) = (find(m.from).expect("from"), find(m.to).expect("to"));
            assert_eq!(
                std::mem::discriminant(&from.kind),
                std::mem::discriminant(&to.kind),
                "{}",
                m.to
            );
        }
    }
}
