//! Which of the machine's GPUs this process may use, and under which CUDA ordinal.
//!
//! NVML numbers every device on the machine; CUDA numbers only those `CUDA_VISIBLE_DEVICES`
//! lets through, in the order it lists them. Triton's `instance_group { gpus: [...] }` and
//! the runtimes' device ids are CUDA ordinals, so the mapping is kept here, once.
//! `--gpus` then narrows the CUDA ordinals further, for one process sharing a machine.

use crate::inventory::{Gpu, Inventory};

/// A device this process may use.
#[derive(Debug, Clone, PartialEq)]
pub struct VisibleGpu {
    /// The CUDA ordinal: what configs and runtimes call this device.
    pub ordinal: i32,
    pub gpu: Gpu,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    #[error("--gpus names GPU {asked}, but this process sees {seen} GPU(s){hint}")]
    NotVisible {
        asked: i32,
        seen: usize,
        hint: &'static str,
    },
}

/// The devices of `inventory` that `CUDA_VISIBLE_DEVICES` (`cuda_visible`, as the variable
/// holds it) and then `only` (`--gpus`, CUDA ordinals) leave to this process.
///
/// `CUDA_VISIBLE_DEVICES` is read as CUDA reads it: entries are NVML indices or UUIDs (whole
/// or a unique prefix, `GPU-…`), the list stops at the first entry that names no device, and
/// an empty value hides every device.
pub fn select(
    inventory: &Inventory,
    cuda_visible: Option<&str>,
    only: Option<&[i32]>,
) -> Result<Vec<VisibleGpu>, SelectError> {
    let listed: Vec<&Gpu> = match cuda_visible {
        None => inventory.devices.iter().collect(),
        Some(value) => {
            let mut listed: Vec<&Gpu> = Vec::new();
            for entry in value.split(',').map(str::trim) {
                match find(inventory, entry) {
                    Some(gpu) if !listed.iter().any(|g| g.index == gpu.index) => listed.push(gpu),
                    _ => break,
                }
            }
            listed
        }
    };
    let visible: Vec<VisibleGpu> = listed
        .into_iter()
        .zip(0..)
        .map(|(gpu, ordinal)| VisibleGpu {
            ordinal,
            gpu: gpu.clone(),
        })
        .collect();
    let Some(only) = only else {
        return Ok(visible);
    };
    for &asked in only {
        if !visible.iter().any(|v| v.ordinal == asked) {
            let hint = if cuda_visible.is_some() {
                " (numbered after CUDA_VISIBLE_DEVICES)"
            } else {
                ""
            };
            return Err(SelectError::NotVisible {
                asked,
                seen: visible.len(),
                hint,
            });
        }
    }
    Ok(visible
        .into_iter()
        .filter(|v| only.contains(&v.ordinal))
        .collect())
}

/// The device an entry of `CUDA_VISIBLE_DEVICES` names: an index, or a UUID prefix that
/// matches exactly one device.
fn find<'a>(inventory: &'a Inventory, entry: &str) -> Option<&'a Gpu> {
    if let Ok(index) = entry.parse::<u32>() {
        return inventory.devices.iter().find(|g| g.index == index);
    }
    if !entry.starts_with("GPU-") {
        return None;
    }
    let mut matching = inventory
        .devices
        .iter()
        .filter(|g| g.uuid.starts_with(entry));
    match (matching.next(), matching.next()) {
        (Some(gpu), None) => Some(gpu),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::test_gpu;

    fn machine(n: u32) -> Inventory {
        Inventory {
            devices: (0..n).map(|i| test_gpu(i, 80, 0)).collect(),
            ..Default::default()
        }
    }

    fn indices(visible: &[VisibleGpu]) -> Vec<(i32, u32)> {
        visible.iter().map(|v| (v.ordinal, v.gpu.index)).collect()
    }

    #[test]
    fn without_restrictions_every_device_is_visible_in_nvml_order() {
        let v = select(&machine(3), None, None).unwrap();
        assert_eq!(indices(&v), [(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn cuda_visible_devices_renumbers_in_its_own_order() {
        let v = select(&machine(4), Some("3,1"), None).unwrap();
        assert_eq!(indices(&v), [(0, 3), (1, 1)]);
    }

    #[test]
    fn cuda_visible_devices_stops_at_the_first_unknown_entry_as_cuda_does() {
        let v = select(&machine(4), Some("2,7,0"), None).unwrap();
        assert_eq!(indices(&v), [(0, 2)]);
        assert!(select(&machine(4), Some(""), None).unwrap().is_empty());
        assert!(select(&machine(4), Some("-1"), None).unwrap().is_empty());
        // A repeated device ends the list too.
        assert_eq!(
            indices(&select(&machine(4), Some("1,1,2"), None).unwrap()),
            [(0, 1)]
        );
    }

    #[test]
    fn cuda_visible_devices_takes_uuid_prefixes_that_match_one_device() {
        let v = select(&machine(3), Some("GPU-test-2,GPU-test-0"), None).unwrap();
        assert_eq!(indices(&v), [(0, 2), (1, 0)]);
        let mut inv = machine(2);
        inv.devices[1].uuid = "GPU-test-01".into();
        inv.devices[0].uuid = "GPU-test-02".into();
        assert!(select(&inv, Some("GPU-test-0"), None).unwrap().is_empty());
    }

    #[test]
    fn gpus_flag_keeps_the_named_ordinals_and_refuses_unknown_ones() {
        let v = select(&machine(3), None, Some(&[0, 2])).unwrap();
        assert_eq!(indices(&v), [(0, 0), (2, 2)]);
        let v = select(&machine(4), Some("3,2"), Some(&[1])).unwrap();
        assert_eq!(indices(&v), [(1, 2)]);
        let err = select(&machine(4), Some("3"), Some(&[1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--gpus names GPU 1, but this process sees 1 GPU(s) (numbered after CUDA_VISIBLE_DEVICES)"
        );
    }
}
