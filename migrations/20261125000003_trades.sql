-- Raw trade history, written by the owning node (at-least-once) and later by REST
-- reconciliation (is_validated = true). The primary key makes every write idempotent: the same
-- trade delivered twice (handover overlap, WS duplicate, backfill of a range already seen) is
-- inserted once, with `ON CONFLICT DO NOTHING`.
--
-- `market` is part of the key because symbols are per market: the USD-M perpetual BTCUSDT and the
-- spot pair BTCUSDT are different instruments with independent id sequences (usdm ids are
-- aggregate-trade ids, the futures feed being @aggTrade).
--
-- Future work: partition by time (`PARTITION BY RANGE (ts)`, daily partitions created ahead by
-- the scheduler, retention = DROP PARTITION). Not done yet because a partitioned table needs the
-- partition key in the primary key ((market, symbol, trade_id, ts)), which weakens duplicate
-- detection to "same id and same timestamp", and partition management is its own task
-- (docs/decisions/0004-instrument-sync-and-trade-history.md).

CREATE TABLE trades (
    market          TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    trade_id        BIGINT NOT NULL,
    price           NUMERIC(28, 10) NOT NULL,
    qty             NUMERIC(28, 10) NOT NULL,
    ts              TIMESTAMPTZ NOT NULL,
    -- Exchange time in ms since the epoch, exact (TIMESTAMPTZ is µs; kept to avoid conversions).
    ts_ms           BIGINT NOT NULL,
    buyer_is_maker  BOOLEAN NOT NULL,
    is_validated    BOOLEAN NOT NULL DEFAULT false,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (market, symbol, trade_id)
);

-- Time-range reads (VWAP history, retention) per instrument.
CREATE INDEX trades_symbol_ts_idx ON trades (market, symbol, ts);
