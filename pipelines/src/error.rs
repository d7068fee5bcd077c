//! Errors, and how the REST API shows them.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A spec that cannot run, naming the step and field at fault when there is one, so the
/// user can find the line to fix before anything has started.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct SpecError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl SpecError {
    pub fn new(message: impl Into<String>) -> Self {
        SpecError {
            message: message.into(),
            step: None,
            field: None,
        }
    }

    pub fn at(step: &str, field: &str, message: impl Into<String>) -> Self {
        SpecError {
            message: message.into(),
            step: Some(step.to_string()),
            field: Some(field.to_string()),
        }
    }

    pub fn at_field(field: &str, message: impl Into<String>) -> Self {
        SpecError {
            message: message.into(),
            step: None,
            field: Some(field.to_string()),
        }
    }

    fn describe(&self) -> String {
        match (&self.step, &self.field) {
            (Some(step), Some(field)) => {
                format!("step '{step}', field '{field}': {}", self.message)
            }
            (Some(step), None) => format!("step '{step}': {}", self.message),
            (None, Some(field)) => format!("field '{field}': {}", self.message),
            (None, None) => self.message.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid pipeline: {0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for PipelineError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => {
                PipelineError::Unavailable(format!("pipeline database unavailable: {e}"))
            }
            sqlx::Error::RowNotFound => PipelineError::NotFound(e.to_string()),
            other => PipelineError::Internal(format!("pipeline database: {other}")),
        }
    }
}

impl From<serde_json::Error> for PipelineError {
    fn from(e: serde_json::Error) -> Self {
        PipelineError::Internal(format!("stored JSON: {e}"))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for PipelineError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            PipelineError::Spec(_) => (StatusCode::BAD_REQUEST, "INVALID_SPEC"),
            PipelineError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            PipelineError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            PipelineError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            PipelineError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            PipelineError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        let (step, field) = match &self {
            PipelineError::Spec(s) => (s.step.as_deref(), s.field.as_deref()),
            _ => (None, None),
        };
        let body = Body {
            error: Detail {
                code,
                message: self.to_string(),
                step,
                field,
            },
        };
        (status, Json(body)).into_response()
    }
}
