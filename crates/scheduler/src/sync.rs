//! Instrument sync, run by the leader only: underlyings (spot `exchangeInfo`) every
//! `scheduler.sync_underlyings_ms`, derivatives (USD-M futures and options `exchangeInfo`) every
//! `scheduler.sync_derivatives_ms`, each applied to Postgres in one transaction fenced by the
//! lease term (`pricefeed_store::sync`).
//!
//! - A failed sync (broker down, 429/418, bad payload, database error) writes nothing and is
//!   retried after a jittered exponential backoff (backon), never sooner than a `Retry-After` the
//!   broker asked for; the two kinds back off independently so one failing market does not starve
//!   the other. Success resets the backoff and the next run is one period later.
//! - A sync that changed something publishes `{prefix}:instruments:changed` (nodes refresh their
//!   instrument cache) and wakes the leader loop for an immediate rebalance, so a new listing is
//!   assigned to a node right away instead of on the next tick.
//! - Derivatives whose underlying is not stored yet (a new underlying listed with its chain)
//!   trigger an immediate underlying sync followed by a derivative sync, once per new orphan set;
//!   orphans that stay (a futures pair with no spot pair) are only logged.
//! - A fenced write (a newer leader exists) stops this task; the leader loop steps down on its
//!   next lease renewal.
//!
//! Metrics: `pricefeed_sync_runs_total{kind,result}` (result = ok | error | fenced) and
//! `pricefeed_sync_instruments{kind}` (instruments written by the last successful run).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use pricefeed_broker::rest::{
    FuturesExchangeInfo, OptionsExchangeInfo, SpotExchangeInfo, step_size, tick_size,
};
use pricefeed_broker::rest_client::{RestClient, RestError};
use pricefeed_domain::instrument::{Derivative, DerivativeKind, Symbol, Underlying};
use pricefeed_store::redis_conn::RedisConn;
use pricefeed_store::sync::{SyncError, SyncOutcome};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The two sync kinds (metric label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Underlyings,
    Derivatives,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Underlyings => "underlyings",
            Kind::Derivatives => "derivatives",
        }
    }
}

/// Redis channel announcing a changed instrument set.
pub fn changed_channel(prefix: &str) -> String {
    format!("{prefix}:instruments:changed")
}

/// Markets whose derivatives one derivative sync covers (and may mark delisted).
pub const DERIVATIVE_MARKETS: [&str; 2] = ["usdm", "options"];

/// Longest symbol the `underlyings` table accepts (its CHECK constraint).
const MAX_UNDERLYING_SYMBOL: usize = 40;

/// Why one sync run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncFailure {
    #[error(transparent)]
    Rest(#[from] RestError),
    #[error(transparent)]
    Store(#[from] SyncError),
}

impl SyncFailure {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncFailure::Rest(e) => e.retry_after(),
            SyncFailure::Store(_) => None,
        }
    }

    fn is_fenced(&self) -> bool {
        matches!(self, SyncFailure::Store(SyncError::Fenced { .. }))
    }
}

/// Everything a sync needs; cloned into each leadership's task.
#[derive(Debug, Clone)]
pub struct Syncer {
    pub client: RestClient,
    pub db: PgPool,
    pub redis: RedisConn,
    pub prefix: String,
    pub underlyings_every: Duration,
    pub derivatives_every: Duration,
    /// Wakes the leader loop for an immediate rebalance.
    pub rebalance_now: Arc<Notify>,
}

/// Per-kind schedule: next run and the backoff of the current failure streak.
struct Schedule {
    kind: Kind,
    every: Duration,
    next: Instant,
    backoff: Option<ExponentialBackoff>,
}

impl Schedule {
    fn new(kind: Kind, every: Duration) -> Self {
        Self {
            kind,
            every,
            next: Instant::now(),
            backoff: None,
        }
    }

    fn succeeded(&mut self) {
        self.backoff = None;
        self.next = Instant::now() + self.every;
    }

