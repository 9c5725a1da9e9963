//! The Telegram adapter on the Bot API wire protocol (ADR 0054): `getMe` checks the token,
//! `getUpdates` long-polls with `offset` (which also confirms every earlier update to
//! Telegram), `sendMessage {chat_id, text}` answers. The token is part of every URL
//! (`{base}/bot<token>/<method>`), so it is redacted from every error text.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use hyper::http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::adapter::{Adapter, AdapterError, Inbound, Update};
use crate::net::http::{Client, Timeouts};

/// The real Bot API.
pub const DEFAULT_BASE: &str = "https://api.telegram.org";
/// Seconds a `getUpdates` call waits for a message.
const POLL_SECONDS: u64 = 25;
/// Largest Bot API answer read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// A Telegram bot.
pub struct Telegram {
    base: String,
    token: String,
    poll_seconds: u64,
    http: Client,
}

/// The Bot API's envelope: `{"ok": true, "result": ...}` or `{"ok": false, "error_code",
/// "description"}`.
#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct RawUpdate {
    update_id: i64,
    #[serde(default)]
    message: Option<RawMessage>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    from: Option<RawUser>,
    chat: RawChat,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawUser {
    id: i64,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct RawChat {
    id: i64,
}

impl Telegram {
    /// A bot for `token`; `config.base_url` (default the real Bot API) and
    /// `config.poll_timeout_seconds` (1..=50, default 25) may be set.
    pub fn new(config: &BTreeMap<String, String>, token: String) -> Result<Telegram, AdapterError> {
        let base = config
            .get("base_url")
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_BASE.to_string());
        if crate::net::http::Url::parse(&base).is_err() {
            return Err(AdapterError::InvalidConfig(format!(
                "config.base_url {base:?} is not an http(s) URL"
            )));
        }
        let poll_seconds = match config.get("poll_timeout_seconds") {
            None => POLL_SECONDS,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=50).contains(s))
                .ok_or_else(|| {
                    AdapterError::InvalidConfig(
                        "config.poll_timeout_seconds must be a number from 1 to 50".into(),
                    )
                })?,
        };
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(AdapterError::InvalidToken(
                "the bot token is malformed (empty, or holds spaces or '/')".into(),
            ));
        }
        let wait = Duration::from_secs(poll_seconds + 15);
        Ok(Telegram {
            base,
            token,
            poll_seconds,
            http: Client::new(Timeouts {
                response_header: wait,
                body: wait,
                ..Timeouts::default()
            }),
        })
    }

    fn url(&self, method: &str) -> String {
        format!("{}/bot{}/{method}", self.base, self.token)
    }

    /// `text` without the token.
    fn redact(&self, text: &str) -> String {
        text.replace(&self.token, "<token>")
    }

    /// Calls `method`; answers `result`.
    async fn call(
        &self,
        method: &str,
        query: &str,
        body: Option<Value>,
    ) -> Result<Value, AdapterError> {
        let url = format!("{}{query}", self.url(method));
        let (verb, body) = match body {
            Some(b) => (
                Method::POST,
                Some((Bytes::from(b.to_string()), "application/json")),
            ),
            None => (Method::GET, None),
        };
        let r = self
            .http
            .send(
                verb,
                &url,
                &[("accept", "application/json")],
                body,
                MAX_BODY,
            )
            .await
            .map_err(|e| {
                AdapterError::Unreachable(
                    self.redact(&format!("the Bot API at {}: {e}", self.host())),
                )
            })?;
        let env: Envelope = crate::net::http::first_json(&r.body).map_err(|_| {
            AdapterError::Protocol(format!(
                "the Bot API at {} answered HTTP {} without its JSON envelope",
                self.host(),
                r.status
            ))
        })?;
        if env.ok {
            return Ok(env.result);
        }
        let code = env.error_code.unwrap_or(i64::from(r.status));
        let what = self.redact(env.description.as_deref().unwrap_or("no description"));
        Err(match code {
            401 | 404 if method == "getMe" => AdapterError::InvalidToken(format!(
                "the Bot API refused the bot token ({code} {what}); set a valid token in the Secret named by configFrom"
            )),
            401 => AdapterError::InvalidToken(format!(
                "the Bot API refused the bot token ({code} {what})"
            )),
            _ => AdapterError::Protocol(format!("{method} failed: {code} {what}")),
        })
    }

    /// The base URL's host and port, for messages.
    fn host(&self) -> String {
        crate::net::http::Url::parse(&self.base)
            .map(|u| u.authority)
            .unwrap_or_default()
    }
}

