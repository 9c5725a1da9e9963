//! The org tree over a set of Workspace records: `spec.parentRef` names a parent in the same
//! namespace. Pure functions (children, descendants, ancestors) with cycle guards, so a
//! hand-made loop in the records can never hang a request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::ResourceExt;

use crate::resources::Workspace;

/// An index of live records by uid and by (namespace, name).
pub struct Tree {
    by_uid: HashMap<String, Arc<Workspace>>,
    by_name: HashMap<(String, String), String>,
    children: HashMap<String, Vec<String>>,
}

fn key(ws: &Workspace) -> (String, String) {
    (ws.namespace().unwrap_or_default(), ws.name_any())
}

impl Tree {
    pub fn new(items: impl IntoIterator<Item = Arc<Workspace>>) -> Self {
        let mut by_uid = HashMap::new();
        let mut by_name = HashMap::new();
        for w in items {
            let Some(uid) = w.uid() else { continue };
            by_name.insert(key(&w), uid.clone());
            by_uid.insert(uid, w);
        }
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for (uid, w) in &by_uid {
            if let Some(p) = parent_uid_in(&by_name, w) {
                children.entry(p).or_default().push(uid.clone());
            }
        }
        for c in children.values_mut() {
            c.sort();
        }
        Tree {
            by_uid,
            by_name,
            children,
        }
    }

    pub fn get(&self, uid: &str) -> Option<&Arc<Workspace>> {
        self.by_uid.get(uid)
    }

