//! Validation of custom resources against CRD-style structural OpenAPI v3 schemas.
//!
//! Mirrors what kube-apiserver does for custom resources: unknown fields are pruned
//! (and reported), non-nullable `null` values are dropped, and value validations
//! (type, enum, ranges, lengths, pattern, format, required, `anyOf`/`oneOf`/`allOf`)
//! produce Kubernetes-style field causes. Also validates `metadata` (names, labels,
//! annotations, finalizers, ownerReferences) with the apimachinery rules and messages.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex, PoisonError};

use regex::Regex;
use serde_json::{Map, Number, Value};

/// `field.ErrorTypeInvalid`.
pub const REASON_INVALID: &str = "FieldValueInvalid";
/// `field.ErrorTypeRequired`.
pub const REASON_REQUIRED: &str = "FieldValueRequired";
/// `field.ErrorTypeNotSupported` (enum violations).
pub const REASON_NOT_SUPPORTED: &str = "FieldValueNotSupported";
/// `field.ErrorTypeTypeInvalid` (type and format violations).
pub const REASON_TYPE_INVALID: &str = "FieldValueTypeInvalid";
/// `field.ErrorTypeTooLong` (maxLength, annotation size).
pub const REASON_TOO_LONG: &str = "FieldValueTooLong";
/// `field.ErrorTypeTooMany` (maxItems).
pub const REASON_TOO_MANY: &str = "FieldValueTooMany";

/// Maximum total size (keys + values, in bytes) of `metadata.annotations`.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// Maximum length of a DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// Maximum length of a DNS-1123 label.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Maximum length of the name part of a qualified name.
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
/// Maximum length of a label value.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;

/// One validation failure, shaped like a Kubernetes `StatusCause`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    pub field: String,
    pub message: String,
    /// One of the `REASON_*` constants.
    pub reason: &'static str,
}

/// Result of [`validate`] / [`validate_metadata`].
#[derive(Debug, Default)]
pub struct Report {
    /// Dotted paths of fields the schema does not know, like "spec.foo" or "spec.env[0].bogus" (no leading dot), in document order.
    pub unknown: Vec<String>,
    /// Type/format/range/enum/required violations.
    pub invalid: Vec<Cause>,
}

impl Report {
    /// True when there are no invalid causes (unknown fields do not make an object invalid).
    pub fn is_valid(&self) -> bool {
        self.invalid.is_empty()
    }

    /// Appends another report's findings to this one.
    pub fn merge(&mut self, other: Report) {
        self.unknown.extend(other.unknown);
        self.invalid.extend(other.invalid);
    }
}

/// Which name rule applies to `metadata.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
}

// ---------------------------------------------------------------------------
// Regexes
// ---------------------------------------------------------------------------

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";

const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn anchored(fmt: &str) -> Regex {
    Regex::new(&format!("^(?:{fmt})$")).expect("built-in regex must compile")
}

static DNS1123_LABEL_RE: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_LABEL_FMT));
static DNS1123_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_SUBDOMAIN_FMT));
static QUALIFIED_NAME_RE: LazyLock<Regex> = LazyLock::new(|| anchored(QUALIFIED_NAME_FMT));
static LABEL_VALUE_RE: LazyLock<Regex> = LazyLock::new(|| anchored(LABEL_VALUE_FMT));
/// Loose RFC 3339 / ISO 8601 date-time (what go-openapi strfmt accepts, roughly).
static DATE_TIME_RE: LazyLock<Regex> = LazyLock::new(|| {
    anchored(
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]+)?)?([Zz]|[+-][0-9]{2}:?[0-9]{2})?",
    )
});
static DATE_RE: LazyLock<Regex> = LazyLock::new(|| anchored("[0-9]{4}-[0-9]{2}-[0-9]{2}"));

/// Compiled schema `pattern`s; `None` caches a pattern that does not compile (it is ignored).
static PATTERN_CACHE: LazyLock<Mutex<HashMap<String, Option<Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
const PATTERN_CACHE_LIMIT: usize = 1024;

/// `Some(matches)` or `None` when the pattern is not a valid (Rust) regex.
fn pattern_matches(pattern: &str, s: &str) -> Option<bool> {
    let re = {
        let mut cache = PATTERN_CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(pattern) {
            Some(cached) => cached.clone(),
            None => {
                if cache.len() >= PATTERN_CACHE_LIMIT {
                    cache.clear();
                }
                let compiled = regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .ok();
                cache.insert(pattern.to_owned(), compiled.clone());
                compiled
            }
        }
    };
    re.map(|r| r.is_match(s))
}

// ---------------------------------------------------------------------------
// Name rules (k8s.io/apimachinery/pkg/util/validation)
// ---------------------------------------------------------------------------

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// apimachinery `RegexError`, including its quirky "',  or '" spacing.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, ex) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(ex);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

/// All DNS-1123 subdomain violations of `name` (empty = valid).
pub fn dns1123_subdomain_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !DNS1123_SUBDOMAIN_RE.is_match(name) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// All DNS-1123 label violations of `name` (empty = valid).
pub fn dns1123_label_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !DNS1123_LABEL_RE.is_match(name) {
        errs.push(regex_error(
            DNS1123_LABEL_ERR,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// All qualified-name violations (label keys, annotation keys, finalizers); empty = valid.
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let examples = ["MyName", "my.name", "123-abc"];
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &examples)
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !QUALIFIED_NAME_RE.is_match(name) {
        errs.push(format!(
            "name part {}",
            regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &examples)
        ));
    }
    errs
}

