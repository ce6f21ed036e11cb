//! `GET /api/v1/vwap/{symbol}` (latest, or `at` a past time) and
//! `GET /api/v1/vwap/{symbol}/history`: rolling VWAP over the configured intervals.
//!
//! - **Latest**: kept in memory by the owning node and published to every node
//!   ([`crate::live`]); served from the node's VWAP cache, else one Redis `HGET`.
//! - **As of `at`**: the window `[at - interval, at)` summed in Postgres — confirmed buckets,
//!   the raw trades of the partial seconds at its edges, and raw trades past the confirmation
//!   horizon ([`pricefeed_store::history::read::window_sums`]) — so it equals Σp·q/Σq over the
//!   stored trades of the window exactly. `validated` is true when every trade in it is
//!   confirmed by the broker's REST API.
//! - **History**: the stored points (one per `vwap.history_cadence`, written by reconciliation)
//!   plus, after the last stored one, points computed the same way from the unconfirmed tail.

use super::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::State;
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_domain::trade::EARLIEST_TRADE_MS;
use pricefeed_store::history::VwapConfig;
use pricefeed_store::history::read::{self, window_sums};
use pricefeed_store::protocol::{VwapDoc, vwap_field};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Q, SymbolPath, parse_interval};
use super::schema::{SymbolFmt, TimeMs, VwapInterval, time_param};
use crate::ingest::connector::now_ms;
use crate::live::tap::vwap_doc;
use crate::state::AppState;

