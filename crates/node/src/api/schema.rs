//! Input formats shared by several routes, each as an OpenAPI component next to the check the
//! handlers run, so the document states exactly what a handler enforces: a value the schema
//! allows is never refused as malformed (400/422), and a value it forbids always is.
//! `tests/api_contract.rs` holds the two to each other with schemathesis.
//!
//! - [`SymbolFmt`]: an exchange symbol, any case ([`pricefeed_domain::instrument::Symbol`]).
//! - [`TimeMs`]: a time parameter, ms since the epoch, between [`EARLIEST_TRADE_MS`] and
//!   [`LATEST_TIME_MS`] ([`time_param`]).
//! - [`VwapInterval`]: one of the configured VWAP intervals; the list is the node's
//!   configuration, written into the document by [`with_vwap_intervals`].
//! - [`CandleInterval`]: a candle length.
//! - Decimal strings ([`decimal`], [`positive_pattern`], [`hysteresis_pattern`]): the alert
//!   thresholds, whose value ranges are written as patterns because JSON Schema has no bounds for
//!   numbers carried in strings.

use std::borrow::Cow;

use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::Symbol;
use pricefeed_domain::trade::EARLIEST_TRADE_MS;
use rust_decimal::Decimal;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::error::{ApiError, ApiResult};

/// The symbol format of [`pricefeed_domain::instrument::Symbol::parse`].
pub const SYMBOL_PATTERN: &str = "^[A-Za-z0-9_.-]{2,60}$";
/// The latest time a parameter may name: 2100-01-01T00:00:00Z.
pub const LATEST_TIME_MS: i64 = 4_102_444_800_000;

/// An exchange symbol, any case: 2 to 60 of `A-Z a-z 0-9 _ - .`.
#[derive(Debug)]
pub struct SymbolFmt;

impl PartialSchema for SymbolFmt {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(SYMBOL_PATTERN))
            .description(Some(
                "An exchange symbol, any case: 2 to 60 of A-Z, a-z, 0-9, `_`, `-`, `.`",
            ))
            .examples(["BTCUSDT"])
            .into()
    }
}

impl ToSchema for SymbolFmt {
    fn name() -> Cow<'static, str> {
        "Symbol".into()
    }
}

/// Checks a [`SymbolFmt`] parameter named `param` (400 when malformed).
pub fn symbol_param(param: &str, v: Option<&str>) -> ApiResult<Option<Symbol>> {
    v.map(|s| Symbol::parse(s).map_err(|e| ApiError::param(param, e.to_string())))
        .transpose()
}

/// A time in ms since the epoch, from 2010-01-01 to 2100-01-01.
#[derive(Debug)]
pub struct TimeMs;

impl PartialSchema for TimeMs {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(EARLIEST_TRADE_MS))
            .maximum(Some(LATEST_TIME_MS))
            .description(Some(
                "Milliseconds since the epoch, from 2010-01-01 to 2100-01-01",
            ))
            .examples([1_796_140_800_000_i64])
            .into()
    }
}

impl ToSchema for TimeMs {
    fn name() -> Cow<'static, str> {
        "TimeMs".into()
    }
}

/// Checks a [`TimeMs`] parameter named `param` (400 outside its range).
pub fn time_param(param: &str, v: Option<i64>) -> ApiResult<Option<i64>> {
    match v {
        Some(t) if !(EARLIEST_TRADE_MS..=LATEST_TIME_MS).contains(&t) => Err(ApiError::param(
            param,
            format!(
                "{param} must be a time in ms between {EARLIEST_TRADE_MS} (2010) and {LATEST_TIME_MS} (2100)"
            ),
        )),
        v => Ok(v),
    }
}

/// The intervals of `GET /vwap/...` before [`with_vwap_intervals`] writes the configured ones.
const DEFAULT_VWAP_INTERVALS: [&str; 4] = ["1m", "5m", "15m", "1h"];

/// One of the configured VWAP intervals.
#[derive(Debug)]
pub struct VwapInterval;

impl PartialSchema for VwapInterval {
    fn schema() -> RefOr<Schema> {
        vwap_interval_schema(DEFAULT_VWAP_INTERVALS.iter().map(|s| s.to_string()))
    }
}

impl ToSchema for VwapInterval {
    fn name() -> Cow<'static, str> {
        "VwapInterval".into()
    }
}

fn vwap_interval_schema(names: impl IntoIterator<Item = String>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some("A VWAP interval this cluster computes"))
        .into()
}

/// Writes the configured VWAP intervals into the `VwapInterval` component of `spec`.
pub fn with_vwap_intervals(spec: &mut OpenApi, intervals: &[Span]) {
    if let Some(c) = spec.components.as_mut() {
        c.schemas.insert(
            VwapInterval::name().into_owned(),
            vwap_interval_schema(intervals.iter().map(ToString::to_string)),
        );
    }
}

