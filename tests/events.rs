//! Events and the optimiser against the real binary: feedback checks, the bandit moving
//! traffic to the better version (in-process bus and Kafka), an optimiser restart that
//! neither loses nor double-counts feedback, a broker outage under load, the batching
//! tuner reacting to its SLO, and a promotion that moves a registry alias.
//!
//! Kafka tests run against the `tansu` broker (started per test from
//! `$NEXUS_TANSU` or `~/.cache/nexus/tansu/bin/tansu`, installed by scripts/setup.sh), or
//! an external broker named by `NEXUS_TEST_KAFKA_BROKERS`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use common::{Repository, Server, nexus, poll_until};
use nexus_testing::TestBroker;

/// The true reward rate of each version in the simulations.
const RATES: [(&str, f64); 2] = [("1", 0.2), ("2", 0.7)];

/// Requests of the bandit simulation.
const EVENTS: usize = 2000;
/// Stated bound: in the last quarter of the simulation, the better version gets at
/// least this share of the traffic.
const FINAL_SHARE: f64 = 0.85;
/// Stated bound: the simulation's regret is at most this fraction of a 50/50 split's.
const REGRET_FRACTION: f64 = 0.35;

/// The examples with both versions of mlp_classifier ready (they serve the newest only).
fn two_versions() -> Result<Repository> {
    let repository = Repository::examples()?;
    let config = repository.path().join("mlp_classifier/config.pbtxt");
    let text = fs::read_to_string(&config)?;
    let all = text.replace(
        "version_policy: { latest: { num_versions: 1 } }",
        "version_policy: { all: {} }",
    );
    ensure!(
        all != text,
        "mlp_classifier's version policy changed; update this test"
    );
    fs::write(config, all)?;
    Ok(repository)
}

fn mlp_request(id: Option<&str>) -> Value {
    let mut request = json!({"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.5, -1.0, 2.0, 0.25]}
    ]});
    if let Some(id) = id {
        request["id"] = json!(id);
    }
    request
}

/// Infers on mlp_classifier (at `version`, or routed) and returns (request id, version, label).
async fn infer(server: &Server, version: Option<&str>) -> Result<(String, String, i64)> {
    let path = match version {
        Some(v) => format!("/v2/models/mlp_classifier/versions/{v}/infer"),
        None => "/v2/models/mlp_classifier/infer".to_string(),
    };
    let (status, body) = server.post(&path, &mlp_request(None)).await?;
    ensure!(status == 200, "inference answered {status}: {body}");
    let id = body["id"]
        .as_str()
        .context("no server-issued id")?
        .to_string();
    let served = body["model_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let label = body["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "label"))
        .and_then(|t| t["data"][0].as_i64())
        .context("no label output")?;
    Ok((id, served, label))
}

/// Sends one reward for request `id` of mlp_classifier; fails unless it is accepted.
async fn feedback(server: &Server, id: &str, reward: f64) -> Result<()> {
    let (status, body) = server
        .post(
            "/v2/models/mlp_classifier/feedback",
            &json!({"id": id, "reward": reward}),
        )
        .await?;
    ensure!(status == 200, "feedback answered {status}: {body}");
    Ok(())
}

/// xorshift64*: reproducible simulated rewards without a dependency.
struct Draws(u64);

