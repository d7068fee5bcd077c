//! Runs pipelines. Each run is a task that owns its state: it walks the graph, starts a
//! task once everything it depends on has ended, and writes every state change to the
//! store before acting on it. A run found unfinished at start-up (Nexus was killed) is
//! driven again from its rows: finished steps keep their outputs, interrupted ones have
//! their stale process stopped and are re-run once.

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

fn join(prefix: &str, name: &str) -> String {
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

impl Run {
    /// Retries a store write while the database is unreachable, so a database outage
    /// delays a run instead of losing its state.
    async fn write<'a, F, Fut>(&self, op: F) -> Result<(), PipelineError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), PipelineError>> + 'a,
    {
        let mut delay = Duration::from_millis(200);
        loop {
            match op().await {
                Err(PipelineError::Unavailable(why)) => {
                    tracing::warn!(run = %self.id, %why, "pipeline database unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn record(&self, path: &str, name: &str, update: TaskUpdate<'_>) {
        let store = &self.engine.store;
        let result = self
            .write(|| store.update_task(&self.id, path, name, update))
            .await;
        if let Err(e) = result {
            tracing::error!(run = %self.id, task = %path, error = %e, "cannot record task state");
        }
    }

    async fn finish(&self, path: &str, name: &str, ended: &Ended) {
        metrics::counter!("nexus_pipeline_steps_total", "status" => ended.status().as_str())
            .increment(1);
        let (error, outputs) = match ended {
            Ended::Succeeded(o) => (None, Some(o)),
            Ended::Failed(e) | Ended::Blocked(e) => (Some(e.as_str()), None),
            Ended::Skipped | Ended::Cancelled => (None, None),
        };
        let status = ended.status();
        self.record(
            path,
            name,
            TaskUpdate {
                status: Some(status),
                outputs,
                error,
                finished: true,
                ..Default::default()
            },
        )
        .await;
    }

    fn dag<'a>(
        self: &'a Arc<Self>,
        dag: &'a Dag,
        scope: Scope,
        prefix: String,
    ) -> BoxFuture<'a, DagResult> {
        Box::pin(async move {
            let mut ended: HashMap<String, Ended> = HashMap::new();
            let mut waiting: Vec<&Task> = dag.tasks.iter().collect();
            let mut running = FuturesUnordered::new();
            loop {
                let mut i = 0;
                while i < waiting.len() {
                    let task = waiting[i];
                    if !task.after.iter().all(|d| ended.contains_key(d)) {
                        i += 1;
                        continue;
                    }
                    waiting.remove(i);
                    let path = join(&prefix, &task.name);
                    let blocked = task.after.iter().find_map(|d| match &ended[d] {
                        Ended::Failed(_) | Ended::Blocked(_) | Ended::Cancelled => Some(d.clone()),
                        _ => None,
                    });
                    let outcome = if self.cancel.is_cancelled() {
                        Some(Ended::Cancelled)
                    } else if let (Some(dep), false) = (&blocked, task.always) {
                        Some(Ended::Blocked(format!("not run: '{dep}' did not succeed")))
                    } else {
                        match self.resolve(task, &scope, &ended) {
                            Ok(inputs) => {
                                running.push(self.task(task, inputs, path.clone()));
                                None
                            }
                            Err(e) => Some(Ended::Failed(e)),
                        }
                    };
                    if let Some(outcome) = outcome {
                        self.finish(&path, &task.name, &outcome).await;
                        ended.insert(task.name.clone(), outcome);
                    }
                }
                match running.next().await {
                    Some((name, outcome)) => {
                        ended.insert(name, outcome);
                    }
                    None => break,
                }
            }
            let error = dag.tasks.iter().find_map(|t| match ended.get(&t.name) {
                Some(Ended::Failed(e)) => {
                    Some(format!("task '{}' failed: {e}", join(&prefix, &t.name)))
                }
                Some(Ended::Cancelled) => Some("cancelled".to_string()),
                _ => None,
            });
            let mut outputs = Outputs::default();
            for (name, selector) in &dag.outputs {
                pick(selector, &ended, name, &mut outputs);
            }
            DagResult { outputs, error }
        })
    }

    /// The task's inputs from its scope and its finished siblings.
    fn resolve(
        &self,
        task: &Task,
        scope: &Scope,
        ended: &HashMap<String, Ended>,
    ) -> Result<Scope, String> {
        let produced = |producer: &str| -> Result<&Outputs, String> {
            match ended.get(producer) {
                Some(Ended::Succeeded(o)) => Ok(o),
                Some(Ended::Skipped) => {
                    Err(format!("'{producer}' was skipped, so it has no outputs"))
                }
                _ => Err(format!("'{producer}' did not succeed")),
            }
        };
        let optional = |name: &str| match &task.body {
            Body::Exec(exec) => exec
                .inputs
                .get(name)
                .is_some_and(|d| d.optional || d.default.is_some()),
            Body::Dag(_) => true,
        };
        let mut resolved = Scope::default();
        for (name, input) in &task.parameters {
            let value = match input {
                Input::Constant(v) => v.clone(),
                Input::Parent {
                    name: parent,
                    selector,
                } => match scope.parameters.get(parent) {
                    Some(v) => match selector {
                        Some(s) => kfp::select(v.clone(), s),
                        None => v.clone(),
                    },
                    None if optional(name) => continue,
                    None => return Err(format!("input '{name}': no value for '{parent}'")),
                },
                Input::Output {
                    task: producer,
                    key,
                } => match produced(producer)?.parameters.get(key) {
                    Some(v) => v.clone(),
                    None if optional(name) => continue,
                    None => {
                        return Err(format!(
                            "input '{name}': '{producer}' produced no output '{key}'"
                        ));
                    }
                },
                Input::FinalStatus { task: producer } => {
                    let state = ended.get(producer).map(Ended::state).unwrap_or("SUCCEEDED");
                    let error = match ended.get(producer) {
                        Some(Ended::Failed(e) | Ended::Blocked(e)) => Some(e.as_str()),
                        _ => None,
                    };
                    kfp::final_status(state, &self.name, producer, error)
                }
            };
            resolved.parameters.insert(name.clone(), value);
        }
        for (name, input) in &task.artifacts {
            let list = match input {
                Input::Parent { name: parent, .. } => scope.artifacts.get(parent).cloned(),
                Input::Output {
                    task: producer,
                    key,
                } => produced(producer)?.artifacts.get(key).cloned(),
                Input::Constant(_) | Input::FinalStatus { .. } => None,
            };
            match list {
                Some(list) => {
                    resolved.artifacts.insert(name.clone(), list);
                }
                None if optional(name) => {}
                None => return Err(format!("input artifact '{name}' has no value")),
            }
        }
        Ok(resolved)
    }

    fn task<'a>(
        self: &'a Arc<Self>,
        task: &'a Task,
        inputs: Scope,
        path: String,
    ) -> BoxFuture<'a, (String, Ended)> {
        Box::pin(async move {
            let outcome = self.task_outcome(task, inputs, &path).await;
            if !matches!(task.body, Body::Exec(_))
                || task.iterate.is_some()
                || matches!(outcome, Ended::Skipped)
            {
                self.finish(&path, &task.name, &outcome).await;
            }
            (task.name.clone(), outcome)
        })
    }

    async fn task_outcome(self: &Arc<Self>, task: &Task, inputs: Scope, path: &str) -> Ended {
        if let Some(condition) = &task.condition {
            match evaluate(condition, &inputs.parameters) {
                Ok(true) => {}
                Ok(false) => return Ended::Skipped,
                Err(e) => return Ended::Failed(e),
            }
        }
        let Some(iterate) = &task.iterate else {
            return self.body(task, inputs, path.to_string()).await;
        };
        let items = match &iterate.items {
            Items::Constant(items) => items.clone(),
            Items::Input(name) => match inputs.parameters.get(name) {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::String(s)) => match serde_json::from_str(s) {
                    Ok(Value::Array(items)) => items,
                    _ => return Ended::Failed(format!("loop input '{name}' is not a list: {s}")),
                },
                other => {
                    return Ended::Failed(format!("loop input '{name}' is not a list: {other:?}"));
                }
            },
        };
        if matches!(iterate.items, Items::Input(_))
            && let Err(e) = self.charge(task, items.len())
        {
            return Ended::Failed(e);
        }
        self.record(
            path,
            &task.name,
            TaskUpdate {
                status: Some(Status::Running),
                started: true,
                ..Default::default()
            },
        )
        .await;
        let limit = Arc::new(Semaphore::new(if iterate.parallelism == 0 {
            Semaphore::MAX_PERMITS
        } else {
            iterate.parallelism
        }));
        let iterations: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let mut scope = inputs.clone();
                scope.parameters.insert(iterate.item_input.clone(), item);
                let limit = Arc::clone(&limit);
                let iteration_path = format!("{path}/{i}");
                async move {
                    let _permit = limit.acquire_owned().await;
                    self.body(task, scope, iteration_path).await
                }
            })
            .collect();
        let results = futures::future::join_all(iterations).await;
        let mut collected = Outputs::default();
        for result in &results {
            match result {
                Ended::Succeeded(o) => {
                    for (k, v) in &o.parameters {
                        let entry = collected
                            .parameters
                            .entry(k.clone())
                            .or_insert_with(|| Value::Array(Vec::new()));
                        if let Value::Array(list) = entry {
                            list.push(v.clone());
                        }
                    }
                    for (k, v) in &o.artifacts {
                        collected
                            .artifacts
                            .entry(k.clone())
                            .or_default()
                            .extend(v.iter().cloned());
                    }
                }
                Ended::Skipped => {}
                failed => return failed.clone(),
            }
        }
        Ended::Succeeded(collected)
    }

    /// Takes what a loop over a list known only now adds to the run (the import counted
    /// one iteration) from the run's budget, or says why it cannot run.
    fn charge(&self, task: &Task, items: usize) -> Result<(), String> {
        let extra = task
            .body_size()
            .and_then(|size| size.checked_mul(items.saturating_sub(1)));
        let taken = extra.is_some_and(|extra| {
            self.budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(extra)
                })
                .is_ok()
        });
        if taken {
            Ok(())
        } else {
            Err(format!(
                "a loop over {items} items would take the run beyond {MAX_TASKS} tasks"
            ))
        }
    }

    async fn body(self: &Arc<Self>, task: &Task, inputs: Scope, path: String) -> Ended {
        match &task.body {
            Body::Dag(dag) => {
                let result = self.dag(dag, inputs, path).await;
                match result.error {
                    None => Ended::Succeeded(result.outputs),
                    Some(_) if self.cancel.is_cancelled() => Ended::Cancelled,
                    Some(e) => Ended::Failed(e),
                }
            }
            Body::Exec(exec) => self.exec(task, exec, inputs, &path).await,
        }
    }

    async fn exec(self: &Arc<Self>, task: &Task, exec: &Exec, inputs: Scope, path: &str) -> Ended {
        let prior = self.prior.get(path);
        let mut interrupted = false;
        if let Some(prior) = prior {
            match prior.status {
                Status::Succeeded => {
                    return Ended::Succeeded(prior.outputs.clone().unwrap_or_default());
                }
                Status::Failed => return Ended::Failed(prior.error.clone().unwrap_or_default()),
                Status::Skipped => return Ended::Skipped,
                Status::Running => {
                    interrupted = true;
                    if let Some(handle) = &prior.handle {
                        tracing::info!(run = %self.id, task = %path, %handle, "stopping what is left of an interrupted step");
                        self.engine.executor.stop_stale(handle).await;
                    }
                }
                Status::Pending | Status::Cancelled => {}
            }
        }
        if self.cancel.is_cancelled() {
            self.finish(path, &task.name, &Ended::Cancelled).await;
            return Ended::Cancelled;
        }
        let outcome = match self
            .prepare_and_run(task, exec, inputs, path, prior, interrupted)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => Ended::Failed(e),
        };
        self.finish(path, &task.name, &outcome).await;
        outcome
    }

    async fn prepare_and_run(
        self: &Arc<Self>,
        task: &Task,
        exec: &Exec,
        inputs: Scope,
        path: &str,
        prior: Option<&TaskRecord>,
        interrupted: bool,
    ) -> Result<Ended, String> {
        let config = &self.engine.config;
        let step_dir = config.work_root.join(&self.id).join(path);
        let inputs_dir = step_dir.join("inputs");
        let outputs_dir = step_dir.join("outputs");
        // Nexus removes and writes below these folders: a link left there by an earlier
        // step or attempt would point those writes and removals anywhere.
        for folder in [&inputs_dir, &outputs_dir] {
            stepdir::check(&config.work_root, folder).map_err(|e| e.to_string())?;
        }
        // Local copies of the input artifacts, and the path each one is given as.
        let mut local: BTreeMap<String, Vec<(Artifact, String)>> = BTreeMap::new();
        for (name, list) in &inputs.artifacts {
            let mut copies = Vec::new();
            for (i, artifact) in list.iter().enumerate() {
                let target = if list.len() == 1 {
                    inputs_dir.join(name)
                } else {
                    inputs_dir.join(name).join(i.to_string())
                };
                let _ = tokio::fs::remove_dir_all(&target).await;
                // A metadata-only artifact has no content: the step gets its path, empty.
                if !artifact.metadata_only {
                    self.engine
                        .artifacts
                        .download(&artifact.key, artifact.dir, &target)
                        .await
                        .map_err(|e| format!("input artifact '{name}': {e}"))?;
                }
                copies.push((artifact.clone(), target.display().to_string()));
            }
            local.insert(name.clone(), copies);
        }

        let cache_key = task.cache.then(|| cache_key(self.flavor, exec, &inputs));
        if let Some(key) = &cache_key
            && let Ok(Some(outputs)) = self.engine.store.cached(key).await
        {
            tracing::info!(run = %self.id, task = %path, "cache hit; step not re-run");
            self.record(
                path,
                &task.name,
                TaskUpdate {
                    cached: Some(true),
                    started: true,
                    ..Default::default()
                },
            )
            .await;
            return Ok(Ended::Succeeded(outputs));
        }

        let log = self.engine.log_path(&self.id, path);
        if let Some(parent) = log.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let done = prior.map(|p| p.attempts.max(0) as u32).unwrap_or(0);
        let allowed = task.retry.max + 1 + u32::from(interrupted);
        let mut attempt = done;
        loop {
            attempt += 1;
            // Nothing a failed attempt wrote may pass for this attempt's outputs.
            stepdir::check(&config.work_root, &outputs_dir).map_err(|e| e.to_string())?;
            let _ = tokio::fs::remove_dir_all(&outputs_dir).await;
            let _ = tokio::fs::remove_file(step_dir.join(kfp::EXECUTOR_OUTPUT)).await;
            tokio::fs::create_dir_all(&outputs_dir)
                .await
                .map_err(|e| format!("creating {}: {e}", outputs_dir.display()))?;
            let (mut argv, env, kfp_input) =
                self.render(task, exec, &inputs, &local, path, &step_dir);
            // The packages a lightweight component installs first are installed already when
            // an earlier step with the same prelude succeeded: run only the program.
            let mut install = None;
            if let Some((prelude, program)) = kfp::split_install(&argv) {
                if self.engine.installed.lock().contains(prelude) {
                    argv = program.to_vec();
                } else {
                    install = Some(prelude.to_string());
                }
            }
            let mut process_env = config.passed_env.clone();
            process_env.extend(env);
            process_env.insert("NEXUS_RUN_ID".into(), self.id.clone());
            process_env.insert("NEXUS_STEP".into(), path.to_string());
            process_env.insert("NEXUS_STEP_DIR".into(), step_dir.display().to_string());
            process_env.insert("NEXUS_URL".into(), config.server_url.clone());
            if let Some(traceparent) = nexus_telemetry::current_traceparent() {
                process_env.insert("TRACEPARENT".into(), traceparent);
            }
            process_env
                .entry("MLFLOW_TRACKING_URI".into())
                .or_insert_with(|| config.server_url.clone());
            if let Ok(bin) = std::env::current_exe() {
                process_env.insert("NEXUS_BIN".into(), bin.display().to_string());
            }
            let launch = Launch {
                run_id: self.id.clone(),
                path: path.to_string(),
                attempt,
                image: exec.image.clone(),
                argv,
                env: process_env,
                workdir: exec
                    .workdir
                    .as_ref()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| step_dir.clone()),
                step_dir: step_dir.clone(),
                log: log.clone(),
                timeout: task.timeout_ms.map(Duration::from_millis),
                resources: exec.resources.clone(),
            };
            let permit = tokio::select! {
                permit = Arc::clone(&self.engine.slots).acquire_owned() => permit.map_err(|e| e.to_string())?,
                () = self.cancel.cancelled() => return Ok(Ended::Cancelled),
            };
            self.record(
                path,
                &task.name,
                TaskUpdate {
                    status: Some(Status::Running),
                    attempts: Some(i64::from(attempt)),
                    started: true,
                    ..Default::default()
                },
            )
            .await;
            let (handle_tx, handle_rx) = tokio::sync::oneshot::channel::<String>();
            let recorder = {
                let run = Arc::clone(self);
                let path = path.to_string();
                let name = task.name.clone();
                tokio::spawn(async move {
                    if let Ok(handle) = handle_rx.await {
                        run.record(
                            &path,
                            &name,
                            TaskUpdate {
                                handle: Some(&handle),
                                ..Default::default()
                            },
                        )
                        .await;
                    }
                })
            };
            let exit = self
                .engine
                .executor
                .run(
                    launch,
                    Box::new(move |h| drop(handle_tx.send(h))),
                    self.cancel.child_token(),
                )
                .await;
            drop(permit);
            let _ = recorder.await;
            let failure = match exit {
                Exit::Succeeded => match self
                    .collect(exec, kfp_input.as_ref(), &step_dir, path)
                    .await
                {
                    Ok(outputs) => {
                        if let Some(prelude) = install {
                            self.engine.installed.lock().insert(prelude);
                        }
                        if let Some(key) = &cache_key
                            && let Err(e) = self
                                .engine
                                .store
                                .remember(key, &outputs, &self.id, path)
                                .await
                        {
                            tracing::warn!(run = %self.id, task = %path, error = %e, "cannot cache step outputs");
                        }
                        return Ok(Ended::Succeeded(outputs));
                    }
                    Err(e) => e,
                },
                Exit::Cancelled => return Ok(Ended::Cancelled),
                Exit::Failed(e) => e,
                Exit::TimedOut(t) => format!("timed out after {}", humantime::format_duration(t)),
            };
            if attempt >= allowed || self.cancel.is_cancelled() {
                return Ok(Ended::Failed(format!("attempt {attempt}: {failure}")));
            }
            let delay = task.retry.delay(attempt + 1);
            tracing::info!(run = %self.id, task = %path, attempt, %failure, ?delay, "step failed; retrying");
            self.record(
                path,
                &task.name,
                TaskUpdate {
                    error: Some(&format!("attempt {attempt}: {failure}; retrying")),
                    ..Default::default()
                },
            )
            .await;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => return Ok(Ended::Cancelled),
            }
        }
    }

    /// The argv and env of one attempt, plus the KFP executor input when there is one.
    fn render(
        &self,
        task: &Task,
        exec: &Exec,
        inputs: &Scope,
        local: &BTreeMap<String, Vec<(Artifact, String)>>,
        path: &str,
        step_dir: &std::path::Path,
    ) -> (Vec<String>, BTreeMap<String, String>, Option<Value>) {
        match self.flavor {
            Flavor::Nexus => {
                let substitute = |text: &str| -> String {
                    spec::PLACEHOLDER
                        .replace_all(text, |caps: &regex::Captures<'_>| {
                            let key = &caps[1];
                            if let Some(v) = inputs.parameters.get(key) {
                                value_text(v)
                            } else if let Some(copies) = local.get(key) {
                                copies.first().map(|(_, p)| p.clone()).unwrap_or_default()
                            } else if let Some(out) = key.strip_prefix("outputs.") {
                                step_dir.join("outputs").join(out).display().to_string()
                            } else if key == "run.id" {
                                self.id.clone()
                            } else if key == "run.name" {
                                self.name.clone()
                            } else {
                                caps[0].to_string()
                            }
                        })
                        .into_owned()
                };
                let argv = exec.argv.iter().map(|a| substitute(a)).collect();
                let env = exec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), substitute(v)))
                    .collect();
                (argv, env, None)
            }
            Flavor::Kfp => {
                let artifacts: BTreeMap<String, Vec<kfp::LocalArtifact<'_>>> = local
                    .iter()
                    .map(|(name, copies)| {
                        let list = copies
                            .iter()
                            .map(|(artifact, path)| kfp::LocalArtifact {
                                artifact,
                                path: path.clone(),
                            })
                            .collect();
                        (name.clone(), list)
                    })
                    .collect();
                let root = self
                    .engine
                    .config
                    .work_root
                    .join(&self.id)
                    .display()
                    .to_string();
                let ctx = kfp::Context {
                    run_name: &self.name,
                    run_id: &self.id,
                    task_name: &task.name,
                    task_id: path,
                    step_dir,
                    pipeline_root: &root,
                    python: self.engine.config.python.as_deref(),
                };
                let input = kfp::executor_input(exec, &inputs.parameters, &artifacts, &ctx);
                let argv = kfp::render_argv(exec, &input, &ctx);
                (argv, exec.env.clone(), Some(input))
            }
        }
    }

    /// Reads a finished step's outputs and stores its artifacts.
    async fn collect(
        &self,
        exec: &Exec,
        kfp_input: Option<&Value>,
        step_dir: &std::path::Path,
        path: &str,
    ) -> Result<Outputs, String> {
        let mut outputs = Outputs::default();
        let produced = match kfp_input {
            Some(input) => {
                let (parameters, produced) = kfp::collect(exec, input, step_dir)?;
                outputs.parameters = parameters;
                produced
            }
            None => {
                let mut produced = Vec::new();
                for (name, decl) in &exec.outputs {
                    let file = step_dir.join("outputs").join(name);
                    if !stepdir::exists(&file) {
                        return Err(format!(
                            "output {} '{name}' was not written to {}",
                            if decl.artifact {
                                "artifact"
                            } else {
                                "parameter"
                            },
                            file.display()
                        ));
                    }
                    if decl.artifact {
                        produced.push(kfp::Produced {
                            name: name.clone(),
                            uri: file.display().to_string(),
                            path: Some(file),
                            schema_title: None,
                            schema_version: None,
                            metadata: Default::default(),
                        });
                    } else {
                        let mut text =
                            stepdir::read_text(step_dir, &file, kfp::MAX_PARAMETER_BYTES)
                                .map_err(|e| format!("output '{name}': {e}"))?
                                .unwrap_or_default();
                        if text.ends_with('\n') {
                            text.pop();
                        }
                        outputs.parameters.insert(name.clone(), Value::String(text));
                    }
                }
                produced
            }
        };
        for (i, item) in produced.into_iter().enumerate() {
            let artifact = match &item.path {
                Some(local) => {
                    // The upload refuses links itself; this covers the folders above it.
                    stepdir::check(step_dir, local)
                        .map_err(|e| format!("output artifact '{}': {e}", item.name))?;
                    let key = format!("pipelines/{}/{path}/{}-{i}", self.id, item.name);
                    let stored = self
                        .engine
                        .artifacts
                        .upload(local, &key)
                        .await
                        .map_err(|e| format!("storing artifact '{}': {e}", item.name))?;
                    Artifact {
                        name: item.name,
                        uri: stored.uri,
                        key: stored.key,
                        dir: stored.dir,
                        digest: stored.digest,
                        schema_title: item.schema_title,
                        schema_version: item.schema_version,
                        metadata: item.metadata,
                        metadata_only: false,
                    }
                }
                None => Artifact {
                    name: item.name,
                    uri: item.uri,
                    key: String::new(),
                    dir: false,
                    // The metadata is the content: a consumer's cache key must see it change.
                    digest: hex::encode(Sha256::digest(
                        Value::Object(item.metadata.clone()).to_string().as_bytes(),
                    )),
                    schema_title: item.schema_title,
                    schema_version: item.schema_version,
                    metadata: item.metadata,
                    metadata_only: true,
                },
            };
            outputs
                .artifacts
                .entry(artifact.name.clone())
                .or_default()
                .push(artifact);
        }
        Ok(outputs)
    }
}

