//! WebSocket market-stream payloads and the live-subscription protocol.
//!
//! Raw streams (`/ws/<stream>`) carry the bare event; combined streams (`/stream?streams=`)
//! wrap it in [`Combined`]. Requests are [`WsRequest`]; a success reply is [`WsReply`] and a
//! failure is [`WsErrorReply`] with the positive codes 0–3 of the spot docs.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// `<symbol>@trade`: one event per trade.
///
/// ```json
/// {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100",
///  "T":1672515782136,"m":true,"M":true}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsTrade {
    /// Always `trade`.
    #[serde(rename = "e")]
    pub event_type: String,
    #[serde(rename = "E")]
    pub event_time: i64,
    #[serde(rename = "s")]
    pub symbol: String,
    #[serde(rename = "t")]
    pub trade_id: i64,
    #[serde(rename = "p")]
    pub price: Decimal,
    #[serde(rename = "q")]
    pub qty: Decimal,
    #[serde(rename = "T")]
    pub trade_time: i64,
    /// Buyer is the maker, i.e. the taker sold.
    #[serde(rename = "m")]
    pub buyer_is_maker: bool,
    /// Legacy best-match flag; spot only, absent on futures/options.
    #[serde(rename = "M", default, skip_serializing_if = "Option::is_none")]
    pub best_match: Option<bool>,
}

/// `<symbol>@aggTrade`: the fills of one taker order at one price, trade ids `f..=l`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsAggTrade {
    /// Always `aggTrade`.
    #[serde(rename = "e")]
    pub event_type: String,
    #[serde(rename = "E")]
    pub event_time: i64,
    #[serde(rename = "s")]
    pub symbol: String,
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
    pub trade_time: i64,
    #[serde(rename = "m")]
    pub buyer_is_maker: bool,
    #[serde(rename = "M", default, skip_serializing_if = "Option::is_none")]
    pub best_match: Option<bool>,
}

/// `serverShutdown`: the server is going away; reconnect at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerShutdown {
    /// Always `serverShutdown`.
    #[serde(rename = "e")]
    pub event_type: String,
    #[serde(rename = "E")]
    pub event_time: i64,
}

/// Stream name of the `serverShutdown` event inside a combined wrapper.
pub const SERVER_SHUTDOWN_STREAM: &str = "!serverShutdown";

/// The combined-stream wrapper `{"stream":"btcusdt@trade","data":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Combined<T> {
    pub stream: String,
    pub data: T,
}

/// A live request: `{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsRequest {
    pub method: WsMethod,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<serde_json::Value>,
    /// int64, an alphanumeric string of at most 36 characters, or null; echoed in the reply.
    pub id: serde_json::Value,
}

/// The five live methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WsMethod {
    Subscribe,
    Unsubscribe,
    ListSubscriptions,
    SetProperty,
    GetProperty,
}

impl WsMethod {
    pub const ALL: [&'static str; 5] = [
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST_SUBSCRIPTIONS",
        "SET_PROPERTY",
        "GET_PROPERTY",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SUBSCRIBE" => Some(Self::Subscribe),
            "UNSUBSCRIBE" => Some(Self::Unsubscribe),
            "LIST_SUBSCRIPTIONS" => Some(Self::ListSubscriptions),
            "SET_PROPERTY" => Some(Self::SetProperty),
            "GET_PROPERTY" => Some(Self::GetProperty),
            _ => None,
        }
    }
}

/// A success reply; `result: null` means success for non-query methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsReply {
    pub result: serde_json::Value,
    pub id: serde_json::Value,
}

/// An error reply `{"code":2,"msg":"Invalid request: ...","id":1}`; `id` only when it was known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsErrorReply {
    pub code: i64,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
}

/// The positive error codes of the live-subscription protocol.
pub mod codes {
    /// Unknown property in SET_PROPERTY/GET_PROPERTY.
    pub const UNKNOWN_PROPERTY: i64 = 0;
    /// Property value of the wrong type.
    pub const INVALID_VALUE_TYPE: i64 = 1;
    /// Well-formed JSON that is not a valid request.
    pub const INVALID_REQUEST: i64 = 2;
    /// Not JSON at all.
    pub const INVALID_JSON: i64 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_round_trips_with_exchange_formatting() {
        let raw = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"4.00000100","q":"100.00000000","T":1672515782136,"m":true,"M":true,"x":"ignored"}"#;
        let t: WsTrade = serde_json::from_str(raw).unwrap();
        assert_eq!(t.price, Decimal::new(400000100, 8));
        let back = serde_json::to_string(&t).unwrap();
        assert!(back.contains(r#""p":"4.00000100""#), "{back}");
        assert!(back.contains(r#""q":"100.00000000""#), "{back}");
    }

    #[test]
    fn combined_wrapper_and_requests() {
        let raw = r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT","a":5,"p":"1.0","q":"2","f":10,"l":12,"T":1,"m":false}}"#;
        let c: Combined<WsAggTrade> = serde_json::from_str(raw).unwrap();
        assert_eq!(c.data.last_trade_id - c.data.first_trade_id, 2);
        assert_eq!(c.data.best_match, None);
        let r: WsRequest =
            serde_json::from_str(r#"{"method":"LIST_SUBSCRIPTIONS","id":"abc"}"#).unwrap();
        assert_eq!(r.method, WsMethod::ListSubscriptions);
        assert!(WsMethod::parse("NOPE").is_none());
        let e = WsErrorReply {
            code: codes::INVALID_JSON,
            msg: "Invalid JSON: x".into(),
            id: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":3,"msg":"Invalid JSON: x"}"#
        );
    }
}
