//! The v1 HTTP API of a node: routes, their OpenAPI description and the Swagger UI.
//!
//! Routes are registered through `utoipa_axum::OpenApiRouter`, so a route and its spec entry are
//! added in one place and cannot drift; `/api/v1/openapi.json` is generated from them.

pub mod candles;
pub mod cluster;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod ingest;
pub mod instruments;
pub mod limits;
pub mod node;
pub mod prices;
pub mod schema;
pub mod stats;
pub mod vwap;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use error::{ApiError, ApiResult};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

/// Declares the bearer-token scheme the authenticated routes refer to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    components(schemas(
        schema::SymbolFmt,
        schema::TimeMs,
        schema::CandleInterval,
        schema::VwapInterval
    )),
    info(
        title = "pricefeed API",
        version = "1",
        description = "Latest prices, VWAP, candles, statistics, instruments and cluster state of a pricefeed market-data cluster. \
                       Money and quantities are exact decimal strings; times are ms since the epoch. \
                       Errors are application/problem+json."
    ),
    tags(
        (name = "instruments", description = "Underlyings and derivatives"),
        (name = "prices", description = "Latest trades and candles"),
        (name = "vwap", description = "Rolling VWAP: latest, as of a time, history"),
        (name = "stats", description = "24 h statistics and volatility rank"),
        (name = "accounts", description = "Registration, tokens, admin"),
        (name = "alerts", description = "Price and anomaly alerts and their notifications"),
        (name = "cluster", description = "Nodes and their state"),
        (name = "stream", description = "Client WebSocket: live prices, VWAPs, alert triggers, threshold watches"),
    )
)]
struct ApiDoc;

/// The whole `/api/v1` router plus `/docs`, with the spec generated from the routes.
pub fn router(state: AppState) -> Router {
    let (api, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(
            instruments::router()
                .merge(node::router())
                .merge(cluster::router())
                .merge(ingest::router())
                .merge(prices::router())
                .merge(candles::router())
                .merge(vwap::router())
                .merge(stats::router())
                .merge(crate::auth::api::router())
                .merge(crate::alerts::api::router())
                .merge(crate::stream::router()),
        )
        .split_for_parts();
    schema::with_vwap_intervals(&mut spec, &state.vwap.intervals);
    schema::with_limit_responses(&mut spec);
    let api = api.with_state(state);
    api.merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", spec))
        .merge(dashboard::router())
}

/// The API's path prefix.
pub const V1: &str = "/api/v1";

/// A route of `routes!` mounted under [`V1`], in the router and in the spec alike. This is what
/// `OpenApiRouter::nest(V1, …)` would give, without its cost: axum's `nest` wraps every route in
/// two more boxed layers and rebuilds each request's URI without the prefix (a new string and a
/// URI parse), on every request of the hottest route (`pricefeed-bench prices`,
/// docs/benchmarks.md). No handler looks at the URI, so nothing needs the stripped one.
pub(crate) fn v1(
    (schemas, mut paths, method_router): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    paths.paths = std::mem::take(&mut paths.paths)
        .into_iter()
        .map(|(p, item)| (format!("{V1}{p}"), item))
        .collect();
    (schemas, paths, method_router)
}

/// Maps a query-string rejection to a 400 problem naming the parameter where axum tells us.
pub(crate) fn query_problem(e: QueryRejection) -> ApiError {
    let text = e.body_text();
    // serde_urlencoded messages look like "...query string: limit: invalid digit" or
    // "...unknown field `foo`, expected ..."; name the parameter when we can find it.
    let param = text
        .split("field `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .or_else(|| {
            text.split("query string: ")
                .nth(1)
                .and_then(|s| s.split(':').next())
                .filter(|p| !p.contains(' '))
        })
        .unwrap_or("query")
        .to_string();
    ApiError::param(&param, text)
}

/// Page size: `limit` ≤ 500, default 100.
pub(crate) fn page_limit(limit: Option<u32>) -> ApiResult<i64> {
    match limit {
        None => Ok(100),
        Some(l @ 1..=500) => Ok(i64::from(l)),
        Some(_) => Err(ApiError::param("limit", "limit must be between 1 and 500")),
    }
}
