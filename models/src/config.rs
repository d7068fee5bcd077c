//! Triton's `config.pbtxt`: parsing with a real protobuf text-format parser, JSON in
//! and out in protobuf's JSON mapping, and completion/validation against the model.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::pb;
use crate::tensor::{DataType, TensorSpec};

pub use crate::pb::ModelConfig;

static DESCRIPTOR: LazyLock<MessageDescriptor> = LazyLock::new(|| {
    let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/model_config.bin"));
    // The descriptor set is produced by build.rs from the same proto file the types come
    // from, so decoding it and finding ModelConfig in it cannot fail at run time.
    let pool = DescriptorPool::decode(bytes.as_ref()).expect("descriptor set written by build.rs");
    pool.get_message_by_name("inference.ModelConfig")
        .expect("model_config.proto defines inference.ModelConfig")
});

/// Why a model configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config.pbtxt is not valid protobuf text format: {0}")]
    Text(String),
    #[error("config is not valid ModelConfig JSON: {0}")]
    Json(String),
    #[error("invalid model config: {0}")]
    Invalid(String),
}

/// Most model instances one config may ask for, summed over its instance groups: each
/// instance is a loaded copy of the model with its own thread.
pub const MAX_INSTANCES: i64 = 64;

/// The `parameters` Nexus reads as thread counts: ONNX Runtime's names, and the upper-case
/// ones Triton's PyTorch backend reads (`INTRA_OP_THREAD_COUNT`), in that order.
pub const THREAD_PARAMETERS: [&str; 4] = [
    "intra_op_thread_count",
    "INTRA_OP_THREAD_COUNT",
    "inter_op_thread_count",
    "INTER_OP_THREAD_COUNT",
];

/// Most threads a thread parameter may ask for: four per core this machine has.
pub fn max_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from) * 4
}

/// Refuses a config whose instance counts or thread parameters pass the documented
/// bounds ([`MAX_INSTANCES`], [`max_threads`]), before anything is loaded: a config from
/// a repository file, a load request or a registry model cannot make the server start
/// thousands of instances or threads. Every parse goes through this.
pub fn check_limits(config: &ModelConfig) -> Result<(), ConfigError> {
    let instances: i64 = config
        .instance_group
        .iter()
        .map(|g| i64::from(g.count.max(1)))
        .sum();
    if instances > MAX_INSTANCES {
        return Err(ConfigError::Invalid(format!(
            "instance_group asks for {instances} instances; the limit is {MAX_INSTANCES} per model"
        )));
    }
    let max = max_threads();
    for key in THREAD_PARAMETERS {
        if let Some(threads) = parameter::<usize>(config, key)?
            && threads > max
        {
            return Err(ConfigError::Invalid(format!(
                "parameter '{key}' asks for {threads} threads; the limit is {max} (4 per core)"
            )));
        }
    }
    Ok(())
}

/// Parses `config.pbtxt` text.
pub fn parse_text(text: &str) -> Result<ModelConfig, ConfigError> {
    let text = colon_before_lists(text);
    let dynamic = DynamicMessage::parse_text_format(DESCRIPTOR.clone(), &text)
        .map_err(|e| ConfigError::Text(e.to_string()))?;
    let config = dynamic
        .transcode_to::<ModelConfig>()
        .map_err(|e| ConfigError::Text(e.to_string()))?;
    check_limits(&config)?;
    Ok(config)
}

/// Inserts the optional `:` between a field name and a `[` list.
///
/// The text format makes that colon optional for lists of messages and Triton's configs
/// nearly always omit it (`input [ { ... } ]`), but prost-reflect's parser requires it.
/// This scans tokens only far enough to skip strings and comments; prost-reflect still
/// does all the parsing and reports every error.
fn colon_before_lists(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut insert_at = Vec::new();
    // The last significant character and whether it ended a field name (an identifier
    // that does not follow a ':').
    let mut after_colon = false;
    let mut field_name_end = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                field_name_end = false;
                after_colon = false;
            }
            b'[' if field_name_end => {
                insert_at.push(i);
                field_name_end = false;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start_after_colon = after_colon;
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_')
                {
                    i += 1;
                }
                field_name_end = !start_after_colon;
                after_colon = false;
            }
            c if c.is_ascii_whitespace() => {}
            c => {
                after_colon = c == b':';
                field_name_end = false;
            }
        }
        i += 1;
    }
    if insert_at.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + insert_at.len());
    let mut last = 0;
    for at in insert_at {
        out.push_str(&text[last..at]);
        out.push(':');
        last = at;
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

/// Parses a ModelConfig in protobuf's JSON mapping (the form `/config` returns and the
/// repository load API accepts as a config override).
pub fn parse_json(text: &str) -> Result<ModelConfig, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(DESCRIPTOR.clone(), &mut de)
        .map_err(|e| ConfigError::Json(e.to_string()))?;
    let config = dynamic
        .transcode_to::<ModelConfig>()
        .map_err(|e| ConfigError::Json(e.to_string()))?;
    check_limits(&config)?;
    Ok(config)
}

