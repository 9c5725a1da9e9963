//! Server-side apply (SSA) field ownership, in its smallest correct form.
//!
//! Ownership lives in the object itself, in `metadata.managedFields`, using the real
//! Kubernetes `FieldsV1` encoding so kubectl and kube-rs can read it. A field is a path of
//! map keys; scalars, lists (always atomic) and empty objects are leaves. `apiVersion`,
//! `kind` and everything under `metadata` except `labels`, `annotations`, `finalizers` and
//! `ownerReferences` are never tracked. [`apply`] performs a server-side apply (conflict
//! detection, forced takeover, removal of fields the manager stopped applying, merge) and
//! [`record_update`] records ownership for ordinary writes (create, PUT, patches).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

mod entries;
mod fields;

use entries::*;
use fields::*;
pub use fields::{fields_v1_from_paths, leaf_paths, path_string, paths_from_fields_v1};

/// A field: the map keys leading to it from the object root.
pub type FieldPath = Vec<String>;

/// The `metadata` keys whose content is tracked; everything else in `metadata` is not.
const TRACKED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];
const OP_APPLY: &str = "Apply";
const OP_UPDATE: &str = "Update";
const STATUS: &str = "status";

/// One field owned by another manager whose value the apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// The field, like `.spec.image`.
    pub field: String,
}

/// Result of a server-side apply.
#[derive(Debug)]
pub enum ApplyError {
    /// Fields owned by other managers with different values; message built by `conflict_message`.
    Conflicts(Vec<Conflict>),
    /// The applied config is not an object, or otherwise unusable.
    Invalid(String),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Conflicts(conflicts) => f.write_str(&conflict_message(conflicts)),
            ApplyError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Which part of the object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The main resource: everything except `status`.
    Main,
    /// The `status` subresource: only `status`.
    Status,
}

impl Scope {
    fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Main => None,
            Scope::Status => Some(STATUS),
        }
    }

    fn contains(self, path: &[String]) -> bool {
        let is_status = path.first().is_some_and(|s| s == STATUS);
        match self {
            Scope::Main => !is_status,
            Scope::Status => is_status,
        }
    }
}

