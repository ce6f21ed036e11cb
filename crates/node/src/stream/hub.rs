//! The per-node hub: which connection listens to what, and one dispatcher task that turns the
//! node's single Redis subscriptions into frames for them.
//!
//! Feeding: the live caches call [`Hub::offer_prices`] / [`Hub::offer_vwaps`] with the
//! documents that changed them (the notification hook of [`crate::live_cache`]), and the
//! alert-events subscription calls [`Hub::offer_alert`]. Each offer is a `try_send` into a
//! bounded queue: when the dispatcher is behind, the batch is dropped and counted
//! (`pricefeed_stream_hub_dropped_total`), so neither the cache feed nor ingestion ever waits
//! for clients. A dropped price batch costs clients intermediate values only; the next flush
//! (20 ms later) brings the latest again.
//!
//! Dispatching: an update for a topic nobody listens to costs one hash lookup. Otherwise the
//! frame is serialized **once** and handed to every listener's [`Outbox`] (conflated per
//! channel); the connection tasks do the socket writes. Watches are evaluated here, against
//! every update in order, so a crossing is noticed even when the client reads slowly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;
use metrics::Counter;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::protocol::{AlertEvent, PriceDoc, VwapDoc, doc_key, vwap_field};
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use super::config::StreamConfig;
use super::limits::Outbox;
use super::protocol::{Channel, Crossed, Direction, Update, WatchView};

/// A connection's id within this node.
pub type ConnId = u64;

/// What the dispatcher receives.
#[derive(Debug)]
enum Feed {
    Prices(Vec<PriceDoc>),
    Vwaps(Vec<VwapDoc>),
    Alert(Box<AlertEvent>),
}

/// Where a topic's updates go.
#[derive(Debug)]
struct Topic {
    /// Canonical channel name (the conflation key and the `channel` of every frame).
    channel: Arc<str>,
    subs: HashMap<ConnId, Arc<Outbox>>,
}

/// Topics by their lookup key: `market:SYMBOL` for prices, `market:SYMBOL:iv` for VWAPs (the
/// Redis hash fields the documents carry), the user id for alerts.
#[derive(Debug, Default)]
struct Topics {
    prices: HashMap<String, Topic>,
    vwaps: HashMap<String, Topic>,
    alerts: HashMap<i64, Topic>,
}

impl Topics {
    fn map_for(&mut self, ch: &Channel) -> (&mut HashMap<String, Topic>, String) {
        match ch {
            Channel::Prices(k) => (&mut self.prices, k.as_str().to_string()),
            Channel::Vwap(k, iv) => (&mut self.vwaps, vwap_field(k, &iv.to_string())),
            Channel::Alerts => unreachable!("alerts are keyed by user"),
        }
    }
}

/// One watch of one connection.
#[derive(Debug)]
struct WatchEntry {
    conn: ConnId,
    view: Arc<WatchView>,
    direction: Direction,
    threshold: Decimal,
    /// Side of the threshold at the last price seen; `None` before any price.
    past: Option<bool>,
    /// Last trade id evaluated: older or repeated documents are skipped.
    last_trade_id: u64,
    outbox: Arc<Outbox>,
}

impl WatchEntry {
    /// Feeds one price; returns whether it crossed (went past the threshold from the other
    /// side, or from "no price yet").
    fn step(&mut self, trade_id: u64, price: Decimal) -> bool {
        if trade_id <= self.last_trade_id {
            return false;
        }
        self.last_trade_id = trade_id;
        let now = self.direction.is_past(price, self.threshold);
        let fired = now && self.past != Some(true);
        self.past = Some(now);
        fired
    }
}

/// The hub of one node (see the module docs). Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Hub {
    pub cfg: StreamConfig,
    tx: mpsc::Sender<Feed>,
    topics: RwLock<Topics>,
    /// Watches by instrument key.
    watches: Mutex<HashMap<String, Vec<WatchEntry>>>,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    pub(super) shutdown: Shutdown,
    dropped: Counter,
}

