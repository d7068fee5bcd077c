//! Triton's `optimization { execution_accelerators { … } }` for ONNX models, read as Triton's
//! ONNX Runtime backend reads it: on a GPU instance, `gpu_execution_accelerator [{ name:
//! "tensorrt" … }]` puts the TensorRT execution provider in front of CUDA (nodes TensorRT
//! cannot take fall back to CUDA). A CPU instance ignores GPU accelerators, as in Triton.
//!
//! Anything else named there is refused with the reason rather than silently dropped: a user
//! who asked for TensorRT and got CUDA would only find out from the latency.

use nexus_models::ModelConfig;
use nexus_models::pb::model_optimization_policy::execution_accelerators::Accelerator;

/// The TensorRT execution provider's settings, from the accelerator's `parameters`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorRtSettings {
    pub fp16: bool,
    pub int8: bool,
    pub max_workspace_size: Option<usize>,
    pub min_subgraph_size: Option<usize>,
    pub max_partition_iterations: Option<u32>,
    pub engine_cache: bool,
    pub engine_cache_path: Option<String>,
}

/// The TensorRT settings `config` asks for on a GPU instance, if it asks for TensorRT.
pub fn tensorrt(config: &ModelConfig) -> Result<Option<TensorRtSettings>, String> {
    let Some(accelerators) = config
        .optimization
        .as_ref()
        .and_then(|o| o.execution_accelerators.as_ref())
    else {
        return Ok(None);
    };
    if let Some(cpu) = accelerators.cpu_execution_accelerator.first() {
        return Err(format!(
            "cpu_execution_accelerator '{}' is not available: this ONNX Runtime build runs CPU models with its default provider",
            cpu.name
        ));
    }
    let mut found = None;
    for accelerator in &accelerators.gpu_execution_accelerator {
        match accelerator.name.as_str() {
            "tensorrt" => found = Some(settings(accelerator)?),
            other => {
                return Err(format!(
                    "gpu_execution_accelerator '{other}' is not one ONNX Runtime offers here (tensorrt is)"
                ));
            }
        }
    }
    Ok(found)
}

fn settings(accelerator: &Accelerator) -> Result<TensorRtSettings, String> {
    let mut settings = TensorRtSettings::default();
    for (key, value) in &accelerator.parameters {
        let bad = || format!("tensorrt parameter {key}: '{value}' is not valid");
        let flag = || match value.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad()),
        };
        match key.as_str() {
            "precision_mode" => match value.to_ascii_uppercase().as_str() {
                "FP32" => {}
                "FP16" => settings.fp16 = true,
                "INT8" => settings.int8 = true,
                _ => return Err(bad()),
            },
            "max_workspace_size_bytes" => {
                settings.max_workspace_size = Some(value.parse().map_err(|_| bad())?);
            }
            "trt_min_subgraph_size" => {
                settings.min_subgraph_size = Some(value.parse().map_err(|_| bad())?);
            }
            "trt_max_partition_iterations" => {
                settings.max_partition_iterations = Some(value.parse().map_err(|_| bad())?);
            }
            "trt_engine_cache_enable" => settings.engine_cache = flag()?,
            "trt_engine_cache_path" => settings.engine_cache_path = Some(value.clone()),
            _ => {
                return Err(format!(
                    "tensorrt parameter '{key}' is not known (precision_mode, max_workspace_size_bytes, trt_min_subgraph_size, trt_max_partition_iterations, trt_engine_cache_enable, trt_engine_cache_path are)"
                ));
            }
        }
    }
    Ok(settings)
}

impl TensorRtSettings {
    /// The execution provider for CUDA device `id`.
    pub fn provider(&self, id: i32) -> ort::ep::TensorRT {
        let mut trt = ort::ep::TensorRT::default()
            .with_device_id(id)
            .with_fp16(self.fp16)
            .with_int8(self.int8)
            .with_engine_cache(self.engine_cache);
        if let Some(size) = self.max_workspace_size {
            trt = trt.with_max_workspace_size(size);
        }
        if let Some(size) = self.min_subgraph_size {
            trt = trt.with_min_subgraph_size(size);
        }
        if let Some(iterations) = self.max_partition_iterations {
            trt = trt.with_max_partition_iterations(iterations);
        }
        if let Some(path) = &self.engine_cache_path {
            trt = trt.with_engine_cache_path(path);
        }
        trt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(optimization: &str) -> ModelConfig {
        let text = format!("name: \"m\"\nplatform: \"onnxruntime_onnx\"\n{optimization}");
        nexus_models::config::parse_text(&text).unwrap()
    }

    #[test]
    fn tensorrt_is_read_as_triton_writes_it() {
        let asked = config(
            r#"optimization { execution_accelerators {
                 gpu_execution_accelerator : [ {
                   name : "tensorrt"
                   parameters { key: "precision_mode" value: "FP16" }
                   parameters { key: "max_workspace_size_bytes" value: "1073741824" }
                   parameters { key: "trt_engine_cache_enable" value: "true" }
                   parameters { key: "trt_engine_cache_path" value: "/tmp/trt" }
                 } ]
               } }"#,
        );
        assert_eq!(
            tensorrt(&asked),
            Ok(Some(TensorRtSettings {
                fp16: true,
                max_workspace_size: Some(1 << 30),
                engine_cache: true,
                engine_cache_path: Some("/tmp/trt".into()),
                ..Default::default()
            }))
        );
        assert_eq!(tensorrt(&config("")), Ok(None));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_the_reason() {
        let cases = [
            (
                r#"gpu_execution_accelerator : [ { name : "openvino" } ]"#,
                "tensorrt is",
            ),
            (
                r#"cpu_execution_accelerator : [ { name : "openvino" } ]"#,
                "openvino",
            ),
            (
                r#"gpu_execution_accelerator : [ { name : "tensorrt" parameters { key: "precision_mode" value: "FP8" } } ]"#,
                "'FP8' is not valid",
            ),
            (
                r#"gpu_execution_accelerator : [ { name : "tensorrt" parameters { key: "turbo" value: "1" } } ]"#,
                "'turbo' is not known",
            ),
        ];
        for (accelerators, reason) in cases {
            let asked = config(&format!(
                "optimization {{ execution_accelerators {{ {accelerators} }} }}"
            ));
            let err = tensorrt(&asked).unwrap_err();
            assert!(err.contains(reason), "{accelerators}: {err}");
        }
    }
}
