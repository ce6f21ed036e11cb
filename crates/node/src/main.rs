//! `pricefeed-node`: serve the API (default), apply migrations, or check the configuration.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pricefeed_node::{app, config::NodeConfig};
use pricefeed_runtime::cli::{self, CommonArgs};
use pricefeed_runtime::config;

#[derive(Debug, Parser)]
#[command(name = "pricefeed-node", version, about = "pricefeed API node")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
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
    let common = cli.common.clone();
    cli::run_main("pricefeed-node", &common, |cfg: NodeConfig| async move {
        match cli.cmd.unwrap_or(Cmd::Serve) {
            Cmd::CheckConfig => {
                println!("{}", config::redacted(&cfg));
                Ok(())
            }
            Cmd::Migrate => pricefeed_store::pg::connect_and_migrate(&cfg.database).await,
            Cmd::Serve => {
                tracing::info!(config = %config::redacted(&cfg), "effective configuration");
                let drain = Duration::from_millis(cfg.shutdown.drain_timeout_ms);
                cli::serve(
                    cli.common.addr_file.as_deref(),
                    drain,
                    |shutdown| async move { Ok(app::start(&cfg, &shutdown).await?.addr) },
                )
                .await
            }
        }
    })
}
