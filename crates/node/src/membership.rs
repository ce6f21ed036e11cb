//! Cluster membership of one node: its registry heartbeat, and its view of the published slice
//! assignment ("my slice").
//!
//! Both run as tracked tasks stopped by the shutdown token. The heartbeat task deregisters on the
//! way out, so a graceful stop moves the slice at the scheduler's next tick instead of after the
//! dead-node timeout. The assignment watcher re-reads the published document when the scheduler's
//! "assignment changed" message arrives (fast path) and on a timer (fallback: pub/sub messages sent
//! while the subscription was down are lost), and publishes the result on a `watch` channel that
//! the API and, later, the feed connector read.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pricefeed_domain::assignment::NodeId;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::assignment::{self as published, Published};
use pricefeed_store::redis_conn::RedisConn;
use pricefeed_store::registry::{NodeRecord, Registry};
use tokio::sync::watch;

/// What this node knows about the assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceView {
    /// The newest published assignment seen; `None` before the first leader published.
    pub published: Option<Arc<Published>>,
    /// The instruments this node owns under it, in key order.
    pub my_slice: Arc<Vec<InstrumentKey>>,
}

impl SliceView {
    pub fn epoch(&self) -> u64 {
        self.published.as_ref().map_or(0, |p| p.epoch)
    }
}

/// Settings of the two tasks.
#[derive(Debug, Clone)]
pub struct Membership {
    pub redis: RedisConn,
    /// For the dedicated pub/sub connection (the multiplexed manager would need RESP3).
    pub redis_endpoint: pricefeed_store::redis_conn::RedisEndpoint,
    pub prefix: String,
    pub record: NodeRecord,
    pub heartbeat: Duration,
    pub registration_ttl_ms: u64,
    pub poll: Duration,
}

impl Membership {
    /// Registers once (so a node is visible as soon as it serves), then starts both tasks.
    pub async fn start(self, shutdown: &Shutdown) -> anyhow::Result<watch::Receiver<SliceView>> {
        let mut registry = Registry::new(self.redis.clone(), &self.prefix);
        registry
            .heartbeat(&self.record, self.registration_ttl_ms)
            .await?;
        let (tx, rx) = watch::channel(SliceView::default());
        let this = Arc::new(self);
        shutdown
            .tracker()
            .spawn(this.clone().heartbeat_loop(registry, shutdown.token()));
        shutdown
            .tracker()
            .spawn(this.watch_loop(tx, shutdown.token()));
        Ok(rx)
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        mut registry: Registry,
        token: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = tick.tick() => {
                    match registry.heartbeat(&self.record, self.registration_ttl_ms).await {
                        Ok(_) if failing => {
                            failing = false;
                            tracing::info!("registry heartbeat recovered");
                        }
                        Ok(_) => {}
                        // Log the transition only: one line per outage, not one per second.
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "registry heartbeat failed");
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        match registry.deregister(&self.record.node_id).await {
            Ok(()) => tracing::info!("deregistered from the node registry"),
            Err(e) => tracing::warn!(error = %e, "deregister failed; the entry will age out"),
        }
    }

    async fn watch_loop(
        self: Arc<Self>,
        tx: watch::Sender<SliceView>,
        token: tokio_util::sync::CancellationToken,
    ) {
        let me = NodeId::from(self.record.node_id.as_str());
        let mut conn = self.redis.clone();
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut notices: Option<redis::aio::PubSubStream> = None;
        let mut next_subscribe = tokio::time::Instant::now();
        loop {
            if notices.is_none() && tokio::time::Instant::now() >= next_subscribe {
                notices = self.subscribe().await;
                // Retry a failed subscription at a calm pace; polling covers the gap.
                next_subscribe = tokio::time::Instant::now() + Duration::from_secs(5);
            }
            tokio::select! {
                () = token.cancelled() => break,
                _ = tick.tick() => {}
                msg = async { notices.as_mut().expect("guarded").next().await }, if notices.is_some() => {
                    if msg.is_none() {
                        tracing::warn!("assignment subscription closed; polling until it is back");
                        notices = None;
                        continue;
                    }
                }
            }
            match published::read(&mut conn, &self.prefix).await {
                Ok(Some(doc)) => apply(&tx, &me, doc),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "reading the assignment failed"),
            }
        }
    }

    async fn subscribe(&self) -> Option<redis::aio::PubSubStream> {
        let channel = published::changed_channel(&self.prefix);
        match crate::pubsub::subscribe(&self.redis_endpoint, &channel).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to assignment changes; polling only");
                None
            }
        }
    }
}

/// Installs `doc` unless it is older than what we have. Epochs only grow (the scheduler keeps a
/// durable floor), so a lower epoch is a stale write and is ignored.
fn apply(tx: &watch::Sender<SliceView>, me: &NodeId, doc: Published) {
    tx.send_if_modified(|view| {
        if let Some(cur) = &view.published {
            if doc.epoch < cur.epoch {
                tracing::warn!(
                    seen = cur.epoch,
                    got = doc.epoch,
                    "ignoring an older assignment"
                );
                return false;
            }
            if doc.epoch == cur.epoch && doc.term == cur.term && doc.owners == cur.owners {
                return false;
            }
        }
        let slice: Vec<InstrumentKey> = doc
            .owners
            .iter()
            .filter(|(_, n)| *n == me)
            .map(|(s, _)| s.clone())
            .collect();
        let before = view.my_slice.len();
        tracing::info!(
            epoch = doc.epoch,
            term = doc.term,
            slice = slice.len(),
            before,
            "assignment updated"
        );
        metrics::gauge!("pricefeed_assignment_epoch").set(doc.epoch as f64);
        metrics::gauge!("pricefeed_node_slice_size").set(slice.len() as f64);
        view.published = Some(Arc::new(doc));
        view.my_slice = Arc::new(slice);
        true
    });
}
