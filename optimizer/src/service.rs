//! The decision loop: one task that owns the bandits, the batching tuners and the latency
//! windows, fed by the feedback and inference topics, deciding once per interval.
//!
//! Durability: the bandit's posterior of a model travels in its traffic decisions
//! (`arms`, with the feedback offsets it includes). On start the loop replays
//! `nexus.decisions` to restore them, then resumes its consumer group; feedback below a
//! model's restored offsets is skipped, so a restart neither loses nor counts twice.
//! Offsets are committed only once every model with new feedback has had its state
//! published (a traffic decision, or a checkpoint every `--checkpoint-secs`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use nexus_events::schema::{
    BatchingChange, DECISION_SCHEMA, DecisionEvent, DecisionKind, FeedbackEvent, InferenceEvent,
    PromotionChange,
};
use nexus_events::{Delivery, EventBus, EventError, Subscription, Topic};
use nexus_serving::ServingHandle;

use crate::bandit::{Bandit, Guardrails};
use crate::tuner::{BatchTuner, Observation, Setting, TunerConfig};
use crate::{Optimizer, now_ms};

/// Largest queue delay the tuner tries.
const MAX_DELAY_US: u64 = 20_000;
/// Requests an interval needs before its p99 means anything.
const MIN_REQUESTS: u64 = 20;

