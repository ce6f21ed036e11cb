//! The worker role: claims due jobs from Postgres ([`pricefeed_store::jobs`]) and runs them
//! with their [`JobHandler`], any number of worker replicas side by side.
//!
//! Each job kind has its own claim loop with up to `worker.concurrency` jobs at once, so a
//! backlog of reconciliation never holds an alert email back. Each job runs with its lease renewed every third of
//! `worker.lease_ms`; a renewal that fails (the lease expired, another worker took the job)
//! cancels the handler, whose committing writes are fenced anyway. When nothing is due the
//! runner polls every `worker.poll_ms`. On shutdown, running jobs are cancelled and their
//! claims released for the next worker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use pricefeed_runtime::config::{ConfigError, HttpConfig};
use pricefeed_store::jobs::{Claimed, Jobs};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// `[worker]`: the worker role.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// Ops listener (`/livez`, `/readyz`, `/metrics`).
    pub http: HttpConfig,
    /// Jobs of each kind run at once by one worker.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How often an idle worker looks for due jobs.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Claim lease: a dead worker's jobs are taken over after at most this long.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_concurrency() -> usize {
    8
}
fn default_poll_ms() -> u64 {
    250
}
fn default_lease_ms() -> u64 {
    30_000
}

impl WorkerSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate("worker.http")?;
        if !(1..=256).contains(&self.concurrency) {
            return Err(ConfigError::key(
                "worker.concurrency",
                "must be between 1 and 256",
            ));
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return Err(ConfigError::key(
                "worker.poll_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(1_000..=3_600_000).contains(&self.lease_ms) {
            return Err(ConfigError::key(
                "worker.lease_ms",
                "must be between 1000 and 3600000",
            ));
        }
        Ok(())
    }
}

/// What a job run ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Recurring job: run again after this.
    Reschedule(Duration),
    /// Failed, worth retrying after this.
    Retry(Duration, String),
    /// One-shot job finished.
    Done,
    /// Failed for good (dead letter).
    Dead(String),
    /// The handler already closed the job row itself, in the transaction that recorded its
    /// result (fenced by `lease_seq`); nothing left to write.
    Closed,
}

/// Runs jobs of one kind.
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Runs `job`; `token` is cancelled when the claim is lost or the worker stops.
    fn run(
        &self,
        job: Claimed,
        jobs: Jobs,
        token: CancellationToken,
    ) -> BoxFuture<'static, JobOutcome>;
}

