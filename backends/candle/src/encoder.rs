//! One loaded encoder: tokenises a batch of texts (or takes token ids), runs candle's BERT
//! on the CPU, and pools, normalises or classifies as its folder declares.

use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor as CTensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::BertModel;
use nexus_models::{
    Backend, BackendError, ComputeTimings, DataType, Inferred, Tensor, TensorData, TensorSpec,
};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::folder::{Folder, Head, Pooling, TOKENIZER, WEIGHTS};

/// Input names: texts, or what a client that tokenises itself sends instead.
pub const TEXT: &str = "text";
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
/// Output names, by head.
pub const EMBEDDING: &str = "embedding";
pub const LOGITS: &str = "logits";

/// `BertForSequenceClassification`'s head: tanh(dense(CLS)) then a linear classifier.
struct Classifier {
    pooler: Linear,
    classifier: Linear,
}

pub struct Encoder {
    folder: Folder,
    model: BertModel,
    classifier: Option<Classifier>,
    tokenizer: Tokenizer,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl Encoder {
    pub fn load(folder: Folder) -> Result<Encoder, BackendError> {
        let fail = |reason: String| BackendError::Load {
            path: folder.dir.display().to_string(),
            reason,
        };
        let device = Device::Cpu;
        let weights = folder.dir.join(WEIGHTS);
        // SAFETY: the weights file is memory-mapped read-only; like every runtime that maps
        // model files, this relies on nobody truncating it while the model is loaded (the
        // repository and the model cache replace files by renaming, never in place).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| fail(format!("cannot read {}: {e}", weights.display())))?;
        let model = BertModel::load(vb.clone(), &folder.bert)
            .map_err(|e| fail(format!("the weights are not a BERT encoder: {e}")))?;
        let classifier = match folder.head {
            Head::Classification { labels } => {
                let hidden = folder.bert.hidden_size;
                let pooler = candle_nn::linear(hidden, hidden, vb.pp("bert.pooler.dense"))
                    .map_err(|e| fail(format!("no classification pooler: {e}")))?;
                let classifier = candle_nn::linear(hidden, labels, vb.pp("classifier"))
                    .map_err(|e| fail(format!("no classifier for {labels} labels: {e}")))?;
                Some(Classifier { pooler, classifier })
            }
            Head::Embedding { .. } => None,
        };
        let tokenizer = tokenizer(&folder).map_err(fail)?;
        let width = folder.output_width() as i64;
        let ids = |name: &str| TensorSpec {
            name: name.to_string(),
            datatype: DataType::I64,
            shape: vec![-1, -1],
            optional: true,
        };
        let inputs = vec![
            TensorSpec {
                name: TEXT.to_string(),
                datatype: DataType::Bytes,
                shape: vec![-1, 1],
                optional: true,
            },
            ids(INPUT_IDS),
            ids(ATTENTION_MASK),
            ids(TOKEN_TYPE_IDS),
        ];
        let output = match folder.head {
            Head::Embedding { .. } => EMBEDDING,
            Head::Classification { .. } => LOGITS,
        };
        let outputs = vec![TensorSpec {
            name: output.to_string(),
            datatype: DataType::F32,
            shape: vec![-1, width],
            optional: false,
        }];
        Ok(Encoder {
            folder,
            model,
            classifier,
            tokenizer,
            inputs,
            outputs,
        })
    }

    /// Token ids, attention mask and token types (`[batch, length]`, u32) for the request.
    fn encode(&self, inputs: &[Tensor]) -> Result<[CTensor; 3], BackendError> {
        let find = |name: &str| inputs.iter().find(|t| t.name == name);
        if let Some(text) = find(TEXT) {
            return self.tokenize(text);
        }
        let ids = find(INPUT_IDS).ok_or_else(|| {
            BackendError::Input(format!(
                "give either '{TEXT}' (BYTES, one text per row) or '{INPUT_IDS}' (INT64 token ids)"
            ))
        })?;
        let shape = match ids.shape.as_slice() {
            [b, l] if *b > 0 && *l > 0 => (*b as usize, *l as usize),
            other => {
                return Err(BackendError::Input(format!(
                    "'{INPUT_IDS}' must be [batch, length], not {other:?}"
                )));
            }
        };
        if shape.1 > self.folder.max_length {
            return Err(BackendError::Input(format!(
                "'{INPUT_IDS}' has {} tokens; this model takes at most {}",
                shape.1, self.folder.max_length
            )));
        }
        let vocab = self.folder.bert.vocab_size as i64;
        let types = self.folder.bert.type_vocab_size as i64;
        let ids_tensor = ids_of(ids, INPUT_IDS, shape, vocab)?;
        let mask = match find(ATTENTION_MASK) {
            Some(t) => ids_of(t, ATTENTION_MASK, shape, 2)?,
            None => ones(shape)?,
        };
        let token_types = match find(TOKEN_TYPE_IDS) {
            Some(t) => ids_of(t, TOKEN_TYPE_IDS, shape, types)?,
            None => ones(shape)?.zeros_like().map_err(infer)?,
        };
        Ok([ids_tensor, mask, token_types])
    }

    fn tokenize(&self, text: &Tensor) -> Result<[CTensor; 3], BackendError> {
        let TensorData::Bytes(items) = &text.data else {
            return Err(BackendError::Input(format!(
                "'{TEXT}' must be BYTES (one UTF-8 text per row)"
            )));
        };
        let texts = items
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let text = std::str::from_utf8(b).map_err(|_| {
                    BackendError::Input(format!("'{TEXT}' element {i} is not UTF-8"))
                })?;
                Ok(if self.folder.lowercase {
                    text.to_lowercase()
                } else {
                    text.to_string()
                })
            })
            .collect::<Result<Vec<String>, BackendError>>()?;
        if texts.is_empty() {
            return Err(BackendError::Input(format!("'{TEXT}' holds no text")));
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| BackendError::Input(format!("cannot tokenise '{TEXT}': {e}")))?;
        let length = encodings.first().map_or(0, |e| e.get_ids().len());
        let shape = (encodings.len(), length);
        let column = |pick: fn(&tokenizers::Encoding) -> &[u32]| {
            let flat: Vec<u32> = encodings.iter().flat_map(|e| pick(e).to_vec()).collect();
            CTensor::from_vec(flat, shape, &Device::Cpu).map_err(infer)
        };
        Ok([
            column(tokenizers::Encoding::get_ids)?,
            column(tokenizers::Encoding::get_attention_mask)?,
            column(tokenizers::Encoding::get_type_ids)?,
        ])
    }

    /// The output rows `[batch, width]` for encoded inputs.
    fn run(&self, [ids, mask, types]: &[CTensor; 3]) -> candle_core::Result<CTensor> {
        let hidden = self.model.forward(ids, types, Some(mask))?;
        match (&self.folder.head, &self.classifier) {
            (Head::Classification { .. }, Some(head)) => {
                let cls = hidden.i((.., 0))?;
                let pooled = head.pooler.forward(&cls)?.tanh()?;
                head.classifier.forward(&pooled)
            }
            (Head::Embedding { pooling, normalize }, _) => {
                let mask = mask.to_dtype(DType::F32)?;
                let parts = pooling
                    .iter()
                    .map(|mode| pool(*mode, &hidden, &mask))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let pooled = CTensor::cat(&parts, 1)?;
                if *normalize {
                    let norm = pooled
                        .sqr()?
                        .sum_keepdim(1)?
                        .sqrt()?
                        .clamp(1e-12f32, f32::MAX)?;
                    pooled.broadcast_div(&norm)
                } else {
                    Ok(pooled)
                }
            }
            (Head::Classification { .. }, None) => {
                candle_core::bail!("the classifier head was not loaded")
            }
        }
    }
}

