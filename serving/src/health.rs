//! Liveness, readiness and discovery for the whole process: `/health/live`,
//! `/health/ready` and `GET /api/v1/services`.
//!
//! Serving knows the addresses it listens on and whether its models are loaded; the other
//! components (registry, pipelines, events, optimiser) hand it a [`Component`] with a check,
//! so one endpoint answers for everything the process runs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::manager::ModelManager;
use crate::metadata::SERVER_VERSION;
use crate::remote::BoxFuture;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a dependency answers now.
pub trait HealthCheck: Send + Sync {
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// A check from a closure that starts one attempt (the usual way components give theirs).
pub fn check_fn<F>(attempt: F) -> Arc<dyn HealthCheck>
where
    F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
{
    struct FnCheck<F>(F);
    impl<F> HealthCheck for FnCheck<F>
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync,
    {
        fn check(&self) -> BoxFuture<'_, Result<(), String>> {
            (self.0)()
        }
    }
    Arc::new(FnCheck(attempt))
}

/// One part of the process, as `/api/v1/services` lists it.
#[derive(Clone)]
pub struct Component {
    pub name: String,
    /// Where it is reached (a URL, or what it connects to, e.g. Kafka brokers).
    pub address: String,
    /// Named checks that must pass for the component (and the process) to be ready.
    pub checks: Vec<(String, Arc<dyn HealthCheck>)>,
    /// Settings a client may adapt to, listed beside the address (serving's
    /// `model_control_mode`: the web console offers load/unload only when it is `explicit` or `on-demand`).
    pub settings: serde_json::Map<String, Value>,
}

impl Component {
    pub fn new(name: &str, address: impl Into<String>) -> Self {
        Component {
            name: name.to_string(),
            address: address.into(),
            checks: Vec::new(),
            settings: serde_json::Map::new(),
        }
    }

    /// Lists `key: value` among the component's settings.
    pub fn setting(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.settings.insert(key.to_string(), value.into());
        self
    }

    /// Adds a check named `what` (e.g. "database").
    pub fn check(mut self, what: &str, check: Arc<dyn HealthCheck>) -> Self {
        self.checks.push((what.to_string(), check));
        self
    }
}

/// The models are ready once the start-up loads finished, as `/v2/health/ready`.
struct ModelsLoaded(Arc<ModelManager>);

impl HealthCheck for ModelsLoaded {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.0.is_started() {
                true => Ok(()),
                false => Err("models are still loading".into()),
            }
        })
    }
}

struct Health {
    components: Vec<Component>,
}

/// The routes, with serving itself as the first component.
pub(crate) fn router(
    manager: Arc<ModelManager>,
    serving_address: String,
    others: Vec<Component>,
) -> Router {
    let mode = manager.control_mode().to_possible_value();
    let serving = Component::new("serving", serving_address)
        .setting(
            "model_control_mode",
            mode.as_ref().map_or("", |m| m.get_name()),
        )
        .check("models", Arc::new(ModelsLoaded(manager)));
    let mut components = vec![serving];
    components.extend(others);
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/api/v1/services", get(services))
        .with_state(Arc::new(Health { components }))
}

async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// Runs every check of `component` concurrently; returns its JSON entry and whether it is up.
async fn examine(component: &Component) -> (Value, bool) {
    let results =
        futures::future::join_all(component.checks.iter().map(|(what, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
            };
            (what.clone(), outcome)
        }))
        .await;
    let up = results.iter().all(|(_, r)| r.is_ok());
    let checks: serde_json::Map<String, Value> = results
        .into_iter()
        .map(|(what, outcome)| {
            let value = match outcome {
                Ok(()) => json!({"status": "ok"}),
                Err(error) => json!({"status": "error", "error": error}),
            };
            (what, value)
        })
        .collect();
    let entry = json!({
        "name": component.name,
        "status": if up { "up" } else { "down" },
        "version": SERVER_VERSION,
        "address": component.address,
        "settings": component.settings,
        "checks": checks,
    });
    (entry, up)
}

async fn examine_all(health: &Health) -> (Vec<Value>, bool) {
    let results = futures::future::join_all(health.components.iter().map(examine)).await;
    let ready = results.iter().all(|(_, up)| *up);
    (results.into_iter().map(|(v, _)| v).collect(), ready)
}

/// 200 when every check of every component passes, else 503; the body says which failed.
async fn ready(State(health): State<Arc<Health>>) -> Response {
    let (components, ready) = examine_all(&health).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "components": components,
    });
    (status, Json(body)).into_response()
}

async fn services(State(health): State<Arc<Health>>) -> Json<Value> {
    let (components, _) = examine_all(&health).await;
    Json(json!({ "services": components }))
}
