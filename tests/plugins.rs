//! Plugins as desired state (issue 5): PluginInstall lands a plugin in a running echo workspace
//! atomically, hot or cold; upstream changes queue as PluginUpdates approved or dismissed with
//! the real kubectl; faults in the swap leave live content intact. Every test runs `molecule
//! serve` against the real Docker engine with real git repositories made in a temp dir, one at
//! a time, each in its own namespace.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{Backend, Server, docker, eventually, text};
use serde_json::Value;

static DOCKER: Mutex<()> = Mutex::new(());

const FAST: &[&str] = &[
    "--controllers",
    "all",
    "--agent-heartbeat-seconds",
    "1",
    "--heartbeat-timeout-seconds",
    "90",
    "--reap-interval-seconds",
    "5",
    "--plugin-drift-tick-seconds",
    "1",
    "--plugin-failpoints",
];

/// A serve with its own plugin registry dir.
struct Env {
    s: Server,
    registry: tempfile::TempDir,
    ns: String,
}

fn start() -> Env {
    start_with(None)
}

/// A serve whose registry is `registry` (default: a fresh temp dir).
fn start_with(registry_dir: Option<&Path>) -> Env {
    let registry = tempfile::tempdir().expect("registry");
    let reg = registry_dir
        .unwrap_or(registry.path())
        .to_string_lossy()
        .to_string();
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--plugins", &reg]);
    let s = Server::start_with(Backend::Sqlite, &args);
    Env {
        s,
        registry,
        ns: format!("p{}", molecule::util::random_suffix(8)),
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop the server first: a running Workspace controller would re-create what we remove.
        self.s.kill9();
        let filter = format!("label=molecule.ai/namespace={}", self.ns);
        for c in docker(&["ps", "-aq", "--filter", &filter]).1.lines() {
            docker(&["rm", "-f", c]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &filter])
            .1
            .lines()
        {
            docker(&["volume", "rm", "-f", v]);
        }
    }
}

