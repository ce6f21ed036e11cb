//! Trade history writer: a bounded queue between the ingest hot path and Postgres, drained by one
//! task in batches (`trades.batch_size` rows or `trades.flush_ms`, whichever comes first), with
//! up to `trades.writers` batches inserting at once (a single batch at a time is bound by the
//! round trip, not by Postgres).
//!
//! - **Never blocks the hot path**: [`TradeWriterHandle::try_send`] fails with [`Full`] when the
//!   queue is full (counted in `pricefeed_trade_writer_queue_full_total`). A trade refused here is
//!   still live in prices; the history gap it leaves is refilled by REST reconciliation, which
//!   pages `historicalTrades` over the validated cursor anyway.
//! - **Batched `UNNEST` insert, not `COPY`**: sqlx 0.9.0 does not set TCP_NODELAY, so `COPY`
//!   stalls ~40 ms per batch on TCP; one `INSERT … SELECT FROM UNNEST(arrays)` per batch does not.
//! - **Idempotent**: `ON CONFLICT DO NOTHING` on (market, symbol, trade_id), so duplicates from a
//!   handover overlap, a WS duplicate or a backfill cost nothing and are not counted as written.
//! - **Flush on shutdown**: the task is tracked by the runtime [`Shutdown`]; on cancellation it
//!   stops accepting, drains what is queued and writes it before exiting.
//!
//! A batch that fails to insert is retried a few times with backoff, then dropped and counted
//! (`pricefeed_trade_writer_dropped_total`) — reconciliation again refills it; holding it forever
//! would only turn a Postgres outage into an out-of-memory crash.

use std::borrow::Cow;
use std::time::Duration;

use pricefeed_domain::trade::Trade;
use pricefeed_runtime::config::TradesConfig;
use pricefeed_runtime::shutdown::Shutdown;
use std::sync::Arc;

use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One queued row. The symbol is shared (`Arc<str>`) with the ingest state, so queueing a trade
/// costs no allocation on the hot path.
#[derive(Debug, Clone)]
pub struct TradeRow {
    pub market: Cow<'static, str>,
    pub symbol: Arc<str>,
    pub trade_id: u64,
    pub price: Decimal,
    pub qty: Decimal,
    pub ts_ms: i64,
    pub buyer_is_maker: bool,
}

type Row = TradeRow;

/// The queue is full (or the writer has stopped): the trade was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("trade writer queue full")]
pub struct Full;

/// Sending side, cheap to clone; one per ingest task.
#[derive(Debug, Clone)]
pub struct TradeWriterHandle {
    tx: mpsc::Sender<Row>,
    /// Resolved once: a `counter!` lookup per refused trade would cost most when the queue is
    /// already full, i.e. under the highest load.
    full: metrics::Counter,
}

impl TradeWriterHandle {
    /// Queues one trade of `market` (`spot`, `usdm`, `options`) without waiting.
    pub fn try_send(&self, market: &str, t: &Trade) -> Result<(), Full> {
        // The three real markets avoid an allocation per trade.
        let market = match market {
            "spot" => Cow::Borrowed("spot"),
            "usdm" => Cow::Borrowed("usdm"),
            "options" => Cow::Borrowed("options"),
            other => Cow::Owned(other.to_string()),
        };
        self.try_send_row(TradeRow {
            market,
            symbol: Arc::from(t.symbol.as_str()),
            trade_id: t.trade_id,
            price: t.price,
            qty: t.qty,
            ts_ms: t.ts_ms,
            buyer_is_maker: t.buyer_is_maker,
        })
    }

    /// Queues a prepared row without waiting; the hot path's variant of [`Self::try_send`].
    pub fn try_send_row(&self, row: TradeRow) -> Result<(), Full> {
        self.tx.try_send(row).map_err(|_| {
            self.full.increment(1);
            Full
        })
    }
}

/// The writer task.
#[derive(Debug)]
pub struct TradeWriter;

/// Insert attempts per batch before it is dropped.
const ATTEMPTS: u32 = 3;

impl TradeWriter {
    /// Starts the writer on `shutdown`'s tracker and returns the sending handle.
    pub fn spawn(pool: PgPool, cfg: TradesConfig, shutdown: &Shutdown) -> TradeWriterHandle {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let token = shutdown.token();
        shutdown.tracker().spawn(run(pool, cfg, rx, token));
        TradeWriterHandle {
            tx,
            full: metrics::counter!("pricefeed_trade_writer_queue_full_total"),
        }
    }
}

