//! The event bus: inference, feedback and decision events between serving and the
//! optimiser. In-process by default (`nexus up`), Kafka through `rdkafka` when
//! `--kafka-brokers` is given. Both keep the same contract, so the optimiser and the
//! tests do not care which one runs:
//!
//! - [`EventBus::publish`] never waits: events go into a bounded buffer and are dropped and
//!   counted (`nexus_events_dropped_total`) when it is full or the broker is unreachable.
//! - [`EventBus::publish_confirmed`] waits until the event is stored (decisions).
//! - Events are keyed (by model), so one model's events stay in one partition, in order.
//! - Subscriptions belong to a consumer group and resume after the last committed offset;
//!   a consumer commits only after it applied an event.

pub mod kafka;
pub mod memory;
pub mod schema;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use kafka::{KafkaArgs, KafkaBus};
pub use memory::MemoryBus;
pub use schema::{DecisionEvent, FeedbackEvent, InferenceEvent, TensorSample};

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The three streams Nexus uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Inference,
    Feedback,
    Decisions,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Inference, Topic::Feedback, Topic::Decisions];

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Topic::Inference => "inference",
            Topic::Feedback => "feedback",
            Topic::Decisions => "decisions",
        }
    }
}

/// Topic names on the broker (configurable, so several installs can share one cluster).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TopicNames {
    /// Topic of inference events.
    #[arg(long = "topic-inference", default_value = "nexus.inference")]
    pub inference: String,
    /// Topic of feedback events.
    #[arg(long = "topic-feedback", default_value = "nexus.feedback")]
    pub feedback: String,
    /// Topic of optimiser decisions.
    #[arg(long = "topic-decisions", default_value = "nexus.decisions")]
    pub decisions: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            inference: "nexus.inference".into(),
            feedback: "nexus.feedback".into(),
            decisions: "nexus.decisions".into(),
        }
    }
}

impl TopicNames {
    /// The broker's name of `topic`.
    pub fn name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Inference => &self.inference,
            Topic::Feedback => &self.feedback,
            Topic::Decisions => &self.decisions,
        }
    }
}

/// One event read from a subscription or a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub topic: Topic,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event bus configuration: {0}")]
    Config(String),
    #[error("event broker unreachable: {0}")]
    Unavailable(String),
    #[error("event broker: {0}")]
    Broker(String),
    #[error("the event bus is closed")]
    Closed,
}

/// The seam between producers/consumers of events and where they travel.
pub trait EventBus: Send + Sync + 'static {
    /// Queues an event without waiting. Returns false when it was dropped (buffer full,
    /// broker down); drops are counted in `nexus_events_dropped_total{topic,reason}`.
    fn publish(&self, topic: Topic, key: &str, payload: Vec<u8>) -> bool;

    /// As [`EventBus::publish`], with the W3C `traceparent` of the work behind the event, so
    /// a consumer can continue the trace (a Kafka message header; buses without headers
    /// drop it).
    fn publish_traced(
        &self,
        topic: Topic,
        key: &str,
        payload: Vec<u8>,
        traceparent: Option<&str>,
    ) -> bool {
        let _ = traceparent;
        self.publish(topic, key, payload)
    }

    /// Publishes and waits until the broker stored the event (or the delivery failed).
    fn publish_confirmed<'a>(
        &'a self,
        topic: Topic,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), EventError>>;

    /// Joins consumer group `group` on `topic`, resuming after its committed offsets
    /// (from the beginning for a new group).
    fn subscribe<'a>(
        &'a self,
        topic: Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, EventError>>;

    /// Every event still stored on `topic`, from the beginning up to its current end,
    /// outside any consumer group (to rebuild state on start-up).
    fn replay(&self, topic: Topic) -> BoxFuture<'_, Result<Vec<Delivery>, EventError>>;

    /// Whether the bus can reach its broker now (readiness, `/api/v1/services`).
    fn healthy(&self) -> BoxFuture<'_, Result<(), EventError>>;

    /// "memory" or "kafka".
    fn kind(&self) -> &'static str;

    /// Waits (up to a few seconds) until queued events are handed to the broker.
    fn flush(&self) -> BoxFuture<'_, ()>;
}

/// A consumer group member reading one topic.
pub trait Subscription: Send {
    /// The next event; waits until one arrives.
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, EventError>>;
    /// Marks `delivery` (and everything before it in its partition) as applied.
    fn commit<'a>(&'a mut self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), EventError>>;
}

/// Opens the bus `args` describe: a [`MemoryBus`] keeping `--event-buffer` events per
/// topic when no `--kafka-brokers` is given, else a [`KafkaBus`] for them, started with
/// [`KafkaBus::start`]: a broker that does not answer yet does not stop the caller (events
/// are dropped and counted until it does); only a bad configuration is an error.
pub async fn open(args: &KafkaArgs) -> Result<Arc<dyn EventBus>, EventError> {
    match args.brokers.as_deref().map(str::trim) {
        None | Some("") => {
            tracing::info!(
                capacity = args.event_buffer,
                "events stay in process (no --kafka-brokers)"
            );
            Ok(Arc::new(MemoryBus::new(args.event_buffer)))
        }
        Some(_) => Ok(Arc::new(KafkaBus::start(args).await?)),
    }
}

/// Serializes `event` and publishes it keyed by `key` without waiting.
pub fn publish_json<T: serde::Serialize>(
    bus: &dyn EventBus,
    topic: Topic,
    key: &str,
    event: &T,
) -> bool {
    publish_json_traced(bus, topic, key, event, None)
}

/// [`publish_json`] with the `traceparent` of the work behind the event.
pub fn publish_json_traced<T: serde::Serialize>(
    bus: &dyn EventBus,
    topic: Topic,
    key: &str,
    event: &T,
    traceparent: Option<&str>,
) -> bool {
    match serde_json::to_vec(event) {
        Ok(payload) => bus.publish_traced(topic, key, payload, traceparent),
        Err(e) => {
            tracing::warn!(error = %e, topic = topic.label(), "event not serializable; dropped");
            dropped(topic, "serialize");
            false
        }
    }
}

/// Counts one dropped event.
pub fn dropped(topic: Topic, reason: &'static str) {
    metrics::counter!("nexus_events_dropped_total", "topic" => topic.label(), "reason" => reason)
        .increment(1);
}

/// Counts one event handed to the bus.
pub fn published(topic: Topic) {
    metrics::counter!("nexus_events_published_total", "topic" => topic.label()).increment(1);
}
