//! HTTP endpoints beside the Kubernetes API: the agent-facing `/registry/*` (and, later, the
//! canvas REST shim). Handlers write records and read status; they never touch Docker.

pub mod images;
pub mod registry;
