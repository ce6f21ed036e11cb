//! `/api/v1/alerts…`: create, list, read, change and delete the caller's alerts, and read their
//! triggers with the delivery state of each channel. Every route needs a bearer token and sees
//! only the caller's alerts (another user's id is a 404).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pricefeed_domain::alert::{Condition, Kind, Rearm};
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use pricefeed_store::alerts::{self as store, Alert, AlertError, AlertInput};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{IdPath, Q, parse_market};
use crate::api::page_limit;
use crate::api::schema::{SymbolFmt, symbol_param};
use crate::auth::extract::{AuthUser, JsonBody};

use super::input::{self, AlertPatch, NewAlert};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(crate::api::v1(routes!(create, list)))
        .routes(crate::api::v1(routes!(get_one, patch, delete)))
        .routes(crate::api::v1(routes!(notifications)))
}

/// Re-arming after a firing (omit for a one-shot alert).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RearmDto {
    /// At least this long between two firings, ms (1 000 to 30 days).
    #[schema(minimum = 1000, maximum = 2592000000_u64, example = 600000)]
    pub cooldown_ms: u64,
    /// The watched value must first go back past the threshold by this percentage (0-50).
    #[schema(value_type = String, example = "0.5")]
    pub hysteresis_pct: Decimal,
}

/// An alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDto {
    pub id: i64,
    pub symbol: String,
    pub market: String,
    #[schema(value_type = String)]
    pub condition: Kind,
    #[schema(value_type = String)]
    pub threshold: Decimal,
    #[schema(value_type = Option<String>)]
    pub interval: Option<Span>,
    #[schema(value_type = Option<String>)]
    pub window: Option<Span>,
    pub channels: Vec<String>,
    pub rearm: Option<RearmDto>,
    /// `active`, `paused`, or `triggered` (a one-shot alert that fired).
    pub status: String,
    /// Whether it may fire now (false while a re-arming alert waits to re-arm).
    pub armed: bool,
    pub note: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_triggered_at: Option<i64>,
}

impl From<Alert> for AlertDto {
    fn from(a: Alert) -> Self {
        Self {
            id: a.id,
            symbol: a.key.symbol_str().to_string(),
            market: a.key.market().as_str().to_string(),
            condition: a.condition.kind,
            threshold: a.condition.threshold,
            interval: a.condition.interval,
            window: a.condition.window,
            channels: a.channels,
            rearm: a.rearm.map(|r| RearmDto {
                cooldown_ms: r.cooldown_ms,
                hysteresis_pct: r.hysteresis_pct,
            }),
            status: a.status,
            armed: a.armed,
            note: a.note,
            created_at: a.created_at_ms,
            updated_at: a.updated_at_ms,
            last_triggered_at: a.last_triggered_at_ms,
        }
    }
}

/// What every alert needs beyond its condition, checked field by field (422).
struct Extras {
    channels: Vec<String>,
    rearm: Option<Rearm>,
    note: Option<String>,
}

fn extras(
    channels: Option<Vec<String>>,
    rearm: Option<input::RearmInput>,
    note: Option<String>,
) -> ApiResult<Extras> {
    let channels = match channels {
        Some(c) => input::channels(c)?,
        None => store::CHANNELS.iter().map(|c| c.to_string()).collect(),
    };
    let rearm = rearm.map(input::rearm).transpose()?;
    if let Some(n) = &note {
        input::note(n)?;
    }
    Ok(Extras {
        channels,
        rearm,
        note,
    })
}

fn alert_input(cond: Condition, e: Extras, status: &str) -> AlertInput {
    AlertInput {
        condition: cond,
        channels: e.channels,
        rearm: e.rearm,
        note: e.note,
        status: status.to_string(),
    }
}

