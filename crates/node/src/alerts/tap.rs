//! The alert consumer: per owned instrument, its alert index ([`pricefeed_domain::alert::Index`])
//! evaluated with every accepted trade under the ingest lock. An instrument with no alert costs
//! one slot lookup per trade. What fires waits here until the driver has committed it to the
//! Postgres outbox; until then the instrument's price is held back from Redis
//! ([`Consumer::holds_flush`]), so a node that dies before the commit leaves the trade
//! unaccepted in the cluster's eyes, and the next owner evaluates it again.
//!
//! A newly owned instrument's alerts come from Postgres a little after it goes live. Its trades
//! meanwhile (the first WebSocket trades and the backfilled gap after a failover, exactly those
//! the previous owner may not have evaluated) are kept and replayed through the index once the
//! alerts are in, starting from the price the cluster last accepted, and the instrument's price
//! is held back from Redis while they wait — for at most [`LOAD_HOLD`], so a Postgres outage
//! does not freeze the price other nodes see.
//!
//! Crossings are defined in trade-id order, but a gap's trades arrive after the ones that
//! revealed it (backfill). While an instrument with alerts has a gap open, its trades are held
//! and evaluated in id order once the gap closes, or after [`GAP_HOLD`] if it does not (a
//! backfill that failed; then late trades are evaluated as they come).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use pricefeed_domain::alert::{Fired, Index, Metric, Rule};
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::InstrumentKey;
use rust_decimal::Decimal;
use tokio::sync::{Notify, mpsc};

use crate::ingest::handoff::{Accepted, Consumer, Resume};

/// A firing waiting for its commit.
#[derive(Debug, Clone)]
pub struct Pending {
    pub slot: usize,
    pub key: InstrumentKey,
    pub fired: Fired,
    pub trade_id: u64,
    pub trade_ts: i64,
    pub price: Decimal,
}

/// Work for the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    pub slot: usize,
    pub generation: u64,
    pub key: InstrumentKey,
}

/// Longest time a newly owned instrument's price is held back from Redis while its alerts load.
pub const LOAD_HOLD: Duration = Duration::from_secs(5);

/// Longest time trades wait for a gap below them to be filled before they are evaluated.
pub const GAP_HOLD: Duration = Duration::from_secs(2);

/// Most trades kept per instrument while its alerts load (beyond them, the oldest are
/// evaluated without their alerts, i.e. not at all, and counted).
const BACKLOG_MAX: usize = 200_000;

/// Per-second low and high prices, for `move_pct` alerts.
#[derive(Debug, Default)]
struct Moves {
    secs: VecDeque<(i64, Decimal, Decimal)>,
    keep_ms: i64,
}

impl Moves {
    fn add(&mut self, ts: i64, p: Decimal) {
        let s = Span::SECOND.floor(ts);
        match self.secs.back_mut() {
            Some(b) if b.0 == s => {
                b.1 = b.1.min(p);
                b.2 = b.2.max(p);
            }
            Some(b) if b.0 > s => {} // late: the window's extremes barely move; skip it
            _ => self.secs.push_back((s, p, p)),
        }
        while self.secs.front().is_some_and(|f| f.0 < s - self.keep_ms) {
            self.secs.pop_front();
        }
    }

    /// Largest move within `window` up to `now`, in percent of its base.
    fn move_pct(&self, window: Span, now: i64, last: Decimal) -> Option<Decimal> {
        let from = now - window.ms();
        let (mut lo, mut hi): (Option<Decimal>, Option<Decimal>) = (None, None);
        for (s, l, h) in self.secs.iter().rev() {
            if *s < from {
                break;
            }
            lo = Some(lo.map_or(*l, |x| x.min(*l)));
            hi = Some(hi.map_or(*h, |x| x.max(*h)));
        }
        let (lo, hi) = (lo?, hi?);
        let up = ((last - lo) * Decimal::ONE_HUNDRED).checked_div(lo)?;
        let down = ((hi - last) * Decimal::ONE_HUNDRED).checked_div(hi)?;
        Some(up.max(down))
    }
}

