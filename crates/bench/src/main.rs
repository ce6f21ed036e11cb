//! `pricefeed-bench`: cluster and storage benchmarks, run against the real release binaries
//! (and, for `history-*`, the store's own code against a private Postgres).
//!
//! Each subcommand starts its own private Postgres and Redis, the exchange simulator, the
//! scheduler and one or two API nodes on loopback (ports from the OS), measures, prints a
//! Markdown table for `docs/benchmarks.md`, and stops every child by PID (also on error,
//! Ctrl-C or SIGTERM). Durations are bounded; logs stay in the run directory on failure.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/pricefeed-bench e2e|latency|prices|memory|history-write|history-read|reconcile|alert-index|alert-push|http-stack|fanout|email|all
//! ```

mod alert_index;
mod alert_push;
mod cluster;
mod e2e;
mod email;
mod fanout;
mod history;
mod http_stack;
mod latency;
mod memory;
mod prices;
mod procs;
mod reconcile;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::cluster::{Cluster, Env};
use crate::report::Table;

#[derive(Debug, Parser)]
#[command(
    name = "pricefeed-bench",
    about = "pricefeed cluster benchmarks (issue 5)"
)]
struct Cli {
    /// Directory of the release binaries (default: this binary's directory).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Base configuration (default: the first `config/default.toml` walking up from the working
    /// directory, then from the binary's directory).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Keep the run directory (logs, Postgres data) even when the run succeeds.
    #[arg(long, global = true)]
    keep: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Simulator (load mode) → one node → Redis: sustained trades/s, loss, CPU per trade.
    E2e(e2e::Args),
    /// Trade time → visible on the non-owning node, at 20 000 trades/s (p50/p99/max).
    Latency(latency::Args),
    /// wrk on GET /api/v1/prices/{symbol}: node vs bare axum handler, one run.
    Prices(prices::Args),
    /// RSS of a node holding ≥ 2 000 instruments at steady state.
    Memory(memory::Args),
    /// The trade writer at a fixed rate against a plain COPY of the same rows; bytes per trade.
    HistoryWrite(history::WriteArgs),
    /// As-of VWAP and candle latency with ≥ 10 M trades stored.
    HistoryRead(history::ReadArgs),
    /// REST reconciliation: backlog catch-up rate, steady-state rate, weight per 1 000 trades.
    Reconcile(reconcile::Args),
    /// Alert index vs a naive scan: ns per trade and bytes per alert with 1 M alerts.
    AlertIndex(alert_index::Args),
    /// Trigger → the user's WebSocket on another node: latency p50/p99.
    AlertPush(alert_push::Args),
    /// Each layer of the shared HTTP stack alone vs a bare handler (req/s ratios).
    HttpStack(http_stack::Args),
    /// ≥ 20 000 client WebSockets on one node subscribed to one hot instrument: delivery
    /// latency p50/p99, node CPU per frame and memory per connection.
    Fanout(fanout::Args),
    /// (internal) One client process of `fanout`.
    #[command(hide = true)]
    FanoutClient(fanout::ClientArgs),
    /// Alert emails: triggers/s committed → accepted by an SMTP sink (latency p50/p99, sent/s).
    Email(email::Args),
    /// All four with their defaults, one after the other.
    All,
}

/// The first `n` spot pairs of the catalogue: the load-mode symbols.
pub async fn load_symbols(c: &Cluster, n: usize) -> anyhow::Result<Vec<String>> {
    let v = c
        .get_json(&format!(
            "http://{}/control/catalogue?market=spot",
            c.sim.control
        ))
        .await?;
    let mut spot: Vec<(u64, String)> = v["instruments"]
        .as_array()
        .context("catalogue")?
        .iter()
        .filter_map(|i| {
            Some((
                i["underlying_no"].as_u64()?,
                i["symbol"].as_str()?.to_string(),
            ))
        })
        .collect();
    spot.sort();
    Ok(spot.into_iter().take(n).map(|(_, s)| s).collect())
}

