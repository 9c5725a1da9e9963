//! Decoding of the Kubernetes protobuf wire form for the few core kinds kubectl sends typed
//! (`kubectl create secret`, `kubectl create namespace`): client-go posts them as
//! `application/vnd.kubernetes.protobuf` and does not fall back to JSON on a 415.
//! The envelope is `k8s\0` + `runtime.Unknown{typeMeta, raw}`; `raw` is the object message.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::error::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One decoded field: number and raw payload (varints as their value, bytes as a slice).
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn bad() -> ApiError {
    ApiError::bad_request("the protobuf request body is malformed")
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ApiError> {
    super::varint::get(buf, pos).ok_or_else(bad)
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, ApiError> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (u32::try_from(key >> 3).map_err(|_| bad())?, key & 7);
        match wire {
            0 => out.push(Field::Varint(num, varint(buf, &mut pos)?)),
            1 => {
                pos = pos
                    .checked_add(8)
                    .filter(|p| *p <= buf.len())
                    .ok_or_else(bad)?
            }
            5 => {
                pos = pos
                    .checked_add(4)
                    .filter(|p| *p <= buf.len())
                    .ok_or_else(bad)?
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| bad())?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or_else(bad)?;
                out.push(Field::Bytes(num, &buf[pos..end]));
                pos = end;
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad())
}

/// A map entry message {key = 1, value = 2}.
fn entry(b: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let (mut k, mut v): (String, &[u8]) = (String::new(), &[]);
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => k = text(x)?,
            Field::Bytes(2, x) => v = x,
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), vec![]);
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => _ = m.insert("name".into(), json!(text(x)?)),
            Field::Bytes(2, x) => _ = m.insert("generateName".into(), json!(text(x)?)),
            Field::Bytes(3, x) => _ = m.insert("namespace".into(), json!(text(x)?)),
            Field::Bytes(6, x) => _ = m.insert("resourceVersion".into(), json!(text(x)?)),
            Field::Bytes(11, x) => {
                let (k, v) = entry(x)?;
                labels.insert(k, json!(text(v)?));
            }
            Field::Bytes(12, x) => {
                let (k, v) = entry(x)?;
                annotations.insert(k, json!(text(v)?));
            }
            Field::Bytes(14, x) => finalizers.push(json!(text(x)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

/// Decodes a protobuf body of `kind` (Secret or Namespace) into its JSON form.
pub fn decode(kind: &str, body: &[u8]) -> Result<Value, ApiError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(bad)?;
    let mut raw: &[u8] = &[];
    for f in fields(rest)? {
        if let Field::Bytes(2, x) = f {
            raw = x;
        }
    }
    let mut obj = Map::new();
    match kind {
        "Secret" => {
            let (mut data, mut string_data) = (Map::new(), Map::new());
            for f in fields(raw)? {
                match f {
                    Field::Bytes(1, x) => _ = obj.insert("metadata".into(), object_meta(x)?),
                    Field::Bytes(2, x) => {
                        let (k, v) = entry(x)?;
                        data.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(v)),
                        );
                    }
                    Field::Bytes(3, x) => _ = obj.insert("type".into(), json!(text(x)?)),
                    Field::Bytes(4, x) => {
                        let (k, v) = entry(x)?;
                        string_data.insert(k, json!(text(v)?));
                    }
                    Field::Varint(5, v) => _ = obj.insert("immutable".into(), json!(v != 0)),
                    _ => {}
                }
            }
            if !data.is_empty() {
                obj.insert("data".into(), Value::Object(data));
            }
            if !string_data.is_empty() {
                obj.insert("stringData".into(), Value::Object(string_data));
            }
        }
        "Namespace" => {
            for f in fields(raw)? {
                if let Field::Bytes(1, x) = f {
                    obj.insert("metadata".into(), object_meta(x)?);
                }
            }
        }
        _ => {
            return Err(ApiError::unsupported_media_type(
                "application/json, application/yaml",
            ));
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, num: u8, data: &[u8]) {
        out.push((num << 3) | 2);
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    }

    #[test]
    fn decodes_a_secret_envelope() {
        let mut meta = vec![];
        field(&mut meta, 1, b"api-keys");
        let mut e = vec![];
        field(&mut e, 1, b"K");
        field(&mut e, 2, b"v");
        let mut secret = vec![];
        field(&mut secret, 1, &meta);
        field(&mut secret, 2, &e);
        field(&mut secret, 3, b"Opaque");
        let mut unknown = vec![];
        field(&mut unknown, 2, &secret);
        let mut body = MAGIC.to_vec();
        body.extend(unknown);
        let v = decode("Secret", &body).expect("decode");
        assert_eq!(
            v,
            json!({"metadata": {"name": "api-keys"}, "data": {"K": "dg=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        assert_eq!(decode("Secret", b"nope").expect_err("magic").code, 400);
        assert_eq!(
            decode("Secret", b"k8s\0\x12\xff")
                .expect_err("truncated")
                .code,
            400
        );
        assert_eq!(decode("Workspace", b"k8s\0").expect_err("kind").code, 415);
    }
}
