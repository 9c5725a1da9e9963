//! Persistence behind one trait: SQLite (the default, a file in the data dir) and Postgres
//! (`DATABASE_URL`). Each backend has its own migrations folder under `migrations/`.
//!
//! The store is deliberately dumb: the API server assigns resourceVersions and hands over
//! batches of changes; the store writes each batch (object rows, change-log rows and the RV
//! counter) in one transaction, so an acknowledged write survives `kill -9`.

pub mod activity;
mod crypto;
mod migrate;
mod postgres;
mod sqlite;
pub mod teams;

pub use activity::{ActivityFilter, ActivityRow, ActivitySource, ActivityStore};
pub use crypto::{SecretKey, SecretKeyError};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

/// Errors of the persistence layer. The text never contains object contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Another server holds the writer lock of this database (ADR 0042).
    #[error(
        "another molecule server is already the writer of this Postgres database (it holds the advisory lock {lock:#x}{holder}); refusing to start a second writer: stop the other server or point DATABASE_URL at another database"
    )]
    Locked { lock: i64, holder: String },
    /// This server may no longer write: its writer lock is gone (ADR 0042).
    #[error("this server lost the writer lock of the database and no longer writes: {0}")]
    Fenced(String),
}

/// What a change did to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ADDED" => Some(ChangeKind::Added),
            "MODIFIED" => Some(ChangeKind::Modified),
            "DELETED" => Some(ChangeKind::Deleted),
            _ => None,
        }
    }
}

/// One persisted change. For `Deleted`, `value` is the object's last state.
#[derive(Clone, Debug)]
pub struct ChangeRow {
    pub rv: i64,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub kind: ChangeKind,
    /// The object as stored (JSON; sealed for secrets).
    pub value: String,
}

/// One live object as loaded.
#[derive(Clone, Debug)]
pub struct ObjectRow {
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub value: String,
}

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The last resourceVersion handed out.
    pub rv: i64,
    /// Changes with rv <= this are no longer in the log.
    pub compacted: i64,
    pub objects: Vec<ObjectRow>,
    /// The newest part of the change log, oldest first.
    pub history: Vec<ChangeRow>,
}

/// One audit row.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRow {
    /// The row's id (assigned by the store; ignored by [`Store::audit`]).
    pub id: i64,
    pub at: String,
    pub event: String,
    pub namespace: String,
    pub name: String,
    pub data: String,
}

/// Which audit rows a query selects; every set field narrows it, all of it in SQL (ADR 0042).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub event: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Rows about one workspace.
    pub workspace: Option<WorkspaceRef>,
}

/// A workspace as audit rows name it: by uid in their data (`uid` or `workspace_uid`), or, for
/// `workspace.*` rows without one, by namespace and name.
#[derive(Clone, Debug)]
pub struct WorkspaceRef {
    pub uid: String,
    /// (namespace, name) of the live workspace, when known.
    pub object: Option<(String, String)>,
}

/// The workspace uid an audit row's data names (`uid`, else `workspace_uid`); stored in its own
/// indexed column so per-workspace queries run in SQL.
fn workspace_uid_of(data: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    v.get("uid")
        .or_else(|| v.get("workspace_uid"))
        .and_then(serde_json::Value::as_str)
        .map(String::from)
}

/// Appends the WHERE clause of `f` and `ORDER BY id DESC LIMIT` to an audit SELECT; only the
/// clauses in use, so each backend's planner can use the indexes of migration 0002.
fn push_audit_filter<DB>(qb: &mut sqlx::QueryBuilder<DB>, f: &AuditFilter, limit: usize)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    qb.push(" WHERE 1 = 1");
    for (column, value) in [
        ("event", &f.event),
        ("namespace", &f.namespace),
        ("name", &f.name),
    ] {
        if let Some(v) = value {
            qb.push(format_args!(" AND {column} = "));
            qb.push_bind(v.clone());
        }
    }
    if let Some(w) = &f.workspace {
        qb.push(" AND (workspace_uid = ");
        qb.push_bind(w.uid.clone());
        if let Some((ns, name)) = &w.object {
            qb.push(" OR (workspace_uid IS NULL AND event LIKE 'workspace.%' AND namespace = ");
            qb.push_bind(ns.clone());
            qb.push(" AND name = ");
            qb.push_bind(name.clone());
            qb.push(")");
        }
        qb.push(")");
    }
    qb.push(" ORDER BY id DESC LIMIT ");
    qb.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
}

