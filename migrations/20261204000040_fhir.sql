-- EHR interoperability: FHIR R4 ingest and CDS Hooks.

-- Every FHIR resource an import used, keyed by the EHR it came from (the
-- import's `source`), its type and its id (the fullUrl when it has none).
-- Re-posting a resource finds it here and changes nothing. Patient rows
-- point at the patient they created or matched, Encounter rows at their
-- visit, and coded resources (Condition, Procedure, Medication*) at the
-- visit their code went to, with the original coding and the code stored.
CREATE TABLE fhir_resources (
    source        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    patient_id    uuid NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    visit_id      uuid,
    code_set      text CHECK (code_set IN ('diagnoses', 'procedures', 'medications')),
    system        text,
    code          text,
    stored_code   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, resource_type, resource_id)
);
CREATE INDEX fhir_resources_patient_idx ON fhir_resources (patient_id);

-- Which coding systems feed each code set and how codes are written
-- (one row; the defaults live in the code, see src/fhir/codes.rs).
CREATE TABLE fhir_settings (
    id         smallint PRIMARY KEY CHECK (id = 1),
    settings   jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Code maps an admin uploads: a code of `from_system` becomes `to_code` (a
-- code of the model's vocabulary) in `code_set`.
CREATE TABLE fhir_code_maps (
    code_set    text NOT NULL CHECK (code_set IN ('diagnoses', 'procedures', 'medications')),
    from_system text NOT NULL,
    from_code   text NOT NULL,
    to_code     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code_set, from_system, from_code)
);

-- CDS Hooks JWT ids seen (replay protection), kept until the token expires.
CREATE TABLE cds_jwt_ids (
    issuer     text NOT NULL,
    jti        text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX cds_jwt_ids_expires_idx ON cds_jwt_ids (expires_at);
