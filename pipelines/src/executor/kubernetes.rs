//! Runs each step attempt as a Kubernetes `batch/v1` Job (`--executor kubernetes`).
//!
//! The Job is a thin wrapper around one pod: Nexus keeps retries, timeouts and caching to
//! itself, so the Job gets `backoffLimit: 0` and the attempt number is part of its name.
//! Outputs still travel through files: with `--k8s-work-pvc` the claim is mounted at the
//! same path as Nexus' own work root, so the paths the engine rendered into argv mean the
//! same thing inside the pod and the engine collects outputs exactly as with the local
//! executor.
//!
//! The manifest builder ([`job_manifest`]) and the status mapping ([`exit_from_job`],
//! [`exit_from_pod`]) are pure functions so they can be checked against the API schema and
//! recorded API objects without a cluster; [`KubernetesExecutor`] only adds the API calls.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::AsyncReadExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, EnvVar, LocalObjectReference, PersistentVolumeClaimVolumeSource,
    Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{Executor, Exit, Launch, OnStart, Resources};

/// The image a step without `image:` runs in: the KFP SDK's default base image, so
/// lightweight components run unchanged.
pub const DEFAULT_IMAGE: &str = "python:3.11-slim";

/// Marks everything Nexus creates, so `kubectl get jobs -l app.kubernetes.io/managed-by=nexus`
/// finds it and a 409 on create can tell our own Job from someone else's.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "nexus";
pub const RUN_ID_LABEL: &str = "nexus.dev/run-id";
pub const STEP_LABEL: &str = "nexus.dev/step";
pub const ATTEMPT_LABEL: &str = "nexus.dev/attempt";
/// On the pod template: lets Nexus find the Job's pods with a selector of its own, which
/// works on every cluster version (the built-in `batch.kubernetes.io/job-name` is 1.27+).
pub const JOB_LABEL: &str = "nexus.dev/job";
/// Labels must be ≤ 63 characters of a restricted alphabet, so the exact values live here.
pub const RUN_ID_ANNOTATION: &str = "nexus.dev/run-id";
pub const PATH_ANNOTATION: &str = "nexus.dev/path";

/// The one container of a step pod (log requests name it).
pub const CONTAINER_NAME: &str = "step";
const WORK_VOLUME_NAME: &str = "nexus-work";
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Kubernetes' limit for label values and for Job names (the Job controller copies the
/// name into a label on its pods).
const MAX_NAME_LEN: usize = 63;

/// Waiting reasons after which a container will not start without someone changing the
/// image, a secret or a config map. The Job controller keeps such a pod pending forever
/// (only `activeDeadlineSeconds` would end it), so Nexus fails the attempt itself.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Consecutive failed polls (about a minute) after which the attempt gives up on the API
/// server instead of waiting forever.
const MAX_POLL_ERRORS: u32 = 30;

/// How long a 409 on create may be a Job still being deleted (by `stop_stale` of a resumed
/// run) before Nexus stops waiting for the name to free up.
const NAME_RELEASE_WAIT: Duration = Duration::from_secs(60);

/// Where and how step Jobs run.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// `None`: the kubeconfig context's namespace, or the service account's namespace when
    /// Nexus itself runs in a pod — where users expect their Jobs without extra flags.
    pub namespace: Option<String>,
    /// A PersistentVolumeClaim mounted at `work_root`. Without one the pod's outputs stay
    /// in the pod and the engine cannot collect them (steps without outputs still work).
    pub work_volume: Option<String>,
    /// Nexus' local work root: the claim's mount path, so rendered paths stay valid.
    pub work_root: PathBuf,
    pub service_account: Option<String>,
    pub image_pull_secrets: Vec<String>,
    /// For steps that name no image.
    pub default_image: String,
    /// Applied (with a toleration for the `nvidia.com/gpu` taint) only to pods that ask for
    /// GPUs, so CPU steps are not pinned to expensive nodes.
    pub gpu_node_selector: BTreeMap<String, String>,
    /// Nexus reads status and logs as soon as a Job ends; this only decides how long the
    /// finished Job stays around for `kubectl`. `None` keeps it.
    pub ttl_seconds_after_finished: Option<i32>,
    /// Explicit kubeconfig file instead of `$KUBECONFIG`/`~/.kube/config`/in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context instead of the current one.
    pub context: Option<String>,
    pub poll_interval: Duration,
}

