//! HTTP endpoints beside the Kubernetes API: the agent-facing `/registry/*`, the REST shim that
//! speaks the original platform's JSON to its canvas, the live event stream (`/ws` and its SSE
//! twin) and the built-in canvas page at `/`.
//!
//! Handlers write records and read status through a `kube::Client` (the index in `cache` is fed
//! by a watch); they never touch Docker, so the same code serves an embedded or an external API
//! server.

pub mod a2a;
pub mod activity;
pub mod auth;
pub mod bundles;
pub mod cache;
pub mod canvas;
pub mod channels;
pub mod delegations;
pub mod discovery;
pub mod error;
pub mod events;
pub mod images;
pub mod input;
pub mod org;
pub mod plugin_download;
pub mod plugins;
pub mod registry;
pub mod schedules;
pub mod secrets;
pub mod teams;
pub mod test_tokens;
pub use crate::teams::tree;
pub mod view;
pub mod workspaces;
pub mod ws;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use tokio::sync::broadcast;

use crate::telemetry::Metrics;

/// How many stream messages a client may fall behind before it is dropped.
pub const STREAM_BACKLOG: usize = 4096;

/// What the shim needs from `serve` (or any other host).
pub struct ShimSettings {
    /// A client of the API server (embedded or external).
    pub client: kube::Client,
    /// The admin token: the API bearer token.
    pub token: String,
    /// Where `GET /events` reads the audit log.
    pub audit: crate::audit::Audit,
    /// Namespace of workspaces created without a parent, of `/settings/secrets` and of the
    /// canvas viewport.
    pub namespace: String,
    /// The local plugin registry listed by `GET /plugins`.
    pub plugin_root: PathBuf,
    /// Git hosts a workspace's own token may install plugins from (ADR 0038).
    pub plugin_git_hosts: crate::plugins::git_hosts::GitHosts,
    /// The org template root and `!external` settings (`GET /org/templates`, `POST /org/import`).
    pub org_templates: crate::orgtemplate::Options,
    pub metrics: Arc<Metrics>,
    /// Stream messages a client may fall behind before it is dropped (`STREAM_BACKLOG`).
    pub backlog: usize,
    /// Development mode (`MOLECULE_ENV` is not `production`): `GET
    /// /admin/workspaces/:id/test-token` mints workspace tokens (ADR 0049).
    pub development: bool,
    /// The shared Workspace cache's changes (ADR 0025): the shim's index follows them.
    pub workspaces: crate::feed::Feed<crate::resources::Workspace>,
}

/// Shared state of every shim handler.
pub struct Shim {
    pub client: kube::Client,
    admin_hash: [u8; 32],
    pub audit: crate::audit::Audit,
    pub namespace: String,
    pub plugin_root: PathBuf,
    pub plugin_git_hosts: crate::plugins::git_hosts::GitHosts,
    pub org_templates: crate::orgtemplate::Options,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<cache::Cache>,
    pub events: broadcast::Sender<Arc<cache::Outgoing>>,
    pub shutdown: crate::shutdown::Shutdown,
    /// Whether development-only routes are served.
    pub development: bool,
    /// `/registry/*` over this shim's index (ADR 0049).
    registry: Arc<registry::RegistryState>,
}

impl Shim {
    /// Starts the watch that feeds the index and the stream; it stops on `shutdown`.
    pub fn start(s: ShimSettings, shutdown: crate::shutdown::Shutdown) -> Arc<Shim> {
        let (events, _) = broadcast::channel(s.backlog.max(1));
        let cache: Arc<cache::Cache> = Arc::default();
        let registry = Arc::new(registry::RegistryState {
            client: s.client.clone(),
            workspaces: registry::WorkspaceIndex::Shim(cache.clone()),
            metrics: s.metrics.clone(),
        });
        let shim = Arc::new(Shim {
            client: s.client,
            admin_hash: crate::tokens::digest(&s.token),
            audit: s.audit,
            namespace: s.namespace,
            plugin_root: s.plugin_root,
            plugin_git_hosts: s.plugin_git_hosts,
            org_templates: s.org_templates,
            metrics: s.metrics,
            cache,
            events,
            shutdown,
            development: s.development,
            registry,
        });
        tokio::spawn(cache::run(
            shim.client.clone(),
            s.workspaces,
            shim.cache.clone(),
            shim.events.clone(),
            shim.metrics.clone(),
            shim.shutdown.clone(),
        ));
        shim
    }

