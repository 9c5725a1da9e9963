//! Runs the control-plane simulator by hand:
//!
//! ```sh
//! cargo run --example cpsim -- --listen 127.0.0.1:9090 --start-delay-ms 2000
//! ```
//!
//! then point `molecule serve --control-plane-url http://127.0.0.1:9090 --control-plane-org
//! demo` at it (with `MOLECULE_CP_SHARED_SECRET` / `MOLECULE_CP_ADMIN_TOKEN` set to the values
//! below, or a `--control-plane-secret`). Faults and instance deaths are injected over HTTP:
//!
//! ```sh
//! curl -XPOST localhost:9090/_sim/faults -d '{"route":"provision","status":500,"times":1}'
//! curl -XPOST localhost:9090/_sim/faults -d '{"route":"status","delay_ms":5000}'
//! curl -XDELETE localhost:9090/_sim/faults
//! curl localhost:9090/_sim/instances
//! curl -XPOST localhost:9090/_sim/instances/<instance id>/die
//! ```

#[path = "mod.rs"]
mod cpsim;

use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage: cpsim [--listen ADDR] [--shared-secret S] [--admin-token T | --no-admin-token]\n\
         \x20            [--start-delay-ms N] [--agent-port P] [--no-agents]"
    );
    std::process::exit(2)
}

fn main() {
    let mut cfg = cpsim::SimConfig {
        listen: "127.0.0.1:9090".parse().expect("default address"),
        agent_port: 8000,
        start_delay: Duration::from_secs(2),
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => cfg.listen = value().parse().unwrap_or_else(|_| usage()),
            "--shared-secret" => cfg.shared_secret = value(),
            "--admin-token" => cfg.admin_token = Some(value()),
            "--no-admin-token" => cfg.admin_token = None,
            "--start-delay-ms" => {
                cfg.start_delay = Duration::from_millis(value().parse().unwrap_or_else(|_| usage()))
            }
            "--agent-port" => cfg.agent_port = value().parse().unwrap_or_else(|_| usage()),
            "--no-agents" => cfg.run_agents = false,
            _ => usage(),
        }
    }
    let sim = cpsim::Sim::start(cfg.clone());
    println!("control-plane simulator on {}", sim.url());
    println!("  shared secret: {}", cfg.shared_secret);
    match &cfg.admin_token {
        Some(t) => println!("  admin token:   {t}"),
        None => println!("  admin token:   (none: admin routes take the shared secret)"),
    }
    println!(
        "  instances: 127.{{x}}.{{y}}.{{z}}:{} (in-process echo agents: {})",
        sim.agent_port(),
        cfg.run_agents
    );
    println!("  Ctrl-C stops it");
    sim.wait_for_ctrl_c();
}