/// The config as a reflective message, for the JSON and text renderings.
fn dynamic(config: &ModelConfig) -> DynamicMessage {
    let mut dynamic = DynamicMessage::new(DESCRIPTOR.clone());
    // Encoding a prost message and decoding it against its own descriptor is lossless.
    dynamic
        .merge(config.encode_to_vec().as_slice())
        .expect("ModelConfig bytes decode against the ModelConfig descriptor");
    dynamic
}

/// Renders a config as Triton's `/config` does: proto field names, enum names, every
/// field present (clients index `max_batch_size` even when it is 0).
pub fn to_json(config: &ModelConfig) -> serde_json::Value {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    dynamic(config)
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("serialising a DynamicMessage into a JSON value cannot fail")
}

/// Renders a config as `config.pbtxt` text.
pub fn to_text(config: &ModelConfig) -> String {
    dynamic(config)
        .to_text_format_with_options(&prost_reflect::text_format::FormatOptions::new().pretty(true))
}

/// What the model file itself declares, used to complete and check a config.
pub struct ModelSignature<'a> {
    pub inputs: &'a [TensorSpec],
    pub outputs: &'a [TensorSpec],
}

impl ModelSignature<'_> {
    /// A model supports batching when every input and output has a dynamic first dim.
    fn batchable(&self) -> bool {
        self.inputs
            .iter()
            .chain(self.outputs)
            .all(|t| t.shape.first().is_some_and(|d| *d < 0))
    }
}

/// Fills what the config leaves out from the model (as Triton's auto-complete does) and
/// checks what it states against the model, so a mismatch fails at load, not per request.
///
/// `default_max_batch_size` is used only when the config gives no inputs, outputs or
/// batch size and the model's first dimensions are all dynamic.
pub fn complete(
    config: &mut ModelConfig,
    model_name: &str,
    signature: &ModelSignature<'_>,
    default_max_batch_size: i32,
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    check_limits(config)?;
    if config.name.is_empty() {
        config.name = model_name.to_string();
    } else if config.name != model_name {
        return invalid(format!(
            "config name '{}' does not match the model directory '{model_name}'",
            config.name
        ));
    }
    if config.max_batch_size < 0 {
        return invalid(format!(
            "max_batch_size {} is negative",
            config.max_batch_size
        ));
    }
    let untouched =
        config.input.is_empty() && config.output.is_empty() && config.max_batch_size == 0;
    if untouched && signature.batchable() {
        config.max_batch_size = default_max_batch_size;
    }
    if config.max_batch_size > 0 && !signature.batchable() {
        return invalid(format!(
            "max_batch_size is {} but the model's inputs and outputs do not all have a dynamic first dimension",
            config.max_batch_size
        ));
    }
    let batched = config.max_batch_size > 0;
    let strip = |shape: &[i64]| -> Vec<i64> {
        if batched {
            shape[1..].to_vec()
        } else {
            shape.to_vec()
        }
    };

    // A rank-0 tensor (a sample rate, an axis) is declared as Triton does: dims [1] with
    // `reshape { shape: [] }`, since a config's dims may not be empty.
    let declared = |shape: &[i64]| match strip(shape) {
        dims if dims.is_empty() => (vec![1], Some(pb::ModelTensorReshape { shape: vec![] })),
        dims => (dims, None),
    };
    if config.input.is_empty() {
        config.input = signature
            .inputs
            .iter()
            .map(|t| {
                let (dims, reshape) = declared(&t.shape);
                pb::ModelInput {
                    name: t.name.clone(),
                    data_type: t.datatype.to_config() as i32,
                    dims,
                    reshape,
                    optional: t.optional,
                    ..Default::default()
                }
            })
            .collect();
    }
    if config.output.is_empty() {
        config.output = signature
            .outputs
            .iter()
            .map(|t| {
                let (dims, reshape) = declared(&t.shape);
                pb::ModelOutput {
                    name: t.name.clone(),
                    data_type: t.datatype.to_config() as i32,
                    dims,
                    reshape,
                    ..Default::default()
                }
            })
            .collect();
    }

    for input in &config.input {
        let model = find(signature.inputs, &input.name, "input")?;
        let as_model = input.reshape.as_ref().map_or(&input.dims, |r| &r.shape);
        check_tensor(
            "input",
            &input.name,
            input.data_type,
            &input.dims,
            as_model,
            model,
            &strip,
        )?;
    }
    for output in &config.output {
        let model = find(signature.outputs, &output.name, "output")?;
        let as_model = output.reshape.as_ref().map_or(&output.dims, |r| &r.shape);
        check_tensor(
            "output",
            &output.name,
            output.data_type,
            &output.dims,
            as_model,
            model,
            &strip,
        )?;
    }
    for model_input in signature.inputs {
        let listed = config.input.iter().any(|i| i.name == model_input.name);
        if !listed && !model_input.optional {
            return invalid(format!(
                "the model's input '{}' is missing from the config",
                model_input.name
            ));
        }
    }

    if config.instance_group.is_empty() {
        config
            .instance_group
            .push(pb::ModelInstanceGroup::default());
    }
    for (i, group) in config.instance_group.iter_mut().enumerate() {
        if group.count <= 0 {
            group.count = 1;
        }
        if group.name.is_empty() {
            group.name = format!("{}_{i}", config.name);
        }
    }
    if config.version_policy.is_none() {
        config.version_policy = Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::Latest(
                pb::model_version_policy::Latest { num_versions: 1 },
            )),
        });
    }
    Ok(())
}

