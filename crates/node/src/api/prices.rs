//! `GET /api/v1/prices/{symbol}` and `GET /api/v1/prices?symbols=`: the latest trade of any
//! instrument, from any node.
//!
//! A symbol names the **spot** instrument unless `market=usdm|options` says otherwise (the USD-M
//! perpetual `BTCUSDT` shares its pair's symbol; see docs/decisions/0005-instrument-keys.md).
//! Reads never touch Postgres on the hit path: the node-local state answers for instruments
//! this node ingests, the [`crate::price_cache`] (fed by the owners' tick channel) for the rest,
//! and Redis (`HGET`/`HMGET` on the price hash) on a cache miss. Only a miss asks
//! Postgres, to tell an unknown instrument from one that has not traded yet: both are 404, with
//! different problem types (`unknown-instrument`, `no-trade-yet`) so clients can tell them apart.

use super::error::{ApiError, ApiResult};
use super::extract::Q;
use axum::Json;
use axum::extract::{Path, State};
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::schema::SymbolFmt;
use crate::ingest::connector::now_ms;
use crate::ingest::publish::{self, PriceDoc};
use crate::state::AppState;

/// Most symbols per batch request.
pub const MAX_BATCH: usize = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(crate::api::v1(routes!(get_price)))
        .routes(crate::api::v1(routes!(get_prices)))
}

/// The latest trade of one instrument.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PriceDto {
    /// `spot`, `usdm` or `options`.
    #[schema(example = "spot")]
    pub market: String,
    #[schema(example = "BTCUSDT")]
    pub symbol: String,
    #[schema(value_type = String, example = "90000.01000000")]
    pub price: Decimal,
    #[schema(value_type = String, example = "0.00123000")]
    pub qty: Decimal,
    /// Broker trade id (aggregate id on USD-M).
    pub trade_id: u64,
    /// Trade time, ms since the epoch.
    pub ts: i64,
    /// Now minus `ts`, in ms (0 when our clock is behind the exchange's).
    pub age_ms: i64,
}

impl PriceDto {
    pub fn from_doc(d: PriceDoc, now_ms: i64) -> Self {
        Self {
            age_ms: (now_ms - d.ts).max(0),
            market: d.market,
            symbol: d.symbol,
            price: d.price,
            qty: d.qty,
            trade_id: d.trade_id,
            ts: d.ts,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MarketParam {
    /// `spot` (default), `usdm` or `options`.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    /// Comma-separated symbols (each as in `/prices/{symbol}`, no spaces), 1 to 500.
    #[param(
        pattern = "^[A-Za-z0-9_.-]{2,60}(,[A-Za-z0-9_.-]{2,60}){0,499}$",
        example = "BTCUSDT,ETHUSDT"
    )]
    symbols: String,
    /// `spot` (default), `usdm` or `options`: the market of every symbol in the list.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
}

/// Several latest prices; instruments without a price are listed in `missing`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PricesDto {
    pub items: Vec<PriceDto>,
    /// Requested symbols that are unknown or have no trade yet.
    pub missing: Vec<String>,
}

fn parse_market(m: Option<&str>) -> ApiResult<Market> {
    match m {
        None => Ok(Market::Spot),
        Some(s) => Market::parse(s)
            .ok_or_else(|| ApiError::param("market", "market must be spot, usdm or options")),
    }
}

/// Latest prices of `keys`, in order: local state for instruments this node ingests, then the
/// [`crate::live_cache`], then one Redis HMGET for the misses (stored in the cache). When Redis
/// cannot be read, the misses get the last value this node has seen (its `age_ms` tells how
/// old); only a miss with no such value makes the answer a 503.
pub async fn lookup(st: &AppState, keys: &[InstrumentKey]) -> ApiResult<Vec<Option<PriceDto>>> {
    let now = now_ms();
    let mut out: Vec<Option<PriceDto>> = Vec::with_capacity(keys.len());
    let mut remote: Vec<usize> = Vec::new();
    {
        let core = st.ingest.core.lock().unwrap();
        for (i, k) in keys.iter().enumerate() {
            match core.latest(k) {
                Some(l) => out.push(Some(PriceDto::from_doc(publish::price_doc(k, &l), now))),
                None => {
                    out.push(None);
                    remote.push(i);
                }
            }
        }
    }
    remote.retain(|&i| match st.prices.get(keys[i].as_str()) {
        Some(d) => {
            out[i] = Some(PriceDto::from_doc(d, now));
            false
        }
        None => true,
    });
    if !remote.is_empty() {
        let ticket = st.prices.read_ticket();
        let ks: Vec<InstrumentKey> = remote.iter().map(|&i| keys[i].clone()).collect();
        let mut redis = st.redis.clone();
        match st
            .prices
            .read(publish::read_prices(&mut redis, &st.key_prefix, &ks))
            .await
        {
            Ok(docs) => {
                for (i, d) in remote.into_iter().zip(docs) {
                    if let Some(d) = d {
                        st.prices.store_read(ticket, &d);
                        out[i] = Some(PriceDto::from_doc(d, now));
                    }
                }
            }
            Err(e) => {
                for i in remote {
                    match st.prices.last_known(keys[i].as_str()) {
                        Some(d) => out[i] = Some(PriceDto::from_doc(d, now)),
                        None => return Err(e.into()),
                    }
                }
            }
        }
    }
    Ok(out)
}

