//! How one model version's requests reach its instances: a queue its instance threads
//! pull from, one request per execution, or batches when the config has
//! `dynamic_batching`.

use std::sync::Arc;

use nexus_models::{Backend, ModelConfig};

use crate::batcher::{BatchPolicy, Batcher};
use crate::error::ServingError;
use crate::instance::{InstancePool, Released};
use crate::metrics::VersionStats;
use crate::queue::{Done, Queue, Work};

/// A version's queue, its instances and, when it batches, its batcher.
pub struct Scheduler {
    queue: Arc<Queue>,
    batcher: Option<Arc<Batcher>>,
    pool: InstancePool,
}

impl Scheduler {
    /// Starts an instance thread per backend. `default_queue` bounds the queue when the
    /// config sets no `max_queue_size` (and always without dynamic batching).
    pub fn start(
        config: &ModelConfig,
        label: &str,
        backends: Vec<Box<dyn Backend>>,
        stats: Arc<VersionStats>,
        default_queue: usize,
    ) -> Result<Self, ServingError> {
        let batcher = BatchPolicy::from_config(config, default_queue).map(Batcher::new);
        let (capacity, timeout) = match &batcher {
            Some(b) => (b.policy().max_queue, b.policy().timeout),
            None => (default_queue, None),
        };
        let batcher = batcher.map(Arc::new);
        let queue = Arc::new(Queue::new(label, capacity, timeout, Arc::clone(&stats)));
        let pool =
            InstancePool::start(label, backends, Arc::clone(&queue), batcher.clone(), stats)?;
        Ok(Scheduler {
            queue,
            batcher,
            pool,
        })
    }

    /// The dynamic batcher, when the version has one.
    pub fn batcher(&self) -> Option<&Batcher> {
        self.batcher.as_deref()
    }

    /// Requests in flight (an idle version has none).
    pub fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    /// A watch on the instances, to wait for an unload to free them.
    pub fn released(&self) -> Released {
        self.pool.released()
    }

    /// Runs `work` and returns its outputs.
    pub async fn run(&self, work: Work) -> Result<Done, ServingError> {
        let in_flight = self.pool.enter();
        match self.pool.run_inline(work, &in_flight) {
            Ok(done) => done,
            Err(work) => self.queue.submit(work).await,
        }
    }
}
