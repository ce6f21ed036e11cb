//! Alerts fire where the trades are, exactly once: the simulator (volatile prices), a scheduler
//! and two nodes against real Postgres and Redis. An alert created through a node that does not
//! own its instrument fires on the owner within seconds and is pushed on the alert events
//! channel; a ladder of one-shot crossing alerts and a re-arming one keep firing while the owner
//! is SIGKILLed and its slice moves to the survivor, then to a third node that joins. Checked
//! against the simulator's ground truth afterwards: every firing is a real crossing by the trade
//! it names, no one-shot alert fires twice, no crossing that happened after an alert existed is
//! missed, a re-arming alert keeps its cooldown, and the trigger was committed by the node that
//! owned the instrument at the time; and every trigger's email reached a real SMTP server
//! (`tests/smtp/sink.py`, through a `pricefeed-scheduler worker`) exactly once.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use pricefeed_tests::alert_ladder::{Ladder, LadderSpec, User, VOLATILE_SIM};
use pricefeed_tests::drill::{listen_alert_events, single_owner, spot_truth};
use pricefeed_tests::smtp::SmtpSink;
use pricefeed_tests::{
    Proc, Sim, base_env, fresh_database, get_json, http_client, key_prefix, migrate,
    seed_from_catalogue, signal, start_nodes, start_schedulers, wait_for, wall_ms,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);
const KEY: &str = "spot:BTCUSDT";

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

/// The node whose ingest lists `KEY` as live.
async fn owner(http: &reqwest::Client, nodes: &[&Proc]) -> Option<String> {
    for n in nodes {
        let Ok(v) = get_json(http, &n.url("/api/v1/cluster/ingest")).await else {
            continue;
        };
        if v["instruments"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["key"] == KEY && i["live"] == true))
        {
            return Some(n.name.clone());
        }
    }
    None
}

