//! `prices`: `wrk -t2 -c64 -d10s --latency` against `bare-price-server` (a bare axum handler
//! serving the node's own response body from memory) and against the node's
//! `GET /api/v1/prices/{symbol}`, one after the other in the same run: on the node owning the
//! symbol (node-local state) and on the other node (price cache fed by the tick channel, Redis
//! `HGET` on a miss). On a shared 2-core machine the background load drifts between targets, so
//! the three are measured in `--rounds` rounds, each in a rotated order, and the ratios are
//! those of the medians (each round's ratios are printed too).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cluster::{Cluster, Env, Spec, wait_http_ok};
use crate::e2e::yes;
use crate::procs::{Proc, free_port};
use crate::report::Table;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Spot symbol to query (a hot symbol of the default catalogue, so it has a price).
    #[arg(long, default_value = "BTCUSDT")]
    pub symbol: String,
    /// wrk duration per target, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Rounds of the three targets (rotated order); the table shows the medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// One wrk run: requests/s, p50 and p99 in ms.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
}

/// Installs wrk from Debian when missing (root or sudo), saying so.
pub fn ensure_wrk() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("==> wrk not found: installing the Debian package (apt-get install -y wrk)");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    let st = cmd
        .args(["install", "-y", "-qq", "--no-install-recommends", "wrk"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !st.success() {
        bail!("apt-get install wrk failed; install wrk by hand (Debian package `wrk`)");
    }
    Ok(())
}

fn parse_latency(s: &str) -> Option<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// Parses wrk's `--latency` output.
pub fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut non_2xx = 0;
    for line in out.lines().map(str::trim) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = parse_latency(v),
            (Some("99%"), Some(v)) => p99 = parse_latency(v),
            (Some("Non-2xx"), _) => {
                non_2xx = line
                    .rsplit_once(' ')
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    match (rps, p50, p99) {
        (Some(rps), Some(p50_ms), Some(p99_ms)) => Ok(Wrk {
            rps,
            p50_ms,
            p99_ms,
            non_2xx,
        }),
        _ => bail!("could not parse wrk output:\n{out}"),
    }
}

pub fn wrk(url: &str, seconds: u64, conns: u32) -> anyhow::Result<Wrk> {
    eprintln!("==> wrk -t2 -c{conns} -d{seconds}s --latency {url}");
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

pub async fn run(env: &Env, a: &Args) -> anyhow::Result<Table> {
    ensure_wrk()?;
    let spec = Spec {
        sim: vec![("LISTING_INTERVAL_MS", "0".into())],
        nodes: 2,
    };
    let mut c = Cluster::start(env, &spec).await?;
    let key = format!("spot:{}", a.symbol);
    eprintln!("==> waiting until {key} is live");
    let per_node = c
        .wait_ingesting(1, std::slice::from_ref(&key), Duration::from_secs(120))
        .await?;
    let owner = per_node
        .iter()
        .position(|l| l.contains(&key))
        .context("no owner")?;
    let other = 1 - owner;
    let path = format!("/api/v1/prices/{}", a.symbol);
    let local_url = c.nodes[owner].url(&path);
    let remote_url = c.nodes[other].url(&path);
    // Wait for a first trade, then take the node's body as the bare server's document.
    let mut body = String::new();
    for _ in 0..100 {
        let r = c.http.get(&local_url).send().await?;
        if r.status().is_success() {
            body = r.text().await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if body.is_empty() {
        bail!("{local_url} has no price after 20 s");
    }
    let port = free_port()?;
    let bare_addr = format!("127.0.0.1:{port}");
    let _bare = Proc::spawn(
        &env.run_dir,
        "bare-price-server",
        &env.bin("bare-price-server")?,
        &[bare_addr.clone(), body.clone()],
        &[],
    )?;
    let bare_url = format!("http://{bare_addr}{path}");
    wait_http_ok(&c.http, &bare_url, Duration::from_secs(20)).await?;

    let urls = [&bare_url, &local_url, &remote_url];
    let mut runs: [Vec<Wrk>; 3] = Default::default();
    let mut per_round = Vec::new();
    for r in 0..a.rounds.max(1) as usize {
        let mut got: [Option<Wrk>; 3] = [None; 3];
        for k in 0..3 {
            let i = (r + k) % 3;
            let w = wrk(urls[i], a.seconds, a.connections)?;
            c.check_alive()?;
            got[i] = Some(w);
            runs[i].push(w);
        }
        let [Some(b), Some(l), Some(o)] = got else {
            unreachable!("every target ran");
        };
        per_round.push(format!("{:.2}/{:.2}", l.rps / b.rps, o.rps / b.rps));
    }
    let [bare, local, remote] = runs.map(median);

    let mut t = Table::new(
        "prices",
        &format!(
            "wrk -t2 -c{} -d{}s --latency, GET /api/v1/prices/{} ({} B body), targets one after the other in {} rotated rounds, medians; owner/other ratio per round: {}",
            a.connections,
            a.seconds,
            a.symbol,
            body.len(),
            a.rounds.max(1),
            per_round.join(", ")
        ),
    );
    let fmt = |w: &Wrk| {
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms{}, ratio {:.2}",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            if w.non_2xx > 0 {
                format!(", {} non-2xx", w.non_2xx)
            } else {
                String::new()
            },
            w.rps / bare.rps
        )
    };
    t.row("bare-price-server (axum, in-memory)", fmt(&bare));
    t.row("node owning the symbol (local state)", fmt(&local));
    t.row("other node (price cache, Redis on a miss)", fmt(&remote));
    t.verdict(format!(
        "target ratio ≥ 0.80: owner {} ({:.2}), other node {} ({:.2}); p99 ≤ 10 ms: owner {}, other node {}",
        yes(local.rps / bare.rps >= 0.8),
        local.rps / bare.rps,
        yes(remote.rps / bare.rps >= 0.8),
        remote.rps / bare.rps,
        yes(local.p99_ms <= 10.0 && local.non_2xx == 0),
        yes(remote.p99_ms <= 10.0 && remote.non_2xx == 0),
    ));
    Ok(t)
}

/// The run with the median requests/s (its own latencies with it), the upper one of an even
/// count.
fn median(mut v: Vec<Wrk>) -> Wrk {
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let out = "Running 10s test @ http://127.0.0.1:1/x
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   620.53us    1.10ms  30.02ms   95.12%
  Latency Distribution
     50%  355.00us
     75%  512.00us
     90%    0.98ms
     99%    4.31ms
  1083456 requests in 10.00s, 210.79MB read
  Non-2xx or 3xx responses: 12
Requests/sec: 108345.12
Transfer/sec:     21.08MB
";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.rps, 108345.12);
        assert!((w.p50_ms - 0.355).abs() < 1e-9);
        assert_eq!(w.p99_ms, 4.31);
        assert_eq!(w.non_2xx, 12);
        assert_eq!(parse_latency("1.50s"), Some(1500.0));
    }
}
