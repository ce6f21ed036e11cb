//! Live VWAP and 24 h statistics of the instruments this node owns: the consumer on the trade
//! path ([`tap`]) and the three tasks that drive it.
//!
//! - **Publisher** (every `node.live.publish_ms`): moves the windows to now and writes the
//!   changed VWAPs to the `{p}:vwap` hash and the `{p}:vwap:ticks` channel, so every node serves
//!   them (see [`crate::live_cache`]); every `node.live.stats_publish_ms` also writes each
//!   instrument's statistics to `{p}:stats` and its σ to the rank set of its group
//!   (`{p}:rank:{market}:{quote}`), which makes the rank cluster-wide although each node only
//!   sees its slice.
//! - **Loader**: when an instrument goes live here (start, slice move), rebuilds its windows
//!   from Postgres — confirmed buckets plus the stored trades after the horizon that precede
//!   this node's own — and, on every `{p}:reconciled` notice for it, replaces what
//!   reconciliation confirmed with the confirmed buckets (what the feed invented or corrupted
//!   does not survive in the live values either).
//! - **Listener** of `{p}:reconciled`: turns notices about owned instruments into refreshes.

pub mod tap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::{InstrumentKey, Market};
use pricefeed_domain::window::WindowSpec;
use pricefeed_runtime::config::{ConfigError, Validate};
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::history::{InstrumentIds, VwapConfig, read};
use pricefeed_store::protocol::{Keys, Reconciled, StatsDoc, VwapDoc, vwap_field};
use pricefeed_store::redis_conn::RedisConn;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::ingest::connector::now_ms;
use crate::ingest::state::Core;
use tap::{LiveTap, Load};

/// `[node.live]`: publication of live values.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Changed VWAPs are published this often.
    pub publish_ms: u64,
    /// Unchanged VWAPs are published again after this (their window moved on).
    pub republish_ms: u64,
    /// Statistics and rank entries are published this often (the rank must be fresh within
    /// 5 s).
    pub stats_publish_ms: u64,
    /// Concurrent Postgres reads rebuilding or refreshing windows.
    pub load_concurrency: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            publish_ms: 500,
            republish_ms: 5_000,
            stats_publish_ms: 2_000,
            load_concurrency: 4,
        }
    }
}

impl Validate for LiveConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("node.live.{key}"), msg));
        if !(50..=60_000).contains(&self.publish_ms) {
            return k("publish_ms", "must be between 50 and 60000");
        }
        if self.republish_ms < self.publish_ms || self.republish_ms > 600_000 {
            return k(
                "republish_ms",
                "must be at least node.live.publish_ms and at most 600000",
            );
        }
        if !(100..=5_000).contains(&self.stats_publish_ms) {
            return k(
                "stats_publish_ms",
                "must be between 100 and 5000 (the rank is fresh within 5 s)",
            );
        }
        if !(1..=64).contains(&self.load_concurrency) {
            return k("load_concurrency", "must be between 1 and 64");
        }
        Ok(())
    }
}

/// What the live tasks need.
#[derive(Debug, Clone)]
pub struct LiveDeps {
    pub db: PgPool,
    pub redis: RedisConn,
    pub redis_endpoint: pricefeed_store::redis_conn::RedisEndpoint,
    pub keys: Keys,
    pub ids: InstrumentIds,
    pub vwap: VwapConfig,
    pub cfg: LiveConfig,
}

/// Registers the consumer and starts its tasks.
pub fn attach(core: &Arc<Mutex<Core>>, deps: LiveDeps, shutdown: &Shutdown) {
    let spec = WindowSpec::new(deps.vwap.intervals.clone(), Span::DAY);
    let (tx, rx) = mpsc::unbounded_channel();
    core.lock()
        .unwrap()
        .add_consumer(Box::new(LiveTap::new(spec, tx)));
    let token = shutdown.token();
    let tracker = shutdown.tracker();
    tracker.spawn(publish_loop(core.clone(), deps.clone(), token.clone()));
    tracker.spawn(load_loop(core.clone(), deps.clone(), rx, token.clone()));
    tracker.spawn(reconciled_loop(core.clone(), deps, token));
}

