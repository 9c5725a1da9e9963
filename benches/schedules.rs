//! Benchmark of the schedule controller (ADR 0053): `molecule serve` running the schedule
//! controller alone (`--controllers schedule --backend simulated`: no container work), 1,000
//! Workspaces each with one every-minute schedule, their agent URL pointing at one A2A
//! responder in this process that notes when each message arrives. For `BENCH_MINUTES`
//! minutes (3 by default) it reports the fire jitter — arrival minus the minute it was due —
//! at p50/p99, the fires per minute, and the server's CPU time per minute (utime + stime of
//! the process from /proc). Run with `cargo bench --bench schedules`.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WORKSPACES: usize = 1000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// One HTTP/1.0 request to `authority` as `token`; (status, body).
fn request(
    authority: &str,
    token: &str,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(authority).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nContent-Type: {ct}\r\n\r\n",
        body.len()
    );
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    c.write_all(&all).expect("write");
    let mut buf = vec![];
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat; 0-based 11 and 12 after the command name.
    let hz = rustix::param::clock_ticks_per_second() as f64;
    (ticks(11) + ticks(12)) / hz
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When each message arrived, and at which path (one per workspace).
type Arrivals = Arc<Mutex<Vec<(jiff::Timestamp, String)>>>;

/// The A2A responder: answers every message at once and notes its arrival.
async fn responder(listener: tokio::net::TcpListener, arrivals: Arrivals) {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let arrivals = arrivals.clone();
        async move {
            arrivals
                .lock()
                .expect("lock")
                .push((jiff::Timestamp::now(), uri.path().to_string()));
            axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {
                "kind": "message", "role": "agent", "parts": [{"kind": "text", "text": "ok"}]}}))
        }
    });
    let _ = axum::serve(listener, app).await;
}

fn main() {
    let minutes: u64 = std::env::var("BENCH_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let arrivals: Arrivals = Arc::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let agent = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(responder(listener, arrivals.clone()));

    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let authority = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args([
            "serve",
            "--controllers",
            "schedule",
            "--backend",
            "simulated",
        ])
        .args(["--listen", &authority, "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let pid = child.id();
    let _serve = Serve(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("token").exists() || std::net::TcpStream::connect(&authority).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let admin = std::fs::read_to_string(data.join("token"))
        .expect("token")
        .trim()
        .to_string();
    let base = "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces";
    let started = Instant::now();
    for i in 0..WORKSPACES {
        let name = format!("w{i:04}");
        let body = serde_json::json!({
            "apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace",
            "metadata": {"name": name},
            "spec": {"runtime": "external", "url": format!("{agent}/{name}"), "schedules": [
                {"name": "tick", "cronExpr": "* * * * *", "prompt": "tick"}]},
        });
        let (code, text) = request(
            &authority,
            &admin,
            "POST",
            base,
            "application/json",
            body.to_string().as_bytes(),
        );
        assert_eq!(code, 201, "{text}");
        // No Workspace controller runs: the agent URL is set as a registration would.
        let status = serde_json::json!({"status": {"url": format!("{agent}/{name}")}});
        let (code, text) = request(
            &authority,
            &admin,
            "PATCH",
            &format!("{base}/{name}/status"),
            "application/merge-patch+json",
            status.to_string().as_bytes(),
        );
        assert_eq!(code, 200, "{text}");
    }
    println!(
        "created {WORKSPACES} workspaces with an every-minute schedule in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Measure whole minutes, from the next minute boundary on; a fire counts for the minute it
    // was due in (the minute it arrived in: the jitter stays far below a minute).
    let now = jiff::Timestamp::now();
    let first_minute = now.as_second() - now.as_second().rem_euclid(60) + 60;
    let until = |second: i64| {
        let left = jiff::Timestamp::from_second(second)
            .expect("timestamp")
            .duration_since(jiff::Timestamp::now());
        std::thread::sleep(Duration::try_from(left).unwrap_or(Duration::ZERO));
    };
    until(first_minute);
    let cpu_start = cpu_seconds(pid);
    let end_minute = first_minute + 60 * minutes as i64;
    until(end_minute);
    let cpu = cpu_seconds(pid) - cpu_start;
    // Late fires of the last minute still count.
    std::thread::sleep(Duration::from_secs(20));
    let mut per_minute: std::collections::HashMap<(i64, String), usize> = Default::default();
    let mut jitter: Vec<f64> = vec![];
    for (t, path) in arrivals.lock().expect("lock").iter() {
        let s = t.as_second();
        let due = s - s.rem_euclid(60);
        if (first_minute..end_minute).contains(&due) {
            jitter.push((t.as_nanosecond() - i128::from(due) * 1_000_000_000) as f64 / 1e6);
            *per_minute.entry((due, path.clone())).or_default() += 1;
        }
    }
    let doubles = per_minute.values().filter(|n| **n > 1).count();
    let missed = WORKSPACES * minutes as usize - per_minute.len();
    jitter.sort_by(f64::total_cmp);
    println!(
        "{} fires in {minutes} min ({:.0}/min, expected {WORKSPACES}/min)",
        jitter.len(),
        jitter.len() as f64 / minutes as f64
    );
    println!("double fires (a workspace twice in one minute): {doubles}; missed: {missed}");
    println!(
        "fire jitter (arrival at the agent minus the due minute): p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        percentile(&jitter, 0.5),
        percentile(&jitter, 0.99),
        jitter.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "server CPU: {:.2} s per minute ({:.1}% of one core)",
        cpu / minutes as f64,
        cpu / (60.0 * minutes as f64) * 100.0
    );
}
