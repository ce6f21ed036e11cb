//! `pricefeed-node`: serve the API (default), apply migrations, check the configuration, or make
//! a registered user an admin.

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
    /// Give the registered account EMAIL the admin role (it applies from the next login).
    PromoteAdmin {
        /// The account's email, as registered.
        email: String,
    },
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
            Cmd::PromoteAdmin { email } => {
                let email = email.trim().to_ascii_lowercase();
                let pool = pricefeed_store::pg::connect(&cfg.database).await?;
                if pricefeed_store::alerts::promote(&pool, &email).await? {
                    println!("{email} is now an admin (sign in again to get an admin token)");
                    Ok(())
                } else {
                    anyhow::bail!(
                        "no account with email {email}; register it first (POST /api/v1/auth/register)"
                    )
                }
            }
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
