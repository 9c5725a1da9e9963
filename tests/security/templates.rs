//! Security tests: what org templates may ask of the host (ADR 0039). A template — local, from
//! git or through `!external` — over the template policy (tier, workspace_dir) is refused with
//! the condition `PolicyRefused`, an Event and `status.counts.refused`, and its workspace is not
//! created; the admin may raise the policy on the record. files_dir reads are bounded while
//! reading; volume writes never follow a symlink nor write through a hard link.

use crate::gitrepo as git;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{Backend, Server, eventually, text};

/// A server running the OrgImport controller with its own template root and namespace.
struct Env {
    s: Server,
    /// Template root, git repositories, host dirs.
    tmp: tempfile::TempDir,
    ns: String,
}

impl Env {
    fn start(extra: &[&str]) -> Env {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("templates");
        let repos = tmp.path().join("repos");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::create_dir_all(&repos).expect("repos");
        let root_s = root.to_string_lossy().to_string();
        let mut args = vec!["--controllers", "org_import", "--org-templates", &root_s];
        args.extend_from_slice(extra);
        let allow = format!("file://{}/team/*", repos.display());
        let url = format!("file://{}", repos.display());
        let s = Server::start_with_env(
            Backend::Sqlite,
            &args,
            &[
                ("MOLECULE_EXTERNAL_REPO_ALLOWLIST", allow.as_str()),
                ("MOLECULE_EXTERNAL_GITEA_URL", url.as_str()),
            ],
        );
        let ns = format!("p{}", molecule::util::random_suffix(8));
        Env { s, tmp, ns }
    }

    fn repos(&self) -> PathBuf {
        self.tmp.path().join("repos")
    }

    fn apply(&self, yaml: &str) {
        let o = self
            .s
            .kubectl_stdin("1.33", &["apply", "-n", &self.ns, "-f", "-"], Some(yaml));
        assert!(o.status.success(), "apply failed:\n{}", text(&o));
    }

