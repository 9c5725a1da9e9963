//! OrgImport end to end: the real `molecule serve` binary, the real kubectl, and (for the
//! Docker test) the real Docker engine. Each test has its own server, data dir, template root
//! and namespace, and cleans up only the containers of its namespace.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{Backend, Cleanup, Server, copy_dir, docker, eventually, managed_in, text};
use serde_json::Value;

static DOCKER: Mutex<()> = Mutex::new(());

/// A server with its own template root.
/// Fields drop in order: the server stops before the namespace's containers are removed, so
/// nothing re-creates them after the cleanup (also when a test fails).
struct Env {
    s: Server,
    templates: tempfile::TempDir,
    ns: String,
    _cleanup: Cleanup,
}

fn start(controllers: &str) -> Env {
    let templates = tempfile::tempdir().expect("templates");
    let root = templates.path().to_string_lossy().to_string();
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            "--controllers",
            controllers,
            "--org-templates",
            &root,
            "--agent-heartbeat-seconds",
            "1",
            "--reap-interval-seconds",
            "2",
        ],
    );
    let ns = format!("o{}", molecule::util::random_suffix(8));
    Env {
        s,
        templates,
        _cleanup: Cleanup(ns.clone()),
        ns,
    }
}

impl Env {
    fn root(&self) -> PathBuf {
        self.templates.path().to_path_buf()
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-n", &self.ns]);
        let o = self.s.kubectl_stdin("1.33", &full, stdin);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed:\n{}\nserver log:\n{}",
            text(&o),
            self.tail()
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml));
    }

    fn tail(&self) -> String {
        let log = self.s.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn get(&self, plural: &str, name: &str) -> Value {
        let (code, body) = self.s.http(
            "GET",
            &format!(
                "/apis/molecule.ai/v1alpha1/namespaces/{}/{plural}/{name}",
                self.ns
            ),
            None,
            b"",
        );
        if code != 200 {
            return Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    fn list(&self, path: &str) -> Vec<Value> {
        let (code, body) = self.s.http("GET", path, None, b"");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str::<Value>(&body).expect("json")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn workspaces(&self) -> Vec<Value> {
        self.list(&format!(
            "/apis/molecule.ai/v1alpha1/namespaces/{}/workspaces",
            self.ns
        ))
    }

    fn org_secrets(&self) -> Vec<Value> {
        self.list(&format!(
            "/api/v1/namespaces/{}/secrets?labelSelector=molecule.ai%2Forg",
            self.ns
        ))
    }

    fn ready(&self, org: &str) -> (String, String, String) {
        let o = self.get("orgimports", org);
        let c = o["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or(Value::Null);
        let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
        (s("status"), s("reason"), s("message"))
    }

    /// Waits until the OrgImport's Ready condition has `reason` for its current generation.
    fn wait_reason(&self, org: &str, reason: &str, secs: u64) -> Value {
        let ok = eventually(secs, || {
            let o = self.get("orgimports", org);
            let gen_seen = o["status"]["observedGeneration"] == o["metadata"]["generation"];
            gen_seen && self.ready(org).1 == reason
        });
        assert!(
            ok,
            "{org} did not reach {reason}: {:?}\n{}\nserver log:\n{}",
            self.ready(org),
            serde_json::to_string_pretty(&self.get("orgimports", org)["status"])
                .unwrap_or_default(),
            self.tail()
        );
        self.get("orgimports", org)
    }

    fn audit(&self, event: &str) -> Vec<Value> {
        let (code, body) = self.s.http(
            "GET",
            &format!("/audit?event={event}&namespace={}", self.ns),
            None,
            b"",
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("json")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn inline(name: &str, template: &str, extra: &str) -> String {
    let indented: String = template.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: {name}\nspec:\n{extra}  source:\n    template: |\n{indented}"
    )
}

#[test]
fn bad_templates_get_precise_conditions_and_create_nothing() {
    let e = start("org_import");
    let oversized = format!(
        "name: big\nworkspaces:\n  - name: a\n    role: \"{}\"\n",
        "x".repeat(600 * 1024)
    );
    std::fs::create_dir_all(e.root().join("big")).expect("mkdir");
    std::fs::write(e.root().join("big/org.yaml"), &oversized).expect("write");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "bad-yaml",
            inline("bad-yaml", "workspaces:\n  - name: a\n    children: [\n", ""),
            "InvalidYaml",
            "(inline template):3:15: invalid YAML: unclosed bracket",
        ),
        (
            "bad-tag",
            inline("bad-tag", "workspaces:\n  - name: a\n    model: !vault secret/model\n", ""),
            "UnknownTag",
            "(inline template):3:19: workspaces[0].model: unknown tag !vault",
        ),
        (
            "bad-tier",
            inline(
                "bad-tier",
                "workspaces:\n  - name: lead\n    children:\n      - name: a\n        tier: high\n",
                "",
            ),
            "InvalidTemplate",
            "(inline template):5:15: workspaces[0].children[0].tier: tier must be an integer 1-4, got a string",
        ),
        (
            "dup",
            inline(
                "dup",
                "workspaces:\n  - name: Lead\n    children:\n      - name: QA\n      - name: qa\n",
                "",
            ),
            "DuplicateName",
            "(inline template):5:9: workspaces[0].children[1]: duplicate sibling name \"qa\"",
        ),
        (
            "big",
            "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: big\nspec:\n  source:\n    dir: big\n".to_string(),
            "TemplateTooLarge",
            "big/org.yaml: the file is larger than",
        ),
        (
            "missing-dir",
            "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: missing-dir\nspec:\n  source:\n    dir: nowhere\n".to_string(),
            "TemplateNotFound",
            "the org template directory was not found",
        ),
        (
            "two-sources",
            "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: two-sources\nspec:\n  source:\n    dir: big\n    template: 'workspaces: []'\n".to_string(),
            "InvalidSource",
            "spec.source needs exactly one of dir, template or git",
        ),
    ];
    for (_, yaml, _, _) in &cases {
        e.apply(yaml);
    }
    for (name, _, reason, msg) in &cases {
        e.wait_reason(name, reason, 30);
        let (status, _, message) = e.ready(name);
        assert_eq!(status, "False", "{name}");
        assert!(message.starts_with(msg), "{name}: {message}");
    }
    // Nothing half-created, and no started row without its pair.
    assert!(e.workspaces().is_empty(), "{:?}", e.workspaces());
    assert!(e.org_secrets().is_empty());
    assert!(e.audit("org.import.started").is_empty());
    let describe = e.kubectl(&["describe", "orgimport", "bad-tier"], None);
    assert!(describe.contains("InvalidTemplate"), "{describe}");
    // `kubectl get` shows the import with its Ready column.
    let table = e.kubectl(&["get", "orgimports"], None);
    assert!(
        table.contains("bad-yaml") && table.contains("False"),
        "{table}"
    );

    // Fixing the template converges.
    e.apply(&inline(
        "bad-tier",
        "workspaces:\n  - name: lead\n    children:\n      - name: a\n        tier: 3\n",
        "",
    ));
    e.wait_reason("bad-tier", "Imported", 30);
    let names: Vec<String> = e
        .workspaces()
        .iter()
        .map(|w| w["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["bad-tier.lead", "bad-tier.lead.a"]);
}

#[test]
fn preflight_missing_env_creates_nothing_until_the_global_secret_appears() {
    let e = start("org_import");
    let template = "name: Needs Env\ndefaults:\n  required_env: [NEEDED_KEY]\nworkspaces:\n  - name: Lead\n    required_env:\n      - any_of: [OPENAI_API_KEY, ANTHROPIC_API_KEY]\n    children: [{name: Helper}]\n";
    e.apply(&inline("needs-env", template, ""));
    let o = e.wait_reason("needs-env", "MissingEnv", 30);
    assert_eq!(
        o["status"]["missingEnv"],
        serde_json::json!(["NEEDED_KEY", "OPENAI_API_KEY|ANTHROPIC_API_KEY"])
    );
    assert!(e.workspaces().is_empty());
    assert!(e.org_secrets().is_empty());
    let describe = e.kubectl(&["describe", "orgimport", "needs-env"], None);
    assert!(
        describe.contains("MissingEnv") && describe.contains("NEEDED_KEY"),
        "{describe}"
    );
    let started = e.audit("org.import.started");
    let failed = e.audit("org.import.failed");
    assert_eq!((started.len(), failed.len()), (1, 1));
    assert_eq!(
        started[0]["data"]["name"], "Needs Env",
        "started carries the template name"
    );
    assert_eq!(failed[0]["data"]["reason"], "MissingEnv");

    // The global secret satisfies the name and one of the group: the import proceeds by itself.
    e.apply(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: molecule-global-secrets\nstringData:\n  NEEDED_KEY: \"x\"\n  ANTHROPIC_API_KEY: \"y\"\n",
    );
    let o = e.wait_reason("needs-env", "Imported", 30);
    assert_eq!(o["status"]["counts"]["created"], 2);
    assert!(o["status"].get("missingEnv").is_none(), "{}", o["status"]);
    assert_eq!(e.workspaces().len(), 2);
    // Every started row pairs with a completed or failed one.
    let started = e.audit("org.import.started").len();
    let ended = e.audit("org.import.completed").len() + e.audit("org.import.failed").len();
    assert_eq!(started, ended);
    assert_eq!(e.audit("org.import.completed").len(), 1);

    // `force` skips the preflight.
    e.apply(&inline(
        "forced",
        "workspaces:\n  - name: Solo\n    required_env: [NEVER_SET]\n",
        "  force: true\n",
    ));
    e.wait_reason("forced", "Imported", 30);
    let solo = e.get("workspaces", "forced.solo");
    assert_eq!(
        solo["spec"]["requiredEnv"],
        serde_json::json!(["NEVER_SET"])
    );
}

#[test]
fn names_owned_by_someone_else_are_never_taken_over() {
    let e = start("org_import");
    e.apply("apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: team.lead\nspec:\n  runtime: echo\n  role: hand-made\n");
    e.apply(&inline(
        "team",
        "workspaces:\n  - name: Lead\n    children: [{name: Dev}]\n",
        "",
    ));
    let o = e.wait_reason("team", "NameConflict", 30);
    assert!(e.ready("team").2.contains("team.lead"), "{}", o["status"]);
    let ws = e.workspaces();
    assert_eq!(ws.len(), 1, "nothing created next to the conflict");
    assert_eq!(
        ws[0]["spec"]["role"], "hand-made",
        "the foreign record is untouched"
    );
}

#[test]
fn audit_rows_are_listed_over_rest_and_by_the_cli() {
    let e = start("org_import");
    e.apply(&inline(
        "audited",
        "name: Audited\nworkspaces: [{name: One}]\n",
        "  mode: reconcile\n",
    ));
    e.wait_reason("audited", "Imported", 30);
    let (code, _) =
        e.s.http_raw("GET", "/audit", None, b"", false)
            .expect("request");
    assert_eq!(code, 401, "the audit log needs the token");
    let completed = e.audit("org.import.completed");
    assert_eq!(completed.len(), 1);
    let d = &completed[0]["data"];
    assert_eq!(
        (
            d["mode"].as_str(),
            d["created"].as_i64(),
            d["removed"].as_i64()
        ),
        (Some("reconcile"), Some(1), Some(0))
    );
    assert!(d["duration_ms"].is_u64(), "{d}");
    let out = Command::new(env!("CARGO_BIN_EXE_molecule"))
        .args(["audit", "--event", "org.import.completed", "--data-dir"])
        .arg(e.s.data_dir())
        .output()
        .expect("molecule audit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("org.import.completed") && stdout.contains("audited"),
        "{stdout}"
    );
}

// --- Docker ---------------------------------------------------------------------------------

fn uid(w: &Value) -> String {
    w["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

fn container_id(uid: &str) -> String {
    let id12: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    docker(&["inspect", "-f", "{{.Id}}", &format!("ws-{id12}")]).1
}

const EXAMPLE: &[&str] = &[
    "research-lab.lab-lead",
    "research-lab.lab-lead.research-lead",
    "research-lab.lab-lead.research-lead.analyst",
    "research-lab.lab-lead.research-lead.writer",
    "research-lab.lab-lead.reviewer",
];

fn all_online(e: &Env, names: &[&str]) -> bool {
    names
        .iter()
        .all(|n| e.get("workspaces", n)["status"]["phase"] == "Online")
}

#[test]
fn the_example_org_converges_reapplies_prunes_and_cascades_with_docker() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start("all");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    copy_dir(&examples.join("org-templates"), &e.root());
    let manifest = std::fs::read_to_string(examples.join("org-import.yaml")).expect("manifest");

    // A preflight failure creates nothing: no record, no container.
    e.apply(&inline(
        "blocked",
        "workspaces:\n  - name: Solo\n    required_env: [BLOCKED_KEY]\n",
        "",
    ));
    e.wait_reason("blocked", "MissingEnv", 30);
    assert!(e.workspaces().is_empty());
    assert!(managed_in(&e.ns, "container").is_empty());
    e.kubectl(&["delete", "orgimport", "blocked"], None);

    // Import: every workspace goes Online with the right parent.
    e.apply(&manifest);
    let o = e.wait_reason("research-lab", "Imported", 60);
    assert_eq!(
        o["status"]["counts"],
        serde_json::json!({"desired": 5, "created": 5, "updated": 0, "unchanged": 0, "pruned": 0, "skipped": 2}),
        "{}",
        e.tail()
    );
    let ok = eventually(180, || all_online(&e, EXAMPLE));
    assert!(
        ok,
        "not all Online: {:?}\n{}",
        EXAMPLE
            .iter()
            .map(|n| e.get("workspaces", n)["status"]["phase"].clone())
            .collect::<Vec<_>>(),
        e.tail()
    );
    let parent = |n: &str| e.get("workspaces", n)["spec"]["parentRef"]["name"].clone();
    assert_eq!(parent(EXAMPLE[0]), Value::Null);
    assert_eq!(parent(EXAMPLE[1]), EXAMPLE[0]);
    assert_eq!(parent(EXAMPLE[2]), EXAMPLE[1]);
    assert_eq!(parent(EXAMPLE[3]), EXAMPLE[1]);
    assert_eq!(parent(EXAMPLE[4]), EXAMPLE[0]);
    let wide = e.kubectl(&["get", "ws", "-o", "wide"], None);
    assert!(
        wide.contains("research-lab.lab-lead.research-lead"),
        "{wide}"
    );
    let reviewer = e.get("workspaces", EXAMPLE[4]);
    assert_eq!(
        reviewer["metadata"]["annotations"]["molecule.ai/plugins"],
        "[\"hello-skills\"]"
    );
    assert_eq!(
        reviewer["metadata"]["labels"]["molecule.ai/org"],
        "research-lab"
    );
    // The layered env reached the containers (org root .env, then the analyst's own).
    let env_of = |n: &str| {
        docker(&[
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &format!(
                "ws-{}",
                uid(&e.get("workspaces", n))
                    .replace('-', "")
                    .get(..12)
                    .unwrap_or("")
            ),
        ])
        .1
    };
    let analyst_env = env_of(EXAMPLE[2]);
    assert!(analyst_env.contains("REPORT_STYLE=tables"), "{analyst_env}");
    assert!(
        analyst_env.contains("LAB_NAME=research-lab"),
        "{analyst_env}"
    );
    assert!(env_of(EXAMPLE[3]).contains("REPORT_STYLE=brief"));
    assert_eq!(e.org_secrets().len(), 5);
    // files_dir content and the generated prompt/settings files are in /configs.
    let configs = |n: &str, file: &str| {
        let c = format!(
            "ws-{}",
            uid(&e.get("workspaces", n))
                .replace('-', "")
                .get(..12)
                .unwrap_or("")
        );
        let tmp = tempfile::tempdir().expect("tmp");
        let dest = tmp.path().join("f");
        let (ok, _) = docker(&[
            "cp",
            &format!("{c}:/configs/{file}"),
            &dest.to_string_lossy(),
        ]);
        if ok {
            std::fs::read_to_string(dest).unwrap_or_default()
        } else {
            String::new()
        }
    };
    assert!(configs(EXAMPLE[2], "system-prompt.md").contains("You analyse sources"));
    assert!(configs(EXAMPLE[4], "system-prompt.md").contains("Review every report"));
    assert!(configs(EXAMPLE[0], "initial-prompt.md").contains("Introduce yourself"));
    assert!(configs(EXAMPLE[3], "idle-prompt.md").contains("Anything new"));
    let settings: Value =
        serde_json::from_str(&configs(EXAMPLE[1], "org-workspace.json")).expect("settings json");
    assert_eq!(
        settings["tree_path"],
        serde_json::json!(["Lab Lead", "Research Lead"])
    );
    assert_eq!(settings["idle_interval_seconds"], 900);

    let before: Vec<(String, String)> = EXAMPLE
        .iter()
        .map(|n| {
            let u = uid(&e.get("workspaces", n));
            let c = container_id(&u);
            (u, c)
        })
        .collect();

    // Re-apply: the same manifest is a no-op; a spec change re-runs the import and still
    // recreates nothing.
    e.apply(&manifest);
    e.kubectl(
        &[
            "patch",
            "orgimport",
            "research-lab",
            "--type=merge",
            "-p",
            r#"{"spec":{"force":true}}"#,
        ],
        None,
    );
    let o = e.wait_reason("research-lab", "Imported", 30);
    assert_eq!(o["metadata"]["generation"], 2);
    assert_eq!(
        o["status"]["counts"],
        serde_json::json!({"desired": 5, "created": 0, "updated": 0, "unchanged": 5, "pruned": 0, "skipped": 2})
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after: Vec<(String, String)> = EXAMPLE
        .iter()
        .map(|n| {
            let u = uid(&e.get("workspaces", n));
            let c = container_id(&u);
            (u, c)
        })
        .collect();
    assert_eq!(before, after, "uids and containers are unchanged");

    // Remove a leaf from the YAML. Merge keeps it …
    let team = e.root().join("research-lab/research/team.yaml");
    let yaml = std::fs::read_to_string(&team).expect("team.yaml");
    let cut = yaml.find("  - name: Writer").expect("writer entry");
    std::fs::write(&team, &yaml[..cut]).expect("write");
    e.kubectl(
        &[
            "annotate",
            "orgimport",
            "research-lab",
            "molecule.ai/reimport=1",
        ],
        None,
    );
    let ok = eventually(30, || {
        e.get("orgimports", "research-lab")["status"]["counts"]["desired"] == 4
    });
    assert!(ok, "{}", e.tail());
    assert_eq!(
        e.workspaces().len(),
        5,
        "merge keeps the workspace that left the tree"
    );
    let o = e.get("orgimports", "research-lab");
    assert!(
        o["status"]["inventory"]
            .as_array()
            .is_some_and(|i| i.iter().any(|p| p == "Lab Lead/Research Lead/Writer")),
        "{}",
        o["status"]
    );
    // … reconcile removes exactly that one.
    e.kubectl(
        &[
            "patch",
            "orgimport",
            "research-lab",
            "--type=merge",
            "-p",
            r#"{"spec":{"mode":"reconcile"}}"#,
        ],
        None,
    );
    let writer_container = format!(
        "ws-{}",
        before[3].0.replace('-', "").get(..12).unwrap_or("")
    );
    let ok = eventually(60, || {
        e.get("workspaces", EXAMPLE[3]).is_null() && !docker(&["inspect", &writer_container]).0
    });
    assert!(ok, "the writer was not removed:\n{}", e.tail());
    let o = e.wait_reason("research-lab", "Imported", 30);
    assert_eq!(o["status"]["counts"]["pruned"], 1);
    let remaining: Vec<(String, String)> = [0, 1, 2, 4]
        .iter()
        .map(|i| {
            let u = uid(&e.get("workspaces", EXAMPLE[*i]));
            let c = container_id(&u);
            (u, c)
        })
        .collect();
    assert_eq!(
        remaining,
        [0, 1, 2, 4]
            .iter()
            .map(|i| before[*i].clone())
            .collect::<Vec<_>>(),
        "the others are untouched"
    );
    assert_eq!(
        e.org_secrets().len(),
        4,
        "the writer's env Secret went with it"
    );

    // Deleting the OrgImport removes everything it created.
    e.kubectl(&["delete", "orgimport", "research-lab"], None);
    let ok = eventually(90, || {
        e.workspaces().is_empty()
            && e.org_secrets().is_empty()
            && managed_in(&e.ns, "container").is_empty()
            && managed_in(&e.ns, "volume").is_empty()
    });
    assert!(
        ok,
        "left behind: {:?} {:?}\n{}",
        e.workspaces()
            .iter()
            .map(|w| w["metadata"]["name"].clone())
            .collect::<Vec<_>>(),
        managed_in(&e.ns, "container"),
        e.tail()
    );
    let started = e.audit("org.import.started").len();
    let ended = e.audit("org.import.completed").len() + e.audit("org.import.failed").len();
    assert_eq!(started, ended, "every started row is paired");
    assert!(
        started >= 4,
        "import, force, leaf removal and reconcile passes: {started}"
    );
    let log = e.s.log();
    assert!(
        !log.contains("org import failed; will retry"),
        "the import never needed a retry:\n{}",
        e.tail()
    );
}

#[test]
fn kill9_mid_import_converges_to_exactly_the_tree_with_paired_audit_rows() {
    let mut e = start("org_import");
    // 300 workspaces: 15 teams of a lead and 19 members.
    let mut yaml = String::from("name: Big\nworkspaces:\n");
    for t in 0..15 {
        yaml.push_str(&format!("  - name: Team {t}\n    children:\n"));
        for m in 0..19 {
            yaml.push_str(&format!("      - name: Member {m}\n"));
        }
    }
    std::fs::create_dir_all(e.root().join("big")).expect("mkdir");
    std::fs::write(e.root().join("big/org.yaml"), yaml).expect("write");
    e.apply("apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: big\nspec:\n  source:\n    dir: big\n");
    let started = std::time::Instant::now();
    while e.workspaces().len() < 10 && started.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    e.s.kill9();
    let before: Vec<(String, String)> = {
        e.s.spawn();
        e.workspaces()
            .iter()
            .map(|w| {
                (
                    w["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    uid(w),
                )
            })
            .collect()
    };
    let interrupted = before.len() < 300;
    eprintln!("killed with {} of 300 workspaces created", before.len());
    e.wait_reason("big", "Imported", 60);
    let ok = eventually(30, || e.workspaces().len() == 300);
    assert!(ok, "{} workspaces", e.workspaces().len());
    let after: std::collections::BTreeMap<String, String> = e
        .workspaces()
        .iter()
        .map(|w| {
            (
                w["metadata"]["name"].as_str().unwrap_or("").to_string(),
                uid(w),
            )
        })
        .collect();
    for (name, u) in &before {
        assert_eq!(after.get(name), Some(u), "{name} was recreated");
    }
    let started = e.audit("org.import.started").len();
    let ended = e.audit("org.import.completed").len() + e.audit("org.import.failed").len();
    assert_eq!(
        started, ended,
        "every started row is paired (interrupted: {interrupted})"
    );
    if interrupted {
        let failed = e.audit("org.import.failed");
        assert!(
            failed.iter().any(|f| f["data"]["reason"] == "Interrupted"),
            "{failed:?}"
        );
    }
}

/// The canvas's org routes: `GET /org/templates` lists the template root, `POST /org/import`
/// preflights the env (412 with the names, nothing created), then applies an OrgImport.
#[test]
fn rest_templates_listing_and_import_with_the_env_preflight() {
    let e = start("org_import");
    let root = e.root();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/org-templates/research-lab"),
        &root.join("research-lab"),
    );
    std::fs::create_dir_all(root.join("needs-env")).expect("mkdir");
    std::fs::write(
        root.join("needs-env/org.yaml"),
        "name: Needs Env\ndescription: one agent with a key\ndefaults:\n  runtime: echo\n  required_env: [OPENAI_API_KEY, {any_of: [GH_TOKEN, GITHUB_TOKEN]}]\nworkspaces:\n  - name: Solo\n    role: solo\n",
    )
    .expect("org.yaml");
    let token = e.s.token();
    let call = |method: &str, path: &str, body: &str| {
        e.s.http_as(method, path, Some(&token), body.as_bytes())
    };
    let items = |path: &str| -> Vec<String> {
        let body = e.s.http("GET", path, None, b"").1;
        serde_json::from_str::<Value>(&body).expect("list")["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    let imports = || items("/apis/molecule.ai/v1alpha1/namespaces/default/orgimports");

    // The listing.
    assert_eq!(e.s.http_as("GET", "/org/templates", None, b"").0, 401);
    let (code, body) = call("GET", "/org/templates", "");
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("json");
    let by_dir = |d: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|t| t["dir"] == d).cloned())
            .unwrap_or(Value::Null)
    };
    let lab = by_dir("research-lab");
    assert_eq!(lab["name"], "Research Lab", "{list}");
    assert_eq!(
        lab["workspaces"], 7,
        "spawning:false subtrees are counted: {lab}"
    );
    let needs = by_dir("needs-env");
    assert_eq!(
        needs["required_env"],
        serde_json::json!(["GH_TOKEN|GITHUB_TOKEN", "OPENAI_API_KEY"]),
        "{needs}"
    );

    // Bad input: a clear 4xx, nothing created, nothing echoed.
    for (body, want) in [
        (r#"{"dir": "../../etc"}"#, 400),
        (r#"{"dir": "research-lab/../x"}"#, 400),
        (r#"{"dir": "no-such-template"}"#, 404),
        (r#"{"dir": "research-lab", "template": "name: x"}"#, 400),
        (r#"{"dir": "research-lab", "mode": "obliterate"}"#, 400),
        (r#"{"dir": 7}"#, 400),
        (r#"{"dir": "research-lab""#, 400),
        (
            r#"{"template": "name: x\nworkspaces: [ {name: a, tier: high} ]"}"#,
            422,
        ),
    ] {
        let (code, resp) = call("POST", "/org/import", body);
        assert_eq!(code, want, "{body} → {resp}");
        assert!(resp.contains("\"error\""), "{resp}");
        assert!(
            !resp.contains("etc"),
            "the hostile path is not echoed: {resp}"
        );
    }
    assert!(imports().is_empty(), "nothing created: {:?}", imports());

    // The preflight: 412 with the missing names and nothing created; force goes ahead.
    let (code, resp) = call("POST", "/org/import", r#"{"dir": "needs-env"}"#);
    assert_eq!(code, 412, "{resp}");
    let v: Value = serde_json::from_str(&resp).expect("json");
    assert_eq!(
        v["missing_env"],
        serde_json::json!(["GH_TOKEN|GITHUB_TOKEN", "OPENAI_API_KEY"]),
        "{v}"
    );
    assert_eq!(v["required_env"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(imports().is_empty(), "nothing created: {:?}", imports());
    let (code, resp) = call(
        "POST",
        "/org/import",
        r#"{"dir": "needs-env", "force": true}"#,
    );
    assert_eq!(code, 201, "{resp}");

    // A template that needs nothing: 201, then the controller creates the records; a second
    // post re-applies the same record (200) and changes nothing.
    let (code, resp) = call(
        "POST",
        "/org/import",
        r#"{"dir": "research-lab", "mode": "reconcile"}"#,
    );
    assert_eq!(code, 201, "{resp}");
    let v: Value = serde_json::from_str(&resp).expect("json");
    assert_eq!(
        (v["name"].as_str(), v["desired"].as_u64()),
        (Some("research-lab"), Some(5)),
        "{v}"
    );
    let count = || {
        items("/apis/molecule.ai/v1alpha1/namespaces/default/workspaces?labelSelector=molecule.ai%2Forg%3Dresearch-lab").len()
    };
    assert!(
        eventually(60, || count() == 5),
        "records: {}\n{}",
        count(),
        e.tail()
    );
    let (code, resp) = call(
        "POST",
        "/org/import",
        r#"{"dir": "research-lab", "mode": "reconcile"}"#,
    );
    assert_eq!(code, 200, "{resp}");
    let import = e.s.http(
        "GET",
        "/apis/molecule.ai/v1alpha1/namespaces/default/orgimports/research-lab",
        None,
        b"",
    );
    assert!(import.1.contains("\"mode\":\"reconcile\""), "{}", import.1);
}

/// The 41-workspace fixture (ADR 0047): 4 levels, `!include` team files, prompts in each
/// role's files_dir, schedules with `prompt_file`, channels with `${VAR}`, per-role `.env`.
#[test]
fn the_41_workspace_fixture_imports_reimports_unchanged_and_prunes_one_team_with_docker() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start("all");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/org-templates");
    copy_dir(&fixture.join("acme"), &e.root().join("acme"));
    let manifest = "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: acme\nspec:\n  source:\n    dir: acme\n  mode: reconcile\n";
    e.apply(manifest);
    let o = e.wait_reason("acme", "Imported", 120);
    assert_eq!(o["status"]["counts"]["created"], 41, "{}", o["status"]);
    assert!(
        o["status"].get("channelsSkipped").is_none(),
        "{}",
        o["status"]
    );
    let names: Vec<String> = e
        .workspaces()
        .iter()
        .map(|w| w["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names.len(), 41);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ok = eventually(900, || all_online(&e, &refs));
    assert!(
        ok,
        "not all Online: {:?}\n{}",
        refs.iter()
            .filter(|n| e.get("workspaces", n)["status"]["phase"] != "Online")
            .collect::<Vec<_>>(),
        e.tail()
    );
    // What the template asked for is on the records.
    let ceo = e.get("workspaces", "acme.ceo");
    assert_eq!(
        ceo["spec"]["channels"][0]["configFrom"],
        serde_json::json!({"name": "acme.ceo-org-env", "key": "TELEGRAM_BOT_TOKEN"})
    );
    assert_eq!(ceo["spec"]["schedules"][0]["name"], "weekly-review");
    assert!(
        ceo["spec"].get("workspaceDir").is_none(),
        "access none: no bind"
    );
    let dev = e.get(
        "workspaces",
        "acme.ceo.engineering-lead.platform-lead.backend-dev",
    );
    assert_eq!(
        dev["spec"]["files"]["filesDir"], "acme/roles/backend-dev",
        "{}",
        dev["spec"]
    );
    assert!(
        dev["spec"]["files"]["inline"]["initial-prompt.md"]
            .as_str()
            .is_some_and(|p| p.contains("You are the Backend Dev"))
    );
    let before: Vec<(String, String)> = refs
        .iter()
        .map(|n| (n.to_string(), uid(&e.get("workspaces", n))))
        .collect();

    // A re-import changes nothing.
    e.kubectl(
        &["annotate", "orgimport", "acme", "molecule.ai/reimport=1"],
        None,
    );
    e.kubectl(
        &[
            "patch",
            "orgimport",
            "acme",
            "--type=merge",
            "-p",
            r#"{"spec":{"force":true}}"#,
        ],
        None,
    );
    let t = std::time::Instant::now();
    let o = e.wait_reason("acme", "Imported", 300);
    eprintln!("re-import of 41 took {:?}", t.elapsed());
    assert_eq!(o["metadata"]["generation"], 2);
    assert_eq!(
        o["status"]["counts"],
        serde_json::json!({"desired": 41, "created": 0, "updated": 0, "unchanged": 41, "pruned": 0, "skipped": 0})
    );

    // Dropping a team from org.yaml prunes exactly that team (10 workspaces).
    let org = e.root().join("acme/org.yaml");
    let yaml = std::fs::read_to_string(&org).expect("org.yaml");
    std::fs::write(
        &org,
        yaml.replace("      - !include teams/marketing.yaml\n", ""),
    )
    .expect("write");
    e.kubectl(
        &[
            "annotate",
            "--overwrite",
            "orgimport",
            "acme",
            "molecule.ai/reimport=2",
        ],
        None,
    );
    let ok = eventually(180, || {
        e.get("orgimports", "acme")["status"]["counts"]["pruned"] == 10
            && e.workspaces().len() == 31
    });
    assert!(
        ok,
        "{}\n{}",
        e.get("orgimports", "acme")["status"],
        e.tail()
    );
    for (name, u) in &before {
        let now = e.get("workspaces", name);
        if name.starts_with("acme.ceo.marketing-lead") {
            assert!(now.is_null(), "{name} was not pruned");
        } else {
            assert_eq!(&uid(&now), u, "{name} was touched");
        }
    }
    e.kubectl(&["delete", "orgimport", "acme"], None);
    let ok = eventually(180, || {
        e.workspaces().is_empty() && managed_in(&e.ns, "container").is_empty()
    });
    assert!(ok, "left behind\n{}", e.tail());
}
