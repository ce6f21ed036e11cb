//! `fanout`: many client WebSocket connections on ONE node, each subscribed to the prices of
//! one hot instrument; delivery latency from the **trade time** (the simulator's `T`, carried in
//! every price frame as `data.ts`) to the client's receipt, both read from this machine's wall
//! clock. The path measured: simulator → node ingest → 20 ms tick flush → Redis PUBLISH → the
//! node's own tick subscription → live cache hook → hub → every connection's socket → client.
//!
//! Clients run in child processes of this binary (`fanout-client`, ≤ 10 000 connections each,
//! each child on its own loopback source address so ephemeral ports never run out). They
//! connect and subscribe, report `ready`, wait for `go` on stdin, record a latency histogram
//! (1 ms buckets) for `--seconds`, print one JSON line and exit. The node's CPU (utime + stime)
//! over the measured window and its RSS before the clients and after they all subscribed give
//! CPU per delivered frame and memory per connection.
//!
//! RLIMIT_NOFILE: children inherit this process's limit, which `main` raises to the hard limit
//! (re-exec through `sh -c 'ulimit -n …'`, since the workspace forbids `unsafe`). A node needs a
//! few dozen descriptors besides its sockets, so with a hard limit of 20 000 (this sandbox) at
//! most ~19 900 connections fit on one node; the bench caps the count and says so.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cluster::{Cluster, Env, Spec};
use crate::procs::now_ms;
use crate::procs::{clk_tck, cpu_seconds, rss_mib};
use crate::report::Table;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Client connections on the node (capped by RLIMIT_NOFILE).
    #[arg(long, default_value_t = 20_000)]
    pub conns: usize,
    /// Trades/s of the hot instrument (`sim.load_rate` over one load symbol). Each flush with a
    /// trade (at most one per `tick_flush_ms` = 20 ms) is one price update for every client.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Seconds of measurement once every client is subscribed.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Connections per client process.
    #[arg(long, default_value_t = 10_000)]
    pub per_process: usize,
}

/// Arguments of one client child process.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// `host:port` of the node.
    #[arg(long)]
    pub addr: String,
    /// Local source address to bind (e.g. 127.0.0.11).
    #[arg(long)]
    pub source: String,
    #[arg(long)]
    pub conns: usize,
    #[arg(long)]
    pub channel: String,
    #[arg(long)]
    pub seconds: u64,
}

/// Latency histogram: 1 ms buckets up to 10 s; the last bucket holds everything slower.
const BUCKETS: usize = 10_001;

/// Raises the soft RLIMIT_NOFILE to the hard limit by re-executing through `sh`; returns the
/// limit in force (the hard one after the re-exec).
pub fn raise_nofile() -> anyhow::Result<u64> {
    let read = |flag: &str| -> anyhow::Result<u64> {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("ulimit {flag}")])
            .output()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(if s == "unlimited" {
            u64::MAX
        } else {
            s.parse().with_context(|| format!("ulimit {flag}: {s:?}"))?
        })
    };
    let (soft, hard) = (read("-Sn")?, read("-Hn")?);
    if soft >= hard || std::env::var_os("PRICEFEED_BENCH_NOFILE_RAISED").is_some() {
        return Ok(soft);
    }
    // `sh` inherits our limits; it raises the soft one and execs us again with the same args.
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn \"$(ulimit -Hn)\" && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("PRICEFEED_BENCH_NOFILE_RAISED", "1")
        .status()?;
    std::process::exit(status.code().unwrap_or(1));
}

