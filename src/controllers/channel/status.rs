//! The channels' observed state (ADR 0054): every channel task and the supervisor write into
//! one in-memory board; a flusher writes each changed workspace's `status.channels` and its
//! `ChannelsReady` condition at most once per flush period, so a busy chat costs one status
//! write per period, not one per message.
//!
//! The write carries the object's `resourceVersion` (a stale copy gets a 409 and is read
//! again), because `status.conditions` is shared with the Workspace controller.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use crate::controllers::kit::Reporter;
use crate::resources::{ChannelStatus, Condition, ConditionStatus, Workspace};

/// The states a channel is in.
pub mod state {
    pub const CONNECTED: &str = "Connected";
    pub const CONNECTING: &str = "Connecting";
    pub const DISABLED: &str = "Disabled";
    pub const FAILED: &str = "Failed";
}

/// The condition type summing up a workspace's channels.
pub const CONDITION: &str = "ChannelsReady";

/// Where one channel writes: its workspace and index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub uid: String,
    pub index: usize,
}

/// One workspace's channels as last observed.
#[derive(Default)]
struct Entry {
    namespace: String,
    name: String,
    channels: BTreeMap<usize, ChannelStatus>,
    /// How many channels the spec has (the status list's length).
    len: usize,
    dirty: bool,
    /// Events to publish with the next write: (warning, reason, note).
    events: Vec<(bool, String, String)>,
    /// The failure reason last announced per channel (a retry failing the same way is not
    /// announced again).
    announced: HashMap<usize, String>,
}

/// The board; see the module docs.
#[derive(Default)]
pub struct Board {
    entries: Mutex<HashMap<String, Entry>>,
}

/// A workspace's status to write.
pub struct Pending {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub channels: Vec<ChannelStatus>,
    events: Vec<(bool, String, String)>,
}

impl Board {
    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get_mut(uid).map(f)
    }

    /// Starts tracking `ws` (seeding counters and cursors from its status) and sets its channel
    /// count; a shrunk list drops the channels past its end.
    pub fn track(&self, ws: &Workspace, uid: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let len = ws.spec.channels.len();
        let e = entries.entry(uid.to_string()).or_insert_with(|| {
            let observed = ws
                .status
                .as_ref()
                .map(|s| s.channels.clone())
                .unwrap_or_default();
            Entry {
                namespace: ws.metadata.namespace.clone().unwrap_or_default(),
                name: ws.metadata.name.clone().unwrap_or_default(),
                channels: observed
                    .into_iter()
                    .enumerate()
                    .filter(|(i, c)| ws.spec.channels.get(*i).is_some_and(|s| s.type_ == c.type_))
                    .collect(),
                len: usize::MAX,
                dirty: false,
                events: vec![],
                announced: HashMap::new(),
            }
        });
        if e.len != len {
            e.len = len;
            e.channels.retain(|i, _| *i < len);
            e.dirty = true;
        }
        for (i, spec) in ws.spec.channels.iter().enumerate() {
            let c = e.channels.entry(i).or_default();
            if c.type_ != spec.type_ {
                *c = ChannelStatus {
                    type_: spec.type_.clone(),
                    ..Default::default()
                };
                e.dirty = true;
            }
        }
    }

    /// Marks `uid` changed when what `ws` shows differs from the board: the channels, or the
    /// condition (another writer of `status.conditions` may have dropped it working from a
    /// stale copy). The write itself compares against a fresh read, so this costs no write
    /// when the watch merely lags.
    pub fn compare(&self, ws: &Workspace, uid: &str) {
        let status = ws.status.clone().unwrap_or_default();
        self.with(uid, |e| {
            let channels: Vec<ChannelStatus> = (0..e.len)
                .map(|i| e.channels.get(&i).cloned().unwrap_or_default())
                .collect();
            let want = condition(&channels).map(|c| (c.status, c.reason, c.message));
            let have = status
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION)
                .map(|c| (c.status, c.reason.clone(), c.message.clone()));
            if status.channels != channels || want != have {
                e.dirty = true;
            }
        });
    }

    /// Stops tracking a workspace that is gone.
    pub fn forget(&self, uid: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// The uids tracked.
    pub fn tracked(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn update(&self, slot: &Slot, f: impl FnOnce(&mut ChannelStatus) -> bool) {
        self.with(&slot.uid, |e| {
            if let Some(c) = e.channels.get_mut(&slot.index)
                && f(c)
            {
                e.dirty = true;
            }
        });
    }

    /// Sets a channel's state; a new failure is also an Event.
    pub fn set_state(&self, slot: &Slot, state: &str, reason: &str, message: &str) {
        self.with(&slot.uid, |e| {
            let Some(c) = e.channels.get_mut(&slot.index) else {
                return;
            };
            if state == state::FAILED {
                if e.announced.get(&slot.index).map(String::as_str) != Some(reason) {
                    e.announced.insert(slot.index, reason.to_string());
                    let note = format!("channel {} ({}): {message}", slot.index, c.type_);
                    e.events.push((true, reason.to_string(), note));
                }
            } else if state != state::CONNECTING {
                e.announced.remove(&slot.index);
            }
            let same = c.state.as_deref() == Some(state)
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message);
            if !same {
                c.state = Some(state.to_string());
                c.reason = Some(reason.to_string());
                c.message = Some(message.to_string());
                e.dirty = true;
            }
        });
    }

    /// A channel's state (`None` when untracked or never set).
    pub fn state(&self, slot: &Slot) -> Option<String> {
        self.get(slot).and_then(|c| c.state)
    }

    /// Counts a message delivered to the workspace.
    pub fn received(&self, slot: &Slot) {
        self.update(slot, |c| {
            c.message_count += 1;
            c.last_message_at = Some(crate::util::now_rfc3339());
            true
        });
    }

    /// Counts a message from someone not allowed.
    pub fn ignored(&self, slot: &Slot) {
        self.update(slot, |c| {
            c.ignored_count += 1;
            true
        });
    }

    /// Records the last update handled.
    pub fn set_cursor(&self, slot: &Slot, id: i64) {
        self.update(slot, |c| {
            if c.last_update_id.is_some_and(|l| l >= id) {
                return false;
            }
            c.last_update_id = Some(id);
            true
        });
    }

    /// Where a channel resumes.
    pub fn cursor(&self, slot: &Slot) -> Option<i64> {
        self.with(&slot.uid, |e| {
            e.channels.get(&slot.index).and_then(|c| c.last_update_id)
        })
        .flatten()
    }

    /// A channel's current status (tests and the supervisor).
    pub fn get(&self, slot: &Slot) -> Option<ChannelStatus> {
        self.with(&slot.uid, |e| e.channels.get(&slot.index).cloned())
            .flatten()
    }

    /// Takes every changed workspace's status, clearing the dirty marks.
    pub fn take_dirty(&self) -> Vec<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(uid, e)| {
                e.dirty = false;
                Pending {
                    uid: uid.clone(),
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    channels: (0..e.len)
                        .map(|i| e.channels.get(&i).cloned().unwrap_or_default())
                        .collect(),
                    events: std::mem::take(&mut e.events),
                }
            })
            .collect()
    }

    /// Marks a workspace changed again (its write failed).
    pub fn redo(&self, p: Pending) {
        self.with(&p.uid, |e| {
            e.dirty = true;
            e.events.extend(p.events);
        });
    }
}