/// One vector per row from token embeddings `[b, l, h]` and the mask `[b, l]` (f32), as
/// sentence-transformers' Pooling module computes it.
fn pool(mode: Pooling, hidden: &CTensor, mask: &CTensor) -> candle_core::Result<CTensor> {
    let expanded = mask.unsqueeze(2)?;
    let counts = || mask.sum_keepdim(1)?.clamp(1e-9f32, f32::MAX);
    match mode {
        Pooling::Cls => hidden.i((.., 0)),
        Pooling::Mean => hidden
            .broadcast_mul(&expanded)?
            .sum(1)?
            .broadcast_div(&counts()?),
        Pooling::MeanSqrtLen => hidden
            .broadcast_mul(&expanded)?
            .sum(1)?
            .broadcast_div(&counts()?.sqrt()?),
        Pooling::Max => {
            // Padding positions are pushed to -1e9 first, as sentence-transformers does.
            let penalty = ((expanded - 1.0)? * 1e9)?;
            hidden.broadcast_add(&penalty)?.max(1)
        }
        Pooling::LastToken => {
            let last = (mask.sum(1)? - 1.0)?
                .clamp(0f32, f32::MAX)?
                .to_dtype(DType::U32)?;
            let (b, _, h) = hidden.dims3()?;
            let index = last
                .reshape((b, 1, 1))?
                .broadcast_as((b, 1, h))?
                .contiguous()?;
            hidden.gather(&index, 1)?.squeeze(1)
        }
    }
}

