//! Layered, typed configuration.
//!
//! Sources, later ones winning: `config/default.toml` (or `--config`/`PRICEFEED_CONFIG`), an
//! optional env file (`--env-file`/`PRICEFEED_ENV_FILE`, `KEY=VALUE` lines; never overrides a
//! variable already set in the process), then environment variables `PRICEFEED__SECTION__KEY`.
//! Every binary extracts only the sections it needs into its own struct and validates it with
//! [`Validate`], so a bad value stops the process with a message that names the key.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Prefix of every environment override; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "PRICEFEED__";

/// Where the configuration comes from. Both paths are optional.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// TOML file; defaults to `config/default.toml` when it exists.
    pub file: Option<PathBuf>,
    /// `KEY=VALUE` file whose entries are treated like environment variables.
    pub env_file: Option<PathBuf>,
}

/// A configuration problem, always naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {msg}")]
    File { path: String, msg: String },
    #[error("config key `{key}`: {msg}")]
    Key { key: String, msg: String },
}

impl ConfigError {
    pub fn key(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

/// Checks that go beyond types (ranges, URL schemes, cross-field rules).
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads, merges, deserializes and validates a configuration of type `T`.
pub fn load<T>(sources: &Sources) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let file = match &sources.file {
        Some(f) => {
            if !f.exists() {
                return Err(ConfigError::File {
                    path: f.display().to_string(),
                    msg: "does not exist".into(),
                });
            }
            Some(f.clone())
        }
        None => default_file(),
    };
    let mut fig = Figment::new();
    if let Some(f) = &file {
        fig = fig.merge(Toml::file_exact(f));
    }
    if let Some(env_file) = &sources.env_file {
        if !env_file.exists() {
            return Err(ConfigError::File {
                path: env_file.display().to_string(),
                msg: "does not exist".into(),
            });
        }
        fig = fig.merge(env_file_layer(env_file)?);
    }
    fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__").lowercase(true));
    from_figment(fig)
}

/// Deserializes and validates from an already assembled figment (used by tests).
pub fn from_figment<T>(fig: Figment) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let cfg: T = fig.extract().map_err(figment_error)?;
    cfg.validate()?;
    Ok(cfg)
}

fn figment_error(e: figment::Error) -> ConfigError {
    // figment knows the failing path (`node.http.port`) and the source (file or env var);
    // keep both, the operator needs the key and where it was set.
    let e = e
        .into_iter()
        .next()
        .expect("figment error has at least one entry");
    let key = if e.path.is_empty() {
        "<root>".to_string()
    } else {
        e.path.join(".")
    };
    let mut msg = e.kind.to_string();
    if let Some(md) = &e.metadata {
        msg.push_str(&format!(" (from {}", md.name));
        if let Some(src) = &md.source {
            msg.push_str(&format!(" {src}"));
        }
        msg.push(')');
        if md.name.contains("environment") {
            msg.push_str(&format!(
                "; env var {ENV_PREFIX}{}",
                key.replace('.', "__").to_uppercase()
            ));
        }
    }
    ConfigError::Key { key, msg }
}

fn default_file() -> Option<PathBuf> {
    let p = PathBuf::from("config/default.toml");
    p.exists().then_some(p)
}

/// Reads `KEY=VALUE` lines and turns the `PRICEFEED__…` ones into a figment provider layer.
/// Process variables are merged after it, so they win; `set_var` is avoided on purpose (it is
/// `unsafe` in edition 2024 and racy with other threads reading the environment).
fn env_file_layer(path: &Path) -> Result<Figment, ConfigError> {
    let file_err = |msg: String| ConfigError::File {
        path: path.display().to_string(),
        msg,
    };
    let iter = dotenvy::from_path_iter(path).map_err(|e| file_err(e.to_string()))?;
    let mut fig = Figment::new();
    for item in iter {
        let (k, v) = item.map_err(|e| file_err(e.to_string()))?;
        let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest
            .split("__")
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        let value: figment::value::Value = v.parse().expect("figment value parse is infallible");
        fig = fig.merge(figment::providers::Serialized::default(&key, value));
    }
    Ok(fig)
}

/// `[http]`-style listener settings (each binary has its own section).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to bind, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub bind: std::net::SocketAddr,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A connection must send a complete request head (request line and headers) within this
    /// many milliseconds of its first byte, or of the end of its previous response; otherwise
    /// it is closed. Cuts off slowloris clients and bounds idle keep-alive connections (a proxy
    /// in front that reuses connections must idle them out sooner).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

/// Default of `header_read_timeout_ms`.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 20_000;

fn default_header_read_timeout_ms() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_MS
}

