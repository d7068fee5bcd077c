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
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
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

/// Writes `report.md` and `throughput_latency.svg` for the runs in `dir`; returns the markdown.
pub fn write(dir: &Path, title: &str) -> anyhow::Result<String> {
    let runs = load_runs(dir)?;
    let md = markdown(&runs, title);
    std::fs::write(dir.join("report.md"), &md)?;
    plot(&runs, &dir.join("throughput_latency.svg"), title)?;
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
        }
    }

    #[test]
    fn a_sweep_within_one_decade_still_gets_labelled_log_axes() {
        // A gRPC sweep at c=1 and c=8: p99 0.23-0.77 ms, 4-12k/s, less than a decade each.
        let run = RunResult {
            label: "grpc".into(),
            protocol: Protocol::Grpc,
            model: "simple".into(),
            batch: 1,
            target: "127.0.0.1:8001".into(),
            levels: vec![level(1, 230, 4_300.0), level(8, 770, 12_000.0)],
            machine: String::new(),
            date: String::new(),
        };
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
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        for tick in ["0.1", "1", "1000", "100000"] {
            assert!(texts.contains(&tick), "no tick {tick} in the plot");
        }
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
