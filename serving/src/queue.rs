//! The request queue of one model version, which its instance threads pull from.
//!
//! Callers (async tasks) send a request down a channel and wait on a oneshot; an instance
//! thread that is free receives the oldest request, or a batch of requests when the version
//! batches, which it forms in a buffer of its own ([`Pending`]). No lock is shared between
//! callers and instances and no task sits between them: a request reaches an idle instance
//! in one thread hand-off, and a busy instance takes the next request (or what queued
//! meanwhile, as one batch) without waking anything. The queue is bounded; a request that
//! waits longer than its timeout, or whose caller is gone, is dropped before it runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use nexus_models::{ComputeTimings, Tensor};

use crate::error::ServingError;
use crate::metrics::VersionStats;

/// A validated request: inputs in the config's order with the batch dimension, the
/// outputs to return, and how many rows it holds.
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

/// Where a queued request stands; the caller and the instances race for it with one
/// compare-and-swap, so a request either runs or is dropped, never both.
const WAITING: u8 = 0;
const TAKEN: u8 = 1;
/// Timed out or abandoned by its caller: skipped by the instances.
const DROPPED: u8 = 2;

pub(crate) type Reply = oneshot::Sender<Result<Done, ServingError>>;

/// A request in the queue.
pub(crate) struct Queued {
    pub work: Work,
    pub enqueued: Instant,
    state: Arc<AtomicU8>,
    pub reply: Reply,
}

impl Queued {
    fn is_waiting(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    /// Claims the request for an execution; false when its caller dropped it first.
    fn claim(&self) -> bool {
        self.state
            .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Requests can share an execution when they give the same inputs with the same
    /// non-batch dimensions and ask for the same outputs.
    pub fn fits_with(&self, other: &Queued) -> bool {
        let (a, b) = (&self.work, &other.work);
        a.outputs == b.outputs
            && a.inputs.len() == b.inputs.len()
            && a.inputs
                .iter()
                .zip(&b.inputs)
                .all(|(x, y)| x.name == y.name && x.shape.get(1..) == y.shape.get(1..))
    }
}

/// The requests an instance thread has received and not yet taken: where it forms a
/// batch. Owned by that thread alone.
pub(crate) struct Pending {
    items: VecDeque<Queued>,
    receiver: Receiver<Queued>,
    /// False once the queue is gone (the version is unloading): what was sent before still
    /// runs, then the instance stops.
    open: bool,
}

impl Pending {
    pub fn new(receiver: Receiver<Queued>) -> Self {
        Pending {
            items: VecDeque::new(),
            receiver,
            open: true,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The oldest request still waiting, after dropping the ones that were abandoned;
    /// blocks until one arrives. `None` once the queue is gone and nothing is left.
    pub fn head(&mut self) -> Option<&Queued> {
        loop {
            while self.items.front().is_some_and(|q| !q.is_waiting()) {
                self.items.pop_front();
            }
            if !self.items.is_empty() {
                return self.items.front();
            }
            // `recv` fails only once the queue is gone.
            let received = self.receiver.recv().map_err(|_| true);
            if !self.keep(received) {
                return None;
            }
        }
    }

    /// Receives a request already sent, without waiting; false when there is none.
    pub fn pull(&mut self) -> bool {
        let received = self.receiver.try_recv().map_err(|e| e.is_disconnected());
        self.keep(received)
    }

    /// Waits until a request arrives (true) or `until` passes (false).
    pub fn pull_until(&mut self, until: Instant) -> bool {
        let received = self
            .receiver
            .recv_deadline(until)
            .map_err(|e| e.is_disconnected());
        self.keep(received)
    }

    /// Keeps a received request (true), or notes that the queue is gone when receiving
    /// failed because it was (the error is whether it was).
    fn keep(&mut self, received: Result<Queued, bool>) -> bool {
        match received {
            Ok(q) => {
                self.items.push_back(q);
                true
            }
            Err(disconnected) => {
                self.open &= !disconnected;
                false
            }
        }
    }

    /// Rows of the last request received when it can join the oldest one; 0 otherwise.
    pub fn newest_fitting_rows(&self) -> u64 {
        match (self.items.front(), self.items.back()) {
            (Some(head), Some(newest)) if newest.fits_with(head) => newest.work.rows,
            _ => 0,
        }
    }

    /// Rows and positions of the waiting requests that can join the oldest one, in
    /// order, stopping at the first that would take the total past `max_rows`.
    pub fn compatible(&mut self, max_rows: u64) -> (u64, Vec<usize>) {
        self.items.retain(Queued::is_waiting);
        let Some(head) = self.items.front() else {
            return (0, Vec::new());
        };
        let mut rows = 0;
        let mut picked = Vec::new();
        for (i, q) in self.items.iter().enumerate() {
            if !q.fits_with(head) {
                continue;
            }
            if rows + q.work.rows > max_rows && !picked.is_empty() {
                break;
            }
            rows += q.work.rows;
            picked.push(i);
        }
        (rows, picked)
    }

    /// Removes the requests at `positions` (ascending) and claims them; the ones whose
    /// caller dropped them meanwhile are left out.
    pub fn take(&mut self, positions: &[usize]) -> Vec<Queued> {
        let mut taken = Vec::with_capacity(positions.len());
        for &i in positions.iter().rev() {
            if let Some(q) = self.items.remove(i)
                && q.claim()
            {
                taken.push(q);
            }
        }
        taken.reverse();
        taken
    }
}

/// One model version's queue: its callers send, its instance threads receive.
pub(crate) struct Queue {
    sender: Sender<Queued>,
    receiver: Receiver<Queued>,
    counts: Arc<Counts>,
    capacity: usize,
    /// How long a request may wait before it is refused; `None` waits as long as it takes.
    timeout: Option<Duration>,
    label: String,
}

/// What the callers and the instances of a version count together.
pub(crate) struct Counts {
    /// Requests admitted and neither taken nor dropped: what the queue's capacity bounds.
    admitted: AtomicUsize,
    stats: Arc<VersionStats>,
}

impl Counts {
    /// Counts requests leaving the queue: taken by an instance to run, or dropped.
    pub fn left(&self, requests: usize) {
        self.admitted.fetch_sub(requests, Ordering::AcqRel);
        self.stats.dequeued(requests as u64);
    }
}

impl Queue {
    pub fn new(
        label: &str,
        capacity: usize,
        timeout: Option<Duration>,
        stats: Arc<VersionStats>,
    ) -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded();
        Queue {
            sender,
            receiver,
            counts: Arc::new(Counts {
                admitted: AtomicUsize::new(0),
                stats,
            }),
            capacity: capacity.max(1),
            timeout,
            label: label.to_string(),
        }
    }

    /// An instance thread's end of the queue. Once the queue is dropped, the instances
    /// receive what was sent before and then find it closed.
    pub fn subscribe(&self) -> (Pending, Arc<Counts>) {
        (
            Pending::new(self.receiver.clone()),
            Arc::clone(&self.counts),
        )
    }

    /// Queues `work` and waits for its outputs.
    pub async fn submit(&self, work: Work) -> Result<Done, ServingError> {
        let admitted =
            self.counts
                .admitted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.capacity).then_some(n + 1)
                });
        if admitted.is_err() {
            return Err(ServingError::Unavailable(format!(
                "{}: the queue is full ({} requests waiting), retry later",
                self.label, self.capacity
            )));
        }
        let (reply, mut answer) = oneshot::channel();
        let enqueued = Instant::now();
        let state = Arc::new(AtomicU8::new(WAITING));
        self.counts.stats.queued(1);
        let queued = Queued {
            work,
            enqueued,
            state: Arc::clone(&state),
            reply,
        };
        // Cannot fail: the queue holds a receiver itself, so the channel is open while it lives.
        let _ = self.sender.send(queued);
        // Dropped with the caller's future (a client that went away) or on timeout, the
        // ticket takes the request out of the count, and the instances skip it.
        let ticket = Ticket { queue: self, state };
        let result = match self.timeout {
            None => (&mut answer).await,
            Some(timeout) => {
                match tokio::time::timeout_at((enqueued + timeout).into(), &mut answer).await {
                    Ok(result) => result,
                    Err(_) if ticket.drop_request() => {
                        return Err(ServingError::Unavailable(format!(
                            "request timed out after waiting {} µs in the queue \
                             (default_timeout_microseconds)",
                            timeout.as_micros()
                        )));
                    }
                    // An instance took it just now: it runs, so wait for it.
                    Err(_) => (&mut answer).await,
                }
            }
        };
        drop(ticket);
        result.map_err(|_| {
            ServingError::Internal(format!(
                "{}: the instance stopped before replying",
                self.label
            ))
        })?
    }

