//! End-to-end ingest across the cluster: `pricefeed-sim` (small catalogue), one scheduler and
//! three nodes against real Postgres and Redis, instruments inserted by SQL from the simulator's
//! catalogue. Checks that every instrument is ingested by exactly one node, that `kill -9` of a
//! node gets its instruments priced again on the survivors within 5 s (printed), and that over
//! the whole run the cluster accepted exactly the simulator's trade ids per instrument (none
//! lost across joins, handovers and the kill, none twice), using the cluster-wide counters the
//! nodes keep in Redis atomically with the latest price. Also checks that nodes answer prices
//! of instruments they do not own from their tick-fed price cache (hit counter grows) and that,
//! once trades stop, no node serves a price behind the one in Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pricefeed_store::protocol::Keys;
use pricefeed_tests::{
    Proc, SMALL_CATALOGUE, Sim, base_env, fresh_database, get_json, http_client, key_prefix,
    metric, migrate, seed_from_catalogue, signal, start_nodes, start_schedulers,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
const FAILOVER: Duration = Duration::from_secs(5);

/// The simulator's small catalogue, with trades on every instrument.
const SIM: [(&str, &str); 2] = [("UNDERLYINGS", "3"), ("HOT_SYMBOLS", "1")];

/// Per node: the instruments it ingests (live or pending).
async fn ingest_views(
    http: &reqwest::Client,
    nodes: &[&Proc],
) -> Result<BTreeMap<String, Vec<(String, bool)>>, String> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let v = get_json(http, &n.url("/api/v1/cluster/ingest")).await?;
        let list = v["instruments"]
            .as_array()
            .ok_or("no instruments")?
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap_or_default().to_string(),
                    i["live"] == true,
                )
            })
            .collect();
        out.insert(n.name.clone(), list);
    }
    Ok(out)
}

/// Every expected instrument ingested, live, by exactly one of `nodes`; slices differ by ≤ 1.
fn check_exactly_one_owner(
    views: &BTreeMap<String, Vec<(String, bool)>>,
    expected: &BTreeSet<String>,
) -> Result<(), String> {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (node, list) in views {
        for (key, live) in list {
            if !live {
                return Err(format!("{key} not live yet on {node}"));
            }
            if let Some(other) = owner.insert(key, node) {
                return Err(format!("{key} ingested by {other} and {node}"));
            }
        }
    }
    let got: BTreeSet<String> = owner.keys().map(|s| s.to_string()).collect();
    if &got != expected {
        return Err(format!("ingested {got:?}, expected {expected:?}"));
    }
    let sizes: Vec<usize> = views.values().map(Vec::len).collect();
    if sizes.iter().max().unwrap() - sizes.iter().min().unwrap() > 1 {
        return Err(format!("unbalanced {sizes:?}"));
    }
    Ok(())
}

