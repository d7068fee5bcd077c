-- The registry and tracking schema, one migration set for SQLite and PostgreSQL: only
-- types and syntax both accept (TEXT, BIGINT, DOUBLE PRECISION, composite primary keys,
-- ON CONFLICT upserts in the queries). Times are milliseconds since the epoch.

CREATE TABLE experiments (
    experiment_id     BIGINT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL,
    creation_time     BIGINT NOT NULL,
    last_update_time  BIGINT NOT NULL
);

CREATE TABLE experiment_tags (
    experiment_id BIGINT NOT NULL REFERENCES experiments (experiment_id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

CREATE TABLE runs (
    run_uuid        TEXT PRIMARY KEY,
    experiment_id   BIGINT NOT NULL REFERENCES experiments (experiment_id),
    run_name        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    start_time      BIGINT NOT NULL,
    end_time        BIGINT,
    artifact_uri    TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL
);
CREATE INDEX runs_experiment ON runs (experiment_id, start_time);

CREATE TABLE run_tags (
    run_uuid TEXT NOT NULL REFERENCES runs (run_uuid),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (run_uuid, key)
);

CREATE TABLE params (
    run_uuid TEXT NOT NULL REFERENCES runs (run_uuid),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (run_uuid, key)
);

-- Every logged point, for metrics/get-history; an exact repeat is stored once, as MLflow does.
-- NaN is kept as is_nan = 1 with value 0 (SQLite would turn a NaN into NULL).
CREATE TABLE metrics (
    run_uuid  TEXT NOT NULL REFERENCES runs (run_uuid),
    key       TEXT NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    is_nan    INTEGER NOT NULL,
    timestamp BIGINT NOT NULL,
    step      BIGINT NOT NULL,
    model_id  TEXT NOT NULL,
    PRIMARY KEY (run_uuid, key, timestamp, step, value, is_nan)
);

-- The value with the highest (step, timestamp) per run and key: what runs/get returns
-- and what `metrics.<key>` filters and orders on.
CREATE TABLE latest_metrics (
    run_uuid  TEXT NOT NULL REFERENCES runs (run_uuid),
    key       TEXT NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    is_nan    INTEGER NOT NULL,
    timestamp BIGINT NOT NULL,
    step      BIGINT NOT NULL,
    PRIMARY KEY (run_uuid, key)
);

-- Dataset and model inputs/outputs of runs, kept as the JSON the client sent.
CREATE TABLE run_io (
    run_uuid  TEXT NOT NULL REFERENCES runs (run_uuid),
    direction TEXT NOT NULL,
    kind      TEXT NOT NULL,
    identity  TEXT NOT NULL,
    payload   TEXT NOT NULL,
    PRIMARY KEY (run_uuid, direction, kind, identity)
);

CREATE TABLE registered_models (
    name                   TEXT PRIMARY KEY,
    creation_timestamp     BIGINT NOT NULL,
    last_updated_timestamp BIGINT NOT NULL,
    description            TEXT NOT NULL
);

CREATE TABLE registered_model_tags (
    name  TEXT NOT NULL REFERENCES registered_models (name) ON UPDATE CASCADE ON DELETE CASCADE,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);

CREATE TABLE model_versions (
    name                   TEXT NOT NULL REFERENCES registered_models (name) ON UPDATE CASCADE ON DELETE CASCADE,
    version                BIGINT NOT NULL,
    creation_timestamp     BIGINT NOT NULL,
    last_updated_timestamp BIGINT NOT NULL,
    description            TEXT NOT NULL,
    user_id                TEXT NOT NULL,
    current_stage          TEXT NOT NULL,
    source                 TEXT NOT NULL,
    storage_location       TEXT NOT NULL,
    run_id                 TEXT NOT NULL,
    run_link               TEXT NOT NULL,
    model_id               TEXT NOT NULL,
    status                 TEXT NOT NULL,
    status_message         TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE model_version_tags (
    name    TEXT NOT NULL,
    version BIGINT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (name, version, key),
    FOREIGN KEY (name, version) REFERENCES model_versions (name, version) ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE registered_model_aliases (
    name    TEXT NOT NULL REFERENCES registered_models (name) ON UPDATE CASCADE ON DELETE CASCADE,
    alias   TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (name, alias)
);

CREATE TABLE logged_models (
    model_id                  TEXT PRIMARY KEY,
    experiment_id             BIGINT NOT NULL REFERENCES experiments (experiment_id),
    name                      TEXT NOT NULL,
    artifact_location         TEXT NOT NULL,
    creation_timestamp_ms     BIGINT NOT NULL,
    last_updated_timestamp_ms BIGINT NOT NULL,
    status                    TEXT NOT NULL,
    lifecycle_stage           TEXT NOT NULL,
    model_type                TEXT NOT NULL,
    source_run_id             TEXT NOT NULL,
    status_message            TEXT NOT NULL
);

CREATE TABLE logged_model_tags (
    model_id TEXT NOT NULL REFERENCES logged_models (model_id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE logged_model_params (
    model_id TEXT NOT NULL REFERENCES logged_models (model_id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

-- Monotonic counters (experiment ids), bumped inside transactions.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('experiment_id', 0);

INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time)
VALUES (0, 'Default', 'mlflow-artifacts:/0', 'active', 0, 0);
