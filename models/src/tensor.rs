//! Tensors as the V2 protocol sees them: a name, a shape and typed, contiguous data.
//!
//! Every protocol front end (JSON, binary extension, gRPC typed contents, gRPC raw
//! contents) converts into [`TensorData`] once, and backends read it without copying.

use bytes::Bytes;
use half::f16;
use serde_json::Value;

use crate::config::pb;

/// A KServe V2 datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
}

impl DataType {
    /// Every datatype, in the order the V2 specification lists them.
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    /// The V2 protocol name, e.g. `FP32`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a V2 protocol name such as `INT64`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Size of one element in bytes; `None` for variable-length `BYTES`.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }

    /// The model-configuration enum (`TYPE_FP32`, `TYPE_STRING` for BYTES).
    pub fn to_config(self) -> pb::DataType {
        match self {
            DataType::Bool => pb::DataType::TypeBool,
            DataType::U8 => pb::DataType::TypeUint8,
            DataType::U16 => pb::DataType::TypeUint16,
            DataType::U32 => pb::DataType::TypeUint32,
            DataType::U64 => pb::DataType::TypeUint64,
            DataType::I8 => pb::DataType::TypeInt8,
            DataType::I16 => pb::DataType::TypeInt16,
            DataType::I32 => pb::DataType::TypeInt32,
            DataType::I64 => pb::DataType::TypeInt64,
            DataType::F16 => pb::DataType::TypeFp16,
            DataType::F32 => pb::DataType::TypeFp32,
            DataType::F64 => pb::DataType::TypeFp64,
            DataType::Bytes => pb::DataType::TypeString,
        }
    }

    /// The V2 datatype for a model-configuration enum; `None` for types V2 lacks.
    pub fn from_config(t: pb::DataType) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.to_config() == t)
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why tensor data could not be decoded; each message says what the client sent wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("tensor '{name}': {count} elements given but shape {shape:?} needs {expected}")]
    ElementCount {
        name: String,
        shape: Vec<i64>,
        count: usize,
        expected: usize,
    },
    #[error(
        "tensor '{name}': {len} bytes of {datatype} data is not a whole number of {size}-byte elements"
    )]
    RawSize {
        name: String,
        datatype: DataType,
        len: usize,
        size: usize,
    },
    #[error(
        "tensor '{name}': BYTES element {index} is truncated (raw BYTES elements are a 4-byte little-endian length then the bytes)"
    )]
    BytesFraming { name: String, index: usize },
    #[error("tensor '{name}': element {index} is {found}, expected a {datatype} value")]
    JsonElement {
        name: String,
        index: usize,
        found: String,
        datatype: DataType,
    },
    #[error("tensor '{name}': shape {shape:?} has a negative dimension")]
    NegativeDim { name: String, shape: Vec<i64> },
    #[error("tensor '{name}': shape {shape:?} holds more elements than can be addressed")]
    Overflow { name: String, shape: Vec<i64> },
}

/// Typed tensor elements, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Bytes>),
}

/// Expands `$m!(Variant, vec)` for whichever variant `$data` is.
macro_rules! each_variant {
    ($data:expr, $m:ident) => {
        match $data {
            TensorData::Bool(v) => $m!(Bool, v),
            TensorData::U8(v) => $m!(U8, v),
            TensorData::U16(v) => $m!(U16, v),
            TensorData::U32(v) => $m!(U32, v),
            TensorData::U64(v) => $m!(U64, v),
            TensorData::I8(v) => $m!(I8, v),
            TensorData::I16(v) => $m!(I16, v),
            TensorData::I32(v) => $m!(I32, v),
            TensorData::I64(v) => $m!(I64, v),
            TensorData::F16(v) => $m!(F16, v),
            TensorData::F32(v) => $m!(F32, v),
            TensorData::F64(v) => $m!(F64, v),
            TensorData::Bytes(v) => $m!(Bytes, v),
        }
    };
}

