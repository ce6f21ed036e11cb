//! Binance REST routes of the three markets, with request weights and `{code,msg}` errors.
//!
//! Every answer comes from the history rings under the engine's lock, so REST is the ground
//! truth (it is never faulted). A `fromId` older than the retained history is an explicit
//! error (-1130) rather than a silently shifted page: a client must be able to tell "no such
//! trades" from "trades the simulator no longer has".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pricefeed_broker::rest::{
    self as wire, Filter, FuturesExchangeInfo, FuturesSymbol, OptionAsset, OptionContract,
    OptionSymbol, OptionTrade, OptionsExchangeInfo, RateLimit, RestAggTrade, RestTrade, ServerTime,
    SpotExchangeInfo, SpotSymbol, TickerPrice, codes,
};
use rust_decimal::Decimal;
use serde_json::json;

use crate::catalogue::{Instrument, Kind, Market};
use crate::engine::{AggQuery, Engine, Rec, now_ms};
use crate::limits::{Verdict, WeightLimiter};
use crate::ws::{self, WsState};

/// State of one market's REST routes.
#[derive(Debug, Clone)]
pub struct RestState {
    pub engine: Arc<Engine>,
    pub market: Market,
    pub limiter: Arc<WeightLimiter>,
}

/// A Binance-style error response.
#[derive(Debug)]
pub struct BErr(StatusCode, i64, String);

impl IntoResponse for BErr {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"code": self.1, "msg": self.2}))).into_response()
    }
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;
type BResult<T> = Result<T, BErr>;

fn bad(code: i64, msg: impl Into<String>) -> BErr {
    BErr(StatusCode::BAD_REQUEST, code, msg.into())
}

fn params(p: Params) -> BResult<HashMap<String, String>> {
    p.map(|Query(q)| q).map_err(|_| {
        bad(
            codes::ILLEGAL_CHARS,
            "Illegal characters found in a parameter.",
        )
    })
}

fn int_param(q: &HashMap<String, String>, name: &str) -> BResult<Option<i64>> {
    match q.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            bad(
                codes::ILLEGAL_CHARS,
                format!("Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."),
            )
        }),
    }
}

fn limit_param(q: &HashMap<String, String>, default: usize, max: usize) -> BResult<usize> {
    match int_param(q, "limit")? {
        None => Ok(default),
        Some(l) if l >= 1 && l as usize <= max => Ok(l as usize),
        Some(_) => Err(bad(
            codes::INVALID_PARAMETER,
            format!("Data sent for parameter 'limit' is not valid; legal range is 1..={max}."),
        )),
    }
}

fn valid_symbol_chars(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

fn symbol_param(st: &RestState, q: &HashMap<String, String>) -> BResult<Instrument> {
    let Some(s) = q.get("symbol").filter(|s| !s.is_empty()) else {
        return Err(bad(
            codes::MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        ));
    };
    if !valid_symbol_chars(s) {
        return Err(bad(
            codes::ILLEGAL_CHARS,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,40}$'.",
        ));
    }
    let w = st.engine.world.read().expect("world lock");
    match w.cat.lookup(st.market, s) {
        Some(i) if !i.removed => Ok(i.clone()),
        _ => Err(bad(codes::BAD_SYMBOL, "Invalid symbol.")),
    }
}

/// Request weight of a path (spot weights from the docs; derivatives from their docs).
fn weight(market: Market, path: &str, q: Option<&str>) -> u64 {
    let has_symbol = q.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("symbol=")));
    let tail = path
        .rsplit_once("/v1/")
        .or_else(|| path.rsplit_once("/v3/"))
        .map_or(path, |(_, t)| t);
    match (market, tail) {
        (_, "ping" | "time") => 1,
        (Market::Spot, "exchangeInfo") => 20,
        (Market::Spot, "trades" | "historicalTrades") => 25,
        (Market::Spot, "aggTrades") => 4,
        (Market::Spot, "ticker/price") => {
            if has_symbol {
                2
            } else {
                4
            }
        }
        (_, "exchangeInfo") => 1,
        (_, "trades") => 5,
        (_, "historicalTrades" | "aggTrades") => 20,
        (_, "ticker/price") => {
            if has_symbol {
                1
            } else {
                2
            }
        }
        _ => 1,
    }
}

