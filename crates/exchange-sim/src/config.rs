//! Typed configuration of the simulator: the `[sim]` section plus the shared `[telemetry]` and
//! `[shutdown]` sections, loaded through `pricefeed_runtime::config`.
//!
//! Every field has a default so tests can build a config in code with struct-update syntax and
//! an empty `[sim]` section starts a usable simulator. Validation names the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use pricefeed_runtime::config::{ConfigError, ShutdownConfig, TelemetryConfig, Validate};
use serde::{Deserialize, Serialize};

use crate::faults::FaultSpec;

/// Everything `pricefeed-sim` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SimFile {
    #[serde(default)]
    pub sim: SimConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

impl Validate for SimFile {
    fn validate(&self) -> Result<(), ConfigError> {
        self.sim.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()
    }
}

/// `[sim]`: the simulated exchange: listeners, catalogue, trade rates, price walk, the
/// exchange's limits and the faults in effect at start.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of the catalogue, every price walk and every fault decision.
    pub seed: u64,
    /// Trade and aggTrade ids also advance with the wall clock at start (1 000 ids per second
    /// since 2025-01-01), so a restarted simulator issues ids above every id it issued before,
    /// as an exchange never reuses one (a symbol must have averaged under 1 000 trades/s).
    /// `false`: ids depend on the seed alone (the same ids on every run, for replays).
    pub ids_follow_clock: bool,
    /// Spot REST and WebSocket listener (port 0 picks a free one; `--ports-file` tells it).
    pub spot_bind: SocketAddr,
    /// USD-M futures REST and WebSocket listener.
    pub futures_bind: SocketAddr,
    /// Options REST and WebSocket listener.
    pub options_bind: SocketAddr,
    /// Ops routes and the `/control` API.
    pub control_bind: SocketAddr,

    /// Number of underlyings (spot pairs), each with a perpetual, quarterlies and options.
    pub underlyings: u32,
    /// Delivery contracts per underlying (CURRENT_QUARTER, NEXT_QUARTER), 0–2.
    pub quarterlies: u32,
    /// Weekly option expiries per underlying.
    pub option_expiries: u32,
    /// Strikes per expiry; each strike lists a call and a put.
    pub option_strikes: u32,
    /// Share of spot pairs that start in HALT/BREAK (0.0–1.0).
    pub initial_halted_ratio: f64,

    /// The first N underlyings' spot pair and perpetual trade at `hot_rate_per_sec`.
    pub hot_symbols: u32,
    /// Trades per second of each hot instrument.
    pub hot_rate_per_sec: f64,
    /// Every other tradable instrument's rate, in trades per minute.
    pub tail_rate_per_min: f64,
    /// Per-symbol overrides in trades per second, keyed by symbol (any market).
    pub rates: BTreeMap<String, f64>,
    /// Multiplies every asset's annualised volatility (1.0 = realistic; 10.0 makes ten minutes
    /// move like sixteen hours, for demos of alerts; 0.0 = flat prices plus tick noise).
    pub vol_scale: f64,
    /// How often the generator wakes to emit due trades.
    pub tick_ms: u64,
    /// Trades kept per hot (and load-mode) symbol for REST/ground truth.
    pub history_depth_hot: usize,
    /// Trades kept per other symbol.
    pub history_depth_tail: usize,

    /// Period of listing changes (new instruments, halts, resumes, delistings); 0 disables.
    pub listing_interval_ms: u64,

    /// Load mode: the first `load_symbols` spot pairs share `load_rate` trades/s between them.
    pub load_mode: bool,
    /// Trades per second shared by the load-mode symbols.
    pub load_rate: f64,
    /// How many spot pairs carry the load.
    pub load_symbols: u32,

    /// REST request-weight budget per IP and window.
    pub rest_weight_limit: u64,
    /// The window of `rest_weight_limit`.
    pub rest_weight_window_ms: u64,
    /// Requests sent while already limited (after a 429) before the IP is banned with 418.
    pub rest_ban_after: u32,
    /// First ban length; each further ban doubles it, capped at three days.
    pub rest_ban_ms: u64,

    /// Incoming WS messages (any frame) allowed per rolling second; one more closes with 1008.
    pub ws_max_msgs_per_sec: u32,
    /// Streams one connection may subscribe (the exchange allows 1024).
    pub ws_max_streams: usize,
    /// Server ping period.
    pub ws_ping_interval_ms: u64,
    /// Disconnect when no pong echoing a recent ping arrived for this long.
    pub ws_pong_timeout_ms: u64,
    /// Forced cut after this connection age; 0 disables.
    pub ws_max_lifetime_ms: u64,
    /// Generator batches a connection may lag behind before it is dropped as a slow client.
    pub ws_queue_batches: usize,
    /// A single write that blocks longer than this drops the client.
    pub ws_send_timeout_ms: u64,
    /// Delayed-delivery queue bound per connection (events); overflow is sent immediately.
    pub ws_delay_queue_max: usize,

    /// Faults in effect at start.
    pub faults: FaultsConfig,
}

