//! A user's whole journey with a price alert, against the real parts: the simulator (volatile
//! prices), a scheduler, an email worker, two nodes, real Postgres and Redis and a real SMTP
//! server (`tests/smtp/sink.py`). The user registers and signs in through the node that does not
//! own BTCUSDT, opens `/api/v1/stream` there, authenticates and subscribes to `alerts`, then
//! creates one `crosses_up` and one `crosses_down` alert just around the current price. When the
//! simulator's price crosses one of them, the trigger reaches the user's WebSocket first, then
//! exactly one mail reaches the SMTP sink naming the alert, the instrument, the condition, the
//! threshold and the trade's price; the notifications API shows both channels delivered, and
//! the trade it names is a real crossing in the simulator's ground truth.

use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pricefeed_tests::smtp::SmtpSink;
use pricefeed_tests::{
    Proc, Sim, base_env, bin, fresh_database, get_json, http_client, migrate, seed_from_catalogue,
    sign_up, start_nodes, start_schedulers, wait_for, wall_ms,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const READY: Duration = Duration::from_secs(30);
const KEY: &str = "spot:BTCUSDT";
const EMAIL: &str = "journey@example.com";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("not a decimal: {v}"))).unwrap()
}

/// The next JSON frame of `ty` within `within` (other frames are skipped; reading also answers
/// the node's pings).
async fn until(ws: &mut Ws, ty: &str, within: Duration) -> Value {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {ty} frame within {within:?}"));
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == ty {
                    return v;
                }
                assert_ne!(v["type"], "error", "error frame: {v}");
            }
            Some(Ok(_)) => {}
            other => panic!("stream ended waiting for {ty}: {other:?}"),
        }
    }
}

