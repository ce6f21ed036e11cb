//! History consumer: every accepted trade becomes a row for the trade-history writer
//! ([`pricefeed_store::history::writer`]). On the trade path it is one `Vec::push` (the symbol is
//! a shared `Arc<str>`); a driver task hands the collected rows to the writer every
//! `node.feed.tick_flush_ms`, which never waits (the writer queues, spills or counts).

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::history::writer::{TradeRow, TradeWriterHandle};

use super::handoff::{Accepted, Consumer};
use super::state::Core;

/// Rows accepted since the last hand-off.
#[derive(Debug, Default)]
pub struct HistoryTap {
    rows: Vec<TradeRow>,
}

impl Consumer for HistoryTap {
    fn on_trade(&mut self, t: &Accepted<'_>) {
        self.rows.push(TradeRow {
            market: t.key.market(),
            symbol: t.symbol.clone(),
            trade_id: t.id,
            price: t.price,
            qty: t.qty,
            ts_ms: t.ts_ms,
            buyer_is_maker: t.buyer_is_maker,
        });
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Registers the consumer and starts its driver.
pub fn attach(
    core: &Arc<Mutex<Core>>,
    writer: TradeWriterHandle,
    every: Duration,
    shutdown: &Shutdown,
) {
    core.lock()
        .unwrap()
        .add_consumer(Box::new(HistoryTap::default()));
    let core = core.clone();
    let token = shutdown.token();
    shutdown.tracker().spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = token.cancelled() => true,
            };
            let rows = core
                .lock()
                .unwrap()
                .consumer_mut::<HistoryTap>()
                .map(|h| std::mem::take(&mut h.rows))
                .unwrap_or_default();
            // A stopped writer counts the refusal; reconciliation refills those trades.
            let _ = writer.submit(rows);
            if stopping {
                // Dropping the handle tells the writer no more rows will come.
                return;
            }
        }
    });
}
