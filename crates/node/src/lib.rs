//! The pricefeed API node.
//!
//! - [`config`]: the node's typed configuration.
//! - [`app`]: wiring — connects Postgres and Redis, migrates, registers readiness checks, builds
//!   the router and serves it until shutdown.
//! - [`api`]: the v1 REST routes, their OpenAPI description and the one API error type.
//! - [`auth`]: accounts, tokens, login limits, the authenticated-user extractor.
//! - [`alerts`]: price and anomaly alerts: evaluation on the owning node, the outbox, routes.
//! - [`state`]: the state shared by handlers.
//! - [`membership`]: registry heartbeat and the node's view of the slice assignment.
//! - [`ingest`]: broker WS connector, trade pipeline, latest prices, gap backfill.
//! - [`live_cache`]: latest prices and VWAPs of every instrument, fed by the owners' channels.
//! - [`live`]: live VWAP windows and 24 h statistics of the owned instruments, and the rank.
//! - [`pubsub`]: the one subscribe/resubscribe loop behind every Redis channel the node hears.
//! - [`stream`]: the client WebSocket `/api/v1/stream` (prices, VWAPs, alerts, watches).

pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod ingest;
pub mod live;
pub mod live_cache;
pub mod membership;
pub mod pubsub;
pub mod state;
pub mod stream;
