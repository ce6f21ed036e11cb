//! Reconciliation's judgement, pure: given one page of the broker's REST truth and the trades
//! the WebSocket path stored for the same id range, what is confirmed, what must be inserted,
//! what must be removed, and which ranges need the per-trade history before anything can be
//! decided.
//!
//! The truth comes in *units*: an exchange aggregate trade (spot `aggTrades`: fills
//! `first_id..=last_id` of one taker order at one price, with their summed quantity) or a single
//! trade (`first_id == last_id`: USD-M aggregates, whose ids are what the futures feed carries,
//! and options trades). A multi-fill unit confirms its stored trades when every id is stored
//! exactly once with the unit's price, time and side and the quantities sum to the unit's
//! quantity: then Σp·q, Σq and the count of the range are right, which is everything VWAP,
//! buckets and candles read. Only when it disagrees are the per-trade rows needed (`raw`, from
//! `historicalTrades`), because the split of the quantity between the fills is not in the unit.
//! (Two stored fills of one unit with swapped quantities would pass: that changes no sum, no
//! price and no count; the per-trade quantities are then unconfirmed, which is documented.)

use std::collections::HashMap;
use std::ops::RangeInclusive;

use rust_decimal::Decimal;

/// One unit of REST truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub first_id: u64,
    pub last_id: u64,
    pub price: Decimal,
    /// Total quantity of the fills.
    pub qty: Decimal,
    pub ts_ms: i64,
    pub buyer_is_maker: bool,
}

/// A trade as stored, or as the truth gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub id: u64,
    pub ts_ms: i64,
    pub price: Decimal,
    pub qty: Decimal,
    pub buyer_is_maker: bool,
}

/// What to do with one page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Stored rows to remove (invented, corrupted, duplicated with another time): `(id, ts)`.
    pub delete: Vec<(u64, i64)>,
    /// True trades to store (missing, or replacing a removed corrupted copy).
    pub insert: Vec<Row>,
    /// Multi-fill units that disagree and whose fills are not in `raw`: fetch them, then plan
    /// again.
    pub need_raw: Vec<RangeInclusive<u64>>,
    /// Trades confirmed as stored (no change needed).
    pub confirmed: u64,
}

impl Plan {
    /// Whether the page changes stored data.
    pub fn changes(&self) -> bool {
        !self.delete.is_empty() || !self.insert.is_empty()
    }
}

/// Plans one page. `units` are ascending and cover the ids `(after, last unit's last_id]`
/// (ids between units do not exist at the exchange); `stored` are the stored rows with ids in
/// that range (any order, possibly several rows per id); `raw` holds per-trade truth fetched
/// for disagreeing units. The work is proportional to the rows, never to the id distance.
pub fn plan(after: u64, units: &[Unit], stored: &[Row], raw: &HashMap<u64, Row>) -> Plan {
    let mut by_id: HashMap<u64, Vec<Row>> = HashMap::with_capacity(stored.len());
    for r in stored {
        by_id.entry(r.id).or_default().push(*r);
    }
    let mut p = Plan::default();
    for u in units.iter().filter(|u| u.last_id > after) {
        if u.first_id == u.last_id {
            let truth = Row {
                id: u.first_id,
                ts_ms: u.ts_ms,
                price: u.price,
                qty: u.qty,
                buyer_is_maker: u.buyer_is_maker,
            };
            settle(&mut p, truth, by_id.remove(&u.first_id));
            continue;
        }
        if unit_matches(u, &by_id) {
            p.confirmed += u.last_id - u.first_id + 1;
            for id in u.first_id..=u.last_id {
                by_id.remove(&id);
            }
            continue;
        }
        if (u.first_id..=u.last_id).all(|id| raw.contains_key(&id)) {
            for id in u.first_id..=u.last_id {
                settle(&mut p, raw[&id], by_id.remove(&id));
            }
        } else {
            p.need_raw.push(u.first_id..=u.last_id);
            for id in u.first_id..=u.last_id {
                by_id.remove(&id);
            }
        }
    }
    // Whatever is left is stored under an id no unit has: the exchange never had such a trade.
    let mut invented: Vec<Row> = by_id.into_values().flatten().collect();
    invented.sort_by_key(|r| (r.id, r.ts_ms));
    for r in invented {
        p.delete.push((r.id, r.ts_ms));
    }
    if !p.need_raw.is_empty() {
        // Nothing is applied from a page that still needs fills: plan again with them.
        p.delete.clear();
        p.insert.clear();
        p.confirmed = 0;
    }
    p
}