    /// The uid of the record `namespace/name`.
    pub fn uid_of(&self, namespace: &str, name: &str) -> Option<&str> {
        self.by_name
            .get(&(namespace.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// The uid of the parent record, when `parentRef` names a live one.
    pub fn parent_of(&self, ws: &Workspace) -> Option<String> {
        parent_uid_in(&self.by_name, ws)
    }

    /// Direct children that are not being deleted.
    pub fn children(&self, uid: &str) -> Vec<Arc<Workspace>> {
        self.children
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|c| self.by_uid.get(c))
            .filter(|w| w.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect()
    }

    /// Every descendant (any depth), parents before children, without `uid` itself.
    pub fn descendants(&self, uid: &str) -> Vec<Arc<Workspace>> {
        let mut out = vec![];
        let mut seen: HashSet<String> = HashSet::from([uid.to_string()]);
        let mut queue = vec![uid.to_string()];
        while let Some(u) = queue.pop() {
            for c in self.children.get(&u).into_iter().flatten() {
                if seen.insert(c.clone())
                    && let Some(w) = self.by_uid.get(c)
                {
                    out.push(w.clone());
                    queue.insert(0, c.clone());
                }
            }
        }
        out
    }

    /// A workspace's place in the org for the hierarchy rule (ADR 0038): its ancestors' uids,
    /// nearest first; a `parentRef` naming no live record ends the chain as `namespace/name`
    /// (never a uid), so an orphan is not taken for a root.
    pub fn member(&self, uid: &str) -> crate::teams::Member {
        let chain = self.ancestors(uid);
        let mut ids: Vec<String> = chain.iter().filter_map(|w| w.uid()).collect();
        let top = chain
            .last()
            .cloned()
            .or_else(|| self.by_uid.get(uid).cloned());
        if let Some(top) = top
            && let Some(p) = &top.spec.parent_ref
            && self.parent_of(&top).is_none()
        {
            ids.push(format!(
                "{}/{}",
                top.namespace().unwrap_or_default(),
                p.name
            ));
        }
        crate::teams::Member::new(uid, ids)
    }

    /// Whether workspace `a` may talk to (or read) workspace `b` (`crate::teams`); false when
    /// either is not a live record here.
    pub fn can_communicate(&self, a: &str, b: &str) -> bool {
        self.by_uid.contains_key(a)
            && self.by_uid.contains_key(b)
            && crate::teams::can_communicate(&self.member(a), &self.member(b))
    }

    /// Ancestors, nearest first (stops at a loop).
    pub fn ancestors(&self, uid: &str) -> Vec<Arc<Workspace>> {
        let mut out = vec![];
        let mut seen: HashSet<String> = HashSet::from([uid.to_string()]);
        let mut cur = self.by_uid.get(uid).cloned();
        while let Some(w) = cur {
            let Some(p) = self.parent_of(&w) else { break };
            if !seen.insert(p.clone()) {
                break;
            }
            cur = self.by_uid.get(&p).cloned();
            if let Some(pw) = &cur {
                out.push(pw.clone());
            }
        }
        out
    }
}

fn parent_uid_in(by_name: &HashMap<(String, String), String>, ws: &Workspace) -> Option<String> {
    let p = ws.spec.parent_ref.as_ref()?;
    by_name
        .get(&(ws.namespace().unwrap_or_default(), p.name.clone()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{LocalObjectReference, WorkspaceSpec};

    fn ws(name: &str, parent: Option<&str>) -> Arc<Workspace> {
        let mut w = Workspace::new(
            name,
            WorkspaceSpec {
                parent_ref: parent.map(|p| LocalObjectReference { name: p.into() }),
                ..Default::default()
            },
        );
        w.metadata.uid = Some(format!("u-{name}"));
        w.metadata.namespace = Some("ns".into());
        Arc::new(w)
    }

    fn names(v: &[Arc<Workspace>]) -> Vec<String> {
        v.iter().map(|w| w.name_any()).collect()
    }

    #[test]
    fn children_descendants_and_ancestors() {
        let t = Tree::new([
            ws("lead", None),
            ws("a", Some("lead")),
            ws("b", Some("lead")),
            ws("a1", Some("a")),
            ws("orphan", Some("gone")),
        ]);
        assert_eq!(names(&t.children("u-lead")), ["a", "b"]);
        assert_eq!(names(&t.descendants("u-lead")), ["a", "b", "a1"]);
        assert_eq!(names(&t.ancestors("u-a1")), ["a", "lead"]);
        assert!(t.ancestors("u-lead").is_empty());
        assert_eq!(t.parent_of(t.get("u-orphan").expect("o")), None);
        assert_eq!(t.uid_of("ns", "a"), Some("u-a"));
        assert_eq!(t.uid_of("other", "a"), None);
    }

    #[test]
    fn members_for_the_hierarchy_rule() {
        let t = Tree::new([
            ws("lead", None),
            ws("a", Some("lead")),
            ws("b", Some("lead")),
            ws("a1", Some("a")),
            ws("other", None),
            ws("orphan", Some("gone")),
        ]);
        assert_eq!(t.member("u-a1").ancestors, ["u-a", "u-lead"]);
        assert_eq!(t.member("u-orphan").ancestors, ["ns/gone"]);
        assert!(t.can_communicate("u-a", "u-b"));
        assert!(t.can_communicate("u-lead", "u-other"));
        assert!(t.can_communicate("u-a1", "u-lead"));
        assert!(!t.can_communicate("u-a1", "u-b"));
        assert!(!t.can_communicate("u-orphan", "u-lead"));
        assert!(
            !t.can_communicate("u-lead", "u-unknown"),
            "unknown is no root"
        );
    }

    #[test]
    fn loops_terminate() {
        let t = Tree::new([ws("x", Some("y")), ws("y", Some("x"))]);
        assert_eq!(names(&t.ancestors("u-x")), ["y"]);
        assert_eq!(names(&t.descendants("u-x")), ["y"]);
    }

    #[test]
    fn terminating_children_are_not_listed_as_children() {
        let mut gone = (*ws("a", Some("lead"))).clone();
        gone.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        let t = Tree::new([ws("lead", None), Arc::new(gone)]);
        assert!(t.children("u-lead").is_empty());
    }
}
