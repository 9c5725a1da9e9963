//! SQLite backend: one file in the data dir, WAL mode, one writer connection.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    AuditFilter, AuditRow, ChangeKind, ChangeRow, ObjectRow, PRUNE_CHUNK, Snapshot, Store,
    StoreError,
};

/// The embedded default store.
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9);
            // only an OS crash or power loss may drop the newest commits. See docs/adr/0002.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        // One connection: the API server is the only writer, and serialises its writes.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        super::migrate::run(&pool, super::migrate::SQLITE).await?;
        Ok(SqliteStore { pool })
    }

    /// One process, one file: always the writer.
    pub(super) fn check_writer(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn change_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ChangeRow, StoreError> {
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
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
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
        let mut hist = sqlx::query("SELECT rv, resource, namespace, name, event, value FROM changes ORDER BY rv DESC LIMIT ?")
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
        let mut tx = self.pool.begin().await?;
        for c in changes {
            match c.kind {
                ChangeKind::Added | ChangeKind::Modified => {
                    sqlx::query("INSERT INTO objects (resource, namespace, name, rv, value) VALUES (?, ?, ?, ?, ?) ON CONFLICT (resource, namespace, name) DO UPDATE SET rv = excluded.rv, value = excluded.value")
                        .bind(&c.resource).bind(&c.namespace).bind(&c.name).bind(c.rv).bind(&c.value)
                        .execute(&mut *tx)
                        .await?;
                }
                ChangeKind::Deleted => {
                    sqlx::query(
                        "DELETE FROM objects WHERE resource = ? AND namespace = ? AND name = ?",
                    )
                    .bind(&c.resource)
                    .bind(&c.namespace)
                    .bind(&c.name)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query("INSERT INTO changes (rv, resource, namespace, name, event, value) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(c.rv).bind(&c.resource).bind(&c.namespace).bind(&c.name).bind(c.kind.as_str()).bind(&c.value)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE meta SET rv = ? WHERE id = 1")
            .bind(rv)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn compact(&self, upto: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM changes WHERE rv <= ?")
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE meta SET compacted = MAX(compacted, ?) WHERE id = 1")
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
        sqlx::query("INSERT INTO audit (at, event, namespace, name, data, workspace_uid) VALUES (?, ?, ?, ?, ?, ?)")
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
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
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
            let n = sqlx::query("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? ORDER BY id LIMIT ?)")
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
