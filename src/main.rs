//! `nexus`: the command line. It parses arguments and wires the crates together (the table
//! of runtimes, the registry as serving's model source, the event bus and the optimiser, the
//! gateway, the web console); each command's work happens in a library crate: serving, the
//! registry and its `nexus models` client, the pipelines, the gateway's `nexus token`, the
//! benchmarks (docs/architecture.md has the map).

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

mod config;

use std::net::IpAddr;
use std::sync::Arc;

use nexus_bench::BenchCommand;
use nexus_events::{EventBus, KafkaArgs};
use nexus_gateway::cli::TokenCommand;
use nexus_gateway::tls::ServerTls;
use nexus_gateway::{AuthConfig, Gateway, KeyStore, TlsConfig, check_bind};
use nexus_models::Backends;
use nexus_optimizer::{Optimizer, OptimizerArgs};
use nexus_pipelines::cli::PipelineCommand;
use nexus_pipelines::{ArtifactStore, PipelineArgs};
use nexus_registry::RegistryArgs;
use nexus_registry::cli::ModelsCommand;
use nexus_registry::client::{Reference, RegistryClient};
use nexus_serving::remote::BoxFuture;
use nexus_serving::{Component, Extensions, InferenceHooks, ModelSource, ServeArgs, check_fn};
use nexus_telemetry::OtlpProtocol;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Nexus: ML inference (KServe V2 / Triton protocol over HTTP and gRPC) in one binary.
#[derive(Parser)]
#[command(name = "nexus", version, about)]
struct Cli {
    /// Log format: text for people, json for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318); incoming
    /// W3C `traceparent` headers make Nexus's spans part of the caller's trace.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
    /// OTLP body encoding.
    #[arg(long, global = true, value_enum, default_value_t = OtlpProtocol::HttpProtobuf)]
    otlp_protocol: OtlpProtocol,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The event bus and the optimiser that feeds on it (`serve` and `up`).
#[derive(clap::Args)]
struct TuningArgs {
    /// Config file (TOML, or YAML by extension) with any of these options as keys (flag names
    /// with _ for -); NEXUS_<KEY> environment variables override it, flags override both.
    #[arg(long, env = "NEXUS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Turn off inference events, feedback and the optimiser (requests get no server-issued id).
    #[arg(long)]
    no_events: bool,
    #[command(flatten)]
    events: KafkaArgs,
    #[command(flatten)]
    optimizer: OptimizerArgs,
}

/// The optimiser as serving sees it, and the bus to flush at shutdown.
struct Tuning {
    hooks: Option<Arc<dyn InferenceHooks>>,
    routes: axum::Router,
    bus: Option<Arc<dyn EventBus>>,
    /// The events and optimiser entries of `/api/v1/services`.
    components: Vec<Component>,
}

impl TuningArgs {
    /// Connects the bus and builds the optimiser: serving's hooks and its HTTP routes.
    async fn open(&self) -> anyhow::Result<Tuning> {
        if self.no_events {
            return Ok(Tuning {
                hooks: None,
                routes: axum::Router::new(),
                bus: None,
                components: Vec::new(),
            });
        }
        let bus = nexus_events::open(&self.events)
            .await
            .context("connecting the event bus")?;
        tracing::info!(bus = bus.kind(), "event bus ready");
        let optimizer = Optimizer::new(self.optimizer.clone(), Arc::clone(&bus));
        let address = match &self.events.brokers {
            Some(brokers) => format!("kafka://{brokers}"),
            None => "in-process".to_string(),
        };
        let probe = Arc::clone(&bus);
        let events = Component::new("events", address).check(
            "bus",
            check_fn(move || {
                let bus = Arc::clone(&probe);
                Box::pin(async move { bus.healthy().await.map_err(|e| e.to_string()) })
            }),
        );
        Ok(Tuning {
            routes: nexus_optimizer::api::router(Arc::clone(&optimizer)),
            hooks: Some(optimizer),
            bus: Some(bus),
            components: vec![events, Component::new("optimizer", "/api/v1/optimizer")],
        })
    }
}

impl Tuning {
    /// Hands events still queued to the broker before the process exits.
    async fn flush(&self) {
        if let Some(bus) = &self.bus {
            bus.flush().await;
        }
    }
}

/// The registry and pipelines entries of `/api/v1/services`: both need the database, the
/// registry also its artifact store.
fn registry_components(registry: &Arc<nexus_registry::Registry>, url: &str) -> Vec<Component> {
    let database = {
        let registry = Arc::clone(registry);
        check_fn(move || {
            let registry = Arc::clone(&registry);
            Box::pin(async move { registry.store.ping().await.map_err(|e| e.to_string()) })
        })
    };
    let artifacts = {
        let registry = Arc::clone(registry);
        check_fn(move || {
            let registry = Arc::clone(&registry);
            Box::pin(async move { registry.artifacts.ping().await.map_err(|e| e.to_string()) })
        })
    };
    vec![
        Component::new("registry", format!("{url}/api/2.0/mlflow"))
            .check("database", Arc::clone(&database))
            .check("artifacts", artifacts),
        Component::new("pipelines", format!("{url}/api/v1/pipelines")).check("database", database),
    ]
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration of `nexus up` (file, NEXUS_* environment, then the
    /// flags given here), secrets masked, as a config file `--config` accepts.
    #[command(after_help = "Example:\n  nexus config show --config nexus.toml --http-port 9000")]
    Show {
        /// `nexus up` flags, e.g. --config nexus.toml --http-port 9000.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Serve Triton-layout model repositories and registry models over KServe V2 HTTP and gRPC.
    #[command(
        after_help = "Examples:\n  nexus serve --model-repository /models\n  nexus serve --model models:/fraud@champion --registry-url http://registry:8000 --auth"
    )]
    Serve {
        /// Model repository: <repo>/<model>/[config.pbtxt] and <repo>/<model>/<version>/model.onnx
        /// (repeatable; searched in order).
        #[arg(long, value_name = "PATH")]
        model_repository: Vec<PathBuf>,
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        tuning: Box<TuningArgs>,
        #[command(flatten)]
        front: Box<FrontArgs>,
    },
    /// Everything on one machine with embedded defaults: serves the example models, with
    /// the MLflow-compatible registry on the same HTTP port.
    #[command(
        after_help = "Examples:\n  nexus up\n  nexus up --model-repository /models --database-url postgres://nexus@db/nexus --kafka-brokers kafka:9092"
    )]
    Up {
        /// Model repository to serve (default: the examples made by scripts/setup.sh).
        #[arg(long, value_name = "PATH", default_value = "examples/models")]
        model_repository: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        pipelines: Box<PipelineArgs>,
        #[command(flatten)]
        tuning: Box<TuningArgs>,
        #[command(flatten)]
        front: Box<FrontArgs>,
    },
    /// Create, list and revoke API keys (stored hashed in the registry's database).
    #[command(after_help = "Example:\n  nexus token create --role admin --data-dir .nexus/data")]
    Token {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The model registry and experiment tracking alone, speaking MLflow's REST API.
    #[command(
        after_help = "Example:\n  nexus registry --port 5000 --database-url postgres://nexus@db/nexus --artifacts-destination s3://ml/artifacts"
    )]
    Registry {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        address: IpAddr,
        /// HTTP port (MLFLOW_TRACKING_URI=http://ADDRESS:PORT).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        front: Box<FrontArgs>,
    },
    /// Push, list and alias models in a registry (Nexus's or MLflow's).
    #[command(after_help = "Example:\n  nexus models --registry-url http://nexus:8000 list")]
    Models {
        /// The registry's URL.
        #[arg(
            long,
            global = true,
            env = "MLFLOW_TRACKING_URI",
            default_value = "http://127.0.0.1:8000"
        )]
        registry_url: String,
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Submit and follow pipeline runs (Nexus YAML or compiled KFP) on a Nexus server.
    #[command(
        after_help = "Example:\n  nexus pipeline --url http://nexus:8000 submit pipeline.yaml --wait"
    )]
    Pipeline {
        /// The Nexus server's URL.
        #[arg(
            long,
            global = true,
            env = "NEXUS_URL",
            default_value = "http://127.0.0.1:8000"
        )]
        url: String,
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Show configuration.
    #[command(after_help = "Example:\n  nexus config show --config nexus.toml")]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Benchmark any KServe V2 server (HTTP JSON/binary, gRPC) or a model runtime in-process.
    #[command(
        after_help = "Example:\n  nexus bench run --model simple --protocol grpc --concurrency 1,16"
    )]
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The NVIDIA GPUs here (NVML and the CUDA driver) and, for each runtime, whether it can
    /// run models on them and, if not, why and which install step fixes it. Exits 0 without
    /// a GPU.
    #[command(after_help = "Examples:\n  nexus gpu\n  CUDA_VISIBLE_DEVICES=1 nexus gpu --json")]
    Gpu {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// ONNX Runtime library to check instead of the one serving would find.
        #[arg(long, value_name = "PATH")]
        ort_library: Option<PathBuf>,
    },
}

