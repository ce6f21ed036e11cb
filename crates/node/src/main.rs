//! `pricefeed-node`: serve the API (default), apply migrations, or check the configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pricefeed_node::{app, config::NodeConfig};
use pricefeed_runtime::{config, shutdown::Shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(name = "pricefeed-node", version, about = "pricefeed API node")]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, env = "PRICEFEED_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Optional KEY=VALUE file with PRICEFEED__… overrides (process environment wins).
    #[arg(long, env = "PRICEFEED_ENV_FILE", global = true)]
    env_file: Option<PathBuf>,
    /// Write the bound HTTP address to this file once listening (for harnesses using port 0).
    #[arg(long, global = true)]
    addr_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration, print it redacted, and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = config::Sources {
        file: cli.config.clone(),
        env_file: cli.env_file.clone(),
    };
    let cfg: NodeConfig = match config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pricefeed-node: invalid configuration: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    telemetry::init_tracing(&cfg.telemetry);
    pricefeed_runtime::tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "pricefeed-node failed");
            eprintln!("pricefeed-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, cfg: NodeConfig) -> anyhow::Result<()> {
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::CheckConfig => {
            println!("{}", config::redacted(&cfg));
            Ok(())
        }
        Cmd::Migrate => {
            let db = pricefeed_store::pg::connect(&cfg.database).await?;
            pricefeed_store::pg::migrate(&db).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Cmd::Serve => {
            tracing::info!(config = %config::redacted(&cfg), "effective configuration");
            let shutdown = Shutdown::new();
            shutdown.listen_for_signals();
            let running = match app::start(&cfg, &shutdown).await {
                Ok(r) => r,
                Err(e) => {
                    shutdown.trigger();
                    shutdown.wait(Duration::from_secs(2)).await;
                    return Err(e);
                }
            };
            if let Some(f) = &cli.addr_file {
                std::fs::write(f, running.addr.to_string())?;
            }
            shutdown.token().cancelled().await;
            shutdown
                .wait(Duration::from_millis(cfg.shutdown.drain_timeout_ms))
                .await;
            Ok(())
        }
    }
}
