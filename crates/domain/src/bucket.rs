//! Trade aggregates over a span of time: the per-second and per-minute buckets kept in Postgres,
//! the candles served to charts, and the sums behind every VWAP. One type, [`Agg`], with an
//! exact, order-independent merge, so a bucket can be built from trades, from aggregate trades or
//! from smaller buckets in any order and always comes out the same.
//!
//! Conventions used everywhere (docs/decisions/0007-history-storage-and-reconciliation.md):
//! - A bucket or candle of length `L` ms starting at `start` holds the trades with
//!   `start <= ts_ms < start + L`; `start` is a multiple of `L` (UTC-aligned).
//! - A VWAP window of interval `I` ending at `end` holds the trades with
//!   `end - I <= ts_ms < end`, like a bucket: the trade at exactly `end - I` counts, the one at
//!   `end` belongs to the next window, so consecutive windows tile time without overlap, and a
//!   window whose ends are whole seconds (or minutes) is exactly a sum of buckets. "VWAP as of
//!   `at`" is the window ending at `at`.
//! - Open and close are the prices of the lowest and highest trade id (ids grow with time at
//!   the exchange, and ties in milliseconds are common), high and low the extreme prices.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Aggregate of a non-empty set of trades of one instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agg {
    pub n: u64,
    pub first_id: u64,
    pub last_id: u64,
    /// Σ price × qty (quote volume).
    pub pq: Decimal,
    /// Σ qty (base volume).
    pub q: Decimal,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
}

impl Agg {
    /// One trade.
    pub fn trade(id: u64, price: Decimal, qty: Decimal) -> Self {
        Self::fills(id, id, price, qty)
    }

    /// Trades `first_id..=last_id`, all at `price`, quantities summing to `qty` (an exchange
    /// aggregate trade: the fills of one taker order at one price).
    pub fn fills(first_id: u64, last_id: u64, price: Decimal, qty: Decimal) -> Self {
        Self {
            n: last_id.saturating_sub(first_id) + 1,
            first_id,
            last_id,
            pq: price * qty,
            q: qty,
            open: price,
            high: price,
            low: price,
            close: price,
        }
    }

    /// Adds `other` (disjoint trades of the same instrument).
    pub fn merge(&mut self, other: &Agg) {
        self.n += other.n;
        self.pq += other.pq;
        self.q += other.q;
        if other.first_id < self.first_id {
            self.first_id = other.first_id;
            self.open = other.open;
        }
        if other.last_id > self.last_id {
            self.last_id = other.last_id;
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
    }

    /// Σpq / Σq, or `None` for a zero volume.
    pub fn vwap(&self) -> Option<Decimal> {
        vwap(self.pq, self.q)
    }
}

/// Merges `b` into an optional accumulator.
pub fn merge_into(acc: &mut Option<Agg>, b: &Agg) {
    match acc {
        Some(a) => a.merge(b),
        None => *acc = Some(*b),
    }
}

/// Σpq / Σq, normalised (no trailing zeros); `None` when `q` is zero.
///
/// The division is rust_decimal's (28 significant digits, banker's rounding in the last
/// place); VWAP compared anywhere in the system goes through this one function, so two exact
/// sums always give the same VWAP.
pub fn vwap(pq: Decimal, q: Decimal) -> Option<Decimal> {
    if q.is_zero() {
        return None;
    }
    pq.checked_div(q).map(|v| v.normalize())
}

/// Sums for a VWAP: Σpq, Σq and the trade count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    pub pq: Decimal,
    pub q: Decimal,
    pub n: u64,
}

impl Sums {
    pub fn add_trade(&mut self, price: Decimal, qty: Decimal) {
        self.pq += price * qty;
        self.q += qty;
        self.n += 1;
    }

    pub fn add(&mut self, other: &Sums) {
        self.pq += other.pq;
        self.q += other.q;
        self.n += other.n;
    }

    pub fn sub(&mut self, other: &Sums) {
        self.pq -= other.pq;
        self.q -= other.q;
        self.n -= other.n;
    }

    pub fn add_agg(&mut self, a: &Agg) {
        self.pq += a.pq;
        self.q += a.q;
        self.n += a.n;
    }

    pub fn vwap(&self) -> Option<Decimal> {
        vwap(self.pq, self.q)
    }
}

/// A bucket or candle length; also a VWAP interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Span {
    ms: i64,
}

/// Why a span string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interval {0:?}: expected a number followed by s, m, h or d (e.g. 5m)")]
pub struct InvalidSpan(pub String);

impl Span {
    pub const SECOND: Span = Span { ms: 1_000 };
    pub const MINUTE: Span = Span { ms: 60_000 };
    pub const HOUR: Span = Span { ms: 3_600_000 };
    pub const DAY: Span = Span { ms: 86_400_000 };

