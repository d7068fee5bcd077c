//! The Kafka bus, through `rdkafka` (bundled librdkafka).
//!
//! - One [`ThreadedProducer`] serves both `publish` (never waits: librdkafka queues up to
//!   `--event-buffer` events, a full queue drops and counts) and `publish_confirmed`
//!   (waits for the delivery report). librdkafka retries and reconnects by itself while a
//!   broker is down; an event it could not deliver within `--event-timeout-ms` is dropped
//!   and counted as `undelivered`.
//! - Missing topics are created at start with the admin API (`--kafka-partitions`,
//!   `--kafka-replication-factor`); brokers that auto-create topics are not relied on.
//! - [`KafkaBus::start`] (what `nexus serve`/`up` use) does not need the broker: when none
//!   answers within a few seconds the bus starts unconnected and keeps trying in the
//!   background. Until it has reached the broker and made sure of the topics, events are
//!   dropped at once (`nexus_events_dropped_total{reason="unavailable"}`), confirmed
//!   publishes, subscriptions and replays fail with [`EventError::Unavailable`] (the
//!   optimiser retries), and [`EventBus::healthy`] says why; then events flow.
//! - A subscription is a [`StreamConsumer`] in the consumer group, without auto-commit,
//!   starting at the earliest offset for a new group; `commit` commits synchronously.
//! - `replay` reads every partition from the beginning to the high watermark it saw when
//!   it started, outside any group.
//!
//! Things to know:
//!
//! - A consumer group spanning several topics rebalances them together: while one of its
//!   subscriptions is not being polled (`next`), a rebalance of the group waits for it.
//!   Use one group per topic, or keep every subscription of a group polled.
//! - A member that died without leaving (a crash) holds its partitions until the
//!   broker's session timeout (librdkafka's `session.timeout.ms`, 45 s) expires.
//! - Dropping the bus discards events still queued (counted as `undelivered`): call
//!   [`EventBus::flush`] before shutting down.
//! - Against tansu (the test broker), set `batch.num.messages=1`
//!   (see `nexus_testing::TANSU_CLIENT_OPTIONS`): tansu 0.6 skips the rest of a multi-record
//!   batch when a consumer resumes inside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::{BoxFuture, Delivery, EventBus, EventError, Subscription, Topic, TopicNames};

/// How long `connect` waits for the brokers before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `start` waits for the brokers before it goes on without them.
const START_WAIT: Duration = Duration::from_secs(3);
/// Longest pause between two attempts of a bus started without its broker.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long `healthy` waits for metadata.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `flush` waits for queued events.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `replay` may take before it fails.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one blocking metadata/watermark/commit request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where events go: the in-process bus, or Kafka when `--kafka-brokers` is given.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap brokers (host:port,...); without it events stay in process.
    #[arg(
        long = "kafka-brokers",
        value_name = "HOST:PORT,...",
        env = "NEXUS_KAFKA_BROKERS"
    )]
    pub brokers: Option<String>,

    /// Acknowledgements the producer waits for: all, 1 or 0.
    #[arg(long = "kafka-acks", default_value = "all", value_parser = ["all", "-1", "1", "0"])]
    pub acks: String,

    /// Compression of produced batches.
    #[arg(
        long = "kafka-compression",
        default_value = "lz4",
        value_parser = ["none", "gzip", "snappy", "lz4", "zstd"]
    )]
    pub compression: String,

    /// Extra librdkafka setting for producer and consumers (repeatable), e.g.
    /// security.protocol=sasl_ssl, sasl.mechanisms=PLAIN, ssl.ca.location=/path.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,

    /// Partitions of the topics Nexus creates.
    #[arg(long = "kafka-partitions", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Replication factor of the topics Nexus creates.
    #[arg(long = "kafka-replication-factor", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,

    /// Events queued in memory before new ones are dropped (in-process bus: events kept
    /// per topic).
    #[arg(
        long = "event-buffer",
        default_value_t = 100_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=i32::MAX as u64)
    )]
    pub event_buffer: usize,

    /// How long an event may wait for an unreachable broker before it is dropped (ms).
    #[arg(
        long = "event-timeout-ms",
        default_value_t = 10_000,
        value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=i32::MAX as u64)
    )]
    pub event_timeout_ms: u64,

    /// How long inference events wait to be sent together (librdkafka `linger.ms`): larger
    /// batches cost serving less per event. Feedback and decisions are sent at once.
    #[arg(long = "kafka-linger-ms", default_value_t = 50)]
    pub linger_ms: u64,

    #[command(flatten)]
    pub topics: TopicNames,
}