impl Hub {
    /// A hub whose dispatcher runs as a tracked task until shutdown.
    pub fn start(cfg: StreamConfig, shutdown: &Shutdown) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(cfg.hub_queue);
        let hub = Arc::new(Self {
            cfg,
            tx,
            topics: RwLock::default(),
            watches: Mutex::default(),
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
            dropped: metrics::counter!("pricefeed_stream_hub_dropped_total"),
        });
        shutdown
            .tracker()
            .spawn(dispatch(Arc::downgrade(&hub), rx, shutdown.token()));
        hub
    }

    /// Latest prices that changed the node's cache. Never waits.
    pub fn offer_prices(&self, docs: Vec<PriceDoc>) {
        self.offer(Feed::Prices(docs));
    }

    /// Latest VWAPs that changed the node's cache. Never waits.
    pub fn offer_vwaps(&self, docs: Vec<VwapDoc>) {
        self.offer(Feed::Vwaps(docs));
    }

    /// A committed alert trigger. Never waits.
    pub fn offer_alert(&self, ev: AlertEvent) {
        self.offer(Feed::Alert(Box::new(ev)));
    }

    fn offer(&self, f: Feed) {
        if self.tx.try_send(f).is_err() {
            self.dropped.increment(1);
        }
    }

    /// Registers a new connection; `None` when the node is at `max_connections` or shutting
    /// down. The guard unregisters it (and everything it subscribed) when dropped.
    pub fn connect(self: &Arc<Self>) -> Option<ConnGuard> {
        if self.shutdown.is_draining() {
            return None;
        }
        let n = self.connections.fetch_add(1, Ordering::AcqRel);
        if n >= self.cfg.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("pricefeed_stream_connections").increment(1.0);
        metrics::counter!("pricefeed_stream_connections_total").increment(1);
        Some(ConnGuard {
            hub: self.clone(),
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            outbox: Arc::new(Outbox::new(self.cfg.max_queued_frames)),
        })
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Adds `conn` to a channel's listeners (`user` for `alerts`). Returns its canonical name.
    pub fn subscribe(&self, conn: &ConnGuard, ch: &Channel, user: Option<i64>) -> Arc<str> {
        let name: Arc<str> = Arc::from(ch.name());
        let mut t = self.topics.write().unwrap();
        let topic = match (ch, user) {
            (Channel::Alerts, Some(u)) => t.alerts.entry(u).or_insert_with(|| Topic {
                channel: name.clone(),
                subs: HashMap::new(),
            }),
            (Channel::Alerts, None) => return name,
            _ => {
                let (map, key) = t.map_for(ch);
                map.entry(key).or_insert_with(|| Topic {
                    channel: name.clone(),
                    subs: HashMap::new(),
                })
            }
        };
        topic.subs.insert(conn.id, conn.outbox.clone());
        name
    }

    /// Removes `conn` from a channel's listeners.
    pub fn unsubscribe(&self, conn: ConnId, ch: &Channel, user: Option<i64>) {
        let mut t = self.topics.write().unwrap();
        match (ch, user) {
            (Channel::Alerts, Some(u)) => remove_sub(&mut t.alerts, &u, conn),
            (Channel::Alerts, None) => {}
            _ => {
                let (map, key) = t.map_for(ch);
                remove_sub(map, &key, conn);
            }
        }
    }

    /// Adds a watch. `seed` is the latest (trade id, price) the connection knows; then the
    /// state is checked again against `recheck` (a synchronous read of the node's latest
    /// price) under the watch lock, which the dispatcher also holds, so no update between the
    /// connection's lookup and the registration can be missed (see `Conn::watch`). Returns
    /// whether the price is past the threshold now, and whether that recheck already fired a
    /// notification (queued to the outbox).
    pub fn add_watch(
        &self,
        conn: &ConnGuard,
        key: &InstrumentKey,
        view: Arc<WatchView>,
        seed: Option<(u64, Decimal)>,
        recheck: impl FnOnce() -> Option<(u64, Decimal, i64)>,
    ) -> Option<bool> {
        let mut e = WatchEntry {
            conn: conn.id,
            direction: view.direction,
            threshold: view.threshold,
            view,
            past: None,
            last_trade_id: 0,
            outbox: conn.outbox.clone(),
        };
        if let Some((id, price)) = seed {
            e.step(id, price);
        }
        let mut w = self.watches.lock().unwrap();
        if let Some((id, price, ts)) = recheck()
            && e.step(id, price)
        {
            e.outbox.push(crossed(&e.view, price, id, ts));
        }
        let past = e.past;
        w.entry(key.as_str().to_string()).or_default().push(e);
        past
    }

    /// Removes watches of `conn` on `key` whose id is in `ids` (all of them when `None`).
    pub fn remove_watches(&self, conn: ConnId, key: &InstrumentKey, ids: Option<&[u64]>) {
        let mut w = self.watches.lock().unwrap();
        if let Some(list) = w.get_mut(key.as_str()) {
            list.retain(|e| e.conn != conn || ids.is_some_and(|ids| !ids.contains(&e.view.id)));
            if list.is_empty() {
                w.remove(key.as_str());
            }
        }
    }

    fn dispatch_prices(&self, docs: &[PriceDoc]) {
        // Watches first: their state must follow every update, whoever listens to the channel.
        {
            let mut w = self.watches.lock().unwrap();
            if !w.is_empty() {
                for d in docs {
                    let Some(key) = doc_key(&d.market, &d.symbol) else {
                        continue;
                    };
                    if let Some(list) = w.get_mut(key.as_str()) {
                        for e in list {
                            if e.step(d.trade_id, d.price) {
                                e.outbox.push(crossed(&e.view, d.price, d.trade_id, d.ts));
                            }
                        }
                    }
                }
            }
        }
        let t = self.topics.read().unwrap();
        for d in docs {
            let Some(key) = doc_key(&d.market, &d.symbol) else {
                continue;
            };
            let Some(topic) = t.prices.get(key.as_str()) else {
                continue;
            };
            let frame = price_frame(&topic.channel, d);
            for o in topic.subs.values() {
                o.put_latest(&topic.channel, d.trade_id as i64, false, frame.clone());
            }
        }
    }

    fn dispatch_vwaps(&self, docs: &[VwapDoc]) {
        let t = self.topics.read().unwrap();
        for d in docs {
            let Some(key) = doc_key(&d.market, &d.symbol) else {
                continue;
            };
            let Some(topic) = t.vwaps.get(&vwap_field(&key, &d.interval)) else {
                continue;
            };
            let frame = vwap_frame(&topic.channel, d);
            for o in topic.subs.values() {
                o.put_latest(&topic.channel, d.window_end, true, frame.clone());
            }
        }
    }

    fn dispatch_alert(&self, ev: &AlertEvent) {
        let t = self.topics.read().unwrap();
        if let Some(topic) = t.alerts.get(&ev.user_id) {
            let frame: Utf8Bytes = Update {
                kind: "alert",
                channel: &topic.channel,
                data: ev,
            }
            .to_json()
            .into();
            for o in topic.subs.values() {
                o.push(frame.clone());
            }
        }
    }
}

