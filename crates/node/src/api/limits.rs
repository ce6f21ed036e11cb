//! Request limits of the node's HTTP API (`[node.limits]`): the body size, and rate limits per
//! client address and per authenticated user, answered with 429 problem+json and `Retry-After`.
//!
//! - [`Gcra`]: the generic cell rate algorithm, pure and clock-injected: a key is allowed
//!   `burst` requests at once and `rate` per period after that; its whole state is one
//!   "theoretical arrival time".
//! - [`KeyedLimiter`]: one [`Gcra`] state per key (client address, user id) in a sharded map,
//!   bounded by `max_tracked` keys.
//! - [`client_ip`]: the client's address: the TCP peer, or, when the peer is one of
//!   `trusted_proxies`, the rightmost `X-Forwarded-For` entry that is not a trusted proxy.
//!   IPv6 clients are counted per /64 (one host usually holds a whole /64).
//! - [`RateLimiter`] as the HTTP stack's admission check
//!   ([`pricefeed_runtime::http::Admit`]). Every request but the probes and `/metrics` counts against
//!   its address; a request with a valid bearer token also against its user, and a write
//!   (`POST`/`PUT`/`PATCH`/`DELETE`: alert creation and changes) also against the user's write
//!   budget. Login and registration keep their own cluster-wide per-minute limits in
//!   [`crate::auth::api`], keyed by the same client address.
//!
//! The limits are per node: behind a load balancer spreading requests over N nodes a client
//! gets up to N times them (a cluster-wide budget would cost a Redis round trip per request).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use pricefeed_runtime::config::ConfigError;
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// `[node.limits]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, bytes; a larger one is refused with 413.
    pub max_body_bytes: usize,
    /// Sustained requests per second from one client address (IPv6: one /64).
    pub per_address_per_sec: u32,
    /// Requests one address may send at once above the sustained rate.
    pub per_address_burst: u32,
    /// Sustained requests per second with one user's access token.
    pub per_user_per_sec: u32,
    /// Requests one user may send at once above the sustained rate.
    pub per_user_burst: u32,
    /// Sustained writes (POST, PUT, PATCH, DELETE: alert creation and changes, logout) per
    /// minute with one user's access token.
    pub per_user_writes_per_min: u32,
    /// Writes one user may send at once above the sustained rate.
    pub per_user_writes_burst: u32,
    /// Peers whose `X-Forwarded-For` names the client: addresses or CIDR blocks of the load
    /// balancers in front of the nodes (`["10.0.0.0/8"]`). Anyone else's header is ignored,
    /// since a client could put any address there.
    pub trusted_proxies: Vec<String>,
    /// Most keys each limiter tracks at once (idle keys are forgotten first); past it, new keys
    /// pass unlimited until old ones expire, and `pricefeed_rate_limit_untracked_total` counts
    /// them.
    pub max_tracked: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            per_address_per_sec: 100,
            per_address_burst: 200,
            per_user_per_sec: 50,
            per_user_burst: 100,
            per_user_writes_per_min: 60,
            per_user_writes_burst: 20,
            trusted_proxies: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = |key: &str, msg: &str| Err(ConfigError::key(format!("node.limits.{key}"), msg));
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return k("max_body_bytes", "must be between 1024 and 67108864");
        }
        for (key, rate, burst) in [
            (
                "per_address_per_sec",
                self.per_address_per_sec,
                self.per_address_burst,
            ),
            (
                "per_user_per_sec",
                self.per_user_per_sec,
                self.per_user_burst,
            ),
            (
                "per_user_writes_per_min",
                self.per_user_writes_per_min,
                self.per_user_writes_burst,
            ),
        ] {
            if !(1..=1_000_000).contains(&rate) {
                return k(key, "must be between 1 and 1000000");
            }
            if !(1..=10_000_000).contains(&burst) {
                return k(
                    &key.replace("_per_sec", "_burst")
                        .replace("_per_min", "_burst"),
                    "must be between 1 and 10000000",
                );
            }
        }
        if let Err(e) = parse_proxies(&self.trusted_proxies) {
            return k("trusted_proxies", &e);
        }
        if !(1_000..=10_000_000).contains(&self.max_tracked) {
            return k("max_tracked", "must be between 1000 and 10000000");
        }
        Ok(())
    }
}

// --- GCRA -------------------------------------------------------------------------------------