async fn wait_owner(http: &reqwest::Client, nodes: &[&Proc], not: Option<&str>) -> String {
    let until = Instant::now() + READY;
    loop {
        if let Some(o) = owner(http, nodes).await
            && Some(o.as_str()) != not
        {
            return o;
        }
        assert!(Instant::now() < until, "{KEY} has no live owner");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_exactly_once_on_the_owner_through_a_kill_and_a_slice_move() {
    let http = http_client(Duration::from_secs(10));
    let sim = Sim::start_small(VOLATILE_SIM).await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.extend([
        (
            "PRICEFEED__ALERTS__RESYNC_MS".to_string(),
            "2000".to_string(),
        ),
        ("PRICEFEED__ALERTS__EMAILS_PER_HOUR".into(), "10000".into()),
        ("PRICEFEED__WORKER__POLL_MS".into(), "100".into()),
        // One user creates a ladder of alerts at once, more than the default write burst of
        // node.limits (tested in tests/hostile.rs).
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_WRITES_BURST".into(),
            "1000".into(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_WRITES_PER_MIN".into(),
            "10000".into(),
        ),
    ]);
    let sink = SmtpSink::start(&["--no-body"]).await;
    env.extend(sink.worker_env());
    let prefix = key_prefix(&env);
    migrate(&env, READY).await;
    let keys = seed_from_catalogue(&http, &sim, &db).await;
    assert!(keys.contains(KEY), "{keys:?}");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let events = listen_alert_events(&prefix).await;
    let _sched = start_schedulers(&["sched"], &env).await;
    let worker = Proc::start_ready(
        "worker",
        &pricefeed_tests::bin("pricefeed-scheduler"),
        &["worker"],
        &env,
    )
    .await
    .unwrap();
    let mut nodes = start_nodes(&["n1", "n2"], &env).await;

    // Settled first: the scheduler may hand everything to the first node up and then balance.
    let urls: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
    let until = Instant::now() + READY;
    loop {
        match single_owner(&http, &urls, &keys).await {
            Ok(sizes) if sizes.values().all(|s| *s > 0) => break,
            r => assert!(Instant::now() < until, "slices never settled: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refs: Vec<&Proc> = nodes.iter().collect();
    let first_owner = wait_owner(&http, &refs, None).await;
    let other = nodes.iter().position(|n| n.name != first_owner).unwrap();
    println!(
        "{KEY} is owned by {first_owner}; alerts are created through {}",
        nodes[other].name
    );

    // A user, registered and signed in through the node that does not own the instrument.
    let user = User::sign_up(&http, &nodes[other], "trader@example.com").await;

    // 1. Created on the non-owner, fired by the owner within seconds, pushed once.
    let created = Instant::now();
    let a1 = user
        .create(
            &nodes[other],
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1", "note": "any price"}),
        )
        .await;
    let a1_id = a1["id"].as_i64().unwrap();
    wait_for(Duration::from_secs(5), || {
        let events = events.clone();
        async move {
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e["alert_id"] == a1_id)
        }
    })
    .await
    .expect("the alert fired and was pushed within 5 s");
    println!("created → pushed in {:?}", created.elapsed());
    let a1_now = user
        .get(&nodes[other], &format!("/api/v1/alerts/{a1_id}"))
        .await;
    assert_eq!(a1_now["status"], "triggered", "{a1_now}");
    let notes = user
        .get(
            &nodes[other],
            &format!("/api/v1/alerts/{a1_id}/notifications"),
        )
        .await;
    let items = notes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{notes}");
    let channels: BTreeMap<String, String> = items[0]["deliveries"]
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
    assert_eq!(
        channels.get("websocket").map(String::as_str),
        Some("sent"),
        "{notes}"
    );
    assert!(channels.contains_key("email"), "{notes}");
    let by: String = sqlx::query_scalar("SELECT node_id FROM alert_triggers WHERE alert_id = $1")
        .bind(a1_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(by, first_owner, "fired by the owner");

    // 2. A ladder of one-shot crossing alerts around the price, and a re-arming one.
    // The owner may still hold the price back from Redis for a moment (while the firing above
    // commits, or while a new instrument's alerts load): wait for it on the other node.
    let url = nodes[other].url("/api/v1/prices/BTCUSDT");
    let until = Instant::now() + READY;
    let p = loop {
        if let Ok(v) = get_json(&http, &url).await
            && v["price"].is_string()
        {
            break dec(&v["price"]);
        }
        assert!(Instant::now() < until, "no BTCUSDT price on the other node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ladder = Ladder::create(
        &user,
        &nodes[other],
        p,
        LadderSpec {
            symbol: "BTCUSDT",
            rungs: 8,
            step_bp: 8,
            rearm_span: 5,
            rearm_cooldown_ms: 1000,
            channels: &["email", "websocket"],
        },
    )
    .await;

    // 3. Run, SIGKILL the owner mid-run, let a third node join, keep running.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let victim = nodes.iter().position(|n| n.name == first_owner).unwrap();
    let killed_at = wall_ms();
    signal(nodes[victim].child.id(), "KILL");
    nodes[victim]
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap();
    let survivors: Vec<&Proc> = nodes.iter().filter(|n| n.name != first_owner).collect();
    let second_owner = wait_owner(&http, &survivors, None).await;
    println!(
        "killed {first_owner}; {KEY} moved to {second_owner} in {} ms",
        wall_ms() - killed_at
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    nodes.extend(start_nodes(&["n3"], &env).await);
    tokio::time::sleep(Duration::from_secs(20)).await;

    // 4. After the moves: created through a node that does not own it, fired by the owner.
    let live: Vec<&Proc> = nodes.iter().filter(|n| n.name != first_owner).collect();
    let now_owner = wait_owner(&http, &live, None).await;
    let via = live.iter().find(|n| n.name != now_owner).unwrap();
    let a2 = user
        .create(
            via,
            json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1"}),
        )
        .await;
    let a2_id = a2["id"].as_i64().unwrap();
    wait_for(Duration::from_secs(5), || {
        let events = events.clone();
        async move {
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e["alert_id"] == a2_id)
        }
    })
    .await
    .expect("fired after the slice moved");
    let by: String = sqlx::query_scalar("SELECT node_id FROM alert_triggers WHERE alert_id = $1")
        .bind(a2_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        by, now_owner,
        "fired by the owner after the move (created via {})",
        via.name
    );
    println!(
        "after the moves {KEY} is owned by {now_owner}; an alert created via {} fired there",
        via.name
    );

    // 5. Everything against the simulator's ground truth.
    let end_ms = wall_ms() - 2_000;
    let truth = spot_truth(&http, &control, "BTCUSDT").await;
    let pushed = events.lock().unwrap().clone();
    let r = ladder.check(&pool, &truth, Some(&pushed), end_ms).await;
    println!(
        "{} truth trades; ladder: {} fired, {} never crossed; re-arming alerts fired {} times; \
         events pushed: {}",
        truth.len(),
        r.fired,
        r.quiet,
        r.refired,
        r.pushed
    );
    assert!(
        r.fired >= 4,
        "too few crossings to mean anything ({})",
        r.fired
    );

    // 6. Every email of every trigger reached the SMTP server exactly once, through the kill.
    let res = wait_for(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE channel = 'email' AND state = 'pending'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n == 0
    })
    .await;
    assert!(
        res.is_ok(),
        "emails still pending; worker log:\n{}",
        worker.log_tail()
    );
    let mails: Vec<(String, String)> = sqlx::query_as(
        "SELECT idempotency_key, state FROM deliveries WHERE channel = 'email' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let entries = sink.entries();
    for (key, state) in &mails {
        assert_eq!(state, "sent", "email {key}");
        let accepted: Vec<&Value> = entries
            .iter()
            .filter(|e| e["key"] == key.as_str() && e["reply"] == 250)
            .collect();
        assert_eq!(
            accepted.len(),
            1,
            "email {key} reached the server {} times",
            accepted.len()
        );
    }
    assert_eq!(
        entries.len(),
        mails.len(),
        "the sink saw mails that are not deliveries: {entries:?}"
    );
    println!(
        "{} emails, each accepted by the SMTP sink exactly once",
        mails.len()
    );
    assert!(mails.len() >= 4, "too few emails to mean anything");
}