/// Starts the decision loop in the background; it retries until the bus answers.
pub fn spawn(optimizer: Arc<Optimizer>, serving: ServingHandle) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(500);
        loop {
            match Loop::start(Arc::clone(&optimizer), serving.clone()).await {
                Ok(mut running) => {
                    if let Err(e) = running.run().await {
                        tracing::warn!(error = %e, "optimiser stopped; restarting");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "optimiser cannot start yet; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    });
}

/// The bandit of one routed model and what it has applied.
struct ModelArms {
    bandit: Bandit,
    /// Next feedback offset per partition already counted in `bandit`.
    applied: BTreeMap<i32, i64>,
    /// Feedback counted since the last published snapshot.
    dirty: bool,
}

/// Rewarded request ids the bandit remembers, so it counts each request once even when
/// several servers sharing a broker each accepted feedback on one client-chosen id.
const COUNTED_IDS: usize = 100_000;

/// The last [`COUNTED_IDS`] rewarded requests, as 64-bit keyed hashes of (model, id): a
/// set sized for twice as many (2^18 slots of 9 bytes) and a queue, ~3.2 MB.
struct Counted {
    hasher: std::collections::hash_map::RandomState,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl Counted {
    fn new(capacity: usize) -> Self {
        Counted {
            hasher: Default::default(),
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True the first time (model, id) is seen within the last `capacity` ids.
    fn first(&mut self, model: &str, id: &str) -> bool {
        if self.seen.capacity() == 0 {
            // Twice the ids it holds, so forgotten ids' tombstones never make it double
            // (see `recent`'s module docs).
            self.seen.reserve(2 * self.capacity);
            self.order.reserve_exact(self.capacity + 1);
        }
        let key = self.hasher.hash_one((model, id));
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Latencies of one version since the last decision.
#[derive(Default)]
struct Window {
    latencies_us: Vec<u64>,
}

struct Loop {
    optimizer: Arc<Optimizer>,
    serving: ServingHandle,
    bus: Arc<dyn EventBus>,
    feedback: Box<dyn Subscription>,
    inference: Option<Box<dyn Subscription>>,
    models: BTreeMap<String, ModelArms>,
    counted: Counted,
    tuners: HashMap<(String, u64), BatchTuner>,
    windows: HashMap<(String, u64), Window>,
    /// Settings decided before a restart, applied once the version is loaded.
    wanted: HashMap<(String, u64), Setting>,
    /// The last delivery per partition, committed once its effects are published.
    feedback_seen: BTreeMap<i32, Delivery>,
    inference_seen: BTreeMap<i32, Delivery>,
    last_commit: Instant,
    window_start: Instant,
    rng: SmallRng,
}

impl Loop {
    async fn start(optimizer: Arc<Optimizer>, serving: ServingHandle) -> Result<Loop, EventError> {
        let bus = Arc::clone(optimizer.bus());
        let group = optimizer.args.optimizer_group.clone();
        let counted = Counted::new(COUNTED_IDS);
        let mut running = Loop {
            feedback: bus.subscribe(Topic::Feedback, &group).await?,
            inference: match optimizer.args.latency_slo_ms {
                // Its own group: members of one group on two topics rebalance together.
                Some(_) => Some(
                    bus.subscribe(Topic::Inference, &format!("{group}-latency"))
                        .await?,
                ),
                None => None,
            },
            optimizer,
            serving,
            bus,
            models: BTreeMap::new(),
            counted,
            tuners: HashMap::new(),
            windows: HashMap::new(),
            wanted: HashMap::new(),
            feedback_seen: BTreeMap::new(),
            inference_seen: BTreeMap::new(),
            last_commit: Instant::now(),
            window_start: Instant::now(),
            rng: SmallRng::from_os_rng(),
        };
        running.restore().await?;
        Ok(running)
    }

    /// Rebuilds posteriors, weights, batching settings and the decision list from the
    /// decisions topic.
    async fn restore(&mut self) -> Result<(), EventError> {
        let history = self.bus.replay(Topic::Decisions).await?;
        let mut restored = 0;
        for delivery in history {
            let Ok(decision) = serde_json::from_slice::<DecisionEvent>(&delivery.payload) else {
                tracing::warn!(offset = delivery.offset, "skipping an unreadable decision");
                continue;
            };
            restored += 1;
            match decision.kind {
                DecisionKind::Traffic => {
                    let arms = self.arms_of(&decision.model);
                    arms.bandit.restore(decision.arms.clone());
                    arms.applied = decision.feedback_offsets.clone();
                    self.optimizer
                        .set_weights(&decision.model, decision.weights.clone());
                }
                DecisionKind::Batching => {
                    if let Some(b) = &decision.batching
                        && let Ok(version) = b.version.parse()
                    {
                        self.wanted.insert(
                            (decision.model.clone(), version),
                            Setting {
                                max_queue_delay_us: b.max_queue_delay_us,
                                preferred_batch_size: b.preferred_batch_size,
                            },
                        );
                    }
                }
                DecisionKind::Promotion => {}
            }
            self.optimizer.remember(decision);
        }
        self.publish_state();
        if restored > 0 {
            tracing::info!(
                decisions = restored,
                "optimiser state restored from the decisions topic"
            );
        }
        Ok(())
    }

    fn arms_of(&mut self, model: &str) -> &mut ModelArms {
        self.models
            .entry(model.to_string())
            .or_insert_with(|| ModelArms {
                bandit: Bandit::new(),
                applied: BTreeMap::new(),
                dirty: false,
            })
    }

    async fn run(&mut self) -> Result<(), EventError> {
        let interval = Duration::from_millis(self.optimizer.args.optimizer_interval_ms.max(10));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                delivery = self.feedback.next() => self.apply_feedback(delivery?),
                delivery = next(&mut self.inference) => self.apply_inference(delivery?),
                _ = ticker.tick() => self.decide().await?,
            }
        }
    }

    fn apply_feedback(&mut self, delivery: Delivery) {
        let (partition, offset) = (delivery.partition, delivery.offset);
        let parsed = serde_json::from_slice::<FeedbackEvent>(&delivery.payload);
        self.feedback_seen.insert(partition, delivery);
        let event = match parsed {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, partition, offset, "skipping unreadable feedback");
                return;
            }
        };
        if !self.optimizer.routes(&event.model) {
            return;
        }
        let arms = self.arms_of(&event.model);
        if arms
            .applied
            .get(&partition)
            .is_some_and(|next| offset < *next)
        {
            // Already in the restored snapshot.
            return;
        }
        arms.applied.insert(partition, offset + 1);
        arms.dirty = true;
        if self.counted.first(&event.model, &event.id) {
            self.arms_of(&event.model)
                .bandit
                .observe(&event.version, event.reward);
        }
    }

    fn apply_inference(&mut self, delivery: Delivery) {
        if let Ok(event) = serde_json::from_slice::<InferenceEvent>(&delivery.payload)
            && event.status == "ok"
            && let Ok(version) = event.version.parse::<u64>()
        {
            self.windows
                .entry((event.model, version))
                .or_default()
                .latencies_us
                .push(event.latency_us);
        }
        self.inference_seen.insert(delivery.partition, delivery);
    }

    /// One pass: traffic weights and promotions of routed models, batching of tuned ones,
    /// then commits what was applied.
    async fn decide(&mut self) -> Result<(), EventError> {
        let models: Vec<String> = self.routed_models();
        let mut all_published = true;
        for model in &models {
            all_published &= self.decide_traffic(model).await;
            self.consider_promotion(model).await;
        }
        let checkpoint_due =
            self.last_commit.elapsed() >= Duration::from_secs(self.optimizer.args.checkpoint_secs);
        let dirty: Vec<String> = self
            .models
            .iter()
            .filter(|(_, a)| a.dirty)
            .map(|(m, _)| m.clone())
            .collect();
        if !dirty.is_empty() && checkpoint_due {
            for model in dirty {
                let reason = "checkpoint of the posterior; weights unchanged".to_string();
                let weights = self.optimizer.weights_of(&model);
                all_published &= self.publish_traffic(&model, weights, reason).await;
            }
        }
        if all_published && self.models.values().all(|a| !a.dirty) {
            commit_all(&mut self.feedback, &mut self.feedback_seen).await;
            self.last_commit = Instant::now();
        }
        if let Some(slo) = self.optimizer.args.latency_slo_ms {
            self.tune(slo).await;
            if let Some(inference) = self.inference.as_mut() {
                commit_all(inference, &mut self.inference_seen).await;
            }
        }
        self.publish_state();
        Ok(())
    }

    /// Models whose traffic the bandit splits now: routed and with two or more versions ready.
    fn routed_models(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .serving
            .manager
            .loaded()
            .iter()
            .map(|l| l.name.clone())
            .filter(|m| self.optimizer.routes(m))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The versions of `model` ready now, as the bandit names its arms.
    fn ready(&self, model: &str) -> Vec<String> {
        self.serving
            .manager
            .ready_versions(model)
            .iter()
            .map(u64::to_string)
            .collect()
    }

    /// Updates one model's weights; false when a changed decision could not be published.
    async fn decide_traffic(&mut self, model: &str) -> bool {
        let ready = self.ready(model);
        if ready.len() < 2 {
            // Nothing to split (any more): unpinned requests go to the newest again.
            self.optimizer.set_weights(model, BTreeMap::new());
            return true;
        }
        let guard = Guardrails {
            min_share: self.optimizer.args.min_exploration,
            max_shift: self.optimizer.args.max_shift,
            frozen: self.optimizer.is_frozen(),
        };
        let current = self.optimizer.weights_of(model);
        let arms = self.arms_of(model);
        arms.bandit.set_arms(&ready);
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let arms = self.arms_of(model);
        let changed = arms.bandit.update_weights(&mut rng, &guard);
        let Some(weights) = changed else {
            if current.is_empty() {
                // First sight of this model: serve the bandit's starting split.
                let initial = arms.bandit.weights().clone();
                self.optimizer.set_weights(model, initial);
            }
            return true;
        };
        let summary: Vec<String> = weights
            .iter()
            .map(|(v, s)| format!("v{v} {:.0}%", s * 100.0))
            .collect();
        let reason = format!(
            "Thompson sampling on {} rewards: {}",
            total_count(&arms.bandit),
            summary.join(", ")
        );
        self.publish_traffic(model, weights, reason).await
    }

    /// Publishes a traffic decision carrying the model's posterior, then applies it.
    async fn publish_traffic(
        &mut self,
        model: &str,
        weights: BTreeMap<String, f64>,
        reason: String,
    ) -> bool {
        let arms = self.arms_of(model);
        let decision = DecisionEvent {
            arms: arms.bandit.arms().clone(),
            feedback_offsets: arms.applied.clone(),
            weights: weights.clone(),
            ..decision(DecisionKind::Traffic, model, reason)
        };
        let published = self.publish(&decision).await;
        if published {
            self.arms_of(model).dirty = false;
        }
        self.optimizer.set_weights(model, weights);
        self.optimizer.remember(decision);
        published
    }

    /// Moves the promotion alias to a version that beats the one it names, when sure enough.
    async fn consider_promotion(&mut self, model: &str) {
        let args = &self.optimizer.args;
        if args.promotion_confidence <= 0.0 {
            return;
        }
        let (Some(source), Some(spec)) = (
            self.serving.source.clone(),
            self.serving
                .remote
                .iter()
                .find(|s| s.serve_as == model)
                .cloned(),
        ) else {
            return;
        };
        let (alias, confidence, min) = (
            args.promote_alias.clone(),
            args.promotion_confidence,
            args.promotion_min_samples,
        );
        let Some(arms) = self.models.get(model) else {
            return;
        };
        let count = |v: &str| arms.bandit.arms().get(v).map_or(0, |a| a.count);
        let mean = |v: &str| {
            arms.bandit
                .arms()
                .get(v)
                .filter(|a| a.count > 0)
                .map_or(f64::MIN, |a| a.sum / a.count as f64)
        };
        let ready = self.ready(model);
        let Some(best) = ready
            .iter()
            .filter(|v| count(v) >= min)
            .max_by(|a, b| mean(a).total_cmp(&mean(b)))
            .cloned()
        else {
            return;
        };
        let champion = match source.resolve(&spec.name, &alias).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(model, error = %e, "no champion to compare with");
                return;
            }
        };
        if best == champion || count(&champion) < min || !ready.contains(&champion) {
            return;
        }
        let mut rng = SmallRng::from_rng(&mut self.rng);
        let probability = arms.bandit.prob_better(&best, &champion, &mut rng);
        if probability < confidence {
            return;
        }
        let samples = BTreeMap::from([
            (best.clone(), count(&best)),
            (champion.clone(), count(&champion)),
        ]);
        if let Err(e) = source.set_alias(&spec.name, &alias, &best).await {
            tracing::warn!(model, error = %e, "promotion failed; will retry");
            return;
        }
        let reason = format!(
            "version {best} beats {alias} version {champion} with probability {probability:.3} \
             (mean reward {:.4} vs {:.4} over {} and {} rewards)",
            mean(&best),
            mean(&champion),
            count(&best),
            count(&champion)
        );
        let decision = DecisionEvent {
            promotion: Some(PromotionChange {
                registered_model: spec.name.clone(),
                alias,
                from_version: champion,
                to_version: best,
                probability,
                samples,
            }),
            ..decision(DecisionKind::Promotion, model, reason)
        };
        self.publish(&decision).await;
        self.optimizer.remember(decision);
    }

    /// Feeds each batched version's latency window to its tuner and applies its setting.
    async fn tune(&mut self, slo_ms: f64) {
        let elapsed = self.window_start.elapsed().as_secs_f64().max(1e-3);
        self.window_start = Instant::now();
        let mut windows = std::mem::take(&mut self.windows);
        for loaded in self.serving.manager.loaded() {
            let Some(batcher) = loaded.batcher() else {
                continue;
            };
            let key = (loaded.name.clone(), loaded.version);
            let (delay, preferred, max_batch) = batcher.settings();
            if let Some(setting) = self.wanted.remove(&key) {
                batcher.tune(
                    Duration::from_micros(setting.max_queue_delay_us),
                    setting.preferred_batch_size,
                );
            }
            let tuner = self.tuners.entry(key.clone()).or_insert_with(|| {
                BatchTuner::new(
                    TunerConfig {
                        slo_ms,
                        max_batch_size: max_batch,
                        min_delay_us: 0,
                        max_delay_us: MAX_DELAY_US,
                        min_requests: MIN_REQUESTS,
                    },
                    Setting {
                        max_queue_delay_us: delay.as_micros() as u64,
                        preferred_batch_size: preferred,
                    },
                )
            });
            let mut window = windows.remove(&key).unwrap_or_default();
            let requests = window.latencies_us.len() as u64;
            let observation = Observation {
                p99_ms: p99(&mut window.latencies_us) as f64 / 1000.0,
                throughput: requests as f64 / elapsed,
                requests,
            };
            let Some((setting, reason)) = tuner.observe(&observation) else {
                continue;
            };
            batcher.tune(
                Duration::from_micros(setting.max_queue_delay_us),
                setting.preferred_batch_size,
            );
            let (model, version) = key;
            metrics::gauge!("nexus_batch_max_queue_delay_us", "model" => model.clone(), "version" => version.to_string())
                .set(setting.max_queue_delay_us as f64);
            let decision = DecisionEvent {
                batching: Some(BatchingChange {
                    version: version.to_string(),
                    max_queue_delay_us: setting.max_queue_delay_us,
                    preferred_batch_size: setting.preferred_batch_size,
                    observed_p99_ms: observation.p99_ms,
                    observed_throughput: observation.throughput,
                    slo_ms,
                }),
                ..decision(DecisionKind::Batching, &model, reason)
            };
            self.publish(&decision).await;
            self.optimizer.remember(decision);
        }
    }

    async fn publish(&mut self, decision: &DecisionEvent) -> bool {
        tracing::info!(
            kind = ?decision.kind,
            model = %decision.model,
            reason = %decision.reason,
            "optimiser decision"
        );
        let payload = match serde_json::to_vec(decision) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "decision not serializable");
                return false;
            }
        };
        match self
            .bus
            .publish_confirmed(Topic::Decisions, &decision.model, payload)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, model = %decision.model, "decision applied but not published");
                false
            }
        }
    }

    /// Copies the posteriors where the API reads them.
    fn publish_state(&self) {
        let mut arms = self.optimizer.arms.write();
        for (model, a) in &self.models {
            arms.insert(model.clone(), a.bandit.arms().clone());
        }
    }
}

