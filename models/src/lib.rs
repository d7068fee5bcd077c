//! Models: V2 tensors, the [`Backend`] seam and the table of runtimes that implement it
//! ([`Backends`]; the runtimes are the crates under `backends/`), Triton's model
//! configuration, and the on-disk model repository.

pub mod backend;
pub mod config;
pub mod package;
pub mod pb;
pub mod repository;
pub mod tensor;

pub use backend::{
    Backend, BackendError, BackendFactory, Backends, ComputeTimings, Device, Inferred, LoadOptions,
};
pub use config::ModelConfig;
pub use repository::{ModelRepository, RepositoryError, RepositoryModel};
pub use tensor::{DataType, Tensor, TensorData, TensorError, TensorSpec};
