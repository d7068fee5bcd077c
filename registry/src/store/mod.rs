//! The metadata store: experiments, runs, metrics, registered models, versions, aliases
//! and logged models, in SQLite (the embedded default) or PostgreSQL through sqlx's `Any`
//! driver. One schema and one set of queries serve both: the SQL used is what both accept,
//! and the few differences (connection pragmas) are set when a connection opens.
//!
//! Every change that touches more than one row runs in a transaction, so a crash never
//! leaves a half-created version or run visible.

pub mod models;

use std::collections::HashMap;

use futures::future::try_join_all;
use nexus_database::{Migrations, redact};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::error::RegistryError;
use crate::search::{self, Bind, Entity};
use crate::types::*;

type Result<T> = std::result::Result<T, RegistryError>;

pub use nexus_database::{Database, now_ms};

/// The registry's tables: migration 1 of the shared database (see `nexus_database`).
fn migrations() -> Migrations {
    Migrations::new(
        1,
        "registry",
        include_str!("../../migrations/0001_registry.sql"),
    )
}

/// Largest page MLflow allows for most searches.
const MAX_RESULTS: i64 = 50_000;

fn page_size(max_results: Option<i64>, default: i64) -> Result<i64> {
    match max_results {
        None | Some(0) => Ok(default),
        Some(n) if (1..=MAX_RESULTS).contains(&n) => Ok(n),
        Some(n) => Err(RegistryError::Invalid(format!(
            "Invalid value {n} for parameter 'max_results' supplied. It must be at most {MAX_RESULTS}"
        ))),
    }
}

/// The metadata store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    database: Database,
    migrations: Migrations,
    /// The database URL, for messages (redacted).
    url: String,
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s),
            Bind::Int(i) => query.bind(i),
            Bind::Float(f) => query.bind(f),
        };
    }
    query
}

fn kv(rows: Vec<AnyRow>) -> Result<Vec<KeyValue>> {
    rows.iter()
        .map(|r| {
            Ok(KeyValue {
                key: r.try_get("key")?,
                value: r.try_get("value")?,
            })
        })
        .collect()
}

