//! Postgres backend (`DATABASE_URL`): the same tables as SQLite, used in cluster mode and
//! exercised by the same conformance suite in CI.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{AuditRow, ChangeKind, ChangeRow, ObjectRow, Snapshot, Store, StoreError};

/// A store in a Postgres database.
pub struct PostgresStore {
    pool: PgPool,
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
        Ok(PostgresStore { pool })
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
        sqlx::query("UPDATE meta SET rv = $1 WHERE id = 1")
            .bind(rv)
            .execute(&mut *tx)
            .await?;
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

    async fn audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, event, namespace, name, data) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&row.at)
        .bind(&row.event)
        .bind(&row.namespace)
        .bind(&row.name)
        .bind(&row.data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_rows(&self, event: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query("SELECT at, event, namespace, name, data FROM audit WHERE ($1::TEXT IS NULL OR event = $1) ORDER BY id")
            .bind(event)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    at: r.try_get("at")?,
                    event: r.try_get("event")?,
                    namespace: r.try_get("namespace")?,
                    name: r.try_get("name")?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }
}
