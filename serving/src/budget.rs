//! Memory budgets for loaded models (`--model-memory-budget`), and which models to evict
//! when a load would exceed one.
//!
//! Triton loads what it is told and leaves memory to the operator: a model that does not fit
//! fails half-way, and nothing is ever unloaded to make room. Here every device (the host and
//! each GPU) may have a budget. A model's need is estimated from its weights before it loads
//! and measured after (RSS on the host, NVML on a GPU); a load that would exceed a budget
//! either fails with the numbers or, with `--model-control-mode on-demand`, first unloads the
//! least recently used models that are idle.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use nexus_gpu::Placed;

/// Bytes held (or needed) on each device.
pub type Footprint = BTreeMap<Placed, u64>;

/// The most the loaded models may hold on each device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryBudget {
    cpu: Option<u64>,
    /// For every GPU not named on its own (`gpu=…`).
    every_gpu: Option<u64>,
    gpus: BTreeMap<i32, u64>,
}

/// One `--model-memory-budget` entry: `cpu=8GiB`, `gpu=20GiB` (each GPU) or `gpu1=20GiB`.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetEntry {
    device: Option<Placed>,
    bytes: u64,
}

impl std::str::FromStr for BudgetEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (device, size) = text.split_once('=').ok_or_else(|| {
            format!("'{text}': expected DEVICE=SIZE, e.g. cpu=8GiB or gpu0=20GiB")
        })?;
        let device = match device.trim().to_ascii_lowercase().as_str() {
            "cpu" => Some(Placed::Cpu),
            "gpu" => None,
            other => {
                let ordinal = other
                    .strip_prefix("gpu")
                    .map(|n| n.trim_start_matches(':'))
                    .and_then(|n| n.parse::<i32>().ok())
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        format!("'{device}': the device is cpu, gpu (each GPU) or gpuN")
                    })?;
                Some(Placed::Gpu(ordinal))
            }
        };
        let bytes = size
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|e| format!("'{size}': not a size such as 512MiB or 8GiB ({e})"))?
            .as_u64();
        Ok(Self { device, bytes })
    }
}

impl MemoryBudget {
    /// The budget the entries set; a later entry for the same device wins.
    pub fn new(entries: &[BudgetEntry]) -> Self {
        let mut budget = Self::default();
        for entry in entries {
            match entry.device {
                Some(Placed::Cpu) => budget.cpu = Some(entry.bytes),
                Some(Placed::Gpu(ordinal)) => {
                    budget.gpus.insert(ordinal, entry.bytes);
                }
                None => budget.every_gpu = Some(entry.bytes),
            }
        }
        budget
    }

    /// No device has a budget.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.every_gpu.is_none() && self.gpus.is_empty()
    }

    /// The budget of `device`, if it has one.
    pub fn limit(&self, device: Placed) -> Option<u64> {
        match device {
            Placed::Cpu => self.cpu,
            Placed::Gpu(ordinal) => self.gpus.get(&ordinal).copied().or(self.every_gpu),
        }
    }

    /// Each device's budget, for the `nexus_model_memory_budget_bytes` gauge and logs.
    pub fn devices(&self, gpus: &[i32]) -> Vec<(Placed, u64)> {
        let all = std::iter::once(Placed::Cpu).chain(gpus.iter().map(|&o| Placed::Gpu(o)));
        let mut named: Vec<Placed> = all.collect();
        named.extend(self.gpus.keys().map(|&o| Placed::Gpu(o)));
        named.sort();
        named.dedup();
        named
            .into_iter()
            .filter_map(|d| self.limit(d).map(|b| (d, b)))
            .collect()
    }
}

/// A loaded model that eviction may unload.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// When it was last loaded or asked for: larger is more recent.
    pub last_use: u64,
    /// A request of it is in flight: not evicted.
    pub busy: bool,
    pub footprint: &'a Footprint,
}

