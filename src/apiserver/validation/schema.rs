//! The schema walk: schema accessors, pruning (the structural pass) and the value validation
//! pass.

use super::*;

pub(super) fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn types_of(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn is_int_or_string(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-int-or-string")
}

pub(super) fn preserves_unknown(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-preserve-unknown-fields")
        || flag(schema, "x-kubernetes-embedded-resource")
}

pub(super) fn branch_lists(schema: &Value) -> impl Iterator<Item = &Value> {
    ["allOf", "anyOf", "oneOf"]
        .into_iter()
        .filter_map(|k| schema.get(k).and_then(Value::as_array))
        .flatten()
}

/// A schema that only admits `null` (`{"type": "null"}` or `{"enum": [null]}`), as schemars emits for `Option`.
pub(super) fn is_null_only(schema: &Value) -> bool {
    let types = types_of(schema);
    if !types.is_empty() {
        return types.iter().all(|t| *t == "null");
    }
    matches!(schema.get("enum"), Some(Value::Array(e)) if !e.is_empty() && e.iter().all(Value::is_null))
}

pub(super) fn is_nullable(schema: &Value) -> bool {
    if flag(schema, "nullable") || types_of(schema).contains(&"null") {
        return true;
    }
    if matches!(schema.get("enum"), Some(Value::Array(e)) if e.iter().any(Value::is_null)) {
        return true;
    }
    ["anyOf", "oneOf"]
        .into_iter()
        .filter_map(|k| schema.get(k).and_then(Value::as_array))
        .flatten()
        .any(|b| is_null_only(b) || flag(b, "nullable"))
}

/// Whether a schema says anything about the shape of a value (otherwise it admits anything).
pub(super) fn declares_structure(schema: &Value) -> bool {
    !types_of(schema).is_empty()
        || schema.get("properties").is_some()
        || schema.get("additionalProperties").is_some()
        || schema.get("items").is_some()
        || preserves_unknown(schema)
        || is_int_or_string(schema)
}

pub(super) fn expects_object(schema: &Value) -> bool {
    types_of(schema).contains(&"object")
        || schema.get("properties").is_some()
        || schema.get("additionalProperties").is_some()
        || preserves_unknown(schema)
}

/// The schema plus all (transitively) nested allOf/anyOf/oneOf branches.
pub(super) fn flatten<'a>(schema: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(schema);
    for b in branch_lists(schema) {
        flatten(b, out);
    }
}

pub(super) const ROOT_IMPLICIT: [&str; 3] = ["apiVersion", "kind", "metadata"];

// ---------------------------------------------------------------------------
// Pruning (structural pass)
// ---------------------------------------------------------------------------

/// Removes unknown fields and non-nullable nulls. `schemas` is a union: a field is known if any declares it.
pub(super) fn prune(
    schemas: &[&Value],
    value: &mut Value,
    path: &str,
    root: bool,
    unknown: &mut Vec<String>,
) {
    let mut flat = Vec::new();
    for s in schemas {
        flatten(s, &mut flat);
    }
    if !flat.iter().any(|s| declares_structure(s)) {
        return; // anything goes
    }
    match value {
        Value::Object(map) if flat.iter().any(|s| expects_object(s)) => {
            prune_object(&flat, map, path, root, unknown);
        }
        Value::Array(items) => {
            let mut item_schemas: Vec<&Value> = Vec::new();
            let mut tuple_schemas: Vec<&Vec<Value>> = Vec::new();
            for s in &flat {
                match s.get("items") {
                    Some(Value::Array(tuple)) => tuple_schemas.push(tuple),
                    Some(single) => item_schemas.push(single),
                    None => {}
                }
            }
            if item_schemas.is_empty() && tuple_schemas.is_empty() {
                return;
            }
            for (i, item) in items.iter_mut().enumerate() {
                let mut these = item_schemas.clone();
                these.extend(tuple_schemas.iter().filter_map(|t| t.get(i)));
                if !these.is_empty() {
                    prune(&these, item, &index_path(path, i), false, unknown);
                }
            }
        }
        _ => {}
    }
}

