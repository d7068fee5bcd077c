//! Kubeflow Pipelines v2 IR (the YAML `kfp.compiler` writes): imported into the graph,
//! and run the way `kfp.local.SubprocessRunner(use_venv=False)` runs it, without
//! containers: the container's command runs as a local process with KFP's placeholders
//! resolved and an `ExecutorInput` in the same JSON shape, and outputs are read back from
//! the executor output file and the output parameter files.
//!
//! [`import`] turns a document into the graph; `local` runs one of its steps' commands.

mod import;
mod local;

use serde_json::Value;

pub use import::import;
pub use local::{
    Context, EXECUTOR_OUTPUT, LocalArtifact, MAX_EXECUTOR_OUTPUT_BYTES, MAX_PARAMETER_BYTES,
    Produced, collect, executor_input, final_status, render_argv, select, split_install,
};

/// Whether a document is KFP IR.
pub fn is_kfp(doc: &Value) -> bool {
    doc.get("pipelineInfo").is_some() && doc.get("root").is_some()
}
