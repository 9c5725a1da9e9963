//! Git sources through the real `git` CLI (ADR 0040): resolving a tracked ref to a full
//! commit sha with `git ls-remote`, and reading the tree of one commit with a shallow fetch into
//! a throwaway bare repository plus `ls-tree`/`cat-file` — no checkout, so no hooks, no
//! worktree and no symlink is ever followed. Every call is bounded by the fetch timeout (5 min by
//! default) and killed when it runs out. Every run is sealed by [`crate::git`] (ADR 0040): no
//! user or system config, no credential helpers, a cleared environment, and only https plus
//! the transport of the source's own URL; the fetched pack is bounded while it streams in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Refusal;
use super::source::{Track, shorten};
use super::tree::{Limits, PluginTree};

/// Default bound on one fetch or resolve.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A resolved tracked ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Full commit sha (40 hex, lowercase).
    pub sha: String,
    /// The tag or branch it came from (`v1.2.0`, `main`), if any.
    pub ref_name: Option<String>,
}

/// The git client.
#[derive(Clone, Debug)]
pub struct Git {
    pub timeout: Duration,
    /// Where throwaway fetch repositories are made.
    pub scratch: PathBuf,
}

impl Default for Git {
    fn default() -> Self {
        Git {
            timeout: DEFAULT_TIMEOUT,
            scratch: std::env::temp_dir(),
        }
    }
}

struct Output {
    code: Option<i32>,
    /// A written file reached the cap (the pack was larger than the plugin may be).
    hit_file_limit: bool,
    stdout: Vec<u8>,
    stderr: String,
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fetch_failed(what: &str, stderr: &str) -> Refusal {
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no error output");
    Refusal::new(
        "FetchFailed",
        format!("git {what} failed: {}", shorten(last, 200)),
    )
}

fn too_large(limits: &Limits) -> Refusal {
    Refusal::new(
        "TooLarge",
        format!(
            "the plugin is larger than the staging limit of {} MiB",
            limits.max_bytes / (1024 * 1024)
        ),
    )
}

impl Git {
    pub fn new(timeout: Duration, scratch: PathBuf) -> Self {
        Git { timeout, scratch }
    }

    /// Runs git sealed (ADR 0040): only the transport of `url` (if any) besides https, and
    /// with `max_file` a bound on every file git writes (the fetched pack), enforced while the
    /// pack streams in.
    async fn run(
        &self,
        dir: Option<&Path>,
        url: Option<&str>,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        max_file: Option<u64>,
    ) -> Result<Output, Refusal> {
        let mut spec = crate::git::Spec::new(args.iter().copied());
        if let Some(d) = dir {
            spec = spec.cwd(d);
        }
        if let Some(u) = url {
            spec = spec.allow_url(u);
        }
        if let Some(cap) = max_file {
            spec = spec.max_file_bytes(cap);
        }
        match crate::git::run(&spec, stdin, usize::MAX, self.timeout).await {
            Ok(o) => Ok(Output {
                code: o.code,
                hit_file_limit: max_file.is_some() && o.hit_file_limit(),
                stdout: o.stdout,
                stderr: o.stderr,
            }),
            Err(crate::git::RunError::Timeout { .. }) => Err(Refusal::new(
                "FetchTimeout",
                format!(
                    "git took longer than the fetch timeout of {}s",
                    self.timeout.as_secs()
                ),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "git did not run to completion");
                Err(Refusal::new(
                    "FetchFailed",
                    "the git CLI could not be run (is git installed?)",
                ))
            }
        }
    }

