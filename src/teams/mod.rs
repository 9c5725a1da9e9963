//! Teams: who in an org may work with whom. The hierarchy rule (`can_communicate`) decides what
//! a workspace's own token may read (ADR 0038) and which workspaces may call each other through
//! the A2A proxy and find each other in the registry (ADR 0050); `activity` holds the rules of
//! the activity log those calls write. The busy queue and delegations (ADR 0051) live in `queue`
//! (the load bookkeeping) and `service` (storage, delivery, recovery); `bundle` the portable
//! JSON of one workspace (ADR 0055).

pub mod activity;
pub mod bundle;
pub mod hierarchy;
pub mod prompt;
pub mod queue;
pub mod service;
pub mod tree;

pub use hierarchy::{Member, can_communicate};
pub use prompt::{PlatformMessage, SendError};
pub use service::Teams;
