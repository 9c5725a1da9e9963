//! `metadata` validation: the known keys, names, labels, annotations, finalizers and
//! ownerReferences.

use super::*;

pub(super) const METADATA_KEYS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Validates the root "metadata" object of `obj` (see the module docs). Unknown metadata keys and
/// `null` values are pruned; unknown keys are reported as "metadata.<key>".
pub fn validate_metadata(obj: &mut Value, name_rule: NameRule) -> Report {
    let mut report = Report::default();
    let Some(meta) = obj
        .as_object_mut()
        .and_then(|root| root.get_mut("metadata"))
    else {
        return report;
    };
    let meta = match meta {
        Value::Null => return report,
        Value::Object(m) => m,
        other => {
            report.invalid.push(type_error("metadata", other, "object"));
            return report;
        }
    };

    let mut drop: HashSet<String> = HashSet::new();
    for (key, value) in meta.iter_mut() {
        let path = child_path("metadata", key);
        if !METADATA_KEYS.contains(&key.as_str()) {
            report.unknown.push(path);
            drop.insert(key.clone());
            continue;
        }
        if value.is_null() {
            drop.insert(key.clone());
            continue;
        }
        let out = &mut report.invalid;
        match key.as_str() {
            "name" => match value {
                Value::String(name) if name.is_empty() => {}
                Value::String(name) => {
                    let errs = match name_rule {
                        NameRule::Subdomain => dns1123_subdomain_errors(name),
                        NameRule::Label => dns1123_label_errors(name),
                    };
                    for msg in errs {
                        out.push(invalid_error(&path, value, &msg));
                    }
                }
                other => out.push(type_error(&path, other, "string")),
            },
            "namespace" => match value {
                Value::String(ns) => {
                    if !ns.is_empty() {
                        for msg in dns1123_label_errors(ns) {
                            out.push(invalid_error(&path, value, &msg));
                        }
                    }
                }
                other => out.push(type_error(&path, other, "string")),
            },
            "creationTimestamp" | "deletionTimestamp" => match value {
                Value::String(ts) => {
                    if !DATE_TIME_RE.is_match(ts) {
                        out.push(cause(
                            &path,
                            format!(
                                "Invalid value: {}: {} must be of type date-time: {}",
                                render(value),
                                subject(&path),
                                render(value)
                            ),
                            REASON_TYPE_INVALID,
                        ));
                    }
                }
                other => out.push(type_error(&path, other, "string")),
            },
            "generateName" | "selfLink" | "uid" | "resourceVersion" if !value.is_string() => {
                out.push(type_error(&path, value, "string"));
            }
            "generation" | "deletionGracePeriodSeconds" if !matches!(value, Value::Number(n) if is_integral(n)) =>
            {
                out.push(type_error(&path, value, "integer"));
            }
            "labels" => validate_labels(value, &path, out),
            "annotations" => validate_annotations(value, &path, out),
            "finalizers" => validate_finalizers(value, &path, out),
            "ownerReferences" => validate_owner_references(value, &path, &mut report),
            "managedFields" => match value {
                Value::Array(entries) => {
                    for (i, e) in entries.iter().enumerate() {
                        if !e.is_object() {
                            out.push(type_error(&index_path(&path, i), e, "object"));
                        }
                    }
                }
                other => out.push(type_error(&path, other, "array")),
            },
            _ => {}
        }
    }
    if !drop.is_empty() {
        meta.retain(|k, _| !drop.contains(k));
    }
    report
}

/// Checks that `value` is a string→string map; returns it (or `None` after reporting a type error).
pub(super) fn string_map<'a>(
    value: &'a Value,
    path: &str,
    out: &mut Vec<Cause>,
) -> Option<Vec<(&'a str, &'a str)>> {
    let Value::Object(map) = value else {
        out.push(type_error(path, value, "object"));
        return None;
    };
    let mut entries = Vec::with_capacity(map.len());
    for (k, v) in map {
        match v {
            Value::String(s) => entries.push((k.as_str(), s.as_str())),
            other => out.push(type_error(&child_path(path, k), other, "string")),
        }
    }
    Some(entries)
}

