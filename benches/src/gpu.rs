//! GPU readings during a run (`nexus bench run --gpu`). A task reads utilisation and memory
//! used of every GPU each [`INTERVAL`] while the levels run. The readings come from the
//! server's Prometheus page first, under Triton's `nv_gpu_*` names (which Nexus exports too),
//! so a remote server or Triton is measured on the machine where it runs; else from this
//! machine's NVML. Without either the run still completes and records why nothing was read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// How often the GPUs are read: NVML's utilisation is itself an average over 1/6 s to 1 s
/// (by board), so reading faster only repeats values, and slower blurs a 2 s level.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// A whole metrics page of a busy server is a few hundred KiB; a body beyond this is not one.
const MAX_METRICS_BYTES: usize = 16 << 20;
/// GPUs kept from one reading: bounds what a remote page can make the run store.
const MAX_GPUS: usize = 64;
/// A scrape that takes longer than this is skipped, so one slow answer delays a level's
/// samples by at most this much.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
const UTILIZATION: &str = "nv_gpu_utilization";
const MEMORY_USED: &str = "nv_gpu_memory_used_bytes";

/// One GPU's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuReading {
    pub gpu_uuid: String,
    /// Share of the last sample period in which a kernel ran, 0-1 (Triton's unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
}

/// Every GPU's reading at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// Milliseconds since the run's first level started: one time axis for the whole run.
    pub t_ms: u64,
    pub gpus: Vec<GpuReading>,
}

/// One GPU over a level's measured window (the warm-up left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSummary {
    pub gpu_uuid: String,
    pub samples: usize,
    pub mean_utilization: Option<f64>,
    pub max_utilization: Option<f64>,
    pub max_memory_used_bytes: Option<u64>,
}

/// What one concurrency level recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LevelGpu {
    pub samples: Vec<GpuSample>,
    pub summary: Vec<GpuSummary>,
}

/// How a run with `--gpu` was sampled: the source, or why there was none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunGpu {
    /// The metrics URL, or `nvml` (this machine); absent when nothing was sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why no GPU was sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// Why no GPU can be read. Each is an answer recorded in the run, never a failed run.
#[derive(Debug, thiserror::Error)]
pub enum NoGpu {
    #[error("the server exports no nv_gpu_* metrics at {url}")]
    NoMetrics { url: String },
    #[error("cannot read the server's metrics at {url}: {reason}")]
    Metrics { url: String, reason: String },
    /// NVML's own answer, e.g. "no NVIDIA driver found (…)".
    #[error("{0}")]
    Local(String),
    #[error("NVML lists no GPU this process may use (CUDA_VISIBLE_DEVICES)")]
    NoneVisible,
    #[error("{server}; on this machine: {local}")]
    Neither {
        server: Box<NoGpu>,
        local: Box<NoGpu>,
    },
}

/// Where readings come from.
#[derive(Clone)]
pub enum Source {
    /// The server's Prometheus page.
    Metrics {
        client: reqwest::Client,
        url: String,
    },
    /// This machine's NVML, restricted as Nexus restricts it (`CUDA_VISIBLE_DEVICES`).
    Nvml(nexus_gpu::Gpus),
}

impl Source {
    /// Finds a source that reads at least one GPU now: the server's page at `metrics_url`
    /// when given, else NVML. The error holds every reason, for the run's record.
    pub async fn find(metrics_url: Option<&str>) -> Result<Self, NoGpu> {
        let server = match metrics_url {
            Some(url) => {
                let source = Source::Metrics {
                    client: reqwest::Client::builder()
                        .timeout(SCRAPE_TIMEOUT)
                        .build()
                        .map_err(|e| NoGpu::Metrics {
                            url: url.to_string(),
                            reason: e.to_string(),
                        })?,
                    url: url.to_string(),
                };
                match source.read().await {
                    Ok(_) => return Ok(source),
                    Err(why) => Some(why),
                }
            }
            None => None,
        };
        let local = match nexus_gpu::Gpus::discover(None) {
            Ok(gpus) => {
                let source = Source::Nvml(gpus);
                match source.read().await {
                    Ok(_) => return Ok(source),
                    Err(why) => why,
                }
            }
            Err(why) => NoGpu::Local(why),
        };
        Err(match server {
            Some(server) => NoGpu::Neither {
                server: Box::new(server),
                local: Box::new(local),
            },
            None => local,
        })
    }

