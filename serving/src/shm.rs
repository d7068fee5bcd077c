//! Triton's shared-memory extensions: POSIX shared-memory objects (`/dev/shm`) that a local
//! client registers by name, and (CUDA shared memory) its GPU buffers, registered by their
//! CUDA IPC handle, so that input tensors reach a model, and its outputs reach the client,
//! without crossing the socket. A CUDA region is read and written with one device copy each
//! way (`nexus_gpu::ipc`), since the runtimes take host tensors.
//!
//! One [`SharedMemory`] serves both front ends. A request resolves each region it names once,
//! to a [`Slice`] holding an `Arc` of the mapping, so a region unregistered while the request
//! runs stays mapped until the request is done.
//!
//! The client's process owns the memory and may change it at any time, so no Rust reference
//! to it is ever made: inputs are copied out through raw pointers once, into the tensor
//! (Triton copies CPU inputs too), and outputs are copied in the same way. A client that
//! shrinks its object after registering it makes the server fault on the missing pages (as it
//! does Triton); that is why registering is a model-control right in the gateway's policy.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;
use serde::Serialize;

use nexus_gpu::ipc::{IpcError, IpcMemory};
use nexus_models::tensor::element_count;
use nexus_models::{DataType, Tensor, TensorData};

use crate::error::ServingError;
use crate::limits::Reservation;

/// Where Linux keeps the objects `shm_open` names.
const SHM_DIR: &str = "/dev/shm";

/// Regions registered at once: each holds a mapping until it is unregistered, so their
/// number is bounded like any other client-made state.
pub const MAX_REGIONS: usize = 1024;

/// Longest region name, in bytes: names are echoed in status, errors and logs.
const MAX_NAME_BYTES: usize = 256;

/// Longest object name under `/dev/shm` (`NAME_MAX`).
const MAX_KEY_BYTES: usize = 255;

/// Why a shared-memory call failed. The HTTP and gRPC front ends map each kind to their codes.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A region name or key that is not acceptable, or parameters that do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// Offsets and sizes that leave the region or the object (overflow included).
    #[error("{0}")]
    OutOfBounds(String),
    #[error("shared memory region '{0}' already in manager")]
    AlreadyExists(String),
    #[error("Unable to find system shared memory region: '{0}'")]
    NotFound(String),
    #[error("cannot register more than {MAX_REGIONS} shared memory regions; unregister some first")]
    TooMany,
    #[error("unable to open shared memory key '{key}': {source}")]
    Open { key: String, source: std::io::Error },
    #[error("Unable to find cuda shared memory region: '{0}'")]
    CudaNotFound(String),
    #[error("CUDA shared memory needs a usable GPU, and this server has none: {0}")]
    NoGpu(String),
}

/// Inside an inference every shared-memory failure is the request's fault.
impl From<ShmError> for ServingError {
    fn from(e: ShmError) -> Self {
        ServingError::InvalidArgument(e.to_string())
    }
}

/// A registered region as status reports it (Triton's JSON and gRPC field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// A CUDA region as Triton's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CudaRegionStatus {
    pub name: String,
    pub device_id: i64,
    pub byte_size: u64,
}

/// A registered region: a system shared-memory object mapped here, or a client's GPU memory
/// opened through its CUDA IPC handle. One namespace holds both, as in Triton.
#[derive(Debug)]
enum Region {
    System {
        status: RegionStatus,
        map: MmapRaw,
    },
    Cuda {
        status: CudaRegionStatus,
        memory: IpcMemory,
    },
}

impl Region {
    fn byte_size(&self) -> u64 {
        match self {
            Region::System { status, .. } => status.byte_size,
            Region::Cuda { status, .. } => status.byte_size,
        }
    }

    fn system(&self) -> Option<&RegionStatus> {
        match self {
            Region::System { status, .. } => Some(status),
            Region::Cuda { .. } => None,
        }
    }

