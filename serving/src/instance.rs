//! A pool of model instances, each owned by its own OS thread.
//!
//! Inference is CPU-bound and blocking, so it never runs on the async reactor: requests
//! go through a bounded channel to the instance threads, and the caller awaits a
//! oneshot reply. Dropping the pool closes the channel; each thread finishes the jobs
//! already queued and exits, which is how an unload lets in-flight requests complete.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use nexus_models::{Backend, ComputeTimings, Tensor};

use crate::error::ServingError;

/// The result of one execution, with the time it waited for an instance.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub compute: ComputeTimings,
}

struct Job {
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Executed, ServingError>>,
}

/// The instances of one model version.
pub struct InstancePool {
    jobs: Sender<Job>,
    label: String,
}

impl InstancePool {
    /// Starts one thread per backend; at most `queue_capacity` requests wait for them.
    pub fn start(
        label: &str,
        backends: Vec<Box<dyn Backend>>,
        queue_capacity: usize,
    ) -> Result<Self, ServingError> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(queue_capacity.max(1));
        for (i, mut backend) in backends.into_iter().enumerate() {
            let queue = queue.clone();
            let name = format!("{label}#{i}");
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    for job in queue.iter() {
                        let queued = job.enqueued.elapsed();
                        // A backend that panics fails this request, not the instance or the server.
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            backend.infer(&job.inputs, &job.outputs)
                        }));
                        let reply = match result {
                            Ok(Ok(inferred)) => Ok(Executed {
                                outputs: inferred.outputs,
                                queue: queued,
                                compute: inferred.timings,
                            }),
                            Ok(Err(e)) => Err(ServingError::from(e)),
                            Err(_) => {
                                tracing::error!(instance = %name, "backend panicked during inference");
                                Err(ServingError::Internal(format!("instance {name} failed during inference")))
                            }
                        };
                        // The caller may have gone away (client disconnected); nothing to do then.
                        let _ = job.reply.send(reply);
                    }
                })
                .map_err(|e| ServingError::Internal(format!("cannot start instance thread {label}#{i}: {e}")))?;
        }
        Ok(InstancePool {
            jobs,
            label: label.to_string(),
        })
    }

    /// Runs one execution on the next free instance.
    pub async fn execute(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
    ) -> Result<Executed, ServingError> {
        let (reply, done) = oneshot::channel();
        let job = Job {
            inputs,
            outputs,
            enqueued: Instant::now(),
            reply,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ServingError::Unavailable(format!(
                "{}: the request queue is full, retry later",
                self.label
            )),
            TrySendError::Disconnected(_) => {
                ServingError::Unavailable(format!("{} is unloading", self.label))
            }
        })?;
        done.await.map_err(|_| {
            ServingError::Internal(format!(
                "{}: the instance stopped before replying",
                self.label
            ))
        })?
    }
}