    /// Whether no request is waiting to be received.
    pub fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }
}

/// A caller's hold on its queued request.
struct Ticket<'a> {
    queue: &'a Queue,
    state: Arc<AtomicU8>,
}

impl Ticket<'_> {
    /// Drops the request if no instance has taken it; true when it was dropped.
    fn drop_request(&self) -> bool {
        let dropped = self
            .state
            .compare_exchange(WAITING, DROPPED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if dropped {
            self.queue.counts.left(1);
        }
        dropped
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.drop_request();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use nexus_models::TensorData;

    use super::*;

    /// A waiting request of `rows` rows of `width` values, and the receiver of its answer.
    pub(crate) fn queued(
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
                state: Arc::new(AtomicU8::new(WAITING)),
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
    fn a_batch_skips_dropped_requests_and_stops_at_the_row_limit() {
        let (_sender, receiver) = crossbeam_channel::unbounded();
        let mut pending = Pending::new(receiver);
        for (rows, width) in [(1, 4), (2, 4), (1, 5), (3, 4), (1, 4)] {
            pending.items.push_back(queued(rows, width, &["y"]).0);
        }
        // The caller of the second request went away.
        pending.items[1].state.store(DROPPED, Ordering::Release);
        let (rows, picked) = pending.compatible(4);
        assert_eq!((rows, picked.clone()), (4, vec![0, 2]));
        let taken = pending.take(&picked);
        assert_eq!(
            taken.iter().map(|q| q.work.rows).collect::<Vec<_>>(),
            vec![1, 3]
        );
        // Left: the 5-wide request, then the last one.
        assert_eq!(pending.items.len(), 2);
        assert_eq!(pending.head().unwrap().work.inputs[0].shape, vec![1, 5]);
    }

    #[test]
    fn a_request_larger_than_the_limit_still_runs_alone() {
        let (_sender, receiver) = crossbeam_channel::unbounded();
        let mut pending = Pending::new(receiver);
        pending.items.push_back(queued(8, 2, &["y"]).0);
        pending.items.push_back(queued(1, 2, &["y"]).0);
        assert_eq!(pending.compatible(4), (8, vec![0]));
    }
}
