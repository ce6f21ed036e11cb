//! `latency`: two nodes, simulator load mode at 20 000 trades/s in total. For each load symbol
//! the node that does NOT own it is polled in a tight, time-bounded loop on
//! `GET /api/v1/prices/{symbol}`; every time a new `trade_id` shows up, `now − ts` (wall clock
//! minus the simulator's trade time, both ms on this machine) is one sample. Percentiles by
//! sorting the samples (nearest rank).

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cluster::{Cluster, Env, Spec};
use crate::e2e::yes;
use crate::procs::now_ms;
use crate::report::{Table, percentile};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Trades/s in total (`sim.load_rate`).
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Spot pairs sharing the load.
    #[arg(long, default_value_t = 4)]
    pub symbols: u32,
    /// Seconds of polling.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub async fn run(env: &Env, a: &Args) -> anyhow::Result<Table> {
    let spec = Spec {
        sim: vec![
            ("LOAD_MODE", "true".into()),
            ("LOAD_RATE", format!("{}", a.rate)),
            ("LOAD_SYMBOLS", a.symbols.to_string()),
            ("LISTING_INTERVAL_MS", "0".into()),
            // Keep every trade of the run for the oldest-trade latency lookup below.
            ("HISTORY_DEPTH_HOT", "1000000".into()),
        ],
        nodes: 2,
    };
    let mut c = Cluster::start(env, &spec).await?;
    let tradable = c.sim_tradable().await?;
    let load = crate::load_symbols(&c, a.symbols as usize).await?;
    let keys: Vec<String> = load.iter().map(|s| format!("spot:{s}")).collect();
    eprintln!("==> waiting for both nodes to ingest the catalogue (load symbols {load:?})");
    let per_node = c
        .wait_ingesting(tradable.len() * 95 / 100, &keys, Duration::from_secs(120))
        .await?;
    // (symbol, URL on the node that does not own it)
    let mut targets = Vec::new();
    for (sym, key) in load.iter().zip(&keys) {
        let owner = per_node
            .iter()
            .position(|l| l.contains(key))
            .ok_or_else(|| anyhow::anyhow!("{key} has no owner"))?;
        let other = 1 - owner;
        targets.push((
            sym.clone(),
            c.nodes[other].url(&format!("/api/v1/prices/{sym}")),
            owner,
        ));
    }
    eprintln!(
        "==> owners: {}",
        targets
            .iter()
            .map(|(s, _, o)| format!("{s}→node{}", o + 1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.check_alive()?;

    let mut last_id = vec![None::<u64>; targets.len()];
    let mut samples: Vec<f64> = Vec::new();
    // (target, previous id, new id, seen at ms): the trades prev+1..=new became visible then.
    let mut seen: Vec<(usize, u64, i64)> = Vec::new();
    let mut polls = 0u64;
    let mut errors = 0u64;
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(a.seconds);
    'outer: loop {
        for (i, (_, url, _)) in targets.iter().enumerate() {
            if Instant::now() > until {
                break 'outer;
            }
            polls += 1;
            let v: serde_json::Value = match c.http.get(url).send().await {
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(v) => v,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                },
                _ => {
                    errors += 1;
                    continue;
                }
            };
            let now = now_ms();
            let (Some(id), Some(ts)) = (v["trade_id"].as_u64(), v["ts"].as_i64()) else {
                errors += 1;
                continue;
            };
            match last_id[i] {
                // The first sight says nothing about when it became visible.
                None => last_id[i] = Some(id),
                Some(prev) if id > prev => {
                    last_id[i] = Some(id);
                    samples.push((now - ts) as f64);
                    seen.push((i, prev + 1, now));
                }
                Some(_) => {}
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    c.check_alive()?;
    if samples.is_empty() {
        bail!(
            "no new trade seen on the non-owning node in {secs:.1} s ({polls} polls, {errors} errors)"
        );
    }
    samples.sort_by(f64::total_cmp);
    let mut oldest = oldest_trade_latencies(&c, &targets, &seen).await?;
    oldest.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples[samples.len() - 1],
    );
    let mut t = Table::new(
        "latency",
        &format!(
            "sim load_rate {} over {} spot pairs, 2 nodes, each symbol polled on the node not owning it for {secs:.1} s",
            a.rate, a.symbols
        ),
    );
    t.row(
        "polls (errors)",
        format!("{polls} ({errors}) = {:.0}/s", polls as f64 / secs),
    );
    t.row("samples (new trade ids seen)", samples.len().to_string());
    t.row(
        "p50 trade time → visible on the other node",
        format!("{p50:.0} ms"),
    );
    t.row("p90", format!("{:.0} ms", percentile(&samples, 90.0)));
    t.row("p99", format!("{p99:.0} ms"));
    t.row("max", format!("{max:.0} ms"));
    t.row(
        "oldest trade first covered by each update: p50 / p99 / max",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            percentile(&oldest, 50.0),
            percentile(&oldest, 99.0),
            oldest.last().copied().unwrap_or(f64::NAN)
        ),
    );
    let p99_oldest = percentile(&oldest, 99.0);
    t.verdict(format!(
        "target p99 ≤ 50 ms: newest trade {} ({p99:.0} ms); oldest trade per update {} ({p99_oldest:.0} ms)",
        yes(p99 <= 50.0),
        yes(p99_oldest <= 50.0)
    ));
    Ok(t)
}

/// For each observed update, `seen_at − time` of the OLDEST trade it made visible (`prev + 1`;
/// trades superseded within one flush are never individually visible), from the simulator's
/// ground truth.
async fn oldest_trade_latencies(
    c: &Cluster,
    targets: &[(String, String, usize)],
    seen: &[(usize, u64, i64)],
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(seen.len());
    for (i, (sym, _, _)) in targets.iter().enumerate() {
        let mine: Vec<_> = seen.iter().filter(|s| s.0 == i).collect();
        let Some(from) = mine.iter().map(|s| s.1).min() else {
            continue;
        };
        let v = c
            .get_json(&format!(
                "http://{}/control/truth/trades?market=spot&symbol={sym}&fromId={from}&limit=1000000",
                c.sim.control
            ))
            .await?;
        let times: std::collections::HashMap<u64, i64> = v["trades"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| Some((t["id"].as_u64()?, t["time"].as_i64()?)))
                    .collect()
            })
            .unwrap_or_default();
        for s in mine {
            match times.get(&s.1) {
                Some(ts) => out.push((s.2 - ts) as f64),
                None => bail!("trade {} of {sym} not in the simulator's history", s.1),
            }
        }
    }
    Ok(out)
}
