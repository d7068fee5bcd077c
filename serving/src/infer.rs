//! One inference request and its response, independent of the protocol it arrived on:
//! what the front ends decode into, what a model version runs, and what hooks record.

use nexus_models::Tensor;

/// A decoded inference request.
#[derive(Debug, Default)]
pub struct InferRequest {
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Output names to return; empty means all of the model's outputs.
    pub outputs: Vec<String>,
    /// The request's W3C `traceparent`, when it had a valid one.
    pub traceparent: Option<String>,
}

/// The outputs of an inference, in the order requested (or the config's order).
#[derive(Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
    /// Time the request waited for an instance (not sent to clients).
    pub queue: std::time::Duration,
    /// Rows of the execution it ran in (not sent to clients).
    pub batch_size: u64,
}
