//! The decision for one request, shared by the HTTP and the gRPC front ends: who is calling
//! (API key or JWT), whether their role may make this request, and whether their rate and
//! the model's rate allow it now.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::AUTHORIZATION;
use http::{Extensions, HeaderMap};
use subtle::ConstantTimeEq;

use crate::config::{DEFAULT_AUTH_FAILURE_BURST, DEFAULT_AUTH_FAILURE_RPS};
use crate::jwt::JwtVerifier;
use crate::keys::{KEY_PREFIX, KeyStore};
use crate::limits::{FailureLimiter, Limiter};
use crate::policy::{RouteClass, allowed};
use crate::tls::TlsConnectInfo;
use crate::{AuthConfig, AuthLayer, GatewayError, GrpcAuthLayer, Role};

/// Who made a request: put into the request's extensions by the layers, for handlers that
/// want to record or check it (`Extension<Principal>` in axum, `request.extensions()` in
/// tonic). Absent when authentication is off and on health probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name or the JWT's `sub`.
    pub subject: String,
    /// What the principal may do.
    pub role: Role,
    /// The credential, `key:<id>` or `jwt:<sub>`: the unit of per-credential rate limits.
    pub credential: String,
}

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// The caller's own rate.
    Credential,
    /// The model's rate, shared by all callers.
    Model,
    /// The failed authentications of the caller's address.
    AuthFailures,
}

impl LimitScope {
    /// The `scope` label of `nexus_rate_limited_total`.
    fn label(self) -> &'static str {
        match self {
            LimitScope::Credential => "credential",
            LimitScope::Model => "model",
            LimitScope::AuthFailures => "auth_failures",
        }
    }
}

/// Why a request was refused; each front end turns it into its protocol's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credential, or one that is not valid (HTTP 401, gRPC UNAUTHENTICATED).
    Unauthenticated(String),
    /// A valid credential whose role does not allow this (HTTP 403, gRPC PERMISSION_DENIED).
    Forbidden(String),
    /// Over a rate limit; try again after the given time (HTTP 429, gRPC RESOURCE_EXHAUSTED).
    RateLimited {
        /// Whose rate.
        scope: LimitScope,
        /// When a request would be accepted again.
        retry_after: Duration,
    },
    /// The key store cannot be reached (HTTP 503, gRPC UNAVAILABLE).
    Unavailable(String),
}

impl Denial {
    /// The message shown to the client.
    pub fn message(&self) -> String {
        match self {
            Denial::Unauthenticated(m) | Denial::Forbidden(m) | Denial::Unavailable(m) => m.clone(),
            Denial::RateLimited { scope, retry_after } => format!(
                "{}; retry in {} s",
                match scope {
                    LimitScope::Credential => "rate limit of this credential exceeded",
                    LimitScope::Model => "rate limit of this model exceeded",
                    LimitScope::AuthFailures => "too many failed authentications from this address",
                },
                retry_secs(*retry_after)
            ),
        }
    }
}

/// Whole seconds to wait, rounded up (a `Retry-After` of 0 would invite a busy loop).
pub(crate) fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The API key header (also accepted as gRPC metadata).
const X_API_KEY: &str = "x-api-key";

/// The protocol, as metrics label it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The front door's state: credentials, policy and rate limits. Cheap to clone; build it
/// once and hand [`Gateway::http_layer`] and [`Gateway::grpc_layer`] to the servers.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    /// A credential only this process knows, for its own calls to itself (the registry
    /// watcher and promotions reach the registry over HTTP). Never stored or logged.
    internal: String,
    keys: Option<KeyStore>,
    jwt: Option<JwtVerifier>,
    per_credential: Option<Limiter>,
    per_model: Option<Limiter>,
    /// Failed authentications per client address (`None`: not limited).
    auth_failures: Option<FailureLimiter>,
}

