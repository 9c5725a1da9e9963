//! The canvas page in a real browser: Debian's chromium driven through chromedriver
//! (WebDriver, `fantoccini`). One test runs the whole product — `molecule serve` with its
//! controllers on the real Docker engine — loads the page, applies `examples/team.yaml` with
//! kubectl, watches a node turn Online, clicks Restart and sees it go Provisioning → Online,
//! checks the delete confirmation and the disconnected state, and saves the screenshot the
//! README shows. A second one loads 200 workspaces and checks the page stays responsive.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Server, cleanup, docker, eventually, text};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process, killed on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn driver() -> Driver {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,860", "--hide-scrollbars", "--force-device-scale-factor=1"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.1))
        .await
        .expect("WebDriver session")
}

/// `[name, status, history, hidden]` of every node on the page.
async fn nodes(c: &Client) -> Vec<(String, String, String)> {
    let v = c
        .execute(
            "return [...document.querySelectorAll('.node')].map(n => [n.dataset.name || '', n.dataset.status || '', n.dataset.history || '']);",
            vec![],
        )
        .await
        .unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let s = |i: usize| n[i].as_str().unwrap_or("").to_string();
            (s(0), s(1), s(2))
        })
        .collect()
}

async fn status_of(c: &Client, name: &str) -> Option<(String, String)> {
    nodes(c)
        .await
        .into_iter()
        .find(|n| n.0 == name)
        .map(|n| (n.1, n.2))
}

async fn until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or(Value::Null)
}

fn kubectl_ok(s: &Server, args: &[&str]) {
    let o = s.kubectl("1.33", args);
    assert!(o.status.success(), "kubectl {args:?}:\n{}", text(&o));
}

