//! The registry side of `nexus`: `nexus registry` processes a test can kill -9 and start
//! again on the same data, an MLflow REST client, and a fresh database per test.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nexus_testing::PostgresDatabase;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use tempfile::TempDir;

use super::{START_ATTEMPTS, free_port, json_reply};

/// A client for the MLflow REST API of a registry at one base URL.
#[derive(Clone)]
pub struct Mlflow {
    base: String,
    client: reqwest::Client,
}

impl Mlflow {
    /// A client for the registry at `base_url` (`http://127.0.0.1:PORT`).
    pub fn new(base_url: &str) -> Self {
        Mlflow {
            base: base_url.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Calls `endpoint` (under `/api/2.0/mlflow/`) with `params`: as the query string for
    /// GET (arrays as repeated keys), as a JSON body otherwise. Returns the status and the
    /// body as JSON (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        endpoint: &str,
        params: &Value,
    ) -> Result<(u16, Value)> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let request = if method == Method::GET {
            self.client.get(&url).query(&query_pairs(params))
        } else {
            self.client.request(method.clone(), &url).json(params)
        };
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        json_reply(response).await
    }

    /// [`Mlflow::call`], failing unless the answer is 200; returns the body.
    pub async fn ok(&self, method: Method, endpoint: &str, params: &Value) -> Result<Value> {
        let (status, body) = self.call(method.clone(), endpoint, params).await?;
        ensure!(
            status == 200,
            "{method} {endpoint} {params} answered {status}: {body}"
        );
        Ok(body)
    }

    /// POSTs `params` to `endpoint`, failing unless the answer is 200.
    pub async fn post(&self, endpoint: &str, params: &Value) -> Result<Value> {
        self.ok(Method::POST, endpoint, params).await
    }

    /// GETs `endpoint` with `params` as the query, failing unless the answer is 200.
    pub async fn get(&self, endpoint: &str, params: &Value) -> Result<Value> {
        self.ok(Method::GET, endpoint, params).await
    }

    /// The URL of the proxied artifact at `path` (`/api/2.0/mlflow-artifacts/artifacts/…`).
    pub fn artifact_url(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow-artifacts/artifacts/{path}", self.base)
    }

    /// The artifact listing of `path`: `(path, is_dir, file_size)` per entry.
    pub async fn list_artifacts(&self, path: &str) -> Result<Vec<(String, bool, Option<u64>)>> {
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts", self.base);
        let response = self
            .client
            .get(&url)
            .query(&[("path", path)])
            .send()
            .await?;
        let (status, body) = json_reply(response).await?;
        ensure!(status == 200, "listing {path:?} answered {status}: {body}");
        let files = body["files"].as_array().cloned().unwrap_or_default();
        files
            .iter()
            .map(|f| {
                let name = f["path"].as_str().with_context(|| format!("{body}"))?;
                Ok((
                    name.to_string(),
                    f["is_dir"].as_bool().unwrap_or(false),
                    f["file_size"].as_u64(),
                ))
            })
            .collect()
    }

    /// Creates an experiment named `name` and a run in it; returns the run id.
    pub async fn create_run(&self, name: &str) -> Result<String> {
        let experiment = self
            .post("experiments/create", &serde_json::json!({"name": name}))
            .await?;
        let id = experiment["experiment_id"]
            .as_str()
            .with_context(|| format!("{experiment}"))?;
        let run = self
            .post("runs/create", &serde_json::json!({"experiment_id": id}))
            .await?;
        run["run"]["info"]["run_id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{run}"))
    }
}

/// A JSON object as query pairs: strings as they are, numbers and booleans as text,
/// arrays as repeated keys.
fn query_pairs(params: &Value) -> Vec<(String, String)> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut pairs = Vec::new();
    for (key, value) in params.as_object().into_iter().flatten() {
        match value {
            Value::Array(items) => pairs.extend(items.iter().map(|v| (key.clone(), text(v)))),
            Value::Null => {}
            other => pairs.push((key.clone(), text(other))),
        }
    }
    pairs
}

/// The database a test runs the registry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// SQLite in the data dir (the registry's default).
    Sqlite,
    /// A database of its own on the PostgreSQL server of `NEXUS_TEST_POSTGRES_URL`.
    Postgres,
}

/// A fresh database for one test: nothing for SQLite (the registry creates it in its
/// data dir), a new PostgreSQL database otherwise, dropped when this is dropped.
pub struct TestDatabase {
    kind: Database,
    postgres: Option<PostgresDatabase>,
}

impl TestDatabase {
    /// A fresh database of `kind`. `None` when PostgreSQL is asked for but the default
    /// server cannot be reached (with a note on stderr); when `NEXUS_TEST_POSTGRES_URL`
    /// is set, an unreachable server is an error.
    pub async fn create(kind: Database) -> Result<Option<TestDatabase>> {
        let postgres = match kind {
            Database::Sqlite => None,
            Database::Postgres => match PostgresDatabase::create("nexus_rs").await? {
                Some(database) => Some(database),
                None => return Ok(None),
            },
        };
        Ok(Some(TestDatabase { kind, postgres }))
    }

    /// The kind of database.
    pub fn kind(&self) -> Database {
        self.kind
    }

    /// `--database-url URL` for PostgreSQL; nothing for SQLite (the data dir's default).
    pub fn args(&self) -> Vec<String> {
        match &self.postgres {
            Some(pg) => vec!["--database-url".into(), pg.url()],
            None => Vec::new(),
        }
    }

    /// The PostgreSQL server's `host:port`.
    pub fn address(&self) -> Option<&str> {
        self.postgres.as_ref().map(PostgresDatabase::address)
    }

