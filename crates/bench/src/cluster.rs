//! A benchmark cluster: private Redis and Postgres, the exchange simulator (`--ports-file`), the
//! scheduler (instrument sync against the simulator, slice assignment) and N API nodes
//! (`--addr-file`), all on loopback ports picked by the OS. Dropping it stops the nodes, the
//! scheduler, the simulator, then Redis and Postgres, each by PID.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::procs::{Postgres, Proc, Redis};

const START: Duration = Duration::from_secs(60);

/// Where the release binaries are and where a run keeps its logs and data.
#[derive(Debug, Clone)]
pub struct Env {
    pub bin_dir: PathBuf,
    pub config: PathBuf,
    pub run_dir: PathBuf,
}

impl Env {
    pub fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.bin_dir.join(name);
        if !p.exists() {
            bail!(
                "{} not built: run `cargo build --release --workspace --bins` first",
                p.display()
            );
        }
        Ok(p)
    }
}

/// A running simulator and its listener addresses.
#[derive(Debug)]
pub struct Sim {
    pub proc: Proc,
    pub spot: String,
    pub futures: String,
    pub options: String,
    pub control: String,
}

/// A running API node.
#[derive(Debug)]
pub struct Node {
    pub proc: Proc,
    pub addr: String,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Everything one benchmark needs; field order is the stop order (nodes first, Postgres last).
#[derive(Debug)]
pub struct Cluster {
    /// Worker processes started with [`Cluster::start_worker`].
    pub workers: Vec<Proc>,
    pub nodes: Vec<Node>,
    pub scheduler: Proc,
    pub sim: Sim,
    pub redis: Redis,
    pub pg: Postgres,
    pub http: reqwest::Client,
    /// The environment every child got.
    base: Vec<(String, String)>,
}

/// Cluster shape: simulator overrides (`PRICEFEED__SIM__<KEY>`) and the node count.
#[derive(Debug, Clone)]
pub struct Spec {
    pub sim: Vec<(&'static str, String)>,
    pub nodes: usize,
}

impl Cluster {
    pub async fn start(env: &Env, spec: &Spec) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        std::fs::create_dir_all(&env.run_dir)?;
        eprintln!("==> run directory {}", env.run_dir.display());
        let pg = Postgres::start(&env.run_dir).await?;
        let redis = Redis::start(&env.run_dir).await?;
        let sim = start_sim(env, &spec.sim).await?;
        wait_http_ok(&http, &format!("http://{}/readyz", sim.control), START).await?;

        let base = base_env(env, &pg.url, &redis.url, &sim);
        let sched_addr_file = env.run_dir.join("scheduler.addr");
        let mut scheduler = Proc::spawn(
            &env.run_dir,
            "scheduler",
            &env.bin("pricefeed-scheduler")?,
            &[
                "--addr-file".into(),
                sched_addr_file.to_string_lossy().into(),
                "scheduler".into(),
            ],
            &base,
        )?;
        let sched_addr = scheduler.wait_file(&sched_addr_file, START).await?;
        wait_http_ok(&http, &format!("http://{sched_addr}/readyz"), START).await?;

        let mut nodes = Vec::new();
        for i in 1..=spec.nodes {
            let name = format!("node{i}");
            let addr_file = env.run_dir.join(format!("{name}.addr"));
            let mut e = base.clone();
            e.push(("PRICEFEED__NODE__ID".into(), name.clone()));
            let mut proc = Proc::spawn(
                &env.run_dir,
                &name,
                &env.bin("pricefeed-node")?,
                &["--addr-file".into(), addr_file.to_string_lossy().into()],
                &e,
            )?;
            let addr = proc.wait_file(&addr_file, START).await?;
            wait_http_ok(&http, &format!("http://{addr}/readyz"), START).await?;
            nodes.push(Node { proc, addr });
        }
        Ok(Self {
            workers: Vec::new(),
            base,
            nodes,
            scheduler,
            sim,
            redis,
            pg,
            http,
        })
    }

    /// Starts a `pricefeed-scheduler worker` with the cluster's environment plus `extra`;
    /// returns its ops address.
    pub async fn start_worker(
        &mut self,
        env: &Env,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let name = format!("worker{}", self.workers.len() + 1);
        let addr_file = env.run_dir.join(format!("{name}.addr"));
        let mut e = self.base.clone();
        e.push(("PRICEFEED__WORKER__HTTP__BIND".into(), "127.0.0.1:0".into()));
        for (k, v) in extra {
            e.push((k.to_string(), v.to_string()));
        }
        let mut proc = Proc::spawn(
            &env.run_dir,
            &name,
            &env.bin("pricefeed-scheduler")?,
            &[
                "--addr-file".into(),
                addr_file.to_string_lossy().into(),
                "worker".into(),
            ],
            &e,
        )?;
        let addr = proc.wait_file(&addr_file, START).await?;
        wait_http_ok(&self.http, &format!("http://{addr}/readyz"), START).await?;
        self.workers.push(proc);
        Ok(addr)
    }

