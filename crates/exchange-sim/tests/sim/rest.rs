//! REST shapes, errors, weights, 429/418, ground truth and the control API.

use std::time::Duration;

use pricefeed_broker::rest::{
    ApiError, FuturesExchangeInfo, OptionsExchangeInfo, RestAggTrade, RestTrade, SpotExchangeInfo,
    TickerPrice, step_size, tick_size,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_info_of_three_markets_is_linked() {
    let sim = start().await;
    let spot: SpotExchangeInfo = sim
        .http
        .get(sim.spot("/api/v3/exchangeInfo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fut: FuturesExchangeInfo = sim
        .http
        .get(sim.futures("/fapi/v1/exchangeInfo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let opt: OptionsExchangeInfo = sim
        .http
        .get(sim.options("/eapi/v1/exchangeInfo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spot.symbols.len(), 3);
    assert_eq!(spot.rate_limits[0].limit, 6000);
    let btc = spot.symbols.iter().find(|s| s.symbol == "BTCUSDT").unwrap();
    assert_eq!(tick_size(&btc.filters), Some(Decimal::new(1, 2)));
    assert_eq!(tick_size(&btc.filters).unwrap().to_string(), "0.01000000");
    assert!(step_size(&btc.filters).is_some());
    for f in &fut.symbols {
        assert!(spot.symbols.iter().any(|s| s.symbol == f.pair));
        if f.contract_type == "PERPETUAL" {
            assert_eq!(f.symbol, f.pair);
        } else {
            assert!(f.symbol.starts_with(&format!("{}_", f.pair)));
            assert!(f.delivery_date > f.onboard_date);
        }
    }
    assert_eq!(fut.symbols.len(), 9);
    assert_eq!(opt.option_contracts.len(), 3);
    for o in &opt.option_symbols {
        assert!(spot.symbols.iter().any(|s| s.symbol == o.underlying));
        let parts: Vec<&str> = o.symbol.split('-').collect();
        assert_eq!(parts.len(), 4, "{}", o.symbol);
        assert_eq!(parts[2], o.strike_price.to_string());
        assert_eq!(parts[3], if o.side == "CALL" { "C" } else { "P" });
    }
    // filters by symbol/symbols/status
    let one: SpotExchangeInfo = sim
        .http
        .get(sim.spot("/api/v3/exchangeInfo?symbol=ETHUSDT"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one.symbols.len(), 1);
    let two: SpotExchangeInfo = sim
        .http
        .get(sim.spot("/api/v3/exchangeInfo?symbols=%5B%22ETHUSDT%22,%22BTCUSDT%22%5D"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(two.symbols.len(), 2);
    let halted: SpotExchangeInfo = sim
        .http
        .get(sim.spot("/api/v3/exchangeInfo?symbolStatus=HALT"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(halted.symbols.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_error_codes() {
    let sim = start().await;
    let cases = [
        ("/api/v3/exchangeInfo?symbol=NOPEUSDT", 400, -1121),
        ("/api/v3/trades", 400, -1102),
        ("/api/v3/trades?symbol=", 400, -1102),
        ("/api/v3/trades?symbol=btcusdt", 400, -1100),
        ("/api/v3/trades?symbol=NOPEUSDT", 400, -1121),
        ("/api/v3/trades?symbol=BTCUSDT&limit=abc", 400, -1100),
        ("/api/v3/trades?symbol=BTCUSDT&limit=5000", 400, -1130),
        (
            "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1",
            400,
            -1130,
        ),
        (
            "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=x",
            400,
            -1100,
        ),
        (
            "/api/v3/aggTrades?symbol=BTCUSDT&fromId=1&startTime=1",
            400,
            -1128,
        ),
        (
            "/api/v3/aggTrades?symbol=BTCUSDT&startTime=10&endTime=1",
            400,
            -1128,
        ),
        ("/api/v3/nope", 404, -1000),
        ("/fapi/v1/trades?symbol=NOPE", 400, -1121),
        ("/eapi/v1/trades?symbol=BTCUSDT", 400, -1121),
    ];
    for (path, status, code) in cases {
        let addr = match &path[..5] {
            "/fapi" => sim.addrs.futures,
            "/eapi" => sim.addrs.options,
            _ => sim.addrs.spot,
        };
        let r = sim
            .http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert!(r.headers().contains_key("x-mbx-used-weight-1m"), "{path}");
        let e: ApiError = r.json().await.unwrap();
        assert_eq!(e.code, code, "{path}: {e:?}");
    }
    let (s, v) = sim.get_json(&sim.spot("/api/v3/ping")).await;
    assert_eq!((s, v), (200, json!({})));
    let (_, v) = sim.get_json(&sim.spot("/api/v3/time")).await;
    assert!(v["serverTime"].as_i64().unwrap() > 1_600_000_000_000);
    let t: TickerPrice = sim
        .http
        .get(sim.spot("/api/v3/ticker/price?symbol=BTCUSDT"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t.symbol, "BTCUSDT");
    let all: Vec<TickerPrice> = sim
        .http
        .get(sim.futures("/fapi/v1/ticker/price"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(all.iter().all(|t| t.time.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_429_then_418() {
    let sim = start_with(|c| {
        c.rest_weight_limit = 100;
        c.rest_ban_after = 2;
    })
    .await;
    let get = |p: &'static str| sim.http.get(sim.spot(p)).send();
    let used = |r: &reqwest::Response| {
        r.headers()["x-mbx-used-weight-1m"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let r = get("/api/v3/exchangeInfo").await.unwrap();
    // The window may roll between requests; only assert relative steps inside one window.
    let first = used(&r);
    assert!(first == 20, "{first}");
    let r = get("/api/v3/aggTrades?symbol=BTCUSDT").await.unwrap();
    assert_eq!(used(&r), 24);
    let mut statuses = Vec::new();
    let mut retry = Vec::new();
    for _ in 0..8 {
        let r = get("/api/v3/trades?symbol=BTCUSDT&limit=1").await.unwrap();
        statuses.push(r.status().as_u16());
        if let Some(v) = r.headers().get("retry-after") {
            retry.push(v.to_str().unwrap().parse::<u64>().unwrap());
        }
        if r.status().as_u16() != 200 {
            let e: ApiError = r.json().await.unwrap();
            assert_eq!(e.code, -1003);
        }
    }
    // 24 + 25*3 = 99 fits, then 429 ×2 (ban_after), then 418 for good.
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429, 429, 418, 418, 418],
        "{statuses:?}"
    );
    assert!(retry.iter().all(|s| *s >= 1));
    assert!(retry[2] >= 100, "ban retry-after {retry:?}");
    // other listeners keep their own budget
    assert_eq!(
        sim.http
            .get(sim.futures("/fapi/v1/ping"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_matches_ground_truth_by_time_and_id() {
    let sim = start().await;
    let truth: Value = wait_for(Duration::from_secs(10), "300 trades", || async {
        let (_, v) = sim
            .get_json(&sim.control("/control/truth/trades?market=spot&symbol=BTCUSDT"))
            .await;
        (v["trades"].as_array()?.len() >= 300).then_some(v)
    })
    .await;
    let trades = truth["trades"].as_array().unwrap();
    let start = trades[50]["time"].as_i64().unwrap();
    let end = trades[250]["time"].as_i64().unwrap();
    let (_, window) = sim
        .get_json(&sim.control(&format!(
            "/control/truth/trades?market=spot&symbol=BTCUSDT&start={start}&end={end}"
        )))
        .await;
    let window = window["trades"].as_array().unwrap().clone();
    assert!(
        window
            .iter()
            .all(|t| (start..=end).contains(&t["time"].as_i64().unwrap()))
    );
    // aggTrades by time: every fill of the returned aggregates is in the truth window
    let aggs: Vec<RestAggTrade> = sim
        .http
        .get(sim.spot(&format!(
            "/api/v3/aggTrades?symbol=BTCUSDT&startTime={start}&endTime={end}&limit=1000"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!aggs.is_empty());
    for a in &aggs {
        let fills: Vec<&Value> = window
            .iter()
            .filter(|t| (a.first_trade_id..=a.last_trade_id).contains(&t["id"].as_i64().unwrap()))
            .collect();
        assert_eq!(fills.len() as i64, a.last_trade_id - a.first_trade_id + 1);
        let sum: Decimal = fills
            .iter()
            .map(|t| t["qty"].as_str().unwrap().parse::<Decimal>().unwrap())
            .sum();
        assert_eq!(sum, a.qty);
    }
    // recent trades = tail of the truth; limit respected
    let recent: Vec<RestTrade> = sim
        .http
        .get(sim.spot("/api/v3/trades?symbol=BTCUSDT&limit=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(recent.len(), 5);
    for w in recent.windows(2) {
        assert_eq!(w[1].id, w[0].id + 1);
    }
    assert_eq!(recent[0].price.scale(), 8, "spot prices carry 8 decimals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_faults_listings_catalogue() {
    let sim = start().await;
    let r: Value = sim
        .http
        .put(sim.control("/control/faults/symbols/btcusdt"))
        .json(&json!({"drop": 0.5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["symbols"]["BTCUSDT"]["drop"], json!(0.5));
    let bad = sim
        .http
        .put(sim.control("/control/faults/global"))
        .json(&json!({"drop": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let r: Value = sim
        .http
        .delete(sim.control("/control/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["symbols"].as_object().unwrap().is_empty());
    let (_, before) = sim
        .get_json(&sim.control("/control/catalogue?market=options"))
        .await;
    let mut listed = 0;
    for _ in 0..30 {
        let ch: Vec<Value> = sim
            .http
            .post(sim.control("/control/listings/step"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed += ch.iter().filter(|c| c["change"] == "listed").count();
    }
    assert!(listed > 0);
    let (_, log) = sim.get_json(&sim.control("/control/listings")).await;
    assert!(!log.as_array().unwrap().is_empty());
    let (_, after) = sim.get_json(&sim.control("/control/catalogue")).await;
    assert!(after["count"].as_u64() > before["count"].as_u64());
    for p in [
        "/livez",
        "/readyz",
        "/metrics",
        "/control/stats",
        "/control/faults/stats",
    ] {
        assert_eq!(
            sim.http.get(sim.control(p)).send().await.unwrap().status(),
            200,
            "{p}"
        );
    }
}

#[tokio::test]
async fn runs_with_two_thousand_underlyings() {
    let sim = start_with(|c| {
        c.underlyings = 2000;
        c.history_depth_tail = 10;
    })
    .await;
    let fut: FuturesExchangeInfo = sim
        .http
        .get(sim.futures("/fapi/v1/exchangeInfo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fut.symbols.len(), 6000);
    let (_, stats) = sim.get_json(&sim.control("/control/stats")).await;
    assert!(stats["instruments"]["options"].as_u64().unwrap() >= 2000 * 16 - 100);
}
