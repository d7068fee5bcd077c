//! The CUDA driver API as the runtimes will see it: whether `libcuda` loads and initialises,
//! its version, and how many devices it shows this process (after `CUDA_VISIBLE_DEVICES`).
//! cudarc loads `libcuda` on first use and panics when it is absent, so every call here is
//! behind [`cudarc::driver::sys::is_culib_present`].

use serde::Serialize;

/// What the CUDA driver says, or why it says nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum CudaDriver {
    /// `libcuda.so` is not on the library path: no driver on this machine.
    Absent,
    /// `libcuda` loaded but `cuInit` failed (no device, driver and library mismatch, …).
    Failed(String),
    /// Ready: the driver's CUDA version ("13.0") and the devices visible to this process.
    Ready { version: String, devices: usize },
}

impl CudaDriver {
    pub fn probe() -> Self {
        // SAFETY: only tries to dlopen the library's candidate names; calls nothing in it.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Self::Absent;
        }
        use cudarc::driver::result;
        if let Err(e) = result::init() {
            return Self::Failed(e.to_string());
        }
        let mut version = 0;
        // SAFETY: the library is present and initialised; the pointer is a live local.
        let read = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
        if let Err(e) = read.result() {
            return Self::Failed(e.to_string());
        }
        match result::device::get_count() {
            Ok(n) => Self::Ready {
                version: format!("{}.{}", version / 1000, version % 1000 / 10),
                devices: usize::try_from(n).unwrap_or(0),
            },
            Err(e) => Self::Failed(e.to_string()),
        }
    }
}

impl std::fmt::Display for CudaDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absent => write!(f, "no CUDA driver (libcuda.so not found)"),
            Self::Failed(why) => write!(f, "CUDA driver present but not usable: {why}"),
            Self::Ready { version, devices } => {
                write!(
                    f,
                    "CUDA driver {version}, {devices} device(s) visible to this process"
                )
            }
        }
    }
}
