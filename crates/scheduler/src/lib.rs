//! The pricefeed scheduler process, in one of two roles.
//!
//! - `scheduler`: leader-elected cluster tasks (instrument sync, node health, reconciliation).
//! - `worker`: queue consumers (email delivery, backfill jobs); any number run side by side.
//!
//! - [`config`]: typed configuration of both roles.
//! - [`app`]: wiring of dependencies, readiness and the ops HTTP listener.
//! - [`leader`]: the lease loop and, while leading, the slice assignment.
//! - [`feed_health`]: reconnect orders for silent feed connections (leader only).
//! - [`sync`]: instrument sync from the broker's `exchangeInfo` (leader only).
//! - [`housekeeping`]: partition retention and rank upkeep (leader only).
//! - [`reconcile`]: REST reconciliation jobs (worker) and their upkeep (leader).
//! - [`worker`]: the job runner of the worker role.
//! - [`email`]: alert email delivery (worker jobs over SMTP).

pub mod app;
pub mod config;
pub mod email;
pub mod feed_health;
pub mod housekeeping;
pub mod leader;
pub mod reconcile;
pub mod sync;
pub mod worker;
