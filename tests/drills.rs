//! Reliability drills (issue 12), each against the real binaries, the simulator and real
//! Postgres, with a Redis of the drill's own that it may kill.
//!
//! **Redis outage**: three nodes serve every instrument; Redis is killed for
//! `PRICEFEED_DRILL_OUTAGE_SECS` (default 30) and comes back empty (no persistence: the same as a
//! flush). Throughout: every node answers every known instrument's price with 200 (the last one
//! it saw, with its age) — never a 404 or a 503 — `/livez` answers 200 and `/readyz` answers 503
//! naming `redis`, each well within the probe client's 1 s timeout; the owner keeps ingesting.
//! After: the registry, the assignment, the price hash and the σ ranking are rebuilt, and every
//! node serves fresh prices again. A ladder of crossing alerts on the hot pair, created before
//! the outage, is checked against the simulator's truth: every crossing during and after the
//! outage fired exactly once (triggers are committed to Postgres, which stayed up), and Postgres
//! holds every trade of the hot pair from before the outage to after. The drill prints the
//! slowest answers, the recovery times and the alert counts.
//!
//! **Flapping broker**: the simulator cuts a connection at 0.05 % of its messages (hot pairs
//! at 500 trades/s, so every connection is cut every few seconds) for
//! `PRICEFEED_DRILL_FLAP_SECS` (default 40). A session that delivered trades earns a fresh
//! backoff, so the hot instruments never go stale for long (the drill prints the oldest price
//! the owner served), the node's connection-attempt budget is not exhausted, and once the
//! faults stop every hot instrument's accepted trades are exactly its id range, nothing
//! missing.
//!
//! **Redis Sentinel failover**: nodes, scheduler and worker find Redis through three sentinels;
//! the primary is SIGKILLed under load. Throughout, every node answers every price (200, never a
//! 404 or 503) and `/livez`; after the promotion every node follows the new primary (ready,
//! registered, every key fresh), also once the old primary returns as a replica, and the hot
//! instrument's history has every id from before the kill to after. Prints the promotion and
//! recovery times.
//!
//! **Partition (fencing)**: one of three nodes runs in a network namespace; its route to Redis
//! is blackholed for `PRICEFEED_DRILL_PARTITION_SECS` (12) while it keeps the broker and
//! Postgres. Its slice moves to the others and it keeps ingesting its old instruments; when
//! the route comes back, Redis refuses its stale flushes (the live claims are the fencing
//! token), it rejoins with a slice, and the cluster-wide counters say every trade id once.
//!
//! **Postgres outage**: a Postgres of the drill's own is stopped (`-m immediate`) for
//! `PRICEFEED_DRILL_OUTAGE_SECS` (30) under a node, a scheduler and a worker. Throughout, the
//! node keeps ingesting and serving fresh prices, `/livez` answers 200 and `/readyz` 503 naming
//! `postgres`; the history writer buffers (queue, then spill files) and refuses nothing. After:
//! the hot instrument's stored history has every trade id of the run, reconciliation has
//! validated past the outage, and nothing was refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pricefeed_tests::alert_ladder::{Ladder, LadderSpec, User, VOLATILE_SIM};
use pricefeed_tests::drill::{Accounted, env_secs, spot_truth, stored_is_truth_by};
use pricefeed_tests::netns::NetNs;
use pricefeed_tests::pg::PrivatePostgres;
use pricefeed_tests::sentinel::{self, RedisHa};
use pricefeed_tests::{
    PrivateRedis, Proc, Sim, base_env, fresh_database, get_json, http_client, key_prefix, migrate,
    seed_from_catalogue, start_nodes, start_schedulers, wait_for, wall_ms,
};
use rust_decimal::Decimal;
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);

/// (status, body, ms) of one GET; status 0 when the request failed (e.g. the client's timeout).
async fn probe(http: &reqwest::Client, url: &str) -> (u16, Value, u128) {
    let t = Instant::now();
    match http.get(url).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let body = r.json().await.unwrap_or(Value::Null);
            (code, body, t.elapsed().as_millis())
        }
        Err(e) => (0, Value::String(e.to_string()), t.elapsed().as_millis()),
    }
}

/// `/api/v1/prices/{symbol}?market=…` of a `market:SYMBOL` key.
fn price_path(key: &str) -> String {
    let (market, sym) = key.split_once(':').unwrap();
    format!("/api/v1/prices/{sym}?market={market}")
}

