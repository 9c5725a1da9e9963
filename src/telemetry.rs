//! Logging set-up and a small Prometheus text-format metrics registry (counters and summaries).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Label set rendered as `{k="v",…}`.
type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Series {
    counters: BTreeMap<(String, Labels), f64>,
    gauges: BTreeMap<(String, Labels), f64>,
    summaries: BTreeMap<(String, Labels), (u64, f64)>,
}

/// Process-wide metrics, rendered on `/metrics`.
#[derive(Default)]
pub struct Metrics(Mutex<Series>);

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn render_labels(l: &Labels) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Adds one to a counter.
    pub fn inc(&self, name: &str, l: &[(&str, &str)]) {
        *self
            .lock()
            .counters
            .entry((name.to_string(), labels(l)))
            .or_default() += 1.0;
    }
    /// Sets a gauge.
    pub fn set(&self, name: &str, l: &[(&str, &str)], v: f64) {
        self.lock().gauges.insert((name.to_string(), labels(l)), v);
    }
    /// Records one observation (count and sum) of a summary.
    pub fn observe(&self, name: &str, l: &[(&str, &str)], v: f64) {
        let mut s = self.lock();
        let e = s
            .summaries
            .entry((name.to_string(), labels(l)))
            .or_default();
        e.0 += 1;
        e.1 += v;
    }
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        let mut last = String::new();
        for ((n, l), v) in &s.counters {
            if *n != last {
                out.push_str(&format!("# TYPE {n} counter\n"));
                last = n.clone();
            }
            out.push_str(&format!("{n}{} {v}\n", render_labels(l)));
        }
        for ((n, l), v) in &s.gauges {
            if *n != last {
                out.push_str(&format!("# TYPE {n} gauge\n"));
                last = n.clone();
            }
            out.push_str(&format!("{n}{} {v}\n", render_labels(l)));
        }
        for ((n, l), (c, sum)) in &s.summaries {
            if *n != last {
                out.push_str(&format!("# TYPE {n} summary\n"));
                last = n.clone();
            }
            out.push_str(&format!(
                "{n}_count{} {c}\n{n}_sum{} {sum}\n",
                render_labels(l),
                render_labels(l)
            ));
        }
        out
    }
}

/// Installs the tracing subscriber (`RUST_LOG`, default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,kube=warn,tower=warn,hyper=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc("requests_total", &[("verb", "GET"), ("code", "200")]);
        m.inc("requests_total", &[("verb", "GET"), ("code", "200")]);
        m.observe("latency_seconds", &[], 0.5);
        m.set("objects", &[], 3.0);
        let t = m.render();
        assert!(
            t.contains(
                "# TYPE requests_total counter\nrequests_total{verb=\"GET\",code=\"200\"} 2\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("latency_seconds_count 1\nlatency_seconds_sum 0.5\n"),
            "{t}"
        );
        assert!(t.contains("objects 3\n"), "{t}");
    }
}
