//! The trade engine: one generator task that owns time, the latent market (one fair-price path
//! per underlying, [`crate::market`]), the per-symbol order flow and the history rings, and
//! broadcasts every batch of new trades to the WebSocket connections.
//!
//! Why REST always tells the truth: a trade exists only once the generator has appended it to
//! its symbol's ring, and it is appended *before* the batch is broadcast, under the same lock
//! REST reads through. So anything a WS client saw is in the ring (until it ages out), and the
//! ring is never rewritten. Faults act later, per connection, on copies.
//!
//! Determinism: each underlying's latent path is a function of (seed, base asset, grid index)
//! and each symbol has its own ChaCha8 stream seeded from (seed, market, symbol) for its
//! arrivals, sides, quantities and tick noise, so its sequence of prices, quantities, sides, ids
//! and inter-arrival gaps is a function of the seed alone. Wall-clock time only anchors the
//! timestamps (the n-th trade happens at `listing time + sum of the first n gaps`, and the
//! latent grid starts at the listing time), and a generator stall of more than two seconds
//! skips ahead instead of replaying a burst.
//!
//! Every trade is priced from its underlying's latent price at that trade's time
//! ([`crate::market::Pricer`]), rounded to the instrument's tick with a tick or two of
//! microstructure noise (takers buy at the offer, sell at the bid). Arrival rates follow the
//! underlying's volatility regime (busier when wild) and average the configured rates.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::catalogue::{Catalogue, CatalogueParams, Instrument, Kind, ListingChange, Market};
use crate::config::SimConfig;
use crate::faults::{FaultSnapshot, FaultTable};
use crate::market::{Latent, Pricer};

/// Wall clock in ms since the epoch.
pub fn now_ms() -> i64 {
    now_us() / 1000
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One trade as stored in a ring (its id is implicit: ring start + index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub time: i64,
    pub price: Decimal,
    pub qty: Decimal,
    /// Aggregate-trade id: all fills of one taker order share it; ids are contiguous.
    pub agg: i64,
    /// First fill of its aggregate.
    pub agg_start: bool,
    pub buyer_maker: bool,
}

/// A trade as broadcast to connections.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub sym: u32,
    pub id: i64,
    pub rec: Rec,
}

/// Trades generated in one tick, in generation order. The fills of one taker order are always
/// consecutive within a single batch, which is what lets connections build aggTrade events.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
}

/// Bounded per-symbol history with contiguous ids.
#[derive(Debug)]
pub struct Ring {
    /// Id of `buf[0]`, or of the next trade when empty.
    first_id: i64,
    buf: VecDeque<Rec>,
    cap: usize,
}

impl Ring {
    fn new(first_id: i64, cap: usize) -> Self {
        Self {
            first_id,
            buf: VecDeque::new(),
            cap,
        }
    }

    fn push(&mut self, rec: Rec) -> i64 {
        if self.buf.len() == self.cap {
            self.buf.pop_front();
            self.first_id += 1;
        }
        self.buf.push_back(rec);
        self.first_id + self.buf.len() as i64 - 1
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Oldest retained id (or the next id when nothing is retained).
    pub fn oldest_id(&self) -> i64 {
        self.first_id
    }

    /// Id the next trade will get.
    pub fn next_id(&self) -> i64 {
        self.first_id + self.buf.len() as i64
    }

    pub fn last(&self) -> Option<&Rec> {
        self.buf.back()
    }

    pub fn get(&self, idx: usize) -> Option<(i64, &Rec)> {
        self.buf.get(idx).map(|r| (self.first_id + idx as i64, r))
    }

    /// The newest `limit` trades, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<(i64, Rec)> {
        let start = self.buf.len().saturating_sub(limit);
        self.slice(start, self.buf.len())
    }

    /// Up to `limit` trades from `from_id` (inclusive). `Err(oldest)` when `from_id` has aged out.
    pub fn from_id(&self, from_id: i64, limit: usize) -> Result<Vec<(i64, Rec)>, i64> {
        if from_id < self.first_id {
            return Err(self.first_id);
        }
        let start = ((from_id - self.first_id) as usize).min(self.buf.len());
        Ok(self.slice(start, (start + limit).min(self.buf.len())))
    }

