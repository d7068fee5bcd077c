//! The crate's error type: what can go wrong setting the gateway up or managing keys
//! (request-time refusals are [`crate::Denial`]s, not errors).

/// A failure to configure the gateway, reach the key store, or load TLS material.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work as given; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// The key store's database failed.
    #[error("API key store: {0}")]
    Database(#[from] sqlx::Error),
    /// The key store's migrations failed.
    #[error("API key store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No API key has this id.
    #[error("no API key with id '{0}'")]
    NoSuchKey(String),
    /// The JSON Web Key Set cannot be read or parsed.
    #[error("JWKS {source_name}: {message}")]
    Jwks {
        /// The file or URL it was read from.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// Certificates or keys for TLS cannot be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Listening on this address would expose the server without authentication.
    #[error("{0}")]
    UnsafeBind(String),
}
