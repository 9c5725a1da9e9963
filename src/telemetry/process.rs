//! The standard process metrics, read from `/proc` at each scrape (ADR 0046):
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` and
//! `process_start_time_seconds`, named and computed as the Go and Python clients do. Where there
//! is no `/proc` (not Linux) they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Collects the process metrics on every render.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process's counters.
#[derive(Clone, Debug, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    resident_bytes: i64,
    start_time_seconds: f64,
    open_fds: Option<i64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(r.resident_bytes);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            None,
            rss.metric_type(),
        )?)?;
        let start = ConstGauge::new(r.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            None,
            start.metric_type(),
        )?)?;
        if let Some(n) = r.open_fds {
            let fds = ConstGauge::new(n);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                fds.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// This process's reading, or None without a readable `/proc`.
fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    let page = rustix::param::page_size();
    let mut r = parse(&stat, boot_time(&boot)?, ticks, page)?;
    r.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX));
    Some(r)
}

/// The `btime` line of `/proc/stat`: boot time in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads `/proc/self/stat` (see proc(5)): utime and stime (fields 14, 15) and starttime
/// (field 22) in clock ticks, rss (field 24) in pages. Counting starts after the command name,
/// which may itself hold spaces and parentheses.
fn parse(stat: &str, boot: u64, ticks: u64, page: usize) -> Option<Reading> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = ticks.max(1) as f64;
    let cpu_seconds = (field(14)? + field(15)?) as f64 / ticks;
    let start_time_seconds = boot as f64 + field(22)? as f64 / ticks;
    let resident = field(24)?.saturating_mul(page as u64);
    Some(Reading {
        cpu_seconds,
        resident_bytes: i64::try_from(resident).unwrap_or(i64::MAX),
        start_time_seconds,
        open_fds: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250, stime 150, starttime 1000,
        // rss 300 pages.
        let stat = "4242 (mole cule) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 150 0 0 20 0 \
                    8 0 1000 123456789 300 18446744073709551615";
        let r = parse(stat, 1_700_000_000, 100, 4096).expect("parses");
        assert_eq!(
            r,
            Reading {
                cpu_seconds: 4.0,
                resident_bytes: 300 * 4096,
                start_time_seconds: 1_700_000_010.0,
                open_fds: None,
            }
        );
        assert_eq!(parse("4242 (x) S 1", 0, 100, 4096), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_has_a_reading() {
        let r = read().expect("/proc is readable here");
        assert!(r.resident_bytes > 0 && r.start_time_seconds > 1e9, "{r:?}");
        assert!(r.open_fds.is_some_and(|n| n > 0), "{r:?}");
    }
}
