//! `nexus bench run --gpu` against a real `nexus serve`: the run completes whether or not
//! there is a GPU to read. Without one (no driver here, so the server exports no `nv_gpu_*`
//! metrics) the saved run and its report say why nothing was sampled; on a machine with a
//! usable GPU the server's metrics are read and every level has samples.

mod common;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use common::{Repository, Server, metric_sum, nexus};

/// Every protocol's client against a real server, its workers spread over two client threads:
/// each level sends what it says it sent (the server counts the same requests), without errors.
#[tokio::test]
async fn bench_drives_every_protocol_from_several_client_threads() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let output = tempfile::tempdir()?;
    let grpc = server.grpc_url();
    let grpc_addr = grpc.trim_start_matches("http://");
    let http = server.url("");
    let mut sent = 0;
    for protocol in ["http-json", "http-binary", "grpc"] {
        nexus(&[
            "bench",
            "run",
            "--model",
            "simple",
            "--protocol",
            protocol,
            "--http-url",
            &http,
            "--grpc-addr",
            grpc_addr,
            "--concurrency",
            "1,3",
            "--client-threads",
            "2",
            "--warmup-secs",
            "0",
            "--requests",
            "40",
            "--output",
            output.path().to_str().context("a UTF-8 temporary path")?,
        ])
        .await?;
        let run: Value = serde_json::from_slice(&std::fs::read(
            output
                .path()
                .join(format!("{}.json", protocol.replace('-', ""))),
        )?)?;
        ensure!(
            run["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("(2 client threads)")),
            "{run}"
        );
        for level in run["levels"].as_array().context("levels")? {
            let requests = level["requests"].as_u64().context("requests")?;
            ensure!(
                requests >= 40 && level["errors"] == 0,
                "{protocol}: {level}"
            );
            sent += requests;
        }
        // One more request per run: the check that the target answers before measuring.
        sent += 1;
        let counted = metric_sum(&server.metrics_url(), "nv_inference_request_success").await?;
        ensure!(
            counted == sent as f64,
            "{protocol}: the server counted {counted} requests, the runs {sent}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn bench_gpu_completes_and_says_why_no_gpu_was_sampled() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let output = tempfile::tempdir()?;
    let stdout = nexus(&[
        "bench",
        "run",
        "--model",
        "simple",
        "--protocol",
        "http-binary",
        "--http-url",
        &server.url(""),
        "--concurrency",
        "1,2",
        "--warmup-secs",
        "0",
        "--duration-secs",
        "0.6",
        "--gpu",
        "--metrics-url",
        &server.metrics_url(),
        "--label",
        "gpu",
        "--output",
        output.path().to_str().context("a UTF-8 temporary path")?,
    ])
    .await?;
    let run: Value = serde_json::from_slice(&std::fs::read(output.path().join("gpu.json"))?)?;
    let levels = run["levels"].as_array().context("levels")?;
    ensure!(levels.len() == 2, "{run}");
    ensure!(
        levels.iter().all(|l| l["requests"].as_u64() > Some(0)),
        "{run}"
    );
    let report = std::fs::read_to_string(output.path().join("report.md"))?;

    if run["gpu"]["source"].is_string() {
        // A GPU machine: the server's page (or NVML) was read during every level.
        for level in levels {
            let summary = level["gpu"]["summary"].as_array().context("summary")?;
            ensure!(!summary.is_empty(), "a level without GPU readings: {level}");
        }
        ensure!(report.contains("| mean util % |"), "{report}");
        ensure!(output.path().join("gpu_utilization.svg").is_file());
        return Ok(());
    }
    let why = run["gpu"]["unavailable"].as_str().context("no reason")?;
    ensure!(
        why.contains(&format!(
            "the server exports no nv_gpu_* metrics at {}",
            server.metrics_url()
        )),
        "{why}"
    );
    ensure!(why.contains("no NVIDIA driver found"), "{why}");
    ensure!(
        levels.iter().all(|l| l.get("gpu").is_none()),
        "samples without a source: {run}"
    );
    ensure!(
        stdout.contains("GPU: no GPU was sampled: "),
        "stdout:\n{stdout}"
    );
    ensure!(
        report.contains(&format!("- gpu: no GPU was sampled: {why}.")),
        "{report}"
    );
    ensure!(!output.path().join("gpu_utilization.svg").exists());
    Ok(())
}
