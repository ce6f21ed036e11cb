//! `RestClient` against the in-process exchange simulator (exchangeInfo of all three markets,
//! trade history paging versus the simulator's ground truth) and against a tiny axum fake for
//! the error paths the simulator does not produce on demand (429/418 with `Retry-After`, `{code,msg}`
//! errors, unparsable bodies).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pricefeed_broker::rest_client::{
    BoardFuture, HoldBoard, Market, RestClient, RestError, Timeouts,
};
use pricefeed_domain::instrument::Symbol;
use pricefeed_exchange_sim::config::SimConfig;
use pricefeed_runtime::shutdown::Shutdown;
use rust_decimal::Decimal;
use serde_json::Value;

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    total: Duration::from_secs(10),
};

struct Sim {
    addrs: pricefeed_exchange_sim::Addrs,
    shutdown: Shutdown,
    http: reqwest::Client,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl Sim {
    async fn start() -> Sim {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cfg = SimConfig {
            spot_bind: any,
            futures_bind: any,
            options_bind: any,
            control_bind: any,
            underlyings: 3,
            quarterlies: 1,
            option_expiries: 1,
            option_strikes: 2,
            hot_symbols: 1,
            hot_rate_per_sec: 300.0,
            tail_rate_per_min: 1200.0,
            listing_interval_ms: 0,
            initial_halted_ratio: 0.0,
            ..SimConfig::default()
        };
        let shutdown = Shutdown::new();
        let h = pricefeed_exchange_sim::start(cfg, &shutdown).await.unwrap();
        Sim {
            addrs: h.addrs,
            shutdown,
            http: reqwest::Client::new(),
        }
    }

    fn client(&self) -> RestClient {
        RestClient::new(
            [
                format!("http://{}", self.addrs.spot),
                format!("http://{}", self.addrs.futures),
                format!("http://{}", self.addrs.options),
            ],
            TIMEOUTS,
        )
        .unwrap()
    }

    async fn control(&self, path: &str) -> Value {
        self.http
            .get(format!("http://{}{path}", self.addrs.control))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Listed (not removed) symbols of one simulator market.
    async fn listed(&self, market: &str) -> BTreeSet<String> {
        let v = self
            .control(&format!("/control/catalogue?market={market}"))
            .await;
        v["instruments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| !i["removed"].as_bool().unwrap())
            .map(|i| i["symbol"].as_str().unwrap().to_string())
            .collect()
    }
}

#[tokio::test]
async fn exchange_info_of_all_three_markets_matches_the_catalogue() {
    let sim = Sim::start().await;
    let c = sim.client();

    let spot = c.spot_exchange_info().await.unwrap();
    let spot_syms: BTreeSet<String> = spot.symbols.iter().map(|s| s.symbol.clone()).collect();
    assert_eq!(spot_syms, sim.listed("spot").await);
    assert!(spot_syms.contains("BTCUSDT"));
    assert!(c.used_weight(Market::Spot).is_some_and(|w| w > 0));

    let fut = c.futures_exchange_info().await.unwrap();
    let fut_syms: BTreeSet<String> = fut.symbols.iter().map(|s| s.symbol.clone()).collect();
    assert_eq!(fut_syms, sim.listed("futures").await);
    let perp = fut.symbols.iter().find(|s| s.symbol == "BTCUSDT").unwrap();
    assert_eq!(
        (perp.pair.as_str(), perp.contract_type.as_str()),
        ("BTCUSDT", "PERPETUAL")
    );
    assert!(
        fut.symbols
            .iter()
            .any(|s| s.contract_type != "PERPETUAL" && s.symbol.starts_with("BTCUSDT_"))
    );
    // Every futures pair is a spot pair: the derivative → underlying link holds.
    assert!(fut.symbols.iter().all(|s| spot_syms.contains(&s.pair)));

    let opt = c.options_exchange_info().await.unwrap();
    let opt_syms: BTreeSet<String> = opt
        .option_symbols
        .iter()
        .map(|s| s.symbol.clone())
        .collect();
    assert_eq!(opt_syms, sim.listed("options").await);
    assert!(!opt_syms.is_empty());
    assert!(opt.option_symbols.iter().all(|o| {
        spot_syms.contains(&o.underlying)
            && (o.side == "CALL" || o.side == "PUT")
            && o.strike_price > Decimal::ZERO
    }));
}

/// Pages `historical_trades` from the oldest retained id up to the truth snapshot's last id and
/// compares id, price, quantity, time and side with the simulator's ground truth.
async fn paging_matches_truth(sim: &Sim, c: &RestClient, market: Market, symbol: &str) {
    let truth_market = match market {
        Market::Usdm => "futures",
        m => m.as_str(),
    };
    // Wait for enough history to need several pages of 50.
    let until = Instant::now() + Duration::from_secs(20);
    let truth = loop {
        let v = sim
            .control(&format!(
                "/control/truth/trades?market={truth_market}&symbol={symbol}&limit=1000000"
            ))
            .await;
        let n = v["trades"].as_array().map_or(0, Vec::len);
        if n >= 120 {
            break v;
        }
        assert!(Instant::now() < until, "{symbol}: only {n} trades so far");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Expected rows: trade ids for spot/options, one row per aggregate id for usdm (the futures
    // feed is @aggTrade, so history is kept by agg id; the agg quantity is the sum of its fills).
    let mut want: Vec<(u64, Decimal, Decimal, i64, bool)> = Vec::new();
    for t in truth["trades"].as_array().unwrap() {
        let id = match market {
            Market::Usdm => t["aggId"].as_u64().unwrap(),
            _ => t["id"].as_u64().unwrap(),
        };
        let price: Decimal = t["price"].as_str().unwrap().parse().unwrap();
        let qty: Decimal = t["qty"].as_str().unwrap().parse().unwrap();
        let time = t["time"].as_i64().unwrap();
        let maker = t["isBuyerMaker"].as_bool().unwrap();
        match want.last_mut() {
            Some(last) if market == Market::Usdm && last.0 == id => last.2 += qty,
            _ => want.push((id, price, qty, time, maker)),
        }
    }
    // The last aggregate of the snapshot may still be open (more fills later): drop it.
    if market == Market::Usdm {
        want.pop();
    }
    let sym = Symbol::parse(symbol).unwrap();
    let last = want.last().unwrap().0;
    let mut got = Vec::new();
    let mut from = want[0].0;
    let mut pages = 0;
    while from <= last {
        let page = c
            .historical_trades(market, &sym, Some(from), 50)
            .await
            .unwrap();
        assert!(!page.is_empty(), "{symbol}: empty page from {from}");
        pages += 1;
        for t in page {
            assert_eq!(t.symbol, sym);
            if t.trade_id <= last {
                got.push((t.trade_id, t.price, t.qty, t.ts_ms, t.buyer_is_maker));
            }
            from = t.trade_id + 1;
        }
    }
    assert!(pages >= 2, "{symbol}: paging not exercised");
    assert_eq!(got.len(), want.len(), "{market} {symbol}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert_eq!(g.1, w.1, "price of {}", w.0);
        assert_eq!(g.2.normalize(), w.2.normalize(), "qty of {}", w.0);
        assert_eq!((g.3, g.4), (w.3, w.4), "time/side of {}", w.0);
    }
}

#[tokio::test]
async fn historical_trades_paging_equals_ground_truth_on_every_market() {
    let sim = Sim::start().await;
    let c = sim.client();
    paging_matches_truth(&sim, &c, Market::Spot, "BTCUSDT").await;
    paging_matches_truth(&sim, &c, Market::Usdm, "BTCUSDT").await;
    let opt = sim.listed("options").await.into_iter().next().unwrap();
    paging_matches_truth(&sim, &c, Market::Options, &opt).await;

    // Errors come back typed: unknown symbol → the exchange's -1121, limit checked locally.
    let e = c
        .historical_trades(Market::Spot, &Symbol::parse("NOPEUSDT").unwrap(), None, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RestError::Api { status: 400, api, .. } if api.code == -1121),
        "{e}"
    );
    let e = c
        .historical_trades(Market::Spot, &Symbol::parse("BTCUSDT").unwrap(), None, 0)
        .await
        .unwrap_err();
    assert!(matches!(e, RestError::InvalidRequest(_)), "{e}");
}

/// A fake exchange: `/api/v3/exchangeInfo` answers `status` with `Retry-After: 1`, counting requests.
async fn fake(status: u16, body: &'static str) -> (SocketAddr, Arc<AtomicU32>) {
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/api/v3/exchangeInfo",
        axum::routing::get(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let mut headers = HeaderMap::new();
                headers.insert("retry-after", HeaderValue::from_static("1"));
                headers.insert("x-mbx-used-weight-1m", HeaderValue::from_static("6020"));
                (StatusCode::from_u16(status).unwrap(), headers, body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn client_for(addr: SocketAddr) -> RestClient {
    let u = format!("http://{addr}");
    RestClient::new([u.clone(), u.clone(), u], TIMEOUTS).unwrap()
}

#[tokio::test]
async fn rate_limit_answers_suspend_calls_until_retry_after() {
    for status in [429u16, 418] {
        let (addr, hits) = fake(status, r#"{"code":-1003,"msg":"Too many requests."}"#).await;
        let c = client_for(addr);
        let e = c.spot_exchange_info().await.unwrap_err();
        match &e {
            RestError::RateLimited {
                status: s,
                retry_after,
                api,
                ..
            } => {
                assert_eq!(*s, status);
                assert_eq!(*retry_after, Duration::from_secs(1));
                assert_eq!(api.as_ref().unwrap().code, -1003);
            }
            other => panic!("expected RateLimited, got {other}"),
        }
        assert_eq!(c.used_weight(Market::Spot), Some(6020));
        // While suspended, nothing is sent — from this handle or a clone.
        let clone = c.clone();
        for _ in 0..5 {
            let e = clone.spot_exchange_info().await.unwrap_err();
            assert!(
                matches!(
                    e,
                    RestError::Banned {
                        market: Market::Spot,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.retry_after().unwrap() <= Duration::from_secs(1));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "no request while banned");
        // Other markets have their own limits.
        assert!(c.banned_for(Market::Usdm).is_none());
        // After Retry-After, calls go out again.
        let until = Instant::now() + Duration::from_secs(5);
        while c.banned_for(Market::Spot).is_some() {
            assert!(Instant::now() < until, "ban never lifted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(c.spot_exchange_info().await.is_err());
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn after_a_limit_concurrent_calls_knock_one_at_a_time() {
    let (addr, hits) = fake(429, r#"{"code":-1003,"msg":"Too many requests."}"#).await;
    let c = client_for(addr);
    assert!(c.spot_exchange_info().await.is_err());
    let until = Instant::now() + Duration::from_secs(5);
    while c.banned_for(Market::Spot).is_some() {
        assert!(Instant::now() < until, "ban never lifted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Eight callers that all waited for the same Retry-After (a node's gap backfills do):
    // one request goes out, is refused again, and the other seven are held without sending.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.spot_exchange_info().await.unwrap_err() })
        })
        .collect();
    let mut errors = Vec::new();
    for call in calls {
        errors.push(call.await.unwrap());
    }
    let sent = errors
        .iter()
        .filter(|e| matches!(e, RestError::RateLimited { .. }))
        .count();
    assert_eq!(sent, 1, "{errors:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// A [`HoldBoard`] in memory, as the cluster's Redis one behaves.
#[derive(Debug, Default)]
struct MemBoard(std::sync::Mutex<std::collections::HashMap<&'static str, i64>>);

impl HoldBoard for MemBoard {
    fn held_until(&self, market: Market) -> BoardFuture<'_, Option<i64>> {
        let v = self.0.lock().unwrap().get(market.as_str()).copied();
        Box::pin(async move { v })
    }
    fn hold(&self, market: Market, until_ms: i64) -> BoardFuture<'_, ()> {
        let mut m = self.0.lock().unwrap();
        let e = m.entry(market.as_str()).or_default();
        *e = (*e).max(until_ms);
        Box::pin(async {})
    }
}

#[tokio::test]
async fn a_limit_one_process_meets_holds_every_process_on_the_board() {
    let (addr, hits) = fake(429, r#"{"code":-1003,"msg":"Too many requests."}"#).await;
    let board: Arc<dyn HoldBoard> = Arc::new(MemBoard::default());
    let a = client_for(addr).with_hold_board(board.clone());
    let b = client_for(addr).with_hold_board(board);
    assert!(matches!(
        a.spot_exchange_info().await.unwrap_err(),
        RestError::RateLimited { .. }
    ));
    // The other process has not met the limit itself, and sends nothing either.
    let e = b.spot_exchange_info().await.unwrap_err();
    assert!(matches!(e, RestError::Banned { .. }), "{e}");
    assert!(b.banned_for(Market::Spot).is_some());
    assert!(b.banned_for(Market::Usdm).is_none());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn error_bodies_and_bad_payloads_are_typed() {
    let (addr, _) = fake(400, r#"{"code":-1121,"msg":"Invalid symbol."}"#).await;
    let e = client_for(addr).spot_exchange_info().await.unwrap_err();
    assert!(
        matches!(&e, RestError::Api { status: 400, api, .. } if api.code == -1121),
        "{e}"
    );
    let (addr, _) = fake(502, "<html>bad gateway</html>").await;
    let e = client_for(addr).spot_exchange_info().await.unwrap_err();
    assert!(matches!(e, RestError::Http { status: 502, .. }), "{e}");
    let (addr, _) = fake(200, r#"{"symbols":"nope"}"#).await;
    let e = client_for(addr).spot_exchange_info().await.unwrap_err();
    assert!(matches!(e, RestError::Decode { .. }), "{e}");
    // Nothing listening: a transport error, quickly.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let started = Instant::now();
    let e = client_for(dead).spot_exchange_info().await.unwrap_err();
    assert!(matches!(e, RestError::Transport { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
