//! Molecule: a Kubernetes-style reconciliation operator for teams of AI agents.
//!
//! See `README.md` for the quickstart and `docs/adr/` for the design decisions. The
//! modules mirror the architecture: `resources` (kinds), `apiserver` (the embedded API),
//! `store` (SQLite/Postgres), `controllers` (the reconcilers and their host), `serve` (the
//! one-process embedded mode).
#![forbid(unsafe_code)]

pub mod agent;
pub mod apiserver;
pub mod archive;
pub mod audit;
pub mod backends;
pub mod controllers;
pub mod git;
pub mod images;
pub mod kubeconfig;
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
pub mod yaml;
