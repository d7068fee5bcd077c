//! MLflow's REST API (`/api/2.0/mlflow/…`, `/api/2.0/mlflow-artifacts/…`) over axum.
//!
//! MLflow clients send GET parameters in the query string (repeated keys for lists) and
//! everything else as a JSON body; each handler reads one merged [`Input`], so either form
//! works for every endpoint, as MLflow's own server allows.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::Registry;
use crate::error::RegistryError;
use crate::store::ViewType;
use crate::store::models::{NewLoggedModel, NewVersion};
use crate::types::{KeyValue, Metric, Page};

type Result<T> = std::result::Result<T, RegistryError>;
type AppState = State<Arc<Registry>>;
type Reply = Result<axum::Json<Value>>;

/// Largest JSON request body accepted (artifact uploads stream and have no such limit).
const MAX_JSON_BODY: usize = 64 << 20;

/// The request's parameters: query string and JSON body merged into one object.
pub struct Input(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Input {
    type Rejection = RegistryError;

    async fn from_request(request: Request, _: &S) -> Result<Self> {
        let mut params = Map::new();
        if let Some(query) = request.uri().query() {
            for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                let value = Value::String(value.into_owned());
                match params.get_mut(key.as_ref()) {
                    Some(Value::Array(list)) => list.push(value),
                    Some(existing) => *existing = Value::Array(vec![existing.take(), value]),
                    None => {
                        params.insert(key.into_owned(), value);
                    }
                }
            }
        }
        let bytes = axum::body::to_bytes(request.into_body(), MAX_JSON_BODY)
            .await
            .map_err(|e| RegistryError::Invalid(format!("cannot read the request body: {e}")))?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            let body: Value = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Invalid(format!("Malformed request body: {e}")))?;
            let Value::Object(body) = body else {
                return Err(RegistryError::Invalid(
                    "The request body must be a JSON object".into(),
                ));
            };
            params.extend(body);
        }
        Ok(Input(params))
    }
}

impl Input {
    fn opt_str(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => items.first().and_then(|v| v.as_str()).map(str::to_string),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    fn str(&self, key: &str) -> Result<String> {
        self.opt_str(key).filter(|s| !s.is_empty()).ok_or_else(|| {
            RegistryError::Invalid(format!("Missing value for required parameter '{key}'."))
        })
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| {
                    RegistryError::Invalid(format!("Invalid value {n} for parameter '{key}'"))
                }),
            Some(_) => match self.opt_str(key) {
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|_| {
                    RegistryError::Invalid(format!(
                        "Invalid value '{s}' for parameter '{key}' supplied."
                    ))
                }),
                None => Ok(None),
            },
        }
    }

    fn opt_bool(&self, key: &str) -> bool {
        match self.0.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    fn strings(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Number(n)) => vec![n.to_string()],
            _ => Vec::new(),
        }
    }

    fn list<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Vec<T>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                RegistryError::Invalid(format!("Invalid value for parameter '{key}': {e}"))
            }),
        }
    }

    fn raw(&self, key: &str) -> Vec<Value> {
        match self.0.get(key) {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        }
    }
}

fn ok(value: Value) -> Reply {
    Ok(axum::Json(value))
}

fn empty() -> Reply {
    ok(json!({}))
}

fn page<T: serde::Serialize>(key: &str, page: Page<T>) -> Reply {
    let mut body = json!({ key: page.items });
    if let Some(token) = page.next_page_token {
        body["next_page_token"] = Value::String(token);
    }
    ok(body)
}

fn value<T: serde::Serialize>(key: &str, item: T) -> Reply {
    ok(json!({ key: item }))
}

/// Reads `GET` or `POST` (MLflow clients use either for reads).
fn read<H, T>(handler: H) -> MethodRouter<Arc<Registry>>
where
    H: axum::handler::Handler<T, Arc<Registry>> + Clone,
    T: 'static,
{
    get(handler.clone()).post(handler)
}