impl Default for KafkaArgs {
    fn default() -> Self {
        KafkaArgs {
            brokers: None,
            acks: "all".into(),
            compression: "lz4".into(),
            options: Vec::new(),
            partitions: 3,
            replication_factor: 1,
            event_buffer: 100_000,
            event_timeout_ms: 10_000,
            linger_ms: 50,
            topics: TopicNames::default(),
        }
    }
}

fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl KafkaArgs {
    /// Settings shared by the producer, the consumers and the admin client.
    fn common_config(&self) -> Result<ClientConfig, EventError> {
        let brokers = self
            .brokers
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| EventError::Config("--kafka-brokers is empty".into()))?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "nexus")
            .set_log_level(RDKafkaLogLevel::Info);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        Ok(config)
    }

    fn producer_config(&self, linger_ms: u64) -> Result<ClientConfig, EventError> {
        let mut config = self.common_config()?;
        let buffer = self.event_buffer.to_string();
        let timeout = self.event_timeout_ms.to_string();
        let linger = linger_ms.to_string();
        let defaults = [
            ("linger.ms", linger.as_str()),
            ("acks", self.acks.as_str()),
            ("compression.type", self.compression.as_str()),
            ("queue.buffering.max.messages", buffer.as_str()),
            ("message.timeout.ms", timeout.as_str()),
        ];
        // A --kafka-option of the same key wins.
        for (key, value) in defaults {
            if !self.has_option(key) {
                config.set(key, value);
            }
        }
        Ok(config)
    }

    fn has_option(&self, key: &str) -> bool {
        self.options.iter().any(|(k, _)| k == key)
    }

    fn consumer_config(&self, group: &str) -> Result<ClientConfig, EventError> {
        let mut config = self.common_config()?;
        // Commit-after-apply: never auto-commit, whatever the options say.
        config
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        if !self.has_option("auto.offset.reset") {
            config.set("auto.offset.reset", "earliest");
        }
        config.set("group.id", group);
        Ok(config)
    }
}

/// Rate-limits a warning to one per interval (the hot path may fail per event).
struct Throttle {
    last_ms: AtomicU64,
    start: Instant,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            last_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn ready(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64 + 10_000;
        let last = self.last_ms.load(Ordering::Relaxed);
        now >= last + 10_000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Routes librdkafka's logs and errors to `tracing`.
#[derive(Clone, Copy, Default)]
struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_error(error, reason);
    }
}

impl ConsumerContext for LogContext {}

fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility = fac, "{message}")
        }
    }
}

fn log_error(error: KafkaError, reason: &str) {
    if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
        tracing::error!(target: "librdkafka", error = %error, "kafka client failed: {reason}");
    } else {
        tracing::warn!(target: "librdkafka", error = %error, "kafka client: {reason}");
    }
}

/// A delivery opaque: the topic in the low 2 bits, the id of a waiting
/// `publish_confirmed` above (0: nobody waits).
fn opaque(topic: Topic, id: u64) -> usize {
    let index = match topic {
        Topic::Inference => 0,
        Topic::Feedback => 1,
        Topic::Decisions => 2,
    };
    ((id as usize) << 2) | index
}

fn opaque_topic(opaque: usize) -> Topic {
    match opaque & 3 {
        0 => Topic::Inference,
        1 => Topic::Feedback,
        _ => Topic::Decisions,
    }
}

type Confirmation = oneshot::Sender<Result<(), String>>;

