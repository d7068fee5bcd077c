//! The key store on both databases: PostgreSQL (a database of its own on
//! `NEXUS_TEST_POSTGRES_URL`'s server, dropped afterwards) and SQLite shared with other
//! migrators, as the registry's database is.

mod common;

use std::time::Duration;

use futures::future::BoxFuture;
use nexus_gateway::{GatewayError, KeyStore, Role};
use nexus_testing::PostgresDatabase;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlStr};

/// Creates, verifies, lists and revokes keys, and checks the migration's version.
async fn exercise(pool: AnyPool) {
    let keys = KeyStore::new(pool.clone());
    keys.migrate().await.unwrap();
    keys.migrate().await.unwrap();

    let (id, token) = keys
        .create("deploy bot", Role::Deployer, None)
        .await
        .unwrap();
    assert!(token.starts_with("nexus_") && token.len() > 40, "{token}");
    let principal = keys.verify(&token).await.unwrap().unwrap();
    assert_eq!(principal.role, Role::Deployer);
    assert_eq!(principal.subject, "deploy bot");
    assert_eq!(principal.credential, format!("key:{id}"));
    assert_eq!(keys.verify("nexus_other").await.unwrap(), None);
    assert_eq!(keys.verify("not a key").await.unwrap(), None);

    // Only the hash is stored.
    let stored: String = sqlx::query("SELECT hash FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("hash");
    assert_eq!(stored.len(), 64);
    assert!(!stored.contains(&token[6..]));

    let (id2, _) = keys
        .create("reader", Role::Reader, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    let listed = keys.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    let second = listed.iter().find(|k| k.id == id2).unwrap();
    assert_eq!(second.role, Role::Reader);
    let lifetime = second.expires_at.unwrap() - second.created_at;
    assert!((3_599_000..=3_601_000).contains(&lifetime), "{lifetime}");

    // Revoked through this store: refused at once (its cache entry is dropped).
    keys.revoke(&id).await.unwrap();
    assert_eq!(keys.verify(&token).await.unwrap(), None);
    keys.revoke(&id).await.unwrap();
    assert!(matches!(
        keys.revoke("missing").await,
        Err(GatewayError::NoSuchKey(_))
    ));

    let version: i64 = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("v");
    assert_eq!(version, 2001);
}

#[tokio::test]
async fn keys_on_postgres() {
    sqlx::any::install_default_drivers();
    let Some(database) = PostgresDatabase::create("nexus_gateway").await.unwrap() else {
        return;
    };
    let pool = AnyPool::connect(&database.url()).await.unwrap();
    let outcome = tokio::spawn(exercise(pool.clone())).await;
    pool.close().await;
    drop(database);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Stands in for the registry's and the pipelines' migrators (versions 1 and 1001).
#[derive(Debug)]
struct Others;

impl MigrationSource<'static> for Others {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(vec![
                Migration::new(
                    1,
                    "registry".into(),
                    MigrationType::Simple,
                    SqlStr::from_static("CREATE TABLE registered_models (name TEXT PRIMARY KEY);"),
                    false,
                ),
                Migration::new(
                    1001,
                    "pipelines".into(),
                    MigrationType::Simple,
                    SqlStr::from_static("CREATE TABLE pipeline_runs (id TEXT PRIMARY KEY);"),
                    false,
                ),
            ])
        })
    }
}

async fn run_others(pool: &AnyPool) {
    let mut others = Migrator::new(Others).await.unwrap();
    others.set_ignore_missing(true);
    others.run(pool).await.unwrap();
}

#[tokio::test]
async fn keys_share_the_registry_database() {
    // Others first, then the keys; and on a second file the other way round.
    let (_dir, pool, _) = common::sqlite_keys().await;
    run_others(&pool).await;
    exercise(pool).await;

    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("other.db").display()
    );
    let pool = AnyPool::connect(&url).await.unwrap();
    run_others(&pool).await;
    KeyStore::new(pool.clone()).migrate().await.unwrap();
    run_others(&pool).await;
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(count, 3);
}