impl Env {
    fn tail(&self) -> String {
        let log = self.s.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-n", &self.ns]);
        let o = self.s.kubectl("1.33", &full);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed:\n{}\nserver log:\n{}",
            text(&o),
            self.tail()
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    fn apply(&self, yaml: &str) {
        let o = self
            .s
            .kubectl_stdin("1.33", &["apply", "-n", &self.ns, "-f", "-"], Some(yaml));
        assert!(o.status.success(), "apply failed:\n{}", text(&o));
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

    fn list(&self, plural: &str) -> Vec<Value> {
        let (_, body) = self.s.http(
            "GET",
            &format!("/apis/molecule.ai/v1alpha1/namespaces/{}/{plural}", self.ns),
            None,
            b"",
        );
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        assert!(
            eventually(secs, &mut f),
            "{what}\nserver log:\n{}",
            self.tail()
        );
    }

    fn workspace(&self, name: &str, extra: &str) {
        self.apply(&format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\n{extra}spec:\n  runtime: echo\n"
        ));
    }

    /// Online, with no restart requested and not yet done (`molecule.ai/restartedAt` equals
    /// `status.restartedAt`, which the Workspace controller records once the new container
    /// runs): a settled workspace.
    fn online(&self, name: &str) -> bool {
        let w = self.get("workspaces", name);
        let asked = &w["metadata"]["annotations"]["molecule.ai/restartedAt"];
        w["status"]["phase"] == "Online"
            && (asked.is_null() || *asked == w["status"]["restartedAt"])
    }

    fn wait_online(&self, name: &str) {
        self.wait(&format!("{name} is not Online"), 240, || {
            self.get("workspaces", name)["status"]["phase"] == "Online"
        });
    }

    fn container_id(&self, ws: &str) -> String {
        self.get("workspaces", ws)["status"]["containerId"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn container_name(&self, ws: &str) -> String {
        self.get("workspaces", ws)["status"]["containerName"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn install(&self, name: &str, ws: &str, source: &str, extra: &str) {
        self.apply(&format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: PluginInstall\nmetadata:\n  name: {name}\nspec:\n  workspaceRef: {{name: {ws}}}\n  source: \"{source}\"\n{extra}"
        ));
    }

    fn ready(&self, pi: &str) -> (String, String, String) {
        let v = self.get("plugininstalls", pi);
        let c = v["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or(Value::Null);
        (
            c["status"].as_str().unwrap_or("").to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        )
    }

    fn installed_sha(&self, pi: &str) -> String {
        self.get("plugininstalls", pi)["status"]["installedSha"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn wait_installed(&self, pi: &str, sha: &str) {
        self.wait(
            &format!("{pi} not installed at {sha}: {:?}", self.ready(pi)),
            240,
            || self.installed_sha(pi) == sha && self.ready(pi).0 == "True",
        );
    }

    fn updates_of(&self, pi: &str) -> Vec<Value> {
        self.list("pluginupdates")
            .into_iter()
            .filter(|u| u["spec"]["pluginInstallRef"]["name"] == pi)
            .collect()
    }

    fn decide(&self, names: &[&str], decision: &str) {
        let mut args = vec!["patch", "pluginupdate"];
        args.extend_from_slice(names);
        let patch = format!(r#"{{"spec":{{"decision":"{decision}"}}}}"#);
        args.extend(["--type=merge", "-p", &patch]);
        self.kubectl(&args);
    }

    /// Files under /configs/plugins of the workspace's container, with contents, via the
    /// archive API (`docker cp`); empty when the directory does not exist.
    fn plugin_files(&self, ws: &str) -> BTreeMap<String, String> {
        let tmp = tempfile::tempdir().expect("tmp");
        let (ok, _) = docker(&[
            "cp",
            &format!("{}:/configs/plugins", self.container_name(ws)),
            &tmp.path().to_string_lossy(),
        ]);
        let mut out = BTreeMap::new();
        if ok {
            walk(&tmp.path().join("plugins"), "", &mut out);
        }
        out
    }

    /// Arms (or disarms, with "off") an in-container failpoint.
    fn failpoint(&self, ws: &str, step: &str) {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join(".failpoint");
        std::fs::write(&f, step).expect("write");
        let (ok, out) = docker(&[
            "cp",
            &f.to_string_lossy(),
            &format!("{}:/configs/plugins/.failpoint", self.container_name(ws)),
        ]);
        assert!(ok, "docker cp failpoint: {out}");
    }

    /// `GET /plugins` of the echo agent: what the agent itself reads.
    fn agent_plugins(&self, ws: &str) -> Value {
        let url = self.get("workspaces", ws)["status"]["url"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let (_, body) = http_get(&format!("{url}/plugins"), None);
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.insert(format!("{rel}/"), String::new());
            walk(&e.path(), &rel, out);
        } else {
            out.insert(rel, std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
}

/// The files of one plugin in a `plugin_files` listing, relative to its dir.
fn plugin_dir(files: &BTreeMap<String, String>, name: &str) -> BTreeMap<String, String> {
    let prefix = format!("{name}/");
    files
        .iter()
        .filter_map(|(p, c)| {
            p.strip_prefix(&prefix)
                .filter(|r| !r.is_empty() && !r.ends_with('/'))
                .map(|r| (r.to_string(), c.clone()))
        })
        .collect()
}

/// Entries left in `.staging/` and `.previous/`.
fn leftovers(files: &BTreeMap<String, String>) -> Vec<String> {
    files
        .keys()
        .filter(|p| {
            (p.starts_with(".staging/") || p.starts_with(".previous/"))
                && *p != ".staging/"
                && *p != ".previous/"
        })
        .cloned()
        .collect()
}

/// A plain HTTP/1.0 GET; (status, body bytes).
fn http_get(url: &str, bearer: Option<&str>) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let Ok(mut s) = std::net::TcpStream::connect(authority) else {
        return (0, vec![]);
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, vec![]);
    }
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, buf[head_end..].to_vec())
}

/// A real git repository in a temp dir.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let r = Repo {
            dir: tempfile::tempdir().expect("repo"),
        };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn git(&self, args: &[&str]) -> String {
        let o = Command::new("git")
            .arg("-C")
            .arg(self.dir.path())
            .args([
                "-c",
                "user.email=t@example.com",
                "-c",
                "user.name=t",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "tag.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git");
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn commit(&self, files: &[(&str, &str)], msg: &str) -> String {
        write_files(self.dir.path(), files);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (p, c) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, c).expect("write");
        if p.starts_with("hooks/") {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
        }
    }
}

/// A plugin with a skill, a rule and a hook.
fn plugin(name: &str, skill: &str, hook: &str) -> Vec<(String, String)> {
    vec![
        (
            "plugin.yaml".into(),
            format!(
                "name: {name}\nversion: 1.0.0\ndescription: test plugin\nruntimes: [echo]\nskills: [greet]\n"
            ),
        ),
        ("skills/greet/SKILL.md".into(), skill.into()),
        ("rules/polite.md".into(), "Be polite.\n".into()),
        ("hooks/on-start.sh".into(), hook.into()),
    ]
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn skill_text(agent: &Value, plugin: &str) -> String {
    agent["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == plugin))
        .and_then(|p| p["skills"][0]["content"].as_str())
        .unwrap_or("")
        .to_string()
}

#[test]
fn install_hot_and_cold_updates_then_uninstall() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start();
    let repo = Repo::new();
    let c1 = repo.commit(
        &refs(&plugin("hello", "# Greet v1\n", "#!/bin/sh\necho v1\n")),
        "v1",
    );
    e.workspace("alpha", "");
    e.wait_online("alpha");
    e.install(
        "hello",
        "alpha",
        &repo.url(),
        "  track: branch:main\n  checkInterval: 1s\n",
    );
    e.wait_installed("hello", &c1);
    let st = e.get("plugininstalls", "hello")["status"].clone();
    assert_eq!(
        st["lastRestartClass"], "cold",
        "a first install is cold: {st}"
    );
    assert_eq!(st["pluginName"], "hello");
    // The cold restart gives a new container; the plugin is re-applied (found in place).
    e.wait(
        "the plugin is not recorded in the new container",
        240,
        || {
            let s = e.get("plugininstalls", "hello")["status"].clone();
            e.online("alpha")
                && s["installedContainerId"].as_str() == Some(e.container_id("alpha").as_str())
                && e.ready("hello").0 == "True"
        },
    );
    let files = e.plugin_files("alpha");
    let live = plugin_dir(&files, "hello");
    assert_eq!(
        live.get(".complete").map(String::as_str),
        Some(format!("{c1}\n").as_str())
    );
    assert_eq!(
        live.get("skills/greet/SKILL.md").map(String::as_str),
        Some("# Greet v1\n")
    );
    assert_eq!(
        live.get("hooks/on-start.sh").map(String::as_str),
        Some("#!/bin/sh\necho v1\n")
    );
    assert_eq!(live.len(), 5, "{live:?}");
    assert!(leftovers(&files).is_empty(), "{files:?}");
    // The agent reads them.
    assert_eq!(
        skill_text(&e.agent_plugins("alpha"), "hello"),
        "# Greet v1\n"
    );

    // A SKILL.md-only change upstream: one PluginUpdate; approving it is hot.
    let c2 = repo.commit(&[("skills/greet/SKILL.md", "# Greet v2\n")], "v2");
    e.wait("no PluginUpdate for the new commit", 120, || {
        e.updates_of("hello").len() == 1
    });
    let u = e.updates_of("hello")[0].clone();
    assert_eq!(u["spec"]["toSha"], c2.as_str());
    assert_eq!(u["spec"]["fromSha"], c1.as_str());
    assert_eq!(u["spec"]["decision"], "Pending");
    let queue = e.kubectl(&["get", "pluginupdates"]);
    for col in [
        "PLUGIN",
        "WORKSPACE",
        "TIER",
        "REF",
        "TO",
        "DECISION",
        "PHASE",
    ] {
        assert!(queue.contains(col), "{queue}");
    }
    assert!(
        queue.contains("hello") && queue.contains("alpha") && queue.contains("main"),
        "{queue}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        e.updates_of("hello").len(),
        1,
        "a second pass queued a duplicate"
    );
    assert_eq!(
        e.installed_sha("hello"),
        c1,
        "nothing is applied before approval"
    );
    let container = e.container_id("alpha");
    let name = u["metadata"]["name"].as_str().expect("name").to_string();
    e.decide(&[&name], "Approved");
    e.wait_installed("hello", &c2);
    let st = e.get("plugininstalls", "hello")["status"].clone();
    assert_eq!(st["lastRestartClass"], "hot", "{st}");
    e.wait("the update is not Applied", 60, || {
        e.get("pluginupdates", &name)["status"]["phase"] == "Applied"
    });
    assert_eq!(
        e.container_id("alpha"),
        container,
        "a hot change keeps the container"
    );
    assert_eq!(
        skill_text(&e.agent_plugins("alpha"), "hello"),
        "# Greet v2\n"
    );

    // A hook change: cold, a new container, and the plugin is still installed afterwards.
    let c3 = repo.commit(&[("hooks/on-start.sh", "#!/bin/sh\necho v3\n")], "v3");
    e.wait("no PluginUpdate for the hook commit", 120, || {
        e.updates_of("hello")
            .iter()
            .any(|u| u["spec"]["toSha"] == c3.as_str())
    });
    let name3 = e
        .updates_of("hello")
        .into_iter()
        .find(|u| u["spec"]["toSha"] == c3.as_str())
        .and_then(|u| u["metadata"]["name"].as_str().map(String::from))
        .expect("update");
    e.decide(&[&name3], "Approved");
    e.wait_installed("hello", &c3);
    assert_eq!(
        e.get("plugininstalls", "hello")["status"]["lastRestartClass"],
        "cold"
    );
    e.wait("no new container after a cold change", 240, || {
        let id = e.container_id("alpha");
        !id.is_empty()
            && id != container
            && e.online("alpha")
            && e.get("plugininstalls", "hello")["status"]["installedContainerId"].as_str()
                == Some(id.as_str())
    });
    let files = e.plugin_files("alpha");
    let live = plugin_dir(&files, "hello");
    assert_eq!(
        live.get(".complete").map(String::as_str),
        Some(format!("{c3}\n").as_str())
    );
    assert_eq!(
        live.get("hooks/on-start.sh").map(String::as_str),
        Some("#!/bin/sh\necho v3\n")
    );
    assert!(leftovers(&files).is_empty(), "{files:?}");
    assert_eq!(
        e.agent_plugins("alpha")["plugins"][0]["hooks"][0],
        "on-start.sh"
    );
    let describe = e.kubectl(&["describe", "plugininstall", "hello"]);
    assert!(
        describe.contains("Installed") && describe.contains("Updated"),
        "{describe}"
    );

    // Uninstall: the files and the record go, and the queue with them.
    e.kubectl(&["delete", "plugininstall", "hello", "--timeout=60s"]);
    assert!(e.get("plugininstalls", "hello").is_null());
    assert!(plugin_dir(&e.plugin_files("alpha"), "hello").is_empty());
    e.wait("the queued updates were not garbage-collected", 60, || {
        e.updates_of("hello").is_empty()
    });
    e.wait("the agent still lists the plugin", 60, || {
        e.agent_plugins("alpha")["plugins"]
            .as_array()
            .is_some_and(|l| l.is_empty())
    });
}

#[test]
fn drift_on_new_tags_dedupes_dismisses_and_auto_applies() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start();
    let repo = Repo::new();
    let v100 = repo.commit(
        &refs(&plugin("tagged", "# v1.0.0\n", "#!/bin/sh\n")),
        "v1.0.0",
    );
    repo.git(&["tag", "v1.0.0"]);
    e.workspace("beta", "");
    e.wait_online("beta");
    e.install(
        "tagged",
        "beta",
        &repo.url(),
        "  track: tag:latest\n  checkInterval: 1s\n",
    );
    e.wait_installed("tagged", &v100);
    assert_eq!(
        e.get("plugininstalls", "tagged")["status"]["installedRef"],
        "v1.0.0"
    );

    // A commit on the branch is not a new tag: nothing is queued.
    repo.commit(&[("skills/greet/SKILL.md", "# untagged\n")], "wip");
    std::thread::sleep(Duration::from_secs(3));
    assert!(e.updates_of("tagged").is_empty());

    // A new (annotated) tag: exactly one PluginUpdate, however many passes run.
    let v110 = repo.commit(&[("skills/greet/SKILL.md", "# v1.1.0\n")], "v1.1.0");
    repo.git(&["tag", "-a", "v1.1.0", "-m", "release"]);
    e.wait("no PluginUpdate for the new tag", 120, || {
        e.updates_of("tagged").len() == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    let queued = e.updates_of("tagged");
    assert_eq!(queued.len(), 1, "duplicates: {queued:?}");
    assert_eq!(queued[0]["spec"]["toSha"], v110.as_str());
    assert_eq!(queued[0]["spec"]["ref"], "v1.1.0");
    let name = queued[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    e.wait("the update is not Pending", 60, || {
        e.get("pluginupdates", &name)["status"]["phase"] == "Pending"
    });

    // Dismiss: nothing changes, and that sha is never queued again.
    let container = e.container_id("beta");
    e.decide(&[&name], "Dismissed");
    e.wait("the update is not Dismissed", 60, || {
        e.get("pluginupdates", &name)["status"]["phase"] == "Dismissed"
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(e.installed_sha("tagged"), v100);
    assert_eq!(
        e.updates_of("tagged").len(),
        1,
        "the dismissed sha was queued again"
    );
    assert_eq!(e.container_id("beta"), container);
    assert_eq!(
        plugin_dir(&e.plugin_files("beta"), "tagged")
            .get("skills/greet/SKILL.md")
            .map(String::as_str),
        Some("# v1.0.0\n")
    );

    // updatePolicy: Auto approves the next one by itself (a hot change).
    e.kubectl(&[
        "patch",
        "plugininstall",
        "tagged",
        "--type=merge",
        "-p",
        r#"{"spec":{"updatePolicy":"Auto"}}"#,
    ]);
    let v120 = repo.commit(&[("skills/greet/SKILL.md", "# v1.2.0\n")], "v1.2.0");
    repo.git(&["tag", "v1.2.0"]);
    e.wait_installed("tagged", &v120);
    let auto = e
        .updates_of("tagged")
        .into_iter()
        .find(|u| u["spec"]["toSha"] == v120.as_str())
        .expect("the auto update");
    assert_eq!(auto["spec"]["decision"], "Approved");
    assert_eq!(
        e.get("plugininstalls", "tagged")["status"]["lastRestartClass"],
        "hot"
    );
    assert_eq!(e.container_id("beta"), container);
    assert_eq!(skill_text(&e.agent_plugins("beta"), "tagged"), "# v1.2.0\n");
}

#[test]
fn canary_workspaces_are_updated_before_production() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start();
    let repo = Repo::new();
    let v1 = repo.commit(&refs(&plugin("tiered", "# v1\n", "#!/bin/sh\n")), "v1");
    repo.git(&["tag", "v1"]);
    e.workspace("can", "  labels: {molecule.ai/update-tier: canary}\n");
    e.workspace("prod", "");
    e.wait_online("can");
    e.wait_online("prod");
    for (pi, ws) in [("can-tiered", "can"), ("prod-tiered", "prod")] {
        e.install(
            pi,
            ws,
            &repo.url(),
            "  track: tag:latest\n  checkInterval: 1s\n",
        );
    }
    e.wait_installed("can-tiered", &v1);
    e.wait_installed("prod-tiered", &v1);
    e.wait("the workspaces did not settle after the first installs", 240, || {
        ["can", "prod"].iter().all(|w| {
            e.online(w)
                && e.get("plugininstalls", &format!("{w}-tiered"))["status"]["installedContainerId"].as_str()
                    == Some(e.container_id(w).as_str())
        })
    });

    // The canary's swap fails until the failpoint is disarmed.
    e.failpoint("can", "swap");
    let v2 = repo.commit(&[("skills/greet/SKILL.md", "# v2\n")], "v2");
    repo.git(&["tag", "v2"]);
    e.wait("two updates were not queued", 120, || {
        e.updates_of("can-tiered").len() == 1 && e.updates_of("prod-tiered").len() == 1
    });
    let cu = e.updates_of("can-tiered")[0].clone();
    let pu = e.updates_of("prod-tiered")[0].clone();
    assert_eq!(cu["spec"]["tier"], "canary");
    assert_eq!(pu["spec"]["tier"], "production");
    let cn = cu["metadata"]["name"].as_str().expect("name").to_string();
    let pn = pu["metadata"]["name"].as_str().expect("name").to_string();
    // Both approved in one batch.
    e.decide(&[&pn, &cn], "Approved");
    e.wait("the canary update did not fail", 120, || {
        e.get("pluginupdates", &cn)["status"]["phase"] == "Failed"
    });
    e.wait("production is not held back", 60, || {
        e.get("pluginupdates", &pn)["status"]["phase"] == "WaitingForCanary"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        e.installed_sha("prod-tiered"),
        v1,
        "production moved before the canary"
    );
    assert_eq!(
        e.get("pluginupdates", &pn)["status"]["phase"],
        "WaitingForCanary"
    );
    assert!(
        e.get("pluginupdates", &pn)["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("canary"),
        "{}",
        e.get("pluginupdates", &pn)
    );
    e.failpoint("can", "off");
    e.wait_installed("can-tiered", &v2);
    e.wait_installed("prod-tiered", &v2);
    let at = |n: &str| {
        e.get("pluginupdates", n)["status"]["appliedAt"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    e.wait("both updates are not Applied", 60, || {
        !at(&cn).is_empty() && !at(&pn).is_empty()
    });
    assert!(
        at(&cn) <= at(&pn),
        "canary applied at {}, production at {}",
        at(&cn),
        at(&pn)
    );
}

#[test]
fn swap_faults_keep_live_content_intact_and_a_kill_mid_install_heals() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start();
    let reg = e.registry.path().join("faulty");
    let v1 = plugin("faulty", "# v1\n", "#!/bin/sh\necho v1\n");
    write_files(&reg, &refs(&v1));
    e.workspace("gamma", "");
    e.wait_online("gamma");
    e.install("faulty", "gamma", "local://faulty", "  checkInterval: 1s\n");
    e.wait("the local plugin is not Ready", 240, || {
        e.ready("faulty").0 == "True"
    });
    e.wait(
        "the workspace did not settle after the cold install",
        240,
        || {
            e.online("gamma")
                && e.get("plugininstalls", "faulty")["status"]["installedContainerId"].as_str()
                    == Some(e.container_id("gamma").as_str())
        },
    );
    let before = plugin_dir(&e.plugin_files("gamma"), "faulty");
    assert_eq!(
        before.get("skills/greet/SKILL.md").map(String::as_str),
        Some("# v1\n")
    );
    let sha1 = e.installed_sha("faulty");

    // Edit the registry: the drift loop queues the new content; approve it.
    write_files(
        &reg,
        &[
            ("hooks/on-start.sh", "#!/bin/sh\necho v2\n"),
            ("skills/greet/SKILL.md", "# v2\n"),
        ],
    );
    let approve_latest = |e: &Env| {
        e.wait("no update queued for the registry edit", 120, || {
            e.updates_of("faulty")
                .iter()
                .any(|u| u["spec"]["decision"] == "Pending")
        });
        let names: Vec<String> = e
            .updates_of("faulty")
            .into_iter()
            .filter(|u| u["spec"]["decision"] == "Pending")
            .filter_map(|u| u["metadata"]["name"].as_str().map(String::from))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        e.decide(&refs, "Approved");
    };

    // 1. The snapshot fails: live untouched, the staging dir removed.
    e.failpoint("gamma", "snapshot");
    approve_latest(&e);
    e.wait("no SnapshotFailed", 120, || {
        e.ready("faulty").1 == "SnapshotFailed"
    });
    let files = e.plugin_files("gamma");
    assert_eq!(plugin_dir(&files, "faulty"), before, "live content changed");
    assert!(leftovers(&files).is_empty(), "{files:?}");

    // 2. The swap fails after the snapshot: the previous version is restored exactly.
    e.failpoint("gamma", "swap");
    e.wait("no SwapFailed", 120, || e.ready("faulty").1 == "SwapFailed");
    let files = e.plugin_files("gamma");
    assert_eq!(
        plugin_dir(&files, "faulty"),
        before,
        "live content was not restored"
    );
    assert!(leftovers(&files).is_empty(), "{files:?}");
    assert_eq!(e.installed_sha("faulty"), sha1);
    let failed = e.updates_of("faulty");
    assert!(
        failed.iter().any(|u| u["status"]["phase"] == "Failed"),
        "{failed:?}"
    );

    // 3. The marker fails: the new content stays, unmarked (the agent does not load it).
    e.failpoint("gamma", "marker");
    e.wait("no MarkerMissing", 120, || {
        e.ready("faulty").1 == "MarkerMissing"
    });
    let live = plugin_dir(&e.plugin_files("gamma"), "faulty");
    assert_eq!(
        live.get("skills/greet/SKILL.md").map(String::as_str),
        Some("# v2\n")
    );
    assert!(!live.contains_key(".complete"));
    assert!(
        e.agent_plugins("gamma")["plugins"]
            .as_array()
            .is_some_and(|l| l.is_empty()),
        "an unmarked plugin was loaded"
    );
    e.failpoint("gamma", "off");
    e.wait("the retry did not mark the plugin", 120, || {
        e.ready("faulty").0 == "True"
    });
    e.wait("the cold update did not settle", 240, || {
        e.online("gamma")
            && e.get("plugininstalls", "faulty")["status"]["installedContainerId"].as_str()
                == Some(e.container_id("gamma").as_str())
    });
    let files = e.plugin_files("gamma");
    let v2 = plugin_dir(&files, "faulty");
    assert!(v2.contains_key(".complete"));
    assert!(leftovers(&files).is_empty(), "{files:?}");

    // 4. The container is killed mid-install (after the snapshot, before the swap).
    e.failpoint("gamma", "hang-after-snapshot");
    write_files(&reg, &[("skills/greet/SKILL.md", "# v3\n")]);
    approve_latest(&e);
    e.wait("the install did not reach the snapshot", 120, || {
        let f = e.plugin_files("gamma");
        plugin_dir(&f, "faulty").is_empty() && f.keys().any(|k| k.starts_with(".previous/faulty."))
    });
    e.failpoint("gamma", "off");
    assert!(docker(&["kill", &e.container_name("gamma")]).0);
    e.wait("the install did not converge after the kill", 300, || {
        let id = e.container_id("gamma");
        !id.is_empty()
            && e.ready("faulty").0 == "True"
            && e.get("plugininstalls", "faulty")["status"]["installedContainerId"].as_str()
                == Some(id.as_str())
            && e.online("gamma")
    });
    let files = e.plugin_files("gamma");
    let live = plugin_dir(&files, "faulty");
    assert_eq!(
        live.get("skills/greet/SKILL.md").map(String::as_str),
        Some("# v3\n"),
        "{files:?}"
    );
    assert!(live.contains_key(".complete"));
    assert!(leftovers(&files).is_empty(), "{files:?}");
    assert_eq!(skill_text(&e.agent_plugins("gamma"), "faulty"), "# v3\n");
}

#[test]
fn bad_input_gets_a_clear_condition_and_leaves_the_workspace_untouched() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start();
    let reg = e.registry.path();
    // Over the 100 MiB staging cap (sparse: refused before a byte is read).
    write_files(&reg.join("big"), &[("plugin.yaml", "name: big\n")]);
    let big = std::fs::File::create(reg.join("big/blob.bin")).expect("blob");
    big.set_len(101 * 1024 * 1024).expect("set_len");
    // manifest.json that does not match.
    write_files(
        &reg.join("tampered"),
        &[
            ("plugin.yaml", "name: tampered\n"),
            ("rules/a.md", "x"),
            (
                "manifest.json",
                r#"{"files":{"plugin.yaml":"00","rules/a.md":"00"}}"#,
            ),
        ],
    );
    write_files(&reg.join("noyaml"), &[("skills/x/SKILL.md", "x")]);
    let repo = Repo::new();
    repo.commit(&refs(&plugin("remote", "# r\n", "#!/bin/sh\n")), "r");

    e.workspace("delta", "");
    e.wait_online("delta");
    let container = e.container_id("delta");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("dotdot", "local://../x".into(), "", "InvalidSource"),
        ("semicolon", "local://a;b".into(), "", "InvalidSource"),
        ("big", "local://big".into(), "", "TooLarge"),
        (
            "tampered",
            "local://tampered".into(),
            "",
            "IntegrityMismatch",
        ),
        ("noyaml", "local://noyaml".into(), "", "MissingPluginYaml"),
        ("missing", "local://nope".into(), "", "PluginNotFound"),
        ("noref", repo.url(), "  track: tag:v9.9.9\n", "RefNotFound"),
        ("unpinned", repo.url(), "", "Unpinned"),
        ("bare", repo.url(), "  track: main\n", "InvalidTrack"),
        (
            "creds",
            "https://user:s3cret@example.com/p.git".into(),
            "  track: tag:v1\n",
            "InvalidSource",
        ),
    ];
    for (name, source, extra, _) in &cases {
        e.install(name, "delta", source, extra);
    }
    for (name, _, _, reason) in &cases {
        e.wait(
            &format!("{name}: no {reason} condition: {:?}", e.ready(name)),
            240,
            || {
                let (status, r, _) = e.ready(name);
                status == "False" && r == *reason
            },
        );
    }
    let (_, _, msg) = e.ready("creds");
    assert!(!msg.contains("s3cret"), "{msg}");
    let (_, _, msg) = e.ready("bare");
    assert!(
        msg.contains("branch:"),
        "the message says what to write instead: {msg}"
    );
    let describe = e.kubectl(&["describe", "plugininstall", "tampered"]);
    assert!(
        describe.contains("Warning") && describe.contains("IntegrityMismatch"),
        "{describe}"
    );
    let wide = e.kubectl(&["get", "plugininstalls", "-o", "wide"]);
    assert!(
        wide.contains("TooLarge") && wide.contains("RefNotFound"),
        "{wide}"
    );
    // The workspace is untouched: same container, no restart requested, no plugin files.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(e.container_id("delta"), container);
    let ws = e.get("workspaces", "delta");
    assert!(
        ws["metadata"]["annotations"]
            .get("molecule.ai/restartedAt")
            .is_none(),
        "{ws}"
    );
    let files = e.plugin_files("delta");
    assert!(
        files
            .keys()
            .all(|k| k.starts_with(".staging") || k.starts_with(".previous")),
        "{files:?}"
    );
    assert!(leftovers(&files).is_empty());

    // An external workspace is refused with the download route, which serves the plugin.
    e.apply("apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: remote\nspec:\n  runtime: external\n  url: https://agent.example.com/a2a\n");
    e.install("ext", "remote", &repo.url(), "  track: branch:main\n");
    e.wait("no ExternalRuntime condition", 120, || {
        e.ready("ext").1 == "ExternalRuntime"
    });
    let (_, _, msg) = e.ready("ext");
    let route = format!("/registry/plugins/{}/ext/download", e.ns);
    assert!(msg.contains(&route), "{msg}");
    let mut token = String::new();
    e.wait("no agent token Secret", 120, || {
        let o = e.s.kubectl(
            "1.33",
            &[
                "get",
                "secret",
                "remote-agent-token",
                "-n",
                &e.ns,
                "-o",
                "jsonpath={.data.token}",
            ],
        );
        token = String::from_utf8_lossy(&o.stdout).trim().to_string();
        o.status.success() && !token.is_empty()
    });
    use base64::Engine;
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&token)
            .expect("b64"),
    )
    .expect("utf8");
    let url = format!("http://127.0.0.1:{}{route}", e.s.port);
    let (code, _) = http_get(&url, Some("wrong-token"));
    assert_eq!(code, 401);
    let (code, body) = http_get(&url, Some(&token));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let tar = String::from_utf8_lossy(&body);
    assert!(
        tar.contains("remote/plugin.yaml")
            && tar.contains("remote/skills/greet/SKILL.md")
            && tar.contains("remote/.complete")
    );
}

#[test]
fn a_plugin_of_an_org_workspace_arrives_with_it_and_honours_the_allowlist() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start();
    write_files(
        &e.registry.path().join("hello"),
        &refs(&plugin("hello", "# org\n", "#!/bin/sh\n")),
    );
    write_files(
        &e.registry.path().join("other"),
        &refs(&plugin("other", "# no\n", "#!/bin/sh\n")),
    );
    // A real org import: its template gives the workspace two plugins; the import allows only
    // `hello`. The import turns `plugins:` into PluginInstalls owned by the child Workspace.
    let team = |plugins: &str| {
        format!(
            "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: team\nspec:\n  allowedPlugins: [hello]\n  source:\n    template: |\n      name: team\n      defaults: {{runtime: echo, plugins: [{plugins}]}}\n      workspaces:\n        - name: Lead\n          role: lead\n"
        )
    };
    e.apply(&team("hello, other"));
    e.wait("the org import did not create its workspace", 120, || {
        !e.get("workspaces", "team.lead").is_null()
    });
    e.wait("the org plugin did not arrive", 240, || {
        e.ready("team.lead-hello").0 == "True"
    });
    e.wait_online("team.lead");
    e.wait("the workspace did not settle with its plugin", 240, || {
        e.get("plugininstalls", "team.lead-hello")["status"]["installedContainerId"].as_str()
            == Some(e.container_id("team.lead").as_str())
            && e.online("team.lead")
    });
    assert_eq!(
        skill_text(&e.agent_plugins("team.lead"), "hello"),
        "# org\n"
    );
    // The import announced its plugins on the workspace, whose first start waited for their
    // records and carried them: no restart for them (ADR 0056).
    let lead = e.get("workspaces", "team.lead");
    assert!(
        lead["metadata"]["annotations"]["molecule.ai/restartedAt"].is_null(),
        "the org plugin restarted the workspace: {lead}"
    );
    assert!(
        e.get("plugininstalls", "team.lead-hello")["status"]["lastRestartClass"].is_null(),
        "the org plugin was installed cold"
    );
    e.wait("the allowlist did not refuse `other`", 120, || {
        e.ready("team.lead-other").1 == "NotAllowed"
    });
    assert!(plugin_dir(&e.plugin_files("team.lead"), "other").is_empty());
    // A plugin dropped from the template is uninstalled; the rest stays.
    e.apply(&team("hello"));
    e.wait("the dropped plugin's record stayed", 120, || {
        e.get("plugininstalls", "team.lead-other").is_null()
    });
    assert_eq!(e.ready("team.lead-hello").0, "True");
    // The records go with the workspace, which goes with its import.
    e.kubectl(&["delete", "orgimport", "team", "--timeout=90s"]);
    e.wait("the PluginInstalls outlived their workspace", 120, || {
        e.get("workspaces", "team.lead").is_null()
            && e.get("plugininstalls", "team.lead-hello").is_null()
            && e.get("plugininstalls", "team.lead-other").is_null()
    });
}

/// A workspace applied together with its PluginInstall starts with the plugin already in
/// `/configs/plugins` (ADR 0056): the install then finds it unchanged, and the workspace is
/// never restarted for it, although the plugin is cold (it has a hook).
#[test]
fn a_plugin_applied_with_its_workspace_is_there_at_the_first_start_with_no_restart() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let e = start();
    write_files(
        &e.registry.path().join("hello"),
        &refs(&plugin("hello", "# first boot\n", "#!/bin/sh\n")),
    );
    e.apply(
        "apiVersion: molecule.ai/v1alpha1\nkind: PluginInstall\nmetadata:\n  name: boot-hello\nspec:\n  workspaceRef: {name: boot}\n  source: \"local://hello\"\n---\napiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: boot\nspec:\n  runtime: echo\n",
    );
    // The first container the workspace records is the one it keeps.
    let mut first = String::new();
    e.wait("the workspace recorded no container", 240, || {
        first = e.container_id("boot");
        !first.is_empty()
    });
    e.wait(
        "the plugin was not installed into the first container",
        240,
        || {
            e.ready("boot-hello").0 == "True"
                && e.get("plugininstalls", "boot-hello")["status"]["installedContainerId"].as_str()
                    == Some(first.as_str())
        },
    );
    e.wait_online("boot");
    let w = e.get("workspaces", "boot");
    assert!(
        w["metadata"]["annotations"]["molecule.ai/restartedAt"].is_null(),
        "the plugin asked for a restart: {w}"
    );
    assert_eq!(e.container_id("boot"), first, "the workspace was restarted");
    let pi = e.get("plugininstalls", "boot-hello");
    assert!(
        pi["status"]["lastRestartClass"].is_null(),
        "the install restarted the workspace: {pi}"
    );
    let files = plugin_dir(&e.plugin_files("boot"), "hello");
    assert_eq!(
        files.get("skills/greet/SKILL.md").map(String::as_str),
        Some("# first boot\n"),
        "{files:?}"
    );
    assert!(files.contains_key(".complete"), "{files:?}");
    assert_eq!(
        skill_text(&e.agent_plugins("boot"), "hello"),
        "# first boot\n"
    );
    assert!(
        e.s.log().contains("plugins placed for the first start"),
        "the plugin was not placed before the start:\n{}",
        e.tail()
    );
}

#[test]
fn examples_install_into_the_example_workspace() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e = start_with(Some(&root.join("examples/plugins/registry")));
    for f in [
        "examples/workspace.yaml",
        "examples/plugins/plugin-installs.yaml",
    ] {
        e.kubectl(&["apply", "-f", &root.join(f).to_string_lossy()]);
    }
    e.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        &root
            .join("examples/plugins/git-plugin-install.yaml")
            .to_string_lossy(),
    ]);
    for pi in ["echo-1-hello-skills", "echo-1-session-hooks"] {
        e.wait(
            &format!("{pi} is not Ready: {:?}", e.ready(pi)),
            240,
            || e.ready(pi).0 == "True",
        );
    }
    e.wait(
        "the example workspace did not settle with both plugins",
        240,
        || {
            // Two cold installs may mean two restarts: settled once both records are Ready in
            // the container that runs now, and no restart is outstanding.
            let id = e.container_id("echo-1");
            let l = e.agent_plugins("echo-1");
            e.online("echo-1")
                && ["echo-1-hello-skills", "echo-1-session-hooks"]
                    .iter()
                    .all(|pi| {
                        e.ready(pi).0 == "True"
                            && e.get("plugininstalls", pi)["status"]["installedContainerId"]
                                .as_str()
                                == Some(id.as_str())
                    })
                && l["plugins"].as_array().map(|l| l.len()) == Some(2)
        },
    );
    let l = e.agent_plugins("echo-1");
    assert_eq!(l["plugins"][0]["name"], "hello-skills");
    assert_eq!(
        l["plugins"][0]["skills"].as_array().map(|s| s.len()),
        Some(2)
    );
    assert_eq!(l["plugins"][1]["hooks"][0], "on-session-start.sh");
    let wide = e.kubectl(&["get", "plugininstalls", "-o", "wide"]);
    assert!(
        wide.contains("hello-skills") && wide.contains("Installed"),
        "{wide}"
    );
}

#[test]
fn operator_killed_mid_install_converges_after_restart() {
    let _g = DOCKER.lock().unwrap_or_else(|p| p.into_inner());
    let mut e = start();
    let reg = e.registry.path().join("crashy");
    write_files(
        &reg,
        &refs(&plugin("crashy", "# v1\n", "#!/bin/sh\necho v1\n")),
    );
    e.workspace("eps", "");
    e.wait_online("eps");
    e.install("crashy", "eps", "local://crashy", "  checkInterval: 1s\n");
    e.wait("not installed", 240, || e.ready("crashy").0 == "True");
    e.wait("not settled", 240, || {
        e.online("eps")
            && e.get("plugininstalls", "crashy")["status"]["installedContainerId"].as_str()
                == Some(e.container_id("eps").as_str())
    });
    // An update that hangs in the container right after its snapshot.
    e.failpoint("eps", "hang-after-snapshot");
    write_files(&reg, &[("hooks/on-start.sh", "#!/bin/sh\necho v2\n")]);
    e.wait("no update queued", 120, || {
        !e.updates_of("crashy").is_empty()
    });
    let name = e.updates_of("crashy")[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    e.decide(&[&name], "Approved");
    e.wait("the install did not reach the snapshot", 120, || {
        let f = e.plugin_files("eps");
        plugin_dir(&f, "crashy").is_empty() && f.keys().any(|k| k.starts_with(".previous/crashy."))
    });
    // kill -9 the operator mid-install, then start it again on the same data dir.
    let container = e.container_name("eps");
    e.s.kill9();
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join(".failpoint"), "off").expect("write");
    let (ok, out) = docker(&[
        "cp",
        &tmp.path().join(".failpoint").to_string_lossy(),
        &format!("{container}:/configs/plugins/.failpoint"),
    ]);
    assert!(ok, "{out}");
    e.s.spawn();
    e.wait(
        "the install did not converge after the operator restart",
        300,
        || {
            e.ready("crashy").0 == "True"
                && e.get("pluginupdates", &name)["status"]["phase"] == "Applied"
                && e.online("eps")
                && e.get("plugininstalls", "crashy")["status"]["installedContainerId"].as_str()
                    == Some(e.container_id("eps").as_str())
        },
    );
    let files = e.plugin_files("eps");
    let live = plugin_dir(&files, "crashy");
    assert_eq!(
        live.get("hooks/on-start.sh").map(String::as_str),
        Some("#!/bin/sh\necho v2\n"),
        "{files:?}"
    );
    assert!(live.contains_key(".complete"));
    assert!(leftovers(&files).is_empty(), "{files:?}");
    assert_eq!(
        e.get("plugininstalls", "crashy")["status"]["lastRestartClass"],
        "cold"
    );
}
