//! Feed-health watch, run by the leader only: every `scheduler.feed_check_ms` it reads each live
//! node's `{prefix}:feed:{node_id}` hash (field `market:conn` = `last_frame_ms,mean_gap_ms`,
//! rewritten by the node every second) and orders a reconnect of every connection silent for
//! longer than `scheduler.feed_stale_after_ms` and than ten of its own mean gaps between trades
//! ([`stale_connections`]).
//!
//! The seed did the same from a Celery task once a minute with a 60 s threshold and broadcast the
//! node id on one topic; here the check runs every second, and the order is PUBLISHed on the
//! node's own channel `{prefix}:orders:{node_id}` as JSON
//! `{order:"reconnect", node_id, conn_id, term, issued_at_ms, reason}`, so only that node hears it.
//!
//! - "Now" is the Redis server clock (`TIME`), the clock the registry uses too, so a scheduler
//!   host whose clock is off does not declare every connection stale (node clocks still matter:
//!   they stamp the hash).
//! - At most one order per connection per `feed_stale_after_ms`: a reconnect takes a moment to
//!   show up in the hash (the node rewrites it every second), and a connection that stays silent
//!   after a reconnect (a broker-side outage) must not be hammered with orders ([`OrderLimiter`]).
//! - A connection the node reports as 0 is not connected (never received a frame, connecting,
//!   or waiting out its reconnect backoff); the node's own connect timeout and backoff handle
//!   it, so no order (an order would cut the backoff short: a reconnect storm under a flapping
//!   feed).
//! - The term fences orders: a node ignores orders older than the newest term it has seen.
//!
//! Metrics: `pricefeed_reconnect_orders_total{node}`; every order is logged.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pricefeed_store::feed::{RECONNECT, ReconnectOrder, feed_key, orders_channel};
use pricefeed_store::redis_conn::RedisConn;
use pricefeed_store::registry::Registry;
use tokio_util::sync::CancellationToken;

/// One connection found silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub node_id: String,
    pub conn_id: String,
    pub silent_ms: i64,
    /// The silence this connection was allowed (see [`stale_connections`]).
    pub threshold_ms: i64,
}

/// Trades a connection's own mean rate must have promised within a silence before the silence
/// counts (the node's own watchdog uses the same 10).
const EXPECTED_FRAMES: i64 = 10;
/// No frame at all for this long is a dead connection whatever its rate: the exchange pings
/// every 20 s, so three pings are missing.
const DEAD_WITHOUT_FRAMES_MS: i64 = 60_000;

/// The staleness rule. Each field is `last_frame_ms,mean_gap_ms` (a bare `last_frame_ms`, from an
/// older node, is read as gap 0): the wall-clock ms of the connection's last frame, and the mean
/// time between its trade arrivals this session measured up to the last one (`-1` while too few
/// arrived to tell: allowed the longest silence). A connection is stale when it has been silent for
/// longer than `stale_after_ms` *and* longer than [`EXPECTED_FRAMES`] of its own mean gaps
/// (capped at [`DEAD_WITHOUT_FRAMES_MS`]): a connection carrying only quiet instruments (a few
/// trades a minute each) is legitimately silent for many seconds, and reconnecting it every few
/// minutes would be churn against the exchange's connection-attempt limit. `0` (not connected:
/// connecting or in backoff) and unparsable values are skipped.
pub fn stale_connections(
    now_ms: i64,
    node_id: &str,
    fields: &BTreeMap<String, String>,
    stale_after_ms: u64,
) -> Vec<Stale> {
    let floor = stale_after_ms as i64;
    let cap = floor.max(DEAD_WITHOUT_FRAMES_MS);
    fields
        .iter()
        .filter_map(|(conn, v)| {
            let (last, gap) = match v.split_once(',') {
                Some((last, gap)) => (last.parse::<i64>().ok()?, gap.parse::<i64>().ok()?),
                None => (v.parse::<i64>().ok()?, 0),
            };
            if last <= 0 {
                return None;
            }
            // A negative gap: too few trades this session to tell quiet from stalled yet; allow
            // the longest silence.
            let threshold = if gap < 0 {
                cap
            } else {
                gap.saturating_mul(EXPECTED_FRAMES).clamp(floor, cap)
            };
            let silent = now_ms - last;
            (silent > threshold).then(|| Stale {
                node_id: node_id.to_string(),
                conn_id: conn.clone(),
                silent_ms: silent,
                threshold_ms: threshold,
            })
        })
        .collect()
}