pub(super) fn prune_object(
    flat: &[&Value],
    map: &mut Map<String, Value>,
    path: &str,
    root: bool,
    unknown: &mut Vec<String>,
) {
    let preserve = flat.iter().any(|s| preserves_unknown(s));
    let mut additional_any = false;
    let mut additional: Vec<&Value> = Vec::new();
    for s in flat {
        match s.get("additionalProperties") {
            Some(Value::Bool(true)) => additional_any = true,
            Some(schema @ Value::Object(_)) => additional.push(schema),
            _ => {}
        }
    }
    let mut drop: HashSet<String> = HashSet::new();
    for (key, child) in map.iter_mut() {
        if root && key == "metadata" {
            continue;
        }
        let declared: Vec<&Value> = flat
            .iter()
            .filter_map(|s| s.get("properties").and_then(|p| p.get(key.as_str())))
            .collect();
        let child_schemas = if !declared.is_empty() {
            declared
        } else if !additional.is_empty() {
            additional.clone()
        } else if additional_any || preserve || (root && ROOT_IMPLICIT.contains(&key.as_str())) {
            continue;
        } else {
            unknown.push(child_path(path, key));
            drop.insert(key.clone());
            continue;
        };
        if child.is_null() {
            if !child_schemas.iter().any(|s| is_nullable(s)) {
                drop.insert(key.clone());
            }
            continue;
        }
        prune(
            &child_schemas,
            child,
            &child_path(path, key),
            false,
            unknown,
        );
    }
    if !drop.is_empty() {
        map.retain(|k, _| !drop.contains(k));
    }
}

// ---------------------------------------------------------------------------
// Value validation pass
// ---------------------------------------------------------------------------

pub(super) fn check(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    if !schema.is_object() {
        return; // boolean schemas: treat as "anything"
    }
    if value.is_null() && is_nullable(schema) {
        return;
    }

    // Type.
    if is_int_or_string(schema) {
        let ok = value.is_string() || matches!(value, Value::Number(n) if is_integral(n));
        if !ok {
            out.push(type_error(path, value, "integer,string"));
            return;
        }
    } else {
        let types = types_of(schema);
        if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
            let shown: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
            let expected = if shown.is_empty() {
                "null".to_owned()
            } else {
                shown.join(",")
            };
            out.push(type_error(path, value, &expected));
            return;
        }
    }

    // Enum.
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.iter().any(|a| values_equal(a, value))
    {
        let list: Vec<String> = allowed
            .iter()
            .filter(|a| !a.is_null())
            .map(render)
            .collect();
        out.push(cause(
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                render(value),
                list.join(", ")
            ),
            REASON_NOT_SUPPORTED,
        ));
    }

    match value {
        Value::Number(n) => check_number(schema, n, value, path, out),
        Value::String(s) => check_string(schema, s, value, path, out),
        Value::Array(items) => check_array(schema, items, path, out),
        Value::Object(map) => check_object(schema, map, path, root, out),
        _ => {}
    }

    // Combinators.
    if let Some(Value::Array(all)) = schema.get("allOf") {
        for b in all {
            check(b, value, path, root, out);
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = schema.get(key) {
            check_any(branches, value, path, root, out);
        }
    }
}

/// Valid if at least one branch passes; otherwise reports the first branch's causes.
pub(super) fn check_any(
    branches: &[Value],
    value: &Value,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
) {
    let mut first: Option<Vec<Cause>> = None;
    for b in branches {
        let mut causes = Vec::new();
        check(b, value, path, root, &mut causes);
        if causes.is_empty() {
            return;
        }
        if first.is_none() {
            first = Some(causes);
        }
    }
    if let Some(causes) = first {
        out.extend(causes);
    }
}

pub(super) fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => matches!(v, Value::Number(n) if is_integral(n)),
        "number" => v.is_number(),
        "null" => v.is_null(),
        _ => true,
    }
}

pub(super) fn check_number(
    schema: &Value,
    n: &Number,
    value: &Value,
    path: &str,
    out: &mut Vec<Cause>,
) {
    let Some(x) = n.as_f64() else { return };
    let subj = subject(path);
    // Bool form (OpenAPI 3.0) or numeric form (JSON Schema 2019+).
    let bound = |key: &str, exclusive_key: &str| -> Option<(f64, String, bool)> {
        match (schema.get(key), schema.get(exclusive_key)) {
            (_, Some(Value::Number(e))) => e.as_f64().map(|f| (f, format_number(e), true)),
            (Some(Value::Number(b)), excl) => b.as_f64().map(|f| {
                (
                    f,
                    format_number(b),
                    excl.and_then(Value::as_bool).unwrap_or(false),
                )
            }),
            _ => None,
        }
    };
    if let Some((max, shown, exclusive)) = bound("maximum", "exclusiveMaximum") {
        if exclusive && x >= max {
            out.push(invalid_error(
                path,
                value,
                &format!("{subj} should be less than {shown}"),
            ));
        } else if !exclusive && x > max {
            out.push(invalid_error(
                path,
                value,
                &format!("{subj} should be less than or equal to {shown}"),
            ));
        }
    }
    if let Some((min, shown, exclusive)) = bound("minimum", "exclusiveMinimum") {
        if exclusive && x <= min {
            out.push(invalid_error(
                path,
                value,
                &format!("{subj} should be greater than {shown}"),
            ));
        } else if !exclusive && x < min {
            out.push(invalid_error(
                path,
                value,
                &format!("{subj} should be greater than or equal to {shown}"),
            ));
        }
    }
    if let Some(Value::Number(m)) = schema.get("multipleOf")
        && let Some(mf) = m.as_f64()
        && mf > 0.0
    {
        let q = x / mf;
        if (q - q.round()).abs() > 1e-9 {
            out.push(invalid_error(
                path,
                value,
                &format!("{subj} should be a multiple of {}", format_number(m)),
            ));
        }
    }
}

