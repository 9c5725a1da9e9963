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

mod core;
mod metadata;
mod names;
mod schedules;
mod schema;

pub use core::{is_config_key, typed_check};
pub use metadata::validate_metadata;
use names::*;
pub use names::{
    dns1123_label_errors, dns1123_subdomain_errors, label_value_errors, qualified_name_errors,
    validate_dns1123_label, validate_dns1123_subdomain,
};
pub use schedules::workspace_schedules;
use schema::*;

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
