//! `--model-memory-budget` and `--model-control-mode on-demand` over real ONNX models whose
//! weights dominate their memory (48 MiB each): a request loads the model it asks for, the
//! least recently used idle model is evicted when the host budget would be exceeded, unloading
//! gives the memory back to the system, and a model that cannot fit is UNAVAILABLE with the
//! numbers. The GPU side of the same accounting is tested over inventories given as data
//! (serving/src/budget.rs, gpu/src/placement.rs).

mod common;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use common::{Repository, Server, metric_sum, poll_until};

const MIB: f64 = (1 << 20) as f64;

/// Rows of every table model (tests/fixtures/weighty_models.py).
const ROWS: i64 = 262_144;

/// Asks `model` for rows 7 and the last, and checks the answer: y[i, j] = 4i + j + offset + 66.
async fn ask(server: &Server, model: &str, offset: f64) -> Result<()> {
    let request = json!({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 1], "data": [7, ROWS - 1]}]});
    let (status, body) = server
        .post(&format!("/v2/models/{model}/infer"), &request)
        .await?;
    ensure!(status == 200, "{model}: {status} {body}");
    let data: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone())?;
    let row = |i: i64| (0..4).map(move |j| (4 * i + j) as f64 + offset + 66.0);
    let expected: Vec<f64> = row(7).chain(row(ROWS - 1)).collect();
    ensure!(data == expected, "{model}: {data:?}, expected {expected:?}");
    Ok(())
}

/// The state (and reason) of `model`'s index row: "" when never loaded.
async fn state(server: &Server, model: &str) -> Result<(String, String)> {
    let row = server.index_row(model).await?.unwrap_or(Value::Null);
    let text = |k: &str| row[k].as_str().unwrap_or("").to_string();
    Ok((text("state"), text("reason")))
}

