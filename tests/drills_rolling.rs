//! Reliability drills (issue 12) of the whole cluster against the simulator, real Postgres and
//! real Redis: a rolling restart under load, and a REST 429/418 storm.
//!
//! **Rolling restart**: three nodes, two schedulers and a worker; trades flow on every
//! instrument (two hot pairs) and a ladder of crossing alerts plus re-arming alerts watch the
//! volatile BTCUSDT. Every node is stopped with SIGTERM and started again, one by one, each
//! time waiting until the cluster is back to one live owner per instrument with balanced
//! slices; then the standby scheduler, the leading scheduler (the standby takes over) and the
//! worker. Throughout, a watcher samples every node's live instruments: no instrument goes
//! without a live owner for longer than the failover bound. After: per instrument, the cluster
//! accepted exactly the simulator's ids and Postgres stores exactly them; every alert firing is
//! a real crossing by the trade it names, no one-shot alert fired twice, none missed a crossing,
//! every pushed event is a committed trigger pushed once. `PRICEFEED_DRILL_ROLL_ROUNDS`
//! (default 1) rolls the whole cluster that many times.
//!
//! **REST 429 storm**: three nodes, a scheduler and a worker (one IP, as the exchange sees a
//! cluster behind one egress address) while the feed drops 2 % of the trades and every WS
//! connection is cut once, so the nodes need REST backfill, and reconciliation and instrument
//! sync run every few seconds. The simulator answers every REST request with 429 for
//! `PRICEFEED_DRILL_STORM_SECS` (default 30; 5-s weight windows, so `Retry-After` ≤ 5 s). The
//! simulator counts what it answered: no 418 (it bans an IP that sends more than three refused
//! requests in a window), no request on a connection before the `Retry-After` given on it, at
//! most two requests per market per window. Live prices stay fresh throughout. After: every gap
//! is backfilled (accepted == truth), Postgres holds exactly the truth, and reconciliation
//! validates past the storm.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pricefeed_tests::alert_ladder::{Ladder, LadderSpec, User};
use pricefeed_tests::drill::{
    OwnershipWatch, accepted_vs_truth, env_secs, listen_alert_events, single_owner, spot_truth,
    stored_is_truth_by,
};
use pricefeed_tests::{
    Proc, Sim, base_env, bin, fresh_database, get_json, http_client, key_prefix, migrate,
    seed_from_catalogue, start_nodes, start_schedulers, wait_for, wall_ms,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(60);
/// The cluster's failover promise (tests/cluster.rs): no instrument without a live owner for
/// longer than this, here through graceful stops.
const FAILOVER: Duration = Duration::from_secs(5);

/// The `leader` check of a scheduler's `/readyz` ("leader term=… epoch=…" or "standby").
async fn role(http: &reqwest::Client, s: &Proc) -> String {
    get_json(http, &s.url("/readyz")).await.map_or_else(
        |e| format!("unreachable: {e}"),
        |v| v["checks"]["leader"].as_str().unwrap_or("?").to_string(),
    )
}

/// Waits until the three nodes have one live owner per instrument, balanced; returns when.
async fn converged(http: &reqwest::Client, nodes: &[Proc], keys: &BTreeSet<String>, what: &str) {
    let urls: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
    let until = Instant::now() + READY;
    loop {
        match single_owner(http, &urls, keys).await {
            Ok(sizes) if sizes.values().all(|s| *s > 0) => return,
            Ok(sizes) if Instant::now() > until => panic!("{what}: a node owns nothing: {sizes:?}"),
            Err(e) if Instant::now() > until => panic!("{what}: not converged: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let rounds = std::env::var("PRICEFEED_DRILL_ROLL_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let http = http_client(Duration::from_secs(10));
    // Volatile prices (alerts near the price get crossed within the run); every instrument
    // trades; the truth keeps everything of the run.
    let sim = Sim::start_small(&[
        ("UNDERLYINGS", "4"),
        ("HOT_SYMBOLS", "2"),
        ("VOL_SCALE", "20.0"),
        ("HISTORY_DEPTH_HOT", "400000"),
        ("HISTORY_DEPTH_TAIL", "50000"),
    ])
    .await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.extend([
        (
            "PRICEFEED__ALERTS__RESYNC_MS".to_string(),
            "2000".to_string(),
        ),
        ("PRICEFEED__WORKER__POLL_MS".into(), "100".into()),
    ]);
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    assert!(keys.contains("spot:BTCUSDT"), "{keys:?}");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let events = listen_alert_events(&prefix).await;
    let mut scheds = start_schedulers(&["sched-a", "sched-b"], &env).await;
    let worker_bin = bin("pricefeed-scheduler");
    let mut worker = Proc::start_ready("worker", &worker_bin, &["worker"], &env)
        .await
        .unwrap();
    let ids = ["n1", "n2", "n3"];
    let mut nodes = start_nodes(&ids, &env).await;
    converged(&http, &nodes, &keys, "start").await;
    println!("{} instruments over 3 nodes: {keys:?}", keys.len());
    let watch = OwnershipWatch::start(keys.clone(), nodes.iter().map(|n| n.url("")).collect());

    // Alerts on BTCUSDT, created through n1: a ladder of one-shot crossings around the price
    // and re-arming crossings near it.
    let user = User::sign_up(&http, &nodes[0], "roller@example.com").await;
    let url = nodes[0].url("/api/v1/prices/BTCUSDT");
    let until = Instant::now() + READY;
    let p: Decimal = loop {
        if let Ok(v) = get_json(&http, &url).await
            && let Some(p) = v["price"].as_str()
        {
            break p.parse().unwrap();
        }
        assert!(Instant::now() < until, "no BTCUSDT price");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ladder = Ladder::create(
        &user,
        &nodes[0],
        p,
        LadderSpec {
            symbol: "BTCUSDT",
            rungs: 8,
            step_bp: 6,
            rearm_span: 4,
            rearm_cooldown_ms: 1000,
            channels: &["websocket"],
        },
    )
    .await;
    println!(
        "{} one-shot and {} re-arming alerts around BTCUSDT {p}",
        ladder.one_shot.len(),
        ladder.rearms.len()
    );

    // The roll.
    let roll_started = Instant::now();
    let mut steps: Vec<String> = Vec::new();
    for round in 1..=rounds {
        for (i, id) in ids.iter().enumerate() {
            let t0 = Instant::now();
            let st = nodes[i].terminate(Duration::from_secs(30)).await.unwrap();
            assert!(st.success(), "{id} exit {st}:\n{}", nodes[i].log_tail());
            let stopped = t0.elapsed();
            nodes[i] = start_nodes(&[id], &env).await.remove(0);
            watch.set_node(i, nodes[i].url(""));
            converged(&http, &nodes, &keys, &format!("after restarting {id}")).await;
            let step = format!(
                "round {round} {id}: stopped in {} ms, back and owning a balanced slice after {} ms",
                stopped.as_millis(),
                t0.elapsed().as_millis()
            );
            println!("{step}");
            steps.push(step);
        }
        // Schedulers: the standby first, then the leader (the standby takes over).
        let mut leader_idx = None;
        for (i, s) in scheds.iter().enumerate() {
            if role(&http, s).await.starts_with("leader") {
                leader_idx = Some(i);
            }
        }
        let leader_idx = leader_idx.expect("a leading scheduler");
        for i in [1 - leader_idx, leader_idx] {
            let name = scheds[i].name.clone();
            let t0 = Instant::now();
            let st = scheds[i].terminate(Duration::from_secs(30)).await.unwrap();
            assert!(st.success(), "{name} exit {st}:\n{}", scheds[i].log_tail());
            let other = &scheds[1 - i];
            let res = wait_for(FAILOVER, || async {
                role(&http, other).await.starts_with("leader")
            })
            .await;
            let took = t0.elapsed();
            assert!(
                res.is_ok() || i != leader_idx,
                "the standby did not lead within {FAILOVER:?} of the leader's SIGTERM"
            );
            scheds[i] = start_schedulers(&[&name], &env).await.remove(0);
            let step = if i == leader_idx {
                format!(
                    "round {round} {name} (leader): standby led after {} ms",
                    took.as_millis()
                )
            } else {
                format!("round {round} {name} (standby) restarted")
            };
            println!("{step}");
            steps.push(step);
        }
        let t0 = Instant::now();
        let st = worker.terminate(Duration::from_secs(30)).await.unwrap();
        assert!(st.success(), "worker exit {st}:\n{}", worker.log_tail());
        worker = Proc::start_ready("worker", &worker_bin, &["worker"], &env)
            .await
            .unwrap();
        println!(
            "round {round} worker restarted in {} ms",
            t0.elapsed().as_millis()
        );
        converged(&http, &nodes, &keys, "after the schedulers").await;
    }
    // Let the last owners run a little before judging.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let own = watch.report();
    let open_max = own.open.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "roll of 3 nodes, 2 schedulers and a worker × {rounds} in {} ms; longest time any \
         instrument had no live owner: {} ms ({}), {} gaps over 500 ms: {:?}; {} samples",
        roll_started.elapsed().as_millis(),
        own.max_gap.as_millis(),
        own.worst,
        own.gaps.len(),
        own.gaps
            .iter()
            .map(|(k, d)| format!("{k} {} ms", d.as_millis()))
            .collect::<Vec<_>>(),
        own.rounds
    );
    assert!(
        own.max_gap <= FAILOVER && open_max <= FAILOVER,
        "an instrument had no live owner for {:?} ({}), still open: {:?}",
        own.max_gap,
        own.worst,
        own.open
    );

    // Nothing lost, nothing doubled: accepted and stored == the truth, per instrument.
    let mut redis = redis::Client::open(pricefeed_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let until = Instant::now() + READY;
    let accounted = loop {
        match accepted_vs_truth(&mut redis, &prefix, &http, &control, &keys).await {
            Ok(a) => break a,
            Err(p) => assert!(Instant::now() < until, "accepted ≠ truth: {p:#?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let accepted: u64 = accounted.values().map(|a| a.accepted).sum();
    println!(
        "accepted == truth on every instrument: {accepted} trades ({})",
        accounted
            .iter()
            .map(|(k, a)| format!("{k}={}", a.accepted))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let stored = stored_is_truth_by(
        &pool,
        &http,
        &control,
        &accounted,
        Instant::now() + READY,
        "after the rolling restart",
    )
    .await;
    println!("Postgres holds exactly the truth's ids over the same ranges: {stored} trades");

    // Alerts against the truth.
    let end_ms = wall_ms() - 2_000;
    let truth = spot_truth(&http, &control, "BTCUSDT").await;
    let pushed = events.lock().unwrap().clone();
    let r = ladder.check(&pool, &truth, Some(&pushed), end_ms).await;
    println!(
        "alerts: {} BTCUSDT truth trades; ladder {} fired once, {} never crossed; re-arming \
         alerts fired {} times, each a real crossing; {} events pushed, each once; triggers \
         committed by {:?}",
        truth.len(),
        r.fired,
        r.quiet,
        r.refired,
        r.pushed,
        r.by_node
    );
    assert!(r.fired + r.refired >= 3, "too few firings to mean anything");
    for s in &steps {
        println!("  {s}");
    }
}

/// `GET /control/rest` of the simulator: per listener `{limit, …, stats: {requests, ok,
/// limited, banned, early_ip, early_conn}}`.
async fn rest_stats(http: &reqwest::Client, control: &str) -> Value {
    get_json(http, &format!("http://{control}/control/rest"))
        .await
        .unwrap()
}

/// `after − before` of one counter summed over the three listeners.
fn delta(before: &Value, after: &Value, field: &str) -> u64 {
    ["spot", "futures", "options"]
        .iter()
        .map(|m| {
            after[m]["stats"][field].as_u64().unwrap() - before[m]["stats"][field].as_u64().unwrap()
        })
        .sum()
}

/// The counters of interest per listener, `after − before`, for the printout.
fn deltas(before: &Value, after: &Value) -> String {
    ["spot", "futures", "options"]
        .iter()
        .map(|m| {
            let d = |f: &str| {
                after[m]["stats"][f].as_u64().unwrap() - before[m]["stats"][f].as_u64().unwrap()
            };
            format!(
                "{m}: {} requests, {} ok, {} × 429, {} × 418, {} early for the IP, {} early on their connection",
                d("requests"),
                d("ok"),
                d("limited"),
                d("banned"),
                d("early_ip"),
                d("early_conn"),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_429_storm_is_waited_out_without_a_ban_and_loses_nothing() {
    let storm = env_secs("PRICEFEED_DRILL_STORM_SECS", 30);
    // The exchange's windows are a minute; 5-s windows make Retry-After ≤ 5 s, so a storm of
    // half a minute crosses several of them.
    const WINDOW_MS: u64 = 5_000;
    let http = http_client(Duration::from_secs(10));
    let sim = Sim::start_small(&[
        ("UNDERLYINGS", "2"),
        ("HOT_SYMBOLS", "1"),
        ("HISTORY_DEPTH_HOT", "400000"),
        ("HISTORY_DEPTH_TAIL", "50000"),
        ("REST_WEIGHT_WINDOW_MS", &WINDOW_MS.to_string()),
    ])
    .await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    // Every REST user busy during the storm: reconciliation every 2 s, both syncs every 3 s.
    env.extend([
        (
            "PRICEFEED__RECONCILE__INTERVAL_MS".to_string(),
            "2000".to_string(),
        ),
        (
            "PRICEFEED__SCHEDULER__SYNC_UNDERLYINGS_MS".into(),
            "3000".into(),
        ),
        (
            "PRICEFEED__SCHEDULER__SYNC_DERIVATIVES_MS".into(),
            "3000".into(),
        ),
    ]);
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let inst: i32 = sqlx::query_scalar(
        "SELECT id FROM instruments WHERE market = 'spot' AND symbol = 'BTCUSDT'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let cursor = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT last_id FROM reconcile_cursors WHERE instrument_id = $1",
        )
        .bind(inst)
        .fetch_optional(&pool)
        .await
        .unwrap()
        .flatten()
    };
    let sched = start_schedulers(&["sched"], &env).await.remove(0);
    let worker = Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &env)
        .await
        .unwrap();
    let nodes = start_nodes(&["n1", "n2", "n3"], &env).await;
    converged(&http, &nodes, &keys, "start").await;
    let res = wait_for(READY, || async { cursor().await.is_some() }).await;
    assert!(res.is_ok(), "reconciliation never ran");
    println!(
        "{} instruments over 3 nodes, reconciliation running",
        keys.len()
    );

    // The storm: every REST request refused with 429 for `storm`, while the feed drops 2 % of
    // the trades (every gap needs REST backfill) and every WS connection is cut once.
    let before = rest_stats(&http, &control).await;
    let r = http
        .put(format!("http://{control}/control/faults/global"))
        .json(&json!({"drop": 0.02}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = http
        .put(format!("http://{control}/control/rest/limits"))
        .json(&json!({"weight_limit": 0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let began = Instant::now();
    http.post(format!("http://{control}/control/ws/kick"))
        .send()
        .await
        .unwrap();
    let mut oldest = 0i64;
    let mut probes = 0u64;
    while began.elapsed() < storm {
        for n in &nodes {
            let v = get_json(&http, &n.url("/api/v1/prices/BTCUSDT"))
                .await
                .unwrap_or_else(|e| panic!("{} BTCUSDT during the storm: {e}", n.name));
            oldest = oldest.max(v["age_ms"].as_i64().unwrap_or(i64::MAX));
            probes += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = rest_stats(&http, &control).await;
    http.delete(format!("http://{control}/control/rest/limits"))
        .send()
        .await
        .unwrap();
    http.delete(format!("http://{control}/control/faults"))
        .send()
        .await
        .unwrap();
    let ended = Instant::now();
    let mut last_ids = BTreeMap::new();
    for n in &nodes {
        let v = get_json(&http, &n.url("/api/v1/cluster/ingest"))
            .await
            .unwrap();
        for i in v["instruments"].as_array().unwrap() {
            last_ids.insert(
                i["key"].as_str().unwrap().to_string(),
                i["last_id"].as_u64().unwrap_or(0),
            );
        }
    }
    let mut client_side = Vec::new();
    let mut procs: Vec<&Proc> = nodes.iter().collect();
    procs.extend([&sched, &worker]);
    for p in &procs {
        let refused =
            pricefeed_tests::metric(&http, p, "pricefeed_rest_rate_limited_total", &[]).await;
        let held = pricefeed_tests::metric(&http, p, "pricefeed_backfill_held_total", &[]).await;
        client_side.push(format!("{} {refused}/{held}", p.name));
    }
    let requests = delta(&before, &during, "requests");
    let windows = storm.as_millis() as u64 / WINDOW_MS + 1;
    println!(
        "{storm:?} of 429 on every REST request ({windows} windows of {WINDOW_MS} ms, 2 % of the \
         WS trades dropped, every WS connection cut once); BTCUSDT served {probes} times by the \
         nodes meanwhile, oldest {oldest} ms"
    );
    println!("simulator saw: {}", deltas(&before, &during));
    println!(
        "refused answers / backfill waits per process: {}",
        client_side.join(", ")
    );

    // Recovery: every gap backfilled (accepted == truth), history complete, reconciliation
    // past the storm.
    let mut redis = redis::Client::open(pricefeed_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let recovery = Duration::from_secs(120);
    let until = Instant::now() + recovery;
    let accounted = loop {
        match accepted_vs_truth(&mut redis, &prefix, &http, &control, &keys).await {
            Ok(a) => break a,
            Err(p) => {
                if Instant::now() >= until {
                    let mut fenced = Vec::new();
                    for n in &nodes {
                        let f =
                            pricefeed_tests::metric(&http, n, "pricefeed_ingest_fenced_total", &[])
                                .await;
                        fenced.push(format!("{} {f}", n.name));
                    }
                    panic!("accepted ≠ truth after the storm: {p:#?}; fenced flushes: {fenced:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let backfilled = ended.elapsed();
    let stored =
        stored_is_truth_by(&pool, &http, &control, &accounted, until, "after the storm").await;
    let target = last_ids["spot:BTCUSDT"] as i64;
    let res = wait_for(until.saturating_duration_since(Instant::now()), || async {
        cursor().await.is_some_and(|c| c >= target)
    })
    .await;
    assert!(
        res.is_ok(),
        "reconciliation did not validate past the storm"
    );
    let validated = ended.elapsed();
    let after = rest_stats(&http, &control).await;
    let accepted: u64 = accounted.values().map(|a| a.accepted).sum();
    println!(
        "recovered: every gap backfilled {} ms after the storm ({accepted} trades accepted == \
         truth on {} instruments), Postgres == truth ({stored} trades), BTCUSDT validated past \
         the storm {} ms after it",
        backfilled.as_millis(),
        accounted.len(),
        validated.as_millis()
    );
    println!("whole run: {}", deltas(&before, &after));
    // How long past the Retry-After the cluster came back after each refusal, per market:
    // before it only when a process had not yet seen another's hold (also counted as early for
    // the IP), and not much later (max: the jitter of adopted holds, or
    // simply no REST call due yet).
    for m in ["spot", "futures", "options"] {
        let c = &after[m]["comeback_margin_ms"];
        if let (Some(lo), Some(hi)) = (c["min"].as_i64(), c["max"].as_i64()) {
            println!(
                "{m}: {} comebacks after a refusal, {lo}..={hi} ms past its Retry-After",
                after[m]["stats"]["comebacks"]
            );
        }
    }
    assert_eq!(
        delta(&before, &after, "banned"),
        0,
        "the cluster got the IP banned (418)"
    );
    // A request already queued for a pooled connection when another call's 429 arrived still
    // goes out (reqwest sends it as soon as the connection is free), so it can count as early
    // on that connection without any client having ignored a Retry-After; the no-storm bound
    // below counts it. A client that retried on its own refusal would show up here once per
    // refusal or more.
    let early = delta(&before, &after, "early_conn");
    let limited = delta(&before, &after, "limited");
    assert!(
        early * 4 <= limited.max(1),
        "{early} requests early on their connection for {limited} refusals: a client retried \
         before its Retry-After"
    );
    // Honouring Retry-After per market and knocking one at a time after it: about one refused
    // request per market per window, whatever the number of processes; twice that is a storm.
    assert!(
        requests <= 3 * 2 * windows,
        "{requests} REST requests during a {storm:?} storm of {windows} windows"
    );
    assert!(
        oldest < 5_000,
        "a REST storm made a live price {oldest} ms stale"
    );
}
