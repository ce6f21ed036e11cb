//! `GET /api/v1/cluster`: the cluster as this node sees it — registered nodes with heartbeat age
//! and slice size, the assignment epoch, the current scheduler leader, and how many tradable
//! instruments are (un)assigned.
//!
//! Node liveness uses the threshold published with the assignment (the leader's
//! `scheduler.node_dead_after_ms`), so "alive" here means exactly what the scheduler acted on.
//! Each node's broker connections and their health come from the feed-health hash it rewrites
//! every second (`{p}:feed:{node}`, the one the scheduler's feed watch reads), all nodes in one
//! pipelined round trip, with ages on the Redis clock like the heartbeats; a node that stopped
//! writing it shows `reported: false` once it expires (10 s). The top-level `feed` is the
//! answering node's own view, first-hand; per-instrument detail is at
//! `GET /api/v1/cluster/ingest` on each node.

use std::collections::{BTreeMap, BTreeSet};

use super::error::ApiResult;
use axum::Json;
use axum::extract::State;
use pricefeed_store::feed::{self, FeedField};
use pricefeed_store::lease;
use pricefeed_store::registry::Registry;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Dead-node threshold used before any assignment was published (the scheduler's default).
const DEFAULT_DEAD_AFTER_MS: u64 = 3_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(crate::api::v1(routes!(cluster)))
        .routes(crate::api::v1(routes!(reconcile)))
}

/// How far REST reconciliation has confirmed history.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReconcileSummary {
    /// Instruments with a reconciliation job.
    pub instruments: usize,
    /// Of those, how many have been confirmed at least once.
    pub started: usize,
    /// Now minus the least advanced confirmation horizon, ms; null before any.
    pub max_lag_ms: Option<i64>,
    /// Median lag, ms.
    pub p50_lag_ms: Option<i64>,
    /// Instruments more than two minutes behind.
    pub behind_2m: usize,
    /// The five most behind.
    pub worst: Vec<InstrumentLag>,
}

/// Reconciliation state of one instrument.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstrumentLag {
    /// `market:SYMBOL`.
    pub key: String,
    /// Every trade at or before this time (ms) is confirmed by the broker's REST API.
    pub validated_through: Option<i64>,
    /// Now minus `validated_through`, ms.
    pub lag_ms: Option<i64>,
    /// Trades confirmed so far.
    pub validated_trades: i64,
}

fn lags(rows: Vec<pricefeed_store::history::read::Lag>) -> Vec<InstrumentLag> {
    let now = crate::ingest::connector::now_ms();
    rows.into_iter()
        .map(|l| InstrumentLag {
            key: format!("{}:{}", l.market, l.symbol),
            validated_through: l.through_ms,
            lag_ms: l.through_ms.map(|t| (now - t).max(0)),
            validated_trades: l.validated_total,
        })
        .collect()
}

fn summary(all: &[InstrumentLag]) -> ReconcileSummary {
    let mut started: Vec<i64> = all.iter().filter_map(|l| l.lag_ms).collect();
    started.sort_unstable();
    ReconcileSummary {
        instruments: all.len(),
        started: started.len(),
        max_lag_ms: started.last().copied(),
        p50_lag_ms: started.get(started.len() / 2).copied(),
        behind_2m: started.iter().filter(|&&l| l > 120_000).count(),
        worst: all
            .iter()
            .filter(|l| l.lag_ms.is_some())
            .take(5)
            .map(|l| InstrumentLag {
                key: l.key.clone(),
                validated_through: l.validated_through,
                lag_ms: l.lag_ms,
                validated_trades: l.validated_trades,
            })
            .collect(),
    }
}

/// Reconciliation lag of every instrument, most behind first.
#[utoipa::path(
    get,
    path = "/cluster/reconcile",
    tag = "cluster",
    responses(
        (status = 200, body = Vec<InstrumentLag>),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    )
)]
async fn reconcile(State(st): State<AppState>) -> ApiResult<Json<Vec<InstrumentLag>>> {
    let rows = pricefeed_store::history::read::reconcile_lags(&st.db).await?;
    Ok(Json(lags(rows)))
}

/// The scheduler currently holding the leader lease.
#[derive(Debug, Serialize, ToSchema)]
pub struct Leader {
    /// Fencing term of its lease; grows on every takeover.
    pub term: u64,
    pub holder: String,
}

/// One registered node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterNode {
    pub node_id: String,
    /// HTTP address it serves on; absent once its registry record expired.
    pub addr: Option<String>,
    /// Milliseconds since its last heartbeat, on the Redis clock.
    pub heartbeat_age_ms: i64,
    pub alive: bool,
    /// Instruments it owns under the published assignment.
    pub slice_size: usize,
    /// Start time, ms since the epoch; absent once its registry record expired.
    pub started_at: Option<i64>,
    /// Its broker connections and their health, as it last published them.
    pub feed: NodeFeed,
}

/// One node's broker WS connections, from its feed-health hash in Redis.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeFeed {
    /// False when the node has no feed-health hash (it has not written one yet, or stopped
    /// writing it more than 10 s ago).
    pub reported: bool,
    pub connections: usize,
    pub connected: usize,
    /// Longest time since the last frame over its connected connections (Redis clock); null
    /// when none has had a frame.
    pub max_last_frame_age_ms: Option<i64>,
    /// Each connection, in `market:conn` order.
    pub conns: Vec<FeedConn>,
}

