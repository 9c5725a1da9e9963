//! The embedded Kubernetes-compatible API server: discovery, OpenAPI v3, CRUD, patch (merge,
//! JSON, server-side apply), the status subresource, watch, finalizers and ownerReference
//! garbage collection, Table output, label and field selectors, bearer-token auth.
//! It follows what kubectl and client-go expect of a real kube-apiserver; the ADRs record
//! where it differs.

pub mod apply;
pub mod discovery;
pub mod error;
pub mod http;
pub mod listener;
pub mod objects;
pub mod openapi;
pub mod openapi_v2;
pub mod protobuf;
pub mod registry;
pub mod selectors;
pub mod table;
pub mod validation;
mod varint;
pub mod verbs;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::store::{SecretKey, Store};
use crate::telemetry::Metrics;
use objects::{LoadError, Objects, ObjectsConfig, WriteReply};
use openapi::OpenApi;
use registry::Registry;

/// Default cap on request bodies (the real apiserver's is 3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;

/// Settings of the embedded API server.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub max_body: usize,
    pub bookmark_every: Duration,
    /// How often garbage collection and Event expiry run.
    pub sweep_every: Duration,
    pub event_ttl_secs: i64,
    pub objects: ObjectsConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body: DEFAULT_MAX_BODY,
            bookmark_every: Duration::from_secs(60),
            sweep_every: Duration::from_secs(30),
            event_ttl_secs: 3600,
            objects: ObjectsConfig::default(),
        }
    }
}

/// Shared state of the API server.
pub struct ApiServer {
    pub registry: Arc<Registry>,
    pub objects: Arc<Objects>,
    pub openapi: OpenApi,
    /// The protobuf OpenAPI v2 document (kubectl 1.27's field-validation check).
    pub openapi_v2: axum::body::Bytes,
    pub token: String,
    pub max_body: usize,
    pub bookmark_every: Duration,
    /// host:port clients reach us on (for /api's serverAddressByClientCIDRs).
    pub server_addr: String,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl ApiServer {
    /// Loads the store and prepares the server (the `default` namespace exists afterwards).
    pub async fn start(
        store: Arc<dyn Store>,
        key: SecretKey,
        token: String,
        server_addr: String,
        config: ApiConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, LoadError> {
        let registry = Arc::new(Registry::new(&crate::resources::all_crds()));
        let objects = Objects::start(store, key, config.objects.clone()).await?;
        let api = Arc::new(ApiServer {
            openapi: OpenApi::build(&registry),
            openapi_v2: axum::body::Bytes::from(openapi_v2::document(&registry)),
            registry,
            objects,
            token,
            max_body: config.max_body,
            bookmark_every: config.bookmark_every,
            server_addr,
            metrics,
            ready: AtomicBool::new(false),
        });
        api.ensure_namespace("default").await;
        api.sweep(config.event_ttl_secs).await;
        tokio::spawn(sweeper(
            api.clone(),
            config.sweep_every,
            config.event_ttl_secs,
        ));
        api.ready.store(true, Ordering::SeqCst);
        Ok(api)
    }

    /// Whether start-up finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    async fn ensure_namespace(&self, name: &str) {
        let Some(def) = self.registry.find("", "v1", "namespaces") else {
            return;
        };
        let key = (def.storage.clone(), String::new(), name.to_string());
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let r = self
            .objects
            .write(
                false,
                Box::new(move |txn| {
                    if txn.get(&key).is_none() {
                        let mut o = obj;
                        verbs::create(txn, &def, &key, o.take(), "molecule", None)?;
                        // Namespaces keep their status on create (normalize sets it).
                        if let Some(stored) = txn.get(&key) {
                            let mut s = (*stored).clone();
                            s["status"] = json!({"phase": "Active"});
                            txn.put(&key, s);
                        }
                    }
                    Ok(WriteReply::ok(json!({})))
                }),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, namespace = name, "could not create namespace");
        }
    }

    /// One garbage-collection and Event-expiry pass.
    pub async fn sweep(&self, event_ttl_secs: i64) {
        let reg = self.registry.clone();
        let r = self
            .objects
            .write(
                false,
                Box::new(move |txn| {
                    let gc = verbs::collect_garbage(txn, &reg)?;
                    let expired = verbs::expire_events(txn, "core/events", event_ttl_secs);
                    Ok(WriteReply::ok(json!({"collected": gc, "expired": expired})))
                }),
            )
            .await;
        match r {
            Ok(r) if r.body["collected"].as_u64().unwrap_or(0) > 0 => {
                tracing::info!(collected = %r.body["collected"], "garbage collected objects whose owners are gone")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }

    /// Prometheus text for /metrics.
    pub fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.set(
            "molecule_apiserver_objects",
            &[],
            self.objects.count() as f64,
        );
        self.metrics.set(
            "molecule_apiserver_resource_version",
            &[],
            self.objects.rv() as f64,
        );
        self.metrics.set(
            "molecule_store_batches",
            &[],
            self.objects.stats.batches.load(Relaxed) as f64,
        );
        self.metrics.set(
            "molecule_store_writes",
            &[],
            self.objects.stats.writes.load(Relaxed) as f64,
        );
        self.metrics.set(
            "molecule_store_failures",
            &[],
            self.objects.stats.failures.load(Relaxed) as f64,
        );
        self.metrics.render()
    }

    /// The axum router serving every Kubernetes path.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .fallback(http::handle)
            .with_state(self.clone())
    }

    /// A kube client whose requests go straight to [`Self::router`], in this process: no
    /// socket, no TLS, no HTTP framing (ADR 0058). `serve` hosts its controllers, the shim and
    /// the Workspace cache on it. Requests carry the admin token like any other client's, so
    /// they pass the same authentication, routes and metrics.
    pub fn in_process_client(self: &Arc<Self>) -> kube::Client {
        use axum::http::{HeaderValue, Request, header::AUTHORIZATION};
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let service = tower::ServiceBuilder::new()
            .map_request(move |mut req: Request<kube::client::Body>| {
                req.headers_mut().insert(AUTHORIZATION, auth.clone());
                req
            })
            .service(self.router());
        kube::Client::new(service, "default")
    }
}

async fn sweeper(api: Arc<ApiServer>, every: Duration, ttl: i64) {
    let mut t = tokio::time::interval(every);
    t.tick().await;
    loop {
        t.tick().await;
        api.sweep(ttl).await;
    }
}
