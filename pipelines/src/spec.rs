//! Nexus's own pipeline spec (YAML): parameters, steps with command/args/env, outputs that
//! later steps reference by `{{steps.NAME.outputs.OUT}}`. References give the DAG; every
//! one is checked at submit, so a typo fails before anything runs, naming step and field.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::error::SpecError;
use crate::executor::Resources;
use crate::graph::{
    Body, Dag, Exec, Flavor, Input, MAX_TASKS, OutputDecl, Parameter, Pipeline, Retry, Task,
};

/// `{{ ... }}` placeholders.
pub static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\s*([^{}]*?)\s*\}\}").expect("placeholder pattern"));

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: String,
    #[serde(default, rename = "description")]
    _description: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cache: bool,
    #[serde(default)]
    parameters: BTreeMap<String, ParamSpec>,
    steps: Vec<StepSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ParamSpec {
    Full(ParamFull),
    Default(Value),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFull {
    #[serde(default)]
    default: Option<Value>,
    #[serde(default, rename = "description")]
    _description: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Command {
    Shell(String),
    Argv(Vec<serde_yaml_ng::Value>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Duration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OutputsSpec {
    #[serde(default)]
    parameters: Vec<String>,
    #[serde(default)]
    artifacts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    name: String,
    #[serde(default)]
    image: Option<String>,
    command: Command,
    #[serde(default)]
    args: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    env: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    outputs: OutputsSpec,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    backoff: Option<Duration>,
    #[serde(default)]
    timeout: Option<Duration>,
    #[serde(default)]
    cache: Option<bool>,
    #[serde(default)]
    resources: Resources,
}

fn duration_ms(d: &Duration, step: &str, field: &str) -> Result<u64, SpecError> {
    match d {
        Duration::Seconds(s) => Ok(s * 1000),
        Duration::Text(t) => humantime::parse_duration(t)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| SpecError::at(step, field, format!("'{t}' is not a duration: {e}"))),
    }
}

/// A command-line word: YAML gives `5` and `true` as numbers and booleans, which on a
/// command line are just their text.
fn scalar(v: &serde_yaml_ng::Value, step: &str, field: &str) -> Result<String, SpecError> {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::String(s) => Ok(s.clone()),
        Y::Number(n) => Ok(n.to_string()),
        Y::Bool(b) => Ok(b.to_string()),
        _ => Err(SpecError::at(
            step,
            field,
            "expected a string, number or boolean",
        )),
    }
}

fn scalars(
    list: &[serde_yaml_ng::Value],
    step: &str,
    field: &str,
) -> Result<Vec<String>, SpecError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| scalar(v, step, &format!("{field}[{i}]")))
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether a document looks like a Nexus spec (it has `steps`) rather than KFP IR.
pub fn is_nexus(doc: &Value) -> bool {
    doc.get("steps").is_some()
}

/// Compiles a Nexus spec. `base_dir` anchors relative working directories.
pub fn compile(text: &str, base_dir: Option<&Path>) -> Result<Pipeline, SpecError> {
    let spec: SpecFile = crate::yaml::from_str(text)?;
    if !valid_name(&spec.name) {
        return Err(SpecError::at_field(
            "name",
            format!(
                "'{}' is not a valid pipeline name (letters, digits, '-', '_')",
                spec.name
            ),
        ));
    }
    if spec.steps.is_empty() {
        return Err(SpecError::at_field(
            "steps",
            "a pipeline needs at least one step",
        ));
    }
    if spec.steps.len() > MAX_TASKS {
        return Err(SpecError::at_field(
            "steps",
            format!(
                "{} steps; a pipeline may have at most {MAX_TASKS}",
                spec.steps.len()
            ),
        ));
    }
    let parameters: BTreeMap<String, Parameter> = spec
        .parameters
        .into_iter()
        .map(|(name, p)| {
            let default = match p {
                ParamSpec::Full(full) => full.default,
                ParamSpec::Default(v) => Some(v),
            };
            (
                name,
                Parameter {
                    default,
                    kind: None,
                    optional: false,
                },
            )
        })
        .collect();
    let outputs_of: BTreeMap<&str, &OutputsSpec> = spec
        .steps
        .iter()
        .map(|s| (s.name.as_str(), &s.outputs))
        .collect();

    let mut tasks = Vec::with_capacity(spec.steps.len());
    for step in &spec.steps {
        if !valid_name(&step.name) {
            return Err(SpecError::at(
                &step.name,
                "name",
                "not a valid step name (letters, digits, '-', '_')",
            ));
        }
        let mut declared = BTreeMap::new();
        for (names, artifact) in [
            (&step.outputs.parameters, false),
            (&step.outputs.artifacts, true),
        ] {
            for name in names {
                if !valid_name(name) {
                    return Err(SpecError::at(
                        &step.name,
                        "outputs",
                        format!("'{name}' is not a valid output name"),
                    ));
                }
                if declared
                    .insert(
                        name.clone(),
                        OutputDecl {
                            artifact,
                            ..Default::default()
                        },
                    )
                    .is_some()
                {
                    return Err(SpecError::at(
                        &step.name,
                        "outputs",
                        format!("output '{name}' is declared twice"),
                    ));
                }
            }
        }
        let mut argv = match &step.command {
            Command::Shell(script) => vec!["sh".to_string(), "-c".to_string(), script.clone()],
            Command::Argv(argv) if argv.is_empty() => {
                return Err(SpecError::at(&step.name, "command", "command is empty"));
            }
            Command::Argv(argv) => scalars(argv, &step.name, "command")?,
        };
        let args = scalars(&step.args, &step.name, "args")?;
        if matches!(step.command, Command::Shell(_)) && !args.is_empty() {
            // `sh -c script arg0 arg1…`: the args become $0, $1, … as with `sh -c`.
            argv.push(step.name.clone());
        }
        argv.extend(args.iter().cloned());
        let env: BTreeMap<String, String> = step
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), scalar(v, &step.name, &format!("env.{k}"))?)))
            .collect::<Result<_, SpecError>>()?;

        let mut task = Task {
            name: step.name.clone(),
            after: step.after.clone(),
            parameters: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            condition: None,
            always: false,
            iterate: None,
            body: Body::Exec(Box::new(Exec {
                image: step.image.clone(),
                argv: Vec::new(),
                env: env.clone(),
                workdir: None,
                resources: step.resources.clone(),
                outputs: declared,
                inputs: BTreeMap::new(),
            })),
            retry: Retry {
                max: step.retries,
                backoff_ms: match &step.backoff {
                    Some(d) => duration_ms(d, &step.name, "backoff")?,
                    None => 1000,
                },
                ..Retry::default()
            },
            timeout_ms: step
                .timeout
                .as_ref()
                .map(|d| duration_ms(d, &step.name, "timeout"))
                .transpose()?,
            cache: step.cache.unwrap_or(spec.cache),
        };
        let command_len = argv.len() - args.len();
        let fields = argv
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let field = if i < command_len {
                    format!("command[{i}]")
                } else {
                    format!("args[{}]", i - command_len)
                };
                (field, a.as_str())
            })
            .chain(env.iter().map(|(k, v)| (format!("env.{k}"), v.as_str())));
        for (field, text) in fields {
            for reference in PLACEHOLDER.captures_iter(text) {
                let reference = &reference[1];
                resolve_reference(reference, step, &parameters, &outputs_of, &mut task, &field)?;
            }
        }
        if let Some(dir) = &step.workdir {
            let path = Path::new(dir);
            let absolute = if path.is_absolute() {
                path.to_path_buf()
            } else {
                match base_dir {
                    Some(base) => base.join(path),
                    None => {
                        return Err(SpecError::at(
                            &step.name,
                            "workdir",
                            "a relative workdir needs base_dir (submit with the CLI, or give base_dir)",
                        ));
                    }
                }
            };
            if let Body::Exec(exec) = &mut task.body {
                exec.workdir = Some(absolute.display().to_string());
            }
        }
        if let Body::Exec(exec) = &mut task.body {
            exec.argv = argv;
        }
        task.link_producers();
        tasks.push(task);
    }
    let dag = Dag {
        tasks,
        outputs: BTreeMap::new(),
    };
    dag.validate("pipeline")?;
    Ok(Pipeline {
        name: spec.name,
        flavor: Flavor::Nexus,
        parameters,
        root: dag,
    })
}

