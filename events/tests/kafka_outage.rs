//! The Kafka bus while its broker goes down and comes back (a local tansu cut off from
//! its clients and reconnected on the same port). Its own test binary: it installs a
//! global metrics recorder, as librdkafka reports failed deliveries on its own thread.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use nexus_events::{EventBus, KafkaArgs, KafkaBus, Topic};
use nexus_testing::{TestBroker, unique_name};
use parking_lot::Mutex;

/// Counters since the start (a snapshot resets the recorder's counters).
fn counter(name: &str, topic: &str, reason: &str) -> u64 {
    static RECORDER: OnceLock<(Snapshotter, Mutex<HashMap<String, u64>>)> = OnceLock::new();
    let (snapshotter, totals) = RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("install the metrics recorder");
        (snapshotter, Mutex::new(HashMap::new()))
    });
    let mut totals = totals.lock();
    for (key, n) in common::counters(snapshotter) {
        *totals.entry(key).or_default() += n;
    }
    let mut labels = vec![format!("topic={topic}")];
    if !reason.is_empty() {
        labels.push(format!("reason={reason}"));
    }
    labels.sort();
    totals
        .get(&format!("{name}{{{}}}", labels.join(",")))
        .copied()
        .unwrap_or(0)
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_drops_and_recovers() {
    common::init_tracing();
    counter("", "", ""); // installs the recorder before any event
    let mut broker = TestBroker::start_local().unwrap_or_else(|e| panic!("{e}"));
    let args = KafkaArgs {
        event_timeout_ms: 1500,
        ..broker.kafka_args()
    };
    let bus = KafkaBus::connect(&args).await.unwrap();
    // A bus whose events may wait 30 s for the broker, on topics of its own.
    let patient = KafkaBus::connect(&KafkaArgs {
        event_timeout_ms: 30_000,
        ..broker.kafka_args()
    })
    .await
    .unwrap();
    // A bus with a tiny buffer, on the same topics as the first.
    let small = KafkaBus::connect(&KafkaArgs {
        event_buffer: 5,
        ..args.clone()
    })
    .await
    .unwrap();
    bus.publish_confirmed(Topic::Inference, "m", b"{\"before\":true}".to_vec())
        .await
        .unwrap();
    bus.healthy().await.unwrap();

    broker.take_down().unwrap();
    assert!(
        bus.healthy().await.is_err(),
        "healthy while the broker is down"
    );

    // publish neither blocks nor fails at once: librdkafka queues ...
    let undelivered_before = counter("nexus_events_dropped_total", "inference", "undelivered");
    let start = Instant::now();
    let results = common::publish_is_quick(&bus, Topic::Inference, 200);
    assert!(
        results.iter().all(|ok| *ok),
        "queued while the broker is down"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "200 publishes took {:?}",
        start.elapsed()
    );
    // ... and drops them after --event-timeout-ms, counting each.
    wait_for(
        "undelivered events to be counted",
        Duration::from_secs(15),
        || bus.undelivered() >= 200,
    )
    .await;
    assert_eq!(bus.undelivered(), 200);
    assert_eq!(
        counter("nexus_events_dropped_total", "inference", "undelivered") - undelivered_before,
        200
    );

    for i in 0..10 {
        assert!(patient.publish(
            Topic::Feedback,
            "m",
            format!("{{\"queued\":{i}}}").into_bytes()
        ));
    }

    // A full buffer drops at once and says so.
    let full_before = counter("nexus_events_dropped_total", "feedback", "full");
    let results = common::publish_is_quick(&small, Topic::Feedback, 20);
    let dropped = results.iter().filter(|ok| !**ok).count() as u64;
    assert!(
        dropped >= 15,
        "only {dropped} of 20 dropped with a buffer of 5"
    );
    assert_eq!(
        counter("nexus_events_dropped_total", "feedback", "full") - full_before,
        dropped
    );

    // A confirmed publish fails (after the event timeout) instead of hanging.
    let start = Instant::now();
    assert!(
        bus.publish_confirmed(Topic::Decisions, "m", b"{}".to_vec())
            .await
            .is_err()
    );
    assert!(start.elapsed() < Duration::from_secs(10));

    // The broker comes back on the same port, with what it stored before; the bus
    // reconnects by itself.
    broker.bring_back().unwrap();
    bus.healthy().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match bus
            .publish_confirmed(Topic::Inference, "m", b"{\"after\":0}".to_vec())
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing does not recover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for i in 1..5 {
        let payload = format!("{{\"after\":{i}}}").into_bytes();
        assert!(bus.publish(Topic::Inference, "m", payload));
    }
    bus.flush().await;
    assert_eq!(bus.in_flight(), 0);
    // Nothing from before the outage is lost, nothing dropped during it was delivered.
    let expected: Vec<String> = std::iter::once("{\"before\":true}".to_owned())
        .chain((0..5).map(|i| format!("{{\"after\":{i}}}")))
        .collect();
    let payloads = |events: &[nexus_events::Delivery]| -> Vec<String> {
        events
            .iter()
            .map(|d| String::from_utf8(d.payload.clone()).unwrap())
            .collect()
    };
    let reader = broker.reader(&args.topics.inference);
    assert_eq!(payloads(&reader.read_available().await.unwrap()), expected);
    assert!(reader.read_available().await.unwrap().is_empty());

    let mut sub = bus
        .subscribe(Topic::Inference, &unique_name("after-outage"))
        .await
        .unwrap();
    assert_eq!(payloads(&common::next_n(&mut sub, 6).await), expected);
    // Nothing more was dropped once the broker was back.
    assert_eq!(bus.undelivered(), 200);

    // Events that waited less than --event-timeout-ms were delivered, not dropped.
    let patient_reader = broker.reader(&patient.topics().feedback);
    let patient_events = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let events = patient_reader.read_available().await.unwrap();
            if !events.is_empty() {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("events queued during the outage delivered after it");
    patient.flush().await;
    let mut patient_events = patient_events;
    patient_events.extend(patient_reader.read_available().await.unwrap());
    assert_eq!(patient_events.len(), 10);
    assert_eq!(patient.undelivered(), 0);

    // The small bus recovered too.
    assert!(small.publish(Topic::Feedback, "m", b"{}".to_vec()));
    small.flush().await;
    assert_eq!(small.in_flight(), 0);
}
