//! PyTorch backend (Triton's `pytorch_libtorch`): TorchScript files (`<version>/model.pt`)
//! run by libtorch.
//!
//! libtorch is large (~0.5 GB of libraries, ~100 ms and tens of MB to initialise), so it is
//! not linked into `nexus`: the runtime is a plugin library, `libnexus_torch.so`, built
//! with `tch` against libtorch by `scripts/install-torch-backend.sh` and opened with
//! `libloading` the first time a PyTorch model loads, as Triton opens
//! `libtriton_pytorch.so`. A server with only ONNX or candle models never opens it; one
//! without it serves those models and reports its PyTorch models UNAVAILABLE with the
//! reason and the install script. The plugin and `nexus` exchange one byte buffer each
//! way per call ([`wire`]), so they share no Rust type layout.
//!
//! TorchScript does not record input types or shapes, so a PyTorch model needs a
//! `config.pbtxt` with its inputs and outputs (Triton requires the same). Inputs are bound
//! to `forward`'s arguments by the `NAME__<index>` convention (`INPUT__0`, …), else in the
//! config's order; outputs `NAME__<index>` are elements of a tuple or list return, other
//! names keys of a dict return, and a lone tensor return is the one output.
//!
//! Threads: `intra_op_thread_count` (Triton's `INTRA_OP_THREAD_COUNT` parameter too) sets
//! libtorch's intra-op pool, which is process-wide: the last instance loaded sets it for
//! all. libtorch's inter-op pool can be sized only once, before any work: the plugin sets
//! it to 1 when it starts (Nexus runs instances on its own threads), unless
//! `NEXUS_TORCH_INTER_OP_THREADS` says otherwise.

mod plugin;
pub mod wire;

use std::path::{Path, PathBuf};

use nexus_models::{Backend, BackendError, BackendFactory, LoadOptions};

pub use plugin::{PLUGIN_ENV, PLUGIN_FILE};

/// The platform Triton gives TorchScript models.
pub const PLATFORM: &str = "pytorch_libtorch";
/// The backend name Triton gives them.
pub const BACKEND: &str = "pytorch";
/// The model file of a version folder when the config names none.
pub const MODEL_FILE: &str = "model.pt";

/// The PyTorch entry of the backend table. Creating it loads nothing.
#[derive(Debug, Default)]
pub struct TorchRuntime {
    /// The plugin to open instead of searching for one.
    plugin: Option<PathBuf>,
}

impl TorchRuntime {
    /// A factory that opens `plugin` (or searches, when `None`) with the first model.
    pub fn new(plugin: Option<PathBuf>) -> Self {
        TorchRuntime { plugin }
    }
}

impl BackendFactory for TorchRuntime {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn model_filename(&self) -> &'static str {
        MODEL_FILE
    }

    /// `model.pt` when present, else the only `.pt` file.
    fn find_model(&self, dir: &Path) -> Option<PathBuf> {
        nexus_models::backend::find_model_file(dir, MODEL_FILE)
    }

    fn needs_config(&self) -> bool {
        true
    }

    /// Found without loading libtorch: the plugin, then `libtorch_cuda.so` in the libtorch
    /// the plugin was linked against (the folder in its RUNPATH, which the plugin's build puts
    /// there), else in `$LIBTORCH`.
    fn gpu_support(&self) -> Result<String, String> {
        let plugin = plugin::locate(self.plugin.as_deref())?;
        let libtorch = linked_libtorch(&plugin)
            .or_else(|| std::env::var_os("LIBTORCH").map(|l| PathBuf::from(l).join("lib")))
            .ok_or_else(|| {
                format!(
                    "cannot tell which libtorch {} was built against",
                    plugin.display()
                )
            })?;
        let cuda = libtorch.join("libtorch_cuda.so");
        if cuda.exists() {
            Ok(format!("libtorch with CUDA ({})", cuda.display()))
        } else {
            Err(format!(
                "{} was built against libtorch for the CPU ({}: scripts/install-libtorch.sh leaves out libtorch_cuda.so and its ~2 GB of CUDA libraries); on a GPU machine run scripts/install-torch-backend.sh --gpu",
                plugin.display(),
                libtorch.display()
            ))
        }
    }

    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn Backend>, BackendError> {
        let config = &options.config;
        if config.input.is_empty() || config.output.is_empty() {
            return Err(BackendError::Load {
                path: path.display().to_string(),
                reason: "a PyTorch model needs a config.pbtxt that lists its inputs and outputs (name, data_type, dims): a TorchScript file does not record them".into(),
            });
        }
        let plugin = plugin::Plugin::get(self.plugin.as_deref())?;
        Ok(Box::new(plugin.load(path, options)?))
    }
}

/// The folder of `libtorch.so` in the RUNPATH (or RPATH) of the ELF file at `plugin`.
fn linked_libtorch(plugin: &Path) -> Option<PathBuf> {
    use object::read::elf::ElfFile64;
    let data = std::fs::read(plugin).ok()?;
    let file = ElfFile64::<object::Endianness>::parse(&*data).ok()?;
    let dynamic = file
        .elf_section_table()
        .dynamic_table(file.endian(), &*data)
        .ok()?;
    dynamic
        .iter()
        .filter(|d| d.tag == object::elf::DT_RUNPATH || d.tag == object::elf::DT_RPATH)
        .filter_map(|d| dynamic.string(d).ok())
        .filter_map(|paths| std::str::from_utf8(paths).ok())
        .flat_map(|paths| paths.split(':'))
        .map(PathBuf::from)
        .find(|folder| folder.join("libtorch.so").exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_models::pb;
    use std::sync::Arc;

    #[test]
    fn a_model_without_inputs_in_its_config_is_refused_before_the_plugin() {
        let runtime = TorchRuntime::new(Some("/nonexistent/libnexus_torch.so".into()));
        let err = runtime
            .load(Path::new("model.pt"), &LoadOptions::default())
            .err()
            .expect("no config, no model");
        assert!(err.to_string().contains("needs a config.pbtxt"), "{err}");

        let config = pb::ModelConfig {
            input: vec![pb::ModelInput {
                name: "INPUT__0".into(),
                ..Default::default()
            }],
            output: vec![pb::ModelOutput {
                name: "OUTPUT__0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let options = LoadOptions {
            config: Arc::new(config),
            ..LoadOptions::default()
        };
        let err = runtime
            .load(Path::new("model.pt"), &options)
            .err()
            .expect("no plugin there");
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/libnexus_torch.so")
                && message.contains("scripts/install-torch-backend.sh"),
            "{message}"
        );
    }

    #[test]
    fn finds_the_torchscript_file() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = TorchRuntime::default();
        assert_eq!(runtime.find_model(dir.path()), None);
        std::fs::write(dir.path().join("traced.pt"), b"x").unwrap();
        assert_eq!(
            runtime.find_model(dir.path()),
            Some(dir.path().join("traced.pt"))
        );
        std::fs::write(dir.path().join(MODEL_FILE), b"x").unwrap();
        assert_eq!(
            runtime.find_model(dir.path()),
            Some(dir.path().join(MODEL_FILE))
        );
    }
}
