//! REST client for the three broker markets (spot `/api/v3`, USD-M futures `/fapi/v1`, options
//! `/eapi/v1`): instrument catalogues (`exchangeInfo`) and trade history by id.
//!
//! What it guarantees, because the exchange bans IPs that keep calling after a 429:
//! - every request has a connect timeout and a total timeout (reqwest has no total timeout by
//!   default, and a hung sync must fail, not stall the leader);
//! - a 429 or 418 answer records "banned until now + `Retry-After`" for that market, shared by
//!   every clone of the client; until then calls fail at once with [`RestError::Banned`] and
//!   **no request is sent**, so retries by any caller cannot escalate the ban (2 min → 3 days);
//! - `X-MBX-USED-WEIGHT-1M` of the last answer is kept per market ([`RestClient::used_weight`]) and
//!   exported as the gauge `pricefeed_rest_used_weight{market}`;
//! - `{code,msg}` error bodies become [`RestError::Api`], anything unparsable a typed error with
//!   the HTTP status, never a panic.
//!
//! - after a 429/418, calls to that market go **one at a time** until one is answered without
//!   either: the exchange counts every refused request towards an IP ban, and the four gap
//!   backfills of a node that all waited for the same `Retry-After` would otherwise all be sent
//!   (and refused) in the same instant;
//! - with a [`HoldBoard`] ([`RestClient::with_hold_board`]), a 429/418 one process receives
//!   holds the calls of every process sharing the board (all the nodes, schedulers and workers
//!   of a cluster, which usually share an egress IP and so the exchange's limit), and a process
//!   that adopts such a hold comes back up to a second later than the one that received it, so
//!   they do not all knock at the same instant when it ends. A board that does not answer
//!   within [`BOARD_TIMEOUT`] is ignored: it may cost a 429, never a REST call.
//!
//! Markets have separate hosts and separate limits on the exchange, so the ban state is per market.
//!
//! TLS: the workspace builds reqwest without a TLS backend (no `rustls-no-provider` + `ring` yet,
//! see docs/decisions/0004), so `https://` URLs fail at request time with a transport error;
//! `http://` (the simulator) works. Enabling TLS is a feature change in the workspace manifest
//! plus installing the ring provider once in `main`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use pricefeed_domain::instrument::Market;
use pricefeed_domain::instrument::Symbol;
use pricefeed_domain::trade::Trade;
use pricefeed_runtime::config::BrokerConfig;
use serde::de::DeserializeOwned;

use crate::rest::{
    ApiError, FuturesExchangeInfo, OptionTrade, OptionsExchangeInfo, RestAggTrade, RestTrade,
    SpotExchangeInfo,
};

/// Largest page the exchange serves for trade history.
pub const MAX_TRADES_LIMIT: u16 = 1000;

/// Where an aggregate-trade page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFrom {
    /// From this aggregate id (inclusive).
    Id(u64),
    /// From this time, ms (inclusive).
    Time(i64),
}

/// One aggregate trade: the fills `first_id..=last_id` of one taker order at one price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggTrade {
    pub agg_id: u64,
    pub first_id: u64,
    pub last_id: u64,
    pub price: rust_decimal::Decimal,
    /// Summed quantity of the fills.
    pub qty: rust_decimal::Decimal,
    pub ts_ms: i64,
    pub buyer_is_maker: bool,
}

