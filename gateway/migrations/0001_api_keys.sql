-- API keys of the gateway. Lives in the registry's database beside its tables; SQL that
-- both SQLite and PostgreSQL accept. Only the SHA-256 of a token is stored: the token
-- itself is shown once, when it is created. Times are milliseconds since the epoch.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
