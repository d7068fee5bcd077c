//! MLflow search syntax: `filter` strings and `order_by` clauses translated into SQL
//! fragments with bound values, following MLflow 3.17's `SqlAlchemyStore`s (tracking and
//! model registry) and `mlflow/utils/search_utils.py`.
//!
//! The fragments refer to these table aliases, which the calling queries must use:
//! `runs r`, `experiments e`, `registered_models m`, `model_versions v`, `logged_models l`.
//! Placeholders are `$1, $2, …` (accepted by both SQLite and PostgreSQL); [`filter`] and
//! [`order_by_from`] take the number of their first placeholder so that they can follow
//! other conditions. Every value and key taken from the request is bound, never written into
//! the SQL text, so no string escaping rule of either database matters.
//!
//! A filter is untrusted input and is bounded before anything is built from it: at most
//! [`MAX_FILTER_BYTES`] bytes and [`MAX_FILTER_CLAUSES`] comparisons, each of at most
//! [`MAX_CLAUSE_TOKENS`] tokens besides its literals. The tokens are split into comparisons at
//! the top-level `AND`s, and `sqlparser` parses each comparison on its own: a syntax tree is
//! only ever built for one bounded comparison, so no walk over it (parse, display, drop)
//! recurses deeper than a few dozen levels, however long the filter.
//!
//! As in MLflow, only an `AND`-conjunction of comparisons `<identifier> <op> <value>` is
//! accepted. Identifiers are
//! `[<prefix>.]<key>` where key and prefix may be quoted with backticks or double quotes, and a
//! key may contain dots (`tags.mlflow.runName`). String values are quoted with single or double
//! quotes, numbers are bare.
//!
//! Semantics (MLflow's SQL stores):
//! * tags/params/metrics: `EXISTS` a row with that key whose value satisfies the comparison, so
//!   `tags.k != 'x'` means "tag k exists with another value"; `IS NULL` / `IS NOT NULL` (runs'
//!   tags and params, experiments' tags) test the key's absence / presence.
//! * metrics on runs compare numerically with `latest_metrics`; on logged models with any
//!   logged point of the model in `metrics` (rows whose `model_id` is the model's), as MLflow
//!   does with its `logged_model_metrics` table. Dataset-scoped metric filters/orderings and
//!   run `datasets.*` filters are not supported (the schema keeps no dataset columns) and give
//!   `Invalid`.
//! * `LIKE` is emitted as `LIKE` (case-sensitive: the SQLite connection runs
//!   `PRAGMA case_sensitive_like = ON`), `ILIKE` as `LOWER(x) LIKE LOWER($n)`.
//! * `attributes.run_name` compares the `runs.run_name` column (MLflow compares the
//!   `mlflow.runName` tag, which this server keeps equal to the column).
//! * registered models and model versions that are prompts (tag `mlflow.prompt.is_prompt` =
//!   `'true'`) are excluded unless the filter asks for prompts, as MLflow does; so the
//!   fragment for those two entities is never just `TRUE`. The `Deleted_Internal` stage and
//!   lifecycle/experiment restrictions are left to the caller.
//! * ordering puts rows without the ordered value last (`NULLS LAST`) in both directions and
//!   appends MLflow's tie-breakers.
//!
//! Deliberate deviations, all on inputs where MLflow misbehaves: a doubled quote inside a
//! string literal is unescaped (MLflow keeps both quotes); keyword comparators are accepted in
//! any case for experiments too; inputs on which MLflow raises an internal error (e.g.
//! `IS NULL` on registry entities, an unknown logged-model attribute) give `Invalid`; logged
//! model values may be double-quoted like everywhere else.
//!
//! The translation is split by concern: `parse.rs` bounds and tokenizes a filter and parses
//! its comparisons and the `order_by` clauses; `sql.rs` holds what every entity's translation
//! shares (value checks, the SQL fragment builder, the key/value side-table type); `runs.rs`,
//! `experiments.rs`, `registry.rs` (registered models and model versions) and
//! `logged_models.rs` each translate the filters and orderings of their entity, and hold its
//! tests. This file keeps the public API (with `order_by_logged_models`, re-exported from
//! `logged_models.rs`) and the page tokens.

