//! The in-process bus (`nexus up` without `--kafka-brokers`, and tests).
//!
//! It keeps Kafka's contract on one partition (0) per topic:
//!
//! - each topic is a log with offsets, bounded to `capacity` events and `max_bytes` bytes
//!   (payload, key and bookkeeping; [`DEFAULT_MAX_BYTES`] unless told): publishing past
//!   either evicts the oldest events (counted as dropped with reason `evicted` when a
//!   consumer group had not read them yet), so `publish` always succeeds and never waits;
//! - a consumer group has a committed offset; a new group starts at the earliest retained
//!   event, a later subscriber of the group resumes after the last commit, so what was
//!   delivered but not committed is delivered again;
//! - like Kafka's single partition, a group's partition belongs to one member at a time:
//!   the oldest live subscription of the group reads, later ones wait until it is dropped
//!   and then take over from the group's committed offset;
//! - `replay` returns every retained event.
//!
//! Nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{BoxFuture, Delivery, EventBus, EventError, Subscription, Topic};

/// Events a topic keeps by default (the `--event-buffer` default).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Bytes a topic keeps by default, whatever its event count: inference events that carry
/// sampled tensors can be megabytes each, and the count alone would not bound them.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// Bytes an event is counted as beyond its payload and key: its queue slot (at the
/// queue's worst load, twice the slot) and two allocation headers.
const EVENT_OVERHEAD: usize = 2 * std::mem::size_of::<Stored>() + 32;

/// An in-process event bus with Kafka's semantics (see the module docs).
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    max_bytes: usize,
    logs: [TopicLog; 3],
    next_member: AtomicU64,
}

struct TopicLog {
    state: Mutex<LogState>,
    /// Woken on every publish and whenever a group member leaves.
    changed: Notify,
}

#[derive(Default)]
struct LogState {
    /// Retained events; `events[i]` has offset `start + i`.
    events: VecDeque<Stored>,
    /// Offset of the oldest retained event.
    start: i64,
    /// Sum of [`Stored::cost`] over `events`.
    bytes: usize,
    groups: HashMap<String, Group>,
}

struct Stored {
    key: Option<String>,
    payload: Vec<u8>,
}

impl Stored {
    /// Bytes this event is counted as against a topic's `max_bytes`.
    fn cost(&self) -> usize {
        EVENT_OVERHEAD + self.payload.capacity() + self.key.as_ref().map_or(0, String::capacity)
    }
}

#[derive(Default)]
struct Group {
    /// The next offset to read after the last commit; None until the first commit.
    committed: Option<i64>,
    /// The next offset the owning member delivers; None until it read (and again after
    /// it left, so the next owner resumes after the commit).
    position: Option<i64>,
    /// Live subscriptions, oldest first; the first one owns the partition.
    members: VecDeque<u64>,
}

impl LogState {
    fn end(&self) -> i64 {
        self.start + self.events.len() as i64
    }

    fn delivery(&self, topic: Topic, offset: i64) -> Delivery {
        let stored = &self.events[(offset - self.start) as usize];
        Delivery {
            topic,
            key: stored.key.clone(),
            payload: stored.payload.clone(),
            partition: 0,
            offset,
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(DEFAULT_CAPACITY)
    }
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("capacity", &self.inner.capacity)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

impl MemoryBus {
    /// A bus whose topics each keep the last `capacity` events (at least one), in at most
    /// [`DEFAULT_MAX_BYTES`].
    pub fn new(capacity: usize) -> MemoryBus {
        MemoryBus::with_max_bytes(capacity, DEFAULT_MAX_BYTES)
    }

    /// A bus whose topics each keep the last `capacity` events (at least one) in at most
    /// `max_bytes` (the newest event is kept even when it alone is larger).
    pub fn with_max_bytes(capacity: usize, max_bytes: usize) -> MemoryBus {
        let log = || TopicLog {
            state: Mutex::new(LogState::default()),
            changed: Notify::new(),
        };
        MemoryBus {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                max_bytes,
                logs: [log(), log(), log()],
                next_member: AtomicU64::new(1),
            }),
        }
    }

    /// How many events a topic keeps.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// How many bytes a topic keeps.
    pub fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }

    /// Bytes `topic` holds now, as counted against [`MemoryBus::max_bytes`].
    pub fn retained_bytes(&self, topic: Topic) -> usize {
        self.inner.log(topic).state.lock().bytes
    }

    /// The offsets `[earliest retained, next to be written)` of `topic`.
    pub fn watermarks(&self, topic: Topic) -> (i64, i64) {
        let state = self.inner.log(topic).state.lock();
        (state.start, state.end())
    }

    /// The committed offset (next to read) of `group` on `topic`, if it committed.
    pub fn committed(&self, topic: Topic, group: &str) -> Option<i64> {
        let state = self.inner.log(topic).state.lock();
        state.groups.get(group).and_then(|g| g.committed)
    }

    fn append(&self, topic: Topic, key: &str, payload: Vec<u8>) {
        let log = self.inner.log(topic);
        let mut evicted_unread = 0u64;
        {
            let mut state = log.state.lock();
            let stored = Stored {
                key: Some(key.to_owned()),
                payload,
            };
            state.bytes += stored.cost();
            state.events.push_back(stored);
            while state.events.len() > self.inner.capacity
                || (state.bytes > self.inner.max_bytes && state.events.len() > 1)
            {
                if let Some(gone) = state.events.pop_front() {
                    state.bytes -= gone.cost();
                }
                let evicted = state.start;
                state.start += 1;
                // Unread by a group: its reading position (or commit, or the beginning
                // for a group that never committed) is at or before the evicted event.
                if state
                    .groups
                    .values()
                    .any(|g| g.position.or(g.committed).is_none_or(|p| p <= evicted))
                {
                    evicted_unread += 1;
                }
            }
        }
        log.changed.notify_waiters();
        crate::published(topic);
        for _ in 0..evicted_unread {
            crate::dropped(topic, "evicted");
        }
    }
}

