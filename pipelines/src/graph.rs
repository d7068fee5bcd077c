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

/// Tasks one run may expand to, counting every task of every sub-DAG once per loop
/// iteration: a small file must not turn into millions of tasks (and rows, folders, futures).
pub const MAX_TASKS: usize = 10_000;

/// How deeply sub-DAGs may nest (a nested pipeline, a loop body, a condition branch each add
/// one level; compiled KFP pipelines rarely go past five). Also keeps the stored graph within
/// the JSON nesting a run's row can be read back with.
pub const MAX_DEPTH: usize = 16;

/// Longest task, input or output name: it becomes one folder or file name.
const MAX_NAME_BYTES: usize = 255;

/// Whether `name` can be one folder or file name below a step's folder: not empty, not `.`
/// or `..`, no `/` or NUL, at most 255 bytes. Task, input and output names become paths, so
/// anything else could make Nexus create, read or delete files outside a run's folder.
pub fn safe_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

impl Dag {
    /// Checks this DAG and every sub-DAG: names are unique and safe as folder names, every
    /// reference names a sibling, and the tasks form no cycle; `scope` names where an error
    /// happened (`root`, `for-loop-2`). Walks sub-DAGs with an explicit stack, not recursion.
    pub fn validate(&self, scope: &str) -> Result<(), SpecError> {
        let mut pending = vec![(self, scope.to_string())];
        while let Some((dag, scope)) = pending.pop() {
            dag.validate_level(&scope)?;
            for task in &dag.tasks {
                if let Body::Dag(inner) = &task.body {
                    pending.push((inner, task.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// The checks of [`Dag::validate`] for this level only.
    fn validate_level(&self, scope: &str) -> Result<(), SpecError> {
        let mut names = BTreeSet::new();
        for task in &self.tasks {
            if !safe_segment(&task.name) {
                return Err(SpecError::at(
                    &task.name,
                    "name",
                    format!(
                        "task name {:?} in {scope} cannot be a folder name (empty, '.', '..', '/', NUL or over {MAX_NAME_BYTES} bytes)",
                        task.name
                    ),
                ));
            }
            if !names.insert(task.name.as_str()) {
                return Err(SpecError::at(
                    &task.name,
                    "name",
                    format!("duplicate task name in {scope}"),
                ));
            }
        }
        for task in &self.tasks {
            task.check_names()?;
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

    /// A dependency cycle, if any, as the names along it (first repeated at the end). A
    /// depth-first search with an explicit stack, so a chain of thousands of tasks cannot
    /// overflow the thread's stack.
    fn cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            OnPath,
            Done,
        }
        let index: BTreeMap<&str, &Task> =
            self.tasks.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
        for task in &self.tasks {
            if marks.contains_key(task.name.as_str()) {
                continue;
            }
            // The current path: each task with the index of the next dependency to visit.
            let mut path: Vec<(&str, usize)> = vec![(task.name.as_str(), 0)];
            marks.insert(task.name.as_str(), Mark::OnPath);
            while let Some((name, next)) = path.last_mut() {
                let deps = index.get(*name).map(|t| t.after.as_slice()).unwrap_or(&[]);
                let Some(dep) = deps.get(*next) else {
                    marks.insert(name, Mark::Done);
                    path.pop();
                    continue;
                };
                *next += 1;
                match marks.get(dep.as_str()) {
                    Some(Mark::Done) => {}
                    Some(Mark::OnPath) => {
                        let start = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[start..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(dep.clone());
                        return Some(cycle);
                    }
                    None => {
                        marks.insert(dep.as_str(), Mark::OnPath);
                        path.push((dep.as_str(), 0));
                    }
                }
            }
        }
        None
    }

    /// How many tasks this DAG expands to: every task once per iteration of the constant
    /// loops around it (a loop over a runtime list counts one iteration here; the engine
    /// charges the rest when the list is known). `None` beyond [`MAX_TASKS`].
    pub fn expanded_size(&self) -> Option<usize> {
        let mut total = 0usize;
        let mut pending = vec![(self, 1usize)];
        while let Some((dag, times)) = pending.pop() {
            for task in &dag.tasks {
                let times = times.checked_mul(task.iterations())?;
                total = total.checked_add(times)?;
                if total > MAX_TASKS {
                    return None;
                }
                if let Body::Dag(inner) = &task.body {
                    pending.push((inner, times));
                }
            }
        }
        Some(total)
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
    /// Iterations known before the run: a constant loop's item count (at least 1: the body
    /// is there even when the list is empty), else 1.
    pub fn iterations(&self) -> usize {
        match &self.iterate {
            Some(Loop {
                items: Items::Constant(items),
                ..
            }) => items.len().max(1),
            _ => 1,
        }
    }

    /// Tasks one iteration of this task expands to (itself and its sub-DAG's), as
    /// [`Dag::expanded_size`] counts them; `None` beyond [`MAX_TASKS`].
    pub fn body_size(&self) -> Option<usize> {
        match &self.body {
            Body::Exec(_) => Some(1),
            Body::Dag(inner) => inner.expanded_size()?.checked_add(1),
        }
    }

    /// Input and output names become file names in the step's folder (`inputs/NAME`,
    /// `outputs/NAME`), so each must be a safe one.
    fn check_names(&self) -> Result<(), SpecError> {
        let mut names: Vec<(&str, &str)> = self
            .artifacts
            .keys()
            .map(|n| ("artifacts", n.as_str()))
            .collect();
        if let Body::Exec(exec) = &self.body {
            names.extend(exec.outputs.keys().map(|n| ("outputs", n.as_str())));
            names.extend(exec.inputs.keys().map(|n| ("inputs", n.as_str())));
        }
        match names.into_iter().find(|(_, n)| !safe_segment(n)) {
            Some((field, name)) => Err(SpecError::at(
                &self.name,
                field,
                format!(
                    "{name:?} cannot be a file name (empty, '.', '..', '/', NUL or over {MAX_NAME_BYTES} bytes)"
                ),
            )),
            None => Ok(()),
        }
    }

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