    fn failed(&mut self, e: &SyncFailure) -> Duration {
        let every = self.every;
        let b = self.backoff.get_or_insert_with(|| {
            ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(250).min(every))
                .with_max_delay(every.min(Duration::from_secs(60)))
                .without_max_times()
                .build()
        });
        let delay = b.next().unwrap_or(every);
        // Never call again before the broker allows it (a call while banned escalates the ban).
        let delay = delay.max(e.retry_after().unwrap_or_default());
        self.next = Instant::now() + delay;
        delay
    }
}

impl crate::leader::LeaderTask for Syncer {
    fn name(&self) -> &'static str {
        "instrument sync"
    }
    fn run(
        &self,
        term: u64,
        token: CancellationToken,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.clone().run(term, token))
    }
}

impl Syncer {
    /// Runs while this process leads under `term`; returns when `token` is cancelled or a
    /// write is fenced off.
    pub async fn run(self, term: u64, token: CancellationToken) {
        let mut u = Schedule::new(Kind::Underlyings, self.underlyings_every);
        let mut d = Schedule::new(Kind::Derivatives, self.derivatives_every);
        let mut known_orphans: BTreeSet<Symbol> = BTreeSet::new();
        let requested = pricefeed_store::protocol::Keys::new(&self.prefix).sync_requested();
        let mut redis = self.redis.clone();
        loop {
            // Wake at the next scheduled run, or within a second of an admin's request
            // (`POST /api/v1/admin/sync` sets a key; a key, unlike a message, cannot be missed).
            let wake = u
                .next
                .min(d.next)
                .min(Instant::now() + std::time::Duration::from_secs(1));
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
            if let Ok(Some(by)) = redis::cmd("GETDEL")
                .arg(&requested)
                .query_async::<Option<String>>(&mut redis)
                .await
            {
                tracing::info!(admin = %by, "instrument sync requested by an admin");
                let now = Instant::now();
                u.next = now;
                d.next = now;
            }
            let mut resync_underlyings = false;
            // Underlyings first: derivatives reference them.
            for s in [&mut u, &mut d] {
                if Instant::now() < s.next {
                    continue;
                }
                let kind = s.kind;
                let res = tokio::select! {
                    () = token.cancelled() => return,
                    r = self.sync_once(kind, term) => r,
                };
                match res {
                    Ok(out) => {
                        s.succeeded();
                        let new_orphans: BTreeSet<Symbol> = out
                            .orphans
                            .iter()
                            .filter(|o| !known_orphans.contains(*o))
                            .cloned()
                            .collect();
                        if !new_orphans.is_empty() {
                            tracing::info!(count = new_orphans.len(), first = %new_orphans.first().map(Symbol::as_str).unwrap_or(""), "derivatives of unknown underlyings; syncing underlyings now");
                            known_orphans.extend(new_orphans);
                            resync_underlyings = true;
                        }
                    }
                    Err(e) if e.is_fenced() => {
                        metrics::counter!("pricefeed_sync_runs_total", "kind" => kind.as_str(), "result" => "fenced").increment(1);
                        tracing::warn!(term, error = %e, "instrument sync fenced off; stopping");
                        return;
                    }
                    Err(e) => {
                        metrics::counter!("pricefeed_sync_runs_total", "kind" => kind.as_str(), "result" => "error").increment(1);
                        let delay = s.failed(&e);
                        tracing::warn!(kind = kind.as_str(), error = %e, retry_in_ms = delay.as_millis() as u64, "instrument sync failed; nothing changed");
                    }
                }
            }
            // New orphans: run underlyings now, then derivatives again, in the next round.
            if resync_underlyings {
                let now = Instant::now();
                u.next = u.next.min(now);
                d.next = d.next.min(now);
            }
        }
    }

