-- Background jobs (a PostgreSQL queue), their progress events, and the model
-- registry.

-- A job is claimed by a single autocommitted UPDATE ... FOR UPDATE SKIP
-- LOCKED that writes the lease (owner, heartbeat, attempts): no transaction
-- stays open while it runs. `attempts` doubles as the fencing token: every
-- write of a running worker is conditioned on its owner and attempt, so a
-- worker whose lease was reaped can no longer touch the job.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    params           jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    run_after        timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    heartbeat_at     timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- The latest progress event's data, for list views.
    progress         jsonb,
    error            text,
    -- The training data as of the first start: max visit created_at, counts.
    data_snapshot    jsonb,
    -- What a job that produces no model version returns (e.g. evaluation).
    result           jsonb,
    model_id         uuid,
    created_by       uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- Highest event id handed out (events are numbered 1, 2, ... per job).
    last_event_id    bigint NOT NULL DEFAULT 0
);
CREATE INDEX jobs_queued_idx ON jobs (created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_running_heartbeat_idx ON jobs (heartbeat_at) WHERE status = 'running';
CREATE INDEX jobs_created_idx ON jobs (id DESC);

-- Progress and lifecycle events. `id` increases by one per job, so it is the
-- SSE event id a client resumes from (Last-Event-ID).
CREATE TABLE job_events (
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    id         bigint NOT NULL,
    attempt    integer NOT NULL,
    kind       text NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, id)
);

-- Model versions. Artifacts live under the models directory at
-- `artifact_path` (`<kind>/<version>`); `files` maps each file's relative
-- path to its sha256, checked on every load.
CREATE TABLE models (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL,
    version       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('training', 'ready', 'active', 'retired', 'failed')),
    config        jsonb NOT NULL,
    metrics       jsonb NOT NULL,
    -- Higher is better; compared for automatic promotion.
    val_score     double precision,
    vocab         jsonb NOT NULL,
    artifact_path text NOT NULL,
    files         jsonb NOT NULL,
    source        text NOT NULL CHECK (source IN ('job', 'shipped', 'import')),
    job_id        uuid REFERENCES jobs (id) ON DELETE SET NULL,
    data_snapshot jsonb,
    parent_id     uuid REFERENCES models (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    retired_at    timestamptz,
    CONSTRAINT models_kind_version_key UNIQUE (kind, version)
);
-- At most one served version per kind.
CREATE UNIQUE INDEX models_one_active_per_kind ON models (kind) WHERE status = 'active';
CREATE INDEX models_kind_created_idx ON models (kind, created_at DESC);

ALTER TABLE jobs ADD CONSTRAINT jobs_model_id_fkey FOREIGN KEY (model_id) REFERENCES models (id) ON DELETE SET NULL;