/// Why a model cannot be loaded within the budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error("needs about {} on {device}, more than its whole --model-memory-budget of {}", human(*need), human(*budget))]
    TooBig {
        device: Placed,
        need: u64,
        budget: u64,
    },
    #[error(
        "needs about {} on {device}, where the loaded models hold {} of its --model-memory-budget of {}{}",
        human(*need), human(*held), human(*budget), blocking(busy, *evict)
    )]
    NoRoom {
        device: Placed,
        need: u64,
        held: u64,
        budget: u64,
        /// Models that hold memory there but were busy.
        busy: Vec<String>,
        /// Whether idle models could have been evicted (on-demand mode).
        evict: bool,
    },
}

fn blocking(busy: &[String], evict: bool) -> String {
    let mut text = String::new();
    if !evict {
        text.push_str(
            " (with --model-control-mode on-demand, idle models are unloaded to make room)",
        );
    } else if !busy.is_empty() {
        let _ = write!(text, "; not evicted while serving: {}", busy.join(", "));
    }
    text
}

/// `bytes` as a person reads it (`1.5 GiB`).
pub fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Which `candidates` to unload, least recently used first, so that `need` fits within
/// `budget` beside what `held` is held now (the candidates included). With `evict` false
/// nothing is chosen: the answer is only whether `need` fits. Only candidates that hold memory
/// on a device short of room are chosen.
pub fn evictions(
    budget: &MemoryBudget,
    need: &Footprint,
    held: &Footprint,
    candidates: &[Candidate<'_>],
    evict: bool,
) -> Result<Vec<usize>, BudgetError> {
    let mut held = held.clone();
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| evict && !candidates[i].busy)
        .collect();
    order.sort_by_key(|&i| (candidates[i].last_use, candidates[i].name));
    let mut chosen = Vec::new();
    for (&device, &need) in need {
        let Some(budget) = budget.limit(device) else {
            continue;
        };
        if need > budget {
            return Err(BudgetError::TooBig {
                device,
                need,
                budget,
            });
        }
        let held_on = |held: &Footprint| held.get(&device).copied().unwrap_or(0);
        for &i in &order {
            if held_on(&held).saturating_add(need) <= budget {
                break;
            }
            let frees = candidates[i].footprint.get(&device).copied().unwrap_or(0);
            if frees == 0 || chosen.contains(&i) {
                continue;
            }
            chosen.push(i);
            for (d, bytes) in candidates[i].footprint {
                if let Some(h) = held.get_mut(d) {
                    *h = h.saturating_sub(*bytes);
                }
            }
        }
        let now = held_on(&held);
        if now.saturating_add(need) > budget {
            let busy = candidates
                .iter()
                .filter(|c| c.busy && c.footprint.get(&device).is_some_and(|b| *b > 0))
                .map(|c| c.name.to_string())
                .collect();
            return Err(BudgetError::NoRoom {
                device,
                need,
                held: now,
                budget,
                busy,
                evict,
            });
        }
    }
    Ok(chosen)
}

/// The process's resident memory (VmRSS), in bytes: what a load added on the host, and what
/// an unload gave back. `None` where /proc is not there.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sets glibc's threshold for allocating in pages of their own (mmap) to a fixed 1 MiB, once,
/// before any model loads. glibc raises that threshold to the size of each such block freed
/// (up to 32 MiB), so after the first unload a model's weights come from its heap instead and
/// fragment it: RSS then grew by tens of MiB per load and unload cycle even with [`trim_heap`].
/// Blocks of their own go back to the system the moment the runtime frees them.
pub fn tune_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; it takes no pointer.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives the C heap's free pages back to the system. The runtimes (ONNX Runtime, libtorch)
/// allocate with the C allocator, and glibc keeps what they free for later allocations: without
/// this an unloaded model's memory stays resident and the budget's RSS measurements lie.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointer from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counts a load of `model` (`nexus_model_loads_total`) and times it
/// (`nexus_model_load_duration_seconds`).
pub(crate) fn record_load(model: &str, ok: bool, took: Duration) {
    let outcome = if ok { "success" } else { "failure" };
    let labels = [
        ("model", model.to_string()),
        ("outcome", outcome.to_string()),
    ];
    metrics::counter!("nexus_model_loads_total", &labels).increment(1);
    metrics::histogram!("nexus_model_load_duration_seconds", &labels).record(took.as_secs_f64());
}

