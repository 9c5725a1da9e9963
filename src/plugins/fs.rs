//! The atomic install steps inside a workspace container (ADR 0015), as plain filesystem
//! operations on the plugins root (`/configs/plugins`):
//!
//! ```text
//! /configs/plugins/<name>/                   live (loaders read only dirs holding .complete)
//! /configs/plugins/.staging/<name>.<stamp>/  stage: the new version, uploaded whole
//! /configs/plugins/.previous/<name>.<stamp>/ snapshot of the live version during a swap
//! ```
//!
//! `prepare` recovers from an interrupted earlier install and hashes the staged and live trees;
//! `swap` snapshots live → `.previous`, renames staging → live (one `rename(2)`), writes the
//! `.complete` marker and garbage-collects the snapshot. Rollback rules: a stage or snapshot
//! failure leaves live untouched and removes the staging dir; a swap failure renames the
//! snapshot back; a marker failure keeps the new content and logs loudly with the manual fix.
//!
//! The echo image is `FROM scratch` (no shell), so the operator runs these as
//! `/molecule plugin-fs <op> <root> <name> <stamp> [sha]` through `docker exec`; images with a
//! shell run the equivalent script in [`super::shell`]. Both print the same line protocol
//! ([`Report`]), which the controller parses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::MARKER;

/// Where plugins live inside a workspace container.
pub const ROOT: &str = "/configs/plugins";
pub const STAGING: &str = ".staging";
pub const PREVIOUS: &str = ".previous";
/// Fault injection (tests): a file under the root naming the step to fail (`stage`,
/// `snapshot`, `swap`, `marker`, `hang-after-snapshot`); armed until its content changes. Only
/// read when the helper is run with `--failpoints` (`serve --plugin-failpoints`).
pub const FAILPOINT_FILE: &str = ".failpoint";

/// Whether `s` is a valid install stamp (`[0-9a-z]{1,40}`: sortable, no dots).
pub fn valid_stamp(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// A new stamp: zero-padded milliseconds (so stamps sort by time) and a random suffix.
pub fn new_stamp() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms:015}{}", crate::util::random_suffix(4))
}

/// The paths of one install.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub name: String,
    pub stamp: String,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>, name: &str, stamp: &str) -> Result<Self, String> {
        if !super::source::valid_name(name) {
            return Err("invalid plugin name".into());
        }
        if !valid_stamp(stamp) {
            return Err("invalid stamp".into());
        }
        Ok(Layout {
            root: root.into(),
            name: name.to_string(),
            stamp: stamp.to_string(),
        })
    }
    pub fn live(&self) -> PathBuf {
        self.root.join(&self.name)
    }
    pub fn staging(&self) -> PathBuf {
        self.root
            .join(STAGING)
            .join(format!("{}.{}", self.name, self.stamp))
    }
    pub fn previous(&self) -> PathBuf {
        self.root
            .join(PREVIOUS)
            .join(format!("{}.{}", self.name, self.stamp))
    }
    /// The staging dir relative to `/configs` (where the archive upload puts files).
    pub fn staging_rel(&self) -> String {
        format!("plugins/{STAGING}/{}.{}", self.name, self.stamp)
    }
}

/// What one helper run reports, as lines: `staged <sha256> <path>`, `live <sha256> <path>`,
/// `live-missing`, `live-unreadable`, `staged-unreadable`, `complete`, `recovered <what>`,
/// `result <outcome>`, `restored yes|no`, `error <text>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Per-file hashes of the staged tree (`None`: unreadable).
    pub staged: Option<BTreeMap<String, String>>,
    /// Per-file hashes of the live tree (`None`: missing or unreadable).
    pub live: Option<BTreeMap<String, String>>,
    /// The live tree holds `.complete`.
    pub complete: bool,
    pub recovered: Vec<String>,
    /// `prepared`, `swapped`, `snapshot_failed`, `swap_failed`, `marker_failed`, `stage_failed`,
    /// `discarded`, `uninstalled`, `inspected`.
    pub result: String,
    pub restored: Option<bool>,
    pub error: Option<String>,
}

fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Report {
    /// Renders the line protocol.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.recovered {
            out.push_str(&format!("recovered {r}\n"));
        }
        if let Some(s) = &self.staged {
            for (p, h) in s {
                out.push_str(&format!("staged {h} {p}\n"));
            }
        }
        match &self.live {
            Some(l) => {
                for (p, h) in l {
                    out.push_str(&format!("live {h} {p}\n"));
                }
                if l.is_empty() {
                    out.push_str("live-empty\n");
                }
            }
            None => out.push_str("live-missing\n"),
        }
        if self.complete {
            out.push_str("complete\n");
        }
        if let Some(r) = self.restored {
            out.push_str(if r { "restored yes\n" } else { "restored no\n" });
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("error {}\n", e.replace('\n', " ")));
        }
        out.push_str(&format!("result {}\n", self.result));
        out
    }

    /// Parses the line protocol. A malformed `live` line makes the live tree unreadable (which
    /// classifies cold); a malformed `staged` line makes the staged tree unreadable.
    pub fn parse(text: &str) -> Report {
        let mut r = Report::default();
        let mut staged: Option<BTreeMap<String, String>> = Some(BTreeMap::new());
        let mut live: Option<BTreeMap<String, String>> = None;
        let mut live_bad = false;
        let mut saw_staged = false;
        for line in text.lines() {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "staged" | "live" => {
                    let entry = rest
                        .split_once(' ')
                        .filter(|(h, p)| {
                            valid_hash(h) && crate::plugins::tree::check_path(p).is_ok()
                        })
                        .map(|(h, p)| (p.to_string(), h.to_ascii_lowercase()));
                    if key == "staged" {
                        saw_staged = true;
                        match (entry, staged.as_mut()) {
                            (Some((p, h)), Some(m)) => {
                                m.insert(p, h);
                            }
                            _ => staged = None,
                        }
                    } else {
                        match entry {
                            Some((p, h)) => {
                                live.get_or_insert_with(BTreeMap::new).insert(p, h);
                            }
                            None => live_bad = true,
                        }
                    }
                }
                "live-empty" => {
                    live.get_or_insert_with(BTreeMap::new);
                }
                "live-unreadable" => live_bad = true,
                "staged-unreadable" => {
                    saw_staged = true;
                    staged = None;
                }
                "complete" => r.complete = true,
                "recovered" => r.recovered.push(rest.to_string()),
                "restored" => r.restored = Some(rest == "yes"),
                "error" => r.error = Some(rest.to_string()),
                "result" => r.result = rest.to_string(),
                _ => {}
            }
        }
        r.staged = if saw_staged { staged } else { None };
        r.live = if live_bad { None } else { live };
        r
    }
}

/// sha256 of every regular file under `dir`, by relative path. Symlinks and special files are
/// skipped; a path that is not plain UTF-8 without control characters makes the tree unreadable.
pub fn hash_tree(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .filter(|n| !n.chars().any(char::is_control))
                .ok_or_else(|| std::io::Error::other("unusable file name"))?;
            let rel = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push((entry.path(), rel));
            } else if ft.is_file() {
                let mut h = Sha256::new();
                let mut f = std::fs::File::open(entry.path())?;
                std::io::copy(&mut f, &mut h)?;
                out.insert(rel, hex::encode(h.finalize()));
            }
        }
    }
    Ok(out)
}

fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Entries `<name>.<stamp>` of `dir` (sorted by stamp, i.e. by time).
fn stamped(dir: &Path, name: &str) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<(String, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().to_str()?.to_string();
            let (n, stamp) = file.rsplit_once('.')?;
            (n == name && valid_stamp(stamp)).then(|| (stamp.to_string(), e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Heals what an interrupted install of `name` left: other staging dirs are removed; if the
/// live dir is gone but a snapshot exists (a crash between snapshot and swap), the newest
/// snapshot is renamed back; a file at the live path (an uninstall tombstone) is removed and
/// nothing is restored; remaining snapshots are removed. Returns what was done.
pub fn recover(root: &Path, name: &str, keep_stamp: Option<&str>) -> Vec<String> {
    let mut done = vec![];
    for (stamp, p) in stamped(&root.join(STAGING), name) {
        if Some(stamp.as_str()) == keep_stamp {
            continue;
        }
        if remove_any(&p).is_ok() {
            done.push(format!("removed-staging {name}.{stamp}"));
        }
    }
    let live = root.join(name);
    let mut tombstone = false;
    if exists(&live) && !is_dir(&live) {
        tombstone = remove_any(&live).is_ok();
        if tombstone {
            done.push("removed-tombstone".into());
        }
    }
    let previous = stamped(&root.join(PREVIOUS), name);
    if !exists(&live)
        && !tombstone
        && let Some((stamp, p)) = previous.last()
        && std::fs::rename(p, &live).is_ok()
    {
        done.push(format!("restored-previous {name}.{stamp}"));
    }
    for (stamp, p) in stamped(&root.join(PREVIOUS), name) {
        if remove_any(&p).is_ok() {
            done.push(format!("removed-previous {name}.{stamp}"));
        }
    }
    done
}

/// Whether the failpoint for `step` is armed.
fn failpoint(root: &Path, enabled: bool, step: &str) -> bool {
    if !enabled {
        return false;
    }
    match std::fs::read_to_string(root.join(FAILPOINT_FILE)) {
        Ok(s) if s.trim() == step => {
            eprintln!("molecule plugin-fs: failpoint {step} triggered");
            true
        }
        _ => false,
    }
}

/// Recovers, then hashes the staged and live trees.
pub fn prepare(l: &Layout, failpoints: bool) -> Report {
    let mut r = Report {
        recovered: recover(&l.root, &l.name, Some(&l.stamp)),
        ..Default::default()
    };
    let staged = if failpoint(&l.root, failpoints, "stage") {
        Err(std::io::Error::other("failpoint"))
    } else {
        hash_tree(&l.staging())
    };
    match staged {
        Ok(s) => r.staged = Some(s),
        Err(e) => {
            let _ = remove_any(&l.staging());
            r.result = "stage_failed".into();
            r.error = Some(format!("the staged tree could not be read: {e}"));
            r.live = hash_live(l, &mut r.complete);
            return r;
        }
    }
    r.live = hash_live(l, &mut r.complete);
    r.result = "prepared".into();
    r
}

fn hash_live(l: &Layout, complete: &mut bool) -> Option<BTreeMap<String, String>> {
    let live = l.live();
    if !is_dir(&live) {
        return None;
    }
    *complete = std::fs::symlink_metadata(live.join(MARKER))
        .map(|m| m.is_file())
        .unwrap_or(false);
    hash_tree(&live).ok()
}

/// Heals leftovers of an interrupted install, then hashes the live tree. Used on a workspace's
/// new container, where no install of this plugin is running (installs of one plugin are
/// serialized), so any staging dir is a leftover of one cut short by the old container's stop.
pub fn inspect(l: &Layout) -> Report {
    let mut r = Report {
        recovered: recover(&l.root, &l.name, None),
        ..Report::default()
    };
    r.live = hash_live(l, &mut r.complete);
    r.result = "inspected".into();
    r
}

/// Snapshot → swap → marker → GC, with the rollback rules of ADR 0015.
pub fn swap(l: &Layout, sha: &str, failpoints: bool) -> Report {
    let mut r = Report::default();
    let live = l.live();
    let staging = l.staging();
    let previous = l.previous();
    if !is_dir(&staging) {
        r.result = "stage_failed".into();
        r.error = Some("the staged tree is missing".into());
        return r;
    }
    // Snapshot.
    let mut snapshotted = false;
    if exists(&live) {
        let snap = if failpoint(&l.root, failpoints, "snapshot") {
            Err(std::io::Error::other("failpoint"))
        } else {
            std::fs::create_dir_all(l.root.join(PREVIOUS))
                .and_then(|_| std::fs::rename(&live, &previous))
        };
        if let Err(e) = snap {
            let _ = remove_any(&staging);
            r.result = "snapshot_failed".into();
            r.error = Some(format!("snapshot of the live tree failed: {e}"));
            return r;
        }
        snapshotted = true;
    }
    if failpoint(&l.root, failpoints, "hang-after-snapshot") {
        // Stands for a container killed mid-install: the test kills it while we sleep.
        std::thread::sleep(std::time::Duration::from_secs(120));
    }
    // Swap: one rename.
    let swapped = if failpoint(&l.root, failpoints, "swap") {
        Err(std::io::Error::other("failpoint"))
    } else {
        std::fs::rename(&staging, &live)
    };
    if let Err(e) = swapped {
        let restored = !snapshotted || std::fs::rename(&previous, &live).is_ok();
        let _ = remove_any(&staging);
        r.result = "swap_failed".into();
        r.restored = Some(restored);
        r.error = Some(if restored {
            format!("the swap failed and the previous version was restored: {e}")
        } else {
            format!(
                "the swap failed and the previous version could not be restored (it is kept in {}): {e}",
                previous.display()
            )
        });
        return r;
    }
    // Marker.
    let marked = if failpoint(&l.root, failpoints, "marker") {
        Err(std::io::Error::other("failpoint"))
    } else {
        // The swap's rename is made durable first, then the marker (ADR 0042).
        crate::util::sync_dir(&l.root).and_then(|()| {
            crate::util::write_marker(&live.join(MARKER), format!("{sha}\n").as_bytes())
        })
    };
    if let Err(e) = marked {
        eprintln!(
            "molecule plugin-fs: CONTENT INSTALLED BUT UNMARKED: {} has the new version but no .complete ({e}); loaders skip it until `touch {}` or the next install",
            live.display(),
            live.join(MARKER).display()
        );
        r.result = "marker_failed".into();
        r.error = Some(format!("the .complete marker could not be written: {e}"));
        return r;
    }
    // GC (best effort; the next install's recover removes leftovers).
    if snapshotted && let Err(e) = remove_any(&previous) {
        eprintln!(
            "molecule plugin-fs: could not remove the snapshot {}: {e}",
            previous.display()
        );
    }
    r.result = "swapped".into();
    r
}

/// Removes the staging dir of this install.
pub fn discard(l: &Layout) -> Report {
    let _ = remove_any(&l.staging());
    Report {
        result: "discarded".into(),
        ..Default::default()
    }
}

/// Uninstall: the live dir disappears with one rename, then is deleted with every leftover.
pub fn uninstall(l: &Layout) -> Report {
    let mut r = Report {
        recovered: recover(&l.root, &l.name, None),
        ..Default::default()
    };
    let live = l.live();
    if exists(&live) {
        let moved = std::fs::create_dir_all(l.root.join(PREVIOUS))
            .and_then(|_| std::fs::rename(&live, l.previous()));
        match moved {
            Ok(()) => {
                let _ = remove_any(&l.previous());
            }
            Err(e) => {
                r.result = "uninstall_failed".into();
                r.error = Some(format!("the plugin could not be removed: {e}"));
                return r;
            }
        }
    }
    r.result = "uninstalled".into();
    r
}

/// `molecule plugin-fs <op> <root> <name> <stamp> [sha] [--failpoints]`: runs one step and
/// prints its [`Report`]. Returns the process exit code (2: bad usage).
pub fn main(args: &[String]) -> i32 {
    let failpoints = args.iter().any(|a| a == "--failpoints");
    let pos: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--failpoints")
        .collect();
    if pos.first() == Some(&"probe") {
        println!("molecule-plugin-fs 1");
        return 0;
    }
    let (op, root, name, stamp) = match pos[..] {
        [op, root, name, stamp, ..] => (op, root, name, stamp),
        _ => {
            eprintln!(
                "usage: molecule plugin-fs <prepare|swap|discard|inspect|uninstall> <root> <name> <stamp> [sha]"
            );
            return 2;
        }
    };
    let sha = pos.get(4).copied().unwrap_or("");
    let layout = match Layout::new(root, name, stamp) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("molecule plugin-fs: {e}");
            return 2;
        }
    };
    let report = match op {
        "prepare" => prepare(&layout, failpoints),
        "swap" => swap(&layout, sha, failpoints),
        "discard" => discard(&layout),
        "inspect" => inspect(&layout),
        "uninstall" => uninstall(&layout),
        _ => {
            eprintln!("molecule plugin-fs: unknown operation {op:?}");
            return 2;
        }
    };
    print!("{}", report.render());
    0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub(crate) fn read_tree(dir: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (p, _) in hash_tree(dir).unwrap_or_default() {
            out.insert(p.clone(), std::fs::read_to_string(dir.join(&p)).unwrap());
        }
        out
    }

    /// Everything under root, as relative paths (dirs with a trailing /).
    pub(crate) fn listing(root: &Path) -> Vec<String> {
        let mut out = vec![];
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                if e.file_type().unwrap().is_dir() {
                    out.push(format!("{rel}/"));
                    stack.push(e.path());
                } else {
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    fn layout(root: &Path, stamp: &str) -> Layout {
        Layout::new(root, "hello", stamp).unwrap()
    }

    fn stage(root: &Path, stamp: &str, files: &[(&str, &str)]) {
        for (p, c) in files {
            write(root, &format!(".staging/hello.{stamp}/{p}"), c);
        }
    }

    #[test]
    fn first_install_then_hot_update() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        stage(
            root,
            "1",
            &[("plugin.yaml", "name: hello"), ("skills/a/SKILL.md", "v1")],
        );
        let p = prepare(&layout(root, "1"), false);
        assert_eq!(p.result, "prepared");
        assert_eq!(p.live, None);
        assert_eq!(p.staged.as_ref().unwrap().len(), 2);
        let s = swap(&layout(root, "1"), "abc", false);
        assert_eq!(s.result, "swapped", "{s:?}");
        assert_eq!(
            read_tree(&root.join("hello")),
            BTreeMap::from([
                (".complete".into(), "abc\n".into()),
                ("plugin.yaml".into(), "name: hello".into()),
                ("skills/a/SKILL.md".into(), "v1".into())
            ])
        );
        stage(
            root,
            "2",
            &[("plugin.yaml", "name: hello"), ("skills/a/SKILL.md", "v2")],
        );
        let p = prepare(&layout(root, "2"), false);
        assert!(p.complete);
        assert_eq!(
            crate::plugins::classify::classify(p.staged.as_ref().unwrap(), p.live.as_ref()),
            crate::plugins::classify::Change::Hot
        );
        assert_eq!(swap(&layout(root, "2"), "def", false).result, "swapped");
        assert_eq!(
            std::fs::read_to_string(root.join("hello/skills/a/SKILL.md")).unwrap(),
            "v2"
        );
        assert_eq!(
            listing(root),
            vec![
                ".previous/",
                ".staging/",
                "hello/",
                "hello/.complete",
                "hello/plugin.yaml",
                "hello/skills/",
                "hello/skills/a/",
                "hello/skills/a/SKILL.md"
            ]
        );
        // The protocol round-trips.
        assert_eq!(Report::parse(&p.render()), p);
    }

    #[test]
    fn snapshot_failure_leaves_live_untouched() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "hello/plugin.yaml", "old");
        write(root, "hello/.complete", "x\n");
        let before = read_tree(&root.join("hello"));
        // A regular file where the snapshot dir should be: mkdir fails.
        write(root, ".previous", "junk");
        stage(root, "1", &[("plugin.yaml", "new")]);
        let s = swap(&layout(root, "1"), "abc", false);
        assert_eq!(s.result, "snapshot_failed");
        assert_eq!(read_tree(&root.join("hello")), before);
        assert!(!root.join(".staging/hello.1").exists(), "staging removed");
    }

    #[test]
    fn swap_failure_restores_the_previous_version_exactly() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "hello/plugin.yaml", "old");
        write(root, "hello/hooks/h.sh", "old hook");
        write(root, "hello/.complete", "x\n");
        let before = read_tree(&root.join("hello"));
        stage(root, "1", &[("plugin.yaml", "new")]);
        // Armed failpoint: the rename fails after the snapshot.
        write(root, FAILPOINT_FILE, "swap");
        let s = swap(&layout(root, "1"), "abc", true);
        assert_eq!((s.result.as_str(), s.restored), ("swap_failed", Some(true)));
        assert_eq!(read_tree(&root.join("hello")), before);
        assert!(!root.join(".staging/hello.1").exists());
        assert!(stamped(&root.join(PREVIOUS), "hello").is_empty());
        // Without --failpoints the file is ignored.
        write(root, FAILPOINT_FILE, "swap");
        stage(root, "2", &[("plugin.yaml", "new")]);
        assert_eq!(swap(&layout(root, "2"), "abc", false).result, "swapped");
    }

    #[test]
    fn marker_failure_keeps_the_new_content() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "hello/plugin.yaml", "old");
        stage(root, "1", &[("plugin.yaml", "new")]);
        write(root, FAILPOINT_FILE, "marker");
        let s = swap(&layout(root, "1"), "abc", true);
        assert_eq!(s.result, "marker_failed");
        write(root, FAILPOINT_FILE, "off");
        assert_eq!(
            std::fs::read_to_string(root.join("hello/plugin.yaml")).unwrap(),
            "new"
        );
        assert!(!root.join("hello/.complete").exists());
        // The next install is not "unchanged" (no marker), and cleans the snapshot.
        stage(root, "2", &[("plugin.yaml", "new")]);
        let p = prepare(&layout(root, "2"), false);
        assert!(!p.complete);
        assert!(
            p.recovered
                .iter()
                .any(|r| r.starts_with("removed-previous")),
            "{:?}",
            p.recovered
        );
        assert_eq!(swap(&layout(root, "2"), "abc", false).result, "swapped");
        assert!(root.join("hello/.complete").exists());
    }

    #[test]
    fn crash_between_snapshot_and_swap_is_healed_by_the_next_prepare() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "hello/plugin.yaml", "old");
        write(root, "hello/.complete", "x\n");
        let before = read_tree(&root.join("hello"));
        stage(root, "1", &[("plugin.yaml", "new")]);
        let l = layout(root, "1");
        // The state a kill after the snapshot leaves: no live dir, a snapshot, a staging dir.
        std::fs::create_dir_all(root.join(PREVIOUS)).unwrap();
        std::fs::rename(l.live(), l.previous()).unwrap();
        stage(root, "2", &[("plugin.yaml", "new")]);
        let p = prepare(&layout(root, "2"), false);
        assert_eq!(read_tree(&root.join("hello")), before, "{:?}", p.recovered);
        assert!(p.complete);
        assert!(!root.join(".staging/hello.1").exists());
        assert!(
            root.join(".staging/hello.2").exists(),
            "the current stage is kept"
        );
        // Another plugin whose name extends ours is not touched.
        write(root, ".staging/hello.x.1/a", "x");
        recover(root, "hello", None);
        assert!(root.join(".staging/hello.x.1/a").exists());
    }

    #[test]
    fn uninstall_and_tombstones() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "hello/plugin.yaml", "old");
        write(root, ".staging/hello.5/plugin.yaml", "junk");
        let u = uninstall(&layout(root, "9"));
        assert_eq!(u.result, "uninstalled");
        assert_eq!(listing(root), vec![".previous/", ".staging/"]);
        // A tombstone file (left by an offline uninstall) is removed and never "restored".
        write(root, "hello", "");
        write(root, ".previous/hello.3/plugin.yaml", "old");
        recover(root, "hello", None);
        assert_eq!(listing(root), vec![".previous/", ".staging/"]);
    }

    #[test]
    fn stage_failure_and_cli() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        stage(root, "1", &[("plugin.yaml", "x")]);
        write(root, FAILPOINT_FILE, "stage");
        let p = prepare(&layout(root, "1"), true);
        assert_eq!(p.result, "stage_failed");
        assert!(!root.join(".staging/hello.1").exists());
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(main(&args(&["probe"])), 0);
        assert_eq!(
            main(&args(&["prepare", &root.to_string_lossy(), "../x", "1"])),
            2
        );
        assert_eq!(
            main(&args(&["prepare", &root.to_string_lossy(), "hello", "1.2"])),
            2
        );
        assert_eq!(
            main(&args(&["bogus", &root.to_string_lossy(), "hello", "1"])),
            2
        );
        assert_eq!(
            main(&args(&["inspect", &root.to_string_lossy(), "hello", "1"])),
            0
        );
        // Inspect heals a stage an install cut short left behind.
        write(root, ".staging/hello.5/plugin.yaml", "name: hello");
        let l = Layout::new(root, "hello", "6").unwrap();
        let r = inspect(&l);
        assert_eq!(r.recovered, vec!["removed-staging hello.5"]);
        assert!(!root.join(".staging/hello.5").exists());
    }

    #[test]
    fn protocol_parsing_is_conservative() {
        let r = Report::parse("staged zz a\nlive 00 b\nresult prepared\n");
        assert_eq!(r.staged, None, "a bad staged line makes staged unreadable");
        assert_eq!(r.live, None, "a bad live line makes live unreadable");
        let h = "a".repeat(64);
        let r = Report::parse(&format!(
            "staged {h} a/SKILL.md\nlive {h} ../x\nresult prepared\n"
        ));
        assert_eq!(r.staged.unwrap().len(), 1);
        assert_eq!(r.live, None);
        let r = Report::parse("live-missing\nresult prepared\n");
        assert_eq!((r.live, r.staged), (None, None));
        let r = Report::parse("live-empty\nresult inspected\n");
        assert_eq!(r.live, Some(BTreeMap::new()));
    }
}
