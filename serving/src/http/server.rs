//! KServe V2 over HTTP (axum) with Triton's extensions: model configuration,
//! statistics, model repository, binary tensor data and system shared memory; and [`run`],
//! the HTTP listener with its layers.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use nexus_gateway::Gateway;
use nexus_gateway::tls::ServerTls;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use nexus_models::config;

use crate::error::{ServeError, ServingError};
use crate::hooks::{self, Protocol};
use crate::http::codec;
use crate::limits::{InflightBytes, Reservation};
use crate::manager::ModelManager;
use crate::metadata::{SERVER_EXTENSIONS, SERVER_NAME, SERVER_VERSION};
use crate::pb;
use crate::pb::repository_index_response::ModelIndex;
use crate::shm::{CudaRegionStatus, RegionStatus, SharedMemory, ShmError};
use crate::trace::{ClassifyHttp, LogFailure, request_span};
use crate::version::statistics;

/// Shared state of the HTTP handlers.
pub struct HttpState {
    pub manager: Arc<ModelManager>,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// Request bytes held by the whole server (shared with gRPC).
    pub inflight: Arc<InflightBytes>,
    /// Registered system shared-memory regions (shared with gRPC).
    pub shm: Arc<SharedMemory>,
}

type AppState = State<Arc<HttpState>>;

impl IntoResponse for ShmError {
    fn into_response(self) -> Response {
        let status = match self {
            ShmError::NotFound(_) | ShmError::CudaNotFound(_) => StatusCode::NOT_FOUND,
            ShmError::NoGpu(_) => StatusCode::SERVICE_UNAVAILABLE,
            ShmError::Invalid(_)
            | ShmError::OutOfBounds(_)
            | ShmError::AlreadyExists(_)
            | ShmError::TooMany
            | ShmError::Open { .. } => StatusCode::BAD_REQUEST,
        };
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

impl IntoResponse for ServingError {
    fn into_response(self) -> Response {
        let status = match self {
            ServingError::NotFound(_) => StatusCode::NOT_FOUND,
            ServingError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ServingError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServingError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Serves the V2 routes, with `routes` (other components') and `health` merged in, on
/// `listener`, plain or over `tls`, until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    state: Arc<HttpState>,
    routes: Router,
    health: Router,
    gateway: &Gateway,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = app(state, routes, health, gateway);
    nexus_gateway::serve_http(app, listener, tls, shutdown)
        .await
        .map_err(|e| ServeError::Server(format!("HTTP server: {e}")))
}

/// Every route of the HTTP port behind its layers, outermost first: `x-request-id` (the
/// client's, or a new UUID), the request's span and log lines, the id copied into the
/// response, gzip/deflate bodies decompressed, then the gateway (authentication,
/// authorisation, rate limits), so its refusals are logged with their request id.
fn app(state: Arc<HttpState>, routes: Router, health: Router, gateway: &Gateway) -> Router {
    router(state)
        .merge(routes)
        .merge(health)
        .layer(gateway.http_layer())
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new(ClassifyHttp)
                        .make_span_with(request_span)
                        .on_failure(LogFailure),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(RequestDecompressionLayer::new()),
        )
}

/// The V2 routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(version_config),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(version_stats),
        )
        .route("/v2/models/{model}/infer", post(model_infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/v2/systemsharedmemory/status", get(shm_status_all))
        .route(
            "/v2/systemsharedmemory/region/{name}/status",
            get(shm_status),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/register",
            post(shm_register),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(shm_unregister_all),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/unregister",
            post(shm_unregister),
        )
        .route("/v2/cudasharedmemory/status", get(cuda_status_all))
        .route(
            "/v2/cudasharedmemory/region/{name}/status",
            get(cuda_status),
        )
        .route(
            "/v2/cudasharedmemory/region/{name}/register",
            post(cuda_register),
        )
        .route("/v2/cudasharedmemory/unregister", post(cuda_unregister_all))
        .route(
            "/v2/cudasharedmemory/region/{name}/unregister",
            post(cuda_unregister),
        )
        .fallback(|| async { ServingError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            let body = json!({ "error": "method not allowed for this endpoint" });
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
        })
        .with_state(state)
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(json!({
        "name": SERVER_NAME,
        "version": SERVER_VERSION,
        "extensions": SERVER_EXTENSIONS,
    }))
}

/// `{"live": true}`: KServe's client reads the body, tritonclient only the status.
async fn live() -> axum::Json<Value> {
    axum::Json(json!({ "live": true }))
}

/// `{"ready": …}` with 200 or 503, as KServe's server answers.
async fn ready(State(state): AppState) -> (StatusCode, axum::Json<Value>) {
    let ready = state.manager.is_started();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready })))
}

