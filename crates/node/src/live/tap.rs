//! The live-values consumer: per owned instrument, its rolling VWAP windows and 24 h statistics
//! ([`pricefeed_domain::window::Live`]), updated with every accepted trade under the ingest lock
//! (a multiply and a few adds per interval). The driver tasks in [`super`] publish, rebuild and
//! refresh them.

use std::any::Any;
use std::collections::HashMap;

use pricefeed_domain::bucket::{Span, Sums};
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_domain::window::{Live, WindowSpec};
use pricefeed_store::protocol::{StatsDoc, VwapDoc};
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use crate::ingest::handoff::{Accepted, Consumer, Resume};

/// Work for the loader task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    /// Rebuild `slot` from Postgres (the instrument just went live here).
    Rebuild {
        slot: usize,
        generation: u64,
        key: InstrumentKey,
    },
    /// Apply confirmed history up to `through` to `slot`.
    Refresh {
        slot: usize,
        generation: u64,
        key: InstrumentKey,
        through: i64,
    },
}

/// One owned instrument.
#[derive(Debug)]
pub struct Slot {
    pub key: InstrumentKey,
    pub live: Live,
    /// Bumped every time the slot is (re)assigned; loads for an older generation are dropped.
    pub generation: u64,
    /// Trades with ids from here were (or will be) added live; Postgres supplies the older ones.
    pub live_from: Option<u64>,
    /// Highest-id trade seen (latest price, for the 24 h change).
    pub last: Option<(u64, Decimal)>,
    /// Rank group (`market:QUOTE`), known once the rebuild ran.
    pub group: Option<String>,
    /// Whether Postgres' history is in the windows. Until then they hold only the trades since
    /// this node went live (an empty or partial window), so nothing is published: the previous
    /// owner's values stay in Redis instead of being replaced by a wrong one.
    pub rebuilt: bool,
    /// What was published last per interval, and when (ms), to skip unchanged values.
    published: Vec<Option<(Sums, bool, i64)>>,
}

/// The consumer.
#[derive(Debug)]
pub struct LiveTap {
    spec: WindowSpec,
    slots: Vec<Option<Slot>>,
    by_key: HashMap<InstrumentKey, usize>,
    generation: u64,
    loads: mpsc::UnboundedSender<Load>,
}

impl LiveTap {
    pub fn new(spec: WindowSpec, loads: mpsc::UnboundedSender<Load>) -> Self {
        Self {
            spec,
            slots: Vec::new(),
            by_key: HashMap::new(),
            generation: 0,
            loads,
        }
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// The slot of `key` if this node owns it.
    pub fn slot_of(&self, key: &InstrumentKey) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The slot `slot` if it still holds `generation`.
    pub fn slot_mut(&mut self, slot: usize, generation: u64) -> Option<&mut Slot> {
        self.slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == generation)
    }

    /// Slot `slot`, whatever its generation.
    pub fn slot_ref(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    /// Asks the loader to refresh `key` with confirmed history up to `through`, when owned and
    /// behind.
    pub fn request_refresh(&mut self, key: &InstrumentKey, through: i64) {
        if let Some(&slot) = self.by_key.get(key)
            && let Some(s) = self.slots[slot].as_ref()
            && s.live.through() < through
        {
            let _ = self.loads.send(Load::Refresh {
                slot,
                generation: s.generation,
                key: key.clone(),
                through,
            });
        }
    }

    /// Moves every window to `now_ms` and returns the VWAP documents worth publishing: those
    /// whose sums or validation changed, and the others every `refresh_ms`.
    pub fn vwap_docs(&mut self, now_ms: i64, refresh_ms: i64) -> Vec<VwapDoc> {
        let mut out = Vec::new();
        for s in self.slots.iter_mut().flatten().filter(|s| s.rebuilt) {
            s.live.advance(now_ms);
            let through = s.live.through();
            for (i, v) in s.live.vwaps().into_iter().enumerate() {
                let validated = v.window_end - 1 <= through;
                let due = match s.published[i] {
                    Some((sums, val, at)) => {
                        sums != v.sums || val != validated || now_ms - at >= refresh_ms
                    }
                    None => true,
                };
                if !due {
                    continue;
                }
                s.published[i] = Some((v.sums, validated, now_ms));
                out.push(vwap_doc(
                    &s.key,
                    v.interval,
                    &v.sums,
                    v.window_start,
                    v.window_end,
                    validated,
                ));
            }
        }
        out
    }

    /// 24 h statistics of every owned instrument, with σ and the rank group when known.
    pub fn stats_docs(&mut self, now_ms: i64) -> Vec<StatsDoc> {
        let mut out = Vec::new();
        for s in self.slots.iter_mut().flatten().filter(|s| s.rebuilt) {
            s.live.advance(now_ms);
            let st = s.live.stats();
            let (market, symbol) = (s.key.market(), s.key.symbol_str());
            out.push(StatsDoc {
                market: market.as_str().to_string(),
                symbol: symbol.to_string(),
                group: s.group.clone().unwrap_or_default(),
                mean: st.mean,
                stddev: st.stddev,
                min: st.min,
                max: st.max,
                change_pct: s.last.and_then(|(_, p)| st.change_pct(p)),
                samples: st.samples,
                from_ms: st.from_ms,
                to_ms: st.to_ms,
            });
        }
        out
    }

    /// Forgets what was published, so the next round publishes every value again.
    pub fn forget_published(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            s.published.iter_mut().for_each(|p| *p = None);
        }
    }

