//! A pool of model instances, each owned by its own OS thread.
//!
//! Inference is CPU-bound and blocking, so it never runs on the async reactor: each
//! instance thread takes work from its version's [`Queue`] when it is free (one request,
//! or a batch formed by the [`Batcher`]) and answers the callers itself. Dropping the
//! version's queue closes it; each thread finishes the requests already queued and exits,
//! which is how an unload lets in-flight requests complete.
//!
//! One shortcut: at low load, a request for a model whose executions are short runs on the
//! caller's thread ([`InstancePool::run_inline`]). Handing it to the instance thread and the
//! answer back costs two thread wake-ups, more than such a model's whole execution; at c=1
//! that is most of the latency Nexus adds. Under load the hand-off stays: there it lets the
//! async workers read the next requests while the instance computes. "Alone in flight" is
//! not enough to tell the two apart (at c=16 most of a request's time is spent decoding and
//! encoding, so a version often has nothing in flight): requests must also arrive far apart
//! compared with an execution (measured: inlining at c=16 cost up to a quarter of the
//! throughput).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use nexus_models::{Backend, Tensor};

use crate::batcher::{Batcher, Executed, execute};
use crate::error::ServingError;
use crate::metrics::VersionStats;
use crate::queue::{Counts, Done, Pending, Queue, Queued, Work};

/// Executions at most this long may run on a caller's thread (an async worker), which
/// they hold for that time: about what decoding a large JSON request takes there anyway.
const INLINE_MAX: Duration = Duration::from_micros(100);

/// Inline runs also need requests to arrive, on average, at least this many executions
/// apart. At c=1 a request's round trip is a few executions of a model this short (the
/// TorchScript MLP of benches/torch_compare.sh: 18 us of ~115), and at c=16 requests of one
/// version arrive less than two executions apart: 8 kept that model off the inline path at
/// c=1 (gRPC p50 170 us, against 125 us inline); 4 changed no c=16 figure beyond the noise
/// (small_mlp and the MLP, side by side).
const GAP_PER_EXECUTION: u64 = 4;

/// The instances of one model version.
pub struct InstancePool {
    queue: Arc<Queue>,
    instances: Vec<Arc<Slot>>,
    /// Disconnected once every instance's backend has been dropped.
    released: crossbeam_channel::Receiver<()>,
    batcher: Option<Arc<Batcher>>,
    /// Requests of this version between `run_inline` and their answer.
    in_flight: AtomicUsize,
    /// When the last request entered, in nanoseconds since `epoch`.
    last_entry_ns: AtomicU64,
    /// A moving average of the time between requests, in nanoseconds.
    gap_ns: AtomicU64,
    epoch: Instant,
}

/// An instance's backend, locked by whichever thread runs it, and how long its last
/// execution took.
struct Slot {
    name: String,
    backend: Mutex<Box<dyn Backend>>,
    last_ns: AtomicU64,
    stats: Arc<VersionStats>,
    /// Never sent on: dropped after `backend` (fields drop in order), it tells [`Released`]
    /// the model has been freed.
    _freed: crossbeam_channel::Sender<()>,
}

