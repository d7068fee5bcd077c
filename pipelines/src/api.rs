//! The pipelines REST API under `/api/v1/pipelines`: submit, list (filtered and paged on
//! the server), get (with the pipeline's outline: its tasks and their dependencies), logs,
//! cancel.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::MAX_SPEC_BYTES;
use crate::engine::{Engine, Submit};
use crate::error::PipelineError;
use crate::outline::Outline;
use crate::store::{RunFilter, Status};

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/api/v1/pipelines/runs", post(submit).get(list))
        .route("/api/v1/pipelines/runs/{id}", get(get_run))
        .route("/api/v1/pipelines/runs/{id}/logs", get(logs))
        .route("/api/v1/pipelines/runs/{id}/cancel", post(cancel))
        .route("/api/v1/pipelines/library", get(library))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_SPEC_BYTES))
        .with_state(engine)
}

async fn submit(
    State(engine): State<Arc<Engine>>,
    body: Result<Json<Submit>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, PipelineError> {
    let Json(request) = body
        .map_err(|e| PipelineError::Invalid(format!("invalid request body: {}", e.body_text())))?;
    let run = engine.submit(request).await?;
    Ok((StatusCode::CREATED, Json(json!({ "run": run }))).into_response())
}

/// `GET /api/v1/pipelines/library`: `{"pipelines": [{name, file, spec, base_dir}]}`.
async fn library(State(engine): State<Arc<Engine>>) -> Result<Response, PipelineError> {
    let dir = engine.library_dir().to_path_buf();
    let pipelines = tokio::task::spawn_blocking(move || crate::library::list(&dir))
        .await
        .map_err(|e| PipelineError::Internal(format!("listing the pipeline library: {e}")))?;
    Ok(Json(json!({ "pipelines": pipelines })).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    /// Runs whose name contains this text (any case).
    name: Option<String>,
    limit: Option<i64>,
    /// Where the previous page ended (its `next_page_token`).
    page_token: Option<String>,
}

/// Longest `name` filter accepted.
const MAX_NAME_FILTER: usize = 256;

/// `GET /api/v1/pipelines/runs[?status=&name=&limit=&page_token=]`: runs newest first,
/// `{"runs": [...], "next_page_token": "..."}`, the token only when more runs match.
async fn list(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, PipelineError> {
    let status = query
        .status
        .filter(|s| !s.is_empty())
        .map(|s| {
            Status::parse(&s.to_ascii_uppercase())
                .ok_or_else(|| PipelineError::Invalid(format!("unknown status '{s}'")))
        })
        .transpose()?;
    let name = query.name.filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.len() > MAX_NAME_FILTER) {
        return Err(PipelineError::Invalid(format!(
            "name filter is longer than {MAX_NAME_FILTER} bytes"
        )));
    }
    let filter = RunFilter {
        status,
        name,
        after: query
            .page_token
            .filter(|t| !t.is_empty())
            .map(|t| t.parse())
            .transpose()?,
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let (runs, next) = engine.store().list_runs(&filter, limit).await?;
    let mut body = json!({ "runs": runs });
    if let Some(next) = next {
        body["next_page_token"] = next.to_string().into();
    }
    Ok(Json(body))
}

/// `GET /api/v1/pipelines/runs/{id}`: `{"run": {... "tasks": [...]}, "graph": {"nodes",
/// "edges"}}`, the graph being the outline of what the run executes.
async fn get_run(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, PipelineError> {
    let run = engine.store().get_run(&id, true).await?;
    let (pipeline, _, _) = engine.store().graph(&id).await?;
    Ok(Json(json!({ "run": run, "graph": Outline::of(&pipeline) })))
}

async fn cancel(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, PipelineError> {
    let run = engine.cancel(&id).await?;
    Ok(Json(json!({ "run": run })))
}

#[derive(Deserialize)]
struct LogsQuery {
    step: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// A step's log, or every step's log one after the other. With `follow`, the response
/// stays open and streams new lines until the step (or run) has ended.
async fn logs(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, PipelineError> {
    let run = engine.store().get_run(&id, true).await?;
    let tasks = run.tasks.unwrap_or_default();
    if let Some(step) = &query.step
        && !tasks.iter().any(|t| &t.path == step || &t.name == step)
    {
        return Err(PipelineError::NotFound(format!(
            "run '{id}' has no step '{step}'"
        )));
    }
    let stream = async_stream(engine, id, query.step, query.follow);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Bytes read from a log file at a time: a step's log can be larger than memory.
const LOG_CHUNK: usize = 64 << 10;

/// How often a `follow` request looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Counts the log streams being served (`nexus_pipeline_log_streams`), so a stream that
/// outlives its client shows.
struct StreamGauge;

impl StreamGauge {
    fn open() -> Self {
        metrics::gauge!("nexus_pipeline_log_streams").increment(1.0);
        StreamGauge
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!("nexus_pipeline_log_streams").decrement(1.0);
    }
}

/// The response body of a logs request: a task reads the logs in [`LOG_CHUNK`] pieces into
/// a short channel, and stops as soon as the client has gone (the body, and so the
/// channel's receiver, is dropped), even while it waits for new lines.
fn async_stream(
    engine: Arc<Engine>,
    id: String,
    step: Option<String>,
    follow: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let _gauge = StreamGauge::open();
        tokio::select! {
            () = send_logs(&engine, &id, step.as_deref(), follow, &tx) => {}
            () = tx.closed() => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Sends the selected logs from where each was left, then (with `follow`) again every
/// [`FOLLOW_POLL`] until the step or run has ended. Returns when done or when the receiver
/// is gone.
async fn send_logs(
    engine: &Engine,
    id: &str,
    step: Option<&str>,
    follow: bool,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    // Bytes already sent per log file.
    let mut sent: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        let Ok(run) = engine.store().get_run(id, true).await else {
            return;
        };
        let tasks = run.tasks.unwrap_or_default();
        let selected: Vec<_> = tasks
            .iter()
            .filter(|t| step.is_none_or(|s| t.path == s || t.name == s))
            .collect();
        let finished = run.status.is_terminal()
            || (step.is_some()
                && !selected.is_empty()
                && selected.iter().all(|t| t.status.is_terminal()));
        for task in &selected {
            let offset = sent.entry(task.path.clone()).or_insert(0);
            let header = step.is_none() && *offset == 0;
            let file = engine.log_path(id, &task.path);
            if send_file(&file, offset, header.then_some(&task.path), tx)
                .await
                .is_err()
            {
                return;
            }
        }
        if !follow || finished {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Sends what `file` holds past `offset`, chunk by chunk, advancing `offset`; first a
/// `==> header <==` line when there is something to send. Err when the receiver is gone.
async fn send_file(
    file: &std::path::Path,
    offset: &mut u64,
    header: Option<&String>,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), ()> {
    let Ok(mut f) = tokio::fs::File::open(file).await else {
        return Ok(());
    };
    if f.seek(std::io::SeekFrom::Start(*offset)).await.is_err() {
        return Ok(());
    }
    let mut header = header.map(|path| Bytes::from(format!("==> {path} <==\n")));
    let mut buffer = vec![0u8; LOG_CHUNK];
    loop {
        let n = match f.read(&mut buffer).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        if let Some(header) = header.take() {
            tx.send(Ok(header)).await.map_err(drop)?;
        }
        *offset += n as u64;
        tx.send(Ok(Bytes::copy_from_slice(&buffer[..n])))
            .await
            .map_err(drop)?;
    }
}
