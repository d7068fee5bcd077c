//! The Kafka bus against a real Kafka-protocol broker (tansu, or
//! `NEXUS_TEST_KAFKA_BROKERS`): the shared contract, topic creation, connect errors.
//! Each test uses its own topics (and its own tansu when local).

mod common;

use std::time::{Duration, Instant};

use nexus_events::{EventBus, EventError, KafkaArgs, KafkaBus, Topic};
use nexus_testing::TestBroker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn broker() -> TestBroker {
    TestBroker::start().unwrap_or_else(|e| panic!("{e}"))
}

async fn bus(broker: &TestBroker) -> KafkaBus {
    common::init_tracing();
    let mut args = broker.kafka_args();
    // e.g. NEXUS_TEST_KAFKA_DEBUG=cgrp,fetch RUST_LOG=librdkafka=debug
    if let Ok(debug) = std::env::var("NEXUS_TEST_KAFKA_DEBUG") {
        args.options.push(("debug".into(), debug));
    }
    KafkaBus::connect(&args)
        .await
        .expect("connect to the test broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip() {
    let broker = broker();
    common::round_trip(&bus(&broker).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_same_partition_in_order() {
    let broker = broker();
    common::same_key_same_partition_in_order(&bus(&broker).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_resume() {
    let broker = broker();
    common::commit_and_resume(&bus(&broker).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_everything() {
    let broker = broker();
    common::replay_returns_everything(&bus(&broker).await).await;
}

fn partitions(brokers: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let t = metadata.topics().iter().find(|t| t.name() == topic)?;
    (t.error().is_none() && !t.partitions().is_empty()).then(|| t.partitions().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_missing_topics() {
    let broker = broker();
    let args = KafkaArgs {
        partitions: 2,
        ..broker.kafka_args()
    };
    let names = args.topics.clone();
    let brokers = broker.brokers.clone();
    {
        let (brokers, topic) = (brokers.clone(), names.inference.clone());
        let before = tokio::task::spawn_blocking(move || partitions(&brokers, &topic))
            .await
            .unwrap();
        assert_eq!(before, None, "topic exists before connect");
    }
    let bus = KafkaBus::connect(&args).await.unwrap();
    for topic in Topic::ALL {
        let (brokers, name) = (brokers.clone(), names.name(topic).to_owned());
        let count = tokio::task::spawn_blocking(move || partitions(&brokers, &name))
            .await
            .unwrap();
        assert_eq!(
            count,
            Some(2),
            "{} not created with 2 partitions",
            names.name(topic)
        );
    }
    // Connecting again finds them (already exists is fine), and ensure_topics is idempotent.
    let again = KafkaBus::connect(&args).await.unwrap();
    again.ensure_topics().await.unwrap();
    assert_eq!(bus.kind(), "kafka");
    bus.healthy().await.unwrap();
    assert!(bus.publish(Topic::Inference, "m", b"{}".to_vec()));
    bus.flush().await;
    assert_eq!(again.replay(Topic::Inference).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_with_brokers_is_kafka() {
    let broker = broker();
    let bus = nexus_events::open(&broker.kafka_args()).await.unwrap();
    assert_eq!(bus.kind(), "kafka");
    bus.healthy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_when_no_broker_answers() {
    // A port nothing listens on.
    let port = nexus_testing::free_port().unwrap();
    let args = KafkaArgs {
        brokers: Some(format!("127.0.0.1:{port}")),
        ..KafkaArgs::default()
    };
    let start = Instant::now();
    match KafkaBus::connect(&args).await {
        Err(EventError::Unavailable(message)) => {
            assert!(message.contains(&port.to_string()), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "connect took {:?}",
        start.elapsed()
    );

    let bad = KafkaArgs {
        brokers: Some("127.0.0.1:1".into()),
        options: vec![("no.such.setting".into(), "1".into())],
        ..KafkaArgs::default()
    };
    assert!(matches!(
        KafkaBus::connect(&bad).await,
        Err(EventError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_codecs() {
    let broker = broker();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let args = KafkaArgs {
            compression: codec.into(),
            ..broker.kafka_args()
        };
        let bus = KafkaBus::connect(&args).await.unwrap();
        bus.publish_confirmed(
            Topic::Feedback,
            "m",
            format!("{{\"codec\":\"{codec}\"}}").into_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{codec}: {e}"));
        let replay = bus.replay(Topic::Feedback).await.unwrap();
        assert_eq!(replay.len(), 1, "{codec}");
        assert_eq!(
            replay[0].payload,
            format!("{{\"codec\":\"{codec}\"}}").into_bytes()
        );
    }
}
