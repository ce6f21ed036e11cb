//! The trade-history writer: accepted trades from the ingest hand-off into the partitioned
//! `trades` table, idempotently, without ever blocking ingestion and without dropping rows
//! while Postgres is slow or down.
//!
//! Flow: the node's history consumer collects accepted trades in a plain `Vec` under the ingest
//! lock (no channel operation per trade); every flush tick the whole `Vec` is handed to
//! [`TradeWriterHandle::submit`], which never waits. One dispatcher task owns the queue:
//! - chunks join an in-memory queue of at most `trades.queue_capacity` rows; beyond that they
//!   are appended to the spill files ([`super::spill`]) and read back when the queue has room;
//!   only when the disk budget is used up too is a chunk refused (counted; REST reconciliation
//!   refills it);
//! - batches of up to `trades.batch_size` rows (or whatever waited `trades.flush_ms`) are
//!   written by up to `trades.writers` concurrent transactions; a batch that fails is retried
//!   with backoff for as long as it takes, while the queue and the spill absorb the inflow;
//! - on shutdown the queue is written within `trades.shutdown_flush_ms`, and whatever is left
//!   (Postgres down) is spilled, then replayed by the next start.
//!
//! Each batch is one transaction: `SELECT … FROM reconcile_cursors … FOR SHARE` for its
//! instruments, then one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` of the rows
//! above their instrument's cursor, sorted by key (concurrent batches then lock keys in the same
//! order and cannot deadlock). Rows at or below the cursor are already confirmed by REST: the
//! confirmed copy is stored, and a late WebSocket copy (possibly with a corrupted time, which
//! would not collide with the primary key) must not be added next to it. The share lock makes
//! reconciliation's cursor advance and this filter mutually exclusive.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pricefeed_domain::instrument::Market;
use pricefeed_domain::trade::Trade;
use pricefeed_runtime::config::{ConfigError, Validate};
use pricefeed_runtime::shutdown::Shutdown;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ids::InstrumentIds;
use super::numeric::FastNumeric;
use super::partitions::{KnownDays, Table};
use super::spill::Spill;

/// `[trades]`: the trade-history writer of a node.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TradesConfig {
    /// Rows per INSERT.
    pub batch_size: usize,
    /// Longest time a trade waits in a partial batch before it is written.
    pub flush_ms: u64,
    /// Rows held in memory between the ingest hand-off and Postgres; beyond that, chunks go to
    /// the spill files.
    pub queue_capacity: usize,
    /// Batches written concurrently (each holds one pooled connection while it runs).
    pub writers: usize,
    /// Directory of the spill files; empty = `<temp dir>/pricefeed-spill/<node id>`. Give each
    /// node its own, stable directory in production so a restart replays what it spilled.
    pub spill_dir: String,
    /// Disk budget of the spill files; chunks beyond it are refused and counted.
    pub spill_max_bytes: u64,
    /// How long shutdown keeps writing the queue before spilling the rest.
    pub shutdown_flush_ms: u64,
}

impl Default for TradesConfig {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            flush_ms: 100,
            queue_capacity: 500_000,
            writers: 3,
            spill_dir: String::new(),
            spill_max_bytes: 1 << 30,
            shutdown_flush_ms: 5_000,
        }
    }
}

impl Validate for TradesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("trades.{key}"), msg));
        if !(1..=50_000).contains(&self.batch_size) {
            return k("batch_size", "must be between 1 and 50000");
        }
        if !(1..=60_000).contains(&self.flush_ms) {
            return k("flush_ms", "must be between 1 and 60000");
        }
        if self.queue_capacity < self.batch_size || self.queue_capacity > 20_000_000 {
            return k(
                "queue_capacity",
                "must be at least trades.batch_size and at most 20000000",
            );
        }
        if !(1..=64).contains(&self.writers) {
            return k("writers", "must be between 1 and 64");
        }
        if self.spill_max_bytes > (1 << 40) {
            return k("spill_max_bytes", "must be at most 1 TiB");
        }
        if self.shutdown_flush_ms > 600_000 {
            return k("shutdown_flush_ms", "must be at most 600000");
        }
        Ok(())
    }
}