    /// All trades with `start <= time <= end`, capped at `limit` (oldest first).
    pub fn time_range(&self, start: i64, end: i64, limit: usize) -> Vec<(i64, Rec)> {
        let lo = self.buf.partition_point(|r| r.time < start);
        let hi = self.buf.partition_point(|r| r.time <= end);
        self.slice(lo, hi.max(lo).min(lo + limit))
    }

    fn slice(&self, lo: usize, hi: usize) -> Vec<(i64, Rec)> {
        (lo..hi)
            .map(|i| (self.first_id + i as i64, self.buf[i]))
            .collect()
    }

    /// Aggregates whose first fill is retained, selected like the REST endpoint does.
    pub fn aggs(&self, q: AggQuery, limit: usize) -> Vec<Agg> {
        let n = self.buf.len();
        // Index range of candidate fills.
        let (lo, hi) = match q {
            AggQuery::Recent => (0, n),
            AggQuery::FromId(a) => (self.buf.partition_point(|r| r.agg < a), n),
            AggQuery::Time { start, end } => (
                start.map_or(0, |s| self.buf.partition_point(|r| r.time < s)),
                end.map_or(n, |e| self.buf.partition_point(|r| r.time <= e)),
            ),
        };
        let mut groups = Vec::new();
        let mut i = lo;
        // A group cut by eviction (or by the query boundary) has no first fill here: skip it.
        while i < hi && !self.buf[i].agg_start {
            i += 1;
        }
        while i < hi {
            let first = &self.buf[i];
            let mut j = i + 1;
            let mut qty = first.qty;
            while j < n && !self.buf[j].agg_start {
                qty += self.buf[j].qty;
                j += 1;
            }
            groups.push(Agg {
                agg_id: first.agg,
                price: first.price,
                qty,
                first_id: self.first_id + i as i64,
                last_id: self.first_id + j as i64 - 1,
                time: first.time,
                buyer_maker: first.buyer_maker,
            });
            i = j;
        }
        let from_end = matches!(q, AggQuery::Recent)
            || matches!(
                q,
                AggQuery::Time {
                    start: None,
                    end: Some(_)
                }
            );
        if from_end && groups.len() > limit {
            groups.drain(..groups.len() - limit);
        } else {
            groups.truncate(limit);
        }
        groups
    }
}

/// Selection of aggregate trades, mirroring `aggTrades` parameters.
#[derive(Debug, Clone, Copy)]
pub enum AggQuery {
    Recent,
    FromId(i64),
    Time {
        start: Option<i64>,
        end: Option<i64>,
    },
}

/// One aggregate trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Agg {
    pub agg_id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    pub first_id: i64,
    pub last_id: i64,
    pub time: i64,
    pub buyer_maker: bool,
}

/// Order flow of one instrument.
#[derive(Debug)]
struct Walk {
    rng: ChaCha8Rng,
    next_agg: i64,
    /// Next taker order, µs since the epoch.
    next_at_us: i64,
    /// Mean gap between taker orders in µs at the average regime; 0 = never trades.
    mean_gap_us: f64,
    pricer: Pricer,
    /// Index of the underlying's latent path.
    latent: u32,
    tick: f64,
    /// Largest price in ticks whose mantissa still fits an i64 at the display scale.
    max_ticks: i64,
}

/// Mutable state behind one lock: catalogue, rings, latent paths, walks, schedule.
#[derive(Debug)]
pub struct World {
    pub cat: Catalogue,
    pub rings: Vec<Ring>,
    /// One per underlying, indexed by `Instrument::underlying_no`.
    latents: Vec<Latent>,
    walks: Vec<Walk>,
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    pub listings: VecDeque<ListingChange>,
}

/// Average fills per taker order (1 with p=0.7, else 2..=4 uniformly): 0.7 + 0.3·3 = 1.6.
const FILLS_PER_ORDER: f64 = 1.6;
const MAX_LISTINGS_KEPT: usize = 10_000;
/// Longest backlog the generator replays after a stall.
const MAX_CATCH_UP_US: i64 = 2_000_000;

