//! A trade as the cluster handles it, and the checks it must pass before it is counted.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::instrument::Symbol;

/// 2010-01-01T00:00:00Z. No crypto venue traded before it, so an earlier timestamp can only be a
/// unit mix-up (seconds for milliseconds) or a corrupt frame.
pub const EARLIEST_TRADE_MS: i64 = 1_262_304_000_000;

/// One executed trade of one instrument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub symbol: Symbol,
    /// Per-symbol sequence assigned by the broker; what duplicates and gaps are judged by.
    pub trade_id: u64,
    pub price: Decimal,
    pub qty: Decimal,
    /// Trade time, ms since the Unix epoch.
    pub ts_ms: i64,
    pub buyer_is_maker: bool,
}

/// Why a trade was refused. Carries the offending values so one log line explains it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TradeError {
    #[error("price {0} is not positive")]
    NonPositivePrice(Decimal),
    #[error("quantity {0} is not positive")]
    NonPositiveQty(Decimal),
    #[error("timestamp {ts_ms} is more than {max_skew_ms} ms ahead of now ({now_ms})")]
    FromTheFuture {
        ts_ms: i64,
        now_ms: i64,
        max_skew_ms: i64,
    },
    #[error("timestamp {ts_ms} is before {EARLIEST_TRADE_MS} (2010-01-01)")]
    BeforeEarliest { ts_ms: i64 },
}

impl TradeError {
    /// Stable label for metrics, so counters do not explode with the embedded values.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NonPositivePrice(_) => "non_positive_price",
            Self::NonPositiveQty(_) => "non_positive_qty",
            Self::FromTheFuture { .. } => "from_the_future",
            Self::BeforeEarliest { .. } => "before_earliest",
        }
    }
}

impl Trade {
    /// Accepts a trade whose price and quantity are positive and whose timestamp is not in the
    /// future by more than `max_skew_ms` (clock skew between us and the broker) nor before
    /// [`EARLIEST_TRADE_MS`].
    ///
    /// There is deliberately no maximum age: a trade delayed by a slow consumer, a reconnect or a
    /// REST backfill is still a real trade, and refusing it would open a gap that backfill would
    /// then fetch again. Freshness is the latest-price cache's concern (it keeps the newest
    /// `ts_ms`), not a reason to lose history. A negative `max_skew_ms` is treated as 0.
    pub fn validate(&self, now_ms: i64, max_skew_ms: i64) -> Result<(), TradeError> {
        validate_fields(self.price, self.qty, self.ts_ms, now_ms, max_skew_ms)
    }

    /// Price × quantity in the quote asset (what VWAP sums); `None` on overflow, which a validated
    /// trade from a real venue never reaches.
    pub fn quote_qty(&self) -> Option<Decimal> {
        self.price.checked_mul(self.qty)
    }
}