impl TensorData {
    /// The datatype of these elements.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F16(_) => DataType::F16,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        macro_rules! len {
            ($variant:ident, $v:expr) => {
                $v.len()
            };
        }
        each_variant!(self, len)
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the V2 raw layout: little-endian elements, BOOL as one byte, and BYTES
    /// as a 4-byte little-endian length before each element.
    pub fn from_raw(name: &str, datatype: DataType, raw: &Bytes) -> Result<Self, TensorError> {
        let Some(size) = datatype.size() else {
            return decode_bytes_elements(name, raw).map(TensorData::Bytes);
        };
        if !raw.len().is_multiple_of(size) {
            return Err(TensorError::RawSize {
                name: name.to_string(),
                datatype,
                len: raw.len(),
                size,
            });
        }
        let raw = raw.as_ref();
        // pod_collect_to_vec copies into a properly aligned Vec, whatever the input alignment.
        Ok(match datatype {
            DataType::Bool => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
            DataType::U8 => TensorData::U8(raw.to_vec()),
            DataType::U16 => TensorData::U16(from_le(raw)),
            DataType::U32 => TensorData::U32(from_le(raw)),
            DataType::U64 => TensorData::U64(from_le(raw)),
            DataType::I8 => TensorData::I8(bytemuck::pod_collect_to_vec(raw)),
            DataType::I16 => TensorData::I16(from_le(raw)),
            DataType::I32 => TensorData::I32(from_le(raw)),
            DataType::I64 => TensorData::I64(from_le(raw)),
            DataType::F16 => TensorData::F16(from_le(raw)),
            DataType::F32 => TensorData::F32(from_le(raw)),
            DataType::F64 => TensorData::F64(from_le(raw)),
            DataType::Bytes => unreachable!("BYTES returned above"),
        })
    }

    /// Encodes into the V2 raw layout (the inverse of [`TensorData::from_raw`]).
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
            TensorData::Bytes(items) => {
                let total = items.iter().map(|i| i.len() + 4).sum();
                let mut out = Vec::with_capacity(total);
                for item in items {
                    // A single element over 4 GiB cannot be framed; the body limit stops it long before.
                    out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    out.extend_from_slice(item);
                }
                out
            }
            TensorData::U8(v) => v.clone(),
            TensorData::U16(v) => to_le(v),
            TensorData::U32(v) => to_le(v),
            TensorData::U64(v) => to_le(v),
            TensorData::I8(v) => bytemuck::cast_slice(v).to_vec(),
            TensorData::I16(v) => to_le(v),
            TensorData::I32(v) => to_le(v),
            TensorData::I64(v) => to_le(v),
            TensorData::F16(v) => to_le(v),
            TensorData::F32(v) => to_le(v),
            TensorData::F64(v) => to_le(v),
        }
    }

    /// Decodes the V2 JSON `data` field: a flat or nested array (row-major) of numbers,
    /// booleans, or strings for BYTES.
    pub fn from_json(name: &str, datatype: DataType, data: &Value) -> Result<Self, TensorError> {
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        let bad = |index: usize, v: &Value| TensorError::JsonElement {
            name: name.to_string(),
            index,
            found: json_kind(v),
            datatype,
        };
        macro_rules! collect {
            ($variant:ident, $conv:expr) => {
                TensorData::$variant(
                    flat.iter()
                        .enumerate()
                        .map(|(i, v)| $conv(v).ok_or_else(|| bad(i, v)))
                        .collect::<Result<_, _>>()?,
                )
            };
        }
        Ok(match datatype {
            DataType::Bool => collect!(Bool, |v: &Value| v.as_bool()),
            DataType::U8 => collect!(U8, |v: &Value| int_as(v)),
            DataType::U16 => collect!(U16, |v: &Value| int_as(v)),
            DataType::U32 => collect!(U32, |v: &Value| int_as(v)),
            DataType::U64 => collect!(U64, |v: &Value| v.as_u64()),
            DataType::I8 => collect!(I8, |v: &Value| int_as(v)),
            DataType::I16 => collect!(I16, |v: &Value| int_as(v)),
            DataType::I32 => collect!(I32, |v: &Value| int_as(v)),
            DataType::I64 => collect!(I64, |v: &Value| v.as_i64()),
            DataType::F16 => collect!(F16, |v: &Value| v.as_f64().map(f16::from_f64)),
            DataType::F32 => collect!(F32, |v: &Value| v.as_f64().map(|x| x as f32)),
            DataType::F64 => collect!(F64, |v: &Value| v.as_f64()),
            DataType::Bytes => collect!(Bytes, |v: &Value| v
                .as_str()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))),
        })
    }

    /// Encodes as a flat V2 JSON array (see the `Serialize` impl).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A flat V2 JSON array, written straight to the serializer (no `Value` per element).
