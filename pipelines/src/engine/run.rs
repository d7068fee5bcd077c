//! Walking a run's graph: DAGs, conditions, loops and retries, each task's state written
//! before it is acted on.

use super::*;

impl Run {
    /// Retries a store write while the database is unreachable, so a database outage
    /// delays a run instead of losing its state.
    pub(super) async fn write<'a, F, Fut>(&self, op: F) -> Result<(), PipelineError>
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

    pub(super) async fn record(&self, path: &str, name: &str, update: TaskUpdate<'_>) {
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

    pub(super) fn dag<'a>(
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
