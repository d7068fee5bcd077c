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

/// `header` (tensors' entries filled from `tensors`) then the tensors' bytes.
pub fn encode(tensors: &[Tensor], outputs: &[String]) -> Vec<u8> {
    let raws: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.to_raw()).collect();
    let header = Header {
        tensors: tensors
            .iter()
            .zip(&raws)
            .map(|(t, raw)| TensorHeader {
                name: t.name.clone(),
                datatype: t.datatype().as_str().to_string(),
                shape: t.shape.clone(),
                bytes: raw.len(),
            })
            .collect(),
        outputs: outputs.to_vec(),
        ..Header::default()
    };
    frame(&header, &raws)
}

/// An answer that carries only an error.
pub fn encode_error(message: String, input_error: bool) -> Vec<u8> {
    let header = Header {
        error: Some(message),
        input_error,
        ..Header::default()
    };
    frame(&header, &[])
}

fn frame(header: &Header, raws: &[Vec<u8>]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + json.len() + raws.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for raw in raws {
        out.extend_from_slice(raw);
    }
    out
}

/// The header and tensors of a message.
pub fn decode(message: &[u8]) -> Result<(Header, Vec<Tensor>), String> {
    let len_bytes: [u8; 8] = message
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("message shorter than its length prefix")?;
    let json_len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|e| e.to_string())?;
    let json = message
        .get(8..8usize.saturating_add(json_len))
        .ok_or("message shorter than its header")?;
    let header: Header = serde_json::from_slice(json).map_err(|e| format!("bad header: {e}"))?;
    let mut rest = Bytes::copy_from_slice(&message[8 + json_len..]);
    let mut tensors = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        let datatype = DataType::parse(&t.datatype)
            .ok_or_else(|| format!("tensor '{}': unknown datatype {}", t.name, t.datatype))?;
        if t.bytes > rest.len() {
            return Err(format!(
                "tensor '{}': {} bytes announced, {} left",
                t.name,
                t.bytes,
                rest.len()
            ));
        }
        let raw = rest.split_to(t.bytes);
        let data = TensorData::from_raw(&t.name, datatype, &raw).map_err(|e| e.to_string())?;
        tensors
            .push(Tensor::new(t.name.clone(), t.shape.clone(), data).map_err(|e| e.to_string())?);
    }
    Ok((header, tensors))
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
        let message = encode(&tensors, &["OUTPUT__0".to_string()]);
        let (header, back) = decode(&message).unwrap();
        assert_eq!(back, tensors);
        assert_eq!(header.outputs, vec!["OUTPUT__0"]);
        let (header, none) = decode(&encode_error("bad".into(), true)).unwrap();
        assert!(none.is_empty() && header.input_error && header.error.as_deref() == Some("bad"));
        assert!(
            decode(&message[..message.len() - 1]).is_err(),
            "a cut message is an error"
        );
        assert!(decode(&[1, 2, 3]).is_err());
    }
}
