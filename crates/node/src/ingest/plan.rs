//! Which connection of a market carries which stream, and in what order slice changes are
//! applied. Pure (time passed in), so the handover order is unit-tested.
//!
//! Rules:
//! - a connection carries at most `max_per_conn` streams; new streams fill existing connections
//!   first (fewer connections = fewer pings, fewer connection attempts against the exchange's
//!   300-per-5-minutes budget), then open new ones;
//! - every change emits its subscriptions before any unsubscription, and a stream leaving the
//!   slice stays subscribed for `grace` (handover: the new owner subscribes before the old one
//!   lets go; nodes learn an assignment at roughly, not exactly, the same time);
//! - a stream that comes back during its grace is simply kept (no unsubscribe/subscribe churn).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

/// One step for the connection tasks, in emission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Start connection `conn` carrying `streams` (it subscribes them once connected).
    Open {
        conn: u64,
        streams: Vec<String>,
    },
    Subscribe {
        conn: u64,
        streams: Vec<String>,
    },
    Unsubscribe {
        conn: u64,
        streams: Vec<String>,
    },
    /// Connection `conn` carries nothing any more.
    Close {
        conn: u64,
    },
}

/// The subscription layout of one market.
#[derive(Debug)]
pub struct Planner {
    max_per_conn: usize,
    grace: Duration,
    next_conn: u64,
    conns: BTreeMap<u64, BTreeSet<String>>,
    /// Streams wanted by the current slice.
    wanted: BTreeSet<String>,
    /// Streams no longer wanted, kept until their deadline.
    releasing: BTreeMap<String, Instant>,
}

impl Planner {
    pub fn new(max_per_conn: usize, grace: Duration) -> Self {
        Self {
            max_per_conn: max_per_conn.max(1),
            grace,
            next_conn: 1,
            conns: BTreeMap::new(),
            wanted: BTreeSet::new(),
            releasing: BTreeMap::new(),
        }
    }

    fn conn_of(&self, stream: &str) -> Option<u64> {
        self.conns
            .iter()
            .find(|(_, s)| s.contains(stream))
            .map(|(&c, _)| c)
    }

    /// Applies a new slice: subscriptions first, releases scheduled after `grace` (or emitted
    /// right after the subscriptions when `grace` is zero).
    pub fn apply(&mut self, wanted: BTreeSet<String>, now: Instant) -> Vec<Op> {
        let mut ops = Vec::new();
        let added: Vec<String> = wanted
            .iter()
            .filter(|s| {
                // Back during its grace: still subscribed, nothing to do.
                self.releasing.remove(*s).is_none() && self.conn_of(s).is_none()
            })
            .cloned()
            .collect();
        for s in self.wanted.difference(&wanted) {
            self.releasing.entry(s.clone()).or_insert(now + self.grace);
        }
        self.wanted = wanted;

        // Fill connections with room, in connection order, then open new ones.
        let mut per_conn: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut opened: Vec<u64> = Vec::new();
        for s in added {
            let room = self
                .conns
                .iter()
                .find(|(_, set)| set.len() < self.max_per_conn)
                .map(|(&c, _)| c);
            let c = match room {
                Some(c) => c,
                None => {
                    let c = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(c, BTreeSet::new());
                    opened.push(c);
                    c
                }
            };
            self.conns.get_mut(&c).expect("present").insert(s.clone());
            per_conn.entry(c).or_default().push(s);
        }
        for (conn, streams) in per_conn {
            if opened.contains(&conn) {
                ops.push(Op::Open { conn, streams });
            } else {
                ops.push(Op::Subscribe { conn, streams });
            }
        }
        if self.grace.is_zero() {
            ops.extend(self.due(now));
        }
        ops
    }