    fn cuda(&self) -> Option<&CudaRegionStatus> {
        match self {
            Region::Cuda { status, .. } => Some(status),
            Region::System { .. } => None,
        }
    }
}

/// The registered regions, by name.
#[derive(Debug, Default)]
pub struct SharedMemory {
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
    /// Why no GPU is usable here, if none is: CUDA regions then cannot exist.
    no_gpu: Option<String>,
}

/// A tensor's `shared_memory_region`, `shared_memory_offset` and `shared_memory_byte_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub region: String,
    pub offset: u64,
    pub byte_size: u64,
}

impl Reference {
    /// The reference of tensor `tensor` from its parameters, `None` when it names no region.
    /// As in Triton, the region and the byte size come together or not at all.
    pub fn new(
        tensor: &str,
        region: Option<String>,
        offset: Option<u64>,
        byte_size: Option<u64>,
    ) -> Result<Option<Reference>, ShmError> {
        match (region, byte_size) {
            (Some(region), Some(byte_size)) => Ok(Some(Reference {
                region,
                offset: offset.unwrap_or(0),
                byte_size,
            })),
            (None, None) if offset.is_none() => Ok(None),
            _ => Err(ShmError::Invalid(format!(
                "tensor '{tensor}': shared_memory_region and shared_memory_byte_size must be \
                 given together (shared_memory_offset only with them)"
            ))),
        }
    }
}

/// Part of a registered region, bounds-checked, with the mapping held alive.
#[derive(Debug)]
pub struct Slice {
    region: Arc<Region>,
    offset: usize,
    len: usize,
    reference: Reference,
}

impl Slice {
    /// Copies the slice out of its region.
    fn copy_out(&self) -> Result<Vec<u8>, ShmError> {
        let map = match &*self.region {
            Region::System { map, .. } => map,
            Region::Cuda { memory, .. } => {
                let mut out = vec![0; self.len];
                memory.read(self.offset, &mut out).map_err(cuda_error)?;
                return Ok(out);
            }
        };
        let mut out = Vec::with_capacity(self.len);
        // SAFETY: `offset + len` lies within the mapping (checked in `SharedMemory::slice`),
        // which `self.region` keeps mapped, and `out` has room for `len` bytes. The other
        // process may write these bytes meanwhile: a `&[u8]` over them would promise the
        // compiler they do not change, so they are only read through this raw copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                map.as_ptr().add(self.offset),
                out.as_mut_ptr(),
                self.len,
            );
            out.set_len(self.len);
        }
        Ok(out)
    }

    /// Copies `data` to the start of the slice; it must fit.
    fn copy_in(&self, data: &[u8]) -> Result<(), ShmError> {
        assert!(data.len() <= self.len, "caller checks the size");
        let map = match &*self.region {
            Region::System { map, .. } => map,
            Region::Cuda { memory, .. } => {
                return memory.write(self.offset, data).map_err(cuda_error);
            }
        };
        // SAFETY: as in `copy_out`; the mapping is writable (mapped from a file opened
        // read-write) and `data` is server memory, so the two never overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                map.as_mut_ptr().add(self.offset),
                data.len(),
            );
        }
        Ok(())
    }
}

/// A failed IPC open or copy: the client's handle or device was wrong (or the GPU failed).
fn cuda_error(e: IpcError) -> ShmError {
    match e {
        IpcError::NoDriver => ShmError::NoGpu(e.to_string()),
        other => ShmError::Invalid(format!("CUDA shared memory: {other}")),
    }
}

/// The outputs of one request that go to shared memory, by output name, resolved before
/// inference so a bad reference fails before the model runs.
#[derive(Debug, Default)]
pub struct SharedOutputs(HashMap<String, Slice>);

impl SharedOutputs {
    /// Resolves output `name`'s reference in `memory`.
    pub fn add(
        &mut self,
        memory: &SharedMemory,
        name: String,
        reference: Reference,
    ) -> Result<(), ServingError> {
        let slice = memory.slice(reference)?;
        self.0.insert(name, slice);
        Ok(())
    }

