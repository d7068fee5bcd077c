//! Per-version inference statistics, kept twice on purpose: as atomics for Triton's
//! statistics extension (`/stats`, gRPC `ModelStatistics`), and as Prometheus counters
//! with Triton's metric names for `:8002/metrics`, served by [`run`] (and, per model
//! version as JSON, by [`http_router`] at `/api/v1/metrics` on the HTTP port).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::serve::ListenerExt;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use nexus_models::ComputeTimings;

use crate::error::ServeError;

/// Buckets of the `nexus_batch_size` histogram (rows per execution).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Buckets of every `*_duration_seconds` histogram (request latency, p99 alerts).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often recorded histogram samples are folded into their buckets.
///
/// The recorder queues every histogram sample (8 bytes, in blocks; two per request:
/// latency and batch size) until upkeep drains it. `install_recorder` leaves upkeep to
/// its caller and only a scrape would drain otherwise, so a server nobody scrapes grew by
/// ~36 bytes per request without end. With this interval the queue holds at most a few
/// seconds of samples.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(2);

static PROMETHEUS: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once), with a thread that runs its
/// upkeep every [`UPKEEP_INTERVAL`], and returns a handle to render it.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    PROMETHEUS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("nexus_batch_size".into()), BATCH_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_duration_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
            // A plain thread: the recorder is process-wide and outlives any runtime.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
            Ok(handle)
        })
        .clone()
}

/// Serves `/metrics`, everything `prometheus` recorded in Prometheus' text format, on
/// `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let prometheus = prometheus.clone();
            async move { prometheus.render() }
        }),
    );
    axum::serve(listener.tap_io(nexus_gateway::set_nodelay), app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServeError::Server(format!("metrics server: {e}")))
}

/// `GET /api/v1/metrics`: for clients that reach only the HTTP port (behind its gateway),
/// each model version's request counters and its latency and batch-size histograms, as
/// JSON. The web console derives request rates and p50/p99 from two reads.
pub fn http_router(prometheus: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/api/v1/metrics",
        axum::routing::get(move || {
            let prometheus = prometheus.clone();
            async move { axum::Json(serde_json::json!({ "versions": figures(&prometheus.render()) })) }
        }),
    )
}

/// One model version's figures in [`http_router`]'s answer.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
struct VersionFigures {
    model: String,
    version: String,
    /// `nv_inference_request_success`, `nv_inference_request_failure`.
    success: f64,
    failure: f64,
    /// `nv_inference_queue_duration_us`.
    queue_us: f64,
    /// `nv_inference_pending_request_count`.
    pending: f64,
    /// `nexus_request_duration_seconds`.
    latency_seconds: Option<HistogramFigures>,
    /// `nexus_batch_size`.
    batch_size: Option<HistogramFigures>,
}

/// A histogram's cumulative buckets (upper bound `le`, the `+Inf` one being `count`).
#[derive(Debug, Default, PartialEq, serde::Serialize)]
struct HistogramFigures {
    buckets: Vec<(f64, f64)>,
    count: f64,
    sum: f64,
}

/// The figures of every model version in `text`, the recorder's exposition. The recorder
/// keeps its histograms to itself and renders them only as text, so they are read back
/// from it (with `prometheus-parse`), the same numbers `/metrics` serves.
fn figures(text: &str) -> Vec<VersionFigures> {
    use prometheus_parse::{Scrape, Value};

    let Ok(scrape) = Scrape::parse(text.lines().map(|line| Ok(line.to_string()))) else {
        return Vec::new();
    };
    let mut versions: BTreeMap<(String, String), VersionFigures> = BTreeMap::new();
    for sample in scrape.samples {
        let (Some(model), Some(version)) =
            (sample.labels.get("model"), sample.labels.get("version"))
        else {
            continue;
        };
        let entry = versions
            .entry((model.to_string(), version.to_string()))
            .or_insert_with(|| VersionFigures {
                model: model.to_string(),
                version: version.to_string(),
                ..VersionFigures::default()
            });
        let (family, part) = match sample.metric.rsplit_once('_') {
            Some((family, part @ ("sum" | "count"))) => (family, part),
            _ => (sample.metric.as_str(), ""),
        };
        let histogram = match family {
            "nexus_request_duration_seconds" => Some(&mut entry.latency_seconds),
            "nexus_batch_size" => Some(&mut entry.batch_size),
            _ => None,
        };
        match (histogram, part, sample.value) {
            (Some(h), "", Value::Histogram(buckets)) => {
                h.get_or_insert_default().buckets = buckets
                    .iter()
                    .filter(|b| b.less_than.is_finite())
                    .map(|b| (b.less_than, b.count))
                    .collect();
            }
            (Some(h), "sum", Value::Untyped(v)) => h.get_or_insert_default().sum = v,
            (Some(h), "count", Value::Untyped(v)) => h.get_or_insert_default().count = v,
            (None, _, Value::Counter(v) | Value::Gauge(v)) => match sample.metric.as_str() {
                "nv_inference_request_success" => entry.success = v,
                "nv_inference_request_failure" => entry.failure = v,
                "nv_inference_queue_duration_us" => entry.queue_us = v,
                "nv_inference_pending_request_count" => entry.pending = v,
                _ => {}
            },
            _ => {}
        }
    }
    versions.into_values().collect()
}