impl HttpConfig {
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 300_000 {
            return Err(ConfigError::key(
                format!("{section}.request_timeout_ms"),
                "must be between 1 and 300000",
            ));
        }
        if !(100..=600_000).contains(&self.header_read_timeout_ms) {
            return Err(ConfigError::key(
                format!("{section}.header_read_timeout_ms"),
                "must be between 100 and 600000",
            ));
        }
        Ok(())
    }

    /// The connection limits of [`crate::serve::serve`].
    pub fn server_limits(&self) -> crate::serve::ServerLimits {
        crate::serve::ServerLimits {
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
        }
    }
}

/// `[database]`: Postgres connection.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`; the password never reaches logs.
    pub url: crate::secret::SecretUrl,
    /// Connections in this process's pool (every binary has its own pool; mind Postgres's
    /// `max_connections` across all processes).
    #[serde(default = "default_pool_size")]
    pub max_connections: u32,
    /// How long to wait for a connection before giving up, in milliseconds.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations at start (under an advisory lock, so concurrent starts are safe).
    #[serde(default = "yes")]
    pub migrate_on_start: bool,
}

fn default_pool_size() -> u32 {
    10
}
fn default_acquire_timeout_ms() -> u64 {
    5_000
}
fn yes() -> bool {
    true
}

impl Validate for DatabaseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::key(
                "database.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::key(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[redis]`: Redis connection.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; RESP3 is added for pub/sub where needed; a password never
    /// reaches logs.
    pub url: crate::secret::SecretUrl,
    /// Prefix of every key and channel, so several clusters can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Highly available Redis: find the primary through Redis Sentinel instead of connecting to
    /// `url`'s host. `url` still gives the scheme, password and database.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
}

/// `[redis.sentinel]`: where the sentinels are and which primary to ask them for.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    pub master_name: String,
    /// Sentinel addresses as `host:port`, a list or one comma-separated string (handy in an
    /// environment variable). Asked in order until one names a primary that confirms its role.
    #[serde(deserialize_with = "list_or_csv")]
    pub nodes: Vec<String>,
}

fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect(),
    })
}

impl SentinelConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.master_name.trim().is_empty() {
            return Err(ConfigError::key(
                "redis.sentinel.master_name",
                "must not be empty",
            ));
        }
        if self.nodes.is_empty() {
            return Err(ConfigError::key(
                "redis.sentinel.nodes",
                "must name at least one sentinel as host:port",
            ));
        }
        for n in &self.nodes {
            let ok = n
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(ConfigError::key(
                    "redis.sentinel.nodes",
                    format!("`{n}` is not host:port"),
                ));
            }
        }
        Ok(())
    }
}

fn default_key_prefix() -> String {
    "pf".into()
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return Err(ConfigError::key(
                "redis.url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::key(
                "redis.key_prefix",
                "must be non-empty without whitespace",
            ));
        }
        if let Some(s) = &self.sentinel {
            if url.starts_with("unix://") {
                return Err(ConfigError::key(
                    "redis.url",
                    "must be redis:// or rediss:// when redis.sentinel is set",
                ));
            }
            s.validate()?;
        }
        Ok(())
    }
}

/// `[telemetry]`: logging format and level.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `human` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// An `EnvFilter` directive, overridden by `RUST_LOG` when set.
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Human,
            log_level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(
    Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| ConfigError::key("telemetry.log_level", e.to_string()))?;
        Ok(())
    }
}

/// `[shutdown]`: how long draining may take before tasks are abandoned.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests and tasks may take to finish after SIGTERM/SIGINT before
    /// they are abandoned.
    #[serde(default = "default_drain_ms")]
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: default_drain_ms(),
        }
    }
}

fn default_drain_ms() -> u64 {
    10_000
}

impl Validate for ShutdownConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_timeout_ms == 0 || self.drain_timeout_ms > 600_000 {
            return Err(ConfigError::key(
                "shutdown.drain_timeout_ms",
                "must be between 1 and 600000",
            ));
        }
        Ok(())
    }
}

