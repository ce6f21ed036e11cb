//! The scheduler's leader role: hold the lease, and while leading keep the slice assignment in
//! step with the live nodes and the instrument set, and run the leader tasks ([`LeaderTask`]:
//! instrument sync, feed health, retention, reconciliation jobs, rank housekeeping).
//!
//! One task runs the whole loop, so lease renewal and leader work can never disagree about
//! whether this process leads. Leader work is gated on a lease renewed within its TTL: when a renew
//! fails or errors, or Redis is too slow to answer before the lease would have expired, the
//! process stops leading at once (and says so in metrics and `/readyz`) rather than acting on a
//! lease someone else may hold by now. Every write carries the fencing term anyway, so a write
//! racing the takeover is refused by Redis and Postgres.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pricefeed_domain::assignment::{Assignment, NodeId, rebalance};
use pricefeed_store::assignment::{self as published, Published};
use pricefeed_store::lease::Lease;
use pricefeed_store::redis_conn::RedisConn;
use pricefeed_store::registry::Registry;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use futures_util::future::BoxFuture;

use crate::config::SchedulerSection;

/// Work that runs only while this process leads: started under each new leadership term with
/// a child of that term's token, cancelled when leadership ends. Registering one is a line in
/// `app.rs`; there is one spawn path for all of them ([`LeaderLoop`]).
pub trait LeaderTask: std::fmt::Debug + Send + Sync + 'static {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Runs under `term` until `token` is cancelled. Writes must carry `term` (fencing).
    fn run(&self, term: u64, token: CancellationToken) -> BoxFuture<'static, ()>;
}

/// What `/readyz` and the metrics show about leadership; shared with the HTTP side.
#[derive(Debug, Default)]
pub struct LeaderStatus {
    leading: AtomicBool,
    term: AtomicU64,
    epoch: AtomicU64,
}

impl LeaderStatus {
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Human-readable state for the `/readyz` check (a standby is ready too).
    pub fn describe(&self) -> String {
        if self.is_leader() {
            format!(
                "leader term={} epoch={}",
                self.term.load(Ordering::Acquire),
                self.epoch.load(Ordering::Acquire)
            )
        } else {
            "standby".into()
        }
    }

    fn set_leading(&self, term: Option<u64>) {
        self.leading.store(term.is_some(), Ordering::Release);
        if let Some(t) = term {
            self.term.store(t, Ordering::Release);
        }
        metrics::gauge!("pricefeed_scheduler_is_leader").set(if term.is_some() {
            1.0
        } else {
            0.0
        });
    }

    fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
        metrics::gauge!("pricefeed_assignment_epoch").set(epoch as f64);
    }
}

/// Everything the leader loop needs.
#[derive(Debug)]
pub struct LeaderLoop {
    pub cfg: SchedulerSection,
    pub db: PgPool,
    pub redis: RedisConn,
    pub prefix: String,
    pub holder: String,
    pub status: Arc<LeaderStatus>,
    /// Started for each leadership term, stopped when it ends.
    pub tasks: Vec<Arc<dyn LeaderTask>>,
    /// Where leader tasks are spawned, so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Woken by the sync after a change: rebalance now instead of on the next tick.
    pub rebalance_now: Arc<Notify>,
}

/// State held only while leading; dropped on losing the lease.
struct Leading {
    term: u64,
    /// The assignment last published under this term (the input of the next rebalance).
    current: Option<Assignment>,
    renewed_at: Instant,
    /// Until then nodes of the previous assignment that are still listed in the registry count
    /// as alive even without a fresh heartbeat: a new term often follows a Redis failover or restart that also stalled the
    /// nodes' heartbeats, and declaring them dead at once would move every slice for nothing.
    /// New nodes still gain instruments meanwhile.
    grace_until: Instant,
    /// Set when the published assignment vanished from Redis (flush, failover that lost writes):
    /// until then the last assignment is re-published unchanged, giving nodes time to re-register
    /// instead of being declared dead because the registry was wiped with everything else.
    rebuild_until: Option<Instant>,
    /// Cancels this term's leader tasks when leadership ends (the struct is dropped).
    _tasks: DropGuard,
}

