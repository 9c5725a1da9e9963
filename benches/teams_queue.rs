//! Benchmark of delegations and the busy queue (ADR 0051). Run with `cargo bench --bench
//! teams_queue`. The real `molecule serve` (Workspace controller, simulated container backend) and
//! external workspaces whose agents are the real echo agent on 127.0.0.1 (see
//! `tests/support/org.rs`).
//!
//! 1. 200 concurrent delegations across a 50-workspace org (a lead, 7 managers, 42 ICs; each
//!    delegation from a manager to one of its ICs or from the lead to a manager, so several
//!    land on a busy target and go through its queue): time until all are completed, and the
//!    server's CPU over that time.
//! 2. 1,000 calls queued on a busy agent (held by `sleep`): enqueue rate, then the drain time
//!    once it frees up, and the order the agent saw them in.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/org.rs"]
mod org;

use std::time::{Duration, Instant};

use common::Backend;
use org::{Org, a2a};
use serde_json::json;

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn delegations() {
    let mut members: Vec<(String, Option<String>)> = vec![("lead".into(), None)];
    for m in 0..7 {
        members.push((format!("m{m}"), Some("lead".into())));
        for i in 0..6 {
            members.push((format!("m{m}-ic{i}"), Some(format!("m{m}"))));
        }
    }
    let refs: Vec<(&str, Option<&str>)> = members
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_deref()))
        .collect();
    let org = std::sync::Arc::new(Org::new(Backend::Sqlite, &refs).await);
    org.wait_online().await;
    println!("org: {} workspaces online", members.len());
    let pairs: Vec<(String, String, String)> = (0..200)
        .map(|k| {
            let (src, dst) = if k % 8 == 7 {
                ("lead".to_string(), format!("m{}", k % 7))
            } else {
                (format!("m{}", k % 7), format!("m{}-ic{}", k % 7, k % 6))
            };
            (org.uid(&src), org.token(&src), org.uid(&dst))
        })
        .collect();
    let pid = org.s.pid().expect("pid");
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut threads = vec![];
    for chunk in pairs.chunks(25) {
        let chunk = chunk.to_vec();
        let org = org.clone();
        threads.push(std::thread::spawn(move || {
            for (src, token, dst) in chunk {
                let (code, v) = org.call(
                    "POST",
                    &format!("/workspaces/{src}/delegate"),
                    Some(&token),
                    &json!({"target_id": dst, "task": format!("sleep 20 work for {dst}")}),
                );
                assert_eq!(code, 202, "{v}");
            }
        }));
    }
    for t in threads {
        t.join().expect("join");
    }
    let sent = started.elapsed();
    let sources: Vec<String> = (0..7)
        .map(|m| format!("m{m}"))
        .chain(["lead".to_string()])
        .collect();
    loop {
        let mut done = 0;
        let mut failed = 0;
        for s in &sources {
            for d in org.delegations(s) {
                if d["direction"] != "out" {
                    continue;
                }
                match d["status"].as_str() {
                    Some("completed") => done += 1,
                    Some("failed") => failed += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(failed, 0, "a delegation failed");
        if done == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {done} of 200 completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    let cpu = cpu_seconds(pid) - cpu0;
    println!(
        "200 concurrent delegations over 50 workspaces: all completed in {:.2}s (requests sent in {:.2}s); server CPU {:.2}s ({:.0}% of one core)",
        total.as_secs_f64(),
        sent.as_secs_f64(),
        cpu,
        100.0 * cpu / total.as_secs_f64()
    );
}

async fn queue() {
    let org = Org::new(Backend::Sqlite, &[("busy", None)]).await;
    org.wait_online().await;
    let uid = org.uid("busy");
    let hold = {
        let port = org.s.port;
        let admin = org.s.token();
        std::thread::spawn(move || {
            common::post_url(
                &format!("http://127.0.0.1:{port}/workspaces/{uid}/a2a"),
                &a2a("sleep 8000 hold").to_string(),
                Some(&admin),
            )
            .expect("hold")
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for i in 0..1000 {
        let (code, v) = org.send("busy", &format!("q{i}"));
        assert_eq!(code, 202, "{v}");
    }
    let enqueue = started.elapsed();
    println!(
        "1,000 calls queued on a busy agent in {:.2}s ({:.0} per second)",
        enqueue.as_secs_f64(),
        1000.0 / enqueue.as_secs_f64()
    );
    let (code, _) = hold.join().expect("join");
    assert_eq!(code, 200);
    let freed = Instant::now();
    loop {
        let seen = org.seen("busy");
        if seen.len() >= 1001 {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(300),
            "only {} delivered",
            seen.len() - 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = freed.elapsed();
    let seen = org.seen("busy");
    let want: Vec<String> = std::iter::once("sleep 8000 hold".to_string())
        .chain((0..1000).map(|i| format!("q{i}")))
        .collect();
    assert_eq!(seen, want, "drained in order, once each");
    println!(
        "the queue drained in {:.2}s once the agent freed up ({:.1} ms per call), in order, once each",
        drain.as_secs_f64(),
        drain.as_secs_f64() * 1000.0 / 1000.0
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        queue().await;
        delegations().await;
    });
}
