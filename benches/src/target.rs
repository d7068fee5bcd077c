//! What a benchmark drives: any KServe V2 server over HTTP (JSON or binary tensors) or
//! gRPC, or a model runtime in-process (ONNX Runtime, libtorch, candle) as the floor. Only standard V2 endpoints are used,
//! so the same load runs against Nexus, Triton, KServe or MLServer.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use nexus_models::backend::LoadOptions;
use nexus_models::repository::read_config;
use nexus_models::{
    Backend, BackendFactory, Backends, DataType, Device, ModelConfig, Tensor, TensorData,
};
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
        /// `host:port`, from the base URL.
        addr: String,
        path: String,
        body: Bytes,
        header_length: Option<usize>,
    },
    Grpc {
        addr: String,
        request: pb::ModelInferRequest,
    },
}

impl Request {
    /// Prepares the request for an HTTP (`http://host:port`) or gRPC (`host:port`) server.
    pub fn prepare(
        protocol: Protocol,
        http_url: &str,
        grpc_addr: &str,
        model: &str,
        tensors: &[Tensor],
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
                let base: http::Uri = http_url
                    .parse()
                    .with_context(|| format!("--http-url {http_url}"))?;
                let (Some("http"), Some(authority)) = (base.scheme_str(), base.authority()) else {
                    bail!("--http-url {http_url}: expected http://HOST:PORT");
                };
                let addr = match authority.port() {
                    Some(_) => authority.to_string(),
                    None => format!("{authority}:80"),
                };
                let prefix = base.path().trim_end_matches('/');
                Ok(Request::Http {
                    addr,
                    path: format!("{prefix}/v2/models/{model}/infer"),
                    body: Bytes::from(body),
                    header_length,
                })
            }
            Protocol::Grpc => Ok(Request::Grpc {
                addr: grpc_addr.to_string(),
                request: pb::ModelInferRequest {
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
                },
            }),
            Protocol::InProcess => bail!("the in-process protocol has no server; use InProcess"),
        }
    }

    /// Opens a connection of this request's protocol to its server.
    async fn connect(&self) -> Result<Live, String> {
        let addr = match self {
            Request::Http { addr, .. } | Request::Grpc { addr, .. } => addr,
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        // Small requests must not wait for Nagle's algorithm.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let io = TokioIo::new(stream);
        let failed = |e: hyper::Error| format!("connecting to {addr}: {e}");
        match self {
            Request::Http { .. } => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(failed)?;
                Ok(Live {
                    client: Client::Http(sender),
                    connection: Box::pin(connection),
                })
            }
            Request::Grpc { .. } => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(failed)?;
                let origin = format!("http://{addr}")
                    .parse()
                    .map_err(|e| format!("{addr}: {e}"))?;
                let client = GrpcInferenceServiceClient::with_origin(H2(sender.clone()), origin)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                Ok(Live {
                    client: Client::Grpc(client, sender),
                    connection: Box::pin(connection),
                })
            }
        }
    }
}

/// One worker's connection, opened on its first request and again after the server closed
/// it. The worker's own task drives it, on its client thread's event loop: a request and its
/// answer cross no other task or thread in the load generator. A shared pooled client
/// (reqwest's, tonic's channel) runs each connection as a task on whichever runtime opened it,
/// and queues every call to that task.
#[derive(Default)]
pub struct Connection {
    live: Option<Live>,
}

struct Live {
    client: Client,
    /// hyper's connection future: reads and writes the socket while it is polled.
    connection: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
}

enum Client {
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// The generated client, and its connection's sender (which says when it closed).
    Grpc(
        GrpcInferenceServiceClient<H2>,
        hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    ),
}

impl Connection {
    /// Sends `request` once and reads the whole answer.
    pub async fn send(&mut self, request: &Request) -> Result<(), String> {
        let live = match &mut self.live {
            Some(live) => live,
            None => self.live.insert(request.connect().await?),
        };
        let exchange = async {
            match (&mut live.client, request) {
                (
                    Client::Http(sender),
                    Request::Http {
                        addr,
                        path,
                        body,
                        header_length,
                    },
                ) => http_exchange(sender, addr, path, body, *header_length).await,
                (Client::Grpc(client, _), Request::Grpc { request, .. }) => client
                    .model_infer(request.clone())
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                _ => Err("the connection is for another protocol".into()),
            }
        };
        let (outcome, ended) = tokio::select! {
            biased;
            done = exchange => (done, false),
            closed = &mut live.connection => (Err(match closed {
                Ok(()) => "the server closed the connection".into(),
                Err(e) => format!("connection: {e}"),
            }), true),
        };
        // A finished connection future must not be polled again; a closed one serves no more.
        let broken = ended
            || match &live.client {
                Client::Http(sender) => sender.is_closed(),
                Client::Grpc(_, sender) => sender.is_closed(),
            };
        if broken {
            self.live = None;
        }
        outcome
    }
}

async fn http_exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: &str,
    path: &str,
    body: &Bytes,
    header_length: Option<usize>,
) -> Result<(), String> {
    let mut builder = http::Request::post(path).header(http::header::HOST, addr);
    builder = match header_length {
        Some(len) => builder
            .header("Inference-Header-Content-Length", len)
            .header(http::header::CONTENT_TYPE, "application/octet-stream"),
        None => builder.header(http::header::CONTENT_TYPE, "application/json"),
    };
    let message = builder
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(message)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(())
}

/// hyper's HTTP/2 sender as the service tonic's generated client calls, in place of tonic's
/// `Channel` (which queues each call for a task of its own).
#[derive(Clone)]
pub struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
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
            config: folder_config(model)?,
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

/// The `config.pbtxt` of the Triton model folder that `model` is a version of
/// (`<model>/<version>/model.pt`, or the version folder itself), read as a server reads it:
/// a TorchScript file does not record its inputs and outputs. Empty outside such a folder.
fn folder_config(model: &Path) -> anyhow::Result<Arc<ModelConfig>> {
    let version = if model.is_dir() {
        Some(model)
    } else {
        model.parent()
    };
    let Some(folder) = version.and_then(Path::parent) else {
        return Ok(Arc::default());
    };
    let config =
        read_config(folder).with_context(|| format!("the model config in {}", folder.display()))?;
    Ok(Arc::new(config.unwrap_or_default()))
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
