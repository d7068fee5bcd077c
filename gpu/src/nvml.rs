//! The inventory from NVML, the driver's management library (what `nvidia-smi` reads).
//! `nvml-wrapper` loads `libnvidia-ml.so.1` at run time, so the binary runs on machines
//! without a driver and learns it here, as an error.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;

use crate::inventory::{Gpu, GpuError, GpuSource, Inventory};

/// NVML, initialised once (loading the library and its symbols is the expensive part).
pub struct NvmlSource {
    nvml: Nvml,
}

impl NvmlSource {
    /// Loads NVML; without a driver this is [`GpuError::NoDriver`].
    pub fn open() -> Result<Self, GpuError> {
        let nvml = Nvml::init().map_err(|e| match e {
            NvmlError::LibloadingError(e) => GpuError::NoDriver(e.to_string()),
            NvmlError::DriverNotLoaded => GpuError::NoDriver(
                "libnvidia-ml is present but the kernel driver is not loaded".into(),
            ),
            other => GpuError::Driver(other.to_string()),
        })?;
        Ok(Self { nvml })
    }

    fn device(&self, index: u32) -> Result<Gpu, NvmlError> {
        let device = self.nvml.device_by_index(index)?;
        let memory = device.memory_info()?;
        Ok(Gpu {
            index,
            uuid: device.uuid()?,
            name: device.name()?,
            compute_capability: device
                .cuda_compute_capability()
                .ok()
                .map(|c| [c.major, c.minor]),
            memory_total_bytes: memory.total,
            memory_used_bytes: memory.used,
            utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
            power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            power_limit_watts: device
                .enforced_power_limit()
                .ok()
                .map(|mw| f64::from(mw) / 1000.0),
            temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
            energy_joules: device
                .total_energy_consumption()
                .ok()
                .map(|mj| mj as f64 / 1000.0),
        })
    }
}

impl GpuSource for NvmlSource {
    fn snapshot(&self) -> Result<Inventory, GpuError> {
        let driver = |e: NvmlError| GpuError::Driver(e.to_string());
        let count = self.nvml.device_count().map_err(driver)?;
        let mut devices = Vec::with_capacity(count as usize);
        for index in 0..count {
            // A device that fails (fallen off the bus, no permission) is left out and named
            // in the log; the others are still usable.
            match self.device(index) {
                Ok(gpu) => devices.push(gpu),
                Err(e) => tracing::warn!(index, error = %e, "GPU skipped: NVML could not read it"),
            }
        }
        let cuda_version = self.nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        Ok(Inventory {
            driver_version: self.nvml.sys_driver_version().ok(),
            cuda_version,
            devices,
        })
    }
}
