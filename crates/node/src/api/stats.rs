//! `GET /api/v1/stats/{symbol}` and `GET /api/v1/stats?group=…`: 24 h statistics of the
//! 1-minute closes and the volatility rank of seed 003.
//!
//! The owning node keeps the statistics incrementally ([`pricefeed_domain::window::Live`]) and
//! publishes them every `node.live.stats_publish_ms` to `{p}:stats`, with σ in the sorted set of
//! the instrument's group (`{p}:rank:{market}:{quote}`). Rank is the position by σ descending
//! within the group, over its size: σ 300, 200, 100 rank 1/3, 2/3, 3/3. Equal σ are ordered by
//! key, descending (Redis' order for equal scores). Both reads are a few Redis commands on
//! whichever node answers.

use super::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::State;
use pricefeed_store::protocol::StatsDoc;
use pricefeed_store::redis_conn::RedisConn;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Q, SymbolPath, parse_market};
use super::page_limit;
use super::schema::SymbolFmt;
use super::vwap::not_found;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(crate::api::v1(routes!(get_stats)))
        .routes(crate::api::v1(routes!(list_stats)))
}

/// An instrument's place in its group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RankDto {
    /// 1 = the highest σ of the group.
    pub position: u64,
    /// Instruments ranked in the group.
    pub of: u64,
    /// `position/of`, as seed 003 writes it.
    #[schema(example = "1/3")]
    pub value: String,
    /// `market:QUOTE`, e.g. `spot:USDT`.
    #[schema(example = "spot:USDT")]
    pub group: String,
}

/// 24 h statistics of one instrument.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsDto {
    pub market: String,
    pub symbol: String,
    /// Mean of the 1-minute closes of the last 24 h.
    #[schema(value_type = Option<String>)]
    pub mean: Option<Decimal>,
    /// Population standard deviation of those closes.
    #[schema(value_type = Option<String>)]
    pub stddev: Option<Decimal>,
    /// Lowest and highest 1-minute close.
    #[schema(value_type = Option<String>)]
    pub min: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub max: Option<Decimal>,
    /// Latest price against the first close of the window, percent.
    #[schema(value_type = Option<String>)]
    pub change_pct: Option<Decimal>,
    /// Closes in the window (minutes with a trade).
    pub samples: u32,
    /// The completed minutes covered: `[from, to)`, ms.
    pub from: i64,
    pub to: i64,
    /// Null while the instrument has no σ yet.
    pub rank: Option<RankDto>,
}

