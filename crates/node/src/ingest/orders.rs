//! Reconnect orders from the scheduler's feed-health watch (`pricefeed_scheduler::feed_health`):
//! this node subscribes to its own channel `{prefix}:orders:{node_id}` on a dedicated RESP2
//! pub/sub connection (the same pattern as the assignment watcher in `membership`), validates each
//! order and makes the named connection reconnect.
//!
//! An order is applied only when it is well-formed JSON of the documented shape, is addressed to
//! this node, names a connection this node has and that is connected (one that is not is already
//! reconnecting), and carries a term no older than the newest term seen in an order: a deposed
//! leader's late order must not undo what the current leader decided. Everything else is ignored
//! and counted in `pricefeed_feed_orders_total{result}`; nothing here can crash the node.
//! A lost subscription is retried every few seconds; orders published meanwhile are lost, which
//! is harmless: the scheduler orders again after its rate-limit window if the connection is
//! still silent, and the node's own stall watchdog still runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pricefeed_store::feed::{RECONNECT, ReconnectOrder, orders_channel};
use tokio_util::sync::CancellationToken;

use super::connector::HealthRegistry;

/// What became of one order (the metric label `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Malformed,
    OtherNode,
    UnknownConn,
    NotConnected,
    StaleTerm,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Malformed => "malformed",
            Self::OtherNode => "other_node",
            Self::UnknownConn => "unknown_conn",
            Self::NotConnected => "not_connected",
            Self::StaleTerm => "stale_term",
        }
    }
}

/// Validates orders and triggers reconnects; keeps the newest term seen.
#[derive(Debug)]
pub struct OrderHandler {
    pub node_id: String,
    pub health: HealthRegistry,
    newest_term: u64,
}

impl OrderHandler {
    pub fn new(node_id: String, health: HealthRegistry) -> Self {
        Self {
            node_id,
            health,
            newest_term: 0,
        }
    }

    /// Handles one raw payload.
    pub fn handle(&mut self, payload: &[u8]) -> Outcome {
        let order: ReconnectOrder = match serde_json::from_slice(payload) {
            Ok(o) => o,
            Err(e) => {
                let head = String::from_utf8_lossy(&payload[..payload.len().min(120)]).into_owned();
                tracing::warn!(error = %e, payload = head, "malformed order ignored");
                return Outcome::Malformed;
            }
        };
        if order.order != RECONNECT {
            tracing::warn!(order = order.order, "unknown order ignored");
            return Outcome::Malformed;
        }
        if order.node_id != self.node_id {
            tracing::warn!(to = order.node_id, "order for another node ignored");
            return Outcome::OtherNode;
        }
        if order.term < self.newest_term {
            tracing::warn!(
                term = order.term,
                newest = self.newest_term,
                "order from an older leader term ignored"
            );
            return Outcome::StaleTerm;
        }
        // Remembered before the connection lookup: a valid term is news even when the
        // connection has gone since.
        self.newest_term = order.term;
        let conn = self
            .health
            .lock()
            .unwrap()
            .iter()
            .find(|h| format!("{}:{}", h.market, h.conn) == order.conn_id)
            .cloned();
        let Some(conn) = conn else {
            tracing::info!(
                conn = order.conn_id,
                "order for an unknown connection ignored"
            );
            return Outcome::UnknownConn;
        };
        if !conn.connected.load(Ordering::Relaxed) {
            tracing::info!(
                conn = order.conn_id,
                "order for a connection already reconnecting ignored"
            );
            return Outcome::NotConnected;
        }
        tracing::warn!(
            conn = order.conn_id,
            term = order.term,
            reason = order.reason,
            "reconnect ordered by the scheduler"
        );
        conn.reconnect.notify_waiters();
        Outcome::Applied
    }
}

/// Subscribes to this node's order channel and handles orders until `token` is cancelled.
pub async fn run(
    redis_endpoint: pricefeed_store::redis_conn::RedisEndpoint,
    prefix: String,
    mut handler: OrderHandler,
    token: CancellationToken,
) {
    let channel = orders_channel(&prefix, &handler.node_id);
    crate::pubsub::listen(
        &redis_endpoint,
        &channel,
        "reconnect orders",
        Duration::from_secs(2),
        crate::pubsub::Keepalive::default(),
        &token,
        &mut handler,
    )
    .await;
}

impl crate::pubsub::Listener for OrderHandler {
    fn message(&mut self, payload: &[u8]) {
        let outcome = self.handle(payload);
        metrics::counter!("pricefeed_feed_orders_total", "result" => outcome.label()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};

    use pricefeed_domain::instrument::Market;
    use tokio::sync::Notify;

    use super::super::connector::ConnHealth;
    use super::*;

    fn registry() -> (HealthRegistry, Arc<ConnHealth>) {
        let h = Arc::new(ConnHealth {
            market: Market::Spot,
            conn: 1,
            connected: AtomicBool::new(true),
            last_frame_ms: AtomicI64::new(0),
            mean_gap_ms: AtomicI64::new(0),
            streams: AtomicUsize::new(1),
            sessions: AtomicU64::new(1),
            reconnect: Notify::new(),
        });
        (Arc::new(std::sync::Mutex::new(vec![h.clone()])), h)
    }

    fn order(node: &str, conn: &str, term: u64) -> Vec<u8> {
        serde_json::to_vec(&ReconnectOrder {
            order: RECONNECT.into(),
            node_id: node.into(),
            conn_id: conn.into(),
            term,
            issued_at_ms: 1,
            reason: "test".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn orders_are_validated_before_a_connection_is_cut() {
        let (reg, h) = registry();
        let mut o = OrderHandler::new("n1".into(), reg);
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"order":"explode","node_id":"n1","conn_id":"spot:1","term":1,"issued_at_ms":1,"reason":""}"#,
            br#"{"order":"reconnect","node_id":"n1","conn_id":"spot:1","term":-1,"issued_at_ms":1,"reason":""}"#,
            &[0xff, 0xfe],
        ] {
            assert_eq!(o.handle(bad), Outcome::Malformed);
        }
        assert_eq!(o.handle(&order("n2", "spot:1", 5)), Outcome::OtherNode);
        assert_eq!(o.handle(&order("n1", "usdm:1", 5)), Outcome::UnknownConn);

        // A valid order wakes the session's waiter.
        let waiter = h.reconnect.notified();
        tokio::pin!(waiter);
        assert_eq!(o.handle(&order("n1", "spot:1", 5)), Outcome::Applied);
        tokio::time::timeout(std::time::Duration::from_secs(1), &mut waiter)
            .await
            .expect("session woken");

        // An older term after term 5 is a deposed leader's: ignored.
        assert_eq!(o.handle(&order("n1", "spot:1", 4)), Outcome::StaleTerm);
        // A disconnected connection is already reconnecting.
        h.connected.store(false, Ordering::Relaxed);
        assert_eq!(o.handle(&order("n1", "spot:1", 6)), Outcome::NotConnected);
    }
}
