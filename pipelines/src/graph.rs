//! The one shape every pipeline is compiled to before it runs: nested DAGs of tasks whose
//! inputs name a parent input, a sibling's output, a constant or a sibling's final status.
//! Nexus YAML specs and KFP IR both compile to it, so the engine, the durable state and
//! the executors know nothing of either source format. It is stored with the run, so a
//! resumed run executes exactly what was submitted.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::SpecError;
use crate::executor::Resources;

/// Where a pipeline came from; decides how its steps are rendered and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Nexus,
    Kfp,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Nexus => "nexus",
            Flavor::Kfp => "kfp",
        }
    }
}

/// A compiled pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    pub flavor: Flavor,
    /// Declared run parameters, with their defaults.
    pub parameters: BTreeMap<String, Parameter>,
    pub root: Dag,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Parameter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// KFP's parameter type (`NUMBER_INTEGER`, `STRING`, …), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Optional without a default: the run simply lacks it.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dag {
    pub tasks: Vec<Task>,
    /// What the DAG returns: outputs of its tasks, renamed.
    #[serde(default)]
    pub outputs: BTreeMap<String, Selector>,
}

/// Which task output becomes a DAG output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    Parameter {
        task: String,
        key: String,
    },
    Artifact {
        task: String,
        key: String,
    },
    /// The first of several (conditional branches) that produced a value (`dsl.OneOf`).
    OneOf(Vec<Selector>),
}

/// A value a task takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    Constant(Value),
    /// An input of the enclosing DAG (a run parameter at the root), optionally with a
    /// field picked out of a structured value (`parseJson(string_value)["a"]`).
    Parent {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
    },
    /// An output of a sibling task.
    Output {
        task: String,
        key: String,
    },
    /// How a sibling ended (KFP's `PipelineTaskFinalStatus`).
    FinalStatus {
        task: String,
    },
}

impl Input {
    fn producer(&self) -> Option<&str> {
        match self {
            Input::Output { task, .. } | Input::FinalStatus { task } => Some(task),
            Input::Constant(_) | Input::Parent { .. } => None,
        }
    }
}

/// Runs a task's body once per item (`dsl.ParallelFor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loop {
    pub items: Items,
    /// The body's input that receives the item.
    pub item_input: String,
    /// How many iterations may run at once (0: no limit).
    #[serde(default)]
    pub parallelism: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Items {
    Constant(Vec<Value>),
    /// One of the task's own parameters, which must hold a list (or its JSON text).
    Input(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retry {
    /// Attempts after the first.
    pub max: u32,
    pub backoff_ms: u64,
    pub factor: f64,
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max: 0,
            backoff_ms: 1000,
            factor: 2.0,
            max_backoff_ms: 3_600_000,
        }
    }
}

impl Retry {
    /// The pause before attempt `attempt` (1-based; the first retry is attempt 2).
    pub fn delay(&self, attempt: u32) -> std::time::Duration {
        let exponent = attempt.saturating_sub(2) as i32;
        let ms =
            (self.backoff_ms as f64 * self.factor.powi(exponent)).min(self.max_backoff_ms as f64);
        std::time::Duration::from_millis(ms.max(0.0) as u64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    /// Siblings that must end first (explicit ordering plus every producer referenced).
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, Input>,
    #[serde(default)]
    pub artifacts: BTreeMap<String, Input>,
    /// A CEL condition over `inputs.parameter_values[...]`; false skips the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Runs even when what it depends on failed (exit handlers).
    #[serde(default)]
    pub always: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterate: Option<Loop>,
    pub body: Body,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub cache: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Exec(Box<Exec>),
    Dag(Dag),
}

/// One process to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Command then args, with placeholders still in them.
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute once compiled); default: the step's own folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    /// Declared outputs.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputDecl>,
    /// KFP input declarations: parameter types and defaults, artifact types.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputDecl>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutputDecl {
    pub artifact: bool,
    /// KFP parameter type, or artifact schema title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputDecl {
    pub artifact: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default)]
    pub optional: bool,
}

