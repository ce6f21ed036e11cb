//! The storage side of one reconciliation step: everything a page of REST truth changes, in one
//! transaction, so a crash or a lost lease leaves either all of it or none of it.
//!
//! In order, inside the transaction:
//! 1. the job's lease is checked (`jobs.lease_seq`, `FOR SHARE`): a worker that lost its claim
//!    (paused, partitioned) commits nothing;
//! 2. the cursor row is locked (`FOR UPDATE`: the trade writers' `FOR SHARE` waits, so no
//!    WebSocket row below the new cursor can land after this check) and must still be where
//!    the step started;
//! 3. the stored trades of the page's id range are read again and the plan is made again from
//!    them (a writer may have added rows since the step looked); a plan that now needs per-trade
//!    history aborts the step, which is simply retried;
//! 4. wrong rows are deleted, missing ones inserted, and stored rows above the new cursor but
//!    timed at or before the new horizon (only a corrupted time can put them there) removed;
//! 5. the page's per-second and per-minute aggregates are merged into the buckets;
//! 6. VWAP history points whose windows ended by the new horizon are written;
//! 7. the cursor advances (and a skipped range is recorded when the broker no longer had it).

use std::collections::{BTreeMap, HashMap};

use pricefeed_domain::bucket::{Agg, Span, merge_into};
use pricefeed_domain::reconcile::{Plan, Row, Unit, plan};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};

use super::partitions::{KnownDays, Table};
use super::read::{Horizon, window_sums};

/// An instrument's reconciliation cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Cursor {
    pub last_id: Option<i64>,
    pub last_agg_id: Option<i64>,
    pub through_ms: Option<i64>,
    pub through_id: Option<i64>,
    pub from_ms: Option<i64>,
}

/// The cursor of `inst` (all empty before the first step).
pub async fn cursor(pool: &PgPool, inst: i32) -> Result<Cursor, sqlx::Error> {
    Ok(sqlx::query_as(
        "SELECT last_id, last_agg_id, through_ms, through_id, from_ms FROM reconcile_cursors \
         WHERE instrument_id = $1",
    )
    .bind(inst)
    .fetch_optional(pool)
    .await?
    .unwrap_or_default())
}

/// The lowest stored trade of `inst` (id, time), where confirmation starts.
pub async fn first_stored(pool: &PgPool, inst: i32) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT trade_id, ts_ms FROM trades WHERE instrument_id = $1 ORDER BY trade_id LIMIT 1",
    )
    .bind(inst)
    .fetch_optional(pool)
    .await
}

/// Stored trades of `inst` with `after < trade_id <= upto`.
pub async fn stored_range(
    conn: &mut PgConnection,
    inst: i32,
    after: i64,
    upto: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let rows: Vec<(i64, i64, Decimal, Decimal, bool)> = sqlx::query_as(
        "SELECT trade_id, ts_ms, price, qty, buyer_is_maker FROM trades \
         WHERE instrument_id = $1 AND trade_id > $2 AND trade_id <= $3",
    )
    .bind(inst)
    .bind(after)
    .bind(upto)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, ts, p, q, m)| Row {
            id: id as u64,
            ts_ms: ts,
            price: p,
            qty: q,
            buyer_is_maker: m,
        })
        .collect())
}

/// Where the cursor goes when a step commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub last_id: i64,
    pub last_agg_id: Option<i64>,
    pub through_ms: i64,
    pub through_id: i64,
}

/// A range the broker no longer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub from_id: i64,
    pub to_id: i64,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// VWAP history to write: every `cadence`-aligned window end, for every interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySpec {
    pub intervals: Vec<Span>,
    pub cadence: Span,
}

