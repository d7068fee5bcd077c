//! The front door of Nexus: who may call the HTTP and gRPC servers, and how often.
//!
//! - [`policy`]: the roles, the route class of every endpoint and the rights table.
//! - [`KeyStore`]: API keys (`nexus_…`), hashed in the registry's database.
//! - JWTs (HS256 secret, or RS/ES keys from a JWKS file or URL), configured in [`AuthConfig`].
//! - [`Gateway`]: one decision per request (authenticate → authorise → rate limit), used by
//!   the axum layer ([`AuthLayer`]) and the tonic layer ([`GrpcAuthLayer`]); the caller's
//!   [`Principal`] goes into the request's extensions.
//! - [`tls`]: rustls server configuration (optionally mutual TLS, from [`TlsConfig`]) and a
//!   listener serving both axum and tonic.
//! - [`check_bind`]: refuses to expose an unauthenticated server on the network.
//! - [`serve_http`]: serves an axum router, plain or TLS, recording client addresses.
//! - [`cli`]: `nexus token create|list|revoke`.
//! - [`whoami`]: `GET /api/v1/whoami`, the caller's identity and rights.
//!
//! Failed authentications are limited per client address (`--auth-failure-rps`,
//! `--auth-failure-burst`): once over, the address gets 429 / RESOURCE_EXHAUSTED before any
//! credential of it is checked.
//!
//! Metrics: `nexus_auth_denied_total{reason, protocol}` and
//! `nexus_rate_limited_total{scope, protocol}` (scope `credential`, `model` or
//! `auth_failures`).
//!
//! # Wiring
//!
//! ```ignore
//! // `auth: AuthConfig` and `tls: TlsConfig` flattened into the serve/up arguments.
//! let keys = KeyStore::new(registry.store.pool().clone());
//! let gateway = Gateway::new(&auth, Some(keys)).await?;
//! check_bind(args.address, gateway.enabled(), args.insecure)?;
//! let tls = tls.server_config()?;
//!
//! // HTTP: the layer goes on the final, merged router (inside tracing, so refusals are
//! // logged with their request id).
//! let app = router.merge(other_routes).layer(gateway.http_layer()).layer(trace_layers);
//! match tls.clone() {
//!     Some(config) => {
//!         let listener = TlsListener::new(http_tcp, config)?;
//!         let app = app.into_make_service_with_connect_info::<TlsConnectInfo>();
//!         axum::serve(listener, app).with_graceful_shutdown(shutdown).await?
//!     }
//!     None => {
//!         let app = app.into_make_service_with_connect_info::<SocketAddr>();
//!         axum::serve(http_tcp, app).with_graceful_shutdown(shutdown).await?
//!     }
//! }
//!
//! // gRPC: the layer over the whole tonic server.
//! let server = tonic::transport::Server::builder()
//!     .layer(gateway.grpc_layer())
//!     .add_service(inference_service);
//! match tls {
//!     Some(config) => {
//!         let incoming = TlsListener::new(grpc_tcp, config)?.into_incoming();
//!         server.serve_with_incoming_shutdown(incoming, shutdown).await?
//!     }
//!     None => server.serve_with_incoming_shutdown(TcpListenerStream::new(grpc_tcp), shutdown).await?,
//! }
//! ```

pub mod cli;
mod config;
mod error;
mod gateway;
mod grpc;
mod http;
mod jwt;
mod keys;
mod limits;
pub mod policy;
pub mod tls;
pub mod whoami;

pub use config::{AuthConfig, TlsConfig, check_bind};
pub use error::GatewayError;
pub use gateway::{Denial, Gateway, LimitScope, Principal};
pub use grpc::{GrpcAuthLayer, GrpcAuthService};
pub use http::{AuthLayer, AuthService, serve_http, set_nodelay};
pub use keys::{KEY_CACHE_TTL, KeyInfo, KeyStore};
pub use policy::{Role, RouteClass, allowed};
