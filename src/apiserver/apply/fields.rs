//! Field paths and their `fieldsV1` encoding, and the JSON operations apply performs on them
//! (lookup, merge, removal, scoping).

use super::*;

/// `.spec.image` for `["spec", "image"]`.
pub fn path_string(path: &[String]) -> String {
    path.iter().map(|s| format!(".{s}")).collect()
}

/// Whether a path can hold tracked fields at or below it.
pub(super) fn may_hold_tracked(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        None => true,
        Some("apiVersion" | "kind") => false,
        Some("metadata") => path
            .get(1)
            .is_none_or(|k| TRACKED_METADATA.contains(&k.as_str())),
        Some(_) => true,
    }
}

/// Whether a path is a field that is ever tracked.
pub(super) fn is_tracked(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        None => false,
        Some("metadata") => path.len() >= 2 && may_hold_tracked(path),
        Some(_) => may_hold_tracked(path),
    }
}

/// The leaf paths of `v` (respecting the untracked-path rules).
pub fn leaf_paths(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Value::Object(map) = v {
        let mut path = Vec::new();
        for (k, child) in map {
            path.push(k.clone());
            collect_leaves(child, &mut path, &mut out);
            path.pop();
        }
    }
    out
}

pub(super) fn collect_leaves(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    if !may_hold_tracked(path) {
        return;
    }
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                path.push(k.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        _ => {
            if is_tracked(path) {
                out.insert(path.clone());
            }
        }
    }
}

/// Encode a set of paths as a `fieldsV1` tree (`{"f:spec":{"f:image":{}}}`).
pub fn fields_v1_from_paths(paths: &BTreeSet<FieldPath>) -> Value {
    let slices: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
    Value::Object(build_fields_v1(&slices))
}

pub(super) fn build_fields_v1(paths: &[&[String]]) -> Map<String, Value> {
    let mut groups: BTreeMap<&str, Vec<&[String]>> = BTreeMap::new();
    for p in paths {
        if let Some((head, rest)) = p.split_first() {
            groups.entry(head.as_str()).or_default().push(rest);
        }
    }
    let mut out = Map::new();
    for (head, rests) in groups {
        let children: Vec<&[String]> = rests.into_iter().filter(|r| !r.is_empty()).collect();
        out.insert(
            format!("f:{head}"),
            Value::Object(build_fields_v1(&children)),
        );
    }
    out
}

/// Decode a `fieldsV1` tree into leaf paths. `.` markers and `k:`/`v:`/`i:` keys are
/// ignored; a node without `f:` children is a leaf.
pub fn paths_from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    parse_fields_v1(v, &mut Vec::new(), &mut out);
    out
}

pub(super) fn parse_fields_v1(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let mut has_child = false;
    if let Value::Object(map) = v {
        for (k, child) in map {
            if let Some(name) = k.strip_prefix("f:") {
                has_child = true;
                prefix.push(name.to_owned());
                parse_fields_v1(child, prefix, out);
                prefix.pop();
            }
        }
    }
    if !has_child && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
}

pub(super) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.as_object()?.get(k))
}

pub(super) fn get_path_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for k in path {
        cur = cur.as_object_mut()?.get_mut(k)?;
    }
    Some(cur)
}

/// One path is a prefix of the other (or they are equal).
pub(super) fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Whether merging the applied leaf value `applied` changes the live value at that path.
pub(super) fn would_change(live: Option<&Value>, applied: &Value) -> bool {
    match applied {
        Value::Null => live.is_some(),
        Value::Object(m) if m.is_empty() => !matches!(live, Some(Value::Object(_))),
        _ => live != Some(applied),
    }
}

/// JSON merge patch (RFC 7386): objects merge recursively, everything else replaces,
/// `null` removes the key.
pub(super) fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (k, pv) in patch_map {
            if pv.is_null() {
                target_map.remove(k);
            } else {
                merge_into(target_map.entry(k.clone()).or_insert(Value::Null), pv);
            }
        }
    }
}

/// Remove the value at `path`, then the parent objects this left empty, stopping at
/// any parent for which `keep` is true.
pub(super) fn remove_path(root: &mut Value, path: &[String], keep: &dyn Fn(&[String]) -> bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(parent) = get_path_mut(root, parents).and_then(Value::as_object_mut) else {
        return;
    };
    if parent.remove(last).is_none() {
        return;
    }
    for depth in (1..=parents.len()).rev() {
        let ancestor = &path[..depth];
        let empty = get_path(root, ancestor)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty);
        if keep(ancestor) || !empty {
            break;
        }
        if let Some((key, grand)) = ancestor.split_last()
            && let Some(m) = get_path_mut(root, grand).and_then(Value::as_object_mut)
        {
            m.remove(key);
        }
    }
}

/// `metadata`, `spec` and `status` themselves are never removed by apply.
pub(super) fn is_protected(path: &[String]) -> bool {
    matches!(path, [k] if k == "metadata" || k == "spec" || k == STATUS)
}

/// The part of an applied configuration that `scope` may touch, restricted to tracked keys.
pub(super) fn scoped(applied: &Map<String, Value>, scope: Scope) -> Value {
    let mut out = Map::new();
    for (k, v) in applied {
        match (scope, k.as_str()) {
            (_, "apiVersion" | "kind") => {}
            (Scope::Status, STATUS) => {
                out.insert(k.clone(), v.clone());
            }
            (Scope::Status, _) | (Scope::Main, STATUS) => {}
            (Scope::Main, "metadata") => {
                if let Value::Object(md) = v {
                    let tracked: Map<String, Value> = md
                        .iter()
                        .filter(|(mk, _)| TRACKED_METADATA.contains(&mk.as_str()))
                        .map(|(mk, mv)| (mk.clone(), mv.clone()))
                        .collect();
                    if !tracked.is_empty() {
                        out.insert(k.clone(), Value::Object(tracked));
                    }
                }
            }
            (Scope::Main, _) => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}
