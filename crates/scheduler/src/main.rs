//! `pricefeed-scheduler`: run the `scheduler` (leader) or `worker` role, or apply migrations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pricefeed_runtime::{config, shutdown::Shutdown, telemetry};
use pricefeed_scheduler::app::{self, Role};
use pricefeed_scheduler::config::SchedulerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "pricefeed-scheduler",
    version,
    about = "pricefeed scheduler and worker"
)]
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
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Leader-elected cluster tasks.
    Scheduler,
    /// Queue consumers (email delivery, backfill jobs).
    Worker,
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
    let cfg: SchedulerConfig = match config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pricefeed-scheduler: invalid configuration: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    telemetry::init_tracing(&cfg.telemetry);
    pricefeed_runtime::tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "pricefeed-scheduler failed");
            eprintln!("pricefeed-scheduler: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, cfg: SchedulerConfig) -> anyhow::Result<()> {
    let role = match cli.cmd {
        Cmd::CheckConfig => {
            println!("{}", config::redacted(&cfg));
            return Ok(());
        }
        Cmd::Migrate => {
            let db = pricefeed_store::pg::connect(&cfg.database).await?;
            pricefeed_store::pg::migrate(&db).await?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Cmd::Scheduler => Role::Scheduler,
        Cmd::Worker => Role::Worker,
    };
    tracing::info!(role = role.as_str(), config = %config::redacted(&cfg), "effective configuration");
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let running = match app::start(&cfg, role, &shutdown).await {
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
