//! Runtimes and images as desired state (issue 7, ADR 0030–0033), end to end: `molecule serve`
//! with its controllers, the real Docker engine, real git repositories made in a temp dir, and,
//! for what this machine cannot have, fakes speaking the real protocols on 127.0.0.1 — a Docker
//! Registry v2 (token endpoint, manifest HEAD with `Docker-Content-Digest`, blobs: the engine
//! really pulls from it) and a git smart-HTTP host for ref lookups. Tests run one at a time.

mod common;
mod fakes;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Backend, Server, cleanup, docker, eventually, text};
use fakes::git_http::{FakeGitHost, GitBehavior};
use fakes::registry::{Behavior, FakeRegistry, SavedImage};
use serde_json::Value;

static DOCKER: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    DOCKER.lock().unwrap_or_else(|p| p.into_inner())
}

fn suffix(n: usize) -> String {
    molecule::util::random_suffix(n).to_ascii_lowercase()
}

fn tail(s: &Server) -> String {
    let log = s.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn apply(s: &Server, ns: Option<&str>, yaml: &str) {
    let mut args = vec!["apply", "-f", "-"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let o = s.kubectl_stdin("1.33", &args, Some(yaml));
    assert!(o.status.success(), "apply failed:\n{}\n{yaml}", text(&o));
}

fn kubectl_ok(s: &Server, args: &[&str]) -> String {
    let o = s.kubectl("1.33", args);
    assert!(o.status.success(), "kubectl {args:?}:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn get_json(s: &Server, path: &str) -> Value {
    let (code, body) = s.http("GET", path, None, b"");
    if code != 200 {
        return Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

fn runtime(s: &Server, name: &str) -> Value {
    get_json(s, &format!("/apis/molecule.ai/v1alpha1/runtimes/{name}"))
}

fn ws(s: &Server, ns: &str, name: &str) -> Value {
    get_json(
        s,
        &format!("/apis/molecule.ai/v1alpha1/namespaces/{ns}/workspaces/{name}"),
    )
}

fn st<'a>(v: &'a Value, field: &str) -> &'a str {
    v["status"][field].as_str().unwrap_or("")
}

/// (status, reason, message) of a condition.
fn cond(v: &Value, type_: &str) -> (String, String, String) {
    v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

fn wait_until(
    s: &Server,
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> bool,
    show: impl Fn() -> String,
) {
    assert!(
        eventually(secs, &mut f),
        "timed out waiting for {what}:\n{}\nserver log:\n{}",
        show(),
        tail(s)
    );
}

/// A Prometheus sample from `/metrics` (0 when absent).
fn metric(s: &Server, series: &str) -> f64 {
    let (_, body) = s.http("GET", "/metrics", None, b"");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn workspace_yaml(name: &str, runtime: &str) -> String {
    format!(
        "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  runtime: {runtime}\n"
    )
}

/// Every tag of `repo` on the engine.
fn tags_of(repo: &str) -> Vec<String> {
    docker(&["images", "--format", "{{.Repository}}:{{.Tag}}", repo])
        .1
        .lines()
        .filter(|l| !l.is_empty() && !l.ends_with(":<none>"))
        .map(String::from)
        .collect()
}

fn remove_tags(repo: &str) {
    for t in tags_of(repo) {
        docker(&["rmi", &t]);
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    assert!(o.status.success(), "git {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A template repository whose Dockerfile builds `FROM scratch` from files in the repo: the
/// host's `sleep` and the libraries it needs, so the container runs.
fn make_template_repo(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("rootfs/bin")).expect("mkdir");
    std::fs::copy("/bin/sleep", dir.join("rootfs/bin/sleep")).expect("copy sleep");
    let ldd = Command::new("ldd").arg("/bin/sleep").output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, t)) => t.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let dest = dir.join("rootfs").join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::copy(p, &dest).expect("copy lib");
        }
    }
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nCOPY VERSION /VERSION\nENTRYPOINT [\"/bin/sleep\", \"3600\"]\n",
    )
    .expect("Dockerfile");
    std::fs::write(dir.join("VERSION"), "1\n").expect("VERSION");
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "template v1"]);
    git(dir, &["rev-parse", "HEAD"])
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn local_build_builds_once_then_hits_the_cache_and_follows_head() {
    let _g = lock();
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = format!("lb{}", suffix(6));
    let templates = tmp.path().join("templates");
    let repo = templates.join(format!("workspace-template-{rt}"));
    let sha1 = make_template_repo(&repo);
    let prefix = format!("file://{}/workspace-template-", templates.display());
    let cache: PathBuf = tmp.path().join("cache");
    let token = format!("tok{}", suffix(20));
    let cache_s = cache.display().to_string();
    let s = Server::start_with_env(
        Backend::Sqlite,
        &[
            "--controllers",
            "all",
            "--reap-interval-seconds",
            "2",
            "--template-repo-prefix",
            &prefix,
            "--build-cache",
            &cache_s,
        ],
        &[("MOLECULE_GITEA_TOKEN", &token)],
    );
    let ns = format!("t{}", suffix(8));
    let image_repo = format!("molecule-local/workspace-template-{rt}");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kubectl_ok(&s, &["create", "namespace", &ns]);
        apply(
            &s,
            None,
            &format!(
                "apiVersion: molecule.ai/v1alpha1\nkind: Runtime\nmetadata:\n  name: {rt}\nspec: {{}}\n"
            ),
        );
        let tag1 = format!("{image_repo}:{}", &sha1[..12]);
        wait_until(
            &s,
            60,
            "the runtime to resolve",
            || st(&runtime(&s, &rt), "resolvedImage") == tag1,
            || runtime(&s, &rt).to_string(),
        );
        let r = runtime(&s, &rt);
        assert_eq!(st(&r, "source"), "local-build");
        assert_eq!(st(&r, "builtFromSha"), sha1);
        assert_eq!(cond(&r, "Ready").0, "True");
        assert_eq!(
            cond(&r, "ImageAvailable").0,
            "False",
            "nothing built before a workspace needs it"
        );
        let lookups_before = metric(
            &s,
            &format!("molecule_image_lookups_total{{runtime=\"{rt}\",result=\"ok\"}}"),
        );
        assert!(lookups_before >= 1.0);

        // First provision: one lookup, one clone, one build.
        apply(&s, Some(&ns), &workspace_yaml("a", &rt));
        wait_until(
            &s,
            180,
            "workspace a to start from the built image",
            || {
                st(&ws(&s, &ns, "a"), "image") == tag1
                    && !st(&ws(&s, &ns, "a"), "containerId").is_empty()
            },
            || ws(&s, &ns, "a").to_string(),
        );
        let clones = format!("molecule_image_clones_total{{runtime=\"{rt}\"}}");
        let builds = format!("molecule_image_builds_total{{runtime=\"{rt}\",result=\"ok\"}}");
        let hits = format!("molecule_image_cache_hits_total{{runtime=\"{rt}\"}}");
        assert_eq!(metric(&s, &clones), 1.0);
        assert_eq!(metric(&s, &builds), 1.0);
        let id1 = docker(&["image", "inspect", "--format", "{{.Id}}", &tag1]).1;
        assert!(id1.starts_with("sha256:"), "{id1}");
        assert_eq!(
            st(&ws(&s, &ns, "a"), "imageDigest"),
            id1,
            "running digest recorded"
        );
        let version = docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.Entrypoint}}",
            &tag1,
        ])
        .1;
        assert_eq!(
            version, "[/bin/sleep 3600]",
            "built from the repo's Dockerfile"
        );
        assert_eq!(entries(&cache.join(&rt)), vec![sha1[..12].to_string()]);
        assert_eq!(
            tags_of(&image_repo),
            vec![tag1.clone()],
            "no temporary tag left behind"
        );
        wait_until(
            &s,
            30,
            "the runtime to report the image",
            || cond(&runtime(&s, &rt), "ImageAvailable").0 == "True",
            || runtime(&s, &rt).to_string(),
        );

        // Second provision: a cache hit — no clone, no build.
        apply(&s, Some(&ns), &workspace_yaml("b", &rt));
        wait_until(
            &s,
            60,
            "workspace b to start from the cached image",
            || {
                st(&ws(&s, &ns, "b"), "image") == tag1
                    && !st(&ws(&s, &ns, "b"), "containerId").is_empty()
            },
            || ws(&s, &ns, "b").to_string(),
        );
        assert_eq!(metric(&s, &clones), 1.0, "a cache hit clones nothing");
        assert_eq!(metric(&s, &builds), 1.0, "a cache hit builds nothing");
        assert!(metric(&s, &hits) >= 1.0);

        // A new commit: the next start builds a new tag; the old clone is dropped.
        std::fs::write(repo.join("VERSION"), "2\n").expect("VERSION");
        git(&repo, &["commit", "-q", "-am", "template v2"]);
        let sha2 = git(&repo, &["rev-parse", "HEAD"]);
        let tag2 = format!("{image_repo}:{}", &sha2[..12]);
        kubectl_ok(
            &s,
            &[
                "annotate",
                "ws",
                "a",
                "-n",
                &ns,
                "--overwrite",
                "molecule.ai/restartedAt=v2",
            ],
        );
        wait_until(
            &s,
            180,
            "workspace a to restart onto the new build",
            || {
                st(&ws(&s, &ns, "a"), "image") == tag2
                    && st(&ws(&s, &ns, "a"), "restartedAt") == "v2"
            },
            || ws(&s, &ns, "a").to_string(),
        );
        assert_eq!(metric(&s, &clones), 2.0);
        assert_eq!(metric(&s, &builds), 2.0);
        assert_eq!(entries(&cache.join(&rt)), vec![sha2[..12].to_string()]);
        let mut want = vec![tag1.clone(), tag2.clone()];
        want.sort();
        let mut have = tags_of(&image_repo);
        have.sort();
        assert_eq!(have, want);
        // Without auto-refresh, b keeps running what it started from.
        assert_eq!(st(&ws(&s, &ns, "b"), "image"), tag1);
        wait_until(
            &s,
            30,
            "the runtime to follow HEAD",
            || {
                let r = runtime(&s, &rt);
                st(&r, "resolvedImage") == tag2 && st(&r, "builtFromSha") == sha2
            },
            || runtime(&s, &rt).to_string(),
        );
        // A template whose build fails: a clear condition, and no image tag at all (the
        // build runs under a temporary tag that is removed).
        let broken = format!("{rt}x");
        let broken_repo = templates.join(format!("workspace-template-{broken}"));
        make_template_repo(&broken_repo);
        std::fs::write(
            broken_repo.join("Dockerfile"),
            "FROM scratch\nCOPY missing-file /x\n",
        )
        .expect("Dockerfile");
        git(&broken_repo, &["commit", "-q", "-am", "broken"]);
        apply(
            &s,
            None,
            &format!(
                "apiVersion: molecule.ai/v1alpha1\nkind: Runtime\nmetadata:\n  name: {broken}\nspec: {{}}\n"
            ),
        );
        apply(&s, Some(&ns), &workspace_yaml("broken", &broken));
        wait_until(
            &s,
            120,
            "the failed build to be reported",
            || {
                let w = ws(&s, &ns, "broken");
                st(&w, "phase") == "Failed" && cond(&w, "Ready").1 == "BuildFailed"
            },
            || ws(&s, &ns, "broken")["status"].to_string(),
        );
        assert!(
            tags_of(&format!("molecule-local/workspace-template-{broken}")).is_empty(),
            "a failed build leaves no tag"
        );
        // The token was configured but is never printed.
        assert!(!s.log().contains(&token));
    }));
    // The server goes first: a live controller would re-create what the cleanup removes.
    drop(s);
    cleanup(&ns);
    remove_tags(&image_repo);
    remove_tags(&format!("{image_repo}x"));
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn local_build_fails_closed_with_clear_conditions_and_never_shows_the_token() {
    let _g = lock();
    let r = suffix(5);
    let git_host = FakeGitHost::start(|name| {
        if name.contains("-big") {
            GitBehavior::Huge(3000)
        } else if name.contains("-hang") {
            GitBehavior::Hang
        } else {
            GitBehavior::NotFound
        }
    });
    // A registry that accepts connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_addr = hung.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut held = vec![];
        for c in hung.incoming() {
            held.push(c);
        }
    });
    let token = format!("tok{}", suffix(24));
    let url_secret = format!("pw{}", suffix(24));
    let prefix = format!(
        "http://x-access-token:{url_secret}@{}/org/workspace-template-",
        git_host.addr
    );
    let s = Server::start_with_env(
        Backend::Sqlite,
        &[
            "--controllers",
            "all",
            "--template-repo-prefix",
            &prefix,
            "--image-lookup-timeout-seconds",
            "2",
        ],
        &[("MOLECULE_GITEA_TOKEN", &token)],
    );
    let ns = format!("t{}", suffix(8));
    let (nm, big, hang, badref, evil, reghang) = (
        format!("x{r}-nm"),
        format!("x{r}-big"),
        format!("x{r}-hang"),
        format!("x{r}-ref"),
        format!("x{r}.evil"),
        format!("x{r}-reg"),
    );
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kubectl_ok(&s, &["create", "namespace", &ns]);
        let rt = |name: &str, spec: &str| {
            format!(
                "apiVersion: molecule.ai/v1alpha1\nkind: Runtime\nmetadata:\n  name: {name}\nspec:\n{spec}---\n"
            )
        };
        apply(
            &s,
            None,
            &[
                rt(&nm, "  {}\n"),
                rt(&big, "  {}\n"),
                rt(&hang, "  {}\n"),
                rt(&badref, "  localBuild:\n    ref: main..evil\n"),
                rt(&evil, "  {}\n"),
                rt(&reghang, &format!("  image: {hung_addr}/org/hangs\n")),
            ]
            .concat(),
        );
        let expect = |name: &str, reason: &str, needle: &str| {
            wait_until(
                &s,
                60,
                &format!("runtime {name} to report {reason}"),
                || {
                    let (status, why, msg) = cond(&runtime(&s, name), "Ready");
                    status == "False" && why == reason && msg.contains(needle)
                },
                || runtime(&s, name)["status"].to_string(),
            );
        };
        let shown_prefix = format!("http://{}/org/workspace-template-", git_host.addr);
        expect(
            &nm,
            "NotMirrored",
            &format!(
                "runtime {nm} is not mirrored at {shown_prefix}{nm}: mirror the template repository there"
            ),
        );
        expect(&big, "ResponseTooLarge", "exceeded 65536 bytes");
        expect(&hang, "TemplateUnreachable", "within 2s");
        expect(&badref, "InvalidSpec", "'..'");
        expect(&evil, "InvalidName", "is not allowed");
        expect(&reghang, "RegistryUnreachable", "did not answer within 2s");

        // A workspace of an unmirrored runtime fails closed with the same actionable message,
        // and nothing falls back to a registry.
        apply(&s, Some(&ns), &workspace_yaml("w", &nm));
        wait_until(
            &s,
            60,
            "the workspace to fail closed",
            || {
                let w = ws(&s, &ns, "w");
                st(&w, "phase") == "Failed"
                    && cond(&w, "Ready").1 == "NotMirrored"
                    && st(&w, "message").contains("MOLECULE_LOCAL_TEMPLATE_REPO_PREFIX")
            },
            || ws(&s, &ns, "w")["status"].to_string(),
        );
        assert!(st(&ws(&s, &ns, "w"), "containerId").is_empty());
        // A hostile runtime name in a workspace: a condition listing the known runtimes.
        apply(
            &s,
            Some(&ns),
            "apiVersion: molecule.ai/v1alpha1\nkind: Workspace\nmetadata:\n  name: odd\nspec:\n  runtime: \"../../etc/passwd; rm -rf /\"\n",
        );
        wait_until(
            &s,
            60,
            "the unknown runtime condition",
            || {
                let (_, reason, msg) = cond(&ws(&s, &ns, "odd"), "Ready");
                reason == "UnknownRuntime"
                    && msg.contains("known runtimes:")
                    && msg.contains("claude-code")
                    && msg.contains("echo")
                    && msg.contains(&nm)
            },
            || ws(&s, &ns, "odd")["status"].to_string(),
        );

        // The token really went to the git host (as a header), and nowhere else.
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        );
        assert!(
            git_host.authorizations().contains(&header),
            "the token was not sent: {:?}",
            git_host.authorizations()
        );
        let encoded = header.trim_start_matches("Basic ").to_string();
        let views = [
            s.log(),
            kubectl_ok(&s, &["get", "runtimes", "-o", "json"]),
            kubectl_ok(&s, &["get", "ws", "-A", "-o", "json"]),
            kubectl_ok(&s, &["get", "events", "-A", "-o", "json"]),
            kubectl_ok(&s, &["describe", "runtimes"]),
        ];
        for v in &views {
            for secret in [&token, &url_secret, &encoded] {
                assert!(!v.contains(secret.as_str()), "a secret leaked into:\n{v}");
            }
        }
        // The example manifests apply and resolve as documented.
        let examples = format!("{}/examples/runtimes.yaml", env!("CARGO_MANIFEST_DIR"));
        kubectl_ok(&s, &["apply", "-f", &examples]);
        wait_until(
            &s,
            30,
            "the pinned example runtime",
            || {
                let r = runtime(&s, "my-codex");
                st(&r, "source") == "registry"
                    && st(&r, "resolvedImage")
                        == format!(
                            "ghcr.io/example/workspace-template-codex@sha256:{}",
                            "0".repeat(64)
                        )
            },
            || runtime(&s, "my-codex")["status"].to_string(),
        );
        wait_until(
            &s,
            30,
            "the local-build example runtime",
            || cond(&runtime(&s, "my-langgraph"), "Ready").1 == "NotMirrored",
            || runtime(&s, "my-langgraph")["status"].to_string(),
        );
        // Nothing was built or tagged for any of them.
        for name in [&nm, &big, &hang, &badref, &reghang] {
            assert!(
                tags_of(&format!("molecule-local/workspace-template-{name}")).is_empty(),
                "{name} left an image tag"
            );
        }
    }));
    // The server goes first: a live controller would re-create what the cleanup removes.
    drop(s);
    cleanup(&ns);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

