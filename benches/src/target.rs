//! What a benchmark drives: any KServe V2 server over HTTP (JSON or binary tensors) or
//! gRPC, or a model runtime in-process (ONNX Runtime, libtorch, candle) as the floor. Only standard V2 endpoints are used,
//! so the same load runs against Nexus, Triton, KServe or MLServer.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use nexus_models::backend::LoadOptions;
use nexus_models::{Backend, BackendFactory, Backends, DataType, Device, Tensor, TensorData};
use nexus_serving::pb;
use nexus_serving::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

/// How requests are sent.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// V2 REST with JSON tensors.
    HttpJson,
    /// V2 REST with Triton's binary tensor extension.
    HttpBinary,
    /// V2 gRPC with raw_input_contents.
    Grpc,
    /// The model's runtime in-process, no server: the floor. The runtime is the one that
    /// serves `--model-file` (an `.onnx` or `.pt` file, or a Hugging Face folder).
    #[value(name = "in-process", alias = "ort")]
    #[serde(rename = "in-process", alias = "ort")]
    InProcess,
}

/// One model input to send.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// Fetches input names, datatypes and shapes (`-1` where dynamic) from the server's
/// standard V2 model metadata.
pub async fn discover_inputs(
    protocol: Protocol,
    http_url: &str,
    grpc_addr: &str,
    model: &str,
) -> anyhow::Result<Vec<InputSpec>> {
    let metadata: Vec<(String, String, Vec<i64>)> = match protocol {
        Protocol::Grpc => {
            let mut client =
                GrpcInferenceServiceClient::connect(format!("http://{grpc_addr}")).await?;
            let response = client
                .model_metadata(pb::ModelMetadataRequest {
                    name: model.to_string(),
                    version: String::new(),
                })
                .await
                .context("gRPC ModelMetadata")?
                .into_inner();
            response
                .inputs
                .into_iter()
                .map(|t| (t.name, t.datatype, t.shape))
                .collect()
        }
        _ => {
            let url = format!("{http_url}/v2/models/{model}");
            let body: Value = reqwest::get(&url)
                .await
                .with_context(|| format!("GET {url}"))?
                .error_for_status()
                .with_context(|| format!("GET {url}"))?
                .json()
                .await?;
            let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
            inputs
                .iter()
                .map(|t| {
                    let shape = t["shape"]
                        .as_array()
                        .map(|s| s.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default();
                    let text = |key: &str| t[key].as_str().unwrap_or_default().to_string();
                    (text("name"), text("datatype"), shape)
                })
                .collect()
        }
    };
    if metadata.is_empty() {
        bail!(
            "model '{model}' lists no inputs in its metadata; give them with --input NAME:DATATYPE:DIMS"
        );
    }
    metadata
        .into_iter()
        .map(|(name, datatype, shape)| {
            let datatype = DataType::parse(&datatype)
                .with_context(|| format!("input '{name}': datatype '{datatype}'"))?;
            Ok(InputSpec {
                name,
                datatype,
                shape,
            })
        })
        .collect()
}

/// Makes every shape concrete: a full shape given in `shapes` wins; otherwise a dynamic
/// first dimension becomes `batch` and other dynamic dimensions 1.
pub fn fill_shapes(inputs: &mut [InputSpec], batch: i64, shapes: &[(String, Vec<i64>)]) {
    for spec in inputs {
        if let Some((_, shape)) = shapes.iter().find(|(n, _)| *n == spec.name) {
            spec.shape = shape.clone();
            continue;
        }
        for (i, d) in spec.shape.iter_mut().enumerate() {
            if *d < 0 {
                *d = if i == 0 { batch } else { 1 };
            }
        }
    }
}

/// Random tensors for `inputs` (uniform in [0, 1) for floats, small integers otherwise).
pub fn random_tensors(inputs: &[InputSpec]) -> anyhow::Result<Vec<Tensor>> {
    inputs
        .iter()
        .map(|spec| {
            let n =
                nexus_models::tensor::element_count(&spec.shape).context("negative dimension")?;
            let data = match spec.datatype {
                DataType::Bool => TensorData::Bool((0..n).map(|_| fastrand::bool()).collect()),
                DataType::U8 => TensorData::U8((0..n).map(|_| fastrand::u8(0..10)).collect()),
                DataType::U16 => TensorData::U16((0..n).map(|_| fastrand::u16(0..10)).collect()),
                DataType::U32 => TensorData::U32((0..n).map(|_| fastrand::u32(0..10)).collect()),
                DataType::U64 => TensorData::U64((0..n).map(|_| fastrand::u64(0..10)).collect()),
                DataType::I8 => TensorData::I8((0..n).map(|_| fastrand::i8(0..10)).collect()),
                DataType::I16 => TensorData::I16((0..n).map(|_| fastrand::i16(0..10)).collect()),
                DataType::I32 => TensorData::I32((0..n).map(|_| fastrand::i32(0..10)).collect()),
                DataType::I64 => TensorData::I64((0..n).map(|_| fastrand::i64(0..10)).collect()),
                DataType::F16 => TensorData::F16(
                    (0..n)
                        .map(|_| half::f16::from_f32(fastrand::f32()))
                        .collect(),
                ),
                DataType::F32 => TensorData::F32((0..n).map(|_| fastrand::f32()).collect()),
                DataType::F64 => TensorData::F64((0..n).map(|_| fastrand::f64()).collect()),
                DataType::Bytes => {
                    TensorData::Bytes((0..n).map(|i| Bytes::from(format!("item {i}"))).collect())
                }
            };
            Ok(Tensor::new(spec.name.clone(), spec.shape.clone(), data)?)
        })
        .collect()
}

/// Tensors from a JSON file `{"INPUT": [values...]}` (nested or flat arrays).
pub fn file_tensors(path: &Path, inputs: &[InputSpec]) -> anyhow::Result<Vec<Tensor>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let values: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    inputs
        .iter()
        .map(|spec| {
            let data = values.get(&spec.name).with_context(|| {
                format!("{} has no data for input '{}'", path.display(), spec.name)
            })?;
            let data = TensorData::from_json(&spec.name, spec.datatype, data)?;
            Ok(Tensor::new(spec.name.clone(), spec.shape.clone(), data)?)
        })
        .collect()
}

