//! `history-write` and `history-read`: the trade-history store against a private Postgres.
//!
//! - **write**: the node's trade writer ([`pricefeed_store::history::writer`], the same code,
//!   in process) fed at a fixed rate in 20 ms chunks like the ingest hand-off, for a bounded
//!   time: rows written per second, rows spilled and refused, the longest queue; then a plain
//!   text `COPY` of the same rows into the same (emptied) table in the same run, over TCP and
//!   over the Unix socket; and the bytes each stored trade takes.
//! - **read**: a generator fills `trades` (≥ 10 M rows over several instruments and days) and
//!   the buckets, with the cursors confirming all of it; then random as-of VWAP windows (5 m and
//!   1 h) and 24 h of 1-minute candles through the store's read functions the API calls, p50 and
//!   p99, next to the same windows summed from raw trades.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::Market;
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::history::read::{self, Horizon};
use pricefeed_store::history::writer::{TradeRow, TradeWriter, TradesConfig};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::cluster::Env;
use crate::procs::Postgres;
use crate::procs::now_ms;
use crate::report::{Table, percentile};

#[derive(Debug, Clone, clap::Args)]
pub struct WriteArgs {
    /// Rows per second fed to the writer (above the 300 k target, so the figure is what the
    /// writer absorbs rather than what it was given).
    #[arg(long, default_value_t = 400_000)]
    pub rate: u64,
    /// Seconds fed.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Instruments the rows are spread over.
    #[arg(long, default_value_t = 4)]
    pub instruments: u32,
    /// Concurrent writer transactions (`trades.writers`).
    #[arg(long, default_value_t = 3)]
    pub writers: usize,
    /// Rows per batch (`trades.batch_size`).
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// Trades generated.
    #[arg(long, default_value_t = 10_000_000)]
    pub trades: i64,
    /// Instruments they are spread over (one trade every `days · 86400 / (trades /
    /// instruments)` seconds each).
    #[arg(long, default_value_t = 10)]
    pub instruments: i32,
    /// Days of history.
    #[arg(long, default_value_t = 3)]
    pub days: i64,
    /// Queries per kind.
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
}

async fn private_pg(env: &Env) -> anyhow::Result<(Postgres, PgPool)> {
    std::fs::create_dir_all(&env.run_dir)?;
    let pg = Postgres::start(&env.run_dir).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&pg.url)
        .await
        .context("connect to the private Postgres")?;
    pricefeed_store::pg::migrate(&pool).await?;
    Ok((pg, pool))
}

/// Rows of `n` instruments, ids contiguous per instrument, 8-decimal spot-like values.
fn rows(count: u64, instruments: u32, t0: i64, per_ms: f64) -> Vec<TradeRow> {
    let syms: Vec<Arc<str>> = (0..instruments)
        .map(|i| Arc::from(format!("BENCH{i}USDT").as_str()))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..count)
        .map(|k| {
            let inst = (k % u64::from(instruments)) as usize;
            TradeRow {
                market: Market::Spot,
                symbol: syms[inst].clone(),
                trade_id: 1_000_000_000 + k / u64::from(instruments),
                price: Decimal::new(9_000_000_000 + rng.random_range(0..100_000), 5),
                qty: Decimal::new(rng.random_range(1..1_000_000), 8),
                ts_ms: t0 + (k as f64 / per_ms) as i64,
                buyer_is_maker: k % 3 == 0,
            }
        })
        .collect()
}

async fn count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(pool)
        .await?)
}

