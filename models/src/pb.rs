//! Prost types generated from `proto/model_config.proto` (package `inference`): Triton's
//! model configuration, shared by the tensor types and the config parser.
#![allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::large_enum_variant
)]
include!(concat!(env!("OUT_DIR"), "/inference.rs"));
