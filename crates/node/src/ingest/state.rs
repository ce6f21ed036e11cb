//! The per-instrument ingest state of one node: dedup trackers, latest prices, statistics, and
//! the bookkeeping of handovers. Everything the trade path touches lives here, behind one mutex
//! held for microseconds per frame (connections of a market rarely contend: a node has one or a
//! few per market, and the mutex is never held across an `.await`).
//!
//! Life of an instrument on this node:
//! 1. **Pending** when the slice gains it: its WS trades are not accepted yet, because the
//!    previous owner may still be accepting (nodes learn an assignment at slightly different
//!    times). It becomes live once the previous owner has released it (a marker written
//!    atomically with its final price flush), at once when the previous owner is gone (dead
//!    node), or after the handover grace. Its tracker then starts after the trade id recorded in
//!    Redis, so trades the previous owner accepted are duplicates here, and the ids in between
//!    are a gap that REST backfill fills. That is what makes "accepted exactly once across the
//!    cluster" hold through handovers.
//! 2. **Live**: WS and backfilled trades go through the same [`SeqTracker`].
//! 3. **Released** when the slice loses it: removed at once (no more acceptance), its last
//!    unflushed price and counts are flushed together with the release marker. Every flush
//!    also writes the ids still missing below the flushed price ([`FlushEntry::missing`]), so
//!    whoever goes live next, after a release or a death, re-opens them
//!    ([`Core::reopen_gaps`]): it resumes after the last flushed id, and a gap backfill had
//!    not closed yet would otherwise never reach the live path.

use foldhash::HashMap;
use std::ops::RangeInclusive;

use pricefeed_broker::ws::TradeRef;
use pricefeed_domain::instrument::{InstrumentKey, Market};
use pricefeed_domain::sequence::{Observed, SeqConfig, SeqTracker};
use pricefeed_domain::trade::{Trade, TradeError, validate_fields};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::handoff::{Accepted, Consumer, Resume};

pub(crate) fn market_index(m: Market) -> usize {
    match m {
        Market::Spot => 0,
        Market::Usdm => 1,
        Market::Options => 2,
    }
}

/// The latest accepted trade of an instrument (by trade id, not arrival order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub price: Decimal,
    pub qty: Decimal,
    pub trade_id: u64,
    pub ts_ms: i64,
}

/// Counters of one instrument on this node, since it was last gained.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct InstrumentStats {
    /// Trades accepted (WS and backfill), each trade id at most once.
    pub accepted: u64,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    /// Of `accepted`, how many came from REST backfill.
    pub backfilled: u64,
    pub duplicates: u64,
    /// Ids too old for the tracker to vouch for (dropped).
    pub stale: u64,
    /// Trades that failed validation.
    pub rejected: u64,
    /// WS trades seen while the instrument was pending a handover (recovered by backfill).
    pub pending_dropped: u64,
    /// Ids reported missing and not backfilled yet.
    pub missing: u64,
    /// Missing ids the live path stopped waiting for: their gap was dropped because too many
    /// were open at once (`SeqConfig::max_gaps`), or the broker no longer has them. Never seen by
    /// the live path (reconciliation stores what the broker has).
    pub abandoned: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Gained at `epoch`; `prev_gone` when the previous owner left the cluster (no release
    /// marker will come); live at the latest at `deadline`.
    Pending {
        epoch: u64,
        prev_gone: bool,
        deadline: Instant,
    },
    Live,
}

#[derive(Debug)]
struct Instr {
    key: InstrumentKey,
    /// Dense number for consumers' per-instrument state.
    slot: usize,
    /// The exchange symbol, shared with queued history rows (no allocation per trade).
    sym: std::sync::Arc<str>,
    phase: Phase,
    tracker: SeqTracker,
    /// `tracker.abandoned()` already counted in the metric and logged.
    abandoned_reported: u64,
    /// The last flush wrote a non-empty missing set (the next one must clear it when none).
    missing_flushed: bool,
    latest: Option<Latest>,
    /// `latest` changed since the last flush.
    dirty: bool,
    /// Accepted since the last flush (for the cluster-wide counters in Redis).
    unflushed: u64,
    unflushed_first: Option<u64>,
    stats: InstrumentStats,
    /// Another node holds the live claim (Redis refused our flush): nothing is flushed until
    /// the next assignment makes it pending again or takes it away.
    fenced: bool,
}

