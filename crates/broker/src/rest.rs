//! REST response bodies of spot (`/api/v3`), USD-M futures (`/fapi/v1`) and options (`/eapi/v1`).
//!
//! Optional fields are `Option` with `skip_serializing_if`, so one struct serves markets whose
//! payloads differ by a field or two (spot trades carry `isBestMatch`, futures trades do not).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The error body everywhere: `{"code":-1121,"msg":"Invalid symbol."}` (negative codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("binance error {code}: {msg}")]
pub struct ApiError {
    pub code: i64,
    pub msg: String,
}

/// REST error codes used by the simulator and understood by the connector.
pub mod codes {
    pub const UNKNOWN: i64 = -1000;
    pub const TOO_MANY_REQUESTS: i64 = -1003;
    pub const ILLEGAL_CHARS: i64 = -1100;
    pub const MANDATORY_PARAM_EMPTY_OR_MALFORMED: i64 = -1102;
    pub const BAD_SYMBOL: i64 = -1121;
    pub const OPTIONAL_PARAMS_BAD_COMBO: i64 = -1128;
    pub const INVALID_PARAMETER: i64 = -1130;
}

/// One row of `trades` / `historicalTrades` (spot and futures).
///
/// ```json
/// {"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",
///  "time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestTrade {
    pub id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    pub quote_qty: Decimal,
    pub time: i64,
    pub is_buyer_maker: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_best_match: Option<bool>,
}

/// One row of options `/eapi/v1/trades`: `side` is 1 for a taker buy, -1 for a taker sell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionTrade {
    pub id: i64,
    pub trade_id: i64,
    pub symbol: String,
    pub price: Decimal,
    pub qty: Decimal,
    pub quote_qty: Decimal,
    pub side: i8,
    pub time: i64,
}

/// One row of `aggTrades`.
///
/// ```json
/// {"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestAggTrade {
    #[serde(rename = "a")]
    pub agg_id: i64,
    #[serde(rename = "p")]
    pub price: Decimal,
    #[serde(rename = "q")]
    pub qty: Decimal,
    #[serde(rename = "f")]
    pub first_trade_id: i64,
    #[serde(rename = "l")]
    pub last_trade_id: i64,
    #[serde(rename = "T")]
    pub time: i64,
    #[serde(rename = "m")]
    pub buyer_is_maker: bool,
    #[serde(rename = "M", default, skip_serializing_if = "Option::is_none")]
    pub best_match: Option<bool>,
}

/// `ticker/price` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickerPrice {
    pub symbol: String,
    pub price: Decimal,
    /// Futures add the time of the last trade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
}

/// `time` response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTime {
    pub server_time: i64,
}

/// `rateLimits` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub rate_limit_type: String,
    pub interval: String,
    pub interval_num: u32,
    pub limit: u64,
}

/// A symbol filter. Only the two that define the price and quantity grids are modelled; any
/// other filter type deserializes as [`Filter::Other`] so new exchange filters never break sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "filterType")]
pub enum Filter {
    #[serde(rename = "PRICE_FILTER", rename_all = "camelCase")]
    Price {
        min_price: Decimal,
        max_price: Decimal,
        tick_size: Decimal,
    },
    #[serde(rename = "LOT_SIZE", rename_all = "camelCase")]
    LotSize {
        min_qty: Decimal,
        max_qty: Decimal,
        step_size: Decimal,
    },
    #[serde(other)]
    Other,
}

/// Finds the tick size among `filters`.
pub fn tick_size(filters: &[Filter]) -> Option<Decimal> {
    filters.iter().find_map(|f| match f {
        Filter::Price { tick_size, .. } => Some(*tick_size),
        _ => None,
    })
}

/// Finds the step size among `filters`.
pub fn step_size(filters: &[Filter]) -> Option<Decimal> {
    filters.iter().find_map(|f| match f {
        Filter::LotSize { step_size, .. } => Some(*step_size),
        _ => None,
    })
}

/// `GET /api/v3/exchangeInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpotExchangeInfo {
    pub timezone: String,
    pub server_time: i64,
    pub rate_limits: Vec<RateLimit>,
    #[serde(default)]
    pub exchange_filters: Vec<serde_json::Value>,
    pub symbols: Vec<SpotSymbol>,
}