/// One owned instrument.
#[derive(Debug)]
pub struct SlotAlerts {
    pub key: InstrumentKey,
    pub generation: u64,
    pub index: Index,
    /// Last accepted trade: (id, price, time).
    pub last: Option<(u64, Decimal, i64)>,
    moves: Option<Moves>,
    /// Firings of this slot not committed yet.
    pending: usize,
    /// The alerts are in the index; until then trades wait in `held`.
    loaded: bool,
    /// Trades not evaluated yet (alerts loading, or a gap open below them), and since when.
    held: Vec<(u64, Decimal, i64)>,
    held_since: Option<Instant>,
    /// The last accepted trade reported a gap below it.
    gaps_open: bool,
    /// The price the cluster last accepted before this node took over, and when it went live.
    resume_price: Option<Decimal>,
    live_at: Option<Instant>,
}

impl SlotAlerts {
    /// Evaluates the held trades in id order.
    fn drain(
        &mut self,
        slot: usize,
        fired: &mut Vec<Fired>,
        rearmed: &mut Vec<i64>,
        out: &mut Vec<Pending>,
    ) {
        let mut held = std::mem::take(&mut self.held);
        held.sort_unstable_by_key(|t| t.0);
        for t in held.drain(..) {
            self.evaluate(slot, t, fired, rearmed, out);
        }
        self.held = held;
        self.held_since = None;
    }

    fn hold(&mut self, t: (u64, Decimal, i64)) {
        if self.held.len() == BACKLOG_MAX {
            // Bounded: the oldest held trade is dropped unevaluated (counted).
            let oldest = (0..self.held.len())
                .min_by_key(|&i| self.held[i].0)
                .unwrap_or(0);
            self.held.swap_remove(oldest);
            metrics::counter!("pricefeed_alert_backlog_dropped_total").increment(1);
        }
        self.held.push(t);
        self.held_since.get_or_insert_with(Instant::now);
    }

    fn evaluate(
        &mut self,
        slot: usize,
        (id, price, ts): (u64, Decimal, i64),
        fired: &mut Vec<Fired>,
        rearmed: &mut Vec<i64>,
        out: &mut Vec<Pending>,
    ) {
        if self.index.is_empty() {
            return;
        }
        if let Some(m) = self.moves.as_mut() {
            m.add(ts, price);
        }
        self.index.observe(Metric::Price, price, ts, fired, rearmed);
        for f in fired.drain(..) {
            self.pending += 1;
            out.push(Pending {
                slot,
                key: self.key.clone(),
                fired: f,
                trade_id: id,
                trade_ts: ts,
                price,
            });
        }
    }
}

/// The consumer.
#[derive(Debug)]
pub struct AlertTap {
    slots: Vec<Option<SlotAlerts>>,
    by_key: HashMap<InstrumentKey, usize>,
    generation: u64,
    pending: Vec<Pending>,
    rearmed: Vec<i64>,
    loads: mpsc::UnboundedSender<Load>,
    wake: std::sync::Arc<Notify>,
    fired_buf: Vec<Fired>,
}

impl AlertTap {
    pub fn new(loads: mpsc::UnboundedSender<Load>, wake: std::sync::Arc<Notify>) -> Self {
        Self {
            slots: Vec::new(),
            by_key: HashMap::new(),
            generation: 0,
            pending: Vec::new(),
            rearmed: Vec::new(),
            loads,
            wake,
            fired_buf: Vec::new(),
        }
    }

