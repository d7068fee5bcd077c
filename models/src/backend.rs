//! The seam between serving and a model runtime. A backend is one loaded instance of
//! a model: serving owns a pool of them and calls `infer` from a dedicated thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ModelConfig;
use crate::tensor::{Tensor, TensorSpec};

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
    /// The model's config as given (before completion from the model), for runtimes whose
    /// model files do not record their inputs and outputs (TorchScript).
    pub config: Arc<ModelConfig>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            intra_op_threads: 0,
            inter_op_threads: 0,
            config: Arc::default(),
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

/// A model runtime: opens models of one Triton backend. Each runtime crate under `backends/`
/// provides one, and the binary lists them in a [`Backends`] table, so neither this crate
/// nor serving names a runtime.
pub trait BackendFactory: Send + Sync {
    /// Triton's `backend` name (`onnxruntime`, `pytorch`, `candle`).
    fn backend(&self) -> &'static str;
    /// Triton's `platform` name (`onnxruntime_onnx`, `pytorch_libtorch`); empty where
    /// Triton has none.
    fn platform(&self) -> &'static str;
    /// The model in a version folder when the config names no `default_model_filename`,
    /// relative to that folder; empty when the version folder itself is the model.
    fn model_filename(&self) -> &'static str;
    /// The model among files gathered in `dir` (a version folder, a registry download):
    /// a file, or `dir` itself for a runtime whose model is a folder; `None` when none of
    /// them is this runtime's.
    fn find_model(&self, dir: &Path) -> Option<PathBuf>;
    /// Whether a model needs a config that lists its inputs and outputs, because its files
    /// do not record them (TorchScript).
    fn needs_config(&self) -> bool {
        false
    }
    /// Opens one instance of the model at `path` (from [`BackendFactory::model_path`]).
    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn Backend>, BackendError>;
    /// Whether this installation of the runtime can run models on NVIDIA GPUs, found
    /// without loading it (`nexus gpu`): what it found, or why not and which install step
    /// fixes it.
    fn gpu_support(&self) -> Result<String, String> {
        Err(format!("the {} runtime has no GPU support", self.backend()))
    }

    /// Where the model of `version_dir` is: the config's `default_model_filename` when it
    /// names one, else the runtime's [`BackendFactory::model_filename`].
    fn model_path(&self, version_dir: &Path, default_model_filename: &str) -> PathBuf {
        match (default_model_filename, self.model_filename()) {
            ("", "") => version_dir.to_path_buf(),
            ("", file) | (file, _) => version_dir.join(file),
        }
    }
}

/// The model file of a runtime whose models are single files: `dir/preferred` when present,
/// else the only file in `dir` with `preferred`'s extension (MLflow's flavours and exports
/// often use other names).
pub fn find_model_file(dir: &Path, preferred: &str) -> Option<PathBuf> {
    let path = dir.join(preferred);
    if path.is_file() {
        return Some(path);
    }
    let extension = Path::new(preferred).extension()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension() == Some(extension))
        .collect();
    (found.len() == 1).then(|| found.remove(0))
}

/// Finds a runtime library installed by one of the project's scripts: `$env` when set,
/// else `relative` (such as `.nexus/lib/libonnxruntime.so`) under the working directory, the
/// executable's directory or any of their parents.
pub fn locate_library(env: &str, relative: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf)),
    ];
    starts
        .iter()
        .flatten()
        .flat_map(|start| start.ancestors())
        .map(|dir| dir.join(relative))
        .find(|candidate| candidate.exists())
}

/// The runtimes this process can serve with, in order of preference when a folder could
/// be served by several.
#[derive(Clone, Default)]
pub struct Backends {
    factories: Vec<Arc<dyn BackendFactory>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.factories.iter().map(|b| b.backend()))
            .finish()
    }
}

impl Backends {
    /// A table of `factories`.
    pub fn new(factories: Vec<Arc<dyn BackendFactory>>) -> Self {
        Backends { factories }
    }

