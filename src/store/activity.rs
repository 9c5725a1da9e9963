//! The activity log of workspaces (ADR 0050): one table per backend (migration 0003), written
//! by the A2A proxy and by agents reporting their own work, read newest first by the canvas,
//! and expired by age. Filtered and limited in SQL, like the audit rows (ADR 0042).

use async_trait::async_trait;
use sqlx::Row;

use super::{PRUNE_CHUNK, PostgresStore, SqliteStore, StoreError};

/// One activity row. Bodies are JSON text, already capped by the writer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivityRow {
    /// Assigned by the store; ignored on insert.
    pub id: i64,
    /// The workspace whose log this row is in.
    pub workspace_id: String,
    pub activity_type: String,
    /// Who started it: a workspace uid, or `None` for the canvas / an admin.
    pub source_id: Option<String>,
    pub target_id: Option<String>,
    pub method: Option<String>,
    pub summary: Option<String>,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    pub duration_ms: Option<i64>,
    /// `ok`, `error`, `timeout`, …
    pub status: String,
    pub error_detail: Option<String>,
    /// RFC 3339 UTC with microseconds (the shape of `crate::util::now_micro`).
    pub created_at: String,
}

/// Who started the rows a query selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivitySource {
    /// No source workspace: the canvas or an admin.
    Canvas,
    /// A workspace (an agent).
    Agent,
}

/// Which rows a query selects: one workspace's, newest first, at most `limit`.
#[derive(Clone, Debug, Default)]
pub struct ActivityFilter {
    pub workspace_id: String,
    pub activity_type: Option<String>,
    pub source: Option<ActivitySource>,
    /// Only rows whose summary starts with this text (a schedule's fires: `schedule:<name>: `).
    pub summary_prefix: Option<String>,
    pub limit: usize,
}

/// The activity table of a store.
#[async_trait]
pub trait ActivityStore: Send + Sync {
    /// Appends a row; returns its id.
    async fn activity_insert(&self, row: &ActivityRow) -> Result<i64, StoreError>;
    /// The rows `filter` selects, newest first.
    async fn activity_query(&self, filter: &ActivityFilter)
    -> Result<Vec<ActivityRow>, StoreError>;
    /// Deletes the rows created before `before` (same shape as [`ActivityRow::created_at`]),
    /// in bounded chunks; returns how many went.
    async fn activity_prune(&self, before: &str) -> Result<u64, StoreError>;
}

const COLUMNS: &str = "workspace_id, activity_type, source_id, target_id, method, summary, request_body, response_body, duration_ms, status, error_detail, created_at";

fn insert_query<DB>(row: &ActivityRow) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<String>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<i64>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new(format!("INSERT INTO activity_logs ({COLUMNS}) "));
    qb.push_values(std::iter::once(row), |mut b, r| {
        b.push_bind(r.workspace_id.clone())
            .push_bind(r.activity_type.clone())
            .push_bind(r.source_id.clone())
            .push_bind(r.target_id.clone())
            .push_bind(r.method.clone())
            .push_bind(r.summary.clone())
            .push_bind(r.request_body.clone())
            .push_bind(r.response_body.clone())
            .push_bind(r.duration_ms)
            .push_bind(r.status.clone())
            .push_bind(r.error_detail.clone())
            .push_bind(r.created_at.clone());
    });
    qb.push(" RETURNING id");
    qb
}

fn select_query<DB>(f: &ActivityFilter) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new(format!(
        "SELECT id, {COLUMNS} FROM activity_logs WHERE workspace_id = "
    ));
    qb.push_bind(f.workspace_id.clone());
    if let Some(t) = &f.activity_type {
        qb.push(" AND activity_type = ");
        qb.push_bind(t.clone());
    }
    match f.source {
        Some(ActivitySource::Canvas) => {
            qb.push(" AND source_id IS NULL");
        }
        Some(ActivitySource::Agent) => {
            qb.push(" AND source_id IS NOT NULL");
        }
        None => {}
    }
    if let Some(p) = &f.summary_prefix {
        // substr counts characters in both SQLite and PostgreSQL; no LIKE, so no wildcards.
        qb.push(" AND substr(summary, 1, length(");
        qb.push_bind(p.clone());
        qb.push(")) = ");
        qb.push_bind(p.clone());
    }
    qb.push(" ORDER BY id DESC LIMIT ");
    qb.push_bind(i64::try_from(f.limit).unwrap_or(i64::MAX));
    qb
}

fn row_of<R: Row>(r: &R) -> Result<ActivityRow, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ActivityRow {
        id: r.try_get("id")?,
        workspace_id: r.try_get("workspace_id")?,
        activity_type: r.try_get("activity_type")?,
        source_id: r.try_get("source_id")?,
        target_id: r.try_get("target_id")?,
        method: r.try_get("method")?,
        summary: r.try_get("summary")?,
        request_body: r.try_get("request_body")?,
        response_body: r.try_get("response_body")?,
        duration_ms: r.try_get("duration_ms")?,
        status: r.try_get("status")?,
        error_detail: r.try_get("error_detail")?,
        created_at: r.try_get("created_at")?,
    })
}