fn dto(d: StatsDoc, rank: Option<RankDto>) -> StatsDto {
    StatsDto {
        market: d.market,
        symbol: d.symbol,
        mean: d.mean,
        stddev: d.stddev,
        min: d.min,
        max: d.max,
        change_pct: d.change_pct,
        samples: d.samples,
        from: d.from_ms,
        to: d.to_ms,
        rank,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    /// `spot` (default), `usdm` or `options`.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
}

/// 24 h statistics and rank of one instrument.
#[utoipa::path(get, path = "/stats/{symbol}", tag = "stats",
    params(("symbol" = SymbolFmt, Path, description = "Symbol, any case"), StatsParams),
    responses(
        (status = 200, body = StatsDto),
        (status = 400, description = "Malformed symbol or market", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instrument, or no statistics yet", content_type = "application/problem+json"),
        (status = 503, description = "Redis or Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn get_stats(
    State(st): State<AppState>,
    sym: SymbolPath,
    Q(q): Q<StatsParams>,
) -> ApiResult<Json<StatsDto>> {
    let key = sym.key(q.market.as_deref())?;
    let mut redis = st.redis.clone();
    let raw: Option<String> = redis::cmd("HGET")
        .arg(st.keys.stats())
        .arg(key.as_str())
        .query_async(&mut redis)
        .await?;
    let Some(doc) = raw.and_then(|s| serde_json::from_str::<StatsDoc>(&s).ok()) else {
        let listed = pricefeed_store::instruments::instrument_exists(&st.db, &key)
            .await
            .map_err(ApiError::from)?;
        return Err(not_found(listed, &key, "statistics"));
    };
    let rank = rank_of(&mut redis, &st, key.as_str(), &doc.group).await?;
    Ok(Json(dto(doc, rank)))
}

async fn rank_of(
    redis: &mut RedisConn,
    st: &AppState,
    field: &str,
    group: &str,
) -> ApiResult<Option<RankDto>> {
    if group.is_empty() {
        return Ok(None);
    }
    let (pos, of): (Option<u64>, u64) = redis::pipe()
        .cmd("ZREVRANK")
        .arg(st.keys.rank(group))
        .arg(field)
        .cmd("ZCARD")
        .arg(st.keys.rank(group))
        .query_async(redis)
        .await?;
    Ok(pos.map(|p| RankDto {
        position: p + 1,
        of,
        value: format!("{}/{of}", p + 1),
        group: group.to_string(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RankingParams {
    /// Quote asset of the group (default `USDT`).
    #[param(pattern = "^[A-Za-z0-9]{1,20}$", example = "USDT")]
    group: Option<String>,
    /// `spot` (default), `usdm` or `options`.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
    /// `stddev` (default): σ descending, the most volatile first.
    #[param(pattern = "^stddev$")]
    order: Option<String>,
    /// Page size, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,9}$")]
    cursor: Option<String>,
}

/// A page of the ranking table.
#[derive(Debug, Serialize, ToSchema)]
pub struct RankingDto {
    /// `market:QUOTE`.
    pub group: String,
    /// Instruments ranked in the group.
    pub of: u64,
    pub items: Vec<StatsDto>,
    pub next_cursor: Option<String>,
}

/// The group (`market:QUOTE`), page size and offset of `GET /stats` (400 naming the
/// parameter). Pure, and public for the query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn ranking_query(q: &RankingParams) -> ApiResult<(String, i64, i64)> {
    let market = parse_market(q.market.as_deref())?;
    let quote = q.group.as_deref().unwrap_or("USDT");
    if quote.is_empty() || quote.len() > 20 || !quote.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::param(
            "group",
            "group must be a quote asset such as USDT",
        ));
    }
    if q.order.as_deref().is_some_and(|o| o != "stddev") {
        return Err(ApiError::param("order", "order must be stddev"));
    }
    let limit = page_limit(q.limit)?;
    let offset: i64 = match q.cursor.as_deref() {
        None => 0,
        // Exactly the documented `^[0-9]{1,9}$` (`parse` alone would take a sign).
        Some(c) => Some(c)
            .filter(|c| (1..=9).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ApiError::param("cursor", "cursor must come from next_cursor"))?,
    };
    let group = format!("{market}:{}", quote.to_ascii_uppercase());
    Ok((group, limit, offset))
}

/// The ranking table of one group (seed 003), paginated.
#[utoipa::path(get, path = "/stats", tag = "stats", params(RankingParams),
    responses(
        (status = 200, body = RankingDto),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", content_type = "application/problem+json"),
    ))]
async fn list_stats(
    State(st): State<AppState>,
    Q(q): Q<RankingParams>,
) -> ApiResult<Json<RankingDto>> {
    let (group, limit, offset) = ranking_query(&q)?;
    let mut redis = st.redis.clone();
    let (members, of): (Vec<String>, u64) = redis::pipe()
        .cmd("ZREVRANGE")
        .arg(st.keys.rank(&group))
        .arg(offset)
        .arg(offset + limit - 1)
        .cmd("ZCARD")
        .arg(st.keys.rank(&group))
        .query_async(&mut redis)
        .await?;
    let docs: Vec<Option<String>> = if members.is_empty() {
        Vec::new()
    } else {
        redis::cmd("HMGET")
            .arg(st.keys.stats())
            .arg(&members)
            .query_async(&mut redis)
            .await?
    };
    let mut items = Vec::with_capacity(members.len());
    for (i, raw) in docs.into_iter().enumerate() {
        let Some(doc) = raw.and_then(|s| serde_json::from_str::<StatsDoc>(&s).ok()) else {
            continue;
        };
        let position = offset as u64 + i as u64 + 1;
        items.push(dto(
            doc,
            Some(RankDto {
                position,
                of,
                value: format!("{position}/{of}"),
                group: group.clone(),
            }),
        ));
    }
    let next = offset + limit;
    Ok(Json(RankingDto {
        group,
        of,
        items,
        next_cursor: ((next as u64) < of).then(|| next.to_string()),
    }))
}
