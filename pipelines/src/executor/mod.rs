//! Where a step's process runs. The engine renders a step into a [`Launch`] (argv, env,
//! folders) and hands it to an [`Executor`]; the executor only runs it and reports how it
//! ended. Outputs are files in the step's work folder either way, so collecting them stays
//! in the engine.

pub mod kubernetes;
pub mod local;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Compute a step asks for (the Kubernetes executor turns it into requests and limits).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU, in Kubernetes quantity syntax ("500m", "2").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory, in Kubernetes quantity syntax ("512Mi", "2Gi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// NVIDIA GPUs (`nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

/// One attempt of one step, fully rendered.
#[derive(Debug, Clone)]
pub struct Launch {
    pub run_id: String,
    /// The step's path in the run (`train`, `for-loop-2/0/square`).
    pub path: String,
    pub attempt: u32,
    /// Container image (only the Kubernetes executor uses it).
    pub image: Option<String>,
    /// Full argv: command then args.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Working directory of the process.
    pub workdir: PathBuf,
    /// The step's own folder (outputs are written below it).
    pub step_dir: PathBuf,
    /// Where the step's stdout and stderr go (appended; one file per step across attempts).
    pub log: PathBuf,
    pub timeout: Option<Duration>,
    pub resources: Resources,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Succeeded,
    /// Non-zero exit, a signal, or a failure to start; the message says which.
    Failed(String),
    TimedOut(Duration),
    Cancelled,
}

/// Something the engine records while an attempt runs: the handle that lets a restarted
/// Nexus stop a step that outlived it.
pub type OnStart = Box<dyn FnOnce(String) + Send>;

/// Runs step attempts.
pub trait Executor: Send + Sync {
    /// Runs one attempt to its end. `on_start` receives a handle naming the running
    /// process (a process group id, a Job name) as soon as it exists; `cancel` stops it.
    fn run(
        &self,
        launch: Launch,
        on_start: OnStart,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Exit>;

    /// Stops whatever a handle from an earlier Nexus process names, if it still runs, so
    /// a resumed run never has the same step running twice.
    fn stop_stale(&self, handle: &str) -> BoxFuture<'_, ()>;

    /// A short name for logs and the API (`local`, `kubernetes`).
    fn name(&self) -> &'static str;
}