/// A prepared request, sent again and again.
pub enum Request {
    Http {
        client: reqwest::Client,
        url: String,
        body: Bytes,
        header_length: Option<usize>,
    },
    Grpc {
        clients: Vec<GrpcInferenceServiceClient<Channel>>,
        request: pb::ModelInferRequest,
    },
}

impl Request {
    /// Prepares the request for an HTTP or gRPC protocol, with one gRPC connection per worker.
    pub async fn prepare(
        protocol: Protocol,
        http_url: &str,
        grpc_addr: &str,
        model: &str,
        tensors: &[Tensor],
        workers: usize,
    ) -> anyhow::Result<Self> {
        match protocol {
            Protocol::HttpJson | Protocol::HttpBinary => {
                let binary = protocol == Protocol::HttpBinary;
                let mut raw = Vec::new();
                let inputs: Vec<Value> = tensors
                    .iter()
                    .map(|t| {
                        let mut input = json!({"name": t.name, "shape": t.shape, "datatype": t.datatype().as_str()});
                        if binary {
                            let bytes = t.data.to_raw();
                            input["parameters"] = json!({"binary_data_size": bytes.len()});
                            raw.extend_from_slice(&bytes);
                        } else {
                            input["data"] = t.data.to_json();
                        }
                        input
                    })
                    .collect();
                let header =
                    json!({"inputs": inputs, "parameters": {"binary_data_output": binary}});
                let mut body = serde_json::to_vec(&header)?;
                let header_length = binary.then_some(body.len());
                body.extend_from_slice(&raw);
                Ok(Request::Http {
                    client: reqwest::Client::builder()
                        .pool_max_idle_per_host(workers.max(1))
                        .build()?,
                    url: format!("{http_url}/v2/models/{model}/infer"),
                    body: Bytes::from(body),
                    header_length,
                })
            }
            Protocol::Grpc => {
                let mut clients = Vec::with_capacity(workers);
                for _ in 0..workers.max(1) {
                    let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))?
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .with_context(|| format!("connecting to {grpc_addr}"))?;
                    clients.push(
                        GrpcInferenceServiceClient::new(channel)
                            .max_decoding_message_size(usize::MAX)
                            .max_encoding_message_size(usize::MAX),
                    );
                }
                let request = pb::ModelInferRequest {
                    model_name: model.to_string(),
                    inputs: tensors
                        .iter()
                        .map(|t| pb::model_infer_request::InferInputTensor {
                            name: t.name.clone(),
                            datatype: t.datatype().as_str().to_string(),
                            shape: t.shape.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    raw_input_contents: tensors
                        .iter()
                        .map(|t| Bytes::from(t.data.to_raw()))
                        .collect(),
                    ..Default::default()
                };
                Ok(Request::Grpc { clients, request })
            }
            Protocol::InProcess => bail!("the in-process protocol has no server; use InProcess"),
        }
    }

