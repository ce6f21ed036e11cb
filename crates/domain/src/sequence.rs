//! Per-symbol trade-id bookkeeping: drop duplicates, notice gaps, accept late arrivals once.
//!
//! Broker trade ids are consecutive per symbol, so "what have we seen" is two things: the highest
//! id so far, and the holes below it. Holes are kept as a short list of ranges (the *pending
//! gaps*, each reported once as [`Observed::NewAfterGap`] so the caller can backfill it). On top
//! of that a fixed ring bitmap remembers exactly which of the last `window` ids were seen; it
//! covers ids that no gap list can vouch for: those just below the first trade of a fresh tracker
//! (a reorder at start-up) and those of a gap abandoned because the list was full.
//!
//! **Memory bound** per symbol: `window / 8` bytes of bitmap plus at most `max_gaps` ranges of 16
//! bytes; 512 B + 4 KiB with [`SeqConfig::default`] (the gap list only grows that far while
//! backfill is held back). When a new gap would exceed `max_gaps`, the oldest gap is abandoned
//! (counted in [`SeqTracker::abandoned`]), as are the ids the caller gives up on
//! ([`SeqTracker::give_up_through`]): they are still accepted while inside the window, and
//! reported [`Observed::Stale`] below it.
//!
//! **Guarantees** (proptests below): an id is accepted (`New`, `NewAfterGap` or `Late`) at most
//! once, whatever the input and bounds; `Duplicate` is only said of ids really seen before (or
//! declared seen by [`SeqTracker::starting_after`] / [`SeqTracker::fill`]); within the bounds
//! every id is accepted exactly once and the pending gaps are exactly the ids not yet seen
//! between the start and the highest id.
//!
//! The in-order case (`id == highest + 1`) is a compare, a bit set and a store: no allocation,
//! no search, since it is every trade on the hot path.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

/// Bounds of one tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqConfig {
    /// How many of the most recent ids are remembered exactly; rounded up to a power of two,
    /// at least 64.
    pub window: u64,
    /// Most pending gaps kept at once (at least 1).
    pub max_gaps: usize,
}

impl Default for SeqConfig {
    /// 4096 ids covers seconds of reordering even on the busiest symbols. 256 gaps is over a
    /// minute of a feed dropping 2 % of 100 trades/s: backfill pages once a second per symbol
    /// and may wait out a weight pause or a ban that long, and a gap dropped for room is never
    /// backfilled (64 was abandoning gaps in the 30-min soak).
    fn default() -> Self {
        Self {
            window: 4096,
            max_gaps: 256,
        }
    }
}

/// Verdict on one trade id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// First sight, no hole opened: the next id, the first ever, or a reorder inside the window
    /// that no reported gap covered.
    New,
    /// First sight, beyond the next expected id: `missing` were skipped and are now a pending gap
    /// to backfill.
    NewAfterGap { missing: RangeInclusive<u64> },
    /// First sight of an id from a reported gap (late or backfilled): accepted, gap shrunk.
    Late,
    /// Seen before: drop it.
    Duplicate,
    /// Older than anything the tracker can vouch for (below the window, and its gap abandoned or
    /// before the first trade): drop it, since it was most likely handled already, and count it.
    Stale,
}

impl Observed {
    /// Whether the trade should be processed (is not a repeat).
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::New | Self::NewAfterGap { .. } | Self::Late)
    }
}

/// Dedup and gap state of one symbol's trade ids.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    started: bool,
    high: u64,
    /// Ids at or below are known seen (given by `starting_after`).
    floor: Option<u64>,
    /// Below the window, an id at or above this that is in no gap was seen; below it, unknown.
    horizon: u64,
    /// Ring bitmap over ids `(high - window, high]`, indexed by `id & mask`.
    bits: Box<[u64]>,
    mask: u64,
    /// Pending gaps as inclusive `(start, end)`, sorted, disjoint, all below `high`.
    gaps: VecDeque<(u64, u64)>,
    max_gaps: usize,
    abandoned: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self::new(SeqConfig::default())
    }
}

