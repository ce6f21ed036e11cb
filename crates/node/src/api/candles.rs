//! `GET /api/v1/prices/{symbol}/history`: OHLCV candles for charts, built from the per-minute
//! and per-second buckets where history is confirmed and from raw trades after the horizon
//! ([`pricefeed_store::history::read::candles`]), so no request scans raw trades over a long
//! range. Candles without trades are omitted.
//!
//! The requested range is clamped to what is kept (`retention.buckets_days`) and to now, and a
//! range of more than [`MAX_CANDLES`] gives its last [`MAX_CANDLES`] candles with `truncated`:
//! every well-formed request has an answer, and the response's `from`/`to` say what it covers.

use super::error::ApiResult;
use axum::Json;
use axum::extract::State;
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_store::history::read;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Q, SymbolPath, parse_interval};
use super::schema::{CANDLE_INTERVALS, CandleInterval, SymbolFmt, TimeMs, time_param};
use super::vwap::{kept_from, known_id};
use crate::ingest::connector::now_ms;
use crate::state::AppState;

/// Most candles one request may span.
pub const MAX_CANDLES: i64 = 1_500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(crate::api::v1(routes!(get_candles)))
}

/// [`CANDLE_INTERVALS`], the lengths the document lists.
fn intervals() -> [Span; 6] {
    CANDLE_INTERVALS.map(|s| s.parse().expect("candle intervals are valid spans"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CandleParams {
    /// Range start, ms (default: 24 h before `to`); rounded down to the interval, and moved up
    /// to the oldest kept history (`retention.buckets_days`).
    #[param(value_type = Option<TimeMs>)]
    from: Option<i64>,
    /// Range end, ms (default and at most: now); the candle holding it is the last one. A range
    /// that ends before it starts holds no candle.
    #[param(value_type = Option<TimeMs>)]
    to: Option<i64>,
    /// Candle length (default `1m`).
    #[param(value_type = Option<CandleInterval>)]
    interval: Option<String>,
    /// `spot` (default), `usdm` or `options`.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
}

/// One candle: the trades with `start <= ts < end`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CandleDto {
    pub start: i64,
    pub end: i64,
    #[schema(value_type = String)]
    pub open: Decimal,
    #[schema(value_type = String)]
    pub high: Decimal,
    #[schema(value_type = String)]
    pub low: Decimal,
    #[schema(value_type = String)]
    pub close: Decimal,
    /// Σ qty (base asset).
    #[schema(value_type = String)]
    pub volume: Decimal,
    /// Σ price × qty (quote asset).
    #[schema(value_type = String)]
    pub quote_volume: Decimal,
    /// Σ price × qty / Σ qty of the candle.
    #[schema(value_type = Option<String>)]
    pub vwap: Option<Decimal>,
    pub trade_count: u64,
    pub first_trade_id: u64,
    pub last_trade_id: u64,
    /// Every trade of the candle is confirmed by the broker's REST API.
    pub validated: bool,
}

/// The candles of `[from, to)`, after clamping the requested range to the kept history and to
/// now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CandlesDto {
    pub market: String,
    pub symbol: String,
    pub interval: String,
    pub from: i64,
    pub to: i64,
    /// True when the requested range held more than 1500 candles: these are the last 1500 of
    /// it (`from` says where they start).
    pub truncated: bool,
    pub candles: Vec<CandleDto>,
}

/// What one candles request reads: `[from, to)` in whole candles of `span`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandleRange {
    pub key: InstrumentKey,
    pub span: Span,
    pub from: i64,
    pub to: i64,
    /// More than [`MAX_CANDLES`] were asked for; `from` was moved up.
    pub truncated: bool,
}

/// The range of a candles request at `now`, with history kept since `kept_from`. Pure, and
/// public for the query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn candle_range(
    sym: &SymbolPath,
    q: &CandleParams,
    now: i64,
    kept_from: i64,
) -> ApiResult<CandleRange> {
    let key = sym.key(q.market.as_deref())?;
    let span = parse_interval(
        "interval",
        q.interval.as_deref(),
        Span::MINUTE,
        &intervals(),
    )?;
    let (from_q, to_q) = (time_param("from", q.from)?, time_param("to", q.to)?);
    let to_raw = to_q.unwrap_or(now).min(now);
    let from_raw = from_q.unwrap_or(to_raw - Span::DAY.ms()).max(kept_from);
    let to = span.floor(to_raw) + span.ms();
    let from = span.floor(from_raw).min(to);
    let earliest = to - MAX_CANDLES * span.ms();
    let (from, truncated) = if from < earliest {
        (earliest, true)
    } else {
        (from, false)
    };
    Ok(CandleRange {
        key,
        span,
        from,
        to,
        truncated,
    })
}

/// OHLCV candles of one instrument.
#[utoipa::path(get, path = "/prices/{symbol}/history", tag = "prices",
    params(("symbol" = SymbolFmt, Path, description = "Symbol, any case"), CandleParams),
    responses(
        (status = 200, body = CandlesDto),
        (status = 400, description = "Malformed parameter (named)", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instrument", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn get_candles(
    State(st): State<AppState>,
    sym: SymbolPath,
    Q(q): Q<CandleParams>,
) -> ApiResult<Json<CandlesDto>> {
    let now = now_ms();
    let CandleRange {
        key,
        span,
        from,
        to,
        truncated,
    } = candle_range(&sym, &q, now, kept_from(&st, now))?;
    let inst = known_id(&st, &key).await?;
    let mut conn = st.db.acquire().await?;
    let cs = read::candles(&mut conn, inst, span, from, to).await?;
    Ok(Json(CandlesDto {
        market: key.market().as_str().to_string(),
        symbol: key.symbol_str().to_string(),
        interval: span.to_string(),
        from,
        to,
        truncated,
        candles: cs
            .into_iter()
            .map(|c| CandleDto {
                start: c.start,
                end: c.start + span.ms(),
                open: c.agg.open,
                high: c.agg.high,
                low: c.agg.low,
                close: c.agg.close,
                volume: c.agg.q,
                quote_volume: c.agg.pq,
                vwap: c.agg.vwap(),
                trade_count: c.agg.n,
                first_trade_id: c.agg.first_id,
                last_trade_id: c.agg.last_id,
                validated: c.validated,
            })
            .collect(),
    }))
}
