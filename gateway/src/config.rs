//! The gateway's settings, as the `[auth]` table of the configuration file gives them.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::GatewayError;

/// Authentication, authorisation and rate limits. Every field has a default, so an empty
/// table (or none) means: no authentication, no limits.
///
/// It derives both `serde::Deserialize` (an `[auth]` table: the field names) and
/// `clap::Args` (flags for `nexus serve`/`up`, named in each field's `#[arg]`; with the
/// layered config, a file key is the flag's name with `_` for `-`, e.g. `auth = true`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a credential (API key or JWT) on every request except health probes.
    #[arg(id = "auth", long = "auth")]
    pub enabled: bool,
    /// Secret of HS256-signed JWTs.
    #[arg(long, value_name = "SECRET")]
    pub jwt_hs256_secret: Option<String>,
    /// A JSON Web Key Set file with the public keys of RS256/ES256-signed JWTs.
    #[arg(long, value_name = "PATH")]
    pub jwks_file: Option<PathBuf>,
    /// A URL serving the JSON Web Key Set (an identity provider's `jwks_uri`).
    #[arg(long, value_name = "URL")]
    pub jwks_url: Option<String>,
    /// Seconds between reloads of the key set (default 300); an unknown `kid` also reloads
    /// it, at most every 30 s.
    #[arg(long, value_name = "SECS")]
    pub jwks_refresh_secs: Option<u64>,
    /// Required `iss` of JWTs.
    #[arg(id = "jwt_issuer", long = "jwt-issuer", value_name = "ISS")]
    pub issuer: Option<String>,
    /// Required `aud` of JWTs (one of the token's audiences).
    #[arg(id = "jwt_audience", long = "jwt-audience", value_name = "AUD")]
    pub audience: Option<String>,
    /// Claim holding the role: a string, or an array (the highest known role wins); a dotted
    /// path reaches into objects (`realm_access.roles`). Default: `role`, then `roles`.
    #[arg(id = "jwt_role_claim", long = "jwt-role-claim", value_name = "CLAIM")]
    pub role_claim: Option<String>,
    /// Seconds of clock skew allowed on JWT `exp` and `nbf` (default 60).
    #[arg(long, value_name = "SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Sustained requests per second per credential (per client address without auth).
    #[arg(long, value_name = "RPS")]
    pub per_credential_rps: Option<f64>,
    /// Requests a credential may make at once above its rate (default: one second's worth).
    #[arg(long, value_name = "N")]
    pub per_credential_burst: Option<u32>,
    /// Sustained inference and feedback requests per second per model, all callers together.
    #[arg(long, value_name = "RPS")]
    pub per_model_rps: Option<f64>,
    /// Burst above the per-model rate (default: one second's worth).
    #[arg(long, value_name = "N")]
    pub per_model_burst: Option<u32>,
    /// Failed authentications (a wrong or expired key or JWT) forgiven per second per client
    /// address; beyond the burst, that address gets 429 until it is forgiven. 0 turns the
    /// limit off (e.g. for a trusted proxy that all clients share). Default 1.
    #[arg(long, value_name = "RPS")]
    pub auth_failure_rps: Option<f64>,
    /// Failed authentications a client address may make at once (default 20).
    #[arg(long, value_name = "N")]
    pub auth_failure_burst: Option<u32>,
}

/// Failed authentications forgiven per second per address when not configured.
pub const DEFAULT_AUTH_FAILURE_RPS: f64 = 1.0;
/// Failed authentications an address may make at once when not configured.
pub const DEFAULT_AUTH_FAILURE_BURST: u32 = 20;

impl fmt::Debug for AuthConfig {
    /// Like the derived form, with the HS256 secret hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field(
                "jwt_hs256_secret",
                &self.jwt_hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("role_claim", &self.role_claim)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .field("per_credential_rps", &self.per_credential_rps)
            .field("per_credential_burst", &self.per_credential_burst)
            .field("per_model_rps", &self.per_model_rps)
            .field("per_model_burst", &self.per_model_burst)
            .field("auth_failure_rps", &self.auth_failure_rps)
            .field("auth_failure_burst", &self.auth_failure_burst)
            .finish()
    }
}

/// Certificates for serving HTTPS and gRPC over TLS, as flags (`--tls-cert`, `--tls-key`,
/// `--tls-client-ca`) or a table with the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server (serve TLS when given, with --tls-key).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the server certificate.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates: clients must present one (mutual TLS).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// The rustls configuration, or `None` when no certificate is configured (plain TCP).
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, GatewayError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_none() => Ok(None),
            (Some(cert), Some(key)) => {
                crate::tls::server_config(cert, key, self.tls_client_ca.as_deref()).map(Some)
            }
            _ => Err(GatewayError::Config(
                "TLS needs both tls_cert and tls_key (and tls_client_ca only with them)".into(),
            )),
        }
    }
}

/// Refuses to listen on a non-loopback address without authentication unless the user said
/// `--insecure`: a server reachable from the network must not take writes from anyone by
/// accident.
pub fn check_bind(addr: IpAddr, auth_enabled: bool, insecure: bool) -> Result<(), GatewayError> {
    if addr.is_loopback() || auth_enabled || insecure {
        return Ok(());
    }
    Err(GatewayError::UnsafeBind(format!(
        "refusing to listen on {addr} without authentication: anyone who can reach it could \
         load models, change the registry and run pipelines. Turn authentication on \
         (--auth, or `auth = true` in the config file; then create a key with \
         `nexus token create --role admin`), or listen on 127.0.0.1 only, or pass --insecure \
         if the network in front of this server already controls access"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(check_bind(lo, false, false).is_ok());
        assert!(check_bind(lo6, false, false).is_ok());
        assert!(check_bind(any, true, false).is_ok());
        assert!(check_bind(any, false, true).is_ok());
        let message = check_bind(any, false, false).unwrap_err().to_string();
        assert!(message.contains("--insecure"), "{message}");
        assert!(message.contains("nexus token create"), "{message}");
    }

    #[test]
    fn flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            auth: AuthConfig,
            #[command(flatten)]
            tls: TlsConfig,
        }
        let cli = Cli::parse_from([
            "nexus",
            "--auth",
            "--jwt-issuer",
            "i",
            "--per-model-rps",
            "2.5",
        ]);
        assert!(cli.auth.enabled);
        assert_eq!(cli.auth.issuer.as_deref(), Some("i"));
        assert_eq!(cli.auth.per_model_rps, Some(2.5));
        assert!(cli.tls.server_config().unwrap().is_none());
        assert!(Cli::try_parse_from(["nexus", "--tls-cert", "c.pem"]).is_err());
        let half = TlsConfig {
            tls_client_ca: Some("ca.pem".into()),
            ..TlsConfig::default()
        };
        assert!(half.server_config().is_err());
    }

    #[test]
    fn config_parses_and_rejects_unknown_fields() {
        let config: AuthConfig = serde_json::from_str(
            r#"{"enabled": true, "jwt_hs256_secret": "s", "per_model_rps": 2.5}"#,
        )
        .unwrap();
        assert!(config.enabled);
        assert_eq!(config.per_model_rps, Some(2.5));
        assert!(!format!("{config:?}").contains("\"s\""));
        assert!(serde_json::from_str::<AuthConfig>(r#"{"enable": true}"#).is_err());
        assert_eq!(
            serde_json::from_str::<AuthConfig>("{}").unwrap(),
            AuthConfig::default()
        );
    }
}
