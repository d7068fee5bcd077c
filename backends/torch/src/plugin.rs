//! Opening `libnexus_torch.so` and calling it. Its C functions:
//!
//! ```text
//! u32   nexus_torch_abi_version(void)
//! void* nexus_torch_load(const u8* request, usize len, Buffer* error)   JSON LoadRequest; NULL + message on failure
//! void  nexus_torch_infer(void* model, const u8* request, usize len, Buffer* answer)   wire messages
//! void  nexus_torch_unload(void* model)
//! void  nexus_torch_free(Buffer buffer)   every Buffer the plugin filled
//! ```

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use nexus_models::{
    Backend, BackendError, ComputeTimings, Device, Inferred, LoadOptions, Tensor, TensorSpec,
};

use crate::wire::{self, ABI_VERSION, LoadRequest};

/// Environment variable naming the plugin library.
pub const PLUGIN_ENV: &str = "NEXUS_TORCH_PLUGIN";
/// Where `scripts/install-torch-backend.sh` puts it, relative to the project root.
pub const PLUGIN_FILE: &str = ".nexus/lib/libnexus_torch.so";

const INSTALL_HINT: &str = "run scripts/install-torch-backend.sh (it installs libtorch and builds the plugin into .nexus/lib), or point NEXUS_TORCH_PLUGIN at libnexus_torch.so";

/// A buffer the plugin allocated; given back to it to free.
#[repr(C)]
pub struct Buffer {
    ptr: *mut u8,
    len: usize,
    cap: usize,
}

impl Buffer {
    fn empty() -> Self {
        Buffer {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }
}

type AbiVersion = unsafe extern "C" fn() -> u32;
type Load = unsafe extern "C" fn(*const u8, usize, *mut Buffer) -> *mut c_void;
type Infer = unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut Buffer);
type Unload = unsafe extern "C" fn(*mut c_void);
type Free = unsafe extern "C" fn(Buffer);

/// The opened plugin: its functions, valid while `_library` lives (for the process).
pub struct Plugin {
    load: Load,
    infer: Infer,
    unload: Unload,
    free: Free,
    _library: libloading::Library,
}

static PLUGIN: OnceLock<Result<Arc<Plugin>, String>> = OnceLock::new();

impl Plugin {
    /// The process's plugin, opened on first use from `path`, `$NEXUS_TORCH_PLUGIN` or
    /// `.nexus/lib/` found from the working or executable directory. A failure is kept:
    /// fixing the install means restarting, as for ONNX Runtime.
    pub fn get(path: Option<&Path>) -> Result<Arc<Plugin>, BackendError> {
        PLUGIN
            .get_or_init(|| Plugin::open(path).map(Arc::new))
            .clone()
            .map_err(BackendError::Runtime)
    }

    fn open(path: Option<&Path>) -> Result<Plugin, String> {
        let path = locate(path)?;
        let started = Instant::now();
        // SAFETY: loading runs the library's initialisers. The plugin is Nexus's own build
        // against the pinned libtorch; its ABI version is checked before any other call.
        let library = unsafe { libloading::Library::new(&path) }.map_err(|e| {
            format!(
                "cannot open the PyTorch backend {}: {e}; {INSTALL_HINT}",
                path.display()
            )
        })?;
        let symbol_error = |e: libloading::Error| {
            format!(
                "{} is not a Nexus PyTorch plugin ({e}); {INSTALL_HINT}",
                path.display()
            )
        };
        // SAFETY: the symbols have these types in the plugin (plugin/src/lib.rs); the
        // function pointers are used only while `library` is alive, which is for good.
        let plugin = unsafe {
            let version = *library
                .get::<AbiVersion>(b"nexus_torch_abi_version\0")
                .map_err(symbol_error)?;
            let found = version();
            if found != ABI_VERSION {
                return Err(format!(
                    "{} speaks plugin ABI {found}, this nexus speaks {ABI_VERSION}; {INSTALL_HINT}",
                    path.display()
                ));
            }
            Plugin {
                load: *library
                    .get::<Load>(b"nexus_torch_load\0")
                    .map_err(symbol_error)?,
                infer: *library
                    .get::<Infer>(b"nexus_torch_infer\0")
                    .map_err(symbol_error)?,
                unload: *library
                    .get::<Unload>(b"nexus_torch_unload\0")
                    .map_err(symbol_error)?,
                free: *library
                    .get::<Free>(b"nexus_torch_free\0")
                    .map_err(symbol_error)?,
                _library: library,
            }
        };
        tracing::info!(plugin = %path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "PyTorch backend loaded");
        Ok(plugin)
    }

