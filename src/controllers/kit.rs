//! The controller kit (ADR 0045): what every controller does the same way around a reconcile.
//!
//! - [`Reconciler`] wraps one pass: a tracing span, the `molecule_reconcile_*` metrics, and the
//!   error policy with per-object exponential backoff on `backon` (dropped after a success).
//! - [`finalized`] runs a pass under a finalizer and maps kube's finalizer errors to the
//!   controller's own error enum (through [`FinalizerError`]).
//! - [`Reporter`] writes the status fields a controller owns (a merge patch, skipped when
//!   nothing changed) and publishes Events off the reconcile's critical path.
//!
//! A reconcile then reads as named steps — observe → validate → plan → act → report — with the
//! kit around it (see the Workspace controller).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{self, Event as Finalize};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::telemetry::Metrics;

/// An error a controller's reconcile can end with.
pub trait Failure: std::error::Error + Send + Sync + 'static {
    /// The Event reason and the `category` metric label.
    fn category(&self) -> &'static str;
}

/// The queue key of an object: `namespace/name`, or `name` for cluster-scoped kinds.
pub fn key<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Per-object retry delays: exponential with jitter between `min` and `max`, one sequence per
/// key, started over once the key is reset.
pub struct Backoff {
    min: Duration,
    max: Duration,
    delays: Mutex<HashMap<String, backon::ExponentialBackoff>>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            delays: Mutex::default(),
        }
    }

    /// The next delay of `key`'s sequence.
    pub fn next(&self, key: &str) -> Duration {
        use backon::BackoffBuilder;
        self.delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_insert_with(|| {
                backon::ExponentialBuilder::default()
                    .with_min_delay(self.min)
                    .with_max_delay(self.max)
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(self.max)
    }

    /// Starts `key`'s sequence over.
    pub fn reset(&self, key: &str) {
        self.delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Whether `key` has a sequence running (tests).
    pub fn is_backing_off(&self, key: &str) -> bool {
        self.delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }
}

/// One controller's reconcile wrapper: span, metrics and error policy.
pub struct Reconciler {
    controller: &'static str,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    reset_on_success: bool,
}

impl Reconciler {
    /// A wrapper labelled `controller` whose failed objects back off with `backoff`.
    pub fn new(controller: &'static str, metrics: Arc<Metrics>, backoff: Backoff) -> Self {
        Reconciler {
            controller,
            metrics,
            backoff,
            reset_on_success: true,
        }
    }

    /// The pass resets the backoff itself (a controller whose successful passes may still be
    /// retrying something, e.g. an unreachable image source).
    pub fn manual_reset(mut self) -> Self {
        self.reset_on_success = false;
        self
    }

    pub fn controller(&self) -> &'static str {
        self.controller
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Runs one pass over `object` in a `reconcile` span, counts and times it, and drops the
    /// object's backoff after a success.
    pub async fn run<K, E>(
        &self,
        object: &K,
        pass: impl Future<Output = Result<Action, E>>,
    ) -> Result<Action, E>
    where
        K: Resource,
    {
        self.run_keyed(&key(object), pass).await
    }

    /// [`Reconciler::run`] for a pass that is about no one object (the reaper's): `key` names
    /// it in the span and in the backoff.
    pub async fn run_keyed<T, E>(
        &self,
        key: &str,
        pass: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let span = tracing::info_span!("reconcile", controller = self.controller, object = %key);
        let started = Instant::now();
        let result = pass.instrument(span).await;
        if result.is_ok() && self.reset_on_success {
            self.backoff.reset(key);
        }
        self.metrics.inc(
            "molecule_reconcile_total",
            &[
                ("controller", self.controller),
                ("result", if result.is_ok() { "ok" } else { "error" }),
            ],
        );
        self.metrics.observe(
            "molecule_reconcile_seconds",
            &[("controller", self.controller)],
            started.elapsed().as_secs_f64(),
        );
        result
    }

    /// The error policy: counts the error by category and requeues the object after its next
    /// backoff delay.
    pub fn retry<K: Resource, E: Failure>(&self, object: &K, err: &E) -> Action {
        Action::requeue(self.retry_keyed(&key(object), err))
    }

    /// [`Reconciler::retry`] by key; returns the delay.
    pub fn retry_keyed<E: Failure>(&self, key: &str, err: &E) -> Duration {
        self.metrics.inc(
            "molecule_reconcile_errors_total",
            &[
                ("controller", self.controller),
                ("category", err.category()),
            ],
        );
        let delay = self.backoff.next(key);
        tracing::warn!(controller = self.controller, object = %key, category = err.category(), error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed; will retry");
        delay
    }
}

/// A failure of kube's finalizer bookkeeping (adding or removing the finalizer), not of the
/// controller's own apply or cleanup.
#[derive(Debug, thiserror::Error)]
#[error("finalizer error: {0}")]
pub struct FinalizerError(pub String);

/// Runs `pass` under the finalizer `name`: `Finalize::Apply` while the object lives,
/// `Finalize::Cleanup` once it is being deleted (the finalizer is removed after a successful
/// cleanup). The apply's and cleanup's own errors come back as they are; a 404 while removing
/// the finalizer is success (another pass released the object already; it is gone, which is
/// what the cleanup was for).
pub async fn finalized<K, E, Fut>(
    api: &Api<K>,
    name: &str,
    object: Arc<K>,
    pass: impl FnOnce(Finalize<K>) -> Fut,
) -> Result<Action, E>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    Fut: Future<Output = Result<Action, E>>,
    E: std::error::Error + From<FinalizerError> + 'static,
{
    finalizer::finalizer(api, name, object, pass)
        .await
        .or_else(map_finalizer_error)
}

/// The mapping [`finalized`] applies.
pub fn map_finalizer_error<E>(e: finalizer::Error<E>) -> Result<Action, E>
where
    E: std::error::Error + From<FinalizerError> + 'static,
{
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => Err(e),
        finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) if s.code == 404 => {
            Ok(Action::await_change())
        }
        other => Err(FinalizerError(other.to_string()).into()),
    }
}

/// Writes the status fields one controller owns and publishes its Events.
#[derive(Clone)]
pub struct Reporter {
    client: Client,
    recorder: Recorder,
    action: &'static str,
    fields: &'static [&'static str],
}

