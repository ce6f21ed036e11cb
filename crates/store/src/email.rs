//! The send log of email deliveries (`email_attempts`, migration
//! `20261205000001_email_attempts.sql`; docs/decisions/0011-email-delivery.md).
//!
//! [`begin_attempt`] records an attempt as in flight, fenced by the worker's job claim, before
//! any byte goes to the SMTP server; [`finish_attempt`] records the server's answer and moves
//! the delivery to `sent` or `dead` when that is final. An attempt found still in flight by
//! the next worker was interrupted (its worker died or lost the claim mid-send): it becomes
//! `unknown`, and the caller learns it must re-send with the same Message-ID.

use std::time::Duration;

use sqlx::PgPool;

/// What [`begin_attempt`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Send now as attempt `attempt` (1-based). `interrupted`: an earlier attempt of this
    /// delivery was in flight when its worker was lost, so the server may already hold a copy.
    Send {
        attempt: i32,
        interrupted: Option<i32>,
    },
    /// Nothing to send: the delivery is gone or no longer pending (its state).
    Skip(String),
    /// The job claim is no longer ours, or it would run out before a send could finish.
    Fenced,
}

/// Starts attempt n+1 of email delivery `delivery_id` for the job claim `fence`
/// (`(job id, lease_seq)`) held by `worker`, provided the claim is current and its lease
/// outlives `send_timeout` (so a live worker's send always ends before its job can be taken
/// over).
pub async fn begin_attempt(
    pool: &PgPool,
    delivery_id: i64,
    fence: (i64, i64),
    worker: &str,
    send_timeout: Duration,
) -> Result<Begin, sqlx::Error> {
    // One statement, one round trip (it runs once per mail). The claim is read FOR SHARE, so a
    // takeover (the claim UPDATE) waits until this attempt is recorded and the next holder
    // always sees it; the delivery row is locked by its UPDATE, which re-checks `pending`.
    // Data-modifying CTEs share one snapshot: `lost` cannot see the row `ins` adds.
    let row: (bool, Option<String>, Option<i32>, Option<i32>) = sqlx::query_as(
        "WITH fence AS ( \
             SELECT id FROM jobs WHERE id = $2 AND lease_seq = $3 \
               AND lease_until > now() + $5 * interval '1 millisecond' FOR SHARE), \
         bump AS ( \
             UPDATE deliveries SET attempts = attempts + 1 \
             WHERE id = $1 AND state = 'pending' AND EXISTS (SELECT 1 FROM fence) \
             RETURNING attempts), \
         lost AS ( \
             UPDATE email_attempts SET outcome = 'unknown', finished_at = now(), \
                 detail = 'worker lost while sending; the server may hold a copy; re-sent with the same Message-ID' \
             WHERE delivery_id = $1 AND outcome IS NULL AND EXISTS (SELECT 1 FROM bump) \
             RETURNING attempt), \
         ins AS ( \
             INSERT INTO email_attempts (delivery_id, attempt, worker, lease_seq) \
             SELECT $1, attempts, $4, $3 FROM bump) \
         SELECT EXISTS (SELECT 1 FROM fence), \
                (SELECT state FROM deliveries WHERE id = $1), \
                (SELECT attempts FROM bump), \
                (SELECT max(attempt) FROM lost)",
    )
    .bind(delivery_id)
    .bind(fence.0)
    .bind(fence.1)
    .bind(worker)
    .bind(send_timeout.as_secs_f64() * 1000.0)
    .fetch_one(pool)
    .await?;
    Ok(match row {
        (false, _, _, _) => Begin::Fenced,
        (true, _, Some(attempt), interrupted) => Begin::Send {
            attempt,
            interrupted,
        },
        (true, None, None, _) => Begin::Skip("gone".into()),
        // The snapshot may still say `pending` when a concurrent finish won the row lock.
        (true, Some(s), None, _) if s == "pending" => Begin::Skip("finished meanwhile".into()),
        (true, Some(s), None, _) => Begin::Skip(s),
    })
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult<'a> {
    /// `accepted`, `transient` or `permanent`.
    pub outcome: &'a str,
    pub smtp_code: Option<u16>,
    /// The reply or error text.
    pub detail: &'a str,
    /// `Some("sent" | "dead")` when the delivery is final, `None` to keep it pending.
    pub final_state: Option<&'a str>,
    /// What `GET /alerts/{id}/notifications` shows as `last_error` (unchanged when `None`).
    pub last_error: Option<&'a str>,
    /// With a final state: the job claim `(job id, lease_seq)` to close in the same statement
    /// (`done`, or `dead` with `last_error`), fenced by its `lease_seq`.
    pub job: Option<(i64, i64)>,
}

/// Records attempt `attempt` of `delivery_id` and, when final, the delivery's state, in one
/// statement (one round trip: the gap between the server's acceptance and `sent` is the window
/// in which a lost worker causes a re-send). Not fenced: what the server answered is a fact
/// even if the claim was lost meanwhile, and only a `pending` delivery changes state. Returns
/// whether the delivery was still pending.
pub async fn finish_attempt(
    pool: &PgPool,
    delivery_id: i64,
    attempt: i32,
    r: &AttemptResult<'_>,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "WITH a AS ( \
             UPDATE email_attempts SET outcome = $3, smtp_code = $4, detail = $5, finished_at = now() \
             WHERE delivery_id = $1 AND attempt = $2), \
         j AS ( \
             UPDATE jobs SET state = CASE WHEN $6 = 'sent' THEN 'done' ELSE 'dead' END, \
                 last_error = COALESCE($7, last_error), lease_owner = NULL, lease_until = NULL, \
                 updated_at = now() \
             WHERE $6 IS NOT NULL AND id = $8 AND lease_seq = $9) \
         UPDATE deliveries SET state = COALESCE($6, state), \
             last_error = COALESCE($7, last_error), \
             sent_at = CASE WHEN $6 = 'sent' THEN now() ELSE sent_at END \
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(delivery_id)
    .bind(attempt)
    .bind(r.outcome)
    .bind(r.smtp_code.map(i32::from))
    .bind(r.detail)
    .bind(r.final_state)
    .bind(r.last_error)
    .bind(r.job.map(|j| j.0))
    .bind(r.job.map(|j| j.1))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// One row of the send log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Attempt {
    pub attempt: i32,
    pub worker: String,
    pub outcome: Option<String>,
    pub smtp_code: Option<i32>,
    pub detail: Option<String>,
}

