//! A PostgreSQL database of a test's own on the test server, dropped with it.

use anyhow::{Context, Result};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The PostgreSQL server tests create their databases on (any database on it will do as
/// the one to connect to); [`POSTGRES_URL_ENV`] overrides it.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Environment variable naming the test server. When it is set, an unreachable server
/// fails the test instead of skipping its PostgreSQL part.
pub const POSTGRES_URL_ENV: &str = "NEXUS_TEST_POSTGRES_URL";

/// A fresh database on the test server, dropped (`WITH (FORCE)`) when this is dropped.
#[derive(Debug)]
pub struct PostgresDatabase {
    /// The URL CREATE and DROP DATABASE go through.
    admin_url: String,
    /// `scheme://user@` of the admin URL.
    prefix: String,
    /// The server's `host:port`.
    address: String,
    name: String,
}

impl PostgresDatabase {
    /// A new database named `prefix_<unique>`. `None` when the default server cannot be
    /// reached (with a SKIPPED note on stderr); when [`POSTGRES_URL_ENV`] is set, an
    /// unreachable server is an error.
    pub async fn create(prefix: &str) -> Result<Option<PostgresDatabase>> {
        let configured = std::env::var(POSTGRES_URL_ENV).ok();
        let admin_url = configured
            .clone()
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string());
        let mut admin = match PgConnection::connect(&admin_url).await {
            Ok(connection) => connection,
            Err(e) if configured.is_none() => {
                eprintln!(
                    "SKIPPED on PostgreSQL: cannot connect to {admin_url} ({e}); \
                     set {POSTGRES_URL_ENV} to require it"
                );
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {admin_url}")),
        };
        let name = crate::unique_name_with(prefix, '_');
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await?;
        let (scheme, rest) = admin_url
            .split_once("://")
            .context("a PostgreSQL URL has a scheme")?;
        let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, address) = match authority.rsplit_once('@') {
            Some((user, address)) => (format!("{user}@"), address),
            None => (String::new(), authority),
        };
        let address = if address.contains(':') {
            address.to_string()
        } else {
            format!("{address}:5432")
        };
        Ok(Some(PostgresDatabase {
            prefix: format!("{scheme}://{user}"),
            admin_url,
            address,
            name,
        }))
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        self.url_via(&self.address)
    }

    /// The database's URL with `address` (`host:port`) in place of the server's, to go
    /// through a proxy.
    pub fn url_via(&self, address: &str) -> String {
        format!("{}{address}/{}", self.prefix, self.name)
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let admin_url = std::mem::take(&mut self.admin_url);
        let name = std::mem::take(&mut self.name);
        // Drop may run inside the test's runtime, which cannot be blocked on: a thread of
        // its own with a runtime of its own drops the database.
        let dropped = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop a test database: {dropped:?}");
        }
    }
}