/// A count and a total duration, as Triton's `StatisticDuration`.
#[derive(Debug, Default)]
pub struct Duration64 {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Duration64 {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(nanos(d), Ordering::Relaxed);
    }

    /// (count, total nanoseconds).
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Totals for executions of one batch size.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchTotals {
    pub count: u64,
    pub input_ns: u64,
    pub infer_ns: u64,
    pub output_ns: u64,
}

struct Counters {
    pending: Gauge,
    batch_size: Histogram,
    /// Request latency as a histogram: Triton's duration counters give means, not p99.
    latency: Histogram,
    success: Counter,
    failure: Counter,
    inferences: Counter,
    executions: Counter,
    request_us: Counter,
    queue_us: Counter,
    input_us: Counter,
    infer_us: Counter,
    output_us: Counter,
}

/// Statistics of one model version.
pub struct VersionStats {
    pub success: Duration64,
    pub fail: Duration64,
    pub queue: Duration64,
    pub compute_input: Duration64,
    pub compute_infer: Duration64,
    pub compute_output: Duration64,
    pub inference_count: AtomicU64,
    pub execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last inference; 0 before the first.
    pub last_inference_ms: AtomicU64,
    /// [`use_tick`] of the last inference: orders uses that fall in the same millisecond.
    pub last_use: AtomicU64,
    batches: Mutex<BTreeMap<u64, BatchTotals>>,
    counters: Counters,
}

impl VersionStats {
    /// Statistics for `model` version `version`, registering its Prometheus series.
    pub fn new(model: &str, version: u64) -> Self {
        let labels = [
            ("model", model.to_string()),
            ("version", version.to_string()),
        ];
        let counter = |name: &'static str| metrics::counter!(name, &labels);
        VersionStats {
            success: Duration64::default(),
            fail: Duration64::default(),
            queue: Duration64::default(),
            compute_input: Duration64::default(),
            compute_infer: Duration64::default(),
            compute_output: Duration64::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            last_use: AtomicU64::new(0),
            batches: Mutex::new(BTreeMap::new()),
            counters: Counters {
                pending: metrics::gauge!("nv_inference_pending_request_count", &labels),
                batch_size: metrics::histogram!("nexus_batch_size", &labels),
                latency: metrics::histogram!("nexus_request_duration_seconds", &labels),
                success: counter("nv_inference_request_success"),
                failure: counter("nv_inference_request_failure"),
                inferences: counter("nv_inference_count"),
                executions: counter("nv_inference_exec_count"),
                request_us: counter("nv_inference_request_duration_us"),
                queue_us: counter("nv_inference_queue_duration_us"),
                input_us: counter("nv_inference_compute_input_duration_us"),
                infer_us: counter("nv_inference_compute_infer_duration_us"),
                output_us: counter("nv_inference_compute_output_duration_us"),
            },
        }
    }

    /// Records one successful request of `batch_size` inferences.
    pub fn record_success(
        &self,
        batch_size: u64,
        total: Duration,
        queue: Duration,
        compute: ComputeTimings,
    ) {
        self.success.add(total);
        self.queue.add(queue);
        self.compute_input.add(compute.input);
        self.compute_infer.add(compute.infer);
        self.compute_output.add(compute.output);
        self.inference_count
            .fetch_add(batch_size, Ordering::Relaxed);
        self.touch();
        let c = &self.counters;
        c.success.increment(1);
        c.latency.record(total.as_secs_f64());
        c.inferences.increment(batch_size);
        c.request_us.increment(micros(total));
        c.queue_us.increment(micros(queue));
        c.input_us.increment(micros(compute.input));
        c.infer_us.increment(micros(compute.infer));
        c.output_us.increment(micros(compute.output));
    }

    /// Counts requests entering the queue.
    pub fn queued(&self, requests: u64) {
        self.counters.pending.increment(requests as f64);
    }