mod experiments;
mod logged_models;
mod parse;
mod registry;
mod runs;
mod sql;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use experiments::{experiments_filter, experiments_order_by};
use logged_models::logged_models_filter;
pub use logged_models::order_by_logged_models;
use parse::{parse_filter, parse_order_clause};
use registry::{model_versions_order_by, registered_models_order_by, registry_filter};
use runs::{runs_filter, runs_order_by};
use sql::Out;

/// The searchable entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Runs,
    Experiments,
    RegisteredModels,
    ModelVersions,
    LoggedModels,
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

/// An SQL fragment and the values of its placeholders, in placeholder order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

/// Longest filter accepted, in bytes. It bounds the work one search request can cause, and
/// with it the placeholders of the longest `IN` list (one per three bytes, `'',`) stay under
/// SQLite's limit of 32,766 bound values per statement.
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

/// Most comparisons one filter may AND together; each becomes one condition (for tags,
/// params and metrics a subquery) of the search's SQL.
pub const MAX_FILTER_CLAUSES: usize = 256;

/// Most tokens one comparison may have, not counting its literals (quoted strings and
/// identifiers, numbers) and the commas between list items. A comparison MLflow accepts
/// needs about a dozen (`tags.mlflow.source.name NOT IN ('a', 'b')`); every level of the
/// tree sqlparser builds needs at least one such token (an operator, keyword or
/// parenthesis), so the bound is also a bound on that tree's depth.
pub const MAX_CLAUSE_TOKENS: usize = 64;

/// A rejected filter, ordering or page token; maps to MLflow's `INVALID_PARAMETER_VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Invalid(String),
}

/// One `order_by` entry of MLflow's `SearchLoggedModels` request (`field_name`, `ascending`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldOrder {
    pub field_name: String,
    pub ascending: bool,
}

/// The WHERE condition (without `WHERE`) for `filter`; `TRUE` when it has no comparisons
/// (registered models and model versions: the prompt exclusion). Placeholders start at `$first`.
pub fn filter(entity: Entity, filter: &str, first: usize) -> Result<Sql, SearchError> {
    let comparisons = if filter.trim().is_empty() {
        Vec::new()
    } else {
        parse_filter(entity, filter)?
    };
    let mut out = Out::new(first);
    match entity {
        Entity::Runs => runs_filter(&comparisons, &mut out)?,
        Entity::Experiments => experiments_filter(&comparisons, &mut out)?,
        Entity::RegisteredModels | Entity::ModelVersions => {
            registry_filter(entity, &comparisons, &mut out)?
        }
        Entity::LoggedModels => logged_models_filter(&comparisons, &mut out)?,
    }
    Ok(out.finish(" AND ", "TRUE"))
}

/// [`order_by_from`] with placeholders starting at `$1`.
pub fn order_by<S: AsRef<str>>(entity: Entity, clauses: &[S]) -> Result<Sql, SearchError> {
    order_by_from(entity, clauses, 1)
}

/// The ORDER BY list (without `ORDER BY`) for MLflow `order_by` clauses (`<key> [ASC|DESC]`),
/// MLflow's default order when `clauses` is empty, and its tie-breakers. The keys of
/// metrics/params/tags ordered through scalar subqueries are bound, from `$first` on.
/// For logged models a clause is `<field_name> [ASC|DESC]`, see [`order_by_logged_models`].
pub fn order_by_from<S: AsRef<str>>(
    entity: Entity,
    clauses: &[S],
    first: usize,
) -> Result<Sql, SearchError> {
    let clauses: Vec<&str> = clauses.iter().map(AsRef::as_ref).collect();
    match entity {
        Entity::Runs => runs_order_by(&clauses, first),
        Entity::Experiments => experiments_order_by(&clauses),
        Entity::RegisteredModels => registered_models_order_by(&clauses),
        Entity::ModelVersions => model_versions_order_by(&clauses),
        Entity::LoggedModels => {
            let fields = clauses
                .iter()
                .map(|clause| {
                    let (field_name, ascending) = parse_order_clause(clause)?;
                    Ok(FieldOrder {
                        field_name,
                        ascending,
                    })
                })
                .collect::<Result<Vec<_>, SearchError>>()?;
            order_by_logged_models(&fields, first)
        }
    }
}

