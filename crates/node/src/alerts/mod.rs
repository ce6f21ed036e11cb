//! Price and anomaly alerts, evaluated on the node that owns the instrument: the consumer on the
//! trade path ([`tap`]), the HTTP routes ([`api`]) and the tasks that drive them.
//!
//! - **Committer**: woken by every firing (and every `alerts.tick_ms`), commits the firings with
//!   their deliveries and email jobs to Postgres in one transaction
//!   ([`pricefeed_store::alerts::commit_triggers`], idempotent on alert and trade), *then*
//!   publishes them on `{p}:alerts:events` for the users' WebSockets, and only then releases the
//!   instruments' prices to Redis. A commit that fails is retried; nothing is pushed or released
//!   before it succeeds.
//! - **Ticker** (every `alerts.tick_ms`): VWAP, move and z-score conditions, from the live
//!   windows of the same node; cooldowns that ended.
//! - **Loader**: when an instrument goes live here, its active alerts are loaded from Postgres,
//!   so alerts move with their slice.
//! - **Changes**: an alert created, changed or deleted on any node is announced on
//!   `{p}:alerts:changed`; the owner reloads it at once, and a resync every `alerts.resync_ms`
//!   repairs anything a lost message missed.

pub mod api;
pub mod input;
pub mod tap;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pricefeed_domain::alert::Metric;
use pricefeed_runtime::config::{ConfigError, Validate};
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::alerts::{self as store, NewTrigger};
use pricefeed_store::history::InstrumentIds;
use pricefeed_store::protocol::{AlertChanged, AlertEvent, Keys, doc_key};
use pricefeed_store::redis_conn::RedisConn;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::ingest::connector::now_ms;
use crate::ingest::state::Core;
use crate::live::tap::LiveTap;
use tap::{AlertTap, Load, Pending};

/// `[alerts]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alerts one user may have (any status).
    pub max_per_user: u32,
    /// Alert emails one user may receive per hour; more are recorded as `suppressed`.
    pub emails_per_hour: u32,
    /// VWAP, move and z-score conditions are evaluated this often.
    pub tick_ms: u64,
    /// Every owned instrument's alerts are compared with Postgres this often.
    pub resync_ms: u64,
    /// z-score conditions need at least this many 1-minute closes behind the mean and σ.
    pub zscore_min_samples: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            max_per_user: 100,
            emails_per_hour: 30,
            tick_ms: 250,
            resync_ms: 30_000,
            zscore_min_samples: 30,
        }
    }
}

impl Validate for AlertsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("alerts.{key}"), msg));
        if !(1..=100_000).contains(&self.max_per_user) {
            return k("max_per_user", "must be between 1 and 100000");
        }
        if !(1..=10_000).contains(&self.emails_per_hour) {
            return k("emails_per_hour", "must be between 1 and 10000");
        }
        if !(20..=10_000).contains(&self.tick_ms) {
            return k("tick_ms", "must be between 20 and 10000");
        }
        if !(1_000..=3_600_000).contains(&self.resync_ms) {
            return k("resync_ms", "must be between 1000 and 3600000");
        }
        if self.zscore_min_samples < 2 {
            return k("zscore_min_samples", "must be at least 2");
        }
        Ok(())
    }
}

/// What the alert tasks need.
#[derive(Debug, Clone)]
pub struct AlertDeps {
    pub node_id: String,
    pub db: PgPool,
    pub redis: RedisConn,
    pub redis_endpoint: pricefeed_store::redis_conn::RedisEndpoint,
    pub keys: Keys,
    pub ids: InstrumentIds,
    pub cfg: AlertsConfig,
}

/// Registers the consumer and starts its tasks.
pub fn attach(core: &Arc<Mutex<Core>>, deps: AlertDeps, shutdown: &Shutdown) {
    let (tx, rx) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());
    core.lock()
        .unwrap()
        .add_consumer(Box::new(AlertTap::new(tx, wake.clone())));
    let token = shutdown.token();
    let t = shutdown.tracker();
    t.spawn(commit_loop(core.clone(), deps.clone(), wake, token.clone()));
    t.spawn(load_loop(core.clone(), deps.clone(), rx, token.clone()));
    t.spawn(changes_loop(core.clone(), deps, token));
}

