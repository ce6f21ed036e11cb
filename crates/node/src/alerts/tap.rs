//! The alert consumer: per owned instrument, its alert index ([`pricefeed_domain::alert::Index`])
//! evaluated with every accepted trade under the ingest lock. An instrument with no alert costs
//! one slot lookup per trade. What fires waits here until the driver has committed it to the
//! Postgres outbox; until then the instrument's price is held back from Redis
//! ([`Consumer::holds_flush`]), so a node that dies before the commit leaves the trade
//! unaccepted in the cluster's eyes, and the next owner evaluates it again.

use std::any::Any;
use std::collections::{HashMap, VecDeque};

use pricefeed_domain::alert::{Fired, Index, Metric, Rule};
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::InstrumentKey;
use rust_decimal::Decimal;
use tokio::sync::{Notify, mpsc};

use crate::ingest::handoff::{Accepted, Consumer};

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
        let ok = s.index.upsert(rule, now_ms);
        if let Some(w) = moves {
            let m = s.moves.get_or_insert_with(Moves::default);
            m.keep_ms = m.keep_ms.max(w.ms());
        }
        ok
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
        if s.index.is_empty() {
            return;
        }
        if let Some(m) = s.moves.as_mut() {
            m.add(t.ts_ms, t.price);
        }
        s.index.observe(
            Metric::Price,
            t.price,
            t.ts_ms,
            &mut self.fired_buf,
            &mut self.rearmed,
        );
        if self.fired_buf.is_empty() {
            return;
        }
        for f in self.fired_buf.drain(..) {
            s.pending += 1;
            self.pending.push(Pending {
                slot: t.slot,
                key: t.key.clone(),
                fired: f,
                trade_id: t.id,
                trade_ts: t.ts_ms,
                price: t.price,
            });
        }
        self.wake.notify_one();
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
        });
        self.by_key.insert(key.clone(), slot);
    }

    fn live(&mut self, slot: usize, key: &InstrumentKey, _after_id: Option<u64>) {
        if let Some(Some(s)) = self.slots.get(slot) {
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
        matches!(self.slots.get(slot), Some(Some(s)) if s.pending > 0)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
