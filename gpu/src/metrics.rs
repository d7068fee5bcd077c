//! Triton's GPU metrics, under Triton's names and `gpu_uuid` label, so dashboards and alerts
//! written for Triton read Nexus unchanged. Sampled by a task that owns the NVML readings;
//! nothing is exported where no GPU is visible.

use std::time::Duration;

use crate::{Gpu, Gpus, VisibleGpu};

/// Names and help texts, in Triton's units (utilisation as a fraction, power in watts,
/// energy in joules).
pub const METRICS: [(&str, &str); 6] = [
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
    ("nv_gpu_power_usage", "GPU power usage in watts"),
    ("nv_gpu_power_limit", "GPU power management limit in watts"),
    (
        "nv_energy_consumption",
        "GPU energy consumption in joules since the driver loaded",
    ),
];

/// Describes the metrics (once, at start-up, when GPUs are visible).
pub fn describe() {
    for (name, help) in METRICS {
        metrics::describe_gauge!(name, help);
    }
}

/// Sets every metric of `gpu` from one reading.
pub fn record(gpu: &Gpu) {
    let label = [("gpu_uuid", gpu.uuid.clone())];
    let readings = [
        gpu.utilization_percent.map(|p| f64::from(p) / 100.0),
        Some(gpu.memory_total_bytes as f64),
        Some(gpu.memory_used_bytes as f64),
        gpu.power_watts,
        gpu.power_limit_watts,
        gpu.energy_joules,
    ];
    for ((name, _), value) in METRICS.iter().zip(readings) {
        if let Some(value) = value {
            metrics::gauge!(*name, &label).set(value);
        }
    }
}

/// Records `first` (the start-up reading of the visible GPUs), then samples them every
/// `every` for as long as the runtime runs. Starts nothing, and returns `None`, when no GPU
/// is visible.
pub fn spawn_sampler(
    gpus: Gpus,
    first: &[VisibleGpu],
    every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if first.is_empty() {
        return None;
    }
    describe();
    first.iter().for_each(|v| record(&v.gpu));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            // NVML calls block for a few ms on some drivers: off the async workers.
            let sample = gpus.clone();
            match tokio::task::spawn_blocking(move || sample.visible()).await {
                Ok(Ok(visible)) => visible.iter().for_each(|v| record(&v.gpu)),
                Ok(Err(why)) => tracing::warn!(%why, "GPU metrics: NVML reading failed"),
                Err(_) => return,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_exported_under_tritons_names_and_label() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut gpu = crate::inventory::test_gpu(0, 80, 20);
        gpu.utilization_percent = Some(42);
        metrics::with_local_recorder(&recorder, || {
            describe();
            record(&gpu);
        });
        let text = handle.render();
        let label = "{gpu_uuid=\"GPU-test-0\"}";
        for (name, expected) in [
            ("nv_gpu_utilization", "0.42"),
            ("nv_gpu_memory_total_bytes", "85899345920"),
            ("nv_gpu_memory_used_bytes", "21474836480"),
            ("nv_gpu_power_usage", "70"),
            ("nv_gpu_power_limit", "700"),
            ("nv_energy_consumption", "1000"),
        ] {
            let line = format!("{name}{label} {expected}");
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{text}");
        }
    }
}
