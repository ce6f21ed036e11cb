-- Instruments: underlyings (spot pairs) and their derivatives (futures, perpetuals, options).
-- Rows are never deleted: an instrument that disappears from the broker or stops trading is
-- marked (status, delisted_at) so its history stays joinable.

CREATE TABLE underlyings (
    id              BIGSERIAL PRIMARY KEY,
    symbol          TEXT NOT NULL UNIQUE CHECK (symbol ~ '^[A-Z0-9_.-]{2,40}$'),
    base_asset      TEXT NOT NULL,
    quote_asset     TEXT NOT NULL,
    -- Broker status string kept verbatim (TRADING, HALT, BREAK, ...); unknown values are kept
    -- too and treated as not tradable by the application.
    status          TEXT NOT NULL,
    tick_size       NUMERIC(28, 10),
    step_size       NUMERIC(28, 10),
    first_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    delisted_at     TIMESTAMPTZ
);

CREATE INDEX underlyings_quote_asset_idx ON underlyings (quote_asset);

CREATE TYPE derivative_kind AS ENUM ('perpetual', 'future', 'option');

CREATE TABLE derivatives (
    id              BIGSERIAL PRIMARY KEY,
    symbol          TEXT NOT NULL UNIQUE CHECK (symbol ~ '^[A-Z0-9_.-]{2,60}$'),
    underlying_id   BIGINT NOT NULL REFERENCES underlyings (id) ON DELETE RESTRICT,
    kind            derivative_kind NOT NULL,
    -- Which broker market lists it: 'usdm' (USD-M futures) or 'options'.
    market          TEXT NOT NULL,
    -- Broker contract type verbatim (PERPETUAL, CURRENT_QUARTER, ...; CRYPTO_OPTIONS for options).
    contract_type   TEXT,
    expiry_at       TIMESTAMPTZ,
    strike          NUMERIC(28, 10),
    option_side     TEXT CHECK (option_side IN ('CALL', 'PUT')),
    status          TEXT NOT NULL,
    tick_size       NUMERIC(28, 10),
    step_size       NUMERIC(28, 10),
    first_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    delisted_at     TIMESTAMPTZ,
    CHECK ((kind = 'option') = (strike IS NOT NULL AND option_side IS NOT NULL)),
    CHECK (kind <> 'future' OR expiry_at IS NOT NULL)
);

CREATE INDEX derivatives_underlying_idx ON derivatives (underlying_id);
CREATE INDEX derivatives_kind_expiry_idx ON derivatives (kind, expiry_at);
