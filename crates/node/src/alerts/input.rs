//! The request bodies of the alert routes ([`NewAlert`], [`AlertPatch`]), their OpenAPI schemas
//! and the checks that hold a body to them.
//!
//! A new alert's body is complete, so every rule about it is in its schema: one branch per kind
//! of condition (`oneOf`), each saying which of `interval`/`window` it needs and how large its
//! threshold may be. A body the schema refuses is a 422 naming the field; one it accepts is
//! never refused as malformed. A patch is merged into the stored alert first, so whether e.g.
//! `interval` fits depends on the alert's condition: fields are checked against the schema
//! (422), and a merged alert that breaks a rule is a 409 (the patch conflicts with the alert as
//! it is).
//!
//! Decimals (`threshold`, `hysteresis_pct`) are strings in the format of
//! [`crate::api::schema::decimal`]; their ranges are patterns generated from the same limits the
//! domain checks ([`pricefeed_domain::alert`]).

use std::borrow::Cow;

use pricefeed_domain::alert::{Kind, Rearm};
use pricefeed_domain::bucket::Span;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use crate::api::error::{ApiError, ApiResult};
use crate::api::schema::{
    SYMBOL_PATTERN, VwapInterval, decimal, hysteresis_pattern, positive_pattern,
};
use pricefeed_store::alerts::CHANNELS;

/// `move_pct` thresholds are at most 10^3 percent, `zscore` thresholds at most 10^2 σ (the
/// limits of [`pricefeed_domain::alert::Condition::validate`]).
const MOVE_PCT_MAX_POW10: u32 = 3;
const ZSCORE_MAX_POW10: u32 = 2;
/// Longest note, characters.
pub const NOTE_MAX: usize = 200;
/// A `move_pct` window: whole minutes or hours from 1m to 1d (`1440m`, `24h` and `1d` alike).
const WINDOW_PATTERN: &str = "^(?:(?:[1-9]|[1-9][0-9]|[1-9][0-9]{2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m|(?:[1-9]|1[0-9]|2[0-4])h|1d)$";

/// Re-arming after a firing, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RearmInput {
    #[serde(deserialize_with = "json_integer")]
    pub cooldown_ms: u64,
    pub hysteresis_pct: String,
}

/// A JSON integer as JSON Schema counts them: `600000` and `600000.0` alike.
fn json_integer<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number of ms, got {n}")))
}

/// A new alert, as sent (`POST /alerts`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAlert {
    pub symbol: String,
    pub market: Option<String>,
    pub condition: Kind,
    pub threshold: String,
    pub interval: Option<String>,
    pub window: Option<String>,
    pub channels: Option<Vec<String>>,
    pub rearm: Option<RearmInput>,
    pub note: Option<String>,
}

fn double<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Changes to an alert, as sent (`PATCH /alerts/{id}`): an absent field stays as it is; `null`
/// clears `interval`, `window`, `rearm` and `note` and leaves the others as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertPatch {
    pub condition: Option<Kind>,
    pub threshold: Option<String>,
    #[serde(default, deserialize_with = "double")]
    pub interval: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    pub window: Option<Option<String>>,
    pub channels: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double")]
    pub rearm: Option<Option<RearmInput>>,
    #[serde(default, deserialize_with = "double")]
    pub note: Option<Option<String>>,
    pub status: Option<String>,
}

/// A threshold: a [`decimal`] above zero (422 `threshold` otherwise). Per-kind maxima are the
/// domain's ([`pricefeed_domain::alert::Condition::validate`]).
pub fn threshold(raw: &str) -> ApiResult<Decimal> {
    decimal(raw).filter(|d| *d > Decimal::ZERO).ok_or_else(|| {
        ApiError::field(
            "threshold",
            "must be a positive decimal string such as \"95000\" or \"0.5\" (no sign or exponent, at most 12 decimals)",
        )
    })
}

/// A VWAP interval: exactly one of the configured names (422 `interval` otherwise).
pub fn interval(raw: &str, configured: &[Span]) -> ApiResult<Span> {
    configured
        .iter()
        .find(|s| s.to_string() == raw)
        .copied()
        .ok_or_else(|| {
            let names: Vec<String> = configured.iter().map(ToString::to_string).collect();
            ApiError::field("interval", format!("must be one of {}", names.join(", ")))
        })
}

