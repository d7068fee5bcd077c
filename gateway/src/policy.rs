//! Who may do what: the roles, the route classes every HTTP request and gRPC method falls
//! into, and the one table of rights between them. Everything about authorisation is
//! decided here, so a new endpoint needs one line in [`classify_http`] or
//! [`classify_grpc`] and nothing else; an endpoint nobody classified is [`RouteClass::Admin`].

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use http::Method;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// A principal's role. Each role's rights are listed in [`allowed`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: every read class, nothing else.
    Reader,
    /// A client application: inference, feedback and V2 metadata.
    Inference,
    /// A CI job: submits and cancels pipelines, reads everything.
    Runner,
    /// A release engineer: registry writes, model load/unload, pipelines, inference, reads.
    Deployer,
    /// Everything, including token management.
    Admin,
}

impl Role {
    /// Every role, least rights first; a token naming several roles gets the last it names
    /// in this order (the declaration order, which `Ord` follows).
    pub const ALL: [Role; 5] = [
        Role::Reader,
        Role::Inference,
        Role::Runner,
        Role::Deployer,
        Role::Admin,
    ];

    /// The role's name, as tokens and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Inference => "inference",
            Role::Runner => "runner",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so column widths like `{:<9}` apply.
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    /// Case-insensitive role name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown role '{s}': use admin, deployer, runner, inference or reader")
            })
    }
}

/// What a request does, as far as access control cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// Liveness and readiness probes: always open, never authenticated or rate limited.
    Health,
    /// The web console's page and its static files (`GET /`, `/assets/…`): open like the
    /// probes, because they hold no data and the page must load before anyone can paste a
    /// credential into it; every call the page then makes is a request of its own class.
    Console,
    /// V2 server/model metadata, readiness, config, statistics, repository index,
    /// shared-memory status, the process's service list (`GET /api/v1/services`), its
    /// Prometheus metrics (`GET /api/v1/metrics`) and the caller's own identity
    /// (`GET /api/v1/whoami`): the reads every role may make.
    InferenceRead,
    /// V2 inference (HTTP infer, gRPC ModelInfer/ModelStreamInfer).
    Infer,
    /// Feedback on an inference (`POST /v2/models/{m}/feedback`); treated like [`Self::Infer`].
    Feedback,
    /// V2 model repository load/unload, and registering and unregistering shared memory:
    /// a registered region is server state every client's inference may read and write.
    ModelControl,
    /// MLflow reads: every GET, and the POST endpoints MLflow clients use for reads.
    RegistryRead,
    /// MLflow writes and artifact uploads/deletes.
    RegistryWrite,
    /// Listing and reading pipeline runs and their logs.
    PipelineRead,
    /// Submitting a pipeline run.
    PipelineSubmit,
    /// Cancelling a pipeline run.
    PipelineCancel,
    /// Optimiser state and decisions.
    OptimizerRead,
    /// Changing the optimiser (freezing traffic weights).
    OptimizerWrite,
    /// Everything else, token management included: admins only.
    Admin,
}

impl RouteClass {
    /// Every class, for exhaustive tests and documentation.
    pub const ALL: [RouteClass; 14] = [
        RouteClass::Health,
        RouteClass::Console,
        RouteClass::InferenceRead,
        RouteClass::Infer,
        RouteClass::Feedback,
        RouteClass::ModelControl,
        RouteClass::RegistryRead,
        RouteClass::RegistryWrite,
        RouteClass::PipelineRead,
        RouteClass::PipelineSubmit,
        RouteClass::PipelineCancel,
        RouteClass::OptimizerRead,
        RouteClass::OptimizerWrite,
        RouteClass::Admin,
    ];

    /// Whether the class only reads.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            RouteClass::InferenceRead
                | RouteClass::RegistryRead
                | RouteClass::PipelineRead
                | RouteClass::OptimizerRead
        )
    }

    /// Whether requests of the class pass without a credential (and without rate limits).
    pub fn is_open(self) -> bool {
        matches!(self, RouteClass::Health | RouteClass::Console)
    }

    /// The class's name in `GET /api/v1/whoami` (snake case, stable).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Health => "health",
            RouteClass::Console => "console",
            RouteClass::InferenceRead => "inference_read",
            RouteClass::Infer => "infer",
            RouteClass::Feedback => "feedback",
            RouteClass::ModelControl => "model_control",
            RouteClass::RegistryRead => "registry_read",
            RouteClass::RegistryWrite => "registry_write",
            RouteClass::PipelineRead => "pipeline_read",
            RouteClass::PipelineSubmit => "pipeline_submit",
            RouteClass::PipelineCancel => "pipeline_cancel",
            RouteClass::OptimizerRead => "optimizer_read",
            RouteClass::OptimizerWrite => "optimizer_write",
            RouteClass::Admin => "admin",
        }
    }

    /// Whether requests of the class are also limited per model.
    pub fn per_model(self) -> bool {
        matches!(self, RouteClass::Infer | RouteClass::Feedback)
    }
}

