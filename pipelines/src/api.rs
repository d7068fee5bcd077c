//! The pipelines REST API under `/api/v1/pipelines`: submit, list, get, logs, cancel.

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

use crate::engine::{Engine, Submit};
use crate::error::PipelineError;
use crate::store::Status;

/// Submissions larger than this are refused (a compiled KFP pipeline is tens of KiB).
const MAX_SPEC_BYTES: usize = 8 << 20;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/api/v1/pipelines/runs", post(submit).get(list))
        .route("/api/v1/pipelines/runs/{id}", get(get_run))
        .route("/api/v1/pipelines/runs/{id}/logs", get(logs))
        .route("/api/v1/pipelines/runs/{id}/cancel", post(cancel))
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

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, PipelineError> {
    let status = query
        .status
        .map(|s| {
            Status::parse(&s.to_ascii_uppercase())
                .ok_or_else(|| PipelineError::Invalid(format!("unknown status '{s}'")))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let runs = engine.store().list_runs(status, limit).await?;
    Ok(Json(json!({ "runs": runs })))
}

async fn get_run(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, PipelineError> {
    let run = engine.store().get_run(&id, true).await?;
    Ok(Json(json!({ "run": run })))
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

fn async_stream(
    engine: Arc<Engine>,
    id: String,
    step: Option<String>,
    follow: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        // Bytes already sent per log file.
        let mut sent: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        loop {
            let Ok(run) = engine.store().get_run(&id, true).await else {
                return;
            };
            let tasks = run.tasks.unwrap_or_default();
            let selected: Vec<_> = tasks
                .iter()
                .filter(|t| match &step {
                    Some(s) => &t.path == s || &t.name == s,
                    None => true,
                })
                .collect();
            let finished = run.status.is_terminal()
                || (step.is_some()
                    && !selected.is_empty()
                    && selected.iter().all(|t| t.status.is_terminal()));
            for task in &selected {
                let file = engine.log_path(&id, &task.path);
                let offset = sent.get(&task.path).copied().unwrap_or(0);
                let Ok(mut f) = tokio::fs::File::open(&file).await else {
                    continue;
                };
                if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                    continue;
                }
                let mut buffer = Vec::new();
                if f.read_to_end(&mut buffer).await.is_err() || buffer.is_empty() {
                    continue;
                }
                if step.is_none() && offset == 0 {
                    let header = format!("==> {} <==\n", task.path);
                    if tx.send(Ok(Bytes::from(header))).await.is_err() {
                        return;
                    }
                }
                sent.insert(task.path.clone(), offset + buffer.len() as u64);
                if tx.send(Ok(Bytes::from(buffer))).await.is_err() {
                    return;
                }
            }
            if !follow || finished {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