/// A `move_pct` window: [`WINDOW_PATTERN`] (422 `window` otherwise).
pub fn window(raw: &str) -> ApiResult<Span> {
    let bad = || {
        ApiError::field(
            "window",
            "must be whole minutes or hours from 1m to 1d, e.g. 15m",
        )
    };
    // By suffix, not by byte offset: the last byte of `raw` may sit inside a multi-byte
    // character (a byte-offset split of "Ê" panicked the handler).
    let num = raw.strip_suffix(['m', 'h', 'd']).ok_or_else(bad)?;
    if num.is_empty() || num.starts_with('0') || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let span: Span = raw.parse().map_err(|_| bad())?;
    if span.ms() < Span::MINUTE.ms() || span.ms() > Span::DAY.ms() {
        return Err(bad());
    }
    Ok(span)
}

/// Re-arming: cooldown 1 s to 30 days, hysteresis a [`decimal`] from 0 to 50 (422 naming the
/// field otherwise).
pub fn rearm(r: RearmInput) -> ApiResult<Rearm> {
    let hysteresis_pct = decimal(&r.hysteresis_pct).ok_or_else(|| {
        ApiError::field(
            "rearm.hysteresis_pct",
            "must be a decimal string from 0 to 50",
        )
    })?;
    let rearm = Rearm {
        cooldown_ms: r.cooldown_ms,
        hysteresis_pct,
    };
    rearm
        .validate()
        .map_err(|e| ApiError::field(e.field, e.msg))?;
    Ok(rearm)
}

/// Channels: one or both of [`CHANNELS`] (a repeated one counts once), sorted.
pub fn channels(c: Vec<String>) -> ApiResult<Vec<String>> {
    if c.is_empty() || c.len() > 2 || c.iter().any(|c| !CHANNELS.contains(&c.as_str())) {
        return Err(ApiError::field(
            "channels",
            "one or both of email, websocket",
        ));
    }
    let mut c = c;
    c.sort();
    c.dedup();
    Ok(c)
}

/// A note: at most [`NOTE_MAX`] characters, none of them NUL (Postgres text cannot hold it).
pub fn note(n: &str) -> ApiResult<()> {
    if n.chars().count() > NOTE_MAX || n.contains('\0') {
        return Err(ApiError::field(
            "note",
            format!("at most {NOTE_MAX} characters, none of them NUL"),
        ));
    }
    Ok(())
}

/// A patch's status: `active` or `paused`.
pub fn status(s: &str) -> ApiResult<()> {
    if matches!(s, "active" | "paused") {
        Ok(())
    } else {
        Err(ApiError::field("status", "active or paused"))
    }
}

fn schema_of(v: Value) -> RefOr<Schema> {
    RefOr::T(serde_json::from_value(v).expect("alert body schemas are valid schema objects"))
}

fn vwap_interval_ref() -> Value {
    json!({"$ref": format!("#/components/schemas/{}", VwapInterval::name())})
}

/// The properties every new alert has, whatever its condition.
fn common_properties() -> serde_json::Map<String, Value> {
    let mut p = serde_json::Map::new();
    p.insert(
        "symbol".into(),
        json!({"type": "string", "pattern": SYMBOL_PATTERN, "examples": ["BTCUSDT"]}),
    );
    p.insert(
        "market".into(),
        json!({"type": ["string", "null"], "enum": ["spot", "usdm", "options", null],
               "description": "`spot` (default), `usdm` or `options`"}),
    );
    p.insert(
        "channels".into(),
        json!({"type": ["array", "null"], "minItems": 1, "maxItems": 2,
               "items": {"type": "string", "enum": CHANNELS},
               "description": "Any of `email`, `websocket` (default both)"}),
    );
    p.insert("rearm".into(), rearm_schema());
    p.insert(
        "note".into(),
        json!({"type": ["string", "null"], "maxLength": NOTE_MAX, "pattern": "^[^\\u0000]*$",
               "description": "Shown in the email"}),
    );
    p
}

fn rearm_schema() -> Value {
    json!({
        "type": ["object", "null"],
        "description": "Re-arm after a firing (omit or null for a one-shot alert)",
        "properties": {
            "cooldown_ms": {"type": "integer", "format": "int64", "minimum": 1000, "maximum": 2_592_000_000_u64,
                            "description": "At least this long between two firings, ms (1 s to 30 days)",
                            "examples": [600_000]},
            "hysteresis_pct": {"type": "string", "pattern": hysteresis_pattern(),
                               "description": "The watched value must first go back past the threshold by this percentage (0-50)",
                               "examples": ["0.5"]},
        },
        "required": ["cooldown_ms", "hysteresis_pct"],
        "additionalProperties": false,
    })
}