fn find<'a>(
    specs: &'a [TensorSpec],
    name: &str,
    kind: &str,
) -> Result<&'a TensorSpec, ConfigError> {
    specs.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        ConfigError::Invalid(format!(
            "config {kind} '{name}' is not among the model's {kind}s {names:?}"
        ))
    })
}

fn check_tensor(
    kind: &str,
    name: &str,
    data_type: i32,
    dims: &[i64],
    as_model: &[i64],
    model: &TensorSpec,
    strip: &dyn Fn(&[i64]) -> Vec<i64>,
) -> Result<(), ConfigError> {
    let declared = pb::DataType::try_from(data_type)
        .ok()
        .and_then(DataType::from_config)
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{kind} '{name}': data_type {data_type} is not supported"
            ))
        })?;
    if declared != model.datatype {
        return Err(ConfigError::Invalid(format!(
            "{kind} '{name}': config says {} but the model has {}",
            declared.to_config().as_str_name(),
            model.datatype.to_config().as_str_name()
        )));
    }
    if dims.iter().any(|d| *d < -1) || dims.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{kind} '{name}': dims {dims:?} must be non-empty, each -1 or a size"
        )));
    }
    let model_dims = strip(&model.shape);
    let compatible = model_dims.len() == as_model.len()
        && model_dims
            .iter()
            .zip(as_model)
            .all(|(m, c)| *m < 0 || *c < 0 || m == c);
    // A model with no declared shape (rank unknown) accepts any config dims.
    if !model.shape.is_empty() && !compatible {
        return Err(ConfigError::Invalid(format!(
            "{kind} '{name}': config dims {as_model:?} do not match the model's {model_dims:?} (batch dimension excluded)"
        )));
    }
    Ok(())
}

/// Which versions a version policy selects from those present on disk.
pub fn select_versions(config: &ModelConfig, available: &[u64]) -> Vec<u64> {
    use pb::model_version_policy::PolicyChoice;
    let mut sorted = available.to_vec();
    sorted.sort_unstable();
    match config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(PolicyChoice::All(_)) => sorted,
        Some(PolicyChoice::Specific(s)) => sorted
            .into_iter()
            .filter(|v| s.versions.iter().any(|w| *w >= 0 && *w as u64 == *v))
            .collect(),
        Some(PolicyChoice::Latest(l)) => {
            let n = l.num_versions.max(1) as usize;
            sorted[sorted.len().saturating_sub(n)..].to_vec()
        }
        None => sorted.last().copied().into_iter().collect(),
    }
}