impl KubernetesConfig {
    pub fn new(work_root: impl Into<PathBuf>) -> Self {
        Self {
            namespace: None,
            work_volume: None,
            work_root: work_root.into(),
            service_account: None,
            image_pull_secrets: Vec::new(),
            default_image: DEFAULT_IMAGE.to_string(),
            gpu_node_selector: BTreeMap::new(),
            ttl_seconds_after_finished: Some(3600),
            kubeconfig: None,
            context: None,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Command-line flags for the Kubernetes executor (flatten into `nexus up`). Field names
/// carry a `k8s_` prefix because clap ids must be unique across flattened structs.
#[derive(Debug, Clone, clap::Args)]
pub struct KubernetesArgs {
    /// Namespace for step Jobs [default: the kubeconfig context's, or the pod's own
    /// namespace when Nexus runs in a cluster].
    #[arg(long = "k8s-namespace", env = "NEXUS_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// PersistentVolumeClaim holding Nexus' work folder; mounted into every step pod at
    /// the same path so step outputs reach Nexus.
    #[arg(long = "k8s-work-pvc", env = "NEXUS_K8S_WORK_PVC")]
    pub k8s_work_pvc: Option<String>,
    /// Service account the step pods run as.
    #[arg(long = "k8s-service-account", env = "NEXUS_K8S_SERVICE_ACCOUNT")]
    pub k8s_service_account: Option<String>,
    /// Image for steps that do not name one.
    #[arg(long = "k8s-image", env = "NEXUS_K8S_IMAGE", default_value = DEFAULT_IMAGE)]
    pub k8s_image: String,
    /// Image pull secret for step pods (repeatable, or comma-separated).
    #[arg(
        long = "k8s-image-pull-secret",
        env = "NEXUS_K8S_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub k8s_image_pull_secrets: Vec<String>,
    /// Node selector KEY=VALUE for pods that request GPUs (repeatable, or comma-separated).
    #[arg(
        long = "k8s-gpu-node-selector",
        env = "NEXUS_K8S_GPU_NODE_SELECTOR",
        value_delimiter = ',',
        value_parser = parse_key_value
    )]
    pub k8s_gpu_node_selector: Vec<(String, String)>,
    /// Seconds a finished step Job is kept for inspection (0 keeps it).
    #[arg(
        long = "k8s-ttl-seconds",
        env = "NEXUS_K8S_TTL_SECONDS",
        default_value_t = 3600
    )]
    pub k8s_ttl_seconds: u32,
    /// Kubeconfig file [default: $KUBECONFIG, ~/.kube/config, then the in-cluster account].
    #[arg(long = "k8s-kubeconfig", env = "NEXUS_K8S_KUBECONFIG")]
    pub k8s_kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: the current context].
    #[arg(long = "k8s-context", env = "NEXUS_K8S_CONTEXT")]
    pub k8s_context: Option<String>,
}

impl KubernetesArgs {
    /// `work_root` is the engine's local work root: the PVC is mounted there.
    pub fn config(&self, work_root: &Path) -> KubernetesConfig {
        KubernetesConfig {
            namespace: self.k8s_namespace.clone(),
            work_volume: self.k8s_work_pvc.clone(),
            service_account: self.k8s_service_account.clone(),
            image_pull_secrets: self.k8s_image_pull_secrets.clone(),
            default_image: self.k8s_image.clone(),
            gpu_node_selector: self.k8s_gpu_node_selector.iter().cloned().collect(),
            ttl_seconds_after_finished: match self.k8s_ttl_seconds {
                0 => None,
                n => Some(i32::try_from(n).unwrap_or(i32::MAX)),
            },
            kubeconfig: self.k8s_kubeconfig.clone(),
            context: self.k8s_context.clone(),
            ..KubernetesConfig::new(work_root)
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Why the executor has no client. Kept as an error type (not a bare string) so the
/// "no Kubernetes cluster" wording the attempt's message starts with lives in one place.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("no Kubernetes cluster: {0}")]
    NoCluster(String),
}

// ---------------------------------------------------------------------------------------
// Names and labels

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..5])
}

/// Lowercase alphanumerics and single dashes: the DNS-1123 label alphabet.
fn dns_label_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out
}

/// The Job's name: readable (run prefix, step path, attempt) and always ending in a hash
/// of the exact run id, path and attempt. Sanitizing is lossy (`a/b` and `a-b` both become
/// `a-b`) and long paths are shortened, and a collision would make one step adopt another
/// step's Job on a 409, so the hash is not optional. A long path keeps its end (the step's
/// own name, what a user looks for in `kubectl get jobs`). Deterministic, so a resumed
/// Nexus finds the Job of an attempt it started before a restart.
pub fn job_name(run_id: &str, path: &str, attempt: u32) -> String {
    let tail = format!(
        "-{attempt}-{}",
        short_hash(&[run_id, path, &attempt.to_string()])
    );
    let run: String = dns_label_chars(run_id)
        .trim_matches('-')
        .chars()
        .take(8)
        .collect();
    let head = format!("nexus-{run}-");
    let path = dns_label_chars(path);
    let room = MAX_NAME_LEN - tail.len() - head.len();
    let path = path[path.len().saturating_sub(room)..].trim_matches('-');
    dns_label_chars(&format!("{head}{path}{tail}"))
}

