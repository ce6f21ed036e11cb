//! In-process caches of the live values of **every** instrument — latest prices and latest
//! VWAPs — so a node that does not own an instrument answers without a Redis round trip.
//!
//! One generic [`LiveCache`], fed by the channel the owners publish on every flush
//! (`{p}:ticks` for [`PriceDoc`], `{p}:vwap:ticks` for [`VwapDoc`]; one JSON array per message,
//! see [`pricefeed_store::protocol`]) over a dedicated pub/sub connection, run as a tracked task
//! stopped by the runtime shutdown.
//!
//! Rules:
//! - An update replaces an entry only when it is newer ([`CachedDoc::newer_than`]: a higher trade
//!   id for a price, a later window for a VWAP), so a late or reordered message never moves a
//!   value backwards.
//! - Pub/sub is at-most-once, so the cache is a read-through accelerator, trusted only while the
//!   subscription is up. It starts *unverified* (every lookup reads Redis and stores nothing);
//!   once subscribed it is cleared and marked verified, and a miss reads Redis and stores the
//!   result. When the subscription is lost the cache is cleared and unverified again until the
//!   next subscription, so messages lost while disconnected can never leave a stale entry
//!   behind. Every clear bumps a generation; a Redis read started under an older generation is
//!   not stored (it may predate messages lost before the clear).
//! - The node's own ingest state is consulted before the price cache (it is fresher); see
//!   [`crate::api::prices::lookup`].
//! - A Redis outage costs freshness, not answers: reads behind a miss go through
//!   [`LiveCache::read`] (bounded by [`READ_TIMEOUT`], skipped for [`READ_BACKOFF`] after a
//!   failure, so requests do not each wait on a dead Redis), and when it fails the caller serves
//!   [`LiveCache::last_known`]: the newest value this node has seen, kept across clears, whose
//!   age the response shows.
//!
//! - A notification hook ([`LiveCache::set_hook`]) receives every document that changed an
//!   entry, after the write lock is released: the client WebSocket hub fans updates out from
//!   this one subscription instead of one Redis subscription per client. The hook must not
//!   wait (the hub's is a `try_send`).
//!
//! Metrics: `pricefeed_live_cache_total{cache=price|vwap, result=hit|miss}`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use metrics::Counter;
use pricefeed_store::protocol::{PriceDoc, VwapDoc, doc_key, vwap_field};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// A document a [`LiveCache`] holds.
pub trait CachedDoc: Clone + DeserializeOwned + Send + Sync + 'static {
    /// Its field in the Redis hash (and key in the cache); `None` for a malformed document.
    fn field(&self) -> Option<String>;
    /// Whether `self` should replace `cur`.
    fn newer_than(&self, cur: &Self) -> bool;
}

impl CachedDoc for PriceDoc {
    fn field(&self) -> Option<String> {
        doc_key(&self.market, &self.symbol).map(|k| k.as_str().to_string())
    }
    fn newer_than(&self, cur: &Self) -> bool {
        self.trade_id > cur.trade_id
    }
}

impl CachedDoc for VwapDoc {
    fn field(&self) -> Option<String> {
        doc_key(&self.market, &self.symbol).map(|k| vwap_field(&k, &self.interval))
    }
    fn newer_than(&self, cur: &Self) -> bool {
        // Same window again means a later publication of it (a late trade, a confirmation).
        self.window_end >= cur.window_end
    }
}

/// Latest prices of every instrument.
pub type PriceCache = LiveCache<PriceDoc>;
/// Latest VWAPs of every instrument and interval.
pub type VwapCache = LiveCache<VwapDoc>;

/// Live values keyed by their Redis hash field (see the module docs).
///
/// Build it after the metrics recorder is installed: it keeps its counter handles.
pub struct LiveCache<D> {
    map: RwLock<HashMap<String, D>>,
    /// Entries set aside by clears: the newest value seen of each field, served only when Redis
    /// cannot be read ([`Self::last_known`]).
    retired: RwLock<HashMap<String, D>>,
    /// Process-relative ms of the last failed Redis read (`i64::MIN`: none).
    failed_at: AtomicI64,
    /// Whether the subscription is up (entries may be served).
    verified: AtomicBool,
    /// Bumped on every clear; read-through stores carry the generation they started under.
    generation: AtomicU64,
    hits: Counter,
    misses: Counter,
    /// Called with the documents that changed entries (see the module docs).
    hook: OnceLock<Hook<D>>,
}

