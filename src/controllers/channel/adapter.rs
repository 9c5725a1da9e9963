//! The adapter framework (ADR 0054): what a chat network has to offer — check the credentials,
//! wait for inbound messages after a cursor, send a message to a chat — and the one run loop
//! every adapter shares: allowed users' messages go to the workspace as platform messages
//! (`Teams::send_platform_message`), the answer goes back to the chat, anyone else's message
//! is ignored and counted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::status::{Board, Slot, state};
use crate::controllers::kit::Backoff;
use crate::resources::ChannelSpec;

/// Adapter types this build has.
pub const SUPPORTED: &[&str] = &["telegram"];

/// One inbound event of a chat network, after `cursor` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The network's monotonic id (Telegram: `update_id`); the next poll starts after it.
    pub id: i64,
    /// `None` for events that carry no text message (edits, joins, ...).
    pub message: Option<Inbound>,
}

/// A text message from a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub user_id: String,
    pub username: Option<String>,
    pub chat_id: i64,
    pub text: String,
}

/// Why an adapter call failed. Texts never hold a token.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdapterError {
    #[error("{0}")]
    InvalidToken(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Protocol(String),
}

impl AdapterError {
    /// The status reason.
    pub fn reason(&self) -> &'static str {
        match self {
            AdapterError::InvalidToken(_) => "InvalidToken",
            AdapterError::InvalidConfig(_) => "InvalidConfig",
            AdapterError::Unreachable(_) => "Unreachable",
            AdapterError::Protocol(_) => "ProtocolError",
        }
    }
}

/// One chat network.
#[async_trait]
pub trait Adapter: Send + Sync {
    /// Checks the credentials; answers a display name of the bot.
    async fn connect(&self) -> Result<String, AdapterError>;
    /// Waits (long-polls) for the updates after `after`.
    async fn poll(&self, after: Option<i64>) -> Result<Vec<Update>, AdapterError>;
    /// Sends `text` to `chat_id`.
    async fn send(&self, chat_id: i64, text: &str) -> Result<(), AdapterError>;
}

/// Builds the adapter of `spec.type_` with `token`.
pub fn build(spec: &ChannelSpec, token: String) -> Result<Box<dyn Adapter>, AdapterError> {
    match spec.type_.as_str() {
        "telegram" => Ok(Box::new(super::telegram::Telegram::new(
            &spec.config,
            token,
        )?)),
        other => Err(AdapterError::InvalidConfig(unsupported(other))),
    }
}

/// The message of a channel whose type has no adapter.
pub fn unsupported(kind: &str) -> String {
    format!(
        "channel type {kind:?} is not supported (supported: {})",
        SUPPORTED.join(", ")
    )
}

/// Sends a message to the workspace and answers the agent's reply (or a text to show the user).
pub type Deliver = Arc<dyn Fn(String) -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Whether `msg`'s sender is listed in `allowed` (by numeric id, or by username with or
/// without `@`, case-insensitively).
pub fn allowed(allowed: &[String], msg: &Inbound) -> bool {
    allowed.iter().any(|a| {
        let a = a.trim();
        a == msg.user_id
            || msg
                .username
                .as_deref()
                .is_some_and(|u| !u.is_empty() && a.trim_start_matches('@').eq_ignore_ascii_case(u))
    })
}

/// Why the token could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct NoSecret(pub String);

/// Reads the channel's token from its `configFrom` Secret in `namespace`.
pub async fn token(
    client: &kube::Client,
    namespace: &str,
    spec: &ChannelSpec,
) -> Result<String, NoSecret> {
    let Some(sel) = spec.config_from.as_ref().filter(|s| !s.name.is_empty()) else {
        return Err(NoSecret(
            "the channel has no configFrom naming the Secret that holds its token".into(),
        ));
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(&sel.name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(NoSecret(format!(
                "Secret {namespace}/{} does not exist",
                sel.name
            )));
        }
        Err(_) => {
            return Err(NoSecret(format!(
                "Secret {namespace}/{} could not be read",
                sel.name
            )));
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&sel.key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&sel.key))
                .map(|s| s.trim().to_string())
        })
        .filter(|v| !v.is_empty());
    value.ok_or_else(|| {
        NoSecret(format!(
            "Secret {namespace}/{} has no key {:?}",
            sel.name, sel.key
        ))
    })
}

/// Longest text sent in one chat message (Telegram's limit, in characters).
const MAX_CHAT_TEXT: usize = 4096;

/// Most chat messages one answer becomes (an agent's answer may be megabytes).
const MAX_PIECES: usize = 5;

/// `text` in at most [`MAX_PIECES`] pieces of at most [`MAX_CHAT_TEXT`] characters (one piece
/// for an empty text); a longer answer ends with a note that it was cut.
pub fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec!["(the agent answered with no text)".into()];
    }
    let mut out: Vec<String> = chars
        .chunks(MAX_CHAT_TEXT)
        .take(MAX_PIECES)
        .map(|c| c.iter().collect())
        .collect();
    if chars.len() > MAX_CHAT_TEXT * MAX_PIECES {
        out.push(format!(
            "(the answer was cut after {} characters)",
            MAX_CHAT_TEXT * MAX_PIECES
        ));
    }
    out
}