/// Latest trade id per instrument from the Redis price hash.
async fn redis_ids(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, u64> {
    let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(Keys::new(prefix).prices())
        .query_async(redis)
        .await
        .unwrap();
    raw.into_iter()
        .map(|(k, v)| {
            let d: Value = serde_json::from_str(&v).unwrap();
            (k, d["trade_id"].as_u64().unwrap())
        })
        .collect()
}

const HIT: [&str; 2] = ["cache=\"price\"", "result=\"hit\""];

/// `trade_id` served by `n` for every key (0 when it does not answer with a price).
async fn served_ids(
    http: &reqwest::Client,
    n: &Proc,
    keys: &BTreeSet<String>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for key in keys {
        let (market, symbol) = key.split_once(':').unwrap();
        let v = get_json(
            http,
            &n.url(&format!("/api/v1/prices/{symbol}?market={market}")),
        )
        .await
        .unwrap_or_default();
        out.insert(key.clone(), v["trade_id"].as_u64().unwrap_or(0));
    }
    out
}

#[tokio::test]
async fn ingest_is_exactly_once_across_the_cluster_and_survives_kill_9() {
    let http = http_client(Duration::from_secs(5));
    let mut sim = Sim::start(&[&SMALL_CATALOGUE[..], &SIM].concat()).await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let expected = seed_from_catalogue(&http, &sim, &db).await;
    println!("{} instruments: {expected:?}", expected.len());
    assert!(
        expected.iter().any(|k| k.starts_with("usdm:"))
            && expected.iter().any(|k| k.starts_with("options:"))
    );

    let _sched = start_schedulers(&["sched"], &env).await;
    let mut nodes = start_nodes(&["n1", "n2", "n3"], &env).await;
    let mut redis = redis::Client::open(pricefeed_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // 1. Every instrument ingested by exactly one node, balanced; prices on every node.
    let until = Instant::now() + READY;
    loop {
        let refs: Vec<&Proc> = nodes.iter().collect();
        let r = match ingest_views(&http, &refs).await {
            Ok(v) => check_exactly_one_owner(&v, &expected),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => break,
            Err(e) if Instant::now() > until => panic!("no single-owner ingest: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let until = Instant::now() + READY;
    loop {
        let ids = redis_ids(&mut redis, &prefix).await;
        if expected.iter().all(|k| ids.contains_key(k)) {
            break;
        }
        assert!(
            Instant::now() < until,
            "not every instrument priced: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &nodes {
        for key in &expected {
            let (market, symbol) = key.split_once(':').unwrap();
            let v = get_json(
                &http,
                &n.url(&format!("/api/v1/prices/{symbol}?market={market}")),
            )
            .await
            .unwrap();
            assert_eq!(v["market"], market, "{}: {v}", n.name);
            assert!(
                v["age_ms"].as_i64().unwrap() < 10_000,
                "{}: stale {v}",
                n.name
            );
        }
    }

    // 1b. Every node owns about a third of the instruments; the rest come from its price cache.
    for n in &nodes {
        let before = metric(&http, n, "pricefeed_live_cache_total", &HIT).await;
        served_ids(&http, n, &expected).await;
        let after = metric(&http, n, "pricefeed_live_cache_total", &HIT).await;
        println!("{}: price cache hits {before} -> {after}", n.name);
        assert!(after > before, "{}: no price cache hits", n.name);
    }

    // 2. WS faults on, then kill -9 of n2: its instruments are live and priced again on the
    //    survivors.
    let faults = http
        .put(format!("http://{control}/control/faults/global"))
        .json(
            &serde_json::json!({"drop": 0.03, "duplicate": 0.03, "reorder": 0.03, "corrupt": 0.01}),
        )
        .send()
        .await
        .unwrap();
    assert!(faults.status().is_success());
    let victim = nodes.remove(1);
    let lost: Vec<String> = ingest_views(&http, &[&victim]).await.unwrap()[&victim.name]
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!lost.is_empty());
    let mut victim = victim;
    signal(victim.child.id(), "KILL");
    let t0 = Instant::now();
    let _ = victim.wait_exit(Duration::from_secs(5)).await;
    let at_kill = redis_ids(&mut redis, &prefix).await;
    let failover = loop {
        let refs: Vec<&Proc> = nodes.iter().collect();
        let views = ingest_views(&http, &refs).await.unwrap_or_default();
        let live: BTreeSet<&String> = views
            .values()
            .flatten()
            .filter(|(_, l)| *l)
            .map(|(k, _)| k)
            .collect();
        let ids = redis_ids(&mut redis, &prefix).await;
        let priced = lost
            .iter()
            .all(|k| live.contains(k) && ids.get(k) > at_kill.get(k));
        if priced {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "instruments of the killed node never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "kill -9 failover: {} instruments of n2 priced again on the survivors after {failover:?}",
        lost.len()
    );
    assert!(failover < FAILOVER, "failover took {failover:?}");
    let refs: Vec<&Proc> = nodes.iter().collect();
    check_exactly_one_owner(&ingest_views(&http, &refs).await.unwrap(), &expected).unwrap();
    let stats = get_json(&http, &format!("http://{control}/control/faults/stats"))
        .await
        .unwrap();
    println!("faults injected during the run: {stats}");
    http.delete(format!("http://{control}/control/faults"))
        .send()
        .await
        .unwrap();

    // 3. Over the run, per instrument: the cluster accepted exactly the truth's ids between the
    //    first accepted id and the latest one (gaps backfilled, duplicates dropped). Polled until
    //    backfills of the last gaps have landed.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (accepted, first, prices): (
            BTreeMap<String, u64>,
            BTreeMap<String, u64>,
            BTreeMap<String, String>,
        ) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(Keys::new(&prefix).accepted())
            .cmd("HGETALL")
            .arg(Keys::new(&prefix).first_accepted())
            .cmd("HGETALL")
            .arg(Keys::new(&prefix).prices())
            .query_async(&mut redis)
            .await
            .unwrap();
        let mut problems = Vec::new();
        let mut summary = Vec::new();
        for key in &expected {
            let (market, symbol) = key.split_once(':').unwrap();
            let last: u64 = serde_json::from_str::<Value>(&prices[key]).unwrap()["trade_id"]
                .as_u64()
                .unwrap();
            let f = first[key];
            let sim_market = if market == "usdm" { "futures" } else { market };
            let truth = get_json(
                &http,
                &format!("http://{control}/control/truth/trades?market={sim_market}&symbol={symbol}&start=0&limit=1000000"),
            )
            .await
            .unwrap();
            let field = if market == "usdm" { "aggId" } else { "id" };
            let mut ids: Vec<u64> = truth["trades"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t[field].as_u64())
                .filter(|id| (f..=last).contains(id))
                .collect();
            ids.dedup();
            if accepted[key] != ids.len() as u64 || ids.first() != Some(&f) {
                problems.push(format!(
                    "{key}: accepted {} vs truth {} in {f}..={last}",
                    accepted[key],
                    ids.len()
                ));
            }
            summary.push(format!("{key}={}", accepted[key]));
        }
        if problems.is_empty() {
            println!("exactly once across the cluster: {}", summary.join(" "));
            break;
        }
        assert!(Instant::now() < until, "{problems:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 4. Trades stop (simulator gone): within a deadline every node serves, for every
    //    instrument, exactly the trade id Redis holds, owned or cached; cached ones are hits.
    sim.proc.terminate(Duration::from_secs(5)).await.unwrap();
    let hits_before: Vec<f64> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(metric(&http, n, "pricefeed_live_cache_total", &HIT).await);
        }
        v
    };
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let truth = redis_ids(&mut redis, &prefix).await;
        let mut behind = Vec::new();
        for n in &nodes {
            for (k, id) in served_ids(&http, n, &expected).await {
                if id != truth[&k] {
                    behind.push(format!("{} {k}: served {id}, redis {}", n.name, truth[&k]));
                }
            }
        }
        if behind.is_empty() && redis_ids(&mut redis, &prefix).await == truth {
            break;
        }
        assert!(
            Instant::now() < until,
            "served prices behind redis: {behind:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (n, before) in nodes.iter().zip(hits_before) {
        let after = metric(&http, n, "pricefeed_live_cache_total", &HIT).await;
        assert!(
            after > before,
            "{}: no price cache hits after trades stopped",
            n.name
        );
    }
    println!("after trades stopped every node serves the ids in redis");
}
