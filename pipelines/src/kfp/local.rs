//! One KFP step run the way `kfp.local` runs it: the `ExecutorInput`, the command line
//! with its placeholders resolved, and the outputs read back from the step's folder.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value, json};

use crate::graph::{Exec, coerce};
use crate::stepdir;

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
    use crate::executor::Resources;
    use crate::graph::{InputDecl, OutputDecl};

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
