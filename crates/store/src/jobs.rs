//! Background jobs in Postgres, claimed by worker replicas (docs/decisions/0008-background-work.md).
//!
//! A job is a row of `jobs` (kind, key, when it is due). Workers claim due jobs with
//! `FOR UPDATE SKIP LOCKED` (replicas never wait on each other and never get the same row) and
//! hold them under a lease (`lease_until`); a worker that dies simply stops renewing, and the
//! job is claimable again once the lease ran out. Every claim bumps `lease_seq`, the fencing
//! token: work that commits data checks, inside its own transaction, that its claim is still
//! the current one ([`crate::history::reconcile::commit`] does), so a paused worker waking up
//! after its lease was taken over commits nothing.
//!
//! Jobs are either recurring (reconciliation of one instrument: [`Jobs::reschedule`] after each
//! run) or one-shot with retries (email delivery: [`Jobs::retry_later`] with backoff, then
//! [`Jobs::dead`] after the last attempt).

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

/// Job kinds.
pub const RECONCILE: &str = "reconcile";

/// A claimed job.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub lease_seq: i64,
    /// Attempts including this one.
    pub attempts: i32,
    pub payload: Value,
}

impl Claimed {
    /// The fence to pass to a committing transaction.
    pub fn fence(&self) -> (i64, i64) {
        (self.id, self.lease_seq)
    }
}

