//! A small embedded migration runner (one folder per backend under `migrations/`), so the
//! binary carries its schema and needs no sqlx macros.

use sqlx::{AssertSqlSafe, Row};

use super::StoreError;

/// One migration file, embedded at build time.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Migrations of the SQLite backend.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "objects",
        sql: include_str!("../../migrations/sqlite/0001_objects.sql"),
    },
    // ADR 0042: audit queries and retention in SQL.
    Migration {
        version: 2,
        name: "audit_query",
        sql: include_str!("../../migrations/sqlite/0002_audit_query.sql"),
    },
    // ADR 0050: the activity log of workspaces.
    Migration {
        version: 3,
        name: "activity",
        sql: include_str!("../../migrations/sqlite/0003_activity.sql"),
    },
    // ADR 0051: the busy queue and delegations.
    Migration {
        version: 4,
        name: "delegations_queue",
        sql: include_str!("../../migrations/sqlite/0004_delegations_queue.sql"),
    },
];

/// Migrations of the Postgres backend.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "objects",
        sql: include_str!("../../migrations/postgres/0001_objects.sql"),
    },
    // ADR 0042: audit queries and retention in SQL.
    Migration {
        version: 2,
        name: "audit_query",
        sql: include_str!("../../migrations/postgres/0002_audit_query.sql"),
    },
    // ADR 0050: the activity log of workspaces.
    Migration {
        version: 3,
        name: "activity",
        sql: include_str!("../../migrations/postgres/0003_activity.sql"),
    },
    // ADR 0051: the busy queue and delegations.
    Migration {
        version: 4,
        name: "delegations_queue",
        sql: include_str!("../../migrations/postgres/0004_delegations_queue.sql"),
    },
];

/// Applies every migration not yet recorded in `schema_migrations`, each in its own transaction.
pub async fn run<DB>(pool: &sqlx::Pool<DB>, migrations: &[Migration]) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL)").execute(&mut *conn).await?;
    let applied: Vec<i64> = sqlx::raw_sql("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, usize>(0))
        .collect::<Result<_, _>>()?;
    drop(conn);
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        // Both values are compile-time constants of this file.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO schema_migrations (version, name) VALUES ({}, '{}')",
            m.version, m.name
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}