    pub fn slot_of(&self, key: &InstrumentKey) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    pub fn slot_mut(&mut self, slot: usize, generation: u64) -> Option<&mut SlotAlerts> {
        self.slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == generation)
    }

    pub fn slots(&self) -> impl Iterator<Item = (usize, &SlotAlerts)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Adds or replaces an alert of an owned instrument.
    pub fn upsert(&mut self, key: &InstrumentKey, rule: Rule, now_ms: i64) -> bool {
        let Some(&slot) = self.by_key.get(key) else {
            return false;
        };
        let s = self.slots[slot].as_mut().expect("mapped slots exist");
        let moves = rule.cond.window;
        // A crossing alert needs to know which side the price is on now.
        if let Some((_, p, _)) = s.last.filter(|_| s.loaded) {
            s.index.seed(Metric::Price, p);
        }
        let ok = s.index.upsert(rule, now_ms);
        if let Some(w) = moves {
            let m = s.moves.get_or_insert_with(Moves::default);
            m.keep_ms = m.keep_ms.max(w.ms());
        }
        ok
    }

    /// The alerts of a newly owned instrument arrived: index them, then evaluate the trades
    /// that waited for them, from the price the cluster had accepted before.
    pub fn loaded(&mut self, slot: usize, generation: u64, rules: Vec<Rule>, now_ms: i64) {
        let Some(s) = self.slot_mut(slot, generation) else {
            return;
        };
        if s.loaded {
            return;
        }
        let seed = s
            .resume_price
            .or(s.held.iter().min_by_key(|t| t.0).map(|t| t.1));
        if let Some(p) = seed {
            s.index.seed(Metric::Price, p);
        }
        let key = s.key.clone();
        s.index.reserve(rules.len());
        for r in rules {
            self.upsert_unloaded(&key, r, now_ms);
        }
        let s = self.slots[slot].as_mut().expect("checked above");
        s.loaded = true;
        if !s.gaps_open {
            let mut fired = std::mem::take(&mut self.fired_buf);
            s.drain(slot, &mut fired, &mut self.rearmed, &mut self.pending);
            self.fired_buf = fired;
        }
        if !self.pending.is_empty() {
            self.wake.notify_one();
        }
    }

    fn upsert_unloaded(&mut self, key: &InstrumentKey, rule: Rule, now_ms: i64) {
        let Some(&slot) = self.by_key.get(key) else {
            return;
        };
        let s = self.slots[slot].as_mut().expect("mapped slots exist");
        if let Some(w) = rule.cond.window {
            let m = s.moves.get_or_insert_with(Moves::default);
            m.keep_ms = m.keep_ms.max(w.ms());
        }
        s.index.upsert(rule, now_ms);
    }

    /// Removes an alert wherever it is indexed.
    pub fn remove(&mut self, key: &InstrumentKey, id: i64) {
        if let Some(&slot) = self.by_key.get(key)
            && let Some(s) = self.slots[slot].as_mut()
        {
            s.index.remove(id);
        }
    }

    /// Alerts indexed (gauge).
    pub fn count(&self) -> usize {
        self.slots.iter().flatten().map(|s| s.index.len()).sum()
    }

    /// Heap bytes of the indexes (memory figure).
    pub fn heap_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.index.heap_bytes())
            .sum()
    }

    /// Takes the firings to commit and the alerts re-armed since the last call.
    pub fn take(&mut self) -> (Vec<Pending>, Vec<i64>) {
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.rearmed),
        )
    }

    /// Puts firings back after a failed commit (their instruments stay held).
    pub fn put_back(&mut self, mut p: Vec<Pending>) {
        p.append(&mut self.pending);
        self.pending = p;
    }

    /// The commit of these firings is done (or dropped): release their instruments.
    pub fn committed(&mut self, done: &[Pending]) {
        for p in done {
            if let Some(Some(s)) = self.slots.get_mut(p.slot)
                && s.key == p.key
            {
                s.pending = s.pending.saturating_sub(1);
            }
        }
    }

    /// Evaluates the non-price metrics of every owned instrument that has such alerts;
    /// `value(key, metric)` supplies VWAPs and z-scores from the live windows.
    pub fn tick(
        &mut self,
        now_ms: i64,
        mut value: impl FnMut(&InstrumentKey, Metric) -> Option<Decimal>,
    ) {
        let mut fired = std::mem::take(&mut self.fired_buf);
        for (slot, s) in self.slots.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            // A gap that backfill did not fill in time: evaluate what waited, in id order.
            if s.loaded && s.held_since.is_some_and(|t| t.elapsed() >= GAP_HOLD) {
                s.drain(slot, &mut fired, &mut self.rearmed, &mut self.pending);
            }
            let mut re = Vec::new();
            s.index.release_cooled(now_ms, &mut re);
            self.rearmed.extend(re);
            let Some((id, price, ts)) = s.last else {
                continue;
            };
            let metrics: Vec<Metric> = s.index.metrics().filter(|m| *m != Metric::Price).collect();
            for m in metrics {
                let v = match m {
                    Metric::Move(w) => s
                        .moves
                        .as_ref()
                        .and_then(|mv| mv.move_pct(w, now_ms, price)),
                    other => value(&s.key, other),
                };
                let Some(v) = v else { continue };
                s.index.observe(m, v, now_ms, &mut fired, &mut self.rearmed);
                for f in fired.drain(..) {
                    s.pending += 1;
                    self.pending.push(Pending {
                        slot,
                        key: s.key.clone(),
                        fired: f,
                        trade_id: id,
                        trade_ts: ts,
                        price,
                    });
                }
            }
        }
        self.fired_buf = fired;
        if !self.pending.is_empty() {
            self.wake.notify_one();
        }
    }
}

