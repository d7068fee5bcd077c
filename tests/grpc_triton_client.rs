//! The gRPC endpoint driven by the `triton-client` crate's stub (generated from Triton's
//! own grpc_service.proto), over tonic 0.7's transport.

mod common;

use std::collections::HashMap;

use anyhow::{Context, Result};
use tonic07::Code;
use tonic07::transport::Channel;
use triton_client::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use triton_client::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use triton_client::inference::{
    InferTensorContents, ModelConfigRequest, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelReadyRequest, ModelStatisticsRequest, RepositoryIndexRequest,
    ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};

use common::{Repository, Server, simple_input0, simple_input1};

type Client = GrpcInferenceServiceClient<Channel>;

async fn connect(server: &Server) -> Result<Client> {
    let channel = Channel::from_shared(server.grpc_url())?.connect().await?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

fn int32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn int32_values(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents: None,
    }
}

fn output(name: &str) -> InferRequestedOutputTensor {
    InferRequestedOutputTensor {
        name: name.into(),
        parameters: HashMap::new(),
    }
}

/// A `simple` request of `batch` rows with both inputs in `raw_input_contents`.
fn simple_raw_request(batch: usize) -> ModelInferRequest {
    let shape = [batch as i64, 16];
    ModelInferRequest {
        model_name: "simple".into(),
        model_version: String::new(),
        id: "raw".into(),
        parameters: HashMap::new(),
        inputs: vec![
            input("INPUT0", "INT32", &shape),
            input("INPUT1", "INT32", &shape),
        ],
        outputs: vec![],
        raw_input_contents: vec![
            int32_bytes(&simple_input0(batch)),
            int32_bytes(&simple_input1(batch)),
        ],
    }
}

/// The raw INT32 values of output `name`.
fn raw_output(response: &ModelInferResponse, name: &str) -> Result<Vec<i32>> {
    let index = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .with_context(|| format!("{name} missing from {response:?}"))?;
    let raw = response
        .raw_output_contents
        .get(index)
        .with_context(|| format!("no raw_output_contents for {name}"))?;
    Ok(int32_values(raw))
}

fn sum_and_difference(batch: usize) -> (Vec<i32>, Vec<i32>) {
    let a = simple_input0(batch);
    let b = simple_input1(batch);
    (
        a.iter().zip(&b).map(|(x, y)| x + y).collect(),
        a.iter().zip(&b).map(|(x, y)| x - y).collect(),
    )
}

#[tokio::test]
async fn health_metadata_and_config() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let mut client = connect(&server).await?;

    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await?
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(ServerReadyRequest {})
            .await?
            .into_inner()
            .ready
    );
    let metadata = client
        .server_metadata(ServerMetadataRequest {})
        .await?
        .into_inner();
    assert_eq!(metadata.name, "nexus");
    assert!(!metadata.version.is_empty());
    for extension in ["binary_tensor_data", "model_repository", "statistics"] {
        assert!(
            metadata.extensions.iter().any(|e| e == extension),
            "{extension} not in {:?}",
            metadata.extensions
        );
    }

    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        client
            .model_ready(ready("simple", ""))
            .await?
            .into_inner()
            .ready
    );
    assert!(
        client
            .model_ready(ready("simple", "1"))
            .await?
            .into_inner()
            .ready
    );
    assert!(
        !client
            .model_ready(ready("simple", "2"))
            .await?
            .into_inner()
            .ready
    );
    assert!(
        !client
            .model_ready(ready("no_such_model", ""))
            .await?
            .into_inner()
            .ready
    );

    let model = client
        .model_metadata(ModelMetadataRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(model.name, "simple");
    assert_eq!(model.versions, vec!["1"]);
    assert_eq!(model.platform, "onnxruntime_onnx");
    let names = |t: &[triton_client::inference::model_metadata_response::TensorMetadata]| {
        t.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&model.inputs), ["INPUT0", "INPUT1"]);
    assert_eq!(names(&model.outputs), ["OUTPUT0", "OUTPUT1"]);
    for tensor in model.inputs.iter().chain(&model.outputs) {
        assert_eq!(tensor.datatype, "INT32");
        assert_eq!(tensor.shape, [-1, 16]);
    }

    let config = client
        .model_config(ModelConfigRequest {
            name: "simple".into(),
            version: "1".into(),
        })
        .await?
        .into_inner()
        .config
        .context("no config")?;
    assert_eq!(config.name, "simple");
    assert_eq!(config.platform, "onnxruntime_onnx");
    assert_eq!(config.max_batch_size, 8);
    assert_eq!(config.input.len(), 2);
    assert_eq!(config.input[0].dims, [16]);
    assert_eq!(config.output[1].name, "OUTPUT1");
    Ok(())
}

