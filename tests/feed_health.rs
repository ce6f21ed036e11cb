//! End-to-end feed-health watch: `pricefeed-sim`, one scheduler and two nodes against real
//! Postgres and Redis. Two instruments, one per node: spot A (to be stalled) and the USD-M
//! perpetual of another underlying B (the control). The nodes' own stall watchdog is set to ten
//! minutes, so only the scheduler (`feed_stale_after_ms` = 1500) can notice the stall.
//!
//! 1. A silent stall of symbol A in the simulator (socket open, pings flowing) gets a reconnect
//!    order on A's owner's channel, for its spot connection, within a deadline; the owner
//!    reconnects (`pricefeed_feed_disconnects_total{reason="order"}`); the other node gets none.
//! 2. Clearing the stall, A's price flows again.
//! 3. Malformed, misaddressed and stale orders published by hand are ignored (counted), the
//!    node stays ready, does not reconnect, and keeps pricing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pricefeed_store::protocol::Keys;
use pricefeed_tests::{
    Proc, SMALL_CATALOGUE, Sim, base_env, fresh_database, get_json, http_client, key_prefix,
    metric, migrate, start_nodes, start_schedulers,
};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);
/// Stall → order: 1.5 s threshold + ≤ 1 s hash rewrite + one check period, with slack for a
/// loaded 2-core CI box.
const ORDER_DEADLINE: Duration = Duration::from_secs(10);

/// The simulator's small catalogue: two underlyings, both hot.
const SIM: [(&str, &str); 2] = [("UNDERLYINGS", "2"), ("HOT_SYMBOLS", "2")];

/// Inserts spot A (trading) and the perpetual of B, whose spot pair is stored halted so that
/// only the perpetual is assigned; returns (A, B).
async fn seed(http: &reqwest::Client, sim: &Sim, db: &str) -> (String, String) {
    let cat = sim.catalogue(http).await;
    let list = cat["instruments"].as_array().unwrap();
    let mut spots: Vec<&Value> = list
        .iter()
        .filter(|i| i["market"] == "spot" && i["status"] == "TRADING")
        .collect();
    spots.sort_by_key(|i| i["symbol"].as_str().unwrap().to_string());
    assert!(spots.len() >= 2, "catalogue: {cat}");
    let (a, b) = (spots[0], spots[1]);
    let perp = list
        .iter()
        .find(|i| i["market"] == "futures" && i["kind"] == "perpetual" && i["pair"] == b["symbol"])
        .unwrap_or_else(|| panic!("no perpetual for {}", b["symbol"]));
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    for (u, status) in [(a, "TRADING"), (b, "HALT")] {
        sqlx::query(
            "INSERT INTO underlyings (symbol, base_asset, quote_asset, status) VALUES ($1, $2, $3, $4)",
        )
        .bind(u["symbol"].as_str().unwrap())
        .bind(u["base"].as_str().unwrap())
        .bind(u["quote"].as_str().unwrap())
        .bind(status)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO derivatives (symbol, underlying_id, kind, market, status) \
         SELECT $1, id, 'perpetual'::derivative_kind, 'usdm', 'TRADING' FROM underlyings WHERE symbol = $2",
    )
    .bind(perp["symbol"].as_str().unwrap())
    .bind(b["symbol"].as_str().unwrap())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    (
        a["symbol"].as_str().unwrap().to_string(),
        perp["symbol"].as_str().unwrap().to_string(),
    )
}

/// A node's feed-health hash as the scheduler reads it, at the Redis clock.
#[derive(Debug)]
struct FeedView {
    now_ms: i64,
    /// Connection → (last frame ms, mean gap ms); `(0, -1)` while not connected.
    conns: BTreeMap<String, (i64, i64)>,
}

async fn feed_view(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    node: &str,
) -> FeedView {
    let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(Keys::new(prefix).feed(node))
        .query_async(redis)
        .await
        .unwrap_or_default();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await.unwrap();
    // Fields are `last_frame_ms,mean_gap_ms`, or `0` while not connected.
    let conns = raw
        .into_iter()
        .map(|(conn, v)| {
            let (last, gap) = v.split_once(',').unwrap_or((&v, "-1"));
            (conn, (last.parse().unwrap(), gap.parse().unwrap()))
        })
        .collect();
    FeedView {
        now_ms: secs * 1000 + micros / 1000,
        conns,
    }
}

