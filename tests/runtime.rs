//! Each runtime is optional: without a usable ONNX Runtime library `nexus serve` still
//! starts and answers, and its ONNX models are UNAVAILABLE with a reason that says how to
//! fix it, rather than the process panicking or exiting.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use common::{Repository, Server, poll_until};

/// `model`'s entry in the repository index (state and reason).
async fn index_entry(server: &Server, model: &str) -> Result<Value> {
    let (status, index) = server.post("/v2/repository/index", &json!({})).await?;
    ensure!(status == 200, "index: {status} {index}");
    index
        .as_array()
        .and_then(|models| models.iter().find(|m| m["name"] == model))
        .cloned()
        .with_context(|| format!("{model} is not in the index: {index}"))
}

async fn serve_with_ort_library(path: &str) -> Result<()> {
    let mut server = Server::spawn(Repository::examples()?, &[], &[("ORT_DYLIB_PATH", path)])?;
    server.wait_ready().await.with_context(|| server.stderr())?;
    let (status, live) = server.get("/v2/health/live").await?;
    ensure!(
        status == 200 && live["live"] == true,
        "live: {status} {live}"
    );

    let (status, _) = server.get("/v2/models/simple/ready").await?;
    ensure!(
        status == 503,
        "simple without ONNX Runtime is ready? {status}"
    );
    let simple = index_entry(&server, "simple").await?;
    let reason = simple["reason"].as_str().unwrap_or_default();
    ensure!(simple["state"] == "UNAVAILABLE", "{simple}");
    ensure!(
        reason.contains("ORT_DYLIB_PATH")
            && reason.contains("scripts/install-onnxruntime.sh")
            && reason.contains(path),
        "the reason does not say what is missing and how to fix it: {simple}"
    );
    let (status, body) = server
        .post("/v2/models/simple/infer", &common::simple_request(1))
        .await?;
    ensure!(
        status == 503,
        "inference without the runtime: {status} {body}"
    );
    // Still answering after all that, without a panic.
    let answering = || async {
        let (status, _) = server.get("/v2/health/live").await?;
        Ok((status == 200).then_some(()))
    };
    poll_until(Duration::from_secs(5), "still live", answering).await?;
    let stderr = server.stderr();
    ensure!(!stderr.contains("panicked"), "nexus panicked:\n{stderr}");
    Ok(())
}

#[tokio::test]
async fn missing_onnx_runtime_library_leaves_onnx_models_unavailable_with_the_fix() -> Result<()> {
    serve_with_ort_library("/nonexistent/libonnxruntime.so").await
}

#[tokio::test]
async fn file_that_is_not_a_library_leaves_onnx_models_unavailable_with_the_fix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, "this is a text file, not a shared library\n")?;
    serve_with_ort_library(fake.to_str().expect("temporary paths are UTF-8")).await
}

/// Without the PyTorch plugin, a PyTorch model is UNAVAILABLE with the install script in its
/// reason and the ONNX models beside it serve; and a server with no PyTorch model never
/// opens the plugin at all (ONNX-only users do not pay for libtorch).
#[tokio::test]
async fn pytorch_models_without_the_plugin_are_unavailable_and_onnx_serves() -> Result<()> {
    let repository = Repository::examples()?;
    let torch = repository.path().join("scripted/1");
    std::fs::create_dir_all(&torch)?;
    std::fs::write(
        torch.join("model.pt"),
        b"a TorchScript archive would be here",
    )?;
    std::fs::write(
        repository.path().join("scripted/config.pbtxt"),
        "platform: \"pytorch_libtorch\"\ninput [ { name: \"INPUT__0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput [ { name: \"OUTPUT__0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n",
    )?;
    let missing = "/nonexistent/libnexus_torch.so";
    let mut server = Server::spawn(repository, &[], &[("NEXUS_TORCH_PLUGIN", missing)])?;
    server.wait_ready().await.with_context(|| server.stderr())?;
    let scripted = index_entry(&server, "scripted").await?;
    let reason = scripted["reason"].as_str().unwrap_or_default();
    ensure!(
        scripted["state"] == "UNAVAILABLE"
            && reason.contains(missing)
            && reason.contains("scripts/install-torch-backend.sh"),
        "{scripted}"
    );
    let (status, body) = server
        .post("/v2/models/simple/infer", &common::simple_request(1))
        .await?;
    ensure!(status == 200, "simple beside it: {status} {body}");

    let onnx_only = Server::spawn(
        Repository::examples()?,
        &[],
        &[("NEXUS_TORCH_PLUGIN", missing)],
    );
    let mut onnx_only = onnx_only?;
    onnx_only
        .wait_ready()
        .await
        .with_context(|| onnx_only.stderr())?;
    let stderr = onnx_only.stderr();
    ensure!(
        !stderr.contains("PyTorch backend") && !stderr.contains("libnexus_torch"),
        "an ONNX-only server looked for the PyTorch plugin:\n{stderr}"
    );
    Ok(())
}