/// "No more than one order per connection per window": remembers when each connection was last
/// ordered.
#[derive(Debug)]
pub struct OrderLimiter {
    window_ms: i64,
    last: HashMap<(String, String), i64>,
}

impl OrderLimiter {
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms: window_ms as i64,
            last: HashMap::new(),
        }
    }

    /// Whether an order for `(node, conn)` may go out at `now_ms`; records it when it may.
    pub fn allow(&mut self, node: &str, conn: &str, now_ms: i64) -> bool {
        let key = (node.to_string(), conn.to_string());
        match self.last.get(&key) {
            Some(&t) if now_ms - t < self.window_ms => false,
            _ => {
                self.last.insert(key, now_ms);
                true
            }
        }
    }

    /// Forgets entries older than the window, so the map does not grow with churned connections.
    pub fn prune(&mut self, now_ms: i64) {
        let w = self.window_ms;
        self.last.retain(|_, t| now_ms - *t < w);
    }
}

/// The leader-only task.
#[derive(Debug, Clone)]
pub struct FeedHealth {
    pub redis: RedisConn,
    pub prefix: String,
    pub check_every: Duration,
    pub stale_after_ms: u64,
    pub node_dead_after_ms: u64,
}

impl crate::leader::LeaderTask for FeedHealth {
    fn name(&self) -> &'static str {
        "feed health"
    }
    fn run(
        &self,
        term: u64,
        token: CancellationToken,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.clone().run(term, token))
    }
}