/// Most points one history request returns.
pub const MAX_POINTS: i64 = 1_500;
/// Most points computed on the fly after the last stored one (the unconfirmed tail is normally
/// a minute or two).
const MAX_PROVISIONAL: i64 = 120;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(crate::api::v1(routes!(get_vwap)))
        .routes(crate::api::v1(routes!(get_vwap_history)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VwapParams {
    /// One of the configured intervals (default `5m`).
    #[param(value_type = Option<VwapInterval>)]
    interval: Option<String>,
    /// The VWAP as of this time (ms since the epoch): the window `[at - interval, at)`.
    /// Omitted: the latest. A time in the future or older than the kept history is a 404.
    #[param(value_type = Option<TimeMs>)]
    at: Option<i64>,
    /// `spot` (default), `usdm` or `options`.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
}

pub(crate) fn not_found(st_known: bool, key: &InstrumentKey, what: &str) -> ApiError {
    if st_known {
        ApiError::not_found(
            "no-data-yet",
            format!("{key} is listed but has no {what} yet"),
        )
    } else {
        ApiError::not_found("unknown-instrument", format!("unknown instrument {key}"))
    }
}

/// The history id of a listed instrument; 404 for an unknown one.
pub(crate) async fn known_id(st: &AppState, key: &InstrumentKey) -> ApiResult<i32> {
    let listed = pricefeed_store::instruments::instrument_exists(&st.db, key)
        .await
        .map_err(ApiError::from)?;
    if !listed {
        return Err(not_found(false, key, ""));
    }
    st.ids.id_of(&st.db, key).await.map_err(ApiError::from)
}

/// The oldest time history is kept for (`retention.buckets_days` before `now`, and never before
/// the first trade the system accepts).
pub(crate) fn kept_from(st: &AppState, now: i64) -> i64 {
    (now - i64::from(st.retention.buckets_days) * Span::DAY.ms()).max(EARLIEST_TRADE_MS)
}

/// Latest rolling VWAP, or the VWAP as of `at`.
#[utoipa::path(get, path = "/vwap/{symbol}", tag = "vwap",
    params(("symbol" = SymbolFmt, Path, description = "Symbol, any case"), VwapParams),
    responses(
        (status = 200, body = VwapDoc),
        (status = 400, description = "Malformed symbol, interval, time or market (named)", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instrument (`unknown-instrument`), no VWAP yet (`no-data-yet`), or `at` in the future or older than the kept history (`no-data`)", content_type = "application/problem+json"),
        (status = 503, description = "Redis or Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn get_vwap(
    State(st): State<AppState>,
    sym: SymbolPath,
    Q(q): Q<VwapParams>,
) -> ApiResult<Json<VwapDoc>> {
    let now = now_ms();
    let (key, interval, at) = vwap_query(
        &sym,
        &q,
        &st.vwap,
        now,
        kept_from(&st, now),
        st.retention.buckets_days,
    )?;
    match at {
        None => latest(&st, &key, interval).await.map(Json),
        Some(at) => {
            let inst = known_id(&st, &key).await?;
            as_of(&st, &key, inst, interval, at).await.map(Json)
        }
    }
}

/// The instrument, interval and `at` (`None`: latest) of a VWAP request at `now`, with history
/// kept since `kept_from` (`buckets_days` only words the error). Pure, and public for the query
/// fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn vwap_query(
    sym: &SymbolPath,
    q: &VwapParams,
    vwap: &VwapConfig,
    now: i64,
    kept_from: i64,
    buckets_days: u32,
) -> ApiResult<(InstrumentKey, Span, Option<i64>)> {
    let key = sym.key(q.market.as_deref())?;
    let interval = parse_interval(
        "interval",
        q.interval.as_deref(),
        vwap.default_interval,
        &vwap.intervals,
    )?;
    let at = time_param("at", q.at)?;
    if let Some(at) = at {
        if at > now {
            return Err(ApiError::not_found(
                "no-data",
                format!("at={at} is in the future: no VWAP as of then yet"),
            ));
        }
        if at < kept_from {
            return Err(ApiError::not_found(
                "no-data",
                format!("at={at} is older than the {buckets_days} days history is kept"),
            ));
        }
    }
    Ok((key, interval, at))
}

async fn latest(st: &AppState, key: &InstrumentKey, interval: Span) -> ApiResult<VwapDoc> {
    if let Some(d) = latest_doc(st, key, interval).await? {
        return Ok(d);
    }
    let listed = pricefeed_store::instruments::instrument_exists(&st.db, key)
        .await
        .map_err(ApiError::from)?;
    Err(not_found(listed, key, "VWAP"))
}

/// The latest VWAP of `key` over `interval`: the node's VWAP cache, else one Redis `HGET`
/// (stored in the cache), else the last one seen when Redis cannot be read; `None` when there
/// is none (shared with the client WebSocket).
pub(crate) async fn latest_doc(
    st: &AppState,
    key: &InstrumentKey,
    interval: Span,
) -> ApiResult<Option<VwapDoc>> {
    let field = vwap_field(key, &interval.to_string());
    if let Some(d) = st.vwaps.get(&field) {
        return Ok(Some(d));
    }
    let ticket = st.vwaps.read_ticket();
    let mut redis = st.redis.clone();
    let mut cmd = redis::cmd("HGET");
    cmd.arg(st.keys.vwap()).arg(&field);
    match st
        .vwaps
        .read(cmd.query_async::<Option<String>>(&mut redis))
        .await
    {
        Ok(raw) => Ok(raw
            .and_then(|s| serde_json::from_str::<VwapDoc>(&s).ok())
            .inspect(|d| st.vwaps.store_read(ticket, d))),
        // Redis unreachable: the last VWAP seen (its window end says how old it is).
        Err(e) => st.vwaps.last_known(&field).map(Some).ok_or(e.into()),
    }
}

async fn as_of(
    st: &AppState,
    key: &InstrumentKey,
    inst: i32,
    interval: Span,
    at: i64,
) -> ApiResult<VwapDoc> {
    let mut conn = st.db.acquire().await?;
    let h = read::horizon(&mut conn, inst).await?;
    let raw_from = st.retention.raw_from_ms(now_ms());
    let start = at - interval.ms();
    let w = window_sums(&mut conn, inst, start, at, h, raw_from).await?;
    // Without the raw trades of the edges (past retention) the window is its whole seconds.
    let (ws, we) = if w.edges_exact {
        (start, at)
    } else {
        (Span::SECOND.floor(start) + 1000, Span::SECOND.floor(at))
    };
    Ok(vwap_doc(
        key,
        interval,
        &w.sums,
        ws,
        we,
        w.validated && w.edges_exact,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VwapHistoryParams {
    /// One of the configured intervals (default `5m`).
    #[param(value_type = Option<VwapInterval>)]
    interval: Option<String>,
    /// Range start, ms (default: 24 h before `to`), moved up to the oldest kept history.
    #[param(value_type = Option<TimeMs>)]
    from: Option<i64>,
    /// Range end, ms (default and at most: now). A range that ends before it starts holds no
    /// point.
    #[param(value_type = Option<TimeMs>)]
    to: Option<i64>,
    /// `spot` (default), `usdm` or `options`.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
}

/// One point of VWAP history: the window `[end - interval, end)`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VwapPointDto {
    pub end: i64,
    #[schema(value_type = Option<String>)]
    pub vwap: Option<Decimal>,
    #[schema(value_type = String)]
    pub volume: Decimal,
    #[schema(value_type = String)]
    pub quote_volume: Decimal,
    pub trade_count: u64,
    pub validated: bool,
}

/// VWAP history of one instrument and interval.
#[derive(Debug, Serialize, ToSchema)]
pub struct VwapHistoryDto {
    pub market: String,
    pub symbol: String,
    pub interval: String,
    /// Spacing of the points, ms.
    pub cadence_ms: i64,
    /// True when the requested range held more than 1500 points: these are its last ones.
    pub truncated: bool,
    pub points: Vec<VwapPointDto>,
}

/// What one VWAP history request reads: points of `interval` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VwapRange {
    pub key: InstrumentKey,
    pub interval: Span,
    pub from: i64,
    pub to: i64,
    /// More than [`MAX_POINTS`] were asked for; `from` was moved up.
    pub truncated: bool,
}

/// The range of a VWAP history request at `now`, with history kept since `kept_from`. Pure,
/// and public for the query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn vwap_history_range(
    sym: &SymbolPath,
    q: &VwapHistoryParams,
    vwap: &VwapConfig,
    now: i64,
    kept_from: i64,
) -> ApiResult<VwapRange> {
    let key = sym.key(q.market.as_deref())?;
    let interval = parse_interval(
        "interval",
        q.interval.as_deref(),
        vwap.default_interval,
        &vwap.intervals,
    )?;
    let (from_q, to_q) = (time_param("from", q.from)?, time_param("to", q.to)?);
    let to = to_q.unwrap_or(now).min(now);
    let from = from_q.unwrap_or(to - Span::DAY.ms()).max(kept_from).min(to);
    let earliest = to - MAX_POINTS * vwap.history_cadence.ms();
    let (from, truncated) = if from < earliest {
        (earliest, true)
    } else {
        (from, false)
    };
    Ok(VwapRange {
        key,
        interval,
        from,
        to,
        truncated,
    })
}

/// Stored VWAP history (one point per cadence), validated points told apart.
#[utoipa::path(get, path = "/vwap/{symbol}/history", tag = "vwap",
    params(("symbol" = SymbolFmt, Path, description = "Symbol, any case"), VwapHistoryParams),
    responses(
        (status = 200, body = VwapHistoryDto),
        (status = 400, description = "Malformed parameter (named)", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instrument", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn get_vwap_history(
    State(st): State<AppState>,
    sym: SymbolPath,
    Q(q): Q<VwapHistoryParams>,
) -> ApiResult<Json<VwapHistoryDto>> {
    let now = now_ms();
    let VwapRange {
        key,
        interval,
        from,
        to,
        truncated,
    } = vwap_history_range(&sym, &q, &st.vwap, now, kept_from(&st, now))?;
    let cadence = st.vwap.history_cadence;
    let inst = known_id(&st, &key).await?;
    let stored = read::vwap_history(&st.db, inst, interval, from, to).await?;
    let mut points: Vec<VwapPointDto> = stored
        .into_iter()
        .map(|p| VwapPointDto {
            end: p.end_ms,
            vwap: p.vwap,
            volume: p.volume,
            quote_volume: p.quote_volume,
            trade_count: p.trade_count.max(0) as u64,
            validated: p.validated,
        })
        .collect();
    // After the last stored point: the unconfirmed tail, computed the same way.
    let first_missing = points
        .last()
        .map_or(cadence.floor(from.max(0)) + cadence.ms(), |p| {
            p.end + cadence.ms()
        });
    let last_end = cadence.floor(to);
    let first = first_missing.max(last_end - (MAX_PROVISIONAL - 1) * cadence.ms());
    if first <= last_end {
        let mut conn = st.db.acquire().await?;
        let h = read::horizon(&mut conn, inst).await?;
        let raw_from = st.retention.raw_from_ms(now);
        let mut end = first;
        while end <= last_end {
            let w = window_sums(&mut conn, inst, end - interval.ms(), end, h, raw_from).await?;
            points.push(VwapPointDto {
                end,
                vwap: w.sums.vwap(),
                volume: w.sums.q,
                quote_volume: w.sums.pq,
                trade_count: w.sums.n,
                validated: w.validated && w.edges_exact,
            });
            end += cadence.ms();
        }
    }
    Ok(Json(VwapHistoryDto {
        market: key.market().as_str().to_string(),
        symbol: key.symbol_str().to_string(),
        interval: interval.to_string(),
        cadence_ms: cadence.ms(),
        truncated,
        points,
    }))
}
