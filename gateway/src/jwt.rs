//! JSON Web Tokens: HS256 with a shared secret, RS*/PS*/ES*/EdDSA against a JSON Web Key
//! Set read from a file or an identity provider's URL and reloaded periodically.
//!
//! The algorithm a token may use follows from where its key comes from (the secret: HS256
//! only; a JWKS key: its own family and, when the key says, its own `alg`), so a token can
//! never pick a weaker check (the RS256/HS256 confusion).

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{AuthConfig, Denial, GatewayError, Principal, Role};

/// Default seconds between reloads of the key set.
const DEFAULT_REFRESH_SECS: u64 = 300;
/// An unknown `kid` reloads the key set at most this often.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// Longest wait for a key set URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks JWTs; built from [`AuthConfig`].
pub(crate) struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    role_claim: Option<String>,
}

impl JwtVerifier {
    /// The verifier the configuration asks for; `None` when it configures no JWT key.
    /// A key set file must load now; a key set URL that cannot be fetched now is retried in
    /// the background (tokens it signs are refused until then).
    pub(crate) async fn new(config: &AuthConfig) -> Result<Option<Self>, GatewayError> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(_), Some(_)) => {
                return Err(GatewayError::Config(
                    "set jwks_file or jwks_url, not both".into(),
                ));
            }
            (Some(path), None) => Some(Source::File(path.clone())),
            (None, Some(url)) => Some(Source::Url(url.clone())),
            (None, None) => None,
        };
        let hs256 = match config.jwt_hs256_secret.as_deref() {
            Some("") => {
                return Err(GatewayError::Config(
                    "jwt_hs256_secret is empty: give a long random secret or remove it".into(),
                ));
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        if hs256.is_none() && source.is_none() {
            return Ok(None);
        }
        let jwks = match source {
            Some(source) => {
                let jwks = Arc::new(Jwks::new(source)?);
                match jwks.reload().await {
                    Ok(()) => {}
                    Err(e) if matches!(jwks.source, Source::Url(_)) => {
                        tracing::warn!(error = %e, "JWKS not loaded; retrying in the background");
                    }
                    Err(e) => return Err(e),
                }
                let every = Duration::from_secs(
                    config
                        .jwks_refresh_secs
                        .unwrap_or(DEFAULT_REFRESH_SECS)
                        .max(1),
                );
                tokio::spawn(refresh(Arc::downgrade(&jwks), every));
                Some(jwks)
            }
            None => None,
        };
        Ok(Some(JwtVerifier {
            hs256,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.jwt_leeway_secs.unwrap_or(60),
            role_claim: config.role_claim.clone(),
        }))
    }

    /// The principal of a valid token.
    pub(crate) async fn verify(&self, token: &str) -> Result<Principal, Denial> {
        let invalid = |why: String| Denial::Unauthenticated(format!("invalid JWT: {why}"));
        let header = decode_header(token).map_err(|e| invalid(e.to_string()))?;
        let validation = self.validation(header.alg);
        let claims: Value = if header.alg == Algorithm::HS256 {
            let key = self
                .hs256
                .as_ref()
                .ok_or_else(|| invalid("HS256 tokens are not accepted here".into()))?;
            decode::<Value>(token, key, &validation)
                .map_err(|e| invalid(explain(&e)))?
                .claims
        } else {
            let jwks = self
                .jwks
                .as_ref()
                .ok_or_else(|| invalid(format!("{:?} tokens are not accepted here", header.alg)))?;
            let mut keys = jwks.candidates(header.alg, header.kid.as_deref());
            if keys.is_empty() && header.kid.is_some() {
                jwks.reload_for_unknown_kid().await;
                keys = jwks.candidates(header.alg, header.kid.as_deref());
            }
            if keys.is_empty() {
                return Err(invalid(format!(
                    "no key in the key set for kid {:?} and {:?}",
                    header.kid, header.alg
                )));
            }
            let mut last = None;
            let mut claims = None;
            for key in keys {
                match decode::<Value>(token, &key.key, &validation) {
                    Ok(data) => {
                        claims = Some(data.claims);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (claims, last) {
                (Some(claims), _) => claims,
                (None, Some(e)) => return Err(invalid(explain(&e))),
                // Unreachable: keys was not empty, so one of the two was set.
                (None, None) => return Err(invalid("no usable key".into())),
            }
        };
        let role = self.role(&claims).ok_or_else(|| {
            Denial::Forbidden(format!(
                "the token carries no Nexus role in claim '{}' (admin, deployer, runner, inference or reader)",
                self.role_claim.as_deref().unwrap_or("role")
            ))
        })?;
        let subject = claims.get("sub").and_then(Value::as_str);
        let credential = match subject {
            Some(sub) => format!("jwt:{sub}"),
            None => {
                let digest = Sha256::digest(token.as_bytes());
                let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("jwt:#{short}")
            }
        };
        Ok(Principal {
            subject: subject.unwrap_or("unknown").to_string(),
            role,
            credential,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// The highest known role in the role claim.
    fn role(&self, claims: &Value) -> Option<Role> {
        match &self.role_claim {
            Some(claim) => highest(lookup(claims, claim)?),
            None => ["role", "roles"]
                .iter()
                .find_map(|c| highest(lookup(claims, c)?)),
        }
    }
}

/// A claim by name, or by a dotted path into nested objects when no claim has that name
/// (names such as `https://example.com/roles` contain dots themselves).
fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| {
        name.split('.')
            .try_fold(claims, |value, part| value.get(part))
    })
}

/// The highest role named by a string (several separated by spaces or commas) or an array.
fn highest(value: &Value) -> Option<Role> {
    let names: Vec<&str> = match value {
        Value::String(s) => s.split([' ', ',']).collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    names.into_iter().filter_map(|n| n.parse().ok()).max()
}

/// Why jsonwebtoken refused a token, in words a user can act on.
fn explain(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidIssuer => "wrong issuer (iss)".into(),
        K::InvalidAudience => "wrong audience (aud)".into(),
        K::MissingRequiredClaim(claim) => format!("the token has no '{claim}' claim"),
        K::InvalidAlgorithm => "algorithm not allowed for this key".into(),
        _ => e.to_string(),
    }
}

/// Where a key set comes from.
enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Url(url) => url.clone(),
        }
    }
}

/// One usable public key of a key set.
struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when it names one.
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm as A;
    match alg {
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => Some(Family::Rsa),
        A::ES256 | A::ES384 => Some(Family::Ec),
        A::EdDSA => Some(Family::Ed),
        _ => None,
    }
}