    /// One run of `kind`: fetch, map, apply in one transaction, announce changes.
    pub async fn sync_once(&self, kind: Kind, term: u64) -> Result<SyncOutcome, SyncFailure> {
        let started = std::time::Instant::now();
        let (out, skipped) = match kind {
            Kind::Underlyings => {
                let info = self.client.spot_exchange_info().await?;
                let (rows, skipped) = map_spot(&info);
                (
                    pricefeed_store::sync::sync_underlyings(&self.db, term, &rows).await?,
                    skipped,
                )
            }
            Kind::Derivatives => {
                // Both markets or neither: a derivative sync is one consistent snapshot.
                let (fut, opt) = tokio::join!(
                    self.client.futures_exchange_info(),
                    self.client.options_exchange_info()
                );
                let (mut rows, s1) = map_futures(&fut?);
                let (opts, s2) = map_options(&opt?);
                rows.extend(opts);
                (
                    pricefeed_store::sync::sync_derivatives(
                        &self.db,
                        term,
                        &DERIVATIVE_MARKETS,
                        &rows,
                    )
                    .await?,
                    s1 + s2,
                )
            }
        };
        metrics::counter!("pricefeed_sync_runs_total", "kind" => kind.as_str(), "result" => "ok")
            .increment(1);
        metrics::gauge!("pricefeed_sync_instruments", "kind" => kind.as_str()).set(out.seen as f64);
        tracing::info!(
            kind = kind.as_str(),
            term,
            seen = out.seen,
            changed = out.changed,
            delisted = out.delisted,
            orphans = out.orphans.len(),
            skipped,
            took_ms = started.elapsed().as_millis() as u64,
            "instrument sync done"
        );
        if out.any_change() {
            self.announce(kind, term, &out).await;
        }
        Ok(out)
    }

    /// Tells nodes and the leader loop that the instrument set changed. Best effort: the
    /// database is already committed, nodes also re-read on their own schedule, and the leader
    /// loop rebalances every tick anyway.
    async fn announce(&self, kind: Kind, term: u64, out: &SyncOutcome) {
        self.rebalance_now.notify_one();
        let msg = serde_json::json!({
            "kind": kind.as_str(),
            "term": term,
            "changed": out.changed,
            "delisted": out.delisted,
        })
        .to_string();
        let mut redis = self.redis.clone();
        let res: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(changed_channel(&self.prefix))
            .arg(msg)
            .query_async(&mut redis)
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot publish instruments changed; nodes will catch up on their own");
        }
    }
}

fn parse_symbol(s: &str, what: &str) -> Option<Symbol> {
    match Symbol::parse(s) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(symbol = s, error = %e, "skipping {what} with an unusable symbol");
            None
        }
    }
}

/// Spot pairs → underlyings (status verbatim). Returns the rows and how many were skipped.
pub fn map_spot(info: &SpotExchangeInfo) -> (Vec<Underlying>, usize) {
    let mut skipped = 0;
    let rows = info
        .symbols
        .iter()
        .filter_map(|s| {
            let sym = parse_symbol(&s.symbol, "spot pair")
                .filter(|sym| sym.as_str().len() <= MAX_UNDERLYING_SYMBOL);
            if sym.is_none() {
                skipped += 1;
            }
            Some(Underlying {
                symbol: sym?,
                base_asset: s.base_asset.clone(),
                quote_asset: s.quote_asset.clone(),
                status: s.status.clone(),
                tick_size: tick_size(&s.filters),
                step_size: step_size(&s.filters),
            })
        })
        .collect();
    (rows, skipped)
}