/// The producer's context: counts failed deliveries, answers confirmed publishes.
struct DeliveryContext {
    pending: Mutex<HashMap<u64, Confirmation>>,
    undelivered: AtomicU64,
    throttle: Throttle,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let topic = opaque_topic(opaque);
        let id = (opaque >> 2) as u64;
        let waiter = if id != 0 {
            self.pending.lock().remove(&id)
        } else {
            None
        };
        match (result, waiter) {
            (Ok(_), Some(waiter)) => {
                let _ = waiter.send(Ok(()));
            }
            (Ok(_), None) => {}
            (Err((error, message)), Some(waiter)) => {
                let _ = waiter.send(Err(format!("{} not delivered: {error}", message.topic())));
            }
            (Err((error, message)), None) => {
                self.undelivered.fetch_add(1, Ordering::Relaxed);
                crate::dropped(topic, "undelivered");
                if self.throttle.ready() {
                    tracing::warn!(
                        topic = message.topic(),
                        error = %error,
                        "event not delivered to Kafka; dropped (further drops are counted in \
                         nexus_events_dropped_total)"
                    );
                }
            }
        }
    }
}

/// Whether a bus has reached its broker (and made sure of its topics) since it started.
struct Link {
    connected: AtomicBool,
    /// Why the last attempt failed, while not connected.
    error: Mutex<String>,
    dropped: Throttle,
}

impl Link {
    /// The error of a bus that has not reached its broker yet.
    fn unavailable(&self, brokers: &str) -> EventError {
        EventError::Unavailable(format!(
            "Kafka (brokers {brokers}) not reached since start: {}; events are dropped and \
             counted in nexus_events_dropped_total{{reason=\"unavailable\"}} until it answers \
             (inference is not affected)",
            self.error.lock()
        ))
    }
}

/// The Kafka event bus.
pub struct KafkaBus {
    /// Inference events: batched for `--kafka-linger-ms`.
    producer: Arc<ThreadedProducer<DeliveryContext>>,
    /// Confirmed publishes (feedback, decisions): sent without lingering, since a caller
    /// waits for each.
    confirmed: Arc<ThreadedProducer<DeliveryContext>>,
    args: KafkaArgs,
    next_id: AtomicU64,
    full: Throttle,
    link: Arc<Link>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.args.brokers)
            .field("topics", &self.args.topics)
            .finish_non_exhaustive()
    }
}

fn unavailable(brokers: &str, what: &str, error: impl std::fmt::Display) -> EventError {
    EventError::Unavailable(format!("{what} (brokers {brokers}): {error}"))
}

fn broker_error(what: &str, error: impl std::fmt::Display) -> EventError {
    EventError::Broker(format!("{what}: {error}"))
}

/// Runs a blocking rdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EventError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EventError::Broker(format!("blocking kafka call failed: {e}")))
}

impl KafkaBus {
    /// Connects to `args.brokers`, creating missing topics; fails with
    /// [`EventError::Unavailable`] when no broker answers within 10 s.
    pub async fn connect(args: &KafkaArgs) -> Result<KafkaBus, EventError> {
        let bus = KafkaBus::create(args)?;
        reach(&bus.args, &bus.producer, CONNECT_TIMEOUT).await?;
        bus.link.connected.store(true, Ordering::Release);
        Ok(bus)
    }

