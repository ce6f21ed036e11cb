//! History against real Postgres: reconciliation steps fix what the feed got wrong, and every
//! window, candle and rebuild read equals a naive sum over the stored trades.

use std::collections::HashMap;
use std::sync::Arc;

use pricefeed_domain::bucket::{Agg, Span, Sums};
use pricefeed_domain::instrument::{InstrumentKey, Market};
use pricefeed_domain::reconcile::{Row, Unit};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::ids::InstrumentIds;
use super::partitions::KnownDays;
use super::read::{self, Horizon};
use super::reconcile::{self, Advance, HistorySpec, Outcome, Step};
use super::writer::{TradeRow, insert};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// A deterministic truth: `n` trades from id 1001, aggregates 0-1200 ms apart, grouped in aggregates of 1-3.
fn truth(n: usize, seed: u64) -> (Vec<Row>, Vec<Unit>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::new();
    let mut units = Vec::new();
    let mut t = T0 + 250;
    let mut id = 1001u64;
    while rows.len() < n {
        let fills = rng.random_range(1..=3u64);
        let price = Decimal::new(rng.random_range(900_000..900_300), 1);
        let maker = rng.random::<bool>();
        let mut q = Decimal::ZERO;
        for k in 0..fills {
            let qty = Decimal::new(rng.random_range(1..5_000), 5);
            q += qty;
            rows.push(Row {
                id: id + k,
                ts_ms: t,
                price,
                qty,
                buyer_is_maker: maker,
            });
        }
        units.push(Unit {
            first_id: id,
            last_id: id + fills - 1,
            price,
            qty: q,
            ts_ms: t,
            buyer_is_maker: maker,
        });
        id += fills;
        t += rng.random_range(0..1_200);
    }
    (rows, units)
}

fn as_trade_row(r: &Row) -> TradeRow {
    TradeRow {
        market: Market::Spot,
        symbol: Arc::from("BTCUSDT"),
        trade_id: r.id,
        price: r.price,
        qty: r.qty,
        ts_ms: r.ts_ms,
        buyer_is_maker: r.buyer_is_maker,
    }
}

async fn stored(pool: &PgPool, inst: i32) -> Vec<Row> {
    let mut c = pool.acquire().await.unwrap();
    let mut v = reconcile::stored_range(&mut c, inst, i64::MIN, i64::MAX)
        .await
        .unwrap();
    v.sort_by_key(|r| (r.id, r.ts_ms));
    v
}

/// Σ over stored trades with start <= ts < end, straight from SQL.
async fn naive(pool: &PgPool, inst: i32, start: i64, end: i64) -> Sums {
    let (pq, q, n): (Decimal, Decimal, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(price * qty), 0), COALESCE(sum(qty), 0), count(*) FROM trades \
         WHERE instrument_id = $1 AND ts_ms >= $2 AND ts_ms < $3",
    )
    .bind(inst)
    .bind(start)
    .bind(end)
    .fetch_one(pool)
    .await
    .unwrap();
    Sums { pq, q, n: n as u64 }
}

fn step(inst: i32, from: reconcile::Cursor, units: &[Unit], raw: &[Row], through_ms: i64) -> Step {
    let last = units.last().unwrap();
    let through_id = units
        .iter()
        .filter(|u| u.ts_ms <= through_ms)
        .map(|u| u.last_id as i64)
        .max()
        .unwrap_or(i64::MIN);
    Step {
        inst,
        fence: None,
        from,
        after: from.last_id.unwrap_or(units[0].first_id as i64 - 1),
        units: units.to_vec(),
        raw: raw.iter().map(|r| (r.id, *r)).collect(),
        skip: None,
        advance: Advance {
            last_id: last.last_id as i64,
            last_agg_id: None,
            through_ms,
            through_id,
        },
        history: HistorySpec {
            intervals: vec![Span::MINUTE, Span::from_secs(300).unwrap()],
            cadence: Span::MINUTE,
        },
        raw_from_ms: i64::MIN,
    }
}

