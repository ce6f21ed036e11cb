//! End-to-end instrument sync: the real `pricefeed-sim` binary (small catalogue, listing churn
//! only on demand) and the real scheduler with sub-second sync periods, against real Postgres and
//! Redis. Checks that the whole simulator catalogue lands in Postgres with its underlying links,
//! that forced listing changes appear within one sync period (time printed), that they are
//! announced on `{prefix}:instruments:changed`, and that while the simulator is down Postgres
//! stays exactly as it was and sync recovers when the simulator comes back.
//!
//! Listing changes are forced with `POST /control/listings/step` rather than a short
//! `sim.listing_interval_ms`, so the expected state is known when the test compares it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pricefeed_store::protocol::Keys;
use pricefeed_tests::{Proc, Sim, base_env, bin, fresh_database, http_client, metric, unique};
use serde_json::Value;

const UNDERLYINGS_MS: u64 = 1_500;
const DERIVATIVES_MS: u64 = 1_000;
/// One sync period of the slower kind plus slack for a loaded 2-core machine.
const WITHIN: Duration = Duration::from_millis(UNDERLYINGS_MS + 3_000);

/// (market, symbol, kind, underlying, status or DELISTED) — one instrument as the sync must store it.
type Row = (String, String, String, String, String);

/// The simulator's small catalogue, listing churn only on demand.
const SIM: [(&str, &str); 7] = [
    ("UNDERLYINGS", "4"),
    ("QUARTERLIES", "1"),
    ("OPTION_EXPIRIES", "1"),
    ("OPTION_STRIKES", "2"),
    ("HOT_SYMBOLS", "1"),
    ("HOT_RATE_PER_SEC", "5"),
    ("LISTING_INTERVAL_MS", "0"),
];

/// What Postgres must hold for the simulator's catalogue, given what it held before (`known`):
/// an instrument the broker no longer lists at all stays stored, marked delisted.
async fn expected(http: &reqwest::Client, sim: &Sim, known: &BTreeSet<Row>) -> BTreeSet<Row> {
    let v = sim.catalogue(http).await;
    let mut want = v["instruments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_string();
            let market = match s("market").as_str() {
                "futures" => "usdm".to_string(),
                m => m.to_string(),
            };
            let kind = match s("kind").as_str() {
                "delivery" => "future".to_string(),
                k => k.to_string(),
            };
            let status = if i["removed"].as_bool().unwrap() {
                "DELISTED".to_string()
            } else {
                s("status")
            };
            (market, s("symbol"), kind, s("pair"), status)
        })
        .collect::<BTreeSet<Row>>();
    let listed: BTreeSet<(String, String)> =
        want.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    for r in known {
        if !listed.contains(&(r.0.clone(), r.1.clone())) {
            want.insert((
                r.0.clone(),
                r.1.clone(),
                r.2.clone(),
                r.3.clone(),
                "DELISTED".into(),
            ));
        }
    }
    want
}

/// What Postgres holds.
async fn stored(db: &sqlx::PgPool) -> BTreeSet<Row> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT 'spot', symbol, 'spot', symbol, \
                CASE WHEN delisted_at IS NULL THEN status ELSE 'DELISTED' END FROM underlyings \
         UNION ALL \
         SELECT d.market, d.symbol, d.kind::text, u.symbol, \
                CASE WHEN d.delisted_at IS NULL THEN d.status ELSE 'DELISTED' END \
         FROM derivatives d JOIN underlyings u ON u.id = d.underlying_id",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Polls until Postgres matches the simulator's catalogue; returns how long it took.
