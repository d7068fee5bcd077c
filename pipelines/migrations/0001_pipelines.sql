-- Pipeline runs and their tasks. Lives in the registry's database beside its tables;
-- SQL that both SQLite and PostgreSQL accept.
CREATE TABLE pipeline_runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    flavor TEXT NOT NULL,
    status TEXT NOT NULL,
    graph TEXT NOT NULL,
    parameters TEXT NOT NULL,
    outputs TEXT,
    error TEXT,
    -- The Nexus process driving the run, and when it last said so: a restarted process
    -- takes its own runs back at once, another one only when the heartbeat is stale.
    owner TEXT,
    heartbeat_at BIGINT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX pipeline_runs_status ON pipeline_runs (status);
CREATE INDEX pipeline_runs_created ON pipeline_runs (created_at);

CREATE TABLE pipeline_tasks (
    run_id TEXT NOT NULL REFERENCES pipeline_runs (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    outputs TEXT,
    error TEXT,
    -- What the executor said runs this attempt (process group id, Job name).
    handle TEXT,
    seq BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, path)
);

CREATE TABLE pipeline_cache (
    cache_key TEXT PRIMARY KEY,
    outputs TEXT NOT NULL,
    run_id TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
