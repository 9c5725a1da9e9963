//! The install steps of [`super::fs`] as a POSIX `sh` script, for runtime images that have a
//! shell but not the operator's binary. Same layout, same rollback rules, same line protocol
//! ([`super::fs::Report`]); it needs `sh`, `mv`, `rm`, `mkdir`, `find` and `sha256sum`
//! (coreutils or busybox). A missing tool makes the step fail cleanly (a hashing failure
//! classifies cold; a failed `mv` rolls back).
//!
//! Run as `sh -c SCRIPT molecule-plugin <op> <root> <name> <stamp> [sha]`: the arguments are
//! positional parameters, never spliced into the script text.

/// The script.
pub const SCRIPT: &str = r#"set -u
op=${1:-}; root=${2:-}; name=${3:-}; stamp=${4:-}; sha=${5:-}
case $name in ''|[!a-z0-9]*|*[!a-z0-9._-]*) echo "error invalid plugin name"; echo "result bad_usage"; exit 2;; esac
case $stamp in ''|*[!0-9a-z]*) echo "error invalid stamp"; echo "result bad_usage"; exit 2;; esac
live=$root/$name
stage=$root/.staging/$name.$stamp
prev=$root/.previous/$name.$stamp

recover() {
  for e in "$root/.staging/$name".*; do
    s=${e#"$root/.staging/$name."}
    case $s in ''|*[!0-9a-z]*) continue;; esac
    [ "$s" = "$1" ] && continue
    rm -rf "$e" && echo "recovered removed-staging $name.$s"
  done
  tomb=0
  if [ -L "$live" ] || { [ -e "$live" ] && [ ! -d "$live" ]; }; then
    rm -f "$live" && tomb=1 && echo "recovered removed-tombstone"
  fi
  newest=
  for e in "$root/.previous/$name".*; do
    s=${e#"$root/.previous/$name."}
    case $s in ''|*[!0-9a-z]*) continue;; esac
    newest=$e
  done
  if [ -n "$newest" ] && [ $tomb = 0 ] && [ ! -e "$live" ]; then
    mv "$newest" "$live" && echo "recovered restored-previous ${newest##*/}"
  fi
  for e in "$root/.previous/$name".*; do
    s=${e#"$root/.previous/$name."}
    case $s in ''|*[!0-9a-z]*) continue;; esac
    rm -rf "$e" && echo "recovered removed-previous $name.$s"
  done
}

hashdir() {
  out=$(cd "$2" && find . -type f -exec sha256sum {} +) || return 1
  if [ -z "$out" ]; then
    [ "$1" = live ] && echo "live-empty"
    return 0
  fi
  printf '%s\n' "$out" | while IFS= read -r line; do
    echo "$1 ${line%% *} ${line#*  ./}"
  done
}

hashlive() {
  if [ -d "$live" ] && [ ! -L "$live" ]; then
    hashdir live "$live" || echo "live-unreadable"
    [ -f "$live/.complete" ] && echo "complete"
  else
    echo "live-missing"
  fi
  return 0
}

case $op in
prepare)
  recover "$stamp"
  if [ -d "$stage" ] && staged=$(hashdir staged "$stage") && [ -n "$staged" ]; then
    printf '%s\n' "$staged"
    hashlive
    echo "result prepared"
  else
    rm -rf "$stage"
    hashlive
    echo "error the staged tree could not be read"
    echo "result stage_failed"
  fi
  ;;
swap)
  if [ ! -d "$stage" ]; then
    echo "error the staged tree is missing"; echo "result stage_failed"; exit 0
  fi
  snap=0
  if [ -e "$live" ] || [ -L "$live" ]; then
    if mkdir -p "$root/.previous" && mv "$live" "$prev"; then
      snap=1
    else
      rm -rf "$stage"
      echo "error snapshot of the live tree failed"; echo "result snapshot_failed"; exit 0
    fi
  fi
  if [ -e "$live" ] || ! mv "$stage" "$live"; then
    restored=yes
    if [ $snap = 1 ]; then
      if [ -e "$live" ] || ! mv "$prev" "$live"; then restored=no; fi
    fi
    rm -rf "$stage"
    echo "restored $restored"; echo "error the swap failed"; echo "result swap_failed"; exit 0
  fi
  if ! printf '%s\n' "$sha" > "$live/.complete"; then
    echo "molecule plugin: CONTENT INSTALLED BUT UNMARKED: $live has the new version but no .complete; loaders skip it until 'touch $live/.complete' or the next install" >&2
    echo "error the .complete marker could not be written"; echo "result marker_failed"; exit 0
  fi
  # Durable marker (ADR 0042): fsync it and the dirs it and the swap live in; plain `sync`
  # where `sync FILE` is not supported.
  sync "$live/.complete" "$live" "$root" 2>/dev/null || sync 2>/dev/null || true
  if [ $snap = 1 ]; then rm -rf "$prev"; fi
  echo "result swapped"
  ;;
discard)
  rm -rf "$stage"
  echo "result discarded"
  ;;
inspect)
  recover ""
  hashlive
  echo "result inspected"
  ;;
