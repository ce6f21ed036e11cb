//! Typed configuration of the API node (sections `node`, `database`, `redis`, `broker`,
//! `telemetry`, `shutdown`).

use pricefeed_runtime::config::{
    BrokerConfig, ConfigError, DatabaseConfig, HttpConfig, RedisConfig, ShutdownConfig,
    TelemetryConfig, Validate,
};
use pricefeed_store::history::writer::TradesConfig;
use pricefeed_store::history::{RetentionConfig, VwapConfig};

use crate::alerts::AlertsConfig;
use crate::auth::AuthConfig;
use crate::live::LiveConfig;
use crate::stream::StreamConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub broker: BrokerConfig,
    /// `[trades]`: the history writer fed by ingestion.
    #[serde(default)]
    pub trades: TradesConfig,
    /// `[vwap]`: intervals and stored history cadence (shared with the workers).
    #[serde(default)]
    pub vwap: VwapConfig,
    /// `[retention]`: how far back raw trades and buckets exist (shared with the scheduler).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// `[auth]`: token key and lifetimes, login limits.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[alerts]`: limits and evaluation cadence.
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// `[node]`: the API node's identity, listener and cluster membership, and its subsystems.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// `[node.feed]`: the broker connector and ingest pipeline.
    #[serde(default)]
    pub feed: FeedConfig,
    /// `[node.live]`: publication of live VWAPs, statistics and rank.
    #[serde(default)]
    pub live: LiveConfig,
    /// `[node.stream]`: limits and timers of the client WebSocket.
    #[serde(default)]
    pub stream: StreamConfig,
    /// `[node.limits]`: request body size and HTTP rate limits per address and per user.
    #[serde(default)]
    pub limits: crate::api::limits::LimitsConfig,
}

/// `[node.feed]`: broker WebSocket connections, trade ingest and latest-price publishing.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Streams per connection on spot and USD-M (the exchange allows 1024).
    pub max_streams_per_conn: usize,
    /// Streams per connection on options (the options docs say 200).
    pub options_max_streams_per_conn: usize,
    /// Streams per SUBSCRIBE/UNSUBSCRIBE message (batching keeps us under the message rate).
    pub streams_per_request: usize,
    /// Outgoing messages per rolling second per connection. The exchange cuts at more than 5 and
    /// counts pongs too, so the default 4 leaves room for the automatic pong.
    pub control_msgs_per_sec: usize,
    /// No frame at all for this long (pings included), or no data for this long on a connection
    /// whose rate promised at least 10 frames in that time, replaces the connection.
    pub stall_timeout_ms: u64,
    /// How long a node keeps a stream it lost in a new assignment, so the new owner is
    /// subscribed before the old one lets go; also the longest a gained instrument waits for the
    /// previous owner's release before going live.
    pub handover_grace_ms: u64,
    /// Reconnect backoff: first delay ceiling, doubling up to the max; equal jitter.
    pub reconnect_backoff_min_ms: u64,
    /// Ceiling of the reconnect backoff.
    pub reconnect_backoff_max_ms: u64,
    /// A connection that stayed up this long resets the backoff (so does one that delivered
    /// trades).
    pub reconnect_reset_after_ms: u64,
    /// Connection attempts the node may make, all markets together, per
    /// `connect_budget_window_ms` (the exchange allows 300 per 5 minutes per IP, shared by every
    /// process behind that IP).
    pub connect_budget: usize,
    /// The window of `connect_budget`.
    pub connect_budget_window_ms: u64,
    /// Proactive replacement (with overlap) before the exchange's 24 h cut.
    pub max_lifetime_ms: u64,
    /// Latest prices are written to Redis (one pipeline + one PUBLISH) this often.
    pub tick_flush_ms: u64,
    /// REST backfill pages in flight at once per node.
    pub backfill_concurrency: usize,
    /// A new gap waits this long before its instrument's backfill page (most reordered trades
    /// arrive by then, and the page then asks only for what is really missing).
    pub backfill_grace_ms: u64,
    /// Least time between two backfill pages of one instrument (each page asks for all it
    /// misses, up to 1000 ids): bounds REST weight per symbol whatever the drop rate.
    pub backfill_interval_ms: u64,
    /// Accepted clock skew between the exchange and us when validating trade timestamps.
    pub max_skew_ms: i64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            max_streams_per_conn: 1024,
            options_max_streams_per_conn: 200,
            streams_per_request: 200,
            control_msgs_per_sec: 4,
            stall_timeout_ms: 30_000,
            handover_grace_ms: 2_000,
            reconnect_backoff_min_ms: 250,
            reconnect_backoff_max_ms: 30_000,
            reconnect_reset_after_ms: 60_000,
            connect_budget: 250,
            connect_budget_window_ms: 300_000,
            max_lifetime_ms: 23 * 3_600_000,
            tick_flush_ms: 20,
            backfill_concurrency: 4,
            backfill_grace_ms: 300,
            backfill_interval_ms: 1_000,
            max_skew_ms: 10_000,
        }
    }
}