/// Floats are written as f64, as `serde_json::Value` holds them, so every JSON encoding of
/// a tensor reads the same. BYTES elements become strings (lossy for bytes that are not
/// UTF-8, as in Triton; use binary output for those).
impl serde::Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Bool(v) => serializer.collect_seq(v),
            TensorData::U8(v) => serializer.collect_seq(v),
            TensorData::U16(v) => serializer.collect_seq(v),
            TensorData::U32(v) => serializer.collect_seq(v),
            TensorData::U64(v) => serializer.collect_seq(v),
            TensorData::I8(v) => serializer.collect_seq(v),
            TensorData::I16(v) => serializer.collect_seq(v),
            TensorData::I32(v) => serializer.collect_seq(v),
            TensorData::I64(v) => serializer.collect_seq(v),
            TensorData::F16(v) => serializer.collect_seq(v.iter().map(|x| x.to_f64())),
            TensorData::F32(v) => serializer.collect_seq(v.iter().map(|x| f64::from(*x))),
            TensorData::F64(v) => serializer.collect_seq(v),
            TensorData::Bytes(v) => {
                serializer.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b)))
            }
        }
    }
}

impl TensorData {
    /// Joins parts of one datatype end to end, which is concatenation along dim 0 for
    /// row-major tensors. `None` when there are no parts or their datatypes differ.
    pub fn concat(parts: &[&TensorData]) -> Option<TensorData> {
        let total = parts.iter().map(|p| p.len()).sum();
        macro_rules! join {
            ($variant:ident, $first:expr) => {{
                let _ = $first;
                let mut all = Vec::with_capacity(total);
                for part in parts {
                    let TensorData::$variant(v) = part else {
                        return None;
                    };
                    all.extend_from_slice(v);
                }
                TensorData::$variant(all)
            }};
        }
        Some(each_variant!(parts.first()?, join))
    }

    /// Cuts into consecutive pieces of `counts` elements; `None` when the counts do not
    /// add up to the length.
    pub fn split(&self, counts: &[usize]) -> Option<Vec<TensorData>> {
        if counts.iter().sum::<usize>() != self.len() {
            return None;
        }
        macro_rules! cut {
            ($variant:ident, $v:expr) => {{
                let mut start = 0;
                counts
                    .iter()
                    .map(|c| {
                        let piece = TensorData::$variant($v[start..start + c].to_vec());
                        start += c;
                        piece
                    })
                    .collect()
            }};
        }
        Some(each_variant!(self, cut))
    }
}

fn from_le<T: bytemuck::Pod>(raw: &[u8]) -> Vec<T> {
    // V2 raw data is little-endian, which is the layout of every target Nexus builds for.
    const { assert!(cfg!(target_endian = "little")) };
    bytemuck::pod_collect_to_vec(raw)
}

fn to_le<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    const { assert!(cfg!(target_endian = "little")) };
    bytemuck::cast_slice(v).to_vec()
}