    /// As [`KafkaBus::connect`], except that a broker that does not answer within a few
    /// seconds does not stop it: the bus starts unconnected, drops (and counts) events and
    /// keeps trying in the background until the broker answers. Fails only on a bad
    /// configuration.
    pub async fn start(args: &KafkaArgs) -> Result<KafkaBus, EventError> {
        let bus = KafkaBus::create(args)?;
        match reach(&bus.args, &bus.producer, START_WAIT).await {
            Ok(()) => bus.link.connected.store(true, Ordering::Release),
            Err(error @ EventError::Config(_)) => return Err(error),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "Kafka does not answer; serving without events until it does (events \
                     are dropped and counted in nexus_events_dropped_total, /health/ready \
                     says why)"
                );
                *bus.link.error.lock() = error.to_string();
                tokio::spawn(keep_trying(
                    bus.args.clone(),
                    Arc::downgrade(&bus.producer),
                    Arc::clone(&bus.link),
                ));
            }
        }
        Ok(bus)
    }

    /// The producers for `args`, not yet connected.
    fn create(args: &KafkaArgs) -> Result<KafkaBus, EventError> {
        let create = |linger_ms: u64| -> Result<_, EventError> {
            let context = DeliveryContext {
                pending: Mutex::new(HashMap::new()),
                undelivered: AtomicU64::new(0),
                throttle: Throttle::new(),
            };
            let producer: ThreadedProducer<DeliveryContext> = args
                .producer_config(linger_ms)?
                .create_with_context(context)
                .map_err(|e| EventError::Config(format!("kafka producer: {e}")))?;
            Ok(Arc::new(producer))
        };
        Ok(KafkaBus {
            producer: create(args.linger_ms)?,
            confirmed: create(0)?,
            args: args.clone(),
            next_id: AtomicU64::new(1),
            full: Throttle::new(),
            link: Arc::new(Link {
                connected: AtomicBool::new(false),
                error: Mutex::new(String::new()),
                dropped: Throttle::new(),
            }),
        })
    }

    /// Whether the bus has reached its broker since it started.
    pub fn connected(&self) -> bool {
        self.link.connected.load(Ordering::Acquire)
    }

    /// `Err` while the bus has not reached its broker yet.
    fn check_connected(&self) -> Result<(), EventError> {
        match self.connected() {
            true => Ok(()),
            false => Err(self
                .link
                .unavailable(self.args.brokers.as_deref().unwrap_or_default())),
        }
    }

    /// The topic names on the broker.
    pub fn topics(&self) -> &TopicNames {
        &self.args.topics
    }

    /// Events librdkafka failed to deliver (after `--event-timeout-ms`) since start,
    /// not counting `publish_confirmed`'s, whose caller gets the error.
    pub fn undelivered(&self) -> u64 {
        [&self.producer, &self.confirmed]
            .iter()
            .map(|p| p.context().undelivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Events queued in librdkafka, not yet acknowledged by the broker.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count() + self.confirmed.in_flight_count()
    }

    /// Creates those of the three topics that the cluster does not have, with the
    /// configured partitions and replication factor ("already exists" is success).
    pub async fn ensure_topics(&self) -> Result<(), EventError> {
        ensure_topics(&self.args, &self.producer).await
    }

    fn record(&self, topic: Topic, id: u64) -> BaseRecord<'_, str, [u8], usize> {
        BaseRecord::with_opaque_to(self.args.topics.name(topic), opaque(topic, id))
    }
}

/// Reaches the brokers (metadata within `wait`) and makes sure of the topics.
async fn reach(
    args: &KafkaArgs,
    producer: &Arc<ThreadedProducer<DeliveryContext>>,
    wait: Duration,
) -> Result<(), EventError> {
    let brokers = args.brokers.clone().unwrap_or_default();
    let probe = Arc::clone(producer);
    blocking(move || probe.client().fetch_metadata(None, wait))
        .await?
        .map_err(|e| unavailable(&brokers, "cannot reach Kafka", e))?;
    ensure_topics(args, producer).await?;
    tracing::info!(
        brokers = %brokers,
        inference = %args.topics.inference,
        feedback = %args.topics.feedback,
        decisions = %args.topics.decisions,
        "connected to Kafka"
    );
    Ok(())
}