pub async fn write(env: &Env, a: &WriteArgs) -> anyhow::Result<Table> {
    let (pg, pool) = private_pg(env).await?;
    let n = a.rate * a.seconds;
    let t0 = now_ms() - 60_000;
    let all = rows(n, a.instruments, t0, a.rate as f64 / 1000.0);
    let spill = env.run_dir.join("spill");
    let cfg = TradesConfig {
        batch_size: a.batch,
        writers: a.writers,
        spill_dir: spill.display().to_string(),
        ..TradesConfig::default()
    };
    let mut t = Table::new(
        "history-write",
        &format!(
            "{} rows/s for {} s over {} instruments, batches of {}, {} writers; private Postgres 15 (fsync off) on the same 2 vCPU",
            a.rate, a.seconds, a.instruments, a.batch, a.writers
        ),
    );

    // 1. The writer, fed like the ingest hand-off: one chunk every 20 ms.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let shutdown = Shutdown::new();
    let w = TradeWriter::spawn(
        pool.clone(),
        cfg.clone(),
        spill.clone(),
        "bench#pf",
        &shutdown,
    )?;
    let chunk = (a.rate / 50) as usize;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut max_queue = 0.0f64;
    for c in all.chunks(chunk.max(1)) {
        tick.tick().await;
        w.submit(c.to_vec())?;
        if let Some(h) = &metrics {
            max_queue = max_queue.max(prom(&h.render(), "pricefeed_trade_writer_queue_rows"));
        }
    }
    let fed = started.elapsed();
    let written_during = count(&pool).await?;
    loop {
        if count(&pool).await? >= n as i64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "writer did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let text = metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    let spilled = prom(&text, "pricefeed_trade_writer_spilled_rows_total");
    let refused = prom(&text, "pricefeed_trade_writer_refused_total");
    shutdown.trigger();
    shutdown.wait(Duration::from_secs(30)).await;
    let bytes: i64 = sqlx::query_scalar(
        "SELECT sum(pg_total_relation_size(c.oid))::int8 FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'trades'::regclass",
    )
    .fetch_one(&pool)
    .await?;
    let writer_rate = n as f64 / total.as_secs_f64();
    t.row("rows fed", format!("{n} in {:.1} s", fed.as_secs_f64()));
    t.row(
        "written while feeding",
        format!(
            "{written_during} ({:.0} rows/s)",
            written_during as f64 / fed.as_secs_f64()
        ),
    );
    t.row(
        "**writer: all rows stored**",
        format!("{:.1} s → **{writer_rate:.0} rows/s**", total.as_secs_f64()),
    );
    t.row(
        "longest queue / spilled / refused",
        format!("{max_queue:.0} / {spilled:.0} / {refused:.0}"),
    );
    t.row(
        "bytes per stored trade (heap + primary key)",
        format!("{:.0}", bytes as f64 / n as f64),
    );

    // 2. Plain text COPY of the same rows into the same (emptied) table.
    let ids = pricefeed_store::history::InstrumentIds::new();
    let keys: Vec<(Market, Arc<str>)> = all
        .iter()
        .take(a.instruments as usize)
        .map(|r| (r.market, r.symbol.clone()))
        .collect();
    let inst = ids.resolve(&pool, &keys).await?;
    let mut body = String::with_capacity(all.len() * 64);
    for (k, r) in all.iter().enumerate() {
        use std::fmt::Write;
        let _ = writeln!(
            body,
            "{}\t{}\t{}\t{}\t{}\t{}",
            r.trade_id,
            r.ts_ms,
            inst[k % a.instruments as usize],
            if r.buyer_is_maker { 't' } else { 'f' },
            r.price,
            r.qty
        );
    }
    for (label, url) in [
        ("plain COPY over TCP", pg.url.clone()),
        ("plain COPY over the Unix socket", pg.socket_url()),
    ] {
        sqlx::query("TRUNCATE trades").execute(&pool).await?;
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let started = Instant::now();
        // One COPY per 100 000 rows, like a bulk loader would.
        for part in body
            .split_inclusive('\n')
            .collect::<Vec<_>>()
            .chunks(100_000)
        {
            let mut copy = conn
                .copy_in_raw(
                    "COPY trades (trade_id, ts_ms, instrument_id, buyer_is_maker, price, qty) FROM STDIN",
                )
                .await?;
            copy.send(part.concat().into_bytes()).await?;
            copy.finish().await?;
        }
        let took = started.elapsed();
        anyhow::ensure!(count(&pool).await? == n as i64, "{label}: row count");
        let rate = n as f64 / took.as_secs_f64();
        t.row(
            label,
            format!(
                "{:.1} s → {rate:.0} rows/s (writer / COPY = **{:.2}**)",
                took.as_secs_f64(),
                writer_rate / rate
            ),
        );
    }
    t.verdict(format!(
        "Target ≥ 300 000 rows/s written with 0 refused: {}.",
        if writer_rate >= 300_000.0 && refused == 0.0 {
            "**met**"
        } else {
            "**missed**"
        }
    ));
    drop(pg);
    Ok(t)
}

fn prom(text: &str, name: &str) -> f64 {
    crate::cluster::prom_sum(text, name)
}

pub async fn read(env: &Env, a: &ReadArgs) -> anyhow::Result<Table> {
    let (pg, pool) = private_pg(env).await?;
    let day = 86_400_000i64;
    let t_end = Span::MINUTE.floor(now_ms()) - 3_600_000;
    let t_start = t_end - a.days * day;
    let per_inst = a.trades / i64::from(a.instruments);
    let gap = (t_end - t_start) as f64 / per_inst as f64;
    eprintln!(
        "==> generating {} trades over {} instruments and {} days",
        a.trades, a.instruments, a.days
    );
    let gen_start = Instant::now();
    for t in [
        "trades",
        "trade_buckets_1s",
        "trade_buckets_1m",
        "vwap_history",
    ] {
        pricefeed_store::history::partitions::ensure(
            &pool,
            match t {
                "trades" => pricefeed_store::history::partitions::Table::Trades,
                "trade_buckets_1s" => pricefeed_store::history::partitions::Table::Buckets1s,
                "trade_buckets_1m" => pricefeed_store::history::partitions::Table::Buckets1m,
                _ => pricefeed_store::history::partitions::Table::VwapHistory,
            },
            t_start,
            t_end + day,
        )
        .await?;
    }
    for i in 0..a.instruments {
        sqlx::query("INSERT INTO underlyings (symbol, base_asset, quote_asset, status) VALUES ($1, 'X', 'USDT', 'TRADING')")
            .bind(format!("GEN{i}USDT"))
            .execute(&pool)
            .await?;
    }
    let insts: Vec<i32> = sqlx::query_scalar("SELECT id FROM instruments ORDER BY id")
        .fetch_all(&pool)
        .await?;
    for &inst in &insts {
        // A random walk in price, exact decimals, one trade every `gap` ms on average.
        sqlx::query(
            "INSERT INTO trades (trade_id, ts_ms, instrument_id, buyer_is_maker, price, qty) \
             SELECT 1000000 + g, $2 + (g * $3)::int8, $1, g % 2 = 0, \
                    round((30000 + 2000 * sin(g / 50000.0) + random() * 5)::numeric, 2), \
                    round((random() * 2 + 0.001)::numeric, 5) \
             FROM generate_series(0, $4 - 1) AS g",
        )
        .bind(inst)
        .bind(t_start)
        .bind(gap)
        .bind(per_inst)
        .execute(&pool)
        .await?;
        for (table, len) in [("trade_buckets_1s", 1_000i64), ("trade_buckets_1m", 60_000)] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (start_ms, instrument_id, n, first_id, last_id, pq, q, open, high, low, close) \
                 SELECT (ts_ms / {len}) * {len}, instrument_id, count(*), min(trade_id), max(trade_id), \
                        sum(price * qty), sum(qty), (array_agg(price ORDER BY trade_id))[1], max(price), \
                        min(price), (array_agg(price ORDER BY trade_id DESC))[1] \
                 FROM trades WHERE instrument_id = $1 GROUP BY 1, 2"
            )))
            .bind(inst)
            .execute(&pool)
            .await?;
        }
        sqlx::query(
            "UPDATE reconcile_cursors SET last_id = t.l, through_ms = $2, through_id = t.l, from_ms = $3 \
             FROM (SELECT max(trade_id) AS l FROM trades WHERE instrument_id = $1) t WHERE instrument_id = $1",
        )
        .bind(inst)
        .bind(t_end - 1)
        .bind(t_start)
        .execute(&pool)
        .await?;
    }
    sqlx::query("ANALYZE").execute(&pool).await?;
    let stored = count(&pool).await?;
    eprintln!(
        "==> {stored} trades generated in {:.0} s",
        gen_start.elapsed().as_secs_f64()
    );

    let mut t = Table::new(
        "history-read",
        &format!(
            "{stored} trades over {} instruments and {} days, buckets and cursors filled; {} queries each, one client; private Postgres 15 (fsync off)",
            a.instruments, a.days, a.queries
        ),
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut conn = pool.acquire().await?;
    let raw_from = t_start;
    for (label, iv) in [
        ("as-of VWAP, 5m", 300_000i64),
        ("as-of VWAP, 1h", 3_600_000),
    ] {
        let mut lat = Vec::new();
        let mut raw_lat = Vec::new();
        for q in 0..a.queries {
            let inst = insts[rng.random_range(0..insts.len())];
            let at = rng.random_range(t_start + iv..t_end);
            let h: Horizon = read::horizon(&mut conn, inst).await?;
            let s = Instant::now();
            let w = read::window_sums(&mut conn, inst, at - iv, at, h, raw_from).await?;
            lat.push(s.elapsed().as_secs_f64() * 1000.0);
            if q < a.queries / 5 {
                // The same window straight from raw trades (what buckets avoid), on a fifth.
                let s = Instant::now();
                let (pq, n): (Decimal, i64) = sqlx::query_as(
                    "SELECT COALESCE(sum(price * qty), 0), count(*) FROM trades \
                     WHERE instrument_id = $1 AND ts_ms >= $2 AND ts_ms < $3",
                )
                .bind(inst)
                .bind(at - iv)
                .bind(at)
                .fetch_one(&mut *conn)
                .await?;
                raw_lat.push(s.elapsed().as_secs_f64() * 1000.0);
                anyhow::ensure!(
                    pq == w.sums.pq && n as u64 == w.sums.n,
                    "{label}: buckets disagree with raw trades"
                );
            }
        }
        lat.sort_by(f64::total_cmp);
        raw_lat.sort_by(f64::total_cmp);
        t.row(
            &format!("**{label}**: p50 / p99 (ms)"),
            format!(
                "{:.2} / **{:.2}**",
                percentile(&lat, 50.0),
                percentile(&lat, 99.0)
            ),
        );
        t.row(
            &format!("{label} from raw trades (no buckets): p50 / p99 (ms)"),
            format!(
                "{:.2} / {:.2}",
                percentile(&raw_lat, 50.0),
                percentile(&raw_lat, 99.0)
            ),
        );
    }
    let mut lat = Vec::new();
    for _ in 0..a.queries {
        let inst = insts[rng.random_range(0..insts.len())];
        let to = Span::MINUTE.floor(rng.random_range(t_start + day..t_end));
        let s = Instant::now();
        let cs = read::candles(&mut conn, inst, Span::MINUTE, to - day, to).await?;
        lat.push(s.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(cs.len() >= 1_000, "a day of 1m candles: {}", cs.len());
    }
    lat.sort_by(f64::total_cmp);
    t.row(
        "**24 h of 1-minute candles**: p50 / p99 (ms)",
        format!(
            "{:.2} / **{:.2}**",
            percentile(&lat, 50.0),
            percentile(&lat, 99.0)
        ),
    );
    t.verdict("Targets: as-of VWAP p99 ≤ 20 ms and 24 h of 1-minute candles p99 ≤ 20 ms with ≥ 10 M trades stored.");
    drop(conn);
    pool.close().await;
    drop(pg);
    Ok(t)
}