    fn get(&self, path: &str) -> Value {
        let (code, body) = self.s.http("GET", path, None, b"");
        if code != 200 {
            return Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    fn org(&self, name: &str) -> Value {
        self.get(&format!(
            "/apis/molecule.ai/v1alpha1/namespaces/{}/orgimports/{name}",
            self.ns
        ))
    }

    fn workspace(&self, name: &str) -> Value {
        self.get(&format!(
            "/apis/molecule.ai/v1alpha1/namespaces/{}/workspaces/{name}",
            self.ns
        ))
    }

    fn condition(&self, org: &str, type_: &str) -> Value {
        self.org(org)["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until the import's Ready condition is `Imported` for its current generation.
    fn imported(&self, org: &str) -> Value {
        let ok = eventually(60, || {
            let o = self.org(org);
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && self.condition(org, "Ready")["reason"] == "Imported"
        });
        assert!(
            ok,
            "{org} was not imported: {}\nserver log:\n{}",
            self.org(org)["status"],
            crate::common::tail(&self.s)
        );
        self.org(org)
    }

    /// The Events about the OrgImport `org` with `reason`.
    fn events(&self, org: &str, reason: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/namespaces/{}/events", self.ns))["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == org && e["reason"] == reason)
            .collect()
    }

    /// Asserts the refusal is reported: the condition naming workspace and field, an Event,
    /// and the count.
    fn assert_refused(&self, org: &str, message: &str, refused: i64) {
        let o = self.imported(org);
        let c = self.condition(org, "PolicyRefused");
        assert_eq!(c["status"], "True", "{}", o["status"]);
        let got = c["message"].as_str().unwrap_or("");
        assert!(got.contains(message), "{got:?} lacks {message:?}");
        assert_eq!(o["status"]["counts"]["refused"], refused, "{}", o["status"]);
        let ok = eventually(30, || !self.events(org, "PolicyRefused").is_empty());
        assert!(ok, "no PolicyRefused Event");
    }
}

fn inline(name: &str, template: &str, extra: &str) -> String {
    let indented: String = template.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: {name}\nspec:\n{extra}  source:\n    template: |\n{indented}"
    )
}

#[test]
fn tier_4_in_a_local_template_is_refused_and_the_rest_imported() {
    let e = Env::start(&[]);
    e.apply(&inline(
        "dev",
        "workspaces:\n  - name: Dev Lead\n    tier: 4\n    children:\n      - name: Helper\n  - name: Writer\n    tier: 3\n",
        "",
    ));
    e.assert_refused("dev", "workspace `dev-lead`: tier 4 exceeds maxTier 3", 2);
    assert!(
        e.workspace("dev.dev-lead").is_null(),
        "the refused workspace exists"
    );
    assert!(
        e.workspace("dev.dev-lead.helper").is_null(),
        "a child of the refused workspace exists"
    );
    assert_eq!(e.workspace("dev.writer")["spec"]["tier"], 3);
}

#[test]
fn a_git_source_is_held_to_git_max_tier() {
    let e = Env::start(&[]);
    git::Repo::create(
        &e.repos(),
        "team/org",
        &[(
            "org.yaml",
            "name: From Git\nworkspaces:\n  - name: Remote Lead\n    tier: 3\n",
        )],
    );
    e.apply(
        "apiVersion: molecule.ai/v1alpha1\nkind: OrgImport\nmetadata:\n  name: fromgit\nspec:\n  source:\n    git:\n      repo: team/org\n      ref: main\n",
    );
    e.assert_refused(
        "fromgit",
        "workspace `remote-lead`: tier 3 exceeds gitMaxTier 2",
        1,
    );
    assert!(e.workspace("fromgit.remote-lead").is_null());
}

#[test]
fn an_external_subtree_is_held_to_git_max_tier() {
    let e = Env::start(&[]);
    git::Repo::create(
        &e.repos(),
        "team/dept",
        &[("lead.yaml", "name: Dept Lead\ntier: 3\n")],
    );
    e.apply(&inline(
        "ext",
        "workspaces:\n  - name: Local\n    tier: 3\n  - !external {repo: team/dept, ref: main, path: lead.yaml}\n",
        "",
    ));
    e.assert_refused(
        "ext",
        "workspace `dept-lead`: tier 3 exceeds gitMaxTier 2",
        1,
    );
    assert!(e.workspace("ext.dept-lead").is_null());
    assert_eq!(e.workspace("ext.local")["spec"]["tier"], 3);
}

#[test]
fn workspace_dir_root_is_refused_even_under_a_permissive_policy() {
    let e = Env::start(&[]);
    let allowed = e.tmp.path().join("work");
    std::fs::create_dir_all(allowed.join("team")).expect("mkdir");
    let policy = format!(
        "  policy:\n    workspaceDirRoots: [\"{}\"]\n",
        allowed.display()
    );
    // `/` or a system dir is a bad template (ADR 0047): refused whole, nothing created.
    e.apply(&inline(
        "host",
        &format!(
            "workspaces:\n  - name: Team\n    workspace_dir: {}\n    workspace_access: read_write\n  - name: Root\n    workspace_dir: /\n    workspace_access: read-write\n",
            allowed.join("team").display()
        ),
        &policy,
    ));
    let ok = eventually(60, || {
        e.condition("host", "Ready")["reason"] == "InvalidWorkspaceDir"
    });
    assert!(ok, "{}", e.org("host")["status"]);
    let msg = e.condition("host", "Ready")["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        msg,
        "(inline template):6:20: workspaces[1].workspace_dir: workspace_dir \"/\" is `/`, which holds every system directory"
    );
    assert!(e.workspace("host.team").is_null());
    assert!(e.workspace("host.root").is_null());
    // A dir outside the allowed roots is the policy's: that workspace alone is refused.
    e.apply(&inline(
        "host2",
        &format!(
            "workspaces:\n  - name: Team\n    workspace_dir: {}\n    workspace_access: read_write\n  - name: Elsewhere\n    workspace_dir: /srv/elsewhere\n    workspace_access: read_only\n",
            allowed.join("team").display()
        ),
        &policy,
    ));
    e.assert_refused("host2", "workspace `elsewhere`: workspace_dir", 1);
    assert!(e.workspace("host2.elsewhere").is_null());
    assert_eq!(
        e.workspace("host2.team")["spec"]["workspaceDir"],
        allowed.join("team").to_string_lossy().as_ref()
    );
}

#[test]
fn host_dirs_are_refused_by_default() {
    let e = Env::start(&[]);
    let dir = e.tmp.path().join("anywhere");
    std::fs::create_dir_all(&dir).expect("mkdir");
    e.apply(&inline(
        "nodirs",
        &format!(
            "workspaces:\n  - name: A\n    workspace_dir: {}\n    workspace_access: read_only\n",
            dir.display()
        ),
        "",
    ));
    e.assert_refused("nodirs", "workspaceDirRoots is empty", 1);
    assert!(e.workspace("nodirs.a").is_null());
}

#[test]
fn the_admin_may_raise_max_tier_on_the_record() {
    let e = Env::start(&[]);
    e.apply(&inline(
        "raised",
        "workspaces:\n  - name: Dev Lead\n    tier: 4\n",
        "  policy:\n    maxTier: 4\n",
    ));
    let o = e.imported("raised");
    assert_eq!(
        e.workspace("raised.dev-lead")["spec"]["tier"],
        4,
        "{}",
        o["status"]
    );
    assert!(e.condition("raised", "PolicyRefused").is_null());
    // The operator-wide flag lowers the default for every record without a policy.
    let low = Env::start(&["--template-max-tier", "2"]);
    low.apply(&inline(
        "low",
        "workspaces:\n  - name: A\n    tier: 3\n",
        "",
    ));
    low.assert_refused("low", "workspace `a`: tier 3 exceeds maxTier 2", 1);
}

/// A file far larger than any machine's memory, made sparse: reading it whole would fail (or
/// never end); the bounded reader stops after the limit and names the file.
#[test]
fn a_huge_files_dir_file_is_refused_without_being_read_whole() {
    use molecule::controllers::workspace::files::{FilesError, read_files_dir};
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join("small.md"), "ok\n").expect("small");
    let f = std::fs::File::create(tmp.path().join("huge.bin")).expect("huge");
    f.set_len(4 << 40).expect("a sparse 4 TiB file");
    drop(f);
    let err = read_files_dir(tmp.path()).expect_err("refused");
    assert_eq!(err, FilesError::TooLarge("huge.bin".into()), "{err}");
    // The bounded reader itself, on the same file.
    let e = molecule::orgtemplate::read_limited(&tmp.path().join("huge.bin"), 1024)
        .expect_err("too large");
    assert!(
        matches!(e, molecule::orgtemplate::ReadError::TooLarge(1024)),
        "{e}"
    );
}

fn entry(path: &str, content: &[u8]) -> molecule::backends::volume_dir::Entry {
    molecule::backends::volume_dir::Entry {
        path: path.into(),
        mode: 0o600,
        content: content.to_vec(),
    }
}

/// A volume dir holding what an earlier container left: a hard link to a file outside the
/// volume, and symlinks. Neither is written through.
#[test]
fn volume_writes_refuse_hard_links_and_symlinks() {
    use molecule::backends::volume_dir::write;
    let tmp = tempfile::tempdir().expect("tmp");
    let vol = tmp.path().join("vol");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&vol).expect("vol");
    std::fs::create_dir_all(&outside).expect("outside");
    let victim = outside.join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    let kept = |p: &Path| std::fs::read(p).expect("read") == b"keep";

