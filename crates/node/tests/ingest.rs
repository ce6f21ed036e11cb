//! Ingest against the in-process simulator, real Redis and real Postgres: prices appear in
//! Redis and through the API; with WS faults on, every instrument's accepted trade ids equal the
//! simulator's ground truth (none lost, none twice) and the latest price is the truth's last
//! trade; a silently stalled connection is replaced within its threshold.
//!
//! Needs `PRICEFEED_TEST_DATABASE_URL` (or `DATABASE_URL`) and `PRICEFEED_TEST_REDIS_URL`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use pricefeed_domain::assignment::NodeId;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_exchange_sim::config::SimConfig;
use pricefeed_node::config::NodeConfig;
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::assignment::{self as published, Published};
use pricefeed_store::protocol::Keys;
use serde_json::{Value, json};

const INSTRUMENTS: &[&str] = &[
    "spot:BTCUSDT",
    "usdm:BTCUSDT",
    "spot:ETHUSDT",
    "spot:BNBUSDT",
];

fn unique(p: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{p}_{}_{}", std::process::id(), n % 1_000_000_000)
}

/// A connection to the test Redis (`PRICEFEED_TEST_REDIS_URL`); tests keep apart by prefix.
async fn test_redis() -> pricefeed_store::redis_conn::RedisConn {
    let url = std::env::var("PRICEFEED_TEST_REDIS_URL").expect("PRICEFEED_TEST_REDIS_URL");
    pricefeed_store::redis_conn::connect(&pricefeed_runtime::config::RedisConfig {
        url: pricefeed_runtime::secret::SecretUrl::new(url),
        key_prefix: "unused".into(),
        sentinel: None,
    })
    .await
    .unwrap()
}

async fn fresh_db() -> String {
    use sqlx::Connection;
    let admin = std::env::var("PRICEFEED_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .expect("PRICEFEED_TEST_DATABASE_URL or DATABASE_URL");
    let name = unique("pf_ingest");
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

async fn poll<F, Fut, T>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Env {
    http: reqwest::Client,
    node: String,
    control: String,
    redis: pricefeed_store::redis_conn::RedisConn,
    prefix: String,
    db: sqlx::PgPool,
    _shutdown: Shutdown,
}

impl Env {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.node))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("http://{}{path}", self.control))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn ingest(&self) -> BTreeMap<String, Value> {
        let (s, v) = self.get("/api/v1/cluster/ingest").await;
        assert_eq!(s, 200);
        v["instruments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["key"].as_str().unwrap().to_string(), i.clone()))
            .collect()
    }
}

async fn setup(stall_timeout_ms: u64, max_lifetime_ms: u64) -> Env {
    setup_with(stall_timeout_ms, max_lifetime_ms, |_| {}).await
}

