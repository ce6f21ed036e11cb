//! Rolling VWAP windows and 24 h statistics of one instrument, kept in memory by the node that
//! owns it. Pure: the caller feeds accepted trades, the clock, and validated history from
//! Postgres; everything here is exact `Decimal` arithmetic and unit-tested against naive sums.
//!
//! **VWAP.** Trades are summed per second (Σpq, Σq, count): on the trade path that is one
//! multiply and two adds. Each configured interval keeps a running sum over the *completed*
//! seconds inside it; moving the clock folds the seconds that just completed in and subtracts
//! the ones that left, so the per-trade cost does not grow with the number of intervals. The latest window of
//! interval `I` at time `now` is `[S + 1s - I, S + 1s)`, where `S` is the start of the second of
//! `now`: the last `I` of whole seconds up to the end of the current one, with the window
//! convention of [`crate::bucket`] (documented in
//! `docs/decisions/0007-history-storage-and-reconciliation.md`).
//!
//! **Statistics.** Each minute's close (price of its highest trade id) is kept for 24 h. Mean and
//! population standard deviation are over the closes of the completed minutes of the last 24 h,
//! from exact running sums of `close - K` and `(close - K)²` (K = the first close seen, which
//! keeps the numbers small); the variance is `(nΣd² − (Σd)²) / n²`, computed exactly, so there is
//! no catastrophic cancellation, and σ is its square root. Min and max are over the same closes.
//!
//! **Validation.** When reconciliation confirms history up to `through` (the last ms of a whole
//! second), [`Live::apply_validated`] replaces the seconds and minutes that end at or before it
//! with the confirmed buckets, and later trades at or before it are ignored: what the WebSocket
//! invented or corrupted does not survive in the live values either.

use std::collections::VecDeque;

use rust_decimal::{Decimal, MathematicalOps};

use crate::bucket::{Agg, Span, Sums};

/// The intervals kept (ascending, at most one hour is typical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub intervals: Vec<Span>,
    /// Span of the statistics (24 h).
    pub stats: Span,
}

impl WindowSpec {
    pub fn new(mut intervals: Vec<Span>, stats: Span) -> Self {
        intervals.sort();
        intervals.dedup();
        Self { intervals, stats }
    }

    fn longest_ms(&self) -> i64 {
        self.intervals.last().map_or(0, |s| s.ms())
    }
}

/// Latest VWAP of one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VwapNow {
    pub interval: Span,
    pub sums: Sums,
    pub window_start: i64,
    pub window_end: i64,
}