fn with_tap<R>(core: &Arc<Mutex<Core>>, f: impl FnOnce(&mut LiveTap) -> R) -> Option<R> {
    core.lock().unwrap().consumer_mut::<LiveTap>().map(f)
}

async fn publish_loop(core: Arc<Mutex<Core>>, deps: LiveDeps, token: CancellationToken) {
    let mut redis = deps.redis.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(deps.cfg.publish_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats_every = deps.cfg.stats_publish_ms as i64;
    let mut last_stats: Option<i64> = None;
    let mut failing = false;
    let heap = metrics::gauge!("pricefeed_live_windows_bytes");
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let stats_due = last_stats.is_none_or(|t| now - t >= stats_every);
        let Some((vwaps, stats, bytes)) = with_tap(&core, |t| {
            let v = t.vwap_docs(now, deps.cfg.republish_ms as i64);
            let s = if stats_due {
                t.stats_docs(now)
            } else {
                Vec::new()
            };
            (v, s, t.heap_bytes())
        }) else {
            return;
        };
        heap.set(bytes as f64);
        if stats_due {
            last_stats = Some(now);
        }
        match write(&mut redis, &deps.keys, &vwaps, &stats, now).await {
            Ok(()) => {
                if failing {
                    tracing::info!("live values to redis recovered");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "writing live values to redis failed; next round writes them again");
                    failing = true;
                }
                // Publish everything again next time: nothing is known to be stored.
                with_tap(&core, LiveTap::forget_published);
            }
        }
    }
}

/// One round of live values: VWAP hash + channel, statistics hash, rank sets.
async fn write(
    redis: &mut RedisConn,
    keys: &Keys,
    vwaps: &[VwapDoc],
    stats: &[StatsDoc],
    now: i64,
) -> redis::RedisResult<()> {
    if vwaps.is_empty() && stats.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    if !vwaps.is_empty() {
        let mut fields = Vec::with_capacity(vwaps.len());
        for d in vwaps {
            let Some(k) = pricefeed_store::protocol::doc_key(&d.market, &d.symbol) else {
                continue;
            };
            let json = serde_json::to_string(d).expect("documents serialize");
            fields.push((vwap_field(&k, &d.interval), json));
        }
        pipe.hset_multiple(keys.vwap(), &fields).ignore();
        let body = format!(
            "[{}]",
            fields
                .iter()
                .map(|f| f.1.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        pipe.publish(keys.vwap_ticks(), body).ignore();
    }
    for d in stats {
        let field = format!("{}:{}", d.market, d.symbol);
        let json = serde_json::to_string(d).expect("documents serialize");
        pipe.hset(keys.stats(), &field, json).ignore();
        if let (false, Some(sd)) = (d.group.is_empty(), d.stddev) {
            let score: f64 = sd.try_into().unwrap_or(0.0);
            pipe.zadd(keys.rank(&d.group), &field, score).ignore();
            pipe.zadd(keys.rank_seen(), &field, now).ignore();
        }
    }
    pipe.query_async(redis).await
}

async fn load_loop(
    core: Arc<Mutex<Core>>,
    deps: LiveDeps,
    mut rx: mpsc::UnboundedReceiver<Load>,
    token: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(deps.cfg.load_concurrency));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let job = tokio::select! {
            () = token.cancelled() => break,
            j = rx.recv() => match j { Some(j) => j, None => break },
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (core, deps, token) = (core.clone(), deps.clone(), token.clone());
        running.spawn(async move {
            let _permit = permit;
            let mut delay = Duration::from_millis(500);
            // Retry until it works (Postgres down) or the slot moved on; the live trades keep
            // flowing meanwhile, only the history part is missing.
            loop {
                match load_one(&core, &deps, &job).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, ?job, "rebuilding live windows failed; retrying");
                        tokio::select! {
                            () = token.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(30));
                        let current = match &job {
                            Load::Rebuild { slot, generation, .. }
                            | Load::Refresh { slot, generation, .. } => {
                                with_tap(&core, |t| t.slot_mut(*slot, *generation).is_some())
                            }
                        };
                        if current != Some(true) {
                            return;
                        }
                    }
                }
            }
        });
    }
    running.shutdown().await;
}

