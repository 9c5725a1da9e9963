//! The hot-reload classifier (ADR 0015): a pure function over the staged and live file-hash
//! maps deciding whether an install needs a workspace restart.
//!
//! Runtimes re-read `SKILL.md` on every skill invocation, so a change confined to `SKILL.md`
//! contents is *hot* (no restart). Hooks, settings and `plugin.yaml` load at session start, and
//! added or removed files need a fresh load: anything else is *cold*. A first install, or a live
//! tree that could not be read, is cold too (never hot-reload speculatively). The `.complete`
//! marker is bookkeeping, not content, and is ignored; symlinks never reach the maps (the
//! hashers skip them).

use std::collections::BTreeMap;

use super::MARKER;

/// How an install changes the live tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Same files, same contents: nothing to swap.
    Unchanged,
    /// Only `SKILL.md` contents changed: swap, no restart.
    Hot,
    /// Anything else: swap and restart.
    Cold,
}

/// Whether `path` is a `SKILL.md` (basename match, case-sensitive).
pub fn is_skill_markdown(path: &str) -> bool {
    path.rsplit('/').next() == Some("SKILL.md")
}

/// Classifies staged vs live. `live` is `None` when there is no live tree or it could not be
/// read.
pub fn classify(
    staged: &BTreeMap<String, String>,
    live: Option<&BTreeMap<String, String>>,
) -> Change {
    let Some(live) = live else {
        return Change::Cold;
    };
    let content = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter()
            .filter(|(p, _)| p.as_str() != MARKER)
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect()
    };
    let (s, l) = (content(staged), content(live));
    if s.len() != l.len() || s.iter().zip(&l).any(|((a, _), (b, _))| a != b) {
        return Change::Cold;
    }
    let mut change = Change::Unchanged;
    for ((path, a), (_, b)) in s.iter().zip(&l) {
        if a == b {
            continue;
        }
        if !is_skill_markdown(path) {
            return Change::Cold;
        }
        change = Change::Hot;
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(p, h)| (p.to_string(), h.to_string()))
            .collect()
    }

    #[test]
    fn first_install_and_unreadable_live_are_cold() {
        assert_eq!(classify(&m(&[("a", "1")]), None), Change::Cold);
    }

    #[test]
    fn identical_trees_are_unchanged_even_with_a_different_marker() {
        let staged = m(&[("plugin.yaml", "1"), ("skills/a/SKILL.md", "2")]);
        let live = m(&[
            ("plugin.yaml", "1"),
            ("skills/a/SKILL.md", "2"),
            (".complete", "x"),
        ]);
        assert_eq!(classify(&staged, Some(&live)), Change::Unchanged);
    }

    #[test]
    fn skill_markdown_only_is_hot() {
        let live = m(&[
            ("plugin.yaml", "1"),
            ("skills/a/SKILL.md", "2"),
            ("skills/b/SKILL.md", "3"),
        ]);
        let staged = m(&[
            ("plugin.yaml", "1"),
            ("skills/a/SKILL.md", "9"),
            ("skills/b/SKILL.md", "8"),
        ]);
        assert_eq!(classify(&staged, Some(&live)), Change::Hot);
    }

    #[test]
    fn anything_else_is_cold() {
        let live = m(&[
            ("plugin.yaml", "1"),
            ("skills/a/SKILL.md", "2"),
            ("hooks/h.sh", "3"),
        ]);
        // A hook changed.
        let s = m(&[
            ("plugin.yaml", "1"),
            ("skills/a/SKILL.md", "2"),
            ("hooks/h.sh", "4"),
        ]);
        assert_eq!(classify(&s, Some(&live)), Change::Cold);
        // plugin.yaml changed along with a skill.
        let s = m(&[
            ("plugin.yaml", "5"),
            ("skills/a/SKILL.md", "9"),
            ("hooks/h.sh", "3"),
        ]);
        assert_eq!(classify(&s, Some(&live)), Change::Cold);
        // A file added (even a SKILL.md).
        let s = m(&[
            ("plugin.yaml", "1"),
            ("skills/a/SKILL.md", "2"),
            ("skills/c/SKILL.md", "2"),
            ("hooks/h.sh", "3"),
        ]);
        assert_eq!(classify(&s, Some(&live)), Change::Cold);
        // A file removed.
        let s = m(&[("plugin.yaml", "1"), ("skills/a/SKILL.md", "2")]);
        assert_eq!(classify(&s, Some(&live)), Change::Cold);
        // A file renamed (same count).
        let s = m(&[
            ("plugin.yaml", "1"),
            ("skills/a/SKILL.md", "2"),
            ("hooks/g.sh", "3"),
        ]);
        assert_eq!(classify(&s, Some(&live)), Change::Cold);
        // skill.md (wrong case) and SKILL.md.bak are not SKILL.md.
        let live = m(&[("skills/a/skill.md", "1"), ("SKILL.md.bak", "1")]);
        let s = m(&[("skills/a/skill.md", "2"), ("SKILL.md.bak", "1")]);
        assert_eq!(classify(&s, Some(&live)), Change::Cold);
        let s = m(&[("skills/a/skill.md", "1"), ("SKILL.md.bak", "2")]);
        assert_eq!(classify(&s, Some(&live)), Change::Cold);
    }

    #[test]
    fn skill_markdown_basename() {
        assert!(is_skill_markdown("skills/x/SKILL.md"));
        assert!(is_skill_markdown("SKILL.md"));
        assert!(!is_skill_markdown("skills/x/SKILL.md/y"));
        assert!(!is_skill_markdown("skills/x/MYSKILL.md"));
    }
}