    std::fs::hard_link(&victim, vol.join(".auth_token")).expect("hard link");
    let err = write(&vol, &[entry(".auth_token", b"token")]).expect_err("hard link refused");
    assert!(err.reason.contains("hard link"), "{}", err.reason);
    assert!(kept(&victim), "written through the hard link");
    std::fs::remove_file(vol.join(".auth_token")).expect("rm");

    std::os::unix::fs::symlink(&victim, vol.join("config.yaml")).expect("symlink");
    let err = write(&vol, &[entry("config.yaml", b"a: 1")]).expect_err("symlink refused");
    assert!(err.reason.contains("not a regular file"), "{}", err.reason);
    assert!(kept(&victim));

    std::os::unix::fs::symlink(&outside, vol.join("skills")).expect("dir symlink");
    let err = write(&vol, &[entry("skills/x/SKILL.md", b"x")]).expect_err("dir symlink refused");
    assert!(err.reason.contains("not a directory"), "{}", err.reason);
    assert!(!outside.join("x").exists());

    // A clean volume is written.
    write(&vol, &[entry("plugins/p/a.md", b"hello")]).expect("written");
    assert_eq!(
        std::fs::read(vol.join("plugins/p/a.md")).expect("read"),
        b"hello"
    );
}

/// A workspace an earlier pass created, refused after the admin lowered the policy: it is
/// neither updated nor pruned (mode reconcile), and counted as refused.
#[test]
fn a_workspace_refused_later_is_neither_changed_nor_pruned() {
    let e = Env::start(&[]);
    let tmpl = |role: &str| {
        format!("workspaces:\n  - name: Lead\n    tier: 3\n    role: {role}\n  - name: Other\n")
    };
    e.apply(&inline("later", &tmpl("first"), "  mode: reconcile\n"));
    e.imported("later");
    assert_eq!(e.workspace("later.lead")["spec"]["role"], "first");
    e.apply(&inline(
        "later",
        &tmpl("second"),
        "  mode: reconcile\n  policy:\n    maxTier: 2\n",
    ));
    e.assert_refused("later", "workspace `lead`: tier 3 exceeds maxTier 2", 1);
    let lead = e.workspace("later.lead");
    assert_eq!(
        lead["spec"]["role"], "first",
        "the refused workspace changed"
    );
    assert_eq!(e.org("later")["status"]["counts"]["pruned"], 0);
    assert!(!e.workspace("later.other").is_null());
}
