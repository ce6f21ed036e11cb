//! Reads over trade history: the sums behind any VWAP window, candles, stored VWAP history, and
//! the recent seconds and minutes a node rebuilds its live windows from.
//!
//! Every read splits its range at the instrument's confirmation horizon (`through_ms` of
//! `reconcile_cursors`):
//! - up to the horizon, whole minutes come from `trade_buckets_1m`, whole seconds from
//!   `trade_buckets_1s`, and the partial seconds at a window's edges from raw trades found by
//!   the id range of their second's bucket (primary-key lookups, no time scan);
//! - after it, raw trades with `trade_id > through_id` (all of them have higher ids; again an
//!   index range, typically a couple of minutes of trades).
//!
//! So a window's sums are exactly Σ over the stored trades of the window, but no read scans raw
//! trades over a long range. Once raw trades have passed their retention, windows that start
//! there are answered at whole-second resolution ([`WindowSums::edges_exact`] is then false).

use pricefeed_domain::bucket::{Agg, Span, Sums, merge_into};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};

/// The confirmation state of one instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Horizon {
    /// Every trade at or before this ms is confirmed (`i64::MIN` before the first step).
    pub through_ms: i64,
    /// Highest trade id at or before `through_ms` (`i64::MIN` likewise).
    pub through_id: i64,
    /// Last confirmed trade id (the reconciliation cursor).
    pub last_id: Option<i64>,
    /// When confirmation began (`i64::MAX` before the first step).
    pub from_ms: i64,
}

impl Horizon {
    pub fn none() -> Self {
        Self {
            through_ms: i64::MIN,
            through_id: i64::MIN,
            last_id: None,
            from_ms: i64::MAX,
        }
    }
}

/// The horizon of `inst`.
pub async fn horizon(conn: &mut PgConnection, inst: i32) -> Result<Horizon, sqlx::Error> {
    let row: Option<super::reconcile::Cursor> = sqlx::query_as(
        "SELECT last_id, last_agg_id, through_ms, through_id, from_ms FROM reconcile_cursors \
         WHERE instrument_id = $1",
    )
    .bind(inst)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(c) => match c.through_ms {
            Some(ms) => Horizon {
                through_ms: ms,
                through_id: c.through_id.unwrap_or(i64::MIN),
                last_id: c.last_id,
                from_ms: c.from_ms.unwrap_or(i64::MAX),
            },
            None => Horizon {
                last_id: c.last_id,
                ..Horizon::none()
            },
        },
        None => Horizon::none(),
    })
}

/// Whether a skipped (never confirmable) range overlaps `(start, end]`.
async fn skipped(
    conn: &mut PgConnection,
    inst: i32,
    start: i64,
    end: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM reconcile_skips WHERE instrument_id = $1 \
         AND from_ms <= $3 AND to_ms > $2)",
    )
    .bind(inst)
    .bind(start)
    .bind(end)
    .fetch_one(&mut *conn)
    .await
}

/// Sums of one window `(start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSums {
    pub sums: Sums,
    /// Every trade of the window is confirmed.
    pub validated: bool,
    /// The partial seconds at the edges were read from raw trades (false once those were
    /// dropped by retention: the window is then the whole seconds inside it).
    pub edges_exact: bool,
}

fn ceil_to(x: i64, step: i64) -> i64 {
    -((-x).div_euclid(step)) * step
}