async fn setup_with(
    stall_timeout_ms: u64,
    max_lifetime_ms: u64,
    tweak: impl FnOnce(&mut SimConfig),
) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,pricefeed_node=info".into()),
        )
        .with_test_writer()
        .try_init();
    let shutdown = Shutdown::new();
    let mut sim_cfg = SimConfig {
        spot_bind: "127.0.0.1:0".parse().unwrap(),
        futures_bind: "127.0.0.1:0".parse().unwrap(),
        options_bind: "127.0.0.1:0".parse().unwrap(),
        control_bind: "127.0.0.1:0".parse().unwrap(),
        underlyings: 4,
        quarterlies: 0,
        option_expiries: 1,
        option_strikes: 1,
        initial_halted_ratio: 0.0,
        hot_symbols: 1,
        hot_rate_per_sec: 100.0,
        tail_rate_per_min: 300.0,
        listing_interval_ms: 0,
        ..SimConfig::default()
    };
    tweak(&mut sim_cfg);
    let sim = pricefeed_exchange_sim::start(sim_cfg, &shutdown)
        .await
        .unwrap();
    let a = sim.addrs;
    let db = fresh_db().await;
    let redis_url = std::env::var("PRICEFEED_TEST_REDIS_URL").expect("PRICEFEED_TEST_REDIS_URL");
    let prefix = unique("pfi");
    let overrides = json!({
        "node": {"id": "n1", "http": {"bind": "127.0.0.1:0"},
                 "feed": {"stall_timeout_ms": stall_timeout_ms, "handover_grace_ms": 200,
                          "reconnect_backoff_min_ms": 50, "reconnect_backoff_max_ms": 500,
                          "tick_flush_ms": 10, "max_lifetime_ms": max_lifetime_ms}},
        "database": {"url": db, "migrate_on_start": true},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "auth": {"jwt_secret": "ingest-test-signing-key-0123456789abcdef"},
        "broker": {
            "spot_rest_url": format!("http://{}", a.spot), "spot_ws_url": format!("ws://{}", a.spot),
            "futures_rest_url": format!("http://{}", a.futures), "futures_ws_url": format!("ws://{}", a.futures),
            "options_rest_url": format!("http://{}", a.options), "options_ws_url": format!("ws://{}", a.options),
        },
    });
    let cfg: NodeConfig = pricefeed_runtime::config::from_figment(
        Figment::from(Toml::file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/default.toml"
        )))
        .merge(Serialized::defaults(overrides)),
    )
    .unwrap();
    let running = pricefeed_node::app::start(&cfg, &shutdown).await.unwrap();

    // Instruments in Postgres (for the 404 distinction) and an assignment giving n1 all of them.
    let pool = sqlx::PgPool::connect(cfg.database.url.expose())
        .await
        .unwrap();
    for s in ["BTCUSDT", "ETHUSDT", "BNBUSDT"] {
        sqlx::query("INSERT INTO underlyings (symbol, base_asset, quote_asset, status) VALUES ($1, 'X', 'USDT', 'TRADING')")
            .bind(s)
            .execute(&pool)
            .await
            .unwrap();
    }
    let mut redis = pricefeed_store::redis_conn::connect(&cfg.redis)
        .await
        .unwrap();
    let doc = Published {
        epoch: 1,
        term: 1,
        published_at_ms: 0,
        node_dead_after_ms: 3_000,
        owners: INSTRUMENTS
            .iter()
            .map(|k| (InstrumentKey::parse(k).unwrap(), NodeId::from("n1")))
            .collect(),
    };
    assert!(published::publish(&mut redis, &prefix, &doc).await.unwrap());
    Env {
        http: reqwest::Client::new(),
        node: running.addr.to_string(),
        control: a.control.to_string(),
        redis,
        prefix,
        db: pool,
        _shutdown: shutdown,
    }
}

