//! The real kubectl (1.27 and 1.33) end to end against `molecule serve`, on SQLite and Postgres.

mod common;

use common::{Backend, Server, eventually, text};

const WS: &str = r#"apiVersion: molecule.ai/v1alpha1
kind: Workspace
metadata:
  name: alpha
  labels:
    team: core
spec:
  runtime: echo
  tier: 2
"#;

fn ok(s: &Server, k: &str, args: &[&str]) -> String {
    let o = s.kubectl(k, args);
    assert!(
        o.status.success(),
        "kubectl {k} {args:?} failed:\n{}\nserver log:\n{}",
        text(&o),
        s.log()
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn ok_stdin(s: &Server, k: &str, args: &[&str], input: &str) -> String {
    let o = s.kubectl_stdin(k, args, Some(input));
    assert!(
        o.status.success(),
        "kubectl {k} {args:?} failed:\n{}\nserver log:\n{}",
        text(&o),
        s.log()
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn fails(s: &Server, k: &str, args: &[&str], input: Option<&str>) -> String {
    let o = s.kubectl_stdin(k, args, input);
    assert!(
        !o.status.success(),
        "kubectl {k} {args:?} should have failed:\n{}",
        text(&o)
    );
    text(&o)
}

fn scenario(s: &Server, k: &str) {
    // apply: create, unchanged, update.
    assert!(
        ok_stdin(s, k, &["apply", "-f", "-"], WS).contains("workspace.molecule.ai/alpha created")
    );
    assert!(ok_stdin(s, k, &["apply", "-f", "-"], WS).contains("unchanged"));
    let updated = WS.replace("tier: 2", "tier: 3");
    assert!(ok_stdin(s, k, &["apply", "-f", "-"], &updated).contains("configured"));
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "ws",
                "alpha",
                "-o",
                "jsonpath={.spec.tier} {.metadata.generation}"
            ]
        ),
        "3 2"
    );

    // apply --server-side: create, then change (generation bumps), then no-op.
    let beta = WS
        .replace("name: alpha", "name: beta")
        .replace("team: core", "team: edge");
    assert!(
        ok_stdin(s, k, &["apply", "--server-side", "-f", "-"], &beta)
            .contains("serverside-applied")
    );
    ok_stdin(
        s,
        k,
        &["apply", "--server-side", "-f", "-"],
        &beta.replace("tier: 2", "tier: 4"),
    );
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "ws",
                "beta",
                "-o",
                "jsonpath={.spec.tier} {.metadata.generation}"
            ]
        ),
        "4 2"
    );
    let rv_before = ok(
        s,
        k,
        &[
            "get",
            "ws",
            "beta",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    ok_stdin(
        s,
        k,
        &["apply", "--server-side", "-f", "-"],
        &beta.replace("tier: 2", "tier: 4"),
    );
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "ws",
                "beta",
                "-o",
                "jsonpath={.metadata.resourceVersion}"
            ]
        ),
        rv_before,
        "a no-op apply must not bump the RV"
    );

    // get: table, wide, yaml, jsonpath, label selector, category, short name.
    let table = ok(s, k, &["get", "workspaces"]);
    for col in ["NAME", "RUNTIME", "TIER", "PHASE", "READY", "AGE"] {
        assert!(
            table.lines().next().unwrap_or("").contains(col),
            "missing column {col} in {table}"
        );
    }
    assert!(table.contains("alpha") && table.contains("beta"));
    let wide = ok(s, k, &["get", "ws", "-o", "wide"]);
    assert!(
        wide.contains("PARENT") && wide.contains("IMAGE") && wide.contains("BACKEND"),
        "{wide}"
    );
    let yaml = ok(s, k, &["get", "ws", "alpha", "-o", "yaml"]);
    assert!(
        yaml.contains("uid:")
            && yaml.contains("creationTimestamp:")
            && yaml.contains("runtime: echo"),
        "{yaml}"
    );
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "ws",
                "-l",
                "team=core",
                "-o",
                "jsonpath={.items[*].metadata.name}"
            ]
        ),
        "alpha"
    );
    assert_eq!(
        ok(s, k, &["get", "ws", "-l", "team!=core", "-o", "name"]).trim(),
        "workspace.molecule.ai/beta"
    );
    // Chunked lists (limit/continue): one object per page, the Table and JSON paths alike.
    for out in [
        ok(s, k, &["get", "ws", "--chunk-size=1"]),
        ok(s, k, &["get", "ws", "--chunk-size=1", "-o", "name"]),
    ] {
        assert!(out.contains("alpha") && out.contains("beta"), "{out}");
    }
    assert!(
        ok(s, k, &["get", "molecule"]).contains("alpha"),
        "category get"
    );
    assert!(
        ok(s, k, &["get", "ws", "-A"]).contains("default"),
        "-A shows the namespace column"
    );

    // get -w sees a change. The Tier column shows status.tier, which only a controller fills, so
    // the watch prints spec.tier in a column of its own.
    let wfile = s.dir.path().join(format!("watch-{k}.txt"));
    let mut watcher = s.kubectl_spawn(
        k,
        &[
            "get",
            "ws",
            "alpha",
            "-w",
            "-o",
            "custom-columns=NAME:.metadata.name,RUNTIME:.spec.runtime,TIER:.spec.tier",
        ],
        &wfile,
    );
    assert!(
        eventually(10, || std::fs::read_to_string(&wfile)
            .unwrap_or_default()
            .contains("alpha")),
        "initial row"
    );
    ok(
        s,
        k,
        &[
            "patch",
            "ws",
            "alpha",
            "--type=merge",
            "-p",
            r#"{"spec":{"tier":1}}"#,
        ],
    );
    let seen = eventually(10, || {
        std::fs::read_to_string(&wfile)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("alpha"))
            .count()
            >= 2
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    let wtext = std::fs::read_to_string(&wfile).unwrap_or_default();
    assert!(seen, "get -w did not see the change:\n{wtext}");
    assert!(
        wtext
            .lines()
            .filter(|l| l.contains("alpha"))
            .any(|l| l.split_whitespace().nth(2) == Some("1")),
        "watch row shows tier 1:\n{wtext}"
    );

    // patch: merge, json, strategic (refused for custom kinds); label; annotate.
    ok(
        s,
        k,
        &[
            "patch",
            "ws",
            "alpha",
            "--type=merge",
            "-p",
            r#"{"spec":{"role":"researcher"}}"#,
        ],
    );
    ok(
        s,
        k,
        &[
            "patch",
            "ws",
            "alpha",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/tier","value":4}]"#,
        ],
    );
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "ws",
                "alpha",
                "-o",
                "jsonpath={.spec.role}/{.spec.tier}"
            ]
        ),
        "researcher/4"
    );
    let smp = fails(
        s,
        k,
        &["patch", "ws", "alpha", "-p", r#"{"spec":{"tier":2}}"#],
        None,
    );
    assert!(
        smp.contains("strategic-merge-patch")
            || smp.contains("UnsupportedMediaType")
            || smp.contains("not supported"),
        "{smp}"
    );
    ok(s, k, &["label", "ws", "alpha", "owner=ops"]);
    ok(s, k, &["annotate", "ws", "alpha", "note=hello"]);
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "ws",
                "alpha",
                "-o",
                "jsonpath={.metadata.labels.owner}/{.metadata.annotations.note}"
            ]
        ),
        "ops/hello"
    );

    // status subresource + wait --for=condition (the wait starts first and sees the change by watch).
    let mut wait = s.kubectl_spawn(
        k,
        &["wait", "--for=condition=Ready", "ws/beta", "--timeout=30s"],
        &s.dir.path().join(format!("wait-{k}.txt")),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let gen_ = ok(
        s,
        k,
        &["get", "ws", "beta", "-o", "jsonpath={.metadata.generation}"],
    );
    let status = format!(
        r#"{{"status":{{"phase":"Online","observedGeneration":{gen_},"conditions":[{{"type":"Ready","status":"True","reason":"Online","message":"agent registered","observedGeneration":{gen_}}}]}}}}"#
    );
    ok(
        s,
        k,
        &[
            "patch",
            "ws",
            "beta",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    );
    let waited = wait.wait().expect("wait");
    assert!(
        waited.success(),
        "kubectl wait failed: {}",
        std::fs::read_to_string(s.dir.path().join(format!("wait-{k}.txt"))).unwrap_or_default()
    );
    assert_eq!(
        ok(
            s,
            k,
            &["get", "ws", "beta", "-o", "jsonpath={.status.phase}"]
        ),
        "Online"
    );
    assert!(
        ok(s, k, &["get", "ws", "beta"]).contains("True"),
        "Ready column"
    );
    // Writes to the main resource keep status; status writes do not bump generation.
    ok(
        s,
        k,
        &[
            "patch",
            "ws",
            "beta",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Failed"}}"#,
        ],
    );
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "ws",
                "beta",
                "-o",
                "jsonpath={.status.phase} {.metadata.generation}"
            ]
        ),
        format!("Online {gen_}")
    );

    // describe shows Events (a core/v1 Event about alpha).
    let uid = ok(
        s,
        k,
        &["get", "ws", "alpha", "-o", "jsonpath={.metadata.uid}"],
    );
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: alpha.test{k}\ninvolvedObject:\n  apiVersion: molecule.ai/v1alpha1\n  kind: Workspace\n  name: alpha\n  namespace: default\n  uid: {uid}\nreason: Provisioned\nmessage: container started\ntype: Normal\nsource:\n  component: workspace-controller\nfirstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\ncount: 1\n"
    );
    ok_stdin(s, k, &["create", "-f", "-"], &event);
    let describe = ok(s, k, &["describe", "ws", "alpha"]);
    assert!(
        describe.contains("Provisioned") && describe.contains("container started"),
        "{describe}"
    );
    assert!(ok(s, k, &["get", "events"]).contains("Provisioned"));

    // explain.
    let explain = ok(s, k, &["explain", "workspace.spec"]);
    assert!(
        explain.contains("tier") && explain.contains("runtime"),
        "{explain}"
    );

    // Secrets: create, read back (base64), never stored in plain text.
    ok(
        s,
        k,
        &[
            "create",
            "secret",
            "generic",
            "api-keys",
            "--from-literal=OPENAI_API_KEY=sk-plaintext-canary-42",
        ],
    );
    assert_eq!(
        ok(
            s,
            k,
            &[
                "get",
                "secret",
                "api-keys",
                "-o",
                "jsonpath={.data.OPENAI_API_KEY}"
            ]
        ),
        "c2stcGxhaW50ZXh0LWNhbmFyeS00Mg=="
    );
    assert!(ok(s, k, &["get", "secrets"]).contains("api-keys"));

    // delete with a finalizer: Terminating until the finalizer goes.
    ok(
        s,
        k,
        &[
            "patch",
            "ws",
            "alpha",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["molecule.ai/test"]}}"#,
        ],
    );
    ok(s, k, &["delete", "ws", "alpha", "--wait=false"]);
    let ts = ok(
        s,
        k,
        &[
            "get",
            "ws",
            "alpha",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
    );
    assert!(!ts.is_empty(), "deletionTimestamp set");
    let refused = fails(
        s,
        k,
        &[
            "patch",
            "ws",
            "alpha",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["molecule.ai/test","another"]}}"#,
        ],
        None,
    );
    assert!(refused.contains("no new finalizers"), "{refused}");
    ok(
        s,
        k,
        &[
            "patch",
            "ws",
            "alpha",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    );
    let gone = s.kubectl(k, &["get", "ws", "alpha"]);
    assert!(
        !gone.status.success() && text(&gone).contains("NotFound"),
        "{}",
        text(&gone)
    );

    // Owner deletion cascades to owned objects.
    let org = "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: team\nspec:\n  source:\n    dir: team\n";
    ok_stdin(s, k, &["apply", "-f", "-"], org);
    let org_uid = ok(
        s,
        k,
        &["get", "org", "team", "-o", "jsonpath={.metadata.uid}"],
    );
    let child = format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: child\n  ownerReferences:\n  - apiVersion: molecule.ai/v1alpha1\n    kind: OrgImport\n    name: team\n    uid: {org_uid}\n    controller: true\n    blockOwnerDeletion: true\nspec:\n  runtime: echo\n"
    );
    ok_stdin(s, k, &["apply", "-f", "-"], &child);
    ok(s, k, &["delete", "org", "team"]);
    assert!(
        eventually(10, || !s
            .kubectl(k, &["get", "ws", "child"])
            .status
            .success()),
        "owned workspace was not garbage collected"
    );

    // Errors: unknown kind, unknown field, invalid YAML, stale resourceVersion.
    let e = fails(s, k, &["get", "gizmos"], None);
    assert!(e.contains("doesn't have a resource type"), "{e}");
    let e = fails(
        s,
        k,
        &["apply", "-f", "-"],
        Some(&beta.replace("  runtime: echo", "  runtime: echo\n  bogus: 1")),
    );
    assert!(e.contains(r#"unknown field "spec.bogus""#), "{e}");
    let e = fails(
        s,
        k,
        &["apply", "-f", "-"],
        Some("apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata: [name: x\n"),
    );
    assert!(
        e.to_lowercase().contains("yaml") || e.contains("error"),
        "{e}"
    );
    let stale = ok(s, k, &["get", "ws", "beta", "-o", "yaml"]);
    ok(s, k, &["label", "ws", "beta", "bump=1"]);
    let e = fails(s, k, &["replace", "-f", "-"], Some(&stale));
    assert!(e.contains("the object has been modified"), "{e}");
    let e = fails(
        s,
        k,
        &["apply", "-f", "-"],
        Some(&WS.replace("tier: 2", "tier: 9")),
    );
    assert!(
        e.contains("spec.tier") && e.contains("less than or equal to 4"),
        "{e}"
    );
}

async fn run(k: &'static str, postgres: bool) {
    let Some(backend) = Backend::get(postgres).await else {
        return;
    };
    let s = tokio::task::spawn_blocking(move || {
        let s = Server::start(backend);
        scenario(&s, k);
        s
    })
    .await
    .expect("scenario");
    // Secret values are sealed at rest: the canary is nowhere in the SQLite files.
    if !postgres {
        for f in ["molecule.db", "molecule.db-wal"] {
            let bytes = std::fs::read(s.data_dir().join(f)).unwrap_or_default();
            let hay = String::from_utf8_lossy(&bytes);
            assert!(
                !hay.contains("sk-plaintext-canary-42")
                    && !hay.contains("c2stcGxhaW50ZXh0LWNhbmFyeS00Mg=="),
                "secret found in plain text in {f}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_1_27_sqlite() {
    run("1.27", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_1_33_sqlite() {
    run("1.33", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_1_27_postgres() {
    run("1.27", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_1_33_postgres() {
    run("1.33", true).await;
}
