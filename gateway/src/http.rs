//! The HTTP front end: a tower layer for the axum router that classifies, authenticates,
//! authorises and rate-limits each request, and answers refusals in the error shape of the
//! API the path belongs to (MLflow's `{"error_code", "message"}` or V2's `{"error"}`).

use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use axum::extract::OriginalUri;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, StatusCode, header};
use serde_json::json;
use tokio::net::TcpListener;
use tower::{Layer, Service};

use crate::gateway::{Protocol, client_ip, retry_secs};
use crate::policy::{classify_http, is_mlflow_path, model_from_path};
use crate::tls::{ServerTls, TlsConnectInfo, TlsListener};
use crate::{Denial, Gateway};

/// Serves `app` on `listener` until `shutdown` completes: over TLS when `tls` is given, and
/// with the client's address recorded, which the gateway's per-address limits need. Put
/// the gateway's layer ([`Gateway::http_layer`]) in `app` first, where the caller's stack
/// wants it. One place for `nexus serve`/`up`'s HTTP port and `nexus registry`.
pub async fn serve_http(
    app: axum::Router,
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            let app = app.into_make_service_with_connect_info::<TlsConnectInfo>();
            axum::serve(TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener.tap_io(set_nodelay), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Turns Nagle's algorithm off on an accepted connection. With it on, a reply written in
/// two parts (headers, then a streamed body) waits for the client's delayed ACK: a 40 ms
/// stall per small download. For every HTTP listener (`axum::serve(listener.tap_io(...))`).
pub fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Tower layer putting the gateway in front of an axum router (`router.layer(layer)`).
/// Cheap to clone.
#[derive(Clone)]
pub struct AuthLayer {
    gateway: Gateway,
}

impl AuthLayer {
    /// The layer for `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        AuthLayer { gateway }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    gateway: Gateway,
}

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is the one that was not polled ready; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        Box::pin(async move {
            // Inside a nested router the URI has lost its prefix; classify the full path.
            let path = match request.extensions().get::<OriginalUri>() {
                Some(OriginalUri(uri)) => uri.path().to_owned(),
                None => request.uri().path().to_owned(),
            };
            let path = path.as_str();
            let class = classify_http(request.method(), path);
            let client = client_ip(request.extensions());
            let admitted = gateway
                .admit(Protocol::Http, class, request.headers(), client)
                .await;
            let admitted = admitted.and_then(|principal| {
                if class.per_model()
                    && gateway.limits_models()
                    && let Some(model) = model_from_path(path)
                {
                    gateway.limit_model(Protocol::Http, &model)?;
                }
                Ok(principal)
            });
            match admitted {
                Ok(principal) => {
                    if let Some(principal) = principal {
                        request.extensions_mut().insert(principal);
                    }
                    inner.call(request).await
                }
                Err(denial) => Ok(refusal(&denial, path)),
            }
        })
    }
}

/// The HTTP answer to a refusal, in the error shape of the API `path` belongs to.
pub(crate) fn refusal(denial: &Denial, path: &str) -> Response {
    let (status, code) = match denial {
        Denial::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Denial::Forbidden(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Denial::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Denial::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
    };
    let message = denial.message();
    let body = if is_mlflow_path(path) {
        json!({ "error_code": code, "message": message })
    } else {
        json!({ "error": message })
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    match denial {
        Denial::Unauthenticated(_) => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Denial::RateLimited { retry_after, .. } => {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_secs(*retry_after)),
            );
        }
        Denial::Forbidden(_) | Denial::Unavailable(_) => {}
    }
    response
}