fn with_tap<R>(core: &Arc<Mutex<Core>>, f: impl FnOnce(&mut AlertTap) -> R) -> Option<R> {
    core.lock().unwrap().consumer_mut::<AlertTap>().map(f)
}

/// The value of a non-price metric from the live windows.
fn live_value(
    live: &mut LiveTap,
    key: &pricefeed_domain::instrument::InstrumentKey,
    m: Metric,
    min_samples: u32,
) -> Option<Decimal> {
    let slot = live.slot_of(key)?;
    let s = live.slot_ref(slot)?;
    match m {
        Metric::Vwap(iv) => s
            .live
            .vwaps()
            .into_iter()
            .find(|v| v.interval == iv)
            .and_then(|v| v.sums.vwap()),
        Metric::Z => {
            let st = s.live.stats();
            let (mean, sd, last) = (st.mean?, st.stddev?, s.last?.1);
            if st.samples < min_samples || sd.is_zero() {
                return None;
            }
            ((last - mean).abs()).checked_div(sd).map(|z| z.round_dp(6))
        }
        Metric::Price | Metric::Move(_) => None,
    }
}

/// One evaluation round of the non-price metrics (VWAP, z-score from the live windows; moves
/// and cooldowns in the alert consumer), under the ingest lock.
fn tick_metrics(
    core: &Arc<Mutex<Core>>,
    deps: &AlertDeps,
    alerts_gauge: &metrics::Gauge,
    bytes_gauge: &metrics::Gauge,
) {
    let now = now_ms();
    let min = deps.cfg.zscore_min_samples;
    let mut c = core.lock().unwrap();
    // Non-price metrics come from the live windows: read them first, then evaluate.
    let wanted: Vec<(pricefeed_domain::instrument::InstrumentKey, Metric)> = c
        .consumer_mut::<AlertTap>()
        .map(|t| {
            t.slots()
                .flat_map(|(_, s)| {
                    s.index
                        .metrics()
                        .filter(|m| matches!(m, Metric::Vwap(_) | Metric::Z))
                        .map(|m| (s.key.clone(), m))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut values: HashMap<(String, Metric), Decimal> = HashMap::new();
    if !wanted.is_empty()
        && let Some(live) = c.consumer_mut::<LiveTap>()
    {
        for (k, m) in wanted {
            if let Some(v) = live_value(live, &k, m, min) {
                values.insert((k.as_str().to_string(), m), v);
            }
        }
    }
    if let Some(t) = c.consumer_mut::<AlertTap>() {
        t.tick(now, |k, m| {
            values.get(&(k.as_str().to_string(), m)).copied()
        });
        alerts_gauge.set(t.count() as f64);
        bytes_gauge.set(t.heap_bytes() as f64);
    }
}

async fn commit_loop(
    core: Arc<Mutex<Core>>,
    deps: AlertDeps,
    wake: Arc<Notify>,
    token: CancellationToken,
) {
    let mut redis = deps.redis.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(deps.cfg.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    let mut last_resync = std::time::Instant::now();
    let alerts_gauge = metrics::gauge!("pricefeed_alerts_indexed");
    let bytes_gauge = metrics::gauge!("pricefeed_alerts_index_bytes");
    loop {
        let ticked = tokio::select! {
            () = token.cancelled() => break,
            () = wake.notified() => false,
            _ = tick.tick() => true,
        };
        if ticked {
            tick_metrics(&core, &deps, &alerts_gauge, &bytes_gauge);
            if last_resync.elapsed() >= Duration::from_millis(deps.cfg.resync_ms) {
                last_resync = std::time::Instant::now();
                if let Err(e) = resync(&core, &deps).await {
                    tracing::warn!(error = %e, "alert resync failed; retrying next round");
                }
            }
        }
        let Some((pending, rearmed)) = with_tap(&core, AlertTap::take) else {
            break;
        };
        if !rearmed.is_empty()
            && let Err(e) = store::mark_armed(&deps.db, &rearmed).await
        {
            tracing::debug!(error = %e, "recording re-armed alerts failed (they re-arm again by themselves)");
        }
        if pending.is_empty() {
            continue;
        }
        match commit(&deps, &mut redis, &pending).await {
            Ok(n) => {
                backoff = Duration::from_millis(100);
                with_tap(&core, |t| t.committed(&pending));
                metrics::counter!("pricefeed_alert_triggers_total").increment(n as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = pending.len(), "committing alert triggers failed; retrying (their prices are held back)");
                with_tap(&core, |t| t.put_back(pending));
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                wake.notify_one();
            }
        }
    }
    // Shutdown: one last attempt, so firings of the last moments are not left to the next owner.
    if let Some((pending, _)) = with_tap(&core, AlertTap::take)
        && !pending.is_empty()
        && let Err(e) = commit(&deps, &mut redis, &pending).await
    {
        tracing::warn!(error = %e, "final alert commit failed; the next owner re-evaluates those trades");
    }
}

/// Commits `pending`, then pushes the committed ones to WebSocket subscribers.
async fn commit(
    deps: &AlertDeps,
    redis: &mut RedisConn,
    pending: &[Pending],
) -> anyhow::Result<usize> {
    let new: Vec<NewTrigger> = pending
        .iter()
        .map(|p| NewTrigger {
            alert_id: p.fired.alert_id,
            user_id: p.fired.user_id,
            version: p.fired.version,
            trade_id: p.trade_id as i64,
            trade_ts_ms: p.trade_ts,
            price: p.price,
            observed: p.fired.observed,
            one_shot: p.fired.one_shot,
        })
        .collect();
    let done =
        store::commit_triggers(&deps.db, &deps.node_id, &new, deps.cfg.emails_per_hour).await?;
    let mut pushed = Vec::new();
    let mut pipe = redis::pipe();
    for c in &done {
        tracing::info!(alert = c.alert.id, trigger = c.trigger_id, key = %c.alert.key, observed = %c.new.observed, "alert fired");
        if !c.websocket {
            continue;
        }
        let ev = AlertEvent {
            user_id: c.alert.user_id,
            alert_id: c.alert.id,
            trigger_id: c.trigger_id,
            market: c.alert.key.market().as_str().to_string(),
            symbol: c.alert.key.symbol_str().to_string(),
            condition: c.alert.condition.kind.as_str().to_string(),
            threshold: c.alert.condition.threshold,
            trade_id: c.new.trade_id as u64,
            trade_ts: c.new.trade_ts_ms,
            price: c.new.price,
            observed: c.new.observed,
            triggered_at: c.triggered_at_ms,
        };
        pipe.publish(deps.keys.alert_events(), serde_json::to_string(&ev)?)
            .ignore();
        pushed.push(c.trigger_id);
    }
    if !pushed.is_empty() {
        // Durable already; a lost push is visible as a pending WebSocket delivery.
        match pipe.query_async::<()>(redis).await {
            Ok(()) => {
                if let Err(e) = store::mark_pushed(&deps.db, &pushed).await {
                    tracing::debug!(error = %e, "marking pushed deliveries failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pushing alert events to redis failed"),
        }
    }
    Ok(done.len())
}

async fn load_loop(
    core: Arc<Mutex<Core>>,
    deps: AlertDeps,
    mut rx: mpsc::UnboundedReceiver<Load>,
    token: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            () = token.cancelled() => return,
            j = rx.recv() => match j { Some(j) => j, None => return },
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match load_one(&core, &deps, &job).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, key = %job.key, "loading alerts failed; retrying");
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                    if with_tap(&core, |t| t.slot_mut(job.slot, job.generation).is_some())
                        != Some(true)
                    {
                        break;
                    }
                }
            }
        }
    }
}

async fn load_one(core: &Arc<Mutex<Core>>, deps: &AlertDeps, job: &Load) -> anyhow::Result<()> {
    let inst = deps.ids.id_of(&deps.db, &job.key).await?;
    let alerts = store::active_for_instrument(&deps.db, inst).await?;
    let now = now_ms();
    with_tap(core, |t| {
        t.loaded(
            job.slot,
            job.generation,
            alerts.iter().map(|a| a.rule()).collect(),
            now,
        );
    });
    Ok(())
}

/// Compares every owned instrument's index with Postgres and repairs differences.
async fn resync(core: &Arc<Mutex<Core>>, deps: &AlertDeps) -> anyhow::Result<()> {
    let owned: Vec<(pricefeed_domain::instrument::InstrumentKey, Vec<(i64, i64)>)> =
        with_tap(core, |t| {
            t.slots()
                .map(|(_, s)| (s.key.clone(), s.index.versions()))
                .collect()
        })
        .unwrap_or_default();
    if owned.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(owned.len());
    let mut by_inst = HashMap::new();
    for (k, _) in &owned {
        let id = deps.ids.id_of(&deps.db, k).await?;
        ids.push(id);
        by_inst.insert(id, k.clone());
    }
    let rows = store::active_versions(&deps.db, &ids).await?;
    let stored: HashMap<i64, (i32, i64)> =
        rows.into_iter().map(|(i, id, v)| (id, (i, v))).collect();
    let mut reload = Vec::new();
    let mut drop_ids = Vec::new();
    for (k, versions) in &owned {
        let have: HashSet<i64> = versions.iter().map(|v| v.0).collect();
        for (id, v) in versions {
            match stored.get(id) {
                None => drop_ids.push((k.clone(), *id)),
                Some((_, sv)) if sv > v => reload.push(*id),
                _ => {}
            }
        }
        let inst = deps.ids.id_of(&deps.db, k).await?;
        for (id, (i, _)) in &stored {
            if *i == inst && !have.contains(id) {
                reload.push(*id);
            }
        }
    }
    for (k, id) in drop_ids {
        with_tap(core, |t| t.remove(&k, id));
    }
    for id in reload {
        reload_alert(core, deps, id).await?;
    }
    Ok(())
}

/// Applies the stored state of alert `id` to the index of its instrument, if owned here.
async fn reload_alert(core: &Arc<Mutex<Core>>, deps: &AlertDeps, id: i64) -> anyhow::Result<()> {
    let a = store::alert_any(&deps.db, id).await?;
    let now = now_ms();
    with_tap(core, |t| match a {
        Some(a) if a.status == "active" => {
            t.upsert(&a.key, a.rule(), now);
        }
        Some(a) => t.remove(&a.key, id),
        None => {
            let keys: Vec<_> = t.slots().map(|(_, s)| s.key.clone()).collect();
            for k in keys {
                t.remove(&k, id);
            }
        }
    });
    Ok(())
}

async fn changes_loop(core: Arc<Mutex<Core>>, deps: AlertDeps, token: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<AlertChanged>();
    struct L(mpsc::UnboundedSender<AlertChanged>, Arc<Mutex<Core>>);
    impl crate::pubsub::Listener for L {
        fn message(&mut self, payload: &[u8]) {
            let Ok(m) = serde_json::from_slice::<AlertChanged>(payload) else {
                tracing::warn!("malformed alert change notice ignored");
                return;
            };
            // Only the owner acts; others ignore it without a database read.
            let owned = doc_key(&m.market, &m.symbol)
                .and_then(|k| {
                    self.1
                        .lock()
                        .unwrap()
                        .consumer_mut::<AlertTap>()
                        .map(|t| t.slot_of(&k).is_some())
                })
                .unwrap_or(false);
            if owned {
                let _ = self.0.send(m);
            }
        }
    }
    let listen = {
        let mut l = L(tx, core.clone());
        let deps = deps.clone();
        let token = token.clone();
        async move {
            crate::pubsub::listen(
                &deps.redis_endpoint,
                &deps.keys.alerts_changed(),
                "alert changes",
                Duration::from_secs(1),
                crate::pubsub::Keepalive::default(),
                &token,
                &mut l,
            )
            .await;
        }
    };
    let apply = async {
        while let Some(m) = rx.recv().await {
            if let Err(e) = reload_alert(&core, &deps, m.alert_id).await {
                tracing::warn!(error = %e, alert = m.alert_id, "reloading a changed alert failed; the resync repairs it");
            }
        }
    };
    tokio::select! {
        () = listen => {}
        () = apply => {}
        () = token.cancelled() => {}
    }
}

/// Announces a changed alert to the owning node (best effort: the owner's resync repairs a lost
/// notice within `alerts.resync_ms`).
pub async fn announce(redis: &mut RedisConn, keys: &Keys, a: &store::Alert) {
    let m = AlertChanged {
        alert_id: a.id,
        market: a.key.market().as_str().to_string(),
        symbol: a.key.symbol_str().to_string(),
        version: a.version,
    };
    let body = serde_json::to_string(&m).expect("notices serialize");
    if let Err(e) = redis::cmd("PUBLISH")
        .arg(keys.alerts_changed())
        .arg(body)
        .query_async::<()>(redis)
        .await
    {
        tracing::warn!(error = %e, "announcing an alert change failed; the owner's resync picks it up");
    }
}
