//! `nexus bench run --gpu` against a real `nexus serve`: the run completes whether or not
//! there is a GPU to read. Without one (no driver here, so the server exports no `nv_gpu_*`
//! metrics) the saved run and its report say why nothing was sampled; on a machine with a
//! usable GPU the server's metrics are read and every level has samples.

mod common;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use common::{Repository, Server, nexus};

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
