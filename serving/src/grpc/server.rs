//! KServe V2 over gRPC (`inference.GRPCInferenceService`, tonic) with Triton's
//! extensions: model configuration, statistics, model repository and system shared memory;
//! and [`run`], the gRPC listener with its layers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use nexus_gateway::Gateway;
use nexus_gateway::tls::{ServerTls, TlsListener};
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use nexus_models::{DataType, Tensor, TensorData, config};

use crate::error::{ServeError, ServingError};
use crate::hooks::{self, Protocol};
use crate::infer::{InferRequest, InferResponse};
use crate::limits::{self, InflightBytes, Reservation};
use crate::manager::ModelManager;
use crate::metadata::{SERVER_EXTENSIONS, SERVER_NAME, SERVER_VERSION};
use crate::pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::pb::infer_parameter::ParameterChoice;
use crate::pb::model_infer_request::InferInputTensor;
use crate::pb::model_infer_response::InferOutputTensor;
use crate::pb::{self, InferParameter, InferTensorContents};
use crate::shm::{Reference, SharedMemory, SharedOutputs, ShmError};
use crate::trace::request_span;
use crate::version::statistics;

/// Concurrent gRPC calls per connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`),
/// hyper's own default.
pub const GRPC_MAX_CONCURRENT_STREAMS: u32 = 200;

impl From<ServingError> for Status {
    fn from(e: ServingError) -> Self {
        match e {
            ServingError::NotFound(m) => Status::not_found(m),
            ServingError::InvalidArgument(m) => Status::invalid_argument(m),
            ServingError::Unavailable(m) => Status::unavailable(m),
            ServingError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<ShmError> for Status {
    fn from(e: ShmError) -> Self {
        let message = e.to_string();
        match e {
            ShmError::NotFound(_) | ShmError::CudaNotFound(_) => Status::not_found(message),
            ShmError::AlreadyExists(_) => Status::already_exists(message),
            ShmError::TooMany => Status::resource_exhausted(message),
            ShmError::NoGpu(_) => Status::unavailable(message),
            ShmError::Invalid(_) | ShmError::OutOfBounds(_) | ShmError::Open { .. } => {
                Status::invalid_argument(message)
            }
        }
    }
}

/// The gRPC service.
pub struct GrpcService {
    manager: Arc<ModelManager>,
    inflight: Arc<InflightBytes>,
    shm: Arc<SharedMemory>,
}

/// The tonic server for `manager`, accepting messages up to `max_message_bytes`, counting
/// inference requests against the server's `inflight` bytes and reading and writing
/// tensors in the regions of `shm`.
pub fn service(
    manager: Arc<ModelManager>,
    max_message_bytes: usize,
    inflight: Arc<InflightBytes>,
    shm: Arc<SharedMemory>,
) -> GrpcInferenceServiceServer<GrpcService> {
    GrpcInferenceServiceServer::new(GrpcService {
        manager,
        inflight,
        shm,
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(usize::MAX)
}

/// Serves `service` (see [`service`]) on `listener`, plain or over `tls`, until
/// `shutdown` completes. Its layers, outermost first: `x-request-id`, the request's span,
/// the id copied into the response, then the gateway.
pub async fn run(
    listener: TcpListener,
    service: GrpcInferenceServiceServer<GrpcService>,
    gateway: &Gateway,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let router = tonic::transport::Server::builder()
        // tonic passes `None` for these, which lifts hyper's limits (200 streams per
        // connection, 1024 locally reset streams): restore them, so one connection can
        // neither open unbounded concurrent calls nor reset streams forever.
        .max_concurrent_streams(GRPC_MAX_CONCURRENT_STREAMS)
        .http2_max_local_error_reset_streams(Some(1024))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_grpc()
                        .make_span_with(request_span)
                        // Refused calls (bad credentials, bad input) are the client's doing:
                        // at ERROR anyone could flood the log.
                        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(gateway.grpc_layer()),
        )
        .add_service(service);
    let served = match tls {
        Some(config) => {
            let listener = TlsListener::new(listener, config)
                .map_err(|e| ServeError::Server(format!("TLS for gRPC: {e}")))?;
            router
                .serve_with_incoming_shutdown(listener.into_incoming(), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    // Small replies must not wait for Nagle's algorithm (a 40 ms stall per response).
                    TcpListenerStream::new(listener)
                        .map(|stream| stream.and_then(|s| s.set_nodelay(true).map(|()| s))),
                    shutdown,
                )
                .await
        }
    };
    served.map_err(|e| ServeError::Server(format!("gRPC server: {e}")))
}

fn invalid(message: String) -> ServingError {
    ServingError::InvalidArgument(message)
}

/// Converts typed `contents` into tensor data, range-checking the narrow integer types
/// that travel in wider protobuf fields.
fn from_contents(
    name: &str,
    datatype: DataType,
    c: InferTensorContents,
) -> Result<TensorData, ServingError> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        name: &str,
        values: Vec<S>,
        datatype: DataType,
    ) -> Result<Vec<T>, ServingError> {
        values
            .into_iter()
            .map(|v| {
                T::try_from(v).map_err(|_| {
                    invalid(format!(
                        "input '{name}': {v} is out of range for {datatype}"
                    ))
                })
            })
            .collect()
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::I8 => TensorData::I8(narrow(name, c.int_contents, datatype)?),
        DataType::I16 => TensorData::I16(narrow(name, c.int_contents, datatype)?),
        DataType::I32 => TensorData::I32(c.int_contents),
        DataType::I64 => TensorData::I64(c.int64_contents),
        DataType::U8 => TensorData::U8(narrow(name, c.uint_contents, datatype)?),
        DataType::U16 => TensorData::U16(narrow(name, c.uint_contents, datatype)?),
        DataType::U32 => TensorData::U32(c.uint_contents),
        DataType::U64 => TensorData::U64(c.uint64_contents),
        DataType::F32 => TensorData::F32(c.fp32_contents),
        DataType::F64 => TensorData::F64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
        DataType::F16 => {
            return Err(invalid(format!(
                "input '{name}': FP16 has no typed contents field; send it in raw_input_contents"
            )));
        }
    })
}

/// A tensor's shared-memory parameters (`shared_memory_region` a string, the offset and
/// byte size non-negative int64s, as tritonclient sends them).
fn shared_reference(
    tensor: &str,
    params: &HashMap<String, InferParameter>,
) -> Result<Option<Reference>, ServingError> {
    let choice = |key: &str| params.get(key).and_then(|p| p.parameter_choice.as_ref());
    let region = match choice("shared_memory_region") {
        None => None,
        Some(ParameterChoice::StringParam(region)) => Some(region.clone()),
        Some(_) => {
            return Err(invalid(format!(
                "tensor '{tensor}': parameter 'shared_memory_region' must be a string"
            )));
        }
    };
    let size = |key: &str| match choice(key) {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(n)) if *n >= 0 => Ok(Some(n.unsigned_abs())),
        Some(_) => Err(invalid(format!(
            "tensor '{tensor}': parameter '{key}' must be a non-negative int64"
        ))),
    };
    let offset = size("shared_memory_offset")?;
    let byte_size = size("shared_memory_byte_size")?;
    Ok(Reference::new(tensor, region, offset, byte_size)?)
}