pub(super) fn validate_labels(value: &Value, path: &str, out: &mut Vec<Cause>) {
    let Some(entries) = string_map(value, path, out) else {
        return;
    };
    for (k, v) in entries {
        for msg in qualified_name_errors(k) {
            out.push(invalid_error(path, &Value::from(k), &msg));
        }
        for msg in label_value_errors(v) {
            out.push(invalid_error(path, &Value::from(v), &msg));
        }
    }
}

pub(super) fn validate_annotations(value: &Value, path: &str, out: &mut Vec<Cause>) {
    let Some(entries) = string_map(value, path, out) else {
        return;
    };
    let mut total = 0usize;
    for (k, v) in entries {
        // Annotation keys are case-insensitive qualified names.
        for msg in qualified_name_errors(&k.to_lowercase()) {
            out.push(invalid_error(path, &Value::from(k), &msg));
        }
        total = total.saturating_add(k.len()).saturating_add(v.len());
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(cause(
            path,
            format!("Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
            REASON_TOO_LONG,
        ));
    }
}

pub(super) fn validate_finalizers(value: &Value, path: &str, out: &mut Vec<Cause>) {
    let Value::Array(items) = value else {
        out.push(type_error(path, value, "array"));
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let p = index_path(path, i);
        match item {
            Value::String(f) => {
                for msg in qualified_name_errors(f) {
                    out.push(invalid_error(&p, item, &msg));
                }
            }
            other => out.push(type_error(&p, other, "string")),
        }
    }
}

pub(super) fn validate_owner_references(value: &mut Value, path: &str, report: &mut Report) {
    let Value::Array(refs) = value else {
        report.invalid.push(type_error(path, value, "array"));
        return;
    };
    const KNOWN: [&str; 6] = [
        "apiVersion",
        "kind",
        "name",
        "uid",
        "controller",
        "blockOwnerDeletion",
    ];
    let mut controllers = Vec::new();
    for (i, r) in refs.iter_mut().enumerate() {
        let p = index_path(path, i);
        let Value::Object(m) = r else {
            report.invalid.push(type_error(&p, r, "object"));
            continue;
        };
        for k in m.keys() {
            if !KNOWN.contains(&k.as_str()) {
                report.unknown.push(child_path(&p, k));
            }
        }
        m.retain(|k, v| KNOWN.contains(&k.as_str()) && !v.is_null());

        for key in ["apiVersion", "kind", "name", "uid"] {
            let fp = child_path(&p, key);
            match m.get(key) {
                None => report.invalid.push(required_error(&fp)),
                Some(v @ Value::String(s)) => {
                    let problem = match key {
                        "apiVersion" => {
                            // Like schema.ParseGroupVersion: "v1", "group/v1"; more slashes are malformed.
                            let version = s.split_once('/').map_or(s.as_str(), |(_, v)| v);
                            if version.contains('/') {
                                Some("unexpected GroupVersion string")
                            } else if version.is_empty() {
                                Some("version must not be empty")
                            } else {
                                None
                            }
                        }
                        "kind" => s.is_empty().then_some("kind must not be empty"),
                        "name" => s.is_empty().then_some("name must not be empty"),
                        _ => s.is_empty().then_some("uid must not be empty"),
                    };
                    if let Some(msg) = problem {
                        report.invalid.push(invalid_error(&fp, v, msg));
                    }
                }
                Some(other) => report.invalid.push(type_error(&fp, other, "string")),
            }
        }
        for key in ["controller", "blockOwnerDeletion"] {
            match m.get(key) {
                None | Some(Value::Bool(_)) => {}
                Some(other) => {
                    report
                        .invalid
                        .push(type_error(&child_path(&p, key), other, "boolean"))
                }
            }
        }
        if m.get("controller") == Some(&Value::Bool(true)) {
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            let kind = m.get("kind").and_then(Value::as_str).unwrap_or_default();
            controllers.push(format!("{kind}/{name}"));
        }
    }
    if controllers.len() > 1 {
        report.invalid.push(cause(
            path,
            format!(
                "Invalid value: \"array\": Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
            REASON_INVALID,
        ));
    }
}
