//! The model repository as a user sees it: models that fail to load are listed with a
//! reason while the others serve, and the none / explicit / poll model control modes.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use common::{Repository, Server, check_simple_response, poll_until, simple_request};

/// How long poll mode (scanning every second) may take to notice a change.
const POLL_TIMEOUT: Duration = Duration::from_secs(15);

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn models_that_fail_to_load_are_unavailable_with_a_reason() -> Result<()> {
    let repository = Repository::examples()?;
    repository.add_corrupt_model("corrupt_file")?;
    repository.add_bad_config("bad_config")?;
    let server = Server::start(repository, &[]).await?;

    let index = server.index().await?;
    for (model, reason_mentions) in [("corrupt_file", "model.onnx"), ("bad_config", "config")] {
        let row = index
            .iter()
            .find(|r| r["name"] == model)
            .with_context(|| format!("{model} not in the index {index:?}"))?;
        assert_eq!(row["state"], "UNAVAILABLE", "{row}");
        let reason = row["reason"].as_str().unwrap_or_default();
        assert!(
            reason.to_lowercase().contains(reason_mentions),
            "{model}: reason {reason:?} does not mention {reason_mentions:?}"
        );
        let (status, _) = server.get(&format!("/v2/models/{model}/ready")).await?;
        assert_eq!(status, 503, "{model} ready");
        let (status, body) = server
            .post(&format!("/v2/models/{model}/infer"), &simple_request(1))
            .await?;
        assert_eq!(status, 503, "{model} infer: {body}");
        assert!(error_of(&body).contains(model), "{body}");
    }
    for model in [
        "simple",
        "mlp_classifier",
        "identity_bytes",
        "fp16_scale",
        "dynamic_add",
    ] {
        let row = index
            .iter()
            .find(|r| r["name"] == model)
            .with_context(|| format!("{model} not in the index {index:?}"))?;
        assert_eq!(row["state"], "READY", "{row}");
        let (status, _) = server.get(&format!("/v2/models/{model}/ready")).await?;
        assert_eq!(status, 200, "{model} ready");
    }
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(2))
        .await?;
    assert_eq!(status, 200, "{body}");
    check_simple_response(&body, 2)?;

    let ready = server
        .post("/v2/repository/index", &json!({"ready": true}))
        .await?
        .1;
    let names: Vec<&str> = ready
        .as_array()
        .context("index")?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"corrupt_file") && !names.contains(&"bad_config"),
        "{ready}"
    );
    assert_eq!(names.len(), 5, "{ready}");
    Ok(())
}

