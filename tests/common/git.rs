//! Real git repositories for tests: bare repos made in a temp dir, served through `file://` or
//! through the real smart-HTTP protocol (`git http-backend` behind a small HTTP/1.1 server on
//! 127.0.0.1 that demands `Authorization: token <t>`, the way the original's Gitea did).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `<base>/<repo>.git` and the work tree that feeds it.
pub struct Repo {
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Repo {
    /// Creates `<base>/<repo>.git` with `files` committed on `main`.
    pub fn create(base: &Path, repo: &str, files: &[(&str, &str)]) -> Repo {
        let work = base.join(".work").join(repo);
        std::fs::create_dir_all(&work).expect("work dir");
        git(&work, &["init", "-q", "-b", "main"]);
        let r = Repo {
            bare: base.join(format!("{repo}.git")),
            work,
        };
        r.commit(files, "initial");
        std::fs::create_dir_all(r.bare.parent().expect("parent")).expect("mkdir");
        git(
            base,
            &[
                "clone",
                "-q",
                "--bare",
                &r.work.to_string_lossy(),
                &r.bare.to_string_lossy(),
            ],
        );
        r
    }

    /// Commits `files` in the work tree and pushes to the bare repo (if it exists); returns
    /// the new sha.
    pub fn commit(&self, files: &[(&str, &str)], msg: &str) -> String {
        for (p, c) in files {
            let f = self.work.join(p);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(f, c).expect("write");
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", msg]);
        if self.bare.exists() {
            git(
                &self.work,
                &["push", "-q", &self.bare.to_string_lossy(), "main"],
            );
        }
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// An annotated tag on HEAD, pushed.
    pub fn tag(&self, name: &str) {
        git(&self.work, &["tag", "-a", name, "-m", name]);
        git(
            &self.work,
            &["push", "-q", &self.bare.to_string_lossy(), name],
        );
    }
}

/// One request the HTTP server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub authorized: bool,
}

/// Smart-HTTP git server on 127.0.0.1 backed by `git http-backend`.
pub struct HttpGit {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpGit {
    /// Serves the bare repos under `root`; every request must carry
    /// `Authorization: token <token>`, else 401.
    pub fn start(root: &Path, token: &str) -> HttpGit {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (root, token, log) = (root.to_path_buf(), token.to_string(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, token, log) = (root.clone(), token.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &root, &token, &log);
                });
            }
        });
        HttpGit { port, seen }
    }

    /// The `url` of an `!external` pointing here.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One HTTP/1.1 request as the small test servers read it: method, target, lower-cased
/// headers and the body (Content-Length or chunked).
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads one request from `reader` (see [`Request`]).
pub fn read_request(reader: &mut impl BufRead) -> std::io::Result<Request> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers: Vec<(String, String)> = vec![];
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut body = vec![];
    if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Ok(n) = header("content-length").parse::<usize>() {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Request {
        method,
        target,
        headers,
        body,
    })
}

/// Starts `git http-backend` as a CGI for one request and writes the request body to it; the
/// caller reads the CGI answer (headers, blank line, payload) from the child's stdout.
pub fn spawn_http_backend(
    root: &Path,
    method: &str,
    target: &str,
    header: &dyn Fn(&str) -> String,
    body: &[u8],
) -> std::io::Result<std::process::Child> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut si) = child.stdin.take() {
        si.write_all(body)?;
    }
    Ok(child)
}

fn handle(
    mut conn: TcpStream,
    root: &Path,
    token: &str,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let Request {
        method,
        target,
        headers,
        body,
    } = read_request(&mut reader)?;
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let authorized = header("authorization") == format!("token {token}");
    log.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
        method: method.clone(),
        target: target.clone(),
        authorized,
    });
    if !authorized {
        conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let child = spawn_http_backend(root, &method, &target, &header, &body)?;
    let out = child.wait_with_output()?.stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (head, payload) = match split {
        Some((i, n)) => (
            String::from_utf8_lossy(&out[..i]).to_string(),
            &out[i + n..],
        ),
        None => (String::new(), &out[..]),
    };
    let mut status = "200 OK".to_string();
    let mut resp_headers = String::new();
    for h in head.lines() {
        if let Some(s) = h.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else if !h.trim().is_empty() {
            resp_headers.push_str(h.trim_end());
            resp_headers.push_str("\r\n");
        }
    }
    conn.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{resp_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    )?;
    conn.write_all(payload)?;
    Ok(())
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(p),
                Ok(ft) if ft.is_file() => {
                    if let Ok(b) = std::fs::read(&p)
                        && b.windows(needle.len()).any(|w| w == needle.as_bytes())
                    {
                        hits.push(p);
                    }
                }
                _ => {}
            }
        }
    }
    hits
}
