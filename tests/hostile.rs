//! Hostile clients against a real node (`docs/reliability.md`, "Hostile input"): every refusal
//! is a clear answer (problem+json, or an error frame then a close code on the WebSocket), the
//! refused request changes nothing, and the node keeps serving everyone else.
//!
//! - an oversized body: 413 problem+json (`node.limits.max_body_bytes`);
//! - an oversized WebSocket message: a `too_big` error frame, then close 1009;
//! - slowloris: connections trickling a request head, or sending nothing, are closed after
//!   `node.http.header_read_timeout_ms`, while ordinary requests keep being answered;
//! - per-address and per-user rate limits: 429 problem+json with `Retry-After`, the address
//!   taken from `X-Forwarded-For` only behind a trusted proxy; registration and alert writes
//!   have their own budgets.
//!
//! Each test sets small limits so that it reaches them with a handful of requests; the defaults
//! are in `config/default.toml`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pricefeed_tests::{
    Proc, Sim, base_env, fresh_database, http_client, metric, migrate, seed_from_catalogue,
    sign_up, start_nodes, wait_for,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const READY: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery staple";

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

async fn node_with(extra: &[(&str, &str)]) -> Proc {
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(extra.iter().map(|(k, v)| kv(k, v)));
    migrate(&env, READY).await;
    start_nodes(&["hostile"], &env).await.remove(0)
}

/// A response's status, content type, `Retry-After` and body.
async fn answer(res: reqwest::Response) -> (u16, String, Option<u64>, Value) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = res.json().await.unwrap_or(Value::Null);
    (status, ct, retry, body)
}

