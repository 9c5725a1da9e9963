//! A Telegram Bot API on 127.0.0.1 speaking the real JSON shapes: `/bot<token>/getMe`,
//! `getUpdates` (long poll with `offset` and `timeout`; updates below `offset` are confirmed
//! and dropped, as Telegram does), `sendMessage {chat_id, text}`; an unknown token gets
//! `{"ok":false,"error_code":401,"description":"Unauthorized"}`. Tests make users write
//! ([`FakeTelegram::user_writes`]) and read what the bot sent.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{Reply, Request, serve};

#[derive(Default)]
struct State {
    /// Updates not confirmed yet.
    pending: Vec<Value>,
    next_update: i64,
    /// (chat_id, text) of every sendMessage.
    sent: Vec<(i64, String)>,
    /// getUpdates calls with a valid token.
    polls: usize,
    /// The `offset` of every getUpdates call with a valid token.
    offsets: Vec<Option<i64>>,
    /// Every request path with the token cut out.
    paths: Vec<String>,
}

/// A running fake Bot API.
#[derive(Clone)]
pub struct FakeTelegram {
    /// `http://127.0.0.1:<port>`, the adapter's `base_url`.
    pub base: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

fn ok(result: Value) -> Reply {
    Reply::new(
        200,
        &[("Content-Type", "application/json")],
        json!({"ok": true, "result": result}).to_string(),
    )
}

fn error(code: u16, description: &str) -> Reply {
    Reply::new(
        code,
        &[("Content-Type", "application/json")],
        json!({"ok": false, "error_code": code, "description": description}).to_string(),
    )
}

fn query_param(query: &str, name: &str) -> Option<i64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

impl FakeTelegram {
    /// Starts the API; only `token` is a valid bot token.
    pub fn start(token: &str) -> FakeTelegram {
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        state.0.lock().unwrap().next_update = 1000;
        let token = token.to_string();
        let st = state.clone();
        let addr = serve(Arc::new(move |req: &Request| handle(&st, &token, req)));
        FakeTelegram {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// A user writes `text` in chat `chat_id`; answers the update id.
    pub fn user_writes(&self, user_id: i64, username: &str, chat_id: i64, text: &str) -> i64 {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.next_update += 1;
        let id = s.next_update;
        s.pending.push(json!({
            "update_id": id,
            "message": {
                "message_id": id - 1000,
                "from": {"id": user_id, "is_bot": false, "first_name": username, "username": username},
                "chat": {"id": chat_id, "type": "private"},
                "date": 1_700_000_000,
                "text": text,
            }
        }));
        cv.notify_all();
        id
    }

    /// Every (chat_id, text) the bot sent.
    pub fn sent(&self) -> Vec<(i64, String)> {
        self.state.0.lock().unwrap().sent.clone()
    }

    /// How many getUpdates calls a valid token made.
    pub fn polls(&self) -> usize {
        self.state.0.lock().unwrap().polls
    }

    /// The `offset` of every getUpdates call so far.
    pub fn offsets(&self) -> Vec<Option<i64>> {
        self.state.0.lock().unwrap().offsets.clone()
    }

    /// Every request path, the token replaced by `<token>` (a refused one by `<refused>`).
    pub fn paths(&self) -> Vec<String> {
        self.state.0.lock().unwrap().paths.clone()
    }
}

fn handle(state: &Arc<(Mutex<State>, Condvar)>, token: &str, req: &Request) -> Reply {
    let Some((given, method)) = req
        .path
        .strip_prefix("/bot")
        .and_then(|r| r.split_once('/'))
    else {
        return error(404, "Not Found");
    };
    let (lock, cv) = &**state;
    let valid = given == token;
    let who = if valid { "<token>" } else { "<refused>" };
    lock.lock()
        .unwrap()
        .paths
        .push(format!("/bot{who}/{method}"));
    if !valid {
        return error(401, "Unauthorized");
    }
    match method {
        "getMe" => {
            ok(json!({"id": 1, "is_bot": true, "first_name": "Fake", "username": "fake_bot"}))
        }
        "getUpdates" => {
            let offset = query_param(&req.query, "offset");
            let wait = Duration::from_secs(
                query_param(&req.query, "timeout").unwrap_or(0).clamp(0, 5) as u64,
            );
            let deadline = Instant::now() + wait;
            let mut s = lock.lock().unwrap();
            s.polls += 1;
            s.offsets.push(offset);
            loop {
                if let Some(o) = offset {
                    s.pending
                        .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= o);
                }
                let now = Instant::now();
                if !s.pending.is_empty() || now >= deadline {
                    return ok(Value::Array(s.pending.clone()));
                }
                s = cv.wait_timeout(s, deadline - now).unwrap().0;
            }
        }
        "sendMessage" => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let (Some(chat), Some(text)) = (body["chat_id"].as_i64(), body["text"].as_str()) else {
                return error(400, "Bad Request: chat_id and text are required");
            };
            let mut s = lock.lock().unwrap();
            s.sent.push((chat, text.to_string()));
            let id = s.sent.len();
            ok(json!({"message_id": id, "chat": {"id": chat}, "text": text}))
        }
        _ => error(404, "Not Found"),
    }
}
