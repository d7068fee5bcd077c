//! The Kubernetes executor without a cluster: generated Job manifests are checked against
//! the Kubernetes OpenAPI schema by `kubernetes-validate` (from requirements-dev.txt), the
//! status mapping against API objects recorded in `tests/fixtures/k8s/`, and the executor's
//! API calls against a small fake API server that serves those objects.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use nexus_pipelines::executor::kubernetes::{
    JOB_LABEL, KubernetesConfig, KubernetesExecutor, MANAGED_BY_LABEL, PATH_ANNOTATION,
    RUN_ID_LABEL, STEP_LABEL, exit_from_job, exit_from_pod, job_manifest, job_name,
};
use nexus_pipelines::executor::{Executor, Exit, Launch, Resources};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const RUN_ID: &str = "7f3c2a10-5b4e-4c1d-9a8b-0e6f5d4c3b2a";
/// The oldest Kubernetes minor that k8s-openapi's `earliest` feature covers, and the newest
/// the validator ships.
const SCHEMA_VERSIONS: &[&str] = &["1.33.0", "1.37.0"];

// ---------------------------------------------------------------------------------------
// Schema validation with kubernetes-validate

fn validator_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let hint = "the Kubernetes schema validator is missing: run scripts/setup.sh \
                (installs kubernetes-validate from requirements-dev.txt into .venv)";
    match Command::new(&python)
        .args(["-c", "import kubernetes_validate"])
        .output()
    {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{hint}\n{} -c 'import kubernetes_validate' failed:\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{hint}\ncannot run {}: {e}", python.display()),
    }
}

/// Runs the validator in strict mode (unknown fields are errors) and returns its exit
/// status and output.
fn run_validator(files: &[PathBuf], versions: &[&str]) -> (bool, String) {
    let mut command = Command::new(validator_python());
    command.args(["-m", "kubernetes_validate", "--strict"]);
    for version in versions {
        command.args(["-k", version]);
    }
    let out = command
        .args(files)
        .output()
        .expect("run kubernetes_validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The validator exits 0 with only a WARN when it has no schema for a kind, so success
/// must be read from its per-resource "passed" lines.
fn assert_valid(files: &[PathBuf], versions: &[&str]) {
    let (ok, output) = run_validator(files, versions);
    assert!(ok, "kubernetes-validate rejected a manifest:\n{output}");
    for file in files {
        for version in versions {
            let minor = version.rsplit_once('.').unwrap().0;
            let line = format!("INFO {} passed", file.display());
            assert!(
                output
                    .lines()
                    .any(|l| l.starts_with(&line)
                        && l.ends_with(&format!("against version {minor}"))),
                "{} was not validated against {minor}:\n{output}",
                file.display()
            );
        }
    }
}

fn launch(path: &str, attempt: u32) -> Launch {
    let step_dir = PathBuf::from(format!("/var/lib/nexus/work/{RUN_ID}/{path}"));
    Launch {
        run_id: RUN_ID.to_string(),
        path: path.to_string(),
        attempt,
        image: None,
        argv: vec!["python3".into(), "-c".into(), "print('hi')".into()],
        env: BTreeMap::from([
            ("NEXUS_RUN_ID".to_string(), RUN_ID.to_string()),
            ("NEXUS_STEP".to_string(), path.to_string()),
        ]),
        workdir: step_dir.clone(),
        log: step_dir.join("step.log"),
        step_dir,
        timeout: None,
        resources: Resources::default(),
    }
}

fn config() -> KubernetesConfig {
    KubernetesConfig::new("/var/lib/nexus/work")
}

/// Three shapes that cover every optional part of the manifest.
fn sample_manifests() -> Vec<(&'static str, Job)> {
    let plain = job_manifest(&launch("train", 1), &config());

    let long_path = format!(
        "exit-handler-1/{}for-loop-3/17/Train_Model With Spaces",
        "condition-branches-2/".repeat(8)
    );
    let mut heavy = launch(&long_path, 3);
    heavy.image = Some("ghcr.io/acme/trainer:1.4".into());
    heavy.timeout = Some(Duration::from_secs(90));
    heavy.resources = Resources {
        cpu: Some("1500m".into()),
        memory: Some("2Gi".into()),
        gpu: Some(1),
    };
    heavy.env.insert("EPOCHS".into(), "5".into());
    heavy
        .env
        .insert("MLFLOW_TRACKING_URI".into(), "http://nexus:8000".into());
    let mut gpu_config = config();
    gpu_config.gpu_node_selector = BTreeMap::from([
        (
            "cloud.google.com/gke-accelerator".into(),
            "nvidia-h100-80gb".into(),
        ),
        ("nexus.dev/pool".into(), "gpu".into()),
    ]);
    gpu_config.image_pull_secrets = vec!["ghcr-pull".into(), "dockerhub".into()];
    gpu_config.service_account = Some("nexus-steps".into());
    let heavy = job_manifest(&heavy, &gpu_config);

    let mut pvc_config = config();
    pvc_config.work_volume = Some("nexus-work".into());
    pvc_config.namespace = Some("ml-pipelines".into());
    pvc_config.ttl_seconds_after_finished = None;
    let pvc = job_manifest(&launch("for-loop-2/0/square", 1), &pvc_config);

    vec![
        ("plain", plain),
        ("gpu-timeout-long-path", heavy),
        ("work-pvc", pvc),
    ]
}

fn write_yaml(dir: &Path, name: &str, value: &impl serde::Serialize) -> PathBuf {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, serde_yaml_ng::to_string(value).unwrap()).unwrap();
    file
}

#[test]
fn generated_manifests_pass_the_kubernetes_schema() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = sample_manifests()
        .iter()
        .map(|(name, job)| write_yaml(dir.path(), name, job))
        .collect();
    assert_valid(&files, SCHEMA_VERSIONS);
}

