//! Live-subscription protocol, limits, heartbeats, shutdown and REST/WS consistency.

use std::time::Duration;

use futures_util::SinkExt;
use pricefeed_broker::rest::{RestAggTrade, RestTrade};
use pricefeed_broker::ws::{Combined, WsAggTrade, WsTrade};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const S5: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_list_unsubscribe_replies() {
    let sim = start().await;
    let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws")).await;
    let r = request(
        &mut ws,
        r#"{"method":"SUBSCRIBE","params":["btcusdt@trade","BTCUSDT@aggTrade"],"id":1}"#,
    )
    .await;
    assert_eq!(r, json!({"result": null, "id": 1}));
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":"abc"}"#).await;
    assert_eq!(
        r,
        json!({"result": ["btcusdt@trade", "btcusdt@aggTrade"], "id": "abc"})
    );
    // events flow: raw (not combined) frames on /ws
    let t = next_text(&mut ws, S5).await.unwrap();
    let v: Value = serde_json::from_str(&t).unwrap();
    assert!(v["e"] == "trade" || v["e"] == "aggTrade", "{t}");
    let r = request(
        &mut ws,
        r#"{"method":"UNSUBSCRIBE","params":["btcusdt@trade"],"id":312}"#,
    )
    .await;
    assert_eq!(r, json!({"result": null, "id": 312}));
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":null}"#).await;
    assert_eq!(r, json!({"result": ["btcusdt@aggTrade"], "id": null}));
    let r = request(
        &mut ws,
        r#"{"method":"GET_PROPERTY","params":["combined"],"id":2}"#,
    )
    .await;
    assert_eq!(r, json!({"result": false, "id": 2}));
    let r = request(
        &mut ws,
        r#"{"method":"SET_PROPERTY","params":["combined",true],"id":5}"#,
    )
    .await;
    assert_eq!(r, json!({"result": null, "id": 5}));
    let r = request(
        &mut ws,
        r#"{"method":"GET_PROPERTY","params":["combined"],"id":6}"#,
    )
    .await;
    assert_eq!(r, json!({"result": true, "id": 6}));
    // after SET_PROPERTY combined=true frames are wrapped
    let wrapped = loop {
        let t = next_text(&mut ws, S5).await.expect("frame");
        if let Ok(c) = serde_json::from_str::<Combined<WsAggTrade>>(&t) {
            break c;
        }
    };
    assert_eq!(wrapped.stream, "btcusdt@aggTrade");
    // unknown symbol: accepted, listed, silent
    let r = request(
        &mut ws,
        r#"{"method":"SUBSCRIBE","params":["nopeusdt@trade","btcusdt@depth"],"id":7}"#,
    )
    .await;
    assert_eq!(r, json!({"result": null, "id": 7}));
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":8}"#).await;
    assert_eq!(r["result"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code() {
    let sim = start().await;
    let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws")).await;
    let cases: &[(&str, i64, &str, Option<Value>)] = &[
        ("{not json", 3, "Invalid JSON: ", None),
        ("", 3, "Invalid JSON: ", None),
        (r#"[1,2]"#, 2, "Invalid request: ", None),
        (
            r#"{"params":[],"id":1}"#,
            2,
            "Invalid request: missing field `method`",
            Some(json!(1)),
        ),
        (
            r#"{"method":"FOO","id":1}"#,
            2,
            "Invalid request: unknown variant `FOO`, expected one of `SUBSCRIBE`",
            Some(json!(1)),
        ),
        (
            r#"{"method":"LIST_SUBSCRIPTIONS","id":{"a":1}}"#,
            2,
            "Invalid request: request ID must be an unsigned integer",
            None,
        ),
        (
            r#"{"method":"LIST_SUBSCRIPTIONS","id":"has space"}"#,
            2,
            "Invalid request: request ID",
            None,
        ),
        (
            r#"{"method":"SUBSCRIBE","params":"btcusdt@trade","id":1}"#,
            2,
            "Invalid request: ",
            Some(json!(1)),
        ),
        (
            r#"{"method":"SUBSCRIBE","params":[1],"id":1}"#,
            2,
            "Invalid request: ",
            Some(json!(1)),
        ),
        (
            r#"{"method":"SUBSCRIBE","params":["btcusdt"],"id":1}"#,
            2,
            "Invalid request: invalid stream name",
            Some(json!(1)),
        ),
        (
            r#"{"method":"LIST_SUBSCRIPTIONS","params":["x"],"id":1}"#,
            2,
            "Invalid request: too many parameters",
            Some(json!(1)),
        ),
        (
            r#"{"method":"SET_PROPERTY","params":["combined",true,1],"id":1}"#,
            2,
            "Invalid request: too many parameters",
            Some(json!(1)),
        ),
        (
            r#"{"method":"GET_PROPERTY","params":[1],"id":1}"#,
            2,
            "Invalid request: property name must be a string",
            Some(json!(1)),
        ),
        (
            r#"{"method":"GET_PROPERTY","params":["nope"],"id":4}"#,
            0,
            "Unknown property",
            Some(json!(4)),
        ),
        (
            r#"{"method":"SET_PROPERTY","params":["nope",true],"id":4}"#,
            0,
            "Unknown property",
            Some(json!(4)),
        ),
        (
            r#"{"method":"SET_PROPERTY","params":["combined","yes"],"id":9}"#,
            1,
            "Invalid value type: expected Boolean",
            Some(json!(9)),
        ),
    ];
    for (req, code, msg, id) in cases {
        let r = request(&mut ws, req).await;
        assert_eq!(r["code"], json!(code), "{req} -> {r}");
        assert!(r["msg"].as_str().unwrap().starts_with(msg), "{req} -> {r}");
        assert_eq!(r.get("id"), id.as_ref(), "{req} -> {r}");
    }
    // the connection survived all of it
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#).await;
    assert_eq!(r, json!({"result": [], "id": 1}));
    // binary garbage is handled like text, not a crash
    ws.send(Message::binary(vec![0xff, 0x00, 0x12]))
        .await
        .unwrap();
    let t = next_text(&mut ws, S5).await.unwrap();
    assert!(t.contains("\"code\":3"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_five_messages_a_second_closes_1008() {
    let sim = start_with(|c| c.ws_max_msgs_per_sec = 5).await;
    let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws")).await;
    for i in 0..5 {
        let r = request(
            &mut ws,
            &format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}"#),
        )
        .await;
        assert_eq!(r["id"], json!(i));
    }
    ws.send(Message::text(r#"{"method":"LIST_SUBSCRIPTIONS","id":6}"#))
        .await
        .unwrap();
    let (end, _) = read_until_end(&mut ws, S5).await;
    assert_eq!(end, Ended::Close(1008, "Too many requests".into()));
}

/// A flooding client must see our close code, not 1006: the server completes the closing
/// handshake instead of dropping a socket with unread input (the kernel then resets the
/// connection and the Close frame is lost). Repeated: that failure was intermittent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_always_sees_close_1008() {
    let sim = start_with(|c| c.ws_max_msgs_per_sec = 5).await;
    for attempt in 0..8 {
        let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws")).await;
        // Like a misbehaving client: it keeps sending (every 2 ms) well past the server's
        // decision to close, and reads only afterwards. A write that fails here means the
        // server reset the connection under it: what clients report as 1006.
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        for i in 0..60 {
            pace.tick().await;
            let req = format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}"#);
            if let Err(e) = ws.send(Message::text(req)).await {
                panic!("attempt {attempt}: connection reset after {i} frames: {e}");
            }
        }
        let (end, texts) = read_until_end(&mut ws, S5).await;
        assert_eq!(
            end,
            Ended::Close(1008, "Too many requests".into()),
            "attempt {attempt}"
        );
        assert_eq!(texts.len(), 5, "attempt {attempt}: {texts:?}");
    }
}

/// ccxt connects to `/ws/<n>` and subscribes afterwards: a path segment that is not a stream
/// name is ignored (the exchange accepts any path under `/ws/`), a stream name still subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_path_segments_that_are_not_streams_are_ignored() {
    let sim = start().await;
    let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws/0")).await;
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#).await;
    assert_eq!(r, json!({"result": [], "id": 1}));
    let r = request(
        &mut ws,
        r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":2}"#,
    )
    .await;
    assert_eq!(r, json!({"result": null, "id": 2}));
    let t = next_text(&mut ws, S5).await.expect("a trade");
    let tr: WsTrade = serde_json::from_str(&t).unwrap();
    assert_eq!(tr.symbol.as_str(), "BTCUSDT");

    let mut ws =
        connect(&sim.ws_url(sim.addrs.spot, "/ws/0/btcusdt@aggTrade/btcusdt/@trade")).await;
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#).await;
    assert_eq!(r, json!({"result": ["btcusdt@aggTrade"], "id": 1}));
    // /stream?streams= still refuses a malformed name at the handshake.
    let err = tokio_tungstenite::connect_async(&sim.ws_url(sim.addrs.spot, "/stream?streams=0"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_is_1024() {
    let sim = start().await;
    let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws")).await;
    let names = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("sym{i}usdt@trade"))
            .collect()
    };
    let r = request(
        &mut ws,
        &json!({"method":"SUBSCRIBE","params":names(0, 1025),"id":1}).to_string(),
    )
    .await;
    assert_eq!(r["code"], json!(2), "{r}");
    assert!(
        r["msg"].as_str().unwrap().contains("too many streams"),
        "{r}"
    );
    let r = request(
        &mut ws,
        &json!({"method":"SUBSCRIBE","params":names(0, 1024),"id":2}).to_string(),
    )
    .await;
    assert_eq!(r, json!({"result": null, "id": 2}));
    let r = request(
        &mut ws,
        &json!({"method":"SUBSCRIBE","params":names(5000, 1),"id":3}).to_string(),
    )
    .await;
    assert_eq!(r["code"], json!(2), "{r}");
    // re-subscribing an existing stream does not count twice
    let r = request(
        &mut ws,
        &json!({"method":"SUBSCRIBE","params":names(0, 1),"id":4}).to_string(),
    )
    .await;
    assert_eq!(r, json!({"result": null, "id": 4}));
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":5}"#).await;
    assert_eq!(r["result"].as_array().unwrap().len(), 1024);
    // the URL form is refused at the handshake
    let url = sim.ws_url(
        sim.addrs.spot,
        &format!("/stream?streams={}", names(0, 1025).join("/")),
    );
    let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_sent_and_silence_disconnects() {
    let sim = start_with(|c| {
        c.ws_ping_interval_ms = 100;
        c.ws_pong_timeout_ms = 400;
    })
    .await;
    // A client that never answers pings is dropped after the pong timeout.
    let mut raw = RawWs::connect(sim.addrs.spot, "/ws").await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    while let Some(f) = raw.next(S5).await {
        if let RawFrame::Ping = f {
            pings += 1;
        }
    }
    let lived = started.elapsed();
    assert!(pings >= 2, "pings {pings}");
    assert!(
        lived >= Duration::from_millis(350) && lived < Duration::from_secs(3),
        "{lived:?}"
    );

    // A client that answers (tungstenite does while reading) stays connected well past it.
    let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws")).await;
    let (end, _) = read_until_end(&mut ws, Duration::from_millis(1500)).await;
    assert_eq!(end, Ended::Timeout);
    // unsolicited pongs do not keep a silent client alive: covered by the raw client above,
    // which never sent one; here just check the connection still answers.
    let r = request(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#).await;
    assert_eq!(r["id"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_event_then_close() {
    let sim = start().await;
    let mut raw = connect(&sim.ws_url(sim.addrs.spot, "/ws/btcusdt@trade")).await;
    let mut comb = connect(&sim.ws_url(sim.addrs.spot, "/stream?streams=btcusdt@trade")).await;
    assert!(next_text(&mut raw, S5).await.is_some());
    assert!(next_text(&mut comb, S5).await.is_some());
    sim.shutdown.trigger();
    let (end, texts) = read_until_end(&mut raw, S5).await;
    assert_eq!(end, Ended::Close(1001, "Server shutting down".into()));
    let last: Value = serde_json::from_str(texts.last().unwrap()).unwrap();
    assert_eq!(last["e"], "serverShutdown");
    let (end, texts) = read_until_end(&mut comb, S5).await;
    assert!(matches!(end, Ended::Close(1001, _)));
    let last: Value = serde_json::from_str(texts.last().unwrap()).unwrap();
    assert_eq!(last["stream"], "!serverShutdown");
    assert_eq!(last["data"]["e"], "serverShutdown");
    assert!(sim.shutdown.wait(S5).await, "all tasks drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_cut_after_lifetime_and_control_kick() {
    let sim = start_with(|c| c.ws_max_lifetime_ms = 300).await;
    let mut ws = connect(&sim.ws_url(sim.addrs.spot, "/ws/btcusdt@trade")).await;
    let (end, _) = read_until_end(&mut ws, S5).await;
    assert_eq!(
        end,
        Ended::Close(1000, "Connection lifetime exceeded".into())
    );

    let sim = start().await;
    let mut ws = connect(&sim.ws_url(sim.addrs.futures, "/ws/btcusdt@aggTrade")).await;
    assert!(next_text(&mut ws, S5).await.is_some());
    let r: Value = sim
        .http
        .post(sim.control("/control/ws/kick"))
        .json(&json!({"server_shutdown": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["kicked"].as_u64().unwrap() >= 1);
    let (end, texts) = read_until_end(&mut ws, S5).await;
    assert!(matches!(end, Ended::Close(1001, _)), "{end:?}");
    assert!(texts.last().unwrap().contains("serverShutdown"));
}

/// What WS delivered with faults off is exactly what REST historicalTrades/aggTrades return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_equals_rest_with_faults_off() {
    let sim = start().await;
    for (addr, prefix, sym) in [
        (sim.addrs.spot, "/api/v3", "btcusdt"),
        (sim.addrs.futures, "/fapi/v1", "btcusdt"),
    ] {
        let mut ws =
            connect(&sim.ws_url(addr, &format!("/stream?streams={sym}@trade/{sym}@aggTrade")))
                .await;
        let mut trades: Vec<WsTrade> = Vec::new();
        let mut aggs: Vec<WsAggTrade> = Vec::new();
        while trades.len() < 600 {
            let t = next_text(&mut ws, S5).await.expect("frame");
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["stream"].as_str().unwrap().ends_with("@trade") {
                trades.push(serde_json::from_value(v["data"].clone()).unwrap());
            } else {
                aggs.push(serde_json::from_value(v["data"].clone()).unwrap());
            }
        }
        for w in trades.windows(2) {
            assert_eq!(w[1].trade_id, w[0].trade_id + 1, "contiguous ids");
        }
        // page historicalTrades by fromId, like a reconciling client
        let mut rest: Vec<RestTrade> = Vec::new();
        let mut from = trades[0].trade_id;
        while rest.len() < trades.len() {
            let url = format!(
                "http://{addr}{prefix}/historicalTrades?symbol=BTCUSDT&fromId={from}&limit=250"
            );
            let page: Vec<RestTrade> = sim
                .http
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(!page.is_empty());
            assert_eq!(page[0].id, from);
            from = page.last().unwrap().id + 1;
            rest.extend(page);
        }
        for (w, r) in trades.iter().zip(&rest) {
            assert_eq!(
                (w.trade_id, w.price, w.qty, w.trade_time, w.buyer_is_maker),
                (r.id, r.price, r.qty, r.time, r.is_buyer_maker)
            );
        }
        // aggTrades: complete aggregates seen on WS match REST fromId paging
        let first = aggs
            .iter()
            .find(|a| a.first_trade_id >= trades[0].trade_id)
            .unwrap()
            .agg_id;
        let url =
            format!("http://{addr}{prefix}/aggTrades?symbol=BTCUSDT&fromId={first}&limit=1000");
        let rest_aggs: Vec<RestAggTrade> = sim
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws_aggs: Vec<_> = aggs.iter().filter(|a| a.agg_id >= first).collect();
        assert!(ws_aggs.len() > 50);
        for (w, r) in ws_aggs.iter().zip(&rest_aggs) {
            assert_eq!(
                (
                    w.agg_id,
                    w.price,
                    w.qty,
                    w.first_trade_id,
                    w.last_trade_id,
                    w.trade_time
                ),
                (
                    r.agg_id,
                    r.price,
                    r.qty,
                    r.first_trade_id,
                    r.last_trade_id,
                    r.time
                )
            );
        }
    }
    // options: @trade on its own listener, uppercase symbol in the stream name
    let info: Value = sim.get_json(&sim.options("/eapi/v1/exchangeInfo")).await.1;
    let sym = info["optionSymbols"][0]["symbol"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ws = connect(&sim.ws_url(sim.addrs.options, &format!("/ws/{sym}@trade"))).await;
    let t: WsTrade =
        serde_json::from_str(&next_text(&mut ws, Duration::from_secs(10)).await.unwrap()).unwrap();
    assert_eq!(t.symbol, sym);
    let rows: Vec<Value> = sim
        .http
        .get(sim.options(&format!("/eapi/v1/trades?symbol={sym}&limit=1000")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        rows.iter()
            .any(|r| r["id"] == json!(t.trade_id) && r["price"] == json!(t.price.to_string())),
        "{t:?}"
    );
}
