//! `[email]`: how the worker reaches the SMTP relay, and the retry policy of alert emails.
//!
//! Validated at start with the failing key named (`email.tls`, `email.from`, …), so a worker
//! with a broken mail setup never starts claiming email jobs it could only fail.

use std::time::Duration;

use lettre::message::Mailbox;
use pricefeed_runtime::config::ConfigError;
use pricefeed_runtime::secret::Secret;
use serde::{Deserialize, Serialize};

/// Transport security towards the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain SMTP (a local sink or a relay on a trusted network only).
    None,
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    Starttls,
    /// TLS from the first byte ("SMTPS", port 465).
    Tls,
}

/// `[email]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Relay host name (also the name its TLS certificate must carry).
    pub host: String,
    /// Relay port (25, 587 with `starttls`, 465 with `tls`; 1025 is the `./dev up` mail sink).
    pub port: u16,
    pub tls: TlsMode,
    /// SMTP AUTH user; empty = no authentication.
    pub username: String,
    /// SMTP AUTH password (never printed).
    pub password: Secret,
    /// Sender, `Name <address>` or a bare address; its domain also names the Message-IDs.
    pub from: String,
    /// TCP connect and per-command socket timeout.
    pub connect_timeout_ms: u64,
    /// Longest one whole send may take (connect, envelope, data, final reply).
    pub send_timeout_ms: u64,
    /// Attempts per email before it is dead-lettered (transient failures only; a 5xx reply
    /// dead-letters at once).
    pub max_attempts: u32,
    /// Retry delay before attempt n+1 is uniform in [0, min(cap, base · 2^(n-1))] (full jitter).
    pub backoff_base_ms: u64,
    /// Upper bound of that retry delay.
    pub backoff_cap_ms: u64,
    /// SMTP connections kept open per worker.
    pub pool_size: u32,
    /// Public address of the API or dashboard, for links in the mail; empty = no links.
    pub public_base_url: String,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1025,
            tls: TlsMode::None,
            username: String::new(),
            password: Secret::default(),
            from: "pricefeed alerts <alerts@pricefeed.localhost>".into(),
            connect_timeout_ms: 5_000,
            send_timeout_ms: 10_000,
            max_attempts: 8,
            backoff_base_ms: 2_000,
            backoff_cap_ms: 300_000,
            pool_size: 8,
            public_base_url: String::new(),
        }
    }
}