/// The instrument and the alert a `POST /alerts` body asks for, with the configured VWAP
/// `intervals`; every refusal is a 422 naming the field. Pure, and public for the query fuzz
/// target (`fuzz/fuzz_targets/api_query.rs`).
pub fn new_alert(n: NewAlert, intervals: &[Span]) -> ApiResult<(InstrumentKey, AlertInput)> {
    let symbol = Symbol::parse(&n.symbol).map_err(|e| ApiError::field("symbol", e.to_string()))?;
    let market = parse_market(n.market.as_deref())
        .map_err(|_| ApiError::field("market", "spot, usdm or options"))?;
    let key = InstrumentKey::new(market, &symbol);
    let cond = Condition {
        kind: n.condition,
        threshold: input::threshold(&n.threshold)?,
        interval: n
            .interval
            .as_deref()
            .map(|i| input::interval(i, intervals))
            .transpose()?,
        window: n.window.as_deref().map(input::window).transpose()?,
    };
    // The body is complete, so a condition that breaks a rule breaks the schema: 422.
    cond.validate(intervals)
        .map_err(|e| ApiError::field(e.field, e.msg))?;
    let inp = alert_input(cond, extras(n.channels, n.rearm, n.note)?, "active");
    Ok((key, inp))
}

/// Creates an alert.
#[utoipa::path(post, path = "/alerts", tag = "alerts", request_body = NewAlert,
    security(("bearer" = [])),
    responses(
        (status = 201, body = AlertDto),
        (status = 400, description = "Body is not JSON", content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", content_type = "application/problem+json"),
        (status = 404, description = "Unknown instrument", content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (named)", content_type = "application/problem+json"),
        (status = 429, description = "The user has the most alerts allowed", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    JsonBody(n): JsonBody<NewAlert>,
) -> ApiResult<(StatusCode, Json<AlertDto>)> {
    let (key, inp) = new_alert(n, &st.vwap.intervals)?;
    let inst = crate::api::vwap::known_id(&st, &key).await?;
    let a = store::create_alert(&st.db, user.id, inst, &inp, st.alerts.max_per_user)
        .await
        .map_err(|e| match e {
            AlertError::TooMany(n) => ApiError::TooManyRequests {
                detail: format!("at most {n} alerts per user; delete one first"),
                retry_after: None,
            },
            AlertError::Db(e) => e.into(),
        })?;
    let mut redis = st.redis.clone();
    super::announce(&mut redis, &st.keys, &a).await;
    Ok((StatusCode::CREATED, Json(a.into())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `active`, `paused` or `triggered`.
    #[param(pattern = "^(active|paused|triggered)$")]
    status: Option<String>,
    /// Only alerts of this symbol (with `market`).
    #[param(value_type = Option<SymbolFmt>)]
    symbol: Option<String>,
    /// `spot` (default), `usdm` or `options`.
    #[param(pattern = "^(spot|usdm|options)$")]
    market: Option<String>,
    /// Page size, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// A page of alerts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertPage {
    pub items: Vec<AlertDto>,
    pub next_cursor: Option<String>,
}

/// A `cursor`: exactly the documented `^[0-9]{1,18}$` (`parse` alone would take a sign).
fn cursor(c: Option<&str>) -> ApiResult<Option<i64>> {
    c.map(|c| {
        Some(c)
            .filter(|c| (1..=18).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<i64>().ok())
            .ok_or_else(|| ApiError::param("cursor", "cursor must come from next_cursor"))
    })
    .transpose()
}

/// The checked parameters of `GET /alerts` (besides `status`, passed through once checked).
#[derive(Debug)]
pub struct ListQuery {
    pub limit: i64,
    pub market: Market,
    pub after: Option<i64>,
    pub symbol: Option<Symbol>,
}

/// Checks the parameters of `GET /alerts` (400 naming the parameter). Pure, and public for the
/// query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn list_query(q: &ListParams) -> ApiResult<ListQuery> {
    let limit = page_limit(q.limit)?;
    if let Some(s) = q.status.as_deref()
        && !matches!(s, "active" | "paused" | "triggered")
    {
        return Err(ApiError::param("status", "active, paused or triggered"));
    }
    let market = parse_market(q.market.as_deref())?;
    let after = cursor(q.cursor.as_deref())?;
    let symbol = symbol_param("symbol", q.symbol.as_deref())?;
    Ok(ListQuery {
        limit,
        market,
        after,
        symbol,
    })
}

/// The caller's alerts.
#[utoipa::path(get, path = "/alerts", tag = "alerts", params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AlertPage),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn list(
    State(st): State<AppState>,
    user: AuthUser,
    Q(q): Q<ListParams>,
) -> ApiResult<Json<AlertPage>> {
    let ListQuery {
        limit,
        market,
        after,
        symbol,
    } = list_query(&q)?;
    let inst = match symbol {
        None => None,
        Some(sym) => {
            let key = InstrumentKey::new(market, &sym);
            match st.ids.lookup(&st.db, &key).await? {
                Some(id) => Some(id),
                // Nobody can have alerts on an unknown instrument.
                None => {
                    return Ok(Json(AlertPage {
                        items: Vec::new(),
                        next_cursor: None,
                    }));
                }
            }
        }
    };
    let rows = store::list_alerts(&st.db, user.id, q.status.as_deref(), inst, after, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(Json(AlertPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor: next,
    }))
}

fn gone(id: i64) -> ApiError {
    ApiError::not_found("not-found", format!("no alert {id}"))
}

/// One of the caller's alerts.
#[utoipa::path(get, path = "/alerts/{id}", tag = "alerts",
    params(("id" = i64, Path, description = "Alert id", minimum = 1, maximum = 9223372036854775807_i64)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AlertDto),
        (status = 400, description = "Malformed id", content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", content_type = "application/problem+json"),
        (status = 404, description = "No such alert of the caller", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn get_one(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> ApiResult<Json<AlertDto>> {
    store::alert(&st.db, user.id, id)
        .await?
        .map(|a| Json(a.into()))
        .ok_or_else(|| gone(id))
}

/// A patch's fields, each checked on its own; `Some(None)` clears an optional field.
#[derive(Debug)]
pub struct PatchFields {
    pub condition: Option<Kind>,
    pub threshold: Option<Decimal>,
    pub interval: Option<Option<Span>>,
    pub window: Option<Option<Span>>,
    pub channels: Option<Vec<String>>,
    pub rearm: Option<Option<Rearm>>,
    pub note: Option<Option<String>>,
    pub status: Option<String>,
}

/// Checks every field of a `PATCH /alerts/{id}` body on its own (422 naming the field), before
/// the alert is read. Pure, and public for the query fuzz target
/// (`fuzz/fuzz_targets/api_query.rs`).
pub fn patch_fields(p: AlertPatch, intervals: &[Span]) -> ApiResult<PatchFields> {
    let threshold = p.threshold.as_deref().map(input::threshold).transpose()?;
    let interval = p
        .interval
        .map(|i| {
            i.as_deref()
                .map(|i| input::interval(i, intervals))
                .transpose()
        })
        .transpose()?;
    let window = p
        .window
        .map(|w| w.as_deref().map(input::window).transpose())
        .transpose()?;
    if let Some(s) = p.status.as_deref() {
        input::status(s)?;
    }
    let rearm = match p.rearm {
        None => None,
        Some(r) => Some(r.map(input::rearm).transpose()?),
    };
    if let Some(Some(n)) = &p.note {
        input::note(n)?;
    }
    let channels = p.channels.map(input::channels).transpose()?;
    Ok(PatchFields {
        condition: p.condition,
        threshold,
        interval,
        window,
        channels,
        rearm,
        note: p.note,
        status: p.status,
    })
}

/// Changes one of the caller's alerts (and re-arms it).
#[utoipa::path(patch, path = "/alerts/{id}", tag = "alerts", request_body = AlertPatch,
    params(("id" = i64, Path, description = "Alert id", minimum = 1, maximum = 9223372036854775807_i64)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AlertDto),
        (status = 400, description = "Malformed id, or a body that is not JSON", content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", content_type = "application/problem+json"),
        (status = 404, description = "No such alert of the caller", content_type = "application/problem+json"),
        (status = 409, description = "The change does not fit the alert's other fields (named)", content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (named)", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn patch(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
    JsonBody(p): JsonBody<AlertPatch>,
) -> ApiResult<Json<AlertDto>> {
    // Each field on its own first (422), before the alert is even read.
    let PatchFields {
        condition,
        threshold,
        interval,
        window,
        channels,
        rearm: rearm_in,
        note,
        status,
    } = patch_fields(p, &st.vwap.intervals)?;

    let cur = store::alert(&st.db, user.id, id)
        .await?
        .ok_or_else(|| gone(id))?;
    let cond = Condition {
        kind: condition.unwrap_or(cur.condition.kind),
        threshold: threshold.unwrap_or(cur.condition.threshold),
        interval: interval.unwrap_or(cur.condition.interval),
        window: window.unwrap_or(cur.condition.window),
    };
    // The merged alert: a rule it breaks comes from combining the change with what is stored.
    cond.validate(&st.vwap.intervals).map_err(|e| {
        ApiError::Conflict(format!(
            "{}: {} (with the alert's current fields)",
            e.field, e.msg
        ))
    })?;
    let status = match status.as_deref() {
        Some(s) => s.to_string(),
        // A triggered one-shot alert that is changed becomes active again.
        None if cur.status == "triggered" => "active".into(),
        None => cur.status.clone(),
    };
    let inp = AlertInput {
        condition: cond,
        channels: channels.unwrap_or(cur.channels),
        rearm: rearm_in.unwrap_or(cur.rearm),
        note: note.unwrap_or(cur.note),
        status,
    };
    let a = store::update_alert(&st.db, user.id, id, &inp)
        .await?
        .ok_or_else(|| gone(id))?;
    let mut redis = st.redis.clone();
    super::announce(&mut redis, &st.keys, &a).await;
    Ok(Json(a.into()))
}

/// Deletes one of the caller's alerts (its trigger history goes with it).
#[utoipa::path(delete, path = "/alerts/{id}", tag = "alerts",
    params(("id" = i64, Path, description = "Alert id", minimum = 1, maximum = 9223372036854775807_i64)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", content_type = "application/problem+json"),
        (status = 404, description = "No such alert of the caller", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn delete(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let a = store::delete_alert(&st.db, user.id, id)
        .await?
        .ok_or_else(|| gone(id))?;
    let mut redis = st.redis.clone();
    super::announce(
        &mut redis,
        &st.keys,
        &Alert {
            version: a.version + 1,
            ..a
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NotificationParams {
    /// Page size, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// Delivery of one trigger on one channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDto {
    /// `email` or `websocket`.
    pub channel: String,
    /// `pending`, `sent`, `dead` (given up; see `last_error`) or `suppressed` (over the hourly
    /// email limit).
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: Option<i64>,
}

/// One firing of an alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationDto {
    pub trigger_id: i64,
    /// The trade that caused it.
    pub trade_id: i64,
    pub trade_ts: i64,
    #[schema(value_type = String)]
    pub price: Decimal,
    /// What the condition compared (price, VWAP, move in %, z-score).
    #[schema(value_type = String)]
    pub observed: Decimal,
    pub triggered_at: i64,
    pub deliveries: Vec<DeliveryDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationDto>,
    pub next_cursor: Option<String>,
}

/// Page size and cursor of `GET /alerts/{id}/notifications` (400 naming the parameter). Pure,
/// and public for the query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
pub fn notification_query(q: &NotificationParams) -> ApiResult<(i64, Option<i64>)> {
    Ok((page_limit(q.limit)?, cursor(q.cursor.as_deref())?))
}

/// Every trigger of one of the caller's alerts, newest first, with its delivery per channel.
#[utoipa::path(get, path = "/alerts/{id}/notifications", tag = "alerts",
    params(("id" = i64, Path, description = "Alert id", minimum = 1, maximum = 9223372036854775807_i64), NotificationParams),
    security(("bearer" = [])),
    responses(
        (status = 200, body = NotificationPage),
        (status = 400, description = "Malformed id or parameter", content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", content_type = "application/problem+json"),
        (status = 404, description = "No such alert of the caller", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn notifications(
    State(st): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath,
    Q(q): Q<NotificationParams>,
) -> ApiResult<Json<NotificationPage>> {
    let (limit, after) = notification_query(&q)?;
    store::alert(&st.db, user.id, id)
        .await?
        .ok_or_else(|| gone(id))?;
    let rows = store::notifications(&st.db, user.id, id, limit, after).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|n| n.trigger_id.to_string()))
        .flatten();
    Ok(Json(NotificationPage {
        items: rows
            .into_iter()
            .map(|n| NotificationDto {
                trigger_id: n.trigger_id,
                trade_id: n.trade_id,
                trade_ts: n.trade_ts_ms,
                price: n.price,
                observed: n.observed,
                triggered_at: n.triggered_at_ms,
                deliveries: n
                    .deliveries
                    .into_iter()
                    .map(|d| DeliveryDto {
                        channel: d.channel,
                        state: d.state,
                        attempts: d.attempts,
                        last_error: d.last_error,
                        sent_at: d.sent_at_ms,
                    })
                    .collect(),
            })
            .collect(),
        next_cursor: next,
    }))
}