    /// The state of `/registry/*` on the shim's port: workspaces are looked up in the shim's
    /// index, so the routes answer whatever controllers run.
    pub fn registry(&self) -> Arc<registry::RegistryState> {
        self.registry.clone()
    }

    /// The REST shim, the stream and the canvas page.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(canvas::index))
            .route(
                "/canvas/viewport",
                get(canvas::get_viewport).put(canvas::put_viewport),
            )
            .route("/canvas/{file}", get(canvas::asset))
            .route("/health", get(health))
            .route(
                "/workspaces",
                get(workspaces::list).post(workspaces::create),
            )
            .route(
                "/workspaces/{id}",
                get(workspaces::get)
                    .patch(workspaces::update)
                    .delete(workspaces::delete),
            )
            .route("/workspaces/{id}/restart", post(workspaces::restart))
            .route("/workspaces/{id}/pause", post(workspaces::pause))
            .route("/workspaces/{id}/resume", post(workspaces::resume))
            .route(
                "/workspaces/{id}/secrets",
                get(secrets::list).post(secrets::set).put(secrets::set),
            )
            .route("/workspaces/{id}/secrets/{key}", delete(secrets::remove))
            .route("/workspaces/{id}/channels", get(channels::list))
            .route(
                "/workspaces/{id}/channels/{index}",
                axum::routing::patch(channels::set_enabled),
            )
            .route(
                "/settings/secrets",
                get(secrets::list_global)
                    .put(secrets::set_global)
                    .post(secrets::set_global),
            )
            .route("/settings/secrets/{key}", delete(secrets::remove_global))
            .route(
                "/workspaces/{id}/schedules",
                get(schedules::list).post(schedules::create),
            )
            .route(
                "/workspaces/{id}/schedules/{schedule_id}",
                axum::routing::patch(schedules::update).delete(schedules::remove),
            )
            .route(
                "/workspaces/{id}/schedules/{schedule_id}/run",
                post(schedules::run),
            )
            .route(
                "/workspaces/{id}/schedules/{schedule_id}/history",
                get(schedules::history),
            )
            .route("/plugins", get(plugins::catalog))
            .route(
                "/workspaces/{id}/plugins",
                get(plugins::list).post(plugins::install),
            )
            .route(
                "/workspaces/{id}/plugins/{name}",
                delete(plugins::uninstall),
            )
            .route("/admin/workspaces/{id}/test-token", get(test_tokens::mint))
            .route("/admin/plugin-updates-pending", get(plugins::pending))
            .route("/admin/plugin-updates/{id}/apply", post(plugins::apply))
            .route("/org/templates", get(org::templates))
            .route("/org/import", post(org::import))
            .route("/bundles/export/{id}", get(bundles::export))
            .route("/bundles/import", post(bundles::import))
            .route("/events", get(events::list))
            .route("/events/stream", get(ws::sse))
            .route("/events/{workspace_id}", get(events::for_workspace))
            .route("/workspaces/{id}/events/stream", get(ws::sse_workspace))
            .route("/ws", get(ws::websocket))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                count_requests,
            ))
            .with_state(self.clone())
    }
}

async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `molecule_shim_requests_total{route,code}` on `/metrics`.
async fn count_requests(
    State(shim): State<Arc<Shim>>,
    path: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = path
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    // A fixed set of method labels (ADR 0041).
    let method = crate::telemetry::method_label(req.method());
    let resp = next.run(req).await;
    let code = resp.status().as_u16().to_string();
    shim.metrics.inc(
        "molecule_shim_requests_total",
        &[("method", method), ("route", &route), ("code", &code)],
    );
    resp
}
