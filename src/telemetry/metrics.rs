//! The metrics registry on `prometheus-client` (ADR 0046) behind the call-site API the code
//! uses everywhere: [`Metrics::inc`], [`Metrics::set`] and [`Metrics::observe`] by family name
//! and label pairs, [`Metrics::render`] for `/metrics` in the Prometheus text format.
//!
//! A family is registered on its first use, with the kind, HELP text and buckets of
//! [`super::families`]. Families that controller-runtime users know are recorded a second time
//! under controller-runtime's names ([`super::families::MIRRORS`]).
//!
//! The registry is bounded (ADR 0041): each family holds at most [`MAX_SERIES`] label sets;
//! later ones are counted into one `{overflow="true"}` series, so label values a client
//! chooses (a method, a User-Agent) cannot grow memory or `/metrics` without limit.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::families::{self, Kind, LATENCY, Mirror};
use super::process::ProcessCollector;

/// Most label sets one family keeps (ADR 0041); the rest share the overflow series.
pub const MAX_SERIES: usize = 1000;

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// HELP of a family that [`super::families::FAMILIES`] does not list.
const UNDOCUMENTED: &str = "Undocumented: this family is missing from telemetry::families";

/// A label set in the caller's order.
type Labels = Vec<(String, String)>;

/// Makes the histograms of one family, all with its buckets.
#[derive(Clone, Debug)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The label sets of one family.
enum Series {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
    FloatGauge(Family<Labels, Gauge<f64, AtomicU64>>),
    Histogram(Family<Labels, Histogram, Buckets>),
}

/// One registered family and how many label sets it holds (besides the overflow series),
/// counted under a lock that admits new label sets one at a time, so the bound holds exactly.
struct Registered {
    series: Series,
    held: Mutex<usize>,
}

/// What a call does to its series.
#[derive(Clone, Copy, Debug)]
enum Op {
    Inc,
    Set(f64),
    Observe(f64),
}

impl Op {
    /// The kind of family an unlisted name gets from its first call.
    fn default_kind(self) -> Kind {
        match self {
            Op::Inc => Kind::Counter,
            Op::Set(_) => Kind::FloatGauge,
            Op::Observe(_) => Kind::Histogram(LATENCY),
        }
    }
}

/// Process-wide metrics, rendered on `/metrics`.
pub struct Metrics {
    registry: Mutex<Registry>,
    families: RwLock<HashMap<String, Arc<Registered>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry: Mutex::new(registry),
            families: RwLock::default(),
        }
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(&self, name: &str, l: &[(&str, &str)]) {
        self.record(name, l, Op::Inc);
    }

    /// Sets a gauge (an overflowing gauge keeps the last value set).
    pub fn set(&self, name: &str, l: &[(&str, &str)], v: f64) {
        self.record(name, l, Op::Set(v));
    }

    /// Records one observation of a histogram.
    pub fn observe(&self, name: &str, l: &[(&str, &str)], v: f64) {
        self.record(name, l, Op::Observe(v));
    }

    /// The Prometheus text exposition format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        out
    }

    fn record(&self, name: &str, l: &[(&str, &str)], op: Op) {
        self.apply(name, owned(l), op);
        if let Some(m) = families::mirror_of(name) {
            self.apply(m.to, mirrored(m, l), op);
        }
    }

    fn apply(&self, name: &str, labels: Labels, op: Op) {
        let family = self.family(name, op);
        let lock = &family.held;
        let applied = match (&family.series, op) {
            (Series::Counter(f), Op::Inc) => admit(f, lock, labels, |c| _ = c.inc()),
            // `as` saturates (and maps NaN to 0): a count far out of range stays in range.
            (Series::Gauge(f), Op::Set(v)) => {
                admit(f, lock, labels, |g| _ = g.set(v.round() as i64))
            }
            (Series::FloatGauge(f), Op::Set(v)) => admit(f, lock, labels, |g| _ = g.set(v)),
            (Series::Histogram(f), Op::Observe(v)) => admit(f, lock, labels, |h| h.observe(v)),
            _ => false,
        };
        if !applied {
            tracing::debug!(
                metric = name,
                ?op,
                "a call that does not fit the metric's kind is ignored"
            );
        }
    }

    /// The family called `name`, registered on first use.
    fn family(&self, name: &str, op: Op) -> Arc<Registered> {
        let read = self.families.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = read.get(name) {
            return f.clone();
        }
        drop(read);
        let mut write = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = write.get(name) {
            return f.clone();
        }
        let (kind, help) = match families::find(name) {
            Some(f) => (f.kind, f.help),
            None => (op.default_kind(), UNDOCUMENTED),
        };
        let registered = Arc::new(self.register(name, kind, help));
        write.insert(name.to_string(), registered.clone());
        registered
    }

    fn register(&self, name: &str, kind: Kind, help: &str) -> Registered {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let series = match kind {
            Kind::Counter => {
                let f = Family::default();
                // The encoder appends `_total` to a counter's name.
                let base = name.strip_suffix("_total").unwrap_or(name);
                registry.register(base, help, f.clone());
                Series::Counter(f)
            }
            Kind::Gauge => {
                let f = Family::default();
                registry.register(name, help, f.clone());
                Series::Gauge(f)
            }
            Kind::FloatGauge => {
                let f = Family::default();
                registry.register(name, help, f.clone());
                Series::FloatGauge(f)
            }
            Kind::Histogram(bounds) => {
                let f = Family::new_with_constructor(Buckets(bounds));
                registry.register(name, help, f.clone());
                Series::Histogram(f)
            }
        };
        Registered {
            series,
            held: Mutex::new(0),
        }
    }
}