/// Latest trade id of `key` in the Redis price hash.
async fn price_id(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    key: &str,
) -> Option<u64> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(Keys::new(prefix).prices())
        .arg(key)
        .query_async(redis)
        .await
        .ok()?;
    let d: Value = serde_json::from_str(&raw?).ok()?;
    d["trade_id"].as_u64()
}

/// Waits until `key`'s stored trade id is above `after`; returns it.
async fn wait_price_above(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    key: &str,
    after: u64,
    deadline: Duration,
) -> u64 {
    let until = Instant::now() + deadline;
    loop {
        if let Some(id) = price_id(redis, prefix, key).await
            && id > after
        {
            return id;
        }
        assert!(
            Instant::now() < until,
            "{key} not priced past {after} within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which node ingests `key` (from the nodes' ingest views).
async fn owner_of(http: &reqwest::Client, nodes: &[Proc], key: &str) -> Option<usize> {
    for (i, n) in nodes.iter().enumerate() {
        let v = get_json(http, &n.url("/api/v1/cluster/ingest"))
            .await
            .ok()?;
        if v["instruments"]
            .as_array()?
            .iter()
            .any(|x| x["key"] == key && x["live"] == true)
        {
            return Some(i);
        }
    }
    None
}

/// One test's world: the simulator, a fresh database seeded with spot A and the perpetual of B,
/// and the environment for scheduler and nodes (WebSocket only: REST stays pointing nowhere, so
/// no sync replaces the seeded instruments; the nodes' own stall watchdog off, so only the
/// scheduler may notice a stall), plus `extra` settings.
struct World {
    http: reqwest::Client,
    sim: Sim,
    env: Vec<(String, String)>,
    prefix: String,
    sym_a: String,
    sym_b: String,
}

async fn world(extra: &[(&str, &str)]) -> World {
    world_with_sim(&[], extra).await
}

/// [`world`] with simulator settings on top of the small two-underlying catalogue.
async fn world_with_sim(sim_extra: &[(&str, &str)], extra: &[(&str, &str)]) -> World {
    let http = http_client(Duration::from_secs(5));
    let sim = Sim::start(&[&SMALL_CATALOGUE[..], &SIM, sim_extra].concat()).await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.ws_env());
    env.push((
        "PRICEFEED__NODE__FEED__STALL_TIMEOUT_MS".into(),
        "600000".into(),
    ));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let (sym_a, sym_b) = seed(&http, &sim, &db).await;
    World {
        http,
        sim,
        env,
        prefix,
        sym_a,
        sym_b,
    }
}

#[tokio::test]
async fn scheduler_orders_a_silent_connection_to_reconnect() {
    let World {
        http,
        sim,
        env,
        prefix,
        sym_a,
        sym_b,
    } = world(&[
        ("PRICEFEED__SCHEDULER__FEED_STALE_AFTER_MS", "1500"),
        ("PRICEFEED__SCHEDULER__FEED_CHECK_MS", "250"),
    ])
    .await;
    let control = sim.port("control");
    let (key_a, key_b) = (format!("spot:{sym_a}"), format!("usdm:{sym_b}"));
    println!("stalled {key_a}, control {key_b}");

    let sched = start_schedulers(&["sched"], &env).await.remove(0);
    let nodes = start_nodes(&["n1", "n2"], &env).await;
    let client = redis::Client::open(pricefeed_tests::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    // Every order on any node's channel, with its arrival time.
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.psubscribe(Keys::new(&prefix).orders("*")).await.unwrap();
    let (otx, mut orx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String, Value)>();
    tokio::spawn(async move {
        let mut s = ps.into_on_message();
        while let Some(m) = s.next().await {
            let payload: String = m.get_payload().unwrap_or_default();
            let v = serde_json::from_str(&payload).unwrap_or(Value::Null);
            if otx
                .send((Instant::now(), m.get_channel_name().to_string(), v))
                .is_err()
            {
                return;
            }
        }
    });

    // Both instruments live, one per node, and priced.
    let until = Instant::now() + READY;
    let (owner, other) = loop {
        if let (Some(a), Some(b)) = (
            owner_of(&http, &nodes, &key_a).await,
            owner_of(&http, &nodes, &key_b).await,
        ) && a != b
        {
            break (a, b);
        }
        assert!(
            Instant::now() < until,
            "instruments not split over the nodes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let owner_id = ["n1", "n2"][owner];
    let other_id = ["n1", "n2"][other];
    let id_a = wait_price_above(&mut redis, &prefix, &key_a, 0, READY).await;
    wait_price_above(&mut redis, &prefix, &key_b, 0, READY).await;
    // The scheduler judges silence against the connection's own trade rate, which it learns from
    // the node once the session has seen ten trade arrivals (before that it allows 60 s): wait
    // for it,
    // as a stall right after a (re)connect is not what this test is about.
    let until = Instant::now() + READY;
    loop {
        let feed = feed_view(&mut redis, &prefix, owner_id).await;
        let known = feed
            .conns
            .iter()
            .any(|(conn, (_, gap))| conn.starts_with("spot:") && *gap >= 0);
        if known {
            break;
        }
        assert!(Instant::now() < until, "no trade rate published: {feed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Healthy feeds: no order at all so far.
    if let Ok((_, ch, v)) = orx.try_recv() {
        panic!("order on {ch} while every feed was healthy: {v}");
    }
    let base_owner = metric(
        &http,
        &nodes[owner],
        "pricefeed_feed_disconnects_total",
        &["reason=\"order\""],
    )
    .await;
    assert_eq!(base_owner, 0.0, "order reconnects before any stall");

    // 1. Stall symbol A: its connection goes silent (pings still flow).
    let stalled_at = Instant::now();
    let r = http
        .put(format!("http://{control}/control/faults/symbols/{sym_a}"))
        .json(&serde_json::json!({"stall": 1.0, "stall_ms": 600000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let left = ORDER_DEADLINE.saturating_sub(stalled_at.elapsed());
    let (ordered_at, order) = match tokio::time::timeout(left, orx.recv()).await {
        Ok(Some((at, ch, v))) => {
            assert_eq!(
                ch,
                Keys::new(&prefix).orders(owner_id),
                "order on the wrong channel: {v}"
            );
            (at, v)
        }
        Ok(None) => panic!("order listener ended"),
        Err(_) => {
            let feed = feed_view(&mut redis, &prefix, owner_id).await;
            panic!(
                "no reconnect order within {ORDER_DEADLINE:?} of the stall\n\
                 {owner_id} feed: {feed:?}\nscheduler:\n{}\n{owner_id}:\n{}",
                sched.log_tail(),
                nodes[owner].log_tail()
            )
        }
    };
    assert_eq!(order["order"], "reconnect", "{order}");
    assert_eq!(order["node_id"], owner_id, "{order}");
    assert!(
        order["conn_id"].as_str().unwrap().starts_with("spot:"),
        "{order}"
    );
    assert!(order["term"].as_u64().unwrap() >= 1, "{order}");
    assert!(order["issued_at_ms"].as_i64().unwrap() > 0, "{order}");
    assert!(order["reason"].as_str().is_some(), "{order}");
    let term = order["term"].as_u64().unwrap();

    // The owner reconnects on the order.
    let until = Instant::now() + ORDER_DEADLINE;
    loop {
        let n = metric(
            &http,
            &nodes[owner],
            "pricefeed_feed_disconnects_total",
            &["reason=\"order\"", "market=\"spot\""],
        )
        .await;
        if n >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{owner_id} did not reconnect on the order:\n{}",
            nodes[owner].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reconnected_at = Instant::now();
    println!(
        "stall → order {} ms, stall → reconnect observed {} ms",
        ordered_at.duration_since(stalled_at).as_millis(),
        reconnected_at.duration_since(stalled_at).as_millis()
    );
    assert!(
        metric(
            &http,
            &sched,
            "pricefeed_reconnect_orders_total",
            &[&format!("node=\"{owner_id}\"")]
        )
        .await
            >= 1.0
    );

    // 2. Clear the stall: A is priced again.
    let r = http
        .delete(format!("http://{control}/control/faults/symbols/{sym_a}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let resumed = wait_price_above(&mut redis, &prefix, &key_a, id_a, READY).await;
    println!("{key_a} priced again: trade id {id_a} → {resumed}");

    // No order went to the healthy node, and at most one per window to the owner (no storm):
    // the stall lasted well under 10 windows of 1.5 s.
    let mut per_conn: BTreeMap<String, usize> = BTreeMap::new();
    while let Ok((_, ch, v)) = orx.try_recv() {
        assert_ne!(ch, Keys::new(&prefix).orders(other_id), "{v}");
        *per_conn.entry(v["conn_id"].to_string()).or_default() += 1;
    }
    let window_bound = (stalled_at.elapsed().as_millis() / 1500 + 1) as usize;
    for (conn, n) in &per_conn {
        assert!(
            *n <= window_bound,
            "{n} orders for {conn} in {window_bound} windows"
        );
    }
    assert_eq!(
        metric(
            &http,
            &nodes[other],
            "pricefeed_feed_disconnects_total",
            &["reason=\"order\""]
        )
        .await,
        0.0
    );

    // Wait until the owner's feed hash shows A's connection fresh, so the scheduler has no more
    // reason to order anything. A check that read the hash just before may still send one: those
    // are seen by this test's own subscription and allowed for below.
    let until = Instant::now() + READY;
    loop {
        let feed = feed_view(&mut redis, &prefix, owner_id).await;
        if !feed.conns.is_empty()
            && feed
                .conns
                .values()
                .all(|(last, _)| feed.now_ms - last < 1000)
        {
            break;
        }
        assert!(Instant::now() < until, "feed hash never fresh: {feed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = metric(
        &http,
        &nodes[owner],
        "pricefeed_feed_disconnects_total",
        &["reason=\"order\""],
    )
    .await;

    // 3. Hand-made bad orders: garbage, wrong shape, another node's id, an unknown connection,
    //    an older term. None may cut a connection or hurt the node.
    let conn_a = order["conn_id"].as_str().unwrap().to_string();
    let channel = Keys::new(&prefix).orders(owner_id);
    let bad = [
        "not json at all".to_string(),
        r#"{"order":"reconnect"}"#.to_string(),
        serde_json::json!({"order":"explode","node_id":owner_id,"conn_id":conn_a,"term":term,"issued_at_ms":1,"reason":"x"}).to_string(),
        serde_json::json!({"order":"reconnect","node_id":other_id,"conn_id":conn_a,"term":term,"issued_at_ms":1,"reason":"x"}).to_string(),
        serde_json::json!({"order":"reconnect","node_id":owner_id,"conn_id":"spot:999","term":term,"issued_at_ms":1,"reason":"x"}).to_string(),
        serde_json::json!({"order":"reconnect","node_id":owner_id,"conn_id":conn_a,"term":term - 1,"issued_at_ms":1,"reason":"x"}).to_string(),
    ];
    for b in &bad {
        let n: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(b)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(n, 2, "the node and this test should both hear {channel}");
    }
    let until = Instant::now() + ORDER_DEADLINE;
    loop {
        let counted = metric(&http, &nodes[owner], "pricefeed_feed_orders_total", &[]).await;
        let applied = metric(
            &http,
            &nodes[owner],
            "pricefeed_feed_orders_total",
            &["result=\"applied\""],
        )
        .await;
        // Everything counted except the real orders of phase 1.
        if counted - applied >= bad.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < until,
            "bad orders not all counted ({counted} counted, {applied} applied)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (label, at_least) in [
        ("malformed", 3.0),
        ("other_node", 1.0),
        ("unknown_conn", 1.0),
        ("stale_term", 1.0),
    ] {
        let n = metric(
            &http,
            &nodes[owner],
            "pricefeed_feed_orders_total",
            &[&format!("result=\"{label}\"")],
        )
        .await;
        assert!(n >= at_least, "result={label}: {n}");
    }
    let after = metric(
        &http,
        &nodes[owner],
        "pricefeed_feed_disconnects_total",
        &["reason=\"order\""],
    )
    .await;
    let r = http.get(nodes[owner].url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let now_id = price_id(&mut redis, &prefix, &key_a).await.unwrap();
    wait_price_above(&mut redis, &prefix, &key_a, now_id, READY).await;
    // Only scheduler orders (not ours) may have cut a connection since the baseline.
    let mut late = 0.0;
    while let Ok((_, _, v)) = orx.try_recv() {
        if !bad
            .iter()
            .any(|b| serde_json::from_str::<Value>(b).unwrap_or(Value::Null) == v)
        {
            late += 1.0;
        }
    }
    assert!(
        after - before <= late,
        "a bad order cut a connection ({before} → {after}, {late} late scheduler orders)"
    );
}

/// Reconnect orders the scheduler sent (to anyone), and those `node` obeyed.
async fn orders_sent_and_obeyed(http: &reqwest::Client, sched: &Proc, node: &Proc) -> (f64, f64) {
    let sent = metric(http, sched, "pricefeed_reconnect_orders_total", &[]).await;
    let obeyed = metric(
        http,
        node,
        "pricefeed_feed_disconnects_total",
        &["reason=\"order\""],
    )
    .await;
    (sent, obeyed)
}

/// A connection the node is already re-establishing (cut by the exchange, now waiting out its
/// backoff) is not silent in the scheduler's sense: an order would cut the backoff short and,
/// under a flapping feed, turn it into a reconnect storm. With every event cutting the
/// connection and a backoff longer than the staleness threshold, no order may be sent.
#[tokio::test]
async fn a_connection_waiting_out_its_backoff_gets_no_order() {
    let World {
        http,
        sim,
        env,
        prefix,
        sym_a,
        ..
    } = world(&[
        ("PRICEFEED__NODE__FEED__RECONNECT_BACKOFF_MIN_MS", "3000"),
        ("PRICEFEED__NODE__FEED__RECONNECT_BACKOFF_MAX_MS", "6000"),
        ("PRICEFEED__SCHEDULER__FEED_STALE_AFTER_MS", "1000"),
        ("PRICEFEED__SCHEDULER__FEED_CHECK_MS", "250"),
    ])
    .await;
    let control = sim.port("control");
    let key_a = format!("spot:{sym_a}");
    let sched = start_schedulers(&["sched"], &env).await.remove(0);
    let nodes = start_nodes(&["n1"], &env).await;
    let client = redis::Client::open(pricefeed_tests::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let id_a = wait_price_above(&mut redis, &prefix, &key_a, 0, READY).await;

    // Every event now cuts its connection: the node flaps between short sessions and backoffs
    // of 1.5–6 s, each longer than the 1 s staleness threshold.
    let r = http
        .put(format!("http://{control}/control/faults/global"))
        .json(&serde_json::json!({"disconnect": 1.0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let t0 = Instant::now();
    let mut cuts = 0.0;
    while t0.elapsed() < Duration::from_secs(8) {
        cuts = metric(
            &http,
            &nodes[0],
            "pricefeed_feed_disconnects_total",
            &["reason=\"error\""],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        cuts >= 2.0,
        "the fault did not make the node flap ({cuts} cuts)"
    );
    let (orders, obeyed) = orders_sent_and_obeyed(&http, &sched, &nodes[0]).await;
    println!("{cuts} cuts by the exchange in 8 s; scheduler orders {orders}, obeyed {obeyed}");
    assert_eq!(
        (orders, obeyed),
        (0.0, 0.0),
        "orders for a connection in backoff:\n{}",
        sched.log_tail()
    );

    // Faults off: the node's own reconnect brings the price back.
    let r = http
        .delete(format!("http://{control}/control/faults"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_price_above(&mut redis, &prefix, &key_a, id_a, READY).await;
}

/// A connection whose instruments trade only now and then is quiet, not silent: the scheduler
/// gives it ten of its own mean gaps between trade arrivals (60 s while the node has seen too
/// few to tell) instead of the bare threshold, so it is not reconnected every few minutes. Here
/// the threshold is 1 s and the one instrument trades about twice a second in clumps (the fills
/// of one taker order arrive together): the silence passes 1 s again and again, the node learns
/// the rate within seconds, and no order may be sent.
#[tokio::test]
async fn a_quiet_connection_is_not_churned() {
    // `_sim` keeps the simulator process alive for the whole test (`..` would drop it at once).
    let World {
        env,
        prefix,
        sim: _sim,
        ..
    } = world_with_sim(
        &[("HOT_SYMBOLS", "0"), ("TAIL_RATE_PER_MIN", "120.0")],
        &[
            ("PRICEFEED__SCHEDULER__FEED_STALE_AFTER_MS", "1000"),
            ("PRICEFEED__SCHEDULER__FEED_CHECK_MS", "250"),
        ],
    )
    .await;
    let http = http_client(Duration::from_secs(5));
    let sched = start_schedulers(&["sched"], &env).await.remove(0);
    let nodes = start_nodes(&["n1"], &env).await;
    let client = redis::Client::open(pricefeed_tests::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let field = "spot:1";
    // Longest silence the scheduler could have seen on the spot connection, over 20 s once it
    // is connected, and the mean gap the node published last.
    let until = Instant::now() + READY;
    let mut watched_since: Option<Instant> = None;
    let mut longest = 0i64;
    let mut gap = -1i64;
    while watched_since.is_none_or(|t| t.elapsed() < Duration::from_secs(20)) {
        let view = feed_view(&mut redis, &prefix, "n1").await;
        let (last, g) = view.conns.get(field).copied().unwrap_or((0, -1));
        gap = g;
        if last > 0 {
            watched_since.get_or_insert_with(Instant::now);
            longest = longest.max(view.now_ms - last);
        } else {
            assert!(
                Instant::now() < until,
                "{field} never connected: {view:?}\n{}",
                nodes[0].log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (orders, obeyed) = orders_sent_and_obeyed(&http, &sched, &nodes[0]).await;
    println!(
        "longest silence seen {longest} ms (threshold 1000 ms), mean gap learned {gap} ms; \
         orders {orders}, obeyed {obeyed}"
    );
    assert!(
        longest > 1_200 && gap > 100,
        "the connection was never quiet for long ({longest} ms) or its rate never known \
         ({gap} ms): the test proves nothing"
    );
    assert_eq!(
        (orders, obeyed),
        (0.0, 0.0),
        "a quiet connection was ordered to reconnect:\n{}",
        sched.log_tail()
    );
}

/// `GET /api/v1/cluster` on either node shows every node's feed connections and their health,
/// exactly as each node published them in its hash (the same connections, the same connected
/// flags, fresh frames), not only the answering node's; a node killed with SIGKILL shows
/// `reported: false` on the other once its hash expires.
#[tokio::test]
async fn every_node_shows_every_nodes_feed_health() {
    let World {
        http,
        env,
        prefix,
        sym_a,
        sym_b,
        sim: _sim,
    } = world(&[]).await;
    let _sched = start_schedulers(&["sched"], &env).await;
    let mut nodes = start_nodes(&["n1", "n2"], &env).await;
    let client = redis::Client::open(pricefeed_tests::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let (key_a, key_b) = (format!("spot:{sym_a}"), format!("usdm:{sym_b}"));
    let until = Instant::now() + READY;
    loop {
        if let (Some(a), Some(b)) = (
            owner_of(&http, &nodes, &key_a).await,
            owner_of(&http, &nodes, &key_b).await,
        ) && a != b
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "instruments not split over the nodes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each node's view of each node equals that node's hash, with a connected, fresh connection.
    let until = Instant::now() + READY;
    loop {
        let mut mismatch = Vec::new();
        for viewer in &nodes {
            let view = get_json(&http, &viewer.url("/api/v1/cluster"))
                .await
                .unwrap_or(Value::Null);
            for id in ["n1", "n2"] {
                let hash = feed_view(&mut redis, &prefix, id).await;
                let want: BTreeMap<String, bool> = hash
                    .conns
                    .iter()
                    .map(|(c, (last, _))| (c.clone(), *last > 0))
                    .collect();
                let entry = view["nodes"]
                    .as_array()
                    .and_then(|l| l.iter().find(|n| n["node_id"] == id))
                    .cloned()
                    .unwrap_or(Value::Null);
                let feed = &entry["feed"];
                let got: BTreeMap<String, bool> = feed["conns"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .map(|c| {
                                (
                                    c["id"].as_str().unwrap_or_default().to_string(),
                                    c["connected"] == true,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let fresh = feed["max_last_frame_age_ms"]
                    .as_i64()
                    .is_some_and(|a| a < 5_000);
                if feed["reported"] != true
                    || feed["connected"].as_u64().unwrap_or(0) == 0
                    || !fresh
                    || got != want
                {
                    mismatch.push(format!(
                        "{} sees {id}: {feed}\n  hash: {want:?}",
                        viewer.name
                    ));
                }
            }
        }
        if mismatch.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "cluster views do not show both nodes' feeds:\n{}",
            mismatch.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // n2 dies without a word: its hash expires (10 s), and n1 says it has no report from it.
    pricefeed_tests::signal(nodes[1].child.id(), "KILL");
    nodes[1].wait_exit(READY).await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let view = get_json(&http, &nodes[0].url("/api/v1/cluster"))
            .await
            .unwrap_or(Value::Null);
        let n2 = view["nodes"]
            .as_array()
            .and_then(|l| l.iter().find(|n| n["node_id"] == "n2"))
            .cloned();
        match n2 {
            None => break,
            Some(n) if n["feed"]["reported"] == false && n["feed"]["conns"] == json!([]) => break,
            Some(n) => assert!(
                Instant::now() < until,
                "n1 still reports the dead n2's feed: {n}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
