//! REST request-weight limiting per IP, as the exchange does it.
//!
//! Each response carries `X-MBX-USED-WEIGHT-1M`. Going over the budget of the current window
//! (fixed windows aligned to multiples of `rest_weight_window_ms`, like the exchange's minute)
//! gives 429 with `Retry-After` = seconds to the window's end. A client that keeps sending while
//! limited (more than `rest_ban_after` rejected requests in one window) is banned: 418 with
//! `Retry-After` = seconds until unban; each further ban doubles, capped at three days.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

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
}

const MAX_BAN_MS: i64 = 3 * 86_400_000;
/// Beyond this many tracked IPs, idle entries are pruned (keeps memory bounded under scans).
const MAX_TRACKED: usize = 10_000;

/// The limiter of one REST listener.
#[derive(Debug)]
pub struct WeightLimiter {
    limit: u64,
    window_ms: i64,
    ban_after: u32,
    ban_ms: i64,
    ips: Mutex<HashMap<IpAddr, IpState>>,
}

impl WeightLimiter {
    pub fn new(limit: u64, window_ms: u64, ban_after: u32, ban_ms: u64) -> Self {
        Self {
            limit,
            window_ms: window_ms.max(1) as i64,
            ban_after,
            ban_ms: ban_ms as i64,
            ips: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Charges `weight` to `ip` at `now_ms`.
    pub fn charge(&self, ip: IpAddr, weight: u64, now_ms: i64) -> Verdict {
        let mut ips = self.ips.lock().expect("limiter lock");
        let window = now_ms.div_euclid(self.window_ms);
        if ips.len() >= MAX_TRACKED && !ips.contains_key(&ip) {
            ips.retain(|_, s| s.window == window || s.ban_until > now_ms);
        }
        let s = ips.entry(ip).or_default();
        if s.window != window {
            s.window = window;
            s.used = 0;
            s.rejected = 0;
        }
        let secs = |ms: i64| (ms.max(0) as u64).div_ceil(1000).max(1);
        if s.ban_until > now_ms {
            return Verdict::Banned {
                used: s.used,
                retry_after_s: secs(s.ban_until - now_ms),
            };
        }
        if s.used + weight > self.limit {
            s.rejected += 1;
            if s.rejected > self.ban_after {
                s.bans += 1;
                let ban = (self.ban_ms << (s.bans - 1).min(20)).min(MAX_BAN_MS);
                s.ban_until = now_ms + ban;
                s.rejected = 0;
                return Verdict::Banned {
                    used: s.used,
                    retry_after_s: secs(ban),
                };
            }
            let window_end = (window + 1) * self.window_ms;
            return Verdict::Limited {
                used: s.used,
                retry_after_s: secs(window_end - now_ms),
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
}
