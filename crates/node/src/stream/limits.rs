//! Per-connection limits, pure and clock-injected so they are tested without sleeping:
//! - [`Outbox`]: the bounded outgoing buffer between the hub and a connection. Price and VWAP
//!   updates are conflated to the latest value per channel (a slow reader skips intermediate
//!   values instead of queueing them), event frames (acks, errors, alerts, watch notifications)
//!   queue up to a bound; past it the connection is marked overflowed and cut off.
//! - [`RateLimit`]: a token bucket on incoming messages, with strikes for refused ones.
//!
//! The hub only ever calls [`Outbox::put_latest`] and [`Outbox::push`], which take a short
//! mutex and never wait for the client, so a slow client cannot slow the hub down.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// An item waiting to be sent, in order of arrival.
#[derive(Debug)]
enum Item {
    /// The pending value of a conflated channel (in [`Inner::latest`]).
    Latest(Arc<str>),
    Frame(Utf8Bytes),
}

/// The conflation slot of one channel.
#[derive(Debug, Default)]
struct Slot {
    /// Version of the newest value accepted (sent or pending): a trade id, a window end.
    version: Option<i64>,
    pending: Option<Utf8Bytes>,
}

#[derive(Debug, Default)]
struct Inner {
    order: VecDeque<Item>,
    latest: HashMap<Arc<str>, Slot>,
    /// `Item::Frame`s in `order`.
    queued: usize,
    overflowed: bool,
    /// Values replaced before they were sent, since the last drain.
    conflated: u64,
}

/// The outgoing buffer of one connection (see the module docs). Shared by the hub (producer)
/// and the connection task (consumer), which waits on [`Outbox::ready`].
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    max_queued: usize,
}

/// What [`Outbox::drain`] found.
#[derive(Debug, Default)]
pub struct Drained {
    pub frames: Vec<Utf8Bytes>,
    pub conflated: u64,
}

