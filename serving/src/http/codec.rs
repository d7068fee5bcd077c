//! The V2 HTTP inference body: JSON tensors, and Triton's binary tensor extension where
//! a JSON header (`Inference-Header-Content-Length` bytes long) is followed by raw
//! tensor data, for inputs (`binary_data_size`) and outputs (`binary_data`,
//! `binary_data_output`); and Triton's system shared-memory extension, where an input or
//! output names a registered region (`shared_memory_region`, `shared_memory_offset`,
//! `shared_memory_byte_size`) instead of carrying data.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use nexus_models::{DataType, Tensor, TensorData};

use crate::error::ServingError;
use crate::infer::{InferRequest, InferResponse};
use crate::limits::{self, InflightBytes, Reservation};
use crate::shm::{Reference, SharedMemory, SharedOutputs};

/// Header that carries the JSON part's length in a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// `parameters` of a request, input or output. Values stay unparsed slices of the body
/// until a known key is read, so no parameter builds a JSON tree.
type Parameters<'a> = HashMap<String, &'a RawValue>;

/// The request as it arrives. `data` stays a slice of the body here and is decoded
/// afterwards, straight into typed elements, once the input's datatype and shape are
/// known (JSON objects are unordered: `data` may come before `datatype`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson<'a> {
    /// KServe's Python client names the model in the body too; it must match the path.
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default, borrow)]
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputJson<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    outputs: Vec<OutputTensorJson<'a>>,
}

#[derive(Serialize)]
struct OutputTensorJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

/// Which outputs the client wants as binary data, and which in shared memory.
#[derive(Debug, Default)]
pub struct OutputFormat {
    /// `binary_data_output` on the request: the default for every output.
    all_binary: bool,
    /// Per-output `binary_data`, overriding the default.
    binary: HashMap<String, bool>,
    /// Outputs written to shared memory (before [`encode`]) instead of into the body.
    pub shared: SharedOutputs,
}

impl OutputFormat {
    fn is_binary(&self, name: &str) -> bool {
        self.binary.get(name).copied().unwrap_or(self.all_binary)
    }
}

fn invalid(message: String) -> ServingError {
    ServingError::InvalidArgument(message)
}

