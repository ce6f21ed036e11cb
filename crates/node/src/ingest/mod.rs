//! Trade ingest of one node: broker WS connector → decode → validate → dedup → latest price
//! (node-local and Redis), with gap backfill from REST.
//!
//! - [`connector`]: WS connections per market (limits, pings, watchdog, reconnects).
//! - [`plan`]: which connection carries which stream; subscribe-before-unsubscribe handover.
//! - [`limits`]: outgoing message limiter and reconnect backoff.
//! - [`state`]: per-instrument dedup, latest price, statistics, handover phases.
//! - [`handoff`]: the one hand-off of accepted trades to their consumers.
//! - [`history`]: the consumer feeding the trade-history writer.
//! - [`publish`]: the Redis price hash, tick channel, counters and handover markers.
//! - [`backfill`]: REST history for gaps.
//! - [`orders`]: reconnect orders from the scheduler's feed-health watch.
//!
//! Tasks (all tracked by the runtime [`Shutdown`]): one slice watcher, one manager per market,
//! one task per connection, one flusher, one backfill dispatcher, one order listener.

pub mod backfill;
pub mod connector;
pub mod handoff;
pub mod history;
pub mod limits;
pub mod orders;
pub mod plan;
pub mod publish;
pub mod state;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pricefeed_domain::assignment::NodeId;
use pricefeed_domain::instrument::{InstrumentKey, Market};
use pricefeed_domain::sequence::SeqConfig;
use pricefeed_runtime::config::BrokerConfig;
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::redis_conn::RedisConn;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::FeedConfig;
use crate::membership::SliceView;
use backfill::TradeHistory;
use connector::{ConnSettings, HealthRegistry};
use plan::{Op, Planner};
use state::{Core, market_index};

/// The WS stream carrying an instrument's trades: spot `btcusdt@trade`, USD-M
/// `btcusdt@aggTrade` (the futures trade stream), options `BTC-261225-90000-C@trade`.
pub fn stream_name(key: &InstrumentKey) -> String {
    match key.market() {
        Market::Spot => format!("{}@trade", key.symbol_str().to_ascii_lowercase()),
        Market::Usdm => format!("{}@aggTrade", key.symbol_str().to_ascii_lowercase()),
        Market::Options => format!("{}@trade", key.symbol_str()),
    }
}

/// Handle used by the API: ingest state and connection health.
#[derive(Clone, Debug)]
pub struct Ingest {
    pub core: Arc<Mutex<Core>>,
    pub health: HealthRegistry,
}

/// Everything [`start`] needs.
#[derive(Debug, Clone)]
pub struct IngestDeps {
    pub node_id: String,
    pub feed: FeedConfig,
    pub broker: BrokerConfig,
    pub redis: RedisConn,
    /// For the dedicated pub/sub connection of the order listener.
    pub redis_endpoint: pricefeed_store::redis_conn::RedisEndpoint,
    pub prefix: String,
}

