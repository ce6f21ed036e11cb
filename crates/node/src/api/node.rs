//! `GET /api/v1/node`: which node answered (the dashboard at `/` is in [`super::dashboard`]).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(crate::api::v1(routes!(node_info)))
}

/// Identity of the node that served the request.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeInfo {
    pub node_id: String,
    pub version: String,
}

/// The node that answered this request.
#[utoipa::path(get, path = "/node", tag = "cluster", responses((status = 200, body = NodeInfo)))]
async fn node_info(State(st): State<AppState>) -> Json<NodeInfo> {
    Json(NodeInfo {
        node_id: st.node_id.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
