//! Typed configuration of the API node (sections `node`, `database`, `redis`, `broker`,
//! `telemetry`, `shutdown`).

use pricefeed_runtime::config::{
    BrokerConfig, ConfigError, DatabaseConfig, HttpConfig, RedisConfig, ShutdownConfig,
    TelemetryConfig, Validate,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub broker: BrokerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Registry identity; empty means hostname plus a random suffix.
    #[serde(default)]
    pub id: String,
    pub http: HttpConfig,
    /// How often the node refreshes its registry entry.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// TTL of the registry record; the scheduler judges liveness by heartbeat age, the TTL only
    /// cleans up after nodes that vanished.
    #[serde(default = "default_registration_ttl_ms")]
    pub registration_ttl_ms: u64,
    /// How often the published assignment is re-read, as a fallback to the pub/sub notice.
    #[serde(default = "default_assignment_poll_ms")]
    pub assignment_poll_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_registration_ttl_ms() -> u64 {
    10_000
}
fn default_assignment_poll_ms() -> u64 {
    1_000
}

impl Validate for NodeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.node.id.is_empty()
            && !self
                .node
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ConfigError::key(
                "node.id",
                "may contain only letters, digits, '-', '_' and '.'",
            ));
        }
        self.node.http.validate("node.http")?;
        if !(50..=60_000).contains(&self.node.heartbeat_ms) {
            return Err(ConfigError::key(
                "node.heartbeat_ms",
                "must be between 50 and 60000",
            ));
        }
        if self.node.registration_ttl_ms < 2 * self.node.heartbeat_ms {
            return Err(ConfigError::key(
                "node.registration_ttl_ms",
                "must be at least twice node.heartbeat_ms",
            ));
        }
        if !(50..=60_000).contains(&self.node.assignment_poll_ms) {
            return Err(ConfigError::key(
                "node.assignment_poll_ms",
                "must be between 50 and 60000",
            ));
        }
        self.database.validate()?;
        self.redis.validate()?;
        self.broker.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()
    }
}

impl NodeConfig {
    /// The configured id, or `<hostname>-<6 random hex>`.
    pub fn node_id(&self) -> String {
        if !self.node.id.is_empty() {
            return self.node.id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        let suffix = &uuid_like()[..6];
        format!("{host}-{suffix}")
    }
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, RandomState};
    // RandomState is randomly keyed per process, which is all a uniqueness suffix needs.
    format!("{:016x}", RandomState::new().hash_one(std::process::id()))
}