/// Shared simulator state.
#[derive(Debug)]
pub struct Engine {
    pub cfg: SimConfig,
    pub world: RwLock<World>,
    tx: broadcast::Sender<Arc<Batch>>,
    /// Bumped on every listing change so connections re-resolve subscribed names.
    pub cat_version: AtomicU64,
    pub faults: FaultTable,
    /// Disconnects every WS client; `true` sends `serverShutdown` first.
    pub kick: broadcast::Sender<bool>,
    pub conn_counter: AtomicU64,
    pub open_conns: AtomicI64,
    pub generated: AtomicU64,
    /// Hot and load-mode symbols: never halted or delisted by the listing schedule.
    protected: Vec<u32>,
}

pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

impl Engine {
    pub fn new(cfg: SimConfig) -> Arc<Self> {
        Self::starting_at(cfg, now_us())
    }

    /// An engine whose world starts at `start_us` (µs since the epoch): two engines with the
    /// same seed and start generate the same trades.
    pub fn starting_at(cfg: SimConfig, start_us: i64) -> Arc<Self> {
        let cat = Catalogue::generate(
            CatalogueParams {
                seed: cfg.seed,
                underlyings: cfg.underlyings,
                quarterlies: cfg.quarterlies,
                option_expiries: cfg.option_expiries,
                option_strikes: cfg.option_strikes,
                initial_halted_ratio: cfg.initial_halted_ratio,
                vol_scale: cfg.vol_scale,
            },
            start_us / 1000,
        );
        let (tx, _) = broadcast::channel(cfg.ws_queue_batches);
        let (kick, _) = broadcast::channel(4);
        let faults = FaultTable::new(FaultSnapshot {
            global: cfg.faults.global,
            symbols: cfg.faults.symbols.clone(),
        });
        let mut world = World {
            cat,
            rings: Vec::new(),
            latents: Vec::new(),
            walks: Vec::new(),
            heap: BinaryHeap::new(),
            listings: VecDeque::new(),
        };
        let mut protected = Vec::new();
        let n = world.cat.instruments.len() as u32;
        add_latents(&cfg, &mut world, 0, start_us);
        for id in 0..n {
            let hot = assign_rate(&cfg, &mut world.cat.instruments[id as usize], true);
            if hot {
                protected.push(id);
            }
            add_walk(&cfg, &mut world, id, start_us);
        }
        Arc::new(Self {
            cfg,
            world: RwLock::new(world),
            tx,
            cat_version: AtomicU64::new(1),
            faults,
            kick,
            conn_counter: AtomicU64::new(0),
            open_conns: AtomicI64::new(0),
            generated: AtomicU64::new(0),
            protected,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.tx.subscribe()
    }

    /// Generates every trade due up to `now_us` and broadcasts them as one batch.
    pub fn tick(&self, now_us: i64) -> usize {
        let batch = {
            let mut w = self.world.write().expect("world lock");
            generate_until(&mut w, now_us)
        };
        let n = batch.events.len();
        if n > 0 {
            self.generated.fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!("sim_trades_generated_total").increment(n as u64);
            // No receivers is fine: trades happen whether anyone listens or not.
            let _ = self.tx.send(Arc::new(batch));
        }
        n
    }

    /// Applies one listing change now; returns what changed.
    pub fn step_listing(&self) -> Vec<ListingChange> {
        let now = now_us();
        let mut w = self.world.write().expect("world lock");
        let before = w.cat.instruments.len() as u32;
        let changes = w.cat.step_listing(now / 1000, &self.protected);
        let after = w.cat.instruments.len() as u32;
        add_latents(&self.cfg, &mut w, before, now);
        for id in before..after {
            assign_rate(&self.cfg, &mut w.cat.instruments[id as usize], false);
            add_walk(&self.cfg, &mut w, id, now);
        }
        for c in &changes {
            if w.listings.len() == MAX_LISTINGS_KEPT {
                w.listings.pop_front();
            }
            w.listings.push_back(c.clone());
            tracing::info!(change = c.change, market = c.market.as_str(), symbol = %c.symbol, status = %c.status, "listing change");
        }
        drop(w);
        if !changes.is_empty() {
            self.cat_version.fetch_add(1, Ordering::AcqRel);
        }
        changes
    }

    /// Runs the generator until `token` is cancelled.
    pub async fn run_generator(self: Arc<Self>, token: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.tick(now_us()); }
                () = token.cancelled() => break,
            }
        }
    }

    /// Runs the listing schedule until `token` is cancelled.
    pub async fn run_listings(self: Arc<Self>, token: tokio_util::sync::CancellationToken) {
        if self.cfg.listing_interval_ms == 0 {
            return;
        }
        let period = Duration::from_millis(self.cfg.listing_interval_ms);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.step_listing(); }
                () = token.cancelled() => break,
            }
        }
    }

    /// Looks up an instrument by market and symbol (any case) and copies it out.
    pub fn instrument(&self, market: Market, symbol: &str) -> Option<Instrument> {
        let w = self.world.read().expect("world lock");
        w.cat.lookup_any_case(market, symbol).cloned()
    }
}