async fn model_metadata(
    State(state): AppState,
    Path(model): Path<String>,
) -> Result<axum::Json<pb::ModelMetadataResponse>, ServingError> {
    let loaded = state.manager.resolve(&model, "").await?;
    Ok(axum::Json(
        loaded.metadata(&state.manager.ready_versions(&model)),
    ))
}

async fn version_metadata(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<pb::ModelMetadataResponse>, ServingError> {
    let loaded = state.manager.resolve(&model, &version).await?;
    Ok(axum::Json(loaded.metadata(&[loaded.version])))
}

/// 200 or 503 with `{"name": …, "ready": …}`, the body KServe's server gives.
type Readiness = (StatusCode, axum::Json<Value>);

fn readiness(state: &HttpState, model: &str, version: &str) -> Result<Readiness, ServingError> {
    let (status, ready) = match state.manager.get(model, version) {
        Ok(_) => (StatusCode::OK, true),
        Err(ServingError::Unavailable(_)) => (StatusCode::SERVICE_UNAVAILABLE, false),
        Err(e) => return Err(e),
    };
    let body = json!({ "name": model, "ready": ready });
    Ok((status, axum::Json(body)))
}

async fn model_ready(
    State(state): AppState,
    Path(model): Path<String>,
) -> Result<Readiness, ServingError> {
    readiness(&state, &model, "")
}

async fn version_ready(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
) -> Result<Readiness, ServingError> {
    readiness(&state, &model, &version)
}

async fn model_config(
    State(state): AppState,
    Path(model): Path<String>,
) -> Result<axum::Json<Value>, ServingError> {
    let loaded = state.manager.resolve(&model, "").await?;
    Ok(axum::Json(config::to_json(&loaded.config)))
}

async fn version_config(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ServingError> {
    let loaded = state.manager.resolve(&model, &version).await?;
    Ok(axum::Json(config::to_json(&loaded.config)))
}

type StatsJson = axum::Json<pb::ModelStatisticsResponse>;

async fn all_stats(State(state): AppState) -> StatsJson {
    axum::Json(statistics(&state.manager.loaded()))
}

async fn model_stats(
    State(state): AppState,
    Path(model): Path<String>,
) -> Result<StatsJson, ServingError> {
    Ok(axum::Json(statistics(
        &state.manager.versions_of(&model, "")?,
    )))
}

async fn version_stats(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatsJson, ServingError> {
    Ok(axum::Json(statistics(
        &state.manager.versions_of(&model, &version)?,
    )))
}

async fn model_infer(
    State(state): AppState,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServingError> {
    infer(&state, &model, "", &headers, body).await
}

async fn version_infer(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServingError> {
    infer(&state, &model, &version, &headers, body).await
}

/// Past a limit, how much more of a refused body is read and dropped, and for how long,
/// so the client finishes sending and sees the error instead of a reset connection.
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a body up to the configured limit, counting it against the server's in-flight
/// bytes as it arrives; larger bodies, and bodies the server has no room for, are refused,
/// never buffered. The reservation holds the bytes until the caller drops it.
async fn read_body(
    state: &HttpState,
    body: Body,
) -> Result<(bytes::Bytes, Reservation), ServingError> {
    let limit = state.max_request_bytes;
    let mut reservation = state.inflight.reserve_none();
    let mut stream = body.into_data_stream();
    let mut buffer = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ServingError::InvalidArgument(format!("cannot read the request body: {e}"))
        })?;
        let refused = if buffer.len() + chunk.len() > limit {
            Err(ServingError::InvalidArgument(format!(
                "request body is larger than the limit of {limit} bytes (set by --max-request-bytes)"
            )))
        } else {
            reservation.grow(chunk.len())
        };
        if let Err(e) = refused {
            let mut drained = buffer.len() + chunk.len();
            drop(buffer);
            drop(reservation);
            let drain = async {
                while let Some(Ok(more)) = stream.next().await {
                    drained += more.len();
                    if drained > limit + DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(e);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok((buffer.freeze(), reservation))
}

async fn infer(
    state: &HttpState,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServingError> {
    // Fail fast on an unknown model, before reading the body (and load it on demand).
    state.manager.resolve(model, version).await?;
    let header_length = match headers.get(codec::HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ServingError::InvalidArgument(
                        "Inference-Header-Content-Length must be a byte count".into(),
                    )
                })?,
        ),
    };
    // Held until the response is built: the body and the tensors decoded from it (those
    // copied from shared memory too) live as long as the request.
    let (body, mut reservation) = read_body(state, body).await?;
    let (mut request, format) = codec::decode_shared(
        &body,
        header_length,
        model,
        version,
        &state.shm,
        &mut reservation,
    )?;
    request.traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| hooks::trace_id(v).is_some())
        .map(str::to_string);
    let response = state
        .manager
        .infer(model, version, request, Protocol::Http)
        .await?;
    format.shared.write(&response.outputs)?;
    let (json_len, body) = codec::encode(&response, &format);
    let mut reply = Response::new(Body::from(body));
    let content_type = match json_len {
        Some(len) => {
            reply
                .headers_mut()
                .insert(codec::HEADER_LENGTH, HeaderValue::from(len));
            "application/octet-stream"
        }
        None => "application/json",
    };
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(reply)
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(
    State(state): AppState,
    body: Body,
) -> Result<axum::Json<Vec<ModelIndex>>, ServingError> {
    let (body, _reservation) = read_body(&state, body).await?;
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ServingError::InvalidArgument(format!("invalid repository index request: {e}"))
        })?
    };
    Ok(axum::Json(state.manager.index(request.ready)))
}

#[derive(Deserialize, Default)]
struct ControlRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

async fn control_request(state: &HttpState, body: Body) -> Result<ControlRequest, ServingError> {
    let (body, _reservation) = read_body(state, body).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ControlRequest::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ServingError::InvalidArgument(format!("invalid repository request: {e}")))
}