    /// Counts requests leaving the queue (to run, or refused).
    pub fn dequeued(&self, requests: u64) {
        self.counters.pending.decrement(requests as f64);
    }

    /// Records one execution of the model on a batch of `batch_size`.
    pub fn record_execution(&self, batch_size: u64, compute: ComputeTimings) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.counters.executions.increment(1);
        self.counters.batch_size.record(batch_size as f64);
        let mut batches = self.batches.lock();
        let entry = batches.entry(batch_size).or_default();
        entry.count += 1;
        entry.input_ns += nanos(compute.input);
        entry.infer_ns += nanos(compute.infer);
        entry.output_ns += nanos(compute.output);
    }

    /// Records one failed request.
    pub fn record_failure(&self, total: Duration) {
        self.fail.add(total);
        self.touch();
        self.counters.failure.increment(1);
        self.counters.request_us.increment(micros(total));
    }

    /// Per-batch-size execution totals, smallest batch first.
    pub fn batch_totals(&self) -> Vec<(u64, BatchTotals)> {
        self.batches.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn touch(&self) {
        self.last_inference_ms.store(now_ms(), Ordering::Relaxed);
        self.last_use.store(use_tick(), Ordering::Relaxed);
    }
}

/// A process-wide count of model uses (loads, inferences), for least-recently-used order:
/// two requests a few hundred microseconds apart share a millisecond, and the wall clock may
/// step back.
pub(crate) fn use_tick() -> u64 {
    static USES: AtomicU64 = AtomicU64::new(1);
    USES.fetch_add(1, Ordering::Relaxed)
}

/// Milliseconds since the Unix epoch (Triton's `last_inference` unit).
pub(crate) fn now_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition as the recorder renders it: counters, a gauge, and histograms with
    /// their buckets, sum and count per model version.
    #[test]
    fn figures_group_each_versions_counters_and_histograms() {
        let text = r#"# TYPE nv_inference_request_success counter
nv_inference_request_success{model="simple",version="1"} 7
nv_inference_request_success{model="other",version="3"} 2
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="simple",version="1"} 350
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="simple",version="1"} 1
# TYPE nexus_request_duration_seconds histogram
nexus_request_duration_seconds_bucket{model="simple",version="1",le="0.001"} 5
nexus_request_duration_seconds_bucket{model="simple",version="1",le="0.01"} 7
nexus_request_duration_seconds_bucket{model="simple",version="1",le="+Inf"} 7
nexus_request_duration_seconds_sum{model="simple",version="1"} 0.012
nexus_request_duration_seconds_count{model="simple",version="1"} 7
# TYPE nexus_registry_request_duration_seconds histogram
nexus_registry_request_duration_seconds_bucket{method="GET",le="+Inf"} 4
"#;
        let all = figures(text);
        assert_eq!(all.len(), 2, "{all:?}");
        let simple = all.iter().find(|f| f.model == "simple").unwrap();
        assert_eq!(
            (simple.success, simple.queue_us, simple.pending),
            (7.0, 350.0, 1.0)
        );
        assert_eq!(
            simple.latency_seconds,
            Some(HistogramFigures {
                buckets: vec![(0.001, 5.0), (0.01, 7.0)],
                count: 7.0,
                sum: 0.012,
            })
        );
        assert_eq!(simple.batch_size, None);
        let other = all.iter().find(|f| f.model == "other").unwrap();
        assert_eq!((other.version.as_str(), other.success), ("3", 2.0));
    }

    #[test]
    fn records_counts_durations_and_batches() {
        let stats = VersionStats::new("m", 1);
        let compute = ComputeTimings {
            input: Duration::from_micros(1),
            infer: Duration::from_micros(5),
            output: Duration::from_micros(2),
        };
        stats.record_execution(4, compute);
        stats.record_success(
            4,
            Duration::from_micros(10),
            Duration::from_micros(2),
            compute,
        );
        stats.record_failure(Duration::from_micros(3));
        assert_eq!(stats.success.get(), (1, 10_000));
        assert_eq!(stats.fail.get(), (1, 3_000));
        assert_eq!(stats.compute_infer.get(), (1, 5_000));
        assert_eq!(stats.inference_count.load(Ordering::Relaxed), 4);
        assert_eq!(stats.execution_count.load(Ordering::Relaxed), 1);
        assert!(stats.last_inference_ms.load(Ordering::Relaxed) > 0);
        let batches = stats.batch_totals();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].0, 4);
        assert_eq!(batches[0].1.infer_ns, 5_000);
    }
}
