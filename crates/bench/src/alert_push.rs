//! `alert-push`: trigger → the user's WebSocket. Two nodes; the user signs in, opens
//! `/api/v1/stream` and creates re-arming crossing alerts on the node that does **not** own the
//! hot instrument, so every trigger takes the whole cluster path: the owner's ingest and alert
//! index → the outbox commit in Postgres → PUBLISH on the alert events channel → the other
//! node's subscription → the user's socket. Latency is read on this machine's wall clock from
//! the trade's time (the simulator's `T`, carried as `data.trade_ts`; an upper bound of
//! trigger → push, since it also covers simulator → node) and from the commit
//! (`data.triggered_at`, Postgres' `now()` of the trigger's transaction) to the frame's receipt.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{Cluster, Env, Spec};
use crate::procs::now_ms;
use crate::report::{Table, percentile};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds of measurement once the alerts exist.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Threshold levels on each side of the price (each one `crosses_up` and one `crosses_down`
    /// alert, re-armed after 1 s); at most 24 (`alerts.max_per_user` is 100).
    #[arg(long, default_value_t = 20)]
    pub levels: i64,
    /// Spacing of the levels, in basis points of the price.
    #[arg(long, default_value_t = 2)]
    pub step_bp: i64,
    /// Simulator volatility multiplier (crossings per second grow with it).
    #[arg(long, default_value_t = 20.0)]
    pub vol_scale: f64,
}

const KEY: &str = "spot:BTCUSDT";

pub async fn run(env: &Env, a: &Args) -> anyhow::Result<Table> {
    let spec = Spec {
        sim: vec![
            ("UNDERLYINGS", "2".into()),
            ("HOT_SYMBOLS", "1".into()),
            ("VOL_SCALE", format!("{}", a.vol_scale)),
            ("LISTING_INTERVAL_MS", "0".into()),
        ],
        nodes: 2,
    };
    let mut c = Cluster::start(env, &spec).await?;
    let tradable = c.sim_tradable().await?;
    let live = c
        .wait_ingesting(
            tradable.len() * 95 / 100,
            &[KEY.to_string()],
            Duration::from_secs(120),
        )
        .await?;
    let owner = live
        .iter()
        .position(|l| l.iter().any(|k| k == KEY))
        .context("no owner")?;
    let via = 1 - owner;
    let node = c.nodes[via].addr.clone();
    let http = c.http.clone();
    eprintln!(
        "==> {KEY} owned by node{}; the user talks to node{}",
        owner + 1,
        via + 1
    );

    let creds = json!({"email": "bench@example.com", "password": "correct horse battery"});
    let r = http
        .post(format!("http://{node}/api/v1/auth/register"))
        .json(&creds)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("register: {} {}", r.status(), r.text().await?);
    }
    let tok: Value = http
        .post(format!("http://{node}/api/v1/auth/token"))
        .json(&creds)
        .send()
        .await?
        .json()
        .await?;
    let token = tok["access_token"]
        .as_str()
        .context("no token")?
        .to_string();

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{node}/api/v1/stream")).await?;
    for op in [
        json!({"op": "auth", "token": token}),
        json!({"op": "subscribe", "channels": ["alerts"]}),
    ] {
        ws.send(Message::text(op.to_string())).await?;
    }

    let price: Value = c
        .get_json(&format!("http://{node}/api/v1/prices/BTCUSDT"))
        .await?;
    let p: Decimal = price["price"]
        .as_str()
        .context("no BTCUSDT price")?
        .parse()?;
    let mut created = 0;
    for k in -a.levels..=a.levels {
        let thr = (p * (Decimal::ONE + Decimal::new(k * a.step_bp, 4))).round_dp(2);
        for cond in ["crosses_up", "crosses_down"] {
            let r = http
                .post(format!("http://{node}/api/v1/alerts"))
                .bearer_auth(&token)
                .json(&json!({"symbol": "BTCUSDT", "condition": cond,
                    "threshold": thr.to_string(), "channels": ["websocket"],
                    "rearm": {"cooldown_ms": 1000, "hysteresis_pct": "0"}}))
                .send()
                .await?;
            if r.status() != 201 {
                bail!("create alert: {} {}", r.status(), r.text().await?);
            }
            created += 1;
        }
    }
    eprintln!("==> {created} alerts around {p}; measuring {} s", a.seconds);

    let (mut from_trade, mut from_commit) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs(a.seconds);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok(m) = tokio::time::timeout(left, ws.next()).await else {
            break;
        };
        match m {
            Some(Ok(Message::Text(t))) => {
                let now = now_ms();
                let v: Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some("alert") => {
                        let d = &v["data"];
                        let ts = d["trade_ts"].as_i64().context("trade_ts")?;
                        let at = d["triggered_at"].as_i64().context("triggered_at")?;
                        from_trade.push((now - ts) as f64);
                        from_commit.push((now - at) as f64);
                    }
                    Some("error") => bail!("error frame: {v}"),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            other => bail!("stream ended: {other:?}"),
        }
    }
    c.check_alive()?;
    let n = from_trade.len();
    if n < 20 {
        bail!(
            "only {n} triggers in {} s: raise --vol-scale or --levels",
            a.seconds
        );
    }
    from_trade.sort_by(f64::total_cmp);
    from_commit.sort_by(f64::total_cmp);
    let fmt = |v: &[f64]| {
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v[v.len() - 1]
        )
    };
    let mut t = Table::new(
        "alert-push",
        &format!(
            "2 nodes, {created} re-arming alerts on BTCUSDT created on the non-owner, {} s, vol ×{}",
            a.seconds, a.vol_scale
        ),
    );
    t.row(
        "triggers pushed",
        format!("{n} ({:.1}/s)", n as f64 / a.seconds as f64),
    );
    t.row(
        "trade time → user's socket, p50 / p99 / max",
        fmt(&from_trade),
    );
    t.row(
        "outbox commit → user's socket, p50 / p99 / max",
        fmt(&from_commit),
    );
    let p99 = percentile(&from_trade, 99.0);
    t.verdict(format!(
        "Target trigger → WebSocket push p99 ≤ 100 ms: **{}** ({p99:.0} ms from the trade's time).",
        if p99 <= 100.0 { "met" } else { "missed" }
    ));
    Ok(t)
}
