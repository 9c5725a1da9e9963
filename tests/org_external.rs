//! `!external` (ADR 0011) against real git repositories made in a temp dir, fetched with the real
//! `git` CLI over `file://` and over smart HTTP (`git http-backend` on 127.0.0.1 behind a
//! server that requires the token header).

#[path = "common/git.rs"]
mod git;

use std::path::{Path, PathBuf};

use git::{HttpGit, Repo, files_containing};
use molecule::orgtemplate::{
    ErrorKind, ExternalConfig, ExternalRef, Options, Plan, Source, TemplateError, fetch, load_plan,
};

/// A template root plus a directory of bare repositories.
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World {
            tmp: tempfile::tempdir().expect("tmp"),
        };
        std::fs::create_dir_all(w.root()).expect("root");
        std::fs::create_dir_all(w.repos()).expect("repos");
        w
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("templates")
    }
    fn repos(&self) -> PathBuf {
        self.tmp.path().join("repos")
    }
    /// `file://` base URL of the repos dir.
    fn file_url(&self) -> String {
        format!("file://{}", self.repos().display())
    }
    /// Options whose allowlist admits `file://<repos>/team/*` only (a scheme-less entry would
    /// admit https only, ADR 0040).
    fn options(&self) -> Options {
        let mut external = ExternalConfig::for_root(&self.root());
        external.allowlist = vec![format!("file://{}/team/*", self.repos().display())];
        external.default_url = self.file_url();
        Options {
            root: self.root(),
            external,
            persona_root: None,
        }
    }
    fn org(&self, dir: &str, yaml: &str) {
        let d = self.root().join(dir);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("org.yaml"), yaml).expect("write");
    }
    fn plan(&self, dir: &str) -> Result<Plan, TemplateError> {
        load_plan(&self.options(), &Source::Dir(dir.into()))
    }
}

fn dept_files() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "lead/workspace.yaml",
            "name: Dept Lead\nfiles_dir: lead\nchildren:\n  - !include ../qa/workspace.yaml\n",
        ),
        ("lead/system-prompt.md", "lead the department\n"),
        ("qa/workspace.yaml", "name: QA\nfiles_dir: qa\n"),
        ("qa/system-prompt.md", "test everything\n"),
    ]
}

fn ext(repo: &str, git_ref: &str, path: &str) -> ExternalRef {
    ExternalRef {
        repo: repo.into(),
        git_ref: git_ref.into(),
        path: path.into(),
        url: None,
    }
}

#[test]
fn first_fetch_fills_the_cache_and_the_second_hits_it() {
    let w = World::new();
    let repo = Repo::create(&w.repos(), "team/dept", &dept_files());
    let sha = repo.head();
    let cfg = w.options().external;

    let first = fetch(&cfg, &ext("team/dept", "main", "lead/workspace.yaml"))
        .expect("fetch")
        .expect("online");
    assert!(!first.cache_hit);
    assert_eq!(first.sha, sha);
    assert!(first.dir.starts_with(w.root().join(".external-cache")));
    assert!(first.dir.ends_with(&sha), "{}", first.dir.display());
    assert!(first.dir.join(".complete").is_file());
    assert!(first.dir.join("qa/system-prompt.md").is_file());
    assert!(
        !first.dir.join(".git").exists(),
        "only the content is cached"
    );
    // Plant a file: a second fetch that re-cloned would remove it.
    std::fs::write(first.dir.join("planted"), "x").expect("plant");
    let second = fetch(&cfg, &ext("team/dept", "main", "qa/workspace.yaml"))
        .expect("fetch")
        .expect("online");
    assert!(second.cache_hit);
    assert_eq!(second.dir, first.dir);
    assert!(second.dir.join("planted").exists());

    // A pinned sha resolves from the cache without touching the remote.
    std::fs::rename(&repo.bare, w.repos().join("moved.git")).expect("move the repo away");
    let pinned = fetch(&cfg, &ext("team/dept", &sha, "lead/workspace.yaml"))
        .expect("fetch by sha")
        .expect("cached");
    assert!(pinned.cache_hit);
    std::fs::rename(w.repos().join("moved.git"), &repo.bare).expect("move back");

    // A new commit is a new cache entry; the old one stays.
    let sha2 = repo.commit(
        &[("qa/workspace.yaml", "name: QA v2\nfiles_dir: qa\n")],
        "v2",
    );
    let third = fetch(&cfg, &ext("team/dept", "main", "qa/workspace.yaml"))
        .expect("fetch")
        .expect("online");
    assert_eq!(
        (third.sha.as_str(), third.cache_hit),
        (sha2.as_str(), false)
    );
    assert!(first.dir.join(".complete").is_file());

    // Tags resolve to the commit they point at.
    repo.tag("v1.0.0");
    let tagged = fetch(&cfg, &ext("team/dept", "v1.0.0", "qa/workspace.yaml"))
        .expect("tag")
        .expect("online");
    assert_eq!(tagged.sha, sha2);
}