    /// The database's URL with `address` (`host:port`) in place of the server's, to go
    /// through a proxy. Empty for SQLite.
    pub fn url_via(&self, address: &str) -> String {
        self.postgres
            .as_ref()
            .map(|pg| pg.url_via(address))
            .unwrap_or_default()
    }
}

/// Runs `PRAGMA integrity_check` on the SQLite database at `path` (read-only, beside a
/// running registry if need be); fails unless it answers `ok`.
pub async fn sqlite_integrity_check(path: &Path) -> Result<()> {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut connection = sqlx::SqliteConnection::connect(&url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut connection)
        .await?;
    connection.close().await?;
    ensure!(
        rows == ["ok"],
        "integrity_check of {}: {rows:?}",
        path.display()
    );
    Ok(())
}

/// A `nexus registry` process over one data dir: it can be killed with SIGKILL and
/// started again on the same data. Killed when dropped; its stderr (every start's) is
/// printed if the test panicked.
pub struct RegistryServer {
    child: Option<Child>,
    pub port: u16,
    data_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    _log_dir: TempDir,
    client: reqwest::Client,
}

impl RegistryServer {
    /// Starts `nexus registry --data-dir DATA_DIR` with `args` appended on a free port,
    /// and waits until `/health` answers 200.
    pub async fn start(data_dir: &Path, args: &[String]) -> Result<RegistryServer> {
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join("stderr.log");
        let mut server = RegistryServer {
            child: None,
            port: 0,
            data_dir: data_dir.to_path_buf(),
            args: args.to_vec(),
            log,
            _log_dir: log_dir,
            client: reqwest::Client::new(),
        };
        server.restart().await?;
        Ok(server)
    }

    /// Kills the process with SIGKILL (what `Child::kill` sends) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The process may have exited already; then there is nothing to kill.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, starts it again on the same data dir and arguments
    /// (on a new free port), and waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        for attempt in 1..=START_ATTEMPTS {
            self.port = free_port()?;
            self.child = Some(spawn_registry(
                &self.data_dir,
                &self.args,
                &self.log,
                self.port,
            )?);
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < START_ATTEMPTS && self.stderr().contains("cannot listen") => {
                    eprintln!("port taken, starting again: {e:#}");
                    self.kill();
                }
                Err(e) => return Err(e.context(format!("stderr:\n{}", self.stderr()))),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let url = self.url("/health");
        let child = self
            .child
            .as_mut()
            .context("nexus registry is not running")?;
        super::wait_for_ok(child, &self.client, &url, "nexus registry").await
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A client of this registry (of its current port).
    pub fn mlflow(&self) -> Mlflow {
        Mlflow::new(&self.url(""))
    }

    /// The SQLite database file of the data dir (used when no `--database-url` is given).
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("registry.db")
    }

    /// What the process wrote to stderr so far, over every start.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read stderr: {e})"))
    }
}

fn spawn_registry(data_dir: &Path, args: &[String], log: &Path, port: u16) -> Result<Child> {
    let stderr = fs::OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("registry")
        .args(["--address", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("cannot start nexus registry")
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- nexus registry stderr (port {}) ----\n{}",
                self.port,
                self.stderr()
            );
        }
    }
}

/// A `nexus registry` on a fresh database and data dir. Fields drop in order: the
/// process first, then its files, then the database.
pub struct Fixture {
    pub server: RegistryServer,
    _data: TempDir,
    _database: TestDatabase,
}

impl Fixture {
    /// `None` when `kind` is PostgreSQL and no server is reachable.
    pub async fn start(kind: Database) -> Result<Option<Fixture>> {
        let Some(database) = TestDatabase::create(kind).await? else {
            return Ok(None);
        };
        let data = tempfile::tempdir()?;
        let server = RegistryServer::start(data.path(), &database.args()).await?;
        Ok(Some(Fixture {
            server,
            _data: data,
            _database: database,
        }))
    }

    pub fn mlflow(&self) -> Mlflow {
        self.server.mlflow()
    }
}

/// `[{key, value}, …]` from pairs.
pub fn tags<K: ToString, V: ToString>(pairs: impl IntoIterator<Item = (K, V)>) -> Value {
    Value::Array(
        pairs
            .into_iter()
            .map(|(k, v)| json!({"key": k.to_string(), "value": v.to_string()}))
            .collect(),
    )
}

/// A `[{key, value}, …]` list as a map.
pub fn tag_map(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["key"].as_str().unwrap_or_default().to_string(),
                t["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A model version's number.
pub fn version_of(model_version: &Value) -> Result<u64> {
    model_version["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no version number in {model_version}"))
}

/// Every visible version of `name` (model-versions/search, all pages).
pub async fn all_versions(mlflow: &Mlflow, name: &str) -> Result<Vec<Value>> {
    let mut versions = Vec::new();
    let mut token = String::new();
    loop {
        let mut params = json!({"filter": format!("name = '{name}'"), "max_results": 1000});
        if !token.is_empty() {
            params["page_token"] = json!(token);
        }
        let page = mlflow.get("model-versions/search", &params).await?;
        versions.extend(
            page["model_versions"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        match page["next_page_token"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => return Ok(versions),
        }
    }
}

/// Creates a version of `name` from `source` with `tag_pairs`; returns the status and body.
pub async fn create_version(
    mlflow: &Mlflow,
    name: &str,
    source: &str,
    tag_pairs: Value,
) -> Result<(u16, Value)> {
    mlflow
        .call(
            Method::POST,
            "model-versions/create",
            &json!({"name": name, "source": source, "tags": tag_pairs}),
        )
        .await
}
