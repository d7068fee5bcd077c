//! Triton's dynamic batcher: a task that owns one model version's queue.
//!
//! Callers send requests over a channel with a oneshot for the answer. The task waits
//! for a free instance, then gathers queued requests whose non-batch shapes and requested
//! outputs match the oldest one, up to `max_batch_size` (or the largest preferred batch
//! size), waiting at most `max_queue_delay_microseconds` for more to arrive. It joins
//! them along dimension 0, runs them as one execution and splits the outputs back.
//! The queue is bounded (`max_queue_size`); a full queue or a request that waited past
//! its timeout is refused with UNAVAILABLE.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use nexus_models::pb::model_config::SchedulingChoice;
use nexus_models::pb::model_queue_policy::TimeoutAction;
use nexus_models::{ModelConfig, Tensor, TensorData};

use crate::error::ServingError;
use crate::instance::{Done, Executed, Execution, InstancePool, Work};
use crate::metrics::VersionStats;

/// The batching settings of one model version, from its `dynamic_batching` block.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicy {
    pub max_batch: u64,
    /// Rows at which a batch is dispatched without waiting further.
    pub target: u64,
    pub max_delay: Duration,
    pub max_queue: usize,
    /// How long a request may wait; `None` waits as long as it takes.
    pub timeout: Option<Duration>,
}

impl BatchPolicy {
    /// The policy of a config with `dynamic_batching` and `max_batch_size > 0`.
    pub fn from_config(config: &ModelConfig, default_queue: usize) -> Option<Self> {
        let Some(SchedulingChoice::DynamicBatching(db)) = &config.scheduling_choice else {
            return None;
        };
        let max_batch = u64::try_from(config.max_batch_size)
            .ok()
            .filter(|m| *m > 0)?;
        let target = db
            .preferred_batch_size
            .iter()
            .filter_map(|p| u64::try_from(*p).ok())
            .filter(|p| (1..=max_batch).contains(p))
            .max()
            .unwrap_or(max_batch);
        let queue = db.default_queue_policy.unwrap_or_default();
        let timeout = (queue.default_timeout_microseconds > 0
            && queue.timeout_action() == TimeoutAction::Reject)
            .then(|| Duration::from_micros(queue.default_timeout_microseconds));
        let max_queue = match queue.max_queue_size {
            0 => default_queue,
            n => n as usize,
        };
        Some(BatchPolicy {
            max_batch,
            target,
            max_delay: Duration::from_micros(db.max_queue_delay_microseconds),
            max_queue: max_queue.max(1),
            timeout,
        })
    }
}

struct Queued {
    work: Work,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Done, ServingError>>,
}

impl Queued {
    /// Requests can share an execution when they give the same inputs with the same
    /// non-batch dimensions and ask for the same outputs.
    fn fits_with(&self, other: &Queued) -> bool {
        let (a, b) = (&self.work, &other.work);
        a.outputs == b.outputs
            && a.inputs.len() == b.inputs.len()
            && a.inputs
                .iter()
                .zip(&b.inputs)
                .all(|(x, y)| x.name == y.name && x.shape.get(1..) == y.shape.get(1..))
    }
}

/// The two settings the optimiser tunes while the batcher runs; read at every batch.
#[derive(Debug)]
struct Tuning {
    max_delay_us: AtomicU64,
    target: AtomicU64,
}

/// The handle callers use; dropping it stops the task once its queue is empty.
pub struct Batcher {
    requests: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    max_batch: u64,
    tuning: Arc<Tuning>,
    stats: Arc<VersionStats>,
    label: String,
}