fn unit_matches(u: &Unit, by_id: &HashMap<u64, Vec<Row>>) -> bool {
    let mut q = Decimal::ZERO;
    for id in u.first_id..=u.last_id {
        match by_id.get(&id).map(Vec::as_slice) {
            Some([r])
                if r.price == u.price
                    && r.ts_ms == u.ts_ms
                    && r.buyer_is_maker == u.buyer_is_maker =>
            {
                q += r.qty;
            }
            _ => return false,
        }
    }
    q == u.qty
}

/// Keeps a stored row equal to `truth`, removes every other row of that id, inserts `truth`
/// when no equal row is stored.
fn settle(p: &mut Plan, truth: Row, stored: Option<Vec<Row>>) {
    let mut have = false;
    for r in stored.unwrap_or_default() {
        if r == truth && !have {
            have = true;
        } else {
            p.delete.push((r.id, r.ts_ms));
        }
    }
    if have {
        p.confirmed += 1;
    } else {
        p.insert.push(truth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: i64) -> Decimal {
        Decimal::new(v, 2)
    }

    fn row(id: u64, price: i64, qty: i64) -> Row {
        Row {
            id,
            ts_ms: 1_000 + id as i64 / 10,
            price: d(price),
            qty: d(qty),
            buyer_is_maker: false,
        }
    }

    fn unit(first: u64, last: u64, price: i64, qty: i64) -> Unit {
        Unit {
            first_id: first,
            last_id: last,
            price: d(price),
            qty: d(qty),
            ts_ms: 1_000 + first as i64 / 10,
            buyer_is_maker: false,
        }
    }

    #[test]
    fn a_clean_page_is_confirmed() {
        let units = [unit(11, 11, 100, 5), unit(12, 14, 101, 9)];
        let f = |id, q| Row {
            ts_ms: 1_001,
            ..row(id, 101, q)
        };
        let stored = [row(11, 100, 5), f(12, 2), f(13, 3), f(14, 4)];
        let p = plan(10, &units, &stored, &HashMap::new());
        assert_eq!(p.confirmed, 4);
        assert!(!p.changes());
        assert!(p.need_raw.is_empty());
    }

    #[test]
    fn missing_invented_and_corrupted_trades_are_fixed() {
        let units = [
            unit(21, 21, 100, 5),
            unit(22, 22, 100, 1),
            unit(25, 25, 99, 2),
        ];
        let stored = [
            // 21 missing; 22 corrupted (qty) and duplicated with another time; 23 invented
            // (the exchange has no 23 or 24); 25 fine.
            row(22, 100, 7),
            Row {
                ts_ms: 99_999,
                ..row(22, 100, 1)
            },
            row(23, 100, 1),
            row(25, 99, 2),
        ];
        let p = plan(20, &units, &stored, &HashMap::new());
        assert_eq!(p.confirmed, 1);
        assert_eq!(p.insert, vec![row(21, 100, 5), row(22, 100, 1)]);
        let mut del = p.delete.clone();
        del.sort();
        assert_eq!(del, vec![(22, 1_002), (22, 99_999), (23, 1_002)]);
    }

    #[test]
    fn work_does_not_grow_with_the_id_distance() {
        // Real ids are ~10^10; a page after 0 must not walk every id in between.
        let far = 60_000_000_000u64;
        let units = [unit(far, far, 100, 1)];
        let stored = [row(far, 100, 1), row(far - 5, 100, 1)];
        let p = plan(0, &units, &stored, &HashMap::new());
        assert_eq!(p.confirmed, 1);
        assert_eq!(p.delete, vec![(far - 5, row(far - 5, 0, 0).ts_ms)]);
    }

    #[test]
    fn a_disagreeing_aggregate_needs_its_fills_first() {
        let units = [unit(31, 33, 100, 6)];
        // 32 is missing: the split of the 6 between 31..33 is not in the aggregate.
        let stored = [row(31, 100, 1), row(33, 100, 3)];
        let p = plan(30, &units, &stored, &HashMap::new());
        assert_eq!(p.need_raw, vec![31..=33]);
        assert!(!p.changes());
        let raw: HashMap<u64, Row> = [row(31, 100, 1), row(32, 100, 2), row(33, 100, 3)]
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let p = plan(30, &units, &stored, &raw);
        assert!(p.need_raw.is_empty());
        assert_eq!(p.insert, vec![row(32, 100, 2)]);
        assert_eq!(p.confirmed, 2);
        // A wrong quantity that the sum reveals is also settled per fill.
        let stored = [row(31, 100, 1), row(32, 100, 9), row(33, 100, 3)];
        let p = plan(30, &units, &stored, &raw);
        assert_eq!(p.delete, vec![(32, row(32, 0, 0).ts_ms)]);
        assert_eq!(p.insert, vec![row(32, 100, 2)]);
    }
}
