-- Every SMTP attempt of an email delivery (docs/decisions/0011-email-delivery.md).
--
-- A worker inserts the attempt row (outcome NULL: in flight) in a transaction fenced by its job
-- claim before it opens the SMTP transaction, and records the outcome after the server's reply.
-- A row still in flight when another worker takes the job over means its worker was lost while
-- sending: the server may have accepted that mail. The new worker marks the row `unknown` and
-- sends again with the same Message-ID and idempotency key, so the server (or the recipient's
-- mail client) can recognise the repeat.
CREATE TABLE email_attempts (
    delivery_id     BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    -- 1-based, equal to deliveries.attempts after this attempt started.
    attempt         INT NOT NULL,
    -- The worker (jobs.lease_owner) and its claim (jobs.lease_seq) that made the attempt.
    worker          TEXT NOT NULL,
    lease_seq       BIGINT NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    -- NULL while in flight; accepted (2xx), transient (4xx, connection, timeout: retried),
    -- permanent (5xx: dead letter), unknown (its worker was lost while sending).
    outcome         TEXT CHECK (outcome IN ('accepted', 'transient', 'permanent', 'unknown')),
    smtp_code       INT,
    detail          TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