fn remove_sub<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Topic>, key: &K, conn: ConnId) {
    if let Some(topic) = map.get_mut(key) {
        topic.subs.remove(&conn);
        if topic.subs.is_empty() {
            map.remove(key);
        }
    }
}

/// `{"type":"price","channel":…,"data":PriceDoc}`.
pub fn price_frame(channel: &str, d: &PriceDoc) -> Utf8Bytes {
    Update {
        kind: "price",
        channel,
        data: d,
    }
    .to_json()
    .into()
}

/// `{"type":"vwap","channel":…,"data":VwapDoc}`.
pub fn vwap_frame(channel: &str, d: &VwapDoc) -> Utf8Bytes {
    Update {
        kind: "vwap",
        channel,
        data: d,
    }
    .to_json()
    .into()
}

/// `{"type":"crossed","watch":…,"price":…,"trade_id":…,"ts":…}`.
fn crossed(view: &WatchView, price: Decimal, trade_id: u64, ts: i64) -> String {
    Crossed {
        kind: "crossed",
        watch: view,
        price,
        trade_id,
        ts,
    }
    .to_json()
}

/// The dispatcher: applies every fed batch until shutdown (or until the hub is gone).
async fn dispatch(
    hub: std::sync::Weak<Hub>,
    mut rx: mpsc::Receiver<Feed>,
    token: tokio_util::sync::CancellationToken,
) {
    loop {
        let f = tokio::select! {
            () = token.cancelled() => return,
            f = rx.recv() => match f { Some(f) => f, None => return },
        };
        let Some(hub) = hub.upgrade() else { return };
        match f {
            Feed::Prices(d) => hub.dispatch_prices(&d),
            Feed::Vwaps(d) => hub.dispatch_vwaps(&d),
            Feed::Alert(ev) => hub.dispatch_alert(&ev),
        }
    }
}

