//! The audit log: append-only structured events (`org.import.started`, `workspace.deleted`, …)
//! that controllers record and the shim lists. Rows go to the store's audit table (SQLite in
//! embedded mode, Postgres from `DATABASE_URL` in cluster mode). Without a store the rows only
//! reach the log. A failed write never fails a reconcile: it is logged and counted.

use std::sync::Arc;

use serde_json::Value;

use crate::store::{AuditFilter, AuditRow, Store};

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

    /// The store rows go to, if any (the activity log shares it, ADR 0050).
    pub fn store(&self) -> Option<Arc<dyn Store>> {
        self.store.clone()
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
            id: 0,
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

    /// The newest `limit` rows matching `filter`, newest first (filtered and limited in SQL);
    /// empty without a store.
    pub async fn query(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRow>, crate::store::StoreError> {
        match &self.store {
            Some(s) => s.audit_query(filter, limit).await,
            None => Ok(vec![]),
        }
    }

    /// Deletes the rows older than `keep` once now and then every `every`, until `shutdown`
    /// (ADR 0042). Failures are logged and retried at the next tick.
    pub fn spawn_retention(
        &self,
        keep: std::time::Duration,
        every: std::time::Duration,
        shutdown: crate::shutdown::Shutdown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let store = self.store.clone()?;
        Some(tokio::spawn(async move {
            let stop = shutdown.wait();
            tokio::pin!(stop);
            loop {
                let cutoff = crate::store::audit_cutoff(keep);
                match store.audit_prune(&cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(removed = n, before = %cutoff, "audit retention removed old rows")
                    }
                    Err(e) => tracing::warn!(error = %e, "audit retention failed; retrying later"),
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }))
    }
}

/// Default and largest `limit` of `GET /audit`.
const AUDIT_LIMIT: usize = 1_000;
const AUDIT_MAX_LIMIT: usize = 10_000;

/// `GET /audit?event=&namespace=&name=&limit=`: the newest `limit` audit rows (default 1000),
/// oldest first, as
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
        let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
            None => AUDIT_LIMIT,
            Some(Ok(n)) if (1..=AUDIT_MAX_LIMIT).contains(&n) => n,
            Some(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": format!("query `limit` must be between 1 and {AUDIT_MAX_LIMIT}")})),
                )
                    .into_response();
            }
        };
        let filter = AuditFilter {
            event: q.get("event").cloned(),
            namespace: q.get("namespace").cloned(),
            name: q.get("name").cloned(),
            workspace: None,
        };
        let mut rows = match r.audit.query(&filter, limit).await {
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
        // The newest `limit`, listed oldest first.
        rows.reverse();
        let items: Vec<Value> = rows
            .into_iter()
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
