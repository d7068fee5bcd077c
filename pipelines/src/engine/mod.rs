//! Runs pipelines. Each run is a task that owns its state: it walks the graph, starts a
//! task once everything it depends on has ended, and writes every state change to the
//! store before acting on it. A run found unfinished at start-up (Nexus was killed) is
//! driven again from its rows: finished steps keep their outputs, interrupted ones have
//! their stale process stopped and are re-run once.
//!
//! `run.rs` walks a run's graph; `step.rs` runs one executable step.

mod run;
mod step;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::artifacts::ArtifactStore;
use crate::error::{PipelineError, SpecError};
use crate::executor::{Executor, Exit, Launch};
use crate::graph::{Body, Dag, Exec, Flavor, Input, Items, MAX_TASKS, Pipeline, Selector, Task};
use crate::kfp;
use crate::spec;
use crate::stepdir;
use crate::store::{Artifact, Outputs, RunRecord, Status, Store, TaskRecord, TaskUpdate};

/// A heartbeat older than this lets another Nexus take a run over.
const STALE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Step work folders live below it: `<work_root>/<run>/<task path>`.
    pub work_root: PathBuf,
    pub logs_root: PathBuf,
    /// Steps running at once, over all runs.
    pub parallelism: usize,
    /// This server's URL, given to steps (NEXUS_URL, MLFLOW_TRACKING_URI).
    pub server_url: String,
    /// Interpreter that replaces `python3` in KFP launcher commands.
    pub python: Option<String>,
    /// Variables of the server's environment passed to every step (`--pipeline-env`); a
    /// step's own `env` overrides them.
    pub passed_env: BTreeMap<String, String>,
    /// Who this process is in the runs' lease; stable across restarts of one install.
    pub owner: String,
    /// The folder of the pipeline library (see [`crate::library`]).
    pub library: PathBuf,
}

/// A submission.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// A Nexus spec or KFP IR, as YAML or JSON text.
    pub spec: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    /// Where relative `workdir`s resolve (the spec's folder, for the CLI).
    #[serde(default)]
    pub base_dir: Option<PathBuf>,
    #[serde(default)]
    pub name: Option<String>,
}

pub struct Engine {
    store: Store,
    artifacts: ArtifactStore,
    executor: Arc<dyn Executor>,
    config: EngineConfig,
    slots: Arc<Semaphore>,
    active: parking_lot::Mutex<HashMap<String, CancellationToken>>,
    /// KFP package-install preludes that already succeeded in this process (see
    /// [`kfp::split_install`]).
    installed: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Compiles a spec text (Nexus YAML or KFP IR) into a pipeline.
pub fn compile(text: &str, base_dir: Option<&std::path::Path>) -> Result<Pipeline, SpecError> {
    let doc: Value = crate::yaml::from_str(text)?;
    if kfp::is_kfp(&doc) {
        kfp::import(&doc)
    } else if spec::is_nexus(&doc) {
        spec::compile(text, base_dir)
    } else {
        Err(SpecError::new(
            "neither a Nexus pipeline (no 'steps') nor a compiled KFP pipeline (no 'pipelineInfo' and 'root')",
        ))
    }
}

impl Engine {
    pub fn new(
        store: Store,
        artifacts: ArtifactStore,
        executor: Arc<dyn Executor>,
        config: EngineConfig,
    ) -> Arc<Self> {
        Arc::new(Engine {
            store,
            artifacts,
            executor,
            slots: Arc::new(Semaphore::new(config.parallelism.max(1))),
            config,
            active: parking_lot::Mutex::new(HashMap::new()),
            installed: parking_lot::Mutex::new(Default::default()),
        })
    }

