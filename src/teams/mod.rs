//! Teams: who in an org may work with whom. The hierarchy rule (`can_communicate`) decides what
//! a workspace's own token may read (ADR 0038); later parts of teams (A2A between workspaces,
//! delegations, discovery) build on the same rule. The busy queue and delegations (ADR 0051)
//! live in `queue` (the load bookkeeping) and `service` (storage, delivery, recovery).

pub mod hierarchy;
pub mod queue;
pub mod service;

pub use hierarchy::{Member, can_communicate};
pub use service::Teams;