/// The MLflow routes.
pub fn router(state: Arc<Registry>) -> Router {
    let mlflow = Router::new()
        .route("/experiments/create", post(create_experiment))
        .route("/experiments/get", read(get_experiment))
        .route("/experiments/get-by-name", read(get_experiment_by_name))
        .route("/experiments/search", read(search_experiments))
        .route("/experiments/delete", post(delete_experiment))
        .route("/experiments/restore", post(restore_experiment))
        .route("/experiments/update", post(update_experiment))
        .route("/experiments/set-experiment-tag", post(set_experiment_tag))
        .route(
            "/experiments/delete-experiment-tag",
            post(delete_experiment_tag),
        )
        .route("/runs/create", post(create_run))
        .route("/runs/get", read(get_run))
        .route("/runs/update", post(update_run))
        .route("/runs/delete", post(delete_run))
        .route("/runs/restore", post(restore_run))
        .route("/runs/search", read(search_runs))
        .route("/runs/log-metric", post(log_metric))
        .route("/runs/log-parameter", post(log_param))
        .route("/runs/log-batch", post(log_batch))
        .route("/runs/set-tag", post(set_run_tag))
        .route("/runs/delete-tag", post(delete_run_tag))
        .route("/runs/log-inputs", post(log_inputs))
        .route("/runs/outputs", post(log_outputs))
        .route("/runs/log-model", post(log_model_history))
        .route("/metrics/get-history", read(metric_history))
        .route("/registered-models/create", post(create_model))
        .route("/registered-models/get", read(get_model))
        .route("/registered-models/rename", post(rename_model))
        .route("/registered-models/update", patch(update_model))
        .route("/registered-models/delete", delete(delete_model))
        .route("/registered-models/search", read(search_models))
        .route(
            "/registered-models/get-latest-versions",
            read(latest_versions),
        )
        .route("/registered-models/set-tag", post(set_model_tag))
        .route("/registered-models/delete-tag", delete(delete_model_tag))
        .route(
            "/registered-models/alias",
            post(set_alias).delete(delete_alias).get(get_alias),
        )
        .route("/model-versions/create", post(create_version))
        .route("/model-versions/get", read(get_version))
        .route("/model-versions/update", patch(update_version))
        .route("/model-versions/delete", delete(delete_version))
        .route("/model-versions/search", read(search_versions))
        .route("/model-versions/get-download-uri", read(download_uri))
        .route("/model-versions/transition-stage", post(transition_stage))
        .route("/model-versions/set-tag", post(set_version_tag))
        .route("/model-versions/delete-tag", delete(delete_version_tag))
        .route("/logged-models", post(create_logged_model))
        .route("/logged-models/search", post(search_logged_models))
        .route(
            "/logged-models/{model_id}",
            get(get_logged_model)
                .patch(finalize_logged_model)
                .delete(delete_logged_model),
        )
        .route(
            "/logged-models/{model_id}/tags",
            patch(set_logged_model_tags),
        )
        .route(
            "/logged-models/{model_id}/tags/{key}",
            delete(delete_logged_model_tag),
        )
        .fallback(not_found);
    let artifacts = Router::new()
        .route("/artifacts", get(list_artifacts))
        .route(
            "/artifacts/{*path}",
            put(upload_artifact)
                .get(download_artifact)
                .delete(delete_artifact),
        );
    let ready = axum::middleware::from_fn_with_state(Arc::clone(&state), database_ready);
    let mlflow = mlflow.route_layer(ready);
    Router::new()
        .nest("/api/2.0/mlflow", mlflow.clone())
        .nest("/ajax-api/2.0/mlflow", mlflow.clone())
        .nest(
            "/api/3.0/mlflow",
            mlflow.route("/server-info", get(server_info)),
        )
        .nest("/api/2.0/mlflow-artifacts", artifacts)
        .route("/health", get(health))
        .route("/version", get(|| async { env!("CARGO_PKG_VERSION") }))
        .layer(axum::middleware::from_fn(timed))
        .with_state(state)
}

