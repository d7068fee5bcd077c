//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the same body the
//! libFuzzer binary runs, plus a few generated inputs far larger and deeper than the fuzzer
//! tries, so the ordinary debug test run catches a regression on any of them.
//!
//! Each input runs on its own thread with tokio's default worker stack (2 MiB), the stack
//! the server parses requests on: a parser whose recursion grows with its input overflows it
//! and aborts this test binary, naming the input in the thread's name. An input that takes
//! longer than a minute fails too (the server would spend that per request).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use nexus_fuzz_harness::{BoundedAlloc, TARGETS, Target};

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

/// tokio's default worker thread stack size.
const SERVER_STACK_BYTES: usize = 2 << 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target named {name}"))
}

/// The longest one input may take in this (debug) build. Linear work on the largest input
/// here takes about a second; a parser that is quadratic in nesting takes hours.
const INPUT_TIME_LIMIT: Duration = Duration::from_secs(60);

/// Runs `input` through `target` on a server-sized stack; why it failed if it panicked or
/// outran [`INPUT_TIME_LIMIT`] (its thread is then left to end with this test binary).
fn run_one(target: &Target, label: String, input: Vec<u8>) -> Result<(), String> {
    let run = target.run;
    let (done, finished) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(label)
        .stack_size(SERVER_STACK_BYTES)
        .spawn(move || {
            run(&input);
            let _ = done.send(());
        })
        .expect("spawn a replay thread");
    match finished.recv_timeout(INPUT_TIME_LIMIT) {
        Ok(()) => Ok(()),
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "still running after {} s",
            INPUT_TIME_LIMIT.as_secs()
        )),
        Err(RecvTimeoutError::Disconnected) => Err(thread.join().err().map_or_else(
            || "ended without finishing".to_string(),
            |panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-string panic".to_string())
            },
        )),
    }
}

/// Replays the committed corpus of `name` and the generated `extra` inputs; fails naming
/// every input that panicked.
fn replay(name: &str, extra: Vec<(&str, Vec<u8>)>) {
    let target = target(name);
    let dir = fuzz_dir().join("corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("read corpus folder").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    let mut inputs: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|path| {
            let input = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (format!("corpus/{name}/{}", file_name(path)), input)
        })
        .collect();
    inputs.extend(
        extra
            .into_iter()
            .map(|(label, input)| (format!("generated/{name}/{label}"), input)),
    );
    let failures: Vec<String> = inputs
        .into_iter()
        .filter_map(|(label, input)| {
            run_one(target, label.clone(), input)
                .err()
                .map(|panic| format!("{label}: {panic}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `open` repeated `depth` times, then `middle`, then `close` repeated `depth` times.
fn nested(open: &str, middle: &str, close: &str, depth: usize) -> Vec<u8> {
    [open.repeat(depth), middle.to_string(), close.repeat(depth)]
        .concat()
        .into_bytes()
}

/// Nesting far beyond any parser's sensible depth limit, yet well under the request limits.
const DEEP: usize = 100_000;

/// A V2 request whose one input's `data` is `data`.
fn v2_request(data: &[u8]) -> Vec<u8> {
    [
        &br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":"#[..],
        data,
        b"}]}",
    ]
    .concat()
}

#[test]
fn v2_json() {
    replay(
        "v2_json",
        vec![
            ("deep-data", v2_request(&nested("[", "1", "]", DEEP))),
            (
                "deep-parameters",
                nested(r#"{"parameters":{"a":"#, "1", "}}", DEEP),
            ),
        ],
    );
}

#[test]
fn v2_binary() {
    let header = v2_request(&nested("[", "1", "]", DEEP));
    let length = u16::MAX.to_le_bytes();
    replay(
        "v2_binary",
        vec![("deep-header", [&length[..], &header].concat())],
    );
}

#[test]
fn grpc_model_infer() {
    replay("grpc_model_infer", Vec::new());
}

#[test]
fn config_pbtxt() {
    replay(
        "config_pbtxt",
        vec![
            ("deep-messages", nested("optimization { ", "", "}", DEEP)),
            ("deep-lists", nested("input [", "", "]", DEEP)),
        ],
    );
}

#[test]
fn mlflow_filter() {
    let clause = "attributes.status = 'x'";
    let conjunction = vec![clause; 20_000].join(" AND ");
    replay(
        "mlflow_filter",
        vec![
            ("20000-clauses", conjunction.into_bytes()),
            ("deep-parentheses", nested("(", clause, ")", DEEP)),
            ("deep-not", nested("NOT ", clause, "", DEEP)),
        ],
    );
}

#[test]
fn pipeline_spec() {
    replay("pipeline_spec", vec![("deep-block", deep_yaml_block())]);
}

#[test]
fn kfp_ir() {
    replay("kfp_ir", Vec::new());
}

/// YAML flow collections (`[`, `{`) nested 100000 deep, in a Nexus spec and in KFP IR
/// written as JSON: the YAML scanner spends time proportional to the depth on every token,
/// so these took hours until pipelines measured the nesting before parsing.
#[test]
fn yaml_flow_nesting_is_refused_quickly() {
    replay(
        "pipeline_spec",
        vec![(
            "deep-flow",
            [&b"name: p\nsteps: "[..], &nested("[", "", "]", DEEP)].concat(),
        )],
    );
    replay(
        "kfp_ir",
        vec![(
            "deep-json",
            nested(r#"{"pipelineInfo":{"name":"p"},"root":"#, "{}", "}", DEEP),
        )],
    );
}

/// A YAML document whose block mappings nest `DEEP` levels under `steps`.
fn deep_yaml_block() -> Vec<u8> {
    let mut text = String::from("name: p\nsteps:\n");
    for level in 0..DEEP / 100 {
        text.push_str(&" ".repeat(level + 1));
        text.push_str("a:\n");
    }
    text.into_bytes()
}

/// The targets, their corpus folders and their libFuzzer binaries name the same set, so a
/// target cannot be fuzzed without being replayed or the reverse.
#[test]
fn every_target_has_a_corpus_and_a_binary() {
    let names = |dir: &str, suffix: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(fuzz_dir().join(dir))
            .unwrap_or_else(|e| panic!("fuzz/{dir}: {e}"))
            .map(|entry| file_name(&entry.expect("read fuzz folder").path()))
            .filter_map(|name| name.strip_suffix(suffix).map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let mut targets: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    targets.sort();
    assert_eq!(names("corpus", ""), targets);
    assert_eq!(names("fuzz_targets", ".rs"), targets);
}
