//! Alert email delivery (worker role): one `email` job per email delivery of the outbox
//! (created with the trigger, key = delivery id), sent over SMTP with lettre.
//!
//! A run loads the delivery, skips it unless it is `pending`, records the attempt as in flight
//! (fenced by the job claim, see [`pricefeed_store::email`]), renders and sends the mail with
//! its idempotency key in a header and in a deterministic Message-ID, and records the reply:
//! 2xx → `sent`; 4xx, connection errors and timeouts → retried with exponential backoff and
//! full jitter until `email.max_attempts`; 5xx → `dead` with the reply text, which
//! `GET /api/v1/alerts/{id}/notifications` shows. docs/decisions/0011-email-delivery.md explains
//! what "never twice to a working server" means here and where the remaining window is.
//!
//! - [`config`]: `[email]`; [`policy`]: classification and backoff; [`render`]: the mail;
//!   [`transport`]: lettre.
//!
//! Metrics: `pricefeed_email_attempts_total{outcome=accepted|transient|permanent|unknown}`,
//! `pricefeed_email_deliveries_total{outcome=sent|dead|skipped}`,
//! `pricefeed_email_send_seconds{outcome}` and `pricefeed_email_trigger_to_accepted_seconds`.

pub mod config;
pub mod policy;
pub mod render;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use pricefeed_store::alerts::{self, EMAIL_JOB};
use pricefeed_store::email::{self as log, AttemptResult, Begin};
use pricefeed_store::jobs::{Claimed, Jobs};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::worker::{JobHandler, JobOutcome};
use config::EmailConfig;
use policy::{Class, Next, Policy};
use transport::SendOutcome;

/// Retry delay when the database, not SMTP, failed before an attempt started.
const DB_RETRY: Duration = Duration::from_secs(2);
/// How long a worker keeps trying to record an attempt's outcome before giving the job up to
/// the lease (an accepted mail whose `sent` is never recorded is sent again by the next worker).
const RECORD_DEADLINE: Duration = Duration::from_secs(20);

/// The `email` job handler.
#[derive(Clone)]
pub struct EmailSender {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    smtp: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    policy: Policy,
    send_timeout: Duration,
    base_url: String,
    worker: String,
}

