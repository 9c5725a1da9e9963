//! Teams: who in an org may work with whom. The hierarchy rule (`can_communicate`) decides what
//! a workspace's own token may read (ADR 0038); later parts of teams (A2A between workspaces,
//! delegations, discovery) build on the same rule.

pub mod hierarchy;

pub use hierarchy::{Member, can_communicate};