async fn converge(
    http: &reqwest::Client,
    sim: &Sim,
    db: &sqlx::PgPool,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let known = stored(db).await;
    loop {
        let want = expected(http, sim, &known).await;
        let got = stored(db).await;
        if want == got {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let missing: Vec<_> = want.difference(&got).collect();
            let extra: Vec<_> = got.difference(&want).collect();
            panic!(
                "Postgres did not match the catalogue within {within:?}\nmissing: {missing:?}\nunexpected: {extra:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of `pricefeed_sync_runs_total` samples with `kind` and `result`.
async fn sync_runs(http: &reqwest::Client, sched: &Proc, kind: &str, result: &str) -> u64 {
    metric(
        http,
        sched,
        "pricefeed_sync_runs_total",
        &[&format!("kind=\"{kind}\""), &format!("result=\"{result}\"")],
    )
    .await as u64
}

#[tokio::test]
async fn catalogue_listings_and_broker_outage() {
    let http = http_client(Duration::from_secs(10));
    let mut sim = Sim::start(&SIM).await;
    let db_url = fresh_database().await.unwrap();
    let mut env = base_env(&db_url);
    let prefix = unique("pfsync");
    for (k, v) in [
        ("PRICEFEED__REDIS__KEY_PREFIX", prefix.clone()),
        (
            "PRICEFEED__SCHEDULER__SYNC_UNDERLYINGS_MS",
            UNDERLYINGS_MS.to_string(),
        ),
        (
            "PRICEFEED__SCHEDULER__SYNC_DERIVATIVES_MS",
            DERIVATIVES_MS.to_string(),
        ),
        ("PRICEFEED__BROKER__REST_CONNECT_TIMEOUT_MS", "500".into()),
        ("PRICEFEED__BROKER__REST_TIMEOUT_MS", "2000".into()),
    ] {
        env.push((k.into(), v));
    }
    env.extend(sim.rest_env());
    let redis = redis::Client::open(pricefeed_tests::redis_url()).unwrap();
    let mut pubsub = redis.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(Keys::new(&prefix).instruments_changed())
        .await
        .unwrap();

    let sched = Proc::start_ready(
        "scheduler",
        &bin("pricefeed-scheduler"),
        &["scheduler"],
        &env,
    )
    .await
    .unwrap();
    let db = sqlx::PgPool::connect(&db_url).await.unwrap();

    // 1. The whole catalogue, with derivative → underlying links, kinds and statuses.
    let took = converge(&http, &sim, &db, Duration::from_secs(20)).await;
    let n = stored(&db).await.len();
    let want_counts = sim.catalogue(&http).await;
    assert_eq!(n as u64, want_counts["count"].as_u64().unwrap());
    println!("initial sync: {n} instruments in Postgres after {took:?}");
    let announced = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("instruments changed announced")
        .unwrap();
    let msg: Value = serde_json::from_str(&announced.get_payload::<String>().unwrap()).unwrap();
    assert!(msg["changed"].as_u64().unwrap() > 0, "{msg}");

    // 2. Forced listing changes (new instruments, halts, resumes, delistings) show up within one
    //    sync period each.
    // Step until a new listing and a derivative delisting have both been seen (the sequence of
    // changes is deterministic from the seed; the cap only guards against a changed simulator).
    let mut seen = BTreeSet::new();
    let mut worst = Duration::ZERO;
    let mut steps = 0;
    while !(seen.contains("listed/options") || seen.contains("listed/spot"))
        || !(seen.contains("delisted/options") || seen.contains("delisted/futures"))
    {
        assert!(
            steps < 40,
            "no new listing and derivative delisting in 40 steps: {seen:?}"
        );
        steps += 1;
        let change: Value = http
            .post(sim.proc.url("/control/listings/step"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in change.as_array().unwrap() {
            seen.insert(format!(
                "{}/{}",
                c["change"].as_str().unwrap(),
                c["market"].as_str().unwrap()
            ));
        }
        let took = converge(&http, &sim, &db, WITHIN).await;
        worst = worst.max(took);
    }
    println!(
        "{steps} listing changes each reflected in Postgres within {worst:?} (bound {WITHIN:?}); kinds: {seen:?}"
    );
    // Nothing was deleted: every row ever seen is still there.
    let before_outage = stored(&db).await;
    assert!(before_outage.len() >= n);

    // 3. Broker down: syncs fail, Postgres stays exactly as it was (no delisting of everything).
    let errors_before = sync_runs(&http, &sched, "derivatives", "error").await
        + sync_runs(&http, &sched, "underlyings", "error").await;
    sim.proc.terminate(Duration::from_secs(15)).await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let errors = sync_runs(&http, &sched, "derivatives", "error").await
            + sync_runs(&http, &sched, "underlyings", "error").await;
        if errors >= errors_before + 3 {
            break;
        }
        assert!(
            Instant::now() < until,
            "sync failures not visible in metrics ({errors})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stored(&db).await,
        before_outage,
        "a failed sync changed Postgres"
    );

    // 4. Broker back (same seed, so the catalogue restarts from its initial state): sync recovers
    //    and Postgres follows the broker again, relisting what the restart brought back.
    let ok_before = sync_runs(&http, &sched, "derivatives", "ok").await;
    let sim2 = sim.restart_same_ports().await;
    let took = converge(&http, &sim2, &db, Duration::from_secs(30)).await;
    assert!(sync_runs(&http, &sched, "derivatives", "ok").await > ok_before);
    println!("sync recovered {took:?} after the broker came back");
    drop(sched);
    drop(sim2);
}
