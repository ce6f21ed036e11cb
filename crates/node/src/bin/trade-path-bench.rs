//! In-process benchmark of the node's trade path on one core: text frame → decode → validate →
//! dedup → latest-price state (the same `decode_text` and `Core::on_ws_trade` the connector
//! calls), against plain typed `serde_json` decoding of the same frames, measured in the same
//! run so the ratio is meaningful on a noisy machine.
//!
//! Usage: `trade-path-bench [FRAMES] [SYMBOLS] [ROUNDS]` (defaults 2,000,000 · 200 · 5).
//! Frames are combined-stream `@trade` events as the exchange (and simulator) renders them.
//! Prints best-of-ROUNDS rates and the ratio; exits non-zero when the path misses its targets
//! (≥ 1,000,000 trades/s and ≥ 1/3 of plain decoding), so it can gate a release.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pricefeed_broker::ws::{FrameRef, decode_text};
use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
use pricefeed_domain::sequence::SeqConfig;
use pricefeed_node::ingest::state::{Core, Verdict};
use serde::Deserialize;

/// What a plain consumer decodes: the typed, borrowed shape with decimal strings left as text.
#[derive(Deserialize)]
struct PlainCombined<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    stream: &'a str,
    #[serde(borrow)]
    data: PlainTrade<'a>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct PlainTrade<'a> {
    e: &'a str,
    #[serde(rename = "E")]
    event_time: i64,
    s: &'a str,
    t: u64,
    p: &'a str,
    q: &'a str,
    #[serde(rename = "T")]
    trade_time: i64,
    m: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn frames(n: usize, symbols: &[String], t0: i64) -> Vec<String> {
    let mut ids = vec![1_000_000u64; symbols.len()];
    (0..n)
        .map(|i| {
            let k = i % symbols.len();
            ids[k] += 1;
            let s = &symbols[k];
            // Prices and quantities vary in the low digits like a random walk on the tick grid.
            let price = format!("{}.{:08}", 20_000 + (i % 977), (i * 7919) % 100_000_000);
            let qty = format!("0.{:08}", 1 + (i * 104_729) % 99_999_999);
            let ts = t0 + (i / 1000) as i64;
            format!(
                "{{\"stream\":\"{}@trade\",\"data\":{{\"e\":\"trade\",\"E\":{ts},\"s\":\"{s}\",\"t\":{},\"p\":\"{price}\",\"q\":\"{qty}\",\"T\":{ts},\"m\":{},\"M\":true}}}}",
                s.to_ascii_lowercase(),
                ids[k],
                i % 2 == 0
            )
        })
        .collect()
}

/// Both sides read `&str` frames, as the WebSocket layer hands them over (already UTF-8).
fn plain(frames: &[String]) -> (Duration, u64) {
    let start = Instant::now();
    let mut n = 0u64;
    for f in frames {
        let c: PlainCombined<'_> = serde_json::from_str(f).expect("valid frame");
        black_box(&c.data);
        n += u64::from(c.data.t > 0);
    }
    (start.elapsed(), n)
}

fn pipeline(frames: &[String], keys: &[InstrumentKey], now: i64) -> (Duration, u64) {
    let mut core = Core::new(SeqConfig::default(), 60_000);
    core.sync_slice(keys, 1, |_| true, tokio::time::Instant::now());
    for k in keys {
        assert!(core.go_live(k, 1, pricefeed_node::ingest::handoff::Resume::default()));
    }
    let start = Instant::now();
    let mut accepted = 0u64;
    for (i, f) in frames.iter().enumerate() {
        if let Ok(FrameRef::Trade(t)) = decode_text(f)
            && core.on_ws_trade(Market::Spot, &t, now) == Verdict::Accepted
        {
            accepted += 1;
        }
        // The flusher drains dirty prices every tick; at ~1 M trades/s a 20 ms tick is 20 k.
        if i % 20_000 == 19_999 {
            black_box(core.take_flush());
        }
    }
    black_box(core.take_flush());
    (start.elapsed(), accepted)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let nsym: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let symbols: Vec<String> = (0..nsym).map(|i| format!("SYM{i:04}USDT")).collect();
    let keys: Vec<InstrumentKey> = symbols
        .iter()
        .map(|s| InstrumentKey::new(Market::Spot, &Symbol::parse(s).expect("symbol")))
        .collect();
    let now = now_ms();
    let data = frames(n, &symbols, now - 1_000);
    let avg = data.iter().map(String::len).sum::<usize>() / data.len();
    println!(
        "trade-path-bench: {n} frames ({avg} B avg), {nsym} symbols, best of {rounds} rounds, one thread"
    );

    let (mut best_plain, mut best_path) = (0f64, 0f64);
    for r in 0..rounds {
        let (d, c) = plain(&data);
        assert_eq!(c as usize, n);
        let rate_plain = n as f64 / d.as_secs_f64();
        let (d, acc) = pipeline(&data, &keys, now);
        assert_eq!(
            acc as usize, n,
            "every generated trade must be accepted exactly once"
        );
        let rate_path = n as f64 / d.as_secs_f64();
        println!(
            "  round {}: plain serde_json {:>10.0}/s   pricefeed path {:>10.0}/s   ({:.0} ns/trade)",
            r + 1,
            rate_plain,
            rate_path,
            1e9 / rate_path
        );
        best_plain = best_plain.max(rate_plain);
        best_path = best_path.max(rate_path);
    }
    let ratio = best_path / best_plain;
    println!(
        "best: plain {best_plain:.0}/s, path {best_path:.0}/s, ratio {ratio:.2} (targets: path >= 1000000/s, ratio >= 0.33)"
    );
    if best_path < 1_000_000.0 || ratio < 1.0 / 3.0 {
        eprintln!("trade-path-bench: below target");
        std::process::exit(1);
    }
}
