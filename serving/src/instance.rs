//! A pool of model instances, each owned by its own OS thread.
//!
//! Inference is CPU-bound and blocking, so it never runs on the async reactor: executions
//! go through a bounded channel to the instance threads, which call the execution's reply
//! when done. Dropping the pool closes the channel; each thread finishes the executions
//! already queued and exits, which is how an unload lets in-flight requests complete.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::OwnedSemaphorePermit;

use nexus_models::{Backend, ComputeTimings, Tensor};

use crate::error::ServingError;
use crate::metrics::VersionStats;

/// A validated request: inputs in the config's order with the batch dimension, the
/// outputs to return, and how many rows it holds. What a version's scheduler takes, straight
/// to the pool or through the batcher; declared here, below both, so that neither depends on
/// the other.
#[derive(Debug)]
pub struct Work {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    pub rows: u64,
}

/// A request's outputs with the time it waited and the compute time of its execution.
#[derive(Debug)]
pub struct Done {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub compute: ComputeTimings,
    /// Rows of the execution the request ran in.
    pub batch_rows: u64,
}

/// The outputs of one execution, with when it started and how long each phase took.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub started: Instant,
    pub compute: ComputeTimings,
}

/// Called on the instance thread with the execution's result.
pub type Reply = Box<dyn FnOnce(Result<Executed, ServingError>) + Send>;

/// One run of the model: full input tensors (batch dimension included).
pub struct Execution {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<String>,
    /// Rows in the batch, for statistics.
    pub rows: u64,
    /// Requests this execution answers, for the pending-request gauge.
    pub requests: u64,
    /// Held while the execution runs; the batcher counts free instances with it.
    pub permit: Option<OwnedSemaphorePermit>,
    pub reply: Reply,
}

/// The instances of one model version.
pub struct InstancePool {
    executions: Sender<Execution>,
    label: String,
    size: usize,
    stats: Arc<VersionStats>,
}

impl InstancePool {
    /// Starts one thread per backend; at most `queue_capacity` executions wait for them.
    pub fn start(
        label: &str,
        backends: Vec<Box<dyn Backend>>,
        queue_capacity: usize,
        stats: Arc<VersionStats>,
    ) -> Result<Self, ServingError> {
        let size = backends.len();
        let (executions, queue) = crossbeam_channel::bounded::<Execution>(queue_capacity.max(1));
        for (i, mut backend) in backends.into_iter().enumerate() {
            let queue = queue.clone();
            let stats = Arc::clone(&stats);
            let name = format!("{label}#{i}");
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    for job in queue.iter() {
                        let started = Instant::now();
                        stats.dequeued(job.requests);
                        // A backend that panics fails this execution, not the instance or the server.
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            backend.infer(&job.inputs, &job.outputs)
                        }));
                        let reply = match result {
                            Ok(Ok(inferred)) => {
                                stats.record_execution(job.rows, inferred.timings);
                                Ok(Executed {
                                    outputs: inferred.outputs,
                                    started,
                                    compute: inferred.timings,
                                })
                            }
                            Ok(Err(e)) => Err(ServingError::from(e)),
                            Err(_) => {
                                tracing::error!(instance = %name, "backend panicked during inference");
                                Err(ServingError::Internal(format!(
                                    "instance {name} failed during inference"
                                )))
                            }
                        };
                        drop(job.permit);
                        (job.reply)(reply);
                    }
                })
                .map_err(|e| ServingError::Internal(format!("cannot start instance thread {label}#{i}: {e}")))?;
        }
        Ok(InstancePool {
            executions,
            label: label.to_string(),
            size,
            stats,
        })
    }

    /// Number of instances.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Queues an execution for the next free instance. When the queue is full or the
    /// pool is unloading, the execution is answered at once with UNAVAILABLE.
    pub fn submit(&self, execution: Execution) {
        let (refused, why) = match self.executions.try_send(execution) {
            Ok(()) => return,
            Err(TrySendError::Full(e)) => (e, "the request queue is full, retry later"),
            Err(TrySendError::Disconnected(e)) => (e, "the model is unloading"),
        };
        self.stats.dequeued(refused.requests);
        (refused.reply)(Err(ServingError::Unavailable(format!(
            "{}: {why}",
            self.label
        ))));
    }
}