    /// The folder of the pipeline library.
    pub fn library_dir(&self) -> &std::path::Path {
        &self.config.library
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a step's stdout and stderr go: one file per step, across its attempts.
    pub fn log_path(&self, run_id: &str, path: &str) -> PathBuf {
        self.config
            .logs_root
            .join(run_id)
            .join(format!("{}.log", path.replace('/', "__")))
    }

    /// Validates and records a run, then starts it.
    pub async fn submit(self: &Arc<Self>, request: Submit) -> Result<RunRecord, PipelineError> {
        let pipeline = compile(&request.spec, request.base_dir.as_deref())?;
        let parameters = pipeline.bind(&request.parameters)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = request.name.unwrap_or_else(|| pipeline.name.clone());
        self.store
            .create_run(&id, &pipeline, &name, &parameters)
            .await?;
        tracing::info!(run = %id, pipeline = %pipeline.name, flavor = pipeline.flavor.as_str(), "pipeline run submitted");
        self.start(id.clone());
        self.store.get_run(&id, true).await
    }

    /// Asks a run to stop: running steps are stopped, nothing new starts.
    pub async fn cancel(&self, id: &str) -> Result<RunRecord, PipelineError> {
        let run = self.store.get_run(id, false).await?;
        if run.status.is_terminal() {
            return Err(PipelineError::Conflict(format!(
                "run '{id}' already ended ({})",
                run.status.as_str()
            )));
        }
        self.store.request_cancel(id).await?;
        if let Some(token) = self.active.lock().get(id) {
            token.cancel();
        }
        self.store.get_run(id, true).await
    }

    /// Drives a run in the background, unless this process already does.
    fn start(self: &Arc<Self>, id: String) {
        let token = CancellationToken::new();
        {
            let mut active = self.active.lock();
            if active.contains_key(&id) {
                return;
            }
            active.insert(id.clone(), token.clone());
        }
        let engine = Arc::clone(self);
        // A child of the submitting request's span, so steps join the caller's trace.
        let span = tracing::info_span!("pipeline_run", run = %id);
        tokio::spawn(
            async move {
                engine.drive(&id, token).await;
                engine.active.lock().remove(&id);
            }
            .instrument(span),
        );
    }

    /// Takes over every unfinished run nobody live holds (this process's own, after a
    /// restart, at once).
    pub async fn resume(self: &Arc<Self>) -> Result<usize, PipelineError> {
        let mut resumed = 0;
        for id in self.store.unfinished().await? {
            if self.active.lock().contains_key(&id) {
                continue;
            }
            if self.store.claim(&id, &self.config.owner, STALE).await? {
                tracing::info!(run = %id, "resuming pipeline run");
                self.start(id);
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    /// Heartbeats for held runs, cancel requests made through another process, and runs
    /// left behind by a Nexus that died.
    pub fn background(self: &Arc<Self>) {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                if let Err(e) = engine.store.heartbeat(&engine.config.owner).await {
                    tracing::warn!(error = %e, "pipeline heartbeat failed");
                    continue;
                }
                let held: Vec<(String, CancellationToken)> = engine
                    .active
                    .lock()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (id, token) in held {
                    if let Ok(run) = engine.store.get_run(&id, false).await
                        && run.cancel_requested
                    {
                        token.cancel();
                    }
                }
                if let Err(e) = engine.resume().await {
                    tracing::warn!(error = %e, "looking for abandoned pipeline runs failed");
                }
            }
        });
    }

    async fn drive(self: &Arc<Self>, id: &str, cancel: CancellationToken) {
        match self.store.claim(id, &self.config.owner, STALE).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(run = %id, error = %e, "cannot claim pipeline run");
                return;
            }
        }
        let loaded = async {
            let (pipeline, parameters, name) = self.store.graph(id).await?;
            let prior: BTreeMap<String, TaskRecord> = self
                .store
                .tasks(id)
                .await?
                .into_iter()
                .map(|t| (t.path.clone(), t))
                .collect();
            let run = self.store.get_run(id, false).await?;
            Ok::<_, PipelineError>((pipeline, parameters, name, prior, run.cancel_requested))
        }
        .await;
        let (pipeline, parameters, name, prior, cancel_requested) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(run = %id, error = %e, "cannot load pipeline run");
                return;
            }
        };
        if cancel_requested {
            cancel.cancel();
        }
        if let Err(e) = self
            .store
            .set_run_status(id, Status::Running, None, None)
            .await
        {
            tracing::error!(run = %id, error = %e, "cannot start pipeline run");
            return;
        }
        let run = Arc::new(Run {
            engine: Arc::clone(self),
            id: id.to_string(),
            name,
            flavor: pipeline.flavor,
            prior,
            cancel: cancel.clone(),
            budget: AtomicUsize::new(
                MAX_TASKS.saturating_sub(pipeline.root.expanded_size().unwrap_or(MAX_TASKS)),
            ),
        });
        let scope = Scope {
            parameters,
            artifacts: BTreeMap::new(),
        };
        let result = run.dag(&pipeline.root, scope, String::new()).await;
        let status = if cancel.is_cancelled() {
            Status::Cancelled
        } else if result.error.is_none() {
            Status::Succeeded
        } else {
            Status::Failed
        };
        tracing::info!(run = %id, status = status.as_str(), error = ?result.error, "pipeline run ended");
        metrics::counter!("nexus_pipeline_runs_total", "status" => status.as_str()).increment(1);
        if let Err(e) = run
            .write(|| {
                self.store.set_run_status(
                    id,
                    status,
                    Some(&result.outputs),
                    result.error.as_deref(),
                )
            })
            .await
        {
            tracing::error!(run = %id, error = %e, "cannot record the end of a pipeline run");
        }
    }
}

/// Values visible inside a DAG: its inputs.
#[derive(Debug, Clone, Default)]
struct Scope {
    parameters: BTreeMap<String, Value>,
    artifacts: BTreeMap<String, Vec<Artifact>>,
}

/// How a task ended, as its dependents see it.
#[derive(Debug, Clone)]
enum Ended {
    Succeeded(Outputs),
    Failed(String),
    /// Its condition was false: dependents still run.
    Skipped,
    /// Not run because something it needs failed.
    Blocked(String),
    Cancelled,
}

impl Ended {
    fn status(&self) -> Status {
        match self {
            Ended::Succeeded(_) => Status::Succeeded,
            Ended::Failed(_) => Status::Failed,
            Ended::Skipped | Ended::Blocked(_) => Status::Skipped,
            Ended::Cancelled => Status::Cancelled,
        }
    }

    fn state(&self) -> &'static str {
        match self {
            Ended::Succeeded(_) | Ended::Skipped => "SUCCEEDED",
            Ended::Failed(_) | Ended::Blocked(_) => "FAILED",
            Ended::Cancelled => "CANCELLED",
        }
    }
}

struct DagResult {
    outputs: Outputs,
    error: Option<String>,
}

/// One run being driven.
struct Run {
    engine: Arc<Engine>,
    id: String,
    name: String,
    flavor: Flavor,
    /// Task rows found when the run (re)started.
    prior: BTreeMap<String, TaskRecord>,
    cancel: CancellationToken,
    /// Tasks this run may still add beyond its imported size, for loops over lists only
    /// known at run time ([`MAX_TASKS`] in all).
    budget: AtomicUsize,
}

/// The path of task `name` inside the DAG at `prefix`: the key of its task record, its
/// folder and its log.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