/// 24 h statistics of the 1-minute closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub samples: u32,
    pub mean: Option<Decimal>,
    pub stddev: Option<Decimal>,
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
    /// First close of the window (the reference of the 24 h change).
    pub first_close: Option<Decimal>,
    /// Start of the first minute and end (exclusive) of the last minute covered, ms.
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Stats {
    /// `(last - first_close) / first_close × 100`, rounded to 4 decimals.
    pub fn change_pct(&self, last: Decimal) -> Option<Decimal> {
        let first = self.first_close?;
        if first.is_zero() {
            return None;
        }
        ((last - first) * Decimal::ONE_HUNDRED)
            .checked_div(first)
            .map(|v| v.round_dp(4).normalize())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sec {
    start: i64,
    sums: Sums,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Minute {
    start: i64,
    close: Decimal,
    close_id: u64,
}

/// Running sum of one interval over the seconds with `start > boundary`.
#[derive(Debug, Clone, Copy)]
struct Running {
    span: Span,
    boundary: i64,
    sums: Sums,
}

/// Windows and statistics of one instrument.
#[derive(Debug, Clone)]
pub struct Live {
    secs: VecDeque<Sec>,
    running: Vec<Running>,
    longest_ms: i64,
    stats_ms: i64,
    minutes: VecDeque<Minute>,
    /// Completed minutes in the statistics window: `[stats_from, stats_to)`.
    stats_from: i64,
    stats_to: i64,
    shift: Option<Decimal>,
    sum_d: Decimal,
    sum_d2: Decimal,
    n: u32,
    /// Validated history applied up to here (inclusive); older trades are already in it.
    through: i64,
    /// Current second (clock), as last advanced.
    now_sec: i64,
    /// Seconds before this are folded into the running sums; later ones (the current second,
    /// and any ahead of our clock) are added when a window is read.
    folded_to: i64,
}

impl Live {
    /// Empty state at time `now_ms`.
    pub fn new(spec: &WindowSpec, now_ms: i64) -> Self {
        let now_sec = Span::SECOND.floor(now_ms);
        let now_min = Span::MINUTE.floor(now_ms);
        Self {
            secs: VecDeque::new(),
            running: spec
                .intervals
                .iter()
                .map(|&span| Running {
                    span,
                    boundary: now_sec - span.ms(),
                    sums: Sums::default(),
                })
                .collect(),
            longest_ms: spec.longest_ms(),
            stats_ms: spec.stats.ms(),
            minutes: VecDeque::new(),
            stats_from: now_min - spec.stats.ms(),
            stats_to: now_min,
            shift: None,
            sum_d: Decimal::ZERO,
            sum_d2: Decimal::ZERO,
            n: 0,
            through: i64::MIN,
            now_sec,
            folded_to: now_sec,
        }
    }

    /// Adds one accepted trade. Trades at or before the validated horizon are ignored (the
    /// confirmed buckets already hold them), as are seconds older than the longest interval.
    pub fn add_trade(&mut self, id: u64, price: Decimal, qty: Decimal, ts_ms: i64) {
        if ts_ms <= self.through {
            return;
        }
        let sec = Span::SECOND.floor(ts_ms);
        let mut one = Sums::default();
        one.add_trade(price, qty);
        self.add_sec(sec, &one);
        self.add_close(Span::MINUTE.floor(ts_ms), price, id);
    }

    fn add_sec(&mut self, sec: i64, s: &Sums) {
        if sec <= self.now_sec - self.longest_ms {
            return;
        }
        match self.secs.back_mut() {
            Some(b) if b.start == sec => b.sums.add(s),
            Some(b) if b.start < sec => self.secs.push_back(Sec {
                start: sec,
                sums: *s,
            }),
            None => self.secs.push_back(Sec {
                start: sec,
                sums: *s,
            }),
            Some(_) => {
                // Late trade: its second is somewhere inside.
                match self.secs.binary_search_by_key(&sec, |x| x.start) {
                    Ok(i) => self.secs[i].sums.add(s),
                    Err(i) => self.secs.insert(
                        i,
                        Sec {
                            start: sec,
                            sums: *s,
                        },
                    ),
                }
            }
        }
        // A late trade in an already folded second goes into the running sums directly.
        if sec < self.folded_to {
            for r in &mut self.running {
                if sec > r.boundary {
                    r.sums.add(s);
                }
            }
        }
    }

    fn add_close(&mut self, min: i64, price: Decimal, id: u64) {
        if min < self.stats_from {
            return;
        }
        let idx = match self.minutes.back() {
            Some(b) if b.start == min => Some(self.minutes.len() - 1),
            Some(b) if b.start > min => self.minutes.binary_search_by_key(&min, |m| m.start).ok(),
            _ => None,
        };
        match idx {
            Some(i) => {
                let m = self.minutes[i];
                if id > m.close_id {
                    self.minutes[i].close = price;
                    self.minutes[i].close_id = id;
                    if self.in_stats(min) {
                        self.stat_remove(m.close);
                        self.stat_add(price);
                    }
                }
            }
            None => {
                let m = Minute {
                    start: min,
                    close: price,
                    close_id: id,
                };
                let pos = self.minutes.partition_point(|x| x.start < min);
                self.minutes.insert(pos, m);
                if self.in_stats(min) {
                    self.stat_add(price);
                }
            }
        }
    }

    fn in_stats(&self, min: i64) -> bool {
        min >= self.stats_from && min < self.stats_to
    }

    fn stat_add(&mut self, close: Decimal) {
        let k = *self.shift.get_or_insert(close);
        let d = close - k;
        self.sum_d += d;
        self.sum_d2 += d * d;
        self.n += 1;
    }

    fn stat_remove(&mut self, close: Decimal) {
        let k = self.shift.expect("a close was added before");
        let d = close - k;
        self.sum_d -= d;
        self.sum_d2 -= d * d;
        self.n -= 1;
    }

    /// Moves the clock to `now_ms`: seconds and minutes that left a window are subtracted,
    /// completed minutes join the statistics. The clock never goes backwards.
    pub fn advance(&mut self, now_ms: i64) {
        let sec = Span::SECOND.floor(now_ms);
        if sec > self.now_sec {
            self.now_sec = sec;
            let folded = self.folded_to;
            // Seconds that completed since the last move: [folded, sec).
            let f_lo = self.secs.partition_point(|x| x.start < folded);
            let f_hi = self.secs.partition_point(|x| x.start < sec);
            for r in &mut self.running {
                let nb = sec - r.span.ms();
                if nb > r.boundary {
                    // Folded seconds that left the window: (boundary, nb] below `folded`.
                    let lo = self.secs.partition_point(|x| x.start <= r.boundary);
                    let hi = self.secs.partition_point(|x| x.start <= nb).min(f_lo);
                    for s in self.secs.range(lo..hi.max(lo)) {
                        r.sums.sub(&s.sums);
                    }
                    r.boundary = nb;
                }
                for s in self.secs.range(f_lo..f_hi) {
                    if s.start > r.boundary {
                        r.sums.add(&s.sums);
                    }
                }
            }
            self.folded_to = sec;
            while self
                .secs
                .front()
                .is_some_and(|f| f.start <= sec - self.longest_ms)
            {
                self.secs.pop_front();
            }
        }
        let min = Span::MINUTE.floor(now_ms);
        if min > self.stats_to {
            let (old_from, old_to) = (self.stats_from, self.stats_to);
            let new_from = min - self.stats_ms;
            // Completed minutes join...
            let joined: Vec<Decimal> = self
                .minutes
                .iter()
                .filter(|m| m.start >= old_to.max(new_from) && m.start < min)
                .map(|m| m.close)
                .collect();
            // ...and old ones leave.
            let left: Vec<Decimal> = self
                .minutes
                .iter()
                .filter(|m| m.start >= old_from && m.start < new_from.min(old_to))
                .map(|m| m.close)
                .collect();
            for c in left {
                self.stat_remove(c);
            }
            for c in joined {
                self.stat_add(c);
            }
            self.stats_from = new_from;
            self.stats_to = min;
            while self.minutes.front().is_some_and(|m| m.start < new_from) {
                self.minutes.pop_front();
            }
        }
    }

    /// Latest VWAP of every interval at the current clock: `[window_start, window_end)`.
    pub fn vwaps(&self) -> Vec<VwapNow> {
        let open = self.secs.partition_point(|x| x.start < self.folded_to);
        self.running
            .iter()
            .map(|r| {
                let mut sums = r.sums;
                // The open second (and none ahead of our clock: they are after the window).
                for s in self.secs.range(open..) {
                    if s.start > r.boundary && s.start <= self.now_sec {
                        sums.add(&s.sums);
                    }
                }
                VwapNow {
                    interval: r.span,
                    sums,
                    window_start: r.boundary + 1000,
                    window_end: r.boundary + 1000 + r.span.ms(),
                }
            })
            .collect()
    }

    /// Statistics over the completed minutes of the window.
    pub fn stats(&self) -> Stats {
        let mut st = Stats {
            samples: self.n,
            from_ms: self.stats_from,
            to_ms: self.stats_to,
            ..Stats::default()
        };
        if self.n == 0 {
            return st;
        }
        let n = Decimal::from(self.n);
        let k = self.shift.unwrap_or_default();
        st.mean = self
            .sum_d
            .checked_div(n)
            .map(|m| (m + k).round_dp(12).normalize());
        // n·Σd² − (Σd)² is exact and never negative for exact sums.
        let num = n * self.sum_d2 - self.sum_d * self.sum_d;
        let var = num.max(Decimal::ZERO).checked_div(n * n);
        st.stddev = var
            .and_then(|v| v.sqrt())
            .map(|s| s.round_dp(12).normalize());
        let mut first: Option<Minute> = None;
        for m in self.minutes.iter().filter(|m| self.in_stats(m.start)) {
            first.get_or_insert(*m);
            st.min = Some(st.min.map_or(m.close, |x| x.min(m.close)));
            st.max = Some(st.max.map_or(m.close, |x| x.max(m.close)));
        }
        st.first_close = first.map(|m| m.close);
        st
    }

    /// The validated horizon applied so far (`i64::MIN` before the first).
    pub fn through(&self) -> i64 {
        self.through
    }

    /// Replaces everything up to `through` (the last ms of a whole second) with confirmed
    /// history: `secs` are per-second sums and `minutes` per-minute aggregates of the confirmed
    /// trades, each covering at least `(previous through, through]` (entries outside are
    /// ignored). Minutes that end after `through` keep their live close.
    pub fn apply_validated(&mut self, through: i64, secs: &[(i64, Sums)], minutes: &[(i64, Agg)]) {
        if through <= self.through {
            return;
        }
        let from = self.through;
        // Seconds: drop the live ones in (from, through], take the confirmed ones.
        self.secs.retain(|s| s.start <= from || s.start > through);
        for (start, sums) in secs {
            if *start > from && *start + 999 <= through {
                let pos = self.secs.partition_point(|x| x.start < *start);
                if self.secs.get(pos).is_some_and(|x| x.start == *start) {
                    self.secs[pos].sums = *sums;
                } else {
                    self.secs.insert(
                        pos,
                        Sec {
                            start: *start,
                            sums: *sums,
                        },
                    );
                }
            }
        }
        // Whole minutes that ended by `through` are final: take the confirmed close.
        for (start, agg) in minutes {
            let end = *start + 60_000 - 1;
            if end <= through && end > from && *start >= self.stats_from {
                let pos = self.minutes.partition_point(|x| x.start < *start);
                let m = Minute {
                    start: *start,
                    close: agg.close,
                    close_id: agg.last_id,
                };
                if self.minutes.get(pos).is_some_and(|x| x.start == *start) {
                    self.minutes[pos] = m;
                } else {
                    self.minutes.insert(pos, m);
                }
            }
        }
        // A live minute that ended by `through` with no confirmed trade was invented.
        let confirmed: std::collections::HashSet<i64> = minutes.iter().map(|(s, _)| *s).collect();
        self.minutes.retain(|m| {
            !(m.start + 59_999 <= through && m.start + 59_999 > from)
                || confirmed.contains(&m.start)
        });
        self.through = through;
        self.recompute();
    }

    /// Rebuilds every running sum from the kept seconds and minutes (after a replacement).
    fn recompute(&mut self) {
        let folded = self.folded_to;
        for r in &mut self.running {
            r.sums = Sums::default();
            for s in self
                .secs
                .iter()
                .filter(|s| s.start > r.boundary && s.start < folded)
            {
                r.sums.add(&s.sums);
            }
        }
        self.sum_d = Decimal::ZERO;
        self.sum_d2 = Decimal::ZERO;
        self.n = 0;
        let closes: Vec<Decimal> = self
            .minutes
            .iter()
            .filter(|m| self.in_stats(m.start))
            .map(|m| m.close)
            .collect();
        for c in closes {
            self.stat_add(c);
        }
    }

    /// Approximate heap bytes held (for the memory figure in the benchmarks).
    pub fn heap_bytes(&self) -> usize {
        self.secs.capacity() * std::mem::size_of::<Sec>()
            + self.minutes.capacity() * std::mem::size_of::<Minute>()
            + self.running.capacity() * std::mem::size_of::<Running>()
    }
}

/// Population standard deviation of `xs`, computed the same way as [`Live::stats`] but directly
/// (for tests and independent checks): exact variance, then the square root.
pub fn stddev(xs: &[Decimal]) -> Option<Decimal> {
    if xs.is_empty() {
        return None;
    }
    let n = Decimal::from(xs.len() as u64);
    let k = xs[0];
    let (mut s, mut s2) = (Decimal::ZERO, Decimal::ZERO);
    for x in xs {
        let d = *x - k;
        s += d;
        s2 += d * d;
    }
    let var = (n * s2 - s * s).max(Decimal::ZERO).checked_div(n * n)?;
    var.sqrt().map(|v| v.round_dp(12).normalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn spec() -> WindowSpec {
        WindowSpec::new(
            vec![Span::MINUTE, Span::from_secs(300).unwrap(), Span::HOUR],
            Span::DAY,
        )
    }

    /// Naive VWAP sums over the whole seconds `(S - I, S]`.
    fn naive(trades: &[(u64, Decimal, Decimal, i64)], now: i64, span: Span) -> Sums {
        let s = Span::SECOND.floor(now);
        let mut out = Sums::default();
        for (_, p, q, ts) in trades {
            let sec = Span::SECOND.floor(*ts);
            if sec > s - span.ms() && sec <= s {
                out.add_trade(*p, *q);
            }
        }
        out
    }

    #[test]
    fn running_sums_follow_the_clock() {
        let mut l = Live::new(&spec(), T0);
        l.add_trade(1, d("100"), d("1"), T0 + 10);
        l.add_trade(2, d("102"), d("3"), T0 + 30_000);
        l.advance(T0 + 30_500);
        let v = l.vwaps();
        assert_eq!(v[0].sums.n, 2);
        assert_eq!(v[0].sums.vwap(), Some(d("101.5")));
        assert_eq!(v[0].window_start, T0 + 30_000 - 60_000 + 1000);
        assert_eq!(v[0].window_end, T0 + 31_000);
        // 61 s later the first trade left the 1m window but not the 5m one.
        l.advance(T0 + 61_000);
        let v = l.vwaps();
        assert_eq!(v[0].sums.n, 1);
        assert_eq!(v[0].sums.vwap(), Some(d("102")));
        assert_eq!(v[1].sums.n, 2);
        // Everything gone after an hour.
        l.advance(T0 + 3_700_000);
        assert!(l.vwaps().iter().all(|v| v.sums.n == 0));
        assert_eq!(l.vwaps()[2].sums.vwap(), None);
    }

    #[test]
    fn statistics_of_minute_closes() {
        let mut l = Live::new(&spec(), T0);
        // Closes 100, 103 (the higher id wins, not the later arrival), 101.
        l.add_trade(1, d("99"), d("1"), T0 + 1_000);
        l.add_trade(3, d("100"), d("1"), T0 + 2_000);
        l.add_trade(5, d("103"), d("1"), T0 + 60_500);
        l.add_trade(4, d("90"), d("1"), T0 + 61_000); // late, lower id: not the close
        l.add_trade(6, d("101"), d("1"), T0 + 130_000);
        l.advance(T0 + 130_000);
        let s = l.stats();
        assert_eq!(s.samples, 2, "the current minute is not complete");
        l.advance(T0 + 180_000);
        let s = l.stats();
        assert_eq!(s.samples, 3);
        assert_eq!(s.mean, Some(d("101.333333333333")));
        let sd = stddev(&[d("100"), d("103"), d("101")]).unwrap();
        assert_eq!(s.stddev, Some(sd));
        assert_eq!((s.min, s.max), (Some(d("100")), Some(d("103"))));
        assert_eq!(s.first_close, Some(d("100")));
        assert_eq!(s.change_pct(d("101")), Some(d("1")));
        // A late trade with a higher id in a completed minute changes its close.
        l.add_trade(7, d("104"), d("1"), T0 + 119_000);
        assert_eq!(l.stats().max, Some(d("104")));
        // 24 h later they all left.
        l.advance(T0 + 86_400_000 + 180_000);
        assert_eq!(l.stats().samples, 0);
    }

    #[test]
    fn validated_history_replaces_live_values() {
        let mut l = Live::new(&spec(), T0);
        l.add_trade(1, d("100"), d("1"), T0 + 500); // real
        l.add_trade(99, d("500"), d("1"), T0 + 1_500); // invented by the feed
        l.add_trade(2, d("101"), d("1"), T0 + 5_000); // after the horizon
        l.advance(T0 + 5_000);
        // Reconciliation: through the end of second 1; trade 3 (missed by the feed) exists.
        let mut s0 = Sums::default();
        s0.add_trade(d("100"), d("1"));
        s0.add_trade(d("100.5"), d("2"));
        l.apply_validated(T0 + 1_999, &[(T0, s0)], &[]);
        let v = l.vwaps()[0];
        assert_eq!(v.sums.n, 3);
        assert_eq!(v.sums.pq, d("100") + d("201") + d("101"));
        // A late feed copy inside the confirmed range is ignored.
        l.add_trade(3, d("100.5"), d("2"), T0 + 700);
        assert_eq!(l.vwaps()[0].sums.n, 3);
        assert_eq!(l.through(), T0 + 1_999);
    }

    #[test]
    fn stddev_matches_a_direct_computation() {
        let xs: Vec<Decimal> = ["90000.01", "90010.5", "89990", "90001.25"]
            .iter()
            .map(|s| d(s))
            .collect();
        // mean 90000.44; deviations -0.43 10.06 -10.44 0.81; Σd² = 211.0382; var = 52.75955
        assert_eq!(
            stddev(&xs),
            Some(d("52.75955").sqrt().unwrap().round_dp(12).normalize())
        );
        assert_eq!(stddev(&[d("5")]), Some(Decimal::ZERO));
    }

    proptest! {
        /// Any order of trades and clock moves gives the naive sums over the kept seconds.
        #[test]
        fn matches_naive_sums(
            raw in proptest::collection::vec((0i64..5_000_000, 1i64..100_000, 1i64..1_000), 1..60),
            steps in proptest::collection::vec(0i64..5_000_000, 1..10),
        ) {
            let trades: Vec<(u64, Decimal, Decimal, i64)> = raw.iter().enumerate()
                .map(|(i, (t, p, q))| (i as u64 + 1, Decimal::new(*p, 2), Decimal::new(*q, 3), T0 + t))
                .collect();
            let mut l = Live::new(&spec(), T0);
            let mut clock = T0;
            let mut seen = Vec::new();
            let mut steps = steps.clone();
            steps.sort();
            let mut si = 0;
            for t in &trades {
                while si < steps.len() && T0 + steps[si] <= t.3 {
                    clock = clock.max(T0 + steps[si]);
                    l.advance(clock);
                    si += 1;
                }
                l.add_trade(t.0, t.1, t.2, t.3);
                seen.push(*t);
                // Mid-stream reads include the open second, never one ahead of the clock.
                if t.0 % 7 == 0 {
                    for v in l.vwaps() {
                        let expect = naive(&seen, clock, v.interval);
                        prop_assert_eq!(v.sums, expect);
                    }
                }
            }
            let end = T0 + 5_000_000;
            l.advance(end);
            for v in l.vwaps() {
                // Trades older than the clock at insertion were dropped for windows; only
                // compare seconds no older than the earliest clock used, which all are within
                // the longest window of `end` or beyond every window.
                let expect = naive(&seen, end, v.interval);
                prop_assert_eq!(v.sums, expect);
            }
        }
    }
}