/// All label-value violations (empty = valid).
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !LABEL_VALUE_RE.is_match(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn join_errors(errs: Vec<String>) -> Option<String> {
    if errs.is_empty() {
        None
    } else {
        Some(errs.join("; "))
    }
}

/// `None` if `name` is a valid DNS-1123 subdomain, otherwise the Kubernetes message(s) joined by "; ".
pub fn validate_dns1123_subdomain(name: &str) -> Option<String> {
    join_errors(dns1123_subdomain_errors(name))
}

/// `None` if `name` is a valid DNS-1123 label, otherwise the Kubernetes message(s) joined by "; ".
pub fn validate_dns1123_label(name: &str) -> Option<String> {
    join_errors(dns1123_label_errors(name))
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// "spec.x in body", or just "body" at the root (go-openapi style).
fn subject(path: &str) -> String {
    if path.is_empty() {
        "body".to_owned()
    } else {
        format!("{path} in body")
    }
}

fn is_integral(n: &Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integral(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn format_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Some(f) => format!("{f}"),
        None => n.to_string(),
    }
}

/// Renders a value the way `field.Invalid` does: strings quoted, scalars bare, composites as JSON.
fn render(v: &Value) -> String {
    const MAX: usize = 256;
    let s = match v {
        Value::Number(n) => format_number(n),
        other => other.to_string(),
    };
    if s.len() <= MAX {
        return s;
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(fx), Some(fy)) => fx == fy,
            _ => x == y,
        },
        _ => a == b,
    }
}

fn cause(field: &str, message: String, reason: &'static str) -> Cause {
    Cause {
        field: field.to_owned(),
        message,
        reason,
    }
}

fn type_error(path: &str, value: &Value, expected: &str) -> Cause {
    let actual = json_type(value);
    cause(
        path,
        format!(
            "Invalid value: \"{actual}\": {} must be of type {expected}: \"{actual}\"",
            subject(path)
        ),
        REASON_TYPE_INVALID,
    )
}

fn required_error(path: &str) -> Cause {
    cause(path, "Required value".to_owned(), REASON_REQUIRED)
}

fn invalid_error(path: &str, value: &Value, detail: &str) -> Cause {
    cause(
        path,
        format!("Invalid value: {}: {detail}", render(value)),
        REASON_INVALID,
    )
}

