//! In-process cache of the latest price of **every** instrument, so a node that does not own an
//! instrument answers `GET /api/v1/prices/…` (and the listings that embed prices) without a Redis
//! round trip.
//!
//! Fed by the tick channel the owners publish on every flush (`{prefix}:ticks`, one JSON array of
//! [`PriceDoc`]s per flush, see [`crate::ingest::publish`]) over a dedicated pub/sub connection
//! (the same pattern as [`crate::membership`] and [`crate::ingest::orders`]), run as a tracked task
//! stopped by the runtime shutdown.
//!
//! Rules:
//! - An update replaces an entry only when its trade id is higher (per instrument key), so a late
//!   or reordered message never moves a price backwards.
//! - Pub/sub is at-most-once, so the cache is a read-through accelerator, trusted only while the
//!   subscription is up. It starts *unverified* (every lookup reads Redis and stores nothing);
//!   once subscribed it is cleared and marked verified, and a miss reads Redis (`HGET`/`HMGET`)
//!   and stores the result. When the subscription is lost the cache is cleared and unverified
//!   again until the next subscription, so messages lost while disconnected can never leave a
//!   stale entry behind. Every clear bumps a generation; a Redis read started under an older
//!   generation is not stored (it may predate messages lost before the clear).
//! - The node's own ingest state is consulted before the cache (it is fresher); see
//!   [`crate::api::prices::lookup`].
//!
//! Metrics: `pricefeed_price_cache_total{result=hit|miss}` (lookups of instruments this node does
//! not ingest).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use pricefeed_domain::instrument::InstrumentKey;
use tokio_util::sync::CancellationToken;

use crate::ingest::publish::{PriceDoc, ticks_channel};

/// Latest prices of every instrument seen on the tick channel (or read through from Redis).
///
/// Build it after the metrics recorder is installed: it keeps its counter handles.
#[derive(Debug)]
pub struct PriceCache {
    map: RwLock<HashMap<InstrumentKey, PriceDoc>>,
    /// Whether the tick subscription is up (entries may be served).
    verified: AtomicBool,
    /// Bumped on every clear; read-through stores carry the generation they started under.
    generation: AtomicU64,
    hits: Counter,
    misses: Counter,
}

impl Default for PriceCache {
    fn default() -> Self {
        Self::new()
    }
}

