//! The registry against the running binary: store behaviour on SQLite and PostgreSQL
//! and hostile input. Crash safety, a database that goes away and hot swap under load
//! are in `registry_resilience.rs`.
//!
//! PostgreSQL tests create a database of their own on `NEXUS_TEST_POSTGRES_URL`'s server
//! (default postgres://postgres@127.0.0.1:5432/test) and drop it; without a reachable
//! server they say so on stderr and pass.

mod common;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use common::registry::{
    Database, Fixture, Mlflow, RegistryServer, TestDatabase, all_versions, create_version, tag_map,
    tags, version_of,
};

// ---------------------------------------------------------------- 1. store behaviour

/// 20 concurrent creates get versions 1..=20, each with its own tags.
async fn concurrent_creates_number_versions_consecutively(kind: Database) -> Result<()> {
    let Some(fx) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fx.mlflow();
    mlflow
        .post("registered-models/create", &json!({"name": "concurrent"}))
        .await?;
    let mut tasks = JoinSet::new();
    for request in 0..20 {
        let mlflow = mlflow.clone();
        tasks.spawn(async move {
            let pairs = tags([("request", request.to_string()), ("team", "ml".into())]);
            let source = format!("mlflow-artifacts:/concurrent/{request}");
            let answer = create_version(&mlflow, "concurrent", &source, pairs).await;
            (request, answer)
        });
    }
    let mut by_version = BTreeMap::new();
    let mut failures = Vec::new();
    for (request, answer) in tasks.join_all().await {
        let (status, body) = answer?;
        if status != 200 {
            failures.push(format!("request {request}: {status} {body}"));
            continue;
        }
        let version = version_of(&body["model_version"])?;
        ensure!(
            by_version.insert(version, request).is_none(),
            "version {version} given twice"
        );
    }
    ensure!(
        failures.is_empty(),
        "{kind:?}: {} of 20 concurrent creates failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let numbers: Vec<u64> = by_version.keys().copied().collect();
    ensure!(
        numbers == (1..=20).collect::<Vec<_>>(),
        "versions {numbers:?}"
    );
    for (version, request) in &by_version {
        let got = mlflow
            .get(
                "model-versions/get",
                &json!({"name": "concurrent", "version": version.to_string()}),
            )
            .await?;
        let tags = tag_map(&got["model_version"]["tags"]);
        let want = BTreeMap::from([
            ("request".to_string(), request.to_string()),
            ("team".to_string(), "ml".to_string()),
        ]);
        ensure!(
            tags == want,
            "version {version}: tags {tags:?}, want {want:?}"
        );
    }
    ensure!(all_versions(&mlflow, "concurrent").await?.len() == 20);
    Ok(())
}

/// A param logged again with another value is refused (and the batch holding it is not
/// applied); the same value again is accepted.
async fn a_param_cannot_change(kind: Database) -> Result<()> {
    let Some(fx) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fx.mlflow();
    let run = mlflow.create_run("params").await?;
    let param = |value: &str| json!({"run_id": run, "key": "lr", "value": value});
    mlflow.post("runs/log-parameter", &param("0.1")).await?;
    mlflow.post("runs/log-parameter", &param("0.1")).await?;
    let (status, body) = mlflow
        .call(Method::POST, "runs/log-parameter", &param("0.2"))
        .await?;
    ensure!(status == 400, "re-log with another value: {status} {body}");
    ensure!(body["error_code"] == "INVALID_PARAMETER_VALUE", "{body}");
    let (status, body) = mlflow
        .call(
            Method::POST,
            "runs/log-batch",
            &json!({"run_id": run, "params": [{"key": "lr", "value": "0.3"}],
                    "tags": [{"key": "batch", "value": "applied"}]}),
        )
        .await?;
    ensure!(
        status == 400,
        "log-batch with a changed param: {status} {body}"
    );
    ensure!(body["error_code"] == "INVALID_PARAMETER_VALUE", "{body}");
    let got = mlflow.get("runs/get", &json!({"run_id": run})).await?;
    let params = tag_map(&got["run"]["data"]["params"]);
    ensure!(params.get("lr").map(String::as_str) == Some("0.1"), "{got}");
    let tags = tag_map(&got["run"]["data"]["tags"]);
    ensure!(
        !tags.contains_key("batch"),
        "a refused batch was applied: {got}"
    );
    Ok(())
}

/// runs/get shows the value of the highest step (not the last logged); the history has
/// every point.
async fn latest_metric_is_the_highest_step(kind: Database) -> Result<()> {
    let Some(fx) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fx.mlflow();
    let run = mlflow.create_run("metrics").await?;
    // (step, value, timestamp), in logging order.
    let points = [(0, 1.0, 1000), (2, 0.5, 1001), (1, 0.7, 1002)];
    for (step, value, timestamp) in points {
        mlflow
            .post(
                "runs/log-metric",
                &json!({"run_id": run, "key": "loss", "value": value, "step": step,
                        "timestamp": timestamp}),
            )
            .await?;
    }
    let latest = |run_body: &Value| -> Result<(f64, i64)> {
        let metric = run_body["run"]["data"]["metrics"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["key"] == "loss"))
            .with_context(|| format!("no loss in {run_body}"))?;
        Ok((
            metric["value"].as_f64().context("value")?,
            metric["step"].as_i64().context("step")?,
        ))
    };
    let got = mlflow.get("runs/get", &json!({"run_id": run})).await?;
    ensure!(
        latest(&got)? == (0.5, 2),
        "latest after steps 0, 2, 1: {got}"
    );
    // A higher step wins even with an older timestamp.
    mlflow
        .post(
            "runs/log-metric",
            &json!({"run_id": run, "key": "loss", "value": 0.4, "step": 3, "timestamp": 500}),
        )
        .await?;
    let got = mlflow.get("runs/get", &json!({"run_id": run})).await?;
    ensure!(latest(&got)? == (0.4, 3), "latest after step 3: {got}");
    let history = mlflow
        .get(
            "metrics/get-history",
            &json!({"run_id": run, "metric_key": "loss"}),
        )
        .await?;
    let points: Vec<(i64, f64)> = history["metrics"]
        .as_array()
        .with_context(|| format!("{history}"))?
        .iter()
        .map(|m| {
            (
                m["step"].as_i64().unwrap_or(-1),
                m["value"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    ensure!(
        points == [(0, 1.0), (1, 0.7), (2, 0.5), (3, 0.4)],
        "history {points:?}"
    );
    Ok(())
}

/// A renamed model keeps its versions (with their tags) and aliases; the old name is gone.
async fn rename_keeps_versions_and_aliases(kind: Database) -> Result<()> {
    let Some(fx) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fx.mlflow();
    mlflow
        .post("registered-models/create", &json!({"name": "before"}))
        .await?;
    for n in 1..=2 {
        let (status, body) = create_version(
            &mlflow,
            "before",
            &format!("mlflow-artifacts:/before/{n}"),
            tags([("n", n)]),
        )
        .await?;
        ensure!(status == 200, "{body}");
    }
    mlflow
        .post(
            "registered-models/alias",
            &json!({"name": "before", "alias": "champion", "version": "2"}),
        )
        .await?;
    let renamed = mlflow
        .post(
            "registered-models/rename",
            &json!({"name": "before", "new_name": "after"}),
        )
        .await?;
    ensure!(renamed["registered_model"]["name"] == "after", "{renamed}");

    let model = mlflow
        .get("registered-models/get", &json!({"name": "after"}))
        .await?;
    let aliases = &model["registered_model"]["aliases"];
    ensure!(
        *aliases == json!([{"alias": "champion", "version": "2"}]),
        "aliases after rename: {model}"
    );
    let versions = all_versions(&mlflow, "after").await?;
    ensure!(versions.len() == 2, "versions after rename: {versions:?}");
    for n in 1..=2u64 {
        let got = mlflow
            .get(
                "model-versions/get",
                &json!({"name": "after", "version": n.to_string()}),
            )
            .await?;
        let version = &got["model_version"];
        ensure!(version["name"] == "after", "{got}");
        ensure!(
            tag_map(&version["tags"]).get("n") == Some(&n.to_string()),
            "{got}"
        );
    }
    let by_alias = mlflow
        .get(
            "registered-models/alias",
            &json!({"name": "after", "alias": "champion"}),
        )
        .await?;
    ensure!(version_of(&by_alias["model_version"])? == 2, "{by_alias}");

    let (status, body) = mlflow
        .call(
            Method::GET,
            "registered-models/get",
            &json!({"name": "before"}),
        )
        .await?;
    ensure!(status == 404, "old name: {status} {body}");
    ensure!(body["error_code"] == "RESOURCE_DOES_NOT_EXIST", "{body}");
    ensure!(all_versions(&mlflow, "before").await?.is_empty());
    Ok(())
}

/// Deleting a version removes the aliases pointing at it, and its number is not reused.
async fn deleted_version_loses_aliases_and_number(kind: Database) -> Result<()> {
    let Some(fx) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fx.mlflow();
    mlflow
        .post("registered-models/create", &json!({"name": "deleting"}))
        .await?;
    for n in 1..=3 {
        let (status, body) =
            create_version(&mlflow, "deleting", "mlflow-artifacts:/d", tags([("n", n)])).await?;
        ensure!(status == 200, "{body}");
    }
    for (alias, version) in [("gone", "3"), ("stays", "2")] {
        mlflow
            .post(
                "registered-models/alias",
                &json!({"name": "deleting", "alias": alias, "version": version}),
            )
            .await?;
    }
    mlflow
        .ok(
            Method::DELETE,
            "model-versions/delete",
            &json!({"name": "deleting", "version": "3"}),
        )
        .await?;

    let model = mlflow
        .get("registered-models/get", &json!({"name": "deleting"}))
        .await?;
    ensure!(
        model["registered_model"]["aliases"] == json!([{"alias": "stays", "version": "2"}]),
        "aliases after deleting version 3: {model}"
    );
    let (status, body) = mlflow
        .call(
            Method::GET,
            "registered-models/alias",
            &json!({"name": "deleting", "alias": "gone"}),
        )
        .await?;
    ensure!(
        status != 200,
        "alias of a deleted version still resolves: {body}"
    );
    let (status, body) = mlflow
        .call(
            Method::GET,
            "model-versions/get",
            &json!({"name": "deleting", "version": "3"}),
        )
        .await?;
    ensure!(status == 404, "deleted version: {status} {body}");

    let (status, body) =
        create_version(&mlflow, "deleting", "mlflow-artifacts:/d", tags([("n", 4)])).await?;
    ensure!(status == 200, "{body}");
    ensure!(
        version_of(&body["model_version"])? == 4,
        "the number of a deleted version was reused: {body}"
    );
    let mut numbers: Vec<u64> = all_versions(&mlflow, "deleting")
        .await?
        .iter()
        .map(version_of)
        .collect::<Result<_>>()?;
    numbers.sort_unstable();
    ensure!(numbers == [1, 2, 4], "visible versions {numbers:?}");
    Ok(())
}

/// registered-models/search in pages of 2 lists every model once, by name.
async fn search_pages_through_every_model_once(kind: Database) -> Result<()> {
    let Some(fx) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fx.mlflow();
    let names = ["page-c", "page-a", "page-e", "page-b", "page-d"];
    for name in names {
        mlflow
            .post("registered-models/create", &json!({"name": name}))
            .await?;
    }
    for (order_by, descending) in [(None, false), (Some("name DESC"), true)] {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = json!({"max_results": 2});
            if let Some(order) = order_by {
                params["order_by"] = json!([order]);
            }
            if let Some(t) = &token {
                params["page_token"] = json!(t);
            }
            let page = mlflow.get("registered-models/search", &params).await?;
            let models = page["registered_models"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            sizes.push(models.len());
            seen.extend(
                models
                    .iter()
                    .map(|m| m["name"].as_str().unwrap_or("?").to_string()),
            );
            match page["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => break,
            }
            ensure!(sizes.len() <= 5, "pages never end: {seen:?}");
        }
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        want.sort();
        if descending {
            want.reverse();
        }
        ensure!(
            seen == want,
            "order_by {order_by:?}: listed {seen:?}, want {want:?}"
        );
        ensure!(
            sizes == [2, 2, 1],
            "order_by {order_by:?}: page sizes {sizes:?}"
        );
    }
    Ok(())
}

// One test per behaviour and database, so a failure names both.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_creates_number_versions_consecutively() -> Result<()> {
    concurrent_creates_number_versions_consecutively(Database::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_creates_number_versions_consecutively() -> Result<()> {
    concurrent_creates_number_versions_consecutively(Database::Postgres).await
}

#[tokio::test]
async fn sqlite_a_param_cannot_change() -> Result<()> {
    a_param_cannot_change(Database::Sqlite).await
}

#[tokio::test]
async fn postgres_a_param_cannot_change() -> Result<()> {
    a_param_cannot_change(Database::Postgres).await
}

#[tokio::test]
async fn sqlite_latest_metric_is_the_highest_step() -> Result<()> {
    latest_metric_is_the_highest_step(Database::Sqlite).await
}

#[tokio::test]
async fn postgres_latest_metric_is_the_highest_step() -> Result<()> {
    latest_metric_is_the_highest_step(Database::Postgres).await
}

#[tokio::test]
async fn sqlite_rename_keeps_versions_and_aliases() -> Result<()> {
    rename_keeps_versions_and_aliases(Database::Sqlite).await
}

#[tokio::test]
async fn postgres_rename_keeps_versions_and_aliases() -> Result<()> {
    rename_keeps_versions_and_aliases(Database::Postgres).await
}

#[tokio::test]
async fn sqlite_deleted_version_loses_aliases_and_number() -> Result<()> {
    deleted_version_loses_aliases_and_number(Database::Sqlite).await
}

#[tokio::test]
async fn postgres_deleted_version_loses_aliases_and_number() -> Result<()> {
    deleted_version_loses_aliases_and_number(Database::Postgres).await
}

#[tokio::test]
async fn sqlite_search_pages_through_every_model_once() -> Result<()> {
    search_pages_through_every_model_once(Database::Sqlite).await
}

#[tokio::test]
async fn postgres_search_pages_through_every_model_once() -> Result<()> {
    search_pages_through_every_model_once(Database::Postgres).await
}

// ---------------------------------------------------------------------- 5. hostile input

/// Every search endpoint, with the simplest comparison its entity accepts.
const SEARCHES: [(&str, &str); 5] = [
    ("runs/search", "attributes.status = 'RUNNING'"),
    ("experiments/search", "name = 'Default'"),
    ("registered-models/search", "name = 'hostile'"),
    ("model-versions/search", "name = 'hostile'"),
    ("logged-models/search", "name = 'hostile'"),
];

/// POSTs a search of the Default experiment with `filter` to `endpoint`.
async fn search(mlflow: &Mlflow, endpoint: &str, filter: &str) -> Result<(u16, Value)> {
    let params = json!({"experiment_ids": ["0"], "filter": filter, "max_results": 1000});
    mlflow.call(Method::POST, endpoint, &params).await
}

/// Checks a refused search: 400 INVALID_PARAMETER_VALUE saying `why`.
fn check_refused(what: &str, status: u16, body: &Value, why: &str) -> Result<()> {
    ensure!(
        status == 400 && body["error_code"] == "INVALID_PARAMETER_VALUE",
        "{what}: {status} {body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(why),
        "{what}: the message does not say {why:?}: {message}"
    );
    Ok(())
}

/// The filter that overflowed a worker thread's stack and killed the process (20,000
/// comparisons, ~600 KB), and one just past the comparison bound, are refused with 400 on
/// every search endpoint; filters at the bounds (most comparisons, longest IN list) run on
/// the database; and the registry answers on between them all.
async fn hostile_filters_are_refused_and_the_registry_keeps_serving(kind: Database) -> Result<()> {
    use nexus_registry::search::{MAX_FILTER_BYTES, MAX_FILTER_CLAUSES};
    let Some(fixture) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fixture.mlflow();
    let run = mlflow
        .post("runs/create", &json!({"experiment_id": "0"}))
        .await?;
    let run_id = run["run"]["info"]["run_id"].as_str().context("a run id")?;
    mlflow
        .post("registered-models/create", &json!({"name": "hostile"}))
        .await?;
    for (endpoint, clause) in SEARCHES {
        let hostile = vec![clause; 20_000].join(" AND ");
        let (status, body) = search(&mlflow, endpoint, &hostile).await?;
        check_refused(endpoint, status, &body, "bytes a filter may have")?;
        let many = vec![clause; MAX_FILTER_CLAUSES + 1].join(" AND ");
        let (status, body) = search(&mlflow, endpoint, &many).await?;
        check_refused(endpoint, status, &body, "comparisons joined with 'AND'")?;
        let most = vec![clause; MAX_FILTER_CLAUSES].join(" AND ");
        let (status, body) = search(&mlflow, endpoint, &most).await?;
        ensure!(status == 200, "{endpoint} at the bound: {status} {body}");
    }
    let (status, body) = search(&mlflow, "runs/search", SEARCHES[0].1).await?;
    ensure!(
        status == 200,
        "runs/search after the hostile ones: {status} {body}"
    );
    ensure!(body["runs"][0]["info"]["run_id"] == run_id, "{body}");
    // The longest IN list the length bound lets through binds ~21,800 values: under both
    // SQLite's and PostgreSQL's limits on one statement.
    let head = "attributes.run_id IN (";
    let items = (MAX_FILTER_BYTES - head.len() - 1) / 3;
    let longest = format!("{head}'{run_id}',{}'')", "'',".repeat(items - 12));
    ensure!(longest.len() <= MAX_FILTER_BYTES, "{} bytes", longest.len());
    let (status, body) = search(&mlflow, "runs/search", &longest).await?;
    ensure!(status == 200, "the longest IN list: {status} {body}");
    ensure!(body["runs"][0]["info"]["run_id"] == run_id, "{body}");
    Ok(())
}

#[tokio::test]
async fn sqlite_hostile_filters_are_refused_and_the_registry_keeps_serving() -> Result<()> {
    hostile_filters_are_refused_and_the_registry_keeps_serving(Database::Sqlite).await
}

#[tokio::test]
async fn postgres_hostile_filters_are_refused_and_the_registry_keeps_serving() -> Result<()> {
    hostile_filters_are_refused_and_the_registry_keeps_serving(Database::Postgres).await
}

/// `[{key, value, timestamp, step}, …]`: `count` metrics named `m0`, `m1`, ….
fn metrics(count: usize) -> Value {
    (0..count)
        .map(|i| json!({"key": format!("m{i}"), "value": i, "timestamp": 1, "step": 0}))
        .collect()
}

/// `[{key, value}, …]`: `count` pairs named `<prefix>0`, `<prefix>1`, ….
fn pairs(prefix: &str, count: usize) -> Value {
    tags((0..count).map(|i| (format!("{prefix}{i}"), "v")))
}

/// A run's metrics, params and tags, as counts.
async fn run_data(mlflow: &Mlflow, run_id: &str) -> Result<[usize; 3]> {
    let run = mlflow.get("runs/get", &json!({"run_id": run_id})).await?;
    let count = |key: &str| run["run"]["data"][key].as_array().map_or(0, Vec::len);
    Ok([count("metrics"), count("params"), count("tags")])
}

/// `runs/log-batch` over MLflow's limits (1000 metrics, 100 params, 100 tags, 1000 in
/// all) is refused with MLflow's INVALID_PARAMETER_VALUE and wording, and nothing of it
/// is stored; batches at the limits are stored whole.
async fn log_batch_keeps_mlflow_limits(kind: Database) -> Result<()> {
    let Some(fixture) = Fixture::start(kind).await? else {
        return Ok(());
    };
    let mlflow = fixture.mlflow();
    let run_id = mlflow.create_run("batch-limits").await?;
    let before = run_data(&mlflow, &run_id).await?;
    let over = [
        (
            "metrics",
            metrics(1001),
            pairs("p", 0),
            pairs("t", 0),
            1000,
            1001,
        ),
        (
            "params",
            metrics(0),
            pairs("p", 101),
            pairs("t", 0),
            100,
            101,
        ),
        ("tags", metrics(0), pairs("p", 0), pairs("t", 101), 100, 101),
        (
            "metrics, params, and tags",
            metrics(900),
            pairs("p", 100),
            pairs("t", 1),
            1000,
            1001,
        ),
    ];
    for (entities, metrics, params, tags, limit, got) in over {
        let batch = json!({"run_id": run_id, "metrics": metrics, "params": params, "tags": tags});
        let (status, body) = mlflow.call(Method::POST, "runs/log-batch", &batch).await?;
        let message = format!(
            "A batch logging request can contain at most {limit} {entities}. Got {got} \
             {entities}. Please split up {entities} across multiple requests and try again."
        );
        check_refused(entities, status, &body, &message)?;
        ensure!(body["message"] == message.as_str(), "{body}");
        let after = run_data(&mlflow, &run_id).await?;
        ensure!(
            after == before,
            "a refused batch of {entities} stored some: {before:?} → {after:?}"
        );
    }
    let at_limits = [
        json!({"run_id": run_id, "metrics": metrics(1000)}),
        json!({"run_id": run_id, "params": pairs("p", 100), "tags": pairs("t", 100)}),
    ];
    for batch in at_limits {
        mlflow.post("runs/log-batch", &batch).await?;
    }
    let [metric_count, param_count, tag_count] = run_data(&mlflow, &run_id).await?;
    ensure!(
        (metric_count, param_count, tag_count) == (1000, 100, before[2] + 100),
        "stored {metric_count} metrics, {param_count} params, {tag_count} tags"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_log_batch_keeps_mlflow_limits() -> Result<()> {
    log_batch_keeps_mlflow_limits(Database::Sqlite).await
}

#[tokio::test]
async fn postgres_log_batch_keeps_mlflow_limits() -> Result<()> {
    log_batch_keeps_mlflow_limits(Database::Postgres).await
}

/// On a PostgreSQL database set to read backslashes in string literals as escapes
/// (`standard_conforming_strings = off`, as servers configured for old clients are), keys
/// and values holding backslashes and quotes in `order_by` and `filter` are looked up as
/// written: nothing in them ends a literal early and runs as SQL.
#[tokio::test]
async fn postgres_keys_with_backslashes_and_quotes_stay_inside_their_literals() -> Result<()> {
    use sqlx::Connection;
    let Some(database) = TestDatabase::create(Database::Postgres).await? else {
        return Ok(());
    };
    let address = database.address().context("a PostgreSQL address")?;
    let mut admin = sqlx::PgConnection::connect(&database.url_via(address)).await?;
    sqlx::raw_sql(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET standard_conforming_strings = off', \
         current_database()); END $$",
    )
    .execute(&mut admin)
    .await?;
    admin.close().await?;
    let data = tempfile::tempdir()?;
    let server = RegistryServer::start(data.path(), &database.args()).await?;
    let mlflow = server.mlflow();

    // With backslashes as escapes, `'k\'''' || ''z'` (the key quoted by doubling its quotes)
    // ends after `k\'''` and leaves `|| ''z'` as SQL.
    let key = r"k\'' || 'z";
    let value = r"v\' OR '1'='1";
    let experiment = mlflow
        .post("experiments/create", &json!({"name": "backslashes"}))
        .await?;
    let experiment_id = experiment["experiment_id"].as_str().context("an id")?;
    let mut runs = Vec::new();
    for rank in ["2", "3", "1"] {
        let run = mlflow
            .post("runs/create", &json!({"experiment_id": experiment_id}))
            .await?;
        let run_id = run["run"]["info"]["run_id"]
            .as_str()
            .context("a run id")?
            .to_string();
        let params = tags([(key, rank.to_string()), ("v", format!("{value}{rank}"))]);
        mlflow
            .post(
                "runs/log-batch",
                &json!({"run_id": run_id, "params": params}),
            )
            .await?;
        runs.push((rank, run_id));
    }
    let ranked = |ranks: &[&str]| -> Vec<String> {
        ranks
            .iter()
            .filter_map(|r| runs.iter().find(|(rank, _)| rank == r))
            .map(|(_, id)| id.clone())
            .collect()
    };
    let found = |body: &Value| -> Vec<String> {
        body["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["info"]["run_id"].as_str().map(str::to_string))
            .collect()
    };
    for (direction, ranks) in [("ASC", ["1", "2", "3"]), ("DESC", ["3", "2", "1"])] {
        let order = format!("params.`{key}` {direction}");
        let params = json!({"experiment_ids": [experiment_id], "order_by": [order]});
        let (status, body) = mlflow.call(Method::POST, "runs/search", &params).await?;
        ensure!(status == 200, "order_by {order}: {status} {body}");
        ensure!(found(&body) == ranked(&ranks), "order_by {order}: {body}");
    }
    let filter = format!(
        "params.`{key}` = '3' AND params.v = '{}3'",
        value.replace('\'', "''")
    );
    let params = json!({"experiment_ids": [experiment_id], "filter": filter});
    let (status, body) = mlflow.call(Method::POST, "runs/search", &params).await?;
    ensure!(status == 200, "filter {filter}: {status} {body}");
    ensure!(found(&body) == ranked(&["3"]), "filter {filter}: {body}");
    Ok(())
}
