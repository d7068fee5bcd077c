//! GPUs as a machine without one sees them: `nexus gpu` answers with the reason and exits
//! 0, and models are placed by their instance groups: `KIND_GPU` is UNAVAILABLE with the
//! reason, `KIND_AUTO` falls back to the CPU (and the config shows it), the rest serve.
//! On a machine with a usable GPU the no-GPU assertions do not apply and are skipped by name.

mod common;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use common::{Repository, Server, check_simple_response, nexus, simple_request};

/// Whether this machine has a GPU this process may use: then the no-GPU paths cannot show,
/// and the test says it is skipped.
fn skipped_for_a_gpu() -> bool {
    let here = nexus_gpu::Gpus::discover(None)
        .and_then(|g| g.visible())
        .is_ok_and(|v| !v.is_empty());
    if here {
        eprintln!("skipped: this machine has a usable GPU");
    }
    here
}

#[tokio::test]
async fn nexus_gpu_says_why_there_is_no_gpu_and_what_each_runtime_needs() -> Result<()> {
    if skipped_for_a_gpu() {
        return Ok(());
    }
    let text = nexus(&["gpu"]).await?;
    ensure!(
        text.contains("GPUs: none. no NVIDIA driver found"),
        "{text}"
    );
    ensure!(text.contains("CUDA: no CUDA driver"), "{text}");
    for runtime in ["onnxruntime", "pytorch", "candle"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(runtime))
            .with_context(|| format!("no line for {runtime} in:\n{text}"))?;
        ensure!(
            line.contains(" no: "),
            "{runtime} usable without a GPU? {line}"
        );
    }
    ensure!(text.contains("nvcc"), "candle's reason names nvcc:\n{text}");

    let json: Value = serde_json::from_str(&nexus(&["gpu", "--json"]).await?)?;
    ensure!(json["devices"] == serde_json::json!([]), "{json}");
    ensure!(json["cuda"] == "Absent", "{json}");
    let runtimes = json["runtimes"].as_array().context("runtimes")?;
    ensure!(runtimes.len() == 3, "{json}");
    ensure!(runtimes.iter().all(|r| r["usable"] == false), "{json}");
    Ok(())
}

/// `simple`'s config with its instance group replaced by `group`.
fn with_group(repository: &Repository, name: &str, group: &str) -> Result<()> {
    repository.copy_model("simple", name)?;
    let config = repository.path().join(name).join("config.pbtxt");
    let text = std::fs::read_to_string(&config)?;
    let start = text
        .find("instance_group")
        .context("simple has an instance_group")?;
    std::fs::write(
        &config,
        format!("{}instance_group [ {group} ]\n", &text[..start]),
    )?;
    Ok(())
}

#[tokio::test]
async fn instance_groups_are_placed_where_they_can_run() -> Result<()> {
    if skipped_for_a_gpu() {
        return Ok(());
    }
    let repository = Repository::examples()?;
    with_group(
        &repository,
        "on_gpu",
        "{ kind: KIND_GPU count: 2 gpus: [ 0 ] }",
    )?;
    with_group(&repository, "on_auto", "{ kind: KIND_AUTO count: 2 }")?;
    with_group(
        &repository,
        "mixed",
        "{ name: \"host\" kind: KIND_CPU count: 1 }, { kind: KIND_GPU count: 1 }",
    )?;
    let server = Server::start(repository, &[]).await?;

    for model in ["on_gpu", "mixed"] {
        let row = server
            .index_row(model)
            .await?
            .with_context(|| format!("{model} is not in the index"))?;
        ensure!(row["state"] == "UNAVAILABLE", "{row}");
        let reason = row["reason"].as_str().unwrap_or_default();
        ensure!(
            reason.contains("asks for KIND_GPU but no GPU is usable here")
                && reason.contains("no NVIDIA driver found"),
            "{model}: {reason}"
        );
    }

    // KIND_AUTO runs on the CPU, and its config says so, as Triton shows a placed group.
    let (status, body) = server
        .post("/v2/models/on_auto/infer", &simple_request(2))
        .await?;
    ensure!(status == 200, "{status} {body}");
    check_simple_response(&body, 2)?;
    let (status, config) = server.get("/v2/models/on_auto/config").await?;
    ensure!(status == 200, "{config}");
    let group = &config["instance_group"][0];
    ensure!(
        group["kind"] == "KIND_CPU" && group["count"] == 2,
        "{config}"
    );

    // The models that asked for nothing special are untouched.
    let (status, body) = server
        .post("/v2/models/simple/infer", &simple_request(1))
        .await?;
    ensure!(status == 200, "{status} {body}");
    Ok(())
}

#[tokio::test]
async fn asking_for_gpus_that_cannot_exist_stops_start_up_with_the_reason() -> Result<()> {
    if skipped_for_a_gpu() {
        return Ok(());
    }
    let mut server = Server::spawn(Repository::empty()?, &["--gpus", "0"], &[])?;
    let status = server.wait_exit(std::time::Duration::from_secs(30)).await?;
    ensure!(
        !status.success(),
        "nexus serve --gpus 0 started without a GPU"
    );
    let stderr = server.stderr();
    ensure!(
        stderr.contains("--gpus") && stderr.contains("no NVIDIA driver found"),
        "{stderr}"
    );
    Ok(())
}