/// Tries to reach the brokers until it succeeds (then the bus is connected) or the bus is
/// dropped, waiting longer between attempts up to [`RETRY_MAX`].
async fn keep_trying(
    args: KafkaArgs,
    producer: std::sync::Weak<ThreadedProducer<DeliveryContext>>,
    link: Arc<Link>,
) {
    let mut pause = Duration::from_millis(500);
    loop {
        tokio::time::sleep(pause).await;
        let Some(producer) = producer.upgrade() else {
            return;
        };
        match reach(&args, &producer, HEALTH_TIMEOUT).await {
            Ok(()) => {
                link.connected.store(true, Ordering::Release);
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "Kafka still not reachable");
                *link.error.lock() = error.to_string();
            }
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Creates those of the topics of `args` that the cluster does not have.
async fn ensure_topics(
    args: &KafkaArgs,
    producer: &Arc<ThreadedProducer<DeliveryContext>>,
) -> Result<(), EventError> {
    let brokers = args.brokers.clone().unwrap_or_default();
    let names: Vec<String> = Topic::ALL
        .iter()
        .map(|t| args.topics.name(*t).to_owned())
        .collect();
    let missing = missing_topics(args, producer, &names).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<LogContext> = args
        .common_config()?
        .create_with_context(LogContext)
        .map_err(|e| EventError::Config(format!("kafka admin client: {e}")))?;
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                args.partitions,
                TopicReplication::Fixed(args.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(CONNECT_TIMEOUT))
        .operation_timeout(Some(CONNECT_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| unavailable(&brokers, "cannot create Kafka topics", e))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(
                topic = %name,
                partitions = args.partitions,
                replication_factor = args.replication_factor,
                "created Kafka topic"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(broker_error(
                    &format!("cannot create Kafka topic {name}"),
                    code,
                ));
            }
        }
    }
    // Wait until the topics show in metadata, so the first events find them.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let missing = missing_topics(args, producer, &names).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(broker_error(
                "created topics do not appear in metadata",
                missing.join(", "),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Those of `names` the cluster does not have (with partitions).
async fn missing_topics(
    args: &KafkaArgs,
    producer: &Arc<ThreadedProducer<DeliveryContext>>,
    names: &[String],
) -> Result<Vec<String>, EventError> {
    let brokers = args.brokers.clone().unwrap_or_default();
    let producer = Arc::clone(producer);
    let names = names.to_vec();
    blocking(move || {
        let mut missing = Vec::new();
        for name in names {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), REQUEST_TIMEOUT)
                .map_err(|e| unavailable(&brokers, "cannot read Kafka metadata", e))?;
            let exists = metadata
                .topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
            if !exists {
                missing.push(name);
            }
        }
        Ok(missing)
    })
    .await?
}

impl EventBus for KafkaBus {
    fn publish(&self, topic: Topic, key: &str, payload: Vec<u8>) -> bool {
        self.publish_traced(topic, key, payload, None)
    }

