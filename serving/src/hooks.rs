//! What the optimiser's hooks see of each inference: the protocol it came on, its record,
//! its request id and trace id.
//!
//! The hooks themselves (`InferenceHooks`) and the handle they get (`ServingHandle`) are in
//! `manager.rs`: the manager holds the hooks and hands itself to them, so the three are
//! declared together, and this module, which the manager uses, stays below it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_models::Tensor;

use crate::error::ServingError;
use crate::infer::InferResponse;

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
    /// True when the hooks' `route` chose the version.
    pub routed: bool,
    pub protocol: Protocol,
    pub result: Result<&'a InferResponse, &'a ServingError>,
    /// From arrival at the model to the reply.
    pub latency: Duration,
    pub trace_id: Option<&'a str>,
    /// The `traceparent` to hand on with the event: this inference's span when traces are
    /// exported, else the caller's.
    pub traceparent: Option<&'a str>,
    /// The request's inputs, when the hooks' `sample` asked for them.
    pub inputs: Option<Vec<Tensor>>,
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