/// Records `nexus_registry_request_duration_seconds{method,route,status}`; `route` is the
/// matched route pattern, so ids in paths do not multiply the series.
async fn timed(request: Request, next: axum::middleware::Next) -> Response {
    let start = std::time::Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics::histogram!(
        "nexus_registry_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(start.elapsed().as_secs_f64());
    response
}

/// Answers 503 with the cause while the database is down (or not yet migrated).
async fn database_ready(
    State(registry): AppState,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = registry.store.ready().await {
        return e.into_response();
    }
    let response = next.run(request).await;
    // A database lost mid-request shows as a pool timeout; say which database and why.
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && let Err(e) = registry.store.ping().await
    {
        return e.into_response();
    }
    response
}

async fn health(State(registry): AppState) -> Response {
    match registry.store.ping().await {
        Ok(()) => "OK".into_response(),
        Err(e) => e.into_response(),
    }
}

/// What the MLflow 3 client probes before proxied downloads: no multipart or presigned
/// transfers (artifacts stream through the plain endpoints).
async fn server_info() -> Reply {
    ok(json!({
        "store_type": "SqlStore",
        "multipart_uploads_enabled": false,
        "multipart_downloads_enabled": false,
        "presigned_upload_model_id_supported": false,
        "presigned_upload_run_id_supported": false,
        "trace_archival_enabled": false,
        "workspaces_enabled": false,
        "features_enabled": [],
    }))
}

// -------------------------------------------------------------------- experiments

async fn create_experiment(State(r): AppState, input: Input) -> Reply {
    let tags: Vec<KeyValue> = input.list("tags")?;
    let location = input.opt_str("artifact_location");
    let id = r
        .store
        .create_experiment(&input.str("name")?, location.as_deref(), &tags)
        .await?;
    ok(json!({ "experiment_id": id }))
}

async fn get_experiment(State(r): AppState, input: Input) -> Reply {
    value(
        "experiment",
        r.store.get_experiment(&input.str("experiment_id")?).await?,
    )
}

async fn get_experiment_by_name(State(r): AppState, input: Input) -> Reply {
    value(
        "experiment",
        r.store
            .get_experiment_by_name(&input.str("experiment_name")?)
            .await?,
    )
}

async fn search_experiments(State(r): AppState, input: Input) -> Reply {
    let view = ViewType::parse(input.opt_str("view_type").as_deref())?;
    let found = r
        .store
        .search_experiments(
            view,
            &input.opt_str("filter").unwrap_or_default(),
            &input.strings("order_by"),
            input.opt_i64("max_results")?,
            input.opt_str("page_token").as_deref(),
        )
        .await?;
    page("experiments", found)
}

async fn delete_experiment(State(r): AppState, input: Input) -> Reply {
    r.store
        .delete_experiment(&input.str("experiment_id")?)
        .await?;
    empty()
}

async fn restore_experiment(State(r): AppState, input: Input) -> Reply {
    r.store
        .restore_experiment(&input.str("experiment_id")?)
        .await?;
    empty()
}

async fn update_experiment(State(r): AppState, input: Input) -> Reply {
    r.store
        .rename_experiment(&input.str("experiment_id")?, &input.str("new_name")?)
        .await?;
    empty()
}

async fn set_experiment_tag(State(r): AppState, input: Input) -> Reply {
    let value = input.opt_str("value").unwrap_or_default();
    r.store
        .set_experiment_tag(&input.str("experiment_id")?, &input.str("key")?, &value)
        .await?;
    empty()
}

async fn delete_experiment_tag(State(r): AppState, input: Input) -> Reply {
    r.store
        .delete_experiment_tag(&input.str("experiment_id")?, &input.str("key")?)
        .await?;
    empty()
}

// -------------------------------------------------------------------- runs

async fn create_run(State(r): AppState, input: Input) -> Reply {
    let tags: Vec<KeyValue> = input.list("tags")?;
    let experiment = input.opt_str("experiment_id").unwrap_or_else(|| "0".into());
    let run = r
        .store
        .create_run(
            &experiment,
            &input.opt_str("user_id").unwrap_or_default(),
            input.opt_str("run_name").as_deref(),
            input.opt_i64("start_time")?,
            &tags,
        )
        .await?;
    value("run", run)
}

fn run_id(input: &Input) -> Result<String> {
    input.str("run_id").or_else(|_| input.str("run_uuid"))
}

async fn get_run(State(r): AppState, input: Input) -> Reply {
    value("run", r.store.get_run(&run_id(&input)?).await?)
}

async fn update_run(State(r): AppState, input: Input) -> Reply {
    let info = r
        .store
        .update_run(
            &run_id(&input)?,
            input.opt_str("status").as_deref(),
            input.opt_i64("end_time")?,
            input.opt_str("run_name").as_deref(),
        )
        .await?;
    value("run_info", info)
}

async fn delete_run(State(r): AppState, input: Input) -> Reply {
    r.store.delete_run(&run_id(&input)?).await?;
    empty()
}

async fn restore_run(State(r): AppState, input: Input) -> Reply {
    r.store.restore_run(&run_id(&input)?).await?;
    empty()
}

async fn search_runs(State(r): AppState, input: Input) -> Reply {
    let view = ViewType::parse(input.opt_str("run_view_type").as_deref())?;
    let found = r
        .store
        .search_runs(
            &input.strings("experiment_ids"),
            &input.opt_str("filter").unwrap_or_default(),
            view,
            input.opt_i64("max_results")?,
            &input.strings("order_by"),
            input.opt_str("page_token").as_deref(),
        )
        .await?;
    page("runs", found)
}

fn metric_from(input: &Input) -> Result<Metric> {
    let value = match input.0.get("value") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        RegistryError::Invalid("Missing value for required parameter 'value'.".into())
    })?;
    Ok(Metric {
        key: input.str("key")?,
        value,
        timestamp: input
            .opt_i64("timestamp")?
            .unwrap_or_else(crate::store::now_ms),
        step: input.opt_i64("step")?.unwrap_or(0),
        model_id: input.opt_str("model_id"),
    })
}

