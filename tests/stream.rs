//! End-to-end tests of the client WebSocket `GET /api/v1/stream` on a real cluster:
//! `pricefeed-sim` (small catalogue), one scheduler and two nodes against real Postgres and
//! Redis. Clients connect to the node that does NOT own the instrument, so every value comes
//! through the owner's Redis publication and the node's single subscription.
//!
//! One cluster, steps in order (each names what it checks): latest-first then updates that match
//! the simulator's trades and the REST latest price; VWAP; market-qualified channels; errors for
//! unknown instruments and intervals; watch/unwatch/list around the current price; auth failures
//! (none, forged, expired, refresh-as-access) and the `alerts` channel (a real trigger, else a
//! published `AlertEvent`), only for its user; bad frames; every limit; a client that never reads
//! is cut off while another keeps receiving; and 1001 for every client on SIGTERM.
//!
//! Limits are lowered for the test through `PRICEFEED__NODE__STREAM__*` (see `LIMITS`).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pricefeed_store::protocol::{AlertEvent, Keys};
use pricefeed_tests::{
    Proc, SMALL_CATALOGUE, Sim, TEST_JWT_SECRET, base_env, fresh_database, get_json, http_client,
    key_prefix, metric, migrate, seed_from_catalogue, start_nodes, start_schedulers, wall_ms,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const READY: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(10);

const SIM: [(&str, &str); 2] = [("UNDERLYINGS", "3"), ("HOT_SYMBOLS", "1")];

/// Per-connection limits of the test nodes.
const LIMITS: [(&str, &str); 9] = [
    ("MAX_CHANNELS", "5"),
    ("MAX_WATCHES", "3"),
    ("MSGS_PER_SEC", "5"),
    ("MSGS_BURST", "10"),
    ("RATE_STRIKES", "5"),
    ("MAX_FRAME_BYTES", "1024"),
    ("PING_MS", "1000"),
    ("IDLE_TIMEOUT_MS", "4000"),
    ("SEND_TIMEOUT_MS", "1000"),
];

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test client. Waiting on it always reads the socket, which also answers the node's pings.
struct Client {
    ws: Ws,
    name: &'static str,
}

/// How a connection ended, as the client saw it.
#[derive(Debug)]
enum Ended {
    Closed(u16, String),
    /// Reset or EOF without a close frame.
    Dropped(String),
}

impl Client {
    async fn connect(node: &Proc, name: &'static str) -> Client {
        let url = node.url("/api/v1/stream").replace("http://", "ws://");
        let (ws, res) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("{name}: connect {url}: {e}"));
        assert_eq!(res.status(), 101);
        Client { ws, name }
    }

    async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    async fn send_text(&mut self, s: String) {
        self.ws
            .send(Message::text(s))
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The next JSON text frame within `within`.
    async fn next(&mut self, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {within:?}", self.name));
            match m {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Close(c))) => panic!("{}: closed: {c:?}", self.name),
                Some(Ok(_)) => {}
                other => panic!("{}: stream ended: {other:?}", self.name),
            }
        }
    }

    /// Reads until a frame of `type` (and matching `pred`) arrives; returns it.
    async fn until(&mut self, ty: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no {ty} frame within {within:?}",
                self.name
            );
            let v = self.next(left).await;
            if v["type"] == ty && pred(&v) {
                return v;
            }
        }
    }

    /// Reads until the connection ends; returns how.
    async fn ended(&mut self, within: Duration) -> Ended {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: still open after {within:?}", self.name));
            match m {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ended::Closed(u16::from(f.code), f.reason.as_str().to_string());
                }
                Some(Ok(Message::Close(None))) => return Ended::Closed(1005, String::new()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Dropped(e.to_string()),
                None => return Ended::Dropped("EOF".into()),
            }
        }
    }
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("decimal string expected: {v}"))
        .parse()
        .unwrap()
}

