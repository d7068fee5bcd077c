//! `nexus gpu`: what this machine offers, and for each runtime whether it can use it here
//! and, if not, why and which install step fixes it.

use serde::Serialize;

use crate::cuda::CudaDriver;
use crate::{Gpu, Gpus};

/// Whether one runtime can run models on the GPUs here.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeSupport {
    pub runtime: String,
    pub usable: bool,
    /// What it found, or why not and what fixes it.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// NVML's driver version, when a driver is there.
    pub driver_version: Option<String>,
    /// Why NVML gave no inventory, when it did not.
    pub nvml_error: Option<String>,
    pub cuda: CudaDriver,
    /// Every device on the machine, with `visible` telling which this process may use and
    /// under which CUDA ordinal.
    pub devices: Vec<DeviceLine>,
    pub runtimes: Vec<RuntimeSupport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceLine {
    #[serde(flatten)]
    pub gpu: Gpu,
    /// The CUDA ordinal, when this process may use the device.
    pub ordinal: Option<i32>,
}

impl Report {
    pub fn gather(gpus: &Gpus, runtimes: Vec<RuntimeSupport>) -> Self {
        let inventory = gpus.inventory();
        let visible = inventory
            .as_ref()
            .ok()
            .and_then(|i| gpus.select(i).ok())
            .unwrap_or_default();
        let (driver_version, nvml_error, devices) = match inventory {
            Ok(inventory) => {
                let devices = inventory
                    .devices
                    .into_iter()
                    .map(|gpu| DeviceLine {
                        ordinal: visible
                            .iter()
                            .find(|v| v.gpu.index == gpu.index)
                            .map(|v| v.ordinal),
                        gpu,
                    })
                    .collect();
                (inventory.driver_version, None, devices)
            }
            Err(why) => (None, Some(why), Vec::new()),
        };
        // A runtime built for CUDA still runs nothing on a GPU where none is usable.
        let none_usable = devices.iter().all(|d: &DeviceLine| d.ordinal.is_none());
        let runtimes = runtimes
            .into_iter()
            .map(|mut r| {
                if none_usable && r.usable {
                    r.usable = false;
                    r.detail = format!("no GPU is usable here; otherwise ready: {}", r.detail);
                }
                r
            })
            .collect();
        Self {
            driver_version,
            nvml_error,
            cuda: CudaDriver::probe(),
            devices,
            runtimes,
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match (&self.driver_version, &self.nvml_error) {
            (_, Some(why)) => out.push_str(&format!("GPUs: none. {why}\n")),
            (version, None) => out.push_str(&format!(
                "NVIDIA driver {}; {} GPU(s), {} usable by this process\n",
                version.as_deref().unwrap_or("(version unknown)"),
                self.devices.len(),
                self.devices.iter().filter(|d| d.ordinal.is_some()).count()
            )),
        }
        out.push_str(&format!("CUDA: {}\n", self.cuda));
        for d in &self.devices {
            let g = &d.gpu;
            let ordinal = d.ordinal.map_or(
                "not visible (CUDA_VISIBLE_DEVICES / --gpus)".to_string(),
                |o| format!("cuda:{o}"),
            );
            let cc = g
                .compute_capability
                .map_or("?".into(), |[a, b]| format!("{a}.{b}"));
            out.push_str(&format!(
                "  [{}] {} {} ({}), compute {cc}, memory {:.1}/{:.1} GiB used, util {}, power {}, temp {}\n",
                g.index,
                g.name,
                g.uuid,
                ordinal,
                g.memory_used_bytes as f64 / (1u64 << 30) as f64,
                g.memory_total_bytes as f64 / (1u64 << 30) as f64,
                g.utilization_percent.map_or("?".into(), |u| format!("{u}%")),
                g.power_watts.map_or("?".into(), |w| format!("{w:.0} W")),
                g.temperature_celsius.map_or("?".into(), |t| format!("{t} C")),
            ));
        }
        out.push_str("Runtimes on GPU:\n");
        for r in &self.runtimes {
            let verdict = if r.usable { "yes" } else { "no" };
            out.push_str(&format!("  {:<12} {verdict}: {}\n", r.runtime, r.detail));
        }
        out
    }
}