/// The `ChannelsReady` condition of `channels` (None without channels).
pub fn condition(channels: &[ChannelStatus]) -> Option<Condition> {
    if channels.is_empty() {
        return None;
    }
    let failed = channels
        .iter()
        .enumerate()
        .find(|(_, c)| c.state.as_deref() == Some(state::FAILED));
    if let Some((i, c)) = failed {
        return Some(Condition::new(
            CONDITION,
            ConditionStatus::False,
            c.reason.as_deref().unwrap_or("Failed"),
            format!(
                "channel {i} ({}): {}",
                c.type_,
                c.message.as_deref().unwrap_or("")
            ),
        ));
    }
    let waiting = channels.iter().enumerate().find(|(_, c)| {
        c.state.as_deref() != Some(state::CONNECTED) && c.state.as_deref() != Some(state::DISABLED)
    });
    if let Some((i, c)) = waiting {
        return Some(Condition::new(
            CONDITION,
            ConditionStatus::False,
            c.reason.as_deref().unwrap_or("Connecting"),
            format!("channel {i} ({}) is not connected yet", c.type_),
        ));
    }
    let connected = channels
        .iter()
        .filter(|c| c.state.as_deref() == Some(state::CONNECTED))
        .count();
    Some(Condition::new(
        CONDITION,
        ConditionStatus::True,
        "Connected",
        format!(
            "{connected} of {} channels connected, the rest disabled",
            channels.len()
        ),
    ))
}

