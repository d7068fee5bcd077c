//! Where each instance of a model runs: Triton's `instance_group` semantics, checked against
//! the devices this process may use and the memory they have free.
//!
//! - `KIND_GPU`, `count: N`, `gpus: [0, 1]`: N instances on each listed GPU; without `gpus`,
//!   N on every visible GPU. No usable GPU is an error that says why.
//! - `KIND_AUTO`: as `KIND_GPU` when a GPU is usable, else N instances on the CPU.
//! - `KIND_CPU` (and `KIND_MODEL`, which leaves the choice to a backend that has none): CPU.
//!
//! Memory: an instance goes on a GPU only if the model's estimated size fits in what the
//! device has free (plus what evictions would free), less what earlier instances of the same
//! plan take. A model that does not fit is not loaded at all (it is
//! UNAVAILABLE with the reason) rather than loaded on some of its GPUs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::visible::VisibleGpu;

/// An instance group as the config gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRequest {
    pub kind: GroupKind,
    /// Instances per device (Triton: 0 means 1).
    pub count: u32,
    /// CUDA ordinals; empty means every visible GPU.
    pub gpus: Vec<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    Auto,
    Gpu,
    Cpu,
    Model,
}

/// Where one instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "gpu")]
pub enum Placed {
    Cpu,
    Gpu(i32),
}

impl std::fmt::Display for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Gpu(ordinal) => write!(f, "gpu{ordinal}"),
        }
    }
}

/// Memory on each GPU (by CUDA ordinal) that models loaded here hold but would give up for
/// this one: with `--model-control-mode on-demand`, idle models are evicted to make room, so
/// what they hold counts as free. The budget itself (`--model-memory-budget`) is the serving
/// side's, which checks host and GPU memory alike.
pub type Reclaimable = BTreeMap<i32, u64>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("instance_group asks for KIND_GPU but no GPU is usable here: {0}")]
    NoGpu(String),
    #[error("instance_group names GPU {asked}, but the GPUs this process may use are [{visible}]")]
    UnknownGpu { asked: i32, visible: String },
    #[error(
        "GPU {ordinal} has {free} bytes free for models, and {instances} instance(s) of about {need} bytes each do not fit"
    )]
    NoMemory {
        ordinal: i32,
        need: u64,
        free: u64,
        instances: u32,
    },
}

/// The outcome of placing a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The device of each instance, in order.
    pub instances: Vec<Placed>,
    /// The groups as placed: `KIND_AUTO` resolved to `KIND_GPU` or `KIND_CPU`, and every GPU
    /// group's `gpus` listed, as Triton shows them in the model's config.
    pub groups: Vec<GroupRequest>,
}

