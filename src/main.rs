//! `nexus`: the command line. It parses arguments and wires the crates together; the
//! work happens in `nexus-serving`, `nexus-models` and `nexus-bench`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use nexus_bench::BenchCommand;
use nexus_serving::ServeArgs;

/// Nexus: ML inference (KServe V2 / Triton protocol over HTTP and gRPC) in one binary.
#[derive(Parser)]
#[command(name = "nexus", version, about)]
struct Cli {
    /// Log format: text for people, json for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a Triton-layout model repository over KServe V2 HTTP and gRPC.
    Serve {
        /// Model repository: <repo>/<model>/[config.pbtxt] and <repo>/<model>/<version>/model.onnx.
        #[arg(long, value_name = "PATH")]
        model_repository: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Everything on one machine with embedded defaults: serves the example models.
    Up {
        /// Model repository to serve (default: the examples made by scripts/setup.sh).
        #[arg(long, value_name = "PATH", default_value = "examples/models")]
        model_repository: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Benchmark any KServe V2 server (HTTP JSON/binary, gRPC) or ONNX Runtime in-process.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve {
            model_repository,
            serve,
        } => nexus_serving::serve(model_repository, serve, shutdown_signal())
            .await
            .context("nexus serve failed"),
        Command::Up {
            model_repository,
            serve,
        } => {
            if !model_repository.is_dir() {
                anyhow::bail!(
                    "model repository {} not found; run scripts/setup.sh to build the example models",
                    model_repository.display()
                );
            }
            nexus_serving::serve(model_repository, serve, shutdown_signal())
                .await
                .context("nexus up failed")
        }
        Command::Bench { command } => match command {
            BenchCommand::Run(args) => nexus_bench::run(*args).await.map(|_| ()),
            BenchCommand::Report(args) => {
                print!("{}", nexus_bench::report::write(&args.dir, &args.title)?);
                Ok(())
            }
        },
    }
}