/// The job queue of one worker (`owner` names it in `jobs.lease_owner`).
#[derive(Debug, Clone)]
pub struct Jobs {
    pool: PgPool,
    owner: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Jobs {
    pub fn new(pool: PgPool, owner: &str) -> Self {
        Self {
            pool,
            owner: owner.to_string(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the job `(kind, key)` unless it exists; returns whether it was new.
    pub async fn ensure(
        &self,
        kind: &str,
        key: &str,
        payload: &Value,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "INSERT INTO jobs (kind, key, payload) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(kind)
        .bind(key)
        .bind(payload)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Claims up to `n` due jobs of `kinds` for `lease`.
    pub async fn claim(
        &self,
        kinds: &[&str],
        n: i64,
        lease: Duration,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE jobs SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond', \
                 lease_seq = lease_seq + 1, attempts = attempts + 1, updated_at = now() \
             WHERE id IN ( \
                 SELECT id FROM jobs \
                 WHERE state = 'ready' AND kind = ANY($3) AND run_at <= now() \
                   AND (lease_until IS NULL OR lease_until < now()) \
                 ORDER BY run_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING id, kind, key, lease_seq, attempts, payload",
        )
        .bind(&self.owner)
        .bind(ms(lease))
        .bind(kinds)
        .bind(n)
        .fetch_all(&self.pool)
        .await
    }

    /// Extends a held claim; false when it is no longer ours.
    pub async fn renew(&self, job: &Claimed, lease: Duration) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE jobs SET lease_until = now() + $3 * interval '1 millisecond' \
             WHERE id = $1 AND lease_seq = $2 AND lease_until > now()",
        )
        .bind(job.id)
        .bind(job.lease_seq)
        .bind(ms(lease))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Releases a recurring job to run again after `after` (attempts reset).
    pub async fn reschedule(&self, job: &Claimed, after: Duration) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, attempts = 0, last_error = NULL, \
                 run_at = now() + $3 * interval '1 millisecond', updated_at = now() \
             WHERE id = $1 AND lease_seq = $2",
        )
        .bind(job.id)
        .bind(job.lease_seq)
        .bind(ms(after))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Releases a job that failed, to be retried after `after`, keeping the error.
    pub async fn retry_later(
        &self,
        job: &Claimed,
        after: Duration,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, last_error = $3, \
                 run_at = now() + $4 * interval '1 millisecond', updated_at = now() \
             WHERE id = $1 AND lease_seq = $2",
        )
        .bind(job.id)
        .bind(job.lease_seq)
        .bind(error)
        .bind(ms(after))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Marks a one-shot job finished.
    pub async fn done(&self, job: &Claimed) -> Result<bool, sqlx::Error> {
        self.finish(job, "done", None).await
    }

    /// Marks a job permanently failed (dead letter), keeping the error.
    pub async fn dead(&self, job: &Claimed, error: &str) -> Result<bool, sqlx::Error> {
        self.finish(job, "dead", Some(error)).await
    }

    async fn finish(
        &self,
        job: &Claimed,
        state: &str,
        error: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE jobs SET state = $3, lease_owner = NULL, lease_until = NULL, \
                 last_error = COALESCE($4, last_error), updated_at = now() \
             WHERE id = $1 AND lease_seq = $2",
        )
        .bind(job.id)
        .bind(job.lease_seq)
        .bind(state)
        .bind(error)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn replicas_never_share_a_claim_and_expired_leases_are_taken_over(pool: PgPool) {
        let a = Jobs::new(pool.clone(), "worker-a");
        let b = Jobs::new(pool.clone(), "worker-b");
        for k in 0..10 {
            assert!(
                a.ensure(RECONCILE, &k.to_string(), &Value::Null)
                    .await
                    .unwrap()
            );
        }
        assert!(
            !a.ensure(RECONCILE, "3", &Value::Null).await.unwrap(),
            "idempotent"
        );
        // Two replicas claiming concurrently split the work.
        let lease = Duration::from_secs(30);
        let (x, y) = tokio::join!(
            a.claim(&[RECONCILE], 6, lease),
            b.claim(&[RECONCILE], 6, lease)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.len() + y.len(), 10);
        let mut keys: Vec<String> = x.iter().chain(&y).map(|j| j.key.clone()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 10, "no job claimed twice");
        assert!(a.claim(&[RECONCILE], 10, lease).await.unwrap().is_empty());

        // A's claims expire (it "died"); B takes one over with a newer fence, and A's late
        // completion is refused.
        let old = x[0].clone();
        sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1")
            .bind(old.id)
            .execute(&pool)
            .await
            .unwrap();
        let taken = b.claim(&[RECONCILE], 10, lease).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, old.id);
        assert!(taken[0].lease_seq > old.lease_seq);
        assert!(!a.reschedule(&old, Duration::ZERO).await.unwrap());
        assert!(!a.renew(&old, lease).await.unwrap());
        assert!(b.renew(&taken[0], lease).await.unwrap());
        assert!(
            b.reschedule(&taken[0], Duration::from_secs(60))
                .await
                .unwrap()
        );
        // Not due for a minute.
        sqlx::query("UPDATE jobs SET lease_until = NULL WHERE lease_owner IS NOT NULL")
            .execute(&pool)
            .await
            .unwrap();
        let again = a.claim(&[RECONCILE], 20, lease).await.unwrap();
        assert_eq!(again.len(), 9);
        assert!(again.iter().all(|j| j.id != old.id));
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn one_shot_jobs_retry_then_dead_letter(pool: PgPool) {
        let q = Jobs::new(pool.clone(), "w");
        q.ensure("email", "t1", &serde_json::json!({"to": "a@b"}))
            .await
            .unwrap();
        let lease = Duration::from_secs(30);
        let j = q.claim(&["email"], 1, lease).await.unwrap().remove(0);
        assert_eq!(j.attempts, 1);
        assert_eq!(j.payload["to"], "a@b");
        assert!(
            q.retry_later(&j, Duration::ZERO, "451 try later")
                .await
                .unwrap()
        );
        let j = q.claim(&["email"], 1, lease).await.unwrap().remove(0);
        assert_eq!(j.attempts, 2);
        assert!(q.dead(&j, "550 no such user").await.unwrap());
        assert!(q.claim(&["email"], 1, lease).await.unwrap().is_empty());
        let (state, err): (String, String) =
            sqlx::query_as("SELECT state, last_error FROM jobs WHERE key = 't1'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((state.as_str(), err.as_str()), ("dead", "550 no such user"));
    }
}
