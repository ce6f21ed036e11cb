//! `GET /api/v1/underlyings`, `/underlyings/{symbol}`, `/derivatives`.
//!
//! Instrument metadata comes from Postgres; lists are keyset-paginated by symbol (`cursor` is the
//! last symbol of the previous page), so pages stay stable while instruments are being listed.

use super::error::{ApiError, ApiResult};
use super::extract::Q;
use axum::Json;
use axum::extract::{Path, State};
use pricefeed_domain::instrument::{
    Derivative, DerivativeKind, InstrumentKey, Market, Symbol, Underlying,
};
use pricefeed_store::instruments::{self, DerivativeFilter};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page_limit;
use super::prices::{PriceDto, lookup};
use super::schema::{SymbolFmt, symbol_param};
use crate::state::AppState;

/// Latest `expiry_before`: 9999-12-31T23:59:59.999Z.
const MAX_EXPIRY_MS: i64 = 253_402_300_799_999;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(crate::api::v1(routes!(list_underlyings)))
        .routes(crate::api::v1(routes!(get_underlying)))
        .routes(crate::api::v1(routes!(list_derivatives)))
}

/// An underlying (spot pair).
#[derive(Debug, Serialize, ToSchema)]
pub struct UnderlyingDto {
    #[schema(example = "BTCUSDT")]
    pub symbol: String,
    pub base_asset: String,
    pub quote_asset: String,
    /// Broker status, e.g. TRADING, HALT, BREAK.
    pub status: String,
    /// False once the broker stopped listing it; history is kept.
    pub listed: bool,
    #[schema(value_type = Option<String>, example = "0.01")]
    pub tick_size: Option<Decimal>,
    #[schema(value_type = Option<String>, example = "0.00001")]
    pub step_size: Option<Decimal>,
    /// Latest trade of the spot pair; null before the first one.
    pub price: Option<PriceDto>,
}

/// A derivative linked to its underlying.
#[derive(Debug, Serialize, ToSchema)]
pub struct DerivativeDto {
    #[schema(example = "BTCUSDT_261225")]
    pub symbol: String,
    #[schema(example = "BTCUSDT")]
    pub underlying: String,
    #[schema(value_type = String, example = "future")]
    pub kind: DerivativeKind,
    /// `usdm` or `options`.
    pub market: String,
    pub contract_type: Option<String>,
    /// Expiry, ms since the epoch; null for perpetuals.
    pub expiry: Option<i64>,
    #[schema(value_type = Option<String>)]
    pub strike: Option<Decimal>,
    /// CALL or PUT for options.
    pub option_side: Option<String>,
    pub status: String,
    pub listed: bool,
    /// Latest trade; null before the first one.
    pub price: Option<PriceDto>,
}

/// One underlying with its derivatives.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnderlyingDetail {
    #[serde(flatten)]
    pub underlying: UnderlyingDto,
    pub derivatives: Vec<DerivativeDto>,
}

/// A page of results; pass `next_cursor` as `cursor` to get the next page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

fn underlying_dto(u: Underlying, listed: bool) -> UnderlyingDto {
    UnderlyingDto {
        symbol: u.symbol.to_string(),
        base_asset: u.base_asset,
        quote_asset: u.quote_asset,
        status: u.status,
        listed,
        tick_size: u.tick_size,
        step_size: u.step_size,
        price: None,
    }
}

fn derivative_dto(d: Derivative, listed: bool) -> DerivativeDto {
    DerivativeDto {
        symbol: d.symbol.to_string(),
        underlying: d.underlying.to_string(),
        kind: d.kind,
        market: d.market,
        contract_type: d.contract_type,
        expiry: d.expiry_ms,
        strike: d.strike,
        option_side: d.option_side,
        status: d.status,
        listed,
        price: None,
    }
}

/// Fills the `price` of underlyings (spot keys) in one lookup.
async fn with_underlying_prices(st: &AppState, items: &mut [UnderlyingDto]) -> ApiResult<()> {
    let keys: Vec<InstrumentKey> = items
        .iter()
        .filter_map(|u| Symbol::parse(&u.symbol).ok())
        .map(|s| InstrumentKey::new(Market::Spot, &s))
        .collect();
    if keys.len() != items.len() {
        return Ok(());
    }
    for (item, p) in items.iter_mut().zip(lookup(st, &keys).await?) {
        item.price = p;
    }
    Ok(())
}

/// Fills the `price` of derivatives (keyed by their own market) in one lookup; a derivative of a
/// market this build does not know keeps a null price.
async fn with_derivative_prices(st: &AppState, items: &mut [DerivativeDto]) -> ApiResult<()> {
    let keyed: Vec<(usize, InstrumentKey)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let m = Market::parse(&d.market)?;
            let s = Symbol::parse(&d.symbol).ok()?;
            Some((i, InstrumentKey::new(m, &s)))
        })
        .collect();
    let keys: Vec<InstrumentKey> = keyed.iter().map(|(_, k)| k.clone()).collect();
    for ((i, _), p) in keyed.iter().zip(lookup(st, &keys).await?) {
        items[*i].price = p;
    }
    Ok(())
}

fn page<T>(items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() as i64 == limit {
        items.last().map(key)
    } else {
        None
    };
    Page { items, next_cursor }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<SymbolFmt>)]
    cursor: Option<String>,
}

fn path_symbol(s: &str) -> ApiResult<Symbol> {
    Symbol::parse(s).map_err(|e| ApiError::param("symbol", e.to_string()))
}

