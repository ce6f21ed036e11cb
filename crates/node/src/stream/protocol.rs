//! The frame protocol of `/api/v1/stream`, pure: parsing client messages and channel names, and
//! rendering server frames. No I/O and no state, so every path is unit- and property-tested;
//! [`parse_op`] returns an error for any input and never panics (see the proptest below).
//!
//! Client → server (text frames, JSON objects with an `op`):
//! - `{"op":"subscribe","channels":["prices:BTCUSDT","vwap:BTCUSDT:5m","alerts"]}`
//! - `{"op":"unsubscribe","channels":[…]}`
//! - `{"op":"auth","token":"<access token>"}`
//! - `{"op":"watch","symbol":"BTCUSDT","above":"95000"}` (or `"below"`; optional `"market"`)
//! - `{"op":"unwatch","id":1}` or `{"op":"unwatch","symbol":"BTCUSDT"}` (all its watches)
//! - `{"op":"list"}`, `{"op":"ping"}`
//!
//! Channel names: `prices:SYMBOL` (spot) or `prices:MARKET:SYMBOL` (`usdm`, `options`, `spot`),
//! `vwap:SYMBOL:INTERVAL` or `vwap:MARKET:SYMBOL:INTERVAL`, `alerts`. Symbols are
//! case-insensitive; acks and updates name the canonical form (upper-case symbol, market
//! omitted for spot), the same way `GET /api/v1/prices/{symbol}?market=` reads them.

use std::fmt;

use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A channel a connection can subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Prices(InstrumentKey),
    Vwap(InstrumentKey, Span),
    Alerts,
}

impl Channel {
    /// The canonical name, as acks and updates spell it.
    pub fn name(&self) -> String {
        match self {
            Self::Prices(k) => format!("prices:{}", short(k)),
            Self::Vwap(k, iv) => format!("vwap:{}:{iv}", short(k)),
            Self::Alerts => "alerts".into(),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// `SYMBOL` for spot, `market:SYMBOL` otherwise.
fn short(k: &InstrumentKey) -> String {
    match k.market() {
        Market::Spot => k.symbol_str().to_string(),
        _ => k.as_str().to_string(),
    }
}

/// Which side of the threshold a watch waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Above,
    Below,
}

impl Direction {
    /// Whether `price` is past `threshold` on this side: strictly above (below) it. A price
    /// equal to the threshold has not gone past it.
    pub fn is_past(self, price: Decimal, threshold: Decimal) -> bool {
        match self {
            Self::Above => price > threshold,
            Self::Below => price < threshold,
        }
    }
}

/// What to unwatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unwatch {
    Id(u64),
    /// Every watch of this instrument.
    Instrument(InstrumentKey),
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Raw channel names, validated one by one by [`parse_channel`] (each may fail alone).
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Auth(String),
    Watch {
        key: InstrumentKey,
        direction: Direction,
        threshold: Decimal,
    },
    Unwatch(Unwatch),
    List,
    Ping,
}

impl Op {
    /// The op's name, for error frames.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Subscribe(_) => "subscribe",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::Auth(_) => "auth",
            Self::Watch { .. } => "watch",
            Self::Unwatch(_) => "unwatch",
            Self::List => "list",
            Self::Ping => "ping",
        }
    }
}

/// Why a message or channel was refused: a stable `code` plus a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub code: &'static str,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }
}

/// Most channel names one subscribe/unsubscribe may carry (the per-connection limit is
/// usually lower; this only bounds parsing work).
pub const MAX_NAMES_PER_OP: usize = 1_000;

/// Every field any op may carry; which ones an op needs is checked after decoding, so a
/// missing or misplaced field gets a sentence naming it rather than a serde message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    op: Option<String>,
    channels: Option<Vec<String>>,
    token: Option<String>,
    symbol: Option<String>,
    market: Option<String>,
    /// Thresholds are decimal strings: a JSON number would go through f64 on the way.
    above: Option<String>,
    below: Option<String>,
    id: Option<u64>,
}

