//! Routes a validated request to the instances of its model version: straight to the
//! instance pool, or through the dynamic batcher when the config has `dynamic_batching`.

use std::time::Instant;

use tokio::sync::oneshot;

use nexus_models::ModelConfig;

use crate::batcher::{BatchPolicy, Batcher};
use crate::error::ServingError;
use crate::instance::{Done, Execution, InstancePool, Work};
use crate::metrics::VersionStats;

/// How one model version's requests reach its instances.
pub enum Scheduler {
    /// Each request is one execution.
    Direct {
        pool: InstancePool,
        stats: std::sync::Arc<VersionStats>,
    },
    /// Requests are merged into batches by a batcher task.
    Dynamic(Batcher),
}

impl Scheduler {
    /// Picks the scheduler the config asks for; `default_queue` bounds the queue when the
    /// config sets no `max_queue_size`.
    pub fn new(
        config: &ModelConfig,
        pool: InstancePool,
        stats: std::sync::Arc<VersionStats>,
        label: &str,
        default_queue: usize,
    ) -> Self {
        match BatchPolicy::from_config(config, default_queue) {
            Some(policy) => Scheduler::Dynamic(Batcher::start(pool, policy, stats, label)),
            None => Scheduler::Direct { pool, stats },
        }
    }

    /// The dynamic batcher, when the version has one.
    pub fn batcher(&self) -> Option<&Batcher> {
        match self {
            Scheduler::Dynamic(batcher) => Some(batcher),
            Scheduler::Direct { .. } => None,
        }
    }

    /// Runs `work` and returns its outputs.
    pub async fn run(&self, work: Work) -> Result<Done, ServingError> {
        match self {
            Scheduler::Dynamic(batcher) => batcher.submit(work).await,
            Scheduler::Direct { pool, stats } => {
                let (tx, rx) = oneshot::channel();
                let enqueued = Instant::now();
                let rows = work.rows;
                stats.queued(1);
                pool.submit(Execution {
                    inputs: work.inputs,
                    outputs: work.outputs,
                    rows: work.rows,
                    requests: 1,
                    permit: None,
                    reply: Box::new(move |result| {
                        let done = result.map(|e| Done {
                            queue: e.started.saturating_duration_since(enqueued),
                            outputs: e.outputs,
                            compute: e.compute,
                            batch_rows: rows,
                        });
                        // The caller may be gone (client disconnected); nothing to do then.
                        let _ = tx.send(done);
                    }),
                });
                rx.await.map_err(|_| {
                    ServingError::Internal("the instance stopped before replying".into())
                })?
            }
        }
    }
}
