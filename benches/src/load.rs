//! The load driver: `concurrency` workers send back-to-back requests (closed loop, as
//! perf_analyzer does), first for a warm-up, then for a measured duration or request
//! count, recording each latency in an HDR histogram.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::target::{Connection, InProcess, Request};

/// How long each concurrency level runs.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub warmup: Duration,
    /// Measure for this long …
    pub duration: Duration,
    /// … or until this many requests completed, when set.
    pub requests: Option<u64>,
}

/// The figures of one concurrency level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Level {
    pub concurrency: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Completed requests per second.
    pub throughput: f64,
    /// Rows (batch × requests) per second.
    pub rows_per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub mean_us: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error: Option<String>,
    /// With `--gpu`: the GPUs' readings during the level and their summary.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gpu: Option<crate::gpu::LevelGpu>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Counts requests and stops the workers; shared by all of them.
struct Shared {
    done: AtomicU64,
    errors: AtomicU64,
    measuring_from: Instant,
    end: Instant,
    limit: Option<u64>,
    first_error: parking_lot::Mutex<Option<String>>,
}

impl Shared {
    fn new(schedule: Schedule) -> Self {
        let measuring_from = Instant::now() + schedule.warmup;
        let end = match schedule.requests {
            // A request budget still stops after an hour, so a stuck server cannot hang a run.
            Some(_) => measuring_from + Duration::from_secs(3600),
            None => measuring_from + schedule.duration,
        };
        Shared {
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            measuring_from,
            end,
            limit: schedule.requests,
            first_error: parking_lot::Mutex::new(None),
        }
    }

    fn keep_going(&self, now: Instant) -> bool {
        now < self.end
            && self
                .limit
                .is_none_or(|l| self.done.load(Ordering::Relaxed) < l)
    }

    /// Records one outcome; returns whether it counted (warm-up results do not).
    fn record(
        &self,
        started: Instant,
        elapsed: Duration,
        outcome: Result<(), String>,
        hist: &mut Histogram<u64>,
    ) {
        if started < self.measuring_from {
            return;
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                let _ = hist.record(
                    u64::try_from(elapsed.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().get_or_insert(e);
            }
        }
    }
}

fn progress(label: &str, concurrency: usize, schedule: Schedule) -> ProgressBar {
    let total = schedule
        .requests
        .unwrap_or_else(|| schedule.duration.as_secs().max(1));
    let bar = ProgressBar::new(total);
    let unit = if schedule.requests.is_some() {
        "req"
    } else {
        "s"
    };
    let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{label} c={concurrency}"));
    bar
}

/// Shows progress: requests done (with a request budget) or seconds measured.
fn update(bar: &ProgressBar, shared: &Shared) {
    let now = Instant::now();
    let done = shared.done.load(Ordering::Relaxed);
    if shared.limit.is_some() {
        bar.set_position(done);
    } else if now > shared.measuring_from {
        bar.set_position((now - shared.measuring_from).as_secs());
    } else {
        bar.set_message("warming up");
        return;
    }
    bar.set_message(format!(
        "{done} done, {} errors",
        shared.errors.load(Ordering::Relaxed)
    ));
}

/// Updates the bar every 200 ms until the level ends.
async fn tick(bar: ProgressBar, shared: Arc<Shared>) {
    while shared.keep_going(Instant::now()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        update(&bar, &shared);
    }
}

fn summarise(
    concurrency: usize,
    rows: u64,
    shared: &Shared,
    hist: &Histogram<u64>,
    started: Instant,
) -> Level {
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let requests = shared.done.load(Ordering::Relaxed);
    let ok = requests - shared.errors.load(Ordering::Relaxed);
    Level {
        concurrency,
        requests,
        errors: shared.errors.load(Ordering::Relaxed),
        seconds,
        throughput: ok as f64 / seconds,
        rows_per_second: (ok * rows) as f64 / seconds,
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        mean_us: hist.mean(),
        first_error: shared.first_error.lock().clone(),
        gpu: None,
    }
}

/// Runs one level against a server, the workers shared out over `client_threads` OS threads
/// with an event loop each (as wrk's `-t`): a worker's requests and answers never leave its
/// thread. Run on the process's work-stealing runtime instead, the same workers measured a
/// server ~35 us slower than wrk did at c=1 on two cores (p50 149 against 113 us); on their
/// own event loop, within a few us of it.
pub async fn run_server(
    request: Arc<Request>,
    concurrency: usize,
    rows: u64,
    schedule: Schedule,
    label: &str,
    client_threads: usize,
) -> Level {
    let shared = Arc::new(Shared::new(schedule));
    let bar = progress(label, concurrency, schedule);
    let ticker = tokio::spawn(tick(bar.clone(), Arc::clone(&shared)));
    let threads = client_threads.clamp(1, concurrency.max(1));
    let loops: Vec<_> = (0..threads)
        .map(|thread| {
            // Workers thread, thread + threads, ...: concurrency 10 on 4 threads is 3, 3, 2, 2.
            let workers = (thread..concurrency).step_by(threads).count();
            let request = Arc::clone(&request);
            let shared = Arc::clone(&shared);
            tokio::task::spawn_blocking(move || event_loop(workers, request, shared))
        })
        .collect();
    let mut hist = histogram();
    for event_loop in loops {
        match event_loop.await.map_err(|e| e.to_string()).flatten() {
            Ok(h) => {
                let _ = hist.add(h);
            }
            Err(e) => {
                shared.first_error.lock().get_or_insert(e);
            }
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    summarise(concurrency, rows, &shared, &hist, shared.measuring_from)
}

/// One client thread: `workers` closed-loop workers, each a task with its own connection on
/// a single-threaded runtime; their latencies merged.
fn event_loop(
    workers: usize,
    request: Arc<Request>,
    shared: Arc<Shared>,
) -> Result<Histogram<u64>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a client event loop: {e}"))?;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let request = Arc::clone(&request);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let mut hist = histogram();
                    let mut connection = Connection::default();
                    while shared.keep_going(Instant::now()) {
                        let started = Instant::now();
                        let outcome = connection.send(&request).await;
                        shared.record(started, started.elapsed(), outcome, &mut hist);
                    }
                    hist
                })
            })
            .collect();
        let mut hist = histogram();
        for task in tasks {
            let h = task.await.map_err(|e| format!("a client worker: {e}"))?;
            let _ = hist.add(h);
        }
        Ok(hist)
    })
}

/// Runs one level in-process: one OS thread and one session per worker.
pub fn run_in_process(
    workers: &mut InProcess,
    concurrency: usize,
    rows: u64,
    schedule: Schedule,
    label: &str,
) -> Level {
    let shared = Shared::new(schedule);
    let bar = progress(label, concurrency, schedule);
    let inputs = &workers.inputs;
    let outputs = &workers.outputs;
    let mut hist = histogram();
    std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .sessions
            .iter_mut()
            .take(concurrency)
            .map(|session| {
                let shared = &shared;
                scope.spawn(move || {
                    let mut hist = histogram();
                    while shared.keep_going(Instant::now()) {
                        let started = Instant::now();
                        let outcome = session
                            .infer(inputs, outputs)
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                        shared.record(started, started.elapsed(), outcome, &mut hist);
                    }
                    hist
                })
            })
            .collect();
        while shared.keep_going(Instant::now()) {
            std::thread::sleep(Duration::from_millis(200));
            update(&bar, &shared);
        }
        for handle in handles {
            if let Ok(h) = handle.join() {
                let _ = hist.add(h);
            }
        }
    });
    bar.finish_and_clear();
    summarise(concurrency, rows, &shared, &hist, shared.measuring_from)
}