impl Reporter {
    /// A reporter for the controller `controller` (the Events' reporting controller, e.g.
    /// `molecule-workspace`), whose Events carry `action` and whose status patches hold exactly
    /// `fields`.
    pub fn new(
        client: Client,
        controller: &str,
        action: &'static str,
        fields: &'static [&'static str],
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: controller.into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self::with_recorder(
            client.clone(),
            Recorder::new(client, reporter),
            action,
            fields,
        )
    }

    /// A reporter publishing through `recorder`.
    pub fn with_recorder(
        client: Client,
        recorder: Recorder,
        action: &'static str,
        fields: &'static [&'static str],
    ) -> Self {
        Reporter {
            client,
            recorder,
            action,
            fields,
        }
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The owned part of `status` as the body of a merge patch (`null` for unset fields).
    pub fn owned<S: Serialize>(&self, status: &S) -> Value {
        super::report::owned_fields(status, self.fields)
    }

    /// Writes the owned fields of `next` unless they equal those of `before` (no write, no
    /// watch event). `extra` fields are merged into the patch and force the write. Returns
    /// whether it wrote.
    pub async fn status<K, S>(
        &self,
        object: &K,
        before: &S,
        next: &S,
        extra: Option<Value>,
    ) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        let mut owned = self.owned(next);
        if extra.is_none() && owned == self.owned(before) {
            return Ok(false);
        }
        if let (Some(Value::Object(extra)), Some(o)) = (extra, owned.as_object_mut()) {
            o.extend(extra);
        }
        let body = serde_json::json!({ "status": owned });
        let meta = object.meta();
        let request = kube::core::Request::new(K::url_path(&(), meta.namespace.as_deref()))
            .patch_subresource(
                "status",
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(body),
            )
            .map_err(kube::Error::BuildRequest)?;
        // The answer is the whole object; nothing here reads it, so it is not parsed.
        self.client.request_text(request).await?;
        Ok(true)
    }

    /// Publishes an Event about `object` in the background (Events explain, they never gate
    /// progress).
    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        super::report::publish(
            &self.recorder,
            object.object_ref(&()),
            type_,
            reason,
            note,
            self.action,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_key_and_starts_over_after_a_reset() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next("a");
        assert!(first >= Duration::from_millis(100), "{first:?}");
        let mut last = first;
        for _ in 0..10 {
            last = b.next("a");
        }
        // Capped at max plus the jitter (at most another min).
        assert!(last <= Duration::from_millis(2_000), "{last:?}");
        assert!(last >= Duration::from_secs(1), "{last:?}");
        assert!(
            b.next("b") < Duration::from_millis(250),
            "keys are independent"
        );
        b.reset("a");
        assert!(!b.is_backing_off("a"));
        assert!(b.next("a") < Duration::from_millis(250));
    }

    #[test]
    fn keys_name_namespaced_and_cluster_objects() {
        let mut w = crate::resources::Workspace::new("w", Default::default());
        assert_eq!(key(&w), "w");
        w.metadata.namespace = Some("ns".into());
        assert_eq!(key(&w), "ns/w");
    }

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error(transparent)]
        Fin(#[from] FinalizerError),
        #[error("own")]
        Own,
    }

    #[test]
    fn finalizer_errors_map_to_the_controllers_enum() {
        let own = map_finalizer_error(finalizer::Error::<E>::ApplyFailed(E::Own));
        assert!(matches!(own, Err(E::Own)));
        let gone = map_finalizer_error(finalizer::Error::<E>::RemoveFinalizer(kube::Error::Api(
            kube::core::Status::failure("gone", "NotFound")
                .with_code(404)
                .boxed(),
        )));
        assert!(gone.is_ok());
        let other = map_finalizer_error(finalizer::Error::<E>::UnnamedObject);
        assert!(
            matches!(&other, Err(E::Fin(f)) if f.to_string().starts_with("finalizer error")),
            "{other:?}"
        );
    }
}