/// [`lookup`] of one key, without the per-request vectors: node-local state, then the cache
/// (no allocation beyond the response body on a hit), then one Redis `HGET`, then the last
/// value seen when Redis cannot be read.
pub async fn lookup_one(st: &AppState, key: &InstrumentKey) -> ApiResult<Option<PriceDto>> {
    let now = now_ms();
    let local = st.ingest.core.lock().unwrap().latest(key);
    if let Some(l) = local {
        return Ok(Some(PriceDto::from_doc(publish::price_doc(key, &l), now)));
    }
    if let Some(d) = st.prices.get(key.as_str()) {
        return Ok(Some(PriceDto::from_doc(d, now)));
    }
    let ticket = st.prices.read_ticket();
    let mut redis = st.redis.clone();
    match st
        .prices
        .read(publish::read_price(&mut redis, &st.key_prefix, key))
        .await
    {
        Ok(doc) => Ok(doc.map(|d| {
            st.prices.store_read(ticket, &d);
            PriceDto::from_doc(d, now)
        })),
        Err(e) => match st.prices.last_known(key.as_str()) {
            Some(d) => Ok(Some(PriceDto::from_doc(d, now))),
            None => Err(e.into()),
        },
    }
}

/// Latest trade of one instrument.
#[utoipa::path(get, path = "/prices/{symbol}", tag = "prices",
    params(("symbol" = SymbolFmt, Path, description = "Symbol, any case"), MarketParam),
    responses(
        (status = 200, body = PriceDto),
        (status = 400, description = "Malformed symbol or market", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instrument (`unknown-instrument`) or no trade yet (`no-trade-yet`)", content_type = "application/problem+json"),
        (status = 503, description = "Redis or Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn get_price(
    State(st): State<AppState>,
    Path(symbol): Path<String>,
    Q(q): Q<MarketParam>,
) -> ApiResult<Json<PriceDto>> {
    let market = parse_market(q.market.as_deref())?;
    let symbol = Symbol::parse(&symbol).map_err(|e| ApiError::param("symbol", e.to_string()))?;
    let key = InstrumentKey::new(market, &symbol);
    if let Some(p) = lookup_one(&st, &key).await? {
        return Ok(Json(p));
    }
    let known = pricefeed_store::instruments::instrument_exists(&st.db, &key)
        .await
        .map_err(ApiError::from)?;
    Err(if known {
        ApiError::not_found(
            "no-trade-yet",
            format!("{key} is listed but no trade has been seen yet"),
        )
    } else {
        ApiError::not_found("unknown-instrument", format!("unknown instrument {key}"))
    })
}

/// The instruments `GET /prices?symbols=` asks for, in order without repeats. Pure, and public
/// for the query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn batch_keys(q: &BatchParams) -> ApiResult<Vec<InstrumentKey>> {
    let market = parse_market(q.market.as_deref())?;
    // Exactly the documented list: no empty entries, no spaces, 1 to MAX_BATCH symbols.
    if q.symbols.split(',').count() > MAX_BATCH {
        return Err(ApiError::param(
            "symbols",
            format!("symbols must list between 1 and {MAX_BATCH} symbols"),
        ));
    }
    let mut keys = Vec::new();
    for s in q.symbols.split(',') {
        let sym = Symbol::parse(s).map_err(|e| ApiError::param("symbols", e.to_string()))?;
        let k = InstrumentKey::new(market, &sym);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// Latest trades of up to 500 instruments of one market.
#[utoipa::path(get, path = "/prices", tag = "prices", params(BatchParams),
    responses(
        (status = 200, body = PricesDto),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", content_type = "application/problem+json"),
    ))]
async fn get_prices(
    State(st): State<AppState>,
    Q(q): Q<BatchParams>,
) -> ApiResult<Json<PricesDto>> {
    let keys = batch_keys(&q)?;
    let found = lookup(&st, &keys).await?;
    let mut items = Vec::new();
    let mut missing = Vec::new();
    for (k, p) in keys.iter().zip(found) {
        match p {
            Some(p) => items.push(p),
            None => missing.push(k.symbol_str().to_string()),
        }
    }
    Ok(Json(PricesDto { items, missing }))
}