impl SeqTracker {
    /// A tracker that has seen nothing: the first id it observes opens no gap.
    pub fn new(config: SeqConfig) -> Self {
        let window = config.window.clamp(64, 1 << 30).next_power_of_two();
        let max_gaps = config.max_gaps.max(1);
        Self {
            started: false,
            high: 0,
            floor: None,
            horizon: 0,
            bits: vec![0u64; (window / 64) as usize].into_boxed_slice(),
            mask: window - 1,
            gaps: VecDeque::with_capacity(max_gaps.min(8)),
            max_gaps,
            abandoned: 0,
        }
    }

    /// A tracker that knows every id up to `last` was handled (by a previous owner, or before a
    /// restart): those are duplicates, and a first id beyond `last + 1` reports the gap.
    pub fn starting_after(last: u64, config: SeqConfig) -> Self {
        let mut t = Self::new(config);
        t.started = true;
        t.high = last;
        t.floor = Some(last);
        t.horizon = last.saturating_add(1);
        t.bits.fill(u64::MAX);
        t
    }

    /// Highest id seen (or declared seen); `None` before the first.
    pub fn high(&self) -> Option<u64> {
        self.started.then_some(self.high)
    }

    /// Ranges reported missing and not yet filled, oldest first.
    pub fn pending_gaps(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.gaps.iter().map(|&(s, e)| s..=e)
    }

    /// The first and the last missing id (the ends of the oldest and newest pending gaps).
    pub fn missing_span(&self) -> Option<(u64, u64)> {
        Some((self.gaps.front()?.0, self.gaps.back()?.1))
    }