/// A JSON Web Key Set, reloaded in place.
struct Jwks {
    source: Source,
    client: reqwest::Client,
    keys: Mutex<Arc<Vec<Key>>>,
    /// When the last reload was tried, for the unknown-`kid` reload's rate.
    last_attempt: Mutex<Option<Instant>>,
    reloading: tokio::sync::Mutex<()>,
}

impl Jwks {
    fn new(source: Source) -> Result<Self, GatewayError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| GatewayError::Jwks {
                source_name: source.name(),
                message: format!("HTTP client: {e}"),
            })?;
        Ok(Jwks {
            source,
            client,
            keys: Mutex::new(Arc::new(Vec::new())),
            last_attempt: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Keys that may have signed a token with `alg` and `kid`.
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<KeyRef> {
        let Some(family) = family_of(alg) else {
            return Vec::new();
        };
        let keys = Arc::clone(&self.keys.lock());
        (0..keys.len())
            .filter(|&i| {
                let k = &keys[i];
                k.family == family
                    && k.alg.is_none_or(|a| a == alg)
                    && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
            })
            .map(|index| KeyRef {
                keys: Arc::clone(&keys),
                index,
            })
            .collect()
    }

    /// Reads the key set again and swaps it in; the old one stays on failure.
    async fn reload(&self) -> Result<(), GatewayError> {
        *self.last_attempt.lock() = Some(Instant::now());
        let err = |message: String| GatewayError::Jwks {
            source_name: self.source.name(),
            message,
        };
        let text = match &self.source {
            Source::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| err(e.to_string()))?,
            Source::Url(url) => {
                let response = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| err(e.to_string()))?;
                response.text().await.map_err(|e| err(e.to_string()))?
            }
        };
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| err(format!("not a JWK set: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                // Shared secrets do not belong in a published key set.
                _ => continue,
            };
            let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
                Some(Ok(alg)) => Some(alg),
                // An encryption algorithm (RSA-OAEP and the like): not for signatures.
                Some(Err(_)) => continue,
                None => None,
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    family,
                    key,
                }),
                Err(e) => tracing::warn!(kid = ?jwk.common.key_id, error = %e, "JWKS key skipped"),
            }
        }
        if keys.is_empty() {
            return Err(err("no usable signing key in the set".into()));
        }
        tracing::debug!(keys = keys.len(), source = %self.source.name(), "JWKS loaded");
        *self.keys.lock() = Arc::new(keys);
        Ok(())
    }

    /// Reloads for a token whose `kid` is unknown (the provider rotated its keys), unless a
    /// reload was tried in the last [`MIN_RELOAD_INTERVAL`].
    async fn reload_for_unknown_kid(&self) {
        let _turn = self.reloading.lock().await;
        if self
            .last_attempt
            .lock()
            .is_some_and(|t| t.elapsed() < MIN_RELOAD_INTERVAL)
        {
            return;
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "JWKS reload failed");
        }
    }
}

/// A key of one loaded set, kept alive while a token is checked against it.
struct KeyRef {
    keys: Arc<Vec<Key>>,
    index: usize,
}

impl std::ops::Deref for KeyRef {
    type Target = Key;
    fn deref(&self) -> &Key {
        &self.keys[self.index]
    }
}

/// Reloads the key set every `every` until the verifier is dropped.
async fn refresh(jwks: Weak<Jwks>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(jwks) = jwks.upgrade() else {
            return;
        };
        let _turn = jwks.reloading.lock().await;
        if let Err(e) = jwks.reload().await {
            tracing::warn!(error = %e, "JWKS reload failed; keeping the keys loaded before");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_from_claims() {
        assert_eq!(highest(&json!("deployer")), Some(Role::Deployer));
        assert_eq!(highest(&json!(["reader", "admin", "x"])), Some(Role::Admin));
        assert_eq!(highest(&json!("openid runner")), Some(Role::Runner));
        assert_eq!(highest(&json!(["x"])), None);
        assert_eq!(highest(&json!(3)), None);
        let claims =
            json!({"realm_access": {"roles": ["inference"]}, "https://x.io/role": "admin"});
        assert_eq!(
            lookup(&claims, "realm_access.roles").and_then(highest),
            Some(Role::Inference)
        );
        assert_eq!(
            lookup(&claims, "https://x.io/role").and_then(highest),
            Some(Role::Admin)
        );
    }
}
