//! HTTP routes of the optimiser: the V2 feedback extension and `/api/v1/optimizer`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use nexus_events::Topic;
use nexus_events::schema::{FEEDBACK_SCHEMA, FeedbackEvent};
use nexus_serving::ServingError;

use crate::recent::{RecentRequests, matches};
use crate::{Optimizer, now_ms};

/// Routes mounted on the main HTTP port.
pub fn router(optimizer: Arc<Optimizer>) -> Router {
    Router::new()
        .route("/v2/models/{model}/feedback", post(feedback))
        .route("/api/v1/optimizer/decisions", get(decisions))
        .route("/api/v1/optimizer/state", get(state))
        .route("/api/v1/optimizer/freeze", post(freeze))
        .with_state(optimizer)
}

/// One feedback item: the request it is about and a reward or the true label.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    id: String,
    #[serde(default)]
    reward: Option<f64>,
    #[serde(default)]
    label: Option<Value>,
}

/// Most items one feedback request may carry.
pub const MAX_FEEDBACK_ITEMS: usize = 10_000;

/// Why feedback was refused.
enum Refusal {
    /// Checked like any request: unknown id, wrong model, bad reward, bus down.
    Serving(ServingError),
    /// The request already has its reward (HTTP 409): one reward per request id, so a
    /// client cannot outvote others by repeating one.
    Replayed(String),
}

impl From<ServingError> for Refusal {
    fn from(e: ServingError) -> Self {
        Refusal::Serving(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Serving(e) => e.into_response(),
            Refusal::Replayed(message) => {
                (StatusCode::CONFLICT, Json(json!({ "error": message }))).into_response()
            }
        }
    }
}

/// `POST /v2/models/{m}/feedback` with one item or a list. Every item is checked before
/// any is published, so a bad item rejects the whole request and nothing is half-applied;
/// each request id takes one reward (a second one, in this list or a later one, is 409).
async fn feedback(
    State(optimizer): State<Arc<Optimizer>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    let invalid = |m: String| ServingError::InvalidArgument(m);
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("feedback body is not JSON: {e}")))?;
    let items: Vec<Value> = match value {
        Value::Array(items) => items,
        item => vec![item],
    };
    if items.is_empty() {
        return Err(invalid("feedback list is empty".into()).into());
    }
    if items.len() > MAX_FEEDBACK_ITEMS {
        return Err(invalid(format!(
            "feedback list has {} items; at most {MAX_FEEDBACK_ITEMS} per request",
            items.len()
        ))
        .into());
    }
    let events = {
        // Checked and marked under one lock, so two concurrent posts of one id cannot
        // both pass.
        let mut recent = optimizer.recent.lock();
        let mut events = Vec::with_capacity(items.len());
        let mut ids = HashSet::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let item: Feedback = serde_json::from_value(item).map_err(|e| {
                invalid(format!(
                    "feedback item {i}: {e}; expected {{\"id\": \"<request id>\", \"reward\": <number>}} or {{\"id\", \"label\"}}"
                ))
            })?;
            if !ids.insert(item.id.clone()) {
                return Err(Refusal::Replayed(format!(
                    "feedback item {i}: request '{}' appears twice in this list; each request takes one reward",
                    item.id
                )));
            }
            events.push(optimizer.feedback_event(&recent, &model, i, item)?);
        }
        for event in &events {
            recent.set_rewarded(&event.id, true);
        }
        events
    };
    for (stored, event) in events.iter().enumerate() {
        if let Err(e) = optimizer.publish_feedback(event).await {
            // What was not stored may be sent again.
            let mut recent = optimizer.recent.lock();
            for lost in &events[stored..] {
                recent.set_rewarded(&lost.id, false);
            }
            return Err(e.into());
        }
    }
    Ok(Json(json!({ "accepted": events.len() })))
}