    /// Fails (with the log tail) if any child process exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.sim.proc.check_alive()?;
        self.scheduler.check_alive()?;
        for n in &mut self.nodes {
            n.proc.check_alive()?;
        }
        Ok(())
    }

    /// `GET url` as text (e.g. `/metrics`).
    pub async fn get_text(&self, url: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?)
    }

    pub async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = r.status();
        let v: Value = r.json().await.with_context(|| format!("GET {url}: body"))?;
        if !status.is_success() {
            bail!("GET {url}: {status} {v}");
        }
        Ok(v)
    }

    /// `GET /control/stats` of the simulator.
    pub async fn sim_stats(&self) -> anyhow::Result<Value> {
        self.get_json(&format!("http://{}/control/stats", self.sim.control))
            .await
    }

    /// The simulator's next trade id of a symbol (ground truth, no trades returned).
    pub async fn sim_next_id(&self, market: &str, symbol: &str) -> anyhow::Result<u64> {
        let v = self
            .get_json(&format!(
                "http://{}/control/truth/trades?market={market}&symbol={symbol}&start=9999999999999&limit=1",
                self.sim.control
            ))
            .await?;
        v["nextId"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no nextId in {v}"))
    }

    /// Trading, listed instruments of the simulator's catalogue: (market, symbol).
    pub async fn sim_tradable(&self) -> anyhow::Result<Vec<(String, String)>> {
        let v = self
            .get_json(&format!("http://{}/control/catalogue", self.sim.control))
            .await?;
        Ok(v["instruments"]
            .as_array()
            .context("catalogue instruments")?
            .iter()
            .filter(|i| i["status"] == "TRADING" && i["removed"] != true)
            .map(|i| {
                (
                    i["market"].as_str().unwrap_or_default().to_string(),
                    i["symbol"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// `GET /api/v1/cluster/ingest` of node `i`.
    pub async fn ingest_view(&self, i: usize) -> anyhow::Result<Value> {
        self.get_json(&self.nodes[i].url("/api/v1/cluster/ingest"))
            .await
    }

    /// Waits until the nodes together ingest at least `min` instruments, all live, and every
    /// key in `must` is live somewhere. Returns the per-node live key lists.
    pub async fn wait_ingesting(
        &mut self,
        min: usize,
        must: &[String],
        deadline: Duration,
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let until = Instant::now() + deadline;
        let mut last = String::new();
        loop {
            self.check_alive()?;
            let mut per_node = Vec::new();
            let mut pending = 0usize;
            for i in 0..self.nodes.len() {
                match self.ingest_view(i).await {
                    Ok(v) => {
                        let list = v["instruments"].as_array().cloned().unwrap_or_default();
                        pending += list.iter().filter(|x| x["live"] != true).count();
                        per_node.push(
                            list.iter()
                                .filter(|x| x["live"] == true)
                                .filter_map(|x| x["key"].as_str().map(String::from))
                                .collect::<Vec<_>>(),
                        );
                    }
                    Err(e) => {
                        last = e.to_string();
                        per_node.push(Vec::new());
                    }
                }
            }
            let total: usize = per_node.iter().map(Vec::len).sum();
            let missing: Vec<&String> = must
                .iter()
                .filter(|k| !per_node.iter().any(|l| l.contains(k)))
                .collect();
            if total >= min && pending == 0 && missing.is_empty() {
                return Ok(per_node);
            }
            if Instant::now() > until {
                bail!(
                    "nodes ingest {total} live instruments ({pending} pending, want ≥ {min}), \
                     missing {missing:?} after {deadline:?}; last error: {last}\nnode1 log:\n{}",
                    self.nodes[0].proc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Environment every cluster binary gets: our Postgres, Redis and simulator, ports from the OS,
/// instrument sync every few seconds (first sync happens at start), fast dead-node detection.
fn base_env(env: &Env, db: &str, redis: &str, sim: &Sim) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        (
            "PRICEFEED_CONFIG".into(),
            env.config.to_string_lossy().into(),
        ),
        ("PRICEFEED__DATABASE__URL".into(), db.into()),
        ("PRICEFEED__REDIS__URL".into(), redis.into()),
        ("PRICEFEED__NODE__HTTP__BIND".into(), "127.0.0.1:0".into()),
        (
            "PRICEFEED__SCHEDULER__HTTP__BIND".into(),
            "127.0.0.1:0".into(),
        ),
        (
            "PRICEFEED__SCHEDULER__SYNC_UNDERLYINGS_MS".into(),
            "10000".into(),
        ),
        (
            "PRICEFEED__SCHEDULER__SYNC_DERIVATIVES_MS".into(),
            "10000".into(),
        ),
        ("PRICEFEED__TELEMETRY__LOG_LEVEL".into(), "warn".into()),
        (
            "PRICEFEED__AUTH__JWT_SECRET".into(),
            "bench-cluster-signing-key-0123456789abcdef".into(),
        ),
        // Every load generator is one address: the rate limiter runs (its cost is measured)
        // but never refuses.
        (
            "PRICEFEED__NODE__LIMITS__PER_ADDRESS_PER_SEC".into(),
            "1000000".into(),
        ),
        (
            "PRICEFEED__NODE__LIMITS__PER_ADDRESS_BURST".into(),
            "10000000".into(),
        ),
    ];
    for (market, addr) in [
        ("SPOT", &sim.spot),
        ("FUTURES", &sim.futures),
        ("OPTIONS", &sim.options),
    ] {
        v.push((
            format!("PRICEFEED__BROKER__{market}_REST_URL"),
            format!("http://{addr}"),
        ));
        v.push((
            format!("PRICEFEED__BROKER__{market}_WS_URL"),
            format!("ws://{addr}"),
        ));
    }
    v
}

async fn start_sim(env: &Env, overrides: &[(&'static str, String)]) -> anyhow::Result<Sim> {
    let ports_file = env.run_dir.join("sim.ports.json");
    let mut e: Vec<(String, String)> = vec![
        (
            "PRICEFEED_CONFIG".into(),
            env.config.to_string_lossy().into(),
        ),
        ("PRICEFEED__TELEMETRY__LOG_LEVEL".into(), "warn".into()),
    ];
    for k in ["SPOT_BIND", "FUTURES_BIND", "OPTIONS_BIND", "CONTROL_BIND"] {
        e.push((format!("PRICEFEED__SIM__{k}"), "127.0.0.1:0".into()));
    }
    for (k, val) in overrides {
        e.push((format!("PRICEFEED__SIM__{k}"), val.clone()));
    }
    let mut proc = Proc::spawn(
        &env.run_dir,
        "sim",
        &env.bin("pricefeed-sim")?,
        &["--ports-file".into(), ports_file.to_string_lossy().into()],
        &e,
    )?;
    let ports: Value = serde_json::from_str(&proc.wait_file(&ports_file, START).await?)?;
    let get = |k: &str| -> anyhow::Result<String> {
        ports[k]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("ports file has no {k}: {ports}"))
    };
    Ok(Sim {
        spot: get("spot")?,
        futures: get("futures")?,
        options: get("options")?,
        control: get("control")?,
        proc,
    })
}

/// Polls `url` until it answers 2xx.
pub async fn wait_http_ok(
    http: &reqwest::Client,
    url: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{url} not ready within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of every sample of a Prometheus metric (all label sets) in a text exposition.
pub fn prom_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .fold(0.0, |a, b| a + b)
}

/// A unique run directory under the system temp dir.
pub fn run_dir(sub: &str) -> PathBuf {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    std::env::temp_dir().join(format!("pricefeed-bench-{sub}-{}-{t}", std::process::id()))
}

/// The base configuration, `config/default.toml` of the workspace: the first one found walking
/// up from the working directory (so a build directory outside the repository, like `./dev`'s
/// default, works from anywhere inside the repository), else walking up from the binary's
/// directory (`<root>/target/release/…`). `None` when neither has one: `--config` is needed.
pub fn find_config(cwd: Option<&Path>, bin_dir: &Path) -> Option<PathBuf> {
    cwd.into_iter()
        .flat_map(Path::ancestors)
        .chain(bin_dir.ancestors())
        .map(|d| d.join("config/default.toml"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pf-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn config_is_found_walking_up_from_the_working_directory_then_the_binary() {
        let root = scratch("cfg");
        let repo = root.join("repo");
        let deep = repo.join("crates/bench/src");
        let bin = root.join("build/release");
        let other = root.join("elsewhere");
        for d in [&deep, &bin, &repo.join("config"), &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let cfg = repo.join("config/default.toml");
        std::fs::write(&cfg, "").unwrap();
        // Build dir outside the repository: found from the repo root and from below it.
        assert_eq!(find_config(Some(&repo), &bin), Some(cfg.clone()));
        assert_eq!(find_config(Some(&deep), &bin), Some(cfg.clone()));
        // Outside the repository, only the binary's location can tell.
        assert_eq!(find_config(Some(&other), &bin), None);
        let in_tree = repo.join("target/release");
        std::fs::create_dir_all(&in_tree).unwrap();
        assert_eq!(find_config(Some(&other), &in_tree), Some(cfg.clone()));
        assert_eq!(find_config(None, &in_tree), Some(cfg));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn prom_sum_adds_label_sets_only_of_that_name() {
        let t = "# TYPE x counter\nx{market=\"spot\"} 10\nx{market=\"usdm\"} 5\nx_total 99\nx 1\n";
        assert_eq!(prom_sum(t, "x"), 16.0);
        assert_eq!(prom_sum(t, "x_total"), 99.0);
        assert_eq!(prom_sum(t, "y"), 0.0);
    }
}