/// USD-M contracts → derivatives: `pair` is the underlying; `*PERPETUAL` contract types are
/// perpetuals (no expiry), anything else, including contract types we do not know, a future
/// expiring at `deliveryDate`.
pub fn map_futures(info: &FuturesExchangeInfo) -> (Vec<Derivative>, usize) {
    let mut skipped = 0;
    let rows = info
        .symbols
        .iter()
        .filter_map(|s| {
            let (Some(symbol), Some(underlying)) = (
                parse_symbol(&s.symbol, "futures contract"),
                parse_symbol(&s.pair, "futures pair"),
            ) else {
                skipped += 1;
                return None;
            };
            // TRADIFI_PERPETUAL and friends behave like PERPETUAL (no delivery).
            let perpetual = s.contract_type.ends_with("PERPETUAL");
            Some(Derivative {
                symbol,
                underlying,
                kind: if perpetual {
                    DerivativeKind::Perpetual
                } else {
                    DerivativeKind::Future
                },
                market: "usdm".into(),
                contract_type: Some(s.contract_type.clone()),
                expiry_ms: (!perpetual).then_some(s.delivery_date),
                strike: None,
                option_side: None,
                status: s.status.clone(),
                tick_size: tick_size(&s.filters),
                step_size: step_size(&s.filters),
            })
        })
        .collect();
    (rows, skipped)
}