    /// Heap bytes held by the windows (memory figure).
    pub fn heap_bytes(&self) -> usize {
        self.slots().map(|s| s.live.heap_bytes()).sum()
    }
}

/// A VWAP document of `key`.
pub fn vwap_doc(
    key: &InstrumentKey,
    interval: Span,
    sums: &Sums,
    window_start: i64,
    window_end: i64,
    validated: bool,
) -> VwapDoc {
    VwapDoc {
        market: key.market().as_str().to_string(),
        symbol: key.symbol_str().to_string(),
        interval: interval.to_string(),
        vwap: sums.vwap(),
        volume: sums.q,
        quote_volume: sums.pq,
        trade_count: sums.n,
        window_start,
        window_end,
        validated,
    }
}

impl Consumer for LiveTap {
    fn on_trade(&mut self, t: &Accepted<'_>) {
        let Some(Some(s)) = self.slots.get_mut(t.slot) else {
            return;
        };
        s.live.add_trade(t.id, t.price, t.qty, t.ts_ms);
        if s.live_from.is_none_or(|f| t.id < f) {
            s.live_from = Some(t.id);
        }
        if s.last.is_none_or(|(id, _)| t.id > id) {
            s.last = Some((t.id, t.price));
        }
    }

    fn gained(&mut self, slot: usize, key: &InstrumentKey) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        self.generation += 1;
        let now = crate::ingest::connector::now_ms();
        self.slots[slot] = Some(Slot {
            key: key.clone(),
            live: Live::new(&self.spec, now),
            generation: self.generation,
            live_from: None,
            last: None,
            group: None,
            rebuilt: false,
            published: vec![None; self.spec.intervals.len()],
        });
        self.by_key.insert(key.clone(), slot);
    }

    fn live(&mut self, slot: usize, key: &InstrumentKey, resume: Resume) {
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            return;
        };
        if let Some(a) = resume.after_id {
            s.live_from = Some(s.live_from.map_or(a + 1, |f| f.min(a + 1)));
        }
        let _ = self.loads.send(Load::Rebuild {
            slot,
            generation: s.generation,
            key: key.clone(),
        });
    }

    fn lost(&mut self, slot: usize, key: &InstrumentKey) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
        self.by_key.remove(key);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rust_decimal::Decimal;

    use super::*;

    fn trade<'a>(key: &'a InstrumentKey, sym: &'a Arc<str>, id: u64, ts_ms: i64) -> Accepted<'a> {
        Accepted {
            key,
            symbol: sym,
            slot: 0,
            id,
            price: Decimal::new(100, 0),
            qty: Decimal::ONE,
            ts_ms,
            buyer_is_maker: false,
            backfill: false,
            gaps_open: false,
        }
    }

    #[test]
    fn nothing_is_published_before_the_rebuild_brought_history_in() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut tap = LiveTap::new(WindowSpec::new(vec![Span::MINUTE], Span::DAY), tx);
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let sym: Arc<str> = Arc::from("BTCUSDT");
        tap.gained(0, &key);
        tap.live(0, &key, Resume::default());
        assert!(matches!(rx.try_recv(), Ok(Load::Rebuild { slot: 0, .. })));
        let now = crate::ingest::connector::now_ms();
        tap.on_trade(&trade(&key, &sym, 7, now));
        // Only the trades since going live: a VWAP over a few seconds labelled 1m, or σ of
        // nothing, would replace the previous owner's values.
        assert!(tap.vwap_docs(now + 1_000, 0).is_empty());
        assert!(tap.stats_docs(now + 1_000).is_empty());

        let generation = tap.slot_ref(0).unwrap().generation;
        tap.slot_mut(0, generation).unwrap().rebuilt = true;
        let v = tap.vwap_docs(now + 1_000, 0);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].trade_count, 1);
        assert_eq!(tap.stats_docs(now + 1_000).len(), 1);

        // A new generation (the instrument came back) starts unbuilt again.
        tap.lost(0, &key);
        tap.gained(0, &key);
        assert!(tap.vwap_docs(now + 2_000, 0).is_empty());
    }
}
