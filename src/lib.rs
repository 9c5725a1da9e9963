//! Molecule: a Kubernetes-style reconciliation operator for teams of AI agents.
//!
//! See `README.md` for the quickstart and `docs/adr/` for the design decisions. The
//! modules mirror the architecture: `resources` (kinds and the names modules share),
//! `apiserver` (the embedded API), `store` (SQLite/Postgres), `controllers` (the reconcilers
//! and their leadership loop), `shim` (the HTTP routes beside the API), `host` (the one wiring
//! point that builds every service and router, ADR 0044), `serve` (the one-process embedded
//! mode) and `operator` (cluster mode). The graph of top-level modules has no cycles.
#![forbid(unsafe_code)]

pub mod agent;
pub mod apiserver;
pub mod archive;
pub mod audit;
pub mod backends;
pub mod controllers;
pub mod cron;
pub mod feed;
pub mod git;
pub mod host;
pub mod images;
pub mod kubeconfig;
pub mod late;
pub mod net;
pub mod operator;
pub mod orgtemplate;
pub mod plugins;
pub mod resources;
pub mod serve;
pub mod shim;
pub mod shutdown;
pub mod store;
pub mod teams;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod tokens;
pub mod util;
pub mod workspace_tokens;
pub mod yaml;