/// Sets `rate_per_sec`/`hot` from the config; returns whether the symbol is hot.
fn assign_rate(cfg: &SimConfig, inst: &mut Instrument, initial: bool) -> bool {
    let mut rate = cfg.tail_rate_per_min / 60.0;
    let mut hot = false;
    if initial {
        let n = inst.underlying_no;
        let spot_or_perp = matches!(
            inst.kind,
            crate::catalogue::Kind::Spot | crate::catalogue::Kind::Perpetual
        );
        if cfg.load_mode && inst.market == Market::Spot && n < cfg.load_symbols {
            rate = cfg.load_rate / f64::from(cfg.load_symbols);
            hot = true;
        } else if spot_or_perp && n < cfg.hot_symbols {
            rate = cfg.hot_rate_per_sec;
            hot = true;
        }
    }
    // Env overrides arrive lower-cased (figment), so match symbol keys case-insensitively.
    if let Some(r) = cfg
        .rates
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(&inst.symbol))
        .map(|(_, r)| r)
    {
        rate = *r;
        hot = hot || *r >= 1.0;
    }
    inst.rate_per_sec = rate;
    inst.hot = hot;
    hot
}

/// Starts the latent path of every underlying whose spot pair is among the instruments from
/// `from` on (underlyings are listed in order, spot pair first), at that pair's listing price.
fn add_latents(cfg: &SimConfig, w: &mut World, from: u32, anchor_us: i64) {
    for inst in &w.cat.instruments[from as usize..] {
        if inst.kind == Kind::Spot && inst.underlying_no as usize == w.latents.len() {
            let price = inst.price(inst.start_ticks).to_f64().unwrap_or(1.0);
            w.latents.push(Latent::new(
                cfg.seed, &inst.base, price, inst.vol, anchor_us,
            ));
        }
    }
}

