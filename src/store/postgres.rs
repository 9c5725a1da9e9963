//! Postgres backend (`DATABASE_URL`): the same tables as SQLite, used in cluster mode and
//! exercised by the same conformance suite in CI.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{
    AuditFilter, AuditRow, ChangeKind, ChangeRow, ObjectRow, PRUNE_CHUNK, Snapshot, Store,
    StoreError,
};

/// The session advisory lock the writer of a database holds ("molecule" in ASCII; ADR 0042).
pub const WRITER_LOCK: i64 = 0x6d6f_6c65_6375_6c65;

/// How often the writer checks that its lock connection is alive.
const LOCK_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A store in a Postgres database.
pub struct PostgresStore {
    pub(super) pool: PgPool,
    /// Held by an API server (the database's one writer): the lock session.
    writer: Option<WriterLock>,
}

/// The writer lock: a session advisory lock on a dedicated connection, watched by a task that
/// fences the store when the connection is lost (ADR 0042).
struct WriterLock {
    /// Backend pid of the lock session; every commit checks in its transaction that this
    /// session still holds the lock.
    pid: i32,
    lost: Arc<AtomicBool>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // Ending the task closes the connection, which releases the lock.
        self.watch.abort();
    }
}

impl PostgresStore {
    /// Connects and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        super::migrate::run(&pool, super::migrate::POSTGRES).await?;
        Ok(PostgresStore { pool, writer: None })
    }

    /// Refuses writes once the writer lock is lost (ADR 0042).
    pub(super) fn check_writer(&self) -> Result<(), StoreError> {
        match &self.writer {
            Some(w) if w.lost.load(Ordering::SeqCst) => Err(StoreError::Fenced(
                "its lock connection failed; restart it".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Connects as the database's one writer: takes [`WRITER_LOCK`] on a dedicated connection
    /// first (refusing with [`StoreError::Locked`] when another server holds it), then runs the
    /// migrations. Commits fail once the lock connection is lost (ADR 0042).
    pub async fn connect_writer(url: &str) -> Result<Self, StoreError> {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(url).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(WRITER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT concat('pid ', a.pid, ', client ', coalesce(host(a.client_addr), 'local'), ', application ', nullif(a.application_name, '')) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295) AND l.objsubid = 1 LIMIT 1",
            )
            .bind(WRITER_LOCK)
            .fetch_optional(&mut conn)
            .await
            .ok()
            .flatten();
            let _ = conn.close().await;
            return Err(StoreError::Locked {
                lock: WRITER_LOCK,
                holder: holder.map(|h| format!(" ({h})")).unwrap_or_default(),
            });
        }
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        let lost = Arc::new(AtomicBool::new(false));
        let watch = tokio::spawn(watch_lock(conn, lost.clone()));
        let mut store = Self::connect(url).await?;
        store.writer = Some(WriterLock { pid, lost, watch });
        Ok(store)
    }
}

/// Pings the lock session; when it fails the lock is gone (Postgres released it with the
/// session), so the store is fenced for good: a restart takes the lock again, or refuses.
async fn watch_lock(mut conn: sqlx::postgres::PgConnection, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(LOCK_CHECK_EVERY).await;
        let alive: Result<bool, sqlx::Error> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND classid::bigint = ($1 >> 32) AND objid::bigint = ($1 & 4294967295) AND objsubid = 1)",
        )
        .bind(WRITER_LOCK)
        .fetch_one(&mut conn)
        .await;
        if !matches!(alive, Ok(true)) {
            lost.store(true, Ordering::SeqCst);
            tracing::error!(
                "the Postgres writer lock was lost (its connection failed); this server stops writing until it is restarted (ADR 0042)"
            );
            return;
        }
    }
}