/// Places the instances `groups` ask for.
///
/// `gpus` is what this process may use now (with current memory readings), or why it may use
/// none; `estimate` is the model's expected size on a device (its weights, before load).
pub fn place(
    groups: &[GroupRequest],
    gpus: Result<&[VisibleGpu], &str>,
    estimate: u64,
    reclaimable: &Reclaimable,
) -> Result<Plan, PlacementError> {
    let default_group = [GroupRequest {
        kind: GroupKind::Cpu,
        count: 1,
        gpus: Vec::new(),
    }];
    let groups = if groups.is_empty() {
        &default_group[..]
    } else {
        groups
    };
    let mut plan = Vec::new();
    let mut placed_groups = Vec::new();
    for group in groups {
        let count = group.count.max(1);
        let on_gpu = match group.kind {
            GroupKind::Cpu | GroupKind::Model => false,
            GroupKind::Gpu => true,
            GroupKind::Auto => gpus.is_ok_and(|g| !g.is_empty()),
        };
        if !on_gpu {
            plan.extend((0..count).map(|_| Placed::Cpu));
            placed_groups.push(GroupRequest {
                kind: GroupKind::Cpu,
                count,
                gpus: Vec::new(),
            });
            continue;
        }
        let visible = match gpus {
            Ok(visible) if !visible.is_empty() => visible,
            Ok(_) => {
                return Err(PlacementError::NoGpu(
                    "no GPU is visible to this process".into(),
                ));
            }
            Err(why) => return Err(PlacementError::NoGpu(why.to_string())),
        };
        let ordinals: Vec<i32> = if group.gpus.is_empty() {
            visible.iter().map(|v| v.ordinal).collect()
        } else {
            group.gpus.clone()
        };
        for &ordinal in &ordinals {
            if !visible.iter().any(|v| v.ordinal == ordinal) {
                let list: Vec<String> = visible.iter().map(|v| v.ordinal.to_string()).collect();
                return Err(PlacementError::UnknownGpu {
                    asked: ordinal,
                    visible: list.join(", "),
                });
            }
            plan.extend((0..count).map(|_| Placed::Gpu(ordinal)));
        }
        placed_groups.push(GroupRequest {
            kind: GroupKind::Gpu,
            count,
            gpus: ordinals,
        });
    }
    check_memory(&plan, gpus.unwrap_or(&[]), estimate, reclaimable)?;
    Ok(Plan {
        instances: plan,
        groups: placed_groups,
    })
}

