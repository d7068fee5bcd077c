//! Merges saved runs into `report.md` (one row per run and concurrency) and
//! `throughput_latency.svg` (throughput against p99 latency, one line per run).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::RunResult;

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
    md
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
            ((x_min * 0.8).max(1e-3)..x_max * 1.25).log_scale(),
            ((y_min * 0.8).max(1e-3)..y_max * 1.25).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("p99 latency (ms)")
        .y_desc("throughput (inferences/s)")
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
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `report.md` and `throughput_latency.svg` for the runs in `dir`; returns the markdown.
pub fn write(dir: &Path, title: &str) -> anyhow::Result<String> {
    let runs = load_runs(dir)?;
    let md = markdown(&runs, title);
    std::fs::write(dir.join("report.md"), &md)?;
    plot(&runs, &dir.join("throughput_latency.svg"), title)?;
    Ok(md)
}
