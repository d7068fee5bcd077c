//! `nexus token …`: create, list and revoke API keys in the registry's database.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use sqlx::AnyPool;

use crate::{GatewayError, KeyStore, Role};
use nexus_database::now_ms;

/// API key management.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum TokenCommand {
    /// Creates an API key and prints its token once (on stdout; details on stderr).
    #[command(
        after_help = "Example:\n  nexus token create --role deployer --name ci --expires 30d --data-dir .nexus/data"
    )]
    Create {
        /// What the key may do.
        #[arg(long, value_enum)]
        role: Role,
        /// Who or what holds the key (default: the role).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, such as 30d, 12h or 15m (default: never expires).
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
    },
    /// Lists every key (never their tokens).
    #[command(after_help = "Example:\n  nexus token list --database-url postgres://nexus@db/nexus")]
    List,
    /// Revokes a key; servers refuse it within a second or two.
    #[command(after_help = "Example:\n  nexus token revoke 3f2a9c1e")]
    Revoke {
        /// The key's id, as `nexus token list` shows it.
        id: String,
    },
}

/// Parses a lifetime: a number and a unit (`s`, `m`, `h`, `d`, `w`), or several such
/// (`1d12h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration '{text}' ({e}); use e.g. 30d, 12h or 15m"))?;
    if duration.is_zero() {
        return Err("a lifetime of zero would create an expired key".into());
    }
    Ok(duration)
}

/// Runs a token command on the keys in `pool`, printing for a person at a terminal.
pub async fn run(pool: AnyPool, command: TokenCommand) -> Result<(), GatewayError> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    execute(&KeyStore::new(pool), command, &mut stdout, &mut stderr).await
}

/// [`run`] with the output streams given, for tests.
async fn execute(
    keys: &KeyStore,
    command: TokenCommand,
    out: &mut (dyn Write + Send),
    note: &mut (dyn Write + Send),
) -> Result<(), GatewayError> {
    let io = |e: std::io::Error| GatewayError::Config(format!("cannot print: {e}"));
    match command {
        TokenCommand::Create {
            role,
            name,
            expires,
        } => {
            let name = name.unwrap_or_else(|| role.to_string());
            let (id, token) = keys.create(&name, role, expires).await?;
            let until = match expires {
                Some(d) => format!(
                    "expires {}",
                    timestamp(
                        now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    )
                ),
                None => "never expires".to_string(),
            };
            writeln!(
                note,
                "Created API key {id} '{name}' with role {role}; it {until}.\n\
                 The token below is shown only now; send it as 'Authorization: Bearer <token>' \
                 (or X-API-Key, or MLFLOW_TRACKING_TOKEN for MLflow clients):"
            )
            .map_err(io)?;
            writeln!(out, "{token}").map_err(io)?;
        }
        TokenCommand::List => {
            let list = keys.list().await?;
            let now = now_ms();
            writeln!(
                out,
                "{:<16}  {:<20}  {:<9}  {:<20}  {:<20}  STATUS",
                "ID", "NAME", "ROLE", "CREATED", "EXPIRES"
            )
            .map_err(io)?;
            for key in list {
                let status = match (key.revoked_at, key.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(t)) if t <= now => "expired",
                    _ => "active",
                };
                writeln!(
                    out,
                    "{:<16}  {:<20}  {:<9}  {:<20}  {:<20}  {status}",
                    key.id,
                    key.name,
                    key.role,
                    timestamp(key.created_at),
                    key.expires_at.map_or_else(|| "never".into(), timestamp),
                )
                .map_err(io)?;
            }
        }
        TokenCommand::Revoke { id } => {
            keys.revoke(&id).await?;
            writeln!(note, "Revoked API key {id}.").map_err(io)?;
        }
    }
    Ok(())
}

/// Milliseconds since the epoch as `2025-01-31T12:00:00Z`.
fn timestamp(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        token: TokenCommand,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(15 * 60)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(36 * 3_600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::parse_from(["t", "create", "--role", "deployer", "--expires", "30d"]);
        assert_eq!(
            cli.token,
            TokenCommand::Create {
                role: Role::Deployer,
                name: None,
                expires: Some(Duration::from_secs(30 * 86_400)),
            }
        );
        let cli = Cli::parse_from(["t", "revoke", "abc"]);
        assert_eq!(cli.token, TokenCommand::Revoke { id: "abc".into() });
        assert!(Cli::try_parse_from(["t", "create", "--role", "root"]).is_err());
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
    }

    #[tokio::test]
    async fn create_list_revoke() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display());
        let pool = AnyPool::connect(&url).await.unwrap();
        let keys = KeyStore::new(pool);
        let (mut out, mut note) = (Vec::new(), Vec::new());
        let create = TokenCommand::Create {
            role: Role::Runner,
            name: Some("ci".into()),
            expires: Some(Duration::from_secs(3600)),
        };
        execute(&keys, create, &mut out, &mut note).await.unwrap();
        let token = String::from_utf8(out).unwrap();
        let token = token.trim();
        assert!(token.starts_with("nexus_"), "{token}");
        assert!(String::from_utf8_lossy(&note).contains("shown only now"));
        let principal = keys.verify(token).await.unwrap().unwrap();
        assert_eq!(principal.role, Role::Runner);

        let mut out = Vec::new();
        execute(&keys, TokenCommand::List, &mut out, &mut Vec::new())
            .await
            .unwrap();
        let listing = String::from_utf8(out).unwrap();
        let id = principal.credential.strip_prefix("key:").unwrap();
        assert!(
            listing.contains(id) && listing.contains("active"),
            "{listing}"
        );
        assert!(!listing.contains(token));

        let revoke = TokenCommand::Revoke { id: id.into() };
        execute(&keys, revoke, &mut Vec::new(), &mut Vec::new())
            .await
            .unwrap();
        let mut out = Vec::new();
        execute(&keys, TokenCommand::List, &mut out, &mut Vec::new())
            .await
            .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("revoked"));
        let missing = TokenCommand::Revoke { id: "nope".into() };
        let err = execute(&keys, missing, &mut Vec::new(), &mut Vec::new()).await;
        assert!(matches!(err, Err(GatewayError::NoSuchKey(_))), "{err:?}");
    }
}
