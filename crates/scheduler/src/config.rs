//! Typed configuration of the scheduler binary (sections `scheduler`, `worker`, `database`,
//! `redis`, `broker`, `telemetry`, `shutdown`).

use pricefeed_runtime::config::{
    BrokerConfig, ConfigError, DatabaseConfig, HttpConfig, RedisConfig, ShutdownConfig,
    TelemetryConfig, Validate,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerConfig {
    pub scheduler: SchedulerSection,
    pub worker: RoleSection,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub broker: BrokerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// Per-role settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// Ops listener (`/livez`, `/readyz`, `/metrics`).
    pub http: HttpConfig,
}

/// `[scheduler]`: the leader-elected role.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
        Ok(())
    }
}

impl Validate for SchedulerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.scheduler.validate()?;
        self.worker.http.validate("worker.http")?;
        self.database.validate()?;
        self.redis.validate()?;
        self.broker.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()
    }
}
