//! Bundles (ADR 0055) against the real `molecule serve` with `--controllers none` (no agent is
//! needed: the records are the contract; the agent's registration is written to the status
//! subresource the way `/registry/register` writes it): the round trip of one workspace — new
//! id, same name, tier, runtime, files, plugins, schedules and agent card, no secret in the
//! export — a bundle of the original platform with `sub_workspaces`, the tokens each route
//! takes, and hostile bundles, each refused with a precise 4xx and nothing created.

mod common;

use common::{Backend, Installation, Server, apply, eventually, get};
use serde_json::{Value, json};

const API: &str = "/apis/molecule.ai/v1alpha1";
const SECRET_VALUE: &str = "sk-bundle-test-NEVER-EXPORTED";

/// What is sent, with which token, and the code and message part expected.
type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);

fn call(s: &Server, token: Option<&str>, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (code, b) = s.http_as(method, path, token, body);
    let v = serde_json::from_str(&b).unwrap_or(Value::String(b));
    (code, v)
}

fn admin_get(s: &Server, path: &str) -> Value {
    let (code, v) = call(s, Some(&s.token()), "GET", path, b"");
    assert_eq!(code, 200, "GET {path}: {v}");
    v
}

fn import(s: &Server, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    call(s, token, "POST", "/bundles/import", body)
}

/// How many Workspace and PluginInstall records exist (all namespaces).
fn records(s: &Server) -> (usize, usize) {
    let n = |kind: &str| {
        let (code, b) = s.http("GET", &format!("{API}/{kind}"), None, b"");
        assert_eq!(code, 200, "{b}");
        let v: Value = serde_json::from_str(&b).expect("list");
        v["items"].as_array().map(Vec::len).unwrap_or(0)
    };
    (n("workspaces"), n("plugininstalls"))
}