/// `[sim.faults]`: a global spec and per-symbol specs (a symbol spec replaces the global one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    pub global: FaultSpec,
    pub symbols: BTreeMap<String, FaultSpec>,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            ids_follow_clock: true,
            spot_bind: local(9100),
            futures_bind: local(9101),
            options_bind: local(9102),
            control_bind: local(9103),
            underlyings: 50,
            quarterlies: 2,
            option_expiries: 2,
            option_strikes: 4,
            initial_halted_ratio: 0.04,
            hot_symbols: 5,
            hot_rate_per_sec: 200.0,
            tail_rate_per_min: 3.0,
            rates: BTreeMap::new(),
            vol_scale: 1.0,
            tick_ms: 10,
            history_depth_hot: 50_000,
            history_depth_tail: 1_000,
            listing_interval_ms: 180_000,
            load_mode: false,
            load_rate: 600_000.0,
            load_symbols: 4,
            rest_weight_limit: 6000,
            rest_weight_window_ms: 60_000,
            rest_ban_after: 3,
            rest_ban_ms: 120_000,
            ws_max_msgs_per_sec: 5,
            ws_max_streams: 1024,
            ws_ping_interval_ms: 20_000,
            ws_pong_timeout_ms: 60_000,
            ws_max_lifetime_ms: 86_400_000,
            ws_queue_batches: 4096,
            ws_send_timeout_ms: 5_000,
            ws_delay_queue_max: 100_000,
            faults: FaultsConfig::default(),
        }
    }
}