/// Starts the pipeline on `slices`; returns the handle for the API.
pub fn start(
    deps: IngestDeps,
    slices: watch::Receiver<SliceView>,
    history: Arc<dyn TradeHistory>,
    shutdown: &Shutdown,
) -> Ingest {
    let f = &deps.feed;
    let core = Arc::new(Mutex::new(Core::new(SeqConfig::default(), f.max_skew_ms)));
    let health: HealthRegistry = Arc::default();
    let tracker = shutdown.tracker().clone();
    let token = shutdown.token();

    let budget = limits::ConnectBudget::new(
        f.connect_budget,
        Duration::from_millis(f.connect_budget_window_ms),
    );
    let mut stream_txs = Vec::new();
    for market in Market::ALL {
        let (tx, rx) = watch::channel(BTreeSet::new());
        stream_txs.push(tx);
        let ws_url = match market {
            Market::Spot => &deps.broker.spot_ws_url,
            Market::Usdm => &deps.broker.futures_ws_url,
            Market::Options => &deps.broker.options_ws_url,
        };
        let settings = Arc::new(ConnSettings {
            market,
            ws_url: ws_url.clone(),
            streams_per_request: f.streams_per_request,
            msgs_per_sec: f.control_msgs_per_sec,
            stall_timeout: Duration::from_millis(f.stall_timeout_ms),
            backoff_min: Duration::from_millis(f.reconnect_backoff_min_ms),
            backoff_max: Duration::from_millis(f.reconnect_backoff_max_ms),
            reset_after: Duration::from_millis(f.reconnect_reset_after_ms),
            max_lifetime: Duration::from_millis(f.max_lifetime_ms),
            budget: budget.clone(),
        });
        let max = if market == Market::Options {
            f.options_max_streams_per_conn
        } else {
            f.max_streams_per_conn
        };
        tracker.spawn(manage_market(
            settings,
            Planner::new(max, Duration::from_millis(f.handover_grace_ms)),
            rx,
            core.clone(),
            health.clone(),
            tracker.clone(),
            token.clone(),
        ));
    }

    let (gap_tx, gap_rx) = mpsc::unbounded_channel();
    tracker.spawn(backfill::run(
        gap_rx,
        history,
        core.clone(),
        backfill::Pacing {
            concurrency: f.backfill_concurrency,
            grace: Duration::from_millis(f.backfill_grace_ms),
            interval: Duration::from_millis(f.backfill_interval_ms),
        },
        token.clone(),
    ));
    tracker.spawn(watch_slices(
        slices,
        NodeId::from(deps.node_id.as_str()),
        core.clone(),
        stream_txs,
        Duration::from_millis(f.handover_grace_ms),
        token.clone(),
    ));
    tracker.spawn(orders::run(
        deps.redis_endpoint.clone(),
        deps.prefix.clone(),
        orders::OrderHandler::new(deps.node_id.clone(), health.clone()),
        token.clone(),
    ));
    tracker.spawn(flush_loop(
        deps.clone(),
        core.clone(),
        health.clone(),
        gap_tx,
        token,
    ));
    Ingest { core, health }
}

/// Applies each new slice: ingest state first (gained instruments pending, lost ones released),
/// then the per-market stream sets for the connection managers.
async fn watch_slices(
    mut slices: watch::Receiver<SliceView>,
    me: NodeId,
    core: Arc<Mutex<Core>>,
    stream_txs: Vec<watch::Sender<BTreeSet<String>>>,
    grace: Duration,
    token: CancellationToken,
) {
    let mut previous: Option<SliceView> = None;
    loop {
        let view = slices.borrow_and_update().clone();
        let epoch = view.epoch();
        let new_owners: HashSet<&NodeId> = view
            .published
            .as_ref()
            .map(|p| p.owners.values().collect())
            .unwrap_or_default();
        // Whether nobody will hand `key` over to us: it had no owner before (new listing), or
        // its owner left the cluster (dead or stopped). Unknown history (our first view after
        // start) waits for a marker up to the grace, in case a live node still holds it.
        let prev_gone = |key: &InstrumentKey| -> bool {
            let Some(prev) = previous.as_ref().and_then(|p| p.published.as_ref()) else {
                return false;
            };
            match prev.owners.get(key) {
                None => true,
                Some(owner) if *owner == me => false,
                Some(owner) => !new_owners.contains(owner),
            }
        };
        let (gained, lost) = core.lock().unwrap().sync_slice(
            &view.my_slice,
            epoch,
            prev_gone,
            Instant::now() + grace,
        );
        if gained + lost > 0 {
            tracing::info!(
                epoch,
                gained,
                lost,
                slice = view.my_slice.len(),
                "ingest slice applied"
            );
        }
        let mut per_market: [BTreeSet<String>; 3] = Default::default();
        for key in view.my_slice.iter() {
            per_market[market_index(key.market())].insert(stream_name(key));
        }
        for (tx, set) in stream_txs.iter().zip(per_market) {
            tx.send_if_modified(|cur| {
                if *cur == set {
                    false
                } else {
                    *cur = set;
                    true
                }
            });
        }
        previous = Some(view);
        tokio::select! {
            () = token.cancelled() => return,
            r = slices.changed() => if r.is_err() { return },
        }
    }
}

