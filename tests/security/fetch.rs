//! Security tests: fetches (ADR 0040). Every git call site runs sealed, the template token never
//! travels over plain http unless an allowlist entry says `http://`, a registry's token realm on
//! another host gets no pull credentials, and an oversized plugin pack is refused while it
//! streams in. Fakes on 127.0.0.1 speak the real protocols (smart HTTP through `git
//! http-backend`, the registry token dance).

use crate::gitrepo;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fakes::git_http::{FakeGitHost, GitBehavior};
use crate::fakes::http::{Reply, Request, serve};
use molecule::orgtemplate::{ErrorKind, ExternalConfig, ExternalRef, fetch};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Set in the child process of the hostile-config test.
const CHILD: &str = "MOLECULE_SECURITY_FETCH_CHILD";
const LEAKED: &str = "leaked-password-from-the-helper";

/// Headers a fake received, (name, value).
type Headers = Arc<Mutex<Vec<(String, String)>>>;

/// A host that answers every request 401 (Basic) and records the headers git sent.
fn recording_401_host() -> (String, Headers) {
    let seen: Headers = Arc::default();
    let log = seen.clone();
    let addr = serve(Arc::new(move |req: &Request| {
        for (k, v) in &req.headers {
            log.lock().unwrap().push((k.clone(), v.clone()));
        }
        Reply::new(
            401,
            &[("WWW-Authenticate", "Basic realm=\"git\"")],
            "Unauthorized\n",
        )
    }));
    (addr, seen)
}

/// Runs in a child process whose HOME holds a hostile ~/.gitconfig (a global extraHeader and a
/// credential helper that hands out a password and leaves a marker), whose XDG config does the
/// same, and whose GIT_CONFIG_PARAMETERS adds another header: the three git call sites must
/// ignore all of it.
fn hostile_child() {
    let marker = std::env::var("MOLECULE_TEST_MARKER").expect("marker");
    // The hostile config is live for an unsealed git.
    let plain = Command::new("git")
        .args(["config", "--get-all", "http.extraheader"])
        .output()
        .expect("git");
    let plain = String::from_utf8_lossy(&plain.stdout).to_string();
    assert!(plain.contains("X-Hostile"), "{plain:?}");

    let (addr, seen) = recording_401_host();
    let scratch = tempfile::tempdir().expect("tmp");
    let url = format!("http://{addr}/team/locked.git");
    let rt = rt();

    // Plugin sources.
    let g = molecule::plugins::git::Git::new(Duration::from_secs(60), scratch.path().into());
    let r = rt.block_on(g.resolve(
        &url,
        &molecule::plugins::source::Track::Branch("main".into()),
    ));
    assert!(r.is_err(), "{r:?}");
    // Local-build template lookups.
    let r = rt.block_on(molecule::images::git::head_sha(
        &url,
        "main",
        None,
        &molecule::images::git::Masker::default(),
        Duration::from_secs(60),
    ));
    assert!(r.is_err(), "{r:?}");
    // `!external` org templates.
    let mut cfg = ExternalConfig::for_root(&scratch.path().join("root"));
    cfg.allowlist = vec![format!("http://{addr}/team/")];
    cfg.default_url = format!("http://{addr}");
    let r = fetch(
        &cfg,
        &ExternalRef {
            repo: "team/locked".into(),
            git_ref: "main".into(),
            path: "org.yaml".into(),
            url: None,
        },
    );
    assert!(r.is_err(), "{r:?}");

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().filter(|(k, _)| k == "user-agent").count() >= 3,
        "every call site reached the host: {seen:?}"
    );
    for (k, v) in &seen {
        assert!(
            !k.starts_with("x-hostile"),
            "a header from the hostile config was sent: {k}: {v}"
        );
        assert_ne!(k, "authorization", "credentials were sent: {v}");
        assert!(!v.contains(LEAKED));
    }
    assert!(
        !Path::new(&marker).exists(),
        "the hostile credential helper ran"
    );
}

