//! ONNX Runtime backend through `ort`, with the runtime library loaded at run time, when
//! the first ONNX model loads: a server with no ONNX model never opens it, and one without
//! the library still serves the models of its other runtimes.
//!
//! The library is never downloaded: it comes from the `onnxruntime` wheel on PyPI,
//! unpacked by `scripts/install-onnxruntime.sh` into `.nexus/lib/`, or from
//! `ORT_DYLIB_PATH`. A missing or incompatible library is a [`BackendError::Runtime`]
//! (the model is UNAVAILABLE with that reason).

pub mod accelerators;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use nexus_models::{
    Backend, BackendError, BackendFactory, ComputeTimings, DataType, Device, Inferred, LoadOptions,
    Tensor, TensorData, TensorSpec,
};

/// The platform string Triton uses for ONNX models.
pub const PLATFORM: &str = "onnxruntime_onnx";
/// The backend name Triton uses for ONNX models.
pub const BACKEND: &str = "onnxruntime";
/// The model file of a version folder when the config names none.
pub const MODEL_FILE: &str = "model.onnx";

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// Where the install script puts the library, relative to the project root.
pub const LOCAL_DYLIB: &str = ".nexus/lib/libonnxruntime.so";
/// ONNX Runtime's CUDA execution provider, a library beside the runtime's own.
const CUDA_PROVIDER: &str = "libonnxruntime_providers_cuda.so";

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads the ONNX Runtime library and creates the process-wide environment; `library`
/// overrides the search. Later calls return the first outcome, since a process can load
/// the library only once.
pub fn init(library: Option<&Path>) -> Result<(), BackendError> {
    environment(library).map(|_| ())
}

/// The ONNX Runtime entry of the backend table.
#[derive(Debug, Default)]
pub struct OnnxRuntime {
    /// `--ort-library`: the library to load instead of searching for one.
    library: Option<PathBuf>,
}

impl OnnxRuntime {
    /// A factory that loads `library` (or searches, when `None`) with the first model.
    pub fn new(library: Option<PathBuf>) -> Self {
        OnnxRuntime { library }
    }
}

impl BackendFactory for OnnxRuntime {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn model_filename(&self) -> &'static str {
        MODEL_FILE
    }

    /// `model.onnx` when present, else the only `.onnx` file (MLflow's ONNX flavour
    /// stores `model.onnx` beside `MLmodel`; exports often have other names).
    fn find_model(&self, dir: &Path) -> Option<PathBuf> {
        nexus_models::backend::find_model_file(dir, MODEL_FILE)
    }

    /// The CUDA execution provider ships beside the library in the `onnxruntime-gpu` wheel
    /// (`libonnxruntime_providers_cuda.so`), never in the CPU one.
    fn gpu_support(&self) -> Result<String, String> {
        let library = locate(self.library.as_deref())?;
        let provider = library.with_file_name(CUDA_PROVIDER);
        if provider.exists() {
            Ok(format!("CUDA execution provider {}", provider.display()))
        } else {
            Err(format!(
                "{} is the CPU build (no {CUDA_PROVIDER} beside it): run scripts/install-onnxruntime.sh --gpu",
                library.display()
            ))
        }
    }

    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn Backend>, BackendError> {
        environment(self.library.as_deref())?;
        Ok(Box::new(OnnxBackend::load(path, options)?))
    }
}

fn environment(library: Option<&Path>) -> Result<&'static Environment, BackendError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = locate(library)?;
            let builder = ort::init_from(&path).map_err(|e| {
                format!(
                    "cannot use ONNX Runtime library {}: {e}. Point {DYLIB_ENV} at libonnxruntime.so 1.32 or run scripts/install-onnxruntime.sh",
                    path.display()
                )
            })?;
            tracing::info!(library = %path.display(), "ONNX Runtime loaded");
            builder
                .with_name("nexus")
                .build()
                .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(|e| BackendError::Runtime(e.clone()))
}

/// Finds the library: the explicit path, then `ORT_DYLIB_PATH`, then `.nexus/lib/` in
/// the working directory, the executable's directory or any of their parents.
fn locate(library: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = library {
        return Ok(path.to_path_buf());
    }
    nexus_models::backend::locate_library(DYLIB_ENV, LOCAL_DYLIB).ok_or_else(|| {
        format!(
            "ONNX Runtime library not found: set {DYLIB_ENV} to the path of libonnxruntime.so, or run scripts/install-onnxruntime.sh to install it into {LOCAL_DYLIB}"
        )
    })
}

