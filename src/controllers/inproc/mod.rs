//! In-process tests of the controllers (ADR 0045): each runs on the harness — the embedded
//! API server and the simulated backend, no Docker.

mod channel;
mod feed;
mod kubernetes;
mod org_import;
mod plugin;
mod reaper;
mod runtime;
mod schedule;
mod tokens;
mod workspace;
mod workspace_gets;

use std::time::Duration;

use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;

use crate::testing::harness::Harness;

/// How long a test waits for the controllers to converge.
const CONVERGE: Duration = Duration::from_secs(20);

/// An object of kind `K` from its JSON form.
fn object<K: DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).expect("a valid object")
}

/// Creates `obj` through `api`.
async fn create<K>(api: &Api<K>, obj: &K) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), obj)
        .await
        .expect("create")
}

/// Waits until `name` satisfies `pred`; panics with its last state otherwise.
async fn wait_for<K>(api: &Api<K>, name: &str, pred: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let got = Harness::eventually(CONVERGE, || async {
        api.get_opt(name).await.ok().flatten().filter(|o| pred(o))
    })
    .await;
    match got {
        Some(o) => o,
        None => panic!(
            "{name} did not converge; last state: {:#?}",
            api.get_opt(name).await
        ),
    }
}

/// Waits until the object is gone.
async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let gone = Harness::eventually(CONVERGE, || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "{name} was not deleted: {:#?}",
        api.get_opt(name).await
    );
}

/// Waits for an Event about `name` with `reason`; returns (type, note).
async fn wait_event(h: &Harness, ns: Option<&str>, name: &str, reason: &str) -> (String, String) {
    let found = Harness::eventually(CONVERGE, || async {
        h.events(ns, name)
            .await
            .into_iter()
            .find(|(_, r, _)| r == reason)
            .map(|(t, _, n)| (t, n))
    })
    .await;
    match found {
        Some(e) => e,
        None => panic!(
            "no {reason} Event about {name}; events: {:#?}",
            h.events(ns, name).await
        ),
    }
}

/// The condition `type_` of a list of conditions.
fn condition<'a>(
    conditions: &'a [crate::resources::Condition],
    type_: &str,
) -> &'a crate::resources::Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#?}"))
}

/// The first line of the metrics text for `name` carrying every one of `labels`.
fn metric_line(h: &Harness, name: &str, labels: &[&str]) -> Option<String> {
    h.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .map(str::to_string)
}