impl LeaderLoop {
    /// Runs until `token` is cancelled; releases the lease on the way out so a standby takes over
    /// without waiting for the TTL.
    pub async fn run(self, token: CancellationToken) {
        let mut lease = Lease::new(
            self.redis.clone(),
            &self.prefix,
            &self.holder,
            self.cfg.lease_ttl_ms,
        );
        self.status.set_leading(None);
        let ttl = Duration::from_millis(self.cfg.lease_ttl_ms);
        let mut lease_tick = tokio::time::interval(Duration::from_millis(self.cfg.lease_renew_ms));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut work_tick = tokio::time::interval(Duration::from_millis(self.cfg.rebalance_ms));
        work_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading: Option<Leading> = None;

        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = lease_tick.tick() => {
                    leading = self.lease_step(&mut lease, leading, ttl).await;
                }
                () = async {
                    tokio::select! {
                        _ = work_tick.tick() => {}
                        () = self.rebalance_now.notified() => {}
                    }
                }, if leading.is_some() => {
                    if let Some(l) = leading.as_mut() {
                        // A renew older than the TTL means the lease may be someone else's now.
                        let deadline = ttl.saturating_sub(l.renewed_at.elapsed());
                        let step = tokio::time::timeout(deadline, self.rebalance_step(l)).await;
                        let keep = match step {
                            Ok(Ok(true)) => true,
                            Ok(Ok(false)) => {
                                tracing::warn!(term = l.term, "write fenced off by a newer term; stepping down");
                                false
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(error = %format!("{e:#}"), "rebalance failed; retrying next tick");
                                true
                            }
                            Err(_) => {
                                tracing::warn!(term = l.term, "lease expired during rebalance; stepping down");
                                false
                            }
                        };
                        if !keep {
                            lease.abandon();
                            leading = None;
                            self.status.set_leading(None);
                        }
                    }
                }
            }
        }

        if leading.is_some() {
            match lease.release().await {
                Ok(_) => tracing::info!("lease released"),
                Err(e) => tracing::warn!(error = %e, "lease release failed; it expires by itself"),
            }
            self.status.set_leading(None);
        }
    }

    /// Renews (leader) or tries to acquire (standby) the lease.
    async fn lease_step(
        &self,
        lease: &mut Lease,
        leading: Option<Leading>,
        ttl: Duration,
    ) -> Option<Leading> {
        if let Some(mut l) = leading {
            let deadline = ttl.saturating_sub(l.renewed_at.elapsed());
            match tokio::time::timeout(deadline, lease.renew()).await {
                Ok(Ok(true)) => {
                    l.renewed_at = Instant::now();
                    return Some(l);
                }
                Ok(Ok(false)) => tracing::warn!(term = l.term, "lease lost; stopping leader work"),
                Ok(Err(e)) => {
                    tracing::warn!(term = l.term, error = %e, "lease renew failed; stopping leader work")
                }
                Err(_) => {
                    tracing::warn!(term = l.term, "lease renew timed out; stopping leader work")
                }
            }
            lease.abandon();
            self.status.set_leading(None);
            return None;
        }

        let started = Instant::now();
        let floor = match published::load_state(&self.db).await {
            Ok(s) => s.term,
            Err(e) => {
                // Without the durable floor the term could go backwards after a Redis flush.
                tracing::warn!(error = %e, "cannot read cluster_state; not contending this round");
                return None;
            }
        };
        match lease.try_acquire(floor).await {
            Ok(Some(term)) => {
                if let Err(e) = published::record_term(&self.db, term).await {
                    tracing::warn!(error = %e, term, "cannot record term in Postgres; releasing");
                    let _ = lease.release().await;
                    return None;
                }
                tracing::info!(term, holder = %self.holder, "became leader");
                self.status.set_leading(Some(term));
                // Leader tasks run under this term and stop when the guard drops.
                let term_token = CancellationToken::new();
                for t in &self.tasks {
                    tracing::debug!(task = t.name(), term, "starting leader task");
                    self.tracker.spawn(t.run(term, term_token.child_token()));
                }
                Some(Leading {
                    term,
                    current: None,
                    renewed_at: started,
                    grace_until: Instant::now()
                        + Duration::from_millis(self.cfg.node_dead_after_ms),
                    rebuild_until: None,
                    _tasks: term_token.drop_guard(),
                })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "lease acquire failed");
                None
            }
        }
    }

    /// One leader tick. `Ok(false)` when a write was fenced off (a newer leader exists).
    async fn rebalance_step(&self, l: &mut Leading) -> anyhow::Result<bool> {
        let mut redis = self.redis.clone();
        let mut registry = Registry::new(self.redis.clone(), &self.prefix);
        let dead_after = self.cfg.node_dead_after_ms;
        let listed = registry.list().await?;
        let nodes: BTreeSet<NodeId> = listed
            .iter()
            .filter(|n| n.is_alive(dead_after))
            .map(|n| NodeId::from(n.node_id.as_str()))
            .collect();
        let symbols: BTreeSet<_> = pricefeed_store::instruments::tradable_symbols(&self.db)
            .await?
            .into_iter()
            .collect();
        let stored = published::read(&mut redis, &self.prefix).await?;

        // The starting point: what we published under this term; else what Redis holds; else the
        // durable copy in Postgres, so a flushed Redis neither sends epochs backwards nor
        // reshuffles slices.
        let durable = published::load_state(&self.db).await?;
        let previous = match (&l.current, &stored) {
            (Some(a), _) => a.clone(),
            (None, Some(p)) if p.epoch >= durable.assignment.epoch => p.assignment(),
            _ => durable.assignment.clone(),
        };
        if stored.is_none() && previous.epoch > 0 && l.rebuild_until.is_none() {
            tracing::warn!(
                epoch = previous.epoch,
                "published assignment missing from Redis; re-publishing it while nodes re-register"
            );
            l.rebuild_until = Some(Instant::now() + Duration::from_millis(dead_after));
        }
        let rebuilding = l.rebuild_until.is_some_and(|u| Instant::now() < u);
        if !rebuilding && stored.is_some() {
            l.rebuild_until = None;
        }
        let next = if rebuilding {
            previous.clone()
        } else if Instant::now() < l.grace_until {
            // Listed but stale, not deregistered: a node that stopped on purpose still leaves.
            let listed: BTreeSet<NodeId> = listed
                .iter()
                .map(|n| NodeId::from(n.node_id.as_str()))
                .collect();
            let mut keep = nodes.clone();
            keep.extend(
                previous
                    .owners
                    .values()
                    .filter(|n| listed.contains(*n))
                    .cloned(),
            );
            rebalance(&previous, &keep, &symbols)
        } else {
            rebalance(&previous, &nodes, &symbols)
        };
        let in_redis = stored
            .as_ref()
            .is_some_and(|p| p.epoch == next.epoch && p.term == l.term);

        if next.epoch != previous.epoch || !in_redis {
            // Postgres first: once an epoch is visible in Redis, it is already durable.
            if !published::record_assignment(&self.db, &next, l.term).await? {
                return Ok(false);
            }
            let doc = Published {
                epoch: next.epoch,
                term: l.term,
                published_at_ms: 0,
                node_dead_after_ms: dead_after,
                owners: next.owners.clone(),
            };
            if !published::publish(&mut redis, &self.prefix, &doc).await? {
                return Ok(false);
            }
            let moves = previous.diff(&next);
            tracing::info!(
                epoch = next.epoch,
                term = l.term,
                nodes = nodes.len(),
                instruments = symbols.len(),
                moved = moves.len(),
                "assignment published"
            );
        }
        self.status.set_epoch(next.epoch);
        l.current = Some(next);

        // Long-gone nodes drop out of the cluster view; recently dead ones stay visible.
        let _ = registry.prune(dead_after.saturating_mul(20)).await;
        Ok(true)
    }
}
