//! Benchmark of `molecule org plan` (ADR 0047) on the 41-workspace fixture
//! (`tests/fixtures/org-templates/acme`: 4 levels, 4 `!include` team files, prompts and `.env`
//! per role). Run with `cargo bench --bench org_plan`. Target: under 50 ms.
//!
//! 1. in process: load, plan and render (what the command does after argument parsing);
//! 2. the real binary, end to end, vs `molecule version` (the cost of starting the process).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(args: &[&str]) -> Duration {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(args)
        .output()
        .expect("run molecule");
    let d = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/org-templates/acme");
    let dir_s = dir.to_str().expect("utf8");
    let available = molecule::orgtemplate::report::process_env_names();
    let target = molecule::orgtemplate::report::PlanTarget::new(&dir, None).expect("target");
    let runs = 30;
    let inproc = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let plan = target.plan().expect("plan");
                let text = molecule::orgtemplate::report::render(&plan, &available);
                assert_eq!(plan.workspaces.len(), 41);
                assert!(!text.is_empty());
                t.elapsed()
            })
            .collect(),
    );
    let binary = median((0..runs).map(|_| run(&["org", "plan", dir_s])).collect());
    let startup = median((0..runs).map(|_| run(&["version"])).collect());
    let verdict = |d: Duration| {
        if d < Duration::from_millis(50) {
            "met"
        } else {
            "MISSED"
        }
    };
    println!(
        "org_plan bench: 41 workspaces, 4 levels, 4 !include team files, prompts and .env per role"
    );
    println!(
        "  in process (load+plan+render): {:7.2} ms median of {runs}  target < 50 ms: {}",
        ms(inproc),
        verdict(inproc)
    );
    println!(
        "  `molecule org plan` binary:    {:7.2} ms median of {runs}  target < 50 ms: {}",
        ms(binary),
        verdict(binary)
    );
    println!(
        "  baseline `molecule version`:   {:7.2} ms  (process start)   org plan adds {:.2} ms",
        ms(startup),
        ms(binary.saturating_sub(startup))
    );
}
