//! `GET /api/v1/prices/{symbol}/history`: OHLCV candles for charts, built from the per-minute
//! and per-second buckets where history is confirmed and from raw trades after the horizon
//! ([`pricefeed_store::history::read::candles`]), so no request scans raw trades over a long
//! range. Candles without trades are omitted.

use super::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::State;
use pricefeed_domain::bucket::Span;
use pricefeed_store::history::read;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Q, SymbolPath, parse_interval};
use super::vwap::{check_past, known_id};
use crate::ingest::connector::now_ms;
use crate::state::AppState;

/// Most candles one request may span.
pub const MAX_CANDLES: i64 = 1_500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_candles))
}

fn intervals() -> [Span; 6] {
    [
        Span::MINUTE,
        Span::from_secs(300).expect("positive"),
        Span::from_secs(900).expect("positive"),
        Span::HOUR,
        Span::from_secs(4 * 3600).expect("positive"),
        Span::DAY,
    ]
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CandleParams {
    /// Range start, ms (default: 24 h before `to`); rounded down to the interval.
    #[param(minimum = 1262304000000_i64)]
    from: Option<i64>,
    /// Range end, ms (default: now); the candle holding it is the last one.
    #[param(minimum = 1262304000000_i64)]
    to: Option<i64>,
    /// Candle length: `1m` (default), `5m`, `15m`, `1h`, `4h`, `1d`.
    #[param(example = "1m")]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct CandlesDto {
    pub market: String,
    pub symbol: String,
    pub interval: String,
    pub from: i64,
    pub to: i64,
    pub candles: Vec<CandleDto>,
}

/// OHLCV candles of one instrument.
#[utoipa::path(get, path = "/prices/{symbol}/history", tag = "prices",
    params(("symbol" = String, Path, description = "Symbol, any case", example = "BTCUSDT"), CandleParams),
    responses(
        (status = 200, body = CandlesDto),
        (status = 400, description = "Malformed parameter, or the range holds more than 1500 candles (`param` = from)", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instrument", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn get_candles(
    State(st): State<AppState>,
    sym: SymbolPath,
    Q(q): Q<CandleParams>,
) -> ApiResult<Json<CandlesDto>> {
    let key = sym.key(q.market.as_deref())?;
    let span = parse_interval(
        "interval",
        q.interval.as_deref(),
        Span::MINUTE,
        &intervals(),
    )?;
    let now = now_ms();
    let to_raw = q.to.unwrap_or(now).min(now);
    let from_raw = q.from.unwrap_or(to_raw - Span::DAY.ms());
    check_past(&st, "from", from_raw, now)?;
    if q.to.is_some() {
        check_past(&st, "to", to_raw, now)?;
    }
    if from_raw > to_raw {
        return Err(ApiError::param("from", "from must not be after to"));
    }
    let from = span.floor(from_raw);
    let to = span.floor(to_raw) + span.ms();
    let n = (to - from) / span.ms();
    if n > MAX_CANDLES {
        return Err(ApiError::param(
            "from",
            format!(
                "the range holds {n} candles of {span}, more than {MAX_CANDLES}; narrow it or use a longer interval"
            ),
        ));
    }
    let inst = known_id(&st, &key).await?;
    let mut conn = st.db.acquire().await?;
    let cs = read::candles(&mut conn, inst, span, from, to).await?;
    Ok(Json(CandlesDto {
        market: key.market().as_str().to_string(),
        symbol: key.symbol_str().to_string(),
        interval: span.to_string(),
        from,
        to,
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