#[tokio::test]
async fn infer_with_raw_and_typed_contents() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let mut client = connect(&server).await?;

    for batch in [1, 3] {
        let response = client
            .model_infer(simple_raw_request(batch))
            .await?
            .into_inner();
        assert_eq!(response.model_name, "simple");
        assert_eq!(response.model_version, "1");
        assert_eq!(response.id, "raw");
        let (sum, difference) = sum_and_difference(batch);
        assert_eq!(raw_output(&response, "OUTPUT0")?, sum);
        assert_eq!(raw_output(&response, "OUTPUT1")?, difference);
        for o in &response.outputs {
            assert_eq!(o.datatype, "INT32");
            assert_eq!(o.shape, [batch as i64, 16]);
        }
    }

    // Typed contents, version named, one output asked for.
    let typed = |name: &str, values: Vec<i32>| InferInputTensor {
        contents: Some(InferTensorContents {
            int_contents: values,
            ..Default::default()
        }),
        ..input(name, "INT32", &[1, 16])
    };
    let request = ModelInferRequest {
        model_name: "simple".into(),
        model_version: "1".into(),
        inputs: vec![
            typed("INPUT0", simple_input0(1)),
            typed("INPUT1", simple_input1(1)),
        ],
        outputs: vec![output("OUTPUT1")],
        ..Default::default()
    };
    let response = client.model_infer(request).await?.into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(raw_output(&response, "OUTPUT1")?, sum_and_difference(1).1);
    Ok(())
}

#[tokio::test]
async fn repository_index_and_statistics() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let mut client = connect(&server).await?;

    let index = client
        .repository_index(RepositoryIndexRequest {
            repository_name: String::new(),
            ready: false,
        })
        .await?
        .into_inner();
    let mut listed: Vec<(String, String, String)> = index
        .models
        .iter()
        .map(|m| (m.name.clone(), m.version.clone(), m.state.clone()))
        .collect();
    listed.sort();
    let expected: Vec<(String, String, String)> = [
        ("dynamic_add", "1"),
        ("fp16_scale", "1"),
        ("identity_bytes", "1"),
        ("mlp_classifier", "2"),
        ("simple", "1"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string(), "READY".to_string()))
    .collect();
    assert_eq!(listed, expected);

    let requests = 3;
    for _ in 0..requests {
        client.model_infer(simple_raw_request(2)).await?;
    }
    let stats = client
        .model_statistics(ModelStatisticsRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(stats.model_stats.len(), 1, "{stats:?}");
    let simple = &stats.model_stats[0];
    assert_eq!(simple.name, "simple");
    assert_eq!(simple.version, "1");
    assert_eq!(simple.inference_count, 2 * requests, "{simple:?}");
    assert!(
        (1..=requests).contains(&simple.execution_count),
        "{simple:?}"
    );
    assert!(simple.last_inference > 0);
    let inference = simple
        .inference_stats
        .as_ref()
        .context("no inference_stats")?;
    let success = inference.success.as_ref().context("no success")?;
    assert_eq!(success.count, requests);
    assert!(success.ns > 0);
    let compute = inference
        .compute_infer
        .as_ref()
        .context("no compute_infer")?;
    assert!(compute.count >= 1 && compute.ns > 0, "{inference:?}");

    let everything = client
        .model_statistics(ModelStatisticsRequest::default())
        .await?
        .into_inner();
    assert_eq!(everything.model_stats.len(), 5, "{everything:?}");
    Ok(())
}

