//! Shared by the gateway's integration tests: a key store on a fresh SQLite file, servers
//! on free ports (an axum router with one route per class, a tonic server with a stand-in
//! inference service), and JWTs.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};
use futures::future::BoxFuture;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nexus_gateway::{AuthConfig, Gateway, KeyStore, Principal, Role, RouteClass};
use serde_json::{Value, json};
use sqlx::AnyPool;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The HS256 secret test configurations use.
pub const SECRET: &str = "a-test-secret-of-reasonable-length";

/// One request per route class, as a client would send it.
pub const HTTP_SAMPLES: &[(RouteClass, &str, &str)] = &[
    (RouteClass::Health, "GET", "/v2/health/ready"),
    (RouteClass::Console, "GET", "/assets/index-3f2a.js"),
    (RouteClass::InferenceRead, "GET", "/api/v1/whoami"),
    (RouteClass::InferenceRead, "GET", "/v2/models/m"),
    (RouteClass::Infer, "POST", "/v2/models/m/infer"),
    (RouteClass::Feedback, "POST", "/v2/models/m/feedback"),
    (
        RouteClass::ModelControl,
        "POST",
        "/v2/repository/models/m/load",
    ),
    (
        RouteClass::RegistryRead,
        "GET",
        "/api/2.0/mlflow/registered-models/get",
    ),
    (
        RouteClass::RegistryRead,
        "POST",
        "/api/2.0/mlflow/runs/search",
    ),
    (
        RouteClass::RegistryWrite,
        "POST",
        "/api/2.0/mlflow/registered-models/create",
    ),
    (
        RouteClass::RegistryWrite,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/a/b.bin",
    ),
    (RouteClass::PipelineRead, "GET", "/api/v1/pipelines/runs"),
    (RouteClass::PipelineSubmit, "POST", "/api/v1/pipelines/runs"),
    (
        RouteClass::PipelineCancel,
        "POST",
        "/api/v1/pipelines/runs/r1/cancel",
    ),
    (RouteClass::OptimizerRead, "GET", "/api/v1/optimizer/state"),
    (
        RouteClass::OptimizerWrite,
        "POST",
        "/api/v1/optimizer/freeze",
    ),
    (RouteClass::Admin, "POST", "/api/v1/tokens"),
];

/// A key store on a new SQLite file (dropped with the directory).
pub async fn sqlite_keys() -> (TempDir, AnyPool, KeyStore) {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("nexus.db").display()
    );
    let pool = AnyPool::connect(&url).await.unwrap();
    let keys = KeyStore::new(pool.clone());
    keys.migrate().await.unwrap();
    (dir, pool, keys)
}

/// Answers every sample route with who called: `{"subject", "role"}` (nulls when the
/// gateway let the request through without a principal).
async fn echo(request: Request) -> axum::Json<Value> {
    let principal = request.extensions().get::<Principal>();
    axum::Json(json!({
        "subject": principal.map(|p| p.subject.clone()),
        "role": principal.map(|p| p.role.as_str()),
        "credential": principal.map(|p| p.credential.clone()),
    }))
}

