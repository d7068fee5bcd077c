//! Platform services against the real binary: the layered configuration (file, NEXUS_*
//! environment, flags) and `nexus config show`, health and discovery endpoints.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use common::{Repository, Server, UpDirs, poll_until};

/// Runs `nexus config show` with `args` and `env`; returns (success, stdout, stderr).
fn config_show(args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["config", "show"])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NEXUS_CONFIG")
        .output()
        .context("cannot run nexus config show")?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn line<'a>(shown: &'a str, key: &str) -> &'a str {
    shown
        .lines()
        .find(|l| l.split(" = ").next() == Some(key))
        .unwrap_or("")
}

/// A flag beats `NEXUS_*`, which beats the file, which beats the default; lists and
/// switches work; secrets are masked; TOML and YAML read the same.
#[test]
fn config_layers_file_environment_and_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let toml = dir.path().join("nexus.toml");
    std::fs::write(
        &toml,
        "max_queue_size = 5\ndefault_max_batch_size = 3\nmodel_control_mode = \"explicit\"\n\
         database_url = \"postgres://nexus:hunter2@db:5432/nexus\"\n\
         route_model = [\"a\", \"b\"]\nfreeze_routing = true\nkafka_option = [\"sasl.password=pw\"]\n",
    )?;
    let yaml = dir.path().join("nexus.yaml");
    std::fs::write(
        &yaml,
        "max_queue_size: 5\ndefault_max_batch_size: 3\nmodel_control_mode: explicit\n\
         database_url: postgres://nexus:hunter2@db:5432/nexus\n\
         route_model: [a, b]\nfreeze_routing: true\nkafka_option: [sasl.password=pw]\n",
    )?;
    for file in [&toml, &yaml] {
        let file = file.display().to_string();
        let (ok, shown, stderr) = config_show(
            &["--config", &file, "--default-max-batch-size", "9"],
            &[("NEXUS_MAX_QUEUE_SIZE", "7"), ("NEXUS_HTTP_PORT", "9100")],
        )?;
        ensure!(ok, "config show failed: {stderr}");
        for (key, want) in [
            ("default_max_batch_size", "\"9\""),
            ("max_queue_size", "\"7\""),
            ("http_port", "\"9100\""),
            ("model_control_mode", "\"explicit\""),
            ("grpc_port", "\"8001\""),
            ("route_model", "[\"a\", \"b\"]"),
            ("freeze_routing", "\"true\""),
            ("kafka_option", "[\"sasl.password=****\"]"),
        ] {
            let got = line(&shown, key);
            ensure!(
                got == format!("{key} = {want}"),
                "{file}: {key}: got {got:?}, want {want}\n{shown}"
            );
        }
        ensure!(
            !shown.contains("hunter2") && line(&shown, "database_url").contains("***"),
            "the database password is shown:\n{shown}"
        );
    }
    // What `config show` prints is a config file `--config` accepts, and reads the same.
    let (_, shown, _) = config_show(&["--config", &toml.display().to_string()], &[])?;
    let round_trip = dir.path().join("shown.toml");
    std::fs::write(
        &round_trip,
        shown.replace("postgres://nexus:***@", "postgres://nexus:x@"),
    )?;
    let (ok, again, stderr) = config_show(&["--config", &round_trip.display().to_string()], &[])?;
    ensure!(ok, "the shown config does not load: {stderr}");
    ensure!(
        line(&again, "max_queue_size") == "max_queue_size = \"5\"",
        "{again}"
    );
    Ok(())
}

