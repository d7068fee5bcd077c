//! Tensors as the V2 protocol sees them: a name, a shape and typed, contiguous data.
//!
//! Every protocol front end (JSON, binary extension, gRPC typed contents, gRPC raw
//! contents) converts into [`TensorData`] once, and backends read it without copying.

use bytes::Bytes;
use half::f16;
use serde_json::Value;

use crate::pb;

/// Name, datatype and shape of a model input or output; `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// An input a request may leave out (Triton's `optional`), e.g. text or token ids.
    pub optional: bool,
}

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
    #[error(
        "tensor '{name}': more than {expected} elements given but shape {shape:?} needs {expected}"
    )]
    TooManyElements {
        name: String,
        shape: Vec<i64>,
        expected: usize,
    },
    #[error("tensor '{name}': data nests arrays {depth} deep, deeper than shape {shape:?} allows")]
    JsonDepth {
        name: String,
        shape: Vec<i64>,
        depth: usize,
    },
    #[error("tensor '{name}': data is not valid JSON: {message}")]
    JsonSyntax { name: String, message: String },
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

    /// Decodes an already parsed V2 JSON `data` field (a flat or nested array, row-major,
    /// of numbers, booleans, or strings for BYTES). Nesting is bounded by serde_json's own
    /// depth limit; request bodies go through [`TensorData::from_json_text`] instead.
    pub fn from_json(name: &str, datatype: DataType, data: &Value) -> Result<Self, TensorError> {
        let limits = JsonLimits {
            max_elements: usize::MAX,
            max_depth: MAX_VALUE_DEPTH,
            shape: &[],
            text_len: 0,
        };
        decode_json(name, datatype, &limits, data)
    }

    /// Decodes the V2 JSON `data` field from its text straight into typed elements, with
    /// no `serde_json::Value` per element: memory stays proportional to the tensor.
    ///
    /// The declared `shape` bounds the work as it goes: more elements than it holds, or
    /// arrays nested deeper than its rank, are refused at the first offending element.
    pub fn from_json_text(
        name: &str,
        datatype: DataType,
        shape: &[i64],
        text: &str,
    ) -> Result<Self, TensorError> {
        let Some(expected) = element_count(shape) else {
            return Err(shape_error(name, shape));
        };
        let limits = JsonLimits {
            max_elements: expected,
            // A rank-0 tensor's one element may still come as `[x]`.
            max_depth: shape.len().max(1),
            shape,
            text_len: text.len(),
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let data = decode_json(name, datatype, &limits, &mut de)?;
        de.end().map_err(|e| json_syntax(name, &e))?;
        Ok(data)
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

/// How deep an already parsed `Value` may nest (serde_json refuses deeper text anyway).
const MAX_VALUE_DEPTH: usize = 128;

/// What one JSON `data` field may hold.
struct JsonLimits<'a> {
    max_elements: usize,
    max_depth: usize,
    /// The declared shape, for messages.
    shape: &'a [i64],
    /// Length of the JSON text (0 for a parsed `Value`), which bounds the reservation.
    text_len: usize,
}

fn json_syntax(name: &str, e: &serde_json::Error) -> TensorError {
    TensorError::JsonSyntax {
        name: name.to_string(),
        message: e.to_string(),
    }
}

fn shape_error(name: &str, shape: &[i64]) -> TensorError {
    let (name, shape) = (name.to_string(), shape.to_vec());
    if shape.iter().any(|d| *d < 0) {
        TensorError::NegativeDim { name, shape }
    } else {
        TensorError::Overflow { name, shape }
    }
}

/// Runs the typed visitor for `datatype` over `de`.
fn decode_json<'de, D: serde::Deserializer<'de>>(
    name: &str,
    datatype: DataType,
    limits: &JsonLimits<'_>,
    de: D,
) -> Result<TensorData, TensorError> {
    macro_rules! run {
        ($variant:ident, $t:ty) => {
            TensorData::$variant(collect_json::<$t, D>(name, datatype, limits, de)?)
        };
    }
    Ok(match datatype {
        DataType::Bool => run!(Bool, bool),
        DataType::U8 => run!(U8, u8),
        DataType::U16 => run!(U16, u16),
        DataType::U32 => run!(U32, u32),
        DataType::U64 => run!(U64, u64),
        DataType::I8 => run!(I8, i8),
        DataType::I16 => run!(I16, i16),
        DataType::I32 => run!(I32, i32),
        DataType::I64 => run!(I64, i64),
        DataType::F16 => run!(F16, f16),
        DataType::F32 => run!(F32, f32),
        DataType::F64 => run!(F64, f64),
        DataType::Bytes => run!(Bytes, Bytes),
    })
}

fn collect_json<'de, T: JsonElement, D: serde::Deserializer<'de>>(
    name: &str,
    datatype: DataType,
    limits: &JsonLimits<'_>,
    de: D,
) -> Result<Vec<T>, TensorError> {
    // Reserve for the declared shape, but never more bytes than the text is long: a shape
    // that overstates the data cannot make the reservation outgrow the request.
    let capacity = limits
        .max_elements
        .min(limits.text_len / std::mem::size_of::<T>().max(2));
    let mut collector = Collector {
        name,
        datatype,
        limits,
        out: Vec::with_capacity(capacity),
        error: None,
    };
    let seed = Level {
        collector: &mut collector,
        depth: 0,
    };
    match serde::de::DeserializeSeed::deserialize(seed, de) {
        Ok(()) => Ok(collector.out),
        // The visitor's own error says what was wrong; the deserializer's is a syntax error.
        Err(e) => Err(collector.error.take().unwrap_or(TensorError::JsonSyntax {
            name: name.to_string(),
            message: e.to_string(),
        })),
    }
}

/// An element type V2 JSON `data` can hold, with the JSON values it accepts: integers
/// in range for integer types, any number for floating types, booleans for BOOL and
/// strings for BYTES.
trait JsonElement: Sized {
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_string(_: &str) -> Option<Self> {
        None
    }
}

impl JsonElement for bool {
    fn from_bool(b: bool) -> Option<Self> {
        Some(b)
    }
}

macro_rules! json_int {
    ($($t:ty),*) => {$(
        impl JsonElement for $t {
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
        }
    )*};
}
json_int!(u8, u16, u32, u64, i8, i16, i32, i64);

macro_rules! json_float {
    ($($t:ty => |$v:ident| $convert:expr),*) => {$(
        impl JsonElement for $t {
            fn from_i64(v: i64) -> Option<Self> {
                <Self as JsonElement>::from_f64(v as f64)
            }
            fn from_u64(v: u64) -> Option<Self> {
                <Self as JsonElement>::from_f64(v as f64)
            }
            fn from_f64($v: f64) -> Option<Self> {
                Some($convert)
            }
        }
    )*};
}
json_float!(f16 => |v| f16::from_f64(v), f32 => |v| v as f32, f64 => |v| v);

impl JsonElement for Bytes {
    fn from_string(s: &str) -> Option<Self> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// The elements decoded so far and the first error of the client's making.
struct Collector<'a, T> {
    name: &'a str,
    datatype: DataType,
    limits: &'a JsonLimits<'a>,
    out: Vec<T>,
    error: Option<TensorError>,
}

impl<T: JsonElement> Collector<'_, T> {
    /// Records `error` for the caller and returns the deserializer error that stops parsing.
    fn fail<E: serde::de::Error>(&mut self, error: TensorError) -> E {
        let message = error.to_string();
        self.error = Some(error);
        E::custom(message)
    }

    fn push<E: serde::de::Error>(
        &mut self,
        value: Option<T>,
        found: impl FnOnce() -> String,
    ) -> Result<(), E> {
        let Some(value) = value else {
            let error = TensorError::JsonElement {
                name: self.name.to_string(),
                index: self.out.len(),
                found: found(),
                datatype: self.datatype,
            };
            return Err(self.fail(error));
        };
        if self.out.len() == self.limits.max_elements {
            let error = TensorError::TooManyElements {
                name: self.name.to_string(),
                shape: self.limits.shape.to_vec(),
                expected: self.limits.max_elements,
            };
            return Err(self.fail(error));
        }
        self.out.push(value);
        Ok(())
    }
}

