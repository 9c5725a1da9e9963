//! Persistence behind one trait: SQLite (the default, a file in the data dir) and Postgres
//! (`DATABASE_URL`). Each backend has its own migrations folder under `migrations/`.
//!
//! The store is deliberately dumb: the API server assigns resourceVersions and hands over
//! batches of changes; the store writes each batch (object rows, change-log rows and the RV
//! counter) in one transaction, so an acknowledged write survives `kill -9`.

mod crypto;
mod migrate;
mod postgres;
mod sqlite;

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
    pub at: String,
    pub event: String,
    pub namespace: String,
    pub name: String,
    pub data: String,
}

/// The persistence trait shared by SQLite and Postgres.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and metrics: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Loads the live objects and the newest `history` changes.
    async fn load(&self, history: usize) -> Result<Snapshot, StoreError>;
    /// Writes a batch of changes, in order, in one transaction; `rv` becomes the counter.
    async fn commit(&self, rv: i64, changes: &[ChangeRow]) -> Result<(), StoreError>;
    /// Drops change-log rows with rv <= `upto` and records the new floor.
    async fn compact(&self, upto: i64) -> Result<(), StoreError>;
    /// Appends an audit row.
    async fn audit(&self, row: &AuditRow) -> Result<(), StoreError>;
    /// Audit rows, oldest first, optionally only those with the given event name.
    async fn audit_rows(&self, event: Option<&str>) -> Result<Vec<AuditRow>, StoreError>;
}

/// Opens the store named by `database_url` (`postgres://…`), or the SQLite file `sqlite_path`.
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

        let row = AuditRow {
            at: "t".into(),
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
        assert_eq!(
            store
                .audit_rows(Some("org.import.started"))
                .await
                .expect("rows"),
            vec![row]
        );
        assert_eq!(store.audit_rows(None).await.expect("rows").len(), 2);
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
