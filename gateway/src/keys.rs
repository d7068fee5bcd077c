//! API keys: `nexus_<random>` bearer tokens, stored as their SHA-256 in the `api_keys`
//! table of the registry's database (SQLite or PostgreSQL through sqlx's `Any` driver).
//!
//! Verifying a key on every request would put a database round trip on the inference hot
//! path, so answers (positive and negative) are cached in memory for [`KEY_CACHE_TTL`]. A
//! revocation (by this process or another one on the same database) therefore takes effect
//! within that time; expiry is checked on every request and is exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use nexus_database::{Migrations, now_ms};
use parking_lot::RwLock;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use crate::{GatewayError, Principal, Role};

/// How long a verified (or rejected) key is trusted without asking the database: the
/// longest a revoked key keeps working.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// The prefix of every API key, so keys are told from JWTs (and found by secret scanners).
pub(crate) const KEY_PREFIX: &str = "nexus_";

/// The `api_keys` table: migration 2001 of the database shared with the registry (1..) and
/// the pipelines (1001..); see `nexus_database`.
fn migrations() -> Migrations {
    Migrations::new(
        2001,
        "api keys",
        include_str!("../migrations/0001_api_keys.sql"),
    )
}

/// Entries past which the cache is swept, so a flood of made-up keys cannot grow it.
const CACHE_CAPACITY: usize = 10_000;

/// An API key as listed (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The key's id, for `revoke`.
    pub id: String,
    /// A name saying who or what holds it.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// Expiry, milliseconds since the epoch; `None`: never.
    pub expires_at: Option<i64>,
    /// Revocation time, milliseconds since the epoch.
    pub revoked_at: Option<i64>,
}

/// A cached answer for one token hash.
#[derive(Clone)]
struct Cached {
    /// The key's principal and expiry; `None` when no usable key has this hash.
    key: Option<(Principal, Option<i64>)>,
    checked: Instant,
}

/// The API keys in a database. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    pool: AnyPool,
    migrations: Migrations,
    cache: Arc<RwLock<HashMap<[u8; 32], Cached>>>,
}

impl KeyStore {
    /// Keeps the keys in the database behind `pool` (the registry's). Nothing connects yet:
    /// [`KeyStore::migrate`] or the first use creates the table.
    pub fn new(pool: AnyPool) -> Self {
        KeyStore {
            pool,
            migrations: migrations(),
            cache: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// Creates the `api_keys` table if it is not there (migration 2001); until that succeeds
    /// every use tries again.
    pub async fn migrate(&self) -> Result<(), GatewayError> {
        Ok(self.migrations.apply(&self.pool).await?)
    }

    /// Creates a key and returns its id and its token. The token is not stored: show it to
    /// the user now, it cannot be shown again.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        expires: Option<Duration>,
    ) -> Result<(String, String), GatewayError> {
        self.migrate().await?;
        let (secret, id) = {
            // The thread's generator (not `Send`) must not live across an await.
            let mut rng = rand::rng();
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let mut id = [0u8; 8];
            rng.fill_bytes(&mut id);
            (secret, id)
        };
        let token = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let now = now_ms();
        let expires_at =
            expires.map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(role.as_str())
        .bind(hex(&hash(&token)))
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok((id, token))
    }

    /// Revokes a key: within [`KEY_CACHE_TTL`] no server on this database accepts it.
    pub async fn revoke(&self, id: &str) -> Result<(), GatewayError> {
        self.migrate().await?;
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            let exists = sqlx::query("SELECT id FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_none() {
                return Err(GatewayError::NoSuchKey(id.to_string()));
            }
        }
        // This process stops accepting it at once; others within the TTL.
        self.cache.write().retain(|_, c| {
            c.key
                .as_ref()
                .is_none_or(|(p, _)| p.credential != credential_id(id))
        });
        Ok(())
    }

    /// Every key, newest first, revoked and expired ones included.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, GatewayError> {
        self.migrate().await?;
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, expires_at, revoked_at FROM api_keys ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(KeyInfo {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    role: role.parse().map_err(GatewayError::Config)?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// The principal of a valid (known, unrevoked, unexpired) key; `None` for any other
    /// token. Answers come from the cache when they are younger than [`KEY_CACHE_TTL`].
    pub async fn verify(&self, token: &str) -> Result<Option<Principal>, GatewayError> {
        if !token.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let digest = hash(token);
        let now = now_ms();
        let cached = self.cache.read().get(&digest).cloned();
        let entry = match cached {
            Some(c) if c.checked.elapsed() < KEY_CACHE_TTL => c,
            _ => {
                let entry = Cached {
                    key: self.lookup(&digest).await?,
                    checked: Instant::now(),
                };
                let mut cache = self.cache.write();
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, c| c.checked.elapsed() < KEY_CACHE_TTL);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(digest, entry.clone());
                entry
            }
        };
        Ok(entry.key.and_then(|(principal, expires_at)| {
            expires_at.is_none_or(|t| t > now).then_some(principal)
        }))
    }

    /// The unrevoked key with this hash, from the database.
    async fn lookup(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<(Principal, Option<i64>)>, GatewayError> {
        self.migrate().await?;
        let row = sqlx::query(
            "SELECT id, name, role, expires_at FROM api_keys WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hex(digest))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        let role: String = row.try_get("role")?;
        let Ok(role) = role.parse::<Role>() else {
            tracing::warn!(%id, %role, "API key with an unknown role ignored");
            return Ok(None);
        };
        Ok(Some((
            Principal {
                subject: row.try_get("name")?,
                role,
                credential: credential_id(&id),
            },
            row.try_get("expires_at")?,
        )))
    }
}

/// The credential id of key `id` in principals, rate limits and logs.
fn credential_id(id: &str) -> String {
    format!("key:{id}")
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>(_: T) {}

    /// Handlers and spawned tasks need the store's futures to be `Send`.
    #[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
    #[test]
    fn futures_are_send() {
        if false {
            let keys: KeyStore = unreachable!();
            send(keys.create("n", Role::Reader, None));
            send(keys.revoke("id"));
            send(keys.list());
            send(keys.verify("t"));
            send(keys.migrate());
            send(crate::cli::run(
                unreachable!(),
                crate::cli::TokenCommand::List,
            ));
            send(crate::Gateway::new(unreachable!(), None));
        }
    }
}