/// One market: turns stream-set changes into connection operations.
async fn manage_market(
    settings: Arc<ConnSettings>,
    mut planner: Planner,
    mut streams: watch::Receiver<BTreeSet<String>>,
    core: Arc<Mutex<Core>>,
    health: HealthRegistry,
    tracker: TaskTracker,
    token: CancellationToken,
) {
    let mut conns = std::collections::HashMap::new();
    loop {
        let deadline = planner.next_deadline();
        let ops = tokio::select! {
            () = token.cancelled() => return,
            r = streams.changed() => {
                if r.is_err() {
                    return;
                }
                let set = streams.borrow_and_update().clone();
                planner.apply(set, Instant::now())
            }
            () = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                planner.due(Instant::now())
            }
        };
        for op in ops {
            match op {
                Op::Open { conn, streams } => {
                    let tx = connector::spawn_connection(
                        &tracker,
                        token.clone(),
                        settings.clone(),
                        core.clone(),
                        health.clone(),
                        conn,
                        streams,
                    );
                    conns.insert(conn, tx);
                }
                Op::Subscribe { conn, streams } => {
                    if let Some(tx) = conns.get(&conn) {
                        let _ = tx.send(connector::Cmd::Subscribe(streams));
                    }
                }
                Op::Unsubscribe { conn, streams } => {
                    if let Some(tx) = conns.get(&conn) {
                        let _ = tx.send(connector::Cmd::Unsubscribe(streams));
                    }
                }
                Op::Close { conn } => {
                    // Dropping the sender retires the connection task.
                    conns.remove(&conn);
                }
            }
        }
        metrics::gauge!("pricefeed_feed_streams", "market" => settings.market.as_str())
            .set(planner.subscribed() as f64);
    }
}

