//! Serving: KServe V2 inference over HTTP and gRPC with Triton's extensions, the model
//! manager with its instance pools, and Prometheus metrics.
//!
//! Each listener is built next to its server (`http::server::run`, `grpc::server::run`,
//! `metrics::run`); [`serve`] binds their ports, starts the manager and joins them.

pub mod batcher;
pub mod budget;
pub mod error;
pub mod grpc;
pub mod health;
pub mod hooks;
pub mod http;
pub mod infer;
pub mod instance;
pub mod limits;
pub mod manager;
pub mod metadata;
pub mod metrics;
pub mod queue;
pub mod remote;
pub mod scheduler;
pub mod shm;
mod trace;
pub mod version;
pub mod watcher;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;

use nexus_models::ModelRepository;

pub use error::{ServeError, ServingError};
pub use grpc::server::GRPC_MAX_CONCURRENT_STREAMS;
pub use health::{Component, HealthCheck, check_fn};
pub use hooks::{InferenceRecord, Protocol};
pub use manager::{ControlMode, InferenceHooks, ManagerOptions, ModelManager, ServingHandle};
pub use metadata::{SERVER_EXTENSIONS, SERVER_NAME, SERVER_VERSION};
pub use remote::{ModelSource, RemoteSpec};
pub use watcher::Watcher;

/// How often NVML is read into the `nv_gpu_*` metrics (Triton's default metrics interval).
const GPU_METRICS_INTERVAL: Duration = Duration::from_secs(2);

/// Messages and service of `inference.GRPCInferenceService` (grpc_service.proto).
pub mod pb {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    tonic::include_proto!("inference");
}

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
    /// repository API asks for; poll: load every model and apply repository changes;
    /// on-demand: as explicit, and a request for a model that is not loaded loads it.
    #[arg(long, value_enum, default_value_t = ControlMode::None)]
    pub model_control_mode: ControlMode,
    /// Model to load at start-up in explicit and on-demand modes (repeatable; `*` loads all).
    #[arg(long = "load-model", value_name = "MODEL")]
    pub load_models: Vec<String>,
    /// Memory the loaded models may hold, per device: cpu=SIZE (resident memory), gpu=SIZE
    /// (each GPU) or gpuN=SIZE, e.g. `cpu=8GiB,gpu=20GiB` (repeatable). A load that would
    /// exceed it fails with the numbers; in on-demand mode the least recently used idle models
    /// are unloaded first.
    #[arg(long, value_delimiter = ',', value_name = "DEVICE=SIZE")]
    pub model_memory_budget: Vec<budget::BudgetEntry>,
    /// Seconds a request waits for its model to load in on-demand mode (UNAVAILABLE after).
    #[arg(long, default_value_t = 120)]
    pub model_load_timeout_secs: u64,
    /// Seconds between repository scans in poll mode.
    #[arg(long, default_value_t = 15)]
    pub repository_poll_secs: u64,
    /// max_batch_size given to models without config.pbtxt whose first dimensions are dynamic.
    #[arg(long, default_value_t = 4)]
    pub default_max_batch_size: i32,
    /// Instances per model version, overriding the count of each instance_group (on each of a
    /// GPU group's GPUs).
    #[arg(long)]
    pub instances: Option<usize>,
    /// Requests that may wait for an instance per model version; more get UNAVAILABLE.
    #[arg(long, default_value_t = 1024)]
    pub max_queue_size: usize,
    /// Largest HTTP request body or gRPC message accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// Bytes of request bodies and gRPC messages the server holds at once, over every
    /// connection; requests beyond it get HTTP 503 / gRPC UNAVAILABLE and may be retried.
    /// Decoded tensors take up to a few times their request's size on top of this.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_INFLIGHT_BYTES)]
    pub max_inflight_bytes: usize,
    /// Intra-op threads per instance when the model config sets none (0: the runtime's default).
    #[arg(long, default_value_t = 0)]
    pub ort_intra_threads: usize,
    /// Path of libonnxruntime.so (default: $ORT_DYLIB_PATH, then .nexus/lib/ found from here).
    #[arg(long, value_name = "PATH")]
    pub ort_library: Option<PathBuf>,
    /// GPUs models may be placed on, as CUDA ordinals (numbered after CUDA_VISIBLE_DEVICES),
    /// e.g. `--gpus 0,2` (default: every visible GPU). Naming a GPU that is not there stops
    /// start-up.
    #[arg(long, value_delimiter = ',', value_name = "ORDINALS")]
    pub gpus: Option<Vec<i32>>,
    /// A registry model to serve, models:/NAME@ALIAS or models:/NAME/VERSION (repeatable);
    /// an alias is followed: when it moves, the new version is swapped in without failing requests.
    #[arg(long = "model", value_name = "URI")]
    pub models: Vec<String>,
    /// The registry holding --model references (MLflow REST; default: this server in `nexus up`).
    #[arg(long, env = "MLFLOW_TRACKING_URI")]
    pub registry_url: Option<String>,
    /// Seconds between checks of where each --model alias points.
    #[arg(long, default_value_t = 5)]
    pub registry_poll_secs: u64,
    /// Folder where registry models are downloaded.
    #[arg(long, default_value = ".nexus/model-cache")]
    pub model_cache: PathBuf,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// What other components add to the server.