    fn publish_traced(
        &self,
        topic: Topic,
        key: &str,
        payload: Vec<u8>,
        traceparent: Option<&str>,
    ) -> bool {
        if !self.connected() {
            crate::dropped(topic, "unavailable");
            if self.link.dropped.ready() {
                tracing::warn!(
                    topic = topic.label(),
                    "Kafka not reached yet; dropping events (counted in nexus_events_dropped_total)"
                );
            }
            return false;
        }
        let mut record = self.record(topic, 0).key(key).payload(payload.as_slice());
        if let Some(value) = traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(value),
            }));
        }
        match self.producer.send(record) {
            Ok(()) => {
                crate::published(topic);
                true
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                crate::dropped(topic, "full");
                if self.full.ready() {
                    tracing::warn!(
                        topic = topic.label(),
                        buffer = self.args.event_buffer,
                        "event buffer full (Kafka slow or unreachable); dropping events"
                    );
                }
                false
            }
            Err((error, _)) => {
                crate::dropped(topic, "error");
                if self.full.ready() {
                    tracing::warn!(topic = topic.label(), error = %error, "event not queued for Kafka; dropped");
                }
                false
            }
        }
    }

    fn publish_confirmed<'a>(
        &'a self,
        topic: Topic,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), EventError>> {
        Box::pin(async move {
            self.check_connected()?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            let pending = &self.confirmed.context().pending;
            pending.lock().insert(id, tx);
            let timeout = Duration::from_millis(self.args.event_timeout_ms);
            let deadline = Instant::now() + timeout;
            loop {
                let record = self.record(topic, id).key(key).payload(payload.as_slice());
                let error = match self.confirmed.send(record) {
                    Ok(()) => break,
                    Err((error, _)) => error,
                };
                // A full queue drains; wait for room until the event timeout.
                if matches!(
                    error,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                ) && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                pending.lock().remove(&id);
                return Err(broker_error(
                    &format!("cannot publish to {}", self.args.topics.name(topic)),
                    error,
                ));
            }
            crate::published(topic);
            // librdkafka reports every message by message.timeout.ms; the margin covers
            // the report's trip.
            match tokio::time::timeout(timeout + Duration::from_secs(5), rx).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(message))) => Err(EventError::Broker(message)),
                Ok(Err(_)) => Err(EventError::Closed),
                Err(_) => {
                    pending.lock().remove(&id);
                    Err(EventError::Unavailable(format!(
                        "no delivery report for {} within {} ms",
                        self.args.topics.name(topic),
                        timeout.as_millis()
                    )))
                }
            }
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, EventError>> {
        Box::pin(async move {
            // A consumer of a topic not created yet is not what the broker is for.
            self.check_connected()?;
            let name = self.args.topics.name(topic).to_owned();
            let consumer: StreamConsumer<LogContext> = self
                .args
                .consumer_config(group)?
                .create_with_context(LogContext)
                .map_err(|e| EventError::Config(format!("kafka consumer: {e}")))?;
            consumer
                .subscribe(&[&name])
                .map_err(|e| broker_error(&format!("cannot subscribe to {name}"), e))?;
            tracing::debug!(topic = %name, group, "subscribed");
            Ok(Box::new(KafkaSubscription {
                consumer: Some(Arc::new(consumer)),
                topic,
                name,
                group: group.to_owned(),
            }) as Box<dyn Subscription>)
        })
    }

    fn replay(&self, topic: Topic) -> BoxFuture<'_, Result<Vec<Delivery>, EventError>> {
        Box::pin(async move {
            self.check_connected()?;
            let name = self.args.topics.name(topic).to_owned();
            read_topic(&self.args, topic, &name, HashMap::new()).await
        })
    }

    fn healthy(&self) -> BoxFuture<'_, Result<(), EventError>> {
        Box::pin(async move {
            self.check_connected()?;
            let brokers = self.args.brokers.clone().unwrap_or_default();
            let producer = self.producer.clone();
            let topic = self.args.topics.decisions.clone();
            blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), HEALTH_TIMEOUT)
            })
            .await?
            .map(|_| ())
            .map_err(|e| unavailable(&brokers, "Kafka not reachable", e))
        })
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let producers = [self.producer.clone(), self.confirmed.clone()];
            let flushed =
                blocking(move || producers.iter().try_for_each(|p| p.flush(FLUSH_TIMEOUT)));
            match flushed.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    in_flight = self.in_flight(),
                    "events still queued for Kafka after flush"
                ),
                Err(e) => tracing::warn!(error = %e, "flush failed"),
            }
        })
    }
}

/// Reads `name` (labelled `topic`) outside any group, up to the high watermarks at the
/// start: each partition from its offset in `from`, or from its beginning. Events in
/// offset order per partition; an unknown topic reads empty.
pub async fn read_topic(
    args: &KafkaArgs,
    topic: Topic,
    name: &str,
    from: HashMap<i32, i64>,
) -> Result<Vec<Delivery>, EventError> {
    let brokers = args.brokers.clone().unwrap_or_default();
    // librdkafka wants a group id even to assign partitions by hand; this one never
    // joins or commits.
    let consumer: BaseConsumer<LogContext> = args
        .consumer_config("nexus-replay")?
        .create_with_context(LogContext)
        .map_err(|e| EventError::Config(format!("kafka consumer: {e}")))?;
    let name = name.to_owned();
    blocking(move || read_blocking(&consumer, topic, &name, &brokers, &from)).await?
}

