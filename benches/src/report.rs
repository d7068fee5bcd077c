//! Merges saved runs into `report.md` (one row per run and concurrency) and
//! `throughput_latency.svg` (throughput against p99 latency, one line per run); runs made
//! with `--gpu` add a GPU table and `gpu_utilization.svg` / `gpu_memory_used.svg` (each GPU
//! over the run's time).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::RunResult;
use crate::gpu::GpuReading;

/// The GPU plots: file, axis description, and the value plotted from a reading.
const GPU_PLOTS: [GpuPlot; 2] = [
    GpuPlot {
        file: "gpu_utilization.svg",
        what: "GPU utilisation",
        unit: Unit::Percent,
    },
    GpuPlot {
        file: "gpu_memory_used.svg",
        what: "GPU memory used",
        unit: Unit::Bytes,
    },
];

/// One metric plotted over time.
struct GpuPlot {
    file: &'static str,
    what: &'static str,
    unit: Unit,
}

#[derive(Clone, Copy)]
enum Unit {
    /// A 0-1 fraction, drawn as 0-100 %.
    Percent,
    /// Bytes, drawn in MiB or GiB by the largest value.
    Bytes,
}

/// Reads every `*.json` run in `dir`, sorted by label.
pub fn load_runs(dir: &Path) -> anyhow::Result<Vec<RunResult>> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let run: RunResult = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            runs.push(run);
        }
    }
    runs.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(runs)
}

/// The markdown table of `runs`.
pub fn markdown(runs: &[RunResult], title: &str) -> String {
    let mut md = format!("# {title}\n\n");
    if let Some(first) = runs.first() {
        let _ = writeln!(md, "Machine: {}. Date: {}.\n", first.machine, first.date);
    }
    md.push_str("| run | protocol | model | batch | concurrency | infer/s | rows/s | p50 µs | p90 µs | p99 µs | errors |\n");
    md.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in runs {
        for l in &run.levels {
            let _ = writeln!(
                md,
                "| {} | {:?} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |",
                run.label,
                run.protocol,
                run.model,
                run.batch,
                l.concurrency,
                l.throughput,
                l.rows_per_second,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.errors
            );
        }
    }
    gpu_markdown(runs, &mut md);
    md
}

/// The GPU section: per run, level and GPU the utilisation and memory of the measured
/// window, or why a `--gpu` run sampled nothing.
fn gpu_markdown(runs: &[RunResult], md: &mut String) {
    if runs.iter().all(|r| r.gpu.is_none()) {
        return;
    }
    md.push_str("\n## GPU\n\n");
    let mut unsampled = false;
    for run in runs {
        if let Some(why) = run.gpu.as_ref().and_then(|g| g.unavailable.as_ref()) {
            let _ = writeln!(md, "- {}: no GPU was sampled: {why}.", run.label);
            unsampled = true;
        }
    }
    if !has_gpu_samples(runs) {
        return;
    }
    if unsampled {
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "![GPU utilisation]({}) ![GPU memory used]({})\n",
        GPU_PLOTS[0].file, GPU_PLOTS[1].file
    );
    md.push_str(
        "| run | concurrency | GPU | samples | mean util % | max util % | max memory used MiB |\n",
    );
    md.push_str("|---|---:|---|---:|---:|---:|---:|\n");
    let percent = |u: Option<f64>| u.map_or("-".into(), |u| format!("{:.1}", u * 100.0));
    for run in runs {
        for l in &run.levels {
            for g in l.gpu.iter().flat_map(|g| &g.summary) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    run.label,
                    l.concurrency,
                    g.gpu_uuid,
                    g.samples,
                    percent(g.mean_utilization),
                    percent(g.max_utilization),
                    g.max_memory_used_bytes
                        .map_or("-".into(), |m| (m >> 20).to_string()),
                );
            }
        }
    }
}

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

fn has_gpu_samples(runs: &[RunResult]) -> bool {
    runs.iter()
        .flat_map(|r| &r.levels)
        .any(|l| l.gpu.as_ref().is_some_and(|g| !g.samples.is_empty()))
}