fn change_from_row(r: &sqlx::postgres::PgRow) -> Result<ChangeRow, StoreError> {
    let kind: String = r.try_get("event")?;
    Ok(ChangeRow {
        rv: r.try_get("rv")?,
        resource: r.try_get("resource")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown change kind {kind:?}")))?,
        value: r.try_get("value")?,
    })
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn load(&self, history: usize) -> Result<Snapshot, StoreError> {
        let meta = sqlx::query("SELECT rv, compacted FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let objects = sqlx::query("SELECT resource, namespace, name, value FROM objects")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(ObjectRow {
                    resource: r.try_get("resource")?,
                    namespace: r.try_get("namespace")?,
                    name: r.try_get("name")?,
                    value: r.try_get("value")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut hist = sqlx::query("SELECT rv, resource, namespace, name, event, value FROM changes ORDER BY rv DESC LIMIT $1")
            .bind(i64::try_from(history).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(change_from_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
        hist.reverse();
        Ok(Snapshot {
            rv: meta.try_get("rv")?,
            compacted: meta.try_get("compacted")?,
            objects,
            history: hist,
        })
    }

    async fn commit(&self, rv: i64, changes: &[ChangeRow]) -> Result<(), StoreError> {
        if let Some(w) = &self.writer
            && w.lost.load(Ordering::SeqCst)
        {
            return Err(StoreError::Fenced(
                "its lock connection failed; restart it".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        for c in changes {
            match c.kind {
                ChangeKind::Added | ChangeKind::Modified => {
                    sqlx::query("INSERT INTO objects (resource, namespace, name, rv, value) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (resource, namespace, name) DO UPDATE SET rv = excluded.rv, value = excluded.value")
                        .bind(&c.resource).bind(&c.namespace).bind(&c.name).bind(c.rv).bind(&c.value)
                        .execute(&mut *tx)
                        .await?;
                }
                ChangeKind::Deleted => {
                    sqlx::query(
                        "DELETE FROM objects WHERE resource = $1 AND namespace = $2 AND name = $3",
                    )
                    .bind(&c.resource)
                    .bind(&c.namespace)
                    .bind(&c.name)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query("INSERT INTO changes (rv, resource, namespace, name, event, value) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(c.rv).bind(&c.resource).bind(&c.namespace).bind(&c.name).bind(c.kind.as_str()).bind(&c.value)
                .execute(&mut *tx)
                .await?;
        }
        match &self.writer {
            // Fenced in the transaction itself: the counter moves only while the lock session
            // still holds the writer lock (ADR 0042).
            Some(w) => {
                let n = sqlx::query("UPDATE meta SET rv = $1 WHERE id = 1 AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $2 AND classid::bigint = ($3 >> 32) AND objid::bigint = ($3 & 4294967295) AND objsubid = 1)")
                    .bind(rv)
                    .bind(w.pid)
                    .bind(WRITER_LOCK)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n != 1 {
                    w.lost.store(true, Ordering::SeqCst);
                    return Err(StoreError::Fenced(
                        "the writer lock is no longer held".into(),
                    ));
                }
            }
            None => {
                sqlx::query("UPDATE meta SET rv = $1 WHERE id = 1")
                    .bind(rv)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn compact(&self, upto: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM changes WHERE rv <= $1")
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE meta SET compacted = GREATEST(compacted, $1) WHERE id = 1")
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn committed_rv(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT rv FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("rv")?)
    }

    async fn audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, event, namespace, name, data, workspace_uid) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.at)
        .bind(&row.event)
        .bind(&row.namespace)
        .bind(&row.name)
        .bind(&row.data)
        .bind(super::workspace_uid_of(&row.data))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_query(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT id, at, event, namespace, name, data FROM audit",
        );
        super::push_audit_filter(&mut qb, filter, limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    event: r.try_get("event")?,
                    namespace: r.try_get("namespace")?,
                    name: r.try_get("name")?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }

    async fn audit_prune(&self, before: &str) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 ORDER BY id LIMIT $2)")
                .bind(before)
                .bind(PRUNE_CHUNK)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}