/// Every GPU in `plan` has room for the instances placed on it.
fn check_memory(
    plan: &[Placed],
    visible: &[VisibleGpu],
    estimate: u64,
    reclaimable: &Reclaimable,
) -> Result<(), PlacementError> {
    let mut per_gpu: BTreeMap<i32, u32> = BTreeMap::new();
    for placed in plan {
        if let Placed::Gpu(ordinal) = placed {
            *per_gpu.entry(*ordinal).or_default() += 1;
        }
    }
    for (ordinal, instances) in per_gpu {
        let Some(device) = visible.iter().find(|v| v.ordinal == ordinal) else {
            continue;
        };
        let free = device
            .gpu
            .memory_free_bytes()
            .saturating_add(reclaimable.get(&ordinal).copied().unwrap_or(0));
        if estimate.saturating_mul(u64::from(instances)) > free {
            return Err(PlacementError::NoMemory {
                ordinal,
                need: estimate,
                free,
                instances,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::test_gpu;

    const GIB: u64 = 1 << 30;

    fn visible(gpus: &[(u64, u64)]) -> Vec<VisibleGpu> {
        gpus.iter()
            .zip(0..)
            .map(|(&(total, used), i)| VisibleGpu {
                ordinal: i,
                gpu: test_gpu(i as u32, total, used),
            })
            .collect()
    }

    fn group(kind: GroupKind, count: u32, gpus: &[i32]) -> GroupRequest {
        GroupRequest {
            kind,
            count,
            gpus: gpus.to_vec(),
        }
    }

    fn place_on(
        groups: &[GroupRequest],
        gpus: &[VisibleGpu],
    ) -> Result<Vec<Placed>, PlacementError> {
        place(groups, Ok(gpus), GIB, &Reclaimable::new()).map(|plan| plan.instances)
    }

    #[test]
    fn kind_gpu_puts_count_instances_on_each_listed_gpu() {
        let two = visible(&[(80, 0), (80, 0)]);
        let plan = place_on(&[group(GroupKind::Gpu, 2, &[1, 0])], &two).unwrap();
        assert_eq!(
            plan,
            [
                Placed::Gpu(1),
                Placed::Gpu(1),
                Placed::Gpu(0),
                Placed::Gpu(0)
            ]
        );
        let plan = place_on(&[group(GroupKind::Gpu, 1, &[])], &two).unwrap();
        assert_eq!(
            plan,
            [Placed::Gpu(0), Placed::Gpu(1)],
            "no gpus: every visible GPU"
        );
    }

    #[test]
    fn kind_gpu_without_a_gpu_says_why() {
        let err = place(
            &[group(GroupKind::Gpu, 1, &[])],
            Err("no NVIDIA driver found"),
            GIB,
            &Reclaimable::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "instance_group asks for KIND_GPU but no GPU is usable here: no NVIDIA driver found"
        );
        let err = place_on(&[group(GroupKind::Gpu, 1, &[])], &[]).unwrap_err();
        assert!(matches!(err, PlacementError::NoGpu(_)), "{err}");
    }

    #[test]
    fn a_gpu_the_process_may_not_use_is_named() {
        let two = visible(&[(80, 0), (80, 0)]);
        let err = place_on(&[group(GroupKind::Gpu, 1, &[0, 3])], &two).unwrap_err();
        assert_eq!(
            err.to_string(),
            "instance_group names GPU 3, but the GPUs this process may use are [0, 1]"
        );
    }

    #[test]
    fn kind_auto_prefers_gpus_and_falls_back_to_the_cpu() {
        let two = visible(&[(80, 0), (80, 0)]);
        let auto = [group(GroupKind::Auto, 2, &[])];
        assert_eq!(
            place_on(&auto, &two).unwrap(),
            [
                Placed::Gpu(0),
                Placed::Gpu(0),
                Placed::Gpu(1),
                Placed::Gpu(1)
            ]
        );
        assert_eq!(place_on(&auto, &[]).unwrap(), [Placed::Cpu, Placed::Cpu]);
        let none = place(&auto, Err("no driver"), GIB, &Reclaimable::new()).unwrap();
        assert_eq!(none.instances, [Placed::Cpu, Placed::Cpu]);
        assert_eq!(
            none.groups,
            [group(GroupKind::Cpu, 2, &[])],
            "resolved for the config"
        );
        let resolved = place(&auto, Ok(&two), GIB, &Reclaimable::new()).unwrap();
        assert_eq!(resolved.groups, [group(GroupKind::Gpu, 2, &[0, 1])]);
    }

    #[test]
    fn cpu_groups_and_no_groups_stay_on_the_cpu() {
        let two = visible(&[(80, 0), (80, 0)]);
        assert_eq!(place_on(&[], &two).unwrap(), [Placed::Cpu]);
        let mixed = [
            group(GroupKind::Cpu, 2, &[]),
            group(GroupKind::Gpu, 1, &[1]),
        ];
        assert_eq!(
            place_on(&mixed, &two).unwrap(),
            [Placed::Cpu, Placed::Cpu, Placed::Gpu(1)]
        );
    }

    #[test]
    fn an_instance_goes_only_where_its_memory_fits() {
        // 16 GiB with 12 in use: 4 free. Three 1 GiB instances fit, five do not.
        let small = visible(&[(16, 12)]);
        assert!(place_on(&[group(GroupKind::Gpu, 3, &[])], &small).is_ok());
        let err = place_on(&[group(GroupKind::Gpu, 5, &[])], &small).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NoMemory {
                ordinal: 0,
                need: GIB,
                free: 4 * GIB,
                instances: 5
            }
        );
        // Two groups on the same GPU add up.
        let split = [
            group(GroupKind::Gpu, 3, &[0]),
            group(GroupKind::Gpu, 2, &[0]),
        ];
        assert!(place_on(&split, &small).is_err());
    }

    #[test]
    fn memory_that_evictions_free_counts_as_free() {
        // 16 GiB with 15 in use, 4 of them held by idle models that may be evicted.
        let full = visible(&[(16, 15)]);
        let ask = [group(GroupKind::Gpu, 3, &[])];
        let err = place(&ask, Ok(&full), GIB, &Reclaimable::new()).unwrap_err();
        assert!(
            matches!(err, PlacementError::NoMemory { free, .. } if free == GIB),
            "{err}"
        );
        let idle = Reclaimable::from([(0, 4 * GIB)]);
        assert!(place(&ask, Ok(&full), GIB, &idle).is_ok());
    }
}