    /// A span of whole seconds (at least one).
    pub fn from_secs(s: i64) -> Option<Self> {
        (s >= 1).then_some(Self { ms: s * 1000 })
    }

    pub fn ms(self) -> i64 {
        self.ms
    }

    pub fn secs(self) -> i64 {
        self.ms / 1000
    }

    /// Start of the span containing `ts_ms` (UTC-aligned; correct for negative times too).
    pub fn floor(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.ms) * self.ms
    }
}

impl FromStr for Span {
    type Err = InvalidSpan;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidSpan(s.chars().take(20).collect());
        if s.len() < 2 || !s.is_ascii() {
            return Err(bad());
        }
        let (num, unit) = s.split_at(s.len() - 1);
        let n: i64 = num.parse().map_err(|_| bad())?;
        if n <= 0 || n > 100_000 || num.starts_with('+') || num.starts_with('0') {
            return Err(bad());
        }
        let unit_s = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        Self::from_secs(n * unit_s).ok_or_else(bad)
    }
}

impl TryFrom<String> for Span {
    type Error = InvalidSpan;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Span> for String {
    fn from(s: Span) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for Span {
    /// The largest whole unit: `90s` stays `90s`, `300s` is `5m`, `3600s` is `1h`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.secs();
        if s % 86_400 == 0 {
            write!(f, "{}d", s / 86_400)
        } else if s % 3_600 == 0 {
            write!(f, "{}h", s / 3_600)
        } else if s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn merge_keeps_open_close_by_id_and_extremes() {
        let mut a = Agg::trade(10, d("100"), d("1"));
        a.merge(&Agg::trade(12, d("103"), d("2")));
        a.merge(&Agg::fills(7, 9, d("99"), d("3")));
        assert_eq!(a.n, 5);
        assert_eq!((a.first_id, a.last_id), (7, 12));
        assert_eq!((a.open, a.close), (d("99"), d("103")));
        assert_eq!((a.low, a.high), (d("99"), d("103")));
        assert_eq!(a.q, d("6"));
        assert_eq!(a.pq, d("100") + d("206") + d("297"));
        assert_eq!(a.vwap(), Some(d("100.5")));
    }

    #[test]
    fn vwap_is_exact_and_normalised() {
        assert_eq!(vwap(d("10.00"), d("4.0")), Some(d("2.5")));
        assert_eq!(vwap(d("1"), d("0")), None);
        assert_eq!(
            vwap(d("1"), d("3")),
            Some(d("0.3333333333333333333333333333"))
        );
    }

    #[test]
    fn spans_parse_and_print() {
        for (s, ms) in [
            ("1m", 60_000),
            ("5m", 300_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
        ] {
            let sp: Span = s.parse().unwrap();
            assert_eq!(sp.ms(), ms);
            assert_eq!(sp.to_string(), s);
        }
        assert_eq!("90s".parse::<Span>().unwrap().to_string(), "90s");
        assert_eq!("120s".parse::<Span>().unwrap().to_string(), "2m");
        for bad in [
            "", "m", "0m", "-1m", "5x", "05m", "+5m", "1.5m", "5 m", "999999d", "5M",
        ] {
            assert!(bad.parse::<Span>().is_err(), "{bad}");
        }
        assert_eq!(Span::MINUTE.floor(-1), -60_000);
        assert_eq!(Span::MINUTE.floor(119_999), 60_000);
    }

    proptest! {
        /// Any grouping and order of merges gives the same aggregate as one pass.
        #[test]
        fn merge_is_order_independent(
            trades in proptest::collection::vec((1i64..1_000_000, 1i64..1_000_000), 1..40),
            split in 0usize..40, reverse in any::<bool>()
        ) {
            let aggs: Vec<Agg> = trades.iter().enumerate()
                .map(|(i, (p, q))| Agg::trade(i as u64 + 1, Decimal::new(*p, 2), Decimal::new(*q, 5)))
                .collect();
            let mut one = aggs[0];
            for a in &aggs[1..] { one.merge(a); }
            let cut = split.min(aggs.len());
            let mut left: Option<Agg> = None;
            let mut right: Option<Agg> = None;
            let mut order: Vec<usize> = (0..aggs.len()).collect();
            if reverse { order.reverse(); }
            for i in order {
                merge_into(if i < cut { &mut left } else { &mut right }, &aggs[i]);
            }
            let mut two: Option<Agg> = None;
            for part in [right, left].into_iter().flatten() { merge_into(&mut two, &part); }
            prop_assert_eq!(two.unwrap(), one);
        }
    }
}
