//! Kubeflow Pipelines v2 IR (the YAML `kfp.compiler` writes): imported into the graph,
//! and run the way `kfp.local.SubprocessRunner(use_venv=False)` runs it, without
//! containers: the container's command runs as a local process with KFP's placeholders
//! resolved and an `ExecutorInput` in the same JSON shape, and outputs are read back from
//! the executor output file and the output parameter files.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value, json};

use crate::error::SpecError;
use crate::executor::Resources;
use crate::graph::{
    Body, Dag, Exec, Flavor, Input, InputDecl, Items, Loop, MAX_DEPTH, MAX_TASKS, OutputDecl,
    Parameter, Pipeline, Retry, Selector, Task, coerce,
};
use crate::stepdir;

/// Whether a document is KFP IR.
pub fn is_kfp(doc: &Value) -> bool {
    doc.get("pipelineInfo").is_some() && doc.get("root").is_some()
}

fn obj<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

fn string<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Parses protobuf's JSON durations ("3.5s").
fn duration_ms(v: Option<&Value>) -> Option<u64> {
    let s = v?.as_str()?;
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Walks the IR from the root DAG, inlining each sub-DAG component where a task uses it.
/// The recursion is bounded by [`MAX_DEPTH`], checked before each step down, and the tasks
/// made so far by [`MAX_TASKS`], so a component that uses itself, or a small file whose
/// components fan out, is an error instead of a stack overflow or a million-task plan.
struct Importer<'a> {
    doc: &'a Value,
    /// The sub-DAG components being inlined, outermost first.
    stack: RefCell<Vec<String>>,
    /// Tasks made so far, each counted once per iteration of the constant loops around it.
    expanded: Cell<usize>,
}

/// Imports a compiled KFP pipeline.
pub fn import(doc: &Value) -> Result<Pipeline, SpecError> {
    let name = doc
        .pointer("/pipelineInfo/name")
        .and_then(Value::as_str)
        .ok_or_else(|| SpecError::at_field("pipelineInfo.name", "missing"))?
        .to_string();
    let root = doc
        .get("root")
        .ok_or_else(|| SpecError::at_field("root", "missing"))?;
    if root.pointer("/inputDefinitions/artifacts").is_some() {
        return Err(SpecError::at_field(
            "root.inputDefinitions.artifacts",
            "pipelines taking input artifacts are not supported; pass a URI as a parameter",
        ));
    }
    let mut parameters = BTreeMap::new();
    if let Some(params) = root
        .pointer("/inputDefinitions/parameters")
        .and_then(Value::as_object)
    {
        for (pname, decl) in params {
            let kind = string(decl, "parameterType").map(str::to_string);
            let default = decl
                .get("defaultValue")
                .cloned()
                .map(|v| coerce(v, kind.as_deref()))
                .transpose()
                .map_err(|e| {
                    SpecError::at_field(&format!("root.inputDefinitions.parameters.{pname}"), e)
                })?;
            parameters.insert(
                pname.clone(),
                Parameter {
                    default,
                    kind,
                    optional: decl
                        .get("isOptional")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                },
            );
        }
    }
    let importer = Importer {
        doc,
        stack: RefCell::new(Vec::new()),
        expanded: Cell::new(0),
    };
    let dag = importer.dag(root, "root", 1)?;
    dag.validate("root")?;
    Ok(Pipeline {
        name,
        flavor: Flavor::Kfp,
        parameters,
        root: dag,
    })
}