    /// Sends the request once from `worker` and reads the whole answer.
    pub async fn send(&self, worker: usize) -> Result<(), String> {
        match self {
            Request::Http {
                client,
                url,
                body,
                header_length,
            } => {
                let mut request = client.post(url).body(body.clone());
                request = match header_length {
                    Some(len) => request
                        .header("Inference-Header-Content-Length", *len)
                        .header("Content-Type", "application/octet-stream"),
                    None => request.header("Content-Type", "application/json"),
                };
                let response = request.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ));
                }
                Ok(())
            }
            Request::Grpc { clients, request } => {
                let mut client = clients[worker % clients.len()].clone();
                client
                    .model_infer(request.clone())
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
        }
    }
}

/// Loaded instances of a model, one per worker thread, for the in-process baseline.
#[derive(Default)]
pub struct InProcess {
    pub sessions: Vec<Box<dyn Backend>>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
}

impl InProcess {
    /// Loads `workers` instances of `model` (a model file or folder) with the runtime of
    /// `backends` that serves it, `threads` intra-op threads each, on `device`.
    pub fn open(
        backends: &Backends,
        model: &Path,
        workers: usize,
        threads: usize,
        device: Device,
    ) -> anyhow::Result<(Self, Vec<InputSpec>)> {
        let runtime = runtime_for(backends, model)?;
        let on = match device {
            Device::Cpu => "the CPU".to_string(),
            Device::Gpu(ordinal) => format!("gpu:{ordinal}"),
        };
        let options = LoadOptions {
            device,
            intra_op_threads: threads,
            ..Default::default()
        };
        let sessions = (0..workers.max(1))
            .map(|_| runtime.load(model, &options))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("loading {} on {on}", model.display()))?;
        let specs = sessions[0]
            .inputs()
            .iter()
            .map(|s| InputSpec {
                name: s.name.clone(),
                datatype: s.datatype,
                shape: s.shape.clone(),
            })
            .collect();
        let outputs = sessions[0]
            .outputs()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        Ok((
            InProcess {
                sessions,
                inputs: Vec::new(),
                outputs,
            },
            specs,
        ))
    }
}

/// The runtime that serves `model`: a folder's by its files, a file's by its extension.
fn runtime_for(backends: &Backends, model: &Path) -> anyhow::Result<Arc<dyn BackendFactory>> {
    let found = if model.is_dir() {
        backends.detect(model).map(|(runtime, _)| runtime)
    } else {
        let extension = model.extension();
        backends
            .all()
            .find(|f| extension.is_some() && Path::new(f.model_filename()).extension() == extension)
    };
    found.map(Arc::clone).with_context(|| {
        format!(
            "no runtime of this build serves {}; expected {}",
            model.display(),
            backends.expected_files()
        )
    })
}