/// One step to commit.
#[derive(Debug, Clone)]
pub struct Step {
    pub inst: i32,
    /// `(job id, lease_seq)` of the claim this step runs under.
    pub fence: Option<(i64, i64)>,
    /// The cursor the step started from.
    pub from: Cursor,
    /// The id just before the page (the cursor's `last_id`, or just before the first stored
    /// trade on the first step).
    pub after: i64,
    /// Page of truth (ascending ids after `from.last_id`), and per-trade truth fetched for
    /// disagreeing aggregates.
    pub units: Vec<Unit>,
    pub raw: HashMap<u64, Row>,
    /// When the broker no longer had the range: the stored rows there are kept unconfirmed,
    /// their buckets built from what is stored, and the range recorded.
    pub skip: Option<Skip>,
    pub advance: Advance,
    pub history: HistorySpec,
    /// Oldest time raw trades are kept (for VWAP windows starting earlier).
    pub raw_from_ms: i64,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        confirmed: u64,
        inserted: u64,
        deleted: u64,
        points: u64,
    },
    /// The job's claim was lost: nothing written.
    Fenced,
    /// The cursor moved since the step started (another claim ran it): nothing written.
    Stale,
    /// Stored rows changed since planning and now need per-trade history: plan again.
    Replan(Plan),
}