/// A parameter's JSON text for a message, cut short when long.
fn shown(raw: &RawValue) -> String {
    const MAX: usize = 64;
    let text = raw.get();
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Reads parameter `key` as a `T`; `what` names the expected kind in the error.
fn param<T: serde::de::DeserializeOwned>(
    params: &Parameters<'_>,
    key: &str,
    what: &str,
) -> Result<Option<T>, ServingError> {
    params
        .get(key)
        .map(|raw| {
            serde_json::from_str(raw.get()).map_err(|_| {
                invalid(format!(
                    "parameter '{key}' must be {what}, got {}",
                    shown(raw)
                ))
            })
        })
        .transpose()
}

/// A tensor's shared-memory parameters.
fn shared_reference(
    tensor: &str,
    params: &Parameters<'_>,
) -> Result<Option<Reference>, ServingError> {
    let context = |e: ServingError| invalid(format!("tensor '{tensor}': {e}"));
    let region = param(params, "shared_memory_region", "a string").map_err(context)?;
    let offset =
        param(params, "shared_memory_offset", "a non-negative integer").map_err(context)?;
    let byte_size =
        param(params, "shared_memory_byte_size", "a non-negative integer").map_err(context)?;
    Ok(Reference::new(tensor, region, offset, byte_size)?)
}

/// Decodes a request body as [`decode_shared`] does, for a server without shared memory:
/// a tensor naming a region names an unknown one.
pub fn decode(
    body: &Bytes,
    header_length: Option<usize>,
    model: &str,
    version: &str,
) -> Result<(InferRequest, OutputFormat), ServingError> {
    let mut reservation = InflightBytes::new(0).reserve_none();
    decode_shared(
        body,
        header_length,
        model,
        version,
        &SharedMemory::default(),
        &mut reservation,
    )
}

/// Decodes a request body for `model` at `version` (empty: any), the path's; `header_length`
/// is the `Inference-Header-Content-Length` value when the body uses the binary extension.
/// Inputs in shared memory are copied out of `memory`, counted in `reservation`.
pub fn decode_shared(
    body: &Bytes,
    header_length: Option<usize>,
    model: &str,
    version: &str,
    memory: &SharedMemory,
    reservation: &mut Reservation,
) -> Result<(InferRequest, OutputFormat), ServingError> {
    let json_len = header_length.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(invalid(format!(
            "Inference-Header-Content-Length is {json_len} but the body has only {} bytes",
            body.len()
        )));
    }
    let parsed: RequestJson<'_> = serde_json::from_slice(&body[..json_len]).map_err(|e| {
        invalid(format!(
            "request body is not valid V2 inference request JSON: {e}"
        ))
    })?;
    if let Some(named) = parsed.model_name.as_deref().filter(|n| *n != model) {
        return Err(invalid(format!(
            "the body's model_name '{named}' is not the model '{model}' of the path"
        )));
    }
    if let Some(named) = parsed.model_version.as_deref()
        && !named.is_empty()
        && !version.is_empty()
        && named != version
    {
        return Err(invalid(format!(
            "the body's model_version '{named}' is not the version '{version}' of the path"
        )));
    }
    let id = parsed.id.unwrap_or_default();
    limits::check_request_id(&id)?;
    let mut binary = body.slice(json_len..);

    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in parsed.inputs {
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            invalid(format!(
                "input '{}': unknown datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        let binary_size: Option<u64> = param(
            &input.parameters,
            "binary_data_size",
            "a non-negative integer",
        )
        .map_err(|e| invalid(format!("input '{}': {e}", input.name)))?;
        if let Some(reference) = shared_reference(&input.name, &input.parameters)? {
            if binary_size.is_some() || input.data.is_some() {
                return Err(invalid(format!(
                    "input '{}' names a shared memory region and also has 'data' or binary_data_size",
                    input.name
                )));
            }
            inputs.push(memory.read_input(
                input.name,
                datatype,
                input.shape,
                reference,
                reservation,
            )?);
            continue;
        }
        let data = match (binary_size, input.data) {
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(invalid(format!(
                        "input '{}': binary_data_size is {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                let raw = binary.split_to(size);
                TensorData::from_raw(&input.name, datatype, &raw)?
            }
            (None, Some(data)) => {
                TensorData::from_json_text(&input.name, datatype, &input.shape, data.get())?
            }
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "input '{}' has both 'data' and binary_data_size",
                    input.name
                )));
            }
            (None, None) => {
                return Err(invalid(format!(
                    "input '{}' has neither 'data' nor binary_data_size",
                    input.name
                )));
            }
        };
        inputs.push(Tensor::new(input.name, input.shape, data)?);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }

    let mut format = OutputFormat {
        all_binary: param(&parsed.parameters, "binary_data_output", "a boolean")?.unwrap_or(false),
        binary: HashMap::new(),
        shared: SharedOutputs::default(),
    };
    let mut outputs = Vec::with_capacity(parsed.outputs.len());
    for output in parsed.outputs {
        if output.parameters.contains_key("classification") {
            return Err(invalid(format!(
                "output '{}': the classification extension is not supported",
                output.name
            )));
        }
        if let Some(b) = param(&output.parameters, "binary_data", "a boolean")? {
            format.binary.insert(output.name.clone(), b);
        }
        if let Some(reference) = shared_reference(&output.name, &output.parameters)? {
            format.shared.add(memory, output.name.clone(), reference)?;
        }
        outputs.push(output.name);
    }
    let request = InferRequest {
        id,
        inputs,
        outputs,
        traceparent: None,
    };
    Ok((request, format))
}