/// An MLflow page token: base64 of `{"offset": n}`.
pub fn encode_page_token(offset: u64) -> String {
    BASE64.encode(format!("{{\"offset\": {offset}}}"))
}

/// The offset in an MLflow page token; an empty token is offset 0. Like MLflow, a token whose
/// offset is missing or 0 is rejected (MLflow never issues one).
pub fn decode_page_token(token: &str) -> Result<u64, SearchError> {
    if token.is_empty() {
        return Ok(0);
    }
    let decoded = BASE64
        .decode(token.trim())
        .map_err(|_| invalid("Invalid page token, could not base64-decode"))?;
    let parsed: serde_json::Value = serde_json::from_slice(&decoded).map_err(|_| {
        invalid(format!(
            "Invalid page token, decoded value={}",
            String::from_utf8_lossy(&decoded)
        ))
    })?;
    let offset = parsed.get("offset");
    let falsy = match offset {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(serde_json::Value::Bool(b)) => !b,
        _ => false,
    };
    if falsy {
        return Err(invalid(format!(
            "Invalid page token, parsed value={parsed}"
        )));
    }
    let offset = offset.expect("checked above");
    let value = match offset {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    value.ok_or_else(|| invalid(format!("Invalid page token, not stringable {offset}")))
}

// ---------------------------------------------------------------------------------------------
// Shared vocabulary

fn invalid(message: impl Into<String>) -> SearchError {
    SearchError::Invalid(message.into())
}

/// Formats names the way Python prints a set of strings: `{'a', 'b'}`.
fn py_set(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("{{{}}}", quoted.join(", "))
}

/// Formats names the way Python prints a list of strings: `['a', 'b']`.
fn py_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Helpers shared by the tests of every entity's file.
#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) fn text(s: &str) -> Bind {
        Bind::Text(s.to_owned())
    }

    pub(super) fn ok(entity: Entity, f: &str) -> Sql {
        filter(entity, f, 1).unwrap_or_else(|e| panic!("{f}: {e}"))
    }

    pub(super) fn err(entity: Entity, f: &str) -> String {
        match filter(entity, f, 1) {
            Ok(sql) => panic!("{f}: expected an error, got {sql:?}"),
            Err(SearchError::Invalid(m)) => m,
        }
    }

    pub(super) fn order_sql(entity: Entity, clauses: &[&str]) -> Sql {
        order_by(entity, clauses).unwrap_or_else(|e| panic!("{clauses:?}: {e}"))
    }

    /// The ORDER BY text of an ordering that binds nothing.
    pub(super) fn order(entity: Entity, clauses: &[&str]) -> String {
        let sql = order_sql(entity, clauses);
        assert!(sql.binds.is_empty(), "{clauses:?} binds {:?}", sql.binds);
        sql.text
    }

    pub(super) fn order_err(entity: Entity, clauses: &[&str]) -> String {
        match order_by(entity, clauses) {
            Ok(sql) => panic!("{clauses:?}: expected an error, got {sql:?}"),
            Err(SearchError::Invalid(m)) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- page tokens

    #[test]
    fn page_tokens() {
        // What MLflow's `base64.b64encode(json.dumps({"offset": 5}))` gives.
        assert_eq!(encode_page_token(5), "eyJvZmZzZXQiOiA1fQ==");
        assert_eq!(decode_page_token("eyJvZmZzZXQiOiA1fQ==").unwrap(), 5);
        for n in [1, 100, 123_456_789] {
            assert_eq!(decode_page_token(&encode_page_token(n)).unwrap(), n);
        }
        assert_eq!(decode_page_token("").unwrap(), 0);
        assert_eq!(
            decode_page_token(&BASE64.encode("{\"offset\": \"7\"}")).unwrap(),
            7
        );
        let invalid_token = |t: &str| match decode_page_token(t) {
            Err(SearchError::Invalid(m)) => m,
            Ok(v) => panic!("{t}: expected an error, got {v}"),
        };
        assert_eq!(
            invalid_token("!!!"),
            "Invalid page token, could not base64-decode"
        );
        assert_eq!(
            invalid_token(&BASE64.encode("nope")),
            "Invalid page token, decoded value=nope"
        );
        assert!(
            invalid_token(&BASE64.encode("{\"offset\": 0}"))
                .starts_with("Invalid page token, parsed value=")
        );
        assert!(
            invalid_token(&BASE64.encode("{}")).starts_with("Invalid page token, parsed value=")
        );
        assert!(
            invalid_token(&BASE64.encode("{\"offset\": -3}"))
                .starts_with("Invalid page token, not stringable")
        );
        assert!(
            invalid_token(&BASE64.encode("{\"offset\": \"x\"}"))
                .starts_with("Invalid page token, not stringable")
        );
    }

    // ---- executable check on SQLite

    /// Runs generated SELECTs on a real database: in-memory SQLite always, and PostgreSQL too
    /// when `NEXUS_TEST_POSTGRES_URL` names one (the test works in a schema it then drops).
    mod database {
        use super::super::*;
        use sqlx::any::{AnyPoolOptions, install_default_drivers};
        use sqlx::{AnyPool, AssertSqlSafe};

        async fn sqlite() -> AnyPool {
            install_default_drivers();
            // One connection: each connection to `sqlite::memory:` is its own database.
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect("sqlite::memory:")
                .await
                .unwrap();
            sqlx::raw_sql("PRAGMA case_sensitive_like = ON")
                .execute(&pool)
                .await
                .unwrap();
            seed(&pool).await;
            pool
        }

        /// A pool on PostgreSQL whose single connection works in a fresh `schema`.
        async fn postgres(schema: &str) -> Option<AnyPool> {
            let url = std::env::var("NEXUS_TEST_POSTGRES_URL").ok()?;
            install_default_drivers();
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            let setup = format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
                 SET search_path TO {schema}"
            );
            sqlx::raw_sql(AssertSqlSafe(setup))
                .execute(&pool)
                .await
                .unwrap();
            seed(&pool).await;
            Some(pool)
        }

        async fn drop_schema(pool: &AnyPool, schema: &str) {
            let sql = format!("DROP SCHEMA {schema} CASCADE");
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(pool)
                .await
                .unwrap();
        }

        async fn seed(pool: &AnyPool) {
            sqlx::raw_sql(include_str!("../../migrations/0001_registry.sql"))
                .execute(pool)
                .await
                .unwrap();
            sqlx::raw_sql(SEED).execute(pool).await.unwrap();
        }

        const SEED: &str = "
            INSERT INTO experiments VALUES (1, 'alpha', 'a', 'active', 10, 50);
            INSERT INTO experiments VALUES (2, 'Beta', 'b', 'active', 20, 40);
            INSERT INTO experiment_tags VALUES (2, 'team', 'ml');
            INSERT INTO runs VALUES ('r1', 1, 'first', 'alice', 'FINISHED', 100, 150, 'x', 'active');
            INSERT INTO runs VALUES ('r2', 1, 'second', 'bob', 'FINISHED', 200, NULL, 'x', 'active');
            INSERT INTO runs VALUES ('r3', 1, 'Third', 'bob', 'RUNNING', 300, NULL, 'x', 'active');
            INSERT INTO runs VALUES ('r4', 2, 'other', 'bob', 'RUNNING', 300, NULL, 'x', 'active');
            INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan) VALUES ('r1', 'acc', 0.9, 1, 1, 0);
            INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan) VALUES ('r2', 'acc', 0.5, 1, 1, 0);
            INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan) VALUES ('r4', 'acc', 0.7, 1, 1, 0);
            INSERT INTO params VALUES ('r1', 'lr', '0.1');
            INSERT INTO params VALUES ('r2', 'lr', '0.01');
            INSERT INTO run_tags VALUES ('r1', 'owner', 'Alice');
            INSERT INTO run_tags VALUES ('r2', 'owner', 'alice');
            INSERT INTO run_tags VALUES ('r3', 'my key', 'v');
            INSERT INTO registered_models VALUES ('m1', 1, 30, '');
            INSERT INTO registered_models VALUES ('m2', 2, 20, '');
            INSERT INTO registered_models VALUES ('p1', 3, 10, '');
            INSERT INTO registered_model_tags VALUES ('m2', 'stage', 'prod');
            INSERT INTO registered_model_tags VALUES ('p1', 'mlflow.prompt.is_prompt', 'true');
            INSERT INTO model_versions VALUES ('m1', 1, 1, 5, '', 'u', 'None', 's3://a/1', '', 'r1', '', '', 'READY', '');
            INSERT INTO model_versions VALUES ('m1', 2, 2, 6, '', 'u', 'None', 's3://a/2', '', 'r2', '', '', 'READY', '');
            INSERT INTO model_versions VALUES ('m2', 1, 3, 6, '', 'u', 'None', 'gs://b/1', '', 'r1', '', '', 'READY', '');
            INSERT INTO model_versions VALUES ('p1', 1, 4, 9, '', 'u', 'None', 'x', '', '', '', '', 'READY', '');
            INSERT INTO model_version_tags VALUES ('m1', 2, 'k', 'v');
            INSERT INTO model_version_tags VALUES ('p1', 1, 'mlflow.prompt.is_prompt', 'true');
            INSERT INTO logged_models VALUES ('lm1', 1, 'net', 'a', 100, 100, 'READY', 'active', 'torch', 'r1', '');
            INSERT INTO logged_models VALUES ('lm2', 1, 'tree', 'a', 200, 200, 'READY', 'active', 'sklearn', 'r2', '');
            INSERT INTO logged_models VALUES ('lm3', 1, 'Net2', 'a', 300, 300, 'PENDING', 'active', 'torch', 'r2', '');
            INSERT INTO logged_model_params VALUES ('lm1', 'depth', '3');
            INSERT INTO logged_model_tags VALUES ('lm2', 'env', 'prod');
            INSERT INTO metrics (run_uuid, key, value, timestamp, step, model_id, is_nan) VALUES ('r1', 'acc', 0.8, 1, 0, 'lm1', 0);
            INSERT INTO metrics (run_uuid, key, value, timestamp, step, model_id, is_nan) VALUES ('r1', 'acc', 0.6, 2, 1, 'lm1', 0);
            INSERT INTO metrics (run_uuid, key, value, timestamp, step, model_id, is_nan) VALUES ('r2', 'acc', 0.7, 1, 0, 'lm2', 0);
        ";

        /// Runs `SELECT <id> FROM <from> WHERE <prefix> AND <filter> ORDER BY <order>`.
        async fn ids(
            pool: &AnyPool,
            entity: Entity,
            select: &str,
            prefix: (&str, Vec<Bind>),
            filter_string: &str,
            order: &[&str],
        ) -> Vec<String> {
            let (prefix, mut binds) = prefix;
            let f = filter(entity, filter_string, binds.len() + 1).unwrap();
            binds.extend(f.binds);
            let o = order_by_from(entity, order, binds.len() + 1).unwrap();
            binds.extend(o.binds);
            let sql = format!("{select} WHERE {prefix} AND {} ORDER BY {}", f.text, o.text);
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.clone()));
            for b in binds {
                query = match b {
                    Bind::Text(s) => query.bind(s),
                    Bind::Int(i) => query.bind(i),
                    Bind::Float(x) => query.bind(x),
                };
            }
            query
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }

        async fn runs(pool: &AnyPool, f: &str, order: &[&str]) -> Vec<String> {
            // Two binds ahead of the filter's, as the store's experiment restriction has.
            let prefix = (
                "r.experiment_id IN ($1, $2)",
                vec![Bind::Int(1), Bind::Int(99)],
            );
            ids(
                pool,
                Entity::Runs,
                "SELECT r.run_uuid FROM runs r",
                prefix,
                f,
                order,
            )
            .await
        }

        #[tokio::test]
        async fn runs_on_sqlite() {
            check_runs(&sqlite().await).await;
        }

        #[tokio::test]
        async fn others_on_sqlite() {
            check_others(&sqlite().await).await;
        }

        #[tokio::test]
        async fn on_postgres_when_configured() {
            let schema = format!("nexus_search_test_{}", std::process::id());
            let Some(pool) = postgres(&schema).await else {
                return;
            };
            check_runs(&pool).await;
            check_others(&pool).await;
            drop_schema(&pool, &schema).await;
        }

        async fn check_runs(pool: &AnyPool) {
            let pool = pool.clone();
            assert_eq!(runs(&pool, "", &[]).await, ["r3", "r2", "r1"]);
            assert_eq!(runs(&pool, "metrics.acc > 0.6", &[]).await, ["r1"]);
            assert_eq!(runs(&pool, "metrics.acc != 0.9", &[]).await, ["r2"]);
            assert_eq!(
                runs(&pool, "", &["metrics.acc DESC"]).await,
                ["r1", "r2", "r3"]
            );
            assert_eq!(
                runs(&pool, "", &["metrics.acc ASC"]).await,
                ["r2", "r1", "r3"]
            );
            assert_eq!(
                runs(&pool, "", &["params.lr DESC", "start_time"]).await,
                ["r1", "r2", "r3"]
            );
            assert_eq!(runs(&pool, "params.lr = '0.01'", &[]).await, ["r2"]);
            assert_eq!(runs(&pool, "params.lr IS NULL", &[]).await, ["r3"]);
            assert_eq!(
                runs(&pool, "tags.owner != 'Alice'", &[]).await,
                ["r2"],
                "!= needs the tag"
            );
            assert_eq!(runs(&pool, "tags.owner LIKE 'a%'", &[]).await, ["r2"]);
            assert_eq!(
                runs(&pool, "tags.owner ILIKE 'a%'", &[]).await,
                ["r2", "r1"]
            );
            assert_eq!(runs(&pool, "tags.`my key` = \"v\"", &[]).await, ["r3"]);
            assert_eq!(
                runs(&pool, "tags.owner IS NOT NULL", &[]).await,
                ["r2", "r1"]
            );
            assert_eq!(
                runs(&pool, "run_id IN ('r1', 'r3', 'r4')", &[]).await,
                ["r3", "r1"]
            );
            assert_eq!(runs(&pool, "run_id NOT IN ('r1')", &[]).await, ["r3", "r2"]);
            assert_eq!(
                runs(&pool, "status = 'FINISHED' AND start_time >= 150", &[]).await,
                ["r2"]
            );
            assert_eq!(
                runs(&pool, "attributes.run_name LIKE 't%'", &[]).await,
                Vec::<String>::new()
            );
            assert_eq!(
                runs(&pool, "attributes.run_name ILIKE 't%'", &[]).await,
                ["r3"]
            );
            assert_eq!(runs(&pool, "end_time < 1000", &[]).await, ["r1"]);
            assert_eq!(
                runs(&pool, "", &["end_time DESC", "run_id DESC"]).await,
                ["r1", "r3", "r2"],
                "no end time last"
            );
            assert_eq!(
                runs(&pool, "user_id = 'bob'", &["tags.`my key`"]).await,
                ["r3", "r2"]
            );
        }

        async fn check_others(pool: &AnyPool) {
            let pool = pool.clone();
            let exps = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::Experiments,
                        "SELECT e.name FROM experiments e",
                        ("TRUE", vec![]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(exps("", &[]).await, ["Beta", "alpha", "Default"]);
            assert_eq!(
                exps("name ILIKE '%A%'", &["experiment_id"]).await,
                ["Default", "alpha", "Beta"]
            );
            assert_eq!(exps("name LIKE '%A%'", &[]).await, Vec::<String>::new());
            assert_eq!(exps("tags.team = 'ml'", &[]).await, ["Beta"]);
            assert_eq!(
                exps("tags.team IS NULL", &["experiment_id"]).await,
                ["Default", "alpha"]
            );
            assert_eq!(
                exps("experiment_id IN ('0', '2')", &[]).await,
                ["Beta", "Default"]
            );
            assert_eq!(
                exps("creation_time >= 10", &["last_update_time DESC"]).await,
                ["alpha", "Beta"]
            );

            let models = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::RegisteredModels,
                        "SELECT m.name FROM registered_models m",
                        ("TRUE", vec![]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(models("", &[]).await, ["m1", "m2"]);
            assert_eq!(models("", &["timestamp"]).await, ["m2", "m1"]);
            assert_eq!(models("tags.stage = 'prod'", &[]).await, ["m2"]);
            assert_eq!(models("name IN ('m1', 'p1')", &[]).await, ["m1"]);
            assert_eq!(
                models("tags.`mlflow.prompt.is_prompt` = 'true'", &[]).await,
                ["p1"]
            );
            assert_eq!(
                models("tags.`mlflow.prompt.is_prompt` != 'true'", &["name DESC"]).await,
                ["m2", "m1"]
            );

            let versions = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::ModelVersions,
                        "SELECT v.name || '/' || v.version FROM model_versions v",
                        ("TRUE", vec![]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(versions("", &[]).await, ["m1/2", "m2/1", "m1/1"]);
            assert_eq!(versions("version_number >= 2", &[]).await, ["m1/2"]);
            assert_eq!(
                versions("run_id = 'r1'", &["version_number"]).await,
                ["m1/1", "m2/1"]
            );
            assert_eq!(
                versions("source_path LIKE 's3://%'", &["name"]).await,
                ["m1/2", "m1/1"]
            );
            assert_eq!(versions("tags.k = 'v'", &[]).await, ["m1/2"]);
            assert_eq!(
                versions("name = 'm1'", &["creation_timestamp"]).await,
                ["m1/1", "m1/2"]
            );

            let logged = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::LoggedModels,
                        "SELECT l.model_id FROM logged_models l",
                        ("l.experiment_id = $1", vec![Bind::Int(1)]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(logged("", &[]).await, ["lm3", "lm2", "lm1"]);
            assert_eq!(logged("metrics.acc > 0.75", &[]).await, ["lm1"]);
            assert_eq!(logged("metrics.acc >= 0.6", &[]).await, ["lm2", "lm1"]);
            // lm1's latest acc is 0.6 (timestamp 2), lm2's 0.7, lm3 has none.
            assert_eq!(
                logged("", &["metrics.acc DESC"]).await,
                ["lm2", "lm1", "lm3"]
            );
            assert_eq!(logged("", &["metrics.acc"]).await, ["lm1", "lm2", "lm3"]);
            assert_eq!(logged("params.depth = '3'", &[]).await, ["lm1"]);
            assert_eq!(logged("tags.env IN ('prod')", &[]).await, ["lm2"]);
            assert_eq!(
                logged("name ILIKE 'net%'", &["creation_time"]).await,
                ["lm1", "lm3"]
            );
            assert_eq!(
                logged("model_type = 'torch' AND creation_timestamp < 250", &[]).await,
                ["lm1"]
            );
        }
    }
}
