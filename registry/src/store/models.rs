//! Registered models, model versions, aliases and logged models.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use std::collections::HashMap;

use futures::future::try_join_all;

use super::{Result, Store, ViewType, kv, metric_from_row, now_ms, upsert_tag};
use crate::error::RegistryError;
use crate::search::{Bind, Entity};
use crate::types::*;

/// Versions MLflow hides after deletion keep their number (numbers are never reused).
const DELETED_STAGE: &str = "Deleted_Internal";

fn model_missing(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("Registered Model with name={name} not found"))
}

fn version_missing(name: &str, version: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "Model Version (name={name}, version={version}) not found"
    ))
}

fn version_number(version: &str) -> Result<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            RegistryError::Invalid(format!(
                "Parameter 'version' must be an integer, got '{version}'."
            ))
        })
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(RegistryError::Invalid(
            "Registered model name cannot be empty.".into(),
        ));
    }
    Ok(())
}

/// What a new model version is made from.
#[derive(Debug, Default, Clone)]
pub struct NewVersion {
    pub source: String,
    pub run_id: String,
    pub run_link: String,
    pub description: String,
    pub model_id: String,
    pub user_id: String,
    pub tags: Vec<KeyValue>,
}

/// A new logged model.
#[derive(Debug, Default, Clone)]
pub struct NewLoggedModel {
    pub experiment_id: String,
    pub name: String,
    pub model_type: String,
    pub source_run_id: String,
    pub params: Vec<KeyValue>,
    pub tags: Vec<KeyValue>,
}

impl Store {
    // ---------------------------------------------------------------- registered models

    /// Creates a registered model.
    pub async fn create_registered_model(
        &self,
        name: &str,
        tags: &[KeyValue],
        description: &str,
    ) -> Result<RegisteredModel> {
        check_name(name)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO registered_models (name, creation_timestamp, last_updated_timestamp, description) VALUES ($1, $2, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .bind(description)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(RegistryError::AlreadyExists(format!(
                "Registered Model (name={name}) already exists."
            )));
        }
        for tag in tags {
            upsert_tag(&mut tx, "registered_model_tags", "name", name, tag).await?;
        }
        tx.commit().await?;
        self.get_registered_model(name).await
    }

    async fn model_row(&self, name: &str) -> Result<AnyRow> {
        sqlx::query("SELECT * FROM registered_models WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| model_missing(name))
    }

    async fn model_from_row(&self, row: &AnyRow) -> Result<RegisteredModel> {
        let name: String = row.try_get("name")?;
        let tags = sqlx::query(
            "SELECT key, value FROM registered_model_tags WHERE name = $1 ORDER BY key",
        )
        .bind(&name)
        .fetch_all(&self.pool)
        .await?;
        let aliases = sqlx::query(
            "SELECT alias, version FROM registered_model_aliases WHERE name = $1 ORDER BY alias",
        )
        .bind(&name)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Alias {
                alias: r.try_get("alias")?,
                version: r.try_get::<i64, _>("version")?.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(RegisteredModel {
            latest_versions: self.latest_versions(&name, &[]).await?,
            name,
            creation_timestamp: row.try_get("creation_timestamp")?,
            last_updated_timestamp: row.try_get("last_updated_timestamp")?,
            description: row.try_get("description")?,
            tags: kv(tags)?,
            aliases,
        })
    }

    /// A registered model with its tags, aliases and latest version per stage.
    pub async fn get_registered_model(&self, name: &str) -> Result<RegisteredModel> {
        let row = self.model_row(name).await?;
        self.model_from_row(&row).await
    }

    /// Renames a registered model (versions, tags and aliases follow).
    pub async fn rename_registered_model(
        &self,
        name: &str,
        new_name: &str,
    ) -> Result<RegisteredModel> {
        check_name(new_name)?;
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT name FROM registered_models WHERE name = $1")
            .bind(new_name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(RegistryError::AlreadyExists(format!(
                "Registered Model (name={new_name}) already exists."
            )));
        }
        let done = sqlx::query(
            "UPDATE registered_models SET name = $1, last_updated_timestamp = $2 WHERE name = $3",
        )
        .bind(new_name)
        .bind(now_ms())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(model_missing(name));
        }
        tx.commit().await?;
        self.get_registered_model(new_name).await
    }

    /// Sets a registered model's description.
    pub async fn update_registered_model(
        &self,
        name: &str,
        description: &str,
    ) -> Result<RegisteredModel> {
        let done = sqlx::query("UPDATE registered_models SET description = $1, last_updated_timestamp = $2 WHERE name = $3")
            .bind(description)
            .bind(now_ms())
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(model_missing(name));
        }
        self.get_registered_model(name).await
    }