impl Inner {
    fn log(&self, topic: Topic) -> &TopicLog {
        match topic {
            Topic::Inference => &self.logs[0],
            Topic::Feedback => &self.logs[1],
            Topic::Decisions => &self.logs[2],
        }
    }
}

impl EventBus for MemoryBus {
    fn publish(&self, topic: Topic, key: &str, payload: Vec<u8>) -> bool {
        self.append(topic, key, payload);
        true
    }

    fn publish_confirmed<'a>(
        &'a self,
        topic: Topic,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), EventError>> {
        self.append(topic, key, payload);
        Box::pin(async { Ok(()) })
    }

    fn subscribe<'a>(
        &'a self,
        topic: Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, EventError>> {
        let member = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.inner.log(topic).state.lock();
            state
                .groups
                .entry(group.to_owned())
                .or_default()
                .members
                .push_back(member);
        }
        let subscription = MemorySubscription {
            inner: self.inner.clone(),
            topic,
            group: group.to_owned(),
            member,
        };
        Box::pin(async move { Ok(Box::new(subscription) as Box<dyn Subscription>) })
    }

    fn replay(&self, topic: Topic) -> BoxFuture<'_, Result<Vec<Delivery>, EventError>> {
        let events = {
            let state = self.inner.log(topic).state.lock();
            (state.start..state.end())
                .map(|offset| state.delivery(topic, offset))
                .collect()
        };
        Box::pin(async move { Ok(events) })
    }

    fn healthy(&self) -> BoxFuture<'_, Result<(), EventError>> {
        Box::pin(async { Ok(()) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// One member of a consumer group on one topic of a [`MemoryBus`].
struct MemorySubscription {
    inner: Arc<Inner>,
    topic: Topic,
    group: String,
    member: u64,
}

impl MemorySubscription {
    /// The next event if one is ready for this member.
    fn try_next(&mut self) -> Option<Delivery> {
        let log = self.inner.log(self.topic);
        let mut state = log.state.lock();
        let (start, end) = (state.start, state.end());
        let group = state.groups.get_mut(&self.group)?;
        if group.members.front() != Some(&self.member) {
            // Another member owns the partition; wait until it leaves.
            return None;
        }
        // Resume after the commit (a new group: from the earliest retained event); an
        // offset evicted meanwhile resets to the earliest, like auto.offset.reset.
        let position = group
            .position
            .or(group.committed)
            .unwrap_or(start)
            .max(start);
        if position >= end {
            group.position = Some(position);
            return None;
        }
        group.position = Some(position + 1);
        Some(state.delivery(self.topic, position))
    }
}

impl Subscription for MemorySubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, EventError>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            let log = inner.log(self.topic);
            loop {
                let notified = log.changed.notified();
                tokio::pin!(notified);
                // Registered before looking, so a publish in between is not missed.
                notified.as_mut().enable();
                if let Some(delivery) = self.try_next() {
                    return Ok(delivery);
                }
                notified.await;
            }
        })
    }

    fn commit<'a>(&'a mut self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), EventError>> {
        let result = if delivery.topic != self.topic || delivery.partition != 0 {
            Err(EventError::Broker(format!(
                "cannot commit {}/{}@{} on a subscription to {}",
                delivery.topic.label(),
                delivery.partition,
                delivery.offset,
                self.topic.label()
            )))
        } else {
            let mut state = self.inner.log(self.topic).state.lock();
            match state.groups.get_mut(&self.group) {
                Some(group) => {
                    group.committed = Some(delivery.offset + 1);
                    Ok(())
                }
                None => Err(EventError::Closed),
            }
        };
        Box::pin(async move { result })
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let log = self.inner.log(self.topic);
        {
            let mut state = log.state.lock();
            if let Some(group) = state.groups.get_mut(&self.group) {
                if group.members.front() == Some(&self.member) {
                    // What it delivered but did not commit goes to the next owner.
                    group.position = None;
                }
                group.members.retain(|m| *m != self.member);
            }
        }
        // The next member of the group (if any) takes the partition over.
        log.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eviction_keeps_offsets() {
        let bus = MemoryBus::new(3);
        for i in 0..5u8 {
            assert!(bus.publish(Topic::Feedback, "m", vec![i]));
        }
        assert_eq!(bus.watermarks(Topic::Feedback), (2, 5));
        let replay = bus.replay(Topic::Feedback).await.unwrap();
        assert_eq!(
            replay.iter().map(|d| d.offset).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(replay[0].payload, vec![2]);
    }

    #[tokio::test]
    async fn eviction_keeps_the_byte_bound() {
        let bus = MemoryBus::with_max_bytes(1_000, 10_000);
        for i in 0..100u8 {
            assert!(bus.publish(Topic::Inference, "m", vec![i; 1_000]));
        }
        let held = bus.retained_bytes(Topic::Inference);
        assert!(held <= 10_000, "{held} bytes held");
        let (start, end) = bus.watermarks(Topic::Inference);
        assert_eq!(end, 100);
        assert!((5..=10).contains(&(end - start)), "{start}..{end}");
        // One event larger than the bound is still kept, alone.
        assert!(bus.publish(Topic::Inference, "m", vec![0; 20_000]));
        assert_eq!(bus.watermarks(Topic::Inference), (100, 101));
    }
}
