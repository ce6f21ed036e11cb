//! Wiring of a scheduler or worker process.

use std::net::SocketAddr;
use std::time::Duration;

use pricefeed_runtime::{http, ops, problem, shutdown::Shutdown, telemetry};

use crate::config::SchedulerConfig;

/// Which role this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Scheduler,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Worker => "worker",
        }
    }
}

/// A started process.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
}

/// Connects, migrates when configured, registers readiness and serves the ops routes.
pub async fn start(
    cfg: &SchedulerConfig,
    role: Role,
    shutdown: &Shutdown,
) -> anyhow::Result<Running> {
    let db = pricefeed_store::pg::connect(&cfg.database).await?;
    if cfg.database.migrate_on_start {
        pricefeed_store::pg::migrate(&db).await?;
    }
    let redis = pricefeed_store::redis_conn::connect(&cfg.redis).await?;

    let readiness = ops::Readiness::new(shutdown.clone());
    readiness.add("postgres", move || {
        let db = db.clone();
        async move { pricefeed_store::pg::ping(&db).await }
    });
    readiness.add("redis", move || {
        pricefeed_store::redis_conn::ping(redis.clone())
    });

    let section = match role {
        Role::Scheduler => &cfg.scheduler,
        Role::Worker => &cfg.worker,
    };
    let router = ops::router(readiness).fallback(problem::not_found_fallback);
    let router = http::with_common_layers(
        router,
        Duration::from_millis(section.http.request_timeout_ms),
    );
    let (listener, addr) = http::bind(section.http.bind).await?;
    telemetry::spawn_upkeep(shutdown);
    http::spawn_server(listener, router, shutdown);
    tracing::info!(%addr, role = role.as_str(), "listening");
    Ok(Running { addr })
}