/// Reads an integer from the config's `parameters` map (Triton's string-valued parameters).
pub fn parameter<T: std::str::FromStr>(
    config: &ModelConfig,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match config.parameters.get(key) {
        None => Ok(None),
        Some(p) => p.string_value.trim().parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "parameter '{key}' has invalid value '{}'",
                p.string_value
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = r#"
        name: "simple"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        # comments are part of the text format
        input [
          { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
          { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
        ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4, 4 ] reshape: { shape: [ 16 ] } } ]
        version_policy: { specific: { versions: [1, 3] } }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 100
          default_queue_policy { max_queue_size: 64 timeout_action: REJECT default_timeout_microseconds: 5000 }
        }
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
    "#;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            optional: false,
        }
    }

    #[test]
    fn parses_triton_text_format() {
        let c = parse_text(SIMPLE).unwrap();
        assert_eq!(c.name, "simple");
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input.len(), 2);
        assert_eq!(c.input[1].data_type, pb::DataType::TypeInt32 as i32);
        assert_eq!(c.output[0].reshape.as_ref().unwrap().shape, vec![16]);
        assert_eq!(c.instance_group[0].count, 2);
        assert_eq!(
            c.instance_group[0].kind,
            pb::model_instance_group::Kind::Cpu as i32
        );
        let Some(pb::model_config::SchedulingChoice::DynamicBatching(db)) = &c.scheduling_choice
        else {
            panic!("dynamic_batching not parsed");
        };
        assert_eq!(db.preferred_batch_size, vec![4, 8]);
        assert_eq!(db.max_queue_delay_microseconds, 100);
        assert_eq!(db.default_queue_policy.as_ref().unwrap().max_queue_size, 64);
        assert_eq!(
            parameter::<usize>(&c, "intra_op_thread_count").unwrap(),
            Some(2)
        );
        assert_eq!(select_versions(&c, &[1, 2, 3, 4]), vec![1, 3]);
    }

    #[test]
    fn list_colon_is_optional_outside_strings_and_comments() {
        assert_eq!(colon_before_lists("input [ {} ]"), "input :[ {} ]");
        assert_eq!(colon_before_lists("input: [ {} ]"), "input: [ {} ]");
        assert_eq!(
            colon_before_lists("name: \"a [b\" # x [y\n"),
            "name: \"a [b\" # x [y\n"
        );
        assert_eq!(
            colon_before_lists("dims: [ 1 ] kind: KIND_CPU"),
            "dims: [ 1 ] kind: KIND_CPU"
        );
        assert_eq!(
            colon_before_lists("instance_group [ { count: 1 } ] output\n[ { dims [ 2 ] } ]"),
            "instance_group :[ { count: 1 } ] output\n:[ { dims :[ 2 ] } ]"
        );
    }

    #[test]
    fn rejects_malformed_text_with_position() {
        let err = parse_text("name: \"x\"\nmax_batch_size: eight\n").unwrap_err();
        assert!(
            err.to_string().contains("not valid protobuf text format"),
            "{err}"
        );
        let err = parse_text("unknown_field: 3").unwrap_err();
        assert!(err.to_string().contains("unknown_field"), "{err}");
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let c = parse_text(SIMPLE).unwrap();
        let json = to_json(&c);
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["data_type"], "TYPE_INT32");
        assert_eq!(json["input"][0]["dims"], serde_json::json!([16]));
        assert_eq!(json["default_model_filename"], "");
        let back = parse_json(&json.to_string()).unwrap();
        assert_eq!(back, c);
        assert_eq!(parse_text(&to_text(&c)).unwrap(), c);
    }

    #[test]
    fn completes_an_absent_config_from_the_model() {
        let inputs = [spec("x", DataType::F32, &[-1, -1])];
        let outputs = [spec("y", DataType::F32, &[-1, -1])];
        let sig = ModelSignature {
            inputs: &inputs,
            outputs: &outputs,
        };
        let mut c = ModelConfig::default();
        complete(&mut c, "dyn", &sig, 4).unwrap();
        assert_eq!(c.name, "dyn");
        assert_eq!(c.max_batch_size, 4);
        assert_eq!(c.input[0].dims, vec![-1]);
        assert_eq!(c.output[0].data_type, pb::DataType::TypeFp32 as i32);
        assert_eq!(c.instance_group[0].count, 1);
        assert_eq!(select_versions(&c, &[3, 1, 2]), vec![3]);

        let fixed = [spec("X", DataType::F32, &[3, 2])];
        let sig = ModelSignature {
            inputs: &fixed,
            outputs: &fixed,
        };
        let mut c = ModelConfig::default();
        complete(&mut c, "mul", &sig, 4).unwrap();
        assert_eq!(c.max_batch_size, 0);
        assert_eq!(c.input[0].dims, vec![3, 2]);
    }

    #[test]
    fn scalar_tensors_are_declared_as_one_element_reshaped_to_rank_0() {
        let inputs = [
            spec("x", DataType::F32, &[-1, 512]),
            spec("sr", DataType::I64, &[]),
        ];
        let outputs = [
            spec("prob", DataType::F32, &[-1, 1]),
            spec("n", DataType::I64, &[]),
        ];
        let sig = ModelSignature {
            inputs: &inputs,
            outputs: &outputs,
        };
        let mut c = ModelConfig::default();
        complete(&mut c, "vad", &sig, 4).unwrap();
        assert_eq!(c.max_batch_size, 0, "a rank-0 input has no batch dimension");
        assert_eq!(c.input[1].dims, vec![1]);
        assert_eq!(
            c.input[1].reshape.as_ref().unwrap().shape,
            Vec::<i64>::new()
        );
        assert_eq!(c.output[1].dims, vec![1]);
        assert!(c.output[1].reshape.is_some());
        assert!(c.input[0].reshape.is_none());
        // The completed config survives its own text form and is accepted again as written.
        let mut again = parse_text(&to_text(&c)).unwrap();
        complete(&mut again, "vad", &sig, 4).unwrap();

        let batched_inputs = [spec("step", DataType::I64, &[-1])];
        let sig = ModelSignature {
            inputs: &batched_inputs,
            outputs: &batched_inputs,
        };
        let mut c = ModelConfig::default();
        complete(&mut c, "steps", &sig, 8).unwrap();
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input[0].dims, vec![1]);
        assert_eq!(
            c.input[0].reshape.as_ref().unwrap().shape,
            Vec::<i64>::new()
        );
    }

    #[test]
    fn rejects_configs_that_contradict_the_model() {
        let inputs = [
            spec("INPUT0", DataType::I32, &[-1, 16]),
            spec("INPUT1", DataType::I32, &[-1, 16]),
        ];
        let outputs = [spec("OUTPUT0", DataType::I32, &[-1, 16])];
        let sig = ModelSignature {
            inputs: &inputs,
            outputs: &outputs,
        };
        let mut ok = parse_text(SIMPLE).unwrap();
        complete(&mut ok, "simple", &sig, 4).unwrap();

        let mut wrong_name = parse_text(SIMPLE).unwrap();
        let err = complete(&mut wrong_name, "other", &sig, 4).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not match the model directory"),
            "{err}"
        );

        let mut wrong_type =
            parse_text(&SIMPLE.replace("TYPE_INT32 dims: [ 16 ] },", "TYPE_FP32 dims: [ 16 ] },"))
                .unwrap();
        let err = complete(&mut wrong_type, "simple", &sig, 4).unwrap_err();
        assert!(
            err.to_string()
                .contains("config says TYPE_FP32 but the model has TYPE_INT32"),
            "{err}"
        );

        let mut wrong_dims =
            parse_text(&SIMPLE.replace("dims: [ 16 ] },", "dims: [ 15 ] },")).unwrap();
        let err = complete(&mut wrong_dims, "simple", &sig, 4).unwrap_err();
        assert!(
            err.to_string().contains("do not match the model's [16]"),
            "{err}"
        );

        let mut unknown = parse_text(&SIMPLE.replace("\"INPUT1\"", "\"INPUT9\"")).unwrap();
        let err = complete(&mut unknown, "simple", &sig, 4).unwrap_err();
        assert!(
            err.to_string()
                .contains("'INPUT9' is not among the model's inputs"),
            "{err}"
        );
    }

    #[test]
    fn refuses_instance_and_thread_counts_past_the_limits() {
        let err = parse_text("instance_group [ { count: 65 } ]").unwrap_err();
        assert!(
            err.to_string()
                .contains("asks for 65 instances; the limit is 64"),
            "{err}"
        );
        let err = parse_text("instance_group [ { count: 40 }, { count: 20 }, { count: 5 } ]")
            .unwrap_err();
        assert!(err.to_string().contains("asks for 65 instances"), "{err}");
        let huge = format!("instance_group [ {{ count: {} }} ]", i32::MAX);
        assert!(parse_text(&huge).is_err());
        assert!(parse_text("instance_group [ { count: 64 } ]").is_ok());

        let max = max_threads();
        for key in THREAD_PARAMETERS {
            let text = |n: usize| {
                format!("parameters {{ key: \"{key}\" value: {{ string_value: \"{n}\" }} }}")
            };
            assert!(parse_text(&text(max)).is_ok());
            let err = parse_text(&text(max + 1)).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "parameter '{key}' asks for {} threads; the limit is {max}",
                    max + 1
                )),
                "{err}"
            );
        }

        // The JSON form of the load API's config override is held to the same limits.
        let err = parse_json(r#"{"instance_group": [{"count": 1000}]}"#).unwrap_err();
        assert!(err.to_string().contains("1000 instances"), "{err}");
        let json = format!(
            r#"{{"parameters": {{"intra_op_thread_count": {{"string_value": "{}"}}}}}}"#,
            max + 1
        );
        assert!(
            parse_json(&json)
                .unwrap_err()
                .to_string()
                .contains("threads")
        );
    }
}