impl Importer<'_> {
    fn component(&self, name: &str, task: &str) -> Result<&Value, SpecError> {
        self.doc
            .pointer(&format!(
                "/components/{}",
                name.replace('~', "~0").replace('/', "~1")
            ))
            .ok_or_else(|| {
                SpecError::at(
                    task,
                    "componentRef.name",
                    format!("unknown component '{name}'"),
                )
            })
    }

    /// Imports a DAG whose tasks each run `times` times (the product of the constant loops
    /// around it).
    fn dag(&self, component: &Value, scope: &str, times: usize) -> Result<Dag, SpecError> {
        let dag = component
            .get("dag")
            .ok_or_else(|| SpecError::new(format!("component {scope} has no dag")))?;
        let mut tasks = Vec::new();
        if let Some(specs) = obj(dag, "tasks") {
            for (name, spec) in specs {
                tasks.push(self.task(name, spec, times)?);
            }
        }
        let mut outputs = BTreeMap::new();
        if let Some(params) = dag
            .pointer("/outputs/parameters")
            .and_then(Value::as_object)
        {
            for (out, sel) in params {
                let pick = |s: &Value| -> Option<Selector> {
                    Some(Selector::Parameter {
                        task: string(s, "producerSubtask")?.to_string(),
                        key: string(s, "outputParameterKey")?.to_string(),
                    })
                };
                let selector = if let Some(s) = sel.get("valueFromParameter") {
                    pick(s)
                } else {
                    sel.pointer("/valueFromOneof/parameterSelectors")
                        .and_then(Value::as_array)
                        .map(|all| Selector::OneOf(all.iter().filter_map(pick).collect()))
                };
                let selector = selector.ok_or_else(|| {
                    SpecError::at_field(
                        &format!("{scope}.dag.outputs.parameters.{out}"),
                        "unsupported selector",
                    )
                })?;
                outputs.insert(out.clone(), selector);
            }
        }
        if let Some(arts) = dag.pointer("/outputs/artifacts").and_then(Value::as_object) {
            for (out, sel) in arts {
                let all: Vec<Selector> = sel
                    .get("artifactSelectors")
                    .and_then(Value::as_array)
                    .map(|v| {
                        v.iter()
                            .filter_map(|s| {
                                Some(Selector::Artifact {
                                    task: string(s, "producerSubtask")?.to_string(),
                                    key: string(s, "outputArtifactKey")?.to_string(),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let selector = match all.len() {
                    0 => {
                        return Err(SpecError::at_field(
                            &format!("{scope}.dag.outputs.artifacts.{out}"),
                            "no artifact selector",
                        ));
                    }
                    1 => all.into_iter().next().expect("one selector"),
                    _ => Selector::OneOf(all),
                };
                outputs.insert(out.clone(), selector);
            }
        }
        Ok(Dag { tasks, outputs })
    }

    /// Imports a task that runs `times` times, inlining its component's DAG if it has one.
    fn task(&self, name: &str, spec: &Value, times: usize) -> Result<Task, SpecError> {
        let component_name = spec
            .pointer("/componentRef/name")
            .and_then(Value::as_str)
            .ok_or_else(|| SpecError::at(name, "componentRef.name", "missing"))?;
        let component = self.component(component_name, name)?;
        let iterate = self.iterate(name, spec)?;
        // A loop over no items still has its body imported, so it counts as one iteration.
        let times = match &iterate {
            Some(Loop {
                items: Items::Constant(items),
                ..
            }) => times.saturating_mul(items.len().max(1)),
            _ => times,
        };
        let expanded = self.expanded.get().saturating_add(times);
        if expanded > MAX_TASKS {
            return Err(SpecError::at(
                name,
                "componentRef.name",
                format!(
                    "the pipeline expands to more than {MAX_TASKS} tasks (counting each task of each sub-DAG once per loop iteration)"
                ),
            ));
        }
        self.expanded.set(expanded);
        let body = if component.get("dag").is_some() {
            Body::Dag(self.inline(component_name, component, name, times)?)
        } else {
            Body::Exec(Box::new(self.exec(component, name)?))
        };
        let mut parameters = BTreeMap::new();
        if let Some(inputs) = spec
            .pointer("/inputs/parameters")
            .and_then(Value::as_object)
        {
            for (input, source) in inputs {
                let field = format!("inputs.parameters.{input}");
                let value = if let Some(parent) = string(source, "componentInputParameter") {
                    Input::Parent {
                        name: parent.to_string(),
                        selector: string(source, "parameterExpressionSelector").map(str::to_string),
                    }
                } else if let Some(out) = source.get("taskOutputParameter") {
                    Input::Output {
                        task: string(out, "producerTask")
                            .ok_or_else(|| SpecError::at(name, &field, "missing producerTask"))?
                            .to_string(),
                        key: string(out, "outputParameterKey")
                            .ok_or_else(|| {
                                SpecError::at(name, &field, "missing outputParameterKey")
                            })?
                            .to_string(),
                    }
                } else if let Some(constant) = source.pointer("/runtimeValue/constant") {
                    Input::Constant(constant.clone())
                } else if let Some(status) = source.get("taskFinalStatus") {
                    Input::FinalStatus {
                        task: string(status, "producerTask")
                            .ok_or_else(|| SpecError::at(name, &field, "missing producerTask"))?
                            .to_string(),
                    }
                } else {
                    return Err(SpecError::at(name, &field, "unsupported input source"));
                };
                parameters.insert(input.clone(), value);
            }
        }
        let mut artifacts = BTreeMap::new();
        if let Some(inputs) = spec.pointer("/inputs/artifacts").and_then(Value::as_object) {
            for (input, source) in inputs {
                let field = format!("inputs.artifacts.{input}");
                let value = if let Some(out) = source.get("taskOutputArtifact") {
                    Input::Output {
                        task: string(out, "producerTask")
                            .ok_or_else(|| SpecError::at(name, &field, "missing producerTask"))?
                            .to_string(),
                        key: string(out, "outputArtifactKey")
                            .ok_or_else(|| {
                                SpecError::at(name, &field, "missing outputArtifactKey")
                            })?
                            .to_string(),
                    }
                } else if let Some(parent) = string(source, "componentInputArtifact") {
                    Input::Parent {
                        name: parent.to_string(),
                        selector: None,
                    }
                } else {
                    return Err(SpecError::at(name, &field, "unsupported artifact source"));
                };
                artifacts.insert(input.clone(), value);
            }
        }
        let retry = match spec.get("retryPolicy") {
            None => Retry::default(),
            Some(r) => Retry {
                max: r.get("maxRetryCount").and_then(Value::as_u64).unwrap_or(0) as u32,
                backoff_ms: duration_ms(r.get("backoffDuration")).unwrap_or(0),
                factor: r
                    .get("backoffFactor")
                    .and_then(Value::as_f64)
                    .unwrap_or(2.0),
                max_backoff_ms: duration_ms(r.get("backoffMaxDuration")).unwrap_or(3_600_000),
            },
        };
        let mut task = Task {
            name: name.to_string(),
            after: spec
                .get("dependentTasks")
                .and_then(Value::as_array)
                .map(|d| {
                    d.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            parameters,
            artifacts,
            condition: spec
                .pointer("/triggerPolicy/condition")
                .and_then(Value::as_str)
                .filter(|c| !c.trim().is_empty())
                .map(str::to_string),
            always: spec
                .pointer("/triggerPolicy/strategy")
                .and_then(Value::as_str)
                == Some("ALL_UPSTREAM_TASKS_COMPLETED"),
            iterate,
            body,
            retry,
            timeout_ms: None,
            cache: spec
                .pointer("/cachingOptions/enableCache")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        task.link_producers();
        Ok(task)
    }

    /// A task's `dsl.ParallelFor`, if it has one.
    fn iterate(&self, name: &str, spec: &Value) -> Result<Option<Loop>, SpecError> {
        if spec.get("artifactIterator").is_some() {
            return Err(SpecError::at(
                name,
                "artifactIterator",
                "ParallelFor over a list of artifacts is not supported; loop over parameters",
            ));
        }
        Ok(match spec.get("parameterIterator") {
            None => None,
            Some(it) => {
                let items = if let Some(raw) = it.pointer("/items/raw").and_then(Value::as_str) {
                    let parsed: Value = serde_json::from_str(raw).map_err(|e| {
                        SpecError::at(
                            name,
                            "parameterIterator.items.raw",
                            format!("not a JSON list: {e}"),
                        )
                    })?;
                    match parsed {
                        Value::Array(items) => Items::Constant(items),
                        _ => {
                            return Err(SpecError::at(
                                name,
                                "parameterIterator.items.raw",
                                "not a list",
                            ));
                        }
                    }
                } else if let Some(input) =
                    it.pointer("/items/inputParameter").and_then(Value::as_str)
                {
                    Items::Input(input.to_string())
                } else {
                    return Err(SpecError::at(
                        name,
                        "parameterIterator.items",
                        "needs raw or inputParameter",
                    ));
                };
                Some(Loop {
                    items,
                    item_input: string(it, "itemInput")
                        .ok_or_else(|| {
                            SpecError::at(name, "parameterIterator.itemInput", "missing")
                        })?
                        .to_string(),
                    parallelism: spec
                        .pointer("/iteratorPolicy/parallelismLimit")
                        .and_then(Value::as_u64)
                        .unwrap_or(0) as usize,
                })
            }
        })
    }

    /// Imports the DAG of component `component_name`, used by task `task`, refusing a
    /// component that is already being inlined (a cycle) and nesting beyond [`MAX_DEPTH`].
    fn inline(
        &self,
        component_name: &str,
        component: &Value,
        task: &str,
        times: usize,
    ) -> Result<Dag, SpecError> {
        {
            let stack = self.stack.borrow();
            if let Some(start) = stack.iter().position(|c| c == component_name) {
                let mut cycle = stack[start..].to_vec();
                cycle.push(component_name.to_string());
                return Err(SpecError::at(
                    task,
                    "componentRef.name",
                    format!("component cycle: {}", cycle.join(" -> ")),
                ));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(SpecError::at(
                    task,
                    "componentRef.name",
                    format!(
                        "sub-DAGs nest more than {MAX_DEPTH} deep ({} -> {component_name})",
                        stack.join(" -> ")
                    ),
                ));
            }
        }
        self.stack.borrow_mut().push(component_name.to_string());
        let dag = self.dag(component, task, times);
        self.stack.borrow_mut().pop();
        dag
    }

    fn exec(&self, component: &Value, task: &str) -> Result<Exec, SpecError> {
        let label = string(component, "executorLabel").ok_or_else(|| {
            SpecError::at(
                task,
                "executorLabel",
                "component has neither dag nor executor",
            )
        })?;
        let executor = self
            .doc
            .pointer(&format!("/deploymentSpec/executors/{label}"))
            .ok_or_else(|| {
                SpecError::at(task, "executorLabel", format!("unknown executor '{label}'"))
            })?;
        let Some(container) = executor.get("container") else {
            return Err(SpecError::at(
                task,
                "executorLabel",
                format!(
                    "executor '{label}' is not a container (importers and custom jobs are not supported)"
                ),
            ));
        };
        let strings = |key: &str| -> Vec<String> {
            container
                .get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut argv = strings("command");
        argv.extend(strings("args"));
        if argv.is_empty() {
            return Err(SpecError::at(
                task,
                "container.command",
                "empty command (image entrypoints cannot run locally)",
            ));
        }
        let env = container
            .get("env")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .filter_map(|v| {
                        Some((
                            string(v, "name")?.to_string(),
                            string(v, "value").unwrap_or("").to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let resources = container
            .get("resources")
            .map(resources)
            .unwrap_or_default();
        let mut inputs = BTreeMap::new();
        if let Some(params) = component
            .pointer("/inputDefinitions/parameters")
            .and_then(Value::as_object)
        {
            for (name, decl) in params {
                inputs.insert(
                    name.clone(),
                    InputDecl {
                        artifact: false,
                        kind: string(decl, "parameterType").map(str::to_string),
                        default: decl.get("defaultValue").cloned(),
                        optional: decl
                            .get("isOptional")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    },
                );
            }
        }
        if let Some(arts) = component
            .pointer("/inputDefinitions/artifacts")
            .and_then(Value::as_object)
        {
            for (name, decl) in arts {
                inputs.insert(
                    name.clone(),
                    InputDecl {
                        artifact: true,
                        kind: decl
                            .pointer("/artifactType/schemaTitle")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        default: None,
                        optional: decl
                            .get("isOptional")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    },
                );
            }
        }
        let mut outputs = BTreeMap::new();
        if let Some(params) = component
            .pointer("/outputDefinitions/parameters")
            .and_then(Value::as_object)
        {
            for (name, decl) in params {
                outputs.insert(
                    name.clone(),
                    OutputDecl {
                        artifact: false,
                        kind: string(decl, "parameterType").map(str::to_string),
                        schema_version: None,
                    },
                );
            }
        }
        if let Some(arts) = component
            .pointer("/outputDefinitions/artifacts")
            .and_then(Value::as_object)
        {
            for (name, decl) in arts {
                outputs.insert(
                    name.clone(),
                    OutputDecl {
                        artifact: true,
                        kind: decl
                            .pointer("/artifactType/schemaTitle")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        schema_version: decl
                            .pointer("/artifactType/schemaVersion")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    },
                );
            }
        }
        Ok(Exec {
            image: string(container, "image").map(str::to_string),
            argv,
            env,
            workdir: None,
            resources,
            outputs,
            inputs,
        })
    }
}

fn resources(r: &Value) -> Resources {
    let cpu = string(r, "resourceCpuLimit")
        .map(str::to_string)
        .or_else(|| {
            r.get("cpuLimit")
                .and_then(Value::as_f64)
                .map(|c| c.to_string())
        });
    let memory = string(r, "resourceMemoryLimit")
        .map(str::to_string)
        .or_else(|| {
            r.get("memoryLimit")
                .and_then(Value::as_f64)
                .map(|m| format!("{}G", m))
        });
    let gpu = r
        .pointer("/accelerator/resourceCount")
        .and_then(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_u64())
        })
        .or_else(|| r.pointer("/accelerator/count").and_then(Value::as_u64))
        .map(|c| c as u32);
    Resources { cpu, memory, gpu }
}

/// An input artifact as the component sees it: its local copy.
pub struct LocalArtifact<'a> {
    pub artifact: &'a crate::store::Artifact,
    pub path: String,
}

/// What a KFP step needs to know about where it runs.
pub struct Context<'a> {
    pub run_name: &'a str,
    pub run_id: &'a str,
    pub task_name: &'a str,
    pub task_id: &'a str,
    pub step_dir: &'a Path,
    pub pipeline_root: &'a str,
    /// Replaces `python3` in the launcher commands, as kfp.local does with its interpreter.
    pub python: Option<&'a str>,
}

/// Where a KFP step writes its `ExecutorOutput`, in its folder.
pub const EXECUTOR_OUTPUT: &str = "executor_output.json";

/// The `ExecutorInput` message (JSON) for a task.
pub fn executor_input(
    exec: &Exec,
    parameters: &BTreeMap<String, Value>,
    artifacts: &BTreeMap<String, Vec<LocalArtifact<'_>>>,
    ctx: &Context<'_>,
) -> Value {
    let outputs_dir = ctx.step_dir.join("outputs");
    let mut values = Map::new();
    for (name, decl) in exec.inputs.iter().filter(|(_, d)| !d.artifact) {
        if let Some(v) = parameters.get(name).or(decl.default.as_ref()) {
            values.insert(
                name.clone(),
                coerce(v.clone(), decl.kind.as_deref()).unwrap_or_else(|_| v.clone()),
            );
        }
    }
    for (name, v) in parameters {
        values.entry(name.clone()).or_insert_with(|| v.clone());
    }
    let input_artifacts: Map<String, Value> = artifacts
        .iter()
        .map(|(name, list)| {
            let items: Vec<Value> = list
                .iter()
                .map(|a| {
                    runtime_artifact(
                        &a.artifact.name,
                        a.artifact.schema_title.as_deref(),
                        a.artifact.schema_version.as_deref(),
                        &a.path,
                        &a.artifact.metadata,
                    )
                })
                .collect();
            (name.clone(), json!({"artifacts": items}))
        })
        .collect();
    let mut out_params = Map::new();
    let mut out_artifacts = Map::new();
    for (name, decl) in &exec.outputs {
        let file = outputs_dir.join(name).display().to_string();
        if decl.artifact {
            out_artifacts.insert(
                name.clone(),
                json!({"artifacts": [runtime_artifact(
                    name,
                    decl.kind.as_deref(),
                    decl.schema_version.as_deref(),
                    &file,
                    &Map::new(),
                )]}),
            );
        } else {
            out_params.insert(name.clone(), json!({"outputFile": file}));
        }
    }
    let mut inputs = Map::new();
    inputs.insert("parameterValues".into(), Value::Object(values));
    if !input_artifacts.is_empty() {
        inputs.insert("artifacts".into(), Value::Object(input_artifacts));
    }
    let mut input = json!({
        "inputs": inputs,
        "outputs": {
            "parameters": out_params,
            "artifacts": out_artifacts,
            "outputFile": ctx.step_dir.join(EXECUTOR_OUTPUT).display().to_string(),
        }
    });
    resolve_self_references(&mut input, ctx);
    input
}

/// A `RuntimeArtifact` message (JSON), typed `system.Artifact` 0.0.1 unless told otherwise.
fn runtime_artifact(
    name: &str,
    schema_title: Option<&str>,
    schema_version: Option<&str>,
    uri: &str,
    metadata: &Map<String, Value>,
) -> Value {
    json!({
        "name": name,
        "type": {
            "schemaTitle": schema_title.unwrap_or("system.Artifact"),
            "schemaVersion": schema_version.unwrap_or("0.0.1"),
        },
        "uri": uri,
        "metadata": metadata,
    })
}

/// Parameter values that are themselves placeholders (f-strings over upstream outputs).
fn resolve_self_references(input: &mut Value, ctx: &Context<'_>) {
    let snapshot = input.clone();
    if let Some(values) = input
        .pointer_mut("/inputs/parameterValues")
        .and_then(Value::as_object_mut)
    {
        for v in values.values_mut() {
            if let Value::String(s) = v
                && s.contains("{{$")
            {
                *s = resolve_element(s, &snapshot, ctx);
            }
        }
    }
}

static IO_PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\$\.(.*?)\}\}").expect("io placeholder pattern"));
static PATH_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[^.\[\]']+").expect("path part pattern"));

/// Resolves `{{$...}}` placeholders in one command element.
fn resolve_element(element: &str, input: &Value, ctx: &Context<'_>) -> String {
    let output_file = input
        .pointer("/outputs/outputFile")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut s = element.to_string();
    let fixed = [
        ("{{$.outputs.output_file}}", output_file.clone()),
        ("{{$.outputMetadataUri}}", output_file),
        ("{{$}}", input.to_string()),
        ("{{$.pipeline_job_name}}", ctx.run_name.to_string()),
        ("{{$.pipeline_job_resource_name}}", ctx.run_name.to_string()),
        ("{{$.pipeline_job_uuid}}", ctx.run_id.to_string()),
        ("{{$.pipeline_task_name}}", ctx.task_name.to_string()),
        ("{{$.pipeline_task_uuid}}", ctx.task_id.to_string()),
        ("{{$.pipeline_root}}", ctx.pipeline_root.to_string()),
    ];
    for (placeholder, value) in fixed {
        if s.contains(placeholder) {
            s = s.replace(placeholder, &value);
        }
    }
    IO_PLACEHOLDER
        .replace_all(&s, |caps: &regex::Captures<'_>| {
            let parts: Vec<String> = PATH_PART
                .find_iter(&caps[1])
                .map(|m| m.as_str().to_string())
                .collect();
            match lookup(input, parts) {
                Some(Value::String(v)) => v,
                Some(other) => other.to_string(),
                None => "null".to_string(),
            }
        })
        .into_owned()
}

/// Follows a placeholder path (`inputs.parameters['x']`, `outputs.artifacts['m'].path`)
/// into the executor input.
fn lookup(input: &Value, mut parts: Vec<String>) -> Option<Value> {
    if parts.len() >= 2 && parts[0] == "inputs" && parts[1] == "parameters" {
        parts[1] = "parameterValues".into();
    }
    if parts.len() >= 4
        && parts[0] == "outputs"
        && parts[1] == "parameters"
        && parts[3] == "output_file"
    {
        parts[3] = "outputFile".into();
    }
    if parts.len() >= 3 && parts[1] == "artifacts" {
        parts.insert(3, "artifacts".into());
        parts.insert(4, "0".into());
        if parts.get(5).map(String::as_str) == Some("path") {
            parts[5] = "uri".into();
        }
    }
    let mut current = input;
    for p in &parts {
        current = match current {
            Value::Object(m) => m.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current.clone())
}

/// Resolves `{"Concat": …}` and `{"IfPresent": …}` elements.
fn resolve_struct(element: &str, provided: &dyn Fn(&str) -> bool) -> Option<Vec<String>> {
    if !(element.starts_with("{\"Concat\": ") || element.starts_with("{\"IfPresent\": ")) {
        return Some(vec![element.to_string()]);
    }
    let Ok(parsed) = serde_json::from_str::<Value>(element) else {
        return Some(vec![element.to_string()]);
    };
    fn one(v: &Value, provided: &dyn Fn(&str) -> bool) -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items.iter().flat_map(|i| one(i, provided)).collect(),
            Value::Object(m) => {
                if let Some(Value::Array(parts)) = m.get("Concat") {
                    vec![
                        parts
                            .iter()
                            .flat_map(|p| one(p, provided))
                            .collect::<String>(),
                    ]
                } else if let Some(cond) = m.get("IfPresent") {
                    let name = cond
                        .get("InputName")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let branch = if provided(name) {
                        cond.get("Then")
                    } else {
                        cond.get("Else")
                    };
                    branch.map(|b| one(b, provided)).unwrap_or_default()
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
    Some(one(&parsed, provided))
}

/// The command line of a KFP step.
pub fn render_argv(exec: &Exec, input: &Value, ctx: &Context<'_>) -> Vec<String> {
    let provided = |name: &str| {
        input
            .pointer(&format!("/inputs/parameterValues/{name}"))
            .is_some_and(|v| !v.is_null())
            || input
                .pointer(&format!("/inputs/artifacts/{name}"))
                .is_some()
    };
    let mut argv: Vec<String> = exec
        .argv
        .iter()
        .flat_map(|e| resolve_struct(e, &provided).unwrap_or_default())
        .map(|e| resolve_element(&e, input, ctx))
        .collect();
    if let Some(python) = ctx.python {
        // As kfp.local: swap the interpreter everywhere but in the user's own code.
        let mut user_code = None;
        for (i, element) in argv.iter_mut().enumerate() {
            if user_code.is_none()
                && element.contains("\"$program_path/ephemeral_component.py\"")
                && element.contains("\"$@\"")
            {
                user_code = Some(i + 1);
            }
            if Some(i) != user_code {
                *element = element.replace("python3", python);
            }
        }
    }
    argv
}

/// Splits a lightweight component's launcher, `sh -c "<pip install …> && \"$0\" \"$@\"" PROGRAM…`,
/// into its install prelude and the program it then runs. kfp.local (and a cluster) run the
/// prelude before every step; its effect is the same each time, so once it has succeeded
/// in this interpreter the engine runs only the program.
pub fn split_install(argv: &[String]) -> Option<(&str, &[String])> {
    match argv {
        [sh, c, prelude, program @ ..]
            if sh == "sh"
                && c == "-c"
                && !program.is_empty()
                && prelude.contains(" -m pip install ")
                && prelude.trim_end().ends_with("&& \"$0\" \"$@\"") =>
        {
            Some((prelude.as_str(), program))
        }
        _ => None,
    }
}

/// Largest executor output file Nexus reads (its JSON names outputs; values are small).
pub const MAX_EXECUTOR_OUTPUT_BYTES: u64 = 16 << 20;

/// Largest output parameter file Nexus reads: parameters are stored with the run, so a
/// large value belongs in an artifact.
pub const MAX_PARAMETER_BYTES: u64 = 4 << 20;

/// An output artifact a step left behind.
pub struct Produced {
    pub name: String,
    /// Where the step was told (or chose) to write it.
    pub uri: String,
    /// The file or folder to store; `None` for an artifact that is only metadata (an
    /// `Output[Metrics]` filled by `log_metric`, which writes no file).
    pub path: Option<std::path::PathBuf>,
    pub schema_title: Option<String>,
    pub schema_version: Option<String>,
    pub metadata: Map<String, Value>,
}

/// Reads a finished step's outputs: the executor output file, then the output parameter
/// files (which win, as in KFP), then artifacts at their declared paths. Every artifact the
/// executor output names is kept with its metadata, whether or not a file was written (as
/// kfp.local does); one only declared is kept when its file exists. Nothing outside
/// `step_dir` is read, and no link is followed.
pub fn collect(
    exec: &Exec,
    input: &Value,
    step_dir: &Path,
) -> Result<(BTreeMap<String, Value>, Vec<Produced>), String> {
    let read = |path: &str, max: u64| {
        stepdir::read_text(step_dir, Path::new(path), max).map_err(|e| e.to_string())
    };
    let executor_output: Value =
        match input.pointer("/outputs/outputFile").and_then(Value::as_str) {
            Some(path) => match read(path, MAX_EXECUTOR_OUTPUT_BYTES)? {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| format!("{path} is not valid JSON: {e}"))?,
                None => Value::Null,
            },
            None => Value::Null,
        };
    let mut parameters = BTreeMap::new();
    if let Some(values) = executor_output
        .get("parameterValues")
        .and_then(Value::as_object)
    {
        for (k, v) in values {
            parameters.insert(k.clone(), v.clone());
        }
    }
    for (name, decl) in exec.outputs.iter().filter(|(_, d)| !d.artifact) {
        let Some(file) = input
            .pointer(&format!("/outputs/parameters/{name}/outputFile"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(text) =
            read(file, MAX_PARAMETER_BYTES).map_err(|e| format!("output '{name}': {e}"))?
        else {
            continue;
        };
        let value = match decl.kind.as_deref() {
            Some("STRING") | None => Value::String(text),
            Some("BOOLEAN") => serde_json::from_str(&text.trim().to_ascii_lowercase())
                .map_err(|e| format!("could not deserialize output '{name}' from {file}: {e}"))?,
            Some(_) => serde_json::from_str(&text)
                .map_err(|e| format!("could not deserialize output '{name}' from {file}: {e}"))?,
        };
        parameters.insert(name.clone(), value);
    }
    for (name, decl) in exec.outputs.iter().filter(|(_, d)| !d.artifact) {
        if let Some(v) = parameters.remove(name) {
            parameters.insert(
                name.clone(),
                coerce(v.clone(), decl.kind.as_deref()).unwrap_or(v),
            );
        }
    }
    let mut produced = Vec::new();
    for (name, decl) in exec.outputs.iter().filter(|(_, d)| d.artifact) {
        let named = executor_output
            .pointer(&format!("/artifacts/{name}/artifacts"))
            .and_then(Value::as_array);
        let written = named
            .or_else(|| {
                input
                    .pointer(&format!("/outputs/artifacts/{name}/artifacts"))
                    .and_then(Value::as_array)
            })
            .cloned()
            .unwrap_or_default();
        for artifact in written {
            let Some(uri) = artifact.get("uri").and_then(Value::as_str) else {
                continue;
            };
            let path = std::path::PathBuf::from(uri);
            let path = if uri.contains("://") && named.is_some() {
                // A remote URI the component set itself: recorded, never read.
                None
            } else if stepdir::check(step_dir, &path)
                .map_err(|e| format!("output artifact '{name}': {e}"))
                .map(|()| stepdir::exists(&path))?
            {
                Some(path)
            } else if named.is_some() {
                // Named by the executor output without a file: metadata only (metrics).
                None
            } else {
                // Declared but never written: the artifact is simply absent, as in kfp.local.
                continue;
            };
            produced.push(Produced {
                name: name.clone(),
                uri: uri.to_string(),
                path,
                schema_title: decl.kind.clone(),
                schema_version: decl.schema_version.clone(),
                metadata: artifact
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
    }
    Ok((parameters, produced))
}

/// The value a `PipelineTaskFinalStatus` input receives.
pub fn final_status(state: &str, run_name: &str, task: &str, error: Option<&str>) -> Value {
    let error = match error {
        Some(message) => json!({"code": 1, "message": message}),
        None => json!({}),
    };
    json!({
        "state": state,
        "pipeline_job_resource_name": run_name,
        "pipeline_task_name": task,
        "error": error,
    })
}

/// Applies `parseJson(string_value)["field"]` (and `["field"]`) selectors used by loops
/// over structured items.
pub fn select(value: Value, selector: &str) -> Value {
    static FIELD: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"\["([^"]*)"\]"#).expect("field pattern"));
    let mut current = match value {
        Value::String(s) if selector.starts_with("parseJson(") => {
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        v => v,
    };
    for caps in FIELD.captures_iter(selector) {
        current = match current {
            Value::Object(mut m) => m.remove(&caps[1]).unwrap_or(Value::Null),
            Value::String(s) => serde_json::from_str::<Value>(&s)
                .ok()
                .and_then(|mut v| v.get_mut(&caps[1]).map(Value::take))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        };
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_kfp_local() {
        let exec = Exec {
            image: None,
            argv: vec![
                "echo".into(),
                "{{$.inputs.parameters['msg']}}".into(),
                "{{$.outputs.parameters['out'].output_file}}".into(),
                r#"{"IfPresent": {"InputName": "opt", "Then": ["--opt", "{{$.inputs.parameters['opt']}}"]}}"#.into(),
                r#"{"Concat": ["n=", "{{$.inputs.parameters['n']}}"]}"#.into(),
            ],
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources::default(),
            outputs: BTreeMap::from([("out".into(), OutputDecl { artifact: false, kind: Some("STRING".into()), schema_version: None })]),
            inputs: BTreeMap::from([
                ("msg".into(), InputDecl { kind: Some("STRING".into()), ..Default::default() }),
                ("n".into(), InputDecl { kind: Some("NUMBER_INTEGER".into()), ..Default::default() }),
                ("opt".into(), InputDecl { kind: Some("STRING".into()), optional: true, ..Default::default() }),
            ]),
        };
        let ctx = Context {
            run_name: "p",
            run_id: "r",
            task_name: "t",
            task_id: "1",
            step_dir: Path::new("/w/t"),
            pipeline_root: "/w",
            python: None,
        };
        let params = BTreeMap::from([
            ("msg".to_string(), json!("hi")),
            ("n".to_string(), json!(3.0)),
        ]);
        let input = executor_input(&exec, &params, &BTreeMap::new(), &ctx);
        let argv = render_argv(&exec, &input, &ctx);
        assert_eq!(argv, vec!["echo", "hi", "/w/t/outputs/out", "n=3"]);
    }

    #[test]
    fn install_prelude_is_split_from_the_program() {
        let prelude = "\nif ! [ -x \"$(command -v pip)\" ]; then\n    python3 -m ensurepip\nfi\n\nPIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet 'kfp==2.17.3' '--no-deps' && \"$0\" \"$@\"\n";
        let argv: Vec<String> = [
            "sh",
            "-c",
            prelude,
            "sh",
            "-ec",
            "program",
            "code",
            "--executor_input",
            "{}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (found, program) = split_install(&argv).expect("a KFP launcher");
        assert_eq!(found, prelude);
        assert_eq!(program, &argv[3..]);
        assert!(split_install(&argv[3..]).is_none());
        assert!(split_install(&["sh".into(), "-c".into(), "echo hi".into()]).is_none());
    }

    /// A KFP IR document: `root` tasks and `components`, with one container executor.
    fn ir(root_tasks: Value, components: Value) -> Value {
        let mut components = components;
        components["comp-leaf"] = json!({"executorLabel": "exec-leaf"});
        json!({
            "pipelineInfo": {"name": "p"},
            "root": {"dag": {"tasks": root_tasks}},
            "components": components,
            "deploymentSpec": {"executors": {"exec-leaf": {"container": {"image": "x", "command": ["true"]}}}},
        })
    }

    fn uses(component: &str) -> Value {
        json!({"componentRef": {"name": component}})
    }

    fn import_err(doc: &Value) -> SpecError {
        import(doc).expect_err("import should fail")
    }

    #[test]
    fn components_that_use_themselves_are_refused() {
        let direct = ir(
            json!({"a": uses("comp-a")}),
            json!({"comp-a": {"dag": {"tasks": {"again": uses("comp-a")}}}}),
        );
        let e = import_err(&direct);
        assert!(
            e.message.contains("component cycle: comp-a -> comp-a"),
            "{e}"
        );
        let indirect = ir(
            json!({"a": uses("comp-a")}),
            json!({
                "comp-a": {"dag": {"tasks": {"b": uses("comp-b")}}},
                "comp-b": {"dag": {"tasks": {"c": uses("comp-c")}}},
                "comp-c": {"dag": {"tasks": {"a": uses("comp-a"), "leaf": uses("comp-leaf")}}},
            }),
        );
        let e = import_err(&indirect);
        assert!(
            e.message
                .contains("component cycle: comp-a -> comp-b -> comp-c -> comp-a"),
            "{e}"
        );
        // The same component used twice side by side is not a cycle.
        let twice = ir(
            json!({"a": uses("comp-a"), "b": uses("comp-a")}),
            json!({"comp-a": {"dag": {"tasks": {"leaf": uses("comp-leaf")}}}}),
        );
        import(&twice).expect("no cycle");
    }

    #[test]
    fn expansion_is_bounded() {
        // Ten tasks per level, six levels: a million tasks from a few hundred bytes.
        let mut components = json!({});
        for level in 0..6 {
            let child = if level == 5 {
                "comp-leaf".to_string()
            } else {
                format!("comp-l{}", level + 1)
            };
            let tasks: Map<String, Value> =
                (0..10).map(|i| (format!("t{i}"), uses(&child))).collect();
            components[format!("comp-l{level}")] = json!({"dag": {"tasks": tasks}});
        }
        let e = import_err(&ir(json!({"top": uses("comp-l0")}), components));
        assert!(e.message.contains("more than 10000 tasks"), "{e}");

        let items: Vec<u32> = (0..20_000).collect();
        let mut looped = uses("comp-leaf");
        looped["parameterIterator"] = json!({
            "items": {"raw": serde_json::to_string(&items).expect("json")},
            "itemInput": "x",
        });
        let e = import_err(&ir(json!({"loop": looped}), json!({})));
        assert!(e.message.contains("more than 10000 tasks"), "{e}");

        let mut small = uses("comp-leaf");
        small["parameterIterator"] = json!({"items": {"raw": "[1, 2, 3]"}, "itemInput": "x"});
        let p = import(&ir(json!({"loop": small}), json!({}))).expect("small loop");
        assert_eq!(p.root.expanded_size(), Some(3));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut components = json!({});
        for level in 0..40 {
            components[format!("comp-l{level}")] =
                json!({"dag": {"tasks": {"next": uses(&format!("comp-l{}", level + 1))}}});
        }
        components["comp-l40"] = json!({"dag": {"tasks": {"leaf": uses("comp-leaf")}}});
        let e = import_err(&ir(json!({"top": uses("comp-l0")}), components));
        assert!(e.message.contains("nest more than 16 deep"), "{e}");
    }

    #[test]
    fn names_that_are_not_folder_names_are_refused() {
        for name in ["..", ".", "", "a/b", "/abs", "nul\0byte"] {
            let e = import_err(&ir(json!({name: uses("comp-leaf")}), json!({})));
            assert_eq!(e.field.as_deref(), Some("name"), "{name:?}: {e}");
            assert!(e.message.contains("cannot be a folder name"), "{e}");
        }
        for name in ["..", "../../etc/x", "/tmp/x"] {
            let mut doc = ir(json!({"t": uses("comp-leaf")}), json!({}));
            doc["components"]["comp-leaf"]["outputDefinitions"] =
                json!({"artifacts": {name: {"artifactType": {"schemaTitle": "system.Artifact"}}}});
            let e = import_err(&doc);
            assert_eq!(e.field.as_deref(), Some("outputs"), "{name:?}: {e}");
        }
    }

    #[test]
    fn selectors_pick_fields() {
        assert_eq!(
            select(json!({"a": 1, "b": 2}), r#"parseJson(string_value)["a"]"#),
            json!(1)
        );
        assert_eq!(
            select(json!("{\"a\": \"x\"}"), r#"parseJson(string_value)["a"]"#),
            json!("x")
        );
    }
}