impl Draws {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn rate(version: &str) -> f64 {
    RATES
        .iter()
        .find(|(v, _)| *v == version)
        .map_or(0.0, |r| r.1)
}

/// Serves mlp_classifier's two versions, sends `EVENTS` unpinned requests each followed by
/// a simulated reward, and checks the stated bounds; pinned requests stay on version 1.
async fn bandit_converges(extra: &[&str]) -> Result<()> {
    let mut args = vec![
        "--route-model",
        "mlp_classifier",
        "--optimizer-interval-ms",
        "100",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(two_versions()?, &args).await?;
    let mut draws = Draws(0x9e37_79b9_7f4a_7c15);
    let best = RATES.iter().map(|r| r.1).fold(0.0, f64::max);
    let (mut regret, mut late_best) = (0.0, 0usize);
    let late = EVENTS - EVENTS / 4;
    for n in 0..EVENTS {
        let (id, version, _) = infer(&server, None).await?;
        regret += best - rate(&version);
        if n >= late && rate(&version) == best {
            late_best += 1;
        }
        let reward = if draws.uniform() < rate(&version) {
            1.0
        } else {
            0.0
        };
        feedback(&server, &id, reward).await?;
        if n % 100 == 0 {
            let (_, pinned, _) = infer(&server, Some("1")).await?;
            ensure!(
                pinned == "1",
                "a request pinned to version 1 was answered by {pinned}"
            );
        }
    }
    let share = late_best as f64 / (EVENTS - late) as f64;
    let uniform_regret = EVENTS as f64 * (best - (RATES[0].1 + RATES[1].1) / 2.0);
    // Every reward sent reaches the bandit, once (the optimiser applies them a moment later).
    let state = poll_until(Duration::from_secs(20), "every reward counted", || async {
        let (_, state) = server.get("/api/v1/optimizer/state").await?;
        let counted: u64 = ["1", "2"]
            .iter()
            .map(|v| {
                state["models"]["mlp_classifier"]["arms"][v]["count"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        ensure!(
            counted <= EVENTS as u64,
            "the bandit counted {counted} rewards of {EVENTS} sent"
        );
        Ok((counted == EVENTS as u64).then_some(state))
    })
    .await?;
    eprintln!(
        "bandit: late share of the better version {share:.3}, regret {regret:.1} \
         (50/50 split: {uniform_regret:.1}); state {state}"
    );
    ensure!(
        share >= FINAL_SHARE,
        "the better version got {share:.3} of the last {} requests, below {FINAL_SHARE}; state {state}",
        EVENTS - late
    );
    ensure!(
        regret <= REGRET_FRACTION * uniform_regret,
        "regret {regret:.1} above {REGRET_FRACTION} × a 50/50 split's {uniform_regret:.1}"
    );
    let (_, decisions) = server
        .get("/api/v1/optimizer/decisions?kind=traffic")
        .await?;
    let decisions = decisions["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(!decisions.is_empty(), "no traffic decision listed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandit_moves_traffic_to_the_better_version_in_process() -> Result<()> {
    bandit_converges(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandit_moves_traffic_to_the_better_version_through_kafka() -> Result<()> {
    let broker = TestBroker::start()?;
    let kafka = broker.args();
    let args: Vec<&str> = kafka.iter().map(String::as_str).collect();
    bandit_converges(&args).await
}

/// Feedback is accepted only for requests this server answered, for the model that
/// answered them, with a reward or a label, once per request; anything else is refused
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_checked_against_answered_requests() -> Result<()> {
    let server = Server::start(two_versions()?, &["--route-model", "mlp_classifier"]).await?;
    let path = "/v2/models/mlp_classifier/feedback";
    let (id, version, _) = infer(&server, Some("2")).await?;
    let (right, _, label) = infer(&server, Some("2")).await?;
    let (wrong, _, _) = infer(&server, Some("2")).await?;

    let (status, body) = server.post(path, &json!({"id": id, "reward": 0.5})).await?;
    ensure!(status == 200 && body["accepted"] == 1, "{status}: {body}");
    let (status, body) = server
        .post(
            path,
            &json!([{"id": right, "label": label}, {"id": wrong, "label": label + 1}]),
        )
        .await?;
    ensure!(status == 200 && body["accepted"] == 2, "{status}: {body}");

    // One reward per request: replaying an id, alone or in a list, is refused whole.
    for _ in 0..50 {
        let (status, reply) = server.post(path, &json!({"id": id, "reward": 1})).await?;
        let error = reply["error"].as_str().unwrap_or_default();
        ensure!(
            status == 409 && error.contains("already has feedback"),
            "a replayed id answered {status} {reply}"
        );
    }
    let (fresh, _, _) = infer(&server, Some("2")).await?;
    for (body, says) in [
        (
            json!([{"id": fresh, "reward": 1}, {"id": fresh, "reward": 1}]),
            "appears twice",
        ),
        (
            json!([{"id": fresh, "reward": 1}, {"id": right, "reward": 1}]),
            "already has feedback",
        ),
    ] {
        let (status, reply) = server.post(path, &body).await?;
        let error = reply["error"].as_str().unwrap_or_default();
        ensure!(
            status == 409 && error.contains(says),
            "{body} answered {status} {reply}, wanted 409 mentioning {says:?}"
        );
    }

    // A client-chosen id is echoed and accepted too.
    let (status, body) = server
        .post(
            "/v2/models/mlp_classifier/versions/1/infer",
            &mlp_request(Some("client-7")),
        )
        .await?;
    ensure!(
        status == 200 && body["id"] == "client-7",
        "{status}: {body}"
    );
    let (status, _) = server
        .post(path, &json!({"id": "client-7", "reward": 1}))
        .await?;
    ensure!(status == 200);
    // Answering a rewarded id again does not open it to a second reward.
    let (status, _) = server
        .post(
            "/v2/models/mlp_classifier/versions/1/infer",
            &mlp_request(Some("client-7")),
        )
        .await?;
    ensure!(status == 200);
    let (status, reply) = server
        .post(path, &json!({"id": "client-7", "reward": 1}))
        .await?;
    ensure!(
        status == 409,
        "a reused, rewarded id answered {status} {reply}"
    );

    for (body, want, says) in [
        (
            json!({"id": "never-issued", "reward": 1}),
            404,
            "was not answered",
        ),
        (json!({"id": fresh}), 400, "give a reward or a label"),
        (
            json!({"id": id, "reward": 1, "extra": 1}),
            400,
            "unknown field",
        ),
        (json!([]), 400, "empty"),
        (
            json!([{"id": fresh, "reward": 1}, {"id": "nope", "reward": 1}]),
            404,
            "nope",
        ),
    ] {
        let (status, reply) = server.post(path, &body).await?;
        let error = reply["error"].as_str().unwrap_or_default();
        ensure!(
            status == want && error.contains(says),
            "{body} answered {status} {reply}, wanted {want} mentioning {says:?}"
        );
    }
    let response = reqwest::Client::new()
        .post(server.url(path))
        .body("{not json")
        .send()
        .await?;
    ensure!(
        response.status() == 400,
        "malformed JSON answered {}",
        response.status()
    );
    let (status, reply) = server
        .post(
            "/v2/models/simple/feedback",
            &json!({"id": id, "reward": 1}),
        )
        .await?;
    ensure!(
        status == 400
            && reply["error"]
                .as_str()
                .unwrap_or("")
                .contains("mlp_classifier"),
        "feedback for another model answered {status} {reply}"
    );

    // Exactly the accepted rewards reach the bandit: 0.5, then a matching and a wrong
    // label; a refused list leaves its valid items open (`fresh` is accepted now).
    let (status, reply) = server
        .post(path, &json!({"id": fresh, "reward": 0}))
        .await?;
    ensure!(status == 200, "{status}: {reply}");
    let arm = poll_until(Duration::from_secs(10), "feedback applied", || async {
        let (_, state) = server.get("/api/v1/optimizer/state").await?;
        let arm = state["models"]["mlp_classifier"]["arms"][&version].clone();
        Ok((arm["count"].as_u64() == Some(4)).then_some(arm))
    })
    .await?;
    ensure!(arm["sum"].as_f64() == Some(1.5), "rewards summed to {arm}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, state) = server.get("/api/v1/optimizer/state").await?;
    let arm = &state["models"]["mlp_classifier"]["arms"][&version];
    ensure!(arm["count"] == 4, "replays reached the bandit: {arm}");
    Ok(())
}

/// The freeze switch stops weight changes while feedback keeps arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_weights_do_not_move() -> Result<()> {
    let server = Server::start(
        two_versions()?,
        &[
            "--route-model",
            "mlp_classifier",
            "--optimizer-interval-ms",
            "50",
            "--freeze-routing",
        ],
    )
    .await?;
    for _ in 0..200 {
        let (id, version, _) = infer(&server, None).await?;
        let reward = if version == "2" { 1.0 } else { 0.0 };
        server
            .post(
                "/v2/models/mlp_classifier/feedback",
                &json!({"id": id, "reward": reward}),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, state) = server.get("/api/v1/optimizer/state").await?;
    ensure!(state["frozen"] == true, "{state}");
    let weights = &state["models"]["mlp_classifier"]["weights"];
    for v in ["1", "2"] {
        let share = weights[v].as_f64().unwrap_or(0.0);
        ensure!(
            (share - 0.5).abs() < 1e-9,
            "frozen weights moved: {weights}"
        );
    }
    let (status, state) = server
        .post("/api/v1/optimizer/freeze", &json!({"frozen": false}))
        .await?;
    ensure!(
        status == 200 && state["frozen"] == false,
        "{status}: {state}"
    );
    poll_until(
        Duration::from_secs(10),
        "weights move once unfrozen",
        || async {
            let (_, state) = server.get("/api/v1/optimizer/state").await?;
            let share = state["models"]["mlp_classifier"]["weights"]["2"]
                .as_f64()
                .unwrap_or(0.0);
            Ok((share > 0.6).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// The rewards counted per version, from the optimiser's state.
async fn counts(server: &Server) -> Result<BTreeMap<String, u64>> {
    let (_, state) = server.get("/api/v1/optimizer/state").await?;
    let arms = state["models"]["mlp_classifier"]["arms"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Ok(arms
        .iter()
        .map(|(v, a)| (v.clone(), a["count"].as_u64().unwrap_or(0)))
        .collect())
}

/// Stopped and started again on the same broker, the optimiser resumes its posterior from
/// the decisions topic: every reward counted once, the decision history kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimiser_restart_neither_loses_nor_reapplies_feedback() -> Result<()> {
    let broker = TestBroker::start()?;
    let mut args: Vec<String> = [
        "--route-model",
        "mlp_classifier",
        "--optimizer-interval-ms",
        "100",
        "--checkpoint-secs",
        "1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(broker.args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(two_versions()?, &argv).await?;
    let sent = 300u64;
    for n in 0..sent {
        let (id, version, _) = infer(&server, None).await?;
        let reward = if version == "2" || n % 3 == 0 {
            1.0
        } else {
            0.0
        };
        feedback(&server, &id, reward).await?;
    }
    let before = poll_until(
        Duration::from_secs(20),
        "all feedback counted and checkpointed",
        || async {
            let counts = counts(&server).await?;
            let (_, decisions) = server
                .get("/api/v1/optimizer/decisions?kind=traffic")
                .await?;
            let last = decisions["decisions"]
                .as_array()
                .and_then(|d| d.last().cloned());
            let snapshot: u64 = last
                .as_ref()
                .and_then(|d| d["arms"].as_object())
                .map_or(0, |a| a.values().filter_map(|x| x["count"].as_u64()).sum());
            Ok((counts.values().sum::<u64>() == sent && snapshot == sent)
                .then_some((counts, decisions)))
        },
    )
    .await?;
    let (counts_before, decisions_before) = before;
    let repository = server.into_stopped_repository().await?;

    let server = Server::start(repository, &argv).await?;
    // Give the restarted optimiser time to replay and to consume from its group's offsets.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts_after = counts(&server).await?;
    ensure!(
        counts_after == counts_before,
        "after a restart the bandit counts {counts_after:?}, before {counts_before:?}"
    );
    let (_, decisions_after) = server.get("/api/v1/optimizer/decisions").await?;
    let ids = |d: &Value| -> Vec<String> {
        d["decisions"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|x| x["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old, new) = (ids(&decisions_before), ids(&decisions_after));
    ensure!(
        new.len() >= old.len() && old.iter().all(|id| new.contains(id)),
        "the decision history was not restored: before {old:?}, after {new:?}"
    );
    // New feedback after the restart is counted on top, once.
    let (id, version, _) = infer(&server, Some("1")).await?;
    server
        .post(
            "/v2/models/mlp_classifier/feedback",
            &json!({"id": id, "reward": 1}),
        )
        .await?;
    poll_until(
        Duration::from_secs(10),
        "new feedback counted once",
        || async {
            let now = counts(&server).await?;
            let want = counts_before.get(&version).copied().unwrap_or(0) + 1;
            Ok((now.get(&version) == Some(&want)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Under steady load the broker goes away: no inference fails, the events that could not
/// be delivered are counted as dropped, and once the broker is back events flow again while
/// the load goes on and feedback reaches the optimiser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_under_load_fails_no_request_and_recovers() -> Result<()> {
    let mut broker = TestBroker::start_local()?;
    let mut args: Vec<String> = [
        "--event-timeout-ms",
        "1000",
        "--route-model",
        "mlp_classifier",
    ]
    .map(String::from)
    .to_vec();
    args.extend(broker.args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Arc::new(Server::start(Repository::examples()?, &argv).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let resets = Arc::new(AtomicU64::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..4 {
        let (server, stop, answered, resets) = (
            Arc::clone(&server),
            Arc::clone(&stop),
            Arc::clone(&answered),
            Arc::clone(&resets),
        );
        clients.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = common::simple_request(1);
                // A connection the server closed is retried once on a new one (counted and
                // reported); a second failure means the server is gone.
                let (status, body) = match server.post("/v2/models/simple/infer", &request).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        resets.fetch_add(1, Ordering::Relaxed);
                        server.post("/v2/models/simple/infer", &request).await?
                    }
                };
                ensure!(
                    status == 200,
                    "inference failed during the outage: {status} {body}"
                );
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let metric = |name: &'static str| {
        let server = Arc::clone(&server);
        async move { common::metric_sum(&server.metrics_url(), name).await }
    };
    poll_until(Duration::from_secs(20), "events published", || async {
        Ok((metric("nexus_events_published_total").await? > 100.0).then_some(()))
    })
    .await?;
    let reader = broker.reader("nexus.inference");
    reader.read_available().await?;
    broker.take_down()?;
    poll_until(
        Duration::from_secs(30),
        "undeliverable events counted as dropped",
        || async { Ok((metric("nexus_events_dropped_total").await? > 0.0).then_some(())) },
    )
    .await?;
    // Serving goes on while events keep failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = answered.load(Ordering::Relaxed);
    broker.bring_back()?;
    let delivered = poll_until(
        Duration::from_secs(60),
        "events delivered after the broker returned",
        || async {
            let events = reader.read_available().await?;
            Ok((!events.is_empty()).then_some(events.len()))
        },
    )
    .await?;
    // Once what was queued during the outage has been sent or timed out, drops stop while
    // the load goes on.
    poll_until(
        Duration::from_secs(30),
        "a second without drops after the broker came back",
        || async {
            let before = metric("nexus_events_dropped_total").await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok((metric("nexus_events_dropped_total").await? == before).then_some(()))
        },
    )
    .await?;
    let settled = reader.read_available().await?.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(client) = clients.join_next().await {
        client??;
    }
    let later = reader.read_available().await?.len();
    ensure!(later > 0, "no event delivered once the broker was back");
    let total = answered.load(Ordering::Relaxed);
    ensure!(
        total > during,
        "no request answered after the broker came back"
    );
    let (status, _) = server.get("/v2/health/ready").await?;
    ensure!(status == 200, "not ready after the outage: {status}");
    // The optimiser's consumers are back too: feedback sent now reaches the bandit.
    let (id, version, _) = infer(&server, None).await?;
    feedback(&server, &id, 1.0).await?;
    poll_until(
        Duration::from_secs(30),
        "feedback applied after the outage",
        || async { Ok((counts(&server).await?.get(&version) == Some(&1)).then_some(())) },
    )
    .await?;
    eprintln!(
        "outage: {total} requests answered, {} connections reset and retried, {} events read after recovery",
        resets.load(Ordering::Relaxed),
        delivered + settled + later
    );
    Ok(())
}

/// With an SLO no model can meet, the tuner backs the batching delay off and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_tuner_backs_off_when_the_slo_is_broken() -> Result<()> {
    let server = Server::start(
        Repository::examples()?,
        &[
            "--latency-slo-ms",
            "0.001",
            "--optimizer-interval-ms",
            "200",
        ],
    )
    .await?;
    let decision = poll_until(Duration::from_secs(30), "a batching decision", || async {
        for _ in 0..50 {
            infer(&server, None).await?;
        }
        let (_, body) = server
            .get("/api/v1/optimizer/decisions?kind=batching&model=mlp_classifier")
            .await?;
        Ok(body["decisions"]
            .as_array()
            .and_then(|d| d.first().cloned()))
    })
    .await?;
    let change = &decision["batching"];
    ensure!(
        change["observed_p99_ms"].as_f64().unwrap_or(0.0) > 0.001
            && change["max_queue_delay_us"]
                .as_u64()
                .is_some_and(|d| d < 100),
        "expected a back-off below the configured 100 µs: {decision}"
    );
    Ok(())
}

/// Champion (version 1) and challenger (version 2) of a registry model serve side by side;
/// the challenger earns better rewards, the optimiser moves `champion` to it in the
/// registry, and serving follows: only version 2 is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_moves_the_alias_and_serving_follows() -> Result<()> {
    let models = common::python_fixture("tests/fixtures/swap_models.py")?;
    let dirs = common::UpDirs::new()?;
    let server = dirs
        .start_up(&[
            "--model",
            "models:/swap@champion",
            "--model",
            "models:/swap@challenger",
            "--route-model",
            "swap",
            "--registry-poll-secs",
            "1",
            "--optimizer-interval-ms",
            "100",
            "--promotion-min-samples",
            "60",
        ])
        .await?;
    let registry = server.url("");
    for (file, alias) in [("v1.onnx", "champion"), ("v2.onnx", "challenger")] {
        let path = models.path().join(file).display().to_string();
        nexus(&[
            "models",
            "push",
            &path,
            "--name",
            "swap",
            "--alias",
            alias,
            "--registry-url",
            &registry,
        ])
        .await?;
    }
    poll_until(Duration::from_secs(30), "both versions ready", || async {
        let (s1, _) = server.get("/v2/models/swap/versions/1/ready").await?;
        let (s2, _) = server.get("/v2/models/swap/versions/2/ready").await?;
        Ok((s1 == 200 && s2 == 200).then_some(()))
    })
    .await?;
    let request = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]});
    let draws = std::sync::Mutex::new(Draws(7));
    let promoted = poll_until(
        Duration::from_secs(120),
        "champion promoted to version 2",
        || async {
            for _ in 0..20 {
                let (status, body) = server.post("/v2/models/swap/infer", &request).await?;
                ensure!(status == 200, "inference failed: {status} {body}");
                let version = body["model_version"].as_str().unwrap_or_default();
                let p = if version == "2" { 0.8 } else { 0.2 };
                let u = draws.lock().expect("no panics").uniform();
                let reward = if u < p { 1 } else { 0 };
                let (status, reply) = server
                    .post(
                        "/v2/models/swap/feedback",
                        &json!({"id": body["id"], "reward": reward}),
                    )
                    .await?;
                // Once version 1 is unloaded, its last answers may be refused as unknown.
                ensure!(
                    status == 200 || status == 404,
                    "feedback answered {status}: {reply}"
                );
            }
            let (_, body) = server
                .get("/api/v1/optimizer/decisions?kind=promotion")
                .await?;
            Ok(body["decisions"]
                .as_array()
                .and_then(|d| d.first().cloned()))
        },
    )
    .await?;
    let change = &promoted["promotion"];
    ensure!(
        change["from_version"] == "1"
            && change["to_version"] == "2"
            && change["alias"] == "champion",
        "unexpected promotion {promoted}"
    );
    let mlflow = server.mlflow();
    let alias = mlflow
        .get(
            "registered-models/alias",
            &json!({"name": "swap", "alias": "champion"}),
        )
        .await?;
    ensure!(
        alias["model_version"]["version"] == "2",
        "registry alias: {alias}"
    );
    poll_until(
        Duration::from_secs(30),
        "serving only version 2",
        || async {
            let (s1, _) = server.get("/v2/models/swap/versions/1/ready").await?;
            let (_, body) = server.post("/v2/models/swap/infer", &request).await?;
            Ok((s1 != 200 && body["model_version"] == "2").then_some(()))
        },
    )
    .await?;
    Ok(())
}