#[test]
fn unknown_or_invalid_config_keys_are_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nexus.toml");
    std::fs::write(&file, "http_port = 8000\nhttp_prot = 9000\n")?;
    let (ok, _, stderr) = config_show(&["--config", &file.display().to_string()], &[])?;
    ensure!(
        !ok && stderr.contains("`http_prot`") && stderr.contains("nexus.toml"),
        "{stderr}"
    );
    std::fs::write(&file, "http_port = \"eighty\"\n")?;
    let (ok, _, stderr) = config_show(&["--config", &file.display().to_string()], &[])?;
    ensure!(!ok && stderr.contains("--http-port"), "{stderr}");
    let (ok, _, stderr) = config_show(&["--config", "/nonexistent/nexus.toml"], &[])?;
    ensure!(!ok && stderr.contains("not found"), "{stderr}");
    Ok(())
}

/// `nexus serve` runs with what the file (named by NEXUS_CONFIG) says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_options_from_the_config_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nexus.yaml");
    std::fs::write(&file, "max_request_bytes: 300\n")?;
    let config = file.display().to_string();
    let server = Server::spawn(Repository::examples()?, &[], &[("NEXUS_CONFIG", &config)])?;
    poll_until(Duration::from_secs(60), "nexus ready", || async {
        let ready = server.get("/v2/health/ready").await.map(|(s, _)| s == 200);
        Ok(ready.unwrap_or(false).then_some(()))
    })
    .await?;
    let (status, body) = server
        .post("/v2/models/simple/infer", &common::simple_request(4))
        .await?;
    ensure!(
        status == 400 && body.to_string().contains("300"),
        "a body over the file's 300-byte limit answered {status}: {body}"
    );
    let (status, _) = server
        .post("/v2/models/simple/infer", &json!({"inputs": []}))
        .await?;
    ensure!(status == 400, "{status}");
    Ok(())
}

/// `nexus up` lists its components with status, version and address, and is live and ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_list_every_component() -> Result<()> {
    let dirs = UpDirs::new()?;
    let args = dirs.args();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_up(Repository::examples()?, &argv).await?;
    let (status, body) = server.get("/api/v1/services").await?;
    ensure!(status == 200, "{status}: {body}");
    let services = body["services"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    ensure!(
        names == ["serving", "registry", "pipelines", "events", "optimizer"],
        "components: {names:?}"
    );
    for service in &services {
        ensure!(
            service["status"] == "up"
                && service["version"] == env!("CARGO_PKG_VERSION")
                && service["address"].as_str().is_some_and(|a| !a.is_empty()),
            "{service}"
        );
    }
    let serving = services[0]["address"].as_str().unwrap_or_default();
    ensure!(serving.contains(&server.http_port.to_string()), "{serving}");
    for path in ["/health/live", "/health/ready"] {
        let (status, body) = server.get(path).await?;
        ensure!(status == 200, "{path}: {status} {body}");
    }
    Ok(())
}

/// Every response carries a request id: the client's `x-request-id`, or a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() -> Result<()> {
    let dirs = UpDirs::new()?;
    let args = dirs.args();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_up(Repository::examples()?, &argv).await?;
    let client = reqwest::Client::new();
    let mut issued = Vec::new();
    for path in [
        "/v2",
        "/api/2.0/mlflow/registered-models/search",
        "/api/v1/pipelines/runs",
    ] {
        let response = client.get(server.url(path)).send().await?;
        let id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        ensure!(
            id.as_deref().is_some_and(|i| !i.is_empty()),
            "{path}: no x-request-id"
        );
        issued.extend(id);
        let response = client
            .get(server.url(path))
            .header("x-request-id", "client-42")
            .send()
            .await?;
        ensure!(
            response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                == Some("client-42"),
            "{path}: the client's request id is not echoed"
        );
    }
    issued.sort();
    issued.dedup();
    ensure!(issued.len() == 3, "request ids repeat: {issued:?}");
    // The registry's request latency is measured per route pattern.
    let scraped = reqwest::get(server.metrics_url()).await?.text().await?;
    ensure!(
        scraped.contains(
            "nexus_registry_request_duration_seconds_count{method=\"GET\",route=\"/api/2.0/mlflow/registered-models/search\",status=\"200\"}"
        ),
        "no registry latency series"
    );
    Ok(())
}
