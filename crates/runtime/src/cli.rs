//! What every pricefeed binary does around its own work: the common flags, loading and
//! validating the configuration (exit 78 naming the key), logging and TLS set-up, the tokio
//! runtime, and the serve lifecycle (signals → start → report address → drain).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{self, Sources, TelemetryConfig, Validate};
use crate::shutdown::Shutdown;

/// Exit code of a configuration error (sysexits `EX_CONFIG`), so supervisors can tell it apart.
pub const EXIT_CONFIG: u8 = 78;

/// Flags shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Configuration file (TOML); defaults to `config/default.toml` when present.
    #[arg(long, env = "PRICEFEED_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Optional KEY=VALUE file with PRICEFEED__… overrides (process environment wins).
    #[arg(long, env = "PRICEFEED_ENV_FILE", global = true)]
    pub env_file: Option<PathBuf>,
    /// Write the bound HTTP address to this file once listening (for harnesses using port 0).
    #[arg(long, global = true)]
    pub addr_file: Option<PathBuf>,
}

impl CommonArgs {
    pub fn sources(&self) -> Sources {
        Sources {
            file: self.config.clone(),
            env_file: self.env_file.clone(),
        }
    }
}

/// A binary's configuration: validated, loggable, with the logging section the lifecycle needs.
pub trait BinaryConfig: DeserializeOwned + Serialize + Validate {
    fn telemetry(&self) -> &TelemetryConfig;
}

/// Loads `C`, sets up logging and TLS, and runs `body` to completion on a multi-threaded runtime.
/// A configuration error exits with [`EXIT_CONFIG`] and names the key; any other error is
/// logged with its cause chain and exits 1 — never a panic message.
pub fn run_main<C, F, Fut>(bin: &str, args: &CommonArgs, body: F) -> ExitCode
where
    C: BinaryConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cfg: C = match config::load(&args.sources()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{bin}: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::telemetry::init_tracing(cfg.telemetry());
    crate::tls::install_crypto_provider();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(body(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "{bin} failed");
            eprintln!("{bin}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The serve lifecycle: installs signal handling, runs `start` (which spawns its tasks on the
/// given [`Shutdown`] and returns the bound address), writes `addr_file`, then waits for
/// shutdown and drains within `drain`. A failed start stops whatever it had spawned.
pub async fn serve<F, Fut>(
    addr_file: Option<&Path>,
    drain: Duration,
    start: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<SocketAddr>>,
{
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let addr = match start(shutdown.clone()).await {
        Ok(a) => a,
        Err(e) => {
            shutdown.trigger();
            shutdown.wait(Duration::from_secs(2)).await;
            return Err(e);
        }
    };
    if let Some(f) = addr_file {
        // Write then rename: a harness polling for the file never reads half of it.
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())?;
        std::fs::rename(&tmp, f)?;
    }
    shutdown.token().cancelled().await;
    shutdown.wait(drain).await;
    Ok(())
}