    /// Releases whose grace has ended, as unsubscriptions (and closes of emptied connections).
    pub fn due(&mut self, now: Instant) -> Vec<Op> {
        let expired: Vec<String> = self
            .releasing
            .iter()
            .filter(|&(_, &d)| d <= now)
            .map(|(s, _)| s.clone())
            .collect();
        let mut per_conn: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for s in expired {
            self.releasing.remove(&s);
            if let Some(c) = self.conn_of(&s) {
                self.conns.get_mut(&c).expect("present").remove(&s);
                per_conn.entry(c).or_default().push(s);
            }
        }
        let mut ops = Vec::new();
        for (conn, streams) in per_conn {
            if self.conns.get(&conn).is_some_and(BTreeSet::is_empty) {
                self.conns.remove(&conn);
                ops.push(Op::Close { conn });
            } else {
                ops.push(Op::Unsubscribe { conn, streams });
            }
        }
        ops
    }

    /// When [`Self::due`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.releasing.values().min().copied()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Streams currently subscribed (wanted or in grace).
    pub fn subscribed(&self) -> usize {
        self.conns.values().map(BTreeSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subscribes_before_unsubscribing_and_waits_for_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut p = Planner::new(2, grace);
        let ops = p.apply(set(&["a", "b", "c"]), t0);
        assert_eq!(
            ops,
            vec![
                Op::Open {
                    conn: 1,
                    streams: vec!["a".into(), "b".into()]
                },
                Op::Open {
                    conn: 2,
                    streams: vec!["c".into()]
                },
            ]
        );
        // Slice change: b leaves, d arrives. Only the subscription happens now.
        let ops = p.apply(set(&["a", "c", "d"]), t0);
        assert_eq!(
            ops,
            vec![Op::Subscribe {
                conn: 2,
                streams: vec!["d".into()]
            }]
        );
        assert_eq!(p.next_deadline(), Some(t0 + grace));
        assert!(p.due(t0 + grace - Duration::from_millis(1)).is_empty());
        assert_eq!(
            p.due(t0 + grace),
            vec![Op::Unsubscribe {
                conn: 1,
                streams: vec!["b".into()]
            }]
        );
        // With zero grace, the unsubscription follows the subscription in the same plan.
        let mut p = Planner::new(10, Duration::ZERO);
        p.apply(set(&["a", "b"]), t0);
        let ops = p.apply(set(&["b", "x"]), t0);
        let first_unsub = ops
            .iter()
            .position(|o| matches!(o, Op::Unsubscribe { .. }))
            .unwrap();
        let last_sub = ops
            .iter()
            .rposition(|o| matches!(o, Op::Subscribe { .. } | Op::Open { .. }))
            .unwrap();
        assert!(last_sub < first_unsub, "{ops:?}");
    }

    #[test]
    fn a_stream_back_within_its_grace_is_kept_and_empty_connections_close() {
        let t0 = Instant::now();
        let mut p = Planner::new(1, Duration::from_secs(1));
        p.apply(set(&["a", "b"]), t0);
        assert_eq!(p.connections(), 2);
        assert!(p.apply(set(&["a"]), t0).is_empty());
        // b comes back: no op at all, and nothing due later.
        assert!(p.apply(set(&["a", "b"]), t0).is_empty());
        assert_eq!(p.next_deadline(), None);
        assert!(p.apply(set(&[]), t0).is_empty());
        let ops = p.due(t0 + Duration::from_secs(1));
        assert_eq!(ops, vec![Op::Close { conn: 1 }, Op::Close { conn: 2 }]);
        assert_eq!((p.connections(), p.subscribed()), (0, 0));
    }

    #[test]
    fn never_exceeds_the_per_connection_limit() {
        let t0 = Instant::now();
        let mut p = Planner::new(1024, Duration::ZERO);
        let many: BTreeSet<String> = (0..2500).map(|i| format!("s{i}@trade")).collect();
        p.apply(many.clone(), t0);
        assert_eq!(p.connections(), 3);
        assert!(p.conns.values().all(|s| s.len() <= 1024));
        // Half leave, others arrive (subscribed before the leavers are dropped).
        let next: BTreeSet<String> = (1250..3000).map(|i| format!("s{i}@trade")).collect();
        p.apply(next.clone(), t0);
        assert_eq!(p.subscribed(), next.len());
        assert!(p.conns.values().all(|s| s.len() <= 1024));
        assert!(p.connections() <= 4);
    }
}