impl TradesConfig {
    /// The spill directory of `node_id` in the cluster `owner` (see [`spill_owner`]): the
    /// default one is per cluster, so two clusters on one machine never share it.
    pub fn spill_path(&self, node_id: &str, owner: &str) -> PathBuf {
        if self.spill_dir.is_empty() {
            std::env::temp_dir()
                .join("pricefeed-spill")
                .join(super::spill::owner_tag(owner))
                .join(node_id)
        } else {
            PathBuf::from(&self.spill_dir)
        }
    }
}

/// The cluster a spill file belongs to: the database address (credentials masked) and the
/// Redis key prefix.
pub fn spill_owner(database_url_redacted: &str, key_prefix: &str) -> String {
    format!("{database_url_redacted}#{key_prefix}")
}

/// One accepted trade on its way to Postgres. The symbol is shared (`Arc<str>`) with the ingest
/// state, so queueing a trade allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRow {
    pub market: Market,
    pub symbol: Arc<str>,
    pub trade_id: u64,
    pub price: Decimal,
    pub qty: Decimal,
    pub ts_ms: i64,
    pub buyer_is_maker: bool,
}

impl TradeRow {
    pub fn from_trade(market: Market, t: &Trade) -> Self {
        Self {
            market,
            symbol: Arc::from(t.symbol.as_str()),
            trade_id: t.trade_id,
            price: t.price,
            qty: t.qty,
            ts_ms: t.ts_ms,
            buyer_is_maker: t.buyer_is_maker,
        }
    }
}

/// The writer has stopped; the chunk was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("trade writer stopped")]
pub struct Stopped;

/// Sending side of the writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct TradeWriterHandle {
    tx: mpsc::UnboundedSender<Vec<TradeRow>>,
    refused: metrics::Counter,
}

impl TradeWriterHandle {
    /// Hands a chunk of rows to the writer without waiting. The queue behind it is bounded by
    /// `trades.queue_capacity` plus the spill budget, which the dispatcher enforces.
    pub fn submit(&self, rows: Vec<TradeRow>) -> Result<(), Stopped> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len() as u64;
        self.tx.send(rows).map_err(|_| {
            self.refused.increment(n);
            Stopped
        })
    }
}

/// The writer task.
#[derive(Debug)]
pub struct TradeWriter;

impl TradeWriter {
    /// Starts the dispatcher on `shutdown`'s tracker, spilling into `spill_dir` on behalf of
    /// the cluster `owner` ([`spill_owner`]).
    pub fn spawn(
        pool: PgPool,
        cfg: TradesConfig,
        spill_dir: PathBuf,
        owner: &str,
        shutdown: &Shutdown,
    ) -> anyhow::Result<TradeWriterHandle> {
        let spill = Spill::open(&spill_dir, cfg.spill_max_bytes, owner).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the trade spill directory {} (config key `trades.spill_dir`): {e}",
                spill_dir.display()
            )
        })?;
        if !spill.is_empty() {
            tracing::info!(bytes = spill.bytes(), dir = %spill_dir.display(), "replaying spilled trades from an earlier run");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Dispatcher {
            pool,
            ids: InstrumentIds::new(),
            days: KnownDays::default(),
            cfg,
            spill,
            queue: VecDeque::new(),
            oldest: None,
            m: Metrics::new(),
        };
        shutdown.tracker().spawn(d.run(rx, shutdown.token()));
        Ok(TradeWriterHandle {
            tx,
            refused: metrics::counter!("pricefeed_trade_writer_refused_total"),
        })
    }
}

#[derive(Clone)]
struct Metrics {
    written: metrics::Counter,
    duplicates: metrics::Counter,
    below_cursor: metrics::Counter,
    spilled: metrics::Counter,
    refused: metrics::Counter,
    failures: metrics::Counter,
    queue_rows: metrics::Gauge,
    spill_bytes: metrics::Gauge,
    batch_seconds: metrics::Histogram,
}

impl Metrics {
    fn new() -> Self {
        Self {
            written: metrics::counter!("pricefeed_trades_written_total"),
            duplicates: metrics::counter!("pricefeed_trade_writer_duplicates_total"),
            below_cursor: metrics::counter!("pricefeed_trade_writer_confirmed_skipped_total"),
            spilled: metrics::counter!("pricefeed_trade_writer_spilled_rows_total"),
            refused: metrics::counter!("pricefeed_trade_writer_refused_total"),
            failures: metrics::counter!("pricefeed_trade_writer_batch_failures_total"),
            queue_rows: metrics::gauge!("pricefeed_trade_writer_queue_rows"),
            spill_bytes: metrics::gauge!("pricefeed_trade_writer_spill_bytes"),
            batch_seconds: metrics::histogram!("pricefeed_trade_writer_batch_seconds"),
        }
    }
}

