//! History, VWAP, candles and statistics end to end, against a faulty feed: `pricefeed-sim`
//! with WebSocket faults on (5 % dropped, 1 % duplicated, 1 % corrupted, reordering,
//! disconnects), a scheduler, a worker reconciling against the simulator's REST API, and two
//! nodes, one of which is killed with SIGKILL half-way through.
//!
//! Ground truth is the simulator's own record of every trade (`/control/truth/trades`, polled
//! during the run so nothing ages out). Once reconciliation has confirmed the whole run, for
//! every traded instrument:
//! - every stored 1-minute and 5-minute VWAP window of the run (one per minute) is validated
//!   and equals Σp·q/Σq over the truth exactly, and so does `GET /api/v1/vwap/..?at=`;
//! - 1-minute candles equal an OHLCV computed from the truth;
//! - the 24 h statistics (mean, σ, sample count) equal an independent computation over the same
//!   1-minute closes, and the ranking table orders by that σ.
//!
//! The run lasts `PRICEFEED_HISTORY_RUN_SECS` seconds (default 360: the test command's short
//! version; the full run uses 900, see docs/benchmarks.md). It prints how many windows, candles
//! and statistics it compared.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pricefeed_domain::bucket::{Agg, Span, Sums};
use pricefeed_domain::window::stddev;
use pricefeed_tests::{
    Proc, SMALL_CATALOGUE, Sim, base_env, bin, fresh_database, get_json, http_client, migrate,
    seed_from_catalogue, signal, start_nodes,
};
use rust_decimal::Decimal;
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);