/// Commits `step` (see the module docs).
pub async fn commit(pool: &PgPool, days: &KnownDays, step: &Step) -> Result<Outcome, sqlx::Error> {
    let after = step.after;
    let upto = step.advance.last_id;

    // Partitions the rows and buckets will land in, before the transaction (DDL inside it would
    // lock the parent tables for its whole length).
    let mut times: Vec<i64> = step.units.iter().map(|u| u.ts_ms).collect();
    times.extend(step.raw.values().map(|r| r.ts_ms));
    if let (Some(&lo), Some(&hi)) = (times.iter().min(), times.iter().max()) {
        days.ensure(pool, Table::Trades, lo, hi).await?;
        days.ensure(pool, Table::Buckets1s, lo, hi).await?;
        days.ensure(pool, Table::Buckets1m, lo, hi).await?;
    }
    days.ensure(
        pool,
        Table::VwapHistory,
        step.from.through_ms.unwrap_or(step.advance.through_ms),
        step.advance.through_ms + 1,
    )
    .await?;

    let mut tx = pool.begin().await?;
    if let Some((job, seq)) = step.fence {
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = $1 AND lease_seq = $2 AND lease_until > now() FOR SHARE",
        )
        .bind(job)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Ok(Outcome::Fenced);
        }
    }
    let cur: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT last_id FROM reconcile_cursors WHERE instrument_id = $1 FOR UPDATE",
    )
    .bind(step.inst)
    .fetch_optional(&mut *tx)
    .await?;
    if cur != Some(step.from.last_id) {
        return Ok(Outcome::Stale);
    }

    let stored = stored_range(&mut tx, step.inst, after, upto).await?;
    let (plan, bucket_units) = match step.skip {
        None => {
            let p = plan(after.max(0) as u64, &step.units, &stored, &step.raw);
            if !p.need_raw.is_empty() {
                return Ok(Outcome::Replan(p));
            }
            (p, step.units.clone())
        }
        // Nothing to compare against: keep what is stored, bucket it as it is.
        Some(_) => (
            Plan::default(),
            stored
                .iter()
                .map(|r| Unit {
                    first_id: r.id,
                    last_id: r.id,
                    price: r.price,
                    qty: r.qty,
                    ts_ms: r.ts_ms,
                    buyer_is_maker: r.buyer_is_maker,
                })
                .collect(),
        ),
    };

    let mut deleted = 0u64;
    if !plan.delete.is_empty() {
        let ids: Vec<i64> = plan.delete.iter().map(|d| d.0 as i64).collect();
        let ts: Vec<i64> = plan.delete.iter().map(|d| d.1).collect();
        deleted += sqlx::query(
            "DELETE FROM trades WHERE instrument_id = $1 AND (trade_id, ts_ms) IN \
             (SELECT * FROM UNNEST($2::int8[], $3::int8[]))",
        )
        .bind(step.inst)
        .bind(&ids)
        .bind(&ts)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    let mut inserted = 0u64;
    if !plan.insert.is_empty() {
        let mut rows = plan.insert.clone();
        rows.sort_by_key(|r| r.id);
        let ids: Vec<i64> = rows.iter().map(|r| r.id as i64).collect();
        let ts: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
        let inst: Vec<i32> = vec![step.inst; rows.len()];
        let maker: Vec<bool> = rows.iter().map(|r| r.buyer_is_maker).collect();
        let price: Vec<Decimal> = rows.iter().map(|r| r.price).collect();
        let qty: Vec<Decimal> = rows.iter().map(|r| r.qty).collect();
        inserted = sqlx::query(
            "INSERT INTO trades (trade_id, ts_ms, instrument_id, buyer_is_maker, price, qty) \
             SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int4[], $4::bool[], \
                                  $5::numeric[], $6::numeric[]) ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&ts)
        .bind(&inst)
        .bind(&maker)
        .bind(&price)
        .bind(&qty)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    // Above the cursor but timed before the horizon: a real trade there would have a lower id.
    deleted += sqlx::query(
        "DELETE FROM trades WHERE instrument_id = $1 AND trade_id > $2 AND ts_ms <= $3",
    )
    .bind(step.inst)
    .bind(upto)
    .bind(step.advance.through_ms)
    .execute(&mut *tx)
    .await?
    .rows_affected();

    merge_buckets(&mut tx, step.inst, &bucket_units).await?;

    if let Some(s) = step.skip {
        sqlx::query(
            "INSERT INTO reconcile_skips (instrument_id, from_id, to_id, from_ms, to_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(step.inst)
        .bind(s.from_id)
        .bind(s.to_id)
        .bind(s.from_ms)
        .bind(s.to_ms)
        .execute(&mut *tx)
        .await?;
    }

    let from_ms = match step.from.from_ms {
        Some(f) => f,
        None => bucket_units
            .first()
            .map_or(step.advance.through_ms + 1, |u| u.ts_ms),
    };
    let confirmed = plan.confirmed + inserted;
    sqlx::query(
        "UPDATE reconcile_cursors SET last_id = $2, last_agg_id = $3, through_ms = $4, \
         through_id = $5, from_ms = $6, validated_total = validated_total + $7, \
         updated_at = now() WHERE instrument_id = $1",
    )
    .bind(step.inst)
    .bind(step.advance.last_id)
    .bind(step.advance.last_agg_id)
    .bind(step.advance.through_ms)
    .bind(step.advance.through_id)
    .bind(from_ms)
    .bind(confirmed as i64)
    .execute(&mut *tx)
    .await?;

    let points = write_history(&mut tx, step, from_ms).await?;
    tx.commit().await?;
    Ok(Outcome::Committed {
        confirmed,
        inserted,
        deleted,
        points,
    })
}

/// Merges the aggregates of `units` into the per-second and per-minute buckets.
async fn merge_buckets(
    conn: &mut PgConnection,
    inst: i32,
    units: &[Unit],
) -> Result<(), sqlx::Error> {
    for (table, span) in [
        ("trade_buckets_1s", Span::SECOND),
        ("trade_buckets_1m", Span::MINUTE),
    ] {
        let mut by_start: BTreeMap<i64, Option<Agg>> = BTreeMap::new();
        for u in units {
            merge_into(
                by_start.entry(span.floor(u.ts_ms)).or_default(),
                &Agg::fills(u.first_id, u.last_id, u.price, u.qty),
            );
        }
        if by_start.is_empty() {
            continue;
        }
        let (mut starts, mut ns, mut firsts, mut lasts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut d: [Vec<Decimal>; 6] = Default::default();
        for (start, a) in by_start {
            let a = a.expect("inserted with a value");
            starts.push(start);
            ns.push(a.n as i32);
            firsts.push(a.first_id as i64);
            lasts.push(a.last_id as i64);
            for (v, x) in d
                .iter_mut()
                .zip([a.pq, a.q, a.open, a.high, a.low, a.close])
            {
                v.push(x);
            }
        }
        let insts = vec![inst; starts.len()];
        let sql = format!(
            "INSERT INTO {table} AS b (start_ms, instrument_id, n, first_id, last_id, pq, q, \
                                       open, high, low, close) \
             SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::int4[], $4::int8[], $5::int8[], \
                                  $6::numeric[], $7::numeric[], $8::numeric[], $9::numeric[], \
                                  $10::numeric[], $11::numeric[]) \
             ON CONFLICT (instrument_id, start_ms) DO UPDATE SET \
               n = b.n + EXCLUDED.n, pq = b.pq + EXCLUDED.pq, q = b.q + EXCLUDED.q, \
               open = CASE WHEN EXCLUDED.first_id < b.first_id THEN EXCLUDED.open ELSE b.open END, \
               first_id = LEAST(b.first_id, EXCLUDED.first_id), \
               close = CASE WHEN EXCLUDED.last_id > b.last_id THEN EXCLUDED.close ELSE b.close END, \
               last_id = GREATEST(b.last_id, EXCLUDED.last_id), \
               high = GREATEST(b.high, EXCLUDED.high), low = LEAST(b.low, EXCLUDED.low)"
        );
        let [pq, q, open, high, low, close] = d;
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&starts)
            .bind(&insts)
            .bind(&ns)
            .bind(&firsts)
            .bind(&lasts)
            .bind(&pq)
            .bind(&q)
            .bind(&open)
            .bind(&high)
            .bind(&low)
            .bind(&close)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Writes the VWAP history points whose windows ended within the horizon this step added;
/// returns how many.
async fn write_history(
    conn: &mut PgConnection,
    step: &Step,
    from_ms: i64,
) -> Result<u64, sqlx::Error> {
    let cadence = step.history.cadence.ms();
    let old = step.from.through_ms.unwrap_or(step.advance.through_ms);
    let new = step.advance.through_ms;
    // Window ends E with old < E - 1 <= new.
    let mut end = (old + 1).div_euclid(cadence) * cadence + cadence;
    if step.from.through_ms.is_none() {
        // First step: start with the first end after confirmation began.
        end = from_ms.div_euclid(cadence) * cadence + cadence;
    }
    let h = Horizon {
        through_ms: new,
        through_id: step.advance.through_id,
        last_id: Some(step.advance.last_id),
        from_ms,
    };
    let (mut end_ms, mut iv, mut count, mut val) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut vwap, mut vol, mut qv): (Vec<Option<Decimal>>, Vec<Decimal>, Vec<Decimal>) =
        Default::default();
    while end - 1 <= new {
        for span in &step.history.intervals {
            let start = end - span.ms();
            let w = window_sums(conn, step.inst, start, end, h, step.raw_from_ms).await?;
            end_ms.push(end);
            iv.push(span.secs() as i32);
            count.push(w.sums.n as i32);
            vwap.push(w.sums.vwap());
            vol.push(w.sums.q);
            qv.push(w.sums.pq);
            val.push(w.validated && w.edges_exact);
        }
        end += cadence;
    }
    if end_ms.is_empty() {
        return Ok(0);
    }
    let n = end_ms.len() as u64;
    sqlx::query(
        "INSERT INTO vwap_history AS h (end_ms, instrument_id, interval_s, trade_count, validated, \
                                        vwap, volume, quote_volume) \
         SELECT e, $2, i, c, v, w, vol, qv FROM UNNEST($1::int8[], $3::int4[], $4::int4[], \
             $5::bool[], $6::numeric[], $7::numeric[], $8::numeric[]) AS x(e, i, c, v, w, vol, qv) \
         ON CONFLICT (instrument_id, interval_s, end_ms) DO UPDATE SET \
           trade_count = EXCLUDED.trade_count, validated = EXCLUDED.validated, \
           vwap = EXCLUDED.vwap, volume = EXCLUDED.volume, quote_volume = EXCLUDED.quote_volume",
    )
    .bind(&end_ms)
    .bind(step.inst)
    .bind(&iv)
    .bind(&count)
    .bind(&val)
    .bind(&vwap)
    .bind(&vol)
    .bind(&qv)
    .execute(&mut *conn)
    .await?;
    Ok(n)
}