/// `key`'s entry of `node`'s `/api/v1/cluster/ingest` (its accepted count and id range), or
/// `Null` when the node does not ingest it or does not answer.
async fn ingest_of(http: &reqwest::Client, node: &Proc, key: &str) -> Value {
    let Ok(v) = get_json(http, &node.url("/api/v1/cluster/ingest")).await else {
        return Value::Null;
    };
    v["instruments"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["key"] == key))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Accepted trades of `key` on `node` (0 when it does not ingest it or does not answer).
async fn accepted(http: &reqwest::Client, node: &Proc, key: &str) -> u64 {
    ingest_of(http, node, key).await["accepted"]
        .as_u64()
        .unwrap_or(0)
}

/// Whether every node is ready, sees all of `nodes` registered and serves every key fresh.
async fn serving_fresh_everywhere(
    http: &reqwest::Client,
    nodes: &[Proc],
    keys: &BTreeSet<String>,
) -> bool {
    for n in nodes {
        if probe(http, &n.url("/readyz")).await.0 != 200 {
            return false;
        }
        let Ok(c) = get_json(http, &n.url("/api/v1/cluster")).await else {
            return false;
        };
        if c["nodes"].as_array().map_or(0, Vec::len) != nodes.len() {
            return false;
        }
        if !fresh_on(http, n, keys).await {
            return false;
        }
    }
    true
}

/// Whether `node` answers every key of `keys` with 200 and a price at most 5 s old.
async fn fresh_on(http: &reqwest::Client, node: &Proc, keys: &BTreeSet<String>) -> bool {
    for k in keys {
        let (code, body, _) = probe(http, &node.url(&price_path(k))).await;
        if code != 200 || body["age_ms"].as_i64().is_none_or(|a| a > 5_000) {
            return false;
        }
    }
    true
}

