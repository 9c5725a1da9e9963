//! Security tests: what a workspace's own token may do (issue 15 points 1, 3, 14, 15; ADR
//! 0038). Against the real `molecule serve` over plain HTTP: records are written through the
//! shim and the real API, tokens are put on record the way the Workspace controller does
//! (`status.tokenHash`, the sha256 of the token).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{Backend, Server, eventually};

const API: &str = "/apis/molecule.ai/v1alpha1";

fn j(body: &str) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn call(s: &Server, token: Option<&str>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let raw = if body.is_null() {
        vec![]
    } else {
        body.to_string().into_bytes()
    };
    let (code, b) = s.http_as(method, path, token, &raw);
    (code, j(&b))
}

fn admin(s: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    call(s, Some(&s.token()), method, path, body)
}

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

/// A workspace made through the shim with the admin token; returns (uid, record name).
fn create(s: &Server, body: Value) -> (String, String) {
    let (code, b) = admin(s, "POST", "/workspaces", body);
    assert_eq!(code, 201, "{b}");
    (
        b["id"].as_str().expect("id").to_string(),
        b["k8s_name"].as_str().expect("name").to_string(),
    )
}

fn record(s: &Server, name: &str) -> Value {
    let (code, b) = s.http(
        "GET",
        &format!("{API}/namespaces/default/workspaces/{name}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{b}");
    j(&b)
}

/// Puts the sha256 of `token` on record, as the Workspace controller does, and waits until
/// the shim's index has it.
fn give_token(s: &Server, uid: &str, name: &str, token: &str) {
    let (code, b) = s.http(
        "PATCH",
        &format!("{API}/namespaces/default/workspaces/{name}/status"),
        Some("application/merge-patch+json"),
        json!({"status": {"tokenHash": sha(token)}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{b}");
    assert!(
        eventually(10, || call(
            s,
            Some(token),
            "GET",
            &format!("/workspaces/{uid}"),
            Value::Null
        )
        .0 == 200),
        "the token of {name} is not accepted"
    );
}

/// The org of these tests:
///
/// ```text
/// lead ─┬─ a ── a1
///       └─ b
/// other
/// ```
struct Org {
    s: Server,
    ids: std::collections::BTreeMap<&'static str, (String, String)>,
}

impl Org {
    fn new(env: &[(&str, &str)]) -> Org {
        let s = Server::start_with_env(Backend::Sqlite, &[], env);
        let mut ids = std::collections::BTreeMap::new();
        let lead = create(&s, json!({"name": "Lead", "tier": 2, "runtime": "echo"}));
        let a = create(&s, json!({"name": "A", "parent_id": lead.0, "tier": 2}));
        let a1 = create(&s, json!({"name": "A1", "parent_id": a.0, "tier": 2}));
        let b = create(&s, json!({"name": "B", "parent_id": lead.0, "tier": 2}));
        let other = create(&s, json!({"name": "Other", "tier": 2}));
        ids.insert("lead", lead);
        ids.insert("a", a);
        ids.insert("a1", a1);
        ids.insert("b", b);
        ids.insert("other", other);
        for (who, (uid, name)) in &ids {
            give_token(&s, uid, name, &format!("tok-{who}"));
        }
        Org { s, ids }
    }

    fn id(&self, who: &str) -> &str {
        &self.ids[who].0
    }

    fn name(&self, who: &str) -> &str {
        &self.ids[who].1
    }

    /// A call with the token of workspace `who`.
    fn as_ws(&self, who: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        call(&self.s, Some(&format!("tok-{who}")), method, path, body)
    }
}

#[test]
fn a_workspace_token_changes_presentation_only_never_tier_runtime_parent_or_role() {
    let o = Org::new(&[]);
    let path = format!("/workspaces/{}", o.id("a"));
    let before = record(&o.s, o.name("a"));
    for body in [
        json!({"tier": 4}),
        json!({"runtime": "claude-code"}),
        json!({"parent_id": null}),
        json!({"parent_id": o.id("other")}),
        json!({"role": "root"}),
        json!({"image": "attacker/image"}),
        json!({"x": 1, "tier": 4}),
    ] {
        let (code, b) = o.as_ws("a", "PATCH", &path, body.clone());
        assert_eq!(code, 403, "{body}: {b}");
        assert!(
            b["error"].as_str().unwrap_or("").contains("admin token"),
            "{b}"
        );
    }
    let after = record(&o.s, o.name("a"));
    assert_eq!(after["spec"], before["spec"], "nothing was written");
    assert_eq!(after["spec"]["tier"], 2);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    // The admin token still may.
    let (code, b) = admin(&o.s, "PATCH", &path, json!({"tier": 3}));
    assert_eq!(code, 200, "{b}");
    assert_eq!(record(&o.s, o.name("a"))["spec"]["tier"], 3);

    // Presentation is its own to change.
    let (code, b) = o.as_ws(
        "a",
        "PATCH",
        &path,
        json!({"x": 12.5, "y": -3, "collapsed": true, "name": "Analyst A"}),
    );
    assert_eq!((code, b), (200, json!({"status": "updated"})));
    let r = record(&o.s, o.name("a"));
    assert_eq!(r["spec"]["displayName"], "Analyst A");
    assert_eq!(r["metadata"]["annotations"]["molecule.ai/canvas-x"], "12.5");
    assert_eq!(
        r["metadata"]["annotations"]["molecule.ai/canvas-collapsed"],
        "true"
    );
    // Another workspace's presentation is not its own, even a child's.
    let (code, b) = o.as_ws(
        "lead",
        "PATCH",
        &format!("/workspaces/{}", o.id("a")),
        json!({"x": 1}),
    );
    assert_eq!(code, 403, "{b}");
}

#[test]
fn a_workspace_token_lists_and_reads_only_what_its_workspace_may_talk_to() {
    let o = Org::new(&[]);
    let ids = |v: &Value| -> std::collections::BTreeSet<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|w| w["id"].as_str().expect("id").to_string())
            .collect()
    };
    let want = |who: &[&str]| -> std::collections::BTreeSet<String> {
        who.iter().map(|w| o.id(w).to_string()).collect()
    };
    // a1: itself, its parent a and its ancestor lead; not its uncle b nor the other root.
    let (code, list) = o.as_ws("a1", "GET", "/workspaces", Value::Null);
    assert_eq!(code, 200, "{list}");
    assert_eq!(ids(&list), want(&["a1", "a", "lead"]));
    // b: itself, its parent and its sibling a; not its nephew a1, nor the other root.
    let (_, list) = o.as_ws("b", "GET", "/workspaces", Value::Null);
    assert_eq!(ids(&list), want(&["b", "a", "lead"]));
    // lead: everyone (descendants, and other as a fellow root).
    let (_, list) = o.as_ws("lead", "GET", "/workspaces", Value::Null);
    assert_eq!(ids(&list), want(&["lead", "a", "a1", "b", "other"]));
    // other: itself and the other root.
    let (_, list) = o.as_ws("other", "GET", "/workspaces", Value::Null);
    assert_eq!(ids(&list), want(&["other", "lead"]));
    // The admin sees all.
    let (_, list) = admin(&o.s, "GET", "/workspaces", Value::Null);
    assert_eq!(ids(&list), want(&["lead", "a", "a1", "b", "other"]));

    // Details follow the same rule; what is out of reach is 403, like what does not exist.
    for (who, target, code) in [
        ("a1", "lead", 200),
        ("a", "b", 200),
        ("lead", "a1", 200),
        ("a1", "b", 403),
        ("a1", "other", 403),
        ("other", "a", 403),
    ] {
        let (got, b) = o.as_ws(
            who,
            "GET",
            &format!("/workspaces/{}", o.id(target)),
            Value::Null,
        );
        assert_eq!(got, code, "{who} reads {target}: {b}");
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        o.as_ws(
            "lead",
            "GET",
            &format!("/workspaces/{unknown}"),
            Value::Null
        )
        .0,
        403
    );
    // Events: its own only, even of a workspace it may talk to.
    assert_eq!(
        o.as_ws("a", "GET", &format!("/events/{}", o.id("a")), Value::Null)
            .0,
        200
    );
    assert_eq!(
        o.as_ws(
            "a",
            "GET",
            &format!("/events/{}", o.id("lead")),
            Value::Null
        )
        .0,
        403
    );
}

#[test]
fn a_workspace_token_deletes_its_own_workspace_and_no_other() {
    let o = Org::new(&[]);
    // Not its parent, sibling or child.
    for target in ["lead", "b", "a1"] {
        let (code, b) = o.as_ws(
            "a",
            "DELETE",
            &format!("/workspaces/{}?confirm=true", o.id(target)),
            Value::Null,
        );
        assert_eq!(code, 403, "a deletes {target}: {b}");
    }
    // Itself, with the children confirmation as for the admin.
    let (code, b) = o.as_ws(
        "a",
        "DELETE",
        &format!("/workspaces/{}", o.id("a")),
        Value::Null,
    );
    assert_eq!(code, 409, "{b}");
    assert_eq!(b["error"], "confirmation_required");
    let (code, b) = o.as_ws(
        "a",
        "DELETE",
        &format!("/workspaces/{}?confirm=true", o.id("a")),
        Value::Null,
    );
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["cascade_deleted"], 1);
    assert!(eventually(10, || {
        let (code, _) = admin(
            &o.s,
            "GET",
            &format!("/workspaces/{}", o.id("a")),
            Value::Null,
        );
        code == 404
    }));
    assert_eq!(
        admin(
            &o.s,
            "GET",
            &format!("/workspaces/{}", o.id("lead")),
            Value::Null
        )
        .0,
        200
    );
}

#[test]
fn lifecycle_secrets_and_creation_need_the_admin_token() {
    let o = Org::new(&[]);
    let a = o.id("a").to_string();
    for (method, path, body) in [
        ("POST", format!("/workspaces/{a}/restart"), Value::Null),
        ("POST", format!("/workspaces/{a}/pause"), Value::Null),
        ("POST", format!("/workspaces/{a}/resume"), Value::Null),
        ("GET", format!("/workspaces/{a}/secrets"), Value::Null),
        (
            "POST",
            format!("/workspaces/{a}/secrets"),
            json!({"key": "LD_PRELOAD", "value": "/tmp/x.so"}),
        ),
        (
            "DELETE",
            format!("/workspaces/{a}/secrets/API_KEY"),
            Value::Null,
        ),
        (
            "POST",
            "/workspaces".to_string(),
            json!({"name": "Mine", "tier": 4}),
        ),
        ("GET", "/settings/secrets".to_string(), Value::Null),
        ("GET", format!("/workspaces/{a}/channels"), Value::Null),
        (
            "PATCH",
            format!("/workspaces/{a}/channels/0"),
            json!({"enabled": false}),
        ),
        ("GET", "/events".to_string(), Value::Null),
        ("GET", "/plugins".to_string(), Value::Null),
        ("GET", "/canvas/viewport".to_string(), Value::Null),
    ] {
        let (code, b) = o.as_ws("a", method, &path, body);
        assert_eq!(code, 403, "{method} {path}: {b}");
    }
    let r = record(&o.s, o.name("a"));
    assert!(
        r["metadata"]["annotations"]["molecule.ai/restartedAt"].is_null(),
        "{r}"
    );
    assert_ne!(r["spec"]["paused"], true);
    // The admin token does them.
    let (code, b) = admin(
        &o.s,
        "POST",
        &format!("/workspaces/{a}/restart"),
        Value::Null,
    );
    assert_eq!(code, 200, "{b}");
}

#[test]
fn a_workspace_token_installs_git_plugins_only_from_allowed_hosts() {
    // The list as the environment gives it (the flag is --plugin-git-hosts).
    let o = Org::new(&[(
        "MOLECULE_PLUGIN_GIT_HOSTS",
        "git.allowed.example, git.internal:8443",
    )]);
    let path = format!("/workspaces/{}/plugins", o.id("a"));
    for source in [
        "https://169.254.169.254/latest/meta-data.git",
        "https://127.0.0.1:6443/org/plugin.git",
        "https://git.allowed.example.evil.io/org/plugin.git",
        "https://git.allowed.example:8080/org/plugin.git",
        "https://git.internal/org/plugin.git",
    ] {
        let (code, b) = o.as_ws(
            "a",
            "POST",
            &path,
            json!({"source": source, "track": "tag:v1"}),
        );
        assert_eq!(code, 403, "{source}: {b}");
    }
    let installs = || {
        let (code, b) = admin(&o.s, "GET", &path, Value::Null);
        assert_eq!(code, 200, "{b}");
        b.as_array().expect("array").len()
    };
    assert_eq!(installs(), 0, "nothing was recorded");

    // An allowed host is taken, and the record says a workspace asked for it.
    let (code, b) = o.as_ws(
        "a",
        "POST",
        &path,
        json!({"source": "https://git.allowed.example/org/allowed-plugin.git", "track": "tag:v1"}),
    );
    assert_eq!(code, 201, "{b}");
    let k8s = b["k8s_name"].as_str().expect("name").to_string();
    let (code, rec) = o.s.http(
        "GET",
        &format!("{API}/namespaces/default/plugininstalls/{k8s}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{rec}");
    assert_eq!(
        j(&rec)["metadata"]["labels"]["molecule.ai/requested-by"],
        "workspace"
    );
    // The local registry needs no allowlist.
    let (code, b) = o.as_ws("a", "POST", &path, json!({"source": "local://skills-pack"}));
    assert_eq!(code, 201, "{b}");
    // The admin token is not limited.
    let (code, b) = admin(
        &o.s,
        "POST",
        &format!("/workspaces/{}/plugins", o.id("b")),
        json!({"source": "https://git.elsewhere.example/org/p.git", "track": "tag:v1"}),
    );
    assert_eq!(code, 201, "{b}");
}

#[test]
fn with_no_allowlist_a_workspace_token_installs_local_plugins_only() {
    let o = Org::new(&[]);
    let path = format!("/workspaces/{}/plugins", o.id("a"));
    let (code, b) = o.as_ws(
        "a",
        "POST",
        &path,
        json!({"source": "https://github.com/org/plugin.git", "track": "tag:v1"}),
    );
    assert_eq!(code, 403, "{b}");
    let (code, b) = o.as_ws("a", "POST", &path, json!({"source": "local://skills-pack"}));
    assert_eq!(code, 201, "{b}");
}

#[test]
fn plugin_download_checks_the_token_before_saying_not_found_and_validates_the_path() {
    // The download route answers once the plugin controller runs.
    let s = Server::start_with(Backend::Sqlite, &["--controllers", "plugin"]);
    let ns = format!("dl-{}", molecule::util::random_suffix(6));
    let (code, b) = s.http(
        "POST",
        "/api/v1/namespaces",
        Some("application/json"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 201, "{b}");
    for name in ["mine", "theirs"] {
        let (code, b) = s.http(
            "POST",
            &format!("{API}/namespaces/{ns}/workspaces"),
            Some("application/json"),
            json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace",
                   "metadata": {"name": name}, "spec": {"runtime": "external", "url": "https://agent.example.com/a2a"}})
            .to_string()
            .as_bytes(),
        );
        assert_eq!(code, 201, "{b}");
        let (code, b) = s.http(
            "PATCH",
            &format!("{API}/namespaces/{ns}/workspaces/{name}/status"),
            Some("application/merge-patch+json"),
            json!({"status": {"tokenHash": sha(&format!("tok-{name}"))}})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(code, 200, "{b}");
    }
    let (code, b) = s.http(
        "POST",
        &format!("{API}/namespaces/{ns}/plugininstalls"),
        Some("application/json"),
        json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "PluginInstall",
               "metadata": {"name": "theirs-pack"},
               "spec": {"workspaceRef": {"name": "theirs"}, "source": "local://skills-pack"}})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(code, 201, "{b}");
    let dl = |ns: &str, name: &str, token: Option<&str>| {
        let path = format!("/registry/plugins/{ns}/{name}/download");
        let mut last = (0, String::new());
        // 503 until the plugin controller has started.
        eventually(30, || {
            last = s.http_as("GET", &path, token, b"");
            last.0 != 503
        });
        last
    };
    // No token, or a token of nobody: 401, whether or not the record exists.
    assert_eq!(dl(&ns, "missing", None).0, 401);
    let (code, b) = dl(&ns, "missing", Some("not-a-token"));
    assert_eq!(code, 401, "a bad token learns nothing: {b}");
    assert_eq!(dl(&ns, "theirs-pack", Some("not-a-token")).0, 401);
    assert_eq!(dl("nowhere", "missing", Some("not-a-token")).0, 401);
    // A workspace's token: 404 for what is missing and for another workspace's install alike.
    assert_eq!(dl(&ns, "missing", Some("tok-mine")).0, 404);
    let (code, b) = dl(&ns, "theirs-pack", Some("tok-mine"));
    assert_eq!(code, 404, "{b}");
    // The path: a DNS label namespace, a DNS subdomain name; 400 otherwise.
    for (bad_ns, bad_name) in [
        ("Bad_NS", "theirs-pack"),
        (ns.as_str(), "Bad_Name"),
        (ns.as_str(), "x..y"),
        ("a.b", "theirs-pack"),
        (ns.as_str(), &"n".repeat(254)),
    ] {
        let (code, b) = dl(bad_ns, bad_name, Some("tok-theirs"));
        assert_eq!(code, 400, "{bad_ns}/{bad_name}: {b}");
    }
}

/// chromedriver on a free port, killed on drop.
struct Driver(std::process::Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn driver() -> Driver {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let child = std::process::Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let d = Driver(child, port);
    assert!(
        eventually(20, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "chromedriver did not listen"
    );
    d
}

async fn js(c: &fantoccini::Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or(Value::Null)
}

async fn conn_state_becomes(c: &fantoccini::Client, want: &str) -> bool {
    for _ in 0..100 {
        if js(c, "return document.getElementById('conn').dataset.state").await == want {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canvas_keeps_the_admin_token_for_the_browser_session_only() {
    let s = tokio::task::spawn_blocking(|| Server::start(Backend::Sqlite))
        .await
        .expect("serve");
    let token = s.token();
    let d = driver();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium",
               "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    let c =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", d.1))
            .await
            .expect("WebDriver session");
    let base = format!("http://127.0.0.1:{}/", s.port);

    // Signed in through the link `molecule canvas-url` prints.
    c.goto(&format!("{base}#token={token}"))
        .await
        .expect("open");
    assert!(
        conn_state_becomes(&c, "connected").await,
        "the page did not connect"
    );
    assert_eq!(
        js(&c, "return localStorage.getItem('molecule.token')").await,
        Value::Null,
        "the token must not be kept in localStorage, where it outlives the session"
    );
    assert_eq!(
        js(&c, "return sessionStorage.getItem('molecule.token')").await,
        json!(token)
    );

    // A token an older page left in localStorage is not used, and is removed.
    js(
        &c,
        &format!(
            "sessionStorage.clear(); localStorage.setItem('molecule.token', {}); return 1",
            json!(token)
        ),
    )
    .await;
    c.goto(&base).await.expect("reload");
    assert!(
        conn_state_becomes(&c, "disconnected").await,
        "a stale token signed the page in"
    );
    assert_eq!(
        js(&c, "return document.getElementById('login').hidden").await,
        json!(false)
    );
    assert_eq!(
        js(&c, "return localStorage.getItem('molecule.token')").await,
        Value::Null
    );
    let _ = c.close().await;
}