/// Picks a DAG output from its tasks' outputs; absent when the producing branch was
/// skipped.
fn pick(
    selector: &Selector,
    ended: &HashMap<String, Ended>,
    name: &str,
    outputs: &mut Outputs,
) -> bool {
    match selector {
        Selector::Parameter { task, key } => {
            if let Some(Ended::Succeeded(o)) = ended.get(task)
                && let Some(v) = o.parameters.get(key)
            {
                outputs.parameters.insert(name.to_string(), v.clone());
                return true;
            }
            false
        }
        Selector::Artifact { task, key } => {
            if let Some(Ended::Succeeded(o)) = ended.get(task)
                && let Some(v) = o.artifacts.get(key)
            {
                outputs.artifacts.insert(name.to_string(), v.clone());
                return true;
            }
            false
        }
        Selector::OneOf(all) => all.iter().any(|s| pick(s, ended, name, outputs)),
    }
}

/// A step's identity for the cache: what it runs and what it is given (artifacts by
/// content digest, so a re-produced identical artifact still hits).
fn cache_key(flavor: Flavor, exec: &Exec, inputs: &Scope) -> String {
    let artifacts: BTreeMap<&String, Vec<&str>> = inputs
        .artifacts
        .iter()
        .map(|(k, list)| (k, list.iter().map(|a| a.digest.as_str()).collect()))
        .collect();
    let identity = json!({
        "flavor": flavor.as_str(),
        "image": exec.image,
        "argv": exec.argv,
        "env": exec.env,
        "workdir": exec.workdir,
        "outputs": exec.outputs.keys().collect::<Vec<_>>(),
        "parameters": inputs.parameters,
        "artifacts": artifacts,
    });
    hex::encode(Sha256::digest(identity.to_string().as_bytes()))
}

/// Evaluates a KFP trigger condition (CEL) over the task's parameter values.
fn evaluate(condition: &str, parameters: &BTreeMap<String, Value>) -> Result<bool, String> {
    let program = cel_interpreter::Program::compile(condition)
        .map_err(|e| format!("condition '{condition}' does not parse: {e}"))?;
    let mut context = cel_interpreter::Context::default();
    context
        .add_variable("inputs", json!({ "parameter_values": parameters }))
        .map_err(|e| format!("condition '{condition}': {e}"))?;
    match program.execute(&context) {
        Ok(cel_interpreter::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "condition '{condition}' gave {other:?}, not a boolean"
        )),
        Err(e) => Err(format!("condition '{condition}' failed: {e}")),
    }
}