impl Dag {
    /// Checks that names are unique, every reference names a sibling, and the tasks form
    /// no cycle; `scope` names where an error happened (`root`, `for-loop-2`).
    pub fn validate(&self, scope: &str) -> Result<(), SpecError> {
        let mut names = BTreeSet::new();
        for task in &self.tasks {
            if !names.insert(task.name.as_str()) {
                return Err(SpecError::at(
                    &task.name,
                    "name",
                    format!("duplicate task name in {scope}"),
                ));
            }
        }
        for task in &self.tasks {
            for dep in &task.after {
                if !names.contains(dep.as_str()) {
                    return Err(SpecError::at(
                        &task.name,
                        "after",
                        format!("unknown task '{dep}'"),
                    ));
                }
            }
            for (field, inputs) in [
                ("parameters", &task.parameters),
                ("artifacts", &task.artifacts),
            ] {
                for (name, input) in inputs {
                    if let Some(producer) = input.producer()
                        && !names.contains(producer)
                    {
                        return Err(SpecError::at(
                            &task.name,
                            &format!("{field}.{name}"),
                            format!("references unknown task '{producer}'"),
                        ));
                    }
                }
            }
            if let Body::Dag(inner) = &task.body {
                inner.validate(&task.name)?;
            }
        }
        for (name, selector) in &self.outputs {
            for task in selector.tasks() {
                if !names.contains(task) {
                    return Err(SpecError::new(format!(
                        "output '{name}' of {scope} references unknown task '{task}'"
                    )));
                }
            }
        }
        if let Some(cycle) = self.cycle() {
            return Err(SpecError::at(
                &cycle[0],
                "after",
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
        Ok(())
    }

    /// A dependency cycle, if any, as the names along it (first repeated at the end).
    fn cycle(&self) -> Option<Vec<String>> {
        let index: BTreeMap<&str, &Task> =
            self.tasks.iter().map(|t| (t.name.as_str(), t)).collect();
        // 0 unvisited, 1 on the stack, 2 done.
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        fn visit<'a>(
            name: &'a str,
            index: &BTreeMap<&'a str, &'a Task>,
            state: &mut BTreeMap<&'a str, u8>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match state.get(name) {
                Some(2) => return None,
                Some(1) => {
                    let start = stack.iter().position(|n| *n == name).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(name.to_string());
                    return Some(cycle);
                }
                _ => {}
            }
            state.insert(name, 1);
            stack.push(name);
            if let Some(task) = index.get(name) {
                for dep in &task.after {
                    if let Some(found) = visit(dep, index, state, stack) {
                        return Some(found);
                    }
                }
            }
            stack.pop();
            state.insert(name, 2);
            None
        }
        for task in &self.tasks {
            let mut stack = Vec::new();
            if let Some(found) = visit(&task.name, &index, &mut state, &mut stack) {
                return Some(found);
            }
        }
        None
    }
}

impl Selector {
    fn tasks(&self) -> Vec<&str> {
        match self {
            Selector::Parameter { task, .. } | Selector::Artifact { task, .. } => vec![task],
            Selector::OneOf(all) => all.iter().flat_map(|s| s.tasks()).collect(),
        }
    }
}

impl Task {
    /// Adds every producer referenced by an input to `after`, once.
    pub fn link_producers(&mut self) {
        let producers: Vec<String> = self
            .parameters
            .values()
            .chain(self.artifacts.values())
            .filter_map(|i| i.producer().map(str::to_string))
            .collect();
        for p in producers {
            if !self.after.contains(&p) {
                self.after.push(p);
            }
        }
    }
}

impl Pipeline {
    /// The run's parameters: defaults overlaid with what was given; unknown or missing
    /// required parameters are errors. KFP integer parameters come back as integers.
    pub fn bind(
        &self,
        given: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>, SpecError> {
        for name in given.keys() {
            if !self.parameters.contains_key(name) {
                let known: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
                return Err(SpecError::at_field(
                    &format!("parameters.{name}"),
                    format!(
                        "unknown parameter '{name}' (declared: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        let mut bound = BTreeMap::new();
        for (name, decl) in &self.parameters {
            let value = match given.get(name).or(decl.default.as_ref()) {
                Some(v) => coerce(v.clone(), decl.kind.as_deref())
                    .map_err(|e| SpecError::at_field(&format!("parameters.{name}"), e))?,
                None if decl.optional => continue,
                None => {
                    return Err(SpecError::at_field(
                        &format!("parameters.{name}"),
                        format!("parameter '{name}' is required and has no default"),
                    ));
                }
            };
            bound.insert(name.clone(), value);
        }
        Ok(bound)
    }
}

/// Converts a value to a KFP parameter type: integers stay integers even when they come
/// as `3.0` (protobuf numbers have no integer kind), and strings given on a command line
/// (`--param n=3`) become the declared type.
pub fn coerce(value: Value, kind: Option<&str>) -> Result<Value, String> {
    let parse =
        |s: &str| serde_json::from_str::<Value>(s).map_err(|e| format!("'{s}' is not valid: {e}"));
    Ok(match (kind, value) {
        (Some("NUMBER_INTEGER"), Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => Value::from(f as i64),
                _ => return Err(format!("{n} is not an integer")),
            },
        },
        (Some("NUMBER_INTEGER"), Value::String(s)) => {
            coerce(parse(s.trim())?, Some("NUMBER_INTEGER"))?
        }
        (Some("NUMBER_DOUBLE"), Value::String(s)) => match parse(s.trim())? {
            v @ Value::Number(_) => v,
            _ => return Err(format!("'{s}' is not a number")),
        },
        (Some("BOOLEAN"), Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("'{s}' is not a boolean")),
        },
        (Some("LIST" | "STRUCT"), Value::String(s)) => parse(&s)?,
        (Some("STRING"), Value::Number(n)) => Value::String(n.to_string()),
        (Some("STRING"), Value::Bool(b)) => Value::String(b.to_string()),
        (_, v) => v,
    })
}