/// Used when a 429/418 carries no (or an unreadable) `Retry-After`: long enough not to hammer,
/// short enough that a transient limit does not stall a sync period.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Index of a market's base URL and state (spot, usdm, options).
fn idx(m: Market) -> usize {
    match m {
        Market::Spot => 0,
        Market::Usdm => 1,
        Market::Options => 2,
    }
}

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// Refused locally: an earlier 429/418 asked us to wait; nothing was sent.
    #[error("{market} REST calls suspended for another {retry_after:?} (earlier 429/418)")]
    Banned {
        market: Market,
        retry_after: Duration,
    },
    /// 429 (over the weight limit) or 418 (IP banned); calls stay suspended for `retry_after`.
    #[error("{market} REST rate limited: HTTP {status}, retry after {retry_after:?}")]
    RateLimited {
        market: Market,
        status: u16,
        retry_after: Duration,
        api: Option<ApiError>,
    },
    /// The exchange's `{code,msg}` error.
    #[error("{market} REST HTTP {status}: {api}")]
    Api {
        market: Market,
        status: u16,
        api: ApiError,
    },
    /// A non-success status whose body is not `{code,msg}` (proxy page, empty 5xx body).
    #[error("{market} REST HTTP {status}: {body}")]
    Http {
        market: Market,
        status: u16,
        body: String,
    },
    /// Connect, timeout or I/O failure.
    #[error("{market} REST transport error: {source}")]
    Transport {
        market: Market,
        #[source]
        source: reqwest::Error,
    },
    /// A success status with a body that does not match the wire struct.
    #[error("{market} REST bad payload from {path}: {detail}")]
    Decode {
        market: Market,
        path: &'static str,
        detail: String,
    },
    /// A caller error caught before sending (e.g. limit out of range).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl RestError {
    /// How long the caller should wait before trying again, when the exchange said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RestError::Banned { retry_after, .. } | RestError::RateLimited { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RestError::Banned { .. } => "banned",
            RestError::RateLimited { .. } => "rate_limited",
            RestError::Api { .. } => "api",
            RestError::Http { .. } => "http",
            RestError::Transport { .. } => "transport",
            RestError::Decode { .. } => "decode",
            RestError::InvalidRequest(_) => "invalid_request",
        }
    }
}

/// Per-market shared state: the ban deadline and the last reported weight.
#[derive(Debug, Default)]
struct MarketState {
    banned_until: Mutex<Option<Instant>>,
    /// `u64::MAX` = never reported.
    used_weight: AtomicU64,
    /// A 429/418 (ours or adopted from the board) has not yet been followed by another answer:
    /// requests go one at a time through `probe`.
    recovering: AtomicBool,
    probe: Arc<tokio::sync::Mutex<()>>,
}

/// A boxed future, as [`HoldBoard`] returns (the trait is used as `dyn`).
pub type BoardFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a process's REST holds are shared with the other processes behind the same IP (the
/// cluster's Redis in production: `pricefeed_store::rest_hold`).
pub trait HoldBoard: Send + Sync + std::fmt::Debug + 'static {
    /// The hold of `market` any process recorded: until this wall-clock time (ms since the
    /// epoch); `None` when there is none or the board cannot tell.
    fn held_until(&self, market: Market) -> BoardFuture<'_, Option<i64>>;
    /// Records a hold of `market` until `until_ms` (wall clock), never shortening a longer one.
    fn hold(&self, market: Market, until_ms: i64) -> BoardFuture<'_, ()>;
}

/// How long a call waits for the board before going ahead without it.
pub const BOARD_TIMEOUT: Duration = Duration::from_millis(200);

/// Wall clock, ms since the epoch.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// 0–999 ms, different per call and per process: `RandomState` keys are random per process
/// and advance per instance (no RNG dependency for one jitter).
fn jitter() -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(wall_ms());
    Duration::from_millis(h.finish() % 1000)
}

/// Timeouts of the HTTP client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub total: Duration,
}

/// REST client of the three markets; cheap to clone, clones share the ban state.
#[derive(Debug, Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: Arc<[String; 3]>,
    state: Arc<[MarketState; 3]>,
    board: Option<Arc<dyn HoldBoard>>,
}

impl RestClient {
    /// Builds a client from the `[broker]` section (`*_rest_url`, `rest_connect_timeout_ms`,
    /// `rest_timeout_ms`).
    pub fn from_config(cfg: &BrokerConfig) -> Result<Self, RestError> {
        Self::new(
            [
                cfg.spot_rest_url.clone(),
                cfg.futures_rest_url.clone(),
                cfg.options_rest_url.clone(),
            ],
            Timeouts {
                connect: Duration::from_millis(cfg.rest_connect_timeout_ms),
                total: Duration::from_millis(cfg.rest_timeout_ms),
            },
        )
    }

