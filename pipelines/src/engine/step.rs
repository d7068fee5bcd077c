//! One executable step: its folder, inputs and command line, the executor, and its
//! outputs read back, cached by inputs where the spec allows.

use super::*;

impl Run {
    pub(super) async fn prepare_and_run(
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