/// Slowest answer per probe kind during a phase.
#[derive(Debug, Default)]
struct Slowest {
    livez: u128,
    readyz: u128,
    price: u128,
    probes: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_costs_freshness_not_answers() {
    let outage = env_secs("PRICEFEED_DRILL_OUTAGE_SECS", 30);
    let setup_http = http_client(Duration::from_secs(10));
    // The probes' client: an answer slower than this is a failure of the drill.
    let http = http_client(Duration::from_secs(1));
    let sim = Sim::start_small(VOLATILE_SIM).await;
    let control = sim.port("control");
    let mut redis = PrivateRedis::new();
    redis.start().await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.push(("PRICEFEED__REDIS__URL".into(), redis.url()));
    env.push(("PRICEFEED__ALERTS__RESYNC_MS".into(), "2000".into()));
    migrate(&env, READY).await;
    let all = seed_from_catalogue(&setup_http, &sim, &db).await;
    // Spot pairs and perpetuals: they trade all the time (options only now and then).
    let keys: BTreeSet<String> = all
        .into_iter()
        .filter(|k| k.starts_with("spot:") || k.starts_with("usdm:"))
        .filter(|k| !k.contains('_'))
        .collect();
    assert!(keys.contains("spot:BTCUSDT"), "{keys:?}");
    let _sched = start_schedulers(&["sched"], &env).await;
    let nodes = start_nodes(&["n1", "n2", "n3"], &env).await;

    // Every node serves every key.
    let res = wait_for(READY, || async {
        for n in &nodes {
            for k in &keys {
                if probe(&http, &n.url(&price_path(k))).await.0 != 200 {
                    return false;
                }
            }
        }
        true
    })
    .await;
    assert!(res.is_ok(), "not every node serves {keys:?}");
    let mut owner = None;
    for n in &nodes {
        if accepted(&setup_http, n, "spot:BTCUSDT").await > 0 {
            owner = Some(n);
        }
    }
    let owner = owner.expect("BTCUSDT has an owner");
    println!(
        "{} keys served by 3 nodes; spot:BTCUSDT owned by {}",
        keys.len(),
        owner.name
    );

    // Alerts on BTCUSDT, created through a node that does not own it, and the σ ranking as it
    // stands (it needs one completed minute of closes).
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let via = nodes.iter().find(|n| n.name != owner.name).unwrap();
    let user = User::sign_up(&setup_http, via, "outage@example.com").await;
    let btc = get_json(&setup_http, &via.url("/api/v1/prices/BTCUSDT"))
        .await
        .unwrap();
    let p: Decimal = btc["price"].as_str().unwrap().parse().unwrap();
    let first_id = btc["trade_id"].as_u64().unwrap();
    let ladder = Ladder::create(
        &user,
        via,
        p,
        LadderSpec {
            symbol: "BTCUSDT",
            rungs: 8,
            step_bp: 6,
            rearm_span: 3,
            rearm_cooldown_ms: 1000,
            channels: &["websocket"],
        },
    )
    .await;
    let t0 = Instant::now();
    let ranked_before = loop {
        let r = ranking(&setup_http, via).await;
        if !r.is_empty() {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(75),
            "no σ ranking after 75 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "{} alerts around BTCUSDT {p}; σ ranking of spot:USDT: {ranked_before:?}",
        ladder.one_shot.len() + ladder.rearms.len()
    );

    // The outage.
    let before = accepted(&setup_http, owner, "spot:BTCUSDT").await;
    redis.stop();
    let down_at = Instant::now();
    let mut slow = Slowest::default();
    let mut max_age = 0i64;
    while down_at.elapsed() < outage {
        for n in &nodes {
            let (code, _, ms) = probe(&http, &n.url("/livez")).await;
            assert_eq!(code, 200, "{} /livez during the outage", n.name);
            slow.livez = slow.livez.max(ms);
            let (code, body, ms) = probe(&http, &n.url("/readyz")).await;
            // The first probe after the kill may still hold the last good outcome.
            if down_at.elapsed() > Duration::from_secs(3) {
                assert_eq!(code, 503, "{} /readyz during the outage: {body}", n.name);
                assert_ne!(body["checks"]["redis"], "ok", "{body}");
                assert_eq!(body["checks"]["postgres"], "ok", "{body}");
            }
            slow.readyz = slow.readyz.max(ms);
            for k in &keys {
                let (code, body, ms) = probe(&http, &n.url(&price_path(k))).await;
                assert_eq!(
                    code,
                    200,
                    "{} {k} after {:?} of outage: {body}",
                    n.name,
                    down_at.elapsed()
                );
                slow.price = slow.price.max(ms);
                max_age = max_age.max(body["age_ms"].as_i64().unwrap_or(0));
            }
            slow.probes += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = accepted(&setup_http, owner, "spot:BTCUSDT").await;
    println!(
        "Redis down {:?}: {} probe rounds; slowest /livez {} ms, /readyz {} ms, price {} ms; \
         oldest price served {} ms; the owner accepted {} BTCUSDT trades meanwhile",
        outage,
        slow.probes,
        slow.livez,
        slow.readyz,
        slow.price,
        max_age,
        during - before
    );
    assert!(
        during > before,
        "the owner kept ingesting during the outage"
    );

    // Back, empty: everything rebuilt, fresh prices everywhere.
    redis.start().await;
    let back_at = Instant::now();
    let res = wait_for(READY, || serving_fresh_everywhere(&http, &nodes, &keys)).await;
    assert!(
        res.is_ok(),
        "not recovered within {READY:?} after Redis came back"
    );
    let mut r = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let prefix = key_prefix(&env);
    let stored: i64 = redis::cmd("HLEN")
        .arg(pricefeed_store::protocol::Keys::new(&prefix).prices())
        .query_async(&mut r)
        .await
        .unwrap();
    println!(
        "recovered {} ms after Redis came back: 3 nodes registered and ready, every key fresh \
         on every node, {stored} prices in the rebuilt hash",
        back_at.elapsed().as_millis()
    );
    assert!(stored as usize >= keys.len(), "price hash rebuilt");

    // The ranking is rebuilt in the empty Redis, on every node.
    let res = wait_for(READY, || async {
        for n in &nodes {
            if !ranking(&setup_http, n).await.is_superset(&ranked_before) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(res.is_ok(), "σ ranking not rebuilt: {ranked_before:?}");
    println!(
        "σ ranking rebuilt on every node {} ms after Redis came back",
        back_at.elapsed().as_millis()
    );

    // Alerts through the outage against the truth: fired once on every crossing, none doubled.
    let end_ms = wall_ms() - 2_000;
    let truth = spot_truth(&setup_http, &control, "BTCUSDT").await;
    let r = ladder.check(&pool, &truth, None, end_ms).await;
    println!(
        "alerts: ladder {} fired once, {} never crossed; re-arming alerts fired {} times, each a \
         real crossing; triggers committed by {:?}",
        r.fired, r.quiet, r.refired, r.by_node
    );
    assert!(r.fired + r.refired >= 2, "too few firings to mean anything");

    // Postgres holds every BTCUSDT trade from before the outage to now.
    let last_id = get_json(&setup_http, &owner.url("/api/v1/prices/BTCUSDT"))
        .await
        .unwrap()["trade_id"]
        .as_u64()
        .unwrap();
    let range = [(
        "spot:BTCUSDT".to_string(),
        Accounted {
            first: first_id,
            last: last_id,
            ..Accounted::default()
        },
    )]
    .into();
    let until = Instant::now() + READY;
    let n = stored_is_truth_by(
        &pool,
        &setup_http,
        &control,
        &range,
        until,
        "after the outage",
    )
    .await;
    println!("Postgres holds all {n} BTCUSDT trades {first_id}..={last_id}, across the outage");
}

/// Symbols in the σ ranking of spot pairs quoted in USDT, as `node` answers it (empty when it
/// does not answer).
async fn ranking(http: &reqwest::Client, node: &Proc) -> BTreeSet<String> {
    let Ok(v) = get_json(http, &node.url("/api/v1/stats?group=USDT&market=spot")).await else {
        return BTreeSet::new();
    };
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["rank"]["position"].is_u64())
        .filter_map(|i| i["symbol"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_feed_reconnects_fast_and_loses_nothing() {
    let flap = env_secs("PRICEFEED_DRILL_FLAP_SECS", 40);
    let http = http_client(Duration::from_secs(5));
    let sim = Sim::start_small(&[
        ("UNDERLYINGS", "2"),
        ("HOT_SYMBOLS", "2"),
        ("HOT_RATE_PER_SEC", "500.0"),
    ])
    .await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    migrate(&env, READY).await;
    let all = seed_from_catalogue(&http, &sim, &db).await;
    let hot: Vec<String> = all.into_iter().filter(|k| k.starts_with("spot:")).collect();
    let _sched = start_schedulers(&["sched"], &env).await;
    let node = start_nodes(&["n1"], &env).await.remove(0);
    let res = wait_for(READY, || async {
        for k in &hot {
            if accepted(&http, &node, k).await == 0 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(res.is_ok(), "{hot:?} not ingested");

    let r = http
        .put(format!("http://{control}/control/faults/global"))
        .json(&serde_json::json!({"disconnect": 0.0005}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let start = Instant::now();
    let mut oldest = 0i64;
    while start.elapsed() < flap {
        for k in &hot {
            let (code, body, _) = probe(&http, &node.url(&price_path(k))).await;
            assert_eq!(code, 200, "{k}: {body}");
            oldest = oldest.max(body["age_ms"].as_i64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cuts = pricefeed_tests::metric(
        &http,
        &node,
        "pricefeed_feed_disconnects_total",
        &["reason=\"server_closed\""],
    )
    .await
        + pricefeed_tests::metric(
            &http,
            &node,
            "pricefeed_feed_disconnects_total",
            &["reason=\"error\""],
        )
        .await;
    let waits = pricefeed_tests::metric(
        &http,
        &node,
        "pricefeed_feed_connect_budget_waits_total",
        &[],
    )
    .await;
    let r = http
        .delete(format!("http://{control}/control/faults"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    println!(
        "{flap:?} of 0.05 % disconnects: {cuts} connections cut; the oldest hot price served was \
         {oldest} ms old; connect-budget waits {}",
        waits as u64
    );
    assert!(
        cuts >= 5.0,
        "the fault did not make the feed flap ({cuts} cuts)"
    );
    assert_eq!(waits, 0.0, "the attempt budget ran out");
    // Before productive sessions reset the backoff, drops like these escalated each connection
    // to 20–26 s waits with its instruments stale throughout.
    assert!(
        oldest < 5_000,
        "a hot price went {oldest} ms stale between reconnects"
    );

    // Nothing lost: every hot instrument's accepted trades fill its id range.
    let until = Instant::now() + READY;
    loop {
        let mut problems = Vec::new();
        for k in &hot {
            let i = ingest_of(&http, &node, k).await;
            let (first, last) = (
                i["first_id"].as_u64().unwrap(),
                i["last_id"].as_u64().unwrap(),
            );
            let (acc, missing) = (
                i["accepted"].as_u64().unwrap(),
                i["missing"].as_u64().unwrap(),
            );
            if acc != last - first + 1 || missing != 0 {
                problems.push(format!(
                    "{k}: accepted {acc} of ids {first}..={last}, {missing} missing"
                ));
            }
        }
        if problems.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "{problems:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("every hot instrument's id range is complete after the flapping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_buffers_history_and_loses_nothing() {
    let outage = env_secs("PRICEFEED_DRILL_OUTAGE_SECS", 30);
    let setup_http = http_client(Duration::from_secs(10));
    let http = http_client(Duration::from_secs(1));
    let sim = Sim::start_small(&[("UNDERLYINGS", "2"), ("HOT_SYMBOLS", "1")]).await;
    let mut pg = PrivatePostgres::start();
    let mut env = base_env(&pg.url());
    env.extend(sim.broker_env());
    env.push(("PRICEFEED__RECONCILE__INTERVAL_MS".into(), "2000".into()));
    migrate(&env, READY).await;
    seed_from_catalogue(&setup_http, &sim, &pg.url()).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url())
        .await
        .unwrap();
    let inst: i32 = sqlx::query_scalar(
        "SELECT id FROM instruments WHERE market = 'spot' AND symbol = 'BTCUSDT'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let _sched = start_schedulers(&["sched"], &env).await;
    let worker = Proc::start_ready(
        "worker",
        &pricefeed_tests::bin("pricefeed-scheduler"),
        &["worker"],
        &env,
    )
    .await
    .unwrap();
    let node = start_nodes(&["n1"], &env).await.remove(0);
    let key = "spot:BTCUSDT";
    // History flowing and reconciliation validating before the outage.
    let res = wait_for(READY, || async {
        let c: Option<i64> =
            sqlx::query_scalar("SELECT last_id FROM reconcile_cursors WHERE instrument_id = $1")
                .bind(inst)
                .fetch_one(&pool)
                .await
                .unwrap();
        c.is_some()
    })
    .await;
    assert!(res.is_ok(), "reconciliation never ran");
    let first_id = ingest_of(&setup_http, &node, key).await["first_id"]
        .as_u64()
        .expect("BTCUSDT ingested");
    pool.close().await;

    pg.stop();
    let down_at = Instant::now();
    let mut slow = Slowest::default();
    let mut oldest = 0i64;
    while down_at.elapsed() < outage {
        let (code, _, ms) = probe(&http, &node.url("/livez")).await;
        assert_eq!(code, 200, "/livez during the outage");
        slow.livez = slow.livez.max(ms);
        let (code, body, ms) = probe(&http, &node.url("/readyz")).await;
        if down_at.elapsed() > Duration::from_secs(3) {
            assert_eq!(code, 503, "/readyz during the outage: {body}");
            assert_ne!(body["checks"]["postgres"], "ok", "{body}");
        }
        slow.readyz = slow.readyz.max(ms);
        let (code, body, ms) = probe(&http, &node.url(&price_path(key))).await;
        assert_eq!(code, 200, "{key} during the outage: {body}");
        slow.price = slow.price.max(ms);
        oldest = oldest.max(body["age_ms"].as_i64().unwrap_or(0));
        slow.probes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spilled = pricefeed_tests::metric(
        &setup_http,
        &node,
        "pricefeed_trade_writer_spilled_rows_total",
        &[],
    )
    .await;
    let last_id = ingest_of(&setup_http, &node, key).await["last_id"]
        .as_u64()
        .expect("BTCUSDT ingested");
    println!(
        "Postgres down {outage:?}: slowest /livez {} ms, /readyz {} ms, price {} ms; oldest \
         BTCUSDT price served {oldest} ms; {spilled} rows spilled meanwhile",
        slow.livez, slow.readyz, slow.price
    );

    pg.resume();
    let back_at = Instant::now();
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    // Complete and validated: every id from the first accepted to the last accepted during the
    // outage is stored once, and the validated cursor is past it.
    let res = wait_for(Duration::from_secs(120), || async {
        let c: Option<i64> =
            sqlx::query_scalar("SELECT last_id FROM reconcile_cursors WHERE instrument_id = $1")
                .bind(inst)
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
        c.is_some_and(|c| c as u64 >= last_id)
    })
    .await;
    assert!(
        res.is_ok(),
        "reconciliation did not validate past the outage"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT trade_id) FROM trades WHERE instrument_id = $1 \
         AND trade_id BETWEEN $2 AND $3",
    )
    .bind(inst)
    .bind(first_id as i64)
    .bind(last_id as i64)
    .fetch_one(&pool)
    .await
    .unwrap();
    let refused = pricefeed_tests::metric(
        &setup_http,
        &node,
        "pricefeed_trade_writer_refused_total",
        &[],
    )
    .await;
    let refilled = pricefeed_tests::metric(
        &setup_http,
        &worker,
        "pricefeed_reconcile_trades_inserted_total",
        &[],
    )
    .await;
    println!(
        "validated past the outage {} ms after Postgres came back; ids {first_id}..={last_id}: \
         {stored} stored of {}; refused {refused}; inserted by reconciliation {refilled}",
        back_at.elapsed().as_millis(),
        last_id - first_id + 1
    );
    assert_eq!(stored as u64, last_id - first_id + 1, "history has holes");
    assert_eq!(refused, 0.0, "the writer refused rows");
    assert!(
        oldest < 5_000,
        "the price went {oldest} ms stale without Postgres"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_sentinel_failover_is_followed_and_loses_nothing() {
    let setup_http = http_client(Duration::from_secs(10));
    let http = http_client(Duration::from_secs(1));
    let sim = Sim::start_small(&[("UNDERLYINGS", "2"), ("HOT_SYMBOLS", "1")]).await;
    let mut ha = RedisHa::start().await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    // In Sentinel mode the URL's host is not used: the sentinels name the primary.
    env.push((
        "PRICEFEED__REDIS__URL".into(),
        "redis://named-by-sentinel:6379/0".into(),
    ));
    env.push((
        "PRICEFEED__REDIS__SENTINEL__MASTER_NAME".into(),
        sentinel::MASTER_NAME.into(),
    ));
    env.push((
        "PRICEFEED__REDIS__SENTINEL__NODES".into(),
        ha.sentinel_nodes(),
    ));
    migrate(&env, READY).await;
    let all = seed_from_catalogue(&setup_http, &sim, &db).await;
    let keys: BTreeSet<String> = all
        .into_iter()
        .filter(|k| k.starts_with("spot:") || k.starts_with("usdm:"))
        .filter(|k| !k.contains('_'))
        .collect();
    let _sched = start_schedulers(&["sched"], &env).await;
    let worker = Proc::start_ready(
        "worker",
        &pricefeed_tests::bin("pricefeed-scheduler"),
        &["worker"],
        &env,
    )
    .await
    .unwrap();
    let nodes = start_nodes(&["n1", "n2", "n3"], &env).await;
    let fresh_everywhere = || serving_fresh_everywhere(&http, &nodes, &keys);
    assert!(
        wait_for(READY, fresh_everywhere).await.is_ok(),
        "the cluster never served every key fresh through Sentinel"
    );
    let key = "spot:BTCUSDT";
    let mut first_id = None;
    for n in &nodes {
        first_id = first_id.or(ingest_of(&setup_http, n, key).await["first_id"].as_u64());
    }
    let first_id = first_id.expect("BTCUSDT has an owner");

    // Kill the primary under load; probe every node and key until the cluster follows the
    // promoted replica: every node's heartbeat and the owner's BTCUSDT price written to it
    // after the kill, and every key fresh on every node.
    let keys_of = pricefeed_store::protocol::Keys::new(&key_prefix(&env));
    let old = ha.kill_primary().await;
    let killed_at = Instant::now();
    let kill_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let promoted_seen = std::cell::Cell::new(false);
    let followed = || async {
        let Some(p) = ha.primary().await.filter(|p| *p != old) else {
            return false;
        };
        let Ok(mut r) = redis::Client::open(format!("redis://127.0.0.1:{p}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        else {
            return false;
        };
        let beats: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(keys_of.heartbeats())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut r)
            .await
            .unwrap_or_default();
        let price: Option<String> = redis::cmd("HGET")
            .arg(keys_of.prices())
            .arg(key)
            .query_async(&mut r)
            .await
            .unwrap_or(None);
        let price_ts = price
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["ts"].as_i64())
            .unwrap_or(0);
        beats.iter().filter(|(_, at)| *at > kill_ms).count() == 3 && price_ts > kill_ms
    };
    let probing = async {
        let mut slow = Slowest::default();
        loop {
            for n in &nodes {
                let (code, _, ms) = probe(&http, &n.url("/livez")).await;
                assert_eq!(code, 200, "{} /livez during the failover", n.name);
                slow.livez = slow.livez.max(ms);
                let (_, _, ms) = probe(&http, &n.url("/readyz")).await;
                slow.readyz = slow.readyz.max(ms);
                for k in &keys {
                    let (code, body, ms) = probe(&http, &n.url(&price_path(k))).await;
                    assert_eq!(code, 200, "{} {k} during the failover: {body}", n.name);
                    slow.price = slow.price.max(ms);
                }
                slow.probes += 1;
            }
            if promoted_seen.get() && followed().await && fresh_everywhere().await {
                return (killed_at.elapsed(), slow);
            }
            assert!(
                killed_at.elapsed() < READY,
                "not recovered within {READY:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let promoting = async {
        let d = ha.wait_promoted(old, Duration::from_secs(30)).await;
        promoted_seen.set(true);
        d
    };
    let (promoted, (recovered, slow)) = tokio::join!(promoting, probing);
    println!(
        "primary :{old} SIGKILLed: sentinels promoted the replica after {} ms; {} ms after the \
         kill all 3 nodes heartbeat to it, the owner's BTCUSDT price reached it and every key \
         was fresh on every node; {} probe rounds, slowest /livez {} ms, /readyz {} ms, price \
         {} ms; never a 404 or 503 for a price",
        promoted.as_millis(),
        recovered.as_millis(),
        slow.probes,
        slow.livez,
        slow.readyz,
        slow.price
    );

    // The old primary comes back as a replica; nobody is confused by it.
    ha.restart_as_replica(old).await;
    let mut r = redis::Client::open(format!("redis://127.0.0.1:{old}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let synced = wait_for(Duration::from_secs(30), || {
        let mut r = r.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut r)
                .await
                .unwrap_or_default();
            info.contains("role:slave") && info.contains("master_link_status:up")
        }
    })
    .await;
    assert!(
        synced.is_ok(),
        "the old primary did not rejoin as a replica"
    );
    let _: () = redis::cmd("PING").query_async(&mut r).await.unwrap();
    assert!(
        wait_for(READY, fresh_everywhere).await.is_ok(),
        "the cluster lost its way when the old primary returned as a replica"
    );

    // Nothing lost: every BTCUSDT id from before the kill to now is in Postgres once, and the
    // worker (reconciliation through the same Redis) is still ready.
    let mut last_id = 0;
    for n in &nodes {
        last_id = last_id.max(
            ingest_of(&setup_http, n, key).await["last_id"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let inst: i32 = sqlx::query_scalar(
        "SELECT id FROM instruments WHERE market = 'spot' AND symbol = 'BTCUSDT'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(DISTINCT trade_id) FROM trades WHERE instrument_id = $1 \
             AND trade_id BETWEEN $2 AND $3",
        )
        .bind(inst)
        .bind(first_id as i64)
        .bind(last_id as i64)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let complete = wait_for(READY, || async {
        count().await as u64 == last_id - first_id + 1
    })
    .await;
    println!(
        "BTCUSDT ids {first_id}..={last_id}: {} stored of {}",
        count().await,
        last_id - first_id + 1
    );
    assert!(complete.is_ok(), "history has holes after the failover");
    // Readiness is a background probe's last outcome (every 500 ms), so allow it a few rounds.
    let worker_ready = wait_for(Duration::from_secs(10), || async {
        probe(&http, &worker.url("/readyz")).await.0 == 200
    })
    .await;
    assert!(
        worker_ready.is_ok(),
        "worker not ready after the failover: {:?}\n{}",
        probe(&http, &worker.url("/readyz")).await,
        worker.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_is_fenced_and_nothing_doubles() {
    let cut_for = env_secs("PRICEFEED_DRILL_PARTITION_SECS", 12);
    let http = http_client(Duration::from_secs(2));
    let sim = Sim::start_small(&[
        ("UNDERLYINGS", "2"),
        ("HOT_SYMBOLS", "2"),
        ("HOT_RATE_PER_SEC", "100.0"),
    ])
    .await;
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.push(("PRICEFEED__RECONCILE__INTERVAL_MS".into(), "2000".into()));
    migrate(&env, READY).await;
    let all = seed_from_catalogue(&http, &sim, &db).await;
    let keys: BTreeSet<String> = all
        .into_iter()
        .filter(|k| k.starts_with("spot:") || k.starts_with("usdm:"))
        .filter(|k| !k.contains('_'))
        .collect();
    let prefix = key_prefix(&env);
    let _sched = start_schedulers(&["sched"], &env).await;
    let host_nodes = start_nodes(&["n1", "n2"], &env).await;

    // n3 runs in a namespace of its own: Postgres and the broker through one address, Redis
    // through the one the drill cuts.
    let mut ns = NetNs::create();
    let mut e = env.clone();
    let via = ns.services_ip();
    let mut rewritten = Vec::new();
    for (k, v) in &e {
        if k.starts_with("PRICEFEED__BROKER__") && v.contains("://") {
            rewritten.push((k.clone(), ns.forward_url(via, v).await));
        }
    }
    e.extend(rewritten);
    let db_url = ns.forward_url(via, &db).await;
    e.push(("PRICEFEED__DATABASE__URL".into(), db_url));
    let cut = ns.cuttable_ip();
    let redis_via = ns.forward_url(cut, &pricefeed_tests::redis_url()).await;
    e.push(("PRICEFEED__REDIS__URL".into(), redis_via));
    e.push((
        "PRICEFEED__NODE__HTTP__BIND".into(),
        format!("{}:0", ns.ns_ip()),
    ));
    e.push(("PRICEFEED__NODE__ID".into(), "n3".into()));
    let node_bin = pricefeed_tests::bin("pricefeed-node");
    let mut n3 = Proc::start_with("n3", std::path::Path::new("ip"), &[], &e, |dir| {
        let mut a = ns.exec_args(&node_bin);
        a.push("--addr-file".into());
        a.push(dir.join("addr").into());
        a
    })
    .unwrap();
    n3.wait_addr(Duration::from_secs(30)).await.unwrap();

    let mut r = redis::Client::open(pricefeed_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let assignment = pricefeed_store::protocol::Keys::new(&prefix).assignment();
    let owned_by = |r: &redis::aio::MultiplexedConnection, node: &'static str| {
        let (mut r, assignment) = (r.clone(), assignment.clone());
        async move {
            let doc: Option<String> = redis::cmd("GET")
                .arg(&assignment)
                .query_async(&mut r)
                .await
                .unwrap();
            let doc: Value = doc.map_or(Value::Null, |d| serde_json::from_str(&d).unwrap());
            doc["owners"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(_, n)| *n == node)
                        .map(|(k, _)| k.clone())
                        .collect::<BTreeSet<String>>()
                })
                .unwrap_or_default()
        }
    };
    let everyone = [&host_nodes[0], &host_nodes[1], &n3];
    let res = wait_for(READY, || async {
        if owned_by(&r, "n3").await.is_empty() {
            return false;
        }
        for n in everyone {
            if !fresh_on(&http, n, &keys).await {
                return false;
            }
        }
        true
    })
    .await;
    assert!(res.is_ok(), "n3 never owned a slice with every key served");
    let n3_keys = owned_by(&r, "n3").await;
    println!(
        "{} keys; n3 (in namespace {}) owns {n3_keys:?}",
        keys.len(),
        ns.name
    );

    // The partition: n3 keeps its broker feed and Postgres, and loses Redis.
    let before: u64 = {
        let mut s = 0;
        for k in &n3_keys {
            s += accepted(&http, &n3, k).await;
        }
        s
    };
    ns.cut();
    let cut_at = Instant::now();
    let moved = wait_for(Duration::from_secs(30), || async {
        owned_by(&r, "n3").await.is_empty()
    })
    .await;
    assert!(moved.is_ok(), "n3's slice never moved while it was cut off");
    let moved_after = cut_at.elapsed();
    let served = wait_for(Duration::from_secs(30), || async {
        for n in &host_nodes {
            if !fresh_on(&http, n, &n3_keys).await {
                return false;
            }
        }
        true
    })
    .await;
    assert!(served.is_ok(), "n3's instruments never went live elsewhere");
    let live_elsewhere = cut_at.elapsed();
    if let Some(rest) = cut_for.checked_sub(cut_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let mut during = 0;
    for k in &n3_keys {
        during += accepted(&http, &n3, k).await;
    }
    println!(
        "n3 cut off from Redis: its slice moved after {} ms and was live on n1/n2 after {} ms; \
         meanwhile n3 kept ingesting its old instruments ({} trades accepted while cut off, \
         {:?} in all)",
        moved_after.as_millis(),
        live_elsewhere.as_millis(),
        during.saturating_sub(before),
        cut_at.elapsed()
    );

    // Healed: n3 comes back, its stale counts and prices are refused, and the cluster-wide
    // counters say every id once.
    ns.heal();
    let healed_at = Instant::now();
    let back = wait_for(READY, || async {
        probe(&http, &n3.url("/readyz")).await.0 == 200 && !owned_by(&r, "n3").await.is_empty()
    })
    .await;
    assert!(back.is_ok(), "n3 did not rejoin:\n{}", n3.log_tail());
    let fenced = pricefeed_tests::metric(&http, &n3, "pricefeed_ingest_fenced_total", &[]).await;
    let until = Instant::now() + READY;
    let last = loop {
        let now = pricefeed_tests::counters_exact(&mut r, &prefix, &keys).await;
        if now.is_ok() || Instant::now() > until {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "healed: n3 ready with a slice again after {} ms; {fenced} stale flushes of n3 refused \
         by the live claims; counters exact after {} ms: {last:?}",
        healed_at.elapsed().as_millis(),
        healed_at.elapsed().as_millis(),
    );
    assert!(last.is_ok(), "counted twice or lost: {last:?}");
    assert!(
        during > before && fenced >= 1.0,
        "the drill did not exercise a stale owner (n3 accepted {} while cut off, {fenced} \
         refused)",
        during.saturating_sub(before)
    );
}