/// Parses one client text message.
pub fn parse_op(text: &str) -> Result<Op, ProtoError> {
    let raw: RawOp = serde_json::from_str(text).map_err(|e| {
        ProtoError::bad(format!(
            "not a valid message ({e}); expected a JSON object with an \"op\""
        ))
    })?;
    let op = raw
        .op
        .as_deref()
        .ok_or_else(|| ProtoError::bad("missing \"op\""))?;
    let only = |allowed: &[&str]| -> Result<(), ProtoError> {
        let present = [
            ("channels", raw.channels.is_some()),
            ("token", raw.token.is_some()),
            ("symbol", raw.symbol.is_some()),
            ("market", raw.market.is_some()),
            ("above", raw.above.is_some()),
            ("below", raw.below.is_some()),
            ("id", raw.id.is_some()),
        ];
        match present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
            Some((f, _)) => Err(ProtoError::bad(format!("\"{f}\" is not a field of {op}"))),
            None => Ok(()),
        }
    };
    match op {
        "subscribe" | "unsubscribe" => {
            only(&["channels"])?;
            let channels = raw
                .channels
                .ok_or_else(|| ProtoError::bad(format!("{op} needs \"channels\": [names]")))?;
            if channels.is_empty() {
                return Err(ProtoError::bad(format!("{op} needs at least one channel")));
            }
            if channels.len() > MAX_NAMES_PER_OP {
                return Err(ProtoError::new(
                    "too_many_channels",
                    format!("at most {MAX_NAMES_PER_OP} channels per {op}"),
                ));
            }
            Ok(if op == "subscribe" {
                Op::Subscribe(channels)
            } else {
                Op::Unsubscribe(channels)
            })
        }
        "auth" => {
            only(&["token"])?;
            let token = raw
                .token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ProtoError::bad("auth needs \"token\": an access token"))?;
            Ok(Op::Auth(token))
        }
        "watch" => {
            only(&["symbol", "market", "above", "below"])?;
            let key = instrument(raw.symbol.as_deref(), raw.market.as_deref())?;
            let (direction, raw_threshold) = match (raw.above, raw.below) {
                (Some(t), None) => (Direction::Above, t),
                (None, Some(t)) => (Direction::Below, t),
                _ => {
                    return Err(ProtoError::bad(
                        "watch needs exactly one of \"above\" or \"below\": a decimal string",
                    ));
                }
            };
            let threshold = parse_threshold(&raw_threshold)?;
            Ok(Op::Watch {
                key,
                direction,
                threshold,
            })
        }
        "unwatch" => {
            only(&["id", "symbol", "market"])?;
            match (raw.id, raw.symbol.as_deref()) {
                (Some(id), None) if raw.market.is_none() => Ok(Op::Unwatch(Unwatch::Id(id))),
                (None, Some(s)) => Ok(Op::Unwatch(Unwatch::Instrument(instrument(
                    Some(s),
                    raw.market.as_deref(),
                )?))),
                _ => Err(ProtoError::bad(
                    "unwatch needs \"id\" (one watch) or \"symbol\" (all watches of it)",
                )),
            }
        }
        "list" => {
            only(&[])?;
            Ok(Op::List)
        }
        "ping" => {
            only(&[])?;
            Ok(Op::Ping)
        }
        other => Err(ProtoError::new(
            "unknown_op",
            format!(
                "unknown op {:?}; expected subscribe, unsubscribe, auth, watch, unwatch, list or ping",
                truncate(other)
            ),
        )),
    }
}

fn instrument(symbol: Option<&str>, market: Option<&str>) -> Result<InstrumentKey, ProtoError> {
    let symbol = symbol.ok_or_else(|| ProtoError::bad("\"symbol\" is required"))?;
    let symbol = Symbol::parse(symbol).map_err(|e| ProtoError::bad(e.to_string()))?;
    let market = match market {
        None => Market::Spot,
        Some(m) => Market::parse(m)
            .ok_or_else(|| ProtoError::bad("\"market\" must be spot, usdm or options"))?,
    };
    Ok(InstrumentKey::new(market, &symbol))
}

/// A watch threshold: a positive decimal string (`"95000"`, `"0.00012"`), exact.
pub fn parse_threshold(s: &str) -> Result<Decimal, ProtoError> {
    let bad = || {
        ProtoError::bad(format!(
            "threshold {:?} is not a positive decimal string like \"95000.5\"",
            truncate(s)
        ))
    };
    // Plain digits and one dot only: no exponent, sign or whitespace surprises.
    if s.is_empty() || s.len() > 40 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let d: Decimal = s.parse().map_err(|_| bad())?;
    if d <= Decimal::ZERO {
        return Err(bad());
    }
    Ok(d)
}

