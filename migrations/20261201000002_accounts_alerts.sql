-- Accounts, price and anomaly alerts, their triggers and the delivery outbox
-- (docs/decisions/0010-alerts-and-delivery.md).

CREATE TYPE user_role AS ENUM ('user', 'admin');

CREATE TABLE users (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Lower-cased at registration; the address alert emails go to.
    email           TEXT NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) <= 254),
    -- Argon2id PHC string.
    password_hash   TEXT NOT NULL,
    role            user_role NOT NULL DEFAULT 'user',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Refresh tokens rotate on use: each use marks the token used and issues one of the same
-- family; presenting a used token again (a stolen copy) revokes the whole family.
CREATE TABLE refresh_tokens (
    id              UUID PRIMARY KEY,
    family          UUID NOT NULL,
    user_id         BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at      TIMESTAMPTZ NOT NULL,
    used_at         TIMESTAMPTZ,
    revoked_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE alerts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    instrument_id   INT NOT NULL REFERENCES instruments (id),
    -- The condition, as the API takes it (pricefeed_domain::alert::Condition).
    condition       JSONB NOT NULL,
    channels        TEXT[] NOT NULL CHECK (channels <@ ARRAY['email', 'websocket']
                                           AND cardinality(channels) > 0),
    -- NULL: one-shot. Otherwise {"cooldown_ms": .., "hysteresis_pct": ".."}.
    rearm           JSONB,
    -- active: evaluated; triggered: a one-shot alert that fired; paused: kept, not evaluated.
    status          TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'triggered', 'paused')),
    -- Whether the condition may fire now (false between a firing and its re-arm).
    armed           BOOLEAN NOT NULL DEFAULT true,
    note            TEXT CHECK (length(note) <= 200),
    -- Grows with every change, so the owning node applies changes in order.
    version         BIGINT NOT NULL DEFAULT 1,
    last_triggered_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX alerts_user_idx ON alerts (user_id, id);
CREATE INDEX alerts_instrument_idx ON alerts (instrument_id) WHERE status = 'active';

-- One row per firing, identified by (alert, trade): the owning node commits it before anything
-- else happens, and a failover that re-evaluates the same trade inserts nothing.
CREATE TABLE alert_triggers (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    user_id         BIGINT NOT NULL,
    trade_id        BIGINT NOT NULL,
    trade_ts_ms     BIGINT NOT NULL,
    price           NUMERIC NOT NULL,
    -- What the condition compared (the price, a VWAP, a move in %, a z-score).
    observed        NUMERIC NOT NULL,
    node_id         TEXT NOT NULL,
    triggered_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (alert_id, trade_id)
);

CREATE INDEX alert_triggers_user_idx ON alert_triggers (user_id, id);

-- The outbox: one row per trigger and channel. Email rows are sent by worker jobs (kind
-- `email`, key = delivery id) created in the same transaction as the trigger.
CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger_id      BIGINT NOT NULL REFERENCES alert_triggers (id) ON DELETE CASCADE,
    user_id         BIGINT NOT NULL,
    channel         TEXT NOT NULL CHECK (channel IN ('email', 'websocket')),
    -- pending → sent | dead; suppressed: over the user's email quota, never sent.
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sent', 'dead', 'suppressed')),
    attempts        INT NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- Sent as a header and in the Message-ID: a server that saw it drops a repeat.
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    UNIQUE (trigger_id, channel)
);

CREATE INDEX deliveries_user_email_idx ON deliveries (user_id, created_at) WHERE channel = 'email';