/// Everything one channel task needs.
pub struct Task {
    pub client: kube::Client,
    pub namespace: String,
    pub spec: ChannelSpec,
    pub slot: Slot,
    pub board: Arc<Board>,
    pub deliver: Deliver,
}

/// Runs one channel until aborted: reads the token, connects, polls, answers; a failure is
/// reported on the board and retried after a growing delay.
pub async fn run(task: Task) {
    let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    loop {
        // A retry after a failure keeps showing the failure until it connects.
        if task.board.state(&task.slot).as_deref() != Some(state::FAILED) {
            task.board.set_state(
                &task.slot,
                state::CONNECTING,
                "Connecting",
                "connecting to the chat network",
            );
        }
        match session(&task, &backoff).await {
            // The token Secret changed: connect again with the new token at once.
            Ok(()) => continue,
            Err((reason, message)) => {
                task.board
                    .set_state(&task.slot, state::FAILED, reason, &message)
            }
        }
        tokio::time::sleep(backoff.next("")).await;
    }
}

/// How often a connected channel reads its token Secret again (a rotated token is used from
/// the next poll after it is seen).
const TOKEN_RECHECK: Duration = Duration::from_secs(10);

/// One connection: ends with the reason and message of its failure, or `Ok` when the token in
/// the Secret changed (rotated). A connection that was made starts the retry delays over.
async fn session(task: &Task, backoff: &Backoff) -> Result<(), (&'static str, String)> {
    let read = || async {
        token(&task.client, &task.namespace, &task.spec)
            .await
            .map_err(|NoSecret(m)| ("SecretNotFound", m))
    };
    let token = read().await?;
    let fingerprint = crate::tokens::digest(&token);
    let adapter = build(&task.spec, token).map_err(|e| (e.reason(), e.to_string()))?;
    let bot = adapter
        .connect()
        .await
        .map_err(|e| (e.reason(), e.to_string()))?;
    let note = if task.spec.allowed_users.is_empty() {
        format!("connected as {bot}; allowedUsers is empty, so every message is ignored")
    } else {
        format!("connected as {bot}")
    };
    task.board
        .set_state(&task.slot, state::CONNECTED, "Connected", &note);
    backoff.reset("");
    let mut cursor = task.board.cursor(&task.slot);
    let mut checked = std::time::Instant::now();
    loop {
        if checked.elapsed() >= TOKEN_RECHECK {
            checked = std::time::Instant::now();
            if crate::tokens::digest(&read().await?) != fingerprint {
                tracing::info!(namespace = %task.namespace, "a channel's token Secret changed; reconnecting with the new token");
                return Ok(());
            }
        }
        let updates = adapter
            .poll(cursor)
            .await
            .map_err(|e| (e.reason(), e.to_string()))?;
        for u in updates {
            cursor = Some(cursor.map_or(u.id, |c| c.max(u.id)));
            if let Some(msg) = u.message {
                handle(task, adapter.as_ref(), msg).await;
            }
            task.board.set_cursor(&task.slot, u.id);
        }
    }
}

/// One inbound message: delivered and answered, or ignored and counted.
async fn handle(task: &Task, adapter: &dyn Adapter, msg: Inbound) {
    if !allowed(&task.spec.allowed_users, &msg) {
        task.board.ignored(&task.slot);
        return;
    }
    task.board.received(&task.slot);
    let answer = match (task.deliver)(msg.text.clone()).await {
        Ok(a) => a,
        Err(e) => format!("The workspace could not answer: {e}"),
    };
    for piece in pieces(&answer) {
        if let Err(e) = adapter.send(msg.chat_id, &piece).await {
            tracing::warn!(error = %e, "a channel reply could not be sent");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, name: Option<&str>) -> Inbound {
        Inbound {
            user_id: id.into(),
            username: name.map(String::from),
            chat_id: 1,
            text: "hi".into(),
        }
    }

    #[test]
    fn users_are_allowed_by_id_or_username_only() {
        let list = vec!["42".to_string(), "@Alice".to_string()];
        assert!(allowed(&list, &msg("42", None)));
        assert!(allowed(&list, &msg("7", Some("alice"))));
        assert!(!allowed(&list, &msg("7", Some("bob"))));
        assert!(!allowed(&list, &msg("420", None)));
        assert!(!allowed(&[], &msg("42", Some("alice"))));
        assert!(!allowed(&["@".to_string()], &msg("1", Some(""))));
    }

    #[test]
    fn long_answers_are_split_and_empty_ones_say_so() {
        let long = "x".repeat(MAX_CHAT_TEXT + 10);
        let p = pieces(&long);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].len(), 10);
        assert_eq!(pieces("").len(), 1);
        let huge = pieces(&"y".repeat(MAX_CHAT_TEXT * 50));
        assert_eq!(huge.len(), MAX_PIECES + 1);
        assert!(huge[MAX_PIECES].starts_with("(the answer was cut"));
        assert_eq!(pieces("ok"), vec!["ok".to_string()]);
    }

    #[test]
    fn an_unknown_type_names_the_supported_ones() {
        let spec = ChannelSpec {
            type_: "slack".into(),
            ..Default::default()
        };
        let e = build(&spec, "t".into()).err().expect("refused");
        assert!(e.to_string().contains("supported: telegram"), "{e}");
    }
}
