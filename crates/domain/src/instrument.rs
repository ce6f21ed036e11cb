//! Instruments: underlyings (spot pairs) and derivatives linked to them.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// An exchange symbol in canonical upper case (`BTCUSDT`, `BTCUSDT_261225`, `BTC-261225-90000-C`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Symbol(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid symbol {0:?}: expected 2-60 characters of A-Z, 0-9, '_', '-', '.'")]
pub struct InvalidSymbol(pub String);

impl Symbol {
    /// Accepts any case and normalises to upper case, as clients type `btcusdt`.
    pub fn parse(s: &str) -> Result<Self, InvalidSymbol> {
        let ok = (2..=60).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(InvalidSymbol(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Symbol {
    type Error = InvalidSymbol;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Symbol> for String {
    fn from(s: Symbol) -> String {
        s.0
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a derivative is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DerivativeKind {
    Perpetual,
    Future,
    Option,
}

impl DerivativeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Perpetual => "perpetual",
            Self::Future => "future",
            Self::Option => "option",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "perpetual" => Some(Self::Perpetual),
            "future" => Some(Self::Future),
            "option" => Some(Self::Option),
            _ => None,
        }
    }
}

/// Broker status strings that mean "trades flow". Anything else, including values the broker adds
/// later, is treated as not tradable so we never subscribe to a dead stream by accident.
pub fn is_tradable_status(status: &str) -> bool {
    status == "TRADING"
}

/// A spot pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Underlying {
    pub symbol: Symbol,
    pub base_asset: String,
    pub quote_asset: String,
    pub status: String,
    pub tick_size: Option<Decimal>,
    pub step_size: Option<Decimal>,
}

/// A future, perpetual or option on an underlying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derivative {
    pub symbol: Symbol,
    pub underlying: Symbol,
    pub kind: DerivativeKind,
    /// `usdm` or `options`.
    pub market: String,
    pub contract_type: Option<String>,
    /// Expiry in ms since the epoch; `None` for perpetuals.
    pub expiry_ms: Option<i64>,
    pub strike: Option<Decimal>,
    /// `CALL` or `PUT` for options.
    pub option_side: Option<String>,
    pub status: String,
    pub tick_size: Option<Decimal>,
    pub step_size: Option<Decimal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_normalises_and_rejects() {
        assert_eq!(Symbol::parse("btcusdt").unwrap().as_str(), "BTCUSDT");
        assert_eq!(
            Symbol::parse("BTC-261225-90000-C").unwrap().as_str(),
            "BTC-261225-90000-C"
        );
        assert!(Symbol::parse("B").is_err());
        assert!(Symbol::parse("BTC USDT").is_err());
        assert!(Symbol::parse("BTC/USDT").is_err());
        assert!(Symbol::parse(&"A".repeat(61)).is_err());
        let s: Result<Symbol, _> = serde_json::from_str("\"eth'usdt\"");
        assert!(s.is_err());
    }

    #[test]
    fn unknown_status_is_not_tradable() {
        assert!(is_tradable_status("TRADING"));
        for s in [
            "HALT",
            "BREAK",
            "END_OF_DAY",
            "CANCEL_ONLY",
            "SOMETHING_NEW",
        ] {
            assert!(!is_tradable_status(s));
        }
    }
}