    /// What the run records as its source.
    pub fn describe(&self) -> String {
        match self {
            Source::Metrics { url, .. } => url.clone(),
            Source::Nvml(_) => "nvml".into(),
        }
    }

    /// Every GPU's reading now; an error when none could be read.
    pub async fn read(&self) -> Result<Vec<GpuReading>, NoGpu> {
        let readings = match self {
            Source::Metrics { client, url } => {
                let fail = |reason: String| NoGpu::Metrics {
                    url: url.clone(),
                    reason,
                };
                let text = scrape(client, url).await.map_err(fail)?;
                parse_metrics(&text)
            }
            Source::Nvml(gpus) => {
                // NVML calls block for a few ms on some drivers: off the async workers.
                let gpus = gpus.clone();
                let visible = tokio::task::spawn_blocking(move || gpus.visible())
                    .await
                    .map_err(|e| NoGpu::Local(format!("NVML reading stopped: {e}")))?
                    .map_err(NoGpu::Local)?;
                visible
                    .iter()
                    .take(MAX_GPUS)
                    .map(|v| GpuReading {
                        gpu_uuid: v.gpu.uuid.clone(),
                        utilization: v.gpu.utilization_percent.map(|p| f64::from(p) / 100.0),
                        memory_used_bytes: Some(v.gpu.memory_used_bytes),
                    })
                    .collect()
            }
        };
        if readings.is_empty() {
            return Err(match self {
                Source::Metrics { url, .. } => NoGpu::NoMetrics { url: url.clone() },
                Source::Nvml(_) => NoGpu::NoneVisible,
            });
        }
        Ok(readings)
    }
}

