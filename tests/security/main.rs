//! Security suite: each test here pins one hardening point (privilege, template policy, fetches,
//! resource exhaustion, durability) and failed on the code before the fix.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fakes/mod.rs"]
mod fakes;
#[path = "../common/git.rs"]
mod gitrepo;

mod apiserver;
mod apiserver_store;
mod auth;
mod conventions;
mod fetch;
mod templates;
