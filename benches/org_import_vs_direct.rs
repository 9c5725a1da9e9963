//! Benchmark of imports against applying the same Workspaces directly, both to all Online on
//! Docker. Target: each ratio ≤ 1.05.
//!
//! - **Org template** (ADR 0047): an `OrgImport` of `examples/org-templates/research-lab` (five
//!   workspaces on three levels) against the Workspaces that import made (their specs, parents
//!   by name), applied with `kubectl apply` in another namespace.
//! - **Bundle** (ADR 0055): `POST /bundles/import` of a 12-workspace tree
//!   (`tests/fixtures/bundles/team.bundle.json`: a PM, three leads, eight members, echo agents
//!   with a system prompt and a skill each) against the specs `teams::bundle::plan` makes of the
//!   bundle, applied with `kubectl apply`.
//!
//! Run with `cargo bench --bench org_import_vs_direct` (a release build; needs Docker).
//! `MOLECULE_BENCH_BUNDLE_ROUNDS=N` (default 3) runs N rounds, alternating which side goes first;
//! the medians are compared.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Backend, Installation, Server};
use serde_json::{Value, json};

const API: &str = "/apis/molecule.ai/v1alpha1";
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/bundles/team.bundle.json"
);

fn workspaces(s: &Server, ns: &str) -> Vec<Value> {
    let (code, b) = s.http(
        "GET",
        &format!("{API}/namespaces/{ns}/workspaces"),
        None,
        b"",
    );
    if code != 200 {
        return vec![];
    }
    serde_json::from_str::<Value>(&b).unwrap_or(Value::Null)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `n` Workspaces of `ns` are Online; the time since `t`.
fn wait_online(s: &Server, ns: &str, n: usize, t: Instant) -> Duration {
    while t.elapsed() < Duration::from_secs(900) {
        let ws = workspaces(s, ns);
        if ws.len() == n && ws.iter().all(|w| w["status"]["phase"] == "Online") {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{ns}: the workspaces did not come Online; log:\n{}",
        common::tail(s)
    );
}

/// Waits until `ns` holds no Workspaces and no PluginInstalls (garbage collection of an
/// import's children included), so the next round starts from the same state.
fn wait_gone(s: &Server, ns: &str) {
    let t = Instant::now();
    let plugins = |s: &Server| {
        let (code, b) = s.http(
            "GET",
            &format!("{API}/namespaces/{ns}/plugininstalls"),
            None,
            b"",
        );
        code == 200
            && serde_json::from_str::<Value>(&b).unwrap_or(Value::Null)["items"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    };
    while t.elapsed() < Duration::from_secs(600) && (!workspaces(s, ns).is_empty() || plugins(s)) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Workspaces of the bundle as one `kind: List` for `kubectl apply`: the same specs the
/// import creates, named `d<i>`, parents by those names.
fn direct_manifests(bundle: &molecule::teams::bundle::Bundle) -> String {
    let plan = molecule::teams::bundle::plan(bundle).expect("the fixture plans");
    let items: Vec<Value> = plan
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut spec = serde_json::to_value(&p.spec).expect("spec");
            if let Some(parent) = p.parent {
                spec["parentRef"] = json!({"name": format!("d{parent}")});
            }
            json!({
                "apiVersion": "molecule.ai/v1alpha1",
                "kind": "Workspace",
                "metadata": {"name": format!("d{i}")},
                "spec": spec,
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn import(s: &Server, body: &str, n: usize) -> Duration {
    let t = Instant::now();
    let (code, r) = s.http_as("POST", "/bundles/import", Some(&s.token()), body.as_bytes());
    assert_eq!(code, 201, "{r}");
    let online = wait_online(s, "default", n, t);
    let root: Value = serde_json::from_str(&r).expect("answer");
    let id = root["workspace_id"].as_str().expect("workspace_id");
    let (code, b) = s.http_as(
        "DELETE",
        &format!("/workspaces/{id}?confirm=true"),
        Some(&s.token()),
        b"",
    );
    assert_eq!(code, 200, "{b}");
    wait_gone(s, "default");
    online
}

fn direct(s: &Server, manifests: &str, n: usize) -> Duration {
    let t = Instant::now();
    let o = s.kubectl_stdin(
        "1.33",
        &["apply", "-n", "plain", "-f", "-"],
        Some(manifests),
    );
    assert!(o.status.success(), "{}", common::text(&o));
    let online = wait_online(s, "plain", n, t);
    let o = s.kubectl(
        "1.33",
        &[
            "delete",
            "ws,plugininstalls",
            "--all",
            "-n",
            "plain",
            "--wait=false",
        ],
    );
    assert!(o.status.success(), "{}", common::text(&o));
    wait_gone(s, "plain");
    online
}

const ORG_IMPORT: &str = "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: research-lab\nspec:\n  source:\n    dir: research-lab\n  mode: reconcile\n";

/// `OrgImport` of research-lab in `org` → all `n` Online; deletes it again.
fn org_import(s: &Server, n: usize) -> Duration {
    let t = Instant::now();
    common::apply(s, "org", ORG_IMPORT);
    let online = wait_online(s, "org", n, t);
    let o = s.kubectl(
        "1.33",
        &["delete", "orgimport", "research-lab", "-n", "org"],
    );
    assert!(o.status.success(), "{}", common::text(&o));
    wait_gone(s, "org");
    online
}

/// The Workspaces the org import made, as one `kind: List` of the same specs (no org labels,
/// no owner), with the Secrets they read (the template's `.env` files) and the PluginInstalls of
/// their `plugins:`, each before its Workspace: what a user would apply by hand.
fn org_manifests(s: &Server) -> (String, usize) {
    let (code, b) = s.http("GET", "/api/v1/namespaces/org/secrets", None, b"");
    assert_eq!(code, 200, "{b}");
    let secrets: Vec<Value> = serde_json::from_str::<Value>(&b).expect("secrets")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|x| {
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": x["metadata"]["name"]},
                "type": x["type"],
                "data": x["data"],
            })
        })
        .collect();
    let (code, b) = s.http(
        "GET",
        &format!("{API}/namespaces/org/plugininstalls"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{b}");
    let plugins: Vec<Value> = serde_json::from_str::<Value>(&b).expect("plugininstalls")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            json!({
                "apiVersion": "molecule.ai/v1alpha1",
                "kind": "PluginInstall",
                "metadata": {"name": p["metadata"]["name"]},
                "spec": p["spec"],
            })
        })
        .collect();
    let workspaces: Vec<Value> = workspaces(s, "org")
        .iter()
        .map(|w| {
            json!({
                "apiVersion": "molecule.ai/v1alpha1",
                "kind": "Workspace",
                "metadata": {"name": w["metadata"]["name"]},
                "spec": w["spec"],
            })
        })
        .collect();
    let n = workspaces.len();
    // Each Workspace's PluginInstalls before it, as ADR 0056 advises for applying by hand: its
    // first start then carries its plugins, as an imported workspace's does (the import
    // announces them and the first start waits for their records).
    let mut items: Vec<Value> = secrets;
    for w in workspaces {
        let name = w["metadata"]["name"].clone();
        items.extend(
            plugins
                .iter()
                .filter(|p| p["spec"]["workspaceRef"]["name"] == name)
                .cloned(),
        );
        items.push(w);
    }
    (
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
        n,
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let text = std::fs::read_to_string(FIXTURE).expect("fixture");
    let bundle: molecule::teams::bundle::Bundle = serde_json::from_str(&text).expect("bundle");
    let n = molecule::teams::bundle::plan(&bundle).expect("plan").len();
    let manifests = direct_manifests(&bundle);
    let rounds: usize = std::env::var("MOLECULE_BENCH_BUNDLE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);

    let installation = Installation(Server::start_with(
        Backend::Sqlite,
        &["--controllers", "all", "--agent-heartbeat-seconds", "2"],
    ));
    let s = &*installation;
    // Warm-up: the echo image is built once, kubectl's discovery cache filled.
    common::apply(s, "warm", &common::ws_yaml("warm", ""));
    wait_online(s, "warm", 1, Instant::now());
    let _ = s.kubectl("1.33", &["delete", "ws", "--all", "-n", "warm"]);
    wait_gone(s, "warm");

    // The org template: one import first to learn the Workspaces it makes.
    common::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/org-templates/research-lab"),
        &s.data_dir().join("org-templates/research-lab"),
    );
    common::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugins/registry"),
        &s.data_dir().join("plugins"),
    );
    common::apply(s, "org", ORG_IMPORT);
    let t = Instant::now();
    while workspaces(s, "org").len() < 5 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_online(s, "org", 5, t);
    let (org_yaml, org_n) = org_manifests(s);
    let o = s.kubectl(
        "1.33",
        &["delete", "orgimport", "research-lab", "-n", "org"],
    );
    assert!(o.status.success(), "{}", common::text(&o));
    wait_gone(s, "org");
    let (mut org, mut org_direct) = (vec![], vec![]);
    for round in 0..rounds {
        if round % 2 == 0 {
            org.push(org_import(s, org_n));
            org_direct.push(direct(s, &org_yaml, org_n));
        } else {
            org_direct.push(direct(s, &org_yaml, org_n));
            org.push(org_import(s, org_n));
        }
        println!(
            "  org round {round}: import {:.2} s, direct {:.2} s",
            org[round].as_secs_f64(),
            org_direct[round].as_secs_f64()
        );
    }
    let (oi, od) = (median(org), median(org_direct));
    let org_ratio = oi.as_secs_f64() / od.as_secs_f64();

    let (mut imported, mut applied) = (vec![], vec![]);
    for round in 0..rounds {
        if round % 2 == 0 {
            imported.push(import(s, &text, n));
            applied.push(direct(s, &manifests, n));
        } else {
            applied.push(direct(s, &manifests, n));
            imported.push(import(s, &text, n));
        }
        println!(
            "  round {round}: import {:.2} s, direct {:.2} s",
            imported[round].as_secs_f64(),
            applied[round].as_secs_f64()
        );
    }
    let (i, d) = (median(imported), median(applied));
    let ratio = i.as_secs_f64() / d.as_secs_f64();
    println!("org_import_vs_direct bench: echo workspaces on Docker, {rounds} round(s)");
    println!(
        "  OrgImport research-lab ({org_n}) → all Online: {:8.2} s (median)",
        oi.as_secs_f64()
    );
    println!(
        "  kubectl apply ({org_n}) → all Online:          {:8.2} s (median; the same Workspaces)",
        od.as_secs_f64()
    );
    println!(
        "  org ratio {org_ratio:.3}  target ≤ 1.05: {}",
        if org_ratio <= 1.05 { "met" } else { "MISSED" }
    );
    println!(
        "  bundle import ({n}) → all Online:  {:8.2} s (median)",
        i.as_secs_f64()
    );
    println!(
        "  kubectl apply → all Online:  {:8.2} s (median; the same Workspaces)",
        d.as_secs_f64()
    );
    println!(
        "  ratio {ratio:.3}  target ≤ 1.05: {}",
        if ratio <= 1.05 { "met" } else { "MISSED" }
    );
}