#[test]
fn a_git_run_ignores_a_hostile_global_gitconfig_and_credential_helper() {
    if std::env::var_os(CHILD).is_some() {
        hostile_child();
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("home");
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir_all(xdg.join("git")).expect("xdg");
    std::fs::create_dir_all(&home).expect("home");
    let marker = tmp.path().join("helper-ran");
    let config = format!(
        "[http]\n\textraHeader = X-Hostile-Global: 1\n[credential]\n\thelper = \"!f() {{ echo ran > '{}'; echo username=u; echo password={LEAKED}; }}; f\"\n",
        marker.display()
    );
    std::fs::write(home.join(".gitconfig"), &config).expect("gitconfig");
    std::fs::write(
        xdg.join("git/config"),
        config.replace("X-Hostile-Global", "X-Hostile-Xdg"),
    )
    .expect("xdg config");
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new(exe)
        .args([
            "--exact",
            "fetch::a_git_run_ignores_a_hostile_global_gitconfig_and_credential_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("MOLECULE_TEST_MARKER", &marker)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", &xdg)
        .env(
            "GIT_CONFIG_PARAMETERS",
            "'http.extraheader'='X-Hostile-Env: 1'",
        )
        .env_remove("GIT_CONFIG_GLOBAL")
        .env_remove("GIT_CONFIG_NOSYSTEM")
        .output()
        .expect("child");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}

fn external(repo: &str, url: &str) -> ExternalRef {
    ExternalRef {
        repo: repo.into(),
        git_ref: "main".into(),
        path: "org.yaml".into(),
        url: Some(url.into()),
    }
}

#[test]
fn the_template_token_is_not_sent_over_http_to_a_scheme_less_allowlist_entry() {
    const TOKEN: &str = "gitea-token-never-over-http";
    let host = FakeGitHost::start(|_| GitBehavior::Huge(1));
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = ExternalConfig::for_root(&tmp.path().join("root"));
    cfg.token = Some(TOKEN.into());
    // The operator wrote the host without a scheme: that admits https only.
    cfg.allowlist = vec![format!("{}/team/", host.addr)];
    let e = fetch(
        &cfg,
        &external("team/dept", &format!("http://{}", host.addr)),
    )
    .expect_err("plain http is not admitted by a scheme-less entry");
    assert_eq!(e.kind, ErrorKind::ExternalRefused, "{e}");
    assert!(!e.to_string().contains(TOKEN));
    assert!(
        host.authorizations().is_empty(),
        "the token travelled over plain http: {:?}",
        host.authorizations()
    );

    // Written out as http://, plain http is the operator's explicit choice and the token
    // (scoped to that repository) goes with it.
    cfg.allowlist = vec![format!("http://{}/team/", host.addr)];
    let e = fetch(
        &cfg,
        &external("team/dept", &format!("http://{}", host.addr)),
    )
    .expect_err("the fake has no `main`");
    assert!(!e.to_string().contains(TOKEN));
    let sent = host.authorizations();
    assert!(
        !sent.is_empty() && sent.iter().all(|a| *a == format!("token {TOKEN}")),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_token_realm_on_another_host_gets_no_pull_credentials() {
    use molecule::images::reference::ImageRef;
    use molecule::images::registry::{Credentials, RegistryClient};

    let realm_auth: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = realm_auth.clone();
    let realm = serve(Arc::new(move |req: &Request| {
        log.lock()
            .unwrap()
            .push(req.header("authorization").map(str::to_string));
        Reply::new(
            200,
            &[("Content-Type", "application/json")],
            r#"{"token":"anon-token"}"#,
        )
    }));
    let digest = format!("sha256:{}", "a".repeat(64));
    let challenge = format!("Bearer realm=\"http://{realm}/token\",service=\"reg\"");
    let d = digest.clone();
    let registry = serve(Arc::new(move |req: &Request| {
        if req.header("authorization") == Some("Bearer anon-token") {
            Reply::new(200, &[("Docker-Content-Digest", d.as_str())], "")
        } else {
            Reply::new(401, &[("WWW-Authenticate", challenge.as_str())], "")
        }
    }));
    let image = ImageRef::parse(&format!("{registry}/team/app:latest")).expect("ref");
    let creds = Credentials {
        username: "puller".into(),
        password: "pull-secret-password".into(),
    };
    let client = RegistryClient::new(Duration::from_secs(10));
    let got = client
        .manifest_digest(&image, Some(&creds))
        .await
        .expect("an anonymous token still works");
    assert_eq!(got, digest);
    let seen = realm_auth.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0], None,
        "the realm on another host got the pull credentials"
    );
}

/// What the streaming git host sent for one request.
#[derive(Clone, Debug)]
struct Sent {
    target: String,
    bytes: u64,
    complete: bool,
}

/// A smart-HTTP git host (`git http-backend`, no auth) that streams each answer in chunks and
/// records how much of it reached the socket before the client went away.
fn streaming_git_host(root: &Path) -> (String, Arc<Mutex<Vec<Sent>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let (root, log) = (root.to_path_buf(), sent.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (root, log) = (root.clone(), log.clone());
            std::thread::spawn(move || {
                let _ = stream_one(conn, &root, &log);
            });
        }
    });
    (addr, sent)
}

