//! A loaded model version: checks a request against the model's config (names,
//! datatypes, shapes, batch size), applies `reshape`, runs it through the version's
//! scheduler and records statistics; and Triton's metadata and statistics messages of
//! loaded versions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use nexus_models::pb::{ModelInput, ModelOutput};
use nexus_models::tensor::element_count;
use nexus_models::{DataType, ModelConfig, Tensor};

use crate::batcher::Batcher;
use crate::error::ServingError;
use crate::infer::{InferRequest, InferResponse};
use crate::metrics::{Duration64, VersionStats};
use crate::pb::model_metadata_response::TensorMetadata;
use crate::pb::{self, ModelMetadataResponse};
use crate::queue::{Done, Work};
use crate::scheduler::Scheduler;

/// A loaded, ready model version.
pub struct LoadedVersion {
    pub name: String,
    pub version: u64,
    pub config: Arc<ModelConfig>,
    pub stats: Arc<VersionStats>,
    pub(crate) scheduler: Scheduler,
}

impl LoadedVersion {
    fn batched(&self) -> bool {
        self.config.max_batch_size > 0
    }

    fn outward_shape(&self, dims: &[i64]) -> Vec<i64> {
        let mut shape = Vec::with_capacity(dims.len() + 1);
        if self.batched() {
            shape.push(-1);
        }
        shape.extend_from_slice(dims);
        shape
    }

    /// The dynamic batcher, whose delay and preferred batch size can be tuned live.
    pub fn batcher(&self) -> Option<&Batcher> {
        self.scheduler.batcher()
    }

    /// Model metadata (V2 `GET /v2/models/{m}` and gRPC `ModelMetadata`) listing `versions`.
    pub fn metadata(&self, versions: &[u64]) -> ModelMetadataResponse {
        let tensor = |name: &str, data_type: i32, dims: &[i64]| TensorMetadata {
            name: name.to_string(),
            datatype: config_datatype(data_type)
                .map_or("INVALID", DataType::as_str)
                .to_string(),
            shape: self.outward_shape(dims),
        };
        ModelMetadataResponse {
            name: self.name.clone(),
            versions: versions.iter().map(u64::to_string).collect(),
            platform: self.config.platform.clone(),
            inputs: self
                .config
                .input
                .iter()
                .map(|i| tensor(&i.name, i.data_type, &i.dims))
                .collect(),
            outputs: self
                .config
                .output
                .iter()
                .map(|o| tensor(&o.name, o.data_type, &o.dims))
                .collect(),
        }
    }

    /// Validates and runs one request.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, ServingError> {
        let start = Instant::now();
        let result = self.run(request).await;
        match &result {
            Ok((_, rows, done)) => {
                self.stats
                    .record_success(*rows, start.elapsed(), done.queue, done.compute);
            }
            Err(_) => self.stats.record_failure(start.elapsed()),
        }
        result.map(|(response, _, _)| response)
    }

    async fn run(&self, request: InferRequest) -> Result<(InferResponse, u64, Done), ServingError> {
        let (inputs, rows) = self.check_inputs(request.inputs)?;
        let outputs = self.check_outputs(&request.outputs)?;
        let names = outputs.iter().map(|o| o.name.clone()).collect();
        let mut done = self
            .scheduler
            .run(Work {
                inputs,
                outputs: names,
                rows,
            })
            .await?;
        let tensors = std::mem::take(&mut done.outputs)
            .into_iter()
            .zip(&outputs)
            .map(|(t, o)| self.to_outward(t, o, rows))
            .collect();
        let response = InferResponse {
            model_name: self.name.clone(),
            model_version: self.version.to_string(),
            id: request.id,
            outputs: tensors,
            queue: done.queue,
            batch_size: done.batch_rows,
        };
        Ok((response, rows, done))
    }

    /// Checks each input against the config and returns them in the config's order,
    /// reshaped for the model, with the batch size.
    fn check_inputs(&self, mut given: Vec<Tensor>) -> Result<(Vec<Tensor>, u64), ServingError> {
        let model = &self.name;
        for (i, t) in given.iter().enumerate() {
            if !self.config.input.iter().any(|c| c.name == t.name) {
                return Err(invalid(format!(
                    "unexpected inference input '{}' for model '{model}'",
                    t.name
                )));
            }
            if given[..i].iter().any(|o| o.name == t.name) {
                return Err(invalid(format!(
                    "input '{}' is given more than once",
                    t.name
                )));
            }
        }
        let mut batch: Option<i64> = None;
        let mut ordered = Vec::with_capacity(self.config.input.len());
        for spec in &self.config.input {
            let Some(pos) = given.iter().position(|t| t.name == spec.name) else {
                if spec.optional {
                    continue;
                }
                return Err(invalid(format!(
                    "missing input '{}' for model '{model}'",
                    spec.name
                )));
            };
            let tensor = given.swap_remove(pos);
            let tensor = self.check_input(tensor, spec, &mut batch)?;
            ordered.push(tensor);
        }
        let batch = batch.map_or(1, |b| b as u64);
        Ok((ordered, batch))
    }

    fn check_input(
        &self,
        mut tensor: Tensor,
        spec: &ModelInput,
        batch: &mut Option<i64>,
    ) -> Result<Tensor, ServingError> {
        let model = &self.name;
        let expected = config_datatype(spec.data_type);
        if Some(tensor.datatype()) != expected {
            return Err(invalid(format!(
                "input '{}' has datatype {} but model '{model}' expects {}",
                tensor.name,
                tensor.datatype(),
                expected.map_or("an unsupported type", DataType::as_str)
            )));
        }
        let wanted = self.outward_shape(&spec.dims);
        let fits = tensor.shape.len() == wanted.len()
            && tensor
                .shape
                .iter()
                .zip(&wanted)
                .all(|(g, w)| *w < 0 || g == w);
        if !fits {
            return Err(invalid(format!(
                "input '{}' has shape {:?} but model '{model}' expects {:?} (-1 is any size)",
                tensor.name, tensor.shape, wanted
            )));
        }
        if self.batched() {
            let b = tensor.shape[0];
            let max = self.config.max_batch_size;
            if b < 1 || b > i64::from(max) {
                return Err(invalid(format!(
                    "input '{}' has batch size {b}; model '{model}' accepts 1 to {max}",
                    tensor.name
                )));
            }
            match batch {
                Some(other) if *other != b => {
                    return Err(invalid(format!(
                        "input '{}' has batch size {b} but another input has {other}; all inputs must agree",
                        tensor.name
                    )));
                }
                _ => *batch = Some(b),
            }
        }
        if let Some(reshape) = &spec.reshape {
            let batch = self.batched().then(|| tensor.shape[0]);
            tensor.shape =
                fit_shape(batch, &reshape.shape, tensor.data.len()).ok_or_else(|| {
                    invalid(format!(
                        "input '{}' with shape {:?} cannot be reshaped to {:?}",
                        tensor.name, tensor.shape, reshape.shape
                    ))
                })?;
        }
        Ok(tensor)
    }

    fn check_outputs(&self, requested: &[String]) -> Result<Vec<ModelOutput>, ServingError> {
        if requested.is_empty() {
            return Ok(self.config.output.clone());
        }
        let mut outputs = Vec::with_capacity(requested.len());
        for (i, name) in requested.iter().enumerate() {
            if requested[..i].contains(name) {
                return Err(invalid(format!(
                    "output '{name}' is requested more than once"
                )));
            }
            let spec = self
                .config
                .output
                .iter()
                .find(|o| &o.name == name)
                .ok_or_else(|| {
                    invalid(format!(
                        "unexpected inference output '{name}' for model '{}'",
                        self.name
                    ))
                })?;
            outputs.push(spec.clone());
        }
        Ok(outputs)
    }

    /// Gives an output the shape the config declares when the config reshapes it.
    fn to_outward(&self, mut tensor: Tensor, spec: &ModelOutput, batch: u64) -> Tensor {
        if spec.reshape.is_some() {
            let batch = self.batched().then_some(batch as i64);
            if let Some(shape) = fit_shape(batch, &spec.dims, tensor.data.len()) {
                tensor.shape = shape;
            }
        }
        tensor
    }
}

