-- Trade history, per-second and per-minute buckets, VWAP history, reconciliation cursors and the
-- worker job queue (docs/decisions/0007-history-storage-and-reconciliation.md).
--
-- Layout rules:
-- - Every history row names its instrument by a small integer (`instruments.id`), not by two
--   text columns: a trade row is ~60 bytes instead of ~110.
-- - Times are exchange milliseconds since the epoch (BIGINT), exact and cheap to compare; the
--   tables are range-partitioned by day on them, so retention is `DROP TABLE` of a partition
--   (`pf_ensure_partitions` / `pf_drop_partitions_before`, run by the scheduler's retention task).
-- - Validation is not a per-row flag that REST reconciliation would have to rewrite (one extra
--   tuple and index entry per trade): a trade is validated when its id is at or below its
--   instrument's `reconcile_cursors.last_id` and outside any `reconcile_skips` range. The view
--   `trades_validated` shows the flag per row for operators.

-- 1. Instrument ids ---------------------------------------------------------------------------

CREATE TABLE instruments (
    id      INT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    market  TEXT NOT NULL CHECK (market IN ('spot', 'usdm', 'options')),
    symbol  TEXT NOT NULL,
    UNIQUE (market, symbol)
);

-- Every listed instrument gets its id (and an empty reconciliation cursor) when it is first
-- stored, whoever stores it (instrument sync, tests, tools).
-- The market is the trigger argument for underlyings (always spot) and the row's own column for
-- derivatives (read through jsonb, since plpgsql resolves NEW.market per table).
CREATE FUNCTION pf_register_instrument() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO instruments (market, symbol)
        VALUES (COALESCE(TG_ARGV[0], to_jsonb(NEW) ->> 'market'), NEW.symbol)
        ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;

CREATE TRIGGER underlyings_register AFTER INSERT ON underlyings
    FOR EACH ROW EXECUTE FUNCTION pf_register_instrument('spot');
CREATE TRIGGER derivatives_register AFTER INSERT ON derivatives
    FOR EACH ROW EXECUTE FUNCTION pf_register_instrument();

INSERT INTO instruments (market, symbol)
    SELECT 'spot', symbol FROM underlyings
    UNION SELECT market, symbol FROM derivatives
    ON CONFLICT DO NOTHING;

-- 2. Partition management ---------------------------------------------------------------------

-- Creates the daily partitions of `parent` covering [from_ms, to_ms] (UTC days); returns how many
-- were created. Concurrent callers are serialised by an advisory lock, so two writers meeting a
-- new day at once do not race on the DDL.
CREATE FUNCTION pf_ensure_partitions(parent TEXT, from_ms BIGINT, to_ms BIGINT)
RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    day_ms CONSTANT BIGINT := 86400000;
    d BIGINT := (from_ms / day_ms) * day_ms;
    created INT := 0;
    part TEXT;
BEGIN
    IF to_ms < from_ms THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('pf_partitions:' || parent));
    WHILE d <= to_ms LOOP
        part := parent || '_p' || to_char(to_timestamp(d / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s)',
                           part, parent, d, d + day_ms);
            created := created + 1;
        END IF;
        d := d + day_ms;
    END LOOP;
    RETURN created;
END $$;

