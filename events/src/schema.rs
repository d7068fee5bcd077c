//! The versioned JSON schemas of Nexus's events (documented in docs/events-and-optimiser.md). Every event
//! carries `schema` so consumers can tell versions apart; fields are only ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `schema` of inference events.
pub const INFERENCE_SCHEMA: &str = "nexus.inference/v1";
/// `schema` of feedback events.
pub const FEEDBACK_SCHEMA: &str = "nexus.feedback/v1";
/// `schema` of decision events.
pub const DECISION_SCHEMA: &str = "nexus.decision/v1";

/// One tensor of a sampled request or response, in KServe V2 JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSample {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: serde_json::Value,
}

/// One inference request served (or refused) by a model version. `S` is how tensors are
/// held: [`TensorSample`] when read back, a borrowing type when a producer writes one
/// without copying the request's tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: Deserialize<'de>"))]
pub struct InferenceEvent<S = TensorSample> {
    pub schema: String,
    /// The request id: the client's, or the one the server issued (returned as `id`).
    pub id: String,
    pub model: String,
    pub version: String,
    /// True when the router chose the version (the client did not pin one).
    pub routed: bool,
    /// "http" or "grpc".
    pub protocol: String,
    /// "ok" or "error".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix time in milliseconds when the request finished.
    pub timestamp_ms: u64,
    /// Time from arrival to reply, in microseconds.
    pub latency_us: u64,
    /// Time spent queued before an instance ran it, in microseconds.
    pub queue_us: u64,
    /// Rows of the execution the request ran in (its own rows when not batched).
    pub batch_size: u64,
    /// W3C trace id of the request, when it came with a `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Inputs and outputs, for the fraction of requests `--log-sample-rate` selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<S>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<S>>,
}

/// Feedback on one earlier request: a reward, or the true label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackEvent {
    pub schema: String,
    /// The request the feedback is about.
    pub id: String,
    pub model: String,
    /// The version that answered the request.
    pub version: String,
    /// The reward used by the optimiser: the one given, or 1/0 for a label that matches
    /// (or not) the prediction.
    pub reward: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<serde_json::Value>,
    /// Unix time in milliseconds when the feedback arrived.
    pub timestamp_ms: u64,
}

/// What kind of change a decision made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// New traffic weights between a model's versions.
    Traffic,
    /// New batching settings for a model version.
    Batching,
    /// A registry alias moved to a better version.
    Promotion,
}

/// Posterior of one version's reward, as the bandit holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmState {
    /// Rewards observed.
    pub count: u64,
    /// Sum of rewards.
    pub sum: f64,
    /// Sum of squared rewards.
    pub sum_sq: f64,
}

/// One change the optimiser made, why, and the state it was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionEvent {
    pub schema: String,
    /// Unique id of the decision.
    pub id: String,
    pub kind: DecisionKind,
    pub model: String,
    pub timestamp_ms: u64,
    /// Human-readable reason.
    pub reason: String,
    /// Traffic share per version (traffic decisions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
    /// Batching settings and what was observed (batching decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingChange>,
    /// Alias move (promotion decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionChange>,
    /// The bandit's posterior per version after this decision, so a restarted optimiser
    /// resumes from it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arms: BTreeMap<String, ArmState>,
    /// Feedback offsets (partition → next offset) applied into `arms`: a restarted
    /// optimiser skips feedback below them instead of counting it twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feedback_offsets: BTreeMap<i32, i64>,
}

/// A batching change of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchingChange {
    pub version: String,
    pub max_queue_delay_us: u64,
    pub preferred_batch_size: u64,
    /// p99 latency observed over the last interval, in milliseconds.
    pub observed_p99_ms: f64,
    /// Requests per second observed over the last interval.
    pub observed_throughput: f64,
    pub slo_ms: f64,
}

/// A registry alias moved from one version to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionChange {
    pub registered_model: String,
    pub alias: String,
    pub from_version: String,
    pub to_version: String,
    /// Posterior probability that `to_version` is better than `from_version`.
    pub probability: f64,
    /// Rewards observed for each of the two versions.
    pub samples: BTreeMap<String, u64>,
}
