//! WebSocket market-stream payloads and the live-subscription protocol.
//!
//! Raw streams (`/ws/<stream>`) carry the bare event; combined streams (`/stream?streams=`)
//! wrap it in [`Combined`]. Requests are [`WsRequest`]; a success reply is [`WsReply`] and a
//! failure is [`WsErrorReply`] with the positive codes 0–3 of the spot docs.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

mod fast;

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

// ---------------------------------------------------------------------------------------------
// Borrowed decoding for the connector's hot path.
//
// The owned structs above serve the simulator (which renders them). The connector decodes every
// frame, so it uses one borrowed struct whose string fields point into the frame: no `String`
// per trade, no `serde_json::Value`. One struct covers trade, aggTrade, serverShutdown and the
// live-request replies because they share a flat shape; fields a kind does not have are absent.

/// Every field the connector reads from any frame it expects, borrowed from the frame.
#[derive(Debug, Default, Deserialize)]
struct EventRef<'a> {
    #[serde(rename = "e", borrow, default)]
    event_type: Option<&'a str>,
    #[serde(rename = "s", borrow, default)]
    symbol: Option<&'a str>,
    #[serde(rename = "t", default)]
    trade_id: Option<u64>,
    #[serde(rename = "a", default)]
    agg_id: Option<u64>,
    #[serde(rename = "p", default)]
    price: Option<Decimal>,
    #[serde(rename = "q", default)]
    qty: Option<Decimal>,
    #[serde(rename = "T", default)]
    trade_time: Option<i64>,
    #[serde(rename = "E", default)]
    event_time: Option<i64>,
    #[serde(rename = "m", default)]
    buyer_is_maker: Option<bool>,
    /// Replies: `{"result":null,"id":1}` or `{"code":2,"msg":"...","id":1}`.
    #[serde(default)]
    id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(borrow, default)]
    msg: Option<std::borrow::Cow<'a, str>>,
}

/// `{"stream":"…","data":{…}}` with the event borrowed.
#[derive(Debug, Deserialize)]
struct CombinedRef<'a> {
    #[serde(borrow)]
    #[allow(dead_code)] // read by serde to validate the shape; routing uses the payload's `s`
    stream: &'a str,
    #[serde(borrow)]
    data: EventRef<'a>,
}

/// One trade as the connector sees it, borrowed from the frame. For `aggTrade` frames `id` is
/// the aggregate id `a`: the USD-M feed is `@aggTrade` and its REST backfill (`aggTrades?fromId`)
/// pages by the same id, so dedup and gap detection use one consistent sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeRef<'a> {
    pub symbol: &'a str,
    pub id: u64,
    pub price: Decimal,
    pub qty: Decimal,
    pub ts_ms: i64,
    pub buyer_is_maker: bool,
}

/// What one text frame was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRef<'a> {
    Trade(TradeRef<'a>),
    /// `serverShutdown`, raw or combined: reconnect at once.
    ServerShutdown,
    /// A live-request reply; `error` is `(code, msg)` for a failure.
    Reply {
        error: Option<(i64, String)>,
    },
    /// A well-formed event of a type the connector does not consume (ignored, counted).
    Other,
}

/// Why a frame could not be used; `kind()` is a stable metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not valid JSON for a stream event: {0}")]
    Json(String),
    #[error("{event} event without field `{field}`")]
    MissingField {
        event: &'static str,
        field: &'static str,
    },
}

impl FrameError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Json(_) => "json",
            Self::MissingField { .. } => "missing_field",
        }
    }
}

/// Decodes one frame's bytes (a binary frame, or a text frame not yet checked as UTF-8).
pub fn decode_frame(frame: &[u8]) -> Result<FrameRef<'_>, FrameError> {
    match std::str::from_utf8(frame) {
        Ok(text) => decode_text(text),
        Err(e) => Err(FrameError::Json(format!("frame is not UTF-8: {e}"))),
    }
}

/// Decodes one text frame, raw (`/ws`) or combined (`/stream`), borrowing from it. The
/// WebSocket layer has already checked text frames as UTF-8, so nothing here checks it again.
pub fn decode_text(frame: &str) -> Result<FrameRef<'_>, FrameError> {
    match fast::event(frame) {
        Some(ev) => event(ev),
        None => decode_serde(frame),
    }
}

/// Only the hand-written fast path of [`decode_text`]: `None` when the frame is not in the
/// canonical shape (it would go to [`decode_serde`]). Public for the differential fuzz target
/// (`fuzz/fuzz_targets/broker_frame.rs`), which checks that every answer it gives is serde's.
pub fn decode_fast(frame: &str) -> Option<Result<FrameRef<'_>, FrameError>> {
    fast::event(frame).map(event)
}