/// One trade of the truth.
#[derive(Debug, Clone, Copy)]
struct T {
    id: u64,
    agg: u64,
    price: Decimal,
    qty: Decimal,
    time: i64,
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

fn sim_market(market: &str) -> &str {
    if market == "usdm" { "futures" } else { market }
}

/// Appends the truth trades of `key` after the last one known.
async fn pull_truth(http: &reqwest::Client, control: &str, key: &str, into: &mut Vec<T>) {
    let (market, symbol) = key.split_once(':').unwrap();
    let from = into.last().map_or(0, |t| t.id + 1);
    let url = format!(
        "http://{control}/control/truth/trades?market={}&symbol={symbol}&fromId={from}&limit=1000000",
        sim_market(market)
    );
    let v = get_json(http, &url).await.unwrap();
    let oldest = v["oldestId"].as_u64().unwrap();
    assert!(
        from == 0 || oldest <= from,
        "{key}: the simulator dropped truth before it was read (oldest {oldest}, wanted {from})"
    );
    for t in v["trades"].as_array().unwrap() {
        into.push(T {
            id: t["id"].as_u64().unwrap(),
            agg: t["aggId"].as_u64().unwrap(),
            price: dec(&t["price"]),
            qty: dec(&t["qty"]),
            time: t["time"].as_i64().unwrap(),
        });
    }
}

/// Σ over the truth with `start <= time < end`; the count is what the cluster stores (trades,
/// or aggregate trades on USD-M).
fn truth_sums(key: &str, trades: &[T], start: i64, end: i64) -> Sums {
    let mut s = Sums::default();
    let mut aggs = BTreeSet::new();
    for t in trades.iter().filter(|t| t.time >= start && t.time < end) {
        s.pq += t.price * t.qty;
        s.q += t.qty;
        s.n += 1;
        aggs.insert(t.agg);
    }
    if key.starts_with("usdm:") {
        s.n = aggs.len() as u64;
    }
    s
}

async fn db_rows(pool: &sqlx::PgPool, sql: &str) -> Vec<sqlx::postgres::PgRow> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_vwap_candles_and_stats_equal_the_truth_under_a_faulty_feed() {
    use sqlx::Row;
    let run = Duration::from_secs(
        std::env::var("PRICEFEED_HISTORY_RUN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(360),
    );
    let http = http_client(Duration::from_secs(10));
    let sim_cfg: Vec<(&str, &str)> = [
        &SMALL_CATALOGUE[..],
        &[
            ("UNDERLYINGS", "3"),
            ("HOT_SYMBOLS", "1"),
            ("HOT_RATE_PER_SEC", "25.0"),
            ("TAIL_RATE_PER_MIN", "90.0"),
            ("HISTORY_DEPTH_HOT", "400000"),
            ("HISTORY_DEPTH_TAIL", "100000"),
            ("FAULTS__GLOBAL__DROP", "0.05"),
            ("FAULTS__GLOBAL__DUPLICATE", "0.01"),
            ("FAULTS__GLOBAL__CORRUPT", "0.01"),
            ("FAULTS__GLOBAL__REORDER", "0.01"),
            ("FAULTS__GLOBAL__DISCONNECT", "0.0005"),
        ],
    ]
    .concat();
    let sim = Sim::start(&sim_cfg).await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let mut env = base_env(&db);
    env.extend([
        ("PRICEFEED__RECONCILE__INTERVAL_MS".into(), "3000".into()),
        ("PRICEFEED__RECONCILE__SETTLE_MS".into(), "1000".into()),
        ("PRICEFEED__WORKER__POLL_MS".into(), "100".into()),
        ("PRICEFEED__NODE__LIVE__PUBLISH_MS".into(), "200".into()),
        (
            "PRICEFEED__NODE__LIVE__STATS_PUBLISH_MS".into(),
            "1000".into(),
        ),
    ]);
    migrate(&env, READY).await;
    let keys: Vec<String> = seed_from_catalogue(&http, &sim, &db)
        .await
        .into_iter()
        .collect();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();

    // The scheduler assigns (its REST points nowhere: no sync over the seeded instruments); the
    // worker reconciles against the simulator; the nodes ingest from it.
    let _sched = Proc::start_ready("sched", &bin("pricefeed-scheduler"), &["scheduler"], &env)
        .await
        .unwrap();
    let mut wenv = env.clone();
    wenv.extend(sim.rest_env());
    let worker = Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &wenv)
        .await
        .unwrap();
    let mut nenv = env.clone();
    nenv.extend(sim.broker_env());
    let mut nodes = start_nodes(&["h1", "h2"], &nenv).await;

    // Every instrument priced somewhere, then run with the faults on, pulling the truth.
    let started = Instant::now();
    loop {
        let mut all = true;
        for k in &keys {
            let (m, s) = k.split_once(':').unwrap();
            let v = get_json(
                &http,
                &nodes[0].url(&format!("/api/v1/prices/{s}?market={m}")),
            )
            .await;
            all &= v.is_ok_and(|v| v["trade_id"].is_u64());
        }
        if all {
            break;
        }
        assert!(started.elapsed() < READY, "instruments not priced");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut truth: BTreeMap<String, Vec<T>> =
        keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    let run_start = Instant::now();
    let mut killed = false;
    while run_start.elapsed() < run {
        for k in &keys {
            pull_truth(&http, &control, k, truth.get_mut(k).unwrap()).await;
        }
        if !killed && run_start.elapsed() > run / 2 {
            signal(nodes[1].child.id(), "KILL");
            nodes[1].wait_exit(Duration::from_secs(10)).await.unwrap();
            println!("killed {} after {:?}", nodes[1].name, run_start.elapsed());
            killed = true;
            // A feed that corrupts values and invents trades (the simulator's corrupt fault only
            // garbles frames): change three stored, unconfirmed trades and add one that the
            // exchange never had. Reconciliation must undo all of it.
            let busiest = truth.iter().max_by_key(|(_, v)| v.len()).unwrap().0.clone();
            let (market, symbol) = busiest.split_once(':').unwrap();
            let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE trades SET qty = qty + 1 WHERE (instrument_id, trade_id) IN ( \
                   SELECT t.instrument_id, t.trade_id FROM trades t \
                   JOIN instruments i ON i.id = t.instrument_id \
                   JOIN reconcile_cursors c ON c.instrument_id = t.instrument_id \
                   WHERE i.market = '{market}' AND i.symbol = '{symbol}' \
                     AND t.trade_id > COALESCE(c.last_id, 0) ORDER BY t.trade_id DESC LIMIT 3)"
            )))
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
            let invented = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO trades (trade_id, ts_ms, instrument_id, buyer_is_maker, price, qty) \
                 SELECT max(t.trade_id) + 1000000000, {}, t.instrument_id, false, 1, 1 FROM trades t \
                 JOIN instruments i ON i.id = t.instrument_id \
                 WHERE i.market = '{market}' AND i.symbol = '{symbol}' GROUP BY t.instrument_id",
                pricefeed_tests::wall_ms() - 2_000
            )))
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
            assert_eq!((changed, invented), (3, 1), "{busiest}");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let t_end = Span::MINUTE.floor(pricefeed_tests::wall_ms());

    // Reconciliation confirms everything up to the end of the run.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for k in &keys {
            pull_truth(&http, &control, k, truth.get_mut(k).unwrap()).await;
        }
        let behind = db_rows(
            &pool,
            &format!(
                "SELECT i.market || ':' || i.symbol AS k, c.through_ms FROM reconcile_cursors c \
                 JOIN instruments i ON i.id = c.instrument_id \
                 WHERE c.through_ms IS NULL OR c.through_ms < {}",
                t_end - 1
            ),
        )
        .await;
        if behind.is_empty() {
            break;
        }
        let names: Vec<String> = behind.iter().map(|r| r.get::<String, _>("k")).collect();
        assert!(
            Instant::now() < deadline,
            "reconciliation behind at the end: {names:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let reconciled_after = run_start.elapsed();

    // 1. VWAP history and as-of queries against the truth.
    let node = &nodes[0];
    let mut compared = 0usize;
    for k in &keys {
        let (market, symbol) = k.split_once(':').unwrap();
        let tr = &truth[k];
        let from_ms: i64 = db_rows(
            &pool,
            &format!(
                "SELECT c.from_ms FROM reconcile_cursors c JOIN instruments i ON i.id = c.instrument_id \
                 WHERE i.market = '{market}' AND i.symbol = '{symbol}'"
            ),
        )
        .await[0]
            .get("from_ms");
        let stored = db_rows(
            &pool,
            &format!(
                "SELECT h.end_ms, h.interval_s, h.vwap, h.trade_count, h.validated \
                 FROM vwap_history h JOIN instruments i ON i.id = h.instrument_id \
                 WHERE i.market = '{market}' AND i.symbol = '{symbol}' AND h.interval_s IN (60, 300)"
            ),
        )
        .await;
        let stored: BTreeMap<(i64, i32), (Option<Decimal>, i32, bool)> = stored
            .iter()
            .map(|r| {
                (
                    (r.get("end_ms"), r.get("interval_s")),
                    (r.get("vwap"), r.get("trade_count"), r.get("validated")),
                )
            })
            .collect();
        for iv in [60_000i64, 300_000] {
            // Every window of the run that starts once confirmation began.
            let mut end = Span::MINUTE.floor(from_ms + iv - 1) + 60_000;
            while end <= t_end {
                let expect = truth_sums(k, tr, end - iv, end);
                let got = stored
                    .get(&(end, (iv / 1000) as i32))
                    .unwrap_or_else(|| panic!("{k}: no stored {iv} ms window ending {end}"));
                assert!(got.2, "{k}: window [{}, {end}) not validated", end - iv);
                assert_eq!(got.0, expect.vwap(), "{k}: VWAP of [{}, {end})", end - iv);
                assert_eq!(
                    got.1 as u64,
                    expect.n,
                    "{k}: count of [{}, {end})",
                    end - iv
                );
                let v = get_json(
                    &http,
                    &node.url(&format!(
                        "/api/v1/vwap/{symbol}?market={market}&interval={}m&at={end}",
                        iv / 60_000
                    )),
                )
                .await
                .unwrap();
                assert_eq!(v["validated"], true, "{k}: {v}");
                let api = v["vwap"].as_str().map(|s| s.parse::<Decimal>().unwrap());
                assert_eq!(api, expect.vwap(), "{k} at {end}: {v}");
                compared += 1;
                end += 60_000;
            }
        }
    }

    // 2. One-minute candles of the confirmed run against an OHLCV of the truth.
    let mut candles = 0usize;
    for k in &keys {
        let (market, symbol) = k.split_once(':').unwrap();
        let tr = &truth[k];
        let first = Span::MINUTE.floor(tr[0].time) + 60_000;
        let v = get_json(
            &http,
            &node.url(&format!(
                "/api/v1/prices/{symbol}/history?market={market}&interval=1m&from={first}&to={}",
                t_end - 1
            )),
        )
        .await
        .unwrap();
        let mut expect: BTreeMap<i64, Agg> = BTreeMap::new();
        for t in tr.iter().filter(|t| t.time >= first && t.time < t_end) {
            let id = if market == "usdm" { t.agg } else { t.id };
            let a = Agg::trade(id, t.price, t.qty);
            expect
                .entry(Span::MINUTE.floor(t.time))
                .and_modify(|x| x.merge(&a))
                .or_insert(a);
        }
        let got = v["candles"].as_array().unwrap();
        assert_eq!(got.len(), expect.len(), "{k}: candle count: {v}");
        for (c, (start, a)) in got.iter().zip(&expect) {
            assert_eq!(c["start"].as_i64(), Some(*start), "{k}");
            assert_eq!(c["validated"], true, "{k}: {c}");
            for (f, want) in [
                ("open", a.open),
                ("high", a.high),
                ("low", a.low),
                ("close", a.close),
                ("volume", a.q),
                ("quote_volume", a.pq),
            ] {
                assert_eq!(dec(&c[f]), want, "{k} {start} {f}: {c}");
            }
            let n = if market == "usdm" {
                // Count aggregate trades, not fills.
                let mut aggs = BTreeSet::new();
                for t in tr.iter().filter(|t| Span::MINUTE.floor(t.time) == *start) {
                    aggs.insert(t.agg);
                }
                aggs.len() as u64
            } else {
                a.n
            };
            assert_eq!(c["trade_count"].as_u64(), Some(n), "{k} {start}");
            candles += 1;
        }
    }

    // 3. Statistics and rank against an independent computation over the same closes.
    let mut stats_checked = 0;
    let mut sigma: BTreeMap<String, (String, Decimal)> = BTreeMap::new();
    for k in &keys {
        let (market, symbol) = k.split_once(':').unwrap();
        let tr = &truth[k];
        let st = get_json(
            &http,
            &node.url(&format!("/api/v1/stats/{symbol}?market={market}")),
        )
        .await
        .unwrap();
        let (from, to) = (st["from"].as_i64().unwrap(), st["to"].as_i64().unwrap());
        let first_min = Span::MINUTE.floor(tr[0].time);
        let mut closes: BTreeMap<i64, (u64, Decimal)> = BTreeMap::new();
        for t in tr
            .iter()
            .filter(|t| t.time >= from.max(first_min) && t.time < to)
        {
            let e = closes
                .entry(Span::MINUTE.floor(t.time))
                .or_insert((t.id, t.price));
            if t.id >= e.0 {
                *e = (t.id, t.price);
            }
        }
        let xs: Vec<Decimal> = closes.values().map(|c| c.1).collect();
        assert_eq!(st["samples"].as_u64(), Some(xs.len() as u64), "{k}: {st}");
        if xs.is_empty() {
            continue;
        }
        let sd = stddev(&xs).unwrap();
        assert_eq!(dec(&st["stddev"]), sd, "{k}: {st}");
        let mean = xs.iter().copied().sum::<Decimal>() / Decimal::from(xs.len() as u64);
        assert_eq!(dec(&st["mean"]), mean.round_dp(12).normalize(), "{k}: {st}");
        sigma.insert(
            k.clone(),
            (st["rank"]["group"].as_str().unwrap_or("").to_string(), sd),
        );
        stats_checked += 1;
    }
    let ranking = get_json(&http, &node.url("/api/v1/stats?group=USDT&market=spot"))
        .await
        .unwrap();
    let listed: Vec<String> = ranking["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["market"].as_str().unwrap(),
                i["symbol"].as_str().unwrap()
            )
        })
        .collect();
    let mut expect: Vec<(&String, Decimal)> = sigma
        .iter()
        .filter(|(_, (g, _))| g == "spot:USDT")
        .map(|(k, (_, sd))| (k, *sd))
        .collect();
    expect.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(a.0)));
    assert_eq!(
        listed,
        expect.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
        "ranking by σ: {ranking}"
    );
    assert_eq!(ranking["items"][0]["rank"]["position"], 1);

    let faults = get_json(&http, &format!("http://{control}/control/faults/stats"))
        .await
        .unwrap();
    let inserted = pricefeed_tests::metric(
        &http,
        &worker,
        "pricefeed_reconcile_trades_inserted_total",
        &[],
    )
    .await;
    let removed = pricefeed_tests::metric(
        &http,
        &worker,
        "pricefeed_reconcile_trades_removed_total",
        &[],
    )
    .await;
    println!(
        "faults injected: {faults}; reconciliation inserted {inserted} and removed {removed} trades"
    );
    println!(
        "{} instruments, run {:?}, reconciled through the run after {reconciled_after:?}: \
         {compared} VWAP windows (1m and 5m, stored and as-of), {candles} candles and \
         {stats_checked} statistics equal the truth; ranking of {} spot instruments by σ",
        keys.len(),
        run,
        listed.len()
    );
    assert!(
        compared >= keys.len() * 3,
        "too few windows compared: {compared}"
    );
}