fn stream_one(mut conn: TcpStream, root: &Path, log: &Mutex<Vec<Sent>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let gitrepo::Request {
        method,
        target,
        headers,
        body,
    } = gitrepo::read_request(&mut reader)?;
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut child = gitrepo::spawn_http_backend(root, &method, &target, &header, &body)?;
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut status = "200 OK".to_string();
    let mut resp_headers = String::new();
    loop {
        let mut h = String::new();
        if out.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(s) = h.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else {
            resp_headers.push_str(h);
            resp_headers.push_str("\r\n");
        }
    }
    conn.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{resp_headers}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut bytes = 0u64;
    let mut complete = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let wrote = conn
            .write_all(format!("{n:x}\r\n").as_bytes())
            .and_then(|()| conn.write_all(&buf[..n]))
            .and_then(|()| conn.write_all(b"\r\n"));
        if wrote.is_err() {
            complete = false;
            break;
        }
        bytes += n as u64;
    }
    if complete {
        let _ = conn.write_all(b"0\r\n\r\n");
    }
    let _ = child.kill();
    let _ = child.wait();
    log.lock().unwrap().push(Sent {
        target,
        bytes,
        complete,
    });
    Ok(())
}

#[test]
fn an_oversized_plugin_pack_is_refused_while_it_streams_in() {
    const BLOB: usize = 40 * 1024 * 1024;
    let tmp = tempfile::tempdir().expect("tmp");
    let repos = tmp.path().join("repos");
    let repo = gitrepo::Repo::create(&repos, "big", &[("plugin.yaml", "name: big\n")]);
    // Incompressible, so the pack is as large as the file.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(BLOB);
    while data.len() < BLOB {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(repo.work.join("blob.bin"), &data).expect("blob");
    drop(data);
    let sha = repo.commit(&[], "a large file");

    let (addr, sent) = streaming_git_host(&repos);
    let url = format!("http://{addr}/big.git");
    let scratch = tmp.path().join("scratch");
    let g = molecule::plugins::git::Git::new(Duration::from_secs(120), scratch);
    let limits = molecule::plugins::tree::Limits {
        max_bytes: 1024 * 1024,
        max_files: 100,
    };
    let e = rt()
        .block_on(g.fetch_tree(&url, &sha, Some("refs/heads/main"), &limits))
        .expect_err("too large");
    assert_eq!(e.reason, "TooLarge", "{}", e.message);

    let sent = sent.lock().unwrap().clone();
    let packs: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.target.ends_with("/git-upload-pack"))
        .collect();
    let largest = packs
        .iter()
        .max_by_key(|s| s.bytes)
        .unwrap_or_else(|| panic!("no pack was requested: {sent:?}"));
    assert!(
        !largest.complete && largest.bytes < BLOB as u64 / 2,
        "the whole pack was read before the limit was checked: {largest:?}"
    );
}
