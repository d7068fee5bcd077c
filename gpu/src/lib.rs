//! NVIDIA GPUs for Nexus, guarded at every step: the binary runs on machines without a
//! driver, and there every GPU question has an answer that says why not, never a panic.
//!
//! - [`inventory`]: the seam. [`GpuSource`] gives snapshots of the machine's devices;
//!   [`nvml::NvmlSource`] reads NVML, [`FixedSource`] takes them as data (tests).
//! - [`visible`]: which devices this process may use (`CUDA_VISIBLE_DEVICES`, `--gpus`) and
//!   their CUDA ordinals.
//! - [`placement`]: Triton's `instance_group` semantics over those devices, memory-aware.
//! - [`cuda`]: the CUDA driver API as the runtimes see it.
//! - [`metrics`]: Triton's `nv_gpu_*` metrics, sampled.
//! - [`report`]: `nexus gpu`.

pub mod cuda;
pub mod inventory;
pub mod ipc;
pub mod metrics;
pub mod nvml;
pub mod placement;
pub mod report;
pub mod visible;

use std::sync::Arc;

pub use inventory::{FixedSource, Gpu, GpuError, GpuSource, Inventory};
pub use placement::{GroupKind, GroupRequest, Placed, PlacementError, Plan, Reclaimable};
pub use visible::{SelectError, VisibleGpu};

/// The GPUs this process may use: where their readings come from, and the restrictions
/// (`CUDA_VISIBLE_DEVICES`, `--gpus`) applied to every snapshot.
#[derive(Clone)]
pub struct Gpus {
    /// The source, or why there is none (no driver).
    source: Result<Arc<dyn GpuSource>, String>,
    cuda_visible: Option<String>,
    only: Option<Vec<i32>>,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus")
            .field("source", &self.source.as_ref().map(|_| "…"))
            .field("cuda_visible", &self.cuda_visible)
            .field("only", &self.only)
            .finish()
    }
}

impl Gpus {
    /// NVML on this machine, restricted by `CUDA_VISIBLE_DEVICES` and `only` (`--gpus`).
    /// Without a driver this is a value with no GPUs and the reason, unless `only` names
    /// GPUs: asking for GPUs that cannot exist is an error at start-up.
    pub fn discover(only: Option<Vec<i32>>) -> Result<Self, String> {
        let source = nvml::NvmlSource::open()
            .map(|s| Arc::new(s) as Arc<dyn GpuSource>)
            .map_err(|e| e.to_string());
        let gpus = Self {
            source,
            cuda_visible: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            only,
        };
        if gpus.only.is_some() {
            gpus.visible().map_err(|why| format!("--gpus: {why}"))?;
        }
        Ok(gpus)
    }

    /// GPUs from `source` (tests, rehearsals), with the same restrictions as [`Self::discover`].
    pub fn from_source(
        source: Arc<dyn GpuSource>,
        cuda_visible: Option<String>,
        only: Option<Vec<i32>>,
    ) -> Self {
        Self {
            source: Ok(source),
            cuda_visible,
            only,
        }
    }

    /// No GPUs, for `why`.
    pub fn none(why: impl Into<String>) -> Self {
        Self {
            source: Err(why.into()),
            cuda_visible: None,
            only: None,
        }
    }

    /// The whole machine now, before any restriction.
    pub fn inventory(&self) -> Result<Inventory, String> {
        let source = self.source.as_ref().map_err(Clone::clone)?;
        source.snapshot().map_err(|e| e.to_string())
    }

    /// The devices this process may use, with current readings, or why there are none.
    pub fn visible(&self) -> Result<Vec<VisibleGpu>, String> {
        self.select(&self.inventory()?)
    }

    /// The devices of `inventory` this process may use (one snapshot read for several uses).
    pub fn select(&self, inventory: &Inventory) -> Result<Vec<VisibleGpu>, String> {
        visible::select(
            inventory,
            self.cuda_visible.as_deref(),
            self.only.as_deref(),
        )
        .map_err(|e| e.to_string())
    }

    /// The device of each instance `groups` ask for (see [`placement`]).
    pub fn place(
        &self,
        groups: &[GroupRequest],
        estimate: u64,
        reclaimable: &Reclaimable,
    ) -> Result<placement::Plan, PlacementError> {
        // Only a group that may run on a GPU needs the devices' readings (an NVML snapshot).
        let may_use_gpu = groups
            .iter()
            .any(|g| matches!(g.kind, GroupKind::Gpu | GroupKind::Auto));
        let visible = if may_use_gpu {
            self.visible()
        } else {
            Ok(Vec::new())
        };
        let gpus = match &visible {
            Ok(v) => Ok(&v[..]),
            Err(why) => Err(why.as_str()),
        };
        placement::place(groups, gpus, estimate, reclaimable)
    }
}