/// One ONNX Runtime session.
pub struct OnnxBackend {
    session: Session,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OnnxBackend {
    /// Creates a session for the model file at `path`.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self, BackendError> {
        let env = environment(None)?;
        let fail = |reason: String| BackendError::Load {
            path: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(fail("model file not found".into()));
        }
        let mut builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
        if options.intra_op_threads > 0 {
            builder = builder
                .with_intra_threads(options.intra_op_threads)
                .map_err(|e| fail(e.to_string()))?;
        }
        if options.inter_op_threads > 0 {
            builder = builder
                .with_inter_threads(options.inter_op_threads)
                .map_err(|e| fail(e.to_string()))?;
        }
        if let Device::Gpu(id) = options.device {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure();
            let (providers, wanted) = match accelerators::tensorrt(&options.config).map_err(fail)? {
                Some(trt) => (
                    vec![trt.provider(id).build().error_on_failure(), cuda],
                    "TensorRT (with CUDA)",
                ),
                None => (vec![cuda], "CUDA"),
            };
            builder = builder.with_execution_providers(providers).map_err(|e| {
                BackendError::NoGpu(format!(
                    "CUDA device {id} is not usable by ONNX Runtime's {wanted} execution provider ({e}); use instance_group kind KIND_CPU or install the onnxruntime-gpu library (scripts/install-onnxruntime.sh --gpu)"
                ))
            })?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| fail(e.to_string()))?;

        let inputs = session
            .inputs()
            .iter()
            .map(|o| match spec(o.name(), o.dtype()) {
                Some(spec) => Ok(spec),
                None => Err(fail(format!(
                    "input '{}' has type {:?}, which the V2 protocol cannot carry",
                    o.name(),
                    o.dtype()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs = Vec::new();
        for outlet in session.outputs() {
            match spec(outlet.name(), outlet.dtype()) {
                Some(spec) => outputs.push(spec),
                None => tracing::warn!(
                    model = %path.display(),
                    output = outlet.name(),
                    "output is not a tensor of a V2 datatype; it is not served"
                ),
            }
        }
        Ok(OnnxBackend {
            session,
            inputs,
            outputs,
        })
    }
}

fn spec(name: &str, dtype: &ValueType) -> Option<TensorSpec> {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return None;
    };
    Some(TensorSpec {
        name: name.to_string(),
        datatype: datatype(*ty)?,
        shape: shape.iter().map(|d| if *d < 0 { -1 } else { *d }).collect(),
        optional: false,
    })
}

fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// Borrows a tensor's data as an ORT input without copying (strings excepted: ORT owns those).
fn to_value(t: &Tensor) -> Result<SessionInputValue<'_>, BackendError> {
    let shape = t.shape.clone();
    let input_err = |e: ort::Error| BackendError::Input(format!("input '{}': {e}", t.name));
    macro_rules! view {
        ($v:expr) => {
            TensorRef::from_array_view((shape, $v.as_slice()))
                .map_err(input_err)?
                .into()
        };
    }
    Ok(match &t.data {
        TensorData::Bool(v) => view!(v),
        TensorData::U8(v) => view!(v),
        TensorData::U16(v) => view!(v),
        TensorData::U32(v) => view!(v),
        TensorData::U64(v) => view!(v),
        TensorData::I8(v) => view!(v),
        TensorData::I16(v) => view!(v),
        TensorData::I32(v) => view!(v),
        TensorData::I64(v) => view!(v),
        TensorData::F16(v) => view!(v),
        TensorData::F32(v) => view!(v),
        TensorData::F64(v) => view!(v),
        TensorData::Bytes(items) => {
            let strings = items
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        BackendError::Input(format!(
                            "input '{}': element {i} is not UTF-8, which ONNX string tensors require",
                            t.name
                        ))
                    })
                })
                .collect::<Result<Vec<String>, _>>()?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map_err(input_err)?
                .into()
        }
    })
}

fn from_value(name: &str, value: &DynValue) -> Result<Tensor, BackendError> {
    let err = |e: ort::Error| BackendError::Infer(format!("output '{name}': {e}"));
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(BackendError::Infer(format!(
            "output '{name}' is not a tensor"
        )));
    };
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => extract!(bool, Bool),
        TensorElementType::Uint8 => extract!(u8, U8),
        TensorElementType::Uint16 => extract!(u16, U16),
        TensorElementType::Uint32 => extract!(u32, U32),
        TensorElementType::Uint64 => extract!(u64, U64),
        TensorElementType::Int8 => extract!(i8, I8),
        TensorElementType::Int16 => extract!(i16, I16),
        TensorElementType::Int32 => extract!(i32, I32),
        TensorElementType::Int64 => extract!(i64, I64),
        TensorElementType::Float16 => extract!(half::f16, F16),
        TensorElementType::Float32 => extract!(f32, F32),
        TensorElementType::Float64 => extract!(f64, F64),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(err)?;
            let items = strings.into_iter().map(Bytes::from).collect();
            (shape.to_vec(), TensorData::Bytes(items))
        }
        other => {
            return Err(BackendError::Infer(format!(
                "output '{name}' has element type {other:?}, which the V2 protocol cannot carry"
            )));
        }
    };
    Tensor::new(name, shape, data).map_err(|e| BackendError::Infer(e.to_string()))
}

impl Backend for OnnxBackend {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn infer(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Inferred, BackendError> {
        let start = Instant::now();
        let values = inputs
            .iter()
            .map(|t| Ok((Cow::Borrowed(t.name.as_str()), to_value(t)?)))
            .collect::<Result<Vec<_>, BackendError>>()?;
        let prepared = Instant::now();
        let results = self.session.run(values).map_err(|e| match e.code() {
            ort::error::ErrorCode::InvalidArgument => BackendError::Input(e.to_string()),
            _ => BackendError::Infer(e.to_string()),
        })?;
        let ran = Instant::now();
        let tensors = outputs
            .iter()
            .map(|name| {
                let value = results.get(name.as_str()).ok_or_else(|| {
                    BackendError::Infer(format!("the model produced no output '{name}'"))
                })?;
                from_value(name, value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let done = Instant::now();
        Ok(Inferred {
            outputs: tensors,
            timings: ComputeTimings {
                input: prepared - start,
                infer: ran - prepared,
                output: done - ran,
            },
        })
    }
}
