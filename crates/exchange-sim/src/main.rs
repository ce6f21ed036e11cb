//! `pricefeed-sim`: runs the exchange simulator until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pricefeed_exchange_sim::config::SimFile;
use pricefeed_runtime::cli::{self, CommonArgs};
use pricefeed_runtime::config;
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_runtime::telemetry;

/// Binance-compatible exchange simulator.
#[derive(Debug, Parser)]
#[command(name = "pricefeed-sim", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Writes `{"spot":"ip:port","futures":…,"options":…,"control":…}` once every listener is bound.
    #[arg(long)]
    ports_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let common = args.common.clone();
    cli::run_main("pricefeed-sim", &common, |cfg: SimFile| run(args, cfg))
}

async fn run(args: Args, cfg: SimFile) -> anyhow::Result<()> {
    tracing::info!(config = %config::redacted(&cfg), "effective configuration");
    let _ = telemetry::metrics_handle();

    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    telemetry::spawn_upkeep(&shutdown);

    let handles = pricefeed_exchange_sim::start(cfg.sim.clone(), &shutdown).await?;
    let a = handles.addrs;
    for (name, addr) in [
        ("spot", a.spot),
        ("futures", a.futures),
        ("options", a.options),
        ("control", a.control),
    ] {
        tracing::info!(listener = name, %addr, "listening");
        println!("pricefeed-sim {name} listening on {addr}");
    }
    if let Some(path) = &args.ports_file {
        // Write then rename, so a harness polling for the file never reads half of it.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&a)?)?;
        std::fs::rename(&tmp, path)?;
    }
    if let Some(path) = &args.common.addr_file {
        // The control listener carries /readyz, which is what a harness waits on.
        std::fs::write(path, a.control.to_string())?;
    }

    shutdown.token().cancelled().await;
    let drained = shutdown
        .wait(Duration::from_millis(cfg.shutdown.drain_timeout_ms))
        .await;
    tracing::info!(drained, "pricefeed-sim stopped");
    Ok(())
}
