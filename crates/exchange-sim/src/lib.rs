//! Binance-compatible exchange simulator: deterministic trades, fault injection, ground truth.
//!
//! [`start`] binds four listeners (spot, USD-M futures, options, control) and spawns every
//! long-running task on the runtime [`Shutdown`]; `main` and the integration tests share it.
//!
//! - [`config`]: the `[sim]` section.
//! - [`catalogue`]: instruments generated from the seed and their listing changes.
//! - [`engine`]: the trade generator, history rings and batch broadcast (REST's truth).
//! - [`market`]: latent fair prices per underlying (vol regimes, jumps) and derivative pricing.
//! - [`render`]: stream-event JSON on the hot path.
//! - [`ws`]: WebSocket streams and the live-subscription protocol.
//! - [`rest`]: Binance REST routes with weights and `{code,msg}` errors.
//! - [`limits`]: per-IP request-weight accounting (429/418).
//! - [`faults`]: WS fault specs, the run-time table and per-connection decisions.
//! - [`control`]: the `/control` API.

#![forbid(unsafe_code)]

pub mod catalogue;
pub mod config;
pub mod control;
pub mod engine;
pub mod faults;
pub mod limits;
pub mod market;
pub mod render;
pub mod rest;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pricefeed_runtime::http::{bind, spawn_server, with_common_layers};
use pricefeed_runtime::ops::{self, Readiness};
use pricefeed_runtime::shutdown::Shutdown;
use serde::Serialize;

use crate::catalogue::Market;
use crate::config::SimConfig;
use crate::engine::Engine;
use crate::limits::WeightLimiter;

/// Actual addresses of a started simulator (port 0 resolved); serialized as the ports file.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Addrs {
    pub spot: SocketAddr,
    pub futures: SocketAddr,
    pub options: SocketAddr,
    pub control: SocketAddr,
}

/// A running simulator.
#[derive(Debug, Clone)]
pub struct Handles {
    pub addrs: Addrs,
    pub engine: Arc<Engine>,
}

/// Builds the engine, binds every listener and spawns all tasks on `shutdown`'s tracker.
///
/// # Errors
/// Fails when a listener cannot bind.
pub async fn start(cfg: SimConfig, shutdown: &Shutdown) -> anyhow::Result<Handles> {
    let engine = Engine::new(cfg.clone());
    let timeout = Duration::from_secs(10);

    let mut market_addrs = Vec::new();
    let mut limiters = Vec::new();
    for (market, addr) in [
        (Market::Spot, cfg.spot_bind),
        (Market::Futures, cfg.futures_bind),
        (Market::Options, cfg.options_bind),
    ] {
        let (listener, local) = bind(addr).await?;
        let limiter = Arc::new(WeightLimiter::new(
            cfg.rest_weight_limit,
            cfg.rest_weight_window_ms,
            cfg.rest_ban_after,
            cfg.rest_ban_ms,
        ));
        limiters.push((market, limiter.clone()));
        let rest_state = rest::RestState {
            engine: engine.clone(),
            market,
            limiter,
        };
        let ws_state = ws::WsState {
            engine: engine.clone(),
            market,
            token: shutdown.token(),
            tracker: shutdown.tracker().clone(),
        };
        let router = with_common_layers(rest::router(rest_state, ws_state), timeout);
        spawn_server(listener, router, shutdown);
        market_addrs.push(local);
    }

    let readiness = Readiness::new(shutdown.clone());
    let router = with_common_layers(
        control::router(engine.clone())
            .merge(control::rest_router(Arc::new(limiters)))
            .merge(ops::router(readiness)),
        timeout,
    );
    let (listener, control) = bind(cfg.control_bind).await?;
    spawn_server(listener, router, shutdown);

    shutdown
        .tracker()
        .spawn(engine.clone().run_generator(shutdown.token()));
    shutdown
        .tracker()
        .spawn(engine.clone().run_listings(shutdown.token()));

    let addrs = Addrs {
        spot: market_addrs[0],
        futures: market_addrs[1],
        options: market_addrs[2],
        control,
    };
    Ok(Handles { addrs, engine })
}