fn decode_bytes_elements(name: &str, raw: &Bytes) -> Result<Vec<Bytes>, TensorError> {
    let mut items = Vec::new();
    let mut pos = 0usize;
    while pos < raw.len() {
        let truncated = || TensorError::BytesFraming {
            name: name.to_string(),
            index: items.len(),
        };
        let len_bytes: [u8; 4] = raw
            .get(pos..pos + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(truncated)?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let start = pos + 4;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= raw.len())
            .ok_or_else(truncated)?;
        items.push(raw.slice(start..end));
        pos = end;
    }
    Ok(items)
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn int_as<T: TryFrom<i64>>(v: &Value) -> Option<T> {
    v.as_i64().and_then(|x| T::try_from(x).ok())
}

fn json_kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.len() > 32 => "a string".into(),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A named tensor with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the shape is non-negative and matches the element count.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<i64>,
        data: TensorData,
    ) -> Result<Self, TensorError> {
        let name = name.into();
        let Some(expected) = element_count(&shape) else {
            if shape.iter().any(|d| *d < 0) {
                return Err(TensorError::NegativeDim { name, shape });
            }
            return Err(TensorError::Overflow { name, shape });
        };
        if data.len() != expected {
            return Err(TensorError::ElementCount {
                name,
                count: data.len(),
                shape,
                expected,
            });
        }
        Ok(Tensor { name, shape, data })
    }

    /// The tensor's datatype.
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// Number of elements a shape holds; `None` when a dimension is negative.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_datatype_round_trips_through_raw_bytes() {
        let samples = vec![
            TensorData::Bool(vec![true, false, true]),
            TensorData::U8(vec![0, 255]),
            TensorData::U16(vec![1, 65535]),
            TensorData::U32(vec![7, u32::MAX]),
            TensorData::U64(vec![9, u64::MAX]),
            TensorData::I8(vec![-128, 127]),
            TensorData::I16(vec![-3, 3]),
            TensorData::I32(vec![-70000, 70000]),
            TensorData::I64(vec![i64::MIN, i64::MAX]),
            TensorData::F16(vec![f16::from_f32(1.5), f16::from_f32(-2.0)]),
            TensorData::F32(vec![0.25, -1e30]),
            TensorData::F64(vec![std::f64::consts::PI]),
            TensorData::Bytes(vec![
                Bytes::from_static(b"hi"),
                Bytes::new(),
                Bytes::from_static(&[0xff, 0]),
            ]),
        ];
        for data in samples {
            let raw = Bytes::from(data.to_raw());
            let back = TensorData::from_raw("t", data.datatype(), &raw).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn raw_layout_is_little_endian_v2() {
        let raw = TensorData::I32(vec![1, -2]).to_raw();
        assert_eq!(raw, vec![1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
        let raw = TensorData::Bytes(vec![Bytes::from_static(b"abc")]).to_raw();
        assert_eq!(raw, vec![3, 0, 0, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn raw_decoding_rejects_partial_elements() {
        let err =
            TensorData::from_raw("x", DataType::F32, &Bytes::from_static(&[0, 0, 0])).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a whole number of 4-byte elements"),
            "{err}"
        );
        let err = TensorData::from_raw(
            "s",
            DataType::Bytes,
            &Bytes::from_static(&[5, 0, 0, 0, b'a']),
        )
        .unwrap_err();
        assert!(matches!(err, TensorError::BytesFraming { index: 0, .. }));
        let err =
            TensorData::from_raw("s", DataType::Bytes, &Bytes::from_static(&[1, 0])).unwrap_err();
        assert!(matches!(err, TensorError::BytesFraming { .. }));
    }

    #[test]
    fn json_accepts_nested_arrays_and_checks_types() {
        let data = TensorData::from_json("x", DataType::I32, &json!([[1, 2], [3, 4]])).unwrap();
        assert_eq!(data, TensorData::I32(vec![1, 2, 3, 4]));
        let err = TensorData::from_json("x", DataType::I32, &json!([1, "two"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor 'x': element 1 is string \"two\", expected a INT32 value"
        );
        let err = TensorData::from_json("x", DataType::U8, &json!([256])).unwrap_err();
        assert!(matches!(err, TensorError::JsonElement { index: 0, .. }));
        let data = TensorData::from_json("b", DataType::Bytes, &json!(["a", "b"])).unwrap();
        assert_eq!(data.to_json(), json!(["a", "b"]));
        let data = TensorData::from_json("h", DataType::F16, &json!([0.5, 2])).unwrap();
        assert_eq!(data.to_json(), json!([0.5, 2.0]));
    }

    #[test]
    fn concat_and_split_are_inverse() {
        let a = TensorData::F32(vec![1.0, 2.0]);
        let b = TensorData::F32(vec![3.0, 4.0, 5.0, 6.0]);
        let joined = TensorData::concat(&[&a, &b]).unwrap();
        assert_eq!(joined, TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(joined.split(&[2, 4]).unwrap(), vec![a.clone(), b]);
        assert!(joined.split(&[2, 3]).is_none());
        assert!(TensorData::concat(&[&a, &TensorData::I32(vec![1])]).is_none());
        assert!(TensorData::concat(&[]).is_none());
        let s = TensorData::Bytes(vec![Bytes::from_static(b"x"), Bytes::from_static(b"yz")]);
        assert_eq!(
            s.split(&[1, 1]).unwrap()[1],
            TensorData::Bytes(vec![Bytes::from_static(b"yz")])
        );
    }

    #[test]
    fn tensor_checks_element_count_against_shape() {
        assert!(Tensor::new("x", vec![2, 2], TensorData::F32(vec![0.0; 4])).is_ok());
        let err = Tensor::new("x", vec![2, 3], TensorData::F32(vec![0.0; 4])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor 'x': 4 elements given but shape [2, 3] needs 6"
        );
        assert!(matches!(
            Tensor::new("x", vec![-1], TensorData::F32(vec![])).unwrap_err(),
            TensorError::NegativeDim { .. }
        ));
        assert!(matches!(
            Tensor::new("x", vec![i64::MAX, i64::MAX], TensorData::F32(vec![])).unwrap_err(),
            TensorError::Overflow { .. }
        ));
    }

    #[test]
    fn datatype_names_match_v2_and_config() {
        for t in DataType::ALL {
            assert_eq!(DataType::parse(t.as_str()), Some(t));
            assert_eq!(DataType::from_config(t.to_config()), Some(t));
        }
        assert_eq!(DataType::Bytes.to_config(), pb::DataType::TypeString);
        assert_eq!(DataType::parse("FLOAT"), None);
    }
}