/// A gap to fetch from REST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapJob {
    pub key: InstrumentKey,
    pub ids: RangeInclusive<u64>,
}

/// What the flush task writes to Redis for one instrument.
#[derive(Debug, Clone)]
pub struct FlushEntry {
    pub key: InstrumentKey,
    pub latest: Option<Latest>,
    pub accepted: u64,
    pub first_id: Option<u64>,
    /// Ids below `latest` still missing here (gaps backfill has not closed), for whoever goes
    /// live on the instrument next: it resumes after the last flushed id, so without them those
    /// ids would never reach the live path. `None`: unchanged since the last flush (none then
    /// and none now); `Some(empty)`: clear what was written.
    pub missing: Option<Vec<RangeInclusive<u64>>>,
}

/// An instrument this node released, for its handover marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub key: InstrumentKey,
    /// The epoch at which it was released.
    pub epoch: u64,
}

/// One tick's worth of Redis work.
#[derive(Debug, Default)]
pub struct FlushBatch {
    pub entries: Vec<FlushEntry>,
    /// Released instruments (their handover markers).
    pub released: Vec<Release>,
    pub gaps: Vec<GapJob>,
    /// Accepted trades per market since the last flush (metrics).
    pub accepted_by_market: [u64; 3],
}

/// A pending instrument the flush task should try to make live.
#[derive(Debug, Clone)]
pub struct PendingCheck {
    pub key: InstrumentKey,
    pub epoch: u64,
    /// Previous owner gone or grace over: go live with whatever Redis says.
    pub force: bool,
}

/// Outcome of one WS trade, for the caller's logging and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Duplicate,
    Stale,
    Rejected(TradeError),
    /// Not in this node's slice (e.g. a released stream during its grace).
    NotOwned,
    Pending,
}

/// Node-wide counters that are not per instrument.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct NodeCounters {
    pub not_owned: u64,
    pub malformed: u64,
}

/// All ingest state of the node.
pub struct Core {
    /// Per market, keyed by the exchange symbol as it appears in frames, so a frame's borrowed
    /// `s` finds its instrument without allocating.
    markets: [HashMap<Box<str>, Instr>; 3],
    seq: SeqConfig,
    max_skew_ms: i64,
    released: Vec<Release>,
    released_entries: Vec<FlushEntry>,
    gaps: Vec<GapJob>,
    accepted_by_market: [u64; 3],
    /// Where accepted trades go (history, live windows, alerts; see [`super::handoff`]).
    consumers: Vec<Box<dyn Consumer>>,
    /// Slots released by lost instruments, reused first.
    free_slots: Vec<usize>,
    next_slot: usize,
    pub counters: NodeCounters,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("instruments", &self.instruments())
            .field("consumers", &self.consumers.len())
            .finish()
    }
}

impl Core {
    pub fn new(seq: SeqConfig, max_skew_ms: i64) -> Self {
        Self {
            markets: Default::default(),
            seq,
            max_skew_ms,
            released: Vec::new(),
            released_entries: Vec::new(),
            gaps: Vec::new(),
            accepted_by_market: [0; 3],
            consumers: Vec::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            counters: NodeCounters::default(),
        }
    }

    /// Offers every accepted trade (WS and backfill) to `c` from now on, and tells it about
    /// the instruments already in the slice.
    pub fn add_consumer(&mut self, mut c: Box<dyn Consumer>) {
        for i in self.markets.iter().flat_map(|m| m.values()) {
            c.gained(i.slot, &i.key);
            if i.phase == Phase::Live {
                c.live(
                    i.slot,
                    &i.key,
                    Resume {
                        after_id: i.stats.first_id.map(|f| f.saturating_sub(1)),
                        price: None,
                    },
                );
            }
        }
        self.consumers.push(c);
    }

