//! Request bodies: capped, parsed as a JSON object, and read field by field with precise,
//! value-free messages ("field `tier` must be an integer between 1 and 4").

use axum::body::Body;
use serde_json::{Map, Value};

use super::error::ShimError;

/// Largest accepted shim request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Reads a body of at most `MAX_BODY` bytes.
pub async fn bytes(body: Body) -> Result<axum::body::Bytes, ShimError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ShimError::TooLarge(MAX_BODY))
}

/// The body as a JSON object (an empty body is an empty object when `optional`).
pub async fn object(body: Body, optional: bool) -> Result<Map<String, Value>, ShimError> {
    let b = bytes(body).await?;
    if optional && b.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&b) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ShimError::bad("the body must be a JSON object")),
        Err(e) if e.is_eof() => Err(ShimError::bad("malformed JSON: the body ends early")),
        Err(e) => Err(ShimError::bad(format!(
            "malformed JSON at line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// Typed access to the fields of a body.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// A string of at most `max` characters without control characters; null counts as absent.
    pub fn str(&self, key: &str, max: usize) -> Result<Option<String>, ShimError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().count() > max => Err(ShimError::bad(format!(
                "field `{key}` must be at most {max} characters"
            ))),
            Some(Value::String(s)) if s.chars().any(char::is_control) => Err(ShimError::bad(
                format!("field `{key}` must not contain control characters"),
            )),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ShimError::bad(format!("field `{key}` must be a string"))),
        }
    }

    /// Multi-line text (a YAML document) of at most `max` bytes: newlines and tabs are allowed,
    /// other control characters are not; null counts as absent.
    pub fn text(&self, key: &str, max: usize) -> Result<Option<String>, ShimError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() > max => Err(ShimError::bad(format!(
                "field `{key}` must be at most {max} bytes"
            ))),
            Some(Value::String(s))
                if s.chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
            {
                Err(ShimError::bad(format!(
                    "field `{key}` must not contain control characters other than newlines and tabs"
                )))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ShimError::bad(format!("field `{key}` must be a string"))),
        }
    }

    /// A required non-empty string.
    pub fn required_str(&self, key: &str, max: usize) -> Result<String, ShimError> {
        match self.str(key, max)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(ShimError::bad(format!("field `{key}` is required"))),
        }
    }

    /// An integer in `min..=max`.
    pub fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ShimError> {
        let bad = || {
            ShimError::bad(format!(
                "field `{key}` must be an integer between {min} and {max}"
            ))
        };
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Ok(Some(i)),
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
        }
    }

    /// A finite number.
    pub fn num(&self, key: &str) -> Result<Option<f64>, ShimError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() <= 1e9 => Ok(Some(f)),
                _ => Err(ShimError::bad(format!(
                    "field `{key}` must be a finite number"
                ))),
            },
            Some(_) => Err(ShimError::bad(format!("field `{key}` must be a number"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ShimError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ShimError::bad(format!(
                "field `{key}` must be true or false"
            ))),
        }
    }

    /// A string or an explicit null (`Some(None)`: clear it); absent is `None`.
    pub fn nullable_str(&self, key: &str, max: usize) -> Result<Option<Option<String>>, ShimError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(_) => Ok(Some(self.str(key, max)?)),
        }
    }
}

/// Display names and roles: no YAML/shell specials, as the original refused (#685).
pub fn check_label_text(key: &str, s: &str) -> Result<(), ShimError> {
    if s.contains(['{', '}', '[', ']', '|', '>', '*', '&', '!']) {
        return Err(ShimError::bad(format!(
            "field `{key}` must not contain any of {{}}[]|>*&!"
        )));
    }
    Ok(())
}

/// Runtime names: a lower-case slug (it names a Runtime record).
pub fn check_runtime(s: &str) -> Result<(), ShimError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ShimError::bad(
            "field `runtime` must be a lower-case name of letters, digits, '-' or '_'",
        ))
    }
}

/// A workspace id in a path: a uid (UUID form). Anything else is a 400 before any lookup.
pub fn check_id(id: &str) -> Result<(), ShimError> {
    let ok = id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(())
    } else {
        Err(ShimError::bad("invalid workspace id: expected a UUID"))
    }
}

/// An env-style secret key.
pub fn check_secret_key(k: &str) -> Result<(), ShimError> {
    let ok = !k.is_empty()
        && k.len() <= 128
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ShimError::bad(
            "invalid secret key: use letters, digits and underscores, not starting with a digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_typed_with_clear_messages() {
        let v = json!({"name": "a", "tier": "2", "x": 1.5, "big": 7, "flag": 1, "nl": "a\nb", "p": null});
        let f = Fields(v.as_object().expect("obj"));
        assert_eq!(f.str("name", 10).expect("s"), Some("a".into()));
        assert!(f.str("name", 0).is_err());
        assert!(
            f.int("tier", 1, 4)
                .expect_err("type")
                .to_string()
                .contains("`tier` must be an integer between 1 and 4")
        );
        assert!(f.int("big", 1, 4).is_err());
        assert_eq!(f.num("x").expect("n"), Some(1.5));
        assert!(f.bool("flag").is_err());
        assert!(f.str("nl", 10).is_err());
        assert_eq!(f.nullable_str("p", 10).expect("p"), Some(None));
        assert_eq!(f.nullable_str("absent", 10).expect("a"), None);
        assert!(f.required_str("absent", 10).is_err());
    }

    #[test]
    fn ids_runtimes_keys_and_labels() {
        assert!(check_id("3f2a9c1e-7b4d-4e5f-8a9b-0c1d2e3f4a5b").is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            "3f2a9c1e7b4d4e5f8a9b0c1d2e3f4a5b",
            "zzzzzzzz-7b4d-4e5f-8a9b-0c1d2e3f4a5b",
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(check_runtime("claude-code").is_ok());
        assert!(check_runtime("Bad Runtime").is_err());
        assert!(check_secret_key("OPENAI_API_KEY").is_ok());
        for bad in ["", "1X", "A-B", "../x"] {
            assert!(check_secret_key(bad).is_err(), "{bad}");
        }
        assert!(check_label_text("name", "Research Lead").is_ok());
        assert!(check_label_text("name", "x: {y}").is_err());
    }
}