/// Every `tick_flush_ms`: resolve pending handovers, write prices and counters to Redis, hand
/// gaps to backfill; every second: connection-age gauges.
async fn flush_loop(
    deps: IngestDeps,
    core: Arc<Mutex<Core>>,
    health: HealthRegistry,
    gaps: mpsc::UnboundedSender<state::GapJob>,
    token: CancellationToken,
) {
    let mut redis = deps.redis.clone();
    let script = publish::flush_script();
    let mut tick = tokio::time::interval(Duration::from_millis(deps.feed.tick_flush_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut last_gauges = Instant::now();
    // A batch whose write failed is retried as it was, with its token, before anything newer:
    // its answer may have been lost after Redis applied it. Newer work waits in `queued`
    // (merged, newest price wins).
    let incarnation = uuid::Uuid::new_v4().simple().to_string();
    let mut flushes: u64 = 0;
    let mut inflight: Option<publish::FlushWork> = None;
    let mut queued: Vec<state::FlushEntry> = Vec::new();
    let mut queued_released: Vec<state::Release> = Vec::new();
    let duplicates = metrics::counter!("pricefeed_ingest_flush_retries_applied_total");
    loop {
        let stopping = tokio::select! {
            () = token.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = Instant::now();
        let checks = core.lock().unwrap().pending_checks(now);
        if !checks.is_empty() {
            let pending: Vec<(InstrumentKey, u64, bool)> = checks
                .iter()
                .map(|c| (c.key.clone(), c.epoch, c.force))
                .collect();
            match publish::claim(&mut redis, &deps.prefix, &deps.node_id, &pending).await {
                Ok(claimed) => {
                    let mut c = core.lock().unwrap();
                    for (check, resume) in checks.iter().zip(claimed) {
                        if let Some((resume, missing)) = resume
                            && c.go_live(&check.key, check.epoch, resume)
                        {
                            c.reopen_gaps(&check.key, &missing);
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "claiming pending instruments failed"),
            }
        }
        let batch = core.lock().unwrap().take_flush();
        for (m, n) in Market::ALL.iter().zip(batch.accepted_by_market) {
            if n > 0 {
                metrics::counter!("pricefeed_trades_accepted_total", "market" => m.as_str())
                    .increment(n);
            }
        }
        for g in batch.gaps {
            let _ = gaps.send(g);
        }
        merge_entries(&mut queued, batch.entries);
        queued_released.extend(batch.released);
        // The retried batch first, then (same tick) what queued up meanwhile.
        for _ in 0..2 {
            if inflight.is_none() && (!queued.is_empty() || !queued_released.is_empty()) {
                flushes += 1;
                inflight = Some(publish::FlushWork {
                    token: format!("{incarnation}:{flushes}"),
                    entries: std::mem::take(&mut queued),
                    released: std::mem::take(&mut queued_released),
                });
            }
            let Some(work) = inflight.as_ref() else {
                break;
            };
            match publish::flush(&mut redis, &script, &deps.prefix, &deps.node_id, work).await {
                Ok(flushed) => {
                    inflight = None;
                    if failing {
                        tracing::info!("price flush to redis recovered");
                        failing = false;
                    }
                    if flushed.duplicate {
                        duplicates.increment(1);
                    }
                    if !flushed.fenced.is_empty() {
                        fenced(&core, &flushed.fenced);
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "price flush to redis failed; retrying next tick");
                        failing = true;
                    }
                    break;
                }
            }
        }
        if now.duration_since(last_gauges) >= Duration::from_secs(1) {
            last_gauges = now;
            let now_ms = connector::now_ms();
            // Last-message time per connection: a gauge here, and a Redis hash
            // `{prefix}:feed:{node_id}` (field `market:conn` = `last_frame_ms,mean_gap_ms`) for
            // the scheduler's feed-health watch; the hash expires if the node dies.
            let feed_key = pricefeed_store::feed::feed_key(&deps.prefix, &deps.node_id);
            let mut pipe = redis::pipe();
            pipe.del(&feed_key).ignore();
            let mut any = false;
            for h in health.lock().unwrap().iter() {
                let last = h.last_frame_ms.load(std::sync::atomic::Ordering::Relaxed);
                let age = (now_ms - last).max(0) as f64 / 1000.0;
                metrics::gauge!("pricefeed_feed_last_message_age_seconds",
                    "market" => h.market.as_str(), "conn" => h.conn.to_string())
                .set(age);
                // 0 while not connected (connecting, or waiting out a backoff): the node is
                // already reconnecting at its own pace, and an order would only skip the
                // backoff that protects the exchange's connection-attempt limit.
                let connected = h.connected.load(std::sync::atomic::Ordering::Relaxed);
                let gap = h.mean_gap_ms.load(std::sync::atomic::Ordering::Relaxed);
                let value = pricefeed_store::feed::FeedField {
                    connected,
                    last_frame_ms: last,
                    mean_gap_ms: gap,
                }
                .encode();
                pipe.hset(&feed_key, format!("{}:{}", h.market, h.conn), value)
                    .ignore();
                any = true;
            }
            if any {
                pipe.pexpire(&feed_key, 10_000).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut redis).await {
                tracing::debug!(error = %e, "writing feed health failed");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Instruments whose live claim another node holds: this node's view of its slice is stale
/// (it was cut off while the slice moved). Their unflushed counts are dropped, since the node
/// now live on them resumed from what Redis held, and they stay fenced until the next
/// assignment says what is ours.
fn fenced(core: &Mutex<Core>, fields: &[String]) {
    let mut c = core.lock().unwrap();
    for f in fields {
        let Ok(key) = InstrumentKey::parse(f) else {
            continue;
        };
        if c.fence(&key) {
            tracing::warn!(instrument = %f, "another node is live on this instrument; fenced until the next assignment");
        }
    }
    metrics::counter!("pricefeed_ingest_fenced_total").increment(fields.len() as u64);
}

/// Adds `new` to `acc`, merging entries of the same instrument (counts add up, the newer price
/// and the lower first id win).
fn merge_entries(acc: &mut Vec<state::FlushEntry>, new: Vec<state::FlushEntry>) {
    if acc.is_empty() {
        *acc = new;
        return;
    }
    for e in new {
        match acc.iter_mut().find(|a| a.key == e.key) {
            Some(a) => {
                a.accepted += e.accepted;
                a.first_id = match (a.first_id, e.first_id) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
                if e.latest.map(|l| l.trade_id) > a.latest.map(|l| l.trade_id) {
                    a.latest = e.latest;
                }
                // The newer batch knows what is missing now.
                if e.missing.is_some() {
                    a.missing = e.missing;
                }
            }
            None => acc.push(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_per_market() {
        let k = |s: &str| InstrumentKey::parse(s).unwrap();
        assert_eq!(stream_name(&k("spot:BTCUSDT")), "btcusdt@trade");
        assert_eq!(stream_name(&k("usdm:BTCUSDT")), "btcusdt@aggTrade");
        assert_eq!(
            stream_name(&k("options:BTC-261225-90000-C")),
            "BTC-261225-90000-C@trade"
        );
    }
}