#[derive(Default)]
pub struct Extensions {
    /// Routes served on the same HTTP port (the registry, in `nexus up`).
    pub routes: axum::Router,
    /// Where `--model models:/…` references are resolved.
    pub source: Option<Arc<dyn ModelSource>>,
    /// Routing between versions and a record of every inference (the optimiser).
    pub hooks: Option<Arc<dyn InferenceHooks>>,
    /// The other parts of the process, for `/health/ready` and `/api/v1/services`.
    pub components: Vec<Component>,
    /// Authentication, authorisation and rate limits for HTTP and gRPC (none: open).
    pub gateway: Option<nexus_gateway::Gateway>,
    /// TLS (and mTLS) for the HTTP and gRPC listeners.
    pub tls: Option<nexus_gateway::tls::ServerTls>,
    /// The runtimes models can be served with (the binary lists the `backends/` crates).
    pub backends: nexus_models::Backends,
}

/// Runs the inference server on the model repositories `roots` (searched in order) and
/// the registry models of `--model`, until `shutdown` completes.
pub async fn serve(
    roots: Vec<PathBuf>,
    args: ServeArgs,
    extensions: Extensions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let specs = args
        .models
        .iter()
        .map(|uri| RemoteSpec::parse(uri))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServeError::Server)?;
    let mut roots = roots;
    let registry = extensions.source.clone();
    let source = match (specs.is_empty(), extensions.source) {
        (true, _) => None,
        (false, Some(source)) => {
            std::fs::create_dir_all(&args.model_cache).map_err(|e| {
                ServeError::Server(format!(
                    "cannot create the model cache {}: {e}",
                    args.model_cache.display()
                ))
            })?;
            roots.push(args.model_cache.clone());
            Some(source)
        }
        (false, None) => {
            return Err(ServeError::Server(
                "--model needs a registry (--registry-url)".into(),
            ));
        }
    };
    if roots.is_empty() {
        return Err(ServeError::Server(
            "nothing to serve: give --model-repository or --model".into(),
        ));
    }
    let repository = ModelRepository::open_all(roots)?;
    let prometheus = metrics::prometheus().map_err(ServeError::Server)?;
    let gpus = nexus_gpu::Gpus::discover(args.gpus.clone()).map_err(ServeError::Server)?;
    let visible = gpus.visible();
    // Why no GPU is usable here, if none is (for CUDA shared memory).
    let no_gpu = match &visible {
        Ok(visible) if !visible.is_empty() => {
            let names: Vec<String> = visible
                .iter()
                .map(|v| format!("cuda:{} {} ({})", v.ordinal, v.gpu.name, v.gpu.uuid))
                .collect();
            tracing::info!(gpus = ?names, "GPUs models may be placed on");
            None
        }
        Ok(_) => {
            tracing::info!("no GPU is visible to this process: models run on the CPU");
            Some("no GPU is visible to this process".to_string())
        }
        Err(why) => {
            tracing::info!(%why, "no GPUs: models run on the CPU");
            Some(why.clone())
        }
    };
    let first = visible.unwrap_or_default();
    nexus_gpu::metrics::spawn_sampler(gpus.clone(), &first, GPU_METRICS_INTERVAL);
    budget::tune_heap();
    let memory_budget = budget::MemoryBudget::new(&args.model_memory_budget);
    let ordinals: Vec<i32> = first.iter().map(|v| v.ordinal).collect();
    budget::export(&memory_budget, &ordinals);
    for (device, bytes) in memory_budget.devices(&ordinals) {
        tracing::info!(%device, budget = %budget::human(bytes), "model memory budget");
    }

    let http = bind("HTTP", SocketAddr::new(args.address, args.http_port)).await?;
    let grpc = bind("gRPC", SocketAddr::new(args.address, args.grpc_port)).await?;
    let metrics_listener =
        bind("metrics", SocketAddr::new(args.address, args.metrics_port)).await?;
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        http = %local(&http),
        grpc = %local(&grpc),
        metrics = %local(&metrics_listener),
        repository = ?repository.roots(),
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
            backends: extensions.backends.clone(),
            gpus,
            memory_budget,
            load_timeout: Duration::from_secs(args.model_load_timeout_secs.max(1)),
        },
    );
    if let Some(hooks) = &extensions.hooks {
        manager.set_hooks(Arc::clone(hooks));
        Arc::clone(hooks).started(ServingHandle {
            manager: Arc::clone(&manager),
            source: registry,
            remote: specs.clone(),
        });
    }
    let startup = {
        let manager = Arc::clone(&manager);
        let explicit = args.load_models.clone();
        let poll = (args.model_control_mode == ControlMode::Poll)
            .then(|| Duration::from_secs(args.repository_poll_secs.max(1)));
        let watchers = match &source {
            Some(source) => Watcher::for_specs(&specs, source, &manager, &args.model_cache)
                .map_err(ServeError::Server)?,
            None => Vec::new(),
        };
        let interval = Duration::from_secs(args.registry_poll_secs.max(1));
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for mut watcher in watchers {
                if let Err(e) = watcher.sync().await {
                    tracing::warn!(error = %e, "registry model not loaded; retrying");
                }
                running.spawn(watcher.watch(interval));
            }
            manager.start(&explicit).await;
            if let Some(interval) = poll {
                running.spawn(Arc::clone(&manager).poll(interval));
            }
            running.join_all().await;
        })
    };

    let shutdown = shutdown.shared();
    if args.max_inflight_bytes < args.max_request_bytes {
        tracing::warn!(
            max_inflight_bytes = args.max_inflight_bytes,
            max_request_bytes = args.max_request_bytes,
            "--max-inflight-bytes is below --max-request-bytes: requests larger than it are always refused"
        );
    }
    let inflight = limits::InflightBytes::new(args.max_inflight_bytes);
    let shm = Arc::new(shm::SharedMemory::new(no_gpu));
    let health = health::router(
        Arc::clone(&manager),
        format!(
            "http://{}, grpc://{}, http://{}/metrics",
            local(&http),
            local(&grpc),
            local(&metrics_listener)
        ),
        extensions.components,
    );
    let gateway = match extensions.gateway {
        Some(gateway) => gateway,
        None => nexus_gateway::Gateway::new(&nexus_gateway::AuthConfig::default(), None)
            .await
            .map_err(|e| ServeError::Server(e.to_string()))?,
    };

    let http_server = http::server::run(
        http,
        Arc::new(http::server::HttpState {
            manager: Arc::clone(&manager),
            max_request_bytes: args.max_request_bytes,
            inflight: Arc::clone(&inflight),
            shm: Arc::clone(&shm),
        }),
        extensions
            .routes
            .merge(metrics::http_router(prometheus.clone())),
        health,
        &gateway,
        extensions.tls.clone(),
        shutdown.clone(),
    );
    let metrics_server = metrics::run(metrics_listener, prometheus, shutdown.clone());
    let grpc_server = grpc::server::run(
        grpc,
        grpc::server::service(Arc::clone(&manager), args.max_request_bytes, inflight, shm),
        &gateway,
        extensions.tls,
        shutdown.clone(),
    );

    let result = tokio::try_join!(http_server, metrics_server, grpc_server);
    startup.abort();
    result.map(|_| ())
}
