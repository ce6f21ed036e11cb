//! The bodies of the cargo-fuzz targets in `fuzz/` (each target there is one line calling a
//! function here) and what a fuzzer may not find: a panic, or a broken property of the
//! production parser it drives.
//!
//! - [`broker_frame`]: the connector's frame decoder (`pricefeed_broker::ws::decode_text`):
//!   never panics; its hand-written fast path answers exactly like its serde path
//!   (`docs/decisions/0006-hot-path-frame-decoder.md`); a trade it decodes has the values the
//!   simulator's owned serde structs read from the same frame.
//! - [`stream_command`]: the client WebSocket command and channel parsers
//!   (`pricefeed_node::stream::protocol`): never panic; an accepted channel's canonical name
//!   parses back to the same channel, an accepted threshold's rendering to the same value.
//! - [`api_query`]: the REST parameter and body parsers of `pricefeed_node::api` and
//!   `pricefeed_node::alerts::api` (symbol lists, time ranges, intervals, windows, alert
//!   conditions and thresholds): never panic, refuse with a 4xx problem (never a 5xx), and an
//!   accepted range is ordered, aligned and bounded.
//!
//! The functions take the fuzzer's raw bytes. `tests/corpus.rs` replays every committed input
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through them on the stable toolchain
//! in the ordinary test run.

use std::str;

use axum::http::Uri;
use axum::response::IntoResponse;
use pricefeed_broker::ws::{
    Combined, FrameRef, WsAggTrade, WsTrade, decode_fast, decode_frame, decode_serde, decode_text,
};
use pricefeed_domain::bucket::Span;
use pricefeed_domain::trade::{EARLIEST_TRADE_MS, validate_fields};
use pricefeed_node::alerts::api as alerts;
use pricefeed_node::alerts::input::{AlertPatch, NewAlert};
use pricefeed_node::api::error::ApiError;
use pricefeed_node::api::extract::{IdPath, SymbolPath, query};
use pricefeed_node::api::schema::LATEST_TIME_MS;
use pricefeed_node::api::{candles, instruments, prices, stats, vwap};
use pricefeed_node::auth::api::{Credentials, normalize_email};
use pricefeed_node::auth::extract::JsonBody;
use pricefeed_node::stream::protocol::{Op, Reply, parse_channel, parse_op, parse_threshold};
use pricefeed_store::history::VwapConfig;
use rust_decimal::Decimal;

/// A target body: the fuzzer's input in, a panic out when something is wrong.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/Cargo.toml` and `fuzz/corpus/` name them.
pub const TARGETS: [(&str, Target); 3] = [
    ("broker_frame", broker_frame),
    ("stream_command", stream_command),
    ("api_query", api_query),
];

/// A time within the range of parameters (2026-12-01), the `now` of most range checks.
const NOW: i64 = 1_796_140_800_000;

// --- broker frames ----------------------------------------------------------------------------

/// One broker WebSocket frame, binary (bytes) and text (when UTF-8).
pub fn broker_frame(data: &[u8]) {
    let _ = decode_frame(data);
    let Ok(text) = str::from_utf8(data) else {
        return;
    };
    let decoded = decode_text(text);
    // The fast path may only say "not mine" or give the serde path's exact answer.
    if let Some(fast) = decode_fast(text) {
        assert_eq!(
            fast,
            decode_serde(text),
            "fast and serde paths differ on {text:?}"
        );
    }
    let Ok(FrameRef::Trade(t)) = decoded else {
        return;
    };
    // Borrowed, not copied: the symbol points into the frame.
    assert!(
        text.as_bytes().as_ptr_range().contains(&t.symbol.as_ptr()) || t.symbol.is_empty(),
        "symbol not borrowed from {text:?}"
    );
    let _ = validate_fields(t.price, t.qty, t.ts_ms, NOW, 10_000);
    let _ = t.price.checked_mul(t.qty);
    // What the simulator's owned structs (plain serde_json) read from the same frame.
    let owned = owned_trade(text);
    if let Some((symbol, id, price, qty, ts, maker)) = owned {
        assert_eq!(
            (t.symbol, t.id, t.price, t.qty, t.ts_ms, t.buyer_is_maker),
            (symbol.as_str(), id, price, qty, ts, maker),
            "borrowed and owned decoding differ on {text:?}"
        );
    }
}

