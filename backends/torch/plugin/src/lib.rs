//! libnexus_torch.so: TorchScript modules run by libtorch (through `tch`), behind the C
//! functions that `nexus-backend-torch` opens with libloading. Every entry point catches
//! panics (unwinding across the C boundary is undefined), so a bad model or request is an
//! error message, never a crash of the server.

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use nexus_backend_torch::wire::{self, ABI_VERSION, LoadRequest, TensorHeader};
use nexus_models::DataType;
use nexus_models::tensor::element_count;
use tch::{CModule, Device, IValue, Kind};

/// A buffer handed to nexus, which gives it back to `nexus_torch_free`.
#[repr(C)]
pub struct Buffer {
    ptr: *mut u8,
    len: usize,
    cap: usize,
}

fn give(bytes: Vec<u8>) -> Buffer {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    Buffer {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

unsafe extern "C" {
    fn nexus_forward_arguments(path: *const c_char, error: *mut *mut c_char) -> *mut c_char;
    fn nexus_inference_mode_enter() -> *mut c_void;
    fn nexus_inference_mode_exit(guard: *mut c_void);
}

/// One loaded module and how requests bind to it.
struct Model {
    module: CModule,
    device: Device,
    /// Config input names, and the `forward` position each is passed at.
    inputs: Vec<(String, usize)>,
    /// Config output names, in config order.
    outputs: Vec<String>,
}

#[unsafe(no_mangle)]
pub extern "C" fn nexus_torch_abi_version() -> u32 {
    ABI_VERSION
}

/// # Safety
/// `request` points to `len` readable bytes; `error` is a valid out-pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nexus_torch_load(
    request: *const u8,
    len: usize,
    error: *mut Buffer,
) -> *mut c_void {
    // SAFETY: the caller passes a live buffer of `len` bytes.
    let request = unsafe { std::slice::from_raw_parts(request, len) };
    let loaded = catch_unwind(AssertUnwindSafe(|| load(request))).unwrap_or_else(|panic| {
        Err(format!(
            "the PyTorch backend panicked: {}",
            panic_text(&panic)
        ))
    });
    match loaded {
        Ok(model) => Box::into_raw(Box::new(model)).cast(),
        Err(message) => {
            // SAFETY: `error` is a valid out-pointer (caller's contract).
            unsafe { error.write(give(message.into_bytes())) };
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// `model` came from `nexus_torch_load` and is not used by another thread during the call;
/// `request` points to `len` readable bytes; `answer` is a valid out-pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nexus_torch_infer(
    model: *mut c_void,
    request: *const u8,
    len: usize,
    answer: *mut Buffer,
) {
    // SAFETY: caller's contract.
    let (model, request) = unsafe {
        (
            &*(model as *const Model),
            std::slice::from_raw_parts(request, len),
        )
    };
    let result = catch_unwind(AssertUnwindSafe(|| infer(model, request))).unwrap_or_else(|panic| {
        Err((
            format!("the PyTorch backend panicked: {}", panic_text(&panic)),
            false,
        ))
    });
    let bytes = match result {
        Ok(bytes) => bytes,
        Err((message, input_error)) => wire::encode_error(message, input_error),
    };
    // SAFETY: caller's contract.
    unsafe { answer.write(give(bytes)) };
}

/// # Safety
/// `model` came from `nexus_torch_load` and is unloaded once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nexus_torch_unload(model: *mut c_void) {
    if !model.is_null() {
        // SAFETY: caller's contract; the box was made by `nexus_torch_load`.
        drop(unsafe { Box::from_raw(model as *mut Model) });
    }
}

/// # Safety
/// `buffer` was filled by this library and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nexus_torch_free(buffer: Buffer) {
    if !buffer.ptr.is_null() {
        // SAFETY: the parts come from a Vec<u8> given away by `give`.
        drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

static INTER_OP: Once = Once::new();

fn load(request: &[u8]) -> Result<Model, String> {
    let request: LoadRequest =
        serde_json::from_slice(request).map_err(|e| format!("bad load request: {e}"))?;
    // libtorch sizes its inter-op pool once per process, before any work: Nexus runs each
    // instance on its own thread, so one inter-op thread unless the operator says otherwise.
    INTER_OP.call_once(|| {
        let threads = std::env::var("NEXUS_TORCH_INTER_OP_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        tch::set_num_interop_threads(threads);
    });
    if request.intra_op_threads > 0 {
        tch::set_num_threads(request.intra_op_threads as i32);
    }
    let device = match request.gpu {
        None => Device::Cpu,
        Some(id) if tch::Cuda::is_available() => Device::Cuda(id as usize),
        Some(id) => {
            return Err(format!(
                "CUDA device {id} requested, but CUDA is not available to libtorch here (no GPU, or a CPU-only libtorch); use instance_group kind KIND_CPU"
            ));
        }
    };
    let mut module = CModule::load_on_device(&request.path, device)
        .map_err(|e| format!("not a TorchScript module libtorch can load: {e}"))?;
    module.set_eval();
    let positions = positions(&request)?;
    Ok(Model {
        module,
        device,
        inputs: request.inputs.into_iter().zip(positions).collect(),
        outputs: request.outputs,
    })
}

/// `N` of a `NAME__N` name (Triton's convention for positional tensors).
fn index_of(name: &str) -> Option<usize> {
    name.rsplit_once("__").and_then(|(_, n)| n.parse().ok())
}

/// Where each config input goes among `forward`'s arguments: by `NAME__<index>` when every
/// input is so named, else by `forward`'s argument names.
fn positions(request: &LoadRequest) -> Result<Vec<usize>, String> {
    let names = &request.inputs;
    if let Some(indices) = names
        .iter()
        .map(|n| index_of(n))
        .collect::<Option<Vec<usize>>>()
    {
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        if sorted != (0..names.len()).collect::<Vec<_>>() {
            return Err(format!(
                "inputs {names:?} must number the forward arguments 0 to {} once each",
                names.len() - 1
            ));
        }
        return Ok(indices);
    }
    let arguments = forward_arguments(&request.path)?;
    if arguments.len() != names.len() {
        return Err(format!(
            "forward takes {} arguments {arguments:?} but the config lists {} inputs {names:?}; name them after the arguments or INPUT__0, INPUT__1, …",
            arguments.len(),
            names.len()
        ));
    }
    names
        .iter()
        .map(|n| {
            arguments.iter().position(|a| a == n).ok_or_else(|| {
                format!(
                    "input '{n}' is neither NAME__<index> nor an argument of forward {arguments:?}"
                )
            })
        })
        .collect()
}

fn forward_arguments(path: &str) -> Result<Vec<String>, String> {
    let path = CString::new(path).map_err(|e| e.to_string())?;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `path` is a C string; `error` is a valid out-pointer; both results are
    // malloc'ed strings freed below.
    unsafe {
        let names = nexus_forward_arguments(path.as_ptr(), &mut error);
        let take = |p: *mut c_char| {
            let text = CStr::from_ptr(p).to_string_lossy().into_owned();
            libc_free(p);
            text
        };
        if names.is_null() {
            return Err(if error.is_null() {
                "cannot read forward's arguments".into()
            } else {
                take(error)
            });
        }
        let names = take(names);
        Ok(names
            .lines()
            .map(str::to_string)
            .filter(|n| !n.is_empty())
            .collect())
    }
}

unsafe extern "C" {
    #[link_name = "free"]
    fn libc_free(p: *mut c_char);
}

/// Runs one request; an error carries whether the request was at fault.
fn infer(model: &Model, request: &[u8]) -> Result<Vec<u8>, (String, bool)> {
    // The request's one copy: libtorch then copies each tensor's bytes out of it.
    let (header, raws) =
        wire::decode_parts(bytes::Bytes::copy_from_slice(request)).map_err(|e| (e, false))?;
    let mut arguments: Vec<Option<IValue>> = (0..model.inputs.len()).map(|_| None).collect();
    for (name, position) in &model.inputs {
        let index = header
            .tensors
            .iter()
            .position(|t| &t.name == name)
            .ok_or_else(|| {
                (
                    format!("input '{name}' is missing: a PyTorch model takes every input"),
                    true,
                )
            })?;
        let tensor =
            to_torch(&header.tensors[index], &raws[index], model.device).map_err(|e| (e, true))?;
        arguments[*position] = Some(IValue::Tensor(tensor));
    }
    let arguments: Vec<IValue> = arguments.into_iter().flatten().collect();
    // SAFETY: enter and exit pair up on this thread around the forward call.
    let guard = unsafe { nexus_inference_mode_enter() };
    let result = model.module.forward_is(&arguments);
    // SAFETY: the guard from enter, dropped once.
    unsafe { nexus_inference_mode_exit(guard) };
    let result = result.map_err(|e| {
        let message = e.to_string();
        // Shape and type mismatches are the caller's; libtorch reports them as errors too.
        let caller = [
            "Expected",
            "size",
            "shape",
            "dtype",
            "must match",
            "mismatch",
        ]
        .iter()
        .any(|hint| message.contains(hint));
        (format!("forward failed: {message}"), caller)
    })?;
    let outputs = header
        .outputs
        .iter()
        .map(|name| {
            let position = model.outputs.iter().position(|o| o == name).unwrap_or(0);
            let value =
                pick(&result, name, position, model.outputs.len()).map_err(|e| (e, false))?;
            from_torch(name, value).map_err(|e| (e, false))
        })
        .collect::<Result<Vec<Output>, _>>()?;
    let parts: Vec<wire::Part<'_>> = header
        .outputs
        .iter()
        .zip(&outputs)
        .map(|(name, o)| wire::Part {
            name,
            datatype: o.datatype,
            shape: &o.shape,
            bytes: &o.bytes,
        })
        .collect();
    Ok(wire::encode_parts(&parts, &[]))
}

/// The tensor for output `name` (at `position` among `count` config outputs) in what
/// `forward` returned.
fn pick<'a>(
    result: &'a IValue,
    name: &str,
    position: usize,
    count: usize,
) -> Result<&'a tch::Tensor, String> {
    let element = |items: &'a [IValue]| {
        let index = index_of(name).unwrap_or(position);
        items.get(index).ok_or_else(|| {
            format!(
                "output '{name}' is element {index}, but forward returned {} elements",
                items.len()
            )
        })
    };
    let value = match result {
        IValue::Tensor(t) if count == 1 || index_of(name) == Some(0) => return Ok(t),
        IValue::Tensor(_) => {
            return Err(format!(
                "forward returned one tensor, but the config lists {count} outputs"
            ));
        }
        IValue::Tuple(items) | IValue::GenericList(items) => element(items)?,
        IValue::TensorList(items) => {
            let index = index_of(name).unwrap_or(position);
            return items.get(index).ok_or_else(|| {
                format!(
                    "output '{name}' is element {index}, but forward returned {} tensors",
                    items.len()
                )
            });
        }
        IValue::GenericDict(entries) => entries
            .iter()
            .find(|(k, _)| matches!(k, IValue::String(key) if key == name))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("forward returned a dict without the key '{name}'"))?,
        _ => {
            return Err(
                "forward returned neither a tensor nor a tuple, list or dict of them".into(),
            );
        }
    };
    match value {
        IValue::Tensor(t) => Ok(t),
        _ => Err(format!("output '{name}' is not a tensor")),
    }
}

