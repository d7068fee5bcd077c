//! The in-process bus: the shared contract, plus retention and group ownership.

mod common;

use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use nexus_events::{EventBus, KafkaArgs, MemoryBus, Topic};

use common::{assert_quiet, counters, next, next_n, seq_of};

#[tokio::test]
async fn round_trip() {
    common::round_trip(&MemoryBus::new(100)).await;
}

#[tokio::test]
async fn same_key_same_partition_in_order() {
    common::same_key_same_partition_in_order(&MemoryBus::new(100)).await;
}

#[tokio::test]
async fn commit_and_resume() {
    common::commit_and_resume(&MemoryBus::new(100)).await;
}

#[tokio::test]
async fn replay_returns_everything() {
    common::replay_returns_everything(&MemoryBus::new(100)).await;
}

#[tokio::test]
async fn publish_never_blocks() {
    let bus = MemoryBus::new(10);
    assert!(
        common::publish_is_quick(&bus, Topic::Inference, 1000)
            .into_iter()
            .all(|ok| ok)
    );
    assert_eq!(bus.watermarks(Topic::Inference), (990, 1000));
    assert!(bus.healthy().await.is_ok());
    assert_eq!(bus.kind(), "memory");
    bus.flush().await;
}

#[tokio::test]
async fn retention_evicts_oldest_and_counts_unread() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let bus = MemoryBus::new(5);
    // A group that read up to offset 2 (committed 0..=1, reading 2).
    for i in 0..3 {
        bus.publish(Topic::Feedback, "m", vec![i]);
    }
    let mut sub = bus.subscribe(Topic::Feedback, "g").await.unwrap();
    let got = next_n(&mut sub, 2).await;
    sub.commit(&got[1]).await.unwrap();

    metrics::with_local_recorder(&recorder, || {
        for i in 3..10 {
            assert!(bus.publish(Topic::Feedback, "m", vec![i]));
        }
    });
    // Offsets 0..5 evicted; the group had not read 2, 3 and 4.
    assert_eq!(bus.watermarks(Topic::Feedback), (5, 10));
    let counters = counters(&snapshotter);
    assert_eq!(
        counters["nexus_events_dropped_total{reason=evicted,topic=feedback}"],
        3
    );
    assert_eq!(counters["nexus_events_published_total{topic=feedback}"], 7);

    // The group goes on from the earliest retained event.
    let d = next(&mut sub).await;
    assert_eq!((d.offset, d.payload.clone()), (5, vec![5]));
    let replay = bus.replay(Topic::Feedback).await.unwrap();
    assert_eq!(
        replay.iter().map(|d| d.offset).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9]
    );
}

#[tokio::test]
async fn one_member_of_a_group_reads_at_a_time() {
    let bus = MemoryBus::new(100);
    for seq in 0..4 {
        common_publish(&bus, seq);
    }
    let mut first = bus.subscribe(Topic::Inference, "g").await.unwrap();
    let mut second = bus.subscribe(Topic::Inference, "g").await.unwrap();
    let got = next_n(&mut first, 2).await;
    first.commit(&got[0]).await.unwrap();
    // The partition belongs to the first member.
    assert_quiet(&mut second, Duration::from_millis(100)).await;
    drop(first);
    // The second takes over after the commit: event 1 again.
    let d = next(&mut second).await;
    assert_eq!(seq_of(&d).seq, 1);
    assert_eq!(bus.committed(Topic::Inference, "g"), Some(1));
    // Other topics and groups are independent.
    let mut other = bus.subscribe(Topic::Inference, "h").await.unwrap();
    assert_eq!(seq_of(&next(&mut other).await).seq, 0);
    let mut feedback = bus.subscribe(Topic::Feedback, "g").await.unwrap();
    assert_quiet(&mut feedback, Duration::from_millis(50)).await;
}

fn common_publish(bus: &MemoryBus, seq: u32) {
    let event = common::Seq {
        key: "m".into(),
        seq,
    };
    assert!(nexus_events::publish_json(
        bus,
        Topic::Inference,
        "m",
        &event
    ));
}

#[tokio::test]
async fn many_waiters_are_woken() {
    let bus = MemoryBus::new(100);
    let mut subs = Vec::new();
    for i in 0..8 {
        subs.push(
            bus.subscribe(Topic::Decisions, &format!("g{i}"))
                .await
                .unwrap(),
        );
    }
    let waiters = subs.into_iter().map(|mut sub| {
        tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(5), sub.next()).await })
    });
    let waiters: Vec<_> = waiters.collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(bus.publish(Topic::Decisions, "m", b"x".to_vec()));
    for waiter in waiters {
        let delivery = waiter.await.unwrap().expect("woken").unwrap();
        assert_eq!(delivery.payload, b"x");
    }
}

#[tokio::test]
async fn open_without_brokers_is_memory() {
    let args = KafkaArgs {
        event_buffer: 7,
        ..KafkaArgs::default()
    };
    let bus = nexus_events::open(&args).await.unwrap();
    assert_eq!(bus.kind(), "memory");
    for i in 0..10u8 {
        assert!(bus.publish(Topic::Inference, "m", vec![i]));
    }
    assert_eq!(bus.replay(Topic::Inference).await.unwrap().len(), 7);
}

#[test]
fn kafka_args_parse() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }
    let cli = Cli::try_parse_from(["nexus"]).unwrap();
    assert_eq!(
        cli.kafka,
        KafkaArgs {
            brokers: cli.kafka.brokers.clone(),
            ..KafkaArgs::default()
        }
    );
    let cli = Cli::try_parse_from([
        "nexus",
        "--kafka-brokers",
        "a:9092,b:9092",
        "--kafka-acks",
        "1",
        "--kafka-compression",
        "gzip",
        "--kafka-option",
        "security.protocol=sasl_plaintext",
        "--kafka-option",
        "sasl.password=a=b",
        "--kafka-partitions",
        "6",
        "--kafka-replication-factor",
        "3",
        "--event-buffer",
        "50",
        "--event-timeout-ms",
        "2000",
        "--topic-inference",
        "x.inference",
    ])
    .unwrap();
    let k = cli.kafka;
    assert_eq!(k.brokers.as_deref(), Some("a:9092,b:9092"));
    assert_eq!((k.acks.as_str(), k.compression.as_str()), ("1", "gzip"));
    assert_eq!(
        k.options,
        vec![
            ("security.protocol".to_owned(), "sasl_plaintext".to_owned()),
            ("sasl.password".to_owned(), "a=b".to_owned())
        ]
    );
    assert_eq!(
        (
            k.partitions,
            k.replication_factor,
            k.event_buffer,
            k.event_timeout_ms
        ),
        (6, 3, 50, 2000)
    );
    assert_eq!(k.topics.inference, "x.inference");
    assert_eq!(k.topics.feedback, "nexus.feedback");
    for bad in [
        &["nexus", "--kafka-compression", "brotli"][..],
        &["nexus", "--kafka-option", "novalue"],
        &["nexus", "--kafka-partitions", "0"],
        &["nexus", "--event-buffer", "0"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} accepted");
    }
}