/// A registered connection: its id and outbox. Dropping it removes every subscription and
/// watch of the connection from the hub.
#[derive(Debug)]
pub struct ConnGuard {
    hub: Arc<Hub>,
    pub id: ConnId,
    pub outbox: Arc<Outbox>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        {
            let mut t = self.hub.topics.write().unwrap();
            let id = self.id;
            t.prices.retain(|_, tp| {
                tp.subs.remove(&id);
                !tp.subs.is_empty()
            });
            t.vwaps.retain(|_, tp| {
                tp.subs.remove(&id);
                !tp.subs.is_empty()
            });
            t.alerts.retain(|_, tp| {
                tp.subs.remove(&id);
                !tp.subs.is_empty()
            });
        }
        self.hub.watches.lock().unwrap().retain(|_, list| {
            list.retain(|e| e.conn != self.id);
            !list.is_empty()
        });
        self.hub.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("pricefeed_stream_connections").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: Direction, t: &str) -> WatchEntry {
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        WatchEntry {
            conn: 1,
            view: Arc::new(WatchView::new(1, &key, dir, t.parse().unwrap())),
            direction: dir,
            threshold: t.parse().unwrap(),
            past: None,
            last_trade_id: 0,
            outbox: Arc::new(Outbox::new(8)),
        }
    }

    #[test]
    fn a_watch_fires_each_time_the_price_goes_past_from_the_other_side() {
        let p = |s: &str| s.parse::<Decimal>().unwrap();
        let mut e = entry(Direction::Above, "100");
        // Seeded below: nothing.
        assert!(!e.step(1, p("99")));
        // Equal is not past.
        assert!(!e.step(2, p("100")));
        assert!(e.step(3, p("100.5")));
        // Staying above does not repeat.
        assert!(!e.step(4, p("101")));
        // Old or repeated trades are ignored.
        assert!(!e.step(4, p("50")));
        assert!(!e.step(2, p("50")));
        assert!(!e.step(5, p("100")));
        assert!(e.step(6, p("100.01")));

        let mut e = entry(Direction::Below, "100");
        // The first price ever seen past the threshold fires (nothing was known before).
        assert!(e.step(10, p("99")));
        assert!(!e.step(11, p("98")));
        assert!(!e.step(12, p("101")));
        assert!(e.step(13, p("99.99")));
    }

    fn doc(sym: &str, id: u64, price: &str) -> PriceDoc {
        PriceDoc {
            market: "spot".into(),
            symbol: sym.into(),
            price: price.parse().unwrap(),
            qty: Decimal::ONE,
            trade_id: id,
            ts: id as i64,
        }
    }

    #[tokio::test]
    async fn updates_reach_only_listeners_and_a_guard_drop_cleans_up() {
        let shutdown = Shutdown::new();
        let hub = Hub::start(StreamConfig::default(), &shutdown);
        let a = hub.connect().unwrap();
        let b = hub.connect().unwrap();
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let name = hub.subscribe(&a, &Channel::Prices(key.clone()), None);
        assert_eq!(&*name, "prices:BTCUSDT");
        let view = Arc::new(WatchView::new(
            7,
            &key,
            Direction::Above,
            "100".parse().unwrap(),
        ));
        let past = hub.add_watch(&b, &key, view, Some((1, "90".parse().unwrap())), || None);
        assert_eq!(past, Some(false));
        assert_eq!(hub.connections(), 2);

        hub.dispatch_prices(&[doc("BTCUSDT", 2, "101"), doc("ETHUSDT", 3, "5")]);
        let fa = a.outbox.drain().unwrap().frames;
        assert_eq!(fa.len(), 1);
        assert!(fa[0].as_str().contains(r#""channel":"prices:BTCUSDT""#));
        assert!(fa[0].as_str().contains(r#""price":"101""#));
        let fb = b.outbox.drain().unwrap().frames;
        assert_eq!(fb.len(), 1);
        assert!(
            fb[0]
                .as_str()
                .starts_with(r#"{"type":"crossed","watch":{"id":7"#)
        );

        drop(a);
        drop(b);
        assert_eq!(hub.connections(), 0);
        assert!(hub.topics.read().unwrap().prices.is_empty());
        assert!(hub.watches.lock().unwrap().is_empty());
        shutdown.trigger();
        assert!(shutdown.wait(std::time::Duration::from_secs(5)).await);
    }
}