fn decode_input(input: InferInputTensor, raw: Option<Bytes>) -> Result<Tensor, ServingError> {
    let datatype = parse_datatype(&input)?;
    let data = match (raw, input.contents) {
        (Some(raw), _) => TensorData::from_raw(&input.name, datatype, &raw)?,
        (None, Some(contents)) => from_contents(&input.name, datatype, contents)?,
        (None, None) => {
            return Err(invalid(format!(
                "input '{}' has neither contents nor raw_input_contents",
                input.name
            )));
        }
    };
    Ok(Tensor::new(input.name, input.shape, data)?)
}

fn parse_datatype(input: &InferInputTensor) -> Result<DataType, ServingError> {
    DataType::parse(&input.datatype).ok_or_else(|| {
        invalid(format!(
            "input '{}': unknown datatype '{}'",
            input.name, input.datatype
        ))
    })
}

/// Decodes a serialized `ModelInferRequest` (the bytes of a gRPC message) into Nexus's
/// request, as a server without shared memory does: the entry point for fuzzing the gRPC
/// input path.
pub fn decode_infer_request(message: &[u8]) -> Result<InferRequest, ServingError> {
    let request = pb::ModelInferRequest::decode(message)
        .map_err(|e| invalid(format!("not a valid ModelInferRequest message: {e}")))?;
    let mut reservation = InflightBytes::new(0).reserve_none();
    decode(request, &SharedMemory::default(), &mut reservation).map(|(request, _)| request)
}

