//! Load-mode benchmark: trades/s one WebSocket client receives from the simulator over
//! loopback, next to a bare tokio-tungstenite send loop measured in the same run.
//!
//! `cargo run --release -p pricefeed-exchange-sim --bin sim-bench -- [SECONDS] [LOAD_RATE]`
//!
//! Both clients parse every frame into a typed, borrowed struct (what a connector would do at
//! minimum) so the two figures are comparable; the ratio is simulator / bare loop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pricefeed_exchange_sim::config::SimConfig;
use pricefeed_runtime::shutdown::Shutdown;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

#[derive(Deserialize)]
struct Trade<'a> {
    #[serde(rename = "t")]
    id: i64,
    #[serde(rename = "p")]
    _price: &'a str,
    #[serde(rename = "s")]
    symbol: &'a str,
}

struct Measured {
    frames: u64,
    secs: f64,
    gaps: u64,
}

/// Reads for `warmup + secs`, counting only after the warmup.
async fn measure(url: &str, warmup: Duration, secs: Duration) -> Measured {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let start = Instant::now();
    let mut counting_from: Option<Instant> = None;
    let mut frames = 0u64;
    let mut gaps = 0u64;
    let mut last: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let tr: Trade<'_> = serde_json::from_str(t.as_str()).expect("trade frame");
            if let Some(prev) = last.get_mut(tr.symbol) {
                if tr.id != *prev + 1 {
                    gaps += 1;
                }
                *prev = tr.id;
            } else {
                last.insert(tr.symbol.to_string(), tr.id);
            }
            match counting_from {
                Some(from) => {
                    frames += 1;
                    if from.elapsed() >= secs {
                        break;
                    }
                }
                None if start.elapsed() >= warmup => counting_from = Some(Instant::now()),
                None => {}
            }
        }
    }
    let secs = counting_from.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Measured { frames, secs, gaps }
}

/// A bare server: one pre-rendered trade frame sent in a tight feed/flush loop.
async fn bare_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
                    return;
                };
                let mut id: i64 = 1;
                loop {
                    for _ in 0..1000 {
                        let f = format!(
                            r#"{{"e":"trade","E":1764000000000,"s":"BTCUSDT","t":{id},"p":"90000.01000000","q":"0.00123000","T":1764000000000,"m":true,"M":true}}"#
                        );
                        id += 1;
                        if ws.feed(Message::text(f)).await.is_err() {
                            return;
                        }
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let rate: f64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cfg = SimConfig {
            spot_bind: any,
            futures_bind: any,
            options_bind: any,
            control_bind: any,
            underlyings: 4,
            hot_symbols: 0,
            tail_rate_per_min: 0.0,
            listing_interval_ms: 0,
            load_mode: true,
            load_rate: rate,
            load_symbols: 4,
            history_depth_hot: 100_000,
            ..SimConfig::default()
        };
        let shutdown = Shutdown::new();
        let h = pricefeed_exchange_sim::start(cfg, &shutdown).await?;
        let warm = Duration::from_secs(1);
        let dur = Duration::from_secs(secs);
        let url = format!(
            "ws://{}/ws/btcusdt@trade/ethusdt@trade/bnbusdt@trade/solusdt@trade",
            h.addrs.spot
        );
        let (g0, t0) = (h.engine.generated.load(Ordering::Relaxed), Instant::now());
        let sim = measure(&url, warm, dur).await;
        // Load-mode rates follow the symbols' volatility regimes (mean 1 over long runs), so a
        // short run generates load_rate × the current multipliers: print what was generated.
        let generated = (h.engine.generated.load(Ordering::Relaxed) - g0) as f64
            / t0.elapsed().as_secs_f64();
        shutdown.trigger();
        let _ = shutdown.wait(Duration::from_secs(5)).await;

        let bare_addr = bare_server().await;
        let bare = measure(&format!("ws://{bare_addr}/"), warm, dur).await;

        let sim_rate = sim.frames as f64 / sim.secs.max(1e-9);
        let bare_rate = bare.frames as f64 / bare.secs.max(1e-9);
        println!("load_rate configured : {rate:.0} trades/s over 4 symbols");
        println!("generated            : {generated:.0} trades/s (regime-clustered)");
        println!(
            "simulator            : {sim_rate:.0} trades/s received by one WS client ({} frames in {:.2} s, {} id gaps)",
            sim.frames, sim.secs, sim.gaps
        );
        println!(
            "bare tungstenite loop: {bare_rate:.0} frames/s ({} frames in {:.2} s)",
            bare.frames, bare.secs
        );
        println!("ratio sim/bare       : {:.2}", sim_rate / bare_rate.max(1e-9));
        anyhow::Ok(())
    })
}