async fn run(
    pool: PgPool,
    cfg: TradesConfig,
    mut rx: mpsc::Receiver<Row>,
    token: tokio_util::sync::CancellationToken,
) {
    let batch = cfg.batch_size.max(1);
    let flush = Duration::from_millis(cfg.flush_ms.max(1));
    let writers = cfg.writers.max(1);
    // Batches in flight; owned (and awaited) by this tracked task, so shutdown waits for them.
    let mut inflight = tokio::task::JoinSet::new();
    let mut buf: Vec<Row> = Vec::with_capacity(batch);
    loop {
        // Wait for the first row of a batch (no timer runs while idle).
        tokio::select! {
            n = rx.recv_many(&mut buf, batch) => if n == 0 { break },
            () = token.cancelled() => break,
        }
        // Then top it up until full or until the oldest row has waited `flush`.
        let deadline = Instant::now() + flush;
        let mut stop = false;
        while buf.len() < batch {
            let room = batch - buf.len();
            tokio::select! {
                n = rx.recv_many(&mut buf, room) => if n == 0 { stop = true; break },
                () = tokio::time::sleep_until(deadline) => break,
                () = token.cancelled() => { stop = true; break },
            }
        }
        // Rows carry their own key and the insert is idempotent, so batches may land in any
        // order; while all writers are busy the queue absorbs the burst.
        while inflight.len() >= writers {
            inflight.join_next().await;
        }
        let rows = std::mem::replace(&mut buf, Vec::with_capacity(batch));
        let p = pool.clone();
        inflight.spawn(async move { write_with_retry(&p, &rows).await });
        if stop {
            break;
        }
    }
    // Shutdown: refuse new rows, then write everything already queued.
    rx.close();
    let mut drained = 0usize;
    while let Some(r) = rx.recv().await {
        buf.push(r);
        if buf.len() >= batch {
            drained += buf.len();
            write_with_retry(&pool, &buf).await;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        drained += buf.len();
        write_with_retry(&pool, &buf).await;
    }
    while inflight.join_next().await.is_some() {}
    tracing::info!(drained, "trade writer stopped");
}

async fn write_with_retry(pool: &PgPool, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        match insert_batch(pool, rows).await {
            Ok(written) => {
                metrics::counter!("pricefeed_trades_written_total").increment(written);
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, rows = rows.len(), "trade batch insert failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            Err(e) => {
                metrics::counter!("pricefeed_trade_writer_dropped_total")
                    .increment(rows.len() as u64);
                tracing::error!(error = %e, rows = rows.len(), "trade batch dropped after retries; reconciliation will refill it");
            }
        }
    }
}