    /// Every runtime, in order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn BackendFactory>> {
        self.factories.iter()
    }

    /// The runtime a config names by `platform` or `backend`; when it names neither, the
    /// first whose model is among the files of `version_dir`.
    pub fn resolve(
        &self,
        platform: &str,
        backend: &str,
        version_dir: Option<&Path>,
    ) -> Result<&Arc<dyn BackendFactory>, String> {
        if platform.is_empty() && backend.is_empty() {
            let found = version_dir.and_then(|dir| self.detect(dir)).map(|(f, _)| f);
            return found.ok_or_else(|| {
                format!(
                    "the config names no platform or backend and no runtime recognises the model files; expected {}",
                    self.expected_files()
                )
            });
        }
        let named = self.factories.iter().find(|f| {
            (platform.is_empty() || f.platform() == platform)
                && (backend.is_empty() || f.backend() == backend)
        });
        named.ok_or_else(|| {
            format!(
                "platform '{platform}' / backend '{backend}' is not served by this build; supported: {}",
                self.supported()
            )
        })
    }

    /// The runtime whose model is among the files of `dir`, if any.
    pub fn detect(&self, dir: &Path) -> Option<(&Arc<dyn BackendFactory>, PathBuf)> {
        self.factories
            .iter()
            .find_map(|f| f.find_model(dir).map(|model| (f, model)))
    }

    /// `backend 'x' (platform 'y')` for every runtime, for messages.
    pub fn supported(&self) -> String {
        let names: Vec<String> = self
            .factories
            .iter()
            .map(|f| match f.platform() {
                "" => format!("backend '{}'", f.backend()),
                p => format!("platform '{p}' / backend '{}'", f.backend()),
            })
            .collect();
        names.join(", ")
    }

    /// The model files the runtimes look for (`model.onnx or …`), for messages.
    pub fn expected_files(&self) -> String {
        let names: Vec<String> = self
            .factories
            .iter()
            .map(|f| match f.model_filename() {
                "" => format!("a {} model folder", f.backend()),
                file => file.to_string(),
            })
            .collect();
        names.join(" or ")
    }
}

/// A table of runtimes that recognise one file name each and open nothing, for testing
/// the table and the packaging logic on their own.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub struct FileRuntime(pub &'static str, pub &'static str, pub &'static str);

    impl BackendFactory for FileRuntime {
        fn backend(&self) -> &'static str {
            self.0
        }
        fn platform(&self) -> &'static str {
            self.1
        }
        /// `config.json` marks a folder model, as candle's.
        fn model_filename(&self) -> &'static str {
            if self.2 == "config.json" { "" } else { self.2 }
        }
        fn find_model(&self, dir: &Path) -> Option<PathBuf> {
            let path = dir.join(self.2);
            path.exists().then(|| {
                if self.2 == "config.json" {
                    dir.to_path_buf()
                } else {
                    path
                }
            })
        }
        fn needs_config(&self) -> bool {
            self.0 == "pytorch"
        }
        fn load(&self, path: &Path, _: &LoadOptions) -> Result<Box<dyn Backend>, BackendError> {
            Err(BackendError::Runtime(format!(
                "{} cannot open {}",
                self.0,
                path.display()
            )))
        }
    }

    /// ONNX-, PyTorch- and candle-like runtimes, in that order.
    pub fn table() -> Backends {
        Backends::new(vec![
            Arc::new(FileRuntime("onnxruntime", "onnxruntime_onnx", "model.onnx")),
            Arc::new(FileRuntime("pytorch", "pytorch_libtorch", "model.pt")),
            Arc::new(FileRuntime("candle", "", "config.json")),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::table;

    #[test]
    fn a_config_names_its_runtime_by_platform_or_backend() {
        let t = table();
        let name = |p: &str, b: &str| t.resolve(p, b, None).map(|f| f.backend());
        assert_eq!(name("pytorch_libtorch", ""), Ok("pytorch"));
        assert_eq!(name("", "pytorch"), Ok("pytorch"));
        assert_eq!(name("onnxruntime_onnx", "onnxruntime"), Ok("onnxruntime"));
        assert_eq!(name("", "candle"), Ok("candle"));
        let err = name("tensorflow_savedmodel", "").unwrap_err();
        assert!(err.contains("not served by this build"), "{err}");
        assert!(err.contains("backend 'candle'"), "{err}");
        assert!(
            name("onnxruntime_onnx", "pytorch").is_err(),
            "contradicting names"
        );
        assert!(name("candle", "").is_err(), "candle has no platform name");
    }

    #[test]
    fn a_config_that_names_none_is_served_by_the_runtime_of_its_files() {
        let t = table();
        let dir = tempfile::tempdir().unwrap();
        let err = t.resolve("", "", Some(dir.path())).err().unwrap();
        assert!(
            err.contains("model.onnx or model.pt or a candle model folder"),
            "{err}"
        );
        std::fs::write(dir.path().join("model.pt"), b"x").unwrap();
        assert_eq!(
            t.resolve("", "", Some(dir.path())).unwrap().backend(),
            "pytorch"
        );
        let (runtime, model) = t.detect(dir.path()).unwrap();
        assert_eq!(
            (runtime.backend(), model),
            ("pytorch", dir.path().join("model.pt"))
        );
        assert_eq!(
            runtime.model_path(dir.path(), ""),
            dir.path().join("model.pt")
        );
        assert_eq!(
            runtime.model_path(dir.path(), "net.pt"),
            dir.path().join("net.pt")
        );
    }
}