/// A label value carrying `value` as closely as the label syntax allows (`/` becomes `.`,
/// other illegal characters `-`), shortened from the front with a hash suffix when too long.
pub fn label_value(value: &str) -> String {
    let mapped: String = value
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' => c,
            '/' => '.',
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= MAX_NAME_LEN {
        return trimmed.to_string();
    }
    // Keep the end (the step's own name) and make the shortened value unique again.
    let hash = short_hash(&[value]);
    let end = trimmed[trimmed.len() - (MAX_NAME_LEN - hash.len() - 1)..]
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{end}-{hash}")
}

// ---------------------------------------------------------------------------------------
// Manifest

fn resource_requirements(resources: &Resources) -> Option<ResourceRequirements> {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    // Request = limit: a step gets exactly what the spec says (Guaranteed QoS when both are
    // set), so an OOM kill points at the spec, not at a noisy neighbour.
    if let Some(cpu) = resources.cpu.as_deref().filter(|s| !s.is_empty()) {
        requests.insert("cpu".to_string(), Quantity(cpu.to_string()));
        limits.insert("cpu".to_string(), Quantity(cpu.to_string()));
    }
    if let Some(memory) = resources.memory.as_deref().filter(|s| !s.is_empty()) {
        requests.insert("memory".to_string(), Quantity(memory.to_string()));
        limits.insert("memory".to_string(), Quantity(memory.to_string()));
    }
    // Extended resources are limit-only: the request defaults to the limit and may not differ.
    if let Some(gpu) = resources.gpu.filter(|&g| g > 0) {
        limits.insert(GPU_RESOURCE.to_string(), Quantity(gpu.to_string()));
    }
    if requests.is_empty() && limits.is_empty() {
        return None;
    }
    Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The Job for one attempt. Pure, so the exact object sent to the API server can be
/// validated against the Kubernetes schema in tests.
pub fn job_manifest(launch: &Launch, config: &KubernetesConfig) -> Job {
    let name = job_name(&launch.run_id, &launch.path, launch.attempt);
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (RUN_ID_LABEL.to_string(), label_value(&launch.run_id)),
        (STEP_LABEL.to_string(), label_value(&launch.path)),
        (ATTEMPT_LABEL.to_string(), launch.attempt.to_string()),
    ]);
    let annotations = BTreeMap::from([
        (RUN_ID_ANNOTATION.to_string(), launch.run_id.clone()),
        (PATH_ANNOTATION.to_string(), launch.path.clone()),
    ]);
    let mut pod_labels = labels.clone();
    pod_labels.insert(JOB_LABEL.to_string(), name.clone());

    let env: Vec<EnvVar> = launch
        .env
        .iter()
        .map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..Default::default()
        })
        .collect();
    let workdir = path_string(&launch.workdir);

    let mut volumes = Vec::new();
    let mut volume_mounts = Vec::new();
    if let Some(claim) = &config.work_volume {
        volumes.push(Volume {
            name: WORK_VOLUME_NAME.to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Default::default()
        });
        volume_mounts.push(VolumeMount {
            name: WORK_VOLUME_NAME.to_string(),
            mount_path: path_string(&config.work_root),
            ..Default::default()
        });
    }

    let wants_gpu = launch.resources.gpu.unwrap_or(0) > 0;
    let (node_selector, tolerations) = if wants_gpu {
        (
            (!config.gpu_node_selector.is_empty()).then(|| config.gpu_node_selector.clone()),
            // GPU node pools are commonly tainted `nvidia.com/gpu:NoSchedule` so that only
            // pods that need them land there.
            Some(vec![Toleration {
                key: Some(GPU_RESOURCE.to_string()),
                operator: Some("Exists".to_string()),
                effect: Some("NoSchedule".to_string()),
                ..Default::default()
            }]),
        )
    } else {
        (None, None)
    };

    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(
            launch
                .image
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| config.default_image.clone()),
        ),
        // `command` (not `args`) so the image's ENTRYPOINT cannot wrap the step's argv.
        command: (!launch.argv.is_empty()).then(|| launch.argv.clone()),
        env: (!env.is_empty()).then_some(env),
        working_dir: (!workdir.is_empty()).then_some(workdir),
        resources: resource_requirements(&launch.resources),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        ..Default::default()
    };

    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: config.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Nexus retries with its own backoff and counts attempts itself.
            backoff_limit: Some(0),
            active_deadline_seconds: launch.timeout.map(|t| {
                i64::try_from(t.as_secs_f64().ceil() as u64)
                    .unwrap_or(i64::MAX)
                    .max(1)
            }),
            ttl_seconds_after_finished: config.ttl_seconds_after_finished,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    containers: vec![container],
                    service_account_name: config.service_account.clone(),
                    image_pull_secrets: (!config.image_pull_secrets.is_empty()).then(|| {
                        config
                            .image_pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect()
                    }),
                    node_selector,
                    tolerations,
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------
// Status mapping

