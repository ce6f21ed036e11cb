//! `[node.stream]`: limits and timers of the client WebSocket (`GET /api/v1/stream`).
//!
//! Every limit protects the node from one client: channel and watch counts bound the hub's
//! memory per connection, the message rate and frame size bound the work a client can ask for,
//! the outgoing queue and send timeout bound what a slow reader can make the node hold, and the
//! ping/idle timers free sockets whose peer vanished without closing.

use pricefeed_runtime::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Concurrent client connections per node; more are refused with 503.
    pub max_connections: usize,
    /// Channels (`prices:…`, `vwap:…`, `alerts`) one connection may hold.
    pub max_channels: usize,
    /// Threshold watches one connection may hold.
    pub max_watches: usize,
    /// Sustained incoming messages per second per connection (token bucket refill).
    pub msgs_per_sec: u32,
    /// Messages a connection may send at once above the sustained rate (bucket size).
    pub msgs_burst: u32,
    /// Messages refused for the rate within 10 s before the connection is closed with 1008.
    pub rate_strikes: u32,
    /// Largest incoming message, bytes; a larger one closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// The node pings every connection this often.
    pub ping_ms: u64,
    /// No frame at all from the client (pongs count) for this long closes it (1000, idle).
    pub idle_timeout_ms: u64,
    /// A batch of frames the socket does not accept within this long means the client stopped
    /// reading: it is cut off (1008, slow consumer).
    pub send_timeout_ms: u64,
    /// Queued event frames (acks, errors, alerts, watch notifications) a connection may have
    /// unsent; one more cuts it off (1008, slow consumer). Price and VWAP updates never queue:
    /// they are conflated to the latest value per channel.
    pub max_queued_frames: usize,
    /// Update batches buffered between the live caches and the hub's dispatcher; when full a
    /// batch is dropped and counted, so the cache feed never waits for clients.
    pub hub_queue: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_channels: 50,
            max_watches: 20,
            msgs_per_sec: 10,
            msgs_burst: 20,
            rate_strikes: 10,
            max_frame_bytes: 4_096,
            ping_ms: 15_000,
            idle_timeout_ms: 45_000,
            send_timeout_ms: 5_000,
            max_queued_frames: 256,
            hub_queue: 4_096,
        }
    }
}

impl Validate for StreamConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("node.stream.{key}"), msg));
        if !(1..=1_000_000).contains(&self.max_connections) {
            return k("max_connections", "must be between 1 and 1000000");
        }
        if !(1..=10_000).contains(&self.max_channels) {
            return k("max_channels", "must be between 1 and 10000");
        }
        if self.max_watches > 10_000 {
            return k("max_watches", "must be at most 10000");
        }
        if !(1..=10_000).contains(&self.msgs_per_sec) {
            return k("msgs_per_sec", "must be between 1 and 10000");
        }
        if self.msgs_burst < self.msgs_per_sec || self.msgs_burst > 100_000 {
            return k(
                "msgs_burst",
                "must be at least node.stream.msgs_per_sec and at most 100000",
            );
        }
        if !(1..=10_000).contains(&self.rate_strikes) {
            return k("rate_strikes", "must be between 1 and 10000");
        }
        if !(256..=1_048_576).contains(&self.max_frame_bytes) {
            return k("max_frame_bytes", "must be between 256 and 1048576");
        }
        if !(100..=300_000).contains(&self.ping_ms) {
            return k("ping_ms", "must be between 100 and 300000");
        }
        if self.idle_timeout_ms <= self.ping_ms || self.idle_timeout_ms > 3_600_000 {
            return k(
                "idle_timeout_ms",
                "must be above node.stream.ping_ms (a live client answers the pings) and at most 3600000",
            );
        }
        if !(50..=300_000).contains(&self.send_timeout_ms) {
            return k("send_timeout_ms", "must be between 50 and 300000");
        }
        if !(8..=1_000_000).contains(&self.max_queued_frames) {
            return k("max_queued_frames", "must be between 8 and 1000000");
        }
        if !(16..=1_000_000).contains(&self.hub_queue) {
            return k("hub_queue", "must be between 16 and 1000000");
        }
        Ok(())
    }
}
