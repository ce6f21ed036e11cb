//! Postgres pool and migrations.
//!
//! Migrations are embedded at compile time from the workspace's `migrations/` folder. sqlx's
//! Postgres migrator takes a session advisory lock around the run, so every binary may migrate at
//! start concurrently: one applies, the others wait and then find nothing to do.

use std::time::Duration;

use pricefeed_runtime::config::DatabaseConfig;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

/// Every migration of the workspace.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool; fails with a message naming the (redacted) URL when Postgres is unreachable.
pub async fn connect(cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
        .connect(cfg.url.expose())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to Postgres at {} (config key `database.url`): {e}",
                cfg.url.redacted()
            )
        })
}

/// Applies pending migrations; safe to call from many processes at once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    Ok(())
}

/// Readiness probe: one round trip.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("postgres: {e}"))
}

/// The `migrate` subcommand: connect, apply pending migrations, log it.
pub async fn connect_and_migrate(cfg: &DatabaseConfig) -> anyhow::Result<()> {
    let pool = connect(cfg).await?;
    migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}