#[tokio::test]
async fn oversized_bodies_get_413_problem_and_change_nothing() {
    let node = node_with(&[("PRICEFEED__NODE__LIMITS__MAX_BODY_BYTES", "2048")]).await;
    let http = http_client(STEP);
    let token = sign_up(&http, &node, "small@example.com", PASSWORD).await;
    let padded = json!({"email": "big@example.com", "password": PASSWORD, "x": "y".repeat(4000)});
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/token",
        "/api/v1/alerts",
    ] {
        let res = http
            .post(node.url(path))
            .bearer_auth(&token)
            .json(&padded)
            .send()
            .await
            .unwrap();
        let (status, ct, _, body) = answer(res).await;
        assert_eq!(status, 413, "{path}: {body}");
        assert_eq!(ct, "application/problem+json", "{path}");
        assert_eq!(body["status"], 413, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("node.limits.max_body_bytes"),
            "{body}"
        );
    }
    // Nothing was registered: the same email registers now, with a body under the limit.
    let res = http
        .post(node.url("/api/v1/auth/register"))
        .json(&json!({"email": "big@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // The document says so.
    let spec: Value = http
        .get(node.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reg = &spec["paths"]["/api/v1/auth/register"]["post"]["responses"];
    assert!(
        reg.get("413").is_some() && reg.get("429").is_some(),
        "{reg}"
    );
    let get = &spec["paths"]["/api/v1/prices/{symbol}"]["get"]["responses"];
    assert!(
        get.get("429").is_some() && get.get("413").is_none(),
        "{get}"
    );
}

#[tokio::test]
async fn oversized_websocket_messages_get_an_error_frame_and_1009() {
    let node = node_with(&[("PRICEFEED__NODE__STREAM__MAX_FRAME_BYTES", "1024")]).await;
    let url = node.url("/api/v1/stream").replace("http://", "ws://");
    // Above our limit, and far above tungstenite's own (4× ours): both answer the same way.
    for size in [2_000, 64_000] {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let msg = json!({"op": "subscribe", "channels": ["x".repeat(size)]}).to_string();
        ws.send(Message::text(msg)).await.unwrap();
        let mut error = None;
        let close = tokio::time::timeout(STEP, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v["type"] == "error" {
                            error = Some(v);
                        }
                    }
                    Some(Ok(Message::Close(f))) => break f,
                    Some(Ok(_)) => {}
                    other => panic!("{size}: ended without a close frame: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{size}: no close within {STEP:?}"));
        let f = close.expect("a close frame with a code");
        assert_eq!(u16::from(f.code), 1009, "{size}: {f:?}");
        let error = error.unwrap_or_else(|| panic!("{size}: no error frame before the close"));
        assert_eq!(error["code"], "too_big", "{error}");
        assert!(
            error["message"].as_str().unwrap().contains("1024"),
            "{error}"
        );
    }
    // The node is fine, and a well-behaved client still gets its answer.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(r#"{"op":"ping"}"#)).await.unwrap();
    let pong = tokio::time::timeout(STEP, ws.next()).await.unwrap();
    assert!(
        matches!(&pong, Some(Ok(Message::Text(t))) if t.as_str().contains("pong")),
        "{pong:?}"
    );
    let closed = metric(
        &http_client(STEP),
        &node,
        "pricefeed_stream_closed_total",
        &["reason=\"too_big\""],
    )
    .await;
    assert_eq!(closed, 2.0);
}

/// Reads until the server closes (EOF or reset) or `limit` passes; whether it closed.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_off_and_do_not_hold_the_server() {
    const SLOW: usize = 300;
    const SILENT: usize = 100;
    let timeout_ms = 1_500;
    let node = node_with(&[(
        "PRICEFEED__NODE__HTTP__HEADER_READ_TIMEOUT_MS",
        &timeout_ms.to_string(),
    )])
    .await;
    let addr = node.addr.clone().unwrap();
    let opened = Instant::now();
    // Slow clients: a request head one byte every 200 ms, forever. Silent ones: nothing.
    let mut slow = Vec::new();
    for i in 0..SLOW + SILENT {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i < SLOW {
            s.write_all(b"G").await.unwrap();
        }
        slow.push(s);
    }
    let (slow_conns, silent) = slow.split_at_mut(SLOW);
    let drip = async {
        let head = b"ET /api/v1/cluster HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut cut = vec![false; slow_conns.len()];
        for i in 0.. {
            let b = [*head.get(i).unwrap_or(&b'a')];
            for (s, cut) in slow_conns.iter_mut().zip(cut.iter_mut()) {
                if !*cut && s.write_all(&b).await.is_err() {
                    *cut = true;
                }
            }
            if cut.iter().all(|c| *c) {
                return i;
            }
            // Bounded: the timeout is 1.5 s, so 30 s of dripping means it did not act.
            assert!(i < 150, "slow connections still open after {i} bytes");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    };
    // Meanwhile ordinary requests are answered, each within the client's 5 s timeout. A new
    // connection each: a pooled one idle past the 1.5 s header timeout (a stall of this loaded
    // machine) could be closed by the server just as a request goes out on it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let normal = async {
        let mut worst = Duration::ZERO;
        let mut n = 0;
        while opened.elapsed() < Duration::from_millis(3 * timeout_ms) {
            let t = Instant::now();
            let r = http.get(node.url("/api/v1/underlyings")).send().await;
            let r = r.unwrap_or_else(|e| panic!("a normal request failed under slowloris: {e}"));
            assert_eq!(r.status(), 200);
            worst = worst.max(t.elapsed());
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (n, worst)
    };
    let (bytes, (n, worst)) = tokio::join!(drip, normal);
    println!(
        "{SLOW} slow connections cut off after {bytes} bytes ({:?}); {n} normal requests, slowest {worst:?}",
        opened.elapsed()
    );
    for s in silent.iter_mut() {
        assert!(
            closed_within(s, STEP).await,
            "a silent connection was not closed"
        );
    }
    let timeouts = metric(&http, &node, "pricefeed_server_header_timeouts_total", &[]).await;
    assert!(timeouts >= (SLOW + SILENT) as f64, "{timeouts}");
    // A kept-alive connection that goes idle after its answer is closed too.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut idle, STEP).await, "idle keep-alive kept");
}

#[tokio::test]
async fn per_address_limits_answer_429_and_trust_forwarded_for_only_from_proxies() {
    let limits = [
        ("PRICEFEED__NODE__LIMITS__PER_ADDRESS_PER_SEC", "1"),
        ("PRICEFEED__NODE__LIMITS__PER_ADDRESS_BURST", "10"),
    ];
    let direct = node_with(&limits).await;
    let mut proxied = limits.to_vec();
    proxied.push((
        "PRICEFEED__NODE__LIMITS__TRUSTED_PROXIES",
        r#"["127.0.0.0/8"]"#,
    ));
    let behind_proxy = node_with(&proxied).await;
    let http = http_client(STEP);

    // Sends up to `n` requests one after the other, stopping at the first 429 when
    // `until_refused`; the statuses and the last 429. Stopping there keeps the test independent
    // of how fast the machine answers: the budget refills at one request a second, so a fixed
    // count of requests would or would not reach the limit depending on the load.
    async fn burst(
        http: &reqwest::Client,
        url: &str,
        xff: Option<&str>,
        n: usize,
        until_refused: bool,
    ) -> (Vec<u16>, Option<(String, Option<u64>, Value)>) {
        let mut statuses = Vec::new();
        let mut refused = None;
        for _ in 0..n {
            let mut req = http.get(url);
            if let Some(x) = xff {
                req = req.header("x-forwarded-for", x);
            }
            let (status, ct, retry, body) = answer(req.send().await.unwrap()).await;
            statuses.push(status);
            if status == 429 {
                refused = Some((ct, retry, body));
                if until_refused {
                    break;
                }
            }
        }
        (statuses, refused)
    }

    let url = direct.url("/api/v1/underlyings");
    // A forged X-Forwarded-For from a client does not buy a fresh budget.
    // The burst of 10 passes, then one a second: a 429 comes unless every request took a second.
    let (statuses, refused) = burst(&http, &url, Some("198.51.100.1"), 200, true).await;
    assert!(
        statuses.len() > 10 && statuses[..10].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    let (ct, retry, body) = refused.expect("a 429");
    // Another forged address, the same budget: refused again well before a fresh burst of 10.
    let (statuses, again) = burst(&http, &url, Some("198.51.100.2"), 10, true).await;
    assert!(again.is_some(), "{statuses:?}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["status"], 429);
    assert!(
        body["detail"].as_str().unwrap().contains("127.0.0.1"),
        "{body}"
    );
    // One request a second: the wait, rounded up to whole seconds, is about one second.
    assert!(
        retry.is_some_and(|s| (1..=2).contains(&s)),
        "{retry:?} {body}"
    );
    // Probes and scrapes are never limited.
    for path in ["/livez", "/readyz", "/metrics"] {
        let r = http.get(direct.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // After Retry-After the address is served again.
    wait_for(STEP, || async {
        http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await
    .expect("served again after the wait");
    let limited = metric(
        &http,
        &direct,
        "pricefeed_rate_limited_total",
        &["scope=\"address\""],
    )
    .await;
    assert!(limited >= 2.0, "{limited}");

    // Behind a trusted proxy each forwarded client has its own budget.
    let url = behind_proxy.url("/api/v1/underlyings");
    let (a, _) = burst(&http, &url, Some("203.0.113.7"), 200, true).await;
    assert!(a.contains(&429), "{a:?}");
    // A fresh burst of 10 for another forwarded client (5 of them, well inside it).
    let (b, _) = burst(&http, &url, Some("6.6.6.6, 203.0.113.8"), 5, false).await;
    assert!(b.iter().all(|s| *s == 200), "{b:?}");
    // The client-written entry left of the proxy's is not the key: still 203.0.113.7's spent
    // budget, refused again well before a fresh burst of 10 would be.
    let (c, refused) = burst(&http, &url, Some("203.0.113.99, 203.0.113.7"), 10, true).await;
    let (_, _, body) = refused.unwrap_or_else(|| panic!("{c:?}"));
    assert!(
        body["detail"].as_str().unwrap().contains("203.0.113.7"),
        "{body}"
    );
}

#[tokio::test]
async fn per_user_limits_answer_429_and_refused_writes_change_nothing() {
    let http = http_client(STEP);
    let sim = Sim::start_small(&[("UNDERLYINGS", "1"), ("HOT_SYMBOLS", "1")]).await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(
        [
            ("PRICEFEED__NODE__LIMITS__PER_USER_PER_SEC", "1"),
            ("PRICEFEED__NODE__LIMITS__PER_USER_BURST", "12"),
            ("PRICEFEED__NODE__LIMITS__PER_USER_WRITES_PER_MIN", "1"),
            ("PRICEFEED__NODE__LIMITS__PER_USER_WRITES_BURST", "3"),
            ("PRICEFEED__AUTH__REGISTER_PER_ADDRESS_PER_MIN", "3"),
        ]
        .map(|(k, v)| kv(k, v)),
    );
    migrate(&env, READY).await;
    seed_from_catalogue(&http, &sim, &db).await;
    let node = start_nodes(&["hostile"], &env).await.remove(0);

    let alice = sign_up(&http, &node, "alice@example.com", PASSWORD).await;
    let bob = sign_up(&http, &node, "bob@example.com", PASSWORD).await;
    // Alert writes: 3 at once, then 429 with a wait of about a minute.
    let new = json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "100000000"});
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        let res = http
            .post(node.url("/api/v1/alerts"))
            .bearer_auth(&alice)
            .json(&new)
            .send()
            .await
            .unwrap();
        let (status, ct, retry, body) = answer(res).await;
        if status == 429 {
            refused = Some((ct, retry, body));
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    let (ct, retry, body) = refused.unwrap();
    assert_eq!(ct, "application/problem+json");
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
    assert!(
        body["detail"].as_str().unwrap().contains("per minute"),
        "{body}"
    );
    // The refused writes created nothing; reads still pass; the other user is unaffected.
    let mine: Value = http
        .get(node.url("/api/v1/alerts"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 3, "{mine}");
    let res = http
        .post(node.url("/api/v1/alerts"))
        .bearer_auth(&bob)
        .json(&new)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // Reads: a burst of 12 per user (one went to the list above), then 429.
    let mut reads = Vec::new();
    let mut refused = None;
    // Until the first 429 (bounded): the budget refills by one a second, however slow.
    while refused.is_none() && reads.len() < 100 {
        let r = http
            .get(node.url("/api/v1/alerts"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        let (status, ct, retry, body) = answer(r).await;
        if status == 429 {
            refused = Some((ct, retry, body));
        }
        reads.push(status);
    }
    // The POSTs above counted too: some reads pass, then 429.
    assert!(reads[0] == 200 && reads.contains(&429), "{reads:?}");
    let (ct, retry, body) = refused.unwrap();
    assert_eq!(ct, "application/problem+json");
    assert!(
        retry.is_some_and(|s| (1..=2).contains(&s)),
        "{retry:?} {body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("for this user"),
        "{body}"
    );
    // Bob, from the same address, is not held back by alice's budget.
    let r = http
        .get(node.url("/api/v1/alerts"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Alice is served again once her budget refills (one request a second).
    wait_for(STEP, || async {
        http.get(node.url("/api/v1/alerts"))
            .bearer_auth(&alice)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
    .expect("alice served again after Retry-After");
    let limited = metric(
        &http,
        &node,
        "pricefeed_rate_limited_total",
        &["scope=\"user\""],
    )
    .await;
    assert!(limited >= 1.0, "{limited}");
    // Registration: 3 per address per minute window (alice and bob were two of them); six more
    // attempts reach a 429 even if a minute boundary falls between them.
    let mut refused = None;
    for i in 0..6 {
        let email = format!("u{i}@example.com");
        let r = http
            .post(node.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        let (status, ct, retry, body) = answer(r).await;
        if status == 429 {
            assert_eq!(ct, "application/problem+json");
            assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
            refused = Some((email, body));
            break;
        }
        assert_eq!(status, 201, "{body}");
    }
    let (email, body) = refused.expect("a registration refused with 429");
    assert!(
        body["detail"].as_str().unwrap().contains("registrations"),
        "{body}"
    );
    // The refused registration created no account: its login fails like an unknown email's.
    let r = http
        .post(node.url("/api/v1/auth/token"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    drop(sim);
}