/// A router with a route for every sample, behind `gateway`.
pub fn router(gateway: &Gateway) -> Router {
    let mut router = Router::new();
    for (class, method, path) in HTTP_SAMPLES {
        let method: Method = method.parse().unwrap();
        assert_eq!(
            nexus_gateway::policy::classify_http(&method, path),
            *class,
            "{method} {path}"
        );
        let route = match method.as_str() {
            "GET" => get(echo),
            "POST" => post(echo),
            "PUT" => axum::routing::put(echo),
            other => panic!("{other}"),
        };
        router = router.route(path, route);
    }
    router
        .route("/v2/models/{model}/infer", post(echo))
        .layer(gateway.http_layer())
}

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Server {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves `router` on a free loopback port, with the client address as connect info.
pub async fn serve_http(router: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server { addr, _stop: stop }
}

/// A gateway with auth on, HS256 JWTs and the given key store and extra settings.
pub async fn gateway(keys: Option<KeyStore>, tweak: impl FnOnce(&mut AuthConfig)) -> Gateway {
    let mut config = AuthConfig {
        enabled: true,
        jwt_hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    tweak(&mut config);
    Gateway::new(&config, keys).await.unwrap()
}

/// The limits the rate-limit tests run under: bursts of 3 per credential and 2 per model.
pub fn tight_limits(c: &mut AuthConfig) {
    c.per_credential_rps = Some(1.0);
    c.per_credential_burst = Some(3);
    c.per_model_rps = Some(0.5);
    c.per_model_burst = Some(2);
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token with `claims` (plus `exp` an hour ahead unless given).
pub fn hs256(claims: Value) -> String {
    sign(
        Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// A token for `role` signed with the test secret.
pub fn token_for(role: Role) -> String {
    hs256(json!({ "sub": format!("{role}-user"), "role": role.as_str() }))
}

/// Signs `claims` (adding `exp` an hour ahead unless given).
pub fn sign(header: Header, key: &EncodingKey, mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// A reqwest client that gives up quickly.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends `method path` with an optional `Authorization: Bearer` token; returns the status,
/// headers and JSON body (`Null` when not JSON).
pub async fn call(
    server: &Server,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client().request(method.parse().unwrap(), format!("{}{path}", server.url()));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.body("{}").send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

// ---- gRPC -------------------------------------------------------------------------------

/// The part of `ModelInferRequest` the tests need: its model name (field 1) and id (3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferRequest {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "3")]
    pub id: String,
    /// Stands in for tensor contents (field 7, raw_input_contents).
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub raw: Vec<Vec<u8>>,
}

/// What the stand-in service answers: the request's model and the caller it saw.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(uint64, tag = "3")]
    pub raw_bytes: u64,
    #[prost(string, tag = "4")]
    pub remote_addr: String,
}

/// `inference.GRPCInferenceService` answering every method as a unary call with [`Reply`].
#[derive(Clone)]
pub struct StandIn;

impl tonic::server::NamedService for StandIn {
    const NAME: &'static str = "inference.GRPCInferenceService";
}

struct Answer;

impl tonic::server::UnaryService<InferRequest> for Answer {
    type Response = Reply;
    type Future = std::future::Ready<Result<tonic::Response<Reply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<InferRequest>) -> Self::Future {
        let subject = request
            .extensions()
            .get::<Principal>()
            .map(|p| p.subject.clone())
            .unwrap_or_default();
        let remote_addr = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let message = request.into_inner();
        std::future::ready(Ok(tonic::Response::new(Reply {
            model_name: message.model_name,
            subject,
            raw_bytes: message.raw.iter().map(|r| r.len() as u64).sum(),
            remote_addr,
        })))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for StandIn {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<Reply, InferRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(Answer, request).await)
        })
    }
}

/// Serves the stand-in behind `gateway`'s gRPC layer on a free loopback port.
pub async fn serve_grpc(gateway: &Gateway) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .layer(gateway.grpc_layer())
        .add_service(StandIn);
    tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    Server { addr, _stop: stop }
}

/// A gRPC client of the stand-in.
pub async fn grpc_client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

/// Calls `method` of the inference service with `request` and `metadata` (name, value).
pub async fn grpc_call(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &str,
    message: InferRequest,
    metadata: &[(&'static str, String)],
) -> Result<Reply, tonic::Status> {
    let mut request = tonic::Request::new(message);
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    client.ready().await.unwrap();
    let path = format!("/inference.GRPCInferenceService/{method}");
    let codec = tonic_prost::ProstCodec::<InferRequest, Reply>::default();
    client
        .unary(request, path.parse().unwrap(), codec)
        .await
        .map(tonic::Response::into_inner)
}
