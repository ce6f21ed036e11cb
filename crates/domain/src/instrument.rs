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

/// The broker market an instrument trades on. Each market is a separate venue with its own
/// WebSocket host, REST host and trade-id sequence, which is why a symbol alone does not name an
/// instrument: the USD-M perpetual `BTCUSDT` shares its spot pair's symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Market {
    Spot,
    Usdm,
    Options,
}

impl Market {
    pub const ALL: [Market; 3] = [Market::Spot, Market::Usdm, Market::Options];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spot => "spot",
            Self::Usdm => "usdm",
            Self::Options => "options",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spot" => Some(Self::Spot),
            "usdm" => Some(Self::Usdm),
            "options" => Some(Self::Options),
            _ => None,
        }
    }
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of one instrument across markets, rendered `market:SYMBOL` (`spot:BTCUSDT`,
/// `usdm:BTCUSDT`, `options:BTC-261225-90000-C`); see `docs/decisions/0005-instrument-keys.md`.
///
/// Stored as the rendered string so that ordering, hashing (slice assignment) and Redis hash
/// fields all use the same bytes without re-formatting; the market prefix is re-parsed on demand
/// (a few byte compares).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstrumentKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instrument key {0:?}: expected `spot|usdm|options:SYMBOL`")]
pub struct InvalidInstrumentKey(pub String);

impl InstrumentKey {
    pub fn new(market: Market, symbol: &Symbol) -> Self {
        let mut s = String::with_capacity(market.as_str().len() + 1 + symbol.as_str().len());
        s.push_str(market.as_str());
        s.push(':');
        s.push_str(symbol.as_str());
        Self(s)
    }

    /// Parses `market:SYMBOL`; the symbol part is normalised like [`Symbol::parse`].
    pub fn parse(s: &str) -> Result<Self, InvalidInstrumentKey> {
        let bad = || InvalidInstrumentKey(s.chars().take(80).collect());
        let (m, sym) = s.split_once(':').ok_or_else(bad)?;
        let market = Market::parse(m).ok_or_else(bad)?;
        let symbol = Symbol::parse(sym).map_err(|_| bad())?;
        Ok(Self::new(market, &symbol))
    }

    pub fn market(&self) -> Market {
        let (m, _) = self.0.split_once(':').expect("validated at construction");
        Market::parse(m).expect("validated at construction")
    }

    /// The exchange symbol part (`BTCUSDT`).
    pub fn symbol_str(&self) -> &str {
        self.0.split_once(':').expect("validated at construction").1
    }

    pub fn symbol(&self) -> Symbol {
        Symbol(self.symbol_str().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstrumentKey {
    type Error = InvalidInstrumentKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<InstrumentKey> for String {
    fn from(k: InstrumentKey) -> String {
        k.0
    }
}

impl fmt::Display for InstrumentKey {
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
    fn instrument_keys_render_parse_and_differ_by_market() {
        let btc = Symbol::parse("btcusdt").unwrap();
        let spot = InstrumentKey::new(Market::Spot, &btc);
        let perp = InstrumentKey::new(Market::Usdm, &btc);
        assert_eq!(spot.as_str(), "spot:BTCUSDT");
        assert_eq!(perp.as_str(), "usdm:BTCUSDT");
        assert_ne!(spot, perp);
        assert_eq!(perp.market(), Market::Usdm);
        assert_eq!(perp.symbol_str(), "BTCUSDT");
        let opt = InstrumentKey::parse("options:btc-261225-90000-c").unwrap();
        assert_eq!(opt.as_str(), "options:BTC-261225-90000-C");
        assert_eq!(opt.symbol(), Symbol::parse("BTC-261225-90000-C").unwrap());
        assert_eq!(
            serde_json::to_string(&InstrumentKey::parse("usdm:BTCUSDT_261225").unwrap()).unwrap(),
            "\"usdm:BTCUSDT_261225\""
        );
        for bad in ["BTCUSDT", "coinm:BTCUSD", "spot:", "spot:B T", ":BTCUSDT"] {
            assert!(InstrumentKey::parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<InstrumentKey>("\"futures:BTCUSDT\"").is_err());
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
