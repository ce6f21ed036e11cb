//! Alert email delivery end to end: real Postgres, a real SMTP server (`tests/smtp/sink.py`,
//! aiosmtpd), the `pricefeed-scheduler worker` binary, and for the dead letter a
//! `pricefeed-node` whose notifications API shows it. Triggers are committed with
//! `store::alerts::commit_triggers`, as the owning node does when an alert fires.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use pricefeed_domain::alert::{Condition, Kind};
use pricefeed_store::alerts::{self, AlertInput, NewTrigger};
use pricefeed_tests::smtp::SmtpSink;
use pricefeed_tests::*;
use rust_decimal::Decimal;
use sqlx::PgPool;

/// A migrated database with BTCUSDT listed, its pool and the base environment.
async fn setup() -> (PgPool, Vec<(String, String)>) {
    let db = fresh_database().await.unwrap();
    let env = base_env(&db);
    migrate(&env, Duration::from_secs(60)).await;
    let pool = PgPool::connect(&db).await.unwrap();
    sqlx::query(
        "INSERT INTO underlyings (symbol, base_asset, quote_asset, status) \
         VALUES ('BTCUSDT', 'BTC', 'USDT', 'TRADING')",
    )
    .execute(&pool)
    .await
    .unwrap();
    (pool, env)
}

/// Environment of a worker sending to `sink` with short timeouts, backoff and lease.
fn worker_env(env: &[(String, String)], sink: &SmtpSink) -> Vec<(String, String)> {
    let mut e = env.to_vec();
    e.extend(sink.worker_env());
    for (k, v) in [
        ("PRICEFEED__WORKER__POLL_MS", "50"),
        ("PRICEFEED__WORKER__LEASE_MS", "2000"),
        ("PRICEFEED__EMAIL__CONNECT_TIMEOUT_MS", "1000"),
        ("PRICEFEED__EMAIL__SEND_TIMEOUT_MS", "1200"),
        ("PRICEFEED__EMAIL__BACKOFF_BASE_MS", "100"),
        ("PRICEFEED__EMAIL__BACKOFF_CAP_MS", "400"),
        ("PRICEFEED__EMAIL__MAX_ATTEMPTS", "5"),
    ] {
        e.push((k.into(), v.into()));
    }
    e
}

async fn start_worker(name: &str, env: &[(String, String)]) -> Proc {
    Proc::start_ready(name, &bin("pricefeed-scheduler"), &["worker"], env)
        .await
        .unwrap()
}

fn above_95000() -> Condition {
    Condition {
        kind: Kind::Above,
        threshold: Decimal::from(95_000),
        interval: None,
        window: None,
    }
}

/// Creates `email`'s account (unless it exists) and an email alert (re-arming, so it can fire
/// many times); returns (user id, alert).
async fn email_alert(pool: &PgPool, email: &str) -> (i64, alerts::Alert) {
    let user = match alerts::user_by_email(pool, email).await.unwrap() {
        Some(u) => u.id,
        None => alerts::create_user(pool, email, "x", "user").await.unwrap(),
    };
    let inst: i32 = sqlx::query_scalar("SELECT id FROM instruments WHERE symbol = 'BTCUSDT'")
        .fetch_one(pool)
        .await
        .unwrap();
    let input = AlertInput {
        condition: above_95000(),
        channels: vec!["email".into()],
        rearm: Some(pricefeed_domain::alert::Rearm {
            cooldown_ms: 1000,
            hysteresis_pct: Decimal::ZERO,
        }),
        note: Some("take profit".into()),
        status: "active".into(),
    };
    let a = alerts::create_alert(pool, user, inst, &input, 1000)
        .await
        .unwrap();
    (user, a)
}