/// `[broker]`: where market data comes from. The defaults point at the local exchange simulator;
/// switching to the real exchange is a change of these URLs only.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Spot REST base (`exchangeInfo`, `historicalTrades`); the exchange: `https://api.binance.com`.
    pub spot_rest_url: String,
    /// Spot WebSocket base (trade streams); the exchange: `wss://stream.binance.com:9443`.
    pub spot_ws_url: String,
    /// USD-M futures REST base; the exchange: `https://fapi.binance.com`.
    pub futures_rest_url: String,
    /// USD-M futures WebSocket base; the exchange: `wss://fstream.binance.com`.
    pub futures_ws_url: String,
    /// Options REST base; the exchange: `https://eapi.binance.com`.
    pub options_rest_url: String,
    /// Options WebSocket base; the exchange: `wss://nbstream.binance.com/eoptions`.
    pub options_ws_url: String,
    /// TCP connect timeout of REST calls.
    #[serde(default = "default_rest_connect_timeout_ms")]
    pub rest_connect_timeout_ms: u64,
    /// Total time one REST call may take (the exchange itself gives up after 10 s).
    #[serde(default = "default_rest_timeout_ms")]
    pub rest_timeout_ms: u64,
}

fn default_rest_connect_timeout_ms() -> u64 {
    3_000
}
fn default_rest_timeout_ms() -> u64 {
    15_000
}

impl Validate for BrokerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let rest = [
            ("broker.spot_rest_url", &self.spot_rest_url),
            ("broker.futures_rest_url", &self.futures_rest_url),
            ("broker.options_rest_url", &self.options_rest_url),
        ];
        for (k, v) in rest {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(ConfigError::key(k, "must start with http:// or https://"));
            }
        }
        let ws = [
            ("broker.spot_ws_url", &self.spot_ws_url),
            ("broker.futures_ws_url", &self.futures_ws_url),
            ("broker.options_ws_url", &self.options_ws_url),
        ];
        for (k, v) in ws {
            if !(v.starts_with("ws://") || v.starts_with("wss://")) {
                return Err(ConfigError::key(k, "must start with ws:// or wss://"));
            }
        }
        if !(100..=60_000).contains(&self.rest_connect_timeout_ms) {
            return Err(ConfigError::key(
                "broker.rest_connect_timeout_ms",
                "must be between 100 and 60000",
            ));
        }
        if !(100..=120_000).contains(&self.rest_timeout_ms)
            || self.rest_timeout_ms < self.rest_connect_timeout_ms
        {
            return Err(ConfigError::key(
                "broker.rest_timeout_ms",
                "must be between 100 and 120000 and at least broker.rest_connect_timeout_ms",
            ));
        }
        Ok(())
    }
}

/// Renders a configuration as JSON with secrets masked: fields whose name mentions a password,
/// secret or token, and the password part of any URL.
pub fn redacted<T: Serialize>(cfg: &T) -> String {
    let mut v = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    redact_value(&mut v, "");
    v.to_string()
}

fn redact_value(v: &mut serde_json::Value, name: &str) {
    use serde_json::Value;
    let lname = name.to_ascii_lowercase();
    let secret_name = ["password", "secret", "token", "api_key"]
        .iter()
        .any(|s| lname.contains(s));
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                redact_value(child, k);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| redact_value(c, name)),
        Value::String(s) if secret_name => *s = "***".into(),
        Value::String(s) => *s = redact_url(s),
        _ if secret_name => *v = Value::String("***".into()),
        _ => {}
    }
}

