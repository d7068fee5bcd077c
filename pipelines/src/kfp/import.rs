//! KFP IR into the pipeline graph: components, DAGs, loops, conditions and retries, with
//! the graph's bounds on size and nesting.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::SpecError;
use crate::executor::Resources;
use crate::graph::{
    Body, Dag, Exec, Flavor, Input, InputDecl, Items, Loop, MAX_DEPTH, MAX_TASKS, OutputDecl,
    Parameter, Pipeline, Retry, Selector, Task, coerce,
};

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
}
