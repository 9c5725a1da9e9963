//! Runtime image resolution (issue 7), against the real Docker engine and a real git repository
//! made in a temp dir (a `FROM scratch` template: the host's `sleep` and its libraries).
//!
//! - **Resolve on a cache hit** (local-build mode: one capped `git ls-remote` + one image
//!   inspect through the Docker API), target < 50 ms. Baseline in the same run: the same two
//!   steps by hand with the CLIs (`git ls-remote` + `docker image inspect`).
//! - **The local-build path** on the test repo (lookup + shallow clone into the build cache +
//!   build through the Docker API, tag by commit). Baseline in the same run: `git clone --depth
//!   1` + `docker build` of the same commit with the CLIs.
//!
//! `cargo bench --bench images` (env `BENCH_HITS`, default 50; `BENCH_BUILDS`, default 3).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use molecule::images::{ImageSettings, Images, Purpose};

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.com")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.com")
        .output()
        .expect("git");
    assert!(o.status.success(), "git {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn sh(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn make_template_repo(dir: &Path) {
    std::fs::create_dir_all(dir.join("rootfs/bin")).expect("mkdir");
    std::fs::copy("/bin/sleep", dir.join("rootfs/bin/sleep")).expect("sleep");
    let ldd = Command::new("ldd").arg("/bin/sleep").output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, t)) => t.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let dest = dir.join("rootfs").join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::copy(p, &dest).expect("lib");
        }
    }
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nCOPY VERSION /VERSION\nENTRYPOINT [\"/bin/sleep\", \"3600\"]\n",
    )
    .expect("Dockerfile");
    std::fs::write(dir.join("VERSION"), "0\n").expect("VERSION");
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "v0"]);
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    let p50 = ms(v[v.len() / 2]);
    let p95 = ms(v[((v.len() as f64 * 0.95) as usize).min(v.len() - 1)]);
    (p50, p95, mean)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let hits = env_usize("BENCH_HITS", 50).max(5);
    let builds = env_usize("BENCH_BUILDS", 3).max(1);
    let tmp = tempfile::tempdir().expect("tmp");
    let runtime_name = format!(
        "bench{}",
        molecule::util::random_suffix(6).to_ascii_lowercase()
    );
    let templates = tmp.path().join("templates");
    let repo = templates.join(format!("workspace-template-{runtime_name}"));
    make_template_repo(&repo);
    let prefix = format!("file://{}/workspace-template-", templates.display());
    let url = format!("{prefix}{runtime_name}");
    let image_repo = format!("molecule-local/workspace-template-{runtime_name}");
    let baseline_repo = format!("molecule-bench-baseline/{runtime_name}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let images = rt.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults()
            .expect("docker")
            .negotiate_version()
            .await
            .expect("docker version");
        // The local-build path never talks to the API server; the client only has to exist.
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("uri"),
        ))
        .expect("client");
        let mut settings = ImageSettings::new("/bin/true".into(), "bench".into());
        settings.template_prefix = prefix.clone();
        settings.build_cache = tmp.path().join("cache");
        Arc::new(Images::new(
            docker,
            client,
            settings,
            Arc::new(molecule::telemetry::Metrics::default()),
        ))
    });

    // The local-build path: a new commit each round, so every round clones and builds.
    let mut ours = vec![];
    let mut theirs = vec![];
    for i in 0..builds {
        std::fs::write(repo.join("VERSION"), format!("{}\n", i + 1)).expect("VERSION");
        git(&repo, &["commit", "-q", "-am", &format!("v{}", i + 1)]);
        let sha = git(&repo, &["rev-parse", "HEAD"]);
        let t = Instant::now();
        let r = rt
            .block_on(images.ensure(&runtime_name, None, Purpose::Start))
            .expect("local build");
        ours.push(t.elapsed());
        assert_eq!(r.built_from_sha.as_deref(), Some(sha.as_str()));

        let clone = tmp.path().join(format!("baseline-{i}"));
        let t = Instant::now();
        assert!(sh(
            "git",
            &[
                "clone",
                "-q",
                "--depth",
                "1",
                &url,
                &clone.to_string_lossy()
            ]
        ));
        assert!(sh(
            "docker",
            &[
                "build",
                "-q",
                "--no-cache",
                "-t",
                &format!("{baseline_repo}:{i}"),
                &clone.to_string_lossy(),
            ]
        ));
        theirs.push(t.elapsed());
    }

    // Resolve on a cache hit.
    let tag = rt
        .block_on(images.ensure(&runtime_name, None, Purpose::Start))
        .expect("hit")
        .image;
    let mut hit = vec![];
    for _ in 0..hits {
        let t = Instant::now();
        let r = rt
            .block_on(images.ensure(&runtime_name, None, Purpose::Start))
            .expect("hit");
        hit.push(t.elapsed());
        assert_eq!(r.image, tag);
    }
    let mut cli = vec![];
    for _ in 0..hits {
        let t = Instant::now();
        assert!(sh("git", &["ls-remote", &url, "HEAD"]));
        assert!(sh("docker", &["image", "inspect", &tag]));
        cli.push(t.elapsed());
    }

    let (b50, _, bmean) = stats(ours);
    let (c50, _, cmean) = stats(theirs);
    let (h50, h95, hmean) = stats(hit);
    let (l50, l95, lmean) = stats(cli);
    println!("runtime image resolution ({hits} cache hits, {builds} builds)");
    println!(
        "  resolve, cache hit (ls-remote + inspect via API): p50 {h50:7.1} ms  p95 {h95:7.1} ms  mean {hmean:7.1} ms   target < 50 ms: {}",
        if h95 < 50.0 { "met (p95)" } else { "MISSED" }
    );
    println!(
        "  baseline: git ls-remote + docker image inspect CLI: p50 {l50:7.1} ms  p95 {l95:7.1} ms  mean {lmean:7.1} ms   ratio (ours/baseline, p50) {:.2}",
        h50 / l50
    );
    println!(
        "  local build (lookup + shallow clone + API build):    p50 {b50:7.1} ms  mean {bmean:7.1} ms"
    );
    println!(
        "  baseline: git clone --depth 1 + docker build CLI:    p50 {c50:7.1} ms  mean {cmean:7.1} ms   ratio (ours/baseline, p50) {:.2}",
        b50 / c50
    );

    // Clean up only what this run tagged.
    for r in [&image_repo, &baseline_repo] {
        let out = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}", r])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for t in out.lines().filter(|l| !l.is_empty()) {
            sh("docker", &["rmi", t]);
        }
    }
}
