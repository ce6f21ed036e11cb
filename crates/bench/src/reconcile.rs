//! `reconcile`: REST reconciliation throughput and cost. The default catalogue (50 underlyings,
//! ~1 000 instruments) with the hot symbols trading faster, one node ingesting for a while with
//! no worker (a backlog builds up), then one worker: how fast it confirms the backlog (trades
//! validated per second), then a steady-state window (validated trades per second, REST weight
//! spent per 1 000 trades validated per market, the largest lag of a validated cursor).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Env, Spec};
use crate::procs::now_ms;
use crate::report::Table;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Trades per second of each hot spot pair and perpetual (5 of each).
    #[arg(long, default_value_t = 1_000.0)]
    pub hot_rate: f64,
    /// Seconds of ingest before the worker starts.
    #[arg(long, default_value_t = 90)]
    pub backlog: u64,
    /// Seconds of steady state measured after the backlog is confirmed.
    #[arg(long, default_value_t = 120)]
    pub steady: u64,
}

/// Per market: (confirmed trades, REST weight) from the worker's metrics.
async fn counters(c: &Cluster, worker: &str) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let text = c
        .http
        .get(format!("http://{worker}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for l in text.lines() {
        for (name, which) in [
            ("pricefeed_reconcile_trades_confirmed_total{", 0),
            ("pricefeed_reconcile_rest_weight_total{", 1),
        ] {
            if let Some(rest) = l.strip_prefix(name) {
                let market = rest
                    .split("market=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("?")
                    .to_string();
                let v: f64 = l
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let e = out.entry(market).or_default();
                if which == 0 {
                    e.0 += v;
                } else {
                    e.1 += v;
                }
            }
        }
    }
    Ok(out)
}

pub async fn run(env: &Env, a: &Args) -> anyhow::Result<Table> {
    let depth = ((a.hot_rate * (a.backlog + a.steady + 600) as f64) as u64).max(50_000);
    let spec = Spec {
        sim: vec![
            ("LISTING_INTERVAL_MS", "0".into()),
            ("HOT_RATE_PER_SEC", a.hot_rate.to_string()),
            ("HISTORY_DEPTH_HOT", depth.to_string()),
        ],
        nodes: 1,
    };
    let mut c = Cluster::start(env, &spec).await?;
    let tradable = c.sim_tradable().await?.len();
    c.wait_ingesting(tradable.saturating_sub(10), &[], Duration::from_secs(180))
        .await?;
    eprintln!(
        "==> {tradable} instruments ingesting; building a backlog for {} s",
        a.backlog
    );
    tokio::time::sleep(Duration::from_secs(a.backlog)).await;
    c.check_alive()?;

    let worker = c.start_worker(env, &[]).await?;
    let t0 = Instant::now();
    let t0_ms = now_ms();
    eprintln!("==> worker started; waiting until every cursor passed the worker's start");
    let node = c.nodes[0].url("/api/v1/cluster/reconcile");
    // Only what trades counts: a listed but halted instrument never gets a cursor.
    let trading: std::collections::HashSet<String> = c
        .sim_tradable()
        .await?
        .into_iter()
        .map(|(m, s)| format!("{}:{s}", if m == "futures" { "usdm" } else { &m }))
        .collect();
    loop {
        c.check_alive()?;
        let lags = c.get_json(&node).await?;
        let list = lags.as_array().cloned().unwrap_or_default();
        let behind = list
            .iter()
            .filter(|l| l["key"].as_str().is_some_and(|k| trading.contains(k)))
            .filter(|l| l["validated_through"].as_i64().is_none_or(|t| t < t0_ms))
            .count();
        if !list.is_empty() && behind == 0 {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(1_800),
            "reconciliation did not catch up in 30 min ({behind} behind)"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let caught_up = t0.elapsed();
    let after_backlog = counters(&c, &worker).await?;
    let backlog_trades: f64 = after_backlog.values().map(|v| v.0).sum();

    eprintln!(
        "==> backlog confirmed in {:.0} s; steady state for {} s",
        caught_up.as_secs_f64(),
        a.steady
    );
    let s0 = Instant::now();
    let mut max_lag = 0i64;
    while s0.elapsed() < Duration::from_secs(a.steady) {
        let lags = c.get_json(&node).await?;
        for l in lags.as_array().cloned().unwrap_or_default() {
            max_lag = max_lag.max(l["lag_ms"].as_i64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let steady = s0.elapsed().as_secs_f64();
    let end = counters(&c, &worker).await?;

    let mut t = Table::new(
        "reconcile",
        &format!(
            "{tradable} instruments (50 underlyings), hot spot pairs and perpetuals at {} trades/s, {} s of backlog, one worker (default `[reconcile]`: every 90 s, 4 000 weight/min per market)",
            a.hot_rate, a.backlog
        ),
    );
    t.row(
        "**backlog confirmed**",
        format!(
            "{backlog_trades:.0} trades in {:.0} s → **{:.0} trades validated/s**",
            caught_up.as_secs_f64(),
            backlog_trades / caught_up.as_secs_f64()
        ),
    );
    let mut total = (0.0, 0.0);
    for (m, (conf, w)) in &end {
        let (c0, w0) = after_backlog.get(m).copied().unwrap_or_default();
        let (dc, dw) = (conf - c0, w - w0);
        total.0 += dc;
        total.1 += dw;
        t.row(
            &format!("steady state, {m}"),
            format!(
                "{:.0} trades validated/s, REST weight {:.0}/min, **{:.1} weight per 1 000 trades** (backlog: {:.1})",
                dc / steady,
                dw / steady * 60.0,
                dw / dc.max(1.0) * 1000.0,
                w0 / c0.max(1.0) * 1000.0
            ),
        );
    }
    t.row(
        "steady state, all markets",
        format!(
            "{:.0} trades validated/s, {:.1} weight per 1 000 trades",
            total.0 / steady,
            total.1 / total.0.max(1.0) * 1000.0
        ),
    );
    t.row(
        "largest validated-cursor lag in steady state",
        format!("{:.0} s", max_lag as f64 / 1000.0),
    );
    t.verdict(
        "Target: no validated cursor more than 2 minutes behind at the simulator's default rates.",
    );
    Ok(t)
}
