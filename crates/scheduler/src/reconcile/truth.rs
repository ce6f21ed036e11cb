//! Pages of REST truth for reconciliation, per market, within a weight budget.

use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pricefeed_broker::rest_client::{AggFrom, AggTrade, RestClient, RestError};
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use pricefeed_domain::reconcile::{Row, Unit};
use pricefeed_domain::trade::Trade;
use pricefeed_store::history::reconcile::{Cursor, Skip};

/// Request weights of the endpoints used, per the broker's published tables.
fn weight(market: Market, call: Call) -> u32 {
    match (market, call) {
        (Market::Spot, Call::Agg) => 4,
        (Market::Spot, Call::Historical | Call::Recent) => 25,
        (Market::Usdm, _) => 20,
        (Market::Options, Call::Recent) => 5,
        (Market::Options, _) => 20,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Agg,
    Historical,
    Recent,
}

/// Pauses calls so reconciliation spends at most its weight budget per market, and not at all
/// while the broker reports a ban or the IP close to its limit.
#[derive(Debug)]
pub struct Pacer {
    per_ms: f64,
    cap: f64,
    state: Mutex<[(f64, Instant); 3]>,
}

/// Pause while the broker's reported minute weight is above this (its limit is 6000).
const WEIGHT_CEILING: u64 = 5_400;

/// Waits for budget up to this long inside a job; longer ones end the run.
const SHORT_WAIT: Duration = Duration::from_millis(250);

/// Why a page could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum Fetch {
    #[error(transparent)]
    Rest(#[from] RestError),
    /// The weight budget (or a ban) needs this long: come back then.
    #[error("REST budget exhausted for {0:?}")]
    Budget(Duration),
}

fn idx(m: Market) -> usize {
    match m {
        Market::Spot => 0,
        Market::Usdm => 1,
        Market::Options => 2,
    }
}

impl Pacer {
    pub fn new(budget_per_min: u32) -> Self {
        let per_ms = f64::from(budget_per_min) / 60_000.0;
        // Up to ten seconds of budget at once, so a burst of pages does not wait per call.
        let cap = f64::from(budget_per_min) / 6.0;
        Self {
            per_ms,
            cap,
            state: Mutex::new([(cap, Instant::now()); 3]),
        }
    }

    /// Takes `w` of the budget, waiting briefly when it is nearly there; a longer wait (or a
    /// running ban) is returned instead, so the job gives its worker slot to other markets'
    /// instruments and comes back later.
    async fn take(&self, client: &RestClient, market: Market, w: u32) -> Result<(), Fetch> {
        loop {
            if let Some(d) = client.banned_for(market) {
                return Err(Fetch::Budget(d));
            }
            let wait = {
                let mut st = self.state.lock().unwrap();
                let (tokens, at) = &mut st[idx(market)];
                let now = Instant::now();
                *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * 1000.0 * self.per_ms)
                    .min(self.cap);
                *at = now;
                if *tokens >= f64::from(w) {
                    *tokens -= f64::from(w);
                    None
                } else {
                    Some(Duration::from_secs_f64(
                        (f64::from(w) - *tokens) / self.per_ms / 1000.0,
                    ))
                }
            };
            match wait {
                None => break,
                Some(d) if d <= SHORT_WAIT => tokio::time::sleep(d).await,
                Some(d) => return Err(Fetch::Budget(d)),
            }
        }
        if client
            .used_weight(market)
            .is_some_and(|u| u >= WEIGHT_CEILING)
        {
            return Err(Fetch::Budget(Duration::from_secs(1)));
        }
        metrics::counter!("pricefeed_reconcile_rest_weight_total", "market" => market.as_str())
            .increment(u64::from(w));
        Ok(())
    }
}

/// One page of truth after the cursor.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The last id before the page (the cursor, or just before the first stored trade).
    pub after: u64,
    pub units: Vec<Unit>,
    /// Spot: the aggregate id of each unit (empty on other markets).
    pub agg_ids: Vec<u64>,
    /// The page reached the newest trade the broker has.
    pub at_head: bool,
    /// The broker no longer has `(after, …]` up to this range's end: skip it first.
    pub skip: Option<Skip>,
    /// Spot: the aggregate cursor after the skip.
    pub skip_agg: Option<i64>,
}

/// The REST client, the budget and the page size.
#[derive(Debug)]
pub struct Truth {
    pub client: RestClient,
    pub pacer: Pacer,
    pub limit: u16,
}

fn sym(key: &InstrumentKey) -> Symbol {
    Symbol::parse(key.symbol_str()).expect("keys hold valid symbols")
}

