//! Hand-written JSON for stream events: the hot path of load mode.
//!
//! Field order and shapes match `pricefeed_broker::ws` (a test round-trips them through the
//! broker structs). Writing with `write!` into a pre-sized `String` avoids serde's per-field
//! dispatch; Decimals still render through their own `Display`, so scale is kept ("4.00000100").

use std::fmt::Write;

use crate::catalogue::{Instrument, Market};
use crate::engine::{Event, Rec};

/// Stream suffix of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Trade,
    AggTrade,
}

impl StreamKind {
    pub fn suffix(self) -> &'static str {
        match self {
            StreamKind::Trade => "trade",
            StreamKind::AggTrade => "aggTrade",
        }
    }
}

fn open_combined(out: &mut String, inst: &Instrument, kind: StreamKind) {
    out.push_str("{\"stream\":\"");
    out.push_str(&inst.stream_key);
    out.push('@');
    out.push_str(kind.suffix());
    out.push_str("\",\"data\":");
}

/// `<symbol>@trade` event.
pub fn trade(inst: &Instrument, ev: &Event, event_time: i64, combined: bool) -> String {
    let mut out = String::with_capacity(if combined { 200 } else { 160 });
    if combined {
        open_combined(&mut out, inst, StreamKind::Trade);
    }
    let r = &ev.rec;
    let _ = match inst.market {
        Market::Spot => write!(
            out,
            r#"{{"e":"trade","E":{},"s":"{}","t":{},"p":"{}","q":"{}","T":{},"m":{},"M":true}}"#,
            event_time, inst.symbol, ev.id, r.price, r.qty, r.time, r.buyer_maker
        ),
        Market::Futures => write!(
            out,
            r#"{{"e":"trade","E":{},"T":{},"s":"{}","t":{},"p":"{}","q":"{}","X":"MARKET","m":{}}}"#,
            event_time, r.time, inst.symbol, ev.id, r.price, r.qty, r.buyer_maker
        ),
        Market::Options => write!(
            out,
            r#"{{"e":"trade","E":{},"s":"{}","t":{},"p":"{}","q":"{}","T":{},"m":{},"S":{}}}"#,
            event_time,
            inst.symbol,
            ev.id,
            r.price,
            r.qty,
            r.time,
            r.buyer_maker,
            if r.buyer_maker { -1 } else { 1 }
        ),
    };
    if combined {
        out.push('}');
    }
    out
}

/// `<symbol>@aggTrade` event for the fills `first..=last` of one aggregate.
pub fn agg_trade(
    inst: &Instrument,
    first: &Event,
    last_id: i64,
    qty: rust_decimal::Decimal,
    event_time: i64,
    combined: bool,
) -> String {
    let mut out = String::with_capacity(if combined { 220 } else { 180 });
    if combined {
        open_combined(&mut out, inst, StreamKind::AggTrade);
    }
    let r: &Rec = &first.rec;
    let best = if inst.market == Market::Spot {
        ",\"M\":true"
    } else {
        ""
    };
    let _ = write!(
        out,
        r#"{{"e":"aggTrade","E":{},"s":"{}","a":{},"p":"{}","q":"{}","f":{},"l":{},"T":{},"m":{}{}}}"#,
        event_time,
        inst.symbol,
        r.agg,
        r.price,
        qty,
        first.id,
        last_id,
        r.time,
        r.buyer_maker,
        best
    );
    if combined {
        out.push('}');
    }
    out
}

/// `serverShutdown` event.
pub fn server_shutdown(event_time: i64, combined: bool) -> String {
    if combined {
        format!(
            r#"{{"stream":"{}","data":{{"e":"serverShutdown","E":{event_time}}}}}"#,
            pricefeed_broker::ws::SERVER_SHUTDOWN_STREAM
        )
    } else {
        format!(r#"{{"e":"serverShutdown","E":{event_time}}}"#)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{Catalogue, CatalogueParams};
    use pricefeed_broker::ws::{Combined, ServerShutdown, WsAggTrade, WsTrade};
    use rust_decimal::Decimal;

    #[test]
    fn frames_parse_with_broker_structs() {
        let cat = Catalogue::generate(
            CatalogueParams {
                seed: 1,
                underlyings: 1,
                quarterlies: 1,
                option_expiries: 1,
                option_strikes: 2,
                initial_halted_ratio: 0.0,
                vol_scale: 1.0,
            },
            1_800_000_000_000,
        );
        for inst in &cat.instruments {
            let ev = Event {
                sym: inst.id,
                id: 42,
                rec: Rec {
                    time: 1_800_000_000_001,
                    price: inst.price(12345),
                    qty: inst.qty(7),
                    agg: 9,
                    agg_start: true,
                    buyer_maker: true,
                },
            };
            let raw = trade(inst, &ev, 5, false);
            let t: WsTrade = serde_json::from_str(&raw).unwrap();
            assert_eq!(
                (t.trade_id, t.price, t.symbol.as_str()),
                (42, ev.rec.price, inst.symbol.as_str())
            );
            assert_eq!(t.best_match.is_some(), inst.market == Market::Spot);
            let c: Combined<WsTrade> = serde_json::from_str(&trade(inst, &ev, 5, true)).unwrap();
            assert_eq!(c.stream, format!("{}@trade", inst.stream_key));
            let a: Combined<WsAggTrade> =
                serde_json::from_str(&agg_trade(inst, &ev, 44, Decimal::TEN, 5, true)).unwrap();
            assert_eq!(
                (a.data.first_trade_id, a.data.last_trade_id, a.data.agg_id),
                (42, 44, 9)
            );
        }
        let btc = &cat.instruments[0];
        assert!(
            trade(
                btc,
                &Event {
                    sym: 0,
                    id: 1,
                    rec: Rec {
                        time: 1,
                        price: btc.price(400000100 / 1_000_000),
                        qty: btc.qty(1),
                        agg: 1,
                        agg_start: true,
                        buyer_maker: false
                    }
                },
                1,
                false
            )
            .contains(r#""p":"4.00000000""#)
        );
        let s: ServerShutdown = serde_json::from_str(&server_shutdown(7, false)).unwrap();
        assert_eq!(s.event_type, "serverShutdown");
        let s: Combined<ServerShutdown> = serde_json::from_str(&server_shutdown(7, true)).unwrap();
        assert_eq!(s.stream, "!serverShutdown");
    }
}
