//! A git smart-HTTP host that answers ref advertisements only (`GET <repo>/info/refs?service=
//! git-upload-pack`, protocol v0 pkt-lines) — all `git ls-remote` needs. It records every
//! `Authorization` header it receives. Per repository name it answers 404 (not mirrored), a huge
//! advertisement, or nothing at all.

use std::sync::{Arc, Mutex};

use super::http::{Reply, Request, serve};

/// What a repository does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitBehavior {
    NotFound,
    /// A valid advertisement of `n` refs whose names all end in `/HEAD`.
    Huge(usize),
    Hang,
}

/// A running fake git host.
#[derive(Clone)]
pub struct FakeGitHost {
    pub addr: String,
    authorizations: Arc<Mutex<Vec<String>>>,
}

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

/// A protocol-v0 upload-pack advertisement with HEAD and `n` more refs.
pub fn advertisement(n: usize) -> String {
    let sha = "1".repeat(40);
    let mut out = pkt("# service=git-upload-pack\n");
    out.push_str("0000");
    out.push_str(&pkt(&format!(
        "{sha} HEAD\0multi_ack thin-pack side-band side-band-64k ofs-delta shallow no-progress include-tag\n"
    )));
    for i in 0..n {
        out.push_str(&pkt(&format!("{sha} refs/heads/b{i:06}/HEAD\n")));
    }
    out.push_str("0000");
    out
}

impl FakeGitHost {
    /// Starts the host; `behavior(repo_name)` decides per repository (the last path segment
    /// before `/info/refs`).
    pub fn start(behavior: impl Fn(&str) -> GitBehavior + Send + Sync + 'static) -> FakeGitHost {
        let authorizations: Arc<Mutex<Vec<String>>> = Arc::default();
        let auth = authorizations.clone();
        let addr = serve(Arc::new(move |req: &Request| {
            if let Some(a) = req.header("authorization") {
                auth.lock().unwrap().push(a.to_string());
            }
            let Some(repo_path) = req.path.strip_suffix("/info/refs") else {
                return Reply::new(404, &[], "Not Found");
            };
            let name = repo_path.rsplit('/').next().unwrap_or("");
            match behavior(name) {
                GitBehavior::NotFound => {
                    Reply::new(404, &[("Content-Type", "text/plain")], "Not Found\n")
                }
                GitBehavior::Hang => Reply::Hang,
                GitBehavior::Huge(n) => Reply::new(
                    200,
                    &[
                        (
                            "Content-Type",
                            "application/x-git-upload-pack-advertisement",
                        ),
                        ("Cache-Control", "no-cache"),
                    ],
                    advertisement(n),
                ),
            }
        }));
        FakeGitHost {
            addr,
            authorizations,
        }
    }

    /// Every `Authorization` header received so far.
    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().unwrap().clone()
    }
}
