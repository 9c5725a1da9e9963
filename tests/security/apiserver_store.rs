//! Security tests: the store (ADR 0042). Audit rows are limited and filtered in SQL and expire;
//! a commit whose reply is lost does not wedge the writer; one writer per Postgres database;
//! the data dir's files are fsynced with their directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Backend, Server, eventually};

const SKIP: &str = "skipped: MOLECULE_TEST_DATABASE_URL is unset (start Postgres with `bash .ci/postgres.sh` and export the URL it prints)";

/// An RFC 3339 time `days` ago, in the audit table's `at` shape.
fn days_ago(days: i64) -> String {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days);
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn namespace(name: &str) -> Vec<u8> {
    format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}}}}"#)
        .into_bytes()
}

#[tokio::test]
async fn audit_rows_are_limited_and_filtered_in_sql_and_old_ones_expire() {
    use sqlx::Connection;
    let mut s = Server::start(Backend::Sqlite);
    s.terminate();
    // Rows as controllers write them: 3 older than the default retention (30 days), 300 fresh.
    let db = s.data_dir().join("molecule.db");
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the store");
    let insert = "INSERT INTO audit (at, event, namespace, name, data) VALUES (?, ?, ?, ?, ?)";
    for i in 0..3 {
        sqlx::query(insert)
            .bind(days_ago(40 + i))
            .bind("probe.old")
            .bind("default")
            .bind(format!("old-{i}"))
            .bind(r#"{"uid":"u-old"}"#)
            .execute(&mut conn)
            .await
            .expect("insert old");
    }
    for i in 0..300 {
        sqlx::query(insert)
            .bind(days_ago(0))
            .bind(if i % 2 == 0 { "probe.a" } else { "probe.b" })
            .bind("default")
            .bind(format!("row-{i}"))
            .bind(format!(r#"{{"uid":"u-{}"}}"#, i % 3))
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    conn.close().await.expect("close");
    s.spawn();

    // Retention removes the old rows at start (default --audit-retention-days 30).
    let count = |path: &str| -> usize {
        let (code, body) = s.http("GET", path, None, b"");
        assert_eq!(code, 200, "{body}");
        json(&body)["items"].as_array().map_or(0, Vec::len)
    };
    assert!(
        eventually(30, || count("/audit?event=probe.old") == 0),
        "rows older than the retention are still listed; log:\n{}",
        s.log()
    );
    assert_eq!(count("/audit?limit=10000"), 300);

    // `limit` is honoured: the newest rows of the event, listed oldest first.
    let (code, body) = s.http("GET", "/audit?event=probe.a&limit=5", None, b"");
    assert_eq!(code, 200, "{body}");
    let items = json(&body)["items"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = items.iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(
        names,
        vec!["row-290", "row-292", "row-294", "row-296", "row-298"]
    );
    let (code, _) = s.http("GET", "/audit?limit=0", None, b"");
    assert_eq!(code, 400);

    // /events asks the store for `limit` rows, newest first.
    let (code, body) = s.http("GET", "/events?limit=7", None, b"");
    assert_eq!(code, 200, "{body}");
    let rows = json(&body).as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 7, "{body}");
    assert_eq!(rows[0]["payload"]["name"], "row-299");
    assert_eq!(rows[6]["payload"]["name"], "row-293");

    // The indexes the SQL filters use exist.
    s.terminate();
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("reopen the store");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .expect("indexes");
    for want in ["audit_at", "audit_event", "audit_object", "audit_workspace"] {
        assert!(indexes.iter().any(|i| i == want), "{want} in {indexes:?}");
    }
}

/// A TCP proxy to `upstream` that, once armed, forwards the next client chunk holding
/// `COMMIT`, lets Postgres execute it, and drops the connection instead of relaying the reply:
/// a commit that landed while its client saw an error.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl CommitCutter {
    fn start(upstream: String) -> CommitCutter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let drop_reply = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (mut s_in, mut c_out) = (server, client);
                let (armed, flag) = (a.clone(), drop_reply.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if find(&buf[..n], b"COMMIT") && armed.swap(false, Ordering::SeqCst) {
                            // Set before forwarding: the reply cannot arrive earlier.
                            flag.store(true, Ordering::SeqCst);
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                let (flag, cut) = (drop_reply, c.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if flag.load(Ordering::SeqCst) {
                            if find(&buf[..n], b"COMMIT") {
                                // Postgres answered COMMIT: it is durable. Lose the answer.
                                cut.fetch_add(1, Ordering::SeqCst);
                                let _ = s_in.shutdown(std::net::Shutdown::Both);
                                let _ = c_out.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            continue;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CommitCutter { port, armed, cut }
    }
}

/// `postgres://user:pw@host:port/db` → (`host:port`, the URL through `127.0.0.1:proxy`).
fn via_proxy(url: &str, proxy: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (auth_host, path) = rest.split_once('/').expect("path");
    let (auth, host) = match auth_host.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h.to_string()),
        None => (String::new(), auth_host.to_string()),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    (
        host,
        format!("{scheme}://{auth}127.0.0.1:{proxy}/{path}{sep}sslmode=disable"),
    )
}

#[tokio::test]
async fn postgres_commit_with_a_lost_reply_does_not_wedge_later_writes() {
    let Some(url) = molecule::testing::postgres_url().await else {
        eprintln!("{SKIP}");
        return;
    };
    let (upstream, _) = via_proxy(&url, 0);
    let proxy = CommitCutter::start(upstream);
    let (_, proxied) = via_proxy(&url, proxy.port);
    let s = Server::start(Backend::Postgres(proxied));

    proxy.armed.store(true, Ordering::SeqCst);
    let (first, body) = s.http(
        "POST",
        "/api/v1/namespaces",
        Some("application/json"),
        &namespace("ambiguous-1"),
    );
    assert_eq!(
        proxy.cut.load(Ordering::SeqCst),
        1,
        "the proxy did not cut a COMMIT reply ({first}: {body}); log:\n{}",
        s.log()
    );
    // The client may hear either answer; what matters is what comes next.
    assert!(first == 201 || first >= 500, "{first}: {body}");

    // Later writes succeed without a restart (before ADR 0042 each one failed on the change
    // log's key, the in-memory resourceVersion being behind the database's).
    for name in ["ambiguous-2", "ambiguous-3"] {
        let (code, body) = s.http(
            "POST",
            "/api/v1/namespaces",
            Some("application/json"),
            &namespace(name),
        );
        assert_eq!(code, 201, "{name}: {body}; log:\n{}", s.log());
    }
    // The commit landed, so the object is served, as it would be after a restart.
    let (code, body) = s.http("GET", "/api/v1/namespaces/ambiguous-1", None, b"");
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.http("GET", "/api/v1/namespaces/ambiguous-3", None, b"");
    assert_eq!(code, 200, "{body}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn a_second_server_on_the_same_postgres_refuses_to_start_and_a_fenced_one_stops_writing() {
    use sqlx::Connection;
    let Some(url) = molecule::testing::postgres_url().await else {
        eprintln!("{SKIP}");
        return;
    };
    let mut first = Server::start(Backend::Postgres(url.clone()));

    let dir = tempfile::tempdir().expect("tmp");
    let mut second = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["serve", "--controllers", "none", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("MOLECULE_DATABASE_URL", &url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = second.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = second.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = status.expect("a second writer on the same Postgres kept running");
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("refusing to start a second writer"),
        "the refusal names the reason: {text}"
    );
    // The first server is untouched and still writes.
    let (code, body) = first.http(
        "POST",
        "/api/v1/namespaces",
        Some("application/json"),
        &namespace("still-writing"),
    );
    assert_eq!(code, 201, "{body}");

    // The lock session dies (e.g. a network cut): the server stops writing.
    let mut admin = sqlx::postgres::PgConnection::connect(&url)
        .await
        .expect("connect");
    let killed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) t",
    )
    .fetch_one(&mut admin)
    .await
    .expect("terminate the lock session");
    assert_eq!(killed, 1, "exactly one session holds an advisory lock");
    let mut n = 0;
    assert!(
        eventually(20, || {
            n += 1;
            let (code, _) = first.http(
                "POST",
                "/api/v1/namespaces",
                Some("application/json"),
                &namespace(&format!("after-cut-{n}")),
            );
            code >= 500
        }),
        "writes kept succeeding after the writer lock was lost; log:\n{}",
        first.log()
    );
    let (code, _) = first.http(
        "POST",
        "/api/v1/namespaces",
        Some("application/json"),
        &namespace("after-cut-final"),
    );
    assert!(code >= 500, "a fenced server keeps refusing writes");

    // Once it is gone, a new server takes the lock and serves what was committed.
    first.kill9();
    let third = Server::start(Backend::Postgres(url));
    let (code, body) = third.http("GET", "/api/v1/namespaces/still-writing", None, b"");
    assert_eq!(code, 200, "{body}");
}

/// For each of `files` (in the data dir `dir`): after the rename that creates it, the
/// directory is fsynced before the next rename.
fn dir_synced_after(trace: &str, dir: &Path, files: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = trace.lines().collect();
    let dir_fd = format!("<{}>", dir.display());
    let mut missing = vec![];
    for f in files {
        let target = format!("\"{}\"", dir.join(f).display());
        let Some(at) = lines
            .iter()
            .position(|l| l.contains("rename") && l.contains(&target))
        else {
            missing.push(format!("{f}: no rename creating it"));
            continue;
        };
        let synced = lines[at + 1..]
            .iter()
            .take_while(|l| !l.contains("rename"))
            .any(|l| l.contains("fsync(") && l.contains(&dir_fd));
        if !synced {
            missing.push(format!(
                "{f}: the directory is not fsynced after its rename"
            ));
        }
    }
    missing
}

#[test]
fn serve_fsyncs_the_data_dir_after_creating_token_instance_id_and_secret_key() {
    use std::os::unix::process::CommandExt;
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let data = data.canonicalize().expect("canonical");
    let trace = tmp.path().join("trace.txt");
    let port = free_port();
    let mut child = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-e",
            "trace=rename,renameat,renameat2,fsync,fdatasync",
            "-o",
        ])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_molecule"))
        .args(["serve", "--controllers", "none", "--data-dir"])
        .arg(&data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("DATABASE_URL")
        .env_remove("MOLECULE_DATABASE_URL")
        .env_remove("MOLECULE_SECRET_KEY")
        .env_remove("MOLECULE_INSTANCE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn strace");
    let ready = eventually(60, || data.join("kubeconfig").exists());
    // SIGKILL the group (strace and the server it started).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    assert!(ready, "serve did not start under strace");
    let text = std::fs::read_to_string(&trace).expect("trace");
    let missing = dir_synced_after(&text, &data, &["token", "instance-id", "secret.key"]);
    assert!(missing.is_empty(), "{missing:?}\ntrace:\n{text}");
}
