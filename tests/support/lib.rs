//! End-to-end test harness: runs the real pricefeed binaries as child processes against the
//! Postgres and Redis that `./dev test` started, each test in its own database and Redis key
//! prefix, on ports chosen by the OS (binaries report them through `--addr-file`).
//!
//! Every wait is a poll on a condition with a deadline; children are stopped with SIGTERM (then
//! SIGKILL) when their handle drops, so a failing test leaves nothing running.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub mod alert_ladder;
pub mod browser;
pub mod drill;
pub mod netns;
pub mod pg;
pub mod sentinel;
pub mod smtp;

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

/// Wall clock, ms since the epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
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

/// Token signing key of every test cluster (tests mint tokens with it to probe forgeries).
pub const TEST_JWT_SECRET: &str = "pricefeed-test-signing-key-0123456789abcdef";

/// A Redis server of one test's own (`PRICEFEED_TEST_REDIS_SERVER`, else `redis-server` on the
/// PATH), on a free loopback port, without persistence, for tests that stop or restart it. The
/// port stays the same across [`PrivateRedis::start`]s; dropping it kills the server.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// A stopped server with its port chosen; call [`Self::start`].
    pub fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            port,
            dir: scratch_dir("redis"),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (empty: nothing is persisted) and waits until it accepts connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin =
            std::env::var("PRICEFEED_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await
        .expect("private Redis accepts connections");
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Default for PrivateRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Registers `email` with `password` through `node` and signs in; returns the access token.
pub async fn sign_up(http: &reqwest::Client, node: &Proc, email: &str, password: &str) -> String {
    let creds = serde_json::json!({"email": email, "password": password});
    let r = http
        .post(node.url("/api/v1/auth/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register: {}", r.text().await.unwrap());
    let tok: Value = http
        .post(node.url("/api/v1/auth/token"))
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tok["access_token"]
        .as_str()
        .expect("an access token")
        .to_string()
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
        ("PRICEFEED__AUTH__JWT_SECRET".into(), TEST_JWT_SECRET.into()),
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
        // Every test client comes from 127.0.0.1, and the drills poll every node for every
        // instrument: the node's per-address and per-user limits (node.limits, auth) would
        // throttle them. tests/hostile.rs sets its own limits (later entries win).
        (
            "PRICEFEED__NODE__LIMITS__PER_ADDRESS_PER_SEC".into(),
            "1000000".into(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_ADDRESS_BURST".into(),
            "10000000".into(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_PER_SEC".into(),
            "1000000".into(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_BURST".into(),
            "10000000".into(),
        ),
        (
            "PRICEFEED__AUTH__REGISTER_PER_ADDRESS_PER_MIN".into(),
            "1000000".into(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_WRITES_BURST".into(),
            "1000".into(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_USER_WRITES_PER_MIN".into(),
            "10000".into(),
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
        Self::start_with(name, binary, args, env, |dir| {
            vec!["--addr-file".into(), dir.join("addr").into()]
        })
    }

    /// Like [`Proc::start`], but the arguments put before `args` come from `lead`, given the
    /// process's scratch directory (which also holds its `out.log`).
    pub fn start_with(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
        lead: impl FnOnce(&Path) -> Vec<OsString>,
    ) -> anyhow::Result<Self> {
        let dir = scratch_dir(name);
        let log = dir.join("out.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(binary);
        cmd.args(lead(&dir)).args(args);
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
        self.poll_exit(deadline, "still running", "after SIGTERM")
            .await
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.poll_exit(deadline, "did not exit within", "").await
    }

    /// Polls for the exit status until `deadline`; on timeout fails with
    /// "`{name} {what} {deadline:?}{after}`" and the log tail.
    async fn poll_exit(
        &mut self,
        deadline: Duration,
        what: &str,
        after: &str,
    ) -> anyhow::Result<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > until {
                let after = if after.is_empty() {
                    String::new()
                } else {
                    format!(" {after}")
                };
                bail!(
                    "{} {what} {deadline:?}{after}:\n{}",
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

/// An HTTP client whose every request gives up after `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("build HTTP client")
}

/// `GET url` as JSON; any transport or decoding error as a string (for polling loops).
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let res = http.get(url).send().await.map_err(|e| e.to_string())?;
    res.json().await.map_err(|e| e.to_string())
}

/// Sum of the samples of metric `name` in Prometheus exposition `text` whose line contains every
/// `labels` entry (e.g. `reason="order"`); 0 when there is none.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`metric_value`] read from `p`'s `/metrics`; 0 when the process does not answer.
pub async fn metric(http: &reqwest::Client, p: &Proc, name: &str, labels: &[&str]) -> f64 {
    let Ok(res) = http.get(p.url("/metrics")).send().await else {
        return 0.0;
    };
    metric_value(&res.text().await.unwrap_or_default(), name, labels)
}

/// The value of `key` in an environment built by [`base_env`] (the last entry wins, as for the
/// child process); panics when it is absent.
pub fn env_value(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{key} not in the environment"))
}

/// The Redis key prefix of `env` (`PRICEFEED__REDIS__KEY_PREFIX`).
pub fn key_prefix(env: &[(String, String)]) -> String {
    env_value(env, "PRICEFEED__REDIS__KEY_PREFIX")
}

/// Runs `pricefeed-scheduler migrate` with `env` to completion (within `deadline`), panicking
/// with its log when it fails.
pub async fn migrate(env: &[(String, String)], deadline: Duration) {
    let mut p = Proc::start("migrate", &bin("pricefeed-scheduler"), &["migrate"], env).unwrap();
    let st = p.wait_exit(deadline).await.unwrap();
    assert!(st.success(), "migrate failed:\n{}", p.log_tail());
}

/// Starts one ready `pricefeed-scheduler scheduler` per name, in order, with `env`.
pub async fn start_schedulers(names: &[&str], env: &[(String, String)]) -> Vec<Proc> {
    let mut out = Vec::new();
    for name in names {
        out.push(
            Proc::start_ready(name, &bin("pricefeed-scheduler"), &["scheduler"], env)
                .await
                .unwrap(),
        );
    }
    out
}

/// Starts one ready `pricefeed-node` per id, in order, with `env` plus
/// `PRICEFEED__NODE__ID=<id>`; each process is named after its id.
pub async fn start_nodes(ids: &[&str], env: &[(String, String)]) -> Vec<Proc> {
    let mut out = Vec::new();
    for id in ids {
        let mut e = env.to_vec();
        e.push(("PRICEFEED__NODE__ID".into(), id.to_string()));
        out.push(
            Proc::start_ready(id, &bin("pricefeed-node"), &[], &e)
                .await
                .unwrap(),
        );
    }
    out
}

/// The markets the simulator serves, as (broker config key part, ports-file key).
const SIM_MARKETS: [(&str, &str); 3] = [
    ("SPOT", "spot"),
    ("FUTURES", "futures"),
    ("OPTIONS", "options"),
];

/// [`Sim::start`] overrides for a small catalogue that trades on every instrument: no
/// quarterlies, one option expiry with one strike, nothing halted, no listing churn. Tests add
/// `UNDERLYINGS` and `HOT_SYMBOLS`.
pub const SMALL_CATALOGUE: [(&str, &str); 7] = [
    ("QUARTERLIES", "0"),
    ("OPTION_EXPIRIES", "1"),
    ("OPTION_STRIKES", "1"),
    ("INITIAL_HALTED_RATIO", "0.0"),
    ("HOT_RATE_PER_SEC", "50.0"),
    ("TAIL_RATE_PER_MIN", "600.0"),
    ("LISTING_INTERVAL_MS", "0"),
];

/// The `pricefeed-sim` binary: `PRICEFEED_SIM_BIN` when set, else the workspace build.
pub fn sim_bin() -> PathBuf {
    std::env::var("PRICEFEED_SIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| bin("pricefeed-sim"))
}

/// A running `pricefeed-sim` (stopped like any [`Proc`] on drop) and the addresses it reported
/// through `--ports-file`: `{"spot", "futures", "options", "control"}` → `host:port`. The
/// process's `addr` is the control address, so `sim.proc.url("/control/…")` works.
#[derive(Debug)]
pub struct Sim {
    pub proc: Proc,
    pub ports: Value,
    overrides: Vec<(String, String)>,
}

impl Sim {
    /// [`Sim::start`] with [`SMALL_CATALOGUE`] plus `extra` (e.g. `UNDERLYINGS`, `HOT_SYMBOLS`).
    pub async fn start_small(extra: &[(&str, &str)]) -> Sim {
        Sim::start(&[&SMALL_CATALOGUE[..], extra].concat()).await
    }

    /// Starts the simulator on OS-chosen ports with the repository's default config and
    /// `overrides` as `PRICEFEED__SIM__<KEY>=<value>` (e.g. `("UNDERLYINGS", "3")`), and waits
    /// (30 s at most) until it has written its ports file; panics with its log otherwise.
    pub async fn start(overrides: &[(&str, &str)]) -> Sim {
        let overrides = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_on(None, overrides).await
    }

    /// Starts a new simulator with the same overrides on the same addresses as this one (which
    /// must have stopped, e.g. with `sim.proc.terminate(…)`), to bring a broker back.
    pub async fn restart_same_ports(&self) -> Sim {
        Self::start_on(Some(&self.ports), self.overrides.clone()).await
    }

    async fn start_on(ports: Option<&Value>, overrides: Vec<(String, String)>) -> Sim {
        let bind = |k: &str| {
            ports
                .and_then(|p| p[k].as_str())
                .unwrap_or("127.0.0.1:0")
                .to_string()
        };
        let mut env: Vec<(String, String)> = vec![
            (
                "PRICEFEED_CONFIG".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml").into(),
            ),
            ("RUST_LOG".into(), "info".into()),
        ];
        for k in ["spot", "futures", "options", "control"] {
            env.push((
                format!("PRICEFEED__SIM__{}_BIND", k.to_uppercase()),
                bind(k),
            ));
        }
        for (k, v) in &overrides {
            env.push((format!("PRICEFEED__SIM__{k}"), v.clone()));
        }
        // `Proc::start` passes `--addr-file`; the simulator reports its addresses through
        // `--ports-file` instead, written next to the log.
        let mut proc = Proc::start_with("sim", &sim_bin(), &[], &env, |dir| {
            vec!["--ports-file".into(), dir.join("ports.json").into()]
        })
        .unwrap();
        let ports_file = proc.log.with_file_name("ports.json");
        let until = Instant::now() + Duration::from_secs(30);
        let ports = loop {
            if let Ok(s) = std::fs::read_to_string(&ports_file)
                && let Ok(v) = serde_json::from_str::<Value>(&s)
            {
                break v;
            }
            if let Ok(Some(st)) = proc.child.try_wait() {
                panic!("sim exited with {st}:\n{}", proc.log_tail());
            }
            assert!(Instant::now() < until, "sim not up:\n{}", proc.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        proc.addr = ports["control"].as_str().map(str::to_string);
        Sim {
            proc,
            ports,
            overrides,
        }
    }

    /// `host:port` of one of the simulator's listeners (`spot`, `futures`, `options`,
    /// `control`).
    pub fn port(&self, which: &str) -> String {
        self.ports[which]
            .as_str()
            .unwrap_or_else(|| panic!("no {which} in the ports file: {}", self.ports))
            .to_string()
    }

    /// `PRICEFEED__BROKER__{SPOT,FUTURES,OPTIONS}_REST_URL` pointing at this simulator.
    pub fn rest_env(&self) -> Vec<(String, String)> {
        self.urls_env("REST", "http")
    }

    /// `PRICEFEED__BROKER__{SPOT,FUTURES,OPTIONS}_WS_URL` pointing at this simulator.
    pub fn ws_env(&self) -> Vec<(String, String)> {
        self.urls_env("WS", "ws")
    }

    /// `PRICEFEED__BROKER__<MARKET>_<kind>_URL` = `<scheme>://<market's address>` per market.
    fn urls_env(&self, kind: &str, scheme: &str) -> Vec<(String, String)> {
        SIM_MARKETS
            .iter()
            .map(|(k, m)| {
                (
                    format!("PRICEFEED__BROKER__{k}_{kind}_URL"),
                    format!("{scheme}://{}", self.port(m)),
                )
            })
            .collect()
    }

    /// Both [`Sim::rest_env`] and [`Sim::ws_env`]: the whole broker pointed at this simulator.
    pub fn broker_env(&self) -> Vec<(String, String)> {
        let mut env = self.rest_env();
        env.extend(self.ws_env());
        env
    }

    /// The simulator's catalogue (`GET /control/catalogue`).
    pub async fn catalogue(&self, http: &reqwest::Client) -> Value {
        http.get(self.proc.url("/control/catalogue"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Inserts every trading instrument of the simulator's catalogue; returns their keys.
pub async fn seed_from_catalogue(http: &reqwest::Client, sim: &Sim, db: &str) -> BTreeSet<String> {
    let cat = sim.catalogue(http).await;
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let mut keys = BTreeSet::new();
    let list = cat["instruments"].as_array().unwrap();
    for i in list
        .iter()
        .filter(|i| i["market"] == "spot" && i["status"] == "TRADING")
    {
        sqlx::query(
            "INSERT INTO underlyings (symbol, base_asset, quote_asset, status) VALUES ($1, $2, $3, 'TRADING')",
        )
        .bind(i["symbol"].as_str().unwrap())
        .bind(i["base"].as_str().unwrap())
        .bind(i["quote"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();
        keys.insert(format!("spot:{}", i["symbol"].as_str().unwrap()));
    }
    for i in list
        .iter()
        .filter(|i| i["market"] != "spot" && i["status"] == "TRADING" && i["removed"] == false)
    {
        let (market, kind) = match (i["market"].as_str().unwrap(), i["kind"].as_str().unwrap()) {
            ("futures", "perpetual") => ("usdm", "perpetual"),
            ("futures", _) => ("usdm", "future"),
            (_, _) => ("options", "option"),
        };
        let n = sqlx::query(
            "INSERT INTO derivatives (symbol, underlying_id, kind, market, status, strike, option_side, expiry_at) \
             SELECT $1, id, $2::derivative_kind, $3, 'TRADING', $5::numeric, $6, \
                    CASE WHEN $2 = 'perpetual' THEN NULL ELSE now() + interval '30 days' END \
             FROM underlyings WHERE symbol = $4",
        )
        .bind(i["symbol"].as_str().unwrap())
        .bind(kind)
        .bind(market)
        .bind(i["pair"].as_str().unwrap())
        .bind(i["strike"].as_str().map(str::to_string).or_else(|| i["strike"].as_f64().map(|f| f.to_string())))
        .bind(i["call"].as_bool().map(|c| if c { "CALL" } else { "PUT" }))
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
        if n == 1 {
            keys.insert(format!("{market}:{}", i["symbol"].as_str().unwrap()));
        }
    }
    pool.close().await;
    keys
}

/// Per instrument, whether the cluster-wide counters in Redis say "every id from the first
/// accepted to the latest price, each once": `Err` lists the instruments that do not (yet).
pub async fn counters_exact(
    r: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    keys: &BTreeSet<String>,
) -> Result<String, Vec<String>> {
    let names = pricefeed_store::protocol::Keys::new(prefix);
    let (accepted, first, prices): (
        std::collections::HashMap<String, u64>,
        std::collections::HashMap<String, u64>,
        std::collections::HashMap<String, String>,
    ) = redis::pipe()
        .hgetall(names.accepted())
        .hgetall(names.first_accepted())
        .hgetall(names.prices())
        .query_async(r)
        .await
        .unwrap();
    let mut bad = Vec::new();
    let mut total = 0;
    for k in keys {
        let last = prices
            .get(k)
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .and_then(|v| v["trade_id"].as_u64());
        match (accepted.get(k), first.get(k), last) {
            (Some(&a), Some(&f), Some(l)) if a == l - f + 1 => total += a,
            (a, f, l) => bad.push(format!("{k}: accepted {a:?}, ids {f:?}..={l:?}")),
        }
    }
    if bad.is_empty() {
        Ok(format!("{} instruments, {total} trades", keys.len()))
    } else {
        Err(bad)
    }
}

/// Checks that the committed file `rel` (from the repository root) equals `generated`, or writes
/// it when `PRICEFEED_REGENERATE` is set. Panics naming the first differing line, what the file
/// is generated from (`source`) and the command that regenerates it.
pub fn check_generated(rel: &str, generated: &str, source: &str, regenerate: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if std::env::var_os("PRICEFEED_REGENERATE").is_some() {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "{rel} is out of date with {source} (first difference at line {}:\n  committed: \
             {:?}\n  generated: {:?}).\nRegenerate it with:\n  {regenerate}",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            generated.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
