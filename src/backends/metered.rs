//! Backend call latency for every controller at once: a [`WorkspaceBackend`] decorator the
//! controller host wraps around whichever backend it runs, recording
//! `molecule_backend_call_seconds{backend,call}` and
//! `molecule_backend_call_errors_total{backend,call,category}`.

use std::sync::Arc;
use std::time::Instant;

use super::{
    BackendError, ConfigFile, ExecOutput, Managed, Presence, StartSpec, Started, WorkspaceBackend,
    WorkspaceRef,
};
use crate::telemetry::Metrics;

/// Times every call of `inner`.
pub struct MeteredBackend {
    inner: Arc<dyn WorkspaceBackend>,
    metrics: Arc<Metrics>,
    /// The `backend` label: `docker`, `simulated`, ...
    name: &'static str,
}

impl MeteredBackend {
    pub fn new(
        inner: Arc<dyn WorkspaceBackend>,
        metrics: Arc<Metrics>,
        name: &'static str,
    ) -> Self {
        MeteredBackend {
            inner,
            metrics,
            name,
        }
    }

    async fn timed<T>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let t = Instant::now();
        let out = fut.await;
        self.metrics.observe(
            "molecule_backend_call_seconds",
            &[("backend", self.name), ("call", call)],
            t.elapsed().as_secs_f64(),
        );
        if let Err(e) = &out {
            self.metrics.inc(
                "molecule_backend_call_errors_total",
                &[
                    ("backend", self.name),
                    ("call", call),
                    ("category", e.category()),
                ],
            );
        }
        out
    }
}

#[async_trait::async_trait]
impl WorkspaceBackend for MeteredBackend {
    async fn ensure_started(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        self.timed("ensure_started", self.inner.ensure_started(spec))
            .await
    }
    async fn stop(&self, ws: &WorkspaceRef) -> Result<(), BackendError> {
        self.timed("stop", self.inner.stop(ws)).await
    }
    async fn remove(&self, ws: &WorkspaceRef, remove_volume: bool) -> Result<(), BackendError> {
        self.timed("remove", self.inner.remove(ws, remove_volume))
            .await
    }
    async fn inspect(&self, ws: &WorkspaceRef) -> Result<Presence, BackendError> {
        self.timed("inspect", self.inner.inspect(ws)).await
    }
    async fn write_files(
        &self,
        ws: &WorkspaceRef,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        self.timed("write_files", self.inner.write_files(ws, files))
            .await
    }
    async fn exec(&self, ws: &WorkspaceRef, cmd: &[String]) -> Result<ExecOutput, BackendError> {
        self.timed("exec", self.inner.exec(ws, cmd)).await
    }
    async fn list_managed(&self) -> Result<Vec<Managed>, BackendError> {
        self.timed("list_managed", self.inner.list_managed()).await
    }
    async fn remove_managed(&self, m: &Managed) -> Result<(), BackendError> {
        self.timed("remove_managed", self.inner.remove_managed(m))
            .await
    }

    async fn console(&self, ws: &WorkspaceRef) -> Result<String, BackendError> {
        self.timed("console", self.inner.console(ws)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::simulated::SimulatedBackend;

    #[tokio::test]
    async fn every_call_is_timed_and_errors_are_counted_by_category() {
        let metrics = Arc::new(Metrics::default());
        let b = MeteredBackend::new(
            Arc::new(SimulatedBackend::new()),
            metrics.clone(),
            "simulated",
        );
        let w = WorkspaceRef {
            uid: "3f2a9c1e-7b4d-4c2a-9e1f-0123456789ab".into(),
            namespace: "default".into(),
            name: "a".into(),
            instance_id: None,
        };
        assert_eq!(b.inspect(&w).await.expect("inspect"), Presence::Absent);
        b.stop(&w).await.expect("stop of nothing");
        let text = metrics.render();
        assert!(
            text.contains(
                "molecule_backend_call_seconds_count{backend=\"simulated\",call=\"inspect\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("call=\"stop\""), "{text}");
        let bad = WorkspaceRef {
            uid: String::new(),
            ..w
        };
        assert!(b.inspect(&bad).await.is_err());
        assert!(
            metrics.render().contains(
                "molecule_backend_call_errors_total{backend=\"simulated\",call=\"inspect\",category=\"Permanent\"} 1"
            ),
            "{}",
            metrics.render()
        );
    }
}
