//! Pacing of broker connections: the outgoing-message limiter, the reconnect backoff, when a
//! session earns a fresh backoff, and the node-wide budget of connection attempts.
//!
//! Both are pure (time is passed in), so their promises are unit-tested without sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// At most `limit` sends in any rolling `window`.
///
/// The exchange disconnects a connection that sends more than 5 messages in a second, and a
/// classic token bucket with burst 5 can send 9 in the first rolling second (5 at t=0, then one
/// refilled every 200 ms). Remembering the send times of the last `limit` messages is exact:
/// a new send is allowed only once the oldest of them has left the window.
#[derive(Debug, Clone)]
pub struct RollingLimiter {
    limit: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl RollingLimiter {
    pub fn new(limit: usize, window: Duration) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            window,
            sent: VecDeque::with_capacity(limit),
        }
    }

    /// When the next send may happen (`now` if immediately).
    pub fn next_slot(&self, now: Instant) -> Instant {
        if self.sent.len() < self.limit {
            return now;
        }
        let oldest = self.sent[0];
        // Strictly after the oldest send leaves the window (a send exactly `window` later would
        // share a closed rolling second with it).
        (oldest + self.window + Duration::from_millis(1)).max(now)
    }

    /// Records a send at `at`; the caller must have waited for [`Self::next_slot`].
    pub fn record(&mut self, at: Instant) {
        if self.sent.len() == self.limit {
            self.sent.pop_front();
        }
        self.sent.push_back(at);
    }

    /// Waits for a slot and records it.
    pub async fn acquire(&mut self) {
        let slot = self.next_slot(Instant::now());
        tokio::time::sleep_until(slot).await;
        self.record(slot.max(Instant::now()));
    }
}

/// Jittered exponential reconnect backoff: attempt *n* waits a uniformly random time in
/// `[d/2, d]` where `d = min(max, min * 2^n)` ("equal jitter": never zero, so a fleet of nodes
/// that lost the exchange at once does not come back in one burst, and never above `max`).
/// [`Backoff::reset`] after a healthy period starts over from `min`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay; `unit` in `[0, 1)` is the random draw (from `rand` in production).
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let d = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let unit = unit.clamp(0.0, 1.0);
        d / 2 + d.mul_f64(unit / 2.0)
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Whether an ended session starts the backoff over: it stayed up `reset_after`, or it was
/// *productive* (delivered trades). A feed that drops now and then but works in between
/// reconnects at once every time instead of escalating towards the maximum (with a 0.05 %
/// per-message drop, sessions last seconds and the old 60 s rule had every connection waiting
/// 20–26 s while its instruments went stale); a server that accepts and drops at once, without
/// data, still backs off. How fast anyone may reconnect is bounded by [`ConnectBudget`].
pub fn earns_reset(lasted: Duration, trades: u64, reset_after: Duration) -> bool {
    lasted >= reset_after || trades > 0
}

/// The node's connection attempts, all markets together, within a rolling window (the
/// exchange allows 300 per 5 minutes per IP, for every process behind that IP). Shared by every
/// connection task; an attempt waits for a slot.
#[derive(Debug, Clone)]
pub struct ConnectBudget(std::sync::Arc<tokio::sync::Mutex<RollingLimiter>>);

impl ConnectBudget {
    pub fn new(attempts: usize, window: Duration) -> Self {
        Self(std::sync::Arc::new(tokio::sync::Mutex::new(
            RollingLimiter::new(attempts, window),
        )))
    }

    /// How long the next attempt would wait now (zero when a slot is free).
    pub async fn wait_now(&self) -> Duration {
        let now = Instant::now();
        self.0.lock().await.next_slot(now) - now
    }

    /// Waits for a slot and takes it. Holding the lock while waiting keeps attempts in order.
    pub async fn acquire(&self) {
        self.0.lock().await.acquire().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the limiter greedily with a simulated clock and checks every rolling window.
    #[test]
    fn never_more_than_limit_in_any_rolling_second() {
        let start = Instant::now();
        let mut l = RollingLimiter::new(5, Duration::from_secs(1));
        let mut now = start;
        let mut sends = Vec::new();
        for i in 0..200 {
            // Mix bursts with idle gaps.
            if i % 37 == 0 {
                now += Duration::from_millis(730);
            }
            let slot = l.next_slot(now);
            assert!(slot >= now);
            now = slot;
            l.record(now);
            sends.push(now);
        }
        for (i, &t) in sends.iter().enumerate() {
            let in_window = sends[i..]
                .iter()
                .take_while(|&&u| u - t <= Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 5,
                "{in_window} sends within 1 s starting at #{i}"
            );
        }
        // And it is not needlessly slow: 200 sends take about 40 s, not much more.
        let total = *sends.last().unwrap() - start;
        assert!(total < Duration::from_secs(45), "{total:?}");
        // The first 5 go at once.
        assert_eq!(sends[4], sends[0]);
    }

    #[test]
    fn backoff_grows_is_bounded_jittered_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(min, max);
        let mut ceilings = Vec::new();
        for _ in 0..40 {
            let c = b.ceiling();
            ceilings.push(c);
            let lo = b.clone().next_with(0.0);
            let hi = b.clone().next_with(1.0);
            assert_eq!(lo, c / 2);
            assert_eq!(hi, c);
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c && d <= max && d >= min / 2, "{d:?}");
        }
        assert_eq!(ceilings[0], min);
        assert_eq!(ceilings[1], min * 2);
        assert_eq!(ceilings[5], Duration::from_millis(3_200));
        assert!(ceilings[6..].iter().all(|&c| c == max));
        // Jitter really varies: 50 draws at the cap are not all equal.
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 10);
        b.reset();
        assert_eq!(b.ceiling(), min);
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn a_productive_session_or_a_long_one_resets_the_backoff() {
        let after = Duration::from_secs(60);
        assert!(earns_reset(Duration::from_secs(3), 1, after));
        assert!(earns_reset(Duration::from_secs(61), 0, after));
        assert!(!earns_reset(Duration::from_secs(3), 0, after));
        // The failure mode this fixes: drops every few seconds with trades in between.
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        for _ in 0..20 {
            if earns_reset(Duration::from_secs(5), 900, after) {
                b.reset();
            }
            assert!(b.next_with(1.0) <= Duration::from_millis(250));
        }
    }

    #[tokio::test]
    async fn the_connect_budget_is_shared_and_spaces_attempts_beyond_its_window() {
        let b = ConnectBudget::new(3, Duration::from_secs(10));
        let other = b.clone();
        assert!(b.wait_now().await.is_zero());
        b.acquire().await;
        other.acquire().await;
        b.acquire().await;
        // Three attempts used by two holders: the fourth waits for the window to roll.
        assert!(other.wait_now().await > Duration::from_secs(9));
    }
}