fn agg_unit(a: &AggTrade, market: Market) -> Unit {
    // On USD-M the node's ids are the aggregate ids themselves.
    let (first, last) = match market {
        Market::Usdm => (a.agg_id, a.agg_id),
        _ => (a.first_id, a.last_id),
    };
    Unit {
        first_id: first,
        last_id: last,
        price: a.price,
        qty: a.qty,
        ts_ms: a.ts_ms,
        buyer_is_maker: a.buyer_is_maker,
    }
}

fn trade_unit(t: &Trade) -> Unit {
    Unit {
        first_id: t.trade_id,
        last_id: t.trade_id,
        price: t.price,
        qty: t.qty,
        ts_ms: t.ts_ms,
        buyer_is_maker: t.buyer_is_maker,
    }
}

fn too_old(e: &RestError) -> bool {
    matches!(e, RestError::Api { api, .. } if api.code == -1130)
}

impl Truth {
    async fn aggs(&self, key: &InstrumentKey, from: AggFrom) -> Result<Vec<AggTrade>, Fetch> {
        self.pacer
            .take(&self.client, key.market(), weight(key.market(), Call::Agg))
            .await?;
        Ok(self
            .client
            .agg_trades(key.market(), &sym(key), from, self.limit)
            .await?)
    }

    async fn historical(
        &self,
        key: &InstrumentKey,
        from: u64,
        limit: u16,
    ) -> Result<Vec<Trade>, Fetch> {
        self.pacer
            .take(
                &self.client,
                key.market(),
                weight(key.market(), Call::Historical),
            )
            .await?;
        Ok(self
            .client
            .historical_trades(key.market(), &sym(key), Some(from), limit)
            .await?)
    }

    async fn recent(&self, key: &InstrumentKey) -> Result<Vec<Trade>, Fetch> {
        self.pacer
            .take(
                &self.client,
                key.market(),
                weight(key.market(), Call::Recent),
            )
            .await?;
        // The options endpoint serves at most 500 recent trades.
        let limit = if key.market() == Market::Options {
            self.limit.min(500)
        } else {
            self.limit
        };
        Ok(self
            .client
            .recent_trades(key.market(), &sym(key), limit)
            .await?)
    }

    /// The first page of an instrument whose stored history starts at trade `first_id` (time
    /// `first_ts`): confirmation starts there.
    pub async fn first_page(
        &self,
        key: &InstrumentKey,
        first_id: u64,
        first_ts: i64,
    ) -> Result<Page, Fetch> {
        let after = first_id.saturating_sub(1);
        match key.market() {
            Market::Spot => {
                let aggs = self.aggs(key, AggFrom::Time(first_ts)).await?;
                let at_head = aggs.len() < usize::from(self.limit);
                let Some(i) = aggs.iter().position(|a| a.last_id >= first_id) else {
                    return Ok(Page {
                        after,
                        at_head,
                        ..Page::default()
                    });
                };
                let start = aggs[i].first_id.min(first_id);
                let mut page = self.agg_page(start - 1, &aggs[i..], Market::Spot, at_head);
                if aggs[i].first_id > first_id {
                    // The broker's history begins after our first stored trade.
                    page.skip = Some(Skip {
                        from_id: first_id as i64,
                        to_id: aggs[i].first_id as i64 - 1,
                        from_ms: first_ts,
                        to_ms: aggs[i].ts_ms,
                    });
                    page.skip_agg = Some(aggs[i].agg_id as i64 - 1);
                }
                Ok(page)
            }
            Market::Usdm | Market::Options => self.id_page(key, after, None).await,
        }
    }

    /// The page after `cur` (whose `last_id` is set).
    pub async fn next_page(
        &self,
        key: &InstrumentKey,
        last_id: u64,
        cur: &Cursor,
    ) -> Result<Page, Fetch> {
        match key.market() {
            Market::Spot => {
                let Some(last_agg) = cur.last_agg_id else {
                    // No aggregate cursor (an older step): find it again by time.
                    let from = cur.through_ms.unwrap_or(0).max(0);
                    let aggs = self.aggs(key, AggFrom::Time(from)).await?;
                    let at_head = aggs.len() < usize::from(self.limit);
                    let rest: Vec<AggTrade> =
                        aggs.into_iter().filter(|a| a.first_id > last_id).collect();
                    return Ok(self.agg_page(last_id, &rest, Market::Spot, at_head));
                };
                let aggs = self.aggs(key, AggFrom::Id(last_agg as u64 + 1)).await?;
                let at_head = aggs.len() < usize::from(self.limit);
                let mut page = self.agg_page(last_id, &aggs, Market::Spot, at_head);
                if let Some(a) = aggs.first()
                    && a.first_id > last_id + 1
                {
                    page.skip = Some(Skip {
                        from_id: last_id as i64 + 1,
                        to_id: a.first_id as i64 - 1,
                        from_ms: cur.through_ms.map_or(a.ts_ms, |t| t + 1),
                        to_ms: a.ts_ms,
                    });
                    page.skip_agg = Some(a.agg_id as i64 - 1);
                }
                Ok(page)
            }
            Market::Usdm | Market::Options => self.id_page(key, last_id, cur.through_ms).await,
        }
    }