// ---------------------------------------------------------------------------
// Schema accessors
// ---------------------------------------------------------------------------

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn types_of(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn is_int_or_string(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-int-or-string")
}

fn preserves_unknown(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-preserve-unknown-fields")
        || flag(schema, "x-kubernetes-embedded-resource")
}

fn branch_lists(schema: &Value) -> impl Iterator<Item = &Value> {
    ["allOf", "anyOf", "oneOf"]
        .into_iter()
        .filter_map(|k| schema.get(k).and_then(Value::as_array))
        .flatten()
}

/// A schema that only admits `null` (`{"type": "null"}` or `{"enum": [null]}`), as schemars emits for `Option`.
fn is_null_only(schema: &Value) -> bool {
    let types = types_of(schema);
    if !types.is_empty() {
        return types.iter().all(|t| *t == "null");
    }
    matches!(schema.get("enum"), Some(Value::Array(e)) if !e.is_empty() && e.iter().all(Value::is_null))
}

fn is_nullable(schema: &Value) -> bool {
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
fn declares_structure(schema: &Value) -> bool {
    !types_of(schema).is_empty()
        || schema.get("properties").is_some()
        || schema.get("additionalProperties").is_some()
        || schema.get("items").is_some()
        || preserves_unknown(schema)
        || is_int_or_string(schema)
}

fn expects_object(schema: &Value) -> bool {
    types_of(schema).contains(&"object")
        || schema.get("properties").is_some()
        || schema.get("additionalProperties").is_some()
        || preserves_unknown(schema)
}

/// The schema plus all (transitively) nested allOf/anyOf/oneOf branches.
fn flatten<'a>(schema: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(schema);
    for b in branch_lists(schema) {
        flatten(b, out);
    }
}

const ROOT_IMPLICIT: [&str; 3] = ["apiVersion", "kind", "metadata"];

// ---------------------------------------------------------------------------
// Pruning (structural pass)
// ---------------------------------------------------------------------------

/// Removes unknown fields and non-nullable nulls. `schemas` is a union: a field is known if any declares it.
fn prune(schemas: &[&Value], value: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
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

fn prune_object(
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

fn check(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
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
fn check_any(branches: &[Value], value: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
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

fn type_matches(t: &str, v: &Value) -> bool {
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

fn check_number(schema: &Value, n: &Number, value: &Value, path: &str, out: &mut Vec<Cause>) {
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

fn schema_usize(schema: &Value, key: &str) -> Option<usize> {
    let n = schema.get(key)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        })
        .map(|u| usize::try_from(u).unwrap_or(usize::MAX))
}

fn check_string(schema: &Value, s: &str, value: &Value, path: &str, out: &mut Vec<Cause>) {
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
fn is_base64(s: &str) -> bool {
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

fn check_array(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Cause>) {
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

fn check_object(
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

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

/// Walks `obj` against `schema`. Removes unknown fields from `obj` in place (pruning, like the real server) and reports them.
/// Fields "apiVersion", "kind", "metadata" at the root are never reported as unknown even if the schema omits them
/// (metadata is validated separately by [`validate_metadata`]). Does not descend into root "metadata".
pub fn validate(schema: &Value, obj: &mut Value) -> Report {
    let mut report = Report::default();
    prune(&[schema], obj, "", true, &mut report.unknown);
    check(schema, obj, "", true, &mut report.invalid);
    report
}

const METADATA_KEYS: [&str; 15] = [
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
fn string_map<'a>(
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

fn validate_labels(value: &Value, path: &str, out: &mut Vec<Cause>) {
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

fn validate_annotations(value: &Value, path: &str, out: &mut Vec<Cause>) {
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

fn validate_finalizers(value: &Value, path: &str, out: &mut Vec<Cause>) {
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

fn validate_owner_references(value: &mut Value, path: &str, report: &mut Report) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Shaped like kube-derive + schemars 1 output for:
    /// ```ignore
    /// struct AgentSpec {
    ///     image: Option<String>,
    ///     #[schemars(range(min = 1, max = 4))] tier: Option<i32>,
    ///     #[serde(default)] env: Vec<EnvVar>,            // EnvVar { name: String, value: Option<String> }
    ///     #[serde(default)] files: BTreeMap<String, String>,
    ///     runtime: Runtime,                              // enum Runtime { Docker, ControlPlane } (camelCase)
    ///     resources: Option<Resources>,                  // { cpu: Option<IntOrString>, memory: Option<String> }
    ///     secret_data: Option<ByteString>,
    /// }
    /// struct AgentStatus { phase: Option<String>, started_at: Option<Time>, agent_card: Option<serde_json::Value> }
    /// ```
    fn agent_schema() -> Value {
        json!({
            "description": "Auto-generated derived type for AgentSpec via `CustomResource`",
            "properties": {
                "spec": {
                    "properties": {
                        "image": { "nullable": true, "type": "string" },
                        "tier": {
                            "format": "int32",
                            "maximum": 4.0,
                            "minimum": 1.0,
                            "nullable": true,
                            "type": "integer"
                        },
                        "env": {
                            "default": [],
                            "items": {
                                "properties": {
                                    "name": { "type": "string" },
                                    "value": { "nullable": true, "type": "string" }
                                },
                                "required": ["name"],
                                "type": "object"
                            },
                            "type": "array"
                        },
                        "files": {
                            "additionalProperties": { "type": "string" },
                            "default": {},
                            "type": "object"
                        },
                        "runtime": {
                            "description": "Where the agent runs.",
                            "enum": ["docker", "controlPlane"],
                            "type": "string"
                        },
                        "resources": {
                            "nullable": true,
                            "properties": {
                                "cpu": { "nullable": true, "x-kubernetes-int-or-string": true },
                                "memory": { "nullable": true, "pattern": "^[0-9]+(Mi|Gi)$", "type": "string" }
                            },
                            "type": "object"
                        },
                        "secretData": { "format": "byte", "nullable": true, "type": "string" }
                    },
                    "required": ["runtime"],
                    "type": "object"
                },
                "status": {
                    "nullable": true,
                    "properties": {
                        "phase": { "nullable": true, "type": "string" },
                        "startedAt": { "format": "date-time", "nullable": true, "type": "string" },
                        "agentCard": {
                            "nullable": true,
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true
                        }
                    },
                    "type": "object"
                }
            },
            "required": ["spec"],
            "title": "Agent",
            "type": "object"
        })
    }

    fn valid_agent() -> Value {
        json!({
            "apiVersion": "molecule.dev/v1alpha1",
            "kind": "Agent",
            "metadata": { "name": "writer", "namespace": "default", "labels": { "team": "docs" } },
            "spec": {
                "image": "ghcr.io/acme/agent:1.2",
                "tier": 2,
                "env": [ { "name": "A", "value": "1" }, { "name": "B" } ],
                "files": { "prompt.md": "hello", "config.yaml": "x: 1" },
                "runtime": "controlPlane",
                "resources": { "cpu": "500m", "memory": "512Mi" },
                "secretData": "aGVsbG8gd29ybGQ="
            },
            "status": {
                "phase": "Running",
                "startedAt": "2024-05-01T12:00:00Z",
                "agentCard": { "skills": [ { "id": "x", "anything": { "deep": true } } ], "version": 3 }
            }
        })
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    fn fields(report: &Report) -> Vec<&str> {
        report.invalid.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn valid_object_passes_unchanged() {
        let mut obj = valid_agent();
        let before = obj.clone();
        let report = validate(&agent_schema(), &mut obj);
        assert!(report.unknown.is_empty(), "{:?}", report.unknown);
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        assert!(report.is_valid());
        assert_eq!(obj, before);
    }

    #[test]
    fn root_implicit_fields_never_unknown_and_metadata_untouched() {
        let schema = json!({ "type": "object", "properties": { "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } });
        let mut obj = json!({
            "apiVersion": "v1", "kind": "Thing",
            "metadata": { "name": "UPPER", "bogus": 1 },
            "spec": { "a": 1 },
            "extra": true
        });
        let report = validate(&schema, &mut obj);
        assert_eq!(report.unknown, vec!["extra"]);
        assert!(report.invalid.is_empty());
        // metadata is neither pruned nor validated here.
        assert_eq!(obj["metadata"], json!({ "name": "UPPER", "bogus": 1 }));
        assert_eq!(obj["apiVersion"], "v1");
        assert!(obj.get("extra").is_none());
    }

    #[test]
    fn unknown_fields_reported_and_pruned_at_several_depths() {
        let mut obj = valid_agent();
        obj["spec"]["foo"] = json!("bar");
        obj["spec"]["env"][0]["bogus"] = json!({ "nested": 1 });
        obj["spec"]["resources"]["gpu"] = json!(1);
        obj["status"]["extra"] = json!([1, 2]);
        obj["status"]["agentCard"]["kept"] = json!({ "free": "form" });
        obj["topLevel"] = json!(1);
        let report = validate(&agent_schema(), &mut obj);
        assert_eq!(
            sorted(report.unknown.clone()),
            vec![
                "spec.env[0].bogus",
                "spec.foo",
                "spec.resources.gpu",
                "status.extra",
                "topLevel"
            ]
        );
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        assert!(obj["spec"].get("foo").is_none());
        assert!(obj["spec"]["env"][0].get("bogus").is_none());
        assert_eq!(obj["spec"]["env"][0], json!({ "name": "A", "value": "1" }));
        assert!(obj["spec"]["resources"].get("gpu").is_none());
        assert!(obj["status"].get("extra").is_none());
        assert!(obj.get("topLevel").is_none());
        // preserve-unknown subtree is kept as-is
        assert_eq!(
            obj["status"]["agentCard"]["kept"],
            json!({ "free": "form" })
        );
        // after pruning the object equals the valid one plus the preserved field
        let mut expected = valid_agent();
        expected["status"]["agentCard"]["kept"] = json!({ "free": "form" });
        assert_eq!(obj, expected);
    }

    #[test]
    fn unknown_fields_in_document_order_within_one_object() {
        let schema = json!({ "type": "object", "properties": { "spec": { "type": "object", "properties": {
            "list": { "type": "array", "items": { "type": "object", "properties": { "a": { "type": "string" } } } }
        } } } });
        let mut obj = json!({ "spec": { "list": [ { "a": "x", "b": 1 }, { "c": 2 } ] } });
        let report = validate(&schema, &mut obj);
        assert_eq!(report.unknown, vec!["spec.list[0].b", "spec.list[1].c"]);
        assert_eq!(obj, json!({ "spec": { "list": [ { "a": "x" }, {} ] } }));
    }

    #[test]
    fn wrong_types_have_kubernetes_messages() {
        let mut obj = valid_agent();
        obj["spec"]["tier"] = json!("string");
        obj["spec"]["env"] = json!({ "name": "A" });
        obj["spec"]["files"]["k"] = json!(5);
        obj["spec"]["image"] = json!(true);
        let report = validate(&agent_schema(), &mut obj);
        let tier = report
            .invalid
            .iter()
            .find(|c| c.field == "spec.tier")
            .cloned();
        assert_eq!(
            tier,
            Some(Cause {
                field: "spec.tier".into(),
                message: "Invalid value: \"string\": spec.tier in body must be of type integer: \"string\"".into(),
                reason: REASON_TYPE_INVALID,
            })
        );
        let msg = |f: &str| {
            report
                .invalid
                .iter()
                .find(|c| c.field == f)
                .map(|c| c.message.clone())
        };
        assert_eq!(
            msg("spec.env").as_deref(),
            Some("Invalid value: \"object\": spec.env in body must be of type array: \"object\"")
        );
        assert_eq!(
            msg("spec.files.k").as_deref(),
            Some(
                "Invalid value: \"integer\": spec.files.k in body must be of type string: \"integer\""
            )
        );
        assert_eq!(
            msg("spec.image").as_deref(),
            Some(
                "Invalid value: \"boolean\": spec.image in body must be of type string: \"boolean\""
            )
        );
        assert_eq!(report.invalid.len(), 4, "{:?}", report.invalid);
        // A wrongly-typed object is not pruned key by key.
        assert!(report.unknown.is_empty());
    }

    #[test]
    fn root_type_mismatch_uses_body() {
        let mut obj = json!([1]);
        let report = validate(&agent_schema(), &mut obj);
        assert_eq!(report.invalid.len(), 1);
        assert_eq!(report.invalid[0].field, "");
        assert_eq!(
            report.invalid[0].message,
            "Invalid value: \"array\": body must be of type object: \"array\""
        );
    }

    #[test]
    fn integer_accepts_whole_floats_only() {
        let mut obj = valid_agent();
        obj["spec"]["tier"] = json!(3.0);
        assert!(validate(&agent_schema(), &mut obj).invalid.is_empty());
        obj["spec"]["tier"] = json!(1.5);
        let report = validate(&agent_schema(), &mut obj);
        assert_eq!(
            report.invalid[0].message,
            "Invalid value: \"number\": spec.tier in body must be of type integer: \"number\""
        );
        // "number" accepts anything numeric
        let schema = json!({ "type": "object", "properties": { "x": { "type": "number" } } });
        for v in [json!(1), json!(1.5), json!(-3)] {
            let mut o = json!({ "x": v });
            assert!(validate(&schema, &mut o).invalid.is_empty());
        }
    }

    #[test]
    fn range_violations() {
        let mut obj = valid_agent();
        obj["spec"]["tier"] = json!(9);
        let report = validate(&agent_schema(), &mut obj);
        assert_eq!(
            report.invalid,
            vec![Cause {
                field: "spec.tier".into(),
                message: "Invalid value: 9: spec.tier in body should be less than or equal to 4"
                    .into(),
                reason: REASON_INVALID,
            }]
        );
        obj["spec"]["tier"] = json!(0);
        let report = validate(&agent_schema(), &mut obj);
        assert_eq!(
            report.invalid[0].message,
            "Invalid value: 0: spec.tier in body should be greater than or equal to 1"
        );
        let schema = json!({ "properties": { "p": { "type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1.5, "exclusiveMaximum": true } }, "type": "object" });
        let mut o = json!({ "p": 0 });
        assert_eq!(
            validate(&schema, &mut o).invalid[0].message,
            "Invalid value: 0: p in body should be greater than 0"
        );
        let mut o = json!({ "p": 1.5 });
        assert_eq!(
            validate(&schema, &mut o).invalid[0].message,
            "Invalid value: 1.5: p in body should be less than 1.5"
        );
        let mut o = json!({ "p": 0.5 });
        assert!(validate(&schema, &mut o).invalid.is_empty());
    }

    #[test]
    fn enum_violation() {
        let mut obj = valid_agent();
        obj["spec"]["runtime"] = json!("podman");
        let report = validate(&agent_schema(), &mut obj);
        assert_eq!(
            report.invalid,
            vec![Cause {
                field: "spec.runtime".into(),
                message:
                    "Unsupported value: \"podman\": supported values: \"docker\", \"controlPlane\""
                        .into(),
                reason: REASON_NOT_SUPPORTED,
            }]
        );
    }

    #[test]
    fn required_missing() {
        let mut obj = valid_agent();
        obj["spec"]["env"] = json!([ { "name": "A" }, { "value": "orphan" } ]);
        obj["spec"].as_object_mut().map(|m| m.remove("runtime"));
        let report = validate(&agent_schema(), &mut obj);
        let mut got: Vec<Cause> = report.invalid.clone();
        got.sort_by(|a, b| a.field.cmp(&b.field));
        assert_eq!(
            got,
            vec![
                Cause {
                    field: "spec.env[1].name".into(),
                    message: "Required value".into(),
                    reason: REASON_REQUIRED
                },
                Cause {
                    field: "spec.runtime".into(),
                    message: "Required value".into(),
                    reason: REASON_REQUIRED
                },
            ]
        );
        let mut no_spec = json!({ "apiVersion": "v1", "kind": "Agent", "metadata": {} });
        assert_eq!(
            fields(&validate(&agent_schema(), &mut no_spec)),
            vec!["spec"]
        );
    }

    #[test]
    fn nullable_kept_and_non_nullable_nulls_dropped() {
        let mut obj = valid_agent();
        obj["spec"]["image"] = Value::Null; // nullable: kept
        obj["spec"]["env"] = Value::Null; // not nullable, optional: dropped silently
        obj["spec"]["files"]["k"] = Value::Null; // map value, not nullable: dropped
        obj["status"]["agentCard"] = Value::Null;
        let report = validate(&agent_schema(), &mut obj);
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        assert!(report.unknown.is_empty());
        assert_eq!(obj["spec"]["image"], Value::Null);
        assert!(obj["spec"].get("env").is_none());
        assert!(obj["spec"]["files"].get("k").is_none());
        assert_eq!(obj["status"]["agentCard"], Value::Null);

        // required + null => Required value
        obj["spec"]["runtime"] = Value::Null;
        obj["spec"]["env"] = json!([ { "name": null } ]);
        let report = validate(&agent_schema(), &mut obj);
        assert_eq!(
            sorted(fields(&report).iter().map(|s| s.to_string()).collect()),
            vec!["spec.env[0].name", "spec.runtime"]
        );
        assert!(report.invalid.iter().all(|c| c.reason == REASON_REQUIRED));

        // null array items are type errors
        let schema = json!({ "type": "object", "properties": { "xs": { "type": "array", "items": { "type": "string" } } } });
        let mut o = json!({ "xs": ["a", null] });
        let report = validate(&schema, &mut o);
        assert_eq!(report.invalid[0].field, "xs[1]");
        assert_eq!(
            report.invalid[0].message,
            "Invalid value: \"null\": xs[1] in body must be of type string: \"null\""
        );
    }

    #[test]
    fn schemars_style_nullable_variants() {
        let schema = json!({ "type": "object", "properties": {
            "a": { "type": ["string", "null"] },
            "b": { "anyOf": [ { "enum": ["x", "y"], "type": "string" }, { "type": "null" } ] },
            "c": { "enum": ["p", "q", null], "type": "string", "nullable": true }
        } });
        let mut o = json!({ "a": null, "b": null, "c": null });
        let report = validate(&schema, &mut o);
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        assert_eq!(o, json!({ "a": null, "b": null, "c": null }));
        let mut o = json!({ "a": 1, "b": "z", "c": "q" });
        let report = validate(&schema, &mut o);
        assert_eq!(fields(&report), vec!["a", "b"]);
        assert_eq!(
            report.invalid[0].message,
            "Invalid value: \"integer\": a in body must be of type string: \"integer\""
        );
        assert_eq!(
            report.invalid[1].message,
            "Unsupported value: \"z\": supported values: \"x\", \"y\""
        );
    }

    #[test]
    fn int_or_string() {
        for v in [json!(2), json!("50%"), json!(4.0)] {
            let mut obj = valid_agent();
            obj["spec"]["resources"]["cpu"] = v;
            assert!(validate(&agent_schema(), &mut obj).invalid.is_empty());
        }
        for (v, actual) in [
            (json!(true), "boolean"),
            (json!(1.5), "number"),
            (json!({}), "object"),
        ] {
            let mut obj = valid_agent();
            obj["spec"]["resources"]["cpu"] = v;
            let report = validate(&agent_schema(), &mut obj);
            assert_eq!(report.invalid.len(), 1);
            assert_eq!(
                report.invalid[0].message,
                format!(
                    "Invalid value: \"{actual}\": spec.resources.cpu in body must be of type integer,string: \"{actual}\""
                )
            );
            assert_eq!(report.invalid[0].reason, REASON_TYPE_INVALID);
        }
    }

    #[test]
    fn byte_and_date_time_formats() {
        for ok in ["", "aGVsbG8=", "aGk=", "YWJj", "aGVs\nbG8="] {
            let mut obj = valid_agent();
            obj["spec"]["secretData"] = json!(ok);
            assert!(
                validate(&agent_schema(), &mut obj).invalid.is_empty(),
                "{ok:?}"
            );
        }
        for bad in ["not base64!", "aGVsbG8", "a===", "aGk=aGk", "aGVsbG8_"] {
            let mut obj = valid_agent();
            obj["spec"]["secretData"] = json!(bad);
            let report = validate(&agent_schema(), &mut obj);
            assert_eq!(report.invalid.len(), 1, "{bad:?}");
            assert_eq!(report.invalid[0].field, "spec.secretData");
            assert_eq!(
                report.invalid[0].message,
                format!(
                    "Invalid value: \"{bad}\": spec.secretData in body must be of type byte: \"{bad}\""
                )
            );
        }
        for (ts, ok) in [
            ("2024-05-01T12:00:00Z", true),
            ("2024-05-01T12:00:00.123456+02:00", true),
            ("2024-05-01 12:00:00", true),
            ("yesterday", false),
            ("2024-05-01", false),
        ] {
            let mut obj = valid_agent();
            obj["status"]["startedAt"] = json!(ts);
            assert_eq!(
                validate(&agent_schema(), &mut obj).invalid.is_empty(),
                ok,
                "{ts}"
            );
        }
    }

    #[test]
    fn string_and_array_constraints() {
        let schema = json!({ "type": "object", "properties": {
            "s": { "type": "string", "maxLength": 3, "minLength": 2 },
            "p": { "type": "string", "pattern": "^[a-z]+$" },
            "bad": { "type": "string", "pattern": "(?<=x)y" },
            "l": { "type": "array", "items": { "type": "integer" }, "maxItems": 2, "minItems": 1 }
        } });
        let mut o = json!({ "s": "héllo", "p": "ABC", "bad": "anything", "l": [1, 2, 3] });
        let report = validate(&schema, &mut o);
        let by_field: HashMap<&str, &Cause> = report
            .invalid
            .iter()
            .map(|c| (c.field.as_str(), c))
            .collect();
        assert_eq!(report.invalid.len(), 3, "{:?}", report.invalid);
        assert_eq!(
            by_field["s"].message,
            "Too long: may not be more than 3 bytes"
        );
        assert_eq!(by_field["s"].reason, REASON_TOO_LONG);
        assert_eq!(
            by_field["p"].message,
            "Invalid value: \"ABC\": p in body should match '^[a-z]+$'"
        );
        assert_eq!(
            by_field["l"].message,
            "Too many: 3: must have at most 2 items"
        );
        let mut o = json!({ "s": "é", "l": [] });
        let report = validate(&schema, &mut o);
        let by_field: HashMap<&str, &Cause> = report
            .invalid
            .iter()
            .map(|c| (c.field.as_str(), c))
            .collect();
        assert_eq!(report.invalid.len(), 2, "{:?}", report.invalid);
        assert_eq!(
            by_field["s"].message,
            "Invalid value: \"é\": s in body should be at least 2 chars long"
        );
        assert_eq!(
            by_field["l"].message,
            "Invalid value: 0: l in body should have at least 1 items"
        );
        // pattern compiled once and reused
        let mut o = json!({ "p": "abc" });
        assert!(validate(&schema, &mut o).invalid.is_empty());
    }

    #[test]
    fn structural_object_rules() {
        // type object without properties: everything unknown
        let schema = json!({ "type": "object", "properties": { "spec": { "type": "object" } } });
        let mut o = json!({ "spec": { "a": 1, "b": { "c": 2 } } });
        let report = validate(&schema, &mut o);
        assert_eq!(sorted(report.unknown), vec!["spec.a", "spec.b"]);
        assert_eq!(o, json!({ "spec": {} }));
        // no type and no properties: anything
        let schema =
            json!({ "type": "object", "properties": { "spec": { "description": "free" } } });
        let mut o = json!({ "spec": { "a": 1, "b": [ { "c": 2 } ] } });
        let before = o.clone();
        let report = validate(&schema, &mut o);
        assert!(report.unknown.is_empty() && report.invalid.is_empty());
        assert_eq!(o, before);
        // additionalProperties: true keeps everything; preserve-unknown still validates declared fields
        let schema = json!({ "type": "object", "properties": {
            "m": { "type": "object", "additionalProperties": true },
            "p": { "type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": { "n": { "type": "integer" } } },
            "e": { "type": "object", "x-kubernetes-embedded-resource": true }
        } });
        let mut o = json!({ "m": { "x": { "y": 1 } }, "p": { "n": "no", "free": { "z": 1 } }, "e": { "kind": "Pod", "spec": {} } });
        let before = o.clone();
        let report = validate(&schema, &mut o);
        assert!(report.unknown.is_empty());
        assert_eq!(fields(&report), vec!["p.n"]);
        assert_eq!(o, before);
    }

    #[test]
    fn combinators() {
        // schemars-style complex enum: properties only in oneOf branches count as known.
        let schema = json!({ "type": "object", "properties": { "source": {
            "type": "object",
            "oneOf": [
                { "properties": { "git": { "type": "object", "properties": { "url": { "type": "string" } }, "required": ["url"] } }, "required": ["git"] },
                { "properties": { "inline": { "type": "string", "minLength": 1 } }, "required": ["inline"] }
            ]
        } } });
        let mut o = json!({ "source": { "git": { "url": "https://x", "depth": 1 } } });
        let report = validate(&schema, &mut o);
        assert_eq!(report.unknown, vec!["source.git.depth"]);
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        let mut o = json!({ "source": { "inline": "text" } });
        assert!(validate(&schema, &mut o).invalid.is_empty());
        // neither branch matches: first branch's causes
        let mut o = json!({ "source": { "inline": "" } });
        let report = validate(&schema, &mut o);
        assert_eq!(report.invalid, vec![required_error("source.git")]);
        // allOf: all must hold
        let schema = json!({ "type": "object", "properties": { "n": {
            "type": "integer", "allOf": [ { "minimum": 0 }, { "maximum": 10 } ]
        } } });
        let mut o = json!({ "n": 11 });
        let report = validate(&schema, &mut o);
        assert_eq!(
            report.invalid[0].message,
            "Invalid value: 11: n in body should be less than or equal to 10"
        );
        // anyOf of types
        let schema = json!({ "type": "object", "properties": { "v": { "anyOf": [ { "type": "integer" }, { "type": "string" } ] } } });
        let mut o = json!({ "v": "x" });
        assert!(validate(&schema, &mut o).invalid.is_empty());
        let mut o = json!({ "v": [] });
        assert_eq!(
            validate(&schema, &mut o).invalid[0].message,
            "Invalid value: \"array\": v in body must be of type integer: \"array\""
        );
    }

    #[test]
    fn dns1123_names() {
        assert_eq!(validate_dns1123_subdomain("my-agent.example.com"), None);
        assert_eq!(validate_dns1123_subdomain("a"), None);
        assert_eq!(
            validate_dns1123_subdomain("MyAgent").as_deref(),
            Some(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            )
        );
        assert!(validate_dns1123_subdomain("-leading").is_some());
        assert!(validate_dns1123_subdomain("trailing.").is_some());
        assert!(validate_dns1123_subdomain("").is_some());
        let long = "a".repeat(254);
        assert_eq!(
            validate_dns1123_subdomain(&long).as_deref(),
            Some("must be no more than 253 characters")
        );
        assert_eq!(validate_dns1123_subdomain(&"a".repeat(253)), None);

        assert_eq!(validate_dns1123_label("my-name"), None);
        assert_eq!(validate_dns1123_label("123-abc"), None);
        assert_eq!(
            validate_dns1123_label("-x").as_deref(),
            Some(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
        );
        assert!(validate_dns1123_label("a.b").is_some());
        assert!(validate_dns1123_label("Upper").is_some());
        assert_eq!(
            validate_dns1123_label(&"a".repeat(64)).as_deref(),
            Some("must be no more than 63 characters")
        );
        let both = validate_dns1123_label(&format!("-{}", "a".repeat(63))).unwrap_or_default();
        assert!(
            both.starts_with("must be no more than 63 characters; a lowercase RFC 1123 label"),
            "{both}"
        );
    }

    #[test]
    fn metadata_name_rules() {
        let mut obj = json!({ "metadata": { "name": "Bad_Name" } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert_eq!(report.invalid.len(), 1);
        assert_eq!(report.invalid[0].field, "metadata.name");
        assert!(
            report.invalid[0]
                .message
                .starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain")
        );
        assert_eq!(report.invalid[0].reason, REASON_INVALID);

        let mut obj = json!({ "metadata": { "name": "a.b" } });
        assert!(validate_metadata(&mut obj, NameRule::Subdomain).is_valid());
        let report = validate_metadata(&mut obj, NameRule::Label);
        assert!(report.invalid[0].message.contains("RFC 1123 label"));

        let mut obj = json!({ "metadata": { "name": 5 } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert_eq!(
            report.invalid[0].message,
            "Invalid value: \"integer\": metadata.name in body must be of type string: \"integer\""
        );

        let mut obj = json!({ "metadata": "nope" });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert_eq!(fields(&report), vec!["metadata"]);

        let mut obj = json!({ "spec": {} });
        assert!(validate_metadata(&mut obj, NameRule::Subdomain).is_valid());
    }

    #[test]
    fn metadata_full_valid_object() {
        let mut obj = json!({ "metadata": {
            "name": "writer", "generateName": "writer-", "namespace": "team-a", "uid": "0b1c", "resourceVersion": "12",
            "generation": 3, "creationTimestamp": "2024-05-01T12:00:00Z", "deletionGracePeriodSeconds": 30,
            "labels": { "app.kubernetes.io/name": "writer", "empty": "" },
            "annotations": { "Example.COM/Note": "any text at all: !@#", "kubectl.kubernetes.io/last-applied-configuration": "{}" },
            "finalizers": ["molecule.dev/cleanup", "foregroundDeletion"],
            "ownerReferences": [ { "apiVersion": "molecule.dev/v1", "kind": "Team", "name": "t", "uid": "u-1", "controller": true, "blockOwnerDeletion": true } ],
            "managedFields": [ { "manager": "kubectl" } ]
        } });
        let before = obj.clone();
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        assert!(report.unknown.is_empty());
        assert_eq!(obj, before);
    }

    #[test]
    fn metadata_labels() {
        let mut obj = json!({ "metadata": { "labels": { "bad key": "ok", "good": "-bad-value-", "also/ok": "v", "x": "a".repeat(64) } } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert!(
            report
                .invalid
                .iter()
                .all(|c| c.field == "metadata.labels" && c.reason == REASON_INVALID)
        );
        let messages: Vec<&str> = report.invalid.iter().map(|c| c.message.as_str()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages.contains(&"Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"));
        assert!(messages.contains(&"Invalid value: \"-bad-value-\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
        assert!(
            messages
                .iter()
                .any(|m| m.ends_with(": must be no more than 63 characters"))
        );

        let mut obj = json!({ "metadata": { "labels": { "Bad_Prefix/x": "v", "/x": "v", "a/b/c": "v", "k": 1 } } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        let messages: Vec<&str> = report.invalid.iter().map(|c| c.message.as_str()).collect();
        assert!(messages.iter().any(|m| m.starts_with(
            "Invalid value: \"Bad_Prefix/x\": prefix part a lowercase RFC 1123 subdomain"
        )));
        assert!(messages.contains(&"Invalid value: \"/x\": prefix part must be non-empty"));
        assert!(
            messages.iter().any(
                |m| m.starts_with("Invalid value: \"a/b/c\": a qualified name must consist of")
            )
        );
        assert!(
            report
                .invalid
                .iter()
                .any(|c| c.field == "metadata.labels.k" && c.reason == REASON_TYPE_INVALID)
        );

        let mut obj = json!({ "metadata": { "labels": ["a"] } });
        assert_eq!(
            fields(&validate_metadata(&mut obj, NameRule::Subdomain)),
            vec!["metadata.labels"]
        );
    }

    #[test]
    fn metadata_annotations_and_finalizers() {
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        let mut obj = json!({ "metadata": { "annotations": { "a": big, "bad key": "v" } } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert_eq!(report.invalid.len(), 2, "{:?}", report.invalid);
        assert!(report.invalid.iter().any(|c| c.reason == REASON_TOO_LONG
            && c.message == "Too long: may not be more than 262144 bytes"
            && c.field == "metadata.annotations"));
        assert!(report.invalid.iter().any(|c| {
            c.message
                .starts_with("Invalid value: \"bad key\": name part")
        }));

        let mut obj = json!({ "metadata": { "finalizers": ["ok/fin", "bad fin", 3] } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert_eq!(
            fields(&report),
            vec!["metadata.finalizers[1]", "metadata.finalizers[2]"]
        );
        assert!(
            report.invalid[0]
                .message
                .starts_with("Invalid value: \"bad fin\": name part must consist of")
        );
        assert_eq!(report.invalid[1].reason, REASON_TYPE_INVALID);
    }

    #[test]
    fn metadata_unknown_keys_pruned_and_nulls_dropped() {
        let mut obj = json!({ "metadata": { "name": "ok", "bogus": { "x": 1 }, "labels": null, "creationTimestamp": null } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert_eq!(report.unknown, vec!["metadata.bogus"]);
        assert!(report.invalid.is_empty());
        assert_eq!(obj, json!({ "metadata": { "name": "ok" } }));
    }

    #[test]
    fn metadata_owner_references() {
        let mut obj = json!({ "metadata": { "ownerReferences": [
            { "apiVersion": "v1", "kind": "ConfigMap", "name": "cm" , "extra": 1 },
            { "apiVersion": "apps/", "kind": "", "name": "x", "uid": "u", "controller": "yes" },
            { "apiVersion": "a/v1", "kind": "K", "name": "n", "uid": "1", "controller": true },
            { "apiVersion": "a/v1", "kind": "K", "name": "m", "uid": "2", "controller": true, "blockOwnerDeletion": null },
            "nope"
        ] } });
        let report = validate_metadata(&mut obj, NameRule::Subdomain);
        assert_eq!(report.unknown, vec!["metadata.ownerReferences[0].extra"]);
        let find = |f: &str| report.invalid.iter().find(|c| c.field == f).cloned();
        assert_eq!(
            find("metadata.ownerReferences[0].uid"),
            Some(required_error("metadata.ownerReferences[0].uid"))
        );
        assert_eq!(
            find("metadata.ownerReferences[1].apiVersion").map(|c| c.message),
            Some("Invalid value: \"apps/\": version must not be empty".into())
        );
        assert_eq!(
            find("metadata.ownerReferences[1].kind").map(|c| c.message),
            Some("Invalid value: \"\": kind must not be empty".into())
        );
        assert_eq!(
            find("metadata.ownerReferences[1].controller").map(|c| c.reason),
            Some(REASON_TYPE_INVALID)
        );
        assert!(find("metadata.ownerReferences").is_some_and(|c| {
            c.message
                .contains("Only one reference can have Controller set to true")
        }));
        assert_eq!(
            find("metadata.ownerReferences[4]").map(|c| c.reason),
            Some(REASON_TYPE_INVALID)
        );
        assert_eq!(report.invalid.len(), 6, "{:?}", report.invalid);
        assert!(obj["metadata"]["ownerReferences"][0].get("extra").is_none());
        assert!(
            obj["metadata"]["ownerReferences"][3]
                .get("blockOwnerDeletion")
                .is_none()
        );
    }

    #[test]
    fn report_merge_combines_both_passes() {
        let mut obj = valid_agent();
        obj["metadata"]["zzz"] = json!(1);
        obj["spec"]["zzz"] = json!(1);
        let mut report = validate(&agent_schema(), &mut obj);
        report.merge(validate_metadata(&mut obj, NameRule::Subdomain));
        assert_eq!(report.unknown, vec!["spec.zzz", "metadata.zzz"]);
        assert!(report.is_valid());
        assert_eq!(obj, valid_agent());
    }
}