pub async fn run(env: &Env, a: &Args) -> anyhow::Result<Table> {
    let limit = raise_nofile()?;
    // The node needs descriptors for Postgres, Redis, the broker feed, logs: keep 100 spare.
    let conns = a.conns.min(limit.saturating_sub(100) as usize);
    if conns < a.conns {
        eprintln!(
            "==> RLIMIT_NOFILE is {limit} (hard; raising it needs CAP_SYS_RESOURCE): {conns} connections instead of {}",
            a.conns
        );
    }
    let spec = Spec {
        sim: vec![
            ("LOAD_MODE", "true".into()),
            ("LOAD_RATE", format!("{}", a.rate)),
            ("LOAD_SYMBOLS", "1".into()),
            ("UNDERLYINGS", "3".into()),
            ("LISTING_INTERVAL_MS", "0".into()),
        ],
        nodes: 1,
    };
    let mut c = Cluster::start(env, &spec).await?;
    let tradable = c.sim_tradable().await?;
    let hot = crate::load_symbols(&c, 1).await?.remove(0);
    let key = format!("spot:{hot}");
    eprintln!("==> waiting for the node to ingest {key}");
    c.wait_ingesting(
        tradable.len() * 95 / 100,
        std::slice::from_ref(&key),
        Duration::from_secs(120),
    )
    .await?;
    let node_pid = c.nodes[0].proc.pid();
    let tck = clk_tck();
    let addr = c.nodes[0].addr.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = rss_mib(node_pid)?;

    // Client processes, each on its own source address.
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut left = conns;
    let mut i = 0;
    while left > 0 {
        let n = left.min(a.per_process);
        left -= n;
        i += 1;
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "fanout-client",
                "--addr",
                &addr,
                "--source",
                &format!("127.0.0.{}", 10 + i),
                "--conns",
                &n.to_string(),
                "--channel",
                &format!("prices:{hot}"),
                "--seconds",
                &a.seconds.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let out = BufReader::new(child.stdout.take().context("client stdout")?).lines();
        eprintln!(
            "   started client process {i} (pid {}) for {n} connections",
            child.id().unwrap_or(0)
        );
        children.push((child, out, n));
    }
    let t_connect = Instant::now();
    for (child, out, n) in &mut children {
        let line = tokio::time::timeout(Duration::from_secs(300), out.next_line())
            .await
            .context("clients not connected within 300 s")??
            .context("client process ended before connecting")?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("client said {line:?}"))?;
        if v["ready"].as_u64() != Some(*n as u64) {
            let _ = child.start_kill();
            bail!("a client process connected {} of {n}: {v}", v["ready"]);
        }
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    eprintln!("==> {conns} connections subscribed in {connect_s:.1} s");
    c.check_alive()?;
    // Let the node settle (allocations after the subscribe burst), then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_mib(node_pid)?;
    let metrics_before = c
        .get_text(&c.nodes[0].url("/metrics"))
        .await
        .unwrap_or_default();
    let (cpu0, sim0, redis0) = (
        cpu_seconds(node_pid, tck)?,
        cpu_seconds(c.sim.proc.pid(), tck)?,
        cpu_seconds(c.redis.pid(), tck)?,
    );
    let client_pids: Vec<u32> = children.iter().filter_map(|(ch, _, _)| ch.id()).collect();
    let cl0: f64 = client_pids
        .iter()
        .filter_map(|p| cpu_seconds(*p, tck).ok())
        .sum();
    let t0 = Instant::now();
    for (child, _, _) in &mut children {
        let stdin = child.stdin.as_mut().context("client stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, sim1, redis1) = (
        cpu_seconds(node_pid, tck)?,
        cpu_seconds(c.sim.proc.pid(), tck)?,
        cpu_seconds(c.redis.pid(), tck)?,
    );
    let cl1: f64 = client_pids
        .iter()
        .filter_map(|p| cpu_seconds(*p, tck).ok())
        .sum();
    let rss2 = rss_mib(node_pid)?;

    let mut hist = vec![0u64; BUCKETS];
    let (mut frames, mut closed, mut ids_min, mut ids_max) = (0u64, 0u64, u64::MAX, 0u64);
    let mut distinct = 0u64;
    for (child, out, _) in &mut children {
        let line = tokio::time::timeout(Duration::from_secs(60), out.next_line())
            .await
            .context("client results")??
            .context("client process ended without results")?;
        let v: Value = serde_json::from_str(&line)?;
        frames += v["frames"].as_u64().unwrap_or(0);
        closed += v["closed"].as_u64().unwrap_or(0);
        distinct = distinct.max(v["distinct"].as_u64().unwrap_or(0));
        ids_min = ids_min.min(v["first_id"].as_u64().unwrap_or(u64::MAX));
        ids_max = ids_max.max(v["last_id"].as_u64().unwrap_or(0));
        for (b, n) in v["hist"].as_array().context("hist")?.iter().enumerate() {
            hist[b.min(BUCKETS - 1)] += n.as_u64().unwrap_or(0);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    c.check_alive()?;
    let metrics_after = c
        .get_text(&c.nodes[0].url("/metrics"))
        .await
        .unwrap_or_default();
    let sim_trades = ids_max.saturating_sub(ids_min) + 1;
    let q = |p: f64| quantile(&hist, p);
    let cpu = cpu1 - cpu0;
    let delivered_per_s = frames as f64 / secs;
    let mut t = Table::new(
        "fanout",
        &format!(
            "1 node, {conns} client connections in {} processes subscribed to prices:{hot}; \
             simulator load mode {} trades/s on that pair; latency = client receipt − trade time; {secs:.0} s",
            children.len(),
            a.rate
        ),
    );
    t.row(
        "connections subscribed (time to connect + subscribe all)",
        format!("{conns} ({connect_s:.1} s)"),
    );
    t.row(
        "price updates per client (distinct trades seen by the busiest client; trades in the window)",
        format!("{distinct} = {:.1}/s ({sim_trades} trade ids spanned)", distinct as f64 / secs),
    );
    t.row(
        "frames delivered (per second; per connection per second)",
        format!(
            "{frames} ({delivered_per_s:.0}/s; {:.2}/s)",
            delivered_per_s / conns.max(1) as f64
        ),
    );
    t.row("connections closed during the run", closed.to_string());
    t.row(
        "delivery latency p50 / p90 / p99 / max",
        format!("{} / {} / {} / {} ms", q(50.0), q(90.0), q(99.0), q(100.0)),
    );
    t.row(
        "node CPU (per delivered frame)",
        format!(
            "{cpu:.2} s = {:.0} % of one core ({:.2} µs/frame)",
            cpu / secs * 100.0,
            cpu / frames.max(1) as f64 * 1e6
        ),
    );
    t.row(
        "simulator / Redis / client processes CPU",
        format!(
            "{:.0} % / {:.0} % / {:.0} % of one core",
            (sim1 - sim0) / secs * 100.0,
            (redis1 - redis0) / secs * 100.0,
            (cl1 - cl0) / secs * 100.0
        ),
    );
    t.row(
        "node VmRSS before clients / all subscribed / end",
        format!("{rss0:.1} / {rss1:.1} / {rss2:.1} MiB"),
    );
    let per_conn_kib = (rss1 - rss0) * 1024.0 / conns.max(1) as f64;
    t.row(
        "node memory per connection (RSS delta / connections)",
        format!("{per_conn_kib:.1} KiB"),
    );
    let d = |name: &str| {
        crate::cluster::prom_sum(&metrics_after, name)
            - crate::cluster::prom_sum(&metrics_before, name)
    };
    t.row(
        "node: frames written / conflated / hub batches dropped (window)",
        format!(
            "{:.0} / {:.0} / {:.0}",
            d("pricefeed_stream_frames_total"),
            d("pricefeed_stream_conflated_total"),
            d("pricefeed_stream_hub_dropped_total")
        ),
    );
    let p99 = q(99.0);
    t.verdict(format!(
        "target ≥ 20 000 connections: {}; p99 ≤ 200 ms: {} ({p99} ms)",
        crate::e2e::yes(conns >= 20_000),
        crate::e2e::yes(p99 <= 200)
    ));
    drop(children);
    Ok(t)
}

/// The bucket (ms) under which `p` % of the samples fall.
fn quantile(hist: &[u64], p: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (ms, n) in hist.iter().enumerate() {
        acc += n;
        if acc >= want {
            return ms as u64;
        }
    }
    (hist.len() - 1) as u64
}

/// Counters of one client process.
#[derive(Debug, Default)]
struct Tally {
    hist: Vec<u64>,
    frames: u64,
    first_id: u64,
    last_id: u64,
    /// Distinct trade ids one connection saw (connection 0).
    distinct: u64,
}

/// One client process: `conns` connections from `source`, then latency counting on `go`.
pub async fn client(a: &ClientArgs) -> anyhow::Result<()> {
    let url = format!("ws://{}/api/v1/stream", a.addr);
    let sub = json!({"op":"subscribe","channels":[a.channel]}).to_string();
    let measuring = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally {
        hist: vec![0; BUCKETS],
        first_id: u64::MAX,
        ..Tally::default()
    }));
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util_token();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    // Connect with bounded concurrency: the node's accept queue and the handshake cost.
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let source: std::net::IpAddr = a.source.parse()?;
    let target: std::net::SocketAddr = a.addr.parse()?;
    let mut tasks = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        let permit = sem.clone().acquire_owned().await?;
        let (url, sub, ready_tx) = (url.clone(), sub.clone(), ready_tx.clone());
        let (measuring, tally, closed, stop) = (
            measuring.clone(),
            tally.clone(),
            closed.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let ws = async {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind(std::net::SocketAddr::new(source, 0))?;
                let tcp = sock.connect(target).await?;
                tcp.set_nodelay(true)?;
                // Small buffers: 10 000 clients with tungstenite's 128 KiB default would need
                // 1.3 GiB per process.
                let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let (mut ws, _) =
                    tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(cfg))
                        .await?;
                ws.send(tokio_tungstenite::tungstenite::Message::text(sub))
                    .await?;
                // Ack, then the latest value: subscribed.
                loop {
                    match ws.next().await {
                        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))
                            if t.as_str().contains("\"subscribed\"") =>
                        {
                            break;
                        }
                        Some(Ok(_)) => {}
                        _ => anyhow::bail!("closed before the ack"),
                    }
                }
                anyhow::Ok(ws)
            };
            let ws = tokio::time::timeout(Duration::from_secs(120), ws).await;
            drop(permit);
            let Ok(Ok(mut ws)) = ws else {
                let _ = ready_tx.send(false);
                return;
            };
            let _ = ready_tx.send(true);
            let mut seen_last = 0u64;
            loop {
                let m = tokio::select! {
                    () = stop.cancelled() => break,
                    m = ws.next() => m,
                };
                let now = now_ms();
                match m {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                        if !measuring.load(std::sync::atomic::Ordering::Relaxed) {
                            continue;
                        }
                        let Ok(v) = serde_json::from_str::<Frame>(t.as_str()) else {
                            continue;
                        };
                        let Some(d) = v.data else { continue };
                        let lat = (now - d.ts).clamp(0, (BUCKETS - 1) as i64) as usize;
                        let mut g = tally.lock().unwrap();
                        g.hist[lat] += 1;
                        g.frames += 1;
                        g.first_id = g.first_id.min(d.trade_id);
                        g.last_id = g.last_id.max(d.trade_id);
                        if i == 0 && d.trade_id != seen_last {
                            g.distinct += 1;
                            seen_last = d.trade_id;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(ready_tx);
    let mut ok = 0usize;
    for _ in 0..a.conns {
        match ready_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => {}
            None => break,
        }
    }
    println!("{}", json!({"ready": ok}));
    // Wait for `go`.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = stdin.next_line().await?;
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let g = std::mem::take(&mut *tally.lock().unwrap());
    println!(
        "{}",
        json!({
            "frames": g.frames, "closed": closed.load(std::sync::atomic::Ordering::Relaxed),
            "first_id": g.first_id, "last_id": g.last_id, "distinct": g.distinct, "hist": g.hist,
        })
    );
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

/// The part of a price frame the client reads.
#[derive(serde::Deserialize)]
struct Frame {
    data: Option<FrameData>,
}

#[derive(serde::Deserialize)]
struct FrameData {
    trade_id: u64,
    ts: i64,
}

fn tokio_util_token() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}
