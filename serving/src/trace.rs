//! How requests are traced and logged by the HTTP and gRPC stacks: the span of each
//! request, and the level at which a failed HTTP response is logged.
//!
//! tower-http logs every 5xx at ERROR. A readiness probe's 503 while models load (or while
//! another component is down) is the answer the prober asked for, not a fault: logged at
//! ERROR, every orchestrator poll would fill the log with false alarms and bury real
//! faults. So the HTTP trace layer marks the failures of health and readiness routes and
//! logs them at DEBUG; every other 5xx stays at ERROR with its classification.

use std::time::Duration;

use axum::http::{Method, Request};
use nexus_gateway::policy::{RouteClass, classify_http};
use tower_http::classify::{
    ClassifyResponse, MakeClassifier, MapFailureClass, NeverClassifyEos, ServerErrorsAsFailures,
    ServerErrorsFailureClass,
};
use tower_http::trace::{DefaultOnFailure, OnFailure};
use tracing::{Level, Span};

/// The span of one HTTP or gRPC request, carrying its `x-request-id` (the client's, or
/// one issued here and returned in the response) so every log line of it can be found.
pub(crate) fn request_span<B>(request: &Request<B>) -> Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri(),
        request_id = %id,
    );
    nexus_telemetry::set_parent(&span, request.headers());
    span
}

/// Whether a request is a liveness or readiness probe: the server's and every component's
/// (`/v2/health/*`, `/health/*`, as the gateway's [`RouteClass::Health`]) and a model's or
/// version's readiness (`/v2/models/{m}/ready`, `/v2/models/{m}/versions/{v}/ready`).
pub(crate) fn is_probe(method: &Method, path: &str) -> bool {
    if classify_http(method, path) == RouteClass::Health {
        return true;
    }
    let read = *method == Method::GET || *method == Method::HEAD;
    let Some(rest) = path.strip_prefix("/v2/models/") else {
        return false;
    };
    // Every inference request passes here: match the segments without collecting them.
    let mut segments = rest.split('/').skip(1);
    let shape = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    );
    read && matches!(
        shape,
        (Some("ready"), None, None, None) | (Some("versions"), Some(_), Some("ready"), None)
    )
}

/// A failed HTTP response (a 5xx, or an error from the service), and whether it answered a
/// probe.
#[derive(Debug)]
pub(crate) struct HttpFailure {
    class: ServerErrorsFailureClass,
    probe: bool,
}

impl HttpFailure {
    fn probe(class: ServerErrorsFailureClass) -> Self {
        HttpFailure { class, probe: true }
    }

    fn fault(class: ServerErrorsFailureClass) -> Self {
        HttpFailure {
            class,
            probe: false,
        }
    }

    /// The level this failure is logged at.
    fn level(&self) -> Level {
        match self.probe {
            true => Level::DEBUG,
            false => Level::ERROR,
        }
    }
}

/// Marks a failure as a probe's or a fault.
type Mark = fn(ServerErrorsFailureClass) -> HttpFailure;

/// Classifies HTTP responses as tower-http's default does (a 5xx is a failure), marking
/// those of probes from the request's method and path.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClassifyHttp;

impl MakeClassifier for ClassifyHttp {
    type Classifier = MapFailureClass<ServerErrorsAsFailures, Mark>;
    type FailureClass = HttpFailure;
    type ClassifyEos = MapFailureClass<NeverClassifyEos<ServerErrorsFailureClass>, Mark>;

    fn make_classifier<B>(&self, request: &Request<B>) -> Self::Classifier {
        let mark: Mark = match is_probe(request.method(), request.uri().path()) {
            true => HttpFailure::probe,
            false => HttpFailure::fault,
        };
        ServerErrorsAsFailures::new().map_failure_class(mark)
    }
}

/// Logs a failed HTTP response as tower-http's default does ("response failed" with its
/// classification and latency), at the level of [`HttpFailure::level`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogFailure;

impl OnFailure<HttpFailure> for LogFailure {
    fn on_failure(&mut self, failure: HttpFailure, latency: Duration, span: &Span) {
        DefaultOnFailure::new()
            .level(failure.level())
            .on_failure(failure.class, latency, span);
    }
}

/// Records the events logged on the current thread, for tests of what gets logged.
#[cfg(test)]
pub(crate) mod capture {
    use std::fmt::{Debug, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use parking_lot::Mutex;
    use tracing::field::Field;
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::DefaultGuard;
    use tracing::{Event, Level, Metadata, Subscriber};

    /// The events recorded so far: level, and every field as `name=value`.
    #[derive(Clone, Default)]
    pub(crate) struct Events(Arc<Mutex<Vec<(Level, String)>>>);

    impl Events {
        /// Takes the events recorded since the last call.
        pub(crate) fn take(&self) -> Vec<(Level, String)> {
            std::mem::take(&mut *self.0.lock())
        }
    }

    struct Recorder {
        events: Events,
        next_span: AtomicU64,
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
        }

        fn record(&self, _: &Id, _: &Record<'_>) {}

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &Event<'_>) {
            let mut text = String::new();
            event.record(&mut |field: &Field, value: &dyn Debug| {
                let _ = write!(text, "{}={value:?} ", field.name());
            });
            self.events.0.lock().push((*event.metadata().level(), text));
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }

    /// Records every event of this thread until the guard is dropped.
    pub(crate) fn install() -> (Events, DefaultGuard) {
        let events = Events::default();
        let recorder = Recorder {
            events: events.clone(),
            next_span: AtomicU64::new(1),
        };
        (events, tracing::subscriber::set_default(recorder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_readiness_routes_are_probes() {
        for path in [
            "/v2/health/live",
            "/v2/health/ready",
            "/health",
            "/health/live",
            "/health/ready",
            "/v2/models/simple/ready",
            "/v2/models/simple/versions/1/ready",
        ] {
            assert!(is_probe(&Method::GET, path), "{path}");
            assert!(!is_probe(&Method::POST, path), "POST {path}");
        }
        for path in [
            "/v2",
            "/v2/models/ready",
            "/v2/models/simple/infer",
            "/v2/models/simple/versions/1/infer",
            "/v2/models/simple/ready/infer",
            "/v2/repository/index",
            "/api/v1/services",
            "/metrics",
        ] {
            assert!(!is_probe(&Method::GET, path), "{path}");
        }
    }

    #[test]
    fn probe_failures_log_at_debug_and_faults_at_error() {
        let classify = |path: &str| {
            let request = Request::get(path).body(()).unwrap();
            let response = axum::http::Response::builder()
                .status(503)
                .body(())
                .unwrap();
            match ClassifyHttp
                .make_classifier(&request)
                .classify_response(&response)
            {
                tower_http::classify::ClassifiedResponse::Ready(Err(failure)) => failure,
                _ => panic!("a 503 is a failure"),
            }
        };
        assert_eq!(classify("/v2/health/ready").level(), Level::DEBUG);
        assert_eq!(classify("/v2/models/simple/ready").level(), Level::DEBUG);
        assert_eq!(classify("/v2/models/simple/infer").level(), Level::ERROR);
    }
}
