//! Durable run state in the registry's database (SQLite or PostgreSQL, through sqlx's
//! `Any` driver). Every task's state change is written before the engine acts on it, so
//! after a crash the rows say which steps finished (never re-run), which were running
//! (re-run once, after their stale process is stopped) and which never started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nexus_database::{Database, Migrations};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::error::PipelineError;
use crate::graph::Pipeline;

type Result<T> = std::result::Result<T, PipelineError>;

pub use nexus_database::now_ms;

/// The pipelines' tables: migration 1001 of the database shared with the registry (the
/// pipelines own versions 1001..; see `nexus_database`).
fn migrations() -> Migrations {
    Migrations::new(
        1001,
        "pipelines",
        include_str!("../migrations/0001_pipelines.sql"),
    )
}

/// Run and task states, as the API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Running => "RUNNING",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Skipped => "SKIPPED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "PENDING" => Status::Pending,
            "RUNNING" => Status::Running,
            "SUCCEEDED" => Status::Succeeded,
            "FAILED" => Status::Failed,
            "SKIPPED" => Status::Skipped,
            "CANCELLED" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }
}

/// A stored artifact: where it lives in the object store and what KFP knows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    /// The object store location, as a URI (a plain path for a local store).
    pub uri: String,
    /// The object key below the store's root.
    pub key: String,
    /// A directory of files rather than one file.
    #[serde(default)]
    pub dir: bool,
    /// SHA-256 of the content, so caching sees through copies.
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    /// Only metadata, no content (an `Output[Metrics]` filled by `log_metric`): nothing is
    /// stored, `key` is empty and `uri` is where the step was told to write it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metadata_only: bool,
}

/// What a task produced. Artifacts are lists (KFP's `ArtifactList`; one element unless
/// collected from a loop).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    #[serde(default)]
    pub artifacts: BTreeMap<String, Vec<Artifact>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub status: Status,
    pub parameters: Value,
    pub outputs: Option<Outputs>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    #[serde(skip)]
    pub cancel_requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskRecord>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    pub path: String,
    pub name: String,
    pub status: Status,
    pub attempts: i64,
    pub cached: bool,
    pub outputs: Option<Outputs>,
    pub error: Option<String>,
    #[serde(skip)]
    pub handle: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A task state change to write.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskUpdate<'a> {
    pub status: Option<Status>,
    pub attempts: Option<i64>,
    pub cached: Option<bool>,
    pub outputs: Option<&'a Outputs>,
    pub error: Option<&'a str>,
    pub handle: Option<&'a str>,
    pub started: bool,
    pub finished: bool,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
    /// SQLite takes one writer at a time; queueing writers here, not in SQLite's busy
    /// handler (which sleeps in whole milliseconds), keeps a wide fan-out from stalling.
    writer: Arc<tokio::sync::Mutex<()>>,
    migrations: Migrations,
}

impl Store {
    /// Keeps the pipeline tables in the database behind `pool` (the registry's). Nothing
    /// connects yet: the first use connects and applies the migrations, so Nexus starts (and
    /// serves models) while the database is down, and pipeline requests answer 503 with the
    /// cause until it is back.
    pub fn new(pool: AnyPool) -> Self {
        let sqlite = Database::of_pool(&pool) == Database::Sqlite;
        Store {
            pool,
            sqlite,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            migrations: migrations(),
        }
    }

