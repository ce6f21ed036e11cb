//! `email`: alert emails under load. A private Postgres and Redis, one or two
//! `pricefeed-scheduler worker` processes, and an SMTP sink inside this process that answers
//! 250 to everything and notes when each idempotency key was accepted. Triggers are committed
//! with `store::alerts::commit_triggers` (as owning nodes commit them) at a fixed rate for a
//! while; the run then waits until every delivery is final and reports trigger → accepted by
//! SMTP latency (sink acceptance time − the trigger's commit timestamp), sent/s and failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pricefeed_domain::alert::{Condition, Kind, Rearm};
use pricefeed_store::alerts::{self, AlertInput, NewTrigger};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;

use crate::cluster::{Env, wait_http_ok};
use crate::procs::now_ms;
use crate::procs::{Postgres, Proc, Redis};
use crate::report::{Table, percentile};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Triggers committed per second.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Seconds of committing triggers.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Worker processes (1 or 2 on this machine).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Jobs one worker runs at once (worker.concurrency).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// SMTP connections per worker (email.pool_size).
    #[arg(long, default_value_t = 16)]
    pub pool: u32,
    /// Distinct users (each with one re-arming email alert that fires again and again).
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
}

/// Acceptance time (ms) per idempotency key, and how many messages carried a key already seen.
#[derive(Debug, Default)]
struct SinkLog {
    accepted: HashMap<String, i64>,
    repeats: u64,
}

/// A minimal SMTP server (220 / EHLO / MAIL / RCPT / DATA / RSET / NOOP / QUIT): every message
/// is accepted with 250 the moment its final dot arrives. Enough for lettre, and fast enough not
/// to be what is measured.
async fn sink(listener: tokio::net::TcpListener, log: Arc<Mutex<SinkLog>>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let log = log.clone();
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            if w.write_all(b"220 bench-sink ESMTP\r\n").await.is_err() {
                return;
            }
            let mut line = String::new();
            let mut in_data = false;
            let mut key = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                        {
                            let mut l = log.lock().unwrap();
                            if l.accepted.contains_key(&key) {
                                l.repeats += 1;
                            } else {
                                l.accepted.insert(std::mem::take(&mut key), now_ms());
                            }
                        }
                        if w.write_all(b"250 2.0.0 Ok: queued\r\n").await.is_err() {
                            return;
                        }
                    } else if let Some(k) = line.strip_prefix("X-Pricefeed-Idempotency-Key: ") {
                        key = k.trim().to_string();
                    }
                    continue;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" => b"250-bench-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
                    "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
                    "DATA" => {
                        in_data = true;
                        b"354 End data with <CR><LF>.<CR><LF>\r\n"
                    }
                    "QUIT" => {
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    }
                    _ => b"502 5.5.2 Command not recognized\r\n",
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One user and one re-arming email alert per user on BTCUSDT; returns (user, alert id, version).
async fn seed(pool: &PgPool, users: usize) -> anyhow::Result<Vec<(i64, i64, i64)>> {
    sqlx::query(
        "INSERT INTO underlyings (symbol, base_asset, quote_asset, status) \
         VALUES ('BTCUSDT', 'BTC', 'USDT', 'TRADING')",
    )
    .execute(pool)
    .await?;
    let inst: i32 = sqlx::query_scalar("SELECT id FROM instruments WHERE symbol = 'BTCUSDT'")
        .fetch_one(pool)
        .await?;
    let input = AlertInput {
        condition: Condition {
            kind: Kind::Above,
            threshold: Decimal::from(95_000),
            interval: None,
            window: None,
        },
        channels: vec!["email".into()],
        rearm: Some(Rearm {
            cooldown_ms: 1_000,
            hysteresis_pct: Decimal::ZERO,
        }),
        note: Some("bench".into()),
        status: "active".into(),
    };
    let mut out = Vec::with_capacity(users);
    for i in 0..users {
        let u = alerts::create_user(pool, &format!("user{i}@bench.test"), "x", "user").await?;
        let a = alerts::create_alert(pool, u, inst, &input, 10).await?;
        out.push((u, a.id, a.version));
    }
    Ok(out)
}

