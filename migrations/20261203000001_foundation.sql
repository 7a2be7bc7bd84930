-- Foundation: patients, visits, API keys and idempotent POSTs.

CREATE TABLE patients (
    id          uuid PRIMARY KEY,
    source      text NOT NULL,
    external_id text NOT NULL,
    visit_count integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT patients_source_external_id_key UNIQUE (source, external_id)
);

-- Visits are ordered by occurrence time, ties by arrival. `seq` is the dense
-- 1-based position of the visit in that order; a late (back-dated) visit is
-- inserted in its place and the later visits move up by one, hence the
-- deferred uniqueness. Appends lock the patient row, so they serialize per
-- patient.
CREATE TABLE visits (
    patient_id  uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    id          uuid NOT NULL,
    seq         integer NOT NULL CHECK (seq >= 1),
    occurred_at timestamptz NOT NULL,
    diagnoses   text[] NOT NULL,
    procedures  text[] NOT NULL,
    medications text[],
    source      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, id),
    CONSTRAINT visits_patient_seq_key UNIQUE (patient_id, seq) DEFERRABLE INITIALLY DEFERRED
);
CREATE UNIQUE INDEX visits_id_key ON visits (id);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'clinical')),
    key_hash    bytea NOT NULL,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);

-- Responses of POSTs sent with an Idempotency-Key, per calling key. Rows
-- that concern a patient carry its id so that erasure removes them too.
CREATE TABLE idempotency_keys (
    api_key_id   uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    key          text NOT NULL,
    method       text NOT NULL,
    path         text NOT NULL,
    request_hash bytea NOT NULL,
    status       smallint NOT NULL,
    response     jsonb NOT NULL,
    patient_id   uuid REFERENCES patients (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
