//! Server-side printing: `meta.k8s.io/v1` Table output for `kubectl get`, with the printer
//! columns of each kind, a JSONPath subset for cells, and human durations for `date` cells.

use serde_json::{Value, json};

use super::registry::{Column, ResourceDef};

/// What each row's `object` holds (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// `kubectl`'s short human duration ("45s", "3m2s", "5h10m", "3d").
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// Age of an RFC 3339 timestamp relative to `now` (seconds since the epoch).
fn age(ts: &str, now: i64) -> Option<String> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    Some(human_duration(now - t.as_second()))
}

/// Evaluates a JSONPath subset: `.a.b`, `.a[0]`, `.a[*].b`, `.a[?(@.k=="v")].b`.
/// Returns every value reached.
pub fn jsonpath<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut current: Vec<&Value> = vec![root];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            current = current.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(close) = find_bracket_end(r) else {
                return vec![];
            };
            let inner = &r[..close];
            rest = &r[close + 1..];
            current = if inner == "*" {
                current
                    .into_iter()
                    .flat_map(|v| {
                        v.as_array()
                            .map(|a| a.iter().collect::<Vec<_>>())
                            .unwrap_or_default()
                    })
                    .collect()
            } else if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
            {
                let Some((lhs, rhs)) = filter.split_once("==") else {
                    return vec![];
                };
                let key = lhs.trim().trim_start_matches("@.");
                let want = rhs.trim().trim_matches('"').trim_matches('\'');
                current
                    .into_iter()
                    .flat_map(|v| {
                        v.as_array()
                            .map(|a| a.iter().collect::<Vec<_>>())
                            .unwrap_or_default()
                    })
                    .filter(
                        |item| match item.pointer(&format!("/{}", key.replace('.', "/"))) {
                            Some(Value::String(s)) => s == want,
                            Some(other) => serde_json::to_string(other).is_ok_and(|s| s == want),
                            None => false,
                        },
                    )
                    .collect()
            } else if let Ok(i) = inner.parse::<usize>() {
                current.into_iter().filter_map(|v| v.get(i)).collect()
            } else {
                let key = inner.trim_matches('\'').trim_matches('"');
                current.into_iter().filter_map(|v| v.get(key)).collect()
            };
        } else {
            return vec![];
        }
    }
    current
}

fn find_bracket_end(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ']') if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// The computed columns of Pods and Services, as kubectl prints them.
fn workload_cell(which: &str, obj: &Value) -> Value {
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    match which {
        "#podready" => {
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            json!(format!("{ready}/{total}"))
        }
        "#podstatus" => {
            let waiting = statuses.iter().find_map(|s| {
                s.pointer("/state/waiting/reason")
                    .or_else(|| s.pointer("/state/terminated/reason"))
                    .and_then(Value::as_str)
            });
            let status = if obj.pointer("/metadata/deletionTimestamp").is_some() {
                Some("Terminating")
            } else {
                obj.pointer("/status/reason")
                    .and_then(Value::as_str)
                    .or(waiting)
                    .or_else(|| obj.pointer("/status/phase").and_then(Value::as_str))
            };
            json!(status.unwrap_or("Pending"))
        }
        "#accessmodes" => {
            let modes: Vec<&str> = obj
                .pointer("/spec/accessModes")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect();
            json!(modes.join(","))
        }
        "#restarts" => json!(
            statuses
                .iter()
                .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
                .sum::<i64>()
        ),
        "#ports" => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(n) => format!("{port}:{n}/{proto}"),
                        None => format!("{port}/{proto}"),
                    }
                })
                .collect();
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            })
        }
        _ => {
            let sel: Vec<String> = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            json!(if sel.is_empty() {
                "<none>".to_string()
            } else {
                sel.join(",")
            })
        }
    }
}