/// Encodes a response whose shared-memory outputs are written already: those carry their
/// request's shared-memory parameters and no data. Returns the JSON header's length when any
/// output is binary (the body is then the header followed by the binary outputs in order),
/// and the body.
pub fn encode(response: &InferResponse, format: &OutputFormat) -> (Option<usize>, Vec<u8>) {
    let mut raw: Vec<Vec<u8>> = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|t| {
            // An output written to shared memory has neither data nor parameters: Triton's
            // C++ client (perf_analyzer's) reads any output `parameters` as binary-data ones
            // and fails on `binary_data_size` missing.
            let (parameters, data) = if format.shared.get(&t.name).is_some() {
                (None, None)
            } else if format.is_binary(&t.name) {
                let bytes = t.data.to_raw();
                let size = bytes.len();
                raw.push(bytes);
                (Some(serde_json::json!({ "binary_data_size": size })), None)
            } else {
                (None, Some(t.data.to_json()))
            };
            OutputTensorJson {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters,
                data,
            }
        })
        .collect();
    let header = ResponseJson {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: &response.id,
        outputs,
    };
    // Serialising plain structs of strings, numbers and JSON values cannot fail.
    let mut body = serde_json::to_vec(&header).expect("response header serialises");
    if raw.is_empty() {
        return (None, body);
    }
    let header_len = body.len();
    body.reserve(raw.iter().map(Vec::len).sum());
    for chunk in raw {
        body.extend_from_slice(&chunk);
    }
    (Some(header_len), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_body(header: Value, raw: &[u8]) -> (Bytes, usize) {
        let mut body = serde_json::to_vec(&header).unwrap();
        let len = body.len();
        body.extend_from_slice(raw);
        (Bytes::from(body), len)
    }

    #[test]
    fn decodes_json_and_binary_inputs_together() {
        let header = serde_json::json!({
            "id": "r1",
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [[1.5, 2.5]]},
                {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "z"}]
        });
        let mut raw = TensorData::I32(vec![7, -7]).to_raw();
        raw.extend(TensorData::Bytes(vec![Bytes::from_static(b"hi")]).to_raw());
        let (body, len) = binary_body(header, &raw);
        let (req, format) = decode(&body, Some(len), "m", "").unwrap();
        assert_eq!(req.id, "r1");
        assert_eq!(req.inputs[0].data, TensorData::I32(vec![7, -7]));
        assert_eq!(req.inputs[1].data, TensorData::F32(vec![1.5, 2.5]));
        assert_eq!(
            req.inputs[2].data,
            TensorData::Bytes(vec![Bytes::from_static(b"hi")])
        );
        assert_eq!(req.outputs, vec!["y", "z"]);
        assert!(format.is_binary("y"));
        assert!(!format.is_binary("z"));
    }

    #[test]
    fn rejects_binary_sizes_that_do_not_add_up() {
        let header = serde_json::json!({"inputs": [
            {"name": "a", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
        ]});
        let (body, len) = binary_body(header.clone(), &[0; 8]);
        let err = decode(&body, Some(len), "m", "").unwrap_err();
        assert!(
            err.to_string()
                .contains("binary_data_size is 16 but only 8 bytes"),
            "{err}"
        );

        let (body, len) = binary_body(header, &[0; 20]);
        let err = decode(&body, Some(len), "m", "").unwrap_err();
        assert!(
            err.to_string()
                .contains("4 bytes of binary data are not claimed"),
            "{err}"
        );

        let err = decode(&Bytes::from_static(b"{}"), Some(10), "m", "").unwrap_err();
        assert!(
            err.to_string()
                .contains("Inference-Header-Content-Length is 10"),
            "{err}"
        );
    }

    #[test]
    fn rejects_malformed_requests_with_the_reason() {
        let cases = [
            (&b"not json"[..], "not valid V2 inference request JSON"),
            (
                br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FLOAT", "data": [1]}]}"#,
                "unknown datatype 'FLOAT'",
            ),
            (
                br#"{"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}"#,
                "2 elements given but shape [3] needs 3",
            ),
            (
                br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}"#,
                "neither 'data' nor binary_data_size",
            ),
            (br#"{"inputs": [], "bogus": 1}"#, "unknown field `bogus`"),
            (
                br#"{"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, true]}]}"#,
                "tensor 'a': element 1 is boolean true, expected a INT32 value",
            ),
            (
                br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1, 2]}]}"#,
                "more than 1 elements given but shape [1] needs 1",
            ),
            (
                br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [[[1]]]}]}"#,
                "data nests arrays 2 deep, deeper than shape [1] allows",
            ),
            (
                br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "INT8", "parameters": {"binary_data_size": -1}}]}"#,
                "input 'a': parameter 'binary_data_size' must be a non-negative integer, got -1",
            ),
            (
                br#"{"inputs": [], "parameters": {"binary_data_output": "yes"}}"#,
                "parameter 'binary_data_output' must be a boolean, got \"yes\"",
            ),
        ];
        for (body, expected) in cases {
            let err = decode(&Bytes::from_static(body), None, "m", "").unwrap_err();
            assert!(matches!(err, ServingError::InvalidArgument(_)));
            assert!(
                err.to_string().contains(expected),
                "{err} does not mention {expected}"
            );
        }
    }

    #[test]
    fn the_model_named_in_the_body_must_be_the_paths() {
        let body = Bytes::from_static(
            br#"{"model_name": "m", "model_version": "2", "inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1]}]}"#,
        );
        assert!(decode(&body, None, "m", "").is_ok());
        assert!(decode(&body, None, "m", "2").is_ok());
        let err = decode(&body, None, "other", "").unwrap_err();
        assert!(
            err.to_string()
                .contains("model_name 'm' is not the model 'other'"),
            "{err}"
        );
        let err = decode(&body, None, "m", "3").unwrap_err();
        assert!(
            err.to_string()
                .contains("model_version '2' is not the version '3'"),
            "{err}"
        );
    }

    #[test]
    fn decodes_data_whatever_the_field_order() {
        let body = br#"{"inputs": [
            {"data": [[1, 2], [3, 4]], "datatype": "FP16", "shape": [2, 2], "name": "h"},
            {"name": "f", "data": [1, 2, 3, 4], "shape": [2, 2], "datatype": "FP64"},
            {"name": "s", "shape": [1], "data": ["\u00e9"], "datatype": "BYTES", "parameters": {"x": [{"y": 1}]}}
        ], "id": "order"}"#;
        let (req, _) = decode(&Bytes::from_static(body), None, "m", "").unwrap();
        assert_eq!(req.id, "order");
        assert_eq!(
            req.inputs[0].data,
            TensorData::F16([1.0, 2.0, 3.0, 4.0].map(half::f16::from_f32).to_vec())
        );
        assert_eq!(
            req.inputs[1].data,
            TensorData::F64(vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(
            req.inputs[2].data,
            TensorData::Bytes(vec![Bytes::from("\u{e9}")])
        );
    }

    #[test]
    fn refuses_request_ids_over_the_limit() {
        let request = |id: &str| {
            let header = serde_json::json!({"id": id, "inputs": [
                {"name": "a", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}}
            ]});
            binary_body(header, &[0; 4])
        };
        let (body, len) = request(&"i".repeat(256));
        assert!(decode(&body, Some(len), "m", "").is_ok());
        let (body, len) = request(&"i".repeat(257));
        let err = decode(&body, Some(len), "m", "").unwrap_err();
        assert!(matches!(err, ServingError::InvalidArgument(_)));
        assert!(
            err.to_string().contains("request id is 257 bytes long"),
            "{err}"
        );
    }

    #[test]
    fn encodes_binary_outputs_after_the_header() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: String::new(),
            outputs: vec![
                Tensor::new("y", vec![2], TensorData::F32(vec![1.0, 2.0])).unwrap(),
                Tensor::new("z", vec![1], TensorData::I64(vec![3])).unwrap(),
            ],
            queue: Default::default(),
            batch_size: 2,
        };
        let format = OutputFormat {
            all_binary: false,
            binary: HashMap::from([("y".to_string(), true)]),
            shared: SharedOutputs::default(),
        };
        let (len, body) = encode(&response, &format);
        let len = len.unwrap();
        let header: Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(header["outputs"][1]["data"], serde_json::json!([3]));
        assert_eq!(
            &body[len..],
            TensorData::F32(vec![1.0, 2.0]).to_raw().as_slice()
        );

        let (len, body) = encode(&response, &OutputFormat::default());
        assert!(len.is_none());
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["outputs"][0]["data"], serde_json::json!([1.0, 2.0]));
        assert!(json.get("id").is_none());
    }
}