    /// The registered consumer of type `T` (its driver task reaches it this way).
    pub fn consumer_mut<T: Consumer>(&mut self) -> Option<&mut T> {
        self.consumers
            .iter_mut()
            .find_map(|c| c.as_any_mut().downcast_mut::<T>())
    }

    fn get(&self, key: &InstrumentKey) -> Option<&Instr> {
        self.markets[market_index(key.market())].get(key.symbol_str())
    }

    fn get_mut(&mut self, key: &InstrumentKey) -> Option<&mut Instr> {
        self.markets[market_index(key.market())].get_mut(key.symbol_str())
    }

    /// Installs the slice `owned` learned at `epoch`: new instruments start pending, lost ones
    /// are released. `prev_gone(key)` says whether the instrument's previous owner left the
    /// cluster. Returns (gained, lost) counts.
    pub fn sync_slice(
        &mut self,
        owned: &[InstrumentKey],
        epoch: u64,
        prev_gone: impl Fn(&InstrumentKey) -> bool,
        deadline: Instant,
    ) -> (usize, usize) {
        let wanted: std::collections::HashSet<&InstrumentKey> = owned.iter().collect();
        let mut lost = 0;
        for map in &mut self.markets {
            let gone: Vec<Box<str>> = map
                .iter()
                .filter(|(_, i)| !wanted.contains(&i.key))
                .map(|(s, _)| s.clone())
                .collect();
            for s in gone {
                let mut i = map.remove(&s).expect("listed");
                lost += 1;
                for c in &mut self.consumers {
                    c.lost(i.slot, &i.key);
                }
                self.free_slots.push(i.slot);
                // A pending instrument never accepted anything: nothing to hand over, and
                // writing a marker would tell the next owner the wrong story. Nor has a fenced
                // one: another node is already live on it.
                if i.phase == Phase::Live && !i.fenced {
                    self.released_entries.push(FlushEntry {
                        key: i.key.clone(),
                        latest: i.dirty.then_some(i.latest).flatten(),
                        accepted: i.unflushed,
                        first_id: i.unflushed_first,
                        missing: missing_to_flush(&mut i),
                    });
                    self.released.push(Release { key: i.key, epoch });
                }
            }
        }
        let mut gained = 0;
        for key in owned {
            let map = &mut self.markets[market_index(key.market())];
            if let Some(i) = map.get_mut(key.symbol_str()) {
                if i.fenced {
                    // Ours again (or still, by a newer epoch): start over like a gained
                    // instrument, resuming from what the node that was live on it stored.
                    for c in &mut self.consumers {
                        c.lost(i.slot, &i.key);
                        c.gained(i.slot, &i.key);
                    }
                    i.phase = Phase::Pending {
                        epoch,
                        prev_gone: prev_gone(key),
                        deadline,
                    };
                    i.tracker = SeqTracker::new(self.seq);
                    i.abandoned_reported = 0;
                    i.missing_flushed = false;
                    i.latest = None;
                    i.fenced = false;
                    gained += 1;
                }
                continue;
            }
            gained += 1;
            let slot = self.free_slots.pop().unwrap_or_else(|| {
                self.next_slot += 1;
                self.next_slot - 1
            });
            for c in &mut self.consumers {
                c.gained(slot, key);
            }
            map.insert(
                key.symbol_str().into(),
                Instr {
                    key: key.clone(),
                    slot,
                    sym: std::sync::Arc::from(key.symbol_str()),
                    phase: Phase::Pending {
                        epoch,
                        prev_gone: prev_gone(key),
                        deadline,
                    },
                    tracker: SeqTracker::new(self.seq),
                    abandoned_reported: 0,
                    missing_flushed: false,
                    latest: None,
                    dirty: false,
                    unflushed: 0,
                    unflushed_first: None,
                    stats: InstrumentStats::default(),
                    fenced: false,
                },
            );
        }
        (gained, lost)
    }