/// What a batch future ends with.
enum Outcome {
    Written,
    /// Given up (shutdown deadline) with its rows, to be spilled.
    Returned(Vec<TradeRow>),
}

struct Dispatcher {
    pool: PgPool,
    ids: InstrumentIds,
    days: KnownDays,
    cfg: TradesConfig,
    spill: Spill,
    queue: VecDeque<TradeRow>,
    /// When the row at the front of the queue arrived (for `flush_ms`).
    oldest: Option<Instant>,
    m: Metrics,
}

impl Dispatcher {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Vec<TradeRow>>,
        token: CancellationToken,
    ) {
        let batch = self.cfg.batch_size;
        let flush = Duration::from_millis(self.cfg.flush_ms);
        let give_up = CancellationToken::new();
        let mut inflight: JoinSet<Outcome> = JoinSet::new();
        loop {
            self.refill();
            // Start batches while a writer is free and a batch is due.
            while inflight.len() < self.cfg.writers
                && (self.queue.len() >= batch
                    || (!self.queue.is_empty()
                        && self.oldest.is_some_and(|t| t.elapsed() >= flush)))
            {
                let rows = self.take(batch);
                inflight.spawn(write_batch(
                    self.pool.clone(),
                    self.ids.clone(),
                    self.days.clone(),
                    rows,
                    give_up.clone(),
                    self.m.clone(),
                ));
            }
            self.m.queue_rows.set(self.queue.len() as f64);
            self.m.spill_bytes.set(self.spill.bytes() as f64);
            let wake = self.oldest.map(|t| t + flush);
            tokio::select! {
                biased;
                chunk = rx.recv() => match chunk {
                    Some(c) => self.accept(c),
                    None => break,
                },
                Some(done) = inflight.join_next(), if !inflight.is_empty() => self.finished(done),
                () = async { tokio::time::sleep_until(wake.expect("guarded")).await },
                    if wake.is_some() && inflight.len() < self.cfg.writers => {}
                () = token.cancelled() => break,
            }
        }

        // Shutdown: take what the ingest side still hands over (until every handle is dropped
        // or the deadline), write for a while, spill the rest.
        let deadline = Instant::now() + Duration::from_millis(self.cfg.shutdown_flush_ms);
        while let Ok(Some(c)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            self.accept(c);
        }
        rx.close();
        while let Ok(c) = rx.try_recv() {
            self.accept(c);
        }
        let started = self.queue.len() + inflight.len() * batch;
        loop {
            while inflight.len() < self.cfg.writers && !self.queue.is_empty() {
                let rows = self.take(batch);
                inflight.spawn(write_batch(
                    self.pool.clone(),
                    self.ids.clone(),
                    self.days.clone(),
                    rows,
                    give_up.clone(),
                    self.m.clone(),
                ));
            }
            if inflight.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = inflight.join_next() => self.finished(done),
                () = tokio::time::sleep_until(deadline) => {
                    give_up.cancel();
                    while let Some(done) = inflight.join_next().await {
                        self.finished(done);
                    }
                    break;
                }
            }
        }
        let left: Vec<TradeRow> = self.queue.drain(..).collect();
        let spilled = left.len();
        if !left.is_empty() && self.spill.append(&left).is_err() {
            self.m.refused.increment(left.len() as u64);
            tracing::error!(
                rows = left.len(),
                "trade spill full at shutdown; reconciliation will refill these trades"
            );
        }
        tracing::info!(
            queued_at_stop = started,
            spilled,
            spill_bytes = self.spill.bytes(),
            "trade writer stopped"
        );
    }

    /// Queue or spill one chunk.
    fn accept(&mut self, chunk: Vec<TradeRow>) {
        if self.queue.len() + chunk.len() <= self.cfg.queue_capacity && self.spill.is_empty() {
            if self.queue.is_empty() {
                self.oldest = Some(Instant::now());
            }
            self.queue.extend(chunk);
            return;
        }
        // Behind: keep arrival order roughly fair by queueing new chunks after the spilled ones.
        match self.spill.append(&chunk) {
            Ok(()) => self.m.spilled.increment(chunk.len() as u64),
            Err(_) => {
                self.m.refused.increment(chunk.len() as u64);
                tracing::warn!(
                    rows = chunk.len(),
                    "trade queue and spill full; rows refused (reconciliation refills them)"
                );
            }
        }
    }

    /// Moves spilled chunks back into the queue while it has room.
    fn refill(&mut self) {
        while !self.spill.is_empty() && self.queue.len() < self.cfg.queue_capacity / 2 {
            match self.spill.pop() {
                Some(rows) => {
                    if self.queue.is_empty() {
                        self.oldest = Some(Instant::now());
                    }
                    self.queue.extend(rows);
                }
                None => break,
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<TradeRow> {
        let n = n.min(self.queue.len());
        let rows: Vec<TradeRow> = self.queue.drain(..n).collect();
        self.oldest = (!self.queue.is_empty()).then(Instant::now);
        rows
    }

    fn finished(&mut self, done: Result<Outcome, tokio::task::JoinError>) {
        match done {
            Ok(Outcome::Written) => {}
            Ok(Outcome::Returned(rows)) => {
                if self.spill.append(&rows).is_err() {
                    self.m.refused.increment(rows.len() as u64);
                } else {
                    self.m.spilled.increment(rows.len() as u64);
                }
            }
            Err(e) => tracing::error!(error = %e, "trade batch task failed"),
        }
    }
}

/// Writes one batch, retrying with backoff until it succeeds or `give_up` fires (then the rows
/// come back to be spilled).
async fn write_batch(
    pool: PgPool,
    ids: InstrumentIds,
    days: KnownDays,
    rows: Vec<TradeRow>,
    give_up: CancellationToken,
    m: Metrics,
) -> Outcome {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let started = std::time::Instant::now();
        let res = tokio::select! {
            r = insert(&pool, &ids, &days, &rows) => r,
            () = give_up.cancelled() => return Outcome::Returned(rows),
        };
        match res {
            Ok(c) => {
                m.batch_seconds.record(started.elapsed().as_secs_f64());
                m.written.increment(c.written);
                m.duplicates.increment(c.offered - c.written);
                m.below_cursor.increment(c.below_cursor);
                if attempt > 1 {
                    tracing::info!(
                        attempt,
                        rows = rows.len(),
                        "trade batch written after retries"
                    );
                }
                return Outcome::Written;
            }
            Err(e) => {
                m.failures.increment(1);
                if is_missing_partition(&e) {
                    days.forget();
                }
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(error = %e, attempt, rows = rows.len(), "trade batch insert failed; retrying (rows are kept)");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = give_up.cancelled() => return Outcome::Returned(rows),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn is_missing_partition(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("23514") && d.message().contains("partition"))
}

/// Counts of one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    /// Rows above their cursor, offered to the INSERT.
    pub offered: u64,
    /// Rows actually inserted (the rest were duplicates).
    pub written: u64,
    /// Rows at or below their instrument's reconciliation cursor (already confirmed).
    pub below_cursor: u64,
}

/// One batch in one transaction (see the module docs); public for the benchmark, which measures
/// exactly this against a plain `COPY`.
pub async fn insert(
    pool: &PgPool,
    ids: &InstrumentIds,
    days: &KnownDays,
    rows: &[TradeRow],
) -> Result<BatchCounts, sqlx::Error> {
    if rows.is_empty() {
        return Ok(BatchCounts::default());
    }
    // Instrument ids, resolved once per distinct instrument of the batch.
    let mut distinct: Vec<(Market, Arc<str>)> = Vec::new();
    let mut slot: foldhash::HashMap<(Market, &str), usize> = foldhash::HashMap::default();
    let mut row_inst = Vec::with_capacity(rows.len());
    for r in rows {
        let k = (r.market, &*r.symbol);
        let i = *slot.entry(k).or_insert_with(|| {
            distinct.push((r.market, r.symbol.clone()));
            distinct.len() - 1
        });
        row_inst.push(i);
    }
    let inst_ids = ids.resolve(pool, &distinct).await?;
    let (lo, hi) = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
        (lo.min(r.ts_ms), hi.max(r.ts_ms))
    });
    days.ensure(pool, Table::Trades, lo, hi).await?;

    let mut tx = pool.begin().await?;
    let cursors: Vec<(i32, Option<i64>)> = sqlx::query_as(
        "SELECT instrument_id, last_id FROM reconcile_cursors \
         WHERE instrument_id = ANY($1) ORDER BY instrument_id FOR SHARE",
    )
    .bind(&inst_ids)
    .fetch_all(&mut *tx)
    .await?;
    let floor: HashMap<i32, i64> = cursors
        .into_iter()
        .filter_map(|(i, c)| c.map(|c| (i, c)))
        .collect();

    // Rows grouped per instrument, ids ascending within each, groups by instrument id: the
    // (instrument, id) key order concurrent batches lock in. Feeds deliver ids nearly in order,
    // so this is a linear pass where a sort of the whole batch was the writer's largest cost.
    let mut groups: Vec<Vec<(i64, usize)>> = vec![Vec::new(); distinct.len()];
    let mut below = 0u64;
    for (n, r) in rows.iter().enumerate() {
        let g = row_inst[n];
        // Ids beyond i64 do not exist on any venue; such a row can only be corrupt.
        let Ok(tid) = i64::try_from(r.trade_id) else {
            continue;
        };
        if floor.get(&inst_ids[g]).is_some_and(|&c| tid <= c) {
            below += 1;
            continue;
        }
        groups[g].push((tid, n));
    }
    let mut group_order: Vec<usize> = (0..groups.len()).collect();
    group_order.sort_unstable_by_key(|&g| inst_ids[g]);
    let mut order: Vec<(i32, i64, usize)> = Vec::with_capacity(rows.len());
    for g in group_order {
        let v = &mut groups[g];
        if !v.is_sorted() {
            v.sort_unstable();
        }
        v.dedup_by_key(|x| x.0);
        order.extend(v.iter().map(|&(t, n)| (inst_ids[g], t, n)));
    }
    let k = order.len();
    let mut inst = Vec::with_capacity(k);
    let mut tid = Vec::with_capacity(k);
    let mut ts = Vec::with_capacity(k);
    let mut maker = Vec::with_capacity(k);
    let mut price: Vec<FastNumeric> = Vec::with_capacity(k);
    let mut qty: Vec<FastNumeric> = Vec::with_capacity(k);
    for &(i, t, n) in &order {
        let r = &rows[n];
        inst.push(i);
        tid.push(t);
        ts.push(r.ts_ms);
        maker.push(r.buyer_is_maker);
        price.push(FastNumeric(r.price));
        qty.push(FastNumeric(r.qty));
    }
    let written = if k == 0 {
        0
    } else {
        sqlx::query(
            "INSERT INTO trades (trade_id, ts_ms, instrument_id, buyer_is_maker, price, qty) \
             SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int4[], $4::bool[], \
                                  $5::numeric[], $6::numeric[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&tid)
        .bind(&ts)
        .bind(&inst)
        .bind(&maker)
        .bind(&price)
        .bind(&qty)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    };
    tx.commit().await?;
    Ok(BatchCounts {
        offered: k as u64,
        written,
        below_cursor: below,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn row(market: Market, sym: &str, id: u64) -> TradeRow {
        TradeRow {
            market,
            symbol: Arc::from(sym),
            trade_id: id,
            price: Decimal::new(9_000_012_345, 5),
            qty: Decimal::new(123, 8),
            ts_ms: 1_767_225_600_000 + id as i64,
            buyer_is_maker: id.is_multiple_of(2),
        }
    }

    fn cfg(batch: usize, flush_ms: u64, cap: usize, dir: &std::path::Path) -> TradesConfig {
        TradesConfig {
            batch_size: batch,
            flush_ms,
            queue_capacity: cap,
            writers: 2,
            spill_dir: dir.display().to_string(),
            spill_max_bytes: 1 << 24,
            shutdown_flush_ms: 2_000,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pf-writer-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    async fn ids(pool: &PgPool, market: &str, symbol: &str) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT t.trade_id FROM trades t JOIN instruments i ON i.id = t.instrument_id \
             WHERE i.market = $1 AND i.symbol = $2 ORDER BY t.trade_id",
        )
        .bind(market)
        .bind(symbol)
        .fetch_all(pool)
        .await
        .unwrap()
    }

    async fn wait_ids(pool: &PgPool, market: &str, symbol: &str, want: usize) -> Vec<i64> {
        let until = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = ids(pool, market, symbol).await;
            if got.len() >= want || std::time::Instant::now() > until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn duplicates_are_written_once_and_values_are_exact(pool: PgPool) {
        let d = scratch("dup");
        let shutdown = Shutdown::new();
        let w = TradeWriter::spawn(
            pool.clone(),
            cfg(4, 20, 1000, &d),
            d.clone(),
            "test#pf",
            &shutdown,
        )
        .unwrap();
        // Same ids twice (a handover overlap), and the same symbol on another market.
        for _ in 0..2 {
            w.submit((1..=10).map(|i| row(Market::Spot, "BTCUSDT", i)).collect())
                .unwrap();
        }
        w.submit(vec![row(Market::Usdm, "BTCUSDT", 5)]).unwrap();
        assert_eq!(
            wait_ids(&pool, "spot", "BTCUSDT", 10).await,
            (1..=10).collect::<Vec<i64>>()
        );
        assert_eq!(wait_ids(&pool, "usdm", "BTCUSDT", 1).await, [5]);
        let (price, ts_ms): (Decimal, i64) = sqlx::query_as(
            "SELECT price, ts_ms FROM trades t JOIN instruments i ON i.id = t.instrument_id \
             WHERE i.market = 'spot' AND i.symbol = 'BTCUSDT' AND trade_id = 3",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(price, Decimal::from_str("90000.12345").unwrap());
        assert_eq!(ts_ms, 1_767_225_600_003);
        shutdown.trigger();
        assert!(shutdown.wait(Duration::from_secs(5)).await);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn rows_at_or_below_the_cursor_are_skipped(pool: PgPool) {
        let ids_cache = InstrumentIds::new();
        let days = KnownDays::default();
        let rows: Vec<TradeRow> = (1..=6).map(|i| row(Market::Spot, "ETHUSDT", i)).collect();
        let c = insert(&pool, &ids_cache, &days, &rows[..2]).await.unwrap();
        assert_eq!(
            c,
            BatchCounts {
                offered: 2,
                written: 2,
                below_cursor: 0
            }
        );
        // Reconciliation confirmed up to id 4.
        sqlx::query(
            "UPDATE reconcile_cursors SET last_id = 4 WHERE instrument_id = \
             (SELECT id FROM instruments WHERE market = 'spot' AND symbol = 'ETHUSDT')",
        )
        .execute(&pool)
        .await
        .unwrap();
        // A late copy of 3 with a corrupted time would not collide with any key: skipped.
        let mut late = rows[2].clone();
        late.ts_ms += 86_400_000;
        let c = insert(
            &pool,
            &ids_cache,
            &days,
            &[late, rows[4].clone(), rows[5].clone(), rows[5].clone()],
        )
        .await
        .unwrap();
        assert_eq!(
            c,
            BatchCounts {
                offered: 2,
                written: 2,
                below_cursor: 1
            }
        );
        assert_eq!(ids(&pool, "spot", "ETHUSDT").await, [1, 2, 5, 6]);
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn postgres_down_spills_and_a_restart_replays(pool: PgPool) {
        let d = scratch("spill");
        // A pool that never connects: every batch keeps failing, the queue fills, chunks spill.
        let dead = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(100))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let shutdown = Shutdown::new();
        let w =
            TradeWriter::spawn(dead, cfg(10, 5, 40, &d), d.clone(), "test#pf", &shutdown).unwrap();
        for c in 0..20u64 {
            w.submit(
                (c * 10 + 1..=c * 10 + 10)
                    .map(|i| row(Market::Options, "BTC-261127-90000-C", i))
                    .collect(),
            )
            .unwrap();
        }
        shutdown.trigger();
        assert!(shutdown.wait(Duration::from_secs(10)).await);
        assert!(
            w.submit(vec![row(Market::Spot, "X1", 1)]).is_err(),
            "stopped"
        );
        // Nothing was lost: a new writer on a working pool replays all 200 rows.
        let shutdown = Shutdown::new();
        let _w = TradeWriter::spawn(
            pool.clone(),
            cfg(10, 5, 40, &d),
            d.clone(),
            "test#pf",
            &shutdown,
        )
        .unwrap();
        let got = wait_ids(&pool, "options", "BTC-261127-90000-C", 200).await;
        assert_eq!(got, (1..=200).collect::<Vec<i64>>());
        shutdown.trigger();
        assert!(shutdown.wait(Duration::from_secs(5)).await);
        assert!(
            Spill::open(&d, 1 << 20, "test#pf").unwrap().is_empty(),
            "replayed files are deleted"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
