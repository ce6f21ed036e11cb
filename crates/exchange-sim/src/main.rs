//! `pricefeed-sim`: runs the exchange simulator until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pricefeed_exchange_sim::config::SimFile;
use pricefeed_runtime::config::{self, Sources};
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_runtime::telemetry;

/// Binance-compatible exchange simulator.
#[derive(Debug, Parser)]
#[command(name = "pricefeed-sim", version)]
struct Args {
    /// TOML config file (default `config/default.toml` when present).
    #[arg(long, env = "PRICEFEED_CONFIG")]
    config: Option<PathBuf>,
    /// `KEY=VALUE` file of `PRICEFEED__…` overrides.
    #[arg(long, env = "PRICEFEED_ENV_FILE")]
    env_file: Option<PathBuf>,
    /// Writes `{"spot":"ip:port","futures":…,"options":…,"control":…}` once every listener is bound.
    #[arg(long)]
    ports_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: SimFile = match config::load(&Sources {
        file: args.config.clone(),
        env_file: args.env_file.clone(),
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pricefeed-sim: {e}");
            std::process::exit(2);
        }
    };
    telemetry::init_tracing(&cfg.telemetry);
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

    shutdown.token().cancelled().await;
    let drained = shutdown
        .wait(Duration::from_millis(cfg.shutdown.drain_timeout_ms))
        .await;
    tracing::info!(drained, "pricefeed-sim stopped");
    Ok(())
}