/// The source workspace: files, schedules, env from a Secret and a literal value, a plugin, a
/// workspace secret, and an agent card as its agent registered it.
fn source(s: &Server) -> String {
    apply(
        s,
        "default",
        r#"apiVersion: molecule.ai/v1alpha1
kind: Workspace
metadata:
  name: research-lead
spec:
  displayName: Research Lead
  role: leads research
  runtime: echo
  tier: 3
  model: sonnet
  files:
    inline:
      system-prompt.md: "You lead research.\n"
      skills/search/SKILL.md: "---\nname: search\n---\nFinds papers.\n"
      notes/style.md: "Be brief.\n"
  env:
    - name: LITERAL_KEY
      value: sk-bundle-test-NEVER-EXPORTED
  envFrom:
    - secretRef: {name: research-lead-secrets, optional: true}
  requiredEnv: [OPENAI_API_KEY]
  schedules:
    - name: daily-report
      cronExpr: "0 9 * * 1-5"
      timezone: Europe/Berlin
      prompt: Write the daily report.
  initialPrompt: Introduce yourself.
"#,
    );
    let uid = get(s, "default", "research-lead")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let admin = s.token();
    assert!(eventually(10, || call(
        s,
        Some(&admin),
        "GET",
        &format!("/workspaces/{uid}"),
        b""
    )
    .0 == 200));
    let (code, v) = call(
        s,
        Some(&admin),
        "POST",
        &format!("/workspaces/{uid}/plugins"),
        json!({"source": "local://memory", "track": "tag:v1", "update_policy": "auto"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 201, "{v}");
    let (code, v) = call(
        s,
        Some(&admin),
        "POST",
        &format!("/workspaces/{uid}/secrets"),
        json!({"key": "OPENAI_API_KEY", "value": SECRET_VALUE})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{v}");
    let (code, b) = s.http(
        "PATCH",
        &format!("{API}/namespaces/default/workspaces/research-lead/status"),
        Some("application/merge-patch+json"),
        json!({"status": {"agentCard": {"name": "Research Lead", "skills": [{"id": "search"}]}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{b}");
    // The shim reads through its index, fed by a watch: wait until it has seen the card.
    assert!(eventually(10, || !admin_get(
        s,
        &format!("/workspaces/{uid}")
    )["agent_card"]
        .is_null()));
    uid
}

#[test]
fn round_trip_gives_a_new_workspace_with_the_same_name_files_plugins_and_card() {
    let s = Server::start(Backend::Sqlite);
    let admin = s.token();
    let id = source(&s);
    let exported = admin_get(&s, &format!("/bundles/export/{id}"));

    // What the bundle holds, and what it never holds.
    let text = exported.to_string();
    for secret in [SECRET_VALUE, "LITERAL_KEY", "tokenHash", &admin] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert_eq!(exported["schema"], "1.0");
    assert_eq!(exported["id"], id.as_str());
    assert_eq!(exported["name"], "Research Lead");
    assert_eq!(exported["description"], "leads research");
    assert_eq!(exported["tier"], 3);
    assert_eq!(exported["runtime"], "echo");
    assert_eq!(exported["model"], "sonnet");
    assert_eq!(exported["system_prompt"], "You lead research.\n");
    assert_eq!(exported["skills"][0]["id"], "search");
    assert_eq!(exported["skills"][0]["description"], "Finds papers.");
    assert_eq!(exported["files"], json!({"notes/style.md": "Be brief.\n"}));
    assert!(
        exported["prompts"]["config.yaml"]
            .as_str()
            .is_some_and(|c| c.contains("runtime: echo")),
        "{exported}"
    );
    assert_eq!(
        exported["plugins"],
        json!([{"name": "memory", "source": "local://memory", "track": "tag:v1",
                "update_policy": "auto", "allow_unpinned": false}])
    );
    assert_eq!(
        exported["schedules"],
        json!([{"name": "daily-report", "cron_expr": "0 9 * * 1-5",
                "timezone": "Europe/Berlin", "prompt": "Write the daily report.", "enabled": true}])
    );
    assert_eq!(exported["required_env"], json!(["OPENAI_API_KEY"]));
    assert_eq!(
        exported["agent_card"],
        json!({"name": "Research Lead", "skills": [{"id": "search"}]})
    );

    // Import: a new id, the same name; everything else as exported.
    let (code, r) = import(&s, Some(&admin), exported.to_string().as_bytes());
    assert_eq!(code, 201, "{r}");
    assert_eq!(r["status"], "provisioning");
    let new_id = r["workspace_id"]
        .as_str()
        .expect("workspace_id")
        .to_string();
    assert_ne!(new_id, id);
    let view = admin_get(&s, &format!("/workspaces/{new_id}"));
    assert_eq!(view["name"], "Research Lead");
    assert_eq!(view["tier"], 3);
    assert_eq!(view["runtime"], "echo");
    assert_eq!(view["role"], "leads research");
    assert_eq!(view["agent_card"], exported["agent_card"], "{view}");
    let k8s_name = r["k8s_name"].as_str().expect("k8s_name");
    assert_ne!(k8s_name, "research-lead");
    let rec = get(&s, "default", k8s_name);
    let (old, new) = (get(&s, "default", "research-lead"), &rec);
    for field in [
        "files",
        "schedules",
        "requiredEnv",
        "initialPrompt",
        "model",
    ] {
        assert_eq!(new["spec"][field], old["spec"][field], "spec.{field}");
    }
    assert!(new["spec"]["env"].is_null() && new["spec"]["envFrom"].is_null());
    assert_eq!(
        new["metadata"]["annotations"]["molecule.ai/source-bundle-id"],
        id.as_str()
    );
    let plugins = admin_get(&s, &format!("/workspaces/{new_id}/plugins"));
    assert_eq!(plugins[0]["name"], "memory", "{plugins}");
    assert_eq!(plugins[0]["source"], "local://memory");
    assert_eq!(plugins[0]["track"], "tag:v1");
    assert_eq!(plugins[0]["update_policy"], "auto");

    // The imported workspace exports the same bundle, but for its id.
    let mut again = admin_get(&s, &format!("/bundles/export/{new_id}"));
    assert_eq!(again["id"], new_id.as_str());
    again["id"] = exported["id"].clone();
    assert_eq!(again, exported);

    // Once its agent registers a card of its own, that one is shown.
    let (code, b) = s.http(
        "PATCH",
        &format!("{API}/namespaces/default/workspaces/{k8s_name}/status"),
        Some("application/merge-patch+json"),
        json!({"status": {"agentCard": {"name": "registered"}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{b}");
    assert!(eventually(10, || admin_get(
        &s,
        &format!("/workspaces/{new_id}")
    )["agent_card"]
        == json!({"name": "registered"})));
}

#[test]
fn the_originals_bundle_with_sub_workspaces_imports_as_a_tree() {
    let s = Server::start(Backend::Sqlite);
    let admin = s.token();
    let original = json!({
        "schema": "1.0", "id": "6f1c2d3e-aaaa-bbbb-cccc-0123456789ab", "name": "PM",
        "description": "Project manager", "tier": 2, "model": "",
        "system_prompt": "You are the PM.",
        "skills": [{"id": "planning", "name": "planning", "description": "",
                    "files": {"SKILL.md": "# Planning\nPlans work."}}],
        "tools": [], "prompts": {"config.yaml": "name: PM\nruntime: echo\ntier: 2\n"},
        "sub_workspaces": [
            {"schema": "1.0", "id": "", "name": "Dev Lead", "description": "", "tier": 1,
             "skills": [], "tools": [], "prompts": {}, "sub_workspaces": [],
             "agent_card": null, "author": "", "version": "1.0.0"}
        ],
        "agent_card": {"name": "PM", "skills": []}, "author": "someone", "version": "1.0.0"
    });
    let (code, r) = import(&s, Some(&admin), original.to_string().as_bytes());
    assert_eq!(code, 201, "{r}");
    let root = r["workspace_id"].as_str().expect("id").to_string();
    let child = r["children"][0]["workspace_id"]
        .as_str()
        .expect("child")
        .to_string();
    assert_eq!(r["children"][0]["name"], "Dev Lead");
    let pm = admin_get(&s, &format!("/workspaces/{root}"));
    assert_eq!(pm["name"], "PM");
    assert_eq!(pm["runtime"], "echo");
    assert_eq!(pm["role"], "Project manager");
    assert_eq!(pm["agent_card"], json!({"name": "PM", "skills": []}));
    let dev = admin_get(&s, &format!("/workspaces/{child}"));
    assert_eq!(dev["parent_id"], root.as_str());
    assert_eq!(dev["tier"], 1);
    let files =
        &get(&s, "default", pm["k8s_name"].as_str().expect("name"))["spec"]["files"]["inline"];
    assert_eq!(files["system-prompt.md"], "You are the PM.");
    assert_eq!(files["skills/planning/SKILL.md"], "# Planning\nPlans work.");
}

#[test]
fn tokens_and_hostile_bundles_are_refused_and_nothing_is_created() {
    let s = Server::start(Backend::Sqlite);
    let admin = s.token();
    let id = source(&s);
    let (code, t) = call(
        &s,
        Some(&admin),
        "GET",
        &format!("/admin/workspaces/{id}/test-token"),
        b"",
    );
    assert_eq!(code, 200, "{t}");
    let own = t["auth_token"].as_str().expect("token").to_string();
    let (code, other) = call(
        &s,
        Some(&admin),
        "POST",
        "/workspaces",
        br#"{"name": "Other"}"#,
    );
    assert_eq!(code, 201, "{other}");
    let other_id = other["id"].as_str().expect("id").to_string();

    // Export: admin or the workspace's own token; another workspace's token 403; none 401.
    let path = format!("/bundles/export/{id}");
    assert_eq!(call(&s, Some(&own), "GET", &path, b"").0, 200);
    assert_eq!(call(&s, None, "GET", &path, b"").0, 401);
    assert_eq!(call(&s, Some("wrong-token"), "GET", &path, b"").0, 401);
    let (code, _) = call(
        &s,
        Some(&own),
        "GET",
        &format!("/bundles/export/{other_id}"),
        b"",
    );
    assert_eq!(code, 403);
    assert_eq!(
        call(&s, Some(&admin), "GET", "/bundles/export/../../etc", b"").0,
        404
    );
    assert_eq!(
        call(&s, Some(&admin), "GET", "/bundles/export/not-a-uuid", b"").0,
        400
    );
    assert_eq!(
        call(
            &s,
            Some(&admin),
            "GET",
            "/bundles/export/00000000-0000-0000-0000-000000000000",
            b""
        )
        .0,
        404
    );

    let good = json!({"name": "Fine", "runtime": "echo"}).to_string();
    let before = records(&s);
    let big = format!(
        r#"{{"name": "Big", "files": {{"a.md": "{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let cases: Vec<Case> = vec![
        ("no token", None, good.clone().into_bytes(), 401, "missing"),
        ("wrong token", Some("wrong-token"), good.clone().into_bytes(), 401, "invalid"),
        ("workspace token", Some(&own), good.clone().into_bytes(), 403, "admin route"),
        ("malformed JSON", Some(&admin), b"{\"name\": ".to_vec(), 400, "malformed JSON"),
        ("not an object", Some(&admin), b"[1]".to_vec(), 400, "JSON object"),
        ("wrong type", Some(&admin), br#"{"name": "x", "tier": "high"}"#.to_vec(), 400, "wrong type"),
        ("oversized", Some(&admin), big.into_bytes(), 413, "too large"),
        (
            "path traversal",
            Some(&admin),
            json!({"name": "x", "files": {"../../etc/cron.d/x": "* * * * * root sh"}}).to_string().into_bytes(),
            400,
            "escapes its root",
        ),
        (
            "absolute path",
            Some(&admin),
            json!({"name": "x", "skills": [{"id": "s", "files": {"/etc/passwd": "x"}}]}).to_string().into_bytes(),
            400,
            "empty component",
        ),
        (
            "reserved file",
            Some(&admin),
            json!({"name": "x", "files": {".auth_token": "stolen"}}).to_string().into_bytes(),
            400,
            "generated",
        ),
        ("tier", Some(&admin), json!({"name": "x", "tier": 5}).to_string().into_bytes(), 400, "between 1 and 4"),
        ("runtime", Some(&admin), json!({"name": "x", "runtime": "../docker"}).to_string().into_bytes(), 400, "runtime"),
        ("no name", Some(&admin), json!({"tier": 1}).to_string().into_bytes(), 400, "`name` is required"),
        (
            "plugin source",
            Some(&admin),
            json!({"name": "x", "plugins": [{"source": "file:///etc"}]}).to_string().into_bytes(),
            400,
            "source",
        ),
        (
            "agent card",
            Some(&admin),
            json!({"name": "x", "agent_card": [1, 2]}).to_string().into_bytes(),
            400,
            "agent_card",
        ),
        (
            "bad child: the root is not created either",
            Some(&admin),
            json!({"name": "root", "sub_workspaces": [{"name": "ok"}, {"name": "bad", "files": {"a/../../b": "x"}}]})
                .to_string()
                .into_bytes(),
            400,
            "bundle.sub_workspaces[1]",
        ),
        (
            "bad plugin of a child",
            Some(&admin),
            json!({"name": "root", "sub_workspaces": [{"name": "c", "plugins": [{"source": "local://a", "track": "latest"}]}]})
                .to_string()
                .into_bytes(),
            400,
            "bundle.sub_workspaces[0]: plugin a",
        ),
    ];
    for (what, token, body, want, message) in cases {
        let (code, v) = import(&s, token, &body);
        assert_eq!(code, want, "{what}: {v}");
        let text = v.to_string();
        assert!(text.contains(message), "{what}: {text}");
        assert_eq!(records(&s), before, "{what}: something was created");
    }
    let (code, v) = import(&s, Some(&admin), good.as_bytes());
    assert_eq!(code, 201, "{v}");
    assert_eq!(records(&s).0, before.0 + 1);
}

#[test]
fn a_files_dir_travels_inline_under_the_specs_own_files() {
    let s = Server::start(Backend::Sqlite);
    let dir = s.data_dir().join("org-templates/personas/alice");
    std::fs::create_dir_all(dir.join("skills/research")).expect("dir");
    std::fs::write(dir.join("system-prompt.md"), "From the dir.\n").expect("write");
    std::fs::write(dir.join("skills/research/SKILL.md"), "Researches.\n").expect("write");
    std::fs::write(dir.join("notes.md"), "dir notes\n").expect("write");
    std::fs::write(dir.join("config.yaml"), "runtime: evil\n").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).expect("symlink");
    apply(
        &s,
        "default",
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: alice\nspec:\n  runtime: echo\n  files:\n    filesDir: personas/alice\n    inline:\n      notes.md: \"inline notes\\n\"\n",
    );
    let id = get(&s, "default", "alice")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let admin = s.token();
    assert!(eventually(10, || call(
        &s,
        Some(&admin),
        "GET",
        &format!("/bundles/export/{id}"),
        b""
    )
    .0 == 200));
    let b = admin_get(&s, &format!("/bundles/export/{id}"));
    assert!(b.get("files_dir").is_none(), "{b}");
    assert_eq!(b["system_prompt"], "From the dir.\n");
    assert_eq!(b["skills"][0]["files"]["SKILL.md"], "Researches.\n");
    // The spec's inline file wins over the dir's; the generated config.yaml and symlinks stay out.
    assert_eq!(b["files"], json!({"notes.md": "inline notes\n"}), "{b}");
    assert!(!b.to_string().contains("root:x:0:0"));

    // A dir that cannot be read stays a reference.
    std::fs::remove_dir_all(&dir).expect("rm");
    let b = admin_get(&s, &format!("/bundles/export/{id}"));
    assert_eq!(b["files_dir"], "personas/alice");
    assert_eq!(b["files"], json!({"notes.md": "inline notes\n"}));
}

/// A file of a (`FROM scratch`) container, through `docker cp`.
fn container_file(container: &str, path: &str) -> Option<String> {
    let tmp = tempfile::tempdir().expect("tmp");
    let dest = tmp.path().join("f");
    let (ok, _) = common::docker(&[
        "cp",
        &format!("{container}:{path}"),
        &dest.to_string_lossy(),
    ]);
    ok.then(|| std::fs::read_to_string(dest).unwrap_or_default())
}

#[test]
fn on_docker_the_imported_echo_agent_comes_online_with_the_files_and_the_card() {
    let s = Installation(Server::start_with(
        Backend::Sqlite,
        &["--controllers", "all", "--agent-heartbeat-seconds", "1"],
    ));
    let admin = s.token();
    let (code, r) = call(
        &s,
        Some(&admin),
        "POST",
        "/workspaces",
        json!({"name": "Docker Source", "role": "writer", "tier": 1, "runtime": "echo"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 201, "{r}");
    let id = r["id"].as_str().expect("id").to_string();
    let k8s = r["k8s_name"].as_str().expect("name").to_string();
    let (code, b) = s.http(
        "PATCH",
        &format!("{API}/namespaces/default/workspaces/{k8s}"),
        Some("application/merge-patch+json"),
        json!({"spec": {"files": {"inline": {"system-prompt.md": "Write well.\n"}}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{b}");
    let online = |id: &str| {
        eventually(180, || {
            let v = admin_get(&s, &format!("/workspaces/{id}"));
            v["status"] == "online" && !v["agent_card"].is_null()
        })
    };
    assert!(
        online(&id),
        "the source did not come online:\n{}",
        common::tail(&s)
    );
    let exported = admin_get(&s, &format!("/bundles/export/{id}"));
    assert_eq!(
        exported["agent_card"]["name"], "Docker Source",
        "{exported}"
    );

    let (code, r) = import(&s, Some(&admin), exported.to_string().as_bytes());
    assert_eq!(code, 201, "{r}");
    let new_id = r["workspace_id"].as_str().expect("id").to_string();
    assert!(
        online(&new_id),
        "the import did not come online:\n{}",
        common::tail(&s)
    );
    let view = admin_get(&s, &format!("/workspaces/{new_id}"));
    assert_eq!(view["name"], "Docker Source");
    assert_eq!(view["tier"], 1);
    assert_eq!(view["runtime"], "echo");
    // The agent registered its own card: the same one, since name and role are the same.
    assert_eq!(view["agent_card"], exported["agent_card"]);
    let rec = get(&s, "default", r["k8s_name"].as_str().expect("k8s_name"));
    let container = rec["status"]["containerName"].as_str().expect("container");
    assert_eq!(
        container_file(container, "/configs/system-prompt.md").as_deref(),
        Some("Write well.\n")
    );
    let config = container_file(container, "/configs/config.yaml").unwrap_or_default();
    assert!(
        config.contains(&format!("workspace_id: {new_id}")),
        "{config}"
    );
    for w in [&id, &new_id] {
        let (code, b) = call(&s, Some(&admin), "DELETE", &format!("/workspaces/{w}"), b"");
        assert_eq!(code, 200, "{b}");
    }
}