async fn log_metric(State(r): AppState, input: Input) -> Reply {
    r.store
        .log_batch(&run_id(&input)?, &[metric_from(&input)?], &[], &[])
        .await?;
    empty()
}

async fn log_param(State(r): AppState, input: Input) -> Reply {
    let param = KeyValue {
        key: input.str("key")?,
        value: input.opt_str("value").unwrap_or_default(),
    };
    r.store
        .log_batch(&run_id(&input)?, &[], &[param], &[])
        .await?;
    empty()
}

async fn log_batch(State(r): AppState, input: Input) -> Reply {
    let metrics: Vec<Metric> = input.list("metrics")?;
    let params: Vec<KeyValue> = input.list("params")?;
    let tags: Vec<KeyValue> = input.list("tags")?;
    r.store
        .log_batch(&run_id(&input)?, &metrics, &params, &tags)
        .await?;
    empty()
}

async fn set_run_tag(State(r): AppState, input: Input) -> Reply {
    let tag = KeyValue {
        key: input.str("key")?,
        value: input.opt_str("value").unwrap_or_default(),
    };
    r.store
        .log_batch(&run_id(&input)?, &[], &[], &[tag])
        .await?;
    empty()
}

async fn delete_run_tag(State(r): AppState, input: Input) -> Reply {
    r.store
        .delete_run_tag(&run_id(&input)?, &input.str("key")?)
        .await?;
    empty()
}

