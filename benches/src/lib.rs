//! `nexus bench`: a closed-loop load generator for any KServe V2 server, over HTTP
//! (JSON or binary tensors) or gRPC, plus the model's runtime in-process as the floor. Each run
//! is a concurrency sweep saved as JSON; `report` merges runs into a markdown table and
//! a throughput/latency plot, so several servers can be compared side by side. With `--gpu`
//! each level also records the GPUs' utilisation and memory used over time.

pub mod gpu;
pub mod load;
pub mod report;
pub mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use nexus_models::{Backends, DataType, Device};

use crate::gpu::{LevelGpu, RunGpu, Sampler, Source};
use crate::load::{Level, Schedule};
use crate::target::{Connection, InProcess, InputSpec, Protocol, Request};

/// `nexus bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Drive a server (or the model's runtime in-process) through a concurrency sweep and save the results.
    #[command(
        after_help = "Examples:\n  nexus bench run --model simple --protocol http-json --http-url http://127.0.0.1:8000 --concurrency 1,4,16\n  nexus bench run --model minilm --protocol in-process --model-file examples/models/minilm/1 --input text:BYTES:1,1"
    )]
    Run(Box<RunArgs>),
    /// Merge saved results into a markdown table and a throughput/latency plot.
    #[command(
        after_help = "Example:\n  nexus bench report --dir bench-results --title \"simple, 2 cores\""
    )]
    Report(ReportArgs),
}

/// Options of `nexus bench run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Model name on the server (for --protocol in-process: a label).
    #[arg(long)]
    pub model: String,
    /// http-json, http-binary, grpc, or in-process (needs --model-file; `ort` is an alias).
    #[arg(long, value_enum, default_value_t = Protocol::HttpBinary)]
    pub protocol: Protocol,
    /// Base URL of the V2 HTTP endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub http_url: String,
    /// host:port of the V2 gRPC endpoint.
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub grpc_addr: String,
    /// Model for --protocol in-process: an .onnx or .pt file, or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    pub model_file: Option<PathBuf>,
    /// Intra-op threads per instance for --protocol in-process (ONNX Runtime, libtorch).
    #[arg(long, default_value_t = 1)]
    pub ort_threads: usize,
    /// Where --protocol in-process runs the model: cpu, or gpu:N (CUDA ordinal N), so a
    /// server on a GPU is compared with its runtime on the same GPU.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Rows per request: fills a dynamic first dimension.
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Full shape of an input, NAME=D1,D2,… (repeatable); overrides --batch for it.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<i64>)>,
    /// An input as NAME:DATATYPE:DIMS (repeatable), instead of reading model metadata.
    #[arg(long = "input", value_name = "NAME:DATATYPE:DIMS", value_parser = parse_input)]
    pub inputs: Vec<InputSpec>,
    /// JSON file {"INPUT": [values…]} with the data to send; random data otherwise.
    #[arg(long, value_name = "PATH")]
    pub input_data: Option<PathBuf>,
    /// Concurrency levels to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Warm-up before each level, in seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Measured time per level, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Measure this many requests per level instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// OS threads the load generator spreads its workers over, each with its own event loop
    /// (as wrk's -t); default: a quarter of this machine's cores, at least 1. Raise it if the
    /// client itself saturates a core at high concurrency.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub client_threads: Option<u16>,
    /// Name of this run in reports (default: the protocol).
    #[arg(long)]
    pub label: Option<String>,
    /// Folder for results: <label>.json, report.md and throughput_latency.svg.
    #[arg(long, default_value = "bench-results")]
    pub output: PathBuf,
    /// Sample GPU utilisation and memory used during each level (the server's nv_gpu_*
    /// metrics, else this machine's NVML); without a GPU the run still completes and
    /// records why nothing was sampled.
    #[arg(long)]
    pub gpu: bool,
    /// The server's Prometheus page, read by --gpu (Triton's and Nexus's port 8002). An
    /// in-process run reads this machine's NVML instead.
    #[arg(long, default_value = "http://127.0.0.1:8002/metrics")]
    pub metrics_url: String,
}

/// Options of `nexus bench report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Folder with the runs' JSON files; the report is written there too.
    #[arg(long, default_value = "bench-results")]
    pub dir: PathBuf,
    /// Title of the report.
    #[arg(long, default_value = "nexus bench")]
    pub title: String,
}

/// One saved sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub label: String,
    pub protocol: Protocol,
    pub model: String,
    pub batch: i64,
    pub target: String,
    pub levels: Vec<Level>,
    pub machine: String,
    pub date: String,
    /// With `--gpu`: where the GPU readings came from, or why there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<RunGpu>,
}

