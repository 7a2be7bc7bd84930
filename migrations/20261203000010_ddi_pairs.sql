-- Interacting medication code pairs (e.g. ATC-3), stored once per unordered
-- pair with code_a < code_b.
CREATE TABLE ddi_pairs (
    code_a     text NOT NULL,
    code_b     text NOT NULL,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code_a, code_b),
    CHECK (code_a < code_b)
);