/// The echo image as `docker save` output, parsed (the registry fake serves it).
fn saved_echo_image() -> SavedImage {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        use futures::StreamExt;
        let d = bollard::Docker::connect_with_local_defaults()
            .expect("docker")
            .negotiate_version()
            .await
            .expect("docker version");
        let tag =
            molecule::images::ensure_echo_image(&d, Path::new(env!("CARGO_BIN_EXE_molecule")))
                .await
                .expect("echo image");
        let mut out = Vec::new();
        let mut s = d.export_image(&tag);
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.expect("export"));
        }
        SavedImage::from_docker_save(&out)
    })
}

/// Phase, provisionedAt and imageDigest of a workspace.
fn state(s: &Server, ns: &str, name: &str) -> (String, String, String) {
    let w = ws(s, ns, name);
    (
        st(&w, "phase").to_string(),
        st(&w, "provisionedAt").to_string(),
        st(&w, "imageDigest").to_string(),
    )
}

#[test]
fn registry_mode_pins_repulls_and_auto_refresh_rolls_one_at_a_time() {
    let _g = lock();
    let image = saved_echo_image();
    let password = format!("pw{}", suffix(12));
    let reg = FakeRegistry::start(Some(("puller", &password)));
    let org = format!("t{}", suffix(8));
    let (rt, pin, bad) = (
        format!("rg{}", suffix(5)),
        format!("pin{}", suffix(5)),
        format!("hang{}", suffix(5)),
    );
    let repo = format!("{org}/workspace-template-{rt}");
    let pin_repo = format!("{org}/workspace-template-{pin}");
    let d1 = reg.push(&repo, "latest", &image, "1");
    let p1 = reg.push(&pin_repo, "v1", &image, "p1");
    let p2 = reg.push(&pin_repo, "latest", &image, "p2");
    reg.set_behavior(&format!("{org}/workspace-template-{bad}"), Behavior::Hang);
    let registry = format!("{}/{org}", reg.addr);
    let mut s = Server::start_with(
        Backend::Sqlite,
        &[
            "--controllers",
            "all",
            "--agent-heartbeat-seconds",
            "1",
            "--heartbeat-timeout-seconds",
            "30",
            "--reap-interval-seconds",
            "2",
            "--image-registry",
            &registry,
            "--image-lookup-timeout-seconds",
            "2",
            // MOLECULE_IMAGE_PLATFORM: pulls and creates name the platform (the host's, so it
            // runs here).
            "--image-platform",
            "linux/amd64",
        ],
    );
    let ns = format!("t{}", suffix(8));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kubectl_ok(&s, &["create", "namespace", &ns]);
        apply(
            &s,
            Some(&ns),
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\nstringData:\n  username: puller\n  password: {password}\n"
            ),
        );
        let runtime_yaml = |name: &str, extra: &str| {
            format!(
                "apiVersion: molecule.ai/v1alpha1\nkind: Runtime\nmetadata:\n  name: {name}\nspec:\n  pullSecret:\n    namespace: {ns}\n    name: regcred\n{extra}---\n"
            )
        };
        apply(
            &s,
            None,
            &[
                runtime_yaml(
                    &rt,
                    "  autoRefresh:\n    enabled: true\n    intervalSeconds: 2\n",
                ),
                runtime_yaml(
                    &bad,
                    "  autoRefresh:\n    enabled: true\n    intervalSeconds: 2\n",
                ),
                runtime_yaml(&pin, "  tag: v1\n"),
            ]
            .concat(),
        );
        for (name, runtime) in [("a", &rt), ("b", &rt), ("p", &pin)] {
            apply(&s, Some(&ns), &workspace_yaml(name, runtime));
        }
        for name in ["a", "b", "p"] {
            wait_until(
                &s,
                300,
                &format!("workspace {name} Online"),
                || st(&ws(&s, &ns, name), "phase") == "Online",
                || ws(&s, &ns, name)["status"].to_string(),
            );
        }
        // Registry mode: <registry>/workspace-template-<runtime>:<tag>, pulled with the
        // Secret's credentials, the running digest recorded.
        let a = ws(&s, &ns, "a");
        assert_eq!(
            st(&a, "image"),
            format!("{registry}/workspace-template-{rt}:latest")
        );
        assert_eq!(st(&a, "imageDigest"), d1);
        let p = ws(&s, &ns, "p");
        assert_eq!(
            st(&p, "image"),
            format!("{registry}/workspace-template-{pin}:v1")
        );
        assert_eq!(st(&p, "imageDigest"), p1);
        let (grants, _, _) = reg.auth_counts();
        assert!(
            grants > 0,
            "the registry granted tokens for the Secret's credentials"
        );
        let r = runtime(&s, &rt);
        assert_eq!(st(&r, "source"), "registry");
        assert_eq!(st(&r, "digest"), d1);
        assert_eq!(cond(&r, "Ready").0, "True");
        // A runtime whose registry hangs reports it, bounded.
        wait_until(
            &s,
            30,
            "the hanging runtime's condition",
            || {
                let (status, reason, msg) = cond(&runtime(&s, &bad), "Ready");
                status == "False" && reason == "RegistryUnreachable" && msg.contains("within 2s")
            },
            || runtime(&s, &bad)["status"].to_string(),
        );

        // A restart re-pulls a moving tag, never a pinned one.
        let restart = |name: &str, stamp: &str| {
            kubectl_ok(
                &s,
                &[
                    "annotate",
                    "ws",
                    name,
                    "-n",
                    &ns,
                    "--overwrite",
                    &format!("molecule.ai/restartedAt={stamp}"),
                ],
            );
            wait_until(
                &s,
                300,
                &format!("{name} restarted"),
                || {
                    let w = ws(&s, &ns, name);
                    st(&w, "restartedAt") == stamp && st(&w, "phase") == "Online"
                },
                || ws(&s, &ns, name)["status"].to_string(),
            );
        };
        let pinned_pulls = reg.engine_pulls(&pin_repo, "v1");
        assert!(
            pinned_pulls >= 1,
            "the pinned tag was pulled once, when missing"
        );
        restart("p", "pin-1");
        assert_eq!(
            reg.engine_pulls(&pin_repo, "v1"),
            pinned_pulls,
            "a pinned tag is never re-pulled"
        );
        let moving_pulls = reg.engine_pulls(&repo, "latest");
        restart("a", "move-1");
        assert!(
            reg.engine_pulls(&repo, "latest") > moving_pulls,
            "a moving tag is re-pulled on start"
        );
        // A pinned digest wins over the tag.
        apply(
            &s,
            None,
            &runtime_yaml(&pin, &format!("  tag: latest\n  digest: {p1}\n")),
        );
        restart("p", "pin-2");
        let p = ws(&s, &ns, "p");
        assert_eq!(
            st(&p, "image"),
            format!("{registry}/workspace-template-{pin}@{p1}")
        );
        assert_eq!(
            st(&p, "imageDigest"),
            p1,
            "not {p2}, which latest points at"
        );

        // Auto-refresh (ADR 0032): the first observation after a (re)start only seeds, even when
        // the digest moved while the operator was down.
        assert_eq!(s.terminate(), Some(0));
        let d2 = reg.push(&repo, "latest", &image, "2");
        s.spawn();
        let before_a = state(&s, &ns, "a");
        let before_b = state(&s, &ns, "b");
        wait_until(
            &s,
            30,
            "the runtime to observe the new digest",
            || st(&runtime(&s, &rt), "digest") == d2,
            || runtime(&s, &rt)["status"].to_string(),
        );
        std::thread::sleep(Duration::from_secs(6)); // three more ticks
        assert_eq!(
            state(&s, &ns, "a").1,
            before_a.1,
            "no roll on the first observation"
        );
        assert_eq!(
            state(&s, &ns, "b").1,
            before_b.1,
            "no roll on the first observation"
        );
        assert_eq!(state(&s, &ns, "b").2, d1);
        let rolled = format!("molecule_image_refresh_total{{runtime=\"{rt}\",result=\"rolled\"}}");
        let failed = format!("molecule_image_refresh_total{{runtime=\"{rt}\",result=\"failed\"}}");
        assert_eq!(metric(&s, &rolled), 0.0);

        // A change rolls the runtime's workspaces exactly once, one at a time.
        let d3 = reg.push(&repo, "latest", &image, "3");
        let mut provisioned: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); 2];
        let started = Instant::now();
        loop {
            let sa = state(&s, &ns, "a");
            let sb = state(&s, &ns, "b");
            let down = [&sa, &sb].iter().filter(|x| x.0 != "Online").count();
            assert!(down <= 1, "both workspaces down at once: {sa:?} {sb:?}");
            provisioned[0].insert(sa.1.clone());
            provisioned[1].insert(sb.1.clone());
            if sa.2 == d3 && sb.2 == d3 && sa.0 == "Online" && sb.0 == "Online" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the roll did not finish: {sa:?} {sb:?}\n{}",
                tail(&s)
            );
            std::thread::sleep(Duration::from_millis(150));
        }
        std::thread::sleep(Duration::from_secs(6));
        for (i, name) in ["a", "b"].iter().enumerate() {
            provisioned[i].insert(state(&s, &ns, name).1);
            assert_eq!(
                provisioned[i].len(),
                2,
                "{name} was restarted exactly once: {:?}",
                provisioned[i]
            );
        }
        assert_eq!(metric(&s, &rolled), 1.0);
        assert_eq!(cond(&runtime(&s, &rt), "RolledOut").0, "True");
        // The pinned runtime's workspace was not touched by the roll.
        assert_eq!(state(&s, &ns, "p").2, p1);

        // A failed refresh rolls the seen digest back: the next tick tries again, and once the
        // registry is healthy it rolls.
        reg.set_behavior(&repo, Behavior::FailPulls);
        let d4 = reg.push(&repo, "latest", &image, "4");
        wait_until(
            &s,
            120,
            "two failed refresh ticks",
            || metric(&s, &failed) >= 2.0,
            || runtime(&s, &rt)["status"].to_string(),
        );
        // A tick marks the roll "Rolling" before it pulls; the failure lands right after.
        wait_until(
            &s,
            60,
            "RolledOut=False PullFailed",
            || {
                let (status, reason, _) = cond(&runtime(&s, &rt), "RolledOut");
                (status.as_str(), reason.as_str()) == ("False", "PullFailed")
            },
            || runtime(&s, &rt)["status"].to_string(),
        );
        assert_eq!(
            state(&s, &ns, "a").2,
            d3,
            "nothing rolled onto an image that did not pull"
        );
        assert_eq!(state(&s, &ns, "a").0, "Online");
        reg.set_behavior(&repo, Behavior::Normal);
        wait_until(
            &s,
            300,
            "the retried roll",
            || state(&s, &ns, "a").2 == d4 && state(&s, &ns, "b").2 == d4,
            || format!("{:?} {:?}", state(&s, &ns, "a"), state(&s, &ns, "b")),
        );
        wait_until(
            &s,
            120,
            "the second roll to complete",
            || metric(&s, &rolled) == 2.0 && cond(&runtime(&s, &rt), "RolledOut").0 == "True",
            || runtime(&s, &rt)["status"].to_string(),
        );
        // The hanging runtime never stopped the other one.
        assert_eq!(cond(&runtime(&s, &bad), "Ready").1, "RegistryUnreachable");

        // POST /admin/workspace-images/refresh maps onto the same machinery.
        let route = "/admin/workspace-images/refresh";
        let (code, _) = s
            .http_raw("POST", &format!("{route}?runtime={pin}"), None, b"", false)
            .expect("http");
        assert_eq!(code, 401, "the admin route needs the API token");
        let (code, body) = s.http("POST", &format!("{route}?recreate=maybe"), None, b"");
        assert_eq!(code, 400, "{body}");
        // Unpin: the refresh pulls `latest` and rolls p onto it.
        apply(&s, None, &runtime_yaml(&pin, "  tag: latest\n"));
        wait_until(
            &s,
            30,
            "the unpinned runtime",
            || st(&runtime(&s, &pin), "resolvedImage").ends_with(":latest"),
            || runtime(&s, &pin)["status"].to_string(),
        );
        let (code, body) = s.http(
            "POST",
            &format!("{route}?runtime={pin},nosuch&recreate=true"),
            None,
            b"",
        );
        assert_eq!(code, 200, "{body}");
        let report: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            report["pulled"],
            serde_json::json!([format!("{registry}/workspace-template-{pin}:latest")]),
            "{body}"
        );
        assert_eq!(
            report["recreated"],
            serde_json::json!([format!("{ns}/p")]),
            "{body}"
        );
        assert_eq!(report["failed"][0]["runtime"], "nosuch", "{body}");
        assert_eq!(report["failed"][0]["reason"], "UnknownRuntime", "{body}");
        let p = ws(&s, &ns, "p");
        assert_eq!(st(&p, "imageDigest"), p2);
        assert_eq!(st(&p, "phase"), "Online");
    }));
    // The server goes first: a live controller would re-create what the cleanup removes.
    drop(s);
    cleanup(&ns);
    for r in [&repo, &pin_repo] {
        remove_tags(&format!("{}/{r}", reg.addr));
        for d in docker(&[
            "images",
            "--digests",
            "--format",
            "{{.Repository}}@{{.Digest}}",
            &format!("{}/{r}", reg.addr),
        ])
        .1
        .lines()
        {
            docker(&["rmi", d]);
        }
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn local_build_auto_refresh_rebuilds_and_rolls_when_head_moves() {
    let _g = lock();
    // A template that runs a real agent: the built-in echo image plus a file from the repo
    // (the engine has the base image, so nothing is pulled).
    let echo = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(async {
            let d = bollard::Docker::connect_with_local_defaults()
                .expect("docker")
                .negotiate_version()
                .await
                .expect("docker version");
            molecule::images::ensure_echo_image(&d, Path::new(env!("CARGO_BIN_EXE_molecule")))
                .await
                .expect("echo image")
        })
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = format!("ar{}", suffix(6));
    let templates = tmp.path().join("templates");
    let repo = templates.join(format!("workspace-template-{rt}"));
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(
        repo.join("Dockerfile"),
        format!("FROM {echo}\nCOPY VERSION /VERSION\n"),
    )
    .expect("Dockerfile");
    std::fs::write(repo.join("VERSION"), "1\n").expect("VERSION");
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "v1"]);
    let sha1 = git(&repo, &["rev-parse", "HEAD"]);
    let prefix = format!("file://{}/workspace-template-", templates.display());
    let cache = tmp.path().join("cache").display().to_string();
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            "--controllers",
            "all",
            "--agent-heartbeat-seconds",
            "1",
            "--heartbeat-timeout-seconds",
            "30",
            "--reap-interval-seconds",
            "2",
            "--template-repo-prefix",
            &prefix,
            "--build-cache",
            &cache,
        ],
    );
    let ns = format!("t{}", suffix(8));
    let image_repo = format!("molecule-local/workspace-template-{rt}");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kubectl_ok(&s, &["create", "namespace", &ns]);
        apply(
            &s,
            None,
            &format!(
                "apiVersion: molecule.ai/v1alpha1\nkind: Runtime\nmetadata:\n  name: {rt}\nspec:\n  autoRefresh:\n    enabled: true\n    intervalSeconds: 2\n"
            ),
        );
        for name in ["a", "b"] {
            apply(&s, Some(&ns), &workspace_yaml(name, &rt));
        }
        let tag1 = format!("{image_repo}:{}", &sha1[..12]);
        for name in ["a", "b"] {
            wait_until(
                &s,
                300,
                &format!("workspace {name} Online"),
                || {
                    let w = ws(&s, &ns, name);
                    st(&w, "phase") == "Online" && st(&w, "image") == tag1
                },
                || ws(&s, &ns, name)["status"].to_string(),
            );
        }
        let builds = format!("molecule_image_builds_total{{runtime=\"{rt}\",result=\"ok\"}}");
        assert_eq!(metric(&s, &builds), 1.0);
        std::thread::sleep(Duration::from_secs(5)); // ticks on an unmoved HEAD do nothing
        assert_eq!(metric(&s, &builds), 1.0);

        // HEAD moves: the next tick rebuilds and rolls both workspaces, one at a time.
        std::fs::write(repo.join("VERSION"), "2\n").expect("VERSION");
        git(&repo, &["commit", "-q", "-am", "v2"]);
        let sha2 = git(&repo, &["rev-parse", "HEAD"]);
        let tag2 = format!("{image_repo}:{}", &sha2[..12]);
        let mut provisioned: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); 2];
        let started = Instant::now();
        loop {
            let (wa, wb) = (ws(&s, &ns, "a"), ws(&s, &ns, "b"));
            let down = [&wa, &wb]
                .iter()
                .filter(|w| st(w, "phase") != "Online")
                .count();
            assert!(down <= 1, "both workspaces down at once");
            provisioned[0].insert(st(&wa, "provisionedAt").to_string());
            provisioned[1].insert(st(&wb, "provisionedAt").to_string());
            let on_new = |w: &Value| st(w, "image") == tag2 && st(w, "phase") == "Online";
            if on_new(&wa) && on_new(&wb) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the roll did not finish\n{}",
                tail(&s)
            );
            std::thread::sleep(Duration::from_millis(150));
        }
        assert_eq!(metric(&s, &builds), 2.0, "one rebuild");
        for (i, p) in provisioned.iter().enumerate() {
            assert_eq!(p.len(), 2, "workspace {i} restarted exactly once: {p:?}");
        }
        wait_until(
            &s,
            60,
            "the runtime to report the rolled image",
            || {
                let r = runtime(&s, &rt);
                st(&r, "resolvedImage") == tag2 && cond(&r, "RolledOut").0 == "True"
            },
            || runtime(&s, &rt)["status"].to_string(),
        );
    }));
    drop(s);
    cleanup(&ns);
    remove_tags(&image_repo);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
