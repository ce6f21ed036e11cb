//! Storage adapters: Postgres (source of truth) and Redis (rebuildable state).
//!
//! - [`alerts`]: users, refresh tokens, alerts, triggers and the delivery outbox.
//! - [`email`]: the send log of email deliveries (in-flight marking, fenced by the job claim).
//! - [`pg`]: pool construction, migrations under an advisory lock, readiness check.
//! - [`instruments`]: the instrument repository (underlyings and derivatives).
//! - [`redis_conn`]: Redis connection manager and readiness check.
//! - [`registry`]: node registry (records with a TTL, heartbeat times in a sorted set).
//! - [`lease`]: the scheduler leader lease with a fencing term.
//! - [`assignment`]: the published slice assignment (Redis) and its durable epoch (Postgres).
//! - [`sync`]: instrument sync writes (whole catalogue per transaction, fenced by the term).
//! - [`feed`]: feed-health hash and per-node order channel keys, the reconnect order.
//! - [`history`]: trade history: the ingest writer (with its disk spill), window sums, candles,
//!   VWAP history, and the storage side of REST reconciliation.
//! - [`jobs`]: background jobs claimed by workers (`FOR UPDATE SKIP LOCKED` + lease + fence).
//! - [`protocol`]: every Redis key, channel and payload of the cluster.
//! - [`rest_hold`]: the board that shares broker REST holds (after a 429/418) across processes.

pub mod alerts;
pub mod assignment;
pub mod email;
pub mod feed;
pub mod history;
pub mod instruments;
pub mod jobs;
pub mod lease;
pub mod pg;
pub mod protocol;
pub mod redis_conn;
pub mod registry;
pub mod rest_hold;
pub mod sync;

#[cfg(test)]
mod redis_tests;

/// The Postgres pool and Redis connection every long-running process holds.
#[derive(Debug, Clone)]
pub struct Deps {
    pub db: sqlx::PgPool,
    pub redis: redis_conn::RedisConn,
}

/// Connects Postgres (migrating when `database.migrate_on_start`) and Redis, and registers both
/// as readiness checks, so every binary reports the same `postgres`/`redis` checks.
pub async fn connect_deps(
    database: &pricefeed_runtime::config::DatabaseConfig,
    redis_cfg: &pricefeed_runtime::config::RedisConfig,
    readiness: &pricefeed_runtime::ops::Readiness,
) -> anyhow::Result<Deps> {
    let db = pg::connect(database).await?;
    if database.migrate_on_start {
        pg::migrate(&db).await?;
    }
    let redis = redis_conn::connect(redis_cfg).await?;
    {
        let db = db.clone();
        readiness.add("postgres", move || {
            let db = db.clone();
            async move { pg::ping(&db).await }
        });
    }
    {
        let redis = redis.clone();
        readiness.add("redis", move || redis_conn::ping(redis.clone()));
    }
    Ok(Deps { db, redis })
}