/// `dims` behind the batch dimension (when there is one), with a -1 resolved so the
/// shape holds `len` elements; `None` when no such shape exists.
fn fit_shape(batch: Option<i64>, dims: &[i64], len: usize) -> Option<Vec<i64>> {
    let mut shape: Vec<i64> = batch.into_iter().collect();
    let per_item = len as i64 / batch.unwrap_or(1).max(1);
    let known: i64 = dims.iter().filter(|d| **d >= 0).product();
    shape.extend(dims.iter().map(|d| {
        if *d < 0 && known > 0 {
            per_item / known
        } else {
            *d
        }
    }));
    (element_count(&shape) == Some(len)).then_some(shape)
}

fn config_datatype(data_type: i32) -> Option<DataType> {
    nexus_models::pb::DataType::try_from(data_type)
        .ok()
        .and_then(DataType::from_config)
}

fn invalid(message: String) -> ServingError {
    ServingError::InvalidArgument(message)
}

/// Triton's statistics message for `versions` (HTTP `/stats` serialises the same message).
/// It reads loaded versions, so it lives here rather than in `metrics.rs`, which versions
/// record into.
pub fn statistics(versions: &[Arc<LoadedVersion>]) -> pb::ModelStatisticsResponse {
    let duration = |d: &Duration64| {
        let (count, ns) = d.get();
        Some(pb::StatisticDuration { count, ns })
    };
    let model_stats = versions
        .iter()
        .map(|v| {
            let s = &v.stats;
            let batch_stats = s
                .batch_totals()
                .into_iter()
                .map(|(batch_size, t)| pb::InferBatchStatistics {
                    batch_size,
                    compute_input: Some(pb::StatisticDuration {
                        count: t.count,
                        ns: t.input_ns,
                    }),
                    compute_infer: Some(pb::StatisticDuration {
                        count: t.count,
                        ns: t.infer_ns,
                    }),
                    compute_output: Some(pb::StatisticDuration {
                        count: t.count,
                        ns: t.output_ns,
                    }),
                })
                .collect();
            pb::ModelStatistics {
                name: v.name.clone(),
                version: v.version.to_string(),
                last_inference: s.last_inference_ms.load(Ordering::Relaxed),
                inference_count: s.inference_count.load(Ordering::Relaxed),
                execution_count: s.execution_count.load(Ordering::Relaxed),
                inference_stats: Some(pb::InferStatistics {
                    success: duration(&s.success),
                    fail: duration(&s.fail),
                    queue: duration(&s.queue),
                    compute_input: duration(&s.compute_input),
                    compute_infer: duration(&s.compute_infer),
                    compute_output: duration(&s.compute_output),
                    cache_hit: Some(pb::StatisticDuration::default()),
                    cache_miss: Some(pb::StatisticDuration::default()),
                }),
                batch_stats,
            }
        })
        .collect();
    pb::ModelStatisticsResponse { model_stats }
}