fn is_true(condition: &JobCondition) -> bool {
    condition.status == "True"
}

/// How a Job ended, or `None` while it has not. Only the terminal conditions count:
/// `FailureTarget` and `SuccessCriteriaMet` (1.31+) come while pods are still terminating,
/// and waiting for `Failed`/`Complete` means the logs read afterwards are complete.
pub fn exit_from_job(job: &Job) -> Option<Exit> {
    let status = job.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(failed) = conditions
        .iter()
        .find(|c| c.type_ == "Failed" && is_true(c))
    {
        let reason = failed.reason.as_deref().unwrap_or("");
        if reason == "DeadlineExceeded" {
            let secs = job
                .spec
                .as_ref()
                .and_then(|s| s.active_deadline_seconds)
                .unwrap_or(0);
            return Some(Exit::TimedOut(Duration::from_secs(
                u64::try_from(secs).unwrap_or(0),
            )));
        }
        let message = failed.message.as_deref().unwrap_or("");
        let what = match reason {
            "" => "failed".to_string(),
            reason => format!("failed ({reason})"),
        };
        return Some(Exit::Failed(if message.is_empty() {
            format!("Kubernetes Job {what}")
        } else {
            format!("Kubernetes Job {what}: {message}")
        }));
    }
    if conditions
        .iter()
        .any(|c| c.type_ == "Complete" && is_true(c))
    {
        return Some(Exit::Succeeded);
    }
    // Clusters that lag on conditions still count pods; with one completion, one
    // succeeded pod and nothing active is done.
    if status.succeeded.unwrap_or(0) >= 1 && status.active.unwrap_or(0) == 0 {
        return Some(Exit::Succeeded);
    }
    None
}

/// What a step pod says about the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodVerdict {
    /// Will never start on its own; the Job does not notice.
    Stuck(String),
    Failed(String),
    Succeeded,
}

fn step_container_status(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_deref()?;
    statuses
        .iter()
        .find(|s| s.name == CONTAINER_NAME)
        .or_else(|| statuses.first())
}

fn memory_limit(pod: &Pod) -> Option<String> {
    let container = pod.spec.as_ref()?.containers.first()?;
    let limits = container.resources.as_ref()?.limits.as_ref()?;
    limits.get("memory").map(|q| q.0.clone())
}

fn pod_verdict(pod: &Pod) -> Option<PodVerdict> {
    let status = pod.status.as_ref()?;
    let pod_name = pod.metadata.name.as_deref().unwrap_or("?");
    let container = step_container_status(pod);
    let state = container.and_then(|c| c.state.as_ref());

    if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.as_deref().unwrap_or("");
        if STUCK_REASONS.contains(&reason) {
            let image = container.map(|c| c.image.as_str()).unwrap_or("");
            let message = waiting.message.as_deref().unwrap_or("");
            let what = if reason.contains("Image") {
                format!("cannot pull image {image:?}")
            } else {
                "cannot create the step container".to_string()
            };
            let detail = if message.is_empty() {
                reason.to_string()
            } else {
                format!("{reason}: {message}")
            };
            return Some(PodVerdict::Stuck(format!(
                "pod {pod_name} {what} ({detail})"
            )));
        }
    }

    if let Some(terminated) = state.and_then(|s| s.terminated.as_ref())
        && terminated.exit_code != 0
    {
        let reason = terminated.reason.as_deref().unwrap_or("Error");
        let mut message = format!(
            "step container exited with code {} ({reason})",
            terminated.exit_code
        );
        if reason == "OOMKilled" {
            match memory_limit(pod) {
                Some(limit) => message.push_str(&format!(
                    ": out of memory, it used more than its {limit} limit (raise resources.memory)"
                )),
                None => message.push_str(": out of memory"),
            }
        }
        if let Some(signal) = terminated.signal {
            message.push_str(&format!(", signal {signal}"));
        }
        if let Some(text) = terminated.message.as_deref().map(str::trim)
            && !text.is_empty()
        {
            message.push_str(&format!(": {text}"));
        }
        return Some(PodVerdict::Failed(message));
    }

    match status.phase.as_deref() {
        Some("Succeeded") => Some(PodVerdict::Succeeded),
        Some("Failed") => {
            // Evicted, node shutdown, DeadlineExceeded: the pod itself carries the reason.
            let reason = status.reason.as_deref().unwrap_or("Failed");
            let message = status.message.as_deref().unwrap_or("");
            Some(PodVerdict::Failed(if message.is_empty() {
                format!("pod {pod_name} failed ({reason})")
            } else {
                format!("pod {pod_name} failed ({reason}): {message}")
            }))
        }
        _ => None,
    }
}