pub(super) fn schema_usize(schema: &Value, key: &str) -> Option<usize> {
    let n = schema.get(key)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        })
        .map(|u| usize::try_from(u).unwrap_or(usize::MAX))
}

pub(super) fn check_string(
    schema: &Value,
    s: &str,
    value: &Value,
    path: &str,
    out: &mut Vec<Cause>,
) {
    let subj = subject(path);
    let len = s.chars().count();
    if let Some(max) = schema_usize(schema, "maxLength")
        && len > max
    {
        out.push(cause(
            path,
            format!("Too long: may not be more than {max} bytes"),
            REASON_TOO_LONG,
        ));
    }
    if let Some(min) = schema_usize(schema, "minLength")
        && len < min
    {
        out.push(invalid_error(
            path,
            value,
            &format!("{subj} should be at least {min} chars long"),
        ));
    }
    if let Some(Value::String(pattern)) = schema.get("pattern")
        && pattern_matches(pattern, s) == Some(false)
    {
        out.push(invalid_error(
            path,
            value,
            &format!("{subj} should match '{pattern}'"),
        ));
    }
    if let Some(Value::String(format)) = schema.get("format") {
        let ok = match format.as_str() {
            "date-time" => DATE_TIME_RE.is_match(s),
            "date" => DATE_RE.is_match(s),
            "byte" => is_base64(s),
            _ => true,
        };
        if !ok {
            out.push(cause(
                path,
                format!(
                    "Invalid value: {}: {subj} must be of type {format}: {}",
                    render(value),
                    render(value)
                ),
                REASON_TYPE_INVALID,
            ));
        }
    }
}

/// Standard (padded) base64, as Go's `base64.StdEncoding.DecodeString` accepts it (CR/LF ignored).
pub(super) fn is_base64(s: &str) -> bool {
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'\r' && *b != b'\n').collect();
    if !bytes.len().is_multiple_of(4) {
        return false;
    }
    let data_len = bytes.iter().rposition(|b| *b != b'=').map_or(0, |p| p + 1);
    let padding = bytes.len() - data_len;
    if padding > 2 {
        return false;
    }
    bytes[..data_len]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

pub(super) fn check_array(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Cause>) {
    if let Some(max) = schema_usize(schema, "maxItems")
        && items.len() > max
    {
        out.push(cause(
            path,
            format!("Too many: {}: must have at most {max} items", items.len()),
            REASON_TOO_MANY,
        ));
    }
    if let Some(min) = schema_usize(schema, "minItems")
        && items.len() < min
    {
        out.push(invalid_error(
            path,
            &Value::from(items.len()),
            &format!("{} should have at least {min} items", subject(path)),
        ));
    }
    match schema.get("items") {
        Some(Value::Array(tuple)) => {
            for (i, (item, s)) in items.iter().zip(tuple).enumerate() {
                check(s, item, &index_path(path, i), false, out);
            }
        }
        Some(item_schema) => {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &index_path(path, i), false, out);
            }
        }
        None => {}
    }
}

pub(super) fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
) {
    let subj = subject(path);
    if let Some(max) = schema_usize(schema, "maxProperties")
        && map.len() > max
    {
        out.push(invalid_error(
            path,
            &Value::from(map.len()),
            &format!("{subj} should have at most {max} properties"),
        ));
    }
    if let Some(min) = schema_usize(schema, "minProperties")
        && map.len() < min
    {
        out.push(invalid_error(
            path,
            &Value::from(map.len()),
            &format!("{subj} should have at least {min} properties"),
        ));
    }
    if let Some(Value::Array(required)) = schema.get("required") {
        for key in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(key) {
                out.push(required_error(&child_path(path, key)));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        if root && key == "metadata" {
            continue;
        }
        let child_schema = properties.and_then(|p| p.get(key)).or(additional);
        if let Some(s) = child_schema {
            check(s, child, &child_path(path, key), false, out);
        }
    }
}
