//! The one hand-off for accepted trades. Every trade the ingest core accepts — from the
//! WebSocket or from REST backfill, after validation and dedup — is offered to each registered
//! [`Consumer`] in turn, under the ingest lock, with the instrument's dense slot number so a
//! consumer keeps its per-instrument state in a `Vec` instead of a map.
//!
//! A consumer is the synchronous half of a feature (history rows, live windows, alert index);
//! its asynchronous half (writing Postgres or Redis) is a task that locks the core now and then
//! and reaches its consumer with [`super::state::Core::consumer_mut`]. Adding a feature is one
//! `attach` call in `app.rs`: no new field in the core, no new call in the trade path.

use std::any::Any;
use std::sync::Arc;

use pricefeed_domain::instrument::InstrumentKey;
use rust_decimal::Decimal;

/// An accepted trade as every consumer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Accepted<'a> {
    pub key: &'a InstrumentKey,
    /// The exchange symbol, shared (cloning it costs no allocation).
    pub symbol: &'a Arc<str>,
    /// Dense per-node instrument number, stable while the instrument stays in the slice.
    pub slot: usize,
    pub id: u64,
    pub price: Decimal,
    pub qty: Decimal,
    pub ts_ms: i64,
    pub buyer_is_maker: bool,
    /// Fetched by gap backfill rather than received on the WebSocket.
    pub backfill: bool,
    /// Some id below this one is still missing (a gap that backfill has not filled yet): a
    /// consumer that needs trades in id order waits for it.
    pub gaps_open: bool,
}

/// Where an instrument's trades resume when it goes live on this node: after the last trade
/// the cluster accepted (from Redis), whose price is known, or from scratch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// The last trade id accepted anywhere in the cluster; `None` for a fresh start.
    pub after_id: Option<u64>,
    /// That trade's price, when known (crossing alerts need the side the price was on).
    pub price: Option<Decimal>,
}

/// The synchronous half of a trade consumer. Called with the ingest lock held: keep it to
/// in-memory work of a few hundred nanoseconds at most.
pub trait Consumer: Any + Send {
    /// One accepted trade.
    fn on_trade(&mut self, t: &Accepted<'_>);

    /// `key` joined the slice in `slot` (not live yet: its trades start after the handover).
    fn gained(&mut self, _slot: usize, _key: &InstrumentKey) {}

    /// `key` went live; its trades start after `resume.after_id` (the last id the cluster
    /// accepted, `None` for a fresh start). Earlier trades are in Postgres or on their way there.
    fn live(&mut self, _slot: usize, _key: &InstrumentKey, _resume: Resume) {}

    /// `key` left the slice; `slot` may be reused for another instrument afterwards.
    fn lost(&mut self, _slot: usize, _key: &InstrumentKey) {}

    /// Whether the latest price of `slot` must not reach Redis yet (its trades' consequences
    /// are not durable yet; see the alert consumer). Held prices go out with a later flush.
    fn holds_flush(&self, _slot: usize) -> bool {
        false
    }

    /// For [`super::state::Core::consumer_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