impl Store {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`) and applies the
    /// migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let (pool, database) =
            nexus_database::open(url).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let store = Store {
            pool,
            database,
            migrations: migrations(),
            url: url.to_string(),
        };
        match store.ready().await {
            Err(RegistryError::Unavailable(why)) => {
                tracing::warn!(%why, "registry database unavailable; registry requests answer 503 until it is back");
            }
            other => other?,
        }
        Ok(store)
    }

    /// Connects and applies the migrations once; until that succeeds every call retries,
    /// so a database that was down at start-up is picked up when it comes back.
    pub async fn ready(&self) -> Result<()> {
        let migrated = self.migrations.apply(&self.pool).await.map_err(|e| {
            let cause = match e {
                sqlx::migrate::MigrateError::Execute(inner) => match RegistryError::from(inner) {
                    unavailable @ RegistryError::Unavailable(_) => return unavailable,
                    other => other.to_string(),
                },
                other => other.to_string(),
            };
            RegistryError::Internal(format!("cannot migrate the registry database: {cause}"))
        });
        match migrated {
            Ok(()) => Ok(()),
            Err(e) => Err(self.explain(e).await),
        }
    }

    /// Turns "the pool timed out" into why the database cannot be reached.
    async fn explain(&self, e: RegistryError) -> RegistryError {
        let RegistryError::Unavailable(why) = e else {
            return e;
        };
        let cause = nexus_database::unreachable_cause(&self.pool, why).await;
        RegistryError::Unavailable(format!(
            "registry database {} is unavailable: {cause}",
            redact(&self.url)
        ))
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`), so concurrent writers queue on the busy timeout instead of failing with
    /// "database is locked" when a read-then-write transaction tries to upgrade its lock.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.database {
            Database::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Database::Postgres => self.pool.begin().await?,
        })
    }

    /// The connection pool, for the pipeline runner's tables in the same database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The database kind.
    pub fn database(&self) -> Database {
        self.database
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.ready().await?;
        if let Err(e) = sqlx::query("SELECT 1").fetch_one(&self.pool).await {
            return Err(self.explain(e.into()).await);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- experiments

    /// Creates an experiment; `artifact_location` defaults to `mlflow-artifacts:/<id>`.
    pub async fn create_experiment(
        &self,
        name: &str,
        artifact_location: Option<&str>,
        tags: &[KeyValue],
    ) -> Result<String> {
        if name.trim().is_empty() {
            return Err(RegistryError::Invalid("Invalid experiment name: ''".into()));
        }
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT experiment_id FROM experiments WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(RegistryError::AlreadyExists(format!(
                "Experiment '{name}' already exists."
            )));
        }
        let id: i64 = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'experiment_id' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let location = artifact_location
            .filter(|l| !l.is_empty())
            .map_or_else(|| format!("mlflow-artifacts:/{id}"), str::to_string);
        let now = now_ms();
        sqlx::query(
            "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time) \
             VALUES ($1, $2, $3, 'active', $4, $4)",
        )
        .bind(id)
        .bind(name)
        .bind(&location)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for tag in tags {
            sqlx::query(
                "INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(&tag.key)
            .bind(&tag.value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id.to_string())
    }

    fn experiment_id(id: &str) -> Result<i64> {
        id.parse()
            .map_err(|_| RegistryError::Invalid(format!("Invalid experiment ID: '{id}'")))
    }

    async fn experiment_from_row(&self, row: &AnyRow) -> Result<Experiment> {
        let id: i64 = row.try_get("experiment_id")?;
        let tags = sqlx::query(
            "SELECT key, value FROM experiment_tags WHERE experiment_id = $1 ORDER BY key",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Experiment {
            experiment_id: id.to_string(),
            name: row.try_get("name")?,
            artifact_location: row.try_get("artifact_location")?,
            lifecycle_stage: row.try_get("lifecycle_stage")?,
            last_update_time: row.try_get("last_update_time")?,
            creation_time: row.try_get("creation_time")?,
            tags: kv(tags)?,
        })
    }

    /// An experiment by id.
    pub async fn get_experiment(&self, id: &str) -> Result<Experiment> {
        let row = sqlx::query("SELECT * FROM experiments WHERE experiment_id = $1")
            .bind(Self::experiment_id(id)?)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("No Experiment with id={id} exists")))?;
        self.experiment_from_row(&row).await
    }

    /// An experiment by name.
    pub async fn get_experiment_by_name(&self, name: &str) -> Result<Experiment> {
        let row = sqlx::query("SELECT * FROM experiments WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("Could not find experiment with name '{name}'"))
            })?;
        self.experiment_from_row(&row).await
    }

    /// Experiments matching an MLflow filter, in pages.
    pub async fn search_experiments(
        &self,
        view_type: ViewType,
        filter: &str,
        order_by: &[String],
        max_results: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<Experiment>> {
        let rows = self
            .search_rows(
                Entity::Experiments,
                "experiments e",
                "e",
                view_type,
                filter,
                order_by,
                max_results,
                1000,
                page_token,
            )
            .await?;
        let (rows, next) = rows;
        Ok(Page {
            items: try_join_all(rows.iter().map(|row| self.experiment_from_row(row))).await?,
            next_page_token: next,
        })
    }

    /// Shared search: WHERE from the filter and lifecycle view, ORDER BY, LIMIT/OFFSET
    /// from the page token. Returns the rows and the next page token.
    #[allow(clippy::too_many_arguments)]
    async fn search_rows(
        &self,
        entity: Entity,
        from: &str,
        alias: &str,
        view_type: ViewType,
        filter: &str,
        order_by: &[String],
        max_results: Option<i64>,
        default_page: i64,
        page_token: Option<&str>,
    ) -> Result<(Vec<AnyRow>, Option<String>)> {
        self.search_rows_with(
            entity,
            from,
            alias,
            view_type,
            filter,
            order_by,
            max_results,
            default_page,
            page_token,
            None,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn search_rows_with(
        &self,
        entity: Entity,
        from: &str,
        alias: &str,
        view_type: ViewType,
        filter: &str,
        order_by: &[String],
        max_results: Option<i64>,
        default_page: i64,
        page_token: Option<&str>,
        extra: Option<(String, Vec<Bind>)>,
    ) -> Result<(Vec<AnyRow>, Option<String>)> {
        let limit = page_size(max_results, default_page)?;
        let offset = match page_token.filter(|t| !t.is_empty()) {
            Some(t) => search::decode_page_token(t)?,
            None => 0,
        };
        let mut binds = Vec::new();
        let mut conditions = Vec::new();
        if let Some(stage) = view_type.condition(alias) {
            conditions.push(stage);
        }
        if let Some((sql, extra_binds)) = extra {
            conditions.push(sql);
            binds.extend(extra_binds);
        }
        let where_filter = search::filter(entity, filter, binds.len() + 1)?;
        conditions.push(where_filter.text);
        binds.extend(where_filter.binds);
        let order = search::order_by_from(entity, order_by, binds.len() + 1)?;
        binds.extend(order.binds);
        let sql = format!(
            "SELECT {alias}.* FROM {from} WHERE {} ORDER BY {} LIMIT {} OFFSET {}",
            conditions.join(" AND "),
            order.text,
            limit + 1,
            offset
        );
        let mut rows = bind_all(sqlx::query(AssertSqlSafe(sql)), binds)
            .fetch_all(&self.pool)
            .await?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            Some(search::encode_page_token(offset + limit as u64))
        } else {
            None
        };
        Ok((rows, next))
    }

    async fn set_experiment_stage(&self, id: &str, from: &str, to: &str) -> Result<()> {
        let done = sqlx::query(
            "UPDATE experiments SET lifecycle_stage = $1, last_update_time = $2 WHERE experiment_id = $3 AND lifecycle_stage = $4",
        )
        .bind(to)
        .bind(now_ms())
        .bind(Self::experiment_id(id)?)
        .bind(from)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            self.get_experiment(id).await?;
            return Err(RegistryError::Invalid(format!(
                "Cannot change experiment {id}: it is not {from}"
            )));
        }
        Ok(())
    }

    /// Marks an experiment deleted (restorable), as MLflow does.
    pub async fn delete_experiment(&self, id: &str) -> Result<()> {
        if id == "0" {
            return Err(RegistryError::Invalid(
                "Cannot delete the default experiment '0'.".into(),
            ));
        }
        self.set_experiment_stage(id, "active", "deleted").await
    }

    /// Restores a deleted experiment.
    pub async fn restore_experiment(&self, id: &str) -> Result<()> {
        self.set_experiment_stage(id, "deleted", "active").await
    }

    /// Renames an experiment.
    pub async fn rename_experiment(&self, id: &str, new_name: &str) -> Result<()> {
        if new_name.trim().is_empty() {
            return Err(RegistryError::Invalid("Invalid experiment name: ''".into()));
        }
        self.get_experiment(id).await?;
        sqlx::query(
            "UPDATE experiments SET name = $1, last_update_time = $2 WHERE experiment_id = $3",
        )
        .bind(new_name)
        .bind(now_ms())
        .bind(Self::experiment_id(id)?)
        .execute(&self.pool)
        .await
        .map_err(|e| match RegistryError::from(e) {
            RegistryError::AlreadyExists(_) => {
                RegistryError::AlreadyExists(format!("Experiment '{new_name}' already exists."))
            }
            other => other,
        })?;
        Ok(())
    }

    /// Sets an experiment tag.
    pub async fn set_experiment_tag(&self, id: &str, key: &str, value: &str) -> Result<()> {
        self.get_experiment(id).await?;
        sqlx::query(
            "INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(Self::experiment_id(id)?)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes an experiment tag.
    pub async fn delete_experiment_tag(&self, id: &str, key: &str) -> Result<()> {
        self.get_experiment(id).await?;
        let done = sqlx::query("DELETE FROM experiment_tags WHERE experiment_id = $1 AND key = $2")
            .bind(Self::experiment_id(id)?)
            .bind(key)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::NotFound(format!(
                "No tag with name: {key} in experiment {id}"
            )));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- runs

    /// Creates a run in an active experiment.
    pub async fn create_run(
        &self,
        experiment_id: &str,
        user_id: &str,
        run_name: Option<&str>,
        start_time: Option<i64>,
        tags: &[KeyValue],
    ) -> Result<Run> {
        let experiment = self.get_experiment(experiment_id).await?;
        if experiment.lifecycle_stage != "active" {
            return Err(RegistryError::Invalid(format!(
                "The experiment {experiment_id} must be in the 'active' state. Current state is {}.",
                experiment.lifecycle_stage
            )));
        }
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let tag_name = tags
            .iter()
            .find(|t| t.key == "mlflow.runName")
            .map(|t| t.value.as_str());
        let name = run_name
            .filter(|n| !n.is_empty())
            .or(tag_name)
            .map_or_else(|| format!("run-{}", &run_id[..8]), str::to_string);
        let artifact_uri = format!(
            "{}/{run_id}/artifacts",
            experiment.artifact_location.trim_end_matches('/')
        );
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO runs (run_uuid, experiment_id, run_name, user_id, status, start_time, end_time, artifact_uri, lifecycle_stage) \
             VALUES ($1, $2, $3, $4, 'RUNNING', $5, NULL, $6, 'active')",
        )
        .bind(&run_id)
        .bind(Self::experiment_id(experiment_id)?)
        .bind(&name)
        .bind(user_id)
        .bind(start_time.unwrap_or_else(now_ms))
        .bind(&artifact_uri)
        .execute(&mut *tx)
        .await?;
        let mut all_tags: Vec<KeyValue> = tags
            .iter()
            .filter(|t| t.key != "mlflow.runName")
            .cloned()
            .collect();
        all_tags.push(KeyValue {
            key: "mlflow.runName".into(),
            value: name,
        });
        for tag in &all_tags {
            upsert_tag(&mut tx, "run_tags", "run_uuid", &run_id, tag).await?;
        }
        tx.commit().await?;
        self.get_run(&run_id).await
    }

    async fn run_row(&self, run_id: &str) -> Result<AnyRow> {
        sqlx::query("SELECT * FROM runs WHERE run_uuid = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("Run with id={run_id} not found")))
    }

    /// Rows related to each of `ids`, keyed by the first selected column (text or integer):
    /// `sql` selects from one table with `{ids}` standing for the placeholder list, after
    /// the `fixed` binds. A page costs one query per related table, not one per row.
    async fn related(
        &self,
        sql: &str,
        fixed: &[Bind],
        ids: &[Bind],
    ) -> Result<HashMap<String, Vec<AnyRow>>> {
        let mut grouped: HashMap<String, Vec<AnyRow>> = HashMap::new();
        // Chunks keep the placeholder count well under SQLite's limit.
        for chunk in ids.chunks(500) {
            let first = fixed.len() + 1;
            let marks: Vec<String> = (first..first + chunk.len())
                .map(|i| format!("${i}"))
                .collect();
            let query = sql.replace("{ids}", &marks.join(", "));
            let binds = fixed.iter().chain(chunk).cloned().collect();
            for row in bind_all(sqlx::query(AssertSqlSafe(query)), binds)
                .fetch_all(&self.pool)
                .await?
            {
                let key = match row.try_get::<String, _>(0) {
                    Ok(text) => text,
                    Err(_) => row.try_get::<i64, _>(0)?.to_string(),
                };
                grouped.entry(key).or_default().push(row);
            }
        }
        Ok(grouped)
    }

    /// Runs with their latest metrics, params, tags, inputs and outputs, in row order.
    async fn runs_from_rows(&self, rows: &[AnyRow]) -> Result<Vec<Run>> {
        let ids = rows
            .iter()
            .map(|r| r.try_get("run_uuid"))
            .collect::<std::result::Result<Vec<String>, _>>()?;
        let keys: Vec<Bind> = ids.iter().cloned().map(Bind::Text).collect();
        let mut metrics = self
            .related(
                "SELECT run_uuid, key, value, is_nan, timestamp, step, '' AS model_id FROM latest_metrics \
                 WHERE run_uuid IN ({ids}) ORDER BY key",
                &[],
                &keys,
            )
            .await?;
        let mut params = self
            .related(
                "SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({ids}) ORDER BY key",
                &[],
                &keys,
            )
            .await?;
        let mut tags = self
            .related(
                "SELECT run_uuid, key, value FROM run_tags WHERE run_uuid IN ({ids}) ORDER BY key",
                &[],
                &keys,
            )
            .await?;
        let mut io = self
            .related(
                "SELECT run_uuid, direction, kind, payload FROM run_io WHERE run_uuid IN ({ids}) ORDER BY identity",
                &[],
                &keys,
            )
            .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for (row, run_id) in rows.iter().zip(ids) {
            let mut inputs = RunInputs::default();
            let mut outputs = RunOutputs::default();
            for r in io.remove(&run_id).unwrap_or_default() {
                let payload: String = r.try_get("payload")?;
                let value: serde_json::Value =
                    serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null);
                let direction: String = r.try_get("direction")?;
                let kind: String = r.try_get("kind")?;
                match (direction.as_str(), kind.as_str()) {
                    ("input", "dataset") => inputs.dataset_inputs.push(value),
                    ("input", _) => inputs.model_inputs.push(value),
                    _ => outputs.model_outputs.push(value),
                }
            }
            let experiment_id: i64 = row.try_get("experiment_id")?;
            runs.push(Run {
                data: RunData {
                    metrics: metrics
                        .remove(&run_id)
                        .unwrap_or_default()
                        .iter()
                        .map(metric_from_row)
                        .collect::<Result<Vec<_>>>()?,
                    params: kv(params.remove(&run_id).unwrap_or_default())?,
                    tags: kv(tags.remove(&run_id).unwrap_or_default())?,
                },
                info: RunInfo {
                    run_uuid: run_id.clone(),
                    run_id,
                    run_name: row.try_get("run_name")?,
                    experiment_id: experiment_id.to_string(),
                    user_id: row.try_get("user_id")?,
                    status: row.try_get("status")?,
                    start_time: row.try_get("start_time")?,
                    end_time: row.try_get("end_time")?,
                    artifact_uri: row.try_get("artifact_uri")?,
                    lifecycle_stage: row.try_get("lifecycle_stage")?,
                },
                inputs,
                outputs,
            });
        }
        Ok(runs)
    }

    /// A run with its latest metrics, params, tags, inputs and outputs.
    pub async fn get_run(&self, run_id: &str) -> Result<Run> {
        let row = self.run_row(run_id).await?;
        let mut runs = self.runs_from_rows(std::slice::from_ref(&row)).await?;
        runs.pop().ok_or_else(|| {
            RegistryError::Internal(format!("run {run_id} vanished while being read"))
        })
    }

    async fn active_run(&self, run_id: &str) -> Result<()> {
        let row = self.run_row(run_id).await?;
        let stage: String = row.try_get("lifecycle_stage")?;
        if stage != "active" {
            return Err(RegistryError::Invalid(format!(
                "The run {run_id} must be in the 'active' state. Current state is {stage}."
            )));
        }
        Ok(())
    }

    /// Updates a run's status, end time or name.
    pub async fn update_run(
        &self,
        run_id: &str,
        status: Option<&str>,
        end_time: Option<i64>,
        run_name: Option<&str>,
    ) -> Result<RunInfo> {
        self.active_run(run_id).await?;
        if let Some(s) = status {
            const STATUSES: [&str; 5] = ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];
            if !STATUSES.contains(&s) {
                return Err(RegistryError::Invalid(format!("Invalid run status '{s}'")));
            }
        }
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE runs SET status = COALESCE($1, status), end_time = COALESCE($2, end_time), run_name = COALESCE($3, run_name) \
             WHERE run_uuid = $4",
        )
        .bind(status)
        .bind(end_time)
        .bind(run_name.filter(|n| !n.is_empty()))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if let Some(name) = run_name.filter(|n| !n.is_empty()) {
            let tag = KeyValue {
                key: "mlflow.runName".into(),
                value: name.into(),
            };
            upsert_tag(&mut tx, "run_tags", "run_uuid", run_id, &tag).await?;
        }
        tx.commit().await?;
        Ok(self.get_run(run_id).await?.info)
    }

    async fn set_run_stage(&self, run_id: &str, stage: &str) -> Result<()> {
        self.run_row(run_id).await?;
        sqlx::query("UPDATE runs SET lifecycle_stage = $1 WHERE run_uuid = $2")
            .bind(stage)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a run deleted (restorable).
    pub async fn delete_run(&self, run_id: &str) -> Result<()> {
        self.set_run_stage(run_id, "deleted").await
    }

    /// Restores a deleted run.
    pub async fn restore_run(&self, run_id: &str) -> Result<()> {
        self.set_run_stage(run_id, "active").await
    }

    /// Runs of the given experiments matching an MLflow filter, in pages.
    pub async fn search_runs(
        &self,
        experiment_ids: &[String],
        filter: &str,
        view_type: ViewType,
        max_results: Option<i64>,
        order_by: &[String],
        page_token: Option<&str>,
    ) -> Result<Page<Run>> {
        let ids = experiment_ids
            .iter()
            .map(|id| Self::experiment_id(id))
            .collect::<Result<Vec<i64>>>()?;
        let (scope, binds) = if ids.is_empty() {
            ("1 = 0".to_string(), Vec::new())
        } else {
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            (
                format!("r.experiment_id IN ({})", marks.join(", ")),
                ids.into_iter().map(Bind::Int).collect(),
            )
        };
        let (rows, next) = self
            .search_rows_with(
                Entity::Runs,
                "runs r",
                "r",
                view_type,
                filter,
                order_by,
                max_results,
                1000,
                page_token,
                Some((scope, binds)),
            )
            .await?;
        Ok(Page {
            items: self.runs_from_rows(&rows).await?,
            next_page_token: next,
        })
    }

    /// Logs metrics, params and tags in one transaction. A param may be logged again
    /// only with the same value, as in MLflow. A batch over MLflow's limits is refused
    /// whole, before anything is written.
    pub async fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[KeyValue],
        tags: &[KeyValue],
    ) -> Result<()> {
        check_batch_limits(metrics.len(), params.len(), tags.len())?;
        self.active_run(run_id).await?;
        let mut tx = self.begin().await?;
        for param in params {
            let existing = sqlx::query("SELECT value FROM params WHERE run_uuid = $1 AND key = $2")
                .bind(run_id)
                .bind(&param.key)
                .fetch_optional(&mut *tx)
                .await?;
            match existing {
                Some(row) => {
                    let old: String = row.try_get(0)?;
                    if old != param.value {
                        return Err(RegistryError::Invalid(format!(
                            "Changing param values is not allowed. Param with key='{}' was already logged with value='{old}' for run ID='{run_id}'. Attempted logging new value '{}'.",
                            param.key, param.value
                        )));
                    }
                }
                None => {
                    sqlx::query("INSERT INTO params (run_uuid, key, value) VALUES ($1, $2, $3)")
                        .bind(run_id)
                        .bind(&param.key)
                        .bind(&param.value)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for metric in metrics {
            // As MLflow: NaN is flagged, infinities are clamped to the largest finite values.
            let is_nan = i32::from(metric.value.is_nan());
            let value = if metric.value.is_nan() {
                0.0
            } else {
                metric.value.clamp(f64::MIN, f64::MAX)
            };
            sqlx::query(
                "INSERT INTO metrics (run_uuid, key, value, is_nan, timestamp, step, model_id) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (run_uuid, key, timestamp, step, value, is_nan) DO NOTHING",
            )
            .bind(run_id)
            .bind(&metric.key)
            .bind(value)
            .bind(is_nan)
            .bind(metric.timestamp)
            .bind(metric.step)
            .bind(metric.model_id.clone().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO latest_metrics (run_uuid, key, value, is_nan, timestamp, step) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (run_uuid, key) DO UPDATE SET value = excluded.value, is_nan = excluded.is_nan, \
                 timestamp = excluded.timestamp, step = excluded.step \
                 WHERE excluded.step > latest_metrics.step \
                    OR (excluded.step = latest_metrics.step AND excluded.timestamp > latest_metrics.timestamp) \
                    OR (excluded.step = latest_metrics.step AND excluded.timestamp = latest_metrics.timestamp AND excluded.value > latest_metrics.value)",
            )
            .bind(run_id)
            .bind(&metric.key)
            .bind(value)
            .bind(is_nan)
            .bind(metric.timestamp)
            .bind(metric.step)
            .execute(&mut *tx)
            .await?;
        }
        for tag in tags {
            upsert_tag(&mut tx, "run_tags", "run_uuid", run_id, tag).await?;
            if tag.key == "mlflow.runName" {
                sqlx::query("UPDATE runs SET run_name = $1 WHERE run_uuid = $2")
                    .bind(&tag.value)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a run tag.
    pub async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<()> {
        self.active_run(run_id).await?;
        let done = sqlx::query("DELETE FROM run_tags WHERE run_uuid = $1 AND key = $2")
            .bind(run_id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::NotFound(format!(
                "No tag with name: {key} in run with id {run_id}"
            )));
        }
        Ok(())
    }

    /// Every logged point of a metric, oldest step first (empty for an unknown run, as in MLflow).
    pub async fn metric_history(
        &self,
        run_id: &str,
        key: &str,
        max_results: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<Metric>> {
        let limit = page_size(max_results, 25_000)?;
        let offset = match page_token.filter(|t| !t.is_empty()) {
            Some(t) => search::decode_page_token(t)?,
            None => 0,
        };
        let sql = format!(
            "SELECT key, value, is_nan, timestamp, step, model_id FROM metrics WHERE run_uuid = $1 AND key = $2 \
             ORDER BY step, timestamp, value LIMIT {} OFFSET {offset}",
            limit + 1
        );
        let mut rows = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id)
            .bind(key)
            .fetch_all(&self.pool)
            .await?;
        let next = (rows.len() as i64 > limit).then(|| {
            rows.truncate(limit as usize);
            search::encode_page_token(offset + limit as u64)
        });
        let items = rows
            .iter()
            .map(metric_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page {
            items,
            next_page_token: next,
        })
    }

    /// Records dataset or model inputs/outputs of a run (kept as the JSON the client sent).
    pub async fn log_run_io(
        &self,
        run_id: &str,
        direction: &str,
        entries: &[(String, String, serde_json::Value)],
    ) -> Result<()> {
        self.active_run(run_id).await?;
        let mut tx = self.begin().await?;
        for (kind, identity, payload) in entries {
            sqlx::query(
                "INSERT INTO run_io (run_uuid, direction, kind, identity, payload) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (run_uuid, direction, kind, identity) DO UPDATE SET payload = excluded.payload",
            )
            .bind(run_id)
            .bind(direction)
            .bind(kind)
            .bind(identity)
            .bind(payload.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A metric point from a row with key, value, is_nan, timestamp, step and model_id.
/// Most metrics one `log-batch` call may carry (MLflow's `MAX_METRICS_PER_BATCH`).
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// Most params, and most tags, one `log-batch` call may carry (`MAX_PARAMS_TAGS_PER_BATCH`).
pub const MAX_PARAMS_TAGS_PER_BATCH: usize = 100;
/// Most metrics, params and tags together in one call (`MAX_ENTITIES_PER_BATCH`).
pub const MAX_ENTITIES_PER_BATCH: usize = 1000;

/// MLflow's `_validate_batch_log_limits`, with its messages.
fn check_batch_limits(metrics: usize, params: usize, tags: usize) -> Result<()> {
    let limits = [
        ("metrics", MAX_METRICS_PER_BATCH, metrics),
        ("params", MAX_PARAMS_TAGS_PER_BATCH, params),
        ("tags", MAX_PARAMS_TAGS_PER_BATCH, tags),
        (
            "metrics, params, and tags",
            MAX_ENTITIES_PER_BATCH,
            metrics + params + tags,
        ),
    ];
    for (entities, limit, length) in limits {
        if length > limit {
            return Err(RegistryError::Invalid(format!(
                "A batch logging request can contain at most {limit} {entities}. Got {length} \
                 {entities}. Please split up {entities} across multiple requests and try again."
            )));
        }
    }
    Ok(())
}

fn metric_from_row(r: &AnyRow) -> Result<Metric> {
    let model_id: String = r.try_get("model_id")?;
    let is_nan: i32 = r.try_get("is_nan")?;
    Ok(Metric {
        key: r.try_get("key")?,
        value: if is_nan != 0 {
            f64::NAN
        } else {
            r.try_get("value")?
        },
        timestamp: r.try_get("timestamp")?,
        step: r.try_get("step")?,
        model_id: (!model_id.is_empty()).then_some(model_id),
    })
}

/// Inserts or replaces a tag in `table` keyed by `id_column`.
async fn upsert_tag(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &str,
    id_column: &str,
    id: &str,
    tag: &KeyValue,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO {table} ({id_column}, key, value) VALUES ($1, $2, $3) \
         ON CONFLICT ({id_column}, key) DO UPDATE SET value = excluded.value"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .bind(&tag.key)
        .bind(&tag.value)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Which lifecycle stages a search includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewType {
    #[default]
    ActiveOnly,
    DeletedOnly,
    All,
}

impl ViewType {
    /// Parses MLflow's view type names (`ACTIVE_ONLY`, `DELETED_ONLY`, `ALL`) or numbers (1, 2, 3).
    pub fn parse(text: Option<&str>) -> Result<Self> {
        match text.unwrap_or("") {
            "" | "ACTIVE_ONLY" | "1" => Ok(ViewType::ActiveOnly),
            "DELETED_ONLY" | "2" => Ok(ViewType::DeletedOnly),
            "ALL" | "3" => Ok(ViewType::All),
            other => Err(RegistryError::Invalid(format!(
                "Invalid view type '{other}'"
            ))),
        }
    }

    fn condition(self, alias: &str) -> Option<String> {
        match self {
            ViewType::ActiveOnly => Some(format!("{alias}.lifecycle_stage = 'active'")),
            ViewType::DeletedOnly => Some(format!("{alias}.lifecycle_stage = 'deleted'")),
            ViewType::All => None,
        }
    }
}