/// Checks one `{{…}}` reference and records the input it needs, keyed by its own text so
/// rendering is a lookup.
fn resolve_reference(
    reference: &str,
    step: &StepSpec,
    parameters: &BTreeMap<String, Parameter>,
    outputs_of: &BTreeMap<&str, &OutputsSpec>,
    task: &mut Task,
    field: &str,
) -> Result<(), SpecError> {
    let parts: Vec<&str> = reference.split('.').collect();
    let err = |msg: String| SpecError::at(&step.name, field, msg);
    match parts.as_slice() {
        ["params", name] => {
            if !parameters.contains_key(*name) {
                return Err(err(format!(
                    "unknown parameter '{name}' in '{{{{{reference}}}}}'"
                )));
            }
            task.parameters.insert(
                reference.to_string(),
                Input::Parent {
                    name: name.to_string(),
                    selector: None,
                },
            );
        }
        ["steps", producer, "outputs", output] => {
            if *producer == step.name {
                return Err(err(format!(
                    "'{{{{{reference}}}}}' refers to the step itself; use '{{{{outputs.{output}}}}}'"
                )));
            }
            let Some(outputs) = outputs_of.get(producer) else {
                return Err(err(format!(
                    "unknown step '{producer}' in '{{{{{reference}}}}}'"
                )));
            };
            let input = Input::Output {
                task: producer.to_string(),
                key: output.to_string(),
            };
            if outputs.parameters.iter().any(|o| o == output) {
                task.parameters.insert(reference.to_string(), input);
            } else if outputs.artifacts.iter().any(|o| o == output) {
                task.artifacts.insert(reference.to_string(), input);
            } else {
                return Err(err(format!(
                    "step '{producer}' declares no output '{output}' (in '{{{{{reference}}}}}')"
                )));
            }
        }
        ["outputs", output] => {
            if !step
                .outputs
                .parameters
                .iter()
                .chain(&step.outputs.artifacts)
                .any(|o| o == output)
            {
                return Err(err(format!(
                    "'{{{{{reference}}}}}': declare '{output}' under outputs first"
                )));
            }
        }
        ["run", "id" | "name"] => {}
        _ => {
            return Err(err(format!(
                "unknown placeholder '{{{{{reference}}}}}' (use params.NAME, steps.STEP.outputs.NAME, outputs.NAME, run.id or run.name)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> SpecError {
        compile(text, None).expect_err("spec should be rejected")
    }

    #[test]
    fn references_make_edges() {
        let p = compile(
            "name: p\nparameters: {n: 3}\nsteps:\n- name: a\n  command: [echo, '{{params.n}}']\n  outputs: {parameters: [x]}\n- name: b\n  command: [cat, '{{steps.a.outputs.x}}']\n",
            None,
        )
        .unwrap();
        assert_eq!(p.root.tasks[1].after, vec!["a".to_string()]);
    }

    #[test]
    fn errors_name_step_and_field() {
        let e = err("name: p\nsteps:\n- name: a\n  command: [echo, '{{params.nope}}']\n");
        assert_eq!(
            (e.step.as_deref(), e.field.as_deref()),
            (Some("a"), Some("command[1]"))
        );
        let e = err(
            "name: p\nsteps:\n- name: a\n  command: [echo]\n  args: ['{{steps.b.outputs.x}}']\n- name: b\n  command: [echo]\n",
        );
        assert_eq!(
            (e.step.as_deref(), e.field.as_deref()),
            (Some("a"), Some("args[0]"))
        );
        assert!(e.message.contains("declares no output 'x'"), "{e}");
        let e = err(
            "name: p\nsteps:\n- name: a\n  command: [echo]\n  after: [b]\n- name: b\n  command: [echo]\n  after: [a]\n",
        );
        assert!(e.message.contains("dependency cycle"), "{e}");
        let e = err("name: p\nsteps:\n- name: a\n  command: [echo]\n  timeout: soon\n");
        assert_eq!(e.field.as_deref(), Some("timeout"));
        let e = err("name: p\nsteps:\n- name: a\n  command: [echo]\n  retry: 3\n");
        assert!(e.message.contains("unknown field `retry`"), "{e}");
    }

    #[test]
    fn long_dependency_chains_do_not_recurse() {
        let mut text = String::from("name: p\nsteps:\n- name: s0\n  command: [echo]\n");
        for i in 1..10_000 {
            text.push_str(&format!(
                "- name: s{i}\n  command: [echo]\n  after: [s{}]\n",
                i - 1
            ));
        }
        // A small stack: a search that recursed once per step would overflow it.
        let compiled = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || compile(&text, None).map(|p| p.root.tasks.len()))
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert_eq!(compiled, Ok(10_000));
        let mut text = String::from("name: p\nsteps:\n");
        for i in 0..10_001 {
            text.push_str(&format!("- name: s{i}\n  command: [echo]\n"));
        }
        assert!(err(&text).message.contains("at most 10000"));
    }

    #[test]
    fn missing_parameters_are_reported() {
        let p = compile(
            "name: p\nparameters: {n: {}}\nsteps:\n- name: a\n  command: [echo, '{{params.n}}']\n",
            None,
        )
        .unwrap();
        let e = p.bind(&BTreeMap::new()).unwrap_err();
        assert!(e.message.contains("'n' is required"), "{e}");
        let e = p
            .bind(&BTreeMap::from([("m".to_string(), Value::from(1))]))
            .unwrap_err();
        assert!(e.message.contains("unknown parameter 'm'"), "{e}");
    }
}