/// Underlyings, ordered by symbol.
#[utoipa::path(get, path = "/underlyings", tag = "instruments", params(ListParams),
    responses(
        (status = 200, body = Page<UnderlyingDto>),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
        (status = 503, description = "Postgres or Redis unavailable", content_type = "application/problem+json"),
    ))]
async fn list_underlyings(
    State(st): State<AppState>,
    Q(q): Q<ListParams>,
) -> ApiResult<Json<Page<UnderlyingDto>>> {
    let limit = page_limit(q.limit)?;
    symbol_param("cursor", q.cursor.as_deref())?;
    let rows = instruments::list_underlyings(&st.db, q.cursor.as_deref(), limit)
        .await
        .map_err(ApiError::from)?;
    let mut items: Vec<UnderlyingDto> = rows
        .into_iter()
        .map(|r| underlying_dto(r.inner, r.delisted_at.is_none()))
        .collect();
    with_underlying_prices(&st, &mut items).await?;
    Ok(Json(page(items, limit, |u: &UnderlyingDto| {
        u.symbol.clone()
    })))
}

/// One underlying and its derivatives.
#[utoipa::path(get, path = "/underlyings/{symbol}", tag = "instruments",
    params(("symbol" = SymbolFmt, Path, description = "Underlying symbol, any case")),
    responses(
        (status = 200, body = UnderlyingDetail),
        (status = 400, description = "Malformed symbol", content_type = "application/problem+json"),
        (status = 404, description = "Unknown symbol", content_type = "application/problem+json"),
        (status = 503, description = "Postgres or Redis unavailable", content_type = "application/problem+json"),
    ))]
async fn get_underlying(
    State(st): State<AppState>,
    Path(symbol): Path<String>,
) -> ApiResult<Json<UnderlyingDetail>> {
    let symbol = path_symbol(&symbol)?;
    let Some(row) = instruments::get_underlying(&st.db, &symbol)
        .await
        .map_err(ApiError::from)?
    else {
        return Err(ApiError::not_found(
            "not-found",
            format!("unknown underlying {symbol}"),
        ));
    };
    let derivs = instruments::list_derivatives(
        &st.db,
        &DerivativeFilter {
            underlying: Some(symbol),
            limit: 10_000,
            ..Default::default()
        },
    )
    .await
    .map_err(ApiError::from)?;
    let mut underlying = [underlying_dto(row.inner, row.delisted_at.is_none())];
    with_underlying_prices(&st, &mut underlying).await?;
    let mut derivatives: Vec<DerivativeDto> = derivs
        .into_iter()
        .map(|d| derivative_dto(d.inner, d.delisted_at.is_none()))
        .collect();
    with_derivative_prices(&st, &mut derivatives).await?;
    let [underlying] = underlying;
    Ok(Json(UnderlyingDetail {
        underlying,
        derivatives,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DerivativeParams {
    /// Only derivatives of this underlying.
    #[param(value_type = Option<SymbolFmt>)]
    underlying: Option<String>,
    /// perpetual, future or option.
    #[param(pattern = "^(perpetual|future|option)$")]
    kind: Option<String>,
    /// Only contracts expiring before this time (ms since the epoch, 0 to year 9999).
    #[param(minimum = 0, maximum = 253402300799999_i64)]
    expiry_before: Option<i64>,
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<SymbolFmt>)]
    cursor: Option<String>,
}

/// The filter of `GET /derivatives` (400 naming the parameter). Pure, and public for the query
/// fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn derivative_filter(q: DerivativeParams) -> ApiResult<DerivativeFilter> {
    let limit = page_limit(q.limit)?;
    let underlying = symbol_param("underlying", q.underlying.as_deref())?;
    symbol_param("cursor", q.cursor.as_deref())?;
    // Postgres turns the bound into a timestamp: keep it within one (year 9999).
    if q.expiry_before
        .is_some_and(|t| !(0..=MAX_EXPIRY_MS).contains(&t))
    {
        return Err(ApiError::param(
            "expiry_before",
            format!("expiry_before must be a time in ms between 0 and {MAX_EXPIRY_MS}"),
        ));
    }
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            DerivativeKind::parse(k).ok_or_else(|| {
                ApiError::param("kind", "kind must be one of perpetual, future, option")
            })
        })
        .transpose()?;
    Ok(DerivativeFilter {
        underlying,
        kind,
        expiry_before_ms: q.expiry_before,
        after: q.cursor,
        limit,
    })
}

/// Derivatives, filtered and ordered by symbol.
#[utoipa::path(get, path = "/derivatives", tag = "instruments", params(DerivativeParams),
    responses(
        (status = 200, body = Page<DerivativeDto>),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
        (status = 503, description = "Postgres or Redis unavailable", content_type = "application/problem+json"),
    ))]
async fn list_derivatives(
    State(st): State<AppState>,
    Q(q): Q<DerivativeParams>,
) -> ApiResult<Json<Page<DerivativeDto>>> {
    let filter = derivative_filter(q)?;
    let limit = filter.limit;
    let rows = instruments::list_derivatives(&st.db, &filter)
        .await
        .map_err(ApiError::from)?;
    let mut items: Vec<DerivativeDto> = rows
        .into_iter()
        .map(|r| derivative_dto(r.inner, r.delisted_at.is_none()))
        .collect();
    with_derivative_prices(&st, &mut items).await?;
    Ok(Json(page(items, limit, |d: &DerivativeDto| {
        d.symbol.clone()
    })))
}
