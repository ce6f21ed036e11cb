//! Typed configuration of the scheduler binary (sections `scheduler`, `worker`, `email`,
//! `reconcile`, `vwap`, `retention`, `database`, `redis`, `broker`, `telemetry`, `shutdown`).

use pricefeed_runtime::config::{
    BrokerConfig, ConfigError, DatabaseConfig, HttpConfig, RedisConfig, ShutdownConfig,
    TelemetryConfig, Validate,
};
use pricefeed_store::history::{RetentionConfig, VwapConfig};
use serde::{Deserialize, Serialize};

use crate::email::config::EmailConfig;
use crate::reconcile::ReconcileConfig;
use crate::worker::WorkerSection;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SchedulerConfig {
    pub scheduler: SchedulerSection,
    pub worker: WorkerSection,
    /// `[email]`: SMTP relay and retry policy of alert emails (worker jobs).
    #[serde(default)]
    pub email: EmailConfig,
    /// `[reconcile]`: REST reconciliation (worker jobs).
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// `[vwap]`: intervals and the cadence of stored VWAP history (shared with the nodes).
    #[serde(default)]
    pub vwap: VwapConfig,
    /// `[retention]`: partitions kept per history table (enforced by the leader).
    #[serde(default)]
    pub retention: RetentionConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub broker: BrokerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// `[scheduler]`: the leader-elected role.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// Ops listener (`/livez`, `/readyz`, `/metrics`).
    pub http: HttpConfig,
    /// Lease time to live: how long a dead leader blocks takeover.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How often the leader renews, and a standby retries, the lease.
    #[serde(default = "default_lease_renew_ms")]
    pub lease_renew_ms: u64,
    /// How often the leader recomputes and (when it changed) publishes the slice assignment.
    #[serde(default = "default_rebalance_ms")]
    pub rebalance_ms: u64,
    /// A node silent for longer than this is dead and loses its slice.
    #[serde(default = "default_node_dead_after_ms")]
    pub node_dead_after_ms: u64,
    /// Period of the underlying (spot pair) sync.
    #[serde(default = "default_sync_underlyings_ms")]
    pub sync_underlyings_ms: u64,
    /// Period of the derivative (USD-M futures and options) sync.
    #[serde(default = "default_sync_derivatives_ms")]
    pub sync_derivatives_ms: u64,
    /// How often the leader reads every live node's feed-health hash.
    #[serde(default = "default_feed_check_ms")]
    pub feed_check_ms: u64,
    /// A feed connection silent for longer than this gets a reconnect order (and at most one
    /// order per connection per this period).
    #[serde(default = "default_feed_stale_after_ms")]
    pub feed_stale_after_ms: u64,
}

fn default_lease_ttl_ms() -> u64 {
    3_000
}
fn default_lease_renew_ms() -> u64 {
    1_000
}
fn default_rebalance_ms() -> u64 {
    500
}
fn default_node_dead_after_ms() -> u64 {
    3_000
}
fn default_sync_underlyings_ms() -> u64 {
    300_000
}
fn default_sync_derivatives_ms() -> u64 {
    60_000
}
fn default_feed_check_ms() -> u64 {
    1_000
}
fn default_feed_stale_after_ms() -> u64 {
    10_000
}

impl SchedulerSection {
    fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate("scheduler.http")?;
        if !(100..=60_000).contains(&self.lease_ttl_ms) {
            return Err(ConfigError::key(
                "scheduler.lease_ttl_ms",
                "must be between 100 and 60000",
            ));
        }
        // Renewing at most every half TTL leaves room for one slow round trip before expiry.
        if self.lease_renew_ms == 0 || self.lease_renew_ms * 2 > self.lease_ttl_ms {
            return Err(ConfigError::key(
                "scheduler.lease_renew_ms",
                "must be at least 1 and at most half of scheduler.lease_ttl_ms",
            ));
        }
        if !(50..=60_000).contains(&self.rebalance_ms) {
            return Err(ConfigError::key(
                "scheduler.rebalance_ms",
                "must be between 50 and 60000",
            ));
        }
        if !(200..=600_000).contains(&self.node_dead_after_ms) {
            return Err(ConfigError::key(
                "scheduler.node_dead_after_ms",
                "must be between 200 and 600000",
            ));
        }
        // The lower bound keeps a misconfiguration from turning sync into a request flood
        // (exchangeInfo weighs 20 on spot); the upper bound is a day.
        for (key, v) in [
            ("scheduler.sync_underlyings_ms", self.sync_underlyings_ms),
            ("scheduler.sync_derivatives_ms", self.sync_derivatives_ms),
        ] {
            if !(200..=86_400_000).contains(&v) {
                return Err(ConfigError::key(key, "must be between 200 and 86400000"));
            }
        }
        if !(100..=60_000).contains(&self.feed_check_ms) {
            return Err(ConfigError::key(
                "scheduler.feed_check_ms",
                "must be between 100 and 60000",
            ));
        }
        // Nodes rewrite their feed hash every second: a threshold under 1 s would call healthy
        // connections stale between two rewrites. It must also outlast one check period, or a
        // connection could be ordered before a check could have seen it fresh.
        if !(1_000..=3_600_000).contains(&self.feed_stale_after_ms)
            || self.feed_stale_after_ms < self.feed_check_ms
        {
            return Err(ConfigError::key(
                "scheduler.feed_stale_after_ms",
                "must be between 1000 and 3600000 and at least scheduler.feed_check_ms",
            ));
        }
        Ok(())
    }
}

impl Validate for SchedulerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.scheduler.validate()?;
        self.worker.validate()?;
        self.email.validate(self.worker.lease_ms)?;
        self.reconcile.validate()?;
        self.vwap.validate()?;
        self.retention.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.broker.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()
    }
}

impl pricefeed_runtime::cli::BinaryConfig for SchedulerConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: serde_json::Value) -> SchedulerSection {
        let mut v = serde_json::json!({"http": {"bind": "127.0.0.1:0"}});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn bad_key(s: &SchedulerSection) -> Option<String> {
        match s.validate() {
            Err(ConfigError::Key { key, .. }) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn feed_health_keys_default_and_validate_by_name() {
        let s = section(serde_json::json!({}));
        assert_eq!((s.feed_check_ms, s.feed_stale_after_ms), (1_000, 10_000));
        assert_eq!(bad_key(&s), None);
        for (extra, key) in [
            (
                serde_json::json!({"feed_stale_after_ms": 500}),
                "scheduler.feed_stale_after_ms",
            ),
            (
                serde_json::json!({"feed_check_ms": 5000, "feed_stale_after_ms": 2000}),
                "scheduler.feed_stale_after_ms",
            ),
            (
                serde_json::json!({"feed_check_ms": 0}),
                "scheduler.feed_check_ms",
            ),
        ] {
            assert_eq!(
                bad_key(&section(extra.clone())).as_deref(),
                Some(key),
                "{extra}"
            );
        }
    }
}
