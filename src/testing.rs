//! Test support shared by unit and integration tests.

/// A fresh, empty Postgres database for one test, from `MOLECULE_TEST_DATABASE_URL` (a URL of
/// a server where the user may CREATE DATABASE). `None` when unset, except in CI (`CI=true`),
/// where a missing Postgres is an error: the suites must run on both backends there.
pub async fn postgres_url() -> Option<String> {
    use sqlx::Connection;
    let Ok(base) = std::env::var("MOLECULE_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must set MOLECULE_TEST_DATABASE_URL so the Postgres suites run"
        );
        return None;
    };
    let name = format!("molecule_test_{}", crate::util::random_suffix(10));
    let mut conn = sqlx::postgres::PgConnection::connect(&base)
        .await
        .expect("connect to MOLECULE_TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    Some(format!("{prefix}/{name}"))
}

pub mod harness;
pub mod logs;