/// Per instrument: accepted ids are exactly the truth's ids between the first and last accepted
/// id, and the latest price (API and Redis) is the truth's trade with the last id.
async fn check_against_truth(env: &mut Env) {
    let stats = env.ingest().await;
    for key in INSTRUMENTS {
        let s = &stats[*key];
        let (first, last, accepted) = (
            s["first_id"].as_u64().unwrap(),
            s["last_id"].as_u64().unwrap(),
            s["accepted"].as_u64().unwrap(),
        );
        assert_eq!(s["missing"], 0, "{key}: open gaps {s}");
        let (market, symbol) = key.split_once(':').unwrap();
        let sim_market = if market == "usdm" { "futures" } else { market };
        // Truth ids in [first, last]: trade ids on spot, aggregate ids on USD-M.
        let truth: Value = env
            .http
            .get(format!(
                "http://{}/control/truth/trades?market={sim_market}&symbol={symbol}&start=0&limit=1000000",
                env.control
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id_field = if market == "usdm" { "aggId" } else { "id" };
        let mut ids: Vec<u64> = truth["trades"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[id_field].as_u64().unwrap())
            .filter(|id| (first..=last).contains(id))
            .collect();
        ids.dedup();
        assert_eq!(ids.first(), Some(&first), "{key}");
        assert_eq!(ids.last(), Some(&last), "{key}");
        // Dedup guarantees at most once; count == truth ids means exactly once.
        assert_eq!(
            accepted,
            ids.len() as u64,
            "{key}: accepted {accepted} trades, truth has {} ids in {first}..={last}",
            ids.len()
        );
        let last_truth = truth["trades"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|t| t[id_field].as_u64() == Some(last))
            .unwrap()
            .clone();
        let q = if market == "spot" {
            String::new()
        } else {
            format!("?market={market}")
        };
        let (code, p) = env.get(&format!("/api/v1/prices/{symbol}{q}")).await;
        assert_eq!(code, 200, "{p}");
        assert!(p["trade_id"].as_u64().unwrap() >= last, "{key}: {p}");
        if p["trade_id"].as_u64() == Some(last) {
            let tp: rust_decimal::Decimal = last_truth["price"].as_str().unwrap().parse().unwrap();
            let pp: rust_decimal::Decimal = p["price"].as_str().unwrap().parse().unwrap();
            assert_eq!(tp, pp, "{key}: latest price differs from the truth");
        }
        // Every accepted trade reached history (the writer batches; poll until it flushed).
        poll("history written", Duration::from_secs(10), || async {
            let k =
                pricefeed_domain::instrument::InstrumentKey::parse(&format!("{market}:{symbol}"))
                    .unwrap();
            let stored = pricefeed_store::history::read::trade_ids(&env.db, &k)
                .await
                .unwrap();
            let n = stored
                .iter()
                .filter(|&&id| (first..=last).contains(&(id as u64)))
                .count() as u64;
            (n == accepted).then_some(())
        })
        .await;
        println!(
            "{key}: {accepted} trades accepted exactly once ({first}..={last}), backfilled {}, duplicates {}",
            s["backfilled"], s["duplicates"]
        );
    }
    // The cluster-wide counters in Redis agree (one node here; they lag by one flush).
    let counts: BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg(Keys::new(&env.prefix).accepted())
        .query_async(&mut env.redis)
        .await
        .unwrap();
    for key in INSTRUMENTS {
        assert!(counts[*key] > 0, "{key}");
    }
}

/// Waits until every instrument is live with no open gap.
async fn wait_caught_up(env: &Env) {
    poll("gaps closed", Duration::from_secs(30), || async {
        let st = env.ingest().await;
        INSTRUMENTS
            .iter()
            .all(|k| {
                st.get(*k).is_some_and(|s| {
                    s["missing"] == 0 && s["live"] == true && s["accepted"].as_u64() > Some(0)
                })
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_flow_and_faults_lose_nothing_and_count_nothing_twice() {
    let mut env = setup(30_000, 3_600_000).await;

    // Prices appear in Redis and through the API of the node, spot by default, usdm on request.
    let started = Instant::now();
    let p = poll("first BTCUSDT price", Duration::from_secs(20), || async {
        let (s, v) = env.get("/api/v1/prices/btcusdt").await;
        (s == 200).then_some(v)
    })
    .await;
    println!("first price after {:?}", started.elapsed());
    assert_eq!(
        (p["market"].as_str(), p["symbol"].as_str()),
        (Some("spot"), Some("BTCUSDT"))
    );
    assert!(
        p["price"].is_string() && p["qty"].is_string() && p["age_ms"].is_i64(),
        "{p}"
    );
    let u = poll("usdm price", Duration::from_secs(20), || async {
        let (s, v) = env.get("/api/v1/prices/BTCUSDT?market=usdm").await;
        (s == 200).then_some(v)
    })
    .await;
    assert_eq!(u["market"], "usdm");
    // Redis gets it with the next flush tick.
    let stored = poll("price in redis", Duration::from_secs(5), || {
        let mut r = env.redis.clone();
        let key = Keys::new(&env.prefix).prices();
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg("spot:BTCUSDT")
                .query_async::<Option<String>>(&mut r)
                .await
                .unwrap()
        }
    })
    .await;
    assert!(stored.contains("\"symbol\":\"BTCUSDT\""), "{stored}");
    let batch = poll("batch with ETHUSDT", Duration::from_secs(20), || async {
        let (s, b) = env
            .get("/api/v1/prices?symbols=BTCUSDT,ETHUSDT,NOPEUSDT")
            .await;
        assert_eq!(s, 200);
        (b["missing"] == json!(["NOPEUSDT"])).then_some(b)
    })
    .await;
    assert_eq!(batch["items"].as_array().unwrap().len(), 2);
    // Feed health for the scheduler: last frame time per connection.
    poll("feed health in redis", Duration::from_secs(5), || {
        let mut r = env.redis.clone();
        let key = Keys::new(&env.prefix).feed("n1");
        async move {
            let n: u64 = redis::cmd("HLEN")
                .arg(key)
                .query_async(&mut r)
                .await
                .unwrap();
            (n >= 2).then_some(())
        }
    })
    .await;
    let (s, nf) = env.get("/api/v1/prices/NOPEUSDT").await;
    assert_eq!(s, 404);
    assert!(
        nf["type"].as_str().unwrap().ends_with("unknown-instrument"),
        "{nf}"
    );
    let (s, _) = env.get("/api/v1/prices/BTCUSDT?market=coinm").await;
    assert_eq!(s, 400);
    let (s, u) = env.get("/api/v1/underlyings").await;
    assert_eq!(s, 200);
    let btc = u["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["symbol"] == "BTCUSDT")
        .unwrap();
    assert!(btc["price"]["price"].is_string(), "{u}");

    // Faults on for a few seconds, plus a kick with serverShutdown.
    env.control(
        reqwest::Method::PUT,
        "/control/faults/global",
        json!({"drop": 0.05, "duplicate": 0.05, "reorder": 0.05, "corrupt": 0.02, "disconnect": 0.002}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // let faults happen (not a synchronisation)
    env.control(
        reqwest::Method::POST,
        "/control/ws/kick",
        json!({"server_shutdown": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats: Value = env
        .control(reqwest::Method::GET, "/control/faults/stats", Value::Null)
        .await;
    println!("faults injected: {stats}");
    env.control(reqwest::Method::DELETE, "/control/faults", Value::Null)
        .await;
    wait_caught_up(&env).await;
    check_against_truth(&mut env).await;
    let (_, view) = env.get("/api/v1/cluster/ingest").await;
    assert!(
        view["counters"]["malformed"].as_u64().unwrap() > 0,
        "corrupt frames were counted"
    );
    let sessions: u64 = view["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sessions"].as_u64().unwrap())
        .sum();
    assert!(
        sessions > 2,
        "the kick and disconnects caused reconnects: {view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_stalled_connection_is_replaced_within_its_threshold() {
    let stall_timeout = Duration::from_millis(1_500);
    let env = setup(stall_timeout.as_millis() as u64, 3_600_000).await;
    poll("first price", Duration::from_secs(20), || async {
        (env.get("/api/v1/prices/BTCUSDT").await.0 == 200).then_some(())
    })
    .await;
    let sessions = |v: &Value| -> u64 {
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["market"] == "spot")
            .map(|c| c["sessions"].as_u64().unwrap())
            .sum()
    };
    let before = sessions(&env.get("/api/v1/cluster/ingest").await.1);
    // A 10 s silent stall of every event on the connection (global scope; pings keep flowing).
    env.control(
        reqwest::Method::PUT,
        "/control/faults/global",
        json!({"stall": 1.0, "stall_ms": 10_000}),
    )
    .await;
    let t0 = Instant::now();
    let replaced = poll(
        "replacement connection",
        Duration::from_secs(10),
        || async {
            (sessions(&env.get("/api/v1/cluster/ingest").await.1) > before).then_some(t0.elapsed())
        },
    )
    .await;
    println!("stalled connection replaced after {replaced:?} (threshold {stall_timeout:?})");
    env.control(reqwest::Method::DELETE, "/control/faults", Value::Null)
        .await;
    assert!(
        replaced < stall_timeout + Duration::from_millis(1_000),
        "{replaced:?}"
    );
    // Prices flow again, fresh.
    poll("fresh price", Duration::from_secs(10), || async {
        let (s, v) = env.get("/api/v1/prices/BTCUSDT").await;
        (s == 200 && v["age_ms"].as_i64().unwrap() < 1_000).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_rotate_before_their_lifetime_with_overlap_and_lose_nothing() {
    // The smallest lifetime the config allows; the simulator's own cut is 24 h.
    let mut env = setup(30_000, 10_000).await;
    wait_caught_up(&env).await;
    let sessions = || async {
        let (_, v) = env.get("/api/v1/cluster/ingest").await;
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["sessions"].as_u64().unwrap(), c["connected"] == true))
            .collect::<Vec<_>>()
    };
    let t0 = Instant::now();
    poll("a lifetime rotation", Duration::from_secs(20), || async {
        let s = sessions().await;
        (s.iter().all(|(n, up)| *n >= 2 && *up)).then_some(())
    })
    .await;
    println!("every connection rotated after {:?}", t0.elapsed());
    wait_caught_up(&env).await;
    check_against_truth(&mut env).await;
    // Overlap means the rotation needed no backfill: nothing was missed in between.
    let st = env.ingest().await;
    let backfilled: u64 = st.values().map(|s| s["backfilled"].as_u64().unwrap()).sum();
    let duplicates: u64 = st.values().map(|s| s["duplicates"].as_u64().unwrap()).sum();
    println!("after rotation: backfilled {backfilled}, duplicates dropped {duplicates}");
    assert_eq!(backfilled, 0, "{st:?}");
    // Both sockets were read for a while: the hot symbols' trades of that second came twice.
    assert!(duplicates > 0, "no overlap visible: {st:?}");
}

/// Without faults, a burst far bigger than the connector's per-wake batch of frames arrives
/// complete: contiguous ids, no gap ever opened, nothing fetched from REST. (A batch loop that
/// read one frame too many and dropped it passed every fault test, because backfill refilled
/// the hole; only this clean-feed invariant exposes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_burst_arrives_complete_without_backfill() {
    let env = setup_with(30_000, 3_600_000, |sim| {
        sim.load_mode = true;
        sim.load_rate = 50_000.0; // 500 frames per 10 ms generator tick, one symbol
        sim.load_symbols = 1;
    })
    .await;
    let key = "spot:BTCUSDT";
    let s = poll("100k load trades", Duration::from_secs(30), || async {
        let st = env.ingest().await;
        st.get(key)
            .filter(|s| s["accepted"].as_u64() > Some(100_000))
            .cloned()
    })
    .await;
    let (first, last, accepted) = (
        s["first_id"].as_u64().unwrap(),
        s["last_id"].as_u64().unwrap(),
        s["accepted"].as_u64().unwrap(),
    );
    println!("{key}: {accepted} accepted ({first}..={last}): {s}");
    assert_eq!(s["backfilled"], 0, "{s}");
    assert_eq!(s["missing"], 0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(accepted, last - first + 1, "{s}");
}

/// A flush whose answer was lost (the script ran, the reply timed out) is retried with the same
/// token and not counted twice; a new batch counts again; another node's flush of a field this
/// node holds the live claim of is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_flush_is_counted_once() {
    use pricefeed_node::ingest::publish::{self, FlushWork};
    use pricefeed_node::ingest::state::{FlushEntry, Latest};
    use rust_decimal::Decimal;

    let mut redis = test_redis().await;
    let prefix = unique("pf_flush");
    let keys = Keys::new(&prefix);
    let key = InstrumentKey::parse("spot:BTCUSDT").unwrap();
    let entry = |accepted: u64, id: u64| FlushEntry {
        key: key.clone(),
        latest: Some(Latest {
            price: Decimal::new(100, 0),
            qty: Decimal::ONE,
            trade_id: id,
            ts_ms: 1,
        }),
        accepted,
        first_id: Some(1),
        missing: None,
    };
    let script = publish::flush_script();
    let count = |mut r: pricefeed_store::redis_conn::RedisConn| {
        let keys = keys.clone();
        async move {
            redis::cmd("HGET")
                .arg(keys.accepted())
                .arg("spot:BTCUSDT")
                .query_async::<Option<u64>>(&mut r)
                .await
                .unwrap()
        }
    };
    let first = FlushWork {
        token: "inc:1".into(),
        entries: vec![entry(5, 5)],
        released: Vec::new(),
    };
    let a = publish::flush(&mut redis, &script, &prefix, "n1", &first)
        .await
        .unwrap();
    assert!(!a.duplicate);
    assert_eq!(a.published, 1);
    let again = publish::flush(&mut redis, &script, &prefix, "n1", &first)
        .await
        .unwrap();
    assert!(again.duplicate, "the retry was applied again");
    assert_eq!(count(redis.clone()).await, Some(5));

    let next = FlushWork {
        token: "inc:2".into(),
        entries: vec![entry(3, 8)],
        released: Vec::new(),
    };
    let b = publish::flush(&mut redis, &script, &prefix, "n1", &next)
        .await
        .unwrap();
    assert!(!b.duplicate);
    assert_eq!(count(redis.clone()).await, Some(8));

    // Another node with the same token text is not mistaken for n1, and is fenced.
    let c = publish::flush(&mut redis, &script, &prefix, "n2", &next)
        .await
        .unwrap();
    assert!(!c.duplicate);
    assert_eq!(c.fenced, vec!["spot:BTCUSDT".to_string()]);
    assert_eq!(count(redis.clone()).await, Some(8));
}

/// The ids a node is still missing go to Redis with its flush; the next node to go live takes
/// them over in its claim (real Redis, the real scripts), after a release or with a forced claim
/// (the owner died), and only once; a stale node's flush cannot write them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_owner_takes_over_the_missing_ids() {
    use pricefeed_node::ingest::publish::{self, FlushWork};
    use pricefeed_node::ingest::state::{FlushEntry, Latest, Release};
    use rust_decimal::Decimal;

    let mut redis = test_redis().await;
    let prefix = unique("pf_handover");
    let script = publish::flush_script();
    let (key, other) = (
        InstrumentKey::parse("spot:BTCUSDT").unwrap(),
        InstrumentKey::parse("spot:ETHUSDT").unwrap(),
    );
    let entry =
        |key: &InstrumentKey, missing: Option<Vec<std::ops::RangeInclusive<u64>>>| FlushEntry {
            key: key.clone(),
            latest: Some(Latest {
                price: Decimal::new(100, 0),
                qty: Decimal::ONE,
                trade_id: 120,
                ts_ms: 1,
            }),
            accepted: 3,
            first_id: Some(100),
            missing,
        };
    // n1 flushes both instruments with gaps open, then releases BTCUSDT at epoch 8.
    let work = FlushWork {
        token: "inc:1".into(),
        entries: vec![
            entry(&key, Some(vec![101..=102, 110..=119])),
            entry(&other, Some(vec![105..=105])),
        ],
        released: vec![Release {
            key: key.clone(),
            epoch: 8,
        }],
    };
    publish::flush(&mut redis, &script, &prefix, "n1", &work)
        .await
        .unwrap();
    let early = publish::claim(&mut redis, &prefix, "n2", &[(key.clone(), 9, false)])
        .await
        .unwrap();
    assert_eq!(
        early,
        vec![None],
        "a marker of an older epoch does not release"
    );
    // n2 takes BTCUSDT after the release, and ETHUSDT by force (n1 died).
    let claimed = publish::claim(
        &mut redis,
        &prefix,
        "n2",
        &[(key.clone(), 8, false), (other.clone(), 8, true)],
    )
    .await
    .unwrap();
    let (resume, missing) = claimed[0].clone().expect("released at 8");
    assert_eq!(resume.after_id, Some(120));
    assert_eq!(missing, vec![101..=102, 110..=119]);
    let (resume, missing) = claimed[1].clone().expect("forced");
    assert_eq!((resume.after_id, missing), (Some(120), vec![105..=105]));
    // Taken over: a later claim does not hand them out again, and n1's stale flush (fenced)
    // cannot write them back.
    let stale = FlushWork {
        token: "inc:2".into(),
        entries: vec![entry(&other, Some(vec![105..=106]))],
        released: Vec::new(),
    };
    let f = publish::flush(&mut redis, &script, &prefix, "n1", &stale)
        .await
        .unwrap();
    assert_eq!(f.fenced, vec!["spot:ETHUSDT".to_string()]);
    let again = publish::claim(&mut redis, &prefix, "n3", &[(other.clone(), 9, true)])
        .await
        .unwrap();
    assert_eq!(again[0].clone().expect("forced").1, vec![]);
}