/// The generic cell rate algorithm: `burst` requests at once, then one per `period / rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between two requests at the sustained rate, ns.
    interval: u64,
    /// `interval × burst`: how far ahead of now the theoretical arrival time may run.
    tolerance: u64,
}

impl Gcra {
    /// `rate` requests per `period`, `burst` at once (both at least 1).
    pub fn new(rate: u32, period: Duration, burst: u32) -> Self {
        let interval = (period.as_nanos() / u128::from(rate.max(1))).max(1) as u64;
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// One request at `now` (ns on the limiter's clock) against the key's state `tat` (0 for a
    /// new key): allowed (and counted), or refused with the wait until it would be allowed.
    pub fn check(&self, tat: &mut u64, now: u64) -> Result<(), Duration> {
        let next = (*tat).max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.tolerance {
            return Err(Duration::from_nanos(ahead - self.tolerance));
        }
        *tat = next;
        Ok(())
    }
}

/// One [`Gcra`] state per key, in shards so concurrent requests rarely wait on one lock.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    gcra: Gcra,
    shards: Vec<Mutex<HashMap<K, u64>>>,
    hasher: RandomState,
    per_shard: usize,
}

const SHARDS: usize = 16;

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(gcra: Gcra, max_tracked: usize) -> Self {
        Self {
            gcra,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: max_tracked.div_ceil(SHARDS).max(1),
        }
    }

    /// One request of `key` at `now` (ns on the limiter's clock).
    pub fn check(&self, key: &K, now: u64) -> Result<(), Duration> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        let mut m = self.shards[i].lock().unwrap();
        if let Some(tat) = m.get_mut(key) {
            return self.gcra.check(tat, now);
        }
        if m.len() >= self.per_shard {
            // A key whose arrival time has passed is back to a full burst, the same as a key
            // never seen: forgetting it changes nothing.
            m.retain(|_, tat| *tat > now);
            if m.len() >= self.per_shard {
                metrics::counter!("pricefeed_rate_limit_untracked_total").increment(1);
                return Ok(());
            }
        }
        let mut tat = 0;
        let r = self.gcra.check(&mut tat, now);
        m.insert(key.clone(), tat);
        r
    }

    /// Keys tracked now (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// --- client address ---------------------------------------------------------------------------

/// An address block (`10.0.0.0/8`, `::1/128`; a bare address is a full-length block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok().filter(|p| *p <= max)?
            }
            Some(_) => return None,
        };
        Some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses `trusted_proxies`; the error names the bad entry.
pub fn parse_proxies(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            IpNet::parse(s).ok_or_else(|| {
                format!("{s:?} is not an IP address or CIDR block (like 10.0.0.0/8 or ::1)")
            })
        })
        .collect()
}

/// Most `X-Forwarded-For` entries looked at, from the right: a chain of proxies is short, and
/// the header is the client's to make long.
const MAX_HOPS: usize = 16;

/// The client's address: `peer`, or when `peer` is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not one (each proxy appends the address it heard from, so
/// entries left of the first untrusted one are whatever the client wrote). A malformed entry
/// stops the walk at the proxy that passed it on.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let mut ip = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(ip) {
        return ip;
    }
    // Several header lines form one list, in order.
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let entries = values.iter().rev().flat_map(|v| v.rsplit(','));
    for entry in entries.take(MAX_HOPS) {
        let entry = entry.trim();
        let Some(hop) = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        else {
            return ip;
        };
        ip = hop.to_canonical();
        if !is_trusted(ip) {
            return ip;
        }
    }
    ip
}

/// The key an address is limited by: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// The client address the [`RateLimiter`] worked out, for handlers (the login limits); the TCP
/// peer when the limiter did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<ClientIp>() {
            return Ok(*c);
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| ClientIp(a.ip().to_canonical()))
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no peer address on the request")))
    }
}

// --- the admission check ---------------------------------------------------------------------------

/// The limiters of one node, shared by every request.
#[derive(Debug)]
pub struct RateLimiter {
    cfg: LimitsConfig,
    trusted: Vec<IpNet>,
    tokens: crate::auth::jwt::Tokens,
    by_address: KeyedLimiter<IpAddr>,
    by_user: KeyedLimiter<i64>,
    user_writes: KeyedLimiter<i64>,
    epoch: Instant,
}

