//! End-to-end test harness: runs the real pricefeed binaries as child processes against the
//! Postgres and Redis that `./dev test` started, each test in its own database and Redis key
//! prefix, on ports chosen by the OS (binaries report them through `--addr-file`).
//!
//! Every wait is a poll on a condition with a deadline; children are stopped with SIGTERM (then
//! SIGKILL) when their handle drops, so a failing test leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PRICEFEED_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("debug")
}

/// Path of a workspace binary; fails clearly when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` (or ./dev test)",
        p.display()
    );
    p
}

/// Postgres admin URL (from ./dev test).
pub fn admin_database_url() -> String {
    std::env::var("PRICEFEED_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .expect("PRICEFEED_TEST_DATABASE_URL or DATABASE_URL must be set (run ./dev test)")
}

/// Redis URL (from ./dev test).
pub fn redis_url() -> String {
    std::env::var("PRICEFEED_TEST_REDIS_URL")
        .expect("PRICEFEED_TEST_REDIS_URL must be set (run ./dev test)")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique across concurrently running test processes.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory for one test.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    use sqlx::Connection;
    let admin = admin_database_url();
    let name = unique("pf_e2e");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .context("connect to the test Postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Ok(format!("{base}/{name}"))
}

/// Environment that points a binary at the test dependencies, with its own Redis key prefix.
pub fn base_env(database_url: &str) -> Vec<(String, String)> {
    vec![
        (
            "PRICEFEED_CONFIG".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml").into(),
        ),
        ("PRICEFEED__DATABASE__URL".into(), database_url.into()),
        ("PRICEFEED__REDIS__URL".into(), redis_url()),
        ("PRICEFEED__REDIS__KEY_PREFIX".into(), unique("pft")),
        ("PRICEFEED__NODE__HTTP__BIND".into(), "127.0.0.1:0".into()),
        (
            "PRICEFEED__SCHEDULER__HTTP__BIND".into(),
            "127.0.0.1:0".into(),
        ),
        ("PRICEFEED__WORKER__HTTP__BIND".into(), "127.0.0.1:0".into()),
        // The scheduler syncs instruments from the broker REST URLs. A test that seeds
        // instruments itself must not have them replaced by whatever simulator happens to run
        // on the default ports, so REST points nowhere unless a test sets it (later entries win).
        (
            "PRICEFEED__BROKER__SPOT_REST_URL".into(),
            "http://127.0.0.1:9".into(),
        ),
        (
            "PRICEFEED__BROKER__FUTURES_REST_URL".into(),
            "http://127.0.0.1:9".into(),
        ),
        (
            "PRICEFEED__BROKER__OPTIONS_REST_URL".into(),
            "http://127.0.0.1:9".into(),
        ),
        ("RUST_LOG".into(), "info".into()),
    ]
}

/// A running child process; SIGTERM then SIGKILL on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub addr: Option<String>,
}

impl Proc {
    /// Starts `binary args…` with `env`, logging to a file, passing `--addr-file`.
    pub fn start(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let dir = scratch_dir(name);
        let log = dir.join("out.log");
        let addr_file = dir.join("addr");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(binary);
        cmd.arg("--addr-file").arg(&addr_file).args(args);
        cmd.env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
            addr: None,
        })
    }

    /// Waits until the process has written its address file, returning `host:port`.
    pub async fn wait_addr(&mut self, deadline: Duration) -> anyhow::Result<String> {
        let addr_file = self.log.with_file_name("addr");
        let until = Instant::now() + deadline;
        loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && !s.is_empty()
            {
                self.addr = Some(s.clone());
                return Ok(s);
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited with {st} before listening:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > until {
                bail!(
                    "{} did not listen within {deadline:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts and waits until `/readyz` answers 200.
    pub async fn start_ready(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut p = Self::start(name, binary, args, env)?;
        let addr = p.wait_addr(Duration::from_secs(30)).await?;
        let url = format!("http://{addr}/readyz");
        wait_for(Duration::from_secs(30), || async {
            reqwest::get(&url)
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await
        .map_err(|_| anyhow::anyhow!("{name} not ready:\n{}", p.log_tail()))?;
        Ok(p)
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.addr.as_deref().expect("address known")
        )
    }

    /// Sends SIGTERM and waits for the exit status, up to `deadline`.
    pub async fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        signal(self.child.id(), "TERM");
        let until = Instant::now() + deadline;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > until {
                bail!(
                    "{} still running {deadline:?} after SIGTERM:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > until {
                bail!(
                    "{} did not exit within {deadline:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the process output, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a signal by PID with kill(1); the workspace forbids `unsafe`, so no libc call.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Polls `cond` every 50 ms until it returns true or `deadline` passes.
pub async fn wait_for<F, Fut>(deadline: Duration, mut cond: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
