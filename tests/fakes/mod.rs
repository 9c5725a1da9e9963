//! Fakes for what this machine cannot have, each speaking the real wire protocol on 127.0.0.1:
//! a Docker Registry v2 (`registry`), a git smart-HTTP host that only answers ref lookups
//! (`git_http`) and a Telegram Bot API (`telegram`). `http` is their tiny HTTP/1.1 server;
//! `tar` reads `docker save` output.
#![allow(dead_code)]

pub mod git_http;
pub mod http;
pub mod registry;
pub mod tar;
pub mod telegram;