    /// Connects and migrates once; until that works every call tries again.
    async fn ready(&self) -> Result<()> {
        let migrated = self
            .migrations
            .apply(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(inner) => PipelineError::from(inner),
                other => {
                    PipelineError::Internal(format!("cannot migrate the pipeline tables: {other}"))
                }
            });
        match migrated {
            Err(PipelineError::Unavailable(why)) => {
                let cause = nexus_database::unreachable_cause(&self.pool, why).await;
                Err(PipelineError::Unavailable(format!(
                    "pipeline database unavailable: {cause}"
                )))
            }
            other => other,
        }
    }

    /// Waits for this process's turn to write (SQLite only).
    async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.sqlite {
            Some(self.writer.lock().await)
        } else {
            None
        }
    }

    pub async fn create_run(
        &self,
        id: &str,
        pipeline: &Pipeline,
        name: &str,
        parameters: &BTreeMap<String, Value>,
    ) -> Result<()> {
        self.ready().await?;
        sqlx::query(
            "INSERT INTO pipeline_runs (id, name, flavor, status, graph, parameters, created_at) VALUES ($1, $2, $3, 'PENDING', $4, $5, $6)",
        )
        .bind(id)
        .bind(name)
        .bind(pipeline.flavor.as_str())
        .bind(serde_json::to_string(pipeline)?)
        .bind(serde_json::to_string(parameters)?)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the run for `owner` when nobody holds it, `owner` already does, or the
    /// holder's heartbeat is older than `stale`.
    pub async fn claim(&self, id: &str, owner: &str, stale: Duration) -> Result<bool> {
        self.ready().await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE pipeline_runs SET owner = $1, heartbeat_at = $2 WHERE id = $3 AND status IN ('PENDING', 'RUNNING') AND (owner IS NULL OR owner = $1 OR heartbeat_at < $4)",
        )
        .bind(owner)
        .bind(now)
        .bind(id)
        .bind(now - stale.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn heartbeat(&self, owner: &str) -> Result<()> {
        self.ready().await?;
        sqlx::query("UPDATE pipeline_runs SET heartbeat_at = $1 WHERE owner = $2 AND status IN ('PENDING', 'RUNNING')")
            .bind(now_ms())
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Runs not finished: candidates to resume.
    pub async fn unfinished(&self) -> Result<Vec<String>> {
        self.ready().await?;
        let rows = sqlx::query("SELECT id FROM pipeline_runs WHERE status IN ('PENDING', 'RUNNING') ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    pub async fn graph(&self, id: &str) -> Result<(Pipeline, BTreeMap<String, Value>, String)> {
        self.ready().await?;
        let row = sqlx::query("SELECT graph, parameters, name FROM pipeline_runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| PipelineError::NotFound(format!("pipeline run '{id}' not found")))?;
        let graph: String = row.try_get("graph")?;
        let parameters: String = row.try_get("parameters")?;
        Ok((
            serde_json::from_str(&graph)?,
            serde_json::from_str(&parameters)?,
            row.try_get("name")?,
        ))
    }

    pub async fn set_run_status(
        &self,
        id: &str,
        status: Status,
        outputs: Option<&Outputs>,
        error: Option<&str>,
    ) -> Result<()> {
        self.ready().await?;
        let now = now_ms();
        let (started, finished) = match status {
            Status::Running => (Some(now), None),
            s if s.is_terminal() => (None, Some(now)),
            _ => (None, None),
        };
        sqlx::query(
            "UPDATE pipeline_runs SET status = $1, outputs = COALESCE($2, outputs), error = COALESCE($3, error), started_at = COALESCE(started_at, $4), finished_at = COALESCE($5, finished_at) WHERE id = $6",
        )
        .bind(status.as_str())
        .bind(outputs.map(serde_json::to_string).transpose()?)
        .bind(error)
        .bind(started)
        .bind(finished)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a cancel request; true when the run was still going.
    pub async fn request_cancel(&self, id: &str) -> Result<bool> {
        self.ready().await?;
        let done = sqlx::query(
            "UPDATE pipeline_runs SET cancel_requested = 1 WHERE id = $1 AND status IN ('PENDING', 'RUNNING')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A run's tasks in the order they were first seen (roughly the order they ran).
    pub async fn tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>> {
        self.ready().await?;
        let rows = sqlx::query(
            "SELECT path, name, status, attempts, cached, outputs, error, handle, started_at, finished_at FROM pipeline_tasks WHERE run_id = $1 ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_record).collect()
    }

    /// Writes a task's new state, creating its row on first sight.
    pub async fn update_task(
        &self,
        run_id: &str,
        path: &str,
        name: &str,
        u: TaskUpdate<'_>,
    ) -> Result<()> {
        self.ready().await?;
        let now = now_ms();
        let _turn = self.turn().await;
        // One statement, so one round trip and atomic without a transaction.
        sqlx::query(
            "INSERT INTO pipeline_tasks (run_id, path, name, seq, status, attempts, cached, outputs, error, handle, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, COALESCE($5, 'PENDING'), COALESCE($6, 0), COALESCE($7, 0), $8, $9, $10, $11, $12) \
             ON CONFLICT (run_id, path) DO UPDATE SET status = COALESCE($5, pipeline_tasks.status), \
             attempts = COALESCE($6, pipeline_tasks.attempts), cached = COALESCE($7, pipeline_tasks.cached), \
             outputs = COALESCE($8, pipeline_tasks.outputs), error = COALESCE($9, pipeline_tasks.error), \
             handle = COALESCE($10, pipeline_tasks.handle), started_at = COALESCE($11, pipeline_tasks.started_at), \
             finished_at = COALESCE($12, pipeline_tasks.finished_at)",
        )
        .bind(run_id)
        .bind(path)
        .bind(name)
        .bind(now * 1000 + seq_tiebreak())
        .bind(u.status.map(Status::as_str))
        .bind(u.attempts)
        .bind(u.cached.map(i64::from))
        .bind(u.outputs.map(serde_json::to_string).transpose()?)
        .bind(u.error)
        .bind(u.handle)
        .bind(u.started.then_some(now))
        .bind(u.finished.then_some(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn cached(&self, key: &str) -> Result<Option<Outputs>> {
        self.ready().await?;
        let row = sqlx::query("SELECT outputs FROM pipeline_cache WHERE cache_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>("outputs")?)?))
            .transpose()
    }

    pub async fn remember(
        &self,
        key: &str,
        outputs: &Outputs,
        run_id: &str,
        path: &str,
    ) -> Result<()> {
        self.ready().await?;
        sqlx::query(
            "INSERT INTO pipeline_cache (cache_key, outputs, run_id, path, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cache_key) DO UPDATE SET outputs = excluded.outputs, run_id = excluded.run_id, path = excluded.path, created_at = excluded.created_at",
        )
        .bind(key)
        .bind(serde_json::to_string(outputs)?)
        .bind(run_id)
        .bind(path)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_run(&self, id: &str, with_tasks: bool) -> Result<RunRecord> {
        self.ready().await?;
        let row = sqlx::query(AssertSqlSafe(format!("{RUN_SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| PipelineError::NotFound(format!("pipeline run '{id}' not found")))?;
        let mut run = run_record(&row)?;
        if with_tasks {
            run.tasks = Some(self.tasks(id).await?);
        }
        Ok(run)
    }

    /// Up to `limit` runs that `filter` selects, newest first, and where the next page
    /// starts when more match. Keyset paging (`created_at`, `id`), so a page costs the same
    /// however deep it is and runs created meanwhile neither repeat nor shift it.
    pub async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: i64,
    ) -> Result<(Vec<RunRecord>, Option<Cursor>)> {
        self.ready().await?;
        // Only fixed fragments go into the text; every value is bound, in this order.
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if filter.status.is_some() {
            conditions.push(format!("status = ${}", next()));
        }
        if filter.name.is_some() {
            conditions.push(format!("LOWER(name) LIKE ${} ESCAPE '\\'", next()));
        }
        if filter.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            conditions.push(format!(
                "(created_at < ${a} OR (created_at = ${b} AND id < ${c}))"
            ));
        }
        let limit_param = next();
        let mut sql = RUN_SELECT.to_string();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${limit_param}"
        ));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(name) = &filter.name {
            query = query.bind(like_pattern(&name.to_lowercase()));
        }
        if let Some(after) = &filter.after {
            query = query
                .bind(after.created_at)
                .bind(after.created_at)
                .bind(after.id.clone());
        }
        // One more than asked: whether it exists says whether there is a next page.
        let rows = query.bind(limit + 1).fetch_all(&self.pool).await?;
        let mut runs: Vec<RunRecord> = rows.iter().map(run_record).collect::<Result<_>>()?;
        let more = runs.len() as i64 > limit;
        runs.truncate(usize::try_from(limit).unwrap_or(0));
        let next = match (more, runs.last()) {
            (true, Some(last)) => Some(Cursor {
                created_at: last.created_at,
                id: last.id.clone(),
            }),
            _ => None,
        };
        Ok((runs, next))
    }
}

/// Which runs [`Store::list_runs`] returns.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub status: Option<Status>,
    /// Runs whose name contains this text, in any case.
    pub name: Option<String>,
    /// Only runs after this one in the list's order (a page token).
    pub after: Option<Cursor>,
}

/// A position in the list of runs (newest first): the last run of a page. Its text form
/// is the API's `page_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: i64,
    id: String,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_at, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = PipelineError;

    fn from_str(token: &str) -> Result<Cursor> {
        let invalid = || PipelineError::Invalid(format!("invalid page_token '{token}'"));
        let (created_at, id) = token.split_once('.').ok_or_else(invalid)?;
        // Run ids are UUIDs in simple form.
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid());
        }
        Ok(Cursor {
            created_at: created_at.parse().map_err(|_| invalid())?,
            id: id.to_string(),
        })
    }
}

/// `%text%` for `LIKE … ESCAPE '\'`, with the wildcards in `text` matched literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The columns `run_record` reads.
const RUN_SELECT: &str = "SELECT id, name, flavor, status, parameters, outputs, error, cancel_requested, created_at, started_at, finished_at FROM pipeline_runs";

/// Orders rows created in the same millisecond by creation within this process.
fn seq_tiebreak() -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000
}

fn json_column<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str) -> Result<Option<T>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(PipelineError::from))
        .transpose()
}

fn status_column(row: &AnyRow) -> Result<Status> {
    let s: String = row.try_get("status")?;
    Status::parse(&s).ok_or_else(|| PipelineError::Internal(format!("unknown stored status '{s}'")))
}

fn run_record(row: &AnyRow) -> Result<RunRecord> {
    Ok(RunRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: row.try_get("flavor")?,
        status: status_column(row)?,
        parameters: json_column(row, "parameters")?.unwrap_or(Value::Null),
        outputs: json_column(row, "outputs")?,
        error: row.try_get("error")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        tasks: None,
    })
}

fn task_record(row: &AnyRow) -> Result<TaskRecord> {
    Ok(TaskRecord {
        path: row.try_get("path")?,
        name: row.try_get("name")?,
        status: status_column(row)?,
        attempts: row.try_get("attempts")?,
        cached: row.try_get::<i64, _>("cached")? != 0,
        outputs: json_column(row, "outputs")?,
        error: row.try_get("error")?,
        handle: row.try_get("handle")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 230 runs, many created in the same millisecond, paged 100 at a time and filtered by
    /// name and status: every run once, newest first, and wildcards in a filter taken
    /// literally.
    async fn pages_and_filters(store: Store) {
        let pipeline: Pipeline = serde_json::from_value(serde_json::json!({
            "name": "p", "flavor": "nexus", "parameters": {}, "root": {"tasks": []}
        }))
        .unwrap();
        let id = |i: usize| format!("{i:032x}");
        for i in 0..230 {
            let name = match i % 2 {
                0 => format!("train_{i}"),
                _ => format!("Eval-{i}"),
            };
            store
                .create_run(&id(i), &pipeline, &name, &BTreeMap::new())
                .await
                .unwrap();
        }
        store
            .set_run_status(&id(7), Status::Failed, None, Some("boom"))
            .await
            .unwrap();

        let list = |filter: RunFilter| {
            let store = store.clone();
            async move {
                let mut pages = Vec::new();
                let mut filter = filter;
                loop {
                    let (runs, next) = store.list_runs(&filter, 100).await.unwrap();
                    pages.push(runs);
                    match next {
                        Some(cursor) => {
                            // The token goes through its text form, as clients send it.
                            filter.after = Some(cursor.to_string().parse().unwrap());
                        }
                        None => return pages,
                    }
                }
            }
        };
        let pages = list(RunFilter::default()).await;
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 30]
        );
        let all: Vec<&RunRecord> = pages.iter().flatten().collect();
        let ids: std::collections::BTreeSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 230);
        assert!(
            all.windows(2)
                .all(|w| (w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id))
        );

        let named = |name: &str| RunFilter {
            name: Some(name.into()),
            ..Default::default()
        };
        let count = |pages: Vec<Vec<RunRecord>>| pages.iter().map(Vec::len).sum::<usize>();
        assert_eq!(count(list(named("TRAIN")).await), 115);
        assert_eq!(count(list(named("eval-22")).await), 5); // Eval-221, -223, …, -229
        assert_eq!(count(list(named("n_")).await), 115);
        assert_eq!(count(list(named("%")).await), 0);
        let failed = list(RunFilter {
            status: Some(Status::Failed),
            ..Default::default()
        })
        .await;
        assert_eq!(
            failed.concat().iter().map(|r| &r.id).collect::<Vec<_>>(),
            [&id(7)]
        );

        for token in ["", "12", "x.abc", "12.", "12.a-b", "12.a b"] {
            assert!(token.parse::<Cursor>().is_err(), "{token}");
        }
    }

    #[tokio::test]
    async fn runs_page_and_filter_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let (pool, _) = nexus_database::open(&url).unwrap();
        pages_and_filters(Store::new(pool)).await;
    }

    #[tokio::test]
    async fn runs_page_and_filter_on_postgres() {
        let Some(database) = nexus_testing::PostgresDatabase::create("pipelines_list")
            .await
            .unwrap()
        else {
            return;
        };
        let (pool, _) = nexus_database::open(&database.url()).unwrap();
        pages_and_filters(Store::new(pool)).await;
    }
}