/// One spot pair in exchangeInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpotSymbol {
    pub symbol: String,
    pub status: String,
    pub base_asset: String,
    pub base_asset_precision: u32,
    pub quote_asset: String,
    pub quote_precision: u32,
    pub quote_asset_precision: u32,
    #[serde(default)]
    pub order_types: Vec<String>,
    #[serde(default)]
    pub iceberg_allowed: bool,
    #[serde(default)]
    pub oco_allowed: bool,
    #[serde(default)]
    pub is_spot_trading_allowed: bool,
    #[serde(default)]
    pub is_margin_trading_allowed: bool,
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub permission_sets: Vec<Vec<String>>,
}

/// `GET /fapi/v1/exchangeInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FuturesExchangeInfo {
    pub timezone: String,
    pub server_time: i64,
    pub rate_limits: Vec<RateLimit>,
    #[serde(default)]
    pub exchange_filters: Vec<serde_json::Value>,
    pub symbols: Vec<FuturesSymbol>,
}

/// One USD-M contract: a perpetual has `symbol == pair`, a delivery contract is `<pair>_<yymmdd>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FuturesSymbol {
    pub symbol: String,
    pub pair: String,
    /// PERPETUAL, CURRENT_QUARTER, NEXT_QUARTER, … (unknown values must be tolerated).
    pub contract_type: String,
    pub delivery_date: i64,
    pub onboard_date: i64,
    pub status: String,
    pub base_asset: String,
    pub quote_asset: String,
    pub margin_asset: String,
    pub price_precision: u32,
    pub quantity_precision: u32,
    #[serde(default)]
    pub underlying_type: String,
    #[serde(default)]
    pub underlying_sub_type: Vec<String>,
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub order_types: Vec<String>,
    #[serde(default)]
    pub time_in_force: Vec<String>,
}

/// `GET /eapi/v1/exchangeInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionsExchangeInfo {
    pub timezone: String,
    pub server_time: i64,
    pub option_contracts: Vec<OptionContract>,
    pub option_assets: Vec<OptionAsset>,
    pub option_symbols: Vec<OptionSymbol>,
    pub rate_limits: Vec<RateLimit>,
}

/// `optionContracts` entry: one per underlying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionContract {
    pub base_asset: String,
    pub quote_asset: String,
    pub underlying: String,
    pub settle_asset: String,
}

/// `optionAssets` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionAsset {
    pub name: String,
}

/// One option: `<BASE>-<yymmdd>-<strike>-<C|P>`, joined to its underlying by `underlying`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionSymbol {
    pub symbol: String,
    pub underlying: String,
    /// CALL or PUT.
    pub side: String,
    pub strike_price: Decimal,
    pub expiry_date: i64,
    pub unit: u32,
    pub quote_asset: String,
    pub price_scale: u32,
    pub quantity_scale: u32,
    pub min_qty: Decimal,
    pub max_qty: Decimal,
    pub maker_fee_rate: Decimal,
    pub taker_fee_rate: Decimal,
    pub filters: Vec<Filter>,
    /// Optional on the real exchange; the simulator always sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_unknown_filter_is_tolerated() {
        let raw = r#"[{"filterType":"PRICE_FILTER","minPrice":"0.00000100","maxPrice":"100000.00000000","tickSize":"0.00000100"},
                      {"filterType":"LOT_SIZE","minQty":"0.00100000","maxQty":"100000.00000000","stepSize":"0.00100000"},
                      {"filterType":"ICEBERG_PARTS","limit":10}]"#;
        let f: Vec<Filter> = serde_json::from_str(raw).unwrap();
        assert_eq!(tick_size(&f), Some(Decimal::new(100, 8)));
        assert_eq!(step_size(&f), Some(Decimal::new(100000, 8)));
        assert_eq!(f[2], Filter::Other);
        let back = serde_json::to_string(&f[0]).unwrap();
        assert!(back.contains(r#""tickSize":"0.00000100""#), "{back}");
    }

    #[test]
    fn rest_trade_shape() {
        let raw = r#"[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]"#;
        let t: Vec<RestTrade> = serde_json::from_str(raw).unwrap();
        assert_eq!(t[0].id, 28457);
        assert_eq!(serde_json::to_string(&t).unwrap(), raw);
        let e: ApiError =
            serde_json::from_str(r#"{"code":-1121,"msg":"Invalid symbol."}"#).unwrap();
        assert_eq!(e.code, codes::BAD_SYMBOL);
    }
}
