//! Child processes of a benchmark run: a private Redis and Postgres on loopback, and the release
//! binaries. Every child is recorded by PID and stopped on drop (SIGTERM, then SIGKILL after a
//! bounded wait), so an error anywhere in a run leaves nothing behind. Postgres is stopped with
//! `pg_ctl stop` on its own data directory (it runs detached from us, by its postmaster PID).
//!
//! Signals go through kill(1): the workspace forbids `unsafe`, so there is no libc call.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free loopback port (bound then released; good enough on a machine we don't race with).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Sends `sig` (e.g. `TERM`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running child; SIGTERM, then SIGKILL after 10 s, on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `binary args…` with `env` (on top of ours, minus `RUST_LOG` and `PRICEFEED_*`),
    /// stdout and stderr to `dir/name.log`.
    pub fn spawn(
        dir: &Path,
        name: &str,
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(binary);
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("PRICEFEED") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        eprintln!("   started {name} (pid {})", child.id());
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the log tail) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited with {st}:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last 30 lines of the process output.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls for `file` to hold non-empty content; fails if the process exits or `deadline` passes.
    pub async fn wait_file(&mut self, file: &Path, deadline: Duration) -> anyhow::Result<String> {
        let until = Instant::now() + deadline;
        loop {
            if let Ok(s) = std::fs::read_to_string(file)
                && !s.trim().is_empty()
            {
                return Ok(s.trim().to_string());
            }
            self.check_alive()?;
            if Instant::now() > until {
                bail!(
                    "{} did not write {} within {deadline:?}:\n{}",
                    self.name,
                    file.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait (bounded), then SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    eprintln!("   stopped {} (pid {})", self.name, self.child.id());
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "   {} (pid {}) ignored SIGTERM for 10 s; killing",
                self.name,
                self.child.id()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Redis (no persistence) as our child.
#[derive(Debug)]
pub struct Redis {
    pub url: String,
    pub port: u16,
    proc: Proc,
}

impl Redis {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let rdir = dir.join("redis");
        std::fs::create_dir_all(&rdir)?;
        let port = free_port()?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &rdir.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut p = Proc::spawn(dir, "redis", Path::new("redis-server"), &args, &[])
            .context("redis-server not found (apt-get install redis-server)")?;
        let until = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            p.check_alive()?;
            if Instant::now() > until {
                bail!("redis did not listen on {port}:\n{}", p.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            url: format!("redis://127.0.0.1:{port}/0"),
            port,
            proc: p,
        })
    }
}

/// A private Postgres cluster (`initdb` + `pg_ctl`, as the `postgres` user when we are root),
/// trust auth, superuser and database `pricefeed`, fsync off (nothing here needs durability).
#[derive(Debug)]
pub struct Postgres {
    pub url: String,
    sock: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    owner: Option<&'static str>,
    running: bool,
}

fn pg_bindir() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("Postgres not installed (apt-get install postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .ok_or_else(|| anyhow::anyhow!("no /usr/lib/postgresql/*/bin/initdb"))
}

impl Postgres {
    /// The same database over the Unix socket (no TCP, so no Nagle delays on COPY).
    pub fn socket_url(&self) -> String {
        let port = self
            .url
            .rsplit_once(':')
            .and_then(|(_, r)| r.split('/').next())
            .unwrap_or("5432");
        format!(
            "postgres://pricefeed@localhost/pricefeed?host={}&port={port}",
            self.sock.display()
        )
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.owner {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = pg_bindir()?;
        let owner = is_root().then_some("postgres");
        let pgdir = dir.join("pg");
        std::fs::create_dir_all(pgdir.join("sock"))?;
        if let Some(u) = owner {
            // The run directory must be reachable by the postgres user.
            Command::new("chmod").arg("755").arg(dir).status()?;
            Command::new("chown")
                .arg("-R")
                .arg(u)
                .arg(&pgdir)
                .status()?;
        }
        let port = free_port()?;
        let mut pg = Self {
            url: format!("postgres://pricefeed@127.0.0.1:{port}/pricefeed"),
            sock: pgdir.join("sock"),
            bin,
            data: pgdir.join("data"),
            owner,
            running: false,
        };
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "pricefeed", "-E", "UTF8", "--no-sync"])
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            pgdir.join("sock").display()
        );
        let out = pg
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(pgdir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        pg.running = true;
        eprintln!("   started postgres on 127.0.0.1:{port}");
        let out = pg
            .cmd("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "pricefeed",
            ])
            .arg("pricefeed")
            .output()?;
        if !out.status.success() {
            bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .cmd("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            eprintln!("   stopped postgres");
        }
    }
}

/// `utime + stime` of a process in seconds (all threads), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32, clk_tck: f64) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).context("utime")?.parse()?;
    let st: f64 = f.get(12).context("stime")?.parse()?;
    Ok((ut + st) / clk_tck)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unavailable).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set size in MiB, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// Per thread of `pid`: (thread name, `utime + stime` seconds), from `/proc/<pid>/task/*/stat`.
pub fn thread_cpu(pid: u32, clk_tck: f64) -> Vec<(u32, String, f64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        let name = s.split_once('(')?.1.rsplit_once(')')?.0.to_string();
        let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
        let ut: f64 = f.get(11)?.parse().ok()?;
        let st: f64 = f.get(12)?.parse().ok()?;
        Some((tid, name, (ut + st) / clk_tck))
    })
    .collect()
}

/// Wall-clock milliseconds since the epoch (comparable with the simulator's trade times and the
/// nodes' timestamps on this machine).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