#[tokio::test]
async fn explicit_mode_loads_and_unloads_on_request() -> Result<()> {
    let server = Server::start(
        Repository::examples()?,
        &["--model-control-mode", "explicit"],
    )
    .await?;

    // Nothing is loaded at start, but every model is listed.
    let index = server.index().await?;
    assert_eq!(index.len(), 5, "{index:?}");
    assert!(index.iter().all(|r| r["state"] != "READY"), "{index:?}");
    let (status, _) = server.get("/v2/models/simple/ready").await?;
    assert_ne!(status, 200);
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(1))
        .await?;
    assert_ne!(status, 200, "{body}");

    // Load: ready and serving.
    let (status, body) = server
        .post("/v2/repository/models/simple/load", &json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    let row = server.index_row("simple").await?.context("simple listed")?;
    assert_eq!(row["state"], "READY", "{row}");
    let (status, _) = server.get("/v2/models/simple/ready").await?;
    assert_eq!(status, 200);
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(1))
        .await?;
    assert_eq!(status, 200, "{body}");
    check_simple_response(&body, 1)?;
    let others = server.index().await?;
    assert_eq!(
        others.iter().filter(|r| r["state"] == "READY").count(),
        1,
        "only simple was loaded: {others:?}"
    );

    // Unload: not ready, and inference is refused as unavailable.
    let (status, body) = server
        .post("/v2/repository/models/simple/unload", &json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/v2/models/simple/ready").await?;
    assert_eq!(status, 503);
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(1))
        .await?;
    assert_eq!(status, 503, "{body}");
    assert!(error_of(&body).contains("simple"), "{body}");
    let row = server.index_row("simple").await?.context("simple listed")?;
    assert_eq!(row["state"], "UNAVAILABLE", "{row}");

    // Load again with a config override: max_batch_size 8 -> 2.
    let (status, body) = server
        .post("/v2/repository/models/simple/load", &json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, mut config) = server.get("/v2/models/simple/config").await?;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["max_batch_size"], 8, "{config}");
    config["max_batch_size"] = json!(2);
    let load = json!({"parameters": {"config": config.to_string()}});
    let (status, body) = server
        .post("/v2/repository/models/simple/load", &load)
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, config) = server.get("/v2/models/simple/config").await?;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["max_batch_size"], 2, "{config}");
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(3))
        .await?;
    assert_eq!(status, 400, "batch 3 above the new max: {body}");
    assert!(error_of(&body).contains("batch size 3"), "{body}");
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(2))
        .await?;
    assert_eq!(status, 200, "{body}");
    check_simple_response(&body, 2)?;

    // A config override that is not a model config is refused and the model keeps serving.
    let load = json!({"parameters": {"config": "{\"max_batch_size\": \"many\"}"}});
    let (status, body) = server
        .post("/v2/repository/models/simple/load", &load)
        .await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(2))
        .await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn none_mode_refuses_load_and_unload() -> Result<()> {
    let server = Server::start(Repository::examples()?, &["--model-control-mode", "none"]).await?;
    for action in ["load", "unload"] {
        let (status, body) = server
            .post(
                &format!("/v2/repository/models/simple/{action}"),
                &json!({}),
            )
            .await?;
        assert_eq!(status, 400, "{action}: {body}");
        assert!(error_of(&body).contains("explicit"), "{action}: {body}");
    }
    let row = server.index_row("simple").await?.context("simple listed")?;
    assert_eq!(row["state"], "READY", "{row}");
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(1))
        .await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn poll_mode_follows_models_added_and_removed() -> Result<()> {
    let server = Server::start(
        Repository::examples()?,
        &[
            "--model-control-mode",
            "poll",
            "--repository-poll-secs",
            "1",
        ],
    )
    .await?;
    assert!(server.index_row("added").await?.is_none());

    server.repository.copy_model("dynamic_add", "added")?;
    poll_until(POLL_TIMEOUT, "added model READY", || async {
        let row = server.index_row("added").await?;
        Ok(row.filter(|r| r["state"] == "READY"))
    })
    .await?;
    let request = json!({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.5]}
    ]});
    let (status, body) = server.post("/v2/models/added/infer", &request).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([2.0, 3.0, 4.5]), "{body}");

    server.repository.remove_model("added")?;
    poll_until(
        POLL_TIMEOUT,
        "removed model gone from the index",
        || async { Ok(server.index_row("added").await?.is_none().then_some(())) },
    )
    .await?;
    let (status, body) = server.post("/v2/models/added/infer", &request).await?;
    assert_eq!(status, 404, "{body}");

    // The models that were there all along kept serving.
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(1))
        .await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn loading_a_model_not_in_the_repository_leaves_no_trace() -> Result<()> {
    let server = Server::start(
        Repository::examples()?,
        &["--model-control-mode", "explicit"],
    )
    .await?;
    let (status, body) = server
        .post("/v2/repository/models/no_such_model/load", &json!({}))
        .await?;
    assert!(status == 400 || status == 404, "{status}: {body}");
    assert!(error_of(&body).contains("no_such_model"), "{body}");
    let row = server.index_row("no_such_model").await?;
    assert!(row.is_none(), "listed after a failed load: {row:?}");
    let (status, _) = server.get("/v2/models/no_such_model/ready").await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn configs_past_the_instance_and_thread_limits_are_refused_with_the_reason() -> Result<()> {
    let repository = Repository::examples()?;
    let append = |model: &str, text: &str| -> Result<()> {
        let path = repository.path().join(model).join("config.pbtxt");
        let config = std::fs::read_to_string(&path)?;
        std::fs::write(&path, format!("{config}\n{text}\n"))?;
        Ok(())
    };
    repository.copy_model("simple", "many_instances")?;
    append("many_instances", "instance_group [ { count: 1000 } ]")?;
    repository.copy_model("simple", "many_threads")?;
    append(
        "many_threads",
        r#"parameters { key: "inter_op_thread_count" value: { string_value: "1000000" } }"#,
    )?;
    let server = Server::start(
        repository,
        &["--model-control-mode", "explicit", "--load-model", "*"],
    )
    .await?;

    // From a repository file: listed as unavailable, with the limit in the reason.
    for (model, mentions) in [
        ("many_instances", "1001 instances; the limit is 64"),
        ("many_threads", "asks for 1000000 threads; the limit is"),
    ] {
        let row = server.index_row(model).await?.context("listed")?;
        assert_eq!(row["state"], "UNAVAILABLE", "{row}");
        let reason = row["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(mentions), "{model}: {row}");
        let (status, body) = server
            .post(&format!("/v2/repository/models/{model}/load"), &json!({}))
            .await?;
        assert_eq!(status, 400, "{model}: {body}");
        assert!(error_of(&body).contains(mentions), "{model}: {body}");
    }

    // From the load API's config override: refused before anything is loaded, and the
    // model keeps serving with its config.
    let (status, mut config) = server.get("/v2/models/simple/config").await?;
    assert_eq!(status, 200, "{config}");
    config["instance_group"][0]["count"] = json!(65);
    let load = json!({"parameters": {"config": config.to_string()}});
    let (status, body) = server
        .post("/v2/repository/models/simple/load", &load)
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_of(&body).contains("65 instances; the limit is 64"),
        "{body}"
    );
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(2))
        .await?;
    assert_eq!(status, 200, "{body}");
    check_simple_response(&body, 2)
}