/// One branch of [`NewAlert`]'s schema: `kinds`, their threshold pattern, and what
/// `interval`/`window` must be (`None`: absent or null).
fn branch(
    title: &str,
    kinds: &[&str],
    threshold: String,
    threshold_doc: &str,
    interval: Option<Value>,
    window: Option<Value>,
) -> Value {
    let mut props = common_properties();
    props.insert("condition".into(), json!({"type": "string", "enum": kinds}));
    props.insert(
        "threshold".into(),
        json!({"type": "string", "pattern": threshold, "description": threshold_doc, "examples": ["95000"]}),
    );
    let mut required = vec!["symbol", "condition", "threshold"];
    let null = json!({"type": "null"});
    if interval.is_some() {
        required.push("interval");
    }
    if window.is_some() {
        required.push("window");
    }
    props.insert("interval".into(), interval.unwrap_or_else(|| null.clone()));
    props.insert("window".into(), window.unwrap_or(null));
    json!({
        "title": title,
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

impl PartialSchema for NewAlert {
    fn schema() -> RefOr<Schema> {
        let window = json!({"type": "string", "pattern": WINDOW_PATTERN, "examples": ["15m"],
                            "description": "The window the move is measured in"});
        schema_of(json!({
            "description": "A new alert. `condition` decides which other fields it takes: \
                            `above`, `below`, `crosses_up`, `crosses_down` watch the last price; \
                            `vwap_above`, `vwap_below` the rolling VWAP of `interval`; \
                            `move_pct` a move of at least `threshold` % within `window`; \
                            `zscore` the price at least `threshold` σ from its 24 h mean.",
            "oneOf": [
                branch("price", &["above", "below", "crosses_up", "crosses_down"],
                       positive_pattern(None), "Price level", None, None),
                branch("vwap", &["vwap_above", "vwap_below"],
                       positive_pattern(None), "VWAP level", Some(vwap_interval_ref()), None),
                branch("move", &["move_pct"],
                       positive_pattern(Some(MOVE_PCT_MAX_POW10)), "Percent, above 0 and at most 1000", None, Some(window)),
                branch("zscore", &["zscore"],
                       positive_pattern(Some(ZSCORE_MAX_POW10)), "k (standard deviations), above 0 and at most 100", None, None),
            ],
        }))
    }
}

impl ToSchema for NewAlert {
    fn name() -> Cow<'static, str> {
        "NewAlert".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((VwapInterval::name().into_owned(), VwapInterval::schema()));
    }
}

impl PartialSchema for AlertPatch {
    fn schema() -> RefOr<Schema> {
        let mut props = common_properties();
        props.remove("symbol");
        props.remove("market");
        props.insert(
            "condition".into(),
            json!({"type": ["string", "null"],
                   "enum": ["above", "below", "crosses_up", "crosses_down", "vwap_above", "vwap_below", "move_pct", "zscore", null]}),
        );
        props.insert(
            "threshold".into(),
            json!({"type": ["string", "null"], "pattern": positive_pattern(None)}),
        );
        props.insert(
            "interval".into(),
            json!({"anyOf": [vwap_interval_ref(), {"type": "null"}]}),
        );
        props.insert(
            "window".into(),
            json!({"type": ["string", "null"], "pattern": WINDOW_PATTERN}),
        );
        props.insert(
            "status".into(),
            json!({"type": ["string", "null"], "enum": ["active", "paused", null]}),
        );
        schema_of(json!({
            "description": "Changes to an alert; omitted fields stay as they are (`null` clears `interval`, \
                            `window`, `rearm` and `note`). Any change re-arms the alert. A change that does \
                            not fit the alert's other fields (e.g. an `interval` on a price condition, a \
                            `move_pct` threshold above 1000) is a 409.",
            "type": "object",
            "properties": props,
            "additionalProperties": false,
        }))
    }
}

impl ToSchema for AlertPatch {
    fn name() -> Cow<'static, str> {
        "AlertPatch".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((VwapInterval::name().into_owned(), VwapInterval::schema()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_whole_minutes_to_a_day() {
        for ok in ["1m", "15m", "1440m", "1h", "24h", "1d", "90m"] {
            assert!(window(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "m", "0m", "01m", "60s", "1441m", "25h", "2d", "1w", "-1m", "1.5h", "Ê", "1Ê",
        ] {
            assert!(window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds_are_positive_decimals() {
        assert_eq!(threshold("95000").unwrap(), Decimal::from(95_000));
        for bad in ["0", "0.0", "-5", "abc", "1e3", " 1"] {
            assert!(threshold(bad).is_err(), "{bad}");
        }
    }
}