impl Validate for SimConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let k = |name: &str, msg: &str| Err(ConfigError::key(format!("sim.{name}"), msg));
        if !(1..=5000).contains(&self.underlyings) {
            return k("underlyings", "must be between 1 and 5000");
        }
        if self.quarterlies > 2 {
            return k("quarterlies", "must be between 0 and 2");
        }
        if self.option_expiries > 8 {
            return k("option_expiries", "must be between 0 and 8");
        }
        if self.option_strikes > 50 {
            return k("option_strikes", "must be between 0 and 50");
        }
        if !(0.0..=1.0).contains(&self.initial_halted_ratio) {
            return k("initial_halted_ratio", "must be between 0.0 and 1.0");
        }
        if !(self.hot_rate_per_sec.is_finite() && self.hot_rate_per_sec >= 0.0) {
            return k("hot_rate_per_sec", "must be a finite number >= 0");
        }
        if !(self.tail_rate_per_min.is_finite() && self.tail_rate_per_min >= 0.0) {
            return k("tail_rate_per_min", "must be a finite number >= 0");
        }
        for (sym, r) in &self.rates {
            if !(r.is_finite() && *r >= 0.0 && *r <= 1e7) {
                return Err(ConfigError::key(
                    format!("sim.rates.{sym}"),
                    "must be between 0 and 10000000 trades/s",
                ));
            }
        }
        if !(self.vol_scale.is_finite() && (0.0..=20.0).contains(&self.vol_scale)) {
            return k("vol_scale", "must be between 0.0 and 20.0");
        }
        if !(1..=1000).contains(&self.tick_ms) {
            return k("tick_ms", "must be between 1 and 1000");
        }
        if !(1..=10_000_000).contains(&self.history_depth_hot) {
            return k("history_depth_hot", "must be between 1 and 10000000");
        }
        if !(1..=10_000_000).contains(&self.history_depth_tail) {
            return k("history_depth_tail", "must be between 1 and 10000000");
        }
        if self.load_mode {
            if !(self.load_rate.is_finite() && self.load_rate > 0.0 && self.load_rate <= 1e8) {
                return k("load_rate", "must be between 0 (exclusive) and 100000000");
            }
            if self.load_symbols == 0 || self.load_symbols > self.underlyings {
                return k("load_symbols", "must be between 1 and sim.underlyings");
            }
        }
        if self.rest_weight_limit == 0 {
            return k("rest_weight_limit", "must be at least 1");
        }
        if self.rest_weight_window_ms == 0 {
            return k("rest_weight_window_ms", "must be at least 1");
        }
        if self.ws_max_msgs_per_sec == 0 {
            return k("ws_max_msgs_per_sec", "must be at least 1");
        }
        if self.ws_max_streams == 0 {
            return k("ws_max_streams", "must be at least 1");
        }
        if self.ws_ping_interval_ms == 0 {
            return k("ws_ping_interval_ms", "must be at least 1");
        }
        if self.ws_pong_timeout_ms < self.ws_ping_interval_ms {
            return k(
                "ws_pong_timeout_ms",
                "must be at least sim.ws_ping_interval_ms",
            );
        }
        if self.ws_queue_batches < 2 {
            return k("ws_queue_batches", "must be at least 2");
        }
        if self.ws_send_timeout_ms == 0 {
            return k("ws_send_timeout_ms", "must be at least 1");
        }
        self.faults
            .global
            .validate()
            .map_err(|m| ConfigError::key(format!("sim.faults.global.{}", m.0), m.1))?;
        for (sym, f) in &self.faults.symbols {
            f.validate()
                .map_err(|m| ConfigError::key(format!("sim.faults.symbols.{sym}.{}", m.0), m.1))?;
        }
        Ok(())
    }
}

impl pricefeed_runtime::cli::BinaryConfig for SimFile {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_toml_loads_and_matches_code_defaults() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/default.toml");
        let f: SimFile = pricefeed_runtime::config::load(&pricefeed_runtime::config::Sources {
            file: Some(file),
            env_file: None,
        })
        .unwrap();
        let d = SimConfig::default();
        assert_eq!(f.sim.spot_bind, d.spot_bind);
        assert_eq!(f.sim.control_bind, d.control_bind);
        assert_eq!(f.sim.underlyings, d.underlyings);
        assert_eq!(f.sim.ws_pong_timeout_ms, d.ws_pong_timeout_ms);
        assert_eq!(f.sim.vol_scale, d.vol_scale);
    }

    #[test]
    fn defaults_validate_and_bad_values_name_the_key() {
        let mut c = SimConfig::default();
        assert!(c.validate().is_ok());
        c.tick_ms = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sim.tick_ms"), "{e}");
        for bad in [-1.0, 21.0, f64::NAN] {
            let c = SimConfig {
                vol_scale: bad,
                ..SimConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("sim.vol_scale"), "{e}");
        }
        let mut c = SimConfig::default();
        c.faults.symbols.insert(
            "BTCUSDT".into(),
            FaultSpec {
                drop: 2.0,
                ..FaultSpec::default()
            },
        );
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sim.faults.symbols.BTCUSDT.drop"), "{e}");
    }
}
