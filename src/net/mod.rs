//! Outbound networking shared by every module that talks to a service it does not control
//! (ADR 0046).

pub mod agent_url;
pub mod http;