/// The body of `url`, read up to [`MAX_METRICS_BYTES`].
async fn scrape(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_METRICS_BYTES {
            return Err(format!("the page is over {MAX_METRICS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The `nv_gpu_utilization` and `nv_gpu_memory_used_bytes` readings of a Prometheus text
/// page, one per `gpu_uuid` label, in the page's order. Only those metrics' lines reach the
/// parser, so a large page costs a scan, not a parse; lines it cannot read are skipped, as
/// are values that are not finite or are negative.
pub fn parse_metrics(text: &str) -> Vec<GpuReading> {
    let wanted = |line: &str| {
        let line = line.trim_start();
        let name = line
            .strip_prefix('#')
            .map(|rest| rest.split_whitespace().nth(1).unwrap_or_default())
            .unwrap_or(line);
        name.starts_with(UTILIZATION) || name.starts_with(MEMORY_USED)
    };
    let lines = text
        .lines()
        .filter(|l| wanted(l))
        .map(|l| Ok(l.to_string()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return Vec::new();
    };
    let mut readings: Vec<GpuReading> = Vec::new();
    for sample in scrape.samples {
        let value = match sample.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let Some(uuid) = sample.labels.get("gpu_uuid") else {
            continue;
        };
        if !value.is_finite() || value < 0.0 {
            continue;
        }
        let index = match readings.iter().position(|r| r.gpu_uuid == uuid) {
            Some(i) => i,
            None if readings.len() < MAX_GPUS => {
                readings.push(GpuReading {
                    gpu_uuid: uuid.to_string(),
                    utilization: None,
                    memory_used_bytes: None,
                });
                readings.len() - 1
            }
            None => continue,
        };
        match sample.metric.as_str() {
            UTILIZATION => readings[index].utilization = Some(value),
            // Bytes as a float gauge: whole numbers well inside f64's exact range.
            MEMORY_USED => readings[index].memory_used_bytes = Some(value as u64),
            _ => {}
        }
    }
    readings.retain(|r| r.utilization.is_some() || r.memory_used_bytes.is_some());
    readings
}

/// Per GPU over the samples taken at or after `from_ms`; over all of them when none was
/// (a level shorter than one interval).
pub fn summarise(samples: &[GpuSample], from_ms: u64) -> Vec<GpuSummary> {
    let measured: Vec<&GpuSample> = samples.iter().filter(|s| s.t_ms >= from_ms).collect();
    let window = if measured.is_empty() {
        samples.iter().collect()
    } else {
        measured
    };
    let mut by_gpu: BTreeMap<&str, (GpuSummary, f64, usize)> = BTreeMap::new();
    for reading in window.iter().flat_map(|s| &s.gpus) {
        let (summary, util_sum, util_count) =
            by_gpu.entry(&reading.gpu_uuid).or_insert_with(|| {
                let summary = GpuSummary {
                    gpu_uuid: reading.gpu_uuid.clone(),
                    samples: 0,
                    mean_utilization: None,
                    max_utilization: None,
                    max_memory_used_bytes: None,
                };
                (summary, 0.0, 0)
            });
        summary.samples += 1;
        if let Some(u) = reading.utilization {
            *util_sum += u;
            *util_count += 1;
            summary.max_utilization = Some(summary.max_utilization.map_or(u, |m| m.max(u)));
        }
        if let Some(m) = reading.memory_used_bytes {
            summary.max_memory_used_bytes =
                Some(summary.max_memory_used_bytes.map_or(m, |x| x.max(m)));
        }
    }
    by_gpu
        .into_values()
        .map(|(mut summary, sum, count)| {
            summary.mean_utilization = (count > 0).then(|| sum / count as f64);
            summary
        })
        .collect()
}

/// The sampling task's handle. The task owns the source and the samples; `take` asks it
/// for those taken since the last call. Dropping the handle stops the task.
pub struct Sampler {
    started: Instant,
    takes: mpsc::Sender<oneshot::Sender<Vec<GpuSample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts reading `source` every [`INTERVAL`], the first reading at once.
    pub fn start(source: Source) -> Self {
        let started = Instant::now();
        let (takes, mut requests) = mpsc::channel::<oneshot::Sender<Vec<GpuSample>>>(1);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => match source.read().await {
                        Ok(gpus) => samples.push(GpuSample {
                            t_ms: millis(started.elapsed()),
                            gpus,
                        }),
                        Err(why) => tracing::warn!(%why, "bench --gpu: a GPU reading failed"),
                    },
                    request = requests.recv() => match request {
                        Some(reply) => {
                            let _ = reply.send(std::mem::take(&mut samples));
                        }
                        None => return,
                    },
                }
            }
        });
        Sampler {
            started,
            takes,
            task,
        }
    }

    /// Milliseconds since the sampler started: the run's time axis.
    pub fn elapsed_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }

    /// The samples taken since the last call (none if the task has stopped).
    pub async fn take(&self) -> Vec<GpuSample> {
        let (reply, answer) = oneshot::channel();
        if self.takes.send(reply).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Triton's page (24.x) for two GPUs, with other families around and lines it must skip.
    const PAGE: &str = r#"# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="simple",version="1"} 42
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-aaaa"} 0.37
nv_gpu_utilization{gpu_uuid="GPU-bbbb"} 0
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-aaaa"} 85520809984
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaaa"} 1520435200
nv_gpu_memory_used_bytes{gpu_uuid="GPU-bbbb"} 524288000
nv_gpu_memory_used_bytes 7
nv_gpu_utilization{gpu_uuid="GPU-cccc"} NaN
nv_gpu_utilization{gpu_uuid="GPU-dddd"} -1
nv_gpu_utilization{gpu_uuid="GPU-eeee"} not-a-number
"#;

    #[test]
    fn a_prometheus_page_gives_each_gpus_utilisation_and_memory() {
        assert_eq!(
            parse_metrics(PAGE),
            vec![
                GpuReading {
                    gpu_uuid: "GPU-aaaa".into(),
                    utilization: Some(0.37),
                    memory_used_bytes: Some(1_520_435_200),
                },
                GpuReading {
                    gpu_uuid: "GPU-bbbb".into(),
                    utilization: Some(0.0),
                    memory_used_bytes: Some(524_288_000),
                },
            ]
        );
    }

    #[test]
    fn a_page_without_gpu_metrics_or_garbage_gives_no_readings() {
        assert!(parse_metrics("nv_inference_count{model=\"m\"} 3\n").is_empty());
        assert!(parse_metrics("").is_empty());
        let garbage = [
            "nv_gpu_utilization{gpu_uuid=\"x\"",
            "nv_gpu_utilization{=} 1",
            "nv_gpu_utilization{gpu_uuid} 1",
            "# TYPE",
            "#",
            "nv_gpu_memory_used_bytes{gpu_uuid=\"\u{0}\"} 1e999",
            "\u{feff}nv_gpu_utilization 1 2 3 4",
        ]
        .join("\n");
        let _ = parse_metrics(&garbage);
        let _ = parse_metrics(&"nv_gpu_utilization{".repeat(10_000));
    }

    #[test]
    fn no_more_gpus_are_kept_than_the_bound() {
        let page: String = (0..MAX_GPUS + 10)
            .map(|i| format!("nv_gpu_utilization{{gpu_uuid=\"GPU-{i}\"}} 0.5\n"))
            .collect();
        assert_eq!(parse_metrics(&page).len(), MAX_GPUS);
    }

    #[test]
    fn a_summary_covers_the_measured_window_per_gpu() {
        let sample = |t_ms, util, mem| GpuSample {
            t_ms,
            gpus: vec![GpuReading {
                gpu_uuid: "GPU-a".into(),
                utilization: Some(util),
                memory_used_bytes: Some(mem),
            }],
        };
        let samples = [
            sample(0, 0.9, 900),
            sample(500, 0.2, 100),
            sample(750, 0.6, 300),
        ];
        let summary = summarise(&samples, 400);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].samples, 2);
        assert!((summary[0].mean_utilization.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(summary[0].max_utilization, Some(0.6));
        assert_eq!(summary[0].max_memory_used_bytes, Some(300));
        // A level shorter than one interval still gets its one sample.
        assert_eq!(summarise(&samples[..1], 400)[0].samples, 1);
        assert!(summarise(&[], 0).is_empty());
    }

    #[tokio::test]
    async fn the_sampler_hands_over_what_it_read_since_the_last_take() {
        let inventory = nexus_gpu::Inventory {
            devices: vec![nexus_gpu::Gpu {
                index: 0,
                uuid: "GPU-fixed".into(),
                name: "Test GPU".into(),
                compute_capability: Some([9, 0]),
                memory_total_bytes: 80 << 30,
                memory_used_bytes: 3 << 30,
                utilization_percent: Some(50),
                power_watts: None,
                power_limit_watts: None,
                temperature_celsius: None,
                energy_joules: None,
            }],
            ..Default::default()
        };
        let gpus = nexus_gpu::Gpus::from_source(
            std::sync::Arc::new(nexus_gpu::FixedSource(inventory)),
            None,
            None,
        );
        let sampler = Sampler::start(Source::Nvml(gpus));
        tokio::time::sleep(INTERVAL + INTERVAL / 2).await;
        let first = sampler.take().await;
        assert!(first.len() >= 2, "{first:?}");
        assert_eq!(first[0].gpus[0].utilization, Some(0.5));
        assert_eq!(first[0].gpus[0].memory_used_bytes, Some(3 << 30));
        let second = sampler.take().await;
        assert!(second.len() <= 1, "taken twice: {second:?}");
    }
}
