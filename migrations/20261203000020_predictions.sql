-- Prediction serving: per-patient MICRON recurrence state (one row per
-- patient and model version) and the audit trail of stored predictions.

-- The state after the patient's visit `visit_seq` (= `visit_id`) under model
-- `model_id`: the medication logit vector, the last health representation
-- and the current medication set (vocabulary indices of that model). A
-- state is used only when the visit at `visit_seq` is still `visit_id`
-- (a back-dated visit shifts sequence numbers and so invalidates it).
CREATE TABLE patient_states (
    patient_id uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    model_id   uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    visit_id   uuid NOT NULL,
    visit_seq  integer NOT NULL,
    base       real[] NOT NULL,
    h_last     real[] NOT NULL,
    meds       integer[] NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, model_id)
);

-- Every stored prediction, for audit: who asked (key id), which model
-- version answered, for which visit, and what it said.
CREATE TABLE predictions (
    id              uuid PRIMARY KEY,
    patient_id      uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    visit_id        uuid NOT NULL REFERENCES visits (id) ON DELETE CASCADE,
    model_id        uuid REFERENCES models (id) ON DELETE SET NULL,
    model_version   text NOT NULL,
    api_key_id      uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    previous_source text NOT NULL CHECK (previous_source IN ('recorded', 'predicted', 'none')),
    previous        text[] NOT NULL,
    predicted       text[] NOT NULL,
    added           text[] NOT NULL,
    removed         text[] NOT NULL,
    kept            text[] NOT NULL,
    -- The full answer as sent (probabilities above the floor, unknown codes,
    -- interactions, thresholds, density fields).
    response        jsonb NOT NULL,
    state_rebuilt   boolean NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX predictions_patient_idx ON predictions (patient_id, id);
CREATE INDEX predictions_visit_idx ON predictions (patient_id, visit_id, model_id);
CREATE INDEX predictions_created_idx ON predictions (created_at);