type Fields = (String, u64, Decimal, Decimal, i64, bool);

/// The trade fields of `text` per [`WsTrade`]/[`WsAggTrade`] (raw or combined), when it is one
/// with a non-negative id. A frame that is both a complete raw event and a wrapper means no one
/// trade (the owned structs would take the raw one, the decoder the wrapper's payload, as it
/// does for a sniffed wrapper): `None`.
fn owned_trade(text: &str) -> Option<Fields> {
    let wrapper = serde_json::from_str::<Combined<serde_json::Value>>(text).is_ok();
    let raw = serde_json::from_str::<WsTrade>(text).is_ok()
        || serde_json::from_str::<WsAggTrade>(text).is_ok();
    if wrapper && raw {
        return None;
    }
    let trade = |t: WsTrade| {
        (t.event_type == "trade" && t.trade_id >= 0).then(|| {
            let id = t.trade_id as u64;
            (t.symbol, id, t.price, t.qty, t.trade_time, t.buyer_is_maker)
        })
    };
    let agg = |t: WsAggTrade| {
        (t.event_type == "aggTrade" && t.agg_id >= 0).then(|| {
            let id = t.agg_id as u64;
            (t.symbol, id, t.price, t.qty, t.trade_time, t.buyer_is_maker)
        })
    };
    if let Ok(t) = serde_json::from_str::<WsTrade>(text) {
        return trade(t);
    }
    if let Ok(t) = serde_json::from_str::<WsAggTrade>(text) {
        return agg(t);
    }
    if let Ok(c) = serde_json::from_str::<Combined<WsTrade>>(text) {
        return trade(c.data);
    }
    if let Ok(c) = serde_json::from_str::<Combined<WsAggTrade>>(text) {
        return agg(c.data);
    }
    None
}

// --- client WebSocket commands ----------------------------------------------------------------

/// One client text message, then the same bytes as a channel name and as a threshold.
pub fn stream_command(data: &[u8]) {
    let Ok(text) = str::from_utf8(data) else {
        return;
    };
    let intervals = VwapConfig::default().intervals;
    match parse_op(text) {
        Ok(Op::Subscribe(names) | Op::Unsubscribe(names)) => {
            for n in &names {
                channel_round_trips(n, &intervals);
            }
        }
        Ok(Op::Watch { threshold, .. }) => threshold_round_trips(threshold),
        Ok(_) => {}
        Err(e) => {
            // The error frame the connection sends must render.
            let frame = Reply::Error {
                code: e.code,
                message: &e.message,
                op: None,
                channel: None,
            }
            .to_json();
            serde_json::from_str::<serde_json::Value>(&frame).expect("error frames are JSON");
        }
    }
    channel_round_trips(text, &intervals);
    if let Ok(t) = parse_threshold(text) {
        threshold_round_trips(t);
    }
}

fn channel_round_trips(name: &str, intervals: &[Span]) {
    if let Ok(ch) = parse_channel(name, intervals) {
        assert_eq!(
            parse_channel(&ch.name(), intervals).as_ref(),
            Ok(&ch),
            "canonical name of {name:?} does not parse back"
        );
    }
}

fn threshold_round_trips(t: Decimal) {
    assert!(t > Decimal::ZERO, "threshold {t} accepted");
    assert_eq!(parse_threshold(&t.to_string()), Ok(t), "threshold {t}");
}

// --- REST parameters and bodies ---------------------------------------------------------------

