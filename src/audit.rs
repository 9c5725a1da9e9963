//! The audit log: append-only structured events (`org.import.started`, `workspace.deleted`, …)
//! that controllers record and the shim lists. Rows go to the store's audit table (SQLite in
//! embedded mode, Postgres from `DATABASE_URL` in cluster mode). Without a store the rows only
//! reach the log. A failed write never fails a reconcile: it is logged and counted.

use std::sync::Arc;

use serde_json::Value;

use crate::store::{AuditRow, Store};

/// Where controllers record audit rows; cheap to clone.
#[derive(Clone, Default)]
pub struct Audit {
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .finish()
    }
}

impl Audit {
    /// Records into `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Audit { store: Some(store) }
    }

    /// Records nowhere but the log.
    pub fn log_only() -> Self {
        Audit { store: None }
    }

    /// Appends one row: `event` about the object `namespace/name`, with `data` (a JSON object;
    /// never put a secret in it).
    pub async fn record(&self, event: &str, namespace: &str, name: &str, data: Value) {
        tracing::info!(audit = event, namespace, name, data = %data, "audit");
        let Some(store) = &self.store else {
            return;
        };
        let row = AuditRow {
            at: crate::util::now_micro(),
            event: event.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            data: data.to_string(),
        };
        if let Err(e) = store.audit(&row).await {
            tracing::warn!(audit = event, error = %e, "could not write an audit row");
        }
    }

    /// Rows, oldest first, optionally only one event name; empty without a store.
    pub async fn rows(
        &self,
        event: Option<&str>,
    ) -> Result<Vec<AuditRow>, crate::store::StoreError> {
        match &self.store {
            Some(s) => s.audit_rows(event).await,
            None => Ok(vec![]),
        }
    }
}

/// `GET /audit?event=&namespace=&name=`: audit rows, oldest first, as
/// `{"items": [{"at", "event", "namespace", "name", "data"}]}`. Requires the API bearer token.
pub fn router(audit: Audit, token: String) -> axum::Router {
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use std::collections::HashMap;

    #[derive(Clone)]
    struct Route {
        audit: Audit,
        token: Arc<str>,
    }

    async fn list(
        State(r): State<Route>,
        headers: HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        let got = crate::tokens::bearer(&headers).unwrap_or("");
        if !crate::tokens::same_token(got, &r.token) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "a valid bearer token is required"})),
            )
                .into_response();
        }
        let rows = match r.audit.rows(q.get("event").map(String::as_str)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading audit rows failed");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(serde_json::json!({"error": "the audit log could not be read"})),
                )
                    .into_response();
            }
        };
        let items: Vec<Value> = rows
            .into_iter()
            .filter(|r| q.get("namespace").is_none_or(|n| *n == r.namespace))
            .filter(|r| q.get("name").is_none_or(|n| *n == r.name))
            .map(|r| {
                serde_json::json!({
                    "at": r.at,
                    "event": r.event,
                    "namespace": r.namespace,
                    "name": r.name,
                    "data": serde_json::from_str::<Value>(&r.data).unwrap_or(Value::String(r.data)),
                })
            })
            .collect();
        axum::Json(serde_json::json!({ "items": items })).into_response()
    }

    axum::Router::new()
        .route("/audit", axum::routing::get(list))
        .with_state(Route {
            audit,
            token: token.into(),
        })
}
