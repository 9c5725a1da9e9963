//! Fakes for what this machine cannot have, each speaking the real wire protocol on 127.0.0.1:
//! a Docker Registry v2 (`registry`) and a git smart-HTTP host that only answers ref lookups
//! (`git_http`). `http` is their tiny HTTP/1.1 server; `tar` reads `docker save` output.
#![allow(dead_code)]

pub mod git_http;
pub mod http;
pub mod registry;
pub mod tar;
