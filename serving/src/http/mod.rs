//! The HTTP front end.

pub mod codec;
pub mod server;