impl Outbox {
    pub fn new(max_queued: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            max_queued,
        }
    }

    /// Offers the latest value of `channel` with its `version`: kept when newer than every
    /// value accepted before (or equal, with `allow_equal`: a republished VWAP window);
    /// replaces a pending, unsent one. Returns whether it was kept.
    pub fn put_latest(
        &self,
        channel: &Arc<str>,
        version: i64,
        allow_equal: bool,
        frame: Utf8Bytes,
    ) -> bool {
        let mut g = self.inner.lock().unwrap();
        let inner = &mut *g;
        let slot = inner.latest.entry(channel.clone()).or_default();
        if let Some(v) = slot.version
            && (version < v || (version == v && !allow_equal))
        {
            return false;
        }
        slot.version = Some(version);
        if slot.pending.replace(frame).is_some() {
            inner.conflated += 1;
            return true;
        }
        let wake = inner.order.is_empty();
        inner.order.push_back(Item::Latest(channel.clone()));
        drop(g);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Queues an event frame; past the bound the outbox is marked overflowed (the connection
    /// will be cut off) and the frame dropped. Returns whether it was queued.
    pub fn push(&self, frame: impl Into<Utf8Bytes>) -> bool {
        let mut g = self.inner.lock().unwrap();
        if g.overflowed {
            return false;
        }
        if g.queued >= self.max_queued {
            g.overflowed = true;
            drop(g);
            self.ready.notify_one();
            return false;
        }
        let wake = g.order.is_empty();
        g.order.push_back(Item::Frame(frame.into()));
        g.queued += 1;
        drop(g);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Forgets a channel (unsubscribed): its pending value is not sent, and a later
    /// subscription starts from any version again.
    pub fn forget(&self, channel: &str) {
        self.inner.lock().unwrap().latest.remove(channel);
    }

    /// Takes everything pending, in order; `Err` once overflowed.
    pub fn drain(&self) -> Result<Drained, Overflowed> {
        let mut g = self.inner.lock().unwrap();
        let inner = &mut *g;
        if inner.overflowed {
            return Err(Overflowed);
        }
        let mut frames = Vec::with_capacity(inner.order.len());
        for item in inner.order.drain(..) {
            match item {
                Item::Frame(f) => frames.push(f),
                Item::Latest(ch) => {
                    if let Some(f) = inner.latest.get_mut(&ch).and_then(|s| s.pending.take()) {
                        frames.push(f);
                    }
                }
            }
        }
        inner.queued = 0;
        Ok(Drained {
            frames,
            conflated: std::mem::take(&mut inner.conflated),
        })
    }

    /// Resolves when something may be pending (a stored permit makes a wake-up before the
    /// wait count).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

/// The outbox overflowed: the client does not read fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflowed;

/// Token bucket on incoming messages plus strikes for refused ones within a 10 s window.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    max_strikes: u32,
    strikes: u32,
    window_start: Instant,
}

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse it with an error frame.
    Refuse,
    /// Sustained abuse: close the connection (1008).
    Close,
}

/// Strikes count within windows of this length.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);

impl RateLimit {
    pub fn new(per_sec: u32, burst: u32, max_strikes: u32, now: Instant) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: now,
            max_strikes,
            strikes: 0,
            window_start: now,
        }
    }

    /// Accounts for one message arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) >= STRIKE_WINDOW {
            self.window_start = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if self.strikes >= self.max_strikes {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(o: &Drained) -> Vec<&str> {
        o.frames.iter().map(|f| f.as_str()).collect()
    }

    #[test]
    fn latest_values_conflate_in_place_and_never_go_back() {
        let o = Outbox::new(8);
        let a: Arc<str> = Arc::from("prices:A");
        let b: Arc<str> = Arc::from("prices:B");
        assert!(o.put_latest(&a, 1, false, "a1".into()));
        assert!(o.push("ack"));
        assert!(o.put_latest(&b, 5, false, "b5".into()));
        assert!(o.put_latest(&a, 2, false, "a2".into()));
        // Older or equal versions are refused (a snapshot racing a newer update).
        assert!(!o.put_latest(&a, 2, false, "a2-again".into()));
        assert!(!o.put_latest(&b, 4, false, "b4".into()));
        let d = o.drain().unwrap();
        // `a` keeps its place in the order with its newest value.
        assert_eq!(text(&d), ["a2", "ack", "b5"]);
        assert_eq!(d.conflated, 1);
        // Sent versions still count: nothing older after a drain.
        assert!(!o.put_latest(&a, 1, false, "a1".into()));
        assert!(o.put_latest(&a, 3, true, "a3".into()));
        assert!(o.put_latest(&a, 3, true, "a3b".into()));
        // Forgotten channels drop their pending value and restart their versions.
        o.forget("prices:A");
        assert!(o.drain().unwrap().frames.is_empty());
        assert!(o.put_latest(&a, 1, false, "a1".into()));
        assert_eq!(text(&o.drain().unwrap()), ["a1"]);
    }

    #[test]
    fn event_frames_overflow_at_the_bound() {
        let o = Outbox::new(3);
        let a: Arc<str> = Arc::from("prices:A");
        for i in 0..3 {
            assert!(o.push(format!("e{i}")));
        }
        // Conflated values never overflow.
        for v in 0..100 {
            o.put_latest(&a, v, false, "x".into());
        }
        assert!(!o.push("e3"));
        assert_eq!(o.drain().unwrap_err(), Overflowed);
        assert!(!o.push("e4"));
    }

    #[tokio::test]
    async fn a_put_before_the_wait_still_wakes() {
        let o = Outbox::new(3);
        o.push("x");
        tokio::time::timeout(Duration::from_secs(1), o.ready())
            .await
            .expect("stored permit");
    }

    #[test]
    fn rate_limit_refuses_then_closes_on_sustained_abuse() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, 20, 5, t0);
        for _ in 0..20 {
            assert_eq!(r.check(t0), Verdict::Allow);
        }
        for _ in 0..4 {
            assert_eq!(r.check(t0), Verdict::Refuse);
        }
        // 100 ms refills one token.
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Close);
        // A new strike window forgives old strikes.
        let later = t0 + STRIKE_WINDOW + Duration::from_millis(100);
        let mut r = RateLimit::new(1, 1, 2, t0);
        assert_eq!(r.check(t0), Verdict::Allow);
        assert_eq!(r.check(t0), Verdict::Refuse);
        assert_eq!(r.check(later), Verdict::Allow);
        assert_eq!(r.check(later), Verdict::Refuse);
    }
}
