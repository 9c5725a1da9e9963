//! Docker helpers shared by the benchmarks (included with `#[path]`).

/// The gateway address of the workspaces' network, where a stand-in platform listens for the
/// agents of a baseline run (empty when the network does not exist).
pub fn network_gateway() -> String {
    std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .arg(molecule::backends::docker::DEFAULT_NETWORK)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
