//! A minimal blocking HTTP/1.1 server: one thread per connection, one request per connection
//! (`Connection: close`); a request body is read when it has a `Content-Length` (up to 1 MiB).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// One request head.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What to answer.
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Accept and never answer (the client's timeout is under test).
    Hang,
}

impl Reply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Reply {
        Reply::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Starts serving on 127.0.0.1:<free port>; returns the address. Runs until the test process
/// exits.
pub fn serve(handler: Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let h = handler.clone();
            std::thread::spawn(move || handle(stream, h));
        }
    });
    addr
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn handle(mut s: TcpStream, handler: Handler) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // A TLS ClientHello (Docker tries HTTPS first, even for loopback registries): close at
        // once so the client falls back to plain HTTP without waiting for a handshake timeout.
        if buf.first() == Some(&0x16) {
            return;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("/").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let headers: HashMap<String, String> = headers;
    // A client waiting for `100 Continue` sends no body: answer from the head alone.
    let waits = headers
        .get("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    let length: usize = if waits {
        0
    } else {
        headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
            .min(1024 * 1024)
    };
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    let req = Request {
        method,
        path,
        query,
        headers,
        body,
    };
    match handler(&req) {
        Reply::Hang => std::thread::sleep(Duration::from_secs(600)),
        Reply::Respond {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            let mut has_length = false;
            for (k, v) in &headers {
                has_length |= k.eq_ignore_ascii_case("content-length");
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            if !has_length {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            out.push_str("Connection: close\r\n\r\n");
            let _ = s.write_all(out.as_bytes());
            if req.method != "HEAD" {
                let _ = s.write_all(&body);
            }
            let _ = s.flush();
        }
    }
}