#[test]
fn externals_expand_with_includes_and_files_dir_rewritten_into_the_cache() {
    let w = World::new();
    let repo = Repo::create(&w.repos(), "team/dept", &dept_files());
    let url = w.file_url();
    w.org(
        "parent",
        &format!(
            "name: Parent\nworkspaces:\n  - name: CEO\n    children:\n      - !external {{repo: team/dept, ref: main, path: lead/workspace.yaml, url: \"{url}\"}}\n"
        ),
    );
    let p = w.plan("parent").expect("plan");
    let names: Vec<&str> = p
        .workspaces
        .iter()
        .map(|x| x.display_name.as_str())
        .collect();
    assert_eq!(names, ["CEO", "Dept Lead", "QA"]);
    let sha = repo.head();
    let cache = format!(
        ".external-cache/{}/team/dept/{sha}",
        w.repos().display().to_string().trim_start_matches('/')
    );
    assert_eq!(
        p.workspaces[1].files_dir.as_deref(),
        Some(format!("{cache}/lead").as_str())
    );
    assert_eq!(
        p.workspaces[2].files_dir.as_deref(),
        Some(format!("{cache}/qa").as_str())
    );
    assert!(
        w.root()
            .join(p.workspaces[2].files_dir.as_deref().unwrap_or(""))
            .join("system-prompt.md")
            .is_file()
    );
    assert_eq!(p.revisions.len(), 1);
    assert_eq!(p.revisions[0].sha, sha);
    assert_eq!(p.revisions[0].git_ref, "main");
    assert!(p.revisions[0].repo.ends_with("/team/dept"));
    assert_eq!(p.workspaces[1].parent_key.as_deref(), Some("ceo"));

    // A files_dir inside the fetched tree may not climb out of its checkout.
    repo.commit(
        &[(
            "evil/workspace.yaml",
            "name: Evil\nfiles_dir: ../../../../../parent\n",
        )],
        "evil",
    );
    w.org(
        "evil",
        "workspaces:\n  - !external {repo: team/dept, ref: main, path: evil/workspace.yaml}\n",
    );
    let e = w.plan("evil").expect_err("escape");
    assert_eq!(e.kind, ErrorKind::Include, "{e}");
    assert!(e.file.contains("/team/dept@"), "{e}");
    assert_eq!(e.path, "files_dir");
}

