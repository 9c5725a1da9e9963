//! The condition shape shared by every kind (the Kubernetes `metav1.Condition` convention).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

/// One observation about an object. `lastTransitionTime` changes only when `status` flips.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`, `ConfigReady`, `ImageReady`, `Healthy`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// One CamelCase word saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable, sanitized message (never a secret, never a raw driver error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition with the given type, status, reason and message.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status,
            reason: Some(reason.to_string()),
            message: Some(message.into()),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    /// Inserts or replaces `new` in `conditions` by type, keeping the previous
    /// `lastTransitionTime` unless the status flipped (then `now` is used).
    pub fn upsert(conditions: &mut Vec<Condition>, mut new: Condition, now: &str) {
        match conditions.iter_mut().find(|c| c.type_ == new.type_) {
            Some(old) => {
                new.last_transition_time = if old.status == new.status {
                    old.last_transition_time
                        .clone()
                        .or_else(|| Some(now.to_string()))
                } else {
                    Some(now.to_string())
                };
                *old = new;
            }
            None => {
                new.last_transition_time = Some(now.to_string());
                conditions.push(new);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_transition_time_unless_status_flips() {
        let mut cs = vec![];
        Condition::upsert(
            &mut cs,
            Condition::new("Ready", ConditionStatus::False, "Starting", "x"),
            "t1",
        );
        Condition::upsert(
            &mut cs,
            Condition::new("Ready", ConditionStatus::False, "Starting", "y"),
            "t2",
        );
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t1"));
        assert_eq!(cs[0].message.as_deref(), Some("y"));
        Condition::upsert(
            &mut cs,
            Condition::new("Ready", ConditionStatus::True, "Online", "z"),
            "t3",
        );
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(cs.len(), 1);
    }
}
