-- Durable floor of the cluster's slice assignment (docs/decisions/0003-slice-assignment.md).
-- Redis holds the live assignment and may be flushed; this single row keeps the last published
-- epoch, its owners map and the highest scheduler lease term, so none goes backwards (and no
-- instrument changes hands) after a Redis loss.

CREATE TABLE cluster_state (
    id          BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    epoch       BIGINT NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    term        BIGINT NOT NULL DEFAULT 0 CHECK (term >= 0),
    -- symbol -> node id of the assignment at `epoch` (same shape as the Redis document's owners).
    owners      JSONB NOT NULL DEFAULT '{}'::jsonb,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO cluster_state (id) VALUES (TRUE);
