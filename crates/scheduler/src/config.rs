//! Typed configuration of the scheduler binary (sections `scheduler`, `worker`, `database`,
//! `redis`, `broker`, `telemetry`, `shutdown`).

use pricefeed_runtime::config::{
    BrokerConfig, ConfigError, DatabaseConfig, HttpConfig, RedisConfig, ShutdownConfig,
    TelemetryConfig, Validate,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerConfig {
    pub scheduler: RoleSection,
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

impl Validate for SchedulerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.scheduler.http.validate("scheduler.http")?;
        self.worker.http.validate("worker.http")?;
        self.database.validate()?;
        self.redis.validate()?;
        self.broker.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()
    }
}