    /// The reference output `name` was requested with, if it goes to shared memory.
    pub fn get(&self, name: &str) -> Option<&Reference> {
        self.0.get(name).map(|s| &s.reference)
    }

    /// Writes every output that goes to shared memory, in the raw layout of the binary
    /// extension (BYTES length-prefixed), or fails if its slice is too small.
    pub fn write(&self, outputs: &[Tensor]) -> Result<(), ServingError> {
        for tensor in outputs {
            let Some(slice) = self.0.get(&tensor.name) else {
                continue;
            };
            let raw = tensor.data.to_raw();
            if raw.len() > slice.len {
                return Err(ServingError::InvalidArgument(format!(
                    "shared memory size specified with the request for output '{}' ({} bytes) \
                     is not enough: the output is {} bytes",
                    tensor.name,
                    slice.len,
                    raw.len()
                )));
            }
            slice.copy_in(&raw)?;
        }
        Ok(())
    }
}

impl SharedMemory {
    /// No regions yet; `no_gpu` says why no GPU is usable here (`None` when one is).
    pub fn new(no_gpu: Option<String>) -> Self {
        Self {
            regions: Mutex::default(),
            no_gpu,
        }
    }

    /// Opens `byte_size` bytes of a client's GPU memory on CUDA device `device_id` from its
    /// IPC handle (`cudaIpcGetMemHandle`'s 64 bytes) and registers them as `name`. Without a
    /// usable GPU: UNAVAILABLE, with the reason.
    pub fn register_cuda(
        &self,
        name: &str,
        handle: &[u8],
        device_id: i64,
        byte_size: u64,
    ) -> Result<(), ShmError> {
        check_name(name)?;
        if let Some(why) = &self.no_gpu {
            return Err(ShmError::NoGpu(why.clone()));
        }
        let ordinal = i32::try_from(device_id).map_err(|_| {
            ShmError::Invalid(format!("device_id {device_id} is not a CUDA device"))
        })?;
        let size = usize::try_from(byte_size)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                ShmError::Invalid(format!(
                    "cuda shared memory region '{name}': byte_size must be more than 0"
                ))
            })?;
        self.check_free(name)?;
        let memory = IpcMemory::open(handle, ordinal, size).map_err(cuda_error)?;
        let status = CudaRegionStatus {
            name: name.to_string(),
            device_id,
            byte_size,
        };
        self.insert(name, Region::Cuda { status, memory })
    }

    /// Maps `byte_size` bytes at `offset` of the object `key` and registers them as `name`.
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), ShmError> {
        check_name(name)?;
        let object = object_name(key)?;
        if byte_size == 0 {
            return Err(ShmError::Invalid(format!(
                "shared memory region '{name}': byte_size must be more than 0"
            )));
        }
        // Checked before and after mapping: the mapping is made without the lock held, and
        // a refused name should not cost an open.
        self.check_free(name)?;
        let map = map_object(key, object, offset, byte_size)?;
        let status = RegionStatus {
            name: name.to_string(),
            key: key.to_string(),
            offset,
            byte_size,
        };
        self.insert(name, Region::System { status, map })
    }

    /// Registers `region` as `name` unless a region of that name was registered while it was
    /// being opened (the opening is done without the lock held).
    fn insert(&self, name: &str, region: Region) -> Result<(), ShmError> {
        let mut regions = self.regions.lock();
        check_free_in(&regions, name)?;
        regions.insert(name.to_string(), Arc::new(region));
        Ok(())
    }

    fn check_free(&self, name: &str) -> Result<(), ShmError> {
        check_free_in(&self.regions.lock(), name)
    }

    /// Unregisters system region `name`, or every system region when `name` is empty. As in
    /// Triton, a name that is not registered is no error. Requests that hold the region finish
    /// with it.
    pub fn unregister(&self, name: &str) {
        self.unregister_where(name, |r| r.system().is_some());
    }

    /// [`Self::unregister`] for CUDA regions (closed once no request holds them).
    pub fn unregister_cuda(&self, name: &str) {
        self.unregister_where(name, |r| r.cuda().is_some());
    }

    fn unregister_where(&self, name: &str, kind: impl Fn(&Region) -> bool) {
        let mut regions = self.regions.lock();
        if name.is_empty() {
            regions.retain(|_, r| !kind(r));
        } else if regions.get(name).is_some_and(|r| kind(r)) {
            regions.remove(name);
        }
    }

    /// The status of system region `name`, or of every one (by name) when `name` is empty.
    pub fn status(&self, name: &str) -> Result<Vec<RegionStatus>, ShmError> {
        self.status_of(name, |r| r.system().cloned())
    }

    /// The status of CUDA region `name`, or of every one (by name) when `name` is empty.
    pub fn cuda_status(&self, name: &str) -> Result<Vec<CudaRegionStatus>, ShmError> {
        self.status_of(name, |r| r.cuda().cloned())
            .map_err(|_| ShmError::CudaNotFound(name.to_string()))
    }

    fn status_of<T>(
        &self,
        name: &str,
        of: impl Fn(&Region) -> Option<T>,
    ) -> Result<Vec<T>, ShmError> {
        let regions = self.regions.lock();
        if name.is_empty() {
            return Ok(regions.values().filter_map(|r| of(r)).collect());
        }
        regions
            .get(name)
            .and_then(|r| of(r))
            .map(|s| vec![s])
            .ok_or_else(|| ShmError::NotFound(name.to_string()))
    }

    /// The part of a registered region that `reference` names.
    fn slice(&self, reference: Reference) -> Result<Slice, ShmError> {
        let region = self
            .regions
            .lock()
            .get(&reference.region)
            .cloned()
            .ok_or_else(|| ShmError::NotFound(reference.region.clone()))?;
        let size = region.byte_size();
        let fits = reference
            .offset
            .checked_add(reference.byte_size)
            .is_some_and(|end| end <= size);
        if !fits {
            return Err(ShmError::OutOfBounds(format!(
                "shared memory region '{}': offset {} + byte_size {} is past its end ({} bytes)",
                reference.region, reference.offset, reference.byte_size, size
            )));
        }
        // Both fit in the region, whose size fit in a usize when it was mapped.
        let offset = usize::try_from(reference.offset).expect("within a mapped region");
        let len = usize::try_from(reference.byte_size).expect("within a mapped region");
        Ok(Slice {
            region,
            offset,
            len,
            reference,
        })
    }

    /// Reads input `name` of `datatype` and `shape` from the region `reference` names. The
    /// copy is counted in `reservation` before it is made. A fixed-size datatype needs exactly
    /// shape × element size bytes; BYTES needs the length-prefixed elements the shape counts
    /// and nothing after them.
    pub fn read_input(
        &self,
        name: String,
        datatype: DataType,
        shape: Vec<i64>,
        reference: Reference,
        reservation: &mut Reservation,
    ) -> Result<Tensor, ServingError> {
        let slice = self.slice(reference)?;
        if let Some(size) = datatype.size() {
            let Some(expected) = element_count(&shape).and_then(|n| n.checked_mul(size)) else {
                return Err(ServingError::InvalidArgument(format!(
                    "input '{name}': shape {shape:?} is not a valid tensor shape"
                )));
            };
            if expected != slice.len {
                return Err(ServingError::InvalidArgument(format!(
                    "input '{name}': shared_memory_byte_size is {} but shape {shape:?} of \
                     {datatype} needs {expected} bytes",
                    slice.len
                )));
            }
        }
        reservation.grow(slice.len)?;
        let raw = Bytes::from(slice.copy_out()?);
        let data = TensorData::from_raw(&name, datatype, &raw)?;
        Ok(Tensor::new(name, shape, data)?)
    }
}