/// Times a request that waited for its model to load on demand, from its arrival to the model
/// being ready (`nexus_model_cold_start_duration_seconds`).
pub(crate) fn record_cold_start(model: &str, waited: Duration) {
    let labels = [("model", model.to_string())];
    metrics::histogram!("nexus_model_cold_start_duration_seconds", &labels)
        .record(waited.as_secs_f64());
}

/// Counts a model unloaded to make room (`nexus_model_evictions_total`).
pub(crate) fn record_eviction(model: &str) {
    let labels = [("model", model.to_string())];
    metrics::counter!("nexus_model_evictions_total", &labels).increment(1);
}

/// Sets `nexus_model_memory_bytes` of `model` from `was` to `now` (devices it left go to 0).
pub(crate) fn record_footprint(model: &str, was: &Footprint, now: &Footprint) {
    for device in was.keys().chain(now.keys()) {
        let labels = [("model", model.to_string()), ("device", device.to_string())];
        let bytes = now.get(device).copied().unwrap_or(0);
        metrics::gauge!("nexus_model_memory_bytes", &labels).set(bytes as f64);
    }
}

/// Describes the load metrics and exports each device's budget
/// (`nexus_model_memory_budget_bytes`), `gpus` being the visible GPUs' ordinals.
pub fn export(budget: &MemoryBudget, gpus: &[i32]) {
    metrics::describe_counter!("nexus_model_loads_total", "Model loads, by outcome");
    metrics::describe_histogram!(
        "nexus_model_load_duration_seconds",
        metrics::Unit::Seconds,
        "Time to load a model (every version and instance)"
    );
    metrics::describe_histogram!(
        "nexus_model_cold_start_duration_seconds",
        metrics::Unit::Seconds,
        "Time a request waited for its model to load on demand"
    );
    metrics::describe_counter!(
        "nexus_model_evictions_total",
        "Models unloaded to make room within --model-memory-budget"
    );
    metrics::describe_gauge!(
        "nexus_model_memory_bytes",
        metrics::Unit::Bytes,
        "Memory a loaded model took on a device (measured after its load)"
    );
    metrics::describe_gauge!(
        "nexus_model_memory_budget_bytes",
        metrics::Unit::Bytes,
        "The --model-memory-budget of a device"
    );
    for (device, bytes) in budget.devices(gpus) {
        let labels = [("device", device.to_string())];
        metrics::gauge!("nexus_model_memory_budget_bytes", &labels).set(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn entries(text: &str) -> MemoryBudget {
        let parsed: Vec<BudgetEntry> = text.split(',').map(|e| e.parse().unwrap()).collect();
        MemoryBudget::new(&parsed)
    }

    fn footprint(pairs: &[(Placed, u64)]) -> Footprint {
        pairs.iter().copied().collect()
    }

    #[test]
    fn entries_name_a_device_and_a_size() {
        let budget = entries("cpu=512MiB,gpu=20GiB,gpu:1=1GiB,GPU2=3GB");
        assert_eq!(budget.limit(Placed::Cpu), Some(512 * MIB));
        assert_eq!(budget.limit(Placed::Gpu(0)), Some(20 << 30));
        assert_eq!(budget.limit(Placed::Gpu(1)), Some(1 << 30));
        assert_eq!(budget.limit(Placed::Gpu(2)), Some(3_000_000_000));
        assert!(MemoryBudget::default().limit(Placed::Cpu).is_none());
        for bad in ["cpu", "tpu=1GiB", "gpu-1=1GiB", "cpu=lots", "=5"] {
            assert!(bad.parse::<BudgetEntry>().is_err(), "{bad}");
        }
        let err = "cpu=lots".parse::<BudgetEntry>().unwrap_err();
        assert!(err.contains("512MiB"), "{err}");
    }

    #[test]
    fn least_recently_used_idle_models_go_first() {
        let budget = entries("cpu=300MiB");
        let big = footprint(&[(Placed::Cpu, 100 * MIB)]);
        let candidates = [
            Candidate {
                name: "a",
                last_use: 30,
                busy: false,
                footprint: &big,
            },
            Candidate {
                name: "b",
                last_use: 10,
                busy: false,
                footprint: &big,
            },
            Candidate {
                name: "c",
                last_use: 20,
                busy: false,
                footprint: &big,
            },
        ];
        let held = footprint(&[(Placed::Cpu, 300 * MIB)]);
        let need = footprint(&[(Placed::Cpu, 150 * MIB)]);
        // 300 held + 150 needed in 300: two of 100 must go, the oldest two.
        assert_eq!(
            evictions(&budget, &need, &held, &candidates, true),
            Ok(vec![1, 2])
        );
        let small = footprint(&[(Placed::Cpu, 0)]);
        assert_eq!(
            evictions(&budget, &small, &held, &candidates, true),
            Ok(vec![])
        );
    }

    #[test]
    fn busy_models_stay_and_the_error_names_them() {
        let budget = entries("cpu=200MiB");
        let big = footprint(&[(Placed::Cpu, 100 * MIB)]);
        let candidates = [
            Candidate {
                name: "a",
                last_use: 1,
                busy: true,
                footprint: &big,
            },
            Candidate {
                name: "b",
                last_use: 2,
                busy: false,
                footprint: &big,
            },
        ];
        let held = footprint(&[(Placed::Cpu, 200 * MIB)]);
        let need = footprint(&[(Placed::Cpu, 150 * MIB)]);
        let err = evictions(&budget, &need, &held, &candidates, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "needs about 150.0 MiB on cpu, where the loaded models hold 100.0 MiB of its \
             --model-memory-budget of 200.0 MiB; not evicted while serving: a"
        );
        // Without eviction (any mode but on-demand) the answer is only whether it fits.
        let err = evictions(&budget, &need, &held, &candidates, false).unwrap_err();
        assert!(
            err.to_string()
                .contains("with --model-control-mode on-demand"),
            "{err}"
        );
    }

    #[test]
    fn a_model_larger_than_the_budget_evicts_nothing() {
        let budget = entries("gpu=1GiB");
        let held = footprint(&[(Placed::Gpu(0), 512 * MIB)]);
        let other = footprint(&[(Placed::Gpu(0), 512 * MIB)]);
        let candidates = [Candidate {
            name: "a",
            last_use: 1,
            busy: false,
            footprint: &other,
        }];
        let need = footprint(&[(Placed::Gpu(0), 2 << 30), (Placed::Cpu, 5 << 30)]);
        let err = evictions(&budget, &need, &held, &candidates, true).unwrap_err();
        assert!(
            matches!(
                err,
                BudgetError::TooBig {
                    device: Placed::Gpu(0),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn only_models_on_the_short_device_are_evicted() {
        let budget = entries("gpu0=1GiB");
        let on_cpu = footprint(&[(Placed::Cpu, 900 * MIB)]);
        let on_gpu1 = footprint(&[(Placed::Gpu(1), 900 * MIB)]);
        let on_gpu0 = footprint(&[(Placed::Gpu(0), 800 * MIB), (Placed::Cpu, 50 * MIB)]);
        let candidates = [
            Candidate {
                name: "cpu",
                last_use: 1,
                busy: false,
                footprint: &on_cpu,
            },
            Candidate {
                name: "gpu1",
                last_use: 2,
                busy: false,
                footprint: &on_gpu1,
            },
            Candidate {
                name: "gpu0",
                last_use: 3,
                busy: false,
                footprint: &on_gpu0,
            },
        ];
        let held = footprint(&[
            (Placed::Cpu, 950 * MIB),
            (Placed::Gpu(0), 800 * MIB),
            (Placed::Gpu(1), 900 * MIB),
        ]);
        let need = footprint(&[(Placed::Gpu(0), 300 * MIB)]);
        assert_eq!(
            evictions(&budget, &need, &held, &candidates, true),
            Ok(vec![2])
        );
    }

    #[test]
    fn the_budget_lists_each_device_that_has_one() {
        let budget = entries("cpu=1GiB,gpu=2GiB,gpu3=1GiB");
        assert_eq!(
            budget.devices(&[0, 1]),
            [
                (Placed::Cpu, 1 << 30),
                (Placed::Gpu(0), 2 << 30),
                (Placed::Gpu(1), 2 << 30),
                (Placed::Gpu(3), 1 << 30),
            ]
        );
    }

    #[test]
    fn resident_memory_is_read() {
        assert!(resident_bytes().is_some_and(|b| b > MIB));
    }
}
