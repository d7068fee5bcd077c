//! One error type for every protocol; each front end maps it to its status codes in one place.
//! Beside it, the error of the server as a whole, which every listener's `run` returns.

use std::net::SocketAddr;

use nexus_models::{BackendError, RepositoryError, TensorError};

/// A failed request, classified by who is at fault and whether retrying can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServingError {
    /// Unknown model or version (HTTP 404, gRPC NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or does not fit the model (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The model exists but cannot serve now (HTTP 503, gRPC UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The server failed (HTTP 500, gRPC INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl From<TensorError> for ServingError {
    fn from(e: TensorError) -> Self {
        ServingError::InvalidArgument(e.to_string())
    }
}

impl From<BackendError> for ServingError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Input(_) => ServingError::InvalidArgument(e.to_string()),
            BackendError::Runtime(_) | BackendError::NoGpu(_) => {
                ServingError::Unavailable(e.to_string())
            }
            BackendError::Load { .. } | BackendError::Infer(_) => {
                ServingError::Internal(e.to_string())
            }
        }
    }
}

impl From<RepositoryError> for ServingError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::NotFound(_) => ServingError::NotFound(e.to_string()),
            RepositoryError::Config(_) => ServingError::InvalidArgument(e.to_string()),
            RepositoryError::Root(_) | RepositoryError::Io { .. } => {
                ServingError::Internal(e.to_string())
            }
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(#[from] BackendError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Server(String),
}
