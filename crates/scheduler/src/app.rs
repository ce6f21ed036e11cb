//! Wiring of a scheduler or worker process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pricefeed_runtime::{http, ops, problem, shutdown::Shutdown, telemetry};

use pricefeed_store::jobs::Jobs;
use pricefeed_store::protocol::Keys;

use crate::config::SchedulerConfig;
use crate::email::EmailSender;
use crate::feed_health::FeedHealth;
use crate::housekeeping::{RankUpkeep, Retention};
use crate::leader::{LeaderLoop, LeaderStatus, LeaderTask};
use crate::reconcile::Reconciler;
use crate::reconcile::jobs::ReconcileJobs;
use crate::sync::Syncer;
use crate::worker::{JobHandler, Runner};

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
    let readiness = ops::Readiness::new(shutdown.clone());
    let pricefeed_store::Deps { db, redis } =
        pricefeed_store::connect_deps(&cfg.database, &cfg.redis, &readiness).await?;

    if role == Role::Scheduler {
        // Install the recorder first: gauges set before it exists are lost, and a standby must
        // report `pricefeed_scheduler_is_leader 0` from the start.
        telemetry::metrics_handle();
        let status = Arc::new(LeaderStatus::default());
        {
            let status = status.clone();
            // Reported, not gating: a standby is ready to take over, which is its job.
            readiness.add_status("leader", move || {
                let s = status.describe();
                async move { Ok(s) }
            });
        }
        let holder = holder_id();
        tracing::info!(holder = %holder, "contending for the scheduler lease");
        let rebalance_now = Arc::new(tokio::sync::Notify::new());
        let client = pricefeed_broker::rest_client::RestClient::from_config(&cfg.broker)
            .map_err(|e| anyhow::anyhow!("broker REST client: {e}"))?
            .with_hold_board(Arc::new(pricefeed_store::rest_hold::RedisHoldBoard::new(
                redis.clone(),
                Keys::new(&cfg.redis.key_prefix),
            )));
        let syncer = Syncer {
            client,
            db: db.clone(),
            redis: redis.clone(),
            prefix: cfg.redis.key_prefix.clone(),
            underlyings_every: Duration::from_millis(cfg.scheduler.sync_underlyings_ms),
            derivatives_every: Duration::from_millis(cfg.scheduler.sync_derivatives_ms),
            rebalance_now: rebalance_now.clone(),
        };
        // Everything the leader runs under its term, one line each.
        let tasks: Vec<Arc<dyn LeaderTask>> = vec![
            Arc::new(syncer),
            Arc::new(FeedHealth {
                redis: redis.clone(),
                prefix: cfg.redis.key_prefix.clone(),
                check_every: Duration::from_millis(cfg.scheduler.feed_check_ms),
                stale_after_ms: cfg.scheduler.feed_stale_after_ms,
                node_dead_after_ms: cfg.scheduler.node_dead_after_ms,
            }),
            Arc::new(Retention {
                db: db.clone(),
                cfg: cfg.retention.clone(),
                every: Duration::from_secs(600),
            }),
            Arc::new(ReconcileJobs {
                db: db.clone(),
                every: Duration::from_secs(5),
            }),
            Arc::new(RankUpkeep {
                redis: redis.clone(),
                keys: Keys::new(&cfg.redis.key_prefix),
                every: Duration::from_secs(10),
                stale_after: Duration::from_secs(30),
            }),
        ];
        let leader = LeaderLoop {
            cfg: cfg.scheduler.clone(),
            db: db.clone(),
            redis: redis.clone(),
            prefix: cfg.redis.key_prefix.clone(),
            holder,
            status,
            tasks,
            tracker: shutdown.tracker().clone(),
            rebalance_now,
        };
        shutdown.tracker().spawn(leader.run(shutdown.token()));
    }

    if role == Role::Worker {
        telemetry::metrics_handle();
        let client = pricefeed_broker::rest_client::RestClient::from_config(&cfg.broker)
            .map_err(|e| anyhow::anyhow!("broker REST client: {e}"))?
            .with_hold_board(Arc::new(pricefeed_store::rest_hold::RedisHoldBoard::new(
                redis.clone(),
                Keys::new(&cfg.redis.key_prefix),
            )));
        let holder = holder_id();
        // Job handlers, one line each.
        let handlers: Vec<Arc<dyn JobHandler>> = vec![
            Arc::new(Reconciler::new(
                db.clone(),
                redis.clone(),
                Keys::new(&cfg.redis.key_prefix),
                client,
                cfg.reconcile.clone(),
                &cfg.vwap,
                cfg.retention.clone(),
            )),
            Arc::new(EmailSender::new(db.clone(), &cfg.email, &holder)?),
        ];
        tracing::info!(host = %cfg.email.host, port = cfg.email.port, tls = ?cfg.email.tls,
            "alert emails go through this SMTP relay");
        let runner = Runner {
            jobs: Jobs::new(db.clone(), &holder),
            handlers,
            concurrency: cfg.worker.concurrency,
            poll: Duration::from_millis(cfg.worker.poll_ms),
            lease: Duration::from_millis(cfg.worker.lease_ms),
        };
        shutdown.tracker().spawn(runner.run(shutdown.token()));
    }

    let http_cfg = match role {
        Role::Scheduler => &cfg.scheduler.http,
        Role::Worker => &cfg.worker.http,
    };
    let router = ops::router(readiness).fallback(problem::not_found_fallback);
    let router =
        http::with_common_layers(router, Duration::from_millis(http_cfg.request_timeout_ms));
    let (listener, addr) = http::bind(http_cfg.bind).await?;
    telemetry::spawn_upkeep(shutdown);
    http::spawn_server_with(listener, router, http_cfg.server_limits(), shutdown);
    tracing::info!(%addr, role = role.as_str(), "listening");
    Ok(Running { addr })
}

/// Lease holder identity: host, pid and a random part, so two schedulers on one host (or a
/// restarted one reusing a pid) never mistake each other's lease for their own.
fn holder_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "scheduler".into());
    // RandomState is randomly keyed per process, which is all a uniqueness suffix needs.
    let suffix = RandomState::new().hash_one(std::process::id()) & 0xff_ffff;
    format!("{host}-{}-{suffix:06x}", std::process::id())
}