/// Live instruments per node (`/api/v1/cluster/ingest`).
async fn owned(http: &reqwest::Client, n: &Proc) -> Vec<String> {
    get_json(http, &n.url("/api/v1/cluster/ingest"))
        .await
        .ok()
        .and_then(|v| v["instruments"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|i| i["live"] == true)
        .filter_map(|i| i["key"].as_str().map(String::from))
        .collect()
}

/// The price of trade `id` of `symbol` according to the simulator.
async fn sim_price(
    http: &reqwest::Client,
    sim: &Sim,
    market: &str,
    symbol: &str,
    id: u64,
) -> Decimal {
    let v = get_json(
        http,
        &sim.proc.url(&format!(
            "/control/truth/trades?market={market}&symbol={symbol}&fromId={id}&limit=1"
        )),
    )
    .await
    .unwrap();
    let t = &v["trades"][0];
    assert_eq!(t["id"].as_u64(), Some(id), "{v}");
    match &t["price"] {
        Value::String(s) => s.parse().unwrap(),
        other => panic!("price {other}"),
    }
}

/// An HS256 token with the claims the nodes expect, signed with `key`, expiring at `exp`.
fn mint(key: &str, user: i64, exp: i64) -> String {
    let claims = json!({
        "sub": user.to_string(), "role": "user", "iat": exp - 900, "exp": exp,
        "iss": "pricefeed", "aud": "pricefeed-api", "typ": "access"
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// Registers `email` and logs in; returns (user id, access token, refresh token).
async fn account(http: &reqwest::Client, n: &Proc, email: &str) -> (i64, String, String) {
    let body = json!({"email": email, "password": "correct horse battery staple"});
    let r = http
        .post(n.url("/api/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let acc: Value = r.json().await.unwrap();
    let t: Value = http
        .post(n.url("/api/v1/auth/token"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        acc["id"].as_i64().unwrap(),
        t["access_token"].as_str().unwrap().to_string(),
        t["refresh_token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn client_websocket_on_a_cluster() {
    let http = http_client(Duration::from_secs(5));
    let sim = Sim::start(&[&SMALL_CATALOGUE[..], &SIM].concat()).await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    for (k, v) in LIMITS {
        env.push((format!("PRICEFEED__NODE__STREAM__{k}"), v.into()));
    }
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    let _sched = start_schedulers(&["sched"], &env).await;
    let mut nodes = start_nodes(&["n1", "n2"], &env).await;

    // The hot spot pair: the one with the most trades. Wait until it is live on one node.
    let cat = sim.catalogue(&http).await;
    let hot = cat["instruments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["market"] == "spot" && i["hot"] == true)
        .or_else(|| {
            cat["instruments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["market"] == "spot")
        })
        .unwrap()["symbol"]
        .as_str()
        .unwrap()
        .to_string();
    let hot_key = format!("spot:{hot}");
    assert!(keys.contains(&hot_key));
    let until = Instant::now() + READY;
    let owner = loop {
        let mut found = None;
        for (i, n) in nodes.iter().enumerate() {
            if owned(&http, n).await.contains(&hot_key) {
                found = Some(i);
            }
        }
        let priced = get_json(&http, &nodes[0].url(&format!("/api/v1/prices/{hot}")))
            .await
            .is_ok_and(|v| v["trade_id"].is_u64());
        if let (Some(i), true) = (found, priced) {
            break i;
        }
        assert!(Instant::now() < until, "{hot_key} never live");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let other = 1 - owner;
    println!("hot {hot_key} owned by node {owner}; clients use node {other}");
    let node = &nodes[other];

    // 1. prices: latest first, then updates; prices are the simulator's; REST agrees.
    let rest_before = get_json(&http, &node.url(&format!("/api/v1/prices/{hot}")))
        .await
        .unwrap();
    let mut c = Client::connect(node, "prices").await;
    c.send(json!({"op":"subscribe","channels":[format!("prices:{}", hot.to_lowercase())]}))
        .await;
    let ack = c.next(STEP).await;
    assert_eq!(
        ack,
        json!({"type":"subscribed","channels":[format!("prices:{hot}")]})
    );
    let t0 = Instant::now();
    let first = c.next(STEP).await;
    println!("latest value {:?} after the ack", t0.elapsed());
    assert_eq!(first["type"], "price");
    assert_eq!(first["channel"], format!("prices:{hot}"));
    assert!(
        first["data"]["trade_id"].as_u64() >= rest_before["trade_id"].as_u64(),
        "latest first: {first} vs REST {rest_before}"
    );
    let mut last = first["data"]["trade_id"].as_u64().unwrap();
    let mut seen = vec![first["data"].clone()];
    while seen.len() < 6 {
        let u = c.until("price", STEP, |_| true).await;
        let id = u["data"]["trade_id"].as_u64().unwrap();
        assert!(id > last, "updates move forward: {id} after {last}");
        last = id;
        seen.push(u["data"].clone());
    }
    for d in &seen {
        let id = d["trade_id"].as_u64().unwrap();
        assert_eq!(
            dec(&d["price"]),
            sim_price(&http, &sim, "spot", &hot, id).await,
            "{d}"
        );
    }
    let rest = get_json(&http, &node.url(&format!("/api/v1/prices/{hot}")))
        .await
        .unwrap();
    assert!(
        rest["trade_id"].as_u64().unwrap() >= last,
        "REST {rest} behind WS {last}"
    );
    // The REST price at its trade id is the simulator's too: both paths serve the same trades.
    let rid = rest["trade_id"].as_u64().unwrap();
    assert_eq!(
        dec(&rest["price"]),
        sim_price(&http, &sim, "spot", &hot, rid).await
    );
    // Keep reading until a frame carries REST's trade (or a later one): same price for the id.
    let u = c
        .until("price", STEP, |u| {
            u["data"]["trade_id"].as_u64() >= Some(rid)
        })
        .await;
    if u["data"]["trade_id"].as_u64() == Some(rid) {
        assert_eq!(u["data"]["price"], rest["price"]);
    }

    // 2. vwap channel, market-qualified names, unknown instrument/interval.
    c.send(json!({"op":"subscribe","channels":[
        format!("vwap:{hot}:1m"), format!("prices:usdm:{hot}"), format!("vwap:{hot}:2m"), "prices:NOSUCHPAIR"
    ]}))
    .await;
    // Errors for refused names, then the ack, then the snapshots (with prices:HOT updates
    // interleaved, as that channel is still subscribed).
    let mut got = Vec::new();
    while !got.iter().any(|v: &Value| v["type"] == "subscribed") {
        assert!(got.len() < 200, "no ack: {got:?}");
        got.push(c.next(STEP).await);
    }
    let find = |ty: &str, f: &dyn Fn(&Value) -> bool| {
        got.iter().find(|v| v["type"] == ty && f(v)).cloned()
    };
    assert!(
        find("error", &|v| v["code"] == "unknown_interval"
            && v["channel"] == format!("vwap:{hot}:2m"))
        .is_some(),
        "{got:?}"
    );
    assert!(
        find("error", &|v| v["code"] == "unknown_instrument"
            && v["channel"] == "prices:NOSUCHPAIR")
        .is_some(),
        "{got:?}"
    );
    assert!(
        find("subscribed", &|v| v["channels"]
            == json!([
                format!("vwap:{hot}:1m"),
                format!("prices:usdm:{hot}")
            ]))
        .is_some(),
        "{got:?}"
    );
    let vw = match find("vwap", &|_| true) {
        Some(v) => v,
        None => c.until("vwap", STEP, |_| true).await,
    };
    assert_eq!(vw["channel"], format!("vwap:{hot}:1m"));
    assert_eq!(vw["data"]["interval"], "1m");
    let rest_vwap = get_json(&http, &node.url(&format!("/api/v1/vwap/{hot}?interval=1m")))
        .await
        .unwrap();
    assert!(rest_vwap["window_end"].as_i64() >= vw["data"]["window_end"].as_i64());
    // The snapshot is the owner's last published window: on a cluster a second old it can be
    // the empty one published when the owner went live, before its first trade. Updates with
    // the trades follow.
    if !vw["data"]["vwap"].is_string() {
        assert_eq!(vw["data"]["trade_count"], 0, "{vw}");
        let later = c
            .until("vwap", STEP, |v| v["data"]["vwap"].is_string())
            .await;
        assert!(later["data"]["trade_count"].as_u64() > Some(0), "{later}");
    }
    let perp = c
        .until("price", STEP, |u| {
            u["channel"] == format!("prices:usdm:{hot}")
        })
        .await;
    assert_eq!(perp["data"]["market"], "usdm");
    c.send(json!({"op":"unsubscribe","channels":[format!("prices:usdm:{hot}"), format!("vwap:{hot}:1m"), format!("prices:{hot}")]})).await;
    c.until("unsubscribed", STEP, |_| true).await;
    c.send(json!({"op":"list"})).await;
    let l = c.until("list", STEP, |_| true).await;
    assert_eq!(l["channels"], json!([]));
    drop(c);

    // 3. watch / unwatch / list, thresholds at the current price: it oscillates around it.
    let mut w = Client::connect(node, "watch").await;
    let p = dec(
        &get_json(&http, &node.url(&format!("/api/v1/prices/{hot}")))
            .await
            .unwrap()["price"],
    );
    w.send(json!({"op":"watch","symbol":hot,"above":p.to_string()}))
        .await;
    let a1 = w.until("watching", STEP, |_| true).await;
    w.send(json!({"op":"watch","symbol":hot,"below":p.to_string()}))
        .await;
    let a2 = w.until("watching", STEP, |_| true).await;
    let (id_above, id_below) = (
        a1["watch"]["id"].as_u64().unwrap(),
        a2["watch"]["id"].as_u64().unwrap(),
    );
    assert_ne!(id_above, id_below);
    assert_eq!(a1["watch"]["direction"], "above");
    assert_eq!(dec(&a1["watch"]["threshold"]), p);
    // The first move off `p` crosses one of the two; keep collecting for a while after.
    let mut crossed = std::collections::BTreeMap::<u64, Vec<Value>>::new();
    let first = w.until("crossed", Duration::from_secs(30), |_| true).await;
    let mut all = vec![first];
    let more = Instant::now() + Duration::from_secs(8);
    while Instant::now() < more {
        match tokio::time::timeout(Duration::from_millis(300), w.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "crossed" {
                    all.push(v);
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(other) => panic!("watch: {other:?}"),
        }
    }
    for v in all {
        let price = dec(&v["price"]);
        let id = v["watch"]["id"].as_u64().unwrap();
        if id == id_above {
            assert!(price > p, "above {p}: {v}");
        } else {
            assert_eq!(id, id_below);
            assert!(price < p, "below {p}: {v}");
        }
        crossed.entry(id).or_default().push(v);
    }
    // Each time means each return: between two notifications of one watch, the simulator
    // traded at or on the other side of the threshold.
    for (id, list) in &crossed {
        for pair in list.windows(2) {
            let (i, j) = (
                pair[0]["trade_id"].as_u64().unwrap(),
                pair[1]["trade_id"].as_u64().unwrap(),
            );
            assert!(j > i);
            let v = get_json(
                &http,
                &sim.proc.url(&format!(
                    "/control/truth/trades?market=spot&symbol={hot}&fromId={}&limit={}",
                    i + 1,
                    j - i - 1
                )),
            )
            .await
            .unwrap();
            let back = v["trades"].as_array().unwrap().iter().any(|t| {
                let px: Decimal = t["price"].as_str().unwrap().parse().unwrap();
                if *id == id_above { px <= p } else { px >= p }
            });
            assert!(
                back,
                "watch {id}: notified at {i} and {j} without a return across {p}"
            );
        }
    }
    println!(
        "crossings around {p}: above {}, below {}",
        crossed.get(&id_above).map_or(0, Vec::len),
        crossed.get(&id_below).map_or(0, Vec::len)
    );
    w.send(json!({"op":"list"})).await;
    let l = w.until("list", STEP, |_| true).await;
    assert_eq!(l["watches"].as_array().unwrap().len(), 2, "{l}");
    w.send(json!({"op":"unwatch","id":id_above})).await;
    assert_eq!(
        w.until("unwatched", STEP, |_| true).await["ids"],
        json!([id_above])
    );
    w.send(json!({"op":"unwatch","id":id_above})).await;
    assert_eq!(
        w.until("error", STEP, |_| true).await["code"],
        "unknown_watch"
    );
    w.send(json!({"op":"unwatch","symbol":hot.to_lowercase()}))
        .await;
    assert_eq!(
        w.until("unwatched", STEP, |_| true).await["ids"],
        json!([id_below])
    );
    w.send(json!({"op":"list"})).await;
    assert_eq!(w.until("list", STEP, |_| true).await["watches"], json!([]));
    w.send(json!({"op":"watch","symbol":"NOSUCHPAIR","above":"1"}))
        .await;
    assert_eq!(
        w.until("error", STEP, |_| true).await["code"],
        "unknown_instrument"
    );
    drop(w);

    // 4. auth failures, then the alerts channel of one user only.
    let (uid, access, refresh) = account(&http, node, "ws-alice@example.com").await;
    let (_bob, bob_access, _) = account(&http, node, "ws-bob@example.com").await;
    let mut a = Client::connect(node, "alice").await;
    a.send(json!({"op":"subscribe","channels":["alerts"]}))
        .await;
    assert_eq!(
        a.until("error", STEP, |_| true).await["code"],
        "auth_required"
    );
    let now_s = wall_ms() / 1000;
    for (what, token) in [
        (
            "forged",
            mint("another-key-another-key-another-key-0123", uid, now_s + 600),
        ),
        ("expired", mint(TEST_JWT_SECRET, uid, now_s - 3600)),
        ("refresh", refresh.clone()),
        ("garbage", "x.y.z".to_string()),
    ] {
        a.send(json!({"op":"auth","token":token})).await;
        let e = a.until("error", STEP, |_| true).await;
        assert_eq!(e["code"], "unauthorized", "{what}: {e}");
    }
    a.send(json!({"op":"subscribe","channels":["alerts"]}))
        .await;
    assert_eq!(
        a.until("error", STEP, |_| true).await["code"],
        "auth_required"
    );
    a.send(json!({"op":"auth","token":access})).await;
    let au = a.until("authenticated", STEP, |_| true).await;
    assert_eq!(au["user_id"], uid);
    a.send(json!({"op":"subscribe","channels":["alerts"]}))
        .await;
    assert_eq!(
        a.until("subscribed", STEP, |_| true).await["channels"],
        json!(["alerts"])
    );
    let mut b = Client::connect(node, "bob").await;
    b.send(json!({"op":"auth","token":bob_access})).await;
    b.until("authenticated", STEP, |_| true).await;
    b.send(json!({"op":"subscribe","channels":["alerts"]}))
        .await;
    b.until("subscribed", STEP, |_| true).await;
    // A real alert that fires at the next trade (any price is above 0.00000001).
    let r = http
        .post(node.url("/api/v1/alerts"))
        .bearer_auth(&access)
        .json(&json!({"symbol":hot,"condition":"above","threshold":"0.00000001","channels":["websocket"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let alert: Value = r.json().await.unwrap();
    let alert_id = alert["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut real = None;
    while real.is_none() && Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(500), a.ws.next()).await
        {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "alert" {
                real = Some(v);
            }
        }
    }
    let ev = match real {
        Some(v) => {
            println!("real trigger delivered: {v}");
            v
        }
        None => {
            // Not fired in time: publish a trigger the way the owner does.
            println!("no trigger within 15 s; publishing an AlertEvent");
            let ev = AlertEvent {
                user_id: uid,
                alert_id,
                trigger_id: 1,
                market: "spot".into(),
                symbol: hot.clone(),
                condition: "above".into(),
                threshold: "0.00000001".parse().unwrap(),
                trade_id: 1,
                trade_ts: wall_ms(),
                price: Decimal::ONE,
                observed: Decimal::ONE,
                triggered_at: wall_ms(),
            };
            let mut r = redis::Client::open(pricefeed_tests::redis_url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let _: i64 = redis::cmd("PUBLISH")
                .arg(Keys::new(&prefix).alert_events())
                .arg(serde_json::to_string(&ev).unwrap())
                .query_async(&mut r)
                .await
                .unwrap();
            a.until("alert", STEP, |_| true).await
        }
    };
    assert_eq!(ev["channel"], "alerts");
    assert_eq!(ev["data"]["user_id"], uid);
    assert_eq!(ev["data"]["alert_id"], alert_id);
    assert_eq!(ev["data"]["symbol"], hot);
    // Bob hears nothing of Alice's trigger.
    b.send(json!({"op":"ping"})).await;
    let bv = b.next(STEP).await;
    assert_eq!(bv["type"], "pong", "bob got {bv}");
    drop(a);
    drop(b);

    // 5. bad frames: error frames, the connection stays usable.
    let mut e = Client::connect(node, "bad").await;
    for (frame, code) in [
        ("not json".to_string(), "bad_request"),
        (r#"{"op":"dance"}"#.to_string(), "unknown_op"),
        (
            r#"{"channels":["prices:BTCUSDT"]}"#.to_string(),
            "bad_request",
        ),
        (
            r#"{"op":"subscribe","channels":"prices:BTCUSDT"}"#.to_string(),
            "bad_request",
        ),
        (
            r#"{"op":"subscribe","channels":["trades:BTCUSDT"]}"#.to_string(),
            "unknown_channel",
        ),
        (
            r#"{"op":"watch","symbol":"BTCUSDT","above":95000}"#.to_string(),
            "bad_request",
        ),
        (
            r#"{"op":"watch","symbol":"BTCUSDT","above":"-1"}"#.to_string(),
            "bad_request",
        ),
    ] {
        e.send_text(frame.clone()).await;
        let v = e.until("error", STEP, |_| true).await;
        assert_eq!(v["code"], code, "{frame}: {v}");
    }
    e.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        e.until("error", STEP, |_| true).await["code"],
        "bad_request"
    );
    e.send(json!({"op":"ping"})).await;
    assert_eq!(e.next(STEP).await["type"], "pong");
    drop(e);

    // 6. limits. Channels (5) and watches (3) per connection.
    let mut l = Client::connect(node, "limits").await;
    let spot: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("spot:"))
        .map(String::from)
        .collect();
    let mut chans: Vec<String> = Vec::new();
    for s in &spot {
        chans.push(format!("prices:{s}"));
        chans.push(format!("vwap:{s}:1m"));
    }
    assert!(chans.len() >= 6);
    l.send(json!({"op":"subscribe","channels":chans[..6]}))
        .await;
    let err = l.until("error", STEP, |_| true).await;
    assert_eq!(err["code"], "too_many_channels", "{err}");
    assert_eq!(err["channel"], chans[5]);
    l.send(json!({"op":"list"})).await;
    assert_eq!(
        l.until("list", STEP, |_| true).await["channels"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    for i in 0..4 {
        l.send(json!({"op":"watch","symbol":hot,"above":format!("{}", 1_000_000 + i)}))
            .await;
    }
    let err = l.until("error", STEP, |v| v["op"] == "watch").await;
    assert_eq!(err["code"], "too_many_watches");
    drop(l);

    // Message rate: 5/s, burst 10, 5 refusals within 10 s close with 1008.
    let mut r = Client::connect(node, "rate").await;
    for _ in 0..30 {
        r.send(json!({"op":"ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let ended = loop {
        match tokio::time::timeout(STEP, r.ws.next())
            .await
            .expect("rate: no close")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") if v["code"] == "rate_limited" => limited += 1,
                    _ => panic!("rate: {v}"),
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("rate: ended without close: {other:?}"),
        }
    };
    println!("rate: {pongs} pongs, {limited} rate_limited errors, then {ended:?}");
    assert_eq!(ended.0, 1008, "{ended:?}");
    assert!(ended.1.contains("rate"), "{ended:?}");
    assert!(
        (10..=12).contains(&pongs) && limited == 4,
        "{pongs} {limited}"
    );

    // Frame size: 1024 bytes; a larger message closes with 1009.
    let mut big = Client::connect(node, "big").await;
    big.send_text(format!(
        r#"{{"op":"subscribe","channels":["{}"]}}"#,
        "x".repeat(2000)
    ))
    .await;
    match big.ended(STEP).await {
        Ended::Closed(code, reason) => {
            assert_eq!(code, 1009, "{reason}");
            assert!(reason.contains("1024"), "{reason}");
        }
        other => panic!("big: {other:?}"),
    }
    // Far past tungstenite's own limit (4× ours) too.
    let mut huge = Client::connect(node, "huge").await;
    huge.send_text(format!(
        r#"{{"op":"subscribe","channels":["{}"]}}"#,
        "x".repeat(64_000)
    ))
    .await;
    match huge.ended(STEP).await {
        Ended::Closed(code, _) => assert_eq!(code, 1009),
        other => panic!("huge: {other:?}"),
    }

    // 7. A client that never reads is cut off; another on the same node keeps receiving.
    let mut lazy = Client::connect(node, "lazy").await;
    let all: Vec<String> = chans.iter().take(5).cloned().collect();
    lazy.send(json!({"op":"subscribe","channels":all})).await;
    let mut busy = Client::connect(node, "busy").await;
    busy.send(json!({"op":"subscribe","channels":[format!("prices:{hot}")]}))
        .await;
    busy.until("subscribed", STEP, |_| true).await;
    let dropped_before = metric(&http, node, "pricefeed_stream_closed_total", &[]).await;
    let t0 = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut updates = 0;
    let mut last_at = Instant::now();
    // The lazy client answers no ping: idle timeout (4 s) or the send timeout cuts it.
    while t0.elapsed() < Duration::from_secs(7) {
        busy.until("price", STEP, |_| true).await;
        updates += 1;
        max_gap = max_gap.max(last_at.elapsed());
        last_at = Instant::now();
    }
    println!("busy client: {updates} updates in 7 s, longest gap {max_gap:?}");
    assert!(max_gap < Duration::from_secs(2), "{max_gap:?}");
    match lazy.ended(STEP).await {
        Ended::Closed(code, reason) => {
            println!("lazy client closed: {code} {reason}");
            assert!(code == 1000 || code == 1008, "{code} {reason}");
        }
        Ended::Dropped(e) => println!("lazy client dropped: {e}"),
    }
    let cut = |http: &reqwest::Client| {
        let http = http.clone();
        async move {
            metric(
                &http,
                node,
                "pricefeed_stream_closed_total",
                &["reason=\"idle\""],
            )
            .await
                + metric(
                    &http,
                    node,
                    "pricefeed_stream_closed_total",
                    &["reason=\"slow\""],
                )
                .await
        }
    };
    assert!(
        pricefeed_tests::wait_for(STEP, || async { cut(&http).await >= 1.0 })
            .await
            .is_ok(),
        "the lazy client is counted as cut off"
    );
    assert!(metric(&http, node, "pricefeed_stream_closed_total", &[]).await > dropped_before);
    let gauge = metric(&http, node, "pricefeed_stream_connections", &[]).await;
    assert!(gauge >= 1.0, "busy is connected: {gauge}");
    drop(busy);

    // The route is in the OpenAPI document (101, with the protocol); a plain GET is a 400 problem.
    let spec = get_json(&http, &nodes[other].url("/api/v1/openapi.json"))
        .await
        .unwrap();
    let op = &spec["paths"]["/api/v1/stream"]["get"];
    assert!(op["responses"].get("101").is_some(), "{op}");
    assert!(
        op["description"]
            .as_str()
            .unwrap_or_default()
            .contains("\"op\":\"subscribe\""),
        "{op}"
    );
    let r = http
        .get(nodes[other].url("/api/v1/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // 8. SIGTERM: every client gets 1001, the node exits cleanly.
    let mut clients = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let mut s = Client::connect(&nodes[other], name).await;
        s.send(json!({"op":"subscribe","channels":[format!("prices:{hot}")]}))
            .await;
        s.until("subscribed", STEP, |_| true).await;
        clients.push(s);
    }
    pricefeed_tests::signal(nodes[other].child.id(), "TERM");
    for s in &mut clients {
        match s.ended(STEP).await {
            Ended::Closed(code, reason) => assert_eq!(code, 1001, "{}: {reason}", s.name),
            other => panic!("{}: {other:?}", s.name),
        }
    }
    let st = nodes[other]
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(st.success(), "node exit {st}");
}
