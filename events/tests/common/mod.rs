//! The bus contract, checked the same way against the in-process bus and Kafka.
//!
//! Every check takes a bus whose topics are empty (fresh bus, or unique topic names).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, Snapshotter};

use nexus_events::schema::{
    ArmState, DECISION_SCHEMA, DecisionKind, FEEDBACK_SCHEMA, INFERENCE_SCHEMA, TensorSample,
};
use nexus_events::{
    DecisionEvent, Delivery, EventBus, FeedbackEvent, InferenceEvent, Subscription, Topic,
    publish_json,
};
use serde::{Deserialize, Serialize};

/// Logs to the test output, filtered by `RUST_LOG` (e.g. `RUST_LOG=librdkafka=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A consumer group id of its own (an external broker keeps groups across runs).
pub fn group(name: &str) -> String {
    nexus_testing::unique_name(name)
}

/// How long a test waits for one event (a Kafka group join takes a few seconds).
pub const WAIT: Duration = Duration::from_secs(20);

pub async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err(e)) => panic!("subscription failed: {e}"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

pub async fn next_n(sub: &mut Box<dyn Subscription>, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(sub).await);
    }
    out
}

/// Asserts that nothing arrives for `wait`.
pub async fn assert_quiet(sub: &mut Box<dyn Subscription>, wait: Duration) {
    if let Ok(result) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected no event, got {result:?}");
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seq {
    pub key: String,
    pub seq: u32,
}

pub fn seq_of(delivery: &Delivery) -> Seq {
    serde_json::from_slice(&delivery.payload).expect("a Seq payload")
}

pub fn inference(model: &str, id: &str) -> InferenceEvent {
    InferenceEvent {
        schema: INFERENCE_SCHEMA.into(),
        id: id.into(),
        model: model.into(),
        version: "1".into(),
        routed: true,
        protocol: "http".into(),
        status: "ok".into(),
        error: None,
        timestamp_ms: 1_700_000_000_000,
        latency_us: 1234,
        queue_us: 56,
        batch_size: 4,
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        inputs: Some(vec![TensorSample {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            data: serde_json::json!([0.5, 1.5]),
        }]),
        outputs: None,
    }
}

pub fn feedback(model: &str, id: &str, reward: f64) -> FeedbackEvent {
    FeedbackEvent {
        schema: FEEDBACK_SCHEMA.into(),
        id: id.into(),
        model: model.into(),
        version: "2".into(),
        reward,
        label: Some(serde_json::json!("cat")),
        timestamp_ms: 1_700_000_000_001,
    }
}

pub fn decision(model: &str, id: &str) -> DecisionEvent {
    DecisionEvent {
        schema: DECISION_SCHEMA.into(),
        id: id.into(),
        kind: DecisionKind::Traffic,
        model: model.into(),
        timestamp_ms: 1_700_000_000_002,
        reason: "version 2 is better with probability 0.97".into(),
        weights: BTreeMap::from([("1".into(), 0.1), ("2".into(), 0.9)]),
        batching: None,
        promotion: None,
        arms: BTreeMap::from([(
            "2".into(),
            ArmState {
                count: 10,
                sum: 9.0,
                sum_sq: 9.0,
            },
        )]),
        feedback_offsets: BTreeMap::from([(0, 42)]),
    }
}

/// JSON events of each schema, published keyed by model, arrive on their topic with
/// their key, and decode to what was sent.
pub async fn round_trip(bus: &dyn EventBus) {
    let events = [inference("resnet", "r1"), inference("bert", "r2")];
    for event in &events {
        assert!(publish_json(bus, Topic::Inference, &event.model, event));
    }
    let fb = feedback("resnet", "r1", 1.0);
    assert!(publish_json(bus, Topic::Feedback, &fb.model, &fb));
    let dec = decision("resnet", "d1");
    bus.publish_confirmed(
        Topic::Decisions,
        &dec.model,
        serde_json::to_vec(&dec).unwrap(),
    )
    .await
    .expect("confirmed publish");
    bus.flush().await;

    // A group spanning topics rebalances them together: one group per topic here, and
    // each subscription dropped when done.
    let mut sub = bus
        .subscribe(Topic::Inference, &group("round-trip-inference"))
        .await
        .unwrap();
    let mut got = next_n(&mut sub, 2).await;
    got.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(got[0].key.as_deref(), Some("bert"));
    assert_eq!(got[1].key.as_deref(), Some("resnet"));
    assert!(got.iter().all(|d| d.topic == Topic::Inference));
    let decoded: Vec<InferenceEvent> = got
        .iter()
        .map(|d| serde_json::from_slice(&d.payload).unwrap())
        .collect();
    assert_eq!(decoded[0], events[1]);
    assert_eq!(decoded[1], events[0]);
    drop(sub);

    let mut sub = bus
        .subscribe(Topic::Feedback, &group("round-trip-feedback"))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(
        (d.topic, d.key.as_deref()),
        (Topic::Feedback, Some("resnet"))
    );
    assert_eq!(
        serde_json::from_slice::<FeedbackEvent>(&d.payload).unwrap(),
        fb
    );
    drop(sub);

    let mut sub = bus
        .subscribe(Topic::Decisions, &group("round-trip-decisions"))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(
        (d.topic, d.key.as_deref()),
        (Topic::Decisions, Some("resnet"))
    );
    assert_eq!(
        serde_json::from_slice::<DecisionEvent>(&d.payload).unwrap(),
        dec
    );
}

fn publish_seq(bus: &dyn EventBus, topic: Topic, key: &str, seq: u32) {
    let event = Seq {
        key: key.into(),
        seq,
    };
    assert!(publish_json(bus, topic, key, &event), "publish {key}/{seq}");
}

/// Events of one key stay in one partition, in the order they were published.
pub async fn same_key_same_partition_in_order(bus: &dyn EventBus) {
    let keys = ["model-a", "model-b", "model-c", "model-d"];
    for seq in 0..15 {
        for key in keys {
            publish_seq(bus, Topic::Feedback, key, seq);
        }
    }
    bus.flush().await;
    let mut sub = bus
        .subscribe(Topic::Feedback, &group("ordering"))
        .await
        .unwrap();
    let got = next_n(&mut sub, 60).await;
    let mut partitions: HashMap<String, HashSet<i32>> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u32>> = HashMap::new();
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    for d in &got {
        let event = seq_of(d);
        assert_eq!(d.key.as_deref(), Some(event.key.as_str()));
        partitions
            .entry(event.key.clone())
            .or_default()
            .insert(d.partition);
        seqs.entry(event.key).or_default().push(event.seq);
        // Within a partition, offsets increase.
        if let Some(previous) = offsets.insert(d.partition, d.offset) {
            assert!(
                d.offset > previous,
                "offsets of partition {} go back",
                d.partition
            );
        }
    }
    for key in keys {
        assert_eq!(
            partitions[key].len(),
            1,
            "{key} spread over partitions {:?}",
            partitions[key]
        );
        assert_eq!(seqs[key], (0..15).collect::<Vec<_>>(), "{key} out of order");
    }
}

/// A group resumes after its commit; what it read but did not commit comes again; a new
/// group reads from the beginning; events published later wake a waiting subscriber.
pub async fn commit_and_resume(bus: &dyn EventBus) {
    let topic = Topic::Feedback;
    let (optimizer, dashboard) = (group("optimizer"), group("dashboard"));
    for seq in 0..6 {
        publish_seq(bus, topic, "model", seq);
    }
    bus.flush().await;

    let mut sub = bus.subscribe(topic, &optimizer).await.unwrap();
    let first = next_n(&mut sub, 3).await;
    assert_eq!(
        first.iter().map(|d| seq_of(d).seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // Applied 0 and 1; 2 was read but not applied.
    sub.commit(&first[1]).await.unwrap();
    drop(sub);

    let mut sub = bus.subscribe(topic, &optimizer).await.unwrap();
    let again = next(&mut sub).await;
    assert_eq!(
        seq_of(&again).seq,
        2,
        "the uncommitted event is delivered again"
    );
    assert_eq!(
        (again.partition, again.offset),
        (first[2].partition, first[2].offset)
    );
    let rest = next_n(&mut sub, 3).await;
    assert_eq!(
        rest.iter().map(|d| seq_of(d).seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    sub.commit(&rest[2]).await.unwrap();

    // Waits for events published after it caught up.
    let publisher = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish_seq(bus, topic, "model", 6);
        bus.flush().await;
    };
    let (_, later) = tokio::join!(publisher, next(&mut sub));
    assert_eq!(seq_of(&later).seq, 6);
    sub.commit(&later).await.unwrap();
    drop(sub);

    // Everything committed: the group gets only what comes next.
    publish_seq(bus, topic, "model", 7);
    bus.flush().await;
    let mut sub = bus.subscribe(topic, &optimizer).await.unwrap();
    assert_eq!(seq_of(&next(&mut sub).await).seq, 7);
    drop(sub);

    // A new group starts at the beginning.
    let mut other = bus.subscribe(topic, &dashboard).await.unwrap();
    let all = next_n(&mut other, 8).await;
    assert_eq!(
        all.iter().map(|d| seq_of(d).seq).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
}

/// Replay returns every stored event of the topic, in offset order per partition, and
/// does not disturb consumer groups.
pub async fn replay_returns_everything(bus: &dyn EventBus) {
    assert!(
        bus.replay(Topic::Decisions).await.unwrap().is_empty(),
        "empty topic replays empty"
    );
    let mut sent = Vec::new();
    for i in 0..12 {
        let dec = decision(&format!("model-{}", i % 3), &format!("d{i}"));
        if i % 4 == 0 {
            bus.publish_confirmed(
                Topic::Decisions,
                &dec.model,
                serde_json::to_vec(&dec).unwrap(),
            )
            .await
            .unwrap();
        } else {
            assert!(publish_json(bus, Topic::Decisions, &dec.model, &dec));
        }
        sent.push(dec);
    }
    bus.flush().await;
    let replayed = bus.replay(Topic::Decisions).await.unwrap();
    assert_eq!(replayed.len(), sent.len());
    let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for d in &replayed {
        by_partition.entry(d.partition).or_default().push(d.offset);
    }
    for offsets in by_partition.values() {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "replay not in offset order: {offsets:?}"
        );
    }
    let mut got: Vec<DecisionEvent> = replayed
        .iter()
        .map(|d| serde_json::from_slice(&d.payload).unwrap())
        .collect();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    sent.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got, sent);
    for d in &replayed {
        let event: DecisionEvent = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(d.key.as_deref(), Some(event.model.as_str()));
    }
    // A second replay sees the same.
    assert_eq!(
        bus.replay(Topic::Decisions).await.unwrap().len(),
        sent.len()
    );
    // Replay committed nothing: a group still starts at the beginning.
    let mut sub = bus
        .subscribe(Topic::Decisions, &group("after-replay"))
        .await
        .unwrap();
    assert_eq!(next_n(&mut sub, sent.len()).await.len(), sent.len());
}

/// `publish` returns at once.
pub fn publish_is_quick(bus: &dyn EventBus, topic: Topic, n: usize) -> Vec<bool> {
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let start = std::time::Instant::now();
        results.push(bus.publish(topic, "model", format!("{{\"n\":{i}}}").into_bytes()));
        let took = start.elapsed();
        assert!(took < Duration::from_millis(50), "publish took {took:?}");
    }
    results
}

/// Counters by `name{label=value,...}` (labels sorted); a snapshot resets them.
pub fn counters(snapshotter: &Snapshotter) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let mut labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            *out.entry(format!("{}{{{}}}", key.key().name(), labels.join(",")))
                .or_default() += n;
        }
    }
    out
}