fn check_free_in(regions: &BTreeMap<String, Arc<Region>>, name: &str) -> Result<(), ShmError> {
    if regions.contains_key(name) {
        return Err(ShmError::AlreadyExists(name.to_string()));
    }
    if regions.len() >= MAX_REGIONS {
        return Err(ShmError::TooMany);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ShmError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ShmError::Invalid(format!(
            "shared memory region name {name:?} must be 1 to {MAX_NAME_BYTES} bytes without \
             control characters"
        )));
    }
    Ok(())
}

/// The object under `/dev/shm` that `key` names, as `shm_open` reads it: `/name` (or `name`),
/// one path component, so no key reaches a file anywhere else.
fn object_name(key: &str) -> Result<&str, ShmError> {
    let invalid = |reason: &str| {
        ShmError::Invalid(format!(
            "invalid shared memory key {key:?}: {reason}; a key is '/name' (a POSIX \
             shared memory object under {SHM_DIR})"
        ))
    };
    let name = key.strip_prefix('/').unwrap_or(key);
    if name.is_empty() || name.len() > MAX_KEY_BYTES {
        return Err(invalid("the name must be 1 to 255 bytes"));
    }
    if name.contains('/') || name.contains('\0') || name.contains("..") || name == "." {
        return Err(invalid(
            "the name may not contain '/', NUL or '..', nor be '.'",
        ));
    }
    Ok(name)
}

