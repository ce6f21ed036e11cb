//! Storage adapters: Postgres (source of truth) and Redis (rebuildable state).
//!
//! - [`pg`]: pool construction, migrations under an advisory lock, readiness check.
//! - [`instruments`]: the instrument repository (underlyings and derivatives).
//! - [`redis_conn`]: Redis connection manager and readiness check.
//! - [`registry`]: node registry (records with a TTL, heartbeat times in a sorted set).
//! - [`lease`]: the scheduler leader lease with a fencing term.
//! - [`assignment`]: the published slice assignment (Redis) and its durable epoch (Postgres).
//! - [`sync`]: instrument sync writes (whole catalogue per transaction, fenced by the term).
//! - [`feed`]: feed-health hash and per-node order channel keys, the reconnect order.
//! - [`trades`]: the batched, idempotent trade-history writer.

pub mod assignment;
pub mod feed;
pub mod instruments;
pub mod lease;
pub mod pg;
pub mod redis_conn;
pub mod registry;
pub mod sync;
pub mod trades;

#[cfg(test)]
mod redis_tests;