/// The folder's tokenizer, truncating to the model's length and padding each batch to its
/// longest text, so requests of different lengths batch together.
fn tokenizer(folder: &Folder) -> Result<Tokenizer, String> {
    let path = folder.dir.join(TOKENIZER);
    let mut tokenizer =
        Tokenizer::from_file(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let padding = match tokenizer.get_padding() {
        Some(existing) => PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..existing.clone()
        },
        None => PaddingParams {
            pad_id: folder.bert.pad_token_id as u32,
            ..PaddingParams::default()
        },
    };
    tokenizer.with_padding(Some(padding));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: folder.max_length,
            ..TruncationParams::default()
        }))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(tokenizer)
}

/// An INT64 `[b, l]` input as u32 ids, each checked to be below `bound`.
fn ids_of(
    t: &Tensor,
    name: &str,
    shape: (usize, usize),
    bound: i64,
) -> Result<CTensor, BackendError> {
    let TensorData::I64(values) = &t.data else {
        return Err(BackendError::Input(format!("'{name}' must be INT64")));
    };
    if t.shape.len() != 2 || t.shape[0] as usize != shape.0 || t.shape[1] as usize != shape.1 {
        return Err(BackendError::Input(format!(
            "'{name}' has shape {:?} but '{INPUT_IDS}' has [{}, {}]",
            t.shape, shape.0, shape.1
        )));
    }
    let ids = values
        .iter()
        .map(|v| {
            (0..bound).contains(v).then_some(*v as u32).ok_or_else(|| {
                BackendError::Input(format!("'{name}' holds {v}, outside 0..{bound}"))
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    CTensor::from_vec(ids, shape, &Device::Cpu).map_err(infer)
}

fn ones(shape: (usize, usize)) -> Result<CTensor, BackendError> {
    CTensor::ones(shape, DType::U32, &Device::Cpu).map_err(infer)
}

fn infer(e: candle_core::Error) -> BackendError {
    BackendError::Infer(e.to_string())
}

impl Backend for Encoder {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn infer(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Inferred, BackendError> {
        let start = Instant::now();
        let encoded = self.encode(inputs)?;
        let prepared = Instant::now();
        let rows = self.run(&encoded).map_err(infer)?;
        let ran = Instant::now();
        let (batch, width) = rows.dims2().map_err(infer)?;
        let values: Vec<f32> = rows
            .flatten_all()
            .and_then(|r| r.to_vec1())
            .map_err(infer)?;
        let name = &self.outputs[0].name;
        let tensors = outputs
            .iter()
            .map(|wanted| {
                if wanted != name {
                    return Err(BackendError::Input(format!(
                        "this model has no output '{wanted}' (it has '{name}')"
                    )));
                }
                Tensor::new(
                    name.clone(),
                    vec![batch as i64, width as i64],
                    TensorData::F32(values.clone()),
                )
                .map_err(|e| BackendError::Infer(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
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