impl RateLimiter {
    /// From a validated config (`trusted_proxies` parse).
    pub fn new(cfg: &LimitsConfig, tokens: crate::auth::jwt::Tokens) -> Arc<Self> {
        let sec = Duration::from_secs(1);
        Arc::new(Self {
            trusted: parse_proxies(&cfg.trusted_proxies).unwrap_or_default(),
            tokens,
            by_address: KeyedLimiter::new(
                Gcra::new(cfg.per_address_per_sec, sec, cfg.per_address_burst),
                cfg.max_tracked,
            ),
            by_user: KeyedLimiter::new(
                Gcra::new(cfg.per_user_per_sec, sec, cfg.per_user_burst),
                cfg.max_tracked,
            ),
            user_writes: KeyedLimiter::new(
                Gcra::new(
                    cfg.per_user_writes_per_min,
                    Duration::from_secs(60),
                    cfg.per_user_writes_burst,
                ),
                cfg.max_tracked,
            ),
            cfg: cfg.clone(),
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The user of a valid bearer token, if the request carries one. An invalid one is left to
    /// the route (401 where a token is needed); it counts only against the address.
    fn user(&self, headers: &HeaderMap) -> Option<i64> {
        let h = headers.get(AUTHORIZATION)?.to_str().ok()?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))?
            .trim();
        self.tokens.verify(token).ok()?.user_id()
    }

    /// Counts one request; the 429 to answer when it is over a limit.
    pub fn check(&self, ip: IpAddr, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let now = self.now();
        let refuse = |scope: &'static str, detail: String, wait: Duration| {
            metrics::counter!("pricefeed_rate_limited_total", "scope" => scope).increment(1);
            Err(ApiError::TooManyRequests {
                detail,
                // Whole seconds, rounded up: a client waiting that long is let through.
                retry_after: Some(Duration::from_secs(
                    wait.as_nanos().div_ceil(1_000_000_000) as u64
                )),
            })
        };
        if let Err(wait) = self.by_address.check(&address_key(ip), now) {
            return refuse(
                "address",
                format!(
                    "too many requests from {ip}: at most {} per second (bursts of {}); retry later",
                    self.cfg.per_address_per_sec, self.cfg.per_address_burst
                ),
                wait,
            );
        }
        let Some(user) = self.user(headers) else {
            return Ok(());
        };
        if let Err(wait) = self.by_user.check(&user, now) {
            return refuse(
                "user",
                format!(
                    "too many requests for this user: at most {} per second (bursts of {}); retry later",
                    self.cfg.per_user_per_sec, self.cfg.per_user_burst
                ),
                wait,
            );
        }
        let write = matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        if write && let Err(wait) = self.user_writes.check(&user, now) {
            return refuse(
                "user_writes",
                format!(
                    "too many changes for this user: at most {} per minute (bursts of {}); retry later",
                    self.cfg.per_user_writes_per_min, self.cfg.per_user_writes_burst
                ),
                wait,
            );
        }
        Ok(())
    }
}

/// Paths never limited: probes and scrapes must work while a client floods the node.
fn exempt(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/metrics")
}

