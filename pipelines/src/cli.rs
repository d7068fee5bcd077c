//! `nexus pipeline …`: the REST API from a terminal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

#[derive(Debug, clap::Subcommand)]
pub enum PipelineCommand {
    /// Submit a Nexus pipeline spec or a compiled KFP pipeline (IR YAML).
    #[command(after_help = "Example:\n  nexus pipeline submit train.yaml --param epochs=3 --wait")]
    Submit {
        file: PathBuf,
        /// A run parameter (repeatable): --param epochs=5
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Name of the run (default: the pipeline's name).
        #[arg(long)]
        name: Option<String>,
        /// Wait for the run to end, showing progress; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// List runs, newest first.
    #[command(after_help = "Example:\n  nexus pipeline list --url http://nexus:8000")]
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A run's state and its steps.
    #[command(after_help = "Example:\n  nexus pipeline status 0c6f3a9e2b7d4e1f")]
    Status {
        run: String,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A run's logs (every step, or one).
    #[command(after_help = "Example:\n  nexus pipeline logs 0c6f3a9e2b7d4e1f train --follow")]
    Logs {
        run: String,
        step: Option<String>,
        /// Keep streaming until the step or run ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a run.
    #[command(after_help = "Example:\n  nexus pipeline cancel 0c6f3a9e2b7d4e1f")]
    Cancel { run: String },
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))
}

/// A parameter given on the command line: JSON when it parses as JSON (numbers, lists),
/// else the text itself; KFP's declared types then convert it.
fn param_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_))) => v,
        _ => Value::String(text.to_string()),
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach Nexus at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{status}: {message}");
        }
        Ok(body)
    }

    async fn run(&self, id: &str) -> anyhow::Result<Value> {
        let body = self
            .call(
                self.http
                    .get(format!("{}/api/v1/pipelines/runs/{id}", self.base)),
            )
            .await?;
        Ok(body["run"].clone())
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_run(run: &Value) {
    println!("run       {}", text(&run["id"]));
    println!("pipeline  {} ({})", text(&run["name"]), text(&run["kind"]));
    println!("status    {}", text(&run["status"]));
    if !run["error"].is_null() {
        println!("error     {}", text(&run["error"]));
    }
    if let Some(tasks) = run["tasks"].as_array() {
        println!("{:<48} {:<10} {:>8}  error", "step", "status", "attempts");
        for t in tasks {
            let status = if t["cached"] == Value::Bool(true) {
                format!("{} (cached)", text(&t["status"]))
            } else {
                text(&t["status"])
            };
            println!(
                "{:<48} {:<10} {:>8}  {}",
                text(&t["path"]),
                status,
                text(&t["attempts"]),
                if t["error"].is_null() {
                    String::new()
                } else {
                    text(&t["error"])
                }
            );
        }
    }
    let metrics = metrics_lines(run);
    if !metrics.is_empty() {
        println!("metrics");
        for line in metrics {
            println!("  {line}");
        }
    }
    if let Some(outputs) = run["outputs"]["parameters"].as_object()
        && !outputs.is_empty()
    {
        println!("outputs   {}", Value::Object(outputs.clone()));
    }
}

/// One line per `system.Metrics` artifact a step produced: `STEP OUTPUT name=value …`
/// (what `metrics.log_metric` recorded).
fn metrics_lines(run: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for task in run["tasks"].as_array().into_iter().flatten() {
        let Some(artifacts) = task["outputs"]["artifacts"].as_object() else {
            continue;
        };
        for (output, list) in artifacts {
            for artifact in list.as_array().into_iter().flatten() {
                let Some(metadata) = artifact["metadata"].as_object() else {
                    continue;
                };
                if artifact["schema_title"] != "system.Metrics" || metadata.is_empty() {
                    continue;
                }
                let values: Vec<String> = metadata
                    .iter()
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect();
                lines.push(format!(
                    "{} {output} {}",
                    text(&task["path"]),
                    values.join(" ")
                ));
            }
        }
    }
    lines
}

/// Runs a `nexus pipeline` command against the server at `url`.
pub async fn run(url: &str, command: PipelineCommand) -> anyhow::Result<()> {
    let api = Api {
        base: url.trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
    };
    match command {
        PipelineCommand::Submit {
            file,
            params,
            name,
            wait,
        } => {
            let spec = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let base_dir = std::fs::canonicalize(&file)
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from));
            let parameters: BTreeMap<String, Value> = params
                .into_iter()
                .map(|(k, v)| (k, param_value(&v)))
                .collect();
            let body = serde_json::json!({"spec": spec, "parameters": parameters, "base_dir": base_dir, "name": name});
            let created = api
                .call(
                    api.http
                        .post(format!("{}/api/v1/pipelines/runs", api.base))
                        .json(&body),
                )
                .await?;
            let id = text(&created["run"]["id"]);
            println!("{id}");
            if wait {
                let run = watch(&api, &id).await?;
                print_run(&run);
                if run["status"] != "SUCCEEDED" {
                    bail!("run {id} ended {}", text(&run["status"]));
                }
            }
        }
        PipelineCommand::List { status, limit } => {
            let mut request = api
                .http
                .get(format!("{}/api/v1/pipelines/runs", api.base))
                .query(&[("limit", limit.to_string())]);
            if let Some(s) = status {
                request = request.query(&[("status", s)]);
            }
            let body = api.call(request).await?;
            println!("{:<34} {:<28} {:<10} created", "run", "pipeline", "status");
            for run in body["runs"].as_array().into_iter().flatten() {
                println!(
                    "{:<34} {:<28} {:<10} {}",
                    text(&run["id"]),
                    text(&run["name"]),
                    text(&run["status"]),
                    text(&run["created_at"])
                );
            }
        }
        PipelineCommand::Status { run, json } => {
            let run = api.run(&run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                print_run(&run);
            }
        }
        PipelineCommand::Logs { run, step, follow } => {
            let mut query = vec![("follow", follow.to_string())];
            if let Some(step) = step {
                query.push(("step", step));
            }
            let response = api
                .http
                .get(format!("{}/api/v1/pipelines/runs/{run}/logs", api.base))
                .query(&query)
                .send()
                .await
                .with_context(|| format!("cannot reach Nexus at {}", api.base))?;
            if !response.status().is_success() {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                bail!("{status}: {}", text(&body["error"]["message"]));
            }
            let mut stream = response.bytes_stream();
            let mut out = tokio::io::stdout();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?).await?;
                out.flush().await?;
            }
        }
        PipelineCommand::Cancel { run } => {
            let body = api
                .call(
                    api.http
                        .post(format!("{}/api/v1/pipelines/runs/{run}/cancel", api.base)),
                )
                .await?;
            print_run(&body["run"]);
        }
    }
    Ok(())
}

/// Polls a run until it ends, with a progress bar over its steps.
async fn watch(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg}",
        )
        .expect("progress template"),
    );
    loop {
        let run = api.run(id).await?;
        let tasks = run["tasks"].as_array().cloned().unwrap_or_default();
        let done = tasks
            .iter()
            .filter(|t| !matches!(t["status"].as_str(), Some("PENDING" | "RUNNING")))
            .count();
        bar.set_length(tasks.len() as u64);
        bar.set_position(done as u64);
        let running: Vec<String> = tasks
            .iter()
            .filter(|t| t["status"] == "RUNNING")
            .map(|t| text(&t["path"]))
            .collect();
        bar.set_message(running.join(", "));
        if !matches!(run["status"].as_str(), Some("PENDING" | "RUNNING")) {
            bar.finish_and_clear();
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