impl<D> std::fmt::Debug for LiveCache<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCache")
            .field("verified", &self.verified)
            .field("generation", &self.generation)
            .field("hooked", &self.hook.get().is_some())
            .finish_non_exhaustive()
    }
}

/// A [`LiveCache`] notification hook.
pub type Hook<D> = Box<dyn Fn(Vec<D>) + Send + Sync>;

/// Longest wait for a Redis read behind a cache miss.
pub const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed read, reads are not tried again for this long: every request would otherwise
/// wait [`READ_TIMEOUT`] on a Redis that is down.
pub const READ_BACKOFF: Duration = Duration::from_millis(1_000);

/// Why a read behind a miss gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {} ms", READ_TIMEOUT.as_millis())]
    Timeout,
    #[error("redis failed less than {} ms ago; not tried again yet", READ_BACKOFF.as_millis())]
    Backoff,
}

/// Milliseconds since the first call (monotonic; for the read backoff).
fn mono_ms() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as i64
}

impl<D: CachedDoc> LiveCache<D> {
    /// An empty, unverified cache; `name` labels its metrics (`price`, `vwap`).
    pub fn new(name: &'static str) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            retired: RwLock::new(HashMap::new()),
            failed_at: AtomicI64::new(i64::MIN),
            verified: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            hits: metrics::counter!("pricefeed_live_cache_total", "cache" => name, "result" => "hit"),
            misses: metrics::counter!("pricefeed_live_cache_total", "cache" => name, "result" => "miss"),
            hook: OnceLock::new(),
        }
    }

    /// Installs the notification hook (once; a second call is ignored). It runs on the
    /// subscription's task for every message that changed something, so it must not wait.
    pub fn set_hook(&self, hook: impl Fn(Vec<D>) + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }

    /// The cached value of `field`, counting a hit or a miss. `None` also while unverified.
    pub fn get(&self, field: &str) -> Option<D> {
        let found = if self.verified.load(Ordering::Acquire) {
            self.map.read().unwrap().get(field).cloned()
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

    /// Stores a value read from Redis under `ticket`, unless the cache was cleared since the
    /// read started or already holds a newer value.
    pub fn store_read(&self, ticket: Option<u64>, doc: &D) {
        let Some(ticket) = ticket else { return };
        let Some(field) = doc.field() else { return };
        let mut map = self.map.write().unwrap();
        // Checked under the write lock: clears take it too.
        if self.generation.load(Ordering::Acquire) != ticket {
            return;
        }
        upsert(&mut map, field, doc.clone());
    }

    /// Applies one channel payload (a JSON array of documents); returns how many entries
    /// changed, or `None` when the payload is malformed.
    pub fn apply(&self, payload: &[u8]) -> Option<usize> {
        let docs: Vec<D> = serde_json::from_slice(payload).ok()?;
        let hook = self.hook.get();
        let mut changed = 0;
        let mut notify = Vec::new();
        {
            let mut map = self.map.write().unwrap();
            for d in docs {
                let Some(field) = d.field() else { continue };
                // Copied only when someone listens; cheaper than a second lookup afterwards.
                let copy = hook.map(|_| d.clone());
                if upsert(&mut map, field, d) {
                    changed += 1;
                    notify.extend(copy);
                }
            }
        }
        if let Some(h) = hook
            && !notify.is_empty()
        {
            h(notify);
        }
        Some(changed)
    }

    /// The subscription is (re)established: forget everything (messages may have been lost) and
    /// serve from the cache again.
    pub fn subscribed(&self) {
        let mut map = self.map.write().unwrap();
        self.retire(&mut map);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.store(true, Ordering::Release);
    }

    /// The subscription is gone: forget everything and read Redis until it is back.
    pub fn lost(&self) {
        let mut map = self.map.write().unwrap();
        self.verified.store(false, Ordering::Release);
        self.retire(&mut map);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Empties `map` into the retired entries (keeping the newer of each field).
    fn retire(&self, map: &mut HashMap<String, D>) {
        let mut retired = self.retired.write().unwrap();
        for (field, doc) in map.drain() {
            upsert(&mut retired, field, doc);
        }
    }

    /// The newest value of `field` this node has seen, whether or not the cache may serve it
    /// now: the fallback when Redis cannot be read. The caller shows its age.
    pub fn last_known(&self, field: &str) -> Option<D> {
        let live = self.map.read().unwrap().get(field).cloned();
        let old = self.retired.read().unwrap().get(field).cloned();
        match (live, old) {
            (Some(l), Some(o)) => Some(if o.newer_than(&l) { o } else { l }),
            (l, o) => l.or(o),
        }
    }

    /// Runs one Redis read behind a miss: bounded by [`READ_TIMEOUT`], and not attempted at all
    /// within [`READ_BACKOFF`] of a failed one.
    pub async fn read<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ReadError> {
        let failed = self.failed_at.load(Ordering::Relaxed);
        if failed != i64::MIN && mono_ms() - failed < READ_BACKOFF.as_millis() as i64 {
            return Err(ReadError::Backoff);
        }
        let r = match tokio::time::timeout(READ_TIMEOUT, fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => ReadError::Redis(e),
            Err(_) => ReadError::Timeout,
        };
        self.failed_at.store(mono_ms(), Ordering::Relaxed);
        Err(r)
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

/// Replaces the entry of `field` when `doc` is newer; returns whether it did.
fn upsert<D: CachedDoc>(map: &mut HashMap<String, D>, field: String, doc: D) -> bool {
    match map.get_mut(&field) {
        Some(cur) if !doc.newer_than(cur) => false,
        Some(cur) => {
            *cur = doc;
            true
        }
        None => {
            map.insert(field, doc);
            true
        }
    }
}

/// Subscribes to `channel` and feeds `cache` until `token` is cancelled; resubscribes
/// (clearing the cache) after a lost subscription.
pub async fn run<D: CachedDoc>(
    cache: std::sync::Arc<LiveCache<D>>,
    redis_endpoint: pricefeed_store::redis_conn::RedisEndpoint,
    channel: String,
    what: &'static str,
    token: CancellationToken,
) {
    let mut listener = Feed(cache, what);
    crate::pubsub::listen(
        &redis_endpoint,
        &channel,
        what,
        Duration::from_secs(1),
        crate::pubsub::Keepalive::default(),
        &token,
        &mut listener,
    )
    .await;
}

/// Feeds a cache from its channel.
struct Feed<D>(std::sync::Arc<LiveCache<D>>, &'static str);

impl<D: CachedDoc> crate::pubsub::Listener for Feed<D> {
    fn subscribed(&mut self) {
        // Subscribed first, then cleared: every message after the clear is delivered, and every
        // read-through started after it sees Redis at least that new.
        self.0.subscribed();
    }

    fn message(&mut self, payload: &[u8]) {
        if self.0.apply(payload).is_none() {
            tracing::warn!(channel = self.1, "malformed live-value message ignored");
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

    fn payload<T: serde::Serialize>(docs: &[T]) -> Vec<u8> {
        serde_json::to_vec(docs).unwrap()
    }

    #[test]
    fn only_a_newer_value_replaces_an_entry() {
        let c = PriceCache::new("price");
        c.subscribed();
        assert_eq!(c.apply(&payload(&[doc("BTCUSDT", 10)])), Some(1));
        assert_eq!(c.get("spot:BTCUSDT").unwrap().trade_id, 10);
        // Older and equal ids are ignored, per key; another key is independent.
        assert_eq!(
            c.apply(&payload(&[
                doc("BTCUSDT", 9),
                doc("BTCUSDT", 10),
                doc("ETHUSDT", 1)
            ])),
            Some(1)
        );
        assert_eq!(c.get("spot:BTCUSDT").unwrap().trade_id, 10);
        assert_eq!(c.get("spot:ETHUSDT").unwrap().trade_id, 1);
        assert_eq!(c.apply(&payload(&[doc("BTCUSDT", 11)])), Some(1));
        assert_eq!(c.get("spot:BTCUSDT").unwrap().trade_id, 11);
        // A read-through result older than a tick does not move the price back.
        let t = c.read_ticket();
        c.store_read(t, &doc("BTCUSDT", 5));
        assert_eq!(c.get("spot:BTCUSDT").unwrap().trade_id, 11);
        // Malformed payloads change nothing.
        assert_eq!(c.apply(b"not json"), None);
        assert_eq!(c.apply(br#"[{"market":"spot"}]"#), None);
        assert_eq!(c.len(), 2);

        // VWAPs are keyed per interval and ordered by window.
        let v = VwapCache::new("vwap");
        v.subscribed();
        let w = |iv: &str, end: i64, n: u64| VwapDoc {
            market: "usdm".into(),
            symbol: "BTCUSDT".into(),
            interval: iv.into(),
            vwap: None,
            volume: Decimal::ZERO,
            quote_volume: Decimal::ZERO,
            trade_count: n,
            window_start: end - 60_000,
            window_end: end,
            validated: false,
        };
        v.apply(&payload(&[w("1m", 2_000, 1), w("5m", 2_000, 2)]));
        v.apply(&payload(&[w("1m", 1_000, 9)]));
        assert_eq!(v.get("usdm:BTCUSDT:1m").unwrap().trade_count, 1);
        v.apply(&payload(&[w("1m", 2_000, 3)]));
        assert_eq!(v.get("usdm:BTCUSDT:1m").unwrap().trade_count, 3);
        assert_eq!(v.get("usdm:BTCUSDT:5m").unwrap().trade_count, 2);
    }

    #[test]
    fn resubscription_clears_and_drops_reads_started_before() {
        let c = PriceCache::new("price");
        // Unverified: nothing served, nothing stored.
        assert!(c.read_ticket().is_none());
        c.apply(&payload(&[doc("BTCUSDT", 10)]));
        assert!(c.get("spot:BTCUSDT").is_none());

        c.subscribed();
        c.apply(&payload(&[doc("BTCUSDT", 10)]));
        let before = c.read_ticket();
        assert!(before.is_some());
        // Lost and resubscribed: ticks published meanwhile may be lost, so nothing is kept,
        // not even a Redis read that started before the clear.
        c.lost();
        assert!(c.get("spot:BTCUSDT").is_none());
        assert!(c.read_ticket().is_none());
        c.subscribed();
        assert!(c.is_empty());
        c.store_read(before, &doc("ETHUSDT", 3));
        assert!(c.get("spot:ETHUSDT").is_none());
        // A read started after the resubscription is stored.
        let after = c.read_ticket();
        c.store_read(after, &doc("ETHUSDT", 4));
        assert_eq!(c.get("spot:ETHUSDT").unwrap().trade_id, 4);
        // A resubscription alone (without a noticed loss) clears too.
        c.subscribed();
        assert!(c.get("spot:ETHUSDT").is_none());
    }

    #[test]
    fn the_last_value_seen_survives_clears_for_outages() {
        let c = PriceCache::new("price");
        c.subscribed();
        c.apply(&payload(&[doc("BTCUSDT", 10)]));
        c.lost();
        // Not served as current (messages may be lost), but kept as the last known value.
        assert!(c.get("spot:BTCUSDT").is_none());
        assert_eq!(c.last_known("spot:BTCUSDT").unwrap().trade_id, 10);
        c.subscribed();
        assert!(c.is_empty());
        assert_eq!(c.last_known("spot:BTCUSDT").unwrap().trade_id, 10);
        // A newer live value wins over the retired one; an older one does not.
        c.apply(&payload(&[doc("BTCUSDT", 12)]));
        assert_eq!(c.last_known("spot:BTCUSDT").unwrap().trade_id, 12);
        c.subscribed();
        c.apply(&payload(&[doc("BTCUSDT", 11)]));
        assert_eq!(c.last_known("spot:BTCUSDT").unwrap().trade_id, 12);
        assert!(c.last_known("spot:ETHUSDT").is_none());
    }

    #[tokio::test]
    async fn a_failed_read_is_not_retried_within_the_backoff() {
        let c = PriceCache::new("price");
        let slow = async {
            tokio::time::sleep(READ_TIMEOUT * 4).await;
            Ok::<u8, redis::RedisError>(1)
        };
        assert!(matches!(c.read(slow).await, Err(ReadError::Timeout)));
        let fast = async { Ok::<u8, redis::RedisError>(2) };
        assert!(matches!(c.read(fast).await, Err(ReadError::Backoff)));
    }
}
