//! Without a usable ONNX Runtime library `nexus serve` stops at once with a message that
//! says how to fix it, rather than panicking or serving nothing.

mod common;

use std::time::Duration;

use anyhow::Result;

use common::{Repository, Server};

/// "Quickly": the library is checked before anything else happens.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

async fn serve_with_ort_library(path: &str) -> Result<()> {
    let mut server = Server::spawn(Repository::examples()?, &[], &[("ORT_DYLIB_PATH", path)])?;
    let status = server.wait_exit(EXIT_TIMEOUT).await?;
    let stderr = server.stderr();
    assert!(!status.success(), "exited with {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("ORT_DYLIB_PATH") && stderr.contains("scripts/install-onnxruntime.sh"),
        "stderr does not say how to fix it:\n{stderr}"
    );
    assert!(
        stderr.contains(path),
        "stderr does not name {path}:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "nexus panicked:\n{stderr}");
    Ok(())
}

#[tokio::test]
async fn missing_onnx_runtime_library_stops_the_server_with_a_hint() -> Result<()> {
    serve_with_ort_library("/nonexistent/libonnxruntime.so").await
}

#[tokio::test]
async fn file_that_is_not_a_library_stops_the_server_with_a_hint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, "this is a text file, not a shared library\n")?;
    serve_with_ort_library(fake.to_str().expect("temporary paths are UTF-8")).await
}