impl Optimizer {
    /// Checks one feedback item against the requests this server answered.
    fn feedback_event(
        &self,
        recent: &RecentRequests,
        model: &str,
        index: usize,
        item: Feedback,
    ) -> Result<FeedbackEvent, Refusal> {
        let answered = recent.get(&item.id).ok_or_else(|| {
            ServingError::NotFound(format!(
                "feedback item {index}: request id '{}' was not answered by this server in the last {} s \
                 (or was forgotten: the server remembers its latest {} requests in at most {} MiB)",
                item.id,
                self.args.feedback_window_secs,
                self.args.feedback_capacity,
                self.args.feedback_memory_mb
            ))
        })?;
        if *answered.model != *model {
            return Err(ServingError::InvalidArgument(format!(
                "feedback item {index}: request '{}' was answered by model '{}', not '{model}'",
                item.id, answered.model
            ))
            .into());
        }
        if answered.rewarded {
            return Err(Refusal::Replayed(format!(
                "feedback item {index}: request '{}' already has feedback; each request takes one reward",
                item.id
            )));
        }
        let reward = match (item.reward, &item.label) {
            (Some(r), _) if r.is_finite() => r,
            (Some(_), _) => {
                return Err(ServingError::InvalidArgument(format!(
                    "feedback item {index}: reward must be a finite number"
                ))
                .into());
            }
            (None, Some(label)) => {
                let predicted = answered.prediction.as_ref().ok_or_else(|| {
                    ServingError::InvalidArgument(format!(
                        "feedback item {index}: the answer to '{}' has no single predicted class to compare a label with; send a reward",
                        item.id
                    ))
                })?;
                if matches(label, predicted) { 1.0 } else { 0.0 }
            }
            (None, None) => {
                return Err(ServingError::InvalidArgument(format!(
                    "feedback item {index}: give a reward or a label"
                ))
                .into());
            }
        };
        Ok(FeedbackEvent {
            schema: FEEDBACK_SCHEMA.to_string(),
            id: item.id,
            model: model.to_string(),
            version: answered.version.to_string(),
            reward,
            label: item.label,
            timestamp_ms: now_ms(),
        })
    }

    /// Stores one feedback event on the bus and counts it.
    async fn publish_feedback(&self, event: &FeedbackEvent) -> Result<(), ServingError> {
        let payload = serde_json::to_vec(event)
            .map_err(|e| ServingError::Internal(format!("feedback not serializable: {e}")))?;
        self.bus()
            .publish_confirmed(Topic::Feedback, &event.model, payload)
            .await
            .map_err(|e| ServingError::Unavailable(format!("feedback not stored: {e}")))?;
        metrics::counter!("nexus_feedback_total", "model" => event.model.clone(), "version" => event.version.clone())
            .increment(1);
        Ok(())
    }
}

#[derive(Deserialize)]
struct DecisionFilter {
    model: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/optimizer/decisions[?model=&kind=&limit=]`, newest last.
async fn decisions(
    State(optimizer): State<Arc<Optimizer>>,
    Query(filter): Query<DecisionFilter>,
) -> Json<Value> {
    let mut list: Vec<_> = optimizer
        .decisions()
        .into_iter()
        .filter(|d| filter.model.as_ref().is_none_or(|m| &d.model == m))
        .filter(|d| {
            filter
                .kind
                .as_ref()
                .is_none_or(|k| crate::kind_label(d) == k)
        })
        .collect();
    if let Some(limit) = filter.limit {
        let skip = list.len().saturating_sub(limit);
        list.drain(..skip);
    }
    Json(json!({ "decisions": list }))
}

async fn state(State(optimizer): State<Arc<Optimizer>>) -> Json<Value> {
    Json(optimizer.state())
}

#[derive(Deserialize)]
struct Freeze {
    frozen: bool,
}

/// `POST /api/v1/optimizer/freeze {"frozen": true|false}`: stops (or resumes) weight changes.
async fn freeze(State(optimizer): State<Arc<Optimizer>>, Json(body): Json<Freeze>) -> Json<Value> {
    optimizer.set_frozen(body.frozen);
    tracing::info!(frozen = body.frozen, "traffic weights frozen switch");
    Json(optimizer.state())
}