impl Batcher {
    /// Starts the batching task for `pool`.
    pub fn start(
        pool: InstancePool,
        policy: BatchPolicy,
        stats: Arc<VersionStats>,
        label: &str,
    ) -> Self {
        let (requests, incoming) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let tuning = Arc::new(Tuning {
            max_delay_us: AtomicU64::new(policy.max_delay.as_micros() as u64),
            target: AtomicU64::new(policy.target),
        });
        let task = BatchTask {
            tuning: Arc::clone(&tuning),
            free: Arc::new(Semaphore::new(pool.size().max(1))),
            pool,
            incoming,
            pending: VecDeque::new(),
            policy: policy.clone(),
            queued: Arc::clone(&queued),
            stats: Arc::clone(&stats),
            open: true,
        };
        tokio::spawn(task.run());
        Batcher {
            requests,
            queued,
            max_queue: policy.max_queue,
            max_batch: policy.max_batch,
            tuning,
            stats,
            label: label.to_string(),
        }
    }

    /// The current (max queue delay, preferred batch size, max batch size).
    pub fn settings(&self) -> (Duration, u64, u64) {
        (
            Duration::from_micros(self.tuning.max_delay_us.load(Ordering::Relaxed)),
            self.tuning.target.load(Ordering::Relaxed),
            self.max_batch,
        )
    }

    /// Changes the queue delay and preferred batch size (clamped to 1..=max batch) of
    /// batches formed from now on.
    pub fn tune(&self, max_delay: Duration, preferred: u64) {
        let delay = u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX);
        self.tuning.max_delay_us.store(delay, Ordering::Relaxed);
        self.tuning
            .target
            .store(preferred.clamp(1, self.max_batch), Ordering::Relaxed);
    }

    /// Queues `work` and waits for its share of a batch.
    pub async fn submit(&self, work: Work) -> Result<Done, ServingError> {
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_queue).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(ServingError::Unavailable(format!(
                "{}: the queue is full ({} requests waiting), retry later",
                self.label, self.max_queue
            )));
        }
        self.stats.queued(1);
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            work,
            enqueued: Instant::now(),
            reply,
        };
        if self.requests.send(queued).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats.dequeued(1);
            return Err(ServingError::Unavailable(format!(
                "{} is unloading",
                self.label
            )));
        }
        answer.await.map_err(|_| {
            ServingError::Internal(format!(
                "{}: the batcher stopped before replying",
                self.label
            ))
        })?
    }
}

struct BatchTask {
    pool: InstancePool,
    incoming: mpsc::UnboundedReceiver<Queued>,
    pending: VecDeque<Queued>,
    policy: BatchPolicy,
    tuning: Arc<Tuning>,
    /// Free instances: a batch is formed only when one can run it, so requests that
    /// arrive while all instances are busy join the next batch instead of queueing.
    free: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    stats: Arc<VersionStats>,
    /// False once every handle is gone.
    open: bool,
}

impl BatchTask {
    async fn run(mut self) {
        while self.open || !self.pending.is_empty() {
            if self.pending.is_empty() {
                match self.incoming.recv().await {
                    Some(q) => self.pending.push_back(q),
                    None => break,
                }
            }
            let Some(permit) = self.wait_for_instance().await else {
                continue;
            };
            let batch = self.gather().await;
            if batch.is_empty() {
                continue;
            }
            self.dispatch(batch, permit);
        }
    }

    /// Waits for a free instance, refusing requests whose timeout passes meanwhile.
    /// `None` when every pending request timed out.
    async fn wait_for_instance(&mut self) -> Option<OwnedSemaphorePermit> {
        loop {
            let deadline = self.next_deadline();
            let free = Arc::clone(&self.free);
            tokio::select! {
                permit = free.acquire_owned() => {
                    // The semaphore is never closed, so acquiring cannot fail.
                    return permit.ok();
                }
                () = sleep_until(deadline) => {
                    self.receive_ready();
                    self.expire();
                    if self.pending.is_empty() {
                        return None;
                    }
                }
            }
        }
    }