    /// Builds a client from base URLs in [`Market::ALL`] order (spot, usdm, options).
    pub fn new(base_urls: [String; 3], timeouts: Timeouts) -> Result<Self, RestError> {
        // reqwest is built without a default crypto provider; make https:// usable here too,
        // not only in binaries that remembered to install one.
        pricefeed_runtime::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.total)
            .user_agent(concat!("pricefeed/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RestError::InvalidRequest(format!("cannot build HTTP client: {e}")))?;
        let state = Arc::new(std::array::from_fn(|_| MarketState {
            banned_until: Mutex::new(None),
            used_weight: AtomicU64::new(u64::MAX),
            recovering: AtomicBool::new(false),
            probe: Arc::new(tokio::sync::Mutex::new(())),
        }));
        Ok(Self {
            http,
            base: Arc::new(base_urls.map(|u| u.trim_end_matches('/').to_string())),
            state,
            board: None,
        })
    }

    /// Shares this client's holds with every process using the same `board` (see the module
    /// docs). Clones made afterwards share it too.
    #[must_use]
    pub fn with_hold_board(mut self, board: Arc<dyn HoldBoard>) -> Self {
        self.board = Some(board);
        self
    }

    /// Suspends calls to `market` for `d` (never shortening a running suspension).
    fn suspend(&self, market: Market, d: Duration) {
        let st = &self.state[idx(market)];
        let mut until = st.banned_until.lock().expect("ban lock");
        let new = Instant::now() + d;
        if until.is_none_or(|u| u < new) {
            *until = Some(new);
        }
        st.recovering.store(true, Ordering::Release);
    }

    /// `Err(Banned)` while this process, or (with a board) any process, holds `market`.
    async fn check_hold(&self, market: Market) -> Result<(), RestError> {
        if let Some(retry_after) = self.banned_for(market) {
            return Err(RestError::Banned {
                market,
                retry_after,
            });
        }
        let Some(board) = &self.board else {
            return Ok(());
        };
        if let Ok(Some(until)) = tokio::time::timeout(BOARD_TIMEOUT, board.held_until(market)).await
        {
            let left = until - wall_ms();
            if left > 0 {
                let retry_after = Duration::from_millis(left as u64) + jitter();
                self.suspend(market, retry_after);
                return Err(RestError::Banned {
                    market,
                    retry_after,
                });
            }
        }
        Ok(())
    }

    /// Lets a call to `market` go: at once normally; after a 429/418, one at a time (the guard
    /// is held until the answer is in) and only while no hold has come up meanwhile.
    async fn admit(
        &self,
        market: Market,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, RestError> {
        self.check_hold(market).await?;
        let st = &self.state[idx(market)];
        if !st.recovering.load(Ordering::Acquire) {
            return Ok(None);
        }
        let guard = st.probe.clone().lock_owned().await;
        // The call before us may have been refused again.
        self.check_hold(market).await?;
        Ok(st.recovering.load(Ordering::Acquire).then_some(guard))
    }

    /// `X-MBX-USED-WEIGHT-1M` of the last answer from `market`, if any was seen.
    pub fn used_weight(&self, market: Market) -> Option<u64> {
        match self.state[idx(market)].used_weight.load(Ordering::Relaxed) {
            u64::MAX => None,
            w => Some(w),
        }
    }

    /// Time left until calls to `market` are allowed again (`None` = allowed now).
    pub fn banned_for(&self, market: Market) -> Option<Duration> {
        let until = *self.state[idx(market)]
            .banned_until
            .lock()
            .expect("ban lock");
        until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// `GET /api/v3/exchangeInfo`.
    pub async fn spot_exchange_info(&self) -> Result<SpotExchangeInfo, RestError> {
        self.get(Market::Spot, "/api/v3/exchangeInfo", &[]).await
    }

    /// `GET /fapi/v1/exchangeInfo`.
    pub async fn futures_exchange_info(&self) -> Result<FuturesExchangeInfo, RestError> {
        self.get(Market::Usdm, "/fapi/v1/exchangeInfo", &[]).await
    }

    /// `GET /eapi/v1/exchangeInfo`.
    pub async fn options_exchange_info(&self) -> Result<OptionsExchangeInfo, RestError> {
        self.get(Market::Options, "/eapi/v1/exchangeInfo", &[])
            .await
    }

    /// One page of trade history from `from_id` (inclusive; `None` = most recent), oldest first.
    ///
    /// - spot: `/api/v3/historicalTrades` (trade ids);
    /// - usdm: `/fapi/v1/aggTrades?fromId=` — the futures feed is `@aggTrade`, so the ids the
    ///   node sees (and dedups/backfills by) are aggregate ids; `trade_id` is the agg id here;
    /// - options: `/eapi/v1/historicalTrades` (`tradeId`; `side` -1 = taker sell = buyer maker).
    pub async fn historical_trades(
        &self,
        market: Market,
        symbol: &Symbol,
        from_id: Option<u64>,
        limit: u16,
    ) -> Result<Vec<Trade>, RestError> {
        if !(1..=MAX_TRADES_LIMIT).contains(&limit) {
            return Err(RestError::InvalidRequest(format!(
                "limit {limit} outside 1..={MAX_TRADES_LIMIT}"
            )));
        }
        let mut q: Vec<(&str, String)> = vec![
            ("symbol", symbol.as_str().to_string()),
            ("limit", limit.to_string()),
        ];
        if let Some(f) = from_id {
            q.push(("fromId", f.to_string()));
        }
        match market {
            Market::Spot => {
                self.trade_page::<RestTrade>(market, "/api/v3/historicalTrades", symbol, &q)
                    .await
            }
            Market::Usdm => {
                self.trade_page::<RestAggTrade>(market, "/fapi/v1/aggTrades", symbol, &q)
                    .await
            }
            Market::Options => {
                self.trade_page::<OptionTrade>(market, "/eapi/v1/historicalTrades", symbol, &q)
                    .await
            }
        }
    }

    /// One page of aggregate trades (spot `/api/v3/aggTrades`, USD-M `/fapi/v1/aggTrades`),
    /// oldest first: from an aggregate id (inclusive) or from a time (ms, inclusive). Each
    /// carries the trade-id range `first_id..=last_id` it aggregates (on USD-M the node's ids
    /// are the aggregate ids themselves). Options have no aggregate trades.
    pub async fn agg_trades(
        &self,
        market: Market,
        symbol: &Symbol,
        from: AggFrom,
        limit: u16,
    ) -> Result<Vec<AggTrade>, RestError> {
        if !(1..=MAX_TRADES_LIMIT).contains(&limit) {
            return Err(RestError::InvalidRequest(format!(
                "limit {limit} outside 1..={MAX_TRADES_LIMIT}"
            )));
        }
        let path: &'static str = match market {
            Market::Spot => "/api/v3/aggTrades",
            Market::Usdm => "/fapi/v1/aggTrades",
            Market::Options => {
                return Err(RestError::InvalidRequest(
                    "options have no aggregate trades".into(),
                ));
            }
        };
        let mut q: Vec<(&str, String)> = vec![
            ("symbol", symbol.as_str().to_string()),
            ("limit", limit.to_string()),
        ];
        match from {
            AggFrom::Id(id) => q.push(("fromId", id.to_string())),
            AggFrom::Time(t) => q.push(("startTime", t.to_string())),
        }
        let rows: Vec<RestAggTrade> = self.get(market, path, &q).await?;
        let id = |v: i64| {
            u64::try_from(v).map_err(|_| RestError::Decode {
                market,
                path,
                detail: format!("negative id {v}"),
            })
        };
        rows.into_iter()
            .map(|r| {
                Ok(AggTrade {
                    agg_id: id(r.agg_id)?,
                    first_id: id(r.first_trade_id)?,
                    last_id: id(r.last_trade_id)?,
                    price: r.price,
                    qty: r.qty,
                    ts_ms: r.time,
                    buyer_is_maker: r.buyer_is_maker,
                })
            })
            .collect()
    }

    /// The most recent `limit` trades (spot `/api/v3/trades`, options `/eapi/v1/trades`),
    /// oldest first. Not for USD-M, whose node ids are aggregate ids.
    pub async fn recent_trades(
        &self,
        market: Market,
        symbol: &Symbol,
        limit: u16,
    ) -> Result<Vec<Trade>, RestError> {
        if !(1..=MAX_TRADES_LIMIT).contains(&limit) {
            return Err(RestError::InvalidRequest(format!(
                "limit {limit} outside 1..={MAX_TRADES_LIMIT}"
            )));
        }
        let q: Vec<(&str, String)> = vec![
            ("symbol", symbol.as_str().to_string()),
            ("limit", limit.to_string()),
        ];
        match market {
            Market::Spot => {
                self.trade_page::<RestTrade>(market, "/api/v3/trades", symbol, &q)
                    .await
            }
            Market::Options => {
                self.trade_page::<OptionTrade>(market, "/eapi/v1/trades", symbol, &q)
                    .await
            }
            Market::Usdm => Err(RestError::InvalidRequest(
                "USD-M recent trades are not aggregate trades; use agg_trades".into(),
            )),
        }
    }

    /// One page of a trade list at `path`, as the node's trades.
    async fn trade_page<R: TradeRow>(
        &self,
        market: Market,
        path: &'static str,
        symbol: &Symbol,
        query: &[(&str, String)],
    ) -> Result<Vec<Trade>, RestError> {
        let rows: Vec<R> = self.get(market, path, query).await?;
        rows.into_iter()
            .map(|r| {
                r.into_trade(symbol).map_err(|id| RestError::Decode {
                    market,
                    path,
                    detail: format!("negative trade id {id}"),
                })
            })
            .collect()
    }

    /// One GET with the ban check, weight bookkeeping and error mapping.
    async fn get<T: DeserializeOwned>(
        &self,
        market: Market,
        path: &'static str,
        query: &[(&str, String)],
    ) -> Result<T, RestError> {
        let _probe = self.admit(market).await?;
        let url = format!("{}{path}", self.base[idx(market)]);
        let res = self
            .http
            .get(&url)
            .query(query)
            .send()
            .await
            .map_err(|source| RestError::Transport { market, source })?;
        let status = res.status();
        let st = &self.state[idx(market)];
        if let Some(w) = res
            .headers()
            .get("x-mbx-used-weight-1m")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            st.used_weight.store(w, Ordering::Relaxed);
            metrics::gauge!("pricefeed_rest_used_weight", "market" => market.as_str())
                .set(w as f64);
        }
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = res
            .bytes()
            .await
            .map_err(|source| RestError::Transport { market, source })?;

        if status.as_u16() == 429 || status.as_u16() == 418 {
            let retry_after = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            self.suspend(market, retry_after);
            if let Some(board) = &self.board {
                let until = wall_ms() + retry_after.as_millis() as i64;
                if tokio::time::timeout(BOARD_TIMEOUT, board.hold(market, until))
                    .await
                    .is_err()
                {
                    tracing::warn!(%market, "REST hold not shared: the board did not answer");
                }
            }
            metrics::counter!("pricefeed_rest_rate_limited_total", "market" => market.as_str(), "status" => status.as_u16().to_string()).increment(1);
            tracing::warn!(%market, status = status.as_u16(), ?retry_after, "REST rate limited; suspending calls to this market");
            return Err(RestError::RateLimited {
                market,
                status: status.as_u16(),
                retry_after,
                api: serde_json::from_slice(&body).ok(),
            });
        }
        // Answered without a 429/418: the limit is behind us (unless a call sent before this
        // one came back refused meanwhile).
        if self.banned_for(market).is_none() {
            st.recovering.store(false, Ordering::Release);
        }
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&body) {
                Ok(api) => RestError::Api {
                    market,
                    status: status.as_u16(),
                    api,
                },
                Err(_) => RestError::Http {
                    market,
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                },
            });
        }
        serde_json::from_slice(&body).map_err(|e| RestError::Decode {
            market,
            path,
            detail: e.to_string(),
        })
    }
}

