//! What the machine has: the seam between where GPU facts come from (NVML on a real machine,
//! data in tests) and everything that decides with them (selection, placement, metrics).

use serde::{Deserialize, Serialize};

/// One NVIDIA device as NVML reports it. Readings a device does not support (power on some
/// boards, utilisation under MIG) are `None` rather than an error: one missing sensor must
/// not hide the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML's index: the order of the whole machine, before `CUDA_VISIBLE_DEVICES`.
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// CUDA compute capability, e.g. `[9, 0]` for an H100.
    pub compute_capability: Option<[i32; 2]>,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// Percent of the last sample period a kernel ran.
    pub utilization_percent: Option<u32>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub temperature_celsius: Option<u32>,
    /// Energy since the driver loaded.
    pub energy_joules: Option<f64>,
}

impl Gpu {
    pub fn memory_free_bytes(&self) -> u64 {
        self.memory_total_bytes
            .saturating_sub(self.memory_used_bytes)
    }
}

/// A snapshot of the machine's GPUs and driver.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub driver_version: Option<String>,
    /// The newest CUDA version the driver supports, e.g. "13.0".
    pub cuda_version: Option<String>,
    pub devices: Vec<Gpu>,
}

/// Why no inventory could be read. Every variant is an answer ("no GPUs, because …"), not a
/// crash: a machine without a driver is the common case on CPU hosts.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no NVIDIA driver found ({0}); on a GPU machine, install the NVIDIA driver")]
    NoDriver(String),
    #[error("the NVIDIA driver is installed but not usable: {0}")]
    Driver(String),
    #[error("GPU inventory file {path}: {reason}")]
    File { path: String, reason: String },
}

/// Where GPU facts come from. One implementation reads NVML; tests give inventories as data,
/// so placement and eviction are tested here on machines without a GPU.
pub trait GpuSource: Send + Sync {
    /// The devices and their current readings (memory, utilisation, power) now.
    fn snapshot(&self) -> Result<Inventory, GpuError>;
}

/// An inventory given as data: tests, and `--gpu-inventory FILE` (JSON in [`Inventory`]'s
/// shape) to rehearse placement for a machine one does not have.
#[derive(Debug, Clone, Default)]
pub struct FixedSource(pub Inventory);

impl FixedSource {
    pub fn from_file(path: &std::path::Path) -> Result<Self, GpuError> {
        let fail = |reason: String| GpuError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let inventory = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        Ok(Self(inventory))
    }
}

impl GpuSource for FixedSource {
    fn snapshot(&self) -> Result<Inventory, GpuError> {
        Ok(self.0.clone())
    }
}

/// A device for tests: `memory_gib` of memory, `used_gib` of it in use.
#[cfg(test)]
pub(crate) fn test_gpu(index: u32, memory_gib: u64, used_gib: u64) -> Gpu {
    Gpu {
        index,
        uuid: format!("GPU-test-{index}"),
        name: "Test GPU".into(),
        compute_capability: Some([9, 0]),
        memory_total_bytes: memory_gib << 30,
        memory_used_bytes: used_gib << 30,
        utilization_percent: Some(0),
        power_watts: Some(70.0),
        power_limit_watts: Some(700.0),
        temperature_celsius: Some(30),
        energy_joules: Some(1000.0),
    }
}