impl Consumer for AlertTap {
    fn on_trade(&mut self, t: &Accepted<'_>) {
        let Some(Some(s)) = self.slots.get_mut(t.slot) else {
            return;
        };
        if s.last.is_none_or(|(id, _, _)| t.id > id) {
            s.last = Some((t.id, t.price, t.ts_ms));
        }
        s.gaps_open = t.gaps_open;
        let trade = (t.id, t.price, t.ts_ms);
        if !s.loaded {
            s.hold(trade);
            return;
        }
        if s.index.is_empty() {
            return;
        }
        let before = self.pending.len();
        if t.gaps_open {
            s.hold(trade);
        } else if s.held.is_empty() {
            s.evaluate(
                t.slot,
                trade,
                &mut self.fired_buf,
                &mut self.rearmed,
                &mut self.pending,
            );
        } else {
            s.held.push(trade);
            s.drain(
                t.slot,
                &mut self.fired_buf,
                &mut self.rearmed,
                &mut self.pending,
            );
        }
        if self.pending.len() > before {
            self.wake.notify_one();
        }
    }

    fn gained(&mut self, slot: usize, key: &InstrumentKey) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        self.generation += 1;
        self.slots[slot] = Some(SlotAlerts {
            key: key.clone(),
            generation: self.generation,
            index: Index::new(),
            last: None,
            moves: None,
            pending: 0,
            loaded: false,
            held: Vec::new(),
            held_since: None,
            gaps_open: false,
            resume_price: None,
            live_at: None,
        });
        self.by_key.insert(key.clone(), slot);
    }

    fn live(&mut self, slot: usize, key: &InstrumentKey, resume: Resume) {
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            s.resume_price = resume.price;
            s.live_at = Some(Instant::now());
            let _ = self.loads.send(Load {
                slot,
                generation: s.generation,
                key: key.clone(),
            });
        }
    }

    fn lost(&mut self, slot: usize, key: &InstrumentKey) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
        self.by_key.remove(key);
    }

    fn holds_flush(&self, slot: usize) -> bool {
        matches!(self.slots.get(slot), Some(Some(s)) if s.pending > 0
            || (s.loaded && !s.held.is_empty())
            || (!s.loaded && s.live_at.is_none_or(|t| t.elapsed() < LOAD_HOLD)))
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pricefeed_domain::alert::{Condition, Kind};
    use std::sync::Arc;

    fn d(v: i64) -> Decimal {
        Decimal::from(v)
    }

    fn rule(id: i64, kind: Kind, t: i64) -> Rule {
        Rule {
            id,
            user_id: 1,
            version: 1,
            cond: Condition {
                kind,
                threshold: d(t),
                interval: None,
                window: None,
            },
            rearm: None,
            armed: true,
            last_fired_ms: None,
        }
    }

    fn trade<'a>(key: &'a InstrumentKey, sym: &'a Arc<str>, id: u64, price: i64) -> Accepted<'a> {
        Accepted {
            key,
            symbol: sym,
            slot: 0,
            id,
            price: d(price),
            qty: Decimal::ONE,
            ts_ms: 1_000 + id as i64,
            buyer_is_maker: false,
            backfill: false,
            gaps_open: false,
        }
    }

    fn tap() -> (AlertTap, mpsc::UnboundedReceiver<Load>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (AlertTap::new(tx, Arc::new(Notify::new())), rx)
    }

    /// After a failover the new owner's first trades (here the backfilled crossing) arrive
    /// before its alerts: they wait, are evaluated from the price the cluster had accepted, and
    /// the price is held back from Redis until then.
    #[test]
    fn trades_before_the_alerts_load_are_evaluated_from_the_resume_price() {
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let sym: Arc<str> = Arc::from("BTCUSDT");
        let (mut t, mut loads) = tap();
        t.gained(0, &key);
        t.live(
            0,
            &key,
            Resume {
                after_id: Some(9),
                price: Some(d(99)),
            },
        );
        let job = loads.try_recv().unwrap();
        assert!(t.holds_flush(0), "held while the alerts load");
        // The crossing trade (99 → 101) and one after it arrive first.
        t.on_trade(&trade(&key, &sym, 10, 101));
        t.on_trade(&trade(&key, &sym, 11, 102));
        assert!(t.take().0.is_empty(), "nothing evaluated before the load");
        t.loaded(
            job.slot,
            job.generation,
            vec![rule(1, Kind::CrossesUp, 100), rule(2, Kind::Below, 50)],
            2_000,
        );
        let (fired, _) = t.take();
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].fired.alert_id, fired[0].trade_id), (1, 10));
        assert!(t.holds_flush(0), "held until the firing is committed");
        t.committed(&fired);
        assert!(!t.holds_flush(0));
        // Live from now on.
        t.on_trade(&trade(&key, &sym, 12, 40));
        let (fired, _) = t.take();
        assert_eq!((fired[0].fired.alert_id, fired[0].trade_id), (2, 12));
    }

    /// Without a known resume price (a fresh start) a crossing needs the price on the other
    /// side first; a new alert on a loaded instrument knows the side from the last trade.
    #[test]
    fn crossing_alerts_added_later_know_the_current_side() {
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let sym: Arc<str> = Arc::from("BTCUSDT");
        let (mut t, mut loads) = tap();
        t.gained(0, &key);
        t.live(0, &key, Resume::default());
        let job = loads.try_recv().unwrap();
        t.loaded(job.slot, job.generation, Vec::new(), 0);
        t.on_trade(&trade(&key, &sym, 1, 95));
        assert!(t.upsert(&key, rule(5, Kind::CrossesUp, 100), 0));
        t.on_trade(&trade(&key, &sym, 2, 100));
        let (fired, _) = t.take();
        assert_eq!(fired.len(), 1, "95 → 100 crosses 100");
        assert_eq!(fired[0].trade_id, 2);
    }

    /// A gap's trades arrive after the trade that revealed it; crossings are still judged in id
    /// order, and a gap that is never filled stops holding after [`GAP_HOLD`].
    #[test]
    fn trades_behind_a_gap_are_evaluated_in_id_order() {
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let sym: Arc<str> = Arc::from("BTCUSDT");
        let (mut t, mut loads) = tap();
        t.gained(0, &key);
        t.live(
            0,
            &key,
            Resume {
                after_id: Some(10),
                price: Some(d(99)),
            },
        );
        let job = loads.try_recv().unwrap();
        t.loaded(
            job.slot,
            job.generation,
            vec![rule(1, Kind::CrossesUp, 100)],
            0,
        );
        // 12 (105) arrives first, revealing the gap 11; then the backfilled 11 (101).
        let mut late = trade(&key, &sym, 12, 105);
        late.gaps_open = true;
        t.on_trade(&late);
        assert!(t.take().0.is_empty(), "held while 11 is missing");
        assert!(t.holds_flush(0));
        let mut fill = trade(&key, &sym, 11, 101);
        fill.backfill = true;
        t.on_trade(&fill);
        let (fired, _) = t.take();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].trade_id, 11, "the crossing is 99 → 101, by id 11");
        t.committed(&fired);
        assert!(!t.holds_flush(0));

        // A gap that is never filled: after GAP_HOLD the held trades are evaluated anyway.
        t.upsert(&key, rule(2, Kind::CrossesDown, 90), 0);
        let mut gap = trade(&key, &sym, 20, 80);
        gap.gaps_open = true;
        t.on_trade(&gap);
        t.tick(0, |_, _| None);
        assert!(t.take().0.is_empty());
        if let Some(Some(s)) = t.slots.get_mut(0) {
            s.held_since = Instant::now().checked_sub(GAP_HOLD);
        }
        t.tick(0, |_, _| None);
        let (fired, _) = t.take();
        assert_eq!((fired[0].fired.alert_id, fired[0].trade_id), (2, 20));
    }

    #[test]
    fn an_instrument_whose_alerts_never_load_is_released_after_the_hold() {
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let (mut t, _loads) = tap();
        t.gained(0, &key);
        t.live(0, &key, Resume::default());
        assert!(t.holds_flush(0));
        if let Some(Some(s)) = t.slots.get_mut(0) {
            s.live_at = Instant::now().checked_sub(LOAD_HOLD);
        }
        assert!(!t.holds_flush(0));
    }
}
