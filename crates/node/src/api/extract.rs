//! Extractors whose rejections are problem+json naming the parameter, so handlers take parsed
//! input and never map extractor errors themselves; plus the instrument parameters every
//! market-data route shares.

use super::error::{ApiError, ApiResult};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::Uri;
use axum::http::request::Parts;
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use serde::de::DeserializeOwned;

/// `Query<T>` with a problem+json rejection (400, `param` = the offending parameter).
#[derive(Debug, Clone, Copy, Default)]
pub struct Q<T>(pub T);

impl<S, T> FromRequestParts<S> for Q<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        query(&parts.uri).map(Q)
    }
}

/// The query string of `uri` as `T`, or the 400 problem [`Q`] answers with; what [`Q`] runs,
/// public for the query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn query<T: DeserializeOwned>(uri: &Uri) -> ApiResult<T> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(t)| t)
        .map_err(super::query_problem)
}

/// A numeric id path segment (`{id}`) with a problem+json rejection (400, `param` = `id`).
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::param("id", e.body_text()))?;
        IdPath::parse(&raw)
    }
}

impl IdPath {
    /// The decoded `{id}` segment: a positive integer.
    pub fn parse(raw: &str) -> ApiResult<Self> {
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(IdPath)
            .ok_or_else(|| ApiError::param("id", "must be a positive integer"))
    }
}

/// The `{symbol}` path segment, validated (400 `symbol` when malformed).
#[derive(Debug, Clone)]
pub struct SymbolPath(pub Symbol);

impl<S: Send + Sync> FromRequestParts<S> for SymbolPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::param("symbol", e.body_text()))?;
        SymbolPath::parse(&raw)
    }
}

impl SymbolPath {
    /// The decoded `{symbol}` segment.
    pub fn parse(raw: &str) -> ApiResult<Self> {
        Symbol::parse(raw)
            .map(SymbolPath)
            .map_err(|e| ApiError::param("symbol", e.to_string()))
    }

    /// The instrument key on `market` (default spot).
    pub fn key(&self, market: Option<&str>) -> ApiResult<InstrumentKey> {
        Ok(InstrumentKey::new(parse_market(market)?, &self.0))
    }
}

/// `market` parameter: `spot` (default), `usdm`, `options`.
pub fn parse_market(m: Option<&str>) -> ApiResult<Market> {
    match m {
        None => Ok(Market::Spot),
        Some(s) => Market::parse(s)
            .ok_or_else(|| ApiError::param("market", "market must be spot, usdm or options")),
    }
}

/// An interval parameter named `param`, one of `allowed`.
pub fn parse_interval(
    param: &str,
    raw: Option<&str>,
    default: Span,
    allowed: &[Span],
) -> ApiResult<Span> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let list = || {
        allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let span: Span = raw
        .parse()
        .map_err(|_| ApiError::param(param, format!("{param} must be one of {}", list())))?;
    // Only the listed spelling: `60s` is the same span as `1m` but not one of the documented
    // values.
    if !allowed.contains(&span) || span.to_string() != raw {
        return Err(ApiError::param(
            param,
            format!("{param} must be one of {}", list()),
        ));
    }
    Ok(span)
}