/// How many audit rows one retention statement deletes, so a large backlog never holds the
/// store's writer for long.
const PRUNE_CHUNK: i64 = 5_000;

/// The persistence trait shared by SQLite and Postgres.
#[async_trait]
/// Every store also keeps the activity log (ADR 0050), the busy queue and delegations (ADR 0051).
pub trait Store: ActivityStore + teams::TeamsStore + Send + Sync + 'static {
    /// Short name for logs and metrics: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Loads the live objects and the newest `history` changes.
    async fn load(&self, history: usize) -> Result<Snapshot, StoreError>;
    /// Writes a batch of changes, in order, in one transaction; `rv` becomes the counter.
    async fn commit(&self, rv: i64, changes: &[ChangeRow]) -> Result<(), StoreError>;
    /// Drops change-log rows with rv <= `upto` and records the new floor.
    async fn compact(&self, upto: i64) -> Result<(), StoreError>;
    /// The resourceVersion of the last committed batch, read from the database (not from any
    /// cache): how the writer settles a commit whose outcome it did not hear (ADR 0042).
    async fn committed_rv(&self) -> Result<i64, StoreError>;
    /// Appends an audit row.
    async fn audit(&self, row: &AuditRow) -> Result<(), StoreError>;
    /// The newest `limit` audit rows matching `filter`, newest first, filtered and limited in
    /// SQL (ADR 0042).
    async fn audit_query(
        &self,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError>;
    /// Deletes the audit rows recorded before `before` (an RFC 3339 UTC time of the same shape
    /// as [`AuditRow::at`]), in bounded chunks; returns how many went (ADR 0042).
    async fn audit_prune(&self, before: &str) -> Result<u64, StoreError>;
    /// Every audit row, oldest first, optionally only those with the given event name.
    async fn audit_rows(&self, event: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        let filter = AuditFilter {
            event: event.map(String::from),
            ..Default::default()
        };
        let mut rows = self.audit_query(&filter, usize::MAX).await?;
        rows.reverse();
        Ok(rows)
    }
}

/// What became of a batch whose commit reported an error (ADR 0042).
#[derive(Debug)]
pub enum CommitOutcome {
    /// The database holds it: the commit succeeded and only its reply was lost.
    Landed,
    /// The database is still at the previous resourceVersion.
    NotLanded,
    /// The database could not be asked, or holds a resourceVersion that is neither: writes
    /// must wait until this is settled.
    Unknown(String),
}

/// Settles a failed commit of the batch that took the counter from `prev` to `rv`, by reading
/// the counter back (ADR 0042). The counter is written in the batch's own transaction, so it
/// equals `rv` exactly when the batch landed.
pub async fn commit_outcome(store: &dyn Store, prev: i64, rv: i64) -> CommitOutcome {
    match store.committed_rv().await {
        Ok(r) if r == rv => CommitOutcome::Landed,
        Ok(r) if r == prev => CommitOutcome::NotLanded,
        Ok(r) => CommitOutcome::Unknown(format!(
            "the database is at resourceVersion {r}, expected {prev} or {rv}; is another server writing to it?"
        )),
        Err(e) => CommitOutcome::Unknown(e.to_string()),
    }
}

