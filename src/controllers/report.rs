//! What every controller does the same way around a pass: it starts from the record as it is
//! now (ADR 0028), and reports back the fields of status it owns, as a merge patch, and
//! Kubernetes Events published off the reconcile's critical path.

use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The record `cached` stands for, read again from the API: None when it is gone or was
/// re-created under the same name (another uid; its own events follow). A pass queued while
/// an earlier one ran can start before the watch cache holds that pass's writes.
pub async fn fresh<K>(api: &Api<K>, cached: &K) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let meta = cached.meta();
    let Some(name) = meta.name.as_deref() else {
        return Ok(None);
    };
    Ok(api
        .get_opt(name)
        .await?
        .filter(|f| f.meta().uid.is_some() && f.meta().uid == meta.uid))
}

/// The status fields a controller owns, as the body of a merge patch: every field of `fields`
/// is present, set from `status` or `null` (so a value the next status dropped is removed),
/// and no other field is touched (fields another writer owns — heartbeats, drift bookkeeping —
/// are left alone).
pub fn owned_fields(status: &impl Serialize, fields: &[&str]) -> Value {
    let v = serde_json::to_value(status).unwrap_or(Value::Null);
    Value::Object(
        fields
            .iter()
            .map(|f| (f.to_string(), v.get(*f).cloned().unwrap_or(Value::Null)))
            .collect(),
    )
}

/// Publishes an Event about `object` in the background: Events explain, they never gate
/// progress, so the reconcile does not wait for the API round trip. A failure is logged.
pub fn publish(
    recorder: &Recorder,
    object: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    let recorder = recorder.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &object).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct S {
        phase: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        other: u32,
    }

    #[test]
    fn owned_fields_are_all_present_and_nothing_else() {
        let s = S {
            phase: Some("Online".into()),
            url: None,
            other: 7,
        };
        assert_eq!(
            owned_fields(&s, &["phase", "url"]),
            serde_json::json!({"phase": "Online", "url": null})
        );
    }
}