impl Gateway {
    /// A gateway for `config`. API keys are accepted when `keys` is given; JWTs when the
    /// config names a secret or key set. A key set file is read now; a key set URL is
    /// fetched now and retried in the background if that fails. Needs a tokio runtime.
    pub async fn new(config: &AuthConfig, keys: Option<KeyStore>) -> Result<Self, GatewayError> {
        let jwt = JwtVerifier::new(config).await?;
        if config.enabled && keys.is_none() && jwt.is_none() {
            return Err(GatewayError::Config(
                "authentication is enabled but nothing can issue credentials: give the \
                 database for API keys, or jwt_hs256_secret, jwks_file or jwks_url"
                    .into(),
            ));
        }
        if let Some(keys) = &keys
            && let Err(e) = keys.migrate().await
        {
            // The database may come back; the first key check retries.
            tracing::warn!(error = %e, "API key table not ready");
        }
        let per_credential = config
            .per_credential_rps
            .map(|rps| Limiter::new("per_credential", rps, config.per_credential_burst))
            .transpose()?;
        let per_model = config
            .per_model_rps
            .map(|rps| Limiter::new("per_model", rps, config.per_model_burst))
            .transpose()?;
        let auth_failures = FailureLimiter::new(
            config.auth_failure_rps.unwrap_or(DEFAULT_AUTH_FAILURE_RPS),
            config
                .auth_failure_burst
                .unwrap_or(DEFAULT_AUTH_FAILURE_BURST),
        )?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                enabled: config.enabled,
                internal: format!("internal_{:032x}", rand::random::<u128>()),
                keys,
                jwt,
                per_credential,
                per_model,
                auth_failures,
            }),
        })
    }

    /// Whether requests need a credential.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The credential this process's own clients send to itself; admin, valid until exit.
    pub fn internal_token(&self) -> &str {
        &self.inner.internal
    }

    /// The tower layer for the axum HTTP router.
    pub fn http_layer(&self) -> AuthLayer {
        AuthLayer::new(self.clone())
    }

    /// The tower layer for the tonic gRPC server (`Server::builder().layer(…)`).
    pub fn grpc_layer(&self) -> GrpcAuthLayer {
        GrpcAuthLayer::new(self.clone())
    }

    /// Authenticates, authorises and applies the per-credential limit. `Ok(None)`: let
    /// through without a principal (probes and the console's files; everything when auth
    /// is off).
    pub(crate) async fn admit(
        &self,
        protocol: Protocol,
        class: RouteClass,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Option<Principal>, Denial> {
        if class.is_open() {
            return Ok(None);
        }
        if !self.inner.enabled {
            let key = client.map_or_else(|| "anonymous".to_string(), |ip| format!("ip:{ip}"));
            self.limit(protocol, LimitScope::Credential, &key)?;
            return Ok(None);
        }
        let failures = self.inner.auth_failures.as_ref().zip(client);
        if let Some((limiter, ip)) = failures
            && let Err(retry_after) = limiter.check(ip)
        {
            return Err(rate_limited(
                protocol,
                LimitScope::AuthFailures,
                retry_after,
            ));
        }
        let principal = match self.authenticate(headers).await {
            Ok(p) => p,
            Err(denial) => {
                record_denial(protocol, &denial);
                // A wrong credential counts against the address; a missing one guesses
                // nothing and costs no check, so it does not.
                let presented =
                    headers.contains_key(AUTHORIZATION) || headers.contains_key(X_API_KEY);
                if let (Some((limiter, ip)), Denial::Unauthenticated(_), true) =
                    (failures, &denial, presented)
                {
                    limiter.failed(ip);
                }
                return Err(denial);
            }
        };
        if !allowed(principal.role, class) {
            let denial = Denial::Forbidden(format!(
                "role '{}' may not make this request ({class:?})",
                principal.role
            ));
            record_denial(protocol, &denial);
            return Err(denial);
        }
        self.limit(protocol, LimitScope::Credential, &principal.credential)?;
        Ok(Some(principal))
    }

    /// Applies the per-model limit of inference and feedback requests.
    pub(crate) fn limit_model(&self, protocol: Protocol, model: &str) -> Result<(), Denial> {
        self.limit(protocol, LimitScope::Model, model)
    }

    /// Whether a per-model limit is configured (so finding the model is worth it).
    pub(crate) fn limits_models(&self) -> bool {
        self.inner.per_model.is_some()
    }

    fn limit(&self, protocol: Protocol, scope: LimitScope, key: &str) -> Result<(), Denial> {
        let limiter = match scope {
            LimitScope::Credential => &self.inner.per_credential,
            LimitScope::Model => &self.inner.per_model,
            // Counts failures, not requests: `admit` applies it.
            LimitScope::AuthFailures => &None,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter
            .check(key)
            .map_err(|retry_after| rate_limited(protocol, scope, retry_after))
    }

    /// The principal behind a request's credential: `X-API-Key`, or `Authorization` with a
    /// Bearer API key or JWT, or Basic with an API key as the password (MLflow clients
    /// given MLFLOW_TRACKING_USERNAME/PASSWORD send that).
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Denial> {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| {
                    v.to_str().map(str::trim).map_err(|_| {
                        Denial::Unauthenticated(format!("the {name} header is not ASCII"))
                    })
                })
                .transpose()
        };
        let token = if let Some(value) = header(AUTHORIZATION.as_str())? {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                rest.to_string()
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic_password(rest).ok_or_else(|| {
                    Denial::Unauthenticated(
                        "Basic credentials must carry an API key as the password".into(),
                    )
                })?
            } else {
                return Err(Denial::Unauthenticated(
                    "unsupported Authorization scheme: use Bearer <API key or JWT>".into(),
                ));
            }
        } else if let Some(value) = header(X_API_KEY)? {
            value.to_string()
        } else {
            return Err(Denial::Unauthenticated(
                "missing credentials: send Authorization: Bearer <API key or JWT>, or X-API-Key: <API key>"
                    .into(),
            ));
        };

        // Constant time: how long a comparison takes must not tell a guesser how many of
        // its leading characters were right. (API keys are looked up by their SHA-256, which
        // a guesser cannot steer towards a stored one; JWT signatures are checked by
        // jsonwebtoken/aws-lc, in constant time.)
        if bool::from(token.as_bytes().ct_eq(self.inner.internal.as_bytes())) {
            return Ok(Principal {
                subject: "nexus".into(),
                role: crate::Role::Admin,
                credential: "internal".into(),
            });
        }
        if token.starts_with(KEY_PREFIX) {
            let Some(keys) = &self.inner.keys else {
                return Err(Denial::Unauthenticated(
                    "API keys are not accepted by this server".into(),
                ));
            };
            match keys.verify(&token).await {
                Ok(Some(principal)) => Ok(principal),
                Ok(None) => Err(Denial::Unauthenticated(
                    "invalid API key (unknown, revoked or expired)".into(),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "API key check failed");
                    Err(Denial::Unavailable(
                        "the API key store is unavailable; try again".into(),
                    ))
                }
            }
        } else {
            match &self.inner.jwt {
                Some(jwt) => jwt.verify(&token).await,
                None => Err(Denial::Unauthenticated(
                    "not an API key (nexus_…), and JWTs are not accepted by this server".into(),
                )),
            }
        }
    }
}