/// One line per run and GPU of `plot`'s metric against seconds since the run started, each
/// level's start marked with its concurrency. Linear axes with labelled ticks.
fn plot_gpu(runs: &[RunResult], plot: &GpuPlot, path: &Path, title: &str) -> anyhow::Result<()> {
    let value = |r: &GpuReading| match plot.unit {
        Unit::Percent => r.utilization.map(|u| u * 100.0),
        Unit::Bytes => r.memory_used_bytes.map(|b| b as f64),
    };
    // Each series: (run, GPU) -> points; each level's first point for its mark.
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut marks: Vec<((f64, f64), String)> = Vec::new();
    for run in runs {
        for level in &run.levels {
            let samples = level.gpu.iter().flat_map(|g| &g.samples);
            let mut marked = false;
            for sample in samples {
                for reading in &sample.gpus {
                    let Some(y) = value(reading) else { continue };
                    let point = (sample.t_ms as f64 / 1000.0, y);
                    let name = format!("{} {}", run.label, reading.gpu_uuid);
                    match series.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, points)) => points.push(point),
                        None => series.push((name, vec![point])),
                    }
                    if !marked {
                        marks.push((point, format!("c={}", level.concurrency)));
                        marked = true;
                    }
                }
            }
        }
    }
    let points = series.iter().flat_map(|(_, p)| p);
    let (x_max, y_max) = points.fold((1.0_f64, 0.0_f64), |(x, y), (px, py)| {
        (x.max(*px), y.max(*py))
    });
    let (scale, y_desc, y_top) = match plot.unit {
        Unit::Percent => (1.0, format!("{} (%)", plot.what), 100.0),
        Unit::Bytes if y_max >= 4.0 * GIB => {
            (GIB, format!("{} (GiB)", plot.what), y_max / GIB * 1.1)
        }
        Unit::Bytes => (
            MIB,
            format!("{} (MiB)", plot.what),
            (y_max / MIB * 1.1).max(1.0),
        ),
    };

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: {}", plot.what), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_top)?;
    chart
        .configure_mesh()
        .x_desc("time since the run started (s)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let scaled: Vec<(f64, f64)> = points.iter().map(|(x, y)| (*x, y / scale)).collect();
        chart
            .draw_series(LineSeries::new(scaled, color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart.draw_series(marks.iter().map(|((x, y), text)| {
        EmptyElement::at((*x, y / scale))
            + Circle::new((0, 0), 3, BLACK.filled())
            + Text::new(text.clone(), (5, -12), ("sans-serif", 11))
    }))?;
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// Plots throughput (y) against p99 latency (x), both on log scales, one series per run.
pub fn plot(runs: &[RunResult], path: &Path, title: &str) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|r| r.levels.iter())
        .filter(|l| l.throughput > 0.0)
        .map(|l| (l.p99_us as f64 / 1000.0, l.throughput))
        .collect();
    let (x_max, y_max) = points.iter().fold((1e-3_f64, 1.0_f64), |(x, y), (px, py)| {
        (x.max(*px), y.max(*py))
    });
    let (x_min, y_min) = points
        .iter()
        .fold((x_max, y_max), |(x, y), (px, py)| (x.min(*px), y.min(*py)));

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            decades(x_min, x_max).log_scale(),
            decades(y_min, y_max).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("p99 latency (ms, log scale)")
        .y_desc("throughput (inferences/s, log scale)")
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series: Vec<(f64, f64)> = run
            .levels
            .iter()
            .filter(|l| l.throughput > 0.0)
            .map(|l| ((l.p99_us as f64 / 1000.0).max(1e-3), l.throughput))
            .collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
            .label(format!(
                "{} ({:?}, batch {})",
                run.label, run.protocol, run.batch
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(series.iter().zip(&run.levels).map(|(p, l)| {
            EmptyElement::at(*p)
                + Circle::new((0, 0), 3, color.filled())
                + Text::new(format!("c={}", l.concurrency), (5, -12), ("sans-serif", 11))
        }))?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// Every plot's legend: the upper right, over a light background.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// The whole decades around `lo..hi` (at least one): a log axis whose ends are powers of ten
/// always has labelled ticks, where one spanning less than a decade (a gRPC sweep at 0.23-0.77
/// ms) got none.
fn decades(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let lo = 10f64.powf(lo.max(1e-3).log10().floor());
    let hi = 10f64.powf(hi.max(1e-3).log10().ceil()).max(lo * 10.0);
    // A hair wider, so rounding in the powers never drops an end's tick.
    lo * 0.999..hi * 1.001
}

/// A tick value as people write it: `0.2`, `5`, `20000`, not `0.20000000000000004`.
fn tick(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Writes `report.md`, `throughput_latency.svg` and, when a run has GPU samples, the GPU
/// plots for the runs in `dir`; returns the markdown.
pub fn write(dir: &Path, title: &str) -> anyhow::Result<String> {
    let runs = load_runs(dir)?;
    let md = markdown(&runs, title);
    std::fs::write(dir.join("report.md"), &md)?;
    plot(&runs, &dir.join("throughput_latency.svg"), title)?;
    for gpu_plot in &GPU_PLOTS {
        let path = dir.join(gpu_plot.file);
        if has_gpu_samples(&runs) {
            plot_gpu(&runs, gpu_plot, &path, title)
                .with_context(|| format!("plotting {}", path.display()))?;
        } else if path.exists() {
            // A plot of earlier runs would contradict this report.
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Level;
    use crate::target::Protocol;

    fn level(concurrency: usize, p99_us: u64, throughput: f64) -> Level {
        Level {
            concurrency,
            requests: 1000,
            errors: 0,
            seconds: 1.0,
            throughput,
            rows_per_second: throughput,
            p50_us: p99_us / 2,
            p90_us: p99_us,
            p99_us,
            mean_us: p99_us as f64 / 2.0,
            first_error: None,
            gpu: None,
        }
    }

    fn run(label: &str, levels: Vec<Level>) -> RunResult {
        RunResult {
            label: label.into(),
            protocol: Protocol::Grpc,
            model: "simple".into(),
            batch: 1,
            target: "127.0.0.1:8001".into(),
            levels,
            machine: String::new(),
            date: String::new(),
            gpu: None,
        }
    }

    #[test]
    fn a_sweep_within_one_decade_still_gets_labelled_log_axes() {
        // A gRPC sweep at c=1 and c=8: p99 0.23-0.77 ms, 4-12k/s, less than a decade each.
        let run = run(
            "grpc",
            vec![level(1, 230, 4_300.0), level(8, 770, 12_000.0)],
        );
        let path = std::env::temp_dir().join(format!("nexus-plot-{}.svg", std::process::id()));
        plot(&[run], &path, "sweep").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for label in [
            "p99 latency (ms, log scale)",
            "throughput (inferences/s, log scale)",
        ] {
            assert!(svg.contains(label), "no axis description {label:?}");
        }
        // Both ends of each axis are labelled: 0.1 and 1 ms, 1000 and 100000 infer/s.
        let texts = texts(&svg);
        for tick in ["0.1", "1", "1000", "100000"] {
            assert!(texts.contains(&tick), "no tick {tick} in the plot");
        }
    }

    /// Every line of `svg` that is a whole text: tick labels and descriptions.
    fn texts(svg: &str) -> Vec<&str> {
        svg.lines().map(str::trim).collect()
    }

    #[test]
    fn a_run_with_gpu_samples_gets_a_gpu_table_and_labelled_plots() {
        use crate::gpu::{GpuSample, LevelGpu, RunGpu};
        let sample = |t_ms, utilization, gib: u64| GpuSample {
            t_ms,
            gpus: vec![GpuReading {
                gpu_uuid: "GPU-1234".into(),
                utilization: Some(utilization),
                memory_used_bytes: Some(gib << 30),
            }],
        };
        let mut levels = vec![level(1, 900, 1_100.0), level(16, 4_000, 4_000.0)];
        for (l, samples) in levels.iter_mut().zip([
            vec![sample(0, 0.1, 2), sample(250, 0.3, 5)],
            vec![sample(600, 0.8, 9), sample(850, 0.95, 10)],
        ]) {
            let summary = crate::gpu::summarise(&samples, 0);
            l.gpu = Some(LevelGpu { samples, summary });
        }
        let mut sampled = run("ort-cuda", levels);
        sampled.gpu = Some(RunGpu {
            source: Some("http://127.0.0.1:8002/metrics".into()),
            unavailable: None,
        });
        let mut unsampled = run("cpu", vec![level(1, 300, 3_000.0)]);
        unsampled.gpu = Some(RunGpu {
            source: None,
            unavailable: Some("no NVIDIA driver found".into()),
        });
        let runs = [unsampled, sampled];

        let md = markdown(&runs, "gpu");
        assert!(
            md.contains("| run | concurrency | GPU | samples | mean util % | max util % | max memory used MiB |"),
            "{md}"
        );
        assert!(
            md.contains("| ort-cuda | 1 | GPU-1234 | 2 | 20.0 | 30.0 | 5120 |"),
            "{md}"
        );
        assert!(
            md.contains("| ort-cuda | 16 | GPU-1234 | 2 | 87.5 | 95.0 | 10240 |"),
            "{md}"
        );
        assert!(
            md.contains("- cpu: no GPU was sampled: no NVIDIA driver found."),
            "{md}"
        );
        assert!(md.contains("(gpu_utilization.svg)") && md.contains("(gpu_memory_used.svg)"));

        let dir = std::env::temp_dir().join(format!("nexus-gpu-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, r) in runs.iter().enumerate() {
            std::fs::write(
                dir.join(format!("{i}.json")),
                serde_json::to_vec(r).unwrap(),
            )
            .unwrap();
        }
        write(&dir, "gpu").unwrap();
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
        let (utilization, memory) = (read("gpu_utilization.svg"), read("gpu_memory_used.svg"));
        std::fs::remove_dir_all(&dir).unwrap();
        for (svg, y_desc, ticks) in [
            (&utilization, "GPU utilisation (%)", ["0", "50", "100"]),
            (&memory, "GPU memory used (GiB)", ["0", "4", "10"]),
        ] {
            let texts = texts(svg);
            for label in ["time since the run started (s)", y_desc, "c=1", "c=16"] {
                assert!(texts.contains(&label), "no {label:?} in the plot");
            }
            for tick in ticks.iter().chain(&["0.2", "0.8"]) {
                assert!(texts.contains(tick), "no tick {tick} in the {y_desc} plot");
            }
        }
    }

    #[test]
    fn results_saved_before_gpu_sampling_still_load() {
        let old = r#"{"label": "grpc", "protocol": "grpc", "model": "simple", "batch": 1,
            "target": "127.0.0.1:8001", "machine": "2 cores", "date": "2025-01-01T00:00:00Z",
            "levels": [{"concurrency": 1, "requests": 10, "errors": 0, "seconds": 1.0,
                "throughput": 10.0, "rows_per_second": 10.0, "p50_us": 1, "p90_us": 2,
                "p99_us": 3, "mean_us": 1.5}]}"#;
        let run: RunResult = serde_json::from_str(old).unwrap();
        assert!(run.gpu.is_none() && run.levels[0].gpu.is_none());
        assert!(!markdown(&[run], "old").contains("## GPU"));
    }

    #[test]
    fn ticks_read_as_people_write_them() {
        assert_eq!(tick(0.1 + 0.2), "0.3");
        assert_eq!(tick(20000.0), "20000");
        assert_eq!(tick(0.05), "0.05");
        let ends = |r: std::ops::Range<f64>| (tick(r.start), tick(r.end));
        assert_eq!(ends(decades(0.23, 0.77)), ("0.1".into(), "1.001".into()));
        assert_eq!(
            ends(decades(4300.0, 12000.0)),
            ("999".into(), "100100".into())
        );
        assert_eq!(ends(decades(100.0, 100.0)), ("99.9".into(), "1001".into()));
    }
}