fn parse_dims(text: &str) -> Result<Vec<i64>, String> {
    text.split(',')
        .map(|d| {
            d.trim()
                .parse::<i64>()
                .map_err(|_| format!("'{d}' is not a dimension"))
        })
        .collect()
}

fn parse_shape(text: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = text.split_once('=').ok_or("expected NAME=D1,D2,…")?;
    Ok((name.to_string(), parse_dims(dims)?))
}

fn parse_device(text: &str) -> Result<Device, String> {
    match text.split_once(':') {
        None if text == "cpu" => Ok(Device::Cpu),
        Some(("gpu", ordinal)) => ordinal
            .parse::<i32>()
            .ok()
            .filter(|o| *o >= 0)
            .map(Device::Gpu)
            .ok_or_else(|| format!("'{ordinal}' is not a CUDA ordinal")),
        _ => Err("expected cpu or gpu:N, e.g. gpu:0".into()),
    }
}

fn parse_input(text: &str) -> Result<InputSpec, String> {
    let mut parts = text.splitn(3, ':');
    let (Some(name), Some(datatype), Some(dims)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("expected NAME:DATATYPE:DIMS, e.g. input:FP32:-1,4".into());
    };
    let datatype =
        DataType::parse(datatype).ok_or_else(|| format!("unknown datatype '{datatype}'"))?;
    Ok(InputSpec {
        name: name.to_string(),
        datatype,
        shape: parse_dims(dims)?,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// Runs a sweep, saves it as `<output>/<label>.json` and rewrites the folder's report.
/// `backends` are the runtimes `--protocol in-process` may load the model with.
pub async fn run(args: RunArgs, backends: &Backends) -> anyhow::Result<RunResult> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs positive levels, e.g. 1,4,16");
    }
    let schedule = Schedule {
        warmup: Duration::from_secs_f64(args.warmup_secs.max(0.0)),
        duration: Duration::from_secs_f64(args.duration_secs.max(0.1)),
        requests: args.requests,
    };
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{:?}", args.protocol).to_lowercase());
    let workers = args.concurrency.iter().copied().max().unwrap_or(1);
    let (mut driver, target) = Driver::open(&args, backends, workers).await?;
    let (sampler, run_gpu) = start_gpu(&args).await;
    let mut levels = Vec::new();
    for &c in &args.concurrency {
        let from_ms = sampler.as_ref().map(Sampler::elapsed_ms);
        let mut level = driver.level(c, args.batch as u64, schedule, &label).await?;
        if let (Some(sampler), Some(from_ms)) = (&sampler, from_ms) {
            let samples = sampler.take().await;
            let measured_from = from_ms + u64::try_from(schedule.warmup.as_millis()).unwrap_or(0);
            let summary = gpu::summarise(&samples, measured_from);
            level.gpu = Some(LevelGpu { samples, summary });
        }
        print_level(&label, &level);
        levels.push(level);
    }
    let result = RunResult {
        label: label.clone(),
        protocol: args.protocol,
        model: args.model.clone(),
        batch: args.batch,
        target,
        levels,
        machine: machine(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        gpu: run_gpu,
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let path = args.output.join(format!("{label}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", path.display()))?;
    report::write(&args.output, "nexus bench")?;
    Ok(result)
}

/// What a run drives: a prepared request to a server, or the model's runtime in-process.
enum Driver {
    /// The request and the number of client threads that send it.
    Server(Arc<Request>, usize),
    InProcess(InProcess),
}

impl Driver {
    /// Prepares the requests (or loads the instances) for `args`; returns the target too.
    async fn open(
        args: &RunArgs,
        backends: &Backends,
        workers: usize,
    ) -> anyhow::Result<(Self, String)> {
        if args.protocol == Protocol::InProcess {
            let file = args
                .model_file
                .as_ref()
                .context("--protocol in-process needs --model-file")?;
            let mut target = file.display().to_string();
            if let Device::Gpu(ordinal) = args.device {
                target.push_str(&format!(" on gpu:{ordinal}"));
            }
            let (mut local, discovered) =
                InProcess::open(backends, file, workers, args.ort_threads, args.device)?;
            let mut specs = if args.inputs.is_empty() {
                discovered
            } else {
                args.inputs.clone()
            };
            target::fill_shapes(&mut specs, args.batch, &args.shapes);
            local.inputs = tensors(args, &specs)?;
            return Ok((Driver::InProcess(local), target));
        }
        if args.device != Device::Cpu {
            bail!("--device is for --protocol in-process; a server places its own instances");
        }
        let target = match args.protocol {
            Protocol::Grpc => args.grpc_addr.clone(),
            _ => args.http_url.clone(),
        };
        let mut specs = if args.inputs.is_empty() {
            target::discover_inputs(args.protocol, &args.http_url, &args.grpc_addr, &args.model)
                .await?
        } else {
            args.inputs.clone()
        };
        target::fill_shapes(&mut specs, args.batch, &args.shapes);
        let data = tensors(args, &specs)?;
        let request = Request::prepare(
            args.protocol,
            &args.http_url,
            &args.grpc_addr,
            &args.model,
            &data,
        )?;
        Connection::default()
            .send(&request)
            .await
            .map_err(|e| anyhow::anyhow!("a first request to {target} failed: {e}"))?;
        let threads = args.client_threads.map_or_else(
            || (std::thread::available_parallelism().map_or(1, |n| n.get()) / 4).max(1),
            usize::from,
        );
        let target = format!(
            "{target} ({threads} client thread{})",
            if threads == 1 { "" } else { "s" }
        );
        Ok((Driver::Server(Arc::new(request), threads), target))
    }

    /// Runs one concurrency level.
    async fn level(
        &mut self,
        concurrency: usize,
        rows: u64,
        schedule: Schedule,
        label: &str,
    ) -> anyhow::Result<Level> {
        match self {
            Driver::Server(request, threads) => {
                let request = Arc::clone(request);
                Ok(load::run_server(request, concurrency, rows, schedule, label, *threads).await)
            }
            Driver::InProcess(local) => {
                // The workers block their threads for the whole level: on the blocking pool,
                // so the async tasks (the GPU sampler) keep running beside them.
                let mut moved = std::mem::take(local);
                let label = label.to_string();
                let (back, level) = tokio::task::spawn_blocking(move || {
                    let level =
                        load::run_in_process(&mut moved, concurrency, rows, schedule, &label);
                    (moved, level)
                })
                .await
                .context("an in-process level stopped")?;
                *local = back;
                Ok(level)
            }
        }
    }
}

/// With `--gpu`: the sampler and the run's record of its source, or no sampler and the
/// record of why not (logged too; the run goes on without GPU figures).
async fn start_gpu(args: &RunArgs) -> (Option<Sampler>, Option<RunGpu>) {
    if !args.gpu {
        return (None, None);
    }
    // An in-process run's GPUs are this machine's; a server's page may be anyone's.
    let metrics_url = (args.protocol != Protocol::InProcess).then_some(args.metrics_url.as_str());
    match Source::find(metrics_url).await {
        Ok(source) => {
            let described = source.describe();
            tracing::info!(source = %described, "bench --gpu: sampling GPUs");
            let record = RunGpu {
                source: Some(described),
                unavailable: None,
            };
            (Some(Sampler::start(source)), Some(record))
        }
        Err(why) => {
            let why = why.to_string();
            tracing::warn!(%why, "bench --gpu: no GPU was sampled");
            println!("GPU: no GPU was sampled: {why}");
            let record = RunGpu {
                source: None,
                unavailable: Some(why),
            };
            (None, Some(record))
        }
    }
}

fn tensors(args: &RunArgs, specs: &[InputSpec]) -> anyhow::Result<Vec<nexus_models::Tensor>> {
    match &args.input_data {
        Some(path) => target::file_tensors(path, specs),
        None => target::random_tensors(specs),
    }
}

fn print_level(label: &str, level: &Level) {
    println!(
        "{label:>16} c={:<3} {:>10.1} infer/s {:>10.1} rows/s  p50 {:>7} µs  p90 {:>7} µs  p99 {:>7} µs  errors {}",
        level.concurrency,
        level.throughput,
        level.rows_per_second,
        level.p50_us,
        level.p90_us,
        level.p99_us,
        level.errors
    );
    if let Some(e) = &level.first_error {
        println!("{:>16} first error: {e}", "");
    }
    for g in level.gpu.iter().flat_map(|g| &g.summary) {
        let percent = |u: Option<f64>| u.map_or("-".into(), |u| format!("{:.0}%", u * 100.0));
        println!(
            "{:>16} {}: utilisation mean {} max {}, memory used max {} MiB ({} samples)",
            "",
            g.gpu_uuid,
            percent(g.mean_utilization),
            percent(g.max_utilization),
            g.max_memory_used_bytes
                .map_or("-".into(), |m| (m >> 20).to_string()),
            g.samples
        );
    }
}