/// The password of `Basic` credentials, when it is an API key.
fn basic_password(encoded: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, password) = decoded.split_once(':')?;
    password
        .starts_with(KEY_PREFIX)
        .then(|| password.to_string())
}

/// Counts a rate-limit refusal and makes its denial.
fn rate_limited(protocol: Protocol, scope: LimitScope, retry_after: Duration) -> Denial {
    metrics::counter!(
        "nexus_rate_limited_total",
        "scope" => scope.label(),
        "protocol" => protocol.label(),
    )
    .increment(1);
    Denial::RateLimited { scope, retry_after }
}

fn record_denial(protocol: Protocol, denial: &Denial) {
    let reason = match denial {
        Denial::Unauthenticated(_) => "unauthenticated",
        Denial::Forbidden(_) => "forbidden",
        Denial::RateLimited { .. } | Denial::Unavailable(_) => return,
    };
    metrics::counter!(
        "nexus_auth_denied_total",
        "reason" => reason,
        "protocol" => protocol.label(),
    )
    .increment(1);
}

/// The client's address, from whichever connection info the server recorded: axum's
/// `ConnectInfo` (plain or [`TlsConnectInfo`]) or tonic's `TcpConnectInfo`.
pub(crate) fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    use axum::extract::ConnectInfo;
    if let Some(ConnectInfo(addr)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        return Some(addr.ip());
    }
    if let Some(ConnectInfo(info)) = extensions.get::<ConnectInfo<TlsConnectInfo>>() {
        return Some(info.remote_addr.ip());
    }
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr)
        .map(|addr| addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_secs(Duration::ZERO), 1);
    }

    #[test]
    fn basic_carries_api_keys_only() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            basic_password(&enc("user:nexus_abc")),
            Some("nexus_abc".into())
        );
        assert_eq!(basic_password(&enc("user:password")), None);
        assert_eq!(basic_password("%%%"), None);
    }
}
