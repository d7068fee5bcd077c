//! Pipeline runs that replace Kubeflow jobs: Nexus's YAML DAGs and compiled KFP v2 IR,
//! executed as local processes or Kubernetes Jobs, with their state in the registry's
//! database so a restarted Nexus resumes them.

pub mod api;
pub mod artifacts;
pub mod cli;
pub mod engine;
pub mod error;
pub mod executor;
pub mod graph;
pub mod kfp;
pub mod library;
pub mod outline;
pub mod spec;
pub mod stepdir;
pub mod store;
mod yaml;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

pub use artifacts::ArtifactStore;
pub use engine::{Engine, EngineConfig, Submit};
pub use error::{PipelineError, SpecError};

/// Largest spec a submission may carry (a compiled KFP pipeline is tens of KiB).
pub const MAX_SPEC_BYTES: usize = 8 << 20;

/// The text of a spec given as bytes, refused beyond [`MAX_SPEC_BYTES`] or when not UTF-8.
fn spec_text(bytes: &[u8]) -> Result<&str, SpecError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(SpecError::new(format!(
            "the spec is {} bytes; at most {MAX_SPEC_BYTES} are accepted",
            bytes.len()
        )));
    }
    std::str::from_utf8(bytes).map_err(|e| SpecError::new(format!("the spec is not UTF-8: {e}")))
}

/// Parses and validates a Nexus YAML pipeline spec into the graph a run would execute, as a
/// submission does, without a database or any file system access (relative `workdir`s are
/// refused: there is no base folder). A stable entry point for fuzzing and offline checks.
pub fn plan_nexus_spec(bytes: &[u8]) -> Result<graph::Pipeline, SpecError> {
    spec::compile(spec_text(bytes)?, None)
}

/// Parses and imports a compiled KFP v2 IR document (YAML or JSON) into the graph a run would
/// execute, as a submission does, without a database or any file system access. A stable
/// entry point for fuzzing and offline checks.
pub fn plan_kfp_ir(bytes: &[u8]) -> Result<graph::Pipeline, SpecError> {
    let doc: serde_json::Value = yaml::from_str(spec_text(bytes)?)?;
    if !kfp::is_kfp(&doc) {
        return Err(SpecError::new(
            "not a compiled KFP pipeline (no 'pipelineInfo' and 'root')",
        ));
    }
    kfp::import(&doc)
}

/// Where steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    Local,
    Kubernetes,
}

/// Options of the pipeline runner inside `nexus up`.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Where steps run: local processes, or Kubernetes Jobs.
    #[arg(
        long = "executor",
        value_enum,
        default_value = "local",
        env = "NEXUS_PIPELINE_EXECUTOR"
    )]
    pub executor: ExecutorKind,
    /// Steps running at once, over all runs (default: the number of CPUs).
    #[arg(long = "pipeline-parallelism", env = "NEXUS_PIPELINE_PARALLELISM")]
    pub parallelism: Option<usize>,
    /// Interpreter that replaces `python3` in KFP lightweight components' commands, as
    /// kfp.local's SubprocessRunner does (default: `python3` from PATH, unchanged).
    #[arg(long = "pipeline-python", env = "NEXUS_PIPELINE_PYTHON")]
    pub python: Option<String>,
    /// The URL steps are given to reach this server (NEXUS_URL, MLFLOW_TRACKING_URI); default:
    /// the address Nexus listens on, which pods of the Kubernetes executor may not reach.
    #[arg(long = "pipeline-server-url", env = "NEXUS_PIPELINE_SERVER_URL")]
    pub server_url: Option<String>,
    /// A variable of this server's environment that steps may see (repeatable, or
    /// comma-separated in NEXUS_PIPELINE_ENV). Steps start from a clean environment: PATH,
    /// HOME, LANG, LC_ALL, TZ, TMPDIR, PIP_*, proxy and CA-bundle variables (local executor),
    /// their own `env`, the NEXUS_* variables Nexus sets, and the variables named here.
    #[arg(
        long = "pipeline-env",
        value_name = "NAME",
        env = "NEXUS_PIPELINE_ENV",
        value_delimiter = ',',
        value_parser = parse_env_name
    )]
    pub env: Vec<String>,
    /// A folder of pipeline specs the console offers to submit, each with the folder as the
    /// base of its relative `workdir`s (a missing folder offers none).
    #[arg(
        long = "pipeline-library",
        value_name = "PATH",
        default_value = "examples/pipelines",
        env = "NEXUS_PIPELINE_LIBRARY"
    )]
    pub library: PathBuf,
    #[command(flatten)]
    pub kubernetes: executor::kubernetes::KubernetesArgs,
}

/// A variable name for `--pipeline-env`: letters, digits and `_`, not starting with a digit.
fn parse_env_name(name: &str) -> Result<String, String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!("'{name}' is not an environment variable name"))
    }
}

impl PipelineArgs {
    /// Opens the runner: its tables in the database behind `pool` (the registry's), step
    /// folders and logs under `data_dir/pipelines`, artifacts in `artifacts`. Unfinished runs
    /// resume.
    pub async fn open(
        &self,
        pool: sqlx::AnyPool,
        data_dir: &Path,
        artifacts: ArtifactStore,
        server_url: String,
    ) -> Result<Arc<Engine>, PipelineError> {
        let store = store::Store::new(pool);
        let root = std::fs::canonicalize(data_dir)
            .unwrap_or_else(|_| data_dir.to_path_buf())
            .join("pipelines");
        let work_root = root.join("work");
        let executor: Arc<dyn executor::Executor> = match self.executor {
            ExecutorKind::Local => Arc::new(executor::local::LocalExecutor::new()),
            ExecutorKind::Kubernetes => Arc::new(executor::kubernetes::KubernetesExecutor::new(
                self.kubernetes.config(&work_root),
            )),
        };
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let config = EngineConfig {
            work_root,
            logs_root: root.join("logs"),
            parallelism: self.parallelism.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            }),
            server_url: self.server_url.clone().unwrap_or(server_url),
            python: self.python.clone(),
            passed_env: self
                .env
                .iter()
                .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
                .collect(),
            owner: format!("{host}:{}", root.display()),
            library: self.library.clone(),
        };
        let engine = Engine::new(store, artifacts, executor, config);
        match engine.resume().await {
            Ok(0) => {}
            Ok(resumed) => tracing::info!(resumed, "resumed unfinished pipeline runs"),
            // The background loop tries again every few seconds.
            Err(e) => tracing::warn!(error = %e, "pipeline runs not resumed yet"),
        }
        engine.background();
        Ok(engine)
    }
}