/// Σ over the stored trades of `inst` with `start <= ts_ms < end` (the window convention of
/// `pricefeed_domain::bucket`), at horizon `h`; `raw_from_ms` is the oldest time raw trades are
/// still kept (retention).
pub async fn window_sums(
    conn: &mut PgConnection,
    inst: i32,
    start: i64,
    end: i64,
    h: Horizon,
    raw_from_ms: i64,
) -> Result<WindowSums, sqlx::Error> {
    // Internally the half-open range is (start - 1, end - 1]: "after a, up to and including b".
    let (start, end) = (start - 1, end - 1);
    let mut sums = Sums::default();
    let mut edges_exact = true;
    if end <= start {
        return Ok(WindowSums {
            sums,
            validated: end <= h.through_ms,
            edges_exact,
        });
    }
    // Confirmed part: (start, v].
    let v = end.min(h.through_ms);
    if v > start {
        let s_lo = ceil_to(start + 1, 1000); // first whole second
        let s_hi = (v + 1).div_euclid(1000) * 1000; // first second not wholly inside
        if s_lo < s_hi {
            let m_lo = ceil_to(s_lo, 60_000);
            let m_hi = s_hi.div_euclid(60_000) * 60_000;
            if m_lo < m_hi {
                sums.add(&bucket_sums(conn, "trade_buckets_1m", inst, m_lo, m_hi).await?);
                for (a, b) in [(s_lo, m_lo), (m_hi, s_hi)] {
                    if a < b {
                        sums.add(&bucket_sums(conn, "trade_buckets_1s", inst, a, b).await?);
                    }
                }
            } else {
                sums.add(&bucket_sums(conn, "trade_buckets_1s", inst, s_lo, s_hi).await?);
            }
        }
        // Partial seconds at the edges: raw trades, found by their second's id range. When
        // start and v fall in one second, the left edge is the whole part.
        let mut edges: Vec<(i64, i64)> = Vec::new();
        if start + 1 < s_lo {
            edges.push((start, (s_lo - 1).min(v)));
        }
        if s_hi >= s_lo && s_hi <= v {
            edges.push((s_hi - 1, v));
        }
        for (a, b) in edges {
            if a < raw_from_ms {
                edges_exact = false;
                continue;
            }
            sums.add(&edge_sums(conn, inst, a, b).await?);
        }
    }
    // Unconfirmed part: (max(start, through), end].
    let u = start.max(h.through_ms);
    if end > u {
        sums.add(&tail_sums(conn, inst, u, end, h.through_id).await?);
    }
    let validated =
        end <= h.through_ms && start >= h.from_ms - 1 && !skipped(conn, inst, start, end).await?;
    Ok(WindowSums {
        sums,
        validated,
        edges_exact,
    })
}

/// Σ of the buckets of `table` with `a <= start_ms < b`.
async fn bucket_sums(
    conn: &mut PgConnection,
    table: &str,
    inst: i32,
    a: i64,
    b: i64,
) -> Result<Sums, sqlx::Error> {
    let sql = format!(
        "SELECT COALESCE(sum(pq), 0), COALESCE(sum(q), 0), COALESCE(sum(n), 0)::int8 \
         FROM {table} WHERE instrument_id = $1 AND start_ms >= $2 AND start_ms < $3"
    );
    let (pq, q, n): (Decimal, Decimal, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(inst)
        .bind(a)
        .bind(b)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Sums { pq, q, n: n as u64 })
}

/// Raw trades with `a < ts_ms <= b`, all inside one confirmed second: located by that second's
/// bucket id range.
async fn edge_sums(
    conn: &mut PgConnection,
    inst: i32,
    a: i64,
    b: i64,
) -> Result<Sums, sqlx::Error> {
    let sec = Span::SECOND.floor(b);
    let (pq, q, n): (Decimal, Decimal, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(t.price * t.qty), 0), COALESCE(sum(t.qty), 0), count(t.*) \
         FROM trade_buckets_1s k JOIN trades t ON t.instrument_id = k.instrument_id \
           AND t.trade_id BETWEEN k.first_id AND k.last_id \
         WHERE k.instrument_id = $1 AND k.start_ms = $2 AND t.ts_ms > $3 AND t.ts_ms <= $4 \
           AND t.ts_ms >= $2 AND t.ts_ms < $2 + 1000",
    )
    .bind(inst)
    .bind(sec)
    .bind(a)
    .bind(b)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Sums { pq, q, n: n as u64 })
}

/// Raw trades after the horizon with `a < ts_ms <= b`.
async fn tail_sums(
    conn: &mut PgConnection,
    inst: i32,
    a: i64,
    b: i64,
    through_id: i64,
) -> Result<Sums, sqlx::Error> {
    let (pq, q, n): (Decimal, Decimal, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(price * qty), 0), COALESCE(sum(qty), 0), count(*) FROM trades \
         WHERE instrument_id = $1 AND trade_id > $2 AND ts_ms > $3 AND ts_ms <= $4",
    )
    .bind(inst)
    .bind(through_id)
    .bind(a)
    .bind(b)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Sums { pq, q, n: n as u64 })
}

/// One raw trade, as reads return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredTrade {
    pub trade_id: i64,
    pub ts_ms: i64,
    pub price: Decimal,
    pub qty: Decimal,
    pub buyer_is_maker: bool,
}