/// The identity of a logged input/output, so logging it again replaces it.
fn identity(entry: &Value, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| entry.pointer(k).map(Value::to_string).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

async fn log_inputs(State(r): AppState, input: Input) -> Reply {
    let mut entries = Vec::new();
    for d in input.raw("datasets") {
        entries.push((
            "dataset".to_string(),
            identity(&d, &["/dataset/name", "/dataset/digest"]),
            d,
        ));
    }
    for m in input.raw("models") {
        entries.push(("model".to_string(), identity(&m, &["/model_id"]), m));
    }
    r.store
        .log_run_io(&run_id(&input)?, "input", &entries)
        .await?;
    empty()
}

async fn log_outputs(State(r): AppState, input: Input) -> Reply {
    let entries: Vec<_> = input
        .raw("models")
        .into_iter()
        .map(|m| {
            (
                "model".to_string(),
                identity(&m, &["/model_id", "/step"]),
                m,
            )
        })
        .collect();
    r.store
        .log_run_io(&run_id(&input)?, "output", &entries)
        .await?;
    empty()
}

/// MLflow 2's `log-model`: appends the model's metadata to the run's
/// `mlflow.log-model.history` tag.
async fn log_model_history(State(r): AppState, input: Input) -> Reply {
    let id = run_id(&input)?;
    let model: Value = serde_json::from_str(&input.str("model_json")?)
        .map_err(|e| RegistryError::Invalid(format!("model_json is not JSON: {e}")))?;
    let run = r.store.get_run(&id).await?;
    let mut history: Vec<Value> = run
        .data
        .tags
        .iter()
        .find(|t| t.key == "mlflow.log-model.history")
        .and_then(|t| serde_json::from_str(&t.value).ok())
        .unwrap_or_default();
    history.push(model);
    let tag = KeyValue {
        key: "mlflow.log-model.history".into(),
        value: Value::Array(history).to_string(),
    };
    r.store.log_batch(&id, &[], &[], &[tag]).await?;
    empty()
}

async fn metric_history(State(r): AppState, input: Input) -> Reply {
    let found = r
        .store
        .metric_history(
            &run_id(&input)?,
            &input.str("metric_key")?,
            input.opt_i64("max_results")?,
            input.opt_str("page_token").as_deref(),
        )
        .await?;
    page("metrics", found)
}

// -------------------------------------------------------------------- registered models

async fn create_model(State(r): AppState, input: Input) -> Reply {
    let tags: Vec<KeyValue> = input.list("tags")?;
    let description = input.opt_str("description").unwrap_or_default();
    value(
        "registered_model",
        r.store
            .create_registered_model(&input.str("name")?, &tags, &description)
            .await?,
    )
}

async fn get_model(State(r): AppState, input: Input) -> Reply {
    value(
        "registered_model",
        r.store.get_registered_model(&input.str("name")?).await?,
    )
}

async fn rename_model(State(r): AppState, input: Input) -> Reply {
    let renamed = r
        .store
        .rename_registered_model(&input.str("name")?, &input.str("new_name")?)
        .await?;
    value("registered_model", renamed)
}

async fn update_model(State(r): AppState, input: Input) -> Reply {
    let description = input.opt_str("description").unwrap_or_default();
    value(
        "registered_model",
        r.store
            .update_registered_model(&input.str("name")?, &description)
            .await?,
    )
}

async fn delete_model(State(r): AppState, input: Input) -> Reply {
    r.store.delete_registered_model(&input.str("name")?).await?;
    empty()
}

async fn search_models(State(r): AppState, input: Input) -> Reply {
    let found = r
        .store
        .search_registered_models(
            &input.opt_str("filter").unwrap_or_default(),
            &input.strings("order_by"),
            input.opt_i64("max_results")?,
            input.opt_str("page_token").as_deref(),
        )
        .await?;
    page("registered_models", found)
}

async fn latest_versions(State(r): AppState, input: Input) -> Reply {
    let versions = r
        .store
        .latest_versions(&input.str("name")?, &input.strings("stages"))
        .await?;
    r.store.get_registered_model(&input.str("name")?).await?;
    value("model_versions", versions)
}

async fn set_model_tag(State(r): AppState, input: Input) -> Reply {
    let tag = KeyValue {
        key: input.str("key")?,
        value: input.opt_str("value").unwrap_or_default(),
    };
    r.store
        .set_registered_model_tag(&input.str("name")?, &tag)
        .await?;
    empty()
}

async fn delete_model_tag(State(r): AppState, input: Input) -> Reply {
    r.store
        .delete_registered_model_tag(&input.str("name")?, &input.str("key")?)
        .await?;
    empty()
}

async fn set_alias(State(r): AppState, input: Input) -> Reply {
    r.store
        .set_alias(
            &input.str("name")?,
            &input.str("alias")?,
            &input.str("version")?,
        )
        .await?;
    empty()
}

async fn delete_alias(State(r): AppState, input: Input) -> Reply {
    r.store
        .delete_alias(&input.str("name")?, &input.str("alias")?)
        .await?;
    empty()
}

async fn get_alias(State(r): AppState, input: Input) -> Reply {
    value(
        "model_version",
        r.store
            .get_version_by_alias(&input.str("name")?, &input.str("alias")?)
            .await?,
    )
}

// -------------------------------------------------------------------- model versions

/// Where a version's files live and which run made them, from its source: a logged
/// model (`models:/<id>`, or `model_id`), a run's artifacts (`runs:/<run>/<path>`) or any
/// artifact URI as given.
async fn origin(
    r: &Registry,
    source: &str,
    model_id: &str,
    run_id: &str,
) -> Result<(String, String)> {
    let pick_run = |found: String| {
        if run_id.is_empty() {
            found
        } else {
            run_id.to_string()
        }
    };
    let models_ref = source
        .strip_prefix("models:/")
        .map(|rest| rest.trim_end_matches('/'));
    // `models:/<name>/<version>` or `models:/<name>@<alias>`: a copy of a registered version.
    if let Some(reference) = models_ref.filter(|r| model_id.is_empty() && r.contains(['/', '@'])) {
        let version = match reference.rsplit_once('@') {
            Some((name, alias)) => r.store.get_version_by_alias(name, alias).await?,
            None => {
                let (name, number) = reference.rsplit_once('/').unwrap_or((reference, ""));
                r.store.get_model_version(name, number).await?
            }
        };
        let location = r
            .store
            .version_storage_location(&version.name, &version.version)
            .await?;
        return Ok((location, pick_run(version.run_id)));
    }
    if let Some(id) = (!model_id.is_empty()).then_some(model_id).or(models_ref) {
        let (location, source_run) = r.store.logged_model_origin(id).await?;
        return Ok((location, pick_run(source_run)));
    }
    if let Some(rest) = source.strip_prefix("runs:/") {
        let (run, path) = rest.split_once('/').unwrap_or((rest, ""));
        let root = r.store.run_artifact_uri(run).await?;
        let location = if path.is_empty() {
            root
        } else {
            format!("{root}/{path}")
        };
        return Ok((location, run.to_string()));
    }
    if source.is_empty() {
        return Err(RegistryError::Invalid(
            "Missing value for required parameter 'source'.".into(),
        ));
    }
    Ok((source.to_string(), run_id.to_string()))
}

async fn create_version(State(r): AppState, input: Input) -> Reply {
    let name = input.str("name")?;
    let mut new = NewVersion {
        source: input.opt_str("source").unwrap_or_default(),
        run_id: input.opt_str("run_id").unwrap_or_default(),
        run_link: input.opt_str("run_link").unwrap_or_default(),
        description: input.opt_str("description").unwrap_or_default(),
        user_id: String::new(),
        tags: input.list("tags")?,
        model_id: input.opt_str("model_id").unwrap_or_default(),
    };
    let (location, run_id) = origin(&r, &new.source, &new.model_id, &new.run_id).await?;
    new.run_id = run_id;
    value(
        "model_version",
        r.store.create_model_version(&name, &new, &location).await?,
    )
}

async fn get_version(State(r): AppState, input: Input) -> Reply {
    value(
        "model_version",
        r.store
            .get_model_version(&input.str("name")?, &input.str("version")?)
            .await?,
    )
}

async fn update_version(State(r): AppState, input: Input) -> Reply {
    let description = input.opt_str("description").unwrap_or_default();
    value(
        "model_version",
        r.store
            .update_model_version(&input.str("name")?, &input.str("version")?, &description)
            .await?,
    )
}

async fn delete_version(State(r): AppState, input: Input) -> Reply {
    r.store
        .delete_model_version(&input.str("name")?, &input.str("version")?)
        .await?;
    empty()
}

async fn search_versions(State(r): AppState, input: Input) -> Reply {
    let found = r
        .store
        .search_model_versions(
            &input.opt_str("filter").unwrap_or_default(),
            &input.strings("order_by"),
            input.opt_i64("max_results")?,
            input.opt_str("page_token").as_deref(),
        )
        .await?;
    page("model_versions", found)
}

async fn download_uri(State(r): AppState, input: Input) -> Reply {
    let uri = r
        .store
        .version_storage_location(&input.str("name")?, &input.str("version")?)
        .await?;
    ok(json!({ "artifact_uri": uri }))
}

async fn transition_stage(State(r): AppState, input: Input) -> Reply {
    let moved = r
        .store
        .transition_stage(
            &input.str("name")?,
            &input.str("version")?,
            &input.str("stage")?,
            input.opt_bool("archive_existing_versions"),
        )
        .await?;
    value("model_version", moved)
}

async fn set_version_tag(State(r): AppState, input: Input) -> Reply {
    let tag = KeyValue {
        key: input.str("key")?,
        value: input.opt_str("value").unwrap_or_default(),
    };
    r.store
        .set_model_version_tag(&input.str("name")?, &input.str("version")?, &tag)
        .await?;
    empty()
}

async fn delete_version_tag(State(r): AppState, input: Input) -> Reply {
    r.store
        .delete_model_version_tag(
            &input.str("name")?,
            &input.str("version")?,
            &input.str("key")?,
        )
        .await?;
    empty()
}

// -------------------------------------------------------------------- logged models

async fn create_logged_model(State(r): AppState, input: Input) -> Reply {
    let new = NewLoggedModel {
        experiment_id: input.str("experiment_id")?,
        name: input.opt_str("name").unwrap_or_default(),
        model_type: input.opt_str("model_type").unwrap_or_default(),
        source_run_id: input.opt_str("source_run_id").unwrap_or_default(),
        params: input.list("params")?,
        tags: input.list("tags")?,
    };
    value("model", r.store.create_logged_model(&new).await?)
}

async fn get_logged_model(State(r): AppState, Path(model_id): Path<String>) -> Reply {
    value("model", r.store.get_logged_model(&model_id).await?)
}

async fn finalize_logged_model(
    State(r): AppState,
    Path(model_id): Path<String>,
    input: Input,
) -> Reply {
    value(
        "model",
        r.store
            .set_logged_model_status(&model_id, &input.str("status")?)
            .await?,
    )
}

async fn delete_logged_model(State(r): AppState, Path(model_id): Path<String>) -> Reply {
    r.store.delete_logged_model(&model_id).await?;
    empty()
}

async fn set_logged_model_tags(
    State(r): AppState,
    Path(model_id): Path<String>,
    input: Input,
) -> Reply {
    let tags: Vec<KeyValue> = input.list("tags")?;
    r.store.set_logged_model_tags(&model_id, &tags).await?;
    value("model", r.store.get_logged_model(&model_id).await?)
}

async fn delete_logged_model_tag(
    State(r): AppState,
    Path((model_id, key)): Path<(String, String)>,
) -> Reply {
    r.store.delete_logged_model_tag(&model_id, &key).await?;
    empty()
}

async fn search_logged_models(State(r): AppState, input: Input) -> Reply {
    let order: Vec<String> = input
        .raw("order_by")
        .iter()
        .filter_map(|o| match o {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => {
                let field = m.get("field_name")?.as_str()?;
                let asc = m.get("ascending").and_then(Value::as_bool).unwrap_or(true);
                Some(format!("{field} {}", if asc { "ASC" } else { "DESC" }))
            }
            _ => None,
        })
        .collect();
    let found = r
        .store
        .search_logged_models(
            &input.strings("experiment_ids"),
            &input.opt_str("filter").unwrap_or_default(),
            &order,
            input.opt_i64("max_results")?,
            input.opt_str("page_token").as_deref(),
        )
        .await?;
    page("models", found)
}

// -------------------------------------------------------------------- artifacts

async fn list_artifacts(State(r): AppState, input: Input) -> Reply {
    let path = input.opt_str("path").unwrap_or_default();
    // A file, or nothing at all, lists as `{}`: that is how the client tells files from folders.
    let files = match r.artifacts.list(&path).await {
        Err(RegistryError::NotFound(_)) => Vec::new(),
        other => other?,
    };
    if files.is_empty() {
        return ok(json!({}));
    }
    ok(json!({ "files": files }))
}

async fn upload_artifact(State(r): AppState, Path(path): Path<String>, body: Body) -> Reply {
    let size = r
        .artifacts
        .put_stream(&path, body.into_data_stream())
        .await?;
    tracing::debug!(artifact = %path, bytes = size, "artifact stored");
    empty()
}

async fn download_artifact(State(r): AppState, Path(path): Path<String>) -> Result<Response> {
    let (size, stream) = r.artifacts.get_stream(&path).await?;
    let mut response = Response::new(Body::from_stream(
        stream.map(|chunk| chunk.map_err(std::io::Error::other)),
    ));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

async fn delete_artifact(State(r): AppState, Path(path): Path<String>) -> Reply {
    r.artifacts.delete(&path).await?;
    empty()
}

/// MLflow's answer for an unknown endpoint under its prefix.
async fn not_found(method: Method, uri: axum::http::Uri) -> RegistryError {
    RegistryError::NotFound(format!(
        "ENDPOINT_NOT_FOUND: no endpoint {method} {}",
        uri.path()
    ))
}
