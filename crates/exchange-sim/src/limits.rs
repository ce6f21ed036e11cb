//! REST request-weight limiting per IP, as the exchange does it.
//!
//! Each response carries `X-MBX-USED-WEIGHT-1M`. Going over the budget of the current window
//! (fixed windows aligned to multiples of `rest_weight_window_ms`, like the exchange's minute)
//! gives 429 with `Retry-After` = seconds to the window's end. A client that keeps sending while
//! limited (more than `rest_ban_after` rejected requests in one window) is banned: 418 with
//! `Retry-After` = seconds until unban; each further ban doubles, capped at three days.
//!
//! The limit can be changed at run time (`PUT /control/rest/limits`, e.g. to 0 for a 429 storm)
//! and every listener counts what it answered ([`RestStats`]), including requests that came
//! before a `Retry-After` had elapsed: per IP (what the exchange sees: several processes behind
//! one address count as one client) and per TCP connection (a client that retries on the
//! connection that was just told to wait is ignoring `Retry-After`, whatever else shares its IP).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Outcome of charging a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok {
        used: u64,
    },
    /// HTTP 429.
    Limited {
        used: u64,
        retry_after_s: u64,
    },
    /// HTTP 418.
    Banned {
        used: u64,
        retry_after_s: u64,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct IpState {
    window: i64,
    used: u64,
    rejected: u32,
    ban_until: i64,
    bans: u32,
    /// The latest moment a `Retry-After` given to this IP points at.
    retry_at: i64,
    /// The last refusal not yet followed by another request: (when, `Retry-After` in ms).
    refused: Option<(i64, i64)>,
}

/// What one listener answered since start (`GET /control/rest`).
#[derive(Debug, Default, Serialize)]
pub struct RestStats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    /// HTTP 429 answers.
    pub limited: AtomicU64,
    /// HTTP 418 answers.
    pub banned: AtomicU64,
    /// Requests from an IP before a `Retry-After` it was given had elapsed.
    pub early_ip: AtomicU64,
    /// Requests on a TCP connection before a `Retry-After` given on that connection had elapsed.
    pub early_conn: AtomicU64,
    /// First requests of an IP after a refusal.
    pub comebacks: AtomicU64,
    /// Over those comebacks, the least and the most time waited beyond the `Retry-After` of the
    /// refusal, in ms (negative = came back early).
    #[serde(skip)]
    pub margin_ms: Mutex<Option<(i64, i64)>>,
}

impl RestStats {
    fn comeback(&self, margin: i64) {
        self.comebacks.fetch_add(1, Ordering::Relaxed);
        let mut m = self.margin_ms.lock().expect("stats lock");
        *m = Some(m.map_or((margin, margin), |(lo, hi)| {
            (lo.min(margin), hi.max(margin))
        }));
    }
}

const MAX_BAN_MS: i64 = 3 * 86_400_000;
/// Beyond this many tracked IPs, idle entries are pruned (keeps memory bounded under scans).
const MAX_TRACKED: usize = 10_000;

/// The limiter of one REST listener.
#[derive(Debug)]
pub struct WeightLimiter {
    configured: u64,
    limit: AtomicU64,
    window_ms: i64,
    ban_after: u32,
    ban_ms: i64,
    ips: Mutex<HashMap<IpAddr, IpState>>,
    /// Per connection: the moment the last `Retry-After` given on it points at.
    conns: Mutex<HashMap<SocketAddr, i64>>,
    pub stats: RestStats,
}

