//! Gap backfill: fetches missing trade ids from the broker's REST history and feeds them through
//! the same validation and dedup as WS trades.
//!
//! Paced per instrument, not per gap: a gap only puts its instrument on the [`Schedule`], and a
//! page asks for everything the instrument misses, from its first missing id to its last (at
//! most 1000 ids, so a backlog takes several pages back to back). After a page the instrument
//! waits `backfill_interval_ms` before the next, so a feed that drops trades all the time costs
//! one request per interval and symbol, whatever its drop rate (one request per gap ran the
//! 30-min soak's hot pair into the weight pause, and the tracker abandoned gaps meanwhile).
//! A new gap waits `backfill_grace_ms` first: most reordered trades arrive by then.
//!
//! Bounded: at most `backfill_concurrency` pages in flight per node. Within the REST weight
//! budget: the REST client refuses to send while a 429/418 ban is running (we wait it out,
//! however long: that is not a failure), and we pause while the minute's used weight is above
//! [`WEIGHT_PAUSE_AT`] so live backfills never push the IP into a ban. Ids the broker no longer
//! has (or answers without) are given up in the tracker, counted and logged, so they do not block
//! the gaps after them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use pricefeed_broker::rest_client::{RestClient, RestError};
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use pricefeed_domain::trade::Trade;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// Pacing of backfill (`[node.feed]`).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Pages in flight at once.
    pub concurrency: usize,
    /// A new gap waits this long before its instrument is paged (reorders close most).
    pub grace: Duration,
    /// Between two pages of one instrument (unless a backlog is being paged through).
    pub interval: Duration,
}

/// Failed pages in a row before an instrument is dropped from the schedule (its next gap puts
/// it back).
const MAX_FAILURES: u32 = 5;

/// What one page did, for the [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOutcome {
    /// Nothing of the instrument is missing (or it is no longer live here).
    Closed,
    /// A page was applied. `backlog`: more was missing than one page holds, so the next page
    /// goes at once; `open`: something is still missing after it.
    Filled { backlog: bool, open: bool },
    /// The broker (or the weight pause) says to come back after this.
    Held(Duration),
    /// The call failed; retried with a backoff.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    due: Instant,
    running: bool,
    failures: u32,
}

/// Which instruments to page, and when: one entry per instrument with open gaps. Pure logic;
/// [`run`] drives it.
#[derive(Debug)]
pub struct Schedule {
    grace: Duration,
    interval: Duration,
    entries: HashMap<InstrumentKey, Entry>,
}

impl Schedule {
    pub fn new(grace: Duration, interval: Duration) -> Self {
        Self {
            grace,
            interval,
            entries: HashMap::new(),
        }
    }

    /// `key` reported a gap at `now`: page it after the grace, unless it is already scheduled or
    /// being paged (that page, or the next one, covers the new gap).
    pub fn gap(&mut self, key: InstrumentKey, now: Instant) {
        self.entries.entry(key).or_insert(Entry {
            due: now + self.grace,
            running: false,
            failures: 0,
        });
    }