    /// Copies and frees a buffer the plugin filled.
    fn take(&self, buffer: Buffer) -> Vec<u8> {
        if buffer.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the plugin filled `ptr` with `len` initialised bytes and keeps them until
        // `free` is called, right after the copy.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.len) }.to_vec();
        // SAFETY: `buffer` came from the plugin and is freed exactly once.
        unsafe { (self.free)(buffer) };
        bytes
    }

    /// Opens one instance of the TorchScript model at `path`.
    pub fn load(
        self: &Arc<Self>,
        path: &Path,
        options: &LoadOptions,
    ) -> Result<TorchBackend, BackendError> {
        let config = &options.config;
        let request = LoadRequest {
            path: path.display().to_string(),
            gpu: match options.device {
                Device::Cpu => None,
                Device::Gpu(id) => Some(id),
            },
            intra_op_threads: options.intra_op_threads,
            inputs: config.input.iter().map(|i| i.name.clone()).collect(),
            outputs: config.output.iter().map(|o| o.name.clone()).collect(),
        };
        let request =
            serde_json::to_vec(&request).map_err(|e| BackendError::Runtime(e.to_string()))?;
        let mut error = Buffer::empty();
        // SAFETY: `request` outlives the call; `error` is a valid out-pointer.
        let handle = unsafe { (self.load)(request.as_ptr(), request.len(), &mut error) };
        let message = self.take(error);
        if handle.is_null() {
            let reason = String::from_utf8_lossy(&message).into_owned();
            return Err(match options.device {
                Device::Gpu(_) if reason.contains("CUDA") => BackendError::NoGpu(reason),
                _ => BackendError::Load {
                    path: path.display().to_string(),
                    reason,
                },
            });
        }
        let batched = config.max_batch_size > 0;
        let spec = |name: &str, data_type: i32, dims: &[i64], optional: bool| {
            let datatype = nexus_models::pb::DataType::try_from(data_type)
                .ok()
                .and_then(nexus_models::DataType::from_config)
                .ok_or_else(|| BackendError::Load {
                    path: path.display().to_string(),
                    reason: format!("'{name}' has a data_type the PyTorch backend cannot carry"),
                })?;
            let shape = batched
                .then_some(-1)
                .into_iter()
                .chain(dims.iter().copied())
                .collect();
            Ok(TensorSpec {
                name: name.to_string(),
                datatype,
                shape,
                optional,
            })
        };
        let inputs = config
            .input
            .iter()
            .map(|i| {
                spec(
                    &i.name,
                    i.data_type,
                    i.reshape.as_ref().map_or(&i.dims, |r| &r.shape),
                    i.optional,
                )
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let outputs = config
            .output
            .iter()
            .map(|o| {
                spec(
                    &o.name,
                    o.data_type,
                    o.reshape.as_ref().map_or(&o.dims, |r| &r.shape),
                    false,
                )
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(TorchBackend {
            plugin: Arc::clone(self),
            handle,
            inputs,
            outputs,
        })
    }
}

/// Finds the plugin: the explicit path, then `NEXUS_TORCH_PLUGIN`, then `.nexus/lib/` in
/// the working directory, the executable's directory or any of their parents.
pub(crate) fn locate(path: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = path {
        return Ok(path.to_path_buf());
    }
    nexus_models::backend::locate_library(PLUGIN_ENV, PLUGIN_FILE).ok_or_else(|| {
        format!("the PyTorch backend (libnexus_torch.so) is not installed: {INSTALL_HINT}")
    })
}

/// One loaded TorchScript module in the plugin.
pub struct TorchBackend {
    plugin: Arc<Plugin>,
    handle: *mut c_void,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

// SAFETY: the handle is a plugin-owned module used by one thread at a time (`&mut self`);
// libtorch modules may move between threads.
unsafe impl Send for TorchBackend {}

impl Drop for TorchBackend {
    fn drop(&mut self) {
        // SAFETY: the handle came from `nexus_torch_load` and is unloaded exactly once.
        unsafe { (self.plugin.unload)(self.handle) };
    }
}

impl Backend for TorchBackend {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn infer(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Inferred, BackendError> {
        let start = Instant::now();
        let request = wire::encode(inputs, outputs);
        let prepared = Instant::now();
        let mut answer = Buffer::empty();
        // SAFETY: `handle` is live, `request` outlives the call, `answer` is a valid out-pointer.
        unsafe { (self.plugin.infer)(self.handle, request.as_ptr(), request.len(), &mut answer) };
        let ran = Instant::now();
        let answer = self.plugin.take(answer);
        let (header, tensors) = wire::decode(answer.into()).map_err(BackendError::Infer)?;
        if let Some(error) = header.error {
            return Err(if header.input_error {
                BackendError::Input(error)
            } else {
                BackendError::Infer(error)
            });
        }
        Ok(Inferred {
            outputs: tensors,
            timings: ComputeTimings {
                input: prepared - start,
                infer: ran - prepared,
                output: ran.elapsed(),
            },
        })
    }
}