/// Commits one trigger per trade id of `alert` (as the owning node does); returns the email
/// delivery ids with their idempotency keys.
async fn fire(
    pool: &PgPool,
    user: i64,
    alert: &alerts::Alert,
    trades: &[i64],
) -> Vec<(i64, String)> {
    let ts = 1_796_117_400_123;
    let t: Vec<NewTrigger> = trades
        .iter()
        .map(|&id| NewTrigger {
            alert_id: alert.id,
            user_id: user,
            version: alert.version,
            trade_id: id,
            trade_ts_ms: ts,
            price: Decimal::from_str("95012.50").unwrap(),
            observed: Decimal::from_str("95012.50").unwrap(),
            one_shot: alert.rearm.is_none(),
        })
        .collect();
    let done = alerts::commit_triggers(pool, "test-node", &t, 100_000)
        .await
        .unwrap();
    assert_eq!(done.len(), trades.len());
    let ids: Vec<i64> = done.iter().map(|c| c.trigger_id).collect();
    sqlx::query_as(
        "SELECT id, idempotency_key FROM deliveries WHERE trigger_id = ANY($1) AND channel = 'email' \
         ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// (state, attempts, last_error) of a delivery.
async fn delivery(pool: &PgPool, id: i64) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT state, attempts, last_error FROM deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_final(pool: &PgPool, ids: &[i64], deadline: Duration, worker: &Proc) {
    let res = wait_for(deadline, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE id = ANY($1) AND state = 'pending'",
        )
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap();
        n == 0
    })
    .await;
    assert!(
        res.is_ok(),
        "deliveries still pending after {deadline:?}; worker log:\n{}",
        worker.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_then_250_delivers_exactly_one_mail_with_the_alert_and_trade() {
    let (pool, env) = setup().await;
    let sink = SmtpSink::start(&[]).await;
    let (user, alert) = email_alert(&pool, "tempfail-ann@example.com").await;
    let dels = fire(&pool, user, &alert, &[987_654]).await;
    let (id, key) = dels[0].clone();
    let worker = start_worker("worker", &worker_env(&env, &sink)).await;
    wait_final(&pool, &[id], Duration::from_secs(30), &worker).await;

    let (state, attempts, last_error) = delivery(&pool, id).await;
    assert_eq!((state.as_str(), attempts), ("sent", 2));
    // The transient reply stays visible as the last error of a mail that was sent anyway.
    assert!(last_error.unwrap_or_default().contains("451"));
    let log = pricefeed_store::email::attempts(&pool, id).await.unwrap();
    let got: Vec<_> = log
        .iter()
        .map(|a| (a.attempt, a.outcome.clone().unwrap(), a.smtp_code))
        .collect();
    assert_eq!(
        got,
        [
            (1, "transient".to_string(), Some(451)),
            (2, "accepted".to_string(), Some(250))
        ]
    );

    let seen = sink.of_key(&key);
    let replies: Vec<i64> = seen.iter().map(|e| e["reply"].as_i64().unwrap()).collect();
    assert_eq!(replies, [451, 250], "{seen:#?}");
    let delivered: Vec<_> = seen
        .iter()
        .filter(|e| e["reply"] == 250 && e["duplicate"] == false)
        .collect();
    assert_eq!(delivered.len(), 1, "exactly one mail delivered");

    // What the mail says.
    let m = delivered[0];
    let data = m["data"].as_str().unwrap();
    assert_eq!(m["rcpt"][0], "tempfail-ann@example.com");
    assert_eq!(
        m["message_id"],
        format!("<{key}@pricefeed.localhost>"),
        "deterministic Message-ID"
    );
    assert_eq!(
        seen[0]["message_id"], m["message_id"],
        "same on every attempt"
    );
    assert!(data.contains(&format!("X-Pricefeed-Idempotency-Key: {key}\r\n")));
    assert_eq!(
        m["subject"],
        format!(
            "pricefeed alert #{}: BTCUSDT (spot) last price above 95000",
            alert.id
        )
    );
    for want in [
        format!("Alert:        #{}", alert.id),
        "Note:         take profit".to_string(),
        "Instrument:   BTCUSDT (spot)".to_string(),
        "Condition:    last price above 95000".to_string(),
        "Threshold:    95000".to_string(),
        "Trade price:  95012.5".to_string(),
        "Trade id:     987654".to_string(),
        "Trade time:   2026-12-01T09:30:00.123Z (UTC)".to_string(),
        "Observed:     95012.5 (last price)".to_string(),
    ] {
        assert!(data.contains(&want), "mail lacks {want:?}:\n{data}");
    }
    assert!(data.contains("text/html"), "an HTML alternative too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_dead_letters_with_the_reply_visible_in_the_notifications_api() {
    let (pool, env) = setup().await;
    let sink = SmtpSink::start(&[]).await;
    let worker = start_worker("worker", &worker_env(&env, &sink)).await;
    let node = start_nodes(&["n1"], &env).await.remove(0);
    let http = http_client(Duration::from_secs(10));

    // Account and alert through the API.
    let email = "reject-bob@example.com";
    let creds = serde_json::json!({"email": email, "password": "correct horse battery"});
    let r = http
        .post(node.url("/api/v1/auth/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let tok: serde_json::Value = http
        .post(node.url("/api/v1/auth/token"))
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", tok["access_token"].as_str().unwrap());
    let r = http
        .post(node.url("/api/v1/alerts"))
        .header("authorization", &bearer)
        .json(
            &serde_json::json!({"symbol": "BTCUSDT", "condition": "above",
            "threshold": "95000", "channels": ["email"], "note": "dead letter"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let created: serde_json::Value = r.json().await.unwrap();
    let alert_id = created["id"].as_i64().unwrap();

    // It fires (committed as the owning node commits it).
    let user = alerts::user_by_email(&pool, email)
        .await
        .unwrap()
        .unwrap()
        .id;
    let alert = alerts::alert(&pool, user, alert_id).await.unwrap().unwrap();
    let dels = fire(&pool, user, &alert, &[42]).await;
    wait_final(&pool, &[dels[0].0], Duration::from_secs(30), &worker).await;

    let url = node.url(&format!("/api/v1/alerts/{alert_id}/notifications"));
    let page: serde_json::Value = http
        .get(&url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &page["items"][0]["deliveries"][0];
    assert_eq!(d["channel"], "email", "{page:#}");
    assert_eq!(d["state"], "dead", "{page:#}");
    assert_eq!(
        d["attempts"], 1,
        "a permanent reply is not retried: {page:#}"
    );
    let err = d["last_error"].as_str().unwrap();
    assert!(
        err.contains("550") && err.contains("mailbox unavailable (sink: reject)"),
        "{err}"
    );
    assert!(d["sent_at"].is_null());
    assert!(
        sink.of_key(&dels[0].1).is_empty(),
        "refused at RCPT TO: no data"
    );
    // The job is dead-lettered too: nothing left to claim.
    let (jstate, jerr): (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM jobs WHERE kind = 'email'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(jstate, "dead");
    assert!(jerr.unwrap().contains("550"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_send_loses_nothing_and_the_sink_delivers_each_trigger_once() {
    let (pool, env) = setup().await;
    // Each message is stored before its 250 goes out 300 ms later: sends are in flight when
    // the worker dies, and some of them are already the server's (the window every SMTP
    // client has).
    let sink = SmtpSink::start(&["--reply-delay-ms", "300"]).await;
    let (user, alert) = email_alert(&pool, "carol@example.com").await;
    let trades: Vec<i64> = (1..=60).collect();
    let dels = fire(&pool, user, &alert, &trades).await;
    let ids: Vec<i64> = dels.iter().map(|d| d.0).collect();

    let wenv = worker_env(&env, &sink);
    let mut a = start_worker("worker-a", &wenv).await;
    // Kill A once some mails went out and sends are in flight.
    let res = wait_for(Duration::from_secs(30), || async {
        let (sent, flying): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM deliveries WHERE state = 'sent'), \
                    (SELECT count(*) FROM email_attempts WHERE outcome IS NULL)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        sent >= 10 && flying >= 3
    })
    .await;
    assert!(
        res.is_ok(),
        "worker A never had sends in flight:\n{}",
        a.log_tail()
    );
    signal(a.child.id(), "KILL");
    a.wait_exit(Duration::from_secs(10)).await.unwrap();
    let in_flight: Vec<i64> = sqlx::query_scalar(
        "SELECT delivery_id FROM email_attempts WHERE outcome IS NULL ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!in_flight.is_empty());

    // B takes the dead worker's jobs over once their leases ran out (2 s).
    let b = start_worker("worker-b", &wenv).await;
    wait_final(&pool, &ids, Duration::from_secs(60), &b).await;

    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM deliveries WHERE id = ANY($1) GROUP BY state")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, [("sent".to_string(), 60)]);

    // Every trigger reached the server, and the server (which honours the idempotency key)
    // delivered each exactly once.
    let mut received: HashMap<String, usize> = HashMap::new();
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for e in sink.entries() {
        let k = e["key"].as_str().unwrap().to_string();
        *received.entry(k.clone()).or_default() += 1;
        if e["reply"] == 250 && e["duplicate"] == false {
            *delivered.entry(k).or_default() += 1;
        }
    }
    for (id, key) in &dels {
        assert_eq!(delivered.get(key), Some(&1), "delivery {id} ({key})");
    }
    // The window: a copy handed over twice belongs to a send that was in flight when A died,
    // recorded `unknown` and re-sent by B with the same Message-ID.
    let unknown: Vec<i64> = sqlx::query_scalar(
        "SELECT delivery_id FROM email_attempts WHERE outcome = 'unknown' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(unknown, in_flight, "every interrupted attempt is on record");
    let twice: Vec<i64> = dels
        .iter()
        .filter(|(_, k)| received[k] > 1)
        .map(|(id, _)| *id)
        .collect();
    for id in &twice {
        assert!(
            unknown.contains(id),
            "delivery {id} was handed over twice without an interrupted attempt"
        );
    }
    assert!(received.values().all(|&n| n <= 2));
    eprintln!(
        "in flight at the kill: {}; handed to the server twice (same Message-ID, dropped as a \
         duplicate by key): {}; delivered once: 60/60",
        in_flight.len(),
        twice.len()
    );
    let metrics = reqwest::get(b.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(
            &metrics,
            "pricefeed_email_attempts_total",
            &["outcome=\"unknown\""]
        ) >= in_flight.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_config_errors_name_the_key_and_never_print_the_password() {
    for (extra, key) in [
        (vec![("PRICEFEED__EMAIL__TLS", "ssl")], "email.tls"),
        (
            vec![
                ("PRICEFEED__EMAIL__USERNAME", "mailer"),
                ("PRICEFEED__EMAIL__PASSWORD", "s3cret-pw-value"),
            ],
            "email.tls",
        ),
        (vec![("PRICEFEED__EMAIL__FROM", "nobody")], "email.from"),
        (
            vec![("PRICEFEED__EMAIL__SEND_TIMEOUT_MS", "60000")],
            "email.send_timeout_ms",
        ),
        (vec![("PRICEFEED__EMAIL__PORT", "0")], "email.port"),
    ] {
        let mut env = base_env("postgres://unused@127.0.0.1:1/x");
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut p = Proc::start("check", &bin("pricefeed-scheduler"), &["worker"], &env).unwrap();
        let st = p.wait_exit(Duration::from_secs(20)).await.unwrap();
        let out = p.log_text();
        assert!(!st.success(), "{extra:?} accepted:\n{out}");
        assert!(out.contains(&format!("`{key}`")), "{extra:?} → {out}");
        assert!(!out.contains("s3cret-pw-value"), "password printed:\n{out}");
    }
    // A valid secret set stays hidden in the printed configuration.
    let mut env = base_env("postgres://unused@127.0.0.1:1/x");
    env.extend([
        ("PRICEFEED__EMAIL__TLS".to_string(), "starttls".to_string()),
        ("PRICEFEED__EMAIL__USERNAME".into(), "mailer".into()),
        (
            "PRICEFEED__EMAIL__PASSWORD".into(),
            "s3cret-pw-value".into(),
        ),
    ]);
    let mut p = Proc::start(
        "check",
        &bin("pricefeed-scheduler"),
        &["check-config"],
        &env,
    )
    .unwrap();
    let st = p.wait_exit(Duration::from_secs(20)).await.unwrap();
    let out = p.log_text();
    assert!(st.success(), "{out}");
    assert!(
        out.contains("starttls") && !out.contains("s3cret-pw-value"),
        "{out}"
    );
}