/// Options → derivatives: `underlying` is the spot pair; a missing `status` means listed
/// (the real exchange omits it); a side other than CALL/PUT cannot be stored and is skipped.
pub fn map_options(info: &OptionsExchangeInfo) -> (Vec<Derivative>, usize) {
    let mut skipped = 0;
    let rows = info
        .option_symbols
        .iter()
        .filter_map(|s| {
            let side = s.side.to_ascii_uppercase();
            let (Some(symbol), Some(underlying), true) = (
                parse_symbol(&s.symbol, "option"),
                parse_symbol(&s.underlying, "option underlying"),
                side == "CALL" || side == "PUT",
            ) else {
                skipped += 1;
                return None;
            };
            Some(Derivative {
                symbol,
                underlying,
                kind: DerivativeKind::Option,
                market: "options".into(),
                contract_type: None,
                expiry_ms: Some(s.expiry_date),
                strike: Some(s.strike_price),
                option_side: Some(side),
                status: s.status.clone().unwrap_or_else(|| "TRADING".into()),
                tick_size: tick_size(&s.filters),
                step_size: step_size(&s.filters),
            })
        })
        .collect();
    (rows, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn futures_mapping_tolerates_unknown_contract_types() {
        let raw = r#"{"timezone":"UTC","serverTime":1,"rateLimits":[],"symbols":[
          {"symbol":"BTCUSDT","pair":"BTCUSDT","contractType":"PERPETUAL","deliveryDate":4133404800000,"onboardDate":1,"status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT","marginAsset":"USDT","pricePrecision":2,"quantityPrecision":3,"filters":[{"filterType":"PRICE_FILTER","minPrice":"0.1","maxPrice":"1000000","tickSize":"0.10"}]},
          {"symbol":"BTCUSDT_261225","pair":"BTCUSDT","contractType":"CURRENT_QUARTER","deliveryDate":1798185600000,"onboardDate":1,"status":"SETTLING","baseAsset":"BTC","quoteAsset":"USDT","marginAsset":"USDT","pricePrecision":2,"quantityPrecision":3,"filters":[]},
          {"symbol":"BTCUSDT_X","pair":"BTCUSDT","contractType":"SOMETHING_NEW","deliveryDate":1798185600001,"onboardDate":1,"status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT","marginAsset":"USDT","pricePrecision":2,"quantityPrecision":3,"filters":[]},
          {"symbol":"bad symbol","pair":"BTCUSDT","contractType":"PERPETUAL","deliveryDate":0,"onboardDate":1,"status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT","marginAsset":"USDT","pricePrecision":2,"quantityPrecision":3,"filters":[]}]}"#;
        let info: FuturesExchangeInfo = serde_json::from_str(raw).unwrap();
        let (rows, skipped) = map_futures(&info);
        assert_eq!(skipped, 1);
        assert_eq!(rows[0].kind, DerivativeKind::Perpetual);
        assert_eq!(rows[0].expiry_ms, None);
        assert_eq!(rows[0].tick_size, Some(Decimal::new(10, 2)));
        assert_eq!(rows[1].kind, DerivativeKind::Future);
        assert_eq!(rows[1].expiry_ms, Some(1_798_185_600_000));
        assert_eq!(rows[1].status, "SETTLING");
        assert_eq!(rows[2].kind, DerivativeKind::Future);
        assert_eq!(rows[2].contract_type.as_deref(), Some("SOMETHING_NEW"));
        assert!(
            rows.iter()
                .all(|r| r.underlying.as_str() == "BTCUSDT" && r.market == "usdm")
        );
    }

    #[test]
    fn options_mapping_reads_strike_side_expiry() {
        let raw = r#"{"timezone":"UTC","serverTime":1,"optionContracts":[],"optionAssets":[],"rateLimits":[],
          "optionSymbols":[
           {"symbol":"BTC-261127-90000-C","underlying":"BTCUSDT","side":"CALL","strikePrice":"90000","expiryDate":1795766400000,"unit":1,"quoteAsset":"USDT","priceScale":2,"quantityScale":2,"minQty":"0.01","maxQty":"100","makerFeeRate":"0.0002","takerFeeRate":"0.0002","filters":[]},
           {"symbol":"BTC-261127-80000-P","underlying":"BTCUSDT","side":"PUT","strikePrice":80000,"expiryDate":1795766400000,"unit":1,"quoteAsset":"USDT","priceScale":2,"quantityScale":2,"minQty":"0.01","maxQty":"100","makerFeeRate":"0.0002","takerFeeRate":"0.0002","filters":[],"status":"HALT"},
           {"symbol":"BTC-261127-70000-X","underlying":"BTCUSDT","side":"STRADDLE","strikePrice":"70000","expiryDate":1795766400000,"unit":1,"quoteAsset":"USDT","priceScale":2,"quantityScale":2,"minQty":"0.01","maxQty":"100","makerFeeRate":"0.0002","takerFeeRate":"0.0002","filters":[]}]}"#;
        let info: OptionsExchangeInfo = serde_json::from_str(raw).unwrap();
        let (rows, skipped) = map_options(&info);
        assert_eq!((rows.len(), skipped), (2, 1));
        assert_eq!(rows[0].strike, Some(Decimal::from(90_000)));
        assert_eq!(rows[0].option_side.as_deref(), Some("CALL"));
        assert_eq!(rows[0].status, "TRADING");
        assert_eq!(
            rows[1].strike,
            Some(Decimal::from(80_000)),
            "numeric strike parsed too"
        );
        assert_eq!(rows[1].status, "HALT");
        assert_eq!(rows[1].expiry_ms, Some(1_795_766_400_000));
    }

    #[test]
    fn spot_mapping_keeps_unknown_status_and_skips_unstorable_symbols() {
        let raw = r#"{"timezone":"UTC","serverTime":1,"rateLimits":[],"symbols":[
          {"symbol":"ETHBTC","status":"CANCEL_ONLY","baseAsset":"ETH","baseAssetPrecision":8,"quoteAsset":"BTC","quotePrecision":8,"quoteAssetPrecision":8,"filters":[{"filterType":"LOT_SIZE","minQty":"0.001","maxQty":"100000","stepSize":"0.00100000"}]},
          {"symbol":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","status":"TRADING","baseAsset":"A","baseAssetPrecision":8,"quoteAsset":"B","quotePrecision":8,"quoteAssetPrecision":8,"filters":[]}]}"#;
        let info: SpotExchangeInfo = serde_json::from_str(raw).unwrap();
        let (rows, skipped) = map_spot(&info);
        assert_eq!((rows.len(), skipped), (1, 1));
        assert_eq!(rows[0].status, "CANCEL_ONLY");
        assert_eq!(rows[0].step_size, Some(Decimal::new(1, 3)));
    }
}
