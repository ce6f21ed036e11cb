//! The Grafana dashboard's queries against a live cluster: a real Prometheus (Debian's
//! `prometheus`, `PRICEFEED_PROMETHEUS`) scrapes two nodes, the scheduler and an email worker
//! every second while the simulator trades with faults on (drops, corruption, disconnects), a
//! user's alert fires and mails a real SMTP sink, and the API serves requests. Every panel of
//! `docker/grafana/dashboards/pricefeed.json` must then be a valid PromQL query that returns
//! data; the test prints each panel with its series count.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pricefeed_tests::smtp::SmtpSink;
use pricefeed_tests::{
    Proc, Sim, base_env, bin, fresh_database, get_json, http_client, migrate, scratch_dir,
    seed_from_catalogue, sign_up, start_nodes, start_schedulers,
};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(60);

fn prometheus_bin() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("PRICEFEED_PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into()),
    );
    assert!(
        p.exists(),
        "{} not found: install Debian's `prometheus` package (./dev test installs it) or set \
         PRICEFEED_PROMETHEUS",
        p.display()
    );
    p
}

/// (title, expr) of every panel target of the dashboard.
fn panels() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/dashboards/pricefeed.json"
    );
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(out.len() >= 10, "a dashboard with {} queries", out.len());
    out
}

/// `host:port` of a process's listener.
fn hostport(p: &Proc) -> String {
    p.addr.clone().expect("address known")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_a_live_cluster() {
    let panels = panels();
    let http = http_client(Duration::from_secs(10));
    let sim = Sim::start_small(&[
        ("UNDERLYINGS", "2"),
        ("HOT_SYMBOLS", "1"),
        ("VOL_SCALE", "20.0"),
    ])
    .await;
    let control = sim.port("control");
    let db = fresh_database().await.unwrap();
    let sink = SmtpSink::start(&[]).await;
    let mut env = base_env(&db);
    env.extend(sim.broker_env());
    env.extend(sink.worker_env());
    env.push(("PRICEFEED__WORKER__POLL_MS".into(), "100".into()));
    env.push(("PRICEFEED__RECONCILE__INTERVAL_MS".into(), "2000".into()));
    migrate(&env, READY).await;
    seed_from_catalogue(&http, &sim, &db).await;
    let sched = start_schedulers(&["sched"], &env).await.remove(0);
    let worker = Proc::start_ready("worker", &bin("pricefeed-scheduler"), &["worker"], &env)
        .await
        .unwrap();
    let nodes = start_nodes(&["n1", "n2"], &env).await;

    // Faults, so drops, rejections, gaps and reconnects exist.
    let r = http
        .put(format!("http://{control}/control/faults/global"))
        .json(&json!({"drop": 0.01, "corrupt": 0.01, "disconnect": 0.002}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // Prometheus scraping all of them every second.
    let dir = scratch_dir("prometheus");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let targets = |ps: &[&Proc]| {
        ps.iter()
            .map(|p| format!("\"{}\"", hostport(p)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let node_refs: Vec<&Proc> = nodes.iter().collect();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
         \x20 - job_name: pricefeed-node\n    static_configs: [{{targets: [{}]}}]\n\
         \x20 - job_name: pricefeed-scheduler\n    static_configs: [{{targets: [{}]}}]\n\
         \x20 - job_name: pricefeed-worker\n    static_configs: [{{targets: [{}]}}]\n",
        targets(&node_refs),
        targets(&[&sched]),
        targets(&[&worker]),
    );
    std::fs::write(dir.join("prometheus.yml"), cfg).unwrap();
    let prom_bin = prometheus_bin();
    let _prom = Proc::start_with("prometheus", &prom_bin, &[], &[], |_| {
        vec![
            format!("--config.file={}", dir.join("prometheus.yml").display()).into(),
            format!("--storage.tsdb.path={}", dir.join("data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
        ]
    })
    .unwrap();
    let prom = format!("http://127.0.0.1:{port}");

    // Traffic: API requests, and a user's email alert that fires at once.
    let token = sign_up(&http, &nodes[1], "ops@example.com", "correct horse battery").await;
    let r = http
        .post(nodes[1].url("/api/v1/alerts"))
        .bearer_auth(&token)
        .json(
            &json!({"symbol": "BTCUSDT", "condition": "above", "threshold": "1",
                      "channels": ["email", "websocket"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // Every panel returns data (rates need a few scrapes; reconciliation a run or two).
    let until = Instant::now() + Duration::from_secs(120);
    let mut missing;
    loop {
        for n in &nodes {
            let _ = get_json(&http, &n.url("/api/v1/prices/BTCUSDT")).await;
            let _ = get_json(&http, &n.url("/api/v1/nope")).await;
        }
        missing = Vec::new();
        let mut report = Vec::new();
        for (title, expr) in &panels {
            let v = match http
                .get(format!("{prom}/api/v1/query"))
                .query(&[("query", expr.as_str())])
                .send()
                .await
            {
                Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                Err(e) => json!({"status": "unreachable", "error": e.to_string()}),
            };
            // A query Prometheus refuses is a broken panel at once, not something to wait for.
            if v["status"] == "error" {
                panic!("panel {title:?}: invalid query {expr}: {}", v["error"]);
            }
            let n = v["data"]["result"].as_array().map_or(0, Vec::len);
            if n == 0 {
                missing.push(title.clone());
            }
            report.push(format!("{n:>3} series  {title}"));
        }
        if missing.is_empty() {
            println!("{}", report.join("\n"));
            break;
        }
        assert!(
            Instant::now() < until,
            "panels without data after 120 s: {missing:#?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mails = sink.entries().len();
    println!(
        "all {} panels return data ({mails} alert emails sent meanwhile)",
        panels.len()
    );
}