/// The Kubernetes conflict message, e.g.
/// `Apply failed with 1 conflict: conflict with "kubectl": .spec.image`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {:?}: {}",
            c.manager, c.field
        );
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(&c.manager).or_default().push(&c.field);
    }
    let mut lines = Vec::new();
    for (manager, fields) in by_manager {
        lines.push(format!("conflicts with {manager:?}:"));
        lines.extend(fields.into_iter().map(|f| format!("- {f}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Server-side apply `applied` (the user's partial object) by `manager`.
///
/// `live` is the stored object (`None`: it does not exist yet). `scope` selects what the
/// apply may touch: [`Scope::Main`] everything but `status`, [`Scope::Status`] only
/// `status`. Returns the new full object with updated `metadata.managedFields`; other
/// server-managed metadata (resourceVersion, generation, uid, ...) is left alone.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    now: &str,
) -> Result<Value, ApplyError> {
    let Value::Object(applied_map) = applied else {
        return Err(ApplyError::Invalid(
            "the applied configuration must be a JSON object".into(),
        ));
    };
    if manager.is_empty() {
        return Err(ApplyError::Invalid(
            "a field manager is required for server-side apply".into(),
        ));
    }
    if applied_map
        .get("metadata")
        .is_some_and(|m| !m.is_object() && !m.is_null())
    {
        return Err(ApplyError::Invalid("metadata must be a JSON object".into()));
    }
    if live.is_some_and(|l| !l.is_object()) {
        return Err(ApplyError::Invalid(
            "the live object is not a JSON object".into(),
        ));
    }

    // 1. The applied configuration restricted to the scope, and its fields.
    let desired_obj = scoped(applied_map, scope);
    let desired = leaf_paths(&desired_obj);
    let subresource = scope.subresource();
    let mut entries = parse_entries(live.and_then(managed_fields_of));
    let own = entries
        .iter()
        .position(|e| e.is(manager, OP_APPLY, subresource));
    let live_root = live.unwrap_or(&Value::Null);

    // 2. Conflicts with other owners of fields whose value would change.
    let mut conflicts = Vec::new();
    let mut seen = BTreeSet::new();
    let mut takeovers: Vec<(usize, FieldPath)> = Vec::new();
    for p in &desired {
        let Some(value) = get_path(&desired_obj, p) else {
            continue;
        };
        if !would_change(get_path(live_root, p), value) {
            continue;
        }
        for (i, e) in entries.iter().enumerate() {
            if Some(i) == own {
                continue;
            }
            let owned: Vec<&FieldPath> = e.fields.iter().filter(|q| related(q, p)).collect();
            if owned.is_empty() {
                continue;
            }
            // A manager never conflicts with itself (e.g. its own earlier Update).
            if force || e.manager == manager {
                takeovers.extend(owned.into_iter().map(|q| (i, q.clone())));
            } else if seen.insert((e.manager.clone(), p.clone())) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: path_string(p),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    for (i, q) in takeovers {
        if let Some(e) = entries.get_mut(i) {
            e.remove_where(|f| *f == q);
        }
    }

    let mut result = match live {
        Some(l) => l.clone(),
        None => new_object_base(applied_map),
    };

    // 3. Remove fields this manager applied before, no longer applies, and nobody else owns.
    let previous = own
        .and_then(|i| entries.get(i))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for q in previous.difference(&desired) {
        if !is_tracked(q) || !scope.contains(q) {
            continue;
        }
        let owned_elsewhere = entries
            .iter()
            .enumerate()
            .any(|(i, e)| Some(i) != own && e.fields.iter().any(|o| o.starts_with(q)));
        if owned_elsewhere {
            continue;
        }
        let keep = |ancestor: &[String]| {
            is_protected(ancestor)
                || desired.iter().any(|d| d.as_slice() == ancestor)
                || entries
                    .iter()
                    .any(|e| e.fields.iter().any(|f| f.as_slice() == ancestor))
        };
        remove_path(&mut result, q, &keep);
    }

    // 4. Merge the applied configuration.
    merge_into(&mut result, &desired_obj);

    // 5. This manager's Apply entry owns exactly the applied fields.
    let api_version = api_version_of(applied)
        .or_else(|| api_version_of(&result))
        .map(str::to_owned);
    match own.and_then(|i| entries.get_mut(i)) {
        Some(e) => e.set_fields(desired, api_version.as_deref(), now),
        None if !desired.is_empty() => {
            let mut e = Entry::new(manager, OP_APPLY, subresource);
            e.set_fields(desired, api_version.as_deref(), now);
            entries.push(e);
        }
        None => {}
    }
    write_entries(&mut result, entries);
    Ok(result)
}

/// The object an apply creates from before merging the tracked fields: `apiVersion`,
/// `kind` and the untracked metadata (name, namespace, ...) of the applied configuration.
fn new_object_base(applied: &Map<String, Value>) -> Value {
    let mut base = Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = applied.get(key) {
            base.insert(key.into(), v.clone());
        }
    }
    let mut md = applied
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    md.remove("managedFields");
    for key in TRACKED_METADATA {
        md.remove(key);
    }
    base.insert("metadata".into(), Value::Object(md));
    Value::Object(base)
}

/// The managedFields a non-apply write starts from: like Kubernetes, a main-resource
/// write may set them explicitly (a non-empty list; `[{}]` clears them), otherwise the
/// stored ones are kept.
fn update_base_entries(old: Option<&Value>, new: &Value, scope: Scope) -> Vec<Entry> {
    if scope == Scope::Main
        && let Some(Value::Array(items)) = managed_fields_of(new)
    {
        if let [only] = items.as_slice()
            && only.as_object().is_some_and(Map::is_empty)
        {
            return Vec::new();
        }
        if !items.is_empty() {
            return parse_entries(managed_fields_of(new));
        }
    }
    parse_entries(old.and_then(managed_fields_of))
}

/// Record a non-apply write (create, PUT, merge/json patch) made by `manager` with
/// operation "Update": changed or added leaves move to this manager's Update entry (for
/// `scope`), vanished leaves are dropped from every entry, empty entries are dropped.
/// Writes the result into `new["metadata"]["managedFields"]`.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, scope: Scope, now: &str) {
    let manager = if manager.is_empty() {
        "unknown"
    } else {
        manager
    };
    if !new.is_object() {
        return;
    }
    let subresource = scope.subresource();
    let mut entries = update_base_entries(old, new, scope);
    let scoped_leaves = |v: &Value| -> BTreeSet<FieldPath> {
        leaf_paths(v)
            .into_iter()
            .filter(|p| scope.contains(p))
            .collect()
    };
    let new_leaves = scoped_leaves(new);
    let old_leaves = old.map(scoped_leaves).unwrap_or_default();
    let changed: BTreeSet<FieldPath> = new_leaves
        .iter()
        .filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p))
        .cloned()
        .collect();
    let gone: BTreeSet<FieldPath> = old_leaves.difference(&new_leaves).cloned().collect();

    let own = entries
        .iter()
        .position(|e| e.is(manager, OP_UPDATE, subresource));
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != own {
            e.remove_where(|q| gone.contains(q) || changed.iter().any(|p| q.starts_with(p)));
        }
    }
    let api_version = api_version_of(new).map(str::to_owned);
    match own.and_then(|i| entries.get_mut(i)) {
        Some(e) => {
            let mut fields: BTreeSet<FieldPath> = e.fields.difference(&gone).cloned().collect();
            fields.extend(changed);
            e.set_fields(fields, api_version.as_deref(), now);
        }
        None if !changed.is_empty() => {
            let mut e = Entry::new(manager, OP_UPDATE, subresource);
            e.set_fields(changed, api_version.as_deref(), now);
            entries.push(e);
        }
        None => {}
    }
    write_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T1: &str = "2026-11-23T09:10:00Z";
    const T2: &str = "2026-11-23T10:00:00Z";
    const T3: &str = "2026-11-23T11:00:00Z";

    fn path(s: &str) -> FieldPath {
        s.split('.').map(str::to_owned).collect()
    }

    fn paths(list: &[&str]) -> BTreeSet<FieldPath> {
        list.iter().map(|s| path(s)).collect()
    }

    fn entries(obj: &Value) -> Vec<Value> {
        obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The main-resource (no subresource) entry of `manager` with `operation`.
    fn entry_for(obj: &Value, manager: &str, operation: &str) -> Option<Value> {
        entries(obj).into_iter().find(|e| {
            e["manager"] == manager && e["operation"] == operation && e.get("subresource").is_none()
        })
    }

    fn owned(obj: &Value, manager: &str, operation: &str) -> BTreeSet<FieldPath> {
        entry_for(obj, manager, operation)
            .map(|e| paths_from_fields_v1(&e["fieldsV1"]))
            .unwrap_or_default()
    }

    fn config(spec: Value) -> Value {
        json!({
            "apiVersion": "molecule.ai/v1alpha1",
            "kind": "Team",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": spec,
        })
    }

    fn conflicts_of(r: Result<Value, ApplyError>) -> Vec<Conflict> {
        match r {
            Err(ApplyError::Conflicts(c)) => c,
            other => panic!("expected conflicts, got {other:?}"),
        }
    }

    #[test]
    fn apply_creates_with_exact_field_set() {
        let cfg = json!({
            "apiVersion": "molecule.ai/v1alpha1",
            "kind": "Team",
            "metadata": {
                "name": "t", "namespace": "ns", "uid": "u1", "resourceVersion": "5",
                "labels": {"team": "a"},
                "finalizers": ["x/y"],
            },
            "spec": {"image": "img:1", "env": [{"name": "A"}], "sel": {}},
        });
        let out = apply(None, &cfg, "kubectl", false, Scope::Main, T1).expect("apply");
        let e = entry_for(&out, "kubectl", "Apply").expect("entry");
        assert_eq!(e["apiVersion"], "molecule.ai/v1alpha1");
        assert_eq!(e["time"], T1);
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert!(e.get("subresource").is_none());
        assert_eq!(
            e["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {"f:team": {}}, "f:finalizers": {}},
                "f:spec": {"f:image": {}, "f:env": {}, "f:sel": {}},
            })
        );
        assert_eq!(
            paths_from_fields_v1(&e["fieldsV1"]),
            paths(&[
                "metadata.labels.team",
                "metadata.finalizers",
                "spec.image",
                "spec.env",
                "spec.sel"
            ])
        );
        // The object is the applied configuration plus managedFields.
        let mut expected = cfg.clone();
        expected["metadata"]["managedFields"] = json!([e]);
        assert_eq!(out, expected);
        assert_eq!(entries(&out).len(), 1);
    }

    #[test]
    fn leaf_paths_skip_untracked_metadata() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "n", "namespace": "ns", "uid": "u", "resourceVersion": "1",
                "generation": 2, "creationTimestamp": "x",
                "managedFields": [{"manager": "m"}],
                "labels": {"a": "1"}, "annotations": {"b": "2"},
                "finalizers": ["f"], "ownerReferences": [{"name": "o"}],
            },
            "data": {"k": "v", "n": null, "e": {}, "nested": {"x": 1}},
            "status": {"phase": "Ready"},
        });
        assert_eq!(
            leaf_paths(&obj),
            paths(&[
                "metadata.labels.a",
                "metadata.annotations.b",
                "metadata.finalizers",
                "metadata.ownerReferences",
                "data.k",
                "data.n",
                "data.e",
                "data.nested.x",
                "status.phase",
            ])
        );
        assert!(leaf_paths(&json!("scalar")).is_empty());
        assert!(leaf_paths(&json!({"metadata": {}})).is_empty());
    }

    #[test]
    fn reapply_same_content_is_identical() {
        let cfg = config(json!({"image": "img:1", "tier": "gold"}));
        let first = apply(None, &cfg, "kubectl", false, Scope::Main, T1).expect("create");
        let second = apply(Some(&first), &cfg, "kubectl", false, Scope::Main, T2).expect("re");
        assert_eq!(second, first);
        // A changed field set does bump the time.
        let cfg2 = config(json!({"image": "img:1"}));
        let third = apply(Some(&second), &cfg2, "kubectl", false, Scope::Main, T3).expect("3");
        assert_eq!(
            entry_for(&third, "kubectl", "Apply").expect("e")["time"],
            T3
        );
        // A changed value with the same field set keeps the time.
        let cfg3 = config(json!({"image": "img:2"}));
        let fourth = apply(Some(&third), &cfg3, "kubectl", false, Scope::Main, T1).expect("4");
        assert_eq!(fourth["spec"]["image"], "img:2");
        assert_eq!(
            entry_for(&fourth, "kubectl", "Apply").expect("e")["time"],
            T3
        );
    }

    #[test]
    fn dropping_a_field_removes_it_unless_co_owned() {
        let mut cfg = config(json!({"image": "img:1", "tier": "gold", "replicas": 2}));
        cfg["metadata"]["labels"] = json!({"team": "a"});
        let obj = apply(None, &cfg, "A", false, Scope::Main, T1).expect("create");
        // B co-owns spec.tier with the same value.
        let b_cfg = config(json!({"tier": "gold"}));
        let obj = apply(Some(&obj), &b_cfg, "B", false, Scope::Main, T1).expect("B");
        assert_eq!(owned(&obj, "B", "Apply"), paths(&["spec.tier"]));
        assert!(owned(&obj, "A", "Apply").contains(&path("spec.tier")));

        // A stops applying tier, replicas and the label.
        let a2 = config(json!({"image": "img:1"}));
        let obj = apply(Some(&obj), &a2, "A", false, Scope::Main, T2).expect("A2");
        assert_eq!(obj["spec"], json!({"image": "img:1", "tier": "gold"}));
        // The emptied labels map is removed, metadata is kept.
        assert!(obj["metadata"].get("labels").is_none());
        assert_eq!(obj["metadata"]["name"], "t");
        assert_eq!(owned(&obj, "A", "Apply"), paths(&["spec.image"]));
        assert_eq!(owned(&obj, "B", "Apply"), paths(&["spec.tier"]));

        // Dropping everything: spec itself stays.
        let b_empty = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Team", "metadata": {"name": "t"}});
        let obj = apply(Some(&obj), &b_empty, "B", false, Scope::Main, T2).expect("B2");
        let obj = apply(Some(&obj), &b_empty, "A", false, Scope::Main, T2).expect("A3");
        assert_eq!(obj["spec"], json!({}));
        assert!(obj["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn dropping_removes_emptied_nested_objects() {
        let cfg = config(json!({"image": "i", "resources": {"limits": {"cpu": "1"}}}));
        let obj = apply(None, &cfg, "A", false, Scope::Main, T1).expect("create");
        let obj = apply(
            Some(&obj),
            &config(json!({"image": "i"})),
            "A",
            false,
            Scope::Main,
            T2,
        )
        .expect("drop");
        assert_eq!(obj["spec"], json!({"image": "i"}));
    }

    #[test]
    fn conflicts_and_force() {
        let obj = apply(
            None,
            &config(json!({"image": "a"})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("A");
        let b = config(json!({"image": "b"}));
        let conflicts = conflicts_of(apply(Some(&obj), &b, "B", false, Scope::Main, T2));
        assert_eq!(
            conflicts,
            vec![Conflict {
                manager: "A".into(),
                field: ".spec.image".into()
            }]
        );
        assert_eq!(
            conflict_message(&conflicts),
            r#"Apply failed with 1 conflict: conflict with "A": .spec.image"#
        );
        let err = ApplyError::Conflicts(conflicts);
        assert_eq!(
            err.to_string(),
            r#"Apply failed with 1 conflict: conflict with "A": .spec.image"#
        );

        let forced = apply(Some(&obj), &b, "B", true, Scope::Main, T2).expect("force");
        assert_eq!(forced["spec"]["image"], "b");
        assert_eq!(owned(&forced, "B", "Apply"), paths(&["spec.image"]));
        // A owned nothing else, so its entry is dropped.
        assert!(entry_for(&forced, "A", "Apply").is_none());
        // A is now the one conflicting.
        let back = apply(
            Some(&forced),
            &config(json!({"image": "a"})),
            "A",
            false,
            Scope::Main,
            T3,
        );
        assert_eq!(
            conflicts_of(back),
            vec![Conflict {
                manager: "B".into(),
                field: ".spec.image".into()
            }]
        );
    }

    #[test]
    fn force_keeps_other_fields_of_the_loser() {
        let obj = apply(
            None,
            &config(json!({"image": "a", "tier": "t"})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("A");
        let forced = apply(
            Some(&obj),
            &config(json!({"image": "b"})),
            "B",
            true,
            Scope::Main,
            T2,
        )
        .expect("force");
        assert_eq!(owned(&forced, "A", "Apply"), paths(&["spec.tier"]));
        // Positions are stable: A first, B appended.
        let managers: Vec<Value> = entries(&forced)
            .iter()
            .map(|e| e["manager"].clone())
            .collect();
        assert_eq!(managers, vec![json!("A"), json!("B")]);
        // The loser's entry keeps its time; it was not the one writing.
        assert_eq!(entry_for(&forced, "A", "Apply").expect("A")["time"], T1);
    }

    #[test]
    fn equal_values_are_co_owned() {
        let obj = apply(
            None,
            &config(json!({"image": "a", "x": 1})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("A");
        let obj = apply(
            Some(&obj),
            &config(json!({"image": "a"})),
            "B",
            false,
            Scope::Main,
            T2,
        )
        .expect("B co-owns");
        assert!(owned(&obj, "A", "Apply").contains(&path("spec.image")));
        assert!(owned(&obj, "B", "Apply").contains(&path("spec.image")));
        // Now neither may change it alone.
        let c = conflicts_of(apply(
            Some(&obj),
            &config(json!({"image": "z", "x": 1})),
            "A",
            false,
            Scope::Main,
            T3,
        ));
        assert_eq!(
            c,
            vec![Conflict {
                manager: "B".into(),
                field: ".spec.image".into()
            }]
        );
    }

    #[test]
    fn multi_conflict_message_groups_by_manager() {
        let two = vec![
            Conflict {
                manager: "kubectl".into(),
                field: ".spec.image".into(),
            },
            Conflict {
                manager: "kubectl".into(),
                field: ".spec.tier".into(),
            },
        ];
        assert_eq!(
            conflict_message(&two),
            "Apply failed with 2 conflicts: conflicts with \"kubectl\":\n- .spec.image\n- .spec.tier"
        );
        let three = vec![
            Conflict {
                manager: "zeta".into(),
                field: ".spec.a".into(),
            },
            Conflict {
                manager: "alpha".into(),
                field: ".spec.b".into(),
            },
            Conflict {
                manager: "zeta".into(),
                field: ".spec.c".into(),
            },
        ];
        assert_eq!(
            conflict_message(&three),
            "Apply failed with 3 conflicts: conflicts with \"alpha\":\n- .spec.b\nconflicts with \"zeta\":\n- .spec.a\n- .spec.c"
        );
    }

    #[test]
    fn apply_reports_all_conflicts() {
        let obj = apply(
            None,
            &config(json!({"image": "a", "tier": "t"})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("A");
        let err = apply(
            Some(&obj),
            &config(json!({"image": "b", "tier": "u"})),
            "B",
            false,
            Scope::Main,
            T2,
        )
        .expect_err("conflicts");
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"A\":\n- .spec.image\n- .spec.tier"
        );
    }

    #[test]
    fn record_update_moves_ownership_then_apply_conflicts() {
        let obj = apply(
            None,
            &config(json!({"image": "a", "tier": "t"})),
            "op",
            false,
            Scope::Main,
            T1,
        )
        .expect("apply");
        // A merge patch changing spec.image.
        let mut patched = obj.clone();
        patched["spec"]["image"] = json!("p");
        record_update(Some(&obj), &mut patched, "kubectl-patch", Scope::Main, T2);
        assert_eq!(owned(&patched, "op", "Apply"), paths(&["spec.tier"]));
        let upd = entry_for(&patched, "kubectl-patch", "Update").expect("update entry");
        assert_eq!(
            paths_from_fields_v1(&upd["fieldsV1"]),
            paths(&["spec.image"])
        );
        assert_eq!(upd["time"], T2);
        assert_eq!(upd["apiVersion"], "molecule.ai/v1alpha1");
        // Original manager re-applies a different image: conflict with the patcher.
        let r = apply(
            Some(&patched),
            &config(json!({"image": "a", "tier": "t"})),
            "op",
            false,
            Scope::Main,
            T3,
        );
        let c = conflicts_of(r);
        assert_eq!(
            c,
            vec![Conflict {
                manager: "kubectl-patch".into(),
                field: ".spec.image".into()
            }]
        );
        // Re-applying the patched value is fine and co-owns it.
        let ok = apply(
            Some(&patched),
            &config(json!({"image": "p", "tier": "t"})),
            "op",
            false,
            Scope::Main,
            T3,
        )
        .expect("co-own");
        assert!(owned(&ok, "op", "Apply").contains(&path("spec.image")));
        assert!(owned(&ok, "kubectl-patch", "Update").contains(&path("spec.image")));
    }

    #[test]
    fn record_update_create_removal_and_noop() {
        let mut created = config(json!({"image": "a", "env": [1, 2]}));
        created["metadata"]["uid"] = json!("u");
        created["status"] = json!({"phase": "P"});
        record_update(None, &mut created, "", Scope::Main, T1);
        assert_eq!(
            owned(&created, "unknown", "Update"),
            paths(&["spec.image", "spec.env"])
        );
        // A no-op write changes nothing.
        let mut same = created.clone();
        record_update(Some(&created), &mut same, "other", Scope::Main, T2);
        assert_eq!(same, created);
        // A field that disappears is dropped from every entry.
        let mut removed = created.clone();
        if let Some(spec) = removed["spec"].as_object_mut() {
            spec.remove("env");
        }
        record_update(Some(&created), &mut removed, "other", Scope::Main, T2);
        assert_eq!(owned(&removed, "unknown", "Update"), paths(&["spec.image"]));
        assert!(entry_for(&removed, "other", "Update").is_none());
        // Removing the last field drops the entry and managedFields entirely.
        let mut bare = removed.clone();
        bare["spec"] = json!({});
        record_update(Some(&removed), &mut bare, "other", Scope::Main, T3);
        assert_eq!(owned(&bare, "other", "Update"), paths(&["spec"]));
        assert!(entry_for(&bare, "unknown", "Update").is_none());
    }

    #[test]
    fn record_update_respects_explicit_managed_fields() {
        let obj = apply(
            None,
            &config(json!({"image": "a"})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("apply");
        // Omitted managedFields: the stored ones are kept.
        let mut put = obj.clone();
        if let Some(md) = put["metadata"].as_object_mut() {
            md.remove("managedFields");
        }
        put["spec"]["tier"] = json!("x");
        record_update(Some(&obj), &mut put, "editor", Scope::Main, T2);
        assert_eq!(owned(&put, "A", "Apply"), paths(&["spec.image"]));
        assert_eq!(owned(&put, "editor", "Update"), paths(&["spec.tier"]));
        // `[{}]` clears them.
        let mut reset = put.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        record_update(Some(&put), &mut reset, "editor", Scope::Main, T3);
        assert_eq!(entries(&reset).len(), 0);
    }

    #[test]
    fn own_update_never_conflicts_with_own_apply() {
        let mut obj = config(json!({"image": "a"}));
        record_update(None, &mut obj, "kubectl", Scope::Main, T1);
        let out = apply(
            Some(&obj),
            &config(json!({"image": "b"})),
            "kubectl",
            false,
            Scope::Main,
            T2,
        )
        .expect("no self conflict");
        assert_eq!(out["spec"]["image"], "b");
        assert_eq!(owned(&out, "kubectl", "Apply"), paths(&["spec.image"]));
        assert!(entry_for(&out, "kubectl", "Update").is_none());
        // But another manager's Update does conflict.
        let mut obj2 = config(json!({"image": "a"}));
        record_update(None, &mut obj2, "ctrl", Scope::Main, T1);
        let c = conflicts_of(apply(
            Some(&obj2),
            &config(json!({"image": "b"})),
            "kubectl",
            false,
            Scope::Main,
            T2,
        ));
        assert_eq!(c[0].manager, "ctrl");
    }

    #[test]
    fn status_scope() {
        let mut cfg = config(json!({"image": "a"}));
        cfg["status"] = json!({"phase": "Pending"});
        let obj = apply(None, &cfg, "A", false, Scope::Main, T1).expect("main");
        // Main ignores status.
        assert!(obj.get("status").is_none());
        assert_eq!(owned(&obj, "A", "Apply"), paths(&["spec.image"]));

        let st = json!({
            "apiVersion": "molecule.ai/v1alpha1", "kind": "Team",
            "metadata": {"name": "t", "labels": {"ignored": "yes"}},
            "spec": {"image": "ignored"},
            "status": {"phase": "Ready", "ready": 3},
        });
        let out = apply(Some(&obj), &st, "ctrl", false, Scope::Status, T2).expect("status");
        assert_eq!(out["spec"], json!({"image": "a"}));
        assert!(out["metadata"].get("labels").is_none());
        assert_eq!(out["status"], json!({"phase": "Ready", "ready": 3}));
        let e = entries(&out)
            .into_iter()
            .find(|e| e["manager"] == "ctrl")
            .expect("ctrl entry");
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["operation"], "Apply");
        assert_eq!(
            paths_from_fields_v1(&e["fieldsV1"]),
            paths(&["status.phase", "status.ready"])
        );
        // A main apply by the same manager is a separate entry and leaves status alone.
        let main = apply(
            Some(&out),
            &config(json!({"tier": "t"})),
            "ctrl",
            false,
            Scope::Main,
            T3,
        )
        .expect("main by ctrl");
        assert_eq!(main["status"], out["status"]);
        assert_eq!(owned(&main, "ctrl", "Apply"), paths(&["spec.tier"]));
        assert_eq!(entries(&main).len(), 3);
        // Dropping a status field removes it; `status` itself stays.
        let st2 = json!({"apiVersion": "molecule.ai/v1alpha1", "kind": "Team", "metadata": {"name": "t"}});
        let cleared = apply(Some(&main), &st2, "ctrl", false, Scope::Status, T3).expect("clear");
        assert_eq!(cleared["status"], json!({}));
        assert_eq!(cleared["spec"], main["spec"]);
        // record_update with status scope.
        let mut upd = cleared.clone();
        upd["status"]["phase"] = json!("Done");
        upd["spec"]["image"] = json!("not-recorded");
        record_update(Some(&cleared), &mut upd, "kubelet", Scope::Status, T3);
        let e = entries(&upd)
            .into_iter()
            .find(|e| e["manager"] == "kubelet")
            .expect("kubelet");
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            paths_from_fields_v1(&e["fieldsV1"]),
            paths(&["status.phase"])
        );
    }

    #[test]
    fn lists_are_atomic() {
        let obj = apply(
            None,
            &config(json!({"env": [{"a": 1}, {"b": 2}]})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("A");
        assert_eq!(owned(&obj, "A", "Apply"), paths(&["spec.env"]));
        let forced = apply(
            Some(&obj),
            &config(json!({"env": [{"c": 3}]})),
            "B",
            false,
            Scope::Main,
            T2,
        );
        assert_eq!(conflicts_of(forced)[0].field, ".spec.env");
        let replaced = apply(
            Some(&obj),
            &config(json!({"env": [{"c": 3}]})),
            "A",
            false,
            Scope::Main,
            T2,
        )
        .expect("replace");
        assert_eq!(replaced["spec"]["env"], json!([{"c": 3}]));
    }

    #[test]
    fn shape_change_conflicts_with_prefix_owner() {
        let obj = apply(
            None,
            &config(json!({"env": ["x"]})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("A");
        let c = conflicts_of(apply(
            Some(&obj),
            &config(json!({"env": {"k": "v"}})),
            "B",
            false,
            Scope::Main,
            T2,
        ));
        assert_eq!(c[0].field, ".spec.env.k");
        // The reverse: B owns a nested field, A replaces the map with a scalar.
        let obj = apply(
            None,
            &config(json!({"res": {"cpu": "1"}})),
            "B",
            false,
            Scope::Main,
            T1,
        )
        .expect("B");
        let c = conflicts_of(apply(
            Some(&obj),
            &config(json!({"res": "none"})),
            "A",
            false,
            Scope::Main,
            T2,
        ));
        assert_eq!(c[0].field, ".spec.res");
        // An empty object does not change an existing map.
        let ok = apply(
            Some(&obj),
            &config(json!({"res": {}})),
            "A",
            false,
            Scope::Main,
            T2,
        )
        .expect("no change");
        assert_eq!(ok["spec"]["res"], json!({"cpu": "1"}));
    }

    #[test]
    fn null_removes_a_key() {
        let obj = apply(
            None,
            &config(json!({"image": "a", "tier": "t"})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("A");
        let out = apply(
            Some(&obj),
            &config(json!({"image": "a", "tier": null})),
            "A",
            false,
            Scope::Main,
            T2,
        )
        .expect("null");
        assert_eq!(out["spec"], json!({"image": "a"}));
        // Creating with a null does not store it.
        let created = apply(
            None,
            &config(json!({"image": "a", "gone": null})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("create");
        assert_eq!(created["spec"], json!({"image": "a"}));
    }

    #[test]
    fn fields_v1_round_trip_and_markers() {
        let set = paths(&[
            "metadata.labels.team",
            "metadata.annotations.a/b.c",
            "spec.image",
            "spec.env",
            "spec.deep.er.est",
            "status.phase",
        ]);
        let v1 = fields_v1_from_paths(&set);
        assert_eq!(paths_from_fields_v1(&v1), set);
        let real = json!({
            "f:metadata": {"f:labels": {".": {}, "f:team": {}}},
            "f:spec": {
                ".": {},
                "f:image": {},
                "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}}},
                "f:sel": {".": {}},
            },
        });
        assert_eq!(
            paths_from_fields_v1(&real),
            paths(&[
                "metadata.labels.team",
                "spec.image",
                "spec.containers",
                "spec.sel"
            ])
        );
        assert!(paths_from_fields_v1(&json!({})).is_empty());
    }

    #[test]
    fn untouched_entries_are_preserved_verbatim() {
        let mut obj = config(json!({"image": "a", "tier": "t"}));
        obj["metadata"]["managedFields"] = json!([{
            "manager": "kube-controller", "operation": "Update", "apiVersion": "v1",
            "time": "2020-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {".": {}, "f:tier": {}, "f:ports": {"k:{\"port\":80}": {}}}},
        }]);
        let original = obj["metadata"]["managedFields"][0].clone();
        let out = apply(
            Some(&obj),
            &config(json!({"image": "b"})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect("no overlap");
        assert_eq!(out["metadata"]["managedFields"][0], original);
        assert_eq!(owned(&out, "A", "Apply"), paths(&["spec.image"]));
    }

    #[test]
    fn invalid_inputs() {
        assert!(matches!(
            apply(None, &json!([1]), "A", false, Scope::Main, T1),
            Err(ApplyError::Invalid(_))
        ));
        assert!(matches!(
            apply(None, &config(json!({})), "", false, Scope::Main, T1),
            Err(ApplyError::Invalid(_))
        ));
        assert!(matches!(
            apply(None, &json!({"metadata": "x"}), "A", false, Scope::Main, T1),
            Err(ApplyError::Invalid(_))
        ));
        let err = apply(
            Some(&json!(3)),
            &config(json!({})),
            "A",
            false,
            Scope::Main,
            T1,
        )
        .expect_err("live not object");
        assert_eq!(err.to_string(), "the live object is not a JSON object");
    }

    #[test]
    fn apply_does_not_touch_server_metadata() {
        let mut live = config(json!({"image": "a"}));
        live["metadata"]["resourceVersion"] = json!("7");
        live["metadata"]["generation"] = json!(3);
        live["metadata"]["uid"] = json!("u");
        let mut cfg = config(json!({"image": "b"}));
        cfg["metadata"]["resourceVersion"] = json!("999");
        cfg["metadata"]["uid"] = json!("other");
        cfg["metadata"]["labels"] = json!({"x": "y"});
        let out = apply(Some(&live), &cfg, "A", false, Scope::Main, T1).expect("apply");
        assert_eq!(out["metadata"]["resourceVersion"], "7");
        assert_eq!(out["metadata"]["generation"], 3);
        assert_eq!(out["metadata"]["uid"], "u");
        assert_eq!(out["metadata"]["labels"], json!({"x": "y"}));
        assert_eq!(out["spec"]["image"], "b");
    }
}