pub async fn run(env: &Env, a: &Args) -> anyhow::Result<Table> {
    anyhow::ensure!(
        a.rate >= 10 && a.users >= 10,
        "rate and users must be at least 10"
    );
    std::fs::create_dir_all(&env.run_dir)?;
    eprintln!("==> run directory {}", env.run_dir.display());
    let pg = Postgres::start(&env.run_dir).await?;
    let redis = Redis::start(&env.run_dir).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let smtp_port = listener.local_addr()?.port();
    let log = Arc::new(Mutex::new(SinkLog::default()));
    let sink_task = tokio::spawn(sink(listener, log.clone()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut base: Vec<(String, String)> = vec![
        (
            "PRICEFEED_CONFIG".into(),
            env.config.to_string_lossy().into(),
        ),
        ("PRICEFEED__DATABASE__URL".into(), pg.url.clone()),
        (
            "PRICEFEED__DATABASE__MAX_CONNECTIONS".into(),
            (a.concurrency + 4).to_string(),
        ),
        ("PRICEFEED__REDIS__URL".into(), redis.url.clone()),
        ("PRICEFEED__TELEMETRY__LOG_LEVEL".into(), "warn".into()),
        ("PRICEFEED__WORKER__HTTP__BIND".into(), "127.0.0.1:0".into()),
        (
            "PRICEFEED__WORKER__CONCURRENCY".into(),
            a.concurrency.to_string(),
        ),
        ("PRICEFEED__WORKER__POLL_MS".into(), "50".into()),
        ("PRICEFEED__EMAIL__HOST".into(), "127.0.0.1".into()),
        ("PRICEFEED__EMAIL__PORT".into(), smtp_port.to_string()),
        ("PRICEFEED__EMAIL__TLS".into(), "none".into()),
        ("PRICEFEED__EMAIL__POOL_SIZE".into(), a.pool.to_string()),
    ];
    for m in ["SPOT", "FUTURES", "OPTIONS"] {
        // Workers build a REST client for reconciliation; no reconcile jobs exist here.
        base.push((
            format!("PRICEFEED__BROKER__{m}_REST_URL"),
            "http://127.0.0.1:9".into(),
        ));
    }
    let mut migrate = Proc::spawn(
        &env.run_dir,
        "migrate",
        &env.bin("pricefeed-scheduler")?,
        &["migrate".into()],
        &base,
    )?;
    let st = tokio::task::spawn_blocking(move || {
        let st = migrate.child.wait();
        (st, migrate)
    })
    .await?;
    anyhow::ensure!(st.0?.success(), "migrate failed:\n{}", st.1.log_tail());

    let db = PgPool::connect(&pg.url).await?;
    let alerts = Arc::new(seed(&db, a.users).await?);
    let mut workers = Vec::new();
    for i in 1..=a.workers {
        let name = format!("worker{i}");
        let addr_file = env.run_dir.join(format!("{name}.addr"));
        let mut p = Proc::spawn(
            &env.run_dir,
            &name,
            &env.bin("pricefeed-scheduler")?,
            &[
                "--addr-file".into(),
                addr_file.to_string_lossy().into(),
                "worker".into(),
            ],
            &base,
        )?;
        let addr = p.wait_file(&addr_file, Duration::from_secs(60)).await?;
        wait_http_ok(
            &http,
            &format!("http://{addr}/readyz"),
            Duration::from_secs(60),
        )
        .await?;
        workers.push(p);
    }

    // Commit rate/10 triggers every 100 ms, each batch on its own slice of the alerts so that
    // concurrent batches never wait on each other's row locks.
    eprintln!("==> committing {} triggers/s for {} s", a.rate, a.secs);
    let per_tick = (a.rate / 10) as usize;
    let slices = (a.users / per_tick).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut batches: JoinSet<anyhow::Result<(usize, Duration)>> = JoinSet::new();
    let started = Instant::now();
    let mut trade_id: i64 = 0;
    let mut committed = 0usize;
    let mut commit_times: Vec<f64> = Vec::new();
    for n in 0..(a.secs * 10) as usize {
        tick.tick().await;
        let slice = n % slices;
        let mut t = Vec::with_capacity(per_tick);
        for (user, alert, version) in alerts.iter().skip(slice * per_tick).take(per_tick) {
            trade_id += 1;
            t.push(NewTrigger {
                alert_id: *alert,
                user_id: *user,
                version: *version,
                trade_id,
                trade_ts_ms: now_ms(),
                price: Decimal::new(9_501_250, 2),
                observed: Decimal::new(9_501_250, 2),
                one_shot: false,
            });
        }
        let db = db.clone();
        batches.spawn(async move {
            let t0 = Instant::now();
            let c = alerts::commit_triggers(&db, "bench", &t, u32::MAX).await?;
            Ok((c.len(), t0.elapsed()))
        });
        while let Some(r) = batches.try_join_next() {
            let (c, took) = r??;
            committed += c;
            commit_times.push(took.as_secs_f64() * 1000.0);
        }
        for w in &mut workers {
            w.check_alive()?;
        }
    }
    while let Some(r) = batches.join_next().await {
        let (c, took) = r??;
        committed += c;
        commit_times.push(took.as_secs_f64() * 1000.0);
    }
    let commit_secs = started.elapsed().as_secs_f64();

    // Drain: every delivery final (or two minutes).
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state = 'pending'")
                .fetch_one(&db)
                .await?;
        if pending == 0 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_secs = started.elapsed().as_secs_f64();

    let rows: Vec<(String, String, i64, i32)> = sqlx::query_as(
        "SELECT d.idempotency_key, d.state, (extract(epoch FROM t.triggered_at) * 1000)::int8, \
                d.attempts \
         FROM deliveries d JOIN alert_triggers t ON t.id = d.trigger_id WHERE d.channel = 'email'",
    )
    .fetch_all(&db)
    .await?;
    let (accepted, repeats) = {
        let l = log.lock().unwrap();
        (l.accepted.clone(), l.repeats)
    };
    sink_task.abort();
    let mut lat: Vec<f64> = Vec::new();
    let mut states: HashMap<String, usize> = HashMap::new();
    let mut retried = 0usize;
    for (key, state, at, attempts) in &rows {
        *states.entry(state.clone()).or_default() += 1;
        if *attempts > 1 {
            retried += 1;
        }
        if let Some(t) = accepted.get(key) {
            lat.push((t - at) as f64 / 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    commit_times.sort_by(f64::total_cmp);
    let first = rows.iter().map(|r| r.2).min().unwrap_or(0);
    let last_accept = accepted.values().copied().max().unwrap_or(first);
    let span = ((last_accept - first) as f64 / 1000.0).max(0.001);
    let sent = states.get("sent").copied().unwrap_or(0);
    let p99 = percentile(&lat, 99.0);

    let mut t = Table::new(
        "email",
        &format!(
            "{} triggers/s for {} s, {} worker(s) × concurrency {}, SMTP pool {}, {} users; \
             in-process SMTP sink; private Postgres (fsync off)",
            a.rate, a.secs, a.workers, a.concurrency, a.pool, a.users
        ),
    );
    t.row(
        "triggers committed",
        format!("{committed} ({:.0}/s)", committed as f64 / commit_secs),
    );
    t.row(
        "commit batch (rate/10 triggers) p50 / p99",
        format!(
            "{:.1} ms / {:.1} ms",
            percentile(&commit_times, 50.0),
            percentile(&commit_times, 99.0)
        ),
    );
    t.row(
        "trigger → accepted by SMTP p50 / p99 / max",
        format!(
            "{:.3} s / {:.3} s / {:.3} s",
            percentile(&lat, 50.0),
            p99,
            lat.last().copied().unwrap_or(f64::NAN)
        ),
    );
    t.row(
        "sent",
        format!(
            "{sent} ({:.0}/s from first trigger to last acceptance)",
            sent as f64 / span
        ),
    );
    t.row(
        "failures (dead / still pending after the drain)",
        format!(
            "{} / {}",
            states.get("dead").copied().unwrap_or(0),
            states.get("pending").copied().unwrap_or(0)
        ),
    );
    t.row("deliveries that needed a retry", retried.to_string());
    t.row(
        "messages the sink saw twice (same key)",
        repeats.to_string(),
    );
    t.row("drained after", format!("{drained_secs:.1} s"));
    let tck = crate::procs::clk_tck();
    let cpu: f64 = workers
        .iter()
        .filter_map(|w| crate::procs::cpu_seconds(w.pid(), tck).ok())
        .sum();
    t.row(
        "worker CPU (all workers)",
        format!(
            "{cpu:.1} s = {:.2} ms per mail sent",
            cpu * 1000.0 / sent.max(1) as f64
        ),
    );
    t.verdict(if p99 <= 5.0 && sent == committed {
        format!("target met: p99 {p99:.3} s ≤ 5 s, every trigger sent")
    } else {
        format!("target MISSED: p99 {p99:.3} s (≤ 5 s wanted), {sent}/{committed} sent")
    });
    drop(workers);
    drop(redis);
    drop(pg);
    Ok(t)
}