/// One broker WS connection of a node.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedConn {
    /// `market:conn`, e.g. `spot:1` (the `conn_id` of reconnect orders).
    #[schema(example = "spot:1")]
    pub id: String,
    /// False while connecting or waiting out a reconnect backoff.
    pub connected: bool,
    /// Since its last frame of any kind (pings included); null while not connected or before
    /// the first frame.
    pub last_frame_age_ms: Option<i64>,
    /// Mean time between its trade arrivals this session; null until enough arrived to tell.
    pub mean_gap_ms: Option<i64>,
}

fn node_feed(now_ms: i64, fields: BTreeMap<String, FeedField>) -> NodeFeed {
    let conns: Vec<FeedConn> = fields
        .into_iter()
        .map(|(id, f)| FeedConn {
            id,
            connected: f.connected,
            last_frame_age_ms: (f.connected && f.last_frame_ms > 0)
                .then(|| (now_ms - f.last_frame_ms).max(0)),
            mean_gap_ms: (f.connected && f.mean_gap_ms >= 0).then_some(f.mean_gap_ms),
        })
        .collect();
    NodeFeed {
        reported: !conns.is_empty(),
        connections: conns.len(),
        connected: conns.iter().filter(|c| c.connected).count(),
        max_last_frame_age_ms: conns.iter().filter_map(|c| c.last_frame_age_ms).max(),
        conns,
    }
}

/// Cluster overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    /// Epoch of the assignment this node holds; 0 before the first one was published.
    pub epoch: u64,
    /// Absent while no scheduler holds the lease (e.g. during a takeover).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<Leader>,
    pub nodes: Vec<ClusterNode>,
    /// Tradable, non-delisted instruments in Postgres.
    pub instruments: usize,
    /// Of those, how many no node owns under the published assignment.
    pub unassigned: usize,
    /// Broker feed health of the node answering, first-hand (every node's, as published, is in
    /// `nodes[].feed`).
    pub feed: FeedSummary,
    /// REST reconciliation progress (per instrument at `/api/v1/cluster/reconcile`).
    pub reconcile: ReconcileSummary,
}

/// Broker WS connections of the node answering.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedSummary {
    pub connections: usize,
    pub connected: usize,
    /// Longest time since the last frame over its connected connections; null when none.
    pub max_last_frame_age_ms: Option<i64>,
}

fn feed_summary(st: &AppState) -> FeedSummary {
    use std::sync::atomic::Ordering::Relaxed;
    let now = crate::ingest::connector::now_ms();
    let conns = st.ingest.health.lock().unwrap();
    let connected: Vec<_> = conns.iter().filter(|h| h.connected.load(Relaxed)).collect();
    FeedSummary {
        connections: conns.len(),
        connected: connected.len(),
        max_last_frame_age_ms: connected
            .iter()
            .map(|h| (now - h.last_frame_ms.load(Relaxed)).max(0))
            .max(),
    }
}

/// Nodes with heartbeat ages, slice sizes and feed health, the assignment epoch and the
/// scheduler leader.
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "cluster",
    responses(
        (status = 200, body = ClusterView),
        (status = 503, description = "Redis or Postgres unavailable", content_type = "application/problem+json"),
    )
)]
async fn cluster(State(st): State<AppState>) -> ApiResult<Json<ClusterView>> {
    let view = st.slices.borrow().clone();
    let mut redis = st.redis.clone();
    let listed = Registry::new(st.redis.clone(), &st.key_prefix)
        .list()
        .await?;
    let leader = lease::current(&mut redis, &st.key_prefix).await?;
    let ids: Vec<&str> = listed.iter().map(|n| n.node_id.as_str()).collect();
    let (redis_now, feeds) = feed::read_feeds(&mut redis, &st.key_prefix, &ids).await?;
    let symbols = pricefeed_store::instruments::tradable_symbols(&st.db).await?;
    let reconcile = summary(&lags(
        pricefeed_store::history::read::reconcile_lags(&st.db).await?,
    ));

    let (dead_after, sizes, owned): (u64, BTreeMap<String, usize>, BTreeSet<_>) =
        match &view.published {
            Some(p) => {
                let mut sizes = BTreeMap::new();
                for node in p.owners.values() {
                    *sizes.entry(node.as_str().to_string()).or_insert(0) += 1;
                }
                let dead_after = if p.node_dead_after_ms > 0 {
                    p.node_dead_after_ms
                } else {
                    DEFAULT_DEAD_AFTER_MS
                };
                (dead_after, sizes, p.owners.keys().collect())
            }
            None => (DEFAULT_DEAD_AFTER_MS, BTreeMap::new(), BTreeSet::new()),
        };
    let unassigned = symbols.iter().filter(|s| !owned.contains(s)).count();
    let nodes = listed
        .into_iter()
        .zip(feeds)
        .map(|(n, f)| ClusterNode {
            feed: node_feed(redis_now, f),
            alive: n.is_alive(dead_after),
            slice_size: sizes.get(&n.node_id).copied().unwrap_or(0),
            addr: n.record.as_ref().map(|r| r.addr.clone()),
            started_at: n.record.as_ref().map(|r| r.started_at_ms),
            heartbeat_age_ms: n.heartbeat_age_ms,
            node_id: n.node_id,
        })
        .collect();
    Ok(Json(ClusterView {
        epoch: view.epoch(),
        leader: leader.map(|l| Leader {
            term: l.term,
            holder: l.holder,
        }),
        nodes,
        instruments: symbols.len(),
        unassigned,
        feed: feed_summary(&st),
        reconcile,
    }))
}