/// Serving's registry seam, answered by the MLflow REST client.
struct RegistrySource(RegistryClient);

impl ModelSource for RegistrySource {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let reference = match reference.parse::<u64>() {
                Ok(_) => Reference::Version(reference.to_string()),
                Err(_) => Reference::Alias(reference.to_string()),
            };
            self.0
                .resolve(name, &reference)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn set_alias<'a>(
        &'a self,
        name: &'a str,
        alias: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .set_alias(name, alias, version)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn fetch<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
        dest: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .fetch_version(name, version, dest)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The runtimes `serve` and `up` open models with, in order of preference when a model's
/// config names none and its folder could be served by several.
/// `ort_library` is `--ort-library`. Building the table loads no runtime library.
fn backends(ort_library: Option<PathBuf>) -> Backends {
    Backends::new(vec![
        Arc::new(nexus_backend_onnx::OnnxRuntime::new(ort_library)),
        Arc::new(nexus_backend_torch::TorchRuntime::default()),
        Arc::new(nexus_backend_candle::CandleRuntime),
    ])
}

fn registry_source(url: &str, token: Option<&str>) -> Arc<dyn ModelSource> {
    Arc::new(RegistrySource(RegistryClient::with_token(url, token)))
}

/// MLflow's variable for the registry credential, used by every client Nexus runs.
fn tracking_token() -> Option<String> {
    std::env::var("MLFLOW_TRACKING_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}

/// Authentication, rate limits and TLS of `serve`, `up` and `registry`.
#[derive(clap::Args)]
struct FrontArgs {
    #[command(flatten)]
    auth: AuthConfig,
    #[command(flatten)]
    tls: TlsConfig,
    /// Allow listening on a non-loopback address without authentication.
    #[arg(long)]
    insecure: bool,
}

impl FrontArgs {
    /// The gateway (API keys from `keys` when given) and TLS settings; refuses an open
    /// server on a non-loopback address unless --insecure.
    async fn open(
        &self,
        address: IpAddr,
        keys: Option<KeyStore>,
    ) -> anyhow::Result<(Gateway, Option<ServerTls>)> {
        let gateway = Gateway::new(&self.auth, keys)
            .await
            .context("configuring authentication")?;
        check_bind(address, gateway.enabled(), self.insecure)?;
        let tls = self.tls.server_config().context("configuring TLS")?;
        Ok((gateway, tls))
    }
}

/// The web console's page and files, and the `whoami` it learns the caller's rights from:
/// on the HTTP port of `serve`, `up` and `registry`. The page shows the parts that
/// `/api/v1/services` lists (all the registry when the process has no such list).
fn console_routes(gateway: &Gateway) -> axum::Router {
    nexus_console::router().merge(nexus_gateway::whoami::router(gateway))
}

/// Logs to stderr (text or JSON) and, with an OTLP endpoint, spans to the collector; the
/// returned provider flushes the last spans at exit.
fn init_logging(cli: &Cli) -> anyhow::Result<Option<SdkTracerProvider>> {
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let provider = cli
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| nexus_telemetry::otlp_provider(endpoint, cli.otlp_protocol))
        .transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("nexus")));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match cli.log_format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    Ok(provider)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// mimalloc, not glibc's malloc: a request makes many small allocations on whichever tokio
/// worker runs it and frees them on another (parsing, tensors, batching's join and split,
/// replies), and glibc's malloc/free were about a sixth of the server's samples at c=16.
/// Side by side with the same client, with the purge delay below: 1.08-1.27x the infer/s at
/// c=16 and c=64 over HTTP and gRPC (benches/results/NOTES.md, "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps a thread's freed pages before giving them back: its default
/// (10 ms) let RSS creep up by ~12 bytes per request across a dozen allocating threads
/// (tests/memory.rs); 1 ms keeps it flat and most of the speed (0 ms kept neither).
const PURGE_DELAY_MS: std::ffi::c_long = 1;

fn set_purge_delay() {
    // `mi_option_purge_delay`: 15 in mimalloc's `mi_option_t`, between the
    // `eager_commit_delay` (14) and `use_numa_nodes` (16) the bindings name.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an option mimalloc reads each time it purges; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    set_purge_delay();
    let argv = config::layered(&Cli::command(), std::env::args_os().collect())?;
    let cli = Cli::parse_from(argv);
    let traces = init_logging(&cli)?;
    let result = run(cli).await;
    if let Some(provider) = traces {
        // Exports what is still batched; the exporter blocks, so off the async workers.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            model_repository,
            serve,
            tuning,
            front,
        } => {
            let (gateway, tls) = front.open(serve.address, None).await?;
            let tuning = tuning.open().await?;
            let token = tracking_token();
            let extensions = Extensions {
                routes: console_routes(&gateway).merge(tuning.routes.clone()),
                source: serve
                    .registry_url
                    .as_deref()
                    .map(|url| registry_source(url, token.as_deref())),
                hooks: tuning.hooks.clone(),
                components: tuning.components.clone(),
                gateway: Some(gateway),
                tls,
                backends: backends(serve.ort_library.clone()),
            };
            let served =
                nexus_serving::serve(model_repository, serve, extensions, shutdown_signal())
                    .await
                    .context("nexus serve failed");
            tuning.flush().await;
            served
        }
        Command::Up {
            model_repository,
            serve,
            registry,
            pipelines,
            tuning,
            front,
        } => {
            if !model_repository.is_dir() {
                anyhow::bail!(
                    "model repository {} not found; run scripts/setup.sh to build the example models",
                    model_repository.display()
                );
            }
            let registry_args = registry;
            let registry = nexus_registry::Registry::open(&registry_args)
                .await
                .context("opening the registry")?;
            let own_url = format!("http://{}:{}", serve.address, serve.http_port);
            let (store, root) = registry.artifacts.object_store();
            let engine = pipelines
                .open(
                    registry.store.pool().clone(),
                    &registry_args.data_dir,
                    ArtifactStore::new(store, root, registry.artifacts.destination()),
                    own_url.clone(),
                )
                .await
                .context("starting the pipeline runner")?;
            // Registry models come from this very server unless another registry is named.
            let url = serve
                .registry_url
                .clone()
                .unwrap_or_else(|| own_url.clone());
            let keys = KeyStore::new(registry.store.pool().clone());
            let (gateway, tls) = front.open(serve.address, Some(keys)).await?;
            // This server's own registry calls (watcher, promotions) carry its internal
            // credential when auth is on; another registry gets MLFLOW_TRACKING_TOKEN.
            let token = match serve.registry_url {
                None if gateway.enabled() => Some(gateway.internal_token().to_string()),
                _ => tracking_token(),
            };
            let tuning = tuning.open().await?;
            let extensions = Extensions {
                routes: registry
                    .router()
                    .merge(nexus_pipelines::api::router(engine))
                    .merge(tuning.routes.clone())
                    .merge(console_routes(&gateway)),
                source: Some(registry_source(&url, token.as_deref())),
                hooks: tuning.hooks.clone(),
                components: registry_components(&registry, &own_url)
                    .into_iter()
                    .chain(tuning.components.iter().cloned())
                    .collect(),
                gateway: Some(gateway),
                tls,
                backends: backends(serve.ort_library.clone()),
            };
            let served =
                nexus_serving::serve(vec![model_repository], serve, extensions, shutdown_signal())
                    .await
                    .context("nexus up failed");
            tuning.flush().await;
            served
        }
        Command::Registry {
            address,
            port,
            registry,
            front,
        } => {
            let registry = nexus_registry::Registry::open(&registry)
                .await
                .context("opening the registry")?;
            let keys = KeyStore::new(registry.store.pool().clone());
            let (gateway, tls) = front.open(address, Some(keys)).await?;
            let addr = std::net::SocketAddr::new(address, port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the registry on {addr}"))?;
            tracing::info!(%addr, tls = tls.is_some(), auth = gateway.enabled(), "registry serving MLflow REST");
            nexus_gateway::serve_http(
                registry
                    .router()
                    .merge(console_routes(&gateway))
                    .layer(gateway.http_layer()),
                listener,
                tls,
                shutdown_signal(),
            )
            .await
            .context("nexus registry failed")
        }
        Command::Models {
            registry_url,
            command,
        } => {
            let client = RegistryClient::with_token(&registry_url, tracking_token().as_deref());
            let runtimes = backends(None);
            let package = |path: &std::path::Path, platform: Option<&str>| {
                let files = nexus_models::package::package(path, &runtimes, platform)?;
                Ok(files.into_iter().map(|f| (f.name, f.path)).collect())
            };
            nexus_registry::cli::run(&client, command, &package).await
        }
        Command::Token { registry, command } => {
            // Keys may be made before the first `nexus up` created the data folder.
            std::fs::create_dir_all(&registry.data_dir).with_context(|| {
                format!(
                    "cannot create the data folder {}",
                    registry.data_dir.display()
                )
            })?;
            let store = nexus_registry::store::Store::open(&registry.database_url())
                .await
                .context("opening the registry database")?;
            nexus_gateway::cli::run(store.pool().clone(), command)
                .await
                .map_err(Into::into)
        }
        Command::Pipeline { url, command } => nexus_pipelines::cli::run(&url, command).await,
        Command::Config {
            command: ConfigCommand::Show { args },
        } => {
            print!("{}", config::show(&Cli::command(), args)?);
            Ok(())
        }
        Command::Gpu { json, ort_library } => {
            let gpus = nexus_gpu::Gpus::discover(None).map_err(anyhow::Error::msg)?;
            let runtimes = backends(ort_library)
                .all()
                .map(|runtime| {
                    let support = runtime.gpu_support();
                    nexus_gpu::report::RuntimeSupport {
                        runtime: runtime.backend().to_string(),
                        usable: support.is_ok(),
                        detail: support.unwrap_or_else(|why| why),
                    }
                })
                .collect();
            let report = nexus_gpu::report::Report::gather(&gpus, runtimes);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::Bench { command } => match command {
            BenchCommand::Run(args) => nexus_bench::run(*args, &backends(None)).await.map(|_| ()),
            BenchCommand::Report(args) => {
                print!("{}", nexus_bench::report::write(&args.dir, &args.title)?);
                Ok(())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command and subcommand ends its `--help` with an example.
    #[test]
    fn every_command_shows_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                let example = sub
                    .get_after_help()
                    .is_some_and(|h| h.to_string().starts_with("Example"));
                if !example {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "nexus", &mut missing);
        assert!(missing.is_empty(), "no example in --help of: {missing:?}");
    }

    /// The options of a command group are accepted before and after its subcommand.
    #[test]
    fn group_options_go_before_or_after_the_subcommand() {
        for (group, option, sub) in [
            ("token", ["--data-dir", "d"], ["create", "--role", "admin"]),
            ("token", ["--database-url", "sqlite://x"], ["list", "", ""]),
            ("models", ["--registry-url", "http://r"], ["list", "", ""]),
            ("pipeline", ["--url", "http://p"], ["list", "", ""]),
        ] {
            let sub: Vec<&str> = sub.into_iter().filter(|a| !a.is_empty()).collect();
            let before = [&["nexus", group][..], &option, &sub].concat();
            let after = [&["nexus", group][..], &sub, &option].concat();
            for args in [before, after] {
                if let Err(e) = Cli::try_parse_from(&args) {
                    panic!("{args:?}: {e}");
                }
            }
        }
    }
}
