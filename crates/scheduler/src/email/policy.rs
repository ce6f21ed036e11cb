//! Pure delivery policy: what an SMTP outcome means for the email (retry, dead-letter, sent)
//! and when the next attempt runs. No I/O, so every rule has a unit test.

use std::time::Duration;

/// What one attempt ended with, as far as the delivery is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The server took responsibility for the mail (2xx after the data).
    Accepted,
    /// Worth another attempt: a 4xx reply, a refused or dropped connection, a timeout, a TLS
    /// handshake failure, or a relay that refuses our credentials (a worker-wide setup problem
    /// an operator fixes, not a property of this mail).
    Transient,
    /// The server will never take this mail (a 5xx reply about it), or it cannot be built.
    Permanent,
}

impl Class {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Accepted => "accepted",
            Class::Transient => "transient",
            Class::Permanent => "permanent",
        }
    }
}

/// Class of an SMTP reply code (RFC 5321 §4.2.1).
pub fn classify_reply(code: u16) -> Class {
    match code {
        200..=399 => Class::Accepted,
        // 5.7.x authentication answers concern the worker's credentials, not this message:
        // dead-lettering every alert while an operator rotates a password would lose them all.
        530 | 534 | 535 | 538 => Class::Transient,
        400..=499 => Class::Transient,
        500..=599 => Class::Permanent,
        // Not SMTP at all: the peer is confused; another attempt may reach a sane server.
        _ => Class::Transient,
    }
}

/// What the job does after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Mark the delivery `sent`.
    Sent,
    /// Keep it pending and try again after this long.
    RetryAfter(Duration),
    /// Mark it `dead` with this error.
    Dead(String),
}

/// Retry policy of one email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Policy {
    /// Ceiling of the delay after failed attempt `attempt` (1-based): base · 2^(attempt-1),
    /// capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << exp.min(31))
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// Full jitter ("Exponential Backoff And Jitter", AWS architecture blog): uniform in
    /// [0, ceiling]. `unit` is a uniform sample from [0, 1). Spreads the retries of many mails
    /// that failed together (a relay restart) instead of hitting the relay in waves.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The decision after attempt `attempt` (1-based) ended with `class`; `error` is the reply
    /// or transport error text.
    pub fn next(&self, attempt: u32, class: Class, error: &str, unit: f64) -> Next {
        match class {
            Class::Accepted => Next::Sent,
            Class::Permanent => Next::Dead(error.to_string()),
            Class::Transient if attempt >= self.max_attempts => {
                Next::Dead(format!("gave up after {attempt} attempts; last: {error}"))
            }
            Class::Transient => Next::RetryAfter(self.delay(attempt, unit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_attempts: 5,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn replies_classify_by_their_first_digit_except_auth() {
        assert_eq!(classify_reply(250), Class::Accepted);
        for c in [421, 450, 451, 452, 454] {
            assert_eq!(classify_reply(c), Class::Transient, "{c}");
        }
        for c in [500, 550, 551, 552, 553, 554] {
            assert_eq!(classify_reply(c), Class::Permanent, "{c}");
        }
        for c in [530, 534, 535, 538, 0, 999] {
            assert_eq!(classify_reply(c), Class::Transient, "{c}");
        }
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = policy();
        let secs: Vec<u64> = (1..=8).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
        // No overflow far out.
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(60));
        assert_eq!(p.ceiling(0), Duration::from_secs(2));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling() {
        let p = policy();
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(4));
        assert!(p.delay(3, 0.999_999) < Duration::from_secs(8));
        assert_eq!(p.delay(3, 7.0), Duration::from_secs(8), "clamped");
        assert_eq!(p.delay(3, -1.0), Duration::ZERO, "clamped");
    }

    #[test]
    fn transient_failures_retry_until_the_last_attempt_then_dead_letter() {
        let p = policy();
        assert_eq!(
            p.next(1, Class::Transient, "451 later", 0.5),
            Next::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            p.next(4, Class::Transient, "451 later", 1.0),
            Next::RetryAfter(Duration::from_secs(16))
        );
        assert_eq!(
            p.next(5, Class::Transient, "451 later", 0.5),
            Next::Dead("gave up after 5 attempts; last: 451 later".into())
        );
        assert_eq!(
            p.next(1, Class::Permanent, "550 no such user", 0.5),
            Next::Dead("550 no such user".into())
        );
        assert_eq!(p.next(5, Class::Accepted, "", 0.5), Next::Sent);
    }
}
