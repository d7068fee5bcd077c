//! The seam between serving and a model runtime. A backend is one loaded instance of
//! a model: serving owns a pool of them and calls `infer` from a dedicated thread.

use std::path::Path;
use std::time::Duration;

use crate::tensor::{DataType, Tensor};

/// Name, datatype and shape of a model input or output; `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// Where an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal.
    Gpu(i32),
}

/// How to load one instance.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Threads inside one operator; 0 lets the runtime decide.
    pub intra_op_threads: usize,
    /// Threads across independent operators; 0 lets the runtime decide.
    pub inter_op_threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            intra_op_threads: 0,
            inter_op_threads: 0,
        }
    }
}

/// Time spent in each phase of one execution, reported as Triton's compute statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ComputeTimings {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

/// The outputs of one execution with its timings.
#[derive(Debug)]
pub struct Inferred {
    pub outputs: Vec<Tensor>,
    pub timings: ComputeTimings,
}

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The runtime library itself is missing or unusable.
    #[error("{0}")]
    Runtime(String),
    #[error("failed to load model {path}: {reason}")]
    Load { path: String, reason: String },
    /// The inputs were unacceptable to the runtime (the caller's fault).
    #[error("{0}")]
    Input(String),
    #[error("inference failed: {0}")]
    Infer(String),
    #[error("no GPU: {0}")]
    NoGpu(String),
}

/// One loaded model instance.
pub trait Backend: Send {
    /// The model's inputs as the model file declares them.
    fn inputs(&self) -> &[TensorSpec];
    /// The model's tensor outputs as the model file declares them.
    fn outputs(&self) -> &[TensorSpec];
    /// Runs the model on `inputs` (full tensors, batch dimension included) and returns
    /// the outputs named in `outputs`, in that order.
    fn infer(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Inferred, BackendError>;
}

/// Loads one instance of the model at `path` for `platform`.
pub fn load(
    platform: &str,
    path: &Path,
    options: &LoadOptions,
) -> Result<Box<dyn Backend>, BackendError> {
    match platform {
        crate::config::ONNX_PLATFORM => {
            Ok(Box::new(crate::onnx::OnnxBackend::load(path, options)?))
        }
        other => Err(BackendError::Load {
            path: path.display().to_string(),
            reason: format!("platform '{other}' is not supported by this build"),
        }),
    }
}