    /// The earliest moment an idle entry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.running)
            .map(|e| e.due)
            .min()
    }

    /// Up to `max` instruments due at `now`, longest waiting first, marked running.
    pub fn take_due(&mut self, now: Instant, max: usize) -> Vec<InstrumentKey> {
        if max == 0 {
            return Vec::new();
        }
        let mut due: Vec<(Instant, &InstrumentKey)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.running && e.due <= now)
            .map(|(k, e)| (e.due, k))
            .collect();
        due.sort();
        let keys: Vec<InstrumentKey> = due.into_iter().take(max).map(|(_, k)| k.clone()).collect();
        for k in &keys {
            if let Some(e) = self.entries.get_mut(k) {
                e.running = true;
            }
        }
        keys
    }

    /// The page of `key` ended with `outcome` at `now`. Returns true when the instrument was
    /// dropped after [`MAX_FAILURES`] failures in a row.
    pub fn finished(&mut self, key: &InstrumentKey, outcome: PageOutcome, now: Instant) -> bool {
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        e.running = false;
        match outcome {
            PageOutcome::Closed | PageOutcome::Filled { open: false, .. } => {
                self.entries.remove(key);
            }
            PageOutcome::Filled { backlog, .. } => {
                e.failures = 0;
                e.due = if backlog { now } else { now + self.interval };
            }
            PageOutcome::Held(d) => e.due = now + d,
            PageOutcome::Failed => {
                e.failures += 1;
                if e.failures > MAX_FAILURES {
                    self.entries.remove(key);
                    return true;
                }
                e.due = now + Duration::from_millis(250 << e.failures.min(6));
            }
        }
        false
    }

    /// Instruments scheduled or being paged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Pages the instruments whose gaps arrive on `rx` until shutdown.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<GapJob>,
    history: Arc<dyn TradeHistory>,
    core: Arc<Mutex<Core>>,
    pacing: Pacing,
    token: CancellationToken,
) {
    let concurrency = pacing.concurrency.max(1);
    let mut schedule = Schedule::new(pacing.grace, pacing.interval);
    // Pages run inside this task (they are REST waits); dropping it on shutdown drops them.
    let mut pages = FuturesUnordered::new();
    let scheduled = metrics::gauge!("pricefeed_backfill_scheduled_instruments");
    loop {
        for key in schedule.take_due(Instant::now(), concurrency - pages.len()) {
            let (history, core) = (history.clone(), core.clone());
            pages.push(async move {
                let outcome = page(&key, &*history, &core).await;
                (key, outcome)
            });
        }
        scheduled.set(schedule.len() as f64);
        let wake = schedule
            .next_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = token.cancelled() => return,
            j = rx.recv() => match j {
                Some(j) => schedule.gap(j.key, Instant::now()),
                None => return,
            },
            Some((key, outcome)) = pages.next(), if !pages.is_empty() => {
                if schedule.finished(&key, outcome, Instant::now()) {
                    tracing::warn!(%key, "backfill failed {} times in a row; retried at the next gap", MAX_FAILURES + 1);
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// One page of `key`'s missing ids: from the first to the last, at most 1000.
pub async fn page(
    key: &InstrumentKey,
    history: &dyn TradeHistory,
    core: &Mutex<Core>,
) -> PageOutcome {
    let market = key.market();
    let Some((from, last)) = core.lock().unwrap().missing_span(key) else {
        return PageOutcome::Closed;
    };
    if let Some(d) = history.hold_off(market) {
        return PageOutcome::Held(d);
    }
    let through = last.min(from.saturating_add(999));
    let limit = (through - from + 1) as u16;
    metrics::counter!("pricefeed_backfill_pages_total", "market" => market.as_str()).increment(1);
    match history
        .historical_trades(market, &key.symbol(), from, limit)
        .await
    {
        Ok(trades) if trades.is_empty() => {
            // Nothing from `from` on: the broker is behind the id the stream reported. Retried
            // with the failure backoff; the gap stays open for the stream to close.
            tracing::debug!(%key, from, through, "backfill: broker returned no trades");
            PageOutcome::Failed
        }
        Ok(trades) => {
            let top = trades.iter().map(|t| t.trade_id).max().unwrap_or(through);
            let page: Vec<Trade> = trades
                .into_iter()
                .filter(|t| t.trade_id <= through)
                .collect();
            let mut c = core.lock().unwrap();
            let n = c.on_backfill(key, &page, now_ms());
            metrics::counter!("pricefeed_backfilled_trades_total", "market" => market.as_str())
                .increment(n);
            // What the broker answered up to is all it has there: ids still missing below are
            // gone (or failed validation) and must not hold back the gaps after them.
            let answered = top.min(through);
            let lost = c.give_up_through(key, answered);
            if lost > 0 {
                tracing::warn!(%key, from, through, lost, "backfill: the broker has no trades for these ids; given up");
            }
            PageOutcome::Filled {
                backlog: last > through,
                open: c.missing_span(key).is_some(),
            }
        }
        Err(e) if e.permanent => {
            let lost = core.lock().unwrap().give_up_through(key, through);
            tracing::warn!(%key, from, through, lost, error = e.msg, "backfill impossible; ids given up");
            PageOutcome::Filled {
                backlog: last > through,
                open: core.lock().unwrap().missing_span(key).is_some(),
            }
        }
        // A 429/418 (or a hold another process recorded) says when to come back: waiting for
        // it is not a failure. Counting it as one gave a gap up after six refusals, i.e. after
        // a ~30-s limit, though the broker still had every trade of it.
        Err(HistoryError {
            retry_after: Some(wait),
            ..
        }) => {
            metrics::counter!("pricefeed_backfill_held_total", "market" => market.as_str())
                .increment(1);
            PageOutcome::Held(wait)
        }
        Err(e) => {
            tracing::debug!(%key, from, through, error = e.msg, "backfill page failed; retrying");
            PageOutcome::Failed
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

    /// The broker's history: every id but those in `lost`, and a count of the calls.
    struct Book {
        calls: AtomicUsize,
        ts: i64,
        lost: Vec<u64>,
    }

    impl Book {
        fn new(ts: i64) -> Self {
            Self {
                calls: AtomicUsize::new(0),
                ts,
                lost: Vec::new(),
            }
        }
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
                .filter(|id| !self.lost.contains(id))
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

    /// A live spot:BTCUSDT that saw ids 1..=200 except those `dropped` says, and its gaps.
    fn live_with_drops(dropped: impl Fn(u64) -> bool) -> (InstrumentKey, Core, Vec<GapJob>) {
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
        for id in (1..=200u64).filter(|&id| !dropped(id)) {
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
        (key, c, gaps)
    }

    #[tokio::test]
    async fn one_page_closes_every_gap_it_spans() {
        // Every tenth id dropped: 20 one-trade gaps.
        let (key, c, gaps) = live_with_drops(|id| id % 10 == 5);
        assert_eq!(gaps.len(), 20);
        let core = Mutex::new(c);
        let book = Book::new(now_ms());
        assert_eq!(
            page(&key, &book, &core).await,
            PageOutcome::Filled {
                backlog: false,
                open: false
            }
        );
        assert_eq!(page(&key, &book, &core).await, PageOutcome::Closed);
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

    #[tokio::test]
    async fn ids_the_broker_does_not_have_are_given_up_not_retried() {
        let (key, c, _) = live_with_drops(|id| id % 10 == 5);
        let core = Mutex::new(c);
        let mut book = Book::new(now_ms());
        book.lost = vec![45, 46, 95];
        assert_eq!(
            page(&key, &book, &core).await,
            PageOutcome::Filled {
                backlog: false,
                open: false
            }
        );
        let (_, _, s) = core.lock().unwrap().stats().remove(0);
        // 45 and 95 were dropped by the stream and the broker lacks them; 46 the stream had.
        assert_eq!((s.backfilled, s.missing, s.abandoned), (18, 0, 2));
        assert_eq!(book.calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_backlog_is_paged_a_thousand_ids_at_a_time() {
        // 2 500 ids missing between 100 and 2 601.
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let (_, mut c, _) = live_with_drops(|id| id > 100);
        let now = now_ms();
        let t = TradeRef {
            symbol: "BTCUSDT",
            id: 2_601,
            price: Decimal::ONE,
            qty: Decimal::ONE,
            ts_ms: now,
            buyer_is_maker: false,
        };
        assert_eq!(c.on_ws_trade(Market::Spot, &t, now), Verdict::Accepted);
        let core = Mutex::new(c);
        let book = Book::new(now);
        let full = PageOutcome::Filled {
            backlog: true,
            open: true,
        };
        assert_eq!(page(&key, &book, &core).await, full);
        assert_eq!(page(&key, &book, &core).await, full);
        assert_eq!(
            page(&key, &book, &core).await,
            PageOutcome::Filled {
                backlog: false,
                open: false
            }
        );
        assert_eq!(book.calls.load(Ordering::Relaxed), 3);
        let (_, _, s) = core.lock().unwrap().stats().remove(0);
        assert_eq!((s.backfilled, s.missing, s.abandoned), (2_500, 0, 0));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_drop_costs_one_page_per_interval_not_one_per_gap() {
        // A gap every 50 ms on one instrument for 60 s; each page takes 20 ms and closes
        // everything open when it was sent.
        let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
        let t0 = Instant::now();
        let mut s = Schedule::new(ms(300), ms(1_000));
        let (mut pages, mut running_until) = (0, None);
        for step in 0..=60_000u64 / 10 {
            let now = t0 + ms(step * 10);
            if step % 5 == 0 {
                s.gap(key.clone(), now);
            }
            if running_until.is_some_and(|u| u <= now) {
                running_until = None;
                // The gaps reported during the page are still open.
                s.finished(
                    &key,
                    PageOutcome::Filled {
                        backlog: false,
                        open: true,
                    },
                    now,
                );
            }
            for _ in s.take_due(now, 4) {
                pages += 1;
                running_until = Some(now + ms(20));
            }
        }
        // 1 200 gaps: about one page per 1.02 s.
        assert!((55..=61).contains(&pages), "{pages} pages");
    }

    #[test]
    fn the_schedule_grants_grace_order_and_concurrency() {
        let (a, b, c) = (
            InstrumentKey::parse("spot:AAAUSDT").unwrap(),
            InstrumentKey::parse("spot:BBBUSDT").unwrap(),
            InstrumentKey::parse("usdm:CCCUSDT").unwrap(),
        );
        let t0 = Instant::now();
        let mut s = Schedule::new(ms(300), ms(1_000));
        s.gap(b.clone(), t0);
        s.gap(a.clone(), t0 + ms(10));
        s.gap(b.clone(), t0 + ms(20)); // already scheduled: keeps its due time
        s.gap(c.clone(), t0 + ms(30));
        assert_eq!(s.len(), 3);
        assert_eq!(s.next_due(), Some(t0 + ms(300)));
        assert!(s.take_due(t0 + ms(299), 4).is_empty(), "grace");
        // Longest waiting first, at most `max`, and a running one is not taken again.
        assert_eq!(s.take_due(t0 + ms(400), 2), vec![b.clone(), a.clone()]);
        assert_eq!(s.take_due(t0 + ms(400), 4), vec![c.clone()]);
        assert_eq!(s.next_due(), None);
        // A gap while a page runs adds nothing.
        s.gap(a.clone(), t0 + ms(410));
        assert_eq!(s.len(), 3);

        let now = t0 + ms(500);
        let open = |backlog| PageOutcome::Filled {
            backlog,
            open: true,
        };
        assert!(!s.finished(&a, open(false), now));
        assert!(!s.finished(&b, open(true), now));
        assert!(!s.finished(&c, PageOutcome::Held(ms(5_000)), now));
        assert_eq!(
            s.take_due(now, 4),
            vec![b.clone()],
            "a backlog goes on at once"
        );
        assert!(s.take_due(now + ms(999), 4).is_empty());
        assert_eq!(s.take_due(now + ms(1_000), 4), vec![a.clone()]);
        assert!(s.take_due(now + ms(4_999), 4).is_empty(), "held");
        assert_eq!(s.take_due(now + ms(5_000), 4), vec![c.clone()]);

        // Closed (or nothing left) drops the entry; failures back off, then drop it.
        assert!(!s.finished(&a, PageOutcome::Closed, now));
        assert!(!s.finished(
            &b,
            PageOutcome::Filled {
                backlog: false,
                open: false
            },
            now
        ));
        assert_eq!(s.len(), 1);
        let mut at = now;
        for n in 1..=MAX_FAILURES {
            assert!(!s.finished(&c, PageOutcome::Failed, at));
            let due = s.next_due().unwrap();
            assert_eq!(due - at, ms(250 << n));
            assert_eq!(s.take_due(due, 4), vec![c.clone()]);
            at = due;
        }
        assert!(s.finished(&c, PageOutcome::Failed, at), "dropped");
        assert!(s.is_empty());
    }
}
