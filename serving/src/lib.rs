//! Serving: KServe V2 inference over HTTP and gRPC with Triton's extensions, the model
//! manager with its instance pools, and Prometheus metrics.

pub mod batcher;
pub mod error;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod instance;
pub mod manager;
pub mod metrics;
pub mod scheduler;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use nexus_models::{BackendError, ModelRepository, RepositoryError};

pub use error::ServingError;
pub use manager::{ControlMode, ManagerOptions, ModelManager};

/// Messages and service of `inference.GRPCInferenceService` (grpc_service.proto).
pub mod pb {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    tonic::include_proto!("inference");
}

/// Name reported by server metadata.
pub const SERVER_NAME: &str = "nexus";
/// Version reported by server metadata.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions this server implements, as listed in server metadata.
pub const SERVER_EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

/// Options of the inference server (`nexus serve`, `nexus up`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address every listener binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Port of the KServe V2 HTTP endpoint.
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,
    /// Port of the KServe V2 gRPC endpoint (inference.GRPCInferenceService).
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,
    /// Port of the Prometheus metrics endpoint (/metrics).
    #[arg(long, default_value_t = 8002)]
    pub metrics_port: u16,
    /// none: load every model at start-up; explicit: load only --load-model and what the
    /// repository API asks for; poll: load every model and apply repository changes.
    #[arg(long, value_enum, default_value_t = ControlMode::None)]
    pub model_control_mode: ControlMode,
    /// Model to load at start-up in explicit mode (repeatable; `*` loads all).
    #[arg(long = "load-model", value_name = "MODEL")]
    pub load_models: Vec<String>,
    /// Seconds between repository scans in poll mode.
    #[arg(long, default_value_t = 15)]
    pub repository_poll_secs: u64,
    /// max_batch_size given to models without config.pbtxt whose first dimensions are dynamic.
    #[arg(long, default_value_t = 4)]
    pub default_max_batch_size: i32,
    /// Instances per model version, overriding instance_group counts.
    #[arg(long)]
    pub instances: Option<usize>,
    /// Requests that may wait for an instance per model version; more get UNAVAILABLE.
    #[arg(long, default_value_t = 1024)]
    pub max_queue_size: usize,
    /// Largest HTTP request body or gRPC message accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// ONNX Runtime intra-op threads per instance when the model config sets none (0: ONNX Runtime's default).
    #[arg(long, default_value_t = 0)]
    pub ort_intra_threads: usize,
    /// Path of libonnxruntime.so (default: $ORT_DYLIB_PATH, then .nexus/lib/ found from here).
    #[arg(long, value_name = "PATH")]
    pub ort_library: Option<PathBuf>,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(#[from] BackendError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Server(String),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Runs the inference server on `repository` until `shutdown` completes.
pub async fn serve(
    repository: PathBuf,
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    nexus_models::onnx::init(args.ort_library.as_deref())?;
    let repository = ModelRepository::open(repository)?;
    let prometheus = metrics::prometheus().map_err(ServeError::Server)?;

    let http = bind("HTTP", SocketAddr::new(args.address, args.http_port)).await?;
    let grpc = bind("gRPC", SocketAddr::new(args.address, args.grpc_port)).await?;
    let metrics_listener =
        bind("metrics", SocketAddr::new(args.address, args.metrics_port)).await?;
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        http = %local(&http),
        grpc = %local(&grpc),
        metrics = %local(&metrics_listener),
        repository = %repository.root().display(),
        "nexus serving"
    );

    let manager = ModelManager::new(
        repository,
        ManagerOptions {
            control_mode: args.model_control_mode,
            default_max_batch_size: args.default_max_batch_size,
            instances: args.instances,
            queue_capacity: args.max_queue_size,
            intra_op_threads: args.ort_intra_threads,
        },
    );
    let startup = {
        let manager = Arc::clone(&manager);
        let explicit = args.load_models.clone();
        let poll = (args.model_control_mode == ControlMode::Poll)
            .then(|| Duration::from_secs(args.repository_poll_secs.max(1)));
        tokio::spawn(async move {
            manager.start(&explicit).await;
            if let Some(interval) = poll {
                manager.poll(interval).await;
            }
        })
    };

    let shutdown = shutdown.shared();
    let http_app = http::server::router(Arc::new(http::server::HttpState {
        manager: Arc::clone(&manager),
        max_request_bytes: args.max_request_bytes,
    }))
    .layer(
        tower::ServiceBuilder::new()
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .layer(tower_http::decompression::RequestDecompressionLayer::new()),
    );
    let metrics_app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let prometheus = prometheus.clone();
            async move { prometheus.render() }
        }),
    );

    let http_server = axum::serve(http, http_app).with_graceful_shutdown(shutdown.clone());
    let metrics_server =
        axum::serve(metrics_listener, metrics_app).with_graceful_shutdown(shutdown.clone());
    let grpc_server = tonic::transport::Server::builder()
        .add_service(grpc::server::service(
            Arc::clone(&manager),
            args.max_request_bytes,
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), shutdown.clone());

    let result = tokio::try_join!(
        async {
            http_server
                .await
                .map_err(|e| ServeError::Server(format!("HTTP server: {e}")))
        },
        async {
            metrics_server
                .await
                .map_err(|e| ServeError::Server(format!("metrics server: {e}")))
        },
        async {
            grpc_server
                .await
                .map_err(|e| ServeError::Server(format!("gRPC server: {e}")))
        },
    );
    startup.abort();
    result.map(|_| ())
}