/// What a step pod says about the attempt: `Failed` for a pod that failed or can never
/// start (image pull errors, a missing secret or config map — the Job would wait for those
/// until its deadline), `Succeeded` for a finished pod, `None` while it may still go
/// either way.
pub fn exit_from_pod(pod: &Pod) -> Option<Exit> {
    match pod_verdict(pod)? {
        PodVerdict::Stuck(message) | PodVerdict::Failed(message) => Some(Exit::Failed(message)),
        PodVerdict::Succeeded => Some(Exit::Succeeded),
    }
}

/// The Job's failure message is generic ("reached the specified backoff limit"); the pod
/// knows the exit code and the OOM kill, which is what a user needs to read.
fn explain_failure(exit: Exit, pods: &[Pod]) -> Exit {
    let Exit::Failed(job_message) = exit else {
        return exit;
    };
    let pod_message = pods.iter().rev().find_map(|pod| match pod_verdict(pod) {
        Some(PodVerdict::Failed(m) | PodVerdict::Stuck(m)) => Some(m),
        _ => None,
    });
    match pod_message {
        Some(pod_message) => Exit::Failed(format!("{pod_message}; {job_message}")),
        None => Exit::Failed(job_message),
    }
}

// ---------------------------------------------------------------------------------------
// Executor

