//! Trade history in Postgres: the writer fed by ingestion, the reads behind VWAP, candles and
//! the live windows' rebuild, and the storage side of REST reconciliation. The layout and the
//! conventions are in `migrations/20261201000001_history.sql` and
//! `docs/decisions/0007-history-storage-and-reconciliation.md`.
//!
//! - [`writer`]: batched, idempotent inserts from the ingest hand-off, a bounded queue that
//!   spills to disk instead of dropping ([`spill`]), and the `[trades]` config section.
//! - [`read`]: sums over any window (buckets where confirmed, raw trades past the horizon),
//!   candles, VWAP history, and the recent seconds and minutes a node rebuilds its windows from.
//! - [`reconcile`]: one reconciliation step's transaction (fix trades, merge buckets, write VWAP
//!   history, advance the cursor), fenced by the job lease.
//! - [`config`]: the `[vwap]` and `[retention]` sections every role shares.
//! - [`ids`]: instrument key ↔ small integer id.
//! - [`numeric`]: `Decimal` → `NUMERIC` without allocating (the writer's hot encoding).
//! - [`partitions`]: daily partitions ahead of time and retention.

pub mod config;
pub mod ids;
pub mod numeric;
pub mod partitions;
pub mod read;
pub mod reconcile;
pub mod spill;
pub mod writer;

pub use config::{RetentionConfig, VwapConfig};
pub use ids::InstrumentIds;

#[cfg(test)]
mod tests;
