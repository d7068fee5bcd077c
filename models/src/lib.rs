//! Models: V2 tensors, the [`Backend`] seam with its ONNX Runtime implementation, Triton's
//! model configuration, and the on-disk model repository.

pub mod backend;
pub mod config;
pub mod onnx;
pub mod repository;
pub mod tensor;

pub use backend::{
    Backend, BackendError, ComputeTimings, Device, Inferred, LoadOptions, TensorSpec,
};
pub use config::{ModelConfig, pb};
pub use repository::{ModelRepository, ModelSource, RepositoryError};
pub use tensor::{DataType, Tensor, TensorData, TensorError};
