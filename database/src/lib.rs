//! The one database that the registry, the pipeline runner and the gateway's API keys share
//! (SQLite or PostgreSQL, through sqlx's `Any` driver): how it is opened, and how each of
//! them applies its own migrations to it.
//!
//! Each component owns a range of migration versions in the one `_sqlx_migrations` table
//! (the registry 1.., the pipelines 1001.., API keys 2001..) and runs its own migrator,
//! ignoring the others' rows. Migrations run on first use and are tried again on every use
//! until they succeed, so Nexus starts, and serves models, while the database is down; the
//! components answer 503 with the cause meanwhile.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Connection, Executor, SqlStr};

/// Which database a pool runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Sqlite,
    Postgres,
}

impl Database {
    /// The database of `url`, if Nexus supports it.
    pub fn of_url(url: &str) -> Option<Database> {
        if url.starts_with("sqlite:") {
            Some(Database::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Database::Postgres)
        } else {
            None
        }
    }

    /// The database behind `pool`.
    pub fn of_pool(pool: &AnyPool) -> Database {
        match pool.connect_options().database_url.scheme() {
            "sqlite" => Database::Sqlite,
            _ => Database::Postgres,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://…")]
    Unsupported(String),
    #[error("invalid database URL {url}: {reason}")]
    Invalid { url: String, reason: String },
}

/// A pool for `url` (`sqlite://path?mode=rwc` or `postgres://…`) that connects on first use.
/// SQLite connections run in WAL mode with foreign keys on, a 10 s busy timeout and
/// case-sensitive `LIKE` (as MLflow's); PostgreSQL ones with standard-conforming strings.
pub fn open(url: &str) -> Result<(AnyPool, Database), DatabaseError> {
    sqlx::any::install_default_drivers();
    let database = Database::of_url(url).ok_or_else(|| DatabaseError::Unsupported(redact(url)))?;
    let options = AnyPoolOptions::new()
        .max_connections(if database == Database::Sqlite { 8 } else { 16 })
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if database == Database::Sqlite {
                    // WAL lets readers run beside the writer; LIKE is case-sensitive as in
                    // MLflow; the busy timeout makes concurrent writers wait, not fail.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA case_sensitive_like = ON").await?;
                } else {
                    // Values are bound, but the SQL text holds literals too: a server or
                    // database configured with `standard_conforming_strings = off` would
                    // read backslashes in them as escapes.
                    conn.execute("SET standard_conforming_strings = on").await?;
                }
                Ok(())
            })
        });
    let pool = options
        .connect_lazy(url)
        .map_err(|e| DatabaseError::Invalid {
            url: redact(url),
            reason: e.to_string(),
        })?;
    Ok((pool, database))
}

/// One component's migrations, applied once per process (see the module docs).
#[derive(Debug, Clone)]
pub struct Migrations {
    source: Source,
    applied: Arc<tokio::sync::OnceCell<()>>,
}

/// One migration, embedded in the binary so an installed `nexus` needs no files.
#[derive(Debug, Clone, Copy)]
struct Source {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

impl MigrationSource<'static> for Source {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(vec![Migration::new(
                self.version,
                self.description.into(),
                MigrationType::Simple,
                SqlStr::from_static(self.sql),
                false,
            )])
        })
    }
}

impl Migrations {
    /// The migration `version` (in the component's range) with its `sql`.
    pub fn new(version: i64, description: &'static str, sql: &'static str) -> Self {
        Migrations {
            source: Source {
                version,
                description,
                sql,
            },
            applied: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Applies the migrations to `pool` unless that was done already; after a failure the
    /// next call tries again.
    pub async fn apply(&self, pool: &AnyPool) -> Result<(), MigrateError> {
        self.applied
            .get_or_try_init(|| async {
                let mut migrator = Migrator::new(self.source).await?;
                // The other components' migrations share the table.
                migrator.set_ignore_missing(true);
                migrator.run(pool).await
            })
            .await
            .map(|_| ())
    }
}

/// Why `pool` cannot reach its database: "the pool timed out" hides the cause, so one
/// direct connection is tried (for at most 2 s); `fallback` when that says nothing more.
pub async fn unreachable_cause(pool: &AnyPool, fallback: String) -> String {
    let options = pool.connect_options();
    let direct = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::AnyConnection::connect_with(&options),
    )
    .await;
    match direct {
        Ok(Err(cause)) => cause.to_string(),
        Ok(Ok(_)) | Err(_) => fallback,
    }
}

/// `url` with its password masked, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Milliseconds since the epoch, as every table stores times.
pub fn now_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_database_and_hide_passwords() {
        assert_eq!(Database::of_url("sqlite://x.db"), Some(Database::Sqlite));
        assert_eq!(
            Database::of_url("postgresql://h/db"),
            Some(Database::Postgres)
        );
        assert!(matches!(
            open("mysql://h/db"),
            Err(DatabaseError::Unsupported(_))
        ));
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }

    /// Two components' migrations in one database: each applies its own and ignores the
    /// other's rows, and applying again is a no-op.
    #[tokio::test]
    async fn components_migrate_one_database_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let (pool, database) = open(&url).unwrap();
        assert_eq!(database, Database::Sqlite);
        assert_eq!(Database::of_pool(&pool), Database::Sqlite);
        let a = Migrations::new(1, "a", "CREATE TABLE a (x INTEGER)");
        let b = Migrations::new(1001, "b", "CREATE TABLE b (y INTEGER)");
        a.apply(&pool).await.unwrap();
        b.apply(&pool).await.unwrap();
        // A second process: fresh Migrations over the same database.
        Migrations::new(1, "a", "CREATE TABLE a (x INTEGER)")
            .apply(&pool)
            .await
            .unwrap();
        let tables: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('a', 'b')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(tables, 2);
    }
}
