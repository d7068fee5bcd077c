//! Prometheus metrics with Triton's names on the metrics port, counting what was served.

mod common;

use anyhow::{Context, Result};
use serde_json::json;

use common::{Repository, Server, simple_request};

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_successes_failures_and_time() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let successes = 3;
    for _ in 0..successes {
        let (status, body) = server
            .post("/v2/models/simple/infer", &simple_request(2))
            .await?;
        assert_eq!(status, 200, "{body}");
    }
    // Reaches the model and fails its shape check.
    let wrong_shape = json!({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
    ]});
    let (status, body) = server.post("/v2/models/simple/infer", &wrong_shape).await?;
    assert_eq!(status, 400, "{body}");

    let text = reqwest::get(server.metrics_url()).await?.text().await?;
    let simple = r#"model="simple",version="1""#;
    let value = |name: &str| {
        sample(&text, name, simple).with_context(|| format!("no {name}{{{simple}}} in\n{text}"))
    };
    assert!(value("nv_inference_request_success")? >= f64::from(successes));
    assert!(value("nv_inference_request_failure")? >= 1.0);
    assert!(value("nv_inference_count")? >= f64::from(2 * successes));
    assert!(value("nv_inference_exec_count")? >= 1.0);
    assert!(value("nv_inference_queue_duration_us")? >= 0.0);
    assert!(value("nv_inference_compute_infer_duration_us")? > 0.0);
    // Series exist for every loaded model, not only the ones used.
    assert!(
        sample(
            &text,
            "nv_inference_request_success",
            r#"model="mlp_classifier",version="2""#
        )
        .is_some(),
        "{text}"
    );
    Ok(())
}
