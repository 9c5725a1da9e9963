//! The hierarchy rule of the original platform (its `CanCommunicate`): a workspace may
//! talk to itself, its siblings (same parent; root-level workspaces are siblings of each
//! other), its parent and children, and any ancestor or descendant. Everything else — cousins,
//! a child of one root and another root's child, … — is denied. Pure, so it can be tested from
//! a table and reused wherever a caller meets a target (ADR 0038).

/// A workspace's place in the org: its id and its ancestors' ids, nearest first. A parent that
/// is named but not found is still an ancestor (by whatever id the caller gives it), so an
/// orphan is never mistaken for a root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub ancestors: Vec<String>,
}

impl Member {
    pub fn new(id: impl Into<String>, ancestors: Vec<String>) -> Self {
        Member {
            id: id.into(),
            ancestors,
        }
    }

    /// The parent's id; `None` for a root.
    pub fn parent(&self) -> Option<&str> {
        self.ancestors.first().map(String::as_str)
    }

    fn descends_from(&self, id: &str) -> bool {
        self.ancestors.iter().any(|a| a == id)
    }
}

/// Whether `a` may talk to (or read) `b`. Symmetric.
pub fn can_communicate(a: &Member, b: &Member) -> bool {
    a.id == b.id || a.parent() == b.parent() || a.descends_from(&b.id) || b.descends_from(&a.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The org of the table:
    ///
    /// ```text
    /// lead ─┬─ a ── a1 ── a11
    ///       └─ b ── b1
    /// other ── o1
    /// orphan (its parent "gone" is not found)
    /// ```
    fn org(id: &str) -> Member {
        let anc: &[&str] = match id {
            "lead" | "other" => &[],
            "a" | "b" => &["lead"],
            "a1" => &["a", "lead"],
            "a11" => &["a1", "a", "lead"],
            "b1" => &["b", "lead"],
            "o1" => &["other"],
            "orphan" => &["gone"],
            _ => panic!("not in the table: {id}"),
        };
        Member::new(id, anc.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn the_rule_as_a_table() {
        let table: &[(&str, &str, bool, &str)] = &[
            ("lead", "lead", true, "self"),
            ("a", "b", true, "siblings"),
            ("lead", "other", true, "roots are siblings"),
            ("lead", "a", true, "parent to child"),
            ("a", "lead", true, "child to parent"),
            ("lead", "a11", true, "ancestor to descendant"),
            ("a11", "lead", true, "descendant to ancestor"),
            ("a1", "b1", false, "cousins"),
            ("a1", "b", false, "a nephew and his uncle"),
            (
                "a",
                "o1",
                false,
                "a child of one root and another root's child",
            ),
            ("o1", "lead", false, "a child of one root and another root"),
            ("a", "a11", true, "grandparent to grandchild"),
            ("a11", "b", false, "a grand-nephew and his great-uncle"),
            ("a11", "b1", false, "second cousins"),
            ("o1", "a1", false, "cousins under different roots"),
            ("other", "a1", false, "a root and another root's grandchild"),
            ("orphan", "lead", false, "an orphan is no root"),
            ("orphan", "orphan", true, "an orphan is itself"),
        ];
        for (a, b, want, why) in table {
            assert_eq!(
                can_communicate(&org(a), &org(b)),
                *want,
                "{a} -> {b}: {why}"
            );
            assert_eq!(
                can_communicate(&org(b), &org(a)),
                *want,
                "{b} -> {a}: {why}"
            );
        }
    }

    #[test]
    fn parents_and_roots() {
        assert_eq!(org("a1").parent(), Some("a"));
        assert_eq!(org("lead").parent(), None);
        assert_eq!(Member::default().parent(), None);
    }
}
