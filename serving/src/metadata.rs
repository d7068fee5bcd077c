//! What the server says it is, in server metadata (HTTP `GET /v2`, gRPC `ServerMetadata`)
//! and in discovery (`/api/v1/services`). A module of its own so that the front ends and
//! health read it without depending on the crate root that wires them.

/// Name reported by server metadata.
pub const SERVER_NAME: &str = "nexus";
/// Version reported by server metadata.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions this server implements, as listed in server metadata.
pub const SERVER_EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "system_shared_memory",
];