/// The checks of [`Trade::validate`] on bare fields, so the ingest hot path can judge a trade
/// borrowed from a frame without building a [`Trade`] (whose `Symbol` would allocate).
pub fn validate_fields(
    price: Decimal,
    qty: Decimal,
    ts_ms: i64,
    now_ms: i64,
    max_skew_ms: i64,
) -> Result<(), TradeError> {
    if price <= Decimal::ZERO {
        return Err(TradeError::NonPositivePrice(price));
    }
    if qty <= Decimal::ZERO {
        return Err(TradeError::NonPositiveQty(qty));
    }
    if ts_ms < EARLIEST_TRADE_MS {
        return Err(TradeError::BeforeEarliest { ts_ms });
    }
    let max_skew_ms = max_skew_ms.max(0);
    if ts_ms > now_ms.saturating_add(max_skew_ms) {
        return Err(TradeError::FromTheFuture {
            ts_ms,
            now_ms,
            max_skew_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    const NOW: i64 = 1_767_225_600_000; // 2026-01-01
    const SKEW: i64 = 5_000;

    fn trade(price: &str, qty: &str, ts_ms: i64) -> Trade {
        Trade {
            symbol: Symbol::parse("BTCUSDT").unwrap(),
            trade_id: 42,
            price: Decimal::from_str(price).unwrap(),
            qty: Decimal::from_str(qty).unwrap(),
            ts_ms,
            buyer_is_maker: false,
        }
    }

    #[test]
    fn accepts_a_normal_trade() {
        assert_eq!(
            trade("97000.12", "0.0015", NOW - 10).validate(NOW, SKEW),
            Ok(())
        );
        // Old trades (backfill) are fine, and so is a clock a little ahead.
        assert_eq!(
            trade("1", "1", NOW - 86_400_000 * 30).validate(NOW, SKEW),
            Ok(())
        );
        assert_eq!(trade("1", "1", NOW + SKEW).validate(NOW, SKEW), Ok(()));
        assert_eq!(
            trade("1", "1", EARLIEST_TRADE_MS).validate(NOW, SKEW),
            Ok(())
        );
        assert_eq!(
            trade("0.00000001", "0.00000001", NOW).validate(NOW, 0),
            Ok(())
        );
    }

    #[test]
    fn refuses_bad_price_and_qty_first() {
        assert_eq!(
            trade("0", "1", NOW).validate(NOW, SKEW),
            Err(TradeError::NonPositivePrice(Decimal::ZERO))
        );
        let e = trade("-1.5", "0", 0).validate(NOW, SKEW).unwrap_err();
        assert_eq!(
            e,
            TradeError::NonPositivePrice(Decimal::from_str("-1.5").unwrap())
        );
        assert_eq!(e.kind(), "non_positive_price");
        let e = trade("1", "-0.1", NOW).validate(NOW, SKEW).unwrap_err();
        assert_eq!(e.kind(), "non_positive_qty");
        assert_eq!(e.to_string(), "quantity -0.1 is not positive");
    }

    #[test]
    fn refuses_insane_timestamps() {
        assert_eq!(
            trade("1", "1", NOW + SKEW + 1).validate(NOW, SKEW),
            Err(TradeError::FromTheFuture {
                ts_ms: NOW + SKEW + 1,
                now_ms: NOW,
                max_skew_ms: SKEW
            })
        );
        // Seconds instead of milliseconds.
        let e = trade("1", "1", NOW / 1000).validate(NOW, SKEW).unwrap_err();
        assert_eq!(e, TradeError::BeforeEarliest { ts_ms: NOW / 1000 });
        assert_eq!(e.kind(), "before_earliest");
        assert!(trade("1", "1", -1).validate(NOW, SKEW).is_err());
        // Negative skew behaves as zero; huge values do not overflow.
        assert!(trade("1", "1", NOW + 1).validate(NOW, -100).is_err());
        assert_eq!(
            trade("1", "1", i64::MAX).validate(i64::MAX, i64::MAX),
            Ok(())
        );
        assert!(trade("1", "1", i64::MAX).validate(NOW, SKEW).is_err());
    }

    #[test]
    fn serde_keeps_decimals_exact() {
        let t = trade("0.10000000", "123.456", NOW);
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"price\":\"0.10000000\""), "{json}");
        assert_eq!(serde_json::from_str::<Trade>(&json).unwrap(), t);
        assert_eq!(t.quote_qty(), Some(Decimal::from_str("12.3456").unwrap()));
    }

    proptest! {
        #[test]
        fn verdict_matches_the_rules(
            price in -1_000_000i64..1_000_000, qty in -1_000_000i64..1_000_000,
            scale in 0u32..10, ts_off in -2_000_000_000_000i64..100_000, skew in -10i64..60_000
        ) {
            let t = Trade {
                symbol: Symbol::parse("ETHUSDT").unwrap(),
                trade_id: 1,
                price: Decimal::new(price, scale),
                qty: Decimal::new(qty, scale),
                ts_ms: NOW + ts_off,
                buyer_is_maker: true,
            };
            let ok = price > 0 && qty > 0 && t.ts_ms >= EARLIEST_TRADE_MS
                && ts_off <= skew.max(0);
            prop_assert_eq!(t.validate(NOW, skew).is_ok(), ok);
        }
    }
}