async fn weigh(
    State(st): State<RestState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let w = weight(st.market, req.uri().path(), req.uri().query());
    let verdict = st.limiter.charge_from(peer, w, now_ms());
    match verdict {
        Verdict::Ok { used } => {
            let mut res = next.run(req).await;
            res.headers_mut()
                .insert("x-mbx-used-weight-1m", header(used));
            res.headers_mut().insert("x-mbx-used-weight", header(used));
            res
        }
        Verdict::Limited {
            used,
            retry_after_s,
        } => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many requests; current limit of IP({}) is {} requests per minute. Please use the websocket for live updates to avoid polling the API.",
                peer.ip(),
                st.limiter.limit()
            ),
            used,
            retry_after_s,
        ),
        Verdict::Banned {
            used,
            retry_after_s,
        } => refusal(
            StatusCode::IM_A_TEAPOT,
            format!(
                "Way too many requests; IP({}) banned for {} s. Please use the websocket for live updates to avoid bans.",
                peer.ip(),
                retry_after_s
            ),
            used,
            retry_after_s,
        ),
    }
}

fn header(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// A 429 (over the weight limit) or 418 (banned) reply with the headers clients back off on.
fn refusal(status: StatusCode, msg: String, used: u64, retry_after_s: u64) -> Response {
    metrics::counter!("sim_rest_limited_total", "status" => status.as_str().to_owned())
        .increment(1);
    let mut res = BErr(status, codes::TOO_MANY_REQUESTS, msg).into_response();
    res.headers_mut()
        .insert("retry-after", header(retry_after_s));
    res.headers_mut()
        .insert("x-mbx-used-weight-1m", header(used));
    res
}

/// The router of one market listener: REST under its prefix plus the WS routes.
pub fn router(st: RestState, ws_state: WsState) -> Router {
    let p = match st.market {
        Market::Spot => "/api/v3",
        Market::Futures => "/fapi/v1",
        Market::Options => "/eapi/v1",
    };
    let mut r = Router::new()
        .route(
            &format!("{p}/ping"),
            get(|| async { axum::Json(json!({})) }),
        )
        .route(
            &format!("{p}/time"),
            get(|| async {
                axum::Json(ServerTime {
                    server_time: now_ms(),
                })
            }),
        )
        .route(&format!("{p}/exchangeInfo"), get(exchange_info))
        .route(&format!("{p}/trades"), get(trades))
        .route(&format!("{p}/historicalTrades"), get(historical_trades));
    if st.market != Market::Options {
        r = r
            .route(&format!("{p}/aggTrades"), get(agg_trades))
            .route(&format!("{p}/ticker/price"), get(ticker_price));
    }
    let rest = r
        .fallback(|| async {
            BErr(
                StatusCode::NOT_FOUND,
                codes::UNKNOWN,
                "Unknown endpoint.".into(),
            )
        })
        .layer(middleware::from_fn_with_state(st.clone(), weigh))
        .with_state(st);
    let ws_routes = Router::new()
        .route("/ws", get(ws::ws_root))
        .route("/ws/", get(ws::ws_root))
        .route("/ws/{*streams}", get(ws::ws_path))
        .route("/stream", get(ws::stream))
        .with_state(ws_state);
    ws_routes.merge(rest)
}

fn rate_limits(limit: u64) -> Vec<RateLimit> {
    vec![RateLimit {
        rate_limit_type: "REQUEST_WEIGHT".into(),
        interval: "MINUTE".into(),
        interval_num: 1,
        limit,
    }]
}

fn filters(i: &Instrument) -> Vec<Filter> {
    let mut min_price = i.tick;
    min_price.rescale(i.price_scale);
    let mut max_price = Decimal::from(10_000_000) * i.tick;
    max_price.rescale(i.price_scale);
    let mut tick = i.tick;
    tick.rescale(i.price_scale);
    let mut step = i.step;
    step.rescale(i.qty_scale);
    let mut max_qty = Decimal::from(9_000_000) * i.step.max(Decimal::new(1, 2));
    max_qty.rescale(i.qty_scale);
    vec![
        Filter::Price {
            min_price,
            max_price,
            tick_size: tick,
        },
        Filter::LotSize {
            min_qty: step,
            max_qty,
            step_size: step,
        },
    ]
}

async fn exchange_info(State(st): State<RestState>, p: Params) -> BResult<Response> {
    let q = params(p)?;
    let now = now_ms();
    let mut wanted: Option<Vec<String>> = None;
    if let Some(s) = q.get("symbol") {
        wanted = Some(vec![s.clone()]);
    } else if let Some(s) = q.get("symbols") {
        let list: Vec<String> = serde_json::from_str(s).map_err(|_| {
            bad(codes::ILLEGAL_CHARS, "Illegal characters found in parameter 'symbols'; legal range is '^\\[(\"[A-Z0-9-_.]{1,40}\"(,\"[A-Z0-9-_.]{1,40}\"){0,}){0,1}\\]$'.")
        })?;
        wanted = Some(list);
    }
    let status = q.get("symbolStatus").cloned();
    let w = st.engine.world.read().expect("world lock");
    let mut sel: Vec<&Instrument> = Vec::new();
    match &wanted {
        Some(list) => {
            for s in list {
                if !valid_symbol_chars(s) {
                    return Err(bad(
                        codes::ILLEGAL_CHARS,
                        "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,40}$'.",
                    ));
                }
                match w.cat.lookup(st.market, s) {
                    Some(i) if !i.removed => sel.push(i),
                    _ => return Err(bad(codes::BAD_SYMBOL, "Invalid symbol.")),
                }
            }
        }
        None => sel.extend(w.cat.listed(st.market)),
    }
    if let Some(s) = &status {
        sel.retain(|i| &i.status == s);
    }
    let limit = st.limiter.limit();
    let body = match st.market {
        Market::Spot => serde_json::to_value(SpotExchangeInfo {
            timezone: "UTC".into(),
            server_time: now,
            rate_limits: rate_limits(limit),
            exchange_filters: vec![],
            symbols: sel
                .iter()
                .map(|i| SpotSymbol {
                    symbol: i.symbol.clone(),
                    status: i.status.clone(),
                    base_asset: i.base.clone(),
                    base_asset_precision: 8,
                    quote_asset: i.quote.clone(),
                    quote_precision: 8,
                    quote_asset_precision: 8,
                    order_types: vec!["LIMIT".into(), "LIMIT_MAKER".into(), "MARKET".into()],
                    iceberg_allowed: true,
                    oco_allowed: true,
                    is_spot_trading_allowed: true,
                    is_margin_trading_allowed: i.underlying_no < 20,
                    filters: filters(i),
                    permissions: vec![],
                    permission_sets: vec![vec!["SPOT".into(), "MARGIN".into()]],
                })
                .collect(),
        }),
        Market::Futures => serde_json::to_value(FuturesExchangeInfo {
            timezone: "UTC".into(),
            server_time: now,
            rate_limits: rate_limits(limit),
            exchange_filters: vec![],
            symbols: sel
                .iter()
                .map(|i| FuturesSymbol {
                    symbol: i.symbol.clone(),
                    pair: i.pair.clone(),
                    contract_type: match &i.kind {
                        Kind::Delivery { contract_type } => contract_type.clone(),
                        _ => "PERPETUAL".into(),
                    },
                    delivery_date: i.expiry,
                    onboard_date: i.listed_at,
                    status: i.status.clone(),
                    base_asset: i.base.clone(),
                    quote_asset: i.quote.clone(),
                    margin_asset: i.quote.clone(),
                    price_precision: i.price_scale,
                    quantity_precision: i.qty_scale,
                    underlying_type: "COIN".into(),
                    underlying_sub_type: vec![],
                    filters: filters(i),
                    order_types: vec!["LIMIT".into(), "MARKET".into()],
                    time_in_force: vec!["GTC".into(), "IOC".into(), "FOK".into(), "GTX".into()],
                })
                .collect(),
        }),
        Market::Options => {
            let mut pairs: Vec<&Instrument> = Vec::new();
            for i in &sel {
                if !pairs.iter().any(|p| p.pair == i.pair) {
                    pairs.push(i);
                }
            }
            serde_json::to_value(OptionsExchangeInfo {
                timezone: "UTC".into(),
                server_time: now,
                option_contracts: pairs
                    .iter()
                    .map(|i| OptionContract {
                        base_asset: i.base.clone(),
                        quote_asset: i.quote.clone(),
                        underlying: i.pair.clone(),
                        settle_asset: i.quote.clone(),
                    })
                    .collect(),
                option_assets: vec![OptionAsset {
                    name: "USDT".into(),
                }],
                option_symbols: sel
                    .iter()
                    .map(|i| {
                        let (call, strike) = match &i.kind {
                            Kind::Option { call, strike } => (*call, *strike),
                            _ => (true, Decimal::ZERO),
                        };
                        let f = filters(i);
                        let (min_qty, max_qty) = match &f[1] {
                            Filter::LotSize {
                                min_qty, max_qty, ..
                            } => (*min_qty, *max_qty),
                            _ => (i.step, i.step),
                        };
                        OptionSymbol {
                            symbol: i.symbol.clone(),
                            underlying: i.pair.clone(),
                            side: if call { "CALL" } else { "PUT" }.into(),
                            strike_price: strike.normalize(),
                            expiry_date: i.expiry,
                            unit: 1,
                            quote_asset: i.quote.clone(),
                            price_scale: i.price_scale,
                            quantity_scale: i.qty_scale,
                            min_qty,
                            max_qty,
                            maker_fee_rate: Decimal::new(2, 4),
                            taker_fee_rate: Decimal::new(2, 4),
                            filters: f,
                            status: Some(i.status.clone()),
                        }
                    })
                    .collect(),
                rate_limits: rate_limits(limit),
            })
        }
    }
    .map_err(|e| {
        BErr(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::UNKNOWN,
            format!("serialize: {e}"),
        )
    })?;
    Ok(axum::Json(body).into_response())
}

fn quote_qty(r: &Rec) -> Decimal {
    (r.price * r.qty).normalize()
}

fn trade_rows(st: &RestState, inst: &Instrument, rows: Vec<(i64, Rec)>) -> Response {
    match st.market {
        Market::Options => axum::Json(
            rows.into_iter()
                .map(|(id, r)| OptionTrade {
                    id,
                    trade_id: id,
                    symbol: inst.symbol.clone(),
                    price: r.price,
                    qty: r.qty,
                    quote_qty: quote_qty(&r),
                    side: if r.buyer_maker { -1 } else { 1 },
                    time: r.time,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        m => axum::Json(
            rows.into_iter()
                .map(|(id, r)| RestTrade {
                    id,
                    price: r.price,
                    qty: r.qty,
                    quote_qty: quote_qty(&r),
                    time: r.time,
                    is_buyer_maker: r.buyer_maker,
                    is_best_match: (m == Market::Spot).then_some(true),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
    }
}

async fn trades(State(st): State<RestState>, p: Params) -> BResult<Response> {
    let q = params(p)?;
    let inst = symbol_param(&st, &q)?;
    let default = if st.market == Market::Options {
        100
    } else {
        500
    };
    let limit = limit_param(&q, default, 1000)?;
    let rows = st.engine.world.read().expect("world lock").rings[inst.id as usize].recent(limit);
    Ok(trade_rows(&st, &inst, rows))
}

async fn historical_trades(State(st): State<RestState>, p: Params) -> BResult<Response> {
    let q = params(p)?;
    let inst = symbol_param(&st, &q)?;
    let limit = limit_param(&q, 500, 1000)?;
    let from = int_param(&q, "fromId")?;
    let rows = {
        let w = st.engine.world.read().expect("world lock");
        let ring = &w.rings[inst.id as usize];
        match from {
            None => ring.recent(limit),
            Some(f) => ring.from_id(f, limit).map_err(|oldest| {
                bad(
                    codes::INVALID_PARAMETER,
                    format!("Data sent for parameter 'fromId' is not valid: trades before id {oldest} are no longer retained."),
                )
            })?,
        }
    };
    Ok(trade_rows(&st, &inst, rows))
}

async fn agg_trades(State(st): State<RestState>, p: Params) -> BResult<Response> {
    let q = params(p)?;
    let inst = symbol_param(&st, &q)?;
    let limit = limit_param(&q, 500, 1000)?;
    let from = int_param(&q, "fromId")?;
    let start = int_param(&q, "startTime")?;
    let end = int_param(&q, "endTime")?;
    if from.is_some() && (start.is_some() || end.is_some()) {
        return Err(bad(
            codes::OPTIONAL_PARAMS_BAD_COMBO,
            "Combination of optional parameters invalid.",
        ));
    }
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        return Err(bad(
            codes::OPTIONAL_PARAMS_BAD_COMBO,
            "Combination of optional parameters invalid.",
        ));
    }
    let query = match (from, start, end) {
        (Some(f), _, _) => AggQuery::FromId(f),
        (None, None, None) => AggQuery::Recent,
        (None, s, e) => AggQuery::Time { start: s, end: e },
    };
    let aggs =
        st.engine.world.read().expect("world lock").rings[inst.id as usize].aggs(query, limit);
    let spot = st.market == Market::Spot;
    Ok(axum::Json(
        aggs.into_iter()
            .map(|a| RestAggTrade {
                agg_id: a.agg_id,
                price: a.price,
                qty: a.qty,
                first_trade_id: a.first_id,
                last_trade_id: a.last_id,
                time: a.time,
                buyer_is_maker: a.buyer_maker,
                best_match: spot.then_some(true),
            })
            .collect::<Vec<_>>(),
    )
    .into_response())
}

async fn ticker_price(State(st): State<RestState>, p: Params) -> BResult<Response> {
    let q = params(p)?;
    let with_time = st.market == Market::Futures;
    let row = |w: &crate::engine::World, i: &Instrument| {
        let ring = &w.rings[i.id as usize];
        let (price, time) = ring
            .last()
            .map_or((i.price(i.start_ticks), i.listed_at), |r| (r.price, r.time));
        TickerPrice {
            symbol: i.symbol.clone(),
            price,
            time: with_time.then_some(time),
        }
    };
    if q.contains_key("symbol") {
        let inst = symbol_param(&st, &q)?;
        let w = st.engine.world.read().expect("world lock");
        return Ok(axum::Json(row(&w, &inst)).into_response());
    }
    let w = st.engine.world.read().expect("world lock");
    let rows: Vec<TickerPrice> = w.cat.listed(st.market).map(|i| row(&w, i)).collect();
    Ok(axum::Json(rows).into_response())
}

/// Keeps the wire module referenced for docs readers: the error type clients parse.
pub type WireError = wire::ApiError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights() {
        assert_eq!(weight(Market::Spot, "/api/v3/exchangeInfo", None), 20);
        assert_eq!(
            weight(Market::Spot, "/api/v3/aggTrades", Some("symbol=X")),
            4
        );
        assert_eq!(weight(Market::Spot, "/api/v3/ticker/price", None), 4);
        assert_eq!(
            weight(Market::Spot, "/api/v3/ticker/price", Some("symbol=X")),
            2
        );
        assert_eq!(weight(Market::Futures, "/fapi/v1/trades", None), 5);
        assert_eq!(weight(Market::Options, "/eapi/v1/exchangeInfo", None), 1);
    }
}