async fn run_one(env: &Env, cmd: &Cmd) -> anyhow::Result<Vec<Table>> {
    let sub = |name: &str| Env {
        run_dir: env.run_dir.join(name),
        ..env.clone()
    };
    Ok(match cmd {
        Cmd::E2e(a) => vec![e2e::run(&sub("e2e"), a).await?],
        Cmd::Latency(a) => vec![latency::run(&sub("latency"), a).await?],
        Cmd::Prices(a) => vec![prices::run(&sub("prices"), a).await?],
        Cmd::Memory(a) => vec![memory::run(&sub("memory"), a).await?],
        Cmd::HistoryWrite(a) => vec![history::write(&sub("history-write"), a).await?],
        Cmd::HistoryRead(a) => vec![history::read(&sub("history-read"), a).await?],
        Cmd::Reconcile(a) => vec![reconcile::run(&sub("reconcile"), a).await?],
        Cmd::AlertIndex(a) => vec![alert_index::run(a)?],
        Cmd::AlertPush(a) => vec![alert_push::run(&sub("alert-push"), a).await?],
        Cmd::HttpStack(a) => vec![http_stack::run(a).await?],
        Cmd::Fanout(a) => vec![fanout::run(&sub("fanout"), a).await?],
        Cmd::FanoutClient(_) => unreachable!("handled in main"),
        Cmd::Email(a) => vec![email::run(&sub("email"), a).await?],
        Cmd::All => {
            let mut out = Vec::new();
            // Parse each subcommand's defaults through clap so they match the single runs.
            for name in ["e2e", "latency", "prices", "memory"] {
                let cli = Cli::try_parse_from(["pricefeed-bench", name])?;
                let t = Box::pin(run_one(env, &cli.cmd)).await?;
                for t in t {
                    println!("{t}");
                    out.push(t);
                }
            }
            return Ok(out);
        }
    })
}

async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::FanoutClient(a) = &cli.cmd {
        return match fanout::client(a).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fanout-client: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let bin_dir = cli.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("target/release"))
    });
    let config = match cli
        .config
        .clone()
        .or_else(|| cluster::find_config(std::env::current_dir().ok().as_deref(), &bin_dir))
    {
        Some(c) => c,
        // These two start no cluster.
        None if matches!(cli.cmd, Cmd::HttpStack(_) | Cmd::AlertIndex(_)) => PathBuf::new(),
        None => {
            eprintln!(
                "pricefeed-bench: no config/default.toml above the working directory or {}; \
                 run it from the repository or pass --config",
                bin_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let sub = match &cli.cmd {
        Cmd::E2e(_) => "e2e",
        Cmd::Latency(_) => "latency",
        Cmd::Prices(_) => "prices",
        Cmd::Memory(_) => "memory",
        Cmd::HistoryWrite(_) => "history-write",
        Cmd::HistoryRead(_) => "history-read",
        Cmd::Reconcile(_) => "reconcile",
        Cmd::AlertIndex(_) => "alert-index",
        Cmd::AlertPush(_) => "alert-push",
        Cmd::HttpStack(_) => "http-stack",
        Cmd::Fanout(_) => "fanout",
        Cmd::FanoutClient(_) => "fanout-client",
        Cmd::Email(_) => "email",
        Cmd::All => "all",
    };
    let env = Env {
        bin_dir,
        config,
        run_dir: cluster::run_dir(sub),
    };
    // Dropping the run future (signal) drops the cluster, which stops every child by PID.
    let res = tokio::select! {
        r = run_one(&env, &cli.cmd) => r,
        () = terminated() => Err(anyhow::anyhow!("interrupted; children stopped")),
    };
    match res {
        Ok(tables) => {
            if !matches!(cli.cmd, Cmd::All) {
                for t in tables {
                    println!("{t}");
                }
            }
            if cli.keep {
                eprintln!("run directory kept: {}", env.run_dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&env.run_dir);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pricefeed-bench {sub}: {e:#}");
            eprintln!("logs: {}", env.run_dir.display());
            ExitCode::FAILURE
        }
    }
}