/// Decodes a request; inputs in shared memory are copied out of `memory`, counted in
/// `reservation`, and outputs to shared memory are resolved there.
fn decode(
    request: pb::ModelInferRequest,
    memory: &SharedMemory,
    reservation: &mut Reservation,
) -> Result<(InferRequest, SharedOutputs), ServingError> {
    limits::check_request_id(&request.id)?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    let mut in_memory = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let reference = shared_reference(&input.name, &input.parameters)?;
        in_memory.push((input, reference));
    }
    // tritonclient sends raw contents only for the inputs not in shared memory.
    let raw = request.raw_input_contents;
    let carried = in_memory.iter().filter(|(_, r)| r.is_none()).count();
    if !raw.is_empty() && raw.len() != carried {
        return Err(invalid(format!(
            "raw_input_contents has {} entries for {carried} inputs not in shared memory; \
             give one per such input or none",
            raw.len(),
        )));
    }
    let mut raw = raw.into_iter();
    for (input, reference) in in_memory {
        let tensor = match reference {
            None => decode_input(input, raw.next())?,
            Some(reference) => {
                if input.contents.is_some() {
                    return Err(invalid(format!(
                        "input '{}' names a shared memory region and also has contents",
                        input.name
                    )));
                }
                let datatype = parse_datatype(&input)?;
                memory.read_input(input.name, datatype, input.shape, reference, reservation)?
            }
        };
        inputs.push(tensor);
    }
    let mut shared = SharedOutputs::default();
    let mut outputs = Vec::with_capacity(request.outputs.len());
    for o in request.outputs {
        if o.parameters.contains_key("classification") {
            return Err(invalid(format!(
                "output '{}': the classification extension is not supported",
                o.name
            )));
        }
        if let Some(reference) = shared_reference(&o.name, &o.parameters)? {
            shared.add(memory, o.name.clone(), reference)?;
        }
        outputs.push(o.name);
    }
    let request = InferRequest {
        id: request.id,
        inputs,
        outputs,
        traceparent: None,
    };
    Ok((request, shared))
}

/// Encodes outputs as `raw_output_contents`, as Triton does. Outputs written to shared
/// memory carry their request's shared-memory parameters and an empty entry there, so the
/// entries still line up with the outputs.
fn encode(response: InferResponse, shared: &SharedOutputs) -> pb::ModelInferResponse {
    let (outputs, raw): (Vec<_>, Vec<_>) = response
        .outputs
        .into_iter()
        .map(|t| {
            let mut meta = InferOutputTensor {
                name: t.name.clone(),
                datatype: t.datatype().as_str().to_string(),
                shape: t.shape.clone(),
                ..Default::default()
            };
            let Some(reference) = shared.get(&t.name) else {
                return (meta, Bytes::from(t.data.to_raw()));
            };
            let param = |choice| InferParameter {
                parameter_choice: Some(choice),
            };
            // Offsets and sizes within a mapped region fit in an i64.
            let int = |n: u64| {
                param(ParameterChoice::Int64Param(
                    n.try_into().unwrap_or(i64::MAX),
                ))
            };
            meta.parameters.insert(
                "shared_memory_region".into(),
                param(ParameterChoice::StringParam(reference.region.clone())),
            );
            meta.parameters
                .insert("shared_memory_byte_size".into(), int(reference.byte_size));
            if reference.offset != 0 {
                meta.parameters
                    .insert("shared_memory_offset".into(), int(reference.offset));
            }
            (meta, Bytes::new())
        })
        .unzip();
    pb::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        outputs,
        raw_output_contents: raw,
        ..Default::default()
    }
}

/// The call's `traceparent` metadata, if it is valid.
fn call_traceparent<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| hooks::trace_id(v).is_some())
        .map(str::to_string)
}