impl FeedHealth {
    /// Runs under `term` until `token` is cancelled (leadership ended or shutdown).
    pub async fn run(self, term: u64, token: CancellationToken) {
        let mut tick = tokio::time::interval(self.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut limiter = OrderLimiter::new(self.stale_after_ms);
        let mut failing = false;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.check(term, &mut limiter, &token).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("feed-health check recovered");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "feed-health check failed; retrying next tick");
                }
                Err(_) => {}
            }
        }
    }

    async fn check(
        &self,
        term: u64,
        limiter: &mut OrderLimiter,
        token: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let nodes: Vec<String> = Registry::new(self.redis.clone(), &self.prefix)
            .list()
            .await?
            .into_iter()
            .filter(|n| n.is_alive(self.node_dead_after_ms))
            .map(|n| n.node_id)
            .collect();
        if nodes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.hgetall(feed_key(&self.prefix, n));
        }
        let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(&mut redis).await?;
        // The Redis clock, as the registry uses (see the module docs).
        let time: (i64, i64) = redis::cmd("TIME").query_async(&mut redis).await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        limiter.prune(now_ms);
        for (node, fields) in nodes.iter().zip(&hashes) {
            for s in stale_connections(now_ms, node, fields, self.stale_after_ms) {
                // Leadership may have ended while we read; a cancelled term sends nothing more.
                if token.is_cancelled() {
                    return Ok(());
                }
                if !limiter.allow(&s.node_id, &s.conn_id, now_ms) {
                    continue;
                }
                let order = ReconnectOrder {
                    order: RECONNECT.into(),
                    node_id: s.node_id.clone(),
                    conn_id: s.conn_id.clone(),
                    term,
                    issued_at_ms: now_ms,
                    reason: format!(
                        "no message for {} ms (threshold {} ms)",
                        s.silent_ms, s.threshold_ms
                    ),
                };
                let json = serde_json::to_string(&order).expect("orders serialize");
                let receivers: i64 = redis::cmd("PUBLISH")
                    .arg(orders_channel(&self.prefix, &s.node_id))
                    .arg(json)
                    .query_async(&mut redis)
                    .await?;
                metrics::counter!("pricefeed_reconnect_orders_total", "node" => s.node_id.clone())
                    .increment(1);
                tracing::warn!(
                    node = %s.node_id,
                    conn = %s.conn_id,
                    term,
                    silent_ms = s.silent_ms,
                    receivers,
                    "feed connection silent; reconnect ordered"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_connections_silent_past_the_threshold_are_stale() {
        let now = 1_000_000;
        let f = fields(&[
            ("spot:1", "995000,5"),   // 5 s of a busy connection: fine
            ("spot:2", "990000,5"),   // exactly 10 s: not past it
            ("usdm:1", "989999,5"),   // 10.001 s: stale
            ("usdm:2", "989999"),     // the same without a gap (older node): stale
            ("options:1", "0"),       // not connected: the node is reconnecting itself
            ("options:2", "garbage"), // unparsable: skipped, not a crash
            ("options:3", "1,x"),     // unparsable gap: skipped
        ]);
        let s = stale_connections(now, "n1", &f, 10_000);
        let stale = |conn: &str| Stale {
            node_id: "n1".into(),
            conn_id: conn.into(),
            silent_ms: 10_001,
            threshold_ms: 10_000,
        };
        assert_eq!(s, vec![stale("usdm:1"), stale("usdm:2")]);
    }

    #[test]
    fn quiet_connections_get_ten_of_their_own_gaps_up_to_a_minute() {
        let now = 1_000_000;
        // Mean gap 3 s (tail instruments only): 25 s of silence is ordinary, 31 s is not.
        let f = fields(&[("spot:1", "975000,3000"), ("spot:2", "969000,3000")]);
        let s = stale_connections(now, "n1", &f, 10_000);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].conn_id.as_str(), s[0].threshold_ms),
            ("spot:2", 30_000)
        );
        // A very quiet connection, or one with too few trades so far (-1): 60 s at most.
        for gap in ["500000", "-1"] {
            let f = fields(&[
                ("spot:1", &format!("939999,{gap}")),
                ("spot:2", "940000,-1"),
            ]);
            let s = stale_connections(now, "n1", &f, 10_000);
            assert_eq!(s.len(), 1, "{gap}");
            assert_eq!((s[0].silent_ms, s[0].threshold_ms), (60_001, 60_000));
        }
        // A configured threshold above the cap wins.
        let f = fields(&[("spot:1", "939999,500000")]);
        assert!(stale_connections(now, "n1", &f, 90_000).is_empty());
    }

    #[test]
    fn at_most_one_order_per_connection_per_window() {
        let mut l = OrderLimiter::new(10_000);
        assert!(l.allow("n1", "spot:1", 0));
        // Still stale a second later, and for the whole window: no storm.
        for t in (1_000..10_000).step_by(1_000) {
            assert!(!l.allow("n1", "spot:1", t), "at {t}");
        }
        // Other connections and nodes are limited independently.
        assert!(l.allow("n1", "spot:2", 500));
        assert!(l.allow("n2", "spot:1", 500));
        // After the window, a connection still silent gets one more order.
        assert!(l.allow("n1", "spot:1", 10_000));
        assert!(!l.allow("n1", "spot:1", 10_001));
        l.prune(30_000);
        assert!(l.last.is_empty());
    }

    #[test]
    fn order_json_has_the_documented_shape() {
        let o = ReconnectOrder {
            order: "reconnect".into(),
            node_id: "n1".into(),
            conn_id: "spot:1".into(),
            term: 7,
            issued_at_ms: 123,
            reason: "r".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&o).unwrap();
        for k in [
            "order",
            "node_id",
            "conn_id",
            "term",
            "issued_at_ms",
            "reason",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
    }
}
