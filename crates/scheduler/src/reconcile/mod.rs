//! REST reconciliation: the broker's REST trade history is the truth, and the WebSocket may
//! drop, duplicate, corrupt or invent trades. One recurring worker job per instrument (kind
//! `reconcile`, key = instrument id) walks the REST history from the instrument's validated
//! cursor, compares it with what the nodes stored, fixes the stored history, merges the
//! per-second and per-minute buckets, writes the VWAP history and advances the cursor — one
//! transaction per page ([`pricefeed_store::history::reconcile::commit`]), so it is
//! restart-safe and safe with any number of worker replicas.
//!
//! What is fetched (docs/decisions/0012-reconciliation-rest-strategy.md):
//! - **spot**: `aggTrades` by aggregate id (weight 4, up to 1,000 aggregates ≈ 1,600 trades),
//!   which confirms every range whose stored trades add up; `historicalTrades` (weight 25) only
//!   for the aggregates that disagree;
//! - **USD-M**: `aggTrades` by id (the futures feed carries aggregate trades, so they are the
//!   stored rows);
//! - **options**: the recent `trades` (weight 5) when they reach back to the cursor, which is
//!   the usual case for options that trade a few times a minute; `historicalTrades` (weight 20)
//!   by id otherwise (no aggregates there).
//!
//! Weight: every call first takes its weight from a per-market budget
//! (`reconcile.weight_budget_per_min`, leaving the rest of the exchange's per-IP limit to the
//! nodes' gap backfill and the instrument sync) and pauses while the broker reports the IP
//! close to its limit or a 429/418 ban runs.
//!
//! - [`truth`]: fetching pages of truth; [`jobs`]: the leader task that keeps one job per
//!   listed instrument and reports the lag.

pub mod jobs;
pub mod truth;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pricefeed_broker::rest_client::RestClient;
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_runtime::config::{ConfigError, Validate};
use pricefeed_store::history::partitions::KnownDays;
use pricefeed_store::history::reconcile::{self as store, Advance, HistorySpec, Outcome, Step};
use pricefeed_store::history::{RetentionConfig, VwapConfig, ids};
use pricefeed_store::jobs::{self as jobq, Claimed, Jobs};
use pricefeed_store::protocol::{Keys, Reconciled};
use pricefeed_store::redis_conn::RedisConn;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::worker::{JobHandler, JobOutcome};
use truth::{Pacer, Page, Truth};

/// `[reconcile]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// A caught-up instrument is checked again after this; with `settle_ms` it bounds the lag
    /// of the validated cursor.
    pub interval_ms: u64,
    /// Trades younger than this may not be in the REST history yet (and covers clock skew).
    pub settle_ms: u64,
    /// Pages one job run walks before yielding to other instruments.
    pub pages_per_run: u32,
    /// Rows per REST page (the exchange serves at most 1000).
    pub page_limit: u16,
    /// REST weight per minute reconciliation may spend per market (the exchange allows 6000 per
    /// IP, shared with the nodes' gap backfill and the instrument sync).
    pub weight_budget_per_min: u32,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            interval_ms: 90_000,
            settle_ms: 2_000,
            pages_per_run: 20,
            page_limit: 1_000,
            weight_budget_per_min: 4_000,
        }
    }
}

impl Validate for ReconcileConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("reconcile.{key}"), msg));
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return k("interval_ms", "must be between 100 and 3600000");
        }
        if self.settle_ms > 60_000 {
            return k("settle_ms", "must be at most 60000");
        }
        if !(1..=1_000).contains(&self.pages_per_run) {
            return k("pages_per_run", "must be between 1 and 1000");
        }
        if !(10..=1_000).contains(&self.page_limit) {
            return k("page_limit", "must be between 10 and 1000");
        }
        if !(100..=6_000).contains(&self.weight_budget_per_min) {
            return k("weight_budget_per_min", "must be between 100 and 6000");
        }
        Ok(())
    }
}

/// The `reconcile` job handler.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").finish_non_exhaustive()
    }
}

struct Inner {
    db: PgPool,
    redis: RedisConn,
    keys: Keys,
    truth: Truth,
    days: KnownDays,
    cfg: ReconcileConfig,
    history: HistorySpec,
    retention: RetentionConfig,
    names: Mutex<HashMap<i32, InstrumentKey>>,
}

