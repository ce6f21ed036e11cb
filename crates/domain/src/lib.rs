//! Pure domain types and rules of pricefeed; no I/O here, so everything is unit-testable.
//!
//! - [`instrument`]: symbols, underlyings, derivatives and their statuses.
//! - [`alert`]: alert conditions, arming and re-arming, and the per-instrument evaluation index.
//! - [`assignment`]: which live node owns which instrument's broker subscription (balanced,
//!   deterministic, minimal movement), versioned by an epoch.
//! - [`trade`]: a trade as the cluster handles it, and the checks it must pass to be accepted.
//! - [`sequence`]: per-symbol trade-id tracking: drops duplicates, reports gaps for backfill.
//! - [`bucket`]: trade aggregates (buckets, candles, VWAP sums), interval spans, edge conventions.
//! - [`reconcile`]: what one page of REST truth confirms, inserts or removes in stored history.
//! - [`window`]: rolling VWAP windows and 24 h statistics of one instrument (live, in memory).

pub mod alert;
pub mod assignment;
pub mod bucket;
pub mod instrument;
pub mod reconcile;
pub mod sequence;
pub mod trade;
pub mod window;