    /// Collects the batch: requests compatible with the oldest, up to the target rows,
    /// waiting until the oldest has been queued `max_delay` for more to arrive.
    async fn gather(&mut self) -> Vec<Queued> {
        self.receive_ready();
        self.expire();
        let Some(head) = self.pending.front() else {
            return Vec::new();
        };
        let delay = Duration::from_micros(self.tuning.max_delay_us.load(Ordering::Relaxed));
        let target = self.tuning.target.load(Ordering::Relaxed);
        let flush_at = head.enqueued + delay;
        loop {
            let (rows, _) = self.compatible();
            if rows >= target || !self.open || Instant::now() >= flush_at {
                break;
            }
            match tokio::time::timeout_at(flush_at.into(), self.incoming.recv()).await {
                Ok(Some(q)) => {
                    self.pending.push_back(q);
                    self.receive_ready();
                }
                Ok(None) => self.open = false,
                Err(_) => break,
            }
        }
        let (_, picked) = self.compatible();
        let mut batch = Vec::with_capacity(picked.len());
        for index in picked.into_iter().rev() {
            if let Some(q) = self.pending.remove(index) {
                batch.push(q);
            }
        }
        batch.reverse();
        batch
    }

    /// Rows and queue positions of the requests that can join the oldest one, in order,
    /// stopping at the first that would overflow `max_batch`.
    fn compatible(&self) -> (u64, Vec<usize>) {
        let Some(head) = self.pending.front() else {
            return (0, Vec::new());
        };
        let mut rows = 0;
        let mut picked = Vec::new();
        for (i, q) in self.pending.iter().enumerate() {
            if !q.fits_with(head) {
                continue;
            }
            if rows + q.work.rows > self.policy.max_batch {
                break;
            }
            rows += q.work.rows;
            picked.push(i);
        }
        (rows, picked)
    }