    /// `git ls-remote --exit-code -- <url> <patterns>`: (sha, ref) pairs; `None` when nothing
    /// matched.
    async fn ls_remote(
        &self,
        url: &str,
        flags: &[&str],
        patterns: &[&str],
    ) -> Result<Option<Vec<(String, String)>>, Refusal> {
        let mut args = vec!["ls-remote", "--exit-code"];
        args.extend_from_slice(flags);
        args.push("--");
        args.push(url);
        args.extend_from_slice(patterns);
        let out = self.run(None, Some(url), &args, None, None).await?;
        match out.code {
            Some(0) => {}
            Some(2) => return Ok(None),
            _ => return Err(fetch_failed("ls-remote", &out.stderr)),
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(Some(
            text.lines()
                .filter_map(|l| l.split_once('\t'))
                .filter(|(sha, _)| sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|(sha, r)| (sha.to_ascii_lowercase(), r.trim().to_string()))
                .collect(),
        ))
    }

    /// Resolves what `track` points at upstream to a full commit sha.
    pub async fn resolve(&self, url: &str, track: &Track) -> Result<Resolved, Refusal> {
        let not_found = |what: String| Refusal::new("RefNotFound", what);
        match track {
            Track::Sha(sha) => Ok(Resolved {
                sha: sha.clone(),
                ref_name: None,
            }),
            Track::Unpinned => {
                let refs = self
                    .ls_remote(url, &[], &["HEAD"])
                    .await?
                    .ok_or_else(|| not_found("the repository has no HEAD (is it empty?)".into()))?;
                let sha = refs
                    .into_iter()
                    .next()
                    .map(|(s, _)| s)
                    .ok_or_else(|| not_found("the repository has no HEAD".into()))?;
                Ok(Resolved {
                    sha,
                    ref_name: None,
                })
            }
            Track::Branch(b) => {
                let full = format!("refs/heads/{b}");
                let refs = self
                    .ls_remote(url, &["--heads"], &[&full])
                    .await?
                    .unwrap_or_default();
                let sha = refs
                    .into_iter()
                    .find(|(_, r)| *r == full)
                    .map(|(s, _)| s)
                    .ok_or_else(|| not_found(format!("branch {b:?} does not exist upstream")))?;
                Ok(Resolved {
                    sha,
                    ref_name: Some(b.clone()),
                })
            }
            Track::Tag(t) => {
                let full = format!("refs/tags/{t}");
                let peeled = format!("{full}^{{}}");
                let refs = self
                    .ls_remote(url, &["--tags"], &[&full, &peeled])
                    .await?
                    .unwrap_or_default();
                let sha = refs
                    .iter()
                    .find(|(_, r)| *r == peeled)
                    .or_else(|| refs.iter().find(|(_, r)| *r == full))
                    .map(|(s, _)| s.clone())
                    .ok_or_else(|| not_found(format!("tag {t:?} does not exist upstream")))?;
                Ok(Resolved {
                    sha,
                    ref_name: Some(t.clone()),
                })
            }
            Track::LatestTag => {
                let refs = self
                    .ls_remote(url, &["--tags"], &[])
                    .await?
                    .unwrap_or_default();
                let (tag, sha) = latest_tag(&refs)
                    .ok_or_else(|| not_found("the repository has no tags (tag:latest)".into()))?;
                Ok(Resolved {
                    sha,
                    ref_name: Some(tag),
                })
            }
        }
    }

    /// Reads the tree of commit `sha` (a shallow fetch into a throwaway bare repository),
    /// refusing symlinks' targets and submodules (skipped) and anything over `limits`.
    pub async fn fetch_tree(
        &self,
        url: &str,
        sha: &str,
        fallback_ref: Option<&str>,
        limits: &Limits,
    ) -> Result<PluginTree, Refusal> {
        let dir = self.scratch.join(format!(
            "molecule-plugin-fetch-{}",
            crate::util::random_suffix(12)
        ));
        std::fs::create_dir_all(&self.scratch).map_err(|e| {
            tracing::warn!(error = %e, "cannot create the plugin scratch dir");
            Refusal::new(
                "FetchFailed",
                "the plugin scratch directory could not be created",
            )
        })?;
        let _guard = Scratch(dir.clone());
        // The pack may be a little larger than the files it holds (headers, trees, a commit);
        // anything beyond this is refused while it streams in (ADR 0040).
        let pack_cap = limits
            .max_bytes
            .saturating_add(limits.max_bytes / 8)
            .saturating_add(1024 * 1024);
        let d = dir.to_string_lossy().to_string();
        let init = self
            .run(None, None, &["init", "-q", "--bare", &d], None, None)
            .await?;
        if init.code != Some(0) {
            return Err(fetch_failed("init", &init.stderr));
        }
        let mut fetched = self
            .run(
                Some(&dir),
                Some(url),
                &["fetch", "-q", "--depth", "1", "--no-tags", "--", url, sha],
                None,
                Some(pack_cap),
            )
            .await?;
        if fetched.hit_file_limit {
            return Err(too_large(limits));
        }
        if fetched.code != Some(0)
            && let Some(r) = fallback_ref
        {
            // Servers that refuse unadvertised shas: fetch the ref and check it is the sha.
            fetched = self
                .run(
                    Some(&dir),
                    Some(url),
                    &["fetch", "-q", "--depth", "1", "--no-tags", "--", url, r],
                    None,
                    Some(pack_cap),
                )
                .await?;
        }
        if fetched.hit_file_limit {
            return Err(too_large(limits));
        }
        if fetched.code != Some(0) {
            let e = fetched.stderr.to_ascii_lowercase();
            if [
                "not our ref",
                "couldn't find remote ref",
                "no such remote ref",
                "unadvertised object",
                "not a valid object",
            ]
            .iter()
            .any(|p| e.contains(p))
            {
                return Err(Refusal::new(
                    "RefNotFound",
                    format!("commit {sha} does not exist upstream"),
                ));
            }
            return Err(fetch_failed("fetch", &fetched.stderr));
        }
        let head = self
            .run(
                Some(&dir),
                None,
                &["rev-parse", "--verify", "-q", "FETCH_HEAD^{commit}"],
                None,
                None,
            )
            .await?;
        let got = String::from_utf8_lossy(&head.stdout)
            .trim()
            .to_ascii_lowercase();
        if got != sha {
            return Err(Refusal::new(
                "RefNotFound",
                format!(
                    "commit {sha} does not exist upstream (the ref now points at {})",
                    shorten(&got, 40)
                ),
            ));
        }
        let listing = self
            .run(
                Some(&dir),
                None,
                &["ls-tree", "-r", "-l", "-z", "--full-tree", "FETCH_HEAD"],
                None,
                None,
            )
            .await?;
        if listing.code != Some(0) {
            return Err(fetch_failed("ls-tree", &listing.stderr));
        }
        let mut entries = vec![];
        let mut tree = PluginTree::default();
        let mut total: u64 = 0;
        for rec in listing.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let rec = String::from_utf8_lossy(rec);
            let Some((meta, path)) = rec.split_once('\t') else {
                continue;
            };
            let parts: Vec<&str> = meta.split_whitespace().collect();
            let [mode, kind, oid, size] = parts[..] else {
                continue;
            };
            // Symlinks (120000) and submodules (160000) are skipped, like symlinks on disk.
            if kind != "blob" || !(mode == "100644" || mode == "100755") {
                continue;
            }
            let size: u64 = size.parse().unwrap_or(u64::MAX);
            total = total.saturating_add(size);
            if total > limits.max_bytes {
                return Err(too_large(limits));
            }
            if entries.len() >= limits.max_files {
                return Err(Refusal::new(
                    "TooLarge",
                    format!("the plugin has more than {} files", limits.max_files),
                ));
            }
            super::tree::check_path(path).map_err(|e| Refusal::new("InvalidPlugin", e))?;
            entries.push((
                path.to_string(),
                if mode == "100755" { 0o755 } else { 0o644 },
                oid.to_string(),
                size,
            ));
        }
        if entries.is_empty() {
            return Ok(tree);
        }
        let batch: String = entries
            .iter()
            .map(|(_, _, oid, _)| format!("{oid}\n"))
            .collect();
        let blobs = self
            .run(
                Some(&dir),
                None,
                &["cat-file", "--batch"],
                Some(batch.into_bytes()),
                None,
            )
            .await?;
        if blobs.code != Some(0) {
            return Err(fetch_failed("cat-file", &blobs.stderr));
        }
        let mut rest = &blobs.stdout[..];
        for (path, mode, oid, size) in entries {
            let nl = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| Refusal::new("FetchFailed", "git cat-file output was cut short"))?;
            let header = String::from_utf8_lossy(&rest[..nl]).to_string();
            rest = &rest[nl + 1..];
            let expect = format!("{oid} blob {size}");
            let size = size as usize;
            if header != expect || rest.len() < size + 1 {
                return Err(Refusal::new(
                    "FetchFailed",
                    "git cat-file output did not match the tree",
                ));
            }
            tree.insert(&path, mode, rest[..size].to_vec(), limits)?;
            rest = &rest[size + 1..];
        }
        Ok(tree)
    }
}