    /// Number of ids in the pending gaps.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|&(s, e)| e - s + 1).sum()
    }

    /// Whether any id below the highest seen is still missing.
    #[inline]
    pub fn has_gaps(&self) -> bool {
        !self.gaps.is_empty()
    }

    /// Ids whose gap was dropped to respect `max_gaps` (they may never be accepted if late).
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }

    /// Classifies `id` and records it.
    #[inline]
    pub fn observe(&mut self, id: u64) -> Observed {
        if self.started && self.high.checked_add(1) == Some(id) {
            self.high = id;
            self.set_bit(id);
            return Observed::New;
        }
        self.observe_slow(id)
    }

    #[cold]
    fn observe_slow(&mut self, id: u64) -> Observed {
        if !self.started {
            self.started = true;
            self.high = id;
            self.horizon = id;
            self.set_bit(id);
            return Observed::New;
        }
        if id > self.high {
            let prev = self.high;
            self.advance_to(id);
            // `id > prev + 1` here: the in-order case was handled in `observe`.
            self.push_gap(prev + 1, id - 1);
            return Observed::NewAfterGap {
                missing: prev + 1..=id - 1,
            };
        }
        if self.floor.is_some_and(|f| id <= f) {
            return Observed::Duplicate;
        }
        if self.in_window(id) {
            if self.bit(id) {
                return Observed::Duplicate;
            }
            self.set_bit(id);
            return if self.remove_from_gaps(id) {
                Observed::Late
            } else {
                Observed::New
            };
        }
        if self.remove_from_gaps(id) {
            Observed::Late
        } else if id >= self.horizon {
            Observed::Duplicate
        } else {
            Observed::Stale
        }
    }

    /// Marks `range` as delivered (a backfill finished it) and returns how many ids of pending
    /// gaps that closed. Ids above the highest seen are ignored: a backfill only fills holes.
    pub fn fill(&mut self, range: RangeInclusive<u64>) -> u64 {
        if !self.started {
            return 0;
        }
        let lo = *range.start();
        let hi = (*range.end()).min(self.high);
        if lo > hi {
            return 0;
        }
        let mut filled = 0;
        let mut i = self.gaps.partition_point(|&(_, e)| e < lo);
        while i < self.gaps.len() && self.gaps[i].0 <= hi {
            let (s, e) = self.gaps[i];
            filled += e.min(hi) - s.max(lo) + 1;
            match (s < lo, e > hi) {
                (true, true) => {
                    self.gaps[i].1 = lo - 1;
                    self.insert_gap(i + 1, (hi + 1, e));
                    break;
                }
                (true, false) => {
                    self.gaps[i].1 = lo - 1;
                    i += 1;
                }
                (false, true) => {
                    self.gaps[i].0 = hi + 1;
                    break;
                }
                (false, false) => {
                    self.gaps.remove(i);
                }
            }
        }
        let window_lo = self.high.saturating_sub(self.mask); // lowest id inside the window
        if hi >= window_lo {
            self.write_bits(lo.max(window_lo), hi, true);
        }
        filled
    }

    /// Re-opens `range` as a pending gap on a tracker that took over from another one (which
    /// handed over the ids it was still missing): those ids are accepted once, everything
    /// else up to the highest id stays a duplicate. Ids above the highest seen are ignored.
    pub fn reopen(&mut self, range: RangeInclusive<u64>) {
        if !self.started {
            return;
        }
        let (lo, hi) = (*range.start(), (*range.end()).min(self.high));
        if lo > hi {
            return;
        }
        // Below the window, "at or above the horizon and in no gap" means seen: true of every
        // id the previous tracker did not list as missing.
        self.floor = self
            .floor
            .map(|f| f.min(lo.saturating_sub(1)))
            .filter(|_| lo > 0);
        self.horizon = self.horizon.min(lo);
        let window_lo = self.high.saturating_sub(self.mask);
        if hi >= window_lo {
            self.write_bits(lo.max(window_lo), hi, false);
        }
        // Keep the list sorted and disjoint: merge with whatever it overlaps or touches.
        let (mut s, mut e) = (lo, hi);
        let mut i = self
            .gaps
            .partition_point(|&(_, ge)| ge.saturating_add(1) < s);
        while i < self.gaps.len() && self.gaps[i].0 <= e.saturating_add(1) {
            let (gs, ge) = self.gaps.remove(i).expect("in bounds");
            s = s.min(gs);
            e = e.max(ge);
            // Ids of a merged neighbour were not seen either; the ones between were, but the
            // merge only spans touching or overlapping ranges, so there are none.
            i = i.min(self.gaps.len());
        }
        self.insert_gap(i, (s, e));
    }

    /// Abandons every pending id up to `id` (the broker no longer has them, or backfill gave
    /// up) and returns how many; they count in [`Self::abandoned`] like a gap dropped for room.
    pub fn give_up_through(&mut self, id: u64) -> u64 {
        let mut n = 0;
        while let Some(&(s, e)) = self.gaps.front() {
            if s > id {
                break;
            }
            if e <= id {
                self.gaps.pop_front();
                n += e - s + 1;
            } else {
                self.gaps[0].0 = id + 1;
                n += id - s + 1;
                break;
            }
        }
        if n > 0 {
            self.abandoned += n;
            // Only the oldest gaps go, so "below the horizon" stays one range.
            self.horizon = self.horizon.max(id.min(self.high) + 1);
        }
        n
    }

    fn in_window(&self, id: u64) -> bool {
        self.high - id <= self.mask
    }

    #[inline]
    fn set_bit(&mut self, id: u64) {
        let p = id & self.mask;
        self.bits[(p >> 6) as usize] |= 1 << (p & 63);
    }

    fn bit(&self, id: u64) -> bool {
        let p = id & self.mask;
        self.bits[(p >> 6) as usize] & (1 << (p & 63)) != 0
    }

    /// Moves the window up to end at `id` (seen); the ids skipped over start unseen.
    fn advance_to(&mut self, id: u64) {
        if id - self.high > self.mask {
            self.bits.fill(0);
        } else {
            self.write_bits(self.high + 1, id - 1, false);
        }
        self.high = id;
        self.set_bit(id);
    }

    /// Sets or clears the bits of ids `lo..=hi` (fewer than `window` of them), a word at a time.
    fn write_bits(&mut self, lo: u64, hi: u64, value: bool) {
        let mut id = lo;
        while id <= hi {
            let p = id & self.mask;
            let bit = p & 63;
            let n = (64 - bit).min(hi - id + 1);
            let m = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            let word = &mut self.bits[(p >> 6) as usize];
            if value {
                *word |= m;
            } else {
                *word &= !m;
            }
            match id.checked_add(n) {
                Some(next) => id = next,
                None => break,
            }
        }
    }

    fn push_gap(&mut self, start: u64, end: u64) {
        let at = self.gaps.len();
        self.insert_gap(at, (start, end));
    }

    /// Inserts keeping the order, then abandons the oldest gap if over the cap. Abandoning the
    /// oldest keeps "below the horizon" a single range and favours recent holes, which are the
    /// ones a reorder can still close.
    fn insert_gap(&mut self, at: usize, gap: (u64, u64)) {
        self.gaps.insert(at, gap);
        if self.gaps.len() > self.max_gaps
            && let Some((s, e)) = self.gaps.pop_front()
        {
            self.abandoned += e - s + 1;
            self.horizon = self.horizon.max(e + 1);
        }
    }

    fn remove_from_gaps(&mut self, id: u64) -> bool {
        let i = self.gaps.partition_point(|&(_, e)| e < id);
        let Some(&(s, e)) = self.gaps.get(i) else {
            return false;
        };
        if id < s {
            return false;
        }
        match (id == s, id == e) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = id + 1,
            (false, true) => self.gaps[i].1 = id - 1,
            (false, false) => {
                self.gaps[i].1 = id - 1;
                self.insert_gap(i + 1, (id + 1, e));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn small(window: u64, max_gaps: usize) -> SeqConfig {
        SeqConfig { window, max_gaps }
    }

    fn gaps(t: &SeqTracker) -> Vec<RangeInclusive<u64>> {
        t.pending_gaps().collect()
    }

    #[test]
    fn in_order_then_duplicate() {
        let mut t = SeqTracker::default();
        assert_eq!(t.high(), None);
        assert_eq!(
            t.observe(100),
            Observed::New,
            "first ever trade opens no gap"
        );
        assert_eq!(t.observe(101), Observed::New);
        assert_eq!(t.observe(101), Observed::Duplicate);
        assert_eq!(t.observe(100), Observed::Duplicate);
        assert_eq!(t.high(), Some(101));
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn gap_then_late_arrivals_split_and_close_it() {
        let mut t = SeqTracker::default();
        t.observe(10);
        assert_eq!(t.observe(16), Observed::NewAfterGap { missing: 11..=15 });
        assert_eq!(gaps(&t), vec![11..=15]);
        assert_eq!(t.observe(13), Observed::Late);
        assert_eq!(gaps(&t), vec![11..=12, 14..=15]);
        assert_eq!(t.observe(13), Observed::Duplicate);
        assert_eq!(t.observe(11), Observed::Late);
        assert_eq!(t.observe(15), Observed::Late);
        assert_eq!(gaps(&t), vec![12..=12, 14..=14]);
        assert_eq!(t.missing(), 2);
        assert_eq!(t.observe(12), Observed::Late);
        assert_eq!(t.observe(14), Observed::Late);
        assert_eq!(t.missing(), 0);
        assert_eq!(t.observe(17), Observed::New);
    }

    #[test]
    fn reorder_just_before_the_first_trade_is_accepted_once() {
        let mut t = SeqTracker::default();
        t.observe(10_000);
        assert_eq!(t.observe(9_999), Observed::New);
        assert_eq!(t.observe(9_999), Observed::Duplicate);
        assert_eq!(
            t.observe(10_000 - 4095),
            Observed::New,
            "oldest id in the window"
        );
        assert!(
            t.pending_gaps().next().is_none(),
            "not a gap: may predate us"
        );
        // Below the first trade and outside the window: cannot tell, so not accepted.
        assert_eq!(t.observe(10_000 - 4096), Observed::Stale);
    }

    #[test]
    fn starting_after_knows_the_past_and_reports_the_handover_gap() {
        let mut t = SeqTracker::starting_after(500, SeqConfig::default());
        assert_eq!(t.observe(500), Observed::Duplicate);
        assert_eq!(t.observe(3), Observed::Duplicate);
        assert_eq!(t.observe(505), Observed::NewAfterGap { missing: 501..=504 });
        let mut t = SeqTracker::starting_after(500, SeqConfig::default());
        assert_eq!(t.observe(501), Observed::New);
    }

    #[test]
    fn gaps_below_the_window_are_still_exact() {
        let mut t = SeqTracker::new(small(64, 8));
        t.observe(1);
        t.observe(5); // gap 2..=4
        for id in 6..1000 {
            assert_eq!(t.observe(id), Observed::New);
        }
        assert_eq!(t.observe(3), Observed::Late);
        assert_eq!(t.observe(3), Observed::Duplicate);
        assert_eq!(t.observe(1), Observed::Duplicate);
        assert_eq!(t.observe(500), Observed::Duplicate);
        assert_eq!(gaps(&t), vec![2..=2, 4..=4]);
    }

    #[test]
    fn a_handed_over_gap_is_accepted_once_by_the_next_tracker() {
        let mut a = SeqTracker::new(small(64, 8));
        for id in (1..=20).filter(|id| ![5, 9, 10].contains(id)) {
            a.observe(id);
        }
        let missing: Vec<_> = a.pending_gaps().collect();
        assert_eq!(missing, vec![5..=5, 9..=10]);
        let mut b = SeqTracker::starting_after(a.high().unwrap(), small(64, 8));
        for g in missing {
            b.reopen(g);
        }
        assert_eq!(b.missing(), 3);
        assert_eq!(b.observe(4), Observed::Duplicate);
        assert_eq!(b.observe(6), Observed::Duplicate);
        assert_eq!(b.observe(5), Observed::Late);
        assert_eq!(b.observe(5), Observed::Duplicate);
        assert_eq!(b.observe(21), Observed::New);
        // Below the window too: far ahead, the rest of the handed-over gap still closes once.
        for id in 22..300 {
            b.observe(id);
        }
        assert_eq!(b.observe(7), Observed::Duplicate);
        assert_eq!(b.observe(9), Observed::Late);
        assert_eq!(b.observe(9), Observed::Duplicate);
        assert_eq!(b.fill(10..=10), 1);
        assert_eq!(b.missing(), 0);
        // Overlapping and touching ranges merge; nothing above the highest id is opened.
        b.reopen(100..=105);
        b.reopen(104..=110);
        b.reopen(111..=111);
        b.reopen(400..=500);
        assert_eq!(gaps(&b), vec![100..=111]);
    }

    #[test]
    fn giving_up_abandons_the_oldest_ids_only() {
        let mut t = SeqTracker::new(small(64, 8));
        t.observe(0);
        t.observe(5); // gap 1..=4
        t.observe(10); // gap 6..=9
        assert_eq!(t.missing_span(), Some((1, 9)));
        assert_eq!(t.give_up_through(7), 6);
        assert_eq!(gaps(&t), vec![8..=9]);
        assert_eq!(t.abandoned(), 6);
        assert_eq!(t.missing_span(), Some((8, 9)));
        // Nothing pending below: a no-op.
        assert_eq!(t.give_up_through(3), 0);
        // The given-up ids are still accepted once while the window remembers them...
        assert_eq!(t.observe(2), Observed::New);
        assert_eq!(t.observe(2), Observed::Duplicate);
        // ...and the rest of the gap still closes as late.
        assert_eq!(t.observe(8), Observed::Late);
        for id in 11..200 {
            t.observe(id);
        }
        assert_eq!(t.observe(3), Observed::Stale);
        assert_eq!(t.observe(9), Observed::Late);
        assert_eq!(t.missing_span(), None);
        assert_eq!(t.give_up_through(u64::MAX), 0);
    }

    #[test]
    fn full_gap_list_abandons_the_oldest() {
        let mut t = SeqTracker::new(small(64, 2));
        t.observe(0);
        t.observe(2); // gap 1
        t.observe(4); // gap 3
        t.observe(6); // gap 5: gap 1 abandoned
        assert_eq!(gaps(&t), vec![3..=3, 5..=5]);
        assert_eq!(t.abandoned(), 1);
        // Still inside the window, so the bitmap knows 1 was never seen.
        assert_eq!(t.observe(1), Observed::New);
        assert_eq!(t.observe(1), Observed::Duplicate);
        // Splitting a gap can also push the list over the cap.
        t.observe(20); // gap 7..=19, abandons 3
        assert_eq!(t.observe(10), Observed::Late); // 7..=9 and 11..=19: abandons 5
        assert_eq!(gaps(&t), vec![7..=9, 11..=19]);
        assert_eq!(t.abandoned(), 3);
        // Once out of the window, an abandoned id is unknown, not a duplicate.
        for id in 21..200 {
            t.observe(id);
        }
        assert_eq!(t.observe(5), Observed::Stale);
        assert_eq!(t.observe(8), Observed::Late);
        assert_eq!(t.observe(15), Observed::Late);
        assert_eq!(t.observe(150), Observed::Duplicate);
    }

    #[test]
    fn a_jump_past_the_window_forgets_the_bitmap_but_not_the_gap() {
        let mut t = SeqTracker::new(small(64, 4));
        for id in 0..50 {
            t.observe(id);
        }
        assert_eq!(
            t.observe(10_000),
            Observed::NewAfterGap {
                missing: 50..=9_999
            }
        );
        assert_eq!(t.observe(49), Observed::Duplicate);
        assert_eq!(t.observe(9_990), Observed::Late);
        assert_eq!(t.observe(9_990), Observed::Duplicate);
        assert_eq!(t.observe(60), Observed::Late);
        assert_eq!(t.missing(), 9_950 - 2);
    }

    #[test]
    fn fill_closes_gaps_and_counts_what_it_closed() {
        let mut t = SeqTracker::default();
        t.observe(0);
        t.observe(10); // 1..=9
        t.observe(20); // 11..=19
        assert_eq!(t.fill(5..=12), 5 + 2);
        assert_eq!(gaps(&t), vec![1..=4, 13..=19]);
        assert_eq!(t.fill(15..=16), 2);
        assert_eq!(gaps(&t), vec![1..=4, 13..=14, 17..=19]);
        assert_eq!(t.fill(0..=100), 4 + 2 + 3);
        assert_eq!(t.missing(), 0);
        assert_eq!(t.high(), Some(20), "fill never moves the high mark");
        assert_eq!(t.observe(3), Observed::Duplicate);
        assert_eq!(t.observe(21), Observed::New);
        assert_eq!(t.fill(30..=40), 0);
        assert_eq!(t.observe(30), Observed::NewAfterGap { missing: 22..=29 });
        assert_eq!(SeqTracker::default().fill(1..=5), 0);
    }

    #[test]
    fn fill_marks_prestart_ids_seen() {
        let mut t = SeqTracker::default();
        t.observe(100);
        assert_eq!(t.fill(90..=99), 0, "nothing reported missing there");
        assert_eq!(t.observe(95), Observed::Duplicate);
    }

    #[test]
    fn extreme_ids_do_not_overflow() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(u64::MAX - 1), Observed::New);
        assert_eq!(t.observe(u64::MAX), Observed::New);
        assert_eq!(t.observe(u64::MAX), Observed::Duplicate);
        assert_eq!(t.observe(0), Observed::Stale);
        assert_eq!(t.fill(u64::MAX - 200..=u64::MAX), 0);
        let mut t = SeqTracker::starting_after(u64::MAX, SeqConfig::default());
        assert_eq!(t.observe(u64::MAX), Observed::Duplicate);
        assert_eq!(t.observe(0), Observed::Duplicate);
        let mut t = SeqTracker::default();
        t.observe(0);
        assert_eq!(
            t.observe(u64::MAX),
            Observed::NewAfterGap {
                missing: 1..=u64::MAX - 1
            }
        );
        assert_eq!(t.observe(7), Observed::Late);
    }

    #[test]
    fn config_is_clamped() {
        let t = SeqTracker::new(small(100, 0));
        assert_eq!(t.mask, 127);
        assert_eq!(t.max_gaps, 1);
        assert_eq!(SeqTracker::new(small(0, 3)).mask, 63);
    }

    /// `1..=n`, shuffled, with some ids repeated at random later positions.
    fn permutation_with_dups(n: u64) -> impl Strategy<Value = Vec<u64>> {
        (
            Just((1..=n).collect::<Vec<u64>>()).prop_shuffle(),
            prop::collection::vec(any::<prop::sample::Index>(), 0..n as usize),
        )
            .prop_map(|(mut ids, dups)| {
                for d in dups {
                    let id = *d.get(&ids);
                    let at = d.index(ids.len() + 1);
                    ids.insert(at, id);
                }
                ids
            })
    }

    /// Pending gaps must be exactly the unseen ids between `lo` and the high mark.
    fn check_gaps(t: &SeqTracker, seen: &BTreeSet<u64>, lo: u64) -> Result<(), TestCaseError> {
        let high = t.high().unwrap();
        let expected: Vec<u64> = (lo..=high).filter(|id| !seen.contains(id)).collect();
        let got: Vec<u64> = t.pending_gaps().flatten().collect();
        prop_assert_eq!(got, expected);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Known start (as after a handover): exact even with a window far smaller than the
        /// disorder, because gaps below the window are remembered as ranges.
        #[test]
        fn known_start_accepts_every_id_exactly_once(ids in permutation_with_dups(300)) {
            let mut t = SeqTracker::starting_after(0, small(64, 300));
            let mut seen = BTreeSet::new();
            for &id in &ids {
                let prev_high = t.high().unwrap();
                let v = t.observe(id);
                prop_assert_eq!(v.is_accepted(), seen.insert(id), "id {} -> {:?}", id, v);
                match v {
                    Observed::NewAfterGap { missing } => {
                        prop_assert_eq!(missing, prev_high + 1..=id - 1);
                    }
                    Observed::New => prop_assert_eq!(id, prev_high + 1),
                    Observed::Late => prop_assert!(id < prev_high),
                    Observed::Duplicate => {}
                    Observed::Stale => prop_assert!(false, "nothing is stale here"),
                }
                check_gaps(&t, &seen, 1)?;
            }
            prop_assert_eq!(t.high(), Some(300));
            prop_assert_eq!(t.missing(), 0);
            prop_assert_eq!(t.abandoned(), 0);
        }

        /// Fresh tracker: ids below the first are accepted once while inside the window.
        #[test]
        fn fresh_start_accepts_every_id_exactly_once(
            ids in permutation_with_dups(200), base in prop_oneof![Just(0u64), 1u64..1 << 40]
        ) {
            let mut t = SeqTracker::new(small(256, 200));
            let mut seen = BTreeSet::new();
            let first = base + ids[0];
            for &id in &ids {
                let v = t.observe(base + id);
                prop_assert_eq!(v.is_accepted(), seen.insert(base + id), "id {} -> {:?}", id, v);
                prop_assert_ne!(v, Observed::Stale);
                check_gaps(&t, &seen, first)?;
            }
            prop_assert_eq!(seen.len(), 200);
        }

        /// Under any input and tight bounds: never accepted twice, `Duplicate` only for ids
        /// really seen, the gap list within its cap, and pending gaps never claim a seen id.
        #[test]
        fn safety_holds_under_tight_bounds(
            ops in prop::collection::vec((0u64..400, 0u8..20, 0u64..30), 1..400),
            start in prop::option::of(0u64..50),
            max_gaps in 1usize..5
        ) {
            let mut t = match start {
                Some(s) => SeqTracker::starting_after(s, small(64, max_gaps)),
                None => SeqTracker::new(small(64, max_gaps)),
            };
            let known = |id: u64| start.is_some_and(|s| id <= s);
            let mut seen = BTreeSet::new();
            for (id, kind, len) in ops {
                if kind == 0 {
                    // Backfill delivered a range; only ids up to the high mark count.
                    if let Some(high) = t.high() {
                        let before: BTreeSet<u64> = t.pending_gaps().flatten().collect();
                        let closed = t.fill(id..=id + len);
                        let hi = (id + len).min(high);
                        let in_range = before.iter().filter(|&&g| g >= id && g <= hi).count();
                        prop_assert_eq!(closed, in_range as u64);
                        seen.extend(id..=hi);
                    }
                    continue;
                }
                if kind == 1 {
                    // Backfill gave up on everything pending up to `id`.
                    let before: BTreeSet<u64> = t.pending_gaps().flatten().collect();
                    let (abandoned, given_up) = (t.abandoned(), t.give_up_through(id));
                    prop_assert_eq!(given_up, before.iter().filter(|&&g| g <= id).count() as u64);
                    prop_assert_eq!(t.abandoned(), abandoned + given_up);
                    continue;
                }
                let v = t.observe(id);
                if v.is_accepted() {
                    prop_assert!(!known(id) && seen.insert(id), "{} accepted twice", id);
                } else if v == Observed::Duplicate {
                    prop_assert!(known(id) || seen.contains(&id), "{} never seen", id);
                }
                prop_assert!(t.gaps.len() <= max_gaps);
                for g in t.pending_gaps().flatten() {
                    prop_assert!(!seen.contains(&g) && !known(g));
                }
            }
        }
    }
}