/// The next delivery of an optional subscription; never completes without one.
async fn next(subscription: &mut Option<Box<dyn Subscription>>) -> Result<Delivery, EventError> {
    match subscription {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Commits the last delivery of every partition seen since the previous commit.
async fn commit_all(subscription: &mut Box<dyn Subscription>, seen: &mut BTreeMap<i32, Delivery>) {
    for (_, delivery) in std::mem::take(seen) {
        if let Err(e) = subscription.commit(&delivery).await {
            tracing::warn!(error = %e, "offset commit failed; events may be applied again after a restart");
        }
    }
}

fn decision(kind: DecisionKind, model: &str, reason: String) -> DecisionEvent {
    let timestamp_ms = now_ms();
    DecisionEvent {
        schema: DECISION_SCHEMA.to_string(),
        id: format!("{timestamp_ms:x}-{:x}", rand::random::<u32>()),
        kind,
        model: model.to_string(),
        timestamp_ms,
        reason,
        weights: BTreeMap::new(),
        batching: None,
        promotion: None,
        arms: BTreeMap::new(),
        feedback_offsets: BTreeMap::new(),
    }
}

fn total_count(bandit: &Bandit) -> u64 {
    bandit.arms().values().map(|a| a.count).sum()
}

/// The 99th percentile of `values` (0 when empty); reorders them.
fn p99(values: &mut [u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64) * 0.99).ceil() as usize;
    let index = rank.clamp(1, values.len()) - 1;
    *values.select_nth_unstable(index).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_counts_once_within_the_bound() {
        let mut counted = Counted::new(2);
        assert!(counted.first("m", "a"));
        assert!(!counted.first("m", "a"));
        assert!(counted.first("n", "a"), "ids are per model");
        assert!(counted.first("m", "b"));
        assert_eq!(counted.seen.len(), 2);
        assert!(counted.first("m", "a"), "forgotten beyond the bound");
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).collect();
        assert_eq!(p99(&mut v), 99);
        assert_eq!(p99(&mut [5]), 5);
        assert_eq!(p99(&mut []), 0);
    }
}