/// Raw trades after the horizon with `a < ts_ms < b`, by id.
pub async fn tail_trades(
    conn: &mut PgConnection,
    inst: i32,
    a: i64,
    b: i64,
    through_id: i64,
    max_id: Option<i64>,
) -> Result<Vec<StoredTrade>, sqlx::Error> {
    sqlx::query_as(
        "SELECT trade_id, ts_ms, price, qty, buyer_is_maker FROM trades \
         WHERE instrument_id = $1 AND trade_id > $2 AND trade_id <= $5 AND ts_ms > $3 AND ts_ms < $4 \
         ORDER BY trade_id",
    )
    .bind(inst)
    .bind(through_id)
    .bind(a)
    .bind(b)
    .bind(max_id.unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
}

/// Buckets of `table` with `a <= start_ms < b`, grouped into spans of `group_ms` (a multiple of
/// the table's own length), in start order.
async fn grouped_buckets(
    conn: &mut PgConnection,
    table: &str,
    inst: i32,
    a: i64,
    b: i64,
    group_ms: i64,
) -> Result<Vec<(i64, Agg)>, sqlx::Error> {
    let sql = format!(
        "SELECT (start_ms / $4) * $4 AS g, sum(n)::int8, min(first_id), max(last_id), sum(pq), sum(q), \
                (array_agg(open ORDER BY start_ms))[1], max(high), min(low), \
                (array_agg(close ORDER BY start_ms DESC))[1] \
         FROM {table} WHERE instrument_id = $1 AND start_ms >= $2 AND start_ms < $3 \
         GROUP BY 1 ORDER BY 1"
    );
    type Row = (
        i64,
        i64,
        i64,
        i64,
        Decimal,
        Decimal,
        Decimal,
        Decimal,
        Decimal,
        Decimal,
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(inst)
        .bind(a)
        .bind(b)
        .bind(group_ms)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(g, n, f, l, pq, q, o, hi, lo, c)| {
            (
                g,
                Agg {
                    n: n as u64,
                    first_id: f as u64,
                    last_id: l as u64,
                    pq,
                    q,
                    open: o,
                    high: hi,
                    low: lo,
                    close: c,
                },
            )
        })
        .collect())
}

/// One candle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candle {
    pub start: i64,
    pub agg: Agg,
    /// Every trade of the candle is confirmed.
    pub validated: bool,
}

/// Candles of length `span` (a whole number of minutes) over `[from, to)` (both multiples of
/// `span`), only those with trades, in time order.
pub async fn candles(
    conn: &mut PgConnection,
    inst: i32,
    span: Span,
    from: i64,
    to: i64,
) -> Result<Vec<Candle>, sqlx::Error> {
    let h = horizon(conn, inst).await?;
    let g = span.ms();
    let mut parts: Vec<(i64, Agg)> = Vec::new();
    // Confirmed whole minutes, then the confirmed seconds of the minute holding the horizon.
    let conf_end = (h.through_ms.saturating_add(1)).clamp(from, to); // first unconfirmed ms
    let m_end = conf_end.div_euclid(60_000) * 60_000;
    if m_end > from {
        parts.extend(grouped_buckets(conn, "trade_buckets_1m", inst, from, m_end, g).await?);
    }
    if conf_end > m_end.max(from) {
        parts.extend(
            grouped_buckets(conn, "trade_buckets_1s", inst, m_end.max(from), conf_end, g).await?,
        );
    }
    // The unconfirmed tail.
    let tail_from = conf_end.max(from);
    if to > tail_from {
        for t in tail_trades(conn, inst, tail_from - 1, to, h.through_id, None).await? {
            parts.push((
                span.floor(t.ts_ms),
                Agg::trade(t.trade_id as u64, t.price, t.qty),
            ));
        }
    }
    let mut out: Vec<Candle> = Vec::new();
    parts.sort_by_key(|p| p.0);
    for (start, a) in parts {
        match out.last_mut() {
            Some(c) if c.start == start => c.agg.merge(&a),
            _ => out.push(Candle {
                start,
                agg: a,
                validated: false,
            }),
        }
    }
    for c in &mut out {
        c.validated = c.start + g - 1 <= h.through_ms && c.start >= h.from_ms;
    }
    if out.iter().any(|c| c.validated) && skipped(conn, inst, from, to).await? {
        let skips: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT from_ms, to_ms FROM reconcile_skips WHERE instrument_id = $1 \
             AND from_ms < $3 AND to_ms >= $2",
        )
        .bind(inst)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *conn)
        .await?;
        for c in &mut out {
            if skips.iter().any(|(a, b)| *a < c.start + g && *b >= c.start) {
                c.validated = false;
            }
        }
    }
    Ok(out)
}