/// A row of one of the REST trade lists. `Err` carries an id that is negative.
trait TradeRow: DeserializeOwned {
    fn into_trade(self, symbol: &Symbol) -> Result<Trade, i64>;
}

fn trade_id(id: i64) -> Result<u64, i64> {
    u64::try_from(id).map_err(|_| id)
}

impl TradeRow for RestTrade {
    fn into_trade(self, symbol: &Symbol) -> Result<Trade, i64> {
        Ok(Trade {
            symbol: symbol.clone(),
            trade_id: trade_id(self.id)?,
            price: self.price,
            qty: self.qty,
            ts_ms: self.time,
            buyer_is_maker: self.is_buyer_maker,
        })
    }
}

/// On USD-M the node's ids are the aggregate ids (the feed is `@aggTrade`).
impl TradeRow for RestAggTrade {
    fn into_trade(self, symbol: &Symbol) -> Result<Trade, i64> {
        Ok(Trade {
            symbol: symbol.clone(),
            trade_id: trade_id(self.agg_id)?,
            price: self.price,
            qty: self.qty,
            ts_ms: self.time,
            buyer_is_maker: self.buyer_is_maker,
        })
    }
}

/// `side` -1 = taker sell = buyer maker.
impl TradeRow for OptionTrade {
    fn into_trade(self, symbol: &Symbol) -> Result<Trade, i64> {
        Ok(Trade {
            symbol: symbol.clone(),
            trade_id: trade_id(self.trade_id)?,
            price: self.price,
            qty: self.qty,
            ts_ms: self.time,
            buyer_is_maker: self.side < 0,
        })
    }
}