fn kind_of(datatype: DataType) -> Option<Kind> {
    Some(match datatype {
        DataType::Bool => Kind::Bool,
        DataType::U8 => Kind::Uint8,
        DataType::I8 => Kind::Int8,
        DataType::I16 => Kind::Int16,
        DataType::I32 => Kind::Int,
        DataType::I64 => Kind::Int64,
        DataType::F16 => Kind::Half,
        DataType::F32 => Kind::Float,
        DataType::F64 => Kind::Double,
        _ => return None,
    })
}

fn datatype_of(kind: Kind) -> Option<DataType> {
    Some(match kind {
        Kind::Bool => DataType::Bool,
        Kind::Uint8 => DataType::U8,
        Kind::Int8 => DataType::I8,
        Kind::Int16 => DataType::I16,
        Kind::Int => DataType::I32,
        Kind::Int64 => DataType::I64,
        Kind::Half => DataType::F16,
        Kind::Float => DataType::F32,
        Kind::Double => DataType::F64,
        _ => return None,
    })
}

/// An input's bytes as a libtorch tensor, after checking they hold exactly the elements
/// its shape says (libtorch copies as many bytes as the shape needs, unchecked).
fn to_torch(t: &TensorHeader, raw: &[u8], device: Device) -> Result<tch::Tensor, String> {
    let datatype = wire::parse_datatype(t)?;
    let kind = kind_of(datatype).ok_or_else(|| {
        format!(
            "input '{}': {} tensors have no PyTorch type here",
            t.name,
            datatype.as_str()
        )
    })?;
    let expected = element_count(&t.shape)
        .and_then(|n| n.checked_mul(datatype.size().unwrap_or(1)))
        .ok_or_else(|| {
            format!(
                "input '{}': shape {:?} is not a tensor shape",
                t.name, t.shape
            )
        })?;
    if raw.len() != expected {
        return Err(format!(
            "input '{}': {} bytes for shape {:?}, which needs {expected}",
            t.name,
            raw.len(),
            t.shape
        ));
    }
    let tensor = tch::Tensor::f_from_data_size(raw, &t.shape, kind)
        .map_err(|e| format!("input '{}': {e}", t.name))?;
    if device == Device::Cpu {
        return Ok(tensor);
    }
    tensor
        .f_to_device(device)
        .map_err(|e| format!("input '{}': {e}", t.name))
}

/// An output as the bytes, type and shape that go on the wire.
struct Output {
    datatype: DataType,
    shape: Vec<i64>,
    bytes: Vec<u8>,
}

fn from_torch(name: &str, t: &tch::Tensor) -> Result<Output, String> {
    let t = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(|e| format!("output '{name}': {e}"))?;
    let datatype = datatype_of(t.kind()).ok_or_else(|| {
        format!(
            "output '{name}' has type {:?}, which the V2 protocol cannot carry",
            t.kind()
        )
    })?;
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * datatype.size().unwrap_or(1)];
    t.f_copy_data_u8(&mut bytes, numel)
        .map_err(|e| format!("output '{name}': {e}"))?;
    Ok(Output {
        datatype,
        shape: t.size(),
        bytes,
    })
}