/// The `at` of audit rows recorded before now minus `keep`, for [`Store::audit_prune`].
pub fn audit_cutoff(keep: std::time::Duration) -> String {
    let now = jiff::Timestamp::now();
    let cutoff = now.checked_sub(keep).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    cutoff.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Opens the store of an API server, its only writer: like [`open`], and on Postgres it also
/// takes the writer lock, so a second server on the same database refuses to start, and one
/// that loses the lock stops writing (ADR 0042). SQLite needs none: one process, one file.
pub async fn open_writer(
    database_url: Option<&str>,
    sqlite_path: &std::path::Path,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(
            std::sync::Arc::new(PostgresStore::connect_writer(url).await?),
        ),
        _ => open(database_url, sqlite_path).await,
    }
}

/// Opens the store named by `database_url` (`postgres://…`), or the SQLite file `sqlite_path`.
/// Without the writer lock: for audit rows only (`operator`); an API server uses
/// [`open_writer`].
pub async fn open(
    database_url: Option<&str>,
    sqlite_path: &std::path::Path,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(std::sync::Arc::new(PostgresStore::connect(url).await?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            Ok(std::sync::Arc::new(
                SqliteStore::open(std::path::Path::new(path)).await?,
            ))
        }
        Some(other) => Err(StoreError::Corrupt(format!(
            "unsupported DATABASE_URL scheme {:?}: use postgres://… or sqlite:…",
            other.split(':').next().unwrap_or("")
        ))),
        None => Ok(std::sync::Arc::new(SqliteStore::open(sqlite_path).await?)),
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! One suite, run against every backend (SQLite always, Postgres when
    //! `MOLECULE_TEST_DATABASE_URL` is set).
    use super::*;

    fn change(rv: i64, name: &str, kind: ChangeKind, value: &str) -> ChangeRow {
        ChangeRow {
            rv,
            resource: "molecule.ai/workspaces".into(),
            namespace: "default".into(),
            name: name.into(),
            kind,
            value: value.into(),
        }
    }

    pub async fn run(store: &dyn Store) {
        let s = store.load(100).await.expect("load empty");
        assert_eq!((s.rv, s.objects.len(), s.history.len()), (0, 0, 0));

        store
            .commit(
                2,
                &[
                    change(1, "a", ChangeKind::Added, "{\"v\":1}"),
                    change(2, "b", ChangeKind::Added, "{\"v\":2}"),
                ],
            )
            .await
            .expect("commit");
        store
            .commit(
                4,
                &[
                    change(3, "a", ChangeKind::Modified, "{\"v\":3}"),
                    change(4, "b", ChangeKind::Deleted, "{\"v\":2}"),
                ],
            )
            .await
            .expect("commit 2");

        let s = store.load(100).await.expect("load");
        assert_eq!(s.rv, 4);
        assert_eq!(s.objects.len(), 1);
        assert_eq!(s.objects[0].name, "a");
        assert_eq!(s.objects[0].value, "{\"v\":3}");
        let rvs: Vec<i64> = s.history.iter().map(|c| c.rv).collect();
        assert_eq!(rvs, vec![1, 2, 3, 4]);
        assert_eq!(s.history[3].kind, ChangeKind::Deleted);

        // Only the newest `history` rows come back.
        let s = store.load(2).await.expect("load tail");
        assert_eq!(
            s.history.iter().map(|c| c.rv).collect::<Vec<_>>(),
            vec![3, 4]
        );

        store.compact(3).await.expect("compact");
        let s = store.load(100).await.expect("load compacted");
        assert_eq!(s.compacted, 3);
        assert_eq!(s.history.iter().map(|c| c.rv).collect::<Vec<_>>(), vec![4]);

        // A failing batch (duplicate rv) leaves nothing behind: transactional.
        let err = store
            .commit(
                6,
                &[
                    change(5, "c", ChangeKind::Added, "{}"),
                    change(4, "d", ChangeKind::Added, "{}"),
                ],
            )
            .await;
        assert!(err.is_err());
        let s = store.load(100).await.expect("load after failure");
        assert_eq!(s.rv, 4);
        assert!(s.objects.iter().all(|o| o.name != "c"));

        assert_eq!(store.committed_rv().await.expect("committed rv"), 4);
        assert!(matches!(
            commit_outcome(store, 4, 6).await,
            CommitOutcome::NotLanded
        ));
        assert!(matches!(
            commit_outcome(store, 2, 4).await,
            CommitOutcome::Landed
        ));
        assert!(matches!(
            commit_outcome(store, 7, 9).await,
            CommitOutcome::Unknown(_)
        ));

        let row = AuditRow {
            id: 0,
            at: "2026-01-01T00:00:00.000000Z".into(),
            event: "org.import.started".into(),
            namespace: "default".into(),
            name: "o".into(),
            data: "{}".into(),
        };
        store.audit(&row).await.expect("audit");
        store
            .audit(&AuditRow {
                event: "other".into(),
                ..row.clone()
            })
            .await
            .expect("audit 2");
        let started = store
            .audit_rows(Some("org.import.started"))
            .await
            .expect("rows");
        assert_eq!(
            started,
            vec![AuditRow {
                id: 1,
                ..row.clone()
            }]
        );
        assert_eq!(store.audit_rows(None).await.expect("rows").len(), 2);

        // Filtered and limited in SQL, newest first.
        for (i, (ns, name, data)) in [
            ("team", "lead", r#"{"uid":"u-1"}"#),
            ("team", "dev", r#"{"workspace_uid":"u-2"}"#),
            ("team", "lead", "{}"),
            ("other", "lead", "not json"),
        ]
        .into_iter()
        .enumerate()
        {
            store
                .audit(&AuditRow {
                    id: 0,
                    at: format!("2026-02-0{}T00:00:00.000000Z", i + 1),
                    event: "workspace.touched".into(),
                    namespace: ns.into(),
                    name: name.into(),
                    data: data.into(),
                })
                .await
                .expect("audit");
        }
        let q = |filter: AuditFilter, limit| async move {
            store
                .audit_query(&filter, limit)
                .await
                .expect("query")
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(AuditFilter::default(), 3).await, vec![6, 5, 4]);
        let by_event = AuditFilter {
            event: Some("workspace.touched".into()),
            namespace: Some("team".into()),
            ..Default::default()
        };
        assert_eq!(q(by_event, 10).await, vec![5, 4, 3]);
        let ws = |uid: &str, object: Option<(&str, &str)>| AuditFilter {
            workspace: Some(WorkspaceRef {
                uid: uid.into(),
                object: object.map(|(a, b)| (a.into(), b.into())),
            }),
            ..Default::default()
        };
        assert_eq!(q(ws("u-1", None), 10).await, vec![3]);
        assert_eq!(q(ws("u-2", None), 10).await, vec![4]);
        // A workspace.* row without a uid belongs to the live workspace of that name.
        assert_eq!(q(ws("u-1", Some(("team", "lead"))), 10).await, vec![5, 3]);
        assert_eq!(q(ws("u-1", Some(("team", "lead"))), 1).await, vec![5]);

        // Retention: rows before the cutoff go, the rest stay.
        assert_eq!(
            store
                .audit_prune("2026-02-02T00:00:00.000000Z")
                .await
                .expect("prune"),
            3
        );
        assert_eq!(q(AuditFilter::default(), 100).await, vec![6, 5, 4]);
        assert_eq!(
            store
                .audit_prune("2026-02-02T00:00:00.000000Z")
                .await
                .expect("prune again"),
            0
        );
    }

    #[tokio::test]
    async fn sqlite_conformance() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&dir.path().join("m.db"))
            .await
            .expect("open");
        run(&store).await;
    }

    #[tokio::test]
    async fn postgres_conformance() {
        let Some(url) = crate::testing::postgres_url().await else {
            return;
        };
        let store = PostgresStore::connect(&url).await.expect("connect");
        run(&store).await;
    }
}