#[sqlx::test(migrator = "crate::pg::MIGRATOR")]
async fn reconciliation_fixes_the_feed_and_every_read_equals_a_naive_sum(pool: PgPool) {
    let ids = InstrumentIds::new();
    let days = KnownDays::default();
    let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
    let inst = ids.id_of(&pool, &key).await.unwrap();
    let (rows, units) = truth(3_000, 7);
    // The feed: ~5 % dropped, some corrupted quantities and times, a few invented ids.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut feed: Vec<TradeRow> = Vec::new();
    for r in &rows {
        let x: f64 = rng.random();
        if x < 0.05 {
            continue;
        }
        let mut t = as_trade_row(r);
        if x < 0.06 {
            t.qty += Decimal::ONE;
        } else if x < 0.065 {
            t.ts_ms += 7_000;
        }
        feed.push(t);
    }
    let mut invented = as_trade_row(&rows[100]);
    invented.trade_id = 999_999;
    invented.ts_ms = rows[100].ts_ms; // id above everything, time inside the range
    feed.push(invented);
    for c in feed.chunks(700) {
        insert(&pool, &ids, &days, c).await.unwrap();
    }

    // Reconcile in pages of 200 units; the ranges with disagreeing aggregates need raw fills.
    let mut cursor = reconcile::cursor(&pool, inst).await.unwrap();
    let by_id: HashMap<u64, Row> = rows.iter().map(|r| (r.id, *r)).collect();
    let mut pages = 0;
    let (mut replans, mut fixed_in, mut fixed_out) = (0, 0, 0);
    for page in units.chunks(200) {
        let last_second = Span::SECOND.floor(page.last().unwrap().ts_ms);
        let s = step(inst, cursor, page, &[], last_second - 1);
        let out = reconcile::commit(&pool, &days, &s).await.unwrap();
        let out = match out {
            Outcome::Replan(p) => {
                replans += 1;
                let raw: Vec<Row> = p
                    .need_raw
                    .iter()
                    .flat_map(|r| r.clone().map(|id| by_id[&id]))
                    .collect();
                let s = step(inst, cursor, page, &raw, last_second - 1);
                reconcile::commit(&pool, &days, &s).await.unwrap()
            }
            o => o,
        };
        let Outcome::Committed {
            inserted, deleted, ..
        } = out
        else {
            panic!("{out:?}");
        };
        fixed_in += inserted;
        fixed_out += deleted;
        cursor = reconcile::cursor(&pool, inst).await.unwrap();
        pages += 1;
    }
    assert_eq!(pages, units.len().div_ceil(200));
    // ~150 dropped, ~30 corrupted quantities, ~15 corrupted times, 1 invented.
    assert!(replans > 0, "multi-fill aggregates needed their fills");
    assert!(
        fixed_in > 140 && fixed_out > 25,
        "inserted {fixed_in}, deleted {fixed_out}"
    );

    // Everything confirmed is exactly the truth (the tail after the horizon is too: it was
    // walked, only the horizon stops at the last whole second).
    let got = stored(&pool, inst).await;
    assert_eq!(got, rows, "stored history equals the truth");

    // A stale step (cursor moved) writes nothing.
    let stale = step(inst, reconcile::Cursor::default(), &units[..5], &[], T0);
    assert_eq!(
        reconcile::commit(&pool, &days, &stale).await.unwrap(),
        Outcome::Stale
    );

    // Windows: any [start, end), across the horizon, equals the naive sum.
    let mut conn = pool.acquire().await.unwrap();
    let h = read::horizon(&mut conn, inst).await.unwrap();
    assert_eq!(h.through_ms, cursor.through_ms.unwrap());
    let last_ts = rows.last().unwrap().ts_ms;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..150 {
        let end = rng.random_range(T0..last_ts + 2_000);
        let len = [60_000, 300_000, 1_234, 999, 61_001][rng.random_range(0..5)];
        let w = read::window_sums(&mut conn, inst, end - len, end, h, i64::MIN)
            .await
            .unwrap();
        assert_eq!(
            w.sums,
            naive(&pool, inst, end - len, end).await,
            "[{}, {end})",
            end - len
        );
        assert_eq!(
            w.validated,
            end - 1 <= h.through_ms && end - len >= h.from_ms
        );
    }
    // A horizon of none reads only raw trades, with the same result.
    let w = read::window_sums(&mut conn, inst, T0, last_ts + 1, Horizon::none(), i64::MIN)
        .await
        .unwrap();
    assert_eq!(w.sums, naive(&pool, inst, T0, last_ts + 1).await);

    // Stored VWAP history at every whole minute equals the window sums.
    let hist = read::vwap_history(&pool, inst, Span::MINUTE, T0, last_ts)
        .await
        .unwrap();
    assert!(hist.len() >= 5, "{} points", hist.len());
    for p in &hist {
        let n = naive(&pool, inst, p.end_ms - 60_000, p.end_ms).await;
        assert_eq!(p.vwap, n.vwap(), "at {}", p.end_ms);
        assert_eq!(p.trade_count as u64, n.n);
        assert!(p.validated || p.end_ms - 60_000 < h.from_ms);
    }

    // Candles over the whole range equal an OHLCV computed from the rows.
    for span in [Span::MINUTE, Span::from_secs(300).unwrap()] {
        let to = span.floor(last_ts) + span.ms();
        let cs = read::candles(&mut conn, inst, span, span.floor(T0), to)
            .await
            .unwrap();
        let mut expect: std::collections::BTreeMap<i64, Agg> = Default::default();
        for r in &rows {
            let a = Agg::trade(r.id, r.price, r.qty);
            expect
                .entry(span.floor(r.ts_ms))
                .and_modify(|x| x.merge(&a))
                .or_insert(a);
        }
        let got: Vec<(i64, Agg)> = cs.iter().map(|c| (c.start, c.agg)).collect();
        assert_eq!(got, expect.into_iter().collect::<Vec<_>>(), "{span}");
    }

    // The rebuild of a node's windows: confirmed seconds + the raw tail = the stored trades.
    let rec = read::recent(&pool, inst, T0, T0, None).await.unwrap();
    let mut total = Sums::default();
    for (_, s) in &rec.secs {
        total.add(s);
    }
    for t in &rec.tail {
        total.add_trade(t.price, t.qty);
    }
    assert_eq!(total, naive(&pool, inst, T0, i64::MAX).await);
}
