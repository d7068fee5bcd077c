//! The gRPC front end.

pub mod server;