/// Renders `kube` errors with their causes: the top-level message alone ("failed to infer
/// configuration") rarely says what to fix.
fn describe(error: &(dyn StdError + 'static)) -> String {
    if let Some(kube::Error::Api(status)) = error.downcast_ref::<kube::Error>() {
        return format!("{} ({} {})", status.message, status.code, status.reason);
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Runs step attempts as Kubernetes Jobs. The client is created on first use, so a Nexus
/// configured for Kubernetes starts (and serves everything else) without a cluster; each
/// attempt then fails with the reason instead.
pub struct KubernetesExecutor {
    config: KubernetesConfig,
    client: OnceCell<(Client, String)>,
}

impl KubernetesExecutor {
    pub fn new(config: KubernetesConfig) -> Self {
        if config.work_volume.is_none() {
            tracing::warn!(
                "Kubernetes executor without --k8s-work-pvc: step outputs written in pods will not reach Nexus"
            );
        }
        Self {
            config,
            client: OnceCell::new(),
        }
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// The client and the namespace Jobs go to. Failures are not cached: a cluster that
    /// comes up later is picked up by the next attempt.
    async fn client(&self) -> Result<&(Client, String), KubernetesError> {
        self.client
            .get_or_try_init(|| async {
                let options = KubeConfigOptions {
                    context: self.config.context.clone(),
                    ..Default::default()
                };
                let config = match (&self.config.kubeconfig, &self.config.context) {
                    (Some(path), _) => {
                        let kubeconfig = Kubeconfig::read_from(path)
                            .map_err(|e| KubernetesError::NoCluster(describe(&e)))?;
                        Config::from_custom_kubeconfig(kubeconfig, &options)
                            .await
                            .map_err(|e| KubernetesError::NoCluster(describe(&e)))?
                    }
                    (None, Some(_)) => Config::from_kubeconfig(&options)
                        .await
                        .map_err(|e| KubernetesError::NoCluster(describe(&e)))?,
                    (None, None) => Config::infer()
                        .await
                        .map_err(|e| KubernetesError::NoCluster(describe(&e)))?,
                };
                let client = Client::try_from(config)
                    .map_err(|e| KubernetesError::NoCluster(describe(&e)))?;
                let namespace = self
                    .config
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string());
                tracing::info!(%namespace, "Kubernetes executor connected");
                Ok((client, namespace))
            })
            .await
    }

    /// Creates the attempt's Job, or adopts the one a previous Nexus process created for
    /// the same attempt (same deterministic name), so a resumed run does not start it twice.
    async fn create_or_adopt(
        &self,
        jobs: &Api<Job>,
        manifest: &Job,
        launch: &Launch,
    ) -> Result<(), String> {
        let name = manifest.metadata.name.as_deref().unwrap_or_default();
        let started = tokio::time::Instant::now();
        loop {
            let error = match jobs.create(&PostParams::default(), manifest).await {
                Ok(_) => {
                    tracing::info!(job = name, step = %launch.path, "created Kubernetes Job");
                    return Ok(());
                }
                Err(e) => e,
            };
            if api_code(&error) != Some(409) {
                return Err(format!(
                    "creating Kubernetes Job {name}: {}",
                    describe(&error)
                ));
            }
            let existing = match jobs.get_opt(name).await {
                Ok(Some(job)) => job,
                Ok(None) => continue, // deleted in between: create again
                Err(e) => return Err(format!("reading Kubernetes Job {name}: {}", describe(&e))),
            };
            let annotations = existing.metadata.annotations.clone().unwrap_or_default();
            let ours = annotations.get(RUN_ID_ANNOTATION) == Some(&launch.run_id)
                && annotations.get(PATH_ANNOTATION) == Some(&launch.path);
            if !ours {
                return Err(format!(
                    "a Kubernetes Job named {name} already exists and does not belong to this step"
                ));
            }
            if existing.metadata.deletion_timestamp.is_none() {
                tracing::info!(job = name, step = %launch.path, "adopting existing Kubernetes Job");
                return Ok(());
            }
            // `stop_stale` of a resumed run deleted it; wait for the name to free up.
            if started.elapsed() > NAME_RELEASE_WAIT {
                return Err(format!(
                    "Kubernetes Job {name} is still being deleted after {}s",
                    NAME_RELEASE_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn list_pods(pods: &Api<Pod>, job: &str) -> Result<Vec<Pod>, kube::Error> {
        let mut list = pods
            .list(&ListParams::default().labels(&format!("{JOB_LABEL}={job}")))
            .await?
            .items;
        list.sort_by(|a, b| {
            let key = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            key(a).cmp(&key(b))
        });
        Ok(list)
    }

    /// Appends the step container's output of every pod of the Job to the step's log
    /// file. Best effort: a missing log is noted in the file, never fails the attempt.
    async fn append_logs(pods_api: &Api<Pod>, pods: &[Pod], log: &Path) {
        let result = async {
            if let Some(parent) = log.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .await?;
            for pod in pods {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                let started = step_container_status(pod)
                    .and_then(|c| c.state.as_ref())
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
                if !started {
                    continue;
                }
                if pods.len() > 1 {
                    file.write_all(format!("[nexus] logs of pod {name}\n").as_bytes())
                        .await?;
                }
                let params = LogParams {
                    container: Some(CONTAINER_NAME.to_string()),
                    ..Default::default()
                };
                match pods_api.log_stream(name, &params).await {
                    Ok(mut stream) => {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) => break,
                                Ok(n) => file.write_all(&buf[..n]).await?,
                                Err(e) => {
                                    file.write_all(
                                        format!("\n[nexus] log of pod {name} cut short: {e}\n")
                                            .as_bytes(),
                                    )
                                    .await?;
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        file.write_all(
                            format!(
                                "[nexus] could not fetch the log of pod {name}: {}\n",
                                describe(&e)
                            )
                            .as_bytes(),
                        )
                        .await?;
                    }
                }
            }
            file.flush().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(log = %log.display(), "writing the step log failed: {e}");
        }
    }

    async fn delete_job(jobs: &Api<Job>, name: &str) {
        match jobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!(job = name, "deleted Kubernetes Job"),
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => tracing::warn!(
                job = name,
                "deleting Kubernetes Job failed: {}",
                describe(&e)
            ),
        }
    }

    async fn finish(pods_api: &Api<Pod>, job: &str, launch: &Launch) -> Vec<Pod> {
        let pods = Self::list_pods(pods_api, job).await.unwrap_or_else(|e| {
            tracing::warn!(job, "listing the Job's pods failed: {}", describe(&e));
            Vec::new()
        });
        Self::append_logs(pods_api, &pods, &launch.log).await;
        pods
    }

    async fn run_attempt(
        &self,
        launch: Launch,
        on_start: OnStart,
        cancel: CancellationToken,
    ) -> Exit {
        let (client, namespace) = match self.client().await {
            Ok(c) => c,
            Err(e) => return Exit::Failed(e.to_string()),
        };
        if cancel.is_cancelled() {
            return Exit::Cancelled;
        }
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let mut manifest = job_manifest(&launch, &self.config);
        manifest.metadata.namespace = Some(namespace.clone());
        let name = manifest.metadata.name.clone().unwrap_or_default();

        if let Err(message) = self.create_or_adopt(&jobs, &manifest, &launch).await {
            return Exit::Failed(message);
        }
        on_start(format!("{namespace}/{name}"));

        let mut poll_errors = 0u32;
        let mut last_phase = String::new();
        loop {
            match jobs.get_opt(&name).await {
                Ok(Some(job)) => {
                    poll_errors = 0;
                    if let Some(exit) = exit_from_job(&job) {
                        let pods = Self::finish(&pods_api, &name, &launch).await;
                        let exit = explain_failure(exit, &pods);
                        tracing::info!(job = %name, ?exit, "Kubernetes Job finished");
                        return exit;
                    }
                }
                Ok(None) => {
                    return Exit::Failed(format!(
                        "Kubernetes Job {namespace}/{name} was deleted before it finished"
                    ));
                }
                Err(e) => {
                    poll_errors += 1;
                    tracing::warn!(job = %name, "polling the Kubernetes Job failed: {}", describe(&e));
                    if poll_errors >= MAX_POLL_ERRORS {
                        // Leaving it running would let a retry run next to it.
                        Self::delete_job(&jobs, &name).await;
                        return Exit::Failed(format!(
                            "lost contact with the Kubernetes API while Job {name} ran: {}",
                            describe(&e)
                        ));
                    }
                }
            }

            if let Ok(pods) = Self::list_pods(&pods_api, &name).await {
                for pod in &pods {
                    let phase = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_default();
                    if phase != last_phase {
                        tracing::debug!(job = %name, pod = ?pod.metadata.name, %phase, "step pod phase");
                        last_phase = phase;
                    }
                    if let Some(PodVerdict::Stuck(message)) = pod_verdict(pod) {
                        Self::delete_job(&jobs, &name).await;
                        return Exit::Failed(message);
                    }
                }
            }

            tokio::select! {
                _ = cancel.cancelled() => {
                    Self::finish(&pods_api, &name, &launch).await;
                    Self::delete_job(&jobs, &name).await;
                    return Exit::Cancelled;
                }
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    async fn stop(&self, handle: &str) {
        let (client, default_namespace) = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(handle, "cannot stop stale Kubernetes Job: {e}");
                return;
            }
        };
        let (namespace, name) = handle
            .split_once('/')
            .unwrap_or((default_namespace.as_str(), handle));
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        Self::delete_job(&jobs, name).await;
    }
}

impl Executor for KubernetesExecutor {
    /// The handle given to `on_start` is `namespace/job-name`.
    fn run(
        &self,
        launch: Launch,
        on_start: OnStart,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Exit> {
        Box::pin(self.run_attempt(launch, on_start, cancel))
    }

    /// Accepts `namespace/job-name` or a bare Job name (in the configured namespace).
    fn stop_stale(&self, handle: &str) -> BoxFuture<'_, ()> {
        let handle = handle.to_string();
        Box::pin(async move { self.stop(&handle).await })
    }

    fn name(&self) -> &'static str {
        "kubernetes"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec(launch: &Launch, config: &KubernetesConfig) -> PodSpec {
        job_manifest(launch, config)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn is_label_value(s: &str) -> bool {
        s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    }

    #[test]
    fn job_names_are_dns_labels_and_distinct() {
        let long = "exit-handler-1/for-loop-3/12/".repeat(10) + "Square_It";
        let cases = [
            ("7f3c2a10-5b4e-4c1d-9a8b-0e6f5d4c3b2a", "train", 1),
            ("7f3c2a10-5b4e-4c1d-9a8b-0e6f5d4c3b2a", "train", 2),
            ("7f3c2a10-5b4e-4c1d-9a8b-0e6f5d4c3b2a", "a/b", 1),
            ("7f3c2a10-5b4e-4c1d-9a8b-0e6f5d4c3b2a", "a-b", 1),
            ("7f3c2a10-5b4e-4c1d-9a8b-0e6f5d4c3b2a", &long, 1),
            (
                "7f3c2a10-5b4e-4c1d-9a8b-0e6f5d4c3b2a",
                &(long.clone() + "x"),
                1,
            ),
            ("RUN_ÜNICODE", "--weird--", u32::MAX),
            ("", "", 0),
        ];
        let names: Vec<String> = cases.iter().map(|(r, p, a)| job_name(r, p, *a)).collect();
        for name in &names {
            assert!(is_dns_label(name), "{name:?} is not a DNS-1123 label");
            assert!(name.starts_with("nexus-"), "{name}");
        }
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:#?}");
        assert!(
            names[0].starts_with("nexus-7f3c2a10-train-1-"),
            "{}",
            names[0]
        );
        assert!(names[4].contains("-12-square-it-1-"), "{}", names[4]);
        assert_eq!(job_name("", "", 0).len(), "nexus-0-".len() + 10);
        assert_eq!(names[0], job_name(cases[0].0, cases[0].1, cases[0].2));
    }

    #[test]
    fn label_values_are_valid() {
        for value in [
            "train",
            "for-loop-2/0/square",
            "/leading/and/trailing/",
            "spaces and ünïcode",
            &"x/".repeat(100),
        ] {
            let label = label_value(value);
            assert!(is_label_value(&label), "{value:?} -> {label:?}");
        }
        assert_eq!(label_value("for-loop-2/0/square"), "for-loop-2.0.square");
        assert!(label_value(&("x/".repeat(40) + "train")).contains(".train-"));
        assert_ne!(label_value(&"a".repeat(80)), label_value(&"a".repeat(81)));
    }

    #[test]
    fn gpu_steps_get_selector_and_toleration_only_when_asking() {
        let mut config = KubernetesConfig::new("/data/work");
        config.gpu_node_selector = BTreeMap::from([(
            "cloud.google.com/gke-accelerator".into(),
            "nvidia-l4".into(),
        )]);
        let mut launch = Launch {
            run_id: "r".into(),
            path: "p".into(),
            attempt: 1,
            image: None,
            argv: vec!["true".into()],
            env: BTreeMap::new(),
            workdir: "/data/work/r/p".into(),
            step_dir: "/data/work/r/p".into(),
            log: "/data/work/r/p.log".into(),
            timeout: None,
            resources: Resources::default(),
        };
        let spec = pod_spec(&launch, &config);
        assert!(spec.node_selector.is_none() && spec.tolerations.is_none());
        assert!(spec.containers[0].resources.is_none());
        assert_eq!(spec.containers[0].image.as_deref(), Some(DEFAULT_IMAGE));

        launch.resources.gpu = Some(2);
        let spec = pod_spec(&launch, &config);
        assert_eq!(spec.node_selector.as_ref(), Some(&config.gpu_node_selector));
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some(GPU_RESOURCE)
        );
        let resources = spec.containers[0].resources.clone().unwrap();
        assert_eq!(
            resources.limits.unwrap()[GPU_RESOURCE],
            Quantity("2".into())
        );
        assert!(resources.requests.is_none());
    }

    #[test]
    fn jobs_get_the_launch_environment_and_nothing_of_the_servers() {
        // This process has PATH, HOME and more (as the server has its secrets): the Job must
        // get exactly the launch's variables.
        let launch = Launch {
            run_id: "r".into(),
            path: "p".into(),
            attempt: 1,
            image: None,
            argv: vec!["env".into()],
            env: BTreeMap::from([
                ("NEXUS_RUN_ID".to_string(), "r".to_string()),
                ("OWN".to_string(), "mine".to_string()),
            ]),
            workdir: "/w/r/p".into(),
            step_dir: "/w/r/p".into(),
            log: "/w/r/p.log".into(),
            timeout: None,
            resources: Resources::default(),
        };
        let job = job_manifest(&launch, &KubernetesConfig::new("/w"));
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
        let env: Vec<(String, Option<String>)> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        assert_eq!(
            env,
            vec![
                ("NEXUS_RUN_ID".to_string(), Some("r".to_string())),
                ("OWN".to_string(), Some("mine".to_string())),
            ]
        );
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        let mut launch = Launch {
            run_id: "r".into(),
            path: "p".into(),
            attempt: 1,
            image: Some("busybox:1.36".into()),
            argv: vec![],
            env: BTreeMap::new(),
            workdir: PathBuf::new(),
            step_dir: "/w".into(),
            log: "/w/log".into(),
            timeout: Some(Duration::from_millis(1500)),
            resources: Resources::default(),
        };
        let config = KubernetesConfig::new("/w");
        let job = job_manifest(&launch, &config);
        assert_eq!(job.spec.as_ref().unwrap().active_deadline_seconds, Some(2));
        let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(container.command.is_none() && container.working_dir.is_none());
        launch.timeout = Some(Duration::from_millis(10));
        let job = job_manifest(&launch, &config);
        assert_eq!(job.spec.unwrap().active_deadline_seconds, Some(1));
    }

    #[test]
    fn args_parse_into_config() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            k8s: KubernetesArgs,
        }
        let cli = Cli::try_parse_from([
            "nexus",
            "--k8s-namespace",
            "ml",
            "--k8s-work-pvc",
            "nexus-work",
            "--k8s-gpu-node-selector",
            "pool=gpu,accelerator=h100",
            "--k8s-image-pull-secret",
            "regcred",
            "--k8s-ttl-seconds",
            "0",
        ])
        .unwrap();
        let config = cli.k8s.config(Path::new("/var/lib/nexus/work"));
        assert_eq!(config.namespace.as_deref(), Some("ml"));
        assert_eq!(config.work_volume.as_deref(), Some("nexus-work"));
        assert_eq!(config.gpu_node_selector.len(), 2);
        assert_eq!(config.image_pull_secrets, vec!["regcred".to_string()]);
        assert_eq!(config.ttl_seconds_after_finished, None);
        assert_eq!(config.default_image, DEFAULT_IMAGE);
        assert!(Cli::try_parse_from(["nexus", "--k8s-gpu-node-selector", "novalue"]).is_err());
    }
}