    /// Pending instruments the flush task should resolve now.
    pub fn pending_checks(&self, now: Instant) -> Vec<PendingCheck> {
        self.markets
            .iter()
            .flat_map(|m| m.values())
            .filter_map(|i| match i.phase {
                Phase::Pending {
                    epoch,
                    prev_gone,
                    deadline,
                } => Some(PendingCheck {
                    key: i.key.clone(),
                    epoch,
                    force: prev_gone || now >= deadline,
                }),
                Phase::Live => None,
            })
            .collect()
    }

    /// Makes a pending instrument live, its tracker starting after `resume.after_id` (the last
    /// trade id accepted anywhere in the cluster, from Redis), or fresh when there is none.
    /// Returns false when it is no longer pending for `epoch` (lost or re-gained meanwhile).
    pub fn go_live(&mut self, key: &InstrumentKey, epoch: u64, resume: Resume) -> bool {
        let last_id = resume.after_id;
        let seq = self.seq;
        let Some(i) = self.get_mut(key) else {
            return false;
        };
        match i.phase {
            Phase::Pending { epoch: e, .. } if e == epoch => {}
            _ => return false,
        }
        i.tracker = match last_id {
            Some(last) => SeqTracker::starting_after(last, seq),
            None => SeqTracker::new(seq),
        };
        i.abandoned_reported = 0;
        // The claim took the stored missing set (it comes back through `reopen_gaps`).
        i.missing_flushed = false;
        i.phase = Phase::Live;
        let (slot, key) = (i.slot, i.key.clone());
        for c in &mut self.consumers {
            c.live(slot, &key, resume);
        }
        true
    }

    /// The previous owner of `key` handed over ids it was still missing: wait for them (and
    /// backfill them) like gaps seen here. Call right after [`Self::go_live`].
    pub fn reopen_gaps(&mut self, key: &InstrumentKey, missing: &[RangeInclusive<u64>]) {
        let Some(i) = self.get_mut(key) else {
            return;
        };
        if i.phase != Phase::Live || missing.is_empty() {
            return;
        }
        for r in missing {
            i.tracker.reopen(r.clone());
        }
        report_abandoned(i);
        let key = i.key.clone();
        self.gaps.extend(missing.iter().map(|r| GapJob {
            key: key.clone(),
            ids: r.clone(),
        }));
    }

    /// One trade from a WS frame of `market`.
    pub fn on_ws_trade(&mut self, market: Market, t: &TradeRef<'_>, now_ms: i64) -> Verdict {
        let m = market_index(market);
        let Some(i) = self.markets[m].get_mut(t.symbol) else {
            self.counters.not_owned += 1;
            return Verdict::NotOwned;
        };
        if i.phase != Phase::Live {
            i.stats.pending_dropped += 1;
            return Verdict::Pending;
        }
        if let Err(e) = validate_fields(t.price, t.qty, t.ts_ms, now_ms, self.max_skew_ms) {
            i.stats.rejected += 1;
            return Verdict::Rejected(e);
        }
        let v = observe(i, t.id, t.price, t.qty, t.ts_ms, &mut self.gaps, false);
        if v == Verdict::Accepted {
            self.accepted_by_market[m] += 1;
            let a = Accepted {
                key: &i.key,
                symbol: &i.sym,
                slot: i.slot,
                id: t.id,
                price: t.price,
                qty: t.qty,
                ts_ms: t.ts_ms,
                buyer_is_maker: t.buyer_is_maker,
                backfill: false,
                gaps_open: i.tracker.has_gaps(),
            };
            for c in &mut self.consumers {
                c.on_trade(&a);
            }
        }
        v
    }