uninstall)
  recover ""
  if [ -e "$live" ] || [ -L "$live" ]; then
    if mkdir -p "$root/.previous" && mv "$live" "$prev"; then
      rm -rf "$prev"
    else
      echo "error the plugin could not be removed"; echo "result uninstall_failed"; exit 0
    fi
  fi
  echo "result uninstalled"
  ;;
*)
  echo "error unknown operation"; echo "result bad_usage"; exit 2
  ;;
esac
"#;

/// The exec argv running `op` through `sh`.
pub fn command(op: &str, root: &str, name: &str, stamp: &str, sha: &str) -> Vec<String> {
    [
        "sh",
        "-c",
        SCRIPT,
        "molecule-plugin",
        op,
        root,
        name,
        stamp,
        sha,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plugins::classify::{Change, classify};
    use crate::plugins::fs::Report;
    use crate::plugins::fs::tests::{listing, read_tree, write};

    /// Runs the script with the host's real `sh`.
    fn run(op: &str, root: &Path, stamp: &str, sha: &str) -> Report {
        let argv = command(op, &root.to_string_lossy(), "hello", stamp, sha);
        let o = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .expect("sh");
        Report::parse(&String::from_utf8_lossy(&o.stdout))
    }

    #[test]
    fn install_hot_update_and_uninstall_with_sh() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, ".staging/hello.1/plugin.yaml", "name: hello");
        write(root, ".staging/hello.1/skills/a/SKILL.md", "v1");
        let p = run("prepare", root, "1", "");
        assert_eq!(p.result, "prepared", "{p:?}");
        assert_eq!(p.live, None);
        // Same hashes as the Rust hasher.
        let rust = crate::plugins::fs::hash_tree(&root.join(".staging/hello.1")).unwrap();
        assert_eq!(p.staged.as_ref(), Some(&rust));
        assert_eq!(
            classify(p.staged.as_ref().unwrap(), p.live.as_ref()),
            Change::Cold
        );
        assert_eq!(run("swap", root, "1", "abc").result, "swapped");
        assert_eq!(read_tree(&root.join("hello"))[".complete"], "abc\n");

        write(root, ".staging/hello.2/plugin.yaml", "name: hello");
        write(
            root,
            ".staging/hello.2/skills/a/SKILL.md",
            "v2 with spaces in it",
        );
        let p = run("prepare", root, "2", "");
        assert!(p.complete);
        assert_eq!(
            classify(p.staged.as_ref().unwrap(), p.live.as_ref()),
            Change::Hot
        );
        assert_eq!(run("swap", root, "2", "def").result, "swapped");
        assert_eq!(
            std::fs::read_to_string(root.join("hello/skills/a/SKILL.md")).unwrap(),
            "v2 with spaces in it"
        );
        // A stage left by an install cut short (the container stopped before prepare ran) is
        // removed by the inspect a new container gets; live stays.
        write(root, ".staging/hello.7/plugin.yaml", "name: hello");
        let i = run("inspect", root, "3", "");
        assert_eq!(i.live.as_ref().map(|l| l.len()), Some(3));
        assert!(i.complete);
        assert_eq!(i.recovered, vec!["removed-staging hello.7"]);
        assert!(!root.join(".staging/hello.7").exists());
        assert_eq!(run("uninstall", root, "4", "").result, "uninstalled");
        assert_eq!(listing(root), vec![".previous/", ".staging/"]);
    }

    #[test]
    fn rollback_rules_with_sh() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "hello/plugin.yaml", "old");
        write(root, "hello/.complete", "x\n");
        let before = read_tree(&root.join("hello"));
        // Snapshot failure: .previous is a file, mkdir -p fails; live untouched.
        write(root, ".previous", "junk");
        write(root, ".staging/hello.1/plugin.yaml", "new");
        let s = run("swap", root, "1", "abc");
        assert_eq!(s.result, "snapshot_failed", "{s:?}");
        assert_eq!(read_tree(&root.join("hello")), before);
        assert!(!root.join(".staging/hello.1").exists());
        std::fs::remove_file(root.join(".previous")).unwrap();

        // Crash after the snapshot: the next prepare restores the previous version exactly.
        write(root, ".staging/hello.2/plugin.yaml", "new");
        std::fs::create_dir_all(root.join(".previous")).unwrap();
        std::fs::rename(root.join("hello"), root.join(".previous/hello.2")).unwrap();
        write(root, ".staging/hello.3/plugin.yaml", "new");
        let p = run("prepare", root, "3", "");
        assert_eq!(read_tree(&root.join("hello")), before, "{p:?}");
        assert!(!root.join(".staging/hello.2").exists());
        assert!(root.join(".staging/hello.3").exists());

        // Stage failure: a missing staging dir.
        let p = run("prepare", root, "9", "");
        assert_eq!(p.result, "stage_failed");
        assert_eq!(read_tree(&root.join("hello")), before);

        // Hostile arguments are refused by the script itself.
        let argv = command("uninstall", &root.to_string_lossy(), "../x", "1", "");
        let o = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(root.join("hello").exists());
    }
}