/// `scheme://user:pass@host` → `scheme://user:***@host`; anything else unchanged.
pub fn redact_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return s.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}://{}:***@{}",
            &s[..scheme_end],
            &userinfo[..colon],
            &rest[at + 1..]
        ),
        None => s.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Debug, Deserialize, Serialize)]
    struct Demo {
        database: DatabaseConfig,
        redis: RedisConfig,
    }
    impl Validate for Demo {
        fn validate(&self) -> Result<(), ConfigError> {
            self.database.validate()?;
            self.redis.validate()
        }
    }

    const BASE: &str = r#"
        [database]
        url = "postgres://pf:hunter2@127.0.0.1:5432/pf"
        [redis]
        url = "redis://127.0.0.1:6379"
    "#;

    #[test]
    fn env_overrides_file_and_names_bad_key() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", BASE)?;
            let src = Sources {
                file: Some("c.toml".into()),
                env_file: None,
            };
            let ok: Demo = load(&src).unwrap();
            assert_eq!(ok.database.max_connections, 10);

            jail.set_env("PRICEFEED__DATABASE__MAX_CONNECTIONS", "3");
            let ok: Demo = load(&src).unwrap();
            assert_eq!(ok.database.max_connections, 3);

            jail.set_env("PRICEFEED__DATABASE__MAX_CONNECTIONS", "lots");
            let err = load::<Demo>(&src).unwrap_err().to_string();
            assert!(err.contains("database.max_connections"), "{err}");
            assert!(
                err.contains("PRICEFEED__DATABASE__MAX_CONNECTIONS"),
                "{err}"
            );

            jail.set_env("PRICEFEED__DATABASE__MAX_CONNECTIONS", "0");
            let err = load::<Demo>(&src).unwrap_err().to_string();
            assert_eq!(
                err,
                "config key `database.max_connections`: must be at least 1"
            );

            jail.set_env("PRICEFEED__DATABASE__MAX_CONNECTIONS", "4");
            jail.set_env("PRICEFEED__REDIS__URL", "http://nope");
            let err = load::<Demo>(&src).unwrap_err().to_string();
            assert!(err.starts_with("config key `redis.url`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn sentinel_settings_come_from_env_as_a_list_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", BASE)?;
            let src = Sources {
                file: Some("c.toml".into()),
                env_file: None,
            };
            let ok: Demo = load(&src).unwrap();
            assert!(ok.redis.sentinel.is_none());

            jail.set_env("PRICEFEED__REDIS__SENTINEL__MASTER_NAME", "pricefeed");
            jail.set_env(
                "PRICEFEED__REDIS__SENTINEL__NODES",
                "10.0.0.1:26379, sentinel-2:26380",
            );
            let ok: Demo = load(&src).unwrap();
            let s = ok.redis.sentinel.expect("sentinel section");
            assert_eq!(s.master_name, "pricefeed");
            assert_eq!(s.nodes, ["10.0.0.1:26379", "sentinel-2:26380"]);

            jail.set_env("PRICEFEED__REDIS__SENTINEL__NODES", "sentinel-1");
            let err = load::<Demo>(&src).unwrap_err().to_string();
            assert_eq!(
                err,
                "config key `redis.sentinel.nodes`: `sentinel-1` is not host:port"
            );
            jail.set_env("PRICEFEED__REDIS__SENTINEL__NODES", "");
            let err = load::<Demo>(&src).unwrap_err().to_string();
            assert!(
                err.starts_with("config key `redis.sentinel.nodes`"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn env_file_is_below_process_env() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", BASE)?;
            jail.create_file(
                "x.env",
                "PRICEFEED__DATABASE__MAX_CONNECTIONS=7\nPRICEFEED__REDIS__KEY_PREFIX=envfile\n",
            )?;
            let src = Sources {
                file: Some("c.toml".into()),
                env_file: Some("x.env".into()),
            };
            let c: Demo = load(&src).unwrap();
            assert_eq!(c.database.max_connections, 7);
            assert_eq!(c.redis.key_prefix, "envfile");
            jail.set_env("PRICEFEED__REDIS__KEY_PREFIX", "proc");
            let c: Demo = load(&src).unwrap();
            assert_eq!(c.redis.key_prefix, "proc");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        Jail::expect_with(|jail| {
            // Unknown sections at the root are tolerated (other binaries own them) but a typo
            // inside a section is not.
            jail.create_file(
                "d.toml",
                &BASE.replace("[redis]", "[redis]\nkey_prefx = \"a\""),
            )?;
            let src = Sources {
                file: Some("d.toml".into()),
                env_file: None,
            };
            let err = load::<Demo>(&src).unwrap_err().to_string();
            assert!(err.contains("key_prefx"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_reported() {
        let src = Sources {
            file: Some("/nonexistent/pricefeed.toml".into()),
            env_file: None,
        };
        let err = load::<Demo>(&src).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pricefeed.toml"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let d: Demo = figment::Figment::from(Toml::string(BASE))
            .extract()
            .unwrap();
        let s = redacted(&d);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("pf:***@127.0.0.1"), "{s}");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        #[derive(Serialize)]
        struct S {
            jwt_secret: String,
            smtp_password: u32,
        }
        let s = redacted(&S {
            jwt_secret: "abc".into(),
            smtp_password: 5,
        });
        assert_eq!(s, r#"{"jwt_secret":"***","smtp_password":"***"}"#);
    }

    #[test]
    fn broker_timeouts_validate_naming_the_key() {
        let broker = |connect, total| BrokerConfig {
            spot_rest_url: "http://a".into(),
            spot_ws_url: "ws://a".into(),
            futures_rest_url: "http://a".into(),
            futures_ws_url: "ws://a".into(),
            options_rest_url: "http://a".into(),
            options_ws_url: "ws://a".into(),
            rest_connect_timeout_ms: connect,
            rest_timeout_ms: total,
        };
        assert!(broker(3000, 15000).validate().is_ok());
        let e = broker(3000, 1000).validate().unwrap_err().to_string();
        assert!(e.contains("broker.rest_timeout_ms"), "{e}");
        let e = broker(10, 1000).validate().unwrap_err().to_string();
        assert!(e.contains("broker.rest_connect_timeout_ms"), "{e}");
    }
}
