//! Leader task: one `reconcile` job per listed instrument, and the reconciliation lag.
//!
//! Every few seconds it creates the missing jobs (idempotent: `(kind, key)` is unique), drops
//! the jobs of instruments delisted more than a day ago (their tail had a day to be confirmed),
//! and publishes the lag of the validated cursors (now − `through_ms`) per market as gauges
//! `pricefeed_reconcile_lag_seconds{market, stat=max|p50}` plus the count of instruments more
//! than two minutes behind (`pricefeed_reconcile_behind_instruments{market}`). The lag per
//! instrument is at `GET /api/v1/cluster/reconcile` on any node.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::leader::LeaderTask;

/// The leader task.
#[derive(Debug, Clone)]
pub struct ReconcileJobs {
    pub db: PgPool,
    pub every: Duration,
}

impl LeaderTask for ReconcileJobs {
    fn name(&self) -> &'static str {
        "reconciliation jobs"
    }

    fn run(&self, _term: u64, token: CancellationToken) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            let mut tick = tokio::time::interval(this.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.round().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("reconciliation job upkeep recovered");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "reconciliation job upkeep failed; retrying");
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

impl ReconcileJobs {
    async fn round(&self) -> Result<(), sqlx::Error> {
        let created = sqlx::query(
            "INSERT INTO jobs (kind, key) \
             SELECT 'reconcile', i.id::text FROM instruments i \
             WHERE EXISTS (SELECT 1 FROM underlyings u WHERE i.market = 'spot' AND u.symbol = i.symbol \
                             AND (u.delisted_at IS NULL OR u.delisted_at > now() - interval '1 day')) \
                OR EXISTS (SELECT 1 FROM derivatives d WHERE d.market = i.market AND d.symbol = i.symbol \
                             AND (d.delisted_at IS NULL OR d.delisted_at > now() - interval '1 day')) \
             ON CONFLICT DO NOTHING",
        )
        .execute(&self.db)
        .await?
        .rows_affected();
        if created > 0 {
            tracing::info!(created, "reconciliation jobs created");
        }
        let dropped = sqlx::query(
            "DELETE FROM jobs j USING instruments i \
             WHERE j.kind = 'reconcile' AND j.key = i.id::text AND j.lease_owner IS NULL \
               AND NOT EXISTS (SELECT 1 FROM underlyings u WHERE i.market = 'spot' AND u.symbol = i.symbol \
                                 AND (u.delisted_at IS NULL OR u.delisted_at > now() - interval '1 day')) \
               AND NOT EXISTS (SELECT 1 FROM derivatives d WHERE d.market = i.market AND d.symbol = i.symbol \
                                 AND (d.delisted_at IS NULL OR d.delisted_at > now() - interval '1 day'))",
        )
        .execute(&self.db)
        .await?
        .rows_affected();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "reconciliation jobs of delisted instruments dropped"
            );
        }
        let lags: Vec<(String, f64, f64, i64)> = sqlx::query_as(
            "SELECT i.market, \
                    max(extract(epoch FROM now()) * 1000 - c.through_ms)::float8 / 1000, \
                    (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM now()) * 1000 - c.through_ms))::float8 / 1000, \
                    count(*) FILTER (WHERE extract(epoch FROM now()) * 1000 - c.through_ms > 120000) \
             FROM reconcile_cursors c JOIN instruments i ON i.id = c.instrument_id \
             JOIN jobs j ON j.kind = 'reconcile' AND j.key = i.id::text \
             WHERE c.through_ms IS NOT NULL GROUP BY i.market",
        )
        .fetch_all(&self.db)
        .await?;
        for (market, max, p50, behind) in lags {
            metrics::gauge!("pricefeed_reconcile_lag_seconds", "market" => market.clone(), "stat" => "max")
                .set(max);
            metrics::gauge!("pricefeed_reconcile_lag_seconds", "market" => market.clone(), "stat" => "p50")
                .set(p50);
            metrics::gauge!("pricefeed_reconcile_behind_instruments", "market" => market)
                .set(behind as f64);
        }
        Ok(())
    }
}
