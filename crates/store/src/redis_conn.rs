//! Redis connection handling.
//!
//! One multiplexed [`ConnectionManager`] per process; it reconnects on its own. Everything stored
//! in Redis can be rebuilt from Postgres and the broker, so a lost Redis costs freshness, never
//! data.

use pricefeed_runtime::config::RedisConfig;
use redis::aio::ConnectionManager;

/// Connects and checks the server answers.
pub async fn connect(cfg: &RedisConfig) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(cfg.url.expose())
        .map_err(|e| anyhow::anyhow!("config key `redis.url`: {e}"))?;
    let mut cm = ConnectionManager::new(client).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to Redis at {} (config key `redis.url`): {e}",
            cfg.url.redacted()
        )
    })?;
    let _: String = redis::cmd("PING").query_async(&mut cm).await?;
    Ok(cm)
}

/// Readiness probe.
pub async fn ping(mut cm: ConnectionManager) -> Result<(), String> {
    redis::cmd("PING")
        .query_async::<String>(&mut cm)
        .await
        .map(|_| ())
        .map_err(|e| format!("redis: {e}"))
}
