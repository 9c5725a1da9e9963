//! The activity log's rules (ADR 0050), pure so they are tested from tables: which activity
//! types exist, how bodies are capped before they are stored, what a call's one-line summary
//! is, and which A2A request bodies the proxy forwards at all.

use serde_json::{Value, json};

/// Every activity type an agent or the platform may record, in the original's order.
pub const ACTIVITY_TYPES: &[&str] = &[
    "a2a_send",
    "a2a_receive",
    "task_update",
    "agent_log",
    "skill_promotion",
    "memory_write",
    "error",
];

/// Largest stored request or response body; a longer one is replaced by a preview.
pub const MAX_STORED_BODY: usize = 64 * 1024;
/// Characters kept of a summary.
pub const MAX_SUMMARY: usize = 256;
/// Characters kept of a preview of an over-long or non-JSON body.
const PREVIEW: usize = 1024;

/// The activity type, or the original's message naming every allowed one.
pub fn check_type(t: &str) -> Result<&'static str, String> {
    ACTIVITY_TYPES
        .iter()
        .copied()
        .find(|a| *a == t)
        .ok_or_else(|| {
            format!(
                "invalid activity_type, must be one of: {}",
                ACTIVITY_TYPES.join(", ")
            )
        })
}

/// `s` cut to at most `max` characters.
pub fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A body as stored: JSON text as it came when it is JSON and at most [`MAX_STORED_BODY`]
/// bytes; otherwise `{"truncated": true, "bytes": n, "preview": "<its start>"}`, so the
/// column always holds valid JSON and never more than the cap.
pub fn stored_body(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if body.len() <= MAX_STORED_BODY && serde_json::from_slice::<Value>(body).is_ok() {
        return Some(String::from_utf8_lossy(body).into_owned());
    }
    let preview = String::from_utf8_lossy(&body[..body.len().min(PREVIEW * 4)]);
    Some(
        json!({
            "truncated": true,
            "bytes": body.len(),
            "preview": cut(&preview, PREVIEW),
        })
        .to_string(),
    )
}

/// [`stored_body`] of a JSON value an agent reported.
pub fn stored_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        v => stored_body(v.to_string().as_bytes()),
    }
}

/// The text parts of an A2A message (`params.message.parts` of a request, or `result.parts`
/// / `result.status.message.parts` / `result.artifacts[].parts` of an answer), joined by
/// spaces.
pub fn text_of(v: &Value) -> Option<String> {
    let parts_of = |m: &Value| -> Vec<String> {
        m.get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(String::from)
            .collect()
    };
    let candidates = [
        v.pointer("/params/message"),
        v.get("result"),
        v.pointer("/result/status/message"),
    ];
    let mut texts: Vec<String> = candidates
        .into_iter()
        .flatten()
        .flat_map(parts_of)
        .collect();
    if let Some(arts) = v.pointer("/result/artifacts").and_then(Value::as_array) {
        texts.extend(arts.iter().flat_map(parts_of));
    }
    (!texts.is_empty()).then(|| texts.join(" "))
}

/// The one-line summary of an A2A call: the method and the start of the request's text.
pub fn a2a_summary(method: &str, request: &Value) -> String {
    match text_of(request) {
        Some(t) => cut(&format!("{method}: {t}"), MAX_SUMMARY),
        None => cut(method, MAX_SUMMARY),
    }
}