/// The node whose ingest lists `KEY` as live.
async fn owner(http: &reqwest::Client, nodes: &[Proc]) -> String {
    let until = Instant::now() + READY;
    loop {
        for n in nodes {
            if let Ok(v) = get_json(http, &n.url("/api/v1/cluster/ingest")).await
                && v["instruments"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|i| i["key"] == KEY && i["live"] == true))
            {
                return n.name.clone();
            }
        }
        assert!(Instant::now() < until, "{KEY} has no live owner");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_reaches_the_users_websocket_then_one_email_at_the_smtp_sink() {
    let http = http_client(Duration::from_secs(10));
    let sim = Sim::start_small(&[
        ("UNDERLYINGS", "2"),
        ("HOT_SYMBOLS", "1"),
        ("VOL_SCALE", "20.0"),
    ])
    .await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let sink = SmtpSink::start(&[]).await;
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.extend(sink.worker_env());
    env.push(("PRICEFEED__WORKER__POLL_MS".into(), "100".into()));
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    assert!(keys.contains(KEY), "{keys:?}");
    let _sched = start_schedulers(&["sched"], &env).await;
    let worker = Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &env)
        .await
        .unwrap();
    let nodes = start_nodes(&["n1", "n2"], &env).await;
    let own = owner(&http, &nodes).await;
    let node = nodes.iter().find(|n| n.name != own).unwrap();
    println!("BTCUSDT is owned by {own}; the user talks to {}", node.name);

    // Register and sign in.
    let access = sign_up(&http, node, EMAIL, "correct horse battery staple").await;

    // The user's WebSocket, on the node that does not own the instrument.
    let url = node.url("/api/v1/stream").replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let step = Duration::from_secs(5);
    ws.send(Message::text(
        json!({"op": "auth", "token": access}).to_string(),
    ))
    .await
    .unwrap();
    until(&mut ws, "authenticated", step).await;
    ws.send(Message::text(
        json!({"op": "subscribe", "channels": ["alerts"]}).to_string(),
    ))
    .await
    .unwrap();
    until(&mut ws, "subscribed", step).await;

    // Two alerts just around the price (0.05 %): the volatile simulator crosses one soon.
    let mut p = None;
    let until_price = Instant::now() + READY;
    while p.is_none() {
        assert!(
            Instant::now() < until_price,
            "no BTCUSDT price on {}",
            node.name
        );
        if let Ok(v) = get_json(&http, &node.url("/api/v1/prices/BTCUSDT")).await
            && v["price"].is_string()
        {
            p = Some(dec(&v["price"]));
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let p = p.unwrap();
    let band = Decimal::new(5, 4);
    let mut alerts = Vec::new();
    for (cond, thr) in [
        ("crosses_up", p * (Decimal::ONE + band)),
        ("crosses_down", p * (Decimal::ONE - band)),
    ] {
        let thr = thr.round_dp(2);
        let r = http
            .post(node.url("/api/v1/alerts"))
            .bearer_auth(&access)
            .json(
                &json!({"symbol": "BTCUSDT", "condition": cond, "threshold": thr.to_string(),
                          "channels": ["email", "websocket"], "note": "journey"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let a: Value = r.json().await.unwrap();
        alerts.push((a["id"].as_i64().unwrap(), cond, thr));
    }
    println!("price {p}; alerts {alerts:?}");

    // The WebSocket hears the trigger.
    let ev = until(&mut ws, "alert", Duration::from_secs(120)).await;
    let ws_at = wall_ms();
    let d = &ev["data"];
    let alert_id = d["alert_id"].as_i64().unwrap();
    let &(_, cond, thr) = alerts
        .iter()
        .find(|a| a.0 == alert_id)
        .unwrap_or_else(|| panic!("a trigger of an alert of ours: {ev}"));
    assert_eq!(d["symbol"], "BTCUSDT", "{ev}");
    assert_eq!(d["condition"], cond, "{ev}");
    assert_eq!(dec(&d["threshold"]), thr, "{ev}");
    let price = dec(&d["price"]);
    let trade_id = d["trade_id"].as_u64().unwrap();
    let trigger_id = d["trigger_id"].as_i64().unwrap();
    println!("websocket: {ev}");

    // Then exactly one mail at the sink, after the push, saying what fired.
    let key = format!("pf-{trigger_id}-email");
    wait_for(Duration::from_secs(30), || async {
        sink.of_key(&key).iter().any(|e| e["reply"] == 250)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no mail for {key}; sink saw {:?}; worker log:\n{}",
            sink.entries(),
            worker.log_tail()
        )
    });
    let mails = sink.of_key(&key);
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let m = &mails[0];
    let mail_at = m["t"].as_i64().unwrap();
    println!(
        "websocket at {ws_at}, mail accepted at {mail_at} ({} ms later)",
        mail_at - ws_at
    );
    assert!(
        ws_at <= mail_at,
        "the WebSocket got the trigger first ({ws_at} vs mail {mail_at})"
    );
    assert_eq!(m["rcpt"][0], EMAIL);
    let data = m["data"].as_str().unwrap();
    let words = if cond == "crosses_up" {
        "crosses up"
    } else {
        "crosses down"
    };
    for want in [
        format!("Alert:        #{alert_id}"),
        "Instrument:   BTCUSDT (spot)".to_string(),
        format!("Threshold:    {}", thr.normalize()),
        format!("Trade price:  {}", price.normalize()),
        format!("Trade id:     {trade_id}"),
    ] {
        assert!(data.contains(&want), "mail lacks {want:?}:\n{data}");
    }
    assert!(
        data.contains(words),
        "mail names the condition ({words}):\n{data}"
    );

    // The record: both channels delivered, for the trade that crossed.
    let notes: Value = http
        .get(node.url(&format!("/api/v1/alerts/{alert_id}/notifications")))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = &notes["items"][0];
    assert_eq!(item["trade_id"].as_u64(), Some(trade_id), "{notes}");
    let mut states: Vec<(String, String)> = item["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["channel"].as_str().unwrap().into(),
                d["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("email".to_string(), "sent".to_string()),
            ("websocket".to_string(), "sent".to_string())
        ],
        "{notes}"
    );

    // The trade is a real crossing in the simulator's ground truth.
    let truth = get_json(
        &http,
        &format!(
            "http://{control}/control/truth/trades?market=spot&symbol=BTCUSDT&fromId={}&limit=2",
            trade_id - 1
        ),
    )
    .await
    .unwrap();
    let t = truth["trades"].as_array().expect("truth trades");
    assert_eq!(t.len(), 2, "{truth}");
    assert_eq!(t[1]["id"].as_u64(), Some(trade_id), "{truth}");
    let (prev, cur) = (dec(&t[0]["price"]), dec(&t[1]["price"]));
    assert_eq!(cur, price, "the trade's price as the simulator made it");
    if cond == "crosses_up" {
        assert!(prev < thr && cur >= thr, "{prev} → {cur} crosses up {thr}");
    } else {
        assert!(
            prev > thr && cur <= thr,
            "{prev} → {cur} crosses down {thr}"
        );
    }
}
