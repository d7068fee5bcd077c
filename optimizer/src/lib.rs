//! The optimiser: feedback loops that tune the platform from its own events.
//!
//! Serving reports every inference through [`Optimizer`]'s [`InferenceHooks`]; those
//! become `nexus.inference` events, and `POST /v2/models/{m}/feedback` becomes
//! `nexus.feedback` events. A task ([`service`]) consumes both from the bus and, once per
//! interval, decides: traffic weights between a model's versions (a Thompson-sampling
//! [`bandit`]), batching settings per version ([`tuner`]) and promotions (moving a registry
//! alias to a better version). Decisions are applied here, published to `nexus.decisions`
//! and listed at `GET /api/v1/optimizer/decisions`.

pub mod api;
pub mod bandit;
pub mod recent;
pub mod service;
pub mod tuner;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rand::Rng;

use nexus_events::schema::{DecisionEvent, INFERENCE_SCHEMA, InferenceEvent};
use nexus_events::{EventBus, Topic};
use nexus_models::{Tensor, TensorData};
use nexus_serving::{InferenceHooks, InferenceRecord, ServingHandle};

pub use nexus_events::schema::ArmState;

use crate::recent::RecentRequests;

/// Options of the optimiser (`nexus up`, `nexus serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct OptimizerArgs {
    /// Split unpinned traffic of MODEL between its ready versions with the bandit
    /// (repeatable; `*` for every model). Requests naming a version are never rerouted.
    #[arg(long = "route-model", value_name = "MODEL")]
    pub route_models: Vec<String>,
    /// Fraction of inference events that carry the request's inputs and outputs.
    #[arg(long, default_value_t = 0.0)]
    pub log_sample_rate: f64,
    /// p99 latency target in milliseconds; enables the batching tuner for every model with
    /// dynamic batching.
    #[arg(long)]
    pub latency_slo_ms: Option<f64>,
    /// Milliseconds between optimiser decisions.
    #[arg(long, default_value_t = 1000)]
    pub optimizer_interval_ms: u64,
    /// Smallest traffic share any ready version keeps, so the bandit keeps learning.
    #[arg(long, default_value_t = 0.05)]
    pub min_exploration: f64,
    /// Largest change of one version's traffic share per decision.
    #[arg(long, default_value_t = 0.2)]
    pub max_shift: f64,
    /// Start with traffic weights frozen (`POST /api/v1/optimizer/freeze` changes it).
    #[arg(long)]
    pub freeze_routing: bool,
    /// Registry alias a winning version is promoted to (models served from the registry).
    #[arg(long, default_value = "champion")]
    pub promote_alias: String,
    /// Posterior probability that the challenger is better needed to promote it; 0 disables
    /// promotion.
    #[arg(long, default_value_t = 0.95)]
    pub promotion_confidence: f64,
    /// Rewards needed for each of champion and challenger before a promotion.
    #[arg(long, default_value_t = 200)]
    pub promotion_min_samples: u64,
    /// Seconds a request id is accepted for feedback.
    #[arg(long, default_value_t = 3600)]
    pub feedback_window_secs: u64,
    /// Most request ids remembered for feedback (the oldest are forgotten first).
    #[arg(long, default_value_t = 1_000_000)]
    pub feedback_capacity: usize,
    /// Most memory, in MiB, the request ids remembered for feedback may hold (the oldest
    /// are forgotten first; an entry counts as about 500 bytes plus its id, so the default
    /// keeps about 250,000 requests).
    #[arg(long, default_value_t = 128)]
    pub feedback_memory_mb: usize,
    /// Consumer group of the optimiser on the inference and feedback topics.
    #[arg(long, default_value = "nexus-optimizer")]
    pub optimizer_group: String,
    /// Seconds between snapshots of the bandit's state when its weights do not change.
    #[arg(long, default_value_t = 30)]
    pub checkpoint_secs: u64,
}

impl Default for OptimizerArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: OptimizerArgs,
        }
        Wrapper::parse_from(["optimizer"]).args
    }
}

/// Decisions kept in memory for the API.
const DECISIONS_KEPT: usize = 10_000;

/// Current traffic weights of one model: share per version, summing to 1.
type Weights = Arc<BTreeMap<String, f64>>;

/// The optimiser: serving's hooks, the feedback endpoint's state, and the decision loop.
pub struct Optimizer {
    args: OptimizerArgs,
    bus: Arc<dyn EventBus>,
    weights: RwLock<HashMap<String, Weights>>,
    recent: Mutex<RecentRequests>,
    decisions: Mutex<VecDeque<DecisionEvent>>,
    frozen: AtomicBool,
    /// The bandit's posterior per model, as of the last decision loop pass (for the API).
    arms: RwLock<HashMap<String, BTreeMap<String, ArmState>>>,
}

impl Optimizer {
    pub fn new(args: OptimizerArgs, bus: Arc<dyn EventBus>) -> Arc<Self> {
        let recent = RecentRequests::new(
            args.feedback_capacity,
            args.feedback_memory_mb.saturating_mul(1 << 20),
            Duration::from_secs(args.feedback_window_secs),
        );
        Arc::new(Optimizer {
            frozen: AtomicBool::new(args.freeze_routing),
            args,
            bus,
            weights: RwLock::new(HashMap::new()),
            recent: Mutex::new(recent),
            decisions: Mutex::new(VecDeque::new()),
            arms: RwLock::new(HashMap::new()),
        })
    }

