//! Storage adapters: Postgres (source of truth) and Redis (rebuildable state).
//!
//! - [`pg`]: pool construction, migrations under an advisory lock, readiness check.
//! - [`instruments`]: the instrument repository (underlyings and derivatives).
//! - [`redis_conn`]: Redis connection manager and readiness check.

pub mod instruments;
pub mod pg;
pub mod redis_conn;
