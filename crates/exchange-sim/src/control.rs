//! The control API (`/control/...`) on its own listener, next to `/livez`, `/readyz`, `/metrics`.
//!
//! It is how tests and operators steer the simulator at run time (faults, listing changes,
//! kicking WS clients) and ask ground-truth questions (the exact trades of a symbol in a range),
//! separate from the Binance routes so no real client ever hits it by accident. `/control/rest`
//! changes the REST weight limits at run time (a 429 storm) and reports what each listener
//! answered. Errors here are our own `application/problem+json`, not Binance `{code,msg}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pricefeed_runtime::problem::Problem;
use serde::Deserialize;
use serde_json::json;

use crate::catalogue::Market;
use crate::engine::Engine;
use crate::faults::{FaultSnapshot, FaultSpec};
use crate::limits::WeightLimiter;

/// Routes under `/control`.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route(
            "/control/faults",
            get(get_faults).delete(clear_faults).put(put_all_faults),
        )
        .route("/control/faults/global", put(put_global))
        .route(
            "/control/faults/symbols/{symbol}",
            put(put_symbol).delete(delete_symbol),
        )
        .route("/control/faults/stats", get(fault_stats))
        .route("/control/catalogue", get(catalogue))
        .route("/control/listings", get(listings))
        .route("/control/listings/step", post(step_listing))
        .route("/control/truth/trades", get(truth_trades))
        .route("/control/ws/kick", post(kick))
        .route("/control/stats", get(stats))
        .with_state(engine)
}

async fn get_faults(State(e): State<Arc<Engine>>) -> Json<FaultSnapshot> {
    Json((*e.faults.snapshot()).clone())
}

fn check(spec: &FaultSpec, prefix: &str) -> Result<(), Problem> {
    spec.validate()
        .map_err(|(field, msg)| Problem::bad_request(&format!("{prefix}{field}"), msg))
}

async fn put_all_faults(
    State(e): State<Arc<Engine>>,
    Json(s): Json<FaultSnapshot>,
) -> Result<Json<FaultSnapshot>, Problem> {
    check(&s.global, "global.")?;
    for (k, v) in &s.symbols {
        check(v, &format!("symbols.{k}."))?;
    }
    Ok(Json((*e.faults.update(|cur| *cur = s)).clone()))
}

async fn clear_faults(State(e): State<Arc<Engine>>) -> Json<FaultSnapshot> {
    Json((*e.faults.update(|cur| *cur = FaultSnapshot::default())).clone())
}

async fn put_global(
    State(e): State<Arc<Engine>>,
    Json(spec): Json<FaultSpec>,
) -> Result<Json<FaultSnapshot>, Problem> {
    check(&spec, "")?;
    Ok(Json((*e.faults.update(|cur| cur.global = spec)).clone()))
}

async fn put_symbol(
    State(e): State<Arc<Engine>>,
    Path(symbol): Path<String>,
    Json(spec): Json<FaultSpec>,
) -> Result<Json<FaultSnapshot>, Problem> {
    check(&spec, "")?;
    let sym = symbol.to_ascii_uppercase();
    Ok(Json(
        (*e.faults.update(|cur| {
            cur.symbols.insert(sym, spec);
        }))
        .clone(),
    ))
}

async fn delete_symbol(
    State(e): State<Arc<Engine>>,
    Path(symbol): Path<String>,
) -> Json<FaultSnapshot> {
    let sym = symbol.to_ascii_uppercase();
    Json(
        (*e.faults.update(|cur| {
            cur.symbols.remove(&sym);
        }))
        .clone(),
    )
}

async fn fault_stats(State(e): State<Arc<Engine>>) -> Response {
    Json(e.faults.stats.snapshot()).into_response()
}

fn market_param(q: &HashMap<String, String>) -> Result<Market, Problem> {
    let m = q.get("market").map(String::as_str).unwrap_or("spot");
    Market::parse(m)
        .ok_or_else(|| Problem::bad_request("market", "must be spot, futures or options"))
}

async fn catalogue(
    State(e): State<Arc<Engine>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let m = match q.get("market") {
        Some(_) => Some(market_param(&q)?),
        None => None,
    };
    let w = e.world.read().expect("world lock");
    let list: Vec<_> = w
        .cat
        .instruments
        .iter()
        .filter(|i| m.is_none_or(|m| i.market == m))
        .collect();
    Ok(
        Json(json!({"count": list.len(), "underlyings": w.cat.underlyings, "instruments": list}))
            .into_response(),
    )
}

async fn listings(
    State(e): State<Arc<Engine>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let since: i64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let w = e.world.read().expect("world lock");
    let list: Vec<_> = w
        .listings
        .iter()
        .filter(|c| c.time >= since)
        .cloned()
        .collect();
    Json(list).into_response()
}

async fn step_listing(State(e): State<Arc<Engine>>) -> Response {
    Json(e.step_listing()).into_response()
}