impl FeedConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("node.feed.{key}"), msg));
        if !(1..=1024).contains(&self.max_streams_per_conn) {
            return k("max_streams_per_conn", "must be between 1 and 1024");
        }
        if !(1..=1024).contains(&self.options_max_streams_per_conn) {
            return k("options_max_streams_per_conn", "must be between 1 and 1024");
        }
        if !(1..=1024).contains(&self.streams_per_request) {
            return k("streams_per_request", "must be between 1 and 1024");
        }
        if !(1..=5).contains(&self.control_msgs_per_sec) {
            return k("control_msgs_per_sec", "must be between 1 and 5");
        }
        if !(500..=600_000).contains(&self.stall_timeout_ms) {
            return k("stall_timeout_ms", "must be between 500 and 600000");
        }
        if self.handover_grace_ms > 60_000 {
            return k("handover_grace_ms", "must be at most 60000");
        }
        if !(10..=60_000).contains(&self.reconnect_backoff_min_ms) {
            return k("reconnect_backoff_min_ms", "must be between 10 and 60000");
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms
            || self.reconnect_backoff_max_ms > 600_000
        {
            return k(
                "reconnect_backoff_max_ms",
                "must be at least reconnect_backoff_min_ms and at most 600000",
            );
        }
        if !(1..=300).contains(&self.connect_budget) {
            return k("connect_budget", "must be between 1 and 300");
        }
        if !(1_000..=3_600_000).contains(&self.connect_budget_window_ms) {
            return k(
                "connect_budget_window_ms",
                "must be between 1000 and 3600000",
            );
        }
        if self.max_lifetime_ms < 10_000 {
            return k("max_lifetime_ms", "must be at least 10000");
        }
        if !(1..=1_000).contains(&self.tick_flush_ms) {
            return k("tick_flush_ms", "must be between 1 and 1000");
        }
        if !(1..=64).contains(&self.backfill_concurrency) {
            return k("backfill_concurrency", "must be between 1 and 64");
        }
        if self.backfill_grace_ms > 60_000 {
            return k("backfill_grace_ms", "must be at most 60000");
        }
        if !(50..=60_000).contains(&self.backfill_interval_ms) {
            return k("backfill_interval_ms", "must be between 50 and 60000");
        }
        if !(0..=600_000).contains(&self.max_skew_ms) {
            return k("max_skew_ms", "must be between 0 and 600000");
        }
        Ok(())
    }
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
        self.node.feed.validate()?;
        self.node.live.validate()?;
        self.node.stream.validate()?;
        self.node.limits.validate()?;
        self.vwap.validate()?;
        self.retention.validate()?;
        self.auth.validate()?;
        self.alerts.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.broker.validate()?;
        self.trades.validate()?;
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

impl pricefeed_runtime::cli::BinaryConfig for NodeConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}
