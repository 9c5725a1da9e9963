//! The busy queue and delegations in the store (ADR 0051): one table each, written in
//! transactions so that a `kill -9` of the server never leaves a queue item and its delegation
//! disagreeing, and a restart finds every row in a state it can finish.
//!
//! Both backends share the SQL (written with `?` placeholders, numbered for Postgres) through
//! one macro, so the two implementations cannot drift apart.

use async_trait::async_trait;

use super::StoreError;

/// Priority of an ordinary queued call (the original's "task" level); higher drains first.
pub const PRIORITY_TASK: i64 = 50;
/// Highest priority a caller may ask for.
pub const PRIORITY_MAX: i64 = 100;

/// A call to queue for a busy workspace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewQueueItem {
    pub workspace_id: String,
    pub caller_id: Option<String>,
    pub priority: i64,
    /// The JSON-RPC request as received.
    pub body: String,
    pub method: Option<String>,
    /// A second push with the same key, while the first is queued or dispatched, returns it.
    pub idempotency_key: Option<String>,
    /// The delegation this call carries, if any (its status follows the item).
    pub delegation_id: Option<String>,
    pub expires_ms: Option<i64>,
}

/// One queued call as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueItem {
    pub seq: i64,
    pub id: String,
    pub workspace_id: String,
    pub caller_id: Option<String>,
    pub priority: i64,
    pub body: String,
    pub method: Option<String>,
    pub delegation_id: Option<String>,
    /// `queued`, `dispatched`, `completed`, `failed` or `expired`.
    pub status: String,
    pub attempts: i64,
    pub enqueued_ms: i64,
    pub expires_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub response_status: Option<i64>,
    pub response_preview: Option<String>,
    pub last_error: Option<String>,
}

/// How a dispatched queue item ended.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueOutcome {
    /// The agent answered; `ok` is false for an agent-reported error (its delegation fails).
    Answered {
        status: i64,
        ok: bool,
        preview: String,
        error: Option<String>,
    },
    /// Not delivered (the agent could not be reached): back to `queued` unless it used up
    /// its attempts, then `failed`.
    Retry { error: String, max_attempts: i64 },
}

/// A delegation as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Delegation {
    pub seq: i64,
    pub id: String,
    pub source_id: String,
    pub target_id: String,
    pub task: String,
    /// `pending`, `dispatched`, `queued`, `completed` or `failed`.
    pub status: String,
    /// `platform` (POST /delegate: the platform sends it) or `agent` (recorded by an agent that
    /// called its peer itself).
    pub origin: String,
    pub idempotency_key: Option<String>,
    pub queue_id: Option<String>,
    pub error: Option<String>,
    pub response_preview: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A delegation to create.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewDelegation {
    /// Given by the agent for a recorded delegation; a new uuid otherwise.
    pub id: Option<String>,
    pub source_id: String,
    pub target_id: String,
    pub task: String,
    pub idempotency_key: Option<String>,
    /// `platform` starts `pending`; `agent` starts `dispatched`.
    pub origin: &'static str,
}

/// What a restart found unfinished, after settling it in one transaction (ADR 0051).
#[derive(Debug, Default)]
pub struct Recovered {
    /// Queue items that were being delivered when the server died: now `failed`.
    pub interrupted: Vec<QueueItem>,
    /// Platform delegations that were in flight (or whose queue item was): now `failed`.
    pub failed: Vec<Delegation>,
    /// Platform delegations never sent: to be sent now.
    pub pending: Vec<Delegation>,
}

/// The text a restart leaves on what it interrupted.
pub const INTERRUPTED: &str =
    "the platform restarted while this was being delivered; the target may have done the work";

