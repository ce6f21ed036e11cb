//! Leader tasks that keep storage tidy:
//!
//! - [`Retention`]: daily partitions of the history tables exist a few days ahead (writers
//!   create a missing one on demand too), and partitions older than `[retention]` are dropped
//!   whole — no row-by-row deletes, no vacuum debt.
//! - [`RankUpkeep`]: rank entries nobody refreshed for a while (the instrument was delisted, or
//!   left every slice) leave the rank sets and the statistics hash, so `of` in a rank counts
//!   only instruments that are actually ranked. Owners rewrite theirs every few seconds, so a
//!   flushed Redis is rebuilt by them, not here.

use std::time::Duration;

use futures_util::future::BoxFuture;
use pricefeed_store::history::RetentionConfig;
use pricefeed_store::history::partitions::{self, DAY_MS, Table};
use pricefeed_store::protocol::{Keys, StatsDoc};
use pricefeed_store::redis_conn::RedisConn;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::leader::LeaderTask;

/// Partition upkeep.
#[derive(Debug, Clone)]
pub struct Retention {
    pub db: PgPool,
    pub cfg: RetentionConfig,
    pub every: Duration,
}

impl LeaderTask for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn run(&self, _term: u64, token: CancellationToken) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            let mut tick = tokio::time::interval(this.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.round(crate::reconcile::now_ms()).await {
                    tracing::warn!(error = %e, "partition upkeep failed; retrying next round");
                }
            }
        })
    }
}

impl Retention {
    /// Days kept by `table`.
    fn days(&self, table: Table) -> u32 {
        match table {
            Table::Trades => self.cfg.trades_days,
            Table::Buckets1s | Table::Buckets1m => self.cfg.buckets_days,
            Table::VwapHistory => self.cfg.vwap_history_days,
        }
    }

    /// One round at `now`: create ahead, drop behind.
    pub async fn round(&self, now: i64) -> Result<(), sqlx::Error> {
        for t in Table::ALL {
            let created = partitions::ensure(&self.db, t, now - DAY_MS, now + 3 * DAY_MS).await?;
            // Keep whole days: the partition holding now - days stays until it is entirely older.
            let before = (now.div_euclid(DAY_MS) - i64::from(self.days(t))) * DAY_MS;
            let dropped = partitions::drop_before(&self.db, t, before).await?;
            if created + dropped > 0 {
                tracing::info!(table = t.name(), created, dropped, "partitions maintained");
            }
            metrics::counter!("pricefeed_partitions_dropped_total", "table" => t.name())
                .increment(dropped as u64);
        }
        Ok(())
    }
}

/// Rank and statistics upkeep.
#[derive(Debug, Clone)]
pub struct RankUpkeep {
    pub redis: RedisConn,
    pub keys: Keys,
    pub every: Duration,
    /// Entries not refreshed for this long are removed.
    pub stale_after: Duration,
}

impl LeaderTask for RankUpkeep {
    fn name(&self) -> &'static str {
        "rank upkeep"
    }

    fn run(&self, _term: u64, token: CancellationToken) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            let mut tick = tokio::time::interval(this.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.round(crate::reconcile::now_ms()).await {
                    tracing::debug!(error = %e, "rank upkeep failed; retrying next round");
                }
            }
        })
    }
}

impl RankUpkeep {
    /// Removes entries last refreshed before `now - stale_after`; returns how many.
    pub async fn round(&self, now: i64) -> redis::RedisResult<usize> {
        let mut redis = self.redis.clone();
        let cutoff = now - self.stale_after.as_millis() as i64;
        let stale: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.rank_seen())
            .arg("-inf")
            .arg(cutoff)
            .query_async(&mut redis)
            .await?;
        if stale.is_empty() {
            return Ok(0);
        }
        let docs: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.stats())
            .arg(&stale)
            .query_async(&mut redis)
            .await?;
        let mut pipe = redis::pipe();
        for (field, doc) in stale.iter().zip(docs) {
            if let Some(d) = doc.and_then(|s| serde_json::from_str::<StatsDoc>(&s).ok())
                && !d.group.is_empty()
            {
                pipe.zrem(self.keys.rank(&d.group), field).ignore();
            }
            pipe.hdel(self.keys.stats(), field).ignore();
        }
        // Only what is still stale: an owner may have refreshed an entry meanwhile.
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.rank_seen())
            .arg("-inf")
            .arg(cutoff)
            .ignore();
        pipe.query_async::<()>(&mut redis).await?;
        tracing::info!(removed = stale.len(), "stale rank entries removed");
        Ok(stale.len())
    }
}
