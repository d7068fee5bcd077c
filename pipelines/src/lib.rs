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
pub mod spec;
pub mod store;

use std::path::Path;
use std::sync::Arc;

pub use artifacts::ArtifactStore;
pub use engine::{Engine, EngineConfig, Submit};
pub use error::{PipelineError, SpecError};

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
    #[command(flatten)]
    pub kubernetes: executor::kubernetes::KubernetesArgs,
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
            ExecutorKind::Local => Arc::new(executor::local::LocalExecutor),
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
            owner: format!("{host}:{}", root.display()),
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