impl EmailConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    /// The parsed sender (valid once [`EmailConfig::validate`] passed).
    pub fn from_mailbox(&self) -> Result<Mailbox, ConfigError> {
        self.from
            .parse::<Mailbox>()
            .map_err(|e| ConfigError::key("email.from", format!("not an email address: {e}")))
    }

    /// Checks every key; `lease_ms` is `worker.lease_ms`, which bounds the send time.
    pub fn validate(&self, lease_ms: u64) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() || self.host.contains(char::is_whitespace) {
            return Err(ConfigError::key(
                "email.host",
                "must be a host name or address",
            ));
        }
        if self.port == 0 {
            return Err(ConfigError::key(
                "email.port",
                "must be between 1 and 65535",
            ));
        }
        if self.username.is_empty() != self.password.is_empty() {
            return Err(ConfigError::key(
                "email.password",
                "email.username and email.password are set together or not at all",
            ));
        }
        // Credentials in clear text over the network are what SMTP AUTH PLAIN would send.
        if !self.username.is_empty() && self.tls == TlsMode::None {
            return Err(ConfigError::key(
                "email.tls",
                "SMTP credentials need starttls or tls (they would cross the network in clear text)",
            ));
        }
        let mb = self.from_mailbox()?;
        if mb.email.domain().is_empty() {
            return Err(ConfigError::key("email.from", "needs a domain"));
        }
        if !(100..=60_000).contains(&self.connect_timeout_ms) {
            return Err(ConfigError::key(
                "email.connect_timeout_ms",
                "must be between 100 and 60000",
            ));
        }
        // A send must end before the worker's claim could be taken over (the attempt starts only
        // while the lease outlives it by send_timeout_ms); renewals run every third of the lease,
        // so two thirds of it is the most a send can be given.
        if self.send_timeout_ms < self.connect_timeout_ms
            || self.send_timeout_ms.saturating_mul(3) > lease_ms.saturating_mul(2)
        {
            return Err(ConfigError::key(
                "email.send_timeout_ms",
                format!(
                    "must be at least email.connect_timeout_ms and at most two thirds of \
                     worker.lease_ms ({lease_ms})"
                ),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::key(
                "email.max_attempts",
                "must be between 1 and 100",
            ));
        }
        if !(10..=3_600_000).contains(&self.backoff_base_ms) {
            return Err(ConfigError::key(
                "email.backoff_base_ms",
                "must be between 10 and 3600000",
            ));
        }
        if self.backoff_cap_ms < self.backoff_base_ms || self.backoff_cap_ms > 86_400_000 {
            return Err(ConfigError::key(
                "email.backoff_cap_ms",
                "must be at least email.backoff_base_ms and at most 86400000 (a day)",
            ));
        }
        if !(1..=256).contains(&self.pool_size) {
            return Err(ConfigError::key(
                "email.pool_size",
                "must be between 1 and 256",
            ));
        }
        let url = self.public_base_url.trim();
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !url.is_empty() && (!scheme_ok || url.contains(char::is_whitespace)) {
            return Err(ConfigError::key(
                "email.public_base_url",
                "must be empty or an http(s):// URL",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(extra: serde_json::Value) -> EmailConfig {
        serde_json::from_value(extra).unwrap()
    }

    fn bad_key(c: &EmailConfig) -> Option<String> {
        match c.validate(30_000) {
            Err(ConfigError::Key { key, .. }) => Some(key),
            Err(e) => panic!("unexpected {e}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn defaults_are_valid_and_point_at_the_dev_sink() {
        let c = EmailConfig::default();
        assert_eq!(bad_key(&c), None);
        assert_eq!(
            (c.host.as_str(), c.port, c.tls),
            ("127.0.0.1", 1025, TlsMode::None)
        );
    }

    #[test]
    fn every_bad_value_names_its_key() {
        for (extra, key) in [
            (serde_json::json!({"host": ""}), "email.host"),
            (serde_json::json!({"port": 0}), "email.port"),
            (serde_json::json!({"username": "u"}), "email.password"),
            (serde_json::json!({"password": "p"}), "email.password"),
            (
                serde_json::json!({"username": "u", "password": "p"}),
                "email.tls",
            ),
            (serde_json::json!({"from": "not an address"}), "email.from"),
            (
                serde_json::json!({"connect_timeout_ms": 5}),
                "email.connect_timeout_ms",
            ),
            (
                serde_json::json!({"send_timeout_ms": 25000}),
                "email.send_timeout_ms",
            ),
            (
                serde_json::json!({"send_timeout_ms": 1000}),
                "email.send_timeout_ms",
            ),
            (serde_json::json!({"max_attempts": 0}), "email.max_attempts"),
            (
                serde_json::json!({"backoff_base_ms": 0}),
                "email.backoff_base_ms",
            ),
            (
                serde_json::json!({"backoff_base_ms": 5000, "backoff_cap_ms": 1000}),
                "email.backoff_cap_ms",
            ),
            (serde_json::json!({"pool_size": 0}), "email.pool_size"),
            (
                serde_json::json!({"public_base_url": "ftp://x"}),
                "email.public_base_url",
            ),
        ] {
            assert_eq!(
                bad_key(&with(extra.clone())).as_deref(),
                Some(key),
                "{extra}"
            );
        }
        let ok = with(
            serde_json::json!({"username": "u", "password": "p", "tls": "starttls",
            "public_base_url": "https://pricefeed.example"}),
        );
        assert_eq!(bad_key(&ok), None);
    }

    #[test]
    fn the_password_never_prints() {
        let c = with(serde_json::json!({"username": "u", "password": "hunter2", "tls": "tls"}));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
    }

    #[test]
    fn an_unknown_tls_mode_is_refused() {
        assert!(serde_json::from_value::<EmailConfig>(serde_json::json!({"tls": "ssl"})).is_err());
    }
}