fn cell(col: &Column, obj: &Value, now: i64) -> Value {
    match col.json_path.as_str() {
        "#datacount" => {
            return json!(
                obj.get("data")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0)
            );
        }
        "#podready" | "#podstatus" | "#restarts" | "#ports" | "#selector" | "#accessmodes" => {
            return workload_cell(&col.json_path, obj);
        }
        "#involved" => {
            let kind = obj
                .pointer("/involvedObject/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = obj
                .pointer("/involvedObject/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            return json!(format!("{}/{}", kind.to_lowercase(), name));
        }
        "#lastseen" => {
            let ts = [
                "/series/lastObservedTime",
                "/lastTimestamp",
                "/eventTime",
                "/firstTimestamp",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                obj.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            });
            return ts
                .and_then(|t| age(t, now))
                .map(Value::String)
                .unwrap_or(Value::Null);
        }
        _ => {}
    }
    let vals = jsonpath(obj, &col.json_path);
    if vals.is_empty() {
        return Value::Null;
    }
    match col.type_.as_str() {
        "date" => vals[0]
            .as_str()
            .and_then(|t| age(t, now))
            .map(Value::String)
            .unwrap_or(Value::Null),
        "integer" | "number" | "boolean" if vals.len() == 1 => vals[0].clone(),
        _ => {
            let parts: Vec<String> = vals
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            Value::String(parts.join(","))
        }
    }
}

/// The columns of a kind: `Name` first, then the printer columns (or `Age` when it has none).
pub fn column_definitions(def: &ResourceDef) -> Vec<Value> {
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace. Cannot be updated."
    })];
    for c in def.columns.iter().filter(|c| c.name != "Name") {
        let description = if c.description.is_empty() {
            format!(
                "Custom resource definition column (in JSONPath format): {}",
                c.json_path
            )
        } else {
            c.description.clone()
        };
        cols.push(json!({"name": c.name, "type": c.type_, "format": c.format, "description": description, "priority": c.priority}));
    }
    if def.columns.is_empty() {
        cols.push(json!({"name": "Age", "type": "date", "format": "", "priority": 0,
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created."}));
    }
    cols
}

/// One row for `obj` (served form).
pub fn row(def: &ResourceDef, obj: &Value, include: IncludeObject, now: i64) -> Value {
    let mut cells = vec![
        obj.pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
    ];
    if def.columns.is_empty() {
        cells.push(
            obj.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(|t| age(t, now))
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
    }
    for c in def.columns.iter().filter(|c| c.name != "Name") {
        cells.push(cell(c, obj, now));
    }
    let mut r = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => r["object"] = obj.clone(),
        IncludeObject::Metadata => r["object"] = partial_metadata(obj),
    }
    r
}

/// The `PartialObjectMetadata` of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// A whole Table. `with_columns` is false for the later events of a watch.
pub fn table(
    def: &ResourceDef,
    objs: &[&Value],
    include: IncludeObject,
    rv: &str,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let rows: Vec<Value> = objs.iter().map(|o| row(def, o, include, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": if with_columns { Value::Array(column_definitions(def)) } else { Value::Null },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        for (s, want) in [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (182, "3m2s"),
            (600, "10m"),
            (3 * 3600 + 600, "3h10m"),
            (9 * 3600, "9h"),
            (3 * 86400, "3d"),
            (3 * 86400 + 7200, "3d2h"),
            (400 * 86400, "400d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"phase": "Online", "conditions": [{"type": "Healthy", "status": "False"}, {"type": "Ready", "status": "True"}]}, "spec": {"tier": 2, "env": [{"name": "A"}, {"name": "B"}]}});
        assert_eq!(jsonpath(&o, ".status.phase"), vec![&json!("Online")]);
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![&json!("True")]
        );
        assert_eq!(jsonpath(&o, ".spec.env[*].name").len(), 2);
        assert_eq!(jsonpath(&o, ".spec.env[1].name"), vec![&json!("B")]);
        assert!(jsonpath(&o, ".spec.missing.deeper").is_empty());
    }

    #[test]
    fn workspace_table_has_name_columns_and_metadata_objects() {
        let reg = crate::apiserver::registry::Registry::new(&crate::resources::all_crds());
        let def = reg
            .find("molecule.ai", "v1alpha1", "workspaces")
            .expect("ws");
        let o = json!({"metadata": {"name": "alpha", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z", "labels": {"a": "b"}},
            "spec": {"runtime": "echo"}, "status": {"phase": "Online", "tier": 2}});
        let t = table(&def, &[&o], IncludeObject::Metadata, "7", true);
        let cols: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            &cols[..8],
            &[
                "Name", "Runtime", "Tier", "Phase", "Ready", "Reason", "Age", "Message"
            ]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "alpha");
        assert_eq!(cells[2], 2, "the effective tier, from status");
        assert_eq!(cells[3], "Online");
        assert_eq!(cells[4], Value::Null);
        assert!(cells[6].as_str().expect("age").ends_with('d'));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["labels"]["a"], "b");
    }
}
