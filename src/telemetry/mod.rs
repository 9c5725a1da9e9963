//! Logging set-up (text or JSON lines, ADR 0043) and the Prometheus metrics: a registry on
//! `prometheus-client` with HELP lines, histograms, process metrics and controller-runtime's
//! names (ADR 0046), bounded per family (ADR 0041).

mod families;
mod metrics;
mod process;

pub use metrics::{CONTENT_TYPE, MAX_SERIES, Metrics};

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
    fn json_lines_carry_the_fixed_keys() {
        let buf = crate::testing::logs::LogBuffer::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.make_writer())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("reconcile");
            let _g = span.enter();
            tracing::warn!(runtime = "echo", layers = 3u64, ok = true, "pulling \"x\"");
        });
        let out = buf.text();
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