/// One array level of `data`: a seed for the value there and the visitor of it.
struct Level<'c, 'a, T> {
    collector: &'c mut Collector<'a, T>,
    /// Arrays entered above this value.
    depth: usize,
}

impl<'de, T: JsonElement> serde::de::DeserializeSeed<'de> for Level<'_, '_, T> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de, T: JsonElement> serde::de::Visitor<'de> for Level<'_, '_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of {} values", self.collector.datatype)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.collector
            .push(T::from_bool(v), || format!("boolean {v}"))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.collector
            .push(T::from_i64(v), || format!("number {v}"))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.collector
            .push(T::from_u64(v), || format!("number {v}"))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.collector
            .push(T::from_f64(v), || format!("number {v}"))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.collector.push(T::from_string(v), || {
            if v.len() > 32 {
                "a string".into()
            } else {
                format!("string {v:?}")
            }
        })
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.collector.push(None, || "null".into())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.collector.push(None, || "an object".into())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth == self.collector.limits.max_depth {
            let error = TensorError::JsonDepth {
                name: self.collector.name.to_string(),
                shape: self.collector.limits.shape.to_vec(),
                depth: self.depth + 1,
            };
            return Err(self.collector.fail(error));
        }
        let depth = self.depth + 1;
        while seq
            .next_element_seed(Level {
                collector: &mut *self.collector,
                depth,
            })?
            .is_some()
        {}
        Ok(())
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
            return Err(shape_error(&name, &shape));
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
    fn json_text_decodes_every_datatype_flat_or_nested() {
        let cases: Vec<(DataType, &[i64], &str, TensorData)> = vec![
            (
                DataType::Bool,
                &[2],
                "[true, false]",
                TensorData::Bool(vec![true, false]),
            ),
            (DataType::U8, &[2], "[0, 255]", TensorData::U8(vec![0, 255])),
            (DataType::U16, &[1], "[65535]", TensorData::U16(vec![65535])),
            (
                DataType::U32,
                &[1],
                "[4294967295]",
                TensorData::U32(vec![u32::MAX]),
            ),
            (
                DataType::U64,
                &[1],
                "[18446744073709551615]",
                TensorData::U64(vec![u64::MAX]),
            ),
            (
                DataType::I8,
                &[2],
                "[-128, 127]",
                TensorData::I8(vec![-128, 127]),
            ),
            (DataType::I16, &[1], "[-3]", TensorData::I16(vec![-3])),
            (
                DataType::I32,
                &[2, 2],
                "[[1, 2], [3, 4]]",
                TensorData::I32(vec![1, 2, 3, 4]),
            ),
            (
                DataType::I64,
                &[2],
                "[-9223372036854775808, 1]",
                TensorData::I64(vec![i64::MIN, 1]),
            ),
            (
                DataType::F16,
                &[1, 2],
                "[[0.5, 2]]",
                TensorData::F16(vec![f16::from_f32(0.5), f16::from_f32(2.0)]),
            ),
            (
                DataType::F32,
                &[3],
                "[1.5, -2, 1e3]",
                TensorData::F32(vec![1.5, -2.0, 1000.0]),
            ),
            (
                DataType::F64,
                &[1, 1, 1],
                "[[[0.25]]]",
                TensorData::F64(vec![0.25]),
            ),
            (
                DataType::Bytes,
                &[2],
                r#"["a\u00e9", ""]"#,
                TensorData::Bytes(vec![Bytes::from("a\u{e9}"), Bytes::new()]),
            ),
            // Nested data may also come flat, and a scalar tensor's element bare or in brackets.
            (
                DataType::I32,
                &[2, 2],
                "[1, 2, 3, 4]",
                TensorData::I32(vec![1, 2, 3, 4]),
            ),
            (DataType::I32, &[], "7", TensorData::I32(vec![7])),
            (DataType::I32, &[], "[7]", TensorData::I32(vec![7])),
        ];
        for (datatype, shape, text, expected) in cases {
            let data = TensorData::from_json_text("t", datatype, shape, text)
                .unwrap_or_else(|e| panic!("{datatype} {text}: {e}"));
            assert_eq!(data, expected, "{datatype} {text}");
            // The parsed-Value path gives the same elements.
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                TensorData::from_json("t", datatype, &value).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn json_text_refuses_what_the_shape_and_datatype_do_not_allow() {
        let err = |datatype, shape: &[i64], text| {
            TensorData::from_json_text("x", datatype, shape, text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(DataType::I32, &[2], "[1, \"two\"]"),
            "tensor 'x': element 1 is string \"two\", expected a INT32 value"
        );
        assert_eq!(
            err(DataType::U8, &[1], "[256]"),
            "tensor 'x': element 0 is number 256, expected a UINT8 value"
        );
        assert!(err(DataType::I64, &[1], "[1.5]").contains("number 1.5, expected a INT64"));
        assert!(err(DataType::Bool, &[1], "[1]").contains("number 1, expected a BOOL"));
        assert!(err(DataType::Bytes, &[1], "[1]").contains("expected a BYTES"));
        assert!(err(DataType::F32, &[1], "[null]").contains("element 0 is null"));
        assert!(err(DataType::F32, &[1], r#"[{"a": 1}]"#).contains("is an object"));
        assert_eq!(
            err(DataType::F32, &[2], "[1, 2, 3]"),
            "tensor 'x': more than 2 elements given but shape [2] needs 2"
        );
        assert_eq!(
            err(DataType::F32, &[2], "[[1, 2]]"),
            "tensor 'x': data nests arrays 2 deep, deeper than shape [2] allows"
        );
        // Arrays nested far deeper than the shape stop at the first level too deep.
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(DataType::F32, &[1, 1], &deep).contains("nests arrays 3 deep"));
        assert!(err(DataType::F32, &[2], "[1, 2").contains("data is not valid JSON"));
        assert!(err(DataType::F32, &[2], "[1, 2] x").contains("data is not valid JSON"));
        assert!(err(DataType::F32, &[-1], "[]").contains("negative dimension"));
        // A shape far larger than the data does not make the decoder reserve for it (the
        // element count is then refused by `Tensor::new`).
        let data = TensorData::from_json_text("x", DataType::F64, &[1 << 40], "[1]").unwrap();
        assert_eq!(data.len(), 1);
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