/// Parses one channel name; `intervals` are the configured VWAP intervals (`[vwap]`).
pub fn parse_channel(name: &str, intervals: &[Span]) -> Result<Channel, ProtoError> {
    let unknown = |why: String| ProtoError::new("unknown_channel", why);
    if name == "alerts" {
        return Ok(Channel::Alerts);
    }
    let parts: Vec<&str> = name.splitn(5, ':').collect();
    let key = |market: Option<&str>, symbol: &str| -> Result<InstrumentKey, ProtoError> {
        let m = match market {
            None => Market::Spot,
            Some(m) => Market::parse(m).ok_or_else(|| {
                unknown(format!(
                    "unknown market {:?} in {:?}; expected spot, usdm or options",
                    truncate(m),
                    truncate(name)
                ))
            })?,
        };
        let s = Symbol::parse(symbol)
            .map_err(|e| unknown(format!("{e} in channel {:?}", truncate(name))))?;
        Ok(InstrumentKey::new(m, &s))
    };
    match parts.as_slice() {
        ["prices", sym] => Ok(Channel::Prices(key(None, sym)?)),
        ["prices", m, sym] => Ok(Channel::Prices(key(Some(m), sym)?)),
        ["vwap", sym, iv] => Ok(Channel::Vwap(key(None, sym)?, interval(iv, intervals)?)),
        ["vwap", m, sym, iv] => Ok(Channel::Vwap(key(Some(m), sym)?, interval(iv, intervals)?)),
        _ => Err(unknown(format!(
            "unknown channel {:?}; expected prices:SYMBOL, prices:MARKET:SYMBOL, \
             vwap:SYMBOL:INTERVAL, vwap:MARKET:SYMBOL:INTERVAL or alerts",
            truncate(name)
        ))),
    }
}

fn interval(raw: &str, allowed: &[Span]) -> Result<Span, ProtoError> {
    let list = || {
        allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match raw.parse::<Span>() {
        Ok(s) if allowed.contains(&s) => Ok(s),
        _ => Err(ProtoError::new(
            "unknown_interval",
            format!(
                "unknown VWAP interval {:?}; expected one of {}",
                truncate(raw),
                list()
            ),
        )),
    }
}

/// At most 64 characters of client input echoed back in an error.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

// --- server frames ----------------------------------------------------------------------------

/// A watch as acks and `list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchView {
    pub id: u64,
    pub market: String,
    pub symbol: String,
    pub direction: Direction,
    #[serde(with = "rust_decimal::serde::str")]
    pub threshold: Decimal,
}

impl WatchView {
    pub fn new(id: u64, key: &InstrumentKey, direction: Direction, threshold: Decimal) -> Self {
        Self {
            id,
            market: key.market().as_str().into(),
            symbol: key.symbol_str().into(),
            direction,
            threshold,
        }
    }
}

/// Frames the server sends besides data updates.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Subscribed {
        channels: &'a [String],
    },
    Unsubscribed {
        channels: &'a [String],
    },
    Authenticated {
        user_id: i64,
        /// When the token expires (s since the epoch); the `alerts` channel stops then.
        expires_at: i64,
    },
    Watching {
        watch: &'a WatchView,
        /// The latest price when the watch was set (null before the first trade).
        #[serde(with = "rust_decimal::serde::str_option")]
        price: Option<Decimal>,
        /// Whether that price is already past the threshold. Notifications come only when
        /// the price goes past it from the other side (see [`Direction::is_past`]).
        past: bool,
    },
    Unwatched {
        ids: &'a [u64],
    },
    List {
        channels: &'a [String],
        watches: &'a [WatchView],
        user_id: Option<i64>,
    },
    Pong,
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        op: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
}

impl Reply<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("reply frames serialize")
    }
}

/// A data update: `{"type":"price"|"vwap"|"alert","channel":…,"data":…}`.
#[derive(Debug, Serialize)]
pub struct Update<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub channel: &'a str,
    pub data: &'a T,
}

impl<T: Serialize> Update<'_, T> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("update frames serialize")
    }
}