/// The claim-and-run loop.
pub struct Runner {
    pub jobs: Jobs,
    pub handlers: Vec<Arc<dyn JobHandler>>,
    pub concurrency: usize,
    pub poll: Duration,
    pub lease: Duration,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field(
                "kinds",
                &self.handlers.iter().map(|h| h.kind()).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl Runner {
    /// Runs until `token` is cancelled: one claim loop (lane) per job kind, each with
    /// `concurrency` slots of its own, so a backlog of one kind (reconciliation after a long
    /// stop: a thousand jobs due at once) never delays another (an alert email).
    pub async fn run(self, token: CancellationToken) {
        let this = Arc::new(self);
        let lanes = this
            .handlers
            .iter()
            .map(|h| this.clone().lane(h.clone(), token.clone()));
        futures_util::future::join_all(lanes).await;
    }

    async fn lane(self: Arc<Self>, handler: Arc<dyn JobHandler>, token: CancellationToken) {
        let kinds = [handler.kind()];
        let mut running: JoinSet<()> = JoinSet::new();
        let mut failing = false;
        loop {
            let room = self.concurrency.saturating_sub(running.len());
            let mut claimed = Vec::new();
            if room > 0 {
                match self.jobs.claim(&kinds, room as i64, self.lease).await {
                    Ok(c) => {
                        if failing {
                            tracing::info!(kind = kinds[0], "job claims recovered");
                            failing = false;
                        }
                        claimed = c;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(kind = kinds[0], error = %e, "claiming jobs failed; retrying");
                            failing = true;
                        }
                    }
                }
            }
            let got = !claimed.is_empty();
            for job in claimed {
                running.spawn(run_one(
                    handler.clone(),
                    self.jobs.clone(),
                    job,
                    self.lease,
                    token.child_token(),
                ));
            }
            // Busy: look again as soon as a slot frees; idle: poll.
            let wait = if got && running.len() < self.concurrency {
                Duration::ZERO
            } else {
                self.poll
            };
            tokio::select! {
                () = token.cancelled() => break,
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        while running.join_next().await.is_some() {}
    }
}

async fn run_one(
    h: Arc<dyn JobHandler>,
    jobs: Jobs,
    job: Claimed,
    lease: Duration,
    token: CancellationToken,
) {
    let started = std::time::Instant::now();
    let kind = h.kind();
    let work = h.run(job.clone(), jobs.clone(), token.clone());
    tokio::pin!(work);
    let mut renew = tokio::time::interval(lease / 3);
    renew.tick().await;
    let outcome = loop {
        tokio::select! {
            o = &mut work => break Some(o),
            _ = renew.tick() => {
                match jobs.renew(&job, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(kind, key = %job.key, "job claim lost; stopping it");
                        token.cancel();
                    }
                    Err(e) => tracing::warn!(kind, error = %e, "renewing a job claim failed"),
                }
            }
        }
    };
    let res = match outcome {
        Some(JobOutcome::Reschedule(after)) => jobs.reschedule(&job, after).await,
        Some(JobOutcome::Retry(after, e)) => jobs.retry_later(&job, after, &e).await,
        Some(JobOutcome::Done) => jobs.done(&job).await,
        Some(JobOutcome::Dead(e)) => jobs.dead(&job, &e).await,
        Some(JobOutcome::Closed) | None => Ok(false),
    };
    if let Err(e) = res {
        tracing::warn!(kind, error = %e, "recording a job outcome failed; its lease will expire");
    }
    metrics::histogram!("pricefeed_job_seconds", "kind" => kind)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::PgPool;
    use tokio::sync::Notify;

    /// Holds its slot until cancelled, like a reconciliation job waiting on the REST budget.
    struct Slow;
    impl JobHandler for Slow {
        fn kind(&self) -> &'static str {
            "slow"
        }
        fn run(
            &self,
            _: Claimed,
            _: Jobs,
            token: CancellationToken,
        ) -> BoxFuture<'static, JobOutcome> {
            Box::pin(async move {
                token.cancelled().await;
                JobOutcome::Reschedule(Duration::from_secs(60))
            })
        }
    }

    struct Fast(Arc<Notify>);
    impl JobHandler for Fast {
        fn kind(&self) -> &'static str {
            "fast"
        }
        fn run(&self, _: Claimed, _: Jobs, _: CancellationToken) -> BoxFuture<'static, JobOutcome> {
            let done = self.0.clone();
            Box::pin(async move {
                done.notify_one();
                JobOutcome::Done
            })
        }
    }

    #[sqlx::test(migrator = "pricefeed_store::pg::MIGRATOR")]
    async fn a_backlog_of_one_kind_never_holds_another_back(pool: PgPool) {
        let jobs = Jobs::new(pool.clone(), "worker-test");
        for i in 0..10 {
            jobs.ensure("slow", &i.to_string(), &serde_json::json!({}))
                .await
                .unwrap();
        }
        let done = Arc::new(Notify::new());
        let runner = Runner {
            jobs: jobs.clone(),
            handlers: vec![Arc::new(Slow), Arc::new(Fast(done.clone()))],
            concurrency: 2,
            poll: Duration::from_millis(20),
            lease: Duration::from_secs(30),
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(runner.run(token.clone()));
        // Every slot the slow kind may take is taken before the fast job exists.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leased: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE kind = 'slow' AND lease_owner IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if leased == 2 {
                break;
            }
            assert!(std::time::Instant::now() < until, "slow jobs never claimed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        jobs.ensure("fast", "1", &serde_json::json!({}))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), done.notified())
            .await
            .expect("the fast job ran although the slow kind filled its slots");
        token.cancel();
        task.await.unwrap();
    }
}