async fn repository_load(
    State(state): AppState,
    Path(model): Path<String>,
    body: Body,
) -> Result<StatusCode, ServingError> {
    state.manager.ensure_explicit()?;
    let request = control_request(&state, body).await?;
    let config_override = match request.parameters.get("config") {
        None => None,
        Some(Value::String(text)) => Some(
            config::parse_json(text).map_err(|e| ServingError::InvalidArgument(e.to_string()))?,
        ),
        Some(_) => {
            return Err(ServingError::InvalidArgument(
                "parameter 'config' must be a string holding the model config as JSON".into(),
            ));
        }
    };
    state.manager.load(&model, config_override).await?;
    Ok(StatusCode::OK)
}

async fn repository_unload(
    State(state): AppState,
    Path(model): Path<String>,
    body: Body,
) -> Result<StatusCode, ServingError> {
    state.manager.ensure_explicit()?;
    control_request(&state, body).await?;
    state.manager.unload(&model).await?;
    Ok(StatusCode::OK)
}

async fn shm_status_all(State(state): AppState) -> Result<axum::Json<Vec<RegionStatus>>, ShmError> {
    Ok(axum::Json(state.shm.status("")?))
}

async fn shm_status(
    State(state): AppState,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<RegionStatus>>, ShmError> {
    Ok(axum::Json(state.shm.status(&name)?))
}

#[derive(Deserialize)]
struct RegisterRequest {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

/// A register request's JSON body, or a 400 that says what `expected` (a kind of request
/// and its fields) was.
async fn register_body<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    body: Body,
    expected: &str,
) -> Result<T, Response> {
    let (body, _reservation) = read_body(state, body)
        .await
        .map_err(IntoResponse::into_response)?;
    serde_json::from_slice(&body)
        .map_err(|e| ShmError::Invalid(format!("invalid {expected}: {e}")).into_response())
}

async fn shm_register(
    State(state): AppState,
    Path(name): Path<String>,
    body: Body,
) -> Result<StatusCode, Response> {
    let expected = r#"shared memory register request (expected {"key", "offset", "byte_size"})"#;
    let request: RegisterRequest = register_body(&state, body, expected).await?;
    state
        .shm
        .register(&name, &request.key, request.offset, request.byte_size)
        .map_err(IntoResponse::into_response)?;
    Ok(StatusCode::OK)
}

async fn shm_unregister_all(State(state): AppState) -> StatusCode {
    state.shm.unregister("");
    StatusCode::OK
}

async fn shm_unregister(State(state): AppState, Path(name): Path<String>) -> StatusCode {
    state.shm.unregister(&name);
    StatusCode::OK
}

type CudaStatus = Result<axum::Json<Vec<CudaRegionStatus>>, ShmError>;

async fn cuda_status_all(State(state): AppState) -> CudaStatus {
    Ok(axum::Json(state.shm.cuda_status("")?))
}

async fn cuda_status(State(state): AppState, Path(name): Path<String>) -> CudaStatus {
    Ok(axum::Json(state.shm.cuda_status(&name)?))
}

/// `{"raw_handle": {"b64": …}, "device_id": …, "byte_size": …}`, as tritonclient sends it.
#[derive(Deserialize)]
struct CudaRegisterRequest {
    raw_handle: RawHandle,
    device_id: i64,
    byte_size: u64,
}

#[derive(Deserialize)]
struct RawHandle {
    b64: String,
}

async fn cuda_register(
    State(state): AppState,
    Path(name): Path<String>,
    body: Body,
) -> Result<StatusCode, Response> {
    let expected = r#"cuda shared memory register request (expected {"raw_handle": {"b64"}, "device_id", "byte_size"})"#;
    let request: CudaRegisterRequest = register_body(&state, body, expected).await?;
    let handle = BASE64.decode(request.raw_handle.b64.trim()).map_err(|e| {
        ShmError::Invalid(format!("invalid {expected}: raw_handle is not base64: {e}"))
            .into_response()
    })?;
    state
        .shm
        .register_cuda(&name, &handle, request.device_id, request.byte_size)
        .map_err(IntoResponse::into_response)?;
    Ok(StatusCode::OK)
}

async fn cuda_unregister_all(State(state): AppState) -> StatusCode {
    state.shm.unregister_cuda("");
    StatusCode::OK
}

/// As for system regions, unregistering a region that is not registered succeeds.
async fn cuda_unregister(State(state): AppState, Path(name): Path<String>) -> StatusCode {
    state.shm.unregister_cuda(&name);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use tower::ServiceExt;
    use tracing::Level;

    use nexus_models::{Backends, ModelRepository};

    use super::*;
    use crate::manager::{ControlMode, ManagerOptions};
    use crate::trace::capture;

    /// The same 503 is logged at DEBUG when a probe gets it and at ERROR when an inference
    /// does: probes poll while models load, and an unavailable model they wait for is no fault.
    #[tokio::test]
    async fn probes_failing_are_logged_at_debug_and_other_failures_at_error() {
        let repository = tempfile::tempdir().unwrap();
        // A model no runtime opens is UNAVAILABLE: its readiness and its inferences are 503.
        std::fs::create_dir_all(repository.path().join("broken/1")).unwrap();
        let manager = ModelManager::new(
            ModelRepository::open(repository.path()).unwrap(),
            ManagerOptions {
                control_mode: ControlMode::Explicit,
                default_max_batch_size: 4,
                instances: None,
                queue_capacity: 1,
                intra_op_threads: 0,
                backends: Backends::default(),
                gpus: nexus_gpu::Gpus::none("a test without GPUs"),
                memory_budget: Default::default(),
                load_timeout: std::time::Duration::from_secs(60),
            },
        );
        assert!(manager.load("broken", None).await.is_err());
        // The manager never started, so the server is not ready either.
        let health = crate::health::router(Arc::clone(&manager), String::new(), Vec::new());
        let state = Arc::new(HttpState {
            manager,
            max_request_bytes: 1 << 20,
            inflight: InflightBytes::new(1 << 20),
            shm: Arc::default(),
        });
        let gateway = Gateway::new(&nexus_gateway::AuthConfig::default(), None)
            .await
            .unwrap();
        let app = app(state, Router::new(), health, &gateway);

        let (events, _recording) = capture::install();
        for (method, path, level) in [
            ("GET", "/v2/health/ready", Level::DEBUG),
            ("GET", "/health/ready", Level::DEBUG),
            ("GET", "/v2/models/broken/ready", Level::DEBUG),
            ("POST", "/v2/models/broken/infer", Level::ERROR),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            let failures: Vec<Level> = events
                .take()
                .into_iter()
                .filter(|(_, fields)| fields.contains("response failed"))
                .map(|(level, _)| level)
                .collect();
            assert_eq!(failures, [level], "{method} {path}");
        }
    }
}
