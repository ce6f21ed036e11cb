//! `pricefeed-scheduler`: run the `scheduler` (leader) or `worker` role, or apply migrations.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pricefeed_runtime::cli::{self, CommonArgs};
use pricefeed_runtime::config;
use pricefeed_scheduler::app::{self, Role};
use pricefeed_scheduler::config::SchedulerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "pricefeed-scheduler",
    version,
    about = "pricefeed scheduler and worker"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
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
    let common = cli.common.clone();
    cli::run_main(
        "pricefeed-scheduler",
        &common,
        |cfg: SchedulerConfig| async move {
            let role = match cli.cmd {
                Cmd::CheckConfig => {
                    println!("{}", config::redacted(&cfg));
                    return Ok(());
                }
                Cmd::Migrate => {
                    return pricefeed_store::pg::connect_and_migrate(&cfg.database).await;
                }
                Cmd::Scheduler => Role::Scheduler,
                Cmd::Worker => Role::Worker,
            };
            tracing::info!(role = role.as_str(), config = %config::redacted(&cfg), "effective configuration");
            let drain = Duration::from_millis(cfg.shutdown.drain_timeout_ms);
            cli::serve(
                cli.common.addr_file.as_deref(),
                drain,
                |shutdown| async move { Ok(app::start(&cfg, role, &shutdown).await?.addr) },
            )
            .await
        },
    )
}