#[test]
fn manifests_carry_what_the_step_asked_for() {
    let manifests = sample_manifests();
    let (_, heavy) = &manifests[1];
    let name = heavy.metadata.name.as_deref().unwrap();
    assert!(name.len() <= 63, "{name}");
    assert!(name.starts_with("nexus-7f3c2a10-"), "{name}");
    // A shortened name keeps the step's own name and the attempt.
    assert!(name.contains("-17-train-model-with-spaces-3-"), "{name}");
    let labels = heavy.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[MANAGED_BY_LABEL], "nexus");
    assert_eq!(labels[RUN_ID_LABEL], RUN_ID);
    assert!(labels[STEP_LABEL].len() <= 63);
    assert!(labels[STEP_LABEL].contains("for-loop-3.17.Train_Model-With-Spaces-"));
    let annotations = heavy.metadata.annotations.as_ref().unwrap();
    assert!(annotations[PATH_ANNOTATION].ends_with("/17/Train_Model With Spaces"));

    let spec = heavy.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(90));
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    let template = &spec.template;
    assert_eq!(
        template.metadata.as_ref().unwrap().labels.as_ref().unwrap()[JOB_LABEL],
        name
    );
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.service_account_name.as_deref(), Some("nexus-steps"));
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap().len(), 2);
    assert_eq!(pod.node_selector.as_ref().unwrap()["nexus.dev/pool"], "gpu");
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("nvidia.com/gpu")
    );
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("ghcr.io/acme/trainer:1.4"));
    assert_eq!(container.command.as_ref().unwrap()[0], "python3");
    let env: Vec<&str> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        env,
        [
            "EPOCHS",
            "MLFLOW_TRACKING_URI",
            "NEXUS_RUN_ID",
            "NEXUS_STEP"
        ]
    );
    let resources = container.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "1500m");
    assert_eq!(limits["memory"].0, "2Gi");
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    assert!(!requests.contains_key("nvidia.com/gpu"));

    let (_, pvc) = &manifests[2];
    assert_eq!(pvc.metadata.namespace.as_deref(), Some("ml-pipelines"));
    let pod = pvc.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().claim_name,
        "nexus-work"
    );
    let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.mount_path, "/var/lib/nexus/work");
    assert_eq!(mount.name, volume.name);
    assert_eq!(
        pod.containers[0].working_dir.as_deref(),
        Some(format!("/var/lib/nexus/work/{RUN_ID}/for-loop-2/0/square").as_str())
    );
    assert!(
        pvc.spec
            .as_ref()
            .unwrap()
            .ttl_seconds_after_finished
            .is_none()
    );
}

