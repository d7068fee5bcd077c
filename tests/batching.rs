//! Dynamic batching through the running server: merged requests get exactly their own
//! rows back, only compatible requests share a batch, a stream's answers keep their order,
//! and a full queue or a queue timeout is refused with 503.

mod common;

use anyhow::Result;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use common::{Repository, Server};

/// An `affine` request of `rows` × `width` whose values are unique to `seed`.
fn affine_request(seed: usize, rows: usize, width: usize) -> (Value, Vec<f32>) {
    let x: Vec<f32> = (0..rows * width)
        .map(|i| (seed * 1000 + i) as f32)
        .collect();
    let request = json!({
        "id": seed.to_string(),
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, width], "data": x}]
    });
    (request, x)
}

/// Sends all `requests` at once; returns (status, body) in the order given.
async fn concurrently(server: &Server, path: &str, requests: Vec<Value>) -> Vec<(u16, Value)> {
    let url = server.url(path);
    let client = reqwest::Client::new();
    let mut tasks = JoinSet::new();
    for (i, body) in requests.into_iter().enumerate() {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let response = client
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("request sent");
            let status = response.status().as_u16();
            (
                i,
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        });
    }
    let mut answers: Vec<(usize, u16, Value)> = tasks.join_all().await;
    answers.sort_by_key(|(i, _, _)| *i);
    answers.into_iter().map(|(_, s, b)| (s, b)).collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|v| v as f32)
                .collect()
        })
        .unwrap_or_default()
}

async fn executions(server: &Server, model: &str) -> Result<(u64, u64, Vec<u64>)> {
    let (_, stats) = server.get(&format!("/v2/models/{model}/stats")).await?;
    let s = &stats["model_stats"][0];
    let batch_sizes = s["batch_stats"]
        .as_array()
        .map(|b| b.iter().filter_map(|x| x["batch_size"].as_u64()).collect())
        .unwrap_or_default();
    Ok((
        s["execution_count"].as_u64().unwrap_or(0),
        s["inference_count"].as_u64().unwrap_or(0),
        batch_sizes,
    ))
}

#[tokio::test]
async fn concurrent_requests_are_merged_and_each_gets_its_own_rows() -> Result<()> {
    let server = Server::start(Repository::batching()?, &[]).await?;
    let shapes = [1, 2, 1, 3, 1];
    let (requests, inputs): (Vec<Value>, Vec<Vec<f32>>) = shapes
        .iter()
        .enumerate()
        .map(|(seed, rows)| affine_request(seed, *rows, 4))
        .unzip();
    let answers = concurrently(&server, "/v2/models/affine/infer", requests).await;
    for ((seed, (status, body)), (x, rows)) in
        answers.iter().enumerate().zip(inputs.iter().zip(shapes))
    {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["id"], seed.to_string());
        let y = &body["outputs"][0];
        assert_eq!(y["shape"], json!([rows, 4]), "{body}");
        let expected: Vec<f32> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        assert_eq!(
            floats(&y["data"]),
            expected,
            "request {seed} got another request's rows"
        );
    }
    let (executions, inferences, batch_sizes) = executions(&server, "affine").await?;
    assert_eq!(inferences, 8, "every row counted once");
    assert!(
        executions < 5,
        "5 concurrent requests ran in {executions} executions: not batched"
    );
    assert!(
        batch_sizes.iter().any(|b| *b > 1),
        "batch sizes {batch_sizes:?}"
    );
    Ok(())
}

#[tokio::test]
async fn different_shapes_are_not_merged_but_all_are_answered() -> Result<()> {
    let server = Server::start(Repository::batching()?, &[]).await?;
    let (requests, inputs): (Vec<Value>, Vec<(Vec<f32>, usize)>) = (0..6)
        .map(|seed| {
            let width = if seed % 2 == 0 { 3 } else { 5 };
            let (request, x) = affine_request(seed, 1, width);
            (request, (x, width))
        })
        .unzip();
    let answers = concurrently(&server, "/v2/models/affine/infer", requests).await;
    for ((status, body), (x, width)) in answers.iter().zip(&inputs) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["outputs"][0]["shape"], json!([1, width]));
        let expected: Vec<f32> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        assert_eq!(floats(&body["outputs"][0]["data"]), expected);
    }
    let (executions, _, _) = executions(&server, "affine").await?;
    assert!(executions >= 2, "widths 3 and 5 cannot share one execution");
    Ok(())
}

#[tokio::test]
async fn a_stream_gets_its_answers_in_order() -> Result<()> {
    use nexus_serving::pb;
    use nexus_serving::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

    let server = Server::start(Repository::batching()?, &[]).await?;
    let mut client = GrpcInferenceServiceClient::connect(server.grpc_url()).await?;
    let requests: Vec<pb::ModelInferRequest> = (0..10)
        .map(|i| pb::ModelInferRequest {
            model_name: "affine".into(),
            id: i.to_string(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                contents: Some(pb::InferTensorContents {
                    fp32_contents: vec![i as f32, -(i as f32)],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let mut answers = client
        .model_stream_infer(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut order = Vec::new();
    while let Some(answer) = answers.message().await? {
        assert!(answer.error_message.is_empty(), "{}", answer.error_message);
        let response = answer.infer_response.expect("a response");
        let raw = &response.raw_output_contents[0];
        let y: Vec<f32> = raw
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let i: f32 = response.id.parse()?;
        assert_eq!(y, vec![2.0 * i + 1.0, -2.0 * i + 1.0]);
        order.push(response.id);
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(order, expected);
    Ok(())
}

fn slow_request() -> Value {
    json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": vec![0.5f32; 1024]}]})
}

/// Splits answers into successes and 503 refusals, failing on anything else.
fn outcomes(answers: &[(u16, Value)]) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut refused = Vec::new();
    for (status, body) in answers {
        match status {
            200 => {
                assert_eq!(body["outputs"][0]["shape"], json!([1, 1024]), "{body}");
                ok += 1;
            }
            503 => refused.push(body["error"].as_str().unwrap_or_default().to_string()),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    (ok, refused)
}

#[tokio::test]
async fn a_full_queue_refuses_with_503_and_serving_continues() -> Result<()> {
    let server = Server::start(Repository::batching()?, &[]).await?;
    let answers = concurrently(
        &server,
        "/v2/models/slow_full/infer",
        vec![slow_request(); 16],
    )
    .await;
    let (ok, refused) = outcomes(&answers);
    assert!(ok >= 1, "nothing was served");
    assert!(
        !refused.is_empty(),
        "16 requests at once fit a queue of 2 behind one slow instance"
    );
    for message in &refused {
        assert!(message.contains("queue is full"), "{message}");
    }
    let (status, body) = server
        .post("/v2/models/slow_full/infer", &slow_request())
        .await?;
    assert_eq!(status, 200, "after the burst: {body}");
    Ok(())
}

#[tokio::test]
async fn requests_past_the_queue_timeout_are_refused_with_503() -> Result<()> {
    let server = Server::start(Repository::batching()?, &[]).await?;
    let answers = concurrently(
        &server,
        "/v2/models/slow_timeout/infer",
        vec![slow_request(); 6],
    )
    .await;
    let (ok, refused) = outcomes(&answers);
    assert!(ok >= 1, "nothing was served");
    assert!(
        !refused.is_empty(),
        "requests waited ~20 ms behind each other with a 2 ms timeout"
    );
    for message in &refused {
        assert!(message.contains("timed out"), "{message}");
    }
    Ok(())
}
