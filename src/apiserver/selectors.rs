//! Label selectors (`k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`) and field
//! selectors (`f=v`, `f==v`, `f!=v`), both AND-ed with commas.

use serde_json::Value;

use super::error::ApiError;

#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = vec![];
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    /// Parses a selector; a malformed one is a 400.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}"));
        let mut reqs = vec![];
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad("found ',', expected: identifier"));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                LabelReq::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = split_set_op(p, " notin ") {
                LabelReq::NotIn(
                    k,
                    parse_set(rest).ok_or_else(|| bad(&format!("invalid set in {p:?}")))?,
                )
            } else if let Some((k, rest)) = split_set_op(p, " in ") {
                LabelReq::In(
                    k,
                    parse_set(rest).ok_or_else(|| bad(&format!("invalid set in {p:?}")))?,
                )
            } else {
                LabelReq::Exists(p.to_string())
            };
            let (key, values): (&str, Vec<&String>) = match &req {
                LabelReq::Eq(k, v) | LabelReq::NotEq(k, v) => (k, vec![v]),
                LabelReq::In(k, vs) | LabelReq::NotIn(k, vs) => (k, vs.iter().collect()),
                LabelReq::Exists(k) | LabelReq::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(bad(&format!("invalid label key {key:?}")));
            }
            if let Some(v) = values.iter().find(|v| !valid_value(v)) {
                return Err(bad(&format!("invalid label value {v:?}")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's labels match.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Whether labels read by `get` match.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn split_set_op(p: &str, op: &str) -> Option<(String, String)> {
    let idx = p.find(op)?;
    Some((
        p[..idx].trim().to_string(),
        p[idx + op.len()..].trim().to_string(),
    ))
}

fn parse_set(s: String) -> Option<Vec<String>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if vals.iter().any(String::is_empty) {
        None
    } else {
        Some(vals)
    }
}

/// One field requirement, resolved to a JSON pointer.
#[derive(Clone, Debug, PartialEq)]
struct FieldReq {
    pointer: &'static str,
    value: String,
    negate: bool,
}

/// A parsed field selector over the fields a kind supports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<FieldReq>);

impl FieldSelector {
    /// Parses `s` against the supported (label, pointer) pairs; unsupported labels are a 400.
    pub fn parse(s: &str, supported: &[(&'static str, &'static str)]) -> Result<Self, ApiError> {
        let mut reqs = vec![];
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (field, value, negate) = if let Some((f, v)) = p.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{p}'"
                )));
            };
            let field = field.trim();
            let Some((_, pointer)) = supported.iter().find(|(l, _)| *l == field) else {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            };
            reqs.push(FieldReq {
                pointer,
                value: value.trim().to_string(),
                negate,
            });
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether an object (in its stored form) matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let actual = match obj.pointer(r.pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == r.value) != r.negate
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "default", "labels": labels}})
    }

    #[test]
    fn label_selector_forms() {
        let o = obj(json!({"team": "core", "tier": "2"}));
        for (sel, want) in [
            ("team=core", true),
            ("team==core", true),
            ("team!=core", false),
            ("team in (core,edge)", true),
            ("team notin (core)", false),
            ("team", true),
            ("!team", false),
            ("!missing", true),
            ("team=core,tier=2", true),
            ("team=core,tier=3", false),
            ("missing notin (x)", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).expect(sel).matches(&o),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for sel in ["team in (a,", "a=b,,c=d", "k=v v", "team in ()"] {
            let e = LabelSelector::parse(sel).expect_err(sel);
            assert_eq!(e.code, 400, "{sel}");
        }
    }

    #[test]
    fn field_selectors_resolve_supported_fields_only() {
        let supported = [
            ("metadata.name", "/metadata/name"),
            ("involvedObject.uid", "/involvedObject/uid"),
        ];
        let o = obj(json!({}));
        assert!(
            FieldSelector::parse("metadata.name=a", &supported)
                .expect("ok")
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=a", &supported)
                .expect("ok")
                .matches(&o)
        );
        assert!(
            FieldSelector::parse("involvedObject.uid=", &supported)
                .expect("ok")
                .matches(&o)
        );
        let e = FieldSelector::parse("spec.foo=1", &supported).expect_err("unsupported");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("field label not supported: spec.foo"));
    }
}