/// Orders version-like tags: `v1.10.0` > `v1.9.2` > `v1.9.2-rc1`; tags that are not versions
/// sort below every version, then by name.
fn version_key(tag: &str) -> (bool, Vec<u64>, bool, String) {
    let t = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    let (main, pre) = match t.split_once(['-', '+']) {
        Some((m, p)) => (m, Some(p)),
        None => (t, None),
    };
    let nums: Option<Vec<u64>> = main.split('.').map(|p| p.parse().ok()).collect();
    match nums {
        Some(n) if !n.is_empty() => (true, n, pre.is_none(), tag.to_string()),
        _ => (false, vec![], false, tag.to_string()),
    }
}

/// The highest version tag and its commit (peeled for annotated tags).
pub fn latest_tag(refs: &[(String, String)]) -> Option<(String, String)> {
    let mut tags: std::collections::BTreeMap<String, (Option<String>, Option<String>)> =
        Default::default();
    for (sha, r) in refs {
        let Some(name) = r.strip_prefix("refs/tags/") else {
            continue;
        };
        match name.strip_suffix("^{}") {
            Some(n) => tags.entry(n.to_string()).or_default().1 = Some(sha.clone()),
            None => tags.entry(name.to_string()).or_default().0 = Some(sha.clone()),
        }
    }
    tags.into_iter()
        .filter_map(|(name, (direct, peeled))| peeled.or(direct).map(|sha| (name, sha)))
        .max_by(|a, b| version_key(&a.0).cmp(&version_key(&b.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
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

    fn commit(dir: &Path, files: &[(&str, &str)], msg: &str) -> String {
        for (p, c) in files {
            let path = dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", msg]);
        git(dir, &["rev-parse", "HEAD"])
    }

    fn repo() -> (tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        git(d.path(), &["init", "-q", "-b", "main"]);
        let url = format!("file://{}", d.path().display());
        (d, url)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn version_ordering() {
        let refs: Vec<(String, String)> = ["v1.9.2", "v1.10.0", "v1.10.0-rc1", "nightly", "v0.9"]
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("{i:040}"), format!("refs/tags/{t}")))
            .collect();
        assert_eq!(latest_tag(&refs).unwrap().0, "v1.10.0");
        let only_names = vec![
            ("a".repeat(40), "refs/tags/alpha".into()),
            ("b".repeat(40), "refs/tags/beta".into()),
        ];
        assert_eq!(latest_tag(&only_names).unwrap().0, "beta");
        assert!(latest_tag(&[]).is_none());
    }

    #[test]
    fn resolves_branches_tags_latest_and_reads_a_commit() {
        let (d, url) = repo();
        let c1 = commit(
            d.path(),
            &[
                ("plugin.yaml", "name: p\n"),
                ("hooks/run.sh", "#!/bin/sh\n"),
            ],
            "one",
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                d.path().join("hooks/run.sh"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
            std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        }
        let c1b = commit(d.path(), &[], "exec bit and a symlink");
        git(d.path(), &["tag", "v1.0.0"]);
        let c2 = commit(d.path(), &[("skills/a/SKILL.md", "v2")], "two");
        git(d.path(), &["tag", "-a", "v1.1.0", "-m", "annotated"]);
        let c3 = commit(d.path(), &[("skills/a/SKILL.md", "v3")], "three");
        assert_ne!(c1, c1b);
        let g = Git::default();
        let rt = rt();
        rt.block_on(async {
            assert_eq!(
                g.resolve(&url, &Track::Branch("main".into()))
                    .await
                    .unwrap()
                    .sha,
                c3
            );
            assert_eq!(
                g.resolve(&url, &Track::Tag("v1.0.0".into()))
                    .await
                    .unwrap()
                    .sha,
                c1b
            );
            // Annotated tags resolve to the commit, not the tag object.
            assert_eq!(
                g.resolve(&url, &Track::Tag("v1.1.0".into()))
                    .await
                    .unwrap()
                    .sha,
                c2
            );
            let latest = g.resolve(&url, &Track::LatestTag).await.unwrap();
            assert_eq!(
                (latest.sha.as_str(), latest.ref_name.as_deref()),
                (c2.as_str(), Some("v1.1.0"))
            );
            assert_eq!(g.resolve(&url, &Track::Unpinned).await.unwrap().sha, c3);
            for missing in [Track::Branch("nope".into()), Track::Tag("v9".into())] {
                assert_eq!(
                    g.resolve(&url, &missing).await.unwrap_err().reason,
                    "RefNotFound"
                );
            }
            let gone = g
                .resolve("file:///nonexistent/repo", &Track::Branch("main".into()))
                .await
                .unwrap_err();
            assert_eq!(gone.reason, "FetchFailed", "{}", gone.message);

            // An older, non-tip commit by sha.
            let t = g
                .fetch_tree(&url, &c1b, None, &Limits::default())
                .await
                .unwrap();
            let paths: Vec<&str> = t.files().map(|f| f.path.as_str()).collect();
            assert_eq!(
                paths,
                vec!["hooks/run.sh", "plugin.yaml"],
                "the symlink is skipped"
            );
            assert_eq!(t.get("hooks/run.sh").unwrap().mode, 0o755);
            assert_eq!(t.get("plugin.yaml").unwrap().content, b"name: p\n");
            let t3 = g
                .fetch_tree(&url, &c3, Some("refs/heads/main"), &Limits::default())
                .await
                .unwrap();
            assert_eq!(t3.get("skills/a/SKILL.md").unwrap().content, b"v3");

            let missing = g
                .fetch_tree(&url, &"0".repeat(40), None, &Limits::default())
                .await
                .unwrap_err();
            assert_eq!(missing.reason, "RefNotFound", "{}", missing.message);
            let small = Limits {
                max_bytes: 10,
                max_files: 100,
            };
            assert_eq!(
                g.fetch_tree(&url, &c3, None, &small)
                    .await
                    .unwrap_err()
                    .reason,
                "TooLarge"
            );
        });
    }

    #[test]
    fn scratch_repos_are_removed_and_timeouts_bound_git() {
        let (d, url) = repo();
        let c = commit(d.path(), &[("plugin.yaml", "name: p\n")], "one");
        let scratch = tempfile::tempdir().unwrap();
        let g = Git::new(DEFAULT_TIMEOUT, scratch.path().to_path_buf());
        let rt = rt();
        rt.block_on(async {
            g.fetch_tree(&url, &c, None, &Limits::default())
                .await
                .unwrap();
        });
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
        let fast = Git::new(Duration::from_nanos(1), scratch.path().to_path_buf());
        let r = rt
            .block_on(fast.resolve(&url, &Track::Branch("main".into())))
            .unwrap_err();
        assert_eq!(r.reason, "FetchTimeout");
    }
}