/// The rate limits as the HTTP stack's admission check (see the module docs); also records
/// [`ClientIp`] for handlers.
impl pricefeed_runtime::http::Admit for RateLimiter {
    fn admit(&self, req: &mut Request) -> Option<Response> {
        if exempt(req.uri().path()) {
            return None;
        }
        let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
        else {
            // Only in-process tests call the router without a connection.
            return None;
        };
        let ip = client_ip(peer.ip(), req.headers(), &self.trusted);
        if let Err(e) = self.check(ip, req.method(), req.headers()) {
            return Some(e.into_response());
        }
        req.extensions_mut().insert(ClientIp(ip));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn gcra_allows_a_burst_then_the_sustained_rate() {
        let g = Gcra::new(10, Duration::from_secs(1), 5);
        let mut tat = 0;
        let t0 = 100 * S;
        for _ in 0..5 {
            assert_eq!(g.check(&mut tat, t0), Ok(()));
        }
        // The sixth at once waits one interval (100 ms).
        assert_eq!(g.check(&mut tat, t0), Err(Duration::from_millis(100)));
        // A refused request is not counted: after 100 ms exactly one more passes.
        assert_eq!(g.check(&mut tat, t0 + S / 10), Ok(()));
        assert!(g.check(&mut tat, t0 + S / 10).is_err());
        // A second of silence refills the burst up to 5, never beyond.
        let later = t0 + 10 * S;
        for _ in 0..5 {
            assert_eq!(g.check(&mut tat, later), Ok(()));
        }
        assert!(g.check(&mut tat, later).is_err());
        // Steady traffic at the rate is never refused.
        let mut tat = 0;
        for i in 0..1000 {
            assert_eq!(g.check(&mut tat, t0 + i * S / 10), Ok(()), "request {i}");
        }
    }

    #[test]
    fn gcra_per_minute_rates_wait_whole_intervals() {
        let g = Gcra::new(60, Duration::from_secs(60), 2);
        let mut tat = 0;
        assert!(g.check(&mut tat, S).is_ok());
        assert!(g.check(&mut tat, S).is_ok());
        assert_eq!(g.check(&mut tat, S), Err(Duration::from_secs(1)));
        assert_eq!(
            g.check(&mut tat, S + S / 2),
            Err(Duration::from_millis(500))
        );
    }

    #[test]
    fn keyed_limiter_keeps_keys_apart_and_bounds_its_memory() {
        let l = KeyedLimiter::new(Gcra::new(1, Duration::from_secs(1), 1), 1_600);
        assert!(l.check(&1, S).is_ok());
        assert!(l.check(&1, S).is_err());
        assert!(l.check(&2, S).is_ok());
        // Many keys: expired ones are forgotten when a shard fills.
        for k in 0..10_000 {
            let _ = l.check(&k, S + k as u64 * S);
        }
        assert!(l.len() <= 1_600, "{}", l.len());
        // All live at once: past the bound new keys pass untracked rather than grow the map.
        let l = KeyedLimiter::new(Gcra::new(1, Duration::from_secs(3600), 1), 1_600);
        for k in 0..5_000 {
            assert!(l.check(&k, S).is_ok());
        }
        assert!(l.len() <= 1_600 + SHARDS, "{}", l.len());
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let trusted = parse_proxies(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // Behind a trusted proxy: the entry it appended.
        assert_eq!(
            client_ip(ip("10.1.2.3"), &headers(&["1.2.3.4"]), &trusted),
            ip("1.2.3.4")
        );
        // A client-forged entry left of the real one is skipped; trusted hops are walked.
        assert_eq!(
            client_ip(
                ip("10.1.2.3"),
                &headers(&["6.6.6.6, 198.51.100.7", "10.9.9.9"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Garbage stops at the proxy that passed it; no header means the proxy itself.
        assert_eq!(
            client_ip(ip("10.1.2.3"), &headers(&["1.2.3.4, nonsense"]), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(client_ip(ip("::1"), &headers(&[]), &trusted), ip("::1"));
        // IPv4-mapped peers count as IPv4; ports are tolerated.
        assert_eq!(
            client_ip(
                ip("::ffff:10.0.0.1"),
                &headers(&["[2001:db8::1]:443"]),
                &trusted
            ),
            ip("2001:db8::1")
        );
        // IPv6 clients are keyed by their /64.
        assert_eq!(
            address_key(ip("2001:db8:0:1:2:3:4:5")),
            ip("2001:db8:0:1::")
        );
        assert_eq!(address_key(ip("2001:db8::1:2:3:4")), ip("2001:db8::"));
        assert_eq!(address_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn proxy_lists_parse_and_match() {
        let n = IpNet::parse("192.168.0.0/16").unwrap();
        assert!(n.contains("192.168.200.1".parse().unwrap()));
        assert!(!n.contains("192.169.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            IpNet::parse("fd00::/8")
                .unwrap()
                .contains("fdab::1".parse().unwrap())
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10/8",
            "::1/129",
            "10.0.0.0/+8",
            "x",
        ] {
            assert!(IpNet::parse(bad).is_none(), "{bad}");
        }
        let err = parse_proxies(&["10.0.0.0/8".into(), "nope".into()]).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        LimitsConfig::default().validate().unwrap();
        let bad = LimitsConfig {
            per_user_burst: 0,
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("node.limits.per_user_burst"), "{e}");
        let bad = LimitsConfig {
            trusted_proxies: vec!["10.0.0.0/40".into()],
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("node.limits.trusted_proxies"), "{e}");
    }
}