/// What the proxy forwards: a JSON-RPC 2.0 request object with a string `method`. Returns the
/// parsed body and its method, or why it is refused (a 400, before anything is delivered).
pub fn check_jsonrpc(body: &[u8]) -> Result<(Value, String), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        if e.is_eof() {
            "malformed JSON-RPC: the body ends early".to_string()
        } else {
            format!(
                "malformed JSON-RPC: invalid JSON at line {} column {}",
                e.line(),
                e.column()
            )
        }
    })?;
    let Some(obj) = v.as_object() else {
        return Err("malformed JSON-RPC: the body must be a JSON object".into());
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("malformed JSON-RPC: `jsonrpc` must be \"2.0\"".into());
    }
    let method = match obj.get("method").and_then(Value::as_str) {
        Some(m) if !m.is_empty() && m.len() <= 128 && !m.chars().any(char::is_control) => {
            m.to_string()
        }
        _ => return Err("malformed JSON-RPC: `method` must be a non-empty string".into()),
    };
    if let Some(id) = obj.get("id")
        && !matches!(id, Value::String(_) | Value::Number(_) | Value::Null)
    {
        return Err("malformed JSON-RPC: `id` must be a string, a number or null".into());
    }
    Ok((v, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_with_the_original_message() {
        for t in ACTIVITY_TYPES {
            assert_eq!(check_type(t), Ok(*t));
        }
        let e = check_type("a2a_sent").expect_err("unknown");
        assert_eq!(
            e,
            "invalid activity_type, must be one of: a2a_send, a2a_receive, task_update, agent_log, skill_promotion, memory_write, error"
        );
        assert!(check_type("").is_err());
    }

    #[test]
    fn bodies_are_stored_as_json_and_capped() {
        assert_eq!(stored_body(b""), None);
        assert_eq!(stored_body(br#"{"a":1}"#).as_deref(), Some(r#"{"a":1}"#));
        let not_json: Value =
            serde_json::from_str(&stored_body(b"plain text").expect("some")).expect("json");
        assert_eq!(not_json["truncated"], true);
        assert_eq!(not_json["preview"], "plain text");
        let big = format!("\"{}\"", "x".repeat(MAX_STORED_BODY));
        let s = stored_body(big.as_bytes()).expect("some");
        assert!(s.len() < 2 * PREVIEW, "{}", s.len());
        let v: Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["bytes"], big.len());
        assert_eq!(stored_value(&Value::Null), None);
        assert_eq!(
            stored_value(&json!({"k": "v"})).as_deref(),
            Some(r#"{"k":"v"}"#)
        );
    }

    #[test]
    fn summaries_and_texts() {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {"parts": [{"kind": "text", "text": "hello"}, {"kind": "text", "text": "team"}]}}});
        assert_eq!(
            a2a_summary("message/send", &req),
            "message/send: hello team"
        );
        assert_eq!(a2a_summary("tasks/get", &json!({})), "tasks/get");
        let long = json!({"params": {"message": {"parts": [{"text": "y".repeat(1000)}]}}});
        assert_eq!(
            a2a_summary("m", &long).chars().count(),
            MAX_SUMMARY,
            "summaries are capped"
        );
        let answer =
            json!({"result": {"kind": "message", "parts": [{"kind": "text", "text": "hi"}]}});
        assert_eq!(text_of(&answer).as_deref(), Some("hi"));
        let task = json!({"result": {"status": {"message": {"parts": [{"text": "done"}]}}, "artifacts": [{"parts": [{"text": "a"}]}]}});
        assert_eq!(text_of(&task).as_deref(), Some("done a"));
        assert_eq!(text_of(&json!({"error": {}})), None);
    }

    #[test]
    fn only_json_rpc_requests_are_forwarded() {
        let ok = br#"{"jsonrpc":"2.0","id":"x","method":"message/send","params":{}}"#;
        assert_eq!(check_jsonrpc(ok).expect("ok").1, "message/send");
        for (body, needle) in [
            (&b"{not json"[..], "invalid JSON at line 1"),
            (b"{\"jsonrpc\":", "ends early"),
            (b"[1]", "must be a JSON object"),
            (br#"{"method":"m"}"#, "`jsonrpc` must be"),
            (br#"{"jsonrpc":"2.0","method":5}"#, "`method` must be"),
            (br#"{"jsonrpc":"2.0","method":""}"#, "`method` must be"),
            (br#"{"jsonrpc":"2.0","method":"m","id":{}}"#, "`id` must be"),
        ] {
            let e = check_jsonrpc(body).expect_err("refused");
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }
}