fn screenshot_path() -> std::path::PathBuf {
    std::env::var_os("MOLECULE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("canvas.png"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canvas_shows_the_org_live_and_restarts_a_workspace() {
    let _g = BROWSER.lock().await;
    let mut s = tokio::task::spawn_blocking(|| {
        Server::start_with(
            Backend::Sqlite,
            &[
                "--controllers",
                "all",
                "--agent-heartbeat-seconds",
                "1",
                "--heartbeat-timeout-seconds",
                "20",
                "--reap-interval-seconds",
                "5",
            ],
        )
    })
    .await
    .expect("serve");
    let ns = format!("canvas-{}", molecule::util::random_suffix(6));
    kubectl_ok(&s, &["create", "namespace", &ns]);
    let d = driver();
    let c = browser(&d).await;
    c.goto(&format!("http://127.0.0.1:{}/#token={}", s.port, s.token()))
        .await
        .expect("open the canvas");
    until(15, "the live stream", || async {
        js(&c, "return document.getElementById('conn').dataset.state").await == "connected"
    })
    .await;
    assert!(
        !js(&c, "return location.hash")
            .await
            .as_str()
            .unwrap_or("")
            .contains("token"),
        "the token must leave the address bar"
    );
    // ADR 0038: kept for the browser session only.
    assert_eq!(
        js(&c, "return [localStorage.getItem('molecule.token'), sessionStorage.getItem('molecule.token')]").await,
        json!([null, s.token()]),
        "the token lives in sessionStorage, not localStorage"
    );

    // The example org appears as it is applied with kubectl.
    let root = env!("CARGO_MANIFEST_DIR");
    kubectl_ok(
        &s,
        &[
            "apply",
            "-n",
            &ns,
            "-f",
            &format!("{root}/examples/secret.yaml"),
            "-f",
            &format!("{root}/examples/team.yaml"),
        ],
    );
    until(10, "the three workspaces of examples/team.yaml", || async {
        let mut names: Vec<String> = nodes(&c).await.into_iter().map(|n| n.0).collect();
        names.sort();
        names == ["Analyst", "Research Lead", "Writer"]
    })
    .await;
    // The tree follows parentRef: both children hang below the lead.
    let tops = js(&c, "return Object.fromEntries([...document.querySelectorAll('.node')].map(n => [n.dataset.name, n.offsetTop]))").await;
    assert!(
        tops["Analyst"].as_f64() > tops["Research Lead"].as_f64()
            && tops["Writer"].as_f64() == tops["Analyst"].as_f64(),
        "{tops}"
    );
    assert!(
        js(&c, "return document.querySelectorAll('#edges path').length").await == 2,
        "two edges"
    );

    // One node turns Online (the controller provisions a real container).
    let deadline = Instant::now() + Duration::from_secs(240);
    while status_of(&c, "Research Lead")
        .await
        .is_none_or(|s| s.0 != "online")
    {
        if Instant::now() > deadline {
            let o = s.kubectl("1.33", &["get", "ws", "-n", &ns, "-o", "wide"]);
            let log = s.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "Research Lead is not online on the page ({:?}); the records:\n{}\nserver log, newest first:\n{}",
                status_of(&c, "Research Lead").await,
                text(&o),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, history) = status_of(&c, "Research Lead").await.expect("lead");
    assert!(history.starts_with("provisioning"), "{history}");
    let onlines_before = history.matches("online").count();

    // Restart from the detail panel: provisioning, then online again.
    c.find(Locator::Css(".node[data-name='Research Lead']"))
        .await
        .expect("lead node")
        .click()
        .await
        .expect("select");
    until(5, "the detail panel", || async {
        js(&c, "return !document.getElementById('detail').hidden && document.getElementById('d-name').textContent").await == "Research Lead"
    })
    .await;
    c.find(Locator::Id("btn-restart"))
        .await
        .expect("restart button")
        .click()
        .await
        .expect("restart");
    until(
        120,
        "Research Lead to go through provisioning back to online",
        || async {
            status_of(&c, "Research Lead").await.is_some_and(|(st, h)| {
                let tail: Vec<&str> = h.split(',').collect();
                st == "online"
                    && h.matches("online").count() > onlines_before
                    && tail
                        .windows(3)
                        .any(|w| w == ["online", "provisioning", "online"])
            })
        },
    )
    .await;
    let record = s.kubectl("1.33", &["get", "ws", "lead", "-n", &ns, "-o", "json"]);
    let record: Value = serde_json::from_slice(&record.stdout).expect("record");
    assert_eq!(
        record["metadata"]["annotations"]["molecule.ai/restartedAt"],
        record["status"]["restartedAt"],
        "the controller acted on the canvas's restart"
    );
    // The events list of the panel shows the transitions.
    until(10, "recent events in the panel", || async {
        js(
            &c,
            "return document.querySelectorAll('#d-events li b').length",
        )
        .await
        .as_u64()
        .unwrap_or(0)
            > 0
    })
    .await;

    // The whole team online, the lead selected: the README's screenshot.
    until(180, "every workspace online", || async {
        let n = nodes(&c).await;
        n.len() == 3 && n.iter().all(|x| x.1 == "online")
    })
    .await;
    js(
        &c,
        "document.getElementById('toasts').textContent = ''; return true",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = screenshot_path();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("screenshot dir");
    }
    std::fs::write(&out, &png).expect("write screenshot");
    println!("screenshot: {} ({} bytes)", out.display(), png.len());

    // Delete asks first and lists the children; cancelling deletes nothing.
    c.find(Locator::Id("btn-delete"))
        .await
        .expect("delete")
        .click()
        .await
        .expect("open confirm");
    let listed = js(
        &c,
        "return [...document.querySelectorAll('#c-children li')].map(l => l.textContent)",
    )
    .await;
    let listed = listed.to_string();
    assert!(
        listed.contains("Analyst") && listed.contains("Writer"),
        "{listed}"
    );
    js(
        &c,
        "document.getElementById('confirm-dialog').close('cancel'); return true",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(nodes(&c).await.len(), 3);

    // The server goes away: the page says so, then reconnects and reloads.
    tokio::task::block_in_place(|| s.kill9());
    until(15, "the disconnected state", || async {
        js(&c, "return document.getElementById('conn').dataset.state + ' ' + document.body.classList.contains('disconnected')").await == "disconnected true"
    })
    .await;
    let banner = js(&c, "return document.getElementById('conn').textContent").await;
    assert!(
        banner.as_str().unwrap_or("").contains("reconnecting in"),
        "{banner}"
    );
    tokio::task::block_in_place(|| s.spawn());
    until(60, "the reconnection", || async {
        js(&c, "return document.getElementById('conn').dataset.state").await == "connected"
    })
    .await;
    until(10, "the org after the reconnection", || async {
        nodes(&c).await.len() == 3
    })
    .await;

    c.close().await.expect("close the browser");
    drop(d);
    kubectl_ok(&s, &["delete", "ws", "--all", "-n", &ns, "--timeout=120s"]);
    let filter = format!("label=molecule.ai/namespace={ns}");
    assert!(eventually(60, || docker(&[
        "ps", "-aq", "--filter", &filter
    ])
    .1
    .is_empty()));
    cleanup(&ns);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canvas_stays_usable_with_200_workspaces() {
    let _g = BROWSER.lock().await;
    let s = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| Server::start(Backend::Sqlite))
            .await
            .expect("serve"),
    );
    // Ten teams of a lead and 19 members, written straight to the API.
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        for t in 0..10 {
            for m in 0..20 {
                let name = if m == 0 { format!("lead-{t}") } else { format!("t{t}-m{m}") };
                let mut spec = json!({"displayName": if m == 0 { format!("Lead {t}") } else { format!("Member {t}.{m}") }, "role": "agent"});
                if m > 0 {
                    spec["parentRef"] = json!({"name": format!("lead-{t}")});
                }
                let body = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Workspace", "metadata": {"name": name}, "spec": spec});
                let (code, b) = s2.http(
                    "POST",
                    "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces",
                    Some("application/json"),
                    body.to_string().as_bytes(),
                );
                assert_eq!(code, 201, "{b}");
            }
        }
    })
    .await
    .expect("create");
    let d = driver();
    let c = browser(&d).await;
    let opened = Instant::now();
    c.goto(&format!("http://127.0.0.1:{}/#token={}", s.port, s.token()))
        .await
        .expect("open");
    until(20, "200 nodes", || async { nodes(&c).await.len() == 200 }).await;
    let load = opened.elapsed();
    // Every workspace changes status at once; the page keeps up.
    let s3 = s.clone();
    let changed = Instant::now();
    tokio::task::spawn_blocking(move || {
        for t in 0..10 {
            for m in 0..20 {
                let name = if m == 0 {
                    format!("lead-{t}")
                } else {
                    format!("t{t}-m{m}")
                };
                let (code, b) = s3.http(
                    "PATCH",
                    &format!(
                        "/apis/molecule.ai/v1alpha1/namespaces/default/workspaces/{name}/status"
                    ),
                    Some("application/merge-patch+json"),
                    br#"{"status":{"phase":"Online"}}"#,
                );
                assert_eq!(code, 200, "{b}");
            }
        }
    })
    .await
    .expect("status");
    until(20, "200 online nodes", || async {
        nodes(&c).await.iter().filter(|n| n.1 == "online").count() == 200
    })
    .await;
    let live = changed.elapsed();
    // Interaction stays immediate: select a node, filter the chart.
    let clicked = Instant::now();
    c.find(Locator::Css(".node[data-name='Member 7.13']"))
        .await
        .expect("node")
        .click()
        .await
        .expect("click");
    until(5, "the detail panel", || async {
        js(&c, "return document.getElementById('d-name').textContent").await == "Member 7.13"
    })
    .await;
    let click = clicked.elapsed();
    c.find(Locator::Id("filter"))
        .await
        .expect("filter")
        .send_keys("Member 3.")
        .await
        .expect("type");
    until(5, "the filter", || async {
        js(
            &c,
            "return document.querySelectorAll('.node:not(.dim)').length",
        )
        .await
            == 19
    })
    .await;
    let stats = js(&c, "return window.moleculeCanvasStats").await;
    let max_render = stats["maxRenderMs"].as_f64().unwrap_or(f64::MAX);
    println!(
        "200 workspaces: page load → 200 nodes {load:?}; 200 status changes → all shown {live:?}; click → panel {click:?}; renders {} (max {max_render:.1} ms)",
        stats["renders"]
    );
    // The first render builds 200 nodes; later ones only update them.
    let last_render = stats["lastRenderMs"].as_f64().unwrap_or(f64::MAX);
    assert!(
        max_render < 1000.0 && last_render < 250.0,
        "renders too slow for 200 workspaces: {stats}"
    );
    c.close().await.expect("close");
}