    /// The bus events go to.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// Whether traffic of `model` is split by the bandit.
    pub fn routes(&self, model: &str) -> bool {
        self.args
            .route_models
            .iter()
            .any(|m| m == "*" || m == model)
    }

    /// Freezes (or unfreezes) every model's traffic weights.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::Release);
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Decisions made so far (restored from the bus at start), oldest first.
    pub fn decisions(&self) -> Vec<DecisionEvent> {
        self.decisions.lock().iter().cloned().collect()
    }

    /// Traffic weights and posteriors per routed model.
    pub fn state(&self) -> serde_json::Value {
        let weights = self.weights.read();
        let arms = self.arms.read();
        let mut models = serde_json::Map::new();
        for (model, a) in arms.iter() {
            let w = weights
                .get(model)
                .map(|w| w.as_ref().clone())
                .unwrap_or_default();
            models.insert(model.clone(), serde_json::json!({"weights": w, "arms": a}));
        }
        for (model, w) in weights.iter() {
            models
                .entry(model.clone())
                .or_insert_with(|| serde_json::json!({"weights": w.as_ref(), "arms": {}}));
        }
        serde_json::json!({"frozen": self.is_frozen(), "models": models})
    }

    /// The weights the router uses now for `model` (empty when not routed).
    fn weights_of(&self, model: &str) -> BTreeMap<String, f64> {
        self.weights
            .read()
            .get(model)
            .map_or_else(BTreeMap::new, |w| w.as_ref().clone())
    }

    /// Routes `model` by `weights`; empty weights stop routing it.
    fn set_weights(&self, model: &str, weights: BTreeMap<String, f64>) {
        for (version, share) in &weights {
            metrics::gauge!("nexus_traffic_weight", "model" => model.to_string(), "version" => version.clone())
                .set(*share);
        }
        let mut all = self.weights.write();
        match weights.is_empty() {
            true => all.remove(model),
            false => all.insert(model.to_string(), Arc::new(weights)),
        };
    }

    fn remember(&self, decision: DecisionEvent) {
        metrics::counter!("nexus_optimizer_decisions_total", "kind" => kind_label(&decision))
            .increment(1);
        let mut kept = self.decisions.lock();
        if kept.len() == DECISIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back(decision);
    }
}

fn kind_label(decision: &DecisionEvent) -> &'static str {
    match decision.kind {
        nexus_events::schema::DecisionKind::Traffic => "traffic",
        nexus_events::schema::DecisionKind::Batching => "batching",
        nexus_events::schema::DecisionKind::Promotion => "promotion",
    }
}

impl InferenceHooks for Optimizer {
    fn started(self: Arc<Self>, serving: ServingHandle) {
        service::spawn(self, serving);
    }

    fn route(&self, model: &str) -> Option<u64> {
        let weights = Arc::clone(self.weights.read().get(model)?);
        bandit::pick(&weights, rand::rng().random::<f64>())?
            .parse()
            .ok()
    }

    fn sample(&self) -> bool {
        let rate = self.args.log_sample_rate;
        rate >= 1.0 || (rate > 0.0 && rand::rng().random::<f64>() < rate)
    }

    fn record(&self, record: InferenceRecord<'_>) {
        let (status, error, response) = match record.result {
            Ok(response) => ("ok", None, Some(response)),
            Err(e) => ("error", Some(e.to_string()), None),
        };
        if let Some(response) = response {
            let prediction = recent::prediction(&response.outputs);
            self.recent
                .lock()
                .insert(record.id, record.model, record.version, prediction);
        }
        let event = InferenceEvent {
            schema: INFERENCE_SCHEMA.to_string(),
            id: record.id.to_string(),
            model: record.model.to_string(),
            version: record.version.to_string(),
            routed: record.routed,
            protocol: record.protocol.as_str().to_string(),
            status: status.to_string(),
            error,
            timestamp_ms: now_ms(),
            latency_us: micros(record.latency),
            queue_us: response.map_or(0, |r| micros(r.queue)),
            batch_size: response.map_or(0, |r| r.batch_size),
            trace_id: record.trace_id.map(str::to_string),
            inputs: record.inputs.as_deref().map(samples),
            outputs: record
                .inputs
                .as_ref()
                .and(response)
                .map(|r| samples(&r.outputs)),
        };
        nexus_events::publish_json_traced(
            self.bus.as_ref(),
            Topic::Inference,
            record.model,
            &event,
            record.traceparent,
        );
    }
}

/// A tensor as events carry it, borrowed from the request or response: serialized
/// straight from the tensor's data, never copied.
#[derive(serde::Serialize)]
struct Sample<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    data: &'a TensorData,
}

fn samples(tensors: &[Tensor]) -> Vec<Sample<'_>> {
    tensors
        .iter()
        .map(|t| Sample {
            name: &t.name,
            datatype: t.datatype().as_str(),
            shape: &t.shape,
            data: &t.data,
        })
        .collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