/// A metric's value for `model` (summed over its other labels).
async fn model_metric(server: &Server, name: &str, model: &str) -> Result<f64> {
    let text = reqwest::get(server.metrics_url()).await?.text().await?;
    let label = format!("model=\"{model}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// What the first two table models take on the host as the server measures them, in bytes,
/// loaded in that order: the first also pays for starting ONNX Runtime.
async fn measured_footprints() -> Result<(f64, f64)> {
    let server = Server::start(
        Repository::weighty()?,
        &["--model-control-mode", "on-demand"],
    )
    .await?;
    ask(&server, "table_a", 0.0).await?;
    ask(&server, "table_b", 1.0).await?;
    let a = model_metric(&server, "nexus_model_memory_bytes", "table_a").await?;
    let b = model_metric(&server, "nexus_model_memory_bytes", "table_b").await?;
    Ok((a, b))
}

#[tokio::test]
async fn requests_load_models_on_demand_and_evict_the_least_recently_used() -> Result<()> {
    // Room for two of the three models, whatever this machine's runtime takes for them.
    let (first, other) = measured_footprints().await?;
    for one in [first, other] {
        ensure!(
            one >= 48.0 * MIB,
            "a 48 MiB model measured at {:.1} MiB",
            one / MIB
        );
    }
    let room = first + 1.5 * other;
    let budget = format!("cpu={}MiB", (room / MIB) as u64);
    let server = Server::start(
        Repository::weighty()?,
        &[
            "--model-control-mode",
            "on-demand",
            "--model-memory-budget",
            &budget,
        ],
    )
    .await?;
    for model in ["table_a", "table_b", "table_c"] {
        ensure!(
            state(&server, model).await?.0.is_empty(),
            "{model} loaded before any request"
        );
    }

    ask(&server, "table_a", 0.0).await?;
    ask(&server, "table_b", 1.0).await?;
    ask(&server, "table_a", 0.0).await?; // a is now used more recently than b
    ask(&server, "table_c", 2.0).await?;
    let (b, why) = state(&server, "table_b").await?;
    ensure!(
        b == "UNAVAILABLE",
        "table_b: {b} with --model-memory-budget {budget}"
    );
    ensure!(why.contains("evicted to make room for 'table_c'"), "{why}");
    for model in ["table_a", "table_c"] {
        ensure!(
            state(&server, model).await?.0 == "READY",
            "{model} not ready"
        );
    }

    // The evicted model comes back on the next request, at the cost of the oldest, now a.
    ask(&server, "table_b", 1.0).await?;
    ensure!(
        state(&server, "table_a").await?.0 == "UNAVAILABLE",
        "table_a kept"
    );
    ensure!(
        state(&server, "table_c").await?.0 == "READY",
        "table_c evicted"
    );

    let metric = |name: &'static str, model: &'static str| model_metric(&server, name, model);
    ensure!(metric("nexus_model_evictions_total", "table_b").await? == 1.0);
    ensure!(metric("nexus_model_evictions_total", "table_a").await? == 1.0);
    ensure!(metric("nexus_model_loads_total", "table_b").await? == 2.0);
    let cold = metric("nexus_model_cold_start_duration_seconds_count", "table_a").await?;
    ensure!(cold == 1.0, "cold starts of table_a: {cold}");
    let held = metric_sum(&server.metrics_url(), "nexus_model_memory_bytes").await?;
    ensure!(
        held <= room,
        "models hold {:.1} MiB over a budget of {budget}",
        held / MIB
    );
    Ok(())
}

/// Loads and unloads `table_a` over and over: each unload gives its 48 MiB of weights back.
/// The first load's tables are mapped on their own, but once they are freed glibc serves
/// allocations of their size from its heap, which keeps freed pages: without the trim after an
/// unload, the second one gave nothing back.
#[tokio::test]
async fn unloading_gives_the_memory_back_to_the_system() -> Result<()> {
    let server = Server::start(
        Repository::weighty()?,
        &["--model-control-mode", "on-demand"],
    )
    .await?;
    for round in 1..=3 {
        let before = server.rss_anon()? as f64;
        ask(&server, "table_a", 0.0).await?;
        let loaded = server.rss_anon()? as f64;
        let (status, body) = server
            .post("/v2/repository/models/table_a/unload", &json!({}))
            .await?;
        ensure!(status == 200, "unload: {status} {body}");
        // Freed once the instance thread has dropped its session, then trimmed from the heap;
        // ONNX Runtime itself, started by the first load, stays.
        let after = poll_until(
            std::time::Duration::from_secs(20),
            "the weights' memory given back",
            || async {
                let now = server.rss_anon()? as f64;
                Ok((loaded - now >= 40.0 * MIB).then_some(now))
            },
        )
        .await
        .with_context(|| {
            format!(
                "round {round}: RssAnon {:.1} MiB, {:.1} MiB loaded",
                before / MIB,
                loaded / MIB
            )
        })?;
        eprintln!(
            "round {round}: RssAnon {:.1} MiB, {:.1} MiB with table_a, {:.1} MiB after its unload",
            before / MIB,
            loaded / MIB,
            after / MIB
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_model_that_cannot_fit_is_unavailable_with_the_numbers() -> Result<()> {
    // Every model loads at start-up (model control mode none): the first fits in 100 MiB, the
    // next ones would exceed it, and without on-demand nothing is evicted for them.
    let server = Server::start(
        Repository::weighty()?,
        &["--model-memory-budget", "cpu=100MiB"],
    )
    .await?;
    ask(&server, "table_a", 0.0).await?;
    let (b, why) = state(&server, "table_b").await?;
    ensure!(b == "UNAVAILABLE", "table_b: {b} {why}");
    ensure!(why.contains("--model-memory-budget of 100.0 MiB"), "{why}");
    ensure!(why.contains("with --model-control-mode on-demand"), "{why}");
    let (status, body) = server
        .post("/v2/models/table_b/infer", &json!({"inputs": []}))
        .await?;
    ensure!(status == 503, "{status} {body}");

    // A model larger than the whole budget never loads, and a request says why.
    let server = Server::start(
        Repository::weighty()?,
        &[
            "--model-control-mode",
            "on-demand",
            "--model-memory-budget",
            "cpu=32MiB",
        ],
    )
    .await?;
    let request =
        json!({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 1], "data": [0]}]});
    let (status, body) = server.post("/v2/models/table_a/infer", &request).await?;
    ensure!(status == 503, "{status} {body}");
    let error = body["error"].as_str().unwrap_or("");
    ensure!(
        error.contains("more than its whole --model-memory-budget of 32.0 MiB"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn on_demand_does_not_retry_a_broken_model_nor_invent_one() -> Result<()> {
    let repository = Repository::weighty()?;
    repository.add_corrupt_model("broken")?;
    let server = Server::start(repository, &["--model-control-mode", "on-demand"]).await?;
    let request =
        json!({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 1], "data": [0]}]});
    for _ in 0..2 {
        let (status, body) = server.post("/v2/models/broken/infer", &request).await?;
        ensure!(status == 503, "{status} {body}");
    }
    let failures = model_metric(&server, "nexus_model_loads_total", "broken").await?;
    ensure!(
        failures == 1.0,
        "the broken model was loaded {failures} times"
    );
    let (status, body) = server.post("/v2/models/nowhere/infer", &request).await?;
    ensure!(status == 404, "{status} {body}");
    Ok(())
}

#[tokio::test]
async fn a_budget_that_does_not_parse_stops_start_up() -> Result<()> {
    let error = common::nexus(&[
        "serve",
        "--model-memory-budget",
        "cpu=lots",
        "--model-repository",
        ".",
    ])
    .await
    .expect_err("a budget of 'lots' was accepted");
    ensure!(format!("{error:#}").contains("512MiB"), "{error:#}");
    Ok(())
}