#[test]
fn a_partial_cache_without_the_marker_is_fetched_again() {
    let w = World::new();
    let repo = Repo::create(&w.repos(), "team/dept", &dept_files());
    let sha = repo.head();
    let cfg = w.options().external;
    let first = fetch(&cfg, &ext("team/dept", "main", "lead/workspace.yaml"))
        .expect("fetch")
        .expect("online");
    // Simulate a crash between the rename and the marker, with debris from an old clone.
    std::fs::remove_file(first.dir.join(".complete")).expect("rm marker");
    std::fs::remove_file(first.dir.join("qa/workspace.yaml")).expect("lose a file");
    std::fs::write(first.dir.join("debris"), "half-written").expect("debris");
    let again = fetch(&cfg, &ext("team/dept", &sha, "lead/workspace.yaml"))
        .expect("refetch")
        .expect("online");
    assert!(!again.cache_hit, "a dir without .complete is not a hit");
    assert!(again.dir.join(".complete").is_file());
    assert!(again.dir.join("qa/workspace.yaml").is_file());
    assert!(!again.dir.join("debris").exists());
    // No temp dirs are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(again.dir.parent().expect("parent"))
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn bad_refs_foreign_repos_deep_nesting_and_missing_refs_are_refused() {
    let w = World::new();
    Repo::create(&w.repos(), "team/dept", &dept_files());
    Repo::create(&w.repos(), "other/dept", &dept_files());
    let org = |dir: &str, repo: &str, git_ref: &str| {
        w.org(
            dir,
            &format!(
                "workspaces:\n  - name: Top\n    children:\n      - !external {{repo: {repo}, ref: '{git_ref}', path: lead/workspace.yaml}}\n"
            ),
        )
    };
    org("inject", "team/dept", "main; rm -rf /");
    org("dots", "team/dept", "..");
    org("foreign", "other/dept", "main");
    org("missing", "team/dept", "no-such-branch");
    for (dir, kind, msg) in [
        ("inject", ErrorKind::ExternalRefused, "ref must match"),
        ("dots", ErrorKind::ExternalRefused, "must not contain `..`"),
        (
            "foreign",
            ErrorKind::ExternalRefused,
            "not in the allowlist",
        ),
        (
            "missing",
            ErrorKind::ExternalRefused,
            "ref \"no-such-branch\" was not found",
        ),
    ] {
        let e = w.plan(dir).expect_err(dir);
        assert_eq!(e.kind, kind, "{dir}: {e}");
        assert!(e.message.contains(msg), "{dir}: {e}");
        assert_eq!(
            (e.file.clone(), e.path.as_str()),
            (format!("{dir}/org.yaml"), "workspaces[0].children[0]"),
            "{dir}"
        );
    }
    // Refused refs never reach git or the cache.
    let cache = w.root().join(".external-cache");
    assert!(
        !cache.exists() || files_containing(&cache, "rm -rf").is_empty(),
        "nothing was fetched for a refused ref"
    );
    let mut bad_path = ext("team/dept", "main", "../../etc/passwd");
    assert_eq!(
        fetch(&w.options().external, &bad_path)
            .expect_err("path")
            .kind,
        ErrorKind::ExternalRefused
    );
    bad_path.path = "/etc/passwd".into();
    assert!(fetch(&w.options().external, &bad_path).is_err());

    // Depth: a chain of externals, each file pulling in the next.
    let mut chain = vec![];
    for i in 1..=5 {
        let body = if i < 5 {
            format!(
                "name: L{i}\nchildren:\n  - !external {{repo: team/chain, ref: main, path: c{}.yaml}}\n",
                i + 1
            )
        } else {
            "name: L5\n".to_string()
        };
        chain.push((format!("c{i}.yaml"), body));
    }
    let files: Vec<(&str, &str)> = chain
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    Repo::create(&w.repos(), "team/chain", &files);
    w.org(
        "depth4",
        "workspaces:\n  - !external {repo: team/chain, ref: main, path: c2.yaml}\n",
    );
    w.org(
        "depth5",
        "workspaces:\n  - !external {repo: team/chain, ref: main, path: c1.yaml}\n",
    );
    let p = w.plan("depth4").expect("four levels of !external");
    assert_eq!(p.workspaces.len(), 4);
    assert_eq!(p.revisions.len(), 4);
    let e = w.plan("depth5").expect_err("five levels");
    assert_eq!(e.kind, ErrorKind::ExternalRefused);
    assert!(e.message.contains("deeper than 4"), "{e}");
    assert!(e.file.ends_with("c4.yaml"), "{e}");
}

#[test]
fn the_token_is_a_header_and_never_in_urls_errors_logs_or_the_cache() {
    const TOKEN: &str = "s3cret-gitea-token-4242";
    let w = World::new();
    let repo = Repo::create(&w.repos(), "team/dept", &dept_files());
    let server = HttpGit::start(&w.repos(), TOKEN);
    let mut opts = w.options();
    // Plain http must be allowlisted explicitly (ADR 0040).
    opts.external.allowlist = vec![format!("http://127.0.0.1:{}/team/", server.port)];
    opts.external.default_url = server.url();
    opts.external.token = Some(TOKEN.into());
    w.org(
        "http",
        "workspaces:\n  - !external {repo: team/dept, ref: main, path: lead/workspace.yaml}\n",
    );

    let (result, logs) = molecule::testing::logs::capture_logs(|| {
        let ok = load_plan(&opts, &Source::Dir("http".into()));
        // A missing ref and a missing repository fail with the token configured.
        let missing_ref = fetch(&opts.external, &ext("team/dept", "nope", "x.yaml"));
        let missing_repo = fetch(&opts.external, &ext("team/absent", "main", "x.yaml"));
        // Without the token the server refuses.
        let mut anon = opts.external.clone();
        anon.token = None;
        anon.cache_dir = w.tmp.path().join("anon-cache");
        let unauthorized = fetch(&anon, &ext("team/dept", "main", "x.yaml"));
        (ok, missing_ref, missing_repo, unauthorized)
    });
    let (ok, missing_ref, missing_repo, unauthorized) = result;
    let p = ok.expect("fetched over http with the token header");
    assert_eq!(p.workspaces.len(), 2);
    assert_eq!(p.revisions[0].sha, repo.head());
    assert!(!p.revisions[0].repo.contains(TOKEN));

    let e = missing_ref.expect_err("missing ref");
    assert!(e.message.contains("was not found"), "{e}");
    let e2 = missing_repo.expect_err("missing repo");
    assert_eq!(e2.kind, ErrorKind::Fetch, "{e2}");
    let e3 = unauthorized.expect_err("no token");
    assert_eq!(e3.kind, ErrorKind::Fetch, "{e3}");
    for e in [&e, &e2, &e3] {
        assert!(!e.to_string().contains(TOKEN), "token in error: {e}");
    }
    assert!(!logs.is_empty(), "the fetch logged something");
    assert!(!logs.contains(TOKEN), "token in logs:\n{logs}");

    // The server saw the header on every authorised request and never in a URL.
    let seen = server
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(
        seen.iter().any(|s| s.authorized && s.method == "POST"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|s| !s.target.contains(TOKEN)), "{seen:?}");
    assert!(
        seen.iter().any(|s| !s.authorized),
        "the anonymous fetch was refused"
    );

    // Nothing in the cache (checkout, marker, leftovers) holds the token.
    let hits = files_containing(&w.root().join(".external-cache"), TOKEN);
    assert!(hits.is_empty(), "token written to {hits:?}");
    let hits = files_containing(w.tmp.path(), TOKEN);
    assert!(hits.is_empty(), "token written to {hits:?}");
}

#[test]
fn a_git_source_loads_an_org_from_a_repository() {
    let w = World::new();
    let repo = Repo::create(
        &w.repos(),
        "team/orgs",
        &[
            (
                "dev/org.yaml",
                "name: From Git\nworkspaces:\n  - name: Lead\n    files_dir: lead\n    children:\n      - !include team/qa.yaml\n",
            ),
            ("dev/team/qa.yaml", "name: QA\n"),
            ("dev/lead/system-prompt.md", "hi\n"),
        ],
    );
    let p =
        load_plan(&w.options(), &Source::Git(ext("team/orgs", "main", "dev"))).expect("git source");
    assert_eq!(p.name, "From Git");
    assert_eq!(p.workspaces.len(), 2);
    assert_eq!(p.revisions[0].sha, repo.head());
    let fd = p.workspaces[0].files_dir.clone().unwrap_or_default();
    assert!(
        fd.starts_with(".external-cache/") && fd.ends_with(&format!("{}/dev/lead", repo.head())),
        "{fd}"
    );
    assert!(
        Path::new(&w.root())
            .join(&fd)
            .join("system-prompt.md")
            .is_file()
    );
    // The default path (the repository root) finds a root org.yaml.
    Repo::create(
        &w.repos(),
        "team/rootorg",
        &[("org.yaml", "name: Root Org\nworkspaces: [{name: Solo}]\n")],
    );
    let p =
        load_plan(&w.options(), &Source::Git(ext("team/rootorg", "main", "."))).expect("root org");
    assert_eq!((p.name.as_str(), p.workspaces.len()), ("Root Org", 1));
    let e = load_plan(&w.options(), &Source::Git(ext("other/orgs", "main", "dev")))
        .expect_err("allowlist");
    assert_eq!(e.kind, ErrorKind::ExternalRefused);
}