/// Ground truth: every retained trade of a symbol, by id range or time range.
async fn truth_trades(
    State(e): State<Arc<Engine>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let market = market_param(&q)?;
    let symbol = q
        .get("symbol")
        .ok_or_else(|| Problem::bad_request("symbol", "required"))?;
    let num = |k: &str| -> Result<Option<i64>, Problem> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Problem::bad_request(k, "must be an integer"))
            })
            .transpose()
    };
    let limit = num("limit")?.unwrap_or(100_000).clamp(1, 1_000_000) as usize;
    let (start, end, from_id) = (num("start")?, num("end")?, num("fromId")?);
    let w = e.world.read().expect("world lock");
    let inst = w
        .cat
        .lookup_any_case(market, symbol)
        .ok_or_else(|| Problem::not_found(format!("no {} symbol {symbol}", market.as_str())))?;
    let ring = &w.rings[inst.id as usize];
    let rows = match from_id {
        Some(f) => ring
            .from_id(f, limit)
            .unwrap_or_else(|oldest| ring.from_id(oldest, limit).unwrap_or_default()),
        None => ring.time_range(start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX), limit),
    };
    let trades: Vec<_> = rows
        .iter()
        .map(|(id, r)| {
            json!({"id": id, "price": r.price, "qty": r.qty, "time": r.time,
                   "isBuyerMaker": r.buyer_maker, "aggId": r.agg})
        })
        .collect();
    Ok(Json(json!({
        "market": market,
        "symbol": inst.symbol,
        "status": inst.status,
        "oldestId": ring.oldest_id(),
        "nextId": ring.next_id(),
        "retained": ring.len(),
        "trades": trades,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct KickBody {
    #[serde(default)]
    server_shutdown: bool,
}

async fn kick(State(e): State<Arc<Engine>>, body: Option<Json<KickBody>>) -> Response {
    let notify = body.map(|Json(b)| b.server_shutdown).unwrap_or(false);
    let n = e.kick.send(notify).unwrap_or(0);
    Json(json!({"kicked": n})).into_response()
}

async fn stats(State(e): State<Arc<Engine>>) -> Response {
    let w = e.world.read().expect("world lock");
    let per_market: HashMap<&str, usize> = Market::ALL
        .iter()
        .map(|m| (m.as_str(), w.cat.listed(*m).count()))
        .collect();
    Json(json!({
        "openConnections": e.open_conns.load(Ordering::Relaxed),
        "tradesGenerated": e.generated.load(Ordering::Relaxed),
        "instruments": per_market,
        "faultsInjected": e.faults.stats.snapshot(),
    }))
    .into_response()
}

/// The REST limiters of the market listeners, in [`Market::ALL`] order.
pub type RestLimiters = Arc<Vec<(Market, Arc<WeightLimiter>)>>;

/// Routes under `/control/rest`: each listener's weight limit and what it answered.
///
/// - `GET /control/rest`: `{spot|futures|options: {limit, configured_limit, window_ms,
///   ban_after, ban_ms, stats: {requests, ok, limited, banned, early_ip, early_conn, comebacks},
///   comeback_margin_ms: {min, max} | null}}`;
/// - `PUT /control/rest/limits` `{"weight_limit": N, "market": "spot"}` (`market` optional =
///   every listener): the limit per window from now on; 0 answers every request with 429;
/// - `DELETE /control/rest/limits`: the configured limits again (running bans stay).
pub fn rest_router(limiters: RestLimiters) -> Router {
    Router::new()
        .route("/control/rest", get(rest_stats))
        .route("/control/rest/limits", put(put_limits).delete(clear_limits))
        .with_state(limiters)
}

fn describe(l: &RestLimiters) -> serde_json::Value {
    serde_json::Value::Object(
        l.iter()
            .map(|(m, lim)| (m.as_str().to_string(), lim.describe()))
            .collect(),
    )
}

async fn rest_stats(State(l): State<RestLimiters>) -> Json<serde_json::Value> {
    Json(describe(&l))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    weight_limit: u64,
    #[serde(default)]
    market: Option<String>,
}

async fn put_limits(
    State(l): State<RestLimiters>,
    Json(b): Json<LimitsBody>,
) -> Result<Json<serde_json::Value>, Problem> {
    let only =
        match b.market.as_deref() {
            None => None,
            Some(m) => Some(Market::parse(m).ok_or_else(|| {
                Problem::bad_request("market", "must be spot, futures or options")
            })?),
        };
    for (m, lim) in l.iter() {
        if only.is_none_or(|o| o == *m) {
            lim.set_limit(Some(b.weight_limit));
        }
    }
    Ok(Json(describe(&l)))
}

async fn clear_limits(State(l): State<RestLimiters>) -> Json<serde_json::Value> {
    for (_, lim) in l.iter() {
        lim.set_limit(None);
    }
    Json(describe(&l))
}
