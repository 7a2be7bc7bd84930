-- Density models: serving scopes, so that density versions over different
-- feature spaces are served side by side, and uploaded vector datasets.

-- A version's serving scope comes from its configuration (`serving_scope`,
-- written by the density trainer: `micron_health:<MICRON version id>` or
-- `vectors:<dataset id>`); every other version has the empty scope. At most
-- one version per kind and scope is active, so one MICRON version is
-- served, and one density model per MICRON version and per dataset.
ALTER TABLE models ADD COLUMN scope text GENERATED ALWAYS AS (coalesce(config->>'serving_scope', '')) STORED;
DROP INDEX models_one_active_per_kind;
CREATE UNIQUE INDEX models_one_active_per_scope ON models (kind, scope) WHERE status = 'active';

-- Numeric vector datasets uploaded by admins (JSON or CSV), the training
-- data of `vectors` density models. The values are float32, little-endian,
-- row-major; `sha256` is over those bytes.
CREATE TABLE density_datasets (
    id         uuid PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    dim        integer NOT NULL CHECK (dim > 0),
    row_count  integer NOT NULL CHECK (row_count > 0),
    columns    text[] CHECK (columns IS NULL OR cardinality(columns) = dim),
    data       bytea NOT NULL CHECK (length(data) = 4 * dim * row_count),
    sha256     text NOT NULL,
    format     text NOT NULL CHECK (format IN ('json', 'csv')),
    created_by uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
