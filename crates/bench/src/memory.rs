//! `memory`: one node holding ≥ 2 000 instruments (simulator catalogue sized for it, default
//! trade rates, no listing changes) at steady state: `VmRSS` of the node (and of the simulator)
//! from `/proc/<pid>/status`, sampled through the warm-up and at its end.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cluster::{Cluster, Env, Spec};
use crate::e2e::yes;
use crate::procs::rss_mib;
use crate::report::Table;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Underlyings in the simulator catalogue (20 instruments each with the default
    /// quarterlies/expiries/strikes).
    #[arg(long, default_value_t = 105)]
    pub underlyings: u32,
    /// Instruments the node must hold.
    #[arg(long, default_value_t = 2000)]
    pub instruments: usize,
    /// Seconds of steady state after every instrument is live, before the final reading.
    #[arg(long, default_value_t = 60)]
    pub warmup: u64,
}

pub async fn run(env: &Env, a: &Args) -> anyhow::Result<Table> {
    let spec = Spec {
        sim: vec![
            ("UNDERLYINGS", a.underlyings.to_string()),
            ("LISTING_INTERVAL_MS", "0".into()),
        ],
        nodes: 1,
    };
    let mut c = Cluster::start(env, &spec).await?;
    let tradable = c.sim_tradable().await?;
    if tradable.len() < a.instruments {
        bail!(
            "the simulator has {} tradable instruments with {} underlyings; raise --underlyings",
            tradable.len(),
            a.underlyings
        );
    }
    eprintln!(
        "==> waiting for the node to ingest ≥ {} of {} tradable instruments",
        a.instruments,
        tradable.len()
    );
    let t_start = Instant::now();
    let per_node = c
        .wait_ingesting(a.instruments, &[], Duration::from_secs(180))
        .await?;
    let held = per_node[0].len();
    let live_after = t_start.elapsed().as_secs_f64();
    let pid = c.nodes[0].proc.pid();
    let sim_pid = c.sim.proc.pid();
    let at_live = rss_mib(pid)?;
    eprintln!(
        "==> {held} instruments live after {live_after:.0} s; node RSS {at_live:.1} MiB; steady state {} s",
        a.warmup
    );
    let mut peak = at_live;
    let mut series = vec![format!("{at_live:.0}")];
    let until = Instant::now() + Duration::from_secs(a.warmup);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10).min(until - Instant::now())).await;
        c.check_alive()?;
        let r = rss_mib(pid)?;
        peak = peak.max(r);
        series.push(format!("{r:.0}"));
    }
    let node_rss = rss_mib(pid)?;
    let sim_rss = rss_mib(sim_pid)?;
    let conns = c.ingest_view(0).await?["connections"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    let mut t = Table::new(
        "memory",
        &format!(
            "sim.underlyings {}, default rates, 1 node, {} s steady state",
            a.underlyings, a.warmup
        ),
    );
    t.row(
        "instruments held by the node (live)",
        format!(
            "{held} of {} tradable, {conns} WS connections",
            tradable.len()
        ),
    );
    t.row(
        "node VmRSS after steady state",
        format!("{node_rss:.1} MiB"),
    );
    t.row("node VmRSS every 10 s (MiB)", series.join(" → "));
    t.row("node peak VmRSS sampled", format!("{peak:.1} MiB"));
    t.row("simulator VmRSS", format!("{sim_rss:.1} MiB"));
    t.verdict(format!(
        "target < 150 MiB at {} instruments: {}",
        a.instruments,
        yes(node_rss < 150.0 && peak < 150.0 && held >= a.instruments)
    ));
    Ok(t)
}
