//! Logging set-up (text or JSON lines, ADR 0043) and a small Prometheus text-format metrics registry (counters and summaries).
//!
//! The registry is bounded (ADR 0041): each metric name holds at most [`MAX_SERIES`] label
//! sets; later ones are counted into one `{overflow="true"}` series, so label values a client
//! chooses (a method, a User-Agent) cannot grow memory or `/metrics` without limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Most label sets one metric name keeps (ADR 0041); the rest share the overflow series.
pub const MAX_SERIES: usize = 1000;

/// An HTTP method as a metrics label: one of a fixed set, `OTHER` for anything else, so a
/// client cannot mint label values (ADR 0041).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Label set rendered as `{k="v",…}`.
type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Series {
    counters: BTreeMap<(String, Labels), f64>,
    gauges: BTreeMap<(String, Labels), f64>,
    summaries: BTreeMap<(String, Labels), (u64, f64)>,
    /// Label sets held per metric name (all three maps together).
    per_name: HashMap<String, usize>,
}

impl Series {
    /// The key a new observation goes to: its own series while the name has room, else the
    /// name's overflow series.
    fn key(
        &mut self,
        name: &str,
        l: &[(&str, &str)],
        exists: impl Fn(&Self, &(String, Labels)) -> bool,
    ) -> (String, Labels) {
        let key = (name.to_string(), labels(l));
        if exists(self, &key) {
            return key;
        }
        let held = self.per_name.entry(name.to_string()).or_default();
        if *held < MAX_SERIES {
            *held += 1;
            return key;
        }
        (
            name.to_string(),
            vec![("overflow".to_string(), "true".to_string())],
        )
    }
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
        let mut s = self.lock();
        let key = s.key(name, l, |s, k| s.counters.contains_key(k));
        *s.counters.entry(key).or_default() += 1.0;
    }
    /// Sets a gauge (an overflowing gauge keeps the last value set).
    pub fn set(&self, name: &str, l: &[(&str, &str)], v: f64) {
        let mut s = self.lock();
        let key = s.key(name, l, |s, k| s.gauges.contains_key(k));
        s.gauges.insert(key, v);
    }
    /// Records one observation (count and sum) of a summary.
    pub fn observe(&self, name: &str, l: &[(&str, &str)], v: f64) {
        let mut s = self.lock();
        let key = s.key(name, l, |s, k| s.summaries.contains_key(k));
        let e = s.summaries.entry(key).or_default();
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

/// How log lines are written (`--log-format`, ADR 0043).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, `fields`, `spans`.
    Json,
}

/// The default filter when neither `--log-filter` nor `RUST_LOG` is given.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,kube=warn,tower=warn,hyper=warn";

/// Installs the tracing subscriber writing to stderr. `filter` is an `EnvFilter` directive
/// (`--log-filter` / `MOLECULE_LOG`, else `RUST_LOG`); unset or invalid: [`DEFAULT_FILTER`].
pub fn init_logging(format: LogFormat, filter: Option<&str>) {
    let filter = filter
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
}

/// The JSON line format (ADR 0043): one object per event with a fixed set of keys, so log
/// pipelines can rely on `message` and `level` at the top level.
struct JsonLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let spans: Vec<serde_json::Value> = ctx
            .event_scope()
            .map(|scope| {
                scope
                    .from_root()
                    .map(|s| serde_json::Value::String(s.name().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let line = serde_json::json!({
            "timestamp": jiff::Timestamp::now().to_string(),
            "level": meta.level().as_str(),
            "target": meta.target(),
            "message": fields.message.unwrap_or_default(),
            "fields": serde_json::Value::Object(fields.fields),
            "spans": spans,
        });
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields; `message` is kept apart.
#[derive(Default)]
struct JsonFields {
    message: Option<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl JsonFields {
    fn put(&mut self, field: &tracing::field::Field, v: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), v);
        }
    }
}

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, serde_json::Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, serde_json::Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.put(field, serde_json::Value::String(value.to_string()));
    }
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

    #[test]
    fn caps_label_sets_per_name() {
        let m = Metrics::default();
        for i in 0..(MAX_SERIES + 50) {
            m.inc("hits_total", &[("client", &format!("c{i}"))]);
        }
        m.inc("hits_total", &[("client", "c0")]);
        m.inc("other_total", &[("client", "x")]);
        let t = m.render();
        let series = t.lines().filter(|l| l.starts_with("hits_total{")).count();
        assert_eq!(series, MAX_SERIES + 1, "{series}");
        assert!(t.contains("hits_total{overflow=\"true\"} 50\n"));
        assert!(t.contains("hits_total{client=\"c0\"} 2\n"));
        assert!(t.contains("other_total{client=\"x\"} 1\n"));
    }

    #[test]
    fn json_lines_carry_the_fixed_keys() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("reconcile");
            let _g = span.enter();
            tracing::warn!(runtime = "echo", layers = 3u64, ok = true, "pulling \"x\"");
        });
        let out = String::from_utf8(buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .expect("utf-8");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
        assert_eq!(v["level"], "WARN", "{v}");
        assert_eq!(v["message"], "pulling \"x\"", "{v}");
        assert_eq!(v["fields"]["runtime"], "echo", "{v}");
        assert_eq!(v["fields"]["layers"], 3, "{v}");
        assert_eq!(v["fields"]["ok"], true, "{v}");
        assert_eq!(v["spans"][0], "reconcile", "{v}");
        assert!(
            v["target"]
                .as_str()
                .is_some_and(|t| t.contains("telemetry")),
            "{v}"
        );
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
    }

    #[test]
    fn unknown_methods_are_other() {
        let m = axum::http::Method::from_bytes(b"AAAAAAAAAAAAAAAAAAAA").expect("a method");
        assert_eq!(method_label(&m), "OTHER");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
    }
}