    /// Trades fetched by backfill for `key`; they pass the same validation and dedup. Returns
    /// how many were accepted.
    pub fn on_backfill(&mut self, key: &InstrumentKey, trades: &[Trade], now_ms: i64) -> u64 {
        let m = market_index(key.market());
        let skew = self.max_skew_ms;
        let Some(i) = self.markets[m].get_mut(key.symbol_str()) else {
            return 0;
        };
        if i.phase != Phase::Live {
            return 0;
        }
        let mut n = 0;
        for t in trades {
            if validate_fields(t.price, t.qty, t.ts_ms, now_ms, skew).is_err() {
                i.stats.rejected += 1;
                continue;
            }
            if observe(i, t.trade_id, t.price, t.qty, t.ts_ms, &mut self.gaps, true)
                == Verdict::Accepted
            {
                n += 1;
                let a = Accepted {
                    key: &i.key,
                    symbol: &i.sym,
                    slot: i.slot,
                    id: t.trade_id,
                    price: t.price,
                    qty: t.qty,
                    ts_ms: t.ts_ms,
                    buyer_is_maker: t.buyer_is_maker,
                    backfill: true,
                    gaps_open: i.tracker.has_gaps(),
                };
                for c in &mut self.consumers {
                    c.on_trade(&a);
                }
            }
        }
        self.accepted_by_market[m] += n;
        n
    }

    /// The first and the last id of `key` still missing, while it is live here: what the next
    /// backfill page asks for.
    pub fn missing_span(&self, key: &InstrumentKey) -> Option<(u64, u64)> {
        self.get(key)
            .filter(|i| i.phase == Phase::Live)
            .and_then(|i| i.tracker.missing_span())
    }

    /// Backfill cannot get the ids of `key` up to `id` (the broker no longer has them): stop
    /// waiting for them. Returns how many were abandoned.
    pub fn give_up_through(&mut self, key: &InstrumentKey, id: u64) -> u64 {
        let Some(i) = self.get_mut(key) else {
            return 0;
        };
        let n = i.tracker.give_up_through(id);
        report_abandoned(i);
        n
    }

    /// Takes everything the flush task must write, clearing dirty flags and deltas.
    pub fn take_flush(&mut self) -> FlushBatch {
        let mut entries = std::mem::take(&mut self.released_entries);
        let consumers = &self.consumers;
        for i in self.markets.iter_mut().flat_map(|m| m.values_mut()) {
            if i.fenced {
                i.dirty = false;
                i.unflushed = 0;
                i.unflushed_first = None;
                continue;
            }
            if (i.dirty || i.unflushed > 0) && !consumers.iter().any(|c| c.holds_flush(i.slot)) {
                entries.push(FlushEntry {
                    key: i.key.clone(),
                    latest: i.dirty.then_some(i.latest).flatten(),
                    accepted: i.unflushed,
                    first_id: i.unflushed_first,
                    missing: missing_to_flush(i),
                });
                i.dirty = false;
                i.unflushed = 0;
                i.unflushed_first = None;
            }
        }
        FlushBatch {
            entries,
            released: std::mem::take(&mut self.released),
            gaps: std::mem::take(&mut self.gaps),
            accepted_by_market: std::mem::take(&mut self.accepted_by_market),
        }
    }

    /// Another node is live on `key` (its flush was refused): drops what was not flushed and
    /// flushes nothing more for it until [`Self::sync_slice`] decides. Returns false when
    /// `key` is not in the slice or already fenced.
    pub fn fence(&mut self, key: &InstrumentKey) -> bool {
        let Some(i) = self.get_mut(key) else {
            return false;
        };
        if i.fenced {
            return false;
        }
        i.fenced = true;
        i.dirty = false;
        i.unflushed = 0;
        i.unflushed_first = None;
        true
    }

    pub fn latest(&self, key: &InstrumentKey) -> Option<Latest> {
        self.get(key).and_then(|i| i.latest)
    }

    /// Whether `key` is in this node's slice (live or pending).
    pub fn owns(&self, key: &InstrumentKey) -> bool {
        self.get(key).is_some()
    }

    pub fn is_live(&self, key: &InstrumentKey) -> bool {
        self.get(key).is_some_and(|i| i.phase == Phase::Live)
    }