/// Queue and delegation rows; implemented by both backends.
#[async_trait]
pub trait TeamsStore: Send + Sync {
    /// Queues a call; returns (its id, the workspace's queued depth, whether it already
    /// existed under the idempotency key). A delegation it carries goes `queued`.
    async fn queue_push(
        &self,
        item: &NewQueueItem,
        now_ms: i64,
    ) -> Result<(String, i64, bool), StoreError>;
    /// Takes the next live item of a workspace (priority desc, then FIFO) and marks it
    /// `dispatched`.
    async fn queue_claim(
        &self,
        workspace_id: &str,
        now_ms: i64,
    ) -> Result<Option<QueueItem>, StoreError>;
    /// Settles a dispatched item (and its delegation, in the same transaction); returns the
    /// item and the delegation when it changed.
    async fn queue_finish(
        &self,
        id: &str,
        outcome: &QueueOutcome,
        now_ms: i64,
    ) -> Result<(Option<QueueItem>, Option<Delegation>), StoreError>;
    /// Queued items of a workspace.
    async fn queue_depth(&self, workspace_id: &str) -> Result<i64, StoreError>;
    /// The newest `limit` items of a workspace, newest first.
    async fn queue_list(
        &self,
        workspace_id: &str,
        limit: i64,
    ) -> Result<Vec<QueueItem>, StoreError>;
    /// Workspaces with queued items.
    async fn queue_busy_workspaces(&self) -> Result<Vec<String>, StoreError>;
    /// Marks queued items past their expiry `expired` and fails their delegations.
    async fn queue_expire(
        &self,
        now_ms: i64,
    ) -> Result<Vec<(QueueItem, Option<Delegation>)>, StoreError>;
    /// Settles what a dead server left in flight (see [`Recovered`]).
    async fn teams_recover(&self, now_ms: i64) -> Result<Recovered, StoreError>;
    /// Creates a delegation; with an idempotency key already used by a delegation that did not
    /// fail, returns that one instead (`false`). A failed one gives its key up.
    async fn delegation_create(
        &self,
        d: &NewDelegation,
        now_ms: i64,
    ) -> Result<(Delegation, bool), StoreError>;
    async fn delegation_get(&self, id: &str) -> Result<Option<Delegation>, StoreError>;
    /// Moves a delegation to `to` when its status is one of `from`; returns it when it moved.
    async fn delegation_transition(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        error: Option<&str>,
        preview: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<Delegation>, StoreError>;
    /// Delegations a workspace sent or received, newest first.
    async fn delegation_list(
        &self,
        workspace_id: &str,
        limit: i64,
    ) -> Result<Vec<Delegation>, StoreError>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// `?` placeholders numbered for Postgres (`$1`, `$2`, …). The SQL of this module has no `?`
/// anywhere else.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn plain(sql: &str) -> String {
    sql.to_string()
}

const ITEM_COLUMNS: &str = "seq, id, workspace_id, caller_id, priority, body, method, delegation_id, status, attempts, enqueued_ms, expires_ms, finished_ms, response_status, response_preview, last_error";
const DELEGATION_COLUMNS: &str = "seq, id, source_id, target_id, task, status, origin, idempotency_key, queue_id, error, response_preview, created_ms, updated_ms";

macro_rules! item_from {
    ($r:expr) => {
        QueueItem {
            seq: $r.try_get("seq")?,
            id: $r.try_get("id")?,
            workspace_id: $r.try_get("workspace_id")?,
            caller_id: $r.try_get("caller_id")?,
            priority: $r.try_get("priority")?,
            body: $r.try_get("body")?,
            method: $r.try_get("method")?,
            delegation_id: $r.try_get("delegation_id")?,
            status: $r.try_get("status")?,
            attempts: $r.try_get("attempts")?,
            enqueued_ms: $r.try_get("enqueued_ms")?,
            expires_ms: $r.try_get("expires_ms")?,
            finished_ms: $r.try_get("finished_ms")?,
            response_status: $r.try_get("response_status")?,
            response_preview: $r.try_get("response_preview")?,
            last_error: $r.try_get("last_error")?,
        }
    };
}

macro_rules! delegation_from {
    ($r:expr) => {
        Delegation {
            seq: $r.try_get("seq")?,
            id: $r.try_get("id")?,
            source_id: $r.try_get("source_id")?,
            target_id: $r.try_get("target_id")?,
            task: $r.try_get("task")?,
            status: $r.try_get("status")?,
            origin: $r.try_get("origin")?,
            idempotency_key: $r.try_get("idempotency_key")?,
            queue_id: $r.try_get("queue_id")?,
            error: $r.try_get("error")?,
            response_preview: $r.try_get("response_preview")?,
            created_ms: $r.try_get("created_ms")?,
            updated_ms: $r.try_get("updated_ms")?,
        }
    };
}

/// `TeamsStore` for a backend: `$sql` maps this module's SQL to the backend's placeholders,
/// `$lock` is appended to the claim's SELECT (row locking where the backend has it).
macro_rules! teams_store {
    ($store:ty, $sql:path, $lock:expr) => {
        impl $store {
            async fn item_tx<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as super::teams::Backend>::Db>,
                id: &str,
            ) -> Result<Option<QueueItem>, StoreError> {
                use sqlx::Row;
                let q = $sql(&format!("SELECT {ITEM_COLUMNS} FROM a2a_queue WHERE id = ?"));
                let row = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(match row {
                    Some(r) => Some(item_from!(r)),
                    None => None,
                })
            }

            async fn delegation_tx<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as super::teams::Backend>::Db>,
                id: &str,
            ) -> Result<Option<Delegation>, StoreError> {
                use sqlx::Row;
                let q = $sql(&format!(
                    "SELECT {DELEGATION_COLUMNS} FROM delegations WHERE id = ?"
                ));
                let row = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(match row {
                    Some(r) => Some(delegation_from!(r)),
                    None => None,
                })
            }

            /// Moves a delegation inside a transaction; the row when it moved.
            #[allow(clippy::too_many_arguments)]
            async fn transition_tx<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as super::teams::Backend>::Db>,
                id: &str,
                from: &[&str],
                to: &str,
                error: Option<&str>,
                preview: Option<&str>,
                queue_id: Option<&str>,
                now_ms: i64,
            ) -> Result<Option<Delegation>, StoreError> {
                let Some(d) = Self::delegation_tx(tx, id).await? else {
                    return Ok(None);
                };
                if !from.contains(&d.status.as_str()) {
                    return Ok(None);
                }
                let q = $sql("UPDATE delegations SET status = ?, error = COALESCE(?, error), response_preview = COALESCE(?, response_preview), queue_id = COALESCE(?, queue_id), updated_ms = ? WHERE id = ? AND status = ?");
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(to)
                    .bind(error)
                    .bind(preview)
                    .bind(queue_id)
                    .bind(now_ms)
                    .bind(id)
                    .bind(&d.status)
                    .execute(&mut **tx)
                    .await?;
                Self::delegation_tx(tx, id).await
            }