/// Whether `role` may make requests of `class`: the whole access policy.
pub fn allowed(role: Role, class: RouteClass) -> bool {
    use RouteClass as C;
    if class.is_open() {
        return true;
    }
    match role {
        Role::Admin => true,
        // Freezing the optimiser and the admin endpoints stay with admins.
        Role::Deployer => !matches!(class, C::Admin | C::OptimizerWrite),
        Role::Runner => class.is_read() || matches!(class, C::PipelineSubmit | C::PipelineCancel),
        Role::Inference => matches!(class, C::Infer | C::Feedback | C::InferenceRead),
        Role::Reader => class.is_read(),
    }
}

/// MLflow endpoints (below the API prefix) that only read even when called with POST;
/// the registry serves each of these with GET and POST alike.
const MLFLOW_POST_READS: &[&str] = &[
    "experiments/get",
    "experiments/get-by-name",
    "experiments/search",
    "runs/get",
    "runs/search",
    "metrics/get-history",
    "registered-models/get",
    "registered-models/search",
    "registered-models/get-latest-versions",
    "model-versions/get",
    "model-versions/search",
    "model-versions/get-download-uri",
    "logged-models/search",
];

/// Prefixes of the MLflow tracking/registry API (its answers use MLflow's error body).
const MLFLOW_PREFIXES: &[&str] = &[
    "/api/2.0/mlflow/",
    "/ajax-api/2.0/mlflow/",
    "/api/3.0/mlflow/",
];

/// Prefix of MLflow's artifact proxy.
const MLFLOW_ARTIFACTS: &str = "/api/2.0/mlflow-artifacts/";

/// Whether `path` belongs to the MLflow API, whose errors are `{"error_code", "message"}`.
pub fn is_mlflow_path(path: &str) -> bool {
    path.starts_with(MLFLOW_ARTIFACTS)
        || MLFLOW_PREFIXES
            .iter()
            .any(|p| path.starts_with(p) || path == p.trim_end_matches('/'))
}

/// Where the console's static files are served (`nexus_console`).
const CONSOLE_ASSETS: &str = "/assets/";

/// The first V2 path segment of the system and the CUDA shared-memory extensions.
const SYSTEM_SHM: &str = "systemsharedmemory";
const CUDA_SHM: &str = "cudasharedmemory";

/// The class of an HTTP request. Matching is literal (no decoding or `..` folding, as in
/// axum's router), so a path classified as open cannot route to a protected handler; a path
/// that matches nothing here is [`RouteClass::Admin`].
pub fn classify_http(method: &Method, path: &str) -> RouteClass {
    use RouteClass as C;
    let read = *method == Method::GET || *method == Method::HEAD;
    let post = *method == Method::POST;

    if path == "/v2/health/live"
        || path == "/v2/health/ready"
        || path == "/health"
        || path.starts_with("/health/")
    {
        return if read { C::Health } else { C::Admin };
    }

    if path == "/v2" || path.starts_with("/v2/") {
        let segments: Vec<&str> = path.split('/').skip(2).collect();
        return match (segments.as_slice(), read, post) {
            ([], true, _) => C::InferenceRead,
            (["models", ..], true, _) => C::InferenceRead,
            (["models", _, "infer"], _, true) => C::Infer,
            (["models", _, "versions", _, "infer"], _, true) => C::Infer,
            (["models", _, "feedback"], _, true) => C::Feedback,
            (["repository", "index"], _, true) => C::InferenceRead,
            (["repository", "models", _, "load" | "unload"], _, true) => C::ModelControl,
            // The shared-memory extensions, system and CUDA: status reads, the rest changes
            // what every inference may reach.
            ([SYSTEM_SHM | CUDA_SHM, "status"], true, _)
            | ([SYSTEM_SHM | CUDA_SHM, "region", _, "status"], true, _) => C::InferenceRead,
            ([SYSTEM_SHM | CUDA_SHM, "unregister"], _, true)
            | (
                [
                    SYSTEM_SHM | CUDA_SHM,
                    "region",
                    _,
                    "register" | "unregister",
                ],
                _,
                true,
            ) => C::ModelControl,
            _ => C::Admin,
        };
    }

    if let Some(rest) = MLFLOW_PREFIXES.iter().find_map(|p| path.strip_prefix(p)) {
        return if read || (post && MLFLOW_POST_READS.contains(&rest)) {
            C::RegistryRead
        } else {
            C::RegistryWrite
        };
    }
    if path.starts_with(MLFLOW_ARTIFACTS) {
        return if read {
            C::RegistryRead
        } else {
            C::RegistryWrite
        };
    }
    if path == "/version" && read {
        return C::RegistryRead;
    }

    if read
        && matches!(
            path,
            "/api/v1/services" | "/api/v1/metrics" | "/api/v1/whoami"
        )
    {
        return C::InferenceRead;
    }

    // The console's page and its hashed files; its own routes live after `#`, never here.
    if read && (path == "/" || path.starts_with(CONSOLE_ASSETS)) {
        return C::Console;
    }

    if let Some(rest) = path.strip_prefix("/api/v1/pipelines/") {
        let segments: Vec<&str> = rest.split('/').collect();
        return match (segments.as_slice(), read, post) {
            (_, true, _) => C::PipelineRead,
            (["runs"], _, true) => C::PipelineSubmit,
            (["runs", _, "cancel"], _, true) => C::PipelineCancel,
            _ => C::Admin,
        };
    }

    if path.starts_with("/api/v1/optimizer/") {
        return if read {
            C::OptimizerRead
        } else {
            C::OptimizerWrite
        };
    }

    C::Admin
}