/// Guards the test above: a validator that accepted anything would make it meaningless.
#[test]
fn validator_rejects_broken_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::to_value(&sample_manifests()[0].1).unwrap();

    let mut unknown_field = good.clone();
    unknown_field["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = json!("Always");
    let mut wrong_type = good.clone();
    wrong_type["spec"]["backoffLimit"] = json!("zero");
    let mut missing_required = good.clone();
    missing_required["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("containers");

    for (name, manifest) in [
        ("unknown-field", unknown_field),
        ("wrong-type", wrong_type),
        ("missing-required", missing_required),
    ] {
        let file = write_yaml(dir.path(), name, &manifest);
        let (ok, output) = run_validator(std::slice::from_ref(&file), &["1.33.0"]);
        assert!(!ok, "{name} passed validation:\n{output}");
        assert!(
            output.contains(&format!("ERROR {} did not validate", file.display())),
            "{name}: {output}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Status mapping with recorded API objects

fn fixture(name: &str) -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn job_fixture(name: &str) -> Job {
    serde_json::from_value(fixture(name)).unwrap()
}

fn pod_fixture(name: &str) -> Pod {
    serde_json::from_value(fixture(name)).unwrap()
}

/// The recorded objects are themselves schema-valid (status included), so they are not
/// shapes the API server could never return.
#[test]
fn recorded_objects_pass_the_kubernetes_schema() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    assert_valid(&files, &["1.34.0", "1.37.0"]);
}

#[test]
fn job_status_maps_to_exits() {
    assert_eq!(exit_from_job(&job_fixture("job_running.json")), None);
    assert_eq!(
        exit_from_job(&job_fixture("job_complete.json")),
        Some(Exit::Succeeded)
    );
    match exit_from_job(&job_fixture("job_failed_backoff.json")) {
        Some(Exit::Failed(message)) => {
            assert!(message.contains("BackoffLimitExceeded"), "{message}");
            assert!(message.contains("backoff limit"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        exit_from_job(&job_fixture("job_deadline_exceeded.json")),
        Some(Exit::TimedOut(Duration::from_secs(30)))
    );

    // Between FailureTarget and Failed the pods are still terminating: not finished yet.
    let mut terminating = fixture("job_deadline_exceeded.json");
    terminating["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["type"] == "FailureTarget");
    terminating["status"]["terminating"] = json!(1);
    let terminating: Job = serde_json::from_value(terminating).unwrap();
    assert_eq!(exit_from_job(&terminating), None);

    // A cluster that counts the pod before it writes the Complete condition.
    let mut counted = fixture("job_complete.json");
    counted["status"]
        .as_object_mut()
        .unwrap()
        .remove("conditions");
    let counted: Job = serde_json::from_value(counted).unwrap();
    assert_eq!(exit_from_job(&counted), Some(Exit::Succeeded));

    // A Job the controller has not looked at yet.
    let mut fresh = fixture("job_running.json");
    fresh.as_object_mut().unwrap().remove("status");
    let fresh: Job = serde_json::from_value(fresh).unwrap();
    assert_eq!(exit_from_job(&fresh), None);
}

#[test]
fn pod_status_maps_to_exits() {
    match exit_from_pod(&pod_fixture("pod_image_pull_backoff.json")) {
        Some(Exit::Failed(message)) => {
            assert!(message.contains("ImagePullBackOff"), "{message}");
            assert!(message.contains("ghcr.io/acme/fetcher:v9"), "{message}");
            assert!(message.contains("not found"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match exit_from_pod(&pod_fixture("pod_oom_killed.json")) {
        Some(Exit::Failed(message)) => {
            assert!(message.contains("137"), "{message}");
            assert!(message.contains("OOMKilled"), "{message}");
            assert!(message.contains("256Mi"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match exit_from_pod(&pod_fixture("pod_failed_exit1.json")) {
        Some(Exit::Failed(message)) => assert!(message.contains("code 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(exit_from_pod(&running_pod()), None);
    assert_eq!(exit_from_pod(&succeeded_pod()), Some(Exit::Succeeded));

    // ErrImagePull comes before the back-off and fails the attempt just the same.
    let mut err_pull = fixture("pod_image_pull_backoff.json");
    err_pull["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] =
        json!("ErrImagePull");
    let err_pull: Pod = serde_json::from_value(err_pull).unwrap();
    assert!(
        matches!(exit_from_pod(&err_pull), Some(Exit::Failed(m)) if m.contains("ErrImagePull"))
    );

    // A missing secret or config map: the container is never created.
    let mut config_error = fixture("pod_image_pull_backoff.json");
    config_error["status"]["containerStatuses"][0]["state"]["waiting"] = json!({
        "message": "secret \"hf-token\" not found",
        "reason": "CreateContainerConfigError"
    });
    let config_error: Pod = serde_json::from_value(config_error).unwrap();
    assert!(
        matches!(exit_from_pod(&config_error), Some(Exit::Failed(m)) if m.contains("hf-token"))
    );

    // Still pulling: may yet start.
    let mut pulling = fixture("pod_image_pull_backoff.json");
    pulling["status"]["containerStatuses"][0]["state"]["waiting"] =
        json!({"reason": "ContainerCreating"});
    let pulling: Pod = serde_json::from_value(pulling).unwrap();
    assert_eq!(exit_from_pod(&pulling), None);
}

/// The image-pull pod after the image arrived: running.
fn running_pod_value() -> Value {
    let mut pod = fixture("pod_image_pull_backoff.json");
    pod["status"]["phase"] = json!("Running");
    let status = &mut pod["status"]["containerStatuses"][0];
    status["state"] = json!({"running": {"startedAt": "2025-06-03T10:20:31Z"}});
    status["started"] = json!(true);
    status["ready"] = json!(true);
    pod
}

fn running_pod() -> Pod {
    serde_json::from_value(running_pod_value()).unwrap()
}

fn succeeded_pod_value() -> Value {
    let mut pod = fixture("pod_failed_exit1.json");
    pod["status"]["phase"] = json!("Succeeded");
    let terminated = &mut pod["status"]["containerStatuses"][0]["state"]["terminated"];
    terminated["exitCode"] = json!(0);
    terminated["reason"] = json!("Completed");
    pod
}

fn succeeded_pod() -> Pod {
    serde_json::from_value(succeeded_pod_value()).unwrap()
}

// ---------------------------------------------------------------------------------------
// The executor against no cluster and against a fake API server

#[tokio::test]
async fn no_cluster_fails_the_attempt_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = KubernetesConfig::new(dir.path());
    config.kubeconfig = Some(dir.path().join("no-such-kubeconfig"));
    let executor = KubernetesExecutor::new(config);
    assert_eq!(executor.name(), "kubernetes");

    let started = Arc::new(Mutex::new(None));
    let seen = started.clone();
    let exit = executor
        .run(
            launch("train", 1),
            Box::new(move |handle| *seen.lock().unwrap() = Some(handle)),
            CancellationToken::new(),
        )
        .await;
    match exit {
        Exit::Failed(message) => {
            assert!(message.contains("no Kubernetes cluster"), "{message}");
            assert!(message.contains("no-such-kubeconfig"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(*started.lock().unwrap(), None);
    executor
        .stop_stale("ml-pipelines/nexus-x-1-0123456789")
        .await;
}

/// A cluster that is configured but unreachable: the client is built (TLS included) and
/// the create call fails; the attempt ends with the reason.
#[tokio::test]
async fn unreachable_cluster_fails_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let closed_port = nexus_testing::free_port().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://127.0.0.1:{closed_port}"));
    let mut config = KubernetesConfig::new(dir.path());
    config.kubeconfig = Some(kubeconfig);
    let executor = KubernetesExecutor::new(config);
    let exit = tokio::time::timeout(
        Duration::from_secs(60),
        executor.run(
            launch("train", 1),
            Box::new(|_| {}),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("gave up in time");
    assert!(
        matches!(&exit, Exit::Failed(m) if m.contains("creating Kubernetes Job")),
        "{exit:?}"
    );
}

fn write_kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let file = dir.join("kubeconfig");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             users:\n- name: fake\n  user:\n    token: test-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: ml-pipelines\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    file
}

/// Serves the few endpoints the executor uses, answering with the recorded objects.
#[derive(Default)]
struct FakeApi {
    /// The Job a create conflicts with (409 AlreadyExists), if any.
    existing: Mutex<Option<Value>>,
    created: Mutex<Option<Value>>,
    /// Statuses handed out by successive GETs of the Job; the last one repeats.
    job_statuses: Mutex<VecDeque<Value>>,
    pods: Mutex<Vec<Value>>,
    log: String,
    requests: Mutex<Vec<String>>,
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

impl FakeApi {
    fn record(&self, line: String) {
        self.requests.lock().unwrap().push(line);
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    async fn serve(self: Arc<Self>) -> String {
        async fn create(
            State(api): State<Arc<FakeApi>>,
            UrlPath(ns): UrlPath<String>,
            axum::Json(mut job): axum::Json<Value>,
        ) -> Response {
            let name = job["metadata"]["name"].as_str().unwrap().to_string();
            api.record(format!("POST jobs/{name} in {ns}"));
            if api.existing.lock().unwrap().is_some() {
                return status_response(
                    409,
                    "AlreadyExists",
                    &format!("jobs.batch \"{name}\" already exists"),
                );
            }
            job["metadata"]["uid"] = json!("0b9f4d2e-61c3-4f8a-9d7e-2a5c8e1f3b40");
            job["metadata"]["creationTimestamp"] = json!("2025-06-03T10:15:02Z");
            *api.created.lock().unwrap() = Some(job.clone());
            (StatusCode::CREATED, axum::Json(job)).into_response()
        }
        async fn job(
            State(api): State<Arc<FakeApi>>,
            UrlPath((_ns, name)): UrlPath<(String, String)>,
        ) -> Response {
            api.record(format!("GET jobs/{name}"));
            let stored = api.created.lock().unwrap().clone();
            let stored = stored.or_else(|| api.existing.lock().unwrap().clone());
            let Some(mut job) = stored else {
                return status_response(404, "NotFound", "not found");
            };
            let mut statuses = api.job_statuses.lock().unwrap();
            job["status"] = if statuses.len() > 1 {
                statuses.pop_front().unwrap()
            } else {
                statuses.front().cloned().unwrap_or(json!({}))
            };
            axum::Json(job).into_response()
        }
        async fn delete_job(
            State(api): State<Arc<FakeApi>>,
            UrlPath((_ns, name)): UrlPath<(String, String)>,
            body: String,
        ) -> Response {
            api.record(format!("DELETE jobs/{name} {body}"));
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Success", "details": {"name": name, "group": "batch", "kind": "jobs"}}))
            .into_response()
        }
        async fn pods(State(api): State<Arc<FakeApi>>, RawQuery(query): RawQuery) -> Response {
            api.record(format!("GET pods?{}", query.unwrap_or_default()));
            // Items of a list carry no apiVersion/kind, as the API server sends them.
            let items: Vec<Value> = api
                .pods
                .lock()
                .unwrap()
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    p.as_object_mut().unwrap().remove("apiVersion");
                    p.as_object_mut().unwrap().remove("kind");
                    p
                })
                .collect();
            axum::Json(json!({"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": "919900"}, "items": items}))
            .into_response()
        }
        async fn log(
            State(api): State<Arc<FakeApi>>,
            UrlPath((_ns, name)): UrlPath<(String, String)>,
            RawQuery(query): RawQuery,
        ) -> Response {
            api.record(format!("GET pods/{name}/log?{}", query.unwrap_or_default()));
            api.log.clone().into_response()
        }

        let app = Router::new()
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs",
                axum::routing::post(create),
            )
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
                get(job).delete(delete_job),
            )
            .route("/api/v1/namespaces/{ns}/pods", get(pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(log))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }
}

struct Harness {
    api: Arc<FakeApi>,
    executor: KubernetesExecutor,
    dir: tempfile::TempDir,
}

async fn harness(api: FakeApi) -> Harness {
    let api = Arc::new(api);
    let server = api.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = KubernetesConfig::new(dir.path());
    config.kubeconfig = Some(write_kubeconfig(dir.path(), &server));
    config.poll_interval = Duration::from_millis(20);
    Harness {
        api,
        executor: KubernetesExecutor::new(config),
        dir,
    }
}

impl Harness {
    fn launch(&self, path: &str) -> Launch {
        let mut launch = launch(path, 1);
        launch.log = self.dir.path().join("logs").join("step.log");
        launch
    }

    async fn run(&self, launch: Launch, cancel: CancellationToken) -> (Exit, Option<String>) {
        let handle = Arc::new(Mutex::new(None));
        let seen = handle.clone();
        let exit = tokio::time::timeout(
            Duration::from_secs(30),
            self.executor.run(
                launch,
                Box::new(move |h| *seen.lock().unwrap() = Some(h)),
                cancel,
            ),
        )
        .await
        .expect("attempt finished");
        let handle = handle.lock().unwrap().clone();
        (exit, handle)
    }
}

fn status_of(fixture_name: &str) -> Value {
    fixture(fixture_name)["status"].clone()
}

#[tokio::test]
async fn run_creates_polls_and_collects_logs() {
    let h = harness(FakeApi {
        job_statuses: Mutex::new(VecDeque::from([
            json!({}),
            status_of("job_running.json"),
            status_of("job_complete.json"),
        ])),
        pods: Mutex::new(vec![succeeded_pod_value()]),
        log: "epoch 1 loss 0.3\nepoch 2 loss 0.2\n".into(),
        ..Default::default()
    })
    .await;
    let launch = h.launch("train");
    let log_file = launch.log.clone();
    std::fs::create_dir_all(log_file.parent().unwrap()).unwrap();
    std::fs::write(&log_file, "attempt 0 output\n").unwrap();
    let (exit, handle) = h.run(launch.clone(), CancellationToken::new()).await;

    assert_eq!(exit, Exit::Succeeded);
    let name = job_name(RUN_ID, "train", 1);
    assert_eq!(handle, Some(format!("ml-pipelines/{name}")));
    let created = h.api.created.lock().unwrap().clone().unwrap();
    let mut expected = serde_json::to_value(job_manifest(&launch, &config())).unwrap();
    expected["metadata"]["namespace"] = json!("ml-pipelines");
    assert_eq!(created["spec"], expected["spec"]);
    assert_eq!(
        created["metadata"]["labels"],
        expected["metadata"]["labels"]
    );
    assert_eq!(
        std::fs::read_to_string(&log_file).unwrap(),
        "attempt 0 output\nepoch 1 loss 0.3\nepoch 2 loss 0.2\n",
        "logs are appended"
    );
    let requests = h.api.requests();
    assert_eq!(requests[0], format!("POST jobs/{name} in ml-pipelines"));
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET pods?") && r.contains("nexus.dev%2Fjob%3D")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/log?") && r.contains("container=step")),
        "{requests:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.starts_with("DELETE")),
        "{requests:#?}"
    );
}

#[tokio::test]
async fn failed_job_reports_the_container_exit() {
    let h = harness(FakeApi {
        job_statuses: Mutex::new(VecDeque::from([status_of("job_failed_backoff.json")])),
        pods: Mutex::new(vec![fixture("pod_failed_exit1.json")]),
        log: "Traceback (most recent call last):\nValueError: bad input\n".into(),
        ..Default::default()
    })
    .await;
    let launch = h.launch("evaluate");
    let log_file = launch.log.clone();
    let (exit, _) = h.run(launch, CancellationToken::new()).await;
    match exit {
        Exit::Failed(message) => {
            assert!(message.contains("exited with code 1"), "{message}");
            assert!(message.contains("BackoffLimitExceeded"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        std::fs::read_to_string(log_file)
            .unwrap()
            .contains("ValueError: bad input")
    );
}

#[tokio::test]
async fn deadline_exceeded_is_a_timeout() {
    let h = harness(FakeApi {
        job_statuses: Mutex::new(VecDeque::from([status_of("job_deadline_exceeded.json")])),
        ..Default::default()
    })
    .await;
    let mut launch = h.launch("train");
    launch.timeout = Some(Duration::from_secs(30));
    let (exit, _) = h.run(launch, CancellationToken::new()).await;
    assert_eq!(exit, Exit::TimedOut(Duration::from_secs(30)));
}

#[tokio::test]
async fn image_pull_backoff_fails_and_deletes_the_job() {
    let h = harness(FakeApi {
        job_statuses: Mutex::new(VecDeque::from([status_of("job_running.json")])),
        pods: Mutex::new(vec![fixture("pod_image_pull_backoff.json")]),
        ..Default::default()
    })
    .await;
    let (exit, handle) = h
        .run(h.launch("fetch-data"), CancellationToken::new())
        .await;
    assert!(
        matches!(&exit, Exit::Failed(m) if m.contains("ImagePullBackOff") && m.contains("ghcr.io/acme/fetcher:v9")),
        "{exit:?}"
    );
    assert!(handle.is_some());
    let name = job_name(RUN_ID, "fetch-data", 1);
    let requests = h.api.requests();
    let delete = requests
        .iter()
        .find(|r| r.starts_with(&format!("DELETE jobs/{name}")))
        .unwrap_or_else(|| panic!("no delete: {requests:#?}"));
    assert!(
        delete.contains("\"propagationPolicy\":\"Background\""),
        "{delete}"
    );
}

#[tokio::test]
async fn cancel_deletes_the_job() {
    let h = harness(FakeApi {
        job_statuses: Mutex::new(VecDeque::from([status_of("job_running.json")])),
        pods: Mutex::new(vec![running_pod_value()]),
        log: "partial output\n".into(),
        ..Default::default()
    })
    .await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let launch = h.launch("train");
    let log_file = launch.log.clone();
    let (exit, _) = h.run(launch, cancel).await;
    assert_eq!(exit, Exit::Cancelled);
    let requests = h.api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("DELETE jobs/") && r.contains("Background")),
        "{requests:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(log_file).unwrap(),
        "partial output\n"
    );
}

#[tokio::test]
async fn an_existing_job_of_the_same_attempt_is_adopted() {
    let launch = launch("train", 1);
    let mut existing = fixture("job_running.json");
    existing["metadata"]["name"] = json!(job_name(RUN_ID, "train", 1));
    let h = harness(FakeApi {
        existing: Mutex::new(Some(existing)),
        job_statuses: Mutex::new(VecDeque::from([status_of("job_complete.json")])),
        pods: Mutex::new(vec![succeeded_pod_value()]),
        ..Default::default()
    })
    .await;
    let mut attempt = h.launch("train");
    attempt.log = h.dir.path().join("adopted.log");
    assert_eq!(attempt.run_id, launch.run_id);
    let (exit, handle) = h.run(attempt, CancellationToken::new()).await;
    assert_eq!(exit, Exit::Succeeded);
    assert!(handle.is_some());
    assert!(h.api.created.lock().unwrap().is_none());
}

#[tokio::test]
async fn a_foreign_job_with_the_same_name_is_not_adopted() {
    let mut existing = fixture("job_running.json");
    existing["metadata"]["name"] = json!(job_name(RUN_ID, "train", 1));
    existing["metadata"]["annotations"][PATH_ANNOTATION] = json!("someone-else");
    let h = harness(FakeApi {
        existing: Mutex::new(Some(existing)),
        job_statuses: Mutex::new(VecDeque::from([status_of("job_complete.json")])),
        ..Default::default()
    })
    .await;
    let (exit, handle) = h.run(h.launch("train"), CancellationToken::new()).await;
    assert!(
        matches!(&exit, Exit::Failed(m) if m.contains("does not belong")),
        "{exit:?}"
    );
    assert!(handle.is_none());
}

#[tokio::test]
async fn stop_stale_deletes_the_named_job() {
    let h = harness(FakeApi::default()).await;
    h.executor
        .stop_stale("ml-pipelines/nexus-old-1-0123456789")
        .await;
    h.executor.stop_stale("nexus-bare-1-0123456789").await;
    let requests = h.api.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(requests[0].starts_with("DELETE jobs/nexus-old-1-0123456789"));
    assert!(requests[1].starts_with("DELETE jobs/nexus-bare-1-0123456789"));
}