/// Adds the answers of the request limits ([`super::limits`]) to every operation of `spec`: a
/// 429 with `Retry-After` everywhere (the per-address limit covers every route), and a 413 on
/// operations that take a body (`node.limits.max_body_bytes`). An operation that documents its
/// own 429 (the login and registration limits) keeps its description.
pub fn with_limit_responses(spec: &mut OpenApi) {
    use utoipa::openapi::ContentBuilder;
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::response::ResponseBuilder;

    let problem = || ContentBuilder::new().build();
    let too_many = ResponseBuilder::new()
        .description(
            "Too many requests from this client address or user (`node.limits`); \
             `Retry-After` says how many seconds to wait",
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        )
        .content("application/problem+json", problem())
        .build();
    let too_large = ResponseBuilder::new()
        .description("The request body is larger than `node.limits.max_body_bytes`")
        .content("application/problem+json", problem())
        .build();
    for item in spec.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let r = &mut op.responses.responses;
            r.entry("429".into())
                .or_insert_with(|| too_many.clone().into());
            if op.request_body.is_some() {
                r.entry("413".into())
                    .or_insert_with(|| too_large.clone().into());
            }
        }
    }
}

/// The candle lengths of `GET /prices/{symbol}/history`.
pub const CANDLE_INTERVALS: [&str; 6] = ["1m", "5m", "15m", "1h", "4h", "1d"];

/// A candle length.
#[derive(Debug)]
pub struct CandleInterval;

impl PartialSchema for CandleInterval {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(CANDLE_INTERVALS))
            .into()
    }
}

impl ToSchema for CandleInterval {
    fn name() -> Cow<'static, str> {
        "CandleInterval".into()
    }
}

/// Most integer digits of a decimal input.
const INT_DIGITS: usize = 16;
/// Most fraction digits of a decimal input (with [`INT_DIGITS`], within `Decimal`'s 28).
const FRAC_DIGITS: usize = 12;

/// Parses a decimal input: digits without a sign, exponent or leading zeros, at most
/// [`INT_DIGITS`] before the point and [`FRAC_DIGITS`] after it (`95000`, `0.5`, `1.25`). The
/// patterns below describe subsets of exactly this format.
pub fn decimal(s: &str) -> Option<Decimal> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let int_ok = !int.is_empty()
        && int.len() <= INT_DIGITS
        && digits(int)
        && (int == "0" || !int.starts_with('0'));
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.len() <= FRAC_DIGITS && digits(f));
    if !(int_ok && frac_ok) {
        return None;
    }
    s.parse().ok()
}

/// The fraction part `\.d…` of the [`decimal`] format.
fn frac() -> String {
    format!(r"(?:\.[0-9]{{1,{FRAC_DIGITS}}})?")
}

/// `0.…` with at least one non-zero digit among at most [`FRAC_DIGITS`] fraction digits.
fn below_one() -> String {
    let alts: Vec<String> = (0..FRAC_DIGITS)
        .map(|zeros| {
            let lead = if zeros == 0 {
                String::new()
            } else {
                format!("0{{{zeros}}}")
            };
            let rest = FRAC_DIGITS - 1 - zeros;
            if rest == 0 {
                format!("{lead}[1-9]")
            } else {
                format!("{lead}[1-9][0-9]{{0,{rest}}}")
            }
        })
        .collect();
    format!(r"0\.(?:{})", alts.join("|"))
}

/// Pattern of a [`decimal`] greater than zero and, with `max_pow10 = Some(n)`, at most `10^n`.
pub fn positive_pattern(max_pow10: Option<u32>) -> String {
    let ones = match max_pow10 {
        None => format!("[1-9][0-9]{{0,{}}}{}", INT_DIGITS - 1, frac()),
        Some(n) => {
            let top = format!("1{}", "0".repeat(n as usize));
            let below = if n <= 1 {
                format!("[1-9]{}", frac())
            } else {
                format!("[1-9][0-9]{{0,{}}}{}", n - 1, frac())
            };
            format!(r"{top}(?:\.0{{1,{FRAC_DIGITS}}})?|{below}")
        }
    };
    format!("^(?:{ones}|{})$", below_one())
}

/// Pattern of a [`decimal`] from 0 to 50 (the re-arm hysteresis, percent).
pub fn hysteresis_pattern() -> String {
    format!(
        r"^(?:50(?:\.0{{1,{FRAC_DIGITS}}})?|[1-4][0-9]{f}|[0-9]{f})$",
        f = frac()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_format_is_strict() {
        for ok in [
            "0",
            "5",
            "95000",
            "0.5",
            "1.25",
            "1234567890123456.123456789012",
        ] {
            assert!(decimal(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "5.",
            ".5",
            "-1",
            "+1",
            "01",
            "1e5",
            "1_000",
            " 1",
            "1.2.3",
            "12345678901234567",
            "0.1234567890123",
        ] {
            assert!(decimal(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn time_param_bounds() {
        assert!(time_param("at", Some(EARLIEST_TRADE_MS)).is_ok());
        assert!(time_param("at", Some(LATEST_TIME_MS)).is_ok());
        assert!(time_param("at", Some(EARLIEST_TRADE_MS - 1)).is_err());
        assert!(time_param("at", Some(i64::MIN)).is_err());
        assert!(time_param("at", None).is_ok());
    }
}