/// The service of KServe V2 / Triton gRPC inference.
const INFERENCE_SERVICE: &str = "/inference.GRPCInferenceService/";

/// The class of a gRPC call from its HTTP/2 path (`/package.Service/Method`).
pub fn classify_grpc(path: &str) -> RouteClass {
    use RouteClass as C;
    if let Some(method) = path.strip_prefix(INFERENCE_SERVICE) {
        return match method {
            "ServerLive" | "ServerReady" => C::Health,
            "ModelReady" | "ServerMetadata" | "ModelMetadata" | "ModelConfig"
            | "ModelStatistics" | "RepositoryIndex" => C::InferenceRead,
            "ModelInfer" | "ModelStreamInfer" => C::Infer,
            "SystemSharedMemoryStatus" | "CudaSharedMemoryStatus" => C::InferenceRead,
            "RepositoryModelLoad"
            | "RepositoryModelUnload"
            | "SystemSharedMemoryRegister"
            | "SystemSharedMemoryUnregister"
            | "CudaSharedMemoryRegister"
            | "CudaSharedMemoryUnregister" => C::ModelControl,
            _ => C::Admin,
        };
    }
    match path {
        "/grpc.health.v1.Health/Check" | "/grpc.health.v1.Health/Watch" => C::Health,
        _ => C::Admin,
    }
}

/// The model an HTTP inference or feedback request is for (`/v2/models/{m}/…`), the key of
/// the per-model rate limit. Percent-decoded as the server's router decodes it, so
/// `simpl%65` is the model "simple" and shares its limit.
pub fn model_from_path(path: &str) -> Option<Cow<'_, str>> {
    let rest = path.strip_prefix("/v2/models/")?;
    let (model, _) = rest.split_once('/')?;
    (!model.is_empty()).then(|| percent_decode_str(model).decode_utf8_lossy())
}