    /// Per-instrument statistics, in key order.
    pub fn stats(&self) -> Vec<(InstrumentKey, bool, InstrumentStats)> {
        let mut v: Vec<_> = self
            .markets
            .iter()
            .flat_map(|m| m.values())
            .map(|i| {
                let mut s = i.stats.clone();
                s.missing = i.tracker.missing();
                s.abandoned = i.tracker.abandoned();
                (i.key.clone(), i.phase == Phase::Live, s)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn instruments(&self) -> usize {
        self.markets.iter().map(HashMap::len).sum()
    }
}

/// What a flush writes of `i`'s missing ids ([`FlushEntry::missing`]).
fn missing_to_flush(i: &mut Instr) -> Option<Vec<RangeInclusive<u64>>> {
    if i.tracker.has_gaps() {
        i.missing_flushed = true;
        Some(i.tracker.pending_gaps().collect())
    } else if i.missing_flushed {
        i.missing_flushed = false;
        Some(Vec::new())
    } else {
        None
    }
}

/// Counts ids the tracker abandoned since the last call (metric and a warning): trades in them
/// never pass the live path, so alerts and live windows miss them, and that must not be silent.
#[cold]
fn report_abandoned(i: &mut Instr) {
    let now = i.tracker.abandoned();
    if now == i.abandoned_reported {
        return;
    }
    let n = now - i.abandoned_reported;
    // Warn on the first abandonment and then once per 1000 ids, not once per gap.
    if i.abandoned_reported == 0 || now / 1000 != i.abandoned_reported / 1000 {
        tracing::warn!(key = %i.key, ids = n, total = now, missing = i.tracker.missing(),
            "gap ids abandoned: too many gaps open, or the broker no longer has them; reconciliation stores them, but the live path (alerts, live windows) never sees them");
    }
    metrics::counter!("pricefeed_gap_ids_abandoned_total", "market" => i.key.market().as_str())
        .increment(n);
    i.abandoned_reported = now;
}

fn observe(
    i: &mut Instr,
    id: u64,
    price: Decimal,
    qty: Decimal,
    ts_ms: i64,
    gaps: &mut Vec<GapJob>,
    backfill: bool,
) -> Verdict {
    match i.tracker.observe(id) {
        Observed::Duplicate => {
            i.stats.duplicates += 1;
            return Verdict::Duplicate;
        }
        Observed::Stale => {
            i.stats.stale += 1;
            return Verdict::Stale;
        }
        Observed::NewAfterGap { missing } => {
            gaps.push(GapJob {
                key: i.key.clone(),
                ids: missing,
            });
            report_abandoned(i);
        }
        // Splitting a gap may push the list over its cap too.
        Observed::Late => report_abandoned(i),
        Observed::New => {}
    }
    let s = &mut i.stats;
    s.accepted += 1;
    if backfill {
        s.backfilled += 1;
    }
    s.first_id = Some(s.first_id.map_or(id, |f| f.min(id)));
    s.last_id = Some(s.last_id.map_or(id, |l| l.max(id)));
    i.unflushed += 1;
    i.unflushed_first = Some(i.unflushed_first.map_or(id, |f| f.min(id)));
    // Latest by trade id: a late or backfilled trade never replaces a newer price.
    if i.latest.is_none_or(|l| id > l.trade_id) {
        i.latest = Some(Latest {
            price,
            qty,
            trade_id: id,
            ts_ms,
        });
        i.dirty = true;
    }
    Verdict::Accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use pricefeed_domain::instrument::Symbol;

    const NOW: i64 = 1_767_225_600_000;

    fn resume(after: u64) -> Resume {
        Resume {
            after_id: Some(after),
            price: None,
        }
    }

    fn key(s: &str) -> InstrumentKey {
        InstrumentKey::parse(s).unwrap()
    }

    fn tr(symbol: &str, id: u64) -> TradeRef<'_> {
        TradeRef {
            symbol,
            id,
            price: Decimal::new(100 + id as i64, 2),
            qty: Decimal::ONE,
            ts_ms: NOW,
            buyer_is_maker: false,
        }
    }

    fn live_core(keys: &[&str]) -> Core {
        let mut c = Core::new(SeqConfig::default(), 5_000);
        let keys: Vec<_> = keys.iter().map(|k| key(k)).collect();
        c.sync_slice(&keys, 1, |_| true, Instant::now());
        for k in &keys {
            assert!(c.go_live(k, 1, Resume::default()));
        }
        c
    }

    #[test]
    fn same_symbol_on_two_markets_is_two_instruments() {
        let mut c = live_core(&["spot:BTCUSDT", "usdm:BTCUSDT"]);
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("BTCUSDT", 10), NOW),
            Verdict::Accepted
        );
        // Same id on the other market is not a duplicate.
        assert_eq!(
            c.on_ws_trade(Market::Usdm, &tr("BTCUSDT", 10), NOW),
            Verdict::Accepted
        );
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("BTCUSDT", 10), NOW),
            Verdict::Duplicate
        );
        assert_eq!(
            c.on_ws_trade(Market::Options, &tr("BTCUSDT", 10), NOW),
            Verdict::NotOwned
        );
    }

    #[test]
    fn gaps_are_reported_and_backfill_goes_through_dedup() {
        let mut c = live_core(&["spot:ETHUSDT"]);
        let k = key("spot:ETHUSDT");
        c.on_ws_trade(Market::Spot, &tr("ETHUSDT", 1), NOW);
        c.on_ws_trade(Market::Spot, &tr("ETHUSDT", 5), NOW);
        let batch = c.take_flush();
        assert_eq!(
            batch.gaps,
            vec![GapJob {
                key: k.clone(),
                ids: 2..=4
            }]
        );
        assert_eq!(batch.entries[0].latest.unwrap().trade_id, 5);
        assert_eq!(batch.entries[0].accepted, 2);
        let sym = Symbol::parse("ETHUSDT").unwrap();
        let fill: Vec<Trade> = (2..=5)
            .map(|id| Trade {
                symbol: sym.clone(),
                trade_id: id,
                price: Decimal::ONE,
                qty: Decimal::ONE,
                ts_ms: NOW,
                buyer_is_maker: true,
            })
            .collect();
        assert_eq!(c.missing_span(&k), Some((2, 4)));
        assert_eq!(c.on_backfill(&k, &fill, NOW), 3, "5 is a duplicate");
        assert_eq!(c.missing_span(&k), None);
        let (_, _, s) = c.stats().remove(0);
        assert_eq!(
            (s.accepted, s.backfilled, s.duplicates, s.missing),
            (5, 3, 1, 0)
        );
        // Backfilled older trades did not replace the newer latest price.
        assert_eq!(c.latest(&k).unwrap().trade_id, 5);
        let b = c.take_flush();
        assert_eq!(b.entries[0].latest, None, "price unchanged, counts only");
        assert_eq!(b.entries[0].accepted, 3);
    }

    #[test]
    fn handover_pending_then_live_after_the_previous_owners_last_id() {
        let mut c = Core::new(SeqConfig::default(), 5_000);
        let k = key("spot:BNBUSDT");
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        c.sync_slice(std::slice::from_ref(&k), 7, |_| false, deadline);
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("BNBUSDT", 100), NOW),
            Verdict::Pending
        );
        let checks = c.pending_checks(Instant::now());
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].force);
        assert!(c.pending_checks(deadline)[0].force);
        assert!(!c.go_live(&k, 6, resume(100)), "wrong epoch");
        assert!(c.go_live(&k, 7, resume(100)));
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("BNBUSDT", 100), NOW),
            Verdict::Duplicate
        );
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("BNBUSDT", 103), NOW),
            Verdict::Accepted
        );
        let b = c.take_flush();
        assert_eq!(b.gaps[0].ids, 101..=102);
        // Every flush writes what is still missing below the flushed price.
        assert_eq!(b.entries[0].missing, Some(vec![101..=102]));
        // Losing it releases it with a marker at the new epoch; its final flush still says
        // what backfill had not closed yet.
        c.sync_slice(&[], 8, |_| false, deadline);
        let b = c.take_flush();
        assert_eq!(
            b.released,
            vec![Release {
                key: k.clone(),
                epoch: 8,
            }]
        );
        assert_eq!(b.entries[0].missing, Some(vec![101..=102]));
        assert!(!c.owns(&k));

        // The next owner resumes after 103 and still waits for (and backfills) 101..=102.
        let mut next = Core::new(SeqConfig::default(), 5_000);
        next.sync_slice(std::slice::from_ref(&k), 8, |_| false, deadline);
        assert!(next.go_live(&k, 8, resume(103)));
        next.reopen_gaps(&k, b.entries[0].missing.as_deref().unwrap());
        assert_eq!(next.missing_span(&k), Some((101, 102)));
        assert_eq!(next.take_flush().gaps[0].ids, 101..=102);
        for (id, v) in [
            (103, Verdict::Duplicate),
            (100, Verdict::Duplicate),
            (101, Verdict::Accepted),
            (101, Verdict::Duplicate),
            (104, Verdict::Accepted),
        ] {
            assert_eq!(
                next.on_ws_trade(Market::Spot, &tr("BNBUSDT", id), NOW),
                v,
                "{id}"
            );
        }
        assert_eq!(next.missing_span(&k), Some((102, 102)));
        assert_eq!(next.take_flush().entries[0].missing, Some(vec![102..=102]));
        // Once the last gap closes, the next flush clears the written set, then says nothing.
        next.on_ws_trade(Market::Spot, &tr("BNBUSDT", 102), NOW);
        assert_eq!(next.take_flush().entries[0].missing, Some(vec![]));
        next.on_ws_trade(Market::Spot, &tr("BNBUSDT", 105), NOW);
        assert_eq!(next.take_flush().entries[0].missing, None);
    }

    #[test]
    fn a_fenced_instrument_flushes_nothing_until_the_next_assignment_decides() {
        let mut c = live_core(&["spot:BNBUSDT", "spot:ETHUSDT"]);
        let (k, other) = (key("spot:BNBUSDT"), key("spot:ETHUSDT"));
        for id in 1..=3 {
            c.on_ws_trade(Market::Spot, &tr("BNBUSDT", id), NOW);
        }
        c.on_ws_trade(Market::Spot, &tr("ETHUSDT", 1), NOW);
        // Redis refused the flush: someone else went live on it while we were cut off.
        assert!(c.fence(&k));
        assert!(!c.fence(&k), "fencing twice reports once");
        c.on_ws_trade(Market::Spot, &tr("BNBUSDT", 4), NOW);
        let b = c.take_flush();
        assert_eq!(
            b.entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            vec![other.clone()],
            "nothing of the fenced instrument is flushed"
        );
        // The same slice at a newer epoch: pending again, resuming from what the other node
        // stored, like any gained instrument.
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        c.sync_slice(&[k.clone(), other.clone()], 9, |_| false, deadline);
        let checks = c.pending_checks(Instant::now());
        assert_eq!(checks.len(), 1);
        assert_eq!((checks[0].key.clone(), checks[0].epoch), (k.clone(), 9));
        assert!(c.go_live(&k, 9, resume(40)));
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("BNBUSDT", 40), NOW),
            Verdict::Duplicate
        );
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("BNBUSDT", 41), NOW),
            Verdict::Accepted
        );
        assert_eq!(c.take_flush().entries[0].accepted, 1);
        // Fenced and then lost: no release marker (the other node is already live on it).
        assert!(c.fence(&k));
        c.sync_slice(std::slice::from_ref(&other), 10, |_| false, deadline);
        let b = c.take_flush();
        assert!(b.released.is_empty(), "{:?}", b.released);
        assert!(b.entries.is_empty());
        assert!(!c.owns(&k));
    }

    #[test]
    fn invalid_trades_are_rejected_not_accepted() {
        let mut c = live_core(&["spot:XRPUSDT"]);
        let mut t = tr("XRPUSDT", 1);
        t.price = Decimal::ZERO;
        assert!(matches!(
            c.on_ws_trade(Market::Spot, &t, NOW),
            Verdict::Rejected(TradeError::NonPositivePrice(_))
        ));
        let mut t = tr("XRPUSDT", 1);
        t.ts_ms = NOW + 60_000;
        assert!(matches!(
            c.on_ws_trade(Market::Spot, &t, NOW),
            Verdict::Rejected(_)
        ));
        // The id was not consumed by the rejected frames.
        assert_eq!(
            c.on_ws_trade(Market::Spot, &tr("XRPUSDT", 1), NOW),
            Verdict::Accepted
        );
    }
}