-- Drops the daily partitions of `parent` that end at or before `before_ms`; returns how many.
CREATE FUNCTION pf_drop_partitions_before(parent TEXT, before_ms BIGINT)
RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    dropped INT := 0;
    upper_ms BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pf_partitions:' || parent));
    FOR r IN
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent::regclass
    LOOP
        upper_ms := substring(r.bound FROM 'TO \(''?(-?[0-9]+)''?\)')::BIGINT;
        IF upper_ms IS NOT NULL AND upper_ms <= before_ms THEN
            EXECUTE format('DROP TABLE %I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

-- 3. Trades -----------------------------------------------------------------------------------

ALTER TABLE trades RENAME TO trades_v1;
ALTER INDEX trades_symbol_ts_idx RENAME TO trades_v1_symbol_ts_idx;

-- Column order packs the fixed-width columns first (no alignment padding). The primary key must
-- contain the partition key; (instrument, trade id) is the identity, and a WebSocket copy with a
-- corrupted time cannot slip in beside its validated original because writers skip ids at or
-- below the instrument's reconciliation cursor (see the trade writer).
CREATE TABLE trades (
    trade_id        BIGINT NOT NULL,
    ts_ms           BIGINT NOT NULL,
    instrument_id   INT NOT NULL,
    buyer_is_maker  BOOLEAN NOT NULL,
    price           NUMERIC NOT NULL CHECK (price > 0),
    qty             NUMERIC NOT NULL CHECK (qty > 0),
    PRIMARY KEY (instrument_id, trade_id, ts_ms)
) PARTITION BY RANGE (ts_ms);

SELECT pf_ensure_partitions('trades',
    COALESCE((SELECT min(ts_ms) FROM trades_v1), (extract(epoch FROM now()) * 1000)::BIGINT),
    COALESCE((SELECT max(ts_ms) FROM trades_v1), (extract(epoch FROM now()) * 1000)::BIGINT)
        + 86400000);

INSERT INTO trades (trade_id, ts_ms, instrument_id, buyer_is_maker, price, qty)
    SELECT t.trade_id, t.ts_ms, i.id, t.buyer_is_maker, t.price, t.qty
    FROM trades_v1 t JOIN instruments i ON i.market = t.market AND i.symbol = t.symbol
    ON CONFLICT DO NOTHING;

DROP TABLE trades_v1;

-- 4. Buckets: per second and per minute, written only by reconciliation --------------------------
--
-- A bucket row is authoritative once its end is at or before the instrument's
-- `reconcile_cursors.through_ms`; past it, readers use raw trades (the row may still be partial).

CREATE TABLE trade_buckets_1s (
    start_ms        BIGINT NOT NULL,
    instrument_id   INT NOT NULL,
    n               INT NOT NULL,
    first_id        BIGINT NOT NULL,
    last_id         BIGINT NOT NULL,
    pq              NUMERIC NOT NULL,   -- Σ price × qty (quote volume)
    q               NUMERIC NOT NULL,   -- Σ qty (base volume)
    open            NUMERIC NOT NULL,   -- price of first_id
    high            NUMERIC NOT NULL,
    low             NUMERIC NOT NULL,
    close           NUMERIC NOT NULL,   -- price of last_id
    PRIMARY KEY (instrument_id, start_ms)
) PARTITION BY RANGE (start_ms);

CREATE TABLE trade_buckets_1m (
    start_ms        BIGINT NOT NULL,
    instrument_id   INT NOT NULL,
    n               INT NOT NULL,
    first_id        BIGINT NOT NULL,
    last_id         BIGINT NOT NULL,
    pq              NUMERIC NOT NULL,
    q               NUMERIC NOT NULL,
    open            NUMERIC NOT NULL,
    high            NUMERIC NOT NULL,
    low             NUMERIC NOT NULL,
    close           NUMERIC NOT NULL,
    PRIMARY KEY (instrument_id, start_ms)
) PARTITION BY RANGE (start_ms);

-- 5. VWAP history -----------------------------------------------------------------------------

CREATE TABLE vwap_history (
    end_ms          BIGINT NOT NULL,
    instrument_id   INT NOT NULL,
    interval_s      INT NOT NULL,
    trade_count     INT NOT NULL,
    validated       BOOLEAN NOT NULL,
    vwap            NUMERIC,            -- NULL when the window holds no trade
    volume          NUMERIC NOT NULL,
    quote_volume    NUMERIC NOT NULL,
    PRIMARY KEY (instrument_id, interval_s, end_ms)
) PARTITION BY RANGE (end_ms);

SELECT pf_ensure_partitions(p, (extract(epoch FROM now()) * 1000)::BIGINT - 86400000,
                               (extract(epoch FROM now()) * 1000)::BIGINT + 2 * 86400000)
FROM unnest(ARRAY['trades', 'trade_buckets_1s', 'trade_buckets_1m', 'vwap_history']) AS p;

-- 6. Reconciliation state ---------------------------------------------------------------------

CREATE TABLE reconcile_cursors (
    instrument_id   INT PRIMARY KEY REFERENCES instruments (id),
    -- Last trade id confirmed against REST (aggregate id on USD-M); NULL before the first run.
    last_id         BIGINT,
    -- Spot only: the last aggregate trade id walked (aggTrades pages by aggregate id).
    last_agg_id     BIGINT,
    -- Every trade with ts_ms <= through_ms is confirmed (always the last ms of a whole second),
    -- and through_id is the highest trade id among them: every trade after through_ms has a
    -- higher id (ids grow with time), which is how readers find the unconfirmed tail by index.
    through_ms      BIGINT,
    through_id      BIGINT,
    -- Time of the first confirmed trade: windows starting earlier reach before what was ever
    -- stored and confirmed, so they are never reported as validated.
    from_ms         BIGINT,
    validated_total BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION pf_create_cursor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO reconcile_cursors (instrument_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER instruments_cursor AFTER INSERT ON instruments
    FOR EACH ROW EXECUTE FUNCTION pf_create_cursor();
INSERT INTO reconcile_cursors (instrument_id) SELECT id FROM instruments ON CONFLICT DO NOTHING;

-- Ranges the broker no longer serves (its history was trimmed before reconciliation got there):
-- stored trades in them stay unconfirmed, and windows overlapping them are never `validated`.
CREATE TABLE reconcile_skips (
    instrument_id   INT NOT NULL REFERENCES instruments (id),
    from_id         BIGINT NOT NULL,
    to_id           BIGINT NOT NULL,
    from_ms         BIGINT NOT NULL,
    to_ms           BIGINT NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (instrument_id, from_id)
);

CREATE VIEW trades_validated AS
    SELECT t.*, i.market, i.symbol,
           (c.last_id IS NOT NULL AND t.trade_id <= c.last_id
            AND NOT EXISTS (SELECT 1 FROM reconcile_skips s
                            WHERE s.instrument_id = t.instrument_id
                              AND t.trade_id BETWEEN s.from_id AND s.to_id)) AS is_validated
    FROM trades t
    JOIN instruments i ON i.id = t.instrument_id
    JOIN reconcile_cursors c ON c.instrument_id = t.instrument_id;

-- 7. Worker jobs ------------------------------------------------------------------------------
--
-- Claimed with FOR UPDATE SKIP LOCKED and held under a lease; `lease_seq` grows with every claim
-- and fences the holder's writes (docs/decisions/0008-background-work.md).

CREATE TABLE jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            TEXT NOT NULL,
    -- Identity within the kind (an instrument id for `reconcile`); unique, so seeding is idempotent.
    key             TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'done', 'dead')),
    run_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    lease_seq       BIGINT NOT NULL DEFAULT 0,
    attempts        INT NOT NULL DEFAULT 0,
    last_error      TEXT,
    payload         JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (kind, key)
);

CREATE INDEX jobs_due_idx ON jobs (run_at) WHERE state = 'ready';
