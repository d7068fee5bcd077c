//! Triton's dynamic batcher: how an instance forms a batch from its version's queue.
//!
//! A free instance takes the oldest request and the queued requests whose non-batch shapes
//! and requested outputs match it, up to `max_batch_size` (or the largest preferred batch
//! size), waiting at most `max_queue_delay_microseconds` after the oldest arrived for more
//! (on the instance's own thread, so sub-millisecond delays hold). It joins them along
//! dimension 0, runs them as one execution and splits the outputs back. While every instance
//! is busy, requests gather in the queue and the next free instance takes them together:
//! batching never leaves an instance idle while requests wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nexus_models::pb::model_config::SchedulingChoice;
use nexus_models::pb::model_queue_policy::TimeoutAction;
use nexus_models::{ComputeTimings, ModelConfig, Tensor, TensorData};

use crate::error::ServingError;
use crate::queue::{Done, Pending, Queued, Reply};

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

/// The two settings the optimiser tunes while the batcher runs; read at every batch.
#[derive(Debug)]
struct Tuning {
    max_delay_us: AtomicU64,
    target: AtomicU64,
}

/// A version's batching: its policy and the settings the optimiser tunes live.
pub struct Batcher {
    policy: BatchPolicy,
    tuning: Tuning,
}

impl Batcher {
    pub fn new(policy: BatchPolicy) -> Self {
        let tuning = Tuning {
            max_delay_us: AtomicU64::new(
                u64::try_from(policy.max_delay.as_micros()).unwrap_or(u64::MAX),
            ),
            target: AtomicU64::new(policy.target),
        };
        Batcher { policy, tuning }
    }

    /// The queue policy: how many requests may wait, and for how long.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// The current (max queue delay, preferred batch size, max batch size).
    pub fn settings(&self) -> (Duration, u64, u64) {
        (
            Duration::from_micros(self.tuning.max_delay_us.load(Ordering::Relaxed)),
            self.tuning.target.load(Ordering::Relaxed),
            self.policy.max_batch,
        )
    }

    /// Changes the queue delay and preferred batch size (clamped to 1..=max batch) of
    /// batches formed from now on.
    pub fn tune(&self, max_delay: Duration, preferred: u64) {
        let delay = u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX);
        self.tuning.max_delay_us.store(delay, Ordering::Relaxed);
        self.tuning
            .target
            .store(preferred.clamp(1, self.policy.max_batch), Ordering::Relaxed);
    }

    /// Forms the next batch for a free instance from `pending`, whose oldest request is
    /// waiting: requests compatible with it, up to the target rows, waiting until it has
    /// been queued the max delay for more to arrive. Empty when the requests it waited
    /// for were dropped meanwhile.
    pub(crate) fn gather(&self, pending: &mut Pending) -> Vec<Queued> {
        let delay = Duration::from_micros(self.tuning.max_delay_us.load(Ordering::Relaxed));
        let target = self.tuning.target.load(Ordering::Relaxed);
        let Some(head) = pending.head() else {
            return Vec::new();
        };
        let flush_at = head.enqueued + delay;
        let (mut rows, _) = pending.compatible(self.policy.max_batch);
        loop {
            // Receive what was sent meanwhile, up to the target: with several instances,
            // what this one does not need stays in the channel for the others.
            while rows < target && pending.pull() {
                rows += pending.newest_fitting_rows();
            }
            if rows >= target || !pending.is_open() || Instant::now() >= flush_at {
                break;
            }
            if pending.pull_until(flush_at) {
                rows += pending.newest_fitting_rows();
            }
        }
        let (_, picked) = pending.compatible(self.policy.max_batch);
        pending.take(&picked)
    }
}

/// The outputs of one execution, with when it started and how long each phase took.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub started: Instant,
    pub compute: ComputeTimings,
}

/// Runs `batch` as one execution with `infer` (full input tensors in, outputs out) and
/// answers each request with its rows. Returns the rows run.
pub(crate) fn execute(
    batch: Vec<Queued>,
    infer: impl FnOnce(&[Tensor], &[String]) -> Result<Executed, ServingError>,
) -> u64 {
    match join(batch) {
        Ok((inputs, outputs, waiting)) => {
            let rows = waiting.iter().map(|w| w.rows).sum();
            answer(infer(&inputs, &outputs), waiting, rows);
            rows
        }
        Err((error, waiting)) => {
            let error = ServingError::Internal(error);
            for w in waiting {
                let _ = w.reply.send(Err(error.clone()));
            }
            0
        }
    }
}

/// What a request needs back once its batch has run.
struct Waiting {
    rows: u64,
    enqueued: Instant,
    reply: Reply,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::queued;
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
