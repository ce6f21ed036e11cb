//! Gap backfill: fetches missing trade ids from the broker's REST history and feeds them through
//! the same validation and dedup as WS trades.
//!
//! Bounded: at most `backfill_concurrency` gaps are fetched at once per node; each page is at
//! most 1000 ids, and reaches past its own gap to the instrument's last open one, so one page
//! closes every gap it spans. Within the REST weight budget: the REST client refuses to send while a
//! 429/418 ban is running (we wait it out, however long: that is not a failure, and the gap
//! stays open only when the broker no longer has its trades or other errors persist), and we
//! pause while the minute's used weight is above [`WEIGHT_PAUSE_AT`] so live backfills never
//! push the IP into a ban.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pricefeed_broker::rest_client::{RestClient, RestError};
use pricefeed_domain::instrument::{Market, Symbol};
use pricefeed_domain::trade::Trade;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connector::now_ms;
use super::state::{Core, GapJob};

/// Pause backfill while the minute's used weight is above this (the exchange limit is 6000).
pub const WEIGHT_PAUSE_AT: u64 = 4_800;

/// Trade history by id: the broker REST client in production, a fake in tests.
pub trait TradeHistory: Send + Sync + 'static {
    /// Up to `limit` trades from `from_id` (inclusive), oldest first. For USD-M the ids are
    /// aggregate ids, as on the `@aggTrade` stream.
    fn historical_trades<'a>(
        &'a self,
        market: Market,
        symbol: &'a Symbol,
        from_id: u64,
        limit: u16,
    ) -> BoxFuture<'a, Result<Vec<Trade>, HistoryError>>;

    /// How long to hold off before the next call on `market` (ban or weight budget).
    fn hold_off(&self, _market: Market) -> Option<Duration> {
        None
    }
}

/// A failed history call: `retry_after` when the broker said when to come back.
#[derive(Debug, Clone)]
pub struct HistoryError {
    pub msg: String,
    pub retry_after: Option<Duration>,
    /// Retrying cannot help (e.g. the ids are older than the broker keeps).
    pub permanent: bool,
}

impl TradeHistory for RestClient {
    fn historical_trades<'a>(
        &'a self,
        market: Market,
        symbol: &'a Symbol,
        from_id: u64,
        limit: u16,
    ) -> BoxFuture<'a, Result<Vec<Trade>, HistoryError>> {
        Box::pin(async move {
            RestClient::historical_trades(self, market, symbol, Some(from_id), limit)
                .await
                .map_err(|e: RestError| HistoryError {
                    retry_after: e.retry_after(),
                    // -1130: fromId older than the retained history; asking again cannot help.
                    permanent: matches!(&e, RestError::Api { api, .. } if api.code == -1130),
                    msg: e.to_string(),
                })
        })
    }

    fn hold_off(&self, market: Market) -> Option<Duration> {
        if let Some(d) = self.banned_for(market) {
            return Some(d);
        }
        (self.used_weight(market).unwrap_or(0) >= WEIGHT_PAUSE_AT).then(|| Duration::from_secs(1))
    }
}

/// Runs gap jobs from `rx` with bounded concurrency until shutdown.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<GapJob>,
    history: Arc<dyn TradeHistory>,
    core: Arc<Mutex<Core>>,
    concurrency: usize,
    tracker: TaskTracker,
    token: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    loop {
        let job = tokio::select! {
            () = token.cancelled() => return,
            j = rx.recv() => match j { Some(j) => j, None => return },
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (history, core, token) = (history.clone(), core.clone(), token.clone());
        tracker.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = fill(job, &*history, &core) => {}
            }
            drop(permit);
        });
    }
}