    fn receive_ready(&mut self) {
        loop {
            match self.incoming.try_recv() {
                Ok(q) => self.pending.push_back(q),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.open = false;
                    return;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.policy.timeout?;
        self.pending.iter().map(|q| q.enqueued + timeout).min()
    }

    /// Refuses the requests that waited longer than the queue policy allows.
    fn expire(&mut self) {
        let Some(timeout) = self.policy.timeout else {
            return;
        };
        let now = Instant::now();
        let (expired, kept): (VecDeque<Queued>, VecDeque<Queued>) = self
            .pending
            .drain(..)
            .partition(|q| now.duration_since(q.enqueued) >= timeout);
        self.pending = kept;
        for q in expired {
            self.release(1);
            let _ = q.reply.send(Err(ServingError::Unavailable(format!(
                "request timed out after waiting {} µs in the queue (default_timeout_microseconds)",
                timeout.as_micros()
            ))));
        }
    }

    fn release(&self, requests: usize) {
        self.queued.fetch_sub(requests, Ordering::AcqRel);
        self.stats.dequeued(requests as u64);
    }

    fn dispatch(&mut self, batch: Vec<Queued>, permit: OwnedSemaphorePermit) {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let requests = batch.len() as u64;
        let rows: u64 = batch.iter().map(|q| q.work.rows).sum();
        let (inputs, outputs, waiting) = match join(batch) {
            Ok(joined) => joined,
            Err((error, waiting)) => {
                self.stats.dequeued(requests);
                let error = ServingError::Internal(error);
                for w in waiting {
                    let _ = w.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let execution = Execution {
            inputs,
            outputs,
            rows,
            requests,
            permit: Some(permit),
            reply: Box::new(move |result| answer(result, waiting, rows)),
        };
        self.pool.submit(execution);
    }
}

/// What a request needs back once its batch has run.
struct Waiting {
    rows: u64,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Done, ServingError>>,
}

type Joined = (Vec<Tensor>, Vec<String>, Vec<Waiting>);

/// Concatenates the batch's inputs along dimension 0.
fn join(mut batch: Vec<Queued>) -> Result<Joined, (String, Vec<Waiting>)> {
    let outputs = batch[0].work.outputs.clone();
    let total: i64 = batch.iter().map(|q| q.work.rows as i64).sum();
    let inputs = if batch.len() == 1 {
        std::mem::take(&mut batch[0].work.inputs)
    } else {
        let mut inputs = Vec::with_capacity(batch[0].work.inputs.len());
        for i in 0..batch[0].work.inputs.len() {
            let parts: Vec<&TensorData> = batch.iter().map(|q| &q.work.inputs[i].data).collect();
            let first = &batch[0].work.inputs[i];
            let mut shape = first.shape.clone();
            shape[0] = total;
            let data = TensorData::concat(&parts);
            match data.and_then(|d| Tensor::new(first.name.clone(), shape, d).ok()) {
                Some(t) => inputs.push(t),
                None => {
                    let error = format!("input '{}' could not be batched", first.name);
                    return Err((error, waiting(batch)));
                }
            }
        }
        inputs
    };
    Ok((inputs, outputs, waiting(batch)))
}

fn waiting(batch: Vec<Queued>) -> Vec<Waiting> {
    batch
        .into_iter()
        .map(|q| Waiting {
            rows: q.work.rows,
            enqueued: q.enqueued,
            reply: q.reply,
        })
        .collect()
}

/// Splits a batch's outputs along dimension 0 and answers each request.
fn answer(result: Result<Executed, ServingError>, waiting: Vec<Waiting>, rows: u64) {
    let executed = match result {
        Ok(e) => e,
        Err(e) => {
            for w in waiting {
                let _ = w.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let Executed {
        outputs,
        started,
        compute,
    } = executed;
    let waiting = match <[Waiting; 1]>::try_from(waiting) {
        Ok([w]) => {
            let queue = started.saturating_duration_since(w.enqueued);
            let _ = w.reply.send(Ok(Done {
                outputs,
                queue,
                compute,
                batch_rows: rows,
            }));
            return;
        }
        Err(waiting) => waiting,
    };
    let split = split_outputs(outputs, &waiting, rows);
    for (w, outputs) in waiting.into_iter().zip(split) {
        let queue = started.saturating_duration_since(w.enqueued);
        let _ = w.reply.send(outputs.map(|outputs| Done {
            outputs,
            queue,
            compute,
            batch_rows: rows,
        }));
    }
}

/// Per request, its rows of every output; an error for all when an output does not have
/// the batch as its first dimension.
fn split_outputs(
    outputs: Vec<Tensor>,
    waiting: &[Waiting],
    rows: u64,
) -> Vec<Result<Vec<Tensor>, ServingError>> {
    let mut per_request: Vec<Vec<Tensor>> = waiting
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        let batched = output.shape.first() == Some(&(rows as i64));
        let row_len = output.data.len() / rows.max(1) as usize;
        let counts: Vec<usize> = waiting.iter().map(|w| w.rows as usize * row_len).collect();
        let pieces = batched.then(|| output.data.split(&counts)).flatten();
        let Some(pieces) = pieces else {
            let error = ServingError::Internal(format!(
                "output '{}' has shape {:?}, which does not split into a batch of {rows}",
                output.name, output.shape
            ));
            return waiting.iter().map(|_| Err(error.clone())).collect();
        };
        for ((piece, w), mine) in pieces.into_iter().zip(waiting).zip(per_request.iter_mut()) {
            let mut shape = output.shape.clone();
            shape[0] = w.rows as i64;
            mine.push(Tensor {
                name: output.name.clone(),
                shape,
                data: piece,
            });
        }
    }
    per_request.into_iter().map(Ok).collect()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_models::config::parse_text;

    #[test]
    fn policy_follows_the_config() {
        let config = parse_text(
            "max_batch_size: 16 dynamic_batching { preferred_batch_size: [4, 8, 32] max_queue_delay_microseconds: 250 \
             default_queue_policy { max_queue_size: 7 default_timeout_microseconds: 900 timeout_action: REJECT } }",
        )
        .unwrap();
        let policy = BatchPolicy::from_config(&config, 100).unwrap();
        assert_eq!(
            policy,
            BatchPolicy {
                max_batch: 16,
                target: 8,
                max_delay: Duration::from_micros(250),
                max_queue: 7,
                timeout: Some(Duration::from_micros(900)),
            }
        );
        let delayed = parse_text(
            "max_batch_size: 4 dynamic_batching { default_queue_policy { default_timeout_microseconds: 9 timeout_action: DELAY } }",
        )
        .unwrap();
        let policy = BatchPolicy::from_config(&delayed, 100).unwrap();
        assert_eq!(
            (policy.target, policy.max_queue, policy.timeout),
            (4, 100, None)
        );
        assert!(BatchPolicy::from_config(&parse_text("max_batch_size: 4").unwrap(), 1).is_none());
        assert!(BatchPolicy::from_config(&parse_text("dynamic_batching {}").unwrap(), 1).is_none());
    }

    fn queued(
        rows: u64,
        width: i64,
        outputs: &[&str],
    ) -> (Queued, oneshot::Receiver<Result<Done, ServingError>>) {
        let (reply, rx) = oneshot::channel();
        let n = (rows as i64 * width) as usize;
        let data = TensorData::F32((0..n).map(|v| v as f32 + rows as f32 * 100.0).collect());
        let work = Work {
            inputs: vec![Tensor::new("x", vec![rows as i64, width], data).unwrap()],
            outputs: outputs.iter().map(|o| o.to_string()).collect(),
            rows,
        };
        (
            Queued {
                work,
                enqueued: Instant::now(),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn only_matching_shapes_and_outputs_share_a_batch() {
        let (a, _) = queued(1, 4, &["y"]);
        assert!(a.fits_with(&queued(3, 4, &["y"]).0));
        assert!(!a.fits_with(&queued(1, 5, &["y"]).0));
        assert!(!a.fits_with(&queued(1, 4, &["z"]).0));
    }

    #[test]
    fn join_then_split_gives_each_request_its_rows() {
        let (a, mut ra) = queued(1, 2, &["y"]);
        let (b, mut rb) = queued(2, 2, &["y"]);
        let expect_a = a.work.inputs[0].data.clone();
        let expect_b = b.work.inputs[0].data.clone();
        let (inputs, outputs, waiting) = join(vec![a, b]).map_err(|(e, _)| e).unwrap();
        assert_eq!(inputs[0].shape, vec![3, 2]);
        assert_eq!(outputs, vec!["y"]);
        // An identity model: the output is the joined input.
        let output = Tensor::new("y", inputs[0].shape.clone(), inputs[0].data.clone()).unwrap();
        let executed = Executed {
            outputs: vec![output],
            started: Instant::now(),
            compute: Default::default(),
        };
        answer(Ok(executed), waiting, 3);
        let got_a = ra.try_recv().unwrap().unwrap();
        let got_b = rb.try_recv().unwrap().unwrap();
        assert_eq!(got_a.outputs[0].shape, vec![1, 2]);
        assert_eq!(got_a.outputs[0].data, expect_a);
        assert_eq!(got_b.outputs[0].shape, vec![2, 2]);
        assert_eq!(got_b.outputs[0].data, expect_b);
    }

    #[test]
    fn outputs_without_the_batch_dimension_fail_every_request() {
        let (a, mut ra) = queued(1, 2, &["y"]);
        let (b, mut rb) = queued(1, 2, &["y"]);
        let (_, _, waiting) = join(vec![a, b]).map_err(|(e, _)| e).unwrap();
        let scalar = Tensor::new("y", vec![1], TensorData::F32(vec![1.0])).unwrap();
        let executed = Executed {
            outputs: vec![scalar],
            started: Instant::now(),
            compute: Default::default(),
        };
        answer(Ok(executed), waiting, 2);
        for rx in [&mut ra, &mut rb] {
            let err = rx.try_recv().unwrap().unwrap_err();
            assert!(
                err.to_string().contains("does not split into a batch of 2"),
                "{err}"
            );
        }
    }
}
