//! candle backend: a model version is a Hugging Face folder as `sentence-transformers` (or
//! `transformers`, for a sequence classifier) saves it, served natively, without Python or
//! an ONNX export. BERT-family encoders (BERT, MiniLM, BGE, E5) on the CPU, in float32.
//!
//! Inputs: `text` (BYTES, one text per row; tokenised here with the folder's
//! `tokenizer.json`, truncated to the model's length, each batch padded to its longest text)
//! or `input_ids` with optional `attention_mask`/`token_type_ids` (INT64, for clients that
//! tokenise themselves). Output: `embedding` (FP32 `[batch, hidden]`, pooled and normalised
//! as the folder declares) or `logits` for `BertForSequenceClassification`.
//!
//! Threads: candle's CPU kernels share one process-wide pool sized by `RAYON_NUM_THREADS`
//! (default: one per core), so `intra_op_thread_count` does not apply per instance.

mod encoder;
mod folder;

use std::path::{Path, PathBuf};

use nexus_models::{Backend, BackendError, BackendFactory, Device, LoadOptions};

pub use encoder::{ATTENTION_MASK, EMBEDDING, INPUT_IDS, LOGITS, TEXT, TOKEN_TYPE_IDS};

/// The backend name a config gives (`backend: "candle"`); Triton has no platform for it.
pub const BACKEND: &str = "candle";

/// The candle entry of the backend table.
#[derive(Debug, Default)]
pub struct CandleRuntime;

impl BackendFactory for CandleRuntime {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn platform(&self) -> &'static str {
        ""
    }

    /// The version folder itself is the model.
    fn model_filename(&self) -> &'static str {
        ""
    }

    fn find_model(&self, dir: &Path) -> Option<PathBuf> {
        folder::recognises(dir).then(|| dir.to_path_buf())
    }

    fn gpu_support(&self) -> Result<String, String> {
        Err("this build runs candle on the CPU only: candle's `cuda` feature needs nvcc (the CUDA toolkit) at build time, which the machines that build Nexus lack".into())
    }

    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn Backend>, BackendError> {
        if let Device::Gpu(id) = options.device {
            return Err(BackendError::NoGpu(format!(
                "GPU {id} requested, but this build of the candle backend runs on the CPU only; use instance_group kind KIND_CPU"
            )));
        }
        let folder = folder::Folder::read(path).map_err(|reason| BackendError::Load {
            path: path.display().to_string(),
            reason,
        })?;
        Ok(Box::new(encoder::Encoder::load(folder)?))
    }
}