/// Pages through one gap until it is closed, the instrument left the slice, or retries run out.
async fn fill(job: GapJob, history: &dyn TradeHistory, core: &Mutex<Core>) {
    let market = job.key.market();
    let symbol = job.key.symbol();
    let end = *job.ids.end();
    let mut from = *job.ids.start();
    let mut failures = 0u32;
    metrics::counter!("pricefeed_backfill_jobs_total", "market" => market.as_str()).increment(1);
    while from <= end && core.lock().unwrap().still_missing(&job.key, &(from..=end)) {
        if let Some(d) = history.hold_off(market) {
            tokio::time::sleep(d).await;
            continue;
        }
        // One page covers the later gaps too (a request costs the same weight whatever its
        // limit): under a steady drop rate every small gap asking on its own outran the weight
        // budget, and the tracker had to abandon the oldest gaps. Later jobs whose ids this
        // page filled skip their request (`still_missing`).
        let through = core
            .lock()
            .unwrap()
            .last_missing(&job.key)
            .unwrap_or(end)
            .max(end);
        let limit = (through - from + 1).min(1000) as u16;
        match history
            .historical_trades(market, &symbol, from, limit)
            .await
        {
            Ok(trades) if trades.is_empty() => {
                tracing::warn!(key = %job.key, from, end, "backfill: broker returned no trades; gap left open");
                return;
            }
            Ok(trades) => {
                failures = 0;
                let last = trades.iter().map(|t| t.trade_id).max().unwrap_or(from);
                let page: Vec<Trade> = trades
                    .into_iter()
                    .filter(|t| t.trade_id <= through)
                    .collect();
                let n = core.lock().unwrap().on_backfill(&job.key, &page, now_ms());
                metrics::counter!("pricefeed_backfilled_trades_total", "market" => market.as_str())
                    .increment(n);
                from = last.max(from) + 1;
            }
            Err(e) if e.permanent => {
                tracing::warn!(key = %job.key, from, end, error = e.msg, "backfill impossible; gap left open");
                return;
            }
            // A 429/418 (or a hold another process recorded) says when to come back: waiting
            // for it is not a failure. Counting it as one gave a gap up after six refusals,
            // i.e. after a ~30-s limit, though the broker still had every trade of it.
            Err(HistoryError {
                retry_after: Some(wait),
                ..
            }) => {
                metrics::counter!("pricefeed_backfill_held_total", "market" => market.as_str())
                    .increment(1);
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    tracing::warn!(key = %job.key, from, end, error = e.msg, "backfill gave up after retries; gap left open");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250 << failures.min(6))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use pricefeed_broker::ws::TradeRef;
    use pricefeed_domain::instrument::InstrumentKey;
    use pricefeed_domain::sequence::SeqConfig;
    use rust_decimal::Decimal;

    use super::*;
    use crate::ingest::handoff::Resume;
    use crate::ingest::state::Verdict;

    /// The broker's history: every id, and a count of the calls.
    struct Book {
        calls: AtomicUsize,
        ts: i64,
    }

    impl TradeHistory for Book {
        fn historical_trades<'a>(
            &'a self,
            _market: Market,
            symbol: &'a Symbol,
            from_id: u64,
            limit: u16,
        ) -> BoxFuture<'a, Result<Vec<Trade>, HistoryError>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let page = (from_id..from_id + u64::from(limit))
                .map(|id| Trade {
                    symbol: symbol.clone(),
                    trade_id: id,
                    price: Decimal::ONE,
                    qty: Decimal::ONE,
                    ts_ms: self.ts,
                    buyer_is_maker: false,
                })
                .collect();
            Box::pin(async move { Ok(page) })
        }
    }

    #[tokio::test]
    async fn one_page_closes_every_gap_it_spans() {
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let mut c = Core::new(SeqConfig::default(), 5_000);
        c.sync_slice(
            std::slice::from_ref(&key),
            1,
            |_| true,
            tokio::time::Instant::now(),
        );
        assert!(c.go_live(&key, 1, Resume::default()));
        let now = now_ms();
        // Every tenth id dropped: 20 one-trade gaps.
        for id in (1..=200u64).filter(|id| id % 10 != 5) {
            let t = TradeRef {
                symbol: "BTCUSDT",
                id,
                price: Decimal::ONE,
                qty: Decimal::ONE,
                ts_ms: now,
                buyer_is_maker: false,
            };
            assert_eq!(c.on_ws_trade(Market::Spot, &t, now), Verdict::Accepted);
        }
        let gaps = c.take_flush().gaps;
        assert_eq!(gaps.len(), 20);
        let core = Mutex::new(c);
        let book = Book {
            calls: AtomicUsize::new(0),
            ts: now,
        };
        for g in gaps {
            fill(g, &book, &core).await;
        }
        assert_eq!(
            book.calls.load(Ordering::Relaxed),
            1,
            "one page for all gaps"
        );
        let (_, _, s) = core.lock().unwrap().stats().remove(0);
        assert_eq!((s.accepted, s.backfilled, s.missing), (200, 20, 0));
        // The page ran from the first gap (5) to the last (195): the ids between were seen.
        assert_eq!(
            s.duplicates,
            191 - 20,
            "nothing beyond the last gap was taken"
        );
    }
}