impl Reconciler {
    pub fn new(
        db: PgPool,
        redis: RedisConn,
        keys: Keys,
        client: RestClient,
        cfg: ReconcileConfig,
        vwap: &VwapConfig,
        retention: RetentionConfig,
    ) -> Self {
        let pacer = Pacer::new(cfg.weight_budget_per_min);
        Self {
            inner: Arc::new(Inner {
                db,
                redis,
                keys,
                truth: Truth {
                    client,
                    pacer,
                    limit: cfg.page_limit,
                },
                days: KnownDays::default(),
                history: HistorySpec {
                    intervals: vwap.intervals.clone(),
                    cadence: vwap.history_cadence,
                },
                cfg,
                retention,
                names: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Walks up to `reconcile.pages_per_run` pages of one instrument; returns when to come back.
    pub async fn reconcile(
        &self,
        inst: i32,
        fence: Option<(i64, i64)>,
        token: &CancellationToken,
    ) -> anyhow::Result<Duration> {
        let me = &self.inner;
        let key = self.key_of(inst).await?;
        // ±10 % jitter spreads the instruments over the interval instead of in bursts.
        let interval =
            Duration::from_millis(me.cfg.interval_ms).mul_f64(0.9 + 0.2 * rand::random::<f64>());
        for _ in 0..me.cfg.pages_per_run {
            if token.is_cancelled() {
                return Ok(Duration::ZERO);
            }
            let cur = store::cursor(&me.db, inst).await?;
            let now = now_ms();
            let settled = now - me.cfg.settle_ms as i64;
            let page = match cur.last_id {
                None => match store::first_stored(&me.db, inst).await? {
                    // Nothing stored yet: nothing to confirm.
                    None => return Ok(interval),
                    Some((id, ts)) => me.truth.first_page(&key, id as u64, ts).await,
                },
                Some(last) => me.truth.next_page(&key, last as u64, &cur).await,
            };
            let page = match page {
                Ok(p) => p,
                // Out of budget (or banned): free the worker slot, come back when it refills.
                Err(truth::Fetch::Budget(wait)) => return Ok(wait),
                Err(truth::Fetch::Rest(e)) => return Err(e.into()),
            };
            let at_head = page.at_head;
            if let Some(skip) = page.skip {
                // The broker no longer has the range before this page: keep what is stored
                // there, unconfirmed, and go on after it.
                let through = Span::SECOND.floor(skip.to_ms) - 1;
                let step = Step {
                    inst,
                    fence,
                    from: cur,
                    after: page.after as i64,
                    units: Vec::new(),
                    raw: HashMap::new(),
                    skip: Some(skip),
                    advance: Advance {
                        last_id: skip.to_id,
                        last_agg_id: page.skip_agg,
                        through_ms: through.max(cur.through_ms.unwrap_or(i64::MIN)),
                        through_id: cur.through_id.unwrap_or(i64::MIN),
                    },
                    history: me.history.clone(),
                    raw_from_ms: me.retention.raw_from_ms(now),
                };
                metrics::counter!("pricefeed_reconcile_skipped_total", "market" => key.market().as_str())
                    .increment((skip.to_id - skip.from_id + 1).max(0) as u64);
                tracing::warn!(%key, from_id = skip.from_id, to_id = skip.to_id, "broker no longer serves this range; stored trades there stay unconfirmed");
                match self.commit(&key, step).await? {
                    Committed::Yes => continue,
                    Committed::No => return Ok(Duration::ZERO),
                }
            }
            let step = self.step(inst, fence, cur, &page, at_head, settled, now);
            match self.commit(&key, step).await? {
                Committed::Yes => {}
                Committed::No => return Ok(Duration::ZERO),
            }
            if at_head {
                return Ok(interval);
            }
        }
        // Behind: come back at once (other instruments' due jobs are claimed first).
        Ok(Duration::ZERO)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        inst: i32,
        fence: Option<(i64, i64)>,
        cur: store::Cursor,
        page: &Page,
        at_head: bool,
        settled: i64,
        now: i64,
    ) -> Step {
        let me = &self.inner;
        let prev_through = cur.through_ms.unwrap_or(i64::MIN);
        let through = if at_head {
            // Every trade timed before `settled` is in REST by now, and all of them are walked.
            Span::SECOND.floor(settled) - 1
        } else {
            // More pages follow: the seconds before the last unit's are complete.
            page.units
                .last()
                .map_or(prev_through, |u| Span::SECOND.floor(u.ts_ms) - 1)
        }
        .max(prev_through);
        // At the head, trades younger than the horizon wait for the next run: the nodes' writers
        // have had `settle_ms` to store them, so they are confirmed as stored rather than
        // inserted here and then skipped by the writer.
        let keep = if at_head {
            page.units.partition_point(|u| u.ts_ms <= through)
        } else {
            page.units.len()
        };
        let units = &page.units[..keep];
        let last_id = units.last().map_or(page.after as i64, |u| u.last_id as i64);
        let last_agg = match keep {
            0 => None,
            k => page.agg_ids.get(k - 1).copied(),
        };
        let through_id = units
            .iter()
            .filter(|u| u.ts_ms <= through)
            .map(|u| u.last_id as i64)
            .max()
            .unwrap_or(i64::MIN)
            .max(cur.through_id.unwrap_or(i64::MIN));
        Step {
            inst,
            fence,
            from: cur,
            after: page.after as i64,
            units: units.to_vec(),
            raw: HashMap::new(),
            skip: None,
            advance: Advance {
                last_id,
                last_agg_id: last_agg.map(|a| a as i64).or(cur.last_agg_id),
                through_ms: through,
                through_id,
            },
            history: me.history.clone(),
            raw_from_ms: me.retention.raw_from_ms(now),
        }
    }

    /// Commits a step, fetching per-trade history for disagreeing aggregates first when the
    /// plan asks for it.
    async fn commit(&self, key: &InstrumentKey, mut step: Step) -> anyhow::Result<Committed> {
        let me = &self.inner;
        let market = key.market().as_str();
        for _ in 0..4 {
            match store::commit(&me.db, &me.days, &step).await? {
                Outcome::Committed {
                    confirmed,
                    inserted,
                    deleted,
                    points,
                } => {
                    metrics::counter!("pricefeed_reconcile_trades_confirmed_total", "market" => market)
                        .increment(confirmed);
                    metrics::counter!("pricefeed_reconcile_trades_inserted_total", "market" => market)
                        .increment(inserted);
                    metrics::counter!("pricefeed_reconcile_trades_removed_total", "market" => market)
                        .increment(deleted);
                    metrics::counter!("pricefeed_reconcile_steps_total", "outcome" => "committed")
                        .increment(1);
                    if inserted + deleted > 0 {
                        tracing::info!(%key, inserted, deleted, confirmed, "reconciliation fixed stored history");
                    }
                    tracing::debug!(%key, confirmed, points, through = step.advance.through_ms, "reconciled");
                    self.announce(key, step.advance.through_ms, inserted + deleted > 0)
                        .await;
                    return Ok(Committed::Yes);
                }
                Outcome::Replan(p) => {
                    let raw = match me.truth.fills(key, &p.need_raw).await {
                        Ok(r) => r,
                        Err(truth::Fetch::Budget(wait)) => {
                            tokio::time::sleep(wait.min(std::time::Duration::from_secs(5))).await;
                            continue;
                        }
                        Err(truth::Fetch::Rest(e)) => return Err(e.into()),
                    };
                    for t in raw {
                        step.raw.insert(t.id, t);
                    }
                    metrics::counter!("pricefeed_reconcile_steps_total", "outcome" => "fills")
                        .increment(1);
                }
                o @ (Outcome::Stale | Outcome::Fenced) => {
                    metrics::counter!("pricefeed_reconcile_steps_total", "outcome" => if o == Outcome::Stale { "stale" } else { "fenced" })
                        .increment(1);
                    tracing::info!(%key, outcome = ?o, "reconciliation step not committed");
                    return Ok(Committed::No);
                }
            }
        }
        anyhow::bail!("{key}: stored trades kept changing while reconciling; retrying later")
    }

    /// Tells the owning node its windows can take the confirmed history (best effort: a lost
    /// notice is made up by the next one).
    async fn announce(&self, key: &InstrumentKey, through_ms: i64, changed: bool) {
        let me = &self.inner;
        let msg = Reconciled {
            market: key.market().as_str().to_string(),
            symbol: key.symbol_str().to_string(),
            through_ms,
            changed,
        };
        let mut redis = me.redis.clone();
        let body = serde_json::to_string(&msg).expect("notices serialize");
        if let Err(e) = redis::cmd("PUBLISH")
            .arg(me.keys.reconciled())
            .arg(body)
            .query_async::<()>(&mut redis)
            .await
        {
            tracing::debug!(error = %e, "publishing a reconciled notice failed");
        }
    }

    async fn key_of(&self, inst: i32) -> anyhow::Result<InstrumentKey> {
        if let Some(k) = self.inner.names.lock().unwrap().get(&inst) {
            return Ok(k.clone());
        }
        let k = ids::key_of(&self.inner.db, inst)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no instrument with id {inst}"))?;
        self.inner.names.lock().unwrap().insert(inst, k.clone());
        Ok(k)
    }
}

enum Committed {
    Yes,
    No,
}

/// Wall clock, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl JobHandler for Reconciler {
    fn kind(&self) -> &'static str {
        jobq::RECONCILE
    }

    fn run(
        &self,
        job: Claimed,
        _jobs: Jobs,
        token: CancellationToken,
    ) -> BoxFuture<'static, JobOutcome> {
        let this = self.clone();
        Box::pin(async move {
            let Ok(inst) = job.key.parse::<i32>() else {
                return JobOutcome::Dead(format!("bad instrument id {:?}", job.key));
            };
            match this.reconcile(inst, Some(job.fence()), &token).await {
                Ok(after) => JobOutcome::Reschedule(after),
                Err(e) => {
                    let retry = e
                        .downcast_ref::<pricefeed_broker::rest_client::RestError>()
                        .and_then(|r| r.retry_after())
                        .unwrap_or(Duration::from_secs(5));
                    tracing::warn!(inst, error = %format!("{e:#}"), "reconciliation failed; retrying");
                    JobOutcome::Retry(retry, format!("{e:#}"))
                }
            }
        })
    }
}