impl WeightLimiter {
    pub fn new(limit: u64, window_ms: u64, ban_after: u32, ban_ms: u64) -> Self {
        Self {
            configured: limit,
            limit: AtomicU64::new(limit),
            window_ms: window_ms.max(1) as i64,
            ban_after,
            ban_ms: ban_ms as i64,
            ips: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            stats: RestStats::default(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Replaces the weight limit per window (`None` = back to the configured one). 0 refuses
    /// every request with 429, as an exhausted budget does.
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit
            .store(limit.unwrap_or(self.configured), Ordering::Relaxed);
    }

    /// `{limit, configured_limit, window_ms, ban_after, ban_ms, stats}` for the control API.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "limit": self.limit(),
            "configured_limit": self.configured,
            "window_ms": self.window_ms,
            "ban_after": self.ban_after,
            "ban_ms": self.ban_ms,
            "stats": &self.stats,
            "comeback_margin_ms": self.stats.margin_ms.lock().expect("stats lock")
                .map(|(min, max)| serde_json::json!({"min": min, "max": max})),
        })
    }

    /// [`Self::charge`] for a request on connection `peer`, counted in [`Self::stats`].
    pub fn charge_from(&self, peer: SocketAddr, weight: u64, now_ms: i64) -> Verdict {
        let st = &self.stats;
        st.requests.fetch_add(1, Ordering::Relaxed);
        let early_conn = {
            let conns = self.conns.lock().expect("limiter lock");
            conns.get(&peer).is_some_and(|t| *t > now_ms)
        };
        if early_conn {
            st.early_conn.fetch_add(1, Ordering::Relaxed);
        }
        let v = self.charge(peer.ip(), weight, now_ms);
        let retry_after_s = match v {
            Verdict::Ok { .. } => {
                st.ok.fetch_add(1, Ordering::Relaxed);
                return v;
            }
            Verdict::Limited { retry_after_s, .. } => {
                st.limited.fetch_add(1, Ordering::Relaxed);
                retry_after_s
            }
            Verdict::Banned { retry_after_s, .. } => {
                st.banned.fetch_add(1, Ordering::Relaxed);
                retry_after_s
            }
        };
        let mut conns = self.conns.lock().expect("limiter lock");
        if conns.len() >= MAX_TRACKED {
            conns.retain(|_, t| *t > now_ms);
        }
        conns.insert(peer, now_ms + retry_after_s as i64 * 1000);
        v
    }

    /// Charges `weight` to `ip` at `now_ms`.
    pub fn charge(&self, ip: IpAddr, weight: u64, now_ms: i64) -> Verdict {
        let mut ips = self.ips.lock().expect("limiter lock");
        let window = now_ms.div_euclid(self.window_ms);
        if ips.len() >= MAX_TRACKED && !ips.contains_key(&ip) {
            ips.retain(|_, s| s.window == window || s.ban_until > now_ms);
        }
        let s = ips.entry(ip).or_default();
        if s.retry_at > now_ms {
            self.stats.early_ip.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((at, told)) = s.refused.take() {
            self.stats.comeback(now_ms - at - told);
        }
        if s.window != window {
            s.window = window;
            s.used = 0;
            s.rejected = 0;
        }
        let secs = |ms: i64| (ms.max(0) as u64).div_ceil(1000).max(1);
        if s.ban_until > now_ms {
            s.retry_at = s.retry_at.max(s.ban_until);
            s.refused = Some((now_ms, secs(s.ban_until - now_ms) as i64 * 1000));
            return Verdict::Banned {
                used: s.used,
                retry_after_s: secs(s.ban_until - now_ms),
            };
        }
        if s.used + weight > self.limit() {
            s.rejected += 1;
            if s.rejected > self.ban_after {
                s.bans += 1;
                let ban = (self.ban_ms << (s.bans - 1).min(20)).min(MAX_BAN_MS);
                s.ban_until = now_ms + ban;
                s.retry_at = s.retry_at.max(now_ms + secs(ban) as i64 * 1000);
                s.refused = Some((now_ms, secs(ban) as i64 * 1000));
                s.rejected = 0;
                return Verdict::Banned {
                    used: s.used,
                    retry_after_s: secs(ban),
                };
            }
            let window_end = (window + 1) * self.window_ms;
            let retry_after_s = secs(window_end - now_ms);
            s.retry_at = s.retry_at.max(now_ms + retry_after_s as i64 * 1000);
            s.refused = Some((now_ms, retry_after_s as i64 * 1000));
            return Verdict::Limited {
                used: s.used,
                retry_after_s,
            };
        }
        s.used += weight;
        Verdict::Ok { used: s.used }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_then_ban_then_escalate() {
        let l = WeightLimiter::new(100, 60_000, 2, 120_000);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t = 60_000 * 1000;
        assert_eq!(l.charge(ip, 60, t), Verdict::Ok { used: 60 });
        assert_eq!(l.charge(ip, 40, t), Verdict::Ok { used: 100 });
        assert_eq!(
            l.charge(ip, 1, t + 1000),
            Verdict::Limited {
                used: 100,
                retry_after_s: 59
            }
        );
        assert!(matches!(l.charge(ip, 1, t + 1000), Verdict::Limited { .. }));
        assert_eq!(
            l.charge(ip, 1, t + 1000),
            Verdict::Banned {
                used: 100,
                retry_after_s: 120
            }
        );
        // still banned in the next window
        assert!(matches!(
            l.charge(ip, 1, t + 61_000),
            Verdict::Banned { .. }
        ));
        // after the ban, a fresh window works; a second ban doubles
        let t2 = t + 180_000;
        assert!(matches!(l.charge(ip, 100, t2), Verdict::Ok { .. }));
        for _ in 0..2 {
            assert!(matches!(l.charge(ip, 1, t2), Verdict::Limited { .. }));
        }
        assert_eq!(
            l.charge(ip, 1, t2),
            Verdict::Banned {
                used: 100,
                retry_after_s: 240
            }
        );
        // other IPs are unaffected
        assert!(matches!(
            l.charge("10.0.0.1".parse().unwrap(), 1, t2),
            Verdict::Ok { .. }
        ));
    }

    #[test]
    fn a_storm_counts_early_requests_per_ip_and_per_connection() {
        let l = WeightLimiter::new(100, 10_000, 3, 120_000);
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let t = 10_000 * 1000;
        assert!(matches!(l.charge_from(a, 1, t), Verdict::Ok { .. }));
        l.set_limit(Some(0));
        // Told to come back at the window's end (10 s).
        assert_eq!(
            l.charge_from(a, 1, t + 100),
            Verdict::Limited {
                used: 1,
                retry_after_s: 10
            }
        );
        // Another connection of the same IP is early for the exchange, not for itself.
        assert!(matches!(
            l.charge_from(b, 1, t + 200),
            Verdict::Limited { .. }
        ));
        // The first connection retrying at once ignores its Retry-After.
        assert!(matches!(
            l.charge_from(a, 1, t + 300),
            Verdict::Limited { .. }
        ));
        let st = &l.stats;
        assert_eq!(st.limited.load(Ordering::Relaxed), 3);
        assert_eq!(st.early_ip.load(Ordering::Relaxed), 2);
        assert_eq!(st.early_conn.load(Ordering::Relaxed), 1);
        // Coming back when told is not early; the limit restored, it is served.
        l.set_limit(None);
        assert!(matches!(
            l.charge_from(a, 1, t + 10_400),
            Verdict::Ok { .. }
        ));
        assert_eq!(st.early_ip.load(Ordering::Relaxed), 2);
        assert_eq!(st.early_conn.load(Ordering::Relaxed), 1);
        assert_eq!(st.ok.load(Ordering::Relaxed), 2);
        assert_eq!(st.requests.load(Ordering::Relaxed), 5);
        // The IP came back after each of its three refusals: twice 100 ms after it (9.9 s
        // early), then 10.1 s after the last (100 ms beyond its 10-s Retry-After).
        assert_eq!(st.comebacks.load(Ordering::Relaxed), 3);
        assert_eq!(*st.margin_ms.lock().unwrap(), Some((-9_900, 100)));
    }
}