/// Inserts `rows` in one statement; returns how many were new (duplicates are skipped).
async fn insert_batch(pool: &PgPool, rows: &[Row]) -> Result<u64, sqlx::Error> {
    let n = rows.len();
    let mut market = Vec::with_capacity(n);
    let mut symbol = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut price: Vec<Decimal> = Vec::with_capacity(n);
    let mut qty: Vec<Decimal> = Vec::with_capacity(n);
    let mut ts_ms = Vec::with_capacity(n);
    let mut maker = Vec::with_capacity(n);
    for r in rows {
        // Ids beyond i64 do not exist on any venue; such a row can only be corrupt.
        let Ok(tid) = i64::try_from(r.trade_id) else {
            continue;
        };
        market.push(r.market.as_ref());
        symbol.push(&*r.symbol);
        id.push(tid);
        price.push(r.price);
        qty.push(r.qty);
        ts_ms.push(r.ts_ms);
        maker.push(r.buyer_is_maker);
    }
    let res = sqlx::query(
        "INSERT INTO trades (market, symbol, trade_id, price, qty, ts, ts_ms, buyer_is_maker) \
         SELECT m, s, i, p, q, 'epoch'::timestamptz + t * interval '1 millisecond', t, b \
         FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::numeric[], $5::numeric[], \
                     $6::int8[], $7::bool[]) AS x(m, s, i, p, q, t, b) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&market)
    .bind(&symbol)
    .bind(&id)
    .bind(&price)
    .bind(&qty)
    .bind(&ts_ms)
    .bind(&maker)
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}

/// Stored trade ids of one instrument, ascending (tests and reconciliation checks).
pub async fn trade_ids(pool: &PgPool, market: &str, symbol: &str) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT trade_id FROM trades WHERE market = $1 AND symbol = $2 ORDER BY trade_id",
    )
    .bind(market)
    .bind(symbol)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(i,)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pricefeed_domain::instrument::Symbol;

    fn trade(sym: &str, id: u64) -> Trade {
        Trade {
            symbol: Symbol::parse(sym).unwrap(),
            trade_id: id,
            price: Decimal::new(9_000_012_345, 5),
            qty: Decimal::new(123, 8),
            ts_ms: 1_767_225_600_000 + id as i64,
            buyer_is_maker: id.is_multiple_of(2),
        }
    }

    fn cfg(batch: usize, flush_ms: u64, cap: usize) -> TradesConfig {
        TradesConfig {
            batch_size: batch,
            flush_ms,
            queue_capacity: cap,
            writers: 2,
        }
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn duplicates_are_written_once_and_values_are_exact(pool: PgPool) {
        let shutdown = Shutdown::new();
        let w = TradeWriter::spawn(pool.clone(), cfg(4, 20, 1000), &shutdown);
        // Same ids twice (a handover overlap), and the same symbol on another market.
        for round in 0..2 {
            for id in 1..=10 {
                w.try_send("spot", &trade("BTCUSDT", id)).unwrap();
            }
            if round == 0 {
                w.try_send("usdm", &trade("BTCUSDT", 5)).unwrap();
            }
        }
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids = trade_ids(&pool, "spot", "BTCUSDT").await.unwrap();
            if ids == (1..=10).collect::<Vec<i64>>() {
                break;
            }
            assert!(std::time::Instant::now() < until, "ids so far {ids:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(trade_ids(&pool, "usdm", "BTCUSDT").await.unwrap(), [5]);
        let (price, ts_ms, ts, validated): (Decimal, i64, time::OffsetDateTime, bool) =
            sqlx::query_as(
                "SELECT price, ts_ms, ts, is_validated FROM trades \
                 WHERE market = 'spot' AND symbol = 'BTCUSDT' AND trade_id = 3",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(price, Decimal::new(9_000_012_345, 5));
        assert_eq!(ts_ms, 1_767_225_600_003);
        assert_eq!((ts.unix_timestamp_nanos() / 1_000_000) as i64, ts_ms);
        assert!(!validated);
        shutdown.trigger();
        assert!(shutdown.wait(Duration::from_secs(5)).await);
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn flushes_queued_trades_on_shutdown(pool: PgPool) {
        let shutdown = Shutdown::new();
        // A flush period far longer than the test: only shutdown can write the partial batch.
        let w = TradeWriter::spawn(pool.clone(), cfg(1000, 60_000, 5000), &shutdown);
        for id in 1..=2500 {
            w.try_send("options", &trade("BTC-261127-90000-C", id))
                .unwrap();
        }
        shutdown.trigger();
        assert!(shutdown.wait(Duration::from_secs(10)).await);
        let ids = trade_ids(&pool, "options", "BTC-261127-90000-C")
            .await
            .unwrap();
        assert_eq!(ids.len(), 2500);
        // After shutdown the handle refuses instead of blocking or panicking.
        assert_eq!(
            w.try_send("options", &trade("BTC-261127-90000-C", 9)),
            Err(Full)
        );
    }

    #[tokio::test]
    async fn full_queue_refuses_without_blocking() {
        // A lazy pool that never connects: the writer is stuck retrying, the queue fills up.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let shutdown = Shutdown::new();
        let w = TradeWriter::spawn(pool, cfg(2, 1, 4), &shutdown);
        let mut refused = 0;
        for id in 0..100 {
            if w.try_send("spot", &trade("ETHUSDT", id)) == Err(Full) {
                refused += 1;
            }
        }
        // At most capacity + one batch in flight were accepted.
        assert!(refused >= 100 - 4 - 2, "refused {refused}");
        shutdown.trigger();
        shutdown.wait(Duration::from_secs(10)).await;
    }

    /// Throughput figure for docs (run with `--ignored --nocapture`): 100k trades through the
    /// writer with default batching, timed until the last row is committed.
    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    #[ignore = "measurement, not a check"]
    async fn measure_throughput(pool: PgPool) {
        let shutdown = Shutdown::new();
        let w = TradeWriter::spawn(pool.clone(), TradesConfig::default(), &shutdown);
        let n = 100_000u64;
        let started = std::time::Instant::now();
        let mut refused = 0;
        for id in 0..n {
            while w.try_send("spot", &trade("BTCUSDT", id)).is_err() {
                refused += 1;
                tokio::task::yield_now().await;
            }
        }
        shutdown.trigger();
        assert!(shutdown.wait(Duration::from_secs(60)).await);
        let took = started.elapsed();
        assert_eq!(
            trade_ids(&pool, "spot", "BTCUSDT").await.unwrap().len() as u64,
            n
        );
        println!(
            "trade writer: {n} rows in {took:?} = {:.0} rows/s (batch 1000, UNNEST over TCP; {refused} full-queue retries)",
            n as f64 / took.as_secs_f64()
        );
    }
}