#[async_trait]
impl ActivityStore for SqliteStore {
    async fn activity_insert(&self, row: &ActivityRow) -> Result<i64, StoreError> {
        let r = insert_query::<sqlx::Sqlite>(row)
            .build()
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("id")?)
    }

    async fn activity_query(
        &self,
        filter: &ActivityFilter,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        let rows = select_query::<sqlx::Sqlite>(filter)
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_of).collect()
    }

    async fn activity_prune(&self, before: &str) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query("DELETE FROM activity_logs WHERE id IN (SELECT id FROM activity_logs WHERE created_at < ? ORDER BY id LIMIT ?)")
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

#[async_trait]
impl ActivityStore for PostgresStore {
    async fn activity_insert(&self, row: &ActivityRow) -> Result<i64, StoreError> {
        let r = insert_query::<sqlx::Postgres>(row)
            .build()
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("id")?)
    }

    async fn activity_query(
        &self,
        filter: &ActivityFilter,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        let rows = select_query::<sqlx::Postgres>(filter)
            .build()
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_of).collect()
    }

    async fn activity_prune(&self, before: &str) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query("DELETE FROM activity_logs WHERE id IN (SELECT id FROM activity_logs WHERE created_at < $1 ORDER BY id LIMIT $2)")
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

#[cfg(test)]
mod tests {
    //! One suite for both backends: SQLite always, Postgres when `MOLECULE_TEST_DATABASE_URL`
    //! is set.
    use super::*;

    fn row(ws: &str, t: &str, source: Option<&str>, at: &str) -> ActivityRow {
        ActivityRow {
            workspace_id: ws.into(),
            activity_type: t.into(),
            source_id: source.map(String::from),
            target_id: Some("t-1".into()),
            method: Some("message/send".into()),
            summary: Some("hello".into()),
            request_body: Some(r#"{"a":1}"#.into()),
            response_body: None,
            duration_ms: Some(12),
            status: "ok".into(),
            error_detail: None,
            created_at: at.into(),
            ..Default::default()
        }
    }

    async fn conformance(store: &dyn ActivityStore) {
        let q = |f: ActivityFilter| async move {
            store
                .activity_query(&f)
                .await
                .expect("query")
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        let all = |ws: &str| ActivityFilter {
            workspace_id: ws.into(),
            limit: 100,
            ..Default::default()
        };
        assert!(q(all("w-1")).await.is_empty());
        let rows = [
            row(
                "w-1",
                "a2a_send",
                Some("w-1"),
                "2026-01-01T00:00:01.000000Z",
            ),
            row("w-1", "a2a_receive", None, "2026-01-02T00:00:01.000000Z"),
            row(
                "w-2",
                "a2a_receive",
                Some("w-1"),
                "2026-01-03T00:00:01.000000Z",
            ),
            row(
                "w-1",
                "agent_log",
                Some("w-1"),
                "2026-01-04T00:00:01.000000Z",
            ),
        ];
        let mut ids = vec![];
        for r in &rows {
            ids.push(store.activity_insert(r).await.expect("insert"));
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // Newest first, one workspace only, every field back as written.
        assert_eq!(q(all("w-1")).await, vec![ids[3], ids[1], ids[0]]);
        let got = store.activity_query(&all("w-2")).await.expect("w-2");
        assert_eq!(
            got,
            vec![ActivityRow {
                id: ids[2],
                ..rows[2].clone()
            }]
        );
        let typed = ActivityFilter {
            activity_type: Some("a2a_receive".into()),
            ..all("w-1")
        };
        assert_eq!(q(typed).await, vec![ids[1]]);
        let canvas = ActivityFilter {
            source: Some(ActivitySource::Canvas),
            ..all("w-1")
        };
        assert_eq!(q(canvas).await, vec![ids[1]]);
        let agents = ActivityFilter {
            source: Some(ActivitySource::Agent),
            limit: 1,
            ..all("w-1")
        };
        assert_eq!(q(agents).await, vec![ids[3]]);
        // By summary prefix: exact text, `%` and `_` are no wildcards.
        let mut fire = row("w-1", "a2a_receive", None, "2026-01-05T00:00:01.000000Z");
        fire.summary = Some("schedule:daily_%: run it".into());
        let fire_id = store.activity_insert(&fire).await.expect("insert");
        let prefixed = |p: &str| ActivityFilter {
            summary_prefix: Some(p.into()),
            ..all("w-1")
        };
        assert_eq!(q(prefixed("schedule:daily_%: ")).await, vec![fire_id]);
        assert!(q(prefixed("schedule:dailyx%: ")).await.is_empty());
        assert!(q(prefixed("schedule:d%")).await.is_empty());
        assert_eq!(q(prefixed("hel")).await, vec![ids[3], ids[1], ids[0]]);

        // Retention by age, across workspaces.
        let n = store
            .activity_prune("2026-01-03T00:00:00.000000Z")
            .await
            .expect("prune");
        assert_eq!(n, 2);
        assert_eq!(q(all("w-1")).await, vec![fire_id, ids[3]]);
        assert_eq!(q(all("w-2")).await, vec![ids[2]]);
        assert_eq!(
            store
                .activity_prune("2026-01-03T00:00:00.000000Z")
                .await
                .expect("again"),
            0
        );
    }

    #[tokio::test]
    async fn sqlite_activity() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&dir.path().join("m.db"))
            .await
            .expect("open");
        conformance(&store).await;
    }

    #[tokio::test]
    async fn postgres_activity() {
        let Some(url) = crate::testing::postgres_url().await else {
            return;
        };
        let store = PostgresStore::connect(&url).await.expect("connect");
        conformance(&store).await;
    }
}
