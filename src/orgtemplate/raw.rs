//! One template file as serde-saphyr reads it (ADR 0046): every value with its tag and the
//! line and column it was written at. `node` turns this into the expanded tree, handling
//! `!include` and `!external` itself (confinement, cycles, limits), so only plain YAML is
//! asked of the library.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Pos;
use crate::yaml::{Location, Spanned, Tagged};

/// A value with its tag (as written, e.g. `!include`) and position.
pub(crate) type Raw = Spanned<Tagged<Value>>;

/// A YAML value; mapping keys are read as text (`1:` is the key "1").
#[derive(Debug)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Raw>),
    Map(Vec<(String, Raw)>),
}

/// Parses one file; an empty file (or one holding only comments) is null.
pub(crate) fn parse(text: &str) -> Result<Raw, crate::yaml::Error> {
    if text.trim().is_empty() {
        let at = Location::UNKNOWN;
        return Ok(Spanned::new(Tagged(Value::Null, None), at, at));
    }
    crate::yaml::from_str(text)
}

/// The parse error without its trailing `at line L, column C` (the error carries the position).
pub(crate) fn error_message(e: &crate::yaml::Error) -> String {
    let text = e.to_string();
    let Some(at) = e.location().filter(|l| l.line() > 0) else {
        return text;
    };
    let suffix = format!(" at line {}, column {}", at.line(), at.column());
    text.strip_suffix(&suffix)
        .map(str::to_string)
        .unwrap_or(text)
}

/// The value and its application tag (`!name`); standard tags (`!!str`, `!`) are dropped,
/// the value already reads as they ask.
pub(crate) fn untag(tagged: Tagged<Value>) -> (Value, Option<String>) {
    let Tagged(value, tag) = tagged;
    let tag = tag.filter(|t| t.len() > 1 && t.starts_with('!') && !t.starts_with("!!"));
    (value, tag)
}

impl Pos {
    /// The position of a location, None when serde-saphyr does not know it.
    pub(crate) fn of(at: Location) -> Option<Pos> {
        let line = u32::try_from(at.line()).ok().filter(|l| *l > 0)?;
        let column = u32::try_from(at.column()).unwrap_or(0);
        Some(Pos { line, column })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }

    fn visit_i128<E>(self, i: i128) -> Result<Value, E> {
        Ok(i64::try_from(i).map_or(Value::Float(i as f64), Value::Int))
    }

    fn visit_u128<E>(self, u: u128) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(Value::Seq(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<String>()? {
            out.push((key, map.next_value()?));
        }
        Ok(Value::Map(out))
    }
}