    /// Deletes a registered model with its versions, tags and aliases.
    pub async fn delete_registered_model(&self, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        for table in [
            "model_version_tags",
            "registered_model_aliases",
            "model_versions",
            "registered_model_tags",
        ] {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE name = $1"
            )))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query("DELETE FROM registered_models WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(model_missing(name));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Registered models matching an MLflow filter, in pages.
    pub async fn search_registered_models(
        &self,
        filter: &str,
        order_by: &[String],
        max_results: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<RegisteredModel>> {
        let (rows, next) = self
            .search_rows(
                Entity::RegisteredModels,
                "registered_models m",
                "m",
                ViewType::All,
                filter,
                order_by,
                max_results,
                100,
                page_token,
            )
            .await?;
        Ok(Page {
            items: try_join_all(rows.iter().map(|row| self.model_from_row(row))).await?,
            next_page_token: next,
        })
    }

    /// Sets a registered model tag.
    pub async fn set_registered_model_tag(&self, name: &str, tag: &KeyValue) -> Result<()> {
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT name FROM registered_models WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(model_missing(name));
        }
        upsert_tag(&mut tx, "registered_model_tags", "name", name, tag).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a registered model tag.
    pub async fn delete_registered_model_tag(&self, name: &str, key: &str) -> Result<()> {
        self.model_row(name).await?;
        sqlx::query("DELETE FROM registered_model_tags WHERE name = $1 AND key = $2")
            .bind(name)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Points `alias` at a version of `name`.
    pub async fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        let number = version_number(version)?;
        let lower = alias.to_ascii_lowercase();
        let version_like = lower
            .strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if alias.is_empty() || lower == "latest" || version_like {
            return Err(RegistryError::Invalid(format!(
                "Version alias name '{alias}' is reserved."
            )));
        }
        self.version_row(name, version).await?;
        sqlx::query(
            "INSERT INTO registered_model_aliases (name, alias, version) VALUES ($1, $2, $3) \
             ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
        )
        .bind(name)
        .bind(alias)
        .bind(number)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes an alias.
    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<()> {
        self.model_row(name).await?;
        sqlx::query("DELETE FROM registered_model_aliases WHERE name = $1 AND alias = $2")
            .bind(name)
            .bind(alias)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The version an alias points at.
    pub async fn get_version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion> {
        let row = sqlx::query(
            "SELECT version FROM registered_model_aliases WHERE name = $1 AND alias = $2",
        )
        .bind(name)
        .bind(alias)
        .fetch_optional(&self.pool)
        .await?
        // MLflow answers an unknown alias with INVALID_PARAMETER_VALUE, and clients rely on it.
        .ok_or_else(|| {
            RegistryError::Invalid(format!("Registered model alias {alias} not found."))
        })?;
        let version: i64 = row.try_get(0)?;
        self.get_model_version(name, &version.to_string()).await
    }

    /// The newest version per stage (only the given stages when any are named).
    pub async fn latest_versions(
        &self,
        name: &str,
        stages: &[String],
    ) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query(
            "SELECT v.* FROM model_versions v WHERE v.name = $1 AND v.current_stage <> $2 AND v.version = \
             (SELECT MAX(w.version) FROM model_versions w WHERE w.name = v.name AND w.current_stage = v.current_stage) \
             ORDER BY v.version",
        )
        .bind(name)
        .bind(DELETED_STAGE)
        .fetch_all(&self.pool)
        .await?;
        let mut wanted = Vec::with_capacity(rows.len());
        for row in rows {
            let stage: String = row.try_get("current_stage")?;
            if stages.is_empty() || stages.iter().any(|s| s.eq_ignore_ascii_case(&stage)) {
                wanted.push(row);
            }
        }
        self.versions_from_rows(&wanted).await
    }

    // ---------------------------------------------------------------- model versions

    /// Creates the next version of `name`. The number is allocated and the row written in
    /// one transaction, retried when a concurrent create took the same number.
    pub async fn create_model_version(
        &self,
        name: &str,
        new: &NewVersion,
        storage_location: &str,
    ) -> Result<ModelVersion> {
        self.model_row(name).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_create_version(name, new, storage_location).await {
                Err(RegistryError::AlreadyExists(_)) if attempt < 5 => continue,
                other => return other,
            }
        }
    }

    async fn try_create_version(
        &self,
        name: &str,
        new: &NewVersion,
        storage_location: &str,
    ) -> Result<ModelVersion> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        if self.database() == super::Database::Postgres {
            // Version numbers are allocated one writer at a time per model: lock its row.
            sqlx::query("SELECT name FROM registered_models WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let next: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        sqlx::query(
            "INSERT INTO model_versions (name, version, creation_timestamp, last_updated_timestamp, description, user_id, current_stage, \
             source, storage_location, run_id, run_link, model_id, status, status_message) \
             VALUES ($1, $2, $3, $3, $4, $5, 'None', $6, $7, $8, $9, $10, 'READY', '')",
        )
        .bind(name)
        .bind(next)
        .bind(now)
        .bind(&new.description)
        .bind(&new.user_id)
        .bind(&new.source)
        .bind(storage_location)
        .bind(&new.run_id)
        .bind(&new.run_link)
        .bind(&new.model_id)
        .execute(&mut *tx)
        .await?;
        for tag in &new.tags {
            sqlx::query("INSERT INTO model_version_tags (name, version, key, value) VALUES ($1, $2, $3, $4)")
                .bind(name)
                .bind(next)
                .bind(&tag.key)
                .bind(&tag.value)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE registered_models SET last_updated_timestamp = $1 WHERE name = $2")
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_model_version(name, &next.to_string()).await
    }

    async fn version_row(&self, name: &str, version: &str) -> Result<AnyRow> {
        let number = version_number(version)?;
        sqlx::query(
            "SELECT * FROM model_versions WHERE name = $1 AND version = $2 AND current_stage <> $3",
        )
        .bind(name)
        .bind(number)
        .bind(DELETED_STAGE)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| version_missing(name, version))
    }

    /// Versions with their tags and aliases, in row order: per model in the page, one
    /// query per related table for exactly the page's versions.
    async fn versions_from_rows(&self, rows: &[AnyRow]) -> Result<Vec<ModelVersion>> {
        let mut pairs = Vec::with_capacity(rows.len());
        for row in rows {
            pairs.push((
                row.try_get::<String, _>("name")?,
                row.try_get::<i64, _>("version")?,
            ));
        }
        let mut tags: HashMap<(String, String), Vec<AnyRow>> = HashMap::new();
        let mut aliases: HashMap<(String, String), Vec<AnyRow>> = HashMap::new();
        let mut names: Vec<&String> = pairs.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        for name in names {
            let fixed = [Bind::Text(name.clone())];
            let versions: Vec<Bind> = pairs
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| Bind::Int(*v))
                .collect();
            let found = self
                .related(
                    "SELECT version, key, value FROM model_version_tags WHERE name = $1 AND version IN ({ids}) ORDER BY key",
                    &fixed,
                    &versions,
                )
                .await?;
            tags.extend(found.into_iter().map(|(v, rows)| ((name.clone(), v), rows)));
            let found = self
                .related(
                    "SELECT version, alias FROM registered_model_aliases WHERE name = $1 AND version IN ({ids}) ORDER BY alias",
                    &fixed,
                    &versions,
                )
                .await?;
            aliases.extend(found.into_iter().map(|(v, rows)| ((name.clone(), v), rows)));
        }
        rows.iter()
            .zip(pairs)
            .map(|(row, (name, version))| {
                let key = (name, version.to_string());
                let aliases = aliases
                    .remove(&key)
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.try_get::<String, _>("alias"))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(ModelVersion {
                    tags: kv(tags.remove(&key).unwrap_or_default())?,
                    aliases,
                    version: key.1,
                    name: key.0,
                    creation_timestamp: row.try_get("creation_timestamp")?,
                    last_updated_timestamp: row.try_get("last_updated_timestamp")?,
                    user_id: row.try_get("user_id")?,
                    current_stage: row.try_get("current_stage")?,
                    description: row.try_get("description")?,
                    source: row.try_get("source")?,
                    run_id: row.try_get("run_id")?,
                    status: row.try_get("status")?,
                    status_message: row.try_get("status_message")?,
                    run_link: row.try_get("run_link")?,
                    model_id: row.try_get("model_id")?,
                })
            })
            .collect()
    }

    /// One model version.
    pub async fn get_model_version(&self, name: &str, version: &str) -> Result<ModelVersion> {
        let row = self.version_row(name, version).await?;
        let mut versions = self.versions_from_rows(std::slice::from_ref(&row)).await?;
        versions.pop().ok_or_else(|| version_missing(name, version))
    }

    /// Where a version's files are (what `get-download-uri` answers).
    pub async fn version_storage_location(&self, name: &str, version: &str) -> Result<String> {
        let row = self.version_row(name, version).await?;
        Ok(row.try_get("storage_location")?)
    }

    /// Sets a version's description.
    pub async fn update_model_version(
        &self,
        name: &str,
        version: &str,
        description: &str,
    ) -> Result<ModelVersion> {
        self.version_row(name, version).await?;
        sqlx::query("UPDATE model_versions SET description = $1, last_updated_timestamp = $2 WHERE name = $3 AND version = $4")
            .bind(description)
            .bind(now_ms())
            .bind(name)
            .bind(version_number(version)?)
            .execute(&self.pool)
            .await?;
        self.get_model_version(name, version).await
    }

    /// Moves a version to a stage (MLflow's deprecated stages API).
    pub async fn transition_stage(
        &self,
        name: &str,
        version: &str,
        stage: &str,
        archive_existing: bool,
    ) -> Result<ModelVersion> {
        const STAGES: [&str; 4] = ["None", "Staging", "Production", "Archived"];
        let Some(stage) = STAGES.iter().find(|s| s.eq_ignore_ascii_case(stage)) else {
            return Err(RegistryError::Invalid(format!(
                "Invalid Model Version stage: {stage}. Value must be one of None, Staging, Production, Archived."
            )));
        };
        self.version_row(name, version).await?;
        let number = version_number(version)?;
        let mut tx = self.begin().await?;
        if archive_existing && (*stage == "Staging" || *stage == "Production") {
            sqlx::query("UPDATE model_versions SET current_stage = 'Archived' WHERE name = $1 AND current_stage = $2 AND version <> $3")
                .bind(name)
                .bind(*stage)
                .bind(number)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE model_versions SET current_stage = $1, last_updated_timestamp = $2 WHERE name = $3 AND version = $4")
            .bind(*stage)
            .bind(now_ms())
            .bind(name)
            .bind(number)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_model_version(name, version).await
    }

    /// Deletes a version and the aliases that pointed at it; its number is not reused.
    pub async fn delete_model_version(&self, name: &str, version: &str) -> Result<()> {
        self.version_row(name, version).await?;
        let number = version_number(version)?;
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM registered_model_aliases WHERE name = $1 AND version = $2",
            "DELETE FROM model_version_tags WHERE name = $1 AND version = $2",
        ] {
            sqlx::query(sql)
                .bind(name)
                .bind(number)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE model_versions SET current_stage = $1, description = '', source = '', storage_location = '', run_id = '', \
             run_link = '', model_id = '', last_updated_timestamp = $2 WHERE name = $3 AND version = $4",
        )
        .bind(DELETED_STAGE)
        .bind(now_ms())
        .bind(name)
        .bind(number)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Model versions matching an MLflow filter, in pages.
    pub async fn search_model_versions(
        &self,
        filter: &str,
        order_by: &[String],
        max_results: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<ModelVersion>> {
        let hidden = (
            format!("v.current_stage <> '{DELETED_STAGE}'"),
            Vec::<Bind>::new(),
        );
        let (rows, next) = self
            .search_rows_with(
                Entity::ModelVersions,
                "model_versions v",
                "v",
                ViewType::All,
                filter,
                order_by,
                max_results,
                10_000,
                page_token,
                Some(hidden),
            )
            .await?;
        Ok(Page {
            items: self.versions_from_rows(&rows).await?,
            next_page_token: next,
        })
    }

    /// Sets a version tag.
    pub async fn set_model_version_tag(
        &self,
        name: &str,
        version: &str,
        tag: &KeyValue,
    ) -> Result<()> {
        self.version_row(name, version).await?;
        sqlx::query(
            "INSERT INTO model_version_tags (name, version, key, value) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(version_number(version)?)
        .bind(&tag.key)
        .bind(&tag.value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a version tag.
    pub async fn delete_model_version_tag(
        &self,
        name: &str,
        version: &str,
        key: &str,
    ) -> Result<()> {
        self.version_row(name, version).await?;
        sqlx::query("DELETE FROM model_version_tags WHERE name = $1 AND version = $2 AND key = $3")
            .bind(name)
            .bind(version_number(version)?)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- logged models

    /// Creates a logged model (MLflow 3) in PENDING status.
    pub async fn create_logged_model(&self, new: &NewLoggedModel) -> Result<LoggedModel> {
        let experiment = self.get_experiment(&new.experiment_id).await?;
        let model_id = format!("m-{}", uuid::Uuid::new_v4().simple());
        let location = format!(
            "{}/models/{model_id}/artifacts",
            experiment.artifact_location.trim_end_matches('/')
        );
        let name = if new.name.is_empty() {
            "model".to_string()
        } else {
            new.name.clone()
        };
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO logged_models (model_id, experiment_id, name, artifact_location, creation_timestamp_ms, last_updated_timestamp_ms, \
             status, lifecycle_stage, model_type, source_run_id, status_message) \
             VALUES ($1, $2, $3, $4, $5, $5, 'LOGGED_MODEL_PENDING', 'active', $6, $7, '')",
        )
        .bind(&model_id)
        .bind(Store::experiment_id(&new.experiment_id)?)
        .bind(&name)
        .bind(&location)
        .bind(now)
        .bind(&new.model_type)
        .bind(&new.source_run_id)
        .execute(&mut *tx)
        .await?;
        for tag in &new.tags {
            upsert_tag(&mut tx, "logged_model_tags", "model_id", &model_id, tag).await?;
        }
        for param in &new.params {
            upsert_tag(&mut tx, "logged_model_params", "model_id", &model_id, param).await?;
        }
        tx.commit().await?;
        self.get_logged_model(&model_id).await
    }

    async fn logged_model_row(&self, model_id: &str) -> Result<AnyRow> {
        sqlx::query(
            "SELECT * FROM logged_models WHERE model_id = $1 AND lifecycle_stage = 'active'",
        )
        .bind(model_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            RegistryError::NotFound(format!("Logged model with ID '{model_id}' not found."))
        })
    }

    async fn logged_model_from_row(&self, row: &AnyRow) -> Result<LoggedModel> {
        let model_id: String = row.try_get("model_id")?;
        let tags = sqlx::query(
            "SELECT key, value FROM logged_model_tags WHERE model_id = $1 ORDER BY key",
        )
        .bind(&model_id)
        .fetch_all(&self.pool)
        .await?;
        let params = sqlx::query(
            "SELECT key, value FROM logged_model_params WHERE model_id = $1 ORDER BY key",
        )
        .bind(&model_id)
        .fetch_all(&self.pool)
        .await?;
        let metrics = sqlx::query(
            "SELECT key, value, is_nan, timestamp, step, model_id FROM metrics WHERE model_id = $1 ORDER BY key, step, timestamp",
        )
        .bind(&model_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(metric_from_row)
        .collect::<Result<Vec<_>>>()?;
        let experiment_id: i64 = row.try_get("experiment_id")?;
        Ok(LoggedModel {
            info: LoggedModelInfo {
                model_id,
                experiment_id: experiment_id.to_string(),
                name: row.try_get("name")?,
                artifact_uri: row.try_get("artifact_location")?,
                creation_timestamp_ms: row.try_get("creation_timestamp_ms")?,
                last_updated_timestamp_ms: row.try_get("last_updated_timestamp_ms")?,
                status: row.try_get("status")?,
                lifecycle_stage: row.try_get("lifecycle_stage")?,
                model_type: row.try_get("model_type")?,
                source_run_id: row.try_get("source_run_id")?,
                status_message: row.try_get("status_message")?,
                tags: kv(tags)?,
            },
            data: LoggedModelData {
                params: kv(params)?,
                metrics,
            },
        })
    }

    /// One logged model.
    pub async fn get_logged_model(&self, model_id: &str) -> Result<LoggedModel> {
        let row = self.logged_model_row(model_id).await?;
        self.logged_model_from_row(&row).await
    }

    /// Sets a logged model's status (`finalize`: `LOGGED_MODEL_READY` or `…_FAILED`).
    pub async fn set_logged_model_status(
        &self,
        model_id: &str,
        status: &str,
    ) -> Result<LoggedModel> {
        const STATUSES: [&str; 3] = ["PENDING", "READY", "FAILED"];
        let short = status.trim_start_matches("LOGGED_MODEL_");
        if !STATUSES.contains(&short) {
            return Err(RegistryError::Invalid(format!(
                "Invalid logged model status '{status}'"
            )));
        }
        let status = format!("LOGGED_MODEL_{short}");
        self.logged_model_row(model_id).await?;
        sqlx::query("UPDATE logged_models SET status = $1, last_updated_timestamp_ms = $2 WHERE model_id = $3")
            .bind(&status)
            .bind(now_ms())
            .bind(model_id)
            .execute(&self.pool)
            .await?;
        self.get_logged_model(model_id).await
    }

    /// Sets logged model tags.
    pub async fn set_logged_model_tags(&self, model_id: &str, tags: &[KeyValue]) -> Result<()> {
        self.logged_model_row(model_id).await?;
        let mut tx = self.begin().await?;
        for tag in tags {
            upsert_tag(&mut tx, "logged_model_tags", "model_id", model_id, tag).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a logged model tag.
    pub async fn delete_logged_model_tag(&self, model_id: &str, key: &str) -> Result<()> {
        self.logged_model_row(model_id).await?;
        sqlx::query("DELETE FROM logged_model_tags WHERE model_id = $1 AND key = $2")
            .bind(model_id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a logged model deleted.
    pub async fn delete_logged_model(&self, model_id: &str) -> Result<()> {
        self.logged_model_row(model_id).await?;
        sqlx::query("UPDATE logged_models SET lifecycle_stage = 'deleted' WHERE model_id = $1")
            .bind(model_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Logged models of the given experiments matching an MLflow filter, in pages.
    pub async fn search_logged_models(
        &self,
        experiment_ids: &[String],
        filter: &str,
        order_by: &[String],
        max_results: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<LoggedModel>> {
        let ids = experiment_ids
            .iter()
            .map(|id| Store::experiment_id(id))
            .collect::<Result<Vec<i64>>>()?;
        let scope = if ids.is_empty() {
            None
        } else {
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            Some((
                format!("l.experiment_id IN ({})", marks.join(", ")),
                ids.into_iter().map(Bind::Int).collect(),
            ))
        };
        let (rows, next) = self
            .search_rows_with(
                Entity::LoggedModels,
                "logged_models l",
                "l",
                ViewType::ActiveOnly,
                filter,
                order_by,
                max_results,
                100,
                page_token,
                scope,
            )
            .await?;
        Ok(Page {
            items: try_join_all(rows.iter().map(|row| self.logged_model_from_row(row))).await?,
            next_page_token: next,
        })
    }

    /// Where a logged model's files are, and the run that produced it.
    pub async fn logged_model_origin(&self, model_id: &str) -> Result<(String, String)> {
        let row = self.logged_model_row(model_id).await?;
        Ok((
            row.try_get("artifact_location")?,
            row.try_get("source_run_id")?,
        ))
    }

    /// Where a run's files are.
    pub async fn run_artifact_uri(&self, run_id: &str) -> Result<String> {
        Ok(self.run_row(run_id).await?.try_get("artifact_uri")?)
    }
}