/// Whether a gRPC path is a unary inference call, whose message names its model.
pub(crate) fn is_grpc_model_infer(path: &str) -> bool {
    path.strip_prefix(INFERENCE_SERVICE) == Some("ModelInfer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use RouteClass as C;

    /// The whole matrix, written out role by role so a change to the policy shows here.
    #[test]
    fn rights_matrix() {
        let expected: &[(Role, &[RouteClass])] = &[
            (Role::Admin, &C::ALL),
            (
                Role::Deployer,
                &[
                    C::Health,
                    C::Console,
                    C::InferenceRead,
                    C::Infer,
                    C::Feedback,
                    C::ModelControl,
                    C::RegistryRead,
                    C::RegistryWrite,
                    C::PipelineRead,
                    C::PipelineSubmit,
                    C::PipelineCancel,
                    C::OptimizerRead,
                ],
            ),
            (
                Role::Runner,
                &[
                    C::Health,
                    C::Console,
                    C::InferenceRead,
                    C::RegistryRead,
                    C::PipelineRead,
                    C::PipelineSubmit,
                    C::PipelineCancel,
                    C::OptimizerRead,
                ],
            ),
            (
                Role::Inference,
                &[
                    C::Health,
                    C::Console,
                    C::InferenceRead,
                    C::Infer,
                    C::Feedback,
                ],
            ),
            (
                Role::Reader,
                &[
                    C::Health,
                    C::Console,
                    C::InferenceRead,
                    C::RegistryRead,
                    C::PipelineRead,
                    C::OptimizerRead,
                ],
            ),
        ];
        for (role, classes) in expected {
            for class in C::ALL {
                assert_eq!(
                    allowed(*role, class),
                    classes.contains(&class),
                    "{role} on {class:?}"
                );
            }
        }
        assert_eq!(expected.len(), Role::ALL.len());
    }

    #[test]
    fn http_classes() {
        let cases: &[(Method, &str, RouteClass)] = &[
            (Method::GET, "/v2/health/live", C::Health),
            (Method::GET, "/v2/health/ready", C::Health),
            (Method::GET, "/health", C::Health),
            (Method::GET, "/health/live", C::Health),
            (Method::GET, "/health/ready", C::Health),
            (Method::GET, "/api/v1/services", C::InferenceRead),
            (Method::POST, "/api/v1/services", C::Admin),
            (Method::GET, "/api/v1/metrics", C::InferenceRead),
            (Method::GET, "/api/v1/whoami", C::InferenceRead),
            (Method::POST, "/api/v1/whoami", C::Admin),
            (Method::GET, "/", C::Console),
            (Method::HEAD, "/", C::Console),
            (Method::GET, "/assets/index-3f2a.js", C::Console),
            (Method::POST, "/", C::Admin),
            (Method::GET, "/index.html", C::Admin),
            (Method::POST, "/v2/health/live", C::Admin),
            (Method::GET, "/v2", C::InferenceRead),
            (Method::GET, "/v2/models/m", C::InferenceRead),
            (Method::GET, "/v2/models/m/versions/1", C::InferenceRead),
            (Method::GET, "/v2/models/m/ready", C::InferenceRead),
            (Method::GET, "/v2/models/m/config", C::InferenceRead),
            (Method::GET, "/v2/models/m/stats", C::InferenceRead),
            (Method::GET, "/v2/models/stats", C::InferenceRead),
            (Method::HEAD, "/v2/models/m", C::InferenceRead),
            (Method::POST, "/v2/repository/index", C::InferenceRead),
            (Method::POST, "/v2/models/m/infer", C::Infer),
            (Method::POST, "/v2/models/m/versions/3/infer", C::Infer),
            (Method::POST, "/v2/models/m/feedback", C::Feedback),
            (
                Method::POST,
                "/v2/repository/models/m/load",
                C::ModelControl,
            ),
            (
                Method::POST,
                "/v2/repository/models/m/unload",
                C::ModelControl,
            ),
            (Method::POST, "/v2/models/m/config", C::Admin),
            (Method::POST, "/v2/systemsharedmemory/register", C::Admin),
            (
                Method::GET,
                "/v2/systemsharedmemory/status",
                C::InferenceRead,
            ),
            (
                Method::GET,
                "/v2/systemsharedmemory/region/r/status",
                C::InferenceRead,
            ),
            (Method::GET, "/v2/cudasharedmemory/status", C::InferenceRead),
            (Method::POST, "/v2/systemsharedmemory/status", C::Admin),
            (
                Method::POST,
                "/v2/systemsharedmemory/region/r/register",
                C::ModelControl,
            ),
            (
                Method::POST,
                "/v2/systemsharedmemory/region/r/unregister",
                C::ModelControl,
            ),
            (
                Method::POST,
                "/v2/systemsharedmemory/unregister",
                C::ModelControl,
            ),
            (
                Method::POST,
                "/v2/cudasharedmemory/region/r/register",
                C::ModelControl,
            ),
            (
                Method::GET,
                "/v2/systemsharedmemory/region/r/register",
                C::Admin,
            ),
            (
                Method::GET,
                "/api/2.0/mlflow/registered-models/get",
                C::RegistryRead,
            ),
            (Method::POST, "/api/2.0/mlflow/runs/search", C::RegistryRead),
            (
                Method::POST,
                "/api/2.0/mlflow/experiments/search",
                C::RegistryRead,
            ),
            (
                Method::POST,
                "/ajax-api/2.0/mlflow/registered-models/search",
                C::RegistryRead,
            ),
            (
                Method::POST,
                "/api/2.0/mlflow/logged-models/search",
                C::RegistryRead,
            ),
            (Method::GET, "/api/3.0/mlflow/server-info", C::RegistryRead),
            (
                Method::POST,
                "/api/2.0/mlflow/registered-models/create",
                C::RegistryWrite,
            ),
            (
                Method::PATCH,
                "/api/2.0/mlflow/model-versions/update",
                C::RegistryWrite,
            ),
            (
                Method::DELETE,
                "/api/2.0/mlflow/registered-models/delete",
                C::RegistryWrite,
            ),
            (
                Method::POST,
                "/api/2.0/mlflow/runs/log-batch",
                C::RegistryWrite,
            ),
            (
                Method::GET,
                "/api/2.0/mlflow-artifacts/artifacts/a/b",
                C::RegistryRead,
            ),
            (
                Method::PUT,
                "/api/2.0/mlflow-artifacts/artifacts/a/b",
                C::RegistryWrite,
            ),
            (
                Method::DELETE,
                "/api/2.0/mlflow-artifacts/artifacts/a",
                C::RegistryWrite,
            ),
            (Method::GET, "/version", C::RegistryRead),
            (Method::GET, "/api/v1/pipelines/runs", C::PipelineRead),
            (
                Method::GET,
                "/api/v1/pipelines/runs/r1/logs",
                C::PipelineRead,
            ),
            (Method::POST, "/api/v1/pipelines/runs", C::PipelineSubmit),
            (
                Method::POST,
                "/api/v1/pipelines/runs/r1/cancel",
                C::PipelineCancel,
            ),
            (Method::DELETE, "/api/v1/pipelines/runs/r1", C::Admin),
            (Method::GET, "/api/v1/optimizer/state", C::OptimizerRead),
            (Method::POST, "/api/v1/optimizer/freeze", C::OptimizerWrite),
            (Method::POST, "/api/v1/tokens", C::Admin),
            (Method::GET, "//v2/models/m", C::Admin),
        ];
        for (method, path, class) in cases {
            assert_eq!(classify_http(method, path), *class, "{method} {path}");
        }
    }

    #[test]
    fn grpc_classes() {
        let cases: &[(&str, RouteClass)] = &[
            ("ServerLive", C::Health),
            ("ServerReady", C::Health),
            ("ModelReady", C::InferenceRead),
            ("ServerMetadata", C::InferenceRead),
            ("ModelMetadata", C::InferenceRead),
            ("ModelConfig", C::InferenceRead),
            ("ModelStatistics", C::InferenceRead),
            ("RepositoryIndex", C::InferenceRead),
            ("ModelInfer", C::Infer),
            ("ModelStreamInfer", C::Infer),
            ("RepositoryModelLoad", C::ModelControl),
            ("RepositoryModelUnload", C::ModelControl),
            ("SystemSharedMemoryStatus", C::InferenceRead),
            ("CudaSharedMemoryStatus", C::InferenceRead),
            ("SystemSharedMemoryRegister", C::ModelControl),
            ("SystemSharedMemoryUnregister", C::ModelControl),
            ("CudaSharedMemoryRegister", C::ModelControl),
            ("CudaSharedMemoryUnregister", C::ModelControl),
            ("TraceSetting", C::Admin),
        ];
        for (method, class) in cases {
            let path = format!("/inference.GRPCInferenceService/{method}");
            assert_eq!(classify_grpc(&path), *class, "{path}");
        }
        assert_eq!(classify_grpc("/grpc.health.v1.Health/Check"), C::Health);
        assert_eq!(classify_grpc("/other.Service/Method"), C::Admin);
    }

    #[test]
    fn models_and_roles() {
        let model = |path| model_from_path(path).map(Cow::into_owned);
        assert_eq!(model("/v2/models/fraud/infer").as_deref(), Some("fraud"));
        assert_eq!(
            model("/v2/models/fraud/versions/2/infer").as_deref(),
            Some("fraud")
        );
        assert_eq!(model("/v2/models/fr%61ud/infer").as_deref(), Some("fraud"));
        assert_eq!(model("/v2/models/a%2Fb/infer").as_deref(), Some("a/b"));
        assert_eq!(model_from_path("/v2/models//infer"), None);
        assert_eq!(model_from_path("/v2/models/fraud"), None);
        assert_eq!("Deployer".parse::<Role>(), Ok(Role::Deployer));
        assert!("root".parse::<Role>().is_err());
        assert!(is_mlflow_path("/api/2.0/mlflow/runs/get"));
        assert!(is_mlflow_path("/api/2.0/mlflow-artifacts/artifacts/x"));
        assert!(!is_mlflow_path("/v2/models/x"));
        assert_eq!(Role::ALL.iter().max(), Some(&Role::Admin));
    }
}