/// Applies `update` to the series of `labels`, or to the overflow series once the family holds
/// [`MAX_SERIES`] label sets (`held` counts them). True: the call fit the family's kind.
fn admit<M, C: MetricConstructor<M>>(
    family: &Family<Labels, M, C>,
    held: &Mutex<usize>,
    labels: Labels,
    update: impl FnOnce(&M),
) -> bool {
    if let Some(m) = family.get(&labels) {
        update(&m);
        return true;
    }
    let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
    let exists = family.get(&labels).is_some();
    let key = if exists || *held < MAX_SERIES {
        *held += usize::from(!exists);
        labels
    } else {
        vec![("overflow".to_string(), "true".to_string())]
    };
    update(&family.get_or_create(&key));
    true
}

fn owned(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The labels of a mirrored series: only the kept keys, values renamed.
fn mirrored(m: &Mirror, l: &[(&str, &str)]) -> Labels {
    l.iter()
        .filter(|(k, _)| m.keep.contains(k))
        .map(|(k, v)| {
            let v = m
                .values
                .iter()
                .find(|(from, _)| from == v)
                .map_or(*v, |(_, to)| to);
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A checked exposition: sample line (name and labels) → value.
    type Samples = BTreeMap<String, f64>;

    /// Checks `text` against the Prometheus text format: every family has HELP then TYPE, every
    /// sample belongs to the family declared above it (histograms: `_bucket`, `_sum`, `_count`),
    /// labels are well formed, and every histogram's buckets rise to `+Inf` == `_count`.
    fn parse(text: &str) -> Samples {
        let mut samples = Samples::new();
        let mut declared: Vec<String> = vec![];
        let mut current: Option<(String, String)> = None;
        let mut pending_help: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                assert!(!declared.contains(&name.to_string()), "twice: {name}");
                pending_help = Some(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(
                    pending_help.take().as_deref(),
                    Some(name),
                    "HELP before {line}"
                );
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                declared.push(name.to_string());
                current = Some((name.to_string(), kind.to_string()));
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let (family, kind) = current.as_ref().expect("a sample before any TYPE");
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let name = series.split('{').next().unwrap_or(series);
            let allowed: Vec<String> = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{family}{s}"))
                    .collect(),
                _ => vec![family.clone()],
            };
            assert!(allowed.iter().any(|a| a == name), "{name} under {family}");
            if let Some(labels) = series.strip_prefix(name) {
                check_labels(labels);
            }
            let v = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().expect("a number"),
            };
            samples.insert(series.to_string(), v);
        }
        check_histograms(text, &samples);
        samples
    }

    fn check_labels(labels: &str) {
        if labels.is_empty() {
            return;
        }
        let inner = labels
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .expect("braces");
        let mut rest = inner;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("key=\"");
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{key}"
            );
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.expect("closing quote");
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
    }

    /// Buckets of each histogram series rise and end at `+Inf` with the series' count.
    fn check_histograms(text: &str, samples: &Samples) {
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for line in text.lines().filter(|l| l.contains("_bucket{")) {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let (head, le) = series.rsplit_once("le=\"").expect("le last");
            let le = match le.trim_end_matches("\"}") {
                "+Inf" => f64::INFINITY,
                le => le.parse().expect("le"),
            };
            let (name, labels) = head.split_once("_bucket{").expect("a bucket");
            let labels = labels.trim_end_matches(',');
            let count = if labels.is_empty() {
                format!("{name}_count")
            } else {
                format!("{name}_count{{{labels}}}")
            };
            let value: f64 = value.parse().expect("count");
            buckets.entry(count).or_default().push((le, value));
        }
        for (count, b) in buckets {
            let rising = b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            assert!(rising, "{count}: {b:?}");
            let last = b.last().expect("a bucket");
            assert_eq!(last.0, f64::INFINITY, "{count}");
            assert_eq!(Some(&last.1), samples.get(&count), "{count}");
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc("requests_total", &[("verb", "GET"), ("code", "200")]);
        m.inc("requests_total", &[("verb", "GET"), ("code", "200")]);
        m.observe("latency_seconds", &[], 0.5);
        m.set("objects", &[], 0.25);
        m.set("molecule_apiserver_objects", &[], 3.0);
        let t = m.render();
        let s = parse(&t);
        assert!(
            t.contains(
                "# TYPE requests_total counter\nrequests_total{verb=\"GET\",code=\"200\"} 2\n"
            ),
            "{t}"
        );
        assert!(t.contains("# HELP requests_total Undocumented"), "{t}");
        assert_eq!(s.get("latency_seconds_count"), Some(&1.0), "{t}");
        assert_eq!(s.get("latency_seconds_sum"), Some(&0.5), "{t}");
        assert_eq!(
            s.get("latency_seconds_bucket{le=\"0.5\"}"),
            Some(&1.0),
            "{t}"
        );
        assert_eq!(
            s.get("latency_seconds_bucket{le=\"0.25\"}"),
            Some(&0.0),
            "{t}"
        );
        assert!(t.contains("\nobjects 0.25\n"), "{t}");
        assert!(t.contains("\nmolecule_apiserver_objects 3\n"), "{t}");
    }

    #[test]
    fn every_listed_family_has_help_and_type() {
        let m = Metrics::default();
        for f in families::FAMILIES {
            let l = [("controller", "workspace")];
            match f.kind {
                Kind::Counter => m.inc(f.name, &l),
                Kind::Gauge | Kind::FloatGauge => m.set(f.name, &l, 1.0),
                Kind::Histogram(_) => m.observe(f.name, &l, 0.3),
            }
        }
        let t = m.render();
        let s = parse(&t);
        for f in families::FAMILIES {
            assert!(
                t.contains(&format!("# HELP {} {}.\n", f.name, f.help)),
                "{}",
                f.name
            );
            let series = match f.kind {
                Kind::Histogram(_) => format!("{}_count{{controller=\"workspace\"}}", f.name),
                _ => format!("{}{{controller=\"workspace\"}}", f.name),
            };
            assert!(s.contains_key(&series), "{series} in\n{t}");
        }
    }

    #[test]
    fn reconcile_metrics_also_carry_controller_runtime_names() {
        let m = Metrics::default();
        let w = ("controller", "workspace");
        m.inc("molecule_reconcile_total", &[w, ("result", "ok")]);
        m.inc("molecule_reconcile_total", &[w, ("result", "error")]);
        m.inc(
            "molecule_reconcile_errors_total",
            &[w, ("category", "Transient")],
        );
        m.observe("molecule_reconcile_seconds", &[w], 0.02);
        m.set("molecule_reconcile_in_flight", &[w], 2.0);
        let s = parse(&m.render());
        for (series, v) in [
            (
                "molecule_reconcile_total{controller=\"workspace\",result=\"ok\"}",
                1.0,
            ),
            (
                "controller_runtime_reconcile_total{controller=\"workspace\",result=\"success\"}",
                1.0,
            ),
            (
                "controller_runtime_reconcile_total{controller=\"workspace\",result=\"error\"}",
                1.0,
            ),
            (
                "molecule_reconcile_errors_total{controller=\"workspace\",category=\"Transient\"}",
                1.0,
            ),
            (
                "controller_runtime_reconcile_errors_total{controller=\"workspace\"}",
                1.0,
            ),
            (
                "molecule_reconcile_seconds_count{controller=\"workspace\"}",
                1.0,
            ),
            (
                "controller_runtime_reconcile_time_seconds_count{controller=\"workspace\"}",
                1.0,
            ),
            (
                "controller_runtime_reconcile_time_seconds_bucket{controller=\"workspace\",le=\"0.025\"}",
                1.0,
            ),
            (
                "controller_runtime_active_workers{controller=\"workspace\"}",
                2.0,
            ),
        ] {
            assert_eq!(s.get(series), Some(&v), "{series}: {s:?}");
        }
    }

    #[test]
    fn process_metrics_are_rendered() {
        let t = Metrics::default().render();
        let s = parse(&t);
        assert!(
            t.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{t}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(s.get(name).is_some_and(|v| *v >= 0.0), "{name}: {t}");
        }
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
    fn a_call_of_the_wrong_kind_is_ignored() {
        let m = Metrics::default();
        m.set("molecule_workqueue_depth", &[("controller", "a")], 4.0);
        m.inc("molecule_workqueue_depth", &[("controller", "a")]);
        m.observe("molecule_workqueue_depth", &[("controller", "a")], 1.0);
        let t = m.render();
        parse(&t);
        assert!(
            t.contains("molecule_workqueue_depth{controller=\"a\"} 4\n"),
            "{t}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.inc("odd_total", &[("ua", "a \"quoted\" \\ value\nnext")]);
        let t = m.render();
        parse(&t);
        assert!(
            t.contains(r#"odd_total{ua="a \"quoted\" \\ value\nnext"} 1"#),
            "{t}"
        );
    }
}