fn map_object(key: &str, object: &str, offset: u64, byte_size: u64) -> Result<MmapRaw, ShmError> {
    let open_error = |source| ShmError::Open {
        key: key.to_string(),
        source,
    };
    // /dev/shm is writable by every user: O_NOFOLLOW refuses a link planted there to a file
    // elsewhere, and O_NONBLOCK keeps a FIFO planted there from blocking the open.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(Path::new(SHM_DIR).join(object))
        .map_err(open_error)?;
    let metadata = file.metadata().map_err(open_error)?;
    if !metadata.file_type().is_file() {
        return Err(ShmError::Invalid(format!(
            "shared memory key '{key}' is not a shared memory object"
        )));
    }
    let object_size = metadata.len();
    let fits = offset
        .checked_add(byte_size)
        .is_some_and(|end| end <= object_size);
    if !fits {
        return Err(ShmError::OutOfBounds(format!(
            "offset {offset} + byte_size {byte_size} is past the end of shared memory key \
             '{key}' ({object_size} bytes)"
        )));
    }
    let len = usize::try_from(byte_size)
        .map_err(|_| ShmError::OutOfBounds(format!("byte_size {byte_size} cannot be mapped")))?;
    // The mapping outlives `file`: an open descriptor per region is not needed, and not kept.
    MmapOptions::new()
        .offset(offset)
        .len(len)
        .map_raw(&file)
        .map_err(open_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::InflightBytes;

    /// An object under /dev/shm of `size` bytes, removed when dropped.
    struct Object {
        key: String,
    }

    impl Object {
        fn new(tag: &str, size: u64) -> Object {
            let key = format!("/nexus-shm-test-{}-{tag}", std::process::id());
            let file = std::fs::File::create(format!("{SHM_DIR}{key}")).unwrap();
            file.set_len(size).unwrap();
            Object { key }
        }
    }

    impl Drop for Object {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(format!("{SHM_DIR}{}", self.key));
        }
    }

    fn reference(region: &str, offset: u64, byte_size: u64) -> Reference {
        Reference {
            region: region.into(),
            offset,
            byte_size,
        }
    }

    #[test]
    fn keys_name_one_object_under_dev_shm() {
        assert_eq!(object_name("/input").unwrap(), "input");
        assert_eq!(object_name("input").unwrap(), "input");
        for key in [
            "",
            "/",
            "//input",
            "/a/b",
            "../etc/passwd",
            "/..",
            "/.",
            "/a..b",
            "/a\0b",
        ] {
            assert!(
                matches!(object_name(key), Err(ShmError::Invalid(_))),
                "{key:?}"
            );
        }
        assert!(object_name(&format!("/{}", "k".repeat(256))).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"n".repeat(257)).is_err());
        assert!(check_name("input region").is_ok());
    }

    #[test]
    fn registration_checks_the_object() {
        let object = Object::new("register", 64);
        let memory = SharedMemory::default();
        let err = memory.register("r", &object.key, 60, 8).unwrap_err();
        assert!(matches!(err, ShmError::OutOfBounds(_)), "{err}");
        let err = memory.register("r", &object.key, u64::MAX, 2).unwrap_err();
        assert!(matches!(err, ShmError::OutOfBounds(_)), "{err}");
        let err = memory.register("r", &object.key, 0, 0).unwrap_err();
        assert!(matches!(err, ShmError::Invalid(_)), "{err}");
        let err = memory
            .register("r", "/nexus-shm-test-missing", 0, 8)
            .unwrap_err();
        assert!(matches!(err, ShmError::Open { .. }), "{err}");
        let err = memory.register("r", "../etc/passwd", 0, 8).unwrap_err();
        assert!(matches!(err, ShmError::Invalid(_)), "{err}");

        memory.register("r", &object.key, 8, 56).unwrap();
        let err = memory.register("r", &object.key, 0, 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shared memory region 'r' already in manager"
        );
        assert_eq!(
            memory.status("").unwrap(),
            [RegionStatus {
                name: "r".into(),
                key: object.key.clone(),
                offset: 8,
                byte_size: 56
            }]
        );
        assert!(matches!(memory.status("x"), Err(ShmError::NotFound(_))));
        memory.unregister("x");
        memory.unregister("r");
        assert!(memory.status("").unwrap().is_empty());
    }

    #[test]
    fn regions_are_bounded_in_number() {
        let object = Object::new("many", 8);
        let memory = SharedMemory::default();
        for i in 0..MAX_REGIONS {
            memory
                .register(&format!("r{i}"), &object.key, 0, 8)
                .unwrap();
        }
        let err = memory.register("one more", &object.key, 0, 8).unwrap_err();
        assert!(matches!(err, ShmError::TooMany), "{err}");
        memory.unregister("");
        assert!(memory.status("").unwrap().is_empty());
        memory.register("again", &object.key, 0, 8).unwrap();
    }

    #[test]
    fn slices_stay_inside_their_region() {
        let object = Object::new("slices", 32);
        let memory = SharedMemory::default();
        memory.register("r", &object.key, 16, 16).unwrap();
        assert!(memory.slice(reference("r", 0, 16)).is_ok());
        assert!(memory.slice(reference("r", 8, 8)).is_ok());
        for (offset, size) in [(0, 17), (16, 1), (u64::MAX, 1), (1, u64::MAX)] {
            let err = memory.slice(reference("r", offset, size)).unwrap_err();
            assert!(matches!(err, ShmError::OutOfBounds(_)), "{offset} {size}");
        }
        assert!(matches!(
            memory.slice(reference("nope", 0, 1)),
            Err(ShmError::NotFound(_))
        ));
        assert!(matches!(
            Reference::new("t", Some("r".into()), None, None),
            Err(ShmError::Invalid(_))
        ));
        assert!(Reference::new("t", None, Some(4), None).is_err());
        assert_eq!(Reference::new("t", None, None, None).unwrap(), None);
    }

    #[test]
    fn tensors_round_trip_and_sizes_must_match() {
        let object = Object::new("tensors", 64);
        let memory = SharedMemory::default();
        memory.register("r", &object.key, 0, 64).unwrap();
        let budget = InflightBytes::new(1 << 20);
        let mut reservation = budget.reserve_none();

        let mut outputs = SharedOutputs::default();
        outputs
            .add(&memory, "y".into(), reference("r", 4, 16))
            .unwrap();
        let y = Tensor::new("y", vec![4], TensorData::I32(vec![1, -2, 3, -4])).unwrap();
        outputs.write(std::slice::from_ref(&y)).unwrap();
        assert_eq!(outputs.get("y"), Some(&reference("r", 4, 16)));

        let read = |shape: Vec<i64>, datatype, offset, size, reservation: &mut Reservation| {
            memory.read_input(
                "x".into(),
                datatype,
                shape,
                reference("r", offset, size),
                reservation,
            )
        };
        let x = read(vec![4], DataType::I32, 4, 16, &mut reservation).unwrap();
        assert_eq!(x.data, y.data);
        assert_eq!(budget.used(), 16);
        let err = read(vec![3], DataType::I32, 4, 16, &mut reservation).unwrap_err();
        assert!(err.to_string().contains("needs 12 bytes"), "{err}");
        let err = read(vec![-1], DataType::I32, 4, 16, &mut reservation).unwrap_err();
        assert!(
            err.to_string().contains("not a valid tensor shape"),
            "{err}"
        );

        // An output larger than its slice is refused, and nothing is written.
        let mut small = SharedOutputs::default();
        small
            .add(&memory, "y".into(), reference("r", 32, 8))
            .unwrap();
        let err = small.write(std::slice::from_ref(&y)).unwrap_err();
        assert!(err.to_string().contains("is not enough"), "{err}");

        let words = Tensor::new(
            "y",
            vec![2],
            TensorData::Bytes(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]),
        )
        .unwrap();
        let mut strings = SharedOutputs::default();
        strings
            .add(&memory, "y".into(), reference("r", 32, 32))
            .unwrap();
        strings.write(std::slice::from_ref(&words)).unwrap();
        let x = read(vec![2], DataType::Bytes, 32, 11, &mut reservation).unwrap();
        assert_eq!(x.data, words.data);
        // The serialized length, exactly: a byte more is a truncated element.
        assert!(read(vec![2], DataType::Bytes, 32, 12, &mut reservation).is_err());

        // Copies are refused past the server's in-flight budget.
        let tight = InflightBytes::new(8);
        let mut reservation = tight.reserve_none();
        let err = read(vec![4], DataType::I32, 4, 16, &mut reservation).unwrap_err();
        assert!(matches!(err, ServingError::Unavailable(_)), "{err}");
    }

    #[test]
    fn a_request_keeps_its_region_mapped_after_unregister() {
        let object = Object::new("held", 16);
        let memory = SharedMemory::default();
        memory.register("r", &object.key, 0, 16).unwrap();
        let mut outputs = SharedOutputs::default();
        outputs
            .add(&memory, "y".into(), reference("r", 0, 16))
            .unwrap();
        memory.unregister("");
        let y = Tensor::new("y", vec![2], TensorData::I64(vec![7, 8])).unwrap();
        outputs.write(&[y]).unwrap();
        let written = std::fs::read(format!("{SHM_DIR}{}", object.key)).unwrap();
        assert_eq!(&written[..8], &7i64.to_le_bytes());
    }

    #[test]
    fn cuda_regions_need_a_gpu_and_a_whole_handle() {
        let memory = SharedMemory::new(Some("no NVIDIA driver found".into()));
        let err = memory.register_cuda("gpu", &[0; 64], 0, 64).unwrap_err();
        assert!(matches!(err, ShmError::NoGpu(_)), "{err}");
        assert_eq!(memory.cuda_status("").unwrap(), []);
        assert!(matches!(
            memory.cuda_status("gpu"),
            Err(ShmError::CudaNotFound(_))
        ));
        // Where a GPU is usable the handle is checked before any driver call.
        let memory = SharedMemory::default();
        let err = memory.register_cuda("gpu", &[0; 8], 0, 64).unwrap_err();
        assert!(err.to_string().contains("64 bytes, not 8"), "{err}");
        let err = memory.register_cuda("gpu", &[0; 64], 0, 0).unwrap_err();
        assert!(
            err.to_string().contains("byte_size must be more than 0"),
            "{err}"
        );
        // Unregistering a CUDA name leaves a system region of that name alone.
        memory.unregister_cuda("");
    }
}