            async fn depth_tx<'c>(
                tx: &mut sqlx::Transaction<'c, <$store as super::teams::Backend>::Db>,
                workspace_id: &str,
            ) -> Result<i64, StoreError> {
                let q = $sql(
                    "SELECT COUNT(*) FROM a2a_queue WHERE workspace_id = ? AND status = 'queued'",
                );
                Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                    .bind(workspace_id)
                    .fetch_one(&mut **tx)
                    .await?)
            }
        }

        #[async_trait]
        impl TeamsStore for $store {
            async fn queue_push(
                &self,
                item: &NewQueueItem,
                now_ms: i64,
            ) -> Result<(String, i64, bool), StoreError> {
                self.check_writer()?;
                let mut tx = self.pool.begin().await?;
                if let Some(key) = &item.idempotency_key {
                    let q = $sql("SELECT id FROM a2a_queue WHERE workspace_id = ? AND idempotency_key = ? AND status IN ('queued', 'dispatched')");
                    let hit: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                        .bind(&item.workspace_id)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(id) = hit {
                        let depth = Self::depth_tx(&mut tx, &item.workspace_id).await?;
                        tx.commit().await?;
                        return Ok((id, depth, true));
                    }
                }
                let id = uuid::Uuid::new_v4().to_string();
                let q = $sql("INSERT INTO a2a_queue (id, workspace_id, caller_id, priority, body, method, idempotency_key, delegation_id, status, attempts, enqueued_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?)");
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(&id)
                    .bind(&item.workspace_id)
                    .bind(&item.caller_id)
                    .bind(item.priority)
                    .bind(&item.body)
                    .bind(&item.method)
                    .bind(&item.idempotency_key)
                    .bind(&item.delegation_id)
                    .bind(now_ms)
                    .bind(item.expires_ms)
                    .execute(&mut *tx)
                    .await?;
                if let Some(d) = &item.delegation_id {
                    Self::transition_tx(
                        &mut tx,
                        d,
                        &["pending"],
                        "queued",
                        None,
                        None,
                        Some(&id),
                        now_ms,
                    )
                    .await?;
                }
                let depth = Self::depth_tx(&mut tx, &item.workspace_id).await?;
                tx.commit().await?;
                Ok((id, depth, false))
            }

            async fn queue_claim(
                &self,
                workspace_id: &str,
                now_ms: i64,
            ) -> Result<Option<QueueItem>, StoreError> {
                use sqlx::Row;
                self.check_writer()?;
                let mut tx = self.pool.begin().await?;
                let q = $sql(&format!("SELECT {ITEM_COLUMNS} FROM a2a_queue WHERE workspace_id = ? AND status = 'queued' AND (expires_ms IS NULL OR expires_ms > ?) ORDER BY priority DESC, seq ASC LIMIT 1{}", $lock));
                let row = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(workspace_id)
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let mut item = item_from!(row);
                let q = $sql("UPDATE a2a_queue SET status = 'dispatched', attempts = attempts + 1, dispatched_ms = ? WHERE id = ? AND status = 'queued'");
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(now_ms)
                    .bind(&item.id)
                    .execute(&mut *tx)
                    .await?;
                if let Some(d) = &item.delegation_id {
                    Self::transition_tx(
                        &mut tx,
                        d,
                        &["queued"],
                        "dispatched",
                        None,
                        None,
                        None,
                        now_ms,
                    )
                    .await?;
                }
                tx.commit().await?;
                item.status = "dispatched".into();
                item.attempts += 1;
                Ok(Some(item))
            }

            async fn queue_finish(
                &self,
                id: &str,
                outcome: &QueueOutcome,
                now_ms: i64,
            ) -> Result<(Option<QueueItem>, Option<Delegation>), StoreError> {
                self.check_writer()?;
                let mut tx = self.pool.begin().await?;
                let Some(item) = Self::item_tx(&mut tx, id).await? else {
                    return Ok((None, None));
                };
                if item.status != "dispatched" {
                    return Ok((Some(item), None));
                }
                let (status, code, preview, error) = match outcome {
                    QueueOutcome::Answered {
                        status,
                        ok,
                        preview,
                        error,
                    } => (
                        if *ok { "completed" } else { "failed" },
                        Some(*status),
                        Some(preview.clone()),
                        error.clone(),
                    ),
                    QueueOutcome::Retry {
                        error,
                        max_attempts,
                    } => (
                        if item.attempts >= *max_attempts {
                            "failed"
                        } else {
                            "queued"
                        },
                        None,
                        None,
                        Some(error.clone()),
                    ),
                };
                let finished = (status != "queued").then_some(now_ms);
                let q = $sql("UPDATE a2a_queue SET status = ?, response_status = ?, response_preview = ?, last_error = ?, finished_ms = ?, dispatched_ms = CASE WHEN ? = 'queued' THEN NULL ELSE dispatched_ms END WHERE id = ?");
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(status)
                    .bind(code)
                    .bind(&preview)
                    .bind(&error)
                    .bind(finished)
                    .bind(status)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let delegation = match (&item.delegation_id, status) {
                    (Some(d), "completed" | "failed") => {
                        Self::transition_tx(
                            &mut tx,
                            d,
                            &["dispatched", "queued"],
                            status,
                            error.as_deref(),
                            preview.as_deref(),
                            None,
                            now_ms,
                        )
                        .await?
                    }
                    (Some(d), _) => {
                        Self::transition_tx(
                            &mut tx,
                            d,
                            &["dispatched"],
                            "queued",
                            None,
                            None,
                            None,
                            now_ms,
                        )
                        .await?
                    }
                    _ => None,
                };
                let item = Self::item_tx(&mut tx, id).await?;
                tx.commit().await?;
                Ok((item, delegation))
            }

            async fn queue_depth(&self, workspace_id: &str) -> Result<i64, StoreError> {
                let mut tx = self.pool.begin().await?;
                let n = Self::depth_tx(&mut tx, workspace_id).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn queue_list(
                &self,
                workspace_id: &str,
                limit: i64,
            ) -> Result<Vec<QueueItem>, StoreError> {
                use sqlx::Row;
                let q = $sql(&format!("SELECT {ITEM_COLUMNS} FROM a2a_queue WHERE workspace_id = ? ORDER BY seq DESC LIMIT ?"));
                let rows = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(workspace_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(item_from!(r));
                }
                Ok(out)
            }

            async fn queue_busy_workspaces(&self) -> Result<Vec<String>, StoreError> {
                let q = "SELECT DISTINCT workspace_id FROM a2a_queue WHERE status = 'queued'";
                Ok(sqlx::query_scalar(q).fetch_all(&self.pool).await?)
            }

            async fn queue_expire(
                &self,
                now_ms: i64,
            ) -> Result<Vec<(QueueItem, Option<Delegation>)>, StoreError> {
                use sqlx::Row;
                self.check_writer()?;
                let mut tx = self.pool.begin().await?;
                let q = $sql(&format!("SELECT {ITEM_COLUMNS} FROM a2a_queue WHERE status = 'queued' AND expires_ms IS NOT NULL AND expires_ms <= ? ORDER BY seq LIMIT 1000"));
                let rows = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(now_ms)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut items = Vec::with_capacity(rows.len());
                for r in rows {
                    items.push(item_from!(r));
                }
                let mut out = Vec::with_capacity(items.len());
                for mut item in items {
                    let q = $sql("UPDATE a2a_queue SET status = 'expired', finished_ms = ?, last_error = 'expired before the workspace could take it' WHERE id = ? AND status = 'queued'");
                    sqlx::query(sqlx::AssertSqlSafe(q))
                        .bind(now_ms)
                        .bind(&item.id)
                        .execute(&mut *tx)
                        .await?;
                    let d = match &item.delegation_id {
                        Some(d) => {
                            Self::transition_tx(
                                &mut tx,
                                d,
                                &["queued", "pending"],
                                "failed",
                                Some("the target stayed busy until the queued task expired"),
                                None,
                                None,
                                now_ms,
                            )
                            .await?
                        }
                        None => None,
                    };
                    item.status = "expired".into();
                    out.push((item, d));
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn teams_recover(&self, now_ms: i64) -> Result<Recovered, StoreError> {
                use sqlx::Row;
                self.check_writer()?;
                let mut tx = self.pool.begin().await?;
                let mut out = Recovered::default();
                let q = format!(
                    "SELECT {ITEM_COLUMNS} FROM a2a_queue WHERE status = 'dispatched' ORDER BY seq"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q))
                    .fetch_all(&mut *tx)
                    .await?;
                for r in rows {
                    out.interrupted.push(item_from!(r));
                }
                for item in &mut out.interrupted {
                    let q = $sql("UPDATE a2a_queue SET status = 'failed', finished_ms = ?, last_error = ? WHERE id = ?");
                    sqlx::query(sqlx::AssertSqlSafe(q))
                        .bind(now_ms)
                        .bind(INTERRUPTED)
                        .bind(&item.id)
                        .execute(&mut *tx)
                        .await?;
                    item.status = "failed".into();
                    if let Some(d) = &item.delegation_id
                        && let Some(d) = Self::transition_tx(
                            &mut tx,
                            d,
                            &["dispatched", "queued"],
                            "failed",
                            Some(INTERRUPTED),
                            None,
                            None,
                            now_ms,
                        )
                        .await?
                    {
                        out.failed.push(d);
                    }
                }
                let q = format!("SELECT {DELEGATION_COLUMNS} FROM delegations WHERE origin = 'platform' AND status IN ('pending', 'dispatched', 'queued') ORDER BY seq");
                let rows = sqlx::query(sqlx::AssertSqlSafe(q))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut open = Vec::with_capacity(rows.len());
                for r in rows {
                    open.push(delegation_from!(r));
                }
                for d in open {
                    match d.status.as_str() {
                        "pending" => out.pending.push(d),
                        "dispatched" => {
                            if let Some(d) = Self::transition_tx(
                                &mut tx,
                                &d.id,
                                &["dispatched"],
                                "failed",
                                Some(INTERRUPTED),
                                None,
                                None,
                                now_ms,
                            )
                            .await?
                            {
                                out.failed.push(d);
                            }
                        }
                        // Queued: its item is still queued (a dispatched one was settled
                        // above), unless the item is gone or finished: then it follows it.
                        _ => {
                            let item = match &d.queue_id {
                                Some(q) => Self::item_tx(&mut tx, q).await?,
                                None => None,
                            };
                            let live = item.as_ref().is_some_and(|i| i.status == "queued");
                            if !live {
                                let (to, err, preview) = match &item {
                                    Some(i) if i.status == "completed" => {
                                        ("completed", None, i.response_preview.clone())
                                    }
                                    Some(i) => (
                                        "failed",
                                        Some(i.last_error.clone().unwrap_or_else(|| INTERRUPTED.into())),
                                        None,
                                    ),
                                    None => ("failed", Some(INTERRUPTED.to_string()), None),
                                };
                                if let Some(d) = Self::transition_tx(
                                    &mut tx,
                                    &d.id,
                                    &["queued"],
                                    to,
                                    err.as_deref(),
                                    preview.as_deref(),
                                    None,
                                    now_ms,
                                )
                                .await?
                                {
                                    out.failed.push(d);
                                }
                            }
                        }
                    }
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn delegation_create(
                &self,
                d: &NewDelegation,
                now_ms: i64,
            ) -> Result<(Delegation, bool), StoreError> {
                use sqlx::Row;
                self.check_writer()?;
                let mut tx = self.pool.begin().await?;
                if let Some(id) = &d.id
                    && let Some(existing) = Self::delegation_tx(&mut tx, id).await?
                {
                    tx.commit().await?;
                    return Ok((existing, false));
                }
                if let Some(key) = &d.idempotency_key {
                    let q = $sql(&format!("SELECT {DELEGATION_COLUMNS} FROM delegations WHERE source_id = ? AND idempotency_key = ?"));
                    let row = sqlx::query(sqlx::AssertSqlSafe(q))
                        .bind(&d.source_id)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(r) = row {
                        let existing = delegation_from!(r);
                        if existing.status != "failed" {
                            tx.commit().await?;
                            return Ok((existing, false));
                        }
                        // A failed delegation gives its key up to the retry.
                        let q = $sql("UPDATE delegations SET idempotency_key = NULL WHERE id = ?");
                        sqlx::query(sqlx::AssertSqlSafe(q))
                            .bind(&existing.id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let id = d
                    .id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let status = if d.origin == "agent" {
                    "dispatched"
                } else {
                    "pending"
                };
                let q = $sql("INSERT INTO delegations (id, source_id, target_id, task, status, origin, idempotency_key, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(&id)
                    .bind(&d.source_id)
                    .bind(&d.target_id)
                    .bind(&d.task)
                    .bind(status)
                    .bind(d.origin)
                    .bind(&d.idempotency_key)
                    .bind(now_ms)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                let created = Self::delegation_tx(&mut tx, &id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("a new delegation vanished".into()))?;
                tx.commit().await?;
                Ok((created, true))
            }

            async fn delegation_get(&self, id: &str) -> Result<Option<Delegation>, StoreError> {
                let mut tx = self.pool.begin().await?;
                let d = Self::delegation_tx(&mut tx, id).await?;
                tx.commit().await?;
                Ok(d)
            }

            async fn delegation_transition(
                &self,
                id: &str,
                from: &[&str],
                to: &str,
                error: Option<&str>,
                preview: Option<&str>,
                now_ms: i64,
            ) -> Result<Option<Delegation>, StoreError> {
                self.check_writer()?;
                let mut tx = self.pool.begin().await?;
                let d = Self::transition_tx(&mut tx, id, from, to, error, preview, None, now_ms)
                    .await?;
                tx.commit().await?;
                Ok(d)
            }

            async fn delegation_list(
                &self,
                workspace_id: &str,
                limit: i64,
            ) -> Result<Vec<Delegation>, StoreError> {
                use sqlx::Row;
                let q = $sql(&format!("SELECT {DELEGATION_COLUMNS} FROM delegations WHERE source_id = ? OR target_id = ? ORDER BY seq DESC LIMIT ?"));
                let rows = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(workspace_id)
                    .bind(workspace_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(delegation_from!(r));
                }
                Ok(out)
            }
        }
    };
}

/// The sqlx database of a backend, for the macro's transaction types.
pub trait Backend {
    type Db: sqlx::Database;
}

impl Backend for super::SqliteStore {
    type Db = sqlx::Sqlite;
}

impl Backend for super::PostgresStore {
    type Db = sqlx::Postgres;
}

teams_store!(super::SqliteStore, plain, "");
teams_store!(super::PostgresStore, numbered, " FOR UPDATE SKIP LOCKED");

#[cfg(test)]
mod tests;