    fn agg_page(&self, after: u64, aggs: &[AggTrade], market: Market, at_head: bool) -> Page {
        Page {
            after,
            units: aggs.iter().map(|a| agg_unit(a, market)).collect(),
            agg_ids: aggs.iter().map(|a| a.agg_id).collect(),
            at_head,
            skip: None,
            skip_agg: None,
        }
    }

    /// USD-M (aggregate ids) and options (trade ids): the page from `after + 1` by id.
    async fn id_page(
        &self,
        key: &InstrumentKey,
        after: u64,
        through: Option<i64>,
    ) -> Result<Page, Fetch> {
        let units: Vec<Unit> = match key.market() {
            Market::Usdm => self
                .aggs(key, AggFrom::Id(after + 1))
                .await?
                .iter()
                .map(|a| agg_unit(a, Market::Usdm))
                .collect(),
            _ => match self.recent_covering(key, after).await? {
                Some(units) => {
                    // The newest trades reach back to the cursor: one cheap call, at the head.
                    return Ok(Page {
                        after,
                        units,
                        at_head: true,
                        ..Page::default()
                    });
                }
                None => match self.historical(key, after + 1, self.limit).await {
                    Ok(t) => t.iter().map(trade_unit).collect(),
                    Err(Fetch::Rest(e)) if too_old(&e) => {
                        // Trimmed history: skip to the oldest trade still served.
                        let recent = self.recent(key).await?;
                        let Some(first) = recent.first() else {
                            return Ok(Page {
                                after,
                                at_head: true,
                                ..Page::default()
                            });
                        };
                        return Ok(Page {
                            after,
                            skip: Some(Skip {
                                from_id: after as i64 + 1,
                                to_id: first.trade_id as i64 - 1,
                                from_ms: through.map_or(first.ts_ms, |t| t + 1),
                                to_ms: first.ts_ms,
                            }),
                            ..Page::default()
                        });
                    }
                    Err(e) => return Err(e),
                },
            },
        };
        let at_head = units.len() < usize::from(self.limit);
        let mut page = Page {
            after,
            units,
            at_head,
            ..Page::default()
        };
        if let Some(u) = page.units.first()
            && u.first_id > after + 1
        {
            page.skip = Some(Skip {
                from_id: after as i64 + 1,
                to_id: u.first_id as i64 - 1,
                from_ms: through.map_or(u.ts_ms, |t| t + 1),
                to_ms: u.ts_ms,
            });
        }
        Ok(page)
    }

    /// Options: the recent trades after `after` when they reach back to it (`None` when the
    /// cursor is older than the recent page, or nothing traded yet).
    async fn recent_covering(
        &self,
        key: &InstrumentKey,
        after: u64,
    ) -> Result<Option<Vec<Unit>>, Fetch> {
        let recent = self.recent(key).await?;
        match recent.first() {
            Some(first) if first.trade_id <= after + 1 => Ok(Some(
                recent
                    .iter()
                    .filter(|t| t.trade_id > after)
                    .map(trade_unit)
                    .collect(),
            )),
            Some(_) => Ok(None),
            // No trade at all at the exchange yet.
            None => Ok(Some(Vec::new())),
        }
    }

    /// Per-trade truth for the trade-id ranges of disagreeing spot aggregates.
    pub async fn fills(
        &self,
        key: &InstrumentKey,
        ranges: &[RangeInclusive<u64>],
    ) -> Result<Vec<Row>, Fetch> {
        let mut ranges: Vec<RangeInclusive<u64>> = ranges.to_vec();
        ranges.sort_by_key(|r| *r.start());
        let mut out: Vec<Row> = Vec::new();
        let mut covered: Option<u64> = None; // highest id fetched so far
        for r in ranges {
            let mut from = *r.start();
            if let Some(c) = covered {
                from = from.max(c + 1);
            }
            while from <= *r.end() {
                let page = self.historical(key, from, self.limit).await?;
                let Some(last) = page.last() else { break };
                covered = Some(last.trade_id);
                from = last.trade_id + 1;
                out.extend(page.iter().map(|t| Row {
                    id: t.trade_id,
                    ts_ms: t.ts_ms,
                    price: t.price,
                    qty: t.qty,
                    buyer_is_maker: t.buyer_is_maker,
                }));
            }
        }
        Ok(out)
    }
}