/// A watch notification: the price went past the threshold.
#[derive(Debug, Serialize)]
pub struct Crossed<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub watch: &'a WatchView,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    pub trade_id: u64,
    /// Trade time, ms.
    pub ts: i64,
}

impl Crossed<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("crossed frames serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ivs() -> Vec<Span> {
        ["1m", "5m", "15m", "1h"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn channels_parse_to_canonical_names() {
        let c = |s: &str| parse_channel(s, &ivs()).map(|c| c.name());
        assert_eq!(c("prices:btcusdt").unwrap(), "prices:BTCUSDT");
        assert_eq!(c("prices:spot:BTCUSDT").unwrap(), "prices:BTCUSDT");
        assert_eq!(c("prices:usdm:BTCUSDT").unwrap(), "prices:usdm:BTCUSDT");
        assert_eq!(
            c("prices:options:BTC-261225-90000-C").unwrap(),
            "prices:options:BTC-261225-90000-C"
        );
        assert_eq!(c("vwap:BTCUSDT:5m").unwrap(), "vwap:BTCUSDT:5m");
        assert_eq!(c("vwap:usdm:ethusdt:1h").unwrap(), "vwap:usdm:ETHUSDT:1h");
        assert_eq!(c("vwap:BTCUSDT:300s").unwrap(), "vwap:BTCUSDT:5m");
        assert_eq!(c("alerts").unwrap(), "alerts");
        let code = |s: &str| parse_channel(s, &ivs()).unwrap_err().code;
        assert_eq!(code("vwap:BTCUSDT:2m"), "unknown_interval");
        assert_eq!(code("vwap:BTCUSDT"), "unknown_channel");
        assert_eq!(code("prices:nasdaq:AAPL"), "unknown_channel");
        assert_eq!(code("prices:B"), "unknown_channel");
        assert_eq!(code("prices:"), "unknown_channel");
        assert_eq!(code("trades:BTCUSDT"), "unknown_channel");
        assert_eq!(code("prices:spot:BTC:USDT:x"), "unknown_channel");
        assert_eq!(code(""), "unknown_channel");
        assert_eq!(code("ALERTS"), "unknown_channel");
    }

    #[test]
    fn ops_parse_and_errors_name_the_problem() {
        assert_eq!(
            parse_op(r#"{"op":"subscribe","channels":["prices:BTCUSDT"]}"#).unwrap(),
            Op::Subscribe(vec!["prices:BTCUSDT".into()])
        );
        assert_eq!(
            parse_op(r#"{"op":"watch","symbol":"btcusdt","above":"95000.50"}"#).unwrap(),
            Op::Watch {
                key: InstrumentKey::parse("spot:BTCUSDT").unwrap(),
                direction: Direction::Above,
                threshold: "95000.50".parse().unwrap()
            }
        );
        assert_eq!(
            parse_op(r#"{"op":"watch","symbol":"BTCUSDT","market":"usdm","below":"1"}"#).unwrap(),
            Op::Watch {
                key: InstrumentKey::parse("usdm:BTCUSDT").unwrap(),
                direction: Direction::Below,
                threshold: Decimal::ONE
            }
        );
        assert_eq!(
            parse_op(r#"{"op":"unwatch","id":3}"#).unwrap(),
            Op::Unwatch(Unwatch::Id(3))
        );
        assert_eq!(
            parse_op(r#"{"op":"unwatch","symbol":"ethusdt"}"#).unwrap(),
            Op::Unwatch(Unwatch::Instrument(
                InstrumentKey::parse("spot:ETHUSDT").unwrap()
            ))
        );
        assert_eq!(parse_op(r#"{"op":"list"}"#).unwrap(), Op::List);
        assert_eq!(
            parse_op(r#"{"op":"auth","token":"x.y.z"}"#).unwrap(),
            Op::Auth("x.y.z".into())
        );
        let err = |s: &str| parse_op(s).unwrap_err();
        assert_eq!(err("not json").code, "bad_request");
        assert_eq!(err("[]").code, "bad_request");
        assert_eq!(err("{}").message, "missing \"op\"");
        assert_eq!(err(r#"{"op":"dance"}"#).code, "unknown_op");
        assert_eq!(err(r#"{"op":"subscribe"}"#).code, "bad_request");
        assert_eq!(
            err(r#"{"op":"subscribe","channels":[]}"#).code,
            "bad_request"
        );
        assert!(
            err(r#"{"op":"list","token":"x"}"#)
                .message
                .contains("token")
        );
        assert!(
            err(r#"{"op":"subscribe","channels":["a"],"x":1}"#)
                .message
                .contains("unknown field")
        );
        // Thresholds: strings only, positive, plain decimals.
        assert_eq!(
            err(r#"{"op":"watch","symbol":"BTCUSDT","above":95000}"#).code,
            "bad_request"
        );
        for t in [
            "-1",
            "0",
            "1e5",
            " 1",
            "",
            "1.2.3",
            "NaN",
            "99999999999999999999999999999999",
        ] {
            let m = format!(r#"{{"op":"watch","symbol":"BTCUSDT","above":"{t}"}}"#);
            assert_eq!(err(&m).code, "bad_request", "{t}");
        }
        assert_eq!(
            err(r#"{"op":"watch","symbol":"BTCUSDT","above":"1","below":"2"}"#).code,
            "bad_request"
        );
        assert_eq!(err(r#"{"op":"watch","above":"1"}"#).code, "bad_request");
        assert_eq!(err(r#"{"op":"unwatch"}"#).code, "bad_request");
        assert_eq!(
            err(r#"{"op":"unwatch","id":1,"market":"spot"}"#).code,
            "bad_request"
        );
        assert_eq!(err(r#"{"op":"auth","token":""}"#).code, "bad_request");
    }

    #[test]
    fn crossing_is_strict() {
        let t: Decimal = "100".parse().unwrap();
        assert!(Direction::Above.is_past("100.01".parse().unwrap(), t));
        assert!(!Direction::Above.is_past(t, t));
        assert!(Direction::Below.is_past("99.99".parse().unwrap(), t));
        assert!(!Direction::Below.is_past(t, t));
    }

    #[test]
    fn frames_render_as_documented() {
        let w = WatchView::new(
            1,
            &InstrumentKey::parse("spot:BTCUSDT").unwrap(),
            Direction::Above,
            "95000".parse().unwrap(),
        );
        assert_eq!(
            Reply::Watching {
                watch: &w,
                price: Some("94000.5".parse().unwrap()),
                past: false
            }
            .to_json(),
            r#"{"type":"watching","watch":{"id":1,"market":"spot","symbol":"BTCUSDT","direction":"above","threshold":"95000"},"price":"94000.5","past":false}"#
        );
        assert_eq!(
            Reply::Error {
                code: "unknown_op",
                message: "m",
                op: None,
                channel: Some("x")
            }
            .to_json(),
            r#"{"type":"error","code":"unknown_op","message":"m","channel":"x"}"#
        );
        assert_eq!(Reply::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Arbitrary bytes (as the lossy text a frame could hold) never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_op(&text);
            let _ = parse_channel(&text, &ivs());
        }

        /// Structured near-misses (valid JSON shapes with arbitrary values) never panic and
        /// either parse or give a coded error.
        #[test]
        fn json_shaped_input_never_panics(
            op in "(subscribe|unsubscribe|auth|watch|unwatch|list|ping|[a-z]{0,8})",
            field in "(channels|token|symbol|market|above|below|id|[a-z]{0,6})",
            value in prop_oneof![
                Just("null".to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| format!("{n:?}")),
                "[ -~]{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                proptest::collection::vec("[ -~]{0,20}", 0..4)
                    .prop_map(|v| serde_json::to_string(&v).unwrap()),
            ],
        ) {
            let text = format!(r#"{{"op":"{op}","{field}":{value}}}"#);
            match parse_op(&text) {
                Ok(Op::Subscribe(chs)) | Ok(Op::Unsubscribe(chs)) => {
                    for c in chs { let _ = parse_channel(&c, &ivs()); }
                }
                Ok(_) => {}
                Err(e) => prop_assert!(!e.code.is_empty() && !e.message.is_empty()),
            }
        }

        /// Any channel string of the right alphabet parses or is refused, never panics, and a
        /// parsed one round-trips through its canonical name.
        #[test]
        fn channel_names_round_trip(s in "[a-zA-Z0-9:_.-]{0,70}") {
            if let Ok(c) = parse_channel(&s, &ivs()) {
                prop_assert_eq!(parse_channel(&c.name(), &ivs()).unwrap(), c);
            }
        }
    }
}