/// A unit-interval number from (seed, what, base): per-underlying constants shared by all its
/// instruments, independent of every other random stream.
fn unit(seed: u64, what: &str, base: &str) -> f64 {
    let h = fnv1a(&[&seed.to_le_bytes(), what.as_bytes(), base.as_bytes()]);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn pricer(seed: u64, inst: &Instrument) -> Pricer {
    let expiry_us = inst.expiry.saturating_mul(1000);
    // Perpetuals trade 1–5 bp over spot; delivery futures carry 4–12 %/yr until delivery.
    let basis = 0.0001 + 0.0004 * unit(seed, "basis", &inst.base);
    let carry = 0.04 + 0.08 * unit(seed, "carry", &inst.base);
    match &inst.kind {
        Kind::Spot => Pricer::Linear {
            basis: 0.0,
            carry: 0.0,
            expiry_us,
        },
        Kind::Perpetual => Pricer::Linear {
            basis,
            carry: 0.0,
            expiry_us,
        },
        Kind::Delivery { .. } => Pricer::Linear {
            basis,
            carry,
            expiry_us,
        },
        Kind::Option { call, strike } => Pricer::Option {
            call: *call,
            strike: strike.to_f64().unwrap_or(1.0),
            expiry_us,
            vol: inst.vol,
        },
    }
}

fn add_walk(cfg: &SimConfig, w: &mut World, id: u32, start_us: i64) {
    let inst = &w.cat.instruments[id as usize];
    let seed = fnv1a(&[
        &cfg.seed.to_le_bytes(),
        inst.market.as_str().as_bytes(),
        inst.symbol.as_bytes(),
    ]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Ids start at a symbol-specific offset, like a real exchange years into trading.
    let clock = if cfg.ids_follow_clock {
        id_clock_offset(start_us)
    } else {
        0
    };
    let first_id = clock + rng.random_range(1_000..5_000_000i64);
    let first_agg = clock + rng.random_range(1_000..3_000_000i64);
    let depth = if inst.hot {
        cfg.history_depth_hot
    } else {
        cfg.history_depth_tail
    };
    let mean_gap_us = if inst.rate_per_sec > 0.0 {
        FILLS_PER_ORDER * 1e6 / inst.rate_per_sec
    } else {
        0.0
    };
    let tick = inst.tick.to_f64().unwrap_or(1.0);
    let mut walk = Walk {
        rng,
        next_agg: first_agg,
        next_at_us: start_us,
        mean_gap_us,
        pricer: pricer(cfg.seed, inst),
        latent: inst.underlying_no,
        tick,
        max_ticks: (i64::MAX / inst.tick_units.max(1)) / 4,
    };
    if mean_gap_us > 0.0 {
        let (_, rate) = w.latents[walk.latent as usize].at(start_us);
        walk.next_at_us = start_us + gap(&mut walk, rate);
        w.heap.push(Reverse((walk.next_at_us, id)));
    }
    w.rings.push(Ring::new(first_id, depth));
    w.walks.push(walk);
}

/// 1 000 ids per whole second since 2025-01-01 UTC: a restart lands above the ids of any
/// earlier run of a symbol that averaged fewer than 1 000 trades/s (the seed-derived part of the
/// offset is below 5 M, i.e. under 84 minutes of this clock).
fn id_clock_offset(start_us: i64) -> i64 {
    const EPOCH_2025_US: i64 = 1_735_689_600_000_000;
    ((start_us - EPOCH_2025_US).max(0) / 1_000_000) * 1_000
}

/// Gap to the next taker order at the regime's rate multiplier `rate` (taken at the current
/// order; the regime's half-life of half an hour is far longer than any gap that matters).
fn gap(w: &mut Walk, rate: f64) -> i64 {
    // Exponential gaps (a Poisson process); f64 is fine here, it only shapes timing.
    let u: f64 = w.rng.random::<f64>();
    ((-(1.0 - u).ln()) * w.mean_gap_us / rate).max(1.0) as i64
}

fn generate_until(w: &mut World, now_us: i64) -> Batch {
    let mut batch = Batch::default();
    while let Some(&Reverse((at, id))) = w.heap.peek() {
        if at > now_us {
            break;
        }
        w.heap.pop();
        let World {
            cat,
            rings,
            walks,
            latents,
            ..
        } = w;
        let inst = &cat.instruments[id as usize];
        let walk = &mut walks[id as usize];
        let ring = &mut rings[id as usize];
        let latent = &mut latents[walk.latent as usize];
        if now_us - walk.next_at_us > MAX_CATCH_UP_US {
            walk.next_at_us = now_us;
        }
        let trading = inst.is_trading();
        while walk.next_at_us <= now_us {
            let (s, rate) = latent.at(walk.next_at_us);
            if trading {
                one_order(inst, walk, ring, id, s, rate, &mut batch);
            }
            walk.next_at_us += gap(walk, rate);
        }
        if !inst.removed {
            w.heap.push(Reverse((walk.next_at_us, id)));
        }
    }
    batch
}

/// One taker order at the underlying's fair price `s`: 1–4 fills at one price (one aggTrade).
#[allow(clippy::too_many_arguments)]
fn one_order(
    inst: &Instrument,
    walk: &mut Walk,
    ring: &mut Ring,
    id: u32,
    s: f64,
    rate: f64,
    batch: &mut Batch,
) {
    let fair = walk.pricer.fair(s, walk.next_at_us);
    let rng = &mut walk.rng;
    let fills = if rng.random::<f64>() < 0.7 {
        1
    } else {
        rng.random_range(2..=4)
    };
    let buyer_maker = rng.random::<bool>();
    // A taker buy lifts the offer, a taker sell hits the bid, plus a tick of jitter: prints
    // bounce around the fair price the way real ones do around the mid.
    let side = if buyer_maker { -1 } else { 1 };
    let noise = side * rng.random_range(0..=1i64) + rng.random_range(-1..=1i64);
    let ticks = ((fair / walk.tick).round() as i64)
        .saturating_add(noise)
        .clamp(1, walk.max_ticks);
    let time = walk.next_at_us / 1000;
    let price = inst.price(ticks);
    let agg = walk.next_agg;
    walk.next_agg += 1;
    // Wild periods also trade somewhat larger orders.
    let max_steps = ((inst.typical_steps * 2) as f64 * rate.sqrt())
        .round()
        .max(1.0) as i64;
    for f in 0..fills {
        let steps = rng.random_range(1..=max_steps);
        let rec = Rec {
            time,
            price,
            qty: inst.qty(steps),
            agg,
            agg_start: f == 0,
            buyer_maker,
        };
        let tid = ring.push(rec);
        batch.events.push(Event {
            sym: id,
            id: tid,
            rec,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig {
            underlyings: 3,
            hot_symbols: 1,
            hot_rate_per_sec: 1000.0,
            ..SimConfig::default()
        }
    }

    #[test]
    fn same_seed_same_trades() {
        // Replays: ids from the seed alone (with the clock, two engines built across a second
        // boundary would differ by 1 000).
        let replay = || SimConfig {
            ids_follow_clock: false,
            ..cfg()
        };
        // One start for both: arrival times count from it, so engines started a few µs apart
        // would disagree about the trades right at a tick's edge.
        let start = now_us();
        let a = Engine::starting_at(replay(), start);
        let b = Engine::starting_at(replay(), start);
        let t0 = start + 1_000_000;
        for k in 0..5 {
            a.tick(t0 + k * 100_000);
            b.tick(t0 + k * 100_000);
        }
        let wa = a.world.read().unwrap();
        let wb = b.world.read().unwrap();
        let ra = wa.rings[0].recent(10_000);
        let rb = wb.rings[0].recent(10_000);
        assert!(ra.len() > 100, "{}", ra.len());
        let strip = |v: &[(i64, Rec)]| {
            v.iter()
                .map(|(i, r)| (*i, r.price, r.qty, r.agg))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&ra), strip(&rb));
        // contiguous ids, non-decreasing time, prices on the tick grid
        let inst = &wa.cat.instruments[0];
        for w in ra.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1);
            assert!(w[1].1.time >= w[0].1.time);
        }
        for (_, r) in &ra {
            assert_eq!((r.price % inst.tick), Decimal::ZERO);
            assert_eq!((r.qty % inst.step), Decimal::ZERO);
            assert_eq!(r.price.scale(), 8);
        }
    }

    /// An hour of trading, simulated in one-second ticks; returns the engine and untouched
    /// copies of its latent paths as they were before the first trade.
    fn simulated_hour() -> (Arc<Engine>, Vec<Latent>) {
        let e = Engine::new(SimConfig {
            ids_follow_clock: false,
            underlyings: 3,
            hot_symbols: 1,
            hot_rate_per_sec: 20.0,
            tail_rate_per_min: 30.0,
            history_depth_hot: 200_000,
            history_depth_tail: 10_000,
            ..SimConfig::default()
        });
        // Unqueried copies of the paths, to recompute fair prices independently afterwards.
        let shadows = e.world.read().unwrap().latents.clone();
        let t0 = now_us();
        for s in 1..=3_600 {
            e.tick(t0 + s * 1_000_000);
        }
        (e, shadows)
    }

    fn symbol(w: &World, market: Market, sym: &str) -> u32 {
        w.cat.lookup(market, sym).unwrap().id
    }

    fn f(d: Decimal) -> f64 {
        d.to_f64().unwrap()
    }

    /// Last price of each second (seconds without a trade repeat the previous close).
    fn closes(ring: &Ring, step_ms: i64) -> Vec<f64> {
        let v = ring.recent(ring.len());
        let t0 = v[0].1.time;
        let mut out: Vec<f64> = Vec::new();
        let mut last = f(v[0].1.price);
        let mut bucket = 0;
        for (_, r) in &v {
            let b = (r.time - t0) / step_ms;
            while bucket < b {
                out.push(last);
                bucket += 1;
            }
            last = f(r.price);
        }
        out.push(last);
        out
    }

    fn ann_vol(closes: &[f64], step_s: f64) -> f64 {
        let r: Vec<f64> = closes.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
        let n = r.len() as f64;
        let m = r.iter().sum::<f64>() / n;
        let var = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
        (var * crate::market::SECS_PER_YEAR / step_s).sqrt()
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn an_hour_of_trading_looks_like_a_market() {
        let (e, shadows) = simulated_hour();
        let w = e.world.read().unwrap();
        let btc = symbol(&w, Market::Spot, "BTCUSDT");
        let spot = &w.rings[btc as usize];
        assert!(spot.len() > 50_000, "{}", spot.len());

        // Realised vol of 1-s log returns near BTC's 50 % (the regime spans 0.4×..3×).
        let c = closes(spot, 1_000);
        let vol = ann_vol(&c, 1.0);
        assert!(
            (0.5 * 0.3..0.5 * 3.5).contains(&vol),
            "BTC realised vol {vol}"
        );
        // It moved like a market, not like a pinned walk: more than ten ticks' worth, yet sane.
        let (lo, hi) = c
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        assert!(hi - lo > 20.0 && hi / lo < 1.2, "range {lo}..{hi}");

        // The perpetual stays within a few basis points of spot at the same moment.
        let perp = &w.rings[symbol(&w, Market::Futures, "BTCUSDT") as usize];
        let sv = spot.recent(spot.len());
        let mut j = 0;
        let mut checked = 0;
        for (_, r) in perp.recent(perp.len()) {
            while j + 1 < sv.len() && sv[j + 1].1.time <= r.time {
                j += 1;
            }
            if (r.time - sv[j].1.time).abs() <= 100 {
                let rel = f(r.price) / f(sv[j].1.price) - 1.0;
                assert!(
                    (-0.0005..0.0015).contains(&rel),
                    "perp/spot {rel} at {}",
                    r.time
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");

        // Every print of every instrument is positive, on its grids, and within three ticks of
        // the fair price recomputed from an untouched copy of the underlying's path (anywhere in
        // the trade's millisecond: the stored time is truncated to ms).
        for inst in &w.cat.instruments {
            let ring = &w.rings[inst.id as usize];
            let walk = &w.walks[inst.id as usize];
            let mut shadow = shadows[inst.underlying_no as usize].clone();
            assert!(!ring.is_empty(), "{} never traded", inst.symbol);
            for (_, r) in ring.recent(ring.len()) {
                assert!(r.price > Decimal::ZERO, "{}", inst.symbol);
                assert_eq!(r.price % inst.tick, Decimal::ZERO, "{}", inst.symbol);
                assert_eq!(r.qty % inst.step, Decimal::ZERO, "{}", inst.symbol);
                let mut fair = |t_us: i64| {
                    (walk.pricer.fair(shadow.at(t_us).0, t_us) / walk.tick)
                        .round()
                        .max(1.0)
                };
                let (a, b) = (fair(r.time * 1000), fair(r.time * 1000 + 999));
                let ticks = f(r.price / inst.tick);
                assert!(
                    ticks >= a.min(b) - 3.0 && ticks <= a.max(b) + 3.0,
                    "{} at {}: {ticks} ticks, fair {a}..{b}",
                    inst.symbol,
                    r.time
                );
            }
        }

        // Options follow their underlying: calls with it, puts against it.
        for (sym, sign) in [("C", 1.0), ("P", -1.0)] {
            let opt = w
                .cat
                .listed(Market::Options)
                .find(|i| i.pair == "BTCUSDT" && i.symbol.ends_with(sym))
                .unwrap();
            let mut shadow = shadows[0].clone();
            let (mut s, mut p) = (Vec::new(), Vec::new());
            for (_, r) in w.rings[opt.id as usize].recent(10_000) {
                s.push(shadow.at(r.time * 1000).0);
                p.push(f(r.price));
            }
            let rho = correlation(&s, &p) * sign;
            assert!(rho > 0.8, "{} price vs BTC: correlation {rho}", opt.symbol);
        }
    }

    #[test]
    fn busy_when_wild() {
        let (e, _) = simulated_hour();
        let w = e.world.read().unwrap();
        let spot = &w.rings[symbol(&w, Market::Spot, "BTCUSDT") as usize];
        let v = spot.recent(spot.len());
        let t0 = v[0].1.time;
        // Per 5-minute window: trade count and realised vol of 1-s closes.
        let c = closes(spot, 1_000);
        let (mut counts, mut vols) = (Vec::new(), Vec::new());
        for k in 0..12 {
            let (a, b) = (t0 + k * 300_000, t0 + (k + 1) * 300_000);
            counts.push(v.iter().filter(|(_, r)| r.time >= a && r.time < b).count() as f64);
            vols.push(ann_vol(
                &c[(k * 300) as usize..((k + 1) * 300) as usize],
                1.0,
            ));
        }
        let rho = correlation(&counts, &vols);
        assert!(
            rho > 0.5,
            "counts {counts:?} vols {vols:?}: correlation {rho}"
        );
        // Still about the configured 20 trades/s × 1.6 fills on average.
        let per_s = v.len() as f64 / 3_600.0;
        assert!((20.0 * 0.35..20.0 * 3.0).contains(&per_s), "{per_s}");
    }

    #[test]
    fn ids_follow_the_clock_so_a_restart_never_reissues_an_id() {
        let t = 1_795_600_000_123_456; // 2026-11-25, mid-second
        assert_eq!(id_clock_offset(t + 1_000_000) - id_clock_offset(t), 1_000);
        assert_eq!(id_clock_offset(0), 0);
        // Same seed, so the seed-derived part is equal in both runs: a restart after a run of an
        // hour at 999 trades/s starts above that run's last id.
        assert!(id_clock_offset(t + 3_600 * 1_000_000) - id_clock_offset(t) > 999 * 3_600);
        // Through the engine: the clock part is the only difference to a seed-only engine.
        let first = |e: &Engine| e.world.read().unwrap().rings[0].next_id();
        let seeded = Engine::new(SimConfig {
            ids_follow_clock: false,
            ..cfg()
        });
        let before = id_clock_offset(now_us());
        let clocked = Engine::new(cfg());
        let after = id_clock_offset(now_us());
        let d = first(&clocked) - first(&seeded);
        assert!(
            (before..=after).contains(&d),
            "{d} not in {before}..={after}"
        );
    }

    #[test]
    fn ring_queries() {
        let mut r = Ring::new(100, 5);
        for k in 0..8i64 {
            r.push(Rec {
                time: 1000 + k,
                price: Decimal::ONE,
                qty: Decimal::ONE,
                agg: 10 + k / 2,
                agg_start: k % 2 == 0,
                buyer_maker: false,
            });
        }
        assert_eq!(r.oldest_id(), 103);
        assert_eq!(r.next_id(), 108);
        assert_eq!(r.from_id(102, 10), Err(103));
        assert_eq!(
            r.from_id(105, 2)
                .unwrap()
                .iter()
                .map(|x| x.0)
                .collect::<Vec<_>>(),
            vec![105, 106]
        );
        assert!(r.from_id(200, 2).unwrap().is_empty());
        // 103 is the second fill of agg 11 whose first fill was evicted: skipped.
        let aggs = r.aggs(AggQuery::Recent, 10);
        assert_eq!(
            aggs.iter().map(|a| a.agg_id).collect::<Vec<_>>(),
            vec![12, 13]
        );
        assert_eq!(aggs[0].first_id, 104);
        assert_eq!(aggs[0].last_id, 105);
        assert_eq!(aggs[0].qty, Decimal::TWO);
        assert_eq!(r.aggs(AggQuery::Recent, 1)[0].agg_id, 13);
        assert_eq!(r.aggs(AggQuery::FromId(13), 10).len(), 1);
        let t = r.aggs(
            AggQuery::Time {
                start: Some(1004),
                end: Some(1005),
            },
            10,
        );
        assert_eq!(t.len(), 1);
        assert_eq!(r.time_range(1004, 1006, 10).len(), 3);
    }
}
