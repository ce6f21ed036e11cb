//! `GET /api/v1/cluster/ingest`: this node's feed connections and per-instrument ingest
//! statistics (accepted count, first/last accepted id, duplicates, backfilled, open gaps). The
//! cluster tests compare these with the simulator's ground truth; operators use it to see which
//! connection is silent.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ingest::connector::now_ms;
use crate::ingest::state::{InstrumentStats, NodeCounters};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(crate::api::v1(routes!(ingest)))
}

/// One broker WS connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionDto {
    pub market: String,
    pub conn: u64,
    pub connected: bool,
    pub streams: usize,
    /// Since the last frame of any kind (pings included); null before the first.
    pub last_frame_age_ms: Option<i64>,
    /// Sessions opened so far (1 + reconnects + lifetime rotations).
    pub sessions: u64,
}

/// One instrument this node owns.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstrumentIngestDto {
    /// `market:SYMBOL`.
    pub key: String,
    /// False while waiting for the previous owner's handover.
    pub live: bool,
    #[serde(flatten)]
    pub stats: InstrumentStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestView {
    pub node_id: String,
    pub epoch: u64,
    pub counters: NodeCounters,
    pub connections: Vec<ConnectionDto>,
    pub instruments: Vec<InstrumentIngestDto>,
}

/// Feed connections and per-instrument ingest statistics of this node.
#[utoipa::path(get, path = "/cluster/ingest", tag = "cluster",
    responses((status = 200, body = IngestView)))]
async fn ingest(State(st): State<AppState>) -> Json<IngestView> {
    let now = now_ms();
    let connections = st
        .ingest
        .health
        .lock()
        .unwrap()
        .iter()
        .map(|h| {
            use std::sync::atomic::Ordering::Relaxed;
            let last = h.last_frame_ms.load(Relaxed);
            ConnectionDto {
                market: h.market.as_str().into(),
                conn: h.conn,
                connected: h.connected.load(Relaxed),
                streams: h.streams.load(Relaxed),
                last_frame_age_ms: (last > 0).then(|| (now - last).max(0)),
                sessions: h.sessions.load(Relaxed),
            }
        })
        .collect();
    let (counters, instruments) = {
        let core = st.ingest.core.lock().unwrap();
        (
            core.counters.clone(),
            core.stats()
                .into_iter()
                .map(|(k, live, stats)| InstrumentIngestDto {
                    key: k.to_string(),
                    live,
                    stats,
                })
                .collect(),
        )
    };
    Json(IngestView {
        node_id: st.node_id.to_string(),
        epoch: st.slices.borrow().epoch(),
        counters,
        connections,
        instruments,
    })
}