/// The general decoder: any JSON rendering of the same events, and the error messages. Public
/// for the differential fuzz target, like [`decode_fast`].
pub fn decode_serde(frame: &str) -> Result<FrameRef<'_>, FrameError> {
    // The combined wrapper always starts with its `stream` key when the exchange renders it;
    // sniffing avoids trying two decoders per frame. A wrapper rendered differently falls back
    // to the slow path below.
    let ev: EventRef<'_> = if frame.starts_with("{\"stream\"") {
        serde_json::from_str::<CombinedRef<'_>>(frame)
            .map_err(|e| FrameError::Json(e.to_string()))?
            .data
    } else {
        // A wrapper rendered otherwise (leading whitespace, keys reordered) is still a wrapper,
        // and its payload wins over event fields beside it, as when it is sniffed: whitespace
        // must not change which trade a frame means (found by the `broker_frame` fuzz target).
        match serde_json::from_str::<CombinedRef<'_>>(frame) {
            Ok(c) => c.data,
            Err(_) => serde_json::from_str::<EventRef<'_>>(frame)
                .map_err(|e| FrameError::Json(e.to_string()))?,
        }
    };
    event(ev)
}

fn event(ev: EventRef<'_>) -> Result<FrameRef<'_>, FrameError> {
    let (kind, id) = match ev.event_type {
        Some("trade") => ("trade", ev.trade_id),
        Some("aggTrade") => ("aggTrade", ev.agg_id),
        Some("serverShutdown") => return Ok(FrameRef::ServerShutdown),
        Some(_) => return Ok(FrameRef::Other),
        None if ev.code.is_some() => {
            let msg = ev.msg.map(|m| m.into_owned()).unwrap_or_default();
            return Ok(FrameRef::Reply {
                error: Some((ev.code.unwrap_or_default(), msg)),
            });
        }
        None if ev.id.is_some() => return Ok(FrameRef::Reply { error: None }),
        None => {
            return Err(FrameError::MissingField {
                event: "unknown",
                field: "e",
            });
        }
    };
    let missing = |field| FrameError::MissingField { event: kind, field };
    Ok(FrameRef::Trade(TradeRef {
        symbol: ev.symbol.ok_or_else(|| missing("s"))?,
        id: id.ok_or_else(|| missing(if kind == "trade" { "t" } else { "a" }))?,
        price: ev.price.ok_or_else(|| missing("p"))?,
        qty: ev.qty.ok_or_else(|| missing("q"))?,
        ts_ms: ev
            .trade_time
            .or(ev.event_time)
            .ok_or_else(|| missing("T"))?,
        buyer_is_maker: ev.buyer_is_maker.unwrap_or(false),
    }))
}

/// A SUBSCRIBE/UNSUBSCRIBE request rendered without `serde_json::Value`.
pub fn render_request(method: WsMethod, params: &[&str], id: u64) -> String {
    #[derive(Serialize)]
    struct Req<'a> {
        method: WsMethod,
        params: &'a [&'a str],
        id: u64,
    }
    serde_json::to_string(&Req { method, params, id }).expect("plain strings serialize")
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
    fn a_wrapper_means_its_payload_whatever_its_whitespace() {
        let frame = r#"{"stream":"btcusdt@trade","e":"trade","E":0,"s":"BTCUSDT","t":0,"p":"1","q":"1","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"2","q":"3","T":2,"m":true}}"#;
        let spaced = format!("  {frame}");
        for f in [frame, spaced.as_str()] {
            let Ok(FrameRef::Trade(t)) = decode_text(f) else {
                panic!("not a trade: {f}");
            };
            assert_eq!((t.id, t.ts_ms, t.buyer_is_maker), (7, 2, true), "{f}");
        }
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
    #[test]
    fn decodes_trade_aggtrade_combined_and_shutdown_borrowing() {
        let raw = br#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.00100000","q":"100","T":1672515782130,"m":true,"M":true,"x":1}"#;
        let FrameRef::Trade(t) = decode_frame(raw).unwrap() else {
            panic!("not a trade")
        };
        assert_eq!(
            (t.symbol, t.id, t.ts_ms, t.buyer_is_maker),
            ("BNBBTC", 12345, 1672515782130, true)
        );
        assert_eq!(t.price.to_string(), "0.00100000");
        // The symbol points into the frame: no allocation.
        let range = raw.as_ptr_range();
        assert!(range.contains(&t.symbol.as_ptr()));

        let agg = br#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":2,"s":"BTCUSDT","a":77,"p":"90000.1","q":"0.012","f":100,"l":102,"T":1672515782136,"m":false}}"#;
        let FrameRef::Trade(a) = decode_frame(agg).unwrap() else {
            panic!("not a trade")
        };
        assert_eq!((a.symbol, a.id), ("BTCUSDT", 77));
        // Futures trade with extra fields, options trade with `S`.
        let opt = br#"{"e":"trade","E":1,"T":1672515782136,"s":"BTC-261225-90000-C","t":9,"p":"1500","q":"0.1","S":-1,"m":true}"#;
        assert!(matches!(
            decode_frame(opt),
            Ok(FrameRef::Trade(TradeRef { id: 9, .. }))
        ));

        for f in [
            &br#"{"e":"serverShutdown","E":1770123456789}"#[..],
            br#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}"#,
        ] {
            assert_eq!(decode_frame(f).unwrap(), FrameRef::ServerShutdown);
        }
        assert_eq!(
            decode_frame(br#"{"result":null,"id":3}"#).unwrap(),
            FrameRef::Reply { error: None }
        );
        assert_eq!(
            decode_frame(br#"{"code":2,"msg":"Invalid request: \"x\"","id":3}"#).unwrap(),
            FrameRef::Reply {
                error: Some((2, "Invalid request: \"x\"".into()))
            }
        );
        assert_eq!(
            decode_frame(br#"{"e":"24hrMiniTicker","E":1,"s":"X"}"#).unwrap(),
            FrameRef::Other
        );
    }

    /// Frames exactly as the simulator renders them (every market, raw and combined) must take
    /// the fast path, or the benchmark figures would silently measure serde again.
    #[test]
    fn canonical_frames_take_the_fast_path_and_agree_with_serde() {
        let frames = [
            r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.00100000","q":"100","T":1672515782130,"m":true,"M":true}"#,
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":0,"p":"90000.10","q":"0.012","T":2,"m":false,"M":true}}"#,
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"T":2,"s":"BTCUSDT","t":7,"p":"1","q":"2","X":"MARKET","m":true}}"#,
            r#"{"stream":"btc-261225-90000-c@trade","data":{"e":"trade","E":1,"s":"BTC-261225-90000-C","t":9,"p":"1500","q":"0.1","T":3,"m":true,"S":-1}}"#,
            r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":2,"s":"BTCUSDT","a":77,"p":"90000.1","q":"0.012","f":100,"l":102,"T":1672515782136,"m":false}}"#,
            r#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}"#,
        ];
        for f in frames {
            let ev = fast::event(f).unwrap_or_else(|| panic!("fast path refused {f}"));
            assert_eq!(event(ev), decode_serde(f), "{f}");
        }
        // What the fast path must leave to serde.
        for f in [
            r#"{"e":"trade", "E":1}"#,
            r#"{"e":"tr\u0061de","E":1}"#,
            r#"{"e":"trade","E":01}"#,
            r#"{"e":"trade","e":"trade"}"#,
            r#"{"e":"trade","t":1.5}"#,
            r#"{"e":"trade","E":-1}"#,
            r#"{"e":"trade","t":18446744073709551616}"#,
            r#"{"result":null,"id":3}"#,
            r#"{"e":"trade","x":[1]}"#,
            r#"{"e":"trade"} "#,
        ] {
            assert!(fast::event(f).is_none(), "fast path accepted {f}");
        }
    }

    mod differential {
        use super::super::*;
        use proptest::prelude::*;

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u64..u64::MAX).prop_map(|v| v.to_string()),
                Just("18446744073709551616".to_string()),
                Just("9223372036854775808".to_string()),
                (-1000i64..1000).prop_map(|v| v.to_string()),
                Just("00".to_string()),
                Just("01".to_string()),
                Just("1.5".to_string()),
                Just("1e3".to_string()),
                Just("-0".to_string()),
                Just("true".to_string()),
                Just("false".to_string()),
                Just("null".to_string()),
                Just("[1,2]".to_string()),
                Just("{}".to_string()),
                "[a-zA-Z0-9._@-]{0,12}".prop_map(|v| format!("\"{v}\"")),
                prop_oneof![
                    Just("\"0.00100000\""),
                    Just("\"90000.1\""),
                    Just("\"-1\""),
                    Just("\"\""),
                    Just("\"1e5\""),
                    Just("\"1_000\""),
                    Just("\"abc\""),
                    Just("\" 1\""),
                    Just("\"1\\u0030\""),
                    Just("\"é\""),
                    Just("\"trade\""),
                    Just("\"aggTrade\""),
                    Just("\"serverShutdown\""),
                ]
                .prop_map(str::to_string),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop::sample::select(vec![
                    "e", "E", "s", "t", "a", "p", "q", "T", "m", "M", "f", "l", "X", "S", "id",
                    "code", "msg", "result", "stream", "data"
                ])
                .prop_map(str::to_string),
                1 => "[a-z]{0,3}".prop_map(|v| v.to_string()),
                1 => Just("\\u0065".to_string()),
            ]
        }

        fn object() -> impl Strategy<Value = String> {
            // Mostly well-typed trade fields in random order, some arbitrary pairs.
            let typed = prop_oneof![
                Just(("e".to_string(), "\"trade\"".to_string())),
                Just(("e".to_string(), "\"aggTrade\"".to_string())),
                (0u64..1 << 40).prop_map(|v| ("t".to_string(), v.to_string())),
                (0u64..1 << 40).prop_map(|v| ("a".to_string(), v.to_string())),
                (1u64..1 << 45).prop_map(|v| ("E".to_string(), v.to_string())),
                (1u64..1 << 45).prop_map(|v| ("T".to_string(), v.to_string())),
                (1u64..1_000_000_000, 0u32..9).prop_map(|(m, sc)| (
                    "p".to_string(),
                    format!("\"{}\"", Decimal::new(m as i64, sc))
                )),
                (1u64..1_000_000_000, 0u32..9).prop_map(|(m, sc)| (
                    "q".to_string(),
                    format!("\"{}\"", Decimal::new(m as i64, sc))
                )),
                "[A-Z0-9-]{1,20}".prop_map(|v| ("s".to_string(), format!("\"{v}\""))),
                any::<bool>().prop_map(|b| ("m".to_string(), b.to_string())),
            ];
            let pair = prop_oneof![4 => typed, 1 => (key(), scalar())];
            prop::collection::vec(pair, 0..12).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            })
        }

        fn frame() -> impl Strategy<Value = String> {
            (object(), any::<bool>(), "[a-z@!]{0,10}").prop_map(|(o, combined, stream)| {
                if combined {
                    format!("{{\"stream\":\"{stream}\",\"data\":{o}}}")
                } else {
                    o
                }
            })
        }

        /// One random edit: delete, insert or replace a byte (kept only when still UTF-8).
        fn mutated() -> impl Strategy<Value = String> {
            (
                frame(),
                any::<prop::sample::Index>(),
                0u8..4,
                prop::sample::select(b" \t\",:{}[]\\0123456789-.eEtfnu\x01abcz".to_vec()),
            )
                .prop_map(|(f, at, op, byte)| {
                    let mut b = f.into_bytes();
                    if b.is_empty() {
                        return String::new();
                    }
                    let i = at.index(b.len());
                    match op {
                        0 => {
                            b.remove(i);
                        }
                        1 => b.insert(i, byte),
                        2 => b[i] = byte,
                        _ => b.truncate(i),
                    }
                    String::from_utf8(b).unwrap_or_default()
                })
        }

        fn agree(f: &str) -> Result<(), TestCaseError> {
            if let Some(ev) = super::super::fast::event(f) {
                prop_assert_eq!(event(ev), decode_serde(f), "frame {}", f);
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            #[test]
            fn fast_path_answers_like_serde(f in frame()) {
                agree(&f)?;
            }

            #[test]
            fn fast_path_answers_like_serde_on_mutations(f in mutated()) {
                agree(&f)?;
            }
        }
    }

    #[test]
    fn malformed_frames_are_errors_with_kinds() {
        let truncated = br#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12"#;
        assert_eq!(decode_frame(truncated).unwrap_err().kind(), "json");
        let no_id = br#"{"e":"trade","E":1,"s":"BNBBTC","p":"1","q":"1","T":1,"m":true}"#;
        assert_eq!(
            decode_frame(no_id).unwrap_err(),
            FrameError::MissingField {
                event: "trade",
                field: "t"
            }
        );
        let bad_price = br#"{"e":"trade","E":1,"s":"X","t":1,"p":"abc","q":"1","T":1,"m":true}"#;
        assert_eq!(decode_frame(bad_price).unwrap_err().kind(), "json");
        let neg_id = br#"{"e":"trade","E":1,"s":"X","t":-5,"p":"1","q":"1","T":1,"m":true}"#;
        assert_eq!(decode_frame(neg_id).unwrap_err().kind(), "json");
        assert_eq!(decode_frame(b"").unwrap_err().kind(), "json");
        assert_eq!(decode_frame(b"[1,2]").unwrap_err().kind(), "json");
        assert_eq!(decode_frame(b"{}").unwrap_err().kind(), "missing_field");
        let combined_bad = br#"{"stream":"x@trade","data":{"e":"trade","s":"X"#;
        assert_eq!(decode_frame(combined_bad).unwrap_err().kind(), "json");
    }

    #[test]
    fn requests_render_like_the_exchange_expects() {
        assert_eq!(
            render_request(WsMethod::Subscribe, &["btcusdt@trade", "ethusdt@trade"], 7),
            r#"{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"],"id":7}"#
        );
    }
}