/// Parses a `getUpdates` result.
fn updates(result: Value) -> Result<Vec<Update>, AdapterError> {
    let raw: Vec<RawUpdate> = serde_json::from_value(result).map_err(|e| {
        AdapterError::Protocol(format!("getUpdates answered an unexpected shape: {e}"))
    })?;
    Ok(raw
        .into_iter()
        .map(|u| Update {
            id: u.update_id,
            message: u.message.and_then(|m| {
                let from = m.from?;
                Some(Inbound {
                    user_id: from.id.to_string(),
                    username: from.username,
                    chat_id: m.chat.id,
                    text: m.text?,
                })
            }),
        })
        .collect())
}

#[async_trait]
impl Adapter for Telegram {
    async fn connect(&self) -> Result<String, AdapterError> {
        let me = self.call("getMe", "", None).await?;
        Ok(me
            .get("username")
            .and_then(Value::as_str)
            .map(|u| format!("@{u}"))
            .unwrap_or_else(|| "the bot".into()))
    }

    async fn poll(&self, after: Option<i64>) -> Result<Vec<Update>, AdapterError> {
        let mut query = format!("?timeout={}", self.poll_seconds);
        if let Some(a) = after {
            query.push_str(&format!("&offset={}", a.saturating_add(1)));
        }
        updates(self.call("getUpdates", &query, None).await?)
    }

    async fn send(&self, chat_id: i64, text: &str) -> Result<(), AdapterError> {
        self.call(
            "sendMessage",
            "",
            Some(json!({"chat_id": chat_id, "text": text})),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot(config: &[(&str, &str)]) -> Result<Telegram, AdapterError> {
        Telegram::new(
            &config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "123:SECRET".into(),
        )
    }

    #[test]
    fn urls_carry_the_token_and_errors_do_not() {
        let t = bot(&[("base_url", "http://127.0.0.1:9/")]).expect("bot");
        assert_eq!(t.url("getMe"), "http://127.0.0.1:9/bot123:SECRET/getMe");
        assert_eq!(
            t.redact("GET /bot123:SECRET/getMe"),
            "GET /bot<token>/getMe"
        );
        assert_eq!(t.host(), "127.0.0.1:9");
        assert_eq!(bot(&[]).expect("default").base, DEFAULT_BASE);
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(matches!(
            bot(&[("base_url", "ftp://x")]),
            Err(AdapterError::InvalidConfig(_))
        ));
        assert!(matches!(
            bot(&[("poll_timeout_seconds", "0")]),
            Err(AdapterError::InvalidConfig(_))
        ));
        assert!(matches!(
            Telegram::new(&BTreeMap::new(), "a b".into()),
            Err(AdapterError::InvalidToken(_))
        ));
    }

    #[test]
    fn updates_parse_messages_and_skip_other_events() {
        let got = updates(json!([
            {"update_id": 5, "message": {"message_id": 1, "from": {"id": 42, "username": "al"}, "chat": {"id": -9}, "text": "hi"}},
            {"update_id": 6, "edited_message": {}},
            {"update_id": 7, "message": {"message_id": 2, "chat": {"id": 1}, "text": "channel post"}}
        ]))
        .expect("parsed");
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0].message,
            Some(Inbound {
                user_id: "42".into(),
                username: Some("al".into()),
                chat_id: -9,
                text: "hi".into()
            })
        );
        assert_eq!((got[1].id, got[1].message.is_none()), (6, true));
        assert!(got[2].message.is_none());
        assert!(updates(json!({"not": "a list"})).is_err());
    }
}
