//! What crosses the plugin's C ABI: one byte buffer each way, a JSON header followed by the
//! tensors' raw little-endian bytes (as in the V2 protocol's binary extension), so neither
//! side shares a Rust type's layout with the other.

use bytes::Bytes;
use nexus_models::{DataType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Version of this format and of the plugin's functions; a plugin of another is refused.
pub const ABI_VERSION: u32 = 1;

/// How to open a model (the plugin's `nexus_torch_load`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRequest {
    pub path: String,
    /// CUDA device ordinal, or none for the CPU.
    pub gpu: Option<i32>,
    /// Threads inside one operator (libtorch's intra-op pool); 0 keeps libtorch's default.
    pub intra_op_threads: usize,
    /// Inputs in the order of the config, bound to `forward`'s arguments by `NAME__<index>`
    /// or, failing that, by their order.
    pub inputs: Vec<String>,
    /// Outputs in the order of the config: `NAME__<index>` picks an element of a tuple or
    /// list return, other names a key of a dict return; a single tensor is the only output.
    pub outputs: Vec<String>,
}

/// One tensor's place in a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorHeader {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub bytes: usize,
}

/// The JSON part of a message with tensors.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Header {
    pub tensors: Vec<TensorHeader>,
    /// In a request: the outputs wanted, in order.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// In an answer: why the call failed, and whether the caller's inputs were at fault.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub input_error: bool,
}

/// `tensors` (with the `outputs` wanted, in a request) as a message.
pub fn encode(tensors: &[Tensor], outputs: &[String]) -> Vec<u8> {
    let raws: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.to_raw()).collect();
    let parts: Vec<Part<'_>> = tensors
        .iter()
        .zip(&raws)
        .map(|(t, raw)| Part {
            name: &t.name,
            datatype: t.datatype(),
            shape: &t.shape,
            bytes: raw,
        })
        .collect();
    encode_parts(&parts, outputs)
}

/// One tensor of a message as its raw bytes, for a side that holds them already (the
/// plugin's outputs come out of libtorch as bytes): no `Tensor` is built on the way.
pub struct Part<'a> {
    pub name: &'a str,
    pub datatype: DataType,
    pub shape: &'a [i64],
    pub bytes: &'a [u8],
}

/// `parts` (with the `outputs` wanted, in a request) as a message.
pub fn encode_parts(parts: &[Part<'_>], outputs: &[String]) -> Vec<u8> {
    let header = Header {
        tensors: parts
            .iter()
            .map(|p| TensorHeader {
                name: p.name.to_string(),
                datatype: p.datatype.as_str().to_string(),
                shape: p.shape.to_vec(),
                bytes: p.bytes.len(),
            })
            .collect(),
        outputs: outputs.to_vec(),
        ..Header::default()
    };
    frame(&header, parts.iter().map(|p| p.bytes))
}

/// An answer that carries only an error.
pub fn encode_error(message: String, input_error: bool) -> Vec<u8> {
    let header = Header {
        error: Some(message),
        input_error,
        ..Header::default()
    };
    frame(&header, std::iter::empty())
}

fn frame<'a>(header: &Header, raws: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let data: usize = raws.clone().map(<[u8]>::len).sum();
    let mut out = Vec::with_capacity(8 + json.len() + data);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for raw in raws {
        out.extend_from_slice(raw);
    }
    out
}

/// The header of a message and each tensor's bytes, slices of `message` (no copy).
pub fn decode_parts(message: Bytes) -> Result<(Header, Vec<Bytes>), String> {
    let len_bytes: [u8; 8] = message
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("message shorter than its length prefix")?;
    let json_len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|e| e.to_string())?;
    let json = message
        .get(8..8usize.saturating_add(json_len))
        .ok_or("message shorter than its header")?;
    let header: Header = serde_json::from_slice(json).map_err(|e| format!("bad header: {e}"))?;
    let mut rest = message.slice(8 + json_len..);
    let mut raws = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        if t.bytes > rest.len() {
            return Err(format!(
                "tensor '{}': {} bytes announced, {} left",
                t.name,
                t.bytes,
                rest.len()
            ));
        }
        raws.push(rest.split_to(t.bytes));
    }
    Ok((header, raws))
}

/// The header and tensors of a message.
pub fn decode(message: Bytes) -> Result<(Header, Vec<Tensor>), String> {
    let (header, raws) = decode_parts(message)?;
    let tensors = header
        .tensors
        .iter()
        .zip(&raws)
        .map(|(t, raw)| {
            let datatype = parse_datatype(t)?;
            let data = TensorData::from_raw(&t.name, datatype, raw).map_err(|e| e.to_string())?;
            Tensor::new(t.name.clone(), t.shape.clone(), data).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((header, tensors))
}

/// A tensor header's datatype.
pub fn parse_datatype(t: &TensorHeader) -> Result<DataType, String> {
    DataType::parse(&t.datatype)
        .ok_or_else(|| format!("tensor '{}': unknown datatype {}", t.name, t.datatype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip() {
        let tensors = vec![
            Tensor::new("a", vec![2, 2], TensorData::F32(vec![1.0, 2.0, 3.0, 4.0])).unwrap(),
            Tensor::new("b", vec![3], TensorData::Bool(vec![true, false, true])).unwrap(),
            Tensor::new("c", vec![1], TensorData::I64(vec![-7])).unwrap(),
        ];
        let message = Bytes::from(encode(&tensors, &["OUTPUT__0".to_string()]));
        let (header, back) = decode(message.clone()).unwrap();
        assert_eq!(back, tensors);
        assert_eq!(header.outputs, vec!["OUTPUT__0"]);
        let (header, none) = decode(encode_error("bad".into(), true).into()).unwrap();
        assert!(none.is_empty() && header.input_error && header.error.as_deref() == Some("bad"));
        assert!(
            decode(message.slice(..message.len() - 1)).is_err(),
            "a cut message is an error"
        );
        assert!(decode(Bytes::from_static(&[1, 2, 3])).is_err());
    }
}
