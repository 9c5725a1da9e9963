//! Docker's event stream, narrowed to our managed containers and volumes: the fast trigger of
//! the Workspace controller (a container died) and of the orphan reaper (a stray appeared).

use std::collections::HashMap;

use futures::{Stream, StreamExt};

use super::ManagedKind;
use super::docker::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_NAME, LABEL_NAMESPACE, LABEL_UID};

/// One change to a managed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendEvent {
    pub kind: ManagedKind,
    /// Docker's action: `create`, `start`, `die`, `oom`, `stop`, `destroy`, ...
    pub action: String,
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

fn subscribe(
    docker: &bollard::Docker,
    instance: &str,
) -> impl Stream<Item = BackendEvent> + Send + use<> {
    let mut filters = HashMap::new();
    // Label filters are ANDed by the engine: managed objects of this installation only.
    filters.insert(
        "label".to_string(),
        vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_INSTANCE}={instance}"),
        ],
    );
    filters.insert(
        "type".to_string(),
        vec!["container".to_string(), "volume".to_string()],
    );
    let opts = bollard::query_parameters::EventsOptions {
        since: None,
        until: None,
        filters: Some(filters),
    };
    docker
        .events(Some(opts))
        .take_while(|m| futures::future::ready(m.is_ok()))
        .filter_map(|m| async move {
            let m = m.ok()?;
            let kind = match m.typ.map(|t| t.to_string()).as_deref() {
                Some("container") => ManagedKind::Container,
                Some("volume") => ManagedKind::Volume,
                _ => return None,
            };
            let attrs = m.actor.and_then(|a| a.attributes).unwrap_or_default();
            Some(BackendEvent {
                kind,
                action: m
                    .action
                    .unwrap_or_default()
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_string(),
                uid: attrs.get(LABEL_UID).cloned().unwrap_or_default(),
                namespace: attrs.get(LABEL_NAMESPACE).cloned().unwrap_or_default(),
                name: attrs.get(LABEL_NAME).cloned().unwrap_or_default(),
            })
        })
}

/// Events of the managed objects of installation `instance`, forever: when the stream breaks
/// (engine restart, lost connection) it re-subscribes after a short pause.
pub fn managed_events(
    docker: bollard::Docker,
    instance: String,
) -> impl Stream<Item = BackendEvent> + Send + 'static {
    futures::stream::unfold(
        (docker, instance, false),
        |(docker, instance, pause)| async move {
            if pause {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            let s = subscribe(&docker, &instance);
            Some((s, (docker, instance, true)))
        },
    )
    .flatten()
}