/// Writes one workspace's channels and condition; on a 409 reads it again, up to 3 times.
/// Answers false when the write should be retried later.
pub async fn write(client: &kube::Client, reporter: &Reporter, p: &Pending) -> bool {
    let api: Api<Workspace> = Api::namespaced(client.clone(), &p.namespace);
    for _ in 0..3 {
        let ws = match api.get_opt(&p.name).await {
            Ok(Some(ws)) if ws.metadata.uid.as_deref() == Some(p.uid.as_str()) => ws,
            Ok(_) => return true, // gone, or another object of that name
            Err(_) => return false,
        };
        if ws.metadata.deletion_timestamp.is_some() {
            return true;
        }
        let status = ws.status.clone().unwrap_or_default();
        let mut conditions = status.conditions.clone();
        match condition(&p.channels) {
            Some(c) => Condition::upsert(&mut conditions, c, &crate::util::now_rfc3339()),
            None => conditions.retain(|c| c.type_ != CONDITION),
        }
        if status.channels == p.channels && status.conditions == conditions && p.events.is_empty() {
            return true;
        }
        let body = json!({
            "metadata": {"resourceVersion": ws.metadata.resource_version},
            "status": {"channels": p.channels, "conditions": conditions},
        });
        match api
            .patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                for (warning, reason, note) in &p.events {
                    let t = if *warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    };
                    reporter.event(&ws, t, reason, note.clone());
                }
                return true;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return true,
            Err(e) => {
                tracing::warn!(workspace = %p.name, error = %e, "writing the channels' status failed; will retry");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ChannelSpec;

    fn ws(types: &[&str]) -> Workspace {
        let mut w = Workspace::new("w", Default::default());
        w.metadata.namespace = Some("ns".into());
        w.spec.channels = types
            .iter()
            .map(|t| ChannelSpec {
                type_: t.to_string(),
                enabled: true,
                ..Default::default()
            })
            .collect();
        w
    }

    #[test]
    fn counters_coalesce_into_one_pending_write() {
        let b = Board::default();
        b.track(&ws(&["telegram"]), "u");
        let s = Slot {
            uid: "u".into(),
            index: 0,
        };
        assert_eq!(b.take_dirty().len(), 1, "a new channel is written once");
        for _ in 0..5 {
            b.received(&s);
        }
        b.ignored(&s);
        b.set_cursor(&s, 9);
        b.set_cursor(&s, 3);
        let p = b.take_dirty();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].channels[0].message_count, 5);
        assert_eq!(p[0].channels[0].ignored_count, 1);
        assert_eq!(
            p[0].channels[0].last_update_id,
            Some(9),
            "the cursor never goes back"
        );
        assert!(b.take_dirty().is_empty(), "nothing new, nothing to write");
    }

    #[test]
    fn counters_and_cursors_survive_a_restart_when_the_type_still_matches() {
        let mut w = ws(&["telegram", "slack"]);
        w.status = Some(crate::resources::WorkspaceStatus {
            channels: vec![
                ChannelStatus {
                    type_: "telegram".into(),
                    message_count: 4,
                    last_update_id: Some(77),
                    ..Default::default()
                },
                ChannelStatus {
                    type_: "discord".into(),
                    message_count: 9,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let b = Board::default();
        b.track(&w, "u");
        assert_eq!(
            b.cursor(&Slot {
                uid: "u".into(),
                index: 0
            }),
            Some(77)
        );
        let second = b
            .get(&Slot {
                uid: "u".into(),
                index: 1,
            })
            .expect("tracked");
        assert_eq!((second.type_.as_str(), second.message_count), ("slack", 0));
    }

    #[test]
    fn a_failure_is_an_event_once_and_the_condition_names_it() {
        let b = Board::default();
        b.track(&ws(&["telegram", "telegram"]), "u");
        let s = Slot {
            uid: "u".into(),
            index: 1,
        };
        b.set_state(
            &Slot {
                uid: "u".into(),
                index: 0,
            },
            state::CONNECTED,
            "Connected",
            "ok",
        );
        b.set_state(&s, state::FAILED, "InvalidToken", "refused");
        b.set_state(&s, state::CONNECTING, "Connecting", "again");
        b.set_state(&s, state::FAILED, "InvalidToken", "refused");
        let p = b.take_dirty();
        assert_eq!(p[0].events.len(), 1, "{:?}", p[0].events);
        let c = condition(&p[0].channels).expect("condition");
        assert_eq!(
            (c.status, c.reason.as_deref()),
            (ConditionStatus::False, Some("InvalidToken"))
        );
        assert!(
            c.message
                .as_deref()
                .unwrap_or("")
                .starts_with("channel 1 (telegram)")
        );
        let ok = condition(&[
            ChannelStatus {
                state: Some("Connected".into()),
                ..Default::default()
            },
            ChannelStatus {
                state: Some("Disabled".into()),
                ..Default::default()
            },
        ])
        .expect("c");
        assert_eq!(ok.status, ConditionStatus::True);
        assert!(condition(&[]).is_none());
    }

    #[test]
    fn a_dropped_condition_is_written_again() {
        let b = Board::default();
        let mut w = ws(&["telegram"]);
        b.track(&w, "u");
        let s = Slot {
            uid: "u".into(),
            index: 0,
        };
        b.set_state(&s, state::CONNECTED, "Connected", "ok");
        let p = b.take_dirty();
        w.status = Some(crate::resources::WorkspaceStatus {
            channels: p[0].channels.clone(),
            conditions: vec![condition(&p[0].channels).expect("condition")],
            ..Default::default()
        });
        b.compare(&w, "u");
        assert!(b.take_dirty().is_empty(), "what is shown is what is known");
        w.status.as_mut().unwrap().conditions.clear();
        b.compare(&w, "u");
        assert_eq!(b.take_dirty().len(), 1, "a lost condition is written again");
    }

    #[test]
    fn a_shrunk_list_drops_the_tail() {
        let b = Board::default();
        b.track(&ws(&["telegram", "telegram"]), "u");
        b.take_dirty();
        b.track(&ws(&["telegram"]), "u");
        let p = b.take_dirty();
        assert_eq!(p[0].channels.len(), 1);
    }
}