/// The first byte picks a route (and a `now` for the range checks); the rest is its input: a
/// query string, `path-segment\nquery string`, or a JSON body.
pub fn api_query(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = str::from_utf8(rest) else {
        return;
    };
    let now = [NOW, EARLIEST_TRADE_MS, LATEST_TIME_MS, 0][usize::from(sel >> 6)];
    let vwap_cfg = VwapConfig::default();
    let buckets_days = 90;
    let kept_from = (now - i64::from(buckets_days) * Span::DAY.ms()).max(EARLIEST_TRADE_MS);
    let (segment, q) = text.split_once('\n').unwrap_or(("BTCUSDT", text));
    let Ok(uri) = format!("/x?{q}").parse::<Uri>() else {
        // hyper refuses such a request line before any handler runs.
        return;
    };
    let r: Result<(), ApiError> = match sel % 13 {
        0 => query::<prices::BatchParams>(&uri)
            .and_then(|p| prices::batch_keys(&p))
            .map(|keys| {
                assert!((1..=prices::MAX_BATCH).contains(&keys.len()));
                let mut k = keys.clone();
                k.sort();
                k.dedup();
                assert_eq!(k.len(), keys.len(), "repeated symbols in {q:?}");
            }),
        1 => SymbolPath::parse(segment)
            .and_then(|s| Ok((s, query::<candles::CandleParams>(&uri)?)))
            .and_then(|(s, p)| candles::candle_range(&s, &p, now, kept_from))
            .map(|r| {
                let span = r.span.ms();
                assert!(r.from <= r.to, "{r:?}");
                assert_eq!(
                    (r.from.rem_euclid(span), r.to.rem_euclid(span)),
                    (0, 0),
                    "{r:?}"
                );
                assert!((r.to - r.from) / span <= candles::MAX_CANDLES, "{r:?}");
            }),
        2 => SymbolPath::parse(segment)
            .and_then(|s| Ok((s, query::<vwap::VwapParams>(&uri)?)))
            .and_then(|(s, p)| vwap::vwap_query(&s, &p, &vwap_cfg, now, kept_from, buckets_days))
            .map(|(_, iv, at)| {
                assert!(vwap_cfg.intervals.contains(&iv));
                assert!(at.is_none_or(|at| (kept_from..=now).contains(&at)));
            }),
        3 => SymbolPath::parse(segment)
            .and_then(|s| Ok((s, query::<vwap::VwapHistoryParams>(&uri)?)))
            .and_then(|(s, p)| vwap::vwap_history_range(&s, &p, &vwap_cfg, now, kept_from))
            .map(|r| {
                assert!(r.from <= r.to, "{r:?}");
                let cadence = vwap_cfg.history_cadence.ms();
                assert!(r.to - r.from <= vwap::MAX_POINTS * cadence, "{r:?}");
            }),
        4 => query::<alerts::ListParams>(&uri)
            .and_then(|p| alerts::list_query(&p))
            .map(|l| assert!((1..=500).contains(&l.limit))),
        5 => query::<alerts::NotificationParams>(&uri)
            .and_then(|p| alerts::notification_query(&p))
            .map(|(limit, after)| {
                assert!((1..=500).contains(&limit));
                assert!(after.is_none_or(|a| a >= 0));
            }),
        6 => query::<stats::RankingParams>(&uri)
            .and_then(|p| stats::ranking_query(&p))
            .map(|(_, limit, offset)| {
                assert!((1..=500).contains(&limit) && offset >= 0);
                let _ = offset + limit - 1;
            }),
        7 => query::<instruments::DerivativeParams>(&uri)
            .and_then(instruments::derivative_filter)
            .map(drop),
        8 => JsonBody::<NewAlert>::from_bytes(rest)
            .and_then(|JsonBody(n)| alerts::new_alert(n, &vwap_cfg.intervals))
            .map(|(_, a)| {
                assert!(a.condition.threshold > Decimal::ZERO);
                assert!(a.condition.validate(&vwap_cfg.intervals).is_ok());
            }),
        9 => JsonBody::<AlertPatch>::from_bytes(rest)
            .and_then(|JsonBody(p)| alerts::patch_fields(p, &vwap_cfg.intervals))
            .map(drop),
        10 => JsonBody::<Credentials>::from_bytes(rest)
            .and_then(|JsonBody(c)| normalize_email(&c.email))
            .map(|e| {
                let again = normalize_email(&e).expect("a normalized email is valid");
                assert_eq!(again, e);
            }),
        11 => IdPath::parse(text).map(|IdPath(id)| assert!(id > 0)),
        _ => SymbolPath::parse(text).map(|s| {
            let again = SymbolPath::parse(s.0.as_str()).expect("a canonical symbol parses");
            assert_eq!(again.0, s.0);
        }),
    };
    if let Err(e) = r {
        let status = e.status();
        assert!(
            status.is_client_error(),
            "bad input answered {status}: {e} (input {text:?})"
        );
        let res = e.into_response();
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
}