async fn infer(
    manager: &Arc<ModelManager>,
    inflight: &Arc<InflightBytes>,
    shm: &SharedMemory,
    mut request: pb::ModelInferRequest,
    traceparent: Option<String>,
) -> Result<pb::ModelInferResponse, ServingError> {
    // tonic has already read the message; counting it here still bounds how many the
    // server holds while they wait for and run inference.
    let mut reservation = inflight.reserve(request.encoded_len())?;
    let model = std::mem::take(&mut request.model_name);
    let version = std::mem::take(&mut request.model_version);
    // Fail fast on an unknown model, before decoding the tensors (and load it on demand).
    manager.resolve(&model, &version).await?;
    let (mut request, shared) = decode(request, shm, &mut reservation)?;
    request.traceparent = traceparent;
    let response = manager
        .infer(&model, &version, request, Protocol::Grpc)
        .await?;
    shared.write(&response.outputs)?;
    Ok(encode(response, &shared))
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.manager.is_started(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        // As Triton: an unknown, unloaded or failed model is simply not ready.
        let r = request.into_inner();
        let ready = self.manager.get(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: SERVER_VERSION.into(),
            extensions: SERVER_EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let loaded = self.manager.resolve(&r.name, &r.version).await?;
        let versions = if r.version.is_empty() {
            self.manager.ready_versions(&r.name)
        } else {
            vec![loaded.version]
        };
        Ok(Response::new(loaded.metadata(&versions)))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let traceparent = call_traceparent(&request);
        Ok(Response::new(
            infer(
                &self.manager,
                &self.inflight,
                &self.shm,
                request.into_inner(),
                traceparent,
            )
            .await?,
        ))
    }

    type ModelStreamInferStream = ResponseStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let traceparent = call_traceparent(&request);
        let mut requests = request.into_inner();
        let manager = Arc::clone(&self.manager);
        let inflight = Arc::clone(&self.inflight);
        let shm = Arc::clone(&self.shm);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(next) = requests.next().await {
                let reply = match next {
                    Err(status) => Err(status),
                    Ok(request) => Ok(
                        match infer(&manager, &inflight, &shm, request, traceparent.clone()).await {
                            Ok(response) => pb::ModelStreamInferResponse {
                                error_message: String::new(),
                                infer_response: Some(response),
                            },
                            Err(e) => pb::ModelStreamInferResponse {
                                error_message: e.to_string(),
                                infer_response: None,
                            },
                        },
                    ),
                };
                let stop = reply.is_err();
                if tx.send(reply).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let loaded = self.manager.resolve(&r.name, &r.version).await?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some((*loaded.config).clone()),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let versions = if r.name.is_empty() {
            self.manager.loaded()
        } else {
            self.manager.versions_of(&r.name, &r.version)?
        };
        Ok(Response::new(statistics(&versions)))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: self.manager.index(request.into_inner().ready),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        use pb::model_repository_parameter::ParameterChoice;
        let r = request.into_inner();
        self.manager.ensure_explicit()?;
        let config_override = match r
            .parameters
            .get("config")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => None,
            Some(ParameterChoice::StringParam(text)) => Some(
                config::parse_json(text).map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            Some(_) => {
                return Err(Status::invalid_argument(
                    "parameter 'config' must be a string holding the model config as JSON",
                ));
            }
        };
        self.manager.load(&r.model_name, config_override).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        self.manager.ensure_explicit()?;
        self.manager.unload(&r.model_name).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        use pb::system_shared_memory_status_response::RegionStatus;
        let regions = self
            .shm
            .status(&request.into_inner().name)?
            .into_iter()
            .map(|r| {
                let status = RegionStatus {
                    name: r.name.clone(),
                    key: r.key,
                    offset: r.offset,
                    byte_size: r.byte_size,
                };
                (r.name, status)
            })
            .collect();
        Ok(Response::new(pb::SystemSharedMemoryStatusResponse {
            regions,
        }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        let r = request.into_inner();
        self.shm.register(&r.name, &r.key, r.offset, r.byte_size)?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        self.shm.unregister(&request.into_inner().name);
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        request: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        use pb::cuda_shared_memory_status_response::RegionStatus;
        let regions = self
            .shm
            .cuda_status(&request.into_inner().name)?
            .into_iter()
            .map(|r| {
                let status = RegionStatus {
                    name: r.name.clone(),
                    device_id: r.device_id.unsigned_abs(),
                    byte_size: r.byte_size,
                };
                (r.name, status)
            })
            .collect();
        Ok(Response::new(pb::CudaSharedMemoryStatusResponse {
            regions,
        }))
    }

    async fn cuda_shared_memory_register(
        &self,
        request: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        let r = request.into_inner();
        self.shm
            .register_cuda(&r.name, &r.raw_handle, r.device_id, r.byte_size)?;
        Ok(Response::new(pb::CudaSharedMemoryRegisterResponse {}))
    }

    /// As for system regions, unregistering a region that is not registered succeeds.
    async fn cuda_shared_memory_unregister(
        &self,
        request: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        self.shm.unregister_cuda(&request.into_inner().name);
        Ok(Response::new(pb::CudaSharedMemoryUnregisterResponse {}))
    }
}