fn read_blocking(
    consumer: &BaseConsumer<LogContext>,
    topic: Topic,
    name: &str,
    brokers: &str,
    from: &HashMap<i32, i64>,
) -> Result<Vec<Delivery>, EventError> {
    let metadata = consumer
        .fetch_metadata(Some(name), REQUEST_TIMEOUT)
        .map_err(|e| unavailable(brokers, &format!("cannot read metadata of {name}"), e))?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == name) else {
        return Ok(Vec::new());
    };
    if let Some(error) = meta.error() {
        let code = RDKafkaErrorCode::from(error);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            tracing::warn!(topic = name, "reading a topic the broker does not have");
            return Ok(Vec::new());
        }
        return Err(broker_error(&format!("metadata of {name}"), code));
    }
    // Per partition: the high watermark to read up to.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in meta.partitions() {
        let id = partition.id();
        let (low, high) = consumer
            .fetch_watermarks(name, id, REQUEST_TIMEOUT)
            .map_err(|e| broker_error(&format!("watermarks of {name}/{id}"), e))?;
        // An offset past the end means the partition was recreated (a broker that lost
        // its data): read it from the beginning.
        let start = match from.get(&id) {
            Some(&offset) if offset <= high => offset.max(low),
            _ => low,
        };
        if high > start {
            remaining.insert(id, high);
            assignment
                .add_partition_offset(name, id, Offset::Offset(start))
                .map_err(|e| broker_error("read assignment", e))?;
        }
    }
    let mut events = Vec::new();
    if remaining.is_empty() {
        return Ok(events);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| broker_error(&format!("cannot read {name}"), e))?;
    let deadline = Instant::now() + REPLAY_TIMEOUT;
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(broker_error(
                &format!("reading {name} timed out"),
                format!("{} partition(s) not read to their end", remaining.len()),
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                let partition = message.partition();
                if let Some(&high) = remaining.get(&partition) {
                    if message.offset() < high {
                        events.push(delivery(topic, &message));
                    }
                    if message.offset() + 1 >= high {
                        remaining.remove(&partition);
                    }
                }
            }
            Some(Err(error)) => {
                tracing::debug!(topic = name, error = %error, "read error (retried)");
            }
        }
    }
    events.sort_by_key(|d| (d.partition, d.offset));
    Ok(events)
}

fn delivery(topic: Topic, message: &BorrowedMessage<'_>) -> Delivery {
    Delivery {
        topic,
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

/// One consumer-group member on one topic.
struct KafkaSubscription {
    /// Always Some until dropped (taken to close it off the async workers).
    consumer: Option<Arc<StreamConsumer<LogContext>>>,
    topic: Topic,
    name: String,
    group: String,
}

impl KafkaSubscription {
    fn consumer(&self) -> &Arc<StreamConsumer<LogContext>> {
        self.consumer.as_ref().expect("consumer present until drop")
    }
}

impl Subscription for KafkaSubscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Delivery, EventError>> {
        Box::pin(async move {
            let consumer = self.consumer().clone();
            let mut backoff = Duration::from_millis(50);
            loop {
                match consumer.recv().await {
                    Ok(message) => return Ok(delivery(self.topic, &message)),
                    Err(KafkaError::MessageConsumptionFatal(code)) => {
                        return Err(broker_error(
                            &format!("consuming {} failed", self.name),
                            code,
                        ));
                    }
                    Err(error) => {
                        // Transient (broker down, topic not there yet, rebalance): librdkafka
                        // recovers by itself.
                        tracing::warn!(topic = %self.name, group = %self.group, error = %error, "kafka consume error");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        })
    }

    fn commit<'a>(&'a mut self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), EventError>> {
        Box::pin(async move {
            if delivery.topic != self.topic {
                return Err(EventError::Broker(format!(
                    "cannot commit a {} event on a subscription to {}",
                    delivery.topic.label(),
                    self.name
                )));
            }
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(
                    &self.name,
                    delivery.partition,
                    Offset::Offset(delivery.offset + 1),
                )
                .map_err(|e| broker_error("commit offsets", e))?;
            let consumer = self.consumer().clone();
            blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                .await?
                .map_err(|e| {
                    broker_error(
                        &format!(
                            "cannot commit {}/{}@{} for group {}",
                            self.name, delivery.partition, delivery.offset, self.group
                        ),
                        e,
                    )
                })
        })
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // Closing leaves the group, which waits for the broker: not on an async worker.
        if let Some(consumer) = self.consumer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || drop(consumer));
                }
                Err(_) => drop(consumer),
            }
        }
    }
}
