//! Registry errors and their MLflow REST form: `{"error_code": …, "message": …}` with
//! MLflow's status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A failed registry operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// RESOURCE_ALREADY_EXISTS (400).
    #[error("{0}")]
    AlreadyExists(String),
    /// RESOURCE_DOES_NOT_EXIST (404).
    #[error("{0}")]
    NotFound(String),
    /// INVALID_PARAMETER_VALUE (400).
    #[error("{0}")]
    Invalid(String),
    /// TEMPORARILY_UNAVAILABLE (503): the database or artifact store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// INTERNAL_ERROR (500).
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    /// MLflow's error code.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::AlreadyExists(_) => "RESOURCE_ALREADY_EXISTS",
            RegistryError::NotFound(_) => "RESOURCE_DOES_NOT_EXIST",
            RegistryError::Invalid(_) => "INVALID_PARAMETER_VALUE",
            RegistryError::Unavailable(_) => "TEMPORARILY_UNAVAILABLE",
            RegistryError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status MLflow's server uses for the code.
    pub fn status(&self) -> StatusCode {
        match self {
            RegistryError::AlreadyExists(_) | RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => {
                RegistryError::Unavailable(format!("the registry database is unavailable: {e}"))
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                RegistryError::AlreadyExists(format!("already exists: {}", db.message()))
            }
            _ => RegistryError::Internal(format!("database error: {e}")),
        }
    }
}

impl From<crate::search::SearchError> for RegistryError {
    fn from(e: crate::search::SearchError) -> Self {
        RegistryError::Invalid(e.to_string())
    }
}

impl From<object_store::Error> for RegistryError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => {
                RegistryError::NotFound(format!("artifact '{path}' does not exist"))
            }
            other => RegistryError::Unavailable(format!("the artifact store failed: {other}")),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error_code": self.code(), "message": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}