impl std::fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSender")
            .field("from", &self.inner.from.to_string())
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl EmailSender {
    /// A sender for worker `worker` (its job-claim owner name); opens no connection yet.
    pub fn new(db: PgPool, cfg: &EmailConfig, worker: &str) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                smtp: transport::transport(cfg)?,
                from: cfg.from_mailbox()?,
                policy: Policy {
                    max_attempts: cfg.max_attempts,
                    base: Duration::from_millis(cfg.backoff_base_ms),
                    cap: Duration::from_millis(cfg.backoff_cap_ms),
                },
                send_timeout: cfg.send_timeout(),
                base_url: cfg.public_base_url.trim().to_string(),
                worker: worker.to_string(),
            }),
        })
    }

    async fn deliver(&self, job: Claimed, token: CancellationToken) -> JobOutcome {
        let s = &self.inner;
        let Ok(id) = job.key.parse::<i64>() else {
            return JobOutcome::Dead(format!("bad delivery id {:?}", job.key));
        };
        if token.is_cancelled() {
            return JobOutcome::Retry(Duration::ZERO, "worker stopping".into());
        }
        let d = match alerts::email_delivery(&s.db, id).await {
            Ok(Some(d)) if d.state == "pending" => d,
            // Deleted with its alert, or finished by an earlier run whose job update was lost.
            Ok(_) => {
                metrics::counter!("pricefeed_email_deliveries_total", "outcome" => "skipped")
                    .increment(1);
                return JobOutcome::Done;
            }
            Err(e) => return JobOutcome::Retry(DB_RETRY, format!("loading the delivery: {e}")),
        };
        let attempt = match log::begin_attempt(&s.db, id, job.fence(), &s.worker, s.send_timeout)
            .await
        {
            Ok(Begin::Send {
                attempt,
                interrupted,
            }) => {
                if let Some(n) = interrupted {
                    tracing::warn!(
                        delivery = id,
                        interrupted = n,
                        attempt,
                        "a previous attempt was interrupted mid-send; re-sending with the same Message-ID"
                    );
                    metrics::counter!("pricefeed_email_attempts_total", "outcome" => "unknown")
                        .increment(1);
                }
                attempt
            }
            Ok(Begin::Skip(_)) => {
                metrics::counter!("pricefeed_email_deliveries_total", "outcome" => "skipped")
                    .increment(1);
                return JobOutcome::Done;
            }
            // Not ours any more (the runner's release is fenced too), or too little lease
            // left for a whole send: put it back for the next claim.
            Ok(Begin::Fenced) => {
                return JobOutcome::Retry(Duration::ZERO, "claim lost or expiring".into());
            }
            Err(e) => {
                return JobOutcome::Retry(DB_RETRY, format!("recording the attempt: {e}"));
            }
        };

        // From here the attempt is on record: the send is not cancelled by shutdown or a lost
        // claim (cutting it after the data could not be told apart from acceptance anyway); it
        // is bounded by email.send_timeout_ms, which the lease outlives.
        let rendered = render::render(&d, &s.base_url);
        let out = match transport::build_message(&s.from, &d.to, &d.idempotency_key, &rendered) {
            Ok(msg) => transport::send(&s.smtp, msg, s.send_timeout).await,
            Err(e) => SendOutcome {
                class: Class::Permanent,
                code: None,
                detail: e,
                took: Duration::ZERO,
            },
        };
        metrics::counter!("pricefeed_email_attempts_total", "outcome" => out.class.as_str())
            .increment(1);
        metrics::histogram!("pricefeed_email_send_seconds", "outcome" => out.class.as_str())
            .record(out.took.as_secs_f64());
        let next = s.policy.next(
            u32::try_from(attempt).unwrap_or(u32::MAX),
            out.class,
            &out.detail,
            rand::random::<f64>(),
        );
        let (final_state, last_error) = match &next {
            Next::Sent => (Some("sent"), None),
            Next::RetryAfter(_) => (None, Some(out.detail.as_str())),
            Next::Dead(e) => (Some("dead"), Some(e.as_str())),
        };
        let r = AttemptResult {
            outcome: out.class.as_str(),
            smtp_code: out.code,
            detail: &out.detail,
            final_state,
            last_error,
            // A final state closes the job in the same statement (one round trip fewer per mail,
            // and the delivery and its job can never disagree).
            job: final_state.map(|_| job.fence()),
        };
        if let Err(e) = self.record(id, attempt, &r).await {
            tracing::error!(delivery = id, attempt, error = %e,
                "could not record the attempt's outcome; the next worker will re-send it");
            return JobOutcome::Retry(Duration::ZERO, format!("recording the outcome: {e}"));
        }
        match next {
            Next::Sent => {
                let age_ms = (now_ms() - d.triggered_at_ms).max(0);
                metrics::histogram!("pricefeed_email_trigger_to_accepted_seconds")
                    .record(age_ms as f64 / 1000.0);
                metrics::counter!("pricefeed_email_deliveries_total", "outcome" => "sent")
                    .increment(1);
                JobOutcome::Closed
            }
            Next::RetryAfter(after) => {
                tracing::info!(delivery = id, attempt, retry_in_ms = after.as_millis() as u64,
                    detail = %out.detail, "email attempt failed transiently; retrying");
                JobOutcome::Retry(after, out.detail)
            }
            Next::Dead(e) => {
                tracing::warn!(delivery = id, attempt, error = %e, "email dead-lettered");
                metrics::counter!("pricefeed_email_deliveries_total", "outcome" => "dead")
                    .increment(1);
                JobOutcome::Closed
            }
        }
    }

    /// Records an outcome, retrying a failing database for a while: losing this write after
    /// an acceptance is what makes the next worker send a second copy.
    async fn record(
        &self,
        id: i64,
        attempt: i32,
        r: &AttemptResult<'_>,
    ) -> Result<(), sqlx::Error> {
        let until = tokio::time::Instant::now() + RECORD_DEADLINE;
        let mut pause = Duration::from_millis(100);
        loop {
            match log::finish_attempt(&self.inner.db, id, attempt, r).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + pause > until => return Err(e),
                Err(e) => {
                    tracing::warn!(delivery = id, error = %e, "recording an email attempt failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl JobHandler for EmailSender {
    fn kind(&self) -> &'static str {
        EMAIL_JOB
    }

    fn run(
        &self,
        job: Claimed,
        _jobs: Jobs,
        token: CancellationToken,
    ) -> BoxFuture<'static, JobOutcome> {
        let this = self.clone();
        Box::pin(async move { this.deliver(job, token).await })
    }
}