/// The attempts of `delivery_id`, oldest first.
pub async fn attempts(pool: &PgPool, delivery_id: i64) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, worker, outcome, smtp_code, detail FROM email_attempts \
         WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery_id)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{self, AlertInput, NewTrigger};
    use crate::jobs::Jobs;
    use pricefeed_domain::alert::{Condition, Kind};
    use rust_decimal::Decimal;

    /// One user with one email alert that fired once; returns the email delivery id.
    async fn one_delivery(pool: &PgPool) -> i64 {
        sqlx::query(
            "INSERT INTO underlyings (symbol, base_asset, quote_asset, status) \
             VALUES ('BTCUSDT', 'BTC', 'USDT', 'TRADING')",
        )
        .execute(pool)
        .await
        .unwrap();
        let inst: i32 = sqlx::query_scalar("SELECT id FROM instruments WHERE symbol = 'BTCUSDT'")
            .fetch_one(pool)
            .await
            .unwrap();
        let user = alerts::create_user(pool, "a@example.com", "x", "user")
            .await
            .unwrap();
        let cond = Condition {
            kind: Kind::Above,
            threshold: Decimal::from(100),
            interval: None,
            window: None,
        };
        let input = AlertInput {
            condition: cond,
            channels: vec!["email".into()],
            rearm: None,
            note: None,
            status: "active".into(),
        };
        let a = alerts::create_alert(pool, user, inst, &input, 10)
            .await
            .unwrap();
        let t = NewTrigger {
            alert_id: a.id,
            user_id: user,
            version: a.version,
            trade_id: 1,
            trade_ts_ms: 1,
            price: Decimal::from(101),
            observed: Decimal::from(101),
            one_shot: true,
        };
        alerts::commit_triggers(pool, "n", &[t], 100).await.unwrap();
        sqlx::query_scalar("SELECT id FROM deliveries WHERE channel = 'email'")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::pg::MIGRATOR")]
    async fn attempts_are_fenced_and_an_interrupted_one_is_reported_to_the_next_worker(
        pool: PgPool,
    ) {
        let id = one_delivery(&pool).await;
        let lease = Duration::from_secs(30);
        let send = Duration::from_secs(10);
        let a = Jobs::new(pool.clone(), "a");
        let ja = a
            .claim(&[alerts::EMAIL_JOB], 1, lease)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(ja.key, id.to_string());
        assert_eq!(
            begin_attempt(&pool, id, ja.fence(), "a", send)
                .await
                .unwrap(),
            Begin::Send {
                attempt: 1,
                interrupted: None
            }
        );
        // A dies mid-send; its lease runs out and B takes over.
        sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second'")
            .execute(&pool)
            .await
            .unwrap();
        let b = Jobs::new(pool.clone(), "b");
        let jb = b
            .claim(&[alerts::EMAIL_JOB], 1, lease)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            begin_attempt(&pool, id, ja.fence(), "a", send)
                .await
                .unwrap(),
            Begin::Fenced,
            "a stale claim starts nothing"
        );
        // A lease too short for a whole send starts nothing either.
        assert_eq!(
            begin_attempt(&pool, id, jb.fence(), "b", Duration::from_secs(60))
                .await
                .unwrap(),
            Begin::Fenced
        );
        assert_eq!(
            begin_attempt(&pool, id, jb.fence(), "b", send)
                .await
                .unwrap(),
            Begin::Send {
                attempt: 2,
                interrupted: Some(1)
            }
        );
        let ok = AttemptResult {
            outcome: "accepted",
            smtp_code: Some(250),
            detail: "2.0.0 queued",
            final_state: Some("sent"),
            last_error: None,
            job: Some(jb.fence()),
        };
        assert!(finish_attempt(&pool, id, 2, &ok).await.unwrap());
        assert!(!finish_attempt(&pool, id, 2, &ok).await.unwrap(), "once");
        // The job was closed with it: the claim is spent.
        assert_eq!(
            begin_attempt(&pool, id, jb.fence(), "b", send)
                .await
                .unwrap(),
            Begin::Fenced
        );
        // A claim that still holds (a job whose own update was lost) finds nothing to send.
        sqlx::query("UPDATE jobs SET lease_until = now() + interval '1 minute'")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            begin_attempt(&pool, id, jb.fence(), "b", send)
                .await
                .unwrap(),
            Begin::Skip("sent".into())
        );
        let log = attempts(&pool, id).await.unwrap();
        let outcomes: Vec<_> = log.iter().map(|a| a.outcome.as_deref()).collect();
        assert_eq!(outcomes, [Some("unknown"), Some("accepted")]);
        assert_eq!((log[0].worker.as_str(), log[1].worker.as_str()), ("a", "b"));
        let (state, attempts, sent): (String, i32, bool) = sqlx::query_as(
            "SELECT state, attempts, sent_at IS NOT NULL FROM deliveries WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((state.as_str(), attempts, sent), ("sent", 2, true));
        let job: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(jb.id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(job, "done", "closed in the same statement");
    }
}
