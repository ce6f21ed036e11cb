//! Config sections of trade history shared by every role: `[vwap]` (which intervals exist and
//! how often VWAP history is stored; nodes, workers and the API must agree) and `[retention]`
//! (how long each table keeps its rows; the scheduler enforces it, the API answers within it).

use pricefeed_domain::bucket::Span;
use pricefeed_runtime::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// `[vwap]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VwapConfig {
    /// Rolling VWAP intervals kept live and stored (`1m`, `5m`, `15m`, `1h`, …; at most `1d`).
    #[schemars(with = "Vec<pricefeed_runtime::config_reference::SpanText>")]
    pub intervals: Vec<Span>,
    /// The interval used when a request names none.
    #[schemars(with = "pricefeed_runtime::config_reference::SpanText")]
    pub default_interval: Span,
    /// Stored VWAP history: one point per interval at every multiple of this.
    #[schemars(with = "pricefeed_runtime::config_reference::SpanText")]
    pub history_cadence: Span,
}

impl Default for VwapConfig {
    fn default() -> Self {
        Self {
            intervals: vec![
                Span::MINUTE,
                Span::from_secs(300).expect("positive"),
                Span::from_secs(900).expect("positive"),
                Span::HOUR,
            ],
            default_interval: Span::from_secs(300).expect("positive"),
            history_cadence: Span::MINUTE,
        }
    }
}

impl Validate for VwapConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.intervals.is_empty() || self.intervals.len() > 16 {
            return Err(ConfigError::key(
                "vwap.intervals",
                "must list 1 to 16 intervals",
            ));
        }
        for iv in &self.intervals {
            if iv.secs() % 60 != 0 || iv.ms() > Span::DAY.ms() {
                return Err(ConfigError::key(
                    "vwap.intervals",
                    format!("{iv}: intervals are whole minutes, at most 1d"),
                ));
            }
        }
        if !self.intervals.contains(&self.default_interval) {
            return Err(ConfigError::key(
                "vwap.default_interval",
                "must be one of vwap.intervals",
            ));
        }
        if self.history_cadence.secs() % 60 != 0 || self.history_cadence.ms() > Span::HOUR.ms() {
            return Err(ConfigError::key(
                "vwap.history_cadence",
                "must be whole minutes, at most 1h",
            ));
        }
        Ok(())
    }
}

/// `[retention]`: days each history table keeps, enforced by the scheduler with whole-day
/// partition drops.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Raw trades.
    pub trades_days: u32,
    /// Per-second and per-minute buckets (candles and VWAP after raw trades are gone).
    pub buckets_days: u32,
    /// Stored VWAP history.
    pub vwap_history_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            trades_days: 7,
            buckets_days: 90,
            vwap_history_days: 30,
        }
    }
}

impl Validate for RetentionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (k, v) in [
            ("trades_days", self.trades_days),
            ("buckets_days", self.buckets_days),
            ("vwap_history_days", self.vwap_history_days),
        ] {
            if !(1..=3650).contains(&v) {
                return Err(ConfigError::key(
                    format!("retention.{k}"),
                    "must be between 1 and 3650",
                ));
            }
        }
        if self.buckets_days < self.trades_days {
            return Err(ConfigError::key(
                "retention.buckets_days",
                "must be at least retention.trades_days",
            ));
        }
        Ok(())
    }
}

impl RetentionConfig {
    /// Oldest time raw trades are surely still stored (whole days are dropped, so a day more).
    pub fn raw_from_ms(&self, now_ms: i64) -> i64 {
        let day = super::partitions::DAY_MS;
        (now_ms.div_euclid(day) - i64::from(self.trades_days)) * day
    }
}