async fn load_one(core: &Arc<Mutex<Core>>, deps: &LiveDeps, job: &Load) -> anyhow::Result<()> {
    let now = now_ms();
    let since_sec = now
        - deps
            .vwap
            .intervals
            .iter()
            .map(|s| s.ms())
            .max()
            .unwrap_or(0)
        - 1_000;
    let since_min = Span::MINUTE.floor(now) - Span::DAY.ms() - 60_000;
    match job {
        Load::Rebuild {
            slot,
            generation,
            key,
        } => {
            let inst = deps.ids.id_of(&deps.db, key).await?;
            let group = rank_group(&deps.db, key).await?;
            let rec = read::recent(&deps.db, inst, since_sec, since_min, None).await?;
            with_tap(core, |t| {
                if let Some(s) = t.slot_mut(*slot, *generation) {
                    s.group = group;
                    s.rebuilt = true;
                    s.live
                        .apply_validated(rec.through_ms, &rec.secs, &rec.minutes);
                    for tr in &rec.tail {
                        let id = tr.trade_id as u64;
                        // This node's own trades are already in the windows.
                        if s.live_from.is_some_and(|f| id >= f) {
                            continue;
                        }
                        s.live.add_trade(id, tr.price, tr.qty, tr.ts_ms);
                        if s.last.is_none_or(|(l, _)| id > l) {
                            s.last = Some((id, tr.price));
                        }
                    }
                }
            });
            metrics::counter!("pricefeed_live_rebuilds_total").increment(1);
        }
        Load::Refresh {
            slot,
            generation,
            key,
            ..
        } => {
            let Some(from) = with_tap(core, |t| {
                t.slot_mut(*slot, *generation).map(|s| s.live.through())
            })
            .flatten() else {
                return Ok(());
            };
            let inst = deps.ids.id_of(&deps.db, key).await?;
            let since_s = since_sec.max(from.saturating_add(1));
            let since_m = since_min.max(Span::MINUTE.floor(from.saturating_add(1)));
            // Confirmed buckets only: the tail stays what this node accepted.
            let rec = read::recent(&deps.db, inst, since_s, since_m, Some(i64::MIN)).await?;
            with_tap(core, |t| {
                if let Some(s) = t.slot_mut(*slot, *generation) {
                    s.live
                        .apply_validated(rec.through_ms, &rec.secs, &rec.minutes);
                }
            });
            metrics::counter!("pricefeed_live_refreshes_total").increment(1);
        }
    }
    Ok(())
}

/// `market:QUOTE` of an instrument: spot pairs by their quote asset, derivatives by their
/// underlying's.
async fn rank_group(db: &PgPool, key: &InstrumentKey) -> Result<Option<String>, sqlx::Error> {
    let quote: Option<String> = match key.market() {
        Market::Spot => {
            sqlx::query_scalar("SELECT quote_asset FROM underlyings WHERE symbol = $1")
                .bind(key.symbol_str())
                .fetch_optional(db)
                .await?
        }
        m => sqlx::query_scalar(
            "SELECT u.quote_asset FROM derivatives d JOIN underlyings u ON u.id = d.underlying_id \
                 WHERE d.symbol = $1 AND d.market = $2",
        )
        .bind(key.symbol_str())
        .bind(m.as_str())
        .fetch_optional(db)
        .await?,
    };
    Ok(quote.map(|q| format!("{}:{q}", key.market())))
}

async fn reconciled_loop(core: Arc<Mutex<Core>>, deps: LiveDeps, token: CancellationToken) {
    struct L(Arc<Mutex<Core>>);
    impl crate::pubsub::Listener for L {
        fn message(&mut self, payload: &[u8]) {
            let Ok(n) = serde_json::from_slice::<Reconciled>(payload) else {
                tracing::warn!("malformed reconciled notice ignored");
                return;
            };
            let Some(key) = pricefeed_store::protocol::doc_key(&n.market, &n.symbol) else {
                return;
            };
            with_tap(&self.0, |t| t.request_refresh(&key, n.through_ms));
        }
    }
    let mut l = L(core);
    crate::pubsub::listen(
        &deps.redis_endpoint,
        &deps.keys.reconciled(),
        "reconciled notices",
        Duration::from_secs(1),
        crate::pubsub::Keepalive::default(),
        &token,
        &mut l,
    )
    .await;
}