#[tokio::test]
async fn errors_carry_grpc_codes_and_reasons() -> Result<()> {
    let repository = Repository::examples()?;
    repository.add_corrupt_model("broken")?;
    let server = Server::start(repository, &[]).await?;
    let mut client = connect(&server).await?;

    let good = simple_raw_request(1);
    let mut unknown_model = good.clone();
    unknown_model.model_name = "no_such_model".into();
    let mut unknown_version = good.clone();
    unknown_version.model_version = "7".into();
    let mut wrong_dtype = good.clone();
    wrong_dtype.inputs[1].datatype = "FP32".into();
    let mut wrong_shape = good.clone();
    wrong_shape.inputs[0].shape = vec![2, 8];
    let mut missing_input = good.clone();
    missing_input.inputs.truncate(1);
    missing_input.raw_input_contents.truncate(1);
    let mut unknown_output = good.clone();
    unknown_output.outputs = vec![output("OUTPUT0"), output("OUTPUT9")];
    let mut raw_count = good.clone();
    raw_count.raw_input_contents.truncate(1);
    let mut raw_size = good.clone();
    raw_size.raw_input_contents[0].truncate(60);
    let mut big_batch = simple_raw_request(9);
    big_batch.id = String::new();
    let mut not_ready = good.clone();
    not_ready.model_name = "broken".into();
    let mut long_id = good.clone();
    long_id.id = "i".repeat(257);

    let cases: Vec<(&str, ModelInferRequest, Code, &[&str])> = vec![
        (
            "unknown model",
            unknown_model,
            Code::NotFound,
            &["no_such_model"],
        ),
        (
            "unknown version",
            unknown_version,
            Code::NotFound,
            &["version", "7"],
        ),
        (
            "wrong datatype",
            wrong_dtype,
            Code::InvalidArgument,
            &["INPUT1", "datatype", "FP32"],
        ),
        (
            "wrong shape",
            wrong_shape,
            Code::InvalidArgument,
            &["INPUT0", "shape"],
        ),
        (
            "missing input",
            missing_input,
            Code::InvalidArgument,
            &["missing", "INPUT1"],
        ),
        (
            "unknown output",
            unknown_output,
            Code::InvalidArgument,
            &["OUTPUT9"],
        ),
        (
            "raw_input_contents count",
            raw_count,
            Code::InvalidArgument,
            &["raw_input_contents", "1", "2"],
        ),
        (
            "raw_input_contents size",
            raw_size,
            Code::InvalidArgument,
            &["INPUT0", "elements"],
        ),
        (
            "batch above max_batch_size",
            big_batch,
            Code::InvalidArgument,
            &["batch size 9"],
        ),
        (
            "model that failed to load",
            not_ready,
            Code::Unavailable,
            &["broken"],
        ),
        (
            "request id over 256 bytes",
            long_id,
            Code::InvalidArgument,
            &["request id", "257", "256"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, request, code, mentions) in cases {
        let status = match client.model_infer(request).await {
            Ok(response) => {
                failures.push(format!("{what}: succeeded: {:?}", response.into_inner()));
                continue;
            }
            Err(status) => status,
        };
        if status.code() != code {
            failures.push(format!("{what}: {status:?}, expected {code:?}"));
        }
        let message = status.message().to_lowercase();
        for word in mentions {
            if !message.contains(&word.to_lowercase()) {
                failures.push(format!(
                    "{what}: {:?} does not mention {word:?}",
                    status.message()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let status = client
        .model_metadata(ModelMetadataRequest {
            name: "no_such_model".into(),
            version: String::new(),
        })
        .await
        .expect_err("metadata of an unknown model");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = client
        .model_config(ModelConfigRequest {
            name: "broken".into(),
            version: String::new(),
        })
        .await
        .expect_err("config of a model that failed to load");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // The server still serves.
    let response = client.model_infer(good).await?.into_inner();
    assert_eq!(raw_output(&response, "OUTPUT0")?, sum_and_difference(1).0);
    Ok(())
}

#[tokio::test]
async fn messages_beyond_max_inflight_bytes_are_unavailable_and_serving_continues() -> Result<()> {
    let server =
        Server::start(Repository::examples()?, &["--max-inflight-bytes", "100000"]).await?;
    let mut client = connect(&server).await?;
    // Under --max-request-bytes (64 MiB) but over what the server may hold at once.
    let mut big = simple_raw_request(1);
    big.parameters.insert(
        "padding".into(),
        triton_client::inference::InferParameter {
            parameter_choice: Some(
                triton_client::inference::infer_parameter::ParameterChoice::StringParam(
                    "p".repeat(200_000),
                ),
            ),
        },
    );
    let status = client
        .model_infer(big)
        .await
        .err()
        .context("a message over --max-inflight-bytes was served")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("--max-inflight-bytes"),
        "{status:?}"
    );
    let response = client
        .model_infer(simple_raw_request(1))
        .await?
        .into_inner();
    let (sum, _) = sum_and_difference(1);
    assert_eq!(raw_output(&response, "OUTPUT0")?, sum);
    Ok(())
}

/// The server's HTTP/2 SETTINGS as sent on a new connection: (identifier, value) pairs.
async fn http2_settings(address: &str) -> Result<Vec<(u16, u32)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    // The client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await?;
    anyhow::ensure!(
        header[3] == 4,
        "first frame is type {}, not SETTINGS",
        header[3]
    );
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await?;
    Ok(payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect())
}

#[tokio::test]
async fn grpc_limits_concurrent_streams_per_connection() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let address = server.grpc_url().trim_start_matches("http://").to_string();
    let settings = http2_settings(&address).await?;
    // SETTINGS_MAX_CONCURRENT_STREAMS is 0x3; absent means unlimited.
    let max_streams = settings.iter().find(|(id, _)| *id == 0x3).map(|(_, v)| *v);
    assert_eq!(max_streams, Some(200), "settings {settings:?}");
    Ok(())
}