impl InstancePool {
    /// Starts one thread per backend, taking work from `queue`, in batches when `batcher`
    /// is given.
    pub(crate) fn start(
        label: &str,
        backends: Vec<Box<dyn Backend>>,
        queue: Arc<Queue>,
        batcher: Option<Arc<Batcher>>,
        stats: Arc<VersionStats>,
    ) -> Result<Self, ServingError> {
        let mut instances = Vec::with_capacity(backends.len());
        let (freed, released) = crossbeam_channel::bounded(0);
        for (i, backend) in backends.into_iter().enumerate() {
            let slot = Arc::new(Slot {
                name: format!("{label}#{i}"),
                backend: Mutex::new(backend),
                // Unknown until the first execution, which runs on the instance thread.
                last_ns: AtomicU64::new(u64::MAX),
                stats: Arc::clone(&stats),
                _freed: freed.clone(),
            });
            let (pending, counts) = queue.subscribe();
            let instance = Instance {
                slot: Arc::clone(&slot),
                pending,
                counts,
                batcher: batcher.clone(),
            };
            std::thread::Builder::new()
                .name(slot.name.clone())
                .spawn(move || instance.run())
                .map_err(|e| {
                    ServingError::Internal(format!("cannot start instance thread {label}#{i}: {e}"))
                })?;
            instances.push(slot);
        }
        Ok(InstancePool {
            queue,
            instances,
            released,
            batcher,
            in_flight: AtomicUsize::new(0),
            last_entry_ns: AtomicU64::new(0),
            gap_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Requests of this version between entering and their answer.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A watch on the instances' backends, to learn when an unload has really freed them.
    pub(crate) fn released(&self) -> Released {
        Released(self.released.clone())
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let gap = now.saturating_sub(self.last_entry_ns.swap(now, Ordering::Relaxed));
        // Racy read-modify-write: a lost update only delays the average a little.
        let average = self.gap_ns.load(Ordering::Relaxed);
        self.gap_ns
            .store(average - average / 4 + gap / 4, Ordering::Relaxed);
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            pool: self,
            alone: before == 0,
        }
    }

    /// Runs `work` on the calling thread when it is the only request in flight, nothing
    /// is queued, requests arrive far apart and an instance whose last execution was short
    /// is idle; gives `work` back otherwise, for the queue.
    pub(crate) fn run_inline(
        &self,
        work: Work,
        in_flight: &InFlight<'_>,
    ) -> Result<Result<Done, ServingError>, Work> {
        // Not when the version batches with a queue delay, whose point is to wait for
        // company (the optimiser may set one at any time).
        let delays = self
            .batcher
            .as_ref()
            .is_some_and(|b| !b.settings().0.is_zero());
        if !in_flight.alone || delays || !self.queue.is_empty() {
            return Err(work);
        }
        let short = INLINE_MAX.as_nanos() as u64;
        let gap = self.gap_ns.load(Ordering::Relaxed);
        for slot in &self.instances {
            let last = slot.last_ns.load(Ordering::Relaxed);
            if last > short || gap < last.saturating_mul(GAP_PER_EXECUTION) {
                continue;
            }
            let Some(mut backend) = slot.backend.try_lock() else {
                continue;
            };
            let rows = work.rows;
            let executed = slot.infer(&mut **backend, &work.inputs, &work.outputs, rows);
            return Ok(executed.map(|e| Done {
                outputs: e.outputs,
                queue: Duration::ZERO,
                compute: e.compute,
                batch_rows: rows,
            }));
        }
        Err(work)
    }
}

/// The backends of an unloaded version: each is dropped, freeing its model, when the last
/// request that reached it has finished and its instance thread has exited.
///
/// Watching the slots' reference counts is not enough: a count reaches zero before the
/// backend's destructor runs, and a runtime takes milliseconds to free a model, so memory
/// measured (or trimmed) then is not yet free. A channel whose sender each slot drops after
/// its backend says when the destructors are done.
pub struct Released(crossbeam_channel::Receiver<()>);

impl Released {
    /// Waits until every backend has been dropped, for at most `within`; false if some
    /// still run a request then.
    pub fn wait(&self, within: Duration) -> bool {
        matches!(
            self.0.recv_timeout(within),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        )
    }
}

/// A request counted in flight (see [`InstancePool::enter`]).
pub(crate) struct InFlight<'a> {
    pool: &'a InstancePool,
    /// No other request of the version was in flight when this one entered.
    alone: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One instance's thread: its backend and where its work comes from.
struct Instance {
    slot: Arc<Slot>,
    pending: Pending,
    counts: Arc<Counts>,
    batcher: Option<Arc<Batcher>>,
}

impl Instance {
    fn run(mut self) {
        while let Some(batch) = self.next() {
            self.counts.left(batch.len());
            let rows = batch.iter().map(|q| q.work.rows).sum();
            let mut backend = self.slot.backend.lock();
            execute(batch, |inputs, outputs| {
                self.slot.infer(&mut **backend, inputs, outputs, rows)
            });
        }
    }

    /// Waits for work: the oldest request, or a batch around it. `None` once the queue
    /// is gone and everything sent before has run.
    fn next(&mut self) -> Option<Vec<Queued>> {
        loop {
            self.pending.head()?;
            let batch = match &self.batcher {
                Some(batcher) => batcher.gather(&mut self.pending),
                None => self.pending.take(&[0]),
            };
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }
}

impl Slot {
    /// Runs one execution on `backend` (this slot's, locked by the caller).
    fn infer(
        &self,
        backend: &mut dyn Backend,
        inputs: &[Tensor],
        outputs: &[String],
        rows: u64,
    ) -> Result<Executed, ServingError> {
        let started = Instant::now();
        // A backend that panics fails this execution, not the instance or the server.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| backend.infer(inputs, outputs)));
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(took, Ordering::Relaxed);
        match result {
            Ok(Ok(inferred)) => {
                self.stats.record_execution(rows, inferred.timings);
                Ok(Executed {
                    outputs: inferred.outputs,
                    started,
                    compute: inferred.timings,
                })
            }
            Ok(Err(e)) => Err(ServingError::from(e)),
            Err(_) => {
                tracing::error!(instance = %self.name, "backend panicked during inference");
                Err(ServingError::Internal(format!(
                    "instance {} failed during inference",
                    self.name
                )))
            }
        }
    }
}
