//! Process figures shared by the benchmarks (included with `#[path]`).

/// Resident set size of `pid` in MB (`VmRSS` of `/proc/<pid>/status`; 0 when unreadable).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
