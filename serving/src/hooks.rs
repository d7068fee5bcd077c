//! The seam where the optimiser plugs into serving: it picks the version of requests that
//! do not pin one, and hears about every inference. Serving calls these on the request
//! path, so an implementation must answer at once and never wait on I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_models::Tensor;

use crate::error::ServingError;
use crate::infer::InferResponse;
use crate::manager::ModelManager;
use crate::remote::{ModelSource, RemoteSpec};

/// The protocol a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// One finished inference, as hooks see it.
pub struct InferenceRecord<'a> {
    /// The request id: the client's, or the one the server issued.
    pub id: &'a str,
    pub model: &'a str,
    /// The version that ran it; empty when the request failed before one was chosen.
    pub version: &'a str,
    /// True when [`InferenceHooks::route`] chose the version.
    pub routed: bool,
    pub protocol: Protocol,
    pub result: Result<&'a InferResponse, &'a ServingError>,
    /// From arrival at the model to the reply.
    pub latency: Duration,
    pub trace_id: Option<&'a str>,
    /// The `traceparent` to hand on with the event: this inference's span when traces are
    /// exported, else the caller's.
    pub traceparent: Option<&'a str>,
    /// The request's inputs, when [`InferenceHooks::sample`] asked for them.
    pub inputs: Option<Vec<Tensor>>,
}

/// What serving offers to hooks once it runs.
#[derive(Clone)]
pub struct ServingHandle {
    pub manager: Arc<ModelManager>,
    /// The registry `--model` references resolve against, if any.
    pub source: Option<Arc<dyn ModelSource>>,
    /// The registry models being served, and the names they are served as.
    pub remote: Vec<RemoteSpec>,
}

/// Traffic routing and inference records.
pub trait InferenceHooks: Send + Sync {
    /// Called once when serving starts, with what the hooks may control.
    fn started(self: Arc<Self>, serving: ServingHandle);
    /// The version an unpinned request of `model` goes to; `None` (or a version that is
    /// not ready) keeps Triton's default, the newest.
    fn route(&self, model: &str) -> Option<u64>;
    /// Whether this request's inputs and outputs should be kept in its record.
    fn sample(&self) -> bool;
    /// Called once per request after it finished or failed.
    fn record(&self, record: InferenceRecord<'_>);
}

/// The trace id of a W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(trace, 32) && hex(parent, 16) && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}

/// Issues request ids unique across restarts: a per-process prefix and a counter.
pub(crate) struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        RequestIds {
            prefix: format!("{:x}{:x}", nanos, std::process::id()),
            next: AtomicU64::new(1),
        }
    }

    pub(crate) fn issue(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        assert_eq!(
            trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-abc-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_ids_are_unique() {
        let ids = RequestIds::new();
        assert_ne!(ids.issue(), ids.issue());
    }
}