impl PriceCache {
    /// An empty, unverified cache.
    pub fn new() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            verified: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            hits: metrics::counter!("pricefeed_price_cache_total", "result" => "hit"),
            misses: metrics::counter!("pricefeed_price_cache_total", "result" => "miss"),
        }
    }

    /// The cached price of `key`, counting a hit or a miss. `None` also while unverified.
    pub fn get(&self, key: &InstrumentKey) -> Option<PriceDoc> {
        let found = if self.verified.load(Ordering::Acquire) {
            self.map.read().unwrap().get(key).cloned()
        } else {
            None
        };
        match found {
            Some(d) => {
                self.hits.increment(1);
                Some(d)
            }
            None => {
                self.misses.increment(1);
                None
            }
        }
    }

    /// The generation to pass to [`Self::store_read`] for a Redis read about to start; `None`
    /// while unverified (the result must not be stored then).
    pub fn read_ticket(&self) -> Option<u64> {
        // Generation first: a clear between the two loads makes the ticket stale, never valid.
        let g = self.generation.load(Ordering::Acquire);
        self.verified.load(Ordering::Acquire).then_some(g)
    }

    /// Stores a price read from Redis under `ticket`, unless the cache was cleared since the read
    /// started or already holds a newer trade.
    pub fn store_read(&self, ticket: Option<u64>, key: &InstrumentKey, doc: &PriceDoc) {
        let Some(ticket) = ticket else { return };
        let mut map = self.map.write().unwrap();
        // Checked under the write lock: clears take it too.
        if self.generation.load(Ordering::Acquire) != ticket {
            return;
        }
        upsert(&mut map, key, doc);
    }

    /// Applies one tick-channel payload (a JSON array of [`PriceDoc`]); returns how many entries
    /// changed, or `None` when the payload is malformed.
    pub fn apply_ticks(&self, payload: &[u8]) -> Option<usize> {
        let docs: Vec<PriceDoc> = serde_json::from_slice(payload).ok()?;
        let mut changed = 0;
        let mut map = self.map.write().unwrap();
        for d in docs {
            let Some(key) = doc_key(&d) else { continue };
            if upsert_owned(&mut map, key, d) {
                changed += 1;
            }
        }
        Some(changed)
    }

    /// The subscription is (re)established: forget everything (messages may have been lost) and
    /// serve from the cache again.
    pub fn subscribed(&self) {
        let mut map = self.map.write().unwrap();
        map.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.store(true, Ordering::Release);
    }

    /// The subscription is gone: forget everything and read Redis until it is back.
    pub fn lost(&self) {
        let mut map = self.map.write().unwrap();
        self.verified.store(false, Ordering::Release);
        map.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn doc_key(d: &PriceDoc) -> Option<InstrumentKey> {
    let market = pricefeed_domain::instrument::Market::parse(&d.market)?;
    let symbol = pricefeed_domain::instrument::Symbol::parse(&d.symbol).ok()?;
    Some(InstrumentKey::new(market, &symbol))
}

/// Replaces the entry of `key` when `doc` carries a higher trade id; returns whether it did.
fn upsert(map: &mut HashMap<InstrumentKey, PriceDoc>, key: &InstrumentKey, doc: &PriceDoc) -> bool {
    match map.get_mut(key) {
        Some(cur) if cur.trade_id >= doc.trade_id => false,
        Some(cur) => {
            *cur = doc.clone();
            true
        }
        None => {
            map.insert(key.clone(), doc.clone());
            true
        }
    }
}

fn upsert_owned(
    map: &mut HashMap<InstrumentKey, PriceDoc>,
    key: InstrumentKey,
    doc: PriceDoc,
) -> bool {
    match map.get_mut(&key) {
        Some(cur) if cur.trade_id >= doc.trade_id => false,
        Some(cur) => {
            *cur = doc;
            true
        }
        None => {
            map.insert(key, doc);
            true
        }
    }
}

/// Subscribes to `{prefix}:ticks` and feeds `cache` until `token` is cancelled; resubscribes
/// (clearing the cache) after a lost subscription.
pub async fn run(
    cache: std::sync::Arc<PriceCache>,
    redis_url: String,
    prefix: String,
    token: CancellationToken,
) {
    let channel = ticks_channel(&prefix);
    let mut listener = TickListener(cache);
    crate::pubsub::listen(
        &redis_url,
        &channel,
        "price ticks",
        Duration::from_secs(1),
        crate::pubsub::Keepalive::default(),
        &token,
        &mut listener,
    )
    .await;
}

/// Feeds the cache from the tick channel.
struct TickListener(std::sync::Arc<PriceCache>);

impl crate::pubsub::Listener for TickListener {
    fn subscribed(&mut self) {
        // Subscribed first, then cleared: every tick after the clear is delivered, and every
        // read-through started after it sees Redis at least that new.
        self.0.subscribed();
    }

    fn message(&mut self, payload: &[u8]) {
        if self.0.apply_ticks(payload).is_none() {
            tracing::warn!("malformed tick message ignored");
        }
    }

    fn lost(&mut self) {
        self.0.lost();
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn doc(symbol: &str, id: u64) -> PriceDoc {
        PriceDoc {
            market: "spot".into(),
            symbol: symbol.into(),
            price: Decimal::new(id as i64, 2),
            qty: Decimal::ONE,
            trade_id: id,
            ts: id as i64,
        }
    }

    fn payload(docs: &[PriceDoc]) -> Vec<u8> {
        serde_json::to_vec(docs).unwrap()
    }

    fn key(s: &str) -> InstrumentKey {
        InstrumentKey::parse(&format!("spot:{s}")).unwrap()
    }

    #[test]
    fn only_a_higher_trade_id_replaces_an_entry() {
        let c = PriceCache::new();
        c.subscribed();
        assert_eq!(c.apply_ticks(&payload(&[doc("BTCUSDT", 10)])), Some(1));
        assert_eq!(c.get(&key("BTCUSDT")).unwrap().trade_id, 10);
        // Older and equal ids are ignored, per key; another key is independent.
        assert_eq!(
            c.apply_ticks(&payload(&[
                doc("BTCUSDT", 9),
                doc("BTCUSDT", 10),
                doc("ETHUSDT", 1)
            ])),
            Some(1)
        );
        assert_eq!(c.get(&key("BTCUSDT")).unwrap().trade_id, 10);
        assert_eq!(c.get(&key("ETHUSDT")).unwrap().trade_id, 1);
        assert_eq!(c.apply_ticks(&payload(&[doc("BTCUSDT", 11)])), Some(1));
        assert_eq!(c.get(&key("BTCUSDT")).unwrap().trade_id, 11);
        // A read-through result older than a tick does not move the price back.
        let t = c.read_ticket();
        c.store_read(t, &key("BTCUSDT"), &doc("BTCUSDT", 5));
        assert_eq!(c.get(&key("BTCUSDT")).unwrap().trade_id, 11);
        // Malformed payloads change nothing.
        assert_eq!(c.apply_ticks(b"not json"), None);
        assert_eq!(c.apply_ticks(br#"[{"market":"spot"}]"#), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn resubscription_clears_and_drops_reads_started_before() {
        let c = PriceCache::new();
        // Unverified: nothing served, nothing stored.
        assert!(c.read_ticket().is_none());
        c.apply_ticks(&payload(&[doc("BTCUSDT", 10)]));
        assert!(c.get(&key("BTCUSDT")).is_none());

        c.subscribed();
        c.apply_ticks(&payload(&[doc("BTCUSDT", 10)]));
        let before = c.read_ticket();
        assert!(before.is_some());
        // Lost and resubscribed: ticks published meanwhile may be lost, so nothing is kept,
        // not even a Redis read that started before the clear.
        c.lost();
        assert!(c.get(&key("BTCUSDT")).is_none());
        assert!(c.read_ticket().is_none());
        c.subscribed();
        assert!(c.is_empty());
        c.store_read(before, &key("ETHUSDT"), &doc("ETHUSDT", 3));
        assert!(c.get(&key("ETHUSDT")).is_none());
        // A read started after the resubscription is stored.
        let after = c.read_ticket();
        c.store_read(after, &key("ETHUSDT"), &doc("ETHUSDT", 4));
        assert_eq!(c.get(&key("ETHUSDT")).unwrap().trade_id, 4);
        // A resubscription alone (without a noticed loss) clears too.
        c.subscribed();
        assert!(c.get(&key("ETHUSDT")).is_none());
    }
}