/// One stored VWAP history point.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VwapPoint {
    pub end_ms: i64,
    pub vwap: Option<Decimal>,
    pub volume: Decimal,
    pub quote_volume: Decimal,
    pub trade_count: i32,
    pub validated: bool,
}

/// Stored VWAP history of `inst` and `interval` with `from <= end_ms <= to`, in time order.
pub async fn vwap_history(
    pool: &PgPool,
    inst: i32,
    interval: Span,
    from: i64,
    to: i64,
) -> Result<Vec<VwapPoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT end_ms, vwap, volume, quote_volume, trade_count, validated FROM vwap_history \
         WHERE instrument_id = $1 AND interval_s = $2 AND end_ms >= $3 AND end_ms <= $4 \
         ORDER BY end_ms",
    )
    .bind(inst)
    .bind(interval.secs() as i32)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// What a node needs to rebuild an instrument's live windows.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    /// The confirmation horizon the buckets below go up to.
    pub through_ms: i64,
    /// Confirmed per-second sums since `since` (whole seconds up to `through_ms`).
    pub secs: Vec<(i64, Sums)>,
    /// Confirmed per-minute aggregates since `since_min` (whole minutes up to `through_ms`,
    /// and the confirmed part of the minute holding it).
    pub minutes: Vec<(i64, Agg)>,
    /// Stored trades after the horizon, by id (at most `max_id`).
    pub tail: Vec<StoredTrade>,
}

/// The confirmed seconds since `since_sec`, minutes since `since_min`, and the stored trades
/// after the horizon up to `max_id` (the trades this node accepts itself come from its feed).
pub async fn recent(
    pool: &PgPool,
    inst: i32,
    since_sec: i64,
    since_min: i64,
    max_id: Option<i64>,
) -> Result<Recent, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let h = horizon(&mut conn, inst).await?;
    let mut out = Recent {
        through_ms: h.through_ms,
        ..Recent::default()
    };
    if h.through_ms != i64::MIN {
        let conf_end = h.through_ms + 1;
        for (s, a) in grouped_buckets(
            &mut conn,
            "trade_buckets_1s",
            inst,
            since_sec,
            conf_end,
            1000,
        )
        .await?
        {
            out.secs.push((
                s,
                Sums {
                    pq: a.pq,
                    q: a.q,
                    n: a.n,
                },
            ));
        }
        let m_end = conf_end.div_euclid(60_000) * 60_000;
        out.minutes = grouped_buckets(
            &mut conn,
            "trade_buckets_1m",
            inst,
            since_min,
            m_end,
            60_000,
        )
        .await?;
        if conf_end > m_end {
            let mut partial: Option<Agg> = None;
            for (_, a) in
                grouped_buckets(&mut conn, "trade_buckets_1s", inst, m_end, conf_end, 60_000)
                    .await?
            {
                merge_into(&mut partial, &a);
            }
            if let Some(p) = partial {
                out.minutes.push((m_end, p));
            }
        }
    }
    let lo = h.through_ms.max(since_min.min(since_sec) - 1);
    out.tail = tail_trades(&mut conn, inst, lo, i64::MAX, h.through_id, max_id).await?;
    Ok(out)
}

/// Stored trade ids of one instrument, ascending (tests and checks).
pub async fn trade_ids(
    pool: &PgPool,
    key: &pricefeed_domain::instrument::InstrumentKey,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT t.trade_id FROM trades t JOIN instruments i ON i.id = t.instrument_id \
         WHERE i.market = $1 AND i.symbol = $2 ORDER BY t.trade_id",
    )
    .bind(key.market().as_str())
    .bind(key.symbol_str())
    .fetch_all(pool)
    .await
}

/// Reconciliation state of one instrument.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lag {
    pub market: String,
    pub symbol: String,
    /// Every trade at or before this is confirmed; `None` before the first step.
    pub through_ms: Option<i64>,
    pub validated_total: i64,
}

/// Every instrument with a reconciliation job, most behind first.
pub async fn reconcile_lags(pool: &PgPool) -> Result<Vec<Lag>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.market, i.symbol, c.through_ms, c.validated_total \
         FROM reconcile_cursors c JOIN instruments i ON i.id = c.instrument_id \
         JOIN jobs j ON j.kind = 'reconcile' AND j.key = i.id::text \
         ORDER BY c.through_ms ASC NULLS FIRST, i.market, i.symbol",
    )
    .fetch_all(pool)
    .await
}
